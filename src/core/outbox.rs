//! The node's outgoing stream: encoded batches kept until the peer
//! acknowledges them (the backlog), interleaved with acknowledgements of the
//! peer's stream, in one FIFO.
//!
//! Why one FIFO: an acknowledgement must never overtake a batch made before
//! it (DESIGN §3 rule 1), so both travel through the same queue, in the
//! order they were enqueued. Why bounded in bytes: a peer that is away must
//! not make the server run out of memory; dropping an un-acknowledged batch
//! is recorded, and a reconnect then needs more than a partial resync.

use std::collections::VecDeque;
use std::sync::Arc;

/// One item of the outgoing FIFO.
#[derive(Debug, Clone)]
pub enum Item {
    /// An encoded [`crate::core::protocol::Frame::Batch`] with its seq.
    Batch {
        /// Stream sequence number.
        seq: u64,
        /// The frame bytes, ready for the socket.
        bytes: Arc<Vec<u8>>,
        /// Number of entries in the batch (for `ops_sent`).
        ops: u32,
    },
    /// Acknowledge the peer's stream up to this seq.
    Ack(u64),
}

/// How a reconnecting peer can be brought up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumePlan {
    /// Every batch after the peer's position is still here.
    Partial,
    /// Some batch after the peer's position was dropped (or the peer's
    /// position is from another stream): fresh images are needed.
    NeedResync,
}

/// Where a stream restored from a snapshot taken at wall time `saved_at_ms`
/// goes on, restarted at wall time `now_ms`: past every seq the node may
/// have issued after the snapshot, which the snapshot did not see and the
/// peer may have applied.
///
/// Why it grows with the time since the snapshot: a node can restart twice
/// from the same snapshot (a crash loop), and the second start must land
/// past every seq the first one issued. A node issues far fewer than 65,536
/// batches a millisecond (one per event-loop pass), so `65,536 × (now −
/// saved_at)` is past anything issued since the snapshot, by this or an
/// earlier restart; the fixed `2^32` covers a clock that stepped back. (A
/// jump to `now × 65,536` alone, as before, stood still for a minute when
/// the snapshot's own stream had started that way: the simulation's crash
/// loops reused seqs and stalled.)
pub fn restart_seq(saved_seq: u64, saved_at_ms: u64, now_ms: u64) -> u64 {
    saved_seq
        .saturating_add(1 << 32)
        .saturating_add(now_ms.saturating_sub(saved_at_ms).saturating_mul(1 << 16))
}

/// The outgoing FIFO and backlog.
#[derive(Debug)]
pub struct Outbox {
    items: VecDeque<Item>,
    /// Log index of `items[0]`: a writer's cursor survives pruning.
    first_index: u64,
    batch_bytes: usize,
    max_bytes: usize,
    /// Highest own seq issued.
    last_seq: u64,
    /// Highest own seq the peer acknowledged.
    acked_seq: u64,
    /// Highest own seq dropped from the backlog without acknowledgement.
    dropped_upto: u64,
    /// Highest peer seq applied here (what the next ack says).
    applied_seq: u64,
    /// The latest resync batch: its seq and log index.
    resync_mark: Option<(u64, u64)>,
    /// The peer's stream id and this node's applied position in it when
    /// the latest resync batch was pushed (see [`Outbox::resync_seen`]).
    resync_seen: (u64, u64),
    /// Log index up to which a writer has written the items.
    sent_index: u64,
}

