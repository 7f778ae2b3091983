//! Counters shown by `SYNC.STATUS` and `INFO bisync`.
//!
//! Why atomics: the link threads and the Redis main thread both update them,
//! and reading them must never wait on either.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// State of the link to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkState {
    /// No connection and none being made.
    Down = 0,
    /// Dialing the peer.
    Connecting = 1,
    /// Connected, exchanging hellos.
    Handshake = 2,
    /// Replicating.
    Up = 3,
}

impl LinkState {
    /// The word `SYNC.STATUS` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Down => "down",
            LinkState::Connecting => "connecting",
            LinkState::Handshake => "handshake",
            LinkState::Up => "up",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => LinkState::Connecting,
            2 => LinkState::Handshake,
            3 => LinkState::Up,
            _ => LinkState::Down,
        }
    }
}

/// The counters, all monotonic except the link state.
#[derive(Debug, Default)]
pub struct Stats {
    link: AtomicU8,
    /// Entries captured into local batches.
    pub ops_captured: AtomicU64,
    /// Highest own batch seq written to the peer's socket.
    pub sent_seq: AtomicU64,
    /// Entries written to the peer's socket (resends included).
    pub ops_sent: AtomicU64,
    /// Remote entries applied here.
    pub ops_applied: AtomicU64,
    /// Remote entries dropped because a newer local write won.
    pub conflicts_lost: AtomicU64,
    /// Remote entries merged with a concurrent local change of their key
    /// (element merge: both sides' changes kept by the rules of DESIGN §11).
    pub conflicts_merged: AtomicU64,
    /// Bytes written to the peer.
    pub bytes_sent: AtomicU64,
    /// Bytes read from the peer.
    pub bytes_received: AtomicU64,
    /// Reconnects served from the backlog.
    pub partial_syncs: AtomicU64,
    /// Reconnects served by re-imaging the un-acknowledged keys.
    pub dirty_key_syncs: AtomicU64,
    /// Full dataset transfers.
    pub full_syncs: AtomicU64,
    /// Restarts of this node from a snapshot that ended in a resume (only
    /// the keys changed since the snapshot crossed), not a full resync.
    pub restart_resumes: AtomicU64,
    /// Resumes this node served to a restarted peer.
    pub restart_resumes_served: AtomicU64,
    /// Keys sent (images or deletes) by the resumes this node served.
    pub restart_resume_keys: AtomicU64,
    /// Times this node, restarted, found its peer ahead of its stream (two
    /// starts from one snapshot with the clock set back) and moved on.
    pub seq_skips: AtomicU64,
    /// Connections refused or dropped for a protocol or handshake error.
    pub link_errors: AtomicU64,
    /// Bytes of the peer's frames waiting for the main thread now.
    pub inbound_bytes: AtomicU64,
    /// The most `inbound_bytes` has been (bounded by
    /// [`crate::core::inbound_budget::MAX_BYTES`] plus one frame).
    pub inbound_bytes_peak: AtomicU64,
}

impl Stats {
    /// Current link state.
    pub fn link(&self) -> LinkState {
        LinkState::from_u8(self.link.load(Ordering::Relaxed))
    }

    /// Set the link state.
    pub fn set_link(&self, s: LinkState) {
        self.link.store(s as u8, Ordering::Relaxed);
    }

    /// Add `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Raise a high-water mark.
    pub fn add_max(counter: &AtomicU64, v: u64) {
        counter.fetch_max(v, Ordering::Relaxed);
    }

    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
