//! The messages two nodes exchange.
//!
//! Why a separate module: the message shapes are the contract between two
//! builds of the module. They change only together with
//! [`PROTOCOL_VERSION`], and the encoding of these shapes lives in
//! [`crate::core::codec`] alone, so the codec can be swapped behind a version bump.

use serde::{Deserialize, Serialize};

/// Decode a string by borrowing it from the input first, so its length is
/// checked against the bytes actually present. bincode 2.0.1 allocates an
/// owned `String` of the announced length *before* checking it: a 15-byte
/// pre-authentication frame could make the server allocate 2^62 bytes and
/// abort (found by the fuzzer). Every `String` field on the wire needs this.
fn borrowed_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    <&'de str>::deserialize(d).map(str::to_owned)
}

/// Bumped whenever a message shape or its meaning changes.
pub const PROTOCOL_VERSION: u32 = 7;

/// Orders one entry among every write of both nodes: the batch's clock
/// stamp, then the origin node id, then the index inside the batch (a
/// MULTI with `SET a; FLUSHDB; SET b` needs the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Hybrid logical clock value (see [`crate::core::hlc`]).
    pub hlc: u64,
    /// Position of the entry inside its batch.
    pub index: u32,
}

/// The stored form of one key's value.
///
/// Why typed rather than `DUMP` payloads: a payload from the peer would be
/// trusted bytes handed to Redis's RDB loader, which, outside a client's
/// RESTORE, terminates the server on a corrupt payload. Elements are
/// rebuilt with ordinary commands instead, so whatever a peer sends can at
/// worst be refused; it also lets two different Redis versions pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    /// A string, raw.
    String(Vec<u8>),
    /// A hash: field, value.
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    /// A list, head first.
    List(Vec<Vec<u8>>),
    /// A set.
    Set(Vec<Vec<u8>>),
    /// A sorted set: member, score as Redis prints it (exact round trip).
    ZSet(Vec<(Vec<u8>, Vec<u8>)>),
    /// A stream with its consumer groups.
    Stream(StreamImage),
    /// A module data type, as a `DUMP` payload (the peer is trusted for these).
    Dump(Vec<u8>),
    /// A hash at least one of whose fields has a TTL (Redis 7.4+ hash field expiration):
    /// field, value and the field's absolute expiry in ms (`None`: no TTL). A TTL travels with
    /// its field, absolute like a key's expiry, so both sides expire the field at the same time
    /// and a TTL change is part of the field's (and so the key's) value for conflicts. A hash
    /// without field TTLs stays a [`Value::Hash`], which every server version can store.
    HashTtl(HashFields),
}

impl Value {
    /// Bytes of names and values the value holds: a lower bound of its
    /// encoded size.
    ///
    /// Why: a key whose image is larger than the peer's `max-frame-size`
    /// cannot travel (the peer refuses the frame, and a resent batch would be
    /// refused again forever); the sender checks before it ships.
    pub fn payload_bytes(&self) -> usize {
        let pairs = |v: &[(Vec<u8>, Vec<u8>)]| v.iter().map(|(a, b)| a.len() + b.len()).sum();
        let all = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>();
        match self {
            Value::String(b) | Value::Dump(b) => b.len(),
            Value::Hash(v) | Value::ZSet(v) => pairs(v),
            Value::List(v) | Value::Set(v) => all(v),
            Value::HashTtl(v) => v.iter().map(|(f, x, _)| f.len() + x.len() + 8).sum(),
            Value::Stream(s) => {
                let entries: usize = s.entries.iter().map(|(id, f)| id.len() + all(f)).sum();
                let groups: usize = s
                    .groups
                    .iter()
                    .flat_map(|g| &g.consumers)
                    .map(|c| c.name.len() + c.pending.iter().map(|p| p.0.len() + 16).sum::<usize>())
                    .sum();
                entries + groups
            }
        }
    }
}

/// Fields of a [`Value::HashTtl`]: field, value, absolute expiry in ms.
pub type HashFields = Vec<(Vec<u8>, Vec<u8>, Option<i64>)>;

/// A stream's entries, metadata and consumer groups.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StreamImage {
    /// Entries: id (`ms-seq`) and flat field/value list.
    pub entries: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
    /// Last generated id.
    pub last_id: Vec<u8>,
    /// Largest id ever deleted.
    pub max_deleted_id: Vec<u8>,
    /// Count of entries ever added.
    pub entries_added: i64,
    /// Consumer groups.
    pub groups: Vec<StreamGroup>,
}

/// One consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamGroup {
    /// Group name.
    pub name: Vec<u8>,
    /// Last delivered id.
    pub last_delivered_id: Vec<u8>,
    /// Logical read counter, when Redis knows it.
    pub entries_read: Option<i64>,
    /// Consumers with their pending entries.
    pub consumers: Vec<StreamConsumer>,
}

/// One consumer and its pending entries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamConsumer {
    /// Consumer name.
    pub name: Vec<u8>,
    /// Pending entries: id, delivery time (Unix ms), delivery count.
    pub pending: Vec<(Vec<u8>, i64, i64)>,
}

