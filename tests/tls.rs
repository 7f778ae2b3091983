//! TLS on the link: a pair with certificates from one CA replicates with
//! nothing readable on the wire; a certificate from another CA, a plain
//! peer, garbage and bad files are refused with a clear `last_error`, the
//! server unharmed. Certificates come from `scripts/make-test-certs.sh`, the
//! command the docs give users.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use redis::Commands;

const T: Duration = Duration::from_secs(20);

/// Run the documented certificate script into a fresh directory (removed
/// after a passing test).
fn make_certs(tag: &str) -> TestDir {
    let dir = TestDir::new(tag);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-test-certs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir.path())
        .args(["a", "b"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "make-test-certs.sh failed (is openssl installed? scripts/setup.sh installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["ca.crt", "a.crt", "a.key", "b.crt", "b.key"] {
        assert!(
            dir.join(f).is_file(),
            "make-test-certs.sh did not write {f}"
        );
    }
    dir
}

/// Module args for TLS with node `node`'s certificate (or `{node}` for a pair).
fn tls_args(dir: &Path, node: &str) -> Vec<String> {
    let p = |f: String| dir.join(f).display().to_string();
    vec![
        "tls-cert-file".into(),
        p(format!("{node}.crt")),
        "tls-key-file".into(),
        p(format!("{node}.key")),
        "tls-ca-file".into(),
        p("ca.crt".into()),
    ]
}

