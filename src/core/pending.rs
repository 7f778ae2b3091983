//! The table of local writes the peer has not acknowledged yet.
//!
//! Why: it is the only per-key metadata the module keeps. A remote image
//! loses only against a newer local write the peer has not seen; once the
//! peer acknowledges the batch that carried the write (in its own ordered
//! stream, see DESIGN §3), the entry leaves the table and, in steady state,
//! the table is empty. A pending local FLUSHDB acts as a tombstone over its
//! whole db.

use rustc_hash::FxHashMap as HashMap;

use super::protocol::Stamp;
use super::table_key::TableKey;

/// Where a pending write sits in the order and which batch carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingEntry {
    /// Its order stamp.
    pub stamp: Stamp,
    /// The sequence number of the batch that carried it.
    pub seq: u64,
}

/// What to do with one remote entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Apply it: no newer un-acknowledged local write exists.
    Apply,
    /// Drop it: a newer local write wins; both sides decide the same.
    LocalWins,
}

/// Does a remote write `(remote, remote_node)` beat a local one `(local, local_node)`?
/// Ties on the stamp are broken by node id, so both sides agree.
pub fn remote_wins(remote: Stamp, remote_node: &str, local: Stamp, local_node: &str) -> bool {
    (remote.hlc, remote_node, remote.index) > (local.hlc, local_node, local.index)
}

/// Un-acknowledged local writes, keyed by `(db, key)`, plus pending flushes per db.
///
/// Why no index by sequence number: an acknowledgement prunes by one pass
/// over the table, which is small whenever acknowledgements flow (they
/// arrive every few milliseconds) and large only while the peer is away,
/// when none arrive. Recording a write is then one hash insert, the hot path.
#[derive(Debug, Default)]
pub struct PendingWrites {
    keys: HashMap<TableKey, PendingEntry>,
    flushes: HashMap<u32, PendingEntry>,
    /// Newest remote flush already processed per db: a dirty-key resync can
    /// re-send a flush the receiver already applied, and unlike a key image a
    /// flush is not idempotent (it would delete keys it spared the first time).
    seen_remote_flushes: HashMap<u32, Stamp>,
}

