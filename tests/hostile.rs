//! Hostile and broken peers: whatever arrives on the link port, the server
//! keeps running with its data, says why in `last_error`, and the real pair
//! keeps replicating. Also the shared-secret authentication.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use redis::Commands;
use redis_bisync::core::auth::{self, SessionKeys};
use redis_bisync::core::codec;
use redis_bisync::core::list_op::ListOp;
use redis_bisync::core::protocol::{
    Batch, ElementChange, Entry, Frame, Hello, Op, Stamp, Value, PROTOCOL_VERSION,
};

const T: Duration = Duration::from_secs(20);
const SECRET: &str = "correct-horse-battery-staple-42";

/// A secret file in its own scratch dir (removed after a passing test) and its path.
fn secret_file(content: &str) -> (TestDir, String) {
    let dir = TestDir::new("secret");
    let p = dir.join("bisync.secret");
    std::fs::write(&p, content).expect("write secret file");
    let p = p.to_str().expect("utf8 path").to_string();
    (dir, p)
}

fn secured_pair() -> Pair {
    let (dir, f) = secret_file(SECRET);
    let pair = Pair::start_with(&["secret-file", &f], &[]).hold(dir);
    pair.wait_link_up(T);
    pair
}

fn link_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A peer speaking our protocol by hand.
struct FakePeer {
    s: TcpStream,
    keys: Option<(SessionKeys, SessionKeys)>,
}

impl FakePeer {
    /// Handshake as a peer would, again with a fresh hello when the node
    /// answers `Retry` (its state moved since its hello, e.g. it applied the
    /// previous fake session's last batch): a retry is not a refusal.
    fn connect(port: u16, node_id: &str, secret: Option<&str>) -> Result<FakePeer, String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Self::connect_once(port, node_id, secret) {
                Err(e) if e.contains("got Retry") && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn connect_once(port: u16, node_id: &str, secret: Option<&str>) -> Result<FakePeer, String> {
        let s = TcpStream::connect(link_addr(port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let nonce = auth::nonce();
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            node_id: node_id.into(),
            databases: 16,
            rdb_version: 10,
            stream_id: rand::random::<u64>() | 1,
            resume: None,
            nonce: nonce.to_vec(),
            auth: secret.is_some(),
            // A fresh, empty node: the real node becomes its full-resync source.
            fresh: true,
            empty: true,
            source: false,
            overflowed: false,
            restored: None,
            replayed_keys: Vec::new(),
        };
        let mut w = &s;
        w.write_all(&codec::encode(&Frame::Hello(hello)).expect("encode"))
            .map_err(|e| e.to_string())?;
        let mut r = &s;
        let theirs = match codec::read_frame(&mut r, 1 << 20).map_err(|e| e.to_string())? {
            Frame::Hello(h) => h,
            other => return Err(format!("expected hello, got {other:?}")),
        };
        let mut keys = None;
        if let Some(sec) = secret {
            let p = auth::proof(sec.as_bytes(), node_id, &theirs.nonce, &nonce);
            w.write_all(&codec::encode(&Frame::Proof(p)).expect("encode"))
                .map_err(|e| e.to_string())?;
            match codec::read_frame(&mut r, 1 << 20).map_err(|e| e.to_string())? {
                Frame::Proof(_) => {}
                other => return Err(format!("expected proof, got {other:?}")),
            }
            let d = || {
                SessionKeys::derive(
                    sec.as_bytes(),
                    node_id,
                    &nonce,
                    &theirs.node_id,
                    &theirs.nonce,
                )
            };
            keys = Some((d(), d()));
        }
        let mut peer = FakePeer { s, keys };
        // The commit: both sides say Ready before either acts.
        peer.send(&Frame::Ready).map_err(|e| e.to_string())?;
        let mut r = &peer.s;
        let got = match peer.keys.as_mut() {
            Some(k) => codec::read_frame_authenticated(&mut r, 1 << 20, &mut k.1).map(|(f, _)| f),
            None => codec::read_frame(&mut r, 1 << 20),
        };
        match got.map_err(|e| e.to_string())? {
            Frame::Ready => Ok(peer),
            other => Err(format!("expected ready, got {other:?}")),
        }
    }

    fn send(&mut self, frame: &Frame) -> std::io::Result<()> {
        let bytes = codec::encode(frame).expect("encode");
        self.send_encoded(&bytes)
    }

    fn send_encoded(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut w = &self.s;
        codec::write_frame(&mut w, bytes, self.keys.as_mut().map(|k| &mut k.0))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(())
    }

    /// True once the server closed the connection.
    fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        self.s
            .set_read_timeout(Some(Duration::from_millis(100)))
            .ok();
        while Instant::now() < deadline {
            let mut r = &self.s;
            match r.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return true,
            }
        }
        false
    }
}

