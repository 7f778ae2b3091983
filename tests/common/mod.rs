//! Shared integration-test harness for redis-bisync.
//!
//! Integration tests pull this in with `mod common;`. It knows how to:
//! - find the built module and the `redis-server` binary (and fail loudly if either is missing),
//! - run `redis-server` children as RAII guards ([`Server`], [`ServerBuilder`]),
//! - run a replicating pair of them ([`Pair`], [`PairBuilder`]),
//! - read `SYNC.STATUS` ([`status`], [`status_u64`]),
//! - compare the full logical state of two servers ([`snapshot`], [`assert_converged`]),
//! - put a controllable TCP proxy between the two modules ([`Proxy`]).
//!
//! Not every test file uses every helper, hence the blanket `dead_code` allowance.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Value;

/// How long a freshly started `redis-server` gets to answer PING before the start counts as failed.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Read/write timeout put on every connection handed out by [`Server::conn`], so that a hung or
/// SIGSTOPped server makes a test fail with an error instead of hanging the whole suite.
pub const CONN_TIMEOUT: Duration = Duration::from_secs(30);

/// Poll interval of the `wait_*` helpers: short enough to keep tests fast, long enough not to spin.
const POLL: Duration = Duration::from_millis(20);

/// Consumer fields of `XINFO STREAM key FULL` that are per-server wall-clock readings (Redis sets
/// them to the local time whenever it touches a consumer, even on a plain replica), so they can
/// never be equal on two servers and are removed before comparing stream state. Everything else,
/// including each pending entry's delivery time and count, is compared.
pub const STREAM_VOLATILE_CONSUMER_FIELDS: &[&str] = &["seen-time", "active-time"];

/// Top-level fields of `XINFO STREAM key FULL` that describe the in-memory layout (radix tree of
/// listpack nodes), not the logical stream: two servers that reached the same stream content by
/// a different sequence of operations may legitimately differ there, so they are not compared.
pub const STREAM_LAYOUT_FIELDS: &[&str] = &["radix-tree-keys", "radix-tree-nodes"];

/// Locks a mutex even if another test thread panicked while holding it: the harness' shared state
/// stays usable, so one failing test does not cascade into unrelated `PoisonError`s.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Locating binaries
// ---------------------------------------------------------------------------------------------

/// Path of the built module (`libredis_bisync.so`) that the servers load.
///
/// Taken from `$BISYNC_MODULE` if set, else `$CARGO_TARGET_DIR/release/` if set, else
/// `<CARGO_MANIFEST_DIR>/target/release/`. Panics loudly when the file is missing: integration
/// tests must never silently skip because nobody built the module. Returns an absolute path
/// because redis-server `chdir`s into its `--dir` before it loads modules.
pub fn module_path() -> PathBuf {
    let (path, from_env) = match std::env::var_os("BISYNC_MODULE").filter(|v| !v.is_empty()) {
        Some(p) => (PathBuf::from(p), true),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
            (target.join("release").join("libredis_bisync.so"), false)
        }
    };
    if !path.is_file() {
        panic!(
            "\n\n==================== redis-bisync module NOT FOUND ====================\n\
             looked for: {}{}\n\
             The integration tests load the real module into redis-server.\n\
             Build it with `cargo build --release` first (or point BISYNC_MODULE at the .so).\n\
             ======================================================================\n",
            path.display(),
            if from_env {
                " (from $BISYNC_MODULE)"
            } else {
                ""
            }
        );
    }
    let path = fs::canonicalize(&path)
        .unwrap_or_else(|e| panic!("cannot canonicalize module path {}: {e}", path.display()));
    if !from_env {
        warn_if_module_stale(&path);
    }
    path
}

/// Prints (once per test process) a warning when a file under `src/` is newer than the module:
/// `cargo test` does not rebuild the release `.so`, and testing a stale build wastes hours.
fn warn_if_module_stale(module: &Path) {
    static WARNED: OnceLock<()> = OnceLock::new();
    WARNED.get_or_init(|| {
        let Ok(built) = fs::metadata(module).and_then(|m| m.modified()) else {
            return;
        };
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        if let Some(newer) = newest_file_after(&src, built) {
            eprintln!(
                "\nWARNING: {} is newer than {}; the module under test may be stale \
                 (run `cargo build --release`).\n",
                newer.display(),
                module.display()
            );
        }
    });
}

/// Finds some file below `dir` modified after `t` (helper of [`warn_if_module_stale`]).
fn newest_file_after(dir: &Path, t: SystemTime) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(found) = newest_file_after(&p, t) {
                return Some(found);
            }
        } else if entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > t)
        {
            return Some(p);
        }
    }
    None
}

/// The environment variable naming the server binary the integration tests run (a path); unset
/// means the first `redis-server` on `$PATH`. `scripts/test.sh` sets it once per server of the
/// compatibility matrix. (`REDIS_SERVER_BIN` is accepted too, the older name.)
pub const SERVER_ENV: &str = "BISYNC_REDIS_SERVER";

/// The environment variable naming a *different* server binary for the node called `b`, so every
/// pair of a run is a cross-version pair (rolling upgrades run one version on each side).
pub const SERVER_B_ENV: &str = "BISYNC_REDIS_SERVER_B";

/// The server binary for the node called `name`: `$BISYNC_REDIS_SERVER_B` for `b` when set,
/// otherwise [`redis_server_bin`].
pub fn redis_server_bin_for(name: &str) -> PathBuf {
    if name == "b" {
        if let Some(p) = std::env::var_os(SERVER_B_ENV).filter(|v| !v.is_empty()) {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "${SERVER_B_ENV}={} does not exist",
                p.display()
            );
            // Absolute (not canonical: Debian's redis-server is a symlink whose name matters): a
            // server is started from inside its data dir.
            return std::path::absolute(&p).unwrap_or(p);
        }
    }
    redis_server_bin()
}

/// Path of the `redis-server` executable: `$BISYNC_REDIS_SERVER` (or `$REDIS_SERVER_BIN`) if
/// set, else the first `redis-server` on `$PATH`. Panics loudly if there is none: a missing
/// server must fail the run, never turn into silently skipped tests.
pub fn redis_server_bin() -> PathBuf {
    for var in [SERVER_ENV, "REDIS_SERVER_BIN"] {
        if let Some(p) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "${var}={} does not exist", p.display());
            return std::path::absolute(&p).unwrap_or(p);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("redis-server");
        let executable = fs::metadata(&candidate)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if executable {
            return candidate;
        }
    }
    panic!(
        "\n\n==================== redis-server NOT FOUND ====================\n\
         `redis-server` is not on PATH ({}).\n\
         The integration tests need Redis >= 7.0 (Debian: `apt-get install redis-server`),\n\
         or set BISYNC_REDIS_SERVER to its path.\n\
         =================================================================\n",
        path.to_string_lossy()
    );
}

// ---------------------------------------------------------------------------------------------
// Ports and directories
// ---------------------------------------------------------------------------------------------

/// Ports already handed out in this test process; tests run in parallel threads and must not be
/// given the same port twice even after the probe socket has been closed.
static USED_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A currently free 127.0.0.1 TCP port (a random one that binds, below the ephemeral range),
/// never one already returned earlier in this process. The port is released before returning, so use it promptly.
pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range (32768-60999 here): a port handed
    // out there can be taken by any outgoing connection's local end while
    // its server is down, and a restart on the same port then fails with
    // "Address already in use" (seen after kill -9 under parallel tests).
    const LOW: u16 = 10_000;
    const HIGH: u16 = 32_000;
    for _ in 0..1000 {
        let port = LOW + (rand::random::<u16>() % (HIGH - LOW));
        if lock(&USED_PORTS).contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && lock(&USED_PORTS).insert(port) {
            return port;
        }
    }
    panic!("free_port: no unused port found after 1000 attempts");
}

/// Records a port that is in use by something this process created (e.g. a proxy listener), so
/// [`free_port`] never hands it out later.
fn reserve_port(port: u16) {
    lock(&USED_PORTS).insert(port);
}

