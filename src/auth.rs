//! Finds the gateway credential in a request, verifies it, and strips it.
//!
//! A gateway token may arrive as the `token` query parameter (the original
//! project's way; OpenAI SDKs send it through `default_query`), an `X-Token`
//! header, or `Authorization: Bearer <token>`. When a query or `X-Token`
//! credential is present, the Authorization header is taken to be the
//! client's own OpenAI key and is left alone, unless it too holds a gateway
//! token. This step only reads the headers: it says what carried the gateway
//! token ([`Strip`]) and [`crate::headers::to_upstream`] removes it, so the
//! token never travels upstream.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::{header, HeaderMap};
use ipnet::IpNet;
use percent_encoding::percent_decode;

use crate::error::GatewayError;
use crate::headers::{Strip, X_TOKEN};
use crate::secret::ApiKey;
use crate::tokens::{Refused, Rules, TokenEntry, TokenSet};

/// Who the request was admitted as, and what to send upstream on its behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The matched entry's name; `None` for anonymous pass-through.
    pub name: Option<Arc<str>>,
    /// The key to inject upstream, from the entry (the global key is the caller's).
    pub upstream_key: Option<ApiKey>,
    /// The query to forward: the original less every `token` parameter,
    /// other parameters byte for byte and in order; `None` when nothing remains.
    pub query: Option<String>,
    /// The headers that carried a gateway credential, to strip.
    pub strip: Strip,
    /// What the token may reach; `None`: everything.
    pub rules: Option<Arc<Rules>>,
    /// When the token expires.
    pub expires: Option<chrono::DateTime<chrono::Utc>>,
    /// The entry is an operator's (`admin: true`).
    pub admin: bool,
    /// The request carried a `token` in its query (which an admin request
    /// may not: it lands in browser history and access logs).
    pub in_query: bool,
    /// The networks the token may be used from; `None`: any.
    pub allow_ips: Option<Arc<[IpNet]>>,
}

impl Admitted {
    /// Admitted as `entry` by other means than a presented token (a console
    /// session): nothing to strip, the query as it came.
    pub fn as_entry(entry: &TokenEntry, query: Option<&str>) -> Self {
        Self {
            name: Some(entry.name.clone()),
            upstream_key: entry.upstream_key.clone(),
            query: query.filter(|q| !q.is_empty()).map(str::to_owned),
            strip: Strip::default(),
            rules: entry.rules.clone(),
            expires: entry.expires,
            admin: entry.admin,
            in_query: false,
            allow_ips: entry.allow_ips.clone(),
        }
    }

    /// Refuses a client outside the token's `allow_ips` (`403
    /// ip_not_allowed`); an unknown address is outside every list.
    pub fn check_address(&self, client: Option<IpAddr>) -> Result<(), GatewayError> {
        match &self.allow_ips {
            Some(nets) if !client.is_some_and(|ip| crate::client_ip::within(nets, ip)) => {
                Err(GatewayError::IpNotAllowed)
            }
            _ => Ok(()),
        }
    }
}

impl From<Refused> for GatewayError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Unknown => Self::InvalidToken,
            Refused::Expired => Self::TokenExpired,
        }
    }
}

/// What the gateway's credentials look like in one request.
struct Presented<'a> {
    query: Option<String>,
    explicit: Vec<Cow<'a, [u8]>>,
    authorization: Option<Authorization<'a>>,
    /// A `token` parameter was in the query.
    in_query: bool,
}

/// The one `Authorization` value: its scheme word, if any, and the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Authorization<'a> {
    bearer: bool,
    /// What follows the scheme word (the whole value when there is none).
    credential: &'a [u8],
    /// The whole value, trimmed: a bare token may itself hold a space.
    whole: &'a [u8],
}

/// Checks a request's credential.
///
/// `anonymous` is true when the operator allows pass-through with an empty
/// token list; `X-Token` and `?token=` are still stripped.
pub fn admit(
    headers: &HeaderMap,
    query: Option<&str>,
    tokens: &TokenSet,
    anonymous: bool,
    now: DateTime<Utc>,
) -> Result<Admitted, GatewayError> {
    let Presented {
        query,
        explicit,
        authorization,
        in_query,
    } = Presented::find(headers, query)?;
    let mut strip = Strip::default();

    if anonymous && tokens.is_empty() {
        return Ok(Admitted {
            name: None,
            upstream_key: None,
            query,
            strip,
            rules: None,
            expires: None,
            admin: false,
            in_query,
            allow_ips: None,
        });
    }

    if explicit.iter().skip(1).any(|t| *t != explicit[0]) {
        return Err(GatewayError::ConflictingTokens);
    }
    // A gateway token in the Authorization header, whatever its scheme
    // (`Bearer`, `Token`, none) and however it is spaced, is a credential of
    // the gateway's: never forwarded, and never a second identity.
    let matched = authorization.and_then(|a| {
        [a.credential, a.whole]
            .into_iter()
            .find(|c| tokens.find(c).is_some())
    });
    let in_authorization = matched.and_then(|c| tokens.find(c));
    if in_authorization.is_some() {
        strip.authorization = true;
    }
    let entry = match (explicit.first(), authorization) {
        (Some(token), _) => {
            let entry = tokens.verify(token, now)?;
            if in_authorization.is_some_and(|other| other.digest != entry.digest) {
                return Err(GatewayError::ConflictingTokens);
            }
            entry
        }
        (None, Some(a)) if matched.is_some() || a.bearer => {
            // A Bearer value is the gateway token when nothing else is.
            strip.authorization = true;
            tokens.verify(matched.unwrap_or(a.credential), now)?
        }
        (None, _) => return Err(GatewayError::MissingToken),
    };
    Ok(Admitted {
        name: Some(entry.name.clone()),
        upstream_key: entry.upstream_key.clone(),
        query,
        strip,
        rules: entry.rules.clone(),
        expires: entry.expires,
        admin: entry.admin,
        in_query,
        allow_ips: entry.allow_ips.clone(),
    })
}