fn batch_frame(key: &str, value: Value) -> Frame {
    Frame::Batch(Batch {
        seq: 1,
        resync: false,
        entries: vec![Entry {
            db: 0,
            stamp: Stamp {
                hlc: (now_ms() as u64) << 16,
                index: 0,
            },
            op: Op::Set {
                key: key.as_bytes().to_vec(),
                value,
                expire_at_ms: None,
            },
        }],
    })
}

/// The invariant after every attack: A answers, keeps its data, and the
/// real pair still replicates both ways.
fn assert_healthy(pair: &Pair, marker: &str) {
    let (mut a, mut b) = pair.conns();
    let pong: String = redis::cmd("PING").query(&mut a).expect("PING after attack");
    assert_eq!(pong, "PONG");
    let v: Option<String> = a.get("precious").expect("GET");
    assert_eq!(v.as_deref(), Some("data"), "the dataset survived");
    pair.wait_link_up(T);
    let _: () = a.set(format!("{marker}:a"), 1).expect("SET");
    let _: () = b.set(format!("{marker}:b"), 1).expect("SET");
    wait_for("pair replicates after the attack", T, || {
        b.exists::<_, bool>(format!("{marker}:a")).unwrap_or(false)
            && a.exists::<_, bool>(format!("{marker}:b")).unwrap_or(false)
    });
}

fn last_error(pair: &Pair) -> String {
    status(&mut pair.a.conn())
        .get("last_error")
        .cloned()
        .unwrap_or_default()
}

/// The refusal is reported: in `last_error`, or (if a later event already
/// replaced that) in the server log, which keeps every line.
fn wait_error(pair: &Pair, needle: &str) {
    wait_for_state(
        &format!("last_error or the log mentions '{needle}'"),
        T,
        || {
            let e = last_error(pair);
            if e.contains(needle) || pair.a.log().contains(needle) {
                Ok(())
            } else {
                Err(e)
            }
        },
    );
}

fn prepare(pair: &Pair) {
    let mut a = pair.a.conn();
    let _: () = a.set("precious", "data").expect("SET");
    let mut b = pair.b.conn();
    wait_for("precious on B", T, || {
        b.exists::<_, bool>("precious").unwrap_or(false)
    });
}

#[test]
fn garbage_oversized_and_truncated_input_is_refused() {
    let pair = secured_pair();
    prepare(&pair);
    // Random bytes.
    let mut s = TcpStream::connect(link_addr(pair.a_link)).expect("connect");
    let junk: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    let _ = s.write_all(&junk);
    let f = FakePeer { s, keys: None };
    assert!(f.wait_closed(T), "random bytes: connection closed");
    // A 2^32-1 length prefix (the largest our 4-byte prefix can say).
    let mut s = TcpStream::connect(link_addr(pair.a_link)).expect("connect");
    let _ = s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    let f = FakePeer { s, keys: None };
    assert!(f.wait_closed(T), "huge length: connection closed");
    wait_error(&pair, "exceeds the limit");
    // A truncated hello, then the socket closes.
    let mut s = TcpStream::connect(link_addr(pair.a_link)).expect("connect");
    let hello = codec::encode(&Frame::Ping).expect("encode");
    let _ = s.write_all(&hello[..3]);
    drop(s);
    assert_healthy(&pair, "after-garbage");
}

