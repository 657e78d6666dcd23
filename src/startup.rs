//! From settings to a ready [`Gateway`]: token source, upstream, safety checks.
//!
//! Start-up fails, with a message that names the file or setting at fault
//! and never a secret, when the token list is malformed, when an upstream key
//! would be handed to anyone (a key and no tokens), or when anonymous access
//! would be open on a non-loopback address without `ALLOW_ANONYMOUS=true`.

use std::path::{Path, PathBuf};

use crate::config::{Settings, Upstream, DEFAULT_TOKENS_FILE, DEFAULT_UPSTREAM};
use crate::handler::Gateway;
use crate::proxy::Proxy;
use crate::tokens::cache::Cached;
use crate::tokens::format::{self, TokenList};
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

/// Builds the gateway for `mode`.
pub async fn build(settings: &Settings, mode: Mode) -> Result<Gateway, StartupError> {
    let (tokens, file_upstream) = match (tokens_file(settings), bundled_tokens()) {
        (Some(path), _) => {
            let list = read_tokens_file(&path, settings)?;
            tracing::info!(file = %path.display(), tokens = list.tokens.entries().len(), "token list loaded");
            (list.tokens, list.upstream)
        }
        (None, Some(text)) => {
            let list = format::parse(text, settings.tokens_utc_offset)
                .map_err(|e| StartupError(format!("bundled token list: {e}")))?;
            tracing::info!(source = "bundled", tokens = list.tokens.entries().len(), "token list loaded");
            (list.tokens, list.upstream)
        }
        (None, None) => (TokenSet::default(), None),
    };
    let upstream_text = settings
        .upstream
        .clone()
        .or(file_upstream)
        .unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned());
    let upstream = Upstream::parse(&upstream_text).map_err(StartupError)?;

    let anonymous = tokens.is_empty();
    if anonymous {
        check_anonymous(settings, mode)?;
        tracing::warn!("no gateway tokens configured: anonymous pass-through is on");
    }
    let proxy = Proxy::new(
        upstream,
        settings.upstream_timeout(),
        settings.connect_timeout(),
    )
    .map_err(StartupError)?;
    tracing::info!(upstream = %proxy.upstream().base(), "upstream");
    Ok(Gateway::new(
        proxy,
        Cached::fixed(tokens),
        settings.upstream_api_key.clone().map(Cached::fixed),
        anonymous,
        settings.idle_timeout(),
    ))
}

/// Refuses anonymous mode where it would expose the upstream or a key.
fn check_anonymous(settings: &Settings, mode: Mode) -> Result<(), StartupError> {
    if settings.upstream_api_key.is_some() {
        return Err(StartupError(
            "refusing to start: UPSTREAM_API_KEY is set but no gateway tokens are configured, \
             so anyone could spend the key. Configure tokens (TOKENS_FILE or tokens.json)."
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
