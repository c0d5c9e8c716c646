//! `keygate serve`'s settings: a TOML file, the environment, and the command line, in
//! rising precedence (a flag beats the environment, which beats the file, which beats the
//! default). Unknown keys in the file are refused, and so are secrets: the file names the
//! pepper's and JWT secret's *files*, never their values.
//!
//! | file key | environment | default |
//! |---|---|---|
//! | `addr` | `KEYGATE_ADDR` | `127.0.0.1:3000` |
//! | `db` | `KEYGATE_DB` (`--db`) | `sqlite://keygate.db` |
//! | `prefix` | `KEYGATE_PREFIX` (`--prefix`) | `key` |
//! | `realm` | `KEYGATE_REALM` | `keygate` |
//! | `pepper_file` | `KEYGATE_PEPPER_FILE`, or the value in `KEYGATE_PEPPER` | `<database>.pepper` for a SQLite file |
//! | `pepper_version` | `KEYGATE_PEPPER_VERSION` | `1` |
//! | `jwt_secret_file` | `KEYGATE_JWT_SECRET_FILE`, or the value in `KEYGATE_JWT_SECRET` | none (no JWT keys) |
//! | `log` | `KEYGATE_LOG`, then `RUST_LOG` | `info,keygate=debug` (refusal reasons, rate-limited); add `access=debug` for a line per `/auth` decision |
//! | `log_format` | `KEYGATE_LOG_FORMAT` | `json`, or `text` when stderr is a terminal |
//! | `bootstrap` | `KEYGATE_BOOTSTRAP` | `true` |
//! | `bootstrap_owner` | `KEYGATE_BOOTSTRAP_OWNER` | `admin` |
//! | `cache_ttl_secs` | `KEYGATE_CACHE_TTL_SECS` | `5` |
//! | `store_timeout_ms` | `KEYGATE_STORE_TIMEOUT_MS` | `2000` |
//! | `limits` | `KEYGATE_LIMITS` | `store`: rate limits and credits exact in the `db` store, shared by every server on it and kept across restarts (`local-first`: rate limits decided in this process and synced to the store in the background, credits exact in the store; `memory`: both in this process only) |
//! | `limits_sync_ms` | `KEYGATE_LIMITS_SYNC_MS` | `100`: how often `local-first` syncs |
//! | `original_uri_header` | `KEYGATE_ORIGINAL_URI_HEADER` | `X-Original-URI` |
//! | `original_method_header` | `KEYGATE_ORIGINAL_METHOD_HEADER` | `X-Original-Method` |
//! | `trusted_proxies` | `KEYGATE_TRUSTED_PROXIES` (comma-separated) | `["127.0.0.0/8", "::1/128"]`: loopback |
//! | `proxy_header` | `KEYGATE_PROXY_HEADER` | `x-forwarded-for` (or `forwarded`, RFC 7239) |
//! | `github_keys_file` | `KEYGATE_GITHUB_KEYS_FILE` | none: no `/leaks/github` (GitHub's secret-scanning public keys, saved from `https://api.github.com/meta/public_keys/secret_scanning`) |
//! | `[users.<id>]` | (file only) | none: no user directory |
//!
//! The file is named by `--config` or `KEYGATE_CONFIG`.
//!
//! `limits`: the default, `store`, costs one store round trip (on SQLite, a write) per
//! request of a key that has limits or credits, and is exact however many servers share
//! the store; a restart hands no key a fresh credit count or burst. `local-first` saves the
//! round trip for rate limits (across N servers a limit may be exceeded by up to
//! `(N − 1)·(burst + 2·rate·(limits_sync_ms + store latency))` units, see
//! `keygate::limits::LocalFirst`). `memory` is exact for one server only, and its state
//! (credits included) is lost on restart. While the store is down, a limited request is
//! 503 under `store` (fail closed), where `memory` would still decide it.
//!
//! `trusted_proxies` are the CIDRs of the reverse proxies whose `proxy_header` keygate
//! believes: `/auth` checks keys with allowed networks against the client address they
//! forward, and refuses them when the caller is not one of these proxies. Loopback is
//! trusted by default because `/auth` is meant to sit behind a proxy on the same host (as
//! in the shipped nginx and Caddy snippets), and the default `addr` only takes local
//! connections; the price is that any local process can claim any client address. List
//! your proxies' addresses when they run elsewhere, or set `trusted_proxies = []`
//! (`KEYGATE_TRUSTED_PROXIES=""`) to trust none (every network-restricted key is then
//! refused by `/auth`). The admin API reads the same setting: a peer that is not a trusted
//! proxy is itself the client there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keygate::http::ProxyHeader;
use keygate::limits::Cidr;
use serde::Deserialize;

