//! The mock OpenAI upstream as a program, for the SDK suites (`tests/compat`)
//! and `scripts/bench`: the same mock the Rust suites start in-process
//! (`tests/it/common/mock.rs`). Usage: `mock_upstream PORT`; it prints
//! `mock listening on PORT` once it accepts connections.

#[path = "../tests/it/common/mock.rs"]
#[allow(dead_code)]
mod mock;

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the mock's port");
    let upstream = mock::MockUpstream::on(listener);
    println!("mock listening on {}", upstream.addr.port());
    std::future::pending::<()>().await;
}
