//! Where a [`Pepper`] comes from: the environment, a file, or the system's random number
//! generator. One implementation for the CLI, the example servers and applications.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::BuildError;
use crate::hash::Pepper;

/// Longest pepper file read, in bytes (4 KiB). A pepper is 32 to a few hundred bytes; the
/// bound keeps a path that names something else (a log, a device) from being read whole.
pub(crate) const MAX_PEPPER_FILE_LEN: u64 = 4096;

/// Why a pepper could not be loaded or created.
///
/// Messages name the variable or file, never the pepper. The underlying I/O or
/// validation error is the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PepperError {
    /// The environment variable is not set.
    #[error("{var} is not set")]
    NotSet {
        /// The variable.
        var: String,
    },
    /// Both the variable and its `_FILE` twin are set: which one is meant is unclear.
    #[error("both {var} and {file_var} are set: set one")]
    Ambiguous {
        /// The variable holding the pepper itself.
        var: String,
        /// The variable naming the pepper file.
        file_var: String,
    },
    /// The version variable does not hold a number.
    #[error("{var}: {value:?} is not a pepper version (a number from 0 to 4294967295)")]
    BadVersion {
        /// The variable.
        var: String,
        /// What it holds (a version is not a secret).
        value: String,
    },
    /// The pepper file cannot be opened or read (missing, permissions, …).
    #[error("cannot read pepper file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The path names a directory, a FIFO, a device or another thing that is not a file.
    #[error("pepper file {} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file is longer than 4 KiB.
    #[error("pepper file {} is longer than {max} bytes", path.display())]
    TooLong {
        /// The file.
        path: PathBuf,
        /// The limit, 4096.
        max: u64,
    },
    /// The pepper file could not be created or written.
    #[error("cannot create pepper file {}", path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The value was read but is not a usable pepper (too short).
    #[error("the pepper from {origin} is not usable")]
    Invalid {
        /// The variable or file it came from.
        origin: String,
        /// Why.
        #[source]
        source: BuildError,
    },
    /// The system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

impl Pepper {
    /// The variable [`from_default_env`](Self::from_default_env) reads the pepper from.
    pub const ENV: &'static str = "KEYGATE_PEPPER";
    /// The variable [`from_default_env`](Self::from_default_env) reads the pepper file's
    /// path from.
    pub const ENV_FILE: &'static str = "KEYGATE_PEPPER_FILE";
    /// The variable [`from_default_env`](Self::from_default_env) reads the pepper version
    /// from (default 1).
    pub const ENV_VERSION: &'static str = "KEYGATE_PEPPER_VERSION";

    /// A keyring whose current pepper, under `version`, is 32 fresh random bytes from the
    /// operating system's CSPRNG (`ring`'s `SystemRandom`).
    ///
    /// The pepper cannot be read back: use this for in-memory stores and tests. A pepper
    /// that must outlive the process comes from [`from_file`](Self::from_file) or
    /// [`load_or_create`](Self::load_or_create).
    ///
    /// # Errors
    ///
    /// [`PepperError::Random`] if the system's random number generator fails.
    ///
    /// ```
    /// let pepper = keygate::Pepper::generate(1)?;
    /// assert_eq!(pepper.current_version(), 1);
    /// # Ok::<(), keygate::PepperError>(())
    /// ```
    pub fn generate(version: u32) -> Result<Self, PepperError> {
        let secret = random_secret()?;
        Self::new(version, secret.as_bytes()).map_err(|source| PepperError::Invalid {
            origin: "the random number generator".to_owned(),
            source,
        })
    }

    /// A keyring whose current pepper, under `version`, is the value of the environment
    /// variable `var`, byte for byte (nothing is trimmed).
    ///
    /// # Errors
    ///
    /// [`PepperError::NotSet`] if `var` is not set, [`PepperError::Invalid`] if its value
    /// is shorter than [`MIN_PEPPER_LEN`](crate::bounds::MIN_PEPPER_LEN) bytes.
    ///
    /// ```
    /// match keygate::Pepper::from_env("MY_APP_PEPPER", 1) {
    ///     Ok(pepper) => println!("pepper version {}", pepper.current_version()),
    ///     Err(keygate::PepperError::NotSet { var }) => eprintln!("set {var}"),
    ///     Err(other) => eprintln!("{other}"),
    /// }
    /// ```
    pub fn from_env(var: &str, version: u32) -> Result<Self, PepperError> {
        let value = std::env::var_os(var).ok_or_else(|| PepperError::NotSet {
            var: var.to_owned(),
        })?;
        let bytes = Zeroizing::new(value.into_encoded_bytes());
        Self::new(version, bytes.as_slice()).map_err(|source| PepperError::Invalid {
            origin: var.to_owned(),
            source,
        })
    }

