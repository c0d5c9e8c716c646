//! Checks on the text, scopes, metadata and dates a caller hands to
//! [`Keygate::mint`](crate::Keygate::mint) and [`Keygate::update`](crate::Keygate::update)
//! (and so to the admin API, which calls them). Each refusal is an
//! [`Error::InvalidInput`] naming the field; nothing is written.
//!
//! The rules:
//!
//! | field | length | refused characters |
//! |---|---|---|
//! | `name` | 1..=[`MAX_NAME_LEN`] characters, not blank | control characters, bidi embeddings/overrides/isolates |
//! | `description` | up to [`MAX_DESCRIPTION_LEN`] characters | control characters (newlines too), bidi embeddings/overrides/isolates |
//! | `owner`, `created_by` | 1..=[`MAX_ID_LEN`] characters, no leading or trailing whitespace | control, bidi and invisible formatting characters |
//! | each scope | 1..=[`MAX_SCOPE_LEN`] characters, at most [`MAX_SCOPES`] scopes | whitespace, control, bidi and invisible formatting characters |
//! | `metadata` | at most [`MAX_METADATA_BYTES`] bytes as compact JSON | (none) |
//! | `expires_at` | not after [`MAX_EXPIRY`] (9999-12-31T23:59:59Z) | (n/a) |
//!
//! Why these characters. Control characters reach terminals (`keygate list`) and logs,
//! where escape sequences can retitle, clear or repaint an operator's screen. Bidi
//! embedding, override and isolate characters (U+202A–U+202E, U+2066–U+2069) reorder the
//! text around them when it is displayed (the "Trojan Source" trick), so a name or
//! description could display as something it is not. Display text (`name`,
//! `description`) may keep the zero-width joiners and marks (U+200B–U+200F) that emoji
//! sequences and several scripts need. Identifiers (`owner`, `created_by`, scopes) may not:
//! there an invisible character makes two ids that look the same differ, which is how an
//! owner or scope is spoofed in an admin UI.

use chrono::{DateTime, Utc};

use crate::error::Error;
use crate::record::Metadata;

/// Longest key name accepted, in characters.
pub const MAX_NAME_LEN: usize = 256;
/// Longest description accepted, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Longest owner id or `created_by` accepted, in characters.
pub const MAX_ID_LEN: usize = 256;
/// Longest scope accepted, in characters.
pub const MAX_SCOPE_LEN: usize = 128;
/// Most scopes one key may carry.
pub const MAX_SCOPES: usize = 64;
/// Largest metadata accepted, in bytes of compact JSON.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// The latest expiry accepted: the last second of year 9999. Later dates have no RFC 3339
/// form (which the admin API and the CLI print), and a JavaScript `Date` cannot hold
/// chrono's far end.
pub const MAX_EXPIRY: DateTime<Utc> = match DateTime::from_timestamp(253_402_300_799, 0) {
    Some(at) => at,
    None => DateTime::<Utc>::MIN_UTC,
};

/// Bidi embeddings, overrides and isolates: they reorder the text around them.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that display as nothing (or almost nothing) but make two strings differ:
/// zero-width spaces and joiners, directional marks, word joiner and invisible operators,
/// the byte order mark, soft hyphen, Mongolian vowel separator, Arabic letter mark.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2060}'..='\u{2064}'
            | '\u{FEFF}'
    )
}

