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
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::limits::Limits;
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

/// The prefix of every token the gateway makes.
pub const TOKEN_PREFIX: &str = "gw-";

/// 32 bytes from the operating system's random source, base64url (43
/// characters): a made token's secret part, a console session's id.
pub fn random_id() -> Result<String, String> {
    use base64::Engine;
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| format!("no randomness available: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random))
}

/// A new token: [`TOKEN_PREFIX`] and [`random_id`].
pub fn generate() -> Result<String, String> {
    Ok(format!("{TOKEN_PREFIX}{}", random_id()?))
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
    /// The entry's name, which usage and limits are kept under; an entry
    /// without one gets `sha256:` and the first 12 hex digits of its digest.
    /// Shared: each request's record, figures and settlement hold it.
    pub name: Arc<str>,
    /// SHA-256 of the token; the plaintext is never kept.
    pub digest: TokenDigest,
    /// The instant from which the token is refused; `None` never expires.
    pub expires: Option<DateTime<Utc>>,
    /// An OpenAI key injected upstream for this token's requests.
    pub upstream_key: Option<ApiKey>,
    /// What the token may reach (`models`, `endpoints`); `None`: everything.
    pub rules: Option<Arc<Rules>>,
    /// An operator's token (`admin: true`): it may also read the gateway's
    /// own state (`GET /v1/gateway/upstreams`).
    pub admin: bool,
    /// The networks its requests may come from (`allow_ips`); `None`: any.
    pub allow_ips: Option<Arc<[IpNet]>>,
}

/// A token's allowlists. Each is `None` when the entry does not restrict it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rules {
    /// Allowed model names; one ending in `*` allows every name it prefixes.
    pub models: Option<Vec<String>>,
    /// Allowed path prefixes, as the client sends the path.
    pub endpoints: Option<Vec<String>>,
    /// Rate limits and budgets.
    pub limits: Option<Limits>,
    /// The upstreams (by name) it may be sent to; `None`: every one.
    pub upstreams: Option<Vec<String>>,
}

/// Whether a model `pattern` (a name, or a prefix ending in `*`) matches
/// `model`: the one rule of token allowlists and upstreams' `models`.
pub fn model_matches(pattern: &str, model: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => model.starts_with(prefix),
        None => pattern == model,
    }
}

impl Rules {
    /// Whether `model` is allowed.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| model_matches(m, model)))
    }

    /// Whether a request with `method` to `path` is allowed by `endpoints`
    /// (see [`Endpoint`]): under a prefix (at a segment boundary:
    /// `/v1/chat` allows `/v1/chat/completions`, not `/v1/chatter`), or at
    /// an exact path (`/v1/chat/completions$`), for any method or the one
    /// an entry names (`POST /v1/chat/completions$`).
    pub fn allows_endpoint(&self, method: &http::Method, path: &str) -> bool {
        self.endpoints.as_ref().is_none_or(|endpoints| {
            endpoints
                .iter()
                .map(|e| Endpoint::parse(e))
                .any(|e| e.method_allows(method) && e.allows(path))
        })
    }

    /// Whether `endpoints` names `path` itself (for `method`), which allows
    /// a request whose model the gateway cannot tell (a batch, a file
    /// upload).
    pub fn names_endpoint(&self, method: &http::Method, path: &str) -> bool {
        self.names(method, path, false)
    }

    /// Whether `endpoints` opens `path`'s unmetered uses knowingly (an
    /// unmetered endpoint, a background response): it names the path
    /// itself in an entry without `$` (a `$` entry allows the path as
    /// metered, as `tokens new --endpoints inference` writes them).
    pub fn opens_unmetered(&self, method: &http::Method, path: &str) -> bool {
        self.names(method, path, true)
    }

    /// Whether an entry for `method` names `path` itself; with
    /// `plain_only`, an entry without `$`.
    fn names(&self, method: &http::Method, path: &str, plain_only: bool) -> bool {
        let path = path.trim_end_matches('/');
        self.endpoints.as_ref().is_some_and(|endpoints| {
            endpoints.iter().map(|e| Endpoint::parse(e)).any(|e| {
                !(plain_only && e.exact)
                    && e.method_allows(method)
                    && e.path.trim_end_matches('/') == path
            })
        })
    }
}

