//! Apply: remote batches, in order, under the rule of DESIGN §3.
//!
//! Why on the main thread at before-sleep: there we already hold the lock,
//! the same hold first flushes local changes (so a remote image never lands
//! on a dirty, unstamped key), and the writes made through `call_ext` with
//! replication reach this server's AOF and replicas wrapped as one
//! transaction when the callback returns.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use redis_module::{CallOptions, CallOptionsBuilder, CallReply, CallResult, Context};

use super::capture::APPLYING;
use super::ffi;
use super::ffi::KeyKind;
use super::flush::read_image;
use super::fullsync;
use super::node::with_node;
use crate::core::decide::{check_seq, SeqCheck};
use crate::core::hlc::wall_ms;
use crate::core::image;
use crate::core::image::Reply;
use crate::core::list_op::ListOp;
use crate::core::merge::entry::{
    entry_key, family_clash, full_resync_image_reships, plan_entry, ttl_clash, BatchPosition, Step,
};
use crate::core::merge::rule::Nodes;
use crate::core::merge::view::{KeyPlan, KeyShape, KeyView, Reset};
use crate::core::protocol::{Batch, Op, Shape, Value};
use crate::core::stats::Stats;
use crate::core::unshared::Reason;
use crate::log;
use crate::state::{Inbound, Shared};

/// Sets [`APPLYING`] for its lifetime, also on early return or panic.
struct ApplyingFlag;

impl ApplyingFlag {
    fn set() -> Self {
        APPLYING.store(true, Ordering::Relaxed);
        ApplyingFlag
    }
}

impl Drop for ApplyingFlag {
    fn drop(&mut self) {
        APPLYING.store(false, Ordering::Relaxed);
    }
}

/// The options of every write the apply makes: built once (each build
/// allocates a string and a C string, per applied write before).
fn opts() -> &'static CallOptions {
    static OPTS: std::sync::OnceLock<CallOptions> = std::sync::OnceLock::new();
    OPTS.get_or_init(|| {
        CallOptionsBuilder::new()
            .replicate()
            .errors_as_replies()
            .build()
    })
}

pub(super) fn run(ctx: &Context, cmd: &str, args: &[&[u8]]) -> Result<(), String> {
    let reply: CallResult = ctx.call_ext(cmd, opts(), args);
    match reply {
        Ok(CallReply::Unknown) => Err(format!("{cmd}: unknown reply")),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{cmd}: {}", e.to_utf8_string().unwrap_or_default())),
    }
}

/// RDB type byte of a module data type's DUMP payload.
const RDB_TYPE_MODULE_2: u8 = 7;

/// Write one image into the selected db, with ordinary commands.
pub(super) fn write_image(
    ctx: &Context,
    key: &[u8],
    value: &Value,
    expire_at_ms: Option<i64>,
    propagate: bool,
) -> Result<(), String> {
    if let Value::String(v) = value {
        // A value already past its expiry takes the command path (which
        // deletes it at once) instead of being stored expired.
        if expire_at_ms.is_none_or(|at| at > wall_ms() as i64) {
            return ffi::set_string(ctx, key, v, expire_at_ms, propagate);
        }
    }
    if let Value::HashTtl(fields) = value {
        if !super::server::field_ttls() {
            report_field_ttls_lost(key);
            let plain = image::without_field_ttls(fields);
            return write_image(ctx, key, &plain, expire_at_ms, propagate);
        }
    }
    if let Value::Dump(p) = value {
        // Outside a client's RESTORE, Redis terminates on a corrupt payload:
        // never hand it a built-in type's bytes (those travel typed).
        if p.first() != Some(&RDB_TYPE_MODULE_2) {
            return Err("refused a DUMP payload that is not a module data type".into());
        }
        let ours = Shared::get().map_or(u32::MAX, |s| s.rdb_version);
        if let Some(theirs) = image::dump_rdb_version(p).filter(|v| *v > ours) {
            // A newer server's module payload cannot be restored here; ending the session would
            // only repeat the failure, so the key is left as it is and that is said.
            let msg = format!(
                "cannot store module-type key '{}': the peer's DUMP payload has RDB version {theirs}, newer than this server's {ours}; the key differs between the sides until this server is upgraded",
                String::from_utf8_lossy(key)
            );
            log::warning(&msg);
            if let Some(shared) = Shared::get() {
                shared.set_error(msg);
            }
            return Ok(());
        }
    }
    for command in image::rebuild(key, value, expire_at_ms) {
        let Some((name, args)) = command.split_first() else {
            continue;
        };
        let name = std::str::from_utf8(name).map_err(|_| "bad command name".to_string())?;
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        run(ctx, name, &args)?;
    }
    Ok(())
}

