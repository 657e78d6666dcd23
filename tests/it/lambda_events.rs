//! Lambda mode: the events in `events/` through the Lambda glue and the core
//! handler, against a mock upstream. Checks what the upstream received and
//! what the client gets back, in both invoke modes.

use std::time::{Duration, Instant};

use base64::Engine;
use std::sync::Arc;

use crate::common::*;
use chatgpt_gateway::lambda;
use chatgpt_gateway::proxy::{Proxy, Upstream};
use chatgpt_gateway::sources::cached::Cached;
use chatgpt_gateway::tokens::format;
use chatgpt_gateway::{Gateway, GatewayOptions};
use http_body_util::BodyExt;
use lambda_http::RequestExt;

fn gateway(upstream: &str) -> Gateway {
    gateway_with_records(upstream).0
}

fn gateway_with_records(upstream: &str) -> (Gateway, Collect) {
    gateway_with_tokens(upstream, include_str!("../../events/tokens.json"))
}

fn gateway_with_tokens(upstream: &str, tokens: &str) -> (Gateway, Collect) {
    let list = format::parse(tokens, chrono::FixedOffset::east_opt(0).unwrap()).unwrap();
    let proxy = Proxy::new(
        Upstream::parse(upstream).unwrap(),
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .unwrap();
    let records = Collect::default();
    let mut options = GatewayOptions::new(proxy, Cached::fixed(list.tokens));
    options.idle_timeout = Duration::from_secs(30);
    options.hooks.push(Arc::new(records.clone()));
    (Gateway::new(options), records)
}

fn event(json: &str) -> lambda_http::Request {
    let mut context = lambda_runtime::Context::default();
    context.request_id = "req-lambda-test-1".into();
    lambda_http::request::from_str(json)
        .expect("the event deserializes")
        .with_lambda_context(context)
}

async fn body_of(response: http::Response<chatgpt_gateway::body::GatewayBody>) -> Vec<u8> {
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

fn event_body(json: &str) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let body = v["body"].as_str().unwrap();
    if v["isBase64Encoded"].as_bool().unwrap_or(false) {
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    } else {
        body.as_bytes().to_vec()
    }
}

#[tokio::test]
async fn function_url_get_models() {
    let up = MockUpstream::start().await;
    let gw = gateway(&up.url());
    let response = lambda::streaming(
        &gw,
        event(include_str!("../../events/function-url-get-models.json")),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_mock_"));
    assert!(response.headers().get("content-length").is_none());
    let body: serde_json::Value = serde_json::from_slice(&body_of(response).await).unwrap();
    assert_eq!(body["data"][0]["id"], "gpt-4o-mini");
    let seen = up.last();
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("GET", "/v1/models")
    );
    assert_eq!(seen.header("host"), Some(up.addr.to_string()));
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some("Bearer sk-client-own-key")
    );
    for gone in [
        "x-amzn-tls-version",
        "x-amzn-trace-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-port",
    ] {
        assert_eq!(seen.header(gone), None, "{gone}");
    }
}

#[tokio::test]
async fn function_url_streamed_chat_keeps_event_timing() {
    let up = MockUpstream::start().await;
    let gw = gateway(&up.url());
    let json = include_str!("../../events/function-url-chat-stream.json");
    let response = lambda::streaming(&gw, event(json)).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = response.into_body();
    let started = Instant::now();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            if !data.is_empty() {
                arrivals.push(started.elapsed());
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }
    // Five words, the stop chunk and [DONE], 200 ms apart.
    assert_eq!(text.matches("data: ").count(), 7, "{text}");
    assert!(
        arrivals.len() >= 7,
        "events arrived in {} frames",
        arrivals.len()
    );
    assert!(
        arrivals[arrivals.len() - 1] - arrivals[0] >= Duration::from_millis(800),
        "{arrivals:?}"
    );
    let seen = up.last();
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(seen.body, event_body(json));
}

#[tokio::test]
async fn function_url_base64_multipart_upload_arrives_byte_for_byte() {
    let up = MockUpstream::start().await;
    let gw = gateway(&up.url());
    let json = include_str!("../../events/function-url-audio-upload.json");
    let response = lambda::streaming(&gw, event(json)).await;
    assert_eq!(response.status(), 200);
    let seen = up.last();
    let sent = event_body(json);
    assert!(
        sent.windows(4).any(|w| w == b"RIFF"),
        "the event carries a WAV file"
    );
    assert_eq!(seen.body, sent);
    assert_eq!(seen.header("content-length"), Some(sent.len().to_string()));
    assert!(seen
        .header("content-type")
        .unwrap()
        .starts_with("multipart/form-data; boundary="));
}

