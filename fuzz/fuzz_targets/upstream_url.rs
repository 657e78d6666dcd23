//! Request path and query → upstream target: always under the upstream's
//! prefix, and no `token` parameter survives.
#![no_main]
use std::sync::OnceLock;
use std::time::Duration;

use chatgpt_gateway::auth::strip_token_params;
use chatgpt_gateway::proxy::{Proxy, Upstream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = text.split_once('?').unwrap_or((text, ""));
    let mut found = Vec::new();
    let stripped = strip_token_params(query, &mut found);
    if let Some(q) = &stripped {
        assert!(!q
            .split('&')
            .any(|p| p.split('=').next().unwrap().eq_ignore_ascii_case("token")));
    }
    // Building the HTTP client is costly: once per process, not per input.
    static PROXY: OnceLock<Proxy> = OnceLock::new();
    let proxy = PROXY.get_or_init(|| {
        let upstream = Upstream::parse("https://api.openai.com/prefix").unwrap();
        Proxy::new(upstream, Duration::from_secs(1), Duration::from_secs(1)).unwrap()
    });
    if let Ok(target) = proxy.target(path, stripped.as_deref()) {
        // Origin-form under the prefix: the pool adds the upstream's host.
        assert!(target.path().starts_with("/prefix/"));
    }
});
