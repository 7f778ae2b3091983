//! Hash field TTLs (Redis 7.4+, issue 14): a field's TTL travels with the field as an absolute
//! time, is applied with `HPEXPIREAT`, takes part in conflicts as part of the hash, and both
//! sides expire the field by themselves (also while the link is cut).
//!
//! These tests need a server with hash field expiration: `scripts/test.sh` runs them only in
//! the Redis 7.4.1 labelled run, and every test first asserts that the server has the feature,
//! so a wrong server fails loudly instead of passing vacuously.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(20);

/// Fails the test unless `server` has hash field expiration.
fn require_field_ttls(server: &Server) {
    let mut c = server.conn();
    let info: redis::Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("HPEXPIRETIME")
        .query(&mut c)
        .expect("COMMAND INFO");
    let present = matches!(&info, redis::Value::Array(a) if matches!(a.first(), Some(redis::Value::Array(_))));
    assert!(
        present,
        "server {} (BISYNC_REDIS_SERVER={:?}, label {:?}) has no hash field expiration: \
         these tests need Redis 7.4+",
        server.name(),
        std::env::var(SERVER_ENV).ok(),
        std::env::var("BISYNC_SERVER_LABEL").ok()
    );
}

/// `HPEXPIRETIME key FIELDS n fields…`: absolute ms, -1 no TTL, -2 no such field.
fn ttls(c: &mut redis::Connection, key: &str, fields: &[&str]) -> Vec<i64> {
    redis::cmd("HPEXPIRETIME")
        .arg(key)
        .arg("FIELDS")
        .arg(fields.len())
        .arg(fields)
        .query(c)
        .unwrap_or_else(|e| panic!("HPEXPIRETIME {key}: {e}"))
}

fn hash(c: &mut redis::Connection, key: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(key)
        .query(c)
        .unwrap_or_else(|e| panic!("HGETALL {key}: {e}"));
    v.sort();
    v
}

/// Waits until `server` reports `want` as the field TTLs of `key`.
fn wait_ttls(server: &Server, key: &str, fields: &[&str], want: &[i64]) {
    let mut c = server.conn();
    wait_for_state(
        &format!(
            "{} to hold TTLs {want:?} on {key} {fields:?}",
            server.name()
        ),
        T,
        || {
            let got = ttls(&mut c, key, fields);
            if got == want {
                Ok(())
            } else {
                Err(format!("got {got:?}"))
            }
        },
    );
}

fn pair() -> Pair {
    let pair = Pair::start_proxied();
    require_field_ttls(&pair.a);
    require_field_ttls(&pair.b);
    pair.wait_link_up(T);
    pair
}

#[test]
fn field_ttl_set_changed_and_removed_on_each_side_reaches_the_other() {
    let pair = pair();
    let (mut a, mut b) = pair.conns();
    let f = ["f1", "f2", "f3"];
    let t1 = now_ms() + 600_000;
    let t2 = now_ms() + 700_000;
    cmd(&mut a, &["HSET", "h", "f1", "v1", "f2", "v2", "f3", "v3"]);
    cmd(
        &mut a,
        &["HPEXPIREAT", "h", &t1.to_string(), "FIELDS", "1", "f1"],
    );
    wait_ttls(&pair.b, "h", &f, &[t1, -1, -1]);

    // Changed and set on B.
    cmd(
        &mut b,
        &[
            "HPEXPIREAT",
            "h",
            &t2.to_string(),
            "FIELDS",
            "2",
            "f1",
            "f2",
        ],
    );
    wait_ttls(&pair.a, "h", &f, &[t2, t2, -1]);

    // A relative TTL on A arrives as A's absolute time.
    cmd(&mut a, &["HPEXPIRE", "h", "500000", "FIELDS", "1", "f3"]);
    let t3 = ttls(&mut a, "h", &["f3"])[0];
    assert!(t3 > 0, "HPEXPIRE set no TTL on A");
    wait_ttls(&pair.b, "h", &f, &[t2, t2, t3]);

    // Removed on A, then on B.
    cmd(&mut a, &["HPERSIST", "h", "FIELDS", "1", "f1"]);
    wait_ttls(&pair.b, "h", &f, &[-1, t2, t3]);
    cmd(&mut b, &["HPERSIST", "h", "FIELDS", "2", "f2", "f3"]);
    wait_ttls(&pair.a, "h", &f, &[-1, -1, -1]);

    // A value written together with a TTL keeps both; a past time deletes the field.
    cmd(&mut b, &["HSET", "h", "f4", "v4"]);
    cmd(
        &mut b,
        &["HPEXPIREAT", "h", &t1.to_string(), "FIELDS", "1", "f4"],
    );
    wait_ttls(&pair.a, "h", &["f4"], &[t1]);
    cmd(&mut a, &["HPEXPIREAT", "h", "1000", "FIELDS", "1", "f4"]);
    wait_ttls(&pair.b, "h", &["f4"], &[-2]);
    assert_eq!(hash(&mut a, "h"), hash(&mut b, "h"));
    assert_eq!(hash(&mut b, "h").len(), 3);
    pair.assert_converged(&[0], T);
}

