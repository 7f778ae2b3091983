//! What a client command will do to the elements of its keys, decided from
//! its arguments alone (the command filter's view, before it runs).
//!
//! Why a guess and what makes it safe: reading a big hash back to ship one
//! field costs the whole hash; the arguments of `HSET h f v` already say
//! what changed. A hint is only used when the keyspace event that the very
//! same command fires confirms it (see [`KeyHint::on_event`]); anything the
//! hint did not predict leaves the key on a whole-key image. The commands
//! here are those whose effect, once their event fired, is exactly the
//! hint: all-or-nothing writes of the named elements. A command not listed
//! gets no hint.
//!
//! Test builds check every confirmed hint against the truth (the peer
//! compares the origin's digest of the key, `Op::Check`).

use super::list_op::ListOp;
use super::merge::counter;
use super::protocol::{ElementChange, Shape};

/// What one command will do to one key, if its event confirms it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyHint {
    /// The key.
    pub key: Vec<u8>,
    /// The event the command fires on the key when it wrote.
    pub event: &'static [u8],
    /// The command may delete the key after `event` (its last element was
    /// removed): a `del` event may follow.
    pub then_del: bool,
    /// The changes, in execution order.
    pub changes: Vec<ElementChange>,
    /// The changed member's score must be read after the command and put
    /// into the change (a `ZINCRBY`).
    pub read_score: bool,
    /// The increment of a `ZINCRBY`, `INCRBYFLOAT` or `HINCRBYFLOAT`, if it
    /// is an integer below 2^53 in size.
    pub int_delta: Option<i64>,
    /// The changed element's new value must be read after the command and
    /// put into the change (an `INCRBYFLOAT` or `HINCRBYFLOAT`).
    pub read_value: bool,
    /// After the confirming event, this event of the same command is also
    /// part of the hint: an `XADD`'s own trim (`xtrim`), whose result is then
    /// read ([`EventFit::Trimmed`]).
    pub then_also: Option<&'static [u8]>,
    /// The stream entry ID the change names must be read after the command:
    /// the last entry's for an `XADD`, the first entry's for an `XTRIM`.
    pub read_stream: bool,
    /// An `XADD *`: the server generated the ID from the stream's last one
    /// and its clock, so it can often be worked out (`core::append_id`).
    pub auto_id: bool,
    /// The pushed value must be read after the command, from the end of the
    /// list it was pushed to (an `LMOVE`'s destination: what moved is known
    /// only once it ran).
    pub read_list_end: bool,
    /// The element's value before the command, read by the filter where the
    /// server lets it (7.2+): `Some(None)` = no such element (it starts at
    /// 0). See [`float_incr_change`].
    pub value_before: Option<Option<Vec<u8>>>,
    /// The member's score before the command, read by the filter where the
    /// server lets it (7.2+): `Some(None)` = no such member (it starts at 0).
    pub base_score: Option<Option<f64>>,
    /// Where the key stands in the events of the command.
    pub state: HintState,
}

/// Progress of a key's hint through the command's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintState {
    /// No event yet.
    Waiting,
    /// The expected event came: the changes are recorded.
    Confirmed,
    /// Something unexpected happened to the key: it ships an image.
    Broken,
}

/// What an event on a hinted key means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFit {
    /// The confirming event: record the hint's changes.
    Record,
    /// Part of what the hint predicted, already recorded: nothing to note.
    Covered,
    /// Not predicted: note the key for a whole-key image.
    Unexpected,
    /// The `XADD`'s own trim ([`KeyHint::then_also`]): record what it left.
    Trimmed,
}

impl KeyHint {
    fn new(key: &[u8], event: &'static [u8], then_del: bool, changes: Vec<ElementChange>) -> Self {
        KeyHint {
            key: key.to_vec(),
            event,
            then_del,
            changes,
            read_score: false,
            int_delta: None,
            read_value: false,
            then_also: None,
            read_stream: false,
            auto_id: false,
            read_list_end: false,
            value_before: None,
            base_score: None,
            state: HintState::Waiting,
        }
    }

    /// Match one keyspace event of this key against the hint. Any event
    /// beyond what the command predicts breaks the hint for good (the
    /// same command cannot fire it; something else changed the key).
    pub fn on_event(&mut self, event: &[u8]) -> EventFit {
        let fit = match self.state {
            HintState::Waiting if event == self.event => EventFit::Record,
            HintState::Confirmed if self.then_del && event == b"del" => {
                self.then_del = false;
                EventFit::Covered
            }
            HintState::Confirmed if self.then_also == Some(event) => {
                self.then_also = None;
                EventFit::Trimmed
            }
            _ => EventFit::Unexpected,
        };
        self.state = match fit {
            EventFit::Record | EventFit::Covered | EventFit::Trimmed => HintState::Confirmed,
            EventFit::Unexpected => HintState::Broken,
        };
        fit
    }

    /// The key expired or was evicted while the command ran: what the
    /// command did then depends on timing the peer does not share.
    pub fn break_it(&mut self) {
        self.state = HintState::Broken;
    }
}

fn is(name: &[u8], want: &str) -> bool {
    name.eq_ignore_ascii_case(want.as_bytes())
}

