//! CORS for browser clients, off unless `CORS_ALLOW_ORIGINS` is set.
//!
//! `CORS_ALLOW_ORIGINS` is a comma-separated list of origins
//! (`https://chat.example.com,http://localhost:3000`) or `*`. When it is set,
//! the gateway answers preflight `OPTIONS` requests itself (a preflight carries
//! no credentials, so it needs no token), and adds the CORS headers to every
//! response from an allowed origin, proxied or error alike. The upstream's own
//! `Access-Control-*` headers are then dropped so that none is duplicated.

use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::config::CORS_ALLOW_ORIGINS;
use crate::error::ConfigError;

/// Response headers a browser script may read: OpenAI's request id, rate
/// limits and timings (the SDKs' `withResponse()` needs them).
pub const EXPOSED: &str = "x-request-id, openai-organization, openai-processing-ms, openai-version, \
     x-ratelimit-limit-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-requests, \
     x-ratelimit-remaining-tokens, x-ratelimit-reset-requests, x-ratelimit-reset-tokens, retry-after";

const METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";

/// The CORS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// Every origin (`*`).
    Any,
    /// These origins exactly (scheme, host and port).
    Origins(Vec<String>),
}

/// What CORS decided for one request.
#[derive(Debug, Clone)]
pub struct Decision {
    allow_origin: Option<HeaderValue>,
}

impl Cors {
    /// Parses `CORS_ALLOW_ORIGINS`; empty means off (`None`).
    pub fn parse(text: &str) -> Result<Option<Self>, ConfigError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if text == "*" {
            return Ok(Some(Self::Any));
        }
        let mut origins = Vec::new();
        for origin in text
            .split(',')
            .map(|o| o.trim().trim_end_matches('/'))
            .filter(|o| !o.is_empty())
        {
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let ok = host.is_some_and(|h| !h.is_empty() && !h.contains('/'));
            if !ok || HeaderValue::from_str(origin).is_err() {
                return Err(ConfigError::Invalid {
                    setting: CORS_ALLOW_ORIGINS,
                    problem: format!("`{origin}` is not an origin like https://chat.example.com"),
                });
            }
            origins.push(origin.to_ascii_lowercase());
        }
        Ok(Some(Self::Origins(origins)))
    }

    /// Decides for a request's headers.
    pub fn decide(&self, headers: &HeaderMap) -> Decision {
        let origin = headers.get(ORIGIN);
        let allow_origin = match (self, origin) {
            (Self::Any, _) => Some(HeaderValue::from_static("*")),
            (Self::Origins(list), Some(origin)) => origin
                .to_str()
                .ok()
                .filter(|o| list.iter().any(|allowed| allowed.eq_ignore_ascii_case(o)))
                .map(|_| origin.clone()),
            (Self::Origins(_), None) => None,
        };
        Decision { allow_origin }
    }

    /// The gateway's own answer to a preflight, or `None` if this is not one.
    pub fn preflight<B: From<bytes::Bytes>>(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<Response<B>> {
        if method != Method::OPTIONS || !headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD) {
            return None;
        }
        let decision = self.decide(headers);
        let mut response = Response::new(B::from(bytes::Bytes::new()));
        *response.status_mut() = match decision.allow_origin {
            Some(_) => StatusCode::NO_CONTENT,
            // No CORS headers: the browser refuses the call.
            None => StatusCode::FORBIDDEN,
        };
        let h = response.headers_mut();
        h.insert(VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = decision.allow_origin {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(METHODS),
            );
            let asked = headers.get(ACCESS_CONTROL_REQUEST_HEADERS).cloned();
            h.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                asked.unwrap_or_else(|| {
                    HeaderValue::from_static("authorization, content-type, x-token")
                }),
            );
            h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        }
        Some(response)
    }
}

impl Decision {
    /// The `Access-Control-Allow-Origin` value, when the origin is allowed.
    pub fn allow_origin(&self) -> Option<&HeaderValue> {
        self.allow_origin.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn parses_lists_and_refuses_non_origins() {
        assert_eq!(Cors::parse("").unwrap(), None);
        assert_eq!(Cors::parse("*").unwrap(), Some(Cors::Any));
        assert_eq!(
            Cors::parse("https://a.example, http://localhost:3000/").unwrap(),
            Some(Cors::Origins(vec![
                "https://a.example".into(),
                "http://localhost:3000".into()
            ]))
        );
        for bad in ["a.example", "https://a.example/path", "ftp://x"] {
            assert!(Cors::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn preflights() {
        let cors = Cors::parse("https://ok.example").unwrap().unwrap();
        let ask = headers(&[
            ("origin", "https://ok.example"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ]);
        let r: Response<bytes::Bytes> = cors.preflight(&Method::OPTIONS, &ask).unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(
            r.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://ok.example"
        );
        assert_eq!(
            r.headers()[ACCESS_CONTROL_ALLOW_HEADERS],
            "authorization, content-type"
        );
        let evil = headers(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ]);
        let r: Response<bytes::Bytes> = cors.preflight(&Method::OPTIONS, &evil).unwrap();
        assert_eq!(r.status(), 403);
        assert!(r.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert!(cors
            .preflight::<bytes::Bytes>(&Method::OPTIONS, &headers(&[]))
            .is_none());
    }
}
