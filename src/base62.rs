//! Fixed-width base62 (`0-9A-Za-z`) for the opaque key format.
//!
//! Only what the key format needs: a `u128` (key ids, CRC32 values) written as a fixed number
//! of digits, and parsed back with overflow checks. The secret part of a key is generated
//! directly as random base62 characters, so it never needs converting.

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Digit value of every byte; 0xFF for bytes outside the alphabet.
// Evaluated at compile time: an out-of-range index here would fail the build, not a request.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
const DIGITS: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < 62 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Value of one base62 digit, or `None` for any other byte.
#[cfg(test)]
#[inline]
pub(crate) fn digit(byte: u8) -> Option<u8> {
    let d = DIGITS[usize::from(byte)];
    (d != 0xFF).then_some(d)
}

/// Whether every byte is a base62 digit; branch-free over the input (random base62 makes
/// a range-by-range check mispredict on nearly every byte).
#[inline]
// Hot path (every opaque verify): a `u8` indexes the 256-entry `DIGITS` table.
#[allow(clippy::indexing_slicing)]
pub(crate) fn all_digits(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .fold(0u8, |acc, &b| acc | DIGITS[usize::from(b)])
        & 0x80
        == 0
}

/// The base62 character for `value` (`value < 62`).
#[inline]
// `value % 62` < 62 = `ALPHABET.len()` (callers already reduce it; the compiler folds the
// second `% 62` away where it can see that).
#[allow(clippy::indexing_slicing)]
pub(crate) fn char_of(value: u8) -> u8 {
    ALPHABET[usize::from(value % 62)]
}

/// Writes `value` as exactly `out.len()` digits, most significant first, zero padded.
///
/// The caller picks a width wide enough for the value (22 digits hold any `u128`,
/// 6 digits any `u32`); a value that does not fit is a bug, caught in debug builds.
pub(crate) fn encode_fixed(mut value: u128, out: &mut [u8]) {
    for slot in out.iter_mut().rev() {
        *slot = char_of((value % 62) as u8);
        value /= 62;
    }
    debug_assert_eq!(value, 0, "value does not fit the width");
}

/// Parses fixed-width digits back into a number; `None` on a non-digit or on overflow.
/// The width is a constant, so the compiler unrolls the loops.
// Hot path (every opaque verify). Indexing: a `u8` indexes the 256-entry `DIGITS` table, and
// a chunk's length (at most 10) the 11-entry `POW62`. Arithmetic: ten digits stay below
// 62^10 < 2^60, so `part` never overflows (it wraps by design on a bad digit, whose value
// is then never used); the u128 accumulation is checked.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
pub(crate) fn decode_fixed<const N: usize>(digits: &[u8; N]) -> Option<u128> {
    // 62^10 < 2^64: ten digits at a time fit a u64 with no overflow check, and the
    // (rare, branch-predictable) u128 overflow checks are paid once per chunk.
    let mut acc: u128 = 0;
    let mut bad = 0u8;
    for chunk in digits.chunks(10) {
        let mut part: u64 = 0;
        for &byte in chunk {
            let d = DIGITS[usize::from(byte)];
            bad |= d;
            part = part.wrapping_mul(62).wrapping_add(u64::from(d));
        }
        acc = acc
            .checked_mul(u128::from(POW62[chunk.len()]))?
            .checked_add(u128::from(part))?;
    }
    (bad & 0x80 == 0).then_some(acc)
}

/// `62^n` for `n` in `0..=10` (a chunk of [`decode_fixed`]).
// Evaluated at compile time: 62^10 < 2^60 fits, and an overflow would fail the build.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
const POW62: [u64; 11] = {
    let mut table = [1u64; 11];
    let mut i = 1;
    while i < 11 {
        table[i] = table[i - 1] * 62;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_extremes_at_fixed_width() {
        for value in [0u128, 1, 61, 62, u128::from(u32::MAX), u128::MAX] {
            let mut buf = [0u8; 22];
            encode_fixed(value, &mut buf);
            assert_eq!(decode_fixed(&buf), Some(value));
        }
        let mut buf = [0u8; 22];
        encode_fixed(0, &mut buf);
        assert_eq!(&buf, b"0000000000000000000000");
    }

    #[test]
    fn six_digits_hold_any_u32() {
        let mut buf = [0u8; 6];
        encode_fixed(u128::from(u32::MAX), &mut buf);
        assert_eq!(decode_fixed(&buf), Some(u128::from(u32::MAX)));
    }

    #[test]
    fn rejects_overflow_and_foreign_bytes() {
        // 23 'z's exceed u128::MAX.
        assert_eq!(decode_fixed(&[b'z'; 23]), None);
        assert_eq!(decode_fixed(b"00-0"), None);
        assert_eq!(decode_fixed(b"00_0"), None);
        assert_eq!(decode_fixed(&[b'0', 0xC3, 0xA9]), None); // "0é"
    }

    #[test]
    fn digit_and_char_agree_over_the_alphabet() {
        for value in 0..62u8 {
            assert_eq!(digit(char_of(value)), Some(value));
        }
        for byte in 0..=255u8 {
            if let Some(v) = digit(byte) {
                assert_eq!(char_of(v), byte);
            }
        }
    }
}
