//! The thin layer of raw Redis module API calls the crate does not wrap.
//!
//! Why: the image read is the hot path of capture (DESIGN §9: reading
//! strings through the key API instead of command calls), and several
//! server events and the one-shot wake-up have no safe wrapper. Each call
//! here states why it is sound; nothing above this file uses `raw` for these.

use std::os::raw::{c_char, c_int, c_void};

use redis_module::{raw, Context};

use crate::core::protocol::Shape;
use crate::core::stream_merge::EntryId;

/// The kind of value a key holds, as far as imaging cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The key does not exist.
    Missing,
    /// A string: read it raw.
    String,
    /// A hash.
    Hash,
    /// A list.
    List,
    /// A set.
    Set,
    /// A sorted set.
    ZSet,
    /// A stream.
    Stream,
    /// A module data type.
    Module,
}

/// What the key API tells about one key.
pub struct KeyRead {
    /// Its kind.
    pub kind: KeyKind,
    /// The bytes, for strings (`None`: longer than asked for, or they could
    /// not be copied: out of memory).
    pub string: Option<Vec<u8>>,
    /// A string's length in bytes (0 for other kinds).
    pub string_len: usize,
    /// Absolute expiry in Unix ms, if any.
    pub expire_at_ms: Option<i64>,
}

/// Read a key's kind, string value and absolute expiry in the context's
/// selected db, through the key API (no command call). A string of
/// `max_string` bytes or more is not copied (see [`KeyRead::string`]).
pub fn read_key(ctx: &Context, key: &[u8], max_string: usize) -> Option<KeyRead> {
    read_key_with(ctx, key, max_string)
}

/// Run `f` on `key` of the selected db, opened for reading as quietly as the
/// server allows; `f` gets a null handle when the key does not exist.
/// `None`: the key API is unavailable.
///
/// Why one helper: every read here creates the name, opens, closes and
/// frees in the same order; doing it once keeps each reader to what it reads.
///
/// # Safety
/// Main thread with a live context; `f` must not keep the handle.
unsafe fn with_open_key<T>(
    ctx: &Context,
    key: &[u8],
    f: impl FnOnce(*mut raw::RedisModuleKey) -> T,
) -> Option<T> {
    // Our own reads must not change what clients see: no LRU/LFU touch, and on 7.2+ no lazy
    // expiry (which would delete the key and propagate a DEL out of order), no keyspace
    // hit/miss counts.
    let mode = raw::REDISMODULE_READ as c_int | super::server::quiet_open_flags();
    with_key(ctx, key, mode, |_, k| f(k))
}

/// Run `f` with the name of `key` (a module string) and the key opened in
/// `mode` in the selected db (a null handle if it cannot be opened); closed
/// and freed afterwards. `None`: the key API is unavailable or the name
/// could not be made.
///
/// # Safety
/// Main thread with a live context; `f` must keep neither pointer.
pub(super) unsafe fn with_key<T>(
    ctx: &Context,
    key: &[u8],
    mode: c_int,
    f: impl FnOnce(*mut raw::RedisModuleString, *mut raw::RedisModuleKey) -> T,
) -> Option<T> {
    let create = raw::RedisModule_CreateString?;
    let open = raw::RedisModule_OpenKey?;
    let close = raw::RedisModule_CloseKey?;
    let free = raw::RedisModule_FreeString?;
    let name = create(ctx.ctx, key.as_ptr().cast::<c_char>(), key.len());
    if name.is_null() {
        return None;
    }
    let k = open(ctx.ctx, name, mode);
    let out = f(name, k.cast());
    if !k.is_null() {
        close(k);
    }
    free(ctx.ctx, name);
    Some(out)
}

/// [`with_key`] with `key` opened for writing, for the appliers that write
/// through the key API (`stream_append`, `hash_set`).
///
/// # Safety
/// Main thread with a live context; `f` must keep neither pointer.
pub(super) unsafe fn with_write_key<T>(
    ctx: &Context,
    key: &[u8],
    f: impl FnOnce(*mut raw::RedisModuleString, *mut raw::RedisModuleKey) -> Result<T, String>,
) -> Result<T, String> {
    with_key(ctx, key, raw::REDISMODULE_WRITE as c_int, f)
        .unwrap_or_else(|| Err("the key API is unavailable".into()))
}

