//! The metrics listener: `GET /metrics` (Prometheus text) and `GET /healthz`.

use std::convert::Infallible;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use super::{accept, HEADER_READ_TIMEOUT};
use crate::gateway::Gateway;

/// Serves `GET /metrics` (Prometheus text) and `GET /healthz` on the
/// metrics listener: never the public one, and no token needed.
///
/// It shares the main listener's accept loop, so a failing `accept` (out of
/// file descriptors) backs off instead of spinning.
pub async fn serve_metrics(listener: TcpListener, handle: PrometheusHandle, gateway: Gateway) {
    accept(&listener, std::future::pending(), |stream| {
        let (handle, gateway) = (handle.clone(), gateway.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<Incoming>| {
                let (handle, gateway) = (handle.clone(), gateway.clone());
                async move {
                    let (status, kind, body) = match (request.method(), request.uri().path()) {
                        (&http::Method::GET, "/metrics") => (
                            200,
                            "text/plain; version=0.0.4; charset=utf-8",
                            handle.render(),
                        ),
                        (&http::Method::GET, "/healthz") => {
                            let (ok, body) = gateway.health().await;
                            (
                                if ok { 200 } else { 503 },
                                "application/json",
                                body.to_string(),
                            )
                        }
                        _ => (
                            404,
                            "text/plain",
                            "not found: GET /metrics or /healthz\n".into(),
                        ),
                    };
                    let response = http::Response::builder()
                        .status(status)
                        .header(http::header::CONTENT_TYPE, kind)
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                        .expect("a valid response");
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    })
    .await;
}
