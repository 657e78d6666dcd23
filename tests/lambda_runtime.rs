//! Lambda mode against a Runtime API of our own: the real binary asks it for
//! events and posts responses to it, as it does on Lambda. The fake API can
//! fail a `/response` post by dropping the connection, which is what Lambda's
//! does when the client of a streamed response goes away.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const EVENT: &str = include_str!("../events/function-url-get-models.json");

/// What the fake Runtime API does with a posted response.
#[derive(Clone, Copy)]
enum Post {
    /// Drop the connection without answering.
    Fail,
    /// Keep the body and answer 202.
    Accept,
}

/// Accepted responses: (request id, body).
type Accepted = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

struct RuntimeApi {
    addr: SocketAddr,
    /// The bodies of accepted responses, by request id.
    accepted: Accepted,
    /// How many `/next` calls were answered.
    served: Arc<Mutex<usize>>,
}

/// A Runtime API that hands out `events` invocations (then waits forever on
/// `/next`) and treats the response to invocation `i` as `posts(i)` says.
async fn runtime_api(events: usize, posts: fn(usize) -> Post) -> RuntimeApi {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let served = Arc::new(Mutex::new(0usize));
    let (keep, count) = (accepted.clone(), served.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (keep, count) = (keep.clone(), count.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<Incoming>| {
                    let (keep, count) = (keep.clone(), count.clone());
                    async move { answer(req, events, posts, keep, count).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    RuntimeApi {
        addr,
        accepted,
        served,
    }
}

type Answer = Result<hyper::Response<Full<Bytes>>, std::io::Error>;

async fn answer(
    req: hyper::Request<Incoming>,
    events: usize,
    posts: fn(usize) -> Post,
    keep: Accepted,
    count: Arc<Mutex<usize>>,
) -> Answer {
    let path = req.uri().path().to_owned();
    if path.ends_with("/invocation/next") {
        let n = {
            let mut count = count.lock().unwrap();
            *count += 1;
            *count
        };
        if n > events {
            std::future::pending::<()>().await;
        }
        let deadline = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            + 60_000;
        return Ok(hyper::Response::builder()
            .header("lambda-runtime-aws-request-id", format!("req-{n}"))
            .header("lambda-runtime-deadline-ms", deadline.to_string())
            .header(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:gw",
            )
            .body(Full::new(Bytes::from_static(EVENT.as_bytes())))
            .unwrap());
    }
    if let Some(id) = path
        .strip_suffix("/response")
        .and_then(|p| p.rsplit('/').next())
    {
        let n: usize = id.trim_start_matches("req-").parse().unwrap();
        match posts(n) {
            // An error from the service makes hyper drop the connection unanswered.
            Post::Fail => return Err(std::io::Error::other("runtime API drops the post")),
            Post::Accept => {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                keep.lock().unwrap().push((id.to_owned(), body.to_vec()));
                return Ok(hyper::Response::builder()
                    .status(202)
                    .body(Full::new(Bytes::new()))
                    .unwrap());
            }
        }
    }
    Ok(hyper::Response::builder()
        .status(404)
        .body(Full::new(Bytes::new()))
        .unwrap())
}

fn lambda(api: &RuntimeApi, upstream: &MockUpstream) -> GatewayProc {
    Launch::new(&upstream.url())
        .tokens(include_str!("../events/tokens.json"))
        .env("AWS_LAMBDA_RUNTIME_API", &api.addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "gw")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .start_lambda()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_response_post_resumes_the_loop_and_the_next_event_is_served() {
    let up = MockUpstream::start().await;
    let api = runtime_api(2, |n| if n == 1 { Post::Fail } else { Post::Accept }).await;
    let mut gw = lambda(&api, &up);
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.accepted.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the second event was never answered:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let accepted = api.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 1);
    let (id, body) = &accepted[0];
    assert_eq!(id, "req-2");
    // A streamed response: the JSON prelude, eight NULs, then the upstream's body.
    let text = String::from_utf8_lossy(body);
    assert!(text.contains("\"statusCode\":200"), "{text}");
    assert!(text.contains("\"object\":\"list\""), "{text}");
    assert!(
        gw.log_text()
            .contains("Lambda runtime loop failed; resuming"),
        "{}",
        gw.log_text()
    );
    // The warm-up's HEAD, then both events' GETs.
    let methods: Vec<String> = up
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(
        methods,
        ["HEAD", "GET", "GET"],
        "both events reached the upstream"
    );
    assert!(gw.child.try_wait().unwrap().is_none(), "the process exited");
    // Both invocations are in the access log, each once.
    let lines = gw.wait_access_lines(2);
    let ids: Vec<_> = lines.iter().map(|l| l["request_id"].clone()).collect();
    assert_eq!(ids, ["req-1", "req-2"], "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_api_that_keeps_failing_ends_the_process() {
    let up = MockUpstream::start().await;
    let api = runtime_api(usize::MAX, |_| Post::Fail).await;
    let mut gw = lambda(&api, &up);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(1));
    // Five failures in a row, each within the steady period: resumed four times.
    assert_eq!(*api.served.lock().unwrap(), 5);
    let logs = gw.log_text();
    assert_eq!(logs.matches("resuming").count(), 4, "{logs}");
    assert!(logs.contains("the Lambda runtime stopped"), "{logs}");
}
