//! Capture: keyspace notifications, flush server events and the command
//! filter only *note* what changed. Nothing here reads values.
//!
//! Why so little: the handler runs inside every write (DESIGN §9 measured a
//! subscribed handler alone at 8–15 % of SET throughput), and it must be
//! re-entrant: reading an image can fire `expired` back into it.
//!
//! One shortcut: a plain `SET key value [NX|XX|GET|EX ..|KEEPTTL]` stores
//! exactly its argument, so the command filter keeps it (the *set hint*)
//! and the `set` event that same command fires records the value with the
//! key; the flush then ships it without reading the key back. Reading a
//! short string back costs a key lookup and, through `StringDMA`, a
//! rewrite of the stored object (Redis decodes it to raw encoding), which
//! is the largest part of the module's cost per `SET`. The hint is dropped
//! by the next command the filter sees, and used only by a `set` event for
//! the same key name; a `SET` inside MULTI never uses it (EXEC passes the
//! filter first).
//!
//! The same mechanism, generalised, describes element writes: the filter
//! asks `core::write_hint` what a command will do to the elements of its
//! keys (`HSET h f v` sets field `f`), and the event that same command
//! fires on a key confirms it; the change is then recorded as element
//! changes and shipped without any read. An event the hint did not predict,
//! a key that expired or was evicted while the command ran, or a command
//! with no hint leaves the key to be read back whole at flush time.

use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use redis_module::{raw, Context};

use super::ffi;
use super::guard::guarded;
use crate::core::append_id::next_auto_id;
use crate::core::dirty::{DirtyLog, Expiry};
use crate::core::list_op::ListOp;
use crate::core::protocol::{ElementChange, Shape};
use crate::core::served;
use crate::core::stream_merge::{format_id, EntryId};
use crate::core::write_hint::{describe, float_incr_change, zincr_change, EventFit, KeyHint};
use crate::state::Shared;

/// Set while this module applies remote changes on the main thread: the
/// notifications those writes fire are not captured again (no loops).
pub static APPLYING: AtomicBool = AtomicBool::new(false);

/// Set between our before-sleep work and the next after-sleep: a write
/// made then (an unblocked client) must wake the loop, or it would wait
/// for the next event.
pub static AFTER_FLUSH_POINT: AtomicBool = AtomicBool::new(false);

static DIRTY: Mutex<DirtyLog> = Mutex::new(DirtyLog::new());

/// A plain `SET` the filter saw, not yet executed (see the module doc).
struct SetHint {
    key: Vec<u8>,
    value: Vec<u8>,
    expiry: Expiry,
}

static SET_HINT: Mutex<Option<SetHint>> = Mutex::new(None);
/// Cheap check for "is there a hint" on every command.
static HINT_ARMED: AtomicBool = AtomicBool::new(false);

fn set_hint() -> MutexGuard<'static, Option<SetHint>> {
    SET_HINT.lock().unwrap_or_else(|p| p.into_inner())
}

fn disarm_hint() {
    if HINT_ARMED.swap(false, Ordering::Relaxed) {
        *set_hint() = None;
    }
}

/// The hint if it is for `key` (consumed either way).
fn take_hint(key: &[u8]) -> Option<SetHint> {
    if !HINT_ARMED.swap(false, Ordering::Relaxed) {
        return None;
    }
    set_hint().take().filter(|h| h.key == key)
}

/// With test hooks on, every hint is checked against the stored value (the
/// read this shortcut avoids) and a mismatch is logged; the convergence
/// tests fail on it.
///
/// # Safety
/// `ctx` is the live context of a keyspace notification.
unsafe fn check_hint(ctx: *mut raw::RedisModuleCtx, db: u32, key: &[u8], value: &[u8]) {
    let c = Context::new(ctx);
    let stored = ffi::read_key(&c, key, usize::MAX).and_then(|r| r.string);
    if stored.as_deref() != Some(value) {
        crate::log::warning(&format!(
            "set-hint mismatch in db {db} for key {:?}: hint {:?}, stored {:?}",
            String::from_utf8_lossy(key),
            String::from_utf8_lossy(value),
            stored.map(|v| String::from_utf8_lossy(&v).into_owned())
        ));
    }
}

/// What a `SET` with these options (argv[3..]) does to the expiry; `None`
/// for anything this shortcut does not know (the change is read back).
fn set_options_expiry<'a>(mut opts: impl Iterator<Item = &'a [u8]>) -> Option<Expiry> {
    let mut expiry = Expiry::Cleared;
    while let Some(o) = opts.next() {
        if is_cmd(o, "nx") || is_cmd(o, "xx") || is_cmd(o, "get") {
            continue;
        }
        expiry = Expiry::Read;
        if is_cmd(o, "ex") || is_cmd(o, "px") || is_cmd(o, "exat") || is_cmd(o, "pxat") {
            opts.next(); // the time
        } else if !is_cmd(o, "keepttl") {
            return None;
        }
    }
    Some(expiry)
}

