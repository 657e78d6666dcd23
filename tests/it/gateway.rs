//! Integration tests: the gateway in front of a mock OpenAI upstream, served
//! in this process; the cases that need a process of their own (logs,
//! signals, start-up refusals, flags against the environment) run the real
//! binary. The memory test is in `slow.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::StreamExt;

const TOKENS: &str = r#"{"tokens": [
    {"name": "alice", "token": "tok-alice-Secret1", "upstream_key": "sk-entry-key-9f3a"},
    {"name": "bob", "token": "tok-bob-Secret2"},
    {"name": "carol", "sha256": "a6a7b1a1c3f0d9b3f0d4dc52c7d0cd1ee3bb67b4dc4c2f8cfbc6bfd27e5d0a7b"},
    {"name": "old", "token": "tok-old-Secret3", "expires": "2020-01-01T00:00:00Z"}
]}"#;

async fn setup() -> (MockUpstream, Served) {
    let upstream = MockUpstream::start().await;
    let gw = Launch::new(&upstream.url()).tokens(TOKENS).serve().await;
    (upstream, gw)
}

async fn setup_binary() -> (MockUpstream, GatewayProc) {
    let upstream = MockUpstream::start().await;
    let gw = Launch::new(&upstream.url()).tokens(TOKENS).start();
    (upstream, gw)
}

async fn error_of(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/json");
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn sse_events_arrive_as_they_are_sent() {
    let (up, gw) = setup().await;
    let response = client()
        .post(gw.url("/v1/sse?n=5&step=1&token=tok-bob-Secret2"))
        .body(r#"{"stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // The upstream makes each event only once the one before has reached
    // the client: a proxy that buffered would never deliver the first, and
    // the test would time out instead of passing.
    let mut stream = response.bytes_stream();
    let mut seen = String::new();
    for event in 1..=5 {
        while seen.matches("data: ").count() < event {
            let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .unwrap_or_else(|_| panic!("event {event} never arrived: {seen}"))
                .expect("the stream goes on")
                .unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert_eq!(
            seen.matches("data: ").count(),
            event,
            "one at a time: {seen}"
        );
        up.step();
    }
    while let Some(chunk) = stream.next().await {
        seen.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert_eq!(
        seen.matches("data: ").count(),
        6,
        "5 chunks and [DONE]: {seen}"
    );
    assert!(seen.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn binary_bodies_pass_unchanged_both_ways() {
    let (up, gw) = setup().await;
    let payload: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(7919) >> 3) as u8)
        .collect();
    let response = client()
        .post(gw.url("/v1/echo?token=tok-bob-Secret2"))
        .header("content-type", "audio/wav")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/wav");
    let back = response.bytes().await.unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back[..] == payload[..], "echoed body differs");
    let seen = up.last();
    assert_eq!(seen.body_sha256, sha256_hex(&payload));
    assert_eq!(seen.header("content-length").as_deref(), Some("300000"));

    // Download, and a compressed body that must stay compressed.
    let response = fetch(&gw, "/v1/download?bytes=1000003&token=tok-bob-Secret2").await;
    let got = response.bytes().await.unwrap();
    assert_eq!(got.len(), 1_000_003);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, b)| *b == pattern_byte(i as u64)));
    let response = client()
        .get(gw.url("/v1/gzip?token=tok-bob-Secret2"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(&response.bytes().await.unwrap()[..], GZIP_HELLO);
    assert_eq!(up.last().header("accept-encoding").as_deref(), Some("gzip"));
}

#[tokio::test]
async fn request_headers_are_filtered() {
    let (up, gw) = setup().await;
    let response = client()
        .post(gw.url("/v1/chat/completions?token=tok-bob-Secret2"))
        .header("connection", "x-hop-custom")
        .header("x-hop-custom", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic cHJveHk=")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=203.0.113.9")
        .header("x-amzn-trace-id", "Root=1-abc")
        .header("x-real-ip", "203.0.113.9")
        .header("x-token", "tok-bob-Secret2")
        .header("authorization", "Bearer sk-client-own-key")
        .header("openai-organization", "org-123")
        .header("openai-beta", "assistants=v2")
        .header("user-agent", "OpenAI/Python 1.0")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = up.last();
    for gone in [
        "connection",
        "x-hop-custom",
        "keep-alive",
        "proxy-authorization",
        "te",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
        "x-amzn-trace-id",
        "x-real-ip",
        "x-token",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} was forwarded");
    }
    assert_eq!(seen.header("host"), Some(up.addr.to_string()));
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some("Bearer sk-client-own-key")
    );
    assert_eq!(
        seen.header("openai-organization").as_deref(),
        Some("org-123")
    );
    assert_eq!(seen.header("openai-beta").as_deref(), Some("assistants=v2"));
    assert_eq!(
        seen.header("user-agent").as_deref(),
        Some("OpenAI/Python 1.0")
    );
    assert_eq!(seen.body, b"{}");
}

