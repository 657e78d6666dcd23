//! Settings: every environment variable by name, their defaults, validation.
//!
//! Each setting comes from a flag or its environment variable (the flag
//! wins). [`SETTINGS`] is the one table of them: `docs/configuration.md`
//! shows it, and a test checks that the table, that page and the command
//! line agree.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::FixedOffset;
use clap::Args;

use crate::error::ConfigError;
use crate::secret::Secret;
use crate::tokens::format;

/// `GATEWAY_LISTEN`: the local server's address.
pub const GATEWAY_LISTEN: &str = "GATEWAY_LISTEN";
/// `UPSTREAM_URL`: the API base URL.
pub const UPSTREAM_URL: &str = "UPSTREAM_URL";
/// `TOKENS_FILE`: the token list file.
pub const TOKENS_FILE: &str = "TOKENS_FILE";
/// `TOKENS_SSM_PARAMETER`: the SSM parameter holding the token list.
pub const TOKENS_SSM_PARAMETER: &str = "TOKENS_SSM_PARAMETER";
/// `TOKENS_REFRESH_SECS`: how old a cached SSM value may get before a refresh.
pub const TOKENS_REFRESH_SECS: &str = "TOKENS_REFRESH_SECS";
/// `UPSTREAMS_FILE`: a pool of upstreams (names, keys, models, priorities).
pub const UPSTREAMS_FILE: &str = "UPSTREAMS_FILE";
/// `UPSTREAMS_SSM_PARAMETER`: the SSM parameter holding that pool, refreshed.
pub const UPSTREAMS_SSM_PARAMETER: &str = "UPSTREAMS_SSM_PARAMETER";
/// `UPSTREAM_MAX_ATTEMPTS`: the most upstreams one request tries.
pub const UPSTREAM_MAX_ATTEMPTS: &str = "UPSTREAM_MAX_ATTEMPTS";
/// `UPSTREAM_FIRST_TOKEN_TIMEOUT_SECS`: how long a pooled stream is held for its first output.
pub const UPSTREAM_FIRST_TOKEN_TIMEOUT_SECS: &str = "UPSTREAM_FIRST_TOKEN_TIMEOUT_SECS";
/// `UPSTREAM_API_KEY`: the injected upstream key.
pub const UPSTREAM_API_KEY: &str = "UPSTREAM_API_KEY";
/// `UPSTREAM_API_KEY_SSM_PARAMETER`: the SSM parameter holding the injected key.
pub const UPSTREAM_API_KEY_SSM_PARAMETER: &str = "UPSTREAM_API_KEY_SSM_PARAMETER";
/// `UPSTREAM_TIMEOUT_SECS`: wait for response headers.
pub const UPSTREAM_TIMEOUT_SECS: &str = "UPSTREAM_TIMEOUT_SECS";
/// `UPSTREAM_CONNECT_TIMEOUT_SECS`: connect timeout.
pub const UPSTREAM_CONNECT_TIMEOUT_SECS: &str = "UPSTREAM_CONNECT_TIMEOUT_SECS";
/// `UPSTREAM_IDLE_TIMEOUT_SECS`: longest silence inside a response body.
pub const UPSTREAM_IDLE_TIMEOUT_SECS: &str = "UPSTREAM_IDLE_TIMEOUT_SECS";
/// `CLIENT_IDLE_TIMEOUT_SECS`: longest silence from a client (upload) or refusal to read (download).
pub const CLIENT_IDLE_TIMEOUT_SECS: &str = "CLIENT_IDLE_TIMEOUT_SECS";
/// `MAX_INSPECTED_BODY_BYTES`: the most of a request body read to find its model.
pub const MAX_INSPECTED_BODY_BYTES: &str = "MAX_INSPECTED_BODY_BYTES";
/// `PRICES_FILE`: model prices over the bundled table.
pub const PRICES_FILE: &str = "PRICES_FILE";
/// `METRICS`: `off` turns the CloudWatch EMF documents off (Lambda).
pub const METRICS: &str = "METRICS";
/// `METRICS_NAMESPACE`: the CloudWatch namespace of the EMF metrics.
pub const METRICS_NAMESPACE: &str = "METRICS_NAMESPACE";
/// `METRICS_LISTEN`: the local server's separate listener for `/metrics` and `/healthz`.
pub const METRICS_LISTEN: &str = "METRICS_LISTEN";
/// `METRICS_TOKEN_LABELS`: label Prometheus request and token counters with the token's name.
pub const METRICS_TOKEN_LABELS: &str = "METRICS_TOKEN_LABELS";
/// `UPSTREAM_CA_FILE`: PEM certificates trusted for the upstream besides the bundled roots.
pub const UPSTREAM_CA_FILE: &str = "UPSTREAM_CA_FILE";
/// `USAGE_STORE`: where usage and limits' counters are kept.
pub const USAGE_STORE: &str = "USAGE_STORE";
/// `USAGE_FAIL_MODE`: what requests with limits get while the store is down.
pub const USAGE_FAIL_MODE: &str = "USAGE_FAIL_MODE";
/// `USAGE_RESERVATION_TTL_SECS`: when an unsettled reservation stops counting.
pub const USAGE_RESERVATION_TTL_SECS: &str = "USAGE_RESERVATION_TTL_SECS";
/// `USAGE_DEFAULT_RESERVE_TOKENS`: the output reserved when a request sets no maximum.
pub const USAGE_DEFAULT_RESERVE_TOKENS: &str = "USAGE_DEFAULT_RESERVE_TOKENS";
/// `ALLOW_ANONYMOUS`: permit running with no tokens on a public address.
pub const ALLOW_ANONYMOUS: &str = "ALLOW_ANONYMOUS";
/// `TOKENS_UTC_OFFSET`: zone of expiry times written without an offset.
pub const TOKENS_UTC_OFFSET: &str = "TOKENS_UTC_OFFSET";
/// `SHUTDOWN_GRACE_SECS`: graceful-shutdown window.
pub const SHUTDOWN_GRACE_SECS: &str = "SHUTDOWN_GRACE_SECS";
/// `CORS_ALLOW_ORIGINS`: the origins allowed to call the gateway from a browser.
pub const CORS_ALLOW_ORIGINS: &str = "CORS_ALLOW_ORIGINS";
/// `CONSOLE_SESSION_SECS`: how long a console session lasts.
pub const CONSOLE_SESSION_SECS: &str = "CONSOLE_SESSION_SECS";
/// `CONSOLE_ALLOW_HTTP`: answer the console over plain http from other machines.
pub const CONSOLE_ALLOW_HTTP: &str = "CONSOLE_ALLOW_HTTP";
/// `TRUSTED_PROXIES`: the proxies whose `X-Forwarded-For` names the client.
pub const TRUSTED_PROXIES: &str = "TRUSTED_PROXIES";
/// `GATEWAY_WORKER_THREADS`: runtime worker threads.
pub const GATEWAY_WORKER_THREADS: &str = "GATEWAY_WORKER_THREADS";
/// `LOG_FORMAT`: `json` or `text`.
pub const LOG_FORMAT: &str = "LOG_FORMAT";
/// `GATEWAY_INVOKE_MODE`: Lambda's `RESPONSE_STREAM` (default) or `BUFFERED`.
pub const GATEWAY_INVOKE_MODE: &str = "GATEWAY_INVOKE_MODE";
/// `AWS_LAMBDA_RUNTIME_API`: set by Lambda (and `cargo lambda watch`); selects Lambda mode.
pub const AWS_LAMBDA_RUNTIME_API: &str = "AWS_LAMBDA_RUNTIME_API";
/// `RUST_LOG`: the log filter.
pub const RUST_LOG: &str = "RUST_LOG";

