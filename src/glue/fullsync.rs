//! Authoritative full resync, both ends.
//!
//! Why in chunks from before-sleep: the source streams its dataset by SCAN
//! a bounded number of keys per event-loop iteration, while clients keep
//! writing (their changes travel as normal batches in the same FIFO, so the
//! target sees them after the chunk that held the older image); it pauses
//! while the backlog is more than half full. The target remembers which
//! keys the source sent and, once the source says it is done, deletes the
//! keys the source does not have — except its own un-acknowledged writes.

use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use redis_module::Context;

use super::capture::APPLYING;
use super::ffi;
use super::flush::{drop_oversized, enqueue_batch, key_op, op_size, to_reply, Stamping};
use super::node::with_node;
use crate::core::image::{self, Reply};
use crate::core::merge::rule::replay;
use crate::core::merge::view::KeyPlan;
use crate::core::pending_elements::LocalWrite;
use crate::core::protocol::{ElementChange, Op};
use crate::core::restart::{plan, RestartPlan, SavedPosition, Survivor};
use crate::core::stats::Stats;
use crate::core::table_key::TableKey;
use crate::log;
use crate::state::Shared;

/// Keys per SCAN step.
const SCAN_COUNT: &str = "256";

#[derive(Default)]
struct Source {
    active: bool,
    first: bool,
    db: u32,
    cursor: Vec<u8>,
    keys_sent: u64,
    /// Every db has been scanned to its end.
    scanned_all: bool,
    /// Keys of a SCAN step that did not fit in its chunk, with their db:
    /// sent by the next steps before the scan goes on.
    leftover: Vec<(u32, Vec<u8>)>,
    /// A restart resume: only these keys are sent (no scan), deletes
    /// included, and the end is a `ResumeEnd` (the receiver keeps the rest
    /// of its data).
    resume: Option<Vec<(u32, Vec<u8>)>>,
    /// A full resync: keys our table holds writes of that existed when it
    /// began and that it has not read yet. Why: the target may never have
    /// taken those writes (it restarted from an older snapshot, or a resync
    /// that carried them was cut), while our table keeps them as shipped, so
    /// the resync must carry each such key's state: one deleted since goes
    /// as a delete, and one the scan never lists (deleted before the scan
    /// got there, or written again behind its cursor) goes at the end.
    cover: KeySet,
}

/// Keys per step of a restart resume (as many as a SCAN step reads, about).
const RESUME_STEP: usize = 256;

/// Keys the full-resync source is known to have.
type KeySet = FxHashSet<TableKey>;

#[derive(Default)]
struct Target {
    /// Receiving a full resync: keys the source sent so far.
    receiving: Option<KeySet>,
    /// Sweeping after the source finished: (received keys, db, cursor).
    sweeping: Option<(KeySet, u32, Vec<u8>)>,
    /// Keys this node's table held when the resync began, and keys its
    /// clients wrote since: the sweep keeps them (or rebuilds them from
    /// `changes`).
    local: KeySet,
    /// Keys written by this process's clients before it first synced while
    /// its table was not tracking: new writes, not stale data, so the sweep
    /// keeps them, also across a resync that starts again.
    untracked: KeySet,
    /// This node's element changes since the resync began (pending then,
    /// or written since), per key, in order: a key the source has not sent
    /// is what they make of a missing key (see [`unsent_plan`]).
    changes: FxHashMap<TableKey, Vec<ElementChange>>,
    /// Keys this node wrote whole since the resync began (an image, a
    /// delete): kept as they are.
    imaged: KeySet,
    /// The table overflowed while receiving: the dataset taken does not
    /// cover what it lost, so the overflow stands after the sweep.
    overflowed: bool,
    deleted: u64,
    /// A restart resume, not a full resync: the keys it does not send are
    /// held alike on both sides, so [`unsent_plan`] leaves them alone.
    resuming: bool,
}

static SOURCE: Mutex<Option<Source>> = Mutex::new(None);
static TARGET: Mutex<Option<Target>> = Mutex::new(None);

fn source<T>(f: impl FnOnce(&mut Source) -> T) -> T {
    let mut g = SOURCE.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(Source::default))
}

fn target<T>(f: impl FnOnce(&mut Target) -> T) -> T {
    let mut g = TARGET.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(Target::default))
}

