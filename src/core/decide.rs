//! What to do with an incoming batch, decided without Redis.
//!
//! Why pure: this is the conflict rule and the stream-order rule, the two
//! things convergence depends on. The glue executes the plan; the seeded
//! simulation (`tests/simulation.rs`) runs the very same functions.

use super::pending::{Decision, PendingWrites};
use super::protocol::{Batch, Entry, Op};

/// How a batch fits the receiver's position in the sender's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// The next one (or a resync batch past our position): apply it.
    Apply,
    /// Already applied (resent after a reconnect): skip it.
    Duplicate,
    /// Batches are missing before it: the stream is broken, resync.
    Gap {
        /// The seq we expected.
        expected: u64,
    },
}

/// Check `batch` against the highest seq applied from its stream.
pub fn check_seq(applied: u64, batch: &Batch) -> SeqCheck {
    if batch.seq <= applied {
        SeqCheck::Duplicate
    } else if batch.seq == applied + 1 || batch.resync {
        SeqCheck::Apply
    } else {
        SeqCheck::Gap {
            expected: applied + 1,
        }
    }
}

/// One step of applying a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'a> {
    /// Write this entry's image (or delete its key).
    Write(&'a Entry),
    /// Empty `db`, keeping the current values of `survivors` (keys whose
    /// pending local write is newer than the remote flush).
    Flush {
        /// The db.
        db: u32,
        /// Keys to keep.
        survivors: Vec<Vec<u8>>,
    },
    /// A newer local write wins: count it in `conflicts_lost`.
    Lost(&'a Entry),
    /// A remote flush already processed (re-sent by a resync): skip it.
    Duplicate,
    /// A full resync (or a restart resume) from the peer starts.
    FullSyncBegin,
    /// The peer's full resync has sent every key.
    FullSyncEnd,
    /// The peer's restart resume has sent every key.
    ResumeEnd,
    /// An element-level record: protocol 1 does not carry them (the glue
    /// ships whole-key images), so a peer sending one is refused.
    Unsupported(&'a Entry),
}

/// Plan every entry of a remote batch from `origin` against the local table
/// (which remembers the remote flushes it has seen).
pub fn plan_batch<'a>(
    table: &mut PendingWrites,
    batch: &'a Batch,
    origin: &str,
    local: &str,
) -> Vec<Action<'a>> {
    batch
        .entries
        .iter()
        .map(|e| match &e.op {
            Op::FullSyncBegin | Op::ResumeBegin => Action::FullSyncBegin,
            Op::FullSyncEnd => Action::FullSyncEnd,
            Op::ResumeEnd => Action::ResumeEnd,
            Op::Check { .. } => Action::Duplicate,
            Op::FlushDb => {
                if !table.first_sight_of_remote_flush(e.db, e.stamp) {
                    Action::Duplicate
                } else if table.flush_covers(e.db, e.stamp, origin, local) {
                    Action::Lost(e)
                } else {
                    Action::Flush {
                        db: e.db,
                        survivors: table.survivors_of_flush(e.db, e.stamp, origin, local),
                    }
                }
            }
            Op::Element { .. } => Action::Unsupported(e),
            Op::Set { key, .. } | Op::Delete { key } => {
                match table.decide_key(e.db, key, e.stamp, origin, local) {
                    Decision::Apply => Action::Write(e),
                    Decision::LocalWins => Action::Lost(e),
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::{Stamp, Value};

    fn batch(seq: u64, resync: bool) -> Batch {
        Batch {
            seq,
            resync,
            entries: vec![],
        }
    }

    #[test]
    fn seq_rules() {
        assert_eq!(check_seq(4, &batch(5, false)), SeqCheck::Apply);
        assert_eq!(check_seq(4, &batch(4, false)), SeqCheck::Duplicate);
        assert_eq!(
            check_seq(4, &batch(7, false)),
            SeqCheck::Gap { expected: 5 }
        );
        assert_eq!(check_seq(4, &batch(7, true)), SeqCheck::Apply);
        assert_eq!(check_seq(8, &batch(7, true)), SeqCheck::Duplicate);
    }

    #[test]
    fn plan_respects_table() {
        let mut t = PendingWrites::new();
        t.record_key(0, b"k", Stamp { hlc: 10, index: 0 }, 1, None);
        let set = |key: &str, hlc| Entry {
            db: 0,
            stamp: Stamp { hlc, index: 0 },
            op: Op::Set {
                key: key.as_bytes().to_vec(),
                value: Value::String(vec![]),
                expire_at_ms: None,
            },
        };
        let b = Batch {
            seq: 1,
            resync: false,
            entries: vec![
                set("k", 5),
                set("k", 20),
                set("other", 1),
                Entry {
                    db: 0,
                    stamp: Stamp { hlc: 8, index: 3 },
                    op: Op::FlushDb,
                },
            ],
        };
        let plan = plan_batch(&mut t, &b, "b", "a");
        // The same flush re-sent by a resync is not applied twice.
        let again = plan_batch(&mut t, &b, "b", "a");
        assert_eq!(again[3], Action::Duplicate);
        assert_eq!(plan[0], Action::Lost(&b.entries[0]));
        assert!(matches!(plan[1], Action::Write(_)));
        assert!(matches!(plan[2], Action::Write(_)));
        assert_eq!(
            plan[3],
            Action::Flush {
                db: 0,
                survivors: vec![b"k".to_vec()]
            }
        );
    }
}
