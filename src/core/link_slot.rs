//! Which connection to the peer this node uses, and when a connection may
//! act on the decision its handshake reached.
//!
//! Why this exists: both nodes may dial at once, so two connections can
//! finish their handshakes close together, each with a decision (who is the
//! source of a full resync, who streams) taken on the hellos exchanged on
//! *that* connection. A hello is a snapshot: if one connection's session
//! has already changed this node's pairing state (it became a source, it
//! recorded the peer's stream) another connection's older hello no longer
//! describes it, and acting on that connection's decision merges or
//! discards data the two nodes never agreed on. So a decision is acted on
//! only when
//! 1. no session started on this node since its hello was built (the slot's
//!    `epoch`, bumped by every [`Slot::commit`]);
//! 2. no other connection to the peer is between its own decision and its
//!    commit (a *pending* claim is never replaced: a second one is told to
//!    retry, so two half-agreed connections cannot both act);
//! 3. the peer said `Ready` on the same connection after its own check
//!    (the session layer exchanges `Ready`; see `link::session`).
//!
//! A committed session may still be replaced by a newer connection whose
//! hello was built after it started (a restarted peer redials before this
//! node noticed the old link died): the rule of
//! [`keep_new_connection`] decides, as before.

use crate::core::protocol::Hello;

/// When two connections to the same peer exist, keep the one dialed by the
/// node with the smaller id (both sides decide the same). A restarted peer
/// re-dialing replaces its own stale connection.
pub fn keep_new_connection(existing_dialer: &str, new_dialer: &str) -> bool {
    new_dialer <= existing_dialer
}

/// The claim of one connection on this node's single link.
#[derive(Debug)]
struct Claim<T> {
    gen: u64,
    dialer: String,
    committed: bool,
    handle: T,
}

/// This node's one link to the peer. `T` is whatever the owner needs to
/// close a replaced connection (a socket in production, a marker in tests).
#[derive(Debug)]
pub struct Slot<T> {
    current: Option<Claim<T>>,
    epoch: u64,
}

/// What [`Slot::claim`] says to a connection that reached its decision.
#[derive(Debug, PartialEq, Eq)]
pub enum ClaimOutcome<T> {
    /// The connection holds the pending claim; `replaced` is a committed
    /// session it displaced (close it).
    Claimed {
        /// The displaced session's handle, to be shut down.
        replaced: Option<T>,
    },
    /// Not now, no fault: the peer and this node retry with fresh hellos.
    Retry(&'static str),
    /// A committed session between these nodes is kept instead.
    Duplicate,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            current: None,
            epoch: 0,
        }
    }
}

impl<T> Slot<T> {
    /// An empty slot.
    pub const fn new() -> Self {
        Slot {
            current: None,
            epoch: 0,
        }
    }

    /// Read before building a hello; handed back to [`Slot::claim`].
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A connection holds the link or is about to (the dialer waits).
    pub fn occupied(&self) -> bool {
        self.current.is_some()
    }

    /// A committed session is running.
    pub fn has_session(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.committed)
    }

    /// Is `gen` the connection holding the link?
    pub fn is_current(&self, gen: u64) -> bool {
        self.current.as_ref().is_some_and(|c| c.gen == gen)
    }

    /// A connection `gen`, dialed by `dialer`, whose hello was built at
    /// `hello_epoch`, reached its decision: may it ask the peer to act?
    pub fn claim(
        &mut self,
        gen: u64,
        dialer: &str,
        hello_epoch: u64,
        handle: T,
    ) -> ClaimOutcome<T> {
        if self.epoch != hello_epoch {
            return ClaimOutcome::Retry("a session started on this node during the handshake");
        }
        let replaced = match self.current.take() {
            None => None,
            Some(c) if !c.committed => {
                self.current = Some(c);
                return ClaimOutcome::Retry("another handshake with the peer is in progress");
            }
            Some(c) => {
                if !keep_new_connection(&c.dialer, dialer) {
                    self.current = Some(c);
                    return ClaimOutcome::Duplicate;
                }
                Some(c.handle)
            }
        };
        self.current = Some(Claim {
            gen,
            dialer: dialer.to_string(),
            committed: false,
            handle,
        });
        ClaimOutcome::Claimed { replaced }
    }

    /// The peer said `Ready`: the connection's decision takes effect.
    /// False if the claim is gone (then nothing may act).
    pub fn commit(&mut self, gen: u64) -> bool {
        match self.current.as_mut() {
            Some(c) if c.gen == gen && !c.committed => {
                c.committed = true;
                self.epoch += 1;
                true
            }
            _ => false,
        }
    }

    /// The connection `gen` ended (or gave up its claim); true if it held
    /// the link.
    pub fn release(&mut self, gen: u64) -> bool {
        if self.is_current(gen) {
            self.current = None;
            true
        } else {
            false
        }
    }
}

