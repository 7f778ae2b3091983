//! Convergence under concurrent writes with real servers (issue 3, item 5; issue 10, item 3).
//!
//! Several client threads on each side of a fresh pair write at random, for at least 15 s, to
//! a small set of hot keys (20 per db) in three dbs with every kind of write: SET with and
//! without TTL (long ones, and short ones that expire during the run), APPEND, the list commands shipped as commands (issue 12: RPUSH/LPUSH(X), LPOP/RPOP with counts, LSET, LINSERT, LREM, LTRIM),
//! SPOP, XADD (bounded by MAXLEN or MINID), XDEL, XTRIM (MAXLEN, MINID), EXPIRE/PEXPIREAT/PEXPIRE/PERSIST, DEL/UNLINK, RENAME between
//! hot keys, MULTI blocks (some switching db inside), Lua scripts writing 2–3 keys, and a rare
//! FLUSHDB (alone, ASYNC, or inside a MULTI between two SETs).
//!
//! The element commands (issue 10: those the capture ships per element — INCR/INCRBY/DECR/
//! DECRBY, SET of an integer with or without NX/XX/GET, GETSET of an integer, GETDEL,
//! HSET/HMSET/HSETNX/HDEL/HINCRBY, SADD/SREM/SMOVE, ZADD without NX/XX/GT/LT/INCR, ZREM,
//! integral ZINCRBY, DEL/UNLINK of counters and collections) run next to their whole-key
//! neighbours on the same keys: INCRBYFLOAT, HINCRBYFLOAT, non-integral ZINCRBY, ZADD with
//! NX/XX/GT/LT/INCR (some with CH), SET or GETSET of a non-canonical integer, scores in other
//! forms (floats, `inf`, beyond 2^53); deltas near the 64-bit range (overflow on one side or
//! when added on the other) and ZINCRBYs near 2^53. The hint matching is exercised where it must give up or stay exact:
//! element commands queued in MULTI (`multi_elem`), several element commands in one EVAL
//! (`eval_elem`, some through `redis.pcall` around errors, one next to a ZPOPMIN of the same
//! key) and in functions (`fcall`, library loaded once on each side), blocking ops served by a
//! push from another writer of either side (`bzpopmin`, `blmove`: see [`Waiting`]), and keys
//! written around their expiry (`expire_mid`: PEXPIRE of a few ms, then element writes as it
//! expires). With `BISYNC_TEST_HOOKS=1` each node checks what it ships: a "set-hint mismatch"
//! or an "element self-check mismatch" in either server's log fails the test.
//!
//! Why rounds: images heal a key at its next write, so with hot keys a divergence only shows if
//! it is left when writes stop. The run is therefore cut into rounds of [`ROUND_MS`]: random
//! writes, then a *burst* in which all writers at once do a few ops on the same 7 keys of one db
//! (sometimes with a FLUSHDB of it), then a *checkpoint*: writers wait until both servers hold
//! the same data ([`compare_once`]: type, `DEBUG DIGEST-VALUE`, `PEXPIRETIME`, streams' `XINFO
//! FULL`). A failing checkpoint prints the diff and the burst that preceded it. Broken on purpose
//! in a copy of the module (remote flush keeps no survivors; a pending flush is no tombstone;
//! no last-writer-wins), every seed failed within 8 s of writes; a single check at the end
//! caught 1 of 24 such runs.
//!
//! At the end: [`assert_converged`], at least [`MIN_CONFLICTS`] `conflicts_lost` on each node
//! (the last-writer-wins rule really ran) and, from a module that reports it, as many
//! `conflicts_merged` (the element rule merged concurrent changes of one key), and
//! `pending_keys` 0 on both (the table of un-acknowledged writes drains once the pair is
//! quiet).
//!
//! Errors that random ops legitimately cause (WRONGTYPE, RENAME of a missing key, INCRBY on a
//! non-integer, an increment that would overflow, a float increment of a non-float, a
//! consumer-group command on a missing group or stream, a group created twice) are
//! counted and reported; any other error (connection, protocol, unexpected server error) fails
//! the test.
//!
//! Knobs (environment):
//! - `CONV_SEED=<u64>` replays one seed (in `seed_1`; the other seed tests then do nothing):
//!   each writer repeats its sequence of ops, the interleaving is up to timing;
//! - `CONV_SECS=<n>` seconds of writes (default 15);
//! - `CONV_OPS=a,b,..` allows only these op kinds, `CONV_SKIP_OPS=a,b,..` removes some
//!   (names as printed in the per-op counts, plus `flushdb`; `qserve`, the push that serves a
//!   blocked writer, comes with `bzpopmin`/`blmove`) — to narrow down a divergence;
//! - `CONV_KEYS=<n>` hot keys per db (20), `CONV_THREADS=<n>` writers per side (3),
//!   `CONV_ROUND_MS=<n>` (300), `CONV_FLUSH_ONE_IN=<n>` (2000).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::Value;

/// Every node must lose at least this many conflicts per seed.
const MIN_CONFLICTS: u64 = 100;
/// The dbs written and compared.
const DBS: [i64; 3] = [0, 1, 2];
/// One FLUSHDB per this many ops (on average), outside bursts.
const FLUSH_ONE_IN: u32 = 2000;
/// Length of the random phase of a round. Each round ends with a burst and a checkpoint: a key
/// that stays hot overwrites a transient divergence with its next image, so only the state
/// left when writes stop can show one — hence many stops, each right after a contended burst.
const ROUND_MS: u64 = 300;
/// In a burst every writer does 2–4 ops on the first `BURST_KEYS` hot keys (one per class) of
/// one db, all starting at the same moment, and each writer adds a FLUSHDB of that db with a
/// chance of 1 in `BURST_FLUSH_ONE_IN`.
const BURST_KEYS: usize = CLASSES;
const BURST_FLUSH_ONE_IN: u32 = 12;
/// Each writer keeps its last this many ops, to print the history of a key that fails.
const RECENT_OPS: usize = 150_000;
/// Poll interval while waiting for a checkpoint to converge.
const CHECK_POLL: Duration = Duration::from_millis(5);
/// How long the pair gets to converge once the writers stop.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The seeds run by default (each in its own `#[test]`).
const SEEDS: [u64; 3] = [0x5eed_0001, 0x5eed_0002, 0x5eed_0003];

/// The seeds share the machine badly (two cores, six client threads and two servers per
/// seed): run them one after the other so each gets the same conditions.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn seed_1() {
    run_seed_test(0);
}

#[test]
fn seed_2() {
    run_seed_test(1);
}

#[test]
fn seed_3() {
    run_seed_test(2);
}