/// The local server's usage store when none is named.
pub const DEFAULT_LOCAL_STORE: &str = "sqlite:usage.db";

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// What requests whose token has limits get while the usage store is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailMode {
    /// Served without enforcement; usage is kept in memory until the store is back.
    Open,
    /// `503 usage_store_unavailable`.
    Closed,
}

/// The default upstream.
pub const DEFAULT_UPSTREAM: &str = "https://api.openai.com";
/// The token files read from the working directory when none is named, the
/// first that exists: the native name, then the original's `appsettings.json`
/// (so the original's deployment works with its file where it was).
pub const DEFAULT_TOKENS_FILES: [&str; 2] = ["tokens.json", "appsettings.json"];

/// One row of the settings table.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The command-line flag, if the setting has one.
    pub flag: Option<&'static str>,
    /// The environment variable.
    pub var: &'static str,
    /// The default, as shown to people.
    pub default: &'static str,
    /// What it does.
    pub meaning: &'static str,
}

const fn flag(
    flag: &'static str,
    var: &'static str,
    default: &'static str,
    meaning: &'static str,
) -> Setting {
    Setting {
        flag: Some(flag),
        var,
        default,
        meaning,
    }
}

const fn env(var: &'static str, default: &'static str, meaning: &'static str) -> Setting {
    Setting {
        flag: None,
        var,
        default,
        meaning,
    }
}

