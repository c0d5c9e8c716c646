//! `keygate`: the operator CLI. Mint, list, show, revoke, activate, delete, rotate and
//! verify API keys in any store keygate supports.
//!
//! ```text
//! export KEYGATE_DB=sqlite://keys.db KEYGATE_PEPPER_FILE=/run/secrets/pepper
//! keygate mint --user user-42 --name "Backup Script" --expires-in 30d
//! keygate verify < key.txt          # or: KEYGATE_KEY=… keygate verify
//! ```
//!
//! Secrets come from the environment, files or stdin, never from arguments (arguments end
//! up in shell history and `ps`): `KEYGATE_PEPPER` / `KEYGATE_PEPPER_FILE` (with
//! `KEYGATE_PEPPER_VERSION`, default 1), `KEYGATE_JWT_SECRET` / `KEYGATE_JWT_SECRET_FILE`,
//! and the key `verify` checks: the first line of stdin, or `KEYGATE_KEY`.
//! stdout carries only the result (a key, JSON); everything else goes to stderr. Text from
//! the store (names, owners, descriptions) is printed with control and bidi control
//! characters escaped (`\u{1b}`), so a record cannot drive the operator's terminal.
//! Exit codes: 0 success, 1 `verify` refused the key, 2 bad input or configuration,
//! 3 store failure.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal, Read};
use std::process::ExitCode;

use chrono::TimeDelta;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Parser, Subcommand, ValueEnum};
use keygate::admin::KeyView;
use keygate::{Error, KeyFormat, KeyId, KeyPatch, Keygate, ListQuery, NewKey, Pepper};

#[derive(Parser)]
#[command(name = "keygate", version, about = "Manage keygate API keys", long_about = None)]
struct Cli {
    /// Store URL: sqlite://path, postgres://…, redis://…
    #[arg(
        long,
        env = "KEYGATE_DB",
        global = true,
        default_value = "sqlite://keygate.db"
    )]
    db: String,

    /// Prefix of opaque keys ([a-z][a-z0-9]{0,15}).
    #[arg(long, env = "KEYGATE_PREFIX", global = true, default_value = "key")]
    prefix: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mint a key; prints the plaintext key (once) and nothing else on stdout.
    Mint {
        /// The user the key acts for.
        #[arg(long)]
        user: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Lifetime, e.g. 90s, 15m, 24h, 30d, 2w.
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<TimeDelta>,
        /// Narrow the key to this scope (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Token format.
        #[arg(long, value_enum, default_value_t = Format::Opaque)]
        format: Format,
        /// Longer description.
        #[arg(long)]
        description: Option<String>,
    },
    /// List keys (by id), optionally one user's.
    List {
        /// Only this user's keys.
        #[arg(long)]
        user: Option<String>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one key as JSON.
    Show { id: String },
    /// Deactivate a key.
    Revoke { id: String },
    /// Reactivate a key.
    Activate { id: String },
    /// Delete a key.
    Delete { id: String },
    /// Replace a key; the old one keeps working for the grace period. Prints the new key.
    Rotate {
        id: String,
        /// How long the old key keeps working, e.g. 24h (default: stops now).
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        grace: TimeDelta,
    },
    /// Verify a key read from stdin (its first line) or KEYGATE_KEY, never from an
    /// argument: exit 0 with the principal as JSON, or exit 1 with the reason.
    Verify,
    /// Apply pending schema migrations (opening the store also does this).
    Migrate,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Opaque,
    Jwt,
}

/// A failure with its exit code.
struct Fail(u8, String);

