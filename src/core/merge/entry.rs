//! One entry of a remote batch, planned against the pending table.
//!
//! Why a step per entry rather than a plan per batch (as `decide` does):
//! the rule reads the key (an increment adds to what is there), so each
//! entry must see the effect of the ones before it; the caller executes a
//! step before planning the next.

use super::rule::{
    list_verdict, made_before, merge_record, replaces_key, ListVerdict, Nodes, Outcome, Remote,
};
use super::view::{KeyPlan, KeyShape, KeyView};
use super::{check, ElementError};
use crate::core::list_op::ListOp;
use crate::core::pending::PendingWrites;
use crate::core::pending_elements::{shape_bit, ImageTtl, LocalWrite, PendingChange};
use crate::core::protocol::{ElementChange, Entry, Op};

/// What to do for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'r> {
    /// Execute `plan` on `key` of `db`.
    Key {
        /// The db.
        db: u32,
        /// The key.
        key: &'r [u8],
        /// Its writes.
        plan: KeyPlan<'r>,
        /// This node holds a change of the key the record had not seen:
        /// the two were merged (`conflicts_merged`).
        concurrent: bool,
    },
    /// A later local write wins: count it in `conflicts_lost`.
    Lost,
    /// Replay a list command on `key` of `db` (no concurrent change here).
    List {
        /// The db.
        db: u32,
        /// The key.
        key: &'r [u8],
        /// The command.
        op: &'r ListOp,
    },
    /// Merge a remote stream append into this node's stream, which holds
    /// concurrent appends of its own (`core::stream_merge`); where the rule
    /// cannot place an entry, act as [`Step::Won`].
    MergeAppend {
        /// The db.
        db: u32,
        /// The key.
        key: &'r [u8],
        /// The append.
        op: &'r ListOp,
        /// This node's id sorts first: its entries keep a shared ID.
        local_first: bool,
    },
    /// A list command took part in a conflict this node's later write
    /// wins: ignore the record (`conflicts_lost`) and re-ship the key as an
    /// image (see [`ListVerdict::Won`]).
    Won {
        /// The db.
        db: u32,
        /// The key.
        key: &'r [u8],
    },
    /// A remote flush an own later flush covers: nothing to apply
    /// (`conflicts_lost`); re-ship `reship` (keys with a later list command
    /// of ours, see [`ListVerdict::Won`]).
    Covered {
        /// The db.
        db: u32,
        /// Keys to re-ship as images.
        reship: Vec<Vec<u8>>,
    },
    /// A later remote record that cannot apply to this node's list: ignore
    /// it; its origin re-ships the key (see [`ListVerdict::Superseded`]).
    /// Until that image arrives this node's list lacks the change, so its
    /// own list commands on the key ship as images (`core::unshared`).
    Superseded {
        /// The db.
        db: u32,
        /// The key.
        key: &'r [u8],
    },
    /// Already applied (re-sent by a resync): skip it.
    Duplicate,
    /// Empty `db` except `keep` (current values stay: a later local image
    /// won), then execute each `rebuild` plan (later local element changes
    /// re-applied onto the emptied key).
    Flush {
        /// The db.
        db: u32,
        /// Keys to keep as they are.
        keep: Vec<Vec<u8>>,
        /// Keys to rebuild after the flush.
        rebuild: Vec<(Vec<u8>, KeyPlan<'static>)>,
        /// Kept keys (among `keep`) to re-ship as images: a later list
        /// command of ours won over the flush ([`ListVerdict::Won`]).
        reship: Vec<Vec<u8>>,
    },
    /// A full resync from the peer starts; `resume`: a restart resume,
    /// which sends only the keys changed since this node's snapshot.
    FullSyncBegin {
        /// Keys not sent are as this node holds them (no sweep, no
        /// rebuild of a record's key from a missing one).
        resume: bool,
    },
    /// The peer's full resync has sent every key.
    FullSyncEnd,
    /// The peer's restart resume has sent every key.
    ResumeEnd,
    /// Compare the key's digest with the sender's (test builds), unless
    /// this node holds a concurrent change of it (then they may differ).
    Check {
        /// The db.
        db: u32,
        /// The key.
        key: &'r [u8],
        /// The sender's digest.
        digest: &'r [u8],
        /// This node has a pending change of the key.
        concurrent: bool,
    },
}

