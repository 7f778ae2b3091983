//! The merge rule of DESIGN §11 for one remote record on one key.
//!
//! Why these steps: they are the model's (`../shared/models/elem_merge/`),
//! which converged in 1.58M schedules where the literal reading of the
//! semantics did not. The marked points (*) are the ones the model found
//! necessary:
//!
//! - (*) a remote record stamped earlier than a pending local image is
//!   ignored: the image already overwrote everything older;
//! - a remote image replaces the key, then the pending local changes stamped
//!   after it are re-applied in order, and (*) the pending entries stamped
//!   before it are pruned: the image cancelled them, so they must not count
//!   against what the peer sends next;
//! - increments add (missing = 0, a non-integer absorbs them);
//! - a remote set or delete of an element, and a remote key delete for each
//!   element, is resolved from the pending entries: the last local overwrite
//!   of the element and the local increments after it (each one a separate,
//!   stamped entry (*): one sum per element diverges).
//!
//! Types, which the model (one hash) does not have: two sides can give a
//! key different types concurrently (an image of another type, or a `DEL`
//! and a write of another type). The type is last-writer-wins: a set or
//! increment whose type differs from the key's or from an earlier pending
//! set or increment acts as an image of just that change (it replaces the
//! key and re-applies later pending changes, but prunes nothing); a remote
//! set or increment is ignored when a later pending one has another type,
//! as under a later pending image; a delete of another type removes
//! nothing. An image of another type against element changes is checked by
//! the property tests and the simulation. Two element families meeting on
//! one key (one side creates or `SET`s it with another family while the
//! other side changes it) can be settled differently by the two sides: a
//! record that only added to an existing key on its origin meets another
//! type on the peer. The receiver detects it
//! ([`super::entry::family_clash`]) and re-ships its key as a whole-key
//! image stamped then, so last-writer-wins on images settles it; the
//! simulation writes such records and checks convergence (without the
//! re-ship, hundreds of schedules in 10,000 diverge).

use std::collections::BTreeSet;

use super::counter;
use super::view::{KeyPlan, KeyView, Planned};
use crate::core::hlc::stamp_ms;
use crate::core::list_op::ListOp;
use crate::core::pending::remote_wins;
use crate::core::pending_elements::{ImageTtl, LocalWrite, PendingChange};
use crate::core::protocol::{ElementChange, Op, Shape, Stamp};

/// The remote record to merge.
#[derive(Debug, Clone, Copy)]
pub enum Remote<'r> {
    /// An element-level change.
    Change(&'r ElementChange),
    /// A whole-key image (`Op::Set` or `Op::Delete`).
    Image(&'r Op),
    /// A remote flush of the key's db: an image of nothing.
    Flush,
    /// A remote image whose TTL had passed here on arrival: an image of
    /// nothing, which also took with it the pending local changes made
    /// before that moment that did not give the key another type (see
    /// [`merge_record`]).
    Expired(ImageTtl),
}

/// Node ids, for ordering stamps of the two sides.
#[derive(Debug, Clone, Copy)]
pub struct Nodes<'a> {
    /// The sender of the record.
    pub remote: &'a str,
    /// This node.
    pub local: &'a str,
}

/// What to do with one remote record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'r> {
    /// A later local image (or type change) wins: change nothing; count it
    /// in `conflicts_lost`.
    Ignored,
    /// Execute the plan; if `prune`, drop this key's pending entries stamped
    /// before the record (it acted as an image and cancelled them).
    Apply {
        /// The writes.
        plan: KeyPlan<'r>,
        /// Prune the key's older pending entries.
        prune: bool,
    },
}

