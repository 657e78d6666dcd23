//! The `tokens` admin subcommands: make, check and publish token lists.
//!
//! - `tokens new` prints a fresh random token once, and the entry to store
//!   (with its SHA-256, not the token, unless `--plaintext`);
//! - `tokens check` validates a list (file, SSM parameter or the bundled one)
//!   and shows each entry's name, expiry and state, never a secret;
//! - `tokens push` validates a file, then writes it to SSM as a SecureString.
//!
//! Every failure is a one-line message on stderr and a non-zero exit.

use std::path::PathBuf;

use chrono::{DateTime, FixedOffset, Utc};
use clap::{Args, Subcommand};

use super::{admin, CommandError};
use crate::clock::Clock;
use crate::config::TOKENS_UTC_OFFSET;
use crate::error::ConfigError;
use crate::sources::ssm::Ssm;
use crate::tokens::format::{self, parse_offset, parse_time, Credential, TokenList};
use crate::tokens::{bundled, Rules, TokenSet};

/// `chatgpt-gateway tokens …`
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Make a new random token and print the entry to add to the token list.
    New {
        /// A label for the token (shown in logs instead of the token).
        #[arg(long)]
        name: String,
        /// When it expires: RFC 3339, `yyyy-M-d H:mm`, or a duration from now such as 30d or 12h.
        #[arg(long)]
        expires: Option<String>,
        /// Put the OpenAI key from this environment variable in the entry as `upstream_key`.
        #[arg(long, value_name = "VAR")]
        upstream_key_from_env: Option<String>,
        /// Store the token itself in the entry instead of its SHA-256.
        #[arg(long)]
        plaintext: bool,
        /// Print one JSON object {"token", "entry"} instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        rules: RuleArgs,
        #[command(flatten)]
        zone: Zone,
    },
    /// List a running gateway's tokens (configured and managed) with their state and limits.
    List {
        #[command(flatten)]
        gateway: admin::Gateway,
        /// Print the admin API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a managed token on a running gateway (in force without a restart); prints it once.
    Create {
        #[command(flatten)]
        gateway: admin::Gateway,
        /// The token's name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        fields: admin::Fields,
        /// Print the admin API's JSON (with the token).
        #[arg(long)]
        json: bool,
    },
    /// Change a managed token on a running gateway (limits, models, expiry…; --disable suspends it).
    Update {
        #[command(flatten)]
        gateway: admin::Gateway,
        /// The token's name.
        name: String,
        #[command(flatten)]
        fields: admin::Fields,
        /// Suspend it (refused until --enable).
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// Resume it.
        #[arg(long)]
        enable: bool,
    },
    /// Revoke a managed token on a running gateway, for good.
    Revoke {
        #[command(flatten)]
        gateway: admin::Gateway,
        /// The token's name.
        name: String,
    },
    /// Validate a token list and show each entry's state (exits non-zero on any error).
    Check {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        zone: Zone,
    },
    /// Validate a token file, then write it to an SSM SecureString parameter (overwriting).
    Push {
        /// The SSM parameter to write, e.g. /chatgpt-gateway/tokens.
        #[arg(long)]
        ssm_parameter: String,
        /// The token file to publish.
        #[arg(long)]
        file: PathBuf,
        /// A customer-managed KMS key (id, alias or ARN); default: the account's aws/ssm key.
        #[arg(long)]
        kms_key_id: Option<String>,
        #[command(flatten)]
        zone: Zone,
    },
}