/// Creates a fresh, uniquely named directory under `std::env::temp_dir()`. The name contains the
/// current test's name and `tag`, so a directory kept after a failure is easy to find.
pub fn fresh_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let test: String = thread::current()
        .name()
        .unwrap_or("unnamed")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "bisync-{test}-{tag}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create test dir {}: {e}", dir.display()));
    dir
}

/// A scratch directory (secrets, certificates) owned by a test: removed when the guard is dropped
/// after a passing test, kept — and its path printed — when the test is failing, so nothing a
/// passing test wrote (secrets included) is left in the temp directory.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// A fresh directory (see [`fresh_dir`] for its name).
    pub fn new(tag: &str) -> TestDir {
        TestDir {
            path: fresh_dir(tag),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test dir kept for inspection: {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Milliseconds since the Unix epoch, e.g. to compute `PEXPIREAT` deadlines in tests.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("system clock before 1970")
        .as_millis() as i64
}

/// Reads a file as (lossy) UTF-8 starting at byte `from`; a missing file reads as empty, because
/// a server that died early may not have created its log yet.
fn read_from(path: &Path, from: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = (from as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Size of a file, 0 if it does not exist (used to remember where a (re)start's log output begins).
fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last `n` lines of `text`, for failure reports that stay readable.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// Configures and starts one `redis-server` child ([`Server`]).
///
/// Every server gets `--port P --bind 127.0.0.1 --save "" --appendonly no
/// --enable-debug-command yes --enable-module-command yes --dir D --logfile D/redis.log
/// --loglevel verbose`, then the [`extra`](Self::extra) args (later settings override the
/// defaults, e.g. `--appendonly yes`), then `--loadmodule <module> <module args...>` unless
/// [`without_module`](Self::without_module) was called.
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    name: String,
    port: Option<u16>,
    dir: Option<PathBuf>,
    with_module: bool,
    module: Option<PathBuf>,
    module_args: Vec<String>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    ready_timeout: Duration,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerBuilder {
    /// An environment variable for the server process (test hooks).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Start the server without the module's test hooks (they are on by default).
    pub fn without_test_hooks(mut self) -> Self {
        self.env.retain(|(k, _)| k != "BISYNC_TEST_HOOKS");
        self
    }

    /// A builder for a server that loads the module (found by [`module_path`]) with no args.
    pub fn new() -> Self {
        ServerBuilder {
            name: "server".to_string(),
            port: None,
            dir: None,
            with_module: true,
            module: None,
            module_args: Vec::new(),
            // Test hooks on for every test server: each shortcut that ships
            // a write without reading it back is checked against the truth
            // (the set hint, the element self-check), and a mismatch fails
            // the test when the server is dropped.
            env: vec![("BISYNC_TEST_HOOKS".to_string(), "1".to_string())],
            extra: Vec::new(),
            ready_timeout: READY_TIMEOUT,
        }
    }

    /// A label used in failure reports and the data dir's name (e.g. "a", "b").
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Use this port instead of a [`free_port`] (then no retry happens if it is taken).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Reuse an existing data dir (e.g. one returned by [`Server::into_dir`]) instead of a fresh
    /// one. The started [`Server`] takes ownership of it and removes it on a clean drop.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Arguments passed to the module after `--loadmodule <path>`.
    pub fn module_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.module_args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Extra redis-server command-line args, e.g. `vec!["--appendonly", "yes"]`.
    pub fn extra<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra = args.into_iter().map(Into::into).collect();
        self
    }

    /// Start a plain redis-server without loading the module.
    pub fn without_module(mut self) -> Self {
        self.with_module = false;
        self
    }

    /// Load this `.so` instead of the one found by [`module_path`].
    pub fn module_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.module = Some(path.into());
        self.with_module = true;
        self
    }

    /// How long the server may take to answer PING (default [`READY_TIMEOUT`]).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts the server and waits until it answers PING; panics with the server's log if it
    /// does not come up.
    pub fn start(self) -> Server {
        let name = self.name.clone();
        self.try_start()
            .unwrap_or_else(|e| panic!("server `{name}` failed to start:\n{e}"))
    }

    /// Starts the server, returning `Err(report)` if the process exits or does not answer PING
    /// within the ready timeout. The report contains the log file and stdout/stderr written by
    /// this start, so tests can assert on why a bad configuration was refused. A fresh data dir
    /// is removed on failure; a dir passed with [`dir`](Self::dir) is left alone.
    pub fn try_start(self) -> Result<Server, String> {
        let bin = redis_server_bin_for(&self.name);
        let module = if self.with_module {
            Some(match &self.module {
                Some(m) => {
                    fs::canonicalize(m).map_err(|e| format!("module file {}: {e}", m.display()))?
                }
                None => module_path(),
            })
        } else {
            None
        };
        let (dir, fresh) = match &self.dir {
            Some(d) => {
                fs::create_dir_all(d)
                    .map_err(|e| format!("cannot create dir {}: {e}", d.display()))?;
                (d.clone(), false)
            }
            None => (fresh_dir(&self.name), true),
        };
        // An auto-picked port can be grabbed by someone else between free_port() and the bind;
        // retry with a new one in that case.
        let attempts = if self.port.is_some() { 1 } else { 3 };
        let mut last_err = String::new();
        for attempt in 0..attempts {
            let port = self.port.unwrap_or_else(free_port);
            let mut server = Server {
                name: self.name.clone(),
                port,
                args: self.command_line(port, &dir, module.as_deref()),
                bin: bin.clone(),
                dir: dir.clone(),
                child: None,
                log_offset: 0,
                out_offset: 0,
                keep_dir: true, // until started: Drop must not delete the dir
                ready_timeout: self.ready_timeout,
                env: self.env.clone(),
            };
            match server.launch() {
                Ok(()) => {
                    server.keep_dir = false;
                    return Ok(server);
                }
                Err(e) => {
                    let port_clash = e.contains("Address already in use");
                    last_err = e;
                    if !port_clash || attempt + 1 == attempts {
                        break;
                    }
                }
            }
        }
        if fresh {
            let _ = fs::remove_dir_all(&dir);
        }
        Err(last_err)
    }

    /// The full redis-server argv (without the binary) for the given port/dir/module.
    fn command_line(&self, port: u16, dir: &Path, module: Option<&Path>) -> Vec<String> {
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "yes",
            "--enable-module-command",
            "yes",
            "--dir",
            &dir.to_string_lossy(),
            "--logfile",
            &dir.join("redis.log").to_string_lossy(),
            "--loglevel",
            "verbose",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra.iter().cloned());
        // The module goes last: redis-server treats every arg after `--loadmodule` that does not
        // start with `--` as a module argument.
        if let Some(module) = module {
            args.push("--loadmodule".to_string());
            args.push(module.to_string_lossy().into_owned());
            args.extend(self.module_args.iter().cloned());
        }
        args
    }
}

/// Guard owning one running `redis-server` child process and its data dir.
///
/// Dropping it SIGKILLs and reaps the process. On a clean drop the data dir is removed; if the
/// test is panicking, the last 60 log lines are printed to stderr and the dir is kept for
/// post-mortem inspection.
#[derive(Debug)]
pub struct Server {
    name: String,
    port: u16,
    args: Vec<String>,
    bin: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
    /// Length of redis.log when the current process was launched.
    log_offset: u64,
    /// Length of stdout.log when the current process was launched.
    out_offset: u64,
    keep_dir: bool,
    ready_timeout: Duration,
    env: Vec<(String, String)>,
}

impl Server {
    /// Shortcut for a plain redis-server without the module (used for harness self-tests and
    /// as a non-bisync reference server).
    pub fn start_plain() -> Server {
        ServerBuilder::new().name("plain").without_module().start()
    }

    /// The label given with [`ServerBuilder::name`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Redis port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>` as a socket address (e.g. as a [`Proxy`] target).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The data dir (`--dir`), which also holds `redis.log` and `stdout.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the server's `--logfile`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Path of the file receiving the process' stdout and stderr (config errors end up here).
    pub fn stdout_path(&self) -> PathBuf {
        self.dir.join("stdout.log")
    }

    /// The redis-server argv (without the binary), as used by [`restart`](Self::restart).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// PID of the running process; panics if it is not running (killed and not restarted).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .unwrap_or_else(|| panic!("server `{}` is not running, it has no pid", self.name))
            .id()
    }

    /// Whether the process is still alive (reaps it if it exited, e.g. after a module crash).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) | Some(Err(_)) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// A `redis::Client` for this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("building a redis::Client from a valid URL")
    }

    /// A new connection with [`CONN_TIMEOUT`] read/write timeouts, or the error.
    pub fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        let conn = self
            .client()
            .get_connection_with_timeout(Duration::from_secs(5))?;
        conn.set_read_timeout(Some(CONN_TIMEOUT))?;
        conn.set_write_timeout(Some(CONN_TIMEOUT))?;
        Ok(conn)
    }

    /// A new connection with [`CONN_TIMEOUT`] read/write timeouts (change them with
    /// `set_read_timeout` for long blocking commands); panics if the server cannot be reached.
    pub fn conn(&self) -> redis::Connection {
        self.try_conn().unwrap_or_else(|e| {
            panic!(
                "cannot connect to server `{}` on port {}: {e}",
                self.name, self.port
            )
        })
    }

    /// SIGKILLs the process and reaps it; the data dir is kept so it can be restarted.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server the hard way (SIGKILL + reap, same as [`kill9`](Self::kill9)).
    pub fn stop(&mut self) {
        self.kill9();
    }

    /// Freezes the process with SIGSTOP (it keeps its sockets but answers nothing).
    pub fn sigstop(&self) {
        send_signal(self.pid(), "STOP");
    }

    /// Resumes a process frozen by [`sigstop`](Self::sigstop).
    pub fn sigcont(&self) {
        send_signal(self.pid(), "CONT");
    }

    /// Kills the process if it runs, then starts it again with the same args, port and dir
    /// (so persisted data is reloaded) and waits for PING; panics with the log on failure.
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("server `{}` failed to restart:\n{e}", self.name);
        }
    }

    /// Like [`restart`](Self::restart) but returns the failure report instead of panicking.
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill9();
        self.launch()
    }

    /// The whole log file (all starts in this dir), lossy UTF-8.
    pub fn log(&self) -> String {
        read_from(&self.log_path(), 0)
    }

    /// The part of the log written since the current process was (re)started.
    pub fn log_since_start(&self) -> String {
        read_from(&self.log_path(), self.log_offset)
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        last_lines(&self.log(), n)
    }

    /// Waits until the log of the current run contains `needle`; panics with the log tail.
    pub fn wait_log_contains(&self, needle: &str, timeout: Duration) {
        let what = format!("log of server `{}` to contain {needle:?}", self.name);
        let deadline = Instant::now() + timeout;
        while !self.log_since_start().contains(needle) {
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last log lines:\n{}",
                    self.log_tail(40)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Keep the data dir when this guard is dropped (for debugging or later reuse).
    pub fn keep_dir(&mut self) {
        self.keep_dir = true;
    }

    /// Kills the server and hands its data dir to the caller (not removed), e.g. to start a new
    /// server with [`ServerBuilder::dir`] on the same data.
    pub fn into_dir(mut self) -> PathBuf {
        self.kill9();
        self.keep_dir = true;
        self.dir.clone()
    }

    /// Spawns the process and waits for PING. On failure the process is reaped and the error
    /// holds the log/stdout output of this launch.
    fn launch(&mut self) -> Result<(), String> {
        self.log_offset = file_len(&self.log_path());
        self.out_offset = file_len(&self.stdout_path());
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stdout_path())
            .map_err(|e| format!("cannot open {}: {e}", self.stdout_path().display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot dup stdout file: {e}"))?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot spawn {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(self.failure_report(&format!("process exited ({status})")));
                }
            }
            let pid = self.child.as_ref().map_or(0, Child::id);
            let last = match ping_once(self.port, pid) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                self.kill9();
                return Err(self.failure_report(&format!(
                    "no PONG within {:?} (last error: {last})",
                    self.ready_timeout
                )));
            }
            thread::sleep(POLL);
        }
    }

    /// Text explaining a failed launch: reason, command line, log and stdout/stderr of the launch.
    fn failure_report(&self, reason: &str) -> String {
        format!(
            "redis-server `{}` (port {}) did not start: {reason}\n\
             --- command line ---\n{} {}\n\
             --- {} ---\n{}\n\
             --- {} (stdout+stderr) ---\n{}\n--- end ---",
            self.name,
            self.port,
            self.bin.display(),
            self.args
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(" "),
            self.log_path().display(),
            read_from(&self.log_path(), self.log_offset),
            self.stdout_path().display(),
            read_from(&self.stdout_path(), self.out_offset),
        )
    }
}

