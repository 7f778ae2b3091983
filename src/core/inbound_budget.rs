//! How many bytes of the peer's frames may wait for the main thread.
//!
//! Why bytes and not only messages: the link reader decodes a frame and
//! queues it for the main thread, which applies at most a budget per
//! event-loop iteration. A count bound (4,096 messages) lets a stream of
//! large images pile up gigabytes while the main thread is busy (seen with
//! Redis's own SPOP test: node b grew past 10 GB). Past this many bytes the
//! reader stops reading, and TCP back-pressure holds the rest in the peer's
//! backlog, which is bounded and resyncs when it overflows.

/// Bytes of queued frames past which the reader waits.
pub const MAX_BYTES: u64 = 64 << 20;

/// May a frame of `frame` bytes join a queue holding `queued` bytes?
/// One frame always may when the queue is empty, however large it is (a
/// resync batch larger than the bound must still get through).
pub fn may_queue(queued: u64, frame: u64, max: u64) -> bool {
    queued == 0 || queued.saturating_add(frame) <= max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_holds_except_for_one_frame_alone() {
        assert!(
            may_queue(0, 10 * MAX_BYTES, MAX_BYTES),
            "one huge frame alone"
        );
        assert!(may_queue(MAX_BYTES - 10, 10, MAX_BYTES));
        assert!(!may_queue(MAX_BYTES - 10, 11, MAX_BYTES));
        assert!(!may_queue(1, u64::MAX, MAX_BYTES));
    }
}
