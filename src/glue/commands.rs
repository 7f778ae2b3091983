//! `SYNC.STATUS` and the `INFO bisync` section.
//!
//! Why one list of fields for both: operators read either, and the two
//! must never disagree.

use std::ffi::CString;
use std::os::raw::c_long;
use std::sync::atomic::Ordering;

use redis_module::{raw, Context, InfoContext, RedisError, RedisResult, RedisString, RedisValue};

use super::node::with_node;
use crate::core::hlc::{stamp_ms, wall_ms};
use crate::core::outbox::ResumePlan;
use crate::core::stats::Stats;
use crate::state::Shared;

/// Full version string: crate version and git sha (MODULE LIST only shows an integer).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BISYNC_GIT_SHA"), ")");

/// One status value.
pub enum Field {
    /// Text.
    Text(String),
    /// A count.
    Num(u64),
}

/// Every status field, in display order: who (node, version, peer, link
/// state) first, then the stream positions, the counters, and what went
/// wrong last. The README table lists them in this same order (a test
/// checks it), and both `SYNC.STATUS` and `INFO bisync` keep it.
pub fn status_fields(shared: &Shared) -> Vec<(&'static str, Field)> {
    use Field::{Num, Text};
    let s = &shared.stats;
    let (sent_seq, acked, applied, backlog, plan) = {
        let o = shared.outbox();
        (
            o.last_seq(),
            o.acked_seq(),
            o.applied_seq(),
            o.backlog_bytes(),
            o.plan_resume(o.acked_seq()),
        )
    };
    let (pending, oldest) = with_node(|n| (n.pending.len(), n.pending.oldest_stamp()));
    let lag = oldest
        .map(|st| wall_ms().saturating_sub(stamp_ms(st.hlc)))
        .unwrap_or(0);
    let next = if shared.fresh.load(Ordering::Relaxed)
        && shared.restored().is_some()
        && !shared.table_overflowed.load(Ordering::Relaxed)
    {
        // Restarted from a snapshot with its pairing state: the peer
        // resumes it if its history covers the snapshot, else a full resync.
        "restart"
    } else if shared.table_overflowed.load(Ordering::Relaxed)
        || shared.fresh.load(Ordering::Relaxed)
    {
        "full"
    } else if plan == ResumePlan::Partial && !shared.resync_requested.load(Ordering::Relaxed) {
        "partial"
    } else {
        "dirty-key"
    };
    vec![
        ("node_id", Text(shared.config.node_id.clone())),
        ("version", Text(VERSION.to_string())),
        ("peer", Text(shared.config.peer.to_string())),
        ("link", Text(s.link().as_str().to_string())),
        ("peer_node_id", Text(shared.peer_node_id())),
        ("listen", Text(shared.config.listen.to_string())),
        (
            "link_security",
            Text(
                match (shared.config.tls.is_some(), shared.config.secret.is_some()) {
                    (true, true) => "tls+secret",
                    (true, false) => "tls",
                    (false, true) => "secret",
                    (false, false) => "none",
                }
                .to_string(),
            ),
        ),
        (
            "role",
            Text(
                if shared.passive.load(Ordering::Relaxed) {
                    "passive"
                } else {
                    "active"
                }
                .to_string(),
            ),
        ),
        ("stream_id", Text(format!("{:016x}", shared.stream_id()))),
        ("issued_seq", Num(sent_seq)),
        ("sent_seq", Num(Stats::get(&s.sent_seq))),
        ("acked_seq", Num(acked)),
        ("applied_seq", Num(applied)),
        ("backlog_bytes", Num(backlog as u64)),
        ("pending_keys", Num(pending as u64)),
        ("ops_captured", Num(Stats::get(&s.ops_captured))),
        ("ops_sent", Num(Stats::get(&s.ops_sent))),
        ("ops_applied", Num(Stats::get(&s.ops_applied))),
        ("conflicts_lost", Num(Stats::get(&s.conflicts_lost))),
        ("conflicts_merged", Num(Stats::get(&s.conflicts_merged))),
        ("inbound_bytes", Num(Stats::get(&s.inbound_bytes))),
        ("inbound_bytes_peak", Num(Stats::get(&s.inbound_bytes_peak))),
        ("lag_ms", Num(lag)),
        ("bytes_sent", Num(Stats::get(&s.bytes_sent))),
        ("bytes_received", Num(Stats::get(&s.bytes_received))),
        ("partial_syncs", Num(Stats::get(&s.partial_syncs))),
        ("dirty_key_syncs", Num(Stats::get(&s.dirty_key_syncs))),
        ("full_syncs", Num(Stats::get(&s.full_syncs))),
        ("restart_resumes", Num(Stats::get(&s.restart_resumes))),
        (
            "restart_resumes_served",
            Num(Stats::get(&s.restart_resumes_served)),
        ),
        (
            "restart_resume_keys",
            Num(Stats::get(&s.restart_resume_keys)),
        ),
        ("restart_seq_skips", Num(Stats::get(&s.seq_skips))),
        ("history_bytes", Num(shared.history().bytes() as u64)),
        ("link_errors", Num(Stats::get(&s.link_errors))),
        ("next_resync", Text(next.to_string())),
        ("last_error", Text(shared.last_error())),
        ("last_error_age_ms", Num(shared.last_error_age_ms())),
    ]
}

