//! Key tracing for test builds: with test hooks on and
//! `BISYNC_TRACE_KEYS=k1,k2` in the server's environment, every capture,
//! shipped record, applied record and re-ship of those key names (any db)
//! is logged.
//!
//! Why: a divergence that shows once in tens of randomized runs cannot be
//! replayed step by step; the history of one key on both sides can be read
//! from the two logs afterwards. Off (one cached check) in production.

use std::sync::OnceLock;

/// The traced key names, if tracing is on.
fn traced() -> Option<&'static [Vec<u8>]> {
    static KEYS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        if !super::guard::test_hooks() {
            return Vec::new();
        }
        std::env::var("BISYNC_TRACE_KEYS")
            .map(|v| {
                v.split(',')
                    .filter(|k| !k.is_empty())
                    .map(|k| k.as_bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default()
    });
    (!keys.is_empty()).then_some(keys.as_slice())
}

/// Whether `key` is traced.
pub fn on(key: &[u8]) -> bool {
    traced().is_some_and(|keys| keys.iter().any(|k| k == key))
}

/// Log `what()` for `key` of `db` if the key is traced.
pub fn key(db: u32, key: &[u8], what: impl FnOnce() -> String) {
    if on(key) {
        let mut msg = what();
        msg.truncate(1500);
        crate::log::notice(&format!(
            "trace db {db} {:?}: {msg}",
            String::from_utf8_lossy(key)
        ));
    }
}
