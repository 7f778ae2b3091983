//! Who syncs whom when two nodes connect.
//!
//! Why pure and symmetric: both nodes evaluate this on the same two hellos
//! and must reach complementary answers (one source, one target; or both
//! streaming; or both refusing), or data would flow both ways at once.
//! A node is *fresh* until it has synced with its peer since it started:
//! a restarted node is fresh (its dataset may be stale), so the survivor
//! becomes the source of an authoritative full resync and the restarted
//! node never pushes old values or deleted keys back.

use crate::core::restart::{both_restarted, SavedPosition};

/// What one side knows about itself when it says hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairInfo {
    /// Has not synced with the peer since this process started.
    pub fresh: bool,
    /// Holds no keys.
    pub empty: bool,
    /// The operator chose this node's data to win a first contact.
    pub source: bool,
    /// Its recorded position refers to the other side's current stream.
    pub knows_peer: bool,
    /// Its table of un-acknowledged writes overflowed: its stream cannot be
    /// resumed safely, only replaced by a full resync from it.
    pub overflowed: bool,
    /// It restarted from a snapshot that carried its pairing state and has
    /// not caught up yet: how far its data goes.
    pub restored: Option<SavedPosition>,
}

/// This node's part in the sync that starts now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Both histories are intact: resume the streams (partial or dirty-key).
    Stream,
    /// Send the whole dataset; the peer takes it.
    Source,
    /// Receive the whole dataset from the peer. With `discard_local` this
    /// node's own queued writes lose too (the operator chose the other
    /// side at a first contact); without it, writes made by this process
    /// are new writes and are kept (only data loaded from disk is stale).
    Target {
        /// Drop this node's un-acknowledged writes.
        discard_local: bool,
    },
    /// Do not pair; the text says what the operator must do.
    Refuse(String),
}

/// Decide this node's role from its own and the peer's hello.
/// `me_first` says whether this node's id sorts before the peer's (the
/// tie-break when nothing else decides).
pub fn decide(me: PairInfo, them: PairInfo, me_first: bool) -> Role {
    match (me.fresh, them.fresh) {
        (false, false) if me.overflowed || them.overflowed => {
            match (me.overflowed, them.overflowed) {
                (true, false) => Role::Source,
                // Our table is intact: our un-acknowledged writes still win
                // over the source's older images.
                (false, true) => Role::Target {
                    discard_local: false,
                },
                // Both tables are incomplete: no merge is possible. The node
                // with the smaller id wins; the other's writes since its last
                // acknowledged batch are replaced (documented limit).
                _ => {
                    if me_first {
                        Role::Source
                    } else {
                        Role::Target {
                            discard_local: true,
                        }
                    }
                }
            }
        }
        (false, false) => match (me.knows_peer, them.knows_peer) {
            (true, true) => Role::Stream,
            // One side's record of the other was replaced (another node
            // spoke to it in between): the side whose record is intact
            // is the source.
            (false, true) => Role::Target {
                discard_local: false,
            },
            (true, false) => Role::Source,
            (false, false) => {
                if me_first {
                    Role::Source
                } else {
                    Role::Target {
                        discard_local: false,
                    }
                }
            }
        },
        (false, true) => Role::Source,
        // This node restarted: what it loaded from disk is stale, what its
        // clients wrote since is new. Unless the operator chose the peer at
        // a first contact that the peer acted on and this node never did
        // (the link died between the two `Ready`s): then this node's data
        // still loses, as chosen.
        (true, false) => Role::Target {
            discard_local: them.source,
        },
        // Both restarted from snapshots of this pairing (a power loss at
        // both sites): if neither lacks a batch the other's data holds,
        // they simply resume their streams.
        (true, true) if !me.source && !them.source && me.restored.is_some() => {
            match (me.restored, them.restored) {
                (Some(a), Some(b)) => match both_restarted(a, b) {
                    Ok(()) => Role::Stream,
                    Err(why) => Role::Refuse(why),
                },
                _ => first_contact(me, them),
            }
        }
        (true, true) => first_contact(me, them),
    }
}

