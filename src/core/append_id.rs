//! The ID an `XADD *` generated, worked out instead of read.
//!
//! Why: the event of an `XADD` does not say which ID it generated, and
//! reading it back (a seek to the end of the stream per append) was the
//! largest part of the module's cost per append. The server makes the ID
//! from the stream's last ID and its clock: `(clock, 0)` when the clock is
//! past the last ID's millisecond, else `(last ms, last seq + 1)`. The
//! clock it reads (7.0: `mstime()`, 7.2+: the command's time snapshot) is
//! never later than the clock read after the command, at its event. So when
//! the clock at the event has not passed the last ID's millisecond, the
//! append took the next sequence number of that millisecond, whatever the
//! exact moment it ran. Otherwise the ID is read; a run of worked-out IDs
//! is checked against the stream when it ends (`glue::capture`), which
//! catches a wall clock that stepped back between the command and its event.

use super::stream_merge::EntryId;

/// The ID an `XADD *` made after the stream's last ID `last`, judged from
/// `event_clock_ms` (the clock read at its event): `None` when the clock
/// has passed that millisecond (the ID must be read), or the sequence is
/// exhausted (the server would refuse or move on to the next millisecond).
pub fn next_auto_id(last: EntryId, event_clock_ms: u64) -> Option<EntryId> {
    if event_clock_ms > last.0 {
        return None;
    }
    Some((last.0, last.1.checked_add(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The server's rule (`streamNextID` of an `XADD *`), for the property.
    fn server_next(last: EntryId, command_clock_ms: u64) -> Option<EntryId> {
        if command_clock_ms > last.0 {
            Some((command_clock_ms, 0))
        } else {
            Some((last.0, last.1.checked_add(1)?))
        }
    }

    #[test]
    fn within_the_last_ids_millisecond_the_sequence_goes_on() {
        assert_eq!(next_auto_id((100, 7), 100), Some((100, 8)));
        // The last ID ahead of the clock (an explicit ID, a clock stepped
        // back earlier): the server keeps to that millisecond.
        assert_eq!(next_auto_id((500, 0), 100), Some((500, 1)));
    }

    #[test]
    fn a_clock_past_the_last_millisecond_means_reading_the_id() {
        assert_eq!(next_auto_id((100, 7), 101), None);
        assert_eq!(next_auto_id((100, u64::MAX), 100), None);
    }

    proptest! {
        /// Whenever a guess is made, it is the server's ID for every clock
        /// the command may have read (any clock not later than the event's).
        #[test]
        fn a_guess_is_the_servers_id(ms in 0u64..1_000, seq: u64, event in 0u64..1_000, back in 0u64..1_000) {
            if let Some(guess) = next_auto_id((ms, seq), event) {
                let command_clock = event.saturating_sub(back);
                prop_assert_eq!(server_next((ms, seq), command_clock), Some(guess));
            }
        }
    }
}
