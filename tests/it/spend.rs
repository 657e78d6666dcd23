//! Spend control with the embedded store (SQLite itself, through the
//! gateway's start-up): limits enforced before forwarding, usage settled
//! after, refusals in OpenAI's shape, the token's own usage endpoints, and
//! the `usage` command on the file the gateway wrote.

use std::time::Duration;

use crate::common::*;
use chatgpt_gateway::spend::sqlite::Sqlite;
use chatgpt_gateway::spend::store::{Period, Row, Store};
use serde_json::{json, Value};

const LIMITED: &str = r#"{"tokens": [
    {"name": "rpm", "token": "tok-rpm", "limits": {"requests_per_minute": 3}},
    {"name": "burst", "token": "tok-burst", "limits": {"requests_per_minute": 5}},
    {"name": "daily", "token": "tok-daily", "limits": {"tokens_per_day": 20}},
    {"name": "friend", "token": "tok-friend", "expires": "2099-01-01T00:00:00Z",
     "models": ["gpt-4o-mini*"], "limits": {"usd_per_month": 0.00001}},
    {"name": "cheap", "token": "tok-cheap", "limits": {"usd_total": 1}},
    {"name": "stream", "token": "tok-stream", "limits": {"tokens_per_month": 100000}},
    {"name": "listener", "token": "tok-listener", "limits": {"tokens_per_day": 2000, "usd_per_day": 1}},
    {"name": "open", "token": "tok-open"}
]}"#;

fn chat(model: &str) -> String {
    json!({"model": model, "max_tokens": 5,
           "messages": [{"role": "user", "content": "hello there, how are you today?"}]})
    .to_string()
}

async fn post(gw: &impl Target, token: &str, body: &str) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn code_of(response: reqwest::Response) -> (u16, Option<String>) {
    let status = response.status().as_u16();
    if status == 200 {
        let _ = response.bytes().await;
        return (200, None);
    }
    let body: Value = response.json().await.unwrap();
    (status, body["error"]["code"].as_str().map(str::to_owned))
}

