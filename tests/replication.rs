//! The replicating pair (issue: foundation): every type, every db, both
//! directions, transactions atomic on the peer, no loops, status, bad args.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use redis::Commands;

const T: Duration = Duration::from_secs(20);

/// Writes of every type on one side; the caller writes them on A or B.
fn write_every_type(c: &mut redis::Connection, p: &str) {
    let k = |s: &str| format!("{p}:{s}");
    cmd(c, &["SET", &k("str"), "hello"]);
    cmd(c, &["APPEND", &k("str"), " world"]);
    cmd(c, &["SETRANGE", &k("str"), "0", "J"]);
    cmd(c, &["INCR", &k("counter")]);
    cmd(c, &["INCRBY", &k("counter"), "41"]);
    cmd(c, &["INCRBYFLOAT", &k("float"), "1.5"]);
    cmd(c, &["SET", &k("ttl_px"), "v", "PX", "600000"]);
    cmd(c, &["SET", &k("ttl_expire"), "v"]);
    cmd(c, &["EXPIRE", &k("ttl_expire"), "500"]);
    cmd(c, &["SET", &k("ttl_at"), "v"]);
    cmd(
        c,
        &["PEXPIREAT", &k("ttl_at"), &(now_ms() + 900_000).to_string()],
    );
    cmd(c, &["SET", &k("persisted"), "v", "EX", "100"]);
    cmd(c, &["PERSIST", &k("persisted")]);
    cmd(c, &["HSET", &k("hash"), "f1", "v1", "f2", "v2"]);
    cmd(c, &["HINCRBY", &k("hash"), "n", "3"]);
    cmd(c, &["HDEL", &k("hash"), "f2"]);
    cmd(c, &["RPUSH", &k("list"), "a", "b", "c", "d"]);
    cmd(c, &["LPOP", &k("list")]);
    cmd(c, &["LINSERT", &k("list"), "BEFORE", "c", "x"]);
    cmd(c, &["SADD", &k("set"), "m1", "m2", "m3"]);
    cmd(c, &["SREM", &k("set"), "m2"]);
    cmd(c, &["ZADD", &k("zset"), "1", "a", "2", "b", "3", "c"]);
    cmd(c, &["ZINCRBY", &k("zset"), "10", "a"]);
    cmd(c, &["ZREM", &k("zset"), "b"]);
    // A big hash and a big zset (non-compact encodings).
    for i in 0..300 {
        cmd(
            c,
            &["HSET", &k("bighash"), &format!("f{i}"), &format!("v{i}")],
        );
        cmd(
            c,
            &["ZADD", &k("bigzset"), &i.to_string(), &format!("m{i}")],
        );
    }
    // Streams with consumer groups: XREADGROUP, XACK and XCLAIM change the
    // groups without keyspace events.
    for i in 0..5 {
        cmd(
            c,
            &[
                "XADD",
                &k("stream"),
                &format!("{}-1", i + 1),
                "field",
                &i.to_string(),
            ],
        );
    }
    cmd(c, &["XGROUP", "CREATE", &k("stream"), "g1", "0"]);
    cmd(
        c,
        &[
            "XREADGROUP",
            "GROUP",
            "g1",
            "alice",
            "COUNT",
            "3",
            "STREAMS",
            &k("stream"),
            ">",
        ],
    );
    cmd(c, &["XACK", &k("stream"), "g1", "1-1"]);
    cmd(c, &["XCLAIM", &k("stream"), "g1", "bob", "0", "2-1"]);
    // Deletes, renames, copies.
    cmd(c, &["SET", &k("gone"), "x"]);
    cmd(c, &["DEL", &k("gone")]);
    cmd(c, &["SET", &k("unlinked"), "x"]);
    cmd(c, &["UNLINK", &k("unlinked")]);
    cmd(c, &["SET", &k("old_name"), "renamed"]);
    cmd(c, &["RENAME", &k("old_name"), &k("new_name")]);
    cmd(c, &["COPY", &k("hash"), &k("hash_copy")]);
    // MULTI/EXEC and Lua.
    let _: () = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(k("tx1"))
        .arg("1")
        .ignore()
        .cmd("SADD")
        .arg(k("txset"))
        .arg("z")
        .ignore()
        .query(c)
        .expect("MULTI/EXEC");
    cmd(
        c,
        &[
            "EVAL",
            "redis.call('SET', KEYS[1], ARGV[1]); redis.call('RPUSH', KEYS[2], ARGV[1]); return 1",
            "2",
            &k("lua1"),
            &k("lualist"),
            "from-lua",
        ],
    );
}

#[test]
fn every_type_replicates_in_both_directions() {
    let pair = Pair::start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    write_every_type(&mut a, "fromA");
    write_every_type(&mut b, "fromB");
    // Functions (FUNCTION LOAD is not a key write; FCALL is).
    let lib = "#!lua name=bisynclib\nredis.register_function('setit', function(keys, args) return redis.call('SET', keys[1], args[1]) end)";
    cmd(&mut a, &["FUNCTION", "LOAD", lib]);
    cmd(&mut b, &["FUNCTION", "LOAD", lib]);
    cmd(&mut a, &["FCALL", "setit", "1", "fromA:fcall", "fn-value"]);
    pair.assert_converged(&[0], T);
    let v: String = b.get("fromA:str").expect("GET");
    assert_eq!(v, "Jello world");
    let v: String = a.get("fromB:fcall").unwrap_or_default();
    assert_eq!(v, "", "not written on B");
    let v: String = b.get("fromA:fcall").expect("GET");
    assert_eq!(v, "fn-value");
    let pel: redis::Value = cmd(&mut b, &["XPENDING", "fromA:stream", "g1"]);
    assert!(
        render_value(&pel).contains("bob"),
        "XCLAIM reached B: {pel:?}"
    );
    // Consumer-group changes with no keyspace event, each alone in its own
    // event-loop iteration (only the command filter sees them).
    cmd(&mut b, &["XACK", "fromA:stream", "g1", "2-1"]);
    pair.assert_converged(&[0], T);
    cmd(
        &mut a,
        &[
            "XREADGROUP",
            "GROUP",
            "g1",
            "alice",
            "COUNT",
            "1",
            "STREAMS",
            "fromB:stream",
            ">",
        ],
    );
    pair.assert_converged(&[0], T);
    cmd(
        &mut b,
        &["XCLAIM", "fromB:stream", "g1", "alice", "0", "3-1"],
    );
    pair.assert_converged(&[0], T);
    let ttl: i64 = b.pttl("fromA:ttl_px").expect("PTTL");
    assert!(ttl > 500_000, "TTL replicated: {ttl}");
    let ttl: i64 = b.pttl("fromA:persisted").expect("PTTL");
    assert_eq!(ttl, -1, "PERSIST replicated");
    let exists: bool = b.exists("fromA:old_name").expect("EXISTS");
    assert!(!exists, "RENAME source deleted on the peer");
}

