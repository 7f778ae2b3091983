//! Frame encoding: a 4-byte big-endian length, then a bincode body.
//!
//! Why: the only place that knows the byte format. The length is checked
//! against a limit before anything is allocated, so a hostile peer cannot
//! make us reserve memory by announcing a huge frame; a body that does not
//! decode is an error, never a panic.

use std::io::{self, Read, Write};

use thiserror::Error;

use super::auth::{SessionKeys, TAG_LEN};
use super::protocol::Frame;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The socket failed or closed inside a frame.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer announced a frame larger than we accept.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// Limit in force.
        limit: usize,
    },
    /// The body is not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A frame's tag did not verify: injected, tampered or replayed.
    #[error("frame failed authentication (tampered, injected or replayed)")]
    Unauthenticated,
    /// The connection closed cleanly between two frames.
    #[error("connection closed by peer")]
    Closed,
}

/// The one bincode configuration: frames and the saved pairing state are
/// read the way they were written.
pub(crate) fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
}

/// Encode a frame into its bytes on the wire (prefix included).
pub fn encode(frame: &Frame) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; HEADER_LEN];
    bincode::serde::encode_into_std_write(frame, &mut out, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    let body = out.len() - HEADER_LEN;
    let len = u32::try_from(body).map_err(|_| CodecError::TooLarge {
        len: body as u64,
        limit: u32::MAX as usize,
    })?;
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// The number of bytes `value` takes in a frame body, counted without
/// building it (a key image near `max-frame-size` can be hundreds of MB).
pub fn encoded_len<T: serde::Serialize>(value: &T) -> Result<usize, CodecError> {
    /// Counts what is written and keeps nothing.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    bincode::serde::encode_into_std_write(value, &mut n, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    Ok(n.0)
}

/// Encode any value with the link's settings (the pairing state saved in
/// an RDB uses the same format, so one codec change covers both).
pub fn encode_value<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Decode a value written by [`encode_value`]. Trailing bytes are an error.
pub fn decode_value<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (v, used): (T, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(v)
}

/// Decode a frame body (without its prefix). Trailing bytes are an error.
pub fn decode_body(body: &[u8]) -> Result<Frame, CodecError> {
    let (frame, used): (Frame, usize) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes after frame",
            body.len() - used
        )));
    }
    Ok(frame)
}

/// Read one frame, refusing bodies longer than `limit` before allocating.
/// A clean end of stream before the first byte is [`CodecError::Closed`].
pub fn read_frame<R: Read>(r: &mut R, limit: usize) -> Result<Frame, CodecError> {
    read_frame_sized(r, limit).map(|(f, _)| f)
}

/// [`read_frame`], also returning the bytes it consumed.
pub fn read_frame_sized<R: Read>(r: &mut R, limit: usize) -> Result<(Frame, usize), CodecError> {
    let body = read_body(r, limit)?;
    let n = body.len() + HEADER_LEN;
    decode_body(&body).map(|f| (f, n))
}

/// Read one authenticated frame: the body ends with a tag that `keys`
/// must accept before anything is decoded.
pub fn read_frame_authenticated<R: Read>(
    r: &mut R,
    limit: usize,
    keys: &mut SessionKeys,
) -> Result<(Frame, usize), CodecError> {
    let body = read_body(r, limit.saturating_add(TAG_LEN))?;
    if body.len() < TAG_LEN {
        return Err(CodecError::Unauthenticated);
    }
    let (payload, tag) = body.split_at(body.len() - TAG_LEN);
    if !keys.open(payload, tag) {
        return Err(CodecError::Unauthenticated);
    }
    decode_body(payload).map(|f| (f, body.len() + HEADER_LEN))
}

