//! The library side of the `keygate` binary (package `keygate-cli`): the standalone server
//! behind `keygate serve`, in [`serve`], so that its tests drive it in-process. The binary
//! itself (`src/main.rs`) is the operator CLI and calls [`serve::main`] for `serve`.
//!
//! Most users want the binary, not this library: see the package's README.

pub mod serve;

/// `error` and its causes, `: `-separated, each said once: drivers often repeat their
/// cause in their own message (`error communicating with database: Connection refused`,
/// then the `Connection refused` I/O error as its source).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let cause = e.to_string();
        if !cause.is_empty() && !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = e.source();
    }
    text
}

/// The URL without its secrets, for messages: the password of `user:password@` and the
/// value of every query parameter whose name suggests a secret (`password`, `pass`,
/// `sslpassword`, any name containing `pass`, `secret` or `token`, in any case) become
/// `***`. Errs on the side of masking more: the URL may be malformed (that is when it is
/// printed), so the userinfo runs to the last `@`, and the query is whatever follows the
/// first `?` left once the userinfo is masked.
pub fn redact_url(url: &str) -> String {
    mask_query(&mask_userinfo(url))
}

/// `scheme://user:***@rest`: everything from the userinfo's first `:` to the last `@`.
fn mask_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// The query (after the first `?`) with the values of secret-looking parameters masked.
fn mask_query(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_parameter(name) => format!("{name}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token"]
        .iter()
        .any(|word| name.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_kept_out_of_messages() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/keys"),
            "postgres://app:***@db:5432/keys"
        );
        assert_eq!(redact_url("sqlite://keys.db"), "sqlite://keys.db");
        assert_eq!(redact_url("redis://127.0.0.1/"), "redis://127.0.0.1/");
        for (url, redacted) in [
            (
                "postgres://app@db/keys?sslmode=require&password=hunter2",
                "postgres://app@db/keys?sslmode=require&password=***",
            ),
            (
                "postgres://db/keys?pass=hunter2&sslpassword=hunter2&PGPASSWORD=hunter2",
                "postgres://db/keys?pass=***&sslpassword=***&PGPASSWORD=***",
            ),
            (
                "postgres://db/keys?password=hunter2@x",
                "postgres://db/keys?password=***",
            ),
            (
                "postgres://app:hunter2?x@db/keys?password=hunter2",
                "postgres://app:***@db/keys?password=***",
            ),
            ("sqlite:keys.db?mode=rwc", "sqlite:keys.db?mode=rwc"),
            (
                "redis://db/?auth_token=hunter2",
                "redis://db/?auth_token=***",
            ),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
    }
}