/// After a write through the key API: propagate `cmd argv…` to replicas and
/// the AOF when `propagate` (`propagation_needed`), else only count the
/// change for the `save` points (`RM_Replicate` with no target), as the
/// command itself would have.
///
/// # Safety
/// Main thread with a live context; `argv` holds live strings.
pub(super) unsafe fn replicate_or_count(
    ctx: &Context,
    cmd: &std::ffi::CStr,
    argv: &[*mut raw::RedisModuleString],
    propagate: bool,
) {
    let Some(replicate) = raw::RedisModule_Replicate else {
        return;
    };
    if propagate {
        replicate(
            ctx.ctx,
            cmd.as_ptr(),
            c"v".as_ptr(),
            argv.as_ptr(),
            argv.len(),
        );
    } else {
        replicate(ctx.ctx, cmd.as_ptr(), c"AR".as_ptr());
    }
}

/// Run `f` with a temporary module string holding `bytes` (null if it could
/// not be made), freed afterwards.
///
/// # Safety
/// Main thread with a live context; `f` must not keep the string.
unsafe fn with_temp_string<T>(
    ctx: &Context,
    bytes: &[u8],
    f: impl FnOnce(*mut raw::RedisModuleString) -> T,
) -> Option<T> {
    let create = raw::RedisModule_CreateString?;
    let free = raw::RedisModule_FreeString?;
    let s = create(ctx.ctx, bytes.as_ptr().cast::<c_char>(), bytes.len());
    let out = f(s);
    if !s.is_null() {
        free(ctx.ctx, s);
    }
    Some(out)
}

/// A key's kind, its number of elements (a string's byte length) and whether
/// it has a TTL, read through the key API as quietly as [`read_key`]: what
/// the element merge needs before it reads single elements.
pub fn key_shape(ctx: &Context, key: &[u8]) -> Option<(KeyKind, usize, bool)> {
    // SAFETY: main thread, live context; the handle is only used inside the closure.
    unsafe {
        let ktype = raw::RedisModule_KeyType?;
        let vlen = raw::RedisModule_ValueLength?;
        let expire = raw::RedisModule_GetExpire?;
        with_open_key(ctx, key, |k| {
            if k.is_null() {
                return (KeyKind::Missing, 0, false);
            }
            let kind = kind_of(ktype(k) as isize);
            let len = if kind == KeyKind::Missing { 0 } else { vlen(k) };
            let ttl = kind != KeyKind::Missing && expire(k) >= 0;
            (kind, len, ttl)
        })
    }
}

/// A sorted-set member's score through the key API (no command call, so
/// no command filter runs: safe inside a keyspace notification).
pub fn zset_score(ctx: &Context, key: &[u8], member: &[u8]) -> Option<f64> {
    member_score(ctx, key, member).flatten()
}

/// A member's score in the selected db of `ctx`: `Some(None)` when the key or
/// the member does not exist, `None` when it cannot be read (another type,
/// the key API unavailable).
fn member_score(ctx: &Context, key: &[u8], member: &[u8]) -> Option<Option<f64>> {
    // SAFETY: main thread, live context; the handle and the member string are
    // only used inside the closures.
    unsafe {
        let ktype = raw::RedisModule_KeyType?;
        let score_of = raw::RedisModule_ZsetScore?;
        with_open_key(ctx, key, |k| {
            if k.is_null() {
                return Some(None);
            }
            match kind_of(ktype(k) as isize) {
                KeyKind::Missing => Some(None),
                KeyKind::ZSet => with_temp_string(ctx, member, |ele| {
                    if ele.is_null() {
                        return None;
                    }
                    let mut score = 0f64;
                    let found = score_of(k, ele, &mut score) == raw::REDISMODULE_OK as c_int;
                    Some(found.then_some(score))
                })
                .flatten(),
                _ => None,
            }
        })
        .flatten()
    }
}

