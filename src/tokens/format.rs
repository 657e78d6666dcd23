//! The JSON token-list formats, shared by token files and SSM parameters.
//!
//! Accepted shapes (key names are case-insensitive, as in .NET configuration):
//!
//! - the original ChatGptApiGateway `appsettings.json`: an object whose
//!   `Tokens` array holds `{"Token": "…", "Expire": "2023-3-30 23:00"}`; other
//!   keys are ignored, and `ReverseProxy.Clusters.*.Destinations.*.Address`
//!   is reported as the upstream;
//! - the native form, `{"tokens": [...]}`, or a bare array of entries with
//!   `name`, `token` or `sha256`, `expires` (or `expire`) and `upstream_key`.
//!
//! Expiry times are RFC 3339, or the original's `yyyy-M-d H:mm[:ss]` (also
//! `yyyy-M-d`, a `T` separator or `/` date separators). A time without an
//! offset is read in the configured offset, UTC unless `TOKENS_UTC_OFFSET`
//! says otherwise. Error messages name the entry and the problem, never a
//! token or key.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};

use super::{Rules, TokenDigest, TokenEntry, TokenSet};
use crate::limits::Limits;
use crate::secret::ApiKey;

/// What a token list holds.
#[derive(Debug, Clone)]
pub struct TokenList {
    /// The tokens.
    pub tokens: TokenSet,
    /// The upstream address found in an original `appsettings.json`, if any.
    pub upstream: Option<String>,
}

/// Why a token list was refused. Messages name the entry, never a token or key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all (serde_json's message gives line and column, never the text).
    #[error("not valid JSON: {0}")]
    Json(String),
    /// JSON of another shape.
    #[error("expected a JSON array of entries or an object with a `tokens` array")]
    Shape,
    /// `tokens` is there but not an array.
    #[error("`tokens` must be an array of entries")]
    TokensNotArray,
    /// A top-level key given twice, in different cases.
    #[error("key `{0}` appears more than once (keys are case-insensitive)")]
    RepeatedKey(String),
    /// One entry is malformed.
    #[error("entry {index} ({name}): {problem}")]
    Entry {
        /// Its position in the list.
        index: usize,
        /// Its name, or `#<index>`.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Two entries hold the same token.
    #[error("entry {index} ({name}) repeats the token of entry {first} ({first_name})")]
    DuplicateToken {
        /// The later entry.
        index: usize,
        /// Its name.
        name: String,
        /// The earlier entry.
        first: usize,
        /// Its name.
        first_name: String,
    },
}

/// A time that is not one of the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a time (use RFC 3339, e.g. 2026-12-31T23:59:59Z, or yyyy-M-d H:mm)")]
pub struct InvalidTime(pub String);

/// A UTC offset that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a UTC offset like +08:00")]
pub struct InvalidOffset(pub String);

/// The keys of an entry, as written by `tokens new` and read here.
pub mod keys {
    /// A label for logs.
    pub const NAME: &str = "name";
    /// The token itself.
    pub const TOKEN: &str = "token";
    /// The token's SHA-256, in hex.
    pub const SHA256: &str = "sha256";
    /// The expiry.
    pub const EXPIRES: &str = "expires";
    /// The original's spelling of the expiry.
    pub const EXPIRE: &str = "expire";
    /// The key injected for this token.
    pub const UPSTREAM_KEY: &str = "upstream_key";
    /// The models the token may use.
    pub const MODELS: &str = "models";
    /// The path prefixes the token may reach.
    pub const ENDPOINTS: &str = "endpoints";
    /// Rate limits and budgets.
    pub const LIMITS: &str = "limits";
    /// The upstreams the token may use.
    pub const UPSTREAMS: &str = "upstreams";
    /// An operator's token.
    pub const ADMIN: &str = "admin";
    /// The networks the token may be used from.
    pub const ALLOW_IPS: &str = "allow_ips";
    /// All of them.
    pub const ALL: [&str; 12] = [
        NAME,
        TOKEN,
        SHA256,
        EXPIRES,
        EXPIRE,
        UPSTREAM_KEY,
        MODELS,
        ENDPOINTS,
        LIMITS,
        UPSTREAMS,
        ADMIN,
        ALLOW_IPS,
    ];
}

