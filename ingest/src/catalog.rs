//! The price catalog: LiteLLM's `model_prices_and_context_window.json` as is, plus our TOML catalog that
//! overrides per model and adds dated price versions (`effective_from`).
//!
//! Prices are held as `i128` units of 10^-18 USD per token, so a call's cost is exact integer arithmetic.

use std::collections::HashMap;
use std::path::Path;

use aifinops_schemas::money::parse_usd;
use serde::Deserialize;

use crate::IngestError;

/// Prices of one model version, in 10^-18 USD per token. `None` = not in the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelPrice {
    pub input: Option<i128>,
    pub output: Option<i128>,
    pub cache_read: Option<i128>,
    pub cache_write: Option<i128>,
    pub cache_write_1h: Option<i128>,
    pub reasoning: Option<i128>,
    pub batch_input: Option<i128>,
    pub batch_output: Option<i128>,
    pub flex_input: Option<i128>,
    pub flex_output: Option<i128>,
    pub priority_input: Option<i128>,
    pub priority_output: Option<i128>,
    pub batch_cache_read: Option<i128>,
    pub batch_cache_write: Option<i128>,
    pub flex_cache_read: Option<i128>,
    pub priority_cache_read: Option<i128>,
}

impl ModelPrice {
    fn overlay(&mut self, o: &ModelPrice) {
        macro_rules! take {
            ($($f:ident),*) => { $( if o.$f.is_some() { self.$f = o.$f; } )* };
        }
        take!(
            input,
            output,
            cache_read,
            cache_write,
            cache_write_1h,
            reasoning,
            batch_input,
            batch_output,
            flex_input,
            flex_output,
            priority_input,
            priority_output,
            batch_cache_read,
            batch_cache_write,
            flex_cache_read,
            priority_cache_read
        );
    }

    /// A model is priceable when both the input and the output price are known.
    pub fn is_complete(&self) -> bool {
        self.input.is_some() && self.output.is_some()
    }
}

/// Service tier of a call; decides which price column applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    Default,
    Batch,
    Flex,
    Priority,
}

impl Tier {
    pub fn parse(s: &str) -> Option<Tier> {
        Some(match s {
            "default" | "standard" | "auto" | "on_demand" => Tier::Default,
            "batch" => Tier::Batch,
            "flex" => Tier::Flex,
            "priority" | "scale" => Tier::Priority,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Default => "default",
            Tier::Batch => "batch",
            Tier::Flex => "flex",
            Tier::Priority => "priority",
        }
    }
}

/// Token counts of one call, in the canonical inclusion rules (cache inside input, reasoning inside output).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokens {
    pub input: i64,
    pub cache_read: i64,
    pub cache_write: i64,
    pub output: i64,
    pub reasoning: i64,
}

