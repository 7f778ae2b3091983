//! The served-client guard (`core::served` says why): which keys a blocked
//! client may pop from or push to when the server serves it right after
//! another command, so that a hint on those keys is trusted only where its
//! record is right whoever fired the event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use redis_module::Context;

use super::ffi;
use crate::core::served;
use crate::core::write_hint::KeyHint;

/// While a client may be blocked (`core::served`): the keys blocking
/// commands named (what a served client may pop from or push to), and
/// whether one of them may pop several elements. Filled by the filter when
/// it sees a blocking command; emptied at before-sleep once the server
/// counts no blocked client. Past [`SERVED_KEYS_MAX`] names every key is
/// guarded.
struct ServedGuard {
    keys: rustc_hash::FxHashSet<Vec<u8>>,
    all: bool,
    many: bool,
}

/// Bound of [`ServedGuard::keys`].
const SERVED_KEYS_MAX: usize = 10_000;

static SERVED: Mutex<Option<ServedGuard>> = Mutex::new(None);
/// Cheap check for "is the guard up" on every event.
static SERVED_UP: AtomicBool = AtomicBool::new(false);

fn served_guard() -> MutexGuard<'static, Option<ServedGuard>> {
    SERVED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Before-sleep: drop the served-client guard once no client is blocked
/// (the count is asked only while the guard is up).
pub fn settle(ctx: &Context) {
    if SERVED_UP.load(Ordering::Relaxed) && ffi::blocked_clients(ctx) == Some(0) {
        *served_guard() = None;
        SERVED_UP.store(false, Ordering::Relaxed);
    }
}

/// The filter saw a command that may block its client.
pub fn note(b: &served::Blocking<'_>) {
    let mut g = served_guard();
    let g = g.get_or_insert_with(|| ServedGuard {
        keys: Default::default(),
        all: false,
        many: false,
    });
    g.many |= b.many;
    if !g.all {
        g.keys.extend(b.keys.iter().map(|k| k.to_vec()));
        if g.keys.len() > SERVED_KEYS_MAX {
            g.all = true;
            g.keys = Default::default();
        }
    }
    SERVED_UP.store(true, Ordering::Relaxed);
}

/// May the hint's record of `event` on `key` stand, given the guard?
pub fn trust(h: &mut KeyHint, key: &[u8], event: &[u8]) -> bool {
    if !SERVED_UP.load(Ordering::Relaxed) {
        return true;
    }
    let g = served_guard();
    match g.as_ref() {
        Some(g) if g.all || g.keys.contains(key) => served::trust(h, event, g.many),
        _ => true,
    }
}