/// One entry of `endpoints`: `[METHOD ]PATH[$]`. A path allows what is
/// under it; with `$`, only itself. With a method, only that method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint<'e> {
    /// The method it is for, if it names one (`POST`).
    pub method: Option<&'e str>,
    /// The path (or prefix).
    pub path: &'e str,
    /// Only the path itself, nothing under it.
    pub exact: bool,
}

impl<'e> Endpoint<'e> {
    /// Reads an entry (checked when the list is loaded).
    pub fn parse(entry: &'e str) -> Self {
        let (method, rest) = match entry.split_once(' ') {
            Some((method, rest)) => (Some(method), rest.trim_start()),
            None => (None, entry),
        };
        let (path, exact) = match rest.strip_suffix('$') {
            Some(path) => (path, true),
            None => (rest, false),
        };
        Self {
            method,
            path,
            exact,
        }
    }

    /// Whether the entry is well formed: a path from `/`, and a method of
    /// capital letters if any.
    pub fn is_valid(&self) -> bool {
        self.path.starts_with('/')
            && self
                .method
                .is_none_or(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()))
    }

    fn method_allows(&self, method: &http::Method) -> bool {
        self.method.is_none_or(|m| m == method.as_str())
    }

    fn allows(&self, path: &str) -> bool {
        if self.exact {
            path.trim_end_matches('/') == self.path.trim_end_matches('/')
        } else {
            under(path, self.path)
        }
    }
}

fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
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
    by_digest: HashMap<TokenDigest, usize, BuildHasherDefault<DigestHasher>>,
}

