//! The client address of a request: the connection's peer, or, when that peer is a proxy
//! the application declared trusted, what the proxies recorded in `X-Forwarded-For` or
//! `Forwarded` (RFC 7239), read right to left.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::limits::Cidr;

/// Most forwarded hops read from a request; a chain of trusted proxies longer than this
/// leaves the client address unknown (a key with allowed networks is then refused).
pub const MAX_FORWARDED_HOPS: usize = 16;

/// Longest single hop read (one `X-Forwarded-For` entry, one `Forwarded` element).
const MAX_HOP_LEN: usize = 256;

/// Which header the trusted proxies record the client in. Only that one is read: a client
/// can send the other itself, and a proxy that does not touch it would pass it on as
/// written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx `$proxy_add_x_forwarded_for`,
    /// Caddy, HAProxy `option forwardfor`, most load balancers). The default.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

impl ProxyHeader {
    /// The header's name, lowercase.
    pub fn name(self) -> &'static str {
        match self {
            ProxyHeader::XForwardedFor => "x-forwarded-for",
            ProxyHeader::Forwarded => "forwarded",
        }
    }
}

/// The reverse proxies (load balancers, CDNs) in front of the application whose
/// forwarding header keygate believes, and which header that is. Set with
/// [`KeygateBuilder::trusted_proxies`](crate::KeygateBuilder::trusted_proxies); none by
/// default, so the client address is the connection's peer and forwarding headers are
/// ignored.
///
/// When the connection's peer is inside one of these networks, the header's hops are read
/// right to left (the nearest proxy appends last), skipping every hop that is itself a
/// trusted proxy; the first one that is not is the client. A hop that cannot be read
/// (garbage, `unknown`, an obfuscated RFC 7239 identifier), a trusted peer that sent no
/// header, or more than [`MAX_FORWARDED_HOPS`] hops make the address unknown: a key with
/// allowed networks is then refused. When every hop is a trusted proxy, the leftmost is
/// the client. From a peer that is not trusted, the header is ignored however it reads.
///
/// ```
/// use keygate::http::{ProxyHeader, TrustedProxies};
///
/// # fn main() -> Result<(), keygate::limits::NetworkError> {
/// let proxies = TrustedProxies::new(["10.0.0.0/8".parse()?]);
/// let peer = Some("10.0.0.2".parse().unwrap());
/// let header = [&b"198.51.100.7, 10.0.0.9"[..]];
/// assert_eq!(proxies.client_addr(peer, header), Some("198.51.100.7".parse().unwrap()));
///
/// // The same header from a peer that is no proxy of ours: ignored.
/// let stranger = Some("203.0.113.5".parse().unwrap());
/// assert_eq!(proxies.client_addr(stranger, header), stranger);
///
/// let rfc7239 = TrustedProxies::new(["10.0.0.0/8".parse()?]).header(ProxyHeader::Forwarded);
/// let header = [&br#"for="[2001:db8::7]:4711";proto=https, for=10.0.0.9"#[..]];
/// assert_eq!(rfc7239.client_addr(peer, header), Some("2001:db8::7".parse().unwrap()));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<Cidr>,
    header: ProxyHeader,
}

impl TrustedProxies {
    /// Proxies at these networks, recording the client in `X-Forwarded-For` (change it
    /// with [`header`](Self::header)).
    pub fn new(networks: impl IntoIterator<Item = Cidr>) -> Self {
        Self {
            networks: networks.into_iter().collect(),
            header: ProxyHeader::default(),
        }
    }

    /// The header the proxies record the client in.
    #[must_use]
    pub fn header(mut self, header: ProxyHeader) -> Self {
        self.header = header;
        self
    }

    /// The header read ([`ProxyHeader::name`] gives its name).
    pub fn proxy_header(&self) -> ProxyHeader {
        self.header
    }

    /// The trusted networks.
    pub fn networks(&self) -> &[Cidr] {
        &self.networks
    }

    /// Whether `address` is a trusted proxy.
    pub fn trusts(&self, address: IpAddr) -> bool {
        self.networks.iter().any(|net| net.contains(address))
    }

