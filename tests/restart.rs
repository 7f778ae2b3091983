//! A node restarted from a snapshot resumes with what changed since, not a
//! full resync (issue 11): its pairing state travels in the RDB, the
//! survivor's history names the keys changed after it.
//!
//! What each test proves is in its name; every one ends with both servers
//! holding the same data (`DEBUG DIGEST` and per-key TTLs).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
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

fn caught_up(c: &mut redis::Connection) -> u64 {
    status_u64(c, "full_syncs") + status_u64(c, "restart_resumes")
}

fn save(c: &mut redis::Connection) {
    let _: () = redis::cmd("SAVE").query(c).expect("SAVE");
}

/// A pair whose servers save to `dump.rdb` (and load it when restarted),
/// with the link up.
fn rdb_pair() -> Pair {
    let pair = Pair::builder()
        .server_args(["--dbfilename", "dump.rdb"])
        .start();
    pair.wait_link_up(T);
    pair
}

/// Both servers lose power (kill -9) and start again from their files.
fn restart_both(pair: &mut Pair) {
    pair.a.kill9();
    pair.b.kill9();
    pair.a.restart();
    pair.b.restart();
}

/// Kill B (-9) and start it again from its files; a connection to it once
/// it has caught up (a resume or a full resync).
fn restart_b(pair: &mut Pair, b: redis::Connection) -> redis::Connection {
    drop(b);
    pair.b.kill9();
    pair.b.restart();
    let mut b = pair.b.conn();
    wait_for("B caught up", T, || caught_up(&mut b) >= 1);
    b
}

/// B's clients wrote while the link was cut; B saved and was killed before
/// the survivor got those writes. Its snapshot carries them as
/// un-acknowledged: after the restart they reach A, and A's writes of the
/// outage reach B, without a full resync.
#[test]
fn writes_the_survivor_never_got_survive_the_restart() {
    let mut pair = Pair::builder()
        .proxied()
        .server_args(["--dbfilename", "dump.rdb"])
        .start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    load(&mut a, "base", 500);
    pair.assert_converged(&[0], T);
    pair.partition();
    load(&mut b, "b-only", 50);
    let _: () = b.hset("h", "from-b", "1").expect("HSET");
    let _: () = b.incr("counter", 7).expect("INCRBY");
    let _: () = b.del("base:1").expect("DEL");
    load(&mut a, "a-only", 30);
    let _: () = a.incr("counter", 3).expect("INCRBY");
    let _: () = a.hset("h", "from-a", "1").expect("HSET");
    assert!(status_u64(&mut b, "pending_keys") > 0);
    save(&mut b);
    drop(b);
    pair.b.kill9();
    pair.b.restart();
    let mut b = pair.b.conn();
    assert_eq!(status(&mut b)["next_resync"], "restart");
    pair.heal();
    wait_for("B caught up", T, || caught_up(&mut b) >= 1);
    pair.assert_converged(&[0], T);
    assert_eq!(status_u64(&mut b, "restart_resumes"), 1);
    assert_eq!(status_u64(&mut b, "full_syncs"), 0);
    for c in [&mut a, &mut b] {
        let v: i64 = c.get("counter").expect("GET");
        assert_eq!(v, 10, "both sides' increments add up");
        let n: i64 = redis::cmd("EXISTS")
            .arg("b-only:49")
            .query(c)
            .expect("EXISTS");
        assert_eq!(n, 1, "B's write of the outage is on both sides");
        let gone: i64 = redis::cmd("EXISTS").arg("base:1").query(c).expect("EXISTS");
        assert_eq!(gone, 0, "B's delete of the outage holds on both sides");
        let fields: i64 = c.hlen("h").expect("HLEN");
        assert_eq!(fields, 2);
    }
}