/// What happened to a key or a db, as the state after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// The key now holds this value, with this absolute expiry (Unix ms).
    Set {
        /// The key.
        key: Vec<u8>,
        /// Its value.
        value: Value,
        /// Absolute expiry in Unix milliseconds, if any.
        expire_at_ms: Option<i64>,
    },
    /// The key no longer exists (DEL, UNLINK, source of RENAME or MOVE, ...).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Every key of the db older than this entry is gone (FLUSHDB/FLUSHALL).
    FlushDb,
    /// A full resync starts: the receiver takes the sender's dataset.
    FullSyncBegin,
    /// The full resync sent every key: the receiver deletes the keys the
    /// sender did not send, except its own un-acknowledged writes.
    FullSyncEnd,
    /// One element-level change of a key (DESIGN §11), merged element by
    /// element instead of last-writer-wins on the whole key (protocol 3+).
    Element {
        /// The key.
        key: Vec<u8>,
        /// The change, exactly as the sender's pending table holds it.
        change: ElementChange,
        /// Seq of the batch that first carried this change. A dirty-key
        /// resync re-sends pending changes with their first seq, so a
        /// receiver that already applied that batch skips them: unlike an
        /// image, an increment is not idempotent.
        shipped_in: u64,
        /// Highest seq of the receiver's stream the sender had applied when
        /// it made the change: the receiver's pending entries up to it were
        /// seen by the change, the others are concurrent with it. Carried by
        /// the record because a partial or dirty-key resync re-sends records
        /// without the acknowledgements that stood between them (found by
        /// the simulation: observed-remove needs exactly this set).
        seen: u64,
    },
    /// Test builds only: the sender's `DEBUG DIGEST-VALUE` of the key after
    /// the element changes before this entry. A receiver that holds no
    /// concurrent change of the key compares its own and logs a mismatch:
    /// the proof that a capture hint described the write exactly.
    Check {
        /// The key.
        key: Vec<u8>,
        /// The sender's digest of it (empty: the key does not exist).
        digest: Vec<u8>,
    },
    /// A restart resume has sent every key changed since the receiver's
    /// snapshot: the receiver has caught up (protocol 6+).
    ResumeEnd,
    /// A restart resume starts (protocol 7+). Unlike [`Op::FullSyncBegin`],
    /// a key the sender does not send is held alike on both sides (the
    /// receiver's snapshot has it), so a record of such a key applies to
    /// the receiver's copy instead of to what its own changes make of a
    /// missing key (found by the restart simulation: a live element change
    /// of a key the resume did not send wiped the rest of it).
    ResumeBegin,
}

/// The family of a key whose elements merge one by one.
///
/// Why part of every element change: two sides can give a key different
/// types concurrently (after a `DEL`); the merge rule must see the clash to
/// resolve it the same way on both sides (see [`crate::core::merge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Shape {
    /// A string: one element, named by the empty string, holding the value;
    /// a counter while the value is an integer.
    Str,
    /// A hash: field, value.
    Hash,
    /// A set: member, empty value.
    Set,
    /// A sorted set: member, score as Redis prints it.
    ZSet,
}

/// One element-level change, as shipped and as the sender's pending table
/// holds it (the same form on both: mixing forms diverges, DESIGN §11).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ElementChange {
    /// The element now holds `value` (HSET, SADD with an empty value, ZADD,
    /// SET of a string key).
    Set {
        /// The key's family.
        shape: Shape,
        /// The element.
        elem: Vec<u8>,
        /// Its value.
        value: Vec<u8>,
    },
    /// The element is gone (HDEL, SREM, ZREM).
    Del {
        /// The key's family.
        shape: Shape,
        /// The element.
        elem: Vec<u8>,
    },
    /// The element's integer value grew by `delta` (INCRBY, HINCRBY,
    /// integral ZINCRBY); increments from both sides add up.
    Incr {
        /// The key's family.
        shape: Shape,
        /// The element.
        elem: Vec<u8>,
        /// The increment.
        delta: i64,
    },
    /// The whole key was deleted (DEL, UNLINK): removes what this side had
    /// seen, not the other side's concurrent additions.
    DelKey,
    /// A list command, replayed by a peer that holds the list the origin
    /// held before it; with a concurrent change of the key, the list is
    /// last-writer-wins as a whole (protocol 4+, see
    /// [`crate::core::merge::rule::list_verdict`]).
    List(crate::core::list_op::ListOp),
}

/// One change inside a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Logical database number.
    pub db: u32,
    /// Its place in the last-writer-wins order.
    pub stamp: Stamp,
    /// The change.
    pub op: Op,
}

/// Everything one node captured in one flush, or a part of it no larger
/// than half a frame (see `glue::flush::frame_groups`): applied by the peer
/// in one lock hold, so a transaction never straddles two batches unless
/// its writes together pass half of `max-frame-size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Position in the sender's stream (1, 2, 3, ...).
    pub seq: u64,
    /// A resync batch: it covers every earlier batch the receiver lacks, so
    /// the receiver accepts it after a gap.
    pub resync: bool,
    /// The entries, in the order they must be applied.
    pub entries: Vec<Entry>,
}