#[test]
fn blocking_commands_replicate() {
    let pair = Pair::start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    let addr = pair.a.url();
    let blocker = thread::spawn(move || {
        let mut c = redis::Client::open(addr)
            .expect("client")
            .get_connection()
            .expect("conn");
        let moved: Option<String> = redis::cmd("BLMOVE")
            .arg("src")
            .arg("dst")
            .arg("LEFT")
            .arg("RIGHT")
            .arg(10)
            .query(&mut c)
            .expect("BLMOVE");
        let popped: Option<(String, String)> = redis::cmd("BLPOP")
            .arg("q")
            .arg(10)
            .query(&mut c)
            .expect("BLPOP");
        (moved, popped)
    });
    wait_blocked_clients(&mut a, 1, T);
    // The push arrives on A from B through replication and wakes the client.
    let _: i64 = b.rpush("src", "item").expect("RPUSH");
    wait_for("BLPOP blocked", T, || {
        let l: i64 = a.llen("dst").unwrap_or(0);
        l == 1
    });
    let _: i64 = b.rpush("q", "job").expect("RPUSH");
    let (moved, popped) = blocker.join().expect("blocker thread");
    assert_eq!(moved.as_deref(), Some("item"));
    assert_eq!(popped, Some(("q".into(), "job".into())));
    pair.assert_converged(&[0], T);
    let dst: Vec<String> = b.lrange("dst", 0, -1).expect("LRANGE");
    assert_eq!(dst, vec!["item"]);
    let qlen: i64 = b.llen("q").expect("LLEN");
    assert_eq!(qlen, 0, "the pop on A reached B");
}

#[test]
fn other_dbs_move_and_copy_land_in_the_right_db() {
    let pair = Pair::start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    cmd(&mut a, &["SELECT", "3"]);
    cmd(&mut a, &["SET", "in3", "three"]);
    cmd(&mut a, &["SET", "mover", "m"]);
    cmd(&mut a, &["MOVE", "mover", "7"]);
    cmd(&mut a, &["HSET", "h", "f", "v"]);
    cmd(&mut a, &["COPY", "h", "hcopy", "DB", "9"]);
    cmd(&mut b, &["SELECT", "15"]);
    cmd(&mut b, &["SADD", "s15", "x"]);
    pair.assert_converged(&[0, 3, 7, 9, 15], T);
    let mut b2 = pair.b.conn();
    cmd(&mut b2, &["SELECT", "7"]);
    let v: String = b2.get("mover").expect("GET");
    assert_eq!(v, "m");
    cmd(&mut b2, &["SELECT", "3"]);
    let exists: bool = b2.exists("mover").expect("EXISTS");
    assert!(!exists, "MOVE removed the key from db 3 on the peer");
    cmd(&mut b2, &["SELECT", "9"]);
    let v: String = b2.hget("hcopy", "f").expect("HGET");
    assert_eq!(v, "v");
}

/// A reader on B must never see half of a MULTI block or script run on A.
fn atomic_reader(pair: &Pair, write: impl Fn(&mut redis::Connection, usize) + Send + 'static) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut w = pair.a.conn();
    let mut r = pair.b.conn();
    let keys: Vec<String> = (0..5).map(|i| format!("atom{i}")).collect();
    let stop2 = stop.clone();
    let writer = thread::spawn(move || {
        for i in 1..=3000 {
            write(&mut w, i);
        }
        stop2.store(true, Ordering::Relaxed);
    });
    let mut reads = 0u64;
    let mut nonempty = 0u64;
    // Read until the writer is done and the peer holds its last write: under load the peer
    // lags, and the states it passes through while catching up are checked too.
    let deadline = std::time::Instant::now() + T;
    loop {
        let done = stop.load(Ordering::Relaxed);
        let vals: Vec<Option<String>> = r.mget(&keys).expect("MGET");
        reads += 1;
        if vals.iter().any(|v| v.is_some()) {
            nonempty += 1;
            let first = &vals[0];
            assert!(
                vals.iter().all(|v| v == first),
                "mixed state seen on the peer: {vals:?}"
            );
        }
        let last = vals[0].as_deref() == Some("3000");
        if done && (last || std::time::Instant::now() > deadline) {
            break;
        }
    }
    writer.join().expect("writer");
    wait_for("last transaction replicated", T, || {
        let v: Option<String> = r.get("atom4").unwrap_or(None);
        v.as_deref() == Some("3000")
    });
    // One-way traffic: the peer's acknowledgements must keep flowing, so
    // the writer's table and backlog drain to nothing.
    let mut wa = pair.a.conn();
    wait_for("A's writes all acknowledged", T, || {
        status_u64(&mut wa, "pending_keys") == 0 && status_u64(&mut wa, "backlog_bytes") == 0
    });
    assert!(
        reads > 50 && nonempty > 10,
        "the reader really observed the peer ({reads} reads, {nonempty} non-empty)"
    );
}

#[test]
fn transactions_are_atomic_on_the_peer() {
    let pair = Pair::start();
    pair.wait_link_up(T);
    atomic_reader(&pair, |c, i| {
        let mut p = redis::pipe();
        p.atomic();
        for k in 0..5 {
            p.cmd("SET").arg(format!("atom{k}")).arg(i).ignore();
        }
        let _: () = p.query(c).expect("MULTI");
    });
}

#[test]
fn scripts_are_atomic_on_the_peer() {
    let pair = Pair::start();
    pair.wait_link_up(T);
    atomic_reader(&pair, |c, i| {
        let _: () = redis::cmd("EVAL")
            .arg("for _, k in ipairs(KEYS) do redis.call('SET', k, ARGV[1]) end")
            .arg(5)
            .arg("atom0")
            .arg("atom1")
            .arg("atom2")
            .arg("atom3")
            .arg("atom4")
            .arg(i)
            .query(c)
            .expect("EVAL");
    });
}

fn counters(c: &mut redis::Connection) -> Vec<u64> {
    [
        "ops_captured",
        "ops_applied",
        "sent_seq",
        "applied_seq",
        "bytes_sent",
    ]
    .iter()
    .map(|f| status_u64(c, f))
    .collect()
}

