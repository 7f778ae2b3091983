//! The table of local writes the peer has not acknowledged yet.
//!
//! Why: it is the only per-key metadata the module keeps. A remote image
//! loses only against a newer local write the peer has not seen; once the
//! peer acknowledges the batch that carried the write (in its own ordered
//! stream, see DESIGN §3), the entry leaves the table and, in steady state,
//! the table is empty. A pending local FLUSHDB acts as a tombstone over its
//! whole db. Element-level changes (DESIGN §11) are held in full, in
//! execution order, by [`ElementLog`], under the same acknowledgement rule.

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use super::pending_elements::{shape_bit, ElementLog, ImageTtl, LocalWrite, PendingChange};
use super::protocol::{ElementChange, Shape, Stamp};
use super::table_key::TableKey;

/// Where a pending write sits in the order and which batch carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingEntry {
    /// Its order stamp.
    pub stamp: Stamp,
    /// The sequence number of the batch that carried it.
    pub seq: u64,
    /// The TTL the write gave its key (`None`: none, or a flush).
    pub ttl: Option<ImageTtl>,
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

/// One batch's key writes, not yet in the index.
#[derive(Debug)]
struct LoggedBatch {
    seq: u64,
    entries: Vec<(TableKey, Stamp, Option<ImageTtl>)>,
}

/// Un-acknowledged local writes, keyed by `(db, key)`, plus pending flushes per db.
///
/// Why a log in front of the index: recording a write is the hot path, and
/// most writes are acknowledged before anything asks about them (a remote
/// batch to decide, a resync). So a write is appended to its batch in a
/// FIFO log (sequential memory, no hashing) and an acknowledgement drops
/// whole batches from the front; only a question (or a log that grows past
/// half of `max-pending-keys` while the peer is away) moves batches, oldest
/// first, into the hash index, where a later write of a key replaces its
/// earlier one. Index entries always come from batches older than any
/// still in the log, which is what keeps that replacement correct.
#[derive(Debug, Default)]
pub struct PendingWrites {
    keys: HashMap<TableKey, PendingEntry>,
    log: VecDeque<LoggedBatch>,
    log_entries: usize,
    flushes: HashMap<u32, PendingEntry>,
    /// Newest remote flush already processed per db: a dirty-key resync can
    /// re-send a flush the receiver already applied, and unlike a key image a
    /// flush is not idempotent (it would delete keys it spared the first time).
    seen_remote_flushes: HashMap<u32, Stamp>,
    /// Element-level changes, every one of them until acknowledged.
    elements: ElementLog,
    /// The newest batch that carried an image with a TTL (0: none): lets
    /// [`PendingWrites::ttl_image_after`] answer without the index.
    newest_ttl_image: u64,
}

impl PendingWrites {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Un-acknowledged key writes (what `pending_keys` shows): the number of
    /// keys, except that a key written again in a batch not yet indexed
    /// counts once per batch until [`PendingWrites::index_all`] runs.
    pub fn len(&self) -> usize {
        self.keys.len() + self.log_entries + self.elements.len()
    }