fn run_seed_test(which: usize) {
    let seed = match std::env::var("CONV_SEED") {
        Ok(s) if !s.trim().is_empty() => {
            if which != 0 {
                eprintln!("CONV_SEED is set: only seed_1 runs (it replays that seed)");
                return;
            }
            parse_u64(s.trim()).unwrap_or_else(|| panic!("CONV_SEED={s:?} is not a u64"))
        }
        _ => SEEDS[which],
    };
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    run_seed(seed);
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

// ---------------------------------------------------------------------------------------------
// Op kinds
// ---------------------------------------------------------------------------------------------

/// Every kind of op, with its weight in the mix (FLUSHDB is drawn separately, 1 in
/// [`FLUSH_ONE_IN`]).
const OPS: &[(&str, u32)] = &[
    ("set", 10),
    ("set_ttl", 4),
    ("set_short_ttl", 2),
    ("set_int", 4),
    ("incrby", 6),
    ("decrby", 3),
    ("incr_big", 1),
    ("incrbyfloat", 1),
    ("append", 4),
    ("hset", 6),
    ("hsetnx", 2),
    ("hmset", 2),
    ("hdel", 3),
    ("hincrby", 4),
    ("hincrbyfloat", 1),
    ("rpush", 5),
    ("lpop", 3),
    ("lpush", 2),
    ("rpop", 1),
    ("lset", 2),
    ("linsert", 1),
    ("lrem", 1),
    ("ltrim", 1),
    ("lmove", 2),
    ("sadd", 5),
    ("srem", 2),
    ("spop", 2),
    ("smove", 2),
    ("getset", 2),
    ("getdel", 1),
    ("zadd", 5),
    ("zadd_flags", 1),
    ("zincrby", 3),
    ("zrem", 2),
    ("xadd", 4),
    ("xdel", 1),
    ("xtrim", 1),
    ("xgroup", 1),
    ("xreadgroup", 2),
    ("xautoclaim", 1),
    ("expire", 3),
    ("expire_short", 1),
    ("expire_mid", 1),
    ("persist", 2),
    ("del", 3),
    ("del_coll", 2),
    ("rename", 3),
    ("bzpopmin", 1),
    ("blmove", 1),
    ("multi", 6),
    ("multi_elem", 4),
    ("eval", 5),
    ("eval_elem", 4),
    ("fcall", 3),
];

/// Kinds allowed inside a MULTI block (a blocking pop queued in MULTI does not block).
const SIMPLE_OPS: &[&str] = &[
    "set",
    "set_ttl",
    "set_int",
    "incrby",
    "decrby",
    "incr_big",
    "incrbyfloat",
    "append",
    "hset",
    "hsetnx",
    "hmset",
    "hdel",
    "hincrby",
    "hincrbyfloat",
    "rpush",
    "lpop",
    "lpush",
    "rpop",
    "lset",
    "linsert",
    "lrem",
    "ltrim",
    "lmove",
    "sadd",
    "srem",
    "spop",
    "smove",
    "getset",
    "getdel",
    "zadd",
    "zadd_flags",
    "zincrby",
    "zrem",
    "xadd",
    "xdel",
    "xtrim",
    "xgroup",
    "xreadgroup",
    "xautoclaim",
    "expire",
    "persist",
    "del",
    "del_coll",
    "rename",
    "bzpopmin",
    "blmove",
];

/// Which op kinds this run uses (`CONV_OPS` / `CONV_SKIP_OPS`).
#[derive(Clone, Debug)]
struct OpFilter {
    allowed: Vec<String>,
}

impl OpFilter {
    fn from_env() -> OpFilter {
        let list = |name: &str| -> Option<Vec<String>> {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
        };
        let known: Vec<&str> = OPS.iter().map(|(n, _)| *n).chain(["flushdb"]).collect();
        let mut allowed: Vec<String> = match list("CONV_OPS") {
            Some(only) => only,
            None => known.iter().map(|s| s.to_string()).collect(),
        };
        if let Some(skip) = list("CONV_SKIP_OPS") {
            allowed.retain(|o| !skip.contains(o));
        }
        for o in &allowed {
            assert!(
                known.contains(&o.as_str()),
                "unknown op kind {o:?} (known: {known:?})"
            );
        }
        OpFilter { allowed }
    }

    fn has(&self, op: &str) -> bool {
        self.allowed.iter().any(|o| o == op)
    }
}

// ---------------------------------------------------------------------------------------------
// The writers
// ---------------------------------------------------------------------------------------------

/// Key classes: a key's natural type is its index modulo the number of classes; most ops pick a
/// key of their own class, some pick any key (so types collide, as RENAME and SET also make them).
const CLASSES: usize = 7;
const C_STRING: usize = 0;
const C_COUNTER: usize = 1;
const C_HASH: usize = 2;
const C_LIST: usize = 3;
const C_SET: usize = 4;
const C_ZSET: usize = 5;
const C_STREAM: usize = 6;
/// The classes whose keys the capture describes per element.
const ELEM_CLASSES: [usize; 4] = [C_COUNTER, C_HASH, C_SET, C_ZSET];

const SCRIPTS: &[(&str, usize)] = &[
    (
        "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCRBY', KEYS[2], ARGV[2])",
        2,
    ),
    (
        "redis.call('HSET', KEYS[1], 'f' .. ARGV[2], ARGV[1]); \
         redis.call('RPUSH', KEYS[2], ARGV[1]); \
         return redis.call('SADD', KEYS[3], 'm' .. ARGV[2])",
        3,
    ),
    (
        "local v = redis.call('GET', KEYS[1]); redis.call('DEL', KEYS[1]); \
         redis.call('ZADD', KEYS[2], ARGV[2], v or ARGV[1]); return 1",
        2,
    ),
    (
        "redis.call('APPEND', KEYS[1], ARGV[1]); \
         redis.call('PEXPIRE', KEYS[1], 600000 + tonumber(ARGV[2])); \
         return redis.call('XADD', KEYS[2], 'MAXLEN', '20', '*', 'f', ARGV[1])",
        2,
    ),
];

/// Scripts of several element commands each (the command filter sees every `redis.call` at
/// execution time, so each one must get its own element record, or the key an image):
/// `ARGV[1]` is an integer in -50..100, `ARGV[2]` an integer in 0..15.
const ELEM_SCRIPTS: &[(&str, usize)] = &[
    // Counter and hash-field increments, several on one key.
    (
        "redis.call('INCRBY', KEYS[1], ARGV[1]); redis.call('DECR', KEYS[1]); \
         redis.call('HINCRBY', KEYS[2], 'f' .. ARGV[2], ARGV[1]); \
         return redis.call('INCR', KEYS[1])",
        2,
    ),
    // Set and sorted-set members added and removed.
    (
        "redis.call('SADD', KEYS[1], 'm' .. ARGV[2], 'm' .. (ARGV[2] + 1)); \
         redis.call('SREM', KEYS[1], 'm' .. (ARGV[2] + 3)); \
         redis.call('ZADD', KEYS[2], ARGV[1], 'z' .. ARGV[2]); \
         redis.call('ZINCRBY', KEYS[2], 2, 'z' .. (ARGV[2] + 1)); \
         return redis.call('ZREM', KEYS[2], 'z' .. (ARGV[2] + 2))",
        2,
    ),
    // Every hash command on one field set of one key.
    (
        "redis.call('HSET', KEYS[1], 'f' .. ARGV[2], ARGV[1]); \
         redis.call('HINCRBY', KEYS[1], 'f' .. ARGV[2], 3); \
         redis.call('HDEL', KEYS[1], 'f' .. (ARGV[2] + 1)); \
         redis.call('HSETNX', KEYS[1], 'f' .. (ARGV[2] + 2), ARGV[1]); \
         return redis.call('HMSET', KEYS[1], 'f' .. (ARGV[2] + 3), 'x', 'f' .. (ARGV[2] + 4), ARGV[1])",
        1,
    ),
    // SET then INCRBY of one counter; DEL of a hash then a field of the new hash.
    (
        "redis.call('SET', KEYS[1], ARGV[1]); redis.call('INCRBY', KEYS[1], ARGV[2]); \
         redis.call('DEL', KEYS[2]); \
         return redis.call('HSET', KEYS[2], 'f' .. ARGV[2], ARGV[1])",
        2,
    ),
    // Errors swallowed by pcall between element writes (keys of random classes).
    (
        "redis.pcall('HINCRBY', KEYS[1], 'f' .. ARGV[2], 1); \
         redis.pcall('INCRBY', KEYS[2], ARGV[1]); \
         redis.pcall('ZADD', KEYS[1], ARGV[1], 'z' .. ARGV[2]); \
         return redis.call('SADD', KEYS[3], 'm' .. ARGV[2])",
        3,
    ),
    // A non-element write (ZPOPMIN) and element writes on the same key.
    (
        "local n = redis.call('ZCARD', KEYS[1]); \
         if n > 5 then redis.call('ZPOPMIN', KEYS[1]) end; \
         redis.call('ZADD', KEYS[1], ARGV[1], 'z' .. ARGV[2]); \
         redis.call('ZINCRBY', KEYS[1], ARGV[1], 'z' .. (ARGV[2] + 1)); return n",
        1,
    ),
];

/// The classes of the keys of each [`ELEM_SCRIPTS`] entry (`None`: any class).
const ELEM_SCRIPT_CLASSES: &[&[Option<usize>]] = &[
    &[Some(C_COUNTER), Some(C_HASH)],
    &[Some(C_SET), Some(C_ZSET)],
    &[Some(C_HASH)],
    &[Some(C_COUNTER), Some(C_HASH)],
    &[None, None, None],
    &[Some(C_ZSET)],
];

/// A function library loaded once on both servers (`FUNCTION LOAD REPLACE`) for `fcall`:
/// element commands inside functions. Same arguments as [`ELEM_SCRIPTS`].
const FUNCTION_LIB: &str = "#!lua name=convlib
redis.register_function('conv_counters', function(keys, args)
  redis.call('INCRBY', keys[1], args[1])
  redis.call('DECRBY', keys[1], 1)
  return redis.call('HINCRBY', keys[2], 'f' .. args[2], args[1])
end)
redis.register_function('conv_members', function(keys, args)
  redis.call('SADD', keys[1], 'm' .. args[2])
  redis.call('SREM', keys[1], 'm' .. (args[2] + 1))
  redis.call('ZINCRBY', keys[2], args[1], 'z' .. args[2])
  return redis.call('ZREM', keys[2], 'z' .. (args[2] + 2))
end)
redis.register_function('conv_hash', function(keys, args)
  redis.call('HSET', keys[1], 'f' .. args[2], args[1], 'f' .. (args[2] + 1), 'x')
  redis.call('HDEL', keys[1], 'f' .. (args[2] + 2))
  redis.call('HSETNX', keys[1], 'f' .. (args[2] + 3), args[1])
  return redis.call('SET', keys[2], args[1])
end)
";

/// The functions of [`FUNCTION_LIB`] and the classes of their keys.
const FUNCTIONS: &[(&str, [usize; 2])] = &[
    ("conv_counters", [C_COUNTER, C_HASH]),
    ("conv_members", [C_SET, C_ZSET]),
    ("conv_hash", [C_HASH, C_COUNTER]),
];

/// Keys of the blocking ops, one of each in every db, outside the hot keys: `BZPOPMIN` waits
/// on [`QUEUE_ZSET`], `BLMOVE` moves from [`QUEUE_LIST`] into a hot list. Nothing else writes
/// them but a writer serving a waiter (see [`Waiting`]), so they are empty most of the time
/// and a blocking op really blocks.
const QUEUE_ZSET: &str = "qz";
const QUEUE_LIST: &str = "ql";
/// Timeout of a blocking op, in seconds (it is normally served within a few ms).
const BLOCK_TIMEOUT: &str = "0.05";
/// A waiter is served once it has been waiting this long (so that it really is blocked).
const SERVE_AFTER_MS: u64 = 1;

/// Writers announce here that they are blocked on a queue key: one slot per writer (the a
/// writers first), holding a [`Wait`] packed by [`Wait::pack`], 0 while it does not wait.
/// Any other writer, on either side, serves it with one ZADD/RPUSH at its next step: a push
/// from the same side serves it in that push's own command; one from the other side serves
/// it when the module applies the push (unless a waiter on the pushing side would take the
/// element first: then only a push on the waiter's side serves it). When a burst is due, the
/// coordinator serves the writers still blocked, on their side.
type Waiting = Arc<Vec<AtomicU64>>;

/// What a blocked writer waits for.
#[derive(Clone, Copy, PartialEq, Debug)]
struct Wait {
    /// When it started waiting (ms).
    since_ms: u64,
    /// Index in [`DBS`].
    db_index: usize,
    /// [`QUEUE_LIST`] (BLMOVE), else [`QUEUE_ZSET`] (BZPOPMIN).
    list: bool,
}

impl Wait {
    fn pack(self) -> u64 {
        (self.since_ms << 3) | ((self.db_index as u64) << 1) | u64::from(self.list)
    }

    fn unpack(v: u64) -> Option<Wait> {
        (v != 0).then_some(Wait {
            since_ms: v >> 3,
            db_index: ((v >> 1) & 3) as usize,
            list: v & 1 == 1,
        })
    }

    /// The push that serves it.
    fn push(&self, member: String) -> redis::Cmd {
        let mut c;
        if self.list {
            c = redis::cmd("RPUSH");
            c.arg(QUEUE_LIST).arg(member);
        } else {
            c = redis::cmd("ZADD");
            c.arg(QUEUE_ZSET).arg(0).arg(member);
        }
        c
    }
}

/// What one writer did.
#[derive(Default, Debug)]
struct WriterStats {
    /// Ops sent (a MULTI block or a script counts once).
    ops: u64,
    /// Ops per kind.
    by_kind: BTreeMap<&'static str, u64>,
    /// Errors that random ops legitimately cause, per class.
    legit_errors: BTreeMap<&'static str, u64>,
    /// Anything else (the first few, with the op that caused it).
    unexpected: Vec<String>,
    unexpected_count: u64,
    /// Blocking ops (outside MULTI): how many got an element, how many timed out, and the
    /// time spent in them.
    block_served: u64,
    block_timeouts: u64,
    block_time: Duration,
    /// Pushes made to serve a blocked writer of the same side / of the other side.
    serves_same_side: u64,
    serves_other_side: u64,
    /// The last [`RECENT_OPS`] ops of this writer (epoch ms, description and outcome): the
    /// history of a key that fails a check.
    recent: VecDeque<(i64, String)>,
}

impl WriterStats {
    fn merge(&mut self, o: WriterStats) {
        self.ops += o.ops;
        for (k, v) in o.by_kind {
            *self.by_kind.entry(k).or_default() += v;
        }
        for (k, v) in o.legit_errors {
            *self.legit_errors.entry(k).or_default() += v;
        }
        self.unexpected_count += o.unexpected_count;
        self.block_served += o.block_served;
        self.block_timeouts += o.block_timeouts;
        self.block_time += o.block_time;
        self.serves_same_side += o.serves_same_side;
        self.serves_other_side += o.serves_other_side;
        self.recent.extend(o.recent);
        for u in o.unexpected {
            if self.unexpected.len() < 20 {
                self.unexpected.push(u);
            }
        }
    }
}

/// An error a random op may legitimately get, or `None`.
fn legit_error(e: &redis::RedisError) -> Option<&'static str> {
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
        return None;
    }
    let s = e.to_string();
    if s.contains("WRONGTYPE") {
        Some("WRONGTYPE")
    } else if s.contains("NOGROUP") {
        Some("NOGROUP")
    } else if s.contains("BUSYGROUP") {
        Some("BUSYGROUP")
    } else if s.contains("requires the key to exist") {
        Some("XGROUP on a missing key")
    } else if s.contains("no such key") {
        Some("no such key")
    } else if s.contains("index out of range") {
        Some("index out of range")
    } else if s.contains("not an integer") {
        Some("not an integer")
    } else if s.contains("would overflow") {
        Some("overflow")
    } else if s.contains("not a valid float") || s.contains("not a float") {
        Some("not a float")
    } else if s.contains("not a number (NaN)") {
        Some("NaN score")
    } else {
        None
    }
}

