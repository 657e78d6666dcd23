//! Builds the upstream request, sends it, and hands back the streaming response.
//!
//! The path and query are forwarded as received (less the gateway token),
//! appended to the configured upstream base; the request target's own
//! authority, `Host` and `X-Forwarded-Host` are ignored, so no request can
//! pick another host. Hop-by-hop headers, client-address headers and the
//! gateway credential are dropped. Bodies stream in both directions.

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, Method};
use reqwest::Url;

use crate::body::client_fault;
use crate::error::{error_chain, ConfigError, GatewayError};
use crate::headers;

/// The upstream's base URL, parsed and checked once:
/// `http(s)://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The URL (no query, no fragment, no credentials).
    url: Url,
    /// Its path prefix without a trailing slash (empty for none).
    prefix: String,
}

impl Upstream {
    /// Parses and checks an upstream URL.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let problem = |problem: String| ConfigError::Upstream {
            url: text.to_owned(),
            problem,
        };
        let mut url = Url::parse(text.trim()).map_err(|e| problem(format!("is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(problem("must start with http:// or https://".into()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(problem("has no host".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::UpstreamCredentials);
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(problem("must not have a query or fragment".into()));
        }
        let prefix = url.path().trim_end_matches('/').to_owned();
        url.set_path(&prefix);
        Ok(Self { url, prefix })
    }
}

impl fmt::Display for Upstream {
    /// `scheme://authority/prefix` without a trailing slash.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str().trim_end_matches('/'))
    }
}

/// The certificates TLS trusts: the bundled roots, and those of `ca_file`.
fn roots(ca_file: Option<&std::path::Path>) -> Result<Vec<reqwest::Certificate>, ConfigError> {
    let bad = |problem: String| ConfigError::Invalid {
        setting: crate::config::UPSTREAM_CA_FILE,
        problem,
    };
    let mut roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|der| reqwest::Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::HttpClient(error_chain(&e)))?;
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| bad(format!("{}: cannot read: {e}", path.display())))?;
        let own = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| bad(format!("{}: {}", path.display(), error_chain(&e))))?;
        if own.is_empty() {
            return Err(bad(format!("{}: no PEM certificate in it", path.display())));
        }
        roots.extend(own);
    }
    Ok(roots)
}

/// The upstream side: one shared client with a keep-alive pool.
#[derive(Debug, Clone)]
pub struct Proxy {
    client: reqwest::Client,
    upstream: Upstream,
    header_timeout: Duration,
}

impl Proxy {
    /// Builds the shared HTTP client, trusting the bundled roots.
    pub fn new(
        upstream: Upstream,
        header_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        Self::trusting(upstream, header_timeout, connect_timeout, None)
    }

    /// Builds the shared HTTP client. TLS trusts the Mozilla roots compiled
    /// into the binary (nothing is read from the system's certificate store
    /// at start-up, which a cold Lambda container would pay for), plus the
    /// PEM certificates in `ca_file` (`UPSTREAM_CA_FILE`, e.g. a corporate
    /// proxy's CA).
    pub fn trusting(
        upstream: Upstream,
        header_timeout: Duration,
        connect_timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, ConfigError> {
        let client = reqwest::Client::builder()
            .tls_certs_only(roots(ca_file)?)
            // A proxy passes redirects to its client rather than following them.
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .no_proxy()
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ConfigError::HttpClient(error_chain(&e)))?;
        Ok(Self {
            client,
            upstream,
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
        let url = format!("{}/", self.upstream);
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
        let prefix = self.upstream.prefix.as_str();
        let mut url = self.upstream.url.clone();
        let mut full = String::with_capacity(prefix.len() + path.len());
        full.push_str(prefix);
        full.push_str(path);
        url.set_path(&full);
        url.set_query(query);
        let rest = url.path().strip_prefix(prefix);
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
                if let Some(fault) = client_fault(&error) {
                    tracing::info!(side = "client", error = %error_chain(&error), code = fault.code(), "the client's request body failed");
                    return Err(fault);
                }
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
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            tracing::warn!(
                code = GatewayError::UpstreamUpgrade.code(),
                "the upstream switched protocols"
            );
            return Err(GatewayError::UpstreamUpgrade);
        }
        let mut response = http::Response::from(response);
        headers::from_upstream(response.headers_mut());
        Ok(response)
    }
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
    fn upstream_keeps_prefix_and_drops_trailing_slash() {
        let u = Upstream::parse("http://127.0.0.1:9000/openai/").unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:9000/openai");
        assert_eq!(u.prefix, "/openai");
        let u = Upstream::parse("https://api.openai.com/").unwrap();
        assert_eq!(
            (u.to_string().as_str(), u.prefix.as_str()),
            ("https://api.openai.com", "")
        );
        assert!(matches!(
            Upstream::parse("https://u:p@x"),
            Err(ConfigError::UpstreamCredentials)
        ));
        for bad in ["ftp://x", "not a url", "https://x/?a=1", "/relative"] {
            assert!(
                matches!(Upstream::parse(bad), Err(ConfigError::Upstream { .. })),
                "{bad}"
            );
        }
    }
}