/// The hint for a command, or `None` when it is not one whose effect the
/// arguments fully describe. `argv[0]` is the command name.
pub fn describe(argv: &[&[u8]]) -> Option<Vec<KeyHint>> {
    let (name, args) = argv.split_first()?;
    let key = |i: usize| args.get(i).copied();
    let hint =
        |event, then_del, changes| Some(vec![KeyHint::new(key(0)?, event, then_del, changes)]);
    let n = name.len();
    if !(3..=12).contains(&n) {
        return None;
    }
    if is(name, "incr") || is(name, "decr") {
        if args.len() != 1 {
            return None;
        }
        let delta = if is(name, "incr") { 1 } else { -1 };
        return hint(b"incrby", false, vec![str_incr(delta)]);
    }
    if is(name, "incrby") || is(name, "decrby") {
        if args.len() != 2 {
            return None;
        }
        let d = integer(args[1])?;
        let delta = if is(name, "incrby") {
            d
        } else {
            d.checked_neg()?
        };
        return hint(b"incrby", false, vec![str_incr(delta)]);
    }
    if is(name, "set") {
        return describe_set(args);
    }
    if is(name, "getset") {
        return if args.len() == 2 {
            describe_set(args)
        } else {
            None
        };
    }
    if is(name, "getdel") {
        return hint(b"del", false, vec![ElementChange::DelKey]).filter(|_| args.len() == 1);
    }
    if is(name, "smove") {
        // A member moves: removed from the source (which may then be
        // deleted), added to the destination. Either event may not fire
        // (not a member; already a member), and then that side did nothing.
        if args.len() != 3 || args[0] == args[1] {
            return None;
        }
        let member = args[2].to_vec();
        let src = KeyHint::new(
            args[0],
            b"srem",
            true,
            vec![ElementChange::Del {
                shape: Shape::Set,
                elem: member.clone(),
            }],
        );
        let dst = KeyHint::new(
            args[1],
            b"sadd",
            false,
            vec![ElementChange::Set {
                shape: Shape::Set,
                elem: member,
                value: Vec::new(),
            }],
        );
        return Some(vec![src, dst]);
    }
    if is(name, "hset") || is(name, "hmset") {
        if args.len() < 3 || args.len() % 2 == 0 {
            return None;
        }
        let changes = args[1..]
            .chunks(2)
            .map(|p| ElementChange::Set {
                shape: Shape::Hash,
                elem: p[0].to_vec(),
                value: p[1].to_vec(),
            })
            .collect();
        return hint(b"hset", false, changes);
    }
    if is(name, "hsetnx") {
        if args.len() != 3 {
            return None;
        }
        let change = ElementChange::Set {
            shape: Shape::Hash,
            elem: args[1].to_vec(),
            value: args[2].to_vec(),
        };
        return hint(b"hset", false, vec![change]);
    }
    if is(name, "hincrby") {
        if args.len() != 3 {
            return None;
        }
        let change = ElementChange::Incr {
            shape: Shape::Hash,
            elem: args[1].to_vec(),
            delta: integer(args[2])?,
        };
        return hint(b"hincrby", false, vec![change]);
    }
    if is(name, "hdel") || is(name, "srem") || is(name, "zrem") {
        if args.len() < 2 {
            return None;
        }
        let (shape, event): (Shape, &'static [u8]) = if is(name, "hdel") {
            (Shape::Hash, b"hdel")
        } else if is(name, "srem") {
            (Shape::Set, b"srem")
        } else {
            (Shape::ZSet, b"zrem")
        };
        let changes = args[1..]
            .iter()
            .map(|e| ElementChange::Del {
                shape,
                elem: e.to_vec(),
            })
            .collect();
        return hint(event, true, changes);
    }
    if is(name, "sadd") {
        if args.len() < 2 {
            return None;
        }
        let changes = args[1..]
            .iter()
            .map(|m| ElementChange::Set {
                shape: Shape::Set,
                elem: m.to_vec(),
                value: Vec::new(),
            })
            .collect();
        return hint(b"sadd", false, changes);
    }
    if is(name, "zadd") {
        return describe_zadd(args);
    }
    if is(name, "zincrby") {
        // Shipped as the member's new score (read after the command), not
        // as an increment: Redis adds in floating point, and an integral
        // result does not prove an integral old score (0.1 + 2^52 rounds
        // to an integer), which the peer's exact counter rule would treat
        // differently. Concurrent ZINCRBYs of one member are therefore
        // last-writer-wins (README).
        if args.len() != 3 {
            return None;
        }
        let mut h = hint(
            b"zincr",
            false,
            vec![ElementChange::Set {
                shape: Shape::ZSet,
                elem: args[2].to_vec(),
                value: Vec::new(),
            }],
        )?;
        h[0].read_score = true;
        h[0].int_delta = integral_delta(args[1]);
        return Some(h);
    }
    if is(name, "incrbyfloat") || is(name, "hincrbyfloat") {
        // Shipped as the element's new value, read after the command (a
        // float sum depends on the order of the additions), or as an exact
        // increment when it is one (see `float_incr_change`).
        let hash = n == 12;
        let (shape, elem, delta) = match (hash, args) {
            (false, [_, delta]) => (Shape::Str, &b""[..], *delta),
            (true, [_, field, delta]) => (Shape::Hash, *field, *delta),
            _ => return None,
        };
        let event: &'static [u8] = if hash {
            b"hincrbyfloat"
        } else {
            b"incrbyfloat"
        };
        let mut h = hint(
            event,
            false,
            vec![ElementChange::Set {
                shape,
                elem: elem.to_vec(),
                value: Vec::new(),
            }],
        )?;
        h[0].read_value = true;
        h[0].int_delta = integral_delta(delta);
        return Some(h);
    }
    if let Some(h) = describe_list(name, args) {
        return Some(h);
    }
    if let Some(h) = describe_stream(name, args) {
        return Some(h);
    }
    if is(name, "del") || is(name, "unlink") {
        if args.is_empty() {
            return None;
        }
        let mut keys: Vec<KeyHint> = Vec::with_capacity(args.len());
        for k in args {
            if !keys.iter().any(|h| h.key == *k) {
                keys.push(KeyHint::new(k, b"del", false, vec![ElementChange::DelKey]));
            }
        }
        return Some(keys);
    }
    None
}

