//! The pairing state saved with the data (RDB auxiliary data) and taken
//! back when the server starts from it.
//!
//! Why auxiliary data: Redis writes it into every RDB (and the RDB preamble
//! of an AOF) from the process that writes the snapshot, so for a
//! background save it runs in the forked child and describes exactly the
//! data of that snapshot. The child may have been forked while a link
//! thread held a lock: it only reads atomics and `try_lock`s, and saves
//! nothing (a later restart then takes a full resync) rather than wait.
//!
//! Limits (DESIGN §4, README "Restarts"): a snapshot whose node had not
//! synced, whose table had overflowed or that was in a full resync carries
//! no state. An AOF's tail (writes after its RDB preamble) is named to the
//! survivor, which re-sends those keys, while the names fit in the hello.

use std::ffi::CString;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use redis_module::{raw, Context};

use super::guard::guarded;
use crate::core::saved_state::{self, SavedState, SAVED_STATE_VERSION};
use crate::core::stats::Stats;
use crate::log;
use crate::state::Shared;

/// The name Redis records the auxiliary data under (9 characters).
const TYPE_NAME: &str = "bisync-ps";
/// Encoding version of the auxiliary field: one string, the encoded
/// [`SavedState`] (empty: nothing saved).
const ENCVER: c_int = 1;

/// State read from the RDB at start-up, taken at the first event-loop pass.
static LOADED: Mutex<Option<SavedState>> = Mutex::new(None);
/// The auxiliary data was read during this load: any write replayed after
/// it (an AOF tail) is newer than the saved state.
pub static AUX_READ: AtomicBool = AtomicBool::new(false);
/// Writes replayed after the auxiliary data (an AOF tail).
pub static REPLAYED_AFTER: AtomicU64 = AtomicU64::new(0);
/// The keys those writes touched, while their names fit in
/// [`REPLAYED_KEYS_MAX_BYTES`] (`None`: they did not; a full resync).
static REPLAYED_KEYS: Mutex<Option<ReplayedSet>> = Mutex::new(Some(ReplayedSet {
    keys: std::collections::BTreeSet::new(),
    bytes: 0,
}));

/// The replayed keys, ordered (the hello lists them once each), and the
/// bytes their names take (kept as they come: every replayed write asks).
struct ReplayedSet {
    keys: std::collections::BTreeSet<(u32, Vec<u8>)>,
    bytes: usize,
}
/// Bytes of key names (plus 8 per key) a restarted node may ask its peer to
/// re-send: they travel in the hello, which is read before authentication
/// and capped at 16 KiB (`link::handshake::PRE_AUTH_FRAME_LIMIT`).
pub const REPLAYED_KEYS_MAX_BYTES: usize = 8 * 1024;

/// A write replayed from the AOF tail touched `key` of `db` (loading, after
/// the auxiliary data).
pub fn note_replayed(db: u32, key: &[u8]) {
    REPLAYED_AFTER.fetch_add(1, Ordering::Relaxed);
    let mut g = REPLAYED_KEYS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(set) = g.as_mut() {
        if set.keys.insert((db, key.to_vec())) {
            set.bytes += key.len() + 8;
        }
        if set.bytes > REPLAYED_KEYS_MAX_BYTES {
            *g = None;
        }
    }
}

/// Register the auxiliary data (module load).
pub fn register(ctx: &Context) -> Result<(), String> {
    // SAFETY: a zeroed method table is "no callback" for every field.
    let mut methods: raw::RedisModuleTypeMethods = unsafe { std::mem::zeroed() };
    // Version 2 of the table (Redis 7.0) carries the auxiliary callbacks.
    methods.version = 2;
    methods.aux_load = Some(aux_load);
    methods.aux_save = Some(aux_save);
    methods.aux_save_triggers = raw::REDISMODULE_AUX_AFTER_RDB as c_int;
    let name = CString::new(TYPE_NAME).map_err(|e| e.to_string())?;
    let create =
        unsafe { raw::RedisModule_CreateDataType }.ok_or("RedisModule_CreateDataType missing")?;
    // SAFETY: live context at load; Redis copies the method table.
    let t = unsafe { create(ctx.ctx, name.as_ptr(), ENCVER, &mut methods) };
    if t.is_null() {
        return Err(format!("cannot register the auxiliary data '{TYPE_NAME}'"));
    }
    Ok(())
}

