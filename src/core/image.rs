//! Key images: parse what Redis replies into a [`Value`], and turn a
//! [`Value`] back into the commands that rebuild it.
//!
//! Why pure: both directions are data transformations that must be exact
//! (same digest, same TTL, same consumer groups on both sides) and must
//! never panic on whatever a peer sends; here they are tested without Redis.

use super::protocol::{HashFields, StreamConsumer, StreamGroup, StreamImage, Value};

/// An owned Redis reply (RESP2 shapes), detached from the server's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Bulk or simple string.
    Bytes(Vec<u8>),
    /// Integer.
    Int(i64),
    /// Array.
    Array(Vec<Reply>),
    /// Nil.
    Nil,
    /// Error text.
    Error(String),
}

impl Reply {
    fn bytes(&self) -> Result<Vec<u8>, String> {
        match self {
            Reply::Bytes(b) => Ok(b.clone()),
            Reply::Int(i) => Ok(i.to_string().into_bytes()),
            other => Err(format!("expected a string, got {other:?}")),
        }
    }

    fn int(&self) -> Result<i64, String> {
        match self {
            Reply::Int(i) => Ok(*i),
            Reply::Bytes(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| "expected an integer".to_string()),
            other => Err(format!("expected an integer, got {other:?}")),
        }
    }

    fn array(&self) -> Result<&[Reply], String> {
        match self {
            Reply::Array(a) => Ok(a),
            other => Err(format!("expected an array, got {other:?}")),
        }
    }

    /// A flat field/value array's value for `field`.
    fn field(&self, field: &str) -> Result<&Reply, String> {
        let a = self.array()?;
        a.chunks(2)
            .find(|kv| matches!(&kv[0], Reply::Bytes(b) if b == field.as_bytes()))
            .and_then(|kv| kv.get(1))
            .ok_or_else(|| format!("reply lacks '{field}'"))
    }
}

/// A flat array of strings (LRANGE, SMEMBERS).
pub fn strings(r: &Reply) -> Result<Vec<Vec<u8>>, String> {
    r.array()?.iter().map(Reply::bytes).collect()
}

/// Field/value or member/score pairs.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A flat array of pairs (HGETALL, ZRANGE WITHSCORES).
pub fn pairs(r: &Reply) -> Result<Pairs, String> {
    let flat = strings(r)?;
    if flat.len() % 2 != 0 {
        return Err("odd number of elements in a pair list".into());
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        out.push((a, b));
    }
    Ok(out)
}

/// Join a hash's field/value pairs (HGETALL) with the reply of `HPEXPIRETIME key FIELDS n
/// f1..fn` for the same fields, in the same order: a hash image with field TTLs, or a plain
/// [`Value::Hash`] when no field has one. A field without a TTL (-1) gets none; a field the
/// TTL reply says is missing (-2) expired between the two reads (each call reads the clock
/// anew) and is left out: kept without its TTL, it would live on forever on the peer (CI on
/// 7.4.1 once showed a field that had expired on both sides come back with no TTL).
pub fn hash_with_ttls(items: Pairs, ttls: &[i64]) -> Result<Value, String> {
    if ttls.len() != items.len() {
        return Err(format!(
            "HPEXPIRETIME gave {} times for {} fields",
            ttls.len(),
            items.len()
        ));
    }
    let live = items.into_iter().zip(ttls).filter(|(_, t)| **t != -2);
    if ttls.iter().all(|t| *t < 0) {
        return Ok(Value::Hash(live.map(|(item, _)| item).collect()));
    }
    let fields: HashFields = live
        .map(|((f, v), t)| (f, v, (*t >= 0).then_some(*t)))
        .collect();
    Ok(Value::HashTtl(fields))
}

