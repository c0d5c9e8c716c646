//! Network restrictions: `Cidr` and `AllowedOrigin` parsing (what the admin API reads from
//! `allowedCidrs` / `allowedOrigins`), `contains` / `matches_header` (what a request is
//! checked against), `covers` (the admin API's no-wider-network rule) and `NetworkPolicy`
//! JSON (what a store returns).
//!
//! Input: NUL-separated fields: `a`, `b` (each read both as a CIDR and as an origin), `h`
//! (an `Origin` header value, and a client address: parsed as an IP when it is one, else
//! its first bytes as an IPv4 or IPv6 address), and the rest as a `NetworkPolicy` JSON.
//!
//! Oracle:
//! - never a panic;
//! - a parsed CIDR or origin displays canonically (ASCII, lowercase origin scheme and host,
//!   no default port) and re-parses to itself;
//! - `Cidr::contains` equals an independent bit model (IPv4-mapped IPv6 clients are their
//!   IPv4 address; an IPv4 block never holds a native IPv6 client and vice versa);
//! - `covers` is sound: if `a` covers `b`, every address `b` holds (its first, last and the
//!   sampled one) `a` holds, and every `Origin` `b` admits `a` admits;
//!   a non-wildcard origin admits its own text; a wildcard never admits its bare domain;
//! - a policy that parses re-serializes and re-parses to itself, within its bounds, and
//!   `covers` itself.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use keygate::limits::{AllowedOrigin, Cidr, NetworkPolicy, RequestContext};
use libfuzzer_sys::fuzz_target;

/// The model: does the block `network/prefix` hold `client`?
fn model_contains(network: IpAddr, prefix: u8, client: IpAddr) -> bool {
    match (network, client.to_canonical()) {
        (IpAddr::V4(n), IpAddr::V4(c)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            u32::from(n) & mask == u32::from(c) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(c)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            u128::from(n) & mask == u128::from(c) & mask
        }
        _ => false,
    }
}

/// The last address of a block.
fn last(cidr: &Cidr) -> IpAddr {
    match cidr.network() {
        IpAddr::V4(n) => {
            let host = u32::MAX
                .checked_shr(u32::from(cidr.prefix_len()))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(n) | host))
        }
        IpAddr::V6(n) => {
            let host = u128::MAX
                .checked_shr(u32::from(cidr.prefix_len()))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(n) | host))
        }
    }
}

fn address_of(bytes: &[u8]) -> IpAddr {
    if let Some(ip) = std::str::from_utf8(bytes).ok().and_then(|t| t.parse().ok()) {
        return ip;
    }
    let mut raw = [0u8; 16];
    for (slot, b) in raw.iter_mut().zip(bytes) {
        *slot = *b;
    }
    if bytes.len() <= 4 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(raw))
    }
}

fn check_cidr(text: &str, client: IpAddr) -> Option<Cidr> {
    let cidr: Cidr = text.parse().ok()?;
    let shown = cidr.to_string();
    assert_eq!(shown.parse::<Cidr>(), Ok(cidr), "{text:?} → {shown:?}");
    let max = if cidr.network().is_ipv4() { 32 } else { 128 };
    assert!(cidr.prefix_len() <= max);
    // Canonical: never an IPv4-mapped network with a prefix of 96 or more.
    if let IpAddr::V6(v6) = cidr.network() {
        assert!(
            v6.to_ipv4_mapped().is_none() || cidr.prefix_len() < 96,
            "{text:?} kept its mapped form: {shown}"
        );
    }
    for address in [client, cidr.network(), last(&cidr)] {
        assert_eq!(
            cidr.contains(address),
            model_contains(cidr.network(), cidr.prefix_len(), address),
            "{shown} contains {address}?"
        );
    }
    // Its own first and last addresses, unless an IPv6 block reaches into the IPv4-mapped
    // range (`::fffe:0:0/95`): those clients are IPv4 ones, which an IPv6 rule never admits.
    for address in [cidr.network(), last(&cidr)] {
        if address.to_canonical().is_ipv4() == cidr.network().is_ipv4() {
            assert!(cidr.contains(address), "{shown} does not hold {address}");
        }
    }
    Some(cidr)
}

fn check_origin(text: &str) -> Option<AllowedOrigin> {
    let origin: AllowedOrigin = text.parse().ok()?;
    let shown = origin.to_string();
    assert!(shown.is_ascii(), "{shown:?}");
    assert_eq!(
        shown.parse::<AllowedOrigin>().as_ref(),
        Ok(&origin),
        "{text:?} → {shown:?}"
    );
    let (scheme, rest) = shown.split_once("://").expect("scheme://");
    assert_eq!(scheme, scheme.to_ascii_lowercase());
    assert!(!rest.contains(['/', '?', '#', '@', '\\']), "{shown:?}");
    match rest.strip_prefix("*.") {
        None => assert!(
            origin.matches_header(&shown),
            "{shown} does not admit itself"
        ),
        Some(domain) => {
            let bare = format!("{scheme}://{domain}");
            assert!(!origin.matches_header(&bare), "{shown} admits {bare}");
            let sub = format!("{scheme}://a.{domain}");
            assert!(origin.matches_header(&sub), "{shown} does not admit {sub}");
        }
    }
    assert!(origin.covers(&origin));
    Some(origin)
}

fuzz_target!(|data: &[u8]| {
    let mut fields = data.splitn(4, |&b| b == 0);
    let a = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let b = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let h = fields.next().unwrap_or_default();
    let json = fields.next().unwrap_or_default();
    let client = address_of(h);

    let (ca, cb) = (check_cidr(&a, client), check_cidr(&b, client));
    if let (Some(ca), Some(cb)) = (ca, cb) {
        if ca.covers(&cb) {
            for address in [client, cb.network(), last(&cb)] {
                assert!(
                    !cb.contains(address) || ca.contains(address),
                    "{ca} covers {cb} but not {address}"
                );
            }
        }
    }

    let (oa, ob) = (check_origin(&a), check_origin(&b));
    let header = String::from_utf8_lossy(h);
    if let (Some(oa), Some(ob)) = (&oa, &ob) {
        if oa.covers(ob) && ob.matches_header(&header) {
            assert!(
                oa.matches_header(&header),
                "{oa} covers {ob} but not {header:?}"
            );
        }
    }

    // A policy of what parsed, checked against the request.
    let policy = NetworkPolicy::new()
        .with_cidrs(ca.into_iter().chain(cb))
        .with_origins(oa.into_iter().chain(ob));
    let context = RequestContext::new()
        .client_addr(client)
        .origin_headers([h]);
    let allowed = policy.check(&context).is_ok();
    if policy.is_unrestricted() {
        assert!(allowed);
    }
    if !policy.cidrs().is_empty() && !policy.cidrs().iter().any(|c| c.contains(client)) {
        assert!(!allowed, "{policy:?} admitted {client}");
    }

    // Stored policies: strict JSON, round-tripping.
    if let Ok(parsed) = serde_json::from_slice::<NetworkPolicy>(json) {
        let text = serde_json::to_string(&parsed).expect("serialize");
        let again: NetworkPolicy = serde_json::from_str(&text).expect("re-parse");
        assert_eq!(again, parsed, "{text}");
        assert!(parsed.covers(&parsed));
    }
});
