//! The pairing state a snapshot carries: how far its data goes in both
//! streams and the writes the peer may not have had.
//!
//! Why pure and here: the RDB holds it (written by the forked child, so it
//! describes that snapshot exactly); a restarted node rebuilds its table of
//! un-acknowledged writes from it and tells the survivor its position
//! (`core::restart`). Without the table, a write the restarted node's data
//! holds but the survivor never got would be lost or, worse, survive on one
//! side only; without the positions, only a full resync is safe.

use serde::{Deserialize, Serialize};

use super::codec::{self, CodecError};
use super::pending::PendingWrites;
use super::pending_elements::{ImageTtl, LocalWrite};
use super::protocol::{ElementChange, Stamp};
use super::restart::SavedPosition;
use super::table_key::TableKey;

/// Bumped when the saved shape changes: an older or newer module's state
/// is ignored (a full resync), never misread.
pub const SAVED_STATE_VERSION: u32 = 2;

/// One un-acknowledged write as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SavedWrite {
    /// A whole-key image or delete of `key`.
    Key {
        /// The db.
        db: u32,
        /// The key.
        key: Vec<u8>,
        /// Its stamp.
        stamp: Stamp,
        /// The batch that carried it.
        seq: u64,
        /// The TTL it gave the key.
        ttl: Option<ImageTtl>,
    },
    /// A flush of `db`.
    Flush {
        /// The db.
        db: u32,
        /// Its stamp.
        stamp: Stamp,
        /// The batch that carried it.
        seq: u64,
    },
    /// One element-level change, in execution order among its key's.
    Element {
        /// The db.
        db: u32,
        /// The key.
        key: Vec<u8>,
        /// Its stamp.
        stamp: Stamp,
        /// The batch that first carried it.
        seq: u64,
        /// The peer's seq applied when it was made.
        seen: u64,
        /// The change.
        change: ElementChange,
    },
}

impl SavedWrite {
    /// Its order stamp.
    pub fn stamp(&self) -> Stamp {
        match self {
            SavedWrite::Key { stamp, .. }
            | SavedWrite::Flush { stamp, .. }
            | SavedWrite::Element { stamp, .. } => *stamp,
        }
    }

    fn seq(&self) -> u64 {
        match self {
            SavedWrite::Key { seq, .. }
            | SavedWrite::Flush { seq, .. }
            | SavedWrite::Element { seq, .. } => *seq,
        }
    }
}

/// Everything a snapshot carries about the pairing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// [`SAVED_STATE_VERSION`] of the writer.
    pub version: u32,
    /// The node id of the writer: a snapshot copied to another node is not
    /// that node's state.
    pub node_id: String,
    /// How far the data goes in both streams.
    pub position: SavedPosition,
    /// The table of un-acknowledged writes at the snapshot.
    pub writes: Vec<SavedWrite>,
    /// Keys written but not yet shipped at the snapshot: they are shipped
    /// again, as new writes, once the node is back.
    pub unflushed: Vec<(u32, Vec<u8>)>,
    /// The node's clock (HLC) at the snapshot: the data holds writes of
    /// both sides stamped up to it, so the restarted node's writes must be
    /// stamped after it even if its wall clock is behind (a flush stamped
    /// before a peer write the data holds would lose to it on the peer).
    pub clock: u64,
    /// Wall time of the snapshot: the restarted stream goes on past every
    /// seq issued since ([`crate::core::outbox::restart_seq`]).
    pub saved_at_ms: u64,
}

/// Why saved bytes were not taken.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not decodable.
    #[error("the saved pairing state does not decode: {0}")]
    Malformed(#[from] CodecError),
    /// Another module version wrote it.
    #[error("the saved pairing state has version {0}, this module reads {SAVED_STATE_VERSION}")]
    Version(u32),
}

