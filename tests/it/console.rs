//! The operator's console, its API: tokens managed at run time (SQLite here,
//! DynamoDB on moto with two instances at the end), console sessions and
//! their cookie, the same-origin rule, failed logins, the transport rule,
//! and spend by day. The page itself is driven by headless Chromium in
//! `tests/compat/test_console.py`.

use std::time::{Duration, Instant};

use crate::common::aws::*;
use crate::common::*;
use chatgpt_gateway::clock::Clock;
use serde_json::{json, Value};

const TOKENS: &str = r#"[
    {"name": "ops", "token": "console-Ops-1", "admin": true},
    {"name": "friend", "token": "console-Friend-2", "models": ["gpt-4o-mini"]}
]"#;
const OPS: &str = "console-Ops-1";
const FRIEND: &str = "console-Friend-2";

/// One answer: status, headers and JSON body.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// A request to the gateway `gw`, with an admin token, a cookie or neither.
async fn call(
    gw: &impl Target,
    method: &str,
    path: &str,
    auth: Auth<'_>,
    body: Option<Value>,
    extra: &[(&str, String)],
) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client().request(method, gw.url(path));
    request = match auth {
        Auth::Bearer(token) => request.bearer_auth(token),
        Auth::Cookie(cookie) => request.header("cookie", cookie),
        Auth::None => request,
    };
    for (name, value) in extra {
        request = request.header(*name, value);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    Bearer(&'a str),
    Cookie(&'a str),
    None,
}

async fn chat(gw: &impl Target, token: &str) -> Answer {
    call(
        gw,
        "POST",
        "/v1/chat/completions",
        Auth::Bearer(token),
        Some(json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})),
        &[],
    )
    .await
}

/// The gateway's own origin, as a browser on its page sends it.
fn origin(gw: &impl Target) -> (&'static str, String) {
    ("origin", gw.url("").trim_end_matches('/').to_owned())
}

fn entry<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {list}"))
}

