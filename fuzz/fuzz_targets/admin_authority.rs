//! The admin API's authority rule (ARCHITECTURE.md "Trust rules", `src/admin/authority.rs`)
//! attacked by a *limited* admin key: scoped, expiring, network- and origin-restricted,
//! rate-limited and metered, in any combination.
//!
//! Input: byte 0 picks what limits the calling key of `root` (who holds `admin`, `read`):
//! bit 0 scopes `["admin"]` (else `["admin", "read"]`), bit 1 expires in an hour, bit 2
//! `allowedCidrs ["10.0.0.0/8"]`, bit 3 `allowedOrigins ["https://a.example.com"]`, bit 4
//! rate limit `requests` 10 per minute, bit 5 credits 50 refilled daily to 50. Byte 1 picks
//! the operation (create, update, rotate) and the target key (the caller itself, a wide
//! key of `root`, a key of `alice` who holds `read`, a key of the inactive `mallory`, a
//! revoked key of `root`). The rest is the body (`$N` expands to NOW).
//!
//! Oracle (an independent model of reach, never keygate's own `covers`):
//! - never a panic or a 5xx;
//! - a 2xx that produces a key (create, the new key of a rotate) gives it no permission the
//!   caller lacks, no later expiry, no network outside `10.0.0.0/8` nor origin other than the
//!   caller's when the caller is restricted, and at least the caller's limits: a `requests`
//!   limit auto-applied, no faster than 10 per minute and with a burst of at most 10;
//!   credits no more than the caller has left, refilled daily to at most 50 or never;
//! - a 2xx update leaves the key within the caller's reach, or within its own previous
//!   reach (active flag and owner unchanged);
//! - a 2xx never touches a key of an owner holding a permission the caller lacks
//!   (`mallory`, inactive, counts as holding every permission).
#![no_main]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{block_on, now, Directory, NOW};
use keygate::admin::{AdminApi, AdminRequest};
use keygate::chrono::{DateTime, TimeDelta, Utc};
use keygate::limits::{
    AllowedOrigin, Cidr, CreditPolicy, CreditRefill, RateLimit, RefillInterval, RequestContext,
};
use keygate::{KeyId, KeyRecord, Keygate, ManualClock, MemoryStore, NewKey, Pepper};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(Debug, Clone)]
struct Caller {
    permissions: BTreeSet<String>,
    until: Option<DateTime<Utc>>,
    cidrs: bool,
    origins: bool,
    limited: bool,
    credits_left: Option<u64>,
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// The owner's permissions as the rule counts them (`None`: every permission).
fn owner_permissions(owner: &str) -> Option<BTreeSet<String>> {
    match owner {
        "root" => Some(set(&["admin", "read"])),
        "alice" => Some(set(&["read"])),
        _ => None,
    }
}

/// A record's effective permissions (`None`: every permission).
fn permissions(record: &KeyRecord) -> Option<BTreeSet<String>> {
    match (owner_permissions(&record.owner), &record.scopes) {
        (None, None) => None,
        (None, Some(scopes)) => Some(scopes.clone()),
        (Some(held), None) => Some(held),
        (Some(held), Some(scopes)) => Some(held.intersection(scopes).cloned().collect()),
    }
}

fn inside_ten(cidr: &Cidr) -> bool {
    match cidr.network() {
        std::net::IpAddr::V4(v4) => v4.octets()[0] == 10 && cidr.prefix_len() >= 8,
        std::net::IpAddr::V6(_) => false,
    }
}

/// Why `record` (with `left` credits left) is beyond `caller`'s reach, if it is.
fn beyond(caller: &Caller, record: &KeyRecord, left: Option<u64>) -> Option<String> {
    match permissions(record) {
        None => return Some("every permission".into()),
        Some(p) if !p.is_subset(&caller.permissions) => return Some(format!("permissions {p:?}")),
        Some(_) => {}
    }
    if let Some(until) = caller.until {
        if record.expires_at.is_none_or(|at| at > until) {
            return Some(format!("expiry {:?}", record.expires_at));
        }
    }
    let net = &record.network;
    if caller.cidrs && (net.cidrs().is_empty() || !net.cidrs().iter().all(inside_ten)) {
        return Some(format!("cidrs {:?}", net.cidrs()));
    }
    let ours: AllowedOrigin = "https://a.example.com".parse().unwrap();
    if caller.origins && (net.origins().is_empty() || net.origins().iter().any(|o| *o != ours)) {
        return Some(format!("origins {:?}", net.origins()));
    }
    if caller.limited {
        let ok = record.ratelimits.iter().any(|l| {
            l.name == "requests"
                && l.auto_apply
                && u128::from(l.limit) * 60_000 <= 10 * u128::from(l.duration)
                && l.burst() <= 10
        });
        if !ok {
            return Some(format!("limits {:?}", record.ratelimits));
        }
    }
    if let Some(caller_left) = caller.credits_left {
        let Some(policy) = &record.credits else {
            return Some("unlimited credits".into());
        };
        let left = left.unwrap_or(policy.remaining);
        if left > caller_left {
            return Some(format!("{left} credits, the caller has {caller_left}"));
        }
        if let Some(refill) = &policy.refill {
            if refill.interval != RefillInterval::Daily || refill.amount > 50 {
                // A monthly refill of at most 50 is rarer than a daily one: allowed.
                if !(refill.interval == RefillInterval::Monthly && refill.amount <= 50) {
                    return Some(format!("refill {refill:?}"));
                }
            }
        }
    }
    None
}

/// Whether `after` is within `before` on every dimension the model knows.
fn within_before(before: &KeyRecord, before_left: Option<u64>, after: &KeyRecord) -> bool {
    let perms = match (permissions(before), permissions(after)) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(b), Some(a)) => a.is_subset(&b),
    };
    let expiry = match (before.expires_at, after.expires_at) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(b), Some(a)) => a <= b,
    };
    let cidrs = before.network.cidrs().is_empty()
        || (!after.network.cidrs().is_empty()
            && after
                .network
                .cidrs()
                .iter()
                .all(|a| before.network.cidrs().iter().any(|b| b.covers(a))));
    let origins = before.network.origins().is_empty()
        || (!after.network.origins().is_empty()
            && after
                .network
                .origins()
                .iter()
                .all(|a| before.network.origins().contains(a)));
    let limits = before.ratelimits.iter().all(|b| {
        after.ratelimits.iter().any(|a| {
            a.name == b.name
                && (a.auto_apply || !b.auto_apply)
                && u128::from(a.limit) * u128::from(b.duration)
                    <= u128::from(b.limit) * u128::from(a.duration)
                && a.burst() <= b.burst()
        })
    });
    let credits = match (&before.credits, &after.credits) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(b), Some(a)) => {
            let b_left = before_left.unwrap_or(b.remaining);
            let a_left = if a == b { b_left } else { a.remaining };
            a_left <= b_left
                && match (&b.refill, &a.refill) {
                    (_, None) => true,
                    (None, Some(_)) => false,
                    (Some(br), Some(ar)) => {
                        ar.amount <= br.amount
                            && !(ar.interval == RefillInterval::Daily
                                && br.interval == RefillInterval::Monthly)
                    }
                }
        }
    };
    perms
        && expiry
        && cidrs
        && origins
        && limits
        && credits
        && after.owner == before.owner
        && (!after.active || before.active)
}