/// `SYNC.STATUS`: a map (RESP2: a flat field/value array), in the order of
/// [`status_fields`]. Written field by field because the crate's map
/// replies sort their keys.
pub fn sync_status(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if args.len() != 1 {
        return Err(RedisError::WrongArity);
    }
    let shared = Shared::get().ok_or(RedisError::Str("ERR bisync is not initialised"))?;
    let fields = status_fields(shared);
    raw::reply_with_map(ctx.ctx, fields.len() as c_long);
    for (k, v) in fields {
        ctx.reply(Ok(RedisValue::BulkString(k.to_string())));
        ctx.reply(Ok(match v {
            Field::Text(t) => RedisValue::BulkString(t),
            Field::Num(n) => RedisValue::Integer(n.min(i64::MAX as u64) as i64),
        }));
    }
    Ok(RedisValue::NoReply)
}

/// `SYNC.PAIR SOURCE`: at the next first contact, this node's data wins
/// (the peer's dataset is replaced by a full resync from this node).
pub fn sync_pair(_ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if args.len() != 2 {
        return Err(RedisError::WrongArity);
    }
    let shared = Shared::get().ok_or(RedisError::Str("ERR bisync is not initialised"))?;
    if !args[1].to_string_lossy().eq_ignore_ascii_case("source") {
        return Err(RedisError::Str("ERR syntax: SYNC.PAIR SOURCE"));
    }
    if !shared.fresh.load(Ordering::Relaxed) {
        return Err(RedisError::Str(
            "ERR this node is already paired; a restarted peer resyncs from it by itself",
        ));
    }
    shared.force_source.store(true, Ordering::Relaxed);
    crate::log::notice(
        "SYNC.PAIR SOURCE: this node's data will replace the peer's at first contact",
    );
    Ok(RedisValue::SimpleStringStatic("OK"))
}

/// `SYNC.DEBUG PANIC | START-DELAY <ms>`: only when the server was started
/// with `BISYNC_TEST_HOOKS=1` in its environment. `PANIC` proves that a
/// panic inside a callback is caught, logged, and answered with an error;
/// `START-DELAY` holds each new writer that long before it starts serving
/// the peer (a test makes a rare race certain).
pub fn sync_debug(_ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if !super::guard::test_hooks() {
        return Err(RedisError::Str(
            "ERR SYNC.DEBUG is disabled (test builds only)",
        ));
    }
    match args
        .get(1)
        .map(|a| a.to_string_lossy().to_ascii_lowercase())
    {
        Some(s) if s == "panic" => panic!("SYNC.DEBUG PANIC requested"),
        Some(s) if s == "start-delay" => {
            let ms = args
                .get(2)
                .and_then(|a| a.to_string_lossy().parse::<u64>().ok())
                .ok_or(RedisError::Str(
                    "ERR syntax: SYNC.DEBUG START-DELAY <milliseconds>",
                ))?;
            let Some(shared) = Shared::get() else {
                return Err(RedisError::Str("ERR bisync is not initialised"));
            };
            shared.debug_start_delay_ms.store(ms, Ordering::Relaxed);
            Ok(RedisValue::SimpleStringStatic("OK"))
        }
        _ => Err(RedisError::Str(
            "ERR syntax: SYNC.DEBUG PANIC | START-DELAY <milliseconds>",
        )),
    }
}

/// `INFO bisync`: the same fields.
pub fn info(ctx: &InfoContext, _for_crash_report: bool) {
    let Some(shared) = Shared::get() else { return };
    let ictx = ctx.ctx;
    // SAFETY: called by Redis inside an INFO callback with a live info
    // context; every CString outlives the call that reads it.
    unsafe {
        let (Some(section), Some(add_str), Some(add_num)) = (
            raw::RedisModule_InfoAddSection,
            raw::RedisModule_InfoAddFieldCString,
            raw::RedisModule_InfoAddFieldULongLong,
        ) else {
            return;
        };
        if section(ictx, std::ptr::null()) != raw::REDISMODULE_OK as i32 {
            return;
        }
        for (k, v) in status_fields(shared) {
            let Ok(name) = CString::new(k) else { continue };
            match v {
                Field::Text(t) => {
                    let clean: String = t
                        .chars()
                        .map(|c| {
                            if c == '\r' || c == '\n' || c == '\0' {
                                ' '
                            } else {
                                c
                            }
                        })
                        .collect();
                    if let Ok(val) = CString::new(clean) {
                        add_str(ictx, name.as_ptr(), val.as_ptr());
                    }
                }
                Field::Num(n) => {
                    add_num(ictx, name.as_ptr(), n);
                }
            }
        }
    }
}
