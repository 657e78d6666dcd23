//! From settings to a ready [`Gateway`]: token source, upstream, safety checks.
//!
//! Start-up fails, with a message that names the file or setting at fault
//! and never a secret, when the token list is malformed, when an upstream key
//! would be handed to anyone (a key and no tokens), or when anonymous access
//! would be open on a non-loopback address without `ALLOW_ANONYMOUS=true`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::clock::Clock;
use crate::config::{
    Settings, Switch, DEFAULT_LOCAL_STORE, DEFAULT_TOKENS_FILES, DEFAULT_UPSTREAM, TOKENS_FILE,
    TOKENS_SSM_PARAMETER, UPSTREAMS_FILE, UPSTREAMS_SSM_PARAMETER, UPSTREAM_API_KEY,
    UPSTREAM_API_KEY_SSM_PARAMETER, UPSTREAM_URL, USAGE_STORE,
};
use crate::console::costs::Costs;
use crate::console::session::Logins;
use crate::console::tokens::TokensApi;
use crate::console::Console;
use crate::cors::Cors;
use crate::error::ConfigError;
use crate::gateway::{Gateway, GatewayOptions};
use crate::policy::allowlist::Allowlist;
use crate::policy::spending::Spending;
use crate::proxy::{Proxy, Upstream};
use crate::record::Finish;
use crate::secret::ApiKey;
use crate::sources::cached::Cached;
use crate::sources::ssm::{self, Ssm};
use crate::spend::account::Account;
use crate::spend::enforce::{Enforce, Settle};
use crate::spend::store::Store;
use crate::stats::{self, emf::Emf, prometheus::Prometheus};
use crate::tokens::format::{self, TokenList};
use crate::tokens::{bundled, TokenSet};
use crate::upstreams::file::{self, KeySource};
use crate::upstreams::live::{self, Builder, Live};
use crate::upstreams::report::UpstreamsReport;
use crate::upstreams::Upstreams;
use crate::usage::prices::Prices;
use crate::usage::stream_usage::StreamUsage;

/// Where the gateway runs, which decides when anonymous access is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The local server; anonymous access is allowed on a loopback address.
    Local,
    /// AWS Lambda; anonymous access needs `ALLOW_ANONYMOUS=true`.
    Lambda,
}

/// The token file to read: the named one, else the first of
/// [`DEFAULT_TOKENS_FILES`] in the working directory.
pub fn tokens_file(settings: &Settings) -> Option<PathBuf> {
    settings.tokens_file.clone().or_else(|| {
        DEFAULT_TOKENS_FILES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    })
}

/// Reads and parses a token file; the error names the file.
pub fn read_tokens_file(path: &Path, settings: &Settings) -> Result<TokenList, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::TokensUnreadable {
        path: path.to_owned(),
        source,
    })?;
    format::parse(&text, settings.tokens_utc_offset).map_err(|error| ConfigError::Tokens {
        origin: format!("tokens file {}", path.display()),
        error,
    })
}