/// Must a full resync's image (`Op::Set`/`Op::Delete` received while taking
/// the peer's dataset) be answered with a re-ship of the key, given its step?
///
/// Why: the image folds in the source's own changes without naming them;
/// where this node holds changes of the key too (the rule ignored the image,
/// or merged it with them), the two sides' merges differ, so this node's
/// result goes back as an image and both sides end with it. One answer for
/// the glue and the simulation.
pub fn full_resync_image_reships(entry: &Entry, step: &Step<'_>) -> bool {
    matches!(entry.op, Op::Set { .. } | Op::Delete { .. })
        && matches!(
            step,
            Step::Lost
                | Step::Key {
                    concurrent: true,
                    ..
                }
        )
}

/// Where the batch sits in the sender's stream.
#[derive(Debug, Clone, Copy)]
pub struct BatchPosition {
    /// The batch's seq.
    pub seq: u64,
    /// The highest seq applied from that stream before this batch.
    pub applied_before: u64,
    /// This node's wall clock (Unix ms) as the batch is applied: whether a
    /// TTL has passed here.
    pub now_ms: i64,
}

/// The view of a key that is not read (a flush rebuilds from nothing).
pub struct NoKey;

impl KeyView for NoKey {
    fn shape(&self) -> KeyShape {
        KeyShape::Missing
    }
    fn element_count(&self) -> usize {
        0
    }
    fn get(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// The key an entry writes, which the caller must show through a view.
pub fn entry_key(entry: &Entry) -> Option<&[u8]> {
    match &entry.op {
        Op::Set { key, .. } | Op::Delete { key } | Op::Element { key, .. } => Some(key),
        Op::FlushDb
        | Op::FullSyncBegin
        | Op::FullSyncEnd
        | Op::ResumeBegin
        | Op::ResumeEnd
        | Op::Check { .. } => None,
    }
}

/// Does this entry bring a second element family onto its key: an element
/// change of one family meeting a key of another type here, or this node's
/// pending changes of another family?
///
/// Why it matters: the merge rule settles such a clash by stamps, and the
/// two sides can settle it differently (they may disagree on which record
/// changed the key's type: one that only added to an existing key on its
/// origin can meet another type on the peer). The receiver then re-ships
/// its resulting key as a whole-key image, stamped now, so both sides end
/// on one image by last-writer-wins; ask before [`plan_entry`].
pub fn family_clash(table: &mut PendingWrites, entry: &Entry, view: &dyn KeyView) -> bool {
    let Op::Element { key, change, .. } = &entry.op else {
        return false;
    };
    let Some(theirs) = change.shape() else {
        return false;
    };
    let here = match view.shape() {
        KeyShape::Missing => false,
        KeyShape::Elements(s) => s != theirs,
        KeyShape::Other => true,
    };
    here || table.element_shapes(entry.db, key) & !shape_bit(theirs) != 0
}

/// Does this entry meet a key with a TTL on one side only: a remote element
/// change concurrent with this node's pending image that carries a TTL, or
/// a remote image with a TTL while this node holds pending element changes
/// of the key?
///
/// Why it matters: the two sides see the key expire at different moments
/// relative to when the other's records arrive, and element changes merged
/// around an expiry can end differently (observed-remove meets a key that
/// has already gone on one side only). `merge_record` settles the common
/// case by stamps; the receiver also re-ships its resulting key as a
/// whole-key image, stamped now, so that whatever remains apart ends on one
/// image by last-writer-wins (the README's TTL row). Ask before
/// [`plan_entry`].
pub fn ttl_clash(table: &mut PendingWrites, entry: &Entry, now_ms: i64) -> bool {
    // Only while the TTL runs here: past it, the rule decides by stamps
    // alone, the same on both sides, and changes made after it merge.
    match &entry.op {
        Op::Element { key, seen, .. } => {
            table.ttl_image_after(*seen)
                && table.image_ttl(entry.db, key).is_some_and(|(seq, ttl)| {
                    seq > *seen && ttl.at_ms > now_ms && made_before(entry.stamp, ttl.at_ms)
                })
        }
        Op::Set {
            key,
            expire_at_ms: Some(at),
            ..
        } if *at > now_ms && table.element_shapes(entry.db, key) != 0 => {
            table.changes_of(entry.db, key).iter().any(|p| {
                matches!(p.write, LocalWrite::Change(_))
                    && p.stamp > entry.stamp
                    && made_before(p.stamp, *at)
            })
        }
        _ => false,
    }
}

/// Plan one entry; `view` shows the entry's key ([`entry_key`]) as it is now.
pub fn plan_entry<'r>(
    table: &mut PendingWrites,
    entry: &'r Entry,
    at: BatchPosition,
    nodes: Nodes<'_>,
    view: &dyn KeyView,
) -> Result<Step<'r>, ElementError> {
    let (key, remote) = match &entry.op {
        Op::FullSyncBegin => return Ok(Step::FullSyncBegin { resume: false }),
        Op::ResumeBegin => return Ok(Step::FullSyncBegin { resume: true }),
        Op::FullSyncEnd => return Ok(Step::FullSyncEnd),
        Op::ResumeEnd => return Ok(Step::ResumeEnd),
        Op::FlushDb => return Ok(plan_flush(table, entry, nodes, at.now_ms)),
        Op::Check { key, digest } => {
            let concurrent = !table.changes_of(entry.db, key).is_empty();
            return Ok(Step::Check {
                db: entry.db,
                key,
                digest,
                concurrent,
            });
        }
        // An image whose TTL passed on the way is a delete here, and took
        // with it what this node changed in its key before that moment
        // (`merge_record`).
        Op::Set { key, .. } | Op::Delete { key } => {
            let expired = ImageTtl::of(&entry.op).filter(|t| t.at_ms <= at.now_ms);
            (
                key,
                expired.map_or(Remote::Image(&entry.op), Remote::Expired),
            )
        }
        Op::Element {
            key,
            change,
            shipped_in,
            seen,
        } => {
            check(change)?;
            if *shipped_in < at.seq && *shipped_in <= at.applied_before {
                return Ok(Step::Duplicate);
            }
            if let ElementChange::Incr { shape, .. } = change {
                // Pending changes of the same family only: the rule adds
                // whatever they are, so they are not read (or copied).
                let fits = match view.shape() {
                    KeyShape::Missing => true,
                    KeyShape::Elements(s) => s == *shape,
                    KeyShape::Other => false,
                };
                if let Some(concurrent) = fits
                    .then(|| table.increment_fast_path(entry.db, key, *shape))
                    .flatten()
                {
                    let remote = Remote::Change(change);
                    if let Outcome::Apply { plan, .. } =
                        merge_record(&[], remote, entry.stamp, nodes, view, at.now_ms)
                    {
                        return Ok(Step::Key {
                            db: entry.db,
                            key,
                            plan,
                            concurrent,
                        });
                    }
                }
            }
            let mut pending = table.changes_of(entry.db, key);
            // What the change had seen is not concurrent with it.
            pending.retain(|p| p.seq > *seen);
            let remote = Remote::Change(change);
            return Ok(match list_verdict(&pending, remote, entry.stamp, nodes) {
                ListVerdict::NotList => {
                    merge(table, entry, remote, &pending, nodes, view, at.now_ms)
                }
                ListVerdict::Replay => match change {
                    ElementChange::List(op) => Step::List {
                        db: entry.db,
                        key,
                        op,
                    },
                    _ => merge(table, entry, remote, &pending, nodes, view, at.now_ms),
                },
                ListVerdict::Won => Step::Won { db: entry.db, key },
                ListVerdict::GroupsLost => Step::Lost,
                ListVerdict::MergeAppend => match change {
                    ElementChange::List(op) => Step::MergeAppend {
                        db: entry.db,
                        key,
                        op,
                        local_first: nodes.local < nodes.remote,
                    },
                    _ => Step::Won { db: entry.db, key },
                },
                ListVerdict::Superseded | ListVerdict::Image => {
                    Step::Superseded { db: entry.db, key }
                }
            });
        }
    };
    let pending = table.changes_of(entry.db, key);
    if list_verdict(&pending, remote, entry.stamp, nodes) == ListVerdict::Won {
        return Ok(Step::Won { db: entry.db, key });
    }
    Ok(merge(
        table, entry, remote, &pending, nodes, view, at.now_ms,
    ))
}

