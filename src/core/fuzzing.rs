//! Entry points for fuzzing whatever a peer controls.
//!
//! Why in the crate: the `cargo fuzz` targets under `fuzz/` and the
//! deterministic corpus replay in the normal test suite
//! (`tests/fuzz_corpus.rs`) call the very same functions, so a crash found
//! by the fuzzer is a regression test the day it is added to the corpus.
//! Each function must return normally for every input: an error is fine,
//! a panic, a hang or an unbounded allocation is a bug.

use super::auth::{self, SessionKeys};
use super::codec;
use super::image;
use super::pending::PendingWrites;
use super::protocol::{Frame, Hello, PROTOCOL_VERSION};
use crate::link::handshake::{check_hello, peer_position, PRE_AUTH_FRAME_LIMIT};

/// Bytes from the network before and after authentication: frame reading
/// under both limits, authenticated reading, and everything done with a
/// decoded frame (hello checks, batch planning, image rebuilding).
pub fn frames(data: &[u8]) {
    let mut r = data;
    while let Ok(frame) = codec::read_frame(&mut r, PRE_AUTH_FRAME_LIMIT) {
        use_frame(&frame);
    }
    let mut r = data;
    while let Ok(frame) = codec::read_frame(&mut r, 1 << 20) {
        use_frame(&frame);
    }
    let secret = b"fuzzing-secret-0123456789";
    let mut keys = SessionKeys::derive(secret, "a", &[1; 32], "b", &[2; 32]);
    let mut r = data;
    while let Ok((frame, _)) = codec::read_frame_authenticated(&mut r, 1 << 20, &mut keys) {
        use_frame(&frame);
    }
}

/// A handshake as the receiving node sees it: the peer's hello and proof.
pub fn handshake(data: &[u8]) {
    let ours = Hello {
        protocol: PROTOCOL_VERSION,
        node_id: "a".into(),
        databases: 16,
        rdb_version: 10,
        stream_id: 7,
        resume: None,
        nonce: vec![3; auth::NONCE_LEN],
        auth: true,
        fresh: false,
        empty: false,
        source: false,
        overflowed: false,
        restored: None,
        replayed_keys: Vec::new(),
    };
    let mut r = data;
    if let Ok(Frame::Hello(theirs)) = codec::read_frame(&mut r, PRE_AUTH_FRAME_LIMIT) {
        let _ = check_hello(&ours, &theirs);
        let _ = peer_position(ours.stream_id, &theirs);
        if let Ok(Frame::Proof(tag)) = codec::read_frame(&mut r, PRE_AUTH_FRAME_LIMIT) {
            let _ = auth::verify_proof(
                b"fuzzing-secret-0123456789",
                &theirs.node_id,
                &ours.nonce,
                &theirs.nonce,
                &tag,
            );
        }
    }
}

fn use_frame(frame: &Frame) {
    match frame {
        Frame::Hello(h) => {
            let _ = check_hello(h, h);
        }
        Frame::Batch(b) => {
            let mut table = PendingWrites::new();
            let _ = super::decide::check_seq(0, b);
            let _ = super::decide::plan_batch(&mut table, b, "b", "a");
            for e in &b.entries {
                if let super::protocol::Op::Set {
                    key,
                    value,
                    expire_at_ms,
                } = &e.op
                {
                    let _ = image::rebuild(key, value, *expire_at_ms);
                }
            }
        }
        _ => {}
    }
}
