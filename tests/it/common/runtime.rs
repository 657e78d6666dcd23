//! A Lambda Runtime API of our own: it hands the real binary Function URL
//! events and keeps the responses it posts, as Lambda does. It can also fail
//! a `/response` post by dropping the connection, which is what Lambda's
//! does when the client of a streamed response goes away.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// The event every invocation gets: a Function URL `GET /v1/models?token=gw-example-token`.
pub const EVENT: &str = include_str!("../../../events/function-url-get-models.json");

/// What the fake Runtime API does with a posted response.
#[derive(Clone, Copy)]
pub enum Post {
    /// Drop the connection without answering.
    Fail,
    /// Keep the body and answer 202.
    Accept,
}

/// Accepted responses: (request id, body).
pub type Accepted = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

pub struct RuntimeApi {
    pub addr: SocketAddr,
    /// The bodies of accepted responses, by request id.
    pub accepted: Accepted,
    /// How many `/next` calls were answered.
    pub served: Arc<Mutex<usize>>,
}

/// A Runtime API that hands out `events` invocations (then waits forever on
/// `/next`) and treats the response to invocation `i` as `posts(i)` says.
pub async fn runtime_api(events: usize, posts: fn(usize) -> Post) -> RuntimeApi {
    runtime_api_with(events, |_| EVENT.to_owned(), posts).await
}

/// Like [`runtime_api`], with `event(i)` as invocation `i`'s event (from 1).
pub async fn runtime_api_with(
    events: usize,
    event: fn(usize) -> String,
    posts: fn(usize) -> Post,
) -> RuntimeApi {
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
                    async move { answer(req, events, event, posts, keep, count).await }
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
    event: fn(usize) -> String,
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
            .body(Full::new(Bytes::from(event(n))))
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