/// Run the rule on the entry's key; prune what a record that replaced the
/// key cancelled.
fn merge<'r>(
    table: &mut PendingWrites,
    entry: &'r Entry,
    remote: Remote<'r>,
    pending: &[PendingChange],
    nodes: Nodes<'_>,
    view: &dyn KeyView,
    now_ms: i64,
) -> Step<'r> {
    let Some(key) = entry_key(entry) else {
        return Step::Duplicate;
    };
    let concurrent = !pending.is_empty();
    match merge_record(pending, remote, entry.stamp, nodes, view, now_ms) {
        Outcome::Ignored => Step::Lost,
        Outcome::Apply { plan, prune } => {
            if prune {
                table.prune_before(entry.db, key, entry.stamp, nodes.remote, nodes.local);
            }
            if let Remote::Change(c) = remote {
                // It replaced the key a pending image with a TTL made: that
                // TTL no longer decides for the peer's later changes.
                let ttl_image = pending.iter().any(
                    |p| matches!(p.write, LocalWrite::Image { ttl: Some(t) } if replaces_key(c, t)),
                );
                if ttl_image {
                    table.forget_image_ttl(entry.db, key);
                }
            }
            Step::Key {
                db: entry.db,
                key,
                plan,
                concurrent,
            }
        }
    }
}

