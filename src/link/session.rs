//! One connection: handshake, then (if kept) the replication session.

use std::io::{BufReader, BufWriter, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::fds;
use super::handshake::{check_hello, peer_position, PRE_AUTH_FRAME_LIMIT};
use super::tls::TlsSettings;
use super::transport::{Link, LinkReader, LinkWriter};
use crate::core::auth::{self, SessionKeys};
use crate::core::codec::{self, CodecError};
use crate::core::inbound_budget;
use crate::core::link_slot::{claims_changed, ClaimOutcome, Slot};
use crate::core::outbox::{Item, ResumePlan};
use crate::core::pairing::{decide, PairInfo, Role};
use crate::core::protocol::{Frame, Hello, Resume, PROTOCOL_VERSION};
use crate::core::stats::{LinkState, Stats};
use crate::log;
use crate::state::{Inbound, Shared};

/// Who opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We dialed the peer.
    Dialed,
    /// The peer dialed us.
    Accepted,
}

/// A peer must complete its hello within this time.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// Idle links send a ping this often.
const PING_EVERY: Duration = Duration::from_secs(1);
/// A link silent for this long is dead.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer that does not drain our writes for this long is dead. Longer than
/// the read timeout: a busy peer applying a large backlog reads slowly but
/// is alive (a dead one is noticed by the reader first).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The pair's one link (see `core::link_slot`); the socket lets a
/// replaced session be shut down.
static SLOT: Mutex<Slot<TcpStream>> = Mutex::new(Slot::new());
static GEN: AtomicU64 = AtomicU64::new(1);

fn slot() -> std::sync::MutexGuard<'static, Slot<TcpStream>> {
    SLOT.lock().unwrap_or_else(|p| p.into_inner())
}

/// Is a session running, or a connection about to start one? (The dialer
/// waits meanwhile.)
pub fn active() -> bool {
    slot().occupied()
}

fn is_current(gen: u64) -> bool {
    slot().is_current(gen)
}

/// Give up the link if `gen` holds it.
fn release(shared: &Shared, gen: u64) {
    let mut s = slot();
    if s.release(gen) && !s.occupied() {
        shared.stats.set_link(LinkState::Down);
    }
}

/// This node's hello, and the count of client writes its `empty` refers to.
fn our_hello(shared: &Shared, nonce: &[u8]) -> (Hello, u64) {
    let peer_stream = shared.peer_stream_id.load(Ordering::Relaxed);
    let applied = shared.outbox().applied_seq();
    let (empty, writes) = shared.dataset_empty();
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        node_id: shared.config.node_id.clone(),
        databases: shared.databases,
        rdb_version: shared.rdb_version,
        stream_id: shared.stream_id(),
        resume: (peer_stream != 0).then_some(Resume {
            stream_id: peer_stream,
            seq: applied,
        }),
        nonce: nonce.to_vec(),
        auth: shared.config.secret.is_some(),
        fresh: shared.fresh.load(Ordering::Relaxed),
        empty,
        source: shared.force_source.load(Ordering::Relaxed),
        overflowed: shared.table_overflowed.load(Ordering::Relaxed),
        restored: shared
            .restored()
            .filter(|_| shared.fresh.load(Ordering::Relaxed)),
        replayed_keys: if shared.fresh.load(Ordering::Relaxed) {
            shared
                .restored_replayed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        } else {
            Vec::new()
        },
    };
    (hello, writes)
}

fn pair_info(shared: &Shared, h: &Hello, peer: &Hello, peer_stream_recorded: u64) -> PairInfo {
    let _ = shared;
    PairInfo {
        fresh: h.fresh,
        empty: h.empty,
        source: h.source,
        overflowed: h.overflowed,
        knows_peer: peer_stream_recorded != 0 && peer_stream_recorded == peer.stream_id,
        restored: h.restored,
    }
}

fn fail(shared: &Shared, msg: String) {
    // A condition that repeats on every retry is logged once at warning level.
    if shared.last_error() == msg {
        log::verbose(&msg);
    } else {
        log::warning(&msg);
    }
    shared.set_error(msg);
    Stats::add(&shared.stats.link_errors, 1);
}

