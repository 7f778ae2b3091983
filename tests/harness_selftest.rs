//! Self-tests of the integration-test harness (`tests/common`), limited to the parts that work
//! without the module: plain redis-server guards, snapshots / convergence checks, and the proxy.
//! If these fail, failures in the real integration tests cannot be trusted.

mod common;

use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// Runs `f`, expecting it to panic, and returns the panic message.
fn panic_message(f: impl FnOnce()) -> String {
    let err = panic::catch_unwind(AssertUnwindSafe(f)).expect_err("expected a panic, got none");
    if let Some(s) = err.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = err.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "<non-string panic payload>".to_string()
    }
}

/// Runs one command, panicking with its text on failure (keeps the tests short).
fn run(conn: &mut redis::Connection, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(conn)
        .unwrap_or_else(|e| panic!("command {args:?} failed: {e}"))
}

fn ping(conn: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(conn)
}

#[test]
fn plain_server_starts_answers_ping_and_cleans_up() {
    let dir: PathBuf;
    {
        let server = ServerBuilder::new().name("plain").without_module().start();
        let mut conn = server.conn();
        assert_eq!(ping(&mut conn).expect("PING"), "PONG");
        assert!(server.pid() > 0);
        assert!(server.dir().is_dir());
        assert!(server.log_path().starts_with(server.dir()));
        assert!(
            server.log().contains("Ready to accept connections"),
            "log: {}",
            server.log()
        );
        // The defaults are really applied.
        let cfg: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query(&mut conn)
            .expect("CONFIG GET");
        assert_eq!(cfg, vec!["appendonly", "no"]);
        dir = server.dir().to_path_buf();
    }
    assert!(!dir.exists(), "dir {} not removed on drop", dir.display());
}

#[test]
fn try_start_failure_returns_log_and_stderr() {
    // A module that cannot be loaded: redis-server logs why and exits.
    let err = ServerBuilder::new()
        .name("badmodule")
        .without_module()
        .extra(["--loadmodule", "/nonexistent/libnope.so"])
        .try_start()
        .expect_err("server with a missing module must not start");
    assert!(err.contains("libnope.so"), "error lacks the log: {err}");
    assert!(
        err.contains("redis.log"),
        "error lacks the log section: {err}"
    );

    // A config error goes to stderr, which must be in the report too.
    let err = ServerBuilder::new()
        .name("badconfig")
        .without_module()
        .extra(["--no-such-directive", "1"])
        .try_start()
        .expect_err("server with a bad directive must not start");
    assert!(
        err.contains("no-such-directive"),
        "error lacks stderr: {err}"
    );
}

#[test]
fn restart_keeps_port_dir_and_data_and_sigstop_freezes() {
    let mut server = ServerBuilder::new()
        .name("restart")
        .without_module()
        .extra(["--appendonly", "yes", "--appendfsync", "always"])
        .start();
    let (port, dir, pid) = (server.port(), server.dir().to_path_buf(), server.pid());
    run(&mut server.conn(), &["SET", "k", "v"]);

    server.kill9();
    assert!(!server.is_running());
    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(server.dir(), dir);
    assert_ne!(server.pid(), pid);
    let v: String = redis::cmd("GET")
        .arg("k")
        .query(&mut server.conn())
        .expect("GET after restart");
    assert_eq!(v, "v");
    assert!(server.log().matches("Ready to accept connections").count() >= 2);

    let mut conn = server.conn();
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("set_read_timeout");
    server.sigstop();
    assert!(ping(&mut conn).is_err(), "a SIGSTOPped server answered");
    server.sigcont();
    assert_eq!(
        ping(&mut server.conn()).expect("PING after SIGCONT"),
        "PONG"
    );
}

/// Writes the same data set into a server; `t` pins all timestamps so two servers match.
fn populate(conn: &mut redis::Connection, t: i64) {
    let exp = (t + 3_600_000).to_string();
    run(conn, &["SET", "s1", "v1"]);
    run(conn, &["PEXPIREAT", "s1", &exp]);
    run(conn, &["SET", "s2", "v2"]);
    run(conn, &["HSET", "h", "f1", "v1", "f2", "v2"]);
    run(conn, &["RPUSH", "l", "a", "b", "c"]);
    run(conn, &["SADD", "set", "x", "y", "z"]);
    run(conn, &["ZADD", "z", "1", "a", "2.5", "b"]);
    run(conn, &["XADD", "st", "1-1", "f", "v1"]);
    run(conn, &["XADD", "st", "2-1", "f", "v2"]);
    run(conn, &["XGROUP", "CREATE", "st", "g", "0"]);
    run(
        conn,
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c1",
            "COUNT",
            "1",
            "STREAMS",
            "st",
            ">",
        ],
    );
    // Pin the pending entry's delivery time, which XREADGROUP sets to the local clock.
    let time = t.to_string();
    run(
        conn,
        &[
            "XCLAIM",
            "st",
            "g",
            "c1",
            "0",
            "1-1",
            "TIME",
            &time,
            "RETRYCOUNT",
            "1",
            "JUSTID",
        ],
    );
    run(conn, &["SELECT", "3"]);
    run(conn, &["SET", "other-db", "1"]);
    run(conn, &["SELECT", "0"]);
}