/// A remote flush: an image of nothing on every key of the db.
fn plan_flush<'r>(
    table: &mut PendingWrites,
    entry: &'r Entry,
    nodes: Nodes<'_>,
    now_ms: i64,
) -> Step<'r> {
    let db = entry.db;
    if !table.first_sight_of_remote_flush(db, entry.stamp) {
        return Step::Duplicate;
    }
    if table.flush_covers(db, entry.stamp, nodes.remote, nodes.local) {
        // Our later flush wins over it, but a list command of ours made
        // after it still meets it on the peer's side as a concurrent image
        // (the peer's pending flush), where it cannot replay: re-ship those
        // keys, as a won conflict would (found by the simulation).
        let reship: Vec<Vec<u8>> = table
            .keys_of_db(db)
            .into_iter()
            .filter(|key| {
                let pending = table.changes_of(db, key);
                list_verdict(&pending, Remote::Flush, entry.stamp, nodes) == ListVerdict::Won
            })
            .collect();
        return Step::Covered { db, reship };
    }
    let mut keep = Vec::new();
    let mut rebuild = Vec::new();
    let mut reship = Vec::new();
    for key in table.keys_of_db(db) {
        let pending = table.changes_of(db, &key);
        if list_verdict(&pending, Remote::Flush, entry.stamp, nodes) == ListVerdict::Won {
            reship.push(key.clone());
            keep.push(key);
            continue;
        }
        match merge_record(&pending, Remote::Flush, entry.stamp, nodes, &NoKey, now_ms) {
            Outcome::Ignored => keep.push(key),
            Outcome::Apply { plan, .. } => {
                table.prune_before(db, &key, entry.stamp, nodes.remote, nodes.local);
                if !plan.writes.is_empty() || !plan.adds.is_empty() {
                    rebuild.push((key, owned(plan)));
                }
            }
        }
    }
    Step::Flush {
        db,
        keep,
        rebuild,
        reship,
    }
}

