//! The upstreams a request may go to, and in what order: the routing phase.
//!
//! Without `UPSTREAMS_FILE` there is one upstream, `default` (`UPSTREAM_URL`
//! and `UPSTREAM_API_KEY`, as before). With it, each upstream has a name, a
//! kind ([`Kind`]), a key, the models it serves, a `priority` (lower first)
//! and a `weight` (its share within its priority). [`Upstreams::plan`]
//! orders those that serve a request's model; the gateway's attempt loop
//! ([`crate::gateway`]) tries them in that order, skipping those whose
//! [`Health`] says not now.

use std::cell::Cell;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{header, HeaderMap};

pub mod file;
pub mod health;
pub mod hold;
pub mod live;
pub mod report;

pub use file::{Kind, ModelRoute};
pub use health::{Admission, Breaker, Health, Status};

use crate::error::GatewayError;
use crate::proxy::Proxy;
use crate::secret::ApiKey;
use crate::sources::cached::Cached;

/// One upstream, ready to send to.
#[derive(Clone)]
pub struct Member {
    /// Its name.
    pub name: Arc<str>,
    /// What it speaks.
    pub kind: Kind,
    /// Its connections.
    pub proxy: Proxy,
    /// The gateway's key for it, if any.
    pub key: Option<Cached<ApiKey>>,
    /// The models it serves; empty: every one.
    pub models: Arc<[ModelRoute]>,
    /// Lower first.
    pub priority: u32,
    /// Its share within its priority.
    pub weight: u32,
    /// Azure's `api-version`.
    pub api_version: Option<Arc<str>>,
    /// Whether a streamed chat may be sent here with the gateway's
    /// `stream_options.include_usage` (else as the client sent it).
    pub inject_include_usage: bool,
    /// Whether it is worth an attempt now (shared by every server thread).
    pub health: Arc<Health>,
}

impl Member {
    /// An OpenAI upstream named `name` serving every model, healthy.
    pub fn new(name: &str, proxy: Proxy, key: Option<Cached<ApiKey>>) -> Self {
        Self {
            name: name.into(),
            kind: Kind::Openai,
            proxy,
            key,
            models: Arc::new([]),
            priority: 0,
            weight: 1,
            api_version: None,
            inject_include_usage: true,
            health: Arc::new(Health::new(Breaker::default())),
        }
    }

    /// The route that serves `model`, if this upstream serves it (`None`
    /// model: a request that names none, which every upstream serves).
    fn route(&self, model: Option<&str>) -> Option<Option<&ModelRoute>> {
        match model {
            _ if self.models.is_empty() => Some(None),
            None => Some(None),
            Some(model) => self.models.iter().find(|r| r.matches(model)).map(Some),
        }
    }

    /// Whether this upstream serves `model`.
    pub fn serves(&self, model: Option<&str>) -> bool {
        self.route(model).is_some()
    }

    /// The request target at this upstream for a client's `path` and
    /// (stripped) `query`: as sent, or Azure's deployment path with its
    /// `api-version`.
    pub fn target(
        &self,
        path: &str,
        query: Option<&str>,
        model: Option<&str>,
    ) -> Result<PathAndQuery, GatewayError> {
        if self.kind != Kind::Azure {
            return self.proxy.target(path, query);
        }
        let deployment = match self.route(model).flatten() {
            Some(ModelRoute {
                deployment: Some(deployment),
                ..
            }) => Some(deployment.as_str()),
            _ => model,
        };
        let rest = path
            .strip_prefix("/v1")
            .filter(|r| r.starts_with('/'))
            .unwrap_or(path);
        let path = match deployment {
            Some(name) if !deployment_safe(name) => {
                return Err(GatewayError::invalid_param(
                    "model",
                    "this model name cannot name an Azure deployment",
                ))
            }
            // Per-deployment operations; the rest (models, files, batches)
            // are the resource's own.
            Some(name)
                if rest != "/models"
                    && !rest.starts_with("/files")
                    && !rest.starts_with("/batches") =>
            {
                format!("/openai/deployments/{name}{rest}")
            }
            _ => format!("/openai{rest}"),
        };
        let version = self.api_version.as_deref().unwrap_or_default();
        let query = match query {
            Some(q) => format!("api-version={version}&{q}"),
            None => format!("api-version={version}"),
        };
        self.proxy.target(&path, Some(&query))
    }

    /// The headers to send this upstream: `cleaned` (the client's, less
    /// the gateway's own), with `key` as this kind takes it.
    pub fn headers(&self, cleaned: HeaderMap, key: Option<&ApiKey>) -> HeaderMap {
        let mut headers = cleaned;
        if let Some(key) = key {
            match self.kind {
                Kind::Azure => {
                    headers.remove(header::AUTHORIZATION);
                    headers.insert("api-key", key.bare().clone());
                }
                Kind::Openai | Kind::OpenaiCompatible => {
                    headers.insert(header::AUTHORIZATION, key.authorization().clone());
                }
            }
        }
        headers
    }
}