#[tokio::test]
async fn response_headers_and_errors_pass_through() {
    let (_up, gw) = setup().await;
    let response = fetch(&gw, "/v1/models?token=tok-bob-Secret2").await;
    assert_eq!(response.status(), 200);
    let h = response.headers();
    assert!(h["x-request-id"].to_str().unwrap().starts_with("req_mock_"));
    assert_eq!(h["openai-processing-ms"], "42");
    assert_eq!(h["openai-version"], "2020-10-01");
    assert_eq!(h["x-ratelimit-remaining-requests"], "9999");
    assert_eq!(h["retry-after"], "1");
    // Upstream errors keep their status and body.
    let response = fetch(&gw, "/v1/status/429?token=tok-bob-Secret2").await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "mock error 429");
}

#[tokio::test]
async fn gateway_token_is_stripped_and_query_kept_byte_for_byte() {
    let (up, gw) = setup().await;
    let r = fetch(
        &gw,
        "/v1/files?limit=2&token=tok-bob-Secret2&after=file%2Dx&purpose=a+b&empty=&flag&%7E=1",
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().target,
        "/v1/files?limit=2&after=file%2Dx&purpose=a+b&empty=&flag&%7E=1"
    );
    fetch(&gw, "/v1/models?token=tok-bob-Secret2").await;
    assert_eq!(up.last().target, "/v1/models");
    // X-Token, and a gateway token used as the Bearer.
    client()
        .get(gw.url("/v1/models?x=1"))
        .header("x-token", "tok-bob-Secret2")
        .send()
        .await
        .unwrap();
    let seen = up.last();
    assert_eq!(
        (seen.target.as_str(), seen.header("x-token")),
        ("/v1/models?x=1", None)
    );
    let r = client()
        .get(gw.url("/v1/models"))
        .bearer_auth("tok-bob-Secret2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().header("authorization"),
        None,
        "the gateway token went upstream"
    );
}

#[tokio::test]
async fn each_failure_gets_its_401_code() {
    let (up, gw) = setup().await;
    let cases = [
        ("/v1/models", "missing_token"),
        ("/v1/models?token=nope", "invalid_token"),
        ("/v1/models?token=TOK-BOB-SECRET2", "invalid_token"),
        ("/v1/models?token=tok-old-Secret3", "token_expired"),
    ];
    for (path, code) in cases {
        let r = fetch(&gw, path).await;
        let (status, body) = error_of(r).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some(code)),
            "{path}"
        );
        assert_eq!(body["error"]["type"], "authentication_error");
        assert!(body["error"]["param"].is_null());
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let r = fetch(&gw, "/v1/models?token=tok-bob-Secret2&token=other").await;
    assert_eq!(error_of(r).await.1["error"]["code"], "conflicting_tokens");
    assert_eq!(up.count(), 0, "a refused request reached the upstream");
}

#[tokio::test]
async fn a_token_expires_at_its_instant() {
    let up = MockUpstream::start().await;
    let clock = mid_minute();
    let expires = clock.now() + chrono::Duration::seconds(2);
    let tokens = format!(
        r#"[{{"name": "edge", "token": "tok-edge", "expires": "{}"}}]"#,
        expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    let gw = Launch::new(&up.url())
        .tokens(&tokens)
        .clock(&clock)
        .serve()
        .await;
    let r = fetch(&gw, "/v1/models?token=tok-edge").await;
    assert_eq!(r.status(), 200, "valid before its expiry");
    clock.set(expires - chrono::Duration::milliseconds(1));
    let r = fetch(&gw, "/v1/models?token=tok-edge").await;
    assert_eq!(r.status(), 200, "valid a millisecond before");
    clock.set(expires);
    let r = fetch(&gw, "/v1/models?token=tok-edge").await;
    assert_eq!(error_of(r).await.1["error"]["code"], "token_expired");
}

#[tokio::test]
async fn the_original_appsettings_json_works_unchanged() {
    let up = MockUpstream::start().await;
    let appsettings = format!(
        r#"{{
  "Logging": {{"LogLevel": {{"Default": "Information", "Microsoft": "Warning"}}}},
  "Tokens": [
    {{"Token": "datatoken", "Expire": "2099-3-30 23:00"}},
    {{"Token": "oldtoken", "Expire": "2023-3-30 23:00"}}
  ],
  "AllowedHosts": "*",
  "ReverseProxy": {{
    "Routes": {{"route1": {{"ClusterId": "cluster1", "Match": {{"Path": "{{**catch-all}}"}}}}}},
    "Clusters": {{"cluster1": {{"Destinations": {{"destination1": {{"Address": "{}/"}}}}}}}}
  }}
}}"#,
        up.url()
    );
    // No UPSTREAM_URL: the address comes from the file.
    let mut launch = Launch::new("unused").tokens(&appsettings);
    launch.env.retain(|(k, _)| k != "UPSTREAM_URL");
    let gw = launch.serve().await;
    let r = fetch(&gw, "/api/v1/models?token=datatoken").await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().target, "/api/v1/models");
    let r = fetch(&gw, "/v1/models?token=oldtoken").await;
    assert_eq!(error_of(r).await.1["error"]["code"], "token_expired");
    let r = fetch(&gw, "/v1/models?token=DataToken").await;
    assert_eq!(
        error_of(r).await.1["error"]["code"],
        "invalid_token",
        "tokens are case-sensitive"
    );
}