/// Images with hash field TTLs received by a server without them (before 7.4).
static FIELD_TTLS_LOST: AtomicU64 = AtomicU64::new(0);

/// A peer sent hash field TTLs this server cannot store: the fields are kept without TTL
/// (dropping the fields would lose data), and that is said in `last_error` and the log
/// (first time, then every 1000th), never silently.
fn report_field_ttls_lost(key: &[u8]) {
    let n = FIELD_TTLS_LOST.fetch_add(1, Ordering::Relaxed) + 1;
    let msg = format!(
        "peer sent hash field TTLs (key '{}'), but this server has no hash field expiration (Redis 7.4+): the fields are kept WITHOUT their TTLs on this side ({n} images so far); run Redis 7.4+ on both sides",
        String::from_utf8_lossy(key)
    );
    if n == 1 || n.is_multiple_of(1000) {
        log::warning(&msg);
    }
    if let Some(shared) = Shared::get() {
        shared.set_error(msg);
    }
}

/// Empty the selected db but keep `survivors` (their pending local write
/// is newer than the remote flush, so they survive on both sides).
fn flush_keeping(
    ctx: &Context,
    db: u32,
    survivors: &[Vec<u8>],
    propagate: bool,
) -> Result<(), String> {
    let mut keep = Vec::with_capacity(survivors.len());
    for key in survivors {
        if let Some(img) = read_image(ctx, db, key)? {
            keep.push((key, img));
        }
    }
    ffi::select_db(ctx, db as i32);
    run(ctx, "FLUSHDB", &[])?;
    for (key, (value, exp)) in keep {
        write_image(ctx, key, &value, exp, propagate)?;
    }
    Ok(())
}

/// Replay a peer's list command on our identical list (stream appends
/// through the key API, `glue::stream_append`).
fn replay_list(ctx: &Context, key: &[u8], op: &ListOp, propagate: bool) -> Result<(), String> {
    if let ListOp::XAdd { entries } = op {
        if super::stream_append::fits(entries) {
            return super::stream_append::append(ctx, key, entries, propagate);
        }
    }
    if let ListOp::XGroups { groups } = op {
        return super::stream_groups::apply(ctx, key, groups, propagate);
    }
    for (name, rest) in op.commands() {
        let mut args: Vec<&[u8]> = Vec::with_capacity(1 + rest.len());
        args.push(key);
        args.extend(rest.iter().map(Vec::as_slice));
        run(ctx, name, &args)?;
    }
    Ok(())
}

/// During a full resync, remember the keys the source has.
fn note_received(entry: &crate::core::protocol::Entry) {
    if let Op::Set { key, .. } | Op::Element { key, .. } = &entry.op {
        if fullsync::target_receiving() {
            fullsync::target_received(entry.db, key);
        }
    }
}

/// The key as the element merge reads it, answered by Redis.
struct RedisView<'c> {
    ctx: &'c Context,
    key: &'c [u8],
    kind: KeyKind,
    len: usize,
    ttl: bool,
}

impl<'c> RedisView<'c> {
    /// Look `key` up in the selected db.
    fn open(ctx: &'c Context, key: &'c [u8]) -> Result<Self, String> {
        let (kind, len, ttl) = ffi::key_shape(ctx, key).ok_or("the key API is unavailable")?;
        Ok(RedisView {
            ctx,
            key,
            kind,
            len,
            ttl,
        })
    }

    /// A key with no element family of its own (nothing to read).
    fn none(ctx: &'c Context) -> Self {
        RedisView {
            ctx,
            key: &[],
            kind: KeyKind::Missing,
            len: 0,
            ttl: false,
        }
    }

