//! Benchmark helper (scripts/bench): the parts of the fake upstream nginx cannot
//! serve. `GET /sse?n=N&gap_ms=M` sends N SSE events M ms apart, each stamped
//! with its send time; `POST /upload` reads and discards the body and answers
//! its length. Usage: `bench_upstream PORT`.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn param(query: &str, key: &str, default: u64) -> u64 {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(default)
}

async fn answer(request: Request<Incoming>) -> Response<Body> {
    let query = request.uri().query().unwrap_or("").to_owned();
    if request.uri().path().ends_with("/upload") {
        let mut body = request.into_body();
        let mut length = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            length += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
        return Response::new(Full::new(Bytes::from(format!("{{\"length\":{length}}}"))).boxed());
    }
    let (n, gap) = (
        param(&query, "n", 50),
        Duration::from_millis(param(&query, "gap_ms", 20)),
    );
    let events = futures_util::stream::unfold(0u64, move |i| async move {
        if i > n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros();
        let text = if i == n {
            "data: [DONE]\n\n".to_owned()
        } else {
            format!("data: {{\"i\":{i},\"sent_us\":{now}}}\n\n")
        };
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(text))), i + 1))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(StreamBody::new(events)))
        .unwrap()
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(9901);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|r| async move { Ok::<_, Infallible>(answer(r).await) });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