/// A plan that refers to no record (a flush's rebuild resets by clearing).
pub(super) fn owned(plan: KeyPlan<'_>) -> KeyPlan<'static> {
    KeyPlan {
        reset: super::view::Reset::Clear,
        shape: plan.shape,
        writes: plan.writes,
        adds: plan.adds,
        keep_ttl: false,
    }
}

#[cfg(test)]
mod expiry_tests {
    //! A key with a TTL met by a concurrent element change: each side
    //! decides by stamps and the TTL, whenever the records arrive.

    use super::*;
    use crate::core::hlc::stamp_from_ms;
    use crate::core::merge::memory::MemoryKey;
    use crate::core::merge::rule::{merge_record, Outcome, Remote};
    use crate::core::merge::tests::hash;
    use crate::core::pending_elements::{ImageTtl, LocalWrite, PendingChange};
    use crate::core::protocol::{Shape, Stamp, Value};

    /// The image's TTL (Unix ms).
    const TTL: i64 = 10_000;
    const NODES: Nodes<'static> = Nodes {
        remote: "a",
        local: "b",
    };

    fn at(ms: i64) -> Stamp {
        Stamp {
            hlc: stamp_from_ms(ms as u64),
            index: 0,
        }
    }

    fn incr(field: &str, delta: i64) -> ElementChange {
        ElementChange::Incr {
            shape: Shape::Hash,
            elem: field.as_bytes().to_vec(),
            delta,
        }
    }

    /// The key after merging `remote` into `key`, or `None` when ignored.
    fn merged(
        key: &MemoryKey,
        pending: &[PendingChange],
        remote: Remote<'_>,
        stamp: Stamp,
        now_ms: i64,
    ) -> Option<MemoryKey> {
        match merge_record(pending, remote, stamp, NODES, key, now_ms) {
            Outcome::Ignored => None,
            Outcome::Apply { plan, .. } => {
                let mut k = key.clone();
                k.execute(&plan);
                Some(k)
            }
        }
    }

    /// The side that wrote the image (TTL at 10 s) meets the peer's
    /// increment made at 9 s, before the image reached the peer.
    #[test]
    fn a_change_made_before_the_ttl_of_a_pending_image_goes_with_its_key() {
        let image = PendingChange {
            stamp: at(5_000),
            seq: 1,
            seen: 0,
            write: LocalWrite::Image {
                ttl: Some(ImageTtl {
                    at_ms: TTL,
                    family: Some(Shape::Hash),
                }),
            },
        };
        let change = incr("f", 10);
        let before_ttl = at(9_000);
        // Still alive here: the change joins the key, which keeps its TTL.
        let alive = hash(&[("g", "1")]);
        let kept = merged(
            &alive,
            std::slice::from_ref(&image),
            Remote::Change(&change),
            before_ttl,
            9_500,
        );
        assert_eq!(kept, Some(hash(&[("f", "10"), ("g", "1")])));
        // Expired here: the change went with the key (before the rule, it
        // made a new key without a TTL, which lived on here only).
        let gone = merged(
            &MemoryKey::Missing,
            std::slice::from_ref(&image),
            Remote::Change(&change),
            before_ttl,
            TTL + 1,
        );
        assert_eq!(gone, None, "a change of the expired key came back");
        // A change made from the TTL on made a new key on its side: kept.
        let after_ttl = at(TTL);
        let fresh = merged(
            &MemoryKey::Missing,
            std::slice::from_ref(&image),
            Remote::Change(&change),
            after_ttl,
            TTL + 1,
        );
        assert_eq!(fresh, Some(hash(&[("f", "10")])));
        // An image without a TTL never takes a later change with it.
        let forever = PendingChange {
            write: LocalWrite::Image { ttl: None },
            ..image
        };
        let applied = merged(
            &MemoryKey::Missing,
            &[forever],
            Remote::Change(&change),
            before_ttl,
            TTL + 1,
        );
        assert_eq!(applied, Some(hash(&[("f", "10")])));
    }

    /// The side that made the increment at 9 s receives the image (TTL at
    /// 10 s, stamped 5 s) after 10 s: what it changed before 10 s went with
    /// the image's key, what it changed from 10 s on is a new key.
    #[test]
    fn an_image_that_arrives_expired_keeps_only_the_changes_made_after_its_ttl() {
        let pending = [
            PendingChange {
                stamp: at(9_000),
                seq: 3,
                seen: 0,
                write: LocalWrite::Change(incr("f", 10)),
            },
            PendingChange {
                stamp: at(TTL + 20),
                seq: 4,
                seen: 0,
                write: LocalWrite::Change(incr("h", 1)),
            },
        ];
        let here = hash(&[("f", "10"), ("h", "1")]);
        let image = Op::Set {
            key: b"k".to_vec(),
            value: Value::Hash(vec![(b"g".to_vec(), b"1".to_vec())]),
            expire_at_ms: Some(TTL),
        };
        let entry = Entry {
            db: 0,
            stamp: at(5_000),
            op: image,
        };
        let mut table = PendingWrites::new();
        let position = BatchPosition {
            seq: 1,
            applied_before: 0,
            now_ms: TTL + 50,
        };
        // Planned from the entry: an expired image is `Remote::Expired`.
        let step = plan_entry(&mut table, &entry, position, NODES, &here).expect("a plan");
        let Step::Key { plan, .. } = step else {
            panic!("an image applies: {step:?}");
        };
        assert_eq!(plan.reset, super::super::view::Reset::Clear);
        let ttl = ImageTtl {
            at_ms: TTL,
            family: Some(Shape::Hash),
        };
        let after = merged(&here, &pending, Remote::Expired(ttl), at(5_000), TTL + 50);
        assert_eq!(after, Some(hash(&[("h", "1")])));
        // Arriving before its TTL, the image holds the change made before
        // it (and takes it along at 10 s, as on its origin).
        let alive = merged(
            &here,
            &pending[..1],
            Remote::Image(&entry.op),
            at(5_000),
            9_500,
        );
        assert_eq!(alive, Some(hash(&[("f", "10"), ("g", "1")])));
    }
}