    fn query(&self, cmd: &str, args: &[&[u8]]) -> Option<Reply> {
        let opts = CallOptionsBuilder::new().errors_as_replies().build();
        let r: CallResult = self.ctx.call_ext(cmd, &opts, args);
        match super::flush::to_reply(&r) {
            Reply::Error(e) => {
                log::warning(&format!("element merge cannot read a key: {cmd}: {e}"));
                None
            }
            r => Some(r),
        }
    }
}

impl KeyView for RedisView<'_> {
    fn shape(&self) -> KeyShape {
        match self.kind {
            KeyKind::Missing => KeyShape::Missing,
            KeyKind::String => KeyShape::Elements(Shape::Str),
            KeyKind::Hash => KeyShape::Elements(Shape::Hash),
            KeyKind::Set => KeyShape::Elements(Shape::Set),
            KeyKind::ZSet => KeyShape::Elements(Shape::ZSet),
            KeyKind::List | KeyKind::Stream | KeyKind::Module => KeyShape::Other,
        }
    }

    fn element_count(&self) -> usize {
        match self.kind {
            KeyKind::Missing => 0,
            KeyKind::String => 1,
            _ => self.len,
        }
    }

    fn get(&self, elem: &[u8]) -> Option<Vec<u8>> {
        match self.kind {
            KeyKind::String if elem.is_empty() => match self.query("GET", &[self.key])? {
                Reply::Bytes(b) => Some(b),
                _ => None,
            },
            KeyKind::Hash => ffi::hash_get(self.ctx, self.key, elem),
            KeyKind::Set => match self.query("SISMEMBER", &[self.key, elem])? {
                Reply::Int(1) => Some(Vec::new()),
                _ => None,
            },
            KeyKind::ZSet => super::flush::zscore(self.ctx, self.key, elem),
            _ => None,
        }
    }
}

/// Execute a plan of the element merge on `key` of the selected db.
pub(super) fn execute(
    ctx: &Context,
    key: &[u8],
    plan: &KeyPlan<'_>,
    propagate: bool,
) -> Result<(), String> {
    match plan.reset {
        Reset::Keep => {}
        Reset::Clear => run(ctx, "DEL", &[key])?,
        Reset::Image(Op::Set {
            value,
            expire_at_ms,
            ..
        }) => write_image(ctx, key, value, *expire_at_ms, propagate)?,
        Reset::Image(_) => run(ctx, "DEL", &[key])?,
    }
    if plan.writes.is_empty() && plan.adds.is_empty() {
        return Ok(());
    }
    let Some(shape) = plan.shape else {
        return Err("element writes without a key type".into());
    };
    // Sets before deletes: a delete that empties the key (Redis removes it)
    // and then a set would re-create it without its expiry.
    let sets: Vec<(&[u8], &[u8])> = plan
        .writes
        .iter()
        .filter_map(|(e, v)| v.as_deref().map(|v| (e.as_slice(), v)))
        .collect();
    let dels: Vec<&[u8]> = plan
        .writes
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(e, _)| e.as_slice())
        .collect();
    let mut args: Vec<&[u8]> = Vec::with_capacity(1 + 2 * sets.len());
    for (elem, delta) in &plan.adds {
        add(ctx, key, shape, elem, *delta)?;
    }
    match shape {
        Shape::Str => {
            if let Some((_, v)) = sets.first() {
                if plan.keep_ttl {
                    run(ctx, "SET", &[key, v, b"KEEPTTL"])?;
                } else {
                    run(ctx, "SET", &[key, v])?;
                }
            } else if !dels.is_empty() {
                run(ctx, "DEL", &[key])?;
            }
            return Ok(());
        }
        Shape::Hash if !sets.is_empty() => {
            // Through the key API (`glue::hash_set`); `HSET` where it cannot.
            if let Err(e) = super::hash_set::set(ctx, key, &sets, propagate) {
                log::verbose(&format!("hash fields through HSET: {e}"));
                args.push(key);
                for (e, v) in &sets {
                    args.extend([*e, *v]);
                }
                run(ctx, "HSET", &args)?;
            }
        }
        Shape::Set if !sets.is_empty() => {
            args.push(key);
            args.extend(sets.iter().map(|(e, _)| *e));
            run(ctx, "SADD", &args)?;
        }
        Shape::ZSet if !sets.is_empty() => {
            args.push(key);
            for (e, v) in &sets {
                args.extend([*v, *e]);
            }
            run(ctx, "ZADD", &args)?;
        }
        _ => {}
    }
    if !dels.is_empty() {
        let cmd = match shape {
            Shape::Hash => "HDEL",
            Shape::Set => "SREM",
            Shape::ZSet => "ZREM",
            Shape::Str => "DEL",
        };
        let mut args: Vec<&[u8]> = Vec::with_capacity(1 + dels.len());
        args.push(key);
        args.extend(dels);
        run(ctx, cmd, &args)?;
    }
    Ok(())
}

