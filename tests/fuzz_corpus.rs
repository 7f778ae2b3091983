//! Replays the fuzz seed corpus and a deterministic set of mutated inputs
//! through the fuzzing entry points, so a crash the fuzzer once found stays
//! fixed without `cargo fuzz` or a nightly toolchain.
//!
//! The seed corpus lives in `fuzz/corpus/{frames,handshake}/`: `seed-*` files
//! come from [`write_seed_corpus`] (run it with
//! `cargo test --release --test fuzz_corpus -- --ignored write_seed_corpus`
//! after a protocol change), `crash-*` files are minimized inputs that once
//! made a target panic, hang or allocate without bound.
//!
//! The inputs run in a child process (this test binary again, running an
//! ignored `child_*` test) with a 1 GiB address-space limit: a failed
//! allocation aborts without unwinding, so the parent names the input the
//! child died on. Every input goes through both targets; nothing may panic,
//! abort or take over 5 s.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis_bisync::core::auth::{self, SessionKeys, NONCE_LEN};
use redis_bisync::core::codec;
use redis_bisync::core::fuzzing;
use redis_bisync::core::list_op::ListOp;
use redis_bisync::core::protocol::{
    Batch, ElementChange, Entry, Frame, Hello, Op, Resume, Shape, Stamp, StreamConsumer,
    StreamGroup, StreamImage, Value, PROTOCOL_VERSION,
};

/// The secret `fuzzing::frames` and `fuzzing::handshake` use.
const SECRET: &[u8] = b"fuzzing-secret-0123456789";
/// The nonce `fuzzing::handshake` uses as its own.
const OUR_NONCE: [u8; NONCE_LEN] = [3; NONCE_LEN];
/// Generated inputs per run of [`mutated_inputs_never_panic`]: 10% random
/// bytes, 10% random valid frames, 10% mutated random valid frames, 70%
/// mutated corpus files.
const MUTATIONS: usize = 20_000;
/// A single input taking longer than this is reported as a hang.
const SLOW: Duration = Duration::from_secs(5);
/// Fixed seed: every run checks the same inputs.
const RNG_SEED: u64 = 0x6269_7379_6e63_2d66; // "bisync-f"

/// A fuzz target: its name (and corpus directory) and its function.
type Target = (&'static str, fn(&[u8]));

/// Both targets; every input goes through both.
const TARGETS: [Target; 2] = [
    ("frames", fuzzing::frames),
    ("handshake", fuzzing::handshake),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target)
}