/// Merge `remote`, stamped `stamp`, into the key `view` shows, given this
/// node's pending entries on the key that the record had not seen
/// (`pending`, in execution order, a pending flush of the db included as an
/// image; [`super::entry::plan_entry`] drops those the record's `seen`
/// position covers). `now_ms` is this node's wall clock (Unix ms).
///
/// Keys with a TTL: an element change made on one side before the other
/// side's concurrent image with a TTL reached it belongs, by stamps, to the
/// key that image made, and goes when that key expires, unless it gives the
/// key another type (then, as everywhere in the rule, it replaced the key:
/// a new key without a TTL). Each side decides that from stamps, the TTL
/// and the image's family, not from when the records arrived (before the
/// expiry on one side, after it on the other): a remote change stamped
/// before the TTL of an earlier pending local image that has expired here
/// is ignored, and a remote image that arrives expired re-applies only the
/// pending local changes that outlived it. Without this, the change lived
/// on where the key had expired before it arrived (the convergence test's
/// self-check caught it). A stamp's milliseconds are read as the wall time
/// of its write: with clocks apart, a change stamped ahead of a TTL that has
/// not passed on its side can still end differently (open).
pub fn merge_record<'r>(
    pending: &[PendingChange],
    remote: Remote<'r>,
    stamp: Stamp,
    nodes: Nodes<'_>,
    view: &dyn KeyView,
    now_ms: i64,
) -> Outcome<'r> {
    let later = |p: &PendingChange| remote_wins(p.stamp, nodes.local, stamp, nodes.remote);
    let shape = match remote {
        Remote::Change(c) => establishes(c),
        Remote::Image(_) | Remote::Flush | Remote::Expired(_) => None,
    };
    if pending
        .iter()
        .any(|p| later(p) && (matches!(p.write, LocalWrite::Image { .. }) || other_type(p, shape)))
    {
        return Outcome::Ignored;
    }
    if let Remote::Change(c) = remote {
        // The TTL of the key the last earlier local image made, unless an
        // earlier local change replaced that key since.
        let mut live: Option<ImageTtl> = None;
        for p in pending.iter().filter(|p| !later(p)) {
            match &p.write {
                LocalWrite::Image { ttl } => live = *ttl,
                LocalWrite::Change(local) => {
                    if live.is_some_and(|t| replaces_key(local, t)) {
                        live = None;
                    }
                }
            }
        }
        if let Some(ttl) = live {
            if ttl.at_ms <= now_ms && made_before(stamp, ttl.at_ms) && !replaces_key(c, ttl) {
                return Outcome::Ignored;
            }
        }
    }
    let mut key = Planned::new(view);
    let mut expired_at = None;
    let replaces = match remote {
        Remote::Image(op) => {
            key.image(op);
            true
        }
        Remote::Flush => {
            key.clear();
            true
        }
        Remote::Expired(ttl) => {
            key.clear();
            expired_at = Some(ttl);
            true
        }
        Remote::Change(c) => {
            let changes_type = shape.is_some_and(|s| {
                !key.fits(s) || pending.iter().any(|p| !later(p) && other_type(p, Some(s)))
            });
            if changes_type {
                key.clear();
                effect(&mut key, c);
            } else {
                merge_change(&mut key, pending, c, &later);
            }
            changes_type
        }
    };
    if replaces {
        // After an image that expired on the way: the changes made on its
        // key before its TTL went with it, until one replaced the key
        // (another type) or came after the TTL (a new key).
        let mut expired_key = expired_at;
        for p in pending.iter().filter(|p| later(p)) {
            let LocalWrite::Change(c) = &p.write else {
                continue;
            };
            if let Some(ttl) = expired_key {
                if made_before(p.stamp, ttl.at_ms) && !replaces_key(c, ttl) {
                    continue;
                }
                expired_key = None;
            }
            effect(&mut key, c);
        }
    }
    // A type change replaces the key but prunes nothing: the entries it
    // cancelled here must still reach the peer (its origin does not hold
    // the change as an image, so nothing there would cancel them).
    let prune = matches!(
        remote,
        Remote::Image(_) | Remote::Flush | Remote::Expired(_)
    );
    Outcome::Apply {
        plan: key.finish(),
        prune,
    }
}

/// Does `c` end the key an image with `ttl` made (so that what follows it
/// is a new key, without that TTL): a key delete, a string `SET` (which
/// clears the TTL), or a change that gives the key another type?
pub fn replaces_key(c: &ElementChange, ttl: ImageTtl) -> bool {
    match c {
        ElementChange::DelKey
        | ElementChange::Set {
            shape: Shape::Str, ..
        } => true,
        c => establishes(c).is_some_and(|s| ttl.family != Some(s)),
    }
}

/// Was a write stamped `stamp` made before the Unix ms `at`?
pub fn made_before(stamp: Stamp, at: i64) -> bool {
    i64::try_from(stamp_ms(stamp.hlc)).is_ok_and(|ms| ms < at)
}

/// The type a change gives its key: a set or an increment creates the key
/// if needed; a delete only removes what is there (of another type, it
/// removes nothing: it did not see that type).
fn establishes(c: &ElementChange) -> Option<Shape> {
    match c {
        ElementChange::Set { shape, .. } | ElementChange::Incr { shape, .. } => Some(*shape),
        ElementChange::Del { .. } | ElementChange::DelKey | ElementChange::List(_) => None,
    }
}

