//! The one gate every untrusted JSON document passes before serde sees it.

/// `bytes` as text, when it is UTF-8 throughout and a JSON object at the top level.
///
/// serde reads a JSON array into a struct by position, and skips the members it ignores
/// without checking their UTF-8; RFC 8259 §8.1 and RFC 7519 §7.2 want neither. JSON
/// whitespace may precede the `{`.
pub(crate) fn object_text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
        .then_some(text)
}

#[cfg(test)]
mod tests {
    use super::object_text;

    #[test]
    fn only_utf8_objects_pass() {
        assert_eq!(object_text(b" \n{\"a\":1}"), Some(" \n{\"a\":1}"));
        for refused in [
            &b"[\"HS256\",null]"[..],
            b"\"x\"",
            b"1",
            b"",
            b"   ",
            b"\x0c{}",
            b"{\"p\":\"\xff\"}",
        ] {
            assert_eq!(object_text(refused), None, "{refused:?}");
        }
    }
}