/// Log lines by which the module's test hooks report a shortcut that
/// shipped something other than what the server holds.
const HOOK_FAILURES: &[&str] = &["self-check mismatch", "set-hint mismatch"];

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if !thread::panicking() {
            let log = self.log();
            let bad: Vec<&str> = log
                .lines()
                .filter(|l| HOOK_FAILURES.iter().any(|h| l.contains(h)))
                .take(5)
                .collect();
            if !bad.is_empty() {
                let msg = format!(
                    "server `{}` (dir kept: {}): the module's test hooks found a write shipped \
                     differently from what the server holds:\n{}",
                    self.name,
                    self.dir.display(),
                    bad.join("\n")
                );
                panic!("{msg}");
            }
        }
        if thread::panicking() {
            let out = read_from(&self.stdout_path(), 0);
            eprintln!(
                "\n===== server `{}` (port {}): last 60 lines of {} (dir kept: {}) =====\n{}",
                self.name,
                self.port,
                self.log_path().display(),
                self.dir.display(),
                self.log_tail(60)
            );
            if !out.trim().is_empty() {
                eprintln!(
                    "----- stdout/stderr of `{}` -----\n{}",
                    self.name,
                    last_lines(&out, 20)
                );
            }
            eprintln!("===== end of server `{}` =====\n", self.name);
        } else if !self.keep_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// One connect + PING attempt with short timeouts (readiness probe of [`Server`]). Also checks
/// via `INFO server` that the answer comes from our child `pid`, not from some other process
/// that happens to listen on the port.
fn ping_once(port: u16, pid: u32) -> Result<(), String> {
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(250))
        .map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let pong: String = redis::cmd("PING")
        .query(&mut conn)
        .map_err(|e| e.to_string())?;
    if pong != "PONG" {
        return Err(format!("PING answered {pong:?}"));
    }
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut conn)
        .map_err(|e| e.to_string())?;
    let answered_by = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .and_then(|p| p.parse::<u32>().ok());
    match answered_by {
        Some(p) if p == pid => Ok(()),
        other => Err(format!(
            "port {port} is answered by another process (pid {other:?}, ours is {pid})"
        )),
    }
}

/// Sends a signal by name (`STOP`, `CONT`, ...) via `kill(1)`, keeping the harness std-only.
fn send_signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("running `kill` to signal redis-server");
    assert!(status.success(), "`kill -{sig} {pid}` failed: {status}");
}

// ---------------------------------------------------------------------------------------------
// Pair
// ---------------------------------------------------------------------------------------------

/// Two module-loaded servers `a` and `b` that replicate to each other.
///
/// `a` runs the module with `node-id a listen 127.0.0.1:<a_link> peer 127.0.0.1:<a dials>`,
/// `b` with `node-id b listen 127.0.0.1:<b_link> peer 127.0.0.1:<b dials>`. Normally each side
/// dials the other's link port; with [`PairBuilder::proxied`] each side dials its own [`Proxy`]
/// (`a_to_b` forwards to `b_link`, `b_to_a` to `a_link`). Starting does not wait for the link:
/// call [`wait_link_up`](Self::wait_link_up).
pub struct Pair {
    pub a: Server,
    pub b: Server,
    /// Module link (listen) port of `a`.
    pub a_link: u16,
    /// Module link (listen) port of `b`.
    pub b_link: u16,
    /// Proxy that `a`'s `peer` points at (forwards to `b_link`), if proxied.
    pub a_to_b: Option<Proxy>,
    /// Proxy that `b`'s `peer` points at (forwards to `a_link`), if proxied.
    pub b_to_a: Option<Proxy>,
    /// Scratch dirs the servers use (secrets, certificates), removed after the servers stop.
    dirs: Vec<TestDir>,
}