/// The list commands whose effect, on the list the peer holds too, is
/// exactly their arguments' (see [`crate::core::list_op`]), and the moves
/// (`LMOVE`, `RPOPLPUSH` and their blocking forms) and blocking pops
/// (`BLPOP`, `BRPOP`) when they are served at once: a pop from one end of
/// the source and a push of that value onto the destination, whose value
/// is read after the command ([`KeyHint::read_list_end`]). Served later (the
/// client blocked), their events follow another command's and the keys
/// travel as images.
fn describe_list(name: &[u8], args: &[&[u8]]) -> Option<Vec<KeyHint>> {
    if let Some(h) = describe_list_move(name, args) {
        return Some(h);
    }
    if !(name.len() >= 4 && matches!(name[0] | 0x20, b'l' | b'r')) {
        return None;
    }
    let one = |event: &'static [u8], then_del: bool, op: ListOp| {
        Some(vec![KeyHint::new(
            args.first()?,
            event,
            then_del,
            vec![ElementChange::List(op)],
        )])
    };
    let left = name[0] | 0x20 == b'l';
    if is(name, "lpush") || is(name, "rpush") || is(name, "lpushx") || is(name, "rpushx") {
        if args.len() < 2 {
            return None;
        }
        let values = args[1..].iter().map(|v| v.to_vec()).collect();
        let event: &'static [u8] = if left { b"lpush" } else { b"rpush" };
        return one(event, false, ListOp::Push { left, values });
    }
    if is(name, "lpop") || is(name, "rpop") {
        let count = match args {
            [_] => 1,
            [_, n] => u64::try_from(integer(n)?).ok().filter(|&n| n > 0)?,
            _ => return None,
        };
        let event: &'static [u8] = if left { b"lpop" } else { b"rpop" };
        return one(event, true, ListOp::Pop { left, count });
    }
    match (name.len(), args) {
        (4, [_, index, value]) if is(name, "lset") => one(
            b"lset",
            false,
            ListOp::Set {
                index: integer(index)?,
                value: value.to_vec(),
            },
        ),
        (5, [_, start, stop]) if is(name, "ltrim") => one(
            b"ltrim",
            true,
            ListOp::Trim {
                start: integer(start)?,
                stop: integer(stop)?,
            },
        ),
        (4, [_, count, value]) if is(name, "lrem") => one(
            b"lrem",
            true,
            ListOp::Rem {
                count: integer(count)?,
                value: value.to_vec(),
            },
        ),
        (7, [_, place, pivot, value]) if is(name, "linsert") => {
            let before = if is(place, "before") {
                true
            } else if is(place, "after") {
                false
            } else {
                return None;
            };
            one(
                b"linsert",
                false,
                ListOp::Insert {
                    before,
                    pivot: pivot.to_vec(),
                    value: value.to_vec(),
                },
            )
        }
        _ => None,
    }
}

