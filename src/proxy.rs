//! Builds the upstream request, sends it, and hands back the streaming response.
//!
//! The path and query are forwarded as received (less the gateway token),
//! appended to the configured upstream base; the request target's own
//! authority, `Host` and `X-Forwarded-Host` are ignored, so no request can
//! pick another host. Hop-by-hop headers, client-address headers and the
//! gateway credential are dropped. Bodies stream in both directions.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use url::Url;

use crate::body::client_fault;
use crate::error::{error_chain, ConfigError, GatewayError};
use crate::headers;
use crate::pool::{Pool, ResponseBody, SendError};

pub use crate::pool::UpstreamBody;

/// The upstream's base URL, parsed and checked once:
/// `http(s)://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Its scheme and authority, as every request's URI takes them.
    scheme: Scheme,
    authority: Authority,
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
        let url = Url::parse(text.trim()).map_err(|e| problem(format!("is not a URL: {e}")))?;
        let scheme = match url.scheme() {
            "http" => Scheme::HTTP,
            "https" => Scheme::HTTPS,
            _ => return Err(problem("must start with http:// or https://".into())),
        };
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
        // The host as the URL parser normalised it (lower case, IDNA, IPv6
        // brackets), with the port unless it is the scheme's default.
        let host = url.host_str().unwrap_or_default();
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let authority = Authority::try_from(authority)
            .map_err(|e| problem(format!("has a host this client cannot use: {e}")))?;
        Ok(Self {
            scheme,
            authority,
            prefix,
        })
    }
}

impl fmt::Display for Upstream {
    /// `scheme://authority/prefix` without a trailing slash.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

/// The certificates TLS trusts: the bundled roots, and those of `ca_file`.
fn roots(ca_file: Option<&std::path::Path>) -> Result<rustls::RootCertStore, ConfigError> {
    let bad = |problem: String| ConfigError::Invalid {
        setting: crate::config::UPSTREAM_CA_FILE,
        problem,
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| bad(format!("{}: cannot read: {e}", path.display())))?;
        let own = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        if own.is_empty() {
            return Err(bad(format!("{}: no PEM certificate in it", path.display())));
        }
        for cert in own {
            roots
                .add(cert)
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        }
    }
    Ok(roots)
}

/// The upstream side: hyper's client connections, over rustls, in a
/// keep-alive pool ([`crate::pool`]).
#[derive(Debug, Clone)]
pub struct Proxy {
    pool: Arc<Pool>,
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