#[test]
fn quiet_pair_stays_quiet_after_a_mixed_workload() {
    let pair = Pair::start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    for i in 0..50 {
        cmd(&mut a, &["SET", &format!("k{i}"), "v", "PX", "200"]);
        cmd(&mut b, &["SET", &format!("e{i}"), "v"]);
        cmd(&mut b, &["EXPIRE", &format!("e{i}"), "1000"]);
        cmd(&mut a, &["RPUSH", "queue", &i.to_string()]);
    }
    // Let B see every push before it pops: a pop on a stale copy would be a
    // concurrent write to the list, where the later image wins whole.
    wait_for("queue replicated", T, || {
        b.llen::<_, i64>("queue").unwrap_or(0) == 50
    });
    cmd(&mut a, &["RENAME", "e1", "renamed"]);
    let _: Option<(String, String)> = redis::cmd("BLPOP")
        .arg("queue")
        .arg(1)
        .query(&mut b)
        .expect("BLPOP");
    cmd(&mut a, &["DEBUG", "RELOAD"]);
    // Keys with 200 ms TTL expire on both sides by themselves.
    wait_for("short TTL keys expired", T, || {
        let n: i64 = redis::cmd("DBSIZE").query(&mut a).unwrap_or(0);
        n < 60
    });
    pair.assert_converged(&[0], T);
    // Stable once no one writes: sample for 1.5 s; nothing may move.
    let before = (counters(&mut a), counters(&mut b));
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(100));
        let now = (counters(&mut a), counters(&mut b));
        // bytes_sent includes pings; compare everything but it.
        assert_eq!(
            before.0[..4],
            now.0[..4],
            "A's counters moved while quiet (a loop?)"
        );
        assert_eq!(
            before.1[..4],
            now.1[..4],
            "B's counters moved while quiet (a loop?)"
        );
    }
    // DEBUG RELOAD's internal flush was not shipped: B still has A's data.
    let n: i64 = b.llen("queue").expect("LLEN");
    assert_eq!(n, 49);
}

#[test]
fn flushdb_and_flushall_replicate() {
    let pair = Pair::start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    for i in 0..20 {
        cmd(&mut a, &["SET", &format!("k{i}"), "v"]);
    }
    cmd(&mut a, &["SELECT", "2"]);
    cmd(&mut a, &["SET", "db2key", "v"]);
    pair.assert_converged(&[0, 2], T);
    cmd(&mut b, &["FLUSHDB"]);
    wait_for("FLUSHDB reached A", T, || {
        let n: i64 = redis::cmd("DBSIZE").query(&mut pair.a.conn()).unwrap_or(-1);
        n == 0
    });
    let v: Option<String> = a.get("db2key").expect("GET");
    assert_eq!(v.as_deref(), Some("v"), "FLUSHDB on db 0 left db 2 alone");
    cmd(&mut b, &["FLUSHALL", "ASYNC"]);
    wait_for("FLUSHALL reached A", T, || {
        let v: Option<String> = a.get("db2key").unwrap_or(Some("x".into()));
        v.is_none()
    });
    pair.assert_converged(&[0, 2], T);
}

#[test]
fn status_fields_are_present_and_sane() {
    let pair = Pair::start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    let _: () = a.set("x", "1").expect("SET");
    wait_for("x on B", T, || b.exists::<_, bool>("x").unwrap_or(false));
    let s = status(&mut a);
    for f in [
        "node_id",
        "version",
        "peer",
        "link",
        "stream_id",
        "sent_seq",
        "acked_seq",
        "applied_seq",
        "backlog_bytes",
        "pending_keys",
        "ops_captured",
        "ops_sent",
        "ops_applied",
        "conflicts_lost",
        "inbound_bytes",
        "inbound_bytes_peak",
        "lag_ms",
        "bytes_sent",
        "bytes_received",
        "partial_syncs",
        "dirty_key_syncs",
        "full_syncs",
        "next_resync",
        "last_error",
    ] {
        assert!(s.contains_key(f), "SYNC.STATUS lacks {f}: {s:?}");
    }
    assert_eq!(s["node_id"], "a");
    assert_eq!(s["link"], "up");
    assert_eq!(s["next_resync"], "partial");
    assert!(s["version"].starts_with(env!("CARGO_PKG_VERSION")));
    wait_for("ack of x", T, || {
        status_u64(&mut a, "acked_seq") >= 1 && status_u64(&mut a, "pending_keys") == 0
    });
    assert!(status_u64(&mut a, "ops_captured") >= 1);
    assert!(status_u64(&mut a, "ops_sent") >= 1);
    assert_eq!(status_u64(&mut a, "lag_ms"), 0);
    assert!(status_u64(&mut b, "ops_applied") >= 1);
    assert!(status_u64(&mut b, "applied_seq") >= 1);
    let info: String = redis::cmd("INFO")
        .arg("bisync")
        .query(&mut a)
        .expect("INFO");
    assert!(info.contains("bisync_link:up"), "INFO bisync: {info}");
    assert!(info.contains("bisync_ops_captured:"), "INFO bisync: {info}");
    let cfg: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("bisync.node-id")
        .query(&mut a)
        .expect("CONFIG GET");
    assert_eq!(cfg, vec!["bisync.node-id", "a"]);
    // Run-time settings validate; immutable ones refuse.
    assert!(redis::cmd("CONFIG")
        .arg("SET")
        .arg("bisync.backlog-size")
        .arg("lots")
        .query::<()>(&mut a)
        .is_err());
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("bisync.backlog-size")
        .arg("8mb")
        .query(&mut a)
        .expect("CONFIG SET");
    let cfg: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("bisync.backlog-size")
        .query(&mut a)
        .expect("CONFIG GET");
    assert_eq!(cfg[1], (8u64 << 20).to_string());
    assert!(redis::cmd("CONFIG")
        .arg("SET")
        .arg("bisync.node-id")
        .arg("z")
        .query::<()>(&mut a)
        .is_err());
    // MODULE LIST shows the integer version; unload is refused and the server lives.
    let list = render_value(&cmd(&mut a, &["MODULE", "LIST"]));
    assert!(list.contains("bisync"), "{list}");
    let unload: redis::RedisResult<()> = redis::cmd("MODULE")
        .arg("UNLOAD")
        .arg("bisync")
        .query(&mut a);
    assert!(unload.is_err(), "unload must be refused");
    let pong: String = redis::cmd("PING").query(&mut a).expect("PING");
    assert_eq!(pong, "PONG");
}

