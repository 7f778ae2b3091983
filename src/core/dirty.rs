//! What changed since the last flush, in order.
//!
//! Why: the keyspace handler must stay cheap and re-entrant, so it only
//! appends `(db, key)`; flushes of whole dbs arrive through server events
//! and are appended in the same sequence. At flush time the log is reduced
//! to the list of things to image: a key is imaged at its *last* position
//! (its current value is the value after its last change), and a key whose
//! last change came before a flush of its db is dropped (the flush covers it).

use rustc_hash::FxHashMap as HashMap;
use rustc_hash::FxHashSet as HashSet;

use super::protocol::ElementChange;

/// What a captured `SET` did to the key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No expiry option: the key has none now.
    Cleared,
    /// EX/PX/EXAT/PXAT/KEEPTTL: read it at flush time.
    Read,
}

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dirty {
    /// A key changed in a db: its image is read at flush time.
    Key(u32, Vec<u8>),
    /// A plain `SET` whose value the command filter saw: the image needs no
    /// read of the value (see `glue::capture`).
    Value {
        /// Its db.
        db: u32,
        /// The key.
        key: Vec<u8>,
        /// The string it now holds.
        value: Vec<u8>,
        /// What became of its expiry.
        expiry: Expiry,
    },
    /// Element changes a write hint described and its event confirmed
    /// (see `core::write_hint`): shipped as they are, no read needed.
    Elements {
        /// Its db.
        db: u32,
        /// The key.
        key: Vec<u8>,
        /// The changes, in execution order.
        changes: Vec<ElementChange>,
    },
    /// A db was emptied.
    Flush(u32),
}

impl Dirty {
    /// The `(db, key)` a key change is about.
    pub fn key_of(&self) -> Option<(u32, &[u8])> {
        match self {
            Dirty::Key(db, k)
            | Dirty::Value { db, key: k, .. }
            | Dirty::Elements { db, key: k, .. } => Some((*db, k.as_slice())),
            Dirty::Flush(_) => None,
        }
    }
}

/// The change log between two flushes.
#[derive(Debug, Default)]
pub struct DirtyLog {
    items: Vec<Dirty>,
    /// Start of the latest group of flush markers (see [`DirtyLog::cancel_last_flush`]).
    last_flush_group: Option<usize>,
}