/// What this node's snapshot carries now, or why nothing.
fn snapshot() -> Result<SavedState, &'static str> {
    let shared = Shared::get().ok_or("not initialised")?;
    if shared.passive.load(Ordering::Relaxed) {
        return Err("a replica");
    }
    if shared.fresh.load(Ordering::Relaxed) || shared.awaiting_full_sync.load(Ordering::Relaxed) {
        return Err("not synced with the peer");
    }
    if super::fullsync::target_receiving() {
        return Err("taking a full resync");
    }
    if shared.table_overflowed.load(Ordering::Relaxed) {
        return Err("its table of un-acknowledged writes overflowed");
    }
    // A full resync of ours not yet taken whole: one begun after an
    // overflow has no table, so the snapshot's would miss writes the peer
    // lacks (found by the simulation).
    if shared.echo_applied.load(Ordering::Relaxed)
        || shared.source_running.load(Ordering::Relaxed)
        || shared.source_done_seq.load(Ordering::Relaxed) != 0
        || shared.full_sync_requested.load(Ordering::Relaxed)
    {
        return Err("a full resync of this node is in flight");
    }
    let peer_stream_id = shared.peer_stream_id.load(Ordering::Relaxed);
    if peer_stream_id == 0 {
        return Err("no peer stream yet");
    }
    let unflushed = super::capture::try_dirty_keys().ok_or("the dirty log was busy")?;
    let (writes, clock) =
        super::node::try_with_node(|n| (saved_state::export(&mut n.pending), n.hlc.last()))
            .ok_or("the table was busy")?;
    Ok(SavedState {
        version: SAVED_STATE_VERSION,
        node_id: shared.config.node_id.clone(),
        position: crate::core::restart::SavedPosition {
            stream_id: shared.stream_id(),
            own_seq: shared.own_seq_mirror.load(Ordering::Relaxed),
            peer_stream_id,
            applied_seq: shared.applied_mirror.load(Ordering::Relaxed),
        },
        writes,
        unflushed: unflushed.ok_or("a flush not yet shipped")?,
        clock,
        saved_at_ms: crate::core::hlc::wall_ms(),
    })
}

unsafe extern "C" fn aux_save(rdb: *mut raw::RedisModuleIO, _when: c_int) {
    let bytes = guarded("saving the pairing state", Vec::new(), || {
        match snapshot().map(|s| s.encode()) {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                log::warning(&format!("pairing state not saved: {e}"));
                Vec::new()
            }
            Err(why) => {
                log::verbose(&format!(
                    "pairing state not saved with this snapshot: {why}"
                ));
                Vec::new()
            }
        }
    });
    raw::save_slice(rdb, &bytes);
}

unsafe extern "C" fn aux_load(rdb: *mut raw::RedisModuleIO, encver: c_int, _when: c_int) -> c_int {
    let Ok(buf) = raw::load_string_buffer(rdb) else {
        return raw::REDISMODULE_ERR as c_int;
    };
    guarded("loading the pairing state", (), || {
        let Some(shared) = Shared::get() else { return };
        // Only the load at start-up restores: DEBUG RELOAD, or a replica's
        // sync from its primary, keep the running state.
        if shared.ready.load(Ordering::Acquire) || shared.passive.load(Ordering::Relaxed) {
            return;
        }
        AUX_READ.store(true, Ordering::Relaxed);
        let bytes = buf.as_ref();
        if encver != ENCVER || bytes.is_empty() {
            return;
        }
        match SavedState::decode(bytes) {
            Ok(state) if state.node_id == shared.config.node_id => {
                *LOADED.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
            }
            Ok(state) => log::notice(&format!(
                "the snapshot's pairing state is node {}'s, not this node's: ignored (full resync)",
                state.node_id
            )),
            Err(e) => log::warning(&format!("{e}: ignored (full resync)")),
        }
    });
    raw::REDISMODULE_OK as c_int
}

