//! Server events that drive the module: before-sleep (flush, then apply,
//! in one hold), after-sleep, and role changes.
//!
//! Why before-sleep: it runs once per event-loop iteration with the lock
//! held, so one batch per iteration is natural and the link's input is
//! applied between client commands without a thread-safe context that
//! could starve under load (DESIGN §5).

use std::os::raw::c_void;
use std::sync::atomic::Ordering;

use redis_module::{raw, Context};

use super::apply::apply_inbound;
use super::capture::AFTER_FLUSH_POINT;
use super::flush::{build_dirty_key_resync, flush};
use super::guard::guarded;
use super::node::with_node;
use super::waiters;
use super::{ffi, fullsync};
use crate::log;
use crate::state::Shared;

/// A restored node's handshake told what the peer applied of its stream:
/// that leaves the table before the dirty-key resync re-sends the rest, and
/// a position past the stream moves it on (`persist::skip_reused_seqs`).
fn take_handshake_ack(shared: &Shared) {
    let ack = shared.handshake_ack.swap(0, Ordering::AcqRel);
    if ack > 0 {
        super::persist::skip_reused_seqs(shared, ack);
        shared.outbox().acknowledge(ack);
        with_node(|n| n.pending.acknowledge(ack));
    }
}

/// Before-sleep and after-sleep callback.
///
/// # Safety
/// Called by Redis on the main thread with a live context.
pub unsafe extern "C" fn on_event_loop(
    ctx: *mut raw::RedisModuleCtx,
    _e: raw::RedisModuleEvent,
    sub: u64,
    _d: *mut c_void,
) {
    guarded("event loop", (), || {
        if sub == raw::REDISMODULE_SUBEVENT_EVENTLOOP_AFTER_SLEEP {
            AFTER_FLUSH_POINT.store(false, Ordering::Relaxed);
            return;
        }
        if sub != raw::REDISMODULE_SUBEVENT_EVENTLOOP_BEFORE_SLEEP {
            return;
        }
        // No command's events follow until the next command passes the filter.
        super::capture::disarm_hints();
        let Some(shared) = Shared::get() else { return };
        if !shared.ready.load(Ordering::Acquire) {
            // The dataset is loaded: take back the pairing state it carried.
            super::persist::restore(shared);
        }
        super::served_guard::settle(&Context::new(ctx));
        // First thing: what arrived before this event (and its command clock) began.
        let queued = shared.inbound_rx.len();
        let ctx = Context::new(ctx);
        shared.wake_pending.store(false, Ordering::Release);
        flush(&ctx);
        if shared.target_cancel.swap(false, Ordering::AcqRel) {
            fullsync::target_cancel();
        }
        take_handshake_ack(shared);
        if shared.target_reset_requested.swap(false, Ordering::AcqRel) {
            // Writes made before the full resync began lose to the source's data.
            shared.awaiting_full_sync.store(true, Ordering::Relaxed);
            shared.resync_requested.store(false, Ordering::Release);
            with_node(|n| n.pending.clear());
            super::apply::UNTRACKED_SINCE_START.store(true, std::sync::atomic::Ordering::Relaxed);
            shared.table_overflowed.store(false, Ordering::Release);
            fullsync::forget_local_writes();
            {
                let mut o = shared.outbox();
                // SYNC.WAIT must never report these superseded writes as applied.
                shared
                    .superseded_upto
                    .store(o.last_seq(), Ordering::Relaxed);
                o.discard_all();
            }
            build_dirty_key_resync(&ctx);
        }
        if shared.full_sync_requested.swap(false, Ordering::AcqRel) {
            shared.resync_requested.store(false, Ordering::Release);
            fullsync::start_source(shared);
        } else if shared.resync_requested.swap(false, Ordering::AcqRel) {
            // The session stored its acknowledgement before this request,
            // maybe after the take above: the resync batch must come after
            // a stream moved past the peer's position.
            take_handshake_ack(shared);
            if let Some(seq) = build_dirty_key_resync(&ctx) {
                log::notice(&format!("dirty-key resync prepared as batch {seq}"));
            }
        }
        let mut more = fullsync::source_step(&ctx, shared);
        more |= apply_inbound(&ctx, queued);
        more |= fullsync::target_step(&ctx, shared);
        refresh_empty(&ctx, shared);
        shared.ready.store(true, Ordering::Release);
        waiters::release_ready(&ctx, shared);
        AFTER_FLUSH_POINT.store(true, Ordering::Relaxed);
        if more {
            shared.wake_main();
        }
    })
}

/// Keep `dataset_empty` current for the next handshake (a cheap count).
fn refresh_empty(ctx: &Context, shared: &Shared) {
    if shared.stats.link() == crate::core::stats::LinkState::Up
        && !shared.fresh.load(Ordering::Relaxed)
    {
        return;
    }
    let saved = ffi::selected_db(ctx);
    let mut empty = true;
    for db in 0..shared.databases {
        if ffi::select_db(ctx, db as i32) && ffi::db_size(ctx) > 0 {
            empty = false;
            break;
        }
    }
    ffi::select_db(ctx, saved);
    shared.set_dataset_empty(empty && super::capture::dirty().is_empty());
}

/// Role change: a replica keeps the module passive; a promoted replica takes over.
///
/// # Safety
/// Called by Redis on the main thread.
pub unsafe extern "C" fn on_role_change(
    _ctx: *mut raw::RedisModuleCtx,
    _e: raw::RedisModuleEvent,
    sub: u64,
    _d: *mut c_void,
) {
    guarded("role change", (), || {
        let Some(shared) = Shared::get() else { return };
        let passive = sub == raw::REDISMODULE_EVENT_REPLROLECHANGED_NOW_REPLICA;
        shared.passive.store(passive, Ordering::Relaxed);
        if passive {
            log::notice("this server became a replica: replication to the peer is passive");
            shared.request_drop_session();
        } else {
            log::notice("this server became a primary: replication to the peer is active");
        }
    })
}