    /// Builds the upstream side: hyper's client connections driven directly
    /// (no redirects followed, no proxy read from the environment, no header
    /// added but `Host`), HTTP/1.1 or HTTP/2 as the upstream's TLS offers.
    /// TLS trusts the Mozilla roots compiled into the binary (nothing is read
    /// from the system's certificate store at start-up, which a cold Lambda
    /// container would pay for), plus the PEM certificates in `ca_file`
    /// (`UPSTREAM_CA_FILE`, e.g. a corporate proxy's CA).
    pub fn trusting(
        upstream: Upstream,
        header_timeout: Duration,
        connect_timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, ConfigError> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let tls = rustls::ClientConfig::builder_with_provider(provider.into())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::HttpClient(error_chain(&e)))?
            .with_root_certificates(roots(ca_file)?)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        let origin = Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| ConfigError::HttpClient(e.to_string()))?;
        Ok(Self {
            pool: Arc::new(Pool::new(connector, origin)),
            upstream,
            header_timeout,
        })
    }

    /// The same proxy with a keep-alive pool of its own. A server thread
    /// that runs its own runtime uses one, so that a request and the
    /// upstream connection it is sent on are driven by the same thread (a
    /// shared pool hands one thread's connections to another's requests,
    /// and every read then wakes the other thread).
    pub fn with_own_pool(&self) -> Self {
        Self {
            pool: Arc::new(self.pool.empty_copy()),
            ..self.clone()
        }
    }

    /// The upstream this proxy sends to.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Opens a connection (TCP and TLS) to the upstream ahead of the first
    /// request and leaves it idle in the pool, so a cold Lambda container
    /// does not pay for it on a client's time. No request is sent. Failures
    /// are only logged: the first request connects again.
    pub async fn warm_up(&self) {
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(2), self.pool.warm_up()).await;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match outcome {
            Ok(Ok(())) => tracing::info!(ms, "upstream connection warmed up"),
            Ok(Err(error)) => {
                tracing::warn!(error = %error_chain(&*error), ms, "upstream warm-up failed")
            }
            Err(_) => tracing::warn!(ms, "upstream warm-up timed out"),
        }
    }

    /// Maps a request path and (already stripped) query to the upstream
    /// request's target, in origin-form (the upstream's prefix, the path, the
    /// query). The scheme and authority are never the request's: the pool
    /// adds the upstream's own, parsed once, so no path can change the host.
    pub fn target(&self, path: &str, query: Option<&str>) -> Result<PathAndQuery, GatewayError> {
        check_path(path)?;
        let prefix = self.upstream.prefix.as_str();
        let mut full =
            String::with_capacity(prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        full.push_str(prefix);
        full.push_str(path);
        if let Some(query) = query {
            full.push('?');
            full.push_str(query);
        }
        let path_and_query = PathAndQuery::try_from(full)
            .map_err(|_| GatewayError::InvalidPath("the path is not a valid URI path"))?;
        let rest = path_and_query.path().strip_prefix(prefix);
        if !rest.is_some_and(|r| r.starts_with('/')) {
            return Err(GatewayError::InvalidPath(
                "the path would leave the upstream",
            ));
        }
        Ok(path_and_query)
    }

    /// Sends a request and waits (up to the header timeout) for the response head.
    pub async fn send(
        &self,
        method: Method,
        target: PathAndQuery,
        headers: HeaderMap,
        body: UpstreamBody,
    ) -> Result<http::Response<ResponseBody>, GatewayError> {
        let mut request = http::Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = Uri::from(target);
        *request.headers_mut() = headers;
        let mut response = match tokio::time::timeout(self.header_timeout, self.pool.send(request))
            .await
        {
            Err(_) => return Err(GatewayError::UpstreamTimeout(self.header_timeout.as_secs())),
            Ok(Err(SendError::Connect(error))) => {
                let mapped = GatewayError::UpstreamUnreachable;
                tracing::warn!(error = %error_chain(&*error), code = mapped.code(), "upstream request failed");
                return Err(mapped);
            }
            Ok(Err(SendError::Exchange(error))) => {
                if let Some(fault) = client_fault(&error) {
                    tracing::info!(side = "client", error = %error_chain(&error), code = fault.code(), "the client's request body failed");
                    return Err(fault);
                }
                let mapped = GatewayError::UpstreamFailed;
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
        headers::from_upstream(response.headers_mut());
        Ok(response)
    }
}

/// Refuses paths the URL parser would rewrite into another path: dot
/// segments (also percent-encoded) and backslashes, and anything that is not
/// origin-form.
pub fn check_path(path: &str) -> Result<(), GatewayError> {
    if !path.starts_with('/') {
        return Err(GatewayError::InvalidPath("the path must start with /"));
    }
    // Byte by byte: a path is a few dozen ASCII bytes, and every request
    // is checked twice (as it came, and as it goes).
    let bytes = path.as_bytes();
    if bytes.contains(&b'\\') {
        return Err(GatewayError::InvalidPath(
            "backslashes are not allowed in the path",
        ));
    }
    // A segment of one or two dots, each `.` or `%2e` in any case.
    let is_dot = |segment: &[u8]| {
        let mut rest = segment;
        let mut dots = 0;
        while !rest.is_empty() && dots < 3 {
            rest = match rest {
                [b'.', tail @ ..] => tail,
                [b'%', b'2', e, tail @ ..] if e.eq_ignore_ascii_case(&b'e') => tail,
                _ => return false,
            };
            dots += 1;
        }
        rest.is_empty() && (dots == 1 || dots == 2)
    };
    if bytes.split(|&b| b == b'/').any(is_dot) {
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
        assert_eq!(u.as_str(), "/openai/v1/models?a=1&b=%2F");
        let u = proxy("https://api.openai.com")
            .target("/v1/files/f%2Fx/content", None)
            .unwrap();
        assert_eq!(u.as_str(), "/v1/files/f%2Fx/content");
        // The host as the URL parser normalises it; a default port is dropped.
        let p = proxy("HTTPS://API.OpenAI.com:443");
        assert_eq!(p.upstream().to_string(), "https://api.openai.com");
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
            // Origin-form, under the prefix: the pool sends it to the
            // upstream's host (tests/tls.rs and tests/upstream.rs see it arrive).
            let u = p.target(path, None).unwrap();
            assert!(u.path().starts_with("/base/"), "{path}");
            assert_eq!(u.as_str(), format!("/base{path}"), "{path}");
        }
        // Dots that do not make a dot segment are names like any other.
        for path in [
            "/v1/...",
            "/v1/%2e%2e%2E",
            "/v1/.hidden",
            "/v1/a.b",
            "/v1/%2ex",
            "/v1/%2",
        ] {
            assert!(p.target(path, None).is_ok(), "{path}");
        }
        for path in [
            "/../x",
            "/v1/%2e%2e/x",
            "/v1/.%2E",
            "/v1/%2E.",
            "/v1/%2e",
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
