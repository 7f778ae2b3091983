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
        if c.is_list() {
            // A list command folds with nothing: it replays only in order.
            last.clear();
            shape = None;
            out.push(Some(c));
            continue;
        }
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
}
