//! keygate's TLS rules for Redis: `rediss://` is TLS with the server's certificate
//! checked (against the system's roots, or the CA file of
//! [`RedisConfig::tls_root_cert`] alone), `#insecure` is refused, a CA file for a
//! cleartext URL is refused, and a build without the `tls` feature refuses whatever asks
//! for TLS instead of connecting without it.

use std::path::{Path, PathBuf};

use ::redis::{Client, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError};

use super::conn::backend;
use super::{RedisConfig, StoreError};

/// Whether this build can speak TLS to Redis.
const TLS_BUILT: bool = cfg!(feature = "tls");

/// The client for `url` under `config`, with keygate's TLS rules applied.
pub(super) fn client(
    url: impl IntoConnectionInfo,
    config: &RedisConfig,
) -> Result<Client, StoreError> {
    let info = url.into_connection_info().map_err(url_error)?;
    let (tls, insecure) = match info.addr() {
        ConnectionAddr::TcpTls { insecure, .. } => (true, *insecure),
        _ => (false, false),
    };
    check(tls, insecure, config.tls_root_cert.is_some(), TLS_BUILT)?;
    match &config.tls_root_cert {
        Some(path) => with_root_cert(info, path),
        None => Client::open(info).map_err(url_error),
    }
}

/// What the URL's scheme, its `#insecure` fragment and a CA file ask for, against what was
/// built.
fn check(tls: bool, insecure: bool, root_cert: bool, built: bool) -> Result<(), StoreError> {
    if (tls || root_cert) && !built {
        return Err(StoreError::TlsUnavailable(if tls {
            "a rediss:// URL"
        } else {
            "a Redis CA file (sslrootcert)"
        }));
    }
    if insecure {
        return Err(StoreError::InvalidUrl(
            "rediss://…#insecure turns off the server certificate check, which keygate \
             refuses: name the server's CA instead (sslrootcert in the URL, or \
             RedisConfig::tls_root_cert)"
                .to_owned(),
        ));
    }
    if root_cert && !tls {
        return Err(StoreError::InvalidUrl(
            "a Redis CA file was given for a URL without TLS: use rediss://".to_owned(),
        ));
    }
    Ok(())
}

/// A [`RedisError`] from reading a URL as a [`StoreError`]. The driver's messages name the
/// problem, never the URL (which may hold a password). A build without TLS cannot parse
/// `rediss://` at all; that is [`StoreError::TlsUnavailable`].
pub(super) fn url_error(error: RedisError) -> StoreError {
    if error.kind() != ErrorKind::InvalidClientConfig {
        return backend(error);
    }
    if !TLS_BUILT && error.to_string().contains("TLS") {
        return StoreError::TlsUnavailable("a rediss:// URL");
    }
    StoreError::InvalidUrl(format!("invalid Redis URL: {error}"))
}

/// The CA file named by a store URL's `sslrootcert` query parameter, as
/// [`open_store`](crate::open_store) reads it (the `redis` driver ignores the parameter).
pub(crate) fn root_cert_in_url(url: &str) -> Option<PathBuf> {
    // A cluster or Sentinel URL: its query is on every node's URL.
    let first = match super::topology::parse(url) {
        Ok(Some(super::topology::Parsed::Cluster(nodes))) => nodes.into_iter().next(),
        Ok(Some(super::topology::Parsed::Sentinel(nodes, _))) => nodes.into_iter().next(),
        _ => None,
    };
    let parsed = ::redis::parse_redis_url(first.as_deref().unwrap_or(url))?;
    parsed
        .query_pairs()
        .find(|(name, _)| name == "sslrootcert")
        .map(|(_, value)| PathBuf::from(value.into_owned()))
}

#[cfg(feature = "tls")]
fn with_root_cert(info: ::redis::ConnectionInfo, path: &Path) -> Result<Client, StoreError> {
    let pem = read_root_cert(path)?;
    let certificates = ::redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    };
    Client::build_with_tls(info, certificates).map_err(url_error)
}

#[cfg(not(feature = "tls"))]
fn with_root_cert(_: ::redis::ConnectionInfo, _: &Path) -> Result<Client, StoreError> {
    // `check` refused a CA file already.
    Err(StoreError::TlsUnavailable("a Redis CA file (sslrootcert)"))
}

/// Checks keygate's TLS rules for a cluster's or Sentinel set-up's `urls` under `config`
/// (`cluster`: whether the CA file can be applied). Returns the CA file's contents.
pub(super) fn check_many(
    infos: &[::redis::ConnectionInfo],
    config: &RedisConfig,
    ca_supported: bool,
) -> Result<Option<Vec<u8>>, StoreError> {
    let tls = infos
        .iter()
        .any(|i| matches!(i.addr(), ConnectionAddr::TcpTls { .. }));
    let insecure = infos
        .iter()
        .any(|i| matches!(i.addr(), ConnectionAddr::TcpTls { insecure: true, .. }));
    check(tls, insecure, config.tls_root_cert.is_some(), TLS_BUILT)?;
    let Some(path) = &config.tls_root_cert else {
        return Ok(None);
    };
    if !ca_supported {
        return Err(StoreError::InvalidUrl(
            "a Redis CA file is not supported with Sentinel: the primary's certificate is \
             checked against the system's root certificates"
                .to_owned(),
        ));
    }
    read_root_cert(path).map(Some)
}

