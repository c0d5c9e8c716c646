//! Network restrictions on a key: [`NetworkPolicy`] and what it is checked against.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most allowed networks one key may carry.
pub const MAX_ALLOWED_CIDRS: usize = 64;

/// Most allowed origins one key may carry.
pub const MAX_ALLOWED_ORIGINS: usize = 64;

/// Longest origin (allowed or sent in `Origin`) read, in bytes; longer is refused.
pub const MAX_ORIGIN_LEN: usize = 512;

/// Longest CIDR text read, in bytes (the longest valid one,
/// `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128`, has 49).
const MAX_CIDR_LEN: usize = 64;

/// Why a CIDR block or an origin was refused. Nothing is stored from a refused value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// Not an IPv4 or IPv6 address (zone ids such as `%eth0` included).
    #[error("not an IPv4 or IPv6 address")]
    InvalidAddress,
    /// The prefix length is not a decimal number from 0 to 32 (IPv4) or 128 (IPv6).
    #[error("prefix length must be 0-32 for IPv4 and 0-128 for IPv6")]
    InvalidPrefix,
    /// The address has bits set beyond the prefix (`10.1.2.3/8`): write the network
    /// (`10.0.0.0/8`) or the single address (`10.1.2.3/32`), whichever was meant.
    #[error("address has bits set beyond the prefix length: write the network address")]
    HostBitsSet,
    /// Not of the form `scheme://host[:port]`.
    #[error("not an origin: expected scheme://host[:port]")]
    InvalidOrigin,
    /// The scheme is not `[a-z][a-z0-9+.-]*`.
    #[error("invalid origin scheme")]
    InvalidScheme,
    /// The host is not a DNS name (ASCII; punycode for international names), an IPv4
    /// address or a bracketed IPv6 address; or a wildcard is not a leading `*.` label
    /// before a DNS name.
    #[error("invalid origin host (international names must be in punycode)")]
    InvalidHost,
    /// The port is not a number from 1 to 65535.
    #[error("invalid origin port")]
    InvalidPort,
    /// A path (other than a lone `/`), query, fragment or user info: an origin has none.
    #[error("an origin has no path, query, fragment or user info")]
    NotAnOrigin,
    /// Longer than [`MAX_ORIGIN_LEN`] (origins) or 64 bytes (CIDRs).
    #[error("too long")]
    TooLong,
}

impl NetworkError {
    /// A stable machine-readable code, e.g. `"host_bits_set"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            NetworkError::InvalidAddress => "invalid_address",
            NetworkError::InvalidPrefix => "invalid_prefix",
            NetworkError::HostBitsSet => "host_bits_set",
            NetworkError::InvalidOrigin => "invalid_origin",
            NetworkError::InvalidScheme => "invalid_scheme",
            NetworkError::InvalidHost => "invalid_host",
            NetworkError::InvalidPort => "invalid_port",
            NetworkError::NotAnOrigin => "not_an_origin",
            NetworkError::TooLong => "too_long",
        }
    }
}

/// An IP network: an address and a prefix length, IPv4 or IPv6, in canonical form (see
/// [`NetworkPolicy`](NetworkPolicy#addresses) for IPv4-mapped addresses).
///
/// Parsed strictly from `address/prefix` or a bare address (a single host: `/32` or
/// `/128`); displayed always with the prefix.
///
/// ```
/// use keygate::limits::{Cidr, NetworkError};
///
/// let net: Cidr = "192.168.0.0/16".parse().unwrap();
/// assert!(net.contains("192.168.4.5".parse().unwrap()));
/// assert!(net.contains("::ffff:192.168.4.5".parse().unwrap()));
/// assert_eq!("10.0.0.1".parse::<Cidr>().unwrap().to_string(), "10.0.0.1/32");
/// assert_eq!("10.1.2.3/8".parse::<Cidr>(), Err(NetworkError::HostBitsSet));
/// assert_eq!("::ffff:10.0.0.0/104".parse::<Cidr>().unwrap().to_string(), "10.0.0.0/8");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network `address/prefix`.
    ///
    /// # Errors
    ///
    /// [`NetworkError::InvalidPrefix`] for a prefix over 32 (IPv4) or 128 (IPv6);
    /// [`NetworkError::HostBitsSet`] when `address` has bits set beyond the prefix.
    pub fn new(address: IpAddr, prefix: u8) -> Result<Self, NetworkError> {
        let (network, prefix) = match address {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if (96..=128).contains(&prefix) => {
                    (IpAddr::V4(v4), prefix.saturating_sub(96))
                }
                _ => (address, prefix),
            },
            IpAddr::V4(_) => (address, prefix),
        };
        let max = match network {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > max {
            return Err(NetworkError::InvalidPrefix);
        }
        let cidr = Self { network, prefix };
        if masked(network, prefix) != network {
            return Err(NetworkError::HostBitsSet);
        }
        Ok(cidr)
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Whether `address` (canonicalised: an IPv4-mapped IPv6 address is its IPv4
    /// address) lies in this network.
    pub fn contains(&self, address: IpAddr) -> bool {
        self.contains_canonical(address.to_canonical())
    }

    fn contains_canonical(&self, address: IpAddr) -> bool {
        matches!(
            (self.network, address),
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_))
        ) && masked(address, self.prefix) == self.network
    }

    /// Whether every address of `other` lies in this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.prefix <= other.prefix && self.contains_canonical(other.network)
    }
}

