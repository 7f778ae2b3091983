//! Apply: remote batches, in order, under the rule of DESIGN §3.
//!
//! Why on the main thread at before-sleep: there we already hold the lock,
//! the same hold first flushes local changes (so a remote image never lands
//! on a dirty, unstamped key), and the writes made through `call_ext` with
//! replication reach this server's AOF and replicas wrapped as one
//! transaction when the callback returns.

use std::sync::atomic::{AtomicU64, Ordering};

use redis_module::{CallOptions, CallOptionsBuilder, CallReply, CallResult, Context};

use super::capture::APPLYING;
use super::ffi;
use super::flush::read_image;
use super::fullsync;
use super::node::with_node;
use crate::core::decide::{check_seq, plan_batch, Action, SeqCheck};
use crate::core::hlc::wall_ms;
use crate::core::image;
use crate::core::protocol::{Batch, Op, Value};
use crate::core::stats::Stats;
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

fn opts() -> CallOptions {
    CallOptionsBuilder::new()
        .replicate()
        .errors_as_replies()
        .build()
}

fn run(ctx: &Context, cmd: &str, args: &[&[u8]]) -> Result<(), String> {
    let reply: CallResult = ctx.call_ext(cmd, &opts(), args);
    match reply {
        Ok(CallReply::Unknown) => Err(format!("{cmd}: unknown reply")),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{cmd}: {}", e.to_utf8_string().unwrap_or_default())),
    }
}

/// RDB type byte of a module data type's DUMP payload.
const RDB_TYPE_MODULE_2: u8 = 7;

/// Write one image into the selected db, with ordinary commands.
fn write_image(
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

/// During a full resync, remember the keys the source has.
fn note_received(entry: &crate::core::protocol::Entry) {
    if let Op::Set { key, .. } = &entry.op {
        if fullsync::target_receiving() {
            fullsync::target_received(entry.db, key);
        }
    }
}

/// Apply one batch. Returns the number of entries applied, or an error that
/// must end the session.
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
    let plan = with_node(|n| plan_batch(&mut n.pending, batch, origin, local));
    let _flag = ApplyingFlag::set();
    let mut applied = 0usize;
    let mut lost = 0u64;
    for action in plan {
        match action {
            Action::Lost(entry) => {
                lost += 1;
                note_received(entry);
            }
            Action::Duplicate => {}
            Action::FullSyncBegin => fullsync::target_begin(),
            Action::FullSyncEnd => fullsync::target_end(),
            Action::Unsupported(entry) => {
                return Err(format!(
                    "element-level record in db {} needs a newer protocol than {}",
                    entry.db,
                    crate::core::protocol::PROTOCOL_VERSION
                ))
            }
            Action::Flush { db, survivors } => {
                flush_keeping(ctx, db, &survivors, propagate)?;
                applied += 1;
            }
            Action::Write(entry) => {
                if !ffi::select_db(ctx, entry.db as i32) {
                    return Err(format!("cannot select db {}", entry.db));
                }
                match &entry.op {
                    Op::Set {
                        key,
                        value,
                        expire_at_ms,
                    } => write_image(ctx, key, value, *expire_at_ms, propagate)?,
                    Op::Delete { key } => run(ctx, "DEL", &[key])?,
                    _ => {}
                }
                note_received(entry);
                applied += 1;
            }
        }
    }
    Stats::add(&shared.stats.ops_applied, applied as u64);
    Stats::add(&shared.stats.conflicts_lost, lost);
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
        match msg {
            Inbound::SessionStart { stream_id, node_id } => {
                let prev = shared.peer_stream_id.swap(stream_id, Ordering::Relaxed);
                if prev != stream_id {
                    if prev != 0 {
                        log::notice(&format!("peer {node_id} has a new stream (restarted without its pairing state): applying it from the start"));
                    }
                    shared.outbox().set_applied(0);
                }
                peer_node = node_id;
            }
            Inbound::Ack(seq) => {
                shared.outbox().acknowledge(seq);
                with_node(|n| n.pending.acknowledge(seq));
                let done = shared.source_done_seq.load(Ordering::Relaxed);
                if done != 0 && seq >= done {
                    shared.source_done_seq.store(0, Ordering::Relaxed);
                    shared.force_source.store(false, Ordering::Relaxed);
                }
            }
            Inbound::Batch(batch) => {
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
                        while shared.inbound_rx.try_recv().is_ok() {}
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
                    }
                    Err(e) => {
                        let msg = format!("refused batch {} from the peer: {e}", batch.seq);
                        log::warning(&msg);
                        shared.set_error(msg);
                        shared.request_drop_session();
                        while shared.inbound_rx.try_recv().is_ok() {}
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
