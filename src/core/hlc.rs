//! Hybrid logical clock.
//!
//! Why: last-writer-wins needs one total order of writes that both nodes
//! agree on, close to wall time (so "later" means what a user expects) yet
//! never going backwards when a wall clock does, and always moving past any
//! stamp seen from the peer (so a write made after seeing a remote write
//! wins over it). A stamp is one `u64`: the top 48 bits are milliseconds
//! since the Unix epoch, the low 16 bits a counter. Incrementing the whole
//! `u64` lets the counter carry into the milliseconds instead of wrapping.

use thiserror::Error;

/// Bits reserved for the logical counter.
pub const COUNTER_BITS: u32 = 16;

/// Build a stamp from milliseconds and a counter.
pub fn stamp_from_ms(ms: u64) -> u64 {
    ms << COUNTER_BITS
}

/// The wall-clock milliseconds part of a stamp.
pub fn stamp_ms(stamp: u64) -> u64 {
    stamp >> COUNTER_BITS
}

/// Why a remote stamp was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClockError {
    /// The peer's stamp is further ahead of our wall clock than allowed; taking
    /// it would pin both nodes' clocks in the future.
    #[error("peer clock is {ahead_ms} ms ahead of ours (max-clock-skew is {max_skew_ms} ms)")]
    TooFarAhead {
        /// How far ahead the remote stamp is.
        ahead_ms: u64,
        /// The configured limit.
        max_skew_ms: u64,
    },
}

/// The node's clock. Wall time is passed in by the caller so tests and the
/// simulation drive it by hand.
#[derive(Debug, Clone, Default)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// A clock that has issued nothing yet.
    pub fn new() -> Self {
        Self { last: 0 }
    }

    /// The latest stamp issued or observed.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Issue a stamp for a local event at wall time `wall_ms`: strictly
    /// greater than everything issued or observed before.
    pub fn now(&mut self, wall_ms: u64) -> u64 {
        let wall = stamp_from_ms(wall_ms);
        self.last = if wall > self.last {
            wall
        } else {
            self.last.saturating_add(1)
        };
        self.last
    }

    /// Take a remote stamp into account so later local stamps order after
    /// it, unless it is further ahead of `wall_ms` than `max_skew_ms`.
    pub fn observe(
        &mut self,
        remote: u64,
        wall_ms: u64,
        max_skew_ms: u64,
    ) -> Result<(), ClockError> {
        let remote_ms = stamp_ms(remote);
        if remote_ms > wall_ms.saturating_add(max_skew_ms) {
            return Err(ClockError::TooFarAhead {
                ahead_ms: remote_ms - wall_ms,
                max_skew_ms,
            });
        }
        if remote > self.last {
            self.last = remote;
        }
        Ok(())
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn follows_wall_clock() {
        let mut c = Hlc::new();
        assert_eq!(c.now(1000), stamp_from_ms(1000));
        assert_eq!(c.now(1005), stamp_from_ms(1005));
    }

    #[test]
    fn never_goes_back_when_wall_clock_does() {
        let mut c = Hlc::new();
        let a = c.now(1000);
        let b = c.now(900);
        assert!(b > a);
        assert_eq!(stamp_ms(b), 1000);
    }

    #[test]
    fn counter_carries_into_milliseconds() {
        let mut c = Hlc::new();
        let mut s = c.now(1000);
        for _ in 0..70_000 {
            s = c.now(1000);
        }
        assert!(stamp_ms(s) > 1000, "counter overflow must carry into ms");
    }

    #[test]
    fn observing_moves_past_remote() {
        let mut c = Hlc::new();
        c.now(1000);
        let remote = stamp_from_ms(1500) + 7;
        c.observe(remote, 1000, 60_000).unwrap();
        assert!(c.now(1000) > remote);
    }

    #[test]
    fn refuses_stamp_beyond_skew() {
        let mut c = Hlc::new();
        let err = c
            .observe(stamp_from_ms(200_000), 100_000, 60_000)
            .unwrap_err();
        assert_eq!(
            err,
            ClockError::TooFarAhead {
                ahead_ms: 100_000,
                max_skew_ms: 60_000
            }
        );
        assert_eq!(c.last(), 0, "a refused stamp must not move the clock");
    }

    proptest! {
        #[test]
        fn stamps_strictly_increase(events in proptest::collection::vec((0u64..5_000, any::<bool>(), 0u64..5_000), 1..200)) {
            let mut c = Hlc::new();
            let mut prev = 0u64;
            for (wall, is_remote, remote_ms) in events {
                if is_remote {
                    let r = stamp_from_ms(remote_ms);
                    let _ = c.observe(r, wall, 1_000);
                    prop_assert!(c.last() >= prev);
                    prev = c.last();
                } else {
                    let s = c.now(wall);
                    prop_assert!(s > prev);
                    prev = s;
                }
            }
        }
    }
}