fn enc(frame: &Frame) -> Vec<u8> {
    codec::encode(frame).expect("encode")
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn flip(mut bytes: Vec<u8>, bits: &[usize]) -> Vec<u8> {
    for &b in bits {
        let i = (b / 8) % bytes.len();
        bytes[i] ^= 1 << (b % 8);
    }
    bytes
}

fn stamp(hlc: u64, index: u32) -> Stamp {
    Stamp { hlc, index }
}

fn set(db: u32, index: u32, key: &[u8], value: Value, expire_at_ms: Option<i64>) -> Entry {
    Entry {
        db,
        stamp: stamp(1 << 40, index),
        op: Op::Set {
            key: key.to_vec(),
            value,
            expire_at_ms,
        },
    }
}

fn stream_image() -> StreamImage {
    StreamImage {
        entries: vec![
            (b"1-0".to_vec(), vec![b"f".to_vec(), b"v".to_vec()]),
            (
                b"2-1".to_vec(),
                vec![b"a".to_vec(), b"1".to_vec(), b"b".to_vec(), b"2".to_vec()],
            ),
        ],
        last_id: b"2-1".to_vec(),
        max_deleted_id: b"0-0".to_vec(),
        entries_added: 3,
        groups: vec![
            StreamGroup {
                name: b"g".to_vec(),
                last_delivered_id: b"1-0".to_vec(),
                entries_read: Some(1),
                consumers: vec![StreamConsumer {
                    name: b"alice".to_vec(),
                    pending: vec![(b"1-0".to_vec(), 1_700_000_000_000, 2)],
                }],
            },
            StreamGroup {
                name: b"h".to_vec(),
                last_delivered_id: b"0-0".to_vec(),
                entries_read: None,
                consumers: vec![],
            },
        ],
    }
}

/// A batch holding every [`Value`] variant.
fn batch_values() -> Frame {
    let pairs = |a: &[u8], b: &[u8]| vec![(a.to_vec(), b.to_vec()), (b"x".to_vec(), vec![0, 255])];
    Frame::Batch(Batch {
        seq: 1,
        resync: false,
        entries: vec![
            set(0, 0, b"s", Value::String(b"hello".to_vec()), None),
            set(
                0,
                1,
                b"h",
                Value::Hash(pairs(b"f", b"v")),
                Some(1_700_000_000_000),
            ),
            set(1, 2, b"l", Value::List(vec![b"a".to_vec(), vec![]]), None),
            set(
                2,
                3,
                b"t",
                Value::Set(vec![b"m".to_vec(), b"n".to_vec()]),
                None,
            ),
            set(3, 4, b"z", Value::ZSet(pairs(b"m", b"1.5")), Some(-1)),
            set(4, 5, b"x", Value::Stream(stream_image()), None),
            set(
                15,
                6,
                b"d",
                Value::Dump(vec![0, 1, 2, 3, 10, 0]),
                Some(i64::MAX),
            ),
        ],
    })
}

/// A resync batch with every [`Op`] that is not a `Set`.
fn batch_ops() -> Frame {
    let e = |db, index, op| Entry {
        db,
        stamp: stamp(u64::MAX, index),
        op,
    };
    Frame::Batch(Batch {
        seq: u64::MAX,
        resync: true,
        entries: vec![
            e(0, 0, Op::FullSyncBegin),
            e(0, 1, Op::Delete { key: vec![0, 255] }),
            e(7, 2, Op::FlushDb),
            e(0, 3, Op::FullSyncEnd),
            e(0, 3, Op::ResumeBegin),
            e(0, 3, Op::ResumeEnd),
            e(
                1,
                4,
                Op::Element {
                    key: b"h".to_vec(),
                    change: ElementChange::Incr {
                        shape: Shape::Hash,
                        elem: b"f".to_vec(),
                        delta: i64::MIN,
                    },
                    shipped_in: u64::MAX,
                    seen: 7,
                },
            ),
            e(
                1,
                5,
                Op::Element {
                    key: b"s".to_vec(),
                    change: ElementChange::Set {
                        shape: Shape::ZSet,
                        elem: b"m".to_vec(),
                        value: b"5e-1".to_vec(),
                    },
                    shipped_in: 3,
                    seen: 0,
                },
            ),
            e(
                1,
                6,
                Op::Element {
                    key: b"s".to_vec(),
                    change: ElementChange::DelKey,
                    shipped_in: 3,
                    seen: 0,
                },
            ),
            e(
                1,
                7,
                Op::Check {
                    key: b"s".to_vec(),
                    digest: b"0000".to_vec(),
                },
            ),
            e(
                1,
                8,
                Op::Element {
                    key: b"q".to_vec(),
                    change: ElementChange::List(ListOp::Insert {
                        before: true,
                        pivot: b"p".to_vec(),
                        value: b"v".to_vec(),
                    }),
                    shipped_in: 3,
                    seen: 0,
                },
            ),
            e(
                1,
                9,
                Op::Element {
                    key: b"ev".to_vec(),
                    change: ElementChange::List(ListOp::XGroups {
                        groups: vec![StreamGroup {
                            name: b"g".to_vec(),
                            last_delivered_id: b"5-0".to_vec(),
                            entries_read: Some(5),
                            consumers: vec![StreamConsumer {
                                name: b"c".to_vec(),
                                pending: vec![(b"4-0".to_vec(), 1_700_000_000_000, 2)],
                            }],
                        }],
                    }),
                    shipped_in: 3,
                    seen: 0,
                },
            ),
        ],
    })
}

fn batch_stream() -> Frame {
    Frame::Batch(Batch {
        seq: 2,
        resync: false,
        entries: vec![set(
            0,
            0,
            b"stream",
            Value::Stream(stream_image()),
            Some(1_800_000_000_000),
        )],
    })
}

/// The peer's hello as `fuzzing::handshake` accepts it (node "b").
fn their_hello() -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        node_id: "b".into(),
        databases: 16,
        rdb_version: 10,
        stream_id: 9,
        resume: None,
        nonce: vec![4; NONCE_LEN],
        auth: true,
        fresh: true,
        empty: false,
        source: false,
        overflowed: false,
        restored: None,
        replayed_keys: Vec::new(),
    }
}

