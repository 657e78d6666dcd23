//! Tokens and the upstream key from SSM Parameter Store, against moto's server
//! (a real SSM API emulator). Between the gateway and moto stands a small
//! counting front, which can also play an SSM outage (throttling or 500s).
//!
//! moto: `MOTO_URL` names a running `moto_server`; otherwise one is started
//! (`pip install 'moto[server]'`; `scripts/test` installs and starts it).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::common::aws::*;
use crate::common::*;

async fn ssm_client(endpoint: &str) -> aws_sdk_ssm::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ssm::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    aws_sdk_ssm::Client::new(&config)
}

async fn put(name: &str, value: &str) {
    ssm_client(&moto().url)
        .await
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .expect("put_parameter on moto");
}

/// Unique parameter names, so tests share one moto without meeting.
fn param(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "/gw-test/{}/{what}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

async fn status_of(gw: &GatewayProc, token: &str) -> (u16, serde_json::Value) {
    let r = client()
        .get(gw.url(&format!("/v1/models?token={token}")))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Polls until `token` gets `want`, up to `within`.
async fn until(gw: &GatewayProc, token: &str, want: u16, within: Duration) {
    let started = Instant::now();
    loop {
        let (status, body) = status_of(gw, token).await;
        if status == want {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{token}: still {status} {body} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_a_secure_string_with_decryption() {
    if !needs(Tool::Moto) {
        return;
    }
    let name = param("tokens");
    put(
        &name,
        r#"{"tokens":[{"name":"alice","token":"ssm-tok-Alice1"}]}"#,
    )
    .await;
    // Without decryption moto answers a kms:-prefixed value, which no parser
    // would accept: so a working gateway proves decryption was asked for.
    let raw = ssm_client(&moto().url)
        .await
        .get_parameter()
        .name(&name)
        .with_decryption(false)
        .send()
        .await
        .unwrap();
    assert!(raw
        .parameter
        .unwrap()
        .value
        .unwrap()
        .starts_with("kms:alias/aws/ssm:"));

    let up = MockUpstream::start().await;
    let gw = aws_env(Launch::new(&up.url()), &moto().url)
        .env("TOKENS_SSM_PARAMETER", &name)
        .start();
    assert_eq!(status_of(&gw, "ssm-tok-Alice1").await.0, 200);
    let (status, body) = status_of(&gw, "ssm-tok-alice1").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );
    assert_eq!(gw.wait_access_lines(2)[0]["token"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_revocation_and_redating_take_effect_within_the_refresh_period() {
    if !needs(Tool::Moto) {
        return;
    }
    let name = param("tokens");
    put(
        &name,
        r#"[{"name":"a","token":"rot-A"},{"name":"c","token":"rot-C"}]"#,
    )
    .await;
    let up = MockUpstream::start().await;
    let front = Front::start().await;
    let gw = aws_env(Launch::new(&up.url()), &front.url())
        .env("TOKENS_SSM_PARAMETER", &name)
        .env("TOKENS_REFRESH_SECS", "1")
        .start();
    assert_eq!(status_of(&gw, "rot-A").await.0, 200, "{}", gw.log_text());
    assert_eq!(status_of(&gw, "rot-B").await.0, 401);
    let loads_before = front.gets();

    // Revoke A, add B, re-date C into the past.
    put(
        &name,
        r#"[{"name":"b","token":"rot-B"},{"name":"c","token":"rot-C","expires":"2020-1-1 0:00"}]"#,
    )
    .await;
    let loads_at_put = front.gets();
    until(&gw, "rot-B", 200, Duration::from_secs(5)).await;
    // The first load after the change serves it (a second, if one was
    // already in flight when the parameter changed): no redeploy, no restart.
    let loads = front.gets() - loads_at_put;
    assert!(
        (1..=2).contains(&loads),
        "{loads} loads before the change served"
    );
    assert_eq!(
        status_of(&gw, "rot-A").await.1["error"]["code"],
        "invalid_token"
    );
    assert_eq!(
        status_of(&gw, "rot-C").await.1["error"]["code"],
        "token_expired"
    );

    // Cost: many requests, at most one GetParameter per refresh period.
    let started = Instant::now();
    let before = front.gets();
    for _ in 0..50 {
        status_of(&gw, "rot-B").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let periods = started.elapsed().as_secs_f64() / 1.0;
    let calls = front.gets() - before;
    assert!(
        f64::from(calls) <= periods.ceil() + 1.0,
        "{calls} GetParameter calls in {periods:.1} refresh periods"
    );
    assert!(loads_before >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssm_down_at_start_gives_503_then_recovers_by_itself() {
    if !needs(Tool::Moto) {
        return;
    }
    let name = param("tokens");
    put(&name, r#"[{"name":"late","token":"late-Tok"}]"#).await;
    let up = MockUpstream::start().await;
    let front = Front::start().await;
    front.set(FAIL);
    let gw = aws_env(Launch::new(&up.url()), &front.url())
        .env("TOKENS_SSM_PARAMETER", &name)
        .env("TOKENS_REFRESH_SECS", "1")
        .start();
    for token in ["late-Tok", ""] {
        let (status, body) = status_of(&gw, token).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("token_store_unavailable")),
            "{token:?}"
        );
        assert_eq!(body["error"]["type"], "gateway_error");
    }
    // Never anonymous: nothing reached the upstream.
    assert_eq!(up.count(), 0);
    front.set(PASS);
    until(&gw, "late-Tok", 200, Duration::from_secs(5)).await;
    // Recovered by itself: the same process, and only the good request went upstream.
    let mut gw = gw;
    assert!(gw.child.try_wait().unwrap().is_none(), "the gateway exited");
    assert_eq!(up.count(), 1);

    // And a gateway whose SSM endpoint refuses connections answers 503 too.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw2 = aws_env(Launch::new(&up.url()), &format!("http://{closed}"))
        .env("TOKENS_SSM_PARAMETER", &name)
        .start();
    assert_eq!(status_of(&gw2, "late-Tok").await.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssm_down_during_refresh_keeps_the_last_good_list() {
    if !needs(Tool::Moto) {
        return;
    }
    let name = param("tokens");
    put(&name, r#"[{"name":"keep","token":"keep-Tok-x"}]"#).await;
    let up = MockUpstream::start().await;
    let front = Front::start().await;
    let gw = aws_env(Launch::new(&up.url()), &front.url())
        .env("TOKENS_SSM_PARAMETER", &name)
        .env("TOKENS_REFRESH_SECS", "1")
        .start();
    assert_eq!(status_of(&gw, "keep-Tok-x").await.0, 200);
    front.set(THROTTLE);
    let failing_since = front.gets();
    for _ in 0..25 {
        assert_eq!(status_of(&gw, "keep-Tok-x").await.0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        front.gets() > failing_since,
        "the gateway never retried SSM"
    );
    let text = gw.log_text();
    assert!(
        text.contains("configuration refresh failed") && text.contains("ThrottlingException"),
        "{text}"
    );
    assert!(
        text.contains(&name) && text.contains("\"keeping_last_good\":true"),
        "{text}"
    );
    front.set(PASS);
    put(&name, r#"[{"name":"next","token":"next-Tok-y"}]"#).await;
    until(&gw, "next-Tok-y", 200, Duration::from_secs(8)).await;
    assert!(!gw.log_text().contains("keep-Tok-x") && !gw.log_text().contains("next-Tok-y"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_value_gives_503_and_an_error_naming_the_entry() {
    if !needs(Tool::Moto) {
        return;
    }
    let name = param("tokens");
    put(&name, r#"[{"name":"fine","token":"fine-Tok"},{"name":"broken","token":"broken-Secret-9","expires":"someday"}]"#).await;
    let up = MockUpstream::start().await;
    let gw = aws_env(Launch::new(&up.url()), &moto().url)
        .env("TOKENS_SSM_PARAMETER", &name)
        .start();
    let (status, body) = status_of(&gw, "fine-Tok").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("token_store_unavailable"))
    );
    let line = gw
        .logs
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("configuration value is malformed"))
        .cloned()
        .expect("an error line about the malformed value");
    assert!(line.contains("\"level\":\"ERROR\""), "{line}");
    assert!(
        line.contains(&name) && line.contains("entry 1 (broken)") && line.contains("expires"),
        "{line}"
    );
    assert!(!gw.log_text().contains("broken-Secret-9"));
    // Fixing the value heals the gateway without a restart.
    put(&name, r#"[{"name":"fine","token":"fine-Tok"}]"#).await;
    until(&gw, "fine-Tok", 200, Duration::from_secs(8)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_key_comes_from_ssm_and_never_shows() {
    if !needs(Tool::Moto) {
        return;
    }
    let tokens = param("tokens");
    let key = param("key");
    put(&tokens, r#"[{"name":"k","token":"key-user-Tok"}]"#).await;
    put(&key, "sk-from-ssm-Key-1\n").await;
    let up = MockUpstream::start().await;
    let gw = aws_env(Launch::new(&up.url()), &moto().url)
        .env("TOKENS_SSM_PARAMETER", &tokens)
        .env("UPSTREAM_API_KEY_SSM_PARAMETER", &key)
        .env("TOKENS_REFRESH_SECS", "1")
        .start();
    let r = client()
        .get(gw.url("/v1/models"))
        .bearer_auth("key-user-Tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().header("authorization").as_deref(),
        Some("Bearer sk-from-ssm-Key-1")
    );
    // Key rotation, too.
    put(&key, "sk-from-ssm-Key-2").await;
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        client()
            .get(gw.url("/v1/models"))
            .bearer_auth("key-user-Tok")
            .send()
            .await
            .unwrap();
        if up.last().header("authorization").as_deref() == Some("Bearer sk-from-ssm-Key-2") {
            break;
        }
        assert!(Instant::now() < deadline, "the rotated key never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = gw.log_text();
    for secret in ["sk-from-ssm-Key", "key-user-Tok"] {
        assert!(!text.contains(secret), "{secret} in logs:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_parameter_is_blamed_on_the_key_not_the_tokens() {
    if !needs(Tool::Moto) {
        return;
    }
    let tokens = param("tokens");
    put(&tokens, r#"[{"name":"k","token":"key-less-Tok"}]"#).await;
    let up = MockUpstream::start().await;
    let gw = aws_env(Launch::new(&up.url()), &moto().url)
        .env("TOKENS_SSM_PARAMETER", &tokens)
        .env(
            "UPSTREAM_API_KEY_SSM_PARAMETER",
            &param("never-written-key"),
        )
        .start();
    let (status, body) = status_of(&gw, "key-less-Tok").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("upstream_key_unavailable")),
        "{body}"
    );
    assert_eq!(up.count(), 0, "nothing goes upstream without the key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_new_push_check_round_trip() {
    if !needs(Tool::Moto) {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_chatgpt-gateway");
    let run = |args: &[&str]| {
        Command::new(bin)
            .args(args)
            .envs(aws_vars(&moto().url))
            .env("OPENAI_KEY_FOR_TEST", "sk-cli-Injected")
            .output()
            .unwrap()
    };
    let made = run(&[
        "tokens",
        "new",
        "--name",
        "dora",
        "--expires",
        "30d",
        "--upstream-key-from-env",
        "OPENAI_KEY_FOR_TEST",
        "--json",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let made: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
    let token = made["token"].as_str().unwrap().to_owned();
    assert!(
        token.len() >= 43
            && token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{token}"
    );
    let entry = &made["entry"];
    assert_eq!(entry["sha256"], sha256_hex(token.as_bytes()));
    assert!(
        entry.get("token").is_none(),
        "the entry stores the digest, not the token"
    );
    assert_eq!(entry["upstream_key"], "sk-cli-Injected");

    let dir = TempDir::new();
    let file = dir.write(
        "tokens.json",
        &serde_json::json!({ "tokens": [entry] }).to_string(),
    );
    let name = param("cli");
    let pushed = run(&[
        "tokens",
        "push",
        "--ssm-parameter",
        &name,
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    assert!(String::from_utf8_lossy(&pushed.stdout).contains("wrote 1 token(s)"));
    let checked = run(&["tokens", "check", "--ssm-parameter", &name]);
    let out = String::from_utf8_lossy(&checked.stdout).into_owned();
    assert!(
        checked.status.success()
            && out.contains("dora")
            && out.contains("valid")
            && out.contains("own key"),
        "{out}"
    );
    assert!(
        !out.contains(&token) && !out.contains("sk-cli-Injected"),
        "{out}"
    );

    // The pushed list is what the gateway serves.
    let up = MockUpstream::start().await;
    let gw = aws_env(Launch::new(&up.url()), &moto().url)
        .env("TOKENS_SSM_PARAMETER", &name)
        .start();
    assert_eq!(status_of(&gw, &token).await.0, 200);
    assert_eq!(
        up.last().header("authorization").as_deref(),
        Some("Bearer sk-cli-Injected")
    );

    // Bad input: a clear message and a non-zero exit, and nothing is written.
    let bad = dir.write(
        "bad.json",
        r#"[{"name":"x","token":"bad-Secret-5","expires":"never"}]"#,
    );
    let refused = run(&[
        "tokens",
        "push",
        "--ssm-parameter",
        &name,
        "--file",
        bad.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        err.contains("bad.json") && err.contains("entry 0 (x)") && !err.contains("bad-Secret-5"),
        "{err}"
    );
    assert!(
        run(&["tokens", "check", "--ssm-parameter", &name])
            .status
            .success(),
        "the good list is still there"
    );
    let missing = run(&[
        "tokens",
        "check",
        "--ssm-parameter",
        "/gw-test/does-not-exist",
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("ParameterNotFound"));
    let expired = run(&["tokens", "new", "--name", "x", "--expires", "yesterday-ish"]);
    assert_eq!(expired.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&expired.stderr).contains("--expires"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_says_503_until_the_token_list_is_loaded() {
    if !needs(Tool::Moto) {
        return;
    }
    let name = param("tokens");
    put(&name, r#"[{"name":"late","token":"late-Tok"}]"#).await;
    let up = MockUpstream::start().await;
    let front = Front::start().await;
    front.set(FAIL);
    let port = unused_port();
    let gw = aws_env(Launch::new(&up.url()), &front.url())
        .env("TOKENS_SSM_PARAMETER", &name)
        .env("TOKENS_REFRESH_SECS", "1")
        .env("METRICS_LISTEN", &format!("127.0.0.1:{port}"))
        .start();
    let (status, body) = healthz(port).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["missing"][0], "the token list is not loaded");
    assert_eq!(body["tokens"], serde_json::Value::Null);
    // The health check is never on the public listener.
    let public = client().get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(public.status(), 503, "a token check, not the health check");
    front.set(PASS);
    until(&gw, "late-Tok", 200, Duration::from_secs(5)).await;
    let (status, body) = healthz(port).await;
    assert_eq!((status, body["tokens"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(body["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_upstreams_key_comes_from_ssm_with_a_token_file() {
    // The token list is a file: the SSM client is made for the pool's entry.
    if !needs(Tool::Moto) {
        return;
    }
    let key = param("pool-key");
    put(&key, "sk-pool-from-ssm-1").await;
    let up = MockUpstream::start().await;
    let file = serde_json::json!({"upstreams": [
        {"name": "ssm-keyed", "base_url": up.url(), "key_ssm_parameter": key},
        {"name": "spare", "base_url": "http://127.0.0.1:9", "priority": 1},
    ]})
    .to_string();
    let mut launch = Launch::new("unused")
        .tokens(r#"[{"name":"k","token":"pool-user-Tok"}]"#)
        .file("upstreams.json", &file);
    launch.env.clear();
    let gw = aws_env(launch, &moto().url)
        .env("UPSTREAMS_FILE", "upstreams.json")
        .start();
    let r = client()
        .get(gw.url("/v1/models"))
        .bearer_auth("pool-user-Tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().header("authorization").as_deref(),
        Some("Bearer sk-pool-from-ssm-1")
    );
    let text = gw.log_text();
    assert!(!text.contains("sk-pool-from-ssm"), "{text}");
}

/// A chat as `token` (a header, as an SDK sends it): its status.
async fn chat_status(gw: &GatewayProc, token: &str) -> u16 {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": []}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Chats as `token` (each answered `200`) until `done`, up to 8 s (a
/// refresh period of 1 s, and SSM's answer, several times over).
async fn chat_until(gw: &GatewayProc, token: &str, what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert_eq!(chat_status(gw, token).await, 200, "{}", gw.log_text());
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{what}: {}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstreams_come_from_ssm_and_a_reload_takes_effect_without_a_restart() {
    if !needs(Tool::Moto) {
        return;
    }
    let (one, two) = (MockUpstream::start().await, MockUpstream::start().await);
    let pool = param("upstreams");
    let entry = |name: &str, url: String, key: &str| {
        serde_json::json!({"upstreams": [{"name": name, "base_url": url, "key": key}]}).to_string()
    };
    put(&pool, &entry("first", one.url(), "sk-pool-first-1")).await;
    let tokens = r#"[{"name":"u","token":"pool-ssm-Tok"},
                     {"name":"ops","token":"pool-ssm-Admin","admin":true}]"#;
    let mut launch = Launch::new("unused").tokens(tokens);
    launch.env.clear();
    let gw = aws_env(launch, &moto().url)
        .env("UPSTREAMS_SSM_PARAMETER", &pool)
        .env("TOKENS_REFRESH_SECS", "1")
        .start();
    assert_eq!(
        chat_status(&gw, "pool-ssm-Tok").await,
        200,
        "{}",
        gw.log_text()
    );
    assert_eq!(
        one.last().header("authorization").as_deref(),
        Some("Bearer sk-pool-first-1")
    );

    // Another upstream, another key: served within a refresh or two.
    put(&pool, &entry("second", two.url(), "sk-pool-second-2")).await;
    chat_until(&gw, "pool-ssm-Tok", "the reload never took effect", || {
        two.count() > 0
    })
    .await;
    assert_eq!(
        two.last().header("authorization").as_deref(),
        Some("Bearer sk-pool-second-2")
    );
    let served_by_one = one.count();

    // A malformed pool is refused and the last good one kept, the entry named.
    put(
        &pool,
        r#"{"upstreams": [{"name": "bad one", "base_url": "http://x"}]}"#,
    )
    .await;
    chat_until(
        &gw,
        "pool-ssm-Tok",
        "the bad pool was never reported",
        || gw.log_text().contains("`name` must be"),
    )
    .await;
    assert_eq!(chat_status(&gw, "pool-ssm-Tok").await, 200);
    assert_eq!(one.count(), served_by_one, "the old pool is not back");

    // The operator sees the pool as loaded now.
    let report: serde_json::Value = client()
        .get(gw.url("/v1/gateway/upstreams"))
        .bearer_auth("pool-ssm-Admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<_> = report["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["second"], "{report}");
    let text = gw.log_text();
    assert!(!text.contains("sk-pool-"), "a key in the log: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_is_dropped_and_its_replacement_in_ssm_is_tried() {
    use crate::failover::{Act, Scripted};
    if !needs(Tool::Moto) {
        return;
    }
    let key = param("refused-key");
    put(&key, "sk-refused-old").await;
    // a refuses the first key it is sent, and answers after.
    let a = Scripted::start(vec![Act::Status(401, vec![]), Act::Answer]).await;
    let b = Scripted::start(vec![Act::Answer]).await;
    let file = serde_json::json!({"upstreams": [
        {"name": "a", "base_url": a.url(), "key_ssm_parameter": key},
        {"name": "b", "base_url": b.url(), "key": "sk-b-fixed", "priority": 1},
    ]})
    .to_string();
    let mut launch = Launch::new("unused")
        .tokens(r#"[{"name":"k","token":"dead-key-Tok"}]"#)
        .file("upstreams.json", &file);
    launch.env.clear();
    let gw = aws_env(launch, &moto().url)
        .env("UPSTREAMS_FILE", "upstreams.json")
        .env("TOKENS_REFRESH_SECS", "1")
        .start();
    // a's 401 fails over to b; a is not tried again with that key.
    for _ in 0..3 {
        assert_eq!(
            chat_status(&gw, "dead-key-Tok").await,
            200,
            "{}",
            gw.log_text()
        );
    }
    assert_eq!((a.count(), b.count()), (1, 3));
    // The operator puts a new key in a's parameter: a is tried with it.
    put(&key, "sk-replaced-new").await;
    chat_until(&gw, "dead-key-Tok", "the new key was never tried", || {
        a.count() >= 2
    })
    .await;
    let seen = a.seen();
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Bearer sk-refused-old")
    );
    assert_eq!(
        seen[1].authorization.as_deref(),
        Some("Bearer sk-replaced-new")
    );
    // And it serves from then on.
    let before = b.count();
    assert_eq!(chat_status(&gw, "dead-key-Tok").await, 200);
    assert_eq!((a.count(), b.count()), (3, before));
    let text = gw.log_text();
    assert!(text.contains("refused the gateway's key"), "{text}");
    assert!(
        !text.contains("sk-refused") && !text.contains("sk-replaced"),
        "{text}"
    );
}