/// A snapshot taken while both sides write (BGSAVE under load), then a
/// kill -9 of its node while the survivor keeps writing: the restarted
/// node resumes and both converge.
#[test]
fn a_snapshot_taken_under_load_resumes_and_converges() {
    let mut pair = rdb_pair();
    let stop = Arc::new(AtomicBool::new(false));
    // Writes made per side: the test waits for these instead of sleeping.
    let made = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let writer = |srv: &Server, side: &'static str, stop: Arc<AtomicBool>| {
        let mut c = srv.conn();
        let made = made.clone();
        let n = usize::from(side == "b");
        thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = format!("k:{}", i % 2000);
                let r: redis::RedisResult<()> = match i % 5 {
                    0 => redis::cmd("DEL").arg(&k).query(&mut c),
                    1 => redis::cmd("INCR")
                        .arg(format!("n:{}", i % 50))
                        .query(&mut c),
                    2 => redis::cmd("SADD")
                        .arg("s")
                        .arg(format!("{side}{}", i % 300))
                        .query(&mut c),
                    _ => redis::cmd("SET")
                        .arg(&k)
                        .arg(format!("{side}{i}"))
                        .query(&mut c),
                };
                if r.is_err() {
                    // The server was killed under this writer: stop.
                    return;
                }
                made[n].fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    let wa = writer(&pair.a, "a", stop.clone());
    let wb = writer(&pair.b, "b", stop.clone());
    let more = |side: usize, n: u64| {
        let from = made[side].load(Ordering::Relaxed);
        wait_for("writes under load", T, || {
            made[side].load(Ordering::Relaxed) >= from + n
        });
    };
    more(0, 1000);
    more(1, 1000);
    let mut b = pair.b.conn();
    let _: () = redis::cmd("BGSAVE").query(&mut b).expect("BGSAVE");
    wait_for("B's BGSAVE done", T, || {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query(&mut b)
            .expect("INFO");
        info.contains("rdb_bgsave_in_progress:0") && info.contains("rdb_last_bgsave_status:ok")
    });
    // Writes after the snapshot on both sides, which B's restart loses.
    more(0, 1000);
    more(1, 1000);
    drop(b);
    pair.b.kill9();
    let _ = wb.join();
    // A keeps writing while B is down and while it comes back.
    more(0, 1000);
    pair.b.restart();
    let mut b = pair.b.conn();
    wait_for("B caught up", T, || caught_up(&mut b) >= 1);
    more(0, 1000);
    stop.store(true, Ordering::Relaxed);
    let _ = wa.join();
    pair.assert_converged(&[0], T);
    assert_eq!(
        status_u64(&mut b, "restart_resumes"),
        1,
        "{}",
        brief(&pair.b)
    );
    assert_eq!(status_u64(&mut b, "full_syncs"), 0);
}

/// An RDB written by another pair's node (same node id, other streams) is
/// never resumed: the survivor sends its whole dataset and says why.
#[test]
fn an_rdb_of_another_pair_is_never_resumed() {
    let other = rdb_pair();
    let (mut oa, mut ob) = other.conns();
    load(&mut oa, "foreign", 300);
    other.assert_converged(&[0], T);
    save(&mut ob);
    let foreign_rdb = other.b.dir().join("dump.rdb");

    let mut pair = rdb_pair();
    let (mut a, _) = pair.conns();
    load(&mut a, "ours", 200);
    pair.assert_converged(&[0], T);
    pair.b.kill9();
    std::fs::copy(&foreign_rdb, pair.b.dir().join("dump.rdb")).expect("copy the RDB");
    pair.b.restart();
    let mut b = pair.b.conn();
    wait_for("B caught up", T, || caught_up(&mut b) >= 1);
    pair.assert_converged(&[0], T);
    assert_eq!(status_u64(&mut b, "full_syncs"), 1);
    assert_eq!(status_u64(&mut b, "restart_resumes"), 0);
    let n: i64 = redis::cmd("DBSIZE").query(&mut b).expect("DBSIZE");
    assert_eq!(n, 200, "the other pair's keys are gone");
    // (Its log, not `last_error`: a later link drop may replace that.)
    assert!(
        pair.a.log_since_start().contains("another stream"),
        "the survivor says why: {}",
        pair.a.log_tail(20)
    );
}

