//! Property tests: token-file parsing, the request → upstream URL mapping, and
//! header filtering, over generated inputs.

use std::sync::OnceLock;
use std::time::Duration;

use chatgpt_gateway::auth::strip_token_params;
use chatgpt_gateway::headers::{to_upstream, Strip};
use chatgpt_gateway::proxy::{Proxy, Upstream};
use chatgpt_gateway::tokens::format;
use chrono::FixedOffset;
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// A token value planted in generated inputs: no error may ever show it.
const CANARY: &str = "CANARY-7f3a9";

/// A proxy per upstream prefix, built once: building the HTTP client (its TLS
/// roots) costs far more than a case.
fn proxy(prefix: &str) -> &'static Proxy {
    static PROXIES: OnceLock<Vec<(&'static str, Proxy)>> = OnceLock::new();
    let all = PROXIES.get_or_init(|| {
        ["", "/openai", "/a/b"]
            .into_iter()
            .map(|p| {
                let upstream =
                    Upstream::parse(&format!("https://api.example.com:8443{p}")).unwrap();
                (
                    p,
                    Proxy::new(upstream, Duration::from_secs(1), Duration::from_secs(1)).unwrap(),
                )
            })
            .collect()
    });
    &all.iter().find(|(p, _)| *p == prefix).unwrap().1
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // Failures are written next to this file and replayed first on every run.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

fn utc() -> FixedOffset {
    FixedOffset::east_opt(0).unwrap()
}

proptest! {
    #![proptest_config(config())]

    /// Any text, with `§` standing for a planted token value: parsing answers
    /// Ok or an error, never panics, and the error never shows the token.
    #[test]
    fn parsing_arbitrary_text_never_echoes_a_token(
        text in "([\\[\\]{}:,\" ]|§|name|token|sha256|expires|upstream_key|[a-z0-9]{1,4}|.){0,60}"
    ) {
        let text = text.replace('§', &format!("\"{CANARY}\""));
        if let Err(error) = format::parse(&text, utc()) {
            prop_assert!(!error.to_string().contains(CANARY), "{}: {}", text, error);
        }
    }

    /// An entry holding a token in every place a value can go but `name`
    /// (the right key, the wrong key, a key name, the wrong type): no error shows it.
    #[test]
    fn entries_with_misplaced_tokens_never_echo_them(
        fields in prop::collection::vec(
            (prop::sample::select(vec!["name", "token", "sha256", "expires", "upstream_key", "expiry", "§"]),
             prop::sample::select(vec!["§", "\"\"", "5", "[§]", "{\"token\": §}", "\"2026-1-1\"", "null"])),
            0..5),
    ) {
        let members: Vec<String> = fields.iter().map(|(k, v)| {
            let key = if *k == "§" { CANARY.to_owned() } else { (*k).to_owned() };
            // A name is a label, shown on purpose.
            let v = if *k == "name" { "\"n\"" } else { v };
            format!("\"{key}\": {v}")
        }).collect();
        let text = format!("[{{{}}}]", members.join(", ")).replace('§', &format!("\"{CANARY}\""));
        if let Err(error) = format::parse(&text, utc()) {
            prop_assert!(!error.to_string().contains(CANARY), "{}: {}", text, error);
        }
    }

    /// Arbitrary JSON shapes built from the format's own keys.
    #[test]
    fn parsing_generated_lists(entries in prop::collection::vec(
        (prop::option::of("[a-z]{1,8}"), prop::option::of("[A-Za-z0-9_-]{0,20}"),
         prop::option::of("(20[0-9]{2}-[01][0-9]-[0-3][0-9]( [0-2][0-9]:[0-5][0-9])?|junk|2026-12-31T23:59:59Z)"),
         prop::option::of("[0-9a-f]{62,66}")),
        0..6)) {
        let items: Vec<serde_json::Value> = entries.iter().map(|(name, token, expires, sha)| {
            let mut m = serde_json::Map::new();
            if let Some(n) = name { m.insert("name".into(), n.clone().into()); }
            if let Some(t) = token { m.insert("Token".into(), format!("SECRET{t}").into()); }
            if let Some(e) = expires { m.insert("EXPIRE".into(), e.clone().into()); }
            if let Some(s) = sha { m.insert("sha256".into(), s.clone().into()); }
            serde_json::Value::Object(m)
        }).collect();
        let text = serde_json::json!({ "tokens": items }).to_string();
        match format::parse(&text, utc()) {
            Ok(list) => {
                prop_assert_eq!(list.tokens.entries().len(), entries.len());
                for (name, token, _, _) in &entries {
                    if let Some(t) = token {
                        let found = list.tokens.find(format!("SECRET{t}").as_bytes());
                        prop_assert!(found.is_some());
                        if let Some(n) = name {
                            prop_assert_eq!(&*found.unwrap().name, n.as_str());
                        }
                    }
                }
            }
            Err(error) => {
                let message = error.to_string();
                prop_assert!(message.starts_with("entry "), "{}", message);
                prop_assert!(!message.contains("SECRET"), "{}", message);
            }
        }
    }

    /// The host is always the upstream's, the prefix is kept, and the query
    /// arrives less every `token`, other parameters byte for byte in order.
    #[test]
    fn upstream_url_mapping(
        segments in prop::collection::vec("([A-Za-z0-9_~-]|%[0-9A-F]{2}|[@:!$&'()*+,;=]){0,12}", 0..6),
        params in prop::collection::vec(("[a-z]{0,5}", "([A-Za-z0-9_~.-]|%[0-9A-F]{2}|\\+){0,10}"), 0..8),
        tokens in prop::collection::vec((0usize..9, "[A-Za-z0-9]{1,10}"), 0..3),
        prefix in prop::sample::select(vec!["", "/openai", "/a/b"]),
    ) {
        let path = format!("/{}", segments.join("/"));
        prop_assume!(!path.split('/').any(|s| { let l = s.to_ascii_lowercase().replace("%2e", "."); l == "." || l == ".." }));
        let kept: Vec<String> = params.iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("token"))
            .map(|(k, v)| format!("{k}={v}")).collect();
        let mut all = kept.clone();
        for (at, t) in &tokens {
            all.insert((*at).min(all.len()), format!("token={t}"));
        }
        let query = all.join("&");
        let mut found = Vec::new();
        let stripped = strip_token_params(&query, &mut found);
        prop_assert_eq!(found.len(), tokens.len());
        let expected = kept.join("&");
        prop_assert_eq!(stripped.clone().unwrap_or_default(), expected.clone());

        // Origin-form only: the host is the pool's, never the request's.
        let url = proxy(prefix).target(&path, stripped.as_deref()).unwrap();
        let with_slash = format!("{prefix}/");
        prop_assert!(url.path().starts_with(&with_slash));
        let want_path = format!("{prefix}{path}");
        prop_assert_eq!(url.path(), want_path.as_str());
        prop_assert_eq!(url.query().unwrap_or_default(), expected.as_str());
    }

    /// Hop-by-hop, client-address and Connection-named headers never pass;
    /// every other header passes with its value.
    #[test]
    fn header_filtering(
        others in prop::collection::vec(("x-[a-z]{1,8}", "[ -~]{0,16}"), 0..8),
        named in prop::collection::vec("x-hop-[a-z]{1,6}", 0..3),
    ) {
        let mut headers = HeaderMap::new();
        for (k, v) in &others {
            headers.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v.trim()).unwrap());
        }
        for n in &named {
            headers.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_static("1"));
        }
        if !named.is_empty() {
            headers.append("connection", HeaderValue::from_str(&named.join(", ")).unwrap());
        }
        for fixed in ["keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "proxy-authorization",
                      "proxy-connection", "host", "x-forwarded-for", "forwarded", "x-amzn-trace-id", "x-real-ip", "expect"] {
            headers.append(HeaderName::from_static(fixed), HeaderValue::from_static("v"));
        }
        let out = to_upstream(headers, Strip::default(), None);
        for name in out.keys() {
            let n = name.as_str();
            prop_assert!(!n.starts_with("proxy-") && !n.starts_with("x-forwarded-") && !n.starts_with("x-amzn-"));
            prop_assert!(!["connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "host",
                           "forwarded", "x-real-ip", "expect"].contains(&n));
            prop_assert!(!named.iter().any(|h| h == n), "{} was named by Connection", n);
        }
        for (k, v) in &others {
            if named.iter().any(|h| h == k) || k.starts_with("x-forwarded-") || k.starts_with("x-amzn-") || k == "x-real-ip" {
                continue;
            }
            let values: Vec<_> = out.get_all(k.as_str()).iter().map(|x| x.to_str().unwrap().to_owned()).collect();
            prop_assert!(values.contains(&v.trim().to_owned()), "{} lost", k);
        }
    }
}