fn expand(input: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(input);
    text.replace("$N", &NOW.to_string()).into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let [mask, op, body @ ..] = data else {
        return;
    };
    block_on(async {
        let clock = Arc::new(ManualClock::new(now()));
        let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [7u8; 32]).unwrap())
            .prefix("kg")
            .users(Directory)
            .clock(clock.clone())
            .build()
            .unwrap();
        let mut new = NewKey::new("caller", "root");
        new = if mask & 1 != 0 {
            new.scopes(["admin"])
        } else {
            new.scopes(["admin", "read"])
        };
        let until = (mask & 2 != 0).then(|| now() + TimeDelta::hours(1));
        if let Some(at) = until {
            new = new.expires_at(at);
        }
        if mask & 4 != 0 {
            new = new.allowed_cidrs(["10.0.0.0/8".parse::<Cidr>().unwrap()]);
        }
        if mask & 8 != 0 {
            new = new.allowed_origins(["https://a.example.com".parse::<AllowedOrigin>().unwrap()]);
        }
        if mask & 16 != 0 {
            new = new.ratelimits([RateLimit::new("requests", 10, 60_000)]);
        }
        if mask & 32 != 0 {
            new = new.credits(CreditPolicy::new(50).refill(CreditRefill::daily(50)));
        }
        let caller_key = gate.mint(new).await.unwrap();
        let wide = gate.mint(NewKey::new("wide", "root")).await.unwrap();
        let alice = gate.mint(NewKey::new("alice", "alice")).await.unwrap();
        let mallory = gate.mint(NewKey::new("mallory", "mallory")).await.unwrap();
        let revoked = gate.mint(NewKey::new("revoked", "root")).await.unwrap();
        gate.revoke(revoked.record.id).await.unwrap();

        let context = RequestContext::new()
            .client_addr("10.1.2.3".parse().unwrap())
            .origin("https://a.example.com");
        let principal = gate
            .verify_with(caller_key.key.expose(), &context)
            .await
            .expect("the caller verifies");
        let caller = Caller {
            permissions: if mask & 1 != 0 {
                set(&["admin"])
            } else {
                set(&["admin", "read"])
            },
            until,
            cidrs: mask & 4 != 0,
            origins: mask & 8 != 0,
            limited: mask & 16 != 0,
            credits_left: gate.credits_remaining(principal.record()).await.unwrap(),
        };
        let api = AdminApi::new(gate.clone());

        let targets: [KeyId; 5] = [
            caller_key.record.id,
            wide.record.id,
            alice.record.id,
            mallory.record.id,
            revoked.record.id,
        ];
        let target = targets[usize::from(op / 3) % targets.len()];
        let id_text = target.to_string();
        let body = expand(body);
        let before = gate.get(target).await.unwrap().unwrap();
        let before_left = gate.credits_remaining(&before).await.unwrap();
        let ids_before: BTreeSet<KeyId> = gate
            .list(keygate::ListQuery::new())
            .await
            .unwrap()
            .records
            .iter()
            .map(|r| r.id)
            .collect();

        let request = match op % 3 {
            0 => AdminRequest::Create { body: &body },
            1 => AdminRequest::Update {
                id: &id_text,
                body: &body,
            },
            _ => AdminRequest::Rotate {
                id: &id_text,
                body: &body,
            },
        };
        let response = api.handle(&principal, request).await;
        let context = format!(
            "mask {mask:#x} {request:?} body {:?} → {} {}",
            String::from_utf8_lossy(&body),
            response.status,
            response.body
        );
        assert!(response.status < 500, "{context}");
        if (200..300).contains(&response.status) {
            check_answer(&gate, &caller, request, &response.body, &before, before_left, &ids_before, &context).await;
        }
        // Let the last-used flush the verify queued run now: a current-thread `block_on`
        // whose future never yields would leave it, and the gate it holds, queued forever.
        drop((api, principal, gate));
        tokio::task::yield_now().await;
    });
});

