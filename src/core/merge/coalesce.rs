//! One key's element changes of one flush, folded into fewer records.
//!
//! Why: a pipeline of `INCR c` makes thousands of increments of one counter
//! per event-loop iteration. Shipped one by one, each costs a record on the
//! link, an entry in the un-acknowledged table and a read and a write on
//! the peer; the key-level image they replace cost one. Folded, they cost
//! one record again, and the merge reaches the same state on both sides.
//!
//! Why these folds are safe: the merge rule (DESIGN §11) reads, per element,
//! the last overwrite (a set, a delete, a key delete) and the increments
//! after it. A fold keeps both: increments in a row add up into one, and a
//! set drops
//! what came before it on the same element, which it had seen and replaced
//! locally (a remote change concurrent with the batch was seen by none of
//! them, so it meets the same last overwrite either way). A delete drops
//! only an earlier delete: a set or increment before it also gave the key
//! its type, which the rule needs when two families meet. Changes of
//! different elements commute. A key delete drops everything before it. The
//! pending table holds exactly the folded records that were shipped.
//! `tests.rs` checks the folded and unfolded batches end equal under random
//! concurrent writes.

use std::collections::HashMap;

use super::counter;
use crate::core::list_op::ListOp;
use crate::core::protocol::{ElementChange, Shape};

/// Fold `changes` (in execution order, one key) into an equivalent list.
pub fn coalesce(changes: Vec<ElementChange>) -> Vec<ElementChange> {
    if changes.len() < 2 {
        return changes;
    }
    let mut out: Vec<Option<ElementChange>> = Vec::with_capacity(changes.len());
    // Element -> position in `out` of its last change since the last reset.
    let mut last: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut shape: Option<Shape> = None;
    for c in changes {
        let c = match (c, out.last_mut()) {
            (ElementChange::List(op), last_out) => {
                // A list command replays only in order: it folds only with
                // the list command right before it (see `fold_list`).
                last.clear();
                shape = None;
                let unfolded = match last_out {
                    Some(Some(ElementChange::List(prev))) => fold_list(prev, op),
                    _ => Some(op),
                };
                if let Some(op) = unfolded {
                    out.push(Some(ElementChange::List(op)));
                }
                continue;
            }
            (c, _) => c,
        };
        if c == ElementChange::DelKey {
            out.clear();
            last.clear();
            shape = None;
            out.push(Some(c));
            continue;
        }
        if c.shape() != shape {
            // Another family on the key (a `SET` over a hash): no folding
            // across it, the order stays as it was.
            last.clear();
            shape = c.shape();
        }
        let elem = c.elem().unwrap_or_default().to_vec();
        let folded = last.get(&elem).and_then(|&i| {
            out[i]
                .as_ref()
                .and_then(|prev| fold(prev, &c))
                .map(|f| (i, f))
        });
        match folded {
            Some((i, f)) => out[i] = Some(f),
            None => {
                if let Some(&i) = last.get(&elem) {
                    if out[i].as_ref().is_some_and(|prev| replaces(prev, &c)) {
                        // Seen and replaced by this change.
                        out[i] = None;
                    }
                }
                last.insert(elem, out.len());
                out.push(Some(c));
            }
        }
    }
    out.into_iter().flatten().collect()
}

/// Two list commands in a row as one, when that is the same command: pushes
/// at the same end (`LPUSH k a` then `LPUSH k b` is `LPUSH k a b`), stream
/// appends (replayed in order, one `XADD` each) and pops
/// from the same end (`min(c1, len)` then `min(c2, len - that)` elements is
/// `min(c1 + c2, len)`). Why: a pipeline of `LPUSH`es into one list would
/// otherwise cost one record, one pending entry and one replayed command each.
/// Folds in place, moving what `next` carries (a long pipeline must not
/// copy what it gathered, at any step); gives `next` back when the two do
/// not fold.
fn fold_list(prev: &mut ListOp, next: ListOp) -> Option<ListOp> {
    match (prev, next) {
        (
            ListOp::Push { left, values },
            ListOp::Push {
                left: l2,
                values: v2,
            },
        ) if *left == l2 => {
            values.extend(v2);
            None
        }
        (ListOp::XAdd { entries }, ListOp::XAdd { entries: more }) => {
            entries.extend(more);
            None
        }
        (
            ListOp::Pop { left, count },
            ListOp::Pop {
                left: l2,
                count: c2,
            },
        ) if *left == l2 => {
            *count = count.saturating_add(c2).min(i64::MAX as u64);
            None
        }
        (_, next) => Some(next),
    }
}

/// Does `next` make `prev` (same element) redundant? A set replaces any
/// earlier change; a delete replaces only a delete: a set or an increment
/// also gives the key its type, which a delete does not (the rule settles a
/// type clash by the record that established the type).
fn replaces(prev: &ElementChange, next: &ElementChange) -> bool {
    match next {
        ElementChange::Set { .. } => true,
        ElementChange::Del { .. } => matches!(prev, ElementChange::Del { .. }),
        _ => false,
    }
}

