//! Tokens managed at run time: the admin API the console and
//! `chatgpt-gateway tokens` use.
//!
//! - `GET /v1/gateway/tokens`: every entry, configured (`source: config`,
//!   read-only) and managed, with its state and, per limit, what is used and
//!   left in its current window. Never a token or its digest.
//! - `POST /v1/gateway/tokens`: a new managed token; the answer holds the
//!   token this once (`gw-` and 256 random bits).
//! - `PATCH /v1/gateway/tokens/{name}`: any field but the name and the
//!   secret; `disabled: true` suspends it, `null` removes a field.
//! - `DELETE /v1/gateway/tokens/{name}`: revokes it for good; it stays in
//!   the list (`revoked: true`) and its name is not given again.
//!
//! Fields are checked by the token file's own parser, with its messages;
//! the field at fault is the error's `param`. Admin tokens only (a header
//! or a console session; never the query).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, Utc};
use http::{Method, StatusCode};
use serde_json::{json, Map, Value};

use super::{json_response, managed};
use crate::clock::Clock;
use crate::error::GatewayError;
use crate::policy::{Inspect, Policy, Verdict};
use crate::sources::cached::Cached;
use crate::spend::account::{limit_rows, rfc3339, store_down};
use crate::spend::registry::{Managed, Registry, Updated};
use crate::spend::store::{Period, Store};
use crate::tokens::format::keys;
use crate::tokens::{TokenEntry, TokenSet};
use crate::upstreams::live::Live;

/// The collection's path.
pub const PATH: &str = "/v1/gateway/tokens";
/// The most a token's JSON body may hold.
const BODY: u64 = 64 << 10;
/// How far back `last_used_at` looks, in days.
const LAST_USED_DAYS: i64 = 90;

/// The fields a request may set, and whether a PATCH may.
const FIELDS: [(&str, bool); 9] = [
    (keys::NAME, false),
    (keys::EXPIRES, true),
    (keys::MODELS, true),
    (keys::ENDPOINTS, true),
    (keys::LIMITS, true),
    (keys::ALLOW_IPS, true),
    (keys::ADMIN, true),
    (keys::UPSTREAMS, true),
    ("disabled", true),
];

/// What a change does to a managed token.
enum Change {
    /// Sets (or, `null`, removes) fields; suspends or resumes it.
    Fields {
        fields: Map<String, Value>,
        disabled: Option<bool>,
    },
    /// Revokes it.
    Revoke,
}

/// The policy that answers the token endpoints.
pub struct TokensApi {
    /// Where managed tokens are kept; `None` without a usage store.
    pub registry: Option<Arc<dyn Registry>>,
    /// The list the gateway serves (reloaded at once after a change).
    pub tokens: Cached<TokenSet>,
    /// The configured list alone.
    pub config: Cached<TokenSet>,
    /// Where the configured list comes from, for a refusal to change it.
    pub origin: String,
    /// The usage store, for the figures of each limit.
    pub store: Option<Arc<dyn Store>>,
    /// The zone of times written without an offset.
    pub offset: FixedOffset,
    /// When tokens are made and changed.
    pub clock: Clock,
    /// The upstreams a token's `upstreams` may name.
    pub upstreams: Live,
}

/// Which token endpoint a path is: the collection, or one token by name.
fn route(path: &str) -> Option<Option<String>> {
    let rest = path.strip_prefix(PATH)?;
    if rest.is_empty() || rest == "/" {
        return Some(None);
    }
    let name = rest.strip_prefix('/')?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    percent_encoding::percent_decode_str(name)
        .decode_utf8()
        .ok()
        .map(|n| Some(n.into_owned()))
}

/// The field a token-list error is about (the first key it names).
fn param_of(problem: &str) -> &'static str {
    let named = problem
        .split('`')
        .nth(1)
        .map(|k| k.split('.').next().unwrap_or(k))
        .unwrap_or("");
    FIELDS
        .iter()
        .map(|(k, _)| *k)
        .find(|k| *k == named)
        .unwrap_or("token")
}

