//! Mutual authentication and per-frame integrity on a shared secret.
//!
//! Why: the link port is a door into the dataset. Each side proves it knows
//! the secret by an HMAC over both sides' fresh nonces (the secret never
//! crosses the wire, and a recorded handshake cannot be replayed because the
//! verifier's nonce is new every time). Both then derive per-direction
//! session keys, and every later frame carries an HMAC over a frame counter
//! and its body, so nothing can be injected, replayed or reordered inside an
//! established link.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a frame tag.
pub const TAG_LEN: usize = 32;

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    };
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
    m
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    // HMAC-SHA256 takes keys of every length; keep a total function anyway.
    HmacSha256::new_from_slice(&[0u8; 32])
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

/// A fresh random nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    if getrandom::getrandom(&mut n).is_err() {
        // No OS randomness: fall back to time and address entropy; still
        // unique per connection, which is what replay protection needs.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        n[..16].copy_from_slice(&t.to_le_bytes());
        n[16..24].copy_from_slice(&(std::process::id() as u64).to_le_bytes());
        let addr = &t as *const u128 as usize as u64;
        n[24..].copy_from_slice(&addr.to_le_bytes());
    }
    n
}

fn proof_mac(
    secret: &[u8],
    prover: &str,
    verifier_nonce: &[u8],
    prover_nonce: &[u8],
) -> HmacSha256 {
    mac(
        secret,
        &[
            b"bisync-proof-v1",
            prover.as_bytes(),
            verifier_nonce,
            prover_nonce,
        ],
    )
}

/// The proof that `prover` knows the secret, bound to both nonces.
pub fn proof(secret: &[u8], prover: &str, verifier_nonce: &[u8], prover_nonce: &[u8]) -> Vec<u8> {
    proof_mac(secret, prover, verifier_nonce, prover_nonce)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// Check a peer's proof in constant time.
pub fn verify_proof(
    secret: &[u8],
    prover: &str,
    verifier_nonce: &[u8],
    prover_nonce: &[u8],
    tag: &[u8],
) -> bool {
    proof_mac(secret, prover, verifier_nonce, prover_nonce)
        .verify_slice(tag)
        .is_ok()
}

/// Per-direction keys and counters of one authenticated session.
pub struct SessionKeys {
    send_key: Vec<u8>,
    recv_key: Vec<u8>,
    send_ctr: u64,
    recv_ctr: u64,
}

impl SessionKeys {
    /// Derive the keys; both sides get mirrored keys from the same inputs.
    pub fn derive(secret: &[u8], me: &str, my_nonce: &[u8], peer: &str, peer_nonce: &[u8]) -> Self {
        let dir = |from: &str, from_nonce: &[u8], to: &str, to_nonce: &[u8]| {
            mac(
                secret,
                &[
                    b"bisync-session-v1",
                    from.as_bytes(),
                    from_nonce,
                    to.as_bytes(),
                    to_nonce,
                ],
            )
            .finalize()
            .into_bytes()
            .to_vec()
        };
        SessionKeys {
            send_key: dir(me, my_nonce, peer, peer_nonce),
            recv_key: dir(peer, peer_nonce, me, my_nonce),
            send_ctr: 0,
            recv_ctr: 0,
        }
    }

    /// Tag for the next outgoing frame body.
    pub fn seal(&mut self, body: &[u8]) -> Vec<u8> {
        self.send_ctr += 1;
        mac(&self.send_key, &[&self.send_ctr.to_be_bytes(), body])
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Check the tag of the next incoming frame body (order is enforced by the counter).
    pub fn open(&mut self, body: &[u8], tag: &[u8]) -> bool {
        self.recv_ctr += 1;
        mac(&self.recv_key, &[&self.recv_ctr.to_be_bytes(), body])
            .verify_slice(tag)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &[u8] = b"0123456789abcdef-secret";

    #[test]
    fn proofs_verify_only_with_the_secret_and_nonces() {
        let (na, nb) = (nonce(), nonce());
        assert_ne!(na, nb);
        let p = proof(S, "a", &nb, &na);
        assert!(verify_proof(S, "a", &nb, &na, &p));
        assert!(!verify_proof(b"another-secret-xx", "a", &nb, &na, &p));
        assert!(
            !verify_proof(S, "b", &nb, &na, &p),
            "bound to the prover id"
        );
        let fresh = nonce();
        assert!(
            !verify_proof(S, "a", &fresh, &na, &p),
            "a replay against a new nonce fails"
        );
    }

    #[test]
    fn session_frames_authenticate_in_order() {
        let (na, nb) = (nonce(), nonce());
        let mut a = SessionKeys::derive(S, "a", &na, "b", &nb);
        let mut b = SessionKeys::derive(S, "b", &nb, "a", &na);
        let t1 = a.seal(b"one");
        let t2 = a.seal(b"two");
        assert!(b.open(b"one", &t1));
        assert!(!b.open(b"one", &t1), "a replayed frame fails");
        let mut b2 = SessionKeys::derive(S, "b", &nb, "a", &na);
        assert!(!b2.open(b"two", &t2), "a reordered frame fails");
        let mut b3 = SessionKeys::derive(S, "b", &nb, "a", &na);
        assert!(!b3.open(b"onE", &t1), "a tampered frame fails");
        let back = b.seal(b"ack");
        let mut a2 = SessionKeys::derive(S, "a", &na, "b", &nb);
        assert!(a2.open(b"ack", &back));
    }
}