/// A display name: not blank, at most [`MAX_NAME_LEN`] characters, no control or bidi
/// control characters.
pub(crate) fn name(name: &str) -> Result<(), Error> {
    if name.trim().is_empty() {
        return Err(Error::invalid("name", "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(Error::invalid("name", "longer than 256 characters"));
    }
    display_chars("name", name)
}

/// A description: at most [`MAX_DESCRIPTION_LEN`] characters (empty is fine), no control
/// or bidi control characters.
pub(crate) fn description(description: &str) -> Result<(), Error> {
    if description.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(Error::invalid("description", "longer than 1024 characters"));
    }
    display_chars("description", description)
}

fn display_chars(field: &'static str, text: &str) -> Result<(), Error> {
    if text.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    if text.chars().any(is_bidi_control) {
        return Err(Error::invalid(
            field,
            "must not contain bidi embedding, override or isolate characters",
        ));
    }
    Ok(())
}

/// An owner id.
pub(crate) fn owner(owner: &str) -> Result<(), Error> {
    identifier("owner", owner)
}

/// The `created_by` user id.
pub(crate) fn created_by(user: &str) -> Result<(), Error> {
    identifier("created_by", user)
}

fn identifier(field: &'static str, id: &str) -> Result<(), Error> {
    if id.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if id.chars().count() > MAX_ID_LEN {
        return Err(Error::invalid(field, "longer than 256 characters"));
    }
    if id.trim() != id {
        return Err(Error::invalid(
            field,
            "must not start or end with whitespace",
        ));
    }
    id_chars(field, id)
}

fn id_chars(field: &'static str, id: &str) -> Result<(), Error> {
    if id.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    if id.chars().any(|c| is_bidi_control(c) || is_invisible(c)) {
        return Err(Error::invalid(
            field,
            "must not contain bidi or invisible formatting characters",
        ));
    }
    Ok(())
}

/// A key's scopes: at most [`MAX_SCOPES`], each 1..=[`MAX_SCOPE_LEN`] characters without
/// whitespace, control, bidi or invisible characters. An empty set is allowed (a key that
/// may do nothing).
pub(crate) fn scopes<'a>(scopes: impl ExactSizeIterator<Item = &'a String>) -> Result<(), Error> {
    if scopes.len() > MAX_SCOPES {
        return Err(Error::invalid("scopes", "more than 64 scopes"));
    }
    for scope in scopes {
        if scope.is_empty() {
            return Err(Error::invalid("scopes", "a scope must not be empty"));
        }
        if scope.chars().count() > MAX_SCOPE_LEN {
            return Err(Error::invalid(
                "scopes",
                "a scope is longer than 128 characters",
            ));
        }
        if scope.chars().any(char::is_whitespace) {
            return Err(Error::invalid(
                "scopes",
                "a scope must not contain whitespace",
            ));
        }
        id_chars("scopes", scope)?;
    }
    Ok(())
}