/// The restarted node's snapshot predates more changes than the survivor's
/// history holds: a full resync, with the reason, and still nothing stale.
#[test]
fn a_restart_beyond_the_survivors_history_takes_a_full_resync() {
    let mut pair = Pair::builder()
        .server_args(["--dbfilename", "dump.rdb"])
        .module_args(["history-size", "4kb"])
        .start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    load(&mut a, "k", 500);
    pair.assert_converged(&[0], T);
    save(&mut b);
    for i in 0..300 {
        let _: () = a.del(format!("k:{i}")).expect("DEL");
    }
    pair.assert_converged(&[0], T);
    let mut b = restart_b(&mut pair, b);
    pair.assert_converged(&[0], T);
    assert_eq!(status_u64(&mut b, "full_syncs"), 1);
    assert_eq!(status_u64(&mut b, "restart_resumes"), 0);
    assert!(
        pair.a.log_since_start().contains("raise history-size"),
        "the survivor says why: {}",
        pair.a.log_tail(20)
    );
    let n: i64 = redis::cmd("DBSIZE").query(&mut b).expect("DBSIZE");
    assert_eq!(n, 200, "no deleted key came back");
}

/// A crash loop: B's snapshot is taken by a node that itself started from
/// a snapshot (its stream goes on from a restart seq), then B is started
/// from that same RDB twice, killed in between without saving. A applied
/// what the first start issued; the second start must issue seqs past it,
/// or A skips its batches as applied (or B's writer waits forever for a
/// resync batch past A's position) and B's writes of the second start
/// never arrive. With a jump that ignored the time since the snapshot, both
/// starts began at the same seq (the simulation's crash loops found it);
/// run with that jump, this test fails on `restart_seq_skips` = 1 only: the
/// backstop (`persist::skip_reused_seqs`) still brought the writes over.
#[test]
fn a_crash_loop_on_one_snapshot_loses_no_write() {
    let mut pair = rdb_pair();
    let (mut a, mut b) = pair.conns();
    load(&mut a, "base", 50);
    pair.assert_converged(&[0], T);
    // A first restart: B's stream goes on from a restart seq.
    save(&mut b);
    let mut b = restart_b(&mut pair, b);
    load(&mut b, "before-snapshot", 10);
    pair.assert_converged(&[0], T);
    // The snapshot the loop starts from, twice.
    save(&mut b);
    for start in 0..2 {
        b = restart_b(&mut pair, b);
        load(&mut b, &format!("start{start}"), 20);
        pair.assert_converged(&[0], T);
        let n: i64 = redis::cmd("EXISTS")
            .arg(format!("start{start}:19"))
            .query(&mut a)
            .expect("EXISTS");
        assert_eq!(n, 1, "A has the writes of B's start {start}");
        assert_eq!(
            status_u64(&mut b, "restart_seq_skips"),
            0,
            "the restart seq alone kept the seqs apart (the clock did not step back)"
        );
    }
}

/// Both nodes lose power: each restarts from a snapshot that holds every
/// batch of the other's snapshot, so they go on without an operator.
#[test]
fn both_nodes_restarted_from_matching_snapshots_resume() {
    let mut pair = rdb_pair();
    let (mut a, mut b) = pair.conns();
    load(&mut a, "a", 300);
    load(&mut b, "b", 300);
    pair.assert_converged(&[0], T);
    save(&mut a);
    save(&mut b);
    drop((a, b));
    restart_both(&mut pair);
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    for c in [&mut a, &mut b] {
        wait_for("resumed", T, || status_u64(c, "restart_resumes") == 1);
        assert_eq!(status_u64(c, "full_syncs"), 0);
    }
    let _: () = a.set("after", "1").expect("SET");
    pair.assert_converged(&[0], T);
    let n: i64 = redis::cmd("DBSIZE").query(&mut b).expect("DBSIZE");
    assert_eq!(n, 601);
}

