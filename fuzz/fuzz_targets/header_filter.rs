//! Header filtering: hop-by-hop and Connection-named headers never pass.
#![no_main]
use chatgpt_gateway::headers::{to_upstream, Strip};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let named: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| {
            v.split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let out = to_upstream(headers, Strip::default(), None);
    for name in out.keys() {
        let n = name.as_str();
        assert!(![
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "host"
        ]
        .contains(&n));
        assert!(!n.starts_with("proxy-") && !n.starts_with("x-forwarded-"));
        assert!(!named.iter().any(|h| h == n));
    }
});