/// An entry's fields as the API shows them (no token, no digest).
fn shown(entry: &TokenEntry) -> Map<String, Value> {
    let rules = entry.rules.as_deref();
    let mut out = Map::new();
    out.insert("name".into(), json!(&*entry.name));
    out.insert("expires".into(), json!(entry.expires.map(rfc3339)));
    out.insert("models".into(), json!(rules.and_then(|r| r.models.clone())));
    out.insert(
        "endpoints".into(),
        json!(rules.and_then(|r| r.endpoints.clone())),
    );
    out.insert(
        "limits".into(),
        rules
            .and_then(|r| r.limits.as_ref())
            .map_or(Value::Null, |l| l.to_json()),
    );
    out.insert(
        "allow_ips".into(),
        json!(entry
            .allow_ips
            .as_ref()
            .map(|nets| nets.iter().map(ToString::to_string).collect::<Vec<_>>())),
    );
    out.insert(
        "upstreams".into(),
        json!(rules.and_then(|r| r.upstreams.clone())),
    );
    out.insert("admin".into(), json!(entry.admin));
    out
}

impl TokensApi {
    fn registry(&self) -> Result<&Arc<dyn Registry>, GatewayError> {
        self.registry
            .as_ref()
            .ok_or(GatewayError::ConsoleUnavailable)
    }

    async fn managed(&self) -> Result<Vec<Managed>, GatewayError> {
        match &self.registry {
            Some(registry) => registry.tokens().await.map_err(store_down),
            None => Ok(Vec::new()),
        }
    }

