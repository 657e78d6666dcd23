//! Finds the gateway credential in a request, verifies it, and strips it.
//!
//! A gateway token may arrive as the `token` query parameter (the original
//! project's way; OpenAI SDKs send it through `default_query`), an `X-Token`
//! header, or `Authorization: Bearer <token>`. When a query or `X-Token`
//! credential is present, the Authorization header is taken to be the
//! client's own OpenAI key and is left alone, unless it too holds a gateway
//! token. Whatever carried the gateway token is removed, so the token never
//! travels upstream.

use chrono::{DateTime, Utc};
use http::{header, HeaderMap, HeaderName};
use percent_encoding::percent_decode;

use crate::error::GatewayError;
use crate::secret::Secret;
use crate::tokens::TokenSet;

/// The `X-Token` header.
pub static X_TOKEN: HeaderName = HeaderName::from_static("x-token");

/// Who the request was admitted as, and what to send upstream on its behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The matched entry's name; `None` for anonymous pass-through.
    pub name: Option<String>,
    /// The key to inject upstream, from the entry (the global key is the caller's).
    pub upstream_key: Option<Secret>,
    /// The query to forward: the original less every `token` parameter,
    /// other parameters byte for byte and in order; `None` when nothing remains.
    pub query: Option<String>,
}

/// What the gateway's credentials look like in one request.
struct Presented<'a> {
    query: Option<String>,
    explicit: Vec<Vec<u8>>,
    bearer: Option<&'a [u8]>,
}

/// Checks a request's credential and strips it from `headers`.
///
/// `anonymous` is true when the operator allows pass-through with an empty
/// token list; the credential is still stripped.
pub fn admit(
    headers: &mut HeaderMap,
    query: Option<&str>,
    tokens: &TokenSet,
    anonymous: bool,
    now: DateTime<Utc>,
) -> Result<Admitted, GatewayError> {
    let presented = Presented::find(headers, query);
    let Presented {
        query,
        explicit,
        bearer,
    } = presented;
    let bearer = bearer.map(<[u8]>::to_vec);
    headers.remove(&X_TOKEN);

    if anonymous && tokens.is_empty() {
        return Ok(Admitted {
            name: None,
            upstream_key: None,
            query,
        });
    }

    if explicit.iter().skip(1).any(|t| *t != explicit[0]) {
        return Err(GatewayError::ConflictingTokens);
    }
    let entry = match (explicit.first(), bearer.as_deref()) {
        (Some(token), bearer) => {
            let entry = tokens.verify(token, now)?;
            if let Some(b) = bearer {
                if let Some(other) = tokens.find(b) {
                    // The Authorization header holds a gateway token too: never
                    // forward it, and refuse two different identities.
                    if other.digest != entry.digest {
                        return Err(GatewayError::ConflictingTokens);
                    }
                    headers.remove(header::AUTHORIZATION);
                }
            }
            entry
        }
        (None, Some(b)) => {
            headers.remove(header::AUTHORIZATION);
            tokens.verify(b, now)?
        }
        (None, None) => return Err(GatewayError::MissingToken),
    };
    Ok(Admitted {
        name: Some(entry.name.clone()),
        upstream_key: entry.upstream_key.clone(),
        query,
    })
}