fn scan(ctx: &Context, db: u32, cursor: &[u8]) -> Result<(Vec<u8>, Vec<Vec<u8>>), String> {
    if !ffi::select_db(ctx, db as i32) {
        return Err(format!("db {db} does not exist"));
    }
    let reply = ctx.call_ext::<_, redis_module::CallResult>(
        "SCAN",
        &redis_module::CallOptionsBuilder::new()
            .errors_as_replies()
            .build(),
        &[cursor, b"COUNT", SCAN_COUNT.as_bytes()] as &[&[u8]],
    );
    match to_reply(&reply) {
        Reply::Array(parts) if parts.len() == 2 => {
            let next = match &parts[0] {
                Reply::Bytes(b) => b.clone(),
                _ => return Err("SCAN: bad cursor".into()),
            };
            Ok((next, image::strings(&parts[1])?))
        }
        other => Err(format!("SCAN: unexpected reply {other:?}")),
    }
}

/// Every key of `db` (SWAPDB re-images both dbs).
pub fn all_keys(ctx: &Context, db: u32) -> Vec<Vec<u8>> {
    let saved = ffi::selected_db(ctx);
    // The module scan lists names without expiring keys (SCAN would delete expired ones now and
    // propagate that DEL ahead of the clients' own writes).
    if let Some(keys) = ffi::scan_keys(ctx, db as i32) {
        ffi::select_db(ctx, saved);
        return keys;
    }
    let mut out = Vec::new();
    let mut cursor = b"0".to_vec();
    loop {
        match scan(ctx, db, &cursor) {
            Ok((next, keys)) => {
                out.extend(keys);
                if next == b"0" {
                    break;
                }
                cursor = next;
            }
            Err(e) => {
                log::warning(&format!("cannot list db {db}: {e}"));
                break;
            }
        }
    }
    ffi::select_db(ctx, saved);
    out
}

/// The keys a restarted peer (snapshot `saved`) needs, planned now: after
/// this pass's flush, so every batch before the resync batch the writer
/// starts from is in the history (a plan made at the handshake missed the
/// batches flushed in between, which the writer skips). `None`: a full
/// resync, the reason logged and recorded.
fn resume_keys(
    shared: &Shared,
    saved: SavedPosition,
    replayed: Vec<(u32, Vec<u8>)>,
) -> Option<Vec<(u32, Vec<u8>)>> {
    // The outbox first, then the history: never both held at once.
    let (issued_seq, applied_seq) = {
        let o = shared.outbox();
        (o.last_seq(), o.applied_seq())
    };
    let survivor = Survivor {
        stream_id: shared.stream_id(),
        issued_seq,
        peer_stream_id: shared.peer_stream_id.load(Ordering::Relaxed),
        applied_seq,
    };
    let decided = plan(survivor, saved, &shared.history());
    match decided {
        RestartPlan::Resume(mut keys) => {
            // And the keys its AOF tail replayed after the snapshot: their
            // content there is not what the snapshot's position says.
            keys.extend(replayed.iter().map(|(db, k)| TableKey::new(*db, k)));
            let mut v: Vec<(u32, Vec<u8>)> = keys
                .into_iter()
                .map(|k| (k.db(), k.key().to_vec()))
                .collect();
            // Sent from the end (`split_off`): reverse so the order is kept.
            v.reverse();
            log::notice(&format!(
                "restart resume: sending the peer the {} keys changed since its snapshot",
                v.len()
            ));
            Some(v)
        }
        RestartPlan::Full(why) => {
            let msg = format!("the peer restarted: full resync ({why})");
            log::notice(&msg);
            shared.set_error(msg);
            shared.resume_in_flight.store(false, Ordering::Relaxed);
            None
        }
    }
}

