//! The upstreams file (`UPSTREAMS_FILE`): a JSON list of upstreams, checked
//! whole at start-up. Every refusal names the entry and the field, never a
//! key.
//!
//! ```json
//! {"upstreams": [
//!   {"name": "openai-a", "base_url": "https://api.openai.com", "key_env": "OPENAI_KEY_A"},
//!   {"name": "openai-b", "base_url": "https://api.openai.com", "key_env": "OPENAI_KEY_B",
//!    "priority": 0, "weight": 2},
//!   {"name": "azure", "kind": "azure", "base_url": "https://x.openai.azure.com",
//!    "api_version": "2024-10-21", "key_ssm_parameter": "/gateway/azure-key",
//!    "models": [{"model": "gpt-4o", "as": "gpt4o-prod"}], "priority": 1}
//! ]}
//! ```
//!
//! A bare array of entries is read the same.

use serde::Deserialize;

use crate::proxy::Upstream;
use crate::secret::ApiKey;

/// The most upstreams a file may name.
pub const MAX_UPSTREAMS: usize = 64;

/// What kind of API an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// OpenAI itself (or a proxy of it): paths and `Authorization` as sent.
    #[default]
    Openai,
    /// Azure OpenAI: `/openai/deployments/{deployment}/…?api-version=…`,
    /// the key in `api-key`.
    Azure,
    /// An OpenAI-compatible server (vLLM, Ollama, Groq, OpenRouter, …).
    OpenaiCompatible,
}

impl Kind {
    /// The name the file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Azure => "azure",
            Self::OpenaiCompatible => "openai-compatible",
        }
    }
}

/// Where an upstream's key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// No key: the client's own `Authorization` goes upstream.
    None,
    /// Given in the file, or read from an environment variable.
    Fixed(ApiKey),
    /// An SSM parameter, refreshed as the token list is.
    Ssm(String),
}

/// One model an upstream serves: a pattern as in token allowlists (a
/// trailing `*` matches every name it prefixes), and for Azure the
/// deployment it is served by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRoute {
    /// The model name or pattern.
    pub pattern: String,
    /// Azure: the deployment; `None`: the model's own name.
    pub deployment: Option<String>,
}

impl ModelRoute {
    /// Whether this route serves `model`.
    pub fn matches(&self, model: &str) -> bool {
        crate::tokens::model_matches(&self.pattern, model)
    }
}

/// One upstream, checked.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Its name, in logs, metrics and the access line.
    pub name: String,
    /// What it speaks.
    pub kind: Kind,
    /// Its base URL.
    pub base_url: Upstream,
    /// Its key.
    pub key: KeySource,
    /// The models it serves; empty: every model.
    pub models: Vec<ModelRoute>,
    /// Lower first.
    pub priority: u32,
    /// Its share within its priority.
    pub weight: u32,
    /// Azure's `api-version`.
    pub api_version: Option<String>,
    /// Whether the gateway may add `stream_options.include_usage` to a
    /// streamed chat sent here (a server that refuses it: `false`).
    pub inject_include_usage: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    base_url: String,
    #[serde(default)]
    kind: Kind,
    key: Option<String>,
    key_env: Option<String>,
    key_ssm_parameter: Option<String>,
    #[serde(default)]
    models: Vec<ModelEntry>,
    #[serde(default)]
    priority: u32,
    #[serde(default = "one")]
    weight: u32,
    api_version: Option<String>,
    #[serde(default = "yes")]
    inject_include_usage: bool,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ModelEntry {
    Pattern(String),
    Renamed(Renamed),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Renamed {
    model: String,
    #[serde(rename = "as")]
    to: String,
}

/// Why an upstreams file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// Not JSON, or not a list of entries.
    #[error("{0}")]
    Shape(String),
    /// One entry is wrong.
    #[error("entry {index} ({name}): {problem}")]
    Entry {
        /// Its position (from 0).
        index: usize,
        /// Its name, or `#index`.
        name: String,
        /// What is wrong.
        problem: String,
    },
}

/// A serde message without the values it quotes (a key written in the
/// wrong field must not be printed back).
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

