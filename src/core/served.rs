//! Events of a blocked client served later, and the hints they could meet.
//!
//! Why: a client blocked in `BLPOP`, `BLMOVE`, `BZPOPMIN`, … is served when
//! its key gets data, and Redis runs it right after the command that
//! happens to be executing then (or at the start of the next event-loop
//! iteration, when the data came from this module's apply: the first
//! client command after the apply runs, then the server serves the
//! blocked ones). The command filter does not see a served command (7.0
//! serves it without re-executing, 7.2+ skips the filters when it
//! re-executes), so its events meet the element hint of that other
//! command, which fired no event of its own on the key if it was a no-op
//! (`LPUSHX` on a missing key) or ran in another db on a key of the same
//! name. Such an event would be recorded as the other command's change
//! (a convergence run on Valkey 8 shipped `RPUSH k v1 v2` for a served
//! `BLMOVE ql k` that pushed `q1`).
//!
//! The cure, while a client may be blocked on a key (or move into it):
//! trust a hint on that key's events a served client fires (`lpush`, `rpush`, `lpop`, `rpop`, `zpopmin`,
//! `zpopmax`) only where the record is right whoever fired the event: a
//! one-value push whose value is read back from the list's end (as an
//! `LMOVE`'s push is), a one-element pop (a served client pops one element
//! from the end its event names, unless a multi-pop `BLMPOP`/`BZMPOP` may
//! be blocked). Anything else on those events ships the key as an image.

use super::list_op::ListOp;
use super::protocol::ElementChange;
use super::write_hint::KeyHint;

/// A command that may block its client, and the keys a served client of
/// it may then pop from or push to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocking<'a> {
    /// The keys it waits on, and the destination of a move.
    pub keys: Vec<&'a [u8]>,
    /// Served, it may pop several elements (`BLMPOP`, `BZMPOP`).
    pub many: bool,
}

fn is(name: &[u8], want: &str) -> bool {
    name.eq_ignore_ascii_case(want.as_bytes())
}

/// Whether `name` is one of the blocking list and sorted-set commands: a
/// test on the name alone, so the filter copies no arguments of others.
pub fn blocking_name(name: &[u8]) -> bool {
    name.first().map(|c| c | 0x20) == Some(b'b')
        && [
            "blpop",
            "brpop",
            "blmove",
            "brpoplpush",
            "bzpopmin",
            "bzpopmax",
            "blmpop",
            "bzmpop",
        ]
        .iter()
        .any(|w| is(name, w))
}

/// Whether the command `name` (with `args`, its arguments after the name)
/// may block its client on lists or sorted sets, and on which keys. Only
/// names that start with `b` are looked at. (`XREAD … BLOCK` served fires
/// no event a hint expects.)
pub fn blocking<'a>(name: &[u8], args: &[&'a [u8]]) -> Option<Blocking<'a>> {
    if !blocking_name(name) {
        return None;
    }
    let one = |keys: &[&'a [u8]]| {
        Some(Blocking {
            keys: keys.to_vec(),
            many: false,
        })
    };
    if is(name, "blmpop") || is(name, "bzmpop") {
        // timeout numkeys key [key ...] LEFT|RIGHT|MIN|MAX [COUNT n]
        let n = std::str::from_utf8(args.get(1)?)
            .ok()?
            .parse::<usize>()
            .ok()?;
        let keys = args.get(2..2usize.checked_add(n)?)?;
        return Some(Blocking {
            keys: keys.to_vec(),
            many: true,
        });
    }
    if is(name, "blmove") || is(name, "brpoplpush") {
        return one(args.get(..2)?);
    }
    if ["blpop", "brpop", "bzpopmin", "bzpopmax"]
        .iter()
        .any(|w| is(name, w))
    {
        return one(args.get(..args.len().checked_sub(1)?)?);
    }
    None
}

/// The events a served blocked client fires on the keys it pops from or
/// pushes to.
fn served_event(event: &[u8]) -> bool {
    matches!(
        event,
        b"lpush" | b"rpush" | b"lpop" | b"rpop" | b"zpopmin" | b"zpopmax"
    )
}

/// May `hint`, confirmed by `event` while a client may be blocked, be
/// recorded? `many` says a multi-pop blocking command may be waiting.
/// A one-value push is trusted after switching it to read its value back
/// from the list's end (the value that was really pushed, whoever pushed
/// it); `false` means: ship the key as an image.
pub fn trust(hint: &mut KeyHint, event: &[u8], many: bool) -> bool {
    if !served_event(event) {
        return true;
    }
    match hint.changes.as_slice() {
        [ElementChange::List(ListOp::Push { values, .. })] if values.len() == 1 => {
            hint.read_list_end = true;
            true
        }
        [ElementChange::List(ListOp::Pop { count: 1, .. })] => !many,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::write_hint::describe;

    fn hint(cmd: &str) -> KeyHint {
        let argv: Vec<&[u8]> = cmd.split_whitespace().map(str::as_bytes).collect();
        describe(&argv)
            .and_then(|h| h.into_iter().next())
            .unwrap_or_else(|| panic!("no hint for {cmd}"))
    }

    #[test]
    fn blocking_commands_name_the_keys_a_served_client_touches() {
        let keys = |cmd: &str| {
            let argv: Vec<&[u8]> = cmd.split_whitespace().map(str::as_bytes).collect();
            blocking(argv[0], &argv[1..]).map(|b| {
                let k: Vec<String> = b
                    .keys
                    .iter()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect();
                (k.join(" "), b.many)
            })
        };
        let one = |s: &str| Some((s.to_string(), false));
        assert_eq!(keys("BLPOP a b 0"), one("a b"));
        assert_eq!(keys("brpoplpush a b 1"), one("a b"));
        assert_eq!(keys("BLMOVE a b LEFT RIGHT 0"), one("a b"));
        assert_eq!(keys("BZPOPMAX z 0"), one("z"));
        assert_eq!(
            keys("BLMPOP 0 2 a c LEFT COUNT 5"),
            Some(("a c".into(), true))
        );
        assert_eq!(keys("bzmpop 0 1 z MIN"), Some(("z".into(), true)));
        assert_eq!(keys("BLMPOP 0 9 a LEFT"), None);
        assert_eq!(keys("BLPOP"), None);
        assert_eq!(keys("XREAD BLOCK 0 STREAMS s $"), None);
        assert_eq!(keys("LPOP a"), None);
        assert_eq!(keys("BITCOUNT a"), None);
    }

    #[test]
    fn a_one_value_push_is_read_back_from_the_end() {
        let mut h = hint("LPUSHX k v1");
        assert!(!h.read_list_end);
        assert!(trust(&mut h, b"lpush", false));
        assert!(h.read_list_end, "the served push's own value must be read");
    }

    #[test]
    fn a_push_of_several_values_cannot_be_told_from_a_served_one() {
        let mut h = hint("RPUSH k v1 v2");
        assert!(!trust(&mut h, b"rpush", false));
    }

    #[test]
    fn a_one_element_pop_is_what_any_served_pop_did_unless_a_multi_pop_waits() {
        let mut h = hint("LPOP k");
        assert!(trust(&mut h, b"lpop", false));
        assert!(!trust(&mut h, b"lpop", true));
        let mut h = hint("RPOP k 3");
        assert!(!trust(&mut h, b"rpop", false));
    }

    #[test]
    fn other_events_keep_their_hints() {
        let mut h = hint("HSET h f v");
        assert!(trust(&mut h, b"hset", true));
        let mut h = hint("LSET k 0 v");
        assert!(trust(&mut h, b"lset", true));
    }
}
