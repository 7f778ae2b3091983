//! One entry of a remote batch, planned against the pending table.
//!
//! Why a step per entry rather than a plan per batch (as `decide` does):
//! the rule reads the key (an increment adds to what is there), so each
//! entry must see the effect of the ones before it; the caller executes a
//! step before planning the next.

use super::rule::{list_verdict, merge_record, ListVerdict, Nodes, Outcome, Remote};
use super::view::{KeyPlan, KeyShape, KeyView};
use super::{check, ElementError};
use crate::core::list_op::ListOp;
use crate::core::pending::PendingWrites;
use crate::core::pending_elements::{shape_bit, PendingChange};
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
    /// A full resync from the peer starts.
    FullSyncBegin,
    /// The peer's full resync has sent every key.
    FullSyncEnd,
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
        Op::FlushDb | Op::FullSyncBegin | Op::FullSyncEnd | Op::Check { .. } => None,
    }
}

/// The entry to plan instead of `entry` when it is an image already past its
/// expiry at `now_ms` (Unix ms): a delete of the key.
///
/// Why: the key expired on the way. Planned as the image, the key's pending
/// changes made after it would be merged into a value this side never held;
/// planned as a delete they restart from nothing, as they did on the side
/// where the key had expired (and Redis would drop the image anyway).
pub fn expired_as_delete(entry: &Entry, now_ms: i64) -> Option<Entry> {
    match &entry.op {
        Op::Set {
            key,
            expire_at_ms: Some(at),
            ..
        } if *at <= now_ms => Some(Entry {
            db: entry.db,
            stamp: entry.stamp,
            op: Op::Delete { key: key.clone() },
        }),
        _ => None,
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

/// Plan one entry; `view` shows the entry's key ([`entry_key`]) as it is now.
pub fn plan_entry<'r>(
    table: &mut PendingWrites,
    entry: &'r Entry,
    at: BatchPosition,
    nodes: Nodes<'_>,
    view: &dyn KeyView,
) -> Result<Step<'r>, ElementError> {
    let (key, remote) = match &entry.op {
        Op::FullSyncBegin => return Ok(Step::FullSyncBegin),
        Op::FullSyncEnd => return Ok(Step::FullSyncEnd),
        Op::FlushDb => return Ok(plan_flush(table, entry, nodes)),
        Op::Check { key, digest } => {
            let concurrent = !table.changes_of(entry.db, key).is_empty();
            return Ok(Step::Check {
                db: entry.db,
                key,
                digest,
                concurrent,
            });
        }
        Op::Set { key, .. } | Op::Delete { key } => (key, Remote::Image(&entry.op)),
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
                        merge_record(&[], remote, entry.stamp, nodes, view)
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
                ListVerdict::NotList => merge(table, entry, key, remote, &pending, nodes, view),
                ListVerdict::Replay => match change {
                    ElementChange::List(op) => Step::List {
                        db: entry.db,
                        key,
                        op,
                    },
                    _ => merge(table, entry, key, remote, &pending, nodes, view),
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
    Ok(merge(table, entry, key, remote, &pending, nodes, view))
}

/// Run the rule; prune what a record that replaced the key cancelled.
fn merge<'r>(
    table: &mut PendingWrites,
    entry: &'r Entry,
    key: &'r [u8],
    remote: Remote<'r>,
    pending: &[PendingChange],
    nodes: Nodes<'_>,
    view: &dyn KeyView,
) -> Step<'r> {
    let concurrent = !pending.is_empty();
    match merge_record(pending, remote, entry.stamp, nodes, view) {
        Outcome::Ignored => Step::Lost,
        Outcome::Apply { plan, prune } => {
            if prune {
                table.prune_before(entry.db, key, entry.stamp, nodes.remote, nodes.local);
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
fn plan_flush<'r>(table: &mut PendingWrites, entry: &'r Entry, nodes: Nodes<'_>) -> Step<'r> {
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
        match merge_record(&pending, Remote::Flush, entry.stamp, nodes, &NoKey) {
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
    use super::*;
    use crate::core::protocol::{Stamp, Value};

    fn image(expire_at_ms: Option<i64>) -> Entry {
        Entry {
            db: 3,
            stamp: Stamp { hlc: 1, index: 0 },
            op: Op::Set {
                key: b"k".to_vec(),
                value: Value::String(b"v".to_vec()),
                expire_at_ms,
            },
        }
    }

    #[test]
    fn an_image_past_its_expiry_is_planned_as_a_delete() {
        let gone = expired_as_delete(&image(Some(1_000)), 1_000).expect("expired at now");
        assert_eq!(gone.db, 3);
        assert_eq!(gone.op, Op::Delete { key: b"k".to_vec() });
        assert!(expired_as_delete(&image(Some(1_001)), 1_000).is_none());
        assert!(expired_as_delete(&image(None), i64::MAX).is_none());
    }
}