/// An Azure deployment name as a path segment takes it (no dot segment).
fn deployment_safe(name: &str) -> bool {
    file::is_token(name, 256) && name != "." && name != ".."
}

/// Every upstream, and how many attempts a request may make.
#[derive(Clone)]
pub struct Upstreams {
    members: Arc<[Member]>,
    /// The most attempts per request (`UPSTREAM_MAX_ATTEMPTS`).
    pub max_attempts: usize,
    /// How long a stream that another upstream could serve is held for its
    /// first output (`UPSTREAM_FIRST_TOKEN_TIMEOUT_SECS`).
    pub first_output_timeout: std::time::Duration,
    /// Whether any upstream serves only some models (then routing needs
    /// the request's model).
    needs_model: bool,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.members.iter().map(|m| &*m.name))
            .finish()
    }
}

/// The name of the one upstream of a gateway without `UPSTREAMS_FILE`.
pub const DEFAULT_NAME: &str = "default";

impl Upstreams {
    /// The upstreams, in the file's order.
    pub fn new(members: Vec<Member>, max_attempts: usize) -> Self {
        // An Azure upstream names the deployment after the model.
        let needs_model = members
            .iter()
            .any(|m| !m.models.is_empty() || m.kind == Kind::Azure);
        Self {
            members: members.into(),
            max_attempts: max_attempts.max(1),
            first_output_timeout: std::time::Duration::from_secs(30),
            needs_model,
        }
    }

    /// One upstream, `default`, with the gateway's key (if any), tried once.
    pub fn single(proxy: Proxy, key: Option<Cached<ApiKey>>) -> Self {
        Self::new(vec![Member::new(DEFAULT_NAME, proxy, key)], 1)
    }

    /// The same upstreams (and health) with keep-alive pools of their own,
    /// for a server thread with its own runtime.
    pub fn with_own_pools(&self) -> Self {
        Self {
            members: self
                .members
                .iter()
                .map(|m| Member {
                    proxy: m.proxy.with_own_pool(),
                    ..m.clone()
                })
                .collect(),
            ..self.clone()
        }
    }

    /// [`Upstreams::with_own_pools`], keeping the pools `before` (this
    /// thread's copy of the last upstreams) had for the upstreams a reload
    /// kept (those sharing their health).
    pub fn with_own_pools_beside(&self, before: Option<&Upstreams>) -> Self {
        let kept = |m: &Member| {
            before?
                .members
                .iter()
                .find(|b| Arc::ptr_eq(&b.health, &m.health))
                .map(|b| b.proxy.clone())
        };
        Self {
            members: self
                .members
                .iter()
                .map(|m| Member {
                    proxy: kept(m).unwrap_or_else(|| m.proxy.with_own_pool()),
                    ..m.clone()
                })
                .collect(),
            ..self.clone()
        }
    }

    /// Every upstream.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Whether routing needs the request's model.
    pub fn needs_model(&self) -> bool {
        self.needs_model
    }

    /// The upstreams to try for `model`, in order: lowest `priority` first,
    /// weighted at random within a priority; only those in `allowed` (a
    /// token's `upstreams`) when it is given. Empty when none serves it.
    pub fn plan(&self, model: Option<&str>, allowed: Option<&[String]>) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.members.len())
            .filter(|&i| {
                let m = &self.members[i];
                m.serves(model) && allowed.is_none_or(|a| a.iter().any(|n| **n == *m.name))
            })
            .collect();
        if order.len() < 2 {
            return order;
        }
        order.sort_by_key(|&i| self.members[i].priority);
        let mut start = 0;
        while start < order.len() {
            let priority = self.members[order[start]].priority;
            let end = order[start..]
                .iter()
                .position(|&i| self.members[i].priority != priority)
                .map_or(order.len(), |n| start + n);
            weighted_shuffle(&mut order[start..end], |i| self.members[i].weight);
            start = end;
        }
        order
    }
}

/// Orders `items` so that each place is drawn at random in proportion to
/// the weights of those not yet placed.
fn weighted_shuffle(items: &mut [usize], weight: impl Fn(usize) -> u32) {
    for place in 0..items.len().saturating_sub(1) {
        let total: u64 = items[place..].iter().map(|&i| u64::from(weight(i))).sum();
        if total == 0 {
            return;
        }
        let mut draw = random() % total;
        for k in place..items.len() {
            let w = u64::from(weight(items[k]));
            if draw < w {
                items.swap(place, k);
                break;
            }
            draw -= w;
        }
    }
}

