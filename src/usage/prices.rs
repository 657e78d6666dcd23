//! Prices: what a request's usage costs, in USD.
//!
//! A bundled table of OpenAI's models (USD per 1M tokens: `input`,
//! `cached_input`, `output`; optionally `per_request`, `per_image` by
//! size and quality, `per_million_chars` for speech, and `max_output`, the
//! most output tokens the model writes), which `PRICES_FILE` (the same
//! shape: a JSON object keyed by model) overrides and extends.
//!
//! A model matches its own key, else the key of the model it is a dated
//! snapshot of (`gpt-4o-mini-2024-07-18` and `gpt-4-0613` take
//! `gpt-4o-mini`'s and `gpt-4`'s); nothing else, so `gpt-5-pro` is never
//! priced as `gpt-5`. Cached input tokens are billed at `cached_input` (at
//! `input` when a model has none), and not again at `input`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::Usage;
use crate::config::PRICES_FILE;
use crate::error::ConfigError;

/// The table compiled in, with the date it was taken in its `_source`.
const BUNDLED: &str = include_str!("prices.json");

/// One model's prices, USD per 1M tokens (and per request).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Per 1M input tokens.
    pub input: f64,
    /// Per 1M cached input tokens; `input` when absent.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Per 1M output tokens.
    pub output: f64,
    /// Per request, whatever its tokens.
    #[serde(default)]
    pub per_request: Option<f64>,
    /// Per image, keyed `SIZE` or `QUALITY:SIZE` (`1024x1024`,
    /// `hd:1024x1792`); a size and quality the table does not name is
    /// charged the table's highest price.
    #[serde(default)]
    pub per_image: Option<BTreeMap<String, f64>>,
    /// Per 1M characters of input (speech).
    #[serde(default)]
    pub per_million_chars: Option<f64>,
    /// The most output tokens one answer of the model can hold (what a
    /// request is reserved at most); [`DEFAULT_MAX_OUTPUT`] when absent.
    #[serde(default)]
    pub max_output: Option<u64>,
}

/// The output ceiling of a model whose price names none: the largest any
/// OpenAI model writes today (gpt-5's 128,000).
pub const DEFAULT_MAX_OUTPUT: u64 = 128_000;

/// What a request asks for that is priced by the unit rather than by the token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Units {
    /// Nothing but tokens.
    #[default]
    None,
    /// `count` images of `size` and `quality`.
    Images {
        /// How many (`n`).
        count: u64,
        /// `size`, as asked.
        size: Option<String>,
        /// `quality`, as asked.
        quality: Option<String>,
    },
    /// Characters of speech input.
    Chars(u64),
}

/// The price table.
#[derive(Debug, Clone, Default)]
pub struct Prices(foldhash::HashMap<String, Price>);

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

    /// The price of `model`: its own key, else that of the model it is a
    /// dated snapshot of (`-YYYY-MM-DD` or `-MMDD` after it).
    pub fn lookup(&self, model: &str) -> Option<&Price> {
        self.0.get(model).or_else(|| self.0.get(undated(model)?))
    }

    /// The most output tokens one answer of `model` holds.
    pub fn max_output(&self, model: Option<&str>) -> u64 {
        model
            .and_then(|m| self.lookup(m))
            .and_then(|p| p.max_output)
            .unwrap_or(DEFAULT_MAX_OUTPUT)
    }

    /// What `usage` costs; `None` when its model has no price.
    pub fn cost(&self, usage: &Usage) -> Option<f64> {
        self.cost_as(usage.model.as_deref()?, usage)
    }

    /// The cost of `usage` priced as `model` (whatever model it names).
    pub fn cost_as(&self, model: &str, usage: &Usage) -> Option<f64> {
        self.charge(model, Some(usage), &Units::None)
    }

    /// What a request to `model` costs: its `usage`'s tokens, its `units`
    /// (images, characters), and the model's price per request. `None`
    /// when the model has no price, or none for the units asked (speech
    /// without `per_million_chars`).
    pub fn charge(&self, model: &str, usage: Option<&Usage>, units: &Units) -> Option<f64> {
        let price = self.lookup(model)?;
        let tokens = usage.map_or(0.0, |usage| {
            let cached = usage.cached_input.min(usage.input);
            let fresh = usage.input - cached;
            (fresh as f64 * price.input
                + cached as f64 * price.cached_input.unwrap_or(price.input)
                + usage.output as f64 * price.output)
                / 1e6
        });
        let units = match units {
            Units::None => 0.0,
            Units::Images {
                count,
                size,
                quality,
            } => match &price.per_image {
                Some(table) => {
                    per_image(table, size.as_deref(), quality.as_deref())? * *count as f64
                }
                None => 0.0,
            },
            Units::Chars(chars) => price.per_million_chars? * *chars as f64 / 1e6,
        };
        Some(tokens + units + price.per_request.unwrap_or(0.0))
    }
}