/// Metadata: at most [`MAX_METADATA_BYTES`] as compact JSON. Counted while serializing,
/// which stops at the cap, so an oversize map costs no more than the cap to refuse.
pub(crate) fn metadata(metadata: &Metadata) -> Result<(), Error> {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            if self.0 > MAX_METADATA_BYTES {
                return Err(std::io::Error::other("metadata over the cap"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    if metadata.is_empty() {
        return Ok(());
    }
    serde_json::to_writer(&mut Counter(0), metadata)
        .map_err(|_| Error::invalid("metadata", "larger than 16384 bytes as JSON"))
}

/// An expiry date: no later than [`MAX_EXPIRY`], and not before the year 1 (stores keep
/// the years 1 to 9999 only).
pub(crate) fn expiry(field: &'static str, at: DateTime<Utc>) -> Result<(), Error> {
    if at > MAX_EXPIRY {
        return Err(Error::invalid(field, "after 9999-12-31T23:59:59Z"));
    }
    if !crate::record::in_stored_range(at) {
        return Err(Error::invalid(field, "before the year 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<(), Error>) -> Option<&'static str> {
        match result {
            Err(Error::InvalidInput { field, .. }) => Some(field),
            _ => None,
        }
    }

    #[test]
    fn names_refuse_controls_and_bidi_but_keep_joiners() {
        assert!(name("Backup Script").is_ok());
        assert!(name("家族 👨\u{200D}👩\u{200D}👧").is_ok(), "ZWJ emoji");
        assert!(name("می\u{200C}خواهم").is_ok(), "ZWNJ in Persian");
        assert!(name(&"x".repeat(MAX_NAME_LEN)).is_ok());
        for bad in [
            String::new(),
            "  ".into(),
            "x".repeat(MAX_NAME_LEN + 1),
            "a\u{1b}[2Jb".into(),
            "a\nb".into(),
            "a\u{7f}".into(),
            "a\u{9b}31m".into(),
            "invoice\u{202E}fdp.exe".into(),
            "a\u{2066}b\u{2069}".into(),
        ] {
            assert_eq!(field_of(name(&bad)), Some("name"), "{bad:?}");
        }
    }

    #[test]
    fn descriptions_are_capped_and_single_line() {
        assert!(description("").is_ok());
        assert!(description(&"é".repeat(MAX_DESCRIPTION_LEN)).is_ok());
        for bad in [
            "é".repeat(MAX_DESCRIPTION_LEN + 1),
            "line\nline".into(),
            "\u{1b}]0;pwned\u{7}".into(),
            "\u{202D}x".into(),
        ] {
            assert_eq!(field_of(description(&bad)), Some("description"), "{bad:?}");
        }
    }

    #[test]
    fn owner_ids_are_visible_and_trimmed() {
        assert!(owner("user-42").is_ok());
        assert!(owner("alice@example.com").is_ok());
        assert!(owner(&"u".repeat(MAX_ID_LEN)).is_ok());
        for bad in [
            String::new(),
            " ".into(),
            " alice".into(),
            "alice\t".into(),
            "u".repeat(MAX_ID_LEN + 1),
            "u2\u{1b}]0;pwned\u{7}\u{1b}[2J".into(),
            "ad\u{200B}min".into(),
            "admin\u{FEFF}".into(),
            "\u{202E}nimda".into(),
        ] {
            assert_eq!(field_of(owner(&bad)), Some("owner"), "{bad:?}");
            assert_eq!(field_of(created_by(&bad)), Some("created_by"), "{bad:?}");
        }
    }

    #[test]
    fn scopes_are_tokens_and_few() {
        let ok: Vec<String> = vec!["library:read".into(), "admin".into()];
        assert!(scopes(ok.iter()).is_ok());
        assert!(scopes([].iter()).is_ok());
        let many: Vec<String> = (0..MAX_SCOPES).map(|i| format!("s{i}")).collect();
        assert!(scopes(many.iter()).is_ok());
        let too_many: Vec<String> = (0..=MAX_SCOPES).map(|i| format!("s{i}")).collect();
        assert_eq!(field_of(scopes(too_many.iter())), Some("scopes"));
        for bad in [
            String::new(),
            "library read".into(),
            "admin\n".into(),
            "s".repeat(MAX_SCOPE_LEN + 1),
            "ad\u{200D}min".into(),
            "\u{1b}[2J".into(),
        ] {
            let list = [bad.clone()];
            assert_eq!(field_of(scopes(list.iter())), Some("scopes"), "{bad:?}");
        }
    }

    #[test]
    fn metadata_is_capped_by_its_json_size() {
        let mut map = Metadata::new();
        assert!(metadata(&map).is_ok());
        // {"k":"…"} is 8 bytes around the value.
        map.insert("k".into(), "x".repeat(MAX_METADATA_BYTES - 8).into());
        assert!(metadata(&map).is_ok());
        map.insert("k".into(), "x".repeat(MAX_METADATA_BYTES - 7).into());
        assert_eq!(field_of(metadata(&map)), Some("metadata"));
    }

    #[test]
    fn expiries_end_with_year_9999() {
        assert_eq!(MAX_EXPIRY.to_rfc3339(), "9999-12-31T23:59:59+00:00");
        assert!(expiry("expires_at", MAX_EXPIRY).is_ok());
        assert_eq!(
            field_of(expiry(
                "expires_at",
                MAX_EXPIRY + chrono::TimeDelta::microseconds(1)
            )),
            Some("expires_at")
        );
        assert_eq!(
            field_of(expiry("grace", DateTime::<Utc>::MAX_UTC)),
            Some("grace")
        );
        // Stores keep the years 1 to 9999: an update must not write what verify refuses.
        assert_eq!(
            field_of(expiry("expires_at", DateTime::<Utc>::MIN_UTC)),
            Some("expires_at")
        );
    }
}