impl SavedState {
    /// Encode for the RDB.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode_value(self)
    }

    /// Decode what [`SavedState::encode`] wrote. The version comes first,
    /// so another version's state is named as such, whatever its shape.
    pub fn decode(bytes: &[u8]) -> Result<SavedState, LoadError> {
        let (version, _): (u32, usize) = bincode::serde::decode_from_slice(bytes, codec::config())
            .map_err(|e| LoadError::Malformed(CodecError::Malformed(e.to_string())))?;
        if version != SAVED_STATE_VERSION {
            return Err(LoadError::Version(version));
        }
        Ok(codec::decode_value(bytes)?)
    }
}

/// Every un-acknowledged write of `table`, as saved. Element changes keep
/// their execution order per key; the import re-records everything in seq
/// order, which is how the table was built.
pub fn export(table: &mut PendingWrites) -> Vec<SavedWrite> {
    let mut out: Vec<SavedWrite> = Vec::new();
    for (db, key, e) in table.entries_by_stamp() {
        out.push(match key {
            Some(key) => SavedWrite::Key {
                db,
                key,
                stamp: e.stamp,
                seq: e.seq,
                ttl: e.ttl,
            },
            None => SavedWrite::Flush {
                db,
                stamp: e.stamp,
                seq: e.seq,
            },
        });
    }
    for (tk, list) in table.element_changes() {
        for p in list {
            if let LocalWrite::Change(change) = p.write {
                out.push(SavedWrite::Element {
                    db: tk.db(),
                    key: tk.key().to_vec(),
                    stamp: p.stamp,
                    seq: p.seq,
                    seen: p.seen,
                    change,
                });
            }
        }
    }
    out
}

/// Rebuild a table from saved writes. Writes the peer has applied (seq at
/// or below `acked`) are left out: they are acknowledged.
pub fn import(mut writes: Vec<SavedWrite>, acked: u64) -> PendingWrites {
    // Stable: a key's element changes stay in execution order within a seq.
    writes.sort_by_key(SavedWrite::seq);
    let mut table = PendingWrites::new();
    for w in writes {
        if w.seq() <= acked {
            continue;
        }
        match w {
            SavedWrite::Key {
                db,
                key,
                stamp,
                seq,
                ttl,
            } => table.record_key(db, &key, stamp, seq, ttl),
            SavedWrite::Flush { db, stamp, seq } => table.record_flush(db, stamp, seq),
            SavedWrite::Element {
                db,
                key,
                stamp,
                seq,
                seen,
                change,
            } => table.record_element(db, &key, stamp, seq, seen, change),
        }
    }
    table
}

/// Move the entries of batches after `after` to batch `to` (the batches
/// themselves are gone: see [`crate::core::outbox::Outbox::skip_past`]).
///
/// Why: a restored node that issued seqs its peer had already applied from
/// an earlier start must re-send those writes under a seq the peer has not
/// seen. Its dirty-key resync re-sends the table, element changes under the
/// seq recorded for them, which the peer skips as applied when it is not
/// above its position; and the peer's acknowledgement would prune them.
pub fn renumber(table: &mut PendingWrites, after: u64, to: u64) {
    let mut writes = export(table);
    for w in &mut writes {
        let (SavedWrite::Key { seq, .. }
        | SavedWrite::Flush { seq, .. }
        | SavedWrite::Element { seq, .. }) = w;
        if *seq > after {
            *seq = to;
        }
    }
    *table = import(writes, 0);
}

