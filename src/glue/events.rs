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
use super::waiters;
use crate::log;
use crate::state::Shared;

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
        let Some(shared) = Shared::get() else { return };
        let ctx = Context::new(ctx);
        shared.wake_pending.store(false, Ordering::Release);
        flush(&ctx);
        if shared.resync_requested.swap(false, Ordering::AcqRel) {
            if let Some(seq) = build_dirty_key_resync(&ctx) {
                log::notice(&format!("dirty-key resync prepared as batch {seq}"));
            }
        }
        let more = apply_inbound(&ctx);
        waiters::release_ready(&ctx, shared);
        AFTER_FLUSH_POINT.store(true, Ordering::Relaxed);
        if more {
            shared.wake_main();
        }
    })
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