/// The RDB version a `DUMP` payload was written with: the two little-endian bytes before its
/// 8-byte checksum. `None` if the payload is too short to have them.
pub fn dump_rdb_version(payload: &[u8]) -> Option<u32> {
    let n = payload.len();
    let v = payload.get(n.checked_sub(10)?..n - 8)?;
    Some(u32::from(u16::from_le_bytes([v[0], v[1]])))
}

/// A flat array of integers (the reply of `HPEXPIRETIME`).
pub fn ints(r: &Reply) -> Result<Vec<i64>, String> {
    r.array()?.iter().map(Reply::int).collect()
}

/// The same hash without its field TTLs, for a server that cannot store them.
pub fn without_field_ttls(fields: &HashFields) -> Value {
    Value::Hash(
        fields
            .iter()
            .map(|(f, v, _)| (f.clone(), v.clone()))
            .collect(),
    )
}

/// Parse `XINFO STREAM <key> FULL COUNT 0`.
pub fn parse_stream(full: &Reply) -> Result<StreamImage, String> {
    let mut img = StreamImage {
        last_id: full.field("last-generated-id")?.bytes()?,
        max_deleted_id: full.field("max-deleted-entry-id")?.bytes()?,
        entries_added: full.field("entries-added")?.int()?,
        ..Default::default()
    };
    for e in full.field("entries")?.array()? {
        let e = e.array()?;
        let (id, fields) = match e {
            [id, fields] => (id.bytes()?, strings(fields)?),
            _ => return Err("malformed stream entry".into()),
        };
        img.entries.push((id, fields));
    }
    img.groups = parse_stream_groups(full)?;
    Ok(img)
}

/// A stream entry as text: ID (`ms-seq`) and field, value, ….
pub type RawEntry = (Vec<u8>, Vec<Vec<u8>>);

/// The entries of an `XRANGE` reply.
pub fn stream_entries(items: &[Reply]) -> Result<Vec<RawEntry>, String> {
    items
        .iter()
        .map(|e| match e.array()? {
            [id, fields] => Ok((id.bytes()?, strings(fields)?)),
            _ => Err("malformed stream entry".to_string()),
        })
        .collect()
}

/// The last generated ID, the count of entries ever added and the largest
/// deleted ID, from an `XINFO STREAM` reply.
pub fn stream_meta(info: &Reply) -> Result<(Vec<u8>, i64, Vec<u8>), String> {
    Ok((
        info.field("last-generated-id")?.bytes()?,
        info.field("entries-added")?.int()?,
        info.field("max-deleted-entry-id")?.bytes()?,
    ))
}

/// The most pending entries any group of an `XINFO GROUPS` reply has.
pub fn most_pending(groups: &Reply) -> Result<i64, String> {
    let mut most = 0;
    for g in groups.array()? {
        most = most.max(g.field("pending")?.int()?);
    }
    Ok(most)
}

/// Per group of an `XINFO GROUPS` reply: name, consumers, pending count,
/// last delivered ID and entries read, flattened (what a served
/// `XREADGROUP` moves; not the lag, which any append moves).
pub fn group_summary(groups: &Reply) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for g in groups.array()? {
        out.push(g.field("name")?.bytes()?);
        out.push(g.field("consumers")?.int()?.to_string().into_bytes());
        out.push(g.field("pending")?.int()?.to_string().into_bytes());
        out.push(g.field("last-delivered-id")?.bytes()?);
        out.push(match g.field("entries-read")? {
            Reply::Nil => b"-".to_vec(),
            r => r.int()?.to_string().into_bytes(),
        });
    }
    Ok(out)
}