    /// True when nothing is pending (no keys, no flushes).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.log.is_empty()
            && self.flushes.is_empty()
            && self.elements.is_empty()
    }

    /// Record a local write of `key` in batch `seq` (batches are recorded
    /// in increasing `seq`) that left the key expiring with `ttl`.
    pub fn record_key(
        &mut self,
        db: u32,
        key: &[u8],
        stamp: Stamp,
        seq: u64,
        ttl: Option<ImageTtl>,
    ) {
        let key = TableKey::new(db, key);
        if ttl.is_some() {
            self.newest_ttl_image = self.newest_ttl_image.max(seq);
        }
        match self.log.back_mut() {
            Some(b) if b.seq == seq => b.entries.push((key, stamp, ttl)),
            Some(b) if b.seq > seq => {
                // Out of order (not done today): keep the index rule.
                self.index_all();
                self.keys.insert(key, PendingEntry { stamp, seq, ttl });
                return;
            }
            _ => self.log.push_back(LoggedBatch {
                seq,
                entries: vec![(key, stamp, ttl)],
            }),
        }
        self.log_entries += 1;
    }

    /// Move logged batches, oldest first, into the index until at least
    /// `budget` entries moved or the log is empty.
    fn index_some(&mut self, budget: usize) {
        let mut moved = 0;
        while moved < budget {
            let Some(batch) = self.log.pop_front() else {
                break;
            };
            moved += batch.entries.len();
            self.log_entries -= batch.entries.len();
            let seq = batch.seq;
            for (key, stamp, ttl) in batch.entries {
                self.keys.insert(key, PendingEntry { stamp, seq, ttl });
            }
        }
    }

    /// Index every logged write (before any question about keys).
    pub fn index_all(&mut self) {
        self.index_some(usize::MAX);
    }

    /// Keep the log from growing without bound while the peer is away:
    /// past half of `max_keys`, index `2 × recorded + 1024` entries (twice
    /// what was just recorded, so the log shrinks), which folds repeated
    /// writes of a key into one entry. Call after each batch is recorded.
    pub fn maintain(&mut self, max_keys: u64, recorded: usize) {
        if self.len() as u64 > max_keys / 2 {
            self.index_some(recorded.saturating_mul(2).saturating_add(1024));
        }
    }

    /// Is the table over `max_keys` distinct keys? Exact: indexes everything
    /// first when the cheap count says it might be.
    pub fn over(&mut self, max_keys: u64) -> bool {
        if self.len() as u64 <= max_keys {
            return false;
        }
        self.index_all();
        self.len() as u64 > max_keys
    }

    /// The stamp of the pending local flush of `db`, if any: a full resync
    /// sends it again first, so that the target cancels its older changes
    /// in that db as this node does when they arrive.
    pub fn flush_stamp(&self, db: u32) -> Option<Stamp> {
        self.flushes.get(&db).map(|e| e.stamp)
    }

    /// The dbs with a pending local flush, in order (a full resync sends
    /// those flushes first).
    pub fn flushed_dbs(&self) -> Vec<u32> {
        let mut dbs: Vec<u32> = self.flushes.keys().copied().collect();
        dbs.sort_unstable();
        dbs
    }

    /// Record a local flush of `db` in batch `seq`.
    ///
    /// A flush re-sent with its own stamp (a resync) keeps the seq that
    /// first carried it: a peer record whose `seen` covers that seq had
    /// seen the flush, and counting it as concurrent would make the list
    /// rule wait for a re-ship the peer never sends (found by the
    /// simulation). Acknowledgements stay right: any ack at or past the first
    /// seq means the peer applied that batch or a resync batch past it.
    pub fn record_flush(&mut self, db: u32, stamp: Stamp, seq: u64) {
        let seq = match self.flushes.get(&db) {
            Some(e) if e.stamp == stamp => e.seq.min(seq),
            _ => seq,
        };
        self.flushes.insert(
            db,
            PendingEntry {
                stamp,
                seq,
                ttl: None,
            },
        );
    }

    /// The key's own pending entry stamp (not its db's flush).
    pub fn key_stamp(&mut self, db: u32, key: &[u8]) -> Option<Stamp> {
        self.index_all();
        self.keys.get(&TableKey::new(db, key)).map(|e| e.stamp)
    }

    /// The newest pending local write covering this key: its own entry or a
    /// pending flush of its db.
    pub fn local_stamp(&mut self, db: u32, key: &[u8]) -> Option<Stamp> {
        self.index_all();
        let k = TableKey::new(db, key);
        let own = self.keys.get(&k).map(|e| e.stamp);
        let elements = self.elements.of_key(&k).iter().map(|p| p.stamp).max();
        let flush = self.flushes.get(&db).map(|e| e.stamp);
        own.max(elements).max(flush)
    }

    /// The newest pending local write of this key itself (its own entry or
    /// an element change), ignoring a pending flush of its db: what a full
    /// resync's sweep keeps. A key that exists after a local flush was
    /// either written since (then it has an entry) or taken from the peer.
    pub fn own_stamp(&mut self, db: u32, key: &[u8]) -> Option<Stamp> {
        self.index_all();
        let k = TableKey::new(db, key);
        let own = self.keys.get(&k).map(|e| e.stamp);
        let elements = self.elements.of_key(&k).iter().map(|p| p.stamp).max();
        own.max(elements)
    }

    /// The rule of DESIGN §3 for a remote key image.
    pub fn decide_key(
        &mut self,
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
        &mut self,
        db: u32,
        remote: Stamp,
        remote_node: &str,
        local_node: &str,
    ) -> Vec<Vec<u8>> {
        self.index_all();
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
        while self.log.front().is_some_and(|b| b.seq <= seq) {
            if let Some(b) = self.log.pop_front() {
                self.log_entries -= b.entries.len();
            }
        }
        if !self.keys.is_empty() {
            self.keys.retain(|_, e| e.seq > seq);
        }
        if !self.flushes.is_empty() {
            self.flushes.retain(|_, e| e.seq > seq);
        }
        self.elements.acknowledge(seq);
    }

    /// Record a shipped element-level change of `key` in batch `seq`, in
    /// execution order (one entry per shipped record, DESIGN §11); `seen`
    /// is the peer's seq applied here when the change was made.
    pub fn record_element(
        &mut self,
        db: u32,
        key: &[u8],
        stamp: Stamp,
        seq: u64,
        seen: u64,
        change: ElementChange,
    ) {
        self.elements
            .record(TableKey::new(db, key), stamp, seq, seen, change);
    }

    /// Every pending local write on `key`, in execution order, as the merge
    /// rule reads them: its element changes, its pending image and a pending
    /// flush of its db (both as images).
    pub fn changes_of(&mut self, db: u32, key: &[u8]) -> Vec<PendingChange> {
        self.index_all();
        let k = TableKey::new(db, key);
        let mut out = self.elements.of_key(&k);
        let images = [self.keys.get(&k), self.flushes.get(&db)];
        for e in images.into_iter().flatten() {
            out.push(PendingChange {
                stamp: e.stamp,
                seq: e.seq,
                seen: 0,
                write: LocalWrite::Image { ttl: e.ttl },
            });
        }
        // Own stamps grow in execution order.
        out.sort_by_key(|p| p.stamp);
        out
    }

    /// Can a remote increment of `shape` on `key` skip the merge's reading
    /// of the pending table? Yes when this node's pending writes on the key
    /// are element changes of that family only (no image, no flush of the
    /// db): the rule then just adds. `Some(concurrent)` says whether any are
    /// pending. Why: after an outage a hot counter has thousands of pending
    /// increments, and copying them for each remote one made catching up
    /// quadratic.
    pub fn increment_fast_path(&mut self, db: u32, key: &[u8], shape: Shape) -> Option<bool> {
        self.index_all();
        let k = TableKey::new(db, key);
        if self.keys.contains_key(&k) || self.flushes.contains_key(&db) {
            return None;
        }
        let mask = self.elements.shapes_of(&k);
        (mask & !shape_bit(shape) == 0).then_some(mask != 0)
    }

    /// The element families of this node's pending changes of `key` (bit
    /// mask, see [`crate::core::pending_elements::shape_bit`]), read without
    /// copying them.
    pub fn element_shapes(&mut self, db: u32, key: &[u8]) -> u8 {
        self.elements.shapes_of(&TableKey::new(db, key))
    }

    /// May an image with a TTL carried after batch `seen` still be pending?
    /// O(1): the apply loop asks it for every remote element change.
    pub fn ttl_image_after(&self, seen: u64) -> bool {
        self.newest_ttl_image > seen && !(self.keys.is_empty() && self.log.is_empty())
    }

    /// The batch and TTL of `key`'s pending image, if it gave the key one.
    pub fn image_ttl(&mut self, db: u32, key: &[u8]) -> Option<(u64, ImageTtl)> {
        if self.keys.is_empty() && self.log.is_empty() {
            return None;
        }
        self.index_all();
        let e = self.keys.get(&TableKey::new(db, key))?;
        e.ttl.map(|t| (e.seq, t))
    }

    /// Drop the pending writes of `key` stamped before a remote record
    /// `(remote, remote_node)` that acted as an image: it cancelled them.
    pub fn prune_before(
        &mut self,
        db: u32,
        key: &[u8],
        remote: Stamp,
        remote_node: &str,
        local_node: &str,
    ) {
        self.index_all();
        let k = TableKey::new(db, key);
        let older = |s: Stamp| remote_wins(remote, remote_node, s, local_node);
        self.elements.prune(&k, older);
        if self.keys.get(&k).is_some_and(|e| older(e.stamp)) {
            self.keys.remove(&k);
        }
    }

    /// A remote change replaced the key a pending image with a TTL made (a
    /// delete, a `SET`, another type): later remote changes no longer meet
    /// that key when it expires, so its TTL no longer decides for them
    /// (see [`crate::core::merge::rule::merge_record`]).
    pub fn forget_image_ttl(&mut self, db: u32, key: &[u8]) {
        self.index_all();
        if let Some(e) = self.keys.get_mut(&TableKey::new(db, key)) {
            e.ttl = None;
        }
    }

    /// Keys of `db` with a pending write of their own, in key order.
    pub fn keys_of_db(&mut self, db: u32) -> Vec<Vec<u8>> {
        self.index_all();
        let mut out: Vec<Vec<u8>> = self
            .keys
            .keys()
            .chain(self.elements.all().iter().map(|(k, _)| k))
            .filter(|k| k.db() == db)
            .map(|k| k.key().to_vec())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every key with pending element changes, with its changes in
    /// execution order (what a dirty-key resync re-sends exactly).
    pub fn element_changes(&mut self) -> Vec<(TableKey, Vec<PendingChange>)> {
        self.elements.all()
    }

    /// Forget the element changes of `key` (a resync re-sent the key as one
    /// image instead, recorded with [`PendingWrites::record_key`]).
    pub fn forget_elements(&mut self, db: u32, key: &[u8]) {
        self.elements.forget_key(&TableKey::new(db, key));
    }

    /// Every pending entry, oldest first: what a dirty-key resync re-sends,
    /// each with its recorded stamp. `None` as key means a flush of the db.
    pub fn entries_by_stamp(&mut self) -> Vec<(u32, Option<Vec<u8>>, PendingEntry)> {
        self.index_all();
        let mut out: Vec<_> = self
            .keys
            .iter()
            .map(|(k, e)| (k.db(), Some(k.key().to_vec()), *e))
            .chain(self.flushes.iter().map(|(db, e)| (*db, None, *e)))
            .collect();
        out.sort_by_key(|(_, _, e)| e.stamp);
        out
    }

    /// Every key with a pending write, in no order (what a full resync's
    /// sweep must spare).
    pub fn keys(&mut self) -> Vec<TableKey> {
        self.index_all();
        let mut out: Vec<TableKey> = self.keys.keys().cloned().collect();
        out.extend(self.elements.all().into_iter().map(|(k, _)| k));
        out.sort_unstable_by(|a, b| (a.db(), a.key()).cmp(&(b.db(), b.key())));
        out.dedup();
        out
    }

    /// Age reference: the smallest stamp still pending, if any.
    pub fn oldest_stamp(&self) -> Option<Stamp> {
        let logged = self
            .log
            .iter()
            .flat_map(|b| b.entries.iter().map(|(_, s, _)| *s));
        self.keys
            .values()
            .chain(self.flushes.values())
            .map(|e| e.stamp)
            .chain(logged)
            .chain(self.elements.oldest_stamp())
            .min()
    }

    /// Forget everything (after a full resync made the table meaningless).
    pub fn clear(&mut self) {
        self.keys.clear();
        self.log.clear();
        self.log_entries = 0;
        self.flushes.clear();
        self.elements.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(hlc: u64, index: u32) -> Stamp {
        Stamp { hlc, index }
    }

    #[test]
    fn increments_skip_the_table_only_among_their_own_family() {
        use crate::core::protocol::Shape;
        let incr = |shape| crate::core::protocol::ElementChange::Incr {
            shape,
            elem: b"f".to_vec(),
            delta: 1,
        };
        let mut t = PendingWrites::new();
        assert_eq!(t.increment_fast_path(0, b"h", Shape::Hash), Some(false));
        t.record_element(0, b"h", st(1, 0), 1, 0, incr(Shape::Hash));
        assert_eq!(t.increment_fast_path(0, b"h", Shape::Hash), Some(true));
        assert_eq!(t.increment_fast_path(0, b"h", Shape::Str), None);
        t.record_key(0, b"img", st(2, 0), 2, None);
        assert_eq!(t.increment_fast_path(0, b"img", Shape::Str), None);
        t.record_flush(1, st(3, 0), 3);
        assert_eq!(t.increment_fast_path(1, b"x", Shape::Str), None);
        // Acknowledged: nothing is left, per key or per element.
        t.acknowledge(3);
        assert!(t.is_empty());
        assert_eq!(t.increment_fast_path(0, b"h", Shape::Hash), Some(false));
    }

    #[test]
    fn element_writes_count_as_local_writes_for_a_full_resync() {
        let mut t = PendingWrites::new();
        t.record_key(0, b"img", st(5, 0), 1, None);
        let change = crate::core::protocol::ElementChange::DelKey;
        t.record_element(0, b"el", st(9, 1), 2, 0, change.clone());
        t.record_element(0, b"img", st(11, 0), 3, 0, change);
        let keys: Vec<Vec<u8>> = t.keys().iter().map(|k| k.key().to_vec()).collect();
        assert_eq!(keys, vec![b"el".to_vec(), b"img".to_vec()]);
        assert_eq!(t.local_stamp(0, b"el"), Some(st(9, 1)));
        assert_eq!(t.local_stamp(0, b"img"), Some(st(11, 0)));
        assert_eq!(t.local_stamp(0, b"other"), None);
    }

    #[test]
    fn newer_local_write_wins() {
        let mut t = PendingWrites::new();
        t.record_key(0, b"k", st(10, 0), 1, None);
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
        t.record_key(0, b"a", st(1, 0), 1, None);
        t.record_key(0, b"b", st(1, 1), 1, None);
        t.record_key(0, b"a", st(2, 0), 2, None);
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
        t.record_key(0, b"old", st(5, 0), 1, None);
        t.record_key(0, b"new", st(15, 0), 2, None);
        t.record_key(1, b"other", st(15, 0), 2, None);
        assert_eq!(
            t.survivors_of_flush(0, st(10, 0), "b", "a"),
            vec![b"new".to_vec()]
        );
    }

    #[test]
    fn entries_by_stamp_are_oldest_first() {
        let mut t = PendingWrites::new();
        t.record_key(0, b"b", st(20, 0), 2, None);
        t.record_flush(0, st(10, 0), 1);
        let e = t.entries_by_stamp();
        assert_eq!(e[0].1, None);
        assert_eq!(e[1].1, Some(b"b".to_vec()));
    }

    #[test]
    fn acknowledged_batches_leave_without_being_indexed() {
        let mut t = PendingWrites::new();
        t.record_key(0, b"a", st(1, 0), 1, None);
        t.record_key(0, b"b", st(2, 0), 2, None);
        t.record_key(0, b"c", st(3, 0), 3, None);
        assert_eq!(t.len(), 3);
        t.acknowledge(2);
        assert_eq!(t.len(), 1);
        assert_eq!(t.key_stamp(0, b"a"), None);
        assert_eq!(t.key_stamp(0, b"c"), Some(st(3, 0)));
    }

    #[test]
    fn an_indexed_write_acknowledged_leaves_the_logged_rewrite_pending() {
        let mut t = PendingWrites::new();
        t.record_key(0, b"k", st(1, 0), 1, None);
        assert_eq!(t.key_stamp(0, b"k"), Some(st(1, 0)), "indexes batch 1");
        t.record_key(0, b"k", st(2, 0), 2, None);
        t.acknowledge(1);
        assert_eq!(t.key_stamp(0, b"k"), Some(st(2, 0)));
        t.acknowledge(2);
        assert!(t.is_empty());
    }

    #[test]
    fn maintain_folds_rewrites_of_a_hot_key() {
        let mut t = PendingWrites::new();
        for seq in 1..=10_000u64 {
            t.record_key(0, b"hot", st(seq, 0), seq, None);
            t.maintain(100, 1);
            assert!(!t.over(100), "one key never overflows (seq {seq})");
        }
        assert!(t.len() <= 1100, "the log stays bounded: {}", t.len());
        assert_eq!(t.key_stamp(0, b"hot"), Some(st(10_000, 0)));
    }

    #[test]
    fn over_counts_distinct_keys() {
        let mut t = PendingWrites::new();
        for seq in 1..=5u64 {
            t.record_key(0, b"a", st(seq, 0), seq, None);
            t.record_key(0, b"b", st(seq, 1), seq, None);
        }
        assert!(!t.over(2));
        t.record_key(0, b"c", st(9, 0), 9, None);
        assert!(t.over(2));
    }

    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap as StdMap;

        #[derive(Debug, Clone)]
        enum Step {
            /// Write key `k` in the next batch (or the current one).
            Write {
                k: u8,
                new_batch: bool,
            },
            /// Acknowledge up to `back` batches before the newest.
            Ack {
                back: u8,
            },
            /// Ask about key `k`.
            Ask {
                k: u8,
            },
            Maintain,
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => (0u8..6, any::<bool>()).prop_map(|(k, new_batch)| Step::Write { k, new_batch }),
                1 => (0u8..4).prop_map(|back| Step::Ack { back }),
                2 => (0u8..6).prop_map(|k| Step::Ask { k }),
                1 => Just(Step::Maintain),
            ]
        }

        proptest! {
            /// The log-plus-index table answers exactly like a plain map
            /// with prune-on-ack, whatever the order of writes, questions,
            /// acknowledgements and maintenance.
            #[test]
            fn matches_a_plain_map(steps in proptest::collection::vec(step(), 1..200)) {
                let mut t = PendingWrites::new();
                let mut m: StdMap<u8, PendingEntry> = StdMap::new();
                let mut seq = 1u64;
                let mut clock = 0u64;
                for s in steps {
                    match s {
                        Step::Write { k, new_batch } => {
                            if new_batch { seq += 1; }
                            clock += 1;
                            let stamp = st(clock, 0);
                            t.record_key(0, &[k], stamp, seq, None);
                            m.insert(k, PendingEntry { stamp, seq, ttl: None });
                        }
                        Step::Ack { back } => {
                            let upto = seq.saturating_sub(u64::from(back));
                            t.acknowledge(upto);
                            m.retain(|_, e| e.seq > upto);
                        }
                        Step::Ask { k } => {
                            prop_assert_eq!(t.key_stamp(0, &[k]), m.get(&k).map(|e| e.stamp));
                        }
                        Step::Maintain => t.maintain(2, 1),
                    }
                    prop_assert!(t.len() >= m.len());
                    prop_assert_eq!(t.is_empty(), m.is_empty());
                }
                let mut got: Vec<_> = t.entries_by_stamp().into_iter().map(|(_, k, e)| (k, e)).collect();
                got.sort_by_key(|(_, e)| e.stamp);
                let mut want: Vec<_> = m.iter().map(|(k, e)| (Some(vec![*k]), *e)).collect();
                want.sort_by_key(|(_, e)| e.stamp);
                prop_assert_eq!(got, want);
                prop_assert_eq!(t.len(), m.len(), "exact once indexed");
            }
        }
    }
}