/// `LMOVE src dst LEFT|RIGHT LEFT|RIGHT`, `RPOPLPUSH src dst` and the
/// blocking `BLMOVE`, `BRPOPLPUSH`; `BLPOP`/`BRPOP key … timeout`.
///
/// A move ships as a pop on the source and a push on the destination, each
/// a list command of its own key (replayed, or settled by the list rule, as
/// any). A move within one list (a rotation) gets none: both events name
/// one key, which a hint of one key cannot tell apart; it ships an image.
/// A blocking pop names several keys and pops from the first non-empty one:
/// each key gets a one-element pop, and only the one that fires records.
fn describe_list_move(name: &[u8], args: &[&[u8]]) -> Option<Vec<KeyHint>> {
    let end = |a: &[u8]| {
        if is(a, "left") {
            Some(true)
        } else if is(a, "right") {
            Some(false)
        } else {
            None
        }
    };
    let (src, dst, from, to) = match args {
        [s, d, f, t] if is(name, "lmove") => (*s, *d, end(f)?, end(t)?),
        [s, d, f, t, _] if is(name, "blmove") => (*s, *d, end(f)?, end(t)?),
        [s, d] if is(name, "rpoplpush") => (*s, *d, false, true),
        [s, d, _] if is(name, "brpoplpush") => (*s, *d, false, true),
        [keys @ .., _] if is(name, "blpop") || is(name, "brpop") => {
            let left = is(name, "blpop");
            let event: &'static [u8] = if left { b"lpop" } else { b"rpop" };
            let mut hints: Vec<KeyHint> = Vec::with_capacity(keys.len());
            for k in keys {
                if hints.iter().any(|h| h.key == *k) {
                    return None;
                }
                let pop = ElementChange::List(ListOp::Pop { left, count: 1 });
                hints.push(KeyHint::new(k, event, true, vec![pop]));
            }
            return (!hints.is_empty()).then_some(hints);
        }
        _ => return None,
    };
    if src == dst {
        return None;
    }
    let pop_event: &'static [u8] = if from { b"lpop" } else { b"rpop" };
    let push_event: &'static [u8] = if to { b"lpush" } else { b"rpush" };
    let pop = ElementChange::List(ListOp::Pop {
        left: from,
        count: 1,
    });
    let push = ElementChange::List(ListOp::Push {
        left: to,
        values: vec![Vec::new()],
    });
    let mut dst_hint = KeyHint::new(dst, push_event, false, vec![push]);
    dst_hint.read_list_end = true;
    Some(vec![
        KeyHint::new(src, pop_event, true, vec![pop]),
        dst_hint,
    ])
}

/// `XADD`, `XTRIM`, `XDEL`: commands replayed on an identical stream (as
/// list commands). The IDs an `XADD` generates and what a trim keeps are
/// known only after the command: the change names them once read
/// ([`KeyHint::read_stream`]). Consumer-group commands get none: they
/// travel as images.
fn describe_stream(name: &[u8], args: &[&[u8]]) -> Option<Vec<KeyHint>> {
    if !(4..=5).contains(&name.len()) || name[0] | 0x20 != b'x' {
        return None;
    }
    let key = args.first()?;
    if is(name, "xdel") {
        if args.len() < 2 {
            return None;
        }
        let ids = args[1..].iter().map(|i| i.to_vec()).collect();
        let change = ElementChange::List(ListOp::XDel { ids });
        return Some(vec![KeyHint::new(key, b"xdel", false, vec![change])]);
    }
    if is(name, "xtrim") {
        let change = ElementChange::List(ListOp::XTrim { min_id: Vec::new() });
        let mut h = KeyHint::new(key, b"xtrim", false, vec![change]);
        h.read_stream = true;
        return Some(vec![h]);
    }
    if !is(name, "xadd") {
        return None;
    }
    // XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] threshold [LIMIT count]] id field value …
    let mut i = 1;
    let mut trims = false;
    loop {
        let a = args.get(i)?;
        if is(a, "nomkstream") {
            i += 1;
        } else if is(a, "maxlen") || is(a, "minid") {
            trims = true;
            i += 1;
            if args.get(i).is_some_and(|o| *o == b"=" || *o == b"~") {
                i += 1;
            }
            i += 1; // the threshold
            if args.get(i).is_some_and(|o| is(o, "limit")) {
                i += 2;
            }
        } else {
            break;
        }
    }
    let fields = args.get(i + 1..)?;
    if fields.is_empty() || fields.len() % 2 != 0 {
        return None;
    }
    let change = ElementChange::List(ListOp::XAdd {
        entries: vec![(Vec::new(), fields.iter().map(|f| f.to_vec()).collect())],
    });
    let mut h = KeyHint::new(key, b"xadd", false, vec![change]);
    h.read_stream = true;
    h.auto_id = args[i] == b"*";
    h.then_also = trims.then_some(&b"xtrim"[..]);
    Some(vec![h])
}

fn str_incr(delta: i64) -> ElementChange {
    ElementChange::Incr {
        shape: Shape::Str,
        elem: Vec::new(),
        delta,
    }
}

/// An integer argument as Redis's `string2ll` reads it.
fn integer(arg: &[u8]) -> Option<i64> {
    counter::parse(Shape::Str, arg)
}

/// `SET key <integer> [NX|XX|GET]`: a counter's new value, which clears the
/// expiry. Other values and options travel as the set hint's image.
fn describe_set(args: &[&[u8]]) -> Option<Vec<KeyHint>> {
    if args.len() < 2 || integer(args[1]).is_none() {
        return None;
    }
    if !args[2..]
        .iter()
        .all(|o| is(o, "nx") || is(o, "xx") || is(o, "get"))
    {
        return None;
    }
    let change = ElementChange::Set {
        shape: Shape::Str,
        elem: Vec::new(),
        value: args[1].to_vec(),
    };
    Some(vec![KeyHint::new(args[0], b"set", false, vec![change])])
}

/// `ZADD key [CH] score member ...`: each member takes its score. The
/// conditional forms (NX, XX, GT, LT) and INCR change members depending on
/// what is there, so they get no hint.
fn describe_zadd(args: &[&[u8]]) -> Option<Vec<KeyHint>> {
    let mut rest = args.get(1..)?;
    if rest.first().is_some_and(|o| is(o, "ch")) {
        rest = &rest[1..];
    }
    if rest.is_empty() || rest.len() % 2 != 0 {
        return None;
    }
    let mut changes = Vec::with_capacity(rest.len() / 2);
    for p in rest.chunks(2) {
        changes.push(ElementChange::Set {
            shape: Shape::ZSet,
            elem: p[1].to_vec(),
            value: score_arg(p[0])?,
        });
    }
    Some(vec![KeyHint::new(args[0], b"zadd", false, changes)])
}

