//! What the running server offers, found once at load.
//!
//! Why one place: the module runs on Redis 7.0, 7.2, 7.4 and Valkey 8, and a
//! few of its rules depend on the server (hash field TTLs exist from 7.4;
//! keys can be opened without side effects from 7.2). Each is decided once
//! at load, logged, and read here by the code that needs it.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use redis_module::{raw, CallOptionsBuilder, CallResult, Context};

use super::flush::to_reply;
use crate::core::image::Reply;

/// The server has hash field expiration (`HPEXPIRETIME`, `HPEXPIREAT`: Redis 7.4+).
static FIELD_TTLS: AtomicBool = AtomicBool::new(false);

/// Extra `RedisModule_OpenKey` flags for the module's own reads (0 on 7.0).
static QUIET_OPEN_FLAGS: AtomicI32 = AtomicI32::new(0);

/// Whether this server stores hash field TTLs; decided by [`detect`].
pub fn field_ttls() -> bool {
    FIELD_TTLS.load(Ordering::Relaxed)
}

/// Open-key flags that make a read free of side effects where the server
/// has them (7.2+: no lazy expiry, no LRU/LFU touch, no keyspace hit/miss
/// counts, no effects at all); always includes `NOTOUCH`, which 7.0 has.
pub fn quiet_open_flags() -> c_int {
    raw::REDISMODULE_OPEN_KEY_NOTOUCH as c_int | QUIET_OPEN_FLAGS.load(Ordering::Relaxed)
}

/// Find out what the server offers; called once at load. Returns a line
/// for the load log.
pub fn detect(ctx: &Context) -> String {
    let opts = CallOptionsBuilder::new().errors_as_replies().build();
    let reply: CallResult = ctx.call_ext("COMMAND", &opts, &[&b"INFO"[..], b"HPEXPIRETIME"]);
    let ttls =
        matches!(to_reply(&reply), Reply::Array(a) if matches!(a.first(), Some(Reply::Array(_))));
    FIELD_TTLS.store(ttls, Ordering::Relaxed);
    let wanted = (raw::REDISMODULE_OPEN_KEY_NOEXPIRE
        | raw::REDISMODULE_OPEN_KEY_NOSTATS
        | raw::REDISMODULE_OPEN_KEY_NOEFFECTS) as c_int;
    // SAFETY: a plain query of a constant; absent (None) before 7.2.
    let supported = unsafe {
        raw::RedisModule_GetOpenKeyModesAll
            .map(|f| f())
            .unwrap_or(0)
    };
    let quiet = wanted & supported;
    QUIET_OPEN_FLAGS.store(quiet, Ordering::Relaxed);
    format!(
        "hash field TTLs {}, side-effect-free key reads {}",
        if ttls {
            "replicated"
        } else {
            "not offered by this server"
        },
        if quiet == wanted {
            "on"
        } else {
            "not offered by this server (before 7.2)"
        }
    )
}