/// Does pending entry `p` give the key a type other than `shape`?
fn other_type(p: &PendingChange, shape: Option<Shape>) -> bool {
    match (&p.write, shape) {
        (LocalWrite::Change(c), Some(s)) => establishes(c).is_some_and(|ps| ps != s),
        _ => false,
    }
}

/// The plain local effect of a change (re-applying a pending one, or a
/// remote one that replaces the key).
fn effect(key: &mut Planned<'_, '_>, c: &ElementChange) {
    // A list command is never merged with element changes: the key goes by
    // `list_verdict` whenever one is involved.
    debug_assert!(!c.is_list(), "a list command reached the element merge");
    match c {
        ElementChange::Set { shape, elem, value } => {
            key.set(*shape, elem, value.clone());
            key.drop_ttl();
        }
        ElementChange::Del { shape, elem } => key.delete(*shape, elem),
        ElementChange::Incr { shape, elem, delta } => key.increment(*shape, elem, *delta),
        ElementChange::DelKey => key.clear(),
        ElementChange::List(_) => {}
    }
}

/// What a remote record does to a key when a list command is involved: the
/// record is one, or this node holds one the record had not seen.
///
/// Why whole-list last-writer-wins with a re-ship: a list command replays
/// exactly only on the list the origin held before it. With no concurrent
/// change here, that is this node's list; with one, the two lists differ
/// and no command sequence repairs both. The later side keeps its list and
/// re-ships it as an image stamped then ([`ListVerdict::Won`]); the earlier
/// side ignores the other's commands ([`ListVerdict::Superseded`]) until
/// that image arrives, and takes it, since it is later than all it holds.
/// Each side meets the other's concurrent records while its own are still
/// un-acknowledged (an acknowledgement travels behind the writes its sender
/// made before it), so both reach the same verdict. A re-ship happens only
/// where a list command took part, and images alone settle by stamps, so
/// re-ships do not beget each other forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListVerdict {
    /// No list command involved: the element rule decides.
    NotList,
    /// No concurrent change: replay the remote list command.
    Replay,
    /// A later local write holds: ignore the record, re-ship the key.
    Won,
    /// The remote record is later but cannot be applied to this list:
    /// ignore it; its origin re-ships the key.
    Superseded,
    /// A remote image or flush later than every concurrent local write:
    /// apply it as an image (the element rule does, pruning what it
    /// cancelled).
    Image,
    /// A remote stream append against concurrent local appends only: merge
    /// the entries by the ID rule of `core::stream_merge` (both sides end
    /// with every entry, no re-ship).
    MergeAppend,
    /// A remote stream-groups record an own later one overrides: ignore it
    /// (`conflicts_lost`); ours reaches the peer, which takes it. No
    /// re-ship: groups records are whole states, settled by stamps alone.
    GroupsLost,
}

/// Do `remote` and a pending local change commute, so that the pending one
/// is not concurrent with it for [`list_verdict`]? A stream's consumer
/// groups and its appended entries do: an `XADD` replays the same on either
/// groups, and a groups record (a state, diffed) lands the same whatever
/// was appended meanwhile. Without this, consumers reading on one side and
/// writers appending on the other would re-ship the whole stream at every
/// overlap.
fn commutes(remote: Remote<'_>, p: &PendingChange) -> bool {
    let LocalWrite::Change(ElementChange::List(local)) = &p.write else {
        return false;
    };
    let Remote::Change(ElementChange::List(remote)) = remote else {
        return false;
    };
    matches!(
        (remote, local),
        (ListOp::XGroups { .. }, ListOp::XAdd { .. })
            | (ListOp::XAdd { .. }, ListOp::XGroups { .. })
    )
}

fn is_groups(c: &ElementChange) -> bool {
    matches!(c, ElementChange::List(ListOp::XGroups { .. }))
}