/// How a written entry names its token.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// The token itself.
    Plain(&'a str),
    /// Only its digest.
    Digest(&'a TokenDigest),
}

/// The native-form JSON of one entry: what `tokens new` prints and this
/// module reads back.
pub fn entry_json(
    name: &str,
    credential: Credential<'_>,
    expires: Option<DateTime<Utc>>,
    upstream_key: Option<&str>,
    rules: &Rules,
) -> Value {
    let mut entry = Map::new();
    entry.insert(keys::NAME.into(), name.into());
    match credential {
        Credential::Plain(token) => entry.insert(keys::TOKEN.into(), token.into()),
        Credential::Digest(digest) => entry.insert(keys::SHA256.into(), super::hex(digest).into()),
    };
    if let Some(at) = expires {
        entry.insert(
            keys::EXPIRES.into(),
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).into(),
        );
    }
    if let Some(key) = upstream_key {
        entry.insert(keys::UPSTREAM_KEY.into(), key.into());
    }
    if let Some(models) = &rules.models {
        entry.insert(keys::MODELS.into(), models.clone().into());
    }
    if let Some(endpoints) = &rules.endpoints {
        entry.insert(keys::ENDPOINTS.into(), endpoints.clone().into());
    }
    if let Some(limits) = &rules.limits {
        entry.insert(keys::LIMITS.into(), limits.to_json());
    }
    if let Some(upstreams) = &rules.upstreams {
        entry.insert(keys::UPSTREAMS.into(), upstreams.clone().into());
    }
    Value::Object(entry)
}

/// Parses a token list. `offset` is the zone of times written without one.
pub fn parse(text: &str, offset: FixedOffset) -> Result<TokenList, ParseError> {
    let root: Value = serde_json::from_str(text).map_err(|e| ParseError::Json(e.to_string()))?;
    let (items, upstream) = match &root {
        Value::Array(items) => (items.as_slice(), None),
        Value::Object(map) => {
            let upstream = find_upstream(map);
            match get(map, "tokens").map_err(ParseError::RepeatedKey)? {
                Some(Value::Array(items)) => (items.as_slice(), upstream),
                Some(Value::Null) | None => (&[][..], upstream),
                Some(_) => return Err(ParseError::TokensNotArray),
            }
        }
        _ => return Err(ParseError::Shape),
    };
    let entries = items
        .iter()
        .enumerate()
        .map(|(index, item)| parse_entry(index, item, offset))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TokenList {
        tokens: TokenSet::new(entries)?,
        upstream,
    })
}

/// Parses a `TOKENS_UTC_OFFSET` value such as `+08:00`, `-05:30` or `Z`.
pub fn parse_offset(text: &str) -> Result<FixedOffset, InvalidOffset> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("z") || t.eq_ignore_ascii_case("utc") {
        return Ok(FixedOffset::east_opt(0).expect("zero offset"));
    }
    DateTime::parse_from_rfc3339(&format!("2000-01-01T00:00:00{t}"))
        .map(|d| *d.offset())
        .map_err(|_| InvalidOffset(t.to_owned()))
}

/// Case-insensitive member lookup; two keys differing only in case are an
/// error, carrying the key.
fn get<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a Value>, String> {
    let mut found = None;
    for (k, v) in map {
        if k.eq_ignore_ascii_case(key) {
            if found.is_some() {
                return Err(key.to_owned());
            }
            found = Some(v);
        }
    }
    Ok(found)
}

fn object(v: Option<&Value>) -> Option<&Map<String, Value>> {
    v.and_then(Value::as_object)
}

