//! Merge a peer's concurrent stream appends into this node's stream
//! (`core::stream_merge` decides the IDs; this reads the tail and writes it).
//!
//! Why the key API's iterator to delete and not `XDEL`: `XDEL` raises the
//! stream's largest deleted ID, which the peer (whose merge may only
//! append) would not, and `XINFO` would differ for good (`XSETID` cannot
//! lower it back to 0-0). The iterator removes entries without touching it;
//! the deletion is propagated to replicas and the AOF as `XDEL`.

use std::os::raw::{c_char, c_int};

use redis_module::{raw, Context};

use super::apply::run;
use super::ffi;
use super::flush::query;
use crate::core::image::Reply;
use crate::core::list_op::{stream_id, ListOp};
use crate::core::stream_merge::{format_id, kept, merge, EntryId, StreamEntry};

/// Merge the append `op` into stream `key` of the selected db. `Err`: the
/// rule or the server refused; the caller re-ships the key (whole-stream
/// last writer wins).
pub fn apply(
    ctx: &Context,
    key: &[u8],
    op: &ListOp,
    local_first: bool,
    propagate: bool,
) -> Result<(), String> {
    let ListOp::XAdd { entries } = op else {
        return Err("not a stream append".into());
    };
    if !super::stream_append::fits(entries) {
        return Err("an entry the key API cannot append".into());
    }
    let incoming: Vec<StreamEntry> = entries
        .iter()
        .map(|(id, f)| stream_id(id).map(|n| (n, f.clone())))
        .collect::<Option<_>>()
        .ok_or("an entry ID that does not parse")?;
    let min = incoming
        .iter()
        .map(|(id, _)| *id)
        .min()
        .ok_or("an empty append")?;
    let tail = read_from(ctx, key, min)?;
    let new = merge(&tail, &incoming, local_first).map_err(|e| format!("{e:?}"))?;
    let keep = kept(&tail, &new);
    let added = &new[keep..];
    let as_bytes = |es: &[StreamEntry]| -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
        es.iter()
            .map(|(id, f)| (format_id(*id), f.clone()))
            .collect()
    };
    if keep == tail.len() {
        return super::stream_append::append(ctx, key, &as_bytes(added), propagate);
    }
    let (last, entries_added, max_deleted) = meta(ctx, key)?;
    // Everything that can refuse is asked before the first change: the last
    // ID goes down to the entry before the first one rewritten, which 7.2+
    // refuse below the largest deleted ID.
    let top = entry_before(ctx, key, tail[keep].0)?;
    if max_deleted > top {
        return Err("an entry deleted earlier lies in the rewritten part".into());
    }
    let gone: Vec<Vec<u8>> = tail[keep..].iter().map(|(id, _)| format_id(*id)).collect();
    let deleted = delete_from(ctx, key, tail[keep].0, propagate, &gone)?;
    if deleted != gone.len() {
        return Err(format!(
            "deleted {deleted} entries, expected {}",
            gone.len()
        ));
    }
    run(ctx, "XSETID", &[key, &format_id(top)])?;
    super::stream_append::append(ctx, key, &as_bytes(added), propagate)?;
    let newest = new.last().map_or(last, |(id, _)| (*id).max(last));
    let count = (entries_added + incoming.len() as i64).to_string();
    run(
        ctx,
        "XSETID",
        &[key, &format_id(newest), b"ENTRIESADDED", count.as_bytes()],
    )
}

/// The stream's entries from `min` on.
fn read_from(ctx: &Context, key: &[u8], min: EntryId) -> Result<Vec<StreamEntry>, String> {
    let from = format_id(min);
    let Reply::Array(items) = query(ctx, "XRANGE", &[key, &from, b"+"])? else {
        return Err("XRANGE returned an unexpected reply".into());
    };
    crate::core::image::stream_entries(&items)?
        .into_iter()
        .map(|(id, f)| {
            stream_id(&id)
                .map(|n| (n, f))
                .ok_or_else(|| "an entry ID that does not parse".to_string())
        })
        .collect()
}

