//! What an operator meets first: peers named by host, protected mode for a
//! link without a secret, the order of `SYNC.STATUS` and `INFO bisync`, how
//! old `last_error` is, and the install step `redis.conf.example` relies on.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use redis::{Commands, Value};

const T: Duration = Duration::from_secs(20);

fn repo_file(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn wait_value(conn: &mut redis::Connection, key: &str, want: &str) {
    wait_for(&format!("{key} = {want}"), T, || {
        conn.get::<_, Option<String>>(key).ok().flatten().as_deref() == Some(want)
    });
}

#[test]
fn a_pair_named_by_localhost_comes_up_replicates_and_reconnects() {
    let mut pair = Pair::builder().host("localhost").start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    assert_eq!(status(&mut a)["peer"], format!("localhost:{}", pair.b_link));
    assert_eq!(
        status(&mut b)["listen"],
        format!("localhost:{}", pair.b_link)
    );
    let _: () = a.set("from-a", "1").unwrap();
    let _: () = b.set("from-b", "2").unwrap();
    wait_value(&mut b, "from-a", "1");
    wait_value(&mut a, "from-b", "2");
    // A reconnect dials the name again (it is resolved on every dial).
    pair.b.kill9();
    wait_for("a sees the link down", T, || status(&mut a)["link"] != "up");
    pair.b.restart();
    pair.wait_link_up(T);
    let mut b = pair.b.conn();
    wait_value(&mut b, "from-a", "1");
    let _: () = b.set("after-restart", "3").unwrap();
    wait_value(&mut a, "after-restart", "3");
}

fn module_args(listen: &str, peer: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["node-id", "a", "listen", listen, "peer", peer]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// The start must fail, with exactly one module line saying why.
fn refused(args: Vec<String>, says: &str) {
    let report = match ServerBuilder::new().module_args(args.clone()).try_start() {
        Ok(_) => panic!("loaded with {args:?}"),
        Err(report) => report,
    };
    let lines: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("bisync:") && l.contains("refusing to load"))
        .collect();
    assert_eq!(lines.len(), 1, "one refusal line:\n{report}");
    let line = lines[0];
    assert!(line.contains(says), "'{says}' missing:\n{line}");
    assert!(
        line.contains("secret-file") && line.contains("insecure-allow-unauthenticated yes"),
        "the line says how to add a secret and how to opt out:\n{line}"
    );
    assert!(
        !report.contains("is NOT authenticated"),
        "refused before anything else is said:\n{report}"
    );
}

#[test]
fn protected_mode_refuses_an_unauthenticated_link_off_loopback() {
    let (lp, pp) = (free_port(), free_port());
    refused(
        module_args(&format!("0.0.0.0:{lp}"), &format!("127.0.0.1:{pp}"), &[]),
        &format!("protected mode: listen 0.0.0.0:{lp} is not a loopback address"),
    );
    refused(
        module_args(&format!("127.0.0.1:{lp}"), "192.0.2.1:7101", &[]),
        "protected mode: peer 192.0.2.1:7101 is not a loopback address",
    );
    refused(
        module_args(
            &format!("localhost:{lp}"),
            &format!("no-such-host.invalid:{pp}"),
            &[],
        ),
        "peer no-such-host.invalid",
    );
}

#[test]
fn protected_mode_opt_out_loads_and_still_warns() {
    let (lp, pp) = (free_port(), free_port());
    let s = ServerBuilder::new()
        .module_args(module_args(
            &format!("0.0.0.0:{lp}"),
            &format!("127.0.0.1:{pp}"),
            &["insecure-allow-unauthenticated", "yes"],
        ))
        .start();
    let mut c = s.conn();
    assert_eq!(status(&mut c)["link_security"], "none");
    let got: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("bisync.insecure-allow-unauthenticated")
        .query(&mut c)
        .unwrap();
    assert_eq!(got[1], "yes");
    assert!(
        s.log_since_start().contains("is NOT authenticated"),
        "the warning for a link without a secret stays"
    );
}

/// Field names of `SYNC.STATUS` as the README table lists them, in order.
fn readme_fields() -> Vec<String> {
    let readme = repo_file("README.md");
    let start = readme
        .find("| field | meaning |")
        .expect("README has the SYNC.STATUS table");
    let mut out = Vec::new();
    for line in readme[start..].lines().skip(2).map(str::trim_start) {
        if !line.starts_with('|') {
            break;
        }
        let first = line.split('|').nth(1).unwrap_or("");
        out.extend(first.split('`').skip(1).step_by(2).map(String::from));
    }
    out
}

#[test]
fn status_and_info_keep_the_readme_order() {
    let want = readme_fields();
    assert!(want.len() > 20, "README table parsed: {want:?}");
    assert_eq!(&want[..4], ["node_id", "version", "peer", "link"]);
    let s = ServerBuilder::new()
        .module_args(module_args(
            &format!("127.0.0.1:{}", free_port()),
            &format!("127.0.0.1:{}", free_port()),
            &[],
        ))
        .start();
    let mut c = s.conn();
    let reply: Value = redis::cmd("SYNC.STATUS").query(&mut c).unwrap();
    let got: Vec<String> = match reply {
        Value::Array(items) => items.iter().step_by(2).map(value_to_string).collect(),
        Value::Map(pairs) => pairs.iter().map(|(k, _)| value_to_string(k)).collect(),
        other => panic!("SYNC.STATUS replied {other:?}"),
    };
    assert_eq!(got, want, "SYNC.STATUS order");
    let info: String = redis::cmd("INFO").arg("bisync").query(&mut c).unwrap();
    let got: Vec<String> = info
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(':'))
        .filter_map(|l| l.split(':').next())
        .map(|k| k.trim_start_matches("bisync_").to_string())
        .collect();
    assert_eq!(got, want, "INFO bisync order");
}

