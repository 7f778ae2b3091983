//! A stream's consumer groups as one record: the commands that turn this
//! node's groups into the origin's, without touching the stream's entries.
//!
//! Why: `XREADGROUP`, `XACK`, `XCLAIM` and `XAUTOCLAIM` change only a
//! group's state (last delivered ID, entries read, consumers, pending
//! entries), yet they used to ship the whole stream, entries and all: 5.7 MB
//! on the link per `XREADGROUP` of a 200k-entry stream, five reads a second.
//! The groups' state is small next to the entries (it grows with the pending
//! entries, not with the stream), and with no concurrent change the peer
//! holds the same entries, so the state alone settles it.
//!
//! Why a state and not the commands: those commands depend on time (idle
//! times, delivery times) and on clients blocked in `XREADGROUP`, which are
//! served without passing the command filter; the state read after them is
//! exact whoever made it.
//!
//! The plan only diffs: groups, consumers and pending entries already equal
//! are left alone. That matters for a pending entry whose stream entry was
//! deleted (Redis keeps it in the PEL after `XDEL` or a trim): no command
//! can create one, but an existing one is kept. Where the plan would have to
//! create one ([`GroupPlan::claims`] naming an ID the stream lacks), the
//! glue rebuilds the key locally from its own entries and the record's
//! groups (the image path, which knows how).

use std::collections::{BTreeMap, BTreeSet};

use super::image::Command;
use super::protocol::StreamGroup;

/// The commands that make this node's groups the origin's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupPlan {
    /// Run first, in order: group creates, destroys and ID moves, consumer
    /// creates and deletes, acknowledgements of entries no longer pending.
    pub commands: Vec<Command>,
    /// Then these `XCLAIM … FORCE`s, one per pending entry that differs;
    /// each needs its entry (the first element, its ID) in the stream.
    pub claims: Vec<(Vec<u8>, Command)>,
}

impl GroupPlan {
    /// Nothing differs.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty() && self.claims.is_empty()
    }
}

/// A pending entry: consumer, delivery time (Unix ms), delivery count.
type Nack<'a> = (&'a [u8], i64, i64);

fn pel(g: &StreamGroup) -> BTreeMap<&[u8], Nack<'_>> {
    g.consumers
        .iter()
        .flat_map(|c| {
            c.pending
                .iter()
                .map(move |(id, t, n)| (id.as_slice(), (c.name.as_slice(), *t, *n)))
        })
        .collect()
}

fn cmd(parts: &[&[u8]]) -> Command {
    parts.iter().map(|p| p.to_vec()).collect()
}

/// Plan the commands that turn `local` (this node's groups of `key`) into
/// `target` (the origin's).
pub fn plan(key: &[u8], local: &[StreamGroup], target: &[StreamGroup]) -> GroupPlan {
    let mut out = GroupPlan::default();
    let wanted: BTreeSet<&[u8]> = target.iter().map(|g| g.name.as_slice()).collect();
    for g in local {
        if !wanted.contains(g.name.as_slice()) {
            out.commands
                .push(cmd(&[b"XGROUP", b"DESTROY", key, &g.name]));
        }
    }
    for t in target {
        let here = local.iter().find(|g| g.name == t.name);
        let moved = here.is_none_or(|g| {
            g.last_delivered_id != t.last_delivered_id || g.entries_read != t.entries_read
        });
        if moved {
            let verb: &[u8] = if here.is_some() { b"SETID" } else { b"CREATE" };
            let mut c = cmd(&[b"XGROUP", verb, key, &t.name, &t.last_delivered_id]);
            if let Some(n) = t.entries_read {
                c.push(b"ENTRIESREAD".to_vec());
                c.push(n.to_string().into_bytes());
            }
            out.commands.push(c);
        }
        plan_members(&mut out, key, here, t);
    }
    out
}

