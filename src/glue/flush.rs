//! Flush: turn the dirty log into one stamped batch of key images.
//!
//! Why at before-sleep and before each apply: one batch per event-loop
//! iteration keeps MULTI and scripts atomic on the peer and coalesces hot
//! keys; flushing before an apply means a remote image never lands on a
//! locally changed key that is not yet stamped (DESIGN §2).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use redis_module::{CallOptionsBuilder, CallReply, CallResult, Context};

use super::capture;
use super::ffi::{self, KeyKind};
use super::node::with_node;
use rustc_hash::FxHashSet as HashSet;

use crate::core::codec;
use crate::core::dirty::{reduce, Dirty, Expiry};
use crate::core::hlc::wall_ms;
use crate::core::image::{self, Reply};
use crate::core::list_op::ListOp;
use crate::core::merge::coalesce::coalesce;
use crate::core::pending_elements::{ImageTtl, LocalWrite};
use crate::core::protocol::{Batch, ElementChange, Entry, Frame, Op, Stamp, StreamGroup, Value};
use crate::core::stats::{LinkState, Stats};
use crate::core::unshared::Reason;
use crate::core::write_hint::format_score;
use crate::log;
use crate::state::Shared;

/// The entry that carries `key`'s current state: its image, or a tombstone.
pub fn key_op(ctx: &Context, db: u32, key: Vec<u8>) -> Result<Op, String> {
    let named = |e: String| {
        let shown = String::from_utf8_lossy(&key[..key.len().min(200)]).into_owned();
        format!("key {shown:?}: {e}")
    };
    Ok(match read_image(ctx, db, &key).map_err(named)? {
        Some((value, expire_at_ms)) => Op::Set {
            key,
            value,
            expire_at_ms,
        },
        None => Op::Delete { key },
    })
}

/// Detach a command reply from Redis's memory.
pub fn to_reply(r: &CallResult) -> Reply {
    match r {
        Ok(CallReply::String(s)) => Reply::Bytes(s.as_bytes().to_vec()),
        Ok(CallReply::I64(i)) => Reply::Int(i.to_i64()),
        Ok(CallReply::Null(_)) => Reply::Nil,
        Ok(CallReply::Array(a)) => Reply::Array(a.iter().map(|x| to_reply(&x)).collect()),
        Ok(_) => Reply::Error("unexpected reply type".into()),
        Err(e) => Reply::Error(e.to_utf8_string().unwrap_or_default()),
    }
}

pub(super) fn query(ctx: &Context, cmd: &str, args: &[&[u8]]) -> Result<Reply, String> {
    let opts = CallOptionsBuilder::new().errors_as_replies().build();
    let reply: CallResult = ctx.call_ext(cmd, &opts, args);
    match to_reply(&reply) {
        Reply::Error(e) => Err(format!("{cmd}: {e}")),
        r => Ok(r),
    }
}

/// Read the current image of `key` in `db`: `None` means it does not exist.
pub fn read_image(
    ctx: &Context,
    db: u32,
    key: &[u8],
) -> Result<Option<(Value, Option<i64>)>, String> {
    if !ffi::select_db(ctx, db as i32) {
        return Err(format!("db {db} does not exist"));
    }
    // A string longer than a frame can carry is not copied at all: the peer
    // would refuse the batch, and copying it could exhaust memory.
    let limit = Shared::get().map_or(usize::MAX, |s| {
        usize::try_from(s.config.max_frame_size).unwrap_or(usize::MAX)
    });
    let read = ffi::read_key(ctx, key, limit).ok_or("the key API is unavailable")?;
    let value = match read.kind {
        KeyKind::Missing => return Ok(None),
        KeyKind::String => match read.string {
            Some(bytes) => Value::String(bytes),
            None if read.string_len >= limit => {
                return Err(format!(
                    "the string is {} bytes, more than max-frame-size ({limit}): not replicated",
                    read.string_len
                ))
            }
            None => return Err("out of memory copying the string: not replicated".into()),
        },
        KeyKind::Hash => read_hash(ctx, key)?,
        KeyKind::List => Value::List(image::strings(&query(ctx, "LRANGE", &[key, b"0", b"-1"])?)?),
        KeyKind::Set => Value::Set(image::strings(&query(ctx, "SMEMBERS", &[key])?)?),
        KeyKind::ZSet => Value::ZSet(image::pairs(&query(
            ctx,
            "ZRANGE",
            &[key, b"0", b"-1", b"WITHSCORES"],
        )?)?),
        KeyKind::Stream => Value::Stream(image::parse_stream(&query(
            ctx,
            "XINFO",
            &[b"STREAM", key, b"FULL", b"COUNT", b"0"],
        )?)?),
        KeyKind::Module => match query(ctx, "DUMP", &[key])? {
            Reply::Bytes(b) => Value::Dump(b),
            Reply::Nil => return Ok(None),
            _ => return Err("DUMP returned an unexpected reply".into()),
        },
    };
    Ok(Some((value, read.expire_at_ms)))
}