/// A valid proof by `hello`'s node for `fuzzing::handshake`.
fn proof_for(hello: &Hello) -> Frame {
    Frame::Proof(auth::proof(
        SECRET,
        &hello.node_id,
        &OUR_NONCE,
        &hello.nonce,
    ))
}

/// Frames sealed the way `fuzzing::frames` expects an authenticated peer
/// ("b" talking to "a") to seal them, so the tag checks pass.
fn sealed(frames: &[Frame]) -> Vec<u8> {
    let mut keys = SessionKeys::derive(SECRET, "b", &[2; 32], "a", &[1; 32]);
    let mut wire = Vec::new();
    for f in frames {
        codec::write_frame(&mut wire, &enc(f), Some(&mut keys)).expect("seal");
    }
    wire
}

/// Seed inputs for the `frames` target: name, bytes.
fn frames_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let hello = enc(&Frame::Hello(their_hello()));
    let values = enc(&batch_values());
    // A Batch whose entry vector claims 2^62 elements inside a tiny frame.
    let mut huge_inner = vec![2u8, 1, 0, 0xfd];
    huge_inner.extend_from_slice(&(1u64 << 62).to_le_bytes());
    let mut huge_inner_frame = (huge_inner.len() as u32).to_be_bytes().to_vec();
    huge_inner_frame.extend_from_slice(&huge_inner);
    let mut huge_len = enc(&Frame::Ping);
    huge_len[..4].copy_from_slice(&u32::MAX.to_be_bytes());
    vec![
        ("hello", hello.clone()),
        ("refuse", enc(&Frame::Refuse("databases mismatch".into()))),
        ("proof", enc(&proof_for(&their_hello()))),
        ("batch-values", values.clone()),
        ("batch-ops", enc(&batch_ops())),
        ("batch-stream", enc(&batch_stream())),
        ("ack", enc(&Frame::Ack(u64::MAX))),
        ("ping", enc(&Frame::Ping)),
        (
            "sequence",
            cat(&[
                hello,
                enc(&batch_ops()),
                enc(&Frame::Ack(3)),
                enc(&Frame::Ping),
            ]),
        ),
        (
            "authenticated",
            sealed(&[batch_values(), Frame::Ack(1), Frame::Ping]),
        ),
        ("truncated-batch", values[..values.len() / 2].to_vec()),
        ("bitflip-batch", flip(values, &[70, 333, 901])),
        ("huge-length", huge_len),
        ("huge-inner-length", huge_inner_frame),
    ]
}

