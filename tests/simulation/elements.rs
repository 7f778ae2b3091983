//! Element mode of the simulation: the writes a client makes on hashes,
//! sets, sorted sets and counters, what the capture records for them, and
//! the semantic checks of DESIGN §11 on the whole history.
//!
//! Keys have one element family each (`k0` counter, `k1` hash, `k2` set,
//! `k3` sorted set, `k4` hash); whole-key images turn a key into a list or
//! back, or delete it (type changes). In db 1 no image and no flush ever
//! happens, so its keys can be checked against the semantics: `k0` only
//! takes increments and deletes (no acknowledged increment may be lost),
//! `k2` only adds, removes and key deletes (a concurrently added member must
//! be present).

use std::collections::{BTreeMap, HashMap};

use rand::rngs::StdRng;
use rand::Rng;
use redis_bisync::core::list_op::{self, ListOp};
use redis_bisync::core::merge::counter;
use redis_bisync::core::merge::memory::MemoryKey;
use redis_bisync::core::merge::view::{KeyPlan, KeyView, Reset};
use redis_bisync::core::protocol::{
    ElementChange, Op, Shape, Stamp, StreamConsumer, StreamGroup, StreamImage, Value,
};
use redis_bisync::core::stream_merge::{self, StreamEntry};

/// One write, as the capture side records it until the next flush point.
#[derive(Debug, Clone)]
pub struct Captured {
    /// Its db.
    pub db: u32,
    /// The record to ship (element changes with `shipped_in` 0: fresh;
    /// `seen` is set when the write is captured).
    pub op: Op,
    /// Its index in the node's history.
    pub op_id: u64,
}

/// What a local write did, for the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Did {
    /// Set (or added) an element.
    Set(Vec<u8>),
    /// Removed an element.
    Del(Vec<u8>),
    /// Incremented an element.
    Incr(Vec<u8>, i64),
    /// Deleted the key.
    DelKey,
    /// Wrote a whole-key image, or flushed the db.
    Image,
}

/// One local write.
#[derive(Debug, Clone)]
pub struct Done {
    /// Where.
    pub db: u32,
    /// The key (`None`: a flush of the db).
    pub key: Option<Vec<u8>>,
    /// What.
    pub did: Did,
    /// How many of the peer's writes this node had applied then.
    pub seen: u64,
    /// Made by a restarted node before its restart resume ended: the
    /// element rules do not hold for it (see [`check`]).
    pub unsettled: bool,
}

/// A node's local writes, and which stamp shipped which.
#[derive(Debug, Default)]
pub struct History {
    /// In order; write `i` has id `i + 1`.
    pub done: Vec<Done>,
    /// Stamp of a shipped record → id of the write.
    by_stamp: HashMap<Stamp, u64>,
    /// Highest id of the peer's writes applied here.
    pub seen: u64,
}

impl History {
    /// Remember which write a shipped stamp carries.
    pub fn stamp_op(&mut self, stamp: Stamp, id: u64) {
        self.by_stamp.insert(stamp, id);
    }

    /// The write a stamp of this node carried, if any.
    pub fn op_of(&self, stamp: &Stamp) -> Option<u64> {
        self.by_stamp.get(stamp).copied()
    }

    /// A restart from a snapshot: the writes after `kept` never happened
    /// (they died with the process, neither in the snapshot nor applied by
    /// the peer), and this node had seen the peer's writes up to `seen`.
    /// Later writes take the ids of the dropped ones: the peer never saw
    /// those, and a stamp maps to the latest write that shipped it.
    pub fn restart(&mut self, kept: u64, seen: u64) {
        self.done
            .truncate(usize::try_from(kept).unwrap_or(usize::MAX));
        self.seen = seen;
    }
}

/// The element family of key `i` of [`crate::KEYS`].
pub fn shape_of(key_index: usize) -> Shape {
    [
        Shape::Str,
        Shape::Hash,
        Shape::Set,
        Shape::ZSet,
        Shape::Hash,
    ][key_index % 5]
}

