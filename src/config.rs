//! Settings: every environment variable by name, their defaults, validation.
//!
//! | flag | variable | default | meaning |
//! |---|---|---|---|
//! | `--listen` | `GATEWAY_LISTEN` | `127.0.0.1:8080` | local server address |
//! | `--upstream` | `UPSTREAM_URL` | `https://api.openai.com` | where requests go; a path prefix is kept |
//! | `--tokens-file` | `TOKENS_FILE` | `tokens.json` if present | token list file |
//! | `--tokens-ssm-parameter` | `TOKENS_SSM_PARAMETER` | none | SSM parameter with the token list |
//! | | `UPSTREAM_API_KEY` | none | OpenAI key injected upstream |
//! | `--upstream-api-key-ssm-parameter` | `UPSTREAM_API_KEY_SSM_PARAMETER` | none | SSM parameter with that key |
//! | `--tokens-refresh-secs` | `TOKENS_REFRESH_SECS` | 60 | SSM cache lifetime |
//! | | `UPSTREAM_TIMEOUT_SECS` | 900 | wait for upstream response headers |
//! | | `UPSTREAM_CONNECT_TIMEOUT_SECS` | 10 | TCP + TLS connect |
//! | | `UPSTREAM_IDLE_TIMEOUT_SECS` | 300 | longest silence inside a response body |
//! | | `ALLOW_ANONYMOUS` | false | allow no tokens on a non-loopback address |
//! | | `TOKENS_UTC_OFFSET` | `+00:00` | zone of expiry times written without one |
//! | | `SHUTDOWN_GRACE_SECS` | 30 | how long in-flight requests may finish on SIGTERM |
//! | | `LOG_FORMAT` | `text` (`json` on Lambda) | `json` for one JSON object a line |
//! | | `GATEWAY_INVOKE_MODE` | `RESPONSE_STREAM` | Lambda only: or `BUFFERED` |
//! | `--cors-allow-origins` | `CORS_ALLOW_ORIGINS` | off | browser origins, comma-separated, or `*` |
//! | `--worker-threads` | `GATEWAY_WORKER_THREADS` | cores | runtime threads; 1 = single-threaded |
//! | | `RUST_LOG` | `info` | log level filter |

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::FixedOffset;
use clap::Args;

use crate::secret::Secret;
use crate::tokens::format;

/// `GATEWAY_LISTEN`: the local server's address.
pub const GATEWAY_LISTEN: &str = "GATEWAY_LISTEN";
/// `UPSTREAM_URL`: the API base URL.
pub const UPSTREAM_URL: &str = "UPSTREAM_URL";
/// `TOKENS_FILE`: the token list file.
pub const TOKENS_FILE: &str = "TOKENS_FILE";
/// `UPSTREAM_API_KEY`: the injected upstream key.
pub const UPSTREAM_API_KEY: &str = "UPSTREAM_API_KEY";
/// `UPSTREAM_TIMEOUT_SECS`: wait for response headers.
pub const UPSTREAM_TIMEOUT_SECS: &str = "UPSTREAM_TIMEOUT_SECS";
/// `UPSTREAM_CONNECT_TIMEOUT_SECS`: connect timeout.
pub const UPSTREAM_CONNECT_TIMEOUT_SECS: &str = "UPSTREAM_CONNECT_TIMEOUT_SECS";
/// `UPSTREAM_IDLE_TIMEOUT_SECS`: longest silence inside a response body.
pub const UPSTREAM_IDLE_TIMEOUT_SECS: &str = "UPSTREAM_IDLE_TIMEOUT_SECS";
/// `ALLOW_ANONYMOUS`: permit running with no tokens on a public address.
pub const ALLOW_ANONYMOUS: &str = "ALLOW_ANONYMOUS";
/// `TOKENS_UTC_OFFSET`: zone of expiry times written without an offset.
pub const TOKENS_UTC_OFFSET: &str = "TOKENS_UTC_OFFSET";
/// `SHUTDOWN_GRACE_SECS`: graceful-shutdown window.
pub const SHUTDOWN_GRACE_SECS: &str = "SHUTDOWN_GRACE_SECS";
/// `GATEWAY_WORKER_THREADS`: runtime worker threads.
pub const GATEWAY_WORKER_THREADS: &str = "GATEWAY_WORKER_THREADS";
/// `LOG_FORMAT`: `json` or `text`.
pub const LOG_FORMAT: &str = "LOG_FORMAT";

/// The default upstream.
pub const DEFAULT_UPSTREAM: &str = "https://api.openai.com";
/// The token file read from the working directory when none is named.
pub const DEFAULT_TOKENS_FILE: &str = "tokens.json";