/// Seed inputs for the `handshake` target: name, bytes.
fn handshake_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let h = their_hello();
    let hello = enc(&Frame::Hello(h.clone()));
    let good = cat(&[hello.clone(), enc(&proof_for(&h))]);
    let resume = Hello {
        resume: Some(Resume {
            stream_id: 7,
            seq: 41,
        }),
        fresh: false,
        ..h.clone()
    };
    let with = |h: Hello| cat(&[enc(&Frame::Hello(h.clone())), enc(&proof_for(&h))]);
    let mut over_limit = good.clone();
    over_limit[..4].copy_from_slice(&(16 * 1024 + 1u32).to_be_bytes());
    vec![
        ("hello-proof", good.clone()),
        ("hello-proof-resume", with(resume)),
        ("hello-only", hello.clone()),
        (
            "hello-noauth",
            with(Hello {
                auth: false,
                nonce: vec![],
                ..h.clone()
            }),
        ),
        (
            "hello-bad-version",
            with(Hello {
                protocol: PROTOCOL_VERSION + 1,
                ..h.clone()
            }),
        ),
        (
            "hello-bad-node-id",
            with(Hello {
                node_id: "b c\u{e9}".into(),
                ..h.clone()
            }),
        ),
        (
            "hello-wrong-proof",
            cat(&[hello.clone(), enc(&Frame::Proof(vec![0; 32]))]),
        ),
        ("refuse", enc(&Frame::Refuse("no".into()))),
        ("proof-then-hello", cat(&[enc(&proof_for(&h)), hello])),
        ("truncated", good[..good.len() - 7].to_vec()),
        ("bitflip", flip(good.clone(), &[45, 200, 530])),
        ("over-limit", over_limit),
    ]
}

fn seeds(target: &str) -> Vec<(&'static str, Vec<u8>)> {
    match target {
        "frames" => frames_seeds(),
        "handshake" => handshake_seeds(),
        _ => unreachable!("unknown target {target}"),
    }
}

