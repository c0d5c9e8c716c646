//! The cost of network restrictions on the verify path, beside a verify without them, in
//! one run (compare ratios, not absolute times):
//!
//! - `network_verify/plain`: `verify` of an unrestricted opaque key (the baseline);
//! - `network_verify/unrestricted_with_context`: `verify_with` of the same kind of key and a
//!   context with a client address and an `Origin` (what the framework integrations pass);
//! - `network_verify/restricted_allowed`: `verify_with` of a key with 3 allowed networks and
//!   2 allowed origins, from an allowed address and origin (the whole policy check);
//! - `client_addr/*`: `TrustedProxies::client_addr` for an untrusted peer (the header is not
//!   read), and behind a trusted proxy with a 3-hop `X-Forwarded-For` or `Forwarded`;
//! - `request_context/peer_and_origin`: `Keygate::request_context` as the integrations
//!   call it, with no trusted proxies.
//!
//! Run: `cargo bench --bench network`.

// Benchmark harness: a failed setup step stops the run loudly.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::http::{ProxyHeader, TrustedProxies};
use keygate::limits::{AllowedOrigin, Cidr, RequestContext};
use keygate::{Keygate, MemoryStore, NewKey, Pepper};

const PEPPER: &[u8] = b"network bench pepper, at least 32 bytes long";

fn cidr(text: &str) -> Cidr {
    text.parse().expect("cidr")
}

fn origin(text: &str) -> AllowedOrigin {
    text.parse().expect("origin")
}

fn network_verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, PEPPER).expect("pepper"))
        .last_used_interval(std::time::Duration::from_secs(3600))
        .build()
        .expect("gate");
    let (plain, restricted) = rt.block_on(async {
        let plain = gate.mint(NewKey::new("plain", "u")).await.expect("mint");
        let restricted = gate
            .mint(
                NewKey::new("restricted", "u")
                    .allowed_cidrs([
                        cidr("10.0.0.0/8"),
                        cidr("2001:db8::/32"),
                        cidr("198.51.100.0/24"),
                    ])
                    .allowed_origins([
                        origin("https://admin.example.com"),
                        origin("https://*.example.com"),
                    ]),
            )
            .await
            .expect("mint");
        (plain.key, restricted.key)
    });
    let context = RequestContext::new()
        .client_addr("198.51.100.7".parse().expect("ip"))
        .origin("https://app.example.com");
    assert!(rt
        .block_on(gate.verify_with(restricted.expose(), &context))
        .is_ok());

    let mut group = c.benchmark_group("network_verify");
    group.bench_function("plain", |b| {
        b.iter(|| black_box(rt.block_on(gate.verify(black_box(plain.expose()))).is_ok()))
    });
    group.bench_function("unrestricted_with_context", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(gate.verify_with(black_box(plain.expose()), black_box(&context)))
                    .is_ok(),
            )
        })
    });
    group.bench_function("restricted_allowed", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(gate.verify_with(black_box(restricted.expose()), black_box(&context)))
                    .is_ok(),
            )
        })
    });
    group.finish();

    let mut group = c.benchmark_group("request_context");
    let headers: [(&str, &[u8]); 3] = [
        ("origin", b"https://app.example.com"),
        ("x-forwarded-for", b"203.0.113.9"),
        ("user-agent", b"bench"),
    ];
    let peer: Option<IpAddr> = Some("198.51.100.7".parse().expect("ip"));
    group.bench_function("peer_and_origin", |b| {
        b.iter(|| {
            black_box(gate.request_context(black_box(peer), |name| {
                headers
                    .iter()
                    .filter(move |(n, _)| *n == name)
                    .map(|(_, v)| *v)
            }))
        })
    });
    group.finish();
}

fn client_addr(c: &mut Criterion) {
    let trusted = [cidr("10.0.0.0/8"), cidr("fd00::/8")];
    let xff = TrustedProxies::new(trusted);
    let fwd = TrustedProxies::new(trusted).header(ProxyHeader::Forwarded);
    let stranger: Option<IpAddr> = Some("203.0.113.1".parse().expect("ip"));
    let proxy: Option<IpAddr> = Some("10.0.0.2".parse().expect("ip"));
    let xff_value: &[u8] = b"6.6.6.6, 198.51.100.7, 10.1.1.1";
    let fwd_value: &[u8] = br#"for=6.6.6.6, for="198.51.100.7:443";proto=https, for=10.1.1.1"#;
    assert_eq!(
        xff.client_addr(proxy, [xff_value]),
        Some("198.51.100.7".parse().expect("ip"))
    );
    assert_eq!(
        fwd.client_addr(proxy, [fwd_value]),
        Some("198.51.100.7".parse().expect("ip"))
    );
    let mut group = c.benchmark_group("client_addr");
    group.bench_function("untrusted_peer", |b| {
        b.iter(|| black_box(xff.client_addr(black_box(stranger), [black_box(xff_value)])))
    });
    group.bench_function("xff_3_hops", |b| {
        b.iter(|| black_box(xff.client_addr(black_box(proxy), [black_box(xff_value)])))
    });
    group.bench_function("forwarded_3_hops", |b| {
        b.iter(|| black_box(fwd.client_addr(black_box(proxy), [black_box(fwd_value)])))
    });
    group.finish();
}

criterion_group!(benches, network_verify, client_addr);
criterion_main!(benches);
