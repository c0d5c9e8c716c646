//! Network restrictions through the `Keygate` API: set at mint, checked by `verify_with`,
//! refused (fail closed) by the entry points without a request context, kept by a rotate,
//! changed and bounded by `update`, and never recorded as a use when refused.

use keygate::limits::{AllowedOrigin, Cidr, NetworkPolicy, RequestContext};
use keygate::{Error, KeyFormat, KeyPatch, NewKey, VerifyError};

use crate::support::Harness;

fn cidr(text: &str) -> Cidr {
    text.parse().unwrap()
}

fn origin(text: &str) -> AllowedOrigin {
    text.parse().unwrap()
}

fn from(ip: &str) -> RequestContext {
    RequestContext::new().client_addr(ip.parse().unwrap())
}

#[tokio::test]
async fn a_restricted_key_verifies_only_from_inside_and_fails_closed_without_context() {
    let h = Harness::new();
    for format in [KeyFormat::Opaque, KeyFormat::Jwt] {
        let issued = h
            .gate
            .mint(
                NewKey::new("office", "alice")
                    .format(format)
                    .allowed_cidrs([cidr("198.51.100.0/24"), cidr("2001:db8::/32")]),
            )
            .await
            .unwrap();
        let key = issued.key.expose();
        assert_eq!(
            h.gate
                .verify_with(key, &from("198.51.100.9"))
                .await
                .unwrap()
                .key_id(),
            issued.record.id
        );
        assert!(h
            .gate
            .verify_with(key, &from("::ffff:198.51.100.9"))
            .await
            .is_ok());
        assert!(h
            .gate
            .verify_with(key, &from("2001:db8:1::1"))
            .await
            .is_ok());
        for outside in ["198.51.101.1", "2001:db9::1", "::198.51.100.9"] {
            assert!(
                matches!(
                    h.gate.verify_with(key, &from(outside)).await,
                    Err(VerifyError::NetworkNotAllowed)
                ),
                "{format}: {outside}"
            );
        }
        // No context: nothing is known about the client, so the key is refused.
        assert!(matches!(
            h.gate.verify(key).await,
            Err(VerifyError::NetworkNotAllowed)
        ));
        let header = format!("Bearer {key}");
        assert!(matches!(
            h.gate.verify_header(&header).await,
            Err(VerifyError::NetworkNotAllowed)
        ));
        assert!(matches!(
            h.gate.verify_with(key, &RequestContext::new()).await,
            Err(VerifyError::NetworkNotAllowed)
        ));
    }
    assert_eq!(h.gate.refusal_counts().get("network_not_allowed"), 2 * 6);
}

#[tokio::test]
async fn origins_and_networks_are_both_required_when_both_are_set() {
    let h = Harness::new();
    let key = h
        .gate
        .mint(
            NewKey::new("web", "alice")
                .allowed_cidrs([cidr("10.0.0.0/8")])
                .allowed_origins([origin("https://*.example.com")]),
        )
        .await
        .unwrap()
        .key;
    let key = key.expose();
    let ok = from("10.1.1.1").origin("https://app.example.com");
    assert!(h.gate.verify_with(key, &ok).await.is_ok());
    let cases = [
        (from("10.1.1.1"), "origin_not_allowed"),
        (
            from("10.1.1.1").origin("https://example.com"),
            "origin_not_allowed",
        ),
        (
            from("11.1.1.1").origin("https://app.example.com"),
            "network_not_allowed",
        ),
        (
            RequestContext::new().origin("https://app.example.com"),
            "network_not_allowed",
        ),
    ];
    for (context, reason) in cases {
        let refused = h.gate.verify_with(key, &context).await.unwrap_err();
        assert_eq!(refused.reason(), reason, "{context:?}");
        let answer = refused.http("api");
        assert_eq!(answer.status, 403);
        assert_eq!(answer.www_authenticate, None);
        assert!(answer.body.contains(reason));
    }
}