/// Regenerate the committed `seed-*` files (never touches `crash-*` files).
#[test]
#[ignore = "writes fuzz/corpus; run after a protocol change"]
fn write_seed_corpus() {
    for (target, _) in TARGETS {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        for (name, bytes) in seeds(target) {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Set in the environment of the child process that runs the inputs.
const CHILD_ENV: &str = "BISYNC_FUZZ_CORPUS_CHILD";
/// Last progress line of a child that went through all its inputs.
const DONE: &str = "fuzz_corpus: all checked";
/// Address space of the child process. An input that makes a target ask
/// for more (a decoder trusting a length from the wire) fails the
/// allocation there, which aborts the child, instead of slipping through
/// on an overcommitted `calloc`; frames are capped at 1 MiB, so nothing
/// legitimate comes close.
const CHILD_ADDRESS_SPACE: u64 = 1 << 30;
/// A child still running after this is hung on its last input.
const CHILD_DEADLINE: Duration = Duration::from_secs(600);

fn progress(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn limit_address_space() {
    let limit = libc::rlimit {
        rlim_cur: CHILD_ADDRESS_SPACE as libc::rlim_t,
        rlim_max: CHILD_ADDRESS_SPACE as libc::rlim_t,
    };
    // SAFETY: a plain system call on a valid, initialized struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
    assert_eq!(
        rc,
        0,
        "setrlimit(RLIMIT_AS): {}",
        std::io::Error::last_os_error()
    );
}

/// Run the ignored test `test` of this binary in a child process and fail
/// if it fails, naming the input it died or hung on. A child because an
/// allocation failure aborts the process without unwinding: in-process it
/// would take the whole test binary down without saying which input.
fn in_child(test: &str) {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut child = Command::new(exe)
        .args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child test");
    let last = Arc::new(Mutex::new(String::new()));
    let stdout = child.stdout.take().expect("child stdout");
    let out_reader = {
        let last = Arc::clone(&last);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest's "test name ... " may precede the first one.
                let found = if line.contains(DONE) {
                    Some(DONE.to_string())
                } else {
                    line.find("input ").map(|i| line[i..].to_string())
                };
                if let Some(found) = found {
                    *last.lock().unwrap_or_else(|e| e.into_inner()) = found;
                }
            }
        })
    };
    let mut stderr = child.stderr.take().expect("child stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child test") {
            break Some(status);
        }
        if start.elapsed() > CHILD_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = out_reader.join();
    let err = err_reader.join().unwrap_or_default();
    let last = last.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let what = match status {
        Some(s) if s.success() && last == DONE => return,
        Some(s) if s.success() => "exited without running its inputs".to_string(),
        Some(s) => {
            use std::os::unix::process::ExitStatusExt;
            match s.signal() {
                Some(sig) => format!("was killed by signal {sig} (abort: failed allocation?)"),
                None => format!("failed ({s})"),
            }
        }
        None => format!("hung: still running after {CHILD_DEADLINE:?}"),
    };
    let at = if last == DONE || last.is_empty() {
        String::new()
    } else {
        format!("\nlast input started: {last}")
    };
    // The first lines say what failed (panic message, failed allocation),
    // the last ones the child's summary of failed inputs.
    let chars: Vec<char> = err.chars().collect();
    let err: String = if chars.len() <= 12_000 {
        err
    } else {
        let head: String = chars[..4_000].iter().collect();
        let tail: String = chars[chars.len() - 8_000..].iter().collect();
        format!("{head}\n[...]\n{tail}")
    };
    panic!("child test {test} {what}{at}\n--- child stderr ---\n{err}");
}

#[test]
fn corpus_replays_without_panic() {
    in_child("child_corpus_replay");
}

#[test]
fn mutated_inputs_never_panic() {
    in_child("child_mutated_inputs");
}

/// Runs every input through both targets; panics at the end, naming the
/// inputs that panicked or took longer than [`SLOW`].
struct Checker {
    failures: Vec<String>,
    runs: usize,
    /// Print each input before running it (in a child process).
    progress: bool,
}

impl Checker {
    fn new() -> Self {
        let progress = std::env::var_os(CHILD_ENV).is_some();
        if progress {
            limit_address_space();
        }
        Checker {
            failures: Vec::new(),
            runs: 0,
            progress,
        }
    }

    fn check(&mut self, origin: &str, input: &[u8]) {
        if self.progress {
            // The parent keeps the last of these lines: it names the input
            // if this process dies (aborts on a failed allocation) or hangs.
            progress(&format!(
                "input {origin}, {} bytes, hex: {}",
                input.len(),
                hex(input)
            ));
        }
        for (target, f) in TARGETS {
            self.runs += 1;
            let start = Instant::now();
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| f(input)));
            let took = start.elapsed();
            let what = match outcome {
                Err(e) => e
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| e.downcast_ref::<String>().cloned())
                    .map(|s| format!("panicked: {s}"))
                    .unwrap_or_else(|| "panicked".to_string()),
                Ok(()) if took > SLOW => format!("took {took:?}"),
                Ok(()) => continue,
            };
            self.failures.push(format!(
                "{target}({origin}, {} bytes) {what}; input hex: {}",
                input.len(),
                hex(input)
            ));
        }
    }

    fn finish(self) {
        if self.progress {
            progress(DONE);
        }
        assert!(
            self.failures.is_empty(),
            "{} of {} runs failed:\n{}",
            self.failures.len(),
            self.runs,
            self.failures
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Every committed corpus file (`seed-*`, `crash-*`), both targets.
fn corpus_files() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (target, _) in TARGETS {
        let dir = corpus_dir(target);
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.is_file())
            // Only the committed files: what `cargo fuzz run` adds is local.
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name.starts_with("seed-") || name.starts_with("crash-")
            })
            .collect();
        names.sort();
        for p in names {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            out.push((
                format!("{target}/{}", p.file_name().unwrap().to_string_lossy()),
                bytes,
            ));
        }
    }
    out
}

#[test]
fn seed_corpus_is_current() {
    // The committed seeds still decode as the frames they were made from; a
    // protocol change that breaks this needs `write_seed_corpus` run again.
    for (target, _) in TARGETS {
        let dir = corpus_dir(target);
        for (name, bytes) in seeds(target) {
            let path = dir.join(format!("seed-{name}"));
            let on_disk =
                std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            assert!(
                on_disk == bytes,
                "{} is stale: run `cargo test --release --test fuzz_corpus -- --ignored write_seed_corpus`",
                path.display()
            );
        }
    }
}

