//! Logging into the Redis server's own log.
//!
//! Why a wrapper: the crate's helpers panic on a message with a NUL byte and
//! when the Redis API is not initialised (unit tests); this one does neither.

use std::ffi::CString;

use redis_module::raw;

fn emit(level: &str, msg: &str) {
    let clean = msg.replace('\0', "\\0");
    // SAFETY: RedisModule_Log is set once by RedisModule_Init and never
    // changes; a NULL context is documented as valid (logs under "module").
    unsafe {
        if let Some(log) = raw::RedisModule_Log {
            if let (Ok(l), Ok(fmt), Ok(m)) = (
                CString::new(level),
                CString::new("bisync: %s"),
                CString::new(clean.as_str()),
            ) {
                log(std::ptr::null_mut(), l.as_ptr(), fmt.as_ptr(), m.as_ptr());
                return;
            }
        }
    }
    eprintln!("[{level}] bisync: {clean}");
}

/// A problem an operator must see.
pub fn warning(msg: &str) {
    emit("warning", msg);
}

/// A significant, expected event (link up, resync).
pub fn notice(msg: &str) {
    emit("notice", msg);
}

/// Detail for debugging a pair.
pub fn verbose(msg: &str) {
    emit("verbose", msg);
}