#[test]
fn bad_arguments_refuse_to_load_with_a_clear_line() {
    let port = free_port();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "listen".into(),
                format!("127.0.0.1:{}", free_port()),
                "peer".into(),
                "127.0.0.1:1".into(),
            ],
            "'node-id' is required",
        ),
        (
            vec![
                "node-id".into(),
                "a".into(),
                "listen".into(),
                "nowhere".into(),
                "peer".into(),
                "127.0.0.1:1".into(),
            ],
            "argument 'listen'",
        ),
        (
            vec![
                "node-id".into(),
                "a".into(),
                "listen".into(),
                format!("127.0.0.1:{}", free_port()),
                "peer".into(),
                "127.0.0.1:1".into(),
                "colour".into(),
                "blue".into(),
            ],
            "unknown argument 'colour'",
        ),
        (
            vec![
                "node-id".into(),
                "a".into(),
                "listen".into(),
                format!("127.0.0.1:{}", free_port()),
                "peer".into(),
                "127.0.0.1:1".into(),
                "backlog-size".into(),
                "huge".into(),
            ],
            "argument 'backlog-size'",
        ),
        (
            vec![
                "node-id".into(),
                "a".into(),
                "listen".into(),
                format!("127.0.0.1:{port}"),
                "peer".into(),
                "127.0.0.1:1".into(),
                "secret-file".into(),
                "/nonexistent/secret".into(),
            ],
            "argument 'secret-file'",
        ),
    ];
    for (args, want) in cases {
        let err = match ServerBuilder::new().module_args(args.clone()).try_start() {
            Ok(_) => panic!("server started with bad args {args:?}"),
            Err(e) => e,
        };
        assert!(
            err.contains(want),
            "args {args:?}: log lacks '{want}':\n{err}"
        );
    }
}

#[test]
fn cluster_mode_is_refused_at_load() {
    let lp = free_port();
    let err = match ServerBuilder::new()
        .extra(["--cluster-enabled", "yes"])
        .module_args([
            "node-id",
            "a",
            "listen",
            &format!("127.0.0.1:{lp}"),
            "peer",
            "127.0.0.1:1",
        ])
        .try_start()
    {
        Ok(_) => panic!("a cluster node loaded the module"),
        Err(e) => e,
    };
    assert!(err.contains("cluster mode is not supported"), "{err}");
}

