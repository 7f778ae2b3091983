//! Authoritative full resync, both ends.
//!
//! Why in chunks from before-sleep: the source streams its dataset by SCAN
//! a bounded number of keys per event-loop iteration, while clients keep
//! writing (their changes travel as normal batches in the same FIFO, so the
//! target sees them after the chunk that held the older image); it pauses
//! while the backlog is more than half full. The target remembers which
//! keys the source sent and, once the source says it is done, deletes the
//! keys the source does not have — except its own un-acknowledged writes.

use rustc_hash::FxHashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use redis_module::Context;

use super::capture::APPLYING;
use super::ffi;
use super::flush::{drop_oversized, enqueue_batch, key_op, op_size, to_reply, Stamping};
use super::node::with_node;
use crate::core::image::{self, Reply};
use crate::core::protocol::Op;
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
    /// Keys of a SCAN step that did not fit in its chunk, and their db:
    /// sent by the next steps before the scan goes on.
    leftover: Vec<Vec<u8>>,
    leftover_db: u32,
}

/// Keys the full-resync source is known to have.
type KeySet = FxHashSet<TableKey>;

#[derive(Default)]
struct Target {
    /// Receiving a full resync: keys the source sent so far.
    receiving: Option<KeySet>,
    /// Sweeping after the source finished: (received keys, db, cursor).
    sweeping: Option<(KeySet, u32, Vec<u8>)>,
    /// Keys written by this process's clients before it first synced: new
    /// writes, not stale data, so the sweep keeps them.
    local: KeySet,
    deleted: u64,
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

/// Begin sending the whole dataset (called on the main thread when the link asks).
pub fn start_source(shared: &Shared) {
    if shared.table_overflowed.swap(false, Ordering::Relaxed) {
        // The table is incomplete: drop it; the full resync carries everything.
        with_node(|n| n.pending.clear());
        super::apply::UNTRACKED_SINCE_START.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    source(|s| {
        *s = Source {
            active: true,
            first: true,
            db: 0,
            cursor: b"0".to_vec(),
            keys_sent: 0,
            scanned_all: false,
            leftover: Vec::new(),
            leftover_db: 0,
        }
    });
    log::notice("full resync: sending the whole dataset to the peer");
}

/// One bounded step of the source's scan. Returns true while active.
pub fn source_step(ctx: &Context, shared: &std::sync::Arc<Shared>) -> bool {
    let (active, first) = source(|s| (s.active, s.first));
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
        ops.push((0, Op::FullSyncBegin));
    }
    // Keys left over by the last step first, else the next SCAN step.
    let leftover = source(|s| {
        (!s.leftover.is_empty()).then(|| (s.leftover_db, std::mem::take(&mut s.leftover)))
    });
    let (db, keys) = match leftover {
        Some(x) => x,
        None => {
            let (db, cursor, scanned_all) = source(|s| (s.db, s.cursor.clone(), s.scanned_all));
            if scanned_all {
                (db, Vec::new())
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
                        (db, keys)
                    }
                    Err(e) => {
                        log::warning(&format!("full resync scan failed: {e}"));
                        source(|s| s.scanned_all = true);
                        (db, Vec::new())
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
    let mut rest: Vec<Vec<u8>> = Vec::new();
    for key in keys {
        if !rest.is_empty() {
            rest.push(key);
            continue;
        }
        match key_op(ctx, db, key.clone()) {
            Ok(op @ Op::Set { .. }) => {
                let n = op_size(&op);
                if taken > 0 && bytes.saturating_add(n) > budget {
                    rest.push(key);
                    continue;
                }
                bytes = bytes.saturating_add(n);
                taken += 1;
                ops.push((db, op));
            }
            Ok(_) => {} // gone since the scan listed it: nothing to send
            Err(e) => log::warning(&format!("full resync: cannot read a key: {e}")),
        }
    }
    let more_keys = !rest.is_empty();
    if more_keys {
        source(|s| {
            s.leftover = rest;
            s.leftover_db = db;
        });
    }
    ffi::select_db(ctx, saved);
    drop_oversized(shared, &mut ops);
    let done = !more_keys && source(|s| s.scanned_all);
    if done {
        ops.push((0, Op::FullSyncEnd));
    }
    let n = ops.len() as u64;
    enqueue_batch(shared, ops, Stamping::FullSync { first });
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
            log::notice(&format!("full resync: sent {} keys", s.keys_sent));
        }
    });
    !done
}

/// The peer starts a full resync to us.
pub fn target_begin() {
    // Our un-acknowledged writes are on their way to the source (in our
    // stream), maybe after its scan passed them: the sweep must keep them.
    let pending = with_node(|n| n.pending.keys());
    target(|t| {
        t.receiving = Some(KeySet::default());
        t.sweeping = None;
        t.deleted = 0;
        t.local.extend(pending);
    });
    TARGET_ACTIVE.store(true, Ordering::Relaxed);
    log::notice("full resync: receiving the peer's dataset");
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

/// Remember a key written locally while this node has not synced yet.
pub fn note_local_write(db: u32, key: &[u8]) {
    target(|t| {
        t.local.insert(TableKey::new(db, key));
    });
}

/// Remember keys written locally (the table's, when it is about to be
/// dropped).
pub fn note_local_writes(keys: Vec<TableKey>) {
    target(|t| t.local.extend(keys));
}

/// The operator chose the peer's data: this node's earlier writes lose.
pub fn forget_local_writes() {
    target(|t| t.local = KeySet::default());
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
            let doomed: Vec<Vec<u8>> = target(|t| {
                let received = t.sweeping.as_ref().map(|(r, _, _)| r);
                keys.into_iter()
                    .filter(|k| {
                        let dk = TableKey::new(db, k);
                        !received.is_some_and(|r| r.contains(&dk)) && !t.local.contains(&dk)
                    })
                    .collect()
            });
            let doomed: Vec<Vec<u8>> = doomed
                .into_iter()
                .filter(|k| with_node(|n| n.pending.local_stamp(db, k).is_none()))
                .collect();
            if !doomed.is_empty() {
                APPLYING.store(true, Ordering::Relaxed);
                ffi::select_db(ctx, db as i32);
                for k in &doomed {
                    let _ = ctx.call_ext::<_, redis_module::CallResult>(
                        "DEL",
                        &redis_module::CallOptionsBuilder::new()
                            .replicate()
                            .errors_as_replies()
                            .build(),
                        &[k.as_slice()] as &[&[u8]],
                    );
                }
                APPLYING.store(false, Ordering::Relaxed);
            }
            target(|t| {
                t.deleted += doomed.len() as u64;
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
        let deleted = target(|t| {
            t.sweeping = None;
            t.local = KeySet::default();
            t.deleted
        });
        TARGET_ACTIVE.store(false, Ordering::Relaxed);
        shared.fresh.store(false, Ordering::Relaxed);
        // Whatever our table missed is settled by the dataset we took.
        shared.table_overflowed.store(false, Ordering::Relaxed);
        Stats::add(&shared.stats.full_syncs, 1);
        log::notice(&format!(
            "full resync received: {deleted} keys the source did not have were deleted"
        ));
    }
    !finished
}
