//! Denial of service (issue 7): a flood of forged, checksum-valid keys through a
//! `CachedStore` leaves the valid key's verify correct, costs at most one store read per
//! forged id, keeps the cache within its bounds, and cannot flood the log.

// Test code: a panic is how a test reports a failure, and fixtures index and count
// over small known values.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::sync::Arc;

use crate::support::*;
use chrono::TimeDelta;
use keygate::{CacheConfig, CachedStore, KeyId, KeyStore, Keygate, NewKey, Pepper, Rejection};

/// The `suppressed=N` of an event line.
fn suppressed(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix("suppressed="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no suppressed count in {line:?}"))
}

/// The `n`th forged id: all of them share `hi ^ lo` (the hash-flooding shape of the
/// review's H1), and none was ever minted.
fn forged_id(n: u64) -> KeyId {
    const FOLD: u64 = 0x5a5a_5a5a_1234_5678;
    let hi = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x0bad_cafe;
    let id = (u128::from(hi) << 64) | u128::from(hi ^ FOLD);
    format!("{id:032x}").parse().unwrap()
}

/// A checksum-valid opaque key for `id`: `abs_` + 22 base62 id chars + 43 secret chars +
/// 6 base62 chars of the CRC-32 of everything before.
fn forged_key(id: KeyId) -> String {
    forge_opaque(PREFIX, id, &"x".repeat(SECRET_LEN))
}

#[tokio::test]
async fn ten_thousand_forged_refusals_log_a_handful_of_events_and_count_all() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let h = Harness::new();
    capture.take();

    const N: u64 = 10_000;
    for n in 0..N {
        let token = forged_key(forged_id(n));
        let refused = h.gate.verify(&token).await.unwrap_err();
        assert_eq!(refused.rejection(), Some(Rejection::UnknownKey));
        h.clock.advance(TimeDelta::milliseconds(1)); // 10 s in all
    }
    let lines = capture.take();
    let events: Vec<&String> = lines.iter().filter(|l| l.contains("unknown_key")).collect();
    assert!(
        (2..=12).contains(&events.len()),
        "{} events for {N} refusals",
        events.len()
    );
    // Each event names a key id and says how many refusals it stands for.
    assert!(events.iter().all(|l| l.contains("key_id=")), "{events:#?}");
    let logged = events.len() as u64 + events.iter().map(|l| suppressed(l)).sum::<u64>();
    let counts = h.gate.refusal_counts();
    assert_eq!(counts.get("unknown_key"), N);
    // Events plus what they report as suppressed account for every refusal but those
    // suppressed since the last event.
    assert!(logged <= N && N - logged < 1000, "{logged} of {N}");

    // Another reason is still logged at once, in the same instant.
    let mut typo = forged_key(forged_id(0));
    typo.replace_range(10..11, if &typo[10..11] == "a" { "b" } else { "a" });
    h.assert_refused(&typo, Rejection::BadChecksum).await;
    let lines = capture.take();
    assert_eq!(
        lines.iter().filter(|l| l.contains("bad_checksum")).count(),
        1,
        "{lines:#?}"
    );
    assert_eq!(h.gate.refusal_counts().get("bad_checksum"), 1);
    let listed: Vec<(&str, u64)> = counts.iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(listed, [("unknown_key", N)]);
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_forged_keys_through_a_cached_store_stays_bounded() {
    const FORGED: u64 = 100_000;
    let counting = CountingStore::new();
    let config = CacheConfig::new().capacity(1_000).negative_capacity(512);
    let cache = Arc::new(CachedStore::new(counting.clone(), config));
    let gate = Keygate::builder(
        cache.clone() as Arc<dyn KeyStore>,
        Pepper::new(1, PEPPER_V1).unwrap(),
    )
    .prefix(PREFIX)
    .build()
    .unwrap();
    let issued = gate.mint(NewKey::new("valid", "alice")).await.unwrap();
    let valid = issued.key.expose().to_owned();

    for n in 0..FORGED {
        let token = forged_key(forged_id(n));
        // Each forged id twice in a row: the second is answered by the negative cache.
        for _ in 0..2 {
            let refused = gate.verify(&token).await.unwrap_err();
            assert_eq!(refused.rejection(), Some(Rejection::UnknownKey));
        }
        if n % 100 == 0 {
            let principal = gate
                .verify(&valid)
                .await
                .expect("the valid key still verifies");
            assert_eq!(principal.key_id(), issued.record.id);
        }
    }
    let stats = cache.stats();
    // One read for the valid key (it stays cached: time is paused, TTL 5 s), one per
    // forged id: never more.
    assert_eq!(counting.calls().get, FORGED as usize + 1, "{stats:?}");
    assert_eq!(stats.negative_hits, FORGED, "{stats:?}");
    assert!(stats.entries <= 1_000, "{stats:?}");
    assert!(stats.negative_entries <= 512, "{stats:?}");
    assert_eq!(counting.calls().writes(), 1, "only the mint wrote");
    assert_eq!(gate.refusal_counts().get("unknown_key"), 2 * FORGED);
}