/// One deferred increment of a plan ([`KeyPlan::adds`]): the server's own
/// `INCRBY`/`HINCRBY`; if it refuses (the sum overflows 64 bits, the value
/// is not an integer), the rule's meaning by hand: read, increment with
/// wrapping (a non-integer absorbs it), write back if it changed.
fn add(ctx: &Context, key: &[u8], shape: Shape, elem: &[u8], delta: i64) -> Result<(), String> {
    let d = delta.to_string();
    let native = match shape {
        Shape::Str => ctx.call_ext::<_, CallResult>("INCRBY", opts(), &[key, d.as_bytes()]),
        Shape::Hash => ctx.call_ext::<_, CallResult>("HINCRBY", opts(), &[key, elem, d.as_bytes()]),
        Shape::Set | Shape::ZSet => return Err(format!("no counter in a {shape:?} key")),
    };
    if matches!(native, Ok(ref r) if !matches!(r, CallReply::Unknown)) {
        return Ok(());
    }
    let view = RedisView::open(ctx, key)?;
    let current = view.get(elem);
    let value = crate::core::merge::counter::increment(shape, current.as_deref(), delta);
    if current.as_deref() == Some(value.as_slice()) {
        return Ok(());
    }
    match shape {
        Shape::Str => run(ctx, "SET", &[key, &value, b"KEEPTTL"]),
        _ => run(ctx, "HSET", &[key, elem, &value]),
    }
}

/// The peer ships element records only for keys without a TTL (see
/// `flush`). If ours has one and we hold no change of it the peer has not
/// seen, it is the incarnation that expired on the peer before the peer
/// wrote a new key of that name: delete it, as the peer's expiry did.
/// If we do hold such a change (our TTL is a concurrent `EXPIRE` here),
/// the change is merged into our key, which keeps our TTL, while the peer
/// may meet our image only after it expired: the key is re-shipped whole
/// (the second value), and last-writer-wins on images settles it.
/// Returns the view to plan with.
fn drop_stale_incarnation<'c>(
    ctx: &'c Context,
    shared: &Shared,
    db: u32,
    view: RedisView<'c>,
) -> Result<(RedisView<'c>, bool), String> {
    if !view.ttl || shared.table_overflowed.load(Ordering::Relaxed) {
        return Ok((view, false));
    }
    if !with_node(|n| n.pending.changes_of(db, view.key).is_empty()) {
        return Ok((view, true));
    }
    run(ctx, "DEL", &[view.key])?;
    Ok((RedisView::open(ctx, view.key)?, false))
}

/// Keys where two element families met (test builds): the self-check
/// leaves them to the tests' end-state comparison. Bounded: cleared when
/// large (a key then gets checked again, which at worst reports a
/// transient difference of a retyped key).
static RETYPED: std::sync::Mutex<Vec<(u32, Vec<u8>)>> = std::sync::Mutex::new(Vec::new());

fn note_retyped(db: u32, key: &[u8]) {
    let mut r = RETYPED.lock().unwrap_or_else(|p| p.into_inner());
    if r.len() > 100_000 {
        r.clear();
    }
    if !r.iter().any(|(d, k)| *d == db && k == key) {
        r.push((db, key.to_vec()));
    }
}