#[tokio::test]
async fn the_original_appsettings_json_is_read_where_it_lies() {
    // Run from the directory that holds appsettings.json, as the original was:
    // no TOKENS_FILE, no tokens.json.
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url())
        .file(
            "appsettings.json",
            r#"{"Tokens": [{"Token": "datatoken", "Expire": "2099-3-30 23:00"}]}"#,
        )
        .start();
    assert_eq!(fetch(&gw, "/v1/models?token=datatoken").await.status(), 200);
    assert_eq!(fetch(&gw, "/v1/models?token=other").await.status(), 401);
    // tokens.json, when both are there, wins.
    let gw = Launch::new(&up.url())
        .file(
            "appsettings.json",
            r#"{"Tokens": [{"Token": "datatoken"}]}"#,
        )
        .file("tokens.json", r#"[{"token": "native"}]"#)
        .start();
    assert_eq!(fetch(&gw, "/v1/models?token=native").await.status(), 200);
    assert_eq!(fetch(&gw, "/v1/models?token=datatoken").await.status(), 401);
}

#[tokio::test]
async fn sha256_entries_accept_the_token_they_hash() {
    let up = MockUpstream::start().await;
    let tokens = format!(
        r#"[{{"name": "hashed", "sha256": "{}"}}]"#,
        sha256_hex(b"plain-Token-7")
    );
    let gw = Launch::new(&up.url()).tokens(&tokens).serve().await;
    let r = fetch(&gw, "/v1/models?token=plain-Token-7").await;
    assert_eq!(r.status(), 200);
    let hash = sha256_hex(b"plain-Token-7");
    let r = fetch(&gw, &format!("/v1/models?token={hash}")).await;
    assert_eq!(r.status(), 401, "the digest itself is not a token");
    let lines = gw.wait_access_lines(2).await;
    assert_eq!(lines[0]["token"], "hashed");
}

#[tokio::test]
async fn upstream_key_injection_versus_pass_through() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url())
        .tokens(TOKENS)
        .env("UPSTREAM_API_KEY", "sk-global-key-77c1")
        .serve()
        .await;
    // The entry's own key wins, and the client's key is replaced.
    client()
        .get(gw.url("/v1/models?token=tok-alice-Secret1"))
        .bearer_auth("sk-client")
        .send()
        .await
        .unwrap();
    assert_eq!(
        up.last().header("authorization").as_deref(),
        Some("Bearer sk-entry-key-9f3a")
    );
    assert_eq!(up.last().header_count("authorization"), 1);
    // Without an own key, the global one.
    client()
        .get(gw.url("/v1/models"))
        .bearer_auth("tok-bob-Secret2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        up.last().header("authorization").as_deref(),
        Some("Bearer sk-global-key-77c1")
    );
    drop(gw);

    // No key configured: the client's own Authorization goes through unchanged.
    let gw = Launch::new(&up.url()).tokens(TOKENS).serve().await;
    client()
        .get(gw.url("/v1/models?token=tok-bob-Secret2"))
        .bearer_auth("sk-client-own")
        .send()
        .await
        .unwrap();
    assert_eq!(
        up.last().header("authorization").as_deref(),
        Some("Bearer sk-client-own")
    );
}