#[test]
fn snapshot_and_assert_converged_detect_differences() {
    let a = ServerBuilder::new().name("snap-a").without_module().start();
    let b = ServerBuilder::new().name("snap-b").without_module().start();
    let (mut ca, mut cb) = (a.conn(), b.conn());
    let t = now_ms();
    populate(&mut ca, t);
    populate(&mut cb, t);
    let dbs = [0, 3];
    let quick = Duration::from_millis(200);

    let snap = snapshot(&mut ca, &dbs);
    assert_eq!(snap.len(), 8, "snapshot: {snap:?}");
    let s1 = &snap[&(0, b"s1".to_vec())];
    assert_eq!(s1.key_type, "string");
    assert_eq!(s1.pexpiretime, t + 3_600_000);
    assert_eq!(snap[&(0, b"s2".to_vec())].pexpiretime, -1);
    assert_eq!(snap[&(3, b"other-db".to_vec())].key_type, "string");
    let st = &snap[&(0, b"st".to_vec())];
    let info = st.stream_info.as_deref().expect("stream info for a stream");
    assert!(info.contains("\"g\"") && info.contains("\"c1\""), "{info}");
    assert!(!info.contains("seen-time"), "volatile field kept: {info}");
    assert!(
        info.contains(&t.to_string()),
        "delivery time missing: {info}"
    );
    // snapshot() must leave the connection on db 0.
    let db0: Option<String> = redis::cmd("GET").arg("s2").query(&mut ca).expect("GET");
    assert_eq!(db0.as_deref(), Some("v2"));

    assert_converged(&a, &b, &dbs, Duration::from_secs(5));

    // One extra key.
    run(&mut cb, &["SET", "extra-key", "1"]);
    let msg = panic_message(|| assert_converged(&a, &b, &dbs, quick));
    assert!(
        msg.contains("did not converge") && msg.contains("extra-key"),
        "{msg}"
    );
    assert!(msg.contains("<absent>"), "{msg}");
    run(&mut cb, &["DEL", "extra-key"]);
    assert_converged(&a, &b, &dbs, quick);

    // A different TTL.
    let other = (t + 7_200_000).to_string();
    run(&mut cb, &["PEXPIREAT", "s1", &other]);
    let msg = panic_message(|| assert_converged(&a, &b, &dbs, quick));
    assert!(msg.contains("\"s1\"") && msg.contains(&other), "{msg}");
    run(&mut cb, &["PEXPIREAT", "s1", &(t + 3_600_000).to_string()]);
    assert_converged(&a, &b, &dbs, quick);

    // A difference only in the consumer group (same entries, so the same digest).
    run(&mut cb, &["XACK", "st", "g", "1-1"]);
    assert_eq!(
        snapshot(&mut ca, &dbs)[&(0, b"st".to_vec())].digest,
        snapshot(&mut cb, &dbs)[&(0, b"st".to_vec())].digest
    );
    let msg = panic_message(|| assert_converged(&a, &b, &dbs, quick));
    assert!(msg.contains("\"st\""), "{msg}");

    // A difference in another db.
    run(&mut ca, &["XACK", "st", "g", "1-1"]);
    assert_converged(&a, &b, &dbs, quick);
    run(&mut ca, &["SELECT", "3"]);
    run(&mut ca, &["SET", "other-db", "2"]);
    run(&mut ca, &["SELECT", "0"]);
    let msg = panic_message(|| assert_converged(&a, &b, &dbs, quick));
    assert!(msg.contains("db 3 key \"other-db\""), "{msg}");
    // ...which is invisible when that db is not compared.
    assert_converged(&a, &b, &[0], quick);
}