/// A command as text (for logs).
fn describe(c: &redis::Cmd) -> String {
    String::from_utf8_lossy(&c.get_packed_command())
        .split("\r\n")
        .filter(|s| !s.is_empty() && !s.starts_with('$') && !s.starts_with('*'))
        .collect::<Vec<_>>()
        .join(" ")
}

struct Writer {
    name: String,
    rng: StdRng,
    conn: redis::Connection,
    cur_db: Option<i64>,
    keys_per_db: usize,
    flush_one_in: u32,
    /// During a burst: the db and the number of hot keys every op uses.
    focus: Option<(i64, usize)>,
    filter: OpFilter,
    kinds: Vec<(&'static str, u32)>,
    total_weight: u32,
    /// Shared by all writers: who waits in a blocking op.
    waiting: Waiting,
    /// This writer's slot in `waiting`.
    slot: usize,
    /// What the current `qserve` op serves.
    serving: Option<Wait>,
    stats: WriterStats,
}

impl Writer {
    fn new(
        name: String,
        seed: u64,
        conn: redis::Connection,
        shape: &Shape,
        filter: OpFilter,
        waiting: Waiting,
        slot: usize,
    ) -> Writer {
        let kinds: Vec<(&'static str, u32)> =
            OPS.iter().copied().filter(|(n, _)| filter.has(n)).collect();
        let total_weight = kinds.iter().map(|(_, w)| w).sum();
        Writer {
            name,
            rng: StdRng::seed_from_u64(seed),
            conn,
            cur_db: None,
            keys_per_db: shape.keys_per_db,
            flush_one_in: shape.flush_one_in,
            focus: None,
            filter,
            kinds,
            total_weight,
            waiting,
            slot,
            serving: None,
            stats: WriterStats::default(),
        }
    }

    /// A hot key: of `class` most of the time, any key otherwise.
    fn key(&mut self, class: usize) -> String {
        let n = self.hot_keys();
        let i = if self.rng.gen_bool(0.85) {
            let in_class: Vec<usize> = (0..n).filter(|i| i % CLASSES == class).collect();
            if in_class.is_empty() {
                self.rng.gen_range(0..n)
            } else {
                in_class[self.rng.gen_range(0..in_class.len())]
            }
        } else {
            self.rng.gen_range(0..n)
        };
        self.key_name(i)
    }

    fn any_key(&mut self) -> String {
        let i = self.rng.gen_range(0..self.hot_keys());
        self.key_name(i)
    }

    /// How many hot keys ops choose from now (fewer during a burst).
    fn hot_keys(&self) -> usize {
        match self.focus {
            Some((_, n)) => n.min(self.keys_per_db),
            None => self.keys_per_db,
        }
    }

    fn key_name(&self, i: usize) -> String {
        format!("k{i:02}")
    }

    fn value(&mut self) -> String {
        if self.rng.gen_bool(0.3) {
            self.rng.gen_range(-1000..1000).to_string()
        } else {
            format!("v{}", self.rng.gen_range(0..100_000))
        }
    }

    /// Builds one simple (single-command) op of `kind`.
    fn simple(&mut self, kind: &str) -> redis::Cmd {
        let mut c;
        match kind {
            "set" | "set_ttl" | "set_short_ttl" => {
                let class = if self.rng.gen_bool(0.5) {
                    C_STRING
                } else {
                    C_COUNTER
                };
                let k = self.key(class);
                let v = if class == C_COUNTER {
                    self.rng.gen_range(-1000..1000).to_string()
                } else {
                    self.value()
                };
                c = redis::cmd("SET");
                c.arg(k).arg(v);
                let r = &mut self.rng;
                match kind {
                    "set_ttl" => {
                        if r.gen_bool(0.5) {
                            c.arg("EX").arg(r.gen_range(600..3600));
                        } else {
                            c.arg("PX").arg(r.gen_range(600_000..3_600_000));
                        }
                    }
                    "set_short_ttl" => {
                        c.arg("PX").arg(r.gen_range(20..1500));
                    }
                    _ => {}
                }
            }
            "incrby" => {
                let k = self.key(C_COUNTER);
                if self.rng.gen_bool(0.25) {
                    c = redis::cmd("INCR");
                    c.arg(k);
                } else {
                    c = redis::cmd("INCRBY");
                    c.arg(k).arg(self.rng.gen_range(-50..100));
                }
            }
            "decrby" => {
                let k = self.key(C_COUNTER);
                if self.rng.gen_bool(0.3) {
                    c = redis::cmd("DECR");
                    c.arg(k);
                } else {
                    c = redis::cmd("DECRBY");
                    c.arg(k).arg(self.rng.gen_range(-50..100));
                }
            }
            "set_int" => {
                // SET of an integer on a counter key, next to INCRBY/DECRBY on the same keys:
                // canonical integers (some near the 64-bit limits), with NX/XX/GET or none; and
                // now and then a form that is not a canonical integer (an image).
                let k = self.key(C_COUNTER);
                let v = match self.rng.gen_range(0..20) {
                    0 => ["+7", "007", "-0", "1e3", " 5", "5 ", "12.0", "0x10"]
                        [self.rng.gen_range(0..8)]
                    .to_string(),
                    1 => (i64::MAX - self.rng.gen_range(0..200)).to_string(),
                    2 => (i64::MIN + self.rng.gen_range(0..200)).to_string(),
                    _ => self.rng.gen_range(-1000..1000).to_string(),
                };
                c = redis::cmd("SET");
                c.arg(k).arg(v);
                match self.rng.gen_range(0..8) {
                    0 => {
                        c.arg("NX");
                    }
                    1 => {
                        c.arg("XX");
                    }
                    2 => {
                        c.arg("GET");
                    }
                    3 => {
                        c.arg("NX").arg("GET");
                    }
                    4 => {
                        c.arg("XX").arg("GET");
                    }
                    _ => {}
                }
            }
            "incr_big" => {
                // Deltas near the 64-bit range, so that sums overflow on one side or when
                // added on the other (the wrap rule must give both sides the same value), and
                // integral ZINCRBYs near 2^53 (the exact range of a double).
                let sign = if self.rng.gen_bool(0.5) { 1 } else { -1 };
                match self.rng.gen_range(0..4) {
                    0 => {
                        let k = self.key(C_COUNTER);
                        c = redis::cmd("INCRBY");
                        c.arg(k)
                            .arg(sign * self.rng.gen_range((1i64 << 61)..i64::MAX));
                    }
                    1 => {
                        let k = self.key(C_COUNTER);
                        c = redis::cmd("DECRBY");
                        c.arg(k)
                            .arg(sign * self.rng.gen_range((1i64 << 61)..i64::MAX));
                    }
                    2 => {
                        let k = self.key(C_HASH);
                        c = redis::cmd("HINCRBY");
                        c.arg(k)
                            .arg(format!("f{}", self.rng.gen_range(0..15)))
                            .arg(sign * self.rng.gen_range((1i64 << 61)..i64::MAX));
                    }
                    _ => {
                        let k = self.key(C_ZSET);
                        c = redis::cmd("ZINCRBY");
                        c.arg(k)
                            .arg(sign * self.rng.gen_range((1i64 << 50)..(1i64 << 53)))
                            .arg(format!("z{}", self.rng.gen_range(0..30)));
                    }
                }
            }
            "incrbyfloat" => {
                let k = self.key(C_COUNTER);
                c = redis::cmd("INCRBYFLOAT");
                c.arg(k).arg(self.float_delta());
            }
            "append" => {
                let k = self.key(C_STRING);
                c = redis::cmd("APPEND");
                c.arg(k).arg(format!("+{}", self.rng.gen_range(0..100)));
            }
            "hset" => {
                let k = self.key(C_HASH);
                c = redis::cmd("HSET");
                c.arg(k);
                for _ in 0..self.rng.gen_range(1..=3) {
                    let f = format!("f{}", self.rng.gen_range(0..15));
                    let v = self.value();
                    c.arg(f).arg(v);
                }
            }
            "hsetnx" => {
                let k = self.key(C_HASH);
                let f = format!("f{}", self.rng.gen_range(0..15));
                let v = self.value();
                c = redis::cmd("HSETNX");
                c.arg(k).arg(f).arg(v);
            }
            "hmset" => {
                let k = self.key(C_HASH);
                c = redis::cmd("HMSET");
                c.arg(k);
                for _ in 0..self.rng.gen_range(1..=3) {
                    let f = format!("f{}", self.rng.gen_range(0..15));
                    let v = self.value();
                    c.arg(f).arg(v);
                }
            }
            "hincrby" => {
                let k = self.key(C_HASH);
                c = redis::cmd("HINCRBY");
                c.arg(k)
                    .arg(format!("f{}", self.rng.gen_range(0..15)))
                    .arg(self.rng.gen_range(-20..50));
            }
            "hincrbyfloat" => {
                let k = self.key(C_HASH);
                let d = self.float_delta();
                c = redis::cmd("HINCRBYFLOAT");
                c.arg(k)
                    .arg(format!("f{}", self.rng.gen_range(0..15)))
                    .arg(d);
            }
            "hdel" => {
                let k = self.key(C_HASH);
                c = redis::cmd("HDEL");
                c.arg(k);
                for _ in 0..self.rng.gen_range(1..=3) {
                    c.arg(format!("f{}", self.rng.gen_range(0..15)));
                }
            }
            "rpush" => {
                let k = self.key(C_LIST);
                c = redis::cmd("RPUSH");
                c.arg(k);
                for _ in 0..self.rng.gen_range(1..=2) {
                    let v = self.value();
                    c.arg(v);
                }
            }
            "lpop" => {
                let k = self.key(C_LIST);
                c = redis::cmd("LPOP");
                c.arg(k).arg(self.rng.gen_range(1..=3));
            }
            "lpush" => {
                let k = self.key(C_LIST);
                c = redis::cmd(if self.rng.gen_bool(0.7) {
                    "LPUSH"
                } else {
                    "LPUSHX"
                });
                c.arg(k);
                for _ in 0..self.rng.gen_range(1..=2) {
                    c.arg(format!("l{}", self.rng.gen_range(0..5)));
                }
            }
            "rpop" => {
                let k = self.key(C_LIST);
                c = redis::cmd("RPOP");
                c.arg(k);
                if self.rng.gen_bool(0.5) {
                    c.arg(self.rng.gen_range(1..=3));
                }
            }
            // Index, pivot and value drawn small so they often hit; a miss
            // is an error or a no-op, as it would be for a client.
            "lset" => {
                let k = self.key(C_LIST);
                c = redis::cmd("LSET");
                let v = self.value();
                c.arg(k).arg(self.rng.gen_range(-3..3)).arg(v);
            }
            "linsert" => {
                let k = self.key(C_LIST);
                c = redis::cmd("LINSERT");
                let pivot = format!("l{}", self.rng.gen_range(0..5));
                let v = self.value();
                let place = if self.rng.gen_bool(0.5) {
                    "BEFORE"
                } else {
                    "AFTER"
                };
                c.arg(k).arg(place).arg(pivot).arg(v);
            }
            "lrem" => {
                let k = self.key(C_LIST);
                c = redis::cmd("LREM");
                let v = format!("l{}", self.rng.gen_range(0..5));
                c.arg(k).arg(self.rng.gen_range(-2..=2)).arg(v);
            }
            "ltrim" => {
                let k = self.key(C_LIST);
                c = redis::cmd("LTRIM");
                c.arg(k)
                    .arg(self.rng.gen_range(-2..=1))
                    .arg(self.rng.gen_range(3..=12));
            }
            "sadd" => {
                let k = self.key(C_SET);
                c = redis::cmd("SADD");
                c.arg(k);
                for _ in 0..self.rng.gen_range(1..=3) {
                    c.arg(format!("m{}", self.rng.gen_range(0..40)));
                }
            }
            "srem" => {
                let k = self.key(C_SET);
                c = redis::cmd("SREM");
                c.arg(k);
                for _ in 0..self.rng.gen_range(1..=3) {
                    c.arg(format!("m{}", self.rng.gen_range(0..40)));
                }
            }
            "smove" => {
                // Between two sets (sometimes the same one, or a key of another class).
                let (from, to) = (self.key(C_SET), self.key(C_SET));
                c = redis::cmd("SMOVE");
                c.arg(from)
                    .arg(to)
                    .arg(format!("m{}", self.rng.gen_range(0..40)));
            }
            "getset" => {
                // An integer (a counter's new value) or, now and then, another value.
                let k = self.key(C_COUNTER);
                let v = if self.rng.gen_bool(0.8) {
                    self.rng.gen_range(-1000..1000).to_string()
                } else {
                    self.value()
                };
                c = redis::cmd("GETSET");
                c.arg(k).arg(v);
            }
            "getdel" => {
                let class = if self.rng.gen_bool(0.7) {
                    C_COUNTER
                } else {
                    C_STRING
                };
                let k = self.key(class);
                c = redis::cmd("GETDEL");
                c.arg(k);
            }
            "spop" => {
                let k = self.key(C_SET);
                c = redis::cmd("SPOP");
                c.arg(k);
                if self.rng.gen_bool(0.5) {
                    c.arg(self.rng.gen_range(1..=2));
                }
            }
            "zadd" => {
                // Mostly integral scores; now and then one in another form or out of the
                // exact range of a double (the rule must keep what Redis stores).
                let k = self.key(C_ZSET);
                c = redis::cmd("ZADD");
                c.arg(k);
                if self.rng.gen_bool(0.1) {
                    c.arg("CH");
                }
                for _ in 0..self.rng.gen_range(1..=3) {
                    let score = if self.rng.gen_bool(0.15) {
                        [
                            "1.5",
                            "-0.25",
                            "0.1",
                            "-0",
                            "+7",
                            "1e2",
                            "2E-3",
                            "inf",
                            "-inf",
                            "9007199254740993",
                            "-9007199254740992",
                            "1e300",
                        ][self.rng.gen_range(0..12)]
                        .to_string()
                    } else {
                        self.rng.gen_range(-100..100).to_string()
                    };
                    c.arg(score).arg(format!("z{}", self.rng.gen_range(0..30)));
                }
            }
            "zincrby" => {
                // Mostly integral increments (element deltas); a non-integral one is an image.
                let k = self.key(C_ZSET);
                let d = if self.rng.gen_bool(0.2) {
                    self.float_delta()
                } else {
                    self.rng.gen_range(-5..10).to_string()
                };
                c = redis::cmd("ZINCRBY");
                c.arg(k)
                    .arg(d)
                    .arg(format!("z{}", self.rng.gen_range(0..30)));
            }
            "zrem" => {
                let k = self.key(C_ZSET);
                c = redis::cmd("ZREM");
                c.arg(k);
                for _ in 0..self.rng.gen_range(1..=3) {
                    c.arg(format!("z{}", self.rng.gen_range(0..30)));
                }
            }
            "zadd_flags" => {
                // ZADD with NX/XX/GT/LT/INCR is not described per element: an image (CH alone
                // does not change what is written).
                let k = self.key(C_ZSET);
                c = redis::cmd("ZADD");
                c.arg(k);
                let flags: &[&str] = [
                    &["NX"][..],
                    &["XX"],
                    &["GT"],
                    &["LT"],
                    &["XX", "GT"],
                    &["CH"],
                    &["NX", "CH"],
                    &["INCR"],
                    &["XX", "INCR"],
                    &["GT", "CH"],
                ][self.rng.gen_range(0..10)];
                c.arg(flags);
                let pairs = if flags.contains(&"INCR") {
                    1
                } else {
                    self.rng.gen_range(1..=3)
                };
                for _ in 0..pairs {
                    c.arg(self.rng.gen_range(-100..100))
                        .arg(format!("z{}", self.rng.gen_range(0..30)));
                }
            }
            "xadd" => {
                let k = self.key(C_STREAM);
                c = redis::cmd("XADD");
                c.arg(k)
                    .arg("MAXLEN")
                    .arg(self.rng.gen_range(5..30))
                    .arg("*")
                    .arg("f")
                    .arg(self.rng.gen_range(0..1000));
            }
            // Entries deleted by ID: the IDs `XADD *` hands out are the milliseconds of the
            // run, so a recent millisecond with a low sequence often names a live entry (and
            // the one-in-three `XDEL` of an older one names none: a no-op that must stay one).
            "xdel" => {
                let k = self.key(C_STREAM);
                c = redis::cmd("XDEL");
                c.arg(k);
                for _ in 0..self.rng.gen_range(1..=3) {
                    let back = if self.rng.gen_ratio(1, 3) {
                        self.rng.gen_range(5_000..60_000)
                    } else {
                        self.rng.gen_range(0..400)
                    };
                    c.arg(format!(
                        "{}-{}",
                        now_ms().saturating_sub(back),
                        self.rng.gen_range(0..3)
                    ));
                }
            }
            // Trims by count or by the oldest ID kept, and `XADD` trimming by `MINID`.
            "xtrim" => {
                let k = self.key(C_STREAM);
                let min_id = format!("{}", now_ms().saturating_sub(self.rng.gen_range(0..2_000)));
                match self.rng.gen_range(0..3) {
                    0 => {
                        c = redis::cmd("XTRIM");
                        c.arg(k).arg("MAXLEN").arg(self.rng.gen_range(0..15));
                    }
                    1 => {
                        c = redis::cmd("XTRIM");
                        c.arg(k).arg("MINID").arg(min_id);
                    }
                    _ => {
                        c = redis::cmd("XADD");
                        c.arg(k)
                            .arg("MINID")
                            .arg(min_id)
                            .arg("*")
                            .arg("f")
                            .arg(self.rng.gen_range(0..1000));
                    }
                }
            }
            // Consumer groups: created (or moved to the end, or a consumer dropped with its
            // pending entries), read (entries delivered, pending), claimed. The group
            // commands ship the stream whole; `XINFO STREAM … FULL` compares the groups.
            "xgroup" => {
                let k = self.key(C_STREAM);
                let g = format!("g{}", self.rng.gen_range(0..2));
                c = redis::cmd("XGROUP");
                match self.rng.gen_range(0..10) {
                    0..=6 => c.arg("CREATE").arg(k).arg(g).arg("0").arg("MKSTREAM"),
                    7 | 8 => c.arg("SETID").arg(k).arg(g).arg("$"),
                    _ => c
                        .arg("DELCONSUMER")
                        .arg(k)
                        .arg(g)
                        .arg(format!("c{}", self.rng.gen_range(0..2))),
                };
            }
            "xreadgroup" => {
                let k = self.key(C_STREAM);
                c = redis::cmd("XREADGROUP");
                c.arg("GROUP")
                    .arg(format!("g{}", self.rng.gen_range(0..2)))
                    .arg(format!("c{}", self.rng.gen_range(0..2)))
                    .arg("COUNT")
                    .arg(self.rng.gen_range(1..=3))
                    .arg("STREAMS")
                    .arg(k)
                    .arg(">");
            }
            "xautoclaim" => {
                let k = self.key(C_STREAM);
                c = redis::cmd("XAUTOCLAIM");
                c.arg(k)
                    .arg(format!("g{}", self.rng.gen_range(0..2)))
                    .arg(format!("c{}", self.rng.gen_range(0..2)))
                    .arg("0")
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(self.rng.gen_range(1..=3));
            }
            "expire" | "expire_short" => {
                let k = self.any_key();
                if kind == "expire_short" {
                    c = redis::cmd("PEXPIRE");
                    c.arg(k).arg(self.rng.gen_range(20..1500));
                } else if self.rng.gen_bool(0.5) {
                    c = redis::cmd("EXPIRE");
                    c.arg(k).arg(self.rng.gen_range(600..3600));
                } else {
                    c = redis::cmd("PEXPIREAT");
                    c.arg(k)
                        .arg(now_ms() + self.rng.gen_range(600_000..3_600_000));
                }
            }
            "persist" => {
                let k = self.any_key();
                c = redis::cmd("PERSIST");
                c.arg(k);
            }
            "del" => {
                c = redis::cmd(if self.rng.gen_bool(0.5) {
                    "DEL"
                } else {
                    "UNLINK"
                });
                let k = self.any_key();
                c.arg(k);
                if self.rng.gen_bool(0.3) {
                    let k2 = self.any_key();
                    c.arg(k2);
                }
            }
            "del_coll" => {
                // DEL/UNLINK of a counter, hash, set or sorted set (an observed remove).
                c = redis::cmd(if self.rng.gen_bool(0.5) {
                    "DEL"
                } else {
                    "UNLINK"
                });
                for _ in 0..self.rng.gen_range(1..=2) {
                    let class = ELEM_CLASSES[self.rng.gen_range(0..ELEM_CLASSES.len())];
                    let k = self.key(class);
                    c.arg(k);
                }
            }
            "bzpopmin" => {
                // Half the time also on a hot sorted set: if it is empty too, a writer's
                // element ZADD to it can wake this pop, whose change of that key then comes
                // from another client than the command its events follow.
                c = redis::cmd("BZPOPMIN");
                c.arg(QUEUE_ZSET);
                if self.rng.gen_bool(0.5) {
                    let k = self.key(C_ZSET);
                    c.arg(k);
                }
                c.arg(BLOCK_TIMEOUT);
            }
            "lmove" => {
                let (from, to) = (self.key(C_LIST), self.key(C_LIST));
                let r = &mut self.rng;
                let lmove = r.gen_bool(0.8);
                c = redis::cmd(if lmove { "LMOVE" } else { "RPOPLPUSH" });
                c.arg(from).arg(to);
                if lmove {
                    c.arg(if r.gen_bool(0.5) { "LEFT" } else { "RIGHT" })
                        .arg(if r.gen_bool(0.5) { "LEFT" } else { "RIGHT" });
                }
            }
            "blmove" => {
                let to = self.key(C_LIST);
                let r = &mut self.rng;
                c = redis::cmd("BLMOVE");
                c.arg(QUEUE_LIST)
                    .arg(to)
                    .arg(if r.gen_bool(0.5) { "LEFT" } else { "RIGHT" })
                    .arg(if r.gen_bool(0.5) { "LEFT" } else { "RIGHT" })
                    .arg(BLOCK_TIMEOUT);
            }
            "rename" => {
                let (from, to) = (self.any_key(), self.any_key());
                c = redis::cmd("RENAME");
                c.arg(from).arg(to);
            }
            other => panic!("not a simple op: {other}"),
        }
        c
    }

    /// A non-integral float increment, now and then an integral one written as a float.
    fn float_delta(&mut self) -> String {
        ["0.5", "-1.25", "2.75", "0.1", "3", "-2.0", "1e1"][self.rng.gen_range(0..7)].to_string()
    }

    /// One element command (those the capture describes per element) on `key` of `class`;
    /// now and then a DEL of the key instead.
    fn elem_on(&mut self, class: usize, key: &str) -> redis::Cmd {
        let r = &mut self.rng;
        if r.gen_ratio(1, 10) {
            let mut c = redis::cmd("DEL");
            c.arg(key);
            return c;
        }
        let n = r.gen_range(0..8);
        let mut c;
        match class {
            C_COUNTER => match r.gen_range(0..5) {
                0 => {
                    c = redis::cmd("INCR");
                    c.arg(key);
                }
                1 => {
                    c = redis::cmd("DECR");
                    c.arg(key);
                }
                2 => {
                    c = redis::cmd("DECRBY");
                    c.arg(key).arg(r.gen_range(-20..20));
                }
                3 => {
                    c = redis::cmd("SET");
                    c.arg(key).arg(r.gen_range(-100..100));
                }
                _ => {
                    c = redis::cmd("INCRBY");
                    c.arg(key).arg(r.gen_range(-20..50));
                }
            },
            C_HASH => {
                let f = format!("f{n}");
                match r.gen_range(0..5) {
                    0 => {
                        c = redis::cmd("HDEL");
                        c.arg(key).arg(f);
                    }
                    1 => {
                        c = redis::cmd("HINCRBY");
                        c.arg(key).arg(f).arg(r.gen_range(-5..10));
                    }
                    2 => {
                        c = redis::cmd("HSETNX");
                        c.arg(key).arg(f).arg(r.gen_range(0..100));
                    }
                    3 => {
                        c = redis::cmd("HMSET");
                        c.arg(key)
                            .arg(f)
                            .arg(r.gen_range(0..100))
                            .arg(format!("f{}", n + 1))
                            .arg("x");
                    }
                    _ => {
                        c = redis::cmd("HSET");
                        c.arg(key).arg(f).arg(r.gen_range(0..100));
                    }
                }
            }
            C_SET => {
                c = redis::cmd(if r.gen_bool(0.6) { "SADD" } else { "SREM" });
                c.arg(key).arg(format!("m{n}"));
            }
            _ => {
                let m = format!("z{n}");
                match r.gen_range(0..3) {
                    0 => {
                        c = redis::cmd("ZREM");
                        c.arg(key).arg(m);
                    }
                    1 => {
                        c = redis::cmd("ZINCRBY");
                        c.arg(key).arg(r.gen_range(-3..5)).arg(m);
                    }
                    _ => {
                        c = redis::cmd("ZADD");
                        c.arg(key).arg(r.gen_range(-100..100)).arg(m);
                    }
                }
            }
        }
        c
    }

    fn pick_kind(&mut self) -> &'static str {
        if self.filter.has("flushdb") && self.rng.gen_ratio(1, self.flush_one_in) {
            return "flushdb";
        }
        let mut x = self.rng.gen_range(0..self.total_weight);
        for (k, w) in &self.kinds {
            if x < *w {
                return k;
            }
            x -= w;
        }
        unreachable!("weights add up")
    }

