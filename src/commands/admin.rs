//! `tokens list|create|update|revoke`: the console's token verbs from a
//! terminal, against a running gateway's admin API (`--gateway URL`).
//!
//! The admin token is read from `GATEWAY_ADMIN_TOKEN` only (a flag would
//! show in `ps` and shell history) and sent as `Authorization: Bearer`; a
//! made token is printed once. Refusals print the gateway's message, with
//! the field at fault.

use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::BodyExt;
use serde_json::{json, Map, Value};

use super::tokens::RuleArgs;
use super::CommandError;
use crate::proxy::{Proxy, Upstream};

/// The variable the admin token is read from.
pub const ADMIN_TOKEN_VAR: &str = "GATEWAY_ADMIN_TOKEN";

/// Where the admin API is.
#[derive(Debug, Args)]
pub struct Gateway {
    /// The gateway's URL, e.g. http://127.0.0.1:8080 or the Function URL (the admin token comes from GATEWAY_ADMIN_TOKEN).
    #[arg(long)]
    gateway: String,
}

/// The fields `create` and `update` set.
#[derive(Debug, Args)]
pub struct Fields {
    /// When it expires (RFC 3339); `never` removes the expiry.
    #[arg(long)]
    expires: Option<String>,
    /// An admin token (may use the console and the admin API).
    #[arg(long)]
    admin: Option<bool>,
    #[command(flatten)]
    rules: RuleArgs,
}

impl Fields {
    fn json(&self) -> Result<Map<String, Value>, CommandError> {
        let mut map = Map::new();
        if let Some(expires) = &self.expires {
            let value = if expires.trim() == "never" {
                Value::Null
            } else {
                json!(expires.trim())
            };
            map.insert("expires".into(), value);
        }
        if let Some(admin) = self.admin {
            map.insert("admin".into(), json!(admin));
        }
        self.rules.insert_into(&mut map)?;
        Ok(map)
    }
}

/// Sends one admin API request; the answer's JSON, or the gateway's refusal.
async fn call(
    gateway: &Gateway,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CommandError> {
    let token = std::env::var(ADMIN_TOKEN_VAR)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            CommandError::Refused(format!(
                "set {ADMIN_TOKEN_VAR} to an admin token (an entry with \"admin\": true)"
            ))
        })?;
    let upstream = Upstream::parse(&gateway.gateway)?;
    let proxy = Proxy::new(upstream, Duration::from_secs(30), Duration::from_secs(10))?;
    let target = proxy.target(path, None).map_err(|e| CommandError::Flag {
        flag: "--gateway",
        problem: e.to_string(),
    })?;
    let mut headers = HeaderMap::new();
    let bearer = HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
        CommandError::Refused(format!(
            "{ADMIN_TOKEN_VAR} holds characters a header cannot carry"
        ))
    })?;
    headers.insert(http::header::AUTHORIZATION, bearer);
    headers.insert(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    );
    let body = match body {
        Some(value) => {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            crate::policy::replay(Bytes::from(value.to_string()))
        }
        None => crate::policy::replay(Bytes::new()),
    };
    let response = proxy
        .send(method, target, headers, body)
        .await
        .map_err(|e| CommandError::Refused(format!("{}: {e}", gateway.gateway)))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| CommandError::Refused(format!("{}: {e}", gateway.gateway)))?
        .to_bytes();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(value);
    }
    let error = &value["error"];
    let message = error["message"].as_str().unwrap_or("no message");
    Err(CommandError::Refused(match error["param"].as_str() {
        Some(param) => format!("{status}: {param}: {message}"),
        None => format!("{status}: {message}"),
    }))
}

/// A token's name as a path segment.
fn path_of(name: &str) -> String {
    let encoded = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    format!("/v1/gateway/tokens/{encoded}")
}

/// One line per token: name, source, state, expiry, limits used.
fn table(list: &Value) -> String {
    let mut out = String::from("name\tsource\tstate\texpires\tlimits\n");
    for entry in list["data"].as_array().into_iter().flatten() {
        let state = if entry["revoked"] == true {
            "revoked"
        } else if entry["disabled"] == true {
            "disabled"
        } else if entry["expired"] == true {
            "expired"
        } else {
            "active"
        };
        let limits: Vec<String> = entry["usage"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                format!(
                    "{} {}/{}",
                    l["limit"].as_str().unwrap_or(""),
                    l["used"],
                    l["max"]
                )
            })
            .collect();
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\n",
            entry["name"].as_str().unwrap_or(""),
            entry["source"].as_str().unwrap_or(""),
            state,
            entry["expires"].as_str().unwrap_or("never"),
            if limits.is_empty() {
                "-".to_owned()
            } else {
                limits.join(", ")
            },
        ));
    }
    out
}

/// `tokens list`.
pub async fn list(gateway: &Gateway, as_json: bool) -> Result<(), CommandError> {
    let list = call(gateway, Method::GET, "/v1/gateway/tokens", None).await?;
    if as_json {
        println!("{list}");
    } else {
        print!("{}", table(&list));
    }
    Ok(())
}

/// `tokens create`.
pub async fn create(
    gateway: &Gateway,
    name: &str,
    fields: &Fields,
    as_json: bool,
) -> Result<(), CommandError> {
    let mut body = fields.json()?;
    body.insert("name".into(), json!(name));
    let made = call(
        gateway,
        Method::POST,
        "/v1/gateway/tokens",
        Some(Value::Object(body)),
    )
    .await?;
    if as_json {
        println!("{made}");
    } else {
        let token = made["token"].as_str().unwrap_or("");
        println!("token (shown once; give it to the client): {token}");
        println!("created `{name}`; it is in force now on this gateway, and on every instance within TOKENS_REFRESH_SECS");
    }
    Ok(())
}

/// `tokens update`.
pub async fn update(
    gateway: &Gateway,
    name: &str,
    fields: &Fields,
    disabled: Option<bool>,
) -> Result<(), CommandError> {
    let mut body = fields.json()?;
    if let Some(disabled) = disabled {
        body.insert("disabled".into(), json!(disabled));
    }
    if body.is_empty() {
        return Err(CommandError::Refused(
            "nothing to change: give a field (--limit, --models, --expires, --disable, …)".into(),
        ));
    }
    let changed = call(
        gateway,
        Method::PATCH,
        &path_of(name),
        Some(Value::Object(body)),
    )
    .await?;
    println!("{changed}");
    Ok(())
}

/// `tokens revoke`.
pub async fn revoke(gateway: &Gateway, name: &str) -> Result<(), CommandError> {
    call(gateway, Method::DELETE, &path_of(name), None).await?;
    println!("revoked `{name}`: refused from now on here, and on every instance within TOKENS_REFRESH_SECS");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(path_of("friend"), "/v1/gateway/tokens/friend");
        assert_eq!(path_of("a/b c"), "/v1/gateway/tokens/a%2Fb%20c");
    }

    #[test]
    fn the_table_shows_state_and_limits_never_a_secret() {
        let list = json!({"data": [
            {"name": "ops", "source": "config", "expires": null, "usage": []},
            {"name": "friend", "source": "managed", "revoked": true, "expires": "2027-01-01T00:00:00Z",
             "usage": [{"limit": "usd_per_month", "used": 1.5, "max": 5.0}]}
        ]});
        let text = table(&list);
        assert!(text.contains("ops\tconfig\tactive\tnever\t-\n"), "{text}");
        assert!(
            text.contains(
                "friend\tmanaged\trevoked\t2027-01-01T00:00:00Z\tusd_per_month 1.5/5.0\n"
            ),
            "{text}"
        );
    }
}
