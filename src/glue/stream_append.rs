//! A peer's stream appends, applied through the key API.
//!
//! Why not `XADD` through `RM_Call`: a profile of the applying node under a
//! stream benchmark (`XADD` into one 200k-entry stream, `-P 16`) put 77 % of
//! its main thread in replaying appends, of which the stream append itself
//! (`streamAppendItem`) was 17 %: the rest was building and parsing the
//! command, the call's client, its reply and the command's own argument
//! checks. `RM_StreamAdd` appends the entry with the ID the origin generated
//! (it refuses an ID not above the stream's last, as `XADD` does, and then
//! the caller re-ships the key).
//!
//! What `XADD` does besides, done here too: the `xadd` keyspace event (for
//! other subscribers; ours ignores it while applying), the modified-key
//! signal (closing a key opened for writing), waking blocked readers
//! (`RM_StreamAdd`), and the propagation to this server's replicas and AOF
//! (`RM_Replicate`, which also counts the change for `save` points; without
//! replicas or AOF it is asked with no target, only to count it).

use std::os::raw::{c_char, c_int};

use redis_module::{raw, Context};

use crate::core::list_op::stream_id;

/// Whether the key API can append these entries (every ID in `ms-seq` form,
/// fields in pairs); otherwise the caller replays `XADD` commands.
pub fn fits(entries: &[(Vec<u8>, Vec<Vec<u8>>)]) -> bool {
    entries
        .iter()
        .all(|(id, fields)| stream_id(id).is_some() && !fields.is_empty() && fields.len() % 2 == 0)
}

/// Append `entries` (checked by [`fits`]) to the stream `key` of the
/// selected db, creating it if missing. `propagate`: replicas or an AOF may
/// listen (see `ffi::propagation_needed`).
pub fn append(
    ctx: &Context,
    key: &[u8],
    entries: &[(Vec<u8>, Vec<Vec<u8>>)],
    propagate: bool,
) -> Result<(), String> {
    // SAFETY: main thread with a live context (the before-sleep apply); the
    // key and its name live for the closure (`ffi::with_key`).
    unsafe {
        super::ffi::with_write_key(ctx, key, |name, k| {
            append_to(ctx, name, k, entries, propagate)
        })
    }
}

/// [`append`] on the open key `k` named `name`.
///
/// # Safety
/// Main thread with a live context; `name` and `k` (maybe null) are live.
unsafe fn append_to(
    ctx: &Context,
    name: *mut raw::RedisModuleString,
    k: *mut raw::RedisModuleKey,
    entries: &[(Vec<u8>, Vec<Vec<u8>>)],
    propagate: bool,
) -> Result<(), String> {
    let (Some(create), Some(free), Some(ktype), Some(add), Some(notify)) = (
        raw::RedisModule_CreateString,
        raw::RedisModule_FreeString,
        raw::RedisModule_KeyType,
        raw::RedisModule_StreamAdd,
        raw::RedisModule_NotifyKeyspaceEvent,
    ) else {
        return Err("the stream key API is unavailable".into());
    };
    if k.is_null() {
        return Err("cannot open the stream".into());
    }
    let t = ktype(k) as isize;
    if t != raw::REDISMODULE_KEYTYPE_EMPTY && t != raw::REDISMODULE_KEYTYPE_STREAM {
        return Err("WRONGTYPE: not a stream".into());
    }
    let string = |b: &[u8]| create(ctx.ctx, b.as_ptr().cast::<c_char>(), b.len());
    // [key, id, field, value, ...]: the fields for the append, all of it for
    // the propagated XADD.
    let mut argv: Vec<*mut raw::RedisModuleString> = Vec::new();
    for (id, fields) in entries {
        let (ms, seq) = stream_id(id)
            .ok_or_else(|| format!("bad stream ID {:?}", String::from_utf8_lossy(id)))?;
        argv.clear();
        argv.push(name);
        argv.push(string(id));
        argv.extend(fields.iter().map(|f| string(f)));
        let outcome = if argv.iter().any(|s| s.is_null()) {
            Err("cannot create a stream field".to_string())
        } else {
            let mut sid = raw::RedisModuleStreamID { ms, seq };
            let pairs = (fields.len() / 2) as i64;
            if add(k, 0, &mut sid, argv.as_mut_ptr().add(2), pairs) != raw::REDISMODULE_OK as c_int
            {
                Err(format!(
                    "the stream refused entry {} (not above its last ID?)",
                    String::from_utf8_lossy(id)
                ))
            } else {
                notify(
                    ctx.ctx,
                    raw::REDISMODULE_NOTIFY_STREAM as c_int,
                    c"xadd".as_ptr(),
                    name,
                );
                super::ffi::replicate_or_count(ctx, c"XADD", &argv, propagate);
                Ok(())
            }
        };
        for s in argv.iter().skip(1).filter(|s| !s.is_null()) {
            free(ctx.ctx, *s);
        }
        outcome?;
    }
    Ok(())
}