/// Take back the state read at start-up (first event-loop pass, before
/// any handshake).
pub fn restore(shared: &Shared) {
    let Some(state) = LOADED.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    let replayed = REPLAYED_AFTER.load(Ordering::Relaxed);
    let tail_keys = REPLAYED_KEYS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let tail_keys: Vec<(u32, Vec<u8>)> = match tail_keys {
        Some(set) => set.keys.into_iter().collect(),
        None => {
            log::notice(&format!(
                "the AOF replayed {replayed} writes after the snapshot that carried the pairing state, to more keys than a resume can name ({REPLAYED_KEYS_MAX_BYTES} bytes of names): full resync from the peer"
            ));
            return;
        }
    };
    if replayed > 0 {
        log::notice(&format!(
            "the AOF replayed {replayed} writes to {} keys after the snapshot that carried the pairing state: the peer re-sends those keys",
            tail_keys.len()
        ));
    }
    *shared
        .restored_replayed
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = tail_keys;
    let pos = state.position;
    shared.restore_stream_id(pos.stream_id);
    shared.outbox().restore(
        pos.own_seq,
        pos.applied_seq,
        state.saved_at_ms,
        crate::core::hlc::wall_ms(),
    );
    let last = shared.outbox().last_seq();
    shared.own_seq_mirror.store(last, Ordering::Relaxed);
    shared
        .applied_mirror
        .store(pos.applied_seq, Ordering::Relaxed);
    shared
        .peer_stream_id
        .store(pos.peer_stream_id, Ordering::Relaxed);
    let writes = state.writes.len();
    let newest = state
        .writes
        .iter()
        .map(|w| w.stamp().hlc)
        .max()
        .unwrap_or(0)
        .max(state.clock);
    let table = saved_state::import(state.writes, 0);
    super::node::with_node(|n| {
        n.pending = table;
        // Later stamps order after the restored ones, and after every
        // write the data holds, even if the clock stepped back across the
        // restart.
        let _ = n.hlc.observe(newest, u64::MAX / 2, 0);
    });
    {
        let mut dirty = super::capture::dirty();
        for (db, key) in &state.unflushed {
            dirty.key(*db, key);
        }
    }
    {
        let mut h = shared.history();
        h.anchor_own(pos.stream_id, last);
        h.anchor_applied(pos.peer_stream_id, pos.applied_seq);
    }
    *shared.restored.lock().unwrap_or_else(|p| p.into_inner()) = Some(pos);
    log::notice(&format!(
        "restarted with the pairing state of its snapshot: own batch {}, peer batch {}, {writes} un-acknowledged writes, {} unshipped keys; the peer will resume it if its history covers that",
        pos.own_seq,
        pos.applied_seq,
        state.unflushed.len()
    ));
}

/// The peer applied this restored stream up to `peer_pos`, past every seq
/// this process issued: an earlier start from the same snapshot issued
/// those seqs (the clock was set back in between, see
/// `core::outbox::restart_seq`). The stream goes on after `peer_pos`, and
/// the writes made since this start go again under a seq the peer has not
/// seen (the dirty-key resync that follows re-sends them).
pub fn skip_reused_seqs(shared: &Shared, peer_pos: u64) {
    let Some(saved) = shared.restored() else {
        return;
    };
    if !shared.outbox().skip_past(peer_pos) {
        return;
    }
    super::node::with_node(|n| saved_state::renumber(&mut n.pending, saved.own_seq, peer_pos + 1));
    shared.own_seq_mirror.store(peer_pos, Ordering::Relaxed);
    shared.history().pass_own(shared.stream_id(), peer_pos);
    Stats::add(&shared.stats.seq_skips, 1);
    log::warning(&format!(
        "the peer had applied this node's stream up to {peer_pos}, past what this start issued: \
         an earlier start from the same snapshot issued those seqs (the clock was set back?); \
         the writes since this start go again under new seqs"
    ));
}

/// The peer's restart resume reached its end: this node has caught up.
pub fn resumed(shared: &Shared) {
    if shared.restored().is_none() {
        return;
    }
    shared.clear_restored();
    shared.fresh.store(false, Ordering::Relaxed);
    Stats::add(&shared.stats.restart_resumes, 1);
    log::notice("restart resume complete: caught up with the peer without a full resync");
}