/// The entry's allowlists.
#[derive(Debug, Args)]
pub struct RuleArgs {
    // (`tokens new` writes them into an entry; `create`/`update` send them.)
    /// Models the token may use, comma-separated; `gpt-4o-mini*` allows every name it prefixes.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Path prefixes the token may reach, comma-separated, e.g. /v1/chat/completions,/v1/embeddings
    /// (`POST /v1/x$`: that method and path only); `inference` stands for the
    /// endpoints that make answers and none that store objects (chat, completions,
    /// responses, embeddings, images, audio, moderations, models).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// A limit, KEY=VALUE, repeatable: requests_per_minute, tokens_per_minute, tokens_per_day, tokens_per_month, usd_per_day, usd_per_month, usd_total.
    #[arg(long = "limit", value_name = "KEY=VALUE")]
    limits: Vec<String>,
    /// Networks the token may be used from, comma-separated CIDRs or addresses (IPv4, IPv6).
    #[arg(long, value_delimiter = ',')]
    allow_ips: Vec<String>,
}

impl RuleArgs {
    /// The endpoints given, `inference` spelled out (each endpoint that
    /// makes answers, by method and exact path).
    fn endpoints(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .flat_map(|e| match e.trim() {
                "inference" => crate::openai::INFERENCE.map(str::to_owned).to_vec(),
                other => vec![other.to_owned()],
            })
            .collect()
    }

    /// Puts the rules given into an admin API request's fields.
    pub fn insert_into(
        &self,
        map: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), CommandError> {
        let list = |items: &[String]| {
            serde_json::json!(items.iter().map(|s| s.trim()).collect::<Vec<_>>())
        };
        if !self.models.is_empty() {
            map.insert("models".into(), list(&self.models));
        }
        if !self.endpoints.is_empty() {
            map.insert("endpoints".into(), list(&self.endpoints()));
        }
        if !self.limits.is_empty() {
            let limits = crate::limits::Limits::from_pairs(&self.limits).map_err(|problem| {
                CommandError::Flag {
                    flag: "--limit",
                    problem,
                }
            })?;
            map.insert("limits".into(), limits.to_json());
        }
        if !self.allow_ips.is_empty() {
            map.insert("allow_ips".into(), list(&self.allow_ips));
        }
        Ok(())
    }
}

/// Which list `check` reads.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Source {
    /// A token file.
    #[arg(long)]
    file: Option<PathBuf>,
    /// An SSM parameter (read with decryption).
    #[arg(long)]
    ssm_parameter: Option<String>,
    /// The list compiled into this binary (bundle/tokens.json at build time).
    #[arg(long)]
    bundled: bool,
}

/// The zone of times written without an offset.
#[derive(Debug, Args)]
pub struct Zone {
    /// UTC offset of times written without one.
    #[arg(long, env = TOKENS_UTC_OFFSET, default_value = "+00:00", value_parser = parse_offset)]
    tokens_utc_offset: FixedOffset,
}

/// Runs a `tokens` subcommand.
/// `clock` is what relative expiries (`30d`) count from, and what `check`
/// tells expired tokens by.
pub async fn run(command: TokensCommand, clock: &Clock) -> Result<(), CommandError> {
    match command {
        TokensCommand::New {
            name,
            expires,
            upstream_key_from_env,
            plaintext,
            json,
            rules,
            zone,
        } => {
            let expires = expires
                .map(|text| parse_expiry(&text, zone.tokens_utc_offset, clock.now()))
                .transpose()?;
            new(
                &name,
                expires,
                upstream_key_from_env.as_deref(),
                plaintext,
                json,
                &rules,
                zone.tokens_utc_offset,
            )
        }
        TokensCommand::List { gateway, json } => admin::list(&gateway, json).await,
        TokensCommand::Create {
            gateway,
            name,
            fields,
            json,
        } => admin::create(&gateway, &name, &fields, json).await,
        TokensCommand::Update {
            gateway,
            name,
            fields,
            disable,
            enable,
        } => {
            let disabled = (disable || enable).then_some(disable);
            admin::update(&gateway, &name, &fields, disabled).await
        }
        TokensCommand::Revoke { gateway, name } => admin::revoke(&gateway, &name).await,
        TokensCommand::Check { source, zone } => {
            check(source, zone.tokens_utc_offset, clock.now()).await
        }
        TokensCommand::Push {
            ssm_parameter,
            file,
            kms_key_id,
            zone,
        } => {
            let text = read(&file)?;
            let list = parse(&file.display().to_string(), &text, zone.tokens_utc_offset)?;
            if list.tokens.is_empty() {
                return Err(CommandError::Refused(format!(
                    "{}: the list has no tokens; refusing to publish an empty list",
                    file.display()
                )));
            }
            let ssm = Ssm::from_env().await;
            let version = ssm
                .put_secure(&ssm_parameter, &text, kms_key_id.as_deref())
                .await?;
            println!(
                "wrote {} token(s) from {} to {ssm_parameter} (SecureString, version {version})",
                list.tokens.entries().len(),
                file.display()
            );
            Ok(())
        }
    }
}

