//! A pool of upstreams (`UPSTREAMS_FILE`): each request tries them in
//! order until one answers, before anything reaches the client; an
//! upstream that fails is rested, cooled down or dropped, and the access
//! line says which answered and what each attempt got. The upstreams here
//! are scripted to fail in each way a real one does.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chatgpt_gateway::clock::Clock;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::common::*;

/// What a scripted upstream does with one request.
#[derive(Clone, Debug)]
pub(crate) enum Act {
    /// A chat completion with usage.
    Answer,
    /// This status, with these headers, and an OpenAI-shaped error body.
    Status(u16, Vec<(&'static str, &'static str)>),
    /// Drops the connection without an answer.
    Reset,
    /// Never answers.
    Silent,
    /// A `200` event stream of these events, then `then`.
    Stream(Vec<&'static str>, Then),
}

/// How a scripted stream goes on after its events.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Then {
    /// It ends.
    End,
    /// The connection drops.
    Reset,
    /// Nothing more, ever.
    Silent,
}

const ROLE: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n";
const TOKEN: &str =
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
const DONE: &str = "data: [DONE]\n\n";
const COMMENT: &str = ": OPENROUTER PROCESSING\n\n";

/// One request as a scripted upstream saw it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) target: String,
    pub(crate) authorization: Option<String>,
    pub(crate) api_key: Option<String>,
    pub(crate) body: Bytes,
}

/// An upstream that acts out `script`, one act per request, the last one
/// for every request after.
pub(crate) struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    pub(crate) async fn start(script: Vec<Act>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (log, script) = (log.clone(), script.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (log, script) = (log.clone(), script.clone());
                        async move {
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .map(|v| v.to_str().unwrap().to_owned())
                            };
                            let mut seen = Seen {
                                target: req.uri().to_string(),
                                authorization: header("authorization"),
                                api_key: header("api-key"),
                                body: Bytes::new(),
                            };
                            seen.body = req.into_body().collect().await.unwrap().to_bytes();
                            log.lock().unwrap().push(seen);
                            let act = {
                                let mut script = script.lock().unwrap();
                                if script.len() > 1 {
                                    script.pop_front().unwrap()
                                } else {
                                    script[0].clone()
                                }
                            };
                            respond(act).await
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

type Reply = hyper::Response<BoxBody<Bytes, std::io::Error>>;

async fn respond(act: Act) -> Result<Reply, std::io::Error> {
    let json_body = |value: Value| {
        Full::new(Bytes::from(value.to_string()))
            .map_err(|never| match never {})
            .boxed()
    };
    match act {
        Act::Answer => Ok(hyper::Response::builder()
            .header("content-type", "application/json")
            .body(json_body(json!({
                "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
            })))
            .unwrap()),
        Act::Status(status, headers) => {
            let mut response = hyper::Response::builder()
                .status(status)
                .header("content-type", "application/json");
            for (k, v) in headers {
                response = response.header(k, v);
            }
            Ok(response
                .body(json_body(json!({"error": {
                    "message": format!("scripted {status}"), "type": "server_error",
                    "param": null, "code": null}})))
                .unwrap())
        }
        Act::Reset => Err(std::io::Error::other("scripted reset")),
        Act::Silent => std::future::pending().await,
        Act::Stream(events, then) => {
            let frames = futures_util::stream::iter(
                events
                    .into_iter()
                    .map(|e| Ok(Frame::data(Bytes::from_static(e.as_bytes())))),
            );
            let tail = futures_util::stream::once(async move {
                match then {
                    Then::End => None,
                    Then::Reset => {
                        // After the head and events have gone out (hyper
                        // would otherwise drop the connection before them).
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Some(Err(std::io::Error::other("scripted reset")))
                    }
                    Then::Silent => std::future::pending().await,
                }
            })
            .filter_map(|x| async move { x });
            Ok(hyper::Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(frames.chain(tail))))
                .unwrap())
        }
    }
}

const TOKENS: &str = r#"[
  {"name": "friend", "token": "gw-friend-Tok1"},
  {"name": "own-key", "token": "gw-own-Tok2", "upstream_key": "sk-holders-own"},
  {"name": "only-b", "token": "gw-onlyb-Tok3", "upstreams": ["b"]}
]"#;

