//! Apply a peer's consumer-group record: this stream's groups become the
//! origin's, through the commands `core::stream_groups` plans, the entries
//! untouched.
//!
//! Why a local rebuild as the fallback: a pending entry whose stream entry
//! is gone (deleted or trimmed while pending) cannot be created by any
//! command (`XCLAIM … FORCE` skips it, and on an existing pending entry
//! drops it). When the plan needs one, the key is rebuilt from this node's
//! own entries and the record's groups, as an image would be (which places
//! and removes a placeholder entry for it): costs the stream's length on
//! this server, never on the link, and only in that case.

use redis_module::Context;

use super::apply::{run, write_image};
use super::ffi;
use super::flush::{query, read_groups, read_image};
use crate::core::image::Reply;
use crate::core::protocol::{StreamGroup, Value};
use crate::core::stream_groups::plan;

/// Make the groups of stream `key` (selected db) equal to `target`.
pub fn apply(
    ctx: &Context,
    key: &[u8],
    target: &[StreamGroup],
    propagate: bool,
) -> Result<(), String> {
    let local = read_groups(ctx, key)?;
    let plan = plan(key, &local, target);
    for (id, _) in &plan.claims {
        if !has_entry(ctx, key, id)? {
            return rebuild(ctx, key, target, propagate);
        }
    }
    for command in plan
        .commands
        .iter()
        .chain(plan.claims.iter().map(|(_, c)| c))
    {
        let Some((name, args)) = command.split_first() else {
            continue;
        };
        let name = std::str::from_utf8(name).map_err(|_| "bad command name".to_string())?;
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        run(ctx, name, &args)?;
    }
    Ok(())
}

/// Does the stream hold an entry with this ID?
fn has_entry(ctx: &Context, key: &[u8], id: &[u8]) -> Result<bool, String> {
    match query(ctx, "XRANGE", &[key, id, id, b"COUNT", b"1"])? {
        Reply::Array(a) => Ok(!a.is_empty()),
        _ => Err("XRANGE returned an unexpected reply".into()),
    }
}

/// This node's entries with the origin's groups, written as an image.
fn rebuild(
    ctx: &Context,
    key: &[u8],
    target: &[StreamGroup],
    propagate: bool,
) -> Result<(), String> {
    let db = u32::try_from(ffi::selected_db(ctx)).map_err(|_| "no db selected".to_string())?;
    match read_image(ctx, db, key)? {
        Some((Value::Stream(mut s), expire_at_ms)) => {
            s.groups = target.to_vec();
            write_image(ctx, key, &Value::Stream(s), expire_at_ms, propagate)
        }
        _ => Err("consumer groups for a key that is not a stream here".into()),
    }
}
