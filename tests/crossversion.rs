//! Pairs of two different server versions (issue 14): a rolling upgrade runs one version on
//! each side for a while, so such a pair must pair, replicate and converge, and a feature one
//! side lacks (hash field TTLs before 7.4) must be reported, never silently dropped.
//!
//! `scripts/test.sh` runs this file with `BISYNC_REDIS_SERVER` (node a) and
//! `BISYNC_REDIS_SERVER_B` (node b) naming two different builds.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(20);

fn cmd(c: &mut redis::Connection, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let mut q = redis::cmd(args[0]);
    for a in &args[1..] {
        q.arg(*a);
    }
    q.query(c)
}

/// `server_name`/`redis_version`/`valkey_version` lines of `INFO server`.
fn version(s: &Server) -> String {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut s.conn())
        .expect("INFO server");
    let mut v: Vec<&str> = info
        .lines()
        .filter(|l| {
            l.starts_with("redis_version:")
                || l.starts_with("valkey_version:")
                || l.starts_with("server_name:")
        })
        .collect();
    v.sort();
    v.join(" ")
}

fn has_field_ttls(s: &Server) -> bool {
    let info: redis::Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("HPEXPIRETIME")
        .query(&mut s.conn())
        .expect("COMMAND INFO");
    matches!(&info, redis::Value::Array(a) if matches!(a.first(), Some(redis::Value::Array(_))))
}

#[test]
fn the_two_nodes_run_different_server_versions() {
    assert!(
        std::env::var_os(SERVER_B_ENV).is_some(),
        "set {SERVER_B_ENV} (node b's server) for the cross-version tests"
    );
    let pair = Pair::start();
    let (va, vb) = (version(&pair.a), version(&pair.b));
    assert_ne!(va, vb, "both nodes run the same server");
    pair.wait_link_up(T);
}

#[test]
fn a_cross_version_pair_converges_under_concurrent_writes() {
    let pair = Pair::start_proxied();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    for i in 0..50 {
        let k = format!("k{i}");
        cmd(&mut a, &["HSET", &k, "from", "a", "i", &i.to_string()]).unwrap();
    }
    pair.assert_converged(&[0], T);
    pair.partition();
    // Both sides change the same keys while cut: field writes merge per field (the same
    // field: one writer wins), a delete keeps what the other side wrote concurrently.
    for i in 0..50 {
        let k = format!("k{i}");
        cmd(&mut a, &["HSET", &k, "side", "a"]).unwrap();
        cmd(&mut b, &["RPUSH", &format!("l{i}"), "b"]).unwrap();
        if i % 3 == 0 {
            cmd(&mut b, &["DEL", &k]).unwrap();
        } else {
            cmd(&mut b, &["HSET", &k, "side", "b"]).unwrap();
        }
        cmd(&mut a, &["SET", &format!("s{i}"), "a", "PX", "900000"]).unwrap();
    }
    pair.heal();
    pair.wait_link_up(T);
    pair.assert_converged(&[0], T);
    let conflicts = ["conflicts_lost", "conflicts_merged"]
        .iter()
        .map(|f| status_u64(&mut a, f) + status_u64(&mut b, f))
        .sum::<u64>();
    assert!(
        conflicts >= 50,
        "only {conflicts} conflicts counted for 50 conflicting keys"
    );
    // Field "side" was written on both sides: one writer's value on both; a key
    // deleted on b keeps a's concurrent field ("from"/"i" were seen by the delete).
    for i in [0, 1] {
        let k = format!("k{i}");
        let va = cmd(&mut a, &["HGET", &k, "side"]).unwrap();
        let vb = cmd(&mut b, &["HGET", &k, "side"]).unwrap();
        assert_eq!(va, vb, "{k}");
    }
    let from = cmd(&mut a, &["HGET", "k0", "from"]).unwrap();
    assert_eq!(from, redis::Value::Nil, "b's DEL removed what it had seen");
}

#[test]
fn field_ttls_towards_a_server_without_them_are_reported() {
    let pair = Pair::start();
    pair.wait_link_up(T);
    let (ta, tb) = (has_field_ttls(&pair.a), has_field_ttls(&pair.b));
    let (from, to) = match (ta, tb) {
        (true, false) => (&pair.a, &pair.b),
        (false, true) => (&pair.b, &pair.a),
        (both, _) => {
            // Neither side (or both) has the feature: nothing can be lost. Check that is so.
            for s in [&pair.a, &pair.b] {
                let r = cmd(
                    &mut s.conn(),
                    &["HPEXPIRE", "h", "1000", "FIELDS", "1", "f"],
                );
                assert_eq!(r.is_ok(), both, "{}: HPEXPIRE gave {r:?}", s.name());
            }
            return;
        }
    };
    let (mut cf, mut ct) = (from.conn(), to.conn());
    cmd(&mut cf, &["HSET", "h", "f", "v", "g", "w"]).unwrap();
    cmd(&mut cf, &["HPEXPIRE", "h", "900000", "FIELDS", "1", "f"]).unwrap();
    // The fields arrive (nothing is dropped) and the missing TTL is reported, in the status and
    // in the log of the server that cannot store it.
    wait_for_state("the TTL loss to be reported on the older server", T, || {
        let st = status(&mut ct);
        let err = st.get("last_error").cloned().unwrap_or_default();
        if err.contains("hash field TTLs") {
            Ok(())
        } else {
            Err(format!("last_error: {err:?}"))
        }
    });
    let got: Vec<String> = redis::cmd("HMGET")
        .arg("h")
        .arg("f")
        .arg("g")
        .query(&mut ct)
        .unwrap();
    assert_eq!(got, vec!["v".to_string(), "w".to_string()]);
    assert!(
        to.log().contains("WITHOUT their TTLs"),
        "no log line on {}",
        to.name()
    );
}
