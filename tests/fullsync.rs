//! Authoritative full resync: first contact, operator-chosen source, and a
//! node restarted from a stale snapshot that must not bring old data back.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use redis::Commands;

const T: Duration = Duration::from_secs(30);

fn load(c: &mut redis::Connection, prefix: &str, n: usize) {
    let mut p = redis::pipe();
    for i in 0..n {
        p.cmd("SET").arg(format!("{prefix}:{i}")).arg(i).ignore();
    }
    let _: () = p.query(c).expect("load");
}

fn dbsize(c: &mut redis::Connection) -> i64 {
    redis::cmd("DBSIZE").query(c).expect("DBSIZE")
}

/// Wait until `c` refuses to pair and its `last_error` says what to run.
fn wait_for_refusal(c: &mut redis::Connection, who: &str) {
    wait_for_state(&format!("{who}'s refusal explains what to do"), T, || {
        let e = status(c).get("last_error").cloned().unwrap_or_default();
        if e.contains("SYNC.PAIR SOURCE") {
            Ok(())
        } else {
            Err(e)
        }
    });
}

/// Start two servers without linking them (each `peer` points nowhere yet).
fn unpaired() -> (ServerBuilder, ServerBuilder, u16, u16) {
    let (la, lb) = (free_port(), free_port());
    let a = ServerBuilder::new().name("a").module_args([
        "node-id",
        "a",
        "listen",
        &format!("127.0.0.1:{la}"),
        "peer",
        &format!("127.0.0.1:{lb}"),
    ]);
    let b = ServerBuilder::new().name("b").module_args([
        "node-id",
        "b",
        "listen",
        &format!("127.0.0.1:{lb}"),
        "peer",
        &format!("127.0.0.1:{la}"),
    ]);
    (a, b, la, lb)
}

#[test]
fn an_empty_node_joins_a_node_with_data_while_writes_continue() {
    let (ba, bb, _, _) = unpaired();
    let a = ba.start();
    let mut ca = a.conn();
    load(&mut ca, "k", 20_000);
    let _: () = ca.hset("h", "f", "v").expect("HSET");
    let _: () = ca.set_ex("ttl", "v", 1000).expect("SETEX");
    // B starts empty: it receives A's dataset while A keeps taking writes.
    let b = bb.start();
    let mut cb = b.conn();
    for i in 0..1_000 {
        let _: () = ca.set(format!("during:{i}"), i).expect("SET during sync");
    }
    // Once paired, B's own writes during the sync are kept and reach A.
    wait_for("B linked", T, || status(&mut cb)["link"] == "up");
    for i in 1_000..2_000 {
        let _: () = ca.set(format!("during:{i}"), i).expect("SET during sync");
        if i % 500 == 0 {
            let _: () = cb
                .set(format!("b-during:{i}"), i)
                .expect("SET on B during sync");
        }
    }
    wait_for("B finished the full resync", T, || {
        status_u64(&mut cb, "full_syncs") == 1
    });
    assert_converged(&a, &b, &[0], T);
    assert_eq!(dbsize(&mut cb), 20_000 + 2 + 2_000 + 2);
    let v: String = ca
        .get("b-during:1500")
        .expect("B's write during the sync reached A");
    assert_eq!(v, "1500");
    assert_eq!(status_u64(&mut ca, "full_syncs"), 0, "A was the source");
}

/// Two servers that took writes as strangers meet (both dial at once once
/// the proxies pass): they refuse to merge and say what to run; after
/// `SYNC.PAIR SOURCE` on A, B holds exactly A's data.
fn two_nodes_with_data_refuse_until_the_operator_chooses_once(run: usize) {
    refuse_then_pair(run, None);
}