fn send(
    w: &mut impl Write,
    shared: &Shared,
    frame: &Frame,
    keys: Option<&mut SessionKeys>,
) -> Result<(), CodecError> {
    let bytes = codec::encode(frame)?;
    let n = codec::write_frame(w, &bytes, keys)?;
    Stats::add(&shared.stats.bytes_sent, n as u64);
    Ok(())
}

/// What a completed handshake hands to the session.
struct Handshaken {
    theirs: Hello,
    role: Role,
    gen: u64,
    /// (writer keys, reader keys) when the link is authenticated.
    keys: Option<(SessionKeys, SessionKeys)>,
    /// The halves the handshake used (a TLS reader may already hold the
    /// peer's first session bytes).
    reader: LinkReader,
    writer: LinkWriter,
}

/// Handshake on `stream` and, if this connection is kept, run the session
/// until it ends. Returns true if a session ran.
pub fn run(
    shared: &Arc<Shared>,
    stream: TcpStream,
    dir: Direction,
    handshakes: &AtomicUsize,
    tls: Option<&TlsSettings>,
) -> bool {
    // `stream` outlives `fd` (parameters drop after locals): the
    // descriptor leaves the fork registry before it is closed, so a forked
    // child never closes a number Redis has reused. The link works on
    // duplicates of it.
    let fd = fds::register(stream.as_raw_fd());
    // A socket the fork registry cannot hold is not used (checked before the
    // handshake, which would claim the pair's one link).
    let hs = fd
        .is_registered()
        .then(|| connect(shared, &stream, dir, tls))
        .flatten();
    handshakes.fetch_sub(1, Ordering::AcqRel);
    let Some((link, done)) = hs else {
        let _ = stream.shutdown(Shutdown::Both);
        return false;
    };
    session(shared, link.socket(), done);
    true
}

/// TLS (if configured) and the handshake, on a duplicate of `stream`.
fn connect(
    shared: &Arc<Shared>,
    stream: &TcpStream,
    dir: Direction,
    tls: Option<&TlsSettings>,
) -> Option<(Link, Handshaken)> {
    if shared.passive.load(Ordering::Relaxed) || !shared.ready.load(Ordering::Acquire) {
        return None;
    }
    // An incoming connection's port changes on every retry: leave it out,
    // so a fault that repeats is logged once (see `fail`).
    let peer_addr = match (stream.peer_addr(), dir) {
        (Ok(a), Direction::Dialed) => a.to_string(),
        (Ok(a), Direction::Accepted) => format!("{} (incoming)", a.ip()),
        (Err(_), _) => "an unknown address".to_string(),
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(HANDSHAKE_DEADLINE));
    let _ = stream.set_write_timeout(Some(HANDSHAKE_DEADLINE));
    if !active() {
        shared.stats.set_link(LinkState::Handshake);
    }
    // The deadline covers TLS and the whole hello, not each read: a peer
    // that trickles bytes is cut off.
    let deadline = Instant::now() + HANDSHAKE_DEADLINE;
    let stream = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            fail(shared, format!("cannot clone the link socket: {e}"));
            return None;
        }
    };
    let link = match tls {
        None => Link::plain(stream),
        Some(settings) => match Link::tls(stream, settings, dir, deadline) {
            Ok(link) => link,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::ConnectionReset
                    || e.kind() == std::io::ErrorKind::UnexpectedEof
                {
                    log::verbose(&format!(
                        "TLS handshake with {peer_addr}: connection closed ({e})"
                    ));
                } else {
                    fail(
                            shared,
                            format!("TLS handshake with {peer_addr} failed: {e} (both nodes need tls-cert-file, tls-key-file and tls-ca-file, with certificates from the same CA)"),
                        );
                }
                return None;
            }
        },
    };
    let done = handshake(shared, &link, dir, &peer_addr, deadline)?;
    Some((link, done))
}