/// What a schedule's writes favour.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// db 0's lists (and missing keys) mostly take list commands.
    pub lists: bool,
    /// db 0's missing keys sometimes become streams (appends, group states).
    pub streams: bool,
}

/// One random client write on `key` of `db`, applied to `store`; returns
/// the record the capture ships for it, or `None` if Redis would not write.
pub fn write(
    rng: &mut StdRng,
    store: &mut BTreeMap<(u32, Vec<u8>), MemoryKey>,
    db: u32,
    key_index: usize,
    key: &[u8],
    unique: u64,
    workload: Workload,
) -> Option<(Op, Did)> {
    let Workload { lists, streams } = workload;
    let shape = shape_of(key_index);
    let cur = store
        .get(&(db, key.to_vec()))
        .cloned()
        .unwrap_or(MemoryKey::Missing);
    let checked = db == 1;
    let counter_only = checked && shape == Shape::Str;
    let set_only = checked && shape == Shape::Set;
    let elem: Vec<u8> = if shape == Shape::Str {
        Vec::new()
    } else {
        format!("e{}", rng.gen_range(1..=3)).into_bytes()
    };
    // A key of another type (a list, or another element family after a
    // type-changing write): Redis refuses this family's commands on it.
    let other = match &cur {
        MemoryKey::Missing => false,
        MemoryKey::Elements(s, _) => *s != shape,
        MemoryKey::Other(_) => true,
    };
    let list_now = matches!(
        &cur,
        MemoryKey::Missing | MemoryKey::Other(Value::List(_) | Value::Stream(_))
    );
    // A list-heavy schedule: db 0's lists (and missing keys) mostly take
    // list commands, so both sides command one list at once often.
    let roll = if lists && !checked && list_now && rng.gen_bool(0.85) {
        23
    } else {
        rng.gen_range(0..28)
    };
    let change = match roll {
        0..=5 if !other && !counter_only => {
            let value = match shape {
                Shape::Set => Vec::new(),
                Shape::ZSet => (unique % 1000).to_string().into_bytes(),
                _ if rng.gen_bool(0.6) => (unique % 1000).to_string().into_bytes(),
                _ => format!("t{unique}").into_bytes(),
            };
            ElementChange::Set { shape, elem, value }
        }
        6..=11 if !other && !set_only && shape != Shape::Set => {
            let current = cur.get(&elem);
            if current.is_some_and(|v| counter::parse(shape, &v).is_none()) {
                return None; // Redis refuses to increment a non-integer
            }
            ElementChange::Incr {
                shape,
                elem,
                delta: rng.gen_range(-5..=20),
            }
        }
        12..=14 if !other && cur.get(&elem).is_some() => ElementChange::Del { shape, elem },
        15..=16 if cur != MemoryKey::Missing => ElementChange::DelKey,
        17..=19 if !checked => return Some(image(rng, store, db, key, shape, unique)),
        // Element writes that give the key another family: creating a
        // missing key with any family, or `SET` (which overwrites any type).
        20..=22 if !checked => {
            let families = [Shape::Str, Shape::Hash, Shape::Set, Shape::ZSet];
            let other = families[rng.gen_range(0..families.len())];
            let elem = if other == Shape::Str {
                Vec::new()
            } else {
                format!("e{}", rng.gen_range(1..=3)).into_bytes()
            };
            let value = match other {
                Shape::Set => Vec::new(),
                _ => (unique % 1000).to_string().into_bytes(),
            };
            if cur == MemoryKey::Missing && other != Shape::Set && rng.gen_bool(0.5) {
                ElementChange::Incr {
                    shape: other,
                    elem,
                    delta: rng.gen_range(-5..=20),
                }
            } else if cur == MemoryKey::Missing || other == Shape::Str {
                ElementChange::Set {
                    shape: other,
                    elem,
                    value,
                }
            } else {
                return None;
            }
        }
        // List commands, on a list or a missing key (db 0 only: the
        // semantic checks of db 1 know no lists).
        23..=27 if !checked && list_now => {
            ElementChange::List(list_op(rng, &cur, unique, streams)?)
        }
        _ => return None,
    };
    let did = match &change {
        ElementChange::Set { elem, .. } => Did::Set(elem.clone()),
        ElementChange::Del { elem, .. } => Did::Del(elem.clone()),
        ElementChange::Incr { elem, delta, .. } => Did::Incr(elem.clone(), *delta),
        ElementChange::DelKey => Did::DelKey,
        ElementChange::List(_) => Did::Image,
    };
    apply_locally(store, db, key, &change);
    Some((
        Op::Element {
            key: key.to_vec(),
            change,
            shipped_in: 0,
            seen: 0,
        },
        did,
    ))
}

