//! Tests of the merge rule: the model's scripted cases and seeded two-node
//! runs on one key (property tests), executed with [`MemoryKey`].

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::coalesce::coalesce;
use super::entry::{plan_entry, BatchPosition, Step};
use super::memory::MemoryKey;
use super::rule::Nodes;
use crate::core::pending::PendingWrites;
use crate::core::protocol::{ElementChange, Entry, Op, Shape, Stamp, Value};

const KEY: &[u8] = b"k";
const IDS: [&str; 2] = ["a", "b"];

/// A local write in a test script.
#[derive(Debug, Clone)]
enum W {
    Set(Shape, &'static str, String),
    Del(Shape, &'static str),
    Incr(Shape, &'static str, i64),
    DelKey,
    Image(Option<Value>),
}

enum Msg {
    Batch(u64, Vec<Entry>),
    Ack(u64),
}

struct Node {
    key: MemoryKey,
    table: PendingWrites,
    clock: u64,
    seq: u64,
    applied: u64,
    lost: u64,
}

struct Pair {
    /// Ship each batch's element changes folded (`coalesce`), as the glue does.
    fold: bool,
    nodes: [Node; 2],
    /// `wires[i]`: from node i.
    wires: [VecDeque<Msg>; 2],
}

/// A hash key holding `pairs`.
pub(super) fn hash(pairs: &[(&str, &str)]) -> MemoryKey {
    MemoryKey::Elements(
        Shape::Hash,
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect(),
    )
}

/// The plain, local effect of a write (what Redis does on the origin).
fn local_effect(key: &mut MemoryKey, w: &W) {
    let plan = |shape: Shape, elem: &str, value: Option<Vec<u8>>| super::view::KeyPlan {
        reset: super::view::Reset::Keep,
        shape: Some(shape),
        writes: vec![(elem.as_bytes().to_vec(), value)],
        adds: Vec::new(),
        keep_ttl: true,
    };
    match w {
        W::Set(s, e, v) => key.execute(&plan(*s, e, Some(v.as_bytes().to_vec()))),
        W::Del(s, e) => key.execute(&plan(*s, e, None)),
        W::Incr(s, e, d) => {
            let cur = super::view::KeyView::get(key, e.as_bytes());
            let v = super::counter::increment(*s, cur.as_deref(), *d);
            key.execute(&plan(*s, e, Some(v)));
        }
        W::DelKey => *key = MemoryKey::Missing,
        W::Image(v) => {
            *key = match v {
                None => MemoryKey::Missing,
                Some(v) => MemoryKey::from_image(&Op::Set {
                    key: KEY.to_vec(),
                    value: v.clone(),
                    expire_at_ms: None,
                }),
            }
        }
    }
}

fn shipped(w: &W, seq: u64, seen: u64) -> Op {
    let change = |c| Op::Element {
        key: KEY.to_vec(),
        change: c,
        shipped_in: seq,
        seen,
    };
    let b = |s: &str| s.as_bytes().to_vec();
    match w {
        W::Set(shape, e, v) => change(ElementChange::Set {
            shape: *shape,
            elem: b(e),
            value: b(v),
        }),
        W::Del(shape, e) => change(ElementChange::Del {
            shape: *shape,
            elem: b(e),
        }),
        W::Incr(shape, e, d) => change(ElementChange::Incr {
            shape: *shape,
            elem: b(e),
            delta: *d,
        }),
        W::DelKey => change(ElementChange::DelKey),
        W::Image(None) => Op::Delete { key: KEY.to_vec() },
        W::Image(Some(v)) => Op::Set {
            key: KEY.to_vec(),
            value: v.clone(),
            expire_at_ms: None,
        },
    }
}

impl Pair {
    fn new(init: MemoryKey) -> Self {
        let node = || Node {
            key: init.clone(),
            table: PendingWrites::new(),
            clock: 0,
            seq: 0,
            applied: 0,
            lost: 0,
        };
        Pair {
            fold: true,
            nodes: [node(), node()],
            wires: [VecDeque::new(), VecDeque::new()],
        }
    }

    /// Node `i` runs `writes` as one batch (one clock value, an index each).
    fn batch(&mut self, i: usize, writes: &[W]) {
        let n = &mut self.nodes[i];
        n.clock += 1;
        n.seq += 1;
        let mut ops = Vec::new();
        let mut run: Vec<ElementChange> = Vec::new();
        let fold = self.fold;
        let end_run = |run: &mut Vec<ElementChange>, ops: &mut Vec<Op>| {
            let changes = std::mem::take(run);
            let changes = if fold { coalesce(changes) } else { changes };
            ops.extend(changes.into_iter().map(|change| Op::Element {
                key: KEY.to_vec(),
                change,
                shipped_in: n.seq,
                seen: n.applied,
            }));
        };
        for w in writes {
            local_effect(&mut n.key, w);
            match shipped(w, n.seq, n.applied) {
                Op::Element { change, .. } => run.push(change),
                image => {
                    end_run(&mut run, &mut ops);
                    ops.push(image);
                }
            }
        }
        end_run(&mut run, &mut ops);
        let mut entries = Vec::new();
        for (index, op) in ops.into_iter().enumerate() {
            let stamp = Stamp {
                hlc: n.clock,
                index: index as u32,
            };
            match &op {
                Op::Element { change, .. } => {
                    n.table
                        .record_element(0, KEY, stamp, n.seq, n.applied, change.clone())
                }
                _ => n.table.record_key(0, KEY, stamp, n.seq, None),
            }
            entries.push(Entry { db: 0, stamp, op });
        }
        self.wires[i].push_back(Msg::Batch(n.seq, entries));
    }

    /// Deliver the next message from node `from`; false if none.
    fn deliver(&mut self, from: usize) -> bool {
        let Some(msg) = self.wires[from].pop_front() else {
            return false;
        };
        let to = 1 - from;
        let n = &mut self.nodes[to];
        match msg {
            Msg::Ack(seq) => n.table.acknowledge(seq),
            Msg::Batch(seq, entries) => {
                let nodes = Nodes {
                    remote: IDS[from],
                    local: IDS[to],
                };
                let at = BatchPosition {
                    seq,
                    applied_before: n.applied,
                    now_ms: 0,
                };
                for e in &entries {
                    n.clock = n.clock.max(e.stamp.hlc);
                    match plan_entry(&mut n.table, e, at, nodes, &n.key.clone()) {
                        Ok(Step::Key { plan, .. }) => n.key.execute(&plan),
                        Ok(Step::Lost) => n.lost += 1,
                        other => panic!("unexpected step {other:?}"),
                    }
                }
                n.applied = seq;
                self.wires[to].push_back(Msg::Ack(seq));
            }
        }
        true
    }

    fn drain(&mut self) {
        while self.deliver(0) | self.deliver(1) {}
    }
}

fn s(v: &str) -> String {
    v.to_string()
}

#[test]
fn model_case_i_remote_image_between_pending_increments() {
    let mut p = Pair::new(hash(&[("e1", "i"), ("e3", "10")]));
    p.batch(0, &[W::Incr(Shape::Hash, "e3", 1)]);
    p.batch(
        1,
        &[W::Image(Some(Value::Hash(vec![
            (b"e1".to_vec(), b"x".to_vec()),
            (b"e3".to_vec(), b"100".to_vec()),
        ])))],
    );
    p.batch(
        0,
        &[
            W::Incr(Shape::Hash, "e3", 2),
            W::Set(Shape::Hash, "e1", s("a")),
        ],
    );
    p.batch(1, &[W::Incr(Shape::Hash, "e3", 5)]);
    p.deliver(1);
    p.deliver(1);
    p.drain();
    let want = hash(&[("e1", "a"), ("e3", "107")]);
    assert_eq!(p.nodes[0].key, want);
    assert_eq!(p.nodes[1].key, want);
}

#[test]
fn model_case_ii_remote_delete_saw_only_its_own_increment() {
    let mut p = Pair::new(hash(&[("e3", "10")]));
    p.batch(
        0,
        &[
            W::Set(Shape::Hash, "e3", s("5")),
            W::Incr(Shape::Hash, "e3", 2),
        ],
    );
    p.batch(1, &[W::Incr(Shape::Hash, "e3", 4)]);
    p.batch(1, &[W::Del(Shape::Hash, "e3")]);
    p.deliver(1);
    p.deliver(1);
    p.drain();
    assert_eq!(p.nodes[0].key, hash(&[("e3", "7")]));
    assert_eq!(p.nodes[1].key, hash(&[("e3", "7")]));
}

#[test]
fn model_case_iv_c_concurrent_increments_add_on_top_of_a_set() {
    let mut p = Pair::new(hash(&[("e3", "1")]));
    p.batch(
        0,
        &[
            W::Set(Shape::Hash, "e3", s("5")),
            W::Incr(Shape::Hash, "e3", 2),
        ],
    );
    p.batch(1, &[W::Incr(Shape::Hash, "e3", 3)]);
    p.deliver(0);
    p.drain();
    assert_eq!(p.nodes[0].key, hash(&[("e3", "10")]));
    assert_eq!(p.nodes[1].key, hash(&[("e3", "10")]));
}

#[test]
fn a_field_added_while_the_other_side_deletes_the_key_survives() {
    let mut p = Pair::new(hash(&[("f1", "x")]));
    p.batch(0, &[W::DelKey]);
    p.batch(1, &[W::Set(Shape::Hash, "f3", s("v"))]);
    p.drain();
    assert_eq!(p.nodes[0].key, hash(&[("f3", "v")]));
    assert_eq!(p.nodes[1].key, hash(&[("f3", "v")]));
}

#[test]
fn overflowing_increments_wrap_the_same_on_both_sides() {
    let mut p = Pair::new(MemoryKey::Elements(
        Shape::Str,
        BTreeMap::from([(Vec::new(), (i64::MAX - 10).to_string().into_bytes())]),
    ));
    p.batch(0, &[W::Incr(Shape::Str, "", 7)]);
    p.batch(1, &[W::Incr(Shape::Str, "", 8)]);
    p.drain();
    let want = MemoryKey::Elements(
        Shape::Str,
        BTreeMap::from([(Vec::new(), (i64::MIN + 4).to_string().into_bytes())]),
    );
    assert_eq!(p.nodes[0].key, want);
    assert_eq!(p.nodes[1].key, want);
}

#[test]
fn remote_change_older_than_a_pending_image_is_ignored() {
    let mut p = Pair::new(hash(&[("f", "1")]));
    p.batch(1, &[W::Set(Shape::Hash, "f", s("2"))]);
    p.batch(0, &[W::Image(Some(Value::List(vec![b"x".to_vec()])))]);
    p.deliver(1);
    assert_eq!(
        p.nodes[0].lost, 0,
        "b's stamp 1 is after a's? no: same clock, b wins ties"
    );
    p.drain();
    assert_eq!(p.nodes[0].key, p.nodes[1].key);
}

#[test]
fn concurrent_types_end_with_the_later_one_on_both_sides() {
    let mut p = Pair::new(MemoryKey::Missing);
    p.batch(0, &[W::Set(Shape::Set, "x", s(""))]);
    p.nodes[1].clock = 5;
    p.batch(
        1,
        &[W::Set(Shape::Hash, "f", s("v")), W::Del(Shape::Hash, "f")],
    );
    p.drain();
    assert_eq!(p.nodes[0].key, MemoryKey::Missing);
    assert_eq!(p.nodes[1].key, MemoryKey::Missing);
    assert!(p.nodes[0].table.is_empty() && p.nodes[1].table.is_empty());
}

/// One random local write valid on `key` (what Redis would accept).
///
/// Each schedule gives the key one element family (`shape`); images can
/// still turn it into a list or delete it. Two sides creating one key with
/// two different families at once is not covered (see `rule`'s doc).
fn random_write(rng: &mut StdRng, key: &MemoryKey, shape: Shape, workload: u8, n: &mut u64) -> W {
    const ELEMS: [&str; 3] = ["e1", "e2", "e3"];
    *n += 1;
    let value = |rng: &mut StdRng, n: u64| {
        if workload == 1 || rng.gen_bool(0.7) {
            (10 * n).to_string()
        } else {
            format!("t{n}")
        }
    };
    loop {
        let elem = if shape == Shape::Str {
            ""
        } else {
            ELEMS[rng.gen_range(0..3)]
        };
        let fits = !matches!(key, MemoryKey::Other(_));
        let shape = if workload == 1 && shape == Shape::Set {
            Shape::Hash
        } else {
            shape
        };
        let roll = if workload == 1 {
            4
        } else {
            rng.gen_range(0..12)
        };
        match roll {
            0..=2 if fits => {
                let v = if shape == Shape::Set {
                    String::new()
                } else {
                    value(rng, *n)
                };
                return W::Set(shape, elem, v);
            }
            3..=5 if fits && shape != Shape::Set => {
                let cur = super::view::KeyView::get(key, elem.as_bytes());
                if cur.is_none_or(|v| super::counter::parse(shape, &v).is_some()) {
                    return W::Incr(shape, elem, rng.gen_range(-3..=9));
                }
            }
            6..=7 if super::view::KeyView::get(key, elem.as_bytes()).is_some() => {
                return W::Del(shape, elem)
            }
            8 if *key != MemoryKey::Missing => return W::DelKey,
            9 => {
                let v = match rng.gen_range(0..4) {
                    0 => None,
                    1 => Some(Value::List(vec![value(rng, *n).into_bytes()])),
                    _ => MemoryKey::Elements(
                        shape,
                        BTreeMap::from([(
                            elem.as_bytes().to_vec(),
                            if shape == Shape::Set {
                                Vec::new()
                            } else {
                                value(rng, *n).into_bytes()
                            },
                        )]),
                    )
                    .to_value(),
                };
                return W::Image(v);
            }
            _ if workload == 1 => return W::Incr(shape, elem, rng.gen_range(-3..=9)),
            _ => {}
        }
    }
}

fn trace(f: impl FnOnce() -> String) {
    if std::env::var_os("MERGE_TRACE").is_some() {
        println!("{}", f());
    }
}

/// A seeded schedule on one key: random batches, FIFO delivery with acks
/// behind batches, random interleaving. Returns the pair after draining.
fn run_schedule(seed: u64, workload: u8) -> (Pair, i64) {
    run_schedule_folded(seed, workload, true)
}

/// [`run_schedule`], with batches shipped folded or not.
fn run_schedule_folded(seed: u64, workload: u8, fold: bool) -> (Pair, i64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let shape = [Shape::Hash, Shape::Set, Shape::ZSet, Shape::Str][rng.gen_range(0..4)];
    let mut p = Pair::new(MemoryKey::Missing);
    p.fold = fold;
    let mut left = [rng.gen_range(1..=6), rng.gen_range(1..=6)];
    let pdel = [0.2, 0.4, 0.6][rng.gen_range(0..3)];
    let mut n = 0;
    let mut total = 0i64;
    while left.iter().any(|l| *l > 0) || p.wires.iter().any(|w| !w.is_empty()) {
        let local: Vec<usize> = (0..2).filter(|i| left[*i] > 0).collect();
        if !local.is_empty() && (p.wires.iter().all(|w| w.is_empty()) || !rng.gen_bool(pdel)) {
            let i = local[rng.gen_range(0..local.len())];
            left[i] -= 1;
            let mut key = p.nodes[i].key.clone();
            let mut writes = Vec::new();
            for _ in 0..rng.gen_range(1..=5) {
                let w = random_write(&mut rng, &key, shape, workload, &mut n);
                if let W::Incr(_, _, d) = &w {
                    total += d;
                }
                local_effect(&mut key, &w);
                writes.push(w);
            }
            trace(|| format!("{} batch {writes:?}", IDS[i]));
            p.batch(i, &writes);
            trace(|| format!("  -> {:?}", p.nodes[i].key));
        } else {
            let from = rng.gen_range(0..2);
            let what = match p.wires[from].front() {
                Some(Msg::Batch(seq, e)) => format!("batch {seq} {e:?}"),
                Some(Msg::Ack(seq)) => format!("ack {seq}"),
                None => String::new(),
            };
            let pending = p.nodes[1 - from].table.changes_of(0, KEY);
            if p.deliver(from) {
                trace(|| {
                    format!(
                        "{} gets {what}\n  pending {pending:?}\n  -> {:?}",
                        IDS[1 - from],
                        p.nodes[1 - from].key
                    )
                });
            }
        }
    }
    (p, total)
}

#[test]
fn replay() {
    if let Ok(seed) = std::env::var("MERGE_SEED") {
        let (p, _) = run_schedule(seed.parse().unwrap_or(0), 0);
        assert_eq!(p.nodes[0].key, p.nodes[1].key);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Two nodes converge on one key whatever the writes (elements of every
    /// family, increments, deletes, key deletes, images, type changes) and
    /// the interleaving, and both tables empty once everything is acknowledged.
    #[test]
    fn two_nodes_converge(seed in any::<u64>()) {
        let (p, _) = run_schedule(seed, 0);
        prop_assert_eq!(&p.nodes[0].key, &p.nodes[1].key, "seed {}", seed);
        prop_assert!(p.nodes[0].table.is_empty() && p.nodes[1].table.is_empty());
    }

    /// Folding a batch's element changes (`coalesce`) changes nothing: the
    /// same schedule ends in the same state folded and unfolded.
    #[test]
    fn folded_batches_end_like_unfolded(seed in any::<u64>(), workload in 0u8..2) {
        let (folded, _) = run_schedule_folded(seed, workload, true);
        let (plain, _) = run_schedule_folded(seed, workload, false);
        prop_assert_eq!(&folded.nodes[0].key, &plain.nodes[0].key, "seed {}", seed);
        prop_assert_eq!(&folded.nodes[1].key, &plain.nodes[1].key, "seed {}", seed);
    }

    /// With only increments, no increment is lost: the counter ends at the
    /// sum of every increment made on either side.
    #[test]
    fn increments_alone_add_up(seed in any::<u64>()) {
        let (p, total) = run_schedule(seed, 1);
        prop_assert_eq!(&p.nodes[0].key, &p.nodes[1].key, "seed {}", seed);
        let sum: i64 = match &p.nodes[0].key {
            MemoryKey::Elements(shape, m) => m
                .values()
                .map(|v| super::counter::parse(*shape, v).unwrap_or(0))
                .sum(),
            _ => 0,
        };
        prop_assert_eq!(sum, total, "seed {}", seed);
    }
}

/// A counter on a key as it is goes to the server as an increment (one call,
/// no read); a plan that must read the value, or has written it, carries it
/// as a value. Both mean the same, wrapping and absorbing included.
#[test]
fn increments_of_a_key_as_it_is_are_deferred_and_mean_the_same() {
    use super::view::{KeyView, Planned};
    let cases: [(MemoryKey, Shape, &str, i64); 5] = [
        (MemoryKey::Missing, Shape::Str, "", 7),
        (
            MemoryKey::Elements(Shape::Str, [(vec![], b"40".to_vec())].into()),
            Shape::Str,
            "",
            2,
        ),
        (
            MemoryKey::Elements(Shape::Str, [(vec![], b"abc".to_vec())].into()),
            Shape::Str,
            "",
            2,
        ),
        (
            MemoryKey::Elements(
                Shape::Str,
                [(vec![], i64::MAX.to_string().into_bytes())].into(),
            ),
            Shape::Str,
            "",
            1,
        ),
        (hash(&[("f", "1"), ("g", "x")]), Shape::Hash, "f", -3),
    ];
    for (key, shape, elem, d) in cases {
        let mut planned = Planned::new(&key);
        planned.increment(shape, elem.as_bytes(), d);
        planned.increment(shape, elem.as_bytes(), d);
        let expect = {
            let once = super::counter::increment(shape, key.get(elem.as_bytes()).as_deref(), d);
            super::counter::increment(shape, Some(&once), d)
        };
        assert_eq!(planned.get(elem.as_bytes()), Some(expect.clone()));
        let plan = planned.finish();
        assert!(plan.writes.is_empty(), "nothing read or written: {plan:?}");
        assert_eq!(
            plan.adds,
            vec![(elem.as_bytes().to_vec(), d.wrapping_mul(2))]
        );
        let mut after = key.clone();
        after.execute(&plan);
        assert_eq!(after.get(elem.as_bytes()), Some(expect));
        // After a write of the element, an increment is planned as a value.
        let mut planned = Planned::new(&key);
        planned.set(shape, elem.as_bytes(), b"5".to_vec());
        planned.increment(shape, elem.as_bytes(), d);
        let plan = planned.finish();
        assert!(plan.adds.is_empty());
        assert_eq!(
            plan.writes,
            vec![(
                elem.as_bytes().to_vec(),
                Some((5 + d).to_string().into_bytes())
            )]
        );
    }
}
