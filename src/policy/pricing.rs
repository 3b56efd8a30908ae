//! Model prices and what a call costs. Money is integer micro-dollars throughout (no float drift);
//! token prices are micro-dollars per million tokens. Model names are normalised so that an alias,
//! its dated snapshot and its Amazon Bedrock id (with or without a cross-region prefix) price the
//! same. Prices are data: the built-in table is `prices.toml`, in the very shape operators write
//! in the configuration and the admin API, which override it.
//!
//! Most calls are billed by tokens. Some are billed per unit their request names: images (by
//! quality and size) and characters of text to speech. The request's [`Units`] resolve to one
//! unit price at admission ([`ModelPrice::unit_price`]), and the call is charged its tokens plus
//! its units at that price ([`Price::cost_with_units_micros`]).

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
    /// Rates for every token of a call whose prompt is longer than a threshold, where the provider
    /// bills long prompts differently.
    pub long_context: Option<LongContext>,
}

/// Long-context pricing (Anthropic's, for Claude Sonnet 4 and 4.5 with the 1M-token window): when
/// a call's prompt tokens (input plus cache reads and writes) exceed `above_prompt_tokens`, all
/// its tokens, output included, are billed at these rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongContext {
    pub above_prompt_tokens: u64,
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Price {
    /// Cost of a call billed by tokens, rounded up to the next micro-dollar: never under-charged.
    pub fn cost_micros(&self, usage: &Usage) -> u64 {
        self.cost_with_units_micros(usage, 0)
    }

    /// Cost of a call: its tokens, plus its `usage.units` (images, characters) at
    /// `per_million_units` micro-dollars per million units (from [`ModelPrice::unit_price`]).
    pub fn cost_with_units_micros(&self, usage: &Usage, per_million_units: u64) -> u64 {
        let prompt = usage.input + usage.cache_read + usage.cache_write;
        let (input, output, cache_read, cache_write) = match self.long_context {
            Some(long) if prompt > long.above_prompt_tokens => {
                (long.input, long.output, long.cache_read, long.cache_write)
            }
            _ => (self.input, self.output, self.cache_read, self.cache_write),
        };
        let scaled = u128::from(usage.input) * u128::from(input)
            + u128::from(usage.output) * u128::from(output)
            + u128::from(usage.cache_read) * u128::from(cache_read)
            + u128::from(usage.cache_write) * u128::from(cache_write)
            + u128::from(usage.units) * u128::from(per_million_units);
        u64::try_from(scaled.div_ceil(TOKENS_PER_PRICE_UNIT)).unwrap_or(u64::MAX)
    }
}

/// What a request is billed in besides tokens, read from the request itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Units {
    /// `count` images of one quality and size; `None` (or `auto`) leaves it to the provider.
    Images {
        count: u64,
        quality: Option<String>,
        size: Option<String>,
    },
    /// Characters of input text (text to speech).
    Characters(u64),
}

impl Units {
    pub fn count(&self) -> u64 {
        match self {
            Units::Images { count, .. } => *count,
            Units::Characters(n) => *n,
        }
    }
}

/// Everything a model is priced by: tokens always, and images or characters for models billed
/// per unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPrice {
    pub tokens: Price,
    /// Micro-dollars per million characters of input (text to speech).
    pub characters: Option<u64>,
    /// Micro-dollars per image, by `quality/size` (lower case).
    pub images: BTreeMap<String, u64>,
    /// The `quality/size` the provider uses when a request names neither.
    pub default_image: Option<String>,
}

impl ModelPrice {
    /// Micro-dollars per million of `units`; the error says which price is missing.
    pub fn unit_price(&self, units: &Units) -> Result<u64, String> {
        match units {
            Units::Characters(_) => self
                .characters
                .ok_or_else(|| "has no price per character (`characters`)".to_owned()),
            Units::Images { quality, size, .. } => self
                .image_price(quality.as_deref(), size.as_deref())
                .map(|per_image| per_image.saturating_mul(TOKENS_PER_PRICE_UNIT as u64)),
        }
    }

