//! One list (or stream) command as a record: what the peer replays on its
//! identical list (or stream).
//!
//! Why operations and not elements: a list has no element names, so there is
//! nothing to merge one by one (issue 12 keeps concurrent list changes
//! whole-list last-writer-wins). What costs is the image: re-shipping a
//! 200k-element list for one `LPUSH`. Every list command is deterministic
//! given the list it runs on, so when the peer holds the list the origin
//! held before the command (no concurrent change of the key, see
//! [`crate::core::merge::rule::list_verdict`]) replaying the command gives
//! the origin's list exactly, at the cost of what it touched.
//!
//! Why a typed record and not the command's arguments: the peer is not
//! trusted to name a command to run; these six shapes are all it can ask
//! for, and [`apply`] is their reference meaning (the simulation's lists and
//! the tests use it; the glue runs the same command on Redis).

use serde::{Deserialize, Serialize};

/// A list command the peer can replay.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ListOp {
    /// `LPUSH`/`RPUSH` (and `LPUSHX`/`RPUSHX`, which write only when the key
    /// existed, and then fire the same event): values in argument order.
    Push {
        /// At the head (`LPUSH`).
        left: bool,
        /// The values, as the command named them.
        values: Vec<Vec<u8>>,
    },
    /// `LPOP`/`RPOP` with a count (1 without one).
    Pop {
        /// From the head (`LPOP`).
        left: bool,
        /// At most this many.
        count: u64,
    },
    /// `LSET key index value`.
    Set {
        /// The index as given (negative counts from the tail).
        index: i64,
        /// The new value.
        value: Vec<u8>,
    },
    /// `LTRIM key start stop`.
    Trim {
        /// First index kept.
        start: i64,
        /// Last index kept.
        stop: i64,
    },
    /// `LREM key count value`.
    Rem {
        /// How many, from the head (> 0), from the tail (< 0), or all (0).
        count: i64,
        /// The value removed.
        value: Vec<u8>,
    },
    /// `LINSERT key BEFORE|AFTER pivot value`.
    Insert {
        /// Before the pivot.
        before: bool,
        /// The first value equal to it (from the head) is the pivot.
        pivot: Vec<u8>,
        /// The value inserted.
        value: Vec<u8>,
    },
    /// `XADD key <id> field value …`, with the ID the origin's `XADD`
    /// generated (read after it ran): a stream is a list of entries for this
    /// rule, replayed exactly on an identical stream.
    /// Several in a row fold into one record (see `merge::coalesce`).
    XAdd {
        /// The entries: ID (`ms-seq`) and field, value, … as given.
        entries: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
    },
    /// What a stream trim (`XTRIM`, or `XADD … MAXLEN|MINID`) left, as
    /// `XTRIM key MINID = <first ID kept>`: exact whatever the origin's
    /// trim strategy (`~` trims whole nodes, whose layout differs between
    /// servers).
    XTrim {
        /// The first entry ID the trim kept.
        min_id: Vec<u8>,
    },
    /// `XDEL key id …`.
    XDel {
        /// The IDs as given.
        ids: Vec<Vec<u8>>,
    },
    /// The stream's consumer groups are now exactly these (after
    /// `XREADGROUP`, `XACK`, `XCLAIM`, `XAUTOCLAIM`, or a blocked
    /// `XREADGROUP` served later): the peer diffs its own groups against
    /// them (`core::stream_groups`), its entries untouched.
    XGroups {
        /// Every group of the stream, as `XINFO STREAM … FULL` shows it.
        groups: Vec<crate::core::protocol::StreamGroup>,
    },
}

/// Why an operation cannot run on a list (as Redis would refuse it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListOpError {
    /// `LSET` past the end (Redis: "index out of range").
    IndexOutOfRange,
    /// `LSET` on a missing key (Redis: "no such key").
    NoSuchKey,
    /// A stream command: its meaning is Redis's own (proven by the self-check
    /// against the origin's digest), not modelled on a list.
    Stream,
}