/// Where the token list comes from, in order of precedence.
enum TokenSource {
    Ssm(String),
    File(PathBuf),
    Bundled(&'static str),
    None,
}

fn token_source(settings: &Settings) -> Result<TokenSource, ConfigError> {
    match (&settings.tokens_ssm_parameter, &settings.tokens_file) {
        (Some(_), Some(_)) => Err(ConfigError::Conflict(TOKENS_SSM_PARAMETER, TOKENS_FILE)),
        (Some(name), None) => Ok(TokenSource::Ssm(name.clone())),
        (None, _) => Ok(match (tokens_file(settings), bundled::text()) {
            (Some(path), _) => TokenSource::File(path),
            (None, Some(text)) => TokenSource::Bundled(text),
            (None, None) => TokenSource::None,
        }),
    }
}

/// Builds the gateway for `mode`, writing an access-log line per request.
pub async fn build(settings: &Settings, mode: Mode) -> Result<Gateway, ConfigError> {
    Ok(Gateway::new(options(settings, mode).await?))
}

/// Opens the usage store the settings name (locally `sqlite:usage.db` by
/// default; on Lambda none), and checks that it can hold `tokens`' limits.
pub async fn usage_store(
    settings: &Settings,
    mode: Mode,
    tokens: Option<&TokenSet>,
    clock: &Clock,
) -> Result<Option<Arc<dyn Store>>, ConfigError> {
    let spec = match (&settings.usage_store, mode) {
        (Some(spec), _) => spec.as_str(),
        (None, Mode::Local) => DEFAULT_LOCAL_STORE,
        (None, Mode::Lambda) => "off",
    };
    let limited = tokens
        .into_iter()
        .flat_map(|t| t.entries())
        .find(|e| e.rules.as_ref().is_some_and(|r| r.limits.is_some()));
    let shared = spec.trim_start().starts_with("dynamodb:");
    if let Some(entry) = limited {
        if mode == Mode::Lambda && !shared {
            return Err(ConfigError::Invalid {
                setting: USAGE_STORE,
                problem: format!(
                    "the token `{}` has limits, and on Lambda they need a shared store: set USAGE_STORE=dynamodb:TABLE \
                     (a DynamoDB table; counters kept per container would multiply every limit)",
                    entry.name
                ),
            });
        }
        if spec.trim().eq_ignore_ascii_case("off") {
            return Err(ConfigError::Invalid {
                setting: USAGE_STORE,
                problem: format!(
                    "the token `{}` has limits, which USAGE_STORE=off cannot enforce; use sqlite:PATH or dynamodb:TABLE",
                    entry.name
                ),
            });
        }
    }
    let store = match crate::spend::open(spec, clock).await {
        Ok(store) => store,
        // The default is a convenience: where it cannot be (a read-only
        // working directory), and no limit needs it, the gateway runs on
        // without one, and says so.
        Err(problem) if settings.usage_store.is_none() && limited.is_none() => {
            tracing::warn!(%problem, "the default usage store cannot be opened, so usage is not stored; set USAGE_STORE");
            None
        }
        Err(problem) => {
            return Err(ConfigError::Invalid {
                setting: USAGE_STORE,
                problem,
            })
        }
    };
    if let Some(store) = &store {
        tracing::info!(store = store.name(), "usage store");
    }
    Ok(store)
}

/// What the gateway for `mode` is made of, checked; callers add hooks.
pub async fn options(settings: &Settings, mode: Mode) -> Result<GatewayOptions, ConfigError> {
    options_at(settings, mode, Clock::system()).await
}

/// [`options`], with requests judged by `clock` (a test's, that it moves).
pub async fn options_at(
    settings: &Settings,
    mode: Mode,
    clock: Clock,
) -> Result<GatewayOptions, ConfigError> {
    if settings.upstream_api_key.is_some() && settings.upstream_api_key_ssm_parameter.is_some() {
        return Err(ConfigError::Conflict(
            UPSTREAM_API_KEY,
            UPSTREAM_API_KEY_SSM_PARAMETER,
        ));
    }
    if settings.upstreams_file.is_some() && settings.upstreams_ssm_parameter.is_some() {
        return Err(ConfigError::Conflict(
            UPSTREAMS_FILE,
            UPSTREAMS_SSM_PARAMETER,
        ));
    }
    let pool_setting = match (&settings.upstreams_file, &settings.upstreams_ssm_parameter) {
        (Some(_), _) => Some(UPSTREAMS_FILE),
        (None, Some(_)) => Some(UPSTREAMS_SSM_PARAMETER),
        (None, None) => None,
    };
    if let Some(pool_setting) = pool_setting {
        if settings.upstream.is_some() {
            return Err(ConfigError::Conflict(pool_setting, UPSTREAM_URL));
        }
        if settings.upstream_api_key_ssm_parameter.is_some() {
            return Err(ConfigError::Conflict(
                pool_setting,
                UPSTREAM_API_KEY_SSM_PARAMETER,
            ));
        }
    }
    let source = token_source(settings)?;
    let origin = match &source {
        TokenSource::Ssm(name) => format!("the SSM parameter {name}"),
        TokenSource::File(path) => format!("the token file {}", path.display()),
        TokenSource::Bundled(_) => "the token list bundled into the binary".to_owned(),
        TokenSource::None => "the token list".to_owned(),
    };
    let needs_ssm = matches!(source, TokenSource::Ssm(_))
        || settings.upstream_api_key_ssm_parameter.is_some()
        || settings.upstreams_ssm_parameter.is_some();
    let ssm = if needs_ssm {
        Some(Ssm::from_env().await)
    } else {
        None
    };

    let (tokens, file_upstream, anonymous) = match source {
        TokenSource::Ssm(name) => {
            let ssm = ssm.as_ref().expect("client made for SSM sources");
            let cache = ssm::token_cache(
                ssm,
                &name,
                settings.tokens_utc_offset,
                settings.tokens_refresh(),
            );
            // A failed first load is logged by the cache and is not fatal:
            // requests get 503 until SSM answers, and never anonymous access.
            let _ = cache.load_now().await;
            (cache, None, false)
        }
        TokenSource::File(path) => {
            let list = read_tokens_file(&path, settings)?;
            tracing::info!(file = %path.display(), tokens = list.tokens.entries().len(), "token list loaded");
            stats::token_list_loaded();
            let anonymous = list.tokens.is_empty();
            (Cached::fixed(list.tokens), list.upstream, anonymous)
        }
        TokenSource::Bundled(text) => {
            let list = format::parse(text, settings.tokens_utc_offset).map_err(|error| {
                ConfigError::Tokens {
                    origin: "bundled token list".into(),
                    error,
                }
            })?;
            tracing::info!(
                source = "bundled",
                tokens = list.tokens.entries().len(),
                "token list loaded"
            );
            stats::token_list_loaded();
            let anonymous = list.tokens.is_empty();
            (Cached::fixed(list.tokens), list.upstream, anonymous)
        }
        TokenSource::None => (Cached::fixed(TokenSet::default()), None, true),
    };
    let from_file = file_upstream.is_some();
    let upstream_text = settings
        .upstream
        .clone()
        .or(file_upstream)
        .unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned());
    let upstream = Upstream::parse(&upstream_text)?;

