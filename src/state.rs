//! State shared by the Redis main thread and the link threads.
//!
//! Why one place: the link threads must not touch Redis, and the glue must
//! not touch sockets; they meet here, through a mutex-guarded outbox (one
//! FIFO for batches and acks), a channel of inbound messages, atomics for
//! the counters, and a wake-up function the glue provides.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::core::config::Config;
use crate::core::outbox::Outbox;
use crate::core::protocol::Batch;
use crate::core::stats::Stats;

/// Messages from the link threads to the main thread, in the peer's stream order.
#[derive(Debug)]
pub enum Inbound {
    /// A session with the peer started; its stream id (a changed id resets
    /// the applied position) and node id.
    SessionStart {
        /// The peer's outgoing stream id.
        stream_id: u64,
        /// The peer's node id.
        node_id: String,
    },
    /// A batch to apply, and the bytes of its frame (counted in
    /// `Stats::inbound_bytes` while it waits).
    Batch(Batch, usize),
    /// The peer applied our stream up to this seq.
    Ack(u64),
}

/// How many inbound messages may wait for the main thread before the link
/// reader stops reading (back-pressure through TCP).
pub const INBOUND_CAPACITY: usize = 4096;

/// Everything both sides need.
pub struct Shared {
    /// Load-time configuration.
    pub config: Config,
    /// Counters.
    pub stats: Stats,
    /// Our outgoing stream id (random per pairing state; a node restarted
    /// from a snapshot that carried its state takes the saved one back, see
    /// [`Shared::stream_id`]).
    stream_id: AtomicU64,
    /// Which keys recent batches changed in both streams (`history-size`):
    /// what lets a restarted peer resume instead of taking a full resync.
    pub history: Mutex<crate::core::history::History>,
    /// The last own seq issued and the last peer seq applied, as plain
    /// atomics: the forked child that saves an RDB reads them without a
    /// lock a link thread may have held at the fork.
    pub own_seq_mirror: AtomicU64,
    /// See `own_seq_mirror`.
    pub applied_mirror: AtomicU64,
    /// The snapshot position this node restarted from, told to the peer
    /// until the resume (or a full resync) completes.
    pub restored: Mutex<Option<crate::core::restart::SavedPosition>>,
    /// Keys the AOF tail replayed after the restored snapshot: told to the
    /// peer with the position, which re-sends them.
    pub restored_replayed: Mutex<crate::core::restart::KeyList>,
    /// The peer's position in our stream, said in its hello, to acknowledge
    /// our restored table with before the dirty-key resync re-sends it.
    pub handshake_ack: AtomicU64,
    /// The snapshot position of a restarted peer to resume (set by the
    /// link, planned and served by the main thread's next resync start).
    pub resume_from: Mutex<
        Option<(
            crate::core::restart::SavedPosition,
            crate::core::restart::KeyList,
        )>,
    >,
    /// The resync of ours in flight (not acknowledged whole) is a restart
    /// resume: a session that breaks during it may resume again (it is
    /// idempotent), where a broken full resync starts over as a full one.
    pub resume_in_flight: AtomicBool,
    /// `databases` of this server.
    pub databases: u32,
    /// RDB version of this server's DUMP payloads.
    pub rdb_version: u32,
    /// The outgoing FIFO and backlog.
    outbox: Mutex<Outbox>,
    /// Signalled when the outbox grows or a session must end.
    pub outbox_cv: Condvar,
    /// Link threads → main thread.
    pub inbound_tx: Sender<Inbound>,
    /// Main thread side of `inbound_tx`.
    pub inbound_rx: Receiver<Inbound>,
    /// The peer's stream id our applied position refers to (0: none yet).
    pub peer_stream_id: AtomicU64,
    /// Text of the last error and when it was last recorded, for
    /// `SYNC.STATUS` (`last_error`, `last_error_age_ms`).
    last_error: Mutex<(String, Option<Instant>)>,
    /// Set while the module is passive (this server is a replica).
    pub passive: AtomicBool,
    /// Set when the module stops: threads exit.
    pub shutdown: AtomicBool,
    /// A reconnect must re-image the pending keys (backlog cannot serve it).
    pub resync_requested: AtomicBool,
    /// The un-acknowledged writes table overflowed: only a full resync helps.
    pub table_overflowed: AtomicBool,
    /// Wakes the Redis main loop (set by the glue).
    pub wake: fn(),
    /// The peer's node id, once a handshake told it.
    peer_node_id: Mutex<String>,
    /// The RDB version the peer's server speaks (its hello): the element
    /// self-check compares digests only between servers of one version.
    pub peer_rdb_version: std::sync::atomic::AtomicU32,
    /// The settings as changed at run time (CONFIG SET).
    settings: Mutex<Config>,
    max_pending_keys: AtomicU64,
    max_clock_skew_ms: AtomicU64,
    apply_budget: AtomicU64,
    ship_evictions: AtomicBool,
    /// Not synced with the peer since this process started (see `core::pairing`).
    pub fresh: AtomicBool,
    /// The current session made this node the target of a full resync
    /// whose begin has not been applied yet. Why: the sweep of an earlier
    /// resync can end in between and clear `fresh`; a write made then on an
    /// untracked table must still be kept as untracked (see
    /// [`Shared::keeps_untracked_writes`]), or the source's older image
    /// replaces it here while the peer applies it (found by the simulation).
    pub target_expected: AtomicBool,
    /// The main loop has run once (the dataset is loaded and counted).
    pub ready: AtomicBool,
    /// Whether the dataset held no keys when the main thread last counted,
    /// packed with `local_writes` at that moment (see [`Shared::dataset_empty`]).
    empty_mark: AtomicU64,
    /// Times a client write made the dirty log non-empty since this node started.
    local_writes: AtomicU64,
    /// Seq of the batch that ended the last full resync this node sent
    /// (0: none pending): its acknowledgement ends `force_source`.
    pub source_done_seq: AtomicU64,
    /// The operator chose this node's data to win a first contact.
    pub force_source: AtomicBool,
    /// The link asks the main thread to drop this node's queued writes: it
    /// is about to take the peer's dataset.
    pub target_reset_requested: AtomicBool,
    /// Set when this node dropped its queued writes to take the peer's
    /// dataset, until that full resync is swept (or cancelled): meanwhile
    /// its lists need not match the peer's (see `list_commands_ship`).
    pub awaiting_full_sync: AtomicBool,
    /// Own batches up to this seq were discarded (operator chose the peer's data).
    pub superseded_upto: AtomicU64,
    /// The link asks the main thread to start a full resync as the source.
    pub full_sync_requested: AtomicBool,
    /// A full resync's scan of ours is running (set by the main thread).
    pub source_running: AtomicBool,
    /// The link asks the main thread to stop our full resync's scan: this
    /// node became the target (the peer's data wins). Set before the
    /// session's resync is requested, so no chunk follows that resync.
    pub source_cancel: AtomicBool,
    /// The link asks the main thread to forget a full resync it was
    /// receiving: this node became the source.
    pub target_cancel: AtomicBool,
    /// Our full resync began without a table (it had overflowed): until the
    /// peer took it whole, every key applied from the peer is re-shipped.
    /// Without the table this node cannot tell that a peer write is older
    /// than one of its own, which the peer may have let win; the image
    /// makes both sides end with the same key.
    pub echo_applied: AtomicBool,
    /// The main thread asks the link to end the current session.
    pub drop_session: AtomicBool,
    /// Set by the main loop when it has been woken and not yet run.
    pub wake_pending: AtomicBool,
    /// Test builds (`SYNC.DEBUG START-DELAY`): how long each new writer
    /// waits before it starts serving the peer, so that a test can order
    /// what the two sides do at a session start (races otherwise rare).
    pub debug_start_delay_ms: AtomicU64,
}

