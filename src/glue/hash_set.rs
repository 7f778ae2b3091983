//! A peer's hash field sets, applied through the key API.
//!
//! Why not `HSET` through `RM_Call`: on the applying node of a pair taking
//! `HSET`s of random keys, applying costs more than writing does on the
//! origin (about 370 against 320 CPU ticks per million writes, BENCHMARKS.md);
//! a call builds the command, a client, a reply and parses its arguments
//! again for one or a few fields. `RM_HashSet` sets the fields as `HSET`
//! does (it creates the hash, converts its encoding past the listpack
//! limits, and on 7.4 drops a set field's TTL as `HSET` does).
//!
//! What `HSET` does besides, done here too, as `glue::stream_append` does
//! for appends: the `hset` keyspace event (for other subscribers; ours
//! ignores it while applying), the modified-key signal (closing a key opened
//! for writing), and the propagation to replicas and the AOF
//! (`RM_Replicate`, which also counts the change for `save` points).

use std::os::raw::{c_char, c_int};

use redis_module::{raw, Context};

/// Set `fields` (field, value) in the hash `key` of the selected db,
/// creating it if missing. `propagate`: replicas or an AOF may listen (see
/// `ffi::propagation_needed`). An error leaves the caller to use `HSET`.
pub fn set(
    ctx: &Context,
    key: &[u8],
    fields: &[(&[u8], &[u8])],
    propagate: bool,
) -> Result<(), String> {
    // SAFETY: main thread with a live context (the before-sleep apply); the
    // key and its name live for the closure (`ffi::with_key`).
    unsafe {
        super::ffi::with_write_key(ctx, key, |name, k| set_in(ctx, name, k, fields, propagate))
    }
}

/// [`set`] on the open key `k` named `name`.
///
/// # Safety
/// Main thread with a live context; `name` and `k` (maybe null) are live.
unsafe fn set_in(
    ctx: &Context,
    name: *mut raw::RedisModuleString,
    k: *mut raw::RedisModuleKey,
    fields: &[(&[u8], &[u8])],
    propagate: bool,
) -> Result<(), String> {
    let (Some(create), Some(free), Some(ktype), Some(hset), Some(notify)) = (
        raw::RedisModule_CreateString,
        raw::RedisModule_FreeString,
        raw::RedisModule_KeyType,
        raw::RedisModule_HashSet,
        raw::RedisModule_NotifyKeyspaceEvent,
    ) else {
        return Err("the hash key API is unavailable".into());
    };
    if k.is_null() {
        return Err("cannot open the hash".into());
    }
    let t = ktype(k) as isize;
    if t != raw::REDISMODULE_KEYTYPE_EMPTY && t != raw::REDISMODULE_KEYTYPE_HASH {
        return Err("WRONGTYPE: not a hash".into());
    }
    // [key, field, value, ...]: the pairs for RM_HashSet, all of it for the
    // propagated HSET.
    let mut argv: Vec<*mut raw::RedisModuleString> = Vec::with_capacity(1 + 2 * fields.len());
    argv.push(name);
    for (f, v) in fields {
        argv.push(create(ctx.ctx, f.as_ptr().cast::<c_char>(), f.len()));
        argv.push(create(ctx.ctx, v.as_ptr().cast::<c_char>(), v.len()));
    }
    let outcome = if argv.iter().any(|s| s.is_null()) {
        Err("cannot create a hash field".to_string())
    } else {
        for pair in argv[1..].chunks_exact(2) {
            // Its return counts fields updated (0 for a new field): no
            // error to read; the type was checked above.
            hset(
                k,
                raw::REDISMODULE_HASH_NONE as c_int,
                pair[0],
                pair[1],
                std::ptr::null_mut::<raw::RedisModuleString>(),
            );
        }
        notify(
            ctx.ctx,
            raw::REDISMODULE_NOTIFY_HASH,
            c"hset".as_ptr(),
            name,
        );
        super::ffi::replicate_or_count(ctx, c"HSET", &argv, propagate);
        Ok(())
    };
    for s in argv.iter().skip(1).filter(|s| !s.is_null()) {
        free(ctx.ctx, *s);
    }
    outcome
}