/// Configures a [`Pair`]: extra module/server args shared by both sides and how peers are dialed.
#[derive(Default)]
pub struct PairBuilder {
    module_args: Vec<String>,
    server_args: Vec<String>,
    env: Vec<(String, String)>,
    proxied: bool,
    via: Option<Box<dyn FnMut(u16) -> u16>>,
    host: Option<String>,
    no_test_hooks: bool,
}

impl PairBuilder {
    /// A builder with no extra args and direct peer connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Both servers without the module's test hooks (a measurement on a large key, whose
    /// self-check would digest the whole key at every flush).
    pub fn without_test_hooks(mut self) -> Self {
        self.no_test_hooks = true;
        self
    }

    /// Module args appended after `node-id .. listen .. peer ..` on both sides; `{node}` in an
    /// argument becomes the side's node id (`a` or `b`), e.g. for per-node certificate files.
    pub fn module_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.module_args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Extra redis-server args for both sides (see [`ServerBuilder::extra`]).
    pub fn server_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.server_args = args.into_iter().map(Into::into).collect();
        self
    }

    /// An environment variable for both servers (see [`ServerBuilder::env`]).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The host written in both sides' `listen` and `peer` (default `127.0.0.1`), e.g.
    /// `localhost` to run the pair with host names.
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_string());
        self
    }

    /// Put a [`Proxy`] on each side's peer connection (`pair.a_to_b`, `pair.b_to_a`).
    pub fn proxied(mut self) -> Self {
        self.proxied = true;
        self
    }

    /// Decide the port each side dials: `f(link port of the other side) -> port to dial`.
    /// Called first for `a` (with `b_link`), then for `b` (with `a_link`). Lets a test put its
    /// own forwarder in between; the forwarder only needs to connect to the target lazily.
    pub fn via(mut self, f: impl FnMut(u16) -> u16 + 'static) -> Self {
        self.via = Some(Box::new(f));
        self
    }

    /// Starts `a`, then `b` (each waits for PING, not for the link).
    pub fn start(mut self) -> Pair {
        let a_link = free_port();
        let b_link = free_port();
        let (a_dial, b_dial, a_to_b, b_to_a) = if self.proxied {
            let a_to_b = Proxy::to_port(b_link);
            let b_to_a = Proxy::to_port(a_link);
            (a_to_b.port(), b_to_a.port(), Some(a_to_b), Some(b_to_a))
        } else if let Some(f) = self.via.as_mut() {
            let a_dial = f(b_link);
            let b_dial = f(a_link);
            (a_dial, b_dial, None, None)
        } else {
            (b_link, a_link, None, None)
        };
        let a = self.side("a", a_link, a_dial);
        let b = self.side("b", b_link, b_dial);
        Pair {
            a,
            b,
            a_link,
            b_link,
            a_to_b,
            b_to_a,
            dirs: Vec::new(),
        }
    }

    /// Starts one side with its node id, listen port and dialed port.
    fn side(&self, node: &str, listen: u16, dial: u16) -> Server {
        let host = self.host.as_deref().unwrap_or("127.0.0.1");
        let mut args = vec![
            "node-id".to_string(),
            node.to_string(),
            "listen".to_string(),
            format!("{host}:{listen}"),
            "peer".to_string(),
            format!("{host}:{dial}"),
        ];
        args.extend(self.module_args.iter().map(|a| a.replace("{node}", node)));
        let mut b = ServerBuilder::new()
            .name(node)
            .module_args(args)
            .extra(self.server_args.clone());
        for (k, v) in &self.env {
            b = b.env(k, v);
        }
        if self.no_test_hooks {
            b = b.without_test_hooks();
        }
        b.start()
    }
}

impl Pair {
    /// A builder for non-default pairs (proxies, custom dialing, extra args).
    pub fn builder() -> PairBuilder {
        PairBuilder::new()
    }

    /// A pair with default args, peers dialing each other directly.
    pub fn start() -> Pair {
        PairBuilder::new().start()
    }

    /// A pair with extra module args (appended after node-id/listen/peer) and server args.
    pub fn start_with(extra_module_args: &[&str], extra_server_args: &[&str]) -> Pair {
        PairBuilder::new()
            .module_args(extra_module_args.iter().copied())
            .server_args(extra_server_args.iter().copied())
            .start()
    }

    /// A pair where each side dials `f(link port of the other side)`; see [`PairBuilder::via`].
    pub fn start_via(f: impl FnMut(u16) -> u16 + 'static) -> Pair {
        PairBuilder::new().via(f).start()
    }

    /// A pair whose peer connections both go through a [`Proxy`] (`a_to_b`, `b_to_a`).
    pub fn start_proxied() -> Pair {
        PairBuilder::new().proxied().start()
    }

    /// Keep `dir` (a secret, certificates the servers read) until the pair is dropped: it is
    /// removed after both servers stopped, or kept if the test fails.
    pub fn hold(mut self, dir: TestDir) -> Pair {
        self.dirs.push(dir);
        self
    }

    /// New connections to `a` and `b`.
    pub fn conns(&self) -> (redis::Connection, redis::Connection) {
        (self.a.conn(), self.b.conn())
    }

    /// Polls `SYNC.STATUS` on both servers until both report `link` == `up`; panics with both
    /// last statuses on timeout. Tolerates servers that are still (re)starting.
    pub fn wait_link_up(&self, timeout: Duration) {
        wait_for_state("replication link up on both a and b", timeout, || {
            let sa = self
                .a
                .try_conn()
                .map_err(|e| e.to_string())
                .and_then(|mut c| try_status(&mut c));
            let sb = self
                .b
                .try_conn()
                .map_err(|e| e.to_string())
                .and_then(|mut c| try_status(&mut c));
            let up = |s: &Result<HashMap<String, String>, String>| matches!(s, Ok(m) if m.get("link").map(String::as_str) == Some("up"));
            if up(&sa) && up(&sb) {
                Ok(())
            } else {
                Err(format!("a: {}\nb: {}", fmt_status(&sa), fmt_status(&sb)))
            }
        });
    }

    /// [`assert_converged`] on `a` and `b`.
    pub fn assert_converged(&self, dbs: &[i64], timeout: Duration) {
        assert_converged(&self.a, &self.b, dbs, timeout);
    }

    /// Cuts both proxies (network partition); panics if the pair is not proxied.
    pub fn partition(&self) {
        self.proxies().0.cut();
        self.proxies().1.cut();
    }

    /// Sets both proxies back to pass-through; panics if the pair is not proxied.
    pub fn heal(&self) {
        self.proxies().0.pass();
        self.proxies().1.pass();
    }

    /// Both proxies `(a_to_b, b_to_a)`; panics if the pair was not started proxied.
    pub fn proxies(&self) -> (&Proxy, &Proxy) {
        match (&self.a_to_b, &self.b_to_a) {
            (Some(ab), Some(ba)) => (ab, ba),
            _ => panic!("this Pair has no proxies: start it with Pair::start_proxied()"),
        }
    }
}

/// Renders a status result sorted by field, for timeout messages.
fn fmt_status(s: &Result<HashMap<String, String>, String>) -> String {
    match s {
        Ok(m) => {
            let sorted: BTreeMap<_, _> = m.iter().collect();
            format!("{sorted:?}")
        }
        Err(e) => format!("<error: {e}>"),
    }
}

// ---------------------------------------------------------------------------------------------
// SYNC.STATUS and waiting
// ---------------------------------------------------------------------------------------------