fn handshake(
    shared: &Arc<Shared>,
    link: &Link,
    dir: Direction,
    peer_addr: &str,
    deadline: Instant,
) -> Option<Handshaken> {
    let (mut reader, mut w) = match link.split() {
        Ok(x) => x,
        Err(e) => {
            fail(shared, format!("cannot clone the link socket: {e}"));
            return None;
        }
    };
    let my_nonce = auth::nonce();
    // The hello is a snapshot of this node: the epoch and the write count
    // tell at the commit whether it still holds.
    let hello_epoch = slot().epoch();
    let (ours, writes_at_hello) = our_hello(shared, &my_nonce);
    if let Err(e) = send(&mut w, shared, &Frame::Hello(ours.clone()), None) {
        log::verbose(&format!(
            "handshake with {peer_addr}: cannot send hello: {e}"
        ));
        return None;
    }
    reader.set_deadline(Some(deadline));
    if !link.is_tls() {
        // 0x16 opens a TLS record; our hello opens with a small length.
        if let Ok(Some(0x16)) = reader.peek_first_byte() {
            fail(
                shared,
                format!("peer {peer_addr} speaks TLS but TLS is not configured here (tls-cert-file, tls-key-file, tls-ca-file)"),
            );
            return None;
        }
    }
    let theirs = match read_handshake_frame(shared, &mut reader, peer_addr, "a hello")? {
        Frame::Hello(h) => h,
        other => return unexpected(shared, peer_addr, "a hello", &other),
    };
    if let Err(why) = check_hello(&ours, &theirs) {
        let _ = send(&mut w, shared, &Frame::Refuse(why.clone()), None);
        fail(shared, format!("refused peer {peer_addr}: {why}"));
        return None;
    }
    let mut keys = None;
    if let Some(secret) = shared.config.secret.as_deref() {
        let mine = auth::proof(secret, &ours.node_id, &theirs.nonce, &my_nonce);
        if let Err(e) = send(&mut w, shared, &Frame::Proof(mine), None) {
            log::verbose(&format!(
                "handshake with {peer_addr}: cannot send proof: {e}"
            ));
            return None;
        }
        match read_handshake_frame(shared, &mut reader, peer_addr, "a proof")? {
            Frame::Proof(tag) => {
                if !auth::verify_proof(secret, &theirs.node_id, &my_nonce, &theirs.nonce, &tag) {
                    let _ = send(
                        &mut w,
                        shared,
                        &Frame::Refuse("authentication failed".into()),
                        None,
                    );
                    fail(shared, format!("peer {peer_addr} failed authentication: it does not know the shared secret"));
                    return None;
                }
            }
            other => return unexpected(shared, peer_addr, "a proof", &other),
        }
        let derive = || {
            SessionKeys::derive(
                secret,
                &ours.node_id,
                &my_nonce,
                &theirs.node_id,
                &theirs.nonce,
            )
        };
        keys = Some((derive(), derive()));
    }
    // Who syncs whom (both sides reach complementary answers).
    let mine = pair_info(
        shared,
        &ours,
        &theirs,
        shared.peer_stream_id.load(Ordering::Relaxed),
    );
    let their_info = pair_info(
        shared,
        &theirs,
        &ours,
        theirs.resume.map(|r| r.stream_id).unwrap_or(0),
    );
    let role = decide(mine, their_info, ours.node_id < theirs.node_id);
    if let Role::Refuse(why) = &role {
        let _ = send(
            &mut w,
            shared,
            &Frame::Refuse(why.clone()),
            keys.as_mut()
                .map(|k: &mut (SessionKeys, SessionKeys)| &mut k.0),
        );
        fail(
            shared,
            format!("not pairing with {}: {why}", theirs.node_id),
        );
        return None;
    }
    if !theirs.fresh && shared.force_source.load(Ordering::Relaxed) {
        // The peer completed a sync with this node: the operator's choice
        // of a first-contact source has served its purpose.
        shared.force_source.store(false, Ordering::Relaxed);
    }
    let dialer = match dir {
        Direction::Dialed => ours.node_id.clone(),
        Direction::Accepted => theirs.node_id.clone(),
    };
    let wkeys = keys.as_mut().map(|k| &mut k.0);
    // Commit: act only if our hello still describes this node and no other
    // connection is deciding (core::link_slot), then exchange Ready.
    let gen = GEN.fetch_add(1, Ordering::Relaxed);
    let clone = link.socket().try_clone().ok()?;
    // (The hello is rebuilt before the slot is locked: it takes the outbox
    // lock, which the writer holds while it asks the slot.)
    let (mut now, writes_now) = our_hello(shared, &my_nonce);
    now.empty &= writes_now == writes_at_hello;
    let outcome = match claims_changed(&ours, &now) {
        Some(why) => ClaimOutcome::Retry(why),
        None => slot().claim(gen, &dialer, hello_epoch, clone),
    };
    match outcome {
        ClaimOutcome::Claimed { replaced } => {
            if let Some(old) = replaced {
                let _ = old.shutdown(Shutdown::Both);
            }
        }
        ClaimOutcome::Retry(why) => {
            log::verbose(&format!(
                "handshake with {}: retrying ({why})",
                theirs.node_id
            ));
            let _ = send(&mut w, shared, &Frame::Retry(why.into()), wkeys);
            return None;
        }
        ClaimOutcome::Duplicate => {
            log::verbose(&format!(
                "dropping duplicate connection with {}",
                theirs.node_id
            ));
            let _ = send(
                &mut w,
                shared,
                &Frame::Retry("a link between these nodes already exists".into()),
                wkeys,
            );
            return None;
        }
    }
    let ready = send(&mut w, shared, &Frame::Ready, wkeys)
        .map_err(|e| format!("cannot send ready: {e}"))
        .and_then(|()| {
            let read = match keys.as_mut() {
                Some(k) => {
                    codec::read_frame_authenticated(&mut reader, PRE_AUTH_FRAME_LIMIT, &mut k.1)
                }
                None => codec::read_frame_sized(&mut reader, PRE_AUTH_FRAME_LIMIT),
            };
            match read {
                Ok((Frame::Ready, n)) => {
                    Stats::add(&shared.stats.bytes_received, n as u64);
                    Ok(())
                }
                Ok((Frame::Retry(why), _)) => {
                    Err(format!("peer asked to retry: {}", sanitize(&why)))
                }
                Ok((Frame::Refuse(why), _)) => Err(format!("peer refused: {}", sanitize(&why))),
                Ok((other, _)) => Err(format!("expected ready, got {}", frame_name(&other))),
                Err(e) => Err(format!("waiting for ready: {e}")),
            }
        });
    let committed = ready.is_ok() && slot().commit(gen);
    if !committed {
        release(shared, gen);
        log::verbose(&format!(
            "handshake with {}: not committed ({})",
            theirs.node_id,
            ready.err().unwrap_or_else(|| "the claim was lost".into())
        ));
        return None;
    }
    reader.set_deadline(None);
    Some(Handshaken {
        theirs,
        role,
        gen,
        keys,
        reader,
        writer: w,
    })
}