/// Begin sending the whole dataset, or for a restart resume the keys
/// changed since the peer's snapshot (called on the main thread when the
/// link asks).
pub fn start_source(shared: &Shared) {
    let resume = shared
        .resume_from
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .and_then(|(saved, replayed)| resume_keys(shared, saved, replayed));
    // An echo still on is a full resync begun without a table that the
    // peer never took whole: this one has no table either (the writes of
    // before are not in it), so the echo stays (found by the simulation).
    if shared.table_overflowed.swap(false, Ordering::Relaxed) {
        // The table is incomplete: drop it; the full resync carries everything.
        with_node(|n| n.pending.clear());
        shared.echo_applied.store(true, Ordering::Relaxed);
        super::apply::UNTRACKED_SINCE_START.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    shared.source_cancel.store(false, Ordering::Relaxed);
    shared.source_running.store(true, Ordering::Relaxed);
    source(|s| {
        *s = Source {
            active: true,
            first: true,
            db: 0,
            cursor: b"0".to_vec(),
            keys_sent: 0,
            scanned_all: resume.is_some(),
            leftover: Vec::new(),
            resume,
            cover: KeySet::default(),
        }
    });
    if !source(|s| s.resume.is_some()) {
        log::notice("full resync: sending the whole dataset to the peer");
    }
}

/// One bounded step of the source's scan. Returns true while active.
pub fn source_step(ctx: &Context, shared: &std::sync::Arc<Shared>) -> bool {
    if shared.source_cancel.swap(false, Ordering::Relaxed) {
        // This node became the target: the peer's data wins now.
        source(|s| s.active = false);
        shared.source_running.store(false, Ordering::Relaxed);
        log::notice("full resync: stopped sending (this node takes the peer's dataset now)");
        return false;
    }
    let (active, first, resuming) = source(|s| (s.active, s.first, s.resume.is_some()));
    if !active {
        return false;
    }
    // Flow control: leave room in the backlog for the chunks in flight.
    {
        let o = shared.outbox();
        if !first && o.backlog_bytes() as u64 > shared.settings().backlog_size / 2 {
            return true;
        }
    }
    let saved = ffi::selected_db(ctx);
    let mut ops: Vec<(u32, Op)> = Vec::new();
    if first {
        // A resume opens like a full resync too: the restarted node takes
        // its images as a target does (a key whose image meets its own
        // changes is re-shipped), only without the final sweep, and keys
        // it does not send stay as the restarted node holds them.
        ops.push((
            0,
            if resuming {
                Op::ResumeBegin
            } else {
                Op::FullSyncBegin
            },
        ));
    }
    if first && !resuming {
        // A pending flush of ours is newer than the target's older changes
        // in that db: the target cancels them as we do when they arrive
        // (the flush's own batch is before the resync, never sent).
        // Likewise a pending delete of ours, whole-key or by element
        // changes (the key is gone, so the scan does not send it): the
        // target's older image of it loses.
        let (flushed, keys) = with_node(|n| (n.pending.flushed_dbs(), n.pending.keys()));
        ops.extend(flushed.into_iter().map(|db| (db, Op::FlushDb)));
        let mut cover = KeySet::default();
        for k in keys {
            let (db, key) = k.parts();
            let gone = ffi::select_db(ctx, db as i32)
                && ffi::key_shape(ctx, key)
                    .is_some_and(|(kind, _, _)| kind == ffi::KeyKind::Missing);
            if gone {
                ops.push((db, Op::Delete { key: key.to_vec() }));
            } else {
                cover.insert(k);
            }
        }
        source(|s| s.cover = cover);
    }
    // Keys left over by the last step first, else the next resume keys or
    // SCAN step.
    let leftover = source(|s| {
        if !s.leftover.is_empty() {
            return Some(std::mem::take(&mut s.leftover));
        }
        let list = s.resume.as_mut()?;
        let at = list.len().saturating_sub(RESUME_STEP);
        let mut step = list.split_off(at);
        step.reverse();
        Some(step)
    });
    let keys: Vec<(u32, Vec<u8>)> = match leftover {
        Some(x) => x,
        None => {
            let (db, cursor, scanned_all) = source(|s| (s.db, s.cursor.clone(), s.scanned_all));
            if scanned_all {
                // Keys of our table the scan never listed (`Source::cover`):
                // they stay there until handled below.
                source(|s| {
                    s.cover
                        .iter()
                        .take(RESUME_STEP)
                        .map(|k| {
                            let (db, key) = k.parts();
                            (db, key.to_vec())
                        })
                        .collect()
                })
            } else {
                match scan(ctx, db, &cursor) {
                    Ok((next, keys)) => {
                        source(|s| {
                            if next == b"0" {
                                s.db += 1;
                                s.cursor = b"0".to_vec();
                                s.scanned_all = s.db >= shared.databases;
                            } else {
                                s.cursor = next;
                            }
                        });
                        keys.into_iter().map(|k| (db, k)).collect()
                    }
                    Err(e) => {
                        log::warning(&format!("full resync scan failed: {e}"));
                        source(|s| s.scanned_all = true);
                        Vec::new()
                    }
                }
            }
        }
    };
    // At most half a frame of images per chunk (the encoding adds to the
    // payload), so a chunk of large keys never passes the peer's
    // `max-frame-size`; the first key of a chunk is always taken (a key
    // larger than a frame is left out by `drop_oversized`).
    let budget = usize::try_from(shared.config.max_frame_size / 2).unwrap_or(usize::MAX);
    let mut bytes = 0usize;
    let mut taken = 0usize;
    let mut rest: Vec<(u32, Vec<u8>)> = Vec::new();
    for (db, key) in keys {
        if !rest.is_empty() {
            rest.push((db, key));
            continue;
        }
        let op = key_op(ctx, db, key.clone());
        if let (true, Ok(Op::Set { .. })) = (taken > 0, &op) {
            if bytes.saturating_add(op.as_ref().map_or(0, op_size)) > budget {
                rest.push((db, key));
                continue;
            }
        }
        // Handled now (a key left for the next step stays in `cover`).
        let covered = !resuming && source(|s| s.cover.remove(&TableKey::new(db, &key)));
        match op {
            Ok(op @ Op::Set { .. }) => {
                let n = op_size(&op);
                bytes = bytes.saturating_add(n);
                taken += 1;
                ops.push((db, op));
            }
            // A resume names keys that changed: one that is gone now is
            // deleted on the peer (its snapshot may hold it). So is a key of
            // our table in a full resync (`Source::cover`).
            Ok(op @ Op::Delete { .. }) if resuming || covered => ops.push((db, op)),
            Ok(_) => {} // gone since the scan listed it: nothing to send
            Err(e) => log::warning(&format!("full resync: cannot read a key: {e}")),
        }
    }
    let more_keys = !rest.is_empty();
    if more_keys {
        source(|s| s.leftover = rest);
    }
    ffi::select_db(ctx, saved);
    drop_oversized(shared, &mut ops);
    let done = !more_keys
        && source(|s| {
            s.scanned_all && s.resume.as_ref().is_none_or(|l| l.is_empty()) && s.cover.is_empty()
        });
    if done {
        ops.push((
            0,
            if resuming {
                Op::ResumeEnd
            } else {
                Op::FullSyncEnd
            },
        ));
    }
    let n = ops.len() as u64;
    enqueue_batch(
        shared,
        ops,
        Stamping::FullSync {
            first,
            whole: !resuming,
        },
    );
    if done {
        // Its acknowledgement means the peer took the dataset (see the Ack
        // in `apply`): an operator's SYNC.PAIR SOURCE has then served.
        let seq = shared.outbox().last_seq();
        shared.source_done_seq.store(seq, Ordering::Relaxed);
    }
    source(|s| {
        s.first = false;
        s.keys_sent += n;
        if done {
            s.active = false;
            shared.source_running.store(false, Ordering::Relaxed);
            if resuming {
                // (`keys_sent` counts entries: the begin and end markers are two.)
                let keys = s.keys_sent.saturating_sub(2);
                Stats::add(&shared.stats.restart_resumes_served, 1);
                Stats::add(&shared.stats.restart_resume_keys, keys);
                log::notice(&format!(
                    "restart resume: sent the {keys} keys changed since the peer's snapshot"
                ));
            } else {
                log::notice(&format!("full resync: sent {} keys", s.keys_sent));
            }
        }
    });
    !done
}

/// The peer starts a full resync to us (`resume`: a restart resume, which
/// sends only the keys changed since our snapshot).
pub fn target_begin(resume: bool) {
    // Our un-acknowledged writes are on their way to the source (in our
    // stream), maybe after its scan passed them: the sweep must keep them.
    // A resync that starts again starts from the table as it is now.
    let (pending, changes, imaged) = with_node(|n| {
        let mut changes: FxHashMap<TableKey, Vec<ElementChange>> = FxHashMap::default();
        let mut imaged = KeySet::default();
        for (key, list) in n.pending.element_changes() {
            // A pending flush of the db wiped what came before it.
            let flushed = n.pending.flush_stamp(key.db());
            for p in list {
                if flushed.is_some_and(|f| p.stamp < f) {
                    continue;
                }
                match p.write {
                    // A list command does not replay onto a missing key's
                    // elements: the key is kept whole, like an image.
                    LocalWrite::Change(c) if c.is_list() => {
                        imaged.insert(key.clone());
                    }
                    LocalWrite::Change(c) => changes.entry(key.clone()).or_default().push(c),
                    LocalWrite::Image { .. } => {
                        imaged.insert(key.clone());
                    }
                }
            }
        }
        for (db, key, _) in n.pending.entries_by_stamp() {
            if let Some(key) = key {
                imaged.insert(TableKey::new(db, &key));
            }
        }
        (n.pending.keys(), changes, imaged)
    });
    // An overflow since the handshake (a node that had overflowed before
    // would be the source) lost writes the source's dataset does not hold:
    // it stands after the sweep. A fresh node's untracked writes are kept
    // by the sweep instead (`untracked`).
    let overflowed = Shared::get().is_some_and(|s| {
        let overflowed = s.table_overflowed.load(Ordering::Relaxed) && !s.may_take_full_resync();
        s.target_expected.store(false, Ordering::Relaxed);
        overflowed
    });
    target(|t| {
        t.receiving = Some(KeySet::default());
        t.sweeping = None;
        t.deleted = 0;
        t.overflowed |= overflowed;
        t.local = pending.into_iter().collect();
        t.changes = changes;
        t.imaged = imaged;
        t.resuming = resume;
    });
    TARGET_ACTIVE.store(true, Ordering::Relaxed);
    if resume {
        log::notice("restart resume: receiving the keys the peer changed since our snapshot");
    } else {
        log::notice("full resync: receiving the peer's dataset");
    }
}

/// Remember a key the source has (sent in the resync, or written by it
/// since: the sweep must not delete those either).
pub fn target_received(db: u32, key: &[u8]) {
    target(|t| {
        let set = match (t.receiving.as_mut(), t.sweeping.as_mut()) {
            (Some(r), _) => Some(r),
            (None, Some((r, _, _))) => Some(r),
            (None, None) => None,
        };
        if let Some(r) = set {
            r.insert(TableKey::new(db, key));
        }
    });
}

/// Remember a key written locally while this node has not synced yet and
/// its table is not tracking.
pub fn note_untracked_write(db: u32, key: &[u8]) {
    target(|t| {
        t.untracked.insert(TableKey::new(db, key));
    });
}

/// Remember keys written locally (the table's, when it is about to be
/// dropped).
pub fn note_untracked_writes(keys: Vec<TableKey>) {
    target(|t| t.untracked.extend(keys));
}

/// A write of this node's clients while a full resync comes in, with what
/// it did: the sweep keeps the key, or rebuilds it from its changes.
pub fn note_local_op(db: u32, op: &Op) {
    target(|t| match op {
        Op::Element { key, change, .. } if change.is_list() => {
            let k = TableKey::new(db, key);
            t.local.insert(k.clone());
            t.imaged.insert(k);
        }
        Op::Element { key, change, .. } => {
            let k = TableKey::new(db, key);
            t.local.insert(k.clone());
            t.changes.entry(k).or_default().push(change.clone());
        }
        Op::Set { key, .. } | Op::Delete { key } => {
            let k = TableKey::new(db, key);
            t.local.insert(k.clone());
            t.imaged.insert(k);
        }
        Op::FlushDb => {
            t.changes.retain(|k, _| k.db() != db);
            t.imaged.retain(|k| k.db() != db);
        }
        Op::FullSyncBegin
        | Op::FullSyncEnd
        | Op::ResumeBegin
        | Op::ResumeEnd
        | Op::Check { .. } => {}
    });
}

/// The source flushed `db` while its full resync comes in; `left` is what
/// the merge kept or rebuilt there (this node's later changes): what the db
/// holds now is what the source holds once it has those, so the sweep
/// leaves it alone, and older changes are no longer ours to replay.
pub fn note_remote_flush<'k>(db: u32, left: impl Iterator<Item = &'k [u8]>) {
    if !target_receiving() {
        return;
    }
    target(|t| {
        t.changes.retain(|k, _| k.db() != db);
        t.imaged.retain(|k| k.db() != db);
        let set = match (t.receiving.as_mut(), t.sweeping.as_mut()) {
            (Some(r), _) => r,
            (None, Some((r, _, _))) => r,
            (None, None) => return,
        };
        set.extend(left.map(|k| TableKey::new(db, k)));
    });
}

