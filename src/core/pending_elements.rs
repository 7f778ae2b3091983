//! The element entries of the un-acknowledged writes table.
//!
//! Why every entry and not the latest per element: the merge rule
//! (DESIGN §11) needs, per key, the exact sequence of what this node shipped
//! and the peer has not acknowledged: the last overwrite of an element and
//! every increment after it, each with its own stamp (one sum per element
//! diverges). Why the same log in front of an index as
//! [`crate::core::pending::PendingWrites`]: recording is the hot path and
//! most batches are acknowledged before any remote record asks about their
//! key, so a batch's entries are appended to a FIFO log and an
//! acknowledgement drops whole batches from its front; only a question
//! moves batches, oldest first, into the per-key index. Once everything is
//! acknowledged, both are empty: no per-key or per-element metadata stays.

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use super::protocol::{ElementChange, Op, Shape, Stamp, Value};
use super::table_key::TableKey;

/// A pending local write on one key, as the merge rule reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingChange {
    /// Its order stamp.
    pub stamp: Stamp,
    /// The batch that first carried it.
    pub seq: u64,
    /// The peer's seq this node had applied when it made the write (what
    /// a re-sent change carries as `seen`).
    pub seen: u64,
    /// What it did.
    pub write: LocalWrite,
}

/// What a pending local write did to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalWrite {
    /// An element-level change, exactly as shipped.
    Change(ElementChange),
    /// A whole-key image or a flush of the key's db (no content needed:
    /// the rule only asks when it was, and until when the key it left
    /// lives).
    Image {
        /// The TTL the image gave the key (`None` for a flush or a key
        /// without one).
        ttl: Option<ImageTtl>,
    },
}

/// The TTL a whole-key image gave its key, and the key's element family.
///
/// Why kept until acknowledged: a concurrent element change the peer made
/// before that moment went, by stamps, with the key the image made when it
/// expired; unless it gave the key another type, which replaced it (see
/// [`crate::core::merge::rule::merge_record`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageTtl {
    /// When the key expires (Unix ms).
    pub at_ms: i64,
    /// Its element family (`None`: a type element changes do not fit, a
    /// list or a stream).
    pub family: Option<Shape>,
}

impl ImageTtl {
    /// The TTL `op` gives its key, if it is an image with one.
    pub fn of(op: &Op) -> Option<ImageTtl> {
        let Op::Set {
            value,
            expire_at_ms: Some(at_ms),
            ..
        } = op
        else {
            return None;
        };
        let family = match value {
            Value::String(_) => Some(Shape::Str),
            Value::Hash(_) | Value::HashTtl(_) => Some(Shape::Hash),
            Value::Set(_) => Some(Shape::Set),
            Value::ZSet(_) => Some(Shape::ZSet),
            _ => None,
        };
        Some(ImageTtl {
            at_ms: *at_ms,
            family,
        })
    }
}

/// The bit of a family in [`ElementLog::shapes_of`].
pub fn shape_bit(shape: Shape) -> u8 {
    match shape {
        Shape::Str => 1,
        Shape::Hash => 2,
        Shape::Set => 4,
        Shape::ZSet => 8,
    }
}

/// The bit of list commands in [`ElementLog::shapes_of`]: a key with one
/// pending is never on an element fast path (see
/// [`crate::core::merge::rule::list_verdict`]).
pub const LIST_BIT: u8 = 16;

/// The tally slot of list commands.
const LIST_INDEX: usize = 4;

fn shape_index(shape: Shape) -> usize {
    match shape {
        Shape::Str => 0,
        Shape::Hash => 1,
        Shape::Set => 2,
        Shape::ZSet => 3,
    }
}

/// Count a change of `key` in or out of its family's tally.
fn count(
    families: &mut HashMap<TableKey, [u32; 5]>,
    key: &TableKey,
    change: &ElementChange,
    add: bool,
) {
    let i = match change.shape() {
        Some(shape) => shape_index(shape),
        None if change.is_list() => LIST_INDEX,
        None => return,
    };
    if add {
        families.entry(key.clone()).or_default()[i] += 1;
    } else if let Some(c) = families.get_mut(key) {
        c[i] = c[i].saturating_sub(1);
    }
}

/// One element entry as stored: no key, the log or index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    stamp: Stamp,
    seq: u64,
    seen: u64,
    change: ElementChange,
}

/// One batch's element entries, not yet in the index.
#[derive(Debug)]
struct LoggedBatch {
    seq: u64,
    entries: Vec<(TableKey, Stamp, u64, ElementChange)>,
}

