//! How a node restarted from a snapshot catches up: a resume that costs
//! what changed, or a full resync, and why.
//!
//! Why a pure decision: the rule must be the same in the node, in the
//! seeded simulation and in the tests, and every "no" must say what the
//! operator sees in `last_error`. The invariant it keeps (DESIGN §4): a
//! restarted node never brings back deleted keys or old values, so a resume
//! is allowed only when the survivor can name *every* key that changed
//! after the snapshot, in both directions; anything less is a full resync.

use std::collections::HashSet;

use crate::core::history::History;
use crate::core::table_key::TableKey;

/// Keys named by `(db, key)`: what a restarted node's AOF tail replayed.
pub type KeyList = Vec<(u32, Vec<u8>)>;

/// How far a snapshot's data goes, saved with it (RDB aux data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedPosition {
    /// The snapshot's node's outgoing stream id.
    pub stream_id: u64,
    /// The last of its own batches whose writes the data includes.
    pub own_seq: u64,
    /// The peer's stream it had applied (0: none).
    pub peer_stream_id: u64,
    /// The last batch of that stream the data includes.
    pub applied_seq: u64,
}

/// The survivor's side of the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Survivor {
    /// The survivor's own stream id.
    pub stream_id: u64,
    /// The last batch the survivor issued.
    pub issued_seq: u64,
    /// The restarted node's stream as the survivor knows it.
    pub peer_stream_id: u64,
    /// The last batch of it the survivor applied.
    pub applied_seq: u64,
}

/// What the survivor does for a restarted node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartPlan {
    /// Send current images (or tombstones) of exactly these keys,
    /// authoritative over the restarted node's snapshot.
    Resume(HashSet<TableKey>),
    /// Send everything; the text is the reason, for the log and `last_error`.
    Full(String),
}

/// Decide how the survivor catches a node up that restarted from `saved`.
pub fn plan(survivor: Survivor, saved: SavedPosition, history: &History) -> RestartPlan {
    if saved.peer_stream_id != survivor.stream_id {
        return RestartPlan::Full(
            "the restarted node's snapshot refers to another stream of this node (another pair, or this node restarted without its state)".into(),
        );
    }
    if saved.stream_id != survivor.peer_stream_id {
        return RestartPlan::Full(
            "the restarted node's snapshot is from a stream this node never applied (another pair's RDB?)".into(),
        );
    }
    if saved.applied_seq > survivor.issued_seq {
        return RestartPlan::Full(format!(
            "the restarted node's snapshot has batch {} of this node's stream, which has only {}",
            saved.applied_seq, survivor.issued_seq
        ));
    }
    if let Some((last, next)) = history.applied_hole(survivor.peer_stream_id, saved.own_seq) {
        return RestartPlan::Full(format!(
            "the restarted node's snapshot holds batches {}..={} of its stream that this node never applied (its stream moved on with a resync after them): its data may hold writes that were superseded",
            last + 1,
            (next - 1).min(saved.own_seq)
        ));
    }
    // The snapshot's own batches beyond what the survivor applied never
    // reached it: their keys are in the restarted node's data but nowhere
    // else. They are re-sent by the restarted node (its saved pending
    // writes, recorded stamps), so they need no image from here; what the
    // survivor applied after the snapshot's own position it must send back.
    let own_after = saved.applied_seq;
    let applied_after = saved.own_seq.min(survivor.applied_seq);
    match history.changed_since(
        survivor.stream_id,
        own_after,
        survivor.peer_stream_id,
        applied_after,
    ) {
        Ok(keys) => RestartPlan::Resume(keys),
        Err(gap) => RestartPlan::Full(format!("restart resume not possible: {gap}")),
    }
}