/// Keys where a full resync's (or a resume's) image met changes of ours,
/// noted since the last flush (test builds): this node's merge result goes
/// back as an image, and until the flush puts it in the table the key
/// differs from the peer's by design, so the self-check leaves it alone.
/// Found by the restart simulation: a resume's image met a change of ours
/// the peer had already beaten, and the next batch's check came before our
/// re-shipped image left. Only these re-ships: others (a list command that
/// lost, say) must still be caught replaying on a key the peer never held.
static RESHIPPING: std::sync::Mutex<Vec<(u32, Vec<u8>)>> = std::sync::Mutex::new(Vec::new());

/// The flush took the dirty log: the re-shipped images are in the table now.
pub fn reships_flushed() {
    if super::guard::test_hooks() {
        RESHIPPING.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

fn image_reshipping(db: u32, key: &[u8], this_batch: &[(u32, Vec<u8>)]) -> bool {
    this_batch.iter().any(|(d, k)| *d == db && k == key)
        || RESHIPPING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(d, k)| *d == db && k == key)
}

fn was_retyped(db: u32, key: &[u8]) -> bool {
    let r = RETYPED.lock().unwrap_or_else(|p| p.into_inner());
    r.iter().any(|(d, k)| *d == db && k == key)
}

/// Set once this node's table of un-acknowledged writes was dropped
/// (overflow, or reset for a full resync): from then on it may hold local
/// changes the peer has not seen without knowing it, and the self-check
/// (test builds) would report those as mismatches. Convergence tests still
/// compare the end state.
pub static UNTRACKED_SINCE_START: AtomicBool = AtomicBool::new(false);

/// Element self-checks that failed (test builds; see `Op::Check`).
static CHECK_MISMATCHES: AtomicU64 = AtomicU64::new(0);

/// Compare the peer's digest of a key with ours (test builds only: the
/// proof that a capture hint described its write exactly).
///
/// A mismatch logs what this node holds and the batch's records of the key
/// (what it just applied), so an intermittent one can be read from the log.
fn self_check(ctx: &Context, shared: &Shared, batch: &Batch, db: u32, key: &[u8], theirs: &[u8]) {
    if !super::guard::test_hooks() || UNTRACKED_SINCE_START.load(Ordering::Relaxed) {
        return;
    }
    // While a full resync arrives (or before this node first synced), the
    // key's image may not have been sent yet.
    if fullsync::target_receiving() || shared.fresh.load(Ordering::Relaxed) {
        return;
    }
    // `DEBUG DIGEST-VALUE` formats sorted-set scores differently before and
    // from 7.2 (`%.17g`, shortest form): only one version compares.
    if shared.peer_rdb_version.load(Ordering::Relaxed) != shared.rdb_version {
        return;
    }
    // A key with a TTL may expire on one side first: not a capture fault.
    if ffi::read_expiry(ctx, key).is_none_or(|e| e.is_some()) {
        return;
    }
    let Some(ours) = super::flush::digest(ctx, key) else {
        return;
    };
    if ours != theirs {
        let n = CHECK_MISMATCHES.fetch_add(1, Ordering::Relaxed) + 1;
        let mut here = format!("{:?}", read_image(ctx, db, key));
        here.truncate(4000);
        let mut records = batch
            .entries
            .iter()
            .filter(|e| e.db == db && entry_key(e).is_some_and(|k| k == key))
            .map(|e| format!("{:?} @{:?}", e.op, e.stamp))
            .collect::<Vec<_>>()
            .join("; ");
        records.truncate(4000);
        log::warning(&format!(
            "element self-check mismatch #{n} in db {db} for key {:?}: peer digest {}, ours {}; here: {here}; batch {} (applied before: {}) records of the key: {records}",
            String::from_utf8_lossy(key),
            String::from_utf8_lossy(theirs),
            String::from_utf8_lossy(&ours),
            batch.seq,
            shared.outbox().applied_seq(),
        ));
    }
}

/// Apply one batch, entry by entry under the element merge (DESIGN §11,
/// `core::merge::entry`): each entry is planned against the table and the
/// key as it is, then executed before the next is planned. Returns the
/// number of entries applied, or an error that must end the session.
fn apply_batch(
    ctx: &Context,
    shared: &Shared,
    origin: &str,
    batch: &Batch,
    propagate: bool,
) -> Result<usize, String> {
    let local = shared.config.node_id.as_str();
    // Clock first: refuse a batch stamped too far in the future, entirely.
    let max_hlc = batch.entries.iter().map(|e| e.stamp.hlc).max().unwrap_or(0);
    with_node(|n| {
        n.hlc
            .observe(max_hlc, wall_ms(), shared.max_clock_skew_ms())
    })
    .map_err(|e| e.to_string())?;
    if let Some(e) = batch.entries.iter().find(|e| e.db >= shared.databases) {
        return Err(format!(
            "batch {} names db {} but this server has {}",
            batch.seq, e.db, shared.databases
        ));
    }
    let at = BatchPosition {
        seq: batch.seq,
        applied_before: shared.outbox().applied_seq(),
        now_ms: i64::try_from(wall_ms()).unwrap_or(i64::MAX),
    };
    let nodes = Nodes {
        remote: origin,
        local,
    };
    let _flag = ApplyingFlag::set();
    let mut applied = 0usize;
    let mut lost = 0u64;
    let mut merged = 0u64;
    let mut reship: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut image_reship: Vec<(u32, Vec<u8>)> = Vec::new();
    for entry in &batch.entries {
        if !ffi::select_db(ctx, entry.db as i32) {
            return Err(format!("cannot select db {}", entry.db));
        }
        let receiving = fullsync::target_receiving();
        // A record for a key the source has not sent applies to the
        // source's key, not to our stale one (`unsent_plan`).
        if let (true, Op::Element { key, .. }) = (receiving, &entry.op) {
            if let Some(plan) = fullsync::unsent_plan(entry.db, key) {
                execute(ctx, key, &plan, propagate)?;
            }
        }
        let mut view = match entry_key(entry) {
            Some(key) => RedisView::open(ctx, key)?,
            None => RedisView::none(ctx),
        };
        if let Op::Element { key, .. } = &entry.op {
            let (v, ttl_clash) = drop_stale_incarnation(ctx, shared, entry.db, view)?;
            view = v;
            if ttl_clash {
                reship.push((entry.db, key.clone()));
            }
        }
        // One hold of the node for the questions (asked for every entry).
        let (clash, ttl_clashed, step) = with_node(|n| {
            let clash = family_clash(&mut n.pending, entry, &view);
            let ttl_clashed = ttl_clash(&mut n.pending, entry, at.now_ms);
            let step = plan_entry(&mut n.pending, entry, at, nodes, &view);
            (clash, ttl_clashed, step)
        });
        if let (true, Some(key)) = (ttl_clashed, entry_key(entry)) {
            reship.push((entry.db, key.to_vec()));
            if super::guard::test_hooks() {
                note_retyped(entry.db, key);
            }
        }
        if let (true, Op::Element { key, .. }) = (clash, &entry.op) {
            reship.push((entry.db, key.clone()));
            if super::guard::test_hooks() {
                note_retyped(entry.db, key);
            }
        }
        let step = step.map_err(|e| format!("element change in db {}: {e}", entry.db))?;
        if let Some(key) = entry_key(entry) {
            super::trace::key(entry.db, key, || {
                format!(
                    "apply batch {} (applied before {}) {:?} {:?} clash {clash}: {step:?}",
                    batch.seq, at.applied_before, entry.stamp, entry.op
                )
            });
        }
        if receiving && full_resync_image_reships(entry, &step) {
            if let Some(key) = entry_key(entry) {
                reship.push((entry.db, key.to_vec()));
                if super::guard::test_hooks() {
                    image_reship.push((entry.db, key.to_vec()));
                }
            }
        }
        match step {
            Step::Lost => {
                lost += 1;
                note_received(entry);
            }
            Step::Duplicate => {}
            Step::Won { db, key } => {
                lost += 1;
                note_received(entry);
                reship.push((db, key.to_vec()));
            }
            Step::Superseded { db, key } => {
                note_received(entry);
                super::unshared::note(db, key, Reason::Superseded);
            }
            Step::Covered { db, reship: won } => {
                lost += 1;
                reship.extend(won.into_iter().map(|k| (db, k)));
            }
            Step::MergeAppend {
                db,
                key,
                op,
                local_first,
            } => {
                note_received(entry);
                match super::stream_merge::apply(ctx, key, op, local_first, propagate) {
                    Ok(()) => {
                        applied += 1;
                        merged += 1;
                    }
                    Err(e) => {
                        // Whole-stream last writer wins, as before the merge.
                        log::verbose(&format!(
                            "concurrent stream appends not merged ({e}): re-shipping the key"
                        ));
                        lost += 1;
                        reship.push((db, key.to_vec()));
                    }
                }
            }
            Step::List { db, key, op } => {
                if let Err(e) = replay_list(ctx, key, op, propagate) {
                    // Our list is not the one the origin held (a bug, or a
                    // write outside what the module sees): last-writer-wins
                    // on images settles it rather than leaving it apart.
                    log::warning(&format!(
                        "list command from the peer failed ({e}): re-shipping the key"
                    ));
                    reship.push((db, key.to_vec()));
                }
                note_received(entry);
                // A full resync's source echoes what a target's list command
                // made of its key: the target may keep its own list whole
                // (`fullsync::target_begin`), one the source never held.
                // (The simulation found it needed while a restarted
                // tableless resync lost its echo; since that keeps it, no
                // schedule in 100,000 needs this one. Kept: it costs one
                // image per list command during a full resync.)
                let sourcing = shared.source_running.load(Ordering::Relaxed)
                    || shared.source_done_seq.load(Ordering::Relaxed) != 0;
                if sourcing || shared.echo_applied.load(Ordering::Relaxed) {
                    reship.push((db, key.to_vec()));
                }
                applied += 1;
            }
            Step::FullSyncBegin { resume } => fullsync::target_begin(resume),
            Step::FullSyncEnd => fullsync::target_end(),
            Step::ResumeEnd => {
                // The target's state ends without a sweep: keys not sent
                // are as the snapshot (or this node's writes) left them.
                fullsync::target_cancel();
                super::persist::resumed(shared);
            }
            Step::Check {
                db,
                key,
                digest,
                concurrent,
            } => {
                // Two element families meeting on one key resolve by the
                // type rule, whose intermediate states may differ (DESIGN
                // §11): only the end state is compared (by the tests).
                if !concurrent && !was_retyped(db, key) && !image_reshipping(db, key, &image_reship)
                {
                    self_check(ctx, shared, batch, db, key, digest);
                }
            }
            Step::Flush {
                db,
                keep,
                rebuild,
                reship: won,
            } => {
                reship.extend(won.into_iter().map(|k| (db, k)));
                flush_keeping(ctx, db, &keep, propagate)?;
                for (key, plan) in &rebuild {
                    execute(ctx, key, plan, propagate)?;
                }
                let left = keep.iter().chain(rebuild.iter().map(|(k, _)| k));
                fullsync::note_remote_flush(db, left.map(Vec::as_slice));
                applied += 1;
            }
            Step::Key {
                key,
                plan,
                concurrent,
                ..
            } => {
                merged += u64::from(concurrent);
                execute(ctx, key, &plan, propagate)?;
                if let Op::Set { .. } | Op::Delete { .. } = &entry.op {
                    // The peer's image: both hold its list now.
                    super::unshared::shared_again(entry.db, key);
                }
                note_received(entry);
                if shared.echo_applied.load(Ordering::Relaxed) {
                    reship.push((entry.db, key.to_vec()));
                }
                applied += 1;
            }
        }
        if let Some(key) = entry_key(entry).filter(|k| super::trace::on(k)) {
            let now = read_image(ctx, entry.db, key);
            super::trace::key(entry.db, key, || format!("after apply: {now:?}"));
        }
    }
    Stats::add(&shared.stats.ops_applied, applied as u64);
    Stats::add(&shared.stats.conflicts_lost, lost);
    Stats::add(&shared.stats.conflicts_merged, merged);
    if !image_reship.is_empty() {
        let mut r = RESHIPPING.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() > 100_000 {
            r.clear();
        }
        r.extend(image_reship);
    }
    for (db, key) in reship {
        super::capture::note_reship(db, &key);
    }
    Ok(applied)
}

/// Drain the inbound queue within the per-iteration budget: batches are
/// applied whole, acks prune the backlog and the table. Returns true if
/// work is left for the next iteration.
///
/// At most `queued` messages are taken: those that were already queued when
/// the before-sleep event began. From 7.2 the server's command clock
/// (`commandTimeSnapshot`, read by e.g. `XCLAIM … TIME`, which clamps a time
/// "in the future" to it) is fixed when a module event starts and not
/// refreshed by nested calls; an image that arrived after that moment can
/// carry a later time than the clock and would be clamped (a stream's
/// delivery times differed between the sides). Later arrivals wait one
/// iteration, which starts with a fresh clock.
pub fn apply_inbound(ctx: &Context, queued: usize) -> bool {
    let Some(shared) = Shared::get() else {
        return false;
    };
    let budget = shared.apply_budget() as usize;
    let saved_db = ffi::selected_db(ctx);
    let mut done = 0usize;
    let mut peer_node = String::new();
    let mut any_batch = false;
    let mut propagate = None;
    let mut taken = 0usize;
    while done < budget && taken < queued {
        taken += 1;
        let msg = match shared.inbound_rx.try_recv() {
            Ok(m) => m,
            Err(_) => break,
        };
        shared.inbound_taken(&msg);
        match msg {
            Inbound::SessionStart { stream_id, node_id } => {
                let prev = shared.peer_stream_id.swap(stream_id, Ordering::Relaxed);
                if prev != stream_id {
                    if prev != 0 {
                        log::notice(&format!("peer {node_id} has a new stream (restarted without its pairing state): applying it from the start"));
                    }
                    shared.outbox().set_applied(0);
                    shared.applied_mirror.store(0, Ordering::Relaxed);
                }
                let applied = shared.outbox().applied_seq();
                shared.history().anchor_applied(stream_id, applied);
                peer_node = node_id;
            }
            Inbound::Ack(seq) => {
                shared.outbox().acknowledge(seq);
                with_node(|n| n.pending.acknowledge(seq));
                let done = shared.source_done_seq.load(Ordering::Relaxed);
                if done != 0 && seq >= done {
                    shared.source_done_seq.store(0, Ordering::Relaxed);
                    shared.resume_in_flight.store(false, Ordering::Relaxed);
                    shared.echo_applied.store(false, Ordering::Relaxed);
                    shared.force_source.store(false, Ordering::Relaxed);
                }
            }
            Inbound::Batch(batch, _) => {
                if shared.passive.load(Ordering::Relaxed) {
                    continue;
                }
                let applied_seq = shared.outbox().applied_seq();
                match check_seq(applied_seq, &batch) {
                    SeqCheck::Apply => {}
                    SeqCheck::Duplicate => continue, // resent after a reconnect
                    SeqCheck::Gap { expected } => {
                        let msg = format!("stream gap: expected batch {expected} but got {}; reconnecting for a resync", batch.seq);
                        log::warning(&msg);
                        shared.set_error(msg);
                        shared.request_drop_session();
                        // Drop everything else queued from this session.
                        shared.drain_inbound();
                        break;
                    }
                }
                if peer_node.is_empty() {
                    peer_node = shared.peer_node_id();
                }
                let propagate = *propagate.get_or_insert_with(|| ffi::propagation_needed(ctx));
                match apply_batch(ctx, shared, &peer_node, &batch, propagate) {
                    Ok(_) => {
                        done += batch.entries.len().max(1);
                        any_batch = true;
                        // Ack in the same hold, after the flush that preceded it.
                        shared.outbox().push_ack(batch.seq);
                        shared.applied_mirror.store(batch.seq, Ordering::Relaxed);
                        let stream = shared.peer_stream_id.load(Ordering::Relaxed);
                        shared
                            .history()
                            .applied_batch(stream, batch.seq, &batch.entries);
                    }
                    Err(e) => {
                        let msg = format!("refused batch {} from the peer: {e}", batch.seq);
                        log::warning(&msg);
                        shared.set_error(msg);
                        shared.request_drop_session();
                        shared.drain_inbound();
                        break;
                    }
                }
            }
        }
    }
    ffi::select_db(ctx, saved_db);
    if any_batch {
        shared.outbox_cv.notify_all();
    }
    !shared.inbound_rx.is_empty()
}