impl ListOp {
    /// The commands that do this on Redis, without the key (which goes first
    /// among the arguments of each): one, except for folded stream appends.
    pub fn commands(&self) -> Vec<(&'static str, Vec<Vec<u8>>)> {
        match self {
            ListOp::XAdd { entries } => entries
                .iter()
                .map(|(id, fields)| {
                    let mut args = Vec::with_capacity(1 + fields.len());
                    args.push(id.clone());
                    args.extend(fields.iter().cloned());
                    ("XADD", args)
                })
                .collect(),
            _ => self.command().into_iter().collect(),
        }
    }

    /// The one command that does this on Redis, without the key (which goes
    /// first among the arguments); `None` for stream appends (one command
    /// per entry, [`ListOp::commands`]) and consumer groups (planned against
    /// this node's groups, `core::stream_groups`).
    fn command(&self) -> Option<(&'static str, Vec<Vec<u8>>)> {
        let num = |n: i64| n.to_string().into_bytes();
        Some(match self {
            ListOp::Push { left, values } => {
                (if *left { "LPUSH" } else { "RPUSH" }, values.clone())
            }
            ListOp::Pop { left, count } => (
                if *left { "LPOP" } else { "RPOP" },
                vec![count.to_string().into_bytes()],
            ),
            ListOp::Set { index, value } => ("LSET", vec![num(*index), value.clone()]),
            ListOp::Trim { start, stop } => ("LTRIM", vec![num(*start), num(*stop)]),
            ListOp::Rem { count, value } => ("LREM", vec![num(*count), value.clone()]),
            ListOp::XAdd { .. } | ListOp::XGroups { .. } => return None,
            ListOp::XTrim { min_id } => (
                "XTRIM",
                vec![b"MINID".to_vec(), b"=".to_vec(), min_id.clone()],
            ),
            ListOp::XDel { ids } => ("XDEL", ids.clone()),
            ListOp::Insert {
                before,
                pivot,
                value,
            } => (
                "LINSERT",
                vec![
                    if *before {
                        b"BEFORE".to_vec()
                    } else {
                        b"AFTER".to_vec()
                    },
                    pivot.clone(),
                    value.clone(),
                ],
            ),
        })
    }

    /// Bytes of values the record carries (a lower bound of its encoded size).
    pub fn payload_bytes(&self) -> usize {
        match self {
            ListOp::Push { values, .. } => values.iter().map(Vec::len).sum(),
            ListOp::Pop { .. } | ListOp::Trim { .. } => 8,
            ListOp::Set { value, .. } | ListOp::Rem { value, .. } => value.len() + 8,
            ListOp::Insert { pivot, value, .. } => pivot.len() + value.len(),
            ListOp::XAdd { entries } => entries
                .iter()
                .map(|(id, f)| id.len() + f.iter().map(Vec::len).sum::<usize>())
                .sum(),
            ListOp::XTrim { min_id } => min_id.len(),
            ListOp::XDel { ids } => ids.iter().map(Vec::len).sum(),
            ListOp::XGroups { groups } => groups
                .iter()
                .map(|g| {
                    g.name.len()
                        + g.last_delivered_id.len()
                        + g.consumers
                            .iter()
                            .map(|c| {
                                c.name.len()
                                    + c.pending.iter().map(|p| p.0.len() + 16).sum::<usize>()
                            })
                            .sum::<usize>()
                })
                .sum(),
        }
    }
}

