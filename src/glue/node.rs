//! The main-thread replication state: the clock and the un-acknowledged
//! writes table.
//!
//! Why a mutex although only the main thread touches it: it lives in a
//! static, and a mutex costs nothing uncontended. It is never held while
//! calling into Redis in a way that could re-enter capture.

use std::sync::{Mutex, MutexGuard};

use crate::core::hlc::Hlc;
use crate::core::pending::PendingWrites;

/// Clock and table.
#[derive(Debug, Default)]
pub struct NodeState {
    /// Issues stamps for local batches.
    pub hlc: Hlc,
    /// Local writes the peer has not acknowledged.
    pub pending: PendingWrites,
}

static NODE: Mutex<Option<NodeState>> = Mutex::new(None);

/// Lock the state, creating it on first use.
pub fn with_node<T>(f: impl FnOnce(&mut NodeState) -> T) -> T {
    let mut g: MutexGuard<'_, Option<NodeState>> = NODE.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(NodeState::default))
}

/// Like [`with_node`], but `None` instead of waiting when the lock is held
/// (the forked child that saves an RDB: a holder at the fork never lets go).
pub fn try_with_node<T>(f: impl FnOnce(&mut NodeState) -> T) -> Option<T> {
    let mut g = match NODE.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return None,
    };
    Some(f(g.get_or_insert_with(NodeState::default)))
}