/// A hash field's value through the key API (no command call: the element
/// merge reads a field per applied change). `None`: no such key or field.
pub fn hash_get(ctx: &Context, key: &[u8], field: &[u8]) -> Option<Vec<u8>> {
    // SAFETY: main thread, live context; HashGet is given one field, its
    // output pointer and the terminating NULL, and the value it returns is
    // copied and freed before the key is closed.
    unsafe {
        let get = raw::RedisModule_HashGet?;
        let free = raw::RedisModule_FreeString?;
        with_open_key(ctx, key, |k| {
            with_temp_string(ctx, field, |f| {
                if k.is_null() || f.is_null() {
                    return None;
                }
                let mut value: *mut raw::RedisModuleString = std::ptr::null_mut();
                get(
                    k,
                    raw::REDISMODULE_HASH_NONE as c_int,
                    f,
                    &mut value as *mut *mut raw::RedisModuleString,
                    std::ptr::null_mut::<c_void>(),
                );
                if value.is_null() {
                    return None;
                }
                let out = string_bytes(value).to_vec();
                free(ctx.ctx, value);
                Some(out)
            })
            .flatten()
        })
        .flatten()
    }
}

/// A context of the module's own (detached), for reads where no context is
/// given: the command filter. Made once at load, never freed (the module
/// cannot be unloaded).
static DETACHED: std::sync::atomic::AtomicPtr<raw::RedisModuleCtx> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Make the detached context (at load, on the main thread).
pub fn make_detached_context(ctx: &Context) {
    // SAFETY: main thread at load with a live context; the returned context
    // is owned by the module for its lifetime.
    unsafe {
        if let Some(get) = raw::RedisModule_GetDetachedThreadSafeContext {
            DETACHED.store(get(ctx.ctx), std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The db of the client whose command the filter sees (7.2+: the filter
/// names the client). `None` on 7.0, and for clients the server does not
/// list (a script's or a module's fake client).
///
/// # Safety
/// `fctx` is the live filter context.
pub unsafe fn filter_client_db(fctx: *mut raw::RedisModuleCommandFilterCtx) -> Option<i32> {
    let client_id = raw::RedisModule_CommandFilterGetClientId?;
    let info_by_id = raw::RedisModule_GetClientInfoById?;
    let id = client_id(fctx);
    let mut ci: raw::RedisModuleClientInfo = std::mem::zeroed();
    ci.version = 1;
    let ok = info_by_id(std::ptr::addr_of_mut!(ci).cast::<c_void>(), id);
    (ok == raw::REDISMODULE_OK as c_int).then_some(i32::from(ci.db))
}

/// The IDs of a stream's `n` newest entries, newest first (`newest`), or of
/// its `n` oldest, oldest first, in the selected db of `ctx`: `None` when
/// the key is not a stream holding `n` entries or cannot be read. What an
/// `XTRIM` kept (the first ID), and the checks of the IDs `capture` worked
/// out for a run of appends without reading them (`core::append_id`).
pub fn stream_ids(ctx: &Context, key: &[u8], n: usize, newest: bool) -> Option<Vec<EntryId>> {
    // SAFETY: main thread, live context; the iterator is started, read and
    // stopped before the key is closed; the strings NextField returns are
    // ours (no automatic memory here) and freed at once.
    unsafe {
        let ktype = raw::RedisModule_KeyType?;
        let start = raw::RedisModule_StreamIteratorStart?;
        let next = raw::RedisModule_StreamIteratorNextID?;
        let next_field = raw::RedisModule_StreamIteratorNextField?;
        let stop = raw::RedisModule_StreamIteratorStop?;
        let free = raw::RedisModule_FreeString?;
        with_open_key(ctx, key, |k| {
            if k.is_null() || !matches!(kind_of(ktype(k) as isize), KeyKind::Stream) {
                return None;
            }
            let flags = if newest {
                raw::REDISMODULE_STREAM_ITERATOR_REVERSE as c_int
            } else {
                0
            };
            let ok = raw::REDISMODULE_OK as c_int;
            if start(k, flags, std::ptr::null_mut(), std::ptr::null_mut()) != ok {
                return None;
            }
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                if !out.is_empty() {
                    // The iterator finds the next entry only from the end of
                    // this one's fields (7.0.15 asserts in `lpPrev`
                    // otherwise): read them all.
                    let (mut f, mut v) = (std::ptr::null_mut(), std::ptr::null_mut());
                    while next_field(k, &mut f, &mut v) == ok {
                        free(ctx.ctx, f);
                        free(ctx.ctx, v);
                    }
                }
                let mut id = raw::RedisModuleStreamID { ms: 0, seq: 0 };
                let mut count: std::os::raw::c_long = 0;
                if next(k, &mut id, &mut count) != ok {
                    break;
                }
                out.push((id.ms, id.seq));
            }
            stop(k);
            (out.len() == n).then_some(out)
        })
        .flatten()
    }
}

/// The newest entry's ID, read from the command filter (before the command
/// runs) through the detached context with `db` selected.
pub fn stream_newest_in(db: u32, key: &[u8]) -> Option<EntryId> {
    // SAFETY: called only from the command filter, on the main thread.
    let ctx = unsafe { detached_in(i32::try_from(db).ok()?)? };
    stream_ids(&ctx, key, 1, true)?.first().copied()
}

/// The server's clock (`mstime()`), as the commands of this moment read it
/// at the latest.
pub fn milliseconds() -> u64 {
    // SAFETY: reads the clock only.
    unsafe {
        raw::RedisModule_Milliseconds
            .map(|f| u64::try_from(f()).unwrap_or(0))
            .unwrap_or(0)
    }
}

/// The element at the head (`left`) or the tail of a list: what an `LMOVE`
/// just pushed there (`None`: no such list, or it cannot be read).
pub fn list_end(ctx: &Context, key: &[u8], left: bool) -> Option<Vec<u8>> {
    // SAFETY: main thread, live context; the element ListGet returns is
    // copied and freed before the key is closed.
    unsafe {
        let ktype = raw::RedisModule_KeyType?;
        let get = raw::RedisModule_ListGet?;
        let free = raw::RedisModule_FreeString?;
        with_open_key(ctx, key, |k| {
            if k.is_null() || !matches!(kind_of(ktype(k) as isize), KeyKind::List) {
                return None;
            }
            let value = get(k, if left { 0 } else { -1 });
            if value.is_null() {
                return None;
            }
            let out = string_bytes(value).to_vec();
            free(ctx.ctx, value);
            Some(out)
        })
        .flatten()
    }
}

/// A sorted-set member's score in `db`, read from the command filter
/// (before the command runs) through the detached context: `Some(None)`
/// when the key or the member does not exist, `None` when it cannot be
/// read (no detached context, another type).
///
/// # Safety
/// Main thread, inside the command filter (the server lock is held).
pub unsafe fn zset_score_before(db: i32, key: &[u8], member: &[u8]) -> Option<Option<f64>> {
    member_score(&detached_in(db)?, key, member)
}

/// The detached context with `db` selected: what the filter reads through.
///
/// # Safety
/// Main thread, inside the command filter (the server lock is held).
unsafe fn detached_in(db: i32) -> Option<Context> {
    let dctx = DETACHED.load(std::sync::atomic::Ordering::Relaxed);
    if dctx.is_null() {
        return None;
    }
    let select = raw::RedisModule_SelectDb?;
    (select(dctx, db) == raw::REDISMODULE_OK as c_int).then(|| Context::new(dctx))
}

/// A string's value or a hash field's value in `db`, read from the command
/// filter (before the command runs) through the detached context:
/// `Some(None)` when the key or the field does not exist, `None` when it
/// cannot be read (no detached context, another type, a long string).
///
/// # Safety
/// Main thread, inside the command filter (the server lock is held).
pub unsafe fn value_before(
    db: i32,
    key: &[u8],
    shape: Shape,
    field: &[u8],
) -> Option<Option<Vec<u8>>> {
    let ctx = detached_in(db)?;
    match shape {
        // Only a short value can be an exact integer.
        Shape::Str => match read_key(&ctx, key, 64)? {
            r if r.kind == KeyKind::Missing => Some(None),
            r if r.kind == KeyKind::String => r.string.map(Some),
            _ => None,
        },
        Shape::Hash => Some(hash_get(&ctx, key, field)),
        Shape::Set | Shape::ZSet => None,
    }
}

fn kind_of(t: isize) -> KeyKind {
    match t {
        raw::REDISMODULE_KEYTYPE_EMPTY => KeyKind::Missing,
        raw::REDISMODULE_KEYTYPE_STRING => KeyKind::String,
        raw::REDISMODULE_KEYTYPE_HASH => KeyKind::Hash,
        raw::REDISMODULE_KEYTYPE_LIST => KeyKind::List,
        raw::REDISMODULE_KEYTYPE_SET => KeyKind::Set,
        raw::REDISMODULE_KEYTYPE_ZSET => KeyKind::ZSet,
        raw::REDISMODULE_KEYTYPE_STREAM => KeyKind::Stream,
        _ => KeyKind::Module,
    }
}

/// [`read_key`]; `max_string` 0 leaves a string's value unread.
fn read_key_with(ctx: &Context, key: &[u8], max_string: usize) -> Option<KeyRead> {
    // SAFETY: main thread, live context; the DMA pointer is only read while
    // the key is open and copied before it is closed.
    unsafe {
        let ktype = raw::RedisModule_KeyType?;
        let vlen = raw::RedisModule_ValueLength?;
        with_open_key(ctx, key, |k| {
            if k.is_null() {
                return KeyRead {
                    kind: KeyKind::Missing,
                    string: None,
                    string_len: 0,
                    expire_at_ms: None,
                };
            }
            let kind = kind_of(ktype(k) as isize);
            let string_len = if kind == KeyKind::String { vlen(k) } else { 0 };
            let mut string = None;
            if kind == KeyKind::String && string_len < max_string {
                if let Some(dma) = raw::RedisModule_StringDMA {
                    let mut len = 0usize;
                    let p = dma(k, &mut len, raw::REDISMODULE_READ as c_int);
                    // Fallible: a value the allocator cannot copy (a huge
                    // string under memory pressure) must not abort the server.
                    string = if p.is_null() {
                        Some(Vec::new())
                    } else {
                        let mut copy = Vec::new();
                        copy.try_reserve_exact(len).ok().map(|()| {
                            copy.extend_from_slice(std::slice::from_raw_parts(p.cast::<u8>(), len));
                            copy
                        })
                    };
                }
            }
            let mut expire_at_ms = None;
            if kind != KeyKind::Missing {
                if let Some(abs) = raw::RedisModule_GetAbsExpire {
                    let e = abs(k);
                    if e >= 0 {
                        expire_at_ms = Some(e);
                    }
                }
            }
            KeyRead {
                kind,
                string,
                string_len,
                expire_at_ms,
            }
        })
    }
}

/// The db selected on a context (the db a keyspace event happened in).
pub fn selected_db(ctx: &Context) -> i32 {
    // SAFETY: GetSelectedDb only reads the context's client.
    unsafe {
        raw::RedisModule_GetSelectedDb
            .map(|f| f(ctx.ctx))
            .unwrap_or(0)
    }
}

/// Select a db on a context; false if it does not exist.
pub fn select_db(ctx: &Context, db: i32) -> bool {
    // SAFETY: SelectDb validates the id and only changes the context's client.
    unsafe {
        raw::RedisModule_SelectDb
            .map(|f| f(ctx.ctx, db) == raw::REDISMODULE_OK as c_int)
            .unwrap_or(false)
    }
}

/// Number of keys in the context's selected db.
pub fn db_size(ctx: &Context) -> u64 {
    // SAFETY: reads the selected db's size only.
    unsafe { raw::RedisModule_DbSize.map(|f| f(ctx.ctx)).unwrap_or(0) }
}

/// The context flags (LOADING, SLAVE, CLUSTER, ...).
pub fn context_flags(ctx: &Context) -> u32 {
    // SAFETY: reads server state only.
    unsafe {
        raw::RedisModule_GetContextFlags
            .map(|f| f(ctx.ctx) as u32)
            .unwrap_or(0)
    }
}

/// Server version as 0x00MMmmpp.
pub fn server_version() -> i32 {
    // SAFETY: reads a constant.
    unsafe { raw::RedisModule_GetServerVersion.map(|f| f()).unwrap_or(0) }
}

/// RDB version of this server's DUMP payloads (a server refuses newer ones).
pub fn rdb_version() -> u32 {
    let v = server_version();
    match (v >> 16, (v >> 8) & 0xff) {
        (m, _) if m >= 8 => 12,
        (7, n) if n >= 4 => 12,
        (7, n) if n >= 2 => 11,
        (7, _) => 10,
        _ => 9,
    }
}

extern "C" fn noop_oneshot(_: *mut c_void) {}

/// Make the Redis event loop run an iteration soon (so before-sleep runs
/// and applies what the link received). Safe to call from any thread.
pub fn wake_event_loop() {
    // SAFETY: EventLoopAddOneShot is documented as thread-safe; the callback
    // does nothing and takes no data.
    unsafe {
        if let Some(f) = raw::RedisModule_EventLoopAddOneShot {
            f(Some(noop_oneshot), std::ptr::null_mut());
        }
    }
}

/// The signature of a raw server-event callback.
pub type ServerEventCallback =
    unsafe extern "C" fn(*mut raw::RedisModuleCtx, raw::RedisModuleEvent, u64, *mut c_void);

/// Subscribe to a server event by id; false if the server lacks it.
pub fn subscribe_server_event(ctx: &Context, id: u64, cb: ServerEventCallback) -> bool {
    let event = raw::RedisModuleEvent { id, dataver: 1 };
    // SAFETY: the callback is a plain function living as long as the module
    // (which refuses to unload).
    unsafe {
        raw::RedisModule_SubscribeToServerEvent
            .map(|f| f(ctx.ctx, event, Some(cb)) == raw::REDISMODULE_OK as c_int)
            .unwrap_or(false)
    }
}

/// The signature of a raw keyspace-notification callback.
pub type KeyspaceCallback = unsafe extern "C" fn(
    *mut raw::RedisModuleCtx,
    c_int,
    *const c_char,
    *mut raw::RedisModuleString,
) -> c_int;

/// Subscribe to keyspace notifications of the given classes.
pub fn subscribe_keyspace(ctx: &Context, types: c_int, cb: KeyspaceCallback) -> bool {
    // SAFETY: as for server events.
    unsafe {
        raw::RedisModule_SubscribeToKeyspaceEvents
            .map(|f| f(ctx.ctx, types, Some(cb)) == raw::REDISMODULE_OK as c_int)
            .unwrap_or(false)
    }
}

/// Bytes of a RedisModuleString (borrowed for the callback's duration).
///
/// # Safety
/// `s` must be a live RedisModuleString.
pub unsafe fn string_bytes<'a>(s: *const raw::RedisModuleString) -> &'a [u8] {
    let mut len = 0usize;
    match raw::RedisModule_StringPtrLen {
        Some(f) if !s.is_null() => {
            let p = f(s, &mut len);
            if p.is_null() {
                &[]
            } else {
                std::slice::from_raw_parts(p.cast::<u8>(), len)
            }
        }
        _ => &[],
    }
}

/// The signature of a raw command-filter callback.
pub type FilterCallback = unsafe extern "C" fn(*mut raw::RedisModuleCommandFilterCtx);

/// Register a command filter (sees client and script calls, not our own).
pub fn register_filter(ctx: &Context, cb: FilterCallback) -> bool {
    // SAFETY: as for server events; NOSELF keeps our own RM_Calls out.
    unsafe {
        raw::RedisModule_RegisterCommandFilter
            .map(|f| {
                !f(
                    ctx.ctx,
                    Some(cb),
                    raw::REDISMODULE_CMDFILTER_NOSELF as c_int,
                )
                .is_null()
            })
            .unwrap_or(false)
    }
}

/// Number of arguments seen by a command filter.
///
/// # Safety
/// `fctx` must be the live filter context of the current callback.
pub unsafe fn filter_argc(fctx: *mut raw::RedisModuleCommandFilterCtx) -> usize {
    raw::RedisModule_CommandFilterArgsCount
        .map(|f| f(fctx).max(0) as usize)
        .unwrap_or(0)
}

/// Argument `i` of a command filter.
///
/// # Safety
/// `fctx` must be the live filter context of the current callback.
pub unsafe fn filter_arg<'a>(fctx: *mut raw::RedisModuleCommandFilterCtx, i: usize) -> &'a [u8] {
    match raw::RedisModule_CommandFilterArgGet {
        Some(f) => string_bytes(f(fctx, i as c_int)),
        None => &[],
    }
}

/// Write a string value (and its absolute expiry) into the selected db the
/// way `SET key value [PXAT ms]` would: WATCH is signalled, `set` (and
/// `expire`) keyspace events fire, and `SET` is propagated to the AOF and
/// replicas. Why not call `SET`: a command call builds an argument vector,
/// looks the command up and parses its reply; on the peer this path runs
/// once per replicated write.
pub fn set_string(
    ctx: &Context,
    key: &[u8],
    value: &[u8],
    expire_at_ms: Option<i64>,
    propagate: bool,
) -> Result<(), String> {
    // SAFETY: main thread with a live context; every string and the key
    // handle are created and released here; the replicate format matches
    // its arguments ("ss" or "sscl": key, value, "PXAT", milliseconds).
    unsafe {
        let (
            Some(create),
            Some(free),
            Some(open),
            Some(close),
            Some(set),
            Some(abs_expire),
            Some(notify),
            Some(replicate),
        ) = (
            raw::RedisModule_CreateString,
            raw::RedisModule_FreeString,
            raw::RedisModule_OpenKey,
            raw::RedisModule_CloseKey,
            raw::RedisModule_StringSet,
            raw::RedisModule_SetAbsExpire,
            raw::RedisModule_NotifyKeyspaceEvent,
            raw::RedisModule_Replicate,
        )
        else {
            return Err("the key API is unavailable".into());
        };
        let name = create(ctx.ctx, key.as_ptr().cast::<c_char>(), key.len());
        let val = create(ctx.ctx, value.as_ptr().cast::<c_char>(), value.len());
        if name.is_null() || val.is_null() {
            for s in [name, val] {
                if !s.is_null() {
                    free(ctx.ctx, s);
                }
            }
            return Err("cannot create a string".into());
        }
        let k = open(ctx.ctx, name, raw::REDISMODULE_WRITE as c_int);
        let mut result = Ok(());
        if k.is_null() {
            result = Err("cannot open the key for writing".into());
        } else {
            if set(k, val) != raw::REDISMODULE_OK as c_int {
                result = Err("StringSet failed".into());
            } else if let Some(at) = expire_at_ms {
                if abs_expire(k, at) != raw::REDISMODULE_OK as c_int {
                    result = Err("SetAbsExpire failed".into());
                }
            }
            close(k);
        }
        if result.is_ok() {
            notify(
                ctx.ctx,
                raw::REDISMODULE_NOTIFY_STRING as c_int,
                c"set".as_ptr(),
                name,
            );
            if expire_at_ms.is_some() {
                notify(
                    ctx.ctx,
                    raw::REDISMODULE_NOTIFY_GENERIC as c_int,
                    c"expire".as_ptr(),
                    name,
                );
            }
            match (propagate, expire_at_ms) {
                (false, _) => {}
                (true, Some(at)) => {
                    replicate(
                        ctx.ctx,
                        c"SET".as_ptr(),
                        c"sscl".as_ptr(),
                        name,
                        val,
                        c"PXAT".as_ptr(),
                        at as std::os::raw::c_longlong,
                    );
                }
                (true, None) => {
                    replicate(ctx.ctx, c"SET".as_ptr(), c"ss".as_ptr(), name, val);
                }
            }
        }
        free(ctx.ctx, name);
        free(ctx.ctx, val);
        result
    }
}

/// Would a write made now be propagated anywhere: an AOF, a replica, or the
/// replication backlog (kept for replicas that reconnect)? Redis drops a
/// propagated command itself when nothing listens, but only after building
/// its argument vector and looking the command up; the peer's apply skips
/// that when this says no. Checked once per apply pass: replicas attach and
/// AOF turns on only between event-loop callbacks. Any doubt answers yes.
pub fn propagation_needed(ctx: &Context) -> bool {
    if context_flags(ctx) & raw::REDISMODULE_CTX_FLAGS_AOF != 0 {
        return true;
    }
    // SAFETY: main thread with a live context; the info object is created
    // and freed here and only read in between.
    unsafe {
        let (Some(get), Some(field), Some(free)) = (
            raw::RedisModule_GetServerInfo,
            raw::RedisModule_ServerInfoGetFieldSigned,
            raw::RedisModule_FreeServerInfo,
        ) else {
            return true;
        };
        let info = get(ctx.ctx, c"replication".as_ptr());
        if info.is_null() {
            return true;
        }
        let mut err: c_int = 0;
        let backlog = field(info, c"repl_backlog_active".as_ptr(), &mut err);
        let backlog_known = err == 0;
        let slaves = field(info, c"connected_slaves".as_ptr(), &mut err);
        let slaves_known = err == 0;
        free(ctx.ctx, info);
        !(backlog_known && slaves_known && backlog == 0 && slaves == 0)
    }
}

/// How many clients the server counts as blocked (`INFO clients`);
/// `None` when it cannot be read.
pub fn blocked_clients(ctx: &Context) -> Option<i64> {
    // SAFETY: main thread with a live context; the info object is created
    // and freed here and only read in between.
    unsafe {
        let get = raw::RedisModule_GetServerInfo?;
        let field = raw::RedisModule_ServerInfoGetFieldSigned?;
        let free = raw::RedisModule_FreeServerInfo?;
        let info = get(ctx.ctx, c"clients".as_ptr());
        if info.is_null() {
            return None;
        }
        let mut err: c_int = 0;
        let n = field(info, c"blocked_clients".as_ptr(), &mut err);
        free(ctx.ctx, info);
        (err == 0).then_some(n)
    }
}

/// The absolute expiry of `key` in the selected db: `None` if the key does
/// not exist, `Some(None)` if it has no expiry. Opens the key without
/// touching its value (no `StringDMA`, which rewrites the stored object).
pub fn read_expiry(ctx: &Context, key: &[u8]) -> Option<Option<i64>> {
    match read_key_with(ctx, key, 0) {
        Some(r) if r.kind == KeyKind::Missing => None,
        Some(r) => Some(r.expire_at_ms),
        // The key API is unavailable: no expiry is the safe reading.
        None => Some(None),
    }
}

/// `RedisModule_Scan` callback: appends the key name to the `Vec<Vec<u8>>` behind `data`.
extern "C" fn collect_key(
    _ctx: *mut raw::RedisModuleCtx,
    name: *mut raw::RedisModuleString,
    _key: *mut raw::RedisModuleKey,
    data: *mut c_void,
) {
    // SAFETY: `data` is the `&mut Vec<Vec<u8>>` that `scan_keys` passes for the duration of the
    // `RedisModule_Scan` call; `name` is valid during the callback and copied.
    unsafe {
        let out = &mut *data.cast::<Vec<Vec<u8>>>();
        out.push(string_bytes(name).to_vec());
    }
}

/// Every key name of `db`, listed with the module scan API rather than the `SCAN` command:
/// `SCAN` deletes the expired keys it meets (a lazy expiry, propagated as a `DEL` at that
/// moment), the module scan only lists names. `None` if the API or the db is missing.
pub fn scan_keys(ctx: &Context, db: i32) -> Option<Vec<Vec<u8>>> {
    if !select_db(ctx, db) {
        return None;
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    // SAFETY: main thread with a live context; the cursor is created and destroyed here and
    // `out` outlives every callback, which only runs inside `RedisModule_Scan`.
    unsafe {
        let create = raw::RedisModule_ScanCursorCreate?;
        let scan = raw::RedisModule_Scan?;
        let destroy = raw::RedisModule_ScanCursorDestroy?;
        let cursor = create();
        if cursor.is_null() {
            return None;
        }
        let data = (&mut out as *mut Vec<Vec<u8>>).cast::<c_void>();
        while scan(ctx.ctx, cursor, Some(collect_key), data) != 0 {}
        destroy(cursor);
    }
    Some(out)
}