/// Hashes a [`TokenDigest`] by its leading bytes, with no keyed hash over
/// it. A SHA-256 digest is already uniform, and only the operator's tokens
/// are ever inserted: a client's presented token is only looked up, so it
/// cannot crowd a bucket whatever its digest.
#[derive(Debug, Default, Clone, Copy)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(5) ^ u64::from_ne_bytes(word);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl TokenSet {
    /// Builds the index. Fails on a token listed twice, naming both entries.
    pub fn new(entries: Vec<TokenEntry>) -> Result<Self, ParseError> {
        let mut by_digest = HashMap::with_capacity_and_hasher(entries.len(), Default::default());
        let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            if let Some(first) = by_name.insert(&entry.name, index) {
                // Usage and limits are kept by name: two entries may not share one.
                return Err(ParseError::Entry {
                    index,
                    name: entry.name.to_string(),
                    problem: format!("repeats the name of entry {first}; names must be unique"),
                });
            }
            if let Some(first) = by_digest.insert(entry.digest, index) {
                return Err(ParseError::DuplicateToken {
                    index,
                    name: entry.name.to_string(),
                    first,
                    first_name: entries[first].name.to_string(),
                });
            }
        }
        Ok(Self { entries, by_digest })
    }

    /// The entries, in file order.
    pub fn entries(&self) -> &[TokenEntry] {
        &self.entries
    }

    /// The entry named `name` (a scan: for the console, not the request path).
    pub fn named(&self, name: &str) -> Option<&TokenEntry> {
        self.entries.iter().find(|e| &*e.name == name)
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
            rules: None,
            admin: false,
            allow_ips: None,
        }
    }

    #[test]
    fn rules_match_globs_and_path_prefixes() {
        let rules = Rules {
            models: Some(vec!["gpt-4o-mini*".into(), "text-embedding-3-small".into()]),
            endpoints: Some(vec!["/v1/chat/".into(), "/v1/embeddings".into()]),
            limits: None,
            upstreams: None,
        };
        assert!(rules.allows_model("gpt-4o-mini"));
        assert!(rules.allows_model("gpt-4o-mini-2024-07-18"));
        assert!(!rules.allows_model("gpt-4o"));
        assert!(rules.allows_model("text-embedding-3-small"));
        assert!(!rules.allows_model("text-embedding-3-small-v2"));
        let (get, post) = (&http::Method::GET, &http::Method::POST);
        assert!(rules.allows_endpoint(post, "/v1/chat/completions"));
        assert!(rules.allows_endpoint(post, "/v1/embeddings"));
        assert!(!rules.allows_endpoint(post, "/v1/chatter"));
        assert!(!rules.allows_endpoint(post, "/v1/batches"));
        assert!(rules.names_endpoint(post, "/v1/embeddings/"));
        assert!(!rules.names_endpoint(post, "/v1/chat/completions"));
        let open = Rules::default();
        assert!(open.allows_model("anything") && open.allows_endpoint(get, "/x"));
        assert!(!open.names_endpoint(get, "/x"));
        // A method and `$`: that method, that path, nothing under it.
        let exact = Rules {
            endpoints: Some(vec![
                "POST /v1/chat/completions$".into(),
                "GET /v1/models".into(),
            ]),
            ..Rules::default()
        };
        assert!(exact.allows_endpoint(post, "/v1/chat/completions"));
        assert!(
            !exact.allows_endpoint(get, "/v1/chat/completions"),
            "the stored list"
        );
        assert!(!exact.allows_endpoint(get, "/v1/chat/completions/c1"));
        assert!(!exact.allows_endpoint(post, "/v1/chat/completions/c1"));
        assert!(exact.allows_endpoint(get, "/v1/models/gpt-4o"));
        assert!(!exact.allows_endpoint(&http::Method::DELETE, "/v1/models/ft-1"));
        assert!(exact.names_endpoint(post, "/v1/chat/completions"));
        assert!(
            !exact.opens_unmetered(post, "/v1/chat/completions"),
            "a `$` entry does not"
        );
        let plain = Rules {
            endpoints: Some(vec!["/v1/responses".into()]),
            ..Rules::default()
        };
        assert!(plain.opens_unmetered(post, "/v1/responses/"));
        assert!(!exact.names_endpoint(get, "/v1/chat/completions"));
        assert!(!Endpoint::parse("post /v1/x").is_valid());
        assert!(!Endpoint::parse("POST v1/x").is_valid());
    }

    #[test]
    fn lookup_is_case_sensitive_and_checks_expiry() {
        let at = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
        let set = TokenSet::new(vec![
            entry("a", "Secret-A", Some(at)),
            entry("b", "b", None),
        ])
        .unwrap();
        assert_eq!(&*set.find(b"Secret-A").unwrap().name, "a");
        assert!(set.find(b"secret-a").is_none());
        assert!(set.find(b"SECRET-A").is_none());
        let before = at - chrono::Duration::seconds(1);
        assert_eq!(&*set.verify(b"Secret-A", before).unwrap().name, "a");
        assert_eq!(set.verify(b"Secret-A", at).unwrap_err(), Refused::Expired);
        assert_eq!(set.verify(b"nope", before).unwrap_err(), Refused::Unknown);
        assert_eq!(
            &*set
                .verify(b"b", at + chrono::Duration::days(9999))
                .unwrap()
                .name,
            "b"
        );
    }

    #[test]
    fn every_token_of_a_long_list_is_found_and_no_other() {
        let names: Vec<String> = (0..2000).map(|i| format!("t{i}")).collect();
        let set = TokenSet::new(
            names
                .iter()
                .map(|n| entry(n, &format!("secret-{n}"), None))
                .collect(),
        )
        .unwrap();
        for n in &names {
            let found = set.find(format!("secret-{n}").as_bytes()).map(|e| &*e.name);
            assert_eq!(found, Some(n.as_str()));
            assert!(set.find(format!("secret-{n}x").as_bytes()).is_none());
        }
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