/// Whether a request presents any gateway credential (a `token` in the
/// query, `X-Token`, `Authorization`): such a request is authenticated by
/// it alone, never by a console session.
pub fn presents_credential(headers: &HeaderMap, query: Option<&str>) -> bool {
    if headers.contains_key(&X_TOKEN) || headers.contains_key(header::AUTHORIZATION) {
        return true;
    }
    let mut found = Vec::new();
    query.map(|q| strip_token_params(q, &mut found));
    !found.is_empty()
}

impl<'a> Presented<'a> {
    fn find(headers: &'a HeaderMap, query: Option<&'a str>) -> Result<Self, GatewayError> {
        let mut explicit = Vec::new();
        let query = query.and_then(|q| strip_token_params(q, &mut explicit));
        let in_query = !explicit.is_empty();
        explicit.extend(
            headers
                .get_all(&X_TOKEN)
                .iter()
                .map(|v| Cow::Borrowed(v.as_bytes().trim_ascii())),
        );
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let authorization = values.next().map(|v| Authorization::parse(v.as_bytes()));
        if values.next().is_some() {
            // No client needs two, OpenAI reads one, and a second would carry
            // a second identity past the check.
            return Err(GatewayError::MultipleAuthorization);
        }
        Ok(Self {
            query,
            explicit,
            authorization,
            in_query,
        })
    }
}

impl<'a> Authorization<'a> {
    /// `Scheme credential` (any run of spaces or tabs between), or a bare credential.
    fn parse(value: &'a [u8]) -> Self {
        let value = value.trim_ascii();
        match value.iter().position(|b| *b == b' ' || *b == b'\t') {
            Some(at) => Self {
                bearer: value[..at].eq_ignore_ascii_case(b"bearer"),
                credential: value[at..].trim_ascii(),
                whole: value,
            },
            None => Self {
                bearer: false,
                credential: value,
                whole: value,
            },
        }
    }
}

