//! Prices: what a request's usage costs, in USD.
//!
//! A bundled table of OpenAI's models (USD per 1M tokens: `input`,
//! `cached_input`, `output`, and an optional `per_request`), which
//! `PRICES_FILE` (the same shape: a JSON object keyed by model) overrides
//! and extends. A model matches its exact key, else the longest key that,
//! followed by `-`, prefixes it (dated snapshots: `gpt-4o-mini-2024-07-18`
//! is priced as `gpt-4o-mini`). Cached input tokens are billed at
//! `cached_input` (at `input` when a model has none), and not again at `input`.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::Usage;
use crate::config::PRICES_FILE;
use crate::error::ConfigError;

/// The table compiled in, with the date it was taken in its `_source`.
const BUNDLED: &str = include_str!("prices.json");

/// One model's prices, USD per 1M tokens (and per request).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Per 1M input tokens.
    pub input: f64,
    /// Per 1M cached input tokens; `input` when absent.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Per 1M output tokens.
    pub output: f64,
    /// Per request, whatever its tokens (images, speech).
    #[serde(default)]
    pub per_request: Option<f64>,
}

/// The price table.
#[derive(Debug, Clone, Default)]
pub struct Prices(HashMap<String, Price>);

impl Prices {
    /// The bundled table, with `PRICES_FILE` over it when one is named.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut prices = parse(BUNDLED).map_err(|problem| ConfigError::Invalid {
            setting: PRICES_FILE,
            problem: format!("the bundled table: {problem}"),
        })?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                setting: PRICES_FILE,
                problem: format!("{}: cannot read: {e}", path.display()),
            })?;
            let own = parse(&text).map_err(|problem| ConfigError::Invalid {
                setting: PRICES_FILE,
                problem: format!("{}: {problem}", path.display()),
            })?;
            prices.0.extend(own.0);
        }
        Ok(prices)
    }

    /// The price of `model`: its own key, else the longest key that prefixes it before a `-`.
    pub fn lookup(&self, model: &str) -> Option<&Price> {
        if let Some(price) = self.0.get(model) {
            return Some(price);
        }
        self.0
            .iter()
            .filter(|(key, _)| {
                model
                    .strip_prefix(key.as_str())
                    .is_some_and(|rest| rest.starts_with('-'))
            })
            .max_by_key(|(key, _)| key.len())
            .map(|(_, price)| price)
    }

    /// What `usage` costs; `None` when its model has no price.
    pub fn cost(&self, usage: &Usage) -> Option<f64> {
        self.cost_as(usage.model.as_deref()?, usage)
    }

    /// The cost of `usage` priced as `model` (whatever model it names).
    pub fn cost_as(&self, model: &str, usage: &Usage) -> Option<f64> {
        let price = self.lookup(model)?;
        let cached = usage.cached_input.min(usage.input);
        let fresh = usage.input - cached;
        let per_million = fresh as f64 * price.input
            + cached as f64 * price.cached_input.unwrap_or(price.input)
            + usage.output as f64 * price.output;
        Some(per_million / 1e6 + price.per_request.unwrap_or(0.0))
    }
}

fn parse(text: &str) -> Result<Prices, String> {
    let table: HashMap<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON object of prices: {e}"))?;
    let mut prices = HashMap::with_capacity(table.len());
    for (model, value) in table {
        if model.starts_with('_') {
            continue; // comments such as `_source`
        }
        let price: Price = serde_json::from_value(value)
            .map_err(|e| format!("model `{model}`: {e} (expected input, output, and optionally cached_input, per_request)"))?;
        let numbers = [
            Some(price.input),
            price.cached_input,
            Some(price.output),
            price.per_request,
        ];
        if numbers.iter().flatten().any(|n| !n.is_finite() || *n < 0.0) {
            return Err(format!(
                "model `{model}`: prices must be numbers of 0 or more"
            ));
        }
        prices.insert(model, price);
    }
    Ok(Prices(prices))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(model: &str, input: u64, cached: u64, output: u64) -> Usage {
        Usage::reported(Some(model), input, cached, output)
    }

    #[test]
    fn snapshots_take_the_longest_prefix_and_cached_tokens_are_billed_once() {
        let prices = Prices::load(None).unwrap();
        assert_eq!(
            prices.lookup("gpt-4o-mini-2024-07-18"),
            prices.lookup("gpt-4o-mini")
        );
        assert_ne!(
            prices.lookup("gpt-4o-mini-2024-07-18"),
            prices.lookup("gpt-4o")
        );
        assert_eq!(
            prices.lookup("gpt-4o-mini-search-preview-2025-03-11"),
            prices.lookup("gpt-4o-mini-search-preview")
        );
        assert!(prices.lookup("gpt-4omni").is_none(), "only before a `-`");
        assert!(prices.lookup("my-own-model").is_none());
        // gpt-4o-mini: 0.15 in, 0.075 cached, 0.60 out per 1M.
        let cost = prices
            .cost(&usage("gpt-4o-mini", 1_000_000, 400_000, 100_000))
            .unwrap();
        let want = 0.6 * 0.15 + 0.4 * 0.075 + 0.1 * 0.6;
        assert!((cost - want).abs() < 1e-12, "{cost} != {want}");
        assert_eq!(prices.cost(&usage("unknown-model", 1, 0, 1)), None);
    }

    #[test]
    fn a_prices_file_overrides_and_extends() {
        let dir = std::env::temp_dir().join(format!("gw-prices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("prices.json");
        std::fs::write(&file, r#"{"gpt-4o": {"input": 1, "output": 2}, "local-llm": {"input": 0, "output": 0, "per_request": 0.01}}"#).unwrap();
        let prices = Prices::load(Some(&file)).unwrap();
        assert_eq!(prices.lookup("gpt-4o").unwrap().input, 1.0);
        assert_eq!(prices.cost(&usage("local-llm", 5, 0, 5)), Some(0.01));
        assert!(
            prices.lookup("gpt-4o-mini").is_some(),
            "the bundled rest stays"
        );
        for bad in [
            r#"[1]"#,
            r#"{"m": {"input": 1}}"#,
            r#"{"m": {"input": -1, "output": 1}}"#,
            r#"{"m": {"input": 1, "output": 1, "cached": 1}}"#,
        ] {
            std::fs::write(&file, bad).unwrap();
            let err = Prices::load(Some(&file)).unwrap_err().to_string();
            assert!(
                err.contains("PRICES_FILE") && err.contains("prices.json"),
                "{bad}: {err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