#[tokio::test]
async fn http_api_v2_stage_is_not_forwarded_and_cookies_are_carried() {
    let up = MockUpstream::start().await;
    let gw = gateway(&up.url());
    let json = include_str!("../../events/apigw-http-v2.json");
    let response = lambda::buffered(&gw, event(json)).await;
    assert_eq!(response.status(), 200);
    match response.body() {
        lambda_http::Body::Text(text) => assert!(text.contains("gpt-4o")),
        other => panic!("JSON should go out as text: {other:?}"),
    }
    let seen = up.last();
    assert_eq!(seen.target, "/v1/chat/completions?trace=a%2Fb");
    assert_eq!(
        seen.header("cookie").as_deref(),
        Some("session=abc; theme=dark")
    );
    assert_eq!(
        seen.header("accept-language").as_deref(),
        Some("en-US,zh-CN")
    );
    assert_eq!(seen.header("openai-beta").as_deref(), Some("assistants=v2"));
    assert_eq!(seen.header("x-forwarded-for"), None);
    assert_eq!(seen.body, event_body(json));
}

#[tokio::test]
async fn rest_api_v1_stage_is_not_forwarded_and_multi_value_headers_are_carried() {
    let up = MockUpstream::start().await;
    let gw = gateway(&up.url());
    let json = include_str!("../../events/apigw-rest-v1.json");
    let response = lambda::buffered(&gw, event(json)).await;
    assert_eq!(response.status(), 200);
    let seen = up.last();
    assert_eq!(seen.target, "/v1/embeddings?user=u1");
    assert_eq!(seen.header_count("x-custom"), 2);
    assert_eq!(seen.header("x-amzn-trace-id"), None);
    assert_eq!(seen.body, event_body(json));
}

