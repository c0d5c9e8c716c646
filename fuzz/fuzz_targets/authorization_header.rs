//! `Authorization` header values → `Keygate::verify_headers`.
//!
//! Input: the header values separated by NUL bytes (an empty input is no header at all);
//! `$T<d>` expands to fixture key d's token, `$X` to 8300 `A`s (past the length cap).
//!
//! Oracle, from the documented header rules (src/http.rs, ARCHITECTURE.md verify step 1):
//! - no header → `MissingCredentials`; two or more → `InvalidRequest(MultipleHeaders)`;
//! - a value over 8256 bytes → `Oversize`; a byte outside printable ASCII →
//!   `InvalidCharacters`;
//! - after trimming spaces, the scheme (up to the first space) must be `Bearer` in any case,
//!   else `MissingCredentials`; the rest, after spaces, must be an RFC 6750 b64token,
//!   else `MalformedBearer`;
//! - the token then verifies only if it is exactly a fixture key's token in a good state
//!   (and the principal is that key); an opaque-looking token gets the refusal the opaque
//!   rules give; anything else is some `InvalidKey`;
//! - the store holds exactly the same records afterwards.
#![no_main]

mod common;

use common::{check_outcome, expand, fixture, opaque_expectation, Expect};
use keygate::{RequestError, VerifyError};
use libfuzzer_sys::fuzz_target;

const MAX_HEADER_LEN: usize = 8192 + 64;

enum Header<'a> {
    Missing,
    Invalid(RequestError),
    Token(&'a str),
}

fn read(values: &[Vec<u8>]) -> Header<'_> {
    let [value] = values else {
        return if values.is_empty() {
            Header::Missing
        } else {
            Header::Invalid(RequestError::MultipleHeaders)
        };
    };
    if value.len() > MAX_HEADER_LEN {
        return Header::Invalid(RequestError::Oversize);
    }
    if value.iter().any(|&b| !(b' '..=b'~').contains(&b)) {
        return Header::Invalid(RequestError::InvalidCharacters);
    }
    let text = std::str::from_utf8(value).expect("printable ASCII");
    let text = text.trim_matches(' ');
    let (scheme, rest) = match text.find(' ') {
        Some(at) => (&text[..at], &text[at + 1..]),
        None => (text, ""),
    };
    if scheme.to_ascii_lowercase() != "bearer" {
        return Header::Missing;
    }
    let token = rest.trim_start_matches(' ');
    let body = token.trim_end_matches('=');
    let b64token = !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if b64token {
        Header::Token(token)
    } else {
        Header::Invalid(RequestError::MalformedBearer)
    }
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let values: Vec<Vec<u8>> = if data.is_empty() {
        Vec::new()
    } else {
        data.split(|&b| b == 0)
            .map(|v| {
                let v = expand(fx, v);
                let mut out = Vec::with_capacity(v.len());
                let mut i = 0;
                while i < v.len() {
                    if v[i..].starts_with(b"$X") {
                        out.extend(std::iter::repeat_n(b'A', 8300));
                        i += 2;
                    } else {
                        out.push(v[i]);
                        i += 1;
                    }
                }
                out
            })
            .collect()
    };
    let got = common::block_on(fx.gate.verify_headers(values.iter().map(Vec::as_slice)));
    match read(&values) {
        Header::Missing => assert!(
            matches!(got, Err(VerifyError::MissingCredentials)),
            "{values:?}: expected missing credentials, got {:?}",
            got.map(|p| p.key_id())
        ),
        Header::Invalid(e) => assert!(
            matches!(got, Err(VerifyError::InvalidRequest(g)) if g == e),
            "{values:?}: expected invalid request {e:?}, got {:?}",
            got.map(|p| p.key_id())
        ),
        Header::Token(token) => {
            let expect = match fx.by_token(token) {
                Some(key) => key.outcome,
                None => opaque_expectation(fx, token),
            };
            debug_assert!(!matches!(expect, Expect::Ok(_)) || fx.by_token(token).is_some());
            check_outcome(token, expect, &got);
        }
    }
    fx.assert_store_unchanged();
});