    fn select(&mut self, db: i64) -> Result<(), redis::RedisError> {
        if self.cur_db != Some(db) {
            redis::cmd("SELECT").arg(db).query::<()>(&mut self.conn)?;
            self.cur_db = Some(db);
        }
        Ok(())
    }

    /// One random op; errors are classified into the stats. Returns false if the connection is
    /// unusable.
    fn step(&mut self) -> bool {
        if self.kinds.is_empty() && !self.filter.has("flushdb") {
            thread::sleep(Duration::from_millis(10));
            return true;
        }
        if let Some(ok) = self.serve_waiter() {
            return ok;
        }
        let kind = self.pick_kind();
        self.step_kind(kind, None)
    }

    /// If a writer (of either side) has been blocked on a queue key for [`SERVE_AFTER_MS`],
    /// serves it with one push (op `qserve`); returns what [`Writer::step_kind`] returned.
    fn serve_waiter(&mut self) -> Option<bool> {
        let now = now_ms() as u64;
        let waiting = Arc::clone(&self.waiting);
        let half = waiting.len() / 2;
        let my_side = self.slot / half;
        for (slot, w) in waiting.iter().enumerate() {
            let v = w.load(Ordering::Acquire);
            let Some(wait) = Wait::unpack(v) else {
                continue;
            };
            if now < wait.since_ms + SERVE_AFTER_MS {
                continue;
            }
            // From the other side, only if no waiter here would take the element first.
            let stolen = slot / half != my_side
                && waiting[my_side * half..(my_side + 1) * half]
                    .iter()
                    .filter_map(|o| Wait::unpack(o.load(Ordering::Acquire)))
                    .any(|o| o.db_index == wait.db_index && o.list == wait.list);
            if stolen
                || w.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            if slot / half == my_side {
                self.stats.serves_same_side += 1;
            } else {
                self.stats.serves_other_side += 1;
            }
            self.serving = Some(wait);
            let focus = self.focus.replace((DBS[wait.db_index], self.keys_per_db));
            let ok = self.step_kind("qserve", None);
            self.focus = focus;
            return Some(ok);
        }
        None
    }

