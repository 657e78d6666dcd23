//! Gateway tokens: the entries, the lookup table, and where they come from.
//!
//! - [`format`] parses the JSON token list (the native form and the original
//!   ChatGptApiGateway `appsettings.json`), for files and SSM alike.
//! - [`TokenSet`] is the parsed list, indexed by SHA-256 digest so a request
//!   costs one hash and one map lookup, whatever the list's length.
//! - [`cache`] holds the current list and, for remote sources, refreshes it;
//! - [`bundled`] is the list compiled into the binary, if any.
//!
//! Where a list comes from at run time (a file, SSM) is [`crate::sources`]'s
//! business.

pub mod format;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::ApiKey;
use format::ParseError;

/// The token list compiled into the binary (see `build.rs` and `bundle/`), if any.
pub mod bundled {
    include!(concat!(env!("OUT_DIR"), "/bundled_tokens.rs"));

    /// The bundled list's text.
    pub fn text() -> Option<&'static str> {
        BUNDLED_TOKENS
    }
}

/// SHA-256 of a token: what the lookup table is keyed by.
pub type TokenDigest = [u8; 32];

/// Computes the digest a token is stored and looked up under.
pub fn digest(token: &[u8]) -> TokenDigest {
    Sha256::digest(token).into()
}

/// A digest in lower-case hex, as the `sha256` key holds it.
pub fn hex(digest: &TokenDigest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One gateway token.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    /// A label for logs; entries without a name get `#<index>`.
    pub name: String,
    /// SHA-256 of the token; the plaintext is never kept.
    pub digest: TokenDigest,
    /// The instant from which the token is refused; `None` never expires.
    pub expires: Option<DateTime<Utc>>,
    /// An OpenAI key injected upstream for this token's requests.
    pub upstream_key: Option<ApiKey>,
}

impl TokenEntry {
    /// Whether the token is refused at `now`. A token is valid strictly before
    /// its expiry instant, as "expires at 23:00" means 23:00 is too late.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|at| now >= at)
    }
}

/// The token list, indexed for constant-cost lookup.
#[derive(Debug, Clone, Default)]
pub struct TokenSet {
    entries: Vec<TokenEntry>,
    by_digest: HashMap<TokenDigest, usize>,
}

impl TokenSet {
    /// Builds the index. Fails on a token listed twice, naming both entries.
    pub fn new(entries: Vec<TokenEntry>) -> Result<Self, ParseError> {
        let mut by_digest = HashMap::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            if let Some(first) = by_digest.insert(entry.digest, index) {
                return Err(ParseError::DuplicateToken {
                    index,
                    name: entry.name.clone(),
                    first,
                    first_name: entries[first].name.clone(),
                });
            }
        }
        Ok(Self { entries, by_digest })
    }

    /// The entries, in file order.
    pub fn entries(&self) -> &[TokenEntry] {
        &self.entries
    }

    /// True when no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Finds the entry for a token, comparing digests in constant time.
    /// The comparison is exact: tokens are case-sensitive.
    pub fn find(&self, token: &[u8]) -> Option<&TokenEntry> {
        let wanted = digest(token);
        let entry = &self.entries[*self.by_digest.get(&wanted)?];
        bool::from(entry.digest.ct_eq(&wanted)).then_some(entry)
    }

    /// Checks a presented token at `now`.
    pub fn verify(&self, token: &[u8], now: DateTime<Utc>) -> Result<&TokenEntry, Refused> {
        let entry = self.find(token).ok_or(Refused::Unknown)?;
        if entry.is_expired(now) {
            return Err(Refused::Expired);
        }
        Ok(entry)
    }
}

/// Why a presented token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not in the list.
    Unknown,
    /// In the list, past its expiry.
    Expired,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn entry(name: &str, token: &str, expires: Option<DateTime<Utc>>) -> TokenEntry {
        TokenEntry {
            name: name.into(),
            digest: digest(token.as_bytes()),
            expires,
            upstream_key: None,
        }
    }

    #[test]
    fn lookup_is_case_sensitive_and_checks_expiry() {
        let at = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
        let set = TokenSet::new(vec![
            entry("a", "Secret-A", Some(at)),
            entry("b", "b", None),
        ])
        .unwrap();
        assert_eq!(set.find(b"Secret-A").unwrap().name, "a");
        assert!(set.find(b"secret-a").is_none());
        assert!(set.find(b"SECRET-A").is_none());
        let before = at - chrono::Duration::seconds(1);
        assert_eq!(set.verify(b"Secret-A", before).unwrap().name, "a");
        assert_eq!(set.verify(b"Secret-A", at).unwrap_err(), Refused::Expired);
        assert_eq!(set.verify(b"nope", before).unwrap_err(), Refused::Unknown);
        assert_eq!(
            set.verify(b"b", at + chrono::Duration::days(9999))
                .unwrap()
                .name,
            "b"
        );
    }

    #[test]
    fn duplicate_tokens_are_refused_without_revealing_them() {
        let err = TokenSet::new(vec![
            entry("a", "dup-secret", None),
            entry("b", "dup-secret", None),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("entry 1 (b)") && err.contains("entry 0 (a)"),
            "{err}"
        );
        assert!(!err.contains("dup-secret"));
    }
}
