//! Concurrent appends to one stream, merged entry by entry: every entry of
//! both sides ends in both streams, in ID order, with the same IDs.
//!
//! Why a rule on IDs: a stream is a list of entries ordered by ID, and an
//! append made on one side while the other side appended too carries the ID
//! its origin generated. `XADD *` on two busy servers generates the same ID
//! on both sides almost every millisecond (each counts its own sequence
//! from 0 within a millisecond), so two different entries can share one ID.
//!
//! The rule (the same on both sides, whatever the order and grouping in
//! which the other side's entries arrive):
//! - an entry keeps the ID its origin generated, unless
//! - the node whose id sorts first also has an entry with that ID: then the
//!   other node's entry moves to the same millisecond with the top bit of
//!   the sequence set (`ms-(seq + 2^63)`), after every ID `XADD *` hands out
//!   in that millisecond before a move.
//!
//! Both sides hold each entry once at the position this gives it, so the
//! streams end equal. A consumer that read the moved entry under its first
//! ID sees it again under the new one (and the first node's entry under the
//! first ID). Where the rule cannot place an entry (a clash on an ID that is
//! itself past 2^63, which needs `XADD *` after a move in the same
//! millisecond on both sides), the caller falls back to whole-stream last
//! writer wins.
//!
//! Cost: the entries from the first incoming ID on, which are the
//! concurrent ones (an append made having seen an entry gets a later ID).

use std::collections::BTreeMap;

/// An entry ID as numbers (`ms`, `seq`).
pub type EntryId = (u64, u64);

/// An entry: ID and field, value, … as given.
pub type StreamEntry = (EntryId, Vec<Vec<u8>>);

/// The bit a moved entry's sequence gets.
pub const MOVED: u64 = 1 << 63;

/// Why entries cannot be merged by the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeError {
    /// Two entries share an ID whose sequence already has [`MOVED`] set,
    /// or the moved ID is taken.
    Clash(EntryId),
}

/// Merge `incoming` (the peer's concurrent appends, with their origin's
/// IDs, in order) into `tail` (this node's entries from the smallest
/// incoming ID on, in ID order). `local_first`: this node's id sorts before
/// the peer's, so its entries keep a shared ID. Returns the new tail.
pub fn merge(
    tail: &[StreamEntry],
    incoming: &[StreamEntry],
    local_first: bool,
) -> Result<Vec<StreamEntry>, MergeError> {
    let mut at: BTreeMap<EntryId, &Vec<Vec<u8>>> = tail.iter().map(|(id, f)| (*id, f)).collect();
    for (id, fields) in incoming {
        let Some(&here) = at.get(id) else {
            at.insert(*id, fields);
            continue;
        };
        // A shared ID: the entry here is this node's own (the peer's IDs
        // are its own generation's, unique, and a moved one has the bit).
        if id.1 & MOVED != 0 {
            return Err(MergeError::Clash(*id));
        }
        let moved = (id.0, id.1 | MOVED);
        if at.contains_key(&moved) {
            return Err(MergeError::Clash(moved));
        }
        if local_first {
            at.insert(moved, fields);
        } else {
            at.insert(moved, here);
            at.insert(*id, fields);
        }
    }
    Ok(at.into_iter().map(|(id, f)| (id, f.clone())).collect())
}

/// How many of `old`'s entries stay as they are when the stream's tail
/// becomes `new` (the rest are deleted, then `new` from that point on is
/// appended).
pub fn kept(old: &[StreamEntry], new: &[StreamEntry]) -> usize {
    old.iter().zip(new).take_while(|(a, b)| a == b).count()
}