#[test]
fn equal_node_ids_are_refused() {
    let la = free_port();
    let lb = free_port();
    let a = ServerBuilder::new()
        .module_args([
            "node-id",
            "same",
            "listen",
            &format!("127.0.0.1:{la}"),
            "peer",
            &format!("127.0.0.1:{lb}"),
        ])
        .start();
    let b = ServerBuilder::new()
        .module_args([
            "node-id",
            "same",
            "listen",
            &format!("127.0.0.1:{lb}"),
            "peer",
            &format!("127.0.0.1:{la}"),
        ])
        .start();
    let mut ca = a.conn();
    wait_for("refusal reported", T, || {
        status(&mut ca)
            .get("last_error")
            .is_some_and(|e| e.contains("same node-id"))
    });
    let _: () = ca.set("k", "v").expect("SET");
    let mut cb = b.conn();
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        let e: bool = cb.exists("k").expect("EXISTS");
        assert!(!e, "data crossed a refused link");
        assert_ne!(status(&mut cb)["link"], "up");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stream_edge_cases_and_large_collections_replicate() {
    let pair = Pair::start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    // An empty stream made by XGROUP CREATE MKSTREAM, one trimmed to nothing,
    // one with deleted entries and an idle consumer.
    cmd(&mut a, &["XGROUP", "CREATE", "empty", "g", "$", "MKSTREAM"]);
    cmd(&mut a, &["XADD", "trimmed", "1-1", "f", "v"]);
    cmd(&mut a, &["XTRIM", "trimmed", "MAXLEN", "0"]);
    for i in 1..=10 {
        cmd(
            &mut a,
            &["XADD", "holes", &format!("{i}-0"), "n", &i.to_string()],
        );
    }
    cmd(&mut a, &["XDEL", "holes", "3-0", "10-0"]);
    cmd(&mut a, &["XGROUP", "CREATE", "holes", "readers", "0"]);
    cmd(
        &mut a,
        &["XGROUP", "CREATECONSUMER", "holes", "readers", "idle"],
    );
    cmd(
        &mut a,
        &[
            "XREADGROUP",
            "GROUP",
            "readers",
            "busy",
            "COUNT",
            "4",
            "STREAMS",
            "holes",
            ">",
        ],
    );
    // Pending entries whose stream entries are gone: Redis keeps them in the PEL after a
    // trim (here before any entry left) and after an XDEL (here between two entries); the
    // group command after them ships the stream whole, and the peer's PEL, largest deleted ID
    // and count of entries added must be the same (XINFO STREAM FULL, compared below).
    let read = |c: &mut redis::Connection, key: &str, count: &str| {
        let args = [
            "XREADGROUP",
            "GROUP",
            "readers",
            "r",
            "COUNT",
            count,
            "STREAMS",
            key,
            ">",
        ];
        cmd(c, &args);
    };
    for i in 1..=6 {
        cmd(
            &mut a,
            &["XADD", "gone", &format!("{i}-0"), "n", &i.to_string()],
        );
    }
    cmd(&mut a, &["XGROUP", "CREATE", "gone", "readers", "0"]);
    read(&mut a, "gone", "5");
    cmd(&mut a, &["XTRIM", "gone", "MINID", "=", "3-0"]);
    cmd(&mut a, &["XDEL", "gone", "4-0"]);
    read(&mut a, "gone", "1");
    // The same with nothing left in the stream, and without any XDEL (largest deleted ID 0-0).
    cmd(&mut a, &["XADD", "drained", "1-0", "n", "1"]);
    cmd(&mut a, &["XGROUP", "CREATE", "drained", "readers", "0"]);
    read(&mut a, "drained", "10");
    cmd(&mut a, &["XTRIM", "drained", "MAXLEN", "=", "0"]);
    cmd(
        &mut a,
        &[
            "XAUTOCLAIM",
            "drained",
            "readers",
            "r",
            "0",
            "0-0",
            "JUSTID",
        ],
    );
    // Collections past the compact encodings, and one past the rebuild chunk size.
    let mut p = redis::pipe();
    for i in 0..20_000 {
        p.cmd("HSET")
            .arg("bighash")
            .arg(format!("f{i}"))
            .arg(i)
            .ignore();
        p.cmd("RPUSH").arg("biglist").arg(i).ignore();
        p.cmd("SADD").arg("bigset").arg(i).ignore();
        p.cmd("ZADD")
            .arg("bigzset")
            .arg(f64::from(i) / 7.0)
            .arg(format!("m{i}"))
            .ignore();
    }
    let _: () = p.query(&mut a).expect("pipeline");
    cmd(&mut a, &["ZADD", "bigzset", "inf", "top", "-inf", "bottom"]);
    pair.assert_converged(&[0], T);
    let n: i64 = b.hlen("bighash").expect("HLEN");
    assert_eq!(n, 20_000);
    let s: f64 = b.zscore("bigzset", "m3").expect("ZSCORE");
    assert_eq!(s, 3.0 / 7.0, "scores replicate exactly");
    let pel: redis::Value = redis::cmd("XPENDING")
        .arg(&["gone", "readers", "-", "+", "10"])
        .query(&mut b)
        .expect("XPENDING");
    assert!(
        format!("{pel:?}").contains("1-0") && format!("{pel:?}").contains("4-0"),
        "the peer's PEL keeps the trimmed and the deleted entries: {pel:?}"
    );
}

#[test]
fn swapdb_ships_both_dbs_from_the_swapping_side() {
    let pair = Pair::start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    cmd(&mut a, &["SELECT", "1"]);
    cmd(&mut a, &["SET", "one", "1"]);
    cmd(&mut a, &["SELECT", "2"]);
    cmd(&mut a, &["HSET", "two", "f", "2"]);
    pair.assert_converged(&[1, 2], T);
    cmd(&mut a, &["SWAPDB", "1", "2"]);
    pair.assert_converged(&[1, 2], T);
    cmd(&mut b, &["SELECT", "1"]);
    let v: String = b.hget("two", "f").expect("HGET");
    assert_eq!(v, "2", "db 1 on the peer now holds what db 2 held");
    let gone: bool = b.exists("one").expect("EXISTS");
    assert!(!gone);
}

#[test]
fn aof_replay_and_replica_writes_are_not_captured() {
    let pair = Pair::start_with(&[], &["--appendonly", "yes", "--appendfsync", "always"]);
    pair.wait_link_up(T);
    let (mut a, _) = pair.conns();
    for i in 0..100 {
        let _: () = a.set(format!("k{i}"), i).expect("SET");
    }
    pair.assert_converged(&[0], T);
    // A restarts and replays its AOF: those writes fire keyspace events
    // with the LOADING flag and must not be captured again.
    let mut pair = pair;
    pair.a.kill9();
    pair.a.restart();
    let mut a = pair.a.conn();
    let n: i64 = redis::cmd("DBSIZE").query(&mut a).expect("DBSIZE");
    assert_eq!(n, 100, "AOF replayed");
    assert_eq!(
        status_u64(&mut a, "ops_captured"),
        0,
        "AOF replay was captured"
    );
    pair.wait_link_up(T);
    pair.assert_converged(&[0], T);
    // A native replica of A with the module loaded stays passive.
    let replica = native_replica_of_a(&pair);
    let mut r = replica.conn();
    wait_for("replica synced", T, || {
        redis::cmd("DBSIZE").query::<i64>(&mut r).unwrap_or(0) == 100
    });
    let _: () = a.set("after", "1").expect("SET");
    wait_for("replica got the write", T, || {
        r.exists::<_, bool>("after").unwrap_or(false)
    });
    let s = status(&mut r);
    assert_eq!(s["role"], "passive");
    assert_eq!(
        s["ops_captured"], "0",
        "a replica captured replicated writes"
    );
    assert_ne!(s["link"], "up", "a replica must not link");
}

/// What the peer applies is an ordinary write on this server: a native
/// replica and the AOF get it (with its expiry), WATCH is invalidated and
/// keyspace subscribers hear `set`.
#[test]
fn applied_writes_reach_replicas_watchers_and_subscribers() {
    let pair = Pair::start_with(&[], &["--notify-keyspace-events", "KA"]);
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    let (_replica, mut r) = linked_replica_of_a(&pair);
    // A watcher and a subscriber on A.
    let mut watcher = pair.a.conn();
    cmd(&mut watcher, &["WATCH", "w"]);
    let mut sub = pair.a.client().get_connection().expect("sub conn");
    let mut ps = sub.as_pubsub();
    ps.subscribe("__keyspace@0__:w").expect("SUBSCRIBE");
    ps.set_read_timeout(Some(T)).expect("timeout");

    let at = now_ms() + 3_600_000;
    cmd(&mut b, &["SET", "w", "from-b", "PXAT", &at.to_string()]);
    let msg = ps.get_message().expect("keyspace message");
    let event: String = msg.get_payload().expect("payload");
    assert_eq!(event, "set");
    wait_for("the replica of A got B's write", T, || {
        r.get::<_, Option<String>>("w").ok().flatten().as_deref() == Some("from-b")
    });
    let exp: i64 = redis::cmd("PEXPIRETIME")
        .arg("w")
        .query(&mut r)
        .expect("PEXPIRETIME");
    assert_eq!(exp, at, "the expiry reached the replica");
    // The transaction watching `w` fails: the applied write touched it.
    let res: Option<Vec<String>> = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("w")
        .arg("from-watcher")
        .query(&mut watcher)
        .expect("EXEC");
    assert_eq!(res, None, "EXEC must abort after a watched key changed");

    // The replica drops off; what A applies meanwhile stays in A's
    // replication backlog, and the replica's partial resync brings it.
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(&mut a)
        .expect("CLIENT KILL");
    cmd(&mut b, &["SET", "while-away", "1"]);
    wait_for("the replica caught up after reconnecting", T, || {
        r.get::<_, Option<String>>("while-away")
            .ok()
            .flatten()
            .is_some()
    });
    let info: String = redis::cmd("INFO").arg("stats").query(&mut a).expect("INFO");
    assert!(
        info.contains("sync_partial_ok:1"),
        "the replica came back with a partial resync: {info}"
    );
}

/// What a server counts towards its `save` points (`rdb_changes_since_last_save`).
fn rdb_changes(c: &mut redis::Connection) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query(c)
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("rdb_changes_since_last_save:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("rdb_changes_since_last_save")
}

/// The peer's stream appends are applied through the key API, not `XADD`
/// (`glue::stream_append`), and must still do all that `XADD` does on this
/// server: a native replica gets the same stream (same entries, IDs and
/// counters), keyspace subscribers hear `xadd`, WATCH is invalidated, a
/// reader blocked in `XREAD BLOCK` is served, and the changes count for the
/// `save` points (`rdb_changes_since_last_save`).
#[test]
fn applied_stream_appends_reach_replicas_readers_watchers_and_save_points() {
    let pair = Pair::start_with(&[], &["--notify-keyspace-events", "KA"]);
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    let (_replica, mut r) = linked_replica_of_a(&pair);
    cmd(&mut b, &["XADD", "ev", "1-1", "f", "first"]);
    wait_for("the stream reached a", T, || {
        a.exists::<_, bool>("ev").unwrap_or(false)
    });
    let before = rdb_changes(&mut a);
    let mut watcher = pair.a.conn();
    cmd(&mut watcher, &["WATCH", "ev"]);
    let mut sub = pair.a.client().get_connection().expect("sub conn");
    let mut ps = sub.as_pubsub();
    ps.subscribe("__keyspace@0__:ev").expect("SUBSCRIBE");
    ps.set_read_timeout(Some(T)).expect("timeout");
    thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut c = pair.a.conn();
            redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(20_000)
                .arg("STREAMS")
                .arg("ev")
                .arg("$")
                .query::<redis::Value>(&mut c)
                .expect("XREAD BLOCK")
        });
        wait_blocked_clients(&mut a, 1, T);
        let _: () = redis::pipe()
            .cmd("XADD")
            .arg("ev")
            .arg("*")
            .arg("f")
            .arg("second")
            .ignore()
            .cmd("XADD")
            .arg("ev")
            .arg("*")
            .arg("f")
            .arg("third")
            .arg("g")
            .arg("x")
            .ignore()
            .cmd("XADD")
            .arg("ev")
            .arg("MAXLEN")
            .arg("10")
            .arg("*")
            .arg("f")
            .arg("fourth")
            .ignore()
            .query(&mut b)
            .expect("XADD pipeline");
        let served = format!("{:?}", reader.join().expect("the XREAD client"));
        assert!(served.contains("second"), "the blocked reader got {served}");
    });
    for _ in 0..3 {
        let msg = ps.get_message().expect("keyspace message");
        let event: String = msg.get_payload().expect("payload");
        assert_eq!(event, "xadd");
    }
    let res: Option<Vec<String>> = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("other")
        .arg("1")
        .query(&mut watcher)
        .expect("EXEC");
    assert_eq!(res, None, "EXEC must abort after a watched stream changed");
    assert!(
        rdb_changes(&mut a) >= before + 3,
        "applied appends did not count as changes for the save points"
    );
    let stream = |c: &mut redis::Connection| -> String {
        let entries: redis::Value = redis::cmd("XRANGE")
            .arg("ev")
            .arg("-")
            .arg("+")
            .query(c)
            .expect("XRANGE");
        let info = redis::cmd("XINFO")
            .arg("STREAM")
            .arg("ev")
            .query::<redis::Value>(c)
            .map_or_else(|e| format!("{e}"), |v| format!("{v:?}"));
        let digest: String = redis::cmd("DEBUG")
            .arg("DIGEST-VALUE")
            .arg("ev")
            .query::<Vec<String>>(c)
            .ok()
            .and_then(|v| v.into_iter().next())
            .unwrap_or_default();
        format!("{entries:?} {info} {digest}")
    };
    wait_for("the replica of a holds a's stream", T, || {
        stream(&mut r) == stream(&mut a)
    });
    wait_for("b and a hold one stream", T, || {
        stream(&mut b) == stream(&mut a)
    });
    // b has no replica and no AOF: its applies are not propagated, yet they count too.
    let before = rdb_changes(&mut b);
    cmd(&mut a, &["XADD", "ev", "*", "f", "from-a"]);
    wait_for("b applied a's append", T, || {
        stream(&mut b) == stream(&mut a)
    });
    assert!(
        rdb_changes(&mut b) > before,
        "an append applied without replicas or AOF did not count for the save points"
    );
}