/// Un-acknowledged element changes per key, in execution order.
#[derive(Debug, Default)]
pub struct ElementLog {
    index: HashMap<TableKey, Vec<Stored>>,
    /// Per indexed key, how many of its changes belong to each family
    /// (`shape_index`): the merge asks this for every remote change, and a
    /// hot key can hold thousands.
    families: HashMap<TableKey, [u32; 5]>,
    indexed: usize,
    /// Keys of each batch moved into the index, oldest first: an
    /// acknowledgement visits only the keys of the batches it covers, so its
    /// cost is what it acknowledges, not everything still pending.
    indexed_batches: VecDeque<(u64, Vec<TableKey>)>,
    log: VecDeque<LoggedBatch>,
    logged: usize,
}

impl ElementLog {
    /// Number of entries (every shipped change counts).
    pub fn len(&self) -> usize {
        self.indexed + self.logged
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Record a shipped change of `key` in batch `seq` (batches recorded in
    /// increasing `seq`, changes of a batch in execution order).
    pub fn record(
        &mut self,
        key: TableKey,
        stamp: Stamp,
        seq: u64,
        seen: u64,
        change: ElementChange,
    ) {
        match self.log.back_mut() {
            Some(b) if b.seq == seq => b.entries.push((key, stamp, seen, change)),
            Some(b) if b.seq > seq => {
                // Out of order (a caller's mistake): index so the order of
                // what is already there is kept.
                self.index_all();
                let pos = self.indexed_batches.partition_point(|(s, _)| *s <= seq);
                self.indexed_batches.insert(pos, (seq, vec![key.clone()]));
                count(&mut self.families, &key, &change, true);
                self.index.entry(key).or_default().push(Stored {
                    stamp,
                    seq,
                    seen,
                    change,
                });
                self.indexed += 1;
                return;
            }
            _ => self.log.push_back(LoggedBatch {
                seq,
                entries: vec![(key, stamp, seen, change)],
            }),
        }
        self.logged += 1;
    }

    /// Move every logged batch into the index, oldest first.
    pub fn index_all(&mut self) {
        while let Some(batch) = self.log.pop_front() {
            self.logged -= batch.entries.len();
            self.indexed += batch.entries.len();
            let mut keys: Vec<TableKey> = Vec::new();
            for (key, stamp, seen, change) in batch.entries {
                if keys.last() != Some(&key) {
                    keys.push(key.clone());
                }
                count(&mut self.families, &key, &change, true);
                self.index.entry(key).or_default().push(Stored {
                    stamp,
                    seq: batch.seq,
                    seen,
                    change,
                });
            }
            self.indexed_batches.push_back((batch.seq, keys));
        }
    }

    /// The element families of `key`'s pending changes, as a bit mask
    /// (`1 << shape`), read without copying them.
    pub fn shapes_of(&mut self, key: &TableKey) -> u8 {
        self.index_all();
        self.families.get(key).map_or(0, |counts| {
            [Shape::Str, Shape::Hash, Shape::Set, Shape::ZSet]
                .into_iter()
                .filter(|s| counts[shape_index(*s)] > 0)
                .fold(0, |m, s| m | shape_bit(s))
                | if counts[LIST_INDEX] > 0 { LIST_BIT } else { 0 }
        })
    }

    /// Does `key` have any pending change?
    pub fn has_key(&mut self, key: &TableKey) -> bool {
        self.index_all();
        self.index.contains_key(key)
    }

    /// The pending changes of `key`, in execution order.
    pub fn of_key(&mut self, key: &TableKey) -> Vec<PendingChange> {
        self.index_all();
        self.index.get(key).map_or_else(Vec::new, |v| {
            v.iter()
                .map(|s| PendingChange {
                    stamp: s.stamp,
                    seq: s.seq,
                    seen: s.seen,
                    write: LocalWrite::Change(s.change.clone()),
                })
                .collect()
        })
    }

    /// Drop the changes of `key` for which `cancelled(stamp)` holds (a
    /// remote image stamped after them cancelled them).
    pub fn prune(&mut self, key: &TableKey, cancelled: impl Fn(Stamp) -> bool) {
        self.index_all();
        if let Some(v) = self.index.get_mut(key) {
            let before = v.len();
            let families = &mut self.families;
            v.retain(|s| {
                let drop = cancelled(s.stamp);
                if drop {
                    count(families, key, &s.change, false);
                }
                !drop
            });
            self.indexed -= before - v.len();
            if v.is_empty() {
                self.index.remove(key);
                self.families.remove(key);
            }
        }
    }

    /// Forget the changes of `key` (a resync replaced them by an image).
    pub fn forget_key(&mut self, key: &TableKey) {
        self.prune(key, |_| true);
    }

    /// The peer acknowledged every batch up to `seq`.
    pub fn acknowledge(&mut self, seq: u64) {
        while self.log.front().is_some_and(|b| b.seq <= seq) {
            if let Some(b) = self.log.pop_front() {
                self.logged -= b.entries.len();
            }
        }
        while self.indexed_batches.front().is_some_and(|(s, _)| *s <= seq) {
            let Some((_, keys)) = self.indexed_batches.pop_front() else {
                break;
            };
            for key in keys {
                let Some(v) = self.index.get_mut(&key) else {
                    continue;
                };
                // Each key's changes are in seq order (prune only removes).
                let n = v.iter().take_while(|s| s.seq <= seq).count();
                for s in v.drain(..n) {
                    count(&mut self.families, &key, &s.change, false);
                }
                self.indexed -= n;
                if v.is_empty() {
                    self.index.remove(&key);
                    self.families.remove(&key);
                }
            }
        }
    }

    /// Keys with pending changes, and each key's changes in execution order
    /// (what a dirty-key resync re-sends).
    pub fn all(&mut self) -> Vec<(TableKey, Vec<PendingChange>)> {
        self.index_all();
        let keys: Vec<TableKey> = self.index.keys().cloned().collect();
        keys.into_iter()
            .map(|k| {
                let v = self.of_key(&k);
                (k, v)
            })
            .collect()
    }

    /// The smallest stamp still pending.
    pub fn oldest_stamp(&self) -> Option<Stamp> {
        let logged = self
            .log
            .iter()
            .flat_map(|b| b.entries.iter().map(|(_, s, _, _)| *s));
        self.index
            .values()
            .flatten()
            .map(|s| s.stamp)
            .chain(logged)
            .min()
    }

    /// Forget everything.
    pub fn clear(&mut self) {
        self.index.clear();
        self.families.clear();
        self.indexed_batches.clear();
        self.log.clear();
        self.indexed = 0;
        self.logged = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::Shape;

    fn st(hlc: u64) -> Stamp {
        Stamp { hlc, index: 0 }
    }

    fn incr(d: i64) -> ElementChange {
        ElementChange::Incr {
            shape: Shape::Hash,
            elem: b"f".to_vec(),
            delta: d,
        }
    }

    #[test]
    fn keeps_every_change_in_order_until_acknowledged() {
        let mut l = ElementLog::default();
        let k = TableKey::new(0, b"h");
        l.record(k.clone(), st(1), 1, 0, incr(1));
        l.record(k.clone(), st(2), 1, 0, incr(2));
        l.record(k.clone(), st(3), 2, 0, incr(3));
        let got: Vec<i64> = l
            .of_key(&k)
            .iter()
            .map(|p| match &p.write {
                LocalWrite::Change(ElementChange::Incr { delta, .. }) => *delta,
                _ => 0,
            })
            .collect();
        assert_eq!(got, [1, 2, 3]);
        l.record(k.clone(), st(4), 3, 0, incr(4));
        l.acknowledge(2);
        assert_eq!(l.len(), 1);
        assert_eq!(l.of_key(&k)[0].seq, 3);
        l.acknowledge(3);
        assert!(l.is_empty());
        assert!(
            l.index.is_empty() && l.log.is_empty() && l.families.is_empty(),
            "no per-key metadata once acknowledged"
        );
    }

    #[test]
    fn prune_drops_only_cancelled_entries() {
        let mut l = ElementLog::default();
        let k = TableKey::new(0, b"h");
        for i in 1..=4 {
            l.record(k.clone(), st(i), i, 0, incr(i as i64));
        }
        assert_eq!(l.shapes_of(&k), shape_bit(Shape::Hash));
        l.prune(&k, |s| s.hlc < 3);
        assert_eq!(l.len(), 2);
        assert_eq!(l.shapes_of(&k), shape_bit(Shape::Hash));
        assert_eq!(l.oldest_stamp(), Some(st(3)));
        l.forget_key(&k);
        assert!(l.is_empty());
        assert_eq!(l.shapes_of(&k), 0);
        assert!(l.families.is_empty());
    }
}
