//! Usage control on a key. Network restrictions: [`NetworkPolicy`] (allowed client
//! networks and browser origins, with the rules for IPv4-mapped addresses and what an
//! origin restriction is worth), checked on every verify against the request's
//! [`RequestContext`]; the client address behind proxies is
//! [`TrustedProxies`](crate::http::TrustedProxies)' business.

mod network;

pub(crate) use network::UNKNOWN as UNKNOWN_CONTEXT;
pub use network::{
    AllowedOrigin, Cidr, NetworkError, NetworkPolicy, NetworkRefusal, RequestContext,
    MAX_ALLOWED_CIDRS, MAX_ALLOWED_ORIGINS, MAX_ORIGIN_LEN,
};