/// Decide for `remote` (stamped `stamp`) against the pending entries it had
/// not seen (`pending`, as for [`merge_record`]).
pub fn list_verdict(
    pending: &[PendingChange],
    remote: Remote<'_>,
    stamp: Stamp,
    nodes: Nodes<'_>,
) -> ListVerdict {
    let remote_list = matches!(remote, Remote::Change(c) if c.is_list());
    let local_list = pending
        .iter()
        .any(|p| matches!(&p.write, LocalWrite::Change(c) if c.is_list()));
    if !remote_list && !local_list {
        return ListVerdict::NotList;
    }
    let pending: Vec<&PendingChange> = pending.iter().filter(|p| !commutes(remote, p)).collect();
    if pending.is_empty() {
        return ListVerdict::Replay;
    }
    let appends = |c: &ElementChange| matches!(c, ElementChange::List(ListOp::XAdd { .. }));
    if matches!(remote, Remote::Change(c) if appends(c))
        && pending
            .iter()
            .all(|p| matches!(&p.write, LocalWrite::Change(c) if appends(c)))
    {
        return ListVerdict::MergeAppend;
    }
    let later_here = pending
        .iter()
        .any(|p| remote_wins(p.stamp, nodes.local, stamp, nodes.remote));
    // Groups records against groups records only: last writer wins on the
    // state, no re-ship (each side's record reaches the other).
    let groups_only = matches!(remote, Remote::Change(c) if is_groups(c))
        && pending
            .iter()
            .all(|p| matches!(&p.write, LocalWrite::Change(c) if is_groups(c)));
    if groups_only {
        return if later_here {
            ListVerdict::GroupsLost
        } else {
            ListVerdict::Replay
        };
    }
    if later_here {
        return ListVerdict::Won;
    }
    match remote {
        Remote::Change(_) => ListVerdict::Superseded,
        Remote::Image(_) | Remote::Flush | Remote::Expired(_) => ListVerdict::Image,
    }
}

/// The key a full resync's target keeps where the source sent none: what
/// this node's own changes since the resync began (`changes`, in order)
/// make of a missing key.
///
/// Why not the whole local key: its other elements are what this node held
/// before, which the source no longer has (it deleted the key, having seen
/// them). The source applies exactly these changes to its missing key, so
/// both sides end with the same elements, as a `DEL` that had seen the old
/// ones and not these changes would leave (observed-remove).
pub fn replay(changes: &[ElementChange]) -> KeyPlan<'static> {
    let missing = super::memory::MemoryKey::Missing;
    let mut key = Planned::new(&missing);
    key.clear();
    for c in changes {
        effect(&mut key, c);
    }
    super::entry::owned(key.finish())
}

/// A remote change of the key's own type.
fn merge_change(
    key: &mut Planned<'_, '_>,
    pending: &[PendingChange],
    c: &ElementChange,
    later: &dyn Fn(&PendingChange) -> bool,
) {
    match c {
        ElementChange::Incr { shape, elem, delta } => key.increment(*shape, elem, *delta),
        ElementChange::Set { elem, .. } | ElementChange::Del { elem, .. } => {
            resolve(key, pending, elem, Some(c), later)
        }
        ElementChange::List(_) => {}
        ElementChange::DelKey => {
            let named: BTreeSet<&[u8]> = pending
                .iter()
                .filter_map(|p| match &p.write {
                    LocalWrite::Change(c) => c.elem(),
                    LocalWrite::Image { .. } => None,
                })
                .collect();
            key.clear();
            for elem in named {
                resolve(key, pending, elem, None, later);
            }
        }
    }
}

/// Does `p` overwrite `elem` (a set or delete of it, a key delete, an image)?
fn overwrites(p: &PendingChange, elem: &[u8]) -> bool {
    match &p.write {
        LocalWrite::Image { .. } => true,
        LocalWrite::Change(ElementChange::DelKey | ElementChange::List(_)) => true,
        LocalWrite::Change(
            ElementChange::Set { elem: e, .. } | ElementChange::Del { elem: e, .. },
        ) => e == elem,
        LocalWrite::Change(ElementChange::Incr { .. }) => false,
    }
}