/// An image's price from a `per_image` table: `QUALITY:SIZE`, else `SIZE`,
/// else the table's highest (when unsure, the most).
fn per_image(
    table: &BTreeMap<String, f64>,
    size: Option<&str>,
    quality: Option<&str>,
) -> Option<f64> {
    let size = size.unwrap_or("1024x1024");
    quality
        .and_then(|q| table.get(&format!("{q}:{size}")))
        .or_else(|| {
            table
                .get(size)
                .filter(|_| quality.is_none_or(|q| q == "standard" || q == "auto"))
        })
        .copied()
        .or_else(|| table.values().copied().reduce(f64::max))
}

/// The model a dated snapshot name is of: `gpt-4o-2024-08-06` → `gpt-4o`,
/// `gpt-4-0613` → `gpt-4`.
fn undated(model: &str) -> Option<&str> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // `-YYYY-MM-DD` at the end: dashes at 0, 5 and 8, digits between.
    if let Some((head, date)) = model
        .len()
        .checked_sub(11)
        .and_then(|at| model.split_at_checked(at))
    {
        let dated = date.bytes().enumerate().all(|(at, b)| match at {
            0 | 5 | 8 => b == b'-',
            _ => b.is_ascii_digit(),
        });
        if dated && !head.is_empty() {
            return Some(head);
        }
    }
    let (head, tail) = model.rsplit_once('-')?;
    (tail.len() == 4 && digits(tail) && !head.is_empty()).then_some(head)
}

fn parse(text: &str) -> Result<Prices, String> {
    let table: HashMap<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON object of prices: {e}"))?;
    let mut prices = foldhash::HashMap::with_capacity_and_hasher(
        table.len(),
        foldhash::fast::RandomState::default(),
    );
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
            price.per_million_chars,
        ];
        let images = price.per_image.iter().flat_map(|t| t.values().copied());
        if numbers
            .into_iter()
            .flatten()
            .chain(images)
            .any(|n| !n.is_finite() || n < 0.0)
        {
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
    fn a_snapshot_is_a_date_or_four_digits_at_the_end() {
        let cases = [
            ("gpt-4o-2024-08-06", Some("gpt-4o")),
            ("gpt-4o-mini-2024-07-18", Some("gpt-4o-mini")),
            ("gpt-4-0613", Some("gpt-4")),
            ("-2024-08-06", None),
            ("-0613", None),
            ("gpt-4o-2024-08-0a", None),
            ("gpt-4o-2024-0806", Some("gpt-4o-2024")),
            ("gpt-4o+2024-08-06", None),
            ("gpt-4o-2024_08-06", None),
            ("gpt-4o-20240806", None),
            ("gpt-4o-061", None),
            ("gpt-4o-06133", None),
            ("é2024-08-06", None),
            ("ab-é-08-06", None),
            ("", None),
        ];
        for (model, head) in cases {
            assert_eq!(undated(model), head, "{model}");
        }
    }

    #[test]
    fn a_model_is_priced_by_its_own_entry_or_its_snapshots_and_nothing_else() {
        let prices = Prices::load(None).unwrap();
        assert_eq!(prices.lookup("gpt-4-0613"), prices.lookup("gpt-4"));
        assert_eq!(prices.lookup("gpt-5-2025-08-07"), prices.lookup("gpt-5"));
        assert_ne!(prices.lookup("gpt-5-pro"), prices.lookup("gpt-5"));
        assert_eq!(prices.lookup("gpt-5-pro").map(|p| p.output), Some(120.0));
        assert!(prices.lookup("gpt-5-turbo-x").is_none());
        assert!(prices.lookup("gpt-4o-mini-fast").is_none());
        assert!(prices.lookup("gpt-4o-2024-13").is_none());
        assert_eq!(prices.max_output(Some("gpt-4o-mini")), 16_384);
        assert_eq!(prices.max_output(Some("no-such-model")), DEFAULT_MAX_OUTPUT);
        // Images by size and quality, times their count; an unknown size at the most.
        let images = |size: &str, quality: Option<&str>| Units::Images {
            count: 2,
            size: Some(size.into()),
            quality: quality.map(str::to_owned),
        };
        assert_eq!(
            prices.charge("dall-e-3", None, &images("1024x1024", None)),
            Some(0.08)
        );
        assert_eq!(
            prices.charge("dall-e-3", None, &images("1024x1792", Some("hd"))),
            Some(0.24)
        );
        assert_eq!(
            prices.charge("dall-e-3", None, &images("9x9", Some("hd"))),
            Some(0.24)
        );
        assert_eq!(
            prices.charge("dall-e-2", None, &images("256x256", None)),
            Some(0.032)
        );
        // Speech by the character; a model without a character price is unpriced for it.
        let chars = prices
            .charge("tts-1", None, &Units::Chars(1_000_000))
            .unwrap();
        assert!((chars - 15.0).abs() < 1e-9, "{chars}");
        assert_eq!(prices.charge("gpt-4o", None, &Units::Chars(10)), None);
    }

    #[test]
    fn snapshots_take_their_models_price_and_cached_tokens_are_billed_once() {
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
        assert!(prices.lookup("gpt-4omni").is_none());
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