    /// Micro-dollars per image of `quality` and `size`. What a request leaves out (or sets to
    /// `auto`) is the model's `default_image`; without one, the dearest image that fits what was
    /// named, so that an estimate is never low.
    fn image_price(&self, quality: Option<&str>, size: Option<&str>) -> Result<u64, String> {
        if self.images.is_empty() {
            return Err("has no price per image (`images`)".to_owned());
        }
        let named = |v: Option<&str>| {
            v.map(str::to_ascii_lowercase)
                .filter(|v| !v.is_empty() && v != "auto")
        };
        let (default_quality, default_size) = self
            .default_image
            .as_deref()
            .and_then(|d| d.split_once('/'))
            .map_or((None, None), |(q, s)| (Some(q), Some(s)));
        let quality = named(quality).or(default_quality.map(str::to_owned));
        let size = named(size).or(default_size.map(str::to_owned));
        let fits = |key: &str| {
            let (q, s) = key.split_once('/').unwrap_or((key, ""));
            quality.as_deref().is_none_or(|want| want == q)
                && size.as_deref().is_none_or(|want| want == s)
        };
        self.images
            .iter()
            .filter(|(key, _)| fits(key))
            .map(|(_, price)| *price)
            .max()
            .ok_or_else(|| {
                format!(
                    "has no price per image of quality {} and size {}",
                    quality.as_deref().unwrap_or("auto"),
                    size.as_deref().unwrap_or("auto")
                )
            })
    }