/// Two fresh nodes that cannot simply resume: the operator's choice, else
/// the empty side takes the other's data, else they refuse.
fn first_contact(me: PairInfo, them: PairInfo) -> Role {
    match (me.source, them.source) {
        (true, true) => Role::Refuse("both nodes were chosen as the source: choose one".into()),
        (true, false) => Role::Source,
        (false, true) => Role::Target { discard_local: true },
        (false, false) => match (me.empty, them.empty) {
            (true, true) => Role::Stream,
            (false, true) => Role::Source,
            (true, false) => Role::Target { discard_local: false },
            (false, false) => Role::Refuse(
                "both nodes hold data and have never synced: run SYNC.PAIR SOURCE on the node whose data should win (the other node's data is replaced)".into(),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<PairInfo> {
        let mut v = Vec::new();
        for bits in 0..32u8 {
            v.push(PairInfo {
                fresh: bits & 1 != 0,
                empty: bits & 2 != 0,
                source: bits & 4 != 0,
                knows_peer: bits & 8 != 0,
                overflowed: bits & 16 != 0,
                restored: None,
            });
        }
        v
    }

    #[test]
    fn both_sides_always_agree() {
        for a in all() {
            for b in all() {
                let (ra, rb) = (decide(a, b, true), decide(b, a, false));
                let ok = matches!(
                    (&ra, &rb),
                    (Role::Stream, Role::Stream)
                        | (Role::Source, Role::Target { .. })
                        | (Role::Target { .. }, Role::Source)
                        | (Role::Refuse(_), Role::Refuse(_))
                );
                assert!(ok, "{a:?} / {b:?} -> {ra:?} / {rb:?}");
            }
        }
    }

    fn info(fresh: bool, empty: bool) -> PairInfo {
        PairInfo {
            fresh,
            empty,
            source: false,
            knows_peer: !fresh,
            overflowed: false,
            restored: None,
        }
    }

    #[test]
    fn survivor_is_the_source_of_a_restarted_node() {
        assert_eq!(
            decide(info(false, false), info(true, false), true),
            Role::Source
        );
        assert_eq!(
            decide(info(true, false), info(false, false), true),
            Role::Target {
                discard_local: false
            }
        );
    }

    #[test]
    fn first_contact_rules() {
        assert_eq!(
            decide(info(true, true), info(true, true), true),
            Role::Stream
        );
        assert_eq!(
            decide(info(true, false), info(true, true), false),
            Role::Source
        );
        assert!(
            matches!(decide(info(true, false), info(true, false), true), Role::Refuse(m) if m.contains("SYNC.PAIR SOURCE"))
        );
        let chosen = PairInfo {
            source: true,
            ..info(true, false)
        };
        assert_eq!(decide(chosen, info(true, false), false), Role::Source);
        assert_eq!(
            decide(info(true, false), chosen, true),
            Role::Target {
                discard_local: true
            }
        );
    }

    #[test]
    fn the_operators_choice_survives_a_first_contact_only_one_side_acted_on() {
        // A took the source role (and is no longer fresh); B never did.
        let a = PairInfo {
            source: true,
            ..info(false, false)
        };
        assert_eq!(decide(a, info(true, false), true), Role::Source);
        assert_eq!(
            decide(info(true, false), a, false),
            Role::Target {
                discard_local: true
            }
        );
    }

    #[test]
    fn both_restarted_from_matching_snapshots_resume_else_refuse() {
        let a = SavedPosition {
            stream_id: 1,
            own_seq: 5,
            peer_stream_id: 2,
            applied_seq: 3,
        };
        let b = SavedPosition {
            stream_id: 2,
            own_seq: 3,
            peer_stream_id: 1,
            applied_seq: 5,
        };
        let node = |restored| PairInfo {
            restored: Some(restored),
            ..info(true, false)
        };
        assert_eq!(decide(node(a), node(b), true), Role::Stream);
        assert_eq!(decide(node(b), node(a), false), Role::Stream);
        // B's snapshot lacks A's batch 5: neither may simply go on.
        let behind = SavedPosition {
            applied_seq: 4,
            ..b
        };
        assert!(matches!(
            decide(node(a), node(behind), true),
            Role::Refuse(_)
        ));
        assert!(matches!(
            decide(node(behind), node(a), false),
            Role::Refuse(_)
        ));
        // A restored node meeting a survivor takes its data, as before.
        assert_eq!(
            decide(node(b), info(false, false), false),
            Role::Target {
                discard_local: false
            }
        );
    }

    #[test]
    fn an_overflowed_table_makes_its_node_the_source() {
        let over = PairInfo {
            overflowed: true,
            ..info(false, false)
        };
        assert_eq!(decide(over, info(false, false), false), Role::Source);
        assert_eq!(
            decide(info(false, false), over, true),
            Role::Target {
                discard_local: false
            }
        );
    }
}