#[allow(clippy::too_many_arguments)]
async fn check_answer(
    gate: &Keygate,
    caller: &Caller,
    request: AdminRequest<'_>,
    body: &str,
    before: &KeyRecord,
    before_left: Option<u64>,
    ids_before: &BTreeSet<KeyId>,
    context: &str,
) {
    let target = before.id;
    let caller = caller.clone();
    let response_body = body;
    {
        let answer: Value = serde_json::from_str(response_body).expect("JSON");
        match request {
            AdminRequest::Create { .. } | AdminRequest::Rotate { .. } => {
                let id: KeyId = answer["apiKey"]["id"].as_str().unwrap().parse().unwrap();
                assert!(!ids_before.contains(&id), "{context}");
                let record = gate.get(id).await.unwrap().unwrap();
                let left = gate.credits_remaining(&record).await.unwrap();
                if let Some(why) = beyond(&caller, &record, left) {
                    panic!("a key beyond the caller was produced ({why}): {context}");
                }
                if record.owner != "root" {
                    assert!(
                        owner_permissions(&record.owner)
                            .is_some_and(|p| p.is_subset(&caller.permissions)),
                        "minted for an owner out of reach: {context}"
                    );
                }
                if matches!(request, AdminRequest::Rotate { .. }) && before.owner != "root" {
                    assert!(
                        owner_permissions(&before.owner)
                            .is_some_and(|p| p.is_subset(&caller.permissions)),
                        "rotated a key of an owner out of reach: {context}"
                    );
                }
            }
            _ => {
                let after = gate.get(target).await.unwrap().unwrap();
                let after_left = gate.credits_remaining(&after).await.unwrap();
                for owner in [&before.owner, &after.owner] {
                    if owner != "root" {
                        assert!(
                            owner_permissions(owner)
                                .is_some_and(|p| p.is_subset(&caller.permissions)),
                            "touched a key of {owner}, out of reach: {context}"
                        );
                    }
                }
                if let Some(why) = beyond(&caller, &after, after_left) {
                    assert!(
                        within_before(before, before_left, &after),
                        "a key was widened beyond the caller ({why}): {context}"
                    );
                }
            }
        }
    }
}