/// A fast per-thread random number (xorshift64*, seeded from the OS): for
/// spreading load, not for secrets.
fn random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            let _ = getrandom::fill(&mut seed);
            u64::from_le_bytes(seed) | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Upstream;
    use http::HeaderValue;
    use std::time::Duration;

    fn member(
        name: &str,
        kind: Kind,
        models: &[(&str, Option<&str>)],
        priority: u32,
        weight: u32,
    ) -> Member {
        Member {
            name: name.into(),
            kind,
            proxy: Proxy::new(
                Upstream::parse("http://127.0.0.1:9/base").unwrap(),
                Duration::from_secs(1),
                Duration::from_secs(1),
            )
            .unwrap(),
            key: None,
            models: models
                .iter()
                .map(|(p, d)| ModelRoute {
                    pattern: (*p).into(),
                    deployment: d.map(Into::into),
                })
                .collect(),
            priority,
            weight,
            api_version: (kind == Kind::Azure).then(|| "2024-10-21".into()),
            inject_include_usage: true,
            health: Arc::default(),
        }
    }

    #[test]
    fn a_plan_has_those_serving_the_model_by_priority_then_weight() {
        let pool = Upstreams::new(
            vec![
                member("backup", Kind::Openai, &[], 1, 1),
                member("heavy", Kind::Openai, &[("gpt-4o*", None)], 0, 3),
                member("light", Kind::Openai, &[("gpt-4o*", None)], 0, 1),
                member("minis", Kind::Openai, &[("gpt-4o-mini", None)], 0, 1),
            ],
            3,
        );
        let names = |plan: Vec<usize>| -> Vec<String> {
            plan.iter()
                .map(|&i| pool.members()[i].name.to_string())
                .collect()
        };
        let mut heavy_first = 0;
        for _ in 0..4000 {
            let plan = names(pool.plan(Some("gpt-4o"), None));
            assert_eq!(plan.len(), 3);
            assert_eq!(plan[2], "backup", "{plan:?}");
            heavy_first += usize::from(plan[0] == "heavy");
        }
        // Weight 3 against 1: three quarters of the time (± a wide margin).
        assert!((2700..3300).contains(&heavy_first), "{heavy_first}");
        assert_eq!(names(pool.plan(Some("o3"), None)), ["backup"]);
        assert_eq!(
            names(pool.plan(Some("gpt-4o"), Some(&["light".into(), "backup".into()]))),
            ["light", "backup"]
        );
        assert!(pool.plan(Some("o3"), Some(&["light".into()])).is_empty());
        assert!(pool.needs_model());
    }

    #[test]
    fn azure_targets_name_the_deployment_and_the_api_version() {
        let az = member(
            "az",
            Kind::Azure,
            &[("gpt-4o", Some("gpt4o-prod")), ("gpt-4o-mini", None)],
            0,
            1,
        );
        let target = |path: &str, query: Option<&str>, model: Option<&str>| {
            az.target(path, query, model).map(|t| t.to_string())
        };
        assert_eq!(
            target("/v1/chat/completions", None, Some("gpt-4o")).unwrap(),
            "/base/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            target("/v1/embeddings", Some("a=1"), Some("gpt-4o-mini")).unwrap(),
            "/base/openai/deployments/gpt-4o-mini/embeddings?api-version=2024-10-21&a=1"
        );
        assert_eq!(
            target("/v1/models", None, None).unwrap(),
            "/base/openai/models?api-version=2024-10-21"
        );
        assert!(target("/v1/chat/completions", None, Some("../x")).is_err());
        let openai = member("o", Kind::Openai, &[], 0, 1);
        assert_eq!(
            openai
                .target("/v1/chat/completions", Some("a=1"), Some("gpt-4o"))
                .unwrap(),
            "/base/v1/chat/completions?a=1"
        );
    }

    #[test]
    fn the_key_goes_where_the_kind_takes_it() {
        let key = ApiKey::new("sk-pool").unwrap();
        let mut cleaned = HeaderMap::new();
        cleaned.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-client"),
        );
        let az = member("az", Kind::Azure, &[], 0, 1).headers(cleaned.clone(), Some(&key));
        assert!(az.get(header::AUTHORIZATION).is_none());
        assert_eq!(az.get("api-key"), Some(key.bare()));
        let openai = member("o", Kind::Openai, &[], 0, 1).headers(cleaned.clone(), Some(&key));
        assert_eq!(openai[header::AUTHORIZATION], key.authorization());
        // No key of the gateway's: the client's goes on.
        let passed = member("o", Kind::Openai, &[], 0, 1).headers(cleaned, None);
        assert_eq!(passed[header::AUTHORIZATION], "Bearer sk-client");
    }
}