/// Converts a scalar reply to a string (bulk/simple strings, integers, doubles, booleans, nil as
/// ""); anything nested is rendered with [`render_value`].
pub fn value_to_string(v: &Value) -> String {
    match v {
        Value::Nil => String::new(),
        Value::Int(i) => i.to_string(),
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".to_string(),
        Value::Double(d) => d.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::BigNumber(n) => n.to_string(),
        other => render_value(other),
    }
}

/// `SYNC.STATUS` of `s` on a fresh connection, or why it could not be read.
pub fn try_status_of(s: &Server) -> Result<HashMap<String, String>, String> {
    s.try_conn()
        .map_err(|e| e.to_string())
        .and_then(|mut c| try_status(&mut c))
}

/// `SYNC.STATUS` fields shown in failure messages.
pub const BRIEF_FIELDS: &[&str] = &[
    "link",
    "sent_seq",
    "acked_seq",
    "applied_seq",
    "backlog_bytes",
    "pending_keys",
    "ops_captured",
    "ops_sent",
    "ops_applied",
    "conflicts_lost",
    "conflicts_merged",
    "partial_syncs",
    "dirty_key_syncs",
    "full_syncs",
    "bytes_sent",
    "bytes_received",
    "next_resync",
    "last_error",
];

/// One line with the sync state of `s`, for messages.
pub fn brief(s: &Server) -> String {
    match try_status_of(s) {
        Ok(m) => BRIEF_FIELDS
            .iter()
            .map(|f| format!("{f}={}", m.get(*f).map(String::as_str).unwrap_or("?")))
            .collect::<Vec<_>>()
            .join(" "),
        Err(e) => format!("<{e}>"),
    }
}

/// A numeric `SYNC.STATUS` field of `s`.
pub fn stat(s: &Server, field: &str) -> u64 {
    status_u64(&mut s.conn(), field)
}

/// A `SYNC.STATUS` field of `s` as text.
pub fn stat_str(s: &Server, field: &str) -> String {
    status(&mut s.conn())
        .get(field)
        .cloned()
        .unwrap_or_else(|| panic!("SYNC.STATUS of `{}` has no field {field:?}", s.name()))
}

/// Waits until both sides are linked and nothing is left un-acknowledged
/// (`pending_keys` and `backlog_bytes` are 0): the steady state after a fault.
pub fn wait_quiet(pair: &Pair, timeout: Duration) {
    let quiet = |s: &Server| {
        try_status_of(s).is_ok_and(|m| {
            let f = |k: &str| m.get(k).map(String::as_str).unwrap_or("?").to_string();
            f("link") == "up" && f("pending_keys") == "0" && f("backlog_bytes") == "0"
        })
    };
    wait_for_state(
        "both sides linked with nothing un-acknowledged",
        timeout,
        || {
            if quiet(&pair.a) && quiet(&pair.b) {
                Ok(())
            } else {
                Err(format!("a: {}\nb: {}", brief(&pair.a), brief(&pair.b)))
            }
        },
    );
}

/// Waits until `s` reports `link` other than `up` (after a cut).
pub fn wait_link_not_up(s: &Server, timeout: Duration) {
    wait_for_state(
        &format!("link of `{}` to leave `up`", s.name()),
        timeout,
        || {
            let m = try_status_of(s)?;
            match m.get("link").map(String::as_str) {
                Some("up") => Err(brief(s)),
                _ => Ok(()),
            }
        },
    );
}

/// Runs `SYNC.STATUS` and returns its fields, or the error as text. Accepts the RESP2 flat array
/// `field, value, field, value, ...` (and a RESP3 map); values become strings.
pub fn try_status(conn: &mut redis::Connection) -> Result<HashMap<String, String>, String> {
    let reply: Value = redis::cmd("SYNC.STATUS")
        .query(conn)
        .map_err(|e| format!("SYNC.STATUS failed: {e}"))?;
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(format!(
                    "SYNC.STATUS returned an odd-length array: {items:?}"
                ));
            }
            let mut it = items.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        Value::Map(pairs) => pairs,
        other => {
            return Err(format!(
                "SYNC.STATUS returned an unexpected reply: {other:?}"
            ))
        }
    };
    Ok(pairs
        .iter()
        .map(|(k, v)| (value_to_string(k), value_to_string(v)))
        .collect())
}

/// Run one command given as words; a failure fails the test, naming the command.
pub fn cmd(c: &mut redis::Connection, args: &[&str]) -> redis::Value {
    let mut q = redis::cmd(args[0]);
    for a in &args[1..] {
        q.arg(*a);
    }
    q.query(c)
        .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
}

/// `SYNC.STATUS` as a field -> value map; panics if the command fails (e.g. module not loaded).
pub fn status(conn: &mut redis::Connection) -> HashMap<String, String> {
    try_status(conn).unwrap_or_else(|e| panic!("{e}"))
}

/// One numeric `SYNC.STATUS` field; panics (showing the whole status) if absent or not a u64.
pub fn status_u64(conn: &mut redis::Connection, field: &str) -> u64 {
    let st = status(conn);
    match st.get(field).map(|v| v.parse::<u64>()) {
        Some(Ok(n)) => n,
        Some(Err(_)) => panic!(
            "SYNC.STATUS field {field:?} is not a u64: {:?}; full status: {}",
            st[field],
            fmt_status(&Ok(st.clone()))
        ),
        None => panic!(
            "SYNC.STATUS has no field {field:?}; full status: {}",
            fmt_status(&Ok(st.clone()))
        ),
    }
}

/// Polls `f` every ~20 ms until it returns true; panics mentioning `what` after `timeout`.
/// Use this instead of fixed sleeps so tests are both fast and robust.
pub fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(POLL);
    }
}

/// Like [`wait_for`], but `f` returns `Ok(value)` when done or `Err(description of the current
/// state)`; the last description is included in the timeout panic, which makes failures
/// self-explanatory.
pub fn wait_for_state<T, F: FnMut() -> Result<T, String>>(
    what: &str,
    timeout: Duration,
    mut f: F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last state:\n{last}");
        }
        thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// Convergence snapshots
// ---------------------------------------------------------------------------------------------

/// Logical state of one key, as compared between the two servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyState {
    /// `TYPE key` (string, list, set, zset, hash, stream, or a module type name).
    pub key_type: String,
    /// `DEBUG DIGEST-VALUE key`: a digest of the value's content (not of TTL or stream groups).
    pub digest: String,
    /// `PEXPIRETIME key`: absolute expiry in ms, -1 if none.
    pub pexpiretime: i64,
    /// For streams: `XINFO STREAM key FULL COUNT 0` (entries, groups, consumers, PELs with
    /// delivery times/counts, ids, counters) rendered as text, minus [`STREAM_LAYOUT_FIELDS`]
    /// and [`STREAM_VOLATILE_CONSUMER_FIELDS`].
    pub stream_info: Option<String>,
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type={} pexpiretime={} digest={}",
            self.key_type, self.pexpiretime, self.digest
        )?;
        if let Some(info) = &self.stream_info {
            write!(f, "\n         stream={info}")?;
        }
        Ok(())
    }
}

/// All keys of the snapshotted dbs: `(db, key) -> state`.
pub type Snapshot = BTreeMap<(i64, Vec<u8>), KeyState>;

/// Snapshot of every key in `dbs` (see [`try_snapshot`]); panics on a Redis error.
pub fn snapshot(conn: &mut redis::Connection, dbs: &[i64]) -> Snapshot {
    try_snapshot(conn, dbs).unwrap_or_else(|e| panic!("snapshot failed: {e}"))
}

/// Reads the logical state of every key in `dbs`: SCAN (COUNT 1000) each db, and per key run
/// `PEXPIRETIME` first (which lazily deletes a key that is logically expired, so expired-but-not-
/// yet-collected keys do not show up), then `TYPE` (keys of type `none` are skipped),
/// `DEBUG DIGEST-VALUE`, and for streams `XINFO STREAM key FULL COUNT 0`. Needs
/// `--enable-debug-command yes`. The connection is `SELECT`ed back to db 0 afterwards.
pub fn try_snapshot(conn: &mut redis::Connection, dbs: &[i64]) -> Result<Snapshot, String> {
    let mut out = Snapshot::new();
    let mut result = Ok(());
    for &db in dbs {
        result = select(conn, db).and_then(|()| snapshot_db(conn, db, &mut out));
        if result.is_err() {
            break;
        }
    }
    let back = select(conn, 0);
    result.and(back).map(|()| out)
}