fn find_upstream(root: &Map<String, Value>) -> Option<String> {
    let clusters = object(get(object(get(root, "reverseproxy").ok()?)?, "clusters").ok()?)?;
    clusters
        .values()
        .filter_map(Value::as_object)
        .find_map(|cluster| {
            let destinations = object(get(cluster, "destinations").ok()?)?;
            destinations
                .values()
                .filter_map(Value::as_object)
                .find_map(|d| {
                    get(d, "address")
                        .ok()?
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
        })
}

fn parse_entry(index: usize, item: &Value, offset: FixedOffset) -> Result<TokenEntry, ParseError> {
    let entry_error = |name: &str, problem: String| ParseError::Entry {
        index,
        name: name.to_owned(),
        problem,
    };
    let repeated =
        |key: String| format!("key `{key}` appears more than once (keys are case-insensitive)");
    let Value::Object(map) = item else {
        return Err(entry_error(
            &format!("#{index}"),
            "expected an object".into(),
        ));
    };
    let named = !matches!(map_get_name(map), None | Some(Value::Null));
    let name =
        match get(map, keys::NAME).map_err(|k| entry_error(&format!("#{index}"), repeated(k)))? {
            None | Some(Value::Null) => format!("#{index}"),
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(_) => {
                return Err(entry_error(
                    &format!("#{index}"),
                    "`name` must be a non-empty string".into(),
                ))
            }
        };
    let fail = |problem: String| entry_error(&name, problem);
    for key in map.keys() {
        if !keys::ALL.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            // An unknown key is most likely a typo of `expires`; ignoring it
            // would silently make the token immortal.
            return Err(fail(format!(
                "unknown key {} (expected one of: name, token, sha256, expires, upstream_key, models, endpoints, limits, upstreams, admin, allow_ips)",
                shown_key(key)
            )));
        }
    }
    let string = |key: &str| -> Result<Option<&str>, ParseError> {
        match get(map, key).map_err(|k| fail(repeated(k)))? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(fail(format!("`{key}` must be a string"))),
        }
    };
    let digest: TokenDigest = match (string(keys::TOKEN)?, string(keys::SHA256)?) {
        (Some(_), Some(_)) => return Err(fail("has both `token` and `sha256`; give one".into())),
        (None, None) => return Err(fail("has neither `token` nor `sha256`".into())),
        (Some(""), None) => return Err(fail("`token` is empty".into())),
        (Some(token), None) => super::digest(token.as_bytes()),
        (None, Some(hex)) => parse_hex_digest(hex)
            .ok_or_else(|| fail("`sha256` must be 64 hexadecimal digits".into()))?,
    };
    let expires = match (string(keys::EXPIRES)?, string(keys::EXPIRE)?) {
        (Some(_), Some(_)) => return Err(fail("has both `expires` and `expire`; give one".into())),
        (Some(text), None) | (None, Some(text)) => Some(
            parse_time(text, offset)
                .map_err(|_| fail(format!("`expires` value {}", shown_time(text))))?,
        ),
        (None, None) => None,
    };
    let upstream_key = match string(keys::UPSTREAM_KEY)? {
        Some(key) => Some(ApiKey::new(key).map_err(|_| {
            fail("`upstream_key` is empty or holds characters an HTTP header cannot carry".into())
        })?),
        None => None,
    };
    let list = |key: &str| -> Result<Option<Vec<String>>, ParseError> {
        match get(map, key).map_err(|k| fail(repeated(k)))? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
                    _ => Err(fail(format!(
                        "`{key}` must be an array of non-empty strings"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(fail(format!(
                "`{key}` must be an array of non-empty strings"
            ))),
        }
    };
    let models = list(keys::MODELS)?;
    let endpoints = list(keys::ENDPOINTS)?;
    if let Some(bad) = endpoints
        .iter()
        .flatten()
        .find(|e| !super::Endpoint::parse(e).is_valid())
    {
        return Err(fail(format!(
            "`endpoints` entry `{bad}` must be a path starting with /, optionally after a method in capitals (`POST /v1/chat/completions`) and ending in `$` for that path alone"
        )));
    }
    let limits = match get(map, keys::LIMITS).map_err(|k| fail(repeated(k)))? {
        None | Some(Value::Null) => None,
        Some(value) => Some(Limits::parse(value).map_err(fail)?).filter(|l| !l.is_empty()),
    };
    let upstreams = list(keys::UPSTREAMS)?;
    if upstreams.as_ref().is_some_and(Vec::is_empty) {
        // It would leave the token no upstream at all; leaving the key out
        // allows every one.
        return Err(fail(
            "`upstreams` must name at least one upstream (leave it out for all of them)".into(),
        ));
    }
    let admin = match get(map, keys::ADMIN).map_err(|k| fail(repeated(k)))? {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(fail("`admin` must be true or false".into())),
    };
    let allow_ips = match list(keys::ALLOW_IPS)? {
        None => None,
        Some(nets) if nets.is_empty() => {
            // It would refuse every request; leaving the key out allows any address.
            return Err(fail(
                "`allow_ips` must name at least one network (leave it out for any address)".into(),
            ));
        }
        Some(nets) => Some(
            nets.iter()
                .map(|net| crate::client_ip::parse_net(net))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|problem| fail(format!("`allow_ips`: {problem}")))?
                .into(),
        ),
    };
    if admin && !named {
        return Err(fail("an `admin` entry needs a `name`".into()));
    }
    let rules =
        (models.is_some() || endpoints.is_some() || limits.is_some() || upstreams.is_some())
            .then_some(Rules {
                models,
                endpoints,
                limits,
                upstreams,
            });
    if rules.is_some() && !named {
        return Err(fail(
            "an entry with `models`, `endpoints`, `limits` or `upstreams` needs a `name` (its usage is kept by name)"
                .into(),
        ));
    }
    // Usage is kept by name: an unnamed entry's is its digest's, which,
    // unlike its position, stays when the list is reordered.
    let name = if named {
        name
    } else {
        format!("sha256:{}", &super::hex(&digest)[..12])
    };
    Ok(TokenEntry {
        name: name.into(),
        digest,
        expires,
        upstream_key,
        rules: rules.map(std::sync::Arc::new),
        admin,
        allow_ips,
    })
}

/// The `name` member, whatever its case (first one; repeats are refused later).
fn map_get_name(map: &Map<String, Value>) -> Option<&Value> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(keys::NAME))
        .map(|(_, v)| v)
}