/// Where a receiver stopped in a sender's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The sender's stream id the position refers to.
    pub stream_id: u64,
    /// Highest sequence number applied from that stream.
    pub seq: u64,
}

/// First frame on a connection, sent by both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub protocol: u32,
    /// The sender's `node-id`.
    #[serde(deserialize_with = "borrowed_string")]
    pub node_id: String,
    /// The sender's `databases` setting; both sides must agree.
    pub databases: u32,
    /// RDB version of the sender's `DUMP` payloads.
    pub rdb_version: u32,
    /// The sender's outgoing stream id.
    pub stream_id: u64,
    /// How far the sender got in the receiver's stream, if it ever saw it.
    pub resume: Option<Resume>,
    /// Fresh random bytes for this connection (challenge for the peer's proof).
    pub nonce: Vec<u8>,
    /// The sender requires the shared-secret proof and authenticated frames.
    pub auth: bool,
    /// The sender has not synced with its peer since it started.
    pub fresh: bool,
    /// The sender holds no keys.
    pub empty: bool,
    /// The operator chose the sender's data to win a first contact.
    pub source: bool,
    /// The sender's un-acknowledged writes table overflowed.
    pub overflowed: bool,
    /// The sender restarted from a snapshot that carried its pairing state
    /// and has not caught up yet: how far its data goes (protocol 6+).
    pub restored: Option<crate::core::restart::SavedPosition>,
    /// Keys its AOF replayed after the snapshot that carried that state
    /// (the tail): the peer sends their current images too (protocol 6+).
    pub replayed_keys: Vec<(u32, Vec<u8>)>,
}

/// A frame on an established link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Handshake.
    Hello(Hello),
    /// The handshake was refused; the text says why, for the peer's log.
    Refuse(#[serde(deserialize_with = "borrowed_string")] String),
    /// Proof of knowing the shared secret (HMAC over both nonces).
    Proof(Vec<u8>),
    /// Changes to apply.
    Batch(Batch),
    /// The sender has applied the receiver's stream up to this seq. Travels
    /// in the sender's own ordered stream, after every batch it made before.
    Ack(u64),
    /// Keeps an idle link observably alive.
    Ping,
    /// The sender checked that its hello still describes it and holds the
    /// link for this connection: once both sides said it, both act on the
    /// handshake's decision (see `core::link_slot`).
    Ready,
    /// The handshake is abandoned without fault (the sender's state moved
    /// on, or another connection is deciding): both sides retry with fresh
    /// hellos. The text says why, for the verbose log.
    Retry(#[serde(deserialize_with = "borrowed_string")] String),
}

impl ElementChange {
    /// The key's family the change belongs to (`None` for a key delete).
    pub fn shape(&self) -> Option<Shape> {
        match self {
            ElementChange::Set { shape, .. }
            | ElementChange::Del { shape, .. }
            | ElementChange::Incr { shape, .. } => Some(*shape),
            ElementChange::DelKey | ElementChange::List(_) => None,
        }
    }

    /// Is it a list command (which only replays on an identical list)?
    pub fn is_list(&self) -> bool {
        matches!(self, ElementChange::List(_))
    }

    /// The element it names (`None` for a key delete).
    pub fn elem(&self) -> Option<&[u8]> {
        match self {
            ElementChange::Set { elem, .. }
            | ElementChange::Del { elem, .. }
            | ElementChange::Incr { elem, .. } => Some(elem),
            ElementChange::DelKey | ElementChange::List(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_bytes_bound_the_encoded_size_from_below() {
        let values = [
            Value::String(vec![7; 1000]),
            Value::Hash(vec![(b"f".to_vec(), vec![1; 500]), (b"g".to_vec(), vec![])]),
            Value::List(vec![vec![2; 300]; 4]),
            Value::Set(vec![b"m".to_vec(); 10]),
            Value::ZSet(vec![(b"m".to_vec(), b"1.5".to_vec())]),
            Value::HashTtl(vec![(b"f".to_vec(), b"v".to_vec(), Some(1))]),
            Value::Stream(StreamImage {
                entries: vec![(b"1-1".to_vec(), vec![b"f".to_vec(), vec![3; 200]])],
                ..StreamImage::default()
            }),
        ];
        for value in values {
            let n = value.payload_bytes();
            assert!(n > 0, "{value:?}");
            let op = Op::Set {
                key: Vec::new(),
                value,
                expire_at_ms: None,
            };
            let encoded = crate::core::codec::encode(&Frame::Batch(Batch {
                seq: 1,
                resync: false,
                entries: vec![Entry {
                    db: 0,
                    stamp: Stamp { hlc: 1, index: 0 },
                    op,
                }],
            }))
            .expect("encodes");
            assert!(encoded.len() >= n, "{} < {n}", encoded.len());
        }
    }
}