#[tokio::test]
async fn unreachable_and_slow_upstreams_get_502_and_504() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Launch::new(&format!("http://{closed}"))
        .tokens(TOKENS)
        .serve()
        .await;
    let r = fetch(&gw, "/v1/models?token=tok-bob-Secret2").await;
    let (status, body) = error_of(r).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("upstream_unreachable"))
    );
    drop(gw);

    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url())
        .tokens(TOKENS)
        .env("UPSTREAM_TIMEOUT_SECS", "1")
        .serve()
        .await;
    let r = fetch(&gw, "/v1/slow?ms=5000&token=tok-bob-Secret2").await;
    let (status, body) = error_of(r).await;
    // 504, not the upstream's own answer (which comes after 5 s).
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (504, Some("upstream_timeout"))
    );
    // And the next request is served.
    let r = fetch(&gw, "/v1/models?token=tok-bob-Secret2").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_dropped_stream_ends_promptly_and_the_next_request_is_served() {
    let (_up, gw) = setup().await;
    let r = fetch(&gw, "/v1/drop?after=3&token=tok-bob-Secret2").await;
    assert_eq!(r.status(), 200);
    // Five seconds at most (the mock sends an event every 50 ms): a stream
    // the gateway never ended would fail as "stream hung".
    let (got, failed) = read_stream(r, Duration::from_secs(5)).await;
    assert!(!failed, "the stream ends with its error event");
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("data: ").count(), 4, "{text}");
    assert!(
        text.ends_with(std::str::from_utf8(chatgpt_gateway::completion::CUT_STREAM_EVENT).unwrap()),
        "the client must see the stream break, not a clean end: {text}"
    );
    assert!(!text.contains("[DONE]"));

    // A stalled stream is cut after the idle timeout.
    let up = MockUpstream::start().await;
    let gw2 = Launch::new(&up.url())
        .tokens(TOKENS)
        .env("UPSTREAM_IDLE_TIMEOUT_SECS", "1")
        .serve()
        .await;
    let r = fetch(&gw2, "/v1/stall?token=tok-bob-Secret2").await;
    // The mock stalls for an hour; five times the idle timeout is plenty.
    let body = tokio::time::timeout(Duration::from_secs(5), r.bytes())
        .await
        .expect("stalled stream never ended")
        .unwrap();
    assert!(
        body.ends_with(chatgpt_gateway::completion::CUT_STREAM_EVENT),
        "{body:?}"
    );

    let r = fetch(&gw, "/v1/models?token=tok-bob-Secret2").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn no_request_can_reach_another_host() {
    let (up, gw) = setup().await;
    // Absolute-form target naming another host, plus Host and X-Forwarded-Host tricks.
    let answer = raw(
        gw.addr,
        b"GET http://evil.example/v1/models?token=tok-bob-Secret2 HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.last();
    assert_eq!(seen.target, "/v1/models");
    assert_eq!(seen.header("host"), Some(up.addr.to_string()));
    assert_eq!(seen.header("x-forwarded-host"), None);

    for path in [
        "//evil.example/v1/models",
        "/@evil.example/v1/models",
        "/v1/%2F%2Fevil.example",
    ] {
        let request = format!(
            "GET {path}?token=tok-bob-Secret2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let answer = raw(gw.addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        let seen = up.last();
        assert_eq!(seen.target, path, "forwarded verbatim to the same upstream");
        assert_eq!(seen.header("host"), Some(up.addr.to_string()));
    }
    let before = up.count();
    for path in [
        "/v1/../../admin",
        "/v1/%2e%2e/admin",
        "/v1/.%2E/x",
        "/v1/./models",
        "/\\evil.example/x",
    ] {
        let request = format!(
            "GET {path}?token=tok-bob-Secret2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let answer = raw(gw.addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(
            answer.contains("\"code\":\"invalid_path\""),
            "{path}: {answer}"
        );
    }
    assert_eq!(up.count(), before, "a refused path reached the upstream");
}

#[tokio::test]
async fn access_log_lines_carry_the_facts_and_no_secret() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url())
        .tokens(TOKENS)
        .env("UPSTREAM_API_KEY", "sk-global-key-77c1")
        .start();
    let c = client();
    c.post(gw.url("/v1/chat/completions?token=tok-bob-Secret2&user=query-secret-x"))
        .bearer_auth("sk-client-own")
        .header("content-type", "application/json")
        .body("{\"model\":\"gpt-4o-mini\"}")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    c.get(gw.url("/v1/models"))
        .header("x-token", "tok-alice-Secret1")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    c.get(gw.url("/v1/models"))
        .bearer_auth("tok-wrong-Secret9")
        .send()
        .await
        .unwrap();
    c.get(gw.url("/v1/models?token=tok-old-Secret3"))
        .send()
        .await
        .unwrap();
    let lines = gw.wait_access_lines(4);
    assert_eq!(lines.len(), 4, "{}", gw.log_text());
    let first = &lines[0];
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/v1/chat/completions");
    assert_eq!(first["status"], 200);
    assert_eq!(first["token"], "bob");
    assert_eq!(first["bytes_in"], 23);
    // Usage from the response, priced from the bundled table (gpt-4o-mini:
    // $0.15 in, $0.60 out per 1M tokens; the mock reports 3 in, 5 out).
    assert_eq!(first["model"], "gpt-4o-mini");
    assert_eq!(
        (
            first["input_tokens"].as_u64(),
            first["output_tokens"].as_u64()
        ),
        (Some(3), Some(5))
    );
    assert_eq!(first["usage_estimated"], false);
    let cost = first["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - (3.0 * 0.15 + 5.0 * 0.6) / 1e6).abs() < 1e-12,
        "{cost}"
    );
    assert!(first["bytes_out"].as_u64().unwrap() > 10);
    assert!(first["upstream_ms"].as_f64().is_some());
    assert!(first["duration_ms"].as_f64().is_some());
    assert_eq!(lines[1]["token"], "alice");
    assert_eq!(
        (lines[2]["status"].as_u64(), lines[2]["error_code"].as_str()),
        (Some(401), Some("invalid_token"))
    );
    assert_eq!(lines[3]["error_code"], "token_expired");
    assert!(
        lines.iter().all(|l| l["outcome"] == "complete"),
        "{lines:?}"
    );
    let text = gw.log_text();
    for secret in [
        "tok-bob-Secret2",
        "tok-alice-Secret1",
        "tok-wrong-Secret9",
        "tok-old-Secret3",
        "sk-global-key-77c1",
        "sk-entry-key-9f3a",
        "sk-client-own",
        "query-secret-x",
        "Bearer",
    ] {
        assert!(!text.contains(secret), "log holds {secret}:\n{text}");
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_streams_finish() {
    let (up, gw) = setup_binary().await;
    let mut r = fetch(&gw, "/v1/sse?n=6&step=1&token=tok-bob-Secret2").await;
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().expect("the first event");
    assert!(first.starts_with(b"data: "));
    gw.terminate();
    // New connections are refused while the stream goes on (the upstream
    // holds its next event until the test lets it go).
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(gw.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..6 {
        up.step();
    }
    let mut body = String::from_utf8(first.to_vec()).unwrap();
    body.push_str(&r.text().await.expect("the in-flight stream completes"));
    assert_eq!(body.matches("data: ").count(), 7, "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    let mut gw = gw;
    let status = gw.exited(Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}");
}

/// Each worker thread's voluntary context switches, by thread name.
fn worker_switches(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut found = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let name = name.trim();
        if name.starts_with("worker-") {
            let switches = status_field(dir.to_str().unwrap(), "voluntary_ctxt_switches:");
            found.insert(name.to_owned(), switches);
        }
    }
    found
}

#[tokio::test]
async fn the_server_spreads_connections_over_its_worker_threads() {
    let upstream = MockUpstream::start().await;
    let gw = Launch::new(&upstream.url())
        .tokens(TOKENS)
        .env("GATEWAY_WORKER_THREADS", "3")
        .start();
    let pid = gw.child.id();
    assert_eq!(
        worker_switches(pid).keys().collect::<Vec<_>>(),
        ["worker-0", "worker-1", "worker-2"],
        "one thread per worker"
    );
    // Six connections, each its own client, each a stream whose events the
    // test releases one at a time, waiting for each to arrive before the
    // next: every event wakes the worker serving its connection from sleep.
    let events = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let streams: Vec<_> = (0..6)
        .map(|_| {
            let url = gw.url("/v1/sse?n=8&step=1&token=tok-bob-Secret2");
            let (events, arrived) = (events.clone(), arrived.clone());
            tokio::spawn(async move {
                let response = reqwest::Client::new()
                    .post(url)
                    .body(r#"{"stream":true}"#)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let mut body = Vec::new();
                let mut chunks = response.bytes_stream();
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk.unwrap();
                    let n = chunk.windows(6).filter(|w| w == b"data: ").count();
                    body.extend_from_slice(&chunk);
                    events.fetch_add(n, Ordering::SeqCst);
                    arrived.notify_one();
                }
                String::from_utf8(body).unwrap()
            })
        })
        .collect();
    let until = |n: usize| {
        let (events, arrived) = (events.clone(), arrived.clone());
        async move {
            while events.load(Ordering::SeqCst) < n {
                tokio::time::timeout(Duration::from_secs(10), arrived.notified())
                    .await
                    .expect("an event arrives");
            }
        }
    };
    // The first event of each goes at once: all six are connected.
    until(6).await;
    let before = worker_switches(pid);
    // Eight more each ([DONE] the last); the mock's permits go to the
    // waiting streams in turn.
    for k in 1..=48 {
        upstream.step();
        until(6 + k).await;
    }
    for stream in streams {
        let body = stream.await.unwrap();
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    }
    let after = worker_switches(pid);
    for (name, count) in &after {
        // Two connections of eight events each, every one arriving while
        // the worker slept (a few may find it not yet asleep), against none
        // if the connections had all gone to one worker.
        let woken = count - before[name];
        assert!(
            woken >= 8,
            "{name} was woken {woken} times: {after:?} from {before:?}"
        );
    }
    // And a SIGTERM still drains them all: the process exits cleanly.
    let mut gw = gw;
    gw.terminate();
    let status = gw.exited(Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}");
    assert!(
        gw.log_text().contains("all connections closed"),
        "{}",
        gw.log_text()
    );
}

#[tokio::test]
async fn start_up_refuses_bad_or_unsafe_configurations() {
    let upstream = "http://127.0.0.1:9";
    let fail = |launch: Launch| match launch.spawn() {
        Ok(_) => panic!("the gateway started"),
        Err((code, logs)) => {
            assert_eq!(code, Some(1));
            logs.join("\n")
        }
    };
    let out = fail(Launch::new(upstream).tokens(r#"[{"name": "ok", "token": "fine"}, {"name": "bad", "token": "leaky-Secret", "expires": "tomorrow"}]"#));
    assert!(
        out.contains("tokens.json") && out.contains("entry 1 (bad)") && out.contains("expires"),
        "{out}"
    );
    assert!(!out.contains("leaky-Secret"), "{out}");
    let out = fail(Launch::new(upstream).env("UPSTREAM_API_KEY", "sk-lonely-key"));
    assert!(
        out.contains("UPSTREAM_API_KEY") && !out.contains("sk-lonely-key"),
        "{out}"
    );
    // A key no Authorization header could carry: refused at start, never
    // replaced by a placeholder.
    let out = fail(
        Launch::new(upstream)
            .tokens(TOKENS)
            .env("UPSTREAM_API_KEY", "sk-broken\u{7}key"),
    );
    assert!(
        out.contains("UPSTREAM_API_KEY") && !out.contains("sk-broken"),
        "{out}"
    );
    let out = fail(Launch::new(upstream).arg("--listen").arg("0.0.0.0:0"));
    assert!(out.contains("ALLOW_ANONYMOUS"), "{out}");
    let out = fail(Launch::new("ftp://nowhere").tokens(TOKENS));
    assert!(out.contains("http://"), "{out}");
    let out = fail(Launch::new(upstream).env("TOKENS_FILE", "/nonexistent/tokens.json"));
    assert!(out.contains("/nonexistent/tokens.json"), "{out}");

    // Loopback with no tokens is the original's open mode; so is ALLOW_ANONYMOUS.
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).start();
    let r = client()
        .get(gw.url("/v1/models?token=ignored&x=1"))
        .bearer_auth("sk-own")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().target, "/v1/models?x=1");
    assert_eq!(
        up.last().header("authorization").as_deref(),
        Some("Bearer sk-own")
    );
    let gw = Launch::new(&up.url())
        .env("ALLOW_ANONYMOUS", "true")
        .arg("--listen")
        .arg("0.0.0.0:0")
        .start();
    assert!(gw.addr.ip().is_unspecified());
}

#[tokio::test]
async fn flags_win_over_environment_and_prefixes_are_kept() {
    let up = MockUpstream::start().await;
    let gw = Launch::new("http://127.0.0.1:9")
        .tokens(TOKENS)
        .arg("serve")
        .arg("--upstream")
        .arg(&format!("{}/openai/", up.url()))
        .start();
    let r = fetch(&gw, "/v1/models?token=tok-bob-Secret2").await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().target, "/openai/v1/models");
}

/// A rule of the kind spend control adds: read the JSON body's `model`
/// (up to 64 bytes) and refuse one of them.
struct RefuseModel;

impl chatgpt_gateway::policy::Policy for RefuseModel {
    fn check<'a>(
        &'a self,
        request: &'a mut chatgpt_gateway::policy::Inspect<'_>,
    ) -> chatgpt_gateway::policy::Verdict<'a> {
        Box::pin(async move {
            if request.method != http::Method::POST {
                return Ok(());
            }
            let body = request.body.read(64).await?;
            let value: serde_json::Value = serde_json::from_slice(body)
                .map_err(|_| chatgpt_gateway::GatewayError::InvalidRequestBody("not JSON"))?;
            match value["model"].as_str() {
                Some("refused-model") => Err(chatgpt_gateway::GatewayError::InvalidRequestBody(
                    "the test policy refuses this model",
                )),
                _ => Ok(()),
            }
        })
    }
}