/// The table overflowed: if a full resync is coming in, the overflow must
/// stand after it (the dataset taken does not cover the writes it lost).
pub fn note_overflow() {
    if target_receiving() {
        target(|t| t.overflowed = true);
    }
}

/// The operator chose the peer's data: this node's earlier writes lose.
pub fn forget_local_writes() {
    target(|t| {
        t.local = KeySet::default();
        t.untracked = KeySet::default();
        t.changes = FxHashMap::default();
        t.imaged = KeySet::default();
    });
}

/// While a full resync comes in: how to make a key the source has not
/// sent (yet) what the source holds before one of its element records is
/// applied to it, or `None` to leave the key as it is.
///
/// Why: the source changed a key it did not have when its scan passed
/// (else it sends the key's image later, which replaces whatever this
/// rebuilds). Its record applies to that key, not to the stale content
/// this node still holds: what this node's own changes since the resync
/// began make of a missing key is what the source holds once it applied
/// them. Not in a restart resume: a key it does not send is one both
/// sides hold alike since our snapshot, and one it sends later is
/// replaced by its image.
pub fn unsent_plan(db: u32, key: &[u8]) -> Option<KeyPlan<'static>> {
    if !target_receiving() {
        return None;
    }
    target(|t| {
        let k = TableKey::new(db, key);
        let received = match (t.receiving.as_ref(), t.sweeping.as_ref()) {
            (Some(r), _) => r,
            (None, Some((r, _, _))) => r,
            (None, None) => return None,
        };
        if t.resuming || received.contains(&k) || t.imaged.contains(&k) {
            return None;
        }
        Some(replay(t.changes.get(&k).map_or(&[][..], Vec::as_slice)))
    })
}