fn read(file: &PathBuf) -> Result<String, CommandError> {
    std::fs::read_to_string(file).map_err(|source| {
        ConfigError::TokensUnreadable {
            path: file.clone(),
            source,
        }
        .into()
    })
}

fn parse(origin: &str, text: &str, offset: FixedOffset) -> Result<TokenList, CommandError> {
    format::parse(text, offset).map_err(|error| {
        ConfigError::Tokens {
            origin: origin.to_owned(),
            error,
        }
        .into()
    })
}

fn new(
    name: &str,
    expires: Option<DateTime<Utc>>,
    key_var: Option<&str>,
    plaintext: bool,
    json: bool,
    rules: &RuleArgs,
    offset: FixedOffset,
) -> Result<(), CommandError> {
    if name.trim().is_empty() {
        return Err(CommandError::Flag {
            flag: "--name",
            problem: "must not be empty".into(),
        });
    }
    let upstream_key = match key_var {
        Some(var) => Some(
            std::env::var(var)
                .ok()
                .filter(|v| crate::secret::ApiKey::new(v).is_ok())
                .ok_or_else(|| CommandError::Flag {
                    flag: "--upstream-key-from-env",
                    problem: format!(
                        "the environment variable {var} is not set, empty, or not a valid key"
                    ),
                })?,
        ),
        None => None,
    };
    let token = crate::tokens::generate().map_err(CommandError::Refused)?;
    let digest = crate::tokens::digest(token.as_bytes());
    let credential = if plaintext {
        Credential::Plain(&token)
    } else {
        Credential::Digest(&digest)
    };
    let list = |items: &[String]| (!items.is_empty()).then(|| items.to_vec());
    let limits = if rules.limits.is_empty() {
        None
    } else {
        Some(
            crate::limits::Limits::from_pairs(&rules.limits).map_err(|problem| {
                CommandError::Flag {
                    flag: "--limit",
                    problem,
                }
            })?,
        )
    };
    let endpoints = rules.endpoints();
    let allow_ips = rules.allow_ips.clone();
    let rules = Rules {
        models: list(&rules.models),
        endpoints: list(&endpoints),
        limits,
        upstreams: None,
    };
    let mut entry = format::entry_json(
        name,
        credential,
        expires,
        upstream_key.as_deref().map(str::trim),
        &rules,
    );
    if !allow_ips.is_empty() {
        entry[format::keys::ALLOW_IPS] = allow_ips.into();
    }
    // What is printed must be what a list accepts: read it back.
    format::parse(&format!("[{entry}]"), offset).map_err(|error| CommandError::Flag {
        flag: "--models/--endpoints/--limit/--allow-ips",
        problem: error.to_string(),
    })?;
    if json {
        println!("{}", serde_json::json!({ "token": token, "entry": entry }));
    } else {
        println!("token (shown once; give it to the client): {token}");
        println!("entry (add it to the token list):");
        println!("{entry}");
    }
    Ok(())
}