#[tokio::test]
async fn errors_keep_status_and_body_in_both_modes() {
    let up = MockUpstream::start().await;
    let gw = gateway(&up.url());
    let json = include_str!("../../events/function-url-get-models.json")
        .replace("gw-example-token", "gw-expired-token");
    let response = lambda::streaming(&gw, event(&json)).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&body_of(response).await).unwrap();
    assert_eq!(body["error"]["code"], "token_expired");

    let response = lambda::buffered(&gw, event(&json)).await;
    assert_eq!(response.status(), 401);
    match response.body() {
        lambda_http::Body::Text(text) => assert!(text.contains("token_expired"), "{text}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn buffered_binary_goes_base64_and_oversized_bodies_get_a_clear_error() {
    let up = MockUpstream::start().await;
    let (gw, records) = gateway_with_records(&up.url());
    let get = |path: &str| {
        include_str!("../../events/function-url-get-models.json")
            .replace(
                "\"rawPath\": \"/v1/models\"",
                &format!("\"rawPath\": \"{path}\""),
            )
            .replace(
                "token=gw-example-token",
                &format!("token=gw-example-token&bytes={}", path.len()),
            )
    };
    // A small binary download is collected as Binary (lambda_http sends it base64).
    let json = get("/v1/download").replace("&bytes=12", "&bytes=4096");
    let response = lambda::buffered(&gw, event(&json)).await;
    assert_eq!(response.status(), 200);
    match response.body() {
        lambda_http::Body::Binary(bytes) => {
            assert_eq!(bytes.len(), 4096);
            assert!(bytes
                .iter()
                .enumerate()
                .all(|(i, b)| *b == pattern_byte(i as u64)));
        }
        other => panic!("binary should be Binary: {other:?}"),
    }
    // 5 MB of binary is about 6.7 MB in base64: over Lambda's limit.
    let json = get("/v1/download").replace("&bytes=12", "&bytes=5000000");
    let response = lambda::buffered(&gw, event(&json)).await;
    assert_eq!(response.status(), 502);
    match response.body() {
        lambda_http::Body::Text(text) => assert!(text.contains("response_too_large"), "{text}"),
        other => panic!("{other:?}"),
    }
    // The record (and so the access line) says what the client got.
    let records = records.0.lock().unwrap();
    let last = records.last().unwrap();
    assert_eq!(
        (
            last["status"].as_u64(),
            last["error_code"].as_str(),
            last["outcome"].as_str()
        ),
        (Some(502), Some("response_too_large"), Some("gateway_error")),
        "{last}"
    );
    assert_eq!(records.len(), 2, "each request recorded exactly once");
}

#[tokio::test]
async fn from_event_maps_the_uri_and_the_request_id() {
    // The request id reaches the handler (and its access line) through the request's extensions.
    let request = lambda::from_event(event(include_str!(
        "../../events/function-url-get-models.json"
    )));
    let id = request
        .extensions()
        .get::<chatgpt_gateway::record::RequestId>()
        .map(|r| r.0.clone());
    assert_eq!(id.as_deref(), Some("req-lambda-test-1"));
    assert_eq!(
        request.uri().to_string(),
        "/v1/models?token=gw-example-token"
    );
}

#[tokio::test]
async fn the_events_source_ip_is_the_client_that_allow_ips_is_checked_against() {
    let up = MockUpstream::start().await;
    let events = [
        include_str!("../../events/function-url-get-models.json"),
        include_str!("../../events/apigw-http-v2.json"),
        include_str!("../../events/apigw-rest-v1.json"),
    ];
    // Each event says it came from 203.0.113.7.
    for (nets, allowed) in [
        (r#"["203.0.113.0/24"]"#, true),
        (r#"["203.0.113.7", "2001:db8::/32"]"#, true),
        (r#"["198.51.100.0/24"]"#, false),
    ] {
        let tokens =
            format!(r#"[{{"name": "example", "token": "gw-example-token", "allow_ips": {nets}}}]"#);
        let (gw, records) = gateway_with_tokens(&up.url(), &tokens);
        for json in events {
            let before = up.count();
            let response = lambda::streaming(&gw, event(json)).await;
            let status = response.status();
            let body = String::from_utf8(body_of(response).await).unwrap();
            if allowed {
                assert_eq!(status, 200, "{nets}: {body}");
                assert_eq!(up.count(), before + 1);
            } else {
                assert_eq!(status, 403, "{nets}: {body}");
                let error: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(error["error"]["code"], "ip_not_allowed");
                assert_eq!(up.count(), before, "nothing forwarded");
            }
            let line = records.0.lock().unwrap().last().cloned().unwrap();
            assert_eq!(line["client_ip"], "203.0.113.7", "{line}");
        }
    }
}

/// A Function URL event for `method path`, with `headers` and a JSON body.
fn function_url_event(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> String {
    let mut event: serde_json::Value =
        serde_json::from_str(include_str!("../../events/function-url-get-models.json")).unwrap();
    event["rawPath"] = path.into();
    event["rawQueryString"] = "".into();
    event["queryStringParameters"] = serde_json::json!({});
    event["requestContext"]["http"]["method"] = method.into();
    event["requestContext"]["http"]["path"] = path.into();
    let map = event["headers"].as_object_mut().unwrap();
    map.remove("authorization");
    for (name, value) in headers {
        map.insert((*name).to_owned(), (*value).into());
    }
    event["body"] = body.map_or(serde_json::Value::Null, Into::into);
    event.to_string()
}

#[tokio::test]
async fn the_console_through_a_function_url_sets_a_secure_cookie_and_opens_the_admin_api() {
    let up = MockUpstream::start().await;
    let dir = TempDir::new();
    let tokens = dir.write(
        "tokens.json",
        r#"[{"name": "ops", "token": "lambda-Admin-1", "admin": true}]"#,
    );
    let args = [
        "chatgpt-gateway".to_owned(),
        format!("--tokens-file={}", tokens.display()),
        format!("--usage-store=sqlite:{}", dir.0.join("usage.db").display()),
        format!("--upstream={}", up.url()),
    ];
    let settings = <SettingsOnly as clap::Parser>::try_parse_from(&args)
        .unwrap()
        .settings;
    let options = chatgpt_gateway::startup::options_at(
        &settings,
        chatgpt_gateway::startup::Mode::Lambda,
        chatgpt_gateway::clock::Clock::system(),
    )
    .await
    .unwrap();
    let gw = Gateway::new(options);

    let page =
        lambda::streaming(&gw, event(&function_url_event("GET", "/admin/", &[], None))).await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    assert!(String::from_utf8(body_of(page).await)
        .unwrap()
        .contains("Admin token"));

    // The Function URL is https: the cookie is Secure, and it reaches the
    // client as a cookie of the response.
    let login = function_url_event(
        "POST",
        "/v1/gateway/session",
        &[("content-type", "application/json")],
        Some(r#"{"token": "lambda-Admin-1"}"#),
    );
    let response = lambda::streaming(&gw, event(&login)).await;
    assert_eq!(response.status(), 201);
    let set = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.ends_with("; Secure"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();

    // The browser's cookie comes back in the event's `cookies`; a read needs
    // no origin, a change does.
    let mut read: serde_json::Value =
        serde_json::from_str(&function_url_event("GET", "/v1/gateway/tokens", &[], None)).unwrap();
    read["cookies"] = serde_json::json!([cookie]);
    let listed = lambda::streaming(&gw, event(&read.to_string())).await;
    assert_eq!(listed.status(), 200);
    let host = "https://abcdefghijklmnopqrstuvwxyz123456.lambda-url.us-east-1.on.aws";
    let mut change: serde_json::Value = serde_json::from_str(&function_url_event(
        "POST",
        "/v1/gateway/tokens",
        &[("content-type", "application/json"), ("origin", host)],
        Some(r#"{"name": "from-lambda"}"#),
    ))
    .unwrap();
    change["cookies"] = serde_json::json!([cookie]);
    let made = lambda::streaming(&gw, event(&change.to_string())).await;
    assert_eq!(made.status(), 201);
    let made: serde_json::Value = serde_json::from_slice(&body_of(made).await).unwrap();
    assert!(made["token"].as_str().unwrap().starts_with("gw-"));
}