#[cfg(feature = "tls")]
fn read_root_cert(path: &Path) -> Result<Vec<u8>, StoreError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};

    let pem = std::fs::read(path).map_err(|e| {
        StoreError::InvalidUrl(format!(
            "cannot read the Redis CA file {}: {e}",
            path.display()
        ))
    })?;
    let mut certificates = CertificateDer::pem_slice_iter(&pem);
    let valid = certificates.all(|c| c.is_ok());
    if !valid || CertificateDer::pem_slice_iter(&pem).next().is_none() {
        return Err(StoreError::InvalidUrl(format!(
            "the Redis CA file {} holds no PEM certificate, or a broken one",
            path.display()
        )));
    }
    Ok(pem)
}

#[cfg(not(feature = "tls"))]
fn read_root_cert(_: &Path) -> Result<Vec<u8>, StoreError> {
    Err(StoreError::TlsUnavailable("a Redis CA file (sslrootcert)"))
}

/// Before the first TLS connection: the `redis` driver builds its rustls configuration
/// from the process-wide `CryptoProvider`, and rustls panics when none is installed and
/// more than one could be (a host whose tree also enables aws-lc-rs). So when none is
/// installed, keygate installs rustls's ring provider, the one keygate's `tls` feature
/// compiles in. A provider the application installed first is used as it is.
#[cfg(feature = "tls")]
pub(super) fn install_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An error means another thread installed one meanwhile: one is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(not(feature = "tls"))]
pub(super) fn install_provider() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_asked_without_tls_built_is_refused_never_cleartext() {
        for (tls, insecure, root_cert) in [
            (true, false, false),
            (true, true, false),
            (true, false, true),
            (false, false, true),
        ] {
            assert!(
                matches!(
                    check(tls, insecure, root_cert, false),
                    Err(StoreError::TlsUnavailable(_))
                ),
                "{tls} {insecure} {root_cert}"
            );
        }
        assert!(check(false, false, false, false).is_ok());
    }

    #[test]
    fn insecure_and_a_ca_for_cleartext_are_refused() {
        assert!(matches!(
            check(true, true, false, true),
            Err(StoreError::InvalidUrl(m)) if m.contains("#insecure")
        ));
        assert!(matches!(
            check(true, true, true, true),
            Err(StoreError::InvalidUrl(_))
        ));
        assert!(matches!(
            check(false, false, true, true),
            Err(StoreError::InvalidUrl(m)) if m.contains("rediss://")
        ));
        assert!(check(true, false, false, true).is_ok());
        assert!(check(true, false, true, true).is_ok());
        assert!(check(false, false, false, true).is_ok());
    }

    #[test]
    fn the_url_names_its_ca_file() {
        assert_eq!(
            root_cert_in_url("rediss://:pw@cache.internal:6380/0?sslrootcert=%2Fetc%2Fca%20x.pem"),
            Some(PathBuf::from("/etc/ca x.pem"))
        );
        assert_eq!(
            root_cert_in_url("rediss://cache.internal/?protocol=resp3&sslrootcert=ca.pem"),
            Some(PathBuf::from("ca.pem"))
        );
        assert_eq!(root_cert_in_url("rediss://cache.internal/"), None);
        assert_eq!(root_cert_in_url("not a url"), None);
    }

    #[test]
    fn urls_are_checked_before_any_connection() {
        let config = RedisConfig::new();
        let insecure = client("rediss://127.0.0.1:1/#insecure", &config);
        let plain_with_ca = client(
            "redis://127.0.0.1:1/",
            &RedisConfig::new().tls_root_cert("/nonexistent/ca.pem"),
        );
        let tls = client("rediss://127.0.0.1:1/", &config);
        if TLS_BUILT {
            assert!(matches!(insecure, Err(StoreError::InvalidUrl(_))));
            assert!(matches!(plain_with_ca, Err(StoreError::InvalidUrl(_))));
            assert!(tls.is_ok());
            let missing = client(
                "rediss://127.0.0.1:1/",
                &RedisConfig::new().tls_root_cert("/nonexistent/ca.pem"),
            );
            assert!(
                matches!(missing, Err(StoreError::InvalidUrl(m)) if m.contains("/nonexistent/ca.pem"))
            );
        } else {
            assert!(matches!(insecure, Err(StoreError::TlsUnavailable(_))));
            assert!(matches!(plain_with_ca, Err(StoreError::TlsUnavailable(_))));
            assert!(matches!(tls, Err(StoreError::TlsUnavailable(_))));
        }
        assert!(client("redis://127.0.0.1:1/", &config).is_ok());
    }

    #[cfg(feature = "tls")]
    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let dir = std::env::temp_dir().join(format!("keygate-ca-{}", crate::KeyId::random()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, b"not a certificate\n").unwrap();
        let broken = dir.join("broken.pem");
        std::fs::write(
            &broken,
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for path in [&empty, &broken] {
            let opened = client(
                "rediss://127.0.0.1:1/",
                &RedisConfig::new().tls_root_cert(path),
            );
            assert!(
                matches!(opened, Err(StoreError::InvalidUrl(ref m)) if m.contains("no PEM certificate")),
                "{opened:?}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