/// Every setting, in the order the documentation lists them.
pub const SETTINGS: &[Setting] = &[
    flag(
        "--listen",
        GATEWAY_LISTEN,
        "`127.0.0.1:8080`",
        "address of the local server",
    ),
    flag(
        "--upstream",
        UPSTREAM_URL,
        "`https://api.openai.com`",
        "where requests go; a path prefix (`http://host:port/openai`) is kept",
    ),
    flag(
        "--upstreams-file",
        UPSTREAMS_FILE,
        "none",
        "a pool of upstreams with their keys, models, priorities and weights, tried in turn (docs/upstreams.md); excludes `UPSTREAM_URL`",
    ),
    flag(
        "--upstreams-ssm-parameter",
        UPSTREAMS_SSM_PARAMETER,
        "none",
        "that pool from SSM Parameter Store instead, reloaded as the token list is (`TOKENS_REFRESH_SECS`)",
    ),
    flag(
        "--upstream-max-attempts",
        UPSTREAM_MAX_ATTEMPTS,
        "3",
        "the most upstreams of the pool one request tries before the client gets the last answer",
    ),
    flag(
        "--upstream-first-token-timeout-secs",
        UPSTREAM_FIRST_TOKEN_TIMEOUT_SECS,
        "30",
        "with a pool: how long a stream's `200` is held for its first output, so that a stream failing before it fails over",
    ),
    flag(
        "--tokens-file",
        TOKENS_FILE,
        "`./tokens.json`, else `./appsettings.json`, if present",
        "the token list",
    ),
    flag(
        "--tokens-ssm-parameter",
        TOKENS_SSM_PARAMETER,
        "none",
        "the token list from SSM Parameter Store instead",
    ),
    flag(
        "--tokens-refresh-secs",
        TOKENS_REFRESH_SECS,
        "60",
        "how long SSM values are cached before a refresh",
    ),
    env(
        UPSTREAM_API_KEY,
        "none",
        "OpenAI key the gateway injects (environment only, so it never shows in `ps`)",
    ),
    flag(
        "--upstream-api-key-ssm-parameter",
        UPSTREAM_API_KEY_SSM_PARAMETER,
        "none",
        "that key from SSM instead",
    ),
    flag(
        "--upstream-timeout-secs",
        UPSTREAM_TIMEOUT_SECS,
        "900",
        "wait for the upstream's response headers, then 504",
    ),
    flag(
        "--upstream-connect-timeout-secs",
        UPSTREAM_CONNECT_TIMEOUT_SECS,
        "10",
        "TCP + TLS connect, then 502",
    ),
    flag(
        "--upstream-idle-timeout-secs",
        UPSTREAM_IDLE_TIMEOUT_SECS,
        "300",
        "longest silence inside a response body before the stream is cut",
    ),
    flag(
        "--client-idle-timeout-secs",
        CLIENT_IDLE_TIMEOUT_SECS,
        "300",
        "longest a client may send no body bytes, or (local server) accept none, before it is cut off",
    ),
    flag(
        "--max-inspected-body-bytes",
        MAX_INSPECTED_BODY_BYTES,
        "33554432 (32 MiB)",
        "the most of a request body the rules read (its model, limits' counts), for tokens with `models` or limits (over it: 413)",
    ),
    flag(
        "--prices-file",
        PRICES_FILE,
        "the bundled table",
        "model prices (USD per 1M tokens) that override and extend the bundled ones",
    ),
    flag(
        "--allow-anonymous",
        ALLOW_ANONYMOUS,
        "false",
        "allow running with no tokens on a non-loopback address",
    ),
    flag(
        "--tokens-utc-offset",
        TOKENS_UTC_OFFSET,
        "`+00:00`",
        "zone of expiry times written without an offset",
    ),
    flag(
        "--upstream-ca-file",
        UPSTREAM_CA_FILE,
        "none",
        "PEM certificates the upstream's TLS may chain to, besides the Mozilla roots built in (e.g. a corporate proxy's CA)",
    ),
    flag(
        "--metrics",
        METRICS,
        "`on`",
        "Lambda: one CloudWatch EMF document per request on stdout; `off` turns them off",
    ),
    flag(
        "--metrics-namespace",
        METRICS_NAMESPACE,
        "`ChatGptGateway`",
        "the CloudWatch namespace of the EMF metrics",
    ),
    flag(
        "--metrics-listen",
        METRICS_LISTEN,
        "off",
        "local server: a separate address (e.g. `127.0.0.1:9464`) serving Prometheus `/metrics` and `/healthz`",
    ),
    flag(
        "--metrics-token-labels",
        METRICS_TOKEN_LABELS,
        "`false`",
        "add a `token` label (the entry's name) to the request and token counters",
    ),
    flag(
        "--usage-store",
        USAGE_STORE,
        "`sqlite:usage.db` (none on Lambda)",
        "`sqlite:PATH`, `dynamodb:TABLE` or `off`: where usage and limits are counted",
    ),
    flag(
        "--usage-fail-mode",
        USAGE_FAIL_MODE,
        "`open`",
        "store down: `open` serves unenforced (usage kept in memory), `closed` answers 503 to tokens with limits",
    ),
    flag(
        "--usage-reservation-ttl-secs",
        USAGE_RESERVATION_TTL_SECS,
        "upstream timeout + 60",
        "when a reservation left by a dead process stops counting",
    ),
    flag(
        "--usage-default-reserve-tokens",
        USAGE_DEFAULT_RESERVE_TOKENS,
        "1024",
        "output tokens reserved for a request that sets no maximum",
    ),
    flag(
        "--shutdown-grace-secs",
        SHUTDOWN_GRACE_SECS,
        "30",
        "on SIGTERM/Ctrl-C, how long in-flight requests may finish",
    ),
    flag(
        "--cors-allow-origins",
        CORS_ALLOW_ORIGINS,
        "off",
        "browser origins allowed to call, comma-separated, or `*`",
    ),
    flag(
        "--console-session-secs",
        CONSOLE_SESSION_SECS,
        "28800 (8 h)",
        "how long a console session lasts; the server refuses it after that",
    ),
    flag(
        "--console-allow-http",
        CONSOLE_ALLOW_HTTP,
        "`false`",
        "`true`: the console and admin API also answer plain http from other machines (the admin token then crosses the network in clear)",
    ),
    flag(
        "--trusted-proxies",
        TRUSTED_PROXIES,
        "none",
        "CIDRs of the proxies in front (comma-separated): from them, the client is the rightmost `X-Forwarded-For` address not in the list; otherwise the peer (Lambda: the event's source IP)",
    ),
    flag(
        "--worker-threads",
        GATEWAY_WORKER_THREADS,
        "one per core",
        "server threads, each a runtime of its own taking connections in turn; `1` runs everything on one thread",
    ),
    flag(
        "--log-format",
        LOG_FORMAT,
        "`text` (`json` on Lambda)",
        "`json` for one JSON object per line",
    ),
    flag(
        "--invoke-mode",
        GATEWAY_INVOKE_MODE,
        "`RESPONSE_STREAM`",
        "Lambda only: `RESPONSE_STREAM` or `BUFFERED`",
    ),
    env(
        AWS_LAMBDA_RUNTIME_API,
        "unset",
        "set by Lambda and `cargo lambda watch`; selects Lambda mode",
    ),
    env(RUST_LOG, "`info`", "log filter"),
];