/// Read one pre-authentication frame of the handshake. A refusal, a
/// closed or reset connection, or a read error ends the handshake (logged,
/// and recorded when it is a fault): `None`.
fn read_handshake_frame(
    shared: &Shared,
    reader: &mut LinkReader,
    peer_addr: &str,
    what: &str,
) -> Option<Frame> {
    match codec::read_frame_sized(reader, PRE_AUTH_FRAME_LIMIT) {
        Ok((Frame::Retry(why), _)) => {
            log::verbose(&format!(
                "handshake with {peer_addr}: the peer asked to retry ({})",
                sanitize(&why)
            ));
            None
        }
        Ok((Frame::Refuse(why), _)) => {
            fail(
                shared,
                format!("peer {peer_addr} refused the link: {}", sanitize(&why)),
            );
            None
        }
        Ok((frame, n)) => {
            Stats::add(&shared.stats.bytes_received, n as u64);
            Some(frame)
        }
        Err(CodecError::Closed) => {
            log::verbose(&format!("handshake with {peer_addr}: connection closed"));
            None
        }
        // A reset while both sides dial at once is the duplicate-connection
        // rule at work, not a fault: keep it out of the warning log.
        Err(CodecError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            log::verbose(&format!(
                "handshake with {peer_addr}: connection reset ({e})"
            ));
            None
        }
        Err(e) => {
            let hint = if e.to_string().contains("fatal alert") {
                " (the peer refused this node's TLS certificate or its CA)"
            } else {
                ""
            };
            fail(
                shared,
                format!("handshake with {peer_addr} failed while reading {what}: {e}{hint}"),
            );
            None
        }
    }
}

