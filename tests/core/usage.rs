//! Last-used bookkeeping (after a verify succeeds: off the request path, coalesced, never
//! for a rejected attempt) and pepper rotation (old hashes verify and are re-hashed).

// Test code: a panic is how a test reports a failure, and fixtures index and count
// over small known values.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::time::Duration;

use crate::support::*;
use chrono::TimeDelta;
use keygate::{Error, KeyFormat, NewKey, Pepper, Rejection, StoreError};

#[tokio::test]
async fn last_used_is_recorded_for_an_accepted_key() {
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    h.clock.advance(TimeDelta::seconds(5));
    h.gate.verify(issued.key.expose()).await.unwrap();
    h.gate.flush().await.unwrap();
    let record = h.store.record(issued.record.id).await.unwrap();
    assert_eq!(record.last_used_at, Some(t0() + TimeDelta::seconds(5)));
    // Last use is not a change to the record.
    assert_eq!(record.updated_at, t0());
    assert_eq!(h.store.calls().record_last_used, 1);
    assert_eq!(
        h.store.last_used_batches(),
        vec![vec![(issued.record.id, t0() + TimeDelta::seconds(5))]]
    );
}

#[tokio::test]
async fn refused_attempts_never_record_last_use() {
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let id = issued.record.id;
    let key = issued.key.expose();
    // The right id with a wrong secret: the record is found, the attempt is refused.
    let wrong = forge_opaque(PREFIX, id, &other_secret(secret_part(key, PREFIX)));
    for _ in 0..10 {
        h.assert_refused(&wrong, Rejection::HashMismatch).await;
    }
    // The right key, but revoked; then its owner deactivated.
    h.gate.revoke(id).await.unwrap();
    h.assert_refused(key, Rejection::Inactive).await;
    h.gate
        .update(id, keygate::KeyPatch::new().active(true))
        .await
        .unwrap();
    h.users.set("alice", keygate::Owner::inactive());
    h.assert_refused(key, Rejection::OwnerInactive).await;
    h.users.fail(true);
    assert!(h.gate.verify(key).await.is_err());

    h.gate.flush().await.unwrap();
    assert_eq!(h.store.record(id).await.unwrap().last_used_at, None);
    assert_eq!(h.store.calls().record_last_used, 0);
    assert!(h.store.last_used_batches().is_empty());
}