#[tokio::test]
async fn a_policy_reads_a_bounded_body_and_its_verdict_holds() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url())
        .tokens(TOKENS)
        .policy(RefuseModel)
        .serve()
        .await;
    let post = |body: &'static str| {
        client()
            .post(gw.url("/v1/echo?token=tok-bob-Secret2"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // Allowed: the body the policy read goes upstream byte for byte.
    let allowed = r#"{"model": "gpt-4o-mini",  "n": 1}"#;
    let r = post(allowed).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), allowed);
    assert_eq!(up.last().body, allowed.as_bytes());
    // Refused: the client gets the policy's error, and nothing is forwarded.
    let before = up.count();
    let (status, body) = error_of(post(r#"{"model": "refused-model"}"#).await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_request_body"))
    );
    // Over the bound the policy set: 413.
    let big = r#"{"model": "gpt-4o-mini", "messages": "0123456789012345678901234567890123456789"}"#;
    let (status, body) = error_of(post(big).await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("request_too_large"))
    );
    assert_eq!(up.count(), before, "a refused request reached the upstream");
    // A request the policy does not read streams as before.
    let r = fetch(&gw, "/v1/models?token=tok-bob-Secret2").await;
    assert_eq!(r.status(), 200);
    let lines = gw.wait_access_lines(4).await;
    let codes: Vec<_> = lines.iter().map(|l| l["error_code"].clone()).collect();
    assert_eq!(
        codes,
        ["-", "invalid_request_body", "request_too_large", "-"]
    );
}