impl ModelPrice {
    /// Exact cost in 10^-18 USD. Uncached input at the input price, cache reads and writes at their prices
    /// (the input price when the catalog has none), output at the output price, reasoning at the reasoning
    /// price when the catalog has one (else output). Batch and flex use their own prices, else half of
    /// standard; priority uses its own prices, else standard. `None` if the model is not priceable.
    pub fn cost(&self, t: &Tokens, tier: Tier) -> Option<i128> {
        let input = self.input?;
        let output = self.output?;
        let (tier_in, tier_out, halve) = match tier {
            Tier::Default => (input, output, false),
            Tier::Batch => match (self.batch_input, self.batch_output) {
                (Some(i), Some(o)) => (i, o, false),
                _ => (input, output, true),
            },
            Tier::Flex => match (self.flex_input.or(self.batch_input), self.flex_output.or(self.batch_output)) {
                (Some(i), Some(o)) => (i, o, false),
                _ => (input, output, true),
            },
            Tier::Priority => (self.priority_input.unwrap_or(input), self.priority_output.unwrap_or(output), false),
        };
        // Cache and reasoning prices scale with the tier the same way the input/output prices do.
        let scale = |p: i128, base: i128, tier_base: i128| -> i128 {
            if tier_base == base || base == 0 { p } else { p * tier_base / base }
        };
        // The tier's own cache prices when the catalog has them, else scaled like the input price.
        let (tier_cache_read, tier_cache_write) = match tier {
            Tier::Default => (None, None),
            Tier::Batch => (self.batch_cache_read, self.batch_cache_write),
            Tier::Flex => (self.flex_cache_read.or(self.batch_cache_read), self.batch_cache_write),
            Tier::Priority => (self.priority_cache_read, None),
        };
        let halve_own = |p: i128| if halve { p * 2 } else { p }; // explicit tier prices are not halved again
        let cache_read =
            tier_cache_read.map(halve_own).unwrap_or_else(|| scale(self.cache_read.unwrap_or(input), input, tier_in));
        let cache_write =
            tier_cache_write.map(halve_own).unwrap_or_else(|| scale(self.cache_write.unwrap_or(input), input, tier_in));
        let reasoning = scale(self.reasoning.unwrap_or(output), output, tier_out);
        let uncached = (t.input - t.cache_read - t.cache_write) as i128;
        let visible_out = (t.output - t.reasoning) as i128;
        let total = uncached * tier_in
            + t.cache_read as i128 * cache_read
            + t.cache_write as i128 * cache_write
            + visible_out * tier_out
            + t.reasoning as i128 * reasoning;
        Some(if halve { total / 2 } else { total })
    }
}

#[derive(Debug, Clone)]
struct Version {
    from_ms: i64,
    price: ModelPrice,
}

/// The price history of one catalog key: every layer as loaded (only the fields it set), and the
/// resolved versions. A version at time T is the overlay of every layer effective at or before T, in
/// order of (effective date, load order): a dated layer changes what it sets from its date on, and a
/// later file's undated layer overrides earlier files' fields in every version that does not set them.
#[derive(Debug, Clone, Default)]
struct Entry {
    layers: Vec<(i64, u64, ModelPrice)>,
    versions: Vec<Version>,
}

impl Entry {
    fn add(&mut self, from_ms: i64, seq: u64, price: &ModelPrice) {
        self.layers.push((from_ms, seq, price.clone()));
        self.layers.sort_by_key(|l| (l.0, l.1));
        let mut points: Vec<i64> = self.layers.iter().map(|l| l.0).collect();
        points.dedup();
        self.versions = points
            .into_iter()
            .map(|at| {
                let mut p = ModelPrice::default();
                for (_, _, l) in self.layers.iter().filter(|l| l.0 <= at) {
                    p.overlay(l);
                }
                Version { from_ms: at, price: p }
            })
            .collect();
    }
}

/// Counts of what an import took and what it left, for `config check` and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogStats {
    pub models: usize,
    pub priced_models: usize,
    /// Cost fields present in the file that this version does not price yet (e.g. per-image, per-second).
    pub ignored_cost_fields: usize,
    /// Prices that could not be represented exactly (more than 18 fractional digits); the field is skipped.
    pub inexact_prices: usize,
}

