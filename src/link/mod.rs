//! The link to the peer: sockets and threads, no Redis.
//!
//! Why its own threads: the Redis main thread never waits on the network.
//! A listener accepts, a dialer connects; each connection runs the
//! handshake and, if it is the one to keep, becomes the session: a writer
//! (this connection's thread) draining the outbox FIFO, and a reader
//! pushing inbound frames to the main thread.

pub mod dial;
pub mod fds;
pub mod handshake;
mod session;
pub mod tls;
pub mod transport;

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::core::protect;
use crate::core::stats::{LinkState, Stats};
use crate::log;
use crate::state::Shared;

use dial::DialError;
pub use session::Direction;
use tls::TlsSettings;

/// At most this many connections in handshake at once; more are closed at
/// once (a flood of connections must not exhaust threads or fds).
const MAX_HANDSHAKES: usize = 16;

static HANDSHAKES: AtomicUsize = AtomicUsize::new(0);

/// Bind the listener (at load, so a bad `listen` refuses the load) and start
/// the threads.
pub fn start(shared: Arc<Shared>) -> Result<(), String> {
    fds::install_fork_hook();
    let tls = match &shared.config.tls {
        Some(files) => Some(Arc::new(tls::load(files, &shared.config.peer)?)),
        None => None,
    };
    if tls.is_none() {
        log::notice("the link is not encrypted (set tls-cert-file, tls-key-file and tls-ca-file to encrypt it)");
    }
    // A host name is resolved here, once; the first address that binds is used.
    let listen = &shared.config.listen;
    let listener = TcpListener::bind((listen.host.as_str(), listen.port))
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let s1 = shared.clone();
    thread::Builder::new()
        .name("bisync-listen".into())
        .spawn({
            let tls = tls.clone();
            move || guard_thread("listener", || accept_loop(s1, listener, tls))
        })
        .map_err(|e| format!("cannot start the listener thread: {e}"))?;
    thread::Builder::new()
        .name("bisync-dial".into())
        .spawn(move || guard_thread("dialer", || dial_loop(shared, tls)))
        .map_err(|e| format!("cannot start the dialer thread: {e}"))?;
    Ok(())
}

/// Run a thread body; a panic is logged, never propagated.
fn guard_thread(what: &str, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        log::warning(&format!(
            "the {what} thread stopped after an internal error"
        ));
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener, tls: Option<Arc<TlsSettings>>) {
    let _fd = fds::register(listener.as_raw_fd());
    for conn in listener.incoming() {
        if shared.stopping() {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::verbose(&format!("accept failed: {e}"));
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if HANDSHAKES.fetch_add(1, Ordering::AcqRel) >= MAX_HANDSHAKES {
            HANDSHAKES.fetch_sub(1, Ordering::AcqRel);
            Stats::add(&shared.stats.link_errors, 1);
            let _ = stream.shutdown(std::net::Shutdown::Both);
            continue;
        }
        let s = shared.clone();
        let tls = tls.clone();
        let spawned = thread::Builder::new()
            .name("bisync-conn".into())
            .spawn(move || {
                guard_thread("connection", || {
                    session::run(&s, stream, Direction::Accepted, &HANDSHAKES, tls.as_deref());
                });
            });
        if spawned.is_err() {
            HANDSHAKES.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn dial_loop(shared: Arc<Shared>, tls: Option<Arc<TlsSettings>>) {
    let mut backoff = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    while !shared.stopping() {
        if shared.passive.load(Ordering::Relaxed) || session::active() {
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        if shared.stats.link() == LinkState::Down {
            shared.stats.set_link(LinkState::Connecting);
        }
        match dial::connect(&shared.config.peer, protect::protected(&shared.config)) {
            Ok(stream) => {
                HANDSHAKES.fetch_add(1, Ordering::AcqRel);
                let ok = session::run(
                    &shared,
                    stream,
                    Direction::Dialed,
                    &HANDSHAKES,
                    tls.as_deref(),
                );
                if ok {
                    backoff = Duration::from_millis(100);
                    continue;
                }
            }
            Err(e) => {
                match e {
                    DialError::Unreachable(why) => log::verbose(&why),
                    DialError::Refused(why) => {
                        // Logged at warning level once per distinct reason;
                        // recorded every time (its age says it is current).
                        if shared.last_error() != why {
                            log::warning(&why);
                        }
                        shared.set_error(why);
                    }
                }
                if !session::active() {
                    shared.stats.set_link(LinkState::Connecting);
                }
            }
        }
        // Jitter: two nodes that keep dialing each other at the same moment
        // would keep meeting in the same handshake race (core::link_slot).
        thread::sleep(backoff + jitter(backoff / 2));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A random duration below `max`.
fn jitter(max: Duration) -> Duration {
    let mut b = [0u8; 4];
    let r = getrandom::getrandom(&mut b).map_or(0, |()| u32::from_le_bytes(b));
    let max_us = max.as_micros().min(u128::from(u32::MAX)) as u32;
    Duration::from_micros(u64::from(r % max_us.max(1)))
}