/// The settings table as Markdown, as `docs/configuration.md` shows it.
pub fn settings_table() -> String {
    let mut out = String::from("| flag | variable | default | meaning |\n|---|---|---|---|\n");
    for s in SETTINGS {
        let flag = s.flag.map(|f| format!("`{f}`")).unwrap_or_default();
        out.push_str(&format!(
            "| {flag} | `{}` | {} | {} |\n",
            s.var, s.default, s.meaning
        ));
    }
    out
}

/// How responses leave a Lambda function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokeMode {
    /// Lambda response streaming (Function URL `InvokeMode: RESPONSE_STREAM`).
    ResponseStream,
    /// One buffered response per event (API Gateway, BUFFERED Function URL).
    Buffered,
}

impl InvokeMode {
    /// Parses `RESPONSE_STREAM` or `BUFFERED` (case-insensitive; empty is the default).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        match text.trim().to_ascii_uppercase().as_str() {
            "" | "RESPONSE_STREAM" => Ok(Self::ResponseStream),
            "BUFFERED" => Ok(Self::Buffered),
            other => Err(ConfigError::Invalid {
                setting: GATEWAY_INVOKE_MODE,
                problem: format!("`{other}` is not RESPONSE_STREAM or BUFFERED"),
            }),
        }
    }
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line (CloudWatch).
    Json,
}