#[test]
#[ignore = "run in a child process by corpus_replays_without_panic"]
fn child_corpus_replay() {
    let files = corpus_files();
    assert!(
        files.len() >= 20,
        "seed corpus missing: {} files",
        files.len()
    );
    let mut c = Checker::new();
    for (name, bytes) in &files {
        c.check(name, bytes);
    }
    c.finish();
}

/// Values that bincode's varint and the frame limits treat specially.
const INTERESTING_BYTES: [u8; 9] = [0, 1, 0x7f, 0x80, 0xfa, 0xfb, 0xfc, 0xfd, 0xff];
const HUGE_LENGTHS: [u32; 8] = [
    u32::MAX,
    0x8000_0000,
    (1 << 20) + 33,
    (1 << 20) + 32,
    1 << 20,
    16 * 1024 + 1,
    16 * 1024,
    0,
];

/// Rewrite the 4-byte prefix so it announces exactly the rest of the input
/// (the body then reaches the decoder instead of failing `read_exact`).
fn fix_prefix(b: &mut [u8]) {
    if b.len() >= 4 {
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
    }
}

fn mutate(rng: &mut StdRng, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut b = pool[rng.gen_range(0..pool.len())].clone();
    let steps = rng.gen_range(1..=4);
    for _ in 0..steps {
        match rng.gen_range(0..10) {
            // Bit flips.
            0 if !b.is_empty() => {
                for _ in 0..rng.gen_range(1..=8) {
                    let i = rng.gen_range(0..b.len());
                    b[i] ^= 1 << rng.gen_range(0..8);
                }
            }
            // A byte set to a varint marker or boundary value.
            1 if !b.is_empty() => {
                let i = rng.gen_range(0..b.len());
                b[i] = INTERESTING_BYTES[rng.gen_range(0..INTERESTING_BYTES.len())];
            }
            // Truncation.
            2 if !b.is_empty() => {
                let n = rng.gen_range(0..b.len());
                b.truncate(n);
            }
            // Splice: a prefix of this input and a suffix of another.
            3 => {
                let other = &pool[rng.gen_range(0..pool.len())];
                let cut = rng.gen_range(0..=b.len());
                let from = rng.gen_range(0..=other.len());
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            // Another input appended (several frames on one connection).
            4 => b.extend_from_slice(&pool[rng.gen_range(0..pool.len())]),
            // The length prefix set to a huge or boundary value.
            5 if b.len() >= 4 => {
                let v = HUGE_LENGTHS[rng.gen_range(0..HUGE_LENGTHS.len())];
                b[..4].copy_from_slice(&v.to_be_bytes());
            }
            // A huge varint length (u64 or u32 marker) inside the body.
            6 if b.len() > 4 => {
                let i = rng.gen_range(4..b.len());
                let v: Vec<u8> = if rng.gen_bool(0.5) {
                    let n: u64 = [u64::MAX, 1 << 62, 1 << 32, 1 << 24][rng.gen_range(0..4)];
                    let mut v = vec![0xfd];
                    v.extend_from_slice(&n.to_le_bytes());
                    v
                } else {
                    let mut v = vec![0xfc];
                    v.extend_from_slice(&rng.gen_range(1u32 << 16..=u32::MAX).to_le_bytes());
                    v
                };
                let end = (i + rng.gen_range(0..=2)).min(b.len());
                b.splice(i..end, v);
            }
            // Random bytes inserted.
            7 => {
                let i = rng.gen_range(0..=b.len());
                let n = rng.gen_range(1..=16);
                let ins: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                b.splice(i..i, ins);
            }
            // Bytes removed.
            8 if !b.is_empty() => {
                let i = rng.gen_range(0..b.len());
                let end = (i + rng.gen_range(1..=16)).min(b.len());
                b.drain(i..end);
            }
            // Bytes duplicated in place.
            9 if !b.is_empty() => {
                let i = rng.gen_range(0..b.len());
                let end = (i + rng.gen_range(1..=32)).min(b.len());
                let dup = b[i..end].to_vec();
                b.splice(i..i, dup);
            }
            _ => {}
        }
    }
    // Mostly keep the prefix consistent so mutated bodies get decoded.
    if rng.gen_bool(0.6) {
        fix_prefix(&mut b);
    }
    b
}

fn random_input(rng: &mut StdRng) -> Vec<u8> {
    let n = rng.gen_range(0..=256);
    let mut b: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
    if rng.gen_bool(0.5) {
        // A frame variant index the decoder knows, then garbage.
        if b.len() > 4 {
            b[4] = rng.gen_range(0..6);
        }
        fix_prefix(&mut b);
    }
    b
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.gen_range(0..=max);
    (0..n).map(|_| rng.gen()).collect()
}

fn random_pairs(rng: &mut StdRng) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..rng.gen_range(0..6))
        .map(|_| (random_bytes(rng, 8), random_bytes(rng, 8)))
        .collect()
}