/// Settings shared by every mode, each from a flag or its environment variable
/// (the flag wins).
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address the local server listens on.
    #[arg(long, env = GATEWAY_LISTEN, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Upstream base URL [default: https://api.openai.com, or the address in an original appsettings.json].
    #[arg(long, env = UPSTREAM_URL)]
    pub upstream: Option<String>,

    /// Token list file [default: ./tokens.json when present].
    #[arg(long, env = TOKENS_FILE)]
    pub tokens_file: Option<PathBuf>,

    /// SSM parameter holding the token list (read with decryption, refreshed).
    #[arg(long, env = crate::tokens::ssm::TOKENS_SSM_PARAMETER)]
    pub tokens_ssm_parameter: Option<String>,

    /// SSM parameter holding the injected OpenAI key.
    #[arg(long, env = crate::tokens::ssm::UPSTREAM_API_KEY_SSM_PARAMETER)]
    pub upstream_api_key_ssm_parameter: Option<String>,

    /// Seconds before cached SSM values are refreshed.
    #[arg(long, env = crate::tokens::ssm::TOKENS_REFRESH_SECS, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub tokens_refresh_secs: u64,

    /// OpenAI key injected upstream (environment only, so it never shows in `ps`).
    #[arg(skip = std::env::var(UPSTREAM_API_KEY).ok().filter(|v| !v.is_empty()).map(Secret::new))]
    pub upstream_api_key: Option<Secret>,

    /// Seconds to wait for the upstream's response headers.
    #[arg(long, env = UPSTREAM_TIMEOUT_SECS, default_value_t = 900)]
    pub upstream_timeout_secs: u64,

    /// Seconds allowed to connect to the upstream (TCP and TLS).
    #[arg(long, env = UPSTREAM_CONNECT_TIMEOUT_SECS, default_value_t = 10)]
    pub upstream_connect_timeout_secs: u64,

    /// Longest silence, in seconds, inside a response body before the stream is cut.
    #[arg(long, env = UPSTREAM_IDLE_TIMEOUT_SECS, default_value_t = 300)]
    pub upstream_idle_timeout_secs: u64,

    /// Allow running without tokens on a non-loopback address.
    #[arg(long, env = ALLOW_ANONYMOUS, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub allow_anonymous: bool,

    /// UTC offset of expiry times written without one, e.g. +08:00.
    #[arg(long, env = TOKENS_UTC_OFFSET, default_value = "+00:00", value_parser = format::parse_offset)]
    pub tokens_utc_offset: FixedOffset,

    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C.
    #[arg(long, env = SHUTDOWN_GRACE_SECS, default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Origins allowed to call from a browser: a comma-separated list, or `*`. Off when unset.
    #[arg(long, env = crate::cors::CORS_ALLOW_ORIGINS)]
    pub cors_allow_origins: Option<String>,

    /// Runtime worker threads [default: one per core]; 1 runs everything on one thread.
    #[arg(long, env = GATEWAY_WORKER_THREADS, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// Log format: text or json [default: text locally, json on Lambda].
    #[arg(long, env = LOG_FORMAT, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
}

impl Settings {
    /// Settings from the environment alone, with defaults (Lambda mode, tests).
    pub fn from_env() -> Result<Self, clap::Error> {
        use clap::{FromArgMatches, Parser};
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        let matches =
            <Only as clap::CommandFactory>::command().try_get_matches_from(["chatgpt-gateway"])?;
        Only::from_arg_matches(&matches).map(|o| o.settings)
    }

    /// SSM refresh period.
    pub fn tokens_refresh(&self) -> Duration {
        Duration::from_secs(self.tokens_refresh_secs)
    }
    /// Header wait.
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_timeout_secs)
    }
    /// Connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_connect_timeout_secs)
    }
    /// Body idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_idle_timeout_secs)
    }
    /// Graceful-shutdown window.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// The upstream's base URL, validated: `http(s)://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `scheme://authority` followed by the prefix, with no trailing slash.
    base: String,
    /// The authority, for the Host header and logs.
    authority: String,
}

impl Upstream {
    /// Parses and checks an upstream URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(text.trim())
            .map_err(|e| format!("upstream URL `{text}` is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "upstream URL `{text}` must start with http:// or https://"
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("upstream URL `{text}` has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the upstream URL must not carry credentials; use UPSTREAM_API_KEY".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "upstream URL `{text}` must not have a query or fragment"
            ));
        }
        let authority = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let prefix = url.path().trim_end_matches('/');
        Ok(Self {
            base: format!("{}://{authority}{prefix}", url.scheme()),
            authority,
        })
    }

    /// `scheme://authority/prefix` without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `host[:port]`.
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_keeps_prefix_and_drops_trailing_slash() {
        let u = Upstream::parse("http://127.0.0.1:9000/openai/").unwrap();
        assert_eq!(u.base(), "http://127.0.0.1:9000/openai");
        assert_eq!(u.authority(), "127.0.0.1:9000");
        assert_eq!(
            Upstream::parse("https://api.openai.com/").unwrap().base(),
            "https://api.openai.com"
        );
        for bad in [
            "ftp://x",
            "not a url",
            "https://u:p@x",
            "https://x/?a=1",
            "/relative",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
    }
}