/// The body of the refusal tests; `target_writer_delay_ms` holds B's link
/// writer back at the start of each session (`SYNC.DEBUG START-DELAY`).
fn refuse_then_pair(run: usize, target_writer_delay_ms: Option<u64>) {
    // Both links go through proxies that start cut, so the two servers
    // take writes as strangers before they ever meet.
    let proxies: Rc<RefCell<Vec<Proxy>>> = Rc::new(RefCell::new(Vec::new()));
    let p2 = proxies.clone();
    let pair = Pair::start_via(move |target| {
        let p = Proxy::to_port(target);
        p.cut();
        let port = p.port();
        p2.borrow_mut().push(p);
        port
    });
    let (mut ca, mut cb) = pair.conns();
    load(&mut ca, "onlyA", 100);
    load(&mut cb, "onlyB", 50);
    for p in proxies.borrow().iter() {
        p.pass();
    }
    wait_for_refusal(&mut ca, &format!("run {run}: A"));
    wait_for_refusal(&mut cb, &format!("run {run}: B"));
    assert_eq!(dbsize(&mut cb), 50, "run {run}: nothing merged silently");
    assert_eq!(dbsize(&mut ca), 100, "run {run}: nothing merged silently");
    if let Some(ms) = target_writer_delay_ms {
        let _: () = redis::cmd("SYNC.DEBUG")
            .arg("START-DELAY")
            .arg(ms)
            .query(&mut cb)
            .expect("SYNC.DEBUG START-DELAY");
    }
    let _: () = redis::cmd("SYNC.PAIR")
        .arg("SOURCE")
        .query(&mut ca)
        .expect("SYNC.PAIR");
    wait_for(&format!("run {run}: B took A's data"), T, || {
        status_u64(&mut cb, "full_syncs") == 1
    });
    pair.assert_converged(&[0], T);
    assert_eq!(
        dbsize(&mut cb),
        100,
        "run {run}: B's own keys were replaced"
    );
    let again: redis::RedisResult<()> = redis::cmd("SYNC.PAIR").arg("SOURCE").query(&mut ca);
    assert!(again.is_err(), "a paired node refuses SYNC.PAIR");
}

#[test]
fn two_nodes_with_data_refuse_until_the_operator_chooses() {
    two_nodes_with_data_refuse_until_the_operator_chooses_once(0);
}

/// B's link writer starts late (as when its thread is not scheduled): A's
/// full resync arrives through B's reader before B's writer acts on the
/// Target role. B must still discard its own keys first: the discard is
/// ordered before any frame of the session is read (it was set by the
/// writer, and in CI49 B once kept its 50 keys that way).
#[test]
fn a_target_whose_writer_starts_late_still_takes_the_source_data_alone() {
    refuse_then_pair(0, Some(1500));
}

/// The first-contact race (both nodes dial at once; a decision taken on one
/// connection must never be acted on from another) repeated: it merged
/// silently in about one run in ten before the handshake gained its commit.
#[test]
fn first_contact_refusal_holds_over_many_runs() {
    let runs: usize = std::env::var("BISYNC_FIRST_CONTACT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    for run in 1..=runs {
        two_nodes_with_data_refuse_until_the_operator_chooses_once(run);
    }
}

/// B says "empty" in its hello, then its clients write while the hellos
/// are still on the (slow) wire: B's claim no longer holds when the
/// decision arrives, so B does not act on it (it used to keep its writes
/// and merge them into A); the next handshake sees two nodes with data.
#[test]
fn a_node_written_during_its_first_handshake_does_not_merge() {
    let (la, lb) = (free_port(), free_port());
    // B reaches A only through a slow proxy; A cannot reach B at all, so
    // the only handshake is B's, and its hellos take 400 ms each way.
    let slow = Proxy::to_port(la);
    slow.delay(Duration::from_millis(400));
    let dead = Proxy::to_port(lb);
    dead.cut();
    let args = |id: &str, listen: u16, peer: u16| {
        vec![
            "node-id".to_string(),
            id.to_string(),
            "listen".into(),
            format!("127.0.0.1:{listen}"),
            "peer".into(),
            format!("127.0.0.1:{peer}"),
        ]
    };
    let a = ServerBuilder::new()
        .name("a")
        .module_args(args("a", la, dead.port()))
        .start();
    let mut ca = a.conn();
    load(&mut ca, "onlyA", 100);
    let b = ServerBuilder::new()
        .name("b")
        .module_args(args("b", lb, slow.port()))
        .start();
    let mut cb = b.conn();
    // B's hello (empty) is on the wire: now its clients write.
    wait_for("B in its first handshake", T, || {
        status(&mut cb)["link"] == "handshake"
    });
    load(&mut cb, "onlyB", 50);
    wait_for_refusal(&mut cb, "B");
    assert_eq!(dbsize(&mut cb), 50, "nothing merged silently");
    assert_eq!(dbsize(&mut ca), 100, "nothing merged silently");
    assert_eq!(status_u64(&mut cb, "full_syncs"), 0);
}