/// Run `op` on `list` (head first; `None`: the key is missing) as Redis
/// runs the command; an emptied list is removed, like Redis's key.
///
/// Why a reference in the core: the simulation's lists run it, and it pins
/// down the meaning the glue's replay on Redis must have.
pub fn apply(list: &mut Option<Vec<Vec<u8>>>, op: &ListOp) -> Result<(), ListOpError> {
    match op {
        ListOp::XAdd { .. }
        | ListOp::XTrim { .. }
        | ListOp::XDel { .. }
        | ListOp::XGroups { .. } => return Err(ListOpError::Stream),
        ListOp::Push { left, values } => {
            let l = list.get_or_insert_with(Vec::new);
            for v in values {
                if *left {
                    l.insert(0, v.clone());
                } else {
                    l.push(v.clone());
                }
            }
        }
        ListOp::Pop { left, count } => {
            if let Some(l) = list.as_mut() {
                let n = usize::try_from(*count).unwrap_or(usize::MAX).min(l.len());
                if *left {
                    l.drain(..n);
                } else {
                    l.truncate(l.len() - n);
                }
            }
        }
        ListOp::Set { index, value } => {
            let l = list.as_mut().ok_or(ListOpError::NoSuchKey)?;
            let i = normalize(*index, l.len()).ok_or(ListOpError::IndexOutOfRange)?;
            l[i] = value.clone();
        }
        ListOp::Trim { start, stop } => {
            if let Some(l) = list.as_mut() {
                let len = i64::try_from(l.len()).unwrap_or(i64::MAX);
                let mut s = if *start < 0 {
                    len.saturating_add(*start)
                } else {
                    *start
                };
                let mut e = if *stop < 0 {
                    len.saturating_add(*stop)
                } else {
                    *stop
                };
                s = s.max(0);
                if s > e || s >= len {
                    l.clear();
                } else {
                    e = e.min(len - 1);
                    let (s, e) = (s as usize, e as usize);
                    l.truncate(e + 1);
                    l.drain(..s);
                }
            }
        }
        ListOp::Rem { count, value } => {
            if let Some(l) = list.as_mut() {
                let limit = if *count == 0 {
                    usize::MAX
                } else {
                    usize::try_from(count.unsigned_abs()).unwrap_or(usize::MAX)
                };
                let mut removed = 0usize;
                if *count >= 0 {
                    l.retain(|v| {
                        let drop = removed < limit && v == value;
                        removed += usize::from(drop);
                        !drop
                    });
                } else {
                    let mut i = l.len();
                    while i > 0 && removed < limit {
                        i -= 1;
                        if l[i] == *value {
                            l.remove(i);
                            removed += 1;
                        }
                    }
                }
            }
        }
        ListOp::Insert {
            before,
            pivot,
            value,
        } => {
            if let Some(l) = list.as_mut() {
                if let Some(i) = l.iter().position(|v| v == pivot) {
                    let at = if *before { i } else { i + 1 };
                    l.insert(at, value.clone());
                }
            }
        }
    }
    if list.as_ref().is_some_and(Vec::is_empty) {
        *list = None;
    }
    Ok(())
}

/// An index as Redis reads it (negative from the tail), if inside the list.
fn normalize(index: i64, len: usize) -> Option<usize> {
    let len = i64::try_from(len).ok()?;
    let i = if index < 0 {
        len.checked_add(index)?
    } else {
        index
    };
    (0..len).contains(&i).then_some(i as usize)
}