fn unexpected<T>(shared: &Shared, peer_addr: &str, what: &str, got: &Frame) -> Option<T> {
    fail(
        shared,
        format!(
            "handshake with {peer_addr}: expected {what}, got {}",
            frame_name(got)
        ),
    );
    None
}

fn sanitize(s: &str) -> String {
    s.chars()
        .take(300)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello(_) => "hello",
        Frame::Refuse(_) => "refuse",
        Frame::Proof(_) => "proof",
        Frame::Batch(_) => "batch",
        Frame::Ack(_) => "ack",
        Frame::Ping => "ping",
        Frame::Ready => "ready",
        Frame::Retry(_) => "retry",
    }
}

fn session(shared: &Arc<Shared>, stream: &TcpStream, done: Handshaken) {
    let Handshaken {
        theirs,
        role,
        gen,
        keys,
        reader: link_reader,
        writer: link_writer,
    } = done;
    let (mut wkeys, rkeys) = match keys {
        Some((w, r)) => (Some(w), Some(r)),
        None => (None, None),
    };
    let peer = theirs.node_id.clone();
    shared.set_peer_node_id(&peer);
    shared
        .peer_rdb_version
        .store(theirs.rdb_version, Ordering::Relaxed);
    shared.drop_session.store(false, Ordering::Relaxed);
    // Before the reader can queue a frame: a target's own scan stops and
    // its discard is requested, so the main thread never applies the
    // source's data on top of the local data it replaces.
    let entry = enter_role(shared, &role);
    // The main thread learns of the session before any of its frames.
    let _ = shared.inbound_tx.send(Inbound::SessionStart {
        stream_id: theirs.stream_id,
        node_id: peer.clone(),
    });
    shared.wake_main();
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let alive = Arc::new(AtomicBool::new(true));
    let reader_stream = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            fail(shared, format!("cannot clone the link socket: {e}"));
            end(shared, stream, gen);
            return;
        }
    };
    let (s2, a2) = (shared.clone(), alive.clone());
    let reader = thread::Builder::new()
        .name("bisync-read".into())
        .spawn(move || {
            super::guard_thread("reader", || {
                read_loop(&s2, reader_stream, link_reader, &a2, gen, rkeys)
            });
        });
    if reader.is_err() {
        fail(shared, "cannot start the link reader thread".into());
        end(shared, stream, gen);
        return;
    }
    shared.stats.set_link(LinkState::Up);
    log::notice(&format!("link up with peer {peer}"));
    if let Err(e) = write_loop(
        shared,
        link_writer,
        &theirs,
        entry,
        &alive,
        gen,
        wkeys.as_mut(),
    ) {
        if alive.load(Ordering::Relaxed) && is_current(gen) {
            fail(shared, format!("link to {peer} lost while writing: {e}"));
        }
    }
    alive.store(false, Ordering::Relaxed);
    end(shared, stream, gen);
    if let Ok(h) = reader {
        let _ = h.join();
    }
    log::notice(&format!("link down with peer {peer}"));
}

fn end(shared: &Shared, stream: &TcpStream, gen: u64) {
    let _ = stream.shutdown(Shutdown::Both);
    release(shared, gen);
}