/// Reads an upstreams file's text; `env` looks up `key_env` variables.
pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Vec<Spec>, FileError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        FileError::Shape(format!(
            "not valid JSON: {}",
            without_values(&e.to_string())
        ))
    })?;
    let entries = match value {
        serde_json::Value::Array(list) => list,
        serde_json::Value::Object(mut map) if map.len() == 1 && map.contains_key("upstreams") => {
            match map.remove("upstreams") {
                Some(serde_json::Value::Array(list)) => list,
                _ => {
                    return Err(FileError::Shape(
                        "`upstreams` must be an array of entries".into(),
                    ))
                }
            }
        }
        _ => {
            return Err(FileError::Shape(
                "expected a JSON array of upstreams, or an object with only an `upstreams` array"
                    .into(),
            ))
        }
    };
    if entries.is_empty() {
        return Err(FileError::Shape("the file names no upstream".into()));
    }
    if entries.len() > MAX_UPSTREAMS {
        return Err(FileError::Shape(format!(
            "{} upstreams; at most {MAX_UPSTREAMS}",
            entries.len()
        )));
    }
    let mut specs: Vec<Spec> = Vec::with_capacity(entries.len());
    for (index, raw) in entries.into_iter().enumerate() {
        let label = raw
            .get("name")
            .and_then(|n| n.as_str())
            .filter(|n| valid_name(n))
            .map_or_else(|| format!("#{index}"), str::to_owned);
        let bad = |problem: String| FileError::Entry {
            index,
            name: label.clone(),
            problem,
        };
        let entry: Entry =
            serde_json::from_value(raw).map_err(|e| bad(without_values(&e.to_string())))?;
        let spec = check(entry, &env).map_err(bad)?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(bad("`name` is used by an earlier entry".into()));
        }
        specs.push(spec);
    }
    Ok(specs)
}

fn valid_name(name: &str) -> bool {
    is_token(name, 64)
}