    pub fn to_usd(&self) -> PriceUsd {
        let t = &self.tokens;
        PriceUsd {
            input: usd(t.input),
            output: usd(t.output),
            cache_read: Some(usd(t.cache_read)),
            cache_write: Some(usd(t.cache_write)),
            long_context: t.long_context.map(|l| LongContextUsd {
                above_prompt_tokens: l.above_prompt_tokens,
                input: usd(l.input),
                output: usd(l.output),
                cache_read: Some(usd(l.cache_read)),
                cache_write: Some(usd(l.cache_write)),
            }),
            characters: self.characters.map(usd),
            images: self
                .images
                .iter()
                .map(|(k, v)| (k.clone(), usd(*v)))
                .collect(),
            default_image: self.default_image.clone(),
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

/// A price as operators write it (configuration, admin API, the built-in `prices.toml`): USD per
/// million tokens, per image, per million characters. Cache prices default to the input price.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceUsd {
    pub input: f64,
    pub output: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContextUsd>,
    /// USD per million characters of input (text to speech).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub characters: Option<f64>,
    /// USD per image, by `"quality/size"` (e.g. `"hd/1024x1792"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, f64>,
    /// The `"quality/size"` the provider uses when a request leaves them out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_image: Option<String>,
}

/// Long-context rates as operators write them: USD per million tokens above a prompt size.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContextUsd {
    pub above_prompt_tokens: u64,
    pub input: f64,
    pub output: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
}

type FieldError = (&'static str, String);

fn checked(field: &'static str, v: f64, unit: &str) -> Result<u64, FieldError> {
    if v.is_finite() && v >= 0.0 {
        Ok(micros(v))
    } else {
        Err((
            field,
            format!("{field} must be a non-negative number of USD {unit}"),
        ))
    }
}

const PER_MILLION_TOKENS: &str = "per million tokens";

impl PriceUsd {
    /// Validated conversion; the error names the offending field.
    pub fn to_price(&self) -> Result<ModelPrice, FieldError> {
        let mut tokens = token_rates(
            ("input", self.input),
            ("output", self.output),
            ("cache_read", self.cache_read),
            ("cache_write", self.cache_write),
        )?;
        if let Some(long) = &self.long_context {
            let rates = token_rates(
                ("long_context.input", long.input),
                ("long_context.output", long.output),
                ("long_context.cache_read", long.cache_read),
                ("long_context.cache_write", long.cache_write),
            )?;
            tokens.long_context = Some(LongContext {
                above_prompt_tokens: long.above_prompt_tokens,
                input: rates.input,
                output: rates.output,
                cache_read: rates.cache_read,
                cache_write: rates.cache_write,
            });
        }
        let characters = self
            .characters
            .map(|v| checked("characters", v, "per million characters"))
            .transpose()?;
        let mut images = BTreeMap::new();
        for (key, usd) in &self.images {
            let key = key.trim().to_ascii_lowercase();
            if !matches!(key.split_once('/'), Some((q, s)) if !q.is_empty() && !s.is_empty() && !s.contains('/'))
            {
                return Err((
                    "images",
                    format!(
                        "images: {key:?} is not \"quality/size\" (e.g. \"standard/1024x1024\")"
                    ),
                ));
            }
            images.insert(key, checked("images", *usd, "per image")?);
        }
        let default_image = self
            .default_image
            .as_deref()
            .map(|d| d.trim().to_ascii_lowercase());
        if let Some(d) = &default_image
            && !images.contains_key(d)
        {
            return Err((
                "default_image",
                format!("default_image {d:?} has no price in images"),
            ));
        }
        Ok(ModelPrice {
            tokens,
            characters,
            images,
            default_image,
        })
    }
}

/// Token rates from USD per million; cache prices default to the input price.
fn token_rates(
    input: (&'static str, f64),
    output: (&'static str, f64),
    cache_read: (&'static str, Option<f64>),
    cache_write: (&'static str, Option<f64>),
) -> Result<Price, FieldError> {
    let input_micros = checked(input.0, input.1, PER_MILLION_TOKENS)?;
    let cache = |(field, v): (&'static str, Option<f64>)| {
        v.map_or(Ok(input_micros), |v| checked(field, v, PER_MILLION_TOKENS))
    };
    Ok(Price {
        input: input_micros,
        output: checked(output.0, output.1, PER_MILLION_TOKENS)?,
        cache_read: cache(cache_read)?,
        cache_write: cache(cache_write)?,
        long_context: None,
    })
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

/// The built-in prices, in the operators' own format.
const BUILTIN_PRICES: &str = include_str!("prices.toml");

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
    entries: BTreeMap<String, (ModelPrice, PriceSource)>,
}

impl PriceTable {
    pub fn builtin() -> Self {
        let prices: BTreeMap<String, PriceUsd> =
            toml::from_str(BUILTIN_PRICES).expect("prices.toml is valid");
        let mut table = Self::default();
        for (model, price) in prices {
            let price = price.to_price().expect("built-in prices are valid");
            table.set(&model, price, PriceSource::Builtin);
        }
        table
    }

    /// Adds or replaces a model's price (under its canonical name).
    pub fn set(&mut self, model: &str, price: ModelPrice, source: PriceSource) {
        self.entries.insert(normalise_model(model), (price, source));
    }

    /// The token price of `model` under its canonical name, if known.
    pub fn price(&self, model: &str) -> Option<(String, Price)> {
        self.model_price(model)
            .map(|(name, price)| (name, price.tokens))
    }

    /// Everything `model` is priced by, under its canonical name, if known.
    pub fn model_price(&self, model: &str) -> Option<(String, &ModelPrice)> {
        let name = normalise_model(model);
        let (price, _) = self.entries.get(&name)?;
        Some((name, price))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &ModelPrice, PriceSource)> {
        self.entries.iter().map(|(k, (p, s))| (k.as_str(), p, *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd_price(input: f64, output: f64) -> PriceUsd {
        PriceUsd {
            input,
            output,
            ..Default::default()
        }
    }

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
        for kept in [
            "dall-e-3",
            "tts-1-hd",
            "babbage-002",
            "text-embedding-3-small",
        ] {
            assert_eq!(normalise_model(kept), kept);
        }
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
        // What the other endpoints need.
        assert_eq!(t.price("text-embedding-3-small").unwrap().1.input, 20_000);
        assert_eq!(t.price("text-embedding-3-small").unwrap().1.output, 0);
        assert_eq!(
            t.price("gpt-3.5-turbo-instruct").unwrap().1.output,
            2_000_000
        );
        assert_eq!(
            t.price("babbage-002").unwrap().1.cache_read,
            400_000,
            "cache defaults to input"
        );
        let dalle = t.model_price("dall-e-3").unwrap().1;
        assert_eq!(dalle.images["hd/1024x1792"], 120_000);
        assert_eq!(
            t.model_price("tts-1").unwrap().1.characters,
            Some(15_000_000)
        );
    }

    #[test]
    fn costs_are_exact_micro_dollars_rounded_up() {
        let p = PriceUsd {
            cache_read: Some(0.30),
            cache_write: Some(3.75),
            ..usd_price(3.0, 15.0)
        }
        .to_price()
        .unwrap()
        .tokens;
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
            ..Default::default()
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
        let p = usd_price(2.0, 4.0).to_price().unwrap().tokens;
        assert_eq!((p.cache_read, p.cache_write), (2_000_000, 2_000_000));
        assert_eq!(usd_price(1.0, -1.0).to_price().unwrap_err().0, "output");
        assert_eq!(usd_price(f64::NAN, 1.0).to_price().unwrap_err().0, "input");
        let bad_image = PriceUsd {
            images: BTreeMap::from([("1024x1024".to_owned(), 0.04)]),
            ..usd_price(0.0, 0.0)
        };
        assert_eq!(bad_image.to_price().unwrap_err().0, "images");
        let bad_default = PriceUsd {
            images: BTreeMap::from([("standard/1024x1024".to_owned(), 0.04)]),
            default_image: Some("hd/1024x1024".into()),
            ..usd_price(0.0, 0.0)
        };
        assert_eq!(bad_default.to_price().unwrap_err().0, "default_image");
        let bad_long = PriceUsd {
            long_context: Some(LongContextUsd {
                above_prompt_tokens: 10,
                input: 1.0,
                output: -2.0,
                ..Default::default()
            }),
            ..usd_price(1.0, 1.0)
        };
        assert_eq!(bad_long.to_price().unwrap_err().0, "long_context.output");
    }

    #[test]
    fn stored_prices_of_earlier_versions_still_read_and_new_shapes_round_trip() {
        let old: PriceUsd =
            serde_json::from_str(r#"{"input":1.0,"output":2.0,"cache_write":3.0}"#).unwrap();
        assert_eq!(
            old,
            PriceUsd {
                cache_write: Some(3.0),
                ..usd_price(1.0, 2.0)
            }
        );
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"input":1.0,"output":2.0,"cache_write":3.0}"#,
            "nothing new is written for a token price"
        );
        let dalle = PriceTable::builtin()
            .model_price("dall-e-3")
            .unwrap()
            .1
            .to_usd();
        let json = serde_json::to_string(&dalle).unwrap();
        let back: PriceUsd = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_price().unwrap(), dalle.to_price().unwrap());
        assert!(
            serde_json::from_str::<PriceUsd>(r#"{"input":1,"output":1,"per_image":2}"#).is_err()
        );
    }

    #[test]
    fn image_prices_follow_quality_size_and_the_models_defaults() {
        let t = PriceTable::builtin();
        let images = |model: &str, quality: Option<&str>, size: Option<&str>| {
            let units = Units::Images {
                count: 1,
                quality: quality.map(str::to_owned),
                size: size.map(str::to_owned),
            };
            t.model_price(model)
                .unwrap()
                .1
                .unit_price(&units)
                .map(|p| p / 1_000_000)
        };
        // Named exactly, in any case.
        assert_eq!(
            images("dall-e-3", Some("HD"), Some("1792x1024")),
            Ok(120_000)
        );
        // Left out: DALL-E's own defaults (standard, 1024x1024).
        assert_eq!(images("dall-e-3", None, None), Ok(40_000));
        assert_eq!(images("dall-e-3", Some("hd"), None), Ok(80_000));
        assert_eq!(images("dall-e-2", None, Some("256x256")), Ok(16_000));
        // gpt-image-1 has no default: `auto` is priced at the dearest image that fits.
        assert_eq!(
            images("gpt-image-1", Some("auto"), Some("auto")),
            Ok(250_000)
        );
        assert_eq!(images("gpt-image-1", None, Some("1024x1024")), Ok(167_000));
        assert_eq!(images("gpt-image-1", Some("low"), None), Ok(16_000));
        // Unknown combinations and models without image prices are refused, with why.
        assert!(
            images("dall-e-3", Some("hd"), Some("256x256"))
                .unwrap_err()
                .contains("quality hd and size 256x256")
        );
        assert!(
            images("gpt-4o", None, None)
                .unwrap_err()
                .contains("per image")
        );
        let tts = t.model_price("tts-1-hd").unwrap().1;
        assert_eq!(tts.unit_price(&Units::Characters(5)), Ok(30_000_000));
        assert!(
            t.model_price("gpt-4o")
                .unwrap()
                .1
                .unit_price(&Units::Characters(5))
                .is_err()
        );
    }

    #[test]
    fn units_are_charged_at_their_price_on_top_of_tokens() {
        let t = PriceTable::builtin();
        let (_, dalle) = t.model_price("dall-e-3").unwrap();
        let per_image = dalle
            .unit_price(&Units::Images {
                count: 3,
                quality: None,
                size: None,
            })
            .unwrap();
        let three = Usage {
            units: 3,
            ..Default::default()
        };
        assert_eq!(
            dalle.tokens.cost_with_units_micros(&three, per_image),
            120_000
        );
        // 1000 characters of tts-1 at $15 per million = $0.015.
        let (_, tts) = t.model_price("tts-1").unwrap();
        let chars = Usage {
            units: 1000,
            ..Default::default()
        };
        let per_char = tts.unit_price(&Units::Characters(1000)).unwrap();
        assert_eq!(tts.tokens.cost_with_units_micros(&chars, per_char), 15_000);
    }

    #[test]
    fn long_prompts_are_billed_at_long_context_rates_for_every_token() {
        let sonnet = PriceTable::builtin().price("claude-sonnet-4-5").unwrap().1;
        let at = |input: u64, cache_read: u64| {
            sonnet.cost_micros(&Usage {
                input,
                cache_read,
                output: 1000,
                ..Default::default()
            })
        };
        // 200k prompt tokens: base rates. 200k x $3 + 1k x $15 = $0.615.
        assert_eq!(at(200_000, 0), 615_000);
        // One more (counting cache reads): all at $6 / $22.50 / $0.60.
        assert_eq!(at(150_000, 50_001), 900_000 + 30_001 + 22_500);
        // Models without long-context pricing stay flat.
        let gpt = PriceTable::builtin().price("gpt-4.1").unwrap().1;
        assert_eq!(
            gpt.cost_micros(&Usage {
                input: 1_000_000,
                ..Default::default()
            }),
            2_000_000
        );
    }

    #[test]
    fn reasoning_tokens_are_output_tokens_and_charged_once() {
        // OpenAI reports reasoning inside completion tokens (completion_tokens_details is a
        // breakdown): the usage readers keep only the total, so o-series output costs once.
        let o3 = PriceTable::builtin().price("o3").unwrap().1;
        let usage = Usage {
            output: 1000,
            ..Default::default()
        };
        assert_eq!(o3.cost_micros(&usage), 8_000);
    }

    #[test]
    fn later_sources_override_earlier_ones() {
        let mut t = PriceTable::builtin();
        let cheap = usd_price(0.000001, 0.000001).to_price().unwrap();
        t.set("GPT-4o-2024-08-06", cheap.clone(), PriceSource::Admin);
        assert_eq!(t.price("gpt-4o").unwrap().1, cheap.tokens);
        assert!(
            t.iter()
                .any(|(m, _, s)| m == "gpt-4o" && s == PriceSource::Admin)
        );
    }
}