/// The element hint of the command the filter saw last (see the module
/// doc); empty when there is none.
static ELEM_HINT: Mutex<Vec<KeyHint>> = Mutex::new(Vec::new());
/// Cheap check for "is there an element hint" on every event.
static ELEM_ARMED: AtomicBool = AtomicBool::new(false);

fn elem_hint() -> MutexGuard<'static, Vec<KeyHint>> {
    ELEM_HINT.lock().unwrap_or_else(|p| p.into_inner())
}

fn disarm_elem_hint() {
    if ELEM_ARMED.swap(false, Ordering::Relaxed) {
        elem_hint().clear();
    }
}

/// Drop every hint (the before-sleep event: no command's events follow).
pub fn disarm_hints() {
    disarm_hint();
    disarm_elem_hint();
}

/// What the element hint says about an event on `key`: `None` when no hint
/// names the key (the event is noted as usual).
fn elem_event(
    key: &[u8],
    event: &[u8],
) -> Option<(EventFit, Vec<ElementChange>, Option<ReadAfter>)> {
    if !ELEM_ARMED.load(Ordering::Relaxed) {
        return None;
    }
    let mut hints = elem_hint();
    let h = hints.iter_mut().find(|h| h.key == key)?;
    let mut fit = h.on_event(event);
    if fit == EventFit::Record && !super::served_guard::trust(h, key, event) {
        // A blocked client may be served now, under this hint (`core::served`).
        h.break_it();
        fit = EventFit::Unexpected;
    }
    let changes = if fit == EventFit::Record {
        std::mem::take(&mut h.changes)
    } else {
        Vec::new()
    };
    let read = if h.read_list_end {
        Some(ReadAfter::ListEnd)
    } else if h.read_stream {
        Some(ReadAfter::Stream { auto_id: h.auto_id })
    } else if h.read_score {
        Some(ReadAfter::Score(h.int_delta, h.base_score))
    } else if h.read_value {
        Some(ReadAfter::Value(h.int_delta, h.value_before.take()))
    } else {
        None
    };
    Some((fit, changes, read))
}

/// The stream appended to last, and the last ID this node knows there.
///
/// Why: the event of an `XADD *` does not name the ID it generated, and
/// reading it back after each append (a seek to the end of the stream) was
/// the largest part of the module's cost per append. While appends go to
/// one stream, each `XADD *` whose event sees a clock that has not passed
/// the last ID's millisecond took that millisecond's next sequence number
/// (`core::append_id`): no read. The first append of a run, an explicit ID
/// and a clock that moved on read the ID (and, after guesses, the entry
/// before it, which must be the last guess). A run ends when anything else
/// may touch the stream: the command filter sees any command but an `XADD`
/// to this key name, an append to another key ends it at its event, and so
/// does the flush; a run that guessed checks then that the stream's newest
/// entry is its last guess. A guess found wrong ships the key whole. Test
/// builds also check every guess when it is made.
struct AppendRun {
    db: u32,
    key: Vec<u8>,
    /// The ID of the run's last append.
    last: EntryId,
    /// Appends whose IDs were worked out since the last read.
    guessed: usize,
}

static APPEND_RUN: Mutex<Option<AppendRun>> = Mutex::new(None);
/// Cheap check for "is a run open" on every command.
static RUN_OPEN: AtomicBool = AtomicBool::new(false);