impl From<Error> for Fail {
    fn from(error: Error) -> Self {
        match error {
            Error::Store(e) => Fail(3, format!("store: {}", chain(&e))),
            other => Fail(2, other.to_string()),
        }
    }
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::UnknownArgument => {
            // Never echo a stray argument: it may be a key (`keygate verify "$KEY"`).
            let shown = match e.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(arg)) if is_flag_name(arg) => format!(" {arg}"),
                _ => String::new(),
            };
            eprintln!(
                "keygate: unexpected argument{shown} (keys are never taken as arguments: \
                 `verify` reads the key from stdin or KEYGATE_KEY; see keygate --help)"
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("keygate: {} (see keygate --help)", escape(first));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keygate: error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, message)) => {
            eprintln!("keygate: error: {}", escape(&message));
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Fail> {
    let needs_secrets = matches!(
        cli.command,
        Command::Mint { .. } | Command::Rotate { .. } | Command::Verify
    );
    let store = keygate::open_store(&cli.db).await.map_err(|e| {
        Fail(
            3,
            format!("cannot open {}: {}", redact_url(&cli.db), chain(&e)),
        )
    })?;
    if let Command::Migrate = cli.command {
        eprintln!(
            "keygate: migrations applied to {}",
            escape(&redact_url(&cli.db))
        );
        return Ok(());
    }
    let mut builder = Keygate::builder_shared(store).prefix(&cli.prefix);
    builder = builder.pepper(if needs_secrets {
        pepper()?
    } else {
        // list/show/revoke/activate/delete never hash: a throwaway pepper keeps them
        // usable without the secret.
        Pepper::new(0, throwaway()).map_err(|e| Fail(2, e.to_string()))?
    });
    if needs_secrets {
        if let Some(secret) = secret("KEYGATE_JWT_SECRET")? {
            builder = builder.jwt_secret(secret);
        }
    }
    let gate = builder.build().map_err(|e| Fail(2, e.to_string()))?;
    let result = command(&gate, cli.command).await;
    // Verify records last use; write it before exiting.
    let _ = gate.flush().await;
    result
}

async fn command(gate: &Keygate, command: Command) -> Result<(), Fail> {
    match command {
        Command::Mint {
            user,
            name,
            expires_in,
            scopes,
            format,
            description,
        } => {
            let mut new = NewKey::new(name, user).format(match format {
                Format::Opaque => KeyFormat::Opaque,
                Format::Jwt => KeyFormat::Jwt,
            });
            if let Some(lifetime) = expires_in {
                new = new.expires_in(lifetime);
            }
            if !scopes.is_empty() {
                new = new.scopes(scopes);
            }
            if let Some(description) = description {
                new = new.description(description);
            }
            let issued = gate.mint(new).await?;
            eprintln!(
                "keygate: minted key {} for {}",
                issued.record.id,
                escape(&issued.record.owner)
            );
            println!("{}", issued.key.expose());
        }
        Command::List { user, json } => {
            let mut query = ListQuery::new().limit(keygate::MAX_PAGE);
            query.owner = user;
            loop {
                let page = gate.list(query.clone()).await?;
                for record in &page.records {
                    if json {
                        println!("{}", to_json(&KeyView(record))?);
                    } else {
                        println!(
                            "{}\t{}\t{}\t{}\t{}\t{}",
                            record.id,
                            if record.active { "active" } else { "inactive" },
                            record.format,
                            escape(&record.owner),
                            record
                                .expires_at
                                .map_or("never".to_owned(), |at| at.to_rfc3339()),
                            escape(&record.name)
                        );
                    }
                }
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => break,
                }
            }
        }
        Command::Show { id } => {
            let id = parse_id(&id)?;
            let record = gate.get(id).await?.ok_or(Error::NotFound(id))?;
            println!("{}", to_json(&KeyView(&record))?);
        }
        Command::Revoke { id } => {
            let record = gate.revoke(parse_id(&id)?).await?;
            eprintln!("keygate: revoked {}", record.id);
        }
        Command::Activate { id } => {
            let record = gate
                .update(parse_id(&id)?, KeyPatch::new().active(true))
                .await?;
            eprintln!("keygate: activated {}", record.id);
        }
        Command::Delete { id } => {
            let id = parse_id(&id)?;
            gate.delete(id).await?;
            eprintln!("keygate: deleted {id}");
        }
        Command::Rotate { id, grace } => {
            let issued = gate.rotate(parse_id(&id)?, grace).await?;
            eprintln!(
                "keygate: rotated {id} -> {}; the old key stops at the latest in {}s",
                issued.record.id,
                grace.num_seconds()
            );
            println!("{}", issued.key.expose());
        }
        Command::Verify => match gate.verify(&read_key()?).await {
            Ok(principal) => println!("{}", to_json(&principal)?),
            // A store that is down or holds a corrupt record is the store's failure (3),
            // never a refused key (1).
            Err(error) if error.is_server_error() => {
                return Err(Fail(3, format!("{}: {}", error, chain(&error))));
            }
            Err(error) => return Err(Fail(1, format!("key refused: {}", error.reason()))),
        },
        // `run` applied the migrations when it opened the store: nothing is left to do.
        Command::Migrate => {}
    }
    Ok(())
}

