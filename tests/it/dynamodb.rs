//! Spend control with the shared store, DynamoDB, against moto's server:
//! the table `usage init` makes, limits that hold across two gateway
//! processes on one table, a budget storm that settles exactly, a store
//! outage and a throttled store in both fail modes, the health check naming
//! a store that does not answer, and the reservation of a killed process
//! expiring.

use std::time::{Duration, Instant};

use crate::common::aws::*;
use crate::common::*;
use aws_sdk_dynamodb::types::TimeToLiveStatus;
use serde_json::{json, Value};

const TOKENS: &str = r#"{"tokens": [
    {"name": "rpm", "token": "tok-rpm", "limits": {"requests_per_minute": 5}},
    {"name": "storm", "token": "tok-storm", "limits": {"tokens_per_day": 40, "requests_per_minute": 1000}},
    {"name": "held", "token": "tok-held", "limits": {"tokens_per_day": 10}},
    {"name": "open", "token": "tok-open"}
]}"#;

fn table() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "gw-usage-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

/// Runs the binary's `usage` command against `endpoint`.
fn usage_command(endpoint: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_chatgpt-gateway"));
    cmd.arg("usage").args(args).env_clear();
    for (k, v) in aws_vars(endpoint) {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn init(table: &str) {
    let out = usage_command(
        &moto().url,
        &["init", "--store", &format!("dynamodb:{table}")],
    );
    assert!(
        out.status.success(),
        "usage init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn report(endpoint: &str, table: &str) -> Vec<Value> {
    let out = usage_command(
        endpoint,
        &["report", "--store", &format!("dynamodb:{table}"), "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn gateway(up: &MockUpstream, endpoint: &str, table: &str) -> Launch {
    aws_env(Launch::new(&up.url()), endpoint)
        .tokens(TOKENS)
        .env("USAGE_STORE", &format!("dynamodb:{table}"))
}

fn chat(max_tokens: Option<u64>) -> String {
    let mut body = json!({"model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello there, how are you today?"}]});
    if let Some(max) = max_tokens {
        body["max_tokens"] = json!(max);
    }
    body.to_string()
}

async fn post(gw: &impl Target, token: &str, body: &str) -> (u16, Option<String>) {
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().map(str::to_owned))
}

/// 20 concurrent chats for `token`, alternating between two gateways.
async fn storm(a: &GatewayProc, b: &GatewayProc, token: &str) -> Vec<(u16, Option<String>)> {
    let body = chat(Some(5));
    futures_util::future::join_all((0..20).map(|i| {
        let (gw, body) = (if i % 2 == 0 { a } else { b }, &body);
        async move { post(gw, token, body).await }
    }))
    .await
}

/// How many answers were 200 (`None`) or refused with `code`.
fn count(answers: &[(u16, Option<String>)], code: Option<&str>) -> usize {
    answers
        .iter()
        .filter(|(status, c)| match code {
            None => *status == 200,
            Some(code) => c.as_deref() == Some(code),
        })
        .count()
}

async fn limits(gw: &impl Target, token: &str) -> Value {
    let r = client()
        .get(gw.url("/v1/gateway/usage"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Waits (up to 10 s) until the table's report counts exactly `requests`
/// for each token named: what waited during an outage is written.
async fn until_reported(table: &str, requests: &[(&str, i64)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = report(&moto().url, table);
        let counted = |token: &str| {
            rows.iter()
                .find(|r| r["token"] == token)
                .and_then(|r| r["requests"].as_i64())
        };
        if requests.iter().all(|(token, n)| counted(token) == Some(*n)) {
            return;
        }
        assert!(Instant::now() < deadline, "want {requests:?}: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// In closed mode with the store out: a limited token is refused as the
/// store being unavailable and never forwarded; a token without limits is
/// served.
async fn refuses_only_limited_tokens(gw: &GatewayProc, up: &MockUpstream) {
    let before = up.count();
    assert_eq!(
        post(gw, "tok-rpm", &chat(Some(5))).await,
        (503, Some("usage_store_unavailable".into()))
    );
    assert_eq!(up.count(), before, "refused, never forwarded");
    assert_eq!(post(gw, "tok-open", &chat(Some(5))).await.0, 200);
}

/// Runs `attempt` again if it straddled two minutes of the system clock
/// (which the gateway processes go by), and returns the result of the
/// attempt that fell inside one minute. Nothing waits: the second attempt
/// starts early in a minute, and an attempt takes seconds, not a minute.
async fn in_one_minute<T, F: std::future::Future<Output = T>>(mut attempt: impl FnMut() -> F) -> T {
    let minute = || chrono::Utc::now().timestamp().div_euclid(60);
    for _ in 0..2 {
        let before = minute();
        let out = attempt().await;
        if minute() == before {
            return out;
        }
    }
    panic!("two attempts in a row straddled a minute: each took a minute or more");
}

#[tokio::test]
async fn usage_init_makes_the_table_the_template_declares() {
    if !needs(Tool::Moto) {
        return;
    }
    let table = table();
    init(&table);
    init(&table); // again: nothing to do, no error
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&moto().url)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let described = client
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    let t = described.table().unwrap();
    let keys: Vec<(String, String)> = t
        .key_schema()
        .iter()
        .map(|k| {
            (
                k.attribute_name().to_owned(),
                k.key_type().as_str().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [("pk".into(), "HASH".into()), ("sk".into(), "RANGE".into())]
    );
    assert_eq!(
        t.billing_mode_summary()
            .and_then(|b| b.billing_mode())
            .map(|b| b.as_str()),
        Some("PAY_PER_REQUEST")
    );
    let ttl = client
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    let ttl = ttl.time_to_live_description().unwrap();
    assert_eq!(ttl.attribute_name(), Some("ttl"));
    assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));
    // The template declares the same key schema and TTL attribute.
    let template = include_str!("../../template.yaml");
    for needle in [
        "AttributeName: pk",
        "AttributeName: sk",
        "KeyType: HASH",
        "KeyType: RANGE",
        "BillingMode: PAY_PER_REQUEST",
        "AttributeName: ttl",
    ] {
        assert!(template.contains(needle), "template.yaml lacks {needle}");
    }
}

#[tokio::test]
async fn two_processes_on_one_table_give_exactly_the_per_minute_limit() {
    if !needs(Tool::Moto) {
        return;
    }
    let up = MockUpstream::start().await;
    let (answers, forwarded) = in_one_minute(|| async {
        let table = table();
        init(&table);
        let a = gateway(&up, &moto().url, &table).start();
        let b = gateway(&up, &moto().url, &table).start();
        let before = up.count();
        let answers = storm(&a, &b, "tok-rpm").await;
        (answers, up.count() - before)
    })
    .await;
    let (ok, limited) = (
        count(&answers, None),
        count(&answers, Some("rate_limit_exceeded")),
    );
    assert_eq!((ok, limited), (5, 15), "{answers:?}");
    assert_eq!(forwarded, 5);
}

#[tokio::test]
async fn a_budget_storm_stays_within_its_bound_and_settles_exactly() {
    if !needs(Tool::Moto) {
        return;
    }
    let up = MockUpstream::start().await;
    let table = table();
    init(&table);
    let a = gateway(&up, &moto().url, &table).start();
    let b = gateway(&up, &moto().url, &table).start();
    let answers = storm(&a, &b, "tok-storm").await;
    let ok = count(&answers, None) as i64;
    let quota = count(&answers, Some("insufficient_quota")) as i64;
    assert_eq!(ok + quota, 20, "{answers:?}");
    assert!(ok >= 1);
    // Settled exactly: 8 tokens a request, nothing left reserved.
    let deadline = Instant::now() + Duration::from_secs(10);
    let day = loop {
        let usage = limits(&a, "tok-storm").await;
        let day = usage["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["limit"] == "tokens_per_day")
            .unwrap()
            .clone();
        if day["reserved"] == 0 {
            break day;
        }
        if Instant::now() > deadline {
            for line in a.log_text().lines().chain(b.log_text().lines()) {
                if line.contains("ERROR")
                    || line.contains("WARN")
                    || line.contains("\"level\":\"ERROR")
                    || line.contains("\"level\":\"WARN")
                {
                    eprintln!("{line}");
                }
            }
            panic!("{usage}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let used = day["used"].as_i64().unwrap();
    assert_eq!(used, 8 * ok, "{day}");
    // Every admission saw less than 40 committed, and a reservation is
    // never below what its request used: at most one request's usage over.
    assert!(used < 40 + 8, "{day}");
    assert_eq!(up.count() as i64, ok);
    let rows = report(&moto().url, &table);
    let row = rows.iter().find(|r| r["token"] == "storm").unwrap();
    assert_eq!(row["requests"].as_i64(), Some(ok), "{rows:?}");
    assert_eq!(row["input_tokens"].as_i64(), Some(3 * ok));
    assert_eq!(row["upstream"], "default", "{rows:?}");
}

#[tokio::test]
async fn an_outage_in_open_mode_serves_and_loses_nothing() {
    if !needs(Tool::Moto) {
        return;
    }
    let up = MockUpstream::start().await;
    let front = Front::start().await;
    let table = table();
    init(&table);
    let gw = gateway(&up, &front.url(), &table).start();
    assert_eq!(post(&gw, "tok-storm", &chat(Some(5))).await.0, 200);
    front.set(FAIL);
    for _ in 0..3 {
        assert_eq!(post(&gw, "tok-storm", &chat(Some(5))).await.0, 200);
    }
    assert!(
        gw.log_text().contains("dynamodb:"),
        "the outage is logged naming the store"
    );
    front.set(PASS);
    // The next request's settlement writes what waited.
    assert_eq!(post(&gw, "tok-open", &chat(Some(5))).await.0, 200);
    until_reported(&table, &[("storm", 4)]).await;
}

#[tokio::test]
async fn an_outage_in_closed_mode_refuses_only_tokens_with_limits() {
    if !needs(Tool::Moto) {
        return;
    }
    let up = MockUpstream::start().await;
    let front = Front::start().await;
    let table = table();
    init(&table);
    let gw = gateway(&up, &front.url(), &table)
        .env("USAGE_FAIL_MODE", "closed")
        .start();
    front.set(FAIL);
    refuses_only_limited_tokens(&gw, &up).await;
    front.set(PASS);
    assert_eq!(post(&gw, "tok-rpm", &chat(Some(5))).await.0, 200);
}

#[tokio::test]
async fn a_throttled_store_is_an_outage_in_closed_mode_and_nothing_is_lost_in_open_mode() {
    if !needs(Tool::Moto) {
        return;
    }
    let up = MockUpstream::start().await;
    let front = Front::start().await;
    let table = table();
    init(&table);
    let closed = gateway(&up, &front.url(), &table)
        .env("USAGE_FAIL_MODE", "closed")
        .start();
    let open = gateway(&up, &front.url(), &table).start();
    // Every DynamoDB call answered "ThrottlingException" (after the SDK's
    // own retries): a limited token is refused as the store being
    // unavailable, never as a gateway failure, and is not forwarded.
    front.set(THROTTLE);
    refuses_only_limited_tokens(&closed, &up).await;
    // Open mode serves through the throttling, and its usage waits.
    for _ in 0..2 {
        assert_eq!(post(&open, "tok-storm", &chat(Some(5))).await.0, 200);
    }
    front.set(PASS);
    assert_eq!(post(&closed, "tok-rpm", &chat(Some(5))).await.0, 200);
    assert_eq!(post(&open, "tok-open", &chat(Some(5))).await.0, 200);
    until_reported(&table, &[("storm", 2), ("rpm", 1)]).await;
}

#[tokio::test]
async fn healthz_names_a_usage_store_that_does_not_answer() {
    if !needs(Tool::Moto) {
        return;
    }
    let up = MockUpstream::start().await;
    let front = Front::start().await;
    let table = table();
    init(&table);
    let port = unused_port();
    let _gw = gateway(&up, &front.url(), &table)
        .env("METRICS_LISTEN", &format!("127.0.0.1:{port}"))
        .start();
    let store = format!("dynamodb:{table}");
    let (status, body) = healthz(port).await;
    assert_eq!((status, &body["status"]), (200, &json!("ok")), "{body}");
    assert_eq!(body["store"], json!(store));
    front.set(FAIL);
    let (status, body) = healthz(port).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(
        body["missing"],
        json!([format!("the usage store {store} does not answer")])
    );
    assert_eq!(body["tokens"], 4, "the token list is still loaded");
    front.set(PASS);
    let (status, body) = healthz(port).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["missing"], json!([]));
}

#[tokio::test]
async fn the_reservation_of_a_killed_process_still_counts() {
    if !needs(Tool::Moto) {
        return;
    }
    let up = MockUpstream::start().await;
    let table = table();
    init(&table);
    let mut a = gateway(&up, &moto().url, &table).start();
    // A slow stream with no max_tokens reserves 1024 tokens, well over the
    // day's 10; a kill -9 leaves that reservation behind.
    let slow = json!({"model": "gpt-4o-mini", "stream": true, "metadata": {"gap": "1"},
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let mut r = client()
        .post(a.url("/v1/chat/completions"))
        .bearer_auth("tok-held")
        .header("content-type", "application/json")
        .body(slow)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.chunk().await.unwrap().unwrap();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let b = gateway(&up, &moto().url, &table).start();
    assert_eq!(
        post(&b, "tok-held", &chat(Some(5))).await,
        (429, Some("insufficient_quota".into())),
        "the dead process's reservation still counts"
    );
    // That it stops counting once it expires is shown, by a clock the
    // test moves, in `a_dead_instances_reservation_counts_until_it_expires`.
}

/// The store of one instance that died holding a reservation, seen from
/// another's: the reservation counts until its expiry, by the arrival time
/// of the request asking, and not after.
#[tokio::test]
async fn a_dead_instances_reservation_counts_until_it_expires() {
    use chatgpt_gateway::spend::dynamodb::Dynamo;
    use chatgpt_gateway::spend::store::{Admission, Ask, Store};
    use chatgpt_gateway::spend::{Amount, Limits};
    if !needs(Tool::Moto) {
        return;
    }
    let table = table();
    init(&table);
    let store = || async {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(moto().url.clone())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .load()
            .await;
        Dynamo::with_client(&table, aws_sdk_dynamodb::Client::new(&config))
    };
    let (dead, alive) = (store().await, store().await);
    let limits = Limits::parse(&json!({"tokens_per_day": 10})).unwrap();
    let t0 = chrono::Utc::now();
    let ask = |id: &str, now: chrono::DateTime<chrono::Utc>, tokens: i64| Ask {
        token: "held".into(),
        limits: limits.clone(),
        reserve: Amount {
            requests: 1,
            tokens,
            usd_micros: 0,
        },
        now,
        expires: now + chrono::Duration::seconds(3),
        id: id.into(),
    };
    // 1024 tokens reserved, well over the day's 10, and never settled.
    let held = dead.admit(ask("dead", t0, 1024)).await.unwrap();
    assert!(matches!(held, Admission::Granted(_)), "{held:?}");
    drop(dead);
    let at = |secs: i64| t0 + chrono::Duration::seconds(secs);
    let refused = alive.admit(ask("a", at(2), 5)).await.unwrap();
    assert!(
        matches!(refused, Admission::Refused(_)),
        "2 s in, the dead reservation still counts: {refused:?}"
    );
    let granted = alive.admit(ask("b", at(3), 5)).await.unwrap();
    assert!(
        matches!(granted, Admission::Granted(_)),
        "at its expiry it no longer counts: {granted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_lambda_a_request_is_settled_before_its_invocation_ends() {
    if !needs(Tool::Moto) {
        return;
    }
    use crate::common::runtime::{runtime_api, Post};
    let up = MockUpstream::start().await;
    // The events' token, limited to two requests a minute.
    let tokens = r#"{"tokens": [{"name": "example", "token": "gw-example-token",
                     "limits": {"requests_per_minute": 2}}]}"#;
    let bodies: Vec<String> = in_one_minute(|| async {
        let table = table();
        init(&table);
        let api = runtime_api(3, |_| Post::Accept).await;
        let gw = aws_env(Launch::new(&up.url()), &moto().url)
            .tokens(tokens)
            .env("USAGE_STORE", &format!("dynamodb:{table}"))
            .env("AWS_LAMBDA_RUNTIME_API", &api.addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "gw")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .start_lambda();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = 0;
        while seen < 3 {
            let accepted = api.accepted.lock().unwrap().len();
            if accepted > seen {
                // The response is posted: the container could be frozen now, so
                // the usage must already be in the table.
                let rows = report(&moto().url, &table);
                let requests = rows
                    .iter()
                    .find(|r| r["token"] == "example")
                    .and_then(|r| r["requests"].as_i64())
                    .unwrap_or(0);
                // (Later invocations may have settled too, meanwhile.)
                assert!(
                    requests >= accepted.min(2) as i64,
                    "after {accepted} responses: {rows:?}\n{}",
                    gw.log_text()
                );
                seen = accepted;
            }
            assert!(Instant::now() < deadline, "{}", gw.log_text());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let bodies = api
            .accepted
            .lock()
            .unwrap()
            .iter()
            .map(|(_, body)| String::from_utf8_lossy(body).into_owned())
            .collect();
        bodies
    })
    .await;
    assert!(bodies[0].contains("\"statusCode\":200"), "{}", bodies[0]);
    assert!(bodies[1].contains("\"statusCode\":200"), "{}", bodies[1]);
    assert!(bodies[2].contains("\"statusCode\":429"), "{}", bodies[2]);
    assert!(bodies[2].contains("rate_limit_exceeded"), "{}", bodies[2]);
}

/// The attacks of #28 on the shared store: an out-of-range count is the
/// request's 400 and limits stay on; an absurd usage from the upstream is
/// capped and the limit holds; a client gone before the answer is charged
/// its reservation.
#[tokio::test]
async fn the_spend_attacks_are_refused_or_billed_on_dynamodb_too() {
    if !needs(Tool::Moto) {
        return;
    }
    let up = MockUpstream::start().await;
    let table = table();
    init(&table);
    let gw = gateway(&up, &moto().url, &table)
        .tokens(
            r#"{"tokens": [
                {"name": "att", "token": "tok-att", "limits": {"tokens_per_day": 1000}},
                {"name": "gone", "token": "tok-gone", "limits": {"tokens_per_day": 1000}}
            ]}"#,
        )
        .start();
    let huge = json!({"model": "gpt-4o-mini", "max_completion_tokens": 16_000_000_000_000_000_000u64,
                      "messages": []});
    assert_eq!(
        post(&gw, "tok-att", &huge.to_string()).await,
        (400, Some("invalid_value".into()))
    );
    let absurd = json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [],
                        "metadata": {"completion_tokens": "9223372036854775808"}});
    assert_eq!(post(&gw, "tok-att", &absurd.to_string()).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let day = limits(&gw, "tok-att").await["limits"][0].clone();
        if day["reserved"] == 0 {
            assert_eq!(day["used"].as_i64(), Some(1 << 53), "capped: {day}");
            break;
        }
        assert!(Instant::now() < deadline, "{day}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        post(&gw, "tok-att", &chat(Some(5))).await,
        (429, Some("insufficient_quota".into()))
    );
    // Gone before the answer: the reservation is what it used.
    let slow = json!({"model": "gpt-4o-mini", "max_tokens": 100, "messages": [],
                      "metadata": {"delay_ms": "2000"}})
    .to_string();
    let sent = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("tok-gone")
        .header("content-type", "application/json")
        .timeout(Duration::from_millis(300))
        .body(slow.clone())
        .send()
        .await;
    assert!(sent.is_err());
    let want = slow.len().div_ceil(4) as i64 + 100;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let day = limits(&gw, "tok-gone").await["limits"][0].clone();
        if day["reserved"] == 0 && day["used"] != 0 {
            assert_eq!(day["used"].as_i64(), Some(want), "{day}");
            break;
        }
        assert!(Instant::now() < deadline, "{day}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        up.count(),
        2,
        "the 400 and the 429 never reached the upstream"
    );
}
