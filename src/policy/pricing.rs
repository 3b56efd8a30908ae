//! Model prices and what a call costs. Money is integer micro-dollars throughout (no float drift);
//! prices are micro-dollars per million tokens. Model names are normalised so that an alias, its
//! dated snapshot and its Amazon Bedrock id (with or without a cross-region prefix) price the same.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Usage;
use super::limits::MICROS_PER_USD;

const TOKENS_PER_PRICE_UNIT: u128 = 1_000_000;

/// Micro-dollars per million tokens of each kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Price {
    /// Cost of a call, rounded up to the next micro-dollar: never under-charged.
    pub fn cost_micros(&self, usage: &Usage) -> u64 {
        let scaled = u128::from(usage.input) * u128::from(self.input)
            + u128::from(usage.output) * u128::from(self.output)
            + u128::from(usage.cache_read) * u128::from(self.cache_read)
            + u128::from(usage.cache_write) * u128::from(self.cache_write);
        u64::try_from(scaled.div_ceil(TOKENS_PER_PRICE_UNIT)).unwrap_or(u64::MAX)
    }

    pub fn to_usd(self) -> PriceUsd {
        PriceUsd {
            input: usd(self.input),
            output: usd(self.output),
            cache_read: Some(usd(self.cache_read)),
            cache_write: Some(usd(self.cache_write)),
        }
    }
}

/// Micro-dollars as dollars, for display and JSON.
pub fn usd(micros: u64) -> f64 {
    micros as f64 / MICROS_PER_USD as f64
}

/// Dollars as micro-dollars (nearest).
pub fn micros(usd: f64) -> u64 {
    (usd * MICROS_PER_USD as f64).round().max(0.0) as u64
}

/// A price as operators write it: USD per million tokens. Cache prices default to the input price.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceUsd {
    pub input: f64,
    pub output: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
}

impl PriceUsd {
    /// Validated conversion; the error names the offending field.
    pub fn to_price(&self) -> Result<Price, (&'static str, String)> {
        let check = |field: &'static str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(micros(v))
            } else {
                Err((
                    field,
                    format!("{field} must be a non-negative number of USD per million tokens"),
                ))
            }
        };
        let input = check("input", self.input)?;
        Ok(Price {
            input,
            output: check("output", self.output)?,
            cache_read: self
                .cache_read
                .map_or(Ok(input), |v| check("cache_read", v))?,
            cache_write: self
                .cache_write
                .map_or(Ok(input), |v| check("cache_write", v))?,
        })
    }
}

/// Canonical name of a model: lower case, without Bedrock region and vendor prefixes, Bedrock
/// version suffixes, date stamps or `-latest`.
///
/// `us.anthropic.claude-sonnet-4-5-20250929-v1:0` -> `claude-sonnet-4-5`,
/// `gpt-4o-2024-08-06` -> `gpt-4o`, `openai/gpt-4o-mini` -> `gpt-4o-mini`.
pub fn normalise_model(model: &str) -> String {
    let mut name = model.trim().to_ascii_lowercase();
    if let Some((_, rest)) = name.rsplit_once('/') {
        name = rest.to_owned();
    }
    for region in [
        "us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca.",
    ] {
        if let Some(rest) = name.strip_prefix(region) {
            name = rest.to_owned();
            break;
        }
    }
    for vendor in [
        "anthropic.",
        "openai.",
        "meta.",
        "amazon.",
        "mistral.",
        "cohere.",
    ] {
        if let Some(rest) = name.strip_prefix(vendor) {
            name = rest.to_owned();
            break;
        }
    }
    // Bedrock version: `-v1:0`, `-v2:0`, or a bare `:0`.
    if let Some((base, version)) = name.rsplit_once(':')
        && version.chars().all(|c| c.is_ascii_digit())
    {
        name = base.to_owned();
    }
    if let Some(i) = name.rfind("-v")
        && name[i + 2..].chars().all(|c| c.is_ascii_digit())
        && name.len() > i + 2
    {
        name.truncate(i);
    }
    if let Some(base) = name.strip_suffix("-latest") {
        name = base.to_owned();
    }
    strip_date(&name).to_owned()
}