/// Did this node's state change, since it sent `sent`, in a way that
/// could change the pairing decision? `now` is the hello it would send
/// now (its `empty` already false if a client wrote since `sent`). The
/// text names what changed, for the log.
pub fn claims_changed(sent: &Hello, now: &Hello) -> Option<&'static str> {
    if sent.empty != now.empty {
        return Some("this node's dataset changed (it was empty)");
    }
    if sent.fresh != now.fresh {
        return Some("this node synced with the peer in the meantime");
    }
    if sent.source != now.source {
        return Some("SYNC.PAIR SOURCE was run in the meantime");
    }
    if sent.overflowed != now.overflowed {
        return Some("the table of un-acknowledged writes overflowed");
    }
    if sent.resume != now.resume || sent.stream_id != now.stream_id {
        return Some("this node's position in the peer's stream moved");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_keep_the_same_connection() {
        // a dialed conn X, b dialed conn Y. On a: existing X (dialer a), new Y (dialer b).
        // On b: existing Y (dialer b), new X (dialer a). Both must end with X.
        assert!(!keep_new_connection("a", "b"));
        assert!(keep_new_connection("b", "a"));
        // A restarted peer re-dialing replaces its own stale connection.
        assert!(keep_new_connection("b", "b"));
    }

    #[test]
    fn a_pending_claim_is_never_replaced() {
        let mut s: Slot<u8> = Slot::new();
        let e = s.epoch();
        assert_eq!(
            s.claim(1, "b", e, 1),
            ClaimOutcome::Claimed { replaced: None }
        );
        // Even the preferred dialer must retry while a claim is pending.
        assert!(matches!(s.claim(2, "a", e, 2), ClaimOutcome::Retry(_)));
        assert!(s.is_current(1));
        assert!(!s.commit(2));
        assert!(s.commit(1));
    }

    #[test]
    fn a_hello_older_than_a_session_start_is_stale() {
        let mut s: Slot<u8> = Slot::new();
        let before = s.epoch();
        assert!(matches!(
            s.claim(1, "a", before, 1),
            ClaimOutcome::Claimed { .. }
        ));
        assert!(s.commit(1));
        assert!(s.release(1));
        // The slot is free again, but a hello built before that session
        // started does not describe this node any more.
        assert!(matches!(s.claim(2, "a", before, 2), ClaimOutcome::Retry(_)));
        let now = s.epoch();
        assert!(matches!(
            s.claim(3, "a", now, 3),
            ClaimOutcome::Claimed { .. }
        ));
    }

    #[test]
    fn a_committed_session_yields_only_to_the_preferred_dialer() {
        let mut s: Slot<u8> = Slot::new();
        assert!(matches!(
            s.claim(1, "b", 0, 10),
            ClaimOutcome::Claimed { .. }
        ));
        assert!(s.commit(1));
        let e = s.epoch();
        assert_eq!(s.claim(2, "c", e, 20), ClaimOutcome::Duplicate);
        assert_eq!(
            s.claim(3, "a", e, 30),
            ClaimOutcome::Claimed { replaced: Some(10) }
        );
        // The replaced session's end does not free its successor's claim.
        assert!(!s.release(1));
        assert!(s.is_current(3));
    }

    /// Exhaustive interleavings of two nodes that both dial at once: each
    /// node sees both connections reach their decision in either order,
    /// each peer's `Ready` arrives in any order, and at most one
    /// connection ever acts, on both nodes the same one.
    #[test]
    fn dual_dial_never_acts_on_two_connections() {
        // Steps per node: claim X, claim Y, and for each claimed connection
        // the commit that follows the peer's Ready. A connection commits on
        // a node only if both nodes claimed it (both sent Ready).
        #[derive(Clone, Copy, Debug)]
        enum Step {
            Claim(usize, usize), // node, conn
            Commit(usize, usize),
        }
        let steps = [
            Step::Claim(0, 0),
            Step::Claim(0, 1),
            Step::Claim(1, 0),
            Step::Claim(1, 1),
            Step::Commit(0, 0),
            Step::Commit(0, 1),
            Step::Commit(1, 0),
            Step::Commit(1, 1),
        ];
        let dialer = ["a", "b"]; // conn 0 dialed by a, conn 1 by b
        let mut order: Vec<usize> = (0..steps.len()).collect();
        let mut checked = 0;
        permute(&mut order, 0, &mut |perm| {
            let mut slots = [Slot::<()>::new(), Slot::<()>::new()];
            let epochs = [[0u64; 2]; 2];
            let mut claimed = [[false; 2]; 2];
            let mut acted = [[false; 2]; 2];
            for &i in perm {
                match steps[i] {
                    Step::Claim(n, c) => {
                        if let ClaimOutcome::Claimed { .. } =
                            slots[n].claim(c as u64, dialer[c], epochs[n][c], ())
                        {
                            claimed[n][c] = true;
                        }
                    }
                    Step::Commit(n, c) => {
                        // The peer's Ready arrives only if the peer claimed.
                        if claimed[1 - n][c] && slots[n].commit(c as u64) {
                            acted[n][c] = true;
                        }
                    }
                }
            }
            for (n, on) in acted.iter().enumerate() {
                assert!(
                    !(on[0] && on[1]),
                    "node {n} acted on both connections: {perm:?}"
                );
            }
            for c in 0..2 {
                if acted[0][c] || acted[1][c] {
                    // Whoever acted, the other node acted on no other connection.
                    assert!(!acted[0][1 - c] && !acted[1][1 - c], "{perm:?}");
                }
            }
            checked += 1;
        });
        assert_eq!(checked, 40_320);
    }

    #[test]
    fn claims_that_changed_are_named() {
        let sent = Hello {
            protocol: crate::core::protocol::PROTOCOL_VERSION,
            node_id: "b".into(),
            databases: 16,
            rdb_version: 10,
            stream_id: 7,
            resume: None,
            nonce: vec![1; 32],
            auth: false,
            fresh: true,
            empty: true,
            source: false,
            overflowed: false,
            restored: None,
            replayed_keys: Vec::new(),
        };
        assert_eq!(claims_changed(&sent, &sent.clone()), None);
        // Only what the pairing decision reads counts, not the nonce.
        let other_nonce = Hello {
            nonce: vec![2; 32],
            ..sent.clone()
        };
        assert_eq!(claims_changed(&sent, &other_nonce), None);
        let wrote = Hello {
            empty: false,
            ..sent.clone()
        };
        assert!(claims_changed(&sent, &wrote).is_some_and(|w| w.contains("empty")));
        let synced = Hello {
            fresh: false,
            ..sent.clone()
        };
        assert!(claims_changed(&sent, &synced).is_some());
        let chosen = Hello {
            source: true,
            ..sent.clone()
        };
        assert!(claims_changed(&sent, &chosen).is_some());
        let moved = Hello {
            resume: Some(crate::core::protocol::Resume {
                stream_id: 9,
                seq: 3,
            }),
            ..sent.clone()
        };
        assert!(claims_changed(&sent, &moved).is_some());
    }

    fn permute(v: &mut Vec<usize>, k: usize, f: &mut impl FnMut(&[usize])) {
        if k == v.len() {
            f(v);
            return;
        }
        for i in k..v.len() {
            v.swap(k, i);
            permute(v, k + 1, f);
            v.swap(k, i);
        }
    }
}
