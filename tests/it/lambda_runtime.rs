//! Lambda mode against a Runtime API of our own: the real binary asks it for
//! events and posts responses to it, as it does on Lambda. The fake API can
//! fail a `/response` post by dropping the connection, which is what Lambda's
//! does when the client of a streamed response goes away.

use std::time::{Duration, Instant};

use crate::common::runtime::*;
use crate::common::*;

/// The binary in Lambda mode against `api`, with the events' tokens.
fn lambda_mode(api: &RuntimeApi, upstream: &MockUpstream) -> Launch {
    Launch::new(&upstream.url())
        .tokens(include_str!("../../events/tokens.json"))
        .env("AWS_LAMBDA_RUNTIME_API", &api.addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "gw")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
}

fn lambda(api: &RuntimeApi, upstream: &MockUpstream) -> GatewayProc {
    lambda_mode(api, upstream).start_lambda()
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
    // Both events' GETs; the first on the connection the warm-up opened (it
    // sends no request). The second may need a new one: the failed post
    // drops the first response, and its upstream connection with it when
    // its body had not been read to the end (a matter of timing).
    let seen: Vec<(String, usize)> = up
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| (r.method.clone(), r.connection))
        .collect();
    let methods: Vec<&str> = seen.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(methods, ["GET", "GET"], "both events reached the upstream");
    assert_eq!(seen[0].1, 0, "the warmed-up connection was used");
    assert!(up.connections() <= 2);
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
    let status = gw.exited(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1));
    // Five failures in a row, each within the steady period: resumed four times.
    assert_eq!(*api.served.lock().unwrap(), 5);
    let logs = gw.log_text();
    assert_eq!(logs.matches("resuming").count(), 4, "{logs}");
    assert!(logs.contains("the Lambda runtime stopped"), "{logs}");
}