/// `address` with every bit beyond `prefix` cleared.
fn masked(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(u32::from(32u8.saturating_sub(prefix)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(u32::from(128u8.saturating_sub(prefix)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

impl FromStr for Cidr {
    type Err = NetworkError;

    fn from_str(text: &str) -> Result<Self, NetworkError> {
        if text.len() > MAX_CIDR_LEN {
            return Err(NetworkError::TooLong);
        }
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        // std's parser: no zone ids, no brackets, no whitespace, no leading zeros in IPv4.
        let address: IpAddr = address.parse().map_err(|_| NetworkError::InvalidAddress)?;
        let prefix = match prefix {
            None if address.is_ipv4() => 32,
            None => 128,
            // Plain decimal: no sign, no leading zero, at most three digits.
            Some(p)
                if !p.is_empty()
                    && p.len() <= 3
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && (p == "0" || !p.starts_with('0')) =>
            {
                p.parse().map_err(|_| NetworkError::InvalidPrefix)?
            }
            Some(_) => return Err(NetworkError::InvalidPrefix),
        };
        Self::new(address, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A browser origin a key may be used from: `scheme://host[:port]`, normalised (scheme
/// and host lowercase, the default port of `http`/`ws` (80) and `https`/`wss` (443)
/// dropped, a lone trailing `/` dropped). The host may start with a `*.` wildcard label,
/// which matches any subdomain (one or more labels) but not the domain itself.
///
/// ```
/// use keygate::limits::{AllowedOrigin, NetworkError};
///
/// let o: AllowedOrigin = "HTTPS://App.Example.com:443/".parse().unwrap();
/// assert_eq!(o.to_string(), "https://app.example.com");
/// let any: AllowedOrigin = "https://*.example.com".parse().unwrap();
/// assert!(any.matches_header("https://a.b.example.com"));
/// assert!(!any.matches_header("https://example.com"));
/// assert_eq!("https://example.com/app".parse::<AllowedOrigin>(), Err(NetworkError::NotAnOrigin));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllowedOrigin {
    scheme: Box<str>,
    /// Lowercase; an IPv6 literal keeps its brackets; without the `*.` of a wildcard.
    host: Box<str>,
    /// Only when not the scheme's default.
    port: Option<u16>,
    wildcard: bool,
}

impl AllowedOrigin {
    /// Whether `origin`, the value of a request's `Origin` header, is one this allows.
    /// An unreadable value (including `null`) matches nothing.
    pub fn matches_header(&self, origin: &str) -> bool {
        parse_origin(origin, false).is_ok_and(|origin| self.matches(&origin))
    }

    /// Whether `origin` (a concrete origin, no wildcard) is one this allows.
    fn matches(&self, origin: &AllowedOrigin) -> bool {
        self.scheme == origin.scheme
            && self.port == origin.port
            && if self.wildcard {
                is_subdomain(&origin.host, &self.host)
            } else {
                self.host == origin.host
            }
    }

    /// Whether every origin `other` allows, this allows too.
    pub fn covers(&self, other: &AllowedOrigin) -> bool {
        self.scheme == other.scheme
            && self.port == other.port
            && match (self.wildcard, other.wildcard) {
                (false, false) => self.host == other.host,
                (false, true) => false,
                // `*.a.com` covers `b.a.com`, `*.b.a.com` and itself.
                (true, false) => is_subdomain(&other.host, &self.host),
                (true, true) => other.host == self.host || is_subdomain(&other.host, &self.host),
            }
    }
}

/// Whether `host` is a proper subdomain of `domain` (`a.b.com` of `b.com`).
fn is_subdomain(host: &str, domain: &str) -> bool {
    host.strip_suffix(domain)
        .and_then(|rest| rest.strip_suffix('.'))
        .is_some_and(|rest| !rest.is_empty())
}

/// Parses an origin; `wildcard` allows a leading `*.` host label.
fn parse_origin(text: &str, wildcard: bool) -> Result<AllowedOrigin, NetworkError> {
    if text.len() > MAX_ORIGIN_LEN {
        return Err(NetworkError::TooLong);
    }
    if !text.is_ascii() {
        return Err(NetworkError::InvalidHost);
    }
    let (scheme, rest) = text.split_once("://").ok_or(NetworkError::InvalidOrigin)?;
    let mut chars = scheme.bytes();
    let scheme_ok = chars.next().is_some_and(|b| b.is_ascii_alphabetic())
        && chars.all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b));
    if !scheme_ok {
        return Err(NetworkError::InvalidScheme);
    }
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority
        .bytes()
        .any(|b| b"/?#@\\".contains(&b) || !b.is_ascii_graphic())
    {
        return Err(NetworkError::NotAnOrigin);
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (literal, after) = v6.split_once(']').ok_or(NetworkError::InvalidHost)?;
        let address: Ipv6Addr = literal.parse().map_err(|_| NetworkError::InvalidHost)?;
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or(NetworkError::InvalidPort)?),
        };
        (format!("[{address}]"), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(NetworkError::InvalidPort),
                Ok(port) => Some(port),
            }
        }
        Some(_) => return Err(NetworkError::InvalidPort),
    };
    let default_port = match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    let port = port.filter(|p| Some(*p) != default_port);
    let (host, is_wildcard) = match host.strip_prefix("*.") {
        Some(domain) if wildcard => (domain.to_owned(), true),
        Some(_) => return Err(NetworkError::InvalidHost),
        None => (host, false),
    };
    let bracketed = host.starts_with('[');
    if !bracketed && !is_dns_name(&host) {
        return Err(NetworkError::InvalidHost);
    }
    if is_wildcard && (bracketed || host.parse::<Ipv4Addr>().is_ok()) {
        return Err(NetworkError::InvalidHost);
    }
    Ok(AllowedOrigin {
        scheme: scheme.into(),
        host: host.into(),
        port,
        wildcard: is_wildcard,
    })
}

/// A lowercase DNS name: dot-separated labels of 1 to 63 of `[a-z0-9_-]`, 253 bytes at
/// most, no empty label (so no trailing dot), no label starting or ending with `-`.
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

impl FromStr for AllowedOrigin {
    type Err = NetworkError;

    fn from_str(text: &str) -> Result<Self, NetworkError> {
        parse_origin(text, true)
    }
}

impl fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wildcard = if self.wildcard { "*." } else { "" };
        write!(f, "{}://{wildcard}{}", self.scheme, self.host)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

impl Serialize for AllowedOrigin {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AllowedOrigin {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Network restrictions on a key: the client networks ([`Cidr`]) and browser origins
/// ([`AllowedOrigin`]) it may be used from, as a [`NetworkPolicy`] on its
/// [`KeyRecord`](crate::KeyRecord), checked against a request's [`RequestContext`].
///
/// A key with an empty policy (every key minted before keygate had them) is usable from
/// anywhere. A key with allowed networks is accepted only from a client address inside
/// one of them; a key with allowed origins only from a request whose `Origin` header
/// names one of them. Both, when both are set. Anything else is refused with
/// [`VerifyError::NetworkNotAllowed`](crate::VerifyError::NetworkNotAllowed) or
/// [`VerifyError::OriginNotAllowed`](crate::VerifyError::OriginNotAllowed) (HTTP 403,
/// `network_not_allowed` / `origin_not_allowed`).
///
/// **Fail closed.** A restricted key is refused when the request's client address (or
/// `Origin`) is not known: [`Keygate::verify`](crate::Keygate::verify) and the other
/// entry points without a [`RequestContext`] know neither, so such a key verifies only
/// through [`Keygate::verify_with`](crate::Keygate::verify_with) /
/// [`verify_headers_with`](crate::Keygate::verify_headers_with) or the axum and actix
/// integrations, which pass the connection's address and headers.
///
/// **What an origin restriction is worth.** Browsers set `Origin` and scripts cannot
/// forge it there, so an origin restriction keeps a key copied out of a web page from
/// being used *by other web pages*. Any non-browser client can send any `Origin` it
/// likes: it is not a defence against a server-side attacker holding the key (a network
/// restriction is).
///
/// # Addresses
///
/// IPv4 and IPv6. An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, what a dual-stack
/// socket reports for an IPv4 client) is the IPv4 address it maps: clients are compared in
/// that canonical form, and a CIDR written in the mapped range with a prefix of at least
/// 96 (`::ffff:10.0.0.0/104`) is stored as the IPv4 block it denotes (`10.0.0.0/8`). So an
/// IPv4 rule admits an IPv4 client however the socket reports it, and an IPv6 rule such as
/// `::/0` admits native IPv6 clients only: write `0.0.0.0/0` as well for "any address".
///
/// ```
/// use keygate::limits::{AllowedOrigin, Cidr, NetworkPolicy, RequestContext};
///
/// # fn main() -> Result<(), keygate::limits::NetworkError> {
/// let policy = NetworkPolicy::new()
///     .with_cidrs(["10.0.0.0/8".parse::<Cidr>()?, "2001:db8::/32".parse()?])
///     .with_origins(["https://app.example.com".parse::<AllowedOrigin>()?]);
///
/// let office = RequestContext::new()
///     .client_addr("::ffff:10.1.2.3".parse().unwrap())
///     .origin("https://APP.example.com:443");
/// assert!(policy.check(&office).is_ok());
///
/// let elsewhere = RequestContext::new().client_addr("192.0.2.1".parse().unwrap());
/// assert!(policy.check(&elsewhere).is_err());
/// assert!(policy.check(&RequestContext::new()).is_err()); // unknown address: refused
/// # Ok(()) }
/// ```
///
/// Empty lists restrict nothing; the default (and every key minted before keygate had
/// network restrictions) is unrestricted. Stored with the record as
/// `{"cidrs": [...], "origins": [...]}` (canonical text); duplicates are dropped and the
/// order kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub struct NetworkPolicy {
    /// Client networks; empty: any address.
    cidrs: Vec<Cidr>,
    /// Browser origins; empty: any origin, or none.
    origins: Vec<AllowedOrigin>,
}

/// Strictly: a JSON object (never an array read by position), no unknown fields, both
/// lists optional, every entry valid.
impl<'de> Deserialize<'de> for NetworkPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fields {
            #[serde(default)]
            cidrs: Vec<Cidr>,
            #[serde(default)]
            origins: Vec<AllowedOrigin>,
        }

        struct Object;

        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = Fields;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a network policy object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Fields, A::Error> {
                Fields::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        let fields = deserializer.deserialize_map(Object)?;
        Ok(NetworkPolicy::new()
            .with_cidrs(fields.cidrs)
            .with_origins(fields.origins))
    }
}

/// Why a request's context did not satisfy a [`NetworkPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NetworkRefusal {
    /// The client address is unknown or outside every allowed network.
    Network,
    /// The `Origin` header is missing, unreadable, or none of the allowed origins.
    Origin,
}

impl NetworkPolicy {
    /// No restriction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the allowed networks (duplicates dropped; empty: any address).
    #[must_use]
    pub fn with_cidrs(mut self, cidrs: impl IntoIterator<Item = Cidr>) -> Self {
        self.cidrs = dedup(cidrs);
        self
    }

    /// Replaces the allowed origins (duplicates dropped; empty: any origin).
    #[must_use]
    pub fn with_origins(mut self, origins: impl IntoIterator<Item = AllowedOrigin>) -> Self {
        self.origins = dedup(origins);
        self
    }

    /// The allowed client networks; empty: any.
    pub fn cidrs(&self) -> &[Cidr] {
        &self.cidrs
    }

    /// The allowed browser origins; empty: any.
    pub fn origins(&self) -> &[AllowedOrigin] {
        &self.origins
    }

    /// Whether this restricts nothing.
    pub fn is_unrestricted(&self) -> bool {
        self.cidrs.is_empty() && self.origins.is_empty()
    }

    /// Whether a request with `context` may use the key: its client address inside an
    /// allowed network (when there are any) and its `Origin` one of the allowed origins
    /// (when there are any). An unknown address or a missing `Origin` does not satisfy a
    /// restriction.
    ///
    /// # Errors
    ///
    /// [`NetworkRefusal::Network`] or [`NetworkRefusal::Origin`], the first restriction not
    /// met.
    pub fn check(&self, context: &RequestContext) -> Result<(), NetworkRefusal> {
        if !self.cidrs.is_empty() {
            let inside = context
                .client
                .is_some_and(|client| self.cidrs.iter().any(|net| net.contains(client)));
            if !inside {
                return Err(NetworkRefusal::Network);
            }
        }
        if !self.origins.is_empty() {
            let allowed = match &context.origin {
                OriginHeader::One(value) => parse_origin(value, false)
                    .is_ok_and(|origin| self.origins.iter().any(|o| o.matches(&origin))),
                OriginHeader::Absent | OriginHeader::Unreadable => false,
            };
            if !allowed {
                return Err(NetworkRefusal::Origin);
            }
        }
        Ok(())
    }

    /// Whether every request `other` admits, this admits too (for the admin API's
    /// no-escalation rule): no restriction covers everything; a restricted list covers
    /// another only if that one is restricted too and each of its entries lies within one
    /// of this list's.
    pub fn covers(&self, other: &NetworkPolicy) -> bool {
        let cidrs = self.cidrs.is_empty()
            || (!other.cidrs.is_empty()
                && other
                    .cidrs
                    .iter()
                    .all(|theirs| self.cidrs.iter().any(|mine| mine.covers(theirs))));
        let origins = self.origins.is_empty()
            || (!other.origins.is_empty()
                && other
                    .origins
                    .iter()
                    .all(|theirs| self.origins.iter().any(|mine| mine.covers(theirs))));
        cidrs && origins
    }

    /// The bounds a stored or minted policy keeps: at most [`MAX_ALLOWED_CIDRS`] networks
    /// and [`MAX_ALLOWED_ORIGINS`] origins. `Err` names the field and what is wrong.
    pub(crate) fn check_bounds(&self) -> Result<(), (&'static str, &'static str)> {
        if self.cidrs.len() > MAX_ALLOWED_CIDRS {
            return Err(("allowed_cidrs", "more than 64 networks"));
        }
        if self.origins.len() > MAX_ALLOWED_ORIGINS {
            return Err(("allowed_origins", "more than 64 origins"));
        }
        Ok(())
    }
}

/// `items` without repeats, in first-seen order (lists are at most a few dozen long).
fn dedup<T: PartialEq>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// What keygate knows about where a request comes from: the client address and the
/// `Origin` header, for keys with a [`NetworkPolicy`].
///
/// The axum and actix integrations build it from the connection and the headers (see
/// [`Keygate::request_context`](crate::Keygate::request_context), which honours
/// `Forwarded`/`X-Forwarded-For` only from [trusted
/// proxies](crate::KeygateBuilder::trusted_proxies)). Elsewhere, build it by hand and pass
/// it to [`Keygate::verify_with`](crate::Keygate::verify_with). The empty context
/// ([`RequestContext::new`]) is what the entry points without one use: a key with a
/// network policy is refused there.
///
/// ```
/// use keygate::limits::RequestContext;
///
/// let context = RequestContext::new()
///     .client_addr("203.0.113.7".parse().unwrap())
///     .origin("https://app.example.com");
/// assert_eq!(context.client(), Some("203.0.113.7".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    client: Option<IpAddr>,
    origin: OriginHeader,
}

/// The request's `Origin` header, as read (normalised only when a policy needs it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum OriginHeader {
    #[default]
    Absent,
    One(Box<str>),
    /// More than one, too long or not text: matches nothing.
    Unreadable,
}

