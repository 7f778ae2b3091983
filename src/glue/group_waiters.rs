//! Streams a client blocked in `XREADGROUP … BLOCK` waits on: the server
//! serves such a client later (when an entry arrives, from a client or
//! from the peer's apply), changing the group's state without the command
//! filter or a keyspace event seeing it. While one may be waiting, each
//! flush compares the groups' summary of those streams with the one last
//! seen and ships the groups of those that moved.
//!
//! Why a summary and not the groups themselves: the summary (`XINFO
//! GROUPS`: consumers, pending count, last delivered ID, entries read per
//! group) costs O(groups) and moves whenever a served read delivers
//! entries; the full groups (O(pending entries)) are read only then.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use redis_module::Context;

use super::ffi::{self, KeyKind};
use super::flush::query;
use crate::core::image;

/// Bound of the names watched: past it the oldest are forgotten first (a
/// served read on them then waits for the stream's next group command).
const WATCHED_MAX: usize = 10_000;

#[derive(Default)]
struct Watch {
    /// Stream names blocked readers named (the db is unknown in a filter).
    names: rustc_hash::FxHashSet<Vec<u8>>,
    /// The last summary seen per (db, name).
    seen: HashMap<(u32, Vec<u8>), Vec<Vec<u8>>>,
}

static WATCH: Mutex<Option<Watch>> = Mutex::new(None);
static WATCHING: AtomicBool = AtomicBool::new(false);

fn watch() -> MutexGuard<'static, Option<Watch>> {
    WATCH.lock().unwrap_or_else(|p| p.into_inner())
}

/// The filter saw `XREADGROUP … BLOCK … STREAMS keys…`.
pub fn note(keys: &[Vec<u8>]) {
    let mut w = watch();
    let w = w.get_or_insert_with(Watch::default);
    if w.names.len() + keys.len() > WATCHED_MAX {
        w.names.clear();
        w.seen.clear();
    }
    w.names.extend(keys.iter().cloned());
    WATCHING.store(true, Ordering::Relaxed);
}

/// At flush: the (db, key) of watched streams whose groups moved since the
/// last flush (each then ships its groups). Once the server counts no
/// blocked client, this last look is the final one and the watch ends.
pub fn moved(ctx: &Context, databases: u32) -> Vec<(u32, Vec<u8>)> {
    if !WATCHING.load(Ordering::Relaxed) {
        return Vec::new();
    }
    let done = ffi::blocked_clients(ctx) == Some(0);
    let mut guard = watch();
    let Some(w) = guard.as_mut() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in &w.names {
        for db in 0..databases {
            if !ffi::select_db(ctx, db as i32) {
                continue;
            }
            if !matches!(ffi::key_shape(ctx, name), Some((KeyKind::Stream, _, _))) {
                continue;
            }
            let now = summary(ctx, name);
            let slot = (db, name.clone());
            if w.seen.get(&slot) != Some(&now) {
                out.push(slot.clone());
                w.seen.insert(slot, now);
            }
        }
    }
    if done {
        *guard = None;
        WATCHING.store(false, Ordering::Relaxed);
    }
    out
}

/// What a served read changes in `XINFO GROUPS` (not the lag, which every
/// append moves). Unreadable: an empty summary (compared like any other).
fn summary(ctx: &Context, key: &[u8]) -> Vec<Vec<u8>> {
    match query(ctx, "XINFO", &[b"GROUPS", key]) {
        Ok(r) => image::group_summary(&r).unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}