    /// The client address of a request whose connection comes from `peer` (`None`:
    /// unknown) carrying `values`, every value of the [`proxy_header`](Self::proxy_header)
    /// in order. `None` when it cannot be known (see the type's docs). IPv4-mapped IPv6
    /// addresses come back as IPv4.
    ///
    /// Bounded work on any input: at most [`MAX_FORWARDED_HOPS`] hops are parsed, each
    /// of at most 256 bytes; never panics.
    pub fn client_addr<'a, I>(&self, peer: Option<IpAddr>, values: I) -> Option<IpAddr>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let peer = peer?.to_canonical();
        if !self.trusts(peer) {
            return Some(peer);
        }
        let lines: Vec<&[u8]> = values.into_iter().collect();
        let parse: LineParser = match self.header {
            ProxyHeader::XForwardedFor => xff_line,
            ProxyHeader::Forwarded => forwarded_line,
        };
        // A trusted peer that forwarded no hop is not what a proxy of ours does: unknown.
        let mut client = None;
        for (walked, hop) in last_hops(&lines, parse).into_iter().enumerate() {
            if walked >= MAX_FORWARDED_HOPS {
                return None;
            }
            let address = hop?.to_canonical();
            if !self.trusts(address) {
                return Some(address);
            }
            client = Some(address);
        }
        // Every hop a trusted proxy: the leftmost.
        client
    }
}

/// Appends the hops of one header line, right to left, at most `limit` of them:
/// `Some(address)` for a readable hop, `None` for one that is not (or names no address).
/// `Err`, having appended nothing, when the line cannot be split into hops at all.
type LineParser = fn(&[u8], usize, &mut Vec<Option<IpAddr>>) -> Result<(), ()>;

/// The last [`MAX_FORWARDED_HOPS`] + 1 hops of all `lines`, right to left. A line that
/// cannot be split into hops is one unreadable hop: it matters only if the walk gets that
/// far (a client can write anything to the left of what our proxies append).
fn last_hops(lines: &[&[u8]], parse: LineParser) -> Vec<Option<IpAddr>> {
    let limit = MAX_FORWARDED_HOPS.saturating_add(1);
    let mut hops: Vec<Option<IpAddr>> = Vec::with_capacity(limit);
    for line in lines.iter().rev() {
        let room = limit.saturating_sub(hops.len());
        if room == 0 {
            break;
        }
        if parse(line, room, &mut hops).is_err() {
            hops.push(None);
        }
    }
    hops
}

/// One `X-Forwarded-For` line, right to left: comma-separated entries, each an IPv4 or
/// IPv6 address, optionally `v4:port`, `[v6]` or `[v6]:port`, with optional spaces.
fn xff_line(line: &[u8], limit: usize, out: &mut Vec<Option<IpAddr>>) -> Result<(), ()> {
    for entry in line.rsplit(|&b| b == b',').take(limit) {
        out.push(parse_xff_entry(trim(entry)));
    }
    Ok(())
}

fn parse_xff_entry(entry: &[u8]) -> Option<IpAddr> {
    if entry.len() > MAX_HOP_LEN {
        return None;
    }
    let text = std::str::from_utf8(entry).ok()?;
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    text.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|v6| v6.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

/// Strips RFC 9110 optional whitespace (spaces and tabs) from both ends.
fn trim(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i.saturating_add(1));
    bytes.get(start..end).unwrap_or_default()
}

/// One `Forwarded` line (RFC 7239 §4), right to left: comma-separated elements of
/// `;`-separated `name=value` pairs, values tokens or quoted strings. Each element must
/// carry exactly one `for`. An unbalanced quote makes the whole line unreadable (`Err`).
/// Linear in the line's length; keeps at most `limit` elements.
fn forwarded_line(line: &[u8], limit: usize, out: &mut Vec<Option<IpAddr>>) -> Result<(), ()> {
    // Split at commas outside quoted strings, keeping only the last `limit` elements.
    let mut elements: std::collections::VecDeque<&[u8]> =
        std::collections::VecDeque::with_capacity(limit.saturating_add(1));
    split_unquoted(line, b',', |element| {
        if elements.len() == limit {
            elements.pop_front();
        }
        elements.push_back(element);
    })?;
    for element in elements.iter().rev() {
        out.push(forwarded_for(trim(element)));
    }
    Ok(())
}

/// Calls `piece` with each piece of `text` between `separator`s outside double-quoted
/// strings (with backslash escapes), left to right; `Err` for an unterminated quote.
fn split_unquoted<'t>(
    text: &'t [u8],
    separator: u8,
    mut piece: impl FnMut(&'t [u8]),
) -> Result<(), ()> {
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in text.iter().enumerate() {
        if quoted {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = false;
            }
        } else if b == b'"' {
            quoted = true;
        } else if b == separator {
            piece(text.get(start..i).unwrap_or_default());
            start = i.saturating_add(1);
        }
    }
    if quoted {
        return Err(());
    }
    piece(text.get(start..).unwrap_or_default());
    Ok(())
}

