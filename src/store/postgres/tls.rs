//! keygate's TLS rules for PostgreSQL, applied to the connect options a URL parsed into.
//!
//! Only `sslmode=disable` means cleartext on the network. The modes that may end in
//! cleartext (`prefer`, PostgreSQL's default, and `allow`) become `require` for a remote
//! host, and are refused when keygate was built without the `tls` feature; to a local host
//! (loopback address, `localhost`, Unix socket) they stay as they are, since nothing leaves
//! the machine. `require` with a CA file (`sslrootcert`) becomes `verify-ca`, as libpq does.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::StoreError;

/// Whether this build can speak TLS to PostgreSQL.
const TLS_BUILT: bool = cfg!(feature = "tls");

/// `url` parsed as sqlx does, with keygate's TLS rules applied (module docs).
pub(super) fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    // The message names the problem, never the URL (it may hold a password).
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::InvalidUrl(format!("invalid PostgreSQL URL: {e}")))?;
    let mode = options.get_ssl_mode();
    let decided = decide(mode, is_local(&options), names_root_cert(url), TLS_BUILT)?;
    Ok(options.ssl_mode(decided))
}

/// The mode to connect with, given the mode asked for (from the URL, `PGSSLMODE`, or
/// sqlx's default `prefer`), whether the server is on this machine, whether a CA file was
/// named, and whether TLS was compiled in.
fn decide(
    mode: PgSslMode,
    local: bool,
    root_cert: bool,
    tls: bool,
) -> Result<PgSslMode, StoreError> {
    let maybe_cleartext = matches!(mode, PgSslMode::Allow | PgSslMode::Prefer);
    match mode {
        PgSslMode::Disable => Ok(PgSslMode::Disable),
        // Harmless on this machine, never over the network.
        _ if maybe_cleartext && local => Ok(mode),
        _ if !tls && maybe_cleartext => Err(StoreError::TlsUnavailable(
            "sslmode=prefer (PostgreSQL's default) or allow to a remote host",
        )),
        _ if !tls => Err(StoreError::TlsUnavailable(
            "sslmode=require, verify-ca or verify-full",
        )),
        PgSslMode::Allow | PgSslMode::Prefer | PgSslMode::Require if root_cert => {
            Ok(PgSslMode::VerifyCa)
        }
        PgSslMode::Allow | PgSslMode::Prefer => Ok(PgSslMode::Require),
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull => Ok(mode),
    }
}