/// Model prices by provider and model name, each with dated versions.
#[derive(Debug, Clone, Default)]
pub struct PriceCatalog {
    /// model name -> versions (sorted by `from_ms`); names as written in the catalog.
    plain: HashMap<String, Entry>,
    /// provider -> model -> versions, from `provider/model` keys, `litellm_provider` and TOML `provider`.
    by_provider: HashMap<String, HashMap<String, Entry>>,
    /// Load order of layers.
    seq: u64,
    pub stats: CatalogStats,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlCatalog {
    #[serde(default)]
    model: Vec<TomlModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlModel {
    name: String,
    provider: Option<String>,
    effective_from: Option<String>,
    input_per_mtok: Option<String>,
    output_per_mtok: Option<String>,
    cache_read_per_mtok: Option<String>,
    cache_write_per_mtok: Option<String>,
    cache_write_1h_per_mtok: Option<String>,
    reasoning_per_mtok: Option<String>,
    batch_input_per_mtok: Option<String>,
    batch_output_per_mtok: Option<String>,
    flex_input_per_mtok: Option<String>,
    flex_output_per_mtok: Option<String>,
    priority_input_per_mtok: Option<String>,
    priority_output_per_mtok: Option<String>,
}

/// The built-in catalog used when no price file is given.
pub const DEFAULT_CATALOG_TOML: &str = include_str!("../prices/default.toml");

fn pick(entry: &Entry, ts_ms: i64) -> Option<&ModelPrice> {
    entry.versions.iter().rev().find(|v| v.from_ms <= ts_ms).map(|v| &v.price)
}

impl PriceCatalog {
    /// The built-in catalog.
    pub fn builtin() -> Self {
        let mut c = PriceCatalog::default();
        c.add_toml_str("<built-in catalog>", DEFAULT_CATALOG_TOML).expect("built-in catalog is valid");
        c
    }

    /// Loads files in order (later override earlier): `.json` as LiteLLM, anything else as our TOML.
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<Self, IngestError> {
        let mut c = PriceCatalog::default();
        for p in paths {
            c.add_file(p.as_ref())?;
        }
        Ok(c)
    }

    pub fn add_file(&mut self, path: &Path) -> Result<(), IngestError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| IngestError::Io { context: format!("reading price catalog {}", path.display()), source: e })?;
        let name = path.display().to_string();
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
            self.add_litellm_json(&name, &text)
        } else {
            self.add_toml_str(&name, &text)
        }
    }

    fn insert(&mut self, provider: Option<&str>, model: &str, from_ms: i64, price: &ModelPrice) {
        self.seq += 1;
        let seq = self.seq;
        match provider {
            Some(p) => self
                .by_provider
                .entry(p.to_string())
                .or_default()
                .entry(model.to_string())
                .or_default()
                .add(from_ms, seq, price),
            None => self.plain.entry(model.to_string()).or_default().add(from_ms, seq, price),
        }
    }

    /// Imports LiteLLM's `model_prices_and_context_window.json`. Takes the whole file; fields it does not
    /// price are counted in `stats.ignored_cost_fields`.
    pub fn add_litellm_json(&mut self, name: &str, text: &str) -> Result<(), IngestError> {
        let root: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).map_err(|e| {
            IngestError::Catalog { file: name.to_string(), reason: format!("not a LiteLLM price JSON object: {e}") }
        })?;
        for (key, entry) in &root {
            let Some(obj) = entry.as_object() else {
                continue;
            };
            if key == "sample_spec" {
                continue;
            }
            let mut price = ModelPrice::default();
            for (field, value) in obj {
                let slot = match field.as_str() {
                    "input_cost_per_token" => &mut price.input,
                    "output_cost_per_token" => &mut price.output,
                    "cache_read_input_token_cost" => &mut price.cache_read,
                    "cache_creation_input_token_cost" => &mut price.cache_write,
                    "cache_creation_input_token_cost_above_1hr" => &mut price.cache_write_1h,
                    "output_cost_per_reasoning_token" => &mut price.reasoning,
                    "input_cost_per_token_batches" => &mut price.batch_input,
                    "output_cost_per_token_batches" => &mut price.batch_output,
                    "input_cost_per_token_flex" => &mut price.flex_input,
                    "output_cost_per_token_flex" => &mut price.flex_output,
                    "input_cost_per_token_priority" => &mut price.priority_input,
                    "output_cost_per_token_priority" => &mut price.priority_output,
                    "cache_read_input_token_cost_batches" => &mut price.batch_cache_read,
                    "cache_creation_input_token_cost_batches" => &mut price.batch_cache_write,
                    "cache_read_input_token_cost_flex" => &mut price.flex_cache_read,
                    "cache_read_input_token_cost_priority" => &mut price.priority_cache_read,
                    f if f.contains("cost") => {
                        self.stats.ignored_cost_fields += 1;
                        continue;
                    }
                    _ => continue,
                };
                let text = match value {
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    _ => {
                        self.stats.ignored_cost_fields += 1;
                        continue;
                    }
                };
                // serde_json prints an f64 as its shortest round-trip form, i.e. the literal as written.
                match parse_usd(field, &text) {
                    Ok(v) => *slot = Some(v),
                    Err(_) => self.stats.inexact_prices += 1,
                }
            }
            self.stats.models += 1;
            if price.is_complete() {
                self.stats.priced_models += 1;
            }
            match key.split_once('/') {
                Some((prov, model)) => {
                    self.insert(Some(prov), model, i64::MIN, &price);
                    self.insert(None, key, i64::MIN, &price);
                }
                None => {
                    self.insert(None, key, i64::MIN, &price);
                    if let Some(p) = obj.get("litellm_provider").and_then(|v| v.as_str()) {
                        self.insert(Some(p), key, i64::MIN, &price);
                    }
                }
            }
        }
        Ok(())
    }

    /// Imports our TOML catalog (prices per 1M tokens as decimal strings).
    pub fn add_toml_str(&mut self, name: &str, text: &str) -> Result<(), IngestError> {
        let cat: TomlCatalog =
            toml::from_str(text).map_err(|e| IngestError::Catalog { file: name.to_string(), reason: e.to_string() })?;
        for m in cat.model {
            let per_token = |field: &str, v: &Option<String>| -> Result<Option<i128>, IngestError> {
                let Some(s) = v else { return Ok(None) };
                let err = |reason: String| IngestError::Catalog {
                    file: name.to_string(),
                    reason: format!("model {:?}: {field} = {s:?}: {reason}", m.name),
                };
                let per_m = parse_usd(field, s).map_err(|e| err(e.to_string()))?;
                if per_m < 0 {
                    return Err(err("negative price".into()));
                }
                if per_m % 1_000_000 != 0 {
                    return Err(err("more than 12 fractional digits per 1M tokens is not exact per token".into()));
                }
                Ok(Some(per_m / 1_000_000))
            };
            let price = ModelPrice {
                input: per_token("input_per_mtok", &m.input_per_mtok)?,
                output: per_token("output_per_mtok", &m.output_per_mtok)?,
                cache_read: per_token("cache_read_per_mtok", &m.cache_read_per_mtok)?,
                cache_write: per_token("cache_write_per_mtok", &m.cache_write_per_mtok)?,
                cache_write_1h: per_token("cache_write_1h_per_mtok", &m.cache_write_1h_per_mtok)?,
                reasoning: per_token("reasoning_per_mtok", &m.reasoning_per_mtok)?,
                batch_input: per_token("batch_input_per_mtok", &m.batch_input_per_mtok)?,
                batch_output: per_token("batch_output_per_mtok", &m.batch_output_per_mtok)?,
                flex_input: per_token("flex_input_per_mtok", &m.flex_input_per_mtok)?,
                flex_output: per_token("flex_output_per_mtok", &m.flex_output_per_mtok)?,
                priority_input: per_token("priority_input_per_mtok", &m.priority_input_per_mtok)?,
                priority_output: per_token("priority_output_per_mtok", &m.priority_output_per_mtok)?,
                ..Default::default()
            };
            let from_ms = match &m.effective_from {
                None => i64::MIN,
                Some(s) => parse_date_ms(s).ok_or_else(|| IngestError::Catalog {
                    file: name.to_string(),
                    reason: format!("model {:?}: effective_from {s:?} is not YYYY-MM-DD or RFC 3339", m.name),
                })?,
            };
            self.stats.models += 1;
            if price.is_complete() {
                self.stats.priced_models += 1;
            }
            self.insert(m.provider.as_deref(), &m.name, from_ms, &price);
            if m.provider.is_none() {
                // A provider-less override must beat provider-specific entries of the same model name.
                for models in self.by_provider.values_mut() {
                    if let Some(list) = models.get_mut(&m.name) {
                        list.add(from_ms, self.seq, &price);
                    }
                }
            }
        }
        Ok(())
    }

    /// The price of `model` from `provider` at event time `ts_ms`: `provider`+`model`, then `model`, then
    /// the part of `model` after its last `/` (gateways often write `openai/gpt-4o`).
    pub fn lookup(&self, provider: &str, model: &str, ts_ms: i64) -> Option<&ModelPrice> {
        let try_one = |m: &str| -> Option<&ModelPrice> {
            if let Some(list) = self.by_provider.get(provider).and_then(|p| p.get(m))
                && let Some(p) = pick(list, ts_ms)
                && p.is_complete()
            {
                return Some(p);
            }
            self.plain.get(m).and_then(|l| pick(l, ts_ms)).filter(|p| p.is_complete())
        };
        try_one(model).or_else(|| model.rsplit_once('/').and_then(|(_, m)| try_one(m)))
    }
}