/// Let the main thread apply what the peer's previous process sent and is
/// still queued here: the resume plan (made by the main thread, see
/// `glue::fullsync::start_source`) must see those batches in the history.
/// The wait is bounded (the new session may already be sending).
fn drain_previous_session(shared: &Shared) {
    let until = Instant::now() + Duration::from_secs(2);
    while !shared.inbound_rx.is_empty() && Instant::now() < until {
        shared.wake_main();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A session's role, and what it changed before the reader started.
struct RoleEntry<'a> {
    role: &'a Role,
    /// A full resync of ours the peer had not taken whole when the session began.
    in_flight: bool,
    /// Target only: that resync was stopped, so this session needs a resync of its own.
    stopped_ours: bool,
    /// Target that discards its data: the last batch of our stream before the
    /// discard was requested; the discard's resync batch comes after it.
    reset_after: Option<u64>,
}

/// Take the parts of a role that must precede every frame of the session
/// (the reader applies frames as soon as it starts): a target stops a full
/// resync of its own, and one that takes the peer's whole dataset asks the
/// main thread to discard its local writes. The writer learns where our
/// stream stood before that discard, so it waits for the discard's own batch.
fn enter_role<'a>(shared: &Shared, role: &'a Role) -> RoleEntry<'a> {
    let in_flight = shared.source_running.load(Ordering::Relaxed)
        || shared.source_done_seq.load(Ordering::Relaxed) != 0
        || shared.full_sync_requested.load(Ordering::Relaxed);
    shared
        .target_expected
        .store(matches!(role, Role::Target { .. }), Ordering::Relaxed);
    let mut stopped_ours = false;
    if let Role::Target { .. } = role {
        shared.target_cancel.store(false, Ordering::Relaxed);
        if in_flight {
            // The peer's data wins now: stop our scan before asking for
            // this session's resync, which skips the chunks queued.
            shared.full_sync_requested.store(false, Ordering::Relaxed);
            shared.source_done_seq.store(0, Ordering::Relaxed);
            shared.echo_applied.store(false, Ordering::Relaxed);
            shared.source_cancel.store(true, Ordering::Relaxed);
            stopped_ours = true;
        }
    }
    let reset_after = if matches!(
        role,
        Role::Target {
            discard_local: true
        }
    ) {
        let after = shared.outbox().last_seq();
        shared.target_reset_requested.store(true, Ordering::Release);
        shared.wake_main();
        Some(after)
    } else {
        // A reset asked for by an earlier session that took another role.
        shared
            .target_reset_requested
            .store(false, Ordering::Relaxed);
        None
    };
    RoleEntry {
        role,
        in_flight,
        stopped_ours,
        reset_after,
    }
}

