//! Which Redis deployment a [`RedisStore`](super::RedisStore) talks to: one server, a Redis
//! Cluster, or a primary found through Sentinel; and the connection every one of them
//! gives the rest of the store ([`Conn`]).

use std::sync::Arc;

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use ::redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, ProtocolVersion,
    RedisFuture, Value,
};

use super::{RedisConfig, StoreError};

/// The URL schemes of a Redis Cluster: `redis+cluster://host:port,host:port/`.
pub(super) const CLUSTER_SCHEMES: [&str; 2] = ["redis+cluster", "rediss+cluster"];
/// The URL schemes of a Sentinel set-up: `redis+sentinel://host:port,host:port/<master>`.
pub(super) const SENTINEL_SCHEMES: [&str; 2] = ["redis+sentinel", "rediss+sentinel"];

/// Where the store's data lives.
#[derive(Clone)]
// One per store, made once: the size of `Client` does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Target {
    /// One server (or a proxy in front of one).
    Single(Client),
    /// A Redis Cluster, from its seed nodes.
    Cluster(Arc<ClusterSeed>),
    /// The primary that Sentinel names, looked up again on every (re)connection.
    Sentinel(Arc<SentinelSeed>),
}

/// A cluster's seed nodes and how to speak to them.
pub(super) struct ClusterSeed {
    pub(super) nodes: Vec<ConnectionInfo>,
    /// A PEM CA file's contents, for `rediss+cluster://` (feature `tls`).
    pub(super) root_cert: Option<Vec<u8>>,
}

/// The sentinels, the master's name and how to speak to the master.
pub(super) struct SentinelSeed {
    pub(super) sentinels: Vec<ConnectionInfo>,
    pub(super) master: String,
    /// Credentials and database of the master, from the first sentinel URL (the
    /// sentinels themselves are asked without them).
    pub(super) redis: ::redis::RedisConnectionInfo,
    /// TLS to the master (`rediss+sentinel://`), with the system's root certificates.
    pub(super) tls: bool,
    /// How many times the sentinels were seen to name another primary
    /// ([`watch_primary`](super::conn::watch_primary)); the change feed starts over (and
    /// drops its cache) when it moves.
    pub(super) switches: std::sync::atomic::AtomicU64,
}