/// A hash's fields and values and, on a server with hash field expiration (7.4+), each
/// field's absolute TTL, read in the same lock hold: the TTL travels with its field.
fn read_hash(ctx: &Context, key: &[u8]) -> Result<Value, String> {
    let items = image::pairs(&query(ctx, "HGETALL", &[key])?)?;
    if !super::server::field_ttls() || items.is_empty() {
        return Ok(Value::Hash(items));
    }
    let n = items.len().to_string();
    let mut args: Vec<&[u8]> = Vec::with_capacity(items.len() + 3);
    args.extend([key, b"FIELDS", n.as_bytes()]);
    args.extend(items.iter().map(|(f, _)| f.as_slice()));
    let ttls = image::ints(&query(ctx, "HPEXPIRETIME", &args)?)?;
    image::hash_with_ttls(items, &ttls)
}

/// A sorted-set member's score in the form the element rule holds it.
pub fn zscore(ctx: &Context, key: &[u8], member: &[u8]) -> Option<Vec<u8>> {
    ffi::zset_score(ctx, key, member).map(format_score)
}

/// The server's `DEBUG DIGEST-VALUE` of `key` in the selected db (test
/// builds: the element self-check); `None` if the server refuses it.
pub fn digest(ctx: &Context, key: &[u8]) -> Option<Vec<u8>> {
    match query(ctx, "DEBUG", &[b"DIGEST-VALUE", key]) {
        Ok(Reply::Array(mut a)) if a.len() == 1 => match a.pop() {
            Some(Reply::Bytes(b)) => Some(b),
            _ => None,
        },
        _ => None,
    }
}

/// The streams named `key` in any db, after a command that changed only
/// their consumer groups (the filter saw it; the db is unknown there): each
/// ships its groups (a marker read at flush, [`groups_record`]), or its
/// image where its commands must travel as images (`capture::as_image`).
fn stream_keys_in_dbs(ctx: &Context, keys: Vec<Vec<u8>>, databases: u32) -> Vec<Dirty> {
    let mut out = Vec::new();
    for key in keys {
        for db in 0..databases {
            if !ffi::select_db(ctx, db as i32) {
                continue;
            }
            if let Some((KeyKind::Stream, _, _)) = ffi::key_shape(ctx, &key) {
                out.push(groups_changed(ctx, db, key.clone()));
            }
        }
    }
    out
}

/// The groups of stream `key` of `db` (selected) changed.
fn groups_changed(ctx: &Context, db: u32, key: Vec<u8>) -> Dirty {
    let marker = [groups_marker()];
    if capture::as_image(ctx, db, &key, &marker) {
        Dirty::Key(db, key)
    } else {
        Dirty::Elements {
            db,
            key,
            changes: marker.to_vec(),
        }
    }
}

/// Stands for "the groups as they are at flush" in the dirty log.
pub fn groups_marker() -> ElementChange {
    ElementChange::List(ListOp::XGroups { groups: Vec::new() })
}