/// A pair with TLS (each node its own certificate), link up; `proxied`
/// puts the test proxy on both peer connections.
fn tls_pair(certs: &Path, proxied: bool) -> Pair {
    let mut b = Pair::builder().module_args(tls_args(certs, "{node}"));
    if proxied {
        b = b.proxied();
    }
    let pair = b.start();
    pair.wait_link_up(T);
    pair
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Everything both proxies forwarded (the session runs over one of them).
fn wire_bytes(pair: &Pair) -> Vec<u8> {
    let (p1, p2) = pair.proxies();
    let mut wire = p1.captured();
    wire.extend(p2.captured());
    wire
}

/// One side of a hand-made pair: its own module args.
fn node(name: &str, listen: u16, dial: u16, extra: Vec<String>) -> Server {
    let mut args = vec![
        "node-id".to_string(),
        name.to_string(),
        "listen".to_string(),
        format!("127.0.0.1:{listen}"),
        "peer".to_string(),
        format!("127.0.0.1:{dial}"),
    ];
    args.extend(extra);
    ServerBuilder::new().name(name).module_args(args).start()
}

fn wait_error(s: &Server, want: &str) -> String {
    let mut last = String::new();
    wait_for(&format!("last_error containing '{want}'"), T, || {
        last = status(&mut s.conn())
            .get("last_error")
            .cloned()
            .unwrap_or_default();
        last.contains(want)
    });
    last
}

#[test]
fn tls_pair_replicates_and_nothing_readable_crosses_the_wire() {
    let certs = make_certs("certs");
    let pair = tls_pair(&certs, true);
    let (mut a, mut b) = pair.conns();
    assert_eq!(status(&mut a)["link_security"], "tls");

    let canary_a = "canary-from-a-4f1e9b0c";
    let canary_b = "canary-from-b-7d2a66e1";
    let _: () = a.set("k:a", canary_a).unwrap();
    let _: () = b.hset("h:b", "field", canary_b).unwrap();
    // Full duplex: both sides write a few MB at once, so both directions carry
    // large frames at the same time (the TLS reader and writer must not block
    // each other).
    let big = "x".repeat(3 << 20);
    let mut pa: redis::Pipeline = redis::pipe();
    let mut pb: redis::Pipeline = redis::pipe();
    for i in 0..2000 {
        pa.set(format!("a:{i}"), format!("{canary_a}:{i}")).ignore();
        pb.set(format!("b:{i}"), format!("{canary_b}:{i}")).ignore();
    }
    pa.set("big:a", &big).ignore();
    pb.set("big:b", &big).ignore();
    let ta = std::thread::spawn({
        let mut c = pair.a.conn();
        move || pa.query::<()>(&mut c)
    });
    pb.query::<()>(&mut b).unwrap();
    ta.join().unwrap().unwrap();

    pair.assert_converged(&[0], T);
    let got: String = b.get("k:a").unwrap();
    assert_eq!(got, canary_a);
    let got: String = a.hget("h:b", "field").unwrap();
    assert_eq!(got, canary_b);

    let wire = wire_bytes(&pair);
    assert!(wire.len() > 6 << 20, "the proxies saw the traffic");
    // Long needles only: a 3-byte key name turns up in megabytes of random ciphertext.
    for secret in [canary_a, canary_b] {
        assert!(
            !contains(&wire, secret.as_bytes()),
            "'{secret}' crossed the wire in clear text"
        );
    }
    assert!(
        !contains(&wire, &[b'x'; 64]),
        "the big value crossed in clear"
    );
}

#[test]
fn without_tls_the_same_traffic_is_readable() {
    // The control for the test above: the capture does see clear text when
    // the link is not encrypted, so its absence under TLS means something.
    let pair = Pair::builder().proxied().start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    assert_eq!(status(&mut a)["link_security"], "none");
    let _: () = a.set("k:a", "canary-plain-1").unwrap();
    wait_for("k:a on b", T, || {
        b.get::<_, Option<String>>("k:a").ok().flatten().is_some()
    });
    let wire = wire_bytes(&pair);
    assert!(contains(&wire, b"canary-plain-1"));
}

#[test]
fn certificate_from_another_ca_is_refused_both_ways() {
    let good = make_certs("good");
    let other = make_certs("other");
    let (la, lb) = (free_port(), free_port());
    let a = node("a", la, lb, tls_args(&good, "a"));
    // b trusts a's CA but presents a certificate from another CA.
    let mut b_args = tls_args(&other, "b");
    b_args[5] = good.join("ca.crt").display().to_string();
    let b = node("b", lb, la, b_args);

    let err = wait_error(&a, "certificate");
    assert!(err.contains("TLS handshake"), "{err}");
    let _: () = a.conn().set("secret-key", "must-not-arrive").unwrap();
    // Give the dialers several rounds (they retry every <= 2 s) to prove the
    // link never comes up.
    wait_for("several refused handshakes on a", T, || {
        status_u64(&mut a.conn(), "link_errors") >= 4
    });
    let mut bc = b.conn();
    assert_ne!(status(&mut bc)["link"], "up");
    assert_ne!(status(&mut a.conn())["link"], "up");
    let got: Option<String> = bc.get("secret-key").unwrap();
    assert_eq!(got, None, "a node without a trusted certificate got data");
    let _: String = redis::cmd("PING").query(&mut a.conn()).unwrap();
}

#[test]
fn tls_node_and_plain_node_say_why() {
    let certs = make_certs("certs");
    let (la, lb) = (free_port(), free_port());
    let a = node("a", la, lb, tls_args(&certs, "a"));
    let b = node("b", lb, la, vec![]);
    let eb = wait_error(&b, "speaks TLS but TLS is not configured here");
    let ea = wait_error(&a, "TLS handshake");
    assert!(!eb.is_empty() && !ea.is_empty());
    let _: () = a.conn().set("k", "v").unwrap();
    let got: Option<String> = b.conn().get("k").unwrap();
    assert_eq!(got, None);
}

#[test]
fn garbage_and_silence_on_a_tls_port_are_cut_off() {
    let certs = make_certs("certs");
    let pair = tls_pair(&certs, false);
    let (mut a, mut b) = pair.conns();
    let before = snapshot(&mut a, &[0]);

    // Random bytes where a TLS ClientHello should be.
    let mut s = TcpStream::connect(("127.0.0.1", pair.a_link)).unwrap();
    let junk: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    let _ = s.write_all(&junk);
    // A silent connection: cut at the handshake deadline.
    let silent = TcpStream::connect(("127.0.0.1", pair.a_link)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 1];
    let started = std::time::Instant::now();
    let n = std::io::Read::read(&mut &silent, &mut buf);
    assert!(
        matches!(n, Ok(0)) || n.is_err(),
        "a silent client must be cut off, got {n:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(14));

    wait_error(&pair.a, "TLS handshake");
    assert_eq!(snapshot(&mut a, &[0]), before, "the dataset is unchanged");
    // The real pair still replicates.
    let _: () = a.set("after", "1").unwrap();
    wait_for("after on b", T, || {
        b.get::<_, Option<String>>("after").ok().flatten().is_some()
    });
}

#[test]
fn bad_tls_files_refuse_the_load_naming_the_argument() {
    let certs = make_certs("certs");
    let junk = certs.join("junk.pem");
    std::fs::write(&junk, "not a pem file\n").unwrap();
    let lp = free_port();
    let base = vec![
        "node-id".to_string(),
        "a".into(),
        "listen".into(),
        format!("127.0.0.1:{lp}"),
        "peer".into(),
        "127.0.0.1:1".into(),
    ];
    let path = |f: &str| certs.join(f).display().to_string();
    let junk = junk.display().to_string();
    let files = |cert: &str, key: &str, ca: Option<&str>| {
        let mut v = vec![
            "tls-cert-file".to_string(),
            cert.to_string(),
            "tls-key-file".into(),
            key.to_string(),
        ];
        if let Some(ca) = ca {
            v.extend(["tls-ca-file".to_string(), ca.to_string()]);
        }
        v
    };
    let (a_crt, a_key, b_key, ca) = (path("a.crt"), path("a.key"), path("b.key"), path("ca.crt"));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            files("/nonexistent.crt", &a_key, Some(&ca)),
            "argument 'tls-cert-file'",
        ),
        (files(&a_crt, &junk, Some(&ca)), "argument 'tls-key-file'"),
        // b's key does not belong to a's certificate.
        (files(&a_crt, &b_key, Some(&ca)), "argument 'tls-key-file'"),
        (files(&a_crt, &a_key, Some(&junk)), "argument 'tls-ca-file'"),
        (files(&a_crt, &a_key, None), "'tls-ca-file' is required"),
    ];
    for (extra, want) in cases {
        let mut args = base.clone();
        args.extend(extra);
        let err = match ServerBuilder::new().module_args(args.clone()).try_start() {
            Ok(_) => panic!("server started with bad TLS args {args:?}"),
            Err(e) => e,
        };
        assert!(
            err.contains(want),
            "args {args:?}: log lacks '{want}':\n{err}"
        );
    }
}