/// An unknown key, as an error message shows it: quoted when it looks like
/// a typo of a known key (`expiry`), hidden otherwise, since a token pasted
/// in the wrong place would else be printed.
fn shown_key(key: &str) -> String {
    let stem = |k: &str| k.get(..3).map(str::to_ascii_lowercase);
    let like_known = key.len() <= 16 && keys::ALL.iter().any(|k| stem(k) == stem(key));
    if like_known {
        format!("`{key}`")
    } else {
        "(not shown, in case it is a token)".to_owned()
    }
}

/// A malformed expiry, as an error message shows it: only when it is made of
/// what times are made of, since a token pasted there would else be printed.
fn shown_time(text: &str) -> String {
    let t = text.trim();
    let time_like = t.len() <= 40
        && t.chars()
            .all(|c| c.is_ascii_digit() || " -/:.+TZtz".contains(c));
    if time_like {
        InvalidTime(t.to_owned()).to_string()
    } else {
        "(not shown, in case it is a token) is not a time (use RFC 3339, e.g. 2026-12-31T23:59:59Z, or yyyy-M-d H:mm)".to_owned()
    }
}

fn parse_hex_digest(hex: &str) -> Option<TokenDigest> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Parses an expiry time: RFC 3339, or a local time in `offset`.
pub fn parse_time(text: &str, offset: FixedOffset) -> Result<DateTime<Utc>, InvalidTime> {
    let t = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(t) {
        return Ok(at.with_timezone(&Utc));
    }
    const FORMATS: [&str; 8] = [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y/%m/%d %H:%M:%S",
        "%Y/%m/%d %H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
    ];
    FORMATS
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
        .or_else(|| {
            ["%Y-%m-%d", "%Y/%m/%d"]
                .iter()
                .find_map(|f| NaiveDate::parse_from_str(t, f).ok())
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
        .and_then(|naive| offset.from_local_datetime(&naive).single())
        .map(|at| at.with_timezone(&Utc))
        .ok_or_else(|| InvalidTime(t.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc() -> FixedOffset {
        FixedOffset::east_opt(0).unwrap()
    }

    const ORIGINAL: &str = r#"{
      "Logging": {"LogLevel": {"Default": "Information"}},
      "Tokens": [{"Token": "datatoken", "Expire": "2023-3-30 23:00"}],
      "AllowedHosts": "*",
      "ReverseProxy": {
        "Routes": {"route1": {"ClusterId": "cluster1", "Match": {"Path": "{**catch-all}"}}},
        "Clusters": {"cluster1": {"Destinations": {"destination1": {"Address": "https://api.openai.com/"}}}}
      }
    }"#;

    #[test]
    fn reads_the_original_appsettings_unchanged() {
        let list = parse(ORIGINAL, utc()).unwrap();
        assert_eq!(list.upstream.as_deref(), Some("https://api.openai.com/"));
        let entry = list.tokens.find(b"datatoken").expect("token present");
        assert_eq!(
            &*entry.name,
            format!("sha256:{}", &crate::tokens::hex(&entry.digest)[..12])
        );
        assert_eq!(
            entry.expires,
            Some(Utc.with_ymd_and_hms(2023, 3, 30, 23, 0, 0).unwrap())
        );
        assert!(list.tokens.find(b"DATATOKEN").is_none());
    }

    #[test]
    fn offset_applies_to_times_without_one() {
        let list = parse(ORIGINAL, parse_offset("+08:00").unwrap()).unwrap();
        let entry = list.tokens.find(b"datatoken").unwrap();
        assert_eq!(
            entry.expires,
            Some(Utc.with_ymd_and_hms(2023, 3, 30, 15, 0, 0).unwrap())
        );
        // An explicit offset wins over the configured one.
        let t = parse_time("2026-12-31T23:59:59Z", parse_offset("+08:00").unwrap()).unwrap();
        assert_eq!(t, Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap());
    }

    #[test]
    fn native_forms_and_case_insensitive_keys() {
        let hash = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"; // sha256("secret")
        let text = format!(
            r#"{{"TOKENS": [
                {{"Name": "alice", "TOKEN": "tok-a", "Expires": "2026-12-31T23:59:59Z", "Upstream_Key": "sk-a"}},
                {{"name": "bob", "sha256": "{}"}}
            ]}}"#,
            hash.to_uppercase()
        );
        let list = parse(&text, utc()).unwrap();
        let alice = list.tokens.find(b"tok-a").unwrap();
        assert_eq!(&*alice.name, "alice");
        assert_eq!(
            alice.upstream_key.as_ref().unwrap().authorization(),
            "Bearer sk-a"
        );
        let bob = list.tokens.find(b"secret").unwrap();
        assert_eq!((&*bob.name, bob.expires), ("bob", None));
        let bare = parse(r#"[{"token": "x"}]"#, utc()).unwrap();
        assert!(bare.tokens.find(b"x").is_some());
        assert!(bare.upstream.is_none());
    }

    #[test]
    fn time_formats() {
        let at = |s| parse_time(s, utc()).unwrap();
        let want = Utc.with_ymd_and_hms(2023, 3, 5, 7, 4, 0).unwrap();
        assert_eq!(at("2023-3-5 7:04"), want);
        assert_eq!(at("2023-03-05 07:04:00"), want);
        assert_eq!(at("2023/3/5 7:04"), want);
        assert_eq!(at("2023-03-05T07:04:00+00:00"), want);
        assert_eq!(at("2023-03-05T15:04:00+08:00"), want);
        assert_eq!(
            at("2023-3-5"),
            Utc.with_ymd_and_hms(2023, 3, 5, 0, 0, 0).unwrap()
        );
        assert!(parse_time("next tuesday", utc()).is_err());
        assert!(parse_time("2023-13-01 00:00", utc()).is_err());
    }

    #[test]
    fn errors_name_the_entry_and_never_the_token() {
        let cases = [
            (
                r#"[{"token": "s3cr3t-value", "expires": "soon"}]"#,
                "entry 0 (#0)",
            ),
            (
                r#"[{"name": "n1", "token": "s3cr3t-value", "expiry": "2020-1-1"}]"#,
                "unknown key `expiry`",
            ),
            (
                r#"[{"name": "n2", "sha256": "s3cr3t-value"}]"#,
                "64 hexadecimal",
            ),
            (
                r#"[{"name": "n3", "token": "s3cr3t-value", "sha256": "ab"}]"#,
                "both `token` and `sha256`",
            ),
            (r#"[{"name": "n4"}]"#, "neither"),
            (
                r#"[{"name": "n5", "s3cr3t-value": "x"}]"#,
                "unknown key (not shown",
            ),
            (
                r#"[{"name": "a", "token": "s3cr3t-value"}, {"name": "b", "token": "s3cr3t-value"}]"#,
                "repeats the token",
            ),
            (r#"[{"token": 5}]"#, "must be a string"),
            (
                r#"[{"token": "s3cr3t-value", "Token": "s3cr3t-value"}]"#,
                "more than once",
            ),
            (
                r#"{"tokens": {"token": "s3cr3t-value"}}"#,
                "must be an array",
            ),
            (r#"[{"token": "s3cr3t-value""#, "not valid JSON"),
            (r#""s3cr3t-value""#, "expected a JSON array"),
        ];
        for (text, want) in cases {
            let err = parse(text, utc()).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(!err.contains("s3cr3t"), "{text}: leaked in {err}");
        }
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!(
            parse(r#"[{"token": "a"}, {"name": "b", "token": "a"}]"#, utc()).unwrap_err(),
            ParseError::DuplicateToken {
                index: 1,
                name: "b".into(),
                first: 0,
                first_name: format!(
                    "sha256:{}",
                    &crate::tokens::hex(&crate::tokens::digest(b"a"))[..12]
                )
            }
        );
        assert!(matches!(
            parse(r#"[{"name": "k", "token": "a", "upstream_key": "sk-a\u0007b"}]"#, utc()),
            Err(ParseError::Entry { index: 0, ref name, .. }) if name == "k"
        ));
        assert_eq!(parse("5", utc()).unwrap_err(), ParseError::Shape);
    }

    #[test]
    fn an_admin_entry_and_a_tokens_upstreams_are_read() {
        let list = parse(
            r#"[{"name": "ops", "token": "t", "admin": true, "upstreams": ["a", "b"]},
                {"name": "friend", "token": "u"}]"#,
            utc(),
        )
        .unwrap();
        let ops = list.tokens.find(b"t").unwrap();
        assert!(ops.admin);
        assert_eq!(
            ops.rules.as_ref().unwrap().upstreams.as_deref(),
            Some(&["a".to_owned(), "b".to_owned()][..])
        );
        let friend = list.tokens.find(b"u").unwrap();
        assert!(!friend.admin && friend.rules.is_none());
    }

    #[test]
    fn rules_are_read_and_checked() {
        let list = parse(
            r#"[{"name": "friend", "token": "t", "Models": ["gpt-4o-mini*"], "endpoints": ["/v1/chat"]}]"#,
            utc(),
        )
        .unwrap();
        let rules = list.tokens.find(b"t").unwrap().rules.clone().unwrap();
        assert_eq!(
            rules.models.as_deref(),
            Some(&["gpt-4o-mini*".to_owned()][..])
        );
        assert_eq!(
            rules.endpoints.as_deref(),
            Some(&["/v1/chat".to_owned()][..])
        );
        for (text, want) in [
            (r#"[{"token": "t", "models": ["x"]}]"#, "needs a `name`"),
            (
                r#"[{"name": "n", "token": "t", "upstreams": []}]"#,
                "at least one upstream",
            ),
            (
                r#"[{"name": "n", "token": "t", "admin": "yes"}]"#,
                "`admin` must be true or false",
            ),
            (r#"[{"token": "t", "admin": true}]"#, "needs a `name`"),
            (
                r#"[{"name": "n", "token": "t", "models": "x"}]"#,
                "array of non-empty strings",
            ),
            (
                r#"[{"name": "n", "token": "t", "models": [""]}]"#,
                "array of non-empty strings",
            ),
            (
                r#"[{"name": "n", "token": "t", "endpoints": ["v1/chat"]}]"#,
                "starting with /",
            ),
            (
                r#"[{"name": "n", "token": "a"}, {"name": "n", "token": "b"}]"#,
                "names must be unique",
            ),
            (
                r#"[{"name": "n", "token": "t", "limits": {"rpm": 5}}]"#,
                "unknown key `rpm`",
            ),
            (
                r#"[{"name": "n", "token": "t", "limits": {"usd_total": -5}}]"#,
                "`limits.usd_total` must be a non-negative number",
            ),
            (
                r#"[{"name": "n", "token": "t", "limits": [5]}]"#,
                "`limits` must be an object",
            ),
            (
                r#"[{"token": "t", "limits": {"usd_total": 5}}]"#,
                "needs a `name`",
            ),
        ] {
            let err = parse(text, utc()).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn written_entries_read_back() {
        let at = Utc.with_ymd_and_hms(2027, 1, 2, 3, 4, 5).unwrap();
        let digest = crate::tokens::digest(b"gw-x");
        for credential in [Credential::Plain("gw-x"), Credential::Digest(&digest)] {
            let rules = Rules {
                models: Some(vec!["gpt-4o-mini*".into()]),
                endpoints: None,
                limits: None,
                upstreams: None,
            };
            let entry = entry_json("n", credential, Some(at), Some("sk-1"), &rules);
            let list = parse(&format!("[{entry}]"), utc()).unwrap();
            let read = list.tokens.find(b"gw-x").expect("the token reads back");
            assert_eq!((&*read.name, read.expires), ("n", Some(at)));
            assert_eq!(
                read.upstream_key.as_ref().unwrap().authorization(),
                "Bearer sk-1"
            );
        }
    }

    #[test]
    fn appsettings_without_tokens_is_an_empty_list() {
        let list = parse(r#"{"AllowedHosts": "*"}"#, utc()).unwrap();
        assert!(list.tokens.is_empty());
    }
}