/// A random list command that Redis would run on `cur` (a list or
/// missing), as the capture records it.
fn list_op(rng: &mut StdRng, cur: &MemoryKey, unique: u64, streams: bool) -> Option<ListOp> {
    match cur {
        MemoryKey::Other(Value::Stream(s)) => return Some(stream_op(rng, s, unique)),
        MemoryKey::Missing if streams && rng.gen_bool(0.25) => {
            return Some(stream_op(rng, &StreamImage::default(), unique))
        }
        _ => {}
    }
    let len = match cur {
        MemoryKey::Other(Value::List(l)) => l.len() as i64,
        _ => 0,
    };
    let value = |rng: &mut StdRng| format!("v{}", rng.gen_range(0..4)).into_bytes();
    let op = match rng.gen_range(0..8) {
        0..=2 => ListOp::Push {
            left: rng.gen_bool(0.5),
            values: (0..rng.gen_range(1..=2))
                .map(|i| format!("p{unique}.{i}").into_bytes())
                .collect(),
        },
        3 if len > 0 => ListOp::Pop {
            left: rng.gen_bool(0.5),
            count: rng.gen_range(1..=2),
        },
        4 if len > 0 => ListOp::Set {
            index: rng.gen_range(-len..len),
            value: value(rng),
        },
        5 if len > 0 => ListOp::Trim {
            start: rng.gen_range(-2..=1),
            stop: rng.gen_range(-2..=3),
        },
        6 if len > 0 => ListOp::Rem {
            count: rng.gen_range(-1..=1),
            value: value(rng),
        },
        7 if len > 0 => ListOp::Insert {
            before: rng.gen_bool(0.5),
            pivot: value(rng),
            value: format!("i{unique}").into_bytes(),
        },
        _ => return None,
    };
    Some(op)
}

