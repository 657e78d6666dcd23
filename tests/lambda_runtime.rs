//! Lambda mode against a Runtime API of our own: the real binary asks it for
//! events and posts responses to it, as it does on Lambda. The fake API can
//! fail a `/response` post by dropping the connection, which is what Lambda's
//! does when the client of a streamed response goes away.

mod common;

use std::time::{Duration, Instant};

use common::runtime::*;
use common::*;

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