#[test]
fn slow_loris_handshake_is_cut_off() {
    let pair = secured_pair();
    prepare(&pair);
    let s = TcpStream::connect(link_addr(pair.a_link)).expect("connect");
    let started = Instant::now();
    // One byte of a plausible header every 300 ms.
    let mut w = s.try_clone().expect("clone");
    let trickle = thread::spawn(move || {
        for _ in 0..60 {
            if w.write_all(&[0]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(300));
        }
    });
    let f = FakePeer { s, keys: None };
    assert!(
        f.wait_closed(Duration::from_secs(15)),
        "trickling peer cut off"
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "cut off by the handshake deadline, took {took:?}"
    );
    let _ = trickle.join();
    assert_healthy(&pair, "after-loris");
}

#[test]
fn wrong_secret_gets_no_data_and_a_clear_error() {
    let pair = secured_pair();
    prepare(&pair);
    if let Ok(f) = FakePeer::connect(pair.a_link, "0", Some("not-the-right-secret-at-all")) {
        assert!(f.wait_closed(T), "wrong secret: closed");
    }
    wait_error(&pair, "failed authentication");
    // A real server with the wrong secret, dialing A: nothing reaches it.
    let (_wrong_dir, wrong) = secret_file("a-different-secret-0123456789");
    let lp = free_port();
    let c = ServerBuilder::new()
        .module_args([
            "node-id",
            "c",
            "listen",
            &format!("127.0.0.1:{lp}"),
            "peer",
            &format!("127.0.0.1:{}", pair.a_link),
            "secret-file",
            wrong.as_str(),
        ])
        .start();
    let mut cc = c.conn();
    wait_for_state("c reports the refusal", T, || {
        let e = status(&mut cc)
            .get("last_error")
            .cloned()
            .unwrap_or_default();
        if e.contains("authentication") || e.contains("refused") {
            Ok(())
        } else {
            Err(e)
        }
    });
    let n: i64 = redis::cmd("DBSIZE").query(&mut cc).expect("DBSIZE");
    assert_eq!(n, 0, "a node with the wrong secret received data");
    // No peer without any secret either.
    let lp2 = free_port();
    let d = ServerBuilder::new()
        .module_args([
            "node-id",
            "d",
            "listen",
            &format!("127.0.0.1:{lp2}"),
            "peer",
            &format!("127.0.0.1:{}", pair.a_link),
        ])
        .start();
    let mut cd = d.conn();
    wait_for_state("d reports the refusal", T, || {
        let e = status(&mut cd)
            .get("last_error")
            .cloned()
            .unwrap_or_default();
        if e.contains("secret") {
            Ok(())
        } else {
            Err(e)
        }
    });
    let n: i64 = redis::cmd("DBSIZE").query(&mut cd).expect("DBSIZE");
    assert_eq!(n, 0);
    assert_healthy(&pair, "after-wrong-secret");
}

#[test]
fn the_secret_appears_in_no_reply() {
    let pair = secured_pair();
    let mut a = pair.a.conn();
    let mut texts = Vec::new();
    for args in [
        vec!["MODULE", "LIST"],
        vec!["CONFIG", "GET", "bisync.*"],
        vec!["INFO", "everything"],
        vec!["SYNC.STATUS"],
        vec!["HELLO", "2"],
    ] {
        let mut c = redis::cmd(args[0]);
        for x in &args[1..] {
            c.arg(*x);
        }
        let v: redis::Value = c.query(&mut a).expect("query");
        texts.push(render_value(&v));
    }
    for t in texts {
        assert!(!t.contains(SECRET), "secret leaked in: {t}");
    }
    assert!(!pair.a.log().contains(SECRET), "secret leaked in the log");
}

