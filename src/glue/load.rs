//! Module load and unload.
//!
//! Why refuse unload: statics survive in the still-mapped library, and a
//! spike crashed the server on reload after unload (DESIGN §9). Unloading
//! is refused with a clear error instead.

use std::os::raw::c_int;

use redis_module::{raw, Context, RedisString, Status};

use super::{capture, events, ffi, guard};
use crate::core::config::Config;
use crate::core::protect;
use crate::log;
use crate::state::Shared;

fn random_stream_id() -> u64 {
    let mut buf = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut buf).is_ok() {
            let v = u64::from_le_bytes(buf);
            if v != 0 {
                return v;
            }
        }
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    (t ^ (std::process::id() as u64).rotate_left(32)) | 1
}

fn databases(ctx: &Context) -> u32 {
    let reply = ctx.call("CONFIG", &["GET", "databases"]);
    if let Ok(redis_module::RedisValue::Array(items)) = reply {
        if let Some(v) = items.get(1) {
            let s = match v {
                redis_module::RedisValue::SimpleString(s)
                | redis_module::RedisValue::BulkString(s) => s.clone(),
                redis_module::RedisValue::StringBuffer(b) => {
                    String::from_utf8_lossy(b).into_owned()
                }
                _ => String::new(),
            };
            if let Ok(n) = s.parse() {
                return n;
            }
        }
    }
    16
}

/// `RedisModule_OnLoad` body after the crate registered the commands.
pub fn init(ctx: &Context, args: &[RedisString]) -> Status {
    guard::guarded("module load", Status::Err, || init_inner(ctx, args))
}

fn init_inner(ctx: &Context, args: &[RedisString]) -> Status {
    guard::install_panic_hook();
    let args: Vec<String> = args.iter().map(|a| a.to_string_lossy()).collect();
    let config = match Config::parse(&args, |p| std::fs::read(p)) {
        Ok(c) => c,
        Err(e) => {
            log::warning(&format!("refusing to load: {e}"));
            return Status::Err;
        }
    };
    let flags = ffi::context_flags(ctx);
    if flags & raw::REDISMODULE_CTX_FLAGS_CLUSTER != 0 {
        log::warning(
            "refusing to load: cluster mode is not supported yet (pair two standalone servers)",
        );
        return Status::Err;
    }
    if let Some(why) = protect::refusal(&config, crate::link::dial::lookup) {
        log::warning(&format!("refusing to load: {why}"));
        return Status::Err;
    }
    if config.secret.is_none() {
        log::warning("no secret-file given: the replication link is NOT authenticated; anyone who can reach the listen port can write to this server");
    }
    let shared = Shared::new(
        config,
        random_stream_id(),
        databases(ctx),
        ffi::rdb_version(),
        wake,
    );
    if flags & raw::REDISMODULE_CTX_FLAGS_SLAVE != 0 {
        shared
            .passive
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let shared = match Shared::install(shared) {
        Ok(s) => s,
        Err(e) => {
            log::warning(&format!("refusing to load: {e}"));
            return Status::Err;
        }
    };
    if let Err(e) = super::persist::register(ctx) {
        log::warning(&format!("refusing to load: {e}"));
        return Status::Err;
    }
    shared.history().anchor_own(shared.stream_id(), 0);
    if let Err(e) = super::configs::register(ctx, &shared) {
        log::warning(&format!("refusing to load: {e}"));
        return Status::Err;
    }
    let types = (raw::REDISMODULE_NOTIFY_GENERIC
        | raw::REDISMODULE_NOTIFY_STRING
        | raw::REDISMODULE_NOTIFY_LIST
        | raw::REDISMODULE_NOTIFY_SET
        | raw::REDISMODULE_NOTIFY_HASH
        | raw::REDISMODULE_NOTIFY_ZSET
        | raw::REDISMODULE_NOTIFY_STREAM
        | raw::REDISMODULE_NOTIFY_MODULE
        | raw::REDISMODULE_NOTIFY_EVICTED) as c_int;
    let ok = ffi::subscribe_keyspace(ctx, types, capture::on_keyspace_event)
        && ffi::subscribe_server_event(ctx, raw::REDISMODULE_EVENT_FLUSHDB, capture::on_flush)
        && ffi::subscribe_server_event(ctx, raw::REDISMODULE_EVENT_LOADING, capture::on_loading)
        && ffi::subscribe_server_event(ctx, raw::REDISMODULE_EVENT_SWAPDB, capture::on_swapdb)
        && ffi::subscribe_server_event(
            ctx,
            raw::REDISMODULE_EVENT_EVENTLOOP,
            events::on_event_loop,
        )
        && ffi::subscribe_server_event(
            ctx,
            raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED,
            events::on_role_change,
        )
        && ffi::register_filter(ctx, capture::on_command_filter);
    if !ok {
        log::warning("refusing to load: this Redis lacks a module API the module needs (Redis 7.0 or newer is required)");
        return Status::Err;
    }
    ffi::make_detached_context(ctx);
    if let Err(e) = crate::link::start(shared.clone()) {
        log::warning(&format!("refusing to load: {e}"));
        return Status::Err;
    }
    log::notice(&format!("this server: {}", super::server::detect(ctx)));
    log::notice(&format!(
        "redis-bisync {} loaded: node-id {}, listening on {}, peer {}",
        super::commands::VERSION,
        shared.config.node_id,
        shared.config.listen,
        shared.config.peer
    ));
    Status::Ok
}

fn wake() {
    ffi::wake_event_loop();
}

/// `RedisModule_OnUnload`: refused (see the module doc).
pub fn deinit(_ctx: &Context) -> Status {
    log::warning("MODULE UNLOAD refused: redis-bisync cannot be unloaded from a running server; restart the server without it");
    Status::Err
}