/// The stream's last generated ID, count of entries ever added and
/// largest deleted ID.
fn meta(ctx: &Context, key: &[u8]) -> Result<(EntryId, i64, EntryId), String> {
    let info = query(ctx, "XINFO", &[b"STREAM", key])?;
    let (last, added, deleted) = crate::core::image::stream_meta(&info)?;
    let parse = |id: &[u8]| stream_id(id).ok_or("an ID that does not parse");
    Ok((parse(&last)?, added, parse(&deleted)?))
}

/// The ID of the last entry before `id` (0-0 if none).
fn entry_before(ctx: &Context, key: &[u8], id: EntryId) -> Result<EntryId, String> {
    let mut bound = b"(".to_vec();
    bound.extend(format_id(id));
    let Reply::Array(items) = query(ctx, "XREVRANGE", &[key, &bound, b"-", b"COUNT", b"1"])? else {
        return Err("XREVRANGE returned an unexpected reply".into());
    };
    match crate::core::image::stream_entries(&items)?.first() {
        Some((id, _)) => stream_id(id).ok_or_else(|| "an ID that does not parse".to_string()),
        None => Ok((0, 0)),
    }
}

/// Delete every entry from `from` on with the key API's iterator; tell
/// replicas and the AOF with `XDEL gone…`. Returns how many were deleted.
fn delete_from(
    ctx: &Context,
    key: &[u8],
    from: EntryId,
    propagate: bool,
    gone: &[Vec<u8>],
) -> Result<usize, String> {
    // SAFETY: main thread with a live context (the apply); the iterator is
    // started, drained and stopped before the key is closed.
    let n = unsafe {
        let (Some(start), Some(next), Some(delete), Some(stop)) = (
            raw::RedisModule_StreamIteratorStart,
            raw::RedisModule_StreamIteratorNextID,
            raw::RedisModule_StreamIteratorDelete,
            raw::RedisModule_StreamIteratorStop,
        ) else {
            return Err("the stream iterator API is unavailable".into());
        };
        ffi::with_key(ctx, key, raw::REDISMODULE_WRITE as c_int, |_, k| {
            if k.is_null() {
                return None;
            }
            let mut first = raw::RedisModuleStreamID {
                ms: from.0,
                seq: from.1,
            };
            if start(k, 0, &mut first, std::ptr::null_mut()) != raw::REDISMODULE_OK as c_int {
                return None;
            }
            let mut id = raw::RedisModuleStreamID { ms: 0, seq: 0 };
            let mut fields: std::os::raw::c_long = 0;
            let mut n = 0;
            while next(k, &mut id, &mut fields) == raw::REDISMODULE_OK as c_int {
                if delete(k) != raw::REDISMODULE_OK as c_int {
                    break;
                }
                n += 1;
            }
            stop(k);
            Some(n)
        })
        .flatten()
        .ok_or("cannot iterate the stream")?
    };
    if propagate {
        replicate_xdel(ctx, key, gone);
    }
    Ok(n)
}

/// Propagate `XDEL key ids…` to replicas and the AOF.
fn replicate_xdel(ctx: &Context, key: &[u8], ids: &[Vec<u8>]) {
    // SAFETY: main thread with a live context; the strings are freed after
    // the call, which copies them.
    unsafe {
        let (Some(create), Some(free), Some(replicate)) = (
            raw::RedisModule_CreateString,
            raw::RedisModule_FreeString,
            raw::RedisModule_Replicate,
        ) else {
            return;
        };
        let mut argv: Vec<*mut raw::RedisModuleString> = std::iter::once(key)
            .chain(ids.iter().map(Vec::as_slice))
            .map(|b| create(ctx.ctx, b.as_ptr().cast::<c_char>(), b.len()))
            .collect();
        if argv.iter().all(|s| !s.is_null()) {
            replicate(
                ctx.ctx,
                c"XDEL".as_ptr(),
                c"v".as_ptr(),
                argv.as_mut_ptr(),
                argv.len(),
            );
        }
        for s in argv.into_iter().filter(|s| !s.is_null()) {
            free(ctx.ctx, s);
        }
    }
}
