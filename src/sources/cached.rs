//! The current value of a configuration source, refreshed in the background.
//!
//! A fixed source (a token file, an environment variable) never changes. A
//! refreshing source (an SSM parameter) is reloaded when older than its
//! refresh period, stale-while-revalidate: a request never waits on the
//! source while a good value is in hand, at most one load is in flight, and a
//! failed refresh keeps the last good value and retries with backoff. Only
//! before the first good load does a request wait (for the one load in
//! flight) and, when that fails, get the error the cache was made with
//! ([`GatewayError::TokenStoreUnavailable`] for the token list,
//! [`GatewayError::UpstreamKeyUnavailable`] for the key), so the answer
//! names the source that failed.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::GatewayError;
use crate::tokens::format::ParseError;

/// A boxed future, as returned by a [`Loader`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Loads a fresh value.
pub type Loader<T> = Arc<dyn Fn() -> BoxFuture<Result<T, LoadError>> + Send + Sync>;

/// Why a load failed. Messages are fit for logs: they name the source and the
/// entry at fault, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The source could not be read (down, throttled, denied, missing).
    #[error("{origin}: {reason}")]
    Unavailable {
        /// The source (an SSM parameter's name).
        origin: String,
        /// What the source's client said.
        reason: String,
    },
    /// The source answered without a value.
    #[error("{origin}: no value")]
    NoValue {
        /// The source.
        origin: String,
    },
    /// The value is a malformed token list.
    #[error("{origin}: {error}")]
    InvalidTokens {
        /// The source.
        origin: String,
        /// What is wrong, naming the entry.
        error: ParseError,
    },
    /// The value is a malformed pool of upstreams.
    #[error("{origin}: {problem}")]
    InvalidUpstreams {
        /// The source.
        origin: String,
        /// What is wrong, naming the entry (never a value).
        problem: String,
    },
    /// The value is not a key an Authorization header can carry.
    #[error("{origin}: the key is empty or holds characters an HTTP header cannot carry")]
    InvalidKey {
        /// The source.
        origin: String,
    },
}

impl LoadError {
    fn is_malformed(&self) -> bool {
        !matches!(self, Self::Unavailable { .. })
    }
}

/// A value that may be refreshed. Cloning shares the cache.
pub struct Cached<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Cached<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<T> {
    what: String,
    unavailable: GatewayError,
    loader: Option<Loader<T>>,
    refresh_after: Duration,
    state: RwLock<State<T>>,
    // Held for the whole of a load: "at most one load in flight".
    loading: Arc<tokio::sync::Mutex<()>>,
}

struct State<T> {
    value: Option<Arc<T>>,
    loaded_at: Instant,
    failures: u32,
    retry_at: Instant,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

impl<T: Send + Sync + 'static> Cached<T> {
    /// A value that never changes.
    pub fn fixed(value: T) -> Self {
        Self::with_state(
            "fixed value".into(),
            GatewayError::TokenStoreUnavailable,
            None,
            Duration::MAX,
            Some(Arc::new(value)),
        )
    }

    /// A value loaded by `loader`, refreshed when older than `refresh_after`.
    /// `what` names the source in logs (e.g. the SSM parameter name);
    /// `unavailable` is the answer to requests while no value was ever loaded.
    /// Nothing is loaded until [`Cached::load_now`] or the first [`Cached::get`].
    pub fn refreshing(
        what: impl Into<String>,
        unavailable: GatewayError,
        loader: Loader<T>,
        refresh_after: Duration,
    ) -> Self {
        Self::with_state(what.into(), unavailable, Some(loader), refresh_after, None)
    }

    fn with_state(
        what: String,
        unavailable: GatewayError,
        loader: Option<Loader<T>>,
        refresh_after: Duration,
        value: Option<Arc<T>>,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner: Arc::new(Inner {
                what,
                unavailable,
                loader,
                refresh_after,
                state: RwLock::new(State {
                    value,
                    loaded_at: now,
                    failures: 0,
                    retry_at: now,
                }),
                loading: Arc::new(tokio::sync::Mutex::new(())),
            }),
        }
    }

    /// The value in hand, without loading anything.
    pub fn peek(&self) -> Option<Arc<T>> {
        self.inner.state.read().expect("cache lock").value.clone()
    }

    /// Loads now, waiting for the result (used at start-up).
    pub async fn load_now(&self) -> Result<Arc<T>, LoadError> {
        let _guard = self.inner.loading.lock().await;
        self.inner.load().await
    }

    /// The current value. Starts a background refresh when it is stale; waits
    /// for a load only when no good value has ever been loaded.
    pub async fn get(&self) -> Result<Arc<T>, GatewayError> {
        let now = Instant::now();
        let (value, stale, may_retry) = {
            let state = self.inner.state.read().expect("cache lock");
            let stale = self.inner.loader.is_some()
                && now.saturating_duration_since(state.loaded_at) >= self.inner.refresh_after;
            (state.value.clone(), stale, now >= state.retry_at)
        };
        match value {
            Some(value) => {
                if stale && may_retry {
                    if let Ok(guard) = self.inner.loading.clone().try_lock_owned() {
                        let inner = self.inner.clone();
                        tokio::spawn(async move {
                            let _guard = guard;
                            let _ = inner.load().await;
                        });
                    }
                }
                Ok(value)
            }
            None => {
                if !may_retry {
                    return Err(self.inner.unavailable.clone());
                }
                let _guard = self.inner.loading.lock().await;
                // Another request may have loaded it while we waited.
                if let Some(value) = self.peek() {
                    return Ok(value);
                }
                if Instant::now() < self.inner.state.read().expect("cache lock").retry_at {
                    return Err(self.inner.unavailable.clone());
                }
                self.inner
                    .load()
                    .await
                    .map_err(|_| self.inner.unavailable.clone())
            }
        }
    }
}

