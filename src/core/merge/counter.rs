//! Counter arithmetic of the element merge: which values count, and how
//! increments add up.
//!
//! Why its own rule: increments from the two sides are applied in different
//! orders, so the sum must not depend on the order, overflow included. Redis
//! itself refuses an `INCRBY` that would overflow, but two increments that
//! each fit can overflow once the peer's is added. Saturating at the bounds
//! depends on the order (`MAX + 1 - 1` is not `MAX - 1 + 1` when clamped), so
//! the sum **wraps** in two's complement: addition modulo 2^64 (strings and
//! hash fields, i64) or modulo 2^54 (sorted-set scores, which Redis stores as
//! doubles, exact only for integers in [-2^53, 2^53)). Wrapping is the one
//! cheap rule that gives the same value on both sides whatever the order;
//! the price is that a merged counter past `i64::MAX` comes out negative.

use crate::core::protocol::Shape;

/// Bits of the exact integer range of a sorted-set score.
const ZSET_BITS: u32 = 54;

/// The value of `v` as a counter of `shape`, or `None` when it is not an
/// integer in Redis's own canonical form (then it absorbs increments and
/// merges last-writer-wins). Canonical means what `string2ll` accepts and
/// Redis prints back: optional `-`, no `+`, no leading zero, no `-0`.
pub fn parse(shape: Shape, v: &[u8]) -> Option<i64> {
    let digits = v.strip_prefix(b"-").unwrap_or(v);
    let canonical = match digits {
        [] => false,
        [b'0'] => digits.len() == v.len(),
        [first, ..] => *first != b'0' && digits.iter().all(u8::is_ascii_digit),
    };
    if !canonical || digits.len() > 20 {
        return None;
    }
    let n: i64 = std::str::from_utf8(v).ok()?.parse().ok()?;
    (n == wrap(shape, n)).then_some(n)
}

/// `n` brought into the exact range of `shape`, modulo its size.
fn wrap(shape: Shape, n: i64) -> i64 {
    match shape {
        Shape::ZSet => (n << (64 - ZSET_BITS)) >> (64 - ZSET_BITS),
        Shape::Str | Shape::Hash | Shape::Set => n,
    }
}

/// `a + d` in the counter group of `shape` (see the module doc).
pub fn add(shape: Shape, a: i64, d: i64) -> i64 {
    wrap(shape, a.wrapping_add(d))
}

/// The value of a counter as Redis prints it.
pub fn format(n: i64) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// The value after an increment of `d` applied to `current` (missing = 0;
/// a non-integer value absorbs the increment and stays as it is).
pub fn increment(shape: Shape, current: Option<&[u8]>, d: i64) -> Vec<u8> {
    match current {
        None => format(add(shape, 0, d)),
        Some(v) => match parse(shape, v) {
            Some(n) => format(add(shape, n, d)),
            None => v.to_vec(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_integers_only() {
        for ok in [
            "0",
            "7",
            "-7",
            "9223372036854775807",
            "-9223372036854775808",
        ] {
            assert!(parse(Shape::Hash, ok.as_bytes()).is_some(), "{ok}");
        }
        for no in [
            "",
            "-",
            "-0",
            "07",
            "+7",
            " 7",
            "7 ",
            "1.5",
            "1e3",
            "9223372036854775808",
            "abc",
        ] {
            assert_eq!(parse(Shape::Hash, no.as_bytes()), None, "{no}");
        }
    }

    #[test]
    fn zset_scores_count_only_in_the_exact_double_range() {
        assert_eq!(parse(Shape::ZSet, b"9007199254740991"), Some((1 << 53) - 1));
        assert_eq!(parse(Shape::ZSet, b"9007199254740992"), None);
        assert_eq!(parse(Shape::ZSet, b"-9007199254740992"), Some(-(1 << 53)));
        assert_eq!(add(Shape::ZSet, (1 << 53) - 1, 1), -(1 << 53));
    }

    #[test]
    fn overflow_wraps() {
        assert_eq!(add(Shape::Str, i64::MAX, 1), i64::MIN);
        assert_eq!(
            increment(Shape::Hash, Some(b"9223372036854775807"), 2),
            b"-9223372036854775807"
        );
    }

    #[test]
    fn missing_is_zero_and_text_absorbs() {
        assert_eq!(increment(Shape::Str, None, 5), b"5");
        assert_eq!(increment(Shape::Str, Some(b"abc"), 5), b"abc");
        assert_eq!(increment(Shape::Str, Some(b"-3"), 5), b"2");
    }

    proptest! {
        /// The sum of increments does not depend on their order, overflow
        /// included: what makes both sides end equal.
        #[test]
        fn sums_commute(start in any::<i64>(), mut ds in proptest::collection::vec(any::<i64>(), 0..8), seed in any::<u64>()) {
            for shape in [Shape::Str, Shape::ZSet] {
                let s0 = wrap(shape, start);
                let forward = ds.iter().fold(s0, |a, d| add(shape, a, *d));
                let n = ds.len();
                if n > 1 {
                    let k = (seed % n as u64) as usize;
                    ds.rotate_left(k);
                    ds.swap(0, n - 1);
                }
                let other = ds.iter().fold(s0, |a, d| add(shape, a, *d));
                prop_assert_eq!(forward, other);
                prop_assert_eq!(parse(shape, &format(forward)), Some(forward));
            }
        }
    }
}
