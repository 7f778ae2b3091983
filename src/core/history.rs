//! Which keys recent batches changed, in both streams, within a byte budget.
//!
//! Why: a node restarted from a snapshot knows how far its data goes in
//! both streams (its own batches and the peer's it had applied). If the
//! survivor remembers which keys every batch after those positions touched,
//! it can send current images of exactly those keys instead of its whole
//! dataset (DESIGN §10, "restart without a full resync"). The memory is
//! bounded like Redis's `repl-backlog-size`: the oldest batches are
//! forgotten first, and the *floor* of each window says from where on the
//! record is complete, which is what decides between a resume and a full
//! resync ([`History::changed_since`]).
//!
//! Two windows, one budget: the survivor's own batches (what the restarted
//! node's snapshot may lack) and the batches it applied from the peer (what
//! the restarted node wrote after its snapshot and lost). A flush is not a
//! set of keys: a window that holds one cannot describe the change by keys,
//! so a resume across it is refused.

use std::collections::{HashSet, VecDeque};

use crate::core::protocol::Entry;
use crate::core::table_key::TableKey;

/// The keys a batch's entries change, and whether one of them changes a
/// whole db (a flush): what the history records for the batch.
pub fn touched(entries: &[Entry]) -> (Vec<TableKey>, bool) {
    use crate::core::protocol::Op;
    let mut keys = Vec::with_capacity(entries.len());
    let mut whole_db = false;
    for e in entries {
        match &e.op {
            Op::Set { key, .. } | Op::Delete { key } | Op::Element { key, .. } => {
                keys.push(TableKey::new(e.db, key));
            }
            Op::FlushDb => whole_db = true,
            _ => {}
        }
    }
    (keys, whole_db)
}

/// Bytes counted per recorded key beyond its own bytes (the vector slot,
/// the hash-set probe later): keeps the budget honest for short keys.
const KEY_OVERHEAD: usize = 32;
/// Bytes counted per recorded batch.
const BATCH_OVERHEAD: usize = 48;

/// What one batch changed.
#[derive(Debug, Clone)]
enum Change {
    /// These keys were written or deleted.
    Keys(Vec<TableKey>),
    /// A whole db (or all of them) was flushed or swapped.
    WholeDb,
}

/// The batches of one stream after `floor`, oldest first.
#[derive(Debug, Default)]
struct Window {
    /// The stream these seqs belong to (0: none yet).
    stream_id: u64,
    /// Every batch with a seq above this is recorded (none below).
    floor: u64,
    batches: VecDeque<(u64, Change, usize)>,
    bytes: usize,
    /// Seqs this window's stream jumped over, as `(last recorded, next
    /// recorded)`: a resync batch moved past batches never recorded here
    /// (dropped from the peer's backlog, or superseded when it took this
    /// node's dataset). Forgotten with the batches around them.
    holes: Vec<(u64, u64)>,
}

impl Window {
    fn record(&mut self, stream_id: u64, seq: u64, change: Change) -> usize {
        if stream_id != self.stream_id {
            // Another stream (the peer restarted without its state, or this
            // node took a new one): nothing recorded so far describes it.
            *self = Window {
                stream_id,
                floor: seq.saturating_sub(1),
                ..Window::default()
            };
        }
        let last = self.batches.back().map_or(self.floor, |(s, _, _)| *s);
        if seq > last.saturating_add(1) {
            self.holes.push((last, seq));
        }
        let cost = cost(&change);
        self.batches.push_back((seq, change, cost));
        self.bytes += cost;
        cost
    }

    fn anchor(&mut self, stream_id: u64, floor: u64) {
        if stream_id != self.stream_id {
            *self = Window {
                stream_id,
                floor,
                ..Window::default()
            };
        }
    }

    /// Batch `seq` went by unrecorded (no budget): the window is complete
    /// only after it.
    fn pass(&mut self, stream_id: u64, seq: u64) {
        self.anchor(stream_id, seq);
        while !self.batches.is_empty() {
            self.evict_oldest();
        }
        self.floor = self.floor.max(seq);
        self.forget_holes();
    }

    fn forget_holes(&mut self) {
        let floor = self.floor;
        self.holes.retain(|&(_, next)| next > floor);
    }

    fn evict_oldest(&mut self) {
        if let Some((seq, _, cost)) = self.batches.pop_front() {
            self.floor = seq;
            self.bytes -= cost;
            self.forget_holes();
        }
    }

    fn oldest(&self) -> Option<u64> {
        self.batches.front().map(|(s, _, _)| *s)
    }