fn error_and_age(c: &mut redis::Connection) -> (String, u64) {
    let s = status(c);
    let age = s["last_error_age_ms"].parse().expect("a number");
    (s["last_error"].clone(), age)
}

/// A stranger sends a length prefix far past any limit to `port`.
fn send_oversized_frame(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let _ = s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
}

#[test]
fn last_error_says_how_old_it_is() {
    let pair = Pair::start();
    pair.wait_link_up(T);
    let mut a = pair.a.conn();
    send_oversized_frame(pair.a_link);
    let (err, first_age) = wait_for_state("a records the error", T, || {
        let (e, age) = error_and_age(&mut a);
        if e.contains("exceeds the limit") {
            Ok((e, age))
        } else {
            Err(format!("last_error '{e}'"))
        }
    });
    assert!(first_age < 10_000, "a fresh error is young: {first_age}");
    // The link is up and the error stays, getting older.
    let older = wait_for_state("the error ages", T, || {
        let (e, age) = error_and_age(&mut a);
        if e != err {
            panic!("last_error changed to '{e}'");
        }
        if age >= first_age + 300 {
            Ok(age)
        } else {
            Err(format!("age {age}"))
        }
    });
    assert_eq!(status(&mut a)["link"], "up");
    // The same error again makes it young again.
    send_oversized_frame(pair.a_link);
    wait_for("the repeated error is young", T, || {
        error_and_age(&mut a).1 < older
    });
}

/// `KEY:-default` from a script line `x=${KEY:-default}`.
fn script_default(script: &str, key: &str) -> String {
    let marker = format!("${{{key}:-");
    let at = script.find(&marker).expect("script has the default") + marker.len();
    script[at..].split('}').next().unwrap_or("").to_string()
}

#[test]
fn install_puts_the_module_and_a_private_secret_where_the_example_expects() {
    let script = repo_file("scripts/install.sh");
    let example = repo_file("redis.conf.example");
    let lib = script_default(&script, "BISYNC_LIB_DIR");
    let secret = script_default(&script, "BISYNC_SECRET_FILE");
    // redis.conf.example: node A's line and node B's line are mirrors, with
    // the paths install.sh writes.
    let line = |node: &str| -> Vec<String> {
        example
            .lines()
            .map(|l| l.trim_start_matches('#').trim())
            .find(|l| l.starts_with("loadmodule") && l.contains(&format!("node-id {node} ")))
            .unwrap_or_else(|| panic!("redis.conf.example has node {node}'s line"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let (la, lb) = (line("a"), line("b"));
    assert_eq!(la[1], format!("{lib}/libredis_bisync.so"));
    let arg = |l: &[String], name: &str| {
        let i = l.iter().position(|w| w == name).expect(name);
        l[i + 1].clone()
    };
    assert_eq!(arg(&la, "secret-file"), secret);
    assert_eq!(arg(&lb, "secret-file"), secret);
    assert_eq!(la.len(), lb.len(), "same arguments on both nodes");
    let (pa, pb) = (arg(&la, "peer"), arg(&lb, "peer"));
    assert!(
        pa != pb && pa == pb.replace("-a.", "-b."),
        "each node's peer is the other: {pa} {pb}"
    );
    for (x, y) in la.iter().zip(&lb) {
        assert!(
            x == y || (x.as_str(), y.as_str()) == ("a", "b") || (x, y) == (&pa, &pb),
            "node A and B lines differ in more than node-id and peer: {x} / {y}"
        );
    }

    // Run install.sh into a scratch dir with the built module.
    let dir = TestDir::new("install");
    let secret_path = dir.join("etc/bisync.secret");
    let run = || {
        let out = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh"))
            .env("BISYNC_MODULE", module_path())
            .env("BISYNC_LIB_DIR", dir.join("lib"))
            .env("BISYNC_SECRET_FILE", &secret_path)
            .output()
            .expect("run install.sh");
        assert!(
            out.status.success(),
            "install.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run();
    let module = dir.join("lib/libredis_bisync.so");
    assert!(module.is_file(), "module installed");
    let mode = std::fs::metadata(&module).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o111,
        0o111,
        "Redis 7 loads only an executable module"
    );
    let meta = std::fs::metadata(&secret_path).expect("secret created");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "secret mode");
    let first = std::fs::read(&secret_path).unwrap();
    assert!(first.trim_ascii().len() >= 16);
    run();
    assert_eq!(
        std::fs::read(&secret_path).unwrap(),
        first,
        "an existing secret is kept"
    );

    // The installed files load, on a non-loopback listen address: the
    // secret is what protected mode asks for.
    let s = ServerBuilder::new()
        .module_file(&module)
        .module_args(module_args(
            &format!("0.0.0.0:{}", free_port()),
            &format!("localhost:{}", free_port()),
            &["secret-file", secret_path.to_str().unwrap()],
        ))
        .start();
    assert_eq!(status(&mut s.conn())["link_security"], "secret");
}
