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
//! `KEYGATE_PEPPER_VERSION`, default 1; read by `keygate::Pepper::from_default_env`, as
//! the example servers read them), `KEYGATE_JWT_SECRET` / `KEYGATE_JWT_SECRET_FILE`,
//! and the key `verify` checks: the first line of stdin, or `KEYGATE_KEY`.
//! stdout carries only the result (a key, JSON); everything else goes to stderr. Text from
//! the store (names, owners, descriptions) is printed with control and bidi control
//! characters escaped (`\u{1b}`), so a record cannot drive the operator's terminal.
//! Exit codes: 0 success, 1 `verify` refused the key, 2 bad input or configuration
//! (arguments, secrets, a pepper that is not the one the store's keys were made with, a
//! store URL that does not parse or names no known store), 3 store failure (unreachable,
//! refused, timed out).
//!
//! `mint`, `rotate` and `verify` first check the pepper against the fingerprint the store
//! keeps of each pepper version (`Keygate::check_pepper`; the first use of a store records
//! it): the wrong pepper is refused with exit 2 before anything is written or verified. Errors are one `keygate: error: …` line with
//! each cause said once; argument errors are clap's full message.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal, Read};
use std::process::ExitCode;

use chrono::TimeDelta;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Parser, Subcommand, ValueEnum};
use keygate::admin::KeyView;
use keygate::limits::{AllowedOrigin, Cidr, RequestContext};
use keygate::limits::{CreditPolicy, CreditRefill, RateLimit, RefillInterval};
use keygate::{
    Error, JwtSecret, KeyFormat, KeyId, KeyPatch, KeyRecord, Keygate, ListQuery, NewKey, Pepper,
    StoreError,
};
use keygate_cli::{chain, redact_url};

#[derive(Parser)]
#[command(name = "keygate", version, about = "Manage keygate API keys", long_about = None)]
struct Cli {
    /// Store URL: sqlite://path, postgres://… (TLS: ?sslmode=verify-full&sslrootcert=ca.pem),
    /// redis://… or rediss://… (?sslrootcert=ca.pem) [default: sqlite://keygate.db]
    #[arg(long, env = "KEYGATE_DB", global = true)]
    db: Option<String>,

    /// Prefix of opaque keys ([a-z][a-z0-9]{0,15}). [default: key]
    #[arg(long, env = "KEYGATE_PREFIX", global = true)]
    prefix: Option<String>,

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
        /// Accept the key only from client addresses in this network, e.g. 10.0.0.0/8,
        /// 2001:db8::/32, or one address (repeatable).
        #[arg(long = "allow-cidr", value_name = "CIDR")]
        allow_cidrs: Vec<Cidr>,
        /// Accept the key only from browser requests with this Origin, e.g.
        /// https://app.example.com or https://*.example.com (repeatable).
        #[arg(long = "allow-origin", value_name = "ORIGIN")]
        allow_origins: Vec<AllowedOrigin>,
        #[command(flatten)]
        usage: UsageArgs,
    },
    /// Set or remove a key's rate limits and credits (each flag replaces what it names).
    Limits {
        id: String,
        #[command(flatten)]
        usage: UsageArgs,
        /// Remove every rate limit.
        #[arg(long, conflicts_with = "ratelimits")]
        no_ratelimits: bool,
        /// Remove the credits (unlimited uses).
        #[arg(long, conflicts_with_all = ["credits", "refill"])]
        no_credits: bool,
    },
    /// Set or lift a key's network restrictions: each list given replaces the key's;
    /// --any-network and --any-origin lift them; what is not mentioned stays.
    Restrict {
        id: String,
        /// Allowed client network (repeatable; replaces the key's list).
        #[arg(
            long = "allow-cidr",
            value_name = "CIDR",
            conflicts_with = "any_network"
        )]
        allow_cidrs: Vec<Cidr>,
        /// Allowed browser origin (repeatable; replaces the key's list).
        #[arg(
            long = "allow-origin",
            value_name = "ORIGIN",
            conflicts_with = "any_origin"
        )]
        allow_origins: Vec<AllowedOrigin>,
        /// Lift the network restriction: any client address.
        #[arg(long)]
        any_network: bool,
        /// Lift the origin restriction: any origin.
        #[arg(long)]
        any_origin: bool,
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
    Verify {
        /// The client address to check a key's allowed networks against (without it, a
        /// key with allowed networks is refused: the address is unknown).
        #[arg(long, value_name = "IP")]
        client_addr: Option<std::net::IpAddr>,
        /// The Origin to check a key's allowed origins against.
        #[arg(long, value_name = "ORIGIN")]
        origin: Option<String>,
    },
    /// Apply pending schema migrations (opening the store also does this).
    Migrate,
    /// Run the server: forward auth for reverse proxies (/auth), the admin API
    /// (/api/api-keys), /healthz and /readyz. Settings: a TOML file, KEYGATE_* variables,
    /// flags (see keygate-cli's README).
    Serve {
        /// TOML configuration file (else KEYGATE_CONFIG); the environment overrides it.
        #[arg(long, value_name = "FILE")]
        config: Option<std::path::PathBuf>,
    },
}

