//! redis-bisync: active-active replication between two Redis servers, as a
//! Redis module.
//!
//! # Layout
//!
//! The data flow, from a client's write to the peer's memory:
//!
//! - [`glue::capture`] notes `(db, key)` from keyspace notifications (and
//!   flushes from server events) into a dirty log. Nothing else.
//! - [`glue::flush`], at every before-sleep, reads each dirty key's image,
//!   stamps one batch with the [`core::hlc`] clock, records the writes in the
//!   [`core::pending`] table and appends the batch to the [`core::outbox`].
//! - [`link`] threads send the outbox FIFO to the peer ([`core::codec`]
//!   frames of [`core::protocol`] messages) and push what the peer sends to
//!   the main thread.
//! - [`glue::apply`], in the same before-sleep hold right after the flush,
//!   applies remote batches under last-writer-wins and queues the ack.
//!
//! [`core`] is pure Rust with no Redis: clock, conflict rule, backlog,
//! codec, config parsing, dirty-log reduction. [`glue`] is the only code that
//! talks to Redis; [`link`] owns sockets and threads; [`state`] is where the
//! two meet.

#![deny(missing_docs)]

pub mod core;
pub mod glue;
pub mod link;
pub mod log;
pub mod state;

/// Registration with Redis: the `redis_module!` entry points (generated
/// functions carry no docs of their own).
#[allow(missing_docs)]
mod entry {
    use crate::glue;
    use redis_module::{redis_module, InfoContext, RedisResult};

    redis_module! {
        name: "bisync",
        version: 1,
        // The system allocator: the module's buffers (backlog, table) are
        // bounded by its own settings and must not count toward `maxmemory`, so
        // they can never make Redis evict user keys or refuse writes (DESIGN §4).
        allocator: (std::alloc::System, std::alloc::System),
        data_types: [],
        init: glue_init,
        deinit: glue_deinit,
        info: glue_info,
        commands: [
            ["sync.status", glue_status, "readonly fast", 0, 0, 0, ""],
            ["sync.wait", glue_wait, "", 0, 0, 0, ""],
            ["sync.pair", glue_pair, "admin", 0, 0, 0, ""],
            ["sync.debug", glue_debug, "admin", 0, 0, 0, ""],
        ],
    }

    fn glue_init(
        ctx: &redis_module::Context,
        args: &[redis_module::RedisString],
    ) -> redis_module::Status {
        glue::load::init(ctx, args)
    }

    fn glue_deinit(ctx: &redis_module::Context) -> redis_module::Status {
        glue::load::deinit(ctx)
    }

    fn glue_info(ctx: &redis_module::InfoContext, for_crash_report: bool) {
        glue::guard::guarded("INFO", (), || glue::commands::info(ctx, for_crash_report))
    }

    fn glue_status(
        ctx: &redis_module::Context,
        args: Vec<redis_module::RedisString>,
    ) -> redis_module::RedisResult {
        glue::guard::guarded(
            "SYNC.STATUS",
            Err(redis_module::RedisError::Str("ERR internal error")),
            || glue::commands::sync_status(ctx, args),
        )
    }

    fn glue_pair(
        ctx: &redis_module::Context,
        args: Vec<redis_module::RedisString>,
    ) -> redis_module::RedisResult {
        glue::guard::guarded(
            "SYNC.PAIR",
            Err(redis_module::RedisError::Str("ERR internal error")),
            || glue::commands::sync_pair(ctx, args),
        )
    }

    fn glue_debug(
        ctx: &redis_module::Context,
        args: Vec<redis_module::RedisString>,
    ) -> redis_module::RedisResult {
        glue::guard::guarded(
            "SYNC.DEBUG",
            Err(redis_module::RedisError::Str(
                "ERR internal error (caught; see the server log)",
            )),
            || glue::commands::sync_debug(ctx, args),
        )
    }

    fn glue_wait(
        ctx: &redis_module::Context,
        args: Vec<redis_module::RedisString>,
    ) -> redis_module::RedisResult {
        glue::guard::guarded(
            "SYNC.WAIT",
            Err(redis_module::RedisError::Str("ERR internal error")),
            || glue::waiters::sync_wait(ctx, args),
        )
    }
}
