//! The request path as policy and metering read it.
//!
//! The upstream decodes a path before it routes it, so
//! `/v1/chat/%63ompletions` *is* chat completions there. Policy and metering
//! therefore read the path normalised as RFC 3986 §6.2.2 says: percent-encoded
//! unreserved characters decoded, other percent-encodings' hex upper-cased.
//! (Dot segments never get this far: [`crate::proxy`] refuses them.) The
//! path is still forwarded byte for byte as the client sent it.

use std::borrow::Cow;

/// `path` normalised (RFC 3986 §6.2.2.1 and §6.2.2.2); borrowed when it
/// already is.
pub fn normalise(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) if is_unreserved(byte) => {
                out.push(char::from(byte));
                i += 3;
            }
            Some(byte) => {
                out.push_str(&format!("%{byte:02X}"));
                i += 3;
            }
            None => {
                // Any other byte (a `%` without two hex digits stays as it is,
                // and `placeable` refuses it).
                let ch = path[i..].chars().next().unwrap_or('%');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    Cow::Owned(out)
}

/// Whether a normalised path is one policy can place: ASCII, no
/// percent-encoding left (an encoded `/` or a control byte routes
/// differently from server to server), no empty segment.
pub fn placeable(normalised: &str) -> bool {
    normalised.is_ascii()
        && !normalised.contains('%')
        && !normalised.contains("//")
        && normalised.starts_with('/')
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_characters_are_decoded_and_the_rest_kept() {
        assert_eq!(normalise("/v1/chat/%63ompletions"), "/v1/chat/completions");
        assert_eq!(normalise("/v1/%43hat/%2Dx%7e"), "/v1/Chat/-x~");
        assert_eq!(
            normalise("/v1/chat%2fcompletions"),
            "/v1/chat%2Fcompletions"
        );
        assert!(matches!(normalise("/v1/models"), Cow::Borrowed(_)));
        assert_eq!(normalise("/v1/x%"), "/v1/x%");
        assert_eq!(normalise("/v1/x%zz"), "/v1/x%zz");
        assert_eq!(normalise("/v1/é%41"), "/v1/éA");
        assert!(placeable(&normalise("/v1/chat/%63ompletions")));
        for bad in [
            "/v1/chat%2Fcompletions",
            "/v1//chat/completions",
            "/v1/x%",
            "/v1/é",
        ] {
            assert!(!placeable(&normalise(bad)), "{bad}");
        }
    }
}