#[test]
fn authenticated_peer_with_malformed_or_tampered_frames_is_dropped() {
    let pair = secured_pair();
    prepare(&pair);
    // Right secret, then a body that is not a frame.
    let mut f = FakePeer::connect(pair.a_link, "0", Some(SECRET)).expect("handshake");
    let mut junk = vec![0, 0, 0, 5];
    junk.extend_from_slice(&[99, 1, 2, 3, 4]);
    f.send_encoded(&junk).expect("send");
    assert!(f.wait_closed(T), "malformed frame: closed");
    wait_error(&pair, "malformed");
    // Right secret, then a frame whose tag does not match (tampered).
    let f = FakePeer::connect(pair.a_link, "0", Some(SECRET)).expect("handshake");
    let mut bytes =
        codec::encode(&batch_frame("injected", Value::String(b"evil".to_vec()))).expect("encode");
    let body_len = bytes.len() - codec::HEADER_LEN + auth::TAG_LEN;
    bytes[..4].copy_from_slice(&(body_len as u32).to_be_bytes());
    bytes.extend_from_slice(&[7u8; auth::TAG_LEN]);
    let mut w = &f.s;
    w.write_all(&bytes).expect("send");
    assert!(f.wait_closed(T), "tampered frame: closed");
    wait_error(&pair, "authentication");
    let mut a = pair.a.conn();
    let e: bool = a.exists("injected").expect("EXISTS");
    assert!(!e, "a tampered frame was applied");
    assert_healthy(&pair, "after-tamper");
}

/// Redis's CRC-64 (Jones polynomial, reflected), as in DUMP payload trailers.
fn crc64(data: &[u8]) -> u64 {
    const POLY: u64 = 0x95ac_9329_ac4b_c9b5;
    let mut crc = 0u64;
    for &b in data {
        crc ^= u64::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// List commands a peer cannot mean (an `LSET` of a missing key, a pop count past what
/// Redis takes, an index far out of range) are refused by Redis when replayed: the node
/// logs it, keeps serving and replicating, and does not crash.
#[test]
fn list_commands_redis_refuses_are_logged_not_fatal() {
    let pair = secured_pair();
    prepare(&pair);
    let mut f = FakePeer::connect(pair.a_link, "0", Some(SECRET)).expect("handshake");
    let hlc = (now_ms() as u64) << 16;
    let ops = [
        ListOp::Set {
            index: 0,
            value: b"v".to_vec(),
        },
        ListOp::Pop {
            left: true,
            count: u64::MAX,
        },
        ListOp::Trim {
            start: i64::MIN,
            stop: i64::MAX,
        },
        ListOp::Rem {
            count: i64::MIN,
            value: Vec::new(),
        },
    ];
    let entries = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| Entry {
            db: 0,
            stamp: Stamp {
                hlc,
                index: i as u32,
            },
            op: Op::Element {
                key: b"hostile-list".to_vec(),
                change: ElementChange::List(op),
                shipped_in: 1,
                seen: 0,
            },
        })
        .collect();
    f.send(&Frame::Batch(Batch {
        seq: 1,
        resync: false,
        entries,
    }))
    .expect("send");
    wait_for("the refused list command is logged", T, || {
        pair.a.log().contains("list command from the peer failed")
    });
    drop(f);
    assert_healthy(&pair, "after-list");
}

#[test]
fn crafted_dump_payload_with_valid_checksum_is_refused() {
    let pair = secured_pair();
    prepare(&pair);
    // A genuine small-hash payload from a plain server, then a wrong element
    // count inside the listpack, with the checksum fixed up.
    let plain = ServerBuilder::new().without_module().start();
    let mut p = plain.conn();
    let _: () = redis::cmd("HSET")
        .arg("h")
        .arg("a")
        .arg("1")
        .arg("b")
        .arg("2")
        .query(&mut p)
        .expect("HSET");
    let dump: Vec<u8> = redis::cmd("DUMP").arg("h").query(&mut p).expect("DUMP");
    let n = dump.len();
    let trailer = u64::from_le_bytes(dump[n - 8..].try_into().expect("8 bytes"));
    assert_eq!(crc64(&dump[..n - 8]), trailer, "our CRC matches Redis's");
    let mut crafted = dump.clone();
    assert_eq!(crafted[0], 16, "hash listpack payload");
    crafted[6] = 6; // listpack header: element count 4 -> 6
    let crc = crc64(&crafted[..n - 8]);
    crafted[n - 8..].copy_from_slice(&crc.to_le_bytes());
    // Without deep sanitization Redis accepts it: the payload is only caught deeply.
    let shallow: redis::RedisResult<()> = redis::cmd("RESTORE")
        .arg("x")
        .arg(0)
        .arg(&crafted)
        .query(&mut p);
    assert!(
        shallow.is_ok(),
        "the crafted payload passes a shallow check: {shallow:?}"
    );
    let mut f = FakePeer::connect(pair.a_link, "0", Some(SECRET)).expect("handshake");
    f.send(&batch_frame("crafted", Value::Dump(crafted)))
        .expect("send");
    assert!(f.wait_closed(T), "crafted payload: link dropped");
    wait_error(&pair, "refused batch");
    let mut a = pair.a.conn();
    let e: bool = a.exists("crafted").expect("EXISTS");
    assert!(!e, "the crafted payload was restored");
    let cfg: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("sanitize-dump-payload")
        .query(&mut a)
        .expect("CONFIG");
    assert_eq!(cfg[1], "no", "the user's setting is left as it was");
    assert_healthy(&pair, "after-crafted");
}

#[test]
fn hundreds_of_connections_at_once() {
    let pair = secured_pair();
    prepare(&pair);
    let mut socks = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect_timeout(&link_addr(pair.a_link), Duration::from_secs(2)) {
            socks.push(s);
        }
    }
    assert!(socks.len() > 100, "the flood connected ({})", socks.len());
    let mut a = pair.a.conn();
    let pong: String = redis::cmd("PING")
        .query(&mut a)
        .expect("PING during the flood");
    assert_eq!(pong, "PONG");
    // Most are closed at once (handshake limit); the rest by the deadline.
    let closed = socks
        .iter()
        .map(|s| FakePeer {
            s: s.try_clone().expect("clone"),
            keys: None,
        })
        .filter(|f| f.wait_closed(Duration::from_millis(20)))
        .count();
    assert!(
        closed > 200,
        "excess connections are closed at once ({closed} of {})",
        socks.len()
    );
    drop(socks);
    assert_healthy(&pair, "after-flood");
}