#[test]
fn a_tls_link_cut_and_healed_resumes_with_a_partial_resync() {
    let certs = make_certs("certs");
    let pair = tls_pair(&certs, true);
    let (mut a, mut b) = pair.conns();
    let _: () = a.set("before", "1").unwrap();
    wait_for("before on b", T, || {
        b.get::<_, Option<String>>("before")
            .ok()
            .flatten()
            .is_some()
    });
    pair.partition();
    wait_for("a sees the link down", T, || status(&mut a)["link"] != "up");
    for i in 0..200 {
        let _: () = a.set(format!("during:{i}"), i).unwrap();
        let _: () = b.set(format!("other:{i}"), i).unwrap();
    }
    pair.heal();
    pair.wait_link_up(T);
    pair.assert_converged(&[0], T);
    assert!(status_u64(&mut a, "partial_syncs") + status_u64(&mut b, "partial_syncs") >= 1);
    assert_eq!(status(&mut a)["link_security"], "tls");
}

#[test]
fn a_tls_pair_named_by_host_verifies_that_name() {
    // The test certificates name localhost; with `peer localhost:<port>` that
    // name, not an IP, is what each dialer checks (the default tls-server-name).
    let certs = make_certs("certs");
    let pair = Pair::builder()
        .host("localhost")
        .module_args(tls_args(&certs, "{node}"))
        .start();
    pair.wait_link_up(T);
    let (mut a, mut b) = pair.conns();
    assert_eq!(status(&mut a)["link_security"], "tls");
    let _: () = a.set("named", "1").unwrap();
    wait_for("named on b", T, || {
        b.get::<_, Option<String>>("named").ok().flatten().is_some()
    });
}