/// The store URL when neither `--db` nor `KEYGATE_DB` gives one.
const DEFAULT_DB: &str = "sqlite://keygate.db";
/// The opaque-key prefix when neither `--prefix` nor `KEYGATE_PREFIX` gives one.
const DEFAULT_PREFIX: &str = "key";

/// Usage limits at mint or with `limits` (Unkey's model; see `keygate::limits`).
#[derive(clap::Args)]
struct UsageArgs {
    /// A rate limit NAME=LIMIT/WINDOW[:burst=N][:manual], e.g. requests=100/1m
    /// (repeatable; replaces the key's limits). A manual limit is charged only by handlers.
    #[arg(long = "ratelimit", value_parser = parse_ratelimit)]
    ratelimits: Vec<RateLimit>,
    /// Usage credits to start with (restarts the count).
    #[arg(long)]
    credits: Option<u64>,
    /// Refill the credits: daily:AMOUNT or monthly:AMOUNT[:DAY] (needs --credits).
    #[arg(long, value_parser = parse_refill, requires = "credits")]
    refill: Option<CreditRefill>,
}

impl UsageArgs {
    fn credits(&self) -> Option<CreditPolicy> {
        self.credits.map(|remaining| {
            let policy = CreditPolicy::new(remaining);
            match self.refill {
                Some(refill) => policy.refill(refill),
                None => policy,
            }
        })
    }
}

/// `requests=100/1m`, `tokens=50000/1h:burst=5000:manual`.
fn parse_ratelimit(text: &str) -> Result<RateLimit, String> {
    let bad =
        || format!("{text:?}: expected NAME=LIMIT/WINDOW[:burst=N][:manual], e.g. requests=100/1m");
    let (name, rest) = text.split_once('=').ok_or_else(bad)?;
    let mut parts = rest.split(':');
    let (limit, window) = parts
        .next()
        .and_then(|p| p.split_once('/'))
        .ok_or_else(bad)?;
    let limit: u64 = limit.parse().map_err(|_| bad())?;
    let window = parse_duration(window)?;
    let ms = u64::try_from(window.num_milliseconds()).map_err(|_| bad())?;
    let mut rate = RateLimit::new(name, limit, ms);
    for option in parts {
        match option.split_once('=') {
            Some(("burst", n)) => rate = rate.with_burst(n.parse().map_err(|_| bad())?),
            None if option == "manual" => rate = rate.manual(),
            _ => return Err(bad()),
        }
    }
    rate.validate().map_err(|e| format!("{text:?}: {e}"))?;
    Ok(rate)
}

/// `daily:100`, `monthly:1000`, `monthly:1000:15`.
fn parse_refill(text: &str) -> Result<CreditRefill, String> {
    let bad = || format!("{text:?}: expected daily:AMOUNT or monthly:AMOUNT[:DAY]");
    let mut parts = text.split(':');
    let refill = match (parts.next(), parts.next(), parts.next()) {
        (Some("daily"), Some(amount), None) => {
            CreditRefill::daily(amount.parse().map_err(|_| bad())?)
        }
        (Some("monthly"), Some(amount), day) => CreditRefill::monthly(
            amount.parse().map_err(|_| bad())?,
            day.map_or(Ok(1), str::parse).map_err(|_| bad())?,
        ),
        _ => return Err(bad()),
    };
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(refill)
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Opaque,
    Jwt,
}

/// A failure with its exit code.
struct Fail(u8, String);

/// Exit code for bad input or configuration.
const CONFIG: u8 = 2;
/// Exit code for a store failure.
const STORE: u8 = 3;

impl From<Error> for Fail {
    fn from(error: Error) -> Self {
        match error {
            Error::Store(e) => Fail(store_exit_code(&e), format!("store: {}", chain(&e))),
            Error::Limiter(e) => Fail(STORE, format!("usage limiter: {}", chain(&e))),
            Error::PepperMismatch { .. } => Fail(CONFIG, wrong_pepper(&error)),
            // The library says "build the gate with a JWT secret"; an operator sets a variable.
            Error::JwtDisabled => Fail(
                CONFIG,
                "JWT keys are not enabled: set KEYGATE_JWT_SECRET or KEYGATE_JWT_SECRET_FILE"
                    .into(),
            ),
            other => Fail(CONFIG, chain(&other)),
        }
    }
}

