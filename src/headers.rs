//! Header hygiene, all in one place: what goes upstream, what comes back.
//!
//! - Upstream ([`to_upstream`]): hop-by-hop headers, `Host`, `Content-Length`,
//!   `Expect`, client-address headers and the gateway credential are dropped,
//!   and the upstream key is injected when there is one. The request target's
//!   own authority, `Host` and `X-Forwarded-Host` never pick the host.
//! - Back to the client ([`from_upstream`], [`apply_cors`], [`for_stream`]):
//!   hop-by-hop headers are dropped, the gateway's CORS headers replace the
//!   upstream's, and a streamed Lambda response carries no `Content-Length`.

use http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::cors::Decision;
use crate::secret::ApiKey;

/// The `X-Token` header: a gateway credential, never forwarded.
pub static X_TOKEN: HeaderName = HeaderName::from_static("x-token");

/// What the authentication step found to strip from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Strip {
    /// The `Authorization` header held a gateway token.
    pub authorization: bool,
}

/// Whether a header describes one connection and is never forwarded (RFC
/// 9110 §7.6.1): `Connection`, `Keep-Alive`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade` and every `Proxy-*` header, in any case.
/// The length picks the one or two names compared, since every header a
/// request or response carries is asked about.
fn is_hop_by_hop(name: &str) -> bool {
    let is = |fixed: &str| name.eq_ignore_ascii_case(fixed);
    let fixed = match name.len() {
        2 => is("te"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        17 => is("transfer-encoding"),
        _ => false,
    };
    fixed
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
}

/// Removes hop-by-hop headers, every header that `Connection` names, and
/// every header whose (lower-case) name `also` picks.
///
/// One pass over the names decides ([`remove_matching`]); besides
/// `Connection` itself, only the names removed are looked up.
fn remove_where(headers: &mut HeaderMap, also: impl Fn(&str) -> bool) {
    // What `Connection` names, read before it goes (the fixed list goes
    // anyway, and is not parsed: a name outside http's own set allocates).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| !is_hop_by_hop(name))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    remove_matching(headers, |name| is_hop_by_hop(name) || also(name));
    for name in named {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers: the fixed list, `Proxy-*`, and every header
/// that `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_where(headers, |_| false);
}

/// Removes every header whose (lower-case) name matches `pred`, without
/// allocating: one scan per name removed, and one that finds none (a request
/// has a few dozen headers at most, and almost always `Host` to drop).
fn remove_matching(headers: &mut HeaderMap, pred: impl Fn(&str) -> bool) {
    while let Some(name) = headers.keys().find(|k| pred(k.as_str())).cloned() {
        headers.remove(name);
    }
}

/// Turns the client's headers into the upstream request's headers.
///
/// Drops hop-by-hop headers, `Host` (the client sets it from the URL),
/// `Content-Length` (the body's own length is used), `Expect`, client-address
/// headers (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `X-Amzn-*`), `X-Token`,
/// an `Authorization` that held a gateway token and, when a key is injected,
/// the client's own `Authorization` (the injected one replaces it).
pub fn to_upstream(mut headers: HeaderMap, strip: Strip, inject: Option<&ApiKey>) -> HeaderMap {
    remove_where(&mut headers, |name| {
        matches!(
            name,
            "host" | "content-length" | "expect" | "forwarded" | "x-token" | "x-real-ip"
        ) || (strip.authorization && name == "authorization")
            || name.starts_with("x-forwarded-")
            || name.starts_with("x-amzn-")
    });
    strip_session_cookie(&mut headers);
    if let Some(key) = inject {
        headers.insert(header::AUTHORIZATION, key.authorization().clone());
    }
    headers
}

/// The console's session cookie (`gw_session`), never forwarded: every
/// `Cookie` line holding it is rewritten without it (and dropped if
/// nothing is left); other cookies go as they came.
fn strip_session_cookie(headers: &mut HeaderMap) {
    const NAME: &str = "gw_session=";
    let holds = |v: &HeaderValue| {
        v.as_bytes()
            .windows(NAME.len())
            .any(|w| w == NAME.as_bytes())
    };
    if !headers.get_all(header::COOKIE).iter().any(holds) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| {
            let text = String::from_utf8_lossy(v.as_bytes());
            let rest: Vec<&str> = text
                .split(';')
                .map(str::trim)
                .filter(|pair| !pair.is_empty() && !pair.starts_with(NAME))
                .collect();
            HeaderValue::from_str(&rest.join("; "))
                .ok()
                .filter(|v| !v.is_empty())
        })
        .collect();
    headers.remove(header::COOKIE);
    for value in kept {
        headers.append(header::COOKIE, value);
    }
}

/// Cleans the upstream's response headers for the client.
///
/// A response with both `Transfer-Encoding` and `Content-Length` was framed
/// by the former (RFC 9112 §6.3); its length is dropped with it, since the
/// body is framed anew and a stale length would cut it short.
pub fn from_upstream(headers: &mut HeaderMap) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    remove_hop_by_hop(headers);
}

