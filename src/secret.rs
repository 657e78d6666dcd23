//! Values that must never be formatted: gateway tokens and API keys.

use std::fmt;

use http::HeaderValue;

/// A secret value. `Debug` and `Display` print `[redacted]`; only
/// [`Secret::expose`] gives the value, so every use of it is greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself. Call it only where the value is sent on purpose.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// An upstream API key, checked once and kept as the ready `Authorization`
/// value (`Bearer <key>`, marked sensitive), so a request never rebuilds it
/// and a key that no header could carry is refused where it is configured.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    bearer: HeaderValue,
    bare: HeaderValue,
    fingerprint: u64,
}

/// The key is empty or holds characters a header value cannot carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the key is empty or not a valid header value")]
pub struct InvalidKey;

impl ApiKey {
    /// Checks a key (surrounding whitespace is dropped).
    pub fn new(key: &str) -> Result<Self, InvalidKey> {
        let key = key.trim();
        if key.is_empty() {
            return Err(InvalidKey);
        }
        let mut bearer = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| InvalidKey)?;
        bearer.set_sensitive(true);
        let mut bare = HeaderValue::from_str(key).map_err(|_| InvalidKey)?;
        bare.set_sensitive(true);
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut hasher);
            hasher.finish()
        };
        Ok(Self {
            bearer,
            bare,
            fingerprint,
        })
    }

    /// Tells this key from another without holding it (for the health of
    /// the upstream that refused it): kept in memory only, never written.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The `Authorization` value to send upstream.
    pub fn authorization(&self) -> &HeaderValue {
        &self.bearer
    }

    /// The key alone, for an `api-key` header (Azure).
    pub fn bare(&self) -> &HeaderValue {
        &self.bare
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_formats_its_value() {
        let s = Secret::new("sk-very-secret");
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "sk-very-secret");
        let k = ApiKey::new(" sk-very-secret\n").unwrap();
        assert_eq!(format!("{k:?}"), "[redacted]");
        assert_eq!(k.authorization(), "Bearer sk-very-secret");
        assert!(k.authorization().is_sensitive());
    }

    #[test]
    fn keys_no_header_can_carry_are_refused() {
        assert_eq!(ApiKey::new("  "), Err(InvalidKey));
        assert_eq!(ApiKey::new("sk-a\nb"), Err(InvalidKey));
        assert_eq!(ApiKey::new("sk-\u{7f}"), Err(InvalidKey));
    }
}
