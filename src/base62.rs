//! Fixed-width base62 (`0-9A-Za-z`) for the opaque key format.
//!
//! Only what the key format needs: a `u128` (key ids, CRC32 values) written as a fixed number
//! of digits, and parsed back with overflow checks. The secret part of a key is generated
//! directly as random base62 characters, so it never needs converting.

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Value of one base62 digit, or `None` for any other byte.
#[inline]
pub(crate) fn digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'A'..=b'Z' => Some(byte - b'A' + 10),
        b'a'..=b'z' => Some(byte - b'a' + 36),
        _ => None,
    }
}

/// The base62 character for `value` (`value < 62`).
#[inline]
pub(crate) fn char_of(value: u8) -> u8 {
    ALPHABET[usize::from(value)]
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
pub(crate) fn decode_fixed(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &byte| {
        acc.checked_mul(62)?.checked_add(u128::from(digit(byte)?))
    })
}

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
        assert_eq!(decode_fixed("0é".as_bytes()), None);
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
