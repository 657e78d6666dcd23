//! From settings to a ready [`Gateway`]: token source, upstream, safety checks.
//!
//! Start-up fails, with a message that names the file or setting at fault
//! and never a secret, when the token list is malformed, when an upstream key
//! would be handed to anyone (a key and no tokens), or when anonymous access
//! would be open on a non-loopback address without `ALLOW_ANONYMOUS=true`.

use std::path::{Path, PathBuf};

use crate::config::{Settings, Upstream, DEFAULT_TOKENS_FILE, DEFAULT_UPSTREAM};
use crate::cors::Cors;
use crate::handler::Gateway;
use crate::proxy::Proxy;
use crate::tokens::cache::Cached;
use crate::tokens::format::{self, TokenList};
use crate::tokens::ssm::{self, Ssm};
use crate::tokens::TokenSet;

/// Where the gateway runs, which decides when anonymous access is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The local server; anonymous access is allowed on a loopback address.
    Local,
    /// AWS Lambda; anonymous access needs `ALLOW_ANONYMOUS=true`.
    Lambda,
}

/// A start-up failure, printed as is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

/// The token file to read: the named one, else `./tokens.json` when present.
pub fn tokens_file(settings: &Settings) -> Option<PathBuf> {
    settings.tokens_file.clone().or_else(|| {
        let default = PathBuf::from(DEFAULT_TOKENS_FILE);
        default.is_file().then_some(default)
    })
}

/// The token list compiled into the binary (see `build.rs` and `bundle/`), if any.
pub fn bundled_tokens() -> Option<&'static str> {
    bundled::BUNDLED_TOKENS
}

mod bundled {
    include!(concat!(env!("OUT_DIR"), "/bundled_tokens.rs"));
}

/// Reads and parses a token file; the error names the file.
pub fn read_tokens_file(path: &Path, settings: &Settings) -> Result<TokenList, StartupError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StartupError(format!("tokens file {}: cannot read: {e}", path.display())))?;
    format::parse(&text, settings.tokens_utc_offset)
        .map_err(|e| StartupError(format!("tokens file {}: {e}", path.display())))
}

/// Where the token list comes from, in order of precedence.
enum TokenSource {
    Ssm(String),
    File(PathBuf),
    Bundled(&'static str),
    None,
}

fn token_source(settings: &Settings) -> Result<TokenSource, StartupError> {
    match (&settings.tokens_ssm_parameter, &settings.tokens_file) {
        (Some(_), Some(_)) => Err(StartupError(
            "both TOKENS_SSM_PARAMETER and TOKENS_FILE are set; choose one token source".into(),
        )),
        (Some(name), None) => Ok(TokenSource::Ssm(name.clone())),
        (None, _) => Ok(match (tokens_file(settings), bundled_tokens()) {
            (Some(path), _) => TokenSource::File(path),
            (None, Some(text)) => TokenSource::Bundled(text),
            (None, None) => TokenSource::None,
        }),
    }
}

/// Builds the gateway for `mode`.
pub async fn build(settings: &Settings, mode: Mode) -> Result<Gateway, StartupError> {
    if settings.upstream_api_key.is_some() && settings.upstream_api_key_ssm_parameter.is_some() {
        return Err(StartupError(
            "both UPSTREAM_API_KEY and UPSTREAM_API_KEY_SSM_PARAMETER are set; choose one".into(),
        ));
    }
    let source = token_source(settings)?;
    let needs_ssm =
        matches!(source, TokenSource::Ssm(_)) || settings.upstream_api_key_ssm_parameter.is_some();
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
            let anonymous = list.tokens.is_empty();
            (Cached::fixed(list.tokens), list.upstream, anonymous)
        }
        TokenSource::Bundled(text) => {
            let list = format::parse(text, settings.tokens_utc_offset)
                .map_err(|e| StartupError(format!("bundled token list: {e}")))?;
            tracing::info!(
                source = "bundled",
                tokens = list.tokens.entries().len(),
                "token list loaded"
            );
            let anonymous = list.tokens.is_empty();
            (Cached::fixed(list.tokens), list.upstream, anonymous)
        }
        TokenSource::None => (Cached::fixed(TokenSet::default()), None, true),
    };
    let upstream_text = settings
        .upstream
        .clone()
        .or(file_upstream)
        .unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned());
    let upstream = Upstream::parse(&upstream_text).map_err(StartupError)?;

    let upstream_key = match (
        &settings.upstream_api_key,
        &settings.upstream_api_key_ssm_parameter,
    ) {
        (Some(key), _) => Some(Cached::fixed(key.clone())),
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
        check_anonymous(settings, mode, upstream_key.is_some())?;
        tracing::warn!("no gateway tokens configured: anonymous pass-through is on");
    }
    let proxy = Proxy::new(
        upstream,
        settings.upstream_timeout(),
        settings.connect_timeout(),
    )
    .map_err(StartupError)?;
    tracing::info!(upstream = %proxy.upstream().base(), "upstream");
    let cors = match &settings.cors_allow_origins {
        Some(text) => Cors::parse(text).map_err(StartupError)?,
        None => None,
    };
    if let Some(cors) = &cors {
        tracing::info!(?cors, "CORS on");
    }
    Ok(Gateway::new(
        proxy,
        tokens,
        upstream_key,
        anonymous,
        settings.idle_timeout(),
    )
    .with_cors(cors))
}

/// Refuses anonymous mode where it would expose the upstream or a key.
fn check_anonymous(settings: &Settings, mode: Mode, has_key: bool) -> Result<(), StartupError> {
    if has_key {
        return Err(StartupError(
            "refusing to start: an upstream key is configured (UPSTREAM_API_KEY or \
             UPSTREAM_API_KEY_SSM_PARAMETER) but no gateway tokens are, so anyone could spend the key. \
             Configure tokens (TOKENS_SSM_PARAMETER, TOKENS_FILE or tokens.json)."
                .into(),
        ));
    }
    let loopback = mode == Mode::Local && settings.listen.ip().is_loopback();
    if !loopback && !settings.allow_anonymous {
        let place = match mode {
            Mode::Local => format!("listen address {} is not loopback", settings.listen),
            Mode::Lambda => "this is a Lambda function".to_owned(),
        };
        return Err(StartupError(format!(
            "refusing to start: no gateway tokens are configured and {place}. \
             Configure tokens (TOKENS_FILE or tokens.json), or set ALLOW_ANONYMOUS=true to run an open proxy."
        )));
    }
    Ok(())
}