impl DirtyLog {
    /// An empty log (const: it lives in a static).
    pub const fn new() -> Self {
        Self {
            items: Vec::new(),
            last_flush_group: None,
        }
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of recorded changes.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The keys noted, or `None` if a flush is among the changes (a
    /// snapshot taken now cannot describe it by keys).
    pub fn keys(&self) -> Option<Vec<(u32, Vec<u8>)>> {
        let mut out = Vec::with_capacity(self.items.len());
        for item in &self.items {
            let (db, key) = item.key_of()?;
            out.push((db, key.to_vec()));
        }
        out.sort_unstable();
        out.dedup();
        Some(out)
    }

    /// Record a key change.
    pub fn key(&mut self, db: u32, key: &[u8]) {
        self.items.push(Dirty::Key(db, key.to_vec()));
    }

    /// Record a `SET` whose value is known.
    pub fn value(&mut self, db: u32, key: Vec<u8>, value: Vec<u8>, expiry: Expiry) {
        self.items.push(Dirty::Value {
            db,
            key,
            value,
            expiry,
        });
    }

    /// Record element changes of `key` confirmed by their command's event
    /// (consecutive changes of one key share one item).
    pub fn elements(&mut self, db: u32, key: &[u8], changes: Vec<ElementChange>) {
        if let Some(Dirty::Elements {
            db: d,
            key: k,
            changes: c,
        }) = self.items.last_mut()
        {
            if *d == db && k.as_slice() == key {
                c.extend(changes);
                return;
            }
        }
        self.items.push(Dirty::Elements {
            db,
            key: key.to_vec(),
            changes,
        });
    }

    /// Record an expiry change of `key`. When the last change recorded is
    /// the `SET` of this key (a `SET ... EX` fires `set`, then `expire`),
    /// its value still holds: it only needs its expiry read at flush.
    pub fn expiry(&mut self, db: u32, key: &[u8]) {
        if let Some(Dirty::Value {
            db: d,
            key: k,
            expiry,
            ..
        }) = self.items.last_mut()
        {
            if *d == db && k.as_slice() == key {
                *expiry = Expiry::Read;
                return;
            }
        }
        self.key(db, key);
    }

    /// Record a flush of each of `dbs` (one FLUSHDB, or every db for FLUSHALL).
    pub fn flush(&mut self, dbs: impl IntoIterator<Item = u32>) {
        self.last_flush_group = Some(self.items.len());
        self.items.extend(dbs.into_iter().map(Dirty::Flush));
    }

    /// The latest flush was not a user's (DEBUG RELOAD, DEBUG LOADAOF empty the
    /// dataset and load it back): forget its markers.
    pub fn cancel_last_flush(&mut self) {
        if let Some(start) = self.last_flush_group.take() {
            let tail: Vec<Dirty> = self
                .items
                .drain(start..)
                .filter(|d| !matches!(d, Dirty::Flush(_)))
                .collect();
            self.items.extend(tail);
        }
    }

    /// Take the log, leaving it empty.
    pub fn take(&mut self) -> Vec<Dirty> {
        self.last_flush_group = None;
        std::mem::take(&mut self.items)
    }
}

/// Reduce a log to what a batch must carry, in order.
///
/// A key appears once, at its last position. Its element changes since the
/// last flush of its db travel as one [`Dirty::Elements`] when nothing else
/// changed it; a change the capture could not describe (a [`Dirty::Key`])
/// turns the key into an image, which carries the element changes too.
pub fn reduce(log: Vec<Dirty>) -> Vec<Dirty> {
    let mut flushed_after: HashSet<u32> = HashSet::default();
    // Per key, the positions of its changes no later flush covers (last first).
    let mut positions: HashMap<(u32, &[u8]), Vec<usize>> = HashMap::default();
    let mut keep = vec![false; log.len()];
    for (i, d) in log.iter().enumerate().rev() {
        match d {
            Dirty::Flush(db) => {
                keep[i] = true;
                flushed_after.insert(*db);
            }
            key_change => {
                if let Some((db, k)) = key_change.key_of() {
                    if !flushed_after.contains(&db) {
                        let p = positions.entry((db, k)).or_default();
                        keep[i] = p.is_empty();
                        p.push(i);
                    }
                }
            }
        }
    }
    // Keys whose last change is an element change: all-element or image.
    let mut merged: HashMap<usize, Dirty> = HashMap::default();
    for ((db, key), pos) in &positions {
        if !matches!(log[pos[0]], Dirty::Elements { .. }) || pos.len() == 1 {
            continue;
        }
        let mut changes = Vec::new();
        let mut described = true;
        for &i in pos.iter().rev() {
            match &log[i] {
                Dirty::Elements { changes: c, .. } => changes.extend(c.iter().cloned()),
                _ => described = false,
            }
        }
        let d = if described {
            Dirty::Elements {
                db: *db,
                key: key.to_vec(),
                changes,
            }
        } else {
            Dirty::Key(*db, key.to_vec())
        };
        merged.insert(pos[0], d);
    }
    drop(positions);
    log.into_iter()
        .enumerate()
        .zip(keep)
        .filter_map(|((i, d), k)| k.then(|| merged.remove(&i).unwrap_or(d)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(db: u32, s: &str) -> Dirty {
        Dirty::Key(db, s.as_bytes().to_vec())
    }

    fn incr(d: i64) -> ElementChange {
        ElementChange::Incr {
            shape: crate::core::protocol::Shape::Str,
            elem: Vec::new(),
            delta: d,
        }
    }

    fn el(db: u32, s: &str, changes: Vec<ElementChange>) -> Dirty {
        Dirty::Elements {
            db,
            key: s.as_bytes().to_vec(),
            changes,
        }
    }

    #[test]
    fn element_changes_of_a_key_travel_together_in_order() {
        let log = vec![
            el(0, "c", vec![incr(1)]),
            k(0, "b"),
            el(0, "c", vec![incr(2), incr(3)]),
        ];
        assert_eq!(
            reduce(log),
            vec![k(0, "b"), el(0, "c", vec![incr(1), incr(2), incr(3)])]
        );
    }

    #[test]
    fn an_undescribed_change_turns_element_changes_into_an_image() {
        let log = vec![k(0, "c"), el(0, "c", vec![incr(1)])];
        assert_eq!(reduce(log), vec![k(0, "c")]);
        let log = vec![el(0, "c", vec![incr(1)]), k(0, "c")];
        assert_eq!(reduce(log), vec![k(0, "c")]);
    }

    #[test]
    fn a_flush_drops_the_element_changes_before_it() {
        let log = vec![
            el(0, "c", vec![incr(1)]),
            Dirty::Flush(0),
            el(0, "c", vec![incr(5)]),
            el(1, "c", vec![incr(7)]),
        ];
        assert_eq!(
            reduce(log),
            vec![
                Dirty::Flush(0),
                el(0, "c", vec![incr(5)]),
                el(1, "c", vec![incr(7)])
            ]
        );
    }

    #[test]
    fn consecutive_element_records_of_one_key_share_an_item() {
        let mut d = DirtyLog::new();
        d.elements(0, b"c", vec![incr(1)]);
        d.elements(0, b"c", vec![incr(2)]);
        d.elements(1, b"c", vec![incr(3)]);
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn keeps_last_position_of_each_key() {
        let log = vec![k(0, "a"), k(0, "b"), k(0, "a")];
        assert_eq!(reduce(log), vec![k(0, "b"), k(0, "a")]);
    }

    #[test]
    fn key_rewritten_after_flush_survives_after_it() {
        // SET b; FLUSHDB; SET b -> the image of b must come after the flush.
        let log = vec![k(0, "b"), Dirty::Flush(0), k(0, "b")];
        assert_eq!(reduce(log), vec![Dirty::Flush(0), k(0, "b")]);
    }

    #[test]
    fn flush_covers_only_its_db() {
        let log = vec![k(0, "a"), k(1, "a"), Dirty::Flush(0)];
        assert_eq!(reduce(log), vec![k(1, "a"), Dirty::Flush(0)]);
    }

    fn v(db: u32, s: &str, val: &str, expiry: Expiry) -> Dirty {
        Dirty::Value {
            db,
            key: s.as_bytes().to_vec(),
            value: val.as_bytes().to_vec(),
            expiry,
        }
    }

    #[test]
    fn a_known_value_counts_as_a_change_of_its_key() {
        // SET a 1 (value known); APPEND a x (read at flush): the read wins.
        let log = vec![v(0, "a", "1", Expiry::Cleared), k(0, "a")];
        assert_eq!(reduce(log), vec![k(0, "a")]);
        // The other way round the known value is the last word.
        let log = vec![k(0, "a"), v(0, "a", "2", Expiry::Cleared)];
        assert_eq!(reduce(log), vec![v(0, "a", "2", Expiry::Cleared)]);
        let log = vec![v(0, "a", "1", Expiry::Cleared), Dirty::Flush(0)];
        assert_eq!(reduce(log), vec![Dirty::Flush(0)]);
    }

    #[test]
    fn an_expiry_right_after_a_known_set_keeps_its_value() {
        let mut l = DirtyLog::new();
        l.value(0, b"a".to_vec(), b"1".to_vec(), Expiry::Cleared);
        l.expiry(0, b"a");
        assert_eq!(l.take(), vec![v(0, "a", "1", Expiry::Read)]);
        // After anything else it is an ordinary change.
        l.value(0, b"a".to_vec(), b"1".to_vec(), Expiry::Cleared);
        l.key(0, b"b");
        l.expiry(0, b"a");
        assert_eq!(
            l.take(),
            vec![v(0, "a", "1", Expiry::Cleared), k(0, "b"), k(0, "a")]
        );
    }

    #[test]
    fn cancelled_flush_disappears() {
        let mut l = DirtyLog::new();
        l.key(0, b"a");
        l.flush(0..16);
        l.cancel_last_flush();
        assert_eq!(l.take(), vec![k(0, "a")]);
    }
}