/// The peer's hash field sets are applied through the key API, not `HSET`
/// (`glue::hash_set`), and must still do all that `HSET` does on this server:
/// a native replica gets the same hash, keyspace subscribers hear `hset`,
/// WATCH is invalidated, the changes count for the `save` points, and a
/// value past `hash-max-listpack-value` converts the hash as `HSET` does.
#[test]
fn applied_hash_field_sets_reach_replicas_watchers_and_save_points() {
    let pair = Pair::start_with(&[], &["--notify-keyspace-events", "KA"]);
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    let (_replica, mut r) = linked_replica_of_a(&pair);
    cmd(&mut b, &["HSET", "h", "f1", "one"]);
    wait_for("the hash reached a", T, || {
        a.exists::<_, bool>("h").unwrap_or(false)
    });
    let before = rdb_changes(&mut a);
    let mut watcher = pair.a.conn();
    cmd(&mut watcher, &["WATCH", "h"]);
    let mut sub = pair.a.client().get_connection().expect("sub conn");
    let mut ps = sub.as_pubsub();
    ps.subscribe("__keyspace@0__:h").expect("SUBSCRIBE");
    ps.set_read_timeout(Some(T)).expect("timeout");
    let long = "x".repeat(100);
    cmd(&mut b, &["HSET", "h", "f2", "two", "f3", "three"]);
    cmd(&mut b, &["HSET", "h", "f4", &long]);
    for _ in 0..2 {
        let msg = ps.get_message().expect("keyspace message");
        let event: String = msg.get_payload().expect("payload");
        assert_eq!(event, "hset");
    }
    let res: Option<Vec<String>> = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("other")
        .arg("1")
        .query(&mut watcher)
        .expect("EXEC");
    assert_eq!(res, None, "EXEC must abort after a watched hash changed");
    let hash = |c: &mut redis::Connection| -> String {
        let mut fields: Vec<(String, String)> =
            redis::cmd("HGETALL").arg("h").query(c).expect("HGETALL");
        fields.sort();
        // Nil while a server (the replica, catching up) does not hold the hash yet.
        let encoding: Option<String> = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg("h")
            .query(c)
            .expect("OBJECT ENCODING");
        format!("{fields:?} {}", encoding.unwrap_or_default())
    };
    // Each field travels as its own record, each applied with its own
    // event: the two events above may be f2's and f3's, before f4 arrived.
    wait_for("a holds b's hash", T, || hash(&mut a) == hash(&mut b));
    assert!(
        rdb_changes(&mut a) >= before + 2,
        "applied field sets did not count as changes for the save points"
    );
    wait_for("the replica of a holds a's hash", T, || {
        hash(&mut r) == hash(&mut a)
    });
    // Applied through the key API: no `HSET` ran on a (its clients wrote none yet).
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut a)
        .expect("INFO commandstats");
    assert!(
        !stats.contains("cmdstat_hset:"),
        "b's field sets were applied on a through HSET, not the key API:\n{stats}"
    );
    assert!(
        hash(&mut a).ends_with("hashtable"),
        "a 100-byte value must convert the hash as HSET does: {}",
        hash(&mut a)
    );
    // b has no replica and no AOF: its applies are not propagated, yet they count too.
    let before = rdb_changes(&mut b);
    cmd(&mut a, &["HSET", "h", "f5", "from-a"]);
    wait_for("b applied a's field", T, || hash(&mut b) == hash(&mut a));
    assert!(
        rdb_changes(&mut b) > before,
        "a field set applied without replicas or AOF did not count for the save points"
    );
}