/// `resolve(e)` of DESIGN §11, for a remote set or delete of `elem`
/// (`remote`), or for a remote key delete (`None`).
fn resolve(
    key: &mut Planned<'_, '_>,
    pending: &[PendingChange],
    elem: &[u8],
    remote: Option<&ElementChange>,
    later: &dyn Fn(&PendingChange) -> bool,
) {
    let mut last_overwrite: Option<&PendingChange> = None;
    let mut deltas: Vec<(Shape, i64)> = Vec::new();
    for p in pending {
        if overwrites(p, elem) {
            last_overwrite = Some(p);
            deltas.clear();
        } else if let LocalWrite::Change(ElementChange::Incr {
            shape,
            elem: e,
            delta,
        }) = &p.write
        {
            if e == elem {
                deltas.push((*shape, *delta));
            }
        }
    }
    let local_set = last_overwrite.and_then(|p| match &p.write {
        LocalWrite::Change(ElementChange::Set { shape, value, .. }) => {
            Some((*shape, value, later(p)))
        }
        _ => None,
    });
    let base: Option<(Shape, &Vec<u8>)> = match remote {
        Some(ElementChange::Set { shape, value, .. }) => match local_set {
            Some((s, v, true)) => Some((s, v)),
            _ => Some((*shape, value)),
        },
        _ => local_set.map(|(s, v, _)| (s, v)),
    };
    let shape = base
        .map(|(s, _)| s)
        .or(deltas.first().map(|(s, _)| *s))
        .or(remote.and_then(ElementChange::shape));
    let Some(shape) = shape else {
        return;
    };
    if base.is_some() && shape == Shape::Str {
        // The value comes from a `SET`, which cleared the expiry.
        key.drop_ttl();
    }
    match base {
        None if deltas.is_empty() => key.delete(shape, elem),
        Some((_, v)) if counter::parse(shape, v).is_none() => key.set(shape, elem, v.clone()),
        _ => {
            let start = base
                .and_then(|(_, v)| counter::parse(shape, v))
                .unwrap_or(0);
            let sum = deltas
                .iter()
                .fold(start, |a, (_, d)| counter::add(shape, a, *d));
            key.set(shape, elem, counter::format(sum));
        }
    }
}

#[cfg(test)]
mod verdict_tests {
    use super::*;
    use crate::core::protocol::StreamGroup;

    const NODES: Nodes<'static> = Nodes {
        remote: "b",
        local: "a",
    };

    fn stamp(hlc: u64) -> Stamp {
        Stamp { hlc, index: 0 }
    }

    fn groups(last: &str) -> ElementChange {
        ElementChange::List(ListOp::XGroups {
            groups: vec![StreamGroup {
                name: b"g".to_vec(),
                last_delivered_id: last.as_bytes().to_vec(),
                entries_read: None,
                consumers: Vec::new(),
            }],
        })
    }

    fn append(id: &str) -> ElementChange {
        ElementChange::List(ListOp::XAdd {
            entries: vec![(id.as_bytes().to_vec(), vec![b"f".to_vec(), b"v".to_vec()])],
        })
    }

    fn pending(hlc: u64, c: ElementChange) -> PendingChange {
        PendingChange {
            stamp: stamp(hlc),
            seq: 1,
            seen: 0,
            write: LocalWrite::Change(c),
        }
    }

    fn verdict(local: &[PendingChange], remote: &ElementChange, hlc: u64) -> ListVerdict {
        list_verdict(local, Remote::Change(remote), stamp(hlc), NODES)
    }

    #[test]
    fn groups_records_settle_by_stamps_without_a_reship() {
        let mine = [pending(10, groups("1-0"))];
        assert_eq!(verdict(&mine, &groups("2-0"), 20), ListVerdict::Replay);
        assert_eq!(verdict(&mine, &groups("2-0"), 5), ListVerdict::GroupsLost);
    }

    #[test]
    fn groups_and_appends_commute() {
        let appended = [pending(30, append("9-0"))];
        assert_eq!(verdict(&appended, &groups("2-0"), 20), ListVerdict::Replay);
        let read = [pending(30, groups("2-0"))];
        assert_eq!(verdict(&read, &append("9-0"), 20), ListVerdict::Replay);
        // Appends against appends merge, whichever is later.
        assert_eq!(
            verdict(&appended, &append("8-0"), 20),
            ListVerdict::MergeAppend
        );
        assert_eq!(
            verdict(&appended, &append("8-0"), 40),
            ListVerdict::MergeAppend
        );
    }

    #[test]
    fn groups_against_other_stream_changes_stay_whole_stream() {
        let trimmed = [pending(
            30,
            ElementChange::List(ListOp::XTrim {
                min_id: b"3-0".to_vec(),
            }),
        )];
        assert_eq!(verdict(&trimmed, &groups("2-0"), 20), ListVerdict::Won);
        assert_eq!(
            verdict(&trimmed, &groups("2-0"), 40),
            ListVerdict::Superseded
        );
        let mixed = [pending(10, groups("1-0")), pending(30, append("9-0"))];
        assert_eq!(verdict(&mixed, &groups("2-0"), 20), ListVerdict::Replay);
        assert_eq!(verdict(&mixed, &groups("2-0"), 5), ListVerdict::GroupsLost);
    }
}
