//! Keys whose list or stream this node cannot assume the peer holds as it
//! does: their list commands ship as whole-key images until an image of
//! the key crosses the link in either direction.
//!
//! Why: a list command replays only on an identical list (DESIGN §11,
//! `merge::rule::list_verdict`). The peer takes "identical" from what the
//! command had seen: every batch of the peer's up to `seen` is in this
//! node's list. That is false for a key where this node *ignored* a peer's
//! change: a `Superseded` step waits for the winner's re-shipped image, and
//! until it arrives this node's list lacks the winner's change. A command
//! made on it meanwhile, replayed by a peer whose own change is already
//! acknowledged (so not concurrent any more), would build a list neither
//! side held (found by the element self-check on a stream: an `XADD` whose
//! ID clashed, or that landed next to an entry its origin never had).
//!
//! The same holds for a key whose image was too large to travel (the peer
//! lacks what was left out). An image settles it: applied here, both hold
//! the peer's list; shipped from here, the peer either takes it (both hold
//! ours) or holds a later change of its own, against which our later
//! commands are concurrent and never replay.

use std::collections::HashSet;

/// Why a key was noted (for the log and the tests; both reasons clear the
/// same way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// This node ignored a later remote change of the key and waits for
    /// the winner's image.
    Superseded,
    /// The key's last image was too large for a frame and was left out.
    LeftOut,
}

/// The set of such keys, by (db, key).
#[derive(Debug, Default)]
pub struct UnsharedLists {
    keys: HashSet<(u32, Vec<u8>)>,
}

impl UnsharedLists {
    /// Note that the peer may not hold `key` of `db` as this node does.
    pub fn note(&mut self, db: u32, key: &[u8], _why: Reason) {
        self.keys.insert((db, key.to_vec()));
    }

    /// An image of the key crossed the link (applied here or shipped from
    /// here): its list commands may replay again.
    pub fn shared_again(&mut self, db: u32, key: &[u8]) {
        if !self.keys.is_empty() {
            self.keys.remove(&(db, key.to_vec()));
        }
    }

    /// Must the key's list commands ship as images?
    pub fn contains(&self, db: u32, key: &[u8]) -> bool {
        // `HashSet<(u32, Vec<u8>)>` cannot be probed with a borrowed key
        // without allocating; the set is small (one entry per key in a
        // conflict being settled), and empty almost always.
        !self.keys.is_empty() && self.keys.contains(&(db, key.to_vec()))
    }

    /// No key noted: the capture's per-write check can skip the lookup.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys are noted (`SYNC.STATUS`-style figures, tests).
    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_noted_key_is_unshared_until_an_image_crosses() {
        let mut u = UnsharedLists::default();
        assert!(u.is_empty());
        u.note(2, b"k", Reason::Superseded);
        u.note(2, b"k", Reason::LeftOut);
        assert_eq!(u.len(), 1);
        assert!(u.contains(2, b"k"));
        assert!(!u.contains(1, b"k"), "another db's key is another key");
        assert!(!u.contains(2, b"j"));
        u.shared_again(1, b"k");
        assert!(u.contains(2, b"k"));
        u.shared_again(2, b"k");
        assert!(!u.contains(2, b"k"));
        assert!(u.is_empty());
    }
}