    /// A keyring whose current pepper, under `version`, is the content of the file at
    /// `path`, without one trailing newline (`\n` or `\r\n`), so that `echo "$PEPPER" >
    /// file` and editors that end files with a newline give the same pepper as the
    /// variable would.
    ///
    /// Symbolic links are followed (secret mounts such as Kubernetes' and Docker's are
    /// links). The path must name a regular file of at most 4 KiB: a directory, FIFO or device is refused before anything is read. The file's
    /// permissions are the deployment's business (a secret mount is often world-readable
    /// inside its container); on Unix a file that others may read is logged as a
    /// `tracing` warning, naming the path only. Keep the file out of the database's
    /// backups: a backup holding both lets anyone test guessed keys offline.
    ///
    /// # Errors
    ///
    /// [`PepperError::Read`] if the file cannot be opened or read (its
    /// [`io::ErrorKind`] says why, e.g. [`NotFound`](io::ErrorKind::NotFound)),
    /// [`PepperError::NotAFile`], [`PepperError::TooLong`], and
    /// [`PepperError::Invalid`] if the pepper is shorter than
    /// [`MIN_PEPPER_LEN`](crate::bounds::MIN_PEPPER_LEN) bytes.
    ///
    /// ```no_run
    /// let pepper = keygate::Pepper::from_file("/run/secrets/keygate-pepper", 1)?;
    /// # Ok::<(), keygate::PepperError>(())
    /// ```
    pub fn from_file(path: impl AsRef<Path>, version: u32) -> Result<Self, PepperError> {
        let path = path.as_ref();
        let secret = read_secret_file(path)?;
        Self::new(version, secret.as_slice()).map_err(|source| PepperError::Invalid {
            origin: path.display().to_string(),
            source,
        })
    }

    /// [`from_file`](Self::from_file) if `path` exists; otherwise creates it, with a new
    /// random pepper (32 random bytes, as 64 hex characters and a newline), readable by
    /// its owner only (mode 0600 on Unix), and never overwriting a file that appears in
    /// the meantime. Returns the keyring and whether the file was created.
    ///
    /// This suits a single server that keeps its pepper beside its database (the example
    /// servers do). Never let it create a new pepper for a store that already holds keys:
    /// none of them would verify again. Check for that first, as the examples do.
    ///
    /// # Errors
    ///
    /// Those of [`from_file`](Self::from_file) for an existing file;
    /// [`PepperError::Create`] if the file cannot be created or written (a partly written
    /// file is removed), [`PepperError::Random`] if the random number generator fails.
    ///
    /// ```no_run
    /// let (pepper, created) = keygate::Pepper::load_or_create("keys.db.pepper", 1)?;
    /// if created {
    ///     eprintln!("generated a new pepper in keys.db.pepper: keep it safe");
    /// }
    /// # Ok::<(), keygate::PepperError>(())
    /// ```
    pub fn load_or_create(
        path: impl AsRef<Path>,
        version: u32,
    ) -> Result<(Self, bool), PepperError> {
        let path = path.as_ref();
        match Self::from_file(path, version) {
            Err(PepperError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other.map(|pepper| (pepper, false)),
        }
        let secret = random_secret()?;
        match create_private(path, secret.as_bytes()) {
            Ok(()) => {}
            // Another process created it first: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Self::from_file(path, version).map(|pepper| (pepper, false));
            }
            Err(source) => {
                return Err(PepperError::Create {
                    path: path.to_owned(),
                    source,
                })
            }
        }
        let pepper =
            Self::new(version, secret.as_bytes()).map_err(|source| PepperError::Invalid {
                origin: path.display().to_string(),
                source,
            })?;
        Ok((pepper, true))
    }