#[test]
fn snapshot_skips_logically_expired_keys() {
    let server = ServerBuilder::new().name("expire").without_module().start();
    let mut conn = server.conn();
    run(&mut conn, &["DEBUG", "SET-ACTIVE-EXPIRE", "0"]);
    run(&mut conn, &["SET", "gone", "v", "PX", "30"]);
    run(&mut conn, &["SET", "kept", "v"]);
    std::thread::sleep(Duration::from_millis(80));
    let dbsize: i64 = redis::cmd("DBSIZE").query(&mut conn).expect("DBSIZE");
    assert_eq!(dbsize, 2, "expired key should still be physically present");
    let snap = snapshot(&mut conn, &[0]);
    assert_eq!(
        snap.keys().map(|(_, k)| k.clone()).collect::<Vec<_>>(),
        vec![b"kept".to_vec()]
    );
    let dbsize: i64 = redis::cmd("DBSIZE").query(&mut conn).expect("DBSIZE");
    assert_eq!(dbsize, 1, "snapshot should have lazily expired the key");
}

#[test]
fn wait_for_polls_and_reports_what_timed_out() {
    let start = Instant::now();
    let mut n = 0;
    wait_for("counter", Duration::from_secs(2), || {
        n += 1;
        n >= 3
    });
    assert!(start.elapsed() < Duration::from_secs(1));
    let msg = panic_message(|| wait_for("the impossible", Duration::from_millis(60), || false));
    assert!(msg.contains("the impossible"), "{msg}");
    let msg = panic_message(|| {
        wait_for_state::<(), _>("state", Duration::from_millis(60), || {
            Err("still broken".to_string())
        })
    });
    assert!(msg.contains("still broken"), "{msg}");
}

/// Opens a connection through the proxy with a short read timeout.
fn proxied_conn(proxy: &Proxy) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", proxy.port()))
        .expect("client for proxy URL");
    let conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_millis(300)))?;
    Ok(conn)
}

#[test]
fn proxy_pass_cut_stall_delay() {
    let server = ServerBuilder::new()
        .name("proxied")
        .without_module()
        .start();
    let proxy = Proxy::start(server.addr());
    assert_eq!(proxy.target(), server.addr());

    // pass
    let mut conn = proxied_conn(&proxy).expect("connect through proxy");
    assert_eq!(ping(&mut conn).expect("PING via proxy"), "PONG");
    assert_eq!(proxy.accepted(), 1);
    assert!(proxy.bytes_to_target() > 0 && proxy.bytes_to_client() > 0);
    assert_eq!(proxy.active_connections(), 1);

    // cut: the live connection dies, new ones are refused
    proxy.cut();
    assert_eq!(proxy.mode(), ProxyMode::Cut);
    assert!(ping(&mut conn).is_err(), "PING worked through a cut proxy");
    assert_eq!(proxy.active_connections(), 0);
    let refused = proxied_conn(&proxy).and_then(|mut c| ping(&mut c));
    assert!(
        refused.is_err(),
        "new connection worked through a cut proxy"
    );
    wait_for(
        "proxy to count the refused connection",
        Duration::from_secs(2),
        || proxy.refused() >= 1,
    );

    // pass again
    proxy.pass();
    let mut conn = proxied_conn(&proxy).expect("connect after pass");
    assert_eq!(ping(&mut conn).expect("PING after pass"), "PONG");

    // stall: the command times out, the connection stays open
    proxy.stall();
    let before = proxy.bytes_to_target();
    let started = Instant::now();
    assert!(
        ping(&mut conn).is_err(),
        "PING answered through a stalled proxy"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        proxy.bytes_to_target(),
        before,
        "bytes forwarded while stalled"
    );
    assert_eq!(proxy.active_connections(), 1);

    // delay: each direction is delayed
    proxy.pass();
    let mut conn = proxied_conn(&proxy).expect("connect after stall");
    conn.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("set_read_timeout");
    proxy.delay(Duration::from_millis(100));
    let started = Instant::now();
    assert_eq!(ping(&mut conn).expect("PING through delay"), "PONG");
    let rtt = started.elapsed();
    assert!(
        rtt >= Duration::from_millis(190),
        "rtt {rtt:?} too short for 2x100ms"
    );
    // Order is preserved for pipelined commands.
    let mut pipe = redis::pipe();
    for i in 0..50 {
        pipe.cmd("ECHO").arg(i);
    }
    let echoed: Vec<i64> = pipe.query(&mut conn).expect("pipeline through delay");
    assert_eq!(echoed, (0..50).collect::<Vec<_>>());

    let port = proxy.port();
    drop(proxy);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "proxy still listening after drop"
    );
}

#[test]
fn free_ports_are_not_reused() {
    let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
    let unique: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(unique.len(), ports.len());
}
