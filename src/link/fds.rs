//! The module's sockets, remembered so a forked child can close them.
//!
//! Why: BGSAVE and AOF rewrite fork the server; a child inherits our
//! listening socket and connections, and if it outlives a crash of the
//! parent, a restarted server cannot bind the port (DESIGN §6). The child
//! handler may not lock or allocate, so the registry is a fixed array of
//! atomics.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;

const SLOTS: usize = 256;
static FDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];
static HOOK: Once = Once::new();

extern "C" fn close_in_child() {
    for slot in FDS.iter() {
        let fd = slot.load(Ordering::Relaxed);
        if fd >= 0 {
            // SAFETY: in the child right after fork; closing our own
            // descriptor (not shutting it down) leaves the parent's
            // connection untouched.
            unsafe {
                libc::close(fd);
            }
        }
    }
}

/// Install the fork handler once.
pub fn install_fork_hook() {
    HOOK.call_once(|| {
        // SAFETY: registers a handler that only closes descriptors.
        unsafe {
            libc::pthread_atfork(None, None, Some(close_in_child));
        }
    });
}

/// Remember `fd` until the returned guard drops.
pub fn register(fd: RawFd) -> FdGuard {
    for (i, slot) in FDS.iter().enumerate() {
        if slot
            .compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return FdGuard { slot: Some(i) };
        }
    }
    FdGuard { slot: None }
}

/// Forgets its descriptor on drop.
pub struct FdGuard {
    slot: Option<usize>,
}

impl FdGuard {
    /// False when the registry was full: the caller must not keep the socket.
    pub fn is_registered(&self) -> bool {
        self.slot.is_some()
    }
}

impl Drop for FdGuard {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            FDS[i].store(-1, Ordering::Release);
        }
    }
}