/// Both restarted, but A wrote after B's snapshot: B's data lacks A's
/// batches, so neither may go on alone; they refuse and say what to run.
#[test]
fn both_nodes_restarted_from_snapshots_that_differ_refuse() {
    let mut pair = rdb_pair();
    let (mut a, mut b) = pair.conns();
    load(&mut a, "a", 100);
    pair.assert_converged(&[0], T);
    save(&mut b);
    load(&mut a, "later", 10);
    pair.assert_converged(&[0], T);
    save(&mut a);
    drop((a, b));
    restart_both(&mut pair);
    let mut a = pair.a.conn();
    wait_for("A refuses and explains", T, || {
        status(&mut a)["last_error"].contains("SYNC.PAIR SOURCE")
    });
    assert_eq!(status_u64(&mut a, "restart_resumes"), 0);
    // The operator chooses A: B takes A's data.
    cmd(&mut a, &["SYNC.PAIR", "SOURCE"]);
    pair.wait_link_up(T);
    pair.assert_converged(&[0], T);
    let mut b = pair.b.conn();
    let n: i64 = redis::cmd("DBSIZE").query(&mut b).expect("DBSIZE");
    assert_eq!(n, 110);
}

/// An AOF node (`appendfsync always`) killed after `SYNC.WAIT`-acknowledged
/// writes that went into its AOF after the RDB preamble holding its pairing
/// state. With `tail_keys` few enough to name in the hello, the survivor
/// re-sends them with the keys it changed (a resume); with more, a full
/// resync. Either way no acknowledged write is lost and both converge.
/// Before the kill, B also writes 5 keys the survivor never gets (the link
/// is cut): they are in B's AOF tail only, and the survivor's data wins.
fn aof_restart(tail_keys: usize) -> (Pair, redis::Connection, redis::Connection) {
    let mut pair = Pair::builder()
        .proxied()
        .server_args(["--appendonly", "yes", "--appendfsync", "always"])
        .start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    load(&mut a, "base", 200);
    pair.assert_converged(&[0], T);
    // A rewrite puts the pairing state into the AOF's RDB preamble.
    let _: () = redis::cmd("BGREWRITEAOF")
        .query(&mut b)
        .expect("BGREWRITEAOF");
    wait_for("B's AOF rewrite done", T, || {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query(&mut b)
            .expect("INFO");
        info.contains("aof_rewrite_in_progress:0") && info.contains("aof_last_bgrewrite_status:ok")
    });
    let mut acked = Vec::new();
    for i in 0..tail_keys {
        let k = format!("acked:{i}");
        let _: () = b.set(&k, i).expect("SET");
        if i % 20 == 19 || i + 1 == tail_keys {
            let n: i64 = redis::cmd("SYNC.WAIT")
                .arg(1)
                .arg(10_000)
                .query(&mut b)
                .expect("SYNC.WAIT");
            assert_eq!(n, 1);
            acked.push(k);
        }
    }
    pair.partition();
    load(&mut b, "unshipped", 5);
    // The survivor changes a base key and deletes another meanwhile.
    drop(b);
    pair.b.kill9();
    let _: () = a.set("base:7", "changed").expect("SET");
    let _: () = a.del("base:8").expect("DEL");
    pair.b.restart();
    pair.heal();
    let mut b = pair.b.conn();
    wait_for("B caught up", T, || caught_up(&mut b) >= 1);
    pair.assert_converged(&[0], T);
    for k in &acked {
        for c in [&mut a, &mut b] {
            let n: i64 = redis::cmd("EXISTS").arg(k).query(c).expect("EXISTS");
            assert_eq!(n, 1, "acknowledged write {k} lost");
        }
    }
    let gone: i64 = redis::cmd("EXISTS")
        .arg("base:8")
        .query(&mut b)
        .expect("EXISTS");
    assert_eq!(gone, 0, "the survivor's delete holds");
    let unshipped: i64 = redis::cmd("EXISTS")
        .arg("unshipped:0")
        .arg("unshipped:4")
        .query(&mut b)
        .expect("EXISTS");
    assert_eq!(
        unshipped, 0,
        "the survivor's data wins for keys only B's AOF tail had"
    );
    (pair, a, b)
}

