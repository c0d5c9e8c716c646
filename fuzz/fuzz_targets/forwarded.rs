//! `X-Forwarded-For` / `Forwarded` values → `TrustedProxies::client_addr`.
//!
//! Input: byte 0 picks the header (even: `X-Forwarded-For`, odd: `Forwarded`), byte 1 the
//! connection's peer (0: trusted `10.0.0.2`, 1: trusted `fd00::2`, 2: untrusted
//! `203.0.113.1`, 3: untrusted IPv4-mapped `::ffff:198.51.100.1`, else unknown); the rest
//! is the header's values separated by NUL bytes. Trusted networks: `10.0.0.0/8`, `fd00::/8`.
//!
//! Oracle, from the rules in `src/http/forwarded.rs` (`TrustedProxies`):
//! - an unknown peer is an unknown client; an untrusted peer is the client, whatever the
//!   header says (IPv4-mapped addresses come back as IPv4);
//! - behind a trusted peer, an answer is an address that is not a trusted proxy, or (when
//!   every hop is trusted) a trusted one; never the peer itself unless it also appears as
//!   a hop;
//! - for `X-Forwarded-For`, the answer equals an independent model: the values joined by
//!   commas, each entry trimmed and read as an IP (or `v4:port`, `[v6]`, `[v6]:port`),
//!   walked right to left past trusted entries, at most `MAX_FORWARDED_HOPS` of them;
//! - a client address found is not changed by anything prepended (a client can write
//!   anything to the left of what the proxies append);
//! - no panic, whatever the bytes.
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use keygate::bounds::MAX_FORWARDED_HOPS;
use keygate::http::{ProxyHeader, TrustedProxies};
use libfuzzer_sys::fuzz_target;

fn proxies(header: ProxyHeader) -> TrustedProxies {
    TrustedProxies::new(["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()])
        .header(header)
}

fn trusted(address: IpAddr) -> bool {
    match address.to_canonical() {
        IpAddr::V4(v4) => v4.octets()[0] == 10,
        IpAddr::V6(v6) => v6.octets()[0] == 0xfd,
    }
}

/// The X-Forwarded-For model.
fn model_xff(lines: &[&[u8]]) -> Option<IpAddr> {
    let joined = lines.join(&b","[..]);
    let entries: Vec<&[u8]> = joined.split(|&b| b == b',').collect();
    let mut client = None;
    for (walked, entry) in entries.iter().rev().enumerate() {
        if walked >= MAX_FORWARDED_HOPS {
            return None;
        }
        let text = std::str::from_utf8(entry).ok()?.trim_matches([' ', '\t']);
        if text.len() > 256 {
            return None;
        }
        let address = text
            .parse::<IpAddr>()
            .ok()
            .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
            .or_else(|| {
                text.strip_prefix('[')?
                    .strip_suffix(']')?
                    .parse::<Ipv6Addr>()
                    .ok()
                    .map(IpAddr::V6)
            })?
            .to_canonical();
        if !trusted(address) {
            return Some(address);
        }
        client = Some(address);
    }
    client
}

fuzz_target!(|data: &[u8]| {
    let (Some(&which), Some(&peer_pick)) = (data.first(), data.get(1)) else {
        return;
    };
    let rest = &data[2..];
    let header = if which % 2 == 0 {
        ProxyHeader::XForwardedFor
    } else {
        ProxyHeader::Forwarded
    };
    let peer: Option<IpAddr> = match peer_pick {
        0 => Some("10.0.0.2".parse().unwrap()),
        1 => Some("fd00::2".parse().unwrap()),
        2 => Some("203.0.113.1".parse().unwrap()),
        3 => Some("::ffff:198.51.100.1".parse().unwrap()),
        _ => None,
    };
    let lines: Vec<&[u8]> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split(|&b| b == 0).collect()
    };
    let p = proxies(header);
    let got = p.client_addr(peer, lines.iter().copied());
    match peer {
        None => assert_eq!(got, None, "unknown peer"),
        Some(peer) if !trusted(peer) => {
            assert_eq!(got, Some(peer.to_canonical()), "untrusted peer: header ignored")
        }
        Some(_) => {
            if header == ProxyHeader::XForwardedFor {
                assert_eq!(got, model_xff(&lines), "{lines:?}");
            }
            if let Some(client) = got {
                assert_eq!(client, client.to_canonical(), "canonical");
                if !trusted(client) {
                    let mut prefixed = vec![&b"\"garbage, for=\"1.2.3.4"[..]];
                    prefixed.extend(lines.iter().copied());
                    assert_eq!(
                        p.client_addr(peer, prefixed.iter().copied()),
                        got,
                        "a prepended line changed the client: {lines:?}"
                    );
                }
            }
        }
    }
});