/// The spec's rules for one EMF document: a millisecond timestamp, and every
/// metric and dimension a directive names present at the root.
fn assert_emf(doc: &serde_json::Value) {
    let aws = &doc["_aws"];
    assert!(
        aws["Timestamp"].as_i64().unwrap() > 1_600_000_000_000,
        "{doc}"
    );
    let directives = aws["CloudWatchMetrics"].as_array().unwrap();
    assert!(!directives.is_empty());
    for directive in directives {
        assert_eq!(directive["Namespace"], "GwTest", "{doc}");
        let metrics = directive["Metrics"].as_array().unwrap();
        assert!(!metrics.is_empty() && metrics.len() <= 100);
        for m in metrics {
            let name = m["Name"].as_str().unwrap();
            assert!(doc[name].is_number(), "{name} has no number in {doc}");
        }
        let sets = directive["Dimensions"].as_array().unwrap();
        assert!(
            sets.iter().any(|s| s.as_array().unwrap().is_empty()),
            "totals exist"
        );
        for set in sets {
            let set = set.as_array().unwrap();
            assert!(set.len() <= 30);
            for d in set {
                assert!(doc[d.as_str().unwrap()].is_string(), "{d} in {doc}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invocation_prints_one_emf_document() {
    use crate::common::runtime::{runtime_api_with, Post};
    let up = MockUpstream::start().await;
    let api = runtime_api_with(
        3,
        |n| match n {
            1 => EVENT.to_owned(),
            2 => include_str!("../../events/function-url-chat-stream.json").to_owned(),
            _ => EVENT.replace("gw-example-token", "gw-not-a-token"),
        },
        |_| Post::Accept,
    )
    .await;
    let gw = lambda_mode(&api, &up)
        .env("METRICS_NAMESPACE", "GwTest")
        .start_lambda();
    let deadline = Instant::now() + Duration::from_secs(10);
    let docs = loop {
        let docs: Vec<serde_json::Value> = gw
            .log_text()
            .lines()
            .filter(|l| l.contains("\"_aws\""))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if docs.len() >= 3 {
            break docs;
        }
        assert!(Instant::now() < deadline, "{}", gw.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Every line the process wrote, read to the end of its pipes.
    let all = gw.all_output().await;
    assert_eq!(
        all.matches("\"_aws\"").count(),
        3,
        "exactly one per request"
    );
    assert!(!all.contains("gw-example-token") && !all.contains("gw-not-a-token"));
    for doc in &docs {
        assert_emf(doc);
        assert_eq!(doc["Requests"], 1);
    }
    let by_id = |id: &str| docs.iter().find(|d| d["request_id"] == id).unwrap();
    let plain = by_id("req-1");
    assert_eq!(
        (plain["status"].as_u64(), plain["Rejected"].as_u64()),
        (Some(200), Some(0))
    );
    assert!(plain["TimeToFirstByte"].is_number());
    assert_eq!(plain["token"], "example");
    let streamed = by_id("req-2");
    assert_eq!(streamed["Model"], "gpt-4o-mini");
    assert_eq!(
        (
            streamed["InputTokens"].as_u64(),
            streamed["OutputTokens"].as_u64()
        ),
        (Some(3), Some(5))
    );
    assert!(streamed["CostUSD"].as_f64().unwrap() > 0.0);
    let usage = streamed["_aws"]["CloudWatchMetrics"][1].clone();
    assert_eq!(usage["Dimensions"], serde_json::json!([[], ["Model"]]));
    let refused = by_id("req-3");
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["code"], "invalid_token");
    assert_eq!(refused["Rejected"], 1);
    assert!(refused.get("TimeToFirstByte").is_none(), "{refused}");
    assert!(refused.get("InputTokens").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_off_prints_no_emf() {
    let up = MockUpstream::start().await;
    let api = runtime_api(1, |_| Post::Accept).await;
    let gw = lambda_mode(&api, &up).env("METRICS", "off").start_lambda();
    let lines = gw.wait_access_lines(1);
    assert_eq!(lines[0]["status"], 200);
    // The EMF line would follow the access line at once: every line the
    // process wrote, read to the end of its pipes, has none.
    let all = gw.all_output().await;
    assert!(!all.contains("\"_aws\""), "{all}");
}

/// The sockets of process `pid` whose peer is `peer`, each with whether
/// `TCP_NODELAY` is set on it. Each socket is duplicated into this process
/// with `pidfd_getfd` (Linux 5.6; the tests run as the child's parent and
/// owner), then read with `getsockopt`.
fn nodelay_of_sockets_to(pid: u32, peer: std::net::SocketAddr) -> Vec<bool> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let is_socket = std::fs::read_link(entry.path())
            .map(|target| target.to_string_lossy().starts_with("socket:"))
            .unwrap_or(false);
        let Ok(target) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if !is_socket {
            continue;
        }
        use std::os::fd::AsRawFd;
        let fd =
            unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) } as i32;
        assert!(fd >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A TCP socket connected to `peer`?
        let socket = std::net::TcpStream::from(fd);
        if socket.peer_addr().ok() == Some(peer) {
            found.push(socket.nodelay().unwrap());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_api_connection_sets_tcp_nodelay() {
    // With Nagle's algorithm on, each write of a streamed response after the
    // first waits for the Runtime API's (delayed) acknowledgement: 40 ms on
    // Linux. lambda_runtime_api_client is patched for it (vendor/README.md).
    let up = MockUpstream::start().await;
    let api = runtime_api(1, |_| Post::Accept).await;
    let gw = lambda(&api, &up);
    let lines = gw.wait_access_lines(1);
    assert_eq!(lines[0]["status"], 200);
    // The function is now waiting on its next `/next`, on the pooled connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sockets = nodelay_of_sockets_to(gw.child.id(), api.addr);
        if !sockets.is_empty() {
            assert!(
                sockets.iter().all(|&on| on),
                "a Runtime API connection without TCP_NODELAY: {sockets:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection to the Runtime API"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