/// A key's element changes with every groups marker replaced by one record
/// of its groups read now, last (the state after every change of this
/// flush, which its entries' records bring to the peer first). `None`: the
/// groups cannot be read or are too large for a record; ship the image.
fn groups_record(
    ctx: &Context,
    db: u32,
    key: &[u8],
    mut changes: Vec<ElementChange>,
) -> Option<Vec<ElementChange>> {
    let marked = |c: &ElementChange| matches!(c, ElementChange::List(ListOp::XGroups { .. }));
    if !changes.iter().any(marked) {
        return Some(changes);
    }
    changes.retain(|c| !marked(c));
    ffi::select_db(ctx, db as i32);
    let groups = match read_groups(ctx, key) {
        Ok(g) => g,
        Err(e) => {
            log::verbose(&format!(
                "stream groups unreadable ({e}): shipping the stream whole"
            ));
            return None;
        }
    };
    let record = ElementChange::List(ListOp::XGroups { groups });
    if capture::as_image(ctx, db, key, std::slice::from_ref(&record)) {
        return None;
    }
    changes.push(record);
    Some(changes)
}

/// A stream's consumer groups, complete, without reading its entries past
/// what the largest group's pending entries need (`XINFO STREAM … FULL
/// COUNT n` bounds both the entries and each pending list by `n`, and 0
/// means all).
pub fn read_groups(ctx: &Context, key: &[u8]) -> Result<Vec<StreamGroup>, String> {
    let summary = query(ctx, "XINFO", &[b"GROUPS", key])?;
    let n = image::most_pending(&summary)?.max(1).to_string();
    let full = query(
        ctx,
        "XINFO",
        &[b"STREAM", key, b"FULL", b"COUNT", n.as_bytes()],
    )?;
    image::parse_stream_groups(&full)
}

/// Leave out images the peer could not take: larger than `max-frame-size`,
/// the peer would refuse the frame, the link would drop, and the batch would
/// be resent and refused forever. The key stays as it was on the peer; the
/// error names it (`last_error`, log).
pub fn drop_oversized(shared: &Shared, ops: &mut Vec<(u32, Op)>) {
    ops.retain(|(db, op)| !oversized(shared, *db, op, op_size(op)));
}

/// Is `op`, of [`op_size`] `size`, an image too large for one frame? If
/// so, say which key (log, `last_error`): the caller leaves it out (see
/// [`drop_oversized`]).
fn oversized(shared: &Shared, db: u32, op: &Op, size: usize) -> bool {
    // Room for the batch's own header and the link's encryption.
    const SLACK: usize = 4096;
    let limit = usize::try_from(shared.config.max_frame_size).unwrap_or(usize::MAX);
    let key = match op {
        Op::Set { key, .. } => key,
        Op::Delete { key } => {
            note_travels(db, key);
            return false;
        }
        _ => return false,
    };
    if size.saturating_mul(2) < limit {
        note_travels(db, key);
        return false;
    }
    // Near the limit: measure it exactly (rare, so the cost is fine).
    let n = codec::encoded_len(op).unwrap_or(usize::MAX);
    if n.saturating_add(SLACK) <= limit {
        note_travels(db, key);
        return false;
    }
    note_left_out(db, key);
    let shown = String::from_utf8_lossy(&key[..key.len().min(200)]).into_owned();
    let msg = format!(
        "key {shown:?} in db {db} encodes to {n} bytes, more than max-frame-size ({limit}) allows: not replicated"
    );
    log::warning(&msg);
    shared.set_error(msg);
    true
}

/// The key's image travels: its list commands may replay again.
fn note_travels(db: u32, key: &[u8]) {
    super::unshared::shared_again(db, key);
}

/// Its image is too large to travel: a later small list command on it
/// would replay on the peer's list, which lacks what was left out, so its
/// list commands ship as images (left out again, or travelling once the
/// key is small enough).
fn note_left_out(db: u32, key: &[u8]) {
    super::unshared::note(db, key, Reason::LeftOut);
}

/// A bound of the bytes `op` adds to a batch, without encoding it: what
/// resyncs use to cut their batches under the frame limit.
pub fn op_size(op: &Op) -> usize {
    match op {
        Op::Set { key, value, .. } => value.payload_bytes() + key.len() + 16,
        Op::Delete { key } | Op::Check { key, .. } => key.len() + 64,
        Op::Element { key, change, .. } => {
            key.len()
                + change.elem().map_or(0, <[u8]>::len)
                + 64
                + match change {
                    crate::core::protocol::ElementChange::Set { value, .. } => value.len(),
                    crate::core::protocol::ElementChange::List(l) => l.payload_bytes(),
                    _ => 0,
                }
        }
        Op::FlushDb | Op::FullSyncBegin | Op::FullSyncEnd | Op::ResumeBegin | Op::ResumeEnd => 8,
    }
}