fn write_loop(
    shared: &Arc<Shared>,
    stream: LinkWriter,
    theirs: &Hello,
    entry: RoleEntry,
    alive: &AtomicBool,
    gen: u64,
    mut keys: Option<&mut SessionKeys>,
) -> Result<(), CodecError> {
    let mut w = BufWriter::with_capacity(64 * 1024, stream);
    let delay = shared.debug_start_delay_ms.load(Ordering::Relaxed);
    let until = Instant::now() + Duration::from_millis(delay);
    while Instant::now() < until {
        if !alive.load(Ordering::Relaxed) || !is_current(gen) || shared.stopping() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let peer_pos = peer_position(shared.stream_id(), theirs);
    // Decide how the peer catches up.
    let plan = shared.outbox().plan_resume(peer_pos);
    let mut cursor;
    let mut needs_resync =
        plan == ResumePlan::NeedResync || shared.resync_requested.load(Ordering::Relaxed);
    let role = entry.role;
    let in_flight = entry.in_flight;
    needs_resync |= entry.stopped_ours;
    if *role == Role::Source {
        // A full resync this node was receiving is over.
        shared.target_cancel.store(true, Ordering::Relaxed);
    }
    // A full resync of ours the backlog can no longer serve starts again
    // (the peer may have missed chunks, and waits for its end).
    let full = *role == Role::Source || (*role == Role::Stream && needs_resync && in_flight);
    // A peer restarted from a snapshot with its pairing state: send only
    // what changed since, if the history can name it (`core::restart`).
    let resume = match (role, theirs.restored) {
        (Role::Source, Some(saved))
            if theirs.fresh
                && (!in_flight || shared.resume_in_flight.load(Ordering::Relaxed))
                && !theirs.overflowed
                && !shared.table_overflowed.load(Ordering::Relaxed) =>
        {
            drain_previous_session(shared);
            Some(saved)
        }
        _ => None,
    };
    // A restored node: the peer's position in our stream acknowledges our
    // restored table before the dirty-key resync re-sends what is left.
    if shared.restored().is_some() && peer_pos > 0 {
        shared.handshake_ack.store(peer_pos, Ordering::Release);
    }
    let discard_local = matches!(
        role,
        Role::Target {
            discard_local: true
        }
    );
    if !matches!(role, Role::Target { .. }) {
        // From now on this node's data is authoritative toward the peer.
        shared.fresh.store(false, Ordering::Relaxed);
        if shared.restored().is_some() {
            shared.clear_restored();
            if *role == Role::Stream {
                // Both nodes restarted from matching snapshots: resumed.
                Stats::add(&shared.stats.restart_resumes, 1);
                log::notice("restart resume: both nodes restarted from snapshots that hold each other's batches; streaming on");
            }
        }
    }
    if !needs_resync && !full && !discard_local {
        let (batches, ack, end) = shared.outbox().start_partial(peer_pos);
        if peer_pos > 0 || !batches.is_empty() {
            Stats::add(&shared.stats.partial_syncs, 1);
            log::notice(&format!(
                "partial resync: resending {} batches after seq {peer_pos}",
                batches.len()
            ));
        }
        for item in batches {
            write_item(&mut w, shared, item, keys.as_deref_mut())?;
        }
        send(&mut w, shared, &Frame::Ack(ack), keys.as_deref_mut())?;
        w.flush()?;
        cursor = end;
    } else {
        let after = entry
            .reset_after
            .unwrap_or_else(|| shared.outbox().last_seq());
        if discard_local {
            // The discard itself was requested before the reader started.
            log::notice(&format!(
                "taking the dataset of peer {} (full resync)",
                theirs.node_id
            ));
        } else if let Some(saved) = resume {
            log::notice(&format!(
                "peer {} restarted from a snapshot: resuming it if the history covers it",
                theirs.node_id
            ));
            *shared.resume_from.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((saved, theirs.replayed_keys.clone()));
            shared.resume_in_flight.store(true, Ordering::Relaxed);
            shared.full_sync_requested.store(true, Ordering::Relaxed);
        } else if full {
            shared.resume_in_flight.store(false, Ordering::Relaxed);
            *shared.resume_from.lock().unwrap_or_else(|p| p.into_inner()) = None;
            log::notice(&format!("full resync of peer {} requested", theirs.node_id));
            shared.full_sync_requested.store(true, Ordering::Relaxed);
        } else {
            log::notice(&format!(
                "dirty-key resync: peer at seq {peer_pos} cannot be served from the backlog"
            ));
            Stats::add(&shared.stats.dirty_key_syncs, 1);
            // Release: the main thread that takes the request also sees the
            // handshake's acknowledgement stored above (`handshake_ack`).
            shared.resync_requested.store(true, Ordering::Release);
        }
        shared.wake_main();
        // Wait for the main thread to put the resync's first batch in the FIFO.
        let mut o = shared.outbox();
        loop {
            if let Some((_, index)) = o.resync_after(after.max(peer_pos)) {
                cursor = index;
                break;
            }
            if !alive.load(Ordering::Relaxed) || !is_current(gen) || shared.stopping() {
                return Ok(());
            }
            o = shared
                .outbox_cv
                .wait_timeout(o, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        // A full resync's images were read after the peer writes applied
        // before it: acknowledge those first (the acks queued before the
        // resync batch are skipped), or the peer adds its own increments on
        // top of images that hold them. Not for a dirty-key resync (it
        // re-sends older records, which such an ack would overtake: rule 1)
        // nor for a target that discarded its data.
        let seen = if full {
            o.resync_seen(theirs.stream_id)
        } else {
            None
        };
        // The resync batch (and whatever followed it), then the ack: the
        // ack must not overtake the flush the resync re-sends (rule 1).
        let (items, end) = o.items_from(cursor);
        let ack = o.applied_seq();
        o.mark_sent(end);
        drop(o);
        if let Some(seen) = seen {
            send(&mut w, shared, &Frame::Ack(seen), keys.as_deref_mut())?;
        }
        for item in items {
            write_item(&mut w, shared, item, keys.as_deref_mut())?;
        }
        send(&mut w, shared, &Frame::Ack(ack), keys.as_deref_mut())?;
        w.flush()?;
        cursor = end;
    }
    let mut last_write = Instant::now();
    loop {
        if !alive.load(Ordering::Relaxed) || !is_current(gen) || shared.stopping() {
            return Ok(());
        }
        if shared.drop_session.swap(false, Ordering::Relaxed)
            || shared.passive.load(Ordering::Relaxed)
        {
            return Ok(());
        }
        let items = {
            let mut o = shared.outbox();
            if o.end_index() <= cursor {
                o = shared
                    .outbox_cv
                    .wait_timeout(o, Duration::from_millis(250))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            let (items, end) = o.items_from(cursor);
            cursor = end;
            o.mark_sent(end);
            items
        };
        if items.is_empty() {
            if last_write.elapsed() >= PING_EVERY {
                send(&mut w, shared, &Frame::Ping, keys.as_deref_mut())?;
                w.flush()?;
                last_write = Instant::now();
            }
            continue;
        }
        for item in items {
            write_item(&mut w, shared, item, keys.as_deref_mut())?;
        }
        w.flush()?;
        last_write = Instant::now();
    }
}

fn write_item(
    w: &mut impl Write,
    shared: &Shared,
    item: Item,
    keys: Option<&mut SessionKeys>,
) -> Result<(), CodecError> {
    match item {
        Item::Batch { seq, bytes, ops } => {
            let n = codec::write_frame(w, &bytes, keys)?;
            Stats::add(&shared.stats.bytes_sent, n as u64);
            Stats::add(&shared.stats.ops_sent, u64::from(ops));
            Stats::add_max(&shared.stats.sent_seq, seq);
            Ok(())
        }
        Item::Ack(seq) => send(w, shared, &Frame::Ack(seq), keys),
    }
}

fn read_loop(
    shared: &Arc<Shared>,
    stream: TcpStream,
    link: LinkReader,
    alive: &AtomicBool,
    gen: u64,
    mut keys: Option<SessionKeys>,
) {
    let limit = shared.config.max_frame_size as usize;
    let mut r = BufReader::with_capacity(64 * 1024, link);
    let reason = loop {
        if !alive.load(Ordering::Relaxed) || shared.stopping() {
            break None;
        }
        let read = match keys.as_mut() {
            Some(k) => codec::read_frame_authenticated(&mut r, limit, k),
            None => codec::read_frame_sized(&mut r, limit),
        };
        let (frame, n) = match read {
            Ok(x) => x,
            Err(CodecError::Closed) => break Some("closed by the peer".to_string()),
            Err(CodecError::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break Some(format!("no data for {} s", READ_TIMEOUT.as_secs()))
            }
            Err(e) => break Some(e.to_string()),
        };
        Stats::add(&shared.stats.bytes_received, n as u64);
        let msg = match frame {
            Frame::Batch(b) => Inbound::Batch(b, n),
            Frame::Ack(s) => Inbound::Ack(s),
            Frame::Ping => continue,
            Frame::Refuse(why) => break Some(format!("peer ended the link: {}", sanitize(&why))),
            Frame::Hello(_) | Frame::Proof(_) | Frame::Ready | Frame::Retry(_) => {
                break Some("protocol error: unexpected handshake frame".to_string())
            }
        };
        // Back-pressure in bytes: wait until the main thread has taken enough
        // (see `core::inbound_budget`), but notice the session ending.
        if let Inbound::Batch(_, bytes) = &msg {
            let bytes = *bytes as u64;
            while !inbound_budget::may_queue(
                Stats::get(&shared.stats.inbound_bytes),
                bytes,
                inbound_budget::MAX_BYTES,
            ) {
                shared.wake_main();
                if !alive.load(Ordering::Relaxed) || shared.stopping() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let now = shared
                .stats
                .inbound_bytes
                .fetch_add(bytes, Ordering::Relaxed)
                + bytes;
            Stats::add_max(&shared.stats.inbound_bytes_peak, now);
        }
        // Back-pressure in messages: wait for room, but notice the session ending.
        let mut pending = msg;
        loop {
            match shared
                .inbound_tx
                .send_timeout(pending, Duration::from_millis(200))
            {
                Ok(()) => break,
                Err(crossbeam_channel::SendTimeoutError::Timeout(m)) => {
                    shared.wake_main();
                    if !alive.load(Ordering::Relaxed) || shared.stopping() {
                        shared.inbound_taken(&m);
                        return;
                    }
                    pending = m;
                }
                Err(crossbeam_channel::SendTimeoutError::Disconnected(m)) => {
                    shared.inbound_taken(&m);
                    return;
                }
            }
        }
        shared.wake_main();
    };
    let was_alive = alive.swap(false, Ordering::Relaxed);
    if let Some(why) = reason {
        if was_alive && is_current(gen) {
            let msg = format!("link lost: {why}");
            log::notice(&msg);
            if why.starts_with("closed") {
                shared.set_error(msg);
            } else {
                fail(shared, msg);
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    shared.outbox_cv.notify_all();
}