    /// The last UTC day each token (or `token` alone) was used on, within
    /// [`LAST_USED_DAYS`], from the usage store's rows.
    async fn last_used(
        &self,
        token: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, String>, GatewayError> {
        let Some(store) = &self.store else {
            return Ok(HashMap::new());
        };
        let today = now.date_naive();
        let from = today - chrono::Duration::days(LAST_USED_DAYS - 1);
        let period = Period::Days(
            from.format("%Y-%m-%d").to_string(),
            today.format("%Y-%m-%d").to_string(),
        );
        let rows = store
            .hourly(period, token.map(str::to_owned))
            .await
            .map_err(store_down)?;
        let mut last: HashMap<String, String> = HashMap::new();
        for (day, _, row) in rows.into_iter().filter(|(_, _, r)| r.requests > 0) {
            let seen = last.entry(row.token).or_default();
            if day > *seen {
                *seen = day;
            }
        }
        Ok(last)
    }

    /// One entry as the API answers it; its usage read from `store` (`None`:
    /// a token just made, which has used nothing).
    async fn view(
        &self,
        store: Option<&Arc<dyn Store>>,
        entry: &TokenEntry,
        state: Option<&Managed>,
        now: DateTime<Utc>,
        last_used: Option<&String>,
    ) -> Result<Value, GatewayError> {
        let mut out = shown(entry);
        out.insert("object".into(), json!("gateway.token"));
        out.insert(
            "source".into(),
            json!(if state.is_some() { "managed" } else { "config" }),
        );
        out.insert("expired".into(), json!(entry.is_expired(now)));
        out.insert("disabled".into(), json!(state.is_some_and(|m| m.disabled)));
        out.insert("revoked".into(), json!(state.is_some_and(|m| m.revoked)));
        out.insert(
            "created_at".into(),
            json!(state.map(|m| rfc3339(m.created_at))),
        );
        out.insert(
            "updated_at".into(),
            json!(state.map(|m| rfc3339(m.updated_at))),
        );
        out.insert("last_used_at".into(), json!(last_used));
        let limits = entry
            .rules
            .as_ref()
            .and_then(|r| r.limits.clone())
            .unwrap_or_default();
        let usage = limit_rows(store, Some(&entry.name), &limits, now).await?;
        out.insert("usage".into(), Value::Array(usage));
        Ok(Value::Object(out))
    }

    async fn list(&self, now: DateTime<Utc>) -> Result<Value, GatewayError> {
        let config = self.config.get().await?;
        let managed = self.managed().await?;
        let config_names: std::collections::HashSet<&str> =
            config.entries().iter().map(|e| &*e.name).collect();
        let mut rows: Vec<(TokenEntry, Option<&Managed>)> =
            config.entries().iter().map(|e| (e.clone(), None)).collect();
        for m in managed
            .iter()
            .filter(|m| !config_names.contains(m.name.as_str()))
        {
            if let Ok(entry) = managed::parse(m, self.offset) {
                rows.push((entry, Some(m)));
            }
        }
        let last_used = self.last_used(None, now).await?;
        // The store's reads, eight at a time, in order.
        let mut data = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(8) {
            let views = chunk.iter().map(|(entry, state)| {
                self.view(
                    self.store.as_ref(),
                    entry,
                    *state,
                    now,
                    last_used.get(&*entry.name),
                )
            });
            data.extend(futures_util::future::try_join_all(views).await?);
        }
        Ok(json!({"object": "list", "data": data}))
    }

    /// Reads a JSON object body, refusing fields a request may not set.
    async fn fields(
        request: &mut Inspect<'_>,
        patch: bool,
    ) -> Result<Map<String, Value>, GatewayError> {
        let bytes = request.body.read(BODY).await?;
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) else {
            return Err(GatewayError::InvalidRequestBody(
                "send the token's fields as a JSON object",
            ));
        };
        for key in map.keys() {
            let allowed = FIELDS.iter().find(|(k, _)| k == key);
            match allowed {
                Some((_, true)) => {}
                Some((k, false)) if !patch => {
                    let _ = k;
                }
                Some((k, false)) => {
                    return Err(GatewayError::invalid_param(
                        k,
                        format!("`{k}` cannot be changed; revoke the token and make another"),
                    ))
                }
                None => {
                    let param = match key.as_str() {
                        keys::TOKEN => keys::TOKEN,
                        keys::SHA256 => keys::SHA256,
                        keys::UPSTREAM_KEY => keys::UPSTREAM_KEY,
                        _ => "token",
                    };
                    let problem = match key.as_str() {
                        keys::TOKEN | keys::SHA256 => {
                            "the gateway makes the token itself; it cannot be given or changed"
                                .to_owned()
                        }
                        keys::UPSTREAM_KEY => {
                            "an upstream key cannot be kept in the usage store; put the token in the token file for that"
                                .to_owned()
                        }
                        other => format!(
                            "unknown field `{}` (expected one of: {})",
                            other.chars().take(40).collect::<String>(),
                            FIELDS.map(|(k, _)| k).join(", ")
                        ),
                    };
                    return Err(GatewayError::invalid_param(param, problem));
                }
            }
        }
        if let Some(disabled) = map.get("disabled") {
            if !disabled.is_boolean() {
                return Err(GatewayError::invalid_param(
                    "disabled",
                    "`disabled` must be true or false",
                ));
            }
        }
        Ok(map)
    }

    /// Refuses an entry whose `upstreams` names one the pool does not have
    /// (as start-up refuses such an entry of the token file).
    async fn check_upstreams(&self, entry: &TokenEntry) -> Result<(), GatewayError> {
        let Some(named) = entry.rules.as_ref().and_then(|r| r.upstreams.as_ref()) else {
            return Ok(());
        };
        let pool = self.upstreams.current().await?;
        let known: Vec<&str> = pool.members().iter().map(|m| &*m.name).collect();
        match named.iter().find(|n| !known.contains(&n.as_str())) {
            None => Ok(()),
            Some(unknown) => Err(GatewayError::invalid_param(
                keys::UPSTREAMS,
                format!(
                    "`upstreams` names `{unknown}`, which this gateway does not have (it has: {})",
                    known.join(", ")
                ),
            )),
        }
    }