    /// The burst at the end of a round: 2–4 ops on the first [`BURST_KEYS`] keys of `db`, maybe
    /// with a FLUSHDB of `db` among them; each op is described into `log`.
    fn burst(&mut self, db: i64, log: &mut Vec<String>) -> bool {
        self.focus = Some((db, BURST_KEYS));
        let n = self.rng.gen_range(2..=4);
        let flush_at = (self.filter.has("flushdb") && self.rng.gen_ratio(1, BURST_FLUSH_ONE_IN))
            .then(|| self.rng.gen_range(0..n));
        let mut ok = true;
        for i in 0..n {
            let kind = if flush_at == Some(i) {
                "flushdb"
            } else if self.kinds.is_empty() {
                continue;
            } else {
                // No blocking ops or pauses here: nobody serves a waiter during a burst, and
                // the burst's ops should all run at the same moment.
                match (0..20)
                    .map(|_| self.pick_kind())
                    .find(|k| !matches!(*k, "bzpopmin" | "blmove" | "expire_mid"))
                {
                    Some(k) => k,
                    None => continue,
                }
            };
            if !self.step_kind(kind, Some(&mut *log)) {
                ok = false;
                break;
            }
        }
        self.focus = None;
        ok
    }

    /// Runs one op of `kind` (in the focus db, else a random one) and classifies its error.
    fn step_kind(&mut self, kind: &'static str, log: Option<&mut Vec<String>>) -> bool {
        let db = match self.focus {
            Some((db, _)) => db,
            None => DBS[self.rng.gen_range(0..DBS.len())],
        };
        let mut desc = String::new();
        let result = self
            .select(db)
            .and_then(|()| self.run_kind(kind, &mut desc));
        self.stats.ops += 1;
        *self.stats.by_kind.entry(kind).or_default() += 1;
        let outcome = match &result {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        let line = format!("{} db {db}: {desc} -> {outcome}", self.name);
        if self.stats.recent.len() >= RECENT_OPS {
            self.stats.recent.pop_front();
        }
        self.stats.recent.push_back((now_ms(), line.clone()));
        if let Some(log) = log {
            log.push(line);
        }
        match result {
            Ok(()) => true,
            Err(e) => {
                if let Some(class) = legit_error(&e) {
                    *self.stats.legit_errors.entry(class).or_default() += 1;
                    true
                } else {
                    self.stats.unexpected_count += 1;
                    if self.stats.unexpected.len() < 10 {
                        self.stats
                            .unexpected
                            .push(format!("{}: db {db} {kind} {desc}: {e}", self.name));
                    }
                    !(e.is_io_error() || e.is_connection_dropped() || e.is_timeout())
                }
            }
        }
    }

    fn run_kind(&mut self, kind: &'static str, desc: &mut String) -> Result<(), redis::RedisError> {
        match kind {
            "flushdb" => {
                match self.rng.gen_range(0..3) {
                    0 => {
                        *desc = "FLUSHDB".into();
                        redis::cmd("FLUSHDB").query::<()>(&mut self.conn)
                    }
                    1 => {
                        *desc = "FLUSHDB ASYNC".into();
                        redis::cmd("FLUSHDB")
                            .arg("ASYNC")
                            .query::<()>(&mut self.conn)
                    }
                    _ => {
                        // SET a; FLUSHDB; SET b in one transaction: the index in the batch
                        // orders them (b survives, a does not).
                        let (a, b) = (self.key(C_STRING), self.key(C_STRING));
                        let v = self.value();
                        *desc = format!("MULTI SET {a}; FLUSHDB; SET {b}");
                        let mut p = redis::pipe();
                        p.atomic();
                        p.cmd("SET").arg(&a).arg(&v).ignore();
                        p.cmd("FLUSHDB").ignore();
                        p.cmd("SET").arg(&b).arg(&v).ignore();
                        p.query::<()>(&mut self.conn)
                    }
                }
            }
            "qserve" => {
                let wait = self
                    .serving
                    .take()
                    .expect("serve_waiter sets what to serve");
                let c = wait.push(format!("q{}", self.rng.gen_range(0..1000)));
                *desc = describe(&c);
                c.query::<Value>(&mut self.conn).map(|_| ())
            }
            "bzpopmin" | "blmove" => {
                // Announce the wait, so that another writer serves it (see `Waiting`).
                let db = self.cur_db.expect("the db was selected");
                let db_index = DBS.iter().position(|&d| d == db).expect("a known db");
                let wait = Wait {
                    since_ms: now_ms() as u64,
                    db_index,
                    list: kind == "blmove",
                };
                let c = self.simple(kind);
                *desc = describe(&c);
                let start = Instant::now();
                self.waiting[self.slot].store(wait.pack(), Ordering::Release);
                let result = c.query::<Value>(&mut self.conn);
                self.waiting[self.slot].store(0, Ordering::Release);
                self.stats.block_time += start.elapsed();
                match &result {
                    Ok(Value::Nil) => self.stats.block_timeouts += 1,
                    Ok(_) => self.stats.block_served += 1,
                    Err(_) => {}
                }
                result.map(|_| ())
            }
            "multi_elem" => {
                // Element commands queued in a transaction, on one or two keys.
                let mut keys = Vec::new();
                for _ in 0..self.rng.gen_range(1..=2) {
                    let class = ELEM_CLASSES[self.rng.gen_range(0..ELEM_CLASSES.len())];
                    keys.push((class, self.key(class)));
                }
                let mut p = redis::pipe();
                p.atomic();
                let mut parts = Vec::new();
                for _ in 0..self.rng.gen_range(2..=5) {
                    let (class, k) = keys[self.rng.gen_range(0..keys.len())].clone();
                    let c = self.elem_on(class, &k);
                    parts.push(describe(&c));
                    p.add_command(c).ignore();
                }
                *desc = format!("MULTI {}", parts.join("; "));
                p.query::<()>(&mut self.conn)
            }
            "eval_elem" => {
                let i = self.rng.gen_range(0..ELEM_SCRIPTS.len());
                let (script, nkeys) = ELEM_SCRIPTS[i];
                let keys: Vec<String> = ELEM_SCRIPT_CLASSES[i]
                    .iter()
                    .map(|class| match class {
                        Some(c) => self.key(*c),
                        None => self.any_key(),
                    })
                    .collect();
                assert_eq!(keys.len(), nkeys);
                let (v, n) = (self.rng.gen_range(-50..100), self.rng.gen_range(0..15));
                *desc = format!("EVAL elem script {i} {keys:?} {v} {n}");
                let mut c = redis::cmd("EVAL");
                c.arg(script).arg(nkeys).arg(&keys).arg(v).arg(n);
                c.query::<Value>(&mut self.conn).map(|_| ())
            }
            "xdel" => {
                // Outside MULTI, delete entries that exist: read a few IDs, delete 1-2 of them
                // (the other side may delete or trim the same ones meanwhile).
                let k = self.key(C_STREAM);
                let ids: Vec<String> = match redis::cmd("XRANGE")
                    .arg(&k)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(30)
                    .query::<Vec<(String, Value)>>(&mut self.conn)
                {
                    Ok(entries) => entries.into_iter().map(|(id, _)| id).collect(),
                    Err(e) => return Err(e),
                };
                let mut c = redis::cmd("XDEL");
                c.arg(&k);
                if ids.is_empty() {
                    c.arg("1-1");
                } else {
                    for _ in 0..self.rng.gen_range(1..=2) {
                        c.arg(&ids[self.rng.gen_range(0..ids.len())]);
                    }
                }
                *desc = describe(&c);
                c.query::<Value>(&mut self.conn).map(|_| ())
            }
            "fcall" => {
                let (name, classes) = FUNCTIONS[self.rng.gen_range(0..FUNCTIONS.len())];
                let keys = [self.key(classes[0]), self.key(classes[1])];
                let (v, n) = (self.rng.gen_range(-50..100), self.rng.gen_range(0..15));
                *desc = format!("FCALL {name} 2 {} {} {v} {n}", keys[0], keys[1]);
                let mut c = redis::cmd("FCALL");
                c.arg(name).arg(2).arg(&keys).arg(v).arg(n);
                c.query::<Value>(&mut self.conn).map(|_| ())
            }
            "expire_mid" => {
                // An element write, a PEXPIRE of a few ms, a pause about as long, then element
                // writes: the key expires just before, during (lazily, inside the command) or
                // just after them.
                let class = ELEM_CLASSES[self.rng.gen_range(0..ELEM_CLASSES.len())];
                let k = self.key(class);
                let ttl = self.rng.gen_range(1..=5);
                let pause = self.rng.gen_range(0..=6);
                let first = self.elem_on(class, &k);
                let mut parts = vec![describe(&first)];
                let mut p = redis::pipe();
                p.add_command(first).ignore();
                p.cmd("PEXPIRE").arg(&k).arg(ttl).ignore();
                parts.push(format!("PEXPIRE {k} {ttl}"));
                parts.push(format!("(sleep {pause} ms)"));
                let mut then = Vec::new();
                for _ in 0..self.rng.gen_range(1..=3) {
                    let c = self.elem_on(class, &k);
                    parts.push(describe(&c));
                    then.push(c);
                }
                *desc = parts.join("; ");
                p.query::<()>(&mut self.conn)?;
                thread::sleep(Duration::from_millis(pause));
                for c in then {
                    c.query::<Value>(&mut self.conn)?;
                }
                Ok(())
            }
            "multi" => {
                let n = self.rng.gen_range(2..=4);
                let mut p = redis::pipe();
                p.atomic();
                let simple: Vec<&str> = SIMPLE_OPS
                    .iter()
                    .copied()
                    .filter(|k| self.filter.has(k))
                    .collect();
                if simple.is_empty() {
                    return Ok(());
                }
                let switch_at = if self.rng.gen_bool(0.25) {
                    Some(self.rng.gen_range(1..n))
                } else {
                    None
                };
                let mut parts = Vec::new();
                for i in 0..n {
                    if switch_at == Some(i) {
                        let other = DBS[self.rng.gen_range(0..DBS.len())];
                        p.cmd("SELECT").arg(other).ignore();
                        parts.push(format!("SELECT {other}"));
                    }
                    let k = simple[self.rng.gen_range(0..simple.len())];
                    let c = self.simple(k);
                    parts.push(describe(&c));
                    p.add_command(c).ignore();
                }
                *desc = format!("MULTI {}", parts.join("; "));
                if switch_at.is_some() {
                    // The db the connection ends in is re-established before the next op.
                    self.cur_db = None;
                }
                p.query::<()>(&mut self.conn)
            }
            "eval" => {
                let (script, nkeys) = SCRIPTS[self.rng.gen_range(0..SCRIPTS.len())];
                let classes: [usize; 3] = [
                    self.rng.gen_range(0..CLASSES),
                    self.rng.gen_range(0..CLASSES),
                    self.rng.gen_range(0..CLASSES),
                ];
                let keys: Vec<String> = classes[..nkeys].iter().map(|&c| self.key(c)).collect();
                let (v, n) = (self.value(), self.rng.gen_range(0..20));
                *desc = format!("EVAL {:?} {keys:?}", &script[..script.len().min(30)]);
                let mut c = redis::cmd("EVAL");
                c.arg(script).arg(nkeys).arg(&keys).arg(v).arg(n);
                c.query::<Value>(&mut self.conn).map(|_| ())
            }
            simple => {
                let c = self.simple(simple);
                *desc = describe(&c);
                c.query::<Value>(&mut self.conn).map(|_| ())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One seed
// ---------------------------------------------------------------------------------------------

/// The size and pace of the workload.
#[derive(Clone, Debug)]
struct Shape {
    keys_per_db: usize,
    flush_one_in: u32,
}

/// How the coordinator (the test thread) and the writers take turns: writers run random ops
/// until `burst` is set, do their burst together, and wait while the coordinator checks.
struct Control {
    burst: AtomicBool,
    stop: AtomicBool,
    /// The focus db of the current burst.
    burst_db: AtomicI64,
    /// Writers only: the burst starts when all have stopped their random ops.
    start_burst: Barrier,
    /// How many writers have stopped their random ops for the burst (the coordinator serves
    /// blocked writers until all have).
    arrived: AtomicUsize,
    /// Writers and coordinator: every burst is done.
    burst_done: Barrier,
    /// Writers and coordinator: the checkpoint is done, go on (or stop).
    resume: Barrier,
    /// What the writers did in the current burst.
    burst_log: Mutex<Vec<String>>,
}

/// Polls until both servers hold the same data; returns how long that took, or the last diff.
fn wait_converged(pair: &Pair, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let last = match compare_once(&pair.a, &pair.b, &DBS) {
            Ok(()) => return Ok(start.elapsed()),
            Err(diff) => diff,
        };
        if start.elapsed() >= timeout {
            return Err(last);
        }
        thread::sleep(CHECK_POLL);
    }
}

fn run_seed(seed: u64) {
    let secs = env_usize("CONV_SECS", 15) as u64;
    let threads_per_side = env_usize("CONV_THREADS", 3);
    let round_len = Duration::from_millis(env_usize("CONV_ROUND_MS", ROUND_MS as usize) as u64);
    let shape = Shape {
        keys_per_db: env_usize("CONV_KEYS", 20),
        flush_one_in: env_usize("CONV_FLUSH_ONE_IN", FLUSH_ONE_IN as usize).max(1) as u32,
    };
    let filter = OpFilter::from_env();
    eprintln!(
        "convergence: seed {seed} (replay with CONV_SEED={seed}), {secs} s of writes, \
         {threads_per_side} writers per side, {} hot keys x {} dbs, rounds of {} ms + burst + \
         checkpoint, FLUSHDB 1 in {} ops, ops {:?}",
        shape.keys_per_db,
        DBS.len(),
        round_len.as_millis(),
        shape.flush_one_in,
        filter.allowed
    );
    let t0 = Instant::now();
    // Test hooks make each server check every SET value it ships without
    // reading it back (the set hint) against the stored value.
    let pair = Pair::builder().env("BISYNC_TEST_HOOKS", "1").start();
    pair.wait_link_up(Duration::from_secs(20));
    // Functions are not keys: not replicated, so loaded on each side.
    for server in [&pair.a, &pair.b] {
        redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(FUNCTION_LIB)
            .query::<String>(&mut server.conn())
            .unwrap_or_else(|e| panic!("FUNCTION LOAD on {}: {e}", server.name()));
    }
    let setup = t0.elapsed();
    let waiting: Waiting = Arc::new(
        (0..2 * threads_per_side)
            .map(|_| AtomicU64::new(0))
            .collect(),
    );

    let writers = 2 * threads_per_side;
    let ctl = Arc::new(Control {
        burst: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        burst_db: AtomicI64::new(0),
        start_burst: Barrier::new(writers),
        arrived: AtomicUsize::new(0),
        burst_done: Barrier::new(writers + 1),
        resume: Barrier::new(writers + 1),
        burst_log: Mutex::new(Vec::new()),
    });
    let mut handles = Vec::new();
    for (side, server) in [("a", &pair.a), ("b", &pair.b)] {
        for t in 0..threads_per_side {
            let name = format!("{side}{t}");
            let side_no = if side == "a" { 0u64 } else { 1 };
            let wseed = seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(side_no * 1000 + t as u64 + 1);
            let mut w = Writer::new(
                name,
                wseed,
                server.conn(),
                &shape,
                filter.clone(),
                Arc::clone(&waiting),
                side_no as usize * threads_per_side + t,
            );
            let ctl = Arc::clone(&ctl);
            handles.push(
                thread::Builder::new()
                    .name(format!("writer-{side}{t}"))
                    .spawn(move || {
                        // A writer whose connection broke stops writing but keeps taking part
                        // in the rounds (the error is in its stats and fails the test).
                        let mut broken = false;
                        loop {
                            while !ctl.burst.load(Ordering::Acquire) {
                                if broken {
                                    thread::sleep(Duration::from_millis(1));
                                } else if !w.step() {
                                    broken = true;
                                }
                            }
                            ctl.arrived.fetch_add(1, Ordering::AcqRel);
                            ctl.start_burst.wait();
                            if !broken {
                                let mut log = Vec::new();
                                broken = !w.burst(ctl.burst_db.load(Ordering::Acquire), &mut log);
                                lock(&ctl.burst_log).extend(log);
                            }
                            ctl.burst_done.wait();
                            ctl.resume.wait();
                            if ctl.stop.load(Ordering::Acquire) {
                                return w.stats;
                            }
                        }
                    })
                    .expect("spawning a writer"),
            );
        }
    }

    // Rounds: random writes, a burst, a checkpoint; until `secs` of writing are done.
    let mut write_time = Duration::ZERO;
    let mut rounds = 0u64;
    let mut slowest_check = Duration::ZERO;
    // From the burst signal until every writer is done with its burst.
    let mut burst_time = Duration::ZERO;
    let mut slowest_burst = Duration::ZERO;
    let mut failure: Option<String> = None;
    let mut queue_conns = [pair.a.conn(), pair.b.conn()];
    let run_start = Instant::now();
    loop {
        let phase = Instant::now();
        thread::sleep(round_len);
        let db = DBS[rounds as usize % DBS.len()];
        ctl.burst_db.store(db, Ordering::Release);
        let burst_start = Instant::now();
        ctl.burst.store(true, Ordering::Release);
        // Writers finish their current op first: serve those blocked in BZPOPMIN/BLMOVE (no
        // other writer will), on their own side so that it is quick.
        while ctl.arrived.load(Ordering::Acquire) < writers {
            for (slot, w) in waiting.iter().enumerate() {
                let v = w.load(Ordering::Acquire);
                let Some(wait) = Wait::unpack(v) else {
                    continue;
                };
                if w.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    let conn = &mut queue_conns[slot / threads_per_side];
                    let mut p = redis::pipe();
                    p.cmd("SELECT").arg(DBS[wait.db_index]).ignore();
                    p.add_command(wait.push(format!("c{slot}"))).ignore();
                    p.query::<()>(conn)
                        .unwrap_or_else(|e| panic!("serving a blocked writer: {e}"));
                }
            }
            thread::sleep(Duration::from_micros(100));
        }
        ctl.arrived.store(0, Ordering::Release);
        ctl.burst_done.wait();
        let bt = burst_start.elapsed();
        slowest_burst = slowest_burst.max(bt);
        burst_time += bt;
        write_time += phase.elapsed();
        ctl.burst.store(false, Ordering::Release);
        rounds += 1;
        let burst_log = std::mem::take(&mut *lock(&ctl.burst_log));
        let at = run_start.elapsed();
        match wait_converged(&pair, CONVERGE_TIMEOUT) {
            Ok(took) => slowest_check = slowest_check.max(took),
            Err(diff) => {
                failure = Some(format!(
                    "seed {seed}: checkpoint after round {rounds} (burst in db {db}, {:.1} s \
                     into the run) did not converge within {CONVERGE_TIMEOUT:?}:\n{diff}\n\
                     the burst that ended the round:\n  {}",
                    at.as_secs_f64(),
                    burst_log.join("\n  ")
                ));
            }
        }
        let done = failure.is_some() || write_time >= Duration::from_secs(secs);
        if done {
            ctl.stop.store(true, Ordering::Release);
        }
        ctl.resume.wait();
        if done {
            break;
        }
    }
    let run_time = run_start.elapsed();
    let mut stats = WriterStats::default();
    for h in handles {
        stats.merge(h.join().expect("a writer thread panicked"));
    }
    eprintln!(
        "seed {seed}: {} ops in {rounds} rounds, {:.1} s of writes ({:.0} ops/s), {:.1} s with \
         checkpoints (slowest {:.0} ms), bursts {:.0} ms on average (slowest {:.0} ms); legit \
         errors {:?}; unexpected {}",
        stats.ops,
        write_time.as_secs_f64(),
        stats.ops as f64 / write_time.as_secs_f64(),
        run_time.as_secs_f64(),
        slowest_check.as_secs_f64() * 1000.0,
        burst_time.as_secs_f64() * 1000.0 / rounds.max(1) as f64,
        slowest_burst.as_secs_f64() * 1000.0,
        stats.legit_errors,
        stats.unexpected_count
    );
    eprintln!("seed {seed}: ops per kind {:?}", stats.by_kind);
    eprintln!(
        "seed {seed}: blocking ops (BZPOPMIN/BLMOVE outside MULTI): {} got an element, {} timed \
         out, {:.1} s spent blocked in all writers; served by a push from a writer of the same \
         side {} times, of the other side {} times",
        stats.block_served,
        stats.block_timeouts,
        stats.block_time.as_secs_f64(),
        stats.serves_same_side,
        stats.serves_other_side
    );
    // The test hooks' own checks: a shipped SET value that differs from the stored one
    // ("set-hint mismatch"), and a peer whose digest of a key differs from the origin's after
    // applying the origin's element changes with no concurrent change of its own ("element
    // self-check mismatch"). Reported together with a failed checkpoint, if any.
    let mut log_problems = Vec::new();
    for server in [&pair.a, &pair.b] {
        let log = server.log();
        for (needle, what) in [
            (
                "set-hint mismatch",
                "shipped a SET value that differs from the stored one",
            ),
            (
                "self-check mismatch",
                "applied element changes and got a digest that differs from the origin's",
            ),
        ] {
            let bad: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
            if !bad.is_empty() {
                // The first line of each key, up to 10 keys.
                let mut shown: Vec<&str> = Vec::new();
                for l in &bad {
                    let key = mismatch_key(l).map(|(db, k, _)| (db, k));
                    if key.is_none()
                        || !shown
                            .iter()
                            .any(|s| mismatch_key(s).map(|(db, k, _)| (db, k)) == key)
                    {
                        shown.push(l);
                    }
                }
                log_problems.push(format!(
                    "seed {seed}: {} {what} ({} log lines), the first of each key:\n{}",
                    server.name(),
                    bad.len(),
                    shown[..shown.len().min(10)].join("\n")
                ));
            }
        }
    }
    if failure.is_some() || !log_problems.is_empty() {
        let (mut ca, mut cb) = pair.conns();
        let sorted = |s: HashMap<String, String>| s.into_iter().collect::<BTreeMap<_, _>>();
        // The keys to explain: those that differ now (with their last ops), and those named
        // by a mismatch line (with the ops of the 2 s before it).
        let mut keys: Vec<(i64, String, Option<i64>)> = differing_keys(&pair)
            .into_iter()
            .map(|(db, k)| (db, k, None))
            .collect();
        // The first mismatch of each key (later ones usually follow from it).
        for p in &log_problems {
            for (db, key, at) in p.lines().filter_map(mismatch_key) {
                if !keys.iter().any(|(d, k, _)| *d == db && *k == key) {
                    keys.push((db, key, at));
                }
            }
        }
        let mut recent: Vec<&(i64, String)> = stats.recent.iter().collect();
        recent.sort_by_key(|(t, _)| *t);
        let mut explained = String::new();
        for (db, key, at) in keys.iter().take(8) {
            if at.is_none() {
                for (name, c) in [("a", &mut ca), ("b", &mut cb)] {
                    explained.push_str(&format!(
                        "  {name} db {db} {key:?}: {}\n",
                        dump_key(c, *db, key)
                    ));
                }
            }
            // Key names are k00..k99, qz, ql: a substring match finds the ops on the key; an op
            // in another db counts only if it may have switched db (MULTI with SELECT).
            let history: Vec<String> = recent
                .iter()
                .filter(|(t, l)| {
                    l.contains(key.as_str())
                        && (l.contains(&format!(" db {db}: ")) || l.contains("SELECT"))
                        && at.is_none_or(|at| (at - 2000..=at + 20).contains(&day_ms(*t)))
                })
                .map(|(t, l)| format!("    {} {l}", clock(day_ms(*t))))
                .collect();
            let what = match at {
                Some(at) => format!("before the mismatch at {}", clock(*at)),
                None => "last".to_string(),
            };
            explained.push_str(&format!(
                "  db {db} {key:?}: {what}, {} ops naming it (time, writer, db the op started in):\n{}\n",
                history.len().min(60),
                history[history.len().saturating_sub(60)..].join("\n")
            ));
        }
        panic!(
            "{}{}\nstatus a: {:?}\nstatus b: {:?}\nthe keys in question:\n{explained}",
            failure.map(|f| f + "\n").unwrap_or_default(),
            log_problems.join("\n"),
            sorted(status(&mut ca)),
            sorted(status(&mut cb))
        );
    }
    assert!(
        stats.unexpected_count == 0,
        "seed {seed}: {} unexpected command errors, first ones:\n{}",
        stats.unexpected_count,
        stats.unexpected.join("\n")
    );

    // The final check (the last checkpoint already passed: this is the harness' own verdict).
    pair.assert_converged(&DBS, CONVERGE_TIMEOUT);

    let (mut ca, mut cb) = pair.conns();
    let keys: Vec<usize> = DBS
        .iter()
        .map(|&db| {
            redis::cmd("SELECT")
                .arg(db)
                .query::<()>(&mut ca)
                .expect("SELECT");
            redis::cmd("DBSIZE")
                .query::<usize>(&mut ca)
                .expect("DBSIZE")
        })
        .collect();
    let field = |s: &HashMap<String, String>, f: &str| s.get(f).cloned().unwrap_or_default();
    for (n, c) in [("a", &mut ca), ("b", &mut cb)] {
        let s = status(c);
        eprintln!(
            "seed {seed}: node {n}: conflicts_lost {} conflicts_merged {} ops_captured {} \
             ops_applied {} link {} link_errors {} partial/dirty-key/full syncs {}/{}/{} \
             last_error {:?}",
            field(&s, "conflicts_lost"),
            field(&s, "conflicts_merged"),
            field(&s, "ops_captured"),
            field(&s, "ops_applied"),
            field(&s, "link"),
            field(&s, "link_errors"),
            field(&s, "partial_syncs"),
            field(&s, "dirty_key_syncs"),
            field(&s, "full_syncs"),
            field(&s, "last_error"),
        );
    }
    let lost_a = status_u64(&mut ca, "conflicts_lost");
    let lost_b = status_u64(&mut cb, "conflicts_lost");
    // Remote changes merged with a concurrent local change of the same key (element rule);
    // `None` from a module without element-level changes.
    let merged = |c: &mut redis::Connection| {
        status(c)
            .get("conflicts_merged")
            .map(|v| v.parse::<u64>().expect("conflicts_merged is a number"))
    };
    let (merged_a, merged_b) = (merged(&mut ca), merged(&mut cb));
    eprintln!(
        "seed {seed}: CONVERGED at all {rounds} checkpoints; setup {:.1} s, total {:.1} s; keys \
         per db at the end {keys:?}; conflicts_lost a={lost_a} b={lost_b}; conflicts_merged \
         a={merged_a:?} b={merged_b:?}",
        setup.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        lost_a >= MIN_CONFLICTS && lost_b >= MIN_CONFLICTS,
        "seed {seed}: the conflict rule was not exercised enough: conflicts_lost a={lost_a} \
         b={lost_b}, want >= {MIN_CONFLICTS} each"
    );
    if let (Some(ma), Some(mb)) = (merged_a, merged_b) {
        assert!(
            ma >= MIN_CONFLICTS && mb >= MIN_CONFLICTS,
            "seed {seed}: the element merge rule was not exercised enough: conflicts_merged \
             a={ma} b={mb}, want >= {MIN_CONFLICTS} each"
        );
    }

    // The table of un-acknowledged writes is the only per-key metadata: empty once quiet
    // (DESIGN §3), which also means every batch was acknowledged (SYNC.WAIT relies on it).
    wait_for_state(
        "pending_keys 0 on both nodes (every batch acknowledged once the pair is quiet)",
        Duration::from_secs(5),
        || {
            let (pa, pb) = (
                status_u64(&mut ca, "pending_keys"),
                status_u64(&mut cb, "pending_keys"),
            );
            if pa == 0 && pb == 0 {
                return Ok(());
            }
            let mut text = String::new();
            for (n, c) in [("a", &mut ca), ("b", &mut cb)] {
                let s = status(c);
                text.push_str(&format!(
                    "{n}: pending_keys {} issued_seq {} sent_seq {} acked_seq {} applied_seq {} \
                     lag_ms {}\n",
                    field(&s, "pending_keys"),
                    field(&s, "issued_seq"),
                    field(&s, "sent_seq"),
                    field(&s, "acked_seq"),
                    field(&s, "applied_seq"),
                    field(&s, "lag_ms"),
                ));
            }
            Err(text)
        },
    );
}

/// The db, key and time (ms of the day) of an "element self-check mismatch" log line.
fn mismatch_key(line: &str) -> Option<(i64, String, Option<i64>)> {
    // `<pid>:M 01 Dec 2026 07:37:36.868 # <module> bisync: element self-check mismatch #1 in
    // db 2 for key "k12": …`
    let clock_text = line.split_whitespace().nth(4)?;
    let mut hms = clock_text.split([':', '.']).map(|p| p.parse::<i64>().ok());
    let (h, m, s, ms) = (hms.next()??, hms.next()??, hms.next()??, hms.next()??);
    let at = ((h * 60 + m) * 60 + s) * 1000 + ms;
    let rest = &line[line.find(" in db ")? + 7..];
    let db = rest.split_whitespace().next()?.parse().ok()?;
    let rest = &rest[rest.find("for key \"")? + 9..];
    let key = rest[..rest.find('"')?].to_string();
    Some((db, key, Some(at)))
}

/// Epoch ms as ms of the (UTC) day, the clock of the server logs on these machines.
fn day_ms(epoch_ms: i64) -> i64 {
    epoch_ms.rem_euclid(86_400_000)
}

/// Ms of the day as `HH:MM:SS.mmm`.
fn clock(ms: i64) -> String {
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// The (db, key) pairs whose state differs between the two servers now.
fn differing_keys(pair: &Pair) -> Vec<(i64, String)> {
    let (mut ca, mut cb) = pair.conns();
    let (Ok(sa), Ok(sb)) = (try_snapshot(&mut ca, &DBS), try_snapshot(&mut cb, &DBS)) else {
        return Vec::new();
    };
    let all: BTreeSet<&(i64, Vec<u8>)> = sa.keys().chain(sb.keys()).collect();
    all.into_iter()
        .filter(|k| sa.get(*k) != sb.get(*k))
        .map(|(db, k)| (*db, String::from_utf8_lossy(k).into_owned()))
        .collect()
}

/// A key's type, TTL and content, as text (for a failure report).
fn dump_key(c: &mut redis::Connection, db: i64, key: &str) -> String {
    let read = |c: &mut redis::Connection| -> redis::RedisResult<String> {
        redis::cmd("SELECT").arg(db).query::<()>(c)?;
        let t: String = redis::cmd("TYPE").arg(key).query(c)?;
        let ttl: i64 = redis::cmd("PEXPIRETIME").arg(key).query(c)?;
        let content: Value = match t.as_str() {
            "string" => redis::cmd("GET").arg(key).query(c)?,
            "hash" => redis::cmd("HGETALL").arg(key).query(c)?,
            "set" => redis::cmd("SORT").arg(key).arg("ALPHA").query(c)?,
            "zset" => redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query(c)?,
            "list" => redis::cmd("LRANGE").arg(key).arg(0).arg(-1).query(c)?,
            "stream" => redis::cmd("XRANGE")
                .arg(key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(10)
                .query(c)?,
            _ => Value::Nil,
        };
        let mut text = format!("{content:?}");
        text.truncate(1500);
        Ok(format!("{t} pexpiretime={ttl} {text}"))
    };
    read(c).unwrap_or_else(|e| format!("(cannot read: {e})"))
}

/// Locks a mutex even if a writer panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