#[test]
fn field_expires_on_both_sides_while_the_link_is_cut() {
    let pair = pair();
    let (mut a, mut b) = pair.conns();
    cmd(&mut a, &["HSET", "h", "keep", "1", "gone", "2"]);
    cmd(&mut a, &["HPEXPIRE", "h", "1500", "FIELDS", "1", "gone"]);
    let t = ttls(&mut a, "h", &["gone"])[0];
    assert!(t > 0);
    wait_ttls(&pair.b, "h", &["keep", "gone"], &[-1, t]);

    pair.partition();
    // Each side expires the field by itself: the peer needs no message to do it.
    for (side, c) in [("a", &mut a), ("b", &mut b)] {
        wait_for(&format!("field 'gone' to expire on {side}"), T, || {
            ttls(c, "h", &["gone"]) == [-2]
        });
    }
    // A TTL set during the cut reaches the other side after it heals.
    let t_keep = now_ms() + 900_000;
    cmd(
        &mut b,
        &[
            "HPEXPIREAT",
            "h",
            &t_keep.to_string(),
            "FIELDS",
            "1",
            "keep",
        ],
    );
    pair.heal();
    pair.wait_link_up(T);
    wait_ttls(&pair.a, "h", &["keep", "gone"], &[t_keep, -2]);
    assert_eq!(
        hash(&mut a, "h"),
        vec![("keep".to_string(), "1".to_string())]
    );
    pair.assert_converged(&[0], T);
}

#[test]
fn concurrent_field_ttl_changes_converge() {
    let pair = pair();
    let (mut a, mut b) = pair.conns();
    let keys: Vec<String> = (0..20).map(|i| format!("h{i}")).collect();
    for k in &keys {
        cmd(&mut a, &["HSET", k, "f", "v", "g", "w"]);
    }
    for k in &keys {
        wait_ttls(&pair.b, k, &["f", "g"], &[-1, -1]);
    }
    pair.partition();
    let ta = now_ms() + 600_000;
    let tb = now_ms() + 800_000;
    // Alternate which side writes first so neither always has the later clock.
    for (i, k) in keys.iter().enumerate() {
        let (first, second, t_first, t_second) = if i % 2 == 0 {
            (&mut a, &mut b, ta, tb)
        } else {
            (&mut b, &mut a, tb, ta)
        };
        cmd(
            first,
            &["HPEXPIREAT", k, &t_first.to_string(), "FIELDS", "1", "f"],
        );
        cmd(
            second,
            &[
                "HPEXPIREAT",
                k,
                &t_second.to_string(),
                "FIELDS",
                "2",
                "f",
                "g",
            ],
        );
    }
    pair.heal();
    pair.wait_link_up(T);
    for k in &keys {
        wait_for_state(&format!("field TTLs of {k} to agree"), T, || {
            let x = ttls(&mut a, k, &["f", "g"]);
            let y = ttls(&mut b, k, &["f", "g"]);
            if x == y {
                Ok(())
            } else {
                Err(format!("a {x:?} b {y:?}"))
            }
        });
        let got = ttls(&mut a, k, &["f", "g"]);
        assert!(
            got == [ta, -1] || got == [tb, -1] || got == [ta, ta] || got == [tb, tb],
            "{k}: {got:?} is neither side's write"
        );
    }
    let lost = status_u64(&mut a, "conflicts_lost") + status_u64(&mut b, "conflicts_lost");
    assert!(
        lost >= keys.len() as u64,
        "only {lost} conflicts were counted"
    );
    pair.assert_converged(&[0], T);
}
