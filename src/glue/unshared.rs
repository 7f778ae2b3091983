//! The node's [`UnsharedLists`]: keys whose list commands ship as images
//! until an image of the key crosses the link (see `core::unshared`).
//!
//! Held apart from the node's table because the capture asks on every list
//! write: an atomic says "none" without taking the lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::core::unshared::{Reason, UnsharedLists};

static KEYS: Mutex<Option<UnsharedLists>> = Mutex::new(None);
/// Cheap "is any key noted" for the capture's per-write check.
static ANY: AtomicBool = AtomicBool::new(false);

fn keys() -> MutexGuard<'static, Option<UnsharedLists>> {
    KEYS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The peer may not hold `key` of `db` as this node does.
pub fn note(db: u32, key: &[u8], why: Reason) {
    let mut g = keys();
    g.get_or_insert_with(UnsharedLists::default)
        .note(db, key, why);
    ANY.store(true, Ordering::Relaxed);
}

/// An image of the key crossed the link (applied here, or shipped).
pub fn shared_again(db: u32, key: &[u8]) {
    if ANY.load(Ordering::Relaxed) {
        let mut g = keys();
        if let Some(u) = g.as_mut() {
            u.shared_again(db, key);
            ANY.store(!u.is_empty(), Ordering::Relaxed);
        }
    }
}

/// Must the key's list commands ship as images?
pub fn contains(db: u32, key: &[u8]) -> bool {
    ANY.load(Ordering::Relaxed) && keys().as_ref().is_some_and(|u| u.contains(db, key))
}
