//! Builds the upstream request, sends it, and hands back the streaming response.
//!
//! The path and query are forwarded as received (less the gateway token),
//! appended to the configured upstream base; the request target's own
//! authority, `Host` and `X-Forwarded-Host` are ignored, so no request can
//! pick another host. Hop-by-hop headers, client-address headers and the
//! gateway credential are dropped. Bodies stream in both directions.

use std::time::Duration;

use http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use reqwest::Url;

use crate::config::Upstream;
use crate::error::{error_chain, GatewayError};
use crate::secret::Secret;

/// The upstream side: one shared client with a keep-alive pool.
#[derive(Debug, Clone)]
pub struct Proxy {
    client: reqwest::Client,
    upstream: Upstream,
    /// The upstream URL, parsed once.
    base_url: Url,
    /// Its path prefix without a trailing slash (empty for none).
    prefix: String,
    header_timeout: Duration,
}

impl Proxy {
    /// Builds the shared HTTP client.
    pub fn new(
        upstream: Upstream,
        header_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            // A proxy passes redirects to its client rather than following them.
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .no_proxy()
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let base_url = Url::parse(upstream.base()).map_err(|e| format!("upstream URL: {e}"))?;
        let prefix = upstream_prefix(upstream.base())
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            client,
            upstream,
            base_url,
            prefix,
            header_timeout,
        })
    }

    /// The upstream this proxy sends to.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Opens a pooled connection (TCP and TLS) to the upstream ahead of the
    /// first request, so a cold Lambda container does not pay for it on a
    /// client's time. Failures are only logged: the first request retries.
    pub async fn warm_up(&self) {
        let started = std::time::Instant::now();
        let url = format!("{}/", self.upstream.base());
        let outcome =
            tokio::time::timeout(Duration::from_secs(2), self.client.head(url).send()).await;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match outcome {
            Ok(Ok(response)) => tracing::info!(
                status = response.status().as_u16(),
                ms,
                "upstream connection warmed up"
            ),
            Ok(Err(error)) => {
                tracing::warn!(error = %error_chain(&error.without_url()), ms, "upstream warm-up failed")
            }
            Err(_) => tracing::warn!(ms, "upstream warm-up timed out"),
        }
    }

    /// Maps a request path and (already stripped) query to the upstream URL.
    pub fn target(&self, path: &str, query: Option<&str>) -> Result<Url, GatewayError> {
        check_path(path)?;
        // Cloning the parsed base and setting the path and query costs no
        // host parsing (IDNA) per request, and cannot change the host.
        let mut url = self.base_url.clone();
        let mut full = String::with_capacity(self.prefix.len() + path.len());
        full.push_str(&self.prefix);
        full.push_str(path);
        url.set_path(&full);
        url.set_query(query);
        let rest = url.path().strip_prefix(self.prefix.as_str());
        if !rest.is_some_and(|r| r.starts_with('/')) {
            return Err(GatewayError::InvalidPath(
                "the path would leave the upstream",
            ));
        }
        Ok(url)
    }

    /// Sends a request and waits (up to the header timeout) for the response head.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: reqwest::Body,
    ) -> Result<http::Response<reqwest::Body>, GatewayError> {
        let mut request = reqwest::Request::new(method, url);
        *request.headers_mut() = headers;
        *request.body_mut() = Some(body);
        let response = match tokio::time::timeout(self.header_timeout, self.client.execute(request))
            .await
        {
            Err(_) => return Err(GatewayError::UpstreamTimeout(self.header_timeout.as_secs())),
            Ok(Err(error)) => {
                let error = error.without_url();
                let mapped = if error.is_connect() {
                    GatewayError::UpstreamUnreachable
                } else if error.is_timeout() {
                    GatewayError::UpstreamTimeout(self.header_timeout.as_secs())
                } else {
                    GatewayError::UpstreamFailed
                };
                tracing::warn!(error = %error_chain(&error), code = mapped.code(), "upstream request failed");
                return Err(mapped);
            }
            Ok(Ok(response)) => response,
        };
        let mut response = http::Response::from(response);
        remove_hop_by_hop(response.headers_mut());
        Ok(response)
    }
}

