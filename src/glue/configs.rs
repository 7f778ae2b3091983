//! Every argument is also a module config, `bisync.<name>`.
//!
//! Why raw registration: the values come from the loadmodule arguments
//! (already validated by [`crate::core::config`]), a few can change at run
//! time through the same validation, and the secret must never be shown.
//! Redis keeps a pointer to the string a getter returns, so each config's
//! current display value is kept alive here.

use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::Mutex;

use redis_module::{raw, Context};

use super::ffi;
use crate::core::config::{KNOWN, RUNTIME};
use crate::log;
use crate::state::Shared;

struct Held(*mut raw::RedisModuleString);
// SAFETY: only touched on the main thread (config callbacks); the mutex
// exists because it lives in a static.
unsafe impl Send for Held {}

static HELD: Mutex<Vec<Held>> = Mutex::new(Vec::new());

fn make_string(s: &str) -> *mut raw::RedisModuleString {
    // SAFETY: a NULL context creates a string the module owns.
    unsafe {
        raw::RedisModule_CreateString
            .map(|f| f(std::ptr::null_mut(), s.as_ptr().cast::<c_char>(), s.len()))
            .unwrap_or(std::ptr::null_mut())
    }
}

fn name_of(privdata: *mut c_void) -> Option<&'static str> {
    KNOWN.get(privdata as usize).copied()
}

unsafe extern "C" fn get_cb(
    _name: *const c_char,
    privdata: *mut c_void,
) -> *mut raw::RedisModuleString {
    let (Some(shared), Some(name)) = (Shared::get(), name_of(privdata)) else {
        return std::ptr::null_mut();
    };
    let value = shared.settings().display(name).unwrap_or_default();
    let s = make_string(&value);
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    let idx = privdata as usize;
    if held.len() <= idx {
        held.resize_with(KNOWN.len(), || Held(std::ptr::null_mut()));
    }
    let old = std::mem::replace(&mut held[idx], Held(s));
    if !old.0.is_null() {
        if let Some(free) = raw::RedisModule_FreeString {
            free(std::ptr::null_mut(), old.0);
        }
    }
    s
}

unsafe extern "C" fn set_cb(
    _name: *const c_char,
    val: *mut raw::RedisModuleString,
    privdata: *mut c_void,
    err: *mut *mut raw::RedisModuleString,
) -> c_int {
    let fail = |msg: &str| {
        if !err.is_null() {
            *err = make_string(msg);
        }
        raw::REDISMODULE_ERR as c_int
    };
    let (Some(shared), Some(name)) = (Shared::get(), name_of(privdata)) else {
        return fail("bisync is not initialised");
    };
    let value = String::from_utf8_lossy(ffi::string_bytes(val)).into_owned();
    if RUNTIME.contains(&name) {
        match shared.set_runtime(name, &value) {
            Ok(()) => raw::REDISMODULE_OK as c_int,
            Err(e) => fail(&e),
        }
    } else if shared.settings().display(name).as_deref() == Some(value.as_str()) {
        // Redis applies each default once at load: that is the loaded value.
        raw::REDISMODULE_OK as c_int
    } else {
        fail(&format!(
            "bisync.{name} can only be set in the loadmodule arguments"
        ))
    }
}

/// Register `bisync.<name>` for every argument, then let Redis apply any
/// `bisync.*` lines of redis.conf.
pub fn register(ctx: &Context, shared: &Shared) -> Result<(), String> {
    let settings = shared.settings();
    let Some(reg) = (unsafe { raw::RedisModule_RegisterStringConfig }) else {
        return Err("this Redis has no module configs (7.0 or newer required)".into());
    };
    for (i, name) in KNOWN.iter().enumerate() {
        let default = settings.display(name).unwrap_or_default();
        let (Ok(cname), Ok(cdefault)) = (CString::new(*name), CString::new(default)) else {
            return Err(format!("bad config name {name}"));
        };
        let mut flags = raw::REDISMODULE_CONFIG_DEFAULT;
        if !RUNTIME.contains(name) {
            flags |= raw::REDISMODULE_CONFIG_IMMUTABLE;
        }
        if name.starts_with("secret") {
            flags |= raw::REDISMODULE_CONFIG_SENSITIVE;
        }
        // SAFETY: on the main thread during OnLoad; the callbacks are plain
        // functions and the privdata is an index, not a pointer.
        let rc = unsafe {
            reg(
                ctx.ctx,
                cname.as_ptr(),
                cdefault.as_ptr(),
                flags,
                Some(get_cb),
                Some(set_cb),
                None,
                i as *mut c_void,
            )
        };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err(format!("cannot register config bisync.{name}"));
        }
    }
    // SAFETY: as above.
    let loaded = unsafe {
        raw::RedisModule_LoadConfigs
            .map(|f| f(ctx.ctx))
            .unwrap_or(raw::REDISMODULE_OK as c_int)
    };
    if loaded != raw::REDISMODULE_OK as c_int {
        return Err("a bisync.* line in the configuration file was refused".into());
    }
    log::verbose("module configs registered");
    Ok(())
}