#[test]
fn a_panic_inside_a_callback_is_caught_and_logged() {
    let lp = free_port();
    let s = ServerBuilder::new()
        .env("BISYNC_TEST_HOOKS", "1")
        .module_args([
            "node-id",
            "a",
            "listen",
            &format!("127.0.0.1:{lp}"),
            "peer",
            "127.0.0.1:1",
        ])
        .start();
    let mut c = s.conn();
    let _: () = c.set("kept", "yes").expect("SET");
    let r: redis::RedisResult<()> = redis::cmd("SYNC.DEBUG").arg("PANIC").query(&mut c);
    let err = r.expect_err("the panic becomes an error reply");
    assert!(err.to_string().contains("internal error"), "{err}");
    let pong: String = redis::cmd("PING")
        .query(&mut c)
        .expect("the server survived");
    assert_eq!(pong, "PONG");
    let v: String = c.get("kept").expect("GET");
    assert_eq!(v, "yes");
    s.wait_log_contains("panic at", Duration::from_secs(5));
    // Without the hook the command is refused.
    let plain = ServerBuilder::new()
        .without_test_hooks()
        .module_args([
            "node-id",
            "b",
            "listen",
            &format!("127.0.0.1:{}", free_port()),
            "peer",
            "127.0.0.1:1",
        ])
        .start();
    let r: redis::RedisResult<()> = redis::cmd("SYNC.DEBUG")
        .arg("PANIC")
        .query(&mut plain.conn());
    assert!(r.expect_err("refused").to_string().contains("disabled"));
}
