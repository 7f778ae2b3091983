//! A peer's hello and proof, as the receiving node checks them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    redis_bisync::core::fuzzing::handshake(data);
});