/// The consumer groups of an `XINFO STREAM … FULL` reply.
pub fn parse_stream_groups(full: &Reply) -> Result<Vec<StreamGroup>, String> {
    let mut out = Vec::new();
    for g in full.field("groups")?.array()? {
        let entries_read = match g.field("entries-read")? {
            Reply::Nil => None,
            r => Some(r.int()?),
        };
        let mut group = StreamGroup {
            name: g.field("name")?.bytes()?,
            last_delivered_id: g.field("last-delivered-id")?.bytes()?,
            entries_read,
            consumers: Vec::new(),
        };
        for c in g.field("consumers")?.array()? {
            let mut consumer = StreamConsumer {
                name: c.field("name")?.bytes()?,
                pending: Vec::new(),
            };
            for p in c.field("pending")?.array()? {
                match p.array()? {
                    [id, time, count] => {
                        consumer
                            .pending
                            .push((id.bytes()?, time.int()?, count.int()?))
                    }
                    _ => return Err("malformed pending entry".into()),
                }
            }
            group.consumers.push(consumer);
        }
        out.push(group);
    }
    Ok(out)
}

/// A command as its arguments.
pub type Command = Vec<Vec<u8>>;

/// Elements per rebuilding command, so no single command (or its
/// propagation to AOF and replicas) grows without bound.
pub const CHUNK: usize = 512;

/// Name of the scratch group used to create an empty stream.
const TMP_GROUP: &[u8] = b"\x00bisync-tmp";
/// The field of a placeholder entry (see `rebuild_stream`): deleted again before the
/// rebuild ends.
const PLACEHOLDER_FIELD: &[u8] = b"\x00bisync-placeholder";

fn cmd(parts: &[&[u8]]) -> Command {
    parts.iter().map(|p| p.to_vec()).collect()
}

fn with_pairs(head: &[&[u8]], items: &[(Vec<u8>, Vec<u8>)], swap: bool) -> Command {
    let mut c = cmd(head);
    for (a, b) in items {
        if swap {
            c.push(b.clone());
            c.push(a.clone());
        } else {
            c.push(a.clone());
            c.push(b.clone());
        }
    }
    c
}

/// The commands that make `key` hold exactly `value` with `expire_at_ms`.
/// `Dump` values yield a RESTORE (module types only).
pub fn rebuild(key: &[u8], value: &Value, expire_at_ms: Option<i64>) -> Vec<Command> {
    let mut out: Vec<Command> = Vec::new();
    let at = expire_at_ms.map(|t| t.to_string().into_bytes());
    match value {
        Value::String(v) => {
            let mut c = cmd(&[b"SET", key, v]);
            if let Some(at) = &at {
                c.push(b"PXAT".to_vec());
                c.push(at.clone());
            }
            return vec![c];
        }
        Value::Dump(p) => {
            let mut c = cmd(&[
                b"RESTORE",
                key,
                at.as_deref().unwrap_or(b"0"),
                p,
                b"REPLACE",
            ]);
            if at.is_some() {
                c.push(b"ABSTTL".to_vec());
            }
            return vec![c];
        }
        _ => out.push(cmd(&[b"DEL", key])),
    }
    match value {
        Value::Hash(items) => {
            for ch in items.chunks(CHUNK) {
                out.push(with_pairs(&[b"HSET", key], ch, false));
            }
        }
        Value::List(items) => {
            for ch in items.chunks(CHUNK) {
                let mut c = cmd(&[b"RPUSH", key]);
                c.extend(ch.iter().cloned());
                out.push(c);
            }
        }
        Value::Set(items) => {
            for ch in items.chunks(CHUNK) {
                let mut c = cmd(&[b"SADD", key]);
                c.extend(ch.iter().cloned());
                out.push(c);
            }
        }
        Value::ZSet(items) => {
            for ch in items.chunks(CHUNK) {
                out.push(with_pairs(&[b"ZADD", key], ch, true));
            }
        }
        Value::HashTtl(fields) => rebuild_hash_ttl(&mut out, key, fields),
        Value::Stream(s) => rebuild_stream(&mut out, key, s),
        Value::String(_) | Value::Dump(_) => {}
    }
    if let Some(at) = at {
        out.push(cmd(&[b"PEXPIREAT", key, &at]));
    }
    out
}