/// This node became the source (or the target of the other side's full
/// resync): a full resync it was receiving is over.
pub fn target_cancel() {
    target(|t| {
        t.receiving = None;
        t.sweeping = None;
        t.local = KeySet::default();
        // Caught up by a resume, or authoritative now: what this node wrote
        // untracked went in its stream or goes with its dataset.
        t.untracked = KeySet::default();
        t.changes = FxHashMap::default();
        t.imaged = KeySet::default();
        t.overflowed = false;
        t.resuming = false;
    });
    if let Some(s) = Shared::get() {
        s.awaiting_full_sync.store(false, Ordering::Relaxed);
        s.target_expected.store(false, Ordering::Relaxed);
    }
    TARGET_ACTIVE.store(false, Ordering::Relaxed);
}

/// Set while a full resync is received or swept (checked on every applied
/// key, so without taking the lock).
static TARGET_ACTIVE: AtomicBool = AtomicBool::new(false);

/// Is a full resync being received or swept (so applied keys must be noted)?
pub fn target_receiving() -> bool {
    TARGET_ACTIVE.load(Ordering::Relaxed)
}

/// The source sent everything: start deleting what it does not have.
pub fn target_end() {
    target(|t| {
        if let Some(r) = t.receiving.take() {
            t.sweeping = Some((r, 0, b"0".to_vec()));
        }
    });
}