/// Consumers and pending entries of one group (`here`: this node's, if any).
fn plan_members(out: &mut GroupPlan, key: &[u8], here: Option<&StreamGroup>, t: &StreamGroup) {
    let name = t.name.as_slice();
    let wanted: BTreeSet<&[u8]> = t.consumers.iter().map(|c| c.name.as_slice()).collect();
    let present: BTreeSet<&[u8]> = here
        .map(|g| g.consumers.iter().map(|c| c.name.as_slice()).collect())
        .unwrap_or_default();
    // Deleting a consumer drops its pending entries: plan the rest from
    // what is left.
    let mut nacks = here.map(pel).unwrap_or_default();
    for c in present.difference(&wanted) {
        out.commands
            .push(cmd(&[b"XGROUP", b"DELCONSUMER", key, name, c]));
        nacks.retain(|_, n| n.0 != *c);
    }
    for c in wanted.difference(&present) {
        out.commands
            .push(cmd(&[b"XGROUP", b"CREATECONSUMER", key, name, c]));
    }
    let goal = pel(t);
    let acked: Vec<&[u8]> = nacks
        .keys()
        .filter(|id| !goal.contains_key(*id))
        .copied()
        .collect();
    for ids in acked.chunks(super::image::CHUNK) {
        let mut c = cmd(&[b"XACK", key, name]);
        c.extend(ids.iter().map(|id| id.to_vec()));
        out.commands.push(c);
    }
    for (id, (consumer, time, count)) in goal {
        if nacks.get(id) == Some(&(consumer, time, count)) {
            continue;
        }
        let (t, n) = (time.to_string(), count.to_string());
        let c = cmd(&[
            b"XCLAIM",
            key,
            name,
            consumer,
            b"0",
            id,
            b"TIME",
            t.as_bytes(),
            b"RETRYCOUNT",
            n.as_bytes(),
            b"FORCE",
            b"JUSTID",
        ]);
        out.claims.push((id.to_vec(), c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::StreamConsumer;
    use proptest::prelude::*;

    /// Groups as the model holds them: name → (last ID, entries read,
    /// consumers, PEL by ID).
    type Model = BTreeMap<Vec<u8>, Group>;

    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    struct Group {
        last: Vec<u8>,
        read: Option<i64>,
        consumers: BTreeSet<Vec<u8>>,
        pel: BTreeMap<Vec<u8>, (Vec<u8>, i64, i64)>,
    }

    fn model(groups: &[StreamGroup]) -> Model {
        groups
            .iter()
            .map(|g| {
                let m = Group {
                    last: g.last_delivered_id.clone(),
                    read: g.entries_read,
                    consumers: g.consumers.iter().map(|c| c.name.clone()).collect(),
                    pel: pel(g)
                        .into_iter()
                        .map(|(id, (c, t, n))| (id.to_vec(), (c.to_vec(), t, n)))
                        .collect(),
                };
                (g.name.clone(), m)
            })
            .collect()
    }

    fn num(b: &[u8]) -> i64 {
        std::str::from_utf8(b).unwrap().parse().unwrap()
    }

    /// Redis's meaning of the commands the plan uses (every entry exists).
    fn run(m: &mut Model, c: &Command) {
        let s = |i: usize| c[i].clone();
        match (&c[0][..], c.get(1).map(|v| &v[..])) {
            (b"XGROUP", Some(b"DESTROY")) => {
                m.remove(&s(3));
            }
            (b"XGROUP", Some(verb @ (b"CREATE" | b"SETID"))) => {
                let read = (c.len() == 7).then(|| num(&c[6]));
                if verb == b"CREATE" {
                    assert!(!m.contains_key(&s(3)), "CREATE of an existing group");
                    m.insert(s(3), Group::default());
                }
                let g = m.get_mut(&s(3)).expect("SETID of a missing group");
                g.last = s(4);
                g.read = read;
            }
            (b"XGROUP", Some(b"CREATECONSUMER")) => {
                m.get_mut(&s(3)).unwrap().consumers.insert(s(4));
            }
            (b"XGROUP", Some(b"DELCONSUMER")) => {
                let g = m.get_mut(&s(3)).unwrap();
                g.consumers.remove(&s(4));
                g.pel.retain(|_, n| n.0 != s(4));
            }
            (b"XACK", _) => {
                let g = m.get_mut(&s(2)).unwrap();
                for id in &c[3..] {
                    g.pel.remove(id);
                }
            }
            (b"XCLAIM", _) => {
                let g = m.get_mut(&s(2)).unwrap();
                g.consumers.insert(s(3));
                g.pel.insert(s(5), (s(3), num(&c[7]), num(&c[9])));
            }
            other => panic!("unexpected command {other:?}"),
        }
    }

    /// A consumer's pending entries in a test: ID, time, count.
    type Pel<'a> = &'a [(&'a str, i64, i64)];

    fn group(
        name: &str,
        last: &str,
        read: Option<i64>,
        consumers: &[(&str, Pel<'_>)],
    ) -> StreamGroup {
        StreamGroup {
            name: name.into(),
            last_delivered_id: last.into(),
            entries_read: read,
            consumers: consumers
                .iter()
                .map(|(c, p)| StreamConsumer {
                    name: (*c).into(),
                    pending: p.iter().map(|(id, t, n)| ((*id).into(), *t, *n)).collect(),
                })
                .collect(),
        }
    }

    fn check(local: &[StreamGroup], target: &[StreamGroup]) -> GroupPlan {
        let p = plan(b"s", local, target);
        let mut m = model(local);
        for c in p.commands.iter().chain(p.claims.iter().map(|(_, c)| c)) {
            run(&mut m, c);
        }
        assert_eq!(m, model(target), "plan {p:?}");
        p
    }

    #[test]
    fn equal_groups_need_nothing() {
        let g = vec![group("g", "5-0", Some(5), &[("c", &[("4-0", 10, 1)])])];
        assert!(check(&g, &g).is_empty());
    }

    #[test]
    fn a_read_moves_the_group_and_adds_pending_entries_only() {
        let local = vec![group("g", "5-0", Some(5), &[("c", &[("4-0", 10, 1)])])];
        let target = vec![group(
            "g",
            "7-0",
            Some(7),
            &[("c", &[("4-0", 10, 1), ("6-0", 20, 1), ("7-0", 20, 1)])],
        )];
        let p = check(&local, &target);
        assert_eq!(p.commands.len(), 1, "one SETID: {p:?}");
        let claimed: Vec<&[u8]> = p.claims.iter().map(|(id, _)| id.as_slice()).collect();
        assert_eq!(claimed, [&b"6-0"[..], b"7-0"]);
    }

    #[test]
    fn an_ack_is_an_xack_and_nothing_else() {
        let local = vec![group(
            "g",
            "7-0",
            Some(7),
            &[("c", &[("4-0", 10, 1), ("6-0", 20, 1)])],
        )];
        let target = vec![group("g", "7-0", Some(7), &[("c", &[("6-0", 20, 1)])])];
        let p = check(&local, &target);
        assert_eq!(p.commands, vec![cmd(&[b"XACK", b"s", b"g", b"4-0"])]);
        assert!(p.claims.is_empty());
    }

    #[test]
    fn groups_and_consumers_come_and_go() {
        let local = vec![
            group("old", "1-0", None, &[]),
            group(
                "g",
                "7-0",
                Some(7),
                &[("gone", &[("4-0", 10, 1)]), ("c", &[])],
            ),
        ];
        let target = vec![
            group(
                "g",
                "7-0",
                Some(7),
                &[("c", &[("4-0", 30, 2)]), ("new", &[])],
            ),
            group("fresh", "0-0", None, &[("x", &[("2-0", 5, 1)])]),
        ];
        check(&local, &target);
        check(&target, &local);
        check(&[], &target);
        check(&target, &[]);
    }

    fn arb_groups() -> impl Strategy<Value = Vec<StreamGroup>> {
        let nack = (0u8..6, 0i64..3, 1i64..3);
        let consumer = (0u8..3, proptest::collection::vec(nack, 0..4));
        let g = (
            0u8..3,
            0u8..4,
            proptest::option::of(0i64..4),
            proptest::collection::vec(consumer, 0..3),
        );
        proptest::collection::vec(g, 0..3).prop_map(|gs| {
            let mut seen_groups = BTreeSet::new();
            gs.into_iter()
                .filter(|(n, ..)| seen_groups.insert(*n))
                .map(|(n, last, read, cs)| {
                    // A pending ID belongs to one consumer of the group.
                    let mut ids = BTreeSet::new();
                    let mut names = BTreeSet::new();
                    StreamGroup {
                        name: format!("g{n}").into(),
                        last_delivered_id: format!("{last}-0").into(),
                        entries_read: read,
                        consumers: cs
                            .into_iter()
                            .filter(|(c, _)| names.insert(*c))
                            .map(|(c, p)| StreamConsumer {
                                name: format!("c{c}").into(),
                                pending: p
                                    .into_iter()
                                    .filter(|(id, ..)| ids.insert(*id))
                                    .map(|(id, t, k)| (format!("{id}-0").into(), t, k))
                                    .collect(),
                            })
                            .collect(),
                    }
                })
                .collect()
        })
    }

    proptest! {
        /// Whatever the two sides' groups, the plan makes this node's the
        /// origin's, and plans nothing where they already agree.
        #[test]
        fn the_plan_reaches_the_target(local in arb_groups(), target in arb_groups()) {
            check(&local, &target);
            prop_assert!(plan(b"s", &target, &target).is_empty());
        }
    }
}