/// `prev` then `next` on the same element, as one change, where exact.
fn fold(prev: &ElementChange, next: &ElementChange) -> Option<ElementChange> {
    use ElementChange::Incr;
    match (prev, next) {
        (
            Incr { shape, elem, delta },
            Incr {
                shape: s2,
                delta: d2,
                ..
            },
        ) if shape == s2 => Some(Incr {
            shape: *shape,
            elem: elem.clone(),
            delta: counter::add(*shape, *delta, *d2),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incr(e: &str, d: i64) -> ElementChange {
        ElementChange::Incr {
            shape: Shape::Hash,
            elem: e.into(),
            delta: d,
        }
    }
    fn set(e: &str, v: &str) -> ElementChange {
        ElementChange::Set {
            shape: Shape::Hash,
            elem: e.into(),
            value: v.into(),
        }
    }
    fn del(e: &str) -> ElementChange {
        ElementChange::Del {
            shape: Shape::Hash,
            elem: e.into(),
        }
    }

    #[test]
    fn increments_fold_into_one() {
        let c = coalesce(vec![
            incr("a", 1),
            incr("b", 5),
            incr("a", 2),
            incr("a", -4),
        ]);
        assert_eq!(c, vec![incr("a", -1), incr("b", 5)]);
    }

    #[test]
    fn a_set_absorbs_earlier_writes_but_not_later_increments() {
        // An increment after a set stays separate: a concurrent remote set
        // that wins over this one did not see it, so it is added on top.
        assert_eq!(
            coalesce(vec![incr("a", 1), set("a", "10"), incr("a", 2)]),
            vec![set("a", "10"), incr("a", 2)]
        );
        // A delete keeps the set before it: the set gave the key its type.
        assert_eq!(
            coalesce(vec![set("a", "1"), del("a")]),
            vec![set("a", "1"), del("a")]
        );
        assert_eq!(coalesce(vec![del("a"), del("a")]), vec![del("a")]);
        // A delete then an increment stay two records (the increment starts from nothing).
        assert_eq!(
            coalesce(vec![del("a"), incr("a", 2)]),
            vec![del("a"), incr("a", 2)]
        );
    }

    #[test]
    fn a_key_delete_drops_what_came_before() {
        let c = coalesce(vec![set("a", "1"), ElementChange::DelKey, incr("a", 2)]);
        assert_eq!(c, vec![ElementChange::DelKey, incr("a", 2)]);
    }

    #[test]
    fn no_fold_across_families() {
        let s = ElementChange::Set {
            shape: Shape::Str,
            elem: Vec::new(),
            value: b"5".to_vec(),
        };
        let c = coalesce(vec![incr("a", 1), s.clone(), incr("a", 1)]);
        assert_eq!(c, vec![incr("a", 1), s, incr("a", 1)]);
    }

    #[test]
    fn sums_wrap_like_the_merge() {
        let c = coalesce(vec![incr("a", i64::MAX), incr("a", 2)]);
        assert_eq!(c, vec![incr("a", i64::MIN + 1)]);
    }

    fn list(op: ListOp) -> ElementChange {
        ElementChange::List(op)
    }

    #[test]
    fn pushes_and_pops_at_one_end_fold_others_stay() {
        let push = |left, v: &str| {
            list(ListOp::Push {
                left,
                values: vec![v.as_bytes().to_vec()],
            })
        };
        let pop = |left, count| list(ListOp::Pop { left, count });
        let c = coalesce(vec![push(true, "a"), push(true, "b"), push(false, "c")]);
        assert_eq!(
            c,
            vec![
                list(ListOp::Push {
                    left: true,
                    values: vec![b"a".to_vec(), b"b".to_vec()]
                }),
                push(false, "c")
            ]
        );
        assert_eq!(
            coalesce(vec![pop(false, 2), pop(false, u64::MAX)]),
            vec![pop(false, i64::MAX as u64)]
        );
        assert_eq!(coalesce(vec![pop(true, 1), pop(false, 1)]).len(), 2);
    }

    proptest::proptest! {
        /// Folded list commands leave any list as the unfolded ones do.
        #[test]
        fn folded_list_commands_end_equal(
            start in proptest::collection::vec(0u8..4, 0..6),
            ops in proptest::collection::vec((0u8..4, proptest::bool::ANY, 0u8..4, 1u64..4), 0..10),
        ) {
            let changes: Vec<ElementChange> = ops
                .into_iter()
                .map(|(kind, left, v, n)| match kind {
                    0 | 1 => list(ListOp::Push { left, values: vec![vec![v]; n as usize] }),
                    2 => list(ListOp::Pop { left, count: n }),
                    _ => list(ListOp::Rem { count: i64::from(v) - 2, value: vec![v] }),
                })
                .collect();
            let run = |cs: &[ElementChange]| {
                let mut l = (!start.is_empty()).then(|| start.iter().map(|b| vec![*b]).collect());
                for c in cs {
                    if let ElementChange::List(op) = c {
                        crate::core::list_op::apply(&mut l, op).expect("runs");
                    }
                }
                l
            };
            let folded = coalesce(changes.clone());
            proptest::prop_assert_eq!(run(&changes), run(&folded));
        }
    }
}