/// `SELECT db` with a readable error.
fn select(conn: &mut redis::Connection, db: i64) -> Result<(), String> {
    redis::cmd("SELECT")
        .arg(db)
        .query::<()>(conn)
        .map_err(|e| format!("SELECT {db}: {e}"))
}

/// Snapshots the currently selected db `db` into `out`.
fn snapshot_db(conn: &mut redis::Connection, db: i64, out: &mut Snapshot) -> Result<(), String> {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .map_err(|e| format!("SCAN in db {db}: {e}"))?;
        if !keys.is_empty() {
            snapshot_keys(conn, db, &keys, out)?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Reads the state of one SCAN batch of keys with a pipeline (one round trip per batch).
fn snapshot_keys(
    conn: &mut redis::Connection,
    db: i64,
    keys: &[Vec<u8>],
    out: &mut Snapshot,
) -> Result<(), String> {
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("PEXPIRETIME").arg(k);
        pipe.cmd("TYPE").arg(k);
        pipe.cmd("DEBUG").arg("DIGEST-VALUE").arg(k);
    }
    let replies: Vec<Value> = pipe
        .query(conn)
        .map_err(|e| format!("reading key states in db {db}: {e}"))?;
    if replies.len() != keys.len() * 3 {
        return Err(format!(
            "expected {} pipeline replies, got {}",
            keys.len() * 3,
            replies.len()
        ));
    }
    for (key, r) in keys.iter().zip(replies.chunks(3)) {
        let key_type = value_to_string(&r[1]);
        if key_type == "none" {
            continue;
        }
        let pexpiretime = match &r[0] {
            Value::Int(i) => *i,
            other => {
                return Err(format!(
                    "PEXPIRETIME {}: unexpected {other:?}",
                    show_key(key)
                ))
            }
        };
        let digest = match &r[2] {
            Value::Array(items) if items.len() == 1 => value_to_string(&items[0]),
            other => value_to_string(other),
        };
        let stream_info = if key_type == "stream" {
            match redis::cmd("XINFO")
                .arg("STREAM")
                .arg(key)
                .arg("FULL")
                .arg("COUNT")
                .arg(0)
                .query::<Value>(conn)
            {
                Ok(v) => Some(render_value(&normalize_stream_info(v))),
                // The stream may have expired between TYPE and XINFO: then it is simply gone.
                Err(e) => {
                    let now: String = redis::cmd("TYPE")
                        .arg(key)
                        .query(conn)
                        .map_err(|e2| format!("TYPE {}: {e2}", show_key(key)))?;
                    if now == "none" {
                        continue;
                    }
                    return Err(format!("XINFO STREAM {} FULL: {e}", show_key(key)));
                }
            }
        } else {
            None
        };
        let digest = if key_type == "zset" && std::env::var_os(SERVER_B_ENV).is_some() {
            zset_digest(conn, key)?
        } else {
            digest
        };
        out.insert(
            (db, key.clone()),
            KeyState {
                key_type,
                digest,
                pexpiretime,
                stream_info,
            },
        );
    }
    Ok(())
}

/// A sorted set's members and scores, the scores as parsed numbers. Used instead of
/// `DEBUG DIGEST-VALUE` when the two nodes run different versions: 7.0 digests a score printed
/// with `%.17g` ("1.1000000000000001"), 7.2+ its shortest form ("1.1"), so the same sorted set
/// has two digests.
fn zset_digest(conn: &mut redis::Connection, key: &[u8]) -> Result<String, String> {
    let items: Vec<(Vec<u8>, String)> = redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(conn)
        .map_err(|e| format!("ZRANGE {}: {e}", show_key(key)))?;
    let mut out = String::new();
    for (member, score) in items {
        let score: f64 = score
            .parse()
            .map_err(|e| format!("score {score:?} of {}: {e}", show_key(key)))?;
        out.push_str(&format!(
            "{:?}={score:?};",
            String::from_utf8_lossy(&member)
        ));
    }
    Ok(out)
}

/// A key as a quoted, escaped string for messages.
fn show_key(key: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(key))
}

/// Looks up `field` in a reply that is a map (RESP3) or a flat field/value array (RESP2).
fn field_mut<'a>(v: &'a mut Value, field: &str) -> Option<&'a mut Value> {
    match v {
        Value::Array(items) => items
            .chunks_exact_mut(2)
            .find(|kv| value_to_string(&kv[0]) == field)
            .map(|kv| &mut kv[1]),
        Value::Map(pairs) => pairs
            .iter_mut()
            .find(|(k, _)| value_to_string(k) == field)
            .map(|(_, v)| v),
        _ => None,
    }
}

/// Removes the given fields from a map / flat field-value array reply.
fn remove_fields(v: &mut Value, fields: &[&str]) {
    match v {
        Value::Array(items) if items.len() % 2 == 0 => {
            let old = std::mem::take(items);
            let mut it = old.into_iter();
            while let (Some(k), Some(val)) = (it.next(), it.next()) {
                if !fields.contains(&value_to_string(&k).as_str()) {
                    items.push(k);
                    items.push(val);
                }
            }
        }
        Value::Map(pairs) => pairs.retain(|(k, _)| !fields.contains(&value_to_string(k).as_str())),
        _ => {}
    }
}

/// Drops the fields that may differ between servers with equal logical state from an
/// `XINFO STREAM FULL` reply: [`STREAM_LAYOUT_FIELDS`] at the top level and
/// [`STREAM_VOLATILE_CONSUMER_FIELDS`] in `groups[*].consumers[*]`.
fn normalize_stream_info(mut info: Value) -> Value {
    remove_fields(&mut info, STREAM_LAYOUT_FIELDS);
    if let Some(Value::Array(groups)) = field_mut(&mut info, "groups") {
        for group in groups.iter_mut() {
            if let Some(Value::Array(consumers)) = field_mut(group, "consumers") {
                for consumer in consumers.iter_mut() {
                    remove_fields(consumer, STREAM_VOLATILE_CONSUMER_FIELDS);
                }
            }
        }
    }
    info
}