/// 1 to `max` letters, digits, `-`, `_` or `.`: a name that is safe as a
/// path segment, a metric label and a log field as it is.
pub fn is_token(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check(entry: Entry, env: &impl Fn(&str) -> Option<String>) -> Result<Spec, String> {
    if !valid_name(&entry.name) {
        return Err("`name` must be 1 to 64 letters, digits, `-`, `_` or `.`".into());
    }
    let base_url = Upstream::parse(&entry.base_url).map_err(|e| format!("`base_url`: {e}"))?;
    let invalid_key = |from: &str| {
        format!("{from}: the key is empty or holds characters an HTTP header cannot carry")
    };
    let key = match (entry.key, entry.key_env, entry.key_ssm_parameter) {
        (None, None, None) => KeySource::None,
        (Some(key), None, None) => {
            KeySource::Fixed(ApiKey::new(&key).map_err(|_| invalid_key("`key`"))?)
        }
        (None, Some(var), None) => {
            let value = env(&var)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("`key_env`: the environment variable {var} is not set"))?;
            KeySource::Fixed(
                ApiKey::new(&value).map_err(|_| invalid_key(&format!("`key_env` ({var})")))?,
            )
        }
        (None, None, Some(name)) if !name.trim().is_empty() => KeySource::Ssm(name),
        (None, None, Some(_)) => return Err("`key_ssm_parameter` is empty".into()),
        _ => return Err("name one of `key`, `key_env` and `key_ssm_parameter`".into()),
    };
    if !(1..=1000).contains(&entry.weight) {
        return Err("`weight` must be 1 to 1000".into());
    }
    let mut models = Vec::with_capacity(entry.models.len());
    for model in entry.models {
        let route = match model {
            ModelEntry::Pattern(pattern) => ModelRoute {
                pattern,
                deployment: None,
            },
            ModelEntry::Renamed(Renamed { model, to }) => ModelRoute {
                pattern: model,
                deployment: Some(to),
            },
        };
        let printable =
            |s: &str| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control);
        if !printable(&route.pattern) {
            return Err(
                "`models`: a model must be 1 to 256 characters, none a control character".into(),
            );
        }
        if let Some(deployment) = &route.deployment {
            if entry.kind != Kind::Azure {
                return Err(format!(
                    "`models`: `as` names an Azure deployment; this upstream's kind is {}",
                    entry.kind.as_str()
                ));
            }
            if route.pattern.ends_with('*') {
                return Err("`models`: a pattern ending in `*` cannot name one deployment".into());
            }
            if !valid_name(deployment) {
                return Err("`models`: a deployment (`as`) must be 1 to 64 letters, digits, `-`, `_` or `.`".into());
            }
        }
        models.push(route);
    }
    match (entry.kind, &entry.api_version) {
        (Kind::Azure, None) => return Err("an azure upstream needs `api_version`".into()),
        (Kind::Azure, Some(v)) if !valid_name(v) => {
            return Err("`api_version` must be like 2024-10-21".into())
        }
        (Kind::Openai | Kind::OpenaiCompatible, Some(_)) => {
            return Err("`api_version` is for azure upstreams only".into())
        }
        _ => {}
    }
    Ok(Spec {
        name: entry.name,
        kind: entry.kind,
        base_url,
        key,
        models,
        priority: entry.priority,
        weight: entry.weight,
        api_version: entry.api_version,
        inject_include_usage: entry.inject_include_usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY_A" => Some("sk-a".into()),
            "BAD_KEY" => Some("sk-\nx".into()),
            _ => None,
        }
    }

    #[test]
    fn a_file_of_upstreams_is_read_with_its_defaults() {
        let specs = parse(
            r#"{"upstreams": [
                {"name": "a", "base_url": "https://api.openai.com", "key_env": "KEY_A"},
                {"name": "az", "kind": "azure", "base_url": "https://x.openai.azure.com/",
                 "api_version": "2024-10-21", "key_ssm_parameter": "/gw/az",
                 "models": ["gpt-4o-mini", {"model": "gpt-4o", "as": "gpt4o-prod"}],
                 "priority": 1, "weight": 3}
            ]}"#,
            env,
        )
        .unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(
            (specs[0].kind, specs[0].priority, specs[0].weight),
            (Kind::Openai, 0, 1)
        );
        assert!(matches!(specs[0].key, KeySource::Fixed(_)));
        assert!(specs[0].models.is_empty());
        assert_eq!(specs[1].base_url.to_string(), "https://x.openai.azure.com");
        assert!(matches!(&specs[1].key, KeySource::Ssm(n) if n == "/gw/az"));
        assert_eq!(specs[1].models[1].deployment.as_deref(), Some("gpt4o-prod"));
        assert!(specs[1].models[0].matches("gpt-4o-mini"));
        // A bare list reads the same.
        let bare = parse(r#"[{"name": "a", "base_url": "http://127.0.0.1:9"}]"#, env).unwrap();
        assert!(matches!(bare[0].key, KeySource::None));
    }

    #[test]
    fn each_refusal_names_the_entry_and_never_a_key() {
        let refused = |text: &str| parse(text, env).unwrap_err().to_string();
        let one = |fields: &str| {
            refused(&format!(
                r#"[{{"name": "ok", "base_url": "http://127.0.0.1:9"}}, {{"name": "b", {fields}}}]"#
            ))
        };
        for (fields, says) in [
            (r#""base_url": "ftp://x""#, "entry 1 (b): `base_url`"),
            (
                r#""base_url": "http://x", "key": "sk-1", "key_env": "KEY_A""#,
                "name one of",
            ),
            (
                r#""base_url": "http://x", "key_env": "MISSING""#,
                "MISSING is not set",
            ),
            (
                r#""base_url": "http://x", "key_env": "BAD_KEY""#,
                "cannot carry",
            ),
            (r#""base_url": "http://x", "weight": 0"#, "`weight`"),
            (
                r#""base_url": "http://x", "kind": "azure""#,
                "needs `api_version`",
            ),
            (
                r#""base_url": "http://x", "api_version": "1""#,
                "azure upstreams only",
            ),
            (
                r#""base_url": "http://x", "kind": "nope""#,
                "unknown variant",
            ),
            (
                r#""base_url": "http://x", "modles": []"#,
                "unknown field `modles`",
            ),
            (
                r#""base_url": "http://x", "models": [{"model": "a", "as": "b"}]"#,
                "Azure deployment",
            ),
            (
                r#""base_url": "http://x", "priority": "sk-secret-in-the-wrong-field""#,
                "entry 1 (b)",
            ),
        ] {
            let message = one(fields);
            assert!(message.contains(says), "{fields}: {message}");
            assert!(!message.contains("sk-"), "{message}");
        }
        assert!(refused(
            r#"[{"name": "a", "base_url": "http://x"}, {"name": "a", "base_url": "http://y"}]"#
        )
        .contains("used by an earlier entry"));
        assert!(refused("[]").contains("no upstream"));
        assert!(refused(r#"{"upstreams": {}}"#).contains("must be an array"));
        assert!(refused(r#"{"tokens": []}"#).contains("expected"));
        assert!(refused(r#"{"key": "sk-oops"#).contains("not valid JSON"));
        assert!(!refused(r#"["sk-oops"]"#).contains("sk-oops"));
    }
}
