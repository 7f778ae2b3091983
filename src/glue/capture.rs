//! Capture: keyspace notifications, flush server events and the command
//! filter only *note* what changed. Nothing here reads values.
//!
//! Why so little: the handler runs inside every write (DESIGN §9 measured a
//! subscribed handler alone at 8–15 % of SET throughput), and it must be
//! re-entrant: reading an image can fire `expired` back into it.

use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use redis_module::{raw, Context};

use super::ffi;
use super::guard::guarded;
use crate::core::dirty::DirtyLog;
use crate::state::Shared;

/// Set while this module applies remote changes on the main thread: the
/// notifications those writes fire are not captured again (no loops).
pub static APPLYING: AtomicBool = AtomicBool::new(false);

/// Set between our before-sleep work and the next after-sleep: a write
/// made then (an unblocked client) must wake the loop, or it would wait
/// for the next event.
pub static AFTER_FLUSH_POINT: AtomicBool = AtomicBool::new(false);

static DIRTY: Mutex<DirtyLog> = Mutex::new(DirtyLog::new());

/// Keys touched by commands that change a stream without a keyspace event
/// (XACK, XCLAIM, XAUTOCLAIM, XREADGROUP); the db is unknown in a filter.
static STREAM_TOUCHED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// The dirty log (short critical sections only).
pub fn dirty() -> MutexGuard<'static, DirtyLog> {
    DIRTY.lock().unwrap_or_else(|p| p.into_inner())
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
    let was_empty = {
        let mut d = dirty();
        let e = d.is_empty();
        d.key(db, key);
        e
    };
    if was_empty && AFTER_FLUSH_POINT.load(Ordering::Relaxed) {
        ffi::wake_event_loop();
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
        if class & raw::REDISMODULE_NOTIFY_EXPIRED != 0 {
            return 0;
        }
        if class & raw::REDISMODULE_NOTIFY_EVICTED != 0 {
            let ship = Shared::get().is_some_and(|s| s.ship_evictions());
            if !ship {
                return 0;
            }
        }
        let _ = event;
        if !capturing() {
            return 0;
        }
        let db = ffi::selected_db(&Context::new(ctx)).max(0) as u32;
        note_key(db, ffi::string_bytes(key));
        0
    })
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

/// Command filter: note streams changed by commands that fire no keyspace
/// event. Runs for client and script calls; inside MULTI it runs at queue
/// time (documented limitation).
///
/// # Safety
/// Called by Redis with a live filter context.
pub unsafe extern "C" fn on_command_filter(fctx: *mut raw::RedisModuleCommandFilterCtx) {
    guarded("command filter", (), || {
        let argc = ffi::filter_argc(fctx);
        if argc < 2 {
            return;
        }
        let name = ffi::filter_arg(fctx, 0);
        if name.is_empty() || name[0] | 0x20 != b'x' {
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
