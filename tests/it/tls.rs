//! TLS to the upstream: the bundled roots, and `UPSTREAM_CA_FILE` for a CA
//! of one's own, against `openssl s_server` with a certificate from a CA
//! made here; and HTTP/2, when the upstream's TLS offers it, against
//! hyper's HTTP/2 server over rustls.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const TOKENS: &str = r#"{"tokens": [{"name": "t", "token": "tls-Token"}]}"#;

fn openssl(dir: &TempDir, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(&dir.0)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a certificate for `localhost` it signed.
fn certificates(dir: &TempDir) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=gateway test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    dir.write("ext.cnf", "subjectAltName=DNS:localhost\n");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

#[tokio::test]
async fn a_ca_of_ones_own_is_trusted_only_when_named() {
    if !needs(Tool::Openssl) {
        return;
    }
    let dir = TempDir::new();
    certificates(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &port.to_string(),
            "-cert",
            "server.pem",
            "-key",
            "server.key",
            "-www",
            "-quiet",
        ])
        .current_dir(&dir.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let upstream = format!("https://localhost:{port}");
    let status = |gw: &Served| {
        let url = gw.url("/v1/models?token=tls-Token");
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };
    // The bundled roots do not know this CA: the upstream is refused.
    let strict = Launch::new(&upstream).tokens(TOKENS).serve().await;
    assert_eq!(status(&strict).await, 502);
    // Named in UPSTREAM_CA_FILE, it is trusted.
    let ca = dir.0.join("ca.pem");
    let trusting = Launch::new(&upstream)
        .tokens(TOKENS)
        .env("UPSTREAM_CA_FILE", ca.to_str().unwrap())
        .serve()
        .await;
    assert_eq!(status(&trusting).await, 200);
    // A file that holds no certificate stops start-up, naming the setting.
    let junk = dir.write("junk.pem", "not a certificate\n");
    let refused = Launch::new(&upstream)
        .tokens(TOKENS)
        .env("UPSTREAM_CA_FILE", junk.to_str().unwrap())
        .try_serve()
        .await
        .err()
        .expect("a CA file without certificates must not start")
        .to_string();
    assert!(refused.contains("UPSTREAM_CA_FILE"), "{refused}");
    let _ = server.kill();
    let _ = server.wait();
}

/// What the HTTP/2 upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    version: http::Version,
    authority: Option<String>,
    target: String,
    host: Option<String>,
    connection_headers: usize,
}

/// An HTTPS upstream that offers only `h2` in ALPN: a model list, or for
/// `/v1/sse` three events 20 ms apart. Returns its port, what it saw, and
/// its count of TLS connections.
async fn h2_upstream(
    dir: &TempDir,
) -> (
    u16,
    std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let certs = CertificateDer::pem_file_iter(dir.0.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.0.join("server.key")).unwrap();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider.into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (log, count) = (seen.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, log) = (acceptor.clone(), log.clone());
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let hop = ["connection", "keep-alive", "transfer-encoding", "upgrade"];
                            log.lock().unwrap().push(Seen {
                                version: req.version(),
                                authority: req.uri().authority().map(|a| a.to_string()),
                                target: req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                host: req
                                    .headers()
                                    .get("host")
                                    .map(|h| h.to_str().unwrap().to_owned()),
                                connection_headers: hop
                                    .iter()
                                    .filter(|h| req.headers().contains_key(**h))
                                    .count(),
                            });
                            let response = if req.uri().path().ends_with("/v1/sse") {
                                let events = futures_util::stream::unfold(0, |n| async move {
                                    if n == 3 {
                                        return None;
                                    }
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                    let frame = hyper::body::Frame::data(bytes::Bytes::from(
                                        format!("data: {n}\n\n"),
                                    ));
                                    Some((Ok::<_, std::convert::Infallible>(frame), n + 1))
                                });
                                http::Response::builder()
                                    .header("content-type", "text/event-stream")
                                    .body(http_body_util::BodyExt::boxed(
                                        http_body_util::StreamBody::new(events),
                                    ))
                            } else {
                                http::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(http_body_util::BodyExt::boxed(
                                        http_body_util::Full::new(bytes::Bytes::from_static(
                                            br#"{"object":"list","data":[]}"#,
                                        )),
                                    ))
                            };
                            Ok::<_, std::convert::Infallible>(response.unwrap())
                        }
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
            });
        }
    });
    (port, seen, connections)
}

#[tokio::test]
async fn an_http2_upstream_is_spoken_to_over_one_shared_connection() {
    if !needs(Tool::Openssl) {
        return;
    }
    use futures_util::StreamExt;
    use std::sync::atomic::Ordering;
    let dir = TempDir::new();
    certificates(&dir);
    let (port, seen, connections) = h2_upstream(&dir).await;
    let ca = dir.0.join("ca.pem");
    let gw = Launch::new(&format!("https://localhost:{port}/base"))
        .tokens(TOKENS)
        .env("UPSTREAM_CA_FILE", ca.to_str().unwrap())
        .serve()
        .await;
    // One client connection, so one gateway worker and its pool.
    let client = client();
    for _ in 0..3 {
        let r = client
            .get(gw.url("/v1/models?a=1&token=tls-Token"))
            .header("connection", "keep-alive")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), r#"{"object":"list","data":[]}"#);
    }
    // A stream arrives event by event, over the same connection.
    let r = client
        .get(gw.url("/v1/sse?token=tls-Token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut events = r.bytes_stream();
    let mut got = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the stream stalled")
    {
        let chunk = chunk.unwrap();
        assert!(chunk.ends_with(b"\n\n"), "one event per chunk: {chunk:?}");
        got.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(got, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "four requests, one connection"
    );
    // Concurrent requests are multiplexed (one client connection each, so
    // spread over the gateway's two workers, each with its own pool).
    let many = futures_util::future::join_all((0..6).map(|_| async {
        crate::common::client()
            .get(gw.url("/v1/models?token=tls-Token"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }))
    .await;
    assert_eq!(many, [200; 6]);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 10);
    for s in &seen {
        assert_eq!(s.version, http::Version::HTTP_2, "{s:?}");
        assert_eq!(
            s.authority.as_deref(),
            Some(format!("localhost:{port}").as_str()),
            "{s:?}"
        );
        assert_eq!(s.host, None, "HTTP/2 carries the host in :authority: {s:?}");
        assert_eq!(s.connection_headers, 0, "{s:?}");
    }
    assert_eq!(seen[0].target, "/base/v1/models?a=1");
    assert_eq!(seen[3].target, "/base/v1/sse");
}