/// The keys a saved table names (for the log and tests).
pub fn keys(writes: &[SavedWrite]) -> Vec<TableKey> {
    let mut out: Vec<TableKey> = writes
        .iter()
        .filter_map(|w| match w {
            SavedWrite::Key { db, key, .. } | SavedWrite::Element { db, key, .. } => {
                Some(TableKey::new(*db, key))
            }
            SavedWrite::Flush { .. } => None,
        })
        .collect();
    out.sort_unstable_by(|a, b| (a.db(), a.key()).cmp(&(b.db(), b.key())));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(hlc: u64) -> Stamp {
        Stamp { hlc, index: 0 }
    }

    fn incr(delta: i64) -> ElementChange {
        ElementChange::Incr {
            shape: crate::core::protocol::Shape::Str,
            elem: vec![],
            delta,
        }
    }

    fn sample() -> PendingWrites {
        let mut t = PendingWrites::new();
        t.record_key(0, b"a", st(10), 3, None);
        t.record_element(0, b"c", st(11), 4, 2, incr(5));
        t.record_element(0, b"c", st(12), 4, 2, incr(-2));
        t.record_flush(1, st(13), 5);
        t.record_key(2, b"b", st(14), 6, None);
        t.record_element(0, b"c", st(15), 6, 3, incr(7));
        t
    }

    #[test]
    fn a_table_survives_the_round_trip_through_bytes() {
        let mut t = sample();
        let state = SavedState {
            version: SAVED_STATE_VERSION,
            node_id: "a".into(),
            position: SavedPosition {
                stream_id: 1,
                own_seq: 6,
                peer_stream_id: 2,
                applied_seq: 9,
            },
            writes: export(&mut t),
            unflushed: vec![(0, b"x".to_vec())],
            clock: 77,
            saved_at_ms: 1_800_000_000_000,
        };
        let back = SavedState::decode(&state.encode().expect("encodes")).expect("decodes");
        assert_eq!(back, state);
        let mut rebuilt = import(back.writes, 0);
        assert_eq!(rebuilt.len(), t.len());
        assert_eq!(rebuilt.entries_by_stamp(), t.entries_by_stamp());
        assert_eq!(rebuilt.changes_of(0, b"c"), t.changes_of(0, b"c"));
    }

    #[test]
    fn renumbered_writes_outlive_the_peer_position_they_collided_with() {
        let mut t = sample();
        // Batches after 4 were issued under seqs the peer applied (up to
        // 10) from an earlier start: they move past it, in their order.
        renumber(&mut t, 4, 11);
        t.acknowledge(10);
        let names: Vec<_> = t
            .entries_by_stamp()
            .into_iter()
            .map(|(db, k, e)| (db, k, e.seq))
            .collect();
        assert_eq!(names, vec![(1, None, 11), (2, Some(b"b".to_vec()), 11)]);
        let left = t.changes_of(0, b"c");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].seq, 11);
        assert_eq!(left[0].write, LocalWrite::Change(incr(7)));
    }

    #[test]
    fn what_the_peer_applied_is_not_pending_after_the_restart() {
        let mut t = sample();
        let mut rebuilt = import(export(&mut t), 4);
        let names: Vec<_> = rebuilt
            .entries_by_stamp()
            .into_iter()
            .map(|(db, k, _)| (db, k))
            .collect();
        assert_eq!(names, vec![(1, None), (2, Some(b"b".to_vec()))]);
        let left = rebuilt.changes_of(0, b"c");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].write, LocalWrite::Change(incr(7)));
    }

    #[test]
    fn foreign_or_damaged_bytes_are_refused_not_misread() {
        let state = SavedState {
            version: SAVED_STATE_VERSION + 1,
            node_id: "a".into(),
            position: SavedPosition {
                stream_id: 1,
                own_seq: 0,
                peer_stream_id: 0,
                applied_seq: 0,
            },
            writes: vec![],
            unflushed: vec![],
            clock: 0,
            saved_at_ms: 0,
        };
        let bytes = state.encode().expect("encodes");
        assert!(matches!(
            SavedState::decode(&bytes),
            Err(LoadError::Version(_))
        ));
        assert!(SavedState::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(SavedState::decode(b"garbage").is_err());
        // An older module's state, shorter than today's, is named by its
        // version rather than misread or called damaged.
        let older = codec::encode_value(&(1u32, "a".to_string())).expect("encodes");
        assert!(matches!(
            SavedState::decode(&older),
            Err(LoadError::Version(1))
        ));
    }
}