/// Tokens for a gateway whose upstreams have other names.
const PLAIN_TOKENS: &str = r#"[{"name": "friend", "token": "gw-friend-Tok1"}]"#;

/// A pool file of upstreams `(name, url, priority, extra fields)`.
fn pool(entries: &[(&str, String, u32, Value)]) -> String {
    let list: Vec<Value> = entries
        .iter()
        .map(|(name, url, priority, extra)| {
            let mut entry = json!({"name": name, "base_url": url, "priority": priority,
                                   "key": format!("sk-pool-{name}")});
            if let (Some(entry), Some(extra)) = (entry.as_object_mut(), extra.as_object()) {
                entry.extend(extra.clone());
            }
            entry
        })
        .collect();
    json!({ "upstreams": list }).to_string()
}

/// Two scripted upstreams, `a` first and `b` after it, and a gateway in
/// front of them by `clock` (the directory holds its upstreams file).
async fn two(a: Vec<Act>, b: Vec<Act>, clock: &Clock) -> (Scripted, Scripted, Served, TempDir) {
    let (a, b) = (Scripted::start(a).await, Scripted::start(b).await);
    let dir = TempDir::new();
    let file = pool(&[("a", a.url(), 0, json!({})), ("b", b.url(), 1, json!({}))]);
    let gw = gateway(&dir, &file, clock).await;
    (a, b, gw, dir)
}

/// A gateway of the pool `file` (written to `dir`) and `tokens`, without
/// `UPSTREAM_URL`; more settings, a clock, and how to run it are the caller's.
fn pooled(dir: &TempDir, file: &str, tokens: &str) -> Launch {
    let path = dir.write("upstreams.json", file);
    let mut launch = Launch::new("unused").tokens(tokens);
    launch.env = vec![("UPSTREAMS_FILE".into(), path.display().to_string())];
    launch
}

/// The gateway in front of `file` (upstreams `a`, `b`, …; `TOKENS`), by `clock`.
async fn gateway(dir: &TempDir, file: &str, clock: &Clock) -> Served {
    pooled(dir, file, TOKENS)
        .clock(clock)
        .env("UPSTREAM_TIMEOUT_SECS", "1")
        .serve()
        .await
}