fn append_run() -> MutexGuard<'static, Option<AppendRun>> {
    APPEND_RUN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Is the open run one of a key named `key` (in any db: the filter does not
/// know the client's db, and an append to that name in another db leaves
/// the run's stream alone)?
fn run_named(key: &[u8]) -> bool {
    RUN_OPEN.load(Ordering::Relaxed) && append_run().as_ref().is_some_and(|r| r.key == key)
}

/// The open run's last ID and guesses, if it is the one of `key` in `db`.
fn run_of(db: u32, key: &[u8]) -> Option<(EntryId, usize)> {
    if !RUN_OPEN.load(Ordering::Relaxed) {
        return None;
    }
    append_run()
        .as_ref()
        .filter(|r| r.db == db && r.key == key)
        .map(|r| (r.last, r.guessed))
}

/// The run of `key` in `db` goes on from `last`.
fn continue_run(db: u32, key: &[u8], last: EntryId, guessed: usize) {
    let mut run = append_run();
    match run.as_mut() {
        Some(r) if r.db == db && r.key == key => {
            r.last = last;
            r.guessed = guessed;
        }
        _ => {
            *run = Some(AppendRun {
                db,
                key: key.to_vec(),
                last,
                guessed,
            })
        }
    }
    RUN_OPEN.store(true, Ordering::Relaxed);
}

/// Forget the run of `key` in `db` unchecked: the key ships whole (its
/// records never travel), or it is gone here.
fn forget_run(db: u32, key: &[u8]) {
    if run_of(db, key).is_some() {
        RUN_OPEN.store(false, Ordering::Relaxed);
        append_run().take();
    }
}

/// Log a guessed ID found wrong (the key ships whole).
fn wrong_guess(db: u32, key: &[u8], guessed: EntryId, found: Option<EntryId>) {
    crate::log::warning(&format!(
        "append-id self-check mismatch in db {db} for key {:?}: worked out {}, the stream \
         holds {:?} (the key is shipped whole)",
        String::from_utf8_lossy(key),
        String::from_utf8_lossy(&format_id(guessed)),
        found.map(|id| String::from_utf8_lossy(&format_id(id)).into_owned())
    ));
}

/// End the open run; `newest(db, key)` reads the stream's newest ID, which
/// must be the run's last guess.
fn end_run(newest: impl FnOnce(u32, &[u8]) -> Option<EntryId>) {
    if !RUN_OPEN.swap(false, Ordering::Relaxed) {
        return;
    }
    let Some(run) = append_run().take() else {
        return;
    };
    if run.guessed == 0 {
        return;
    }
    let found = newest(run.db, &run.key);
    if found != Some(run.last) {
        // An empty stream (the run's own trims) proves nothing either way.
        if found.is_some() {
            wrong_guess(run.db, &run.key, run.last, found);
        }
        note_key(run.db, &run.key);
    }
}

/// End the open run of appends, reading through `ctx` (an event's or the
/// flush's), whose selected db is kept.
pub fn end_append_run(ctx: &Context) {
    end_run(|db, key| {
        let saved = ffi::selected_db(ctx);
        let id = i32::try_from(db)
            .ok()
            .filter(|&d| ffi::select_db(ctx, d))
            .and_then(|_| newest_id(ctx, key));
        ffi::select_db(ctx, saved);
        id
    });
}

/// The ID of the newest entry of stream `key` in the selected db.
fn newest_id(c: &Context, key: &[u8]) -> Option<EntryId> {
    ffi::stream_ids(c, key, 1, true)?.first().copied()
}

/// The ID of the append just made to `key` (`run`: the open run of `key`,
/// if any): worked out when [`AppendRun`] allows, else read. `None`: it
/// cannot be known, or a guess proved wrong; the key ships whole.
fn name_append(
    c: &Context,
    db: u32,
    key: &[u8],
    run: Option<(EntryId, usize)>,
    auto_id: bool,
) -> Option<EntryId> {
    let guess = run
        .filter(|_| auto_id)
        .and_then(|(last, _)| next_auto_id(last, ffi::milliseconds()));
    if let Some(id) = guess {
        if super::guard::test_hooks() {
            let found = newest_id(c, key);
            if found != Some(id) {
                wrong_guess(db, key, id, found);
                return None;
            }
        }
        continue_run(db, key, id, run.map_or(0, |r| r.1) + 1);
        return Some(id);
    }
    // Read it; after guesses, the entry before must be the last guess.
    let (last, guessed) = run.unwrap_or(((0, 0), 0));
    let ids = ffi::stream_ids(c, key, if guessed > 0 { 2 } else { 1 }, true)?;
    let (id, before) = (*ids.first()?, ids.get(1).copied());
    if guessed > 0 && before != Some(last) {
        wrong_guess(db, key, last, before);
        return None;
    }
    continue_run(db, key, id, 0);
    Some(id)
}

/// What a confirmed change still needs: its element's value, read after
/// the command.
enum ReadAfter {
    /// A `ZINCRBY`: its integral increment and the score before it, if known.
    Score(Option<i64>, Option<Option<f64>>),
    /// An `INCRBYFLOAT` or `HINCRBYFLOAT`: its integral increment and the
    /// value before it, if known.
    Value(Option<i64>, Option<Option<Vec<u8>>>),
    /// An `XADD` or `XTRIM`: the stream's last or first entry ID (an
    /// `XADD *`'s can often be worked out, see [`AppendRun`]).
    Stream {
        /// An `XADD *`.
        auto_id: bool,
    },
    /// An `LMOVE`'s push: the value now at that end of the destination.
    ListEnd,
}

/// Must these confirmed changes of `key` ship as a whole-key image instead?
///
/// - Only a key without a TTL ships element records: the two sides see a
///   key expire at slightly different moments, and an element change
///   applied to the peer's copy after it expired here (or before it expires
///   there) would live on one side only. Asked now, while this change is the
///   key's last one.
/// - A list or stream command replays only on an identical key
///   (`Shared::list_commands_ship`), and not on a key the peer may hold
///   otherwise (`core::unshared`: its image was left out, or this node
///   ignored a later change of the peer's and waits for its image).
/// - Any record too large for a frame ships as an image, which the flush
///   leaves out with an error (as any oversized key).
pub fn as_image(c: &Context, db: u32, key: &[u8], changes: &[ElementChange]) -> bool {
    refused_as_records(db, key, changes) || ffi::read_expiry(c, key).is_some_and(|e| e.is_some())
}

/// [`as_image`] but for the TTL: an append of an open run needs no second
/// look (the run's first append found none, and only a command, which ends
/// the run, can set one).
fn refused_as_records(db: u32, key: &[u8], changes: &[ElementChange]) -> bool {
    Shared::get().is_none_or(|s| {
        let list = changes.iter().any(ElementChange::is_list);
        (list && (!s.list_commands_ship() || super::unshared::contains(db, key)))
            || changes_payload(changes).saturating_mul(2)
                >= usize::try_from(s.config.max_frame_size).unwrap_or(usize::MAX)
    })
}

/// One stream append waiting for its ID.
fn is_append(changes: &[ElementChange]) -> bool {
    matches!(
        changes,
        [ElementChange::List(ListOp::XAdd { entries })] if entries.len() == 1
    )
}

/// An `XTRIM` (or an `XADD`'s own trim) names the first ID it kept: read
/// now (`None`: the stream has no entry or cannot be read; the key is
/// imaged). An `XADD`'s own ID: [`name_append`].
fn confirm_stream(
    c: &Context,
    key: &[u8],
    mut changes: Vec<ElementChange>,
) -> Option<Vec<ElementChange>> {
    match changes.first_mut() {
        Some(ElementChange::List(ListOp::XTrim { min_id })) => {
            *min_id = format_id(*ffi::stream_ids(c, key, 1, false)?.first()?);
        }
        _ => return None,
    }
    Some(changes)
}

/// An `LMOVE` pushed what it popped: read it from the destination's end
/// (`None`: it cannot be read; the key is imaged).
fn confirm_list_end(
    c: &Context,
    key: &[u8],
    mut changes: Vec<ElementChange>,
) -> Option<Vec<ElementChange>> {
    let Some(ElementChange::List(ListOp::Push { left, values })) = changes.first_mut() else {
        return None;
    };
    let value = ffi::list_end(c, key, *left)?;
    *values = vec![value];
    Some(changes)
}

/// Bytes of names and values `changes` carry.
fn changes_payload(changes: &[ElementChange]) -> usize {
    changes
        .iter()
        .map(|c| match c {
            ElementChange::List(op) => op.payload_bytes(),
            ElementChange::Set { elem, value, .. } => elem.len() + value.len(),
            c => c.elem().map_or(0, <[u8]>::len),
        })
        .sum()
}

/// A hinted key expired or was evicted while its command ran.
fn break_elem_hint(key: &[u8]) {
    if ELEM_ARMED.load(Ordering::Relaxed) {
        if let Some(h) = elem_hint().iter_mut().find(|h| h.key == key) {
            h.break_it();
        }
    }
}

/// A `ZINCRBY` ships the member's new score, or its increment when that is
/// exact (`write_hint::zincr_change`): read the score now (`None`: the
/// member is gone, the key is imaged).
///
/// # Safety
/// `ctx` is the live context of a keyspace notification.
unsafe fn confirm_score(
    ctx: *mut raw::RedisModuleCtx,
    key: &[u8],
    changes: Vec<ElementChange>,
    (delta, before): (Option<i64>, Option<Option<f64>>),
) -> Option<Vec<ElementChange>> {
    let Some(ElementChange::Set { elem, .. }) = changes.first() else {
        return None;
    };
    let c = Context::new(ctx);
    let after = ffi::zset_score(&c, key, elem)?;
    Some(vec![zincr_change(elem, delta, before, after)])
}

/// An `INCRBYFLOAT` or `HINCRBYFLOAT` ships its increment when that is
/// exact, else the element's new value (`write_hint::float_incr_change`):
/// a hash field is read now; a string is not (`None`: the key is imaged at
/// the flush). Reading a string here would go through `StringDMA`, which
/// replaces the stored object, and `INCRBYFLOAT` still uses that object
/// after its event to rewrite itself as a `SET` (the server crashed).
///
/// # Safety
/// `ctx` is the live context of a keyspace notification.
unsafe fn confirm_value(
    ctx: *mut raw::RedisModuleCtx,
    key: &[u8],
    changes: Vec<ElementChange>,
    delta: Option<i64>,
    before: Option<Option<Vec<u8>>>,
) -> Option<Vec<ElementChange>> {
    let Some(ElementChange::Set { shape, elem, .. }) = changes.first() else {
        return None;
    };
    let after = match shape {
        Shape::Hash => Some(ffi::hash_get(&Context::new(ctx), key, elem)?),
        Shape::Str | Shape::Set | Shape::ZSet => None,
    };
    let before = before.as_ref().map(|b| b.as_deref());
    float_incr_change(*shape, elem, delta, before, after).map(|c| vec![c])
}

/// Keys touched by commands that change a stream without a keyspace event
/// (XACK, XCLAIM, XAUTOCLAIM, XREADGROUP); the db is unknown in a filter.
static STREAM_TOUCHED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// The dirty log (short critical sections only).
pub fn dirty() -> MutexGuard<'static, DirtyLog> {
    DIRTY.lock().unwrap_or_else(|p| p.into_inner())
}