/// Build, stamp and enqueue one batch from everything noted since the last
/// flush. Returns the number of entries shipped.
pub fn flush(ctx: &Context) -> usize {
    let Some(shared) = Shared::get() else {
        return 0;
    };
    // The last run of stream appends is checked (`capture::AppendRun`).
    capture::end_append_run(ctx);
    if shared.passive.load(Ordering::Relaxed) {
        capture::dirty().take();
        capture::take_stream_touched();
        capture::take_swapped();
        return 0;
    }
    let mut log_items = capture::dirty().take();
    super::apply::reships_flushed();
    for db in capture::take_swapped() {
        log_items.extend(
            super::fullsync::all_keys(ctx, db)
                .into_iter()
                .map(|k| Dirty::Key(db, k)),
        );
    }
    let streams = capture::take_stream_touched();
    if !streams.is_empty() {
        log_items.extend(stream_keys_in_dbs(ctx, streams, shared.databases));
    }
    for (db, key) in super::group_waiters::moved(ctx, shared.databases) {
        ffi::select_db(ctx, db as i32);
        log_items.push(groups_changed(ctx, db, key));
    }
    if log_items.is_empty() {
        return 0;
    }
    let saved_db = ffi::selected_db(ctx);
    let targets = reduce(log_items);
    // Read every image first (reading may fire events back into capture,
    // which only appends to the now-empty dirty log).
    let mut ops: Vec<(u32, Op)> = Vec::with_capacity(targets.len());
    // Element changes were all made since the last apply (this flush runs
    // before it): they had seen the peer's stream up to here.
    let seen = shared.outbox().applied_seq();
    // Not while this node is still taking a full resync: its keys may lack
    // what the source has not sent yet, so its digest proves nothing.
    let self_check = super::guard::test_hooks()
        && !shared.fresh.load(Ordering::Relaxed)
        && !super::fullsync::target_receiving();
    for t in targets {
        match t {
            Dirty::Flush(db) => ops.push((db, Op::FlushDb)),
            Dirty::Elements { db, key, changes } => {
                let Some(changes) = groups_record(ctx, db, &key, changes) else {
                    match key_op(ctx, db, key) {
                        Ok(op) => ops.push((db, op)),
                        Err(e) => {
                            log::warning(&format!("cannot read key image in db {db}: {e}"));
                            shared.set_error(format!("cannot read key image: {e}"));
                        }
                    }
                    continue;
                };
                // Element records are only captured for keys without a TTL
                // (capture checks at the event; a later EXPIRE in this
                // window turned the key into an image in `reduce`).
                let check = self_check
                    .then(|| {
                        ffi::select_db(ctx, db as i32);
                        digest(ctx, &key)
                    })
                    .flatten();
                if super::trace::on(&key) {
                    ffi::select_db(ctx, db as i32);
                    let now = read_image(ctx, db, &key);
                    super::trace::key(db, &key, || format!("state at flush: {now:?}"));
                }
                // Folded: a pipeline of INCRs of one key ships as one record.
                for change in coalesce(changes) {
                    let op = Op::Element {
                        key: key.clone(),
                        change,
                        shipped_in: 0,
                        seen,
                    };
                    ops.push((db, op));
                }
                if let Some(digest) = check {
                    ops.push((db, Op::Check { key, digest }));
                }
            }
            Dirty::Value {
                db,
                key,
                value,
                expiry,
            } => {
                let expire_at_ms = match expiry {
                    Expiry::Cleared => Some(None),
                    // Read only the expiry; missing means it expired since.
                    Expiry::Read => {
                        if ffi::select_db(ctx, db as i32) {
                            ffi::read_expiry(ctx, &key)
                        } else {
                            Some(None)
                        }
                    }
                };
                let op = match expire_at_ms {
                    Some(expire_at_ms) => Op::Set {
                        key,
                        value: Value::String(value),
                        expire_at_ms,
                    },
                    None => Op::Delete { key },
                };
                ops.push((db, op));
            }
            Dirty::Key(db, key) => match key_op(ctx, db, key) {
                Ok(op) => ops.push((db, op)),
                Err(e) => {
                    log::warning(&format!("cannot read key image in db {db}: {e}"));
                    shared.set_error(format!("cannot read key image: {e}"));
                }
            },
        }
    }
    ffi::select_db(ctx, saved_db);
    let groups = frame_groups(shared, ops);
    if groups.is_empty() {
        return 0;
    }
    // Writes by this process's clients before or during a full resync are
    // new writes: the sweep that follows must not delete them. Before the
    // resync starts the table of un-acknowledged writes holds them (nothing
    // is acknowledged before a session, and the resync's start copies the
    // table); only once the table has overflowed, or while the resync runs
    // (acknowledgements prune the table then), are they noted one by one.
    let fresh_untracked = shared.keeps_untracked_writes();
    if super::fullsync::target_receiving() {
        for (db, op) in groups.iter().flatten() {
            super::fullsync::note_local_op(*db, op);
        }
    }
    if fresh_untracked {
        for (db, op) in groups.iter().flatten() {
            // A delete too: the source's older image of the key may come after it.
            if let Op::Set { key, .. } | Op::Element { key, .. } | Op::Delete { key } = op {
                super::fullsync::note_untracked_write(*db, key);
            }
        }
    }
    if groups.len() > 1 {
        log::verbose(&format!(
            "one flush travels as {} batches (max-frame-size {})",
            groups.len(),
            shared.config.max_frame_size
        ));
    }
    groups
        .into_iter()
        .map(|ops| enqueue_batch(shared, ops, Stamping::Fresh))
        .sum()
}