/// `YYYY-MM-DD` (midnight UTC) or RFC 3339, as epoch milliseconds.
pub fn parse_date_ms(s: &str) -> Option<i64> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis());
    }
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|d| d.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifinops_schemas::money::{ONE_USD, parse_usd};

    fn usd(s: &str) -> i128 {
        parse_usd("t", s).unwrap()
    }

    #[test]
    fn cost_counts_every_token_class_once() {
        let c = PriceCatalog::builtin();
        let p = c.lookup("anthropic", "claude-sonnet-4-20250514", 0).unwrap();
        // 10_000 input of which 6_000 cache reads and 1_000 cache writes; 2_000 output.
        let t = Tokens { input: 10_000, cache_read: 6_000, cache_write: 1_000, output: 2_000, reasoning: 0 };
        let expect = usd("0.009") /* 3000 x 3/M */ + usd("0.0018") /* 6000 x 0.30/M */
            + usd("0.00375") /* 1000 x 3.75/M */ + usd("0.03") /* 2000 x 15/M */;
        assert_eq!(p.cost(&t, Tier::Default), Some(expect));
    }

    #[test]
    fn batch_uses_batch_prices_or_half() {
        let c = PriceCatalog::builtin();
        let t = Tokens { input: 1_000_000, output: 1_000_000, ..Default::default() };
        let gpt4o = c.lookup("openai", "gpt-4o", 0).unwrap();
        assert_eq!(gpt4o.cost(&t, Tier::Default), Some(usd("12.5")));
        assert_eq!(gpt4o.cost(&t, Tier::Batch), Some(usd("6.25")));
        let mini = c.lookup("openai", "gpt-4o-mini", 0).unwrap();
        assert_eq!(mini.cost(&t, Tier::Default), Some(usd("0.75")));
        assert_eq!(mini.cost(&t, Tier::Batch), Some(usd("0.375")), "no batch price: half of standard");
        assert_eq!(mini.cost(&t, Tier::Flex), Some(usd("0.375")), "flex = batch rates");
    }

    #[test]
    fn litellm_json_is_imported_exactly_and_unknown_fields_are_counted() {
        let json = r#"{
          "sample_spec": {"input_cost_per_token": 0},
          "gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                     "cache_read_input_token_cost": 1.25e-06, "input_cost_per_token_batches": 1.25e-06,
                     "output_cost_per_token_batches": 5e-06, "litellm_provider": "openai",
                     "search_context_cost_per_query": {"search_context_size_low": 0.03},
                     "output_cost_per_image": 0.01, "max_input_tokens": 128000},
          "bedrock/anthropic.claude-3-haiku": {"input_cost_per_token": 2.5e-07, "output_cost_per_token": 1.25e-06},
          "dall-e-3": {"output_cost_per_image": 0.04, "litellm_provider": "openai"}
        }"#;
        let mut c = PriceCatalog::default();
        c.add_litellm_json("t.json", json).unwrap();
        assert_eq!(c.stats.models, 3);
        assert_eq!(c.stats.priced_models, 2);
        assert_eq!(c.stats.ignored_cost_fields, 3);
        let p = c.lookup("openai", "gpt-4o", 0).unwrap();
        assert_eq!(p.input, Some(2_500_000_000_000));
        assert_eq!(p.output, Some(10_000_000_000_000));
        assert!(c.lookup("bedrock", "anthropic.claude-3-haiku", 0).is_some());
        assert!(c.lookup("openai", "bedrock/anthropic.claude-3-haiku", 0).is_some());
        assert!(c.lookup("openai", "dall-e-3", 0).is_none(), "no token prices: unpriced, never $0");
        assert!(c.lookup("openai", "openai/gpt-4o", 0).is_some(), "provider prefix in the model name");
    }

    #[test]
    fn real_litellm_entries_price_exactly_per_token_class_and_tier() {
        let mut c = PriceCatalog::default();
        let text = include_str!("../tests/fixtures/litellm_prices_sample.json");
        c.add_litellm_json("litellm_prices_sample.json", text).unwrap();
        assert!(c.stats.ignored_cost_fields > 10, "audio, image, search fields are counted: {:?}", c.stats);
        assert_eq!(c.stats.inexact_prices, 0);
        let t = Tokens { input: 1_000_000, cache_read: 400_000, cache_write: 100_000, output: 200_000, reasoning: 0 };
        let sonnet = c.lookup("anthropic", "claude-sonnet-4-5", 0).unwrap();
        // 500k x 3 + 400k x 0.30 + 100k x 3.75 + 200k x 15 per 1M
        assert_eq!(sonnet.cost(&t, Tier::Default), Some(usd("1.5") + usd("0.12") + usd("0.375") + usd("3")));
        // batch: LiteLLM's own batch prices for every class (1.5 / 0.15 / 1.875 / 7.5)
        assert_eq!(sonnet.cost(&t, Tier::Batch), Some(usd("0.75") + usd("0.06") + usd("0.1875") + usd("1.5")));
        let gpt = c.lookup("openai", "gpt-4o", 0).unwrap();
        let t2 = Tokens { input: 1_000_000, cache_read: 500_000, output: 100_000, ..Default::default() };
        // priority: 4.25 input, 2.125 cache read, 17 output per 1M
        assert_eq!(gpt.cost(&t2, Tier::Priority), Some(usd("2.125") + usd("1.0625") + usd("1.7")));
        assert!(c.lookup("gemini", "gemini-2.5-flash", 0).is_some(), "gemini/ prefix is a provider");
        assert!(c.lookup("openai", "whisper-1", 0).is_none(), "per-second audio models are unpriced, not $0");
    }

    #[test]
    fn the_whole_litellm_catalog_imports_when_available() {
        // scripts/test downloads LiteLLM's catalog from PyPI and sets this; CI must have it.
        let Ok(path) = std::env::var("AIFINOPS_LITELLM_CATALOG") else {
            assert!(std::env::var("CI").is_err(), "AIFINOPS_LITELLM_CATALOG must be set in CI (scripts/test sets it)");
            eprintln!("skipping: AIFINOPS_LITELLM_CATALOG not set");
            return;
        };
        let mut c = PriceCatalog::default();
        c.add_file(std::path::Path::new(&path)).expect("the whole LiteLLM catalog imports");
        assert!(c.stats.models > 1_000, "{:?}", c.stats);
        assert!(c.stats.priced_models > 1_000, "{:?}", c.stats);
        for (p, m) in
            [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"), ("azure", "gpt-4o")]
        {
            assert!(c.lookup(p, m, 0).is_some(), "{p}/{m} priced");
        }
    }

    #[test]
    fn toml_overrides_and_dated_versions() {
        let mut c = PriceCatalog::builtin();
        c.add_toml_str(
            "o.toml",
            r#"
            [[model]]
            name = "gpt-4o"
            output_per_mtok = "8.00"
            [[model]]
            name = "gpt-4o"
            effective_from = "2026-06-01"
            input_per_mtok = "2.00"
            "#,
        )
        .unwrap();
        let before = parse_date_ms("2026-05-31").unwrap();
        let after = parse_date_ms("2026-06-01").unwrap();
        let p0 = c.lookup("openai", "gpt-4o", before).unwrap();
        assert_eq!(p0.input, Some(usd("2.5") / 1_000_000));
        assert_eq!(p0.output, Some(usd("8") / 1_000_000), "override beats list price");
        let p1 = c.lookup("openai", "gpt-4o", after).unwrap();
        assert_eq!(p1.input, Some(usd("2") / 1_000_000));
        assert_eq!(p1.output, Some(usd("8") / 1_000_000), "dated version inherits other fields");
    }

    #[test]
    fn a_later_undated_override_reaches_dated_versions_and_tier_cache_prices_are_kept() {
        let mut c = PriceCatalog::default();
        c.add_toml_str(
            "1.toml",
            "[[model]]\nname = \"x\"\ninput_per_mtok = \"1\"\noutput_per_mtok = \"8\"\n\
             [[model]]\nname = \"x\"\neffective_from = \"2026-06-01\"\ninput_per_mtok = \"1.5\"\n",
        )
        .unwrap();
        c.add_toml_str("2.toml", "[[model]]\nname = \"x\"\noutput_per_mtok = \"6\"\n").unwrap();
        let june = parse_date_ms("2026-06-02").unwrap();
        let p = c.lookup("any", "x", june).unwrap();
        assert_eq!((p.input, p.output), (Some(usd("1.5") / 1_000_000), Some(usd("6") / 1_000_000)));
        let p = c.lookup("any", "x", 0).unwrap();
        assert_eq!((p.input, p.output), (Some(usd("1") / 1_000_000), Some(usd("6") / 1_000_000)));

        // a batch cache-read price that is not proportional to the batch input price is used as is
        let mut c = PriceCatalog::default();
        c.add_litellm_json(
            "t.json",
            r#"{"m": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "cache_read_input_token_cost": 1e-07,
                      "input_cost_per_token_batches": 5e-07, "output_cost_per_token_batches": 1e-06,
                      "cache_read_input_token_cost_batches": 1e-08}}"#,
        )
        .unwrap();
        let t = Tokens { input: 1_000_000, cache_read: 1_000_000, ..Default::default() };
        assert_eq!(c.lookup("p", "m", 0).unwrap().cost(&t, Tier::Batch), Some(usd("0.01")));
    }

    #[test]
    fn reasoning_price_and_priority_tier() {
        let mut c = PriceCatalog::default();
        c.add_toml_str(
            "r.toml",
            r#"
            [[model]]
            name = "think"
            input_per_mtok = "1"
            output_per_mtok = "4"
            reasoning_per_mtok = "6"
            priority_input_per_mtok = "2"
            priority_output_per_mtok = "8"
            "#,
        )
        .unwrap();
        let p = c.lookup("x", "think", 0).unwrap();
        let t = Tokens { input: 1_000_000, output: 1_000_000, reasoning: 500_000, ..Default::default() };
        assert_eq!(p.cost(&t, Tier::Default), Some(usd("1") + usd("2") + usd("3")));
        assert_eq!(p.cost(&t, Tier::Priority), Some(usd("2") + usd("4") + usd("6")));
        assert_eq!(usd("1"), ONE_USD);
    }

    #[test]
    fn bad_toml_names_file_and_field() {
        let mut c = PriceCatalog::default();
        let e =
            c.add_toml_str("bad.toml", "[[model]]\nname = \"m\"\ninput_per_mtok = \"abc\"\n").unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("input_per_mtok"), "{e}");
        let e =
            c.add_toml_str("typo.toml", "[[model]]\nname = \"m\"\ninput_per_mtk = \"1\"\n").unwrap_err().to_string();
        assert!(e.contains("typo.toml") && e.contains("input_per_mtk"), "{e}");
    }
}