/// B restarts from a snapshot taken before 200 keys changed on the
/// survivor A (100 deleted, 100 rewritten). With `history_size` covering
/// those changes, A resumes B with exactly those keys; with no history
/// (`0`) B takes A's whole dataset. Either way no deleted key comes back.
fn restart_from_a_stale_snapshot(history_size: &str) -> Pair {
    let pair = Pair::builder()
        .server_args(["--dbfilename", "dump.rdb"])
        .module_args(["history-size", history_size])
        .start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    load(&mut a, "k", 1000);
    pair.assert_converged(&[0], T);
    // B's snapshot, then changes on the survivor A.
    let _: () = redis::cmd("SAVE").query(&mut b).expect("SAVE");
    for i in 0..100 {
        let _: () = a.del(format!("k:{i}")).expect("DEL");
        let _: () = a.set(format!("k:{}", 500 + i), "new").expect("SET");
    }
    pair.assert_converged(&[0], T);
    let mut pair = pair;
    pair.b.kill9();
    pair.b.restart();
    let mut b = pair.b.conn();
    // B came back with the stale snapshot; A is the source.
    wait_for("B caught up with A", T, || {
        status_u64(&mut b, "full_syncs") + status_u64(&mut b, "restart_resumes") >= 1
    });
    pair.assert_converged(&[0], T);
    let mut a = pair.a.conn();
    for i in 0..100 {
        let gone: bool = a.exists(format!("k:{i}")).expect("EXISTS");
        assert!(!gone, "deleted key k:{i} came back onto the survivor");
        let v: String = a.get(format!("k:{}", 500 + i)).expect("GET");
        assert_eq!(v, "new", "the survivor's value won");
    }
    pair
}

#[test]
fn a_node_restarted_from_a_stale_snapshot_resumes_with_only_the_changed_keys() {
    let pair = restart_from_a_stale_snapshot("32mb");
    let (mut a, mut b) = pair.conns();
    assert_eq!(status_u64(&mut b, "restart_resumes"), 1);
    assert_eq!(status_u64(&mut b, "full_syncs"), 0, "no full resync");
    // (A session that breaks during the resume serves it again, whole.)
    let served = status_u64(&mut a, "restart_resumes_served");
    assert!(served >= 1);
    assert_eq!(
        status_u64(&mut a, "restart_resume_keys"),
        200 * served,
        "exactly the keys changed since B's snapshot crossed"
    );
    assert_eq!(status(&mut b)["next_resync"], "partial");
}

#[test]
fn a_node_restarted_without_a_covering_history_takes_a_full_resync() {
    let pair = restart_from_a_stale_snapshot("0");
    let mut b = pair.b.conn();
    assert_eq!(status_u64(&mut b, "full_syncs"), 1);
    assert_eq!(status_u64(&mut b, "restart_resumes"), 0);
    // (Its log, not `last_error`: a later link drop may replace that.)
    assert!(
        pair.a.log_since_start().contains("raise history-size"),
        "the survivor says why: {}",
        pair.a.log_tail(20)
    );
}