/// A stream's entry ID as numbers (the sim's IDs are always `ms-seq`).
fn id_of(id: &[u8]) -> (u64, u64) {
    let s = String::from_utf8_lossy(id);
    let (ms, seq) = s.split_once('-').unwrap_or(("0", "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// A stream write: an append with the next ID the origin generates (both
/// sides generate the same one from the same stream: concurrent appends
/// clash, as `XADD *` in the same millisecond does), or a new state of its
/// consumer groups (what `XREADGROUP`, `XACK`, … ship).
fn stream_op(rng: &mut StdRng, s: &StreamImage, unique: u64) -> ListOp {
    if !s.entries.is_empty() && rng.gen_bool(0.4) {
        let groups = if rng.gen_bool(0.15) {
            Vec::new()
        } else {
            let (id, _) = &s.entries[rng.gen_range(0..s.entries.len())];
            vec![StreamGroup {
                name: b"g".to_vec(),
                last_delivered_id: id.clone(),
                entries_read: Some(unique as i64 % 7),
                consumers: vec![StreamConsumer {
                    name: format!("c{}", rng.gen_range(0..2)).into_bytes(),
                    pending: vec![(id.clone(), unique as i64, 1)],
                }],
            }]
        };
        return ListOp::XGroups { groups };
    }
    // `XADD *` in the same millisecond (the next sequence) or a later one.
    let (ms, seq) = id_of(&s.last_id);
    let id = if rng.gen_bool(0.3) {
        format!("{ms}-{}", seq.saturating_add(1))
    } else {
        format!("{}-0", ms + rng.gen_range(1..=2))
    }
    .into_bytes();
    ListOp::XAdd {
        entries: vec![(id, vec![b"n".to_vec(), format!("x{unique}").into_bytes()])],
    }
}

/// Merge a peer's concurrent append into the stream in `k` by the rule
/// (`core::stream_merge`), as `glue::stream_merge` does on Redis.
pub fn merge_append(k: &mut MemoryKey, op: &ListOp, local_first: bool) -> Result<(), String> {
    let (MemoryKey::Other(Value::Stream(s)), ListOp::XAdd { entries }) = (&mut *k, op) else {
        return Err("not an append to a stream".into());
    };
    let parse = |es: &[(Vec<u8>, Vec<Vec<u8>>)]| -> Vec<StreamEntry> {
        es.iter().map(|(id, f)| (id_of(id), f.clone())).collect()
    };
    let all = parse(&s.entries);
    let incoming = parse(entries);
    let min = incoming.iter().map(|(id, _)| *id).min().ok_or("empty")?;
    let from = all.partition_point(|(id, _)| *id < min);
    let new =
        stream_merge::merge(&all[from..], &incoming, local_first).map_err(|e| format!("{e:?}"))?;
    let last = new
        .last()
        .map_or(id_of(&s.last_id), |(id, _)| (*id).max(id_of(&s.last_id)));
    s.entries = all[..from]
        .iter()
        .chain(&new)
        .map(|(id, f)| (stream_merge::format_id(*id), f.clone()))
        .collect();
    s.last_id = stream_merge::format_id(last);
    s.entries_added += incoming.len() as i64;
    Ok(())
}

/// Run a stream command as Redis would (`Err` where it refuses).
fn run_stream(k: &mut MemoryKey, op: &ListOp) -> Result<(), String> {
    let mut s = match k {
        MemoryKey::Other(Value::Stream(s)) => s.clone(),
        MemoryKey::Missing if matches!(op, ListOp::XAdd { .. }) => StreamImage {
            last_id: b"0-0".to_vec(),
            ..Default::default()
        },
        other => return Err(format!("a stream command on {other:?}")),
    };
    match op {
        ListOp::XAdd { entries } => {
            for (id, fields) in entries {
                if id_of(id) <= id_of(&s.last_id) {
                    return Err("ID not above the stream's last".into());
                }
                s.entries.push((id.clone(), fields.clone()));
                s.last_id = id.clone();
                s.entries_added += 1;
            }
        }
        ListOp::XGroups { groups } => s.groups = groups.clone(),
        other => return Err(format!("{other:?} is not simulated")),
    }
    *k = MemoryKey::Other(Value::Stream(s));
    Ok(())
}

/// Run a list command on the key in `k` (the reference meaning,
/// `core::list_op::apply`); `Err` where Redis would refuse it.
pub fn run_list(k: &mut MemoryKey, op: &ListOp) -> Result<(), String> {
    if matches!(op, ListOp::XAdd { .. } | ListOp::XGroups { .. }) {
        return run_stream(k, op);
    }
    let mut list = match k {
        MemoryKey::Missing => None,
        MemoryKey::Other(Value::List(l)) => Some(l.clone()),
        other => return Err(format!("a list command on {other:?}")),
    };
    list_op::apply(&mut list, op).map_err(|e| format!("{e:?}"))?;
    *k = list.map_or(MemoryKey::Missing, |l| MemoryKey::Other(Value::List(l)));
    Ok(())
}

/// A write the capture cannot describe per element: a new content of the
/// key's own family, a list (type change), or a delete, as an image.
fn image(
    rng: &mut StdRng,
    store: &mut BTreeMap<(u32, Vec<u8>), MemoryKey>,
    db: u32,
    key: &[u8],
    shape: Shape,
    unique: u64,
) -> (Op, Did) {
    let content = match rng.gen_range(0..4) {
        0 => None,
        1 => Some(Value::List(vec![format!("l{unique}").into_bytes()])),
        _ => {
            let elem = if shape == Shape::Str {
                Vec::new()
            } else {
                b"e1".to_vec()
            };
            let value = if shape == Shape::Set {
                Vec::new()
            } else {
                (unique % 1000).to_string().into_bytes()
            };
            MemoryKey::Elements(shape, BTreeMap::from([(elem, value)])).to_value()
        }
    };
    let op = match content {
        Some(value) => Op::Set {
            key: key.to_vec(),
            value,
            expire_at_ms: None,
        },
        None => Op::Delete { key: key.to_vec() },
    };
    let k = MemoryKey::from_image(&op);
    put(store, db, key, k);
    (op, Did::Image)
}

/// The plain local effect of an element change (what Redis does).
fn apply_locally(
    store: &mut BTreeMap<(u32, Vec<u8>), MemoryKey>,
    db: u32,
    key: &[u8],
    change: &ElementChange,
) {
    let mut k = store
        .get(&(db, key.to_vec()))
        .cloned()
        .unwrap_or(MemoryKey::Missing);
    let one = |shape: Shape, elem: &[u8], value: Option<Vec<u8>>| KeyPlan {
        reset: Reset::Keep,
        shape: Some(shape),
        writes: vec![(elem.to_vec(), value)],
        adds: Vec::new(),
        keep_ttl: true,
    };
    match change {
        ElementChange::Set { shape, elem, value } => {
            k.execute(&one(*shape, elem, Some(value.clone())))
        }
        ElementChange::Del { shape, elem } => k.execute(&one(*shape, elem, None)),
        ElementChange::Incr { shape, elem, delta } => {
            let v = counter::increment(*shape, k.get(elem).as_deref(), *delta);
            k.execute(&one(*shape, elem, Some(v)));
        }
        ElementChange::DelKey => k = MemoryKey::Missing,
        ElementChange::List(op) => {
            if let Err(e) = run_list(&mut k, op) {
                panic!("the sim wrote a list command Redis refuses: {e}");
            }
        }
    }
    put(store, db, key, k);
}

fn put(store: &mut BTreeMap<(u32, Vec<u8>), MemoryKey>, db: u32, key: &[u8], k: MemoryKey) {
    if k == MemoryKey::Missing {
        store.remove(&(db, key.to_vec()));
    } else {
        store.insert((db, key.to_vec()), k);
    }
}

/// A write of one node, with its node.
struct Op2<'h> {
    node: usize,
    id: u64,
    done: &'h Done,
}

/// Did `x` happen before `y` (same node: earlier; other node: `y`'s node had
/// applied `x` when it ran `y`)?
fn before(x: &Op2<'_>, y: &Op2<'_>) -> bool {
    if x.node == y.node {
        x.id < y.id
    } else {
        y.done.seen >= x.id
    }
}

/// The semantic checks on the keys of db 1 (no images, no flushes there):
/// (c) a counter holds the sum of the increments no delete of it had seen
/// (no acknowledged increment lost); (b) a member a node added last, that
/// the other node only removed without having seen the add, is present.
/// Returns what failed, and how many elements each check looked at.
///
/// An element a restarted node wrote before its restart resume ended is
/// not checked: such a write claims (by its `seen` position) to have seen
/// the survivor's changes of keys whose images are still on their way, so
/// a concurrent add or increment of the survivor can be lost to it (both
/// sides still converge; found by this check, 9 in 10,000 restart
/// schedules; open, README "Restarts").
pub fn check(
    histories: [&History; 2],
    store: &BTreeMap<(u32, Vec<u8>), MemoryKey>,
) -> (Vec<String>, Checked) {
    let mut errs = Vec::new();
    let mut checked = Checked::default();
    let all: Vec<Op2<'_>> = (0..2)
        .flat_map(|node| {
            histories[node]
                .done
                .iter()
                .enumerate()
                .map(move |(i, done)| Op2 {
                    node,
                    id: i as u64 + 1,
                    done,
                })
        })
        .filter(|o| o.done.db == 1)
        .collect();
    let keys: std::collections::BTreeSet<&Vec<u8>> =
        all.iter().filter_map(|o| o.done.key.as_ref()).collect();
    for key in keys {
        let on_key: Vec<&Op2<'_>> = all
            .iter()
            .filter(|o| o.done.key.as_ref() == Some(key))
            .collect();
        let final_key = store
            .get(&(1, key.clone()))
            .cloned()
            .unwrap_or(MemoryKey::Missing);
        let touches = |o: &Op2<'_>, e: &[u8]| match &o.done.did {
            Did::Set(x) | Did::Del(x) | Did::Incr(x, _) => x == e,
            Did::DelKey | Did::Image => true,
        };
        let elems: std::collections::BTreeSet<Vec<u8>> = on_key
            .iter()
            .filter_map(|o| match &o.done.did {
                Did::Set(x) | Did::Del(x) | Did::Incr(x, _) => Some(x.clone()),
                _ => None,
            })
            .collect();
        for e in elems {
            let t: Vec<&&Op2<'_>> = on_key.iter().filter(|o| touches(o, &e)).collect();
            if t.iter().any(|o| o.done.unsettled) {
                checked.unsettled += 1;
                continue;
            }
            let removes = |o: &Op2<'_>| matches!(o.done.did, Did::Del(_) | Did::DelKey);
            // (c): only increments and removes.
            if t.iter()
                .all(|o| removes(o) || matches!(o.done.did, Did::Incr(..)))
            {
                let live: Vec<i64> = t
                    .iter()
                    .filter_map(|o| match o.done.did {
                        Did::Incr(_, d) if !t.iter().any(|r| removes(r) && before(o, r)) => Some(d),
                        _ => None,
                    })
                    .collect();
                checked.counters += u64::from(!live.is_empty());
                let shape = shape_of_key(key);
                let want = (!live.is_empty()).then(|| {
                    counter::format(live.iter().fold(0, |a, d| counter::add(shape, a, *d)))
                });
                if final_key.get(&e) != want {
                    errs.push(format!(
                        "(c) db1 {} {}: {:?}, want the sum of the increments no delete saw: {:?}",
                        String::from_utf8_lossy(key),
                        String::from_utf8_lossy(&e),
                        final_key
                            .get(&e)
                            .map(|v| String::from_utf8_lossy(&v).into_owned()),
                        want.map(|v| String::from_utf8_lossy(&v).into_owned())
                    ));
                }
            }
            // (b): a last add, concurrent with every remove of the other node.
            for add in t.iter().filter(|o| matches!(o.done.did, Did::Set(_))) {
                let last_of_node = !t.iter().any(|o| o.node == add.node && o.id > add.id);
                let theirs: Vec<&&&Op2<'_>> = t.iter().filter(|o| o.node != add.node).collect();
                let concurrent_removes =
                    theirs.iter().any(|o| removes(o)) && theirs.iter().all(|o| !before(add, o));
                if !(last_of_node && concurrent_removes) {
                    continue;
                }
                checked.concurrent_adds += 1;
                if final_key.get(&e).is_none() {
                    errs.push(format!(
                        "(b) db1 {} {}: added by node {} concurrently with the other node's removes, but absent",
                        String::from_utf8_lossy(key),
                        String::from_utf8_lossy(&e),
                        add.node
                    ));
                }
            }
        }
    }
    (errs, checked)
}

/// How many elements the semantic checks looked at.
#[derive(Debug, Default, Clone, Copy)]
pub struct Checked {
    /// Elements whose counter value was checked against its increments.
    pub counters: u64,
    /// Adds concurrent with a remove whose presence was checked.
    pub concurrent_adds: u64,
    /// Elements left out: a restarted node wrote them before its resume
    /// ended.
    pub unsettled: u64,
}

/// The family of a key by name (`k<i>`).
fn shape_of_key(key: &[u8]) -> Shape {
    let i = key
        .last()
        .map_or(0, |c| usize::from(c.saturating_sub(b'0')));
    shape_of(i)
}