impl Target {
    /// The address to show in `Debug`: no credentials.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Single(client) => client.get_connection_info().addr().to_string(),
            Self::Cluster(seed) => format!(
                "cluster {}",
                seed.nodes
                    .iter()
                    .map(|n| n.addr().to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Self::Sentinel(seed) => format!(
                "sentinel master {:?} via {}",
                seed.master,
                seed.sentinels
                    .iter()
                    .map(|n| n.addr().to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    /// Whether keys must be hash-tagged into one slot per record (Redis Cluster).
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Whether any address asks for TLS.
    pub(super) fn uses_tls(&self) -> bool {
        let tls = |info: &ConnectionInfo| matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        match self {
            Self::Single(client) => tls(client.get_connection_info()),
            Self::Cluster(seed) => seed.nodes.iter().any(tls),
            Self::Sentinel(seed) => seed.sentinels.iter().any(tls),
        }
    }
}

impl ClusterSeed {
    /// A cluster client under `config`, speaking RESP3 and passing pushes to `push` when
    /// given (the change feed's).
    pub(super) fn client(
        &self,
        config: &RedisConfig,
        push: Option<tokio::sync::mpsc::UnboundedSender<::redis::PushInfo>>,
    ) -> Result<ClusterClient, ::redis::RedisError> {
        let mut builder = ClusterClientBuilder::new(self.nodes.clone())
            .connection_timeout(config.connection_timeout)
            .response_timeout(config.response_timeout);
        if let Some(push) = push {
            builder = builder
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(push);
        }
        builder = with_cluster_root_cert(builder, self.root_cert.as_deref());
        builder.build()
    }
}

#[cfg(feature = "tls")]
fn with_cluster_root_cert(
    builder: ClusterClientBuilder,
    pem: Option<&[u8]>,
) -> ClusterClientBuilder {
    match pem {
        Some(pem) => builder.certs(::redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.to_vec()),
        }),
        None => builder,
    }
}

#[cfg(not(feature = "tls"))]
fn with_cluster_root_cert(builder: ClusterClientBuilder, _: Option<&[u8]>) -> ClusterClientBuilder {
    // `tls::check` refused a CA file on this build already.
    builder
}

impl SentinelSeed {
    /// A sentinel client for the master, speaking `protocol` to it.
    pub(super) fn client(
        &self,
        protocol: ProtocolVersion,
    ) -> Result<SentinelClient, ::redis::RedisError> {
        let mut node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(self.redis.clone().set_protocol(protocol));
        if self.tls {
            node = node.set_tls_mode(::redis::TlsMode::Secure);
        }
        SentinelClient::build(
            self.sentinels.clone(),
            self.master.clone(),
            Some(node),
            SentinelServerType::Master,
        )
    }

    /// The address the sentinels name for the master now, asking them in turn over
    /// `conns` (one kept connection per sentinel, made when first needed).
    pub(super) async fn primary_addr(
        &self,
        conns: &mut [Option<::redis::aio::MultiplexedConnection>],
        limit: std::time::Duration,
    ) -> Option<(String, u16)> {
        for (info, slot) in self.sentinels.iter().zip(conns.iter_mut()) {
            if slot.is_none() {
                let connect = async {
                    Client::open(info.clone())?
                        .get_multiplexed_async_connection()
                        .await
                };
                *slot = tokio::time::timeout(limit, connect)
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
            let Some(conn) = slot.as_mut() else {
                continue;
            };
            let ask = ::redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&self.master)
                .clone();
            match tokio::time::timeout(limit, ask.query_async::<Option<(String, u16)>>(conn)).await
            {
                Ok(Ok(Some(addr))) => return Some(addr),
                _ => *slot = None,
            }
        }
        None
    }

    /// The client of the current master, asking the sentinels now.
    pub(super) async fn master(
        &self,
        protocol: ProtocolVersion,
    ) -> Result<Client, ::redis::RedisError> {
        self.client(protocol)?.async_get_client().await
    }
}

/// Splits `scheme://[userinfo@]host:port,host:port[/path][?query]` into one URL per host,
/// each with the given scheme, the userinfo, path and query. `None` if there is no host.
fn split_hosts(rest: &str, scheme: &str) -> Option<(Vec<String>, String)> {
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(at) => (rest.get(..at)?, rest.get(at..)?),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (authority.get(..=at)?, authority.get(at.checked_add(1)?..)?),
        None => ("", authority),
    };
    let urls: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|host| format!("{scheme}://{userinfo}{host}"))
        .collect();
    if urls.is_empty() {
        return None;
    }
    Some((urls, tail.to_owned()))
}

/// What a `redis+cluster://` or `redis+sentinel://` URL names.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Parsed {
    /// Seed node URLs (`redis://` or `rediss://`).
    Cluster(Vec<String>),
    /// Sentinel URLs and the master's name.
    Sentinel(Vec<String>, String),
}

