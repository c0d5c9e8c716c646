//! Usage control on a key. This part: network restrictions ([`NetworkPolicy`]: allowed
//! client networks and browser origins), checked on every verify against the request's
//! [`RequestContext`].

mod network;

pub(crate) use network::UNKNOWN as UNKNOWN_CONTEXT;
pub use network::{
    AllowedOrigin, Cidr, NetworkError, NetworkPolicy, NetworkRefusal, RequestContext,
    MAX_ALLOWED_CIDRS, MAX_ALLOWED_ORIGINS, MAX_ORIGIN_LEN,
};