async fn get_json(gw: &impl Target, path: &str, token: &str) -> Value {
    let r = client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

/// The token's limits once nothing is reserved any more (every request settled).
async fn settled(gw: &impl Target, token: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let usage = get_json(gw, "/v1/gateway/usage", token).await;
        let reserved = usage["limits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["reserved"].as_f64() != Some(0.0));
        if !reserved {
            return usage;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still reserved: {usage}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every row the gateway's file holds, once the gateway has written what
/// it holds for `token` (its own report, the billing endpoint, flushes
/// first; a limited settlement may be in the journal only until then).
async fn report(gw: &Served, token: &str) -> Vec<Row> {
    let flushed = get_json(gw, "/v1/dashboard/billing/usage", token).await;
    assert_eq!(flushed["object"], "list", "{flushed}");
    let store = Sqlite::reader(gw.dir.0.join("usage.db").to_str().unwrap()).unwrap();
    // Every day there is: the gateway's clock is the system's, and a month
    // may turn between the request and the report.
    let all = Period::Days("0001-01-01".into(), "9999-12-31".into());
    store.report(all, None).await.unwrap()
}

#[tokio::test]
async fn requests_per_minute_is_exact_and_a_refusal_is_a_429_with_retry_after() {
    let up = MockUpstream::start().await;
    // Half a minute in: the minute ends in 30 s, and the test moves the clock.
    let clock = mid_minute();
    let gw = Launch::new(&up.url())
        .tokens(LIMITED)
        .clock(&clock)
        .serve()
        .await;
    for _ in 0..3 {
        assert_eq!(
            code_of(post(&gw, "tok-rpm", &chat("gpt-4o-mini")).await).await,
            (200, None)
        );
    }
    let r = post(&gw, "tok-rpm", &chat("gpt-4o-mini")).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 30, "the minute's end, by the gateway's clock");
    assert!(
        r.headers().get("x-should-retry").is_none(),
        "a rate limit is worth retrying"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("requests_per_minute"));
    assert_eq!(
        up.count(),
        3,
        "the refused request never reached the upstream"
    );
    // 29 s later it is the same minute, still refused; at 30 s a new one.
    clock.advance(chrono::Duration::seconds(29));
    let r = post(&gw, "tok-rpm", &chat("gpt-4o-mini")).await;
    assert_eq!(code_of(r).await.1.as_deref(), Some("rate_limit_exceeded"));
    clock.advance(chrono::Duration::seconds(1));
    assert_eq!(
        code_of(post(&gw, "tok-rpm", &chat("gpt-4o-mini")).await).await,
        (200, None),
        "a new minute, a new window"
    );
    // A refusal is not usage: four requests in the store, not five.
    settled(&gw, "tok-rpm").await;
    let rows = report(&gw, "tok-rpm").await;
    let row = rows.iter().find(|r| r.token == "rpm").expect("rpm's row");
    assert_eq!(row.requests, 4);
}

#[tokio::test]
async fn concurrent_requests_get_exactly_the_per_minute_limit() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url())
        .tokens(LIMITED)
        .clock(&mid_minute())
        .serve()
        .await;
    let body = chat("gpt-4o-mini");
    let answers = futures_util::future::join_all(
        (0..20).map(|_| async { code_of(post(&gw, "tok-burst", &body).await).await }),
    )
    .await;
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let limited = answers
        .iter()
        .filter(|a| a.1.as_deref() == Some("rate_limit_exceeded"))
        .count();
    assert_eq!((ok, limited), (5, 15), "{answers:?}");
    assert_eq!(up.count(), 5);
}

#[tokio::test]
async fn a_token_budget_lets_the_crossing_request_finish_and_refuses_the_next() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(LIMITED).serve().await;
    // Each request uses 8 tokens (the mock's 3 in, 5 out): 0, 8, 16 are
    // under 20, so three go through and the third ends at 24.
    for _ in 0..3 {
        assert_eq!(
            code_of(post(&gw, "tok-daily", &chat("gpt-4o-mini")).await).await,
            (200, None)
        );
    }
    let r = post(&gw, "tok-daily", &chat("gpt-4o-mini")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-should-retry"], "false");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert_eq!(body["error"]["type"], "insufficient_quota");
    let usage = settled(&gw, "tok-daily").await;
    let day = &usage["limits"][0];
    assert_eq!(day["limit"], "tokens_per_day");
    assert_eq!(
        (day["used"].as_i64(), day["remaining"].as_i64()),
        (Some(24), Some(0))
    );
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn a_dollar_budget_holds_and_an_unpriced_model_is_never_sent() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(LIMITED).serve().await;
    // gpt-4o-mini: 3 input tokens at $0.15/1M and 5 output at $0.60/1M is
    // $0.00000345, 4 micro-dollars rounded up: 0, 4, 8 are under 10.
    for _ in 0..3 {
        assert_eq!(
            code_of(post(&gw, "tok-friend", &chat("gpt-4o-mini")).await).await,
            (200, None)
        );
    }
    assert_eq!(
        code_of(post(&gw, "tok-friend", &chat("gpt-4o-mini")).await).await,
        (429, Some("insufficient_quota".into()))
    );
    let before = up.count();
    let r = post(&gw, "tok-cheap", &chat("my-own-model")).await;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_price_unknown");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("PRICES_FILE"));
    assert_eq!(up.count(), before, "an unpriced request is never forwarded");
    // What chat front-ends read to show a balance.
    let usage = settled(&gw, "tok-friend").await;
    assert_eq!(usage["limits"][0]["used"].as_f64(), Some(0.000012));
    let sub = get_json(&gw, "/v1/dashboard/billing/subscription", "tok-friend").await;
    assert_eq!(sub["hard_limit_usd"].as_f64(), Some(0.00001));
    assert_eq!(sub["access_until"].as_i64(), Some(4_070_908_800));
    let billing = get_json(&gw, "/dashboard/billing/usage", "tok-friend").await;
    assert_eq!(billing["total_usage"].as_f64(), Some(0.0012), "{billing}");
    let rows = report(&gw, "tok-friend").await;
    let row = rows.iter().find(|r| r.token == "friend").unwrap();
    assert_eq!(
        (
            row.requests,
            row.input_tokens,
            row.output_tokens,
            row.cost_usd
        ),
        (3, 9, 15, 12)
    );
    assert_eq!(up.count(), before, "the usage endpoints are answered here");
}

#[tokio::test]
async fn a_stream_is_settled_with_its_usage_and_an_abandoned_one_with_an_estimate() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(LIMITED).serve().await;
    let streamed = json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let r = post(&gw, "tok-stream", &streamed).await;
    assert_eq!(r.status(), 200);
    let text = String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap();
    assert!(
        !text.contains(r#""choices":[]"#),
        "the usage chunk the gateway asked for is hidden"
    );
    let usage = settled(&gw, "tok-stream").await;
    assert_eq!(usage["limits"][0]["used"].as_i64(), Some(8));
    // The user presses stop after the first event of a slow stream.
    let slow = json!({"model": "gpt-4o-mini", "stream": true, "metadata": {"gap": "1"},
        "messages": [{"role": "user", "content": "tell me a long story"}]})
    .to_string();
    let mut r = post(&gw, "tok-stream", &slow).await;
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(r);
    let usage = settled(&gw, "tok-stream").await;
    let used = usage["limits"][0]["used"].as_i64().unwrap();
    assert!(
        used > 8,
        "the abandoned stream is billed, not zero: {usage}"
    );
    let rows = report(&gw, "tok-stream").await;
    let row = rows.iter().find(|r| r.token == "stream").unwrap();
    assert_eq!((row.requests, row.estimated_requests), (2, 1));
}

#[tokio::test]
async fn tokens_without_limits_are_metered_and_see_no_limits() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(LIMITED).serve().await;
    for _ in 0..2 {
        assert_eq!(
            code_of(post(&gw, "tok-open", &chat("gpt-4o")).await).await,
            (200, None)
        );
    }
    let usage = get_json(&gw, "/v1/gateway/usage", "tok-open").await;
    assert_eq!(usage["token"], "open");
    assert_eq!(usage["limits"], json!([]));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let rows = report(&gw, "tok-open").await;
        if let Some(row) = rows.iter().find(|r| r.token == "open" && r.requests == 2) {
            assert_eq!(row.model, "gpt-4o");
            assert_eq!((row.input_tokens, row.output_tokens), (6, 10));
            assert!(row.cost_usd > 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The usage endpoints need a token like any request.
    let r = client()
        .get(gw.url("/v1/gateway/usage"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn limits_without_a_store_that_can_hold_them_refuse_to_start() {
    let up = MockUpstream::start().await;
    let refused = Launch::new(&up.url())
        .tokens(LIMITED)
        .env("USAGE_STORE", "off")
        .try_serve()
        .await
        .err()
        .expect("limits with USAGE_STORE=off must not start")
        .to_string();
    assert!(refused.contains("USAGE_STORE"), "{refused}");
    assert!(refused.contains("`rpm`"), "{refused}");
    // Lambda: counters per container would multiply every limit.
    let (code, logs) = Launch::new(&up.url())
        .tokens(LIMITED)
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .env("USAGE_STORE", "sqlite:usage.db")
        .spawn()
        .err()
        .expect("limits on Lambda without DynamoDB must not start");
    assert_eq!(code, Some(1));
    let logs = logs.join("\n");
    assert!(logs.contains("dynamodb:TABLE"), "{logs}");
    let bad = Launch::new(&up.url())
        .tokens(LIMITED)
        .env("USAGE_STORE", "redis:x")
        .try_serve()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(bad.contains("sqlite:PATH, dynamodb:TABLE or off"), "{bad}");
}

#[tokio::test]
async fn the_usage_command_reports_what_the_gateway_wrote() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(LIMITED).start();
    assert_eq!(
        code_of(post(&gw, "tok-open", &chat("gpt-4o-mini")).await).await,
        (200, None)
    );
    assert_eq!(
        code_of(post(&gw, "tok-daily", &chat("gpt-4o-mini")).await).await,
        (200, None)
    );
    settled(&gw, "tok-daily").await;
    let store = format!("sqlite:{}", gw.dir().join("usage.db").display());
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_chatgpt-gateway"))
            .args(args)
            .env_clear()
            .output()
            .unwrap()
    };
    // The limited token's usage is written at once; the other's by the
    // batching writer, within milliseconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let rows = loop {
        let out = run(&["usage", "report", "--store", &store, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
        if rows.as_array().unwrap().len() >= 2 || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["token"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["daily", "open"]);
    for key in [
        "model",
        "requests",
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "cost_usd",
        "estimated_requests",
    ] {
        assert!(rows[0].get(key).is_some(), "{key} in {}", rows[0]);
    }
    let tokens = gw.dir().join("tokens.json");
    let out = run(&[
        "usage",
        "report",
        "--store",
        &store,
        "--period",
        "day",
        "--token",
        "daily",
        "--tokens-file",
        tokens.to_str().unwrap(),
    ]);
    let table = String::from_utf8(out.stdout).unwrap();
    let check = run(&["tokens", "check", "--file", tokens.to_str().unwrap()]);
    let listed = String::from_utf8(check.stdout).unwrap();
    assert!(
        listed.contains("models gpt-4o-mini*; limits usd_per_month=0.00001"),
        "{listed}"
    );
    assert!(table.contains("tokens_per_day"), "{table}");
    assert!(table.contains("gpt-4o-mini"), "{table}");
    assert!(
        !table.contains("open "),
        "only the token asked for: {table}"
    );
    for (args, says) in [
        (vec!["usage", "report", "--store", "redis:x"], "--store"),
        (
            vec!["usage", "report", "--store", &store, "--date", "2026-13"],
            "YYYY-MM",
        ),
    ] {
        let out = run(&args);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn an_upload_is_not_counted_as_tokens_and_its_model_is_priced() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(LIMITED).serve().await;
    // 400 KB of audio: at four bytes a token it would be 100,000 tokens,
    // far over the day's 2,000; it is a file, not text.
    let audio: Vec<u8> = (0..=255u8).cycle().take(400_000).collect();
    let form = |model: &str| {
        let mut body = Vec::new();
        body.extend_from_slice(b"--BoUnD\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n");
        body.extend_from_slice(&audio);
        body.extend_from_slice(format!("\r\n--BoUnD\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--BoUnD--\r\n").as_bytes());
        body
    };
    let send = |model: &str| {
        client()
            .post(gw.url("/v1/audio/transcriptions"))
            .bearer_auth("tok-listener")
            .header("content-type", "multipart/form-data; boundary=BoUnD")
            .body(form(model))
            .send()
    };
    let r = send("gpt-4o-mini-transcribe").await.unwrap();
    assert_eq!(r.status(), 200);
    let text: Value = r.json().await.unwrap();
    assert_eq!(text["text"], format!("sha256:{}", sha256_hex(&audio)));
    assert_eq!(
        up.last().body,
        form("gpt-4o-mini-transcribe"),
        "byte for byte"
    );
    // The mock's transcription carries no usage: estimated, and not from the file's size.
    let usage = settled(&gw, "tok-listener").await;
    let tokens = &usage["limits"][0];
    assert_eq!(tokens["limit"], "tokens_per_day");
    assert!(tokens["used"].as_i64().unwrap() < 100, "{usage}");
    // A dollar limit: an upload whose model has no price is never sent.
    let before = up.count();
    let r = send("my-own-transcriber").await.unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_price_unknown");
    assert_eq!(up.count(), before);
}

#[tokio::test]
async fn a_response_without_usage_costs_its_per_request_price() {
    let up = MockUpstream::start().await;
    let dir = TempDir::new();
    let prices = dir.write(
        "prices.json",
        r#"{"dall-e-3": {"input": 0, "output": 0, "per_request": 0.04}}"#,
    );
    let gw = Launch::new(&up.url())
        .tokens(LIMITED)
        .env("PRICES_FILE", prices.to_str().unwrap())
        // The binary, so that its own access log is read below.
        .start();
    let image = json!({"model": "dall-e-3", "prompt": "a lighthouse", "n": 1}).to_string();
    let r = client()
        .post(gw.url("/v1/images/generations"))
        .bearer_auth("tok-cheap")
        .header("content-type", "application/json")
        .body(image)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let usage = settled(&gw, "tok-cheap").await;
    assert_eq!(usage["limits"][0]["limit"], "usd_total");
    assert_eq!(usage["limits"][0]["used"].as_f64(), Some(0.04), "{usage}");
    assert_eq!(usage["limits"][0]["resets_at"], Value::Null);
    // The access line tells the same charge as the store.
    let lines = gw.wait_access_lines(2);
    let line = lines
        .iter()
        .find(|l| l["path"] == "/v1/images/generations")
        .expect("the image request's access line");
    assert_eq!(line["model"], "dall-e-3", "{line}");
    assert_eq!(line["cost_usd"].as_f64(), Some(0.04), "{line}");
}

// ---------------------------------------------------------------------------
// Spend control, round 2 (#28): the attacks of a token holder, each refused
// or billed. Each of these fails on f47aee3.

const ATTACKER: &str = r#"{"tokens": [
    {"name": "att-usd", "token": "tok-att-usd",
     "models": ["gpt-4o-mini*", "dall-e-3", "tts-1", "whisper-1"], "limits": {"usd_per_day": 0.05}},
    {"name": "att-tok", "token": "tok-att-tok", "limits": {"tokens_per_day": 1000}},
    {"name": "att-media", "token": "tok-att-media", "limits": {"usd_per_day": 5}},
    {"name": "att-named", "token": "tok-att-named", "limits": {"usd_per_day": 5},
     "endpoints": ["/v1/batches", "/v1/chat/completions"]},
    {"name": "att-open", "token": "tok-att-open"}
]}"#;

/// Sends `body` to `path` as `token`, with `content_type` when given; the
/// status and the JSON body (`Null` when it is not JSON).
async fn send(
    gw: &impl Target,
    path: &str,
    token: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut request = client().post(gw.url(path)).bearer_auth(token).body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn send_json(gw: &impl Target, path: &str, token: &str, body: &Value) -> (u16, Value) {
    send(gw, path, token, Some("application/json"), body.to_string()).await
}

/// The `used` of a token's first limit, once nothing is reserved.
async fn used(gw: &impl Target, token: &str) -> f64 {
    settled(gw, token).await["limits"][0]["used"]
        .as_f64()
        .unwrap()
}

fn error_code(body: &Value) -> (&str, &str) {
    (
        body["error"]["code"].as_str().unwrap_or("-"),
        body["error"]["param"].as_str().unwrap_or("-"),
    )
}

#[tokio::test]
async fn counts_out_of_range_are_400s_and_limits_stay_on() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(ATTACKER).serve().await;
    let chat = |extra: Value| {
        let mut body =
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, param) in [
        (
            json!({"max_completion_tokens": 16_000_000_000_000_000_000u64}),
            "max_completion_tokens",
        ),
        (json!({"max_tokens": 1e300}), "max_tokens"),
        (json!({"max_tokens": -1}), "max_tokens"),
        (json!({"max_output_tokens": 1.5}), "max_output_tokens"),
        (json!({"max_tokens": "12"}), "max_tokens"),
        (json!({"max_tokens": true}), "max_tokens"),
        (json!({"n": 0}), "n"),
        (json!({"n": 1000}), "n"),
    ] {
        let (status, body) = send_json(
            &gw,
            "/v1/chat/completions",
            "tok-att-usd",
            &chat(extra.clone()),
        )
        .await;
        assert_eq!(status, 400, "{extra}: {body}");
        assert_eq!(error_code(&body), ("invalid_value", param), "{extra}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    assert_eq!(up.count(), 0, "no bad count reached the upstream");
    // A huge but valid maximum is reserved at the model's ceiling, and the
    // store keeps enforcing: the budget is counted, nothing stays reserved.
    let (status, _) = send_json(
        &gw,
        "/v1/chat/completions",
        "tok-att-usd",
        &chat(json!({"max_completion_tokens": 2_147_483_647u64})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(used(&gw, "tok-att-usd").await > 0.0);
}

#[tokio::test]
async fn billing_dates_are_checked_and_the_server_goes_on() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(ATTACKER).serve().await;
    for (query, param) in [
        ("start_date=2026-12-01&end_date=-262143-01-01", "end_date"),
        ("start_date=+262143-01-01&end_date=2026-12-01", "start_date"),
        ("start_date=2026-01-01&end_date=2026-12-01", "end_date"),
        ("start_date=2026-12-05&end_date=2026-12-01", "end_date"),
    ] {
        let r = client()
            .get(gw.url(&format!("/v1/dashboard/billing/usage?{query}")))
            .bearer_auth("tok-att-usd")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(error_code(&body), ("invalid_value", param), "{query}");
    }
    let r = client()
        .get(gw.url("/v1/dashboard/billing/usage?start_date=2026-12-01&end_date=2026-12-05"))
        .bearer_auth("tok-att-usd")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("\"total_usage\":0.0"), "{text}");
    assert_eq!(
        get_json(&gw, "/v1/gateway/usage", "tok-att-usd").await["object"],
        "gateway.usage"
    );
}

#[tokio::test]
async fn a_client_gone_before_the_answer_is_charged_its_reservation_as_a_499() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(ATTACKER).serve().await;
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 100,
                      "metadata": {"delay_ms": "2000"},
                      "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let sent = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("tok-att-tok")
        .header("content-type", "application/json")
        .timeout(std::time::Duration::from_millis(300))
        .body(body.clone())
        .send()
        .await;
    assert!(sent.is_err(), "the client gave up before the answer");
    // The reservation (input estimated at 4 bytes a token, plus the
    // maximum output), settled as used: the upstream may have billed it.
    let want = (body.len() as f64 / 4.0).ceil() + 100.0;
    assert_eq!(used(&gw, "tok-att-tok").await, want);
    let lines = gw.wait_access_lines(1).await;
    let line = lines
        .iter()
        .find(|l| l["path"] == "/v1/chat/completions")
        .expect("the abandoned request's access line");
    assert_eq!(
        (line["status"].as_u64(), line["outcome"].as_str()),
        (Some(499), Some("client_closed")),
        "{line}"
    );
}

#[tokio::test]
async fn a_form_that_reads_two_ways_is_refused_unsent() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(ATTACKER).serve().await;
    let part = |head: &str, value: &str| format!("--B\r\n{head}\r\n\r\n{value}\r\n");
    let model = |m: &str| part("Content-Disposition: form-data; name=\"model\"", m);
    let file = part(
        "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"",
        "RIFF",
    );
    for (why, content_type, body) in [
        ("two models", "multipart/form-data; boundary=B", format!("{file}{}{}--B--\r\n", model("whisper-1"), model("o1-pro"))),
        (
            "a decoy name",
            "multipart/form-data; boundary=B",
            format!("{file}{}--B--\r\n", part("Content-Disposition: form-data; xname=\"model\"", "whisper-1")),
        ),
        ("a boundary that does not match", "multipart/form-data; boundary=\"X;Y\"", format!("{file}{}--B--\r\n", model("o1-pro"))),
        ("a part without its CRLF", "multipart/form-data; boundary=B", format!("{file}--B\r\nContent-Disposition: form-data; name=\"model\"\r\no1-pro\r\n--B--\r\n")),
        ("cut mid-part", "multipart/form-data; boundary=B", format!("{file}--B\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\no1-pro")),
    ] {
        let (status, body) = send(&gw, "/v1/audio/transcriptions", "tok-att-usd", Some(content_type), body).await;
        assert_eq!(status, 400, "{why}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{why}");
    }
    assert_eq!(up.count(), 0, "no ambiguous form reached the upstream");
}

#[tokio::test]
async fn endpoints_that_spend_unmetered_are_refused_unless_named() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(ATTACKER).serve().await;
    for path in [
        "/v1/fine_tuning/jobs",
        "/v1/batches",
        "/v1/realtime/sessions",
        "/v1/realtime/client_secrets",
        "/v1/chat/completions/chatcmpl-1",
    ] {
        let (status, body) =
            send_json(&gw, path, "tok-att-media", &json!({"model": "gpt-4o-mini"})).await;
        assert_eq!(
            (status, error_code(&body).0),
            (403, "endpoint_not_metered"),
            "{path}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("endpoints"),
            "{body}"
        );
    }
    let background = json!({"model": "gpt-4o-mini", "input": "hi", "background": true});
    let (status, body) = send_json(&gw, "/v1/responses", "tok-att-media", &background).await;
    assert_eq!((status, error_code(&body).0), (403, "endpoint_not_metered"));
    assert_eq!(up.count(), 0);
    // Named in `endpoints`: allowed, knowingly.
    let (status, _) = send_json(
        &gw,
        "/v1/batches",
        "tok-att-named",
        &json!({"input_file_id": "f"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn images_and_speech_are_charged_by_their_units() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(ATTACKER).serve().await;
    // dall-e-3, hd, 1024x1792: $0.12 an image; two of them.
    let image = json!({"model": "dall-e-3", "prompt": "a lighthouse", "n": 2,
                       "size": "1024x1792", "quality": "hd"});
    assert_eq!(
        send_json(&gw, "/v1/images/generations", "tok-att-media", &image)
            .await
            .0,
        200
    );
    let after_images = used(&gw, "tok-att-media").await;
    assert!((after_images - 0.24).abs() < 1e-9, "{after_images}");
    // tts-1: $15 per 1M characters; 1,000 of them.
    let speech = json!({"model": "tts-1", "voice": "alloy", "input": "a".repeat(1000)});
    assert_eq!(
        send_json(&gw, "/v1/audio/speech", "tok-att-media", &speech)
            .await
            .0,
        200
    );
    let after_speech = used(&gw, "tok-att-media").await;
    assert!((after_speech - 0.255).abs() < 1e-9, "{after_speech}");
    // A budget of $0.05 at $0.04 an image: the second crosses it, the third is refused.
    let one = json!({"model": "dall-e-3", "prompt": "x", "n": 1});
    for _ in 0..2 {
        let (status, _) = send_json(&gw, "/v1/images/generations", "tok-att-usd", &one).await;
        assert_eq!(status, 200);
    }
    let again = send_json(&gw, "/v1/images/generations", "tok-att-usd", &one).await;
    assert_eq!(
        (again.0, error_code(&again.1).0),
        (429, "insufficient_quota")
    );
    // A model with no price of its own is refused, never priced by a prefix.
    let fast = json!({"model": "gpt-4o-mini-fast", "messages": []});
    let r = send_json(&gw, "/v1/chat/completions", "tok-att-media", &fast).await;
    assert_eq!((r.0, error_code(&r.1).0), (403, "model_price_unknown"));
}

#[tokio::test]
async fn n_multiplies_the_reservation() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(ATTACKER).serve().await;
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 50, "n": 4,
                      "metadata": {"delay_ms": "1500"},
                      "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let input = (body.len() as i64 + 3) / 4;
    let in_flight = tokio::spawn({
        let url = gw.url("/v1/chat/completions");
        let body = body.clone();
        async move {
            client()
                .post(url)
                .bearer_auth("tok-att-tok")
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let reserved = loop {
        let usage = get_json(&gw, "/v1/gateway/usage", "tok-att-tok").await;
        let reserved = usage["limits"][0]["reserved"].as_i64().unwrap();
        if reserved > 0 || std::time::Instant::now() > deadline {
            break reserved;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        reserved,
        input + 4 * 50,
        "four answers of at most 50 tokens"
    );
    assert_eq!(in_flight.await.unwrap(), 200);
}

#[tokio::test]
async fn an_encoded_path_is_metered_as_the_upstream_routes_it() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(ATTACKER).serve().await;
    let chat = json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": []});
    let (status, _) = send_json(&gw, "/v1/chat/%63ompletions", "tok-att-tok", &chat).await;
    assert_eq!(status, 200);
    assert_eq!(
        up.last().target,
        "/v1/chat/%63ompletions",
        "forwarded as sent"
    );
    assert!(used(&gw, "tok-att-tok").await > 0.0, "and metered");
    let (status, body) = send_json(&gw, "/v1/chat%2Fcompletions", "tok-att-tok", &chat).await;
    assert_eq!((status, error_code(&body).0), (400, "invalid_path"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_spending_body_that_is_not_json_is_a_415() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(ATTACKER).serve().await;
    let chat = json!({"model": "o1-pro", "messages": []}).to_string();
    for content_type in [
        Some("text/plain"),
        None,
        Some("multipart/form-data; boundary=B"),
    ] {
        let (status, body) = send(
            &gw,
            "/v1/chat/completions",
            "tok-att-usd",
            content_type,
            chat.clone(),
        )
        .await;
        assert_eq!(
            (status, error_code(&body).0),
            (415, "unsupported_media_type"),
            "{content_type:?}"
        );
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_null_stream_options_is_replaced_by_one_include_usage() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(ATTACKER).serve().await;
    let chat = json!({"model": "gpt-4o-mini", "stream": true, "stream_options": null,
                      "metadata": {"gap": "0"}, "messages": []});
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("tok-att-tok")
        .header("content-type", "application/json")
        .body(chat.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("\"usage\""),
        "the client did not ask for usage: {text}"
    );
    let sent = String::from_utf8(up.last().body).unwrap();
    assert_eq!(sent.matches("stream_options").count(), 1, "{sent}");
    let sent: Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(
        used(&gw, "tok-att-tok").await,
        8.0,
        "the upstream's own usage"
    );
}

#[tokio::test]
async fn a_model_name_too_long_or_unprintable_is_refused_before_it_is_kept() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(ATTACKER).serve().await;
    let long = "m".repeat(4 << 20);
    for model in [long.as_str(), "gpt-4o-mini\u{1b}[2J"] {
        let chat = json!({"model": model, "messages": []});
        let (status, body) = send_json(&gw, "/v1/chat/completions", "tok-att-tok", &chat).await;
        assert_eq!(
            (status, error_code(&body)),
            (400, ("invalid_value", "model"))
        );
    }
    assert_eq!(up.count(), 0);
    let lines = gw.wait_access_lines(2).await;
    assert!(
        lines.iter().all(|l| l.to_string().len() < 2000),
        "nothing long was kept"
    );
}

#[tokio::test]
async fn an_absurd_usage_from_the_upstream_is_capped_and_the_limit_holds() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(ATTACKER).serve().await;
    let chat = |tokens: &str| {
        json!({"model": "gpt-4o-mini", "max_tokens": 5, "metadata": {"completion_tokens": tokens},
               "messages": []})
    };
    let (status, _) = send_json(
        &gw,
        "/v1/chat/completions",
        "tok-att-tok",
        &chat("9223372036854775808"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        used(&gw, "tok-att-tok").await,
        (1u64 << 53) as f64,
        "capped at 2^53"
    );
    let (status, body) = send_json(&gw, "/v1/chat/completions", "tok-att-tok", &chat("5")).await;
    assert_eq!((status, error_code(&body).0), (429, "insufficient_quota"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn an_edited_stream_drops_the_upstreams_length_and_goes_out_whole() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(ATTACKER).serve().await;
    let chat = json!({"model": "gpt-4o-mini", "stream": true, "metadata": {"length": "true"},
                      "messages": []});
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("tok-att-open")
        .header("content-type", "application/json")
        .body(chat.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("content-length").is_none(),
        "{:?}",
        r.headers()
    );
    assert!(r.headers().get("etag").is_none());
    let text = r.text().await.expect("the whole body, no short read");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!text.contains("\"usage\""), "{text}");
}

#[tokio::test]
async fn the_inference_preset_keeps_a_token_from_shared_stored_objects() {
    let up = MockUpstream::start().await;
    let endpoints: Vec<&str> = chatgpt_gateway::openai::INFERENCE.to_vec();
    let tokens = json!({"tokens": [{"name": "inf", "token": "tok-inf",
        "endpoints": endpoints, "limits": {"usd_per_day": 5}}]})
    .to_string();
    let gw = Launch::new(&up.url()).tokens(&tokens).serve().await;
    let chat = json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": []});
    assert_eq!(
        send_json(&gw, "/v1/chat/completions", "tok-inf", &chat)
            .await
            .0,
        200
    );
    assert_eq!(fetch(&gw, "/v1/models?token=tok-inf").await.status(), 200);
    for path in [
        "/v1/chat/completions",
        "/v1/chat/completions/c1",
        "/v1/files",
        "/v1/batches",
        "/v1/responses/resp_1",
        "/v1/vector_stores",
    ] {
        let r = fetch(&gw, &format!("{path}?token=tok-inf")).await;
        assert_eq!(r.status(), 403, "GET {path}");
    }
    let background = json!({"model": "gpt-4o-mini", "input": "hi", "background": true});
    let (status, body) = send_json(&gw, "/v1/responses", "tok-inf", &background).await;
    assert_eq!((status, error_code(&body).0), (403, "endpoint_not_metered"));
    assert_eq!(
        up.count(),
        2,
        "only the chat and the model list were forwarded"
    );
}