/// Write an encoded frame (prefix included), adding a tag when the session
/// is authenticated. Returns the bytes written.
pub fn write_frame<W: Write>(
    w: &mut W,
    encoded: &[u8],
    keys: Option<&mut SessionKeys>,
) -> Result<usize, CodecError> {
    match keys {
        None => {
            w.write_all(encoded)?;
            Ok(encoded.len())
        }
        Some(k) => {
            let body = encoded
                .get(HEADER_LEN..)
                .ok_or_else(|| CodecError::Malformed("frame shorter than its header".into()))?;
            let tag = k.seal(body);
            let len = u32::try_from(body.len() + tag.len()).map_err(|_| CodecError::TooLarge {
                len: (body.len() + tag.len()) as u64,
                limit: u32::MAX as usize,
            })?;
            w.write_all(&len.to_be_bytes())?;
            w.write_all(body)?;
            w.write_all(&tag)?;
            Ok(HEADER_LEN + body.len() + tag.len())
        }
    }
}

/// Read one length-prefixed body, refusing lengths above `limit` before allocating.
pub fn read_body<R: Read>(r: &mut R, limit: usize) -> Result<Vec<u8>, CodecError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(CodecError::Closed),
            Ok(0) => {
                return Err(CodecError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a frame header",
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > limit {
        return Err(CodecError::TooLarge {
            len: len as u64,
            limit,
        });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::*;
    use proptest::prelude::*;

    #[test]
    fn encoded_len_counts_the_body_exactly() {
        let frame = sample_batch();
        let bytes = encode(&frame).unwrap();
        assert_eq!(encoded_len(&frame).unwrap(), bytes.len() - HEADER_LEN);
    }

    fn sample_batch() -> Frame {
        Frame::Batch(Batch {
            seq: 42,
            resync: false,
            entries: vec![
                Entry {
                    db: 3,
                    stamp: Stamp {
                        hlc: 1 << 40,
                        index: 0,
                    },
                    op: Op::Set {
                        key: b"k".to_vec(),
                        value: Value::String(b"v".to_vec()),
                        expire_at_ms: Some(1_700_000_000_000),
                    },
                },
                Entry {
                    db: 0,
                    stamp: Stamp {
                        hlc: 1 << 40,
                        index: 1,
                    },
                    op: Op::FlushDb,
                },
                Entry {
                    db: 0,
                    stamp: Stamp {
                        hlc: 1 << 40,
                        index: 2,
                    },
                    op: Op::Delete { key: vec![0, 255] },
                },
            ],
        })
    }

    #[test]
    fn element_records_round_trip_without_changing_existing_encodings() {
        let before = encode(&sample_batch()).unwrap();
        let Frame::Batch(mut b) = sample_batch() else {
            unreachable!()
        };
        b.entries.push(Entry {
            db: 1,
            stamp: Stamp {
                hlc: 1 << 40,
                index: 3,
            },
            op: Op::Element {
                key: b"h".to_vec(),
                change: crate::core::protocol::ElementChange::Incr {
                    shape: crate::core::protocol::Shape::Hash,
                    elem: b"f".to_vec(),
                    delta: -7,
                },
                shipped_in: 42,
                seen: 9,
            },
        });
        let f = Frame::Batch(b);
        let bytes = encode(&f).unwrap();
        assert_eq!(read_frame(&mut &bytes[..], 1 << 20).unwrap(), f);
        // The variants protocol 1 sends keep their bytes (the new variant
        // is appended): only the length prefix and the entry count differ.
        assert_eq!(bytes[4..7], before[4..7]);
        assert_eq!(bytes[8..before.len()], before[8..]);
    }

    #[test]
    fn round_trip() {
        let f = sample_batch();
        let bytes = encode(&f).unwrap();
        let back = read_frame(&mut &bytes[..], 1 << 20).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn refuses_oversized_length_before_allocating() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        match read_frame(&mut &bytes[..], 1024) {
            Err(CodecError::TooLarge { len, limit }) => {
                assert_eq!(len, u32::MAX as u64);
                assert_eq!(limit, 1024);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let bytes = encode(&sample_batch()).unwrap();
        for cut in 1..bytes.len() {
            assert!(
                read_frame(&mut &bytes[..cut], 1 << 20).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn clean_eof_is_closed() {
        assert!(matches!(
            read_frame(&mut &[][..], 10),
            Err(CodecError::Closed)
        ));
    }

    #[test]
    fn garbage_body_is_malformed() {
        let mut bytes = vec![0, 0, 0, 4];
        bytes.extend_from_slice(&[200, 1, 2, 3]);
        assert!(matches!(
            read_frame(&mut &bytes[..], 100),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut bytes = encode(&Frame::Ping).unwrap();
        bytes.push(0);
        let len = (bytes.len() - HEADER_LEN) as u32;
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            read_frame(&mut &bytes[..], 100),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn huge_inner_length_does_not_allocate() {
        // A Vec length claiming 2^62 elements inside a small frame must fail cleanly.
        let mut body = vec![2u8]; // Frame::Batch variant index
        body.push(1); // seq
        body.push(0xfd); // varint u64 marker
        body.extend_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(decode_body(&body).is_err());
    }

    #[test]
    fn authenticated_frames_round_trip_and_reject_tampering() {
        let (na, nb) = (crate::core::auth::nonce(), crate::core::auth::nonce());
        let secret = b"0123456789abcdef";
        let mut tx = SessionKeys::derive(secret, "a", &na, "b", &nb);
        let mut rx = SessionKeys::derive(secret, "b", &nb, "a", &na);
        let mut wire = Vec::new();
        write_frame(&mut wire, &encode(&sample_batch()).unwrap(), Some(&mut tx)).unwrap();
        write_frame(&mut wire, &encode(&Frame::Ping).unwrap(), Some(&mut tx)).unwrap();
        let mut r = &wire[..];
        assert_eq!(
            read_frame_authenticated(&mut r, 1 << 20, &mut rx)
                .unwrap()
                .0,
            sample_batch()
        );
        assert_eq!(
            read_frame_authenticated(&mut r, 1 << 20, &mut rx)
                .unwrap()
                .0,
            Frame::Ping
        );
        // Flip one byte of the first frame's body.
        let mut bad = wire.clone();
        bad[HEADER_LEN + 3] ^= 1;
        let mut rx2 = SessionKeys::derive(secret, "b", &nb, "a", &na);
        assert!(matches!(
            read_frame_authenticated(&mut &bad[..], 1 << 20, &mut rx2),
            Err(CodecError::Unauthenticated)
        ));
        // An unauthenticated frame injected into the session.
        let mut rx3 = SessionKeys::derive(secret, "b", &nb, "a", &na);
        let plain = encode(&Frame::Ack(1)).unwrap();
        assert!(read_frame_authenticated(&mut &plain[..], 1 << 20, &mut rx3).is_err());
    }

    #[test]
    fn huge_string_lengths_are_refused_before_allocating() {
        // A Hello whose node_id claims 2^62 bytes, and a Refuse claiming u64::MAX.
        for bytes in [
            &[0u8, 0, 0, 0x0b, 0x00, 0x01, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x40][..],
            &[
                0u8, 0, 0, 0x0a, 0x01, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ][..],
        ] {
            assert!(read_frame(&mut &bytes[..], 1 << 20).is_err());
        }
    }

    proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_body(&body);
        }

        #[test]
        fn batches_round_trip(seq in any::<u64>(), keys in proptest::collection::vec((0u32..16, any::<u64>(), proptest::collection::vec(any::<u8>(), 0..32), proptest::option::of(any::<i64>())), 0..20)) {
            let entries = keys.into_iter().enumerate().map(|(i, (db, hlc, key, exp))| Entry {
                db,
                stamp: Stamp { hlc, index: i as u32 },
                op: Op::Set { key: key.clone(), value: Value::Dump(key), expire_at_ms: exp },
            }).collect();
            let f = Frame::Batch(Batch { seq, resync: false, entries });
            let bytes = encode(&f).unwrap();
            prop_assert_eq!(read_frame(&mut &bytes[..], 1 << 24).unwrap(), f);
        }
    }
}