    /// Checks an entry's JSON with the token file's parser.
    fn check(&self, entry: &Map<String, Value>) -> Result<TokenEntry, GatewayError> {
        let managed = Managed {
            name: String::new(),
            entry: Value::Object(entry.clone()).to_string(),
            disabled: false,
            revoked: false,
            created_at: DateTime::default(),
            updated_at: DateTime::default(),
            version: 0,
        };
        managed::parse(&managed, self.offset).map_err(|problem| {
            // `entry 0 (NAME): PROBLEM`: the problem is what the client needs.
            let problem = problem
                .split_once("): ")
                .map_or(problem.as_str(), |(_, p)| p)
                .to_owned();
            GatewayError::invalid_param(param_of(&problem), problem)
        })
    }

    async fn create(&self, request: &mut Inspect<'_>) -> Result<(StatusCode, Value), GatewayError> {
        let registry = self.registry()?.clone();
        let mut fields = Self::fields(request, false).await?;
        let disabled = fields
            .remove("disabled")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let name = match fields.get(keys::NAME) {
            Some(Value::String(name)) if !name.trim().is_empty() => name.trim().to_owned(),
            _ => {
                return Err(GatewayError::invalid_param(
                    keys::NAME,
                    "`name` is required: a non-empty string",
                ))
            }
        };
        if name.chars().count() > 128 {
            return Err(GatewayError::invalid_param(
                keys::NAME,
                "`name` holds at most 128 characters",
            ));
        }
        fields.insert(keys::NAME.into(), json!(name));
        let config = self.config.get().await?;
        if config.named(&name).is_some() {
            return Err(GatewayError::TokenNameTaken(name));
        }
        let token = crate::tokens::generate().map_err(|problem| {
            tracing::error!(%problem, "a token could not be made");
            GatewayError::Internal
        })?;
        fields.insert(
            keys::SHA256.into(),
            json!(crate::tokens::hex(&crate::tokens::digest(token.as_bytes()))),
        );
        let entry = self.check(&fields)?;
        self.check_upstreams(&entry).await?;
        let now = self.clock.now();
        let stored = Managed {
            name: name.clone(),
            entry: Value::Object(fields).to_string(),
            disabled,
            revoked: false,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        if !registry
            .create_token(stored.clone())
            .await
            .map_err(store_down)?
        {
            return Err(GatewayError::TokenNameTaken(name));
        }
        tracing::info!(token = %name, "a managed token was created");
        self.reload().await;
        // Stored already: the answer that carries its token must not hang on
        // another read of the store (a made token has used nothing).
        let mut view = self.view(None, &entry, Some(&stored), now, None).await?;
        view["token"] = json!(token);
        Ok((StatusCode::CREATED, view))
    }

    /// Applies `change` to the managed token `name` (read, changed,
    /// written on the condition that nobody wrote in between).
    async fn change(&self, name: &str, change: Change) -> Result<Value, GatewayError> {
        let registry = self.registry()?.clone();
        let config = self.config.get().await?;
        if config.named(name).is_some() {
            return Err(GatewayError::TokenInConfig {
                name: name.to_owned(),
                origin: self.origin.clone(),
            });
        }
        let managed = self.managed().await?;
        let mut stored = managed
            .into_iter()
            .find(|m| m.name == name)
            .ok_or_else(|| GatewayError::TokenNotFound(name.to_owned()))?;
        if stored.revoked {
            return Err(GatewayError::TokenRevoked(name.to_owned()));
        }
        let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(&stored.entry) else {
            return Err(GatewayError::Internal);
        };
        match change {
            Change::Fields {
                fields: changed,
                disabled,
            } => {
                for (key, value) in changed {
                    if value.is_null() {
                        fields.remove(&key);
                    } else {
                        fields.insert(key, value);
                    }
                }
                if let Some(disabled) = disabled {
                    stored.disabled = disabled;
                }
            }
            Change::Revoke => stored.revoked = true,
        }
        let entry = self.check(&fields)?;
        self.check_upstreams(&entry).await?;
        let now = self.clock.now();
        stored.entry = Value::Object(fields).to_string();
        stored.updated_at = now;
        stored.version = stored.version.saturating_add(1);
        match registry
            .update_token(stored.clone())
            .await
            .map_err(store_down)?
        {
            Updated::Done => {}
            Updated::Missing => return Err(GatewayError::TokenNotFound(name.to_owned())),
            Updated::Stale => return Err(GatewayError::TokenChanged(name.to_owned())),
        }
        self.reload().await;
        let last_used = self.last_used(Some(name), now).await?;
        self.view(
            self.store.as_ref(),
            &entry,
            Some(&stored),
            now,
            last_used.get(name),
        )
        .await
    }

    async fn patch(&self, request: &mut Inspect<'_>, name: &str) -> Result<Value, GatewayError> {
        let mut fields = Self::fields(request, true).await?;
        let disabled = fields.remove("disabled").and_then(|v| v.as_bool());
        let view = self
            .change(name, Change::Fields { fields, disabled })
            .await?;
        tracing::info!(token = %name, "a managed token was changed");
        Ok(view)
    }

    async fn revoke(&self, name: &str) -> Result<Value, GatewayError> {
        let view = self.change(name, Change::Revoke).await?;
        tracing::info!(token = %name, "a managed token was revoked");
        Ok(view)
    }

    /// Puts a change in force on this instance at once.
    async fn reload(&self) {
        if let Err(error) = self.tokens.load_now().await {
            tracing::warn!(%error, "the token list could not be reloaded after a change; it will be at the next refresh");
        }
    }
}

impl Policy for TokensApi {
    fn applies(&self, request: &Inspect<'_>) -> bool {
        request.path.starts_with(PATH) && route(request.path).is_some()
    }