/// Longest configuration file read (64 KiB): a path naming something else is not read whole.
const MAX_FILE_LEN: u64 = 64 * 1024;

/// What the configuration file may hold. Every key is optional; an unknown key is an error.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    addr: Option<String>,
    db: Option<String>,
    prefix: Option<String>,
    realm: Option<String>,
    pepper_file: Option<PathBuf>,
    pepper_version: Option<u32>,
    jwt_secret_file: Option<PathBuf>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    bootstrap: Option<bool>,
    bootstrap_owner: Option<String>,
    cache_ttl_secs: Option<u64>,
    store_timeout_ms: Option<u64>,
    limits: Option<String>,
    limits_sync_ms: Option<u64>,
    original_uri_header: Option<String>,
    original_method_header: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    proxy_header: Option<String>,
    github_keys_file: Option<PathBuf>,
    users: Option<BTreeMap<String, User>>,
}

/// One user of the static directory (`[users.<id>]` in the file).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The user's permissions; `"*"` stands for every permission.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Whether the user's keys work (default `true`).
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (`tracing-subscriber`'s JSON format).
    Json,
    /// Human-readable lines.
    Text,
}

impl LogFormat {
    fn parse(name: &str, value: &str) -> Result<Self, ConfigError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            _ => Err(ConfigError::invalid(name, "expected json or text")),
        }
    }
}

/// Where rate-limit and credit state lives (`limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitsMode {
    /// In this process (`MemoryLimiter`): exact for one server, lost on restart.
    Memory,
    /// In the `db` store (the default): exact across every server sharing it, kept across
    /// restarts.
    Store,
    /// `LocalFirst` over the `db` store, syncing every `sync`.
    LocalFirst {
        /// The sync interval.
        sync: Duration,
    },
}

/// Where the pepper comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PepperSource {
    /// `KEYGATE_PEPPER` or `KEYGATE_PEPPER_FILE`: read by `Pepper::from_default_env`, as
    /// the CLI and the example servers read it.
    Env,
    /// The file's `pepper_file`, under `version`.
    File {
        /// The pepper file.
        path: PathBuf,
        /// The pepper version.
        version: u32,
    },
    /// Nothing configured: a SQLite file database keeps its pepper beside it (created on the
    /// first start, as the example servers do); other stores refuse to start.
    BesideDatabase {
        /// The pepper version.
        version: u32,
    },
}

/// Where the JWT secret comes from (JWT keys are off without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtSource {
    /// No JWT keys.
    None,
    /// The value of `KEYGATE_JWT_SECRET`.
    Env,
    /// A file (`KEYGATE_JWT_SECRET_FILE` or the file's `jwt_secret_file`).
    File(PathBuf),
}

/// The resolved settings of `keygate serve` (see the [module docs](self) for where each
/// comes from). `Debug` shows the store URL with its password and query masked.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Listen address.
    pub addr: String,
    /// Store URL.
    pub db: String,
    /// Prefix of opaque keys.
    pub prefix: String,
    /// The realm of `WWW-Authenticate` challenges.
    pub realm: String,
    /// The pepper's source.
    pub pepper: PepperSource,
    /// The JWT secret's source.
    pub jwt_secret: JwtSource,
    /// The log filter (`tracing-subscriber` `EnvFilter` syntax).
    pub log: String,
    /// The log format.
    pub log_format: LogFormat,
    /// Whether to mint and print an admin key on the first start against an empty store.
    pub bootstrap: bool,
    /// The owner of that key.
    pub bootstrap_owner: String,
    /// How long a record is served from the cache (the revocation bound on this node).
    pub cache_ttl: Duration,
    /// How long a store call may take before the request is answered 503.
    pub store_timeout: Duration,
    /// Where rate-limit and credit state lives.
    pub limits: LimitsMode,
    /// The header carrying the original request's URI (logged; nginx sets it).
    pub original_uri_header: String,
    /// The header carrying the original request's method (logged; nginx sets it).
    pub original_method_header: String,
    /// The reverse proxies whose forwarding header is believed (loopback by default).
    pub trusted_proxies: Vec<Cidr>,
    /// The header those proxies record the client in.
    pub proxy_header: ProxyHeader,
    /// GitHub's secret-scanning public keys (JSON, as GitHub publishes them); `None`: no
    /// leak-report endpoint.
    pub github_keys_file: Option<PathBuf>,
    /// The static user directory; `None`: no directory.
    pub users: Option<BTreeMap<String, User>>,
}