impl<T: Send + Sync + 'static> Inner<T> {
    /// Runs the loader and records the outcome. The caller holds `loading`.
    async fn load(&self) -> Result<Arc<T>, LoadError> {
        let Some(loader) = &self.loader else {
            return self
                .state
                .read()
                .expect("cache lock")
                .value
                .clone()
                .ok_or_else(|| LoadError::NoValue {
                    origin: self.what.clone(),
                });
        };
        let result = loader().await;
        let mut state = self.state.write().expect("cache lock");
        let now = Instant::now();
        match result {
            Ok(value) => {
                let value = Arc::new(value);
                state.value = Some(value.clone());
                state.loaded_at = now;
                state.failures = 0;
                state.retry_at = now;
                Ok(value)
            }
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                let backoff = FIRST_BACKOFF
                    .saturating_mul(1 << state.failures.min(10).saturating_sub(1))
                    .min(MAX_BACKOFF)
                    .min(self.refresh_after);
                state.retry_at = now + backoff;
                let keeping = state.value.is_some();
                let (failures, retry_in_ms) = (state.failures, backoff.as_millis() as u64);
                drop(state);
                if error.is_malformed() {
                    tracing::error!(
                        source = %self.what, error = %error, failures, retry_in_ms, keeping_last_good = keeping,
                        "configuration value is malformed"
                    );
                } else {
                    tracing::warn!(
                        source = %self.what, error = %error, failures, retry_in_ms, keeping_last_good = keeping,
                        "configuration refresh failed"
                    );
                }
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn down() -> LoadError {
        LoadError::Unavailable {
            origin: "p".into(),
            reason: "down".into(),
        }
    }

    /// A loader that answers from a shared script and counts its calls.
    fn scripted(
        results: Arc<RwLock<Result<u32, LoadError>>>,
        calls: Arc<AtomicU32>,
    ) -> Loader<u32> {
        Arc::new(move || {
            let results = results.clone();
            let calls = calls.clone();
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                results.read().unwrap().clone()
            })
        })
    }

    #[tokio::test(start_paused = true)]
    async fn stale_while_revalidate_with_one_load_in_flight() {
        let result = Arc::new(RwLock::new(Ok(1)));
        let calls = Arc::new(AtomicU32::new(0));
        let cache = Cached::refreshing(
            "p",
            GatewayError::TokenStoreUnavailable,
            scripted(result.clone(), calls.clone()),
            Duration::from_secs(60),
        );
        assert_eq!(*cache.get().await.unwrap(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Fresh: no load.
        assert_eq!(*cache.get().await.unwrap(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        *result.write().unwrap() = Ok(2);
        tokio::time::advance(Duration::from_secs(61)).await;
        // Stale: many requests get the old value at once, and start one load.
        for _ in 0..20 {
            assert_eq!(*cache.get().await.unwrap(), 1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(*cache.get().await.unwrap(), 2);

        // A failed refresh keeps the last good value.
        *result.write().unwrap() = Err(down());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(*cache.get().await.unwrap(), 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(*cache.get().await.unwrap(), 2);
        // It retries after the backoff, and recovers.
        *result.write().unwrap() = Ok(3);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(*cache.get().await.unwrap(), 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*cache.get().await.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_until_the_first_load_succeeds() {
        let result = Arc::new(RwLock::new(Err(down())));
        let calls = Arc::new(AtomicU32::new(0));
        // The answer names the source: here, the upstream key.
        let cache = Cached::refreshing(
            "p",
            GatewayError::UpstreamKeyUnavailable,
            scripted(result.clone(), calls.clone()),
            Duration::from_secs(60),
        );
        assert_eq!(
            cache.get().await.unwrap_err(),
            GatewayError::UpstreamKeyUnavailable
        );
        // Within the backoff: answered at once, without another load.
        assert_eq!(
            cache.get().await.unwrap_err(),
            GatewayError::UpstreamKeyUnavailable
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        *result.write().unwrap() = Ok(7);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(*cache.get().await.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn fixed_values_never_load() {
        let cache = Cached::fixed(5u32);
        assert_eq!(*cache.get().await.unwrap(), 5);
        assert_eq!(*cache.load_now().await.unwrap(), 5);
    }
}