/// A score argument in the form [`format_score`] gives, or `None` when
/// this parser might read it differently from Redis's `strtod` (then the
/// command gets no hint).
fn score_arg(arg: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(arg).ok()?;
    let plain = s
        .bytes()
        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
    let inf = s.eq_ignore_ascii_case("inf")
        || s.eq_ignore_ascii_case("+inf")
        || s.eq_ignore_ascii_case("-inf");
    if !(plain || inf) {
        return None;
    }
    let x: f64 = s.parse().ok()?;
    (!x.is_nan()).then(|| format_score(x))
}

/// `ZINCRBY`'s increment as an integer, if it is one below 2^53 in size.
fn integral_delta(arg: &[u8]) -> Option<i64> {
    let d: f64 = std::str::from_utf8(arg).ok()?.parse().ok()?;
    (d.is_finite() && d.fract() == 0.0 && d.abs() < EXACT_SCORE).then_some(d as i64)
}

/// Integers up to this size are exact as sorted-set scores (doubles).
const EXACT_SCORE: f64 = 9_007_199_254_740_992.0; // 2^53

/// What a confirmed `ZINCRBY` ships, given the member's score `after` it,
/// its increment and its score `before` (if the filter could read it).
///
/// Why both ends are needed: the score is a double. An increment adds up
/// with the peer's concurrent ones (the counter rule) only if it is exact:
/// the old score, the increment and the new score all integers below 2^53
/// and the new score their sum. An integral result alone does not prove it
/// (`5e-324 + 1` rounds to `1`). Anything else ships the new score, and
/// concurrent changes of the member are last-writer-wins.
pub fn zincr_change(
    elem: &[u8],
    delta: Option<i64>,
    before: Option<Option<f64>>,
    after: f64,
) -> ElementChange {
    let exact = |x: f64| x.is_finite() && x.fract() == 0.0 && x.abs() < EXACT_SCORE;
    if let (Some(d), Some(before)) = (delta, before) {
        let old = before.unwrap_or(0.0);
        if exact(old) && exact(after) && old + d as f64 == after {
            return ElementChange::Incr {
                shape: Shape::ZSet,
                elem: elem.to_vec(),
                delta: d,
            };
        }
    }
    ElementChange::Set {
        shape: Shape::ZSet,
        elem: elem.to_vec(),
        value: format_score(after),
    }
}

/// What a confirmed `INCRBYFLOAT` or `HINCRBYFLOAT` ships, given its
/// increment, the element's value `before` it (if the filter could read
/// it) and its value `after` it (if it could be read: a string cannot be,
/// inside the command), or `None`: ship the key whole.
///
/// Why the value before: Redis adds in long double and prints the sum.
/// The increment adds up with the peer's concurrent ones (the counter
/// rule) only if it is exact: the old value an integer written as Redis
/// writes integers, the increment an integer, their sum below 2^53. Then
/// Redis's sum is exact and printed as that integer, and a peer holding the
/// same old value gets the same new one from `INCRBY`. Anything else ships
/// the new value, and concurrent changes of the element are
/// last-writer-wins.
pub fn float_incr_change(
    shape: Shape,
    elem: &[u8],
    delta: Option<i64>,
    before: Option<Option<&[u8]>>,
    after: Option<Vec<u8>>,
) -> Option<ElementChange> {
    if let (Some(d), Some(before)) = (delta, before) {
        let old = match before {
            None => Some(0),
            Some(b) => exact_integer(b),
        };
        let sum = old.and_then(|o| o.checked_add(d));
        if sum.is_some_and(|s| (s.unsigned_abs() as f64) < EXACT_SCORE) {
            return Some(ElementChange::Incr {
                shape,
                elem: elem.to_vec(),
                delta: d,
            });
        }
    }
    after.map(|value| ElementChange::Set {
        shape,
        elem: elem.to_vec(),
        value,
    })
}

/// `b` as an integer below 2^53 in size, if it is written exactly as Redis
/// writes one (no sign on 0, no leading zeros, no exponent or point).
fn exact_integer(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    let v: i64 = s.parse().ok()?;
    (v.to_string() == s && (v.unsigned_abs() as f64) < EXACT_SCORE).then_some(v)
}

