//! The upstreams as they are now: fixed at start-up (`UPSTREAM_URL`, or
//! `UPSTREAMS_FILE`), or reloaded from SSM (`UPSTREAMS_SSM_PARAMETER`) as
//! the token list is, stale-while-revalidate.
//!
//! A reload changes only what changed. [`Builder::build`] keeps, for each
//! entry whose name, address, kind and key are as before, that upstream's
//! connections and health (its breaker, a rest, a dead key): a refresh that
//! brings the same text back costs nothing and forgets nothing. An entry
//! whose key changed starts afresh, so a key marked dead comes back to
//! life once the operator replaces it (as it does when the key is an SSM
//! parameter of its own that now holds another key: the health knows which
//! key it refused). A request reads one snapshot ([`Live::current`]) and
//! keeps it to its end.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::file::{KeySource, Kind, Spec};
use super::{Member, Upstreams};
use crate::error::{ConfigError, GatewayError};
use crate::proxy::Proxy;
use crate::sources::cached::{Cached, LoadError};
use crate::sources::ssm::{self, Ssm};

/// The upstreams a gateway sends to.
#[derive(Clone)]
pub enum Live {
    /// Read once, at start-up.
    Fixed(Upstreams),
    /// Reloaded from a source; a server thread's copy keeps pools of its own.
    Reloaded {
        /// The shared current value.
        source: Cached<Upstreams>,
        /// This thread's copy of the last value it saw (its own pools);
        /// `None` for the copy that shares the source's pools.
        local: Option<Arc<ThreadCopy>>,
    },
}

/// A server thread's copy: the shared value it was made from, and itself.
pub type ThreadCopy = Mutex<Option<(Arc<Upstreams>, Arc<Upstreams>)>>;

impl From<Upstreams> for Live {
    fn from(upstreams: Upstreams) -> Self {
        Self::Fixed(upstreams)
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(u) => u.fmt(f),
            Self::Reloaded { source, .. } => match source.peek() {
                Some(u) => u.fmt(f),
                None => f.write_str("[not loaded yet]"),
            },
        }
    }
}

/// One request's upstreams.
pub enum Snapshot<'a> {
    /// The fixed ones.
    Borrowed(&'a Upstreams),
    /// Those current when the request asked.
    Shared(Arc<Upstreams>),
}

