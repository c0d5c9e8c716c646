//! [`Secret`]: a plaintext key that zeroizes on drop and never prints itself.

use std::fmt;

use zeroize::Zeroizing;

/// A plaintext API key, returned once by [`Keygate::mint`](crate::Keygate::mint) and
/// [`Keygate::rotate`](crate::Keygate::rotate).
///
/// The bytes are wiped when the value is dropped. `Debug` and `Display` print
/// `[redacted]`, so a key cannot leak through `{:?}` in a log line or a panic message;
/// call [`expose`](Secret::expose) where the plaintext is really meant to go (the one
/// response that shows it to the admin).
///
/// ```
/// let secret = keygate::Secret::from("abs_not-a-real-key".to_owned());
/// assert_eq!(format!("{secret:?}"), "Secret([redacted])");
/// assert_eq!(secret.to_string(), "[redacted]");
/// assert_eq!(secret.expose(), "abs_not-a-real-key");
/// ```
///
/// There is no `==`: comparing plaintext keys is the verifier's job
/// ([`Keygate::verify`](crate::Keygate::verify) compares keyed hashes in constant time), and
/// a byte-by-byte comparison would leak through its timing how much of a key matched.
///
/// ```compile_fail
/// let a = keygate::Secret::from("abs_one".to_owned());
/// let b = keygate::Secret::from("abs_two".to_owned());
/// let _ = a == b; // no `PartialEq`
/// ```
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// The plaintext. Every call site is a place the key leaves keygate: keep them few.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(Zeroizing::new(value))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