/// A stream entry ID as `XADD` prints it (`ms-seq`), as its two numbers;
/// `None` for anything else (`*`, `ms` alone, `ms-*`, out of range).
///
/// Why here: the apply appends a peer's entries through the key API, which
/// takes the ID as numbers; whatever does not parse goes the command way,
/// where the server's own parser answers.
pub fn stream_id(id: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(id).ok()?;
    let (ms, seq) = text.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(seq) {
        return None;
    }
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(items: &[&str]) -> Option<Vec<Vec<u8>>> {
        Some(items.iter().map(|s| s.as_bytes().to_vec()).collect())
    }

    fn run(start: &[&str], op: ListOp) -> Option<Vec<Vec<u8>>> {
        let mut list = if start.is_empty() { None } else { l(start) };
        apply(&mut list, &op).expect("runs");
        list
    }

    fn v(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn pushes_put_values_in_redis_order() {
        let values = vec![v("a"), v("b"), v("c")];
        let left = ListOp::Push {
            left: true,
            values: values.clone(),
        };
        assert_eq!(run(&["x"], left), l(&["c", "b", "a", "x"]));
        let right = ListOp::Push {
            left: false,
            values,
        };
        assert_eq!(run(&[], right), l(&["a", "b", "c"]));
    }

    #[test]
    fn pops_take_at_most_count_and_remove_an_emptied_key() {
        let pop = |left, count| ListOp::Pop { left, count };
        assert_eq!(run(&["a", "b", "c"], pop(true, 2)), l(&["c"]));
        assert_eq!(run(&["a", "b", "c"], pop(false, 1)), l(&["a", "b"]));
        assert_eq!(run(&["a", "b"], pop(false, 9)), None);
        assert_eq!(run(&[], pop(true, 1)), None);
    }

    #[test]
    fn lset_indexes_like_redis_and_refuses_what_redis_refuses() {
        let set = |index| ListOp::Set {
            index,
            value: v("z"),
        };
        assert_eq!(run(&["a", "b", "c"], set(-1)), l(&["a", "b", "z"]));
        assert_eq!(run(&["a", "b", "c"], set(0)), l(&["z", "b", "c"]));
        let mut list = l(&["a"]);
        assert_eq!(apply(&mut list, &set(1)), Err(ListOpError::IndexOutOfRange));
        assert_eq!(
            apply(&mut list, &set(-2)),
            Err(ListOpError::IndexOutOfRange)
        );
        let mut none = None;
        assert_eq!(apply(&mut none, &set(0)), Err(ListOpError::NoSuchKey));
    }

    #[test]
    fn ltrim_follows_redis_range_rules() {
        let abcde = ["a", "b", "c", "d", "e"];
        let trim = |start, stop| ListOp::Trim { start, stop };
        assert_eq!(run(&abcde, trim(1, 2)), l(&["b", "c"]));
        assert_eq!(run(&abcde, trim(-2, -1)), l(&["d", "e"]));
        assert_eq!(run(&abcde, trim(-100, 100)), l(&abcde));
        assert_eq!(run(&abcde, trim(3, 1)), None);
        assert_eq!(run(&abcde, trim(5, 9)), None);
        assert_eq!(run(&abcde, trim(0, -100)), None);
    }

    #[test]
    fn lrem_counts_from_the_head_the_tail_or_removes_all() {
        let xs = ["x", "a", "x", "b", "x"];
        let rem = |count| ListOp::Rem {
            count,
            value: v("x"),
        };
        assert_eq!(run(&xs, rem(2)), l(&["a", "b", "x"]));
        assert_eq!(run(&xs, rem(-2)), l(&["x", "a", "b"]));
        assert_eq!(run(&xs, rem(0)), l(&["a", "b"]));
        assert_eq!(run(&["x"], rem(0)), None);
    }

    #[test]
    fn linsert_uses_the_first_pivot_from_the_head() {
        let ins = |before| ListOp::Insert {
            before,
            pivot: v("p"),
            value: v("n"),
        };
        assert_eq!(run(&["a", "p", "p"], ins(true)), l(&["a", "n", "p", "p"]));
        assert_eq!(run(&["a", "p", "p"], ins(false)), l(&["a", "p", "n", "p"]));
        assert_eq!(run(&["a"], ins(true)), l(&["a"]));
    }

    #[test]
    fn commands_name_the_redis_command_and_its_arguments() {
        let (name, args) = ListOp::Insert {
            before: false,
            pivot: v("p"),
            value: v("n"),
        }
        .command()
        .expect("one command");
        assert_eq!(name, "LINSERT");
        assert_eq!(args, vec![v("AFTER"), v("p"), v("n")]);
        let (name, args) = ListOp::Pop {
            left: false,
            count: 3,
        }
        .command()
        .expect("one command");
        assert_eq!((name, args), ("RPOP", vec![v("3")]));
        let (name, args) = ListOp::Trim { start: -2, stop: 5 }
            .command()
            .expect("one command");
        assert_eq!((name, args), ("LTRIM", vec![v("-2"), v("5")]));
        // Consumer groups are planned, never replayed as a command.
        assert!(ListOp::XGroups { groups: Vec::new() }.commands().is_empty());
    }

    #[test]
    fn stream_ids_parse_only_in_their_printed_form() {
        assert_eq!(stream_id(b"1700000000000-3"), Some((1_700_000_000_000, 3)));
        assert_eq!(stream_id(b"0-1"), Some((0, 1)));
        assert_eq!(
            stream_id(b"18446744073709551615-18446744073709551615"),
            Some((u64::MAX, u64::MAX))
        );
        for bad in [
            &b"*"[..],
            b"5",
            b"5-*",
            b"-1",
            b"5-",
            b"5-+1",
            b"18446744073709551616-0",
            b"5-1-2",
            b"\xff",
        ] {
            assert_eq!(stream_id(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
