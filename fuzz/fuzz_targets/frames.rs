//! Bytes a peer sends on the link, before and after authentication.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    redis_bisync::core::fuzzing::frames(data);
});