    /// The pepper as keygate's tools configure it: from `KEYGATE_PEPPER` (the value), or
    /// from the file `KEYGATE_PEPPER_FILE` names (read as [`from_file`](Self::from_file)
    /// reads it), under the version in `KEYGATE_PEPPER_VERSION` (default 1). `Ok(None)`
    /// when neither variable is set, so the caller decides what that means (the CLI
    /// refuses to hash; the example servers use a file beside their database).
    ///
    /// # Errors
    ///
    /// [`PepperError::Ambiguous`] if both `KEYGATE_PEPPER` and `KEYGATE_PEPPER_FILE` are
    /// set, [`PepperError::BadVersion`] if `KEYGATE_PEPPER_VERSION` is not a number, and
    /// those of [`from_env`](Self::from_env) and [`from_file`](Self::from_file).
    ///
    /// ```
    /// match keygate::Pepper::from_default_env()? {
    ///     Some(pepper) => println!("pepper version {}", pepper.current_version()),
    ///     None => eprintln!("set KEYGATE_PEPPER or KEYGATE_PEPPER_FILE"),
    /// }
    /// # Ok::<(), keygate::PepperError>(())
    /// ```
    pub fn from_default_env() -> Result<Option<Self>, PepperError> {
        let value = std::env::var_os(Self::ENV);
        let file = std::env::var_os(Self::ENV_FILE);
        if value.is_none() && file.is_none() {
            return Ok(None);
        }
        let version = version_from_env(Self::ENV_VERSION)?;
        match (value, file) {
            (Some(_), Some(_)) => Err(PepperError::Ambiguous {
                var: Self::ENV.to_owned(),
                file_var: Self::ENV_FILE.to_owned(),
            }),
            (Some(_), None) => Self::from_env(Self::ENV, version).map(Some),
            (None, Some(path)) => Self::from_file(PathBuf::from(path), version).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// The version in `var`, 1 when unset.
fn version_from_env(var: &str) -> Result<u32, PepperError> {
    match std::env::var_os(var) {
        None => Ok(1),
        Some(value) => parse_version(var, value),
    }
}

fn parse_version(var: &str, value: OsString) -> Result<u32, PepperError> {
    value
        .to_str()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| PepperError::BadVersion {
            var: var.to_owned(),
            value: value.to_string_lossy().into_owned(),
        })
}

/// 32 random bytes as 64 lowercase hex characters: text, so the same value works in a file
/// and in `KEYGATE_PEPPER`.
fn random_secret() -> Result<Zeroizing<String>, PepperError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(bytes.as_mut())
        .map_err(|_| PepperError::Random)?;
    let mut text = Zeroizing::new(String::with_capacity(64));
    for byte in bytes.iter() {
        text.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        text.push(char::from_digit(u32::from(byte & 15), 16).unwrap_or('0'));
    }
    Ok(text)
}

/// The file's bytes without one trailing `\n` or `\r\n`.
fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, PepperError> {
    let read_error = |source| PepperError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    // The metadata of the opened file, not of the path: nothing can swap it in between.
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(PepperError::NotAFile {
            path: path.to_owned(),
        });
    }
    warn_if_others_can_read(path, &meta);
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_PEPPER_FILE_LEN.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_PEPPER_FILE_LEN {
        return Err(PepperError::TooLong {
            path: path.to_owned(),
            max: MAX_PEPPER_FILE_LEN,
        });
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(bytes)
}

#[cfg(unix)]
fn warn_if_others_can_read(path: &Path, meta: &std::fs::Metadata) {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "the pepper file is accessible to other users than its owner (chmod 600 it)"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_others_can_read(_: &Path, _: &std::fs::Metadata) {}

/// Creates `path` (never over an existing file) holding `secret` and a newline, mode 0600
/// on Unix. A file left half-written is removed.
fn create_private(path: &Path, secret: &[u8]) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    let written = file
        .write_all(secret)
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all());
    if written.is_err() {
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashScheme;

    /// A path in the temp directory that does not exist yet.
    fn scratch(label: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "keygate-pepper-{label}-{}-{}",
            std::process::id(),
            crate::KeyId::random()
        ))
    }

    /// Whether two keyrings hash alike (the same pepper under the same version).
    fn same(a: &Pepper, b: &Pepper) -> bool {
        a.matches(&b.hash(HashScheme::Secret, b"probe"), b"probe", None)
    }

    const PEPPER: &str = "a pepper of thirty-two bytes or more";

    #[test]
    fn generated_peppers_differ() {
        let a = Pepper::generate(1).unwrap();
        let b = Pepper::generate(1).unwrap();
        assert_eq!(a.current_version(), 1);
        assert!(!same(&a, &b));
        assert_eq!(Pepper::generate(7).unwrap().current_version(), 7);
    }

    // Each test uses its own variable: tests run in parallel threads of one process.
    #[test]
    fn env_var_missing_short_and_set() {
        let var = "KEYGATE_UNIT_TEST_PEPPER_ENV";
        std::env::remove_var(var);
        assert!(
            matches!(Pepper::from_env(var, 1), Err(PepperError::NotSet { var: v }) if v == var)
        );
        std::env::set_var(var, "short");
        let error = Pepper::from_env(var, 1).unwrap_err();
        assert!(matches!(
            &error,
            PepperError::Invalid {
                source: BuildError::PepperTooShort { got: 5, .. },
                ..
            }
        ));
        assert!(
            !format!("{error} {error:?}").contains("short\""),
            "{error:?}"
        );
        std::env::set_var(var, PEPPER);
        let pepper = Pepper::from_env(var, 3).unwrap();
        assert_eq!(pepper.current_version(), 3);
        assert!(same(&pepper, &Pepper::new(3, PEPPER).unwrap()));
        std::env::remove_var(var);
    }

    #[test]
    fn a_file_loses_one_trailing_newline() {
        let path = scratch("newline");
        for (content, expected) in [
            (format!("{PEPPER}\n"), PEPPER.to_owned()),
            (format!("{PEPPER}\r\n"), PEPPER.to_owned()),
            (PEPPER.to_owned(), PEPPER.to_owned()),
            // Only one: the rest is the pepper's.
            (format!("{PEPPER}\n\n"), format!("{PEPPER}\n")),
        ] {
            std::fs::write(&path, &content).unwrap();
            let pepper = Pepper::from_file(&path, 1).unwrap();
            assert!(
                same(&pepper, &Pepper::new(1, &expected).unwrap()),
                "{content:?}"
            );
        }
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            Pepper::from_file(&path, 1),
            Err(PepperError::Invalid {
                source: BuildError::PepperTooShort { got: 5, .. },
                ..
            })
        ));
        std::fs::write(&path, vec![b'x'; 5000]).unwrap();
        assert!(matches!(
            Pepper::from_file(&path, 1),
            Err(PepperError::TooLong { max: 4096, .. })
        ));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_missing_file_or_a_directory_is_a_typed_error() {
        let path = scratch("missing");
        match Pepper::from_file(&path, 1) {
            Err(PepperError::Read { source, path: p }) => {
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
                assert_eq!(p, path);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Pepper::from_file(std::env::temp_dir(), 1),
            Err(PepperError::NotAFile { .. })
        ));
    }

    #[test]
    fn load_or_create_creates_once_privately_then_loads() {
        let path = scratch("create");
        let (first, created) = Pepper::load_or_create(&path, 2).unwrap();
        assert!(created);
        assert_eq!(first.current_version(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65, "64 hex characters and a newline");
        assert!(text.trim_end().chars().all(|c| c.is_ascii_hexdigit()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        let (again, created) = Pepper::load_or_create(&path, 2).unwrap();
        assert!(!created);
        assert!(same(&first, &again));
        // The file's text is the pepper: it works as the variable's value too.
        assert!(same(&first, &Pepper::new(2, text.trim_end()).unwrap()));
        let _ = std::fs::remove_file(&path);
        // Nowhere to create it: a typed error.
        let nowhere = scratch("nodir").join("pepper");
        assert!(matches!(
            Pepper::load_or_create(&nowhere, 1),
            Err(PepperError::Create { .. })
        ));
    }

    #[test]
    fn versions_parse_or_are_refused() {
        assert_eq!(parse_version("V", "7".into()).unwrap(), 7);
        for bad in ["", "x", "-1", "4294967296"] {
            assert!(
                matches!(
                    parse_version("V", bad.into()),
                    Err(PepperError::BadVersion { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
