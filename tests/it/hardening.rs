//! Hardening: upstream faults, hostile requests, and secret canaries. Each
//! case gets its documented answer and the gateway goes on serving. The
//! gateway is served in this process, but for the canaries, which read the
//! real binary's logs; the 20,000-request load is in `slow.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use chatgpt_gateway::completion::CUT_STREAM_EVENT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TOKENS: &str = r#"[{"name": "h", "token": "hard-Tok-1"}, {"name": "h2", "token": "hard-Tok-2"},
    {"name": "old", "token": "hard-Old-3", "expires": "2020-01-01T00:00:00Z"}]"#;

/// What a healthy upstream answers in these tests.
const HEALTHY: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"ok\":true}";

/// An upstream that behaves badly once: `script` runs on the first accepted
/// connection, and every later one gets a healthy answer, so a test can
/// check that the gateway recovers from the fault.
async fn bad_upstream<F, Fut>(script: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_faulty(listener, script);
    addr
}

fn serve_faulty<F, Fut>(listener: TcpListener, script: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let script = std::sync::Arc::new(script);
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            if std::mem::take(&mut first) {
                let script = script.clone();
                tokio::spawn(async move { script(stream).await });
            } else {
                tokio::spawn(async move {
                    read_head(&mut stream).await;
                    let _ = stream.write_all(HEALTHY).await;
                });
            }
        }
    });
}

/// A healthy upstream on `addr` (a port that was refusing connections).
async fn healthy_on(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).await.unwrap();
    serve_faulty(listener, |mut s| async move {
        read_head(&mut s).await;
        let _ = s.write_all(HEALTHY).await;
    });
}

