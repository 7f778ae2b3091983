//! `(db, key)` packed into 24 bytes, short keys without a heap allocation.
//!
//! Why: the un-acknowledged writes table holds one of these per key, a
//! million of them while the peer is away. `(u32, Vec<u8>)` costs 32 bytes
//! plus a heap block per key (and an allocation per insert and per lookup);
//! most Redis keys are short, so they live inline here and a lookup builds
//! its probe on the stack. The packed form is the db as LEB128 followed by
//! the key bytes: equal `(db, key)` pairs give equal bytes and different
//! pairs different bytes, so hashing and comparing the bytes is enough.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

/// Packed bytes up to this length are stored inline.
const INLINE: usize = 22;

/// An owned `(db, key)`; see the module doc.
#[derive(Clone)]
pub enum TableKey {
    /// Short: packed bytes in place.
    Inline {
        /// Number of bytes used in `buf`.
        len: u8,
        /// The packed bytes.
        buf: [u8; INLINE],
    },
    /// Long: packed bytes on the heap.
    Heap(Box<[u8]>),
}

fn put_db(out: &mut [u8; 5], mut db: u32) -> usize {
    let mut n = 0;
    loop {
        let byte = (db & 0x7f) as u8;
        db >>= 7;
        if db == 0 {
            out[n] = byte;
            return n + 1;
        }
        out[n] = byte | 0x80;
        n += 1;
    }
}

impl TableKey {
    /// Pack `(db, key)`.
    pub fn new(db: u32, key: &[u8]) -> TableKey {
        let mut prefix = [0u8; 5];
        let p = put_db(&mut prefix, db);
        let total = p + key.len();
        if total <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..p].copy_from_slice(&prefix[..p]);
            buf[p..total].copy_from_slice(key);
            TableKey::Inline {
                len: total as u8,
                buf,
            }
        } else {
            let mut v = Vec::with_capacity(total);
            v.extend_from_slice(&prefix[..p]);
            v.extend_from_slice(key);
            TableKey::Heap(v.into_boxed_slice())
        }
    }

    /// The packed bytes.
    pub fn packed(&self) -> &[u8] {
        match self {
            TableKey::Inline { len, buf } => &buf[..usize::from(*len).min(INLINE)],
            TableKey::Heap(b) => b,
        }
    }

    /// Split into db and key (the packing is ours, so it always parses).
    pub fn parts(&self) -> (u32, &[u8]) {
        let bytes = self.packed();
        let mut db: u32 = 0;
        for (i, b) in bytes.iter().enumerate().take(5) {
            db |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return (db, &bytes[i + 1..]);
            }
        }
        (db, &[])
    }

    /// The db.
    pub fn db(&self) -> u32 {
        self.parts().0
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        self.parts().1
    }
}

impl PartialEq for TableKey {
    fn eq(&self, other: &Self) -> bool {
        self.packed() == other.packed()
    }
}

impl Eq for TableKey {}

impl Hash for TableKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.packed().hash(state);
    }
}

impl Borrow<[u8]> for TableKey {
    fn borrow(&self) -> &[u8] {
        self.packed()
    }
}

impl std::fmt::Debug for TableKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (db, key) = self.parts();
        write!(f, "({db}, {:?})", String::from_utf8_lossy(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn is_24_bytes() {
        assert_eq!(std::mem::size_of::<TableKey>(), 24);
    }

    #[test]
    fn short_keys_are_inline_long_ones_on_the_heap() {
        assert!(matches!(
            TableKey::new(0, b"key:000000123456"),
            TableKey::Inline { .. }
        ));
        assert!(matches!(
            TableKey::new(0, &[b'x'; 21]),
            TableKey::Inline { .. }
        ));
        assert!(matches!(TableKey::new(0, &[b'x'; 22]), TableKey::Heap(_)));
        assert!(matches!(
            TableKey::new(300, &[b'x'; 20]),
            TableKey::Inline { .. }
        ));
        assert!(matches!(TableKey::new(300, &[b'x'; 21]), TableKey::Heap(_)));
    }

    proptest! {
        #[test]
        fn round_trips(db in any::<u32>(), key in proptest::collection::vec(any::<u8>(), 0..64)) {
            let k = TableKey::new(db, &key);
            prop_assert_eq!(k.parts(), (db, key.as_slice()));
        }

        #[test]
        fn equal_exactly_when_db_and_key_are_equal(
            a in (0u32..3, proptest::collection::vec(0u8..3, 0..4)),
            b in (0u32..3, proptest::collection::vec(0u8..3, 0..4)),
        ) {
            let (ka, kb) = (TableKey::new(a.0, &a.1), TableKey::new(b.0, &b.1));
            prop_assert_eq!(ka == kb, a == b);
        }
    }
}