/// Reads a cluster or sentinel URL; `Ok(None)` for any other scheme. The messages never
/// repeat the URL (it may hold a password).
pub(super) fn parse(url: &str) -> Result<Option<Parsed>, StoreError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(None);
    };
    let tls_scheme = if scheme.starts_with("rediss") {
        "rediss"
    } else {
        "redis"
    };
    if CLUSTER_SCHEMES.contains(&scheme) {
        let (hosts, tail) = split_hosts(rest, tls_scheme).ok_or_else(|| {
            StoreError::InvalidUrl("a redis+cluster:// URL names no node".to_owned())
        })?;
        let path = tail.split(['?', '#']).next().unwrap_or_default();
        if !matches!(path, "" | "/" | "/0") {
            return Err(StoreError::InvalidUrl(
                "a Redis Cluster has only database 0: a redis+cluster:// URL takes no other"
                    .to_owned(),
            ));
        }
        let urls = hosts.into_iter().map(|h| format!("{h}{tail}")).collect();
        return Ok(Some(Parsed::Cluster(urls)));
    }
    if SENTINEL_SCHEMES.contains(&scheme) {
        let (hosts, tail) = split_hosts(rest, tls_scheme).ok_or_else(|| {
            StoreError::InvalidUrl("a redis+sentinel:// URL names no sentinel".to_owned())
        })?;
        let (path, query) = match tail.find(['?', '#']) {
            Some(at) => (
                tail.get(..at).unwrap_or_default(),
                tail.get(at..).unwrap_or_default(),
            ),
            None => (tail.as_str(), ""),
        };
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let master = parts.next().unwrap_or_default();
        let db = parts.next().unwrap_or_default();
        if master.is_empty() {
            return Err(StoreError::InvalidUrl(
                "a redis+sentinel:// URL names the master after the hosts: \
                 redis+sentinel://host:26379,host:26379/<master>[/<db>]"
                    .to_owned(),
            ));
        }
        let urls = hosts
            .into_iter()
            .map(|h| format!("{h}/{db}{query}"))
            .collect();
        return Ok(Some(Parsed::Sentinel(urls, master.to_owned())));
    }
    Ok(None)
}

/// The connection infos of `urls`.
pub(super) fn infos<T: IntoConnectionInfo>(
    urls: impl IntoIterator<Item = T>,
) -> Result<Vec<ConnectionInfo>, ::redis::RedisError> {
    urls.into_iter()
        .map(IntoConnectionInfo::into_connection_info)
        .collect()
}

/// The store's connection: a [`ConnectionManager`] to one server (also Sentinel's
/// master), or a [`ClusterConnection`] that routes every command to its slot's node and
/// follows `MOVED`, `ASK` and failovers.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    /// A connection of its own to one server: a change feed's, or the write connection
    /// behind Sentinel.
    Feed(::redis::aio::MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Feed(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Feed(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Feed(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_every_node() {
        assert_eq!(
            parse("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001/?protocol=resp2").unwrap(),
            Some(Parsed::Cluster(vec![
                "redis://:pw@10.0.0.1:7000/?protocol=resp2".to_owned(),
                "redis://:pw@10.0.0.2:7001/?protocol=resp2".to_owned(),
            ]))
        );
        assert_eq!(
            parse("rediss+cluster://a:1").unwrap(),
            Some(Parsed::Cluster(vec!["rediss://a:1".to_owned()]))
        );
        assert!(matches!(
            parse("redis+cluster:///"),
            Err(StoreError::InvalidUrl(m)) if m.contains("no node")
        ));
        assert!(matches!(
            parse("redis+cluster://a:1/3"),
            Err(StoreError::InvalidUrl(m)) if m.contains("database 0")
        ));
        assert_eq!(parse("redis://a:1/").unwrap(), None);
    }

    #[test]
    fn sentinel_urls_name_the_master() {
        assert_eq!(
            parse("redis+sentinel://:pw@s1:26379,s2:26379/keygate/2?protocol=resp3").unwrap(),
            Some(Parsed::Sentinel(
                vec![
                    "redis://:pw@s1:26379/2?protocol=resp3".to_owned(),
                    "redis://:pw@s2:26379/2?protocol=resp3".to_owned(),
                ],
                "keygate".to_owned()
            ))
        );
        assert_eq!(
            parse("redis+sentinel://s1:26379/mymaster").unwrap(),
            Some(Parsed::Sentinel(
                vec!["redis://s1:26379/".to_owned()],
                "mymaster".to_owned()
            ))
        );
        assert!(matches!(
            parse("redis+sentinel://s1:26379/"),
            Err(StoreError::InvalidUrl(m)) if m.contains("<master>")
        ));
    }
}
