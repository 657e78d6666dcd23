//! Per-token IP allowlists on the local server: the client is the TCP peer,
//! or, from a `TRUSTED_PROXIES` peer, the rightmost `X-Forwarded-For`
//! address not in that list. A refused request reaches nothing (no
//! upstream, no reservation) and the access line names the address judged.
//! (Lambda's source IP: `lambda_events.rs`.)

use crate::common::*;

const TOKENS: &str = r#"[
    {"name": "home", "token": "ip-home", "allow_ips": ["127.0.0.0/8", "::1"]},
    {"name": "office", "token": "ip-office", "allow_ips": ["203.0.113.0/24"],
     "limits": {"requests_per_minute": 100}},
    {"name": "anywhere", "token": "ip-any"}
]"#;

async fn get(gw: &Served, token: &str, forwarded: &[&str]) -> (u16, serde_json::Value) {
    let mut request = client().get(gw.url("/v1/models")).bearer_auth(token);
    for line in forwarded {
        request = request.header("x-forwarded-for", *line);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or_default();
    (status, body)
}

fn last_client_ip(gw: &Served) -> serde_json::Value {
    gw.access_lines().last().unwrap()["client_ip"].clone()
}

#[tokio::test]
async fn without_trusted_proxies_the_peer_is_judged_and_x_forwarded_for_is_ignored() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(TOKENS).serve().await;
    assert_eq!(get(&gw, "ip-home", &[]).await.0, 200);
    gw.wait_access_lines(1).await;
    assert_eq!(last_client_ip(&gw), "127.0.0.1");
    assert_eq!(get(&gw, "ip-any", &["203.0.113.5"]).await.0, 200);

    // A forged header does not make a loopback client an office one.
    let before = up.count();
    let (status, body) = get(&gw, "ip-office", &["203.0.113.5"]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "ip_not_allowed");
    assert_eq!(body["error"]["type"], "permission_error");
    assert_eq!(up.count(), before, "nothing was forwarded");
    let lines = gw.wait_access_lines(3).await;
    assert_eq!(lines[2]["error_code"], "ip_not_allowed");
    assert_eq!(lines[2]["token"], "office");
    assert_eq!(lines[2]["client_ip"], "127.0.0.1");
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_rightmost_untrusted_address_is_the_client() {
    let up = MockUpstream::start().await;
    // A clock that stands still: the minute's count is the test's alone.
    let clock = chatgpt_gateway::clock::Clock::manual("2026-06-01T12:00:10Z".parse().unwrap());
    let gw = Launch::new(&up.url())
        .tokens(TOKENS)
        .env("TRUSTED_PROXIES", "127.0.0.1/32, 10.0.0.0/8")
        .clock(&clock)
        .serve()
        .await;
    // The proxy (this test, on loopback) says who it heard from.
    assert_eq!(get(&gw, "ip-office", &["203.0.113.5"]).await.0, 200);
    gw.wait_access_lines(1).await;
    assert_eq!(last_client_ip(&gw), "203.0.113.5");
    // Through a second trusted hop, split over two header lines.
    assert_eq!(
        get(&gw, "ip-office", &["6.6.6.6, 203.0.113.9", "10.1.2.3"])
            .await
            .0,
        200
    );
    gw.wait_access_lines(2).await;
    assert_eq!(last_client_ip(&gw), "203.0.113.9");

    // The client wrote an office address itself; its proxy appended the real one.
    let before = up.count();
    let (status, body) = get(&gw, "ip-office", &["203.0.113.5, 198.51.100.1"]).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &"ip_not_allowed".into())
    );
    // A loopback token used from far away, through the proxy.
    assert_eq!(get(&gw, "ip-home", &["198.51.100.1"]).await.0, 403);
    // What the trusted proxy wrote is not an address: the client is unknown.
    let (status, _) = get(&gw, "ip-office", &["203.0.113.5, unknown"]).await;
    assert_eq!(status, 403);
    assert_eq!(up.count(), before, "nothing refused was forwarded");
    let lines = gw.wait_access_lines(5).await;
    assert!(
        lines[4].get("client_ip").is_none_or(|v| v.is_null()),
        "{}",
        lines[4]
    );

    // The refusals reserved and counted nothing: the office token's
    // requests are the two that were served.
    let usage: serde_json::Value = client()
        .get(gw.url("/v1/gateway/usage"))
        .bearer_auth("ip-office")
        .header("x-forwarded-for", "203.0.113.5")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let day = usage["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["limit"] == "requests_per_minute")
        .unwrap_or_else(|| panic!("{usage}"))
        .clone();
    assert_eq!(day["used"], 2, "{usage}");
}

#[tokio::test]
async fn a_bad_allow_ips_or_trusted_proxies_is_refused_at_start_naming_it() {
    let up = MockUpstream::start().await;
    let error = Launch::new(&up.url())
        .tokens(r#"[{"name": "n", "token": "t", "allow_ips": ["10.0.0.0/33"]}]"#)
        .try_serve()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("(n): `allow_ips`: `10.0.0.0/33` is not an IP address"),
        "{error}"
    );
    let error = Launch::new(&up.url())
        .tokens(r#"[{"name": "n", "token": "t", "allow_ips": []}]"#)
        .try_serve()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("at least one network"), "{error}");
    let error = Launch::new(&up.url())
        .tokens(TOKENS)
        .env("TRUSTED_PROXIES", "10.0.0.0/8,proxy.internal")
        .try_serve()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("TRUSTED_PROXIES")
            && error.contains("`proxy.internal` is not an IP address"),
        "{error}"
    );
}