/// HSET every field, then one `HPEXPIREAT` per run of fields sharing an expiry time. A time
/// already past deletes the field at once (Redis does that for a past `HPEXPIREAT`), as it would
/// have expired on the origin by then.
fn rebuild_hash_ttl(out: &mut Vec<Command>, key: &[u8], fields: &HashFields) {
    for ch in fields.chunks(CHUNK) {
        let mut c = cmd(&[b"HSET", key]);
        for (f, v, _) in ch {
            c.push(f.clone());
            c.push(v.clone());
        }
        out.push(c);
    }
    let mut timed: Vec<(i64, &Vec<u8>)> = fields
        .iter()
        .filter_map(|(f, _, t)| t.map(|t| (t, f)))
        .collect();
    timed.sort();
    for group in timed.chunk_by(|a, b| a.0 == b.0) {
        for ch in group.chunks(CHUNK) {
            let at = ch[0].0.to_string().into_bytes();
            let n = ch.len().to_string().into_bytes();
            let mut c = cmd(&[b"HPEXPIREAT", key, &at, b"FIELDS", &n]);
            c.extend(ch.iter().map(|(_, f)| (*f).clone()));
            out.push(c);
        }
    }
}

/// A stream entry ID (`ms-seq`) as numbers, for ordering.
fn stream_id(id: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(id).ok()?;
    let (ms, seq) = s.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Rebuild a stream: its entries, then its metadata, then its groups.
///
/// A pending entry may name an entry that is no longer in the stream (Redis keeps it in the
/// PEL after an `XDEL` or a trim), and `XCLAIM … FORCE` ignores IDs that are not in the
/// stream. Such an ID is added as a placeholder entry, in ID order among the real ones,
/// claimed, then removed again (see the end); `XSETID` then restores the count of entries
/// added and the largest deleted ID. Without it a peer's PEL lacked those entries (found by the convergence test
/// with consumer-group traffic).
fn rebuild_stream(out: &mut Vec<Command>, key: &[u8], s: &StreamImage) {
    out.push(cmd(&[
        b"XGROUP",
        b"CREATE",
        key,
        TMP_GROUP,
        b"0",
        b"MKSTREAM",
    ]));
    let present: std::collections::BTreeSet<&[u8]> =
        s.entries.iter().map(|(id, _)| id.as_slice()).collect();
    let mut placeholders: Vec<((u64, u64), &[u8])> = s
        .groups
        .iter()
        .flat_map(|g| g.consumers.iter())
        .flat_map(|c| c.pending.iter())
        .map(|(id, _, _)| id.as_slice())
        .filter(|id| !present.contains(id))
        .filter_map(|id| stream_id(id).map(|n| (n, id)))
        .collect();
    placeholders.sort_unstable();
    placeholders.dedup();
    let mut next = placeholders.iter().peekable();
    for (id, fields) in &s.entries {
        let here = stream_id(id);
        while let Some(&&(n, p)) = next.peek() {
            if here.is_some_and(|h| n > h) {
                break;
            }
            out.push(cmd(&[b"XADD", key, p, PLACEHOLDER_FIELD, b""]));
            next.next();
        }
        let mut c = cmd(&[b"XADD", key, id]);
        c.extend(fields.iter().cloned());
        out.push(c);
    }
    for &(_, p) in next {
        out.push(cmd(&[b"XADD", key, p, PLACEHOLDER_FIELD, b""]));
    }
    // Redis refuses an added count below the length, which the placeholders raise for now.
    let total = (s.entries.len() + placeholders.len()) as i64;
    out.push(xsetid(key, s, s.entries_added.max(total)));
    out.push(cmd(&[b"XGROUP", b"DESTROY", key, TMP_GROUP]));
    for g in &s.groups {
        let mut c = cmd(&[b"XGROUP", b"CREATE", key, &g.name, &g.last_delivered_id]);
        if let Some(n) = g.entries_read {
            c.push(b"ENTRIESREAD".to_vec());
            c.push(n.to_string().into_bytes());
        }
        out.push(c);
        for consumer in &g.consumers {
            out.push(cmd(&[
                b"XGROUP",
                b"CREATECONSUMER",
                key,
                &g.name,
                &consumer.name,
            ]));
            for (id, time, count) in &consumer.pending {
                let t = time.to_string().into_bytes();
                let n = count.to_string().into_bytes();
                out.push(cmd(&[
                    b"XCLAIM",
                    key,
                    &g.name,
                    &consumer.name,
                    b"0",
                    id,
                    b"TIME",
                    &t,
                    b"RETRYCOUNT",
                    &n,
                    b"FORCE",
                    b"JUSTID",
                ]));
            }
        }
    }
    if !placeholders.is_empty() {
        // Those before the first entry go as a trim does, which leaves the largest deleted ID
        // alone (as the trim that removed the originals did; `XSETID` cannot lower it again).
        // Those after it were `XDEL`ed on the origin, whose largest deleted ID covers them.
        let first = s
            .entries
            .first()
            .and_then(|(id, _)| stream_id(id).map(|n| (n, id)));
        let (head, rest): (Vec<_>, Vec<_>) = placeholders
            .iter()
            .partition(|(n, _)| first.is_none_or(|(f, _)| *n < f));
        if !head.is_empty() {
            out.push(match first {
                Some((_, id)) => cmd(&[b"XTRIM", key, b"MINID", b"=", id]),
                None => cmd(&[b"XTRIM", key, b"MAXLEN", b"=", b"0"]),
            });
        }
        if !rest.is_empty() {
            let mut c = cmd(&[b"XDEL", key]);
            c.extend(rest.iter().map(|(_, p)| p.to_vec()));
            out.push(c);
        }
        out.push(xsetid(key, s, s.entries_added));
    }
}

/// `XSETID` restoring the stream's last ID, largest deleted ID and `added` as its count of
/// entries added.
fn xsetid(key: &[u8], s: &StreamImage, added: i64) -> Command {
    let added = added.to_string().into_bytes();
    cmd(&[
        b"XSETID",
        key,
        &s.last_id,
        b"ENTRIESADDED",
        &added,
        b"MAXDELETEDID",
        &s.max_deleted_id,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Reply {
        Reply::Bytes(s.as_bytes().to_vec())
    }

    fn sample_full() -> Reply {
        Reply::Array(vec![
            b("length"),
            Reply::Int(1),
            b("last-generated-id"),
            b("5-0"),
            b("max-deleted-entry-id"),
            b("2-0"),
            b("entries-added"),
            Reply::Int(3),
            b("recorded-first-entry-id"),
            b("5-0"),
            b("entries"),
            Reply::Array(vec![Reply::Array(vec![
                b("5-0"),
                Reply::Array(vec![b("f"), b("v")]),
            ])]),
            b("groups"),
            Reply::Array(vec![Reply::Array(vec![
                b("name"),
                b("g"),
                b("last-delivered-id"),
                b("5-0"),
                b("entries-read"),
                Reply::Nil,
                b("consumers"),
                Reply::Array(vec![Reply::Array(vec![
                    b("name"),
                    b("alice"),
                    b("seen-time"),
                    Reply::Int(1),
                    b("pending"),
                    Reply::Array(vec![Reply::Array(vec![
                        b("5-0"),
                        Reply::Int(1700),
                        Reply::Int(2),
                    ])]),
                ])]),
            ])]),
        ])
    }

    #[test]
    fn parses_xinfo_full() {
        let s = parse_stream(&sample_full()).unwrap();
        assert_eq!(s.last_id, b"5-0");
        assert_eq!(s.entries_added, 3);
        assert_eq!(
            s.entries,
            vec![(b"5-0".to_vec(), vec![b"f".to_vec(), b"v".to_vec()])]
        );
        assert_eq!(s.groups[0].entries_read, None);
        assert_eq!(
            s.groups[0].consumers[0].pending,
            vec![(b"5-0".to_vec(), 1700, 2)]
        );
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        assert!(parse_stream(&Reply::Nil).is_err());
        assert!(parse_stream(&Reply::Array(vec![b("last-generated-id")])).is_err());
        assert!(pairs(&Reply::Array(vec![b("a")])).is_err());
    }

    #[test]
    fn rebuild_sets_type_then_ttl() {
        let v = Value::Hash(vec![(b"f".to_vec(), b"v".to_vec())]);
        let c = rebuild(b"k", &v, Some(123));
        assert_eq!(c[0], vec![b"DEL".to_vec(), b"k".to_vec()]);
        assert_eq!(c[1][0], b"HSET");
        assert_eq!(
            c.last().unwrap(),
            &vec![b"PEXPIREAT".to_vec(), b"k".to_vec(), b"123".to_vec()]
        );
        let s = rebuild(b"k", &Value::String(b"x".to_vec()), None);
        assert_eq!(s, vec![vec![b"SET".to_vec(), b"k".to_vec(), b"x".to_vec()]]);
    }

    #[test]
    fn large_collections_are_chunked() {
        let v = Value::Set(
            (0..(CHUNK * 2 + 1))
                .map(|i| i.to_string().into_bytes())
                .collect(),
        );
        let c = rebuild(b"k", &v, None);
        assert_eq!(c.len(), 1 + 3);
        assert!(c.iter().all(|x| x.len() <= CHUNK + 2));
    }

    fn bs(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn field_ttls_join_their_fields_and_only_then_make_a_ttl_image() {
        let items = vec![(bs("a"), bs("1")), (bs("b"), bs("2")), (bs("c"), bs("3"))];
        assert_eq!(
            hash_with_ttls(items.clone(), &[-1, -1, -1]).unwrap(),
            Value::Hash(items.clone())
        );
        // A field gone by the time its TTL was read (it expired in between) is left out.
        assert_eq!(
            hash_with_ttls(items.clone(), &[-1, -2, -1]).unwrap(),
            Value::Hash(vec![items[0].clone(), items[2].clone()])
        );
        let v = hash_with_ttls(items.clone(), &[-1, 5000, -2]).unwrap();
        assert_eq!(
            v,
            Value::HashTtl(vec![
                (bs("a"), bs("1"), None),
                (bs("b"), bs("2"), Some(5000)),
            ])
        );
        assert!(hash_with_ttls(items, &[1]).is_err());
        assert!(ints(&Reply::Array(vec![b("x")])).is_err());
    }

    #[test]
    fn dump_rdb_version_is_read_before_the_checksum() {
        let mut p = vec![7u8, 1, 2, 3];
        p.extend(12u16.to_le_bytes());
        p.extend([0u8; 8]);
        assert_eq!(dump_rdb_version(&p), Some(12));
        assert_eq!(dump_rdb_version(&[0u8; 9]), None);
    }

    #[test]
    fn field_ttls_are_rebuilt_with_hpexpireat_grouped_by_time() {
        let v = Value::HashTtl(vec![
            (bs("a"), bs("1"), Some(9)),
            (bs("b"), bs("2"), None),
            (bs("c"), bs("3"), Some(7)),
            (bs("d"), bs("4"), Some(9)),
        ]);
        let c = rebuild(b"h", &v, Some(100));
        assert_eq!(c[0], vec![bs("DEL"), bs("h")]);
        assert_eq!(c[1][0], b"HSET");
        assert_eq!(c[1].len(), 2 + 8);
        assert_eq!(
            c[2],
            vec![
                bs("HPEXPIREAT"),
                bs("h"),
                bs("7"),
                bs("FIELDS"),
                bs("1"),
                bs("c")
            ]
        );
        assert_eq!(
            c[3],
            vec![
                bs("HPEXPIREAT"),
                bs("h"),
                bs("9"),
                bs("FIELDS"),
                bs("2"),
                bs("a"),
                bs("d")
            ]
        );
        assert_eq!(c[4], vec![bs("PEXPIREAT"), bs("h"), bs("100")]);
        assert_eq!(c.len(), 5);
        let Value::HashTtl(f) = &v else {
            unreachable!()
        };
        assert!(matches!(without_field_ttls(f), Value::Hash(p) if p.len() == 4));
    }

    #[test]
    fn zset_scores_go_before_members() {
        let c = rebuild(
            b"z",
            &Value::ZSet(vec![(b"m".to_vec(), b"1.5".to_vec())]),
            None,
        );
        assert_eq!(
            c[1],
            vec![
                b"ZADD".to_vec(),
                b"z".to_vec(),
                b"1.5".to_vec(),
                b"m".to_vec()
            ]
        );
    }

    #[test]
    fn stream_rebuild_restores_groups_and_pel() {
        let s = parse_stream(&sample_full()).unwrap();
        let c = rebuild(b"s", &Value::Stream(s), None);
        let names: Vec<String> = c
            .iter()
            .map(|x| String::from_utf8_lossy(&x[0]).into_owned())
            .collect();
        assert_eq!(
            names,
            ["DEL", "XGROUP", "XADD", "XSETID", "XGROUP", "XGROUP", "XGROUP", "XCLAIM"]
        );
        assert!(c[7].contains(&b"1700".to_vec()) && c[7].contains(&b"2".to_vec()));
    }

    #[test]
    fn stream_rebuild_adds_then_deletes_placeholders_for_pending_ids_no_longer_in_the_stream() {
        let consumer = StreamConsumer {
            name: b"c".to_vec(),
            pending: vec![(b"1-0".to_vec(), 5, 1), (b"3-0".to_vec(), 6, 2)],
        };
        let s = StreamImage {
            entries: vec![(b"2-0".to_vec(), vec![b"f".to_vec(), b"v".to_vec()])],
            last_id: b"3-0".to_vec(),
            max_deleted_id: b"3-0".to_vec(),
            entries_added: 3,
            groups: vec![StreamGroup {
                name: b"g".to_vec(),
                last_delivered_id: b"3-0".to_vec(),
                entries_read: Some(3),
                consumers: vec![consumer],
            }],
        };
        let c = rebuild(b"s", &Value::Stream(s), None);
        let shown: Vec<String> = c
            .iter()
            .map(|x| String::from_utf8_lossy(&x[..x.len().min(3)].concat()).into_owned())
            .collect();
        // Entries and placeholders in ID order, claims, then the placeholders go again.
        let xadds: Vec<&String> = shown.iter().filter(|s| s.starts_with("XADD")).collect();
        assert_eq!(xadds, ["XADDs1-0", "XADDs2-0", "XADDs3-0"]);
        // 1-0 (before the first entry) goes by a trim, 3-0 by a delete.
        let trim = c.iter().position(|x| x[0] == b"XTRIM").expect("an XTRIM");
        assert_eq!(
            c[trim][2..],
            [b"MINID".to_vec(), b"=".to_vec(), b"2-0".to_vec()]
        );
        let del = c.iter().position(|x| x[0] == b"XDEL").expect("an XDEL");
        assert_eq!(c[del][2..], [b"3-0".to_vec()]);
        let claims = c.iter().filter(|x| x[0] == b"XCLAIM").count();
        assert_eq!(claims, 2);
        assert!(c.iter().rposition(|x| x[0] == b"XCLAIM").unwrap() < del);
        let last = c.last().unwrap();
        assert_eq!(last[0], b"XSETID");
        assert!(
            last.contains(&b"3".to_vec()),
            "ENTRIESADDED restored: {last:?}"
        );
    }
}