fn upstream_prefix(base: &str) -> &str {
    // `base` is scheme://authority[/prefix]; the prefix starts at the third '/'.
    base.match_indices('/')
        .nth(2)
        .map_or("/", |(i, _)| &base[i..])
}

/// Refuses paths the URL parser would rewrite into another path: dot
/// segments (also percent-encoded) and backslashes, and anything that is not
/// origin-form.
fn check_path(path: &str) -> Result<(), GatewayError> {
    if !path.starts_with('/') {
        return Err(GatewayError::InvalidPath("the path must start with /"));
    }
    if path.contains('\\') {
        return Err(GatewayError::InvalidPath(
            "backslashes are not allowed in the path",
        ));
    }
    let is_dot = |segment: &str| {
        let s = segment.to_ascii_lowercase().replace("%2e", ".");
        s == "." || s == ".."
    };
    if path.split('/').any(is_dot) {
        return Err(GatewayError::InvalidPath(
            "dot segments are not allowed in the path",
        ));
    }
    Ok(())
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// Removes hop-by-hop headers: the fixed list, `Proxy-*`, and every header
/// that `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    remove_matching(headers, |k| k.starts_with("proxy-"));
}

/// Removes every header whose (lower-case) name matches `pred`; allocates
/// only when one does.
pub fn remove_matching(headers: &mut HeaderMap, pred: impl Fn(&str) -> bool) {
    if headers.keys().any(|k| pred(k.as_str())) {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|k| pred(k.as_str()))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
}

/// Turns the client's headers into the upstream request's headers.
///
/// Drops hop-by-hop headers, `Host` (the client sets it from the URL),
/// `Content-Length` (the body's own length is used), `Expect`, client-address
/// headers (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `X-Amzn-*`) and,
/// when a key is injected, the client's Authorization.
pub fn upstream_headers(mut headers: HeaderMap, inject: Option<&Secret>) -> HeaderMap {
    remove_hop_by_hop(&mut headers);
    for name in [
        header::HOST,
        header::CONTENT_LENGTH,
        header::EXPECT,
        header::FORWARDED,
    ] {
        headers.remove(name);
    }
    remove_matching(&mut headers, |k| {
        k.starts_with("x-forwarded-") || k.starts_with("x-amzn-") || k == "x-real-ip"
    });
    if let Some(key) = inject {
        let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose()))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-upstream-key"));
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(base: &str) -> Proxy {
        Proxy::new(
            Upstream::parse(base).unwrap(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[test]
    fn target_keeps_prefix_path_and_query() {
        let p = proxy("http://127.0.0.1:9/openai");
        let u = p.target("/v1/models", Some("a=1&b=%2F")).unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:9/openai/v1/models?a=1&b=%2F");
        let u = proxy("https://api.openai.com")
            .target("/v1/files/f%2Fx/content", None)
            .unwrap();
        assert_eq!(u.as_str(), "https://api.openai.com/v1/files/f%2Fx/content");
    }

    #[test]
    fn ssrf_attempts_stay_on_the_upstream() {
        let p = proxy("https://api.openai.com/base");
        for path in [
            "//evil.example/x",
            "/@evil.example",
            "/v1@evil.example:80/x",
            "/%2F%2Fevil.example",
        ] {
            let u = p.target(path, None).unwrap();
            assert_eq!(u.host_str(), Some("api.openai.com"), "{path}");
            assert!(u.path().starts_with("/base/"), "{path}");
        }
        for path in [
            "/../x",
            "/v1/%2e%2e/x",
            "/v1/.%2E",
            "/a/./b",
            "/\\evil.example",
            "*",
            "evil.example",
        ] {
            assert!(
                matches!(p.target(path, None), Err(GatewayError::InvalidPath(_))),
                "{path}"
            );
        }
    }

    #[test]
    fn header_hygiene() {
        let mut h = HeaderMap::new();
        for (k, v) in [
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
            ("authorization", "Bearer sk-client"),
            ("openai-organization", "org-1"),
            ("content-type", "application/json"),
            ("accept-encoding", "gzip"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = upstream_headers(h.clone(), None);
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
        let out = upstream_headers(h, Some(&Secret::new("sk-injected")));
        assert_eq!(out["authorization"], "Bearer sk-injected");
        assert!(out["authorization"].is_sensitive());
    }
}