/// One line of JSON. serde_json escapes C0 controls in strings but writes DEL, C1
/// controls (U+0080–U+009F, which some terminals obey) and bidi controls raw; those are
/// escaped here too, as `\uXXXX`, which is the same JSON string.
fn to_json(value: &impl serde::Serialize) -> Result<String, Fail> {
    let json =
        serde_json::to_string(value).map_err(|e| Fail(2, format!("cannot render JSON: {e}")))?;
    if !json.chars().any(needs_escape) {
        return Ok(json);
    }
    let mut out = String::with_capacity(json.len().saturating_add(16));
    for c in json.chars() {
        if needs_escape(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// Control characters (C0, DEL, C1) and the bidi embeddings, overrides and isolates that
/// reorder displayed text.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` safe to write to a terminal: each control or bidi control character as
/// `\u{…}`, the rest unchanged.
fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().saturating_add(16));
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `--name` or `-n`: a flag name without a value, safe to repeat in a message.
fn is_flag_name(arg: &str) -> bool {
    arg.starts_with('-')
        && arg.len() <= 32
        && arg.chars().all(|c| c == '-' || c.is_ascii_alphanumeric())
}

/// Longest `verify` input read: a JWT is capped at 8 KiB, an opaque key is ~90 bytes.
const MAX_KEY_INPUT: u64 = 16 * 1024;

/// The key to verify: `KEYGATE_KEY` if set, else the first line of stdin.
fn read_key() -> Result<String, Fail> {
    let raw = match std::env::var_os("KEYGATE_KEY") {
        Some(value) => value.into_encoded_bytes(),
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("keygate: paste the key and press Enter (it is echoed)");
            }
            let mut line = Vec::new();
            stdin
                .lock()
                .take(MAX_KEY_INPUT + 1)
                .read_until(b'\n', &mut line)
                .map_err(|e| Fail(2, format!("cannot read the key from stdin: {e}")))?;
            if u64::try_from(line.len()).unwrap_or(u64::MAX) > MAX_KEY_INPUT {
                return Err(Fail(1, "key refused: malformed".into()));
            }
            line
        }
    };
    let Ok(text) = String::from_utf8(raw) else {
        return Err(Fail(1, "key refused: malformed".into()));
    };
    let key = text.trim();
    if key.is_empty() {
        return Err(Fail(
            2,
            "no key: pipe it on stdin (keygate verify < key.txt) or set KEYGATE_KEY".into(),
        ));
    }
    Ok(key.to_owned())
}

fn parse_id(text: &str) -> Result<KeyId, Fail> {
    text.parse()
        .map_err(|_| Fail(2, format!("{text:?} is not a key id (a UUID)")))
}

/// `90s`, `15m`, `24h`, `30d`, `2w`; a bare number is seconds.
fn parse_duration(text: &str) -> Result<TimeDelta, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 30d"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use s, m, h, d or w)"
            ))
        }
    };
    n.checked_mul(unit_secs)
        .and_then(TimeDelta::try_seconds)
        .ok_or_else(|| format!("{text:?}: too long"))
}

/// A secret from `NAME` or the file named by `NAME_FILE` (trailing newline dropped).
fn secret(name: &str) -> Result<Option<Vec<u8>>, Fail> {
    if let Some(value) = std::env::var_os(name) {
        return Ok(Some(value.into_encoded_bytes()));
    }
    let file_var = format!("{name}_FILE");
    let Some(path) = std::env::var_os(&file_var) else {
        return Ok(None);
    };
    let mut bytes = std::fs::read(&path).map_err(|e| {
        Fail(
            2,
            format!("{file_var}: cannot read {}: {e}", path.to_string_lossy()),
        )
    })?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(Some(bytes))
}

fn pepper() -> Result<Pepper, Fail> {
    let secret = secret("KEYGATE_PEPPER")?.ok_or_else(|| {
        Fail(
            2,
            "no pepper: set KEYGATE_PEPPER or KEYGATE_PEPPER_FILE (32+ bytes)".into(),
        )
    })?;
    let version = match std::env::var("KEYGATE_PEPPER_VERSION") {
        Ok(v) => v
            .parse()
            .map_err(|_| Fail(2, format!("KEYGATE_PEPPER_VERSION: {v:?} is not a number")))?,
        Err(_) => 1,
    };
    Pepper::new(version, secret).map_err(|e| Fail(2, format!("KEYGATE_PEPPER: {e}")))
}

fn throwaway() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(KeyId::random().as_uuid().as_bytes());
    bytes[16..].copy_from_slice(KeyId::random().as_uuid().as_bytes());
    bytes
}

/// The URL without its password, for messages.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90").unwrap(), TimeDelta::seconds(90));
        assert_eq!(parse_duration("15m").unwrap(), TimeDelta::minutes(15));
        assert_eq!(parse_duration("24h").unwrap(), TimeDelta::hours(24));
        assert_eq!(parse_duration("30d").unwrap(), TimeDelta::days(30));
        assert_eq!(parse_duration("2w").unwrap(), TimeDelta::weeks(2));
        for bad in ["", "d", "3y", "-5s", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_kept_out_of_messages() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/keys"),
            "postgres://app:***@db:5432/keys"
        );
        assert_eq!(redact_url("sqlite://keys.db"), "sqlite://keys.db");
        assert_eq!(redact_url("redis://127.0.0.1/"), "redis://127.0.0.1/");
    }
}