impl<'a> Presented<'a> {
    fn find(headers: &'a HeaderMap, query: Option<&str>) -> Self {
        let mut explicit = Vec::new();
        let query = query.and_then(|q| strip_token_params(q, &mut explicit));
        explicit.extend(
            headers
                .get_all(&X_TOKEN)
                .iter()
                .map(|v| v.as_bytes().trim_ascii().to_vec()),
        );
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()));
        Self {
            query,
            explicit,
            bearer,
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Removes every `token` parameter (name compared after decoding,
/// case-insensitively, as .NET's query lookup did) from a raw query, pushing
/// the decoded values to `found`. Other parameters are kept byte for byte and
/// in order. Returns `None` when no parameter remains.
pub fn strip_token_params(query: &str, found: &mut Vec<Vec<u8>>) -> Option<String> {
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
fn form_decode(text: &str) -> Vec<u8> {
    if !text.contains(['+', '%']) {
        return text.as_bytes().to_vec();
    }
    let plus_decoded = text.replace('+', " ");
    percent_decode(plus_decoded.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{digest, TokenEntry};
    use http::HeaderValue;

    fn tokens() -> TokenSet {
        let entry = |name: &str, token: &str, key: Option<&str>| TokenEntry {
            name: name.into(),
            digest: digest(token.as_bytes()),
            expires: None,
            upstream_key: key.map(Secret::new),
        };
        TokenSet::new(vec![
            entry("alice", "tok-a", Some("sk-alice")),
            entry("bob", "tok b", None),
        ])
        .unwrap()
    }

    fn run(
        query: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (Result<Admitted, GatewayError>, HeaderMap) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let out = admit(&mut map, query, &tokens(), false, Utc::now());
        (out, map)
    }

    #[test]
    fn query_token_is_stripped_and_the_rest_kept_in_order() {
        let (out, _) = run(Some("a=1&token=tok-a&b=%2F&c"), &[]);
        let out = out.unwrap();
        assert_eq!(out.name.as_deref(), Some("alice"));
        assert_eq!(out.query.as_deref(), Some("a=1&b=%2F&c"));
        assert_eq!(out.upstream_key.unwrap().expose(), "sk-alice");
        let (out, _) = run(Some("token=tok-a"), &[]);
        assert_eq!(out.unwrap().query, None);
        // Encoded name and form-encoded value (`+` is a space).
        let (out, _) = run(Some("x=1&%74oken=tok+b"), &[]);
        assert_eq!(out.unwrap().name.as_deref(), Some("bob"));
        let (out, _) = run(Some("TOKEN=tok%20b&y"), &[]);
        assert_eq!(out.unwrap().query.as_deref(), Some("y"));
    }

    #[test]
    fn header_forms() {
        let (out, h) = run(
            None,
            &[("x-token", "tok-a"), ("authorization", "Bearer sk-client")],
        );
        assert_eq!(out.unwrap().name.as_deref(), Some("alice"));
        assert!(h.get("x-token").is_none());
        assert_eq!(
            h["authorization"], "Bearer sk-client",
            "the client's own key stays"
        );
        let (out, h) = run(None, &[("authorization", "bearer tok-a")]);
        assert_eq!(out.unwrap().name.as_deref(), Some("alice"));
        assert!(
            h.get("authorization").is_none(),
            "a gateway token in Bearer is stripped"
        );
        let (out, h) = run(Some("token=tok-a"), &[("authorization", "Bearer tok-a")]);
        assert!(out.is_ok());
        assert!(h.get("authorization").is_none());
    }

    #[test]
    fn failures() {
        assert_eq!(run(None, &[]).0.unwrap_err(), GatewayError::MissingToken);
        assert_eq!(
            run(None, &[("authorization", "Basic abc")]).0.unwrap_err(),
            GatewayError::MissingToken
        );
        assert_eq!(
            run(Some("token=TOK-A"), &[]).0.unwrap_err(),
            GatewayError::InvalidToken
        );
        assert_eq!(
            run(Some("token="), &[]).0.unwrap_err(),
            GatewayError::InvalidToken
        );
        assert_eq!(
            run(Some("token=tok-a&token=tok-a"), &[])
                .0
                .unwrap()
                .name
                .as_deref(),
            Some("alice")
        );
        assert_eq!(
            run(Some("token=tok-a&token=zzz"), &[]).0.unwrap_err(),
            GatewayError::ConflictingTokens
        );
        assert_eq!(
            run(Some("token=tok-a"), &[("x-token", "tok b")])
                .0
                .unwrap_err(),
            GatewayError::ConflictingTokens
        );
        assert_eq!(
            run(Some("token=tok-a"), &[("authorization", "Bearer tok b")])
                .0
                .unwrap_err(),
            GatewayError::ConflictingTokens
        );
    }

    #[test]
    fn anonymous_strips_but_admits() {
        let mut map = HeaderMap::new();
        map.insert(&X_TOKEN, HeaderValue::from_static("whatever"));
        let out = admit(
            &mut map,
            Some("token=x&a=b"),
            &TokenSet::default(),
            true,
            Utc::now(),
        )
        .unwrap();
        assert_eq!((out.name, out.query.as_deref()), (None, Some("a=b")));
        assert!(map.is_empty());
        // Without permission an empty list admits nobody.
        let err = admit(
            &mut HeaderMap::new(),
            None,
            &TokenSet::default(),
            false,
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!(err, GatewayError::MissingToken);
    }
}