/// One bounded step of the target's sweep. Returns true while active.
pub fn target_step(ctx: &Context, shared: &Shared) -> bool {
    let Some((db, cursor)) = target(|t| t.sweeping.as_ref().map(|(_, db, c)| (*db, c.clone())))
    else {
        return false;
    };
    let saved = ffi::selected_db(ctx);
    let step = scan(ctx, db, &cursor);
    let mut finished = false;
    match step {
        Ok((next, keys)) => {
            // Keys the source did not send: rebuilt from this node's own
            // changes since the resync began (what the source holds once it
            // applied them), kept if this node wrote them otherwise, else
            // deleted. A pending flush of the db does not keep a key: one
            // that exists after it was written since or taken from the peer.
            let fates: Vec<(Vec<u8>, Option<KeyPlan<'static>>)> = target(|t| {
                let received = t.sweeping.as_ref().map(|(r, _, _)| r);
                keys.into_iter()
                    .filter_map(|k| {
                        let dk = TableKey::new(db, &k);
                        if received.is_some_and(|r| r.contains(&dk)) || t.imaged.contains(&dk) {
                            return None;
                        }
                        if let Some(changes) = t.changes.get(&dk) {
                            return Some((k, Some(replay(changes))));
                        }
                        if t.local.contains(&dk) || t.untracked.contains(&dk) {
                            return None;
                        }
                        Some((k, None))
                    })
                    .collect()
            });
            let fates: Vec<(Vec<u8>, Option<KeyPlan<'static>>)> = fates
                .into_iter()
                .filter(|(k, plan)| {
                    plan.is_some() || with_node(|n| n.pending.own_stamp(db, k).is_none())
                })
                .collect();
            let mut deleted = 0u64;
            if !fates.is_empty() {
                APPLYING.store(true, Ordering::Relaxed);
                ffi::select_db(ctx, db as i32);
                let propagate = ffi::propagation_needed(ctx);
                for (k, plan) in &fates {
                    let done = match plan {
                        Some(plan) => super::apply::execute(ctx, k, plan, propagate),
                        None => {
                            deleted += 1;
                            super::apply::execute(ctx, k, &replay(&[]), propagate)
                        }
                    };
                    if let Err(e) = done {
                        log::warning(&format!("full resync sweep: {e}"));
                    }
                }
                APPLYING.store(false, Ordering::Relaxed);
            }
            target(|t| {
                t.deleted += deleted;
                if let Some((_, d, c)) = t.sweeping.as_mut() {
                    if next == b"0" {
                        *d += 1;
                        *c = b"0".to_vec();
                        if *d >= shared.databases {
                            finished = true;
                        }
                    } else {
                        *c = next;
                    }
                }
            });
        }
        Err(e) => {
            log::warning(&format!("full resync sweep failed: {e}"));
            finished = true;
        }
    }
    ffi::select_db(ctx, saved);
    if finished {
        let (deleted, overflowed, untracked) = target(|t| {
            t.sweeping = None;
            t.local = KeySet::default();
            t.changes = FxHashMap::default();
            t.imaged = KeySet::default();
            (
                t.deleted,
                std::mem::take(&mut t.overflowed),
                std::mem::take(&mut t.untracked),
            )
        });
        // What this node's clients wrote while its table was not tracking
        // may never have reached the source (a backlog lost with a session),
        // or reached it after its image of the key was read: the key goes
        // again as it is now, so both sides end with it (found by the
        // simulation, once it kept these writes as the glue does).
        if !untracked.is_empty() {
            log::notice(&format!(
                "full resync received: re-sending {} keys written here while the table was not tracking",
                untracked.len()
            ));
        }
        for k in untracked {
            super::capture::note_reship(k.db(), k.key());
        }
        TARGET_ACTIVE.store(false, Ordering::Relaxed);
        shared.fresh.store(false, Ordering::Relaxed);
        shared.clear_restored();
        shared.awaiting_full_sync.store(false, Ordering::Relaxed);
        // What our table missed before the resync is settled by the dataset
        // we took; what it missed since is not.
        if !overflowed {
            shared.table_overflowed.store(false, Ordering::Relaxed);
        } else {
            // The table still misses writes: no remote record may be applied
            // against it until the resync it forces has run (DESIGN §3), so
            // end the session now; the next one sends our dataset. Waiting
            // for the next link fault let our untracked re-ships cross with
            // the source's older echoes of our writes (found by the
            // simulation, `overflow_waits`).
            log::warning(
                "full resync received while max-pending-keys was exceeded: reconnecting to resync the peer from here",
            );
            shared.set_error("pending-keys table overflow: full resync needed");
            shared.request_drop_session();
        }
        Stats::add(&shared.stats.full_syncs, 1);
        log::notice(&format!(
            "full resync received: {deleted} keys the source did not have were deleted"
        ));
    }
    !finished
}
