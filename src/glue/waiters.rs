//! `SYNC.WAIT`: clients blocked until the peer applied their writes.
//!
//! Why raw blocking calls: the client must be blocked (not the server),
//! released from before-sleep when the peer's acknowledgement arrives, and
//! time out on its own; the crate's wrapper has no timeout.

use std::os::raw::{c_int, c_void};
use std::sync::Mutex;
use std::time::Instant;

use redis_module::{raw, Context, RedisError, RedisResult, RedisString, RedisValue};

use super::ffi;
use super::flush::flush;
use crate::state::Shared;

struct Waiter {
    target: u64,
    numpeers: i64,
    bc: *mut raw::RedisModuleBlockedClient,
    deadline: Option<Instant>,
}

// SAFETY: the blocked-client handle is only used on the main thread; the
// mutex is only there because the list lives in a static.
unsafe impl Send for Waiter {}

static WAITERS: Mutex<Vec<Waiter>> = Mutex::new(Vec::new());

/// Peers (0 or 1 today) that applied our stream up to `target`.
fn count_at(shared: &Shared, target: u64) -> i64 {
    let superseded = shared
        .superseded_upto
        .load(std::sync::atomic::Ordering::Relaxed);
    if target > 0 && target <= superseded {
        return 0; // those writes were replaced by the peer's dataset
    }
    i64::from(shared.outbox().acked_seq() >= target)
}

unsafe extern "C" fn reply_cb(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    let n = raw::RedisModule_GetBlockedClientPrivateData
        .map(|f| f(ctx) as usize as i64)
        .unwrap_or(0);
    if let Some(reply) = raw::RedisModule_ReplyWithLongLong {
        reply(ctx, n);
    }
    raw::REDISMODULE_OK as c_int
}

unsafe extern "C" fn timeout_cb(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    // Had the peer applied the writes, before-sleep would have released the
    // client already: at the deadline the count is 0.
    if let Some(reply) = raw::RedisModule_ReplyWithLongLong {
        reply(ctx, 0);
    }
    raw::REDISMODULE_OK as c_int
}

/// `SYNC.WAIT <numpeers> <timeout-ms>`.
pub fn sync_wait(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if args.len() != 3 {
        return Err(RedisError::WrongArity);
    }
    let numpeers = args[1]
        .parse_integer()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or(RedisError::Str(
            "ERR numpeers must be a non-negative integer",
        ))?;
    let timeout = args[2]
        .parse_integer()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or(RedisError::Str(
            "ERR timeout is not an integer or out of range",
        ))?;
    let shared = Shared::get().ok_or(RedisError::Str("ERR bisync is not initialised"))?;
    // Writes of this event-loop iteration go into a batch now.
    flush(ctx);
    let target = shared.outbox().last_seq();
    let count = count_at(shared, target);
    let flags = ffi::context_flags(ctx);
    let cannot_block = flags
        & (raw::REDISMODULE_CTX_FLAGS_MULTI
            | raw::REDISMODULE_CTX_FLAGS_LUA
            | raw::REDISMODULE_CTX_FLAGS_DENY_BLOCKING)
        != 0;
    if count >= numpeers || cannot_block {
        return Ok(RedisValue::Integer(count));
    }
    // SAFETY: called from a command on the main thread with a live context;
    // the callbacks are plain functions; the handle is released exactly once
    // (by release_ready) whatever happens to the client.
    let bc = unsafe {
        match raw::RedisModule_BlockClient {
            Some(f) => f(ctx.ctx, Some(reply_cb), Some(timeout_cb), None, timeout),
            None => std::ptr::null_mut(),
        }
    };
    if bc.is_null() {
        return Ok(RedisValue::Integer(count));
    }
    let deadline =
        (timeout > 0).then(|| Instant::now() + std::time::Duration::from_millis(timeout as u64));
    WAITERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Waiter {
            target,
            numpeers,
            bc,
            deadline,
        });
    Ok(RedisValue::NoReply)
}

/// Release waiters whose target the peer acknowledged, and free the handles
/// of those Redis already timed out. Called at before-sleep.
pub fn release_ready(_ctx: &Context, shared: &Shared) {
    let mut w = WAITERS.lock().unwrap_or_else(|p| p.into_inner());
    if w.is_empty() {
        return;
    }
    let now = Instant::now();
    w.retain(|x| {
        let n = count_at(shared, x.target);
        let superseded = x.target > 0
            && x.target
                <= shared
                    .superseded_upto
                    .load(std::sync::atomic::Ordering::Relaxed);
        let expired = x
            .deadline
            .is_some_and(|d| now >= d + std::time::Duration::from_millis(50));
        if n >= x.numpeers || expired || superseded {
            // SAFETY: bc came from BlockClient and is released once, here.
            unsafe {
                if let Some(unblock) = raw::RedisModule_UnblockClient {
                    unblock(x.bc, n as usize as *mut c_void);
                }
            }
            false
        } else {
            true
        }
    });
}