    let upstream_key = match (
        &settings.upstream_api_key,
        &settings.upstream_api_key_ssm_parameter,
    ) {
        (Some(key), _) => Some(Cached::fixed(ApiKey::new(key.expose()).map_err(|_| {
            ConfigError::InvalidKey {
                origin: UPSTREAM_API_KEY.into(),
            }
        })?)),
        (None, Some(name)) => {
            let cache = ssm::key_cache(
                ssm.as_ref().expect("client made for SSM sources"),
                name,
                settings.tokens_refresh(),
            );
            let _ = cache.load_now().await;
            Some(cache)
        }
        (None, None) => None,
    };
    if anonymous {
        // A pool in SSM is taken to hold keys: it can gain one at any reload.
        let keyed = upstream_key.is_some()
            || settings.upstreams_file.is_some() && settings.upstream_api_key.is_some()
            || settings.upstreams_ssm_parameter.is_some();
        check_anonymous(settings, mode, keyed)?;
        tracing::warn!("no gateway tokens configured: anonymous pass-through is on");
    }
    let upstreams: Live = match (&settings.upstreams_file, &settings.upstreams_ssm_parameter) {
        (None, None) => {
            tracing::info!(%upstream, "upstream");
            let proxy = Proxy::trusting(
                upstream,
                settings.upstream_timeout(),
                settings.connect_timeout(),
                settings.upstream_ca_file.as_deref(),
            )?;
            Upstreams::single(proxy, upstream_key).into()
        }
        (file, parameter) => {
            if from_file {
                tracing::warn!(
                    "the token file names an upstream address; the pool of upstreams is used instead"
                );
            }
            match (file, parameter) {
                (Some(path), _) => pool(settings, path, ssm.as_ref()).await?.into(),
                (None, Some(name)) => {
                    let ssm = ssm.as_ref().expect("client made for SSM sources");
                    ssm_pool(settings, name, ssm).await
                }
                (None, None) => unreachable!("matched above"),
            }
        }
    };
    // Checked against what is loaded now; a reload (of either) later is
    // not refused, and a token that names an upstream no longer there
    // has fewer to go to.
    if let (Some(initial), Some(pool)) = (tokens.peek(), upstreams.peek()) {
        check_token_upstreams(&initial, &pool)?;
    }
    let initial = tokens.peek();
    let store = usage_store(settings, mode, initial.as_deref(), &clock).await?;
    // Managed tokens join the list where a store keeps them (never in
    // anonymous mode: a token would end it for everyone).
    let registry = store.as_ref().and_then(|s| s.registry());
    let config_tokens = tokens.clone();
    let tokens = match &registry {
        Some(registry) if !anonymous => {
            let merged = crate::console::managed::merged(
                tokens,
                registry.clone(),
                settings.tokens_utc_offset,
                settings.tokens_refresh(),
            );
            let _ = merged.load_now().await;
            merged
        }
        _ => tokens,
    };
    let console = Arc::new(Console {
        registry: registry.clone(),
        tokens: tokens.clone(),
        session_secs: settings.console_session_secs,
        remote_http: settings.console_allow_http,
        logins: Logins::new(LOGINS_PER_MINUTE),
        clock: clock.clone(),
    });
    let prices = Arc::new(Prices::load(settings.prices_file.as_deref())?);
    let mut hooks: Vec<Arc<dyn Finish>> = Vec::new();
    if let Some(store) = &store {
        hooks.push(Arc::new(Settle::new(store.clone(), prices.clone())));
    }
    hooks.push(Arc::new(AccessLog {
        prices: prices.clone(),
    }));
    match mode {
        Mode::Lambda if settings.metrics == Switch::On => hooks.push(Arc::new(Emf {
            namespace: settings.metrics_namespace.clone(),
            prices: prices.clone(),
        })),
        Mode::Local if settings.metrics_listen.is_some() => hooks.push(Arc::new(Prometheus {
            token_labels: settings.metrics_token_labels,
            prices: prices.clone(),
        })),
        _ => {}
    }
    let cors = match &settings.cors_allow_origins {
        Some(text) => Cors::parse(text)?,
        None => None,
    };
    if let Some(cors) = &cors {
        tracing::info!(?cors, "CORS on");
    }
    let trusted_proxies = match &settings.trusted_proxies {
        Some(text) => {
            crate::client_ip::parse_list(text).map_err(|problem| ConfigError::Invalid {
                setting: crate::config::TRUSTED_PROXIES,
                problem,
            })?
        }
        None => Vec::new(),
    };
    Ok(GatewayOptions {
        policies: vec![
            Arc::new(TokensApi {
                registry,
                tokens: tokens.clone(),
                config: config_tokens,
                origin,
                store: store.clone(),
                offset: settings.tokens_utc_offset,
                clock: clock.clone(),
                upstreams: upstreams.clone(),
            }),
            Arc::new(Costs {
                store: store.clone(),
            }),
            Arc::new(UpstreamsReport {
                upstreams: upstreams.clone(),
                clock: clock.clone(),
            }),
            Arc::new(Account {
                store: store.clone(),
            }),
            Arc::new(Spending),
            Arc::new(Allowlist),
            Arc::new(Enforce {
                store: store.clone(),
                prices,
                default_reserve: settings.usage_default_reserve_tokens,
                ttl: settings.reservation_ttl(),
                fail_mode: settings.usage_fail_mode,
            }),
            Arc::new(StreamUsage),
        ],
        max_body: settings.max_inspected_body_bytes,
        upstreams,
        anonymous,
        idle_timeout: settings.idle_timeout(),
        client_idle_timeout: settings.client_idle_timeout(),
        cors,
        hooks,
        store,
        clock,
        tokens,
        trusted_proxies,
        console: Some(console),
    })
}