#[tokio::test]
async fn a_refused_request_is_not_recorded_as_a_use() {
    let h = Harness::new();
    let issued = h
        .gate
        .mint(NewKey::new("office", "alice").allowed_cidrs([cidr("10.0.0.0/8")]))
        .await
        .unwrap();
    for _ in 0..5 {
        let _ = h
            .gate
            .verify_with(issued.key.expose(), &from("192.0.2.1"))
            .await;
    }
    h.gate.flush().await.unwrap();
    assert_eq!(h.store.calls().record_last_used, 0);
    let stored = h.store.record(issued.record.id).await.unwrap();
    assert_eq!(stored.last_used_at, None);
    // Allowed: recorded.
    h.gate
        .verify_with(issued.key.expose(), &from("10.0.0.1"))
        .await
        .unwrap();
    h.clock.advance(chrono::TimeDelta::seconds(1));
    h.gate.flush().await.unwrap();
    assert!(h
        .store
        .record(issued.record.id)
        .await
        .unwrap()
        .last_used_at
        .is_some());
}

#[tokio::test]
async fn updates_change_and_lift_restrictions_within_bounds() {
    let h = Harness::new();
    let issued = h
        .gate
        .mint(NewKey::new("office", "alice").allowed_cidrs([cidr("10.0.0.0/8")]))
        .await
        .unwrap();
    let (id, key) = (issued.record.id, issued.key.expose().to_owned());
    let record = h
        .gate
        .update(id, KeyPatch::new().allowed_cidrs([cidr("192.0.2.0/24")]))
        .await
        .unwrap();
    assert_eq!(record.network.cidrs(), &[cidr("192.0.2.0/24")][..]);
    assert!(h.gate.verify_with(&key, &from("10.0.0.1")).await.is_err());
    assert!(h.gate.verify_with(&key, &from("192.0.2.1")).await.is_ok());

    // Over the bound: refused, nothing written.
    let writes = h.store.calls().writes();
    let too_many: Vec<Cidr> = (0..=64u8)
        .map(|i| cidr(&format!("10.{i}.0.0/16")))
        .collect();
    assert!(matches!(
        h.gate
            .update(id, KeyPatch::new().allowed_cidrs(too_many.clone()))
            .await,
        Err(Error::InvalidInput {
            field: "allowed_cidrs",
            ..
        })
    ));
    assert!(matches!(
        h.gate
            .mint(NewKey::new("x", "alice").allowed_cidrs(too_many))
            .await,
        Err(Error::InvalidInput {
            field: "allowed_cidrs",
            ..
        })
    ));
    let too_many: Vec<AllowedOrigin> = (0..=64)
        .map(|i| origin(&format!("https://a{i}.example")))
        .collect();
    assert!(matches!(
        h.gate
            .mint(NewKey::new("x", "alice").allowed_origins(too_many))
            .await,
        Err(Error::InvalidInput {
            field: "allowed_origins",
            ..
        })
    ));
    assert_eq!(h.store.calls().writes(), writes);

    // Lifted: usable without a context again.
    let record = h
        .gate
        .update(id, KeyPatch::new().allowed_cidrs([]))
        .await
        .unwrap();
    assert_eq!(record.network, NetworkPolicy::new());
    assert!(h.gate.verify(&key).await.is_ok());
}

#[tokio::test]
async fn a_rotated_key_keeps_the_restriction() {
    let h = Harness::new();
    let issued = h
        .gate
        .mint(
            NewKey::new("office", "alice")
                .allowed_cidrs([cidr("10.0.0.0/8")])
                .allowed_origins([origin("https://app.example.com")]),
        )
        .await
        .unwrap();
    let rotated = h
        .gate
        .rotate(issued.record.id, chrono::TimeDelta::zero())
        .await
        .unwrap();
    assert_eq!(rotated.record.network, issued.record.network);
    let ok = from("10.0.0.1").origin("https://app.example.com");
    assert!(h.gate.verify_with(rotated.key.expose(), &ok).await.is_ok());
    assert!(matches!(
        h.gate.verify(rotated.key.expose()).await,
        Err(VerifyError::NetworkNotAllowed)
    ));
}

#[tokio::test]
async fn a_conditional_patch_fails_when_the_policy_changed_meanwhile() {
    let h = Harness::new();
    let issued = h
        .gate
        .mint(NewKey::new("office", "alice").allowed_cidrs([cidr("10.0.0.0/8")]))
        .await
        .unwrap();
    let read = issued.record.clone();
    h.gate
        .update(read.id, KeyPatch::new().allowed_cidrs([]))
        .await
        .unwrap();
    let stale = KeyPatch::new().name("renamed").if_unchanged(&read);
    assert!(matches!(
        h.gate.update(read.id, stale).await,
        Err(Error::Changed(id)) if id == read.id
    ));
    assert_eq!(h.gate.get(read.id).await.unwrap().unwrap().name, "office");
}