/// A restarted node takes the survivor's dataset, but what its clients wrote
/// before it reconnected are new writes: the sweep keeps them and the
/// survivor gets them. `overflow` makes those writes overflow the restarted
/// node's table of un-acknowledged writes first (the keys are then kept by
/// another path).
fn writes_of_a_restarted_node_before_it_reconnects_survive(overflow: bool) {
    let mut pair = Pair::builder().proxied().start();
    pair.wait_link_up(T);
    let mut a = pair.a.conn();
    load(&mut a, "old", 200);
    pair.assert_converged(&[0], T);
    pair.partition();
    pair.b.kill9();
    pair.b.restart();
    let mut b = pair.b.conn();
    if overflow {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("bisync.max-pending-keys")
            .arg("10")
            .query(&mut b)
            .expect("CONFIG SET");
    }
    // Two batches: with `overflow` the first overflows the table, the
    // second is written while the table is gone.
    load(&mut b, "new", 20);
    let mut p = redis::pipe();
    for i in 20..100 {
        p.cmd("SET").arg(format!("new:{i}")).arg(i).ignore();
    }
    let _: () = p.query(&mut b).expect("load");
    let st = status(&mut b);
    if overflow {
        assert_eq!(
            st["pending_keys"], "0",
            "the table overflowed and was dropped"
        );
    } else {
        assert_eq!(st["pending_keys"], "100");
    }
    pair.heal();
    wait_for("b resynced from a", T, || {
        status_u64(&mut b, "full_syncs") >= 1
    });
    pair.assert_converged(&[0], T);
    assert_eq!(dbsize(&mut b), 300, "old keys from a, new keys of b");
    for i in [0, 42, 99] {
        let v: String = a.get(format!("new:{i}")).expect("GET");
        assert_eq!(v, i.to_string());
    }
}

#[test]
fn writes_of_a_restarted_node_before_it_reconnects_survive_the_sweep() {
    writes_of_a_restarted_node_before_it_reconnects_survive(false);
}

#[test]
fn writes_of_a_restarted_node_survive_even_after_its_table_overflowed() {
    writes_of_a_restarted_node_before_it_reconnects_survive(true);
}

/// A restarted node whose clients write past `max-pending-keys` while it
/// takes the survivor's dataset ends that full resync with a table that
/// misses writes. It must not go on applying the peer's records against
/// that table: the session ends at once and the next one resyncs the
/// survivor from here (DESIGN §3: any overflow forces an immediate
/// resync). Before, it waited for the next link fault; meanwhile a key
/// written on both sides ended with each side holding the other's value
/// (the simulation's mutation `overflow_waits`).
#[test]
fn a_target_whose_table_overflowed_during_the_resync_resyncs_the_peer_at_once() {
    let mut pair = Pair::builder()
        .proxied()
        .module_args(["max-pending-keys", "20"])
        .start();
    pair.wait_link_up(T);
    let mut a = pair.a.conn();
    // Enough data that the resync spans many round trips of the slowed link.
    let value = "v".repeat(1000);
    for chunk in 0..20 {
        let mut p = redis::pipe();
        for i in 0..1000 {
            p.cmd("SET")
                .arg(format!("a-only:{chunk}:{i}"))
                .arg(&value)
                .ignore();
        }
        let _: () = p.query(&mut a).expect("load");
    }
    pair.assert_converged(&[0], T);
    pair.partition();
    pair.b.kill9();
    pair.b.restart();
    let mut b = pair.b.conn();
    let (ab, ba) = pair.proxies();
    ab.delay(Duration::from_millis(150));
    ba.delay(Duration::from_millis(150));
    wait_for("B receiving A's dataset", T, || dbsize(&mut b) > 1000);
    assert_eq!(
        status_u64(&mut b, "full_syncs"),
        0,
        "the resync is still running"
    );
    // More keys than the table holds, written while the resync runs.
    load(&mut b, "b-own", 50);
    wait_for("B took A's dataset", T, || {
        status_u64(&mut b, "full_syncs") >= 1
    });
    wait_for("A took B's dataset (the overflow's resync)", T, || {
        status_u64(&mut a, "full_syncs") >= 1
    });
    wait_for_state("B's table tracks again", T, || {
        match status(&mut b).get("next_resync").map(String::as_str) {
            Some("full") | None => Err(format!("{:?}", status(&mut b))),
            Some(_) => Ok(()),
        }
    });
    // A write of one key on both sides before either sees the other's: the
    // later one wins on both (B's table knows B's write again).
    let _: () = a.set("both", "from-a").expect("SET");
    let _: () = b.set("both", "from-b").expect("SET");
    pair.heal();
    pair.assert_converged(&[0], T);
    let v: String = a.get("both").expect("GET");
    assert_eq!(v, "from-b", "the later write wins on both sides");
    assert_eq!(
        dbsize(&mut a),
        20_000 + 50 + 1,
        "A's keys, B's own keys, both"
    );
    let own: String = a.get("b-own:49").expect("GET");
    assert_eq!(own, "49");
}