/// True when running under a Lambda runtime API.
pub fn in_lambda() -> bool {
    std::env::var_os(AWS_LAMBDA_RUNTIME_API).is_some()
}

/// Settings shared by every mode, each from a flag or its environment variable
/// (the flag wins). See [`SETTINGS`] for the table.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address the local server listens on.
    #[arg(long, env = GATEWAY_LISTEN, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Upstream base URL [default: https://api.openai.com, or the address in an original appsettings.json].
    #[arg(long, env = UPSTREAM_URL)]
    pub upstream: Option<String>,

    /// A pool of upstreams (JSON; see docs/upstreams.md).
    #[arg(long, env = UPSTREAMS_FILE)]
    pub upstreams_file: Option<PathBuf>,

    /// The SSM parameter holding the pool of upstreams (read with decryption, refreshed).
    #[arg(long, env = UPSTREAMS_SSM_PARAMETER)]
    pub upstreams_ssm_parameter: Option<String>,

    /// The most upstreams of the pool one request tries.
    #[arg(long, env = UPSTREAM_MAX_ATTEMPTS, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub upstream_max_attempts: u64,

    /// Seconds a pooled stream is held for its first output.
    #[arg(long, env = UPSTREAM_FIRST_TOKEN_TIMEOUT_SECS, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_first_token_timeout_secs: u64,

    /// Token list file [default: ./tokens.json when present].
    #[arg(long, env = TOKENS_FILE)]
    pub tokens_file: Option<PathBuf>,

    /// SSM parameter holding the token list (read with decryption, refreshed).
    #[arg(long, env = TOKENS_SSM_PARAMETER)]
    pub tokens_ssm_parameter: Option<String>,

    /// SSM parameter holding the injected OpenAI key.
    #[arg(long, env = UPSTREAM_API_KEY_SSM_PARAMETER)]
    pub upstream_api_key_ssm_parameter: Option<String>,

    /// Seconds before cached SSM values are refreshed.
    #[arg(long, env = TOKENS_REFRESH_SECS, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
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

    /// Longest time, in seconds, a client may send no request body bytes or accept no response bytes.
    #[arg(long, env = CLIENT_IDLE_TIMEOUT_SECS, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub client_idle_timeout_secs: u64,

    /// The most of a request body, in bytes, read to find its model (tokens with `models`).
    #[arg(long, env = MAX_INSPECTED_BODY_BYTES, default_value_t = 32 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_inspected_body_bytes: u64,

    /// Model prices over the bundled table: a JSON object keyed by model.
    #[arg(long, env = PRICES_FILE)]
    pub prices_file: Option<PathBuf>,

    /// PEM certificates trusted for the upstream, besides the bundled Mozilla roots.
    #[arg(long, env = UPSTREAM_CA_FILE)]
    pub upstream_ca_file: Option<PathBuf>,

    /// Lambda: CloudWatch EMF metrics on stdout, `on` or `off`.
    #[arg(long, env = METRICS, value_enum, ignore_case = true, default_value = "on")]
    pub metrics: Switch,

    /// The CloudWatch namespace of the EMF metrics.
    #[arg(long, env = METRICS_NAMESPACE, default_value = "ChatGptGateway")]
    pub metrics_namespace: String,

    /// Local server: the address of a separate listener for Prometheus /metrics and /healthz.
    #[arg(long, env = METRICS_LISTEN)]
    pub metrics_listen: Option<SocketAddr>,

    /// Label the request and token counters with the token's name.
    #[arg(long, env = METRICS_TOKEN_LABELS, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub metrics_token_labels: bool,

    /// Where usage and limits are counted: sqlite:PATH, dynamodb:TABLE or off [default: sqlite:usage.db locally, none on Lambda].
    #[arg(long, env = USAGE_STORE)]
    pub usage_store: Option<String>,

    /// While the usage store is down: open (serve, unenforced) or closed (503 for tokens with limits).
    #[arg(long, env = USAGE_FAIL_MODE, value_enum, ignore_case = true, default_value = "open")]
    pub usage_fail_mode: FailMode,

    /// Seconds after which an unsettled reservation stops counting [default: upstream timeout + 60].
    #[arg(long, env = USAGE_RESERVATION_TTL_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    pub usage_reservation_ttl_secs: Option<u64>,

    /// Output tokens reserved for a request that sets no maximum.
    #[arg(long, env = USAGE_DEFAULT_RESERVE_TOKENS, default_value_t = 1024)]
    pub usage_default_reserve_tokens: u64,

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
    #[arg(long, env = CORS_ALLOW_ORIGINS)]
    pub cors_allow_origins: Option<String>,

    /// Seconds a console session lasts.
    #[arg(long, env = CONSOLE_SESSION_SECS, default_value_t = 28_800, value_parser = clap::value_parser!(u64).range(60..=2_592_000))]
    pub console_session_secs: u64,

    /// Answer the console and admin API over plain http from other machines too.
    #[arg(long, env = CONSOLE_ALLOW_HTTP, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub console_allow_http: bool,

    /// CIDRs of trusted proxies, comma-separated: their `X-Forwarded-For` names the client. None when unset.
    #[arg(long, env = TRUSTED_PROXIES)]
    pub trusted_proxies: Option<String>,

    /// Worker threads [default: one per core]. The server spreads its connections over them, each thread running a runtime of its own; 1 runs everything on one thread.
    #[arg(long, env = GATEWAY_WORKER_THREADS, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// Log format [default: text locally, json on Lambda].
    #[arg(long, env = LOG_FORMAT, value_enum, ignore_case = true)]
    pub log_format: Option<LogFormat>,

    /// Lambda only: RESPONSE_STREAM (Function URL streaming) or BUFFERED (API Gateway).
    #[arg(long, env = GATEWAY_INVOKE_MODE, default_value = "RESPONSE_STREAM", value_parser = InvokeMode::parse)]
    pub invoke_mode: InvokeMode,
}