static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();

/// Top bit of `empty_mark`: the dataset was empty.
const EMPTY_BIT: u64 = 1 << 63;

impl Shared {
    /// May a list command ship as a command (`core::list_op`) now? Not while
    /// a full resync is in flight on either side, the table does not track,
    /// or this node has not synced yet: then the two lists need not match
    /// where no pending write says so, and the command could not replay
    /// exactly; the key ships as an image, which the resync rules settle
    /// (found by the simulation).
    pub fn list_commands_ship(&self) -> bool {
        !(self.fresh.load(Ordering::Relaxed)
            || self.table_overflowed.load(Ordering::Relaxed)
            || self.source_running.load(Ordering::Relaxed)
            || self.full_sync_requested.load(Ordering::Relaxed)
            || self.source_done_seq.load(Ordering::Relaxed) != 0
            || self.awaiting_full_sync.load(Ordering::Relaxed)
            || crate::glue::fullsync::target_receiving())
    }

    /// May a full resync into this node still come that must keep what its
    /// clients write now: it is fresh, or a session already made it the
    /// target?
    pub fn may_take_full_resync(&self) -> bool {
        self.fresh.load(Ordering::Relaxed) || self.target_expected.load(Ordering::Relaxed)
    }

    /// Are this node's writes kept apart as untracked (`fullsync::Target::untracked`):
    /// its table overflowed, so it cannot name them, and a full resync into
    /// it may come ([`Shared::may_take_full_resync`])? The sweep of that
    /// resync keeps them and re-sends them at its end.
    pub fn keeps_untracked_writes(&self) -> bool {
        self.table_overflowed.load(Ordering::Relaxed) && self.may_take_full_resync()
    }