/// Removes a trailing `-YYYYMMDD` (Anthropic) or `-YYYY-MM-DD` (OpenAI) snapshot date.
fn strip_date(name: &str) -> &str {
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if let Some((base, date)) = name.rsplit_once('-')
        && date.len() == 8
        && digits(date)
        && date.starts_with("20")
    {
        return base;
    }
    let bytes = name.len();
    if bytes > 11 {
        let (base, tail) = name.split_at(bytes - 11);
        let parts: Vec<&str> = tail.split('-').collect();
        if parts.len() == 4
            && parts[0].is_empty()
            && parts[1].len() == 4
            && parts[2].len() == 2
            && parts[3].len() == 2
            && parts[1..].iter().all(|p| digits(p))
            && parts[1].starts_with("20")
        {
            return base;
        }
    }
    name
}

/// USD per million tokens: (input, output, cache read, cache write), list prices at the time of
/// writing. Operators correct or extend them in `[pricing.models]` or through the admin API.
const BUILTIN_USD: &[(&str, f64, f64, f64, f64)] = &[
    // OpenAI: cached input is billed at the cache-read price; there is no cache-write charge.
    ("gpt-5", 1.25, 10.00, 0.125, 1.25),
    ("gpt-5-mini", 0.25, 2.00, 0.025, 0.25),
    ("gpt-5-nano", 0.05, 0.40, 0.005, 0.05),
    ("gpt-4.1", 2.00, 8.00, 0.50, 2.00),
    ("gpt-4.1-mini", 0.40, 1.60, 0.10, 0.40),
    ("gpt-4.1-nano", 0.10, 0.40, 0.025, 0.10),
    ("gpt-4o", 2.50, 10.00, 1.25, 2.50),
    ("gpt-4o-mini", 0.15, 0.60, 0.075, 0.15),
    ("o3", 2.00, 8.00, 0.50, 2.00),
    ("o3-mini", 1.10, 4.40, 0.55, 1.10),
    ("o4-mini", 1.10, 4.40, 0.275, 1.10),
    ("o1", 15.00, 60.00, 7.50, 15.00),
    // Anthropic (also on Bedrock as anthropic.<name>-<date>-v1:0): 5-minute cache writes at 1.25x input.
    ("claude-opus-4-5", 5.00, 25.00, 0.50, 6.25),
    ("claude-opus-4-1", 15.00, 75.00, 1.50, 18.75),
    ("claude-opus-4", 15.00, 75.00, 1.50, 18.75),
    ("claude-sonnet-4-5", 3.00, 15.00, 0.30, 3.75),
    ("claude-sonnet-4", 3.00, 15.00, 0.30, 3.75),
    ("claude-3-7-sonnet", 3.00, 15.00, 0.30, 3.75),
    ("claude-3-5-sonnet", 3.00, 15.00, 0.30, 3.75),
    ("claude-haiku-4-5", 1.00, 5.00, 0.10, 1.25),
    ("claude-3-5-haiku", 0.80, 4.00, 0.08, 1.00),
    ("claude-3-haiku", 0.25, 1.25, 0.03, 0.30),
];

/// Where a price came from, lowest precedence first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PriceSource {
    Builtin,
    Config,
    Admin,
}

/// Prices by canonical model name.
#[derive(Clone, Debug, Default)]
pub struct PriceTable {
    entries: BTreeMap<String, (Price, PriceSource)>,
}

impl PriceTable {
    pub fn builtin() -> Self {
        let mut table = Self::default();
        for &(model, input, output, cache_read, cache_write) in BUILTIN_USD {
            let price = PriceUsd {
                input,
                output,
                cache_read: Some(cache_read),
                cache_write: Some(cache_write),
            };
            table.set(
                model,
                price.to_price().expect("builtin prices are valid"),
                PriceSource::Builtin,
            );
        }
        table
    }

    /// Adds or replaces a model's price (under its canonical name).
    pub fn set(&mut self, model: &str, price: Price, source: PriceSource) {
        self.entries.insert(normalise_model(model), (price, source));
    }