/// An expiry: a duration from `now` (`30d`, `12h`, `90m`) or a time.
fn parse_expiry(
    text: &str,
    offset: FixedOffset,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, CommandError> {
    let t = text.trim();
    let flag = |problem: String| CommandError::Flag {
        flag: "--expires",
        problem,
    };
    let unit = t.chars().last().unwrap_or(' ');
    if let (Some(seconds), Ok(n)) = (
        match unit {
            'd' => Some(86_400),
            'h' => Some(3_600),
            'm' => Some(60),
            _ => None,
        },
        t[..t.len().saturating_sub(1)].parse::<i64>(),
    ) {
        if n <= 0 {
            return Err(flag(format!("{t}: the duration must be positive")));
        }
        return n
            .checked_mul(seconds)
            .and_then(chrono::Duration::try_seconds)
            .and_then(|d| now.checked_add_signed(d))
            .ok_or_else(|| flag(format!("{t}: too far in the future")));
    }
    parse_time(t, offset).map_err(|e| flag(e.to_string()))
}

async fn check(
    source: Source,
    offset: FixedOffset,
    now: DateTime<Utc>,
) -> Result<(), CommandError> {
    let (label, text) = if let Some(file) = source.file {
        (file.display().to_string(), read(&file)?)
    } else if let Some(name) = source.ssm_parameter {
        let text = Ssm::from_env().await.get(&name).await?;
        (name, text)
    } else {
        let text = bundled::text()
            .ok_or_else(|| CommandError::Refused("this binary has no bundled token list".into()))?;
        ("bundled token list".to_owned(), text.to_owned())
    };
    let list = parse(&label, &text, offset)?;
    print_table(&label, &list.tokens, now);
    if let Some(upstream) = list.upstream {
        println!("upstream from the file: {upstream}");
    }
    Ok(())
}

fn print_table(label: &str, tokens: &TokenSet, now: DateTime<Utc>) {
    println!("{label}: {} token(s)", tokens.entries().len());
    let width = tokens
        .entries()
        .iter()
        .map(|e| e.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:width$}  {:20}  {:14}  {:12}  RULES",
        "NAME", "EXPIRES (UTC)", "STATE", "UPSTREAM KEY"
    );
    for entry in tokens.entries() {
        let (expires, state) = match entry.expires {
            None => ("-".to_owned(), "never expires"),
            Some(at) => (
                at.format("%Y-%m-%d %H:%M:%S").to_string(),
                if entry.is_expired(now) {
                    "expired"
                } else {
                    "valid"
                },
            ),
        };
        let key = if entry.upstream_key.is_some() {
            "own key"
        } else {
            "-"
        };
        println!(
            "{:width$}  {expires:20}  {state:14}  {key:12}  {}",
            entry.name,
            rules_summary(entry.rules.as_deref())
        );
    }
}

/// A token's rules in one short line: its models, endpoints and limits.
fn rules_summary(rules: Option<&Rules>) -> String {
    let Some(rules) = rules else {
        return "-".into();
    };
    let mut parts = Vec::new();
    if let Some(models) = &rules.models {
        parts.push(format!("models {}", models.join(",")));
    }
    if let Some(endpoints) = &rules.endpoints {
        parts.push(format!("endpoints {}", endpoints.join(",")));
    }
    if let Some(limits) = &rules.limits {
        let shown: Vec<String> = limits
            .iter()
            .map(|l| match l.measure {
                crate::limits::Measure::Usd => format!("{}={}", l.key, l.max as f64 / 1e6),
                _ => format!("{}={}", l.key, l.max),
            })
            .collect();
        parts.push(format!("limits {}", shown.join(",")));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn expiry_durations_and_times() {
        let utc = FixedOffset::east_opt(0).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(
            parse_expiry("30d", utc, now).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 31, 0, 0, 0).unwrap()
        );
        assert_eq!(
            parse_expiry("12h", utc, now).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
        );
        assert_eq!(
            parse_expiry("2026-3-1 8:00", utc, now).unwrap(),
            Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap()
        );
        assert!(parse_expiry("0d", utc, now).is_err());
        assert!(parse_expiry("soon", utc, now).is_err());
    }
}