#[tokio::test]
async fn a_thousand_verifies_in_one_interval_make_one_write() {
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let id = issued.record.id;
    for i in 0..1000 {
        // Time moves, but stays within the 60 s interval.
        h.clock.set(t0() + TimeDelta::milliseconds(i * 59));
        h.gate.verify(issued.key.expose()).await.unwrap();
    }
    h.gate.flush().await.unwrap();
    let calls = h.store.calls();
    assert_eq!(
        calls.record_last_used,
        1,
        "{:?}",
        h.store.last_used_batches()
    );
    assert_eq!(h.store.last_used_batches(), vec![vec![(id, t0())]]);
    assert_eq!(h.store.record(id).await.unwrap().last_used_at, Some(t0()));
    assert_eq!(calls.update, 0);

    // Once the interval has passed, the next use is recorded.
    h.clock.set(t0() + TimeDelta::seconds(60));
    h.gate.verify(issued.key.expose()).await.unwrap();
    h.gate.flush().await.unwrap();
    assert_eq!(h.store.calls().record_last_used, 2);
    assert_eq!(
        h.store.record(id).await.unwrap().last_used_at,
        Some(t0() + TimeDelta::seconds(60))
    );
    // ... and again coalesced for the interval after.
    for s in 61..120 {
        h.clock.set(t0() + TimeDelta::seconds(s));
        h.gate.verify(issued.key.expose()).await.unwrap();
    }
    h.gate.flush().await.unwrap();
    assert_eq!(h.store.calls().record_last_used, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_verifies_of_one_key_make_one_write() {
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let id = issued.record.id;
    let key = std::sync::Arc::new(issued.key.expose().to_owned());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let gate = h.gate.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..250 {
                gate.verify(&key).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    h.gate.flush().await.unwrap();
    // The background write runs on another worker: wait for it (bounded).
    for _ in 0..200 {
        if h.store.calls().record_last_used > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(h.store.calls().record_last_used, 1);
    assert_eq!(h.store.last_used_batches(), vec![vec![(id, t0())]]);
    assert_eq!(h.store.calls().get, 2000);
}

#[tokio::test]
async fn the_interval_is_configurable() {
    let h = Harness::with(|b| b.last_used_interval(Duration::from_secs(10)));
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let id = issued.record.id;
    h.gate.verify(issued.key.expose()).await.unwrap();
    settle().await;
    h.clock.advance(TimeDelta::seconds(9));
    h.gate.verify(issued.key.expose()).await.unwrap();
    settle().await;
    assert_eq!(h.store.record(id).await.unwrap().last_used_at, Some(t0()));
    assert_eq!(h.store.calls().record_last_used, 1);
    h.clock.advance(TimeDelta::seconds(1));
    h.gate.verify(issued.key.expose()).await.unwrap();
    settle().await;
    assert_eq!(
        h.store.record(id).await.unwrap().last_used_at,
        Some(t0() + TimeDelta::seconds(10)),
        "due without an explicit flush once the interval has passed"
    );
    assert_eq!(h.store.calls().record_last_used, 2);
}

#[tokio::test]
async fn many_keys_share_one_batch() {
    let h = Harness::new();
    let mut issued = Vec::new();
    for i in 0..6 {
        issued.push(
            h.gate
                .mint(NewKey::new(format!("k{i}"), "alice"))
                .await
                .unwrap(),
        );
    }
    for key in &issued {
        h.gate.verify(key.key.expose()).await.unwrap();
    }
    h.gate.flush().await.unwrap();
    // The first use starts a background write; the rest are queued for the next one (here
    // the explicit flush, if the background write has not taken them already). Each use is
    // written once, in at most two round trips.
    let batches = h.store.last_used_batches();
    assert!(!batches.is_empty() && batches.len() <= 2, "{batches:?}");
    let mut written: Vec<_> = batches.concat().into_iter().map(|(id, _)| id).collect();
    written.sort();
    let mut ids: Vec<_> = issued.iter().map(|k| k.record.id).collect();
    ids.sort();
    assert_eq!(written, ids);
    for key in &issued {
        assert_eq!(
            h.store.record(key.record.id).await.unwrap().last_used_at,
            Some(t0())
        );
    }
}

#[tokio::test]
async fn a_failing_last_used_write_never_fails_a_verify_and_is_retried() {
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let id = issued.record.id;
    h.store.fail(Op::RecordLastUsed, Failure::Backend);
    for _ in 0..5 {
        let principal = h.gate.verify(issued.key.expose()).await.unwrap();
        assert_eq!(principal.key_id(), id);
        settle().await;
    }
    let attempts = h.store.calls().record_last_used;
    assert_eq!(attempts, 1, "one background attempt in the interval");
    assert_eq!(h.store.record(id).await.unwrap().last_used_at, None);

    // The explicit flush retries and reports the failure.
    let err = h.gate.flush().await.unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::Backend(_))),
        "{err:?}"
    );
    assert_eq!(h.store.calls().record_last_used, attempts + 1);

    h.store.fail(Op::RecordLastUsed, Failure::Timeout);
    let err = h.gate.flush().await.unwrap_err();
    assert!(matches!(err, Error::Store(StoreError::Timeout)), "{err:?}");

    // Once the store is back, the queued use is written with its original time.
    h.store.heal();
    h.clock.advance(TimeDelta::seconds(1));
    h.gate.flush().await.unwrap();
    assert_eq!(h.store.record(id).await.unwrap().last_used_at, Some(t0()));
    let batches = h.store.last_used_batches();
    assert_eq!(batches.last().unwrap(), &vec![(id, t0())]);
    // Nothing is left to write.
    let calls = h.store.calls().record_last_used;
    h.gate.flush().await.unwrap();
    assert_eq!(h.store.calls().record_last_used, calls);
}

#[tokio::test]
async fn a_deleted_keys_queued_use_is_dropped() {
    let h = Harness::new();
    let first = h.gate.mint(NewKey::new("first", "alice")).await.unwrap();
    let second = h.gate.mint(NewKey::new("second", "alice")).await.unwrap();
    h.gate.verify(first.key.expose()).await.unwrap();
    settle().await;
    // Queued behind the first key's write, then deleted.
    h.gate.verify(second.key.expose()).await.unwrap();
    h.gate.delete(second.record.id).await.unwrap();
    h.gate.flush().await.unwrap();
    for batch in h.store.last_used_batches() {
        assert!(
            batch.iter().all(|(id, _)| *id != second.record.id),
            "{batch:?}"
        );
    }
}

#[tokio::test]
async fn dropping_the_gate_writes_what_is_queued() {
    let h = Harness::new();
    let first = h.gate.mint(NewKey::new("first", "alice")).await.unwrap();
    let second = h.gate.mint(NewKey::new("second", "alice")).await.unwrap();
    h.gate.verify(first.key.expose()).await.unwrap();
    settle().await;
    h.gate.verify(second.key.expose()).await.unwrap();
    let Harness { store, gate, .. } = h;
    drop(gate);
    settle().await;
    assert_eq!(
        store.record(second.record.id).await.unwrap().last_used_at,
        Some(t0())
    );
}

// ---------------------------------------------------------------------------------------
// Pepper rotation
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn keys_hashed_under_an_old_pepper_verify_and_are_rehashed() {
    let h = Harness::new();
    let opaque = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let jwt = h
        .gate
        .mint(NewKey::new("j", "alice").format(KeyFormat::Jwt))
        .await
        .unwrap();
    for issued in [&opaque, &jwt] {
        assert_eq!(issued.record.hash.as_ref().unwrap().version, 1);
    }

    // A gate with only the new pepper refuses them.
    let only_v2 = h.sibling_with_pepper(Pepper::new(2, PEPPER_V2).unwrap(), |b| {
        b.jwt_secret(jwt_secret())
    });
    for issued in [&opaque, &jwt] {
        assert_refused_by(
            &only_v2,
            &h.store,
            &h.users,
            issued.key.expose(),
            Rejection::HashMismatch,
        )
        .await;
    }

    // The rotated keyring verifies them and re-hashes them under v2.
    let rotated = h.sibling_with_pepper(rotated_pepper(), |b| b.jwt_secret(jwt_secret()));
    for issued in [&opaque, &jwt] {
        rotated.verify(issued.key.expose()).await.unwrap();
    }
    rotated.flush().await.unwrap();
    for issued in [&opaque, &jwt] {
        let stored = h.store.record(issued.record.id).await.unwrap();
        let hash = stored.hash.as_ref().unwrap();
        assert_eq!(hash.version, 2, "{:?}", issued.record.format);
        assert_ne!(Some(hash), issued.record.hash.as_ref());
        // Everything else is as minted (bar last use).
        assert_eq!(
            {
                let mut record = stored.clone();
                record.hash = issued.record.hash.clone();
                record.last_used_at = None;
                record
            },
            issued.record
        );
        // Still verifies on the rotated gate, and now on the v2-only gate too.
        rotated.verify(issued.key.expose()).await.unwrap();
        only_v2.verify(issued.key.expose()).await.unwrap();
        // The v1-only gate no longer can.
        assert_refused_by(
            &h.gate,
            &h.store,
            &h.users,
            issued.key.expose(),
            Rejection::HashMismatch,
        )
        .await;
    }
    // Re-hashing happens once: no further updates.
    let updates = h.store.calls().update;
    for issued in [&opaque, &jwt] {
        rotated.verify(issued.key.expose()).await.unwrap();
    }
    rotated.flush().await.unwrap();
    assert_eq!(h.store.calls().update, updates);
}

#[tokio::test]
async fn a_refused_attempt_never_rehashes() {
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    h.gate.revoke(issued.record.id).await.unwrap();
    let rotated = h.sibling_with_pepper(rotated_pepper(), |b| b);
    assert_refused_by(
        &rotated,
        &h.store,
        &h.users,
        issued.key.expose(),
        Rejection::Inactive,
    )
    .await;
    rotated.flush().await.unwrap();
    assert_eq!(
        h.store
            .record(issued.record.id)
            .await
            .unwrap()
            .hash
            .unwrap()
            .version,
        1
    );
}

#[tokio::test]
async fn a_failed_rehash_is_retried_and_the_key_keeps_working() {
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let rotated = h.sibling_with_pepper(rotated_pepper(), |b| b);
    h.store.fail(Op::Update, Failure::Backend);
    rotated.verify(issued.key.expose()).await.unwrap();
    settle().await;
    assert!(rotated.flush().await.is_err());
    assert_eq!(
        h.store
            .record(issued.record.id)
            .await
            .unwrap()
            .hash
            .unwrap()
            .version,
        1
    );
    rotated.verify(issued.key.expose()).await.unwrap();
    h.store.heal();
    rotated.flush().await.unwrap();
    assert_eq!(
        h.store
            .record(issued.record.id)
            .await
            .unwrap()
            .hash
            .unwrap()
            .version,
        2
    );
}

// ---------------------------------------------------------------------------------------
// Runtimes come and go
// ---------------------------------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_background_write_lost_with_its_runtime_does_not_stop_later_ones() {
    // A gate outlives the runtime that started a background last-used write (a test
    // runtime, a worker shut down, `block_on` in a CLI): that write is cancelled unrun.
    let h = Harness::new();
    let issued = runtime()
        .block_on(h.gate.mint(NewKey::new("k", "alice")))
        .unwrap();
    let first = runtime();
    first.block_on(h.gate.verify(issued.key.expose())).unwrap();
    drop(first);
    assert_eq!(h.store.calls().record_last_used, 0);

    // An interval later, on a live runtime, the next use must be written in the
    // background as usual.
    h.clock.advance(TimeDelta::seconds(60));
    runtime().block_on(async {
        h.gate.verify(issued.key.expose()).await.unwrap();
        settle().await;
    });
    assert_eq!(
        h.store.calls().record_last_used,
        1,
        "background last-used writes stopped for good after one was cancelled"
    );
    assert_eq!(
        runtime()
            .block_on(h.store.record(issued.record.id))
            .unwrap()
            .last_used_at,
        Some(t0() + TimeDelta::seconds(60))
    );
}

#[test]
fn a_use_whose_background_write_was_cancelled_is_written_by_the_next_flush() {
    let h = Harness::new();
    let issued = runtime()
        .block_on(h.gate.mint(NewKey::new("k", "alice")))
        .unwrap();
    let first = runtime();
    first.block_on(h.gate.verify(issued.key.expose())).unwrap();
    drop(first);
    // The key is not used again; an explicit flush (e.g. at shutdown) must still write
    // the one use it had.
    runtime().block_on(async {
        h.gate.flush().await.unwrap();
    });
    assert_eq!(
        runtime()
            .block_on(h.store.record(issued.record.id))
            .unwrap()
            .last_used_at,
        Some(t0()),
        "the cancelled background write's batch was lost"
    );
}

/// Pepper v2, still accepting keys hashed under v1.
fn rotated_pepper() -> Pepper {
    Pepper::new(2, PEPPER_V2)
        .unwrap()
        .with_previous(1, PEPPER_V1)
        .unwrap()
}