/// Whether the server is on this machine: a Unix socket, a loopback address, `localhost`.
fn is_local(options: &PgConnectOptions) -> bool {
    if options.get_socket().is_some() {
        return true;
    }
    let host = options.get_host();
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.starts_with('/')
        || bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A CA file the options name (`sslrootcert`, or `PGSSLROOTCERT`) that cannot be read is
/// the operator's configuration, said with the file's name before any connection. sqlx
/// would read it only while connecting, and report an I/O error that names no file
/// ("No such file or directory"), indistinguishable from an unreachable server.
pub(super) fn check_root_cert(options: &PgConnectOptions) -> Result<(), StoreError> {
    use sqlx::ConnectOptions;

    if matches!(options.get_ssl_mode(), PgSslMode::Disable) {
        return Ok(());
    }
    // sqlx has no getter for the CA; its URL form writes a file as `file: <path>`.
    let url = options.to_url_lossy();
    let named = url.query_pairs().find(|(name, _)| name == "sslrootcert");
    let Some(path) = named.as_ref().and_then(|(_, v)| v.strip_prefix("file: ")) else {
        return Ok(()); // none, or an inline PEM (`ssl_root_cert_from_pem`)
    };
    std::fs::File::open(path).map(drop).map_err(|e| {
        StoreError::InvalidUrl(format!("cannot read the PostgreSQL CA file {path}: {e}"))
    })
}

/// Whether a CA file (or inline PEM) was named: `sslrootcert` (or sqlx's spellings
/// `ssl-root-cert`, `ssl-ca`) in the URL's query, or `PGSSLROOTCERT`. sqlx has no getter
/// for it.
fn names_root_cert(url: &str) -> bool {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query.split('&').any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        matches!(name, "sslrootcert" | "ssl-root-cert" | "ssl-ca")
    }) || std::env::var_os("PGSSLROOTCERT").is_some_and(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [PgSslMode; 6] = [
        PgSslMode::Disable,
        PgSslMode::Allow,
        PgSslMode::Prefer,
        PgSslMode::Require,
        PgSslMode::VerifyCa,
        PgSslMode::VerifyFull,
    ];

    fn options(url: &str) -> PgConnectOptions {
        PgConnectOptions::from_str(url).unwrap()
    }

    /// `PgSslMode` has no `PartialEq`.
    #[track_caller]
    fn same(actual: PgSslMode, expected: PgSslMode) {
        assert_eq!(format!("{actual:?}"), format!("{expected:?}"));
    }

    #[test]
    fn without_tls_only_disable_or_a_local_server_connects() {
        for mode in ALL {
            for root_cert in [false, true] {
                let remote = decide(mode, false, root_cert, false);
                let local = decide(mode, true, root_cert, false);
                match mode {
                    PgSslMode::Disable => {
                        same(remote.unwrap(), PgSslMode::Disable);
                        same(local.unwrap(), PgSslMode::Disable);
                    }
                    PgSslMode::Allow | PgSslMode::Prefer => {
                        assert!(matches!(remote, Err(StoreError::TlsUnavailable(_))));
                        // sqlx without TLS connects in cleartext: on this machine only.
                        same(local.unwrap(), mode);
                    }
                    PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull => {
                        assert!(matches!(remote, Err(StoreError::TlsUnavailable(_))));
                        assert!(matches!(local, Err(StoreError::TlsUnavailable(_))));
                    }
                }
            }
        }
    }

    #[test]
    fn with_tls_no_remote_mode_can_end_in_cleartext() {
        for mode in ALL {
            for root_cert in [false, true] {
                let decided = decide(mode, false, root_cert, true).unwrap();
                let expected = match mode {
                    PgSslMode::Disable => PgSslMode::Disable,
                    PgSslMode::VerifyFull => PgSslMode::VerifyFull,
                    PgSslMode::VerifyCa => PgSslMode::VerifyCa,
                    _ if root_cert => PgSslMode::VerifyCa,
                    _ => PgSslMode::Require,
                };
                assert_eq!(
                    format!("{decided:?}"),
                    format!("{expected:?}"),
                    "{mode:?}, root cert {root_cert}"
                );
            }
        }
        // Locally, `prefer` stays (TLS when the server offers it).
        same(
            decide(PgSslMode::Prefer, true, false, true).unwrap(),
            PgSslMode::Prefer,
        );
        same(
            decide(PgSslMode::VerifyFull, true, true, true).unwrap(),
            PgSslMode::VerifyFull,
        );
    }

    #[test]
    fn local_servers_are_recognised() {
        for url in [
            "postgres://u@127.0.0.1/db",
            "postgres://u@127.8.9.10:5433/db",
            "postgres://u@localhost/db",
            "postgres://u@LOCALHOST/db",
            "postgres://u@[::1]:5432/db",
            "postgres://u@%2Frun%2Fpostgresql/db",
            "postgres:///db?host=/run/postgresql",
        ] {
            assert!(is_local(&options(url)), "{url}");
        }
        for url in [
            "postgres://u@db.internal/db",
            "postgres://u@10.0.0.5/db",
            "postgres://u@[2001:db8::1]/db",
            "postgres://u@localhost.example.com/db",
        ] {
            assert!(!is_local(&options(url)), "{url}");
        }
    }

    #[test]
    fn a_root_cert_in_the_url_is_seen() {
        for url in [
            "postgres://u@db/x?sslmode=require&sslrootcert=/etc/ca.pem",
            "postgres://u@db/x?ssl-root-cert=/etc/ca.pem",
            "postgres://u@db/x?ssl-ca=/etc/ca.pem&sslmode=require",
        ] {
            assert!(names_root_cert(url), "{url}");
        }
        if std::env::var_os("PGSSLROOTCERT").is_none() {
            for url in [
                "postgres://u@db/x?sslmode=require",
                "postgres://u@db/x",
                "postgres://u@db/x?application_name=sslrootcert#sslrootcert",
            ] {
                assert!(!names_root_cert(url), "{url}");
            }
        }
    }

    /// A CA file that is not there used to surface at connect time as an I/O error that
    /// named no file (the CLI's exit 3, "store unavailable", instead of 2).
    #[test]
    fn an_unreadable_root_cert_is_named_before_connecting() {
        let missing = "/nonexistent-keygate-test/ca.pem";
        let url =
            format!("postgres://app@db.internal/keys?sslmode=verify-full&sslrootcert={missing}");
        match check_root_cert(&options(&url)) {
            Err(StoreError::InvalidUrl(why)) => assert!(why.contains(missing), "{why}"),
            other => panic!("{other:?}"),
        }
        // A readable file, none, or no TLS at all: nothing to say.
        let here = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        for url in [
            format!("postgres://app@db.internal/keys?sslmode=verify-full&sslrootcert={here}"),
            "postgres://app@db.internal/keys?sslmode=verify-full".to_owned(),
            format!("postgres://app@db.internal/keys?sslmode=disable&sslrootcert={missing}"),
        ] {
            assert!(check_root_cert(&options(&url)).is_ok(), "{url}");
        }
    }

    #[test]
    fn connect_options_rewrites_the_mode_and_keeps_the_rest() {
        let applied = connect_options(
            "postgres://app@db.internal:6543/keys?sslmode=disable&application_name=a",
        )
        .unwrap();
        same(applied.get_ssl_mode(), PgSslMode::Disable);
        assert_eq!(applied.get_port(), 6543);
        assert_eq!(applied.get_application_name(), Some("a"));

        let remote = connect_options("postgres://app@db.internal/keys?sslmode=prefer");
        if TLS_BUILT {
            same(remote.unwrap().get_ssl_mode(), PgSslMode::Require);
        } else {
            assert!(matches!(remote, Err(StoreError::TlsUnavailable(_))));
        }
        let full = connect_options(
            "postgres://app@db.internal/keys?sslmode=verify-full&sslrootcert=/ca.pem",
        );
        if TLS_BUILT {
            same(full.unwrap().get_ssl_mode(), PgSslMode::VerifyFull);
        } else {
            assert!(matches!(full, Err(StoreError::TlsUnavailable(_))));
        }
    }
}