/// Failed console logins allowed per client address and minute.
const LOGINS_PER_MINUTE: u32 = 10;

/// How an upstream's `key_env` is read: the environment, where
/// `UPSTREAM_API_KEY` may also have come from the command line.
fn key_env(settings: &Settings) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
    let given = settings
        .upstream_api_key
        .as_ref()
        .map(|k| k.expose().to_owned());
    move |name: &str| match (name, &given) {
        (UPSTREAM_API_KEY, Some(key)) => Some(key.clone()),
        _ => std::env::var(name).ok(),
    }
}

/// What each upstream of a pool is made with.
fn builder(settings: &Settings, ssm: Option<Ssm>) -> Builder {
    Builder::new(
        settings.upstream_timeout(),
        settings.connect_timeout(),
        settings.upstream_ca_file.clone(),
        usize::try_from(settings.upstream_max_attempts).unwrap_or(1),
        std::time::Duration::from_secs(settings.upstream_first_token_timeout_secs),
        settings.tokens_refresh(),
        ssm,
    )
}

/// The pool of upstreams `UPSTREAMS_FILE` names, each with its own
/// connections and key; keys named by `key_env` are read from the
/// environment (`UPSTREAM_API_KEY` too, if an entry names it). An SSM
/// client is made only if an entry's key is in SSM (`ssm`, when the token
/// list made one already).
async fn pool(
    settings: &Settings,
    path: &Path,
    ssm: Option<&Ssm>,
) -> Result<Upstreams, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::UpstreamsUnreadable {
            path: path.to_owned(),
            source,
        })?;
    let specs = file::parse(&text, key_env(settings)).map_err(|error| ConfigError::Upstreams {
        path: path.to_owned(),
        problem: error.to_string(),
    })?;
    let needs_ssm = specs.iter().any(|s| matches!(s.key, KeySource::Ssm(_)));
    let ssm = match ssm {
        Some(ssm) => Some(ssm.clone()),
        None if needs_ssm => Some(Ssm::from_env().await),
        None => None,
    };
    let upstreams = builder(settings, ssm).build(specs)?;
    load_keys(&upstreams).await;
    Ok(upstreams)
}