#[tokio::test]
async fn an_admin_creates_changes_disables_and_revokes_tokens_that_work_at_once() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(TOKENS).serve().await;
    let tokens = "/v1/gateway/tokens";

    // Only an admin, and never in the query.
    let list = call(&gw, "GET", tokens, Auth::Bearer(FRIEND), None, &[]).await;
    assert_eq!((list.status, list.code()), (403, "admin_only"));
    let list = call(
        &gw,
        "GET",
        &format!("{tokens}?token={OPS}"),
        Auth::None,
        None,
        &[],
    )
    .await;
    assert_eq!((list.status, list.code()), (401, "admin_token_in_query"));
    let list = call(&gw, "GET", tokens, Auth::Bearer(OPS), None, &[]).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(entry(&list.body, "ops")["source"], "config");
    assert_eq!(
        entry(&list.body, "friend")["models"],
        json!(["gpt-4o-mini"])
    );
    let text = list.body.to_string();
    assert!(
        !text.contains(OPS) && !text.contains(FRIEND),
        "no token in {text}"
    );
    assert!(!text.contains("sha256"), "no digest in {text}");

    // A new token, its secret shown once, in force at once.
    let made = call(
        &gw,
        "POST",
        tokens,
        Auth::Bearer(OPS),
        Some(
            json!({"name": "app", "models": ["gpt-4o-mini"], "limits": {"requests_per_minute": 2},
                    "expires": "2099-01-01T00:00:00Z"}),
        ),
        &[],
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let secret = made.body["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("gw-") && secret.len() >= 43, "{secret}");
    assert_eq!(made.body["source"], "managed");
    assert_eq!(made.body["limits"], json!({"requests_per_minute": 2}));
    assert_eq!(made.body["usage"][0]["max"], 2);
    let before = up.count();
    assert_eq!(chat(&gw, &secret).await.status, 200);
    assert_eq!(up.count(), before + 1);
    let listed = call(&gw, "GET", tokens, Auth::Bearer(OPS), None, &[]).await;
    let app = entry(&listed.body, "app");
    assert!(
        app.get("token").is_none(),
        "the secret is shown once: {app}"
    );
    assert_eq!(app["usage"][0]["used"], 1, "{app}");
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(app["last_used_at"], today, "{app}");
    assert_eq!(entry(&listed.body, "ops")["last_used_at"], Value::Null);
    assert!(!listed.body.to_string().contains(&secret));

    // The token file's checks and messages, with the field as `param`.
    for (fields, param, message) in [
        (
            json!({"name": "x", "limits": {"rpm": 5}}),
            "limits",
            "unknown key `rpm`",
        ),
        (
            json!({"name": "x", "allow_ips": ["10.0.0.0/99"]}),
            "allow_ips",
            "is not an IP address",
        ),
        (
            json!({"name": "x", "expires": "soon"}),
            "expires",
            "is not a time",
        ),
        (
            json!({"name": "x", "models": "gpt-4o"}),
            "models",
            "array of non-empty strings",
        ),
        (
            json!({"name": "x", "token": "mine"}),
            "token",
            "makes the token itself",
        ),
        (
            json!({"name": "x", "upstream_key": "sk-x"}),
            "upstream_key",
            "cannot be kept",
        ),
        (
            json!({"name": "x", "colour": "red"}),
            "token",
            "unknown field `colour`",
        ),
        (json!({"models": ["x"]}), "name", "`name` is required"),
        (
            json!({"name": "x", "upstreams": ["nowhere"]}),
            "upstreams",
            "names `nowhere`, which this gateway does not have (it has: default)",
        ),
    ] {
        let refused = call(
            &gw,
            "POST",
            tokens,
            Auth::Bearer(OPS),
            Some(fields.clone()),
            &[],
        )
        .await;
        assert_eq!(refused.status, 400, "{fields}: {}", refused.body);
        assert_eq!(
            refused.body["error"]["param"], param,
            "{fields}: {}",
            refused.body
        );
        let text = refused.body["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{fields}: {text}");
        assert!(!refused.body.to_string().contains("sk-x"), "no key echoed");
    }
    for name in ["app", "ops"] {
        let taken = call(
            &gw,
            "POST",
            tokens,
            Auth::Bearer(OPS),
            Some(json!({"name": name})),
            &[],
        )
        .await;
        assert_eq!(
            (taken.status, taken.code()),
            (409, "token_name_taken"),
            "{name}"
        );
    }

    // A raised limit is in force at once.
    assert_eq!(chat(&gw, &secret).await.status, 200);
    assert_eq!(chat(&gw, &secret).await.code(), "rate_limit_exceeded");
    let raised = call(
        &gw,
        "PATCH",
        &format!("{tokens}/app"),
        Auth::Bearer(OPS),
        Some(json!({"limits": {"requests_per_minute": 10}})),
        &[],
    )
    .await;
    assert_eq!(raised.status, 200, "{}", raised.body);
    assert_eq!(raised.body["limits"], json!({"requests_per_minute": 10}));
    assert_eq!(
        raised.body["expires"], "2099-01-01T00:00:00Z",
        "other fields kept"
    );
    assert_eq!(chat(&gw, &secret).await.status, 200);

    // Suspended and resumed.
    let off = call(
        &gw,
        "PATCH",
        &format!("{tokens}/app"),
        Auth::Bearer(OPS),
        Some(json!({"disabled": true})),
        &[],
    )
    .await;
    assert_eq!(off.body["disabled"], true);
    assert_eq!(chat(&gw, &secret).await.code(), "invalid_token");
    call(
        &gw,
        "PATCH",
        &format!("{tokens}/app"),
        Auth::Bearer(OPS),
        Some(json!({"disabled": false})),
        &[],
    )
    .await;
    assert_eq!(chat(&gw, &secret).await.status, 200);

    // A configured entry is changed where it is defined.
    let config = call(
        &gw,
        "PATCH",
        &format!("{tokens}/friend"),
        Auth::Bearer(OPS),
        Some(json!({"disabled": true})),
        &[],
    )
    .await;
    assert_eq!((config.status, config.code()), (409, "token_in_config"));
    assert!(config.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("the token file"));
    let missing = call(
        &gw,
        "DELETE",
        &format!("{tokens}/nobody"),
        Auth::Bearer(OPS),
        None,
        &[],
    )
    .await;
    assert_eq!((missing.status, missing.code()), (404, "token_not_found"));

    // Revoked for good: refused, kept in the list, its name not given again.
    let revoked = call(
        &gw,
        "DELETE",
        &format!("{tokens}/app"),
        Auth::Bearer(OPS),
        None,
        &[],
    )
    .await;
    assert_eq!(
        (revoked.status, revoked.body["revoked"].clone()),
        (200, json!(true))
    );
    assert_eq!(chat(&gw, &secret).await.code(), "invalid_token");
    let again = call(
        &gw,
        "PATCH",
        &format!("{tokens}/app"),
        Auth::Bearer(OPS),
        Some(json!({"disabled": false})),
        &[],
    )
    .await;
    assert_eq!((again.status, again.code()), (409, "token_revoked"));
    let reused = call(
        &gw,
        "POST",
        tokens,
        Auth::Bearer(OPS),
        Some(json!({"name": "app"})),
        &[],
    )
    .await;
    assert_eq!(reused.code(), "token_name_taken");
    let listed = call(&gw, "GET", tokens, Auth::Bearer(OPS), None, &[]).await;
    assert_eq!(entry(&listed.body, "app")["revoked"], true);
}

/// Logs in with `token`; the cookie to send back.
async fn log_in(gw: &impl Target, token: &str) -> (Answer, Option<String>) {
    let answer = call(
        gw,
        "POST",
        "/v1/gateway/session",
        Auth::None,
        Some(json!({"token": token})),
        &[],
    )
    .await;
    let cookie = answer
        .headers
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    (answer, cookie)
}

#[tokio::test]
async fn a_session_cookie_opens_the_admin_api_only_from_the_gateways_own_page() {
    let up = MockUpstream::start().await;
    let clock = Clock::manual("2026-06-01T12:00:10Z".parse().unwrap());
    let gw = Launch::new(&up.url())
        .tokens(TOKENS)
        .clock(&clock)
        .serve()
        .await;

    let (login, cookie) = log_in(&gw, OPS).await;
    assert_eq!(login.status, 201, "{}", login.body);
    assert_eq!(login.body["admin"], "ops");
    let set = login.headers["set-cookie"].to_str().unwrap().to_owned();
    let cookie = cookie.unwrap();
    assert!(cookie.starts_with("gw_session="), "{set}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.contains(flag), "{flag} in {set}");
    }
    assert!(!set.contains("Secure"), "plain http: {set}");
    let value = cookie.trim_start_matches("gw_session=");
    assert!(
        !value.contains(OPS) && !set.contains(&sha256_hex(OPS.as_bytes())),
        "opaque: {set}"
    );
    assert_eq!(value.len(), 43);

    // The admin API reads with it; a change needs the gateway's own origin.
    let who = call(
        &gw,
        "GET",
        "/v1/gateway/session",
        Auth::Cookie(&cookie),
        None,
        &[],
    )
    .await;
    assert_eq!((who.status, who.body["admin"].clone()), (200, json!("ops")));
    let list = call(
        &gw,
        "GET",
        "/v1/gateway/tokens",
        Auth::Cookie(&cookie),
        None,
        &[],
    )
    .await;
    assert_eq!(list.status, 200);
    let new = Some(json!({"name": "browser-made"}));
    let forged = call(
        &gw,
        "POST",
        "/v1/gateway/tokens",
        Auth::Cookie(&cookie),
        new.clone(),
        &[],
    )
    .await;
    assert_eq!((forged.status, forged.code()), (403, "cross_site_request"));
    let evil = ("origin", "http://evil.example".to_owned());
    let forged = call(
        &gw,
        "POST",
        "/v1/gateway/tokens",
        Auth::Cookie(&cookie),
        new.clone(),
        &[evil],
    )
    .await;
    assert_eq!(forged.code(), "cross_site_request");
    let cross = ("sec-fetch-site", "cross-site".to_owned());
    let forged = call(
        &gw,
        "POST",
        "/v1/gateway/tokens",
        Auth::Cookie(&cookie),
        new.clone(),
        &[origin(&gw), cross],
    )
    .await;
    assert_eq!(forged.code(), "cross_site_request");
    let made = call(
        &gw,
        "POST",
        "/v1/gateway/tokens",
        Auth::Cookie(&cookie),
        new,
        &[origin(&gw)],
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);

    // Nowhere else: a forwarded path authenticates nothing by it, and never sees it.
    let before = up.count();
    let chat = call(&gw, "GET", "/v1/models", Auth::Cookie(&cookie), None, &[]).await;
    assert_eq!((chat.status, chat.code()), (401, "missing_token"));
    assert_eq!(up.count(), before, "nothing forwarded");
    let both = format!("{cookie}; theme=dark");
    let models = call(
        &gw,
        "GET",
        "/v1/models",
        Auth::Bearer(FRIEND),
        None,
        &[("cookie", both)],
    )
    .await;
    assert_eq!(models.status, 200);
    assert_eq!(up.last().header("cookie").as_deref(), Some("theme=dark"));

    // Logging out ends it on the server: the old cookie is refused.
    let out = call(
        &gw,
        "DELETE",
        "/v1/gateway/session",
        Auth::Cookie(&cookie),
        None,
        &[],
    )
    .await;
    assert_eq!(
        out.code(),
        "cross_site_request",
        "logging out is a change too"
    );
    let out = call(
        &gw,
        "DELETE",
        "/v1/gateway/session",
        Auth::Cookie(&cookie),
        None,
        &[origin(&gw)],
    )
    .await;
    assert_eq!(out.status, 200);
    assert!(out.headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let replay = call(
        &gw,
        "GET",
        "/v1/gateway/tokens",
        Auth::Cookie(&cookie),
        None,
        &[],
    )
    .await;
    assert_eq!((replay.status, replay.code()), (401, "invalid_session"));
    let who = call(
        &gw,
        "GET",
        "/v1/gateway/session",
        Auth::Cookie(&cookie),
        None,
        &[],
    )
    .await;
    assert_eq!(
        (who.status, who.body["admin"].clone()),
        (200, Value::Null),
        "nobody"
    );

    // A session ends after its length, on the server.
    let (_, cookie) = log_in(&gw, OPS).await;
    let cookie = cookie.unwrap();
    clock.advance(chrono::Duration::hours(8) - chrono::Duration::seconds(1));
    assert_eq!(
        call(
            &gw,
            "GET",
            "/v1/gateway/tokens",
            Auth::Cookie(&cookie),
            None,
            &[]
        )
        .await
        .status,
        200
    );
    clock.advance(chrono::Duration::seconds(2));
    let late = call(
        &gw,
        "GET",
        "/v1/gateway/tokens",
        Auth::Cookie(&cookie),
        None,
        &[],
    )
    .await;
    assert_eq!(late.code(), "invalid_session");

    // Revoking an admin token ends the sessions it opened.
    let boss = call(
        &gw,
        "POST",
        "/v1/gateway/tokens",
        Auth::Bearer(OPS),
        Some(json!({"name": "boss", "admin": true})),
        &[],
    )
    .await;
    let boss_token = boss.body["token"].as_str().unwrap().to_owned();
    let (_, boss_cookie) = log_in(&gw, &boss_token).await;
    let boss_cookie = boss_cookie.unwrap();
    assert_eq!(
        call(
            &gw,
            "GET",
            "/v1/gateway/tokens",
            Auth::Cookie(&boss_cookie),
            None,
            &[]
        )
        .await
        .status,
        200
    );
    call(
        &gw,
        "DELETE",
        "/v1/gateway/tokens/boss",
        Auth::Bearer(OPS),
        None,
        &[],
    )
    .await;
    let gone = call(
        &gw,
        "GET",
        "/v1/gateway/tokens",
        Auth::Cookie(&boss_cookie),
        None,
        &[],
    )
    .await;
    assert_eq!(gone.code(), "invalid_session");
}

#[tokio::test]
async fn failed_logins_are_limited_per_address_and_never_logged_with_the_token() {
    let up = MockUpstream::start().await;
    let clock = Clock::manual("2026-06-01T12:00:10Z".parse().unwrap());
    let gw = Launch::new(&up.url())
        .tokens(TOKENS)
        .clock(&clock)
        .serve()
        .await;
    let (friend, _) = log_in(&gw, FRIEND).await;
    assert_eq!((friend.status, friend.code()), (403, "admin_only"));
    for i in 0..9 {
        let (wrong, cookie) = log_in(&gw, &format!("guess-{i}")).await;
        assert_eq!((wrong.status, wrong.code()), (401, "invalid_token"));
        assert!(cookie.is_none());
    }
    let (held, _) = log_in(&gw, OPS).await;
    assert_eq!((held.status, held.code()), (429, "too_many_logins"));
    assert_eq!(held.headers["retry-after"], "50");
    clock.advance(chrono::Duration::seconds(50));
    let (ok, _) = log_in(&gw, OPS).await;
    assert_eq!(ok.status, 201);
    let lines = gw.wait_access_lines(12).await;
    assert!(
        !format!("{lines:?}").contains("guess-"),
        "no attempted token in the access lines"
    );
    let bad = call(
        &gw,
        "POST",
        "/v1/gateway/session",
        Auth::None,
        Some(json!({"tok": 1})),
        &[],
    )
    .await;
    assert_eq!(
        (bad.status, bad.body["error"]["param"].clone()),
        (400, json!("token"))
    );
}

#[tokio::test]
async fn over_plain_http_the_console_answers_this_machine_only() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url())
        .tokens(TOKENS)
        .env("TRUSTED_PROXIES", "127.0.0.1/32")
        .serve()
        .await;
    let far = ("x-forwarded-for", "203.0.113.5".to_owned());
    let tls = ("x-forwarded-proto", "https".to_owned());
    let login = call(
        &gw,
        "POST",
        "/v1/gateway/session",
        Auth::None,
        Some(json!({"token": OPS})),
        std::slice::from_ref(&far),
    )
    .await;
    assert_eq!((login.status, login.code()), (403, "https_required"));
    let api = call(
        &gw,
        "GET",
        "/v1/gateway/tokens",
        Auth::Bearer(OPS),
        None,
        std::slice::from_ref(&far),
    )
    .await;
    assert_eq!(api.code(), "https_required");
    let encoded = call(
        &gw,
        "GET",
        "/v1/%67ateway/tokens",
        Auth::Bearer(OPS),
        None,
        std::slice::from_ref(&far),
    )
    .await;
    assert_eq!(
        encoded.code(),
        "https_required",
        "an encoded spelling is the same path"
    );
    let upstreams = call(
        &gw,
        "GET",
        "/v1/gateway/upstreams",
        Auth::Bearer(OPS),
        None,
        std::slice::from_ref(&far),
    )
    .await;
    assert_eq!(upstreams.code(), "https_required");
    let page = client()
        .get(gw.url("/admin/"))
        .header(far.0, far.1.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 403);
    assert!(page.text().await.unwrap().contains("SSH tunnel"));
    // An ordinary token's own usage is not the admin API's.
    let usage = call(
        &gw,
        "GET",
        "/v1/gateway/usage",
        Auth::Bearer(FRIEND),
        None,
        std::slice::from_ref(&far),
    )
    .await;
    assert_eq!(usage.status, 200);
    // Through TLS in front: answered, and the cookie is Secure.
    let login = call(
        &gw,
        "POST",
        "/v1/gateway/session",
        Auth::None,
        Some(json!({"token": OPS})),
        &[far.clone(), tls.clone()],
    )
    .await;
    assert_eq!(login.status, 201);
    assert!(login.headers["set-cookie"]
        .to_str()
        .unwrap()
        .ends_with("; Secure"));
    // A forged X-Forwarded-Proto from the client itself counts for nothing.
    let direct = Launch::new(&up.url()).tokens(TOKENS).serve().await;
    let page = client()
        .get(direct.url("/admin/"))
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "loopback");
    assert_eq!(page.headers()["cache-control"], "no-store");
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("default-src 'none'") && policy.contains("frame-ancestors 'none'"));
    assert!(!policy.contains("unsafe-inline"));
}

