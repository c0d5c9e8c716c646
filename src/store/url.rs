//! Opening a store from a URL, for the CLI, examples and configuration files.

use std::sync::Arc;

use super::{KeyStore, StoreError};
use crate::limits::Limiter;

/// A store opened from a URL, as a key store and as a limiter (the same instance).
type Opened = (Arc<dyn KeyStore>, Arc<dyn Limiter>);

/// Opens the store a URL names, with the default options of each:
///
/// | URL | store | feature |
/// |---|---|---|
/// | `sqlite://path`, `sqlite:path`, `sqlite::memory:`, a plain path | `SqliteStore` | `sqlite` |
/// | `postgres://…`, `postgresql://…` | `PostgresStore` | `postgres` |
/// | `redis://…`, `rediss://…`, `redis+unix://…` | `RedisStore` | `redis` |
/// | `redis+cluster://host:port,host:port/`, `redis+sentinel://host:port,…/<master>` (and `rediss+…`) | `RedisStore` ([`connect_url`](crate::RedisStore::connect_url)) | `redis` |
///
/// Each store opens with its `connect(url)` and default config (`SqliteConfig`,
/// `PostgresConfig`, `RedisConfig`); SQL stores apply their migrations on open. For other
/// settings call that store's `connect_with(url, config)` instead.
///
/// TLS (feature `tls`) is asked for in the URL: PostgreSQL's `sslmode` and `sslrootcert`
/// (see [`PostgresStore`](crate::PostgresStore#tls): only `sslmode=disable` is cleartext
/// over the network), Redis's `rediss://` scheme with an optional `sslrootcert=/path/ca.pem`
/// parameter (see [`RedisStore`](crate::RedisStore#tls)). A URL that asks for TLS on a
/// build without it is [`StoreError::TlsUnavailable`], never a cleartext connection.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let opened = keygate::open_store("mysql://localhost/keys").await;
/// assert!(matches!(opened, Err(keygate::StoreError::InvalidUrl(_))));
/// # }
/// ```
///
/// # Errors
///
/// [`StoreError::InvalidUrl`] for an unknown scheme or one whose feature is off, or a URL
/// the store cannot read; [`StoreError::TlsUnavailable`] for a URL that asks for TLS on a
/// build without the `tls` feature; the store's own error when it cannot be opened
/// (unreachable, refused, a failed migration, a failed TLS handshake).
pub async fn open_store(url: &str) -> Result<Arc<dyn KeyStore>, StoreError> {
    open_store_with_limiter(url).await.map(|(store, _)| store)
}

/// Opens the store a URL names, as [`open_store`] does, and also returns it as a
/// [`Limiter`]: one instance (one pool or connection) serving both, so that rate-limit
/// and credit state can live beside the keys (every built-in store is a limiter). Give the
/// limiter to [`KeygateBuilder::limiter`](crate::KeygateBuilder::limiter), directly
/// (exact across servers) or inside a [`LocalFirst`](crate::limits::LocalFirst).
///
/// # Errors
///
/// As [`open_store`].
pub async fn open_store_with_limiter(url: &str) -> Result<Opened, StoreError> {
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("postgres" | "postgresql") => postgres(url).await,
        Some(
            "redis" | "rediss" | "redis+unix" | "redis+cluster" | "rediss+cluster"
            | "redis+sentinel" | "rediss+sentinel",
        ) => redis(url).await,
        Some("sqlite") => sqlite(url).await,
        // A bare path (`keys.db`, `./data/keys.db`, `/var/lib/app/keys.db`).
        None => sqlite(url).await,
        Some(s) if s.len() == 1 => sqlite(url).await, // a Windows drive letter
        Some(other) => Err(StoreError::InvalidUrl(format!(
            "unsupported store URL scheme {other:?}: use sqlite://, postgres:// or redis://"
        ))),
    }
}

#[cfg(feature = "sqlite")]
async fn sqlite(url: &str) -> Result<Opened, StoreError> {
    let store = Arc::new(crate::SqliteStore::connect(url).await?);
    Ok((store.clone(), store))
}

#[cfg(not(feature = "sqlite"))]
async fn sqlite(_: &str) -> Result<Opened, StoreError> {
    Err(disabled("sqlite"))
}

#[cfg(feature = "postgres")]
async fn postgres(url: &str) -> Result<Opened, StoreError> {
    let store = Arc::new(crate::PostgresStore::connect(url).await?);
    Ok((store.clone(), store))
}

#[cfg(not(feature = "postgres"))]
async fn postgres(_: &str) -> Result<Opened, StoreError> {
    Err(disabled("postgres"))
}

#[cfg(feature = "redis")]
async fn redis(url: &str) -> Result<Opened, StoreError> {
    let mut config = crate::RedisConfig::new();
    config.tls_root_cert = super::redis::root_cert_in_url(url);
    let store = Arc::new(crate::RedisStore::connect_url(url, config).await?);
    Ok((store.clone(), store))
}

#[cfg(not(feature = "redis"))]
async fn redis(_: &str) -> Result<Opened, StoreError> {
    Err(disabled("redis"))
}

#[allow(dead_code)] // unused when every store feature is on
fn disabled(feature: &str) -> StoreError {
    StoreError::InvalidUrl(format!(
        "this build of keygate has no {feature} store: enable the `{feature}` feature"
    ))
}

/// A build without `tls`: every URL that asks for TLS is a configuration error before any
/// connection (the addresses below are closed ports, so a connection attempt would say
/// something else). CI runs these with `--features postgres,redis` (see `.ci/run`).
#[cfg(all(test, not(feature = "tls")))]
mod tests {
    use super::*;

    #[allow(dead_code)] // unused when no store feature is on
    async fn assert_tls_unavailable(url: &str) {
        match open_store(url).await {
            Err(StoreError::TlsUnavailable(what)) => {
                assert!(!what.contains("127.0.0.1"), "echoes the URL: {what}");
            }
            Err(other) => panic!("{url}: {other:?}"),
            Ok(_) => panic!("{url}: opened"),
        }
    }

    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn postgres_urls_asking_for_tls_are_refused_without_it() {
        for url in [
            "postgres://u:pw@db.example:1/x",
            "postgres://u:pw@db.example:1/x?sslmode=prefer",
            "postgres://u:pw@db.example:1/x?sslmode=allow",
            "postgres://u:pw@127.0.0.1:1/x?sslmode=require",
            "postgres://u:pw@127.0.0.1:1/x?sslmode=verify-ca&sslrootcert=/ca.pem",
            "postgres://u:pw@localhost:1/x?sslmode=verify-full",
        ] {
            assert_tls_unavailable(url).await;
        }
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn redis_urls_asking_for_tls_are_refused_without_it() {
        for url in [
            "rediss://:pw@127.0.0.1:1/",
            "rediss://:pw@127.0.0.1:1/#insecure",
            "rediss://:pw@127.0.0.1:1/?sslrootcert=/ca.pem",
            "redis://:pw@127.0.0.1:1/?sslrootcert=/ca.pem",
        ] {
            assert_tls_unavailable(url).await;
        }
        let direct = crate::RedisStore::connect("rediss://127.0.0.1:1/").await;
        assert!(matches!(direct, Err(StoreError::TlsUnavailable(_))));
    }
}
