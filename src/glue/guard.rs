//! Panic containment at every boundary Redis calls into.
//!
//! Why: a panic unwinding into C is undefined behaviour and would take the
//! server (and its data) down. Every callback runs inside [`guarded`]; a
//! caught panic is logged through Redis's log by the hook installed at load.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::log;

/// Run `f`; if it panics, log `what` and return `fallback`.
pub fn guarded<T>(what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            log::warning(&format!("internal error caught in {what}; the server keeps running (see the panic line above)"));
            fallback
        }
    }
}

/// Send panic messages to the Redis log instead of stderr.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        log::warning(&format!("panic at {loc}: {msg}"));
    }));
}

/// Test hooks (`SYNC.DEBUG`, checks of the SET shortcut) are on when the
/// server was started with `BISYNC_TEST_HOOKS=1` in its environment; read
/// once.
pub fn test_hooks() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("BISYNC_TEST_HOOKS").is_ok_and(|v| v == "1"))
}