/// The address in the `for` parameter of one `Forwarded` element; `None` when there is
/// not exactly one, or it names no address (`unknown`, `_obfuscated`) or cannot be read.
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    if element.len() > MAX_HOP_LEN {
        return None;
    }
    let mut found = None;
    let mut readable = true;
    split_unquoted(element, b';', |pair| {
        let pair = trim(pair);
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            readable = false;
            return;
        };
        let Some((name, value)) = pair.split_at_checked(eq) else {
            readable = false;
            return;
        };
        if name.eq_ignore_ascii_case(b"for") {
            readable &= found.is_none();
            found = value.get(1..);
        }
    })
    .ok()?;
    if !readable {
        return None;
    }
    let value = unquote(found?)?;
    node_address(&value)
}

/// A token as is; a quoted string without its quotes and escapes.
fn unquote(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?;
    let Some(inner) = text.strip_prefix('"') else {
        return (!text.is_empty() && !text.contains(['"', '\\'])).then(|| text.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// An RFC 7239 node: `IPv4[:port]` or `"[IPv6][:port]"`; `unknown` and obfuscated
/// identifiers name no address.
fn node_address(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let address: Ipv6Addr = v6.parse().ok()?;
        return (after.is_empty() || port_ok(after.strip_prefix(':')?))
            .then_some(IpAddr::V6(address));
    }
    let (v4, port) = match node.split_once(':') {
        Some((v4, port)) => (v4, Some(port)),
        None => (node, None),
    };
    let address: std::net::Ipv4Addr = v4.parse().ok()?;
    port.is_none_or(port_ok).then_some(IpAddr::V4(address))
}

/// RFC 7239 `node-port`: 1 to 5 digits, or an obfuscated `_[A-Za-z0-9._-]+`.
fn port_ok(port: &str) -> bool {
    let digits = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    let obfuscated = port.strip_prefix('_').is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    digits || obfuscated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()])
    }

    fn xff(peer: &str, lines: &[&str]) -> Option<IpAddr> {
        proxies().client_addr(Some(ip(peer)), lines.iter().map(|l| l.as_bytes()))
    }

    fn fwd(peer: &str, lines: &[&str]) -> Option<IpAddr> {
        proxies()
            .header(ProxyHeader::Forwarded)
            .client_addr(Some(ip(peer)), lines.iter().map(|l| l.as_bytes()))
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        assert_eq!(xff("203.0.113.1", &["1.2.3.4"]), Some(ip("203.0.113.1")));
        assert_eq!(xff("203.0.113.1", &["garbage"]), Some(ip("203.0.113.1")));
        assert_eq!(
            fwd("203.0.113.1", &["for=1.2.3.4"]),
            Some(ip("203.0.113.1"))
        );
        assert_eq!(xff("::ffff:203.0.113.1", &[]), Some(ip("203.0.113.1")));
        assert_eq!(proxies().client_addr(None, [&b"1.2.3.4"[..]]), None);
        // No trusted proxies at all: every peer is the client.
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_addr(Some(ip("10.0.0.1")), [&b"1.2.3.4"[..]]),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn x_forwarded_for_is_walked_right_to_left_past_trusted_hops() {
        assert_eq!(xff("10.0.0.1", &["198.51.100.1"]), Some(ip("198.51.100.1")));
        // A client-supplied entry on the left is skipped: the proxy appended the truth.
        assert_eq!(
            xff("10.0.0.1", &["6.6.6.6, 198.51.100.1"]),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(
            xff("10.0.0.1", &["6.6.6.6, 198.51.100.1, 10.0.0.7, fd00::3"]),
            Some(ip("198.51.100.1"))
        );
        // Several header lines are one list.
        assert_eq!(
            xff("10.0.0.1", &["6.6.6.6", "198.51.100.1,10.2.2.2"]),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(xff("10.0.0.1", &[" 2001:db8::1 "]), Some(ip("2001:db8::1")));
        assert_eq!(
            xff("10.0.0.1", &["[2001:db8::1]:443"]),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(xff("10.0.0.1", &["[2001:db8::1]"]), Some(ip("2001:db8::1")));
        assert_eq!(
            xff("10.0.0.1", &["198.51.100.1:5555"]),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(
            xff("10.0.0.1", &["::ffff:198.51.100.1"]),
            Some(ip("198.51.100.1"))
        );
        // Every hop trusted: the leftmost.
        assert_eq!(
            xff("10.0.0.1", &["10.0.0.3, 10.0.0.2"]),
            Some(ip("10.0.0.3"))
        );
    }

    #[test]
    fn unreadable_or_missing_hops_leave_the_client_unknown() {
        for lines in [
            &[][..],
            &[""],
            &["garbage"],
            &["198.51.100.1, "],
            &["1.2.3.4, unknown"],
            &["1.2.3.4,,10.0.0.2"],
            &["fe80::1%eth0"],
            &["1.2.3.4\u{0}"],
        ] {
            assert_eq!(xff("10.0.0.1", lines), None, "{lines:?}");
        }
        // Garbage to the left of the client is never read.
        assert_eq!(
            xff("10.0.0.1", &["garbage, 198.51.100.1"]),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(
            fwd("10.0.0.1", &["for=\"unbalanced", "for=198.51.100.1"]),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(fwd("10.0.0.1", &["for=\"unbalanced", "for=10.0.0.3"]), None);
        let long = format!("{}, 198.51.100.1", "9".repeat(100_000));
        assert_eq!(xff("10.0.0.1", &[&long]), Some(ip("198.51.100.1")));
        let huge = "1".repeat(MAX_HOP_LEN + 1);
        assert_eq!(xff("10.0.0.1", &[&huge]), None);
    }

    #[test]
    fn the_walk_stops_after_the_hop_cap() {
        let trusted = vec!["10.0.0.9"; MAX_FORWARDED_HOPS];
        let within = format!("198.51.100.1, {}", trusted[1..].join(", "));
        assert_eq!(xff("10.0.0.1", &[&within]), Some(ip("198.51.100.1")));
        let beyond = format!("198.51.100.1, {}", trusted.join(", "));
        assert_eq!(xff("10.0.0.1", &[&beyond]), None);
        // All trusted and more than the cap: the leftmost read is not the leftmost.
        let all = vec!["10.0.0.9"; MAX_FORWARDED_HOPS + 5].join(",");
        assert_eq!(xff("10.0.0.1", &[&all]), None);
        let many_lines = vec!["10.0.0.9"; 10_000];
        assert_eq!(xff("10.0.0.1", &many_lines), None);
    }

    #[test]
    fn forwarded_is_read_per_rfc_7239() {
        assert_eq!(
            fwd("10.0.0.1", &["for=198.51.100.1"]),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(
            fwd(
                "10.0.0.1",
                &["For=\"198.51.100.1:8080\";proto=https;by=10.0.0.1"]
            ),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(
            fwd("10.0.0.1", &[r#"for="[2001:db8:cafe::17]:4711""#]),
            Some(ip("2001:db8:cafe::17"))
        );
        assert_eq!(
            fwd(
                "10.0.0.1",
                &[r#"for=6.6.6.6, for=198.51.100.1;host="a,b", for=10.1.1.1"#]
            ),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(
            fwd("10.0.0.1", &["for=6.6.6.6", "for=198.51.100.1"]),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(
            fwd("10.0.0.1", &[r#"for="198.51.100.1:_abc""#]),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(
            fwd("10.0.0.1", &[r#"for="\[2001:db8::1\]""#]),
            Some(ip("2001:db8::1"))
        );
        for lines in [
            &["for=unknown"][..],
            &["for=_hidden"],
            &["proto=https"],
            &["for=1.2.3.4;for=5.6.7.8"],
            &["for=\"1.2.3.4"],
            &["for=2001:db8::1"],
            &["for=\"[2001:db8::1\""],
            &["for=\"[2001:db8::1]:\""],
            &["for=1.2.3.4:999999"],
            &["for="],
            &["for"],
            &["for=\"a\"b\""],
            &[""],
        ] {
            assert_eq!(fwd("10.0.0.1", lines), None, "{lines:?}");
        }
        // An X-Forwarded-For header is not read when Forwarded is declared, and the
        // reverse: only the declared header is passed in, so the other cannot spoof.
        assert_eq!(fwd("10.0.0.1", &["198.51.100.1"]), None);
        assert_eq!(xff("10.0.0.1", &["for=198.51.100.1"]), None);
    }

    #[test]
    fn garbage_never_panics() {
        let samples: [&[u8]; 12] = [
            b"\"",
            b"\\",
            b"for=\"\\",
            b",,,,",
            b";;;;",
            b"=",
            b"for=\"[\"",
            b"for=[::1]",
            b"\xff\xfe",
            b"for=\"\xff\"",
            b"  ,  ",
            b"for=\"[::1]:\xff\"",
        ];
        for header in [ProxyHeader::XForwardedFor, ProxyHeader::Forwarded] {
            let p = proxies().header(header);
            for sample in samples {
                let _ = p.client_addr(Some(ip("10.0.0.1")), [sample]);
                let _ = p.client_addr(Some(ip("10.0.0.1")), [sample, sample]);
            }
        }
    }
}