/// Both nodes restarted from snapshots: may they resume without an
/// operator? Only if neither snapshot lacks anything the other holds: each
/// applied every batch of the other that the other's data includes.
pub fn both_restarted(a: SavedPosition, b: SavedPosition) -> Result<(), String> {
    if a.peer_stream_id != b.stream_id || b.peer_stream_id != a.stream_id {
        return Err("the two snapshots are not of the same pair (their stream ids differ): run SYNC.PAIR SOURCE on the node whose data should win".into());
    }
    for (x, y, xn, yn) in [(a, b, "first", "second"), (b, a, "second", "first")] {
        if x.applied_seq < y.own_seq {
            return Err(format!(
                "the {xn} node's snapshot lacks batches {}..={} of the {yn} node: run SYNC.PAIR SOURCE on the node whose data should win",
                x.applied_seq + 1,
                y.own_seq
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> TableKey {
        TableKey::new(0, s.as_bytes())
    }

    /// A (stream 1) survives; B (stream 2) restarts from a snapshot that
    /// had A's batches up to 3 and its own up to 2.
    fn setup() -> (Survivor, SavedPosition, History) {
        let mut h = History::new(1 << 20);
        for seq in 1..=6 {
            h.record_own(1, seq, vec![k(&format!("a{seq}"))], false);
        }
        for seq in 1..=4 {
            h.record_applied(2, seq, vec![k(&format!("b{seq}"))], false);
        }
        let survivor = Survivor {
            stream_id: 1,
            issued_seq: 6,
            peer_stream_id: 2,
            applied_seq: 4,
        };
        let saved = SavedPosition {
            stream_id: 2,
            own_seq: 2,
            peer_stream_id: 1,
            applied_seq: 3,
        };
        (survivor, saved, h)
    }

    fn names(plan: RestartPlan) -> Vec<String> {
        match plan {
            RestartPlan::Resume(keys) => {
                let mut v: Vec<String> = keys
                    .iter()
                    .map(|t| String::from_utf8_lossy(t.key()).into_owned())
                    .collect();
                v.sort();
                v
            }
            RestartPlan::Full(why) => panic!("full resync: {why}"),
        }
    }

    #[test]
    fn resume_names_what_changed_after_the_snapshot_both_ways() {
        let (s, saved, h) = setup();
        // A's batches 4..6, and B's batches 3..4 that A applied after B's snapshot.
        assert_eq!(names(plan(s, saved, &h)), ["a4", "a5", "a6", "b3", "b4"]);
    }

    #[test]
    fn an_rdb_of_another_pair_is_never_resumed() {
        let (s, saved, h) = setup();
        let foreign = SavedPosition {
            stream_id: 99,
            ..saved
        };
        assert!(
            matches!(plan(s, foreign, &h), RestartPlan::Full(w) if w.contains("never applied"))
        );
        let other = SavedPosition {
            peer_stream_id: 98,
            ..saved
        };
        assert!(matches!(plan(s, other, &h), RestartPlan::Full(_)));
        let ahead = SavedPosition {
            applied_seq: 7,
            ..saved
        };
        assert!(matches!(plan(s, ahead, &h), RestartPlan::Full(_)));
    }

    #[test]
    fn an_exceeded_history_means_a_full_resync_with_the_reason() {
        let (s, saved, _) = setup();
        let mut small = History::new(300);
        for seq in 1..=6 {
            small.record_own(1, seq, vec![k(&format!("a{seq}"))], false);
        }
        small.record_applied(2, 4, vec![k("b4")], false);
        match plan(s, saved, &small) {
            RestartPlan::Full(why) => assert!(why.contains("history-size"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    /// B's stream moved past batches 3..5 with a resync batch (6) that A
    /// applied: a snapshot of B holding any of them may carry writes A never
    /// had and B no longer has (found by the restart simulation: they came
    /// back after B took A's dataset).
    #[test]
    fn a_snapshot_holding_batches_the_survivor_skipped_is_resynced_in_full() {
        let mut h = History::new(1 << 20);
        h.anchor_applied(2, 0);
        h.anchor_own(1, 0);
        for seq in [1, 2, 6] {
            h.record_applied(2, seq, vec![k(&format!("b{seq}"))], false);
        }
        let survivor = Survivor {
            stream_id: 1,
            issued_seq: 0,
            peer_stream_id: 2,
            applied_seq: 6,
        };
        let saved = |own_seq| SavedPosition {
            stream_id: 2,
            own_seq,
            peer_stream_id: 1,
            applied_seq: 0,
        };
        match plan(survivor, saved(3), &h) {
            RestartPlan::Full(why) => assert!(why.contains("batches 3..=3"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Its batches up to 2 were all applied here: resumable.
        assert_eq!(names(plan(survivor, saved(2), &h)), ["b6"]);
        // Once the window forgot the batches around the hole, so did the
        // hole (such a snapshot is then too old anyway).
        let mut small = History::new(1 << 20);
        small.anchor_applied(2, 0);
        small.record_applied(2, 1, vec![k("b1")], false);
        small.record_applied(2, 6, vec![k("b6")], false);
        assert!(small.applied_hole(2, 3).is_some());
        small.set_budget(0);
        assert!(small.applied_hole(2, 3).is_none());
        // The restarted process's own first batch jumps too: not a hole of
        // the snapshot's.
        let mut restarted = History::new(1 << 20);
        restarted.anchor_applied(2, 0);
        let first = crate::core::outbox::restart_seq(3, 1_000, 2_000);
        restarted.record_applied(2, first, vec![k("b3")], false);
        assert!(restarted.applied_hole(2, 3).is_none());
    }

    #[test]
    fn both_restarted_resume_only_when_nothing_is_missing() {
        let a = SavedPosition {
            stream_id: 1,
            own_seq: 5,
            peer_stream_id: 2,
            applied_seq: 3,
        };
        let b = SavedPosition {
            stream_id: 2,
            own_seq: 3,
            peer_stream_id: 1,
            applied_seq: 5,
        };
        assert_eq!(both_restarted(a, b), Ok(()));
        let b_behind = SavedPosition {
            applied_seq: 4,
            ..b
        };
        assert!(both_restarted(a, b_behind)
            .unwrap_err()
            .contains("batches 5..=5"));
        let strangers = SavedPosition {
            peer_stream_id: 7,
            ..b
        };
        assert!(both_restarted(a, strangers).is_err());
    }
}