async fn chat(gw: &Served, token: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

/// A streamed chat as the friend's token: its `200` body, whole.
async fn stream_chat(gw: &Served) -> String {
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("gw-friend-Tok1")
        .json(&json!({"model": "gpt-4o-mini", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

fn attempts(line: &Value) -> Vec<(String, Value)> {
    line["attempts"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|a| {
                    let result = if a["status"].is_null() {
                        a["error"].clone()
                    } else {
                        a["status"].clone()
                    };
                    (a["upstream"].as_str().unwrap().to_owned(), result)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_is_failed_over_before_the_client_sees_anything() {
    for (failure, says) in [
        (Act::Status(500, vec![]), json!(500)),
        (Act::Status(502, vec![]), json!(502)),
        (Act::Status(503, vec![]), json!(503)),
        (Act::Reset, json!("upstream_error")),
        (Act::Silent, json!("upstream_timeout")),
    ] {
        let a = Scripted::start(vec![failure.clone()]).await;
        let b = Scripted::start(vec![Act::Answer]).await;
        let dir = TempDir::new();
        let file = pool(&[("a", a.url(), 0, json!({})), ("b", b.url(), 1, json!({}))]);
        let gw = gateway(&dir, &file, &Clock::system()).await;
        let (status, _, body) = chat(&gw, "gw-friend-Tok1").await;
        assert_eq!(status, 200, "{failure:?}: {body}");
        assert_eq!(body["choices"][0]["message"]["content"], "hi");
        let line = &gw.wait_access_lines(1).await[0];
        assert_eq!(line["upstream"], "b", "{line}");
        assert_eq!(
            attempts(line),
            [("a".to_owned(), says.clone()), ("b".to_owned(), json!(200))],
            "{failure:?}"
        );
        assert_eq!(
            line["usage"]["input"], 3,
            "the answer that came back is metered"
        );
        // Each upstream got its own key and the same body; never the token.
        let (sent_a, sent_b) = (a.seen(), b.seen());
        assert_eq!(sent_a[0].authorization.as_deref(), Some("Bearer sk-pool-a"));
        assert_eq!(sent_b[0].authorization.as_deref(), Some("Bearer sk-pool-b"));
        assert_eq!(sent_a[0].body, sent_b[0].body);
        assert!(!sent_b[0].body.is_empty());
        assert_eq!(sent_b[0].target, "/v1/chat/completions");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_mistake_is_its_answer_and_is_not_retried() {
    let (_a, b, gw, _dir) = two(
        vec![Act::Status(400, vec![])],
        vec![Act::Answer],
        &Clock::system(),
    )
    .await;
    let (status, _, body) = chat(&gw, "gw-friend-Tok1").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["message"], "scripted 400");
    assert_eq!(b.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_upstream_rests_as_long_as_it_asked() {
    let a = Scripted::start(vec![
        Act::Status(429, vec![("retry-after", "20")]),
        Act::Answer,
    ])
    .await;
    let b = Scripted::start(vec![Act::Answer]).await;
    let dir = TempDir::new();
    let clock = Clock::manual(chrono::Utc::now());
    let file = pool(&[("a", a.url(), 0, json!({})), ("b", b.url(), 1, json!({}))]);
    let gw = gateway(&dir, &file, &clock).await;
    assert_eq!(chat(&gw, "gw-friend-Tok1").await.0, 200);
    assert_eq!((a.count(), b.count()), (1, 1));
    // Resting: straight to b, a not even asked.
    clock.advance(chrono::Duration::seconds(19));
    assert_eq!(chat(&gw, "gw-friend-Tok1").await.0, 200);
    assert_eq!((a.count(), b.count()), (1, 2));
    let line = &gw.wait_access_lines(2).await[1];
    assert_eq!(attempts(line), [("b".to_owned(), json!(200))], "{line}");
    // Rested: a again.
    clock.advance(chrono::Duration::seconds(1));
    assert_eq!(chat(&gw, "gw-friend-Tok1").await.0, 200);
    assert_eq!((a.count(), b.count()), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_is_never_tried_again_and_never_shown() {
    let clock = Clock::manual(chrono::Utc::now());
    let (a, b, gw, _dir) = two(vec![Act::Status(401, vec![])], vec![Act::Answer], &clock).await;
    for _ in 0..3 {
        assert_eq!(chat(&gw, "gw-friend-Tok1").await.0, 200);
        clock.advance(chrono::Duration::hours(2));
    }
    assert_eq!(a.count(), 1, "a dead key is not tried again");
    assert_eq!(b.count(), 3);
    let lines = gw.wait_access_lines(3).await;
    assert!(!format!("{lines:?}").contains("sk-pool"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holders_own_key_gets_its_own_rate_limit_and_refusal() {
    // The token's own key: its 429 and 401 are its holder's, passed on as
    // they came, and do not rest or kill the upstream for anyone else.
    for failure in [
        Act::Status(429, vec![("retry-after", "20")]),
        Act::Status(401, vec![]),
    ] {
        let a = Scripted::start(vec![failure.clone(), Act::Answer]).await;
        let b = Scripted::start(vec![Act::Answer]).await;
        let dir = TempDir::new();
        let file = pool(&[("a", a.url(), 0, json!({})), ("b", b.url(), 1, json!({}))]);
        let gw = gateway(&dir, &file, &Clock::system()).await;
        let (status, _, body) = chat(&gw, "gw-own-Tok2").await;
        assert!(
            status == 429 || status == 401,
            "{failure:?}: {status} {body}"
        );
        assert_eq!(b.count(), 0, "{failure:?}");
        assert_eq!(
            a.seen()[0].authorization.as_deref(),
            Some("Bearer sk-holders-own")
        );
        // Everyone else still gets a.
        assert_eq!(chat(&gw, "gw-friend-Tok1").await.0, 200);
        assert_eq!((a.count(), b.count()), (2, 0), "{failure:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_skips_a_failing_upstream_then_lets_one_probe_through() {
    let clock = Clock::manual(chrono::Utc::now());
    let (a, b, gw, _dir) = two(vec![Act::Status(500, vec![])], vec![Act::Answer], &clock).await;
    // Five failures within 30 s open it (the documented defaults).
    for _ in 0..5 {
        assert_eq!(chat(&gw, "gw-friend-Tok1").await.0, 200);
    }
    assert_eq!(a.count(), 5);
    for _ in 0..3 {
        assert_eq!(chat(&gw, "gw-friend-Tok1").await.0, 200);
    }
    assert_eq!(a.count(), 5, "open: a is skipped");
    // After the 30 s cool-down, one probe; it fails, and a is skipped again.
    clock.advance(chrono::Duration::seconds(30));
    assert_eq!(chat(&gw, "gw-friend-Tok1").await.0, 200);
    assert_eq!(chat(&gw, "gw-friend-Tok1").await.0, 200);
    assert_eq!(a.count(), 6);
    assert_eq!(b.count(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_upstream_is_out_the_client_gets_503_with_the_soonest_retry() {
    let a = Scripted::start(vec![Act::Status(429, vec![("retry-after", "40")])]).await;
    let b = Scripted::start(vec![Act::Status(429, vec![("retry-after", "25")])]).await;
    let dir = TempDir::new();
    let file = pool(&[("a", a.url(), 0, json!({})), ("b", b.url(), 1, json!({}))]);
    let clock = Clock::manual(chrono::Utc::now());
    let gw = gateway(&dir, &file, &clock).await;
    // Both rate-limit the first request: it gets the last answer, as sent.
    let (status, headers, body) = chat(&gw, "gw-friend-Tok1").await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (429, Some("scripted 429"))
    );
    assert_eq!(headers["retry-after"], "25");
    // Both resting: the gateway answers itself.
    clock.advance(chrono::Duration::seconds(5));
    let (status, headers, body) = chat(&gw, "gw-friend-Tok1").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "upstreams_unavailable");
    assert_eq!(headers["retry-after"], "20", "b rests the least");
    assert_eq!((a.count(), b.count()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_bounded_and_the_last_answer_is_the_clients() {
    let scripted = futures_util::future::join_all(
        (0..4).map(|_| Scripted::start(vec![Act::Status(503, vec![])])),
    )
    .await;
    let dir = TempDir::new();
    let names = ["a", "b", "c", "d"];
    let entries: Vec<_> = names
        .iter()
        .zip(&scripted)
        .enumerate()
        .map(|(i, (n, s))| (*n, s.url(), i as u32, json!({})))
        .collect();
    let gw = gateway(&dir, &pool(&entries), &Clock::system()).await;
    let (status, _, body) = chat(&gw, "gw-friend-Tok1").await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (503, Some("scripted 503"))
    );
    let counts: Vec<usize> = scripted.iter().map(Scripted::count).collect();
    assert_eq!(counts, [1, 1, 1, 0], "UPSTREAM_MAX_ATTEMPTS defaults to 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_a_tokens_upstreams_choose_where_a_request_may_go() {
    let a = Scripted::start(vec![Act::Answer]).await;
    let b = Scripted::start(vec![Act::Answer]).await;
    let dir = TempDir::new();
    let file = pool(&[
        ("a", a.url(), 0, json!({"models": ["gpt-4o-mini"]})),
        ("b", b.url(), 1, json!({"models": ["gpt-4o*", "o3"]})),
    ]);
    let gw = gateway(&dir, &file, &Clock::system()).await;
    assert_eq!(chat(&gw, "gw-friend-Tok1").await.0, 200);
    assert_eq!((a.count(), b.count()), (1, 0));
    // A token limited to b goes to b.
    assert_eq!(chat(&gw, "gw-onlyb-Tok3").await.0, 200);
    assert_eq!((a.count(), b.count()), (1, 1));
    // A model nobody serves: 404, as OpenAI answers an unknown model.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("gw-friend-Tok1")
        .json(&json!({"model": "llama-3", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["param"], "model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_upstream_gets_its_deployment_path_version_and_api_key() {
    let az = Scripted::start(vec![Act::Answer]).await;
    let dir = TempDir::new();
    let file = pool(&[(
        "az",
        format!("{}/tenant", az.url()),
        0,
        json!({"kind": "azure", "api_version": "2024-10-21",
               "models": [{"model": "gpt-4o-mini", "as": "mini-prod"}]}),
    )]);
    let gw = pooled(&dir, &file, PLAIN_TOKENS).serve().await;
    assert_eq!(chat(&gw, "gw-friend-Tok1").await.0, 200);
    let seen = &az.seen()[0];
    assert_eq!(
        seen.target,
        "/tenant/openai/deployments/mini-prod/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(seen.api_key.as_deref(), Some("sk-pool-az"));
    assert_eq!(
        seen.authorization, None,
        "Azure takes the key in api-key only"
    );
}

#[tokio::test]
async fn start_up_refuses_a_bad_pool_naming_what_is_wrong() {
    let dir = TempDir::new();
    let refused = |env: Vec<(&str, String)>, tokens: &str| {
        let mut launch = Launch::new("unused").tokens(tokens);
        launch.env = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        async move {
            match launch.try_serve().await {
                Ok(_) => panic!("started"),
                Err(error) => error.to_string(),
            }
        }
    };
    let good = dir.write(
        "good.json",
        r#"[{"name": "a", "base_url": "http://127.0.0.1:9", "key": "sk-never-printed"}]"#,
    );
    let both = refused(
        vec![
            ("UPSTREAMS_FILE", good.display().to_string()),
            ("UPSTREAM_URL", "http://127.0.0.1:9".into()),
        ],
        TOKENS,
    )
    .await;
    assert!(
        both.contains("UPSTREAMS_FILE") && both.contains("UPSTREAM_URL"),
        "{both}"
    );
    // The pool from SSM excludes the file and the single upstream alike
    // (refused before any SSM call).
    for (other, value) in [
        ("UPSTREAMS_FILE", good.display().to_string()),
        ("UPSTREAM_URL", "http://127.0.0.1:9".into()),
    ] {
        let both = refused(
            vec![
                ("UPSTREAMS_SSM_PARAMETER", "/gw/upstreams".into()),
                (other, value),
            ],
            TOKENS,
        )
        .await;
        assert!(
            both.contains("UPSTREAMS_SSM_PARAMETER") && both.contains(other),
            "{both}"
        );
    }
    let bad = dir.write(
        "bad.json",
        r#"[{"name": "a", "base_url": "http://127.0.0.1:9", "key": "sk-never-printed", "wieght": 2}]"#,
    );
    let message = refused(vec![("UPSTREAMS_FILE", bad.display().to_string())], TOKENS).await;
    assert!(
        message.contains("entry 0 (a)") && message.contains("wieght"),
        "{message}"
    );
    assert!(!message.contains("sk-never"), "{message}");
    let unknown = refused(
        vec![("UPSTREAMS_FILE", good.display().to_string())],
        r#"[{"name": "n", "token": "t", "upstreams": ["nope"]}]"#,
    )
    .await;
    assert!(unknown.contains("`nope`"), "{unknown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_a_pool_names_its_one_upstream_and_lists_no_attempts() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(PLAIN_TOKENS).serve().await;
    let r = fetch(&gw, "/v1/models?token=gw-friend-Tok1").await;
    assert_eq!(r.status(), 200);
    let line = &gw.wait_access_lines(1).await[0];
    assert_eq!(line["upstream"], "default");
    assert!(line["attempts"].is_null(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_before_its_first_token_fails_over_unseen() {
    for (then, says) in [
        (Then::Reset, "stream_broke_before_output"),
        (Then::End, "stream_ended_before_output"),
        (Then::Silent, "stream_stalled_before_output"),
    ] {
        // a: `200`, a role-only chunk, then the failure; b: a whole stream.
        let a = Scripted::start(vec![Act::Stream(vec![ROLE], then)]).await;
        // (b's keep-alive comment, as OpenRouter sends, goes through untouched.)
        let b = Scripted::start(vec![Act::Stream(
            vec![COMMENT, ROLE, TOKEN, DONE],
            Then::End,
        )])
        .await;
        let dir = TempDir::new();
        let file = pool(&[("a", a.url(), 0, json!({})), ("b", b.url(), 1, json!({}))]);
        let gw = pooled(&dir, &file, TOKENS)
            .env("UPSTREAM_FIRST_TOKEN_TIMEOUT_SECS", "1")
            .serve()
            .await;
        let body = stream_chat(&gw).await;
        // b's stream, whole, and only b's (the gateway's usage request
        // added, its usage chunk hidden: nothing of a's).
        assert_eq!(body, [COMMENT, ROLE, TOKEN, DONE].concat(), "{then:?}");
        let line = &gw.wait_access_lines(1).await[0];
        assert_eq!(
            attempts(line),
            [("a".to_owned(), json!(says)), ("b".to_owned(), json!(200))],
            "{then:?}: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_token_went_out_nothing_is_retried_and_the_cut_is_told() {
    let a = Scripted::start(vec![Act::Stream(vec![ROLE, TOKEN], Then::Reset)]).await;
    let b = Scripted::start(vec![Act::Stream(vec![ROLE, TOKEN, DONE], Then::End)]).await;
    let dir = TempDir::new();
    let file = pool(&[("a", a.url(), 0, json!({})), ("b", b.url(), 1, json!({}))]);
    let gw = gateway(&dir, &file, &Clock::system()).await;
    let body = stream_chat(&gw).await;
    let cut = std::str::from_utf8(chatgpt_gateway::completion::CUT_STREAM_EVENT).unwrap();
    assert_eq!(body, [ROLE, TOKEN, cut].concat());
    assert_eq!(b.count(), 0, "a byte reached the client: no retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counts_each_upstreams_attempts_and_failovers() {
    let up = MockUpstream::start().await;
    let dead = unused_port();
    let file = pool(&[
        ("down", format!("http://127.0.0.1:{dead}"), 0, json!({})),
        ("mock", up.url(), 1, json!({})),
    ]);
    let port = unused_port();
    let dir = TempDir::new();
    let gw = pooled(&dir, &file, PLAIN_TOKENS)
        .env("METRICS_LISTEN", &format!("127.0.0.1:{port}"))
        .start();
    for _ in 0..2 {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth("gw-friend-Tok1")
            .json(&json!({"model": "gpt-4o-mini", "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    gw.wait_access_lines(2);
    let text = client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "chatgpt_gateway_upstream_attempts_total{upstream=\"down\",result=\"upstream_unreachable\"} 2",
        "chatgpt_gateway_upstream_attempts_total{upstream=\"mock\",result=\"200\"} 2",
        "chatgpt_gateway_upstream_failovers_total{upstream=\"down\"} 2",
        "chatgpt_gateway_upstream_up{upstream=\"mock\"} 1",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
    assert!(!text.contains("sk-pool"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sees_each_upstreams_state_and_nobody_else_does() {
    let a = Scripted::start(vec![Act::Status(429, vec![("retry-after", "20")])]).await;
    let b = Scripted::start(vec![Act::Answer]).await;
    let dir = TempDir::new();
    let file = pool(&[
        ("a", a.url(), 0, json!({})),
        ("b", b.url(), 1, json!({"models": ["gpt-4o*"]})),
    ]);
    let clock = Clock::manual(chrono::Utc::now());
    let tokens = r#"[{"name": "friend", "token": "gw-friend-Tok1"},
                     {"name": "ops", "token": "gw-ops-Tok9", "admin": true}]"#;
    let gw = pooled(&dir, &file, tokens).clock(&clock).serve().await;
    assert_eq!(chat(&gw, "gw-friend-Tok1").await.0, 200);
    let report = |auth: Option<&'static str>, query: &'static str| {
        let request = client().get(gw.url(&format!("/v1/gateway/upstreams{query}")));
        let request = match auth {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let (status, body) = report(Some("gw-ops-Tok9"), "").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("sk-"), "never a key: {body}");
    let shown: Value = serde_json::from_str(&body).unwrap();
    let data = shown["data"].as_array().unwrap();
    assert_eq!(data[0]["name"], "a");
    assert_eq!(data[0]["state"], "resting");
    assert_eq!(data[0]["failures"], 1);
    assert!(data[0]["until"].is_string());
    assert_eq!(
        (data[1]["name"].as_str(), data[1]["state"].as_str()),
        (Some("b"), Some("ok"))
    );
    assert_eq!(data[1]["models"], json!(["gpt-4o*"]));
    // Rested: ok again.
    clock.advance(chrono::Duration::seconds(21));
    let (_, body) = report(Some("gw-ops-Tok9"), "").await;
    assert!(
        body.contains(r#""name":"a""#) && !body.contains("resting"),
        "{body}"
    );
    // Not an admin: 403; an admin token in the query: 401.
    let (status, body) = report(Some("gw-friend-Tok1"), "").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin_only"));
    let (status, body) = report(None, "?token=gw-ops-Tok9").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("admin_token_in_query"));
    // Answered by the gateway: neither upstream saw any of it.
    assert_eq!((a.count(), b.count()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_fails_over_but_does_not_kill_the_key() {
    // OpenAI's 403 may be one model's or one region's, not the key's.
    let (a, b, gw, _dir) = two(
        vec![Act::Status(403, vec![])],
        vec![Act::Answer],
        &Clock::system(),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(chat(&gw, "gw-friend-Tok1").await.0, 200);
    }
    assert_eq!((a.count(), b.count()), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_is_always_tried_and_its_answers_passed_on() {
    // Nothing to fail over to: no breaker, no rest, the upstream's own
    // answers (as before pools existed).
    let up = Scripted::start(vec![
        Act::Status(500, vec![]),
        Act::Status(500, vec![]),
        Act::Status(500, vec![]),
        Act::Status(500, vec![]),
        Act::Status(500, vec![]),
        Act::Status(429, vec![("retry-after", "60")]),
        Act::Status(401, vec![]),
        Act::Answer,
    ])
    .await;
    let gw = Launch::new(&up.url())
        .tokens(PLAIN_TOKENS)
        .env("UPSTREAM_API_KEY", "sk-the-one")
        .serve()
        .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(chat(&gw, "gw-friend-Tok1").await.0);
    }
    assert_eq!(statuses, [500, 500, 500, 500, 500, 429, 401, 200]);
    assert_eq!(up.count(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_refuses_stream_options_gets_the_body_as_sent() {
    // a refuses `stream_options` (and fails this time); b takes the
    // gateway's `include_usage`. Each gets the body its entry says.
    let a = Scripted::start(vec![
        Act::Status(503, vec![]),
        Act::Stream(vec![ROLE, TOKEN, DONE], Then::End),
    ])
    .await;
    let b = Scripted::start(vec![Act::Stream(vec![ROLE, TOKEN, DONE], Then::End)]).await;
    let dir = TempDir::new();
    let file = pool(&[
        (
            "a",
            a.url(),
            0,
            json!({"kind": "openai-compatible", "inject_include_usage": false}),
        ),
        ("b", b.url(), 1, json!({})),
    ]);
    let gw = gateway(&dir, &file, &Clock::system()).await;
    assert_eq!(stream_chat(&gw).await, [ROLE, TOKEN, DONE].concat());
    let (to_a, to_b) = (a.seen()[0].body.clone(), b.seen()[0].body.clone());
    assert!(
        !String::from_utf8_lossy(&to_a).contains("stream_options"),
        "{to_a:?}"
    );
    assert!(String::from_utf8_lossy(&to_b).contains(r#""stream_options":{"include_usage":true}"#));
    // Served by a: no usage came back, so it is estimated, and said so.
    assert_eq!(stream_chat(&gw).await, [ROLE, TOKEN, DONE].concat());
    let lines = gw.wait_access_lines(2).await;
    assert_eq!(lines[1]["upstream"], "a", "{lines:?}");
    assert_eq!(lines[1]["usage"]["estimated"], true, "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_store_names_the_upstream_that_answered() {
    use chatgpt_gateway::spend::sqlite::Sqlite;
    use chatgpt_gateway::spend::store::{Period, Store};
    // The first request fails over from a to b; the second is a's.
    let (_a, _b, gw, _dir) = two(
        vec![Act::Status(500, vec![]), Act::Answer],
        vec![Act::Answer],
        &Clock::system(),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(chat(&gw, "gw-friend-Tok1").await.0, 200);
    }
    // The gateway's own report waits for what it has yet to write.
    let billing = client()
        .get(gw.url("/v1/dashboard/billing/usage"))
        .bearer_auth("gw-friend-Tok1")
        .send()
        .await
        .unwrap();
    assert_eq!(billing.status(), 200);
    let store = Sqlite::reader(gw.dir.0.join("usage.db").to_str().unwrap()).unwrap();
    let all = Period::Days("0001-01-01".into(), "9999-12-31".into());
    let rows = store.report(all, Some("friend".into())).await.unwrap();
    let seen: Vec<(&str, &str, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.model.as_str(),
                r.upstream.as_str(),
                r.requests,
                r.input_tokens,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("gpt-4o-mini", "a", 1, 3), ("gpt-4o-mini", "b", 1, 3)],
        "the failed attempt on a is not a's usage; each answer is its upstream's"
    );
}