/// Adds the CORS headers of `decision` to a response, replacing the upstream's own.
pub fn apply_cors(headers: &mut HeaderMap, decision: &Decision) {
    remove_matching(headers, |k| k.starts_with("access-control-"));
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = decision.allow_origin() {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(crate::cors::EXPOSED),
        );
    }
}

/// Asks the upstream for an uncompressed body (one the gateway will rewrite).
pub fn identity_only(headers: &mut HeaderMap) {
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
}

/// A rewritten body has a new length, no encoding, and no validator of the old one.
pub fn for_rewrite(headers: &mut HeaderMap) {
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::ETAG,
        HeaderName::from_static("content-md5"),
    ] {
        headers.remove(name);
    }
}

/// A body the gateway edits as it passes (the usage chunk hidden) has
/// another length, and no validator of the upstream's: it goes out chunked.
pub fn for_edit(headers: &mut HeaderMap) {
    for name in [
        header::CONTENT_LENGTH,
        header::ETAG,
        HeaderName::from_static("content-md5"),
    ] {
        headers.remove(name);
    }
}

/// A streamed response carries its own framing; a length from the upstream
/// would contradict it.
pub fn for_stream(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_LENGTH);
}

/// The `Content-Type` as sent (empty when absent or not text).
pub fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The media type of `Content-Type`, without parameters, as sent
/// (`Application/JSON` for `Application/JSON; charset=utf-8`); compare it
/// with [`is_media`], which ignores case.
fn media_type(headers: &HeaderMap) -> &str {
    let content_type = content_type(headers);
    content_type
        .split_once(';')
        .map_or(content_type, |(media, _)| media)
        .trim()
}

/// Whether the media type is `media` (lower-case), in any case.
pub fn is_media(headers: &HeaderMap, media: &str) -> bool {
    media_type(headers).eq_ignore_ascii_case(media)
}

/// Whether the body is JSON (`application/json` or any `+json` type).
pub fn is_json(headers: &HeaderMap) -> bool {
    let media = media_type(headers).as_bytes();
    media.eq_ignore_ascii_case(b"application/json")
        || media.len() >= 5 && media[media.len() - 5..].eq_ignore_ascii_case(b"+json")
}