    /// Build the shared state.
    pub fn new(
        config: Config,
        stream_id: u64,
        databases: u32,
        rdb_version: u32,
        wake: fn(),
    ) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(INBOUND_CAPACITY);
        let backlog = config.backlog_size as usize;
        let history = usize::try_from(config.history_size).unwrap_or(usize::MAX);
        Shared {
            settings: Mutex::new(config.clone()),
            max_pending_keys: AtomicU64::new(config.max_pending_keys),
            max_clock_skew_ms: AtomicU64::new(config.max_clock_skew_ms),
            apply_budget: AtomicU64::new(config.apply_budget),
            ship_evictions: AtomicBool::new(config.ship_evictions),
            config,
            stats: Stats::default(),
            stream_id: AtomicU64::new(stream_id),
            history: Mutex::new(crate::core::history::History::new(history)),
            own_seq_mirror: AtomicU64::new(0),
            applied_mirror: AtomicU64::new(0),
            restored: Mutex::new(None),
            restored_replayed: Mutex::new(Vec::new()),
            handshake_ack: AtomicU64::new(0),
            resume_from: Mutex::new(None),
            resume_in_flight: AtomicBool::new(false),
            databases,
            rdb_version,
            outbox: Mutex::new(Outbox::new(backlog)),
            outbox_cv: Condvar::new(),
            inbound_tx: tx,
            inbound_rx: rx,
            peer_stream_id: AtomicU64::new(0),
            last_error: Mutex::new((String::new(), None)),
            passive: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            resync_requested: AtomicBool::new(false),
            table_overflowed: AtomicBool::new(false),
            wake,
            peer_node_id: Mutex::new(String::new()),
            peer_rdb_version: std::sync::atomic::AtomicU32::new(0),
            drop_session: AtomicBool::new(false),
            fresh: AtomicBool::new(true),
            target_expected: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            empty_mark: AtomicU64::new(0),
            local_writes: AtomicU64::new(0),
            source_done_seq: AtomicU64::new(0),
            force_source: AtomicBool::new(false),
            full_sync_requested: AtomicBool::new(false),
            source_running: AtomicBool::new(false),
            source_cancel: AtomicBool::new(false),
            target_cancel: AtomicBool::new(false),
            echo_applied: AtomicBool::new(false),
            target_reset_requested: AtomicBool::new(false),
            awaiting_full_sync: AtomicBool::new(false),
            superseded_upto: AtomicU64::new(0),
            wake_pending: AtomicBool::new(false),
            debug_start_delay_ms: AtomicU64::new(0),
        }
    }

    /// Our outgoing stream id.
    pub fn stream_id(&self) -> u64 {
        self.stream_id.load(Ordering::Relaxed)
    }

    /// Take back the stream of a saved pairing state (before any handshake).
    pub fn restore_stream_id(&self, id: u64) {
        self.stream_id.store(id, Ordering::Relaxed);
    }

    /// Lock the history; poisoning is ignored (every operation leaves it
    /// consistent).
    pub fn history(&self) -> MutexGuard<'_, crate::core::history::History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The restart position this node still tells its peer, if any.
    pub fn restored(&self) -> Option<crate::core::restart::SavedPosition> {
        *self.restored.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The restart is settled (resumed, or replaced by a full resync).
    pub fn clear_restored(&self) {
        *self.restored.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.restored_replayed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Install the process-wide instance (once).
    pub fn install(shared: Shared) -> Result<Arc<Shared>, String> {
        let arc = Arc::new(shared);
        SHARED
            .set(arc.clone())
            .map_err(|_| "the module state already exists (module loaded twice?)".to_string())?;
        Ok(arc)
    }

    /// The process-wide instance, once loaded.
    pub fn get() -> Option<&'static Arc<Shared>> {
        SHARED.get()
    }

    /// Lock the outbox; a poisoned lock (a panic elsewhere) is still usable
    /// because every outbox operation leaves it consistent.
    pub fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record an error for `SYNC.STATUS`. The error is kept after the link
    /// recovers (it says what went wrong last); its age says when, and the
    /// same error happening again makes it young again.
    pub fn set_error(&self, msg: impl Into<String>) {
        let mut e = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        *e = (msg.into(), Some(Instant::now()));
    }

    /// The last error text.
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Milliseconds since the last error was recorded (0 if there was none).
    pub fn last_error_age_ms(&self) -> u64 {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .map(|t| t.elapsed().as_millis().min(u64::MAX as u128) as u64)
            .unwrap_or(0)
    }

    /// The peer's node id ("" before the first handshake).
    pub fn peer_node_id(&self) -> String {
        self.peer_node_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Remember the peer's node id.
    pub fn set_peer_node_id(&self, id: &str) {
        *self.peer_node_id.lock().unwrap_or_else(|p| p.into_inner()) = id.to_string();
    }

    /// Count a client write that made the dirty log non-empty (the keyspace
    /// handler, once per event-loop iteration at most). Any write after a
    /// moment when the log was empty bumps it, which is all
    /// [`Shared::dataset_empty`] needs.
    pub fn note_local_write(&self) {
        self.local_writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Record the main thread's count of the dataset (empty or not), as of
    /// the writes captured so far. `empty` must be false while the dirty log
    /// holds a change (a later write would not bump the count).
    pub fn set_dataset_empty(&self, empty: bool) {
        let w = self.local_writes.load(Ordering::Relaxed) & !EMPTY_BIT;
        let mark = if empty { w | EMPTY_BIT } else { w };
        self.empty_mark.store(mark, Ordering::Release);
    }

    /// Is the dataset empty now, and the count of captured writes that
    /// answer refers to. Empty means: counted empty by the main thread and
    /// no client write captured since, so a write of the current event-loop
    /// iteration (not yet counted) already makes it non-empty. A handshake
    /// compares the count at its hello and at its commit.
    pub fn dataset_empty(&self) -> (bool, u64) {
        let mark = self.empty_mark.load(Ordering::Acquire);
        let w = self.local_writes.load(Ordering::Acquire) & !EMPTY_BIT;
        (mark & EMPTY_BIT != 0 && mark & !EMPTY_BIT == w, w)
    }

    /// Ask the link to end the current session (it reconnects and resyncs).
    pub fn request_drop_session(&self) {
        self.drop_session.store(true, Ordering::Relaxed);
        self.outbox_cv.notify_all();
    }

    /// A queued message left the inbound queue (taken by the main thread,
    /// drained, or never sent): its frame's bytes no longer count against
    /// [`crate::core::inbound_budget::MAX_BYTES`].
    pub fn inbound_taken(&self, msg: &Inbound) {
        if let Inbound::Batch(_, bytes) = msg {
            let bytes = *bytes as u64;
            let _ =
                self.stats
                    .inbound_bytes
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                        Some(q.saturating_sub(bytes))
                    });
        }
    }

    /// Empty the inbound queue (a session ends in error: nothing queued from
    /// it may be applied).
    pub fn drain_inbound(&self) {
        while let Ok(m) = self.inbound_rx.try_recv() {
            self.inbound_taken(&m);
        }
    }

    /// Wake the main loop once, however many times it is asked before it runs.
    pub fn wake_main(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            (self.wake)();
        }
    }

    /// Current settings, for display.
    pub fn settings(&self) -> Config {
        self.settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Change a run-time setting (CONFIG SET); on error nothing changes.
    pub fn set_runtime(&self, name: &str, value: &str) -> Result<(), String> {
        let mut cfg = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = cfg.clone();
        next.set_runtime(name, value).map_err(|e| e.to_string())?;
        self.max_pending_keys
            .store(next.max_pending_keys, Ordering::Relaxed);
        self.max_clock_skew_ms
            .store(next.max_clock_skew_ms, Ordering::Relaxed);
        self.apply_budget
            .store(next.apply_budget, Ordering::Relaxed);
        self.ship_evictions
            .store(next.ship_evictions, Ordering::Relaxed);
        self.outbox().set_max_bytes(next.backlog_size as usize);
        self.history()
            .set_budget(usize::try_from(next.history_size).unwrap_or(usize::MAX));
        *cfg = next;
        Ok(())
    }

    /// Bound on the un-acknowledged writes table.
    pub fn max_pending_keys(&self) -> u64 {
        self.max_pending_keys.load(Ordering::Relaxed)
    }

    /// Largest accepted peer clock lead, ms.
    pub fn max_clock_skew_ms(&self) -> u64 {
        self.max_clock_skew_ms.load(Ordering::Relaxed)
    }

    /// Remote entries applied per event-loop iteration.
    pub fn apply_budget(&self) -> u64 {
        self.apply_budget.load(Ordering::Relaxed)
    }

    /// Ship evictions to the peer?
    pub fn ship_evictions(&self) -> bool {
        self.ship_evictions.load(Ordering::Relaxed)
    }

    /// Is the module stopping?
    pub fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }
}