#[tokio::test]
async fn costs_by_day_in_openais_shape_an_admin_sees_all_and_a_token_its_own() {
    let up = MockUpstream::start().await;
    let clock = Clock::manual("2026-06-03T12:00:00Z".parse().unwrap());
    let gw = Launch::new(&up.url())
        .tokens(TOKENS)
        .clock(&clock)
        .serve()
        .await;
    let made = call(
        &gw,
        "POST",
        "/v1/gateway/tokens",
        Auth::Bearer(OPS),
        Some(json!({"name": "app"})),
        &[],
    )
    .await;
    let app = made.body["token"].as_str().unwrap().to_owned();
    assert_eq!(chat(&gw, FRIEND).await.status, 200);
    assert_eq!(chat(&gw, &app).await.status, 200);
    assert_eq!(chat(&gw, &app).await.status, 200);
    let june_1 = 1_780_272_000;
    let path = format!(
        "/v1/gateway/costs?start_time={june_1}&end_time={}&group_by=token,model&limit=2",
        june_1 + 3 * 86_400
    );
    let first = call(&gw, "GET", &path, Auth::Bearer(OPS), None, &[]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["object"], "page");
    assert_eq!(first.body["has_more"], true);
    assert_eq!(first.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(first.body["data"][0]["results"], json!([]));
    let next = first.body["next_page"].as_str().unwrap().to_owned();
    let page = call(
        &gw,
        "GET",
        &format!("{path}&page={next}"),
        Auth::Bearer(OPS),
        None,
        &[],
    )
    .await;
    assert_eq!(page.body["has_more"], false);
    let bucket = &page.body["data"][0];
    assert_eq!(bucket["start_time"], june_1 + 2 * 86_400);
    let results = bucket["results"].as_array().unwrap();
    let of = |token: &str| {
        results
            .iter()
            .find(|r| r["token"] == token)
            .unwrap_or_else(|| panic!("{token}: {results:?}"))
    };
    assert_eq!(of("app")["requests"], 2);
    assert_eq!(of("friend")["requests"], 1);
    assert_eq!(of("app")["model"], "gpt-4o-mini");
    assert_eq!(of("app")["object"], "gateway.costs.result");
    assert_eq!(of("app")["amount"]["currency"], "usd");
    assert!(
        of("app")["amount"]["value"].as_f64().unwrap() > 0.0,
        "{}",
        of("app")
    );
    // An ordinary token: its own spend only (in the query, as its other calls).
    let own = call(
        &gw,
        "GET",
        &format!("{path}&page={next}&token={FRIEND}"),
        Auth::None,
        None,
        &[],
    )
    .await;
    let results = own.body["data"][0]["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["token"], "friend");
    // By hour: the chats were made at 12:00 on June 3rd.
    let hour_12 = june_1 + 2 * 86_400 + 12 * 3_600;
    let by_hour = call(
        &gw,
        "GET",
        &format!(
            "/v1/gateway/costs?start_time={}&end_time={}&bucket_width=1h&group_by=token",
            hour_12 - 3_600,
            hour_12 + 3_600
        ),
        Auth::Bearer(OPS),
        None,
        &[],
    )
    .await;
    assert_eq!(by_hour.status, 200, "{}", by_hour.body);
    let data = by_hour.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["results"], json!([]));
    assert_eq!(
        (data[1]["start_time"].clone(), data[1]["end_time"].clone()),
        (json!(hour_12), json!(hour_12 + 3_600))
    );
    let hour = data[1]["results"].as_array().unwrap();
    assert_eq!(
        hour.iter()
            .map(|r| r["requests"].as_i64().unwrap())
            .sum::<i64>(),
        3
    );
    let bad = call(
        &gw,
        "GET",
        "/v1/gateway/costs?start_time=1&bucket_width=1h",
        Auth::Bearer(OPS),
        None,
        &[],
    )
    .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn two_instances_on_one_dynamodb_table_share_managed_tokens_within_the_refresh() {
    let table = format!("gw-console-{}", std::process::id());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatgpt-gateway"))
        .args(["usage", "init", "--store", &format!("dynamodb:{table}")])
        .env_clear()
        .envs(aws_vars(&moto().url))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let up = MockUpstream::start().await;
    let start = || {
        aws_env(Launch::new(&up.url()), &moto().url)
            .tokens(TOKENS)
            .env("USAGE_STORE", &format!("dynamodb:{table}"))
            .env("TOKENS_REFRESH_SECS", "1")
            .start()
    };
    let (a, b) = (start(), start());
    let made = call(
        &a,
        "POST",
        "/v1/gateway/tokens",
        Auth::Bearer(OPS),
        Some(json!({"name": "shared"})),
        &[],
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let secret = made.body["token"].as_str().unwrap().to_owned();
    assert_eq!(
        chat(&a, &secret).await.status,
        200,
        "at once where it was made"
    );
    let until = |want: u16| {
        let (b, secret) = (&b, secret.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let status = chat(b, &secret).await.status;
                if status == want {
                    return Instant::now();
                }
                assert!(
                    Instant::now() < deadline,
                    "the other instance still answers {status}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    until(200).await;
    // A session made on one is good on the other (the store keeps it).
    let (_, cookie) = log_in(&a, OPS).await;
    let cookie = cookie.unwrap();
    assert_eq!(
        call(
            &b,
            "GET",
            "/v1/gateway/tokens",
            Auth::Cookie(&cookie),
            None,
            &[]
        )
        .await
        .status,
        200
    );
    let revoked = call(
        &a,
        "DELETE",
        "/v1/gateway/tokens/shared",
        Auth::Bearer(OPS),
        None,
        &[],
    )
    .await;
    assert_eq!(revoked.status, 200);
    assert_eq!(chat(&a, &secret).await.code(), "invalid_token");
    until(401).await;
    let listed = call(
        &b,
        "GET",
        "/v1/gateway/tokens",
        Auth::Bearer(OPS),
        None,
        &[],
    )
    .await;
    assert_eq!(entry(&listed.body, "shared")["revoked"], true);
    let text = a.log_text() + &b.log_text();
    assert!(
        !text.contains(&secret) && !text.contains(OPS),
        "no token in the logs"
    );
}

#[tokio::test]
async fn an_admin_only_token_reaches_the_admin_api_and_nothing_forwarded() {
    let up = MockUpstream::start().await;
    let tokens = r#"[{"name": "ops", "token": "console-Only-3", "admin": true, "endpoints": ["/v1/gateway"]}]"#;
    let gw = Launch::new(&up.url()).tokens(tokens).serve().await;
    let list = call(
        &gw,
        "GET",
        "/v1/gateway/tokens",
        Auth::Bearer("console-Only-3"),
        None,
        &[],
    )
    .await;
    assert_eq!(list.status, 200);
    let (login, cookie) = log_in(&gw, "console-Only-3").await;
    assert_eq!(login.status, 201);
    assert!(cookie.is_some());
    let refused = chat(&gw, "console-Only-3").await;
    assert_eq!(
        (refused.status, refused.code()),
        (403, "endpoint_not_allowed")
    );
    assert_eq!(up.count(), 0, "nothing forwarded");

    // Without a usage store there is nowhere to keep sessions or tokens.
    let off = Launch::new(&up.url())
        .tokens(tokens)
        .env("USAGE_STORE", "off")
        .serve()
        .await;
    let (login, cookie) = log_in(&off, "console-Only-3").await;
    assert_eq!((login.status, login.code()), (503, "console_unavailable"));
    assert!(cookie.is_none());
    let made = call(
        &off,
        "POST",
        "/v1/gateway/tokens",
        Auth::Bearer("console-Only-3"),
        Some(json!({"name": "x"})),
        &[],
    )
    .await;
    assert_eq!(made.code(), "console_unavailable");
    let page = client().get(off.url("/admin/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
}

/// Runs `chatgpt-gateway tokens ARGS` with `admin` as GATEWAY_ADMIN_TOKEN.
async fn tokens_command(args: &[&str], admin: Option<&str>) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatgpt-gateway"));
    command
        .arg("tokens")
        .args(args)
        .env_remove("GATEWAY_ADMIN_TOKEN");
    if let Some(admin) = admin {
        command.env("GATEWAY_ADMIN_TOKEN", admin);
    }
    let out = command.output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_tokens_command_manages_a_running_gateways_tokens() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(TOKENS).serve().await;
    let url = gw.url("");
    let url = url.trim_end_matches('/');
    let (code, out, err) = tokens_command(
        &[
            "create",
            "--gateway",
            url,
            "--name",
            "cli-made",
            "--models",
            "gpt-4o-mini",
            "--limit",
            "requests_per_minute=5",
            "--json",
        ],
        Some(OPS),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let made: Value = serde_json::from_str(&out).unwrap();
    let secret = made["token"].as_str().unwrap().to_owned();
    assert_eq!(made["limits"], json!({"requests_per_minute": 5}));
    assert_eq!(chat(&gw, &secret).await.status, 200);

    let (code, out, _) = tokens_command(&["list", "--gateway", url], Some(OPS)).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("cli-made\tmanaged\tactive\tnever\trequests_per_minute 1/5\n"),
        "{out}"
    );
    assert!(out.contains("ops\tconfig\tactive"), "{out}");
    assert!(!out.contains(&secret) && !out.contains(OPS));

    let (code, _, err) = tokens_command(
        &["update", "cli-made", "--gateway", url, "--disable"],
        Some(OPS),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(chat(&gw, &secret).await.code(), "invalid_token");
    let (code, _, err) = tokens_command(
        &[
            "update",
            "cli-made",
            "--gateway",
            url,
            "--enable",
            "--limit",
            "requests_per_minute=9",
        ],
        Some(OPS),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(chat(&gw, &secret).await.status, 200);
    let (code, out, _) = tokens_command(&["revoke", "cli-made", "--gateway", url], Some(OPS)).await;
    assert_eq!(code, 0);
    assert!(out.contains("revoked `cli-made`"));
    assert_eq!(chat(&gw, &secret).await.code(), "invalid_token");

    // Refusals are the gateway's messages, on one line; no token printed.
    let (code, _, err) = tokens_command(
        &[
            "create",
            "--gateway",
            url,
            "--name",
            "x",
            "--allow-ips",
            "10.0.0.0/99",
        ],
        Some(OPS),
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("400 Bad Request: allow_ips: `allow_ips`: `10.0.0.0/99` is not an IP address"),
        "{err}"
    );
    let (code, _, err) = tokens_command(&["list", "--gateway", url], Some(FRIEND)).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("403") && err.contains("admin tokens only") && !err.contains(FRIEND),
        "{err}"
    );
    let (code, _, err) = tokens_command(&["list", "--gateway", url], None).await;
    assert_eq!(code, 1);
    assert!(err.contains("GATEWAY_ADMIN_TOKEN"), "{err}");
}