/// Reads a request head (enough for the fault to begin after it).
async fn read_head(stream: &mut tokio::net::TcpStream) {
    let mut buf = vec![0u8; 16384];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

async fn get(gw: &impl Target, path: &str) -> (u16, String) {
    let r = client().get(gw.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// The gateway, pointed at `upstream`, with short timeouts so faults resolve fast.
async fn gateway_for(upstream: SocketAddr) -> Served {
    Launch::new(&format!("http://{upstream}"))
        .tokens(TOKENS)
        .env("UPSTREAM_TIMEOUT_SECS", "1")
        .env("UPSTREAM_IDLE_TIMEOUT_SECS", "1")
        .env("UPSTREAM_CONNECT_TIMEOUT_SECS", "1")
        .serve()
        .await
}

/// After a fault, the same gateway serves the now healthy upstream.
async fn still_serving(gw: &Served) {
    let (status, body) = get(gw, "/v1/models?token=hard-Tok-1").await;
    assert_eq!((status, body.as_str()), (200, "{\"ok\":true}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_get_their_documented_answers() {
    // Refuses the connection.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = gateway_for(closed).await;
    let (status, body) = get(&gw, "/v1/models?token=hard-Tok-1").await;
    assert_eq!(status, 502);
    assert!(body.contains("upstream_unreachable"), "{body}");
    healthy_on(closed).await;
    still_serving(&gw).await;

    // Accepts, then never answers.
    let silent = bad_upstream(|mut s| async move {
        read_head(&mut s).await;
        std::future::pending::<()>().await;
    })
    .await;
    let gw = gateway_for(silent).await;
    let (status, body) = get(&gw, "/v1/models?token=hard-Tok-1").await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("upstream_timeout"));
    still_serving(&gw).await;

    // Malformed HTTP.
    let garbage = bad_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HELLO THERE\r\nthis is not http\r\n\r\n")
            .await;
    })
    .await;
    let gw = gateway_for(garbage).await;
    let (status, body) = get(&gw, "/v1/models?token=hard-Tok-1").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upstream_error"), "{body}");
    still_serving(&gw).await;

    // An enormous header (2 MB).
    let huge = bad_upstream(|mut s| async move {
        read_head(&mut s).await;
        let mut head = b"HTTP/1.1 200 OK\r\nX-Huge: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 2 << 20));
        head.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\n{}");
        let _ = s.write_all(&head).await;
    })
    .await;
    let gw = gateway_for(huge).await;
    let (status, body) = get(&gw, "/v1/models?token=hard-Tok-1").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upstream_error"), "{body}");
    still_serving(&gw).await;
}

/// Serves a chunked SSE head and one event, then runs `after`.
async fn streaming_then<F, Fut>(after: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    bad_upstream(move |mut s| async move {
        read_head(&mut s).await;
        let event = b"data: {\"n\":1}\n\n";
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            event.len()
        );
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(event).await;
        let _ = s.write_all(b"\r\n").await;
        let _ = s.flush().await;
        after(s).await;
    })
    .await
}

async fn stream_outcome(gw: &Served) -> (Vec<u8>, bool) {
    let r = client()
        .get(gw.url("/v1/chat?token=hard-Tok-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Ten times the idle timeout: a stream never cut is a "stream hung" failure.
    read_stream(r, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_stalls_and_resets_end_the_stream_promptly() {
    // Headers and one event, then silence until the gateway hangs up: it
    // cuts both sides after the 1 s idle timeout (how long exactly is the
    // unit test's, on tokio's paused clock: body::tests).
    let hung_up: &'static tokio::sync::Notify = Box::leak(Box::default());
    let stall = streaming_then(move |mut s| async move {
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            let _ = n;
        }
        hung_up.notify_one();
    })
    .await;
    let gw = gateway_for(stall).await;
    let (got, broke) = stream_outcome(&gw).await;
    let cut = [b"data: {\"n\":1}\n\n".as_slice(), CUT_STREAM_EVENT].concat();
    assert_eq!(
        got, cut,
        "a cut stream ends with an error event, never [DONE]"
    );
    assert!(!broke);
    tokio::time::timeout(Duration::from_secs(10), hung_up.notified())
        .await
        .expect("the gateway closes the silent upstream's connection");
    let lines = gw.wait_access_lines(1).await;
    assert_eq!(lines[0]["outcome"], "upstream_stream_error", "{lines:?}");
    still_serving(&gw).await;

    // Headers and one event, then a TCP reset.
    let reset = streaming_then(|s| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // SO_LINGER 0: close with RST rather than FIN.
        s.set_zero_linger().unwrap();
        drop(s);
    })
    .await;
    let gw = gateway_for(reset).await;
    let (got, broke) = stream_outcome(&gw).await;
    assert_eq!(got, cut);
    assert!(!broke);
    let lines = gw.wait_access_lines(1).await;
    assert_eq!(lines[0]["outcome"], "upstream_stream_error", "{lines:?}");
    still_serving(&gw).await;
}

async fn raw_status(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let answer = raw(addr, request).await;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_a_clear_4xx_or_a_faithful_forward() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(TOKENS).serve().await;
    let get_req = |target: &str, extra: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: gw\r\n{extra}Connection: close\r\n\r\n")
            .into_bytes()
    };

    // Oversized header and URI.
    let (status, _) = raw_status(
        gw.addr,
        &get_req(
            "/v1/models?token=hard-Tok-1",
            &format!("X-Big: {}\r\n", "a".repeat(1 << 20)),
        ),
    )
    .await;
    assert_eq!(status, 431);
    let long_uri = format!("/v1/models?token=hard-Tok-1&q={}", "a".repeat(1 << 20));
    let (status, _) = raw_status(gw.addr, &get_req(&long_uri, "")).await;
    assert!(matches!(status, 414 | 431 | 400), "{status}");

    // Invalid UTF-8 raw in the path: refused by the HTTP parser.
    let bad =
        b"GET /v1/\xff\xfe?token=hard-Tok-1 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";
    let (status, _) = raw_status(gw.addr, bad).await;
    assert_eq!(status, 400);

    // Percent-encoded invalid UTF-8 and bad percent-encoding: forwarded as sent.
    for target in ["/v1/%FF%FE?x=%C0%AF", "/v1/files/%zz?q=%G1&r=%"] {
        let with_token = format!("{target}&token=hard-Tok-1");
        let (status, answer) = raw_status(gw.addr, &get_req(&with_token, "")).await;
        assert_eq!(status, 200, "{target}: {answer}");
        assert_eq!(up.last().target, target);
    }

    // CR/LF in the query: raw ones break the request line (400); encoded ones are forwarded.
    let (status, _) = raw_status(
        gw.addr,
        b"GET /v1/models?token=hard-Tok-1&a=1\rX: y HTTP/1.1\r\nHost: gw\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = raw_status(
        gw.addr,
        &get_req("/v1/models?a=%0D%0AX-Evil:%201&token=hard-Tok-1", ""),
    )
    .await;
    assert_eq!(status, 200);
    let seen = up.last();
    assert_eq!(seen.target, "/v1/models?a=%0D%0AX-Evil:%201");
    assert_eq!(seen.header("x-evil"), None);

    // 10,000 query parameters, kept in order less the token.
    // (Bare keys keep the URI under the 64 KB that HTTP libraries accept.)
    let params: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
    let query = params.join("&");
    let r = client()
        .get(gw.url(&format!("/v1/models?{query}&token=hard-Tok-1")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().target, format!("/v1/models?{query}"));

    // Duplicate token parameters; a token in both the query and a header.
    assert_eq!(
        get(&gw, "/v1/models?token=hard-Tok-1&token=hard-Tok-1")
            .await
            .0,
        200
    );
    let (status, body) = get(&gw, "/v1/models?token=hard-Tok-1&token=hard-Tok-2").await;
    assert_eq!(status, 400);
    assert!(
        body.contains("conflicting_tokens") && !body.contains("hard-Tok"),
        "{body}"
    );
    let r = client()
        .get(gw.url("/v1/models?token=hard-Tok-1"))
        .header("x-token", "hard-Tok-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client()
        .get(gw.url("/v1/models?token=hard-Tok-1"))
        .header("x-token", "hard-Tok-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().header("x-token"), None);

    // Absolute-form and authority tricks: never another host.
    let before = up.count();
    for target in [
        "http://evil.example/v1/models?token=hard-Tok-1",
        "http://hard-Tok-1@evil.example:81/v1/models?token=hard-Tok-1",
        "https://evil.example:443/v1/models?token=hard-Tok-1",
    ] {
        let (status, answer) = raw_status(gw.addr, &get_req(target, "")).await;
        assert_eq!(status, 200, "{target}: {answer}");
        let seen = up.last();
        assert_eq!(seen.target, "/v1/models");
        assert_eq!(seen.header("host"), Some(up.addr.to_string()));
    }
    assert_eq!(up.count(), before + 3);
    for connect in [
        &b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"[..],
        // Origin-form, with a valid token: still never sent upstream.
        b"CONNECT /v1/models?token=hard-Tok-1 HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let (status, answer) = raw_status(gw.addr, connect).await;
        assert_eq!(status, 405, "{answer}");
        assert!(answer.contains("method_not_allowed"), "{answer}");
    }
    assert_eq!(up.count(), before + 3, "CONNECT reached the upstream");

    // Still serving after all of it.
    assert_eq!(get(&gw, "/v1/models?token=hard-Tok-1").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_canaries_never_leak() {
    let up = MockUpstream::start().await;
    let tokens = r#"[{"name": "canary-user", "token": "CANARY-GATEWAY-TOKEN-7c1f"},
                     {"name": "canary-keyed", "token": "CANARY-GATEWAY-TOKEN-KEYED-2b9e", "upstream_key": "CANARY-ENTRY-KEY-55aa"}]"#;
    let gw = Launch::new(&up.url())
        .tokens(tokens)
        .env("UPSTREAM_API_KEY", "CANARY-UPSTREAM-KEY-9d0c")
        .start();
    let c = client();
    let mut answers = String::new();
    let calls = [
        (
            "/v1/models?token=CANARY-GATEWAY-TOKEN-7c1f",
            Some("CANARY-CLIENT-KEY-3e4d"),
            None,
        ),
        ("/v1/models", Some("CANARY-GATEWAY-TOKEN-KEYED-2b9e"), None),
        ("/v1/models", None, Some("CANARY-GATEWAY-TOKEN-7c1f")),
        (
            "/v1/status/500?token=CANARY-GATEWAY-TOKEN-7c1f",
            Some("CANARY-CLIENT-KEY-3e4d"),
            None,
        ),
        (
            "/v1/models?token=CANARY-WRONG-TOKEN-0000",
            Some("CANARY-CLIENT-KEY-3e4d"),
            None,
        ),
        (
            "/v1/models?token=CANARY-GATEWAY-TOKEN-7c1f&token=CANARY-WRONG-TOKEN-0000",
            None,
            None,
        ),
        ("/v1/../x?token=CANARY-GATEWAY-TOKEN-7c1f", None, None),
        (
            "/v1/sse?n=2&gap_ms=1&token=CANARY-GATEWAY-TOKEN-7c1f",
            None,
            None,
        ),
    ];
    for (path, bearer, x_token) in calls {
        let mut req = c.get(gw.url(path));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(t) = x_token {
            req = req.header("x-token", t);
        }
        let r = req.send().await.unwrap();
        answers.push_str(&format!("{:?}\n", r.headers()));
        answers.push_str(&r.text().await.unwrap());
    }
    let (status, answer) = raw_status(gw.addr, b"GET /v1/models?token=CANARY-GATEWAY-TOKEN-7c1f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 200);
    answers.push_str(&answer);
    let lines = gw.wait_access_lines(calls.len() + 1);
    assert_eq!(lines.len(), calls.len() + 1, "one access line per request");
    let logs = gw.log_text();
    let upstream: String = up
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            let headers: Vec<String> = r
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v)))
                .collect();
            format!(
                "{} {}\n{}\n{}\n",
                r.method,
                r.target,
                headers.join("\n"),
                String::from_utf8_lossy(&r.body)
            )
        })
        .collect();
    assert!(
        upstream.contains("CANARY-UPSTREAM-KEY-9d0c") && upstream.contains("CANARY-ENTRY-KEY-55aa"),
        "the keys were injected"
    );
    for token in [
        "CANARY-GATEWAY-TOKEN-7c1f",
        "CANARY-GATEWAY-TOKEN-KEYED-2b9e",
        "CANARY-WRONG-TOKEN-0000",
    ] {
        assert!(
            !upstream.contains(token),
            "{token} went upstream:\n{upstream}"
        );
        assert!(!logs.contains(token), "{token} in logs");
        assert!(!answers.contains(token), "{token} in a response");
    }
    for key in ["CANARY-UPSTREAM-KEY-9d0c", "CANARY-ENTRY-KEY-55aa"] {
        assert!(!logs.contains(key), "{key} in logs");
        assert!(!answers.contains(key), "{key} in a response");
    }
    // The client's own key is replaced by the injected one, so it never goes upstream either.
    assert!(
        !upstream.contains("CANARY-CLIENT-KEY-3e4d") && !logs.contains("CANARY-CLIENT-KEY-3e4d")
    );
}

/// Sends `extra` header lines with a valid `?token=` and returns the status,
/// the error code, and what the upstream saw as Authorization.
async fn with_authorization(
    gw: &Served,
    up: &MockUpstream,
    values: &[&str],
) -> (u16, String, Option<String>) {
    let before = up.count();
    let headers: String = values
        .iter()
        .map(|v| format!("Authorization: {v}\r\n"))
        .collect();
    let request = format!(
        "GET /v1/models?token=hard-Tok-1 HTTP/1.1\r\nHost: gw\r\n{headers}Connection: close\r\n\r\n"
    );
    let (status, answer) = raw_status(gw.addr, request.as_bytes()).await;
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let seen = (up.count() > before)
        .then(|| up.last().header("authorization"))
        .flatten();
    (status, code, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authorization_header_is_checked() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(TOKENS).serve().await;
    // Two Authorization headers: refused, and nothing goes upstream.
    let before = up.count();
    for pair in [
        ["Bearer sk-client-own", "Bearer hard-Tok-2"],
        ["Bearer hard-Tok-1", "Bearer hard-Tok-1"],
        ["Bearer sk-a", "Bearer sk-b"],
    ] {
        let (status, code, _) = with_authorization(&gw, &up, &pair).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "multiple_authorization_headers"),
            "{pair:?}"
        );
    }
    assert_eq!(up.count(), before);
    // Another user's token (valid or expired) in any scheme or spacing: two identities.
    for value in [
        "Bearer hard-Tok-2",
        "Token hard-Tok-2",
        "Bearer\thard-Tok-2",
        "hard-Tok-2",
        "Bearer hard-Old-3",
    ] {
        let (status, code, _) = with_authorization(&gw, &up, &[value]).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "conflicting_tokens"),
            "{value}"
        );
    }
    assert_eq!(
        up.count(),
        before,
        "a conflicting request reached the upstream"
    );
    // The same token again, in any form: stripped, never forwarded.
    for value in ["Token hard-Tok-1", "Bearer\thard-Tok-1", "hard-Tok-1"] {
        let (status, _, seen) = with_authorization(&gw, &up, &[value]).await;
        assert_eq!((status, seen), (200, None), "{value}");
    }
    // The client's own key in any scheme goes on as sent.
    let (status, _, seen) = with_authorization(&gw, &up, &["Token sk-client-own"]).await;
    assert_eq!(
        (status, seen.as_deref()),
        (200, Some("Token sk-client-own"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_the_upstream_released() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url())
        .tokens(TOKENS)
        .env("CLIENT_IDLE_TIMEOUT_SECS", "2")
        .serve()
        .await;
    // Five 100 MB downloads that are never read.
    let mut sockets = Vec::new();
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(
            b"GET /v1/download?bytes=100000000&token=hard-Tok-1 HTTP/1.1\r\nHost: gw\r\n\r\n",
        )
        .await
        .unwrap();
        sockets.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.live_downloads() < 5 {
        assert!(Instant::now() < deadline, "the downloads did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Cut off after the client idle timeout, and the upstream's bodies go with them.
    let deadline = Instant::now() + Duration::from_secs(15);
    while up.live_downloads() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} upstream downloads still held by clients that read nothing",
            up.live_downloads()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = gw.wait_access_lines(5).await;
    assert!(
        lines.iter().all(|l| l["outcome"] == "client_closed"),
        "{lines:?}"
    );
    drop(sockets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upload_gets_408_from_the_client_idle_timeout() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url())
        .tokens(TOKENS)
        .env("CLIENT_IDLE_TIMEOUT_SECS", "1")
        .serve()
        .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /v1/upload?token=hard-Tok-1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("}}") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("no answer to a silent upload")
            .unwrap();
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_framing_errors_are_blamed_on_the_client() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(TOKENS).serve().await;
    let chunked = |body: &str| {
        format!(
            "POST /v1/echo?token=hard-Tok-1 HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}"
        )
    };
    for (what, body) in [
        ("a size that is not hex", "zz\r\nhello\r\n0\r\n\r\n"),
        ("a 0x prefix", "0x5\r\nhello\r\n0\r\n\r\n"),
        (
            "an overflowing size",
            "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("more data than declared", "5\r\nhelloEXTRA\r\n0\r\n\r\n"),
    ] {
        let (status, answer) = raw_status(gw.addr, chunked(body).as_bytes()).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert!(answer.contains("invalid_request_body"), "{what}: {answer}");
    }
    let lines = gw.wait_access_lines(4).await;
    assert!(
        lines
            .iter()
            .all(|l| l["error_code"] == "invalid_request_body"),
        "{lines:?}"
    );
    // What reached the upstream of them (the bytes before the fault) never
    // arrived as a complete request: the upstream's connection broke first.
    assert!(
        up.requests.lock().unwrap().iter().all(|r| !r.complete),
        "a broken body reached the upstream as a whole request"
    );
    // A well-formed chunked body still goes through whole.
    let (status, answer) = raw_status(gw.addr, chunked("5\r\nhello\r\n0\r\n\r\n").as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(up.last().body, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_length_beside_chunked_framing_does_not_cut_the_body() {
    let upstream = bad_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .await;
    })
    .await;
    let gw = gateway_for(upstream).await;
    let (status, body) = get(&gw, "/v1/models?token=hard-Tok-1").await;
    assert_eq!((status, body.as_str()), (200, "hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_protocol_switch_is_a_clear_502() {
    let upstream = bad_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            .await;
        std::future::pending::<()>().await;
    })
    .await;
    let gw = gateway_for(upstream).await;
    let (status, body) = get(&gw, "/v1/realtime?token=hard-Tok-1").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upgrade_not_supported"), "{body}");
    still_serving(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_head_bodies_follow_one_rule_whatever_the_framing() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(TOKENS).serve().await;
    let before = up.count();
    for (method, framing) in [
        ("GET", "Content-Length: 5\r\n\r\nhello"),
        (
            "GET",
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        ("HEAD", "Content-Length: 5\r\n\r\nhello"),
        (
            "HEAD",
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
    ] {
        let request = format!(
            "{method} /v1/models?token=hard-Tok-1 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{framing}"
        );
        let (status, answer) = raw_status(gw.addr, request.as_bytes()).await;
        assert_eq!(status, 400, "{method} {framing}: {answer}");
        if method == "GET" {
            assert!(answer.contains("invalid_request_body"), "{answer}");
        }
    }
    assert_eq!(
        up.count(),
        before,
        "a GET or HEAD body reached the upstream"
    );
    // Empty bodies, in either framing, are no body.
    for framing in [
        "Content-Length: 0\r\n\r\n",
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let request = format!(
            "GET /v1/models?token=hard-Tok-1 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{framing}"
        );
        let (status, answer) = raw_status(gw.addr, request.as_bytes()).await;
        assert_eq!(status, 200, "{framing}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_log_lines_quote_the_path_so_it_cannot_forge_fields() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url())
        .tokens(TOKENS)
        .env("LOG_FORMAT", "text")
        .start();
    let forged = "/v1/x\"status=999\"token=h2";
    let request =
        format!("GET {forged}?token=hard-Tok-1 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    let (status, answer) = raw_status(gw.addr, request.as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let text = gw.log_text();
        if let Some(line) = text.lines().find(|l| l.contains(" request ")) {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no access line:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        line.contains(r#"path="/v1/x\"status=999\"token=h2""#),
        "the path must be quoted and escaped: {line}"
    );
    assert!(
        line.contains("status=200") && line.contains(r#"token="h""#),
        "{line}"
    );
}

// ---------------------------------------------------------------------------
// No input reaches a panic, and one request's panic is that request's (#28).

/// The endpoints the gateway answers itself, with any query: a 2xx or a
/// 4xx, never a 5xx (a caught panic is a 500), and the process lives.
#[test]
fn the_gateways_own_endpoints_answer_any_query_with_a_2xx_or_4xx() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let port = unused_port();
    let (up, gw) = runtime.block_on(async {
        let up = MockUpstream::start().await;
        let gw = Launch::new(&up.url())
            .tokens(r#"{"tokens": [{"name": "p", "token": "prop-Tok-1", "expires": "2099-01-01T00:00:00Z",
                "limits": {"usd_per_month": 5, "tokens_per_day": 1000}}]}"#)
            .env("METRICS_LISTEN", &format!("127.0.0.1:{port}"))
            .start();
        (up, gw)
    });
    let paths = [
        "/v1/gateway/usage",
        "/v1/dashboard/billing/usage",
        "/dashboard/billing/usage",
        "/v1/dashboard/billing/subscription",
        "/dashboard/billing/subscription",
    ];
    let date = prop_oneof![
        // chrono's edges: the dates whose arithmetic overflowed before.
        Just("-262143-01-01".to_owned()),
        Just("+262142-12-31".to_owned()),
        Just("-262144-01-01".to_owned()),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}",
        "[-+]?[0-9]{1,7}-[0-9]{1,3}-[0-9]{1,3}",
        "[ -~]{0,16}",
    ];
    let query = prop_oneof![
        (date.clone(), date).prop_map(|(a, b)| format!("start_date={a}&end_date={b}")),
        "[ -~]{0,60}",
        "(start_date|end_date|token|x)=[0-9a-z%-]{0,12}(&(start_date|end_date)=[0-9-]{0,12}){0,3}",
    ];
    let client = client();
    let config = ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(which in 0..paths.len() + 2, query in query)| {
        let query: String = query
            .bytes()
            .map(|b| match b {
                b'#' | b' ' | b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}' => format!("%{b:02X}"),
                _ => char::from(b).to_string(),
            })
            .collect();
        let url = match which {
            i if i < paths.len() => gw.url(&format!("{}?{query}", paths[i])),
            i if i == paths.len() => format!("http://127.0.0.1:{port}/healthz?{query}"),
            _ => format!("http://127.0.0.1:{port}/metrics?{query}"),
        };
        let status = runtime.block_on(async {
            client.get(&url).bearer_auth("prop-Tok-1").send().await.map(|r| r.status().as_u16())
        });
        let status = status.unwrap_or_else(|e| panic!("{url}: no answer ({e}); the gateway died?"));
        prop_assert!((200..500).contains(&status), "{url}: {status}");
    });
    assert_eq!(
        up.count(),
        0,
        "nothing the gateway answers itself is forwarded"
    );
    drop(gw);
}

/// A rule that panics: the gateway's bug, in one request.
struct Panics;

impl chatgpt_gateway::policy::Policy for Panics {
    fn check<'a>(
        &'a self,
        request: &'a mut chatgpt_gateway::policy::Inspect<'_>,
    ) -> chatgpt_gateway::policy::Verdict<'a> {
        Box::pin(async move {
            if request.path.ends_with("/boom") {
                panic!("a bug in a rule");
            }
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_panic_is_one_requests_500_and_its_completion_still_runs() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url())
        .tokens(TOKENS)
        .policy(Panics)
        .serve()
        .await;
    let r = client()
        .get(gw.url("/v1/boom"))
        .bearer_auth("hard-Tok-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal_error", "{body}");
    assert!(body["error"]["message"].is_string());
    // The completion point ran (the access line), and the gateway goes on.
    let lines = gw.wait_access_lines(1).await;
    assert_eq!(lines[0]["status"], 500, "{lines:?}");
    assert_eq!(lines[0]["error_code"], "internal_error");
    let r = client()
        .get(gw.url("/v1/models"))
        .bearer_auth("hard-Tok-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