impl Settings {
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
    /// Client idle timeout.
    pub fn client_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.client_idle_timeout_secs)
    }
    /// How long an unsettled reservation counts.
    pub fn reservation_ttl(&self) -> Duration {
        Duration::from_secs(
            self.usage_reservation_ttl_secs
                .unwrap_or(self.upstream_timeout_secs + 60),
        )
    }
    /// Graceful-shutdown window.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
    /// The log format: as set, else JSON on Lambda and text elsewhere.
    pub fn log_format(&self, in_lambda: bool) -> LogFormat {
        self.log_format.unwrap_or(if in_lambda {
            LogFormat::Json
        } else {
            LogFormat::Text
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct Only {
        #[command(flatten)]
        settings: Settings,
    }

    #[test]
    fn the_table_matches_the_command_line() {
        let command = Only::command();
        let mut from_clap: Vec<(Option<String>, String)> = command
            .get_arguments()
            .filter_map(|a| {
                let var = a.get_env()?.to_str()?.to_owned();
                Some((a.get_long().map(|l| format!("--{l}")), var))
            })
            .collect();
        // Read by the program itself rather than through a flag.
        for var in [UPSTREAM_API_KEY, AWS_LAMBDA_RUNTIME_API, RUST_LOG] {
            from_clap.push((None, var.to_owned()));
        }
        from_clap.sort();
        let mut from_table: Vec<(Option<String>, String)> = SETTINGS
            .iter()
            .map(|s| (s.flag.map(str::to_owned), s.var.to_owned()))
            .collect();
        from_table.sort();
        assert_eq!(from_clap, from_table);
    }

    #[test]
    fn the_documentation_shows_the_table() {
        let page = include_str!("../docs/configuration.md");
        assert!(
            page.contains(&settings_table()),
            "docs/configuration.md must hold this table exactly:\n{}",
            settings_table()
        );
    }

    #[test]
    fn invoke_modes() {
        assert_eq!(InvokeMode::parse("buffered").unwrap(), InvokeMode::Buffered);
        assert_eq!(InvokeMode::parse("").unwrap(), InvokeMode::ResponseStream);
        assert!(matches!(
            InvokeMode::parse("stream"),
            Err(ConfigError::Invalid {
                setting: GATEWAY_INVOKE_MODE,
                ..
            })
        ));
    }
}
