//! Exhaustive single-edit properties: every one-character substitution, deletion and
//! insertion of a freshly minted opaque key is refused by its shape or checksum alone (no
//! store read), and every one-character change of a JWT is refused before the store.

// Test code: a panic is how a test reports a failure, and fixtures index and count
// over small known values.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::support::*;
use keygate::{KeyFormat, NewKey, Rejection};

/// The characters substituted and inserted: the base62 alphabet plus `_` and `-`.
fn edit_chars() -> Vec<char> {
    ALPHABET
        .iter()
        .map(|&b| char::from(b))
        .chain(['_', '-'])
        .collect()
}

/// What the design says an opaque candidate is refused for, from the outside: another
/// prefix, then the shape of the body, then the checksum.
fn expected(candidate: &str) -> Rejection {
    if !candidate.contains('_') {
        return Rejection::Malformed; // the separator itself was edited away
    }
    let Some(body) = candidate.strip_prefix("abs_") else {
        return Rejection::WrongPrefix;
    };
    if body.len() != BODY_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Rejection::Malformed;
    }
    Rejection::BadChecksum
}

#[tokio::test]
async fn every_single_edit_of_an_opaque_key_is_refused_offline() {
    let h = Harness::new();
    let chars = edit_chars();
    assert_eq!(chars.len(), 64);
    let mut keys = Vec::new();
    for i in 0..20 {
        let issued = h
            .gate
            .mint(NewKey::new(format!("key {i}"), "alice"))
            .await
            .unwrap();
        keys.push(issued.key.expose().to_owned());
    }
    settle().await;
    let calls = h.store.calls();
    let records = h.store.all().await;
    let mut tried = 0usize;
    let mut by_reason = std::collections::BTreeMap::<&str, usize>::new();

    for key in &keys {
        for candidate in single_edits(key, &chars) {
            assert_ne!(&candidate, key);
            let got = h
                .gate
                .verify(&candidate)
                .await
                .err()
                .and_then(|e| e.rejection());
            let want = expected(&candidate);
            assert_eq!(got, Some(want), "{candidate:?} (from {key:?})");
            *by_reason.entry(want.as_str()).or_default() += 1;
            tried += 1;
        }
    }
    // 20 keys x (75 positions x 63 substitutions + 75 deletions + 76 x 64 insertions).
    assert_eq!(tried, 20 * (75 * 63 + 75 + 76 * 64));
    println!("{tried} edits refused: {by_reason:?}");
    assert!(by_reason["bad_checksum"] > 0);
    assert!(by_reason["malformed"] > 0);
    assert!(by_reason["wrong_prefix"] > 0);

    settle().await;
    let after = h.store.calls();
    assert_eq!(after.get, calls.get, "an edited key reached the store");
    assert_eq!(after, calls);
    assert_eq!(h.users.calls(), 0);
    assert_eq!(h.store.all().await, records);

    // The originals still verify, each with exactly one store read.
    for key in &keys {
        let principal = h.gate.verify(key).await.unwrap();
        assert_eq!(principal.owner_id(), "alice");
    }
    assert_eq!(h.store.calls().get, calls.get + keys.len());
}

/// Every one-character substitution (by `chars`), deletion and insertion (of `chars`) of
/// `key`, each position in turn.
fn single_edits(key: &str, chars: &[char]) -> Vec<String> {
    let original: Vec<char> = key.chars().collect();
    let mut out = Vec::new();
    for pos in 0..original.len() {
        for &c in chars {
            if c != original[pos] {
                let mut edited = original.clone();
                edited[pos] = c;
                out.push(edited.into_iter().collect());
            }
        }
        let mut edited = original.clone();
        edited.remove(pos);
        out.push(edited.into_iter().collect());
    }
    for pos in 0..=original.len() {
        for &c in chars {
            let mut edited = original.clone();
            edited.insert(pos, c);
            out.push(edited.into_iter().collect());
        }
    }
    out
}

#[tokio::test]
async fn every_single_character_change_of_a_jwt_is_refused_before_the_store() {
    let h = Harness::new();
    let mut tokens = Vec::new();
    for (i, expiry) in [None, Some(chrono::TimeDelta::days(7))]
        .into_iter()
        .enumerate()
    {
        let mut new = NewKey::new(format!("jwt {i}"), "alice").format(KeyFormat::Jwt);
        if let Some(lifetime) = expiry {
            new = new.expires_in(lifetime);
        }
        tokens.push(h.gate.mint(new).await.unwrap().key.expose().to_owned());
    }
    settle().await;
    let calls = h.store.calls();
    // base64url plus the separator.
    let chars: Vec<char> = ALPHABET
        .iter()
        .map(|&b| char::from(b))
        .chain(['-', '_', '.'])
        .collect();
    let mut tried = 0usize;
    for token in &tokens {
        let original: Vec<char> = token.chars().collect();
        for pos in 0..original.len() {
            for &c in &chars {
                if c == original[pos] {
                    continue;
                }
                let mut edited = original.clone();
                edited[pos] = c;
                let candidate: String = edited.into_iter().collect();
                let reason = match h.gate.verify(&candidate).await {
                    Ok(_) => panic!("{candidate:?} was accepted"),
                    Err(e) => e
                        .rejection()
                        .unwrap_or_else(|| panic!("{candidate:?}: {e:?}")),
                };
                assert!(
                    reason.decided_without_store(),
                    "{candidate:?}: refused for {reason:?}, after a store read"
                );
                tried += 1;
            }
        }
    }
    assert!(tried > 20_000, "{tried}");
    assert_eq!(h.store.calls(), calls, "an edited JWT reached the store");
    for token in &tokens {
        h.gate.verify(token).await.unwrap();
    }
}