// A store URL can carry a password (`postgres://user:secret@…`): never in a Debug print.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("db", &crate::redact_url(&self.db))
            .field("prefix", &self.prefix)
            .field("realm", &self.realm)
            .field("pepper", &self.pepper)
            .field("jwt_secret", &self.jwt_secret)
            .field("log", &self.log)
            .field("log_format", &self.log_format)
            .field("bootstrap", &self.bootstrap)
            .field("bootstrap_owner", &self.bootstrap_owner)
            .field("cache_ttl", &self.cache_ttl)
            .field("store_timeout", &self.store_timeout)
            .field("limits", &self.limits)
            .field("original_uri_header", &self.original_uri_header)
            .field("original_method_header", &self.original_method_header)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("proxy_header", &self.proxy_header)
            .field("github_keys_file", &self.github_keys_file)
            .field("users", &self.users)
            .finish()
    }
}

impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overrides")
            .field("db", &self.db.as_deref().map(crate::redact_url))
            .field("prefix", &self.prefix)
            .field("config", &self.config)
            .finish()
    }
}

/// Values from the command line (`--db`, `--prefix`, which clap also fills from the
/// environment), and the configuration file's path. `Debug` masks the store URL's password.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct Overrides {
    /// `--db`.
    pub db: Option<String>,
    /// `--prefix`.
    pub prefix: Option<String>,
    /// `--config` (else `KEYGATE_CONFIG`).
    pub config: Option<PathBuf>,
}