/// Plain SETs ship the value the command filter saw instead of reading the
/// key back. Cases where that value is not what the key holds must fall
/// back to reading it: a SET queued in MULTI (here the same key name in two
/// dbs), a SET that did not write (NX), a script's SET, a SET followed by
/// another change of the key in the same iteration.
#[test]
fn known_set_values_never_ship_a_stale_value() {
    let pair = Pair::builder().env("BISYNC_TEST_HOOKS", "1").start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    // MULTI: the last queued SET is for db 1; db 0's SET runs first at EXEC.
    let _: () = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("k")
        .arg("db0-value")
        .ignore()
        .cmd("SELECT")
        .arg("1")
        .ignore()
        .cmd("SET")
        .arg("k")
        .arg("db1-value")
        .ignore()
        .query(&mut a)
        .expect("MULTI");
    cmd(&mut a, &["SELECT", "0"]);
    // A SET that does not write, then a script's SET of the same key.
    cmd(&mut a, &["SET", "n", "first"]);
    let _: Option<String> = redis::cmd("SET")
        .arg("n")
        .arg("not-written")
        .arg("NX")
        .query(&mut a)
        .expect("SET NX");
    let _: () = redis::cmd("EVAL")
        .arg("redis.call('SET', KEYS[1], ARGV[1])")
        .arg(1)
        .arg("n")
        .arg("from-script")
        .query(&mut a)
        .expect("EVAL");
    // SET then APPEND in one pipeline (one iteration).
    let _: () = redis::pipe()
        .cmd("SET")
        .arg("p")
        .arg("base")
        .ignore()
        .cmd("APPEND")
        .arg("p")
        .arg("+more")
        .ignore()
        .cmd("SET")
        .arg("t")
        .arg("with-ttl")
        .arg("EX")
        .arg("1000")
        .ignore()
        .query(&mut a)
        .expect("pipeline");
    pair.assert_converged(&[0, 1], T);
    let v: String = b.get("k").expect("GET");
    assert_eq!(v, "db0-value");
    let v: String = b.get("n").expect("GET");
    assert_eq!(v, "from-script");
    let v: String = b.get("p").expect("GET");
    assert_eq!(v, "base+more");
    cmd(&mut b, &["SELECT", "1"]);
    let v: String = b.get("k").expect("GET");
    assert_eq!(v, "db1-value");
    for s in [&pair.a, &pair.b] {
        assert!(!s.log().contains("set-hint mismatch"));
    }
}

/// A native replica of `pair.a` that loads the module too (it must stay
/// passive).
/// [`native_replica_of_a`], once its link to a is up, with a connection.
fn linked_replica_of_a(pair: &Pair) -> (Server, redis::Connection) {
    let replica = native_replica_of_a(pair);
    let mut r = replica.conn();
    wait_for("replica linked", T, || {
        redis::cmd("INFO")
            .arg("replication")
            .query::<String>(&mut r)
            .is_ok_and(|s| s.contains("master_link_status:up"))
    });
    (replica, r)
}

fn native_replica_of_a(pair: &Pair) -> Server {
    let lc = free_port();
    ServerBuilder::new()
        .name("replica")
        .extra(["--replicaof", "127.0.0.1", &pair.a.port().to_string()])
        .module_args([
            "node-id",
            "c",
            "listen",
            &format!("127.0.0.1:{lc}"),
            "peer",
            &format!("127.0.0.1:{}", pair.a_link),
        ])
        .start()
}

/// One flush can pass `max-frame-size` although every key in it fits: here one transaction
/// (and then one pipeline) writes 40 values of 10 kB, 400 kB in one event-loop iteration, under
/// a 64 kB limit. The flush travels as several batches; sent as one frame the peer would refuse
/// it, and the link would resend and drop it forever (b would never get the keys).
#[test]
fn a_flush_larger_than_a_frame_travels_as_several_batches() {
    let pair = PairBuilder::new()
        .module_args(["max-frame-size", "65536"])
        .start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    let value = |i: usize| format!("{i:04}{}", "v".repeat(10_000));
    let mut tx = redis::pipe();
    tx.atomic();
    for i in 0..40 {
        tx.set(format!("tx:{i}"), value(i)).ignore();
    }
    tx.hset("tx:h", "f", "1").ignore();
    let _: () = tx.query(&mut a).expect("MULTI/EXEC");
    let mut p = redis::pipe();
    for i in 0..40 {
        p.set(format!("pipe:{i}"), value(i)).ignore();
    }
    let _: () = p.query(&mut a).expect("pipeline");
    pair.assert_converged(&[0], T);
    let keys: i64 = redis::cmd("DBSIZE").query(&mut b).expect("DBSIZE");
    assert_eq!(keys, 81, "every key reached b");
    let s = status(&mut a);
    assert_eq!(s["link"], "up");
    assert_eq!(
        status_u64(&mut a, "partial_syncs"),
        0,
        "no frame was refused: {s:?}"
    );
    assert!(
        status_u64(&mut a, "issued_seq") >= 8,
        "400 kB under a 64 kB frame needs many batches: {s:?}"
    );
}