#[test]
fn an_aof_restart_names_its_tail_and_resumes() {
    let (pair, mut a, mut b) = aof_restart(200);
    assert_eq!(
        status_u64(&mut b, "restart_resumes"),
        1,
        "{}",
        brief(&pair.b)
    );
    assert_eq!(status_u64(&mut b, "full_syncs"), 0);
    // The tail's 205 keys and the survivor's 2 changes, in each resume served.
    assert_eq!(
        status_u64(&mut a, "restart_resume_keys"),
        207 * status_u64(&mut a, "restart_resumes_served")
    );
    assert!(
        pair.b
            .log_since_start()
            .contains("writes to 205 keys after the snapshot"),
        "the tail was named: {}",
        pair.b.log_tail(20)
    );
}

#[test]
fn an_aof_restart_with_a_long_tail_takes_a_full_resync() {
    let (pair, _, mut b) = aof_restart(1000);
    assert_eq!(status_u64(&mut b, "full_syncs"), 1);
    assert_eq!(status_u64(&mut b, "restart_resumes"), 0);
    assert!(
        pair.b
            .log_since_start()
            .contains("to more keys than a resume can name"),
        "the reason is logged: {}",
        pair.b.log_tail(20)
    );
}

/// While B resumes from its snapshot, A changes a hash that is not part of
/// the resume (unchanged since B's snapshot, so both hold it alike): B must
/// apply the change to its copy. Before `ResumeBegin`, the resume opened as
/// a full resync and B rebuilt the hash from a missing key, keeping only
/// the new field (found by the restart simulation). The link is slowed and
/// the resume is large, so A's change lands while it runs; the test checks
/// that it did.
#[test]
fn a_change_during_a_resume_applies_to_the_key_both_hold() {
    let mut pair = Pair::builder()
        .proxied()
        .server_args(["--dbfilename", "dump.rdb"])
        .module_args(["backlog-size", "4mb", "history-size", "256mb"])
        .start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    let _: () = a
        .hset_multiple("h", &[("f1", "1"), ("f2", "2")])
        .expect("HSET");
    pair.assert_converged(&[0], T);
    save(&mut b);
    pair.partition();
    // Enough change on A that the resume spans many round trips.
    let value = "v".repeat(1000);
    for chunk in 0..30 {
        let mut p = redis::pipe();
        for i in 0..1000 {
            p.cmd("SET")
                .arg(format!("a-only:{chunk}:{i}"))
                .arg(&value)
                .ignore();
        }
        let _: () = p.query(&mut a).expect("load");
    }
    drop(b);
    pair.b.kill9();
    pair.b.restart();
    let mut b = pair.b.conn();
    let (ab, ba) = pair.proxies();
    ab.delay(Duration::from_millis(150));
    ba.delay(Duration::from_millis(150));
    wait_for("B receiving the resume", T, || {
        let n: u64 = redis::cmd("DBSIZE").query(&mut b).expect("DBSIZE");
        n > 1000
    });
    assert_eq!(
        status_u64(&mut b, "restart_resumes"),
        0,
        "the resume is still running"
    );
    let _: () = a.hset("h", "f3", "3").expect("HSET");
    wait_for("A's new field on B", T, || {
        b.hexists::<_, _, bool>("h", "f3").expect("HEXISTS")
    });
    assert_eq!(
        status_u64(&mut b, "restart_resumes"),
        0,
        "A's change reached B while the resume ran (else this test proves nothing)"
    );
    let fields: u64 = b.hlen("h").expect("HLEN");
    assert_eq!(fields, 3, "B applied A's change to the hash it held");
    pair.heal();
    wait_for("B caught up", T, || caught_up(&mut b) >= 1);
    pair.assert_converged(&[0], T);
    assert_eq!(status_u64(&mut b, "restart_resumes"), 1);
    assert_eq!(status_u64(&mut b, "full_syncs"), 0);
}