/// Whether the body is an event stream.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    is_media(headers, "text/event-stream")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cors::Cors;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_console_session_cookie_never_goes_upstream_and_other_cookies_do() {
        let h = map(&[
            ("cookie", "theme=dark; gw_session=abcdef; x=gw_session=1"),
            ("cookie", "gw_session=only"),
            ("cookie", "xgw_session=kept"),
        ]);
        let out = to_upstream(h, Strip::default(), None);
        let cookies: Vec<_> = out.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["theme=dark; x=gw_session=1", "xgw_session=kept"]);
        let plain = map(&[("cookie", "session=abc; theme=dark")]);
        let out = to_upstream(plain, Strip::default(), None);
        assert_eq!(out.get("cookie").unwrap(), "session=abc; theme=dark");
    }

    #[test]
    fn upstream_hygiene() {
        let h = map(&[
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic x"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("transfer-encoding", "chunked"),
            ("host", "evil.example"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x-amzn-trace-id", "Root=1"),
            ("x-real-ip", "1.2.3.4"),
            ("x-token", "tok"),
            ("authorization", "Bearer sk-client"),
            ("openai-organization", "org-1"),
            ("content-type", "application/json"),
            ("accept-encoding", "gzip"),
        ]);
        let out = to_upstream(h.clone(), Strip::default(), None);
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept-encoding",
                "authorization",
                "content-type",
                "openai-organization"
            ]
        );
        assert_eq!(out["authorization"], "Bearer sk-client");
        let stripped = to_upstream(
            h.clone(),
            Strip {
                authorization: true,
            },
            None,
        );
        assert!(stripped.get("authorization").is_none());
        let key = ApiKey::new("sk-injected").unwrap();
        let out = to_upstream(h, Strip::default(), Some(&key));
        assert_eq!(out["authorization"], "Bearer sk-injected");
        assert_eq!(out.get_all("authorization").iter().count(), 1);
        assert!(out["authorization"].is_sensitive());
    }

    #[test]
    fn connection_names_are_matched_in_any_case_and_the_rest_is_kept() {
        let mut h = map(&[
            ("connection", "close"),
            ("connection", " X-Custom-Hop ,, Keep-Alive"),
            ("x-custom-hop", "1"),
            ("close", "a header named as an option is dropped too"),
            ("proxy-anything", "1"),
            ("openai-beta", "assistants=v2"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "openai-beta"]);
        let kept = map(&[("accept", "*/*"), ("user-agent", "OpenAI/Python")]);
        let out = to_upstream(kept.clone(), Strip::default(), None);
        assert_eq!(out, kept);
    }

    #[test]
    fn hop_by_hop_names_are_known_in_any_case_and_no_lookalike_is() {
        for name in [
            "connection",
            "Keep-Alive",
            "TE",
            "Trailer",
            "transfer-ENCODING",
            "upgrade",
            "Proxy-Authorization",
            "proxy-",
        ] {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in [
            "connectiom",
            "keep-alivf",
            "tf",
            "trailers",
            "upgrades",
            "content-encoding",
            "proxy",
            "x-proxy-id",
            "",
            "t",
        ] {
            assert!(!is_hop_by_hop(name), "{name}");
        }
    }

    #[test]
    fn media_types_are_compared_without_case_or_parameters() {
        let with = |v: &'static str| map(&[("content-type", v)]);
        assert!(is_json(&with("Application/JSON; charset=utf-8")));
        assert!(is_json(&with("application/vnd.api+JSON")));
        assert!(!is_json(&with("application/jsonl")));
        assert!(is_event_stream(&with(" text/event-stream ;charset=utf-8")));
        assert!(is_media(
            &with("Multipart/Form-Data; boundary=x"),
            "multipart/form-data"
        ));
        assert!(!is_json(&HeaderMap::new()) && !is_event_stream(&HeaderMap::new()));
    }

    #[test]
    fn a_chunked_upstream_response_loses_its_stale_length() {
        let mut h = map(&[
            ("transfer-encoding", "chunked"),
            ("content-length", "2"),
            ("content-type", "text/plain"),
        ]);
        from_upstream(&mut h);
        assert!(h.get("content-length").is_none() && h.get("transfer-encoding").is_none());
        let mut h = map(&[("content-length", "2")]);
        from_upstream(&mut h);
        assert_eq!(h["content-length"], "2");
    }

    #[test]
    fn cors_replaces_the_upstreams_headers() {
        let cors = Cors::parse("https://ok.example").unwrap().unwrap();
        let mut upstream = map(&[
            ("access-control-allow-origin", "*"),
            ("content-type", "application/json"),
        ]);
        let asked = map(&[("origin", "https://ok.example")]);
        apply_cors(&mut upstream, &cors.decide(&asked));
        assert_eq!(
            upstream
                .get_all(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .iter()
                .count(),
            1
        );
        assert_eq!(
            upstream[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://ok.example"
        );
        assert!(upstream[header::ACCESS_CONTROL_EXPOSE_HEADERS]
            .to_str()
            .unwrap()
            .contains("x-request-id"));
        let mut denied = map(&[("access-control-allow-origin", "*")]);
        apply_cors(
            &mut denied,
            &cors.decide(&map(&[("origin", "https://evil.example")])),
        );
        assert!(denied.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }
}