/// An ID as Redis writes it.
pub fn format_id(id: EntryId) -> Vec<u8> {
    // By hand: every captured append names its ID, and `format!` was a
    // visible share of the writer's time per append.
    fn digits(mut n: u64, out: &mut Vec<u8>) {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(&buf[i..]);
    }
    let mut out = Vec::with_capacity(24);
    digits(id.0, &mut out);
    out.push(b'-');
    digits(id.1, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(ms: u64, seq: u64, v: &str) -> StreamEntry {
        ((ms, seq), vec![b"f".to_vec(), v.as_bytes().to_vec()])
    }

    #[test]
    fn ids_print_as_the_server_prints_them() {
        assert_eq!(format_id((0, 0)), b"0-0");
        assert_eq!(format_id((1_700_000_000_123, 42)), b"1700000000123-42");
        assert_eq!(
            format_id((u64::MAX, u64::MAX)),
            format!("{}-{}", u64::MAX, u64::MAX).into_bytes()
        );
    }

    proptest! {
        #[test]
        fn ids_print_as_format_does(ms: u64, seq: u64) {
            prop_assert_eq!(format_id((ms, seq)), format!("{ms}-{seq}").into_bytes());
        }
    }

    #[test]
    fn a_shared_id_stays_with_the_first_node_and_the_other_entry_moves() {
        let a = vec![e(5, 0, "a0"), e(5, 1, "a1")];
        let b = vec![e(5, 0, "b0")];
        let on_a = merge(&a, &b, true).unwrap();
        let on_b = merge(&b, &a, false).unwrap();
        assert_eq!(on_a, on_b);
        assert_eq!(on_a, vec![e(5, 0, "a0"), e(5, 1, "a1"), e(5, MOVED, "b0")]);
    }

    #[test]
    fn entries_interleave_by_id_and_keep_their_ids() {
        let a = vec![e(5, 0, "a"), e(9, 0, "a")];
        let b = vec![e(7, 0, "b"), e(11, 0, "b")];
        let on_a = merge(&a, &b, true).unwrap();
        assert_eq!(on_a, merge(&b, &a, false).unwrap());
        let ids: Vec<EntryId> = on_a.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [(5, 0), (7, 0), (9, 0), (11, 0)]);
    }

    #[test]
    fn a_clash_past_the_moved_bit_is_refused() {
        let a = vec![e(5, MOVED + 1, "a")];
        let b = vec![e(5, MOVED + 1, "b")];
        assert_eq!(merge(&a, &b, true), Err(MergeError::Clash((5, MOVED + 1))));
        assert_eq!(merge(&b, &a, false), Err(MergeError::Clash((5, MOVED + 1))));
    }

    #[test]
    fn only_what_changed_is_rewritten() {
        let old = vec![e(5, 0, "a"), e(9, 0, "a")];
        let appended = merge(&old, &[e(12, 0, "b")], true).unwrap();
        assert_eq!(kept(&old, &appended), 2);
        let inserted = merge(&old, &[e(7, 0, "b")], true).unwrap();
        assert_eq!(kept(&old, &inserted), 1);
    }

    /// IDs as `XADD *` hands them out after `last`: the same millisecond
    /// (next sequence) or a later one (sequence 0).
    fn generate(last: EntryId, steps: &[(bool, u64)], tag: &str) -> Vec<StreamEntry> {
        let mut id = last;
        steps
            .iter()
            .enumerate()
            .map(|(i, &(same_ms, gap))| {
                id = if same_ms {
                    (id.0, id.1 + 1)
                } else {
                    (id.0 + gap, 0)
                };
                e(id.0, id.1, &format!("{tag}{i}"))
            })
            .collect()
    }

    /// Apply `chunks` of the peer's entries one after another to `stream`,
    /// as batches arrive (each merge reads the tail from the chunk's first
    /// ID on).
    fn apply(
        mut stream: Vec<StreamEntry>,
        peer: &[StreamEntry],
        cut: &[usize],
        first: bool,
    ) -> Result<Vec<StreamEntry>, MergeError> {
        let mut rest = peer;
        let mut cuts = cut.iter();
        while !rest.is_empty() {
            let n = cuts.next().map_or(rest.len(), |c| (c % rest.len()) + 1);
            let (chunk, later) = rest.split_at(n);
            rest = later;
            let min = chunk.iter().map(|(id, _)| *id).min().expect("a chunk");
            let from = stream.partition_point(|(id, _)| *id < min);
            let merged = merge(&stream[from..], chunk, first)?;
            stream.truncate(from);
            stream.extend(merged);
        }
        Ok(stream)
    }

    proptest! {
        /// Whatever the two sides appended concurrently after a common
        /// stream, and however the other side's entries are cut into
        /// batches, both sides end with the same stream holding every entry
        /// once, in ID order, or both refuse.
        #[test]
        fn both_sides_end_equal_with_every_entry(
            base in 0u64..3,
            a_steps in proptest::collection::vec((any::<bool>(), 1u64..3), 0..12),
            b_steps in proptest::collection::vec((any::<bool>(), 1u64..3), 0..12),
            a_cuts in proptest::collection::vec(0usize..5, 0..6),
            b_cuts in proptest::collection::vec(0usize..5, 0..6),
        ) {
            let common: Vec<StreamEntry> = (0..base).map(|i| e(i + 1, 0, "c")).collect();
            let last = common.last().map_or((1, 0), |(id, _)| *id);
            let mine = generate(last, &a_steps, "a");
            let theirs = generate(last, &b_steps, "b");
            let a0: Vec<StreamEntry> = common.iter().chain(&mine).cloned().collect();
            let b0: Vec<StreamEntry> = common.iter().chain(&theirs).cloned().collect();
            let on_a = apply(a0, &theirs, &a_cuts, true);
            let on_b = apply(b0, &mine, &b_cuts, false);
            match (on_a, on_b) {
                (Ok(x), Ok(y)) => {
                    prop_assert_eq!(&x, &y);
                    prop_assert_eq!(x.len(), common.len() + mine.len() + theirs.len());
                    prop_assert!(x.windows(2).all(|w| w[0].0 < w[1].0));
                }
                (Err(_), Err(_)) => {}
                (x, y) => prop_assert!(false, "one side merged, the other refused: {:?} / {:?}", x, y),
            }
        }
    }
}
