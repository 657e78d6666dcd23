//! The upstream connections (`src/pool.rs`): kept alive and reused, never
//! reused once a response was cut, and never used once the upstream closed
//! them. HTTP/2 over TLS is in `tls.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKENS: &str = r#"{"tokens": [{"name": "t", "token": "pool-Token"}]}"#;

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(TOKENS).serve().await;
    // One client connection, so one gateway worker and its pool.
    let client = client();
    let get = |path: &str| client.get(gw.url(path)).send();
    for _ in 0..3 {
        let r = get("/v1/models?token=pool-Token").await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("\"object\":\"list\""));
    }
    // A streamed (chunked) body gives its connection back at its end too.
    let r = get("/v1/sse?n=3&gap_ms=5&token=pool-Token").await.unwrap();
    let (body, broke) = read_stream(r, Duration::from_secs(5)).await;
    assert!(!broke);
    assert_eq!(String::from_utf8_lossy(&body).matches("data: ").count(), 4);
    // So does a HEAD's empty body.
    let r = client
        .head(gw.url("/v1/models?token=pool-Token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..3 {
        assert_eq!(
            get("/v1/models?token=pool-Token").await.unwrap().status(),
            200
        );
    }
    assert_eq!(up.count(), 8);
    assert_eq!(up.connections(), 1, "every request used the one connection");
}

#[tokio::test]
async fn a_connection_whose_response_was_cut_is_not_reused() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(TOKENS).serve().await;
    let client = client();
    assert_eq!(
        client
            .get(gw.url("/v1/models?token=pool-Token"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // A download the client walks away from after its first chunk.
    let r = client
        .get(gw.url("/v1/download?bytes=50000000&token=pool-Token"))
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    assert!(stream.next().await.unwrap().is_ok());
    drop(stream);
    // The upstream stops sending: the gateway closed that connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while up.live_downloads() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the download kept going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next request is served, on a connection of its own.
    let r = client
        .get(gw.url("/v1/models?token=pool-Token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.connections(), 2, "the cut connection was not reused");
}

/// An HTTP/1.1 upstream that answers one request per connection with
/// `Connection: keep-alive`, then closes the connection 50 ms later, the
/// way a server with a short keep-alive timeout does. Returns its URL and
/// its count of connections.
async fn closing_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"object":"list","data":[]}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: keep-alive\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_used() {
    let (url, accepted) = closing_upstream().await;
    let gw = Launch::new(&url).tokens(TOKENS).serve().await;
    let client = client();
    for round in 1..=3 {
        let r = client
            .get(gw.url("/v1/models?token=pool-Token"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "round {round}");
        assert_eq!(r.text().await.unwrap(), r#"{"object":"list","data":[]}"#);
        // The upstream closes its side while the connection is idle.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}