/// The context of a request nothing is known about.
pub(crate) static UNKNOWN: RequestContext = RequestContext {
    client: None,
    origin: OriginHeader::Absent,
};

impl RequestContext {
    /// Nothing known: no client address, no `Origin`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The client's address (an IPv4-mapped IPv6 address is taken as its IPv4 address).
    #[must_use]
    pub fn client_addr(mut self, address: IpAddr) -> Self {
        self.client = Some(address.to_canonical());
        self
    }

    /// Sets the client's address, or clears it with `None`.
    #[must_use]
    pub fn maybe_client_addr(mut self, address: Option<IpAddr>) -> Self {
        self.client = address.map(|a| a.to_canonical());
        self
    }

    /// The value of the request's `Origin` header.
    #[must_use]
    pub fn origin(self, origin: &str) -> Self {
        self.origin_headers([origin.as_bytes()])
    }

    /// Every value of the request's `Origin` header: none is no origin; more than one,
    /// one over [`MAX_ORIGIN_LEN`] bytes or one that is not ASCII matches no allowed
    /// origin.
    #[must_use]
    pub fn origin_headers<'a, I>(mut self, values: I) -> Self
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let mut values = values.into_iter();
        self.origin = match (values.next(), values.next()) {
            (None, _) => OriginHeader::Absent,
            (Some(value), None) if value.len() <= MAX_ORIGIN_LEN && value.is_ascii() => {
                match std::str::from_utf8(value) {
                    Ok(text) => OriginHeader::One(text.into()),
                    Err(_) => OriginHeader::Unreadable,
                }
            }
            _ => OriginHeader::Unreadable,
        };
        self
    }

    /// The client's address, when known.
    pub fn client(&self) -> Option<IpAddr> {
        self.client
    }

    /// The `Origin` header's value, when there was exactly one readable one.
    pub fn origin_header(&self) -> Option<&str> {
        match &self.origin {
            OriginHeader::One(value) => Some(value),
            OriginHeader::Absent | OriginHeader::Unreadable => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn origin(text: &str) -> AllowedOrigin {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn cidrs_parse_strictly_and_display_canonically() {
        for (text, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2001:DB8::/32", "2001:db8::/32"),
            ("::1", "::1/128"),
            ("::/0", "::/0"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:192.0.2.1", "192.0.2.1/32"),
            ("::ffff:0:0/96", "0.0.0.0/0"),
            ("255.255.255.255/32", "255.255.255.255/32"),
        ] {
            assert_eq!(cidr(text).to_string(), shown, "{text}");
            assert_eq!(cidr(shown), cidr(text), "{text} round-trips");
        }
        for (text, error) in [
            ("", NetworkError::InvalidAddress),
            ("10.0.0.0/", NetworkError::InvalidPrefix),
            ("10.0.0.0/33", NetworkError::InvalidPrefix),
            ("10.0.0.0/08", NetworkError::InvalidPrefix),
            ("10.0.0.0/+8", NetworkError::InvalidPrefix),
            ("10.0.0.0/-1", NetworkError::InvalidPrefix),
            ("10.0.0.0/8/8", NetworkError::InvalidPrefix),
            ("10.0.0.0/1000", NetworkError::InvalidPrefix),
            ("::/129", NetworkError::InvalidPrefix),
            ("10.1.2.3/8", NetworkError::HostBitsSet),
            ("2001:db8::1/32", NetworkError::HostBitsSet),
            ("::ffff:10.1.0.0/104", NetworkError::HostBitsSet),
            ("10.0.0", NetworkError::InvalidAddress),
            ("010.0.0.0/8", NetworkError::InvalidAddress),
            (" 10.0.0.0/8", NetworkError::InvalidAddress),
            ("fe80::1%eth0", NetworkError::InvalidAddress),
            ("[::1]", NetworkError::InvalidAddress),
            ("localhost", NetworkError::InvalidAddress),
            ("10.0.0.0 /8", NetworkError::InvalidAddress),
            ("1.2.3.4/32 ", NetworkError::InvalidPrefix),
        ] {
            assert_eq!(text.parse::<Cidr>(), Err(error), "{text:?}");
        }
        let long = format!("{}/8", "1".repeat(100));
        assert_eq!(long.parse::<Cidr>(), Err(NetworkError::TooLong));
    }

    #[test]
    fn cidrs_match_v4_v6_and_mapped_clients() {
        let net = cidr("192.168.0.0/16");
        assert!(net.contains(ip("192.168.0.0")));
        assert!(net.contains(ip("192.168.255.255")));
        assert!(!net.contains(ip("192.169.0.0")));
        assert!(!net.contains(ip("192.167.255.255")));
        // A dual-stack socket's view of an IPv4 client.
        assert!(net.contains(ip("::ffff:192.168.1.1")));
        assert!(!net.contains(ip("::ffff:10.0.0.1")));
        // IPv4-compatible (deprecated) addresses are IPv6, not IPv4.
        assert!(!net.contains(ip("::192.168.1.1")));
        let all4 = cidr("0.0.0.0/0");
        assert!(all4.contains(ip("8.8.8.8")) && !all4.contains(ip("2001:db8::1")));
        let all6 = cidr("::/0");
        assert!(all6.contains(ip("2001:db8::1")));
        assert!(
            !all6.contains(ip("::ffff:8.8.8.8")),
            "mapped clients are IPv4"
        );
        let v6 = cidr("2001:db8:abcd::/48");
        assert!(v6.contains(ip("2001:db8:abcd:ffff::1")));
        assert!(!v6.contains(ip("2001:db8:abce::1")));
        let host = cidr("2001:db8::1");
        assert!(host.contains(ip("2001:db8::1")) && !host.contains(ip("2001:db8::2")));
        let one = cidr("10.0.0.1");
        assert!(one.contains(ip("10.0.0.1")) && !one.contains(ip("10.0.0.2")));
    }

    #[test]
    fn cidrs_cover_narrower_blocks_of_their_family() {
        assert!(cidr("10.0.0.0/8").covers(&cidr("10.1.0.0/16")));
        assert!(cidr("10.0.0.0/8").covers(&cidr("10.0.0.0/8")));
        assert!(!cidr("10.1.0.0/16").covers(&cidr("10.0.0.0/8")));
        assert!(!cidr("10.0.0.0/8").covers(&cidr("11.0.0.0/16")));
        assert!(!cidr("::/0").covers(&cidr("10.0.0.0/8")));
        assert!(cidr("0.0.0.0/0").covers(&cidr("::ffff:10.0.0.0/104")));
    }

    #[test]
    fn origins_normalise_and_refuse_what_is_not_an_origin() {
        for (text, shown) in [
            ("https://example.com", "https://example.com"),
            ("HTTPS://EXAMPLE.com", "https://example.com"),
            ("https://example.com:443", "https://example.com"),
            ("https://example.com/", "https://example.com"),
            ("http://example.com:80", "http://example.com"),
            ("http://example.com:443", "http://example.com:443"),
            ("https://example.com:8443", "https://example.com:8443"),
            ("wss://chat.example.com:443", "wss://chat.example.com"),
            ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("http://[2001:DB8::1]", "http://[2001:db8::1]"),
            ("https://*.example.com", "https://*.example.com"),
            (
                "chrome-extension://abcdefghij",
                "chrome-extension://abcdefghij",
            ),
            (
                "https://xn--bcher-kva.example",
                "https://xn--bcher-kva.example",
            ),
        ] {
            assert_eq!(origin(text).to_string(), shown, "{text}");
            assert_eq!(origin(shown), origin(text));
        }
        for (text, error) in [
            ("", NetworkError::InvalidOrigin),
            ("example.com", NetworkError::InvalidOrigin),
            ("null", NetworkError::InvalidOrigin),
            ("://example.com", NetworkError::InvalidScheme),
            ("1http://example.com", NetworkError::InvalidScheme),
            ("ht tp://example.com", NetworkError::InvalidScheme),
            ("https://", NetworkError::InvalidHost),
            ("https://example.com/app", NetworkError::NotAnOrigin),
            ("https://example.com//", NetworkError::NotAnOrigin),
            ("https://example.com?x", NetworkError::NotAnOrigin),
            ("https://example.com#x", NetworkError::NotAnOrigin),
            ("https://user@example.com", NetworkError::NotAnOrigin),
            ("https://exa mple.com", NetworkError::NotAnOrigin),
            ("https://example.com:0", NetworkError::InvalidPort),
            ("https://example.com:65536", NetworkError::InvalidPort),
            ("https://example.com:", NetworkError::InvalidPort),
            ("https://example.com:+1", NetworkError::InvalidPort),
            ("https://example.com:1:2", NetworkError::InvalidPort),
            ("https://bücher.example", NetworkError::InvalidHost),
            ("https://example..com", NetworkError::InvalidHost),
            ("https://example.com.", NetworkError::InvalidHost),
            ("https://-example.com", NetworkError::InvalidHost),
            ("https://*", NetworkError::InvalidHost),
            ("https://*.", NetworkError::InvalidHost),
            ("https://a.*.example.com", NetworkError::InvalidHost),
            ("https://*example.com", NetworkError::InvalidHost),
            ("https://*.10.0.0.1", NetworkError::InvalidHost),
            ("http://[::1", NetworkError::InvalidHost),
            ("http://[::1]x", NetworkError::InvalidPort),
            ("http://[zz::1]", NetworkError::InvalidHost),
            ("http://::1", NetworkError::InvalidPort),
        ] {
            assert_eq!(text.parse::<AllowedOrigin>(), Err(error), "{text:?}");
        }
        let long = format!("https://{}.com", "a".repeat(MAX_ORIGIN_LEN));
        assert_eq!(long.parse::<AllowedOrigin>(), Err(NetworkError::TooLong));
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain_wildcard() {
        let exact = origin("https://app.example.com");
        assert!(exact.matches_header("https://app.example.com"));
        assert!(exact.matches_header("https://APP.example.com:443"));
        assert!(!exact.matches_header("http://app.example.com"));
        assert!(!exact.matches_header("https://app.example.com:8443"));
        assert!(!exact.matches_header("https://evil-app.example.com"));
        assert!(!exact.matches_header("https://app.example.com.evil.com"));
        assert!(!exact.matches_header("null"));
        assert!(!exact.matches_header(""));
        let any = origin("https://*.example.com");
        assert!(any.matches_header("https://a.example.com"));
        assert!(any.matches_header("https://a.b.example.com"));
        assert!(!any.matches_header("https://example.com"));
        assert!(!any.matches_header("https://badexample.com"));
        assert!(!any.matches_header("https://a.example.com.evil"));
        // A request's origin cannot itself be a wildcard.
        assert!(!any.matches_header("https://*.example.com"));
    }

    #[test]
    fn origins_cover_what_they_match() {
        let any = origin("https://*.example.com");
        assert!(any.covers(&origin("https://a.example.com")));
        assert!(any.covers(&origin("https://*.a.example.com")));
        assert!(any.covers(&any));
        assert!(!any.covers(&origin("https://example.com")));
        assert!(!any.covers(&origin("http://a.example.com")));
        let exact = origin("https://a.example.com");
        assert!(exact.covers(&exact));
        assert!(!exact.covers(&any));
        assert!(!exact.covers(&origin("https://a.example.com:8443")));
    }

    #[test]
    fn a_policy_admits_only_what_it_lists_and_fails_closed() {
        let policy = NetworkPolicy::new()
            .with_cidrs([cidr("10.0.0.0/8"), cidr("2001:db8::/32")])
            .with_origins([origin("https://app.example.com")]);
        let ok = RequestContext::new()
            .client_addr(ip("10.9.9.9"))
            .origin("https://app.example.com");
        assert_eq!(policy.check(&ok), Ok(()));
        let v6 = ok.clone().client_addr(ip("2001:db8::5"));
        assert_eq!(policy.check(&v6), Ok(()));
        let mapped = ok.clone().client_addr(ip("::ffff:10.0.0.1"));
        assert_eq!(policy.check(&mapped), Ok(()));
        let outside = ok.clone().client_addr(ip("11.0.0.1"));
        assert_eq!(policy.check(&outside), Err(NetworkRefusal::Network));
        let unknown = ok.clone().maybe_client_addr(None);
        assert_eq!(policy.check(&unknown), Err(NetworkRefusal::Network));
        let other_origin = ok.clone().origin("https://evil.example.com");
        assert_eq!(policy.check(&other_origin), Err(NetworkRefusal::Origin));
        let no_origin = RequestContext::new().client_addr(ip("10.0.0.1"));
        assert_eq!(policy.check(&no_origin), Err(NetworkRefusal::Origin));
        let two = no_origin
            .clone()
            .origin_headers([&b"https://app.example.com"[..], b"https://app.example.com"]);
        assert_eq!(policy.check(&two), Err(NetworkRefusal::Origin));
        let binary = no_origin
            .clone()
            .origin_headers([&b"https://app\xff.com"[..]]);
        assert_eq!(policy.check(&binary), Err(NetworkRefusal::Origin));
        assert_eq!(policy.check(&UNKNOWN), Err(NetworkRefusal::Network));
        // Unrestricted: anything, including nothing known.
        assert_eq!(NetworkPolicy::new().check(&UNKNOWN), Ok(()));
        let cidrs_only = NetworkPolicy::new().with_cidrs([cidr("10.0.0.0/8")]);
        assert_eq!(cidrs_only.check(&no_origin), Ok(()));
    }

    #[test]
    fn policies_dedup_and_round_trip_through_json() {
        let policy = NetworkPolicy::new()
            .with_cidrs([cidr("10.0.0.0/8"), cidr("::ffff:10.0.0.0/104")])
            .with_origins([origin("https://a.com"), origin("HTTPS://A.COM:443")]);
        assert_eq!(policy.cidrs().len(), 1);
        assert_eq!(policy.origins().len(), 1);
        let json = serde_json::to_string(&policy).unwrap();
        assert_eq!(
            json,
            r#"{"cidrs":["10.0.0.0/8"],"origins":["https://a.com"]}"#
        );
        assert_eq!(
            serde_json::from_str::<NetworkPolicy>(&json).unwrap(),
            policy
        );
        for bad in [
            r#"{"cidrs":["10.1.0.0/8"]}"#,
            r#"{"cidrs":[1]}"#,
            r#"{"origins":["https://a.com/x"]}"#,
            r#"{"cidrs":[],"extra":1}"#,
            r#"[["10.0.0.0/8"],[]]"#,
            "[]",
            "null",
        ] {
            assert!(serde_json::from_str::<NetworkPolicy>(bad).is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::from_str::<NetworkPolicy>("{}").unwrap(),
            NetworkPolicy::new()
        );
    }

    #[test]
    fn covering_is_about_what_requests_get_through() {
        let none = NetworkPolicy::new();
        let office = NetworkPolicy::new().with_cidrs([cidr("10.0.0.0/8")]);
        let desk = NetworkPolicy::new().with_cidrs([cidr("10.1.0.0/16")]);
        let web = NetworkPolicy::new().with_origins([origin("https://*.example.com")]);
        assert!(none.covers(&office) && none.covers(&none) && none.covers(&web));
        assert!(office.covers(&desk) && office.covers(&office));
        assert!(!desk.covers(&office));
        assert!(!office.covers(&none), "lifting a restriction widens");
        assert!(!office.covers(&web), "web has no network restriction");
        let both = office
            .clone()
            .with_origins([origin("https://a.example.com")]);
        assert!(office.covers(&both) && web.covers(&both));
        assert!(!both.covers(&office));
    }
}