/// Leave out the images too large for any frame ([`oversized`]) and cut
/// the rest, in order, into groups of at most half a frame of payload
/// each (the encoding adds to it): each group becomes one batch.
///
/// Why: the peer refuses a frame over `max-frame-size` and the link then
/// resends the same batch forever. One flush can pass the limit although
/// each key fits (a transaction or a pipeline writing many large values in
/// one event-loop iteration); its batches are applied in order, each
/// whole, as if the writes had been flushed in several iterations.
pub fn frame_groups(shared: &Shared, ops: Vec<(u32, Op)>) -> Vec<Vec<(u32, Op)>> {
    let budget = usize::try_from(shared.config.max_frame_size / 2).unwrap_or(usize::MAX);
    let mut groups: Vec<Vec<(u32, Op)>> = Vec::new();
    let mut bytes = 0usize;
    for (db, op) in ops {
        let n = op_size(&op);
        if oversized(shared, db, &op, n) {
            continue;
        }
        match groups.last_mut() {
            Some(group) if bytes.saturating_add(n) <= budget => {
                group.push((db, op));
                bytes = bytes.saturating_add(n);
            }
            _ => {
                groups.push(vec![(db, op)]);
                bytes = n;
            }
        }
    }
    groups
}

/// One batch of a resync being cut: its entries' stamps and its entries.
type Chunk = (Vec<Stamp>, Vec<(u32, Op)>);

/// How the entries of a batch get their order stamps.
pub enum Stamping {
    /// New local changes: one fresh clock stamp, recorded in the table.
    Fresh,
    /// A dirty-key resync: the stamps recorded in the table (DESIGN §3
    /// rule 2), re-recorded under the new batch.
    Recorded(Vec<Stamp>),
    /// A further batch of the same dirty-key resync (one too large for a
    /// frame travels as several), stamped and recorded the same way.
    RecordedMore(Vec<Stamp>),
    /// A full-resync (or restart-resume) chunk: the recorded stamp for
    /// keys still pending, the oldest possible stamp for the rest (any
    /// un-acknowledged write of the receiver wins over them); only pending
    /// keys are re-recorded.
    FullSync {
        /// Mark the batch as the start of a resync (the receiver accepts the gap).
        first: bool,
        /// A full resync, not a resume: a key's element changes count in
        /// its stamp and the image replaces them in the table (see
        /// [`enqueue_batch`]).
        whole: bool,
    },
}

