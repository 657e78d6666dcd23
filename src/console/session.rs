//! Console sessions: the cookie, what it may open, and the guards around
//! logging in.
//!
//! - `POST /v1/gateway/session` with `{"token": "<admin token>"}` opens a
//!   session: an opaque id of 256 random bits in the cookie [`COOKIE`]
//!   (`HttpOnly`, `SameSite=Strict`, `Path=/`, `Secure` over https, a
//!   `Max-Age` of the session's length). The store keeps only the id's
//!   SHA-256, with the admin's name and the end; the cookie holds neither
//!   the token nor its digest.
//! - The cookie authenticates the admin API only (`/v1/gateway/…`), and only
//!   while the session has not ended and its admin token is still an admin
//!   token (revoked, disabled, expired or demoted: refused).
//! - A state-changing request made with the cookie must come from the
//!   gateway's own page: an `Origin` equal to the gateway's own, or
//!   `Sec-Fetch-Site: same-origin` (cross-site request forgery).
//! - Failed logins are counted per client address ([`Logins`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use http::{header, HeaderMap, Method};
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const COOKIE: &str = "gw_session";

/// A new session id: [`crate::tokens::random_id`].
pub fn new_id() -> Result<String, String> {
    crate::tokens::random_id()
}

/// What a session is stored under: the SHA-256 of its id, in hex.
pub fn key(id: &str) -> String {
    Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The session id in a request's cookies, if it carries one that looks
/// like ours (43 base64url characters).
pub fn from_request(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|id| {
            id.len() == 43
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The `Set-Cookie` value that opens a session of `max_age` seconds.
pub fn set_cookie(id: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}")
}

/// The `Set-Cookie` value that removes the cookie.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", 0, secure)
}

/// Whether a cookie-authenticated request may change state: a safe method,
/// or one that came from the gateway's own page (`Origin` names this host
/// on the scheme it was reached by, or the browser says `same-origin`).
pub fn same_origin(method: &Method, headers: &HeaderMap, https: bool) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site == Some("same-origin") {
        return true;
    }
    if site.is_some() {
        // The browser says it is another site's request, whatever `Origin` holds.
        return false;
    }
    let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let scheme = if https { "https" } else { "http" };
    origin.eq_ignore_ascii_case(&format!("{scheme}://{host}"))
}

/// Failed logins per client address, in one-minute windows: past
/// [`Logins::per_minute`] failures, an address waits for the next window.
/// In memory (each Lambda container counts its own), and bounded: at most
/// [`MAX_ADDRESSES`] addresses are followed, and while that many have
/// failed within the minute a new one is refused too.
pub struct Logins {
    per_minute: u32,
    failures: Mutex<HashMap<Option<IpAddr>, (i64, u32)>>,
}

/// The most addresses followed at once.
pub const MAX_ADDRESSES: usize = 4096;

impl Logins {
    /// A counter allowing `per_minute` failures a minute per address.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The seconds `client` must wait before trying again, if it must.
    pub fn wait(&self, client: Option<IpAddr>, now: DateTime<Utc>) -> Option<u64> {
        let minute = now.timestamp().div_euclid(60);
        let wait = u64::try_from(60 - now.timestamp().rem_euclid(60)).unwrap_or(60);
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(&client) {
            Some((at, count)) if *at == minute && *count >= self.per_minute => Some(wait),
            Some(_) => None,
            None if failures.len() >= MAX_ADDRESSES => {
                failures.retain(|_, (at, _)| *at == minute);
                (failures.len() >= MAX_ADDRESSES).then_some(wait)
            }
            None => None,
        }
    }

    /// Counts a failed login from `client`.
    pub fn failed(&self, client: Option<IpAddr>, now: DateTime<Utc>) {
        let minute = now.timestamp().div_euclid(60);
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MAX_ADDRESSES && !failures.contains_key(&client) {
            failures.retain(|_, (at, _)| *at == minute);
            if failures.len() >= MAX_ADDRESSES {
                return;
            }
        }
        let entry = failures.entry(client).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_cookie_holds_an_opaque_id_with_every_flag() {
        let id = new_id().unwrap();
        assert_eq!(id.len(), 43);
        assert_ne!(id, new_id().unwrap());
        assert_eq!(key(&id).len(), 64);
        let cookie = set_cookie(&id, 28_800, true);
        assert_eq!(
            cookie,
            format!("gw_session={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age=28800; Secure")
        );
        assert!(!set_cookie(&id, 60, false).contains("Secure"));
        let got = headers(&[("cookie", &format!("theme=dark; gw_session={id}; x=1"))]);
        assert_eq!(from_request(&got), Some(id.as_str()));
        for bad in [
            "gw_session=short",
            "gw_session=<script>aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "other=1",
        ] {
            assert_eq!(from_request(&headers(&[("cookie", bad)])), None, "{bad}");
        }
    }

    #[test]
    fn only_the_gateways_own_page_may_change_state_with_the_cookie() {
        let post = Method::POST;
        let own = headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080"),
        ]);
        assert!(same_origin(&post, &own, false));
        assert!(!same_origin(&post, &own, true), "the scheme counts");
        let other = headers(&[("origin", "https://evil.example"), ("host", "gw.example")]);
        assert!(!same_origin(&post, &other, true));
        assert!(
            !same_origin(&post, &headers(&[("host", "gw.example")]), true),
            "no Origin"
        );
        assert!(same_origin(
            &Method::DELETE,
            &headers(&[("sec-fetch-site", "same-origin")]),
            true
        ));
        let forged = headers(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://gw.example"),
            ("host", "gw.example"),
        ]);
        assert!(!same_origin(&Method::PATCH, &forged, true));
        assert!(
            same_origin(&Method::GET, &other, true),
            "reading is not forgery"
        );
    }

    #[test]
    fn failed_logins_are_limited_per_address_and_the_window_moves_on() {
        let logins = Logins::new(3);
        let at: DateTime<Utc> = "2026-06-01T12:00:10Z".parse().unwrap();
        let a = Some("203.0.113.9".parse().unwrap());
        let b = Some("198.51.100.1".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(logins.wait(a, at), None);
            logins.failed(a, at);
        }
        assert_eq!(logins.wait(a, at), Some(50));
        assert_eq!(logins.wait(b, at), None, "another address is not held up");
        let next = at + chrono::Duration::seconds(50);
        assert_eq!(logins.wait(a, next), None);
    }

    #[test]
    fn the_counter_is_bounded_however_many_addresses_try() {
        let logins = Logins::new(1);
        let at: DateTime<Utc> = "2026-06-01T12:00:10Z".parse().unwrap();
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            let ip = Some(IpAddr::from(std::net::Ipv4Addr::from(i)));
            logins.failed(ip, at);
        }
        assert!(logins.failures.lock().unwrap().len() <= MAX_ADDRESSES);
        let fresh = Some(IpAddr::from(std::net::Ipv4Addr::new(250, 0, 0, 1)));
        assert!(
            logins.wait(fresh, at).is_some(),
            "full of this minute's failures: refused"
        );
        let later = at + chrono::Duration::minutes(1);
        assert_eq!(logins.wait(fresh, later), None, "last minute's are let go");
    }
}