/// Removes every `token` parameter (name compared after decoding,
/// case-insensitively, as .NET's query lookup did) from a raw query, pushing
/// the decoded values to `found` (borrowed from `query` when nothing needed
/// decoding). Other parameters are kept byte for byte and in order. Returns
/// `None` when no parameter remains.
pub fn strip_token_params<'q>(query: &'q str, found: &mut Vec<Cow<'q, [u8]>>) -> Option<String> {
    // Fast path: nothing that could decode to "token" is in the query.
    let lower_has = |needle: &[u8]| {
        query
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    if !lower_has(b"token") && !query.contains('%') {
        return (!query.is_empty()).then(|| query.to_owned());
    }
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(name).eq_ignore_ascii_case(b"token") {
            found.push(form_decode(value));
        } else {
            kept.push(pair);
        }
    }
    let kept = kept.join("&");
    (!kept.is_empty()).then_some(kept)
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space.
/// Borrows when there is nothing to decode.
fn form_decode(text: &str) -> Cow<'_, [u8]> {
    if !text.contains(['+', '%']) {
        return Cow::Borrowed(text.as_bytes());
    }
    let plus_decoded = text.replace('+', " ");
    Cow::Owned(percent_decode(plus_decoded.as_bytes()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{digest, TokenEntry};
    use http::{HeaderName, HeaderValue};

    fn tokens() -> TokenSet {
        let entry = |name: &str, token: &str, key: Option<&str>| TokenEntry {
            name: name.into(),
            digest: digest(token.as_bytes()),
            expires: None,
            upstream_key: key.map(|k| ApiKey::new(k).unwrap()),
            rules: None,
            admin: false,
            allow_ips: None,
        };
        TokenSet::new(vec![
            entry("alice", "tok-a", Some("sk-alice")),
            entry("bob", "tok b", None),
        ])
        .unwrap()
    }

    fn run(query: Option<&str>, headers: &[(&str, &str)]) -> Result<Admitted, GatewayError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        admit(&map, query, &tokens(), false, Utc::now())
    }

    #[test]
    fn query_token_is_stripped_and_the_rest_kept_in_order() {
        let out = run(Some("a=1&token=tok-a&b=%2F&c"), &[]).unwrap();
        assert_eq!(out.name.as_deref(), Some("alice"));
        assert_eq!(out.query.as_deref(), Some("a=1&b=%2F&c"));
        assert_eq!(out.upstream_key.unwrap().authorization(), "Bearer sk-alice");
        assert_eq!(run(Some("token=tok-a"), &[]).unwrap().query, None);
        // Encoded name and form-encoded value (`+` is a space).
        let out = run(Some("x=1&%74oken=tok+b"), &[]).unwrap();
        assert_eq!(out.name.as_deref(), Some("bob"));
        let out = run(Some("TOKEN=tok%20b&y"), &[]).unwrap();
        assert_eq!(out.query.as_deref(), Some("y"));
    }

    #[test]
    fn header_forms() {
        let out = run(
            None,
            &[("x-token", "tok-a"), ("authorization", "Bearer sk-client")],
        )
        .unwrap();
        assert_eq!(out.name.as_deref(), Some("alice"));
        assert!(!out.strip.authorization, "the client's own key stays");
        let out = run(None, &[("authorization", "bearer tok-a")]).unwrap();
        assert_eq!(out.name.as_deref(), Some("alice"));
        assert!(
            out.strip.authorization,
            "a gateway token in Bearer is stripped"
        );
        let out = run(Some("token=tok-a"), &[("authorization", "Bearer tok-a")]).unwrap();
        assert!(out.strip.authorization);
    }

    #[test]
    fn failures() {
        let err = |q, h| run(q, h).unwrap_err();
        assert_eq!(err(None, &[]), GatewayError::MissingToken);
        assert_eq!(
            err(None, &[("authorization", "Basic abc")]),
            GatewayError::MissingToken
        );
        assert_eq!(err(Some("token=TOK-A"), &[]), GatewayError::InvalidToken);
        assert_eq!(err(Some("token="), &[]), GatewayError::InvalidToken);
        assert_eq!(
            run(Some("token=tok-a&token=tok-a"), &[])
                .unwrap()
                .name
                .as_deref(),
            Some("alice")
        );
        assert_eq!(
            err(Some("token=tok-a&token=zzz"), &[]),
            GatewayError::ConflictingTokens
        );
        assert_eq!(
            err(Some("token=tok-a"), &[("x-token", "tok b")]),
            GatewayError::ConflictingTokens
        );
        assert_eq!(
            err(Some("token=tok-a"), &[("authorization", "Bearer tok b")]),
            GatewayError::ConflictingTokens
        );
    }

    #[test]
    fn gateway_tokens_in_any_authorization_form_are_credentials() {
        // Another scheme, a tab, no scheme: still the gateway's, stripped.
        for value in ["Token tok b", "Bearer\ttok b", "tok b", "  bearer   tok b "] {
            let out = run(None, &[("authorization", value)]).unwrap();
            assert_eq!(out.name.as_deref(), Some("bob"), "{value}");
            assert!(out.strip.authorization, "{value}");
            // Beside another user's token: two identities.
            assert_eq!(
                run(Some("token=tok-a"), &[("authorization", value)]).unwrap_err(),
                GatewayError::ConflictingTokens,
                "{value}"
            );
        }
        // Two Authorization headers: refused, whatever they hold.
        assert_eq!(
            run(
                Some("token=tok-a"),
                &[
                    ("authorization", "Bearer sk-own"),
                    ("authorization", "Bearer tok b")
                ]
            )
            .unwrap_err(),
            GatewayError::MultipleAuthorization
        );
        // The client's own key in another scheme stays, and is not a token.
        let out = run(Some("token=tok-a"), &[("authorization", "Token sk-own")]).unwrap();
        assert!(!out.strip.authorization);
        assert_eq!(
            run(None, &[("authorization", "Token sk-own")]).unwrap_err(),
            GatewayError::MissingToken
        );
    }

    #[test]
    fn anonymous_strips_but_admits() {
        let mut map = HeaderMap::new();
        map.insert(&X_TOKEN, HeaderValue::from_static("whatever"));
        let out = admit(
            &map,
            Some("token=x&a=b"),
            &TokenSet::default(),
            true,
            Utc::now(),
        )
        .unwrap();
        assert_eq!((out.name, out.query.as_deref()), (None, Some("a=b")));
        // X-Token goes whatever the outcome (headers::to_upstream drops it).
        let upstream = crate::headers::to_upstream(map, out.strip, None);
        assert!(upstream.is_empty());
        // Without permission an empty list admits nobody.
        let err = admit(
            &HeaderMap::new(),
            None,
            &TokenSet::default(),
            false,
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!(err, GatewayError::MissingToken);
    }
}