/// A pepper mismatch, and where the CLI's pepper comes from.
fn wrong_pepper(error: &dyn std::error::Error) -> String {
    format!(
        "{}; check {} or {}, and {}",
        chain(error),
        Pepper::ENV,
        Pepper::ENV_FILE,
        Pepper::ENV_VERSION
    )
}

/// A store error is the store's failure (3), unless it says the URL or the driver's
/// configuration is wrong: then it is the operator's configuration (2).
fn store_exit_code(error: &StoreError) -> u8 {
    if is_config_error(error) {
        CONFIG
    } else {
        STORE
    }
}

fn is_config_error(error: &StoreError) -> bool {
    if matches!(
        error,
        StoreError::InvalidUrl(_) | StoreError::TlsUnavailable(_)
    ) {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if matches!(
            e.downcast_ref::<keygate::sqlx::Error>(),
            Some(keygate::sqlx::Error::Configuration(_))
        ) || e
            .downcast_ref::<keygate::redis::RedisError>()
            .is_some_and(|e| e.kind() == keygate::redis::ErrorKind::InvalidClientConfig)
        {
            return true;
        }
        source = e.source();
    }
    false
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
            return ExitCode::from(CONFIG);
        }
        Err(e) => {
            // clap's whole message: what is wrong, the usage line, where to find help.
            eprint!("{}", escape_keeping_lines(&e.to_string()));
            return ExitCode::from(CONFIG);
        }
    };
    if let Command::Serve { config } = cli.command {
        let overrides = keygate_cli::serve::Overrides::new(cli.db, cli.prefix, config);
        return keygate_cli::serve::main(&overrides);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keygate: error: cannot start the runtime: {e}");
            return ExitCode::from(CONFIG);
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
    let db = cli.db.as_deref().unwrap_or(DEFAULT_DB);
    let prefix = cli.prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
    let needs_secrets = matches!(
        cli.command,
        Command::Mint { .. } | Command::Rotate { .. } | Command::Verify { .. }
    );
    // Configuration first: a missing or bad secret is said before any network wait.
    let pepper = if needs_secrets {
        pepper()?
    } else {
        // list/show/revoke/activate/delete never hash: a throwaway pepper keeps them
        // usable without the secret.
        Pepper::generate(0).map_err(|e| Fail(CONFIG, chain(&e)))?
    };
    let jwt_secret = if needs_secrets {
        // Checked before the store is opened: a short secret is a configuration error.
        secret("KEYGATE_JWT_SECRET")?
            .map(JwtSecret::new)
            .transpose()
            .map_err(|e| Fail(CONFIG, chain(&e)))?
    } else {
        None
    };
    let store = match keygate::open_store(db).await {
        Ok(store) => store,
        Err(e) => {
            let mut message = format!("cannot open {}: {}", redact_url(db), chain(&e));
            if matches!(e, StoreError::Timeout) {
                if let Some(cause) = connect_failure(db).await {
                    message.push_str(": ");
                    message.push_str(&cause);
                }
            }
            return Err(Fail(store_exit_code(&e), message));
        }
    };
    if let Command::Migrate = cli.command {
        eprintln!("keygate: migrations applied to {}", escape(&redact_url(db)));
        return Ok(());
    }
    let mut builder = Keygate::builder(store, pepper).prefix(prefix);
    if let Some(secret) = jwt_secret {
        builder = builder.jwt_secret(secret);
    }
    let gate = builder.build().map_err(|e| Fail(CONFIG, chain(&e)))?;
    if needs_secrets {
        // The wrong pepper would mint keys that never verify, and refuse every key.
        gate.check_pepper().await?;
    }
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
            allow_cidrs,
            allow_origins,
            usage,
        } => {
            let mut new = NewKey::new(name, user)
                .allowed_cidrs(allow_cidrs)
                .allowed_origins(allow_origins)
                .format(match format {
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
            if let Some(credits) = usage.credits() {
                new = new.credits(credits);
            }
            new = new.ratelimits(usage.ratelimits);
            let issued = gate.mint(new).await?;
            eprintln!(
                "keygate: minted key {} for {}",
                issued.record.id,
                escape(&issued.record.owner)
            );
            println!("{}", issued.key.expose());
        }
        Command::List { user, json } => {
            let mut query = ListQuery::new().limit(keygate::bounds::MAX_PAGE);
            query.owner = user;
            loop {
                let page = gate.list(query.clone()).await?;
                for record in &page.records {
                    if json {
                        println!("{}", to_json(&KeyView(record))?);
                    } else {
                        println!(
                            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                            record.id,
                            if record.active { "active" } else { "inactive" },
                            record.format,
                            escape(&record.owner),
                            record
                                .expires_at
                                .map_or("never".to_owned(), |at| at.to_rfc3339()),
                            limits_summary(record),
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
        Command::Limits {
            id,
            usage,
            no_ratelimits,
            no_credits,
        } => {
            let mut patch = KeyPatch::new();
            if no_ratelimits {
                patch = patch.ratelimits([]);
            } else if !usage.ratelimits.is_empty() {
                patch = patch.ratelimits(usage.ratelimits.clone());
            }
            if no_credits {
                patch = patch.credits(None);
            } else if let Some(credits) = usage.credits() {
                patch = patch.credits(Some(credits));
            }
            if patch.is_empty() {
                return Err(Fail(
                    CONFIG,
                    "nothing to change: give --ratelimit, --credits, --no-ratelimits or --no-credits"
                        .to_owned(),
                ));
            }
            let record = gate.update(parse_id(&id)?, patch).await?;
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
        Command::Restrict {
            id,
            allow_cidrs,
            allow_origins,
            any_network,
            any_origin,
        } => {
            let mut patch = KeyPatch::new();
            if any_network || !allow_cidrs.is_empty() {
                patch = patch.allowed_cidrs(allow_cidrs);
            }
            if any_origin || !allow_origins.is_empty() {
                patch = patch.allowed_origins(allow_origins);
            }
            if patch.is_empty() {
                return Err(Fail(
                    CONFIG,
                    "restrict: give --allow-cidr, --allow-origin, --any-network or --any-origin"
                        .to_owned(),
                ));
            }
            let record = gate.update(parse_id(&id)?, patch).await?;
            eprintln!("keygate: restricted {}", record.id);
            println!("{}", to_json(&KeyView(&record))?);
        }
        Command::Verify {
            client_addr,
            origin,
        } => {
            let mut context = RequestContext::new().maybe_client_addr(client_addr);
            if let Some(origin) = &origin {
                context = context.origin(origin);
            }
            verify(gate, &context).await?;
        }
        // `run` applied the migrations when it opened the store: nothing is left to do;
        // `main` ran `serve` before getting here.
        Command::Migrate | Command::Serve { .. } => {}
    }
    Ok(())
}

/// `keygate verify`: the key from stdin or the environment, checked in `context`.
async fn verify(gate: &Keygate, context: &RequestContext) -> Result<(), Fail> {
    match gate.verify_with(&read_key()?, context).await {
        Ok(principal) => println!("{}", to_json(&principal)?),
        Err(error @ keygate::VerifyError::PepperMismatch { .. }) => {
            return Err(Fail(CONFIG, wrong_pepper(&error)));
        }
        // A store that is down or holds a corrupt record is the store's failure (3),
        // never a refused key (1).
        Err(error) if error.is_server_error() => {
            return Err(Fail(STORE, chain(&error)));
        }
        // The key is another application's, or the prefix setting is not this store's:
        // say which prefix was expected and where it comes from.
        Err(error) if error.rejection() == Some(keygate::Rejection::WrongPrefix) => {
            return Err(Fail(
                1,
                format!(
                    "key refused: wrong_prefix (expected {}_…; the prefix comes from \
                     KEYGATE_PREFIX or --prefix)",
                    gate.prefix()
                ),
            ));
        }
        Err(error) => return Err(Fail(1, format!("key refused: {}", error.reason()))),
    }
    Ok(())
}

/// A key's usage limits and network restrictions for `list`'s table, in the flags'
/// own syntax, space-separated, `-` for none:
/// `requests=100/1m tokens=50000/1h:burst=5000:manual credits=1000 refill=monthly:1000:15
/// cidrs=2 origins=1`. `credits` is the count as set (the count left lives in the
/// server's limiter; the admin API shows it).
fn limits_summary(record: &KeyRecord) -> String {
    let mut parts: Vec<String> = Vec::new();
    for limit in &record.ratelimits {
        let mut part = format!(
            "{}={}/{}",
            escape(&limit.name),
            limit.limit,
            window_text(limit.duration)
        );
        if let Some(burst) = limit.burst {
            let _ = write!(part, ":burst={burst}");
        }
        if !limit.auto_apply {
            part.push_str(":manual");
        }
        parts.push(part);
    }
    if let Some(credits) = &record.credits {
        parts.push(format!("credits={}", credits.remaining));
        if let Some(refill) = &credits.refill {
            parts.push(match refill.interval {
                RefillInterval::Daily => format!("refill=daily:{}", refill.amount),
                RefillInterval::Monthly => format!(
                    "refill=monthly:{}:{}",
                    refill.amount,
                    refill.refill_day.unwrap_or(1)
                ),
                _ => format!("refill=other:{}", refill.amount),
            });
        }
    }
    let cidrs = record.network.cidrs().len();
    if cidrs > 0 {
        parts.push(format!("cidrs={cidrs}"));
    }
    let origins = record.network.origins().len();
    if origins > 0 {
        parts.push(format!("origins={origins}"));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

/// A rate limit's window as `--ratelimit` takes it (`1m`, `24h`, `90s`); a window of
/// milliseconds that is no whole second (set through the API) as `1500ms`.
fn window_text(ms: u64) -> String {
    // `Some(n)` when `size` divides `total` n times.
    let times = |total: u64, size: u64| {
        (total.checked_rem(size) == Some(0))
            .then(|| total.checked_div(size))
            .flatten()
    };
    let Some(secs) = times(ms, 1000) else {
        return format!("{ms}ms");
    };
    for (unit, size) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if let Some(n) = times(secs, size) {
            return format!("{n}{unit}");
        }
    }
    format!("{secs}s")
}

/// One line of JSON. serde_json escapes C0 controls in strings but writes DEL, C1
/// controls (U+0080–U+009F, which some terminals obey) and bidi controls raw; those are
/// escaped here too, as `\uXXXX`, which is the same JSON string.
fn to_json(value: &impl serde::Serialize) -> Result<String, Fail> {
    let json = serde_json::to_string(value)
        .map_err(|e| Fail(CONFIG, format!("cannot render JSON: {e}")))?;
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

/// [`escape`], but line breaks stay: for multi-line messages such as clap's.
fn escape_keeping_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for piece in text.split_inclusive('\n') {
        let (line, newline) = match piece.strip_suffix('\n') {
            Some(line) => (line, "\n"),
            None => (piece, ""),
        };
        out.push_str(&escape(line));
        out.push_str(newline);
    }
    out
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
                .map_err(|e| Fail(CONFIG, format!("cannot read the key from stdin: {e}")))?;
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
        .map_err(|_| Fail(CONFIG, format!("{text:?} is not a key id (a UUID)")))
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

/// The pepper from `KEYGATE_PEPPER` or `KEYGATE_PEPPER_FILE`, as the library reads it.
fn pepper() -> Result<Pepper, Fail> {
    Pepper::from_default_env()
        .map_err(|e| Fail(CONFIG, chain(&e)))?
        .ok_or_else(|| {
            Fail(
                CONFIG,
                format!(
                    "no pepper: set {} or {} (32+ bytes)",
                    Pepper::ENV,
                    Pepper::ENV_FILE
                ),
            )
        })
}

/// Longest wait for the diagnostic connection of [`connect_failure`].
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a PostgreSQL store could not be reached: its pool reports only that it timed out
/// waiting for a connection, so one direct connection attempt says what went wrong
/// (refused, unknown host, authentication). `None` for other stores, or when the attempt
/// succeeds or says nothing in time.
async fn connect_failure(url: &str) -> Option<String> {
    use keygate::sqlx::ConnectOptions as _;
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
        return None;
    }
    // With keygate's TLS rules, as the store connected: never a cleartext retry.
    let options = keygate::PostgresStore::connect_options(url).ok()?;
    match tokio::time::timeout(PROBE_TIMEOUT, options.connect()).await {
        Ok(Err(error)) => Some(chain(&error)),
        Ok(Ok(_)) | Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_print_as_the_flag_takes_them() {
        assert_eq!(window_text(60_000), "1m");
        assert_eq!(window_text(1000), "1s");
        assert_eq!(window_text(90_000), "90s");
        assert_eq!(window_text(86_400_000), "1d");
        assert_eq!(window_text(1_209_600_000), "2w");
        assert_eq!(window_text(1500), "1500ms");
        for ms in [1000, 60_000, 90_000, 3_600_000, 86_400_000] {
            let text = window_text(ms);
            let back = parse_duration(&text).unwrap().num_milliseconds();
            assert_eq!(u64::try_from(back).unwrap(), ms, "{text}");
        }
    }

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
}