/// Stamp `ops`, record them in the table as the mode says, and put the
/// batch in the outgoing FIFO. Returns the number of entries.
pub fn enqueue_batch(shared: &Arc<Shared>, ops: Vec<(u32, Op)>, stamping: Stamping) -> usize {
    let n = ops.len();
    let mut outbox = shared.outbox();
    let seq = outbox.next_seq();
    let untracked = shared.table_overflowed.load(Ordering::Relaxed);
    let resync = matches!(
        stamping,
        Stamping::Recorded(_) | Stamping::FullSync { first: true, .. }
    );
    // Entries whose element change the table records once the frame is
    // encoded: moved there then, not copied (a folded run of appends holds
    // every appended entry).
    let mut fresh = vec![false; n];
    let entries = with_node(|node| {
        let hlc = node.hlc.now(wall_ms());
        let mut entries = Vec::with_capacity(n);
        for (i, (db, mut op)) in ops.into_iter().enumerate() {
            let index = i as u32;
            let image_key = |op: &Op| match op {
                Op::Set { key, .. } | Op::Delete { key } => Some(key.clone()),
                _ => None,
            };
            // A full-resync chunk: the table's stamp of the key (its
            // element changes too in a full resync) or of the flush.
            let recorded = match &stamping {
                Stamping::FullSync { whole, .. } => match &op {
                    Op::FlushDb => node.pending.flush_stamp(db),
                    _ if *whole => image_key(&op).and_then(|k| node.pending.own_stamp(db, &k)),
                    _ => image_key(&op).and_then(|k| node.pending.key_stamp(db, &k)),
                },
                _ => None,
            };
            let stamp = match &stamping {
                Stamping::Fresh => Stamp { hlc, index },
                Stamping::Recorded(st) | Stamping::RecordedMore(st) => {
                    st.get(i).copied().unwrap_or(Stamp { hlc, index })
                }
                // The begin marker carries this node's clock: the target's
                // clock moves past every write made here before the resync,
                // so what it re-ships after meeting an image (stamped oldest)
                // is newer than those writes on both sides (found by the
                // restart simulation: a resume's images lost to the target's
                // flush while this node's newer changes survived it here).
                Stamping::FullSync { .. } if matches!(op, Op::FullSyncBegin | Op::ResumeBegin) => {
                    Stamp { hlc, index }
                }
                Stamping::FullSync { .. } => recorded.unwrap_or(Stamp { hlc: 0, index }),
            };
            if let Op::Element {
                key,
                change,
                shipped_in,
                seen,
            } = &mut op
            {
                // A fresh change is recorded under this batch; a re-sent one
                // is in the table already, under the seq that first carried it.
                if *shipped_in == 0 {
                    *shipped_in = seq;
                    fresh[i] = !untracked;
                }
                if super::trace::on(key) {
                    let what = format!("ship batch {seq} {stamp:?} {change:?} seen {seen}");
                    super::trace::key(db, key, || what);
                }
                entries.push(Entry { db, stamp, op });
                continue;
            }
            let key = match &op {
                Op::Set { key, .. } | Op::Delete { key } => Some(key),
                _ => None,
            };
            let ttl = ImageTtl::of(&op);
            match (&stamping, &op, key) {
                (Stamping::FullSync { whole, .. }, _, Some(k)) if recorded.is_some() => {
                    // In a full resync a key with pending element changes
                    // goes as this image, stamped as its newest change, and
                    // the image replaces them in the table, as it does on
                    // the peer (which never sees those changes: their
                    // batches precede the resync). Without it a peer's newer
                    // image and these changes ended differently on the two
                    // sides (found by the restart simulation). A resume
                    // keeps them: its target keeps its own table, and its
                    // un-acknowledged increments must still add up.
                    if *whole {
                        node.pending.forget_elements(db, k);
                    }
                    node.pending.record_key(db, k, stamp, seq, ttl);
                }
                (Stamping::FullSync { .. }, Op::FlushDb, _) if recorded.is_some() => {
                    node.pending.record_flush(db, stamp, seq);
                }
                (Stamping::FullSync { .. }, _, _) => {}
                // A flush is one entry, so it is recorded even when the
                // table tracks no keys (after an overflow): a fresh node
                // that flushes while a full resync comes in must see the
                // source's older images lose to it, as the source sees
                // its older keys lose to the flush (found by the simulation).
                (_, Op::FlushDb, _) => node.pending.record_flush(db, stamp, seq),
                (Stamping::Fresh, _, _) if untracked => {}
                (_, _, Some(k)) => node.pending.record_key(db, k, stamp, seq, ttl),
                (_, _, None) => {}
            }
            if let Some(k) = key {
                super::trace::key(db, k, || format!("ship batch {seq} {stamp:?} {op:?}"));
            }
            entries.push(Entry { db, stamp, op });
        }
        entries
    });
    let frame = Frame::Batch(Batch {
        seq,
        resync,
        entries,
    });
    let encoded = codec::encode(&frame);
    let Frame::Batch(batch) = frame else {
        return 0;
    };
    shared
        .history()
        .own_batch(shared.stream_id(), seq, &batch.entries);
    shared.own_seq_mirror.store(seq, Ordering::Relaxed);
    let table_over = with_node(|node| {
        for (entry, fresh) in batch.entries.into_iter().zip(fresh) {
            if let (
                true,
                Entry {
                    db,
                    stamp,
                    op:
                        Op::Element {
                            key, change, seen, ..
                        },
                },
            ) = (fresh, entry)
            {
                node.pending
                    .record_element(db, &key, stamp, seq, seen, change);
            }
        }
        let max = shared.max_pending_keys();
        node.pending.maintain(max, n);
        node.pending.over(max)
    });
    let bytes = match encoded {
        Ok(b) => b,
        Err(e) => {
            log::warning(&format!("cannot encode batch {seq}: {e}"));
            shared.set_error(format!("cannot encode batch: {e}"));
            return 0;
        }
    };
    let bytes = Arc::new(bytes);
    let dropped = if resync {
        let peer_stream = shared.peer_stream_id.load(Ordering::Relaxed);
        outbox.push_resync_batch(seq, bytes, n as u32, peer_stream)
    } else if matches!(stamping, Stamping::RecordedMore(_)) {
        outbox.push_resync_continuation(seq, bytes, n as u32)
    } else {
        outbox.push_batch(seq, bytes, n as u32)
    };
    drop(outbox);
    // An overflow never does work here: the next session start sees it
    // (the backlog no longer reaches back to the peer's position) and
    // resyncs; while the link is up the session is ended at once.
    if dropped && shared.stats.link() == LinkState::Up {
        log::warning(
            "backlog-size exceeded before the peer acknowledged: reconnecting to resync the peer",
        );
        shared.set_error("backlog overflow: resync needed");
        shared.request_drop_session();
    }
    if table_over && !shared.table_overflowed.swap(true, Ordering::Relaxed) {
        // Bound memory: stop tracking; a full resync will carry everything.
        // A fresh node (or one a session made the target) may still take
        // that resync: keep the keys its clients wrote (see `flush`).
        if shared.may_take_full_resync() {
            super::fullsync::note_untracked_writes(with_node(|n| n.pending.keys()));
        }
        super::fullsync::note_overflow();
        with_node(|n| n.pending.clear());
        super::apply::UNTRACKED_SINCE_START.store(true, std::sync::atomic::Ordering::Relaxed);
        log::warning("max-pending-keys exceeded: the peer will get a full resync");
        shared.set_error("pending-keys table overflow: full resync needed");
        shared.request_drop_session();
    }
    Stats::add(&shared.stats.ops_captured, n as u64);
    shared.outbox_cv.notify_all();
    n
}