    /// The price of `model` under its canonical name, if known.
    pub fn price(&self, model: &str) -> Option<(String, Price)> {
        let name = normalise_model(model);
        self.entries.get(&name).map(|(price, _)| (name, *price))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, Price, PriceSource)> {
        self.entries.iter().map(|(k, (p, s))| (k.as_str(), *p, *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_dated_names_and_bedrock_ids_resolve_to_one_entry() {
        for name in [
            "claude-sonnet-4-5",
            "claude-sonnet-4-5-20250929",
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "eu.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "Claude-Sonnet-4-5-Latest",
        ] {
            assert_eq!(normalise_model(name), "claude-sonnet-4-5", "{name}");
        }
        assert_eq!(normalise_model("gpt-4o-2024-08-06"), "gpt-4o");
        assert_eq!(normalise_model("openai/gpt-4o-mini"), "gpt-4o-mini");
        assert_eq!(
            normalise_model("anthropic.claude-3-5-haiku-20241022-v1:0"),
            "claude-3-5-haiku"
        );
        // Version numbers that are part of the name survive.
        assert_eq!(normalise_model("gpt-4.1-mini"), "gpt-4.1-mini");
        assert_eq!(normalise_model("claude-opus-4-1"), "claude-opus-4-1");
        assert_eq!(normalise_model("o4-mini"), "o4-mini");
    }

    #[test]
    fn builtin_prices_cover_current_models() {
        let t = PriceTable::builtin();
        let (name, p) = t
            .price("us.anthropic.claude-haiku-4-5-20251001-v1:0")
            .unwrap();
        assert_eq!(name, "claude-haiku-4-5");
        assert_eq!(
            (p.input, p.output, p.cache_read, p.cache_write),
            (1_000_000, 5_000_000, 100_000, 1_250_000)
        );
        assert_eq!(t.price("gpt-4o-mini-2024-07-18").unwrap().1.input, 150_000);
        assert!(t.price("my-private-model").is_none());
    }

    #[test]
    fn costs_are_exact_micro_dollars_rounded_up() {
        let p = PriceUsd {
            input: 3.0,
            output: 15.0,
            cache_read: Some(0.30),
            cache_write: Some(3.75),
        }
        .to_price()
        .unwrap();
        // 1M input tokens at $3 = $3 exactly.
        assert_eq!(
            p.cost_micros(&Usage {
                input: 1_000_000,
                ..Default::default()
            }),
            3_000_000
        );
        // 1000 in, 500 out, 2000 cache read, 100 cache write:
        // 3000 + 7500 + 600 + 375 = 11475 micro-dollars.
        let u = Usage {
            input: 1000,
            output: 500,
            cache_read: 2000,
            cache_write: 100,
            estimated: false,
        };
        assert_eq!(p.cost_micros(&u), 11_475);
        // One token of gpt-4o-mini input is 0.15 micro-dollars: charged as 1.
        let mini = PriceTable::builtin().price("gpt-4o-mini").unwrap().1;
        assert_eq!(
            mini.cost_micros(&Usage {
                input: 1,
                ..Default::default()
            }),
            1
        );
        assert_eq!(mini.cost_micros(&Usage::default()), 0);
    }

    #[test]
    fn cache_prices_default_to_the_input_price_and_bad_prices_name_their_field() {
        let p = PriceUsd {
            input: 2.0,
            output: 4.0,
            cache_read: None,
            cache_write: None,
        }
        .to_price()
        .unwrap();
        assert_eq!((p.cache_read, p.cache_write), (2_000_000, 2_000_000));
        let bad = PriceUsd {
            input: 1.0,
            output: -1.0,
            cache_read: None,
            cache_write: None,
        };
        assert_eq!(bad.to_price().unwrap_err().0, "output");
        let nan = PriceUsd {
            input: f64::NAN,
            output: 1.0,
            cache_read: None,
            cache_write: None,
        };
        assert_eq!(nan.to_price().unwrap_err().0, "input");
    }

    #[test]
    fn later_sources_override_earlier_ones() {
        let mut t = PriceTable::builtin();
        let cheap = Price {
            input: 1,
            output: 1,
            cache_read: 1,
            cache_write: 1,
        };
        t.set("GPT-4o-2024-08-06", cheap, PriceSource::Admin);
        assert_eq!(t.price("gpt-4o").unwrap().1, cheap);
        assert!(
            t.iter()
                .any(|(m, _, s)| m == "gpt-4o" && s == PriceSource::Admin)
        );
    }
}