/// The keys of a dirty log, `None` if it holds a flush.
pub type DirtyKeys = Option<Vec<(u32, Vec<u8>)>>;

/// The keys of the dirty log (see [`DirtyLog::keys`]), if its lock is free:
/// the outer `None` means busy (the forked child saving an RDB must not
/// wait for a lock a thread held at the fork).
pub fn try_dirty_keys() -> Option<DirtyKeys> {
    match DIRTY.try_lock() {
        Ok(g) => Some(g.keys()),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner().keys()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Take the stream keys noted by the command filter.
pub fn take_stream_touched() -> Vec<Vec<u8>> {
    std::mem::take(&mut *STREAM_TOUCHED.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Set between the loading-start and loading-end server events: writes
/// replayed from the AOF or an RDB are not new changes. (Kept here rather
/// than asking Redis for its context flags on every write: that call
/// computes a dozen flags, some costly.)
pub static LOADING: AtomicBool = AtomicBool::new(false);

fn capturing() -> bool {
    if APPLYING.load(Ordering::Relaxed) || LOADING.load(Ordering::Relaxed) {
        return false;
    }
    // Passive covers "this server is a replica" (set at load and on role change).
    matches!(Shared::get(), Some(s) if !s.passive.load(Ordering::Relaxed))
}

fn note_key(db: u32, key: &[u8]) {
    // Its records never travel: an open run of it needs no check.
    forget_run(db, key);
    note(|d| d.key(db, key));
}

/// Record a change in the dirty log; wake the loop if it was empty.
fn note(record: impl FnOnce(&mut DirtyLog)) {
    let was_empty = {
        let mut d = dirty();
        let e = d.is_empty();
        record(&mut d);
        e
    };
    if was_empty {
        // Counting the log's first change is enough for "written since"
        // (see `Shared::dataset_empty`), and keeps the atomic off the
        // per-write path.
        if let Some(s) = Shared::get() {
            s.note_local_write();
        }
        if AFTER_FLUSH_POINT.load(Ordering::Relaxed) {
            ffi::wake_event_loop();
        }
    }
}

/// Keyspace notification callback: note `(db, key)`.
///
/// # Safety
/// Called by Redis with a live context, event name and key.
pub unsafe extern "C" fn on_keyspace_event(
    ctx: *mut raw::RedisModuleCtx,
    class: c_int,
    event: *const c_char,
    key: *mut raw::RedisModuleString,
) -> c_int {
    guarded("keyspace event", 0, || {
        if LOADING.load(Ordering::Relaxed) && super::persist::AUX_READ.load(Ordering::Relaxed) {
            // An AOF tail replayed after the snapshot's pairing state.
            let db = ffi::selected_db(&Context::new(ctx)).max(0) as u32;
            super::persist::note_replayed(db, ffi::string_bytes(key));
        }
        if class & (raw::REDISMODULE_NOTIFY_EXPIRED | raw::REDISMODULE_NOTIFY_EVICTED) != 0 {
            break_elem_hint(ffi::string_bytes(key));
            // A run's stream gone here: nothing left to check (its appends
            // travel as recorded; the loss itself travels only if evictions
            // are shipped).
            if RUN_OPEN.load(Ordering::Relaxed) {
                forget_run(
                    ffi::selected_db(&Context::new(ctx)).max(0) as u32,
                    ffi::string_bytes(key),
                );
            }
        }
        if class & raw::REDISMODULE_NOTIFY_EXPIRED != 0 {
            return 0;
        }
        if class & raw::REDISMODULE_NOTIFY_EVICTED != 0 {
            let ship = Shared::get().is_some_and(|s| s.ship_evictions());
            if !ship {
                return 0;
            }
        }
        if !capturing() {
            return 0;
        }
        let db = ffi::selected_db(&Context::new(ctx)).max(0) as u32;
        let key = ffi::string_bytes(key);
        let event = if event.is_null() {
            &[][..]
        } else {
            std::ffi::CStr::from_ptr(event).to_bytes()
        };
        let fit = elem_event(key, event);
        super::trace::key(db, key, || {
            format!(
                "event {:?} fit {:?}",
                String::from_utf8_lossy(event),
                fit.as_ref().map(|(f, c, _)| (f, c))
            )
        });
        match fit {
            Some((EventFit::Record, mut changes, Some(ReadAfter::Stream { auto_id })))
                if is_append(&changes) =>
            {
                // An append: another key's run ends first (only appends to
                // this key ran since it was checked).
                let c = Context::new(ctx);
                let run = run_of(db, key);
                if run.is_none() {
                    end_append_run(&c);
                }
                let image = if run.is_some() {
                    refused_as_records(db, key, &changes)
                } else {
                    as_image(&c, db, key, &changes)
                };
                let id = if image {
                    None
                } else {
                    name_append(&c, db, key, run, auto_id)
                };
                match (id, changes.first_mut()) {
                    (Some(id), Some(ElementChange::List(ListOp::XAdd { entries }))) => {
                        if let Some(entry) = entries.first_mut() {
                            entry.0 = format_id(id);
                        }
                        super::trace::key(db, key, || format!("append {:?}", changes));
                        note(|d| d.elements(db, key, changes));
                    }
                    _ => note_key(db, key),
                }
                return 0;
            }
            Some((EventFit::Record, changes, read)) => {
                // Only a key without a TTL ships element records: the two
                // sides see a key expire at slightly different moments, and
                // an element change applied to the peer's copy after it
                // expired here (or before it expires there) would live on one
                // side only. A key with a TTL travels whole, with its expiry.
                // Asked now, while this change is the key's last one.
                let c = Context::new(ctx);
                let confirmed = if as_image(&c, db, key, &changes) {
                    None
                } else {
                    match read {
                        Some(ReadAfter::Score(delta, before)) => {
                            confirm_score(ctx, key, changes, (delta, before))
                        }
                        Some(ReadAfter::Value(delta, before)) => {
                            confirm_value(ctx, key, changes, delta, before)
                        }
                        Some(ReadAfter::Stream { .. }) => confirm_stream(&c, key, changes),
                        Some(ReadAfter::ListEnd) => confirm_list_end(&c, key, changes),
                        None => Some(changes),
                    }
                };
                super::trace::key(db, key, || format!("confirmed {confirmed:?}"));
                match confirmed {
                    Some(changes) => note(|d| d.elements(db, key, changes)),
                    None => note_key(db, key),
                }
                return 0;
            }
            Some((EventFit::Trimmed, _, _)) => {
                // The XADD's own trim, after its entry: what it kept.
                let c = Context::new(ctx);
                let trim = vec![ElementChange::List(ListOp::XTrim { min_id: Vec::new() })];
                let confirmed = if as_image(&c, db, key, &trim) {
                    None
                } else {
                    confirm_stream(&c, key, trim)
                };
                match confirmed {
                    Some(changes) => note(|d| d.elements(db, key, changes)),
                    None => note_key(db, key),
                }
                return 0;
            }
            Some((EventFit::Covered, _, _)) => return 0,
            Some((EventFit::Unexpected, _, _)) => {
                note_key(db, key);
                return 0;
            }
            None => {}
        }
        match event {
            b"set" => match take_hint(key) {
                Some(h) => {
                    if super::guard::test_hooks() {
                        check_hint(ctx, db, key, &h.value);
                    }
                    note(|d| d.value(db, h.key, h.value, h.expiry))
                }
                None => note_key(db, key),
            },
            b"expire" => note(|d| d.expiry(db, key)),
            // A group's consumers or position changed (also a consumer an
            // `XREADGROUP` or `XCLAIM` created): the groups ship, not the
            // entries. `xgroup-create` stays an image: it may have made
            // the stream (`MKSTREAM`), which the peer then lacks.
            b"xgroup-createconsumer"
            | b"xgroup-delconsumer"
            | b"xgroup-setid"
            | b"xgroup-destroy" => {
                let marker = [super::flush::groups_marker()];
                if as_image(&Context::new(ctx), db, key, &marker) {
                    note_key(db, key);
                } else {
                    note(|d| d.elements(db, key, marker.to_vec()));
                }
            }
            // A field reaching its TTL (7.4+), like a key's `expired`: both sides hold the same
            // absolute field TTL and expire it by themselves; shipping it would let that
            // expiry overrule a concurrent write on the other side.
            b"hexpired" => {}
            _ => note_key(db, key),
        }
        0
    })
}

/// A key where two element families met while applying the peer's batch
/// (`core::merge::entry::family_clash`): the next flush re-ships its whole
/// image, stamped then, so both sides settle on one image. Called by the
/// apply (not a client write, so it does not count as one).
pub fn note_reship(db: u32, key: &[u8]) {
    super::trace::key(db, key, || "re-ship noted".to_string());
    dirty().key(db, key);
    ffi::wake_event_loop();
}

/// FLUSHDB / FLUSHALL server event: note the flush (START sub-event only).
///
/// # Safety
/// Called by Redis with a live context and a `RedisModuleFlushInfo`.
pub unsafe extern "C" fn on_flush(
    _ctx: *mut raw::RedisModuleCtx,
    _e: raw::RedisModuleEvent,
    sub: u64,
    data: *mut c_void,
) {
    guarded("flush event", (), || {
        if sub != raw::REDISMODULE_SUBEVENT_FLUSHDB_START || data.is_null() || !capturing() {
            return;
        }
        let info = &*(data as *const raw::RedisModuleFlushInfo);
        let dbs = Shared::get().map(|s| s.databases).unwrap_or(16);
        let mut d = dirty();
        if info.dbnum < 0 {
            d.flush(0..dbs);
        } else {
            d.flush([info.dbnum as u32]);
        }
        drop(d);
        if AFTER_FLUSH_POINT.load(Ordering::Relaxed) {
            ffi::wake_event_loop();
        }
    })
}

/// Dbs swapped since the last flush: every key of them is re-imaged.
static SWAPPED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Take the dbs swapped since the last flush.
pub fn take_swapped() -> Vec<u32> {
    std::mem::take(&mut *SWAPPED.lock().unwrap_or_else(|p| p.into_inner()))
}

/// SWAPDB server event: it cannot be merged with concurrent writes, so it
/// ships as a resync of both dbs from this side (a flush of each, then
/// every key of each).
///
/// # Safety
/// Called by Redis with a live context and a `RedisModuleSwapDbInfo`.
pub unsafe extern "C" fn on_swapdb(
    _ctx: *mut raw::RedisModuleCtx,
    _e: raw::RedisModuleEvent,
    _sub: u64,
    data: *mut c_void,
) {
    guarded("swapdb event", (), || {
        if data.is_null() || !capturing() {
            return;
        }
        let info = &*(data as *const raw::RedisModuleSwapDbInfo);
        let (a, b) = (
            info.dbnum_first.max(0) as u32,
            info.dbnum_second.max(0) as u32,
        );
        dirty().flush([a, b]);
        SWAPPED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([a, b]);
        if AFTER_FLUSH_POINT.load(Ordering::Relaxed) {
            ffi::wake_event_loop();
        }
    })
}

/// Loading server event: a load that starts right after a flush means the
/// flush was DEBUG RELOAD / DEBUG LOADAOF, not a user's: do not ship it.
///
/// # Safety
/// Called by Redis with a live context.
pub unsafe extern "C" fn on_loading(
    _ctx: *mut raw::RedisModuleCtx,
    _e: raw::RedisModuleEvent,
    sub: u64,
    _data: *mut c_void,
) {
    guarded("loading event", (), || match sub {
        raw::REDISMODULE_SUBEVENT_LOADING_RDB_START
        | raw::REDISMODULE_SUBEVENT_LOADING_AOF_START
        | raw::REDISMODULE_SUBEVENT_LOADING_REPL_START => {
            LOADING.store(true, Ordering::Relaxed);
            dirty().cancel_last_flush();
        }
        raw::REDISMODULE_SUBEVENT_LOADING_ENDED | raw::REDISMODULE_SUBEVENT_LOADING_FAILED => {
            LOADING.store(false, Ordering::Relaxed);
        }
        _ => {}
    })
}

fn is_cmd(name: &[u8], want: &str) -> bool {
    name.eq_ignore_ascii_case(want.as_bytes())
}

/// Keep the value of a plain `SET` (see the module doc).
///
/// # Safety
/// `fctx` is the live filter context.
unsafe fn arm_hint(fctx: *mut raw::RedisModuleCommandFilterCtx, argc: usize) {
    if argc < 3 {
        disarm_hint();
        return;
    }
    let opts = (3..argc).map(|i| ffi::filter_arg(fctx, i));
    let Some(expiry) = set_options_expiry(opts) else {
        disarm_hint();
        return;
    };
    // A value too large to ship is not copied here: the flush reads the
    // key and reports it (see `flush::read_image`).
    let limit = Shared::get().map_or(u64::MAX, |s| s.config.max_frame_size);
    if ffi::filter_arg(fctx, 2).len() as u64 >= limit {
        disarm_hint();
        return;
    }
    *set_hint() = Some(SetHint {
        key: ffi::filter_arg(fctx, 1).to_vec(),
        value: ffi::filter_arg(fctx, 2).to_vec(),
        expiry,
    });
    HINT_ARMED.store(true, Ordering::Relaxed);
}

/// Could `name` have an element hint (`core::write_hint::describe`)? A
/// cheap test, so other commands cost no argument copy.
fn hintable(name: &[u8]) -> bool {
    match name.len() {
        3..=7 => {
            matches!(
                name[0] | 0x20,
                b'i' | b'd' | b'g' | b's' | b'h' | b'z' | b'u' | b'l' | b'r'
            ) || (name.len() <= 5 && name[0] | 0x20 == b'x')
                || name.eq_ignore_ascii_case(b"blpop")
                || name.eq_ignore_ascii_case(b"brpop")
                || name.eq_ignore_ascii_case(b"blmove")
        }
        // Only the float increments and the list moves are longer: not every
        // SMEMBERS or ZREVRANGE copies its arguments to find that out.
        9 => name.eq_ignore_ascii_case(b"rpoplpush"),
        10 => name.eq_ignore_ascii_case(b"brpoplpush"),
        11 => name.eq_ignore_ascii_case(b"incrbyfloat"),
        12 => name.eq_ignore_ascii_case(b"hincrbyfloat"),
        _ => false,
    }
}

/// Arm the element hint of the command, if it has one.
///
/// # Safety
/// `fctx` is the live filter context.
unsafe fn arm_elem_hint(fctx: *mut raw::RedisModuleCommandFilterCtx, argc: usize) -> bool {
    let argv: Vec<&[u8]> = (0..argc).map(|i| ffi::filter_arg(fctx, i)).collect();
    let Some(mut hints) = describe(&argv) else {
        return false;
    };
    // A ZINCRBY, INCRBYFLOAT or HINCRBYFLOAT adds up with the peer's only if
    // it is exact, which needs the value before it (see
    // `write_hint::zincr_change`, `float_incr_change`): read it now, where
    // the server names the client's db (7.2+).
    for h in hints.iter_mut().filter(|h| h.int_delta.is_some()) {
        let (Some(db), Some(ElementChange::Set { shape, elem, .. })) =
            (ffi::filter_client_db(fctx), h.changes.first())
        else {
            continue;
        };
        if h.read_score {
            h.base_score = ffi::zset_score_before(db, &h.key, elem);
        } else if h.read_value {
            h.value_before = ffi::value_before(db, &h.key, *shape, elem);
        }
    }
    *elem_hint() = hints;
    ELEM_ARMED.store(true, Ordering::Relaxed);
    true
}

/// Command filter: note streams changed by commands that fire no keyspace
/// event. Runs for client and script calls; inside MULTI it runs at queue
/// time (documented limitation).
///
/// # Safety
/// Called by Redis with a live filter context.
pub unsafe extern "C" fn on_command_filter(fctx: *mut raw::RedisModuleCommandFilterCtx) {
    guarded("command filter", (), || {
        let argc = ffi::filter_argc(fctx);
        let name = if argc > 0 {
            ffi::filter_arg(fctx, 0)
        } else {
            &[][..]
        };
        // Every command drops the hints of the one before, EXEC and MULTI
        // included (a hint armed by a command queued in MULTI must not meet
        // that transaction's events).
        disarm_elem_hint();
        // Anything but an append to the same stream may touch it: the open
        // run of appends is checked now, before this command runs.
        if RUN_OPEN.load(Ordering::Relaxed)
            && !(argc > 2 && is_cmd(name, "xadd") && run_named(ffi::filter_arg(fctx, 1)))
        {
            end_run(ffi::stream_newest_in);
        }
        if argc > 1 && served::blocking_name(name) {
            let args: Vec<&[u8]> = (1..argc).map(|i| ffi::filter_arg(fctx, i)).collect();
            if let Some(b) = served::blocking(name, &args) {
                super::served_guard::note(&b);
            }
        }
        // Not while nothing is captured (a passive replica sees every
        // replicated write here, and our own applies pass through here).
        let capture = capturing();
        if capture && hintable(name) && arm_elem_hint(fctx, argc) {
            disarm_hint();
            return;
        }
        if name.len() == 3 && is_cmd(name, "set") {
            if capture {
                arm_hint(fctx, argc);
            } else {
                disarm_hint();
            }
            return;
        }
        disarm_hint();
        if argc < 2 || name.is_empty() || name[0] | 0x20 != b'x' {
            return;
        }
        let mut keys: Vec<Vec<u8>> = Vec::new();
        if is_cmd(name, "xack") || is_cmd(name, "xclaim") || is_cmd(name, "xautoclaim") {
            keys.push(ffi::filter_arg(fctx, 1).to_vec());
        } else if is_cmd(name, "xreadgroup") {
            let pos = (1..argc).find(|&i| is_cmd(ffi::filter_arg(fctx, i), "streams"));
            if let Some(p) = pos {
                let rest = argc - p - 1;
                for i in 0..rest / 2 {
                    keys.push(ffi::filter_arg(fctx, p + 1 + i).to_vec());
                }
                // Served later, unseen: watched until nothing is blocked.
                if (1..p).any(|i| is_cmd(ffi::filter_arg(fctx, i), "block")) {
                    super::group_waiters::note(&keys);
                }
            }
        }
        if !keys.is_empty() {
            STREAM_TOUCHED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(keys);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str) -> Option<Expiry> {
        set_options_expiry(s.split_whitespace().map(str::as_bytes))
    }

    #[test]
    fn set_options_say_what_becomes_of_the_expiry() {
        assert_eq!(opts(""), Some(Expiry::Cleared));
        assert_eq!(opts("NX get xx"), Some(Expiry::Cleared));
        assert_eq!(opts("EX 10"), Some(Expiry::Read));
        assert_eq!(opts("nx pxat 123 GET"), Some(Expiry::Read));
        assert_eq!(opts("KEEPTTL"), Some(Expiry::Read));
        // Unknown options: no shortcut, the key is read back.
        assert_eq!(opts("IFEQ x"), None);
        assert_eq!(opts("EX 10 bogus"), None);
    }
}