    /// Keys changed by batches after `after`, if the window knows them all.
    fn since(&self, stream_id: u64, after: u64, out: &mut HashSet<TableKey>) -> Result<(), Gap> {
        if stream_id != self.stream_id {
            return Err(Gap::OtherStream);
        }
        if after < self.floor {
            return Err(Gap::Forgotten {
                needed_after: after,
                floor: self.floor,
            });
        }
        for (seq, change, _) in &self.batches {
            if *seq <= after {
                continue;
            }
            match change {
                Change::Keys(keys) => out.extend(keys.iter().cloned()),
                Change::WholeDb => return Err(Gap::Flush { seq: *seq }),
            }
        }
        Ok(())
    }
}

fn cost(change: &Change) -> usize {
    BATCH_OVERHEAD
        + match change {
            Change::Keys(keys) => keys.iter().map(|k| k.packed().len() + KEY_OVERHEAD).sum(),
            Change::WholeDb => 0,
        }
}

/// Why the history cannot name the keys changed after a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Gap {
    /// The position refers to a stream this history does not hold.
    #[error("the position refers to another stream")]
    OtherStream,
    /// Batches after the position were forgotten (budget).
    #[error("batches after seq {needed_after} are no longer remembered (history starts after seq {floor}; raise history-size)")]
    Forgotten {
        /// The position asked about.
        needed_after: u64,
        /// The history is complete only after this seq.
        floor: u64,
    },
    /// A flush or swap after the position changed whole dbs.
    #[error("a flush or swap (batch {seq}) changed whole databases after that position")]
    Flush {
        /// The batch that carried it.
        seq: u64,
    },
}

/// Which of the two streams a batch belongs to.
#[derive(Debug, Clone, Copy)]
enum Side {
    Own,
    Applied,
}

/// The survivor's record of recent changes; see the module doc.
#[derive(Debug)]
pub struct History {
    own: Window,
    applied: Window,
    budget: usize,
}

impl History {
    /// An empty history that keeps at most `budget` bytes.
    pub fn new(budget: usize) -> History {
        History {
            own: Window::default(),
            applied: Window::default(),
            budget,
        }
    }