/// A key too large for the peer's `max-frame-size` is not shipped: the peer would refuse the
/// frame, the link would drop, and the resent batch would be refused again, forever. The
/// sender leaves it out and names it in `last_error`; the link stays up and everything else
/// keeps replicating. Covers the three ways such a key reaches a flush: a `SET` of a huge
/// value (the filter does not copy it), a string read back (`SETRANGE`), a collection image.
#[test]
fn a_key_larger_than_a_frame_is_left_out_with_a_clear_error() {
    let pair = PairBuilder::new()
        .module_args(["max-frame-size", "65536"])
        .start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    let big = "x".repeat(100_000);
    let _: () = a.set("big-set", &big).expect("SET");
    let _: i64 = redis::cmd("SETRANGE")
        .arg("big-range")
        .arg(99_999)
        .arg("y")
        .query(&mut a)
        .expect("SETRANGE");
    let items: Vec<String> = (0..100)
        .map(|i| format!("{i:04}{}", "z".repeat(1000)))
        .collect();
    let _: i64 = a.rpush("big-list", &items).expect("RPUSH");
    // A list command too large for a frame: left out like an image; a small
    // one after it must not replay on the peer's list, which lacks it.
    let _: i64 = a.rpush("big-push", &items).expect("RPUSH");
    let _: i64 = a.lpush("big-push", "small").expect("LPUSH");
    let _: i64 = redis::cmd("HSET")
        .arg("big-field")
        .arg("f")
        .arg(&big)
        .query(&mut a)
        .expect("HSET");
    let _: () = a.set("small", "after").expect("SET");
    wait_for("small on B", T, || {
        b.get::<_, Option<String>>("small")
            .ok()
            .flatten()
            .as_deref()
            == Some("after")
    });
    for key in ["big-set", "big-range", "big-list", "big-push", "big-field"] {
        assert!(
            !b.exists::<_, bool>(key).expect("EXISTS"),
            "{key} must not reach B"
        );
    }
    let s = status(&mut a);
    assert!(
        s["last_error"].contains("max-frame-size"),
        "last_error names the limit: {s:?}"
    );
    // Nothing refused on the way: one session, no partial resync caused by a refusal.
    let _: () = a.set("small2", "still").expect("SET");
    wait_for("small2 on B", T, || {
        b.exists::<_, bool>("small2").unwrap_or(false)
    });
    assert_eq!(status(&mut a)["link"], "up");
    assert_eq!(
        status_u64(&mut a, "partial_syncs"),
        0,
        "{:?}",
        status(&mut a)
    );
    assert_eq!(
        status_u64(&mut b, "partial_syncs"),
        0,
        "{:?}",
        status(&mut b)
    );
    let log = pair.a.log();
    for key in ["big-set", "big-range", "big-list", "big-push", "big-field"] {
        assert!(log.contains(key), "the log names {key}");
    }
}

/// A consumer group's traffic on a big stream ships the groups, not the
/// stream: `XREADGROUP` and `XACK` on a 20,000-entry stream cost a few
/// hundred link bytes each (the whole stream, ~600 KB, before), and the
/// peer's groups, consumers and pending entries (with their delivery times
/// and counts) end equal. Also a reader blocked in `XREADGROUP … BLOCK` and
/// served by an append from the peer: the server serves it unseen by the
/// command filter, and its delivery still reaches the peer.
#[test]
fn consumer_group_traffic_ships_the_groups_not_the_entries() {
    let pair = Pair::start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    fill_stream(&mut a, "ev", 20_000, "entry");
    cmd(&mut a, &["XGROUP", "CREATE", "ev", "g", "0"]);
    cmd(&mut a, &["XGROUP", "CREATECONSUMER", "ev", "g", "c1"]);
    let same = |a: &mut redis::Connection, b: &mut redis::Connection| {
        snapshot(a, &[0]) == snapshot(b, &[0])
    };
    wait_for("b holds the stream and its group", T, || {
        same(&mut a, &mut b)
    });
    let before = stat(&pair.a, "bytes_sent");
    let mut ops = 0u64;
    for i in 0..20 {
        // Every other read by a consumer it creates (`xgroup-createconsumer`).
        let consumer = if i % 2 == 0 {
            "c1".to_string()
        } else {
            format!("new-{i}")
        };
        let read: redis::Value = redis::cmd("XREADGROUP")
            .arg(&["GROUP", "g", &consumer, "COUNT", "10", "STREAMS", "ev", ">"])
            .query(&mut a)
            .expect("XREADGROUP");
        let ids: Vec<String> = format!("{read:?}")
            .split('"')
            .filter(|s| s.contains('-') && s.chars().all(|c| c.is_ascii_digit() || c == '-'))
            .map(str::to_string)
            .collect();
        assert!(ids.len() >= 10, "read delivered {ids:?}");
        // Leave some pending: the peer's PEL must match, not just be empty.
        let mut ack = vec!["XACK", "ev", "g"];
        ack.extend(ids.iter().take(7).map(String::as_str));
        cmd(&mut a, &ack);
        ops += 2;
    }
    // The XGROUP subcommands that change a group of an existing stream.
    for args in [
        &["XGROUP", "CREATECONSUMER", "ev", "g", "idle"][..],
        &["XGROUP", "DELCONSUMER", "ev", "g", "new-3"],
        &["XGROUP", "SETID", "ev", "g", "0", "ENTRIESREAD", "0"],
    ] {
        cmd(&mut a, args);
        ops += 1;
    }
    wait_for("b holds a's groups", T, || same(&mut a, &mut b));
    let per_op = (stat(&pair.a, "bytes_sent") - before) / ops;
    assert!(
        per_op < 3_000,
        "a group command cost {per_op} link bytes, as if the 20,000 entries travelled"
    );
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(&["ev", "g", "-", "+", "1000"])
        .query(&mut b)
        .expect("XPENDING");
    assert!(pending.len() >= 50, "b's PEL: {} entries", pending.len());

    // Served later: a reader blocked on a, an append made on b.
    cmd(&mut a, &["XGROUP", "CREATE", "q", "g", "$", "MKSTREAM"]);
    cmd(&mut a, &["XGROUP", "CREATECONSUMER", "q", "g", "c1"]);
    wait_for("b holds q", T, || same(&mut a, &mut b));
    for round in 0..3 {
        thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut c = pair.a.conn();
                redis::cmd("XREADGROUP")
                    .arg(&["GROUP", "g", "c1", "BLOCK", "20000", "STREAMS", "q", ">"])
                    .query::<redis::Value>(&mut c)
                    .expect("XREADGROUP BLOCK")
            });
            wait_blocked_clients(&mut a, 1, T);
            cmd(&mut b, &["XADD", "q", "*", "round", &round.to_string()]);
            let got = reader.join().expect("reader");
            assert!(format!("{got:?}").contains("round"), "reader got {got:?}");
        });
        wait_for("b holds the served read's delivery", T, || {
            same(&mut a, &mut b)
        });
        let (pending, ..): (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(&["q", "g"])
            .query(&mut b)
            .expect("XPENDING");
        assert_eq!(
            pending,
            round + 1,
            "b's pending entries after served read {round}"
        );
    }
}