/// A sorted-set score as the element rule holds it: an integer in the
/// exact range as its digits (so increments add), any other value in a
/// form `strtod` reads back to the same double.
pub fn format_score(x: f64) -> Vec<u8> {
    const EXACT: f64 = EXACT_SCORE;
    if x.is_infinite() {
        return if x > 0.0 {
            b"inf".to_vec()
        } else {
            b"-inf".to_vec()
        };
    }
    if x.fract() == 0.0 && (-EXACT..EXACT).contains(&x) && !(x == 0.0 && x.is_sign_negative()) {
        return format!("{}", x as i64).into_bytes();
    }
    format!("{x:e}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incr_of(shape: Shape, elem: &[u8], delta: i64) -> ElementChange {
        ElementChange::Incr {
            shape,
            elem: elem.to_vec(),
            delta,
        }
    }

    fn set_of(shape: Shape, elem: &[u8], value: &str) -> ElementChange {
        ElementChange::Set {
            shape,
            elem: elem.to_vec(),
            value: value.as_bytes().to_vec(),
        }
    }

    #[test]
    fn zincrby_ships_an_increment_only_when_it_is_exact() {
        let incr = |d| incr_of(Shape::ZSet, b"m", d);
        let set = |v| set_of(Shape::ZSet, b"m", v);
        assert_eq!(zincr_change(b"m", Some(3), Some(Some(4.0)), 7.0), incr(3));
        assert_eq!(
            zincr_change(b"m", Some(-3), Some(None), -3.0),
            incr(-3),
            "new member from 0"
        );
        // An integral result from a fractional score: not an exact add.
        assert_eq!(
            zincr_change(b"m", Some(1), Some(Some(5e-324)), 1.0),
            set("1")
        );
        assert_eq!(
            zincr_change(b"m", Some(1), Some(Some(0.5)), 1.5),
            set("1.5e0")
        );
        // The score before unknown (7.0, a script's client): the new score.
        assert_eq!(zincr_change(b"m", Some(3), None, 7.0), set("7"));
        // Past the exact range of a double.
        let big = 9_007_199_254_740_992.0;
        assert_eq!(
            zincr_change(b"m", Some(1), Some(Some(big - 1.0)), big),
            set("9.007199254740992e15")
        );
        assert_eq!(zincr_change(b"m", None, Some(Some(1.0)), 2.5), set("2.5e0"));
        assert_eq!(d("zincrby z 2 m").unwrap()[0].int_delta, Some(2));
        assert_eq!(d("zincrby z 2.0 m").unwrap()[0].int_delta, Some(2));
        assert_eq!(d("zincrby z 1.5 m").unwrap()[0].int_delta, None);
        assert_eq!(d("zincrby z inf m").unwrap()[0].int_delta, None);
    }

    fn d(s: &str) -> Option<Vec<KeyHint>> {
        let v: Vec<&[u8]> = s.split_whitespace().map(str::as_bytes).collect();
        describe(&v)
    }

    fn changes(s: &str) -> Vec<ElementChange> {
        let h = d(s).expect("a hint");
        assert_eq!(h.len(), 1);
        h[0].changes.clone()
    }

    #[test]
    fn counters_are_increments() {
        assert_eq!(changes("INCR c"), vec![str_incr(1)]);
        assert_eq!(changes("decr c"), vec![str_incr(-1)]);
        assert_eq!(changes("incrby c 7"), vec![str_incr(7)]);
        assert_eq!(changes("DECRBY c -3"), vec![str_incr(3)]);
        assert!(d("incrby c 07").is_none());
        assert!(d("decrby c -9223372036854775808").is_none());
        assert!(d("incr c extra").is_none());
        assert_eq!(d("incr c").unwrap()[0].event, b"incrby");
    }

    #[test]
    fn set_hints_only_plain_integers() {
        assert!(d("set c 100").is_some());
        assert!(d("set c 100 NX GET").is_some());
        assert!(d("set c 100 EX 10").is_none());
        assert!(d("set c 100 KEEPTTL").is_none());
        assert!(d("set c abc").is_none());
        assert!(d("set c 0100").is_none());
    }

    #[test]
    fn hash_writes_name_their_fields() {
        let c = changes("HSET h a 1 b 2");
        assert_eq!(c.len(), 2);
        assert!(d("hset h a").is_none());
        assert!(d("hset h a 1 b").is_none());
        assert_eq!(changes("hsetnx h a 1").len(), 1);
        assert!(d("hincrby h a 1.5").is_none());
        let h = d("hdel h a b").unwrap();
        assert!(h[0].then_del);
        assert_eq!(h[0].event, b"hdel");
    }

    #[test]
    fn zadd_only_unconditional() {
        assert_eq!(
            changes("zadd z 1.0 a +inf b"),
            vec![
                ElementChange::Set {
                    shape: Shape::ZSet,
                    elem: b"a".to_vec(),
                    value: b"1".to_vec()
                },
                ElementChange::Set {
                    shape: Shape::ZSet,
                    elem: b"b".to_vec(),
                    value: b"inf".to_vec()
                }
            ]
        );
        assert!(d("zadd z CH 1 a").is_some());
        for s in [
            "zadd z NX 1 a",
            "zadd z XX 1 a",
            "zadd z GT 1 a",
            "zadd z INCR 1 a",
        ] {
            assert!(d(s).is_none(), "{s}");
        }
        assert!(d("zadd z nan a").is_none());
        assert!(d("zadd z 0x10 a").is_none());
        assert!(d("zadd z 1 a 2").is_none());
        assert!(d("zincrby z 1.5 m").unwrap()[0].read_score);
        assert!(d("zincrby z 2 m").unwrap()[0].read_score);
        assert!(d("zincrby z 2").is_none());
    }

    #[test]
    fn smove_getdel_getset() {
        let h = d("SMOVE a b m").unwrap();
        assert_eq!((h[0].event, h[1].event), (&b"srem"[..], &b"sadd"[..]));
        assert!(h[0].then_del && !h[1].then_del);
        assert!(d("smove a a m").is_none());
        assert_eq!(changes("getdel k"), vec![ElementChange::DelKey]);
        assert!(d("getdel k x").is_none());
        assert_eq!(changes("getset c 5").len(), 1);
        assert!(d("getset c five").is_none());
        assert!(d("getset c 5 nx").is_none());
    }

    #[test]
    fn a_list_move_is_a_pop_from_the_source_and_a_push_read_back_on_the_destination() {
        let h = d("LMOVE src dst LEFT RIGHT").unwrap();
        assert_eq!(
            (h[0].key.as_slice(), h[1].key.as_slice()),
            (&b"src"[..], &b"dst"[..])
        );
        assert_eq!((h[0].event, h[1].event), (&b"lpop"[..], &b"rpush"[..]));
        assert!(h[0].then_del && !h[1].then_del);
        assert!(!h[0].read_list_end && h[1].read_list_end);
        assert_eq!(
            h[0].changes,
            vec![ElementChange::List(ListOp::Pop {
                left: true,
                count: 1
            })]
        );
        let h = d("rpoplpush s d").unwrap();
        assert_eq!((h[0].event, h[1].event), (&b"rpop"[..], &b"lpush"[..]));
        let h = d("BLMOVE s d right left 0.5").unwrap();
        assert_eq!((h[0].event, h[1].event), (&b"rpop"[..], &b"lpush"[..]));
        assert_eq!(d("BRPOPLPUSH s d 0").unwrap().len(), 2);
        // A rotation names one key twice; a bad end is a syntax error.
        assert!(d("LMOVE l l LEFT RIGHT").is_none());
        assert!(d("LMOVE s d UP RIGHT").is_none());
        assert!(d("LMOVE s d LEFT").is_none());
    }

    #[test]
    fn a_blocking_pop_hints_each_of_its_keys_with_one_element() {
        let h = d("BLPOP a b 0").unwrap();
        assert_eq!(h.len(), 2);
        assert!(h.iter().all(|k| k.event == b"lpop" && k.then_del));
        assert_eq!(
            h[1].changes,
            vec![ElementChange::List(ListOp::Pop {
                left: true,
                count: 1
            })]
        );
        assert_eq!(d("brpop a 1").unwrap()[0].event, b"rpop");
        assert!(d("BLPOP a a 0").is_none(), "a key named twice");
        assert!(d("BLPOP 0").is_none());
    }

    #[test]
    fn del_names_each_key_once() {
        let h = d("DEL a b a").unwrap();
        assert_eq!(h.len(), 2);
        assert!(h.iter().all(|k| k.changes == vec![ElementChange::DelKey]));
    }

    #[test]
    fn list_commands_ship_as_commands_confirmed_by_their_event() {
        let one = |s: &str| {
            let h = d(s).unwrap();
            assert_eq!(h.len(), 1, "{s}");
            let ElementChange::List(op) = &h[0].changes[0] else {
                panic!("{s}: not a list command");
            };
            (h[0].event, h[0].then_del, op.clone())
        };
        let v = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            one("LPUSHX l a b"),
            (
                &b"lpush"[..],
                false,
                ListOp::Push {
                    left: true,
                    values: vec![v("a"), v("b")]
                }
            )
        );
        assert_eq!(
            one("rpop l 3"),
            (
                &b"rpop"[..],
                true,
                ListOp::Pop {
                    left: false,
                    count: 3
                }
            )
        );
        assert_eq!(
            one("lpop l").2,
            ListOp::Pop {
                left: true,
                count: 1
            }
        );
        assert_eq!(one("ltrim l 1 -1").2, ListOp::Trim { start: 1, stop: -1 });
        assert_eq!(one("lrem l -2 x").0, &b"lrem"[..]);
        assert_eq!(one("lset l -1 x").0, &b"lset"[..]);
        assert_eq!(
            one("LINSERT l after p x").2,
            ListOp::Insert {
                before: false,
                pivot: v("p"),
                value: v("x")
            }
        );
    }

    #[test]
    fn stream_commands_read_their_ids_after_the_command() {
        let h = d("XADD s NOMKSTREAM MAXLEN ~ 1000 LIMIT 10 * f v g w").unwrap();
        assert_eq!(h[0].event, &b"xadd"[..]);
        assert!(h[0].read_stream);
        assert_eq!(h[0].then_also, Some(&b"xtrim"[..]));
        assert_eq!(
            h[0].changes,
            vec![ElementChange::List(ListOp::XAdd {
                entries: vec![(
                    Vec::new(),
                    vec![b"f".to_vec(), b"v".to_vec(), b"g".to_vec(), b"w".to_vec()]
                )]
            })]
        );
        assert!(h[0].auto_id);
        let plain = d("xadd s 5-1 f v").unwrap();
        assert_eq!(plain[0].then_also, None);
        assert!(!plain[0].auto_id);
        assert!(!d("XADD s 5-* f v").unwrap()[0].auto_id);
        let trim = d("XTRIM s MINID 5").unwrap();
        assert!(trim[0].read_stream);
        assert_eq!(trim[0].event, &b"xtrim"[..]);
        let del = d("XDEL s 1-1 2-2").unwrap();
        assert_eq!(
            del[0].changes,
            vec![ElementChange::List(ListOp::XDel {
                ids: vec![b"1-1".to_vec(), b"2-2".to_vec()]
            })]
        );
        for s in ["xadd s * f", "xadd s", "xack s g 1-1", "xadd s maxlen"] {
            assert!(d(s).is_none(), "{s}");
        }
    }

    #[test]
    fn an_xadd_trim_event_is_part_of_its_hint() {
        let mut h = d("XADD s MAXLEN 1 * f v").unwrap().remove(0);
        assert_eq!(h.on_event(b"xadd"), EventFit::Record);
        assert_eq!(h.on_event(b"xtrim"), EventFit::Trimmed);
        assert_eq!(h.on_event(b"xtrim"), EventFit::Unexpected);
    }

    #[test]
    fn other_commands_get_no_hint() {
        for s in [
            "get a",
            "lmove a a left right",
            "lpop l 0",
            "lpop l -1",
            "linsert l middle p v",
            "lset l x v",
            "rpoplpush a a",
            "hincrbyfloat h f",
            "incrbyfloat c",
            "exec",
            "multi",
        ] {
            assert!(d(s).is_none(), "{s}");
        }
    }

    #[test]
    fn float_increments_ship_an_increment_only_when_it_is_exact() {
        let incr = |d| incr_of(Shape::Hash, b"f", d);
        let set = |v| set_of(Shape::Hash, b"f", v);
        let c = |d, before: Option<Option<&str>>, after: Option<&str>| {
            float_incr_change(
                Shape::Hash,
                b"f",
                d,
                before.map(|b| b.map(str::as_bytes)),
                after.map(|a| a.as_bytes().to_vec()),
            )
        };
        assert_eq!(
            c(Some(3), Some(Some("4")), None),
            Some(incr(3)),
            "no need to read after"
        );
        assert_eq!(
            c(Some(-3), Some(None), Some("-3")),
            Some(incr(-3)),
            "a missing field starts at 0"
        );
        assert_eq!(
            c(Some(3), None, Some("7")),
            Some(set("7")),
            "the old value unknown (7.0)"
        );
        assert_eq!(
            c(Some(3), None, None),
            None,
            "unknown and unread: the key ships whole"
        );
        assert_eq!(
            c(None, Some(Some("4")), Some("4.5")),
            Some(set("4.5")),
            "a fractional increment"
        );
        assert_eq!(
            c(Some(1), Some(Some("1e-400")), Some("1")),
            Some(set("1")),
            "an old value that is not an integer (the sum rounds)"
        );
        assert_eq!(
            c(Some(1), Some(Some("04")), Some("5")),
            Some(set("5")),
            "written otherwise than Redis writes integers"
        );
        assert_eq!(c(Some(1), Some(Some("4.5")), Some("5.5")), Some(set("5.5")));
        let big = "9007199254740992";
        assert_eq!(
            c(Some(1), Some(Some("9007199254740991")), Some(big)),
            Some(set(big)),
            "2^53 is past exact"
        );
        let h = d("hincrbyfloat h f 2").unwrap().remove(0);
        assert!(h.read_value);
        assert_eq!((h.event, h.int_delta), (&b"hincrbyfloat"[..], Some(2)));
        let s = d("INCRBYFLOAT c 2.5").unwrap().remove(0);
        assert_eq!((s.event, s.int_delta), (&b"incrbyfloat"[..], None));
    }

    #[test]
    fn events_confirm_once_and_a_surprise_breaks() {
        let mut h = d("hdel h a").unwrap().remove(0);
        assert_eq!(h.on_event(b"hdel"), EventFit::Record);
        assert_eq!(h.on_event(b"del"), EventFit::Covered);
        assert_eq!(h.on_event(b"del"), EventFit::Unexpected);
        assert_eq!(h.state, HintState::Broken);
        let mut h = d("hset h a 1").unwrap().remove(0);
        assert_eq!(h.on_event(b"zpopmin"), EventFit::Unexpected);
        assert_eq!(h.on_event(b"hset"), EventFit::Unexpected);
        let mut h = d("hset h a 1").unwrap().remove(0);
        assert_eq!(h.on_event(b"hset"), EventFit::Record);
        assert_eq!(h.on_event(b"hset"), EventFit::Unexpected);
    }

    #[test]
    fn scores_format_for_exact_increments() {
        assert_eq!(format_score(3.0), b"3");
        assert_eq!(format_score(-0.0), b"-0e0");
        assert_eq!(format_score(0.5), b"5e-1");
        assert_eq!(format_score(f64::NEG_INFINITY), b"-inf");
        assert_eq!(format_score(1e300), b"1e300");
        // The exact range is [-2^53, 2^53), as `counter::parse` reads it.
        assert_eq!(format_score(-9_007_199_254_740_992.0), b"-9007199254740992");
        assert_eq!(
            format_score(9_007_199_254_740_992.0),
            b"9.007199254740992e15"
        );
        for x in [0.1, 1e-300, 123.456, 2f64.powi(60)] {
            let s = String::from_utf8(format_score(x)).unwrap();
            assert_eq!(s.parse::<f64>().unwrap(), x);
        }
    }
}