    /// Change the budget (CONFIG SET); shrinking forgets the oldest batches now.
    pub fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
        self.trim();
    }

    /// Is anything kept at all (`history-size` above 0)?
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// This node's stream `stream_id` is complete after `floor` from now on
    /// (its first batch, or where this process took it over), unless the
    /// window already records that stream.
    pub fn anchor_own(&mut self, stream_id: u64, floor: u64) {
        self.own.anchor(stream_id, floor);
    }

    /// This node applies the peer's stream `stream_id` from after `floor`
    /// on (a session starts there), unless the window already records it.
    pub fn anchor_applied(&mut self, stream_id: u64, floor: u64) {
        self.applied.anchor(stream_id, floor);
    }

    /// This node issued batch `seq` of `stream_id` without recording it
    /// (`history-size` 0, or a stream moved past seqs it did not issue):
    /// nothing before it can be named any more.
    pub fn pass_own(&mut self, stream_id: u64, seq: u64) {
        self.own.pass(stream_id, seq);
    }

    /// Record this node's batch `seq` of `stream_id` from its entries, or
    /// only move the floor when nothing is kept (`history-size` 0).
    pub fn own_batch(&mut self, stream_id: u64, seq: u64, entries: &[Entry]) {
        self.batch(Side::Own, stream_id, seq, entries);
    }

    /// Record the peer's batch `seq` of `stream_id`, applied here, as
    /// [`History::own_batch`] does for this node's.
    pub fn applied_batch(&mut self, stream_id: u64, seq: u64, entries: &[Entry]) {
        self.batch(Side::Applied, stream_id, seq, entries);
    }

    fn batch(&mut self, side: Side, stream_id: u64, seq: u64, entries: &[Entry]) {
        if self.enabled() {
            let (keys, whole_db) = touched(entries);
            self.record(side, stream_id, seq, keys, whole_db);
        } else {
            self.window(side).pass(stream_id, seq);
        }
    }

    fn window(&mut self, side: Side) -> &mut Window {
        match side {
            Side::Own => &mut self.own,
            Side::Applied => &mut self.applied,
        }
    }

    fn record(
        &mut self,
        side: Side,
        stream_id: u64,
        seq: u64,
        keys: Vec<TableKey>,
        whole_db: bool,
    ) {
        let change = if whole_db {
            Change::WholeDb
        } else {
            Change::Keys(keys)
        };
        self.window(side).record(stream_id, seq, change);
        self.trim();
    }

    /// Bytes held (reported in SYNC.STATUS).
    pub fn bytes(&self) -> usize {
        self.own.bytes + self.applied.bytes
    }

    /// This node issued batch `seq` of its stream `stream_id`, touching `keys`
    /// (`whole_db`: it carried a flush or swap).
    pub fn record_own(&mut self, stream_id: u64, seq: u64, keys: Vec<TableKey>, whole_db: bool) {
        self.record(Side::Own, stream_id, seq, keys, whole_db);
    }

    /// This node applied batch `seq` of the peer's stream `stream_id`.
    pub fn record_applied(
        &mut self,
        stream_id: u64,
        seq: u64,
        keys: Vec<TableKey>,
        whole_db: bool,
    ) {
        self.record(Side::Applied, stream_id, seq, keys, whole_db);
    }

    /// A hole in the applied window of `peer_stream` that starts at or
    /// before `upto` and that the peer's stream jumped over before it last
    /// restarted from a snapshot with its batches up to `upto`: some batch
    /// up to `upto` was never applied here. Why it matters: that snapshot
    /// may hold writes this node never had and the peer no longer has
    /// (superseded when it took this node's dataset), so a resume that
    /// trusts the snapshot would keep them. The jump of the restarted
    /// process itself (its first batch, a resync that re-sends the
    /// snapshot's un-acknowledged writes, lands at or past
    /// `outbox::restart_seq(upto, ..)`) is not such a hole.
    pub fn applied_hole(&self, peer_stream: u64, upto: u64) -> Option<(u64, u64)> {
        if self.applied.stream_id != peer_stream {
            return None;
        }
        let restarted_from = super::outbox::restart_seq(upto, 0, 0);
        self.applied
            .holes
            .iter()
            .copied()
            .find(|&(last, next)| last < upto && next < restarted_from)
    }

    /// Every key changed after `own_after` in this node's stream and after
    /// `applied_after` in the peer's stream `peer_stream`, or why the
    /// history cannot say.
    pub fn changed_since(
        &self,
        own_stream: u64,
        own_after: u64,
        peer_stream: u64,
        applied_after: u64,
    ) -> Result<HashSet<TableKey>, Gap> {
        let mut keys = HashSet::new();
        self.own.since(own_stream, own_after, &mut keys)?;
        self.applied.since(peer_stream, applied_after, &mut keys)?;
        Ok(keys)
    }

    /// Forget the oldest batches, the older window first, until within budget.
    fn trim(&mut self) {
        while self.bytes() > self.budget {
            let w = match (self.own.oldest(), self.applied.oldest()) {
                (None, None) => return,
                (Some(_), None) => &mut self.own,
                (None, Some(_)) => &mut self.applied,
                // Forget from the window that holds more: neither starves.
                _ if self.own.bytes >= self.applied.bytes => &mut self.own,
                _ => &mut self.applied,
            };
            w.evict_oldest();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn k(s: &str) -> TableKey {
        TableKey::new(0, s.as_bytes())
    }

    fn set(keys: &HashSet<TableKey>) -> Vec<String> {
        let mut v: Vec<String> = keys
            .iter()
            .map(|t| String::from_utf8_lossy(t.key()).into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn names_the_keys_after_both_positions() {
        let mut h = History::new(1 << 20);
        h.record_own(7, 1, vec![k("a")], false);
        h.record_own(7, 2, vec![k("b")], false);
        h.record_applied(9, 1, vec![k("x")], false);
        h.record_applied(9, 2, vec![k("y"), k("b")], false);
        let got = h.changed_since(7, 1, 9, 1).expect("covered");
        assert_eq!(set(&got), ["b", "y"]);
        let got = h.changed_since(7, 0, 9, 2).expect("covered");
        assert_eq!(set(&got), ["a", "b"]);
    }

    #[test]
    fn another_stream_is_not_covered() {
        let mut h = History::new(1 << 20);
        h.record_own(7, 1, vec![k("a")], false);
        h.record_applied(9, 1, vec![k("x")], false);
        assert_eq!(h.changed_since(8, 0, 9, 0), Err(Gap::OtherStream));
        assert_eq!(h.changed_since(7, 0, 10, 0), Err(Gap::OtherStream));
        // The peer's new stream replaces the old record; it starts where
        // the first batch of it was seen.
        h.record_applied(10, 5, vec![k("z")], false);
        assert!(h.changed_since(7, 0, 10, 4).is_ok());
        assert!(matches!(
            h.changed_since(7, 0, 10, 3),
            Err(Gap::Forgotten { floor: 4, .. })
        ));
    }

    #[test]
    fn an_anchored_window_covers_a_quiet_stream() {
        let mut h = History::new(1 << 20);
        // Nothing applied yet this process, but the session started at 40.
        h.anchor_own(7, 0);
        h.anchor_applied(9, 40);
        assert!(h.changed_since(7, 0, 9, 40).expect("covered").is_empty());
        assert!(matches!(
            h.changed_since(7, 0, 9, 39),
            Err(Gap::Forgotten { floor: 40, .. })
        ));
        // Anchoring the same stream again keeps what it recorded.
        h.record_applied(9, 41, vec![k("x")], false);
        h.anchor_applied(9, 41);
        assert_eq!(set(&h.changed_since(7, 0, 9, 40).expect("covered")), ["x"]);
    }

    #[test]
    fn a_flush_after_the_position_refuses_a_resume() {
        let mut h = History::new(1 << 20);
        h.record_own(7, 1, vec![k("a")], false);
        h.record_own(7, 2, vec![], true);
        h.record_own(7, 3, vec![k("b")], false);
        h.record_applied(9, 1, vec![], false);
        assert_eq!(h.changed_since(7, 1, 9, 0), Err(Gap::Flush { seq: 2 }));
        assert!(h.changed_since(7, 2, 9, 0).is_ok());
    }

    #[test]
    fn the_budget_forgets_the_oldest_and_says_so() {
        let mut h = History::new(10 * (BATCH_OVERHEAD + KEY_OVERHEAD + 2));
        for seq in 1..=100 {
            h.record_own(7, seq, vec![k(&format!("{:02}", seq % 100))], false);
        }
        h.record_applied(9, 1, vec![], false);
        assert!(h.bytes() <= 10 * (BATCH_OVERHEAD + KEY_OVERHEAD + 2));
        match h.changed_since(7, 50, 9, 0) {
            Err(Gap::Forgotten { floor, .. }) => assert!(floor > 50 && floor <= 91),
            other => panic!("{other:?}"),
        }
        assert!(h.changed_since(7, 95, 9, 0).is_ok());
        h.set_budget(0);
        assert_eq!(h.bytes(), 0);
    }

    #[test]
    fn batches_passed_unrecorded_are_a_gap() {
        let mut h = History::new(0);
        h.anchor_own(7, 0);
        h.anchor_applied(9, 0);
        assert!(h.changed_since(7, 0, 9, 0).is_ok(), "nothing happened yet");
        h.pass_own(7, 1);
        h.applied_batch(9, 1, &[]);
        assert!(matches!(
            h.changed_since(7, 0, 9, 1),
            Err(Gap::Forgotten { floor: 1, .. })
        ));
        assert!(matches!(
            h.changed_since(7, 1, 9, 0),
            Err(Gap::Forgotten { floor: 1, .. })
        ));
        assert!(h.changed_since(7, 1, 9, 1).is_ok());
    }

    proptest! {
        /// Whatever the budget, an answer is either complete (every key of
        /// every batch after both positions) or a gap: never a partial set.
        #[test]
        fn an_answer_is_complete_or_refused(
            own in prop::collection::vec(prop::collection::vec(0u8..20, 0..4), 0..40),
            applied in prop::collection::vec(prop::collection::vec(0u8..20, 0..4), 0..40),
            budget in 0usize..4000,
            own_after in 0u64..45,
            applied_after in 0u64..45,
        ) {
            let mut h = History::new(budget);
            let key = |b: &u8| k(&format!("k{b}"));
            // Interleave the two streams as a live node would.
            for i in 0..own.len().max(applied.len()) {
                if let Some(keys) = own.get(i) {
                    h.record_own(1, i as u64 + 1, keys.iter().map(key).collect(), false);
                }
                if let Some(keys) = applied.get(i) {
                    h.record_applied(2, i as u64 + 1, keys.iter().map(key).collect(), false);
                }
            }
            prop_assert!(h.bytes() <= budget);
            let expected: HashSet<TableKey> = own
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u64 + 1 > own_after)
                .chain(applied.iter().enumerate().filter(|(i, _)| *i as u64 + 1 > applied_after))
                .flat_map(|(_, keys)| keys.iter().map(key))
                .collect();
            if let Ok(got) = h.changed_since(1, own_after, 2, applied_after) {
                prop_assert_eq!(set(&got), set(&expected));
            }
        }
    }
}