impl Overrides {
    /// Overrides for these flags.
    pub fn new(db: Option<String>, prefix: Option<String>, config: Option<PathBuf>) -> Self {
        Self { db, prefix, config }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is longer than 64 KiB.
    #[error("the configuration file {} is longer than 64 KiB", path.display())]
    TooLong {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid TOML, or holds an unknown key or a value of the wrong type.
    #[error("the configuration file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the key and line; values are not secrets here).
        message: String,
    },
    /// A setting has a value that cannot be used.
    #[error("{name}: {message}")]
    Invalid {
        /// The variable or key.
        name: String,
        /// Why.
        message: String,
    },
}

impl ConfigError {
    fn invalid(name: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            name: name.to_owned(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Loads the settings: the file named by `overrides.config` or `KEYGATE_CONFIG` (if
    /// any), the process environment, then `overrides`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the file cannot be read or parsed (an unknown key included), or
    /// a value cannot be used.
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        let path = overrides
            .config
            .clone()
            .or_else(|| env("KEYGATE_CONFIG").map(PathBuf::from));
        let text = match &path {
            Some(path) => Some((path.as_path(), read_file(path)?)),
            None => None,
        };
        Self::resolve(
            overrides,
            &env,
            text.as_ref().map(|(p, t)| (*p, t.as_str())),
        )
    }

    /// The settings from `file` (its path and text), the environment as `env` answers it,
    /// and `overrides`, in rising precedence. [`load`](Self::load) calls it with the process
    /// environment; tests call it with their own.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load), without the reading.
    pub fn resolve(
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
        file: Option<(&Path, &str)>,
    ) -> Result<Self, ConfigError> {
        let file: FileConfig = match file {
            Some((path, text)) => toml::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.message().to_owned() + &location(text, e.span()),
            })?,
            None => FileConfig::default(),
        };
        let string = |var: &str, from_file: Option<String>, default: &str| {
            env(var).or(from_file).unwrap_or_else(|| default.to_owned())
        };
        let number = |var: &str, from_file: Option<u64>, default: u64| match env(var) {
            Some(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| ConfigError::invalid(var, "expected a whole number")),
            None => Ok(from_file.unwrap_or(default)),
        };

        let pepper_version = match env("KEYGATE_PEPPER_VERSION") {
            Some(text) => text
                .trim()
                .parse::<u32>()
                .map_err(|_| ConfigError::invalid("KEYGATE_PEPPER_VERSION", "expected a number"))?,
            None => file.pepper_version.unwrap_or(1),
        };
        let pepper = if env("KEYGATE_PEPPER").is_some() || env("KEYGATE_PEPPER_FILE").is_some() {
            PepperSource::Env
        } else if let Some(path) = file.pepper_file {
            PepperSource::File {
                path,
                version: pepper_version,
            }
        } else {
            PepperSource::BesideDatabase {
                version: pepper_version,
            }
        };
        let jwt_secret = match (env("KEYGATE_JWT_SECRET"), env("KEYGATE_JWT_SECRET_FILE")) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "KEYGATE_JWT_SECRET",
                    "both KEYGATE_JWT_SECRET and KEYGATE_JWT_SECRET_FILE are set: set one",
                ))
            }
            (Some(_), None) => JwtSource::Env,
            (None, Some(path)) => JwtSource::File(PathBuf::from(path)),
            (None, None) => file
                .jwt_secret_file
                .map_or(JwtSource::None, JwtSource::File),
        };
        let log_format = match env("KEYGATE_LOG_FORMAT") {
            Some(value) => LogFormat::parse("KEYGATE_LOG_FORMAT", &value)?,
            None => file.log_format.unwrap_or_else(|| {
                use std::io::IsTerminal;
                if std::io::stderr().is_terminal() {
                    LogFormat::Text
                } else {
                    LogFormat::Json
                }
            }),
        };
        let bootstrap = match env("KEYGATE_BOOTSTRAP") {
            Some(value) => match value.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => {
                    return Err(ConfigError::invalid(
                        "KEYGATE_BOOTSTRAP",
                        "expected true or false",
                    ))
                }
            },
            None => file.bootstrap.unwrap_or(true),
        };
        let trusted_proxies = match env("KEYGATE_TRUSTED_PROXIES") {
            Some(list) => cidrs(
                "KEYGATE_TRUSTED_PROXIES",
                list.split(',').filter(|c| !c.trim().is_empty()),
            )?,
            None => match &file.trusted_proxies {
                Some(list) => cidrs("trusted_proxies", list.iter().map(String::as_str))?,
                None => cidrs("trusted_proxies", DEFAULT_TRUSTED_PROXIES)?,
            },
        };
        let proxy_header = match env("KEYGATE_PROXY_HEADER") {
            Some(value) => proxy_header("KEYGATE_PROXY_HEADER", &value)?,
            None => match &file.proxy_header {
                Some(value) => proxy_header("proxy_header", value)?,
                None => ProxyHeader::XForwardedFor,
            },
        };
        let limits_sync =
            Duration::from_millis(number("KEYGATE_LIMITS_SYNC_MS", file.limits_sync_ms, 100)?);
        let (limits_name, limits_value) = match env("KEYGATE_LIMITS") {
            Some(value) => ("KEYGATE_LIMITS", Some(value)),
            None => ("limits", file.limits),
        };
        let limits = match limits_value
            .as_deref()
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => LimitsMode::Store,
            Some(value) => match value.as_str() {
                "memory" => LimitsMode::Memory,
                "store" => LimitsMode::Store,
                "local-first" => {
                    if limits_sync.is_zero() {
                        return Err(ConfigError::invalid("limits_sync_ms", "must be at least 1"));
                    }
                    LimitsMode::LocalFirst { sync: limits_sync }
                }
                _ => {
                    return Err(ConfigError::invalid(
                        limits_name,
                        "expected memory, store or local-first",
                    ))
                }
            },
        };
        let log = env("KEYGATE_LOG")
            .or_else(|| env("RUST_LOG"))
            .or(file.log)
            .unwrap_or_else(|| "info,keygate=debug".to_owned());

        let config = Self {
            addr: string("KEYGATE_ADDR", file.addr, "127.0.0.1:3000"),
            db: overrides
                .db
                .clone()
                .unwrap_or_else(|| string("KEYGATE_DB", file.db, "sqlite://keygate.db")),
            prefix: overrides
                .prefix
                .clone()
                .unwrap_or_else(|| string("KEYGATE_PREFIX", file.prefix, "key")),
            realm: string("KEYGATE_REALM", file.realm, "keygate"),
            pepper,
            jwt_secret,
            log,
            log_format,
            bootstrap,
            bootstrap_owner: string("KEYGATE_BOOTSTRAP_OWNER", file.bootstrap_owner, "admin"),
            cache_ttl: Duration::from_secs(number(
                "KEYGATE_CACHE_TTL_SECS",
                file.cache_ttl_secs,
                5,
            )?),
            store_timeout: Duration::from_millis(number(
                "KEYGATE_STORE_TIMEOUT_MS",
                file.store_timeout_ms,
                2000,
            )?),
            limits,
            original_uri_header: string(
                "KEYGATE_ORIGINAL_URI_HEADER",
                file.original_uri_header,
                "X-Original-URI",
            ),
            original_method_header: string(
                "KEYGATE_ORIGINAL_METHOD_HEADER",
                file.original_method_header,
                "X-Original-Method",
            ),
            trusted_proxies,
            proxy_header,
            github_keys_file: env("KEYGATE_GITHUB_KEYS_FILE")
                .map(PathBuf::from)
                .or(file.github_keys_file),
            users: file.users,
        };
        config.check()?;
        Ok(config)
    }

    /// Values that parse but cannot work.
    fn check(&self) -> Result<(), ConfigError> {
        if self.store_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "store_timeout_ms",
                "must be at least 1",
            ));
        }
        for (name, value) in [
            ("original_uri_header", &self.original_uri_header),
            ("original_method_header", &self.original_method_header),
        ] {
            if axum::http::HeaderName::from_bytes(value.as_bytes()).is_err() {
                return Err(ConfigError::invalid(name, "not a header name"));
            }
        }
        if let Some(users) = &self.users {
            for (id, user) in users {
                if user.permissions.iter().any(|p| p.is_empty()) {
                    return Err(ConfigError::invalid(
                        &format!("users.{id}.permissions"),
                        "a permission must not be empty",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Trusted when nothing is configured: a proxy on the same host.
const DEFAULT_TRUSTED_PROXIES: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// CIDRs, the setting `name` naming the one that does not parse.
fn cidrs<'a>(
    name: &str,
    list: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Cidr>, ConfigError> {
    list.into_iter()
        .map(|text| {
            text.trim()
                .parse::<Cidr>()
                .map_err(|e| ConfigError::invalid(name, format!("{:?}: {e}", text.trim())))
        })
        .collect()
}

fn proxy_header(name: &str, value: &str) -> Result<ProxyHeader, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "x-forwarded-for" => Ok(ProxyHeader::XForwardedFor),
        "forwarded" => Ok(ProxyHeader::Forwarded),
        _ => Err(ConfigError::invalid(
            name,
            "expected x-forwarded-for or forwarded",
        )),
    }
}

/// ` (line N)` for a parser error's span, when it has one.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count().saturating_add(1);
    format!(" (line {line})")
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let read = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    file.take(MAX_FILE_LEN.saturating_add(1))
        .read_to_string(&mut text)
        .map_err(read)?;
    if u64::try_from(text.len()).unwrap_or(u64::MAX) > MAX_FILE_LEN {
        return Err(ConfigError::TooLong {
            path: path.to_owned(),
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(env: &[(&str, &str)], file: &str) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::resolve(
            &Overrides::default(),
            &|name| env.get(name).cloned(),
            Some((Path::new("keygate.toml"), file)),
        )
    }

    #[test]
    fn debug_never_shows_the_store_password() {
        let url = "postgres://keygate:hunter2secret@db.example:5432/keys?password=alsosecret";
        let config = resolve(&[("KEYGATE_DB", url), ("KEYGATE_PEPPER", "x")], "").unwrap();
        let shown = format!("{config:?}");
        assert!(shown.contains("db.example"), "{shown}");
        assert!(shown.contains("limits: Store"), "{shown}");
        assert!(
            !shown.contains("hunter2secret") && !shown.contains("alsosecret"),
            "{shown}"
        );
        let overrides = Overrides::new(Some(url.to_owned()), None, None);
        let shown = format!("{overrides:?}");
        assert!(
            !shown.contains("hunter2secret") && !shown.contains("alsosecret"),
            "{shown}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let error = resolve(&[], "addr = \"127.0.0.1:1\"\nadress = \"x\"\n").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("adress"), "{text}");
        assert!(text.contains("line 2"), "{text}");
        let error = resolve(&[], "[users.a]\npermisions = []\n").unwrap_err();
        assert!(error.to_string().contains("permisions"), "{error}");
    }

    #[test]
    fn a_pepper_value_cannot_be_put_in_the_file() {
        assert!(resolve(&[], "pepper = \"a secret in a config file\"\n").is_err());
        assert!(resolve(&[], "jwt_secret = \"a secret in a config file\"\n").is_err());
    }

    #[test]
    fn bad_values_are_named() {
        let e = resolve(&[("KEYGATE_BOOTSTRAP", "maybe")], "").unwrap_err();
        assert!(e.to_string().starts_with("KEYGATE_BOOTSTRAP:"), "{e}");
        let e = resolve(&[("KEYGATE_CACHE_TTL_SECS", "-1")], "").unwrap_err();
        assert!(e.to_string().starts_with("KEYGATE_CACHE_TTL_SECS:"), "{e}");
        let e = resolve(&[], "original_uri_header = \"a b\"\n").unwrap_err();
        assert!(e.to_string().starts_with("original_uri_header:"), "{e}");
        let e = resolve(&[], "store_timeout_ms = 0\n").unwrap_err();
        assert!(e.to_string().starts_with("store_timeout_ms:"), "{e}");
        let e = resolve(&[], "trusted_proxies = [\"10.0.0.1/8\"]\n").unwrap_err();
        assert!(e.to_string().starts_with("trusted_proxies:"), "{e}");
        let e = resolve(&[("KEYGATE_TRUSTED_PROXIES", "10.0.0.0/8,nope")], "").unwrap_err();
        assert!(e.to_string().starts_with("KEYGATE_TRUSTED_PROXIES:"), "{e}");
        let e = resolve(&[("KEYGATE_PROXY_HEADER", "x-real-ip")], "").unwrap_err();
        assert!(e.to_string().starts_with("KEYGATE_PROXY_HEADER:"), "{e}");
    }

    #[test]
    fn limits_default_to_the_store_and_local_first_takes_its_interval() {
        assert_eq!(resolve(&[], "").unwrap().limits, LimitsMode::Store);
        assert_eq!(
            resolve(&[], "limits = \"memory\"\n").unwrap().limits,
            LimitsMode::Memory
        );
        assert_eq!(
            resolve(&[], "limits = \"store\"\n").unwrap().limits,
            LimitsMode::Store
        );
        assert_eq!(
            resolve(&[], "limits = \"local-first\"\nlimits_sync_ms = 250\n")
                .unwrap()
                .limits,
            LimitsMode::LocalFirst {
                sync: Duration::from_millis(250)
            }
        );
        assert_eq!(
            resolve(&[("KEYGATE_LIMITS", "Local-First")], "limits = \"store\"\n")
                .unwrap()
                .limits,
            LimitsMode::LocalFirst {
                sync: Duration::from_millis(100)
            }
        );
        let e = resolve(&[("KEYGATE_LIMITS", "redis")], "").unwrap_err();
        assert!(e.to_string().starts_with("KEYGATE_LIMITS:"), "{e}");
        let e = resolve(&[], "limits = \"local-first\"\nlimits_sync_ms = 0\n").unwrap_err();
        assert!(e.to_string().starts_with("limits_sync_ms:"), "{e}");
    }

    #[test]
    fn trusted_proxies_default_to_loopback_and_can_be_emptied() {
        let cidr = |text: &str| text.parse::<Cidr>().unwrap();
        let config = resolve(&[], "").unwrap();
        assert_eq!(
            config.trusted_proxies,
            [cidr("127.0.0.0/8"), cidr("::1/128")]
        );
        assert_eq!(config.proxy_header, ProxyHeader::XForwardedFor);
        let config = resolve(
            &[],
            "trusted_proxies = [\"10.0.0.0/8\"]\nproxy_header = \"forwarded\"\n",
        )
        .unwrap();
        assert_eq!(config.trusted_proxies, [cidr("10.0.0.0/8")]);
        assert_eq!(config.proxy_header, ProxyHeader::Forwarded);
        let config = resolve(
            &[("KEYGATE_TRUSTED_PROXIES", " 10.1.0.0/16 , 192.0.2.1/32 ")],
            "trusted_proxies = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        assert_eq!(
            config.trusted_proxies,
            [cidr("10.1.0.0/16"), cidr("192.0.2.1/32")]
        );
        let config = resolve(&[("KEYGATE_TRUSTED_PROXIES", "")], "").unwrap();
        assert!(config.trusted_proxies.is_empty());
        assert!(resolve(&[], "trusted_proxies = []\n")
            .unwrap()
            .trusted_proxies
            .is_empty());
    }
}
