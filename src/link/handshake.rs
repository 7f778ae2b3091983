//! The handshake decision, as a pure function.
//!
//! Why pure: what makes two nodes refuse each other (protocol, ids,
//! databases, payload versions) is policy, tested without sockets.

use crate::core::protocol::{Hello, PROTOCOL_VERSION};

/// Largest frame accepted before the handshake completes (a Hello is tiny).
pub const PRE_AUTH_FRAME_LIMIT: usize = 16 * 1024;

/// Check the peer's hello against ours; `Err` is the reason given to both logs.
pub fn check_hello(ours: &Hello, theirs: &Hello) -> Result<(), String> {
    if theirs.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version mismatch: peer speaks {}, this node speaks {PROTOCOL_VERSION}",
            theirs.protocol
        ));
    }
    if !crate::core::config::valid_node_id(&theirs.node_id) {
        return Err("peer sent an invalid node id".into());
    }
    if theirs.node_id == ours.node_id {
        return Err(format!(
            "peer has the same node-id '{}': every node needs its own",
            ours.node_id
        ));
    }
    if theirs.auth != ours.auth {
        return Err(if ours.auth {
            "peer has no secret but this node requires one: give both nodes the same secret-file"
                .to_string()
        } else {
            "peer requires a secret but this node has none: give both nodes the same secret-file"
                .to_string()
        });
    }
    if ours.auth && theirs.nonce.len() != crate::core::auth::NONCE_LEN {
        return Err("peer sent a malformed nonce".into());
    }
    if theirs.databases != ours.databases {
        return Err(format!(
            "databases mismatch: peer has {}, this node has {} (set the same 'databases' on both)",
            theirs.databases, ours.databases
        ));
    }
    // Different RDB versions are accepted: built-in types travel as typed images that every
    // server version rebuilds with ordinary commands, so a 7.0 node pairs with a 7.4 one (a
    // rolling upgrade). Only module data types travel as DUMP payloads; the receiver checks
    // each payload's own version and reports one it cannot restore (glue/apply).
    Ok(())
}

/// Where the peer stopped in our stream: its resume position if it refers
/// to our current stream id, else 0 (it never saw this stream).
pub fn peer_position(our_stream: u64, theirs: &Hello) -> u64 {
    match theirs.resume {
        Some(r) if r.stream_id == our_stream => r.seq,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::Resume;

    fn hello(id: &str) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            node_id: id.into(),
            databases: 16,
            rdb_version: 10,
            stream_id: 7,
            resume: None,
            nonce: vec![1; 32],
            auth: false,
            fresh: false,
            empty: false,
            source: false,
            overflowed: false,
            restored: None,
            replayed_keys: Vec::new(),
        }
    }

    #[test]
    fn accepts_compatible_peer() {
        assert!(check_hello(&hello("a"), &hello("b")).is_ok());
    }

    #[test]
    fn refusals_say_why() {
        let a = hello("a");
        let mut b = hello("a");
        assert!(check_hello(&a, &b).unwrap_err().contains("same node-id"));
        b = hello("b");
        b.databases = 4;
        assert!(check_hello(&a, &b)
            .unwrap_err()
            .contains("databases mismatch"));
        b = hello("b");
        b.protocol = 99;
        assert!(check_hello(&a, &b)
            .unwrap_err()
            .contains("protocol version"));
        b = hello("b");
        b.rdb_version = 12;
        assert!(check_hello(&a, &b).is_ok(), "a newer RDB version pairs");
        b = hello("b");
        b.auth = true;
        assert!(check_hello(&a, &b).unwrap_err().contains("secret"));
        b = hello("b\nx");
        assert!(check_hello(&a, &b).is_err());
    }

    #[test]
    fn position_only_for_our_stream() {
        let mut b = hello("b");
        assert_eq!(peer_position(7, &b), 0);
        b.resume = Some(Resume {
            stream_id: 7,
            seq: 42,
        });
        assert_eq!(peer_position(7, &b), 42);
        assert_eq!(peer_position(8, &b), 0);
    }
}