/// Reads the keys in SSM before the first request (a failure is logged,
/// and that upstream's attempts wait for a later read).
async fn load_keys(upstreams: &Upstreams) {
    for member in upstreams.members() {
        if let Some(key) = member.key.as_ref().filter(|k| k.peek().is_none()) {
            let _ = key.load_now().await;
        }
    }
}

/// The pool of upstreams in the SSM parameter `name`, loaded now and
/// reloaded every `TOKENS_REFRESH_SECS`. A first load that fails is logged
/// and is not fatal: requests get `503` until SSM answers with a good pool.
async fn ssm_pool(settings: &Settings, name: &str, ssm: &Ssm) -> Live {
    let builder = Arc::new(builder(settings, Some(ssm.clone())));
    let cache = live::ssm_cache(
        ssm,
        name,
        builder,
        key_env(settings),
        settings.tokens_refresh(),
    );
    if let Ok(upstreams) = cache.load_now().await {
        load_keys(&upstreams).await;
    }
    Live::Reloaded {
        source: cache,
        local: None,
    }
}

/// Refuses a token whose `upstreams` names one the pool does not have (a
/// typo would leave the token with fewer upstreams than meant, or none).
fn check_token_upstreams(tokens: &TokenSet, upstreams: &Upstreams) -> Result<(), ConfigError> {
    for entry in tokens.entries() {
        let named = entry.rules.as_ref().and_then(|r| r.upstreams.as_ref());
        for name in named.into_iter().flatten() {
            if !upstreams.members().iter().any(|m| *m.name == **name) {
                return Err(ConfigError::Invalid {
                    setting: UPSTREAMS_FILE,
                    problem: format!(
                        "the token `{}` names the upstream `{name}`, which is not among the upstreams ({:?})",
                        entry.name, upstreams
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Refuses anonymous mode where it would expose the upstream or a key.
fn check_anonymous(settings: &Settings, mode: Mode, has_key: bool) -> Result<(), ConfigError> {
    if has_key {
        return Err(ConfigError::Unsafe(
            "an upstream key is configured (UPSTREAM_API_KEY or \
             UPSTREAM_API_KEY_SSM_PARAMETER) but no gateway tokens are, so anyone could spend the key. \
             Configure tokens (TOKENS_SSM_PARAMETER, TOKENS_FILE, tokens.json or appsettings.json)."
                .into(),
        ));
    }
    let loopback = mode == Mode::Local && settings.listen.ip().is_loopback();
    if !loopback && !settings.allow_anonymous {
        let place = match mode {
            Mode::Local => format!("listen address {} is not loopback", settings.listen),
            Mode::Lambda => "this is a Lambda function".to_owned(),
        };
        return Err(ConfigError::Unsafe(format!(
            "no gateway tokens are configured and {place}. \
             Configure tokens (TOKENS_FILE, tokens.json or appsettings.json), or set ALLOW_ANONYMOUS=true to run an open proxy."
        )));
    }
    Ok(())
}