impl PendingWrites {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys with an un-acknowledged write (what `pending_keys` shows).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when nothing is pending (no keys, no flushes).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.flushes.is_empty()
    }

    /// Record a local write of `key` in batch `seq`.
    pub fn record_key(&mut self, db: u32, key: &[u8], stamp: Stamp, seq: u64) {
        self.keys
            .insert(TableKey::new(db, key), PendingEntry { stamp, seq });
    }

    /// Record a local flush of `db` in batch `seq`.
    pub fn record_flush(&mut self, db: u32, stamp: Stamp, seq: u64) {
        self.flushes.insert(db, PendingEntry { stamp, seq });
    }

    /// The key's own pending entry stamp (not its db's flush).
    pub fn key_stamp(&self, db: u32, key: &[u8]) -> Option<Stamp> {
        self.keys.get(&TableKey::new(db, key)).map(|e| e.stamp)
    }

    /// The newest pending local write covering this key: its own entry or a
    /// pending flush of its db.
    pub fn local_stamp(&self, db: u32, key: &[u8]) -> Option<Stamp> {
        let own = self.keys.get(&TableKey::new(db, key)).map(|e| e.stamp);
        let flush = self.flushes.get(&db).map(|e| e.stamp);
        own.max(flush)
    }

    /// The rule of DESIGN §3 for a remote key image.
    pub fn decide_key(
        &self,
        db: u32,
        key: &[u8],
        remote: Stamp,
        remote_node: &str,
        local_node: &str,
    ) -> Decision {
        match self.local_stamp(db, key) {
            Some(local) if !remote_wins(remote, remote_node, local, local_node) => {
                Decision::LocalWins
            }
            _ => Decision::Apply,
        }
    }

    /// Keys of `db` whose pending local write is newer than a remote flush
    /// stamped `remote`: they survive the flush on both sides.
    pub fn survivors_of_flush(
        &self,
        db: u32,
        remote: Stamp,
        remote_node: &str,
        local_node: &str,
    ) -> Vec<Vec<u8>> {
        self.keys
            .iter()
            .filter(|(k, e)| k.db() == db && !remote_wins(remote, remote_node, e.stamp, local_node))
            .map(|(k, _)| k.key().to_vec())
            .collect()
    }

    /// Record a remote flush as processed; false if it (or a newer one) was
    /// processed before.
    pub fn first_sight_of_remote_flush(&mut self, db: u32, stamp: Stamp) -> bool {
        match self.seen_remote_flushes.get(&db) {
            Some(seen) if *seen >= stamp => false,
            _ => {
                self.seen_remote_flushes.insert(db, stamp);
                true
            }
        }
    }

    /// Does a pending local flush of `db` already cover a remote flush stamped
    /// `remote`? (Then the remote one changes nothing.)
    pub fn flush_covers(
        &self,
        db: u32,
        remote: Stamp,
        remote_node: &str,
        local_node: &str,
    ) -> bool {
        self.flushes
            .get(&db)
            .is_some_and(|e| !remote_wins(remote, remote_node, e.stamp, local_node))
    }

    /// The peer acknowledged every batch up to `seq`: forget what they carried,
    /// unless a later batch wrote the same key again.
    pub fn acknowledge(&mut self, seq: u64) {
        self.keys.retain(|_, e| e.seq > seq);
        self.flushes.retain(|_, e| e.seq > seq);
    }

    /// Every pending entry, oldest first: what a dirty-key resync re-sends,
    /// each with its recorded stamp. `None` as key means a flush of the db.
    pub fn entries_by_stamp(&self) -> Vec<(u32, Option<Vec<u8>>, PendingEntry)> {
        let mut out: Vec<_> = self
            .keys
            .iter()
            .map(|(k, e)| (k.db(), Some(k.key().to_vec()), *e))
            .chain(self.flushes.iter().map(|(db, e)| (*db, None, *e)))
            .collect();
        out.sort_by_key(|(_, _, e)| e.stamp);
        out
    }

    /// Age reference: the smallest stamp still pending, if any.
    pub fn oldest_stamp(&self) -> Option<Stamp> {
        self.keys
            .values()
            .chain(self.flushes.values())
            .map(|e| e.stamp)
            .min()
    }

    /// Forget everything (after a full resync made the table meaningless).
    pub fn clear(&mut self) {
        self.keys.clear();
        self.flushes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(hlc: u64, index: u32) -> Stamp {
        Stamp { hlc, index }
    }

    #[test]
    fn newer_local_write_wins() {
        let mut t = PendingWrites::new();
        t.record_key(0, b"k", st(10, 0), 1);
        assert_eq!(
            t.decide_key(0, b"k", st(9, 0), "b", "a"),
            Decision::LocalWins
        );
        assert_eq!(t.decide_key(0, b"k", st(11, 0), "b", "a"), Decision::Apply);
        assert_eq!(
            t.decide_key(1, b"k", st(1, 0), "b", "a"),
            Decision::Apply,
            "other db"
        );
    }

    #[test]
    fn ties_broken_by_node_id_the_same_way_on_both_sides() {
        let s = st(10, 0);
        assert!(remote_wins(s, "b", s, "a"));
        assert!(!remote_wins(s, "a", s, "b"));
    }

    #[test]
    fn index_orders_entries_of_one_batch() {
        assert!(remote_wins(st(10, 2), "a", st(10, 1), "a"));
    }

    #[test]
    fn ack_prunes_only_batches_up_to_seq_and_keeps_rewrites() {
        let mut t = PendingWrites::new();
        t.record_key(0, b"a", st(1, 0), 1);
        t.record_key(0, b"b", st(1, 1), 1);
        t.record_key(0, b"a", st(2, 0), 2);
        t.acknowledge(1);
        assert_eq!(t.len(), 1);
        assert!(t.local_stamp(0, b"a").is_some());
        t.acknowledge(2);
        assert!(t.is_empty());
    }

    #[test]
    fn pending_flush_is_a_tombstone_over_the_db() {
        let mut t = PendingWrites::new();
        t.record_flush(2, st(50, 0), 1);
        assert_eq!(
            t.decide_key(2, b"x", st(40, 0), "b", "a"),
            Decision::LocalWins
        );
        assert_eq!(t.decide_key(2, b"x", st(60, 0), "b", "a"), Decision::Apply);
        assert!(t.flush_covers(2, st(40, 0), "b", "a"));
        t.acknowledge(1);
        assert!(t.is_empty());
    }

    #[test]
    fn survivors_of_remote_flush_are_newer_local_writes() {
        let mut t = PendingWrites::new();
        t.record_key(0, b"old", st(5, 0), 1);
        t.record_key(0, b"new", st(15, 0), 2);
        t.record_key(1, b"other", st(15, 0), 2);
        assert_eq!(
            t.survivors_of_flush(0, st(10, 0), "b", "a"),
            vec![b"new".to_vec()]
        );
    }

    #[test]
    fn entries_by_stamp_are_oldest_first() {
        let mut t = PendingWrites::new();
        t.record_key(0, b"b", st(20, 0), 2);
        t.record_flush(0, st(10, 0), 1);
        let e = t.entries_by_stamp();
        assert_eq!(e[0].1, None);
        assert_eq!(e[1].1, Some(b"b".to_vec()));
    }
}