/// Compact, deterministic text form of a reply (strings quoted, arrays in `[..]`, maps in
/// `{..}`), used to compare and display stream metadata.
pub fn render_value(v: &Value) -> String {
    let join = |items: &[Value]| {
        items
            .iter()
            .map(render_value)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match v {
        Value::Nil => "nil".to_string(),
        Value::Int(i) => i.to_string(),
        Value::BulkString(b) => format!("{:?}", String::from_utf8_lossy(b)),
        Value::SimpleString(s) => format!("{s:?}"),
        Value::Okay => "OK".to_string(),
        Value::Array(items) => format!("[{}]", join(items)),
        Value::Set(items) => format!("set[{}]", join(items)),
        Value::Map(pairs) => format!(
            "{{{}}}",
            pairs
                .iter()
                .map(|(k, v)| format!("{}: {}", render_value(k), render_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => format!("{other:?}"),
    }
}

/// Compares two snapshots; `None` if equal, else a readable diff of the first `limit` differing
/// keys showing both sides' states (`<absent>` where a side lacks the key).
pub fn diff_snapshots(
    a: &Snapshot,
    b: &Snapshot,
    name_a: &str,
    name_b: &str,
    limit: usize,
) -> Option<String> {
    let all: BTreeSet<&(i64, Vec<u8>)> = a.keys().chain(b.keys()).collect();
    let differing: Vec<&(i64, Vec<u8>)> = all
        .iter()
        .copied()
        .filter(|k| a.get(*k) != b.get(*k))
        .collect();
    if differing.is_empty() {
        return None;
    }
    let show = |s: Option<&KeyState>| s.map_or_else(|| "<absent>".to_string(), |s| s.to_string());
    let mut text = format!(
        "{} of {} keys differ ({name_a} has {} keys, {name_b} has {}); first {}:\n",
        differing.len(),
        all.len(),
        a.len(),
        b.len(),
        differing.len().min(limit)
    );
    for k in differing.iter().take(limit) {
        text.push_str(&format!(
            "  db {} key {}\n    {name_a}: {}\n    {name_b}: {}\n",
            k.0,
            show_key(&k.1),
            show(a.get(*k)),
            show(b.get(*k))
        ));
    }
    Some(text)
}

/// One comparison of the two servers' snapshots: `Ok(())` if equal, else the diff (or the error
/// that prevented taking a snapshot).
pub fn compare_once(a: &Server, b: &Server, dbs: &[i64]) -> Result<(), String> {
    let take = |s: &Server| {
        s.try_conn()
            .map_err(|e| format!("connecting to `{}`: {e}", s.name()))
            .and_then(|mut c| try_snapshot(&mut c, dbs))
            .map_err(|e| format!("snapshot of `{}` failed: {e}", s.name()))
    };
    let (sa, sb) = (take(a)?, take(b)?);
    match diff_snapshots(&sa, &sb, a.name(), b.name(), 20) {
        None => Ok(()),
        Some(d) => Err(d),
    }
}

/// THE convergence check: polls until the snapshots ([`snapshot`]) of `a` and `b` over `dbs`
/// are equal, and on timeout panics with a diff of the first 20 differing keys.
pub fn assert_converged(a: &Server, b: &Server, dbs: &[i64], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut conns: Option<(redis::Connection, redis::Connection)> = None;
    loop {
        let attempt = (|| {
            if conns.is_none() {
                let ca = a
                    .try_conn()
                    .map_err(|e| format!("connecting to `{}`: {e}", a.name()))?;
                let cb = b
                    .try_conn()
                    .map_err(|e| format!("connecting to `{}`: {e}", b.name()))?;
                conns = Some((ca, cb));
            }
            let (ca, cb) = conns.as_mut().expect("connections were just set");
            let sa = try_snapshot(ca, dbs).map_err(|e| format!("snapshot of `{}`: {e}", a.name()));
            let sb = try_snapshot(cb, dbs).map_err(|e| format!("snapshot of `{}`: {e}", b.name()));
            match (sa, sb) {
                (Ok(sa), Ok(sb)) => Ok(diff_snapshots(&sa, &sb, a.name(), b.name(), 20)),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        })();
        let last = match attempt {
            Ok(None) => return,
            Ok(Some(diff)) => diff,
            Err(e) => {
                conns = None; // reconnect next time
                e
            }
        };
        if Instant::now() >= deadline {
            panic!(
                "servers `{}` (port {}) and `{}` (port {}) did not converge within {timeout:?} \
                 (dbs {dbs:?}):\n{last}",
                a.name(),
                a.port(),
                b.name(),
                b.port()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Proxy
// ---------------------------------------------------------------------------------------------

/// What a [`Proxy`] does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward bytes both ways as they arrive.
    Pass,
    /// Stop reading and forwarding (both directions); connections stay open.
    Stall,
    /// All connections were closed; new ones are accepted and closed at once.
    Cut,
    /// Forward each chunk this long after it was read, preserving order.
    Delay(Duration),
}

/// One proxied connection, kept so `cut()` and `Drop` can shut both sockets down.
struct ProxyConn {
    id: u64,
    client: TcpStream,
    upstream: TcpStream,
    closed: Arc<AtomicBool>,
}

impl ProxyConn {
    /// Marks the connection closed and shuts down both sockets (wakes up all its threads).
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

/// Mode and live connections, under one lock so a connection cannot slip past `cut()`.
struct ProxyState {
    mode: ProxyMode,
    conns: Vec<ProxyConn>,
    next_id: u64,
}

/// State shared between the [`Proxy`] handle and its threads.
struct ProxyShared {
    target: SocketAddr,
    state: Mutex<ProxyState>,
    stop: AtomicBool,
    bytes_to_target: AtomicU64,
    bytes_to_client: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    connect_failures: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The first [`CAPTURE_LIMIT`] bytes forwarded, both directions, to inspect what crosses
    /// the wire.
    captured: Mutex<Vec<u8>>,
}

/// How many forwarded bytes a [`Proxy`] keeps for [`Proxy::captured`].
pub const CAPTURE_LIMIT: usize = 16 << 20;

impl ProxyShared {
    /// Current mode.
    fn mode(&self) -> ProxyMode {
        lock(&self.state).mode
    }

    /// Closes and forgets connection `id` (no-op if already gone).
    fn close_conn(&self, id: u64) {
        let mut st = lock(&self.state);
        if let Some(pos) = st.conns.iter().position(|c| c.id == id) {
            st.conns.swap_remove(pos).close();
        }
    }

    /// Whether threads of a connection should exit.
    fn done(&self, closed: &AtomicBool) -> bool {
        self.stop.load(Ordering::SeqCst) || closed.load(Ordering::SeqCst)
    }
}

/// In-test TCP proxy (std threads only) to simulate network trouble between the two modules.
///
/// Listens on a free 127.0.0.1 port and forwards every accepted connection to `target`, in both
/// directions. The mode can be changed at any time ([`pass`](Self::pass),
/// [`stall`](Self::stall), [`cut`](Self::cut), [`delay`](Self::delay)); threads notice within
/// ~20 ms and all stop when the proxy is dropped.
pub struct Proxy {
    port: u16,
    shared: Arc<ProxyShared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy in [`ProxyMode::Pass`] forwarding to `target`. The target need not be up
    /// yet: it is dialed per accepted connection (a failed dial closes the accepted connection).
    pub fn start(target: SocketAddr) -> Proxy {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("proxy: cannot bind a 127.0.0.1 listener");
        let port = listener.local_addr().expect("proxy: local_addr").port();
        reserve_port(port);
        listener
            .set_nonblocking(true)
            .expect("proxy: set_nonblocking on listener");
        let shared = Arc::new(ProxyShared {
            target,
            state: Mutex::new(ProxyState {
                mode: ProxyMode::Pass,
                conns: Vec::new(),
                next_id: 0,
            }),
            stop: AtomicBool::new(false),
            bytes_to_target: AtomicU64::new(0),
            captured: Mutex::new(Vec::new()),
            bytes_to_client: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
        });
        let sh = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name(format!("proxy-{port}-accept"))
            .spawn(move || accept_loop(listener, sh))
            .expect("proxy: spawning the acceptor thread");
        Proxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// A proxy forwarding to `127.0.0.1:<port>`.
    pub fn to_port(port: u16) -> Proxy {
        Proxy::start(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The port the proxy listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.shared.mode()
    }

    /// Sets the mode (see the shortcuts below).
    pub fn set_mode(&self, mode: ProxyMode) {
        if mode == ProxyMode::Cut {
            self.cut();
        } else {
            lock(&self.shared.state).mode = mode;
        }
    }

    /// Forward normally (also ends stall/cut/delay; new connections are accepted again).
    pub fn pass(&self) {
        lock(&self.shared.state).mode = ProxyMode::Pass;
    }

    /// Stop reading and forwarding in both directions; connections stay open, nothing new is
    /// buffered (bytes already read are held back until the mode changes).
    pub fn stall(&self) {
        lock(&self.shared.state).mode = ProxyMode::Stall;
    }

    /// Shut down (both directions, both sockets) every current connection right away, and accept
    /// and immediately close new connections until [`pass`](Self::pass).
    pub fn cut(&self) {
        let mut st = lock(&self.shared.state);
        st.mode = ProxyMode::Cut;
        for conn in st.conns.drain(..) {
            conn.close();
        }
    }

    /// Forward each chunk `d` after it was read (order preserved; simulates latency).
    pub fn delay(&self, d: Duration) {
        lock(&self.shared.state).mode = ProxyMode::Delay(d);
    }

    /// The first [`CAPTURE_LIMIT`] bytes this proxy forwarded (both directions, interleaved).
    pub fn captured(&self) -> Vec<u8> {
        lock(&self.shared.captured).clone()
    }

    /// Bytes forwarded client -> target.
    pub fn bytes_to_target(&self) -> u64 {
        self.shared.bytes_to_target.load(Ordering::SeqCst)
    }

    /// Bytes forwarded target -> client.
    pub fn bytes_to_client(&self) -> u64 {
        self.shared.bytes_to_client.load(Ordering::SeqCst)
    }

    /// Connections accepted and forwarded (connected to the target).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections accepted and closed at once because the proxy was cut.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Connections closed because the target could not be dialed.
    pub fn connect_failures(&self) -> u64 {
        self.shared.connect_failures.load(Ordering::SeqCst)
    }

    /// Connections currently being forwarded.
    pub fn active_connections(&self) -> usize {
        lock(&self.shared.state).conns.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for conn in lock(&self.shared.state).conns.drain(..) {
            conn.close();
        }
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        let handles = std::mem::take(&mut *lock(&self.shared.threads));
        for h in handles {
            let _ = h.join();
        }
    }
}

/// Whether an I/O error is a socket timeout (read/write timeouts surface as either kind).
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Acceptor thread: polls the non-blocking listener until the proxy is dropped.
fn accept_loop(listener: TcpListener, shared: Arc<ProxyShared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => handle_accept(client, &shared),
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Handles one accepted connection: refuse it if cut, else dial the target and start the four
/// forwarding threads (a reader and a writer per direction).
fn handle_accept(client: TcpStream, shared: &Arc<ProxyShared>) {
    let _ = client.set_nonblocking(false);
    let refuse = |s: &TcpStream| {
        let _ = s.shutdown(Shutdown::Both);
    };
    if shared.mode() == ProxyMode::Cut {
        refuse(&client);
        shared.refused.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let upstream = match TcpStream::connect_timeout(&shared.target, Duration::from_secs(1)) {
        Ok(s) => s,
        Err(_) => {
            refuse(&client);
            shared.connect_failures.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let clones = (|| {
        Ok::<_, io::Error>((
            client.try_clone()?,
            client.try_clone()?,
            upstream.try_clone()?,
            upstream.try_clone()?,
        ))
    })();
    let Ok((client_r, client_w, up_r, up_w)) = clones else {
        refuse(&client);
        refuse(&upstream);
        return;
    };
    let closed = Arc::new(AtomicBool::new(false));
    let id = {
        let mut st = lock(&shared.state);
        if st.mode == ProxyMode::Cut || shared.stop.load(Ordering::SeqCst) {
            refuse(&client);
            refuse(&upstream);
            shared.refused.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let id = st.next_id;
        st.next_id += 1;
        st.conns.push(ProxyConn {
            id,
            client,
            upstream,
            closed: Arc::clone(&closed),
        });
        id
    };
    shared.accepted.fetch_add(1, Ordering::SeqCst);

    let (tx_up, rx_up) = mpsc::channel::<(Instant, Vec<u8>)>();
    let (tx_down, rx_down) = mpsc::channel::<(Instant, Vec<u8>)>();
    let mut handles = Vec::with_capacity(4);
    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        thread::Builder::new()
            .name(name)
            .spawn(f)
            .expect("proxy: spawning a forwarding thread")
    };
    {
        let (sh, cl) = (Arc::clone(shared), Arc::clone(&closed));
        handles.push(spawn(
            format!("proxy-c{id}-read-client"),
            Box::new(move || pump_read(client_r, tx_up, &sh, &cl)),
        ));
    }
    {
        let (sh, cl) = (Arc::clone(shared), Arc::clone(&closed));
        handles.push(spawn(
            format!("proxy-c{id}-write-target"),
            Box::new(move || pump_write(rx_up, up_w, &sh, &cl, id, true)),
        ));
    }
    {
        let (sh, cl) = (Arc::clone(shared), Arc::clone(&closed));
        handles.push(spawn(
            format!("proxy-c{id}-read-target"),
            Box::new(move || pump_read(up_r, tx_down, &sh, &cl)),
        ));
    }
    {
        let (sh, cl) = (Arc::clone(shared), Arc::clone(&closed));
        handles.push(spawn(
            format!("proxy-c{id}-write-client"),
            Box::new(move || pump_write(rx_down, client_w, &sh, &cl, id, false)),
        ));
    }
    let mut threads = lock(&shared.threads);
    threads.retain(|h| !h.is_finished());
    threads.extend(handles);
}

/// Reader half of one direction: reads chunks (unless stalled) and queues them with the time
/// they are due. Ends on EOF/error/close, dropping the sender so the writer finishes up.
fn pump_read(
    mut src: TcpStream,
    tx: mpsc::Sender<(Instant, Vec<u8>)>,
    shared: &ProxyShared,
    closed: &AtomicBool,
) {
    let _ = src.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 * 1024];
    while !shared.done(closed) {
        match shared.mode() {
            ProxyMode::Stall => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            ProxyMode::Cut => return,
            ProxyMode::Pass | ProxyMode::Delay(_) => {}
        }
        match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                {
                    let mut cap = lock(&shared.captured);
                    let room = CAPTURE_LIMIT.saturating_sub(cap.len()).min(n);
                    cap.extend_from_slice(&buf[..room]);
                }
                // The delay in force when the bytes arrived (the mode may have changed while
                // this read was blocked).
                let delay = match shared.mode() {
                    ProxyMode::Delay(d) => d,
                    _ => Duration::ZERO,
                };
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

/// Writer half of one direction: writes queued chunks in order once due (holding them while
/// stalled), counts forwarded bytes, and closes the connection when the reader is gone or a
/// write fails.
fn pump_write(
    rx: mpsc::Receiver<(Instant, Vec<u8>)>,
    mut dst: TcpStream,
    shared: &ProxyShared,
    closed: &AtomicBool,
    id: u64,
    to_target: bool,
) {
    let _ = dst.set_write_timeout(Some(Duration::from_millis(20)));
    let counter = if to_target {
        &shared.bytes_to_target
    } else {
        &shared.bytes_to_client
    };
    loop {
        let (due, chunk) = match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(item) => item,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if shared.done(closed) {
                    return;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                shared.close_conn(id);
                return;
            }
        };
        loop {
            if shared.done(closed) {
                return;
            }
            match shared.mode() {
                ProxyMode::Stall => {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
                ProxyMode::Cut => return,
                _ => {}
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            thread::sleep((due - now).min(Duration::from_millis(10)));
        }
        // Count the chunk before writing it, so that once the peer has seen (and answered) these
        // bytes the counter already includes them; un-count what could not be written.
        counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        let uncount = |off: usize| {
            counter.fetch_sub((chunk.len() - off) as u64, Ordering::SeqCst);
        };
        let mut off = 0;
        while off < chunk.len() {
            if shared.done(closed) {
                uncount(off);
                return;
            }
            match dst.write(&chunk[off..]) {
                Ok(0) => {
                    uncount(off);
                    shared.close_conn(id);
                    return;
                }
                Ok(n) => off += n,
                Err(e) if is_timeout(&e) => {}
                Err(_) => {
                    uncount(off);
                    shared.close_conn(id);
                    return;
                }
            }
        }
    }
}

/// Waits until the server behind `c` counts exactly `n` blocked clients (`INFO clients`).
pub fn wait_blocked_clients(c: &mut redis::Connection, n: usize, timeout: Duration) {
    let want = format!("blocked_clients:{n}\r");
    wait_for("the client to block", timeout, || {
        redis::cmd("INFO")
            .arg("clients")
            .query::<String>(c)
            .is_ok_and(|info| info.contains(&want))
    });
}

/// Appends `n` entries `payload <prefix>-<i>` to stream `key` with `XADD *`, pipelined in
/// chunks.
pub fn fill_stream(c: &mut redis::Connection, key: &str, n: usize, prefix: &str) {
    for start in (0..n).step_by(50_000) {
        let mut p = redis::pipe();
        for i in start..n.min(start + 50_000) {
            p.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("payload")
                .arg(format!("{prefix}-{i:08}"))
                .ignore();
        }
        let _: () = p.query(c).expect("XADD pipeline");
    }
}