impl std::ops::Deref for Snapshot<'_> {
    type Target = Upstreams;

    fn deref(&self) -> &Upstreams {
        match self {
            Self::Borrowed(u) => u,
            Self::Shared(u) => u,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Live {
    /// The upstreams now. Waits only while none was ever loaded (then a
    /// failed load is the request's `503`).
    pub async fn current(&self) -> Result<Snapshot<'_>, GatewayError> {
        let (source, local) = match self {
            Self::Fixed(upstreams) => return Ok(Snapshot::Borrowed(upstreams)),
            Self::Reloaded { source, local } => (source, local),
        };
        let shared = source.get().await?;
        let Some(local) = local else {
            return Ok(Snapshot::Shared(shared));
        };
        let mut held = lock(local);
        if let Some((from, own)) = &*held {
            if Arc::ptr_eq(from, &shared) {
                return Ok(Snapshot::Shared(own.clone()));
            }
        }
        let before = held.as_ref().map(|(_, own)| own.clone());
        let own = Arc::new(shared.with_own_pools_beside(before.as_deref()));
        *held = Some((shared, own.clone()));
        Ok(Snapshot::Shared(own))
    }

    /// The upstreams loaded so far, without waiting (start-up's checks,
    /// warming up); `None` before a first load.
    pub fn peek(&self) -> Option<Arc<Upstreams>> {
        match self {
            Self::Fixed(upstreams) => Some(Arc::new(upstreams.clone())),
            Self::Reloaded { source, .. } => source.peek(),
        }
    }

    /// The same upstreams (and health) with keep-alive pools of their own,
    /// for a server thread with its own runtime.
    pub fn with_own_pools(&self) -> Self {
        match self {
            Self::Fixed(upstreams) => Self::Fixed(upstreams.with_own_pools()),
            Self::Reloaded { source, .. } => Self::Reloaded {
                source: source.clone(),
                local: Some(Arc::default()),
            },
        }
    }
}

/// What every upstream of a pool is made with, and what the last build
/// made (for the next to keep what did not change).
pub struct Builder {
    /// Per attempt: the time to a response head (`UPSTREAM_TIMEOUT_SECS`).
    pub timeout: Duration,
    /// The time to connect.
    pub connect_timeout: Duration,
    /// Extra roots to trust (`UPSTREAM_CA_FILE`).
    pub ca_file: Option<std::path::PathBuf>,
    /// `UPSTREAM_MAX_ATTEMPTS`.
    pub max_attempts: usize,
    /// `UPSTREAM_FIRST_TOKEN_TIMEOUT_SECS`.
    pub first_output_timeout: Duration,
    /// How often a key kept in SSM is read again.
    pub key_refresh: Duration,
    /// The client for keys kept in SSM (made when an entry needs one).
    pub ssm: Option<Ssm>,
    built: Mutex<Vec<(Identity, Member)>>,
}

/// What makes an upstream the same one after a reload: its connections
/// and health carry over only then.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    name: String,
    base_url: String,
    kind: Kind,
    key: KeyIdentity,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyIdentity {
    None,
    Fixed(u64),
    Ssm(String),
}

impl Builder {
    /// A builder that has built nothing yet.
    pub fn new(
        timeout: Duration,
        connect_timeout: Duration,
        ca_file: Option<std::path::PathBuf>,
        max_attempts: usize,
        first_output_timeout: Duration,
        key_refresh: Duration,
        ssm: Option<Ssm>,
    ) -> Self {
        Self {
            timeout,
            connect_timeout,
            ca_file,
            max_attempts,
            first_output_timeout,
            key_refresh,
            ssm,
            built: Mutex::default(),
        }
    }

    /// The upstreams `specs` describe, keeping the connections and health
    /// of each that is the same as in the last build. A key in SSM whose
    /// entry is new is read on first use (a request waits for it only then).
    pub fn build(&self, specs: Vec<Spec>) -> Result<Upstreams, ConfigError> {
        let mut built = lock(&self.built);
        let mut members = Vec::with_capacity(specs.len());
        let mut next = Vec::with_capacity(specs.len());
        for spec in specs {
            let identity = Identity {
                name: spec.name.clone(),
                base_url: spec.base_url.to_string(),
                kind: spec.kind,
                key: match &spec.key {
                    KeySource::None => KeyIdentity::None,
                    KeySource::Fixed(key) => KeyIdentity::Fixed(key.fingerprint()),
                    KeySource::Ssm(name) => KeyIdentity::Ssm(name.clone()),
                },
            };
            let kept = built
                .iter()
                .find(|(id, _)| *id == identity)
                .map(|(_, m)| m.clone());
            let is_new = kept.is_none();
            let member = Member {
                name: spec.name.as_str().into(),
                kind: spec.kind,
                models: spec.models.into(),
                priority: spec.priority,
                weight: spec.weight,
                api_version: spec.api_version.map(Into::into),
                inject_include_usage: spec.inject_include_usage,
                ..match kept {
                    Some(member) => member,
                    None => self.fresh(&spec.name, spec.base_url, spec.key)?,
                }
            };
            if is_new {
                tracing::info!(
                    upstream = &*member.name,
                    url = %member.proxy.upstream(),
                    kind = member.kind.as_str(),
                    priority = member.priority,
                    weight = member.weight,
                    keyed = member.key.is_some(),
                    "upstream"
                );
            }
            next.push((identity, member.clone()));
            members.push(member);
        }
        *built = next;
        let mut upstreams = Upstreams::new(members, self.max_attempts);
        upstreams.first_output_timeout = self.first_output_timeout;
        Ok(upstreams)
    }

    /// A new upstream: its own connections, key and health.
    fn fresh(
        &self,
        name: &str,
        base_url: crate::proxy::Upstream,
        key: KeySource,
    ) -> Result<Member, ConfigError> {
        let proxy = Proxy::trusting(
            base_url,
            self.timeout,
            self.connect_timeout,
            self.ca_file.as_deref(),
        )?;
        let key = match key {
            KeySource::None => None,
            KeySource::Fixed(key) => Some(Cached::fixed(key)),
            KeySource::Ssm(parameter) => {
                let ssm = self.ssm.as_ref().ok_or_else(|| ConfigError::Invalid {
                    setting: crate::config::UPSTREAMS_FILE,
                    problem: format!(
                        "the upstream `{name}` has its key in SSM, and no SSM client was made"
                    ),
                })?;
                Some(ssm::key_cache(ssm, &parameter, self.key_refresh))
            }
        };
        Ok(Member::new(name, proxy, key))
    }
}

/// A pool of upstreams read from the SSM parameter `name` every
/// `refresh`, each load built by `builder` (which keeps what did not change
/// since the last); `env` reads the entries' `key_env`.
pub fn ssm_cache(
    ssm: &Ssm,
    name: &str,
    builder: Arc<Builder>,
    env: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    refresh: Duration,
) -> Cached<Upstreams> {
    let loader = ssm.loader(name, move |name, text| {
        let invalid = |problem: String| LoadError::InvalidUpstreams {
            origin: ssm::origin(name),
            problem,
        };
        let specs = super::file::parse(text, &env).map_err(|e| invalid(e.to_string()))?;
        let upstreams = builder.build(specs).map_err(|e| invalid(e.to_string()))?;
        tracing::info!(source = %name, upstreams = upstreams.members().len(), "upstreams loaded");
        Ok(upstreams)
    });
    Cached::refreshing(
        name,
        GatewayError::UpstreamsUnavailable(None),
        loader,
        refresh,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> Builder {
        Builder::new(
            Duration::from_secs(5),
            Duration::from_secs(1),
            None,
            3,
            Duration::from_secs(30),
            Duration::from_secs(60),
            None,
        )
    }

    fn specs(text: &str) -> Vec<Spec> {
        super::super::file::parse(text, |_| None).unwrap()
    }

    #[tokio::test]
    async fn a_reload_keeps_the_health_of_what_did_not_change_and_starts_afresh_what_did() {
        let builder = builder();
        let one = builder
            .build(specs(
                r#"{"upstreams": [
                    {"name": "a", "base_url": "http://127.0.0.1:1", "key": "sk-a-1"},
                    {"name": "b", "base_url": "http://127.0.0.1:2", "key": "sk-b-1"},
                    {"name": "c", "base_url": "http://127.0.0.1:3", "key": "sk-c-1"}]}"#,
            ))
            .unwrap();
        // a: only its weight and models change; b: its key; c: its address.
        let two = builder
            .build(specs(
                r#"{"upstreams": [
                    {"name": "a", "base_url": "http://127.0.0.1:1", "key": "sk-a-1", "weight": 5, "models": ["gpt-4o*"]},
                    {"name": "b", "base_url": "http://127.0.0.1:2", "key": "sk-b-2"},
                    {"name": "c", "base_url": "http://127.0.0.1:4", "key": "sk-c-1"}]}"#,
            ))
            .unwrap();
        let same = |i: usize| Arc::ptr_eq(&one.members()[i].health, &two.members()[i].health);
        assert_eq!((same(0), same(1), same(2)), (true, false, false));
        assert_eq!(two.members()[0].weight, 5);
        assert!(two.needs_model());
        // A thread's own copy keeps its pool for what was kept.
        let own = one.with_own_pools_beside(None);
        let own_two = two.with_own_pools_beside(Some(&own));
        assert!(Arc::ptr_eq(
            &own_two.members()[0].health,
            &one.members()[0].health
        ));
        // The pool shrinks to a, which keeps its health still.
        let three = builder
            .build(specs(
                r#"{"upstreams": [
                    {"name": "a", "base_url": "http://127.0.0.1:1", "key": "sk-a-1"}]}"#,
            ))
            .unwrap();
        assert!(Arc::ptr_eq(
            &three.members()[0].health,
            &one.members()[0].health
        ));
        assert_eq!(three.members().len(), 1);
    }

    #[tokio::test]
    async fn a_thread_copy_follows_the_source_and_is_rebuilt_only_when_it_changes() {
        let builder = Arc::new(builder());
        let text = Arc::new(Mutex::new(
            r#"{"upstreams": [{"name": "a", "base_url": "http://127.0.0.1:1"}]}"#.to_owned(),
        ));
        let (for_loader, for_builder) = (text.clone(), builder.clone());
        let loader: crate::sources::cached::Loader<Upstreams> = Arc::new(move || {
            let specs = specs(&lock(&for_loader));
            let built = for_builder.build(specs).map_err(|e| {
                crate::sources::cached::LoadError::InvalidUpstreams {
                    origin: "test".into(),
                    problem: e.to_string(),
                }
            });
            Box::pin(std::future::ready(built))
        });
        let source = Cached::refreshing(
            "test",
            GatewayError::UpstreamsUnavailable(None),
            loader,
            Duration::from_secs(3600),
        );
        let live = Live::Reloaded {
            source: source.clone(),
            local: None,
        };
        let thread = live.with_own_pools();
        let first = thread.current().await.unwrap();
        let again = thread.current().await.unwrap();
        let (Snapshot::Shared(first), Snapshot::Shared(again)) = (first, again) else {
            panic!("a reloaded source gives shared snapshots")
        };
        assert!(Arc::ptr_eq(&first, &again), "no change, no rebuild");
        *lock(&text) = r#"{"upstreams": [{"name": "a", "base_url": "http://127.0.0.1:1"},
                                         {"name": "b", "base_url": "http://127.0.0.1:2"}]}"#
            .to_owned();
        source.load_now().await.unwrap();
        let Snapshot::Shared(after) = thread.current().await.unwrap() else {
            panic!("shared")
        };
        assert_eq!(after.members().len(), 2);
        assert!(Arc::ptr_eq(
            &after.members()[0].health,
            &first.members()[0].health
        ));
        assert_eq!(live.current().await.unwrap().members().len(), 2);
    }
}