const RULED: &str = r#"{"tokens": [
    {"name": "friend", "token": "tok-friend-1", "models": ["gpt-4o-mini*"],
     "endpoints": ["/v1/chat/completions", "/v1/models", "/v1/audio/transcriptions"]},
    {"name": "batcher", "token": "tok-batcher-2", "models": ["gpt-4o-mini"]},
    {"name": "batches-named", "token": "tok-batches-3", "models": ["gpt-4o-mini"],
     "endpoints": ["/v1/batches"]},
    {"name": "open", "token": "tok-open-4"}
]}"#;

async fn post_json(gw: &Served, path: &str, token: &str, body: &str) -> reqwest::Response {
    client()
        .post(gw.url(&format!("{path}?token={token}")))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn model_and_endpoint_allowlists_hold() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url())
        .tokens(RULED)
        .env("MAX_INSPECTED_BODY_BYTES", "4096")
        .serve()
        .await;
    let chat = |model: &str| {
        format!(r#"{{"model": "{model}", "messages": [{{"role": "user", "content": "hi"}}]}}"#)
    };
    // Allowed: a dated snapshot of the glob; the body arrives as sent.
    let body = chat("gpt-4o-mini-2024-07-18");
    let r = post_json(&gw, "/v1/chat/completions", "tok-friend-1", &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().body, body.as_bytes());
    let before = up.count();
    // Refused, never forwarded: another model, another endpoint, a body that is not JSON.
    let (status, e) =
        error_of(post_json(&gw, "/v1/chat/completions", "tok-friend-1", &chat("gpt-4o")).await)
            .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (403, Some("model_not_allowed"))
    );
    assert!(
        e["error"]["message"].as_str().unwrap().contains("gpt-4o"),
        "{e}"
    );
    let (status, e) =
        error_of(post_json(&gw, "/v1/embeddings", "tok-friend-1", &chat("gpt-4o-mini")).await)
            .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (403, Some("endpoint_not_allowed"))
    );
    let (status, e) =
        error_of(post_json(&gw, "/v1/chat/completions", "tok-friend-1", "{not json").await).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("invalid_request_body"))
    );
    let big = chat(&"x".repeat(5000));
    let (status, e) =
        error_of(post_json(&gw, "/v1/chat/completions", "tok-friend-1", &big).await).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (413, Some("request_too_large"))
    );
    // No model to tell (a batch): refused unless `endpoints` names the path.
    let batch = r#"{"input_file_id": "file-1", "endpoint": "/v1/chat/completions", "completion_window": "24h"}"#;
    let (status, e) = error_of(post_json(&gw, "/v1/batches", "tok-batcher-2", batch).await).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (403, Some("model_not_allowed"))
    );
    assert_eq!(up.count(), before, "a refused request reached the upstream");
    assert_eq!(
        post_json(&gw, "/v1/batches", "tok-batches-3", batch)
            .await
            .status(),
        200
    );
    // A model's own page follows the list; reads of others are refused.
    assert_eq!(
        fetch(&gw, "/v1/models/gpt-4o-mini?token=tok-friend-1")
            .await
            .status(),
        200
    );
    assert_eq!(
        fetch(&gw, "/v1/models/gpt-4o?token=tok-friend-1")
            .await
            .status(),
        403
    );
    // The model list shows only the allowed models, even when the client asks for gzip.
    let r =
        client()
            .get(gw.url(
                "/v1/models?mock_models=gpt-4o,gpt-4o-mini,o3,gpt-4o-mini-tts&token=tok-friend-1",
            ))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-encoding").is_none());
    let list: serde_json::Value = r.json().await.unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, ["gpt-4o-mini", "gpt-4o-mini-tts"]);
    assert_eq!(
        up.last().header("accept-encoding").as_deref(),
        Some("identity")
    );
    let list: serde_json::Value = fetch(&gw, "/v1/models?mock_models=gpt-4o,o3&token=tok-open-4")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        2,
        "no rules, no filter"
    );
    // A token without rules reaches everything.
    assert_eq!(
        post_json(&gw, "/v1/embeddings", "tok-open-4", &chat("gpt-4o"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_multipart_model_is_checked_and_the_file_arrives_byte_for_byte() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(RULED).serve().await;
    let audio: Vec<u8> = (0..=255u8)
        .cycle()
        .take(50_000)
        .chain(*b"\r\n--not-a-boundary\r\n")
        .collect();
    let form = |model: &str| {
        let mut body = Vec::new();
        body.extend_from_slice(b"--BoUnD\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n");
        body.extend_from_slice(&audio);
        body.extend_from_slice(format!("\r\n--BoUnD\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--BoUnD--\r\n").as_bytes());
        body
    };
    let send = |model: &str| {
        client()
            .post(gw.url("/v1/audio/transcriptions?token=tok-friend-1"))
            .header("content-type", "multipart/form-data; boundary=BoUnD")
            .body(form(model))
            .send()
    };
    let r = send("whisper-1").await.unwrap();
    assert_eq!(r.status(), 403);
    let r = send("gpt-4o-mini-transcribe").await.unwrap();
    assert_eq!(r.status(), 200);
    let text: serde_json::Value = r.json().await.unwrap();
    assert_eq!(text["text"], format!("sha256:{}", sha256_hex(&audio)));
    assert_eq!(up.last().body, form("gpt-4o-mini-transcribe"));
}

#[test]
fn tokens_new_writes_allowlists_that_read_back() {
    let bin = env!("CARGO_BIN_EXE_chatgpt-gateway");
    let run = |extra: &[&str]| {
        std::process::Command::new(bin)
            .args(["tokens", "new", "--name", "friend", "--json"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[
        "--models",
        "gpt-4o-mini*,text-embedding-3-small",
        "--endpoints",
        "/v1/chat/completions,/v1/embeddings",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        made["entry"]["models"],
        serde_json::json!(["gpt-4o-mini*", "text-embedding-3-small"])
    );
    assert_eq!(
        made["entry"]["endpoints"],
        serde_json::json!(["/v1/chat/completions", "/v1/embeddings"])
    );
    // The preset: inference only, each endpoint by method and exact path.
    let out = run(&["--endpoints", "inference", "--limit", "usd_per_month=5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let endpoints = made["entry"]["endpoints"].as_array().unwrap();
    assert!(
        endpoints.contains(&serde_json::json!("POST /v1/chat/completions$")),
        "{made}"
    );
    assert!(endpoints.contains(&serde_json::json!("GET /v1/models")));
    assert!(!endpoints
        .iter()
        .any(|e| e.as_str().unwrap().contains("files")));
    let out = run(&["--allow-ips", "203.0.113.0/24,2001:db8::1"]);
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        made["entry"]["allow_ips"],
        serde_json::json!(["203.0.113.0/24", "2001:db8::1"])
    );
    let out = run(&["--allow-ips", "203.0.113.0/40"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`203.0.113.0/40` is not an IP address"),
        "{err}"
    );
    let out = run(&["--endpoints", "v1/chat"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must be a path starting with /"), "{err}");
    assert!(!err.contains("gw-"), "no token in an error: {err}");
}

/// The events of an SSE body, as JSON (less `[DONE]`).
fn events(body: &str) -> Vec<serde_json::Value> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn usage_is_read_from_json_gzip_and_streams_asked_for_or_not() {
    let (up, gw) = setup().await;
    let chat = |extra: &str| {
        format!(
            r#"{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "hi"}}]{extra}}}"#
        )
    };
    let send = |body: String, gzip: bool| {
        let mut request = client()
            .post(gw.url("/v1/chat/completions?token=tok-bob-Secret2"))
            .header("content-type", "application/json")
            .body(body);
        if gzip {
            request = request.header("accept-encoding", "gzip");
        }
        request.send()
    };
    // JSON, and gzipped JSON passed on compressed as the upstream sent it.
    let r = send(chat(""), false).await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let r = send(chat(""), true).await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let bytes = r.bytes().await.unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "the client gets the gzip bytes");
    // A stream whose client did not ask for usage: asked for upstream, hidden from the client.
    let r = send(
        chat(r#", "stream": true, "metadata": {"gap": "0.01"}"#),
        false,
    )
    .await
    .unwrap();
    let body = r.text().await.unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&up.last().body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert!(
        events(&body)
            .iter()
            .all(|e| !e["choices"].as_array().unwrap().is_empty()),
        "an empty-choices chunk reached a client that did not ask: {body}"
    );
    assert!(body.ends_with("data: [DONE]\n\n"));
    // A client that asked gets its usage chunk, as before.
    let asked = chat(
        r#", "stream": true, "stream_options": {"include_usage": true}, "metadata": {"gap": "0.01"}"#,
    );
    let body = send(asked.clone(), false)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(up.last().body, asked.as_bytes(), "sent byte for byte");
    let last = events(&body).pop().unwrap();
    assert_eq!(last["usage"]["completion_tokens"], 5);
    let lines = gw.wait_access_lines(4).await;
    let usage: Vec<_> = lines.iter().map(|l| l["usage"].clone()).collect();
    let json = serde_json::json!({"model": "gpt-4o-mini", "input": 3, "cached": 0, "output": 5, "estimated": false});
    let streamed = serde_json::json!({"model": "gpt-4o-mini", "input": 3, "cached": 1, "output": 5, "estimated": false});
    assert_eq!(usage, [json.clone(), json, streamed.clone(), streamed]);
}

#[tokio::test]
async fn a_client_that_stops_a_stream_is_billed_an_estimate_never_zero() {
    let (up, gw) = setup().await;
    let body = r#"{"model": "gpt-4o-mini", "stream": true, "metadata": {"gap": "0.3"}, "messages": [{"role": "user", "content": "tell me a long story"}]}"#;
    let r = client()
        .post(gw.url("/v1/chat/completions?token=tok-bob-Secret2"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(stream);
    let lines = gw.wait_access_lines(1).await;
    let line = &lines[0];
    assert_eq!(line["outcome"], "client_closed");
    let usage = &line["usage"];
    assert_eq!(usage["estimated"], true, "{line}");
    assert_eq!(usage["model"], "gpt-4o-mini");
    assert!(usage["input"].as_u64().unwrap() > 0, "never zero: {line}");
    assert!(usage["output"].as_u64().unwrap() > 0, "{line}");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_chat_body_too_big_to_inspect_still_goes_through_whole() {
    // For a token without rules, a body over MAX_INSPECTED_BODY_BYTES is not
    // refused: the usage request is skipped and the body streams on as sent.
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url())
        .tokens(TOKENS)
        .env("MAX_INSPECTED_BODY_BYTES", "64")
        .serve()
        .await;
    let body = format!(
        r#"{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "x".repeat(100_000)
    );
    let r = post_json(&gw, "/v1/chat/completions", "tok-bob-Secret2", &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().body, body.as_bytes());
}

/// A rule that wraps a successful JSON answer in `{"wrapped": …}`.
struct Wrap;

impl chatgpt_gateway::policy::Policy for Wrap {
    fn check<'a>(
        &'a self,
        request: &'a mut chatgpt_gateway::policy::Inspect<'_>,
    ) -> chatgpt_gateway::policy::Verdict<'a> {
        Box::pin(async move {
            request
                .edits
                .push(chatgpt_gateway::policy::ResponseEdit::Rewrite {
                    limit: 1 << 20,
                    rewrite: Box::new(|body| {
                        let inner: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        serde_json::json!({ "wrapped": inner }).to_string().into()
                    }),
                });
            Ok(())
        })
    }
}

#[tokio::test]
async fn response_edits_apply_in_pipeline_order_each_over_the_last() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url())
        .tokens(RULED)
        .policy(Wrap)
        .serve()
        .await;
    // The allowlist filters the model list, then the later rule wraps the
    // filtered list: neither edit overwrites the other.
    let r = fetch(
        &gw,
        "/v1/models?mock_models=gpt-4o,gpt-4o-mini&token=tok-friend-1",
    )
    .await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let ids: Vec<_> = body["wrapped"]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, ["gpt-4o-mini"], "{body}");
}