impl Outbox {
    /// An empty stream whose backlog holds at most `max_bytes` of batches.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            items: VecDeque::new(),
            first_index: 0,
            batch_bytes: 0,
            max_bytes,
            last_seq: 0,
            acked_seq: 0,
            dropped_upto: 0,
            applied_seq: 0,
            resync_mark: None,
            resync_seen: (0, 0),
            sent_index: 0,
        }
    }

    /// Forget every queued batch and ack (a node that becomes the target of
    /// a full resync: its earlier writes are superseded by the source's data).
    pub fn discard_all(&mut self) {
        self.first_index = self.end_index();
        self.items.clear();
        self.batch_bytes = 0;
        self.dropped_upto = self.last_seq;
    }

    /// The latest resync batch (seq, log index), if any is newer than `after_seq`.
    pub fn resync_after(&self, after_seq: u64) -> Option<(u64, u64)> {
        self.resync_mark.filter(|(seq, _)| *seq > after_seq)
    }

    /// How far the peer's stream `peer_stream` was applied here when the
    /// latest resync batch was made, if that batch was made in that stream.
    ///
    /// Why a writer serving a full resync sends this ack *before* the
    /// resync: it starts at the resync batch, so the acks queued before it
    /// never go out, yet the images were read after those peer writes were
    /// applied. A peer still holding them as un-acknowledged would add its
    /// own increments on top of images that already hold them. The stream
    /// id guards a peer that restarted with a new stream: a position in its
    /// old stream would acknowledge writes this node never saw.
    pub fn resync_seen(&self, peer_stream: u64) -> Option<u64> {
        let (stream, seq) = self.resync_seen;
        (self.resync_mark.is_some() && stream != 0 && stream == peer_stream && seq > 0)
            .then_some(seq)
    }

    /// The seq the next batch gets.
    pub fn next_seq(&self) -> u64 {
        self.last_seq + 1
    }

    /// Highest seq issued.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Highest seq the peer acknowledged.
    pub fn acked_seq(&self) -> u64 {
        self.acked_seq
    }

    /// Highest peer seq applied here.
    pub fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    /// Bytes of batches held.
    pub fn backlog_bytes(&self) -> usize {
        self.batch_bytes
    }

    /// Change the byte bound (CONFIG SET); takes effect at the next push.
    pub fn set_max_bytes(&mut self, max: usize) {
        self.max_bytes = max;
    }

    /// Log index one past the last item: where a new writer starts.
    pub fn end_index(&self) -> u64 {
        self.first_index + self.items.len() as u64
    }

    /// Append a batch. Returns `true` if the bound forced dropping a batch
    /// the peer had not acknowledged (the caller must then force a resync).
    ///
    /// The batch just pushed is never dropped, even if it alone exceeds the
    /// bound (a resync batch larger than the backlog must still go out, or
    /// every resync would immediately ask for the next one).
    pub fn push_batch(&mut self, seq: u64, bytes: Arc<Vec<u8>>, ops: u32) -> bool {
        self.push(seq, bytes, ops, false, seq)
    }

    /// Append a resync batch: it covers every earlier batch, so dropping
    /// those is not an overflow, and a writer serving a peer that needs a
    /// resync starts from it. `peer_stream` is the peer's stream id that
    /// [`Outbox::applied_seq`] refers to now (0: none known).
    pub fn push_resync_batch(
        &mut self,
        seq: u64,
        bytes: Arc<Vec<u8>>,
        ops: u32,
        peer_stream: u64,
    ) -> bool {
        self.resync_seen = (peer_stream, self.applied_seq);
        self.push(seq, bytes, ops, true, seq)
    }

    /// Append a batch that continues the latest resync batch (a resync too
    /// large for one frame travels as several): the bound never drops it or
    /// anything from the resync batch on while it is pushed, as for a single
    /// resync batch, so a resync larger than the backlog still goes out whole.
    pub fn push_resync_continuation(&mut self, seq: u64, bytes: Arc<Vec<u8>>, ops: u32) -> bool {
        let keep_from = self.resync_mark.map_or(seq, |(first, _)| first);
        self.push(seq, bytes, ops, false, keep_from)
    }

    /// Append a batch, then drop the oldest items while over the bound,
    /// never a batch from `keep_from` on (the one just pushed, or the whole
    /// resync it continues).
    fn push(
        &mut self,
        seq: u64,
        bytes: Arc<Vec<u8>>,
        ops: u32,
        resync: bool,
        keep_from: u64,
    ) -> bool {
        debug_assert_eq!(seq, self.last_seq + 1);
        self.last_seq = seq;
        if resync {
            self.resync_mark = Some((seq, self.end_index()));
            self.dropped_upto = self.dropped_upto.max(seq.saturating_sub(1));
        }
        self.batch_bytes += bytes.len();
        self.items.push_back(Item::Batch { seq, bytes, ops });
        let mut dropped = false;
        while self.batch_bytes > self.max_bytes {
            match self.items.front() {
                Some(Item::Batch { seq: s, .. }) if *s >= keep_from => break,
                None => break,
                _ => {}
            }
            if let Some(Item::Batch { seq, bytes, .. }) = self.items.pop_front() {
                self.batch_bytes -= bytes.len();
                // Batches before a resync mark are covered by it.
                if seq > self.acked_seq && seq > self.dropped_upto {
                    self.dropped_upto = self.dropped_upto.max(seq);
                    dropped = true;
                }
            }
            self.first_index += 1;
        }
        dropped
    }

    /// Record that the peer's stream is applied up to `seq` and queue the
    /// acknowledgement behind every batch already queued. Consecutive acks
    /// coalesce, but only while the last one is not yet written.
    pub fn push_ack(&mut self, seq: u64) {
        self.applied_seq = seq;
        let unsent = self.end_index() > self.sent_index;
        if let (true, Some(Item::Ack(last))) = (unsent, self.items.back_mut()) {
            *last = seq;
            return;
        }
        self.items.push_back(Item::Ack(seq));
        self.prune_sent_acks();
    }

    /// The writer has written every item before log index `index`: acks
    /// before it are done with (batches stay until acknowledged).
    pub fn mark_sent(&mut self, index: u64) {
        self.sent_index = self.sent_index.max(index);
        self.prune_sent_acks();
    }

    fn prune_sent_acks(&mut self) {
        while let Some(Item::Ack(_)) = self.items.front() {
            if self.first_index >= self.sent_index {
                break;
            }
            self.items.pop_front();
            self.first_index += 1;
        }
    }

    /// Continue a stream saved with a snapshot: its last batch before the
    /// restart is unknown (the snapshot saw `saved_seq`; batches issued after
    /// it may have reached the peer), so the stream goes on far past it and
    /// nothing before that can be resent from here (a resync serves it).
    pub fn restore(&mut self, saved_seq: u64, applied: u64, saved_at_ms: u64, now_ms: u64) {
        self.last_seq = restart_seq(saved_seq, saved_at_ms, now_ms);
        self.dropped_upto = self.last_seq;
        self.acked_seq = saved_seq;
        self.applied_seq = applied;
    }

    /// The peer applied our stream up to `seq`, past the last seq this
    /// process issued: seqs were issued twice (two starts from one snapshot
    /// with the clock set back in between). The stream goes on after `seq`,
    /// and the batches issued here up to it are dropped unsent: the peer
    /// already applied other batches under those seqs. Returns whether it
    /// moved (the caller renumbers the table's entries of those batches).
    pub fn skip_past(&mut self, seq: u64) -> bool {
        if seq <= self.last_seq {
            return false;
        }
        self.last_seq = seq;
        self.dropped_upto = self.dropped_upto.max(seq);
        self.acknowledge(seq);
        true
    }

    /// Set the applied position without queuing an ack (restart, resync).
    pub fn set_applied(&mut self, seq: u64) {
        self.applied_seq = seq;
    }

    /// The peer acknowledged our stream up to `seq`: drop those batches and
    /// acks that lie before any kept batch.
    pub fn acknowledge(&mut self, seq: u64) {
        if seq <= self.acked_seq {
            return;
        }
        self.acked_seq = seq.min(self.last_seq);
        while let Some(front) = self.items.front() {
            let drop = match front {
                Item::Batch { seq: s, .. } => *s <= self.acked_seq,
                // Only acks the writer already sent; an unsent one must go out.
                Item::Ack(_) => self.first_index < self.sent_index,
            };
            if !drop {
                break;
            }
            if let Some(Item::Batch { bytes, .. }) = self.items.pop_front() {
                self.batch_bytes -= bytes.len();
            }
            self.first_index += 1;
        }
    }

    /// Items from log index `from` to the end, and the new cursor. A cursor
    /// behind the front (items pruned meanwhile) resumes at the front.
    pub fn items_from(&self, from: u64) -> (Vec<Item>, u64) {
        let start = from.max(self.first_index) - self.first_index;
        let items = self.items.iter().skip(start as usize).cloned().collect();
        (items, self.end_index())
    }

    /// Can a peer that applied our stream up to `peer_pos` be served from the backlog?
    pub fn plan_resume(&self, peer_pos: u64) -> ResumePlan {
        if peer_pos > self.last_seq || peer_pos < self.dropped_upto {
            return ResumePlan::NeedResync;
        }
        let first_kept = self.items.iter().find_map(|i| match i {
            Item::Batch { seq, .. } => Some(*seq),
            Item::Ack(_) => None,
        });
        match first_kept {
            Some(first) if first > peer_pos + 1 => ResumePlan::NeedResync,
            _ => ResumePlan::Partial,
        }
    }

    /// Start a new writer with a partial resync: the batches after `peer_pos`,
    /// the ack to send after them, and the cursor to go on from; everything
    /// before the cursor counts as sent from now on.
    ///
    /// Why in one step: an ack pushed between taking this snapshot and
    /// marking it sent would be merged into an earlier, unsent ack item that
    /// lies before the new writer's cursor, and would never go out (the peer
    /// then waits for an acknowledgement forever on a quiet link).
    pub fn start_partial(&mut self, peer_pos: u64) -> (Vec<Item>, u64, u64) {
        let batches = self.batches_after(peer_pos);
        let end = self.end_index();
        self.mark_sent(end);
        (batches, self.applied_seq, end)
    }

    /// Batches with seq above `peer_pos`, in order, for a partial resync.
    pub fn batches_after(&self, peer_pos: u64) -> Vec<Item> {
        self.items
            .iter()
            .filter_map(|i| match i {
                Item::Batch { seq, .. } if *seq > peer_pos => Some(i.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: usize) -> Arc<Vec<u8>> {
        Arc::new(vec![0; n])
    }

    #[test]
    fn acks_stay_behind_earlier_batches() {
        let mut o = Outbox::new(1000);
        o.push_batch(1, b(10), 1);
        o.push_ack(7);
        o.push_batch(2, b(10), 1);
        let (items, end) = o.items_from(0);
        assert_eq!(end, 3);
        assert!(matches!(items[0], Item::Batch { seq: 1, .. }));
        assert!(matches!(items[1], Item::Ack(7)));
        assert!(matches!(items[2], Item::Batch { seq: 2, .. }));
    }

    #[test]
    fn an_ack_after_a_sent_ack_is_queued_not_merged() {
        let mut o = Outbox::new(1000);
        o.push_ack(1);
        let (items, cursor) = o.items_from(0);
        assert_eq!(items.len(), 1);
        o.mark_sent(cursor);
        o.push_ack(2);
        let (items, _) = o.items_from(cursor);
        assert!(
            matches!(items[..], [Item::Ack(2)]),
            "the new ack must reach the writer: {items:?}"
        );
        // Sent acks do not pile up when this side writes nothing.
        for s in 3..100 {
            let (_, c) = o.items_from(0);
            o.mark_sent(c);
            o.push_ack(s);
        }
        assert!(o.items_from(0).0.len() <= 2);
    }

    #[test]
    fn acknowledging_our_batch_keeps_an_unsent_ack_of_theirs() {
        let mut o = Outbox::new(1000);
        o.push_batch(1, b(10), 1);
        let (_, c) = o.items_from(0);
        o.mark_sent(c);
        o.push_ack(7);
        o.acknowledge(1);
        let (items, _) = o.items_from(c);
        assert!(matches!(items[..], [Item::Ack(7)]), "{items:?}");
    }

    #[test]
    fn a_resync_batch_larger_than_the_backlog_is_kept() {
        let mut o = Outbox::new(15);
        o.push_batch(1, b(10), 1);
        assert!(
            !o.push_resync_batch(2, b(40), 1, 0),
            "dropping a batch covered by the resync is not an overflow"
        );
        assert_eq!(
            o.items_from(0).0.len(),
            1,
            "only the big resync batch stays"
        );
        assert_eq!(o.resync_after(0).map(|(s, _)| s), Some(2));
        assert!(
            o.push_batch(3, b(10), 1),
            "dropping the un-acknowledged resync batch is"
        );
    }

    #[test]
    fn an_ack_pushed_after_a_partial_start_reaches_the_new_writer() {
        let mut o = Outbox::new(1000);
        o.push_batch(1, b(10), 1);
        // The old writer wrote the batch, then the link died before this ack went out.
        let (_, c) = o.items_from(0);
        o.mark_sent(c);
        o.push_ack(13);
        let (batches, ack, cursor) = o.start_partial(0);
        assert_eq!(batches.len(), 1);
        assert_eq!(ack, 13, "the new writer acknowledges what is applied");
        o.push_ack(15);
        let (items, _) = o.items_from(cursor);
        assert!(
            matches!(items[..], [Item::Ack(15)]),
            "an ack pushed after the writer started must be after its cursor: {items:?}"
        );
    }

    #[test]
    fn a_resync_in_several_batches_larger_than_the_backlog_is_kept_whole() {
        let mut o = Outbox::new(25);
        o.push_batch(1, b(10), 1);
        assert!(!o.push_resync_batch(2, b(20), 1, 0));
        assert!(!o.push_resync_continuation(3, b(20), 1));
        assert!(!o.push_resync_continuation(4, b(20), 1));
        let (items, _) = o.items_from(0);
        let seqs: Vec<u64> = items
            .iter()
            .filter_map(|i| match i {
                Item::Batch { seq, .. } => Some(*seq),
                Item::Ack(_) => None,
            })
            .collect();
        assert_eq!(seqs, vec![2, 3, 4], "every batch of the resync stays");
        let (seq, index) = o.resync_after(0).expect("marked");
        assert_eq!(seq, 2, "the writer starts at the resync's first batch");
        assert!(matches!(
            o.items_from(index).0[0],
            Item::Batch { seq: 2, .. }
        ));
        assert_eq!(o.plan_resume(1), ResumePlan::Partial);
        assert!(
            o.push_batch(5, b(10), 1),
            "a later ordinary batch may drop the un-acknowledged resync"
        );
    }

    #[test]
    fn a_resync_remembers_how_far_the_peer_stream_was_applied_in_which_stream() {
        let mut o = Outbox::new(1000);
        assert_eq!(o.resync_seen(7), None, "no resync batch yet");
        o.push_ack(5);
        o.push_batch(1, b(10), 1);
        o.push_ack(6);
        o.push_resync_batch(2, b(10), 1, 7);
        o.push_ack(9);
        assert_eq!(o.resync_seen(7), Some(6), "applied when the batch was made");
        assert_eq!(
            o.resync_seen(8),
            None,
            "a peer with a new stream never had those writes acknowledged by this position"
        );
        let (_, index) = o.resync_after(0).expect("marked");
        let (items, _) = o.items_from(index);
        assert!(
            !items.iter().any(|i| matches!(i, Item::Ack(6))),
            "a writer starting at the resync skips the earlier acks: {items:?}"
        );
        o.set_applied(0);
        o.push_resync_batch(3, b(10), 1, 8);
        assert_eq!(o.resync_seen(8), None, "nothing applied of the new stream");
        let mut fresh = Outbox::new(1000);
        fresh.push_resync_batch(1, b(10), 1, 0);
        assert_eq!(fresh.resync_seen(0), None, "no peer stream known");
    }

    #[test]
    fn consecutive_acks_coalesce() {
        let mut o = Outbox::new(1000);
        o.push_ack(1);
        o.push_ack(2);
        assert_eq!(o.items_from(0).0.len(), 1);
        assert_eq!(o.applied_seq(), 2);
    }

    #[test]
    fn acknowledge_prunes_and_cursor_survives() {
        let mut o = Outbox::new(1000);
        o.push_batch(1, b(10), 1);
        o.push_batch(2, b(10), 1);
        let (_, cursor) = o.items_from(0);
        o.acknowledge(1);
        assert_eq!(o.backlog_bytes(), 10);
        o.push_batch(3, b(10), 1);
        let (items, _) = o.items_from(cursor);
        assert_eq!(items.len(), 1);
        assert!(matches!(items[0], Item::Batch { seq: 3, .. }));
    }

    #[test]
    fn overflow_drops_oldest_and_forbids_partial() {
        let mut o = Outbox::new(25);
        assert!(!o.push_batch(1, b(10), 1));
        assert!(!o.push_batch(2, b(10), 1));
        assert!(
            o.push_batch(3, b(10), 1),
            "dropping un-acked batch 1 must be reported"
        );
        assert!(o.backlog_bytes() <= 25);
        assert_eq!(o.plan_resume(0), ResumePlan::NeedResync);
        assert_eq!(o.plan_resume(1), ResumePlan::Partial);
        assert_eq!(o.batches_after(1).len(), 2);
    }

    #[test]
    fn dropping_acknowledged_batches_is_not_an_overflow() {
        let mut o = Outbox::new(15);
        o.push_batch(1, b(10), 1);
        o.acknowledge(1);
        assert!(!o.push_batch(2, b(10), 1));
    }

    #[test]
    fn discard_all_empties_and_forbids_partial() {
        let mut o = Outbox::new(1000);
        o.push_batch(1, b(10), 1);
        o.push_batch(2, b(10), 1);
        o.discard_all();
        assert_eq!(o.backlog_bytes(), 0);
        assert_eq!(o.plan_resume(0), ResumePlan::NeedResync);
        let (items, _) = o.items_from(0);
        assert!(items.is_empty());
    }

    #[test]
    fn peer_ahead_of_us_needs_resync() {
        let o = Outbox::new(100);
        assert_eq!(o.plan_resume(5), ResumePlan::NeedResync);
        assert_eq!(o.plan_resume(0), ResumePlan::Partial);
    }

    #[test]
    fn a_restored_stream_never_reuses_a_seq_of_an_earlier_restart() {
        let t0 = 1_800_000_000_000u64;
        let mut o = Outbox::new(1 << 20);
        o.restore(5, 9, t0, t0 + 1);
        let first = o.last_seq();
        assert!(first > 5 + (1 << 31));
        assert_eq!(o.applied_seq(), 9);
        // The peer says it applied something we no longer hold: a resync.
        assert_eq!(o.plan_resume(7), ResumePlan::NeedResync);
        // 100,000 batches a second for a day, then a restart from the
        // same snapshot: the new stream starts past all of them.
        let issued = first + 100_000 * 86_400;
        let mut again = Outbox::new(1 << 20);
        again.restore(5, 9, t0, t0 + 86_400_000);
        assert!(again.last_seq() > issued);
        // A clock that stepped back still moves past the saved seq.
        let mut back = Outbox::new(1 << 20);
        back.restore(first, 9, t0, 0);
        assert!(back.last_seq() > first);
    }

    #[test]
    fn a_peer_ahead_of_a_restored_stream_moves_it_on() {
        let mut o = Outbox::new(1 << 20);
        o.restore(5, 9, 0, 0);
        let base = o.last_seq();
        o.push_batch(base + 1, Arc::new(vec![1]), 1);
        // The peer applied seqs up to base + 10 from an earlier start.
        assert_eq!(o.plan_resume(base + 10), ResumePlan::NeedResync);
        assert!(o.skip_past(base + 10));
        assert_eq!(o.last_seq(), base + 10);
        assert_eq!(o.next_seq(), base + 11);
        assert_eq!(o.acked_seq(), base + 10);
        assert!(
            o.batches_after(0).is_empty(),
            "the reused batch is not sent"
        );
        assert!(!o.skip_past(base + 3), "never backwards");
    }

    #[test]
    fn a_crash_loop_on_one_snapshot_never_reuses_a_seq() {
        // A stream that itself began at a restart (its seqs far above the
        // clock's), snapshotted, then started twice from that snapshot
        // 300 ms apart: the second start is past what the first issued in
        // between (one batch per event-loop pass, far below 65,536 a ms).
        let t0 = 1_800_000_000_000u64;
        let saved = restart_seq(5, t0 - 10, t0) + 1_000;
        let first = restart_seq(saved, t0 + 50, t0 + 400);
        let issued_meanwhile = 300 * 1_000;
        let second = restart_seq(saved, t0 + 50, t0 + 700);
        assert!(second > first + issued_meanwhile, "{second} {first}");
    }
}