fn random_list(rng: &mut StdRng) -> Vec<Vec<u8>> {
    (0..rng.gen_range(0..6))
        .map(|_| random_bytes(rng, 8))
        .collect()
}

fn random_value(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..7) {
        0 => Value::String(random_bytes(rng, 16)),
        1 => Value::Hash(random_pairs(rng)),
        2 => Value::List(random_list(rng)),
        3 => Value::Set(random_list(rng)),
        4 => Value::ZSet(random_pairs(rng)),
        5 => Value::Stream(StreamImage {
            entries: (0..rng.gen_range(0..4))
                .map(|_| (random_bytes(rng, 6), random_list(rng)))
                .collect(),
            last_id: random_bytes(rng, 6),
            max_deleted_id: random_bytes(rng, 6),
            entries_added: rng.gen(),
            groups: (0..rng.gen_range(0..3))
                .map(|_| StreamGroup {
                    name: random_bytes(rng, 6),
                    last_delivered_id: random_bytes(rng, 6),
                    entries_read: rng.gen_bool(0.5).then(|| rng.gen()),
                    consumers: (0..rng.gen_range(0..3))
                        .map(|_| StreamConsumer {
                            name: random_bytes(rng, 6),
                            pending: (0..rng.gen_range(0..3))
                                .map(|_| (random_bytes(rng, 6), rng.gen(), rng.gen()))
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
        }),
        _ => Value::Dump(random_bytes(rng, 16)),
    }
}

/// A small number or an extreme one.
fn random_u64(rng: &mut StdRng) -> u64 {
    match rng.gen_range(0..4) {
        0 => rng.gen_range(0..4),
        1 => u64::MAX - rng.gen_range(0..2),
        _ => rng.gen(),
    }
}

fn random_frame(rng: &mut StdRng) -> Frame {
    match rng.gen_range(0..8) {
        0 => Frame::Hello(Hello {
            protocol: [PROTOCOL_VERSION, 0, u32::MAX][rng.gen_range(0..3)],
            node_id: ["a", "b", "", "a b", "\u{e9}", "x.y-z_0"][rng.gen_range(0..6)].into(),
            databases: rng.gen_range(0..20),
            rdb_version: rng.gen_range(0..20),
            stream_id: random_u64(rng),
            resume: rng.gen_bool(0.5).then(|| Resume {
                stream_id: [7, random_u64(rng)][rng.gen_range(0..2)],
                seq: random_u64(rng),
            }),
            nonce: random_bytes(rng, 40),
            auth: rng.gen(),
            fresh: rng.gen(),
            empty: rng.gen(),
            source: rng.gen(),
            overflowed: rng.gen(),
            restored: rng
                .gen_bool(0.3)
                .then(|| redis_bisync::core::restart::SavedPosition {
                    stream_id: random_u64(rng),
                    own_seq: random_u64(rng),
                    peer_stream_id: [7, random_u64(rng)][rng.gen_range(0..2)],
                    applied_seq: random_u64(rng),
                }),
            replayed_keys: (0..rng.gen_range(0..3))
                .map(|_| (rng.gen_range(0..20), random_bytes(rng, 12)))
                .collect(),
        }),
        1 => Frame::Refuse(String::from_utf8_lossy(&random_bytes(rng, 20)).into_owned()),
        2 => Frame::Proof(random_bytes(rng, 40)),
        3 => Frame::Ack(random_u64(rng)),
        4 => Frame::Ping,
        _ => Frame::Batch(Batch {
            seq: random_u64(rng),
            resync: rng.gen(),
            entries: (0..rng.gen_range(0..8))
                .map(|i| Entry {
                    db: rng.gen_range(0..17),
                    stamp: stamp(random_u64(rng), i),
                    op: match rng.gen_range(0..8) {
                        6 => Op::Element {
                            key: random_bytes(rng, 8),
                            change: match rng.gen_range(0..6) {
                                0 => ElementChange::DelKey,
                                4 => ElementChange::List(ListOp::Pop {
                                    left: rng.gen(),
                                    count: random_u64(rng),
                                }),
                                5 => ElementChange::List(ListOp::Set {
                                    index: rng.gen(),
                                    value: random_bytes(rng, 4),
                                }),
                                1 => ElementChange::Del {
                                    shape: Shape::Set,
                                    elem: random_bytes(rng, 4),
                                },
                                2 => ElementChange::Incr {
                                    shape: Shape::Str,
                                    elem: random_bytes(rng, 1),
                                    delta: rng.gen(),
                                },
                                _ => ElementChange::Set {
                                    shape: Shape::Hash,
                                    elem: random_bytes(rng, 4),
                                    value: random_bytes(rng, 4),
                                },
                            },
                            shipped_in: random_u64(rng),
                            seen: random_u64(rng),
                        },
                        7 => Op::Check {
                            key: random_bytes(rng, 8),
                            digest: random_bytes(rng, 8),
                        },
                        0 => Op::Delete {
                            key: random_bytes(rng, 8),
                        },
                        1 => Op::FlushDb,
                        2 => Op::FullSyncBegin,
                        3 => Op::FullSyncEnd,
                        _ => Op::Set {
                            key: random_bytes(rng, 8),
                            value: random_value(rng),
                            expire_at_ms: rng.gen_bool(0.5).then(|| rng.gen()),
                        },
                    },
                })
                .collect(),
        }),
    }
}

/// One to three valid frames, sometimes sealed as an authenticated peer
/// would, sometimes followed by a valid proof (the handshake target's shape).
fn random_frames(rng: &mut StdRng) -> Vec<u8> {
    let frames: Vec<Frame> = (0..rng.gen_range(1..=3))
        .map(|_| random_frame(rng))
        .collect();
    match rng.gen_range(0..4) {
        0 => sealed(&frames),
        1 => match &frames[0] {
            Frame::Hello(h) => cat(&[enc(&frames[0]), enc(&proof_for(h))]),
            _ => cat(&frames.iter().map(enc).collect::<Vec<_>>()),
        },
        _ => cat(&frames.iter().map(enc).collect::<Vec<_>>()),
    }
}

#[test]
#[ignore = "run in a child process by mutated_inputs_never_panic"]
fn child_mutated_inputs() {
    let pool: Vec<Vec<u8>> = corpus_files().into_iter().map(|(_, b)| b).collect();
    assert!(!pool.is_empty(), "seed corpus missing");
    let mut rng = StdRng::seed_from_u64(RNG_SEED);
    let mut c = Checker::new();
    for i in 0..MUTATIONS {
        let input = match i % 10 {
            0 => random_input(&mut rng),
            1 => random_frames(&mut rng),
            2 => {
                let valid = random_frames(&mut rng);
                mutate(&mut rng, &[valid])
            }
            _ => mutate(&mut rng, &pool),
        };
        c.check(&format!("mutation #{i}"), &input);
    }
    c.finish();
}