/// Re-send what the peer has not acknowledged (dirty-key resync, DESIGN §3
/// rule 2 and §11). Returns the seq of the batch.
///
/// Every pending element change goes again exactly as first shipped (its
/// stamp, the seq that first carried it, its `seen`): the receiver skips
/// those it applied, since an increment is not idempotent. A key with a
/// pending image is re-sent as an image of its current content **stamped
/// now**, which replaces the key's entries in the table: that content holds
/// the peer's later changes, which an earlier stamp would make the peer
/// apply a second time (found by the simulation). Flushes keep their stamps.
pub fn build_dirty_key_resync(ctx: &Context) -> Option<u64> {
    let shared = Shared::get()?;
    let (changes, key_entries) =
        with_node(|n| (n.pending.element_changes(), n.pending.entries_by_stamp()));
    let imaged: HashSet<(u32, Vec<u8>)> = key_entries
        .iter()
        .filter_map(|(db, k, _)| k.clone().map(|k| (*db, k)))
        .collect();
    let saved_db = ffi::selected_db(ctx);
    let fresh_hlc = with_node(|n| n.hlc.now(wall_ms()));
    let mut out: Vec<(Stamp, u32, Op)> = Vec::new();
    let now = |out: &Vec<(Stamp, u32, Op)>| Stamp {
        hlc: fresh_hlc,
        index: u32::try_from(out.len()).unwrap_or(u32::MAX),
    };
    let mut converted: Vec<(u32, Vec<u8>)> = Vec::new();
    // Keys with a pending list command and no pending image: re-sent as an
    // image stamped now, like an imaged key (the peer may not hold the list
    // the commands start from any more; an image settles it by stamps).
    let mut listed: Vec<(u32, Vec<u8>)> = Vec::new();
    for (tk, list) in changes {
        let (db, key) = tk.parts();
        if imaged.contains(&(db, key.to_vec())) {
            converted.push((db, key.to_vec()));
            continue;
        }
        if list
            .iter()
            .any(|p| matches!(&p.write, LocalWrite::Change(c) if c.is_list()))
        {
            converted.push((db, key.to_vec()));
            listed.push((db, key.to_vec()));
            continue;
        }
        for p in list {
            let LocalWrite::Change(change) = p.write else {
                continue;
            };
            let op = Op::Element {
                key: key.to_vec(),
                change,
                shipped_in: p.seq,
                seen: p.seen,
            };
            out.push((p.stamp, db, op));
        }
    }
    for (db, key) in &listed {
        match key_op(ctx, *db, key.clone()) {
            Ok(op) => {
                let stamp = now(&out);
                out.push((stamp, *db, op));
            }
            Err(err) => log::warning(&format!("dirty-key resync cannot read a key: {err}")),
        }
    }
    for (db, key, e) in key_entries {
        match key {
            None => out.push((e.stamp, db, Op::FlushDb)),
            Some(key) => match key_op(ctx, db, key) {
                Ok(op) => {
                    let stamp = now(&out);
                    out.push((stamp, db, op));
                }
                Err(err) => log::warning(&format!("dirty-key resync cannot read a key: {err}")),
            },
        }
    }
    ffi::select_db(ctx, saved_db);
    with_node(|n| {
        for (db, key) in &converted {
            n.pending.forget_elements(*db, key);
        }
    });
    out.retain(|(_, db, op)| !oversized(shared, *db, op, op_size(op)));
    out.sort_by_key(|(stamp, _, _)| *stamp);
    // Cut into batches of at most half a frame each (the encoding adds to
    // the payload); the first is the resync batch, the others continue it.
    let budget = usize::try_from(shared.config.max_frame_size / 2).unwrap_or(usize::MAX);
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut bytes = 0usize;
    for (stamp, db, op) in out {
        let n = op_size(&op);
        match chunks.last_mut() {
            Some((stamps, ops)) if bytes.saturating_add(n) <= budget => {
                stamps.push(stamp);
                ops.push((db, op));
                bytes = bytes.saturating_add(n);
            }
            _ => {
                chunks.push((vec![stamp], vec![(db, op)]));
                bytes = n;
            }
        }
    }
    if chunks.is_empty() {
        chunks.push((Vec::new(), Vec::new()));
    }
    if chunks.len() > 1 {
        log::notice(&format!(
            "dirty-key resync in {} batches (max-frame-size {})",
            chunks.len(),
            shared.config.max_frame_size
        ));
    }
    let seq = shared.outbox().next_seq();
    for (i, (stamps, ops)) in chunks.into_iter().enumerate() {
        let stamping = if i == 0 {
            Stamping::Recorded(stamps)
        } else {
            Stamping::RecordedMore(stamps)
        };
        enqueue_batch(shared, ops, stamping);
    }
    Some(seq)
}