    fn check<'a>(&'a self, request: &'a mut Inspect<'_>) -> Verdict<'a> {
        Box::pin(async move {
            let admitted = request.admitted;
            if admitted.in_query {
                return Err(GatewayError::AdminTokenInQuery);
            }
            if !admitted.admin {
                return Err(GatewayError::AdminOnly);
            }
            let now = request.now;
            let (status, body) = match (route(request.path).flatten(), request.method.clone()) {
                (None, Method::GET) => (StatusCode::OK, self.list(now).await?),
                (None, Method::POST) => self.create(request).await?,
                (Some(name), Method::PATCH) => {
                    let name = name.clone();
                    (StatusCode::OK, self.patch(request, &name).await?)
                }
                (Some(name), Method::DELETE) => (StatusCode::OK, self.revoke(&name).await?),
                (None, _) => return Err(GatewayError::MethodNotAllowed("this")),
                (Some(_), _) => return Err(GatewayError::MethodNotAllowed("this")),
            };
            request.reply = Some(json_response(status, &body, None));
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_collection_or_one_token() {
        assert_eq!(route("/v1/gateway/tokens"), Some(None));
        assert_eq!(route("/v1/gateway/tokens/"), Some(None));
        assert_eq!(
            route("/v1/gateway/tokens/friend"),
            Some(Some("friend".into()))
        );
        assert_eq!(
            route("/v1/gateway/tokens/%3Cimg%20src%3Dx%3E"),
            Some(Some("<img src=x>".into()))
        );
        assert_eq!(route("/v1/gateway/tokens/a/b"), None);
        assert_eq!(route("/v1/gateway/tokensx"), None);
        assert_eq!(route("/v1/gateway/tokens/%FF"), None);
    }

    #[test]
    fn a_problem_names_its_field() {
        assert_eq!(
            param_of("`limits.usd_total` must be a non-negative number"),
            "limits"
        );
        assert_eq!(
            param_of("`allow_ips`: `x` is not an IP address"),
            "allow_ips"
        );
        assert_eq!(param_of("`expires` value `soon` is not a time"), "expires");
        assert_eq!(param_of("something else"), "token");
    }

    #[test]
    fn made_tokens_are_long_random_and_recognisable() {
        let a = crate::tokens::generate().unwrap();
        assert!(a.starts_with("gw-") && a.len() == 3 + 43, "{a}");
        assert_ne!(a, crate::tokens::generate().unwrap());
    }
}
