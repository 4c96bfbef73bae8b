//! The price catalog: LiteLLM's `model_prices_and_context_window.json` as is, plus our TOML catalog that
//! overrides per model, adds dated price versions (`effective_from` / `effective_to`), per-owner
//! negotiated prices, and model aliases.
//!
//! Prices are held as `i128` units of 10^-18 USD per token (per call for web search), so a call's cost is
//! exact integer arithmetic. Every version of every entry has a `price_id` (entry, version date and a hash
//! of its rates) that the lake keeps as the cost lineage of each row.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, Mutex};

use aifinops_schemas::money::parse_usd;
use serde::Deserialize;

use crate::IngestError;

/// A token class with its own price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Uncached text input.
    Input,
    CacheRead,
    /// Cache writes with the default (5-minute) TTL.
    CacheWrite,
    /// Cache writes with a 1-hour TTL.
    CacheWrite1h,
    /// Uncached audio input.
    AudioInput,
    /// Visible text output.
    Output,
    /// Reasoning ("thinking") output, billed as output unless the model has its own price.
    Reasoning,
    AudioOutput,
}

const CLASSES: usize = 8;
const ALL_CLASSES: [Class; CLASSES] = [
    Class::Input,
    Class::CacheRead,
    Class::CacheWrite,
    Class::CacheWrite1h,
    Class::AudioInput,
    Class::Output,
    Class::Reasoning,
    Class::AudioOutput,
];

impl Class {
    fn is_output(self) -> bool {
        matches!(self, Class::Output | Class::Reasoning | Class::AudioOutput)
    }
    /// The class whose price applies when the catalog has none for this one.
    fn fallback(self) -> Option<Class> {
        match self {
            Class::Input | Class::Output => None,
            Class::CacheRead | Class::CacheWrite | Class::AudioInput => Some(Class::Input),
            Class::CacheWrite1h => Some(Class::CacheWrite),
            Class::Reasoning | Class::AudioOutput => Some(Class::Output),
        }
    }
}

/// Service tier of a call; decides which price column applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Default,
    Batch,
    Flex,
    Priority,
}

const TIERS: [Tier; 4] = [Tier::Default, Tier::Batch, Tier::Flex, Tier::Priority];

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

/// Token counts of one call in the canonical inclusion rules: cache reads, cache writes and uncached
/// audio are inside `input`; `cache_write_1h` is inside `cache_write`; reasoning and audio output are
/// inside `output`. `web_search` counts billed search/retrieval tool calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: i64,
    pub cache_read: i64,
    pub cache_write: i64,
    pub cache_write_1h: i64,
    pub audio_input: i64,
    pub output: i64,
    pub reasoning: i64,
    pub audio_output: i64,
    pub web_search: i64,
}

/// Where a rate applies: above which input size (0 = any), in which tier, to which class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct RateKey {
    above: i64,
    tier: Tier,
    class: Class,
}

/// Rates as a catalog layer states them (only what it sets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct Rates {
    map: BTreeMap<RateKey, i128>,
    /// USD (10^-18) per web search call.
    web_search: Option<i128>,
    /// Negotiated discount on the whole call, in parts per million.
    discount_ppm: Option<i128>,
}

impl Rates {
    fn overlay(&mut self, o: &Rates) {
        for (k, v) in &o.map {
            self.map.insert(*k, *v);
        }
        if o.web_search.is_some() {
            self.web_search = o.web_search;
        }
        if o.discount_ppm.is_some() {
            self.discount_ppm = o.discount_ppm;
        }
    }
    fn get(&self, above: i64, tier: Tier, class: Class) -> Option<i128> {
        self.map.get(&RateKey { above, tier, class }).copied()
    }
    /// The tier's own rate; flex falls back to batch rates.
    fn get_tier(&self, above: i64, tier: Tier, class: Class) -> Option<i128> {
        self.get(above, tier, class).or_else(|| (tier == Tier::Flex).then(|| self.get(above, Tier::Batch, class))?)
    }

    /// The rate of `class` in `tier` for requests above `above` input tokens, derived when not stated:
    /// a tier without its own rate scales the standard rate like the tier's input (or output) rate, or
    /// halves it for batch and flex (their published discount) and keeps it for priority; a long-context
    /// tier without a rate for the class scales the standard rate like its input (or output) rate; a class
    /// without any rate is priced as its fallback class (cache and audio input as input, reasoning and
    /// audio output as output, 1-hour cache writes as 5-minute ones).
    fn resolve(&self, class: Class, tier: Tier, above: i64) -> Option<i128> {
        if let Some(p) = self.get_tier(above, tier, class) {
            return Some(p);
        }
        let side = if class.is_output() { Class::Output } else { Class::Input };
        if tier != Tier::Default {
            let base = self.resolve(class, Tier::Default, above)?;
            // the tier's ratio at this threshold, else its ratio for requests of any size
            let ratio = |above: i64| match (self.get_tier(above, tier, side), self.get(above, Tier::Default, side)) {
                (Some(t), Some(b)) if b != 0 => Some((t, b)),
                _ => None,
            };
            return Some(match ratio(above).or_else(|| ratio(0)) {
                Some((t, b)) if class != side || self.get_tier(above, tier, side).is_none() => base.checked_mul(t)? / b,
                Some(_) => base, // unreachable: the side's own tier rate was found above
                None => match tier {
                    Tier::Batch | Tier::Flex => base / 2,
                    _ => base,
                },
            });
        }
        if above > 0 {
            let base = self.resolve(class, Tier::Default, 0)?;
            return Some(match (self.get(above, Tier::Default, side), self.get(0, Tier::Default, side)) {
                (Some(t), Some(b)) if b != 0 => base.checked_mul(t)? / b,
                _ => base,
            });
        }
        class.fallback().and_then(|f| self.resolve(f, tier, above))
    }
}

/// Prices of one model version, resolved for every tier, class and long-context threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrice {
    /// Cost lineage: catalog entry, version date (`list` = undated) and a hash of the rates.
    pub id: Arc<str>,
    rates: Rates,
    /// Input-size thresholds ascending (0 first), each with rates per tier and class.
    table: Vec<(i64, [[Option<i128>; CLASSES]; 4])>,
}

impl ModelPrice {
    fn build(id: String, rates: Rates) -> ModelPrice {
        let mut thresholds: Vec<i64> = rates
            .map
            .keys()
            .filter(|k| k.above > 0 && k.tier == Tier::Default && k.class == Class::Input)
            .map(|k| k.above)
            .collect();
        thresholds.insert(0, 0);
        thresholds.dedup();
        let table = thresholds
            .into_iter()
            .map(|above| {
                let row = TIERS.map(|tier| ALL_CLASSES.map(|class| rates.resolve(class, tier, above)));
                (above, row)
            })
            .collect();
        ModelPrice { id: id.into(), rates, table }
    }

    /// A model is priceable when both its standard input and output rates are known.
    pub fn is_complete(&self) -> bool {
        self.table[0].1[0][Class::Input as usize].is_some() && self.table[0].1[0][Class::Output as usize].is_some()
    }

    /// The rate per token (10^-18 USD) of a class and tier for requests of any size.
    pub fn rate(&self, class: Class, tier: Tier) -> Option<i128> {
        self.table[0].1[tier as usize][class as usize]
    }

    /// The price of one web search call (10^-18 USD), if the catalog has one.
    pub fn web_search_rate(&self) -> Option<i128> {
        self.rates.web_search
    }

    /// The input sizes above which a long-context tier prices a request (ascending; empty when the model
    /// has none).
    pub fn long_context_thresholds(&self) -> Vec<i64> {
        self.table.iter().map(|r| r.0).filter(|a| *a > 0).collect()
    }

    /// The negotiated discount on the whole call, in parts per million, if any.
    pub fn discount_ppm(&self) -> Option<i128> {
        self.rates.discount_ppm
    }

    /// The input size above which a long-context tier prices a request, if this call reaches one.
    pub fn long_context_tier(&self, t: &Tokens) -> Option<i64> {
        self.table.iter().rev().find(|(above, _)| *above > 0 && t.input > *above).map(|r| r.0)
    }

    /// Exact cost in 10^-18 USD: every token class at its rate in the call's tier, the whole request at the
    /// long-context tier its input size reaches, web search calls at the per-call price, then the
    /// negotiated discount. `None` when the model (or a billed web search) has no price: never $0.
    pub fn cost(&self, t: &Tokens, tier: Tier) -> Option<i128> {
        let row = self.table.iter().rev().find(|(above, _)| *above == 0 || t.input > *above)?;
        self.cost_at(&row.1[tier as usize], t)
    }

    /// Exact cost of token sums over many calls (e.g. a rollup row): like [`ModelPrice::cost`], but every
    /// token at the rates for requests of any size, since a sum says nothing about each request's input
    /// size (no long-context tier), and the discount applied once to the sum.
    pub fn cost_at_base_rates(&self, t: &Tokens, tier: Tier) -> Option<i128> {
        self.cost_at(&self.table[0].1[tier as usize], t)
    }

    fn cost_at(&self, r: &[Option<i128>; CLASSES], t: &Tokens) -> Option<i128> {
        let rate = |c: Class| r[c as usize];
        // checked: an absurd rate times 2^53 tokens is unpriced, never a wrapped figure
        let mut total: i128 = 0;
        let mut add = |n: i64, c: Class| -> Option<()> {
            if n != 0 {
                total = total.checked_add((n as i128).checked_mul(rate(c)?)?)?;
            }
            Some(())
        };
        rate(Class::Input)?;
        rate(Class::Output)?;
        add(t.input - t.cache_read - t.cache_write - t.audio_input, Class::Input)?;
        add(t.cache_read, Class::CacheRead)?;
        add(t.cache_write - t.cache_write_1h, Class::CacheWrite)?;
        add(t.cache_write_1h, Class::CacheWrite1h)?;
        add(t.audio_input, Class::AudioInput)?;
        add(t.output - t.reasoning - t.audio_output, Class::Output)?;
        add(t.reasoning, Class::Reasoning)?;
        add(t.audio_output, Class::AudioOutput)?;
        if t.web_search > 0 {
            total = total.checked_add((t.web_search as i128).checked_mul(self.rates.web_search?)?)?;
        }
        if let Some(ppm) = self.rates.discount_ppm {
            total = total.checked_mul(1_000_000 - ppm)? / 1_000_000;
        }
        Some(total)
    }
}

/// A looked-up price: borrowed from the catalog, or an owner override merged over the list price.
#[derive(Debug, Clone)]
pub enum PriceRef<'a> {
    List(&'a ModelPrice),
    Owner(Arc<ModelPrice>),
}

impl Deref for PriceRef<'_> {
    type Target = ModelPrice;
    fn deref(&self) -> &ModelPrice {
        match self {
            PriceRef::List(p) => p,
            PriceRef::Owner(p) => p,
        }
    }
}

#[derive(Debug, Clone)]
struct Version {
    from_ms: i64,
    rates: Rates,
    price: ModelPrice,
}

#[derive(Debug, Clone)]
struct Layer {
    from_ms: i64,
    to_ms: i64,
    seq: u64,
    rates: Rates,
}

/// The price history of one catalog key: every layer as loaded (only the fields it set), and the
/// resolved versions. A version at time T is the overlay of every layer in effect at T
/// (`effective_from <= T < effective_to`), in order of (effective date, load order): a dated layer changes
/// what it sets from its date on (until its end date), and a later file's undated layer overrides earlier
/// files' fields in every version that does not set them.
#[derive(Debug, Clone, Default)]
struct Entry {
    key: String,
    layers: Vec<Layer>,
    versions: Vec<Version>,
}

impl Entry {
    fn add(&mut self, key: &str, layer: Layer) {
        if self.key.is_empty() {
            self.key = key.to_string();
        }
        self.layers.push(layer);
        self.layers.sort_by_key(|l| (l.from_ms, l.seq));
        let mut points: Vec<i64> = self.layers.iter().flat_map(|l| [l.from_ms, l.to_ms]).collect();
        points.sort_unstable();
        points.dedup();
        points.retain(|p| *p != i64::MAX);
        self.versions = points
            .into_iter()
            .map(|at| {
                let mut r = Rates::default();
                for l in self.layers.iter().filter(|l| l.from_ms <= at && at < l.to_ms) {
                    r.overlay(&l.rates);
                }
                let date = if at == i64::MIN {
                    "list".to_string()
                } else {
                    chrono::DateTime::from_timestamp_millis(at)
                        .map(|d| d.format("%Y-%m-%d").to_string())
                        .unwrap_or_else(|| at.to_string())
                };
                let h = xxhash_rust::xxh3::xxh3_64(format!("{:?}", r).as_bytes());
                let id = format!("{}@{date}#{:08x}", self.key, h as u32);
                Version { from_ms: at, price: ModelPrice::build(id, r.clone()), rates: r }
            })
            .collect();
    }

    fn at(&self, ts_ms: i64) -> Option<&Version> {
        self.versions.iter().rev().find(|v| v.from_ms <= ts_ms)
    }
}

/// Entries by model name and by provider + model name.
#[derive(Debug, Clone, Default)]
struct Book {
    /// Prefix of the entries' lineage keys (`owner=<id>:` for negotiated prices).
    prefix: String,
    /// Provider-less TOML layers by model name: they apply to every provider's entry of the name.
    overrides: HashMap<String, Vec<Layer>>,
    /// model name -> entry; names as written in the catalog.
    plain: HashMap<String, Entry>,
    /// provider -> model -> entry, from `provider/model` keys, `litellm_provider` and TOML `provider`.
    by_provider: HashMap<String, HashMap<String, Entry>>,
}

impl Book {
    fn insert(&mut self, provider: Option<&str>, model: &str, layer: Layer) {
        match provider {
            Some(p) => {
                let key = format!("{}{p}/{model}", self.prefix);
                let models = self.by_provider.entry(p.to_string()).or_default();
                let e = models.entry(model.to_string()).or_insert_with(|| {
                    // a new provider entry starts with the provider-less overrides of its model, whatever
                    // the load order (their seq keeps the file order)
                    let mut e = Entry::default();
                    for l in self.overrides.get(model).into_iter().flatten() {
                        e.add(&key, l.clone());
                    }
                    e
                });
                e.add(&key, layer);
            }
            None => {
                self.overrides.entry(model.to_string()).or_default().push(layer.clone());
                // A provider-less layer also applies to provider-specific entries of the same model name.
                for models in self.by_provider.values_mut() {
                    if let Some(e) = models.get_mut(model) {
                        e.add(&e.key.clone(), layer.clone());
                    }
                }
                let key = format!("{}{model}", self.prefix);
                self.plain.entry(model.to_string()).or_default().add(&key, layer)
            }
        }
    }

    fn find(&self, provider: &str, model: &str) -> Option<&Entry> {
        self.by_provider.get(provider).and_then(|p| p.get(model)).or_else(|| self.plain.get(model))
    }

    /// Any provider's entry of `model` (the alphabetically first provider, for determinism).
    fn find_any(&self, model: &str) -> Option<&Entry> {
        self.by_provider.iter().filter_map(|(p, m)| Some((p, m.get(model)?))).min_by_key(|(p, _)| *p).map(|(_, e)| e)
    }
}

/// A model alias: calls naming `name` (from `provider`, if set) are priced as `model`.
#[derive(Debug, Clone)]
struct Alias {
    provider: Option<String>,
    model: String,
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
    pub owner_overrides: usize,
    pub aliases: usize,
}

/// (owner override version id, list version id) of a merged price.
type MergeKey = (Arc<str>, Arc<str>);

/// Model prices by provider and model name, each with dated versions, per-owner overrides and aliases.
#[derive(Debug, Default)]
pub struct PriceCatalog {
    list: Book,
    /// owner id -> that owner's negotiated layers (merged over the list price at lookup).
    owners: HashMap<String, Book>,
    /// alias name -> targets (provider-specific first).
    aliases: HashMap<String, Vec<Alias>>,
    /// Load order of layers.
    seq: u64,
    merged: Mutex<HashMap<MergeKey, Arc<ModelPrice>>>,
    pub stats: CatalogStats,
}

impl Clone for PriceCatalog {
    fn clone(&self) -> Self {
        PriceCatalog {
            list: self.list.clone(),
            owners: self.owners.clone(),
            aliases: self.aliases.clone(),
            seq: self.seq,
            merged: Mutex::default(),
            stats: self.stats.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlCatalog {
    #[serde(default)]
    model: Vec<TomlModel>,
    #[serde(default)]
    alias: Vec<TomlAlias>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlAlias {
    /// The name calls use (an Azure deployment, a gateway model group, a fine-tune ...).
    name: String,
    /// Only for calls from this provider.
    provider: Option<String>,
    /// The catalog model that prices it.
    model: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlModel {
    name: String,
    provider: Option<String>,
    /// Only calls attributed to this owner (a negotiated price that beats the list price).
    owner: Option<String>,
    effective_from: Option<String>,
    effective_to: Option<String>,
    input_per_mtok: Option<String>,
    output_per_mtok: Option<String>,
    cache_read_per_mtok: Option<String>,
    cache_write_per_mtok: Option<String>,
    cache_write_1h_per_mtok: Option<String>,
    reasoning_per_mtok: Option<String>,
    audio_input_per_mtok: Option<String>,
    audio_output_per_mtok: Option<String>,
    batch_input_per_mtok: Option<String>,
    batch_output_per_mtok: Option<String>,
    batch_cache_read_per_mtok: Option<String>,
    batch_cache_write_per_mtok: Option<String>,
    flex_input_per_mtok: Option<String>,
    flex_output_per_mtok: Option<String>,
    priority_input_per_mtok: Option<String>,
    priority_output_per_mtok: Option<String>,
    priority_cache_read_per_mtok: Option<String>,
    /// USD per web search call.
    web_search_per_call: Option<String>,
    /// Percent off the whole call (up to 4 decimals), e.g. "15" for a 15 % negotiated discount.
    discount_percent: Option<String>,
    #[serde(default)]
    above: Vec<TomlAbove>,
}

/// A long-context tier: requests whose input exceeds `input_tokens` are priced at these rates.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlAbove {
    input_tokens: i64,
    input_per_mtok: Option<String>,
    output_per_mtok: Option<String>,
    cache_read_per_mtok: Option<String>,
    cache_write_per_mtok: Option<String>,
    cache_write_1h_per_mtok: Option<String>,
}

/// The built-in catalog used when no price file is given.
pub const DEFAULT_CATALOG_TOML: &str = include_str!("../prices/default.toml");

/// Maps a LiteLLM cost field to the rate it sets: `<class>[_above_<N>k_tokens][_batches|_flex|_priority]`.
fn litellm_rate_key(field: &str) -> Option<RateKey> {
    let (rest, tier) = if let Some(r) = field.strip_suffix("_batches") {
        (r, Tier::Batch)
    } else if let Some(r) = field.strip_suffix("_flex") {
        (r, Tier::Flex)
    } else if let Some(r) = field.strip_suffix("_priority") {
        (r, Tier::Priority)
    } else {
        (field, Tier::Default)
    };
    let (rest, above) = match rest.strip_suffix("k_tokens").and_then(|r| r.rsplit_once("_above_")) {
        Some((head, n)) => (head, n.parse::<i64>().ok().filter(|n| *n > 0)? * 1000),
        None => (rest, 0),
    };
    let class = match rest {
        "input_cost_per_token" => Class::Input,
        "output_cost_per_token" => Class::Output,
        "cache_read_input_token_cost" => Class::CacheRead,
        "cache_creation_input_token_cost" => Class::CacheWrite,
        "cache_creation_input_token_cost_above_1hr" => Class::CacheWrite1h,
        "output_cost_per_reasoning_token" => Class::Reasoning,
        "input_cost_per_audio_token" => Class::AudioInput,
        "output_cost_per_audio_token" => Class::AudioOutput,
        _ => return None,
    };
    Some(RateKey { above, tier, class })
}

/// `YYYY-MM-DD` (midnight UTC) or RFC 3339, as epoch milliseconds.
pub fn parse_date_ms(s: &str) -> Option<i64> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis());
    }
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|d| d.timestamp_millis())
}

/// Names a model may be priced under, most specific first: the name, its alias, then the name without
/// provider prefixes (`openai/gpt-4o`), Bedrock ARNs and cross-region prefixes
/// (`arn:aws:bedrock:…:inference-profile/us.anthropic.claude-…`), version suffixes (`-v1:0`), vendor
/// prefixes (`anthropic.`), and date or revision suffixes (`-2024-08-06`, `-20250929`, `@20240620`,
/// `-latest`, `-002`).
pub fn model_candidates(model: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let push = |s: &str, out: &mut Vec<String>| {
        if !s.is_empty() && !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    };
    push(model, &mut out);
    let mut m = model;
    if let Some((_, tail)) = m.rsplit_once('/') {
        m = tail;
        push(m, &mut out);
    }
    for region in ["us.", "eu.", "apac.", "global.", "us-gov.", "ca.", "jp.", "au.", "apne1.", "use1."] {
        if let Some(r) = m.strip_prefix(region) {
            m = r;
            push(m, &mut out);
            break;
        }
    }
    let mut cur = m.to_string();
    // version suffixes: `:0`, `-v1`, `-v2:0`
    if let Some((head, tail)) = cur.rsplit_once(':')
        && !tail.is_empty()
        && tail.bytes().all(|b| b.is_ascii_digit())
    {
        cur = head.to_string();
        push(&cur, &mut out);
    }
    if let Some((head, tail)) = cur.rsplit_once("-v")
        && !tail.is_empty()
        && tail.bytes().all(|b| b.is_ascii_digit())
    {
        cur = head.to_string();
        push(&cur, &mut out);
    }
    for vendor in ["anthropic.", "meta.", "amazon.", "cohere.", "mistral.", "ai21.", "deepseek.", "openai.", "qwen."] {
        if let Some(r) = cur.strip_prefix(vendor) {
            cur = r.to_string();
            push(&cur, &mut out);
            break;
        }
    }
    loop {
        let before = cur.len();
        let b = cur.as_bytes();
        let digits = |s: &[u8]| s.iter().all(|c| c.is_ascii_digit());
        let n = b.len();
        if n > 11 && b[n - 11] == b'-' && b[n - 6] == b'-' && b[n - 3] == b'-' && {
            let t = &b[n - 10..];
            digits(&t[..4]) && digits(&t[5..7]) && digits(&t[8..])
        } {
            cur.truncate(n - 11); // -YYYY-MM-DD
        } else if n > 9 && (b[n - 9] == b'-' || b[n - 9] == b'@') && digits(&b[n - 8..]) {
            cur.truncate(n - 9); // -YYYYMMDD, @YYYYMMDD
        } else if let Some(r) = cur.strip_suffix("-latest").or_else(|| cur.strip_suffix("@latest")) {
            cur = r.to_string();
        } else if let Some((head, tail)) = cur.rsplit_once('-')
            && (3..=4).contains(&tail.len())
            && digits(tail.as_bytes())
        {
            cur = head.to_string(); // -002, -0613
        }
        if cur.len() == before {
            break;
        }
        push(&cur, &mut out);
    }
    out
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

    fn layer(&mut self, from_ms: i64, to_ms: i64, rates: Rates) -> Layer {
        self.seq += 1;
        Layer { from_ms, to_ms, seq: self.seq, rates }
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
            let mut rates = Rates::default();
            for (field, value) in obj {
                if field == "search_context_cost_per_query" {
                    // per-call web search price; the medium context size is the providers' default
                    let v = value.get("search_context_size_medium").or_else(|| value.get("search_context_size_low"));
                    match v.map(|v| parse_usd(field, &v.to_string())) {
                        Some(Ok(p)) => rates.web_search = Some(p),
                        Some(Err(_)) => self.stats.inexact_prices += 1,
                        None => self.stats.ignored_cost_fields += 1,
                    }
                    continue;
                }
                let Some(rk) = litellm_rate_key(field) else {
                    if field.contains("cost") {
                        self.stats.ignored_cost_fields += 1;
                    }
                    continue;
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
                    Ok(v) if v >= 0 => {
                        rates.map.insert(rk, v);
                    }
                    _ => self.stats.inexact_prices += 1,
                }
            }
            self.stats.models += 1;
            if rates.map.contains_key(&RateKey { above: 0, tier: Tier::Default, class: Class::Input })
                && rates.map.contains_key(&RateKey { above: 0, tier: Tier::Default, class: Class::Output })
            {
                self.stats.priced_models += 1;
            }
            let layer = self.layer(i64::MIN, i64::MAX, rates);
            match key.split_once('/') {
                Some((prov, model)) => {
                    self.list.insert(Some(prov), model, layer.clone());
                    self.list.plain.entry(key.to_string()).or_default().add(key, layer);
                }
                None => {
                    self.list.plain.entry(key.to_string()).or_default().add(key, layer.clone());
                    if let Some(p) = obj.get("litellm_provider").and_then(|v| v.as_str()) {
                        self.list.insert(Some(p), key, layer);
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
        for a in cat.alias {
            if a.name.is_empty() || a.model.is_empty() {
                return Err(IngestError::Catalog {
                    file: name.to_string(),
                    reason: "an [[alias]] needs a non-empty `name` and `model`".into(),
                });
            }
            self.stats.aliases += 1;
            let list = self.aliases.entry(a.name).or_default();
            list.push(Alias { provider: a.provider, model: a.model });
            list.sort_by_key(|a| a.provider.is_none());
        }
        for m in cat.model {
            let err = |reason: String| IngestError::Catalog {
                file: name.to_string(),
                reason: format!("model {:?}: {reason}", m.name),
            };
            let per_token = |field: &str, v: &Option<String>| -> Result<Option<i128>, IngestError> {
                let Some(s) = v else { return Ok(None) };
                let e = |why: String| err(format!("{field} = {s:?}: {why}"));
                let per_m = parse_usd(field, s).map_err(|x| e(x.to_string()))?;
                if per_m < 0 {
                    return Err(e("negative price".into()));
                }
                if per_m % 1_000_000 != 0 {
                    return Err(e("more than 12 fractional digits per 1M tokens is not exact per token".into()));
                }
                Ok(Some(per_m / 1_000_000))
            };
            let mut rates = Rates::default();
            let mut set =
                |above: i64, tier: Tier, class: Class, field: &str, v: &Option<String>| -> Result<(), IngestError> {
                    if let Some(p) = per_token(field, v)? {
                        rates.map.insert(RateKey { above, tier, class }, p);
                    }
                    Ok(())
                };
            use Class::*;
            use Tier::*;
            set(0, Default, Input, "input_per_mtok", &m.input_per_mtok)?;
            set(0, Default, Output, "output_per_mtok", &m.output_per_mtok)?;
            set(0, Default, CacheRead, "cache_read_per_mtok", &m.cache_read_per_mtok)?;
            set(0, Default, CacheWrite, "cache_write_per_mtok", &m.cache_write_per_mtok)?;
            set(0, Default, CacheWrite1h, "cache_write_1h_per_mtok", &m.cache_write_1h_per_mtok)?;
            set(0, Default, Reasoning, "reasoning_per_mtok", &m.reasoning_per_mtok)?;
            set(0, Default, AudioInput, "audio_input_per_mtok", &m.audio_input_per_mtok)?;
            set(0, Default, AudioOutput, "audio_output_per_mtok", &m.audio_output_per_mtok)?;
            set(0, Batch, Input, "batch_input_per_mtok", &m.batch_input_per_mtok)?;
            set(0, Batch, Output, "batch_output_per_mtok", &m.batch_output_per_mtok)?;
            set(0, Batch, CacheRead, "batch_cache_read_per_mtok", &m.batch_cache_read_per_mtok)?;
            set(0, Batch, CacheWrite, "batch_cache_write_per_mtok", &m.batch_cache_write_per_mtok)?;
            set(0, Flex, Input, "flex_input_per_mtok", &m.flex_input_per_mtok)?;
            set(0, Flex, Output, "flex_output_per_mtok", &m.flex_output_per_mtok)?;
            set(0, Priority, Input, "priority_input_per_mtok", &m.priority_input_per_mtok)?;
            set(0, Priority, Output, "priority_output_per_mtok", &m.priority_output_per_mtok)?;
            set(0, Priority, CacheRead, "priority_cache_read_per_mtok", &m.priority_cache_read_per_mtok)?;
            for a in &m.above {
                if a.input_tokens <= 0 {
                    return Err(err(format!("[[model.above]] input_tokens = {} must be positive", a.input_tokens)));
                }
                let n = a.input_tokens;
                if a.input_per_mtok.is_none() {
                    return Err(err(format!("[[model.above]] input_tokens = {n} needs input_per_mtok")));
                }
                set(n, Default, Input, "above.input_per_mtok", &a.input_per_mtok)?;
                set(n, Default, Output, "above.output_per_mtok", &a.output_per_mtok)?;
                set(n, Default, CacheRead, "above.cache_read_per_mtok", &a.cache_read_per_mtok)?;
                set(n, Default, CacheWrite, "above.cache_write_per_mtok", &a.cache_write_per_mtok)?;
                set(n, Default, CacheWrite1h, "above.cache_write_1h_per_mtok", &a.cache_write_1h_per_mtok)?;
            }
            if let Some(s) = &m.web_search_per_call {
                let p = parse_usd("web_search_per_call", s).map_err(|e| err(format!("web_search_per_call: {e}")))?;
                if p < 0 {
                    return Err(err("web_search_per_call: negative price".into()));
                }
                rates.web_search = Some(p);
            }
            if let Some(s) = &m.discount_percent {
                let p = parse_usd("discount_percent", s).map_err(|e| err(format!("discount_percent: {e}")))?;
                // parse_usd gives 10^-18 units; 4 decimals of a percent = parts per million of the price
                let unit = 100_000_000_000_000i128;
                if p % unit != 0 || !(0..=100 * 1_000_000_000_000_000_000).contains(&p) {
                    return Err(err(format!("discount_percent = {s:?} must be 0..=100 with at most 4 decimals")));
                }
                rates.discount_ppm = Some(p / unit);
            }
            let from_ms = match &m.effective_from {
                None => i64::MIN,
                Some(s) => parse_date_ms(s)
                    .ok_or_else(|| err(format!("effective_from {s:?} is not YYYY-MM-DD or RFC 3339")))?,
            };
            let to_ms = match &m.effective_to {
                None => i64::MAX,
                Some(s) => {
                    parse_date_ms(s).ok_or_else(|| err(format!("effective_to {s:?} is not YYYY-MM-DD or RFC 3339")))?
                }
            };
            if to_ms <= from_ms {
                return Err(err("effective_to must be after effective_from".into()));
            }
            let layer = self.layer(from_ms, to_ms, rates);
            match &m.owner {
                Some(owner) => {
                    self.stats.owner_overrides += 1;
                    let book = self
                        .owners
                        .entry(owner.clone())
                        .or_insert_with(|| Book { prefix: format!("owner={owner}:"), ..Book::default() });
                    book.insert(m.provider.as_deref(), &m.name, layer);
                }
                None => {
                    self.stats.models += 1;
                    let base = |class| RateKey { above: 0, tier: Tier::Default, class };
                    if layer.rates.map.contains_key(&base(Class::Input))
                        && layer.rates.map.contains_key(&base(Class::Output))
                    {
                        self.stats.priced_models += 1;
                    }
                    self.list.insert(m.provider.as_deref(), &m.name, layer);
                }
            }
        }
        Ok(())
    }

    /// Every list-price entry name, `provider/model` for provider entries and `model` for provider-less
    /// ones, sorted and deduplicated (for "did you mean" messages and finding which providers list a model).
    pub fn model_names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.list.plain.keys().cloned().collect();
        for (p, models) in &self.list.by_provider {
            out.extend(models.keys().map(|m| format!("{p}/{m}")));
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The list price of `model` from `provider` at event time `ts_ms` (see [`PriceCatalog::lookup_for`]).
    pub fn lookup(&self, provider: &str, model: &str, ts_ms: i64) -> Option<PriceRef<'_>> {
        self.lookup_for("", provider, model, ts_ms)
    }

    /// The price of `model` from `provider` at event time `ts_ms` for calls attributed to `owner`: the
    /// owner's negotiated layers over the list price. The model is tried under each of its
    /// [`model_candidates`] (and aliases) in turn; the first name with a priceable entry wins.
    pub fn lookup_for(&self, owner: &str, provider: &str, model: &str, ts_ms: i64) -> Option<PriceRef<'_>> {
        let owner_book = if owner.is_empty() { None } else { self.owners.get(owner) };
        // fast path: the exact name has a list price and no alias or owner layer applies
        if owner_book.is_none()
            && !self.aliases.contains_key(model)
            && let Some(v) = self.list.find(provider, model).and_then(|e| e.at(ts_ms))
            && v.price.is_complete()
        {
            return Some(PriceRef::List(&v.price));
        }
        let names = self.names(provider, model);
        // the list price: the first name (alias first, then the name, then its normalizations) priced
        fn priced(e: Option<&Entry>, ts_ms: i64) -> Option<&Version> {
            e.and_then(|e| e.at(ts_ms)).filter(|v| v.price.is_complete())
        }
        let list = names.iter().find_map(|(n, any_provider)| {
            priced(self.list.by_provider.get(provider).and_then(|p| p.get(n.as_ref())), ts_ms)
                .or_else(|| priced(self.list.plain.get(n.as_ref()), ts_ms))
                .or_else(|| if *any_provider { priced(self.list.find_any(n), ts_ms) } else { None })
        });
        // the owner's negotiated layer: searched on its own, over the same names
        let ov = owner_book.and_then(|b| {
            names
                .iter()
                .find_map(|(n, any)| b.find(provider, n).or_else(|| if *any { b.find_any(n) } else { None })?.at(ts_ms))
        });
        let Some(ov) = ov else {
            return list.map(|v| PriceRef::List(&v.price));
        };
        let list_id: Arc<str> = list.map_or_else(|| Arc::from(""), |l| l.price.id.clone());
        let key = (ov.price.id.clone(), list_id.clone());
        let mut cache = self.merged.lock().unwrap_or_else(|e| e.into_inner());
        let p = cache.entry(key).or_insert_with(|| {
            let mut r = list.map(|l| l.rates.clone()).unwrap_or_default();
            r.overlay(&ov.rates);
            let id = if list_id.is_empty() { ov.price.id.to_string() } else { format!("{list_id}+{}", ov.price.id) };
            Arc::new(ModelPrice::build(id, r))
        });
        p.is_complete().then(|| PriceRef::Owner(p.clone()))
    }

    /// Names to price `model` under, in order, each with whether any provider's entry may price it (an
    /// explicit alias names a catalog model, whoever lists it): the alias of the name, the name, then for
    /// each normalized name its alias and itself.
    fn names<'m>(&self, provider: &str, model: &'m str) -> Vec<(Cow<'m, str>, bool)> {
        let alias = |name: &str| -> Option<String> {
            self.aliases
                .get(name)?
                .iter()
                .find(|a| a.provider.as_deref().is_none_or(|p| p == provider))
                .map(|a| a.model.clone())
        };
        let mut out: Vec<(Cow<'m, str>, bool)> = Vec::new();
        if let Some(a) = alias(model) {
            out.push((Cow::Owned(a), true));
        }
        out.push((Cow::Borrowed(model), false));
        for c in model_candidates(model).into_iter().skip(1) {
            if let Some(a) = alias(&c) {
                out.push((Cow::Owned(a), true));
            }
            out.push((Cow::Owned(c), false));
        }
        out
    }
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
        let t = Tokens { input: 10_000, cache_read: 6_000, cache_write: 1_000, output: 2_000, ..Default::default() };
        let expect = usd("0.009") /* 3000 x 3/M */ + usd("0.0018") /* 6000 x 0.30/M */
            + usd("0.00375") /* 1000 x 3.75/M */ + usd("0.03") /* 2000 x 15/M */;
        assert_eq!(p.cost(&t, Tier::Default), Some(expect));
    }

    #[test]
    fn sums_of_many_calls_are_priced_at_base_rates_and_names_are_listed() {
        let mut c = PriceCatalog::builtin();
        c.add_toml_str(
            "lc.toml",
            "[[model]]\nname = \"m\"\ninput_per_mtok = \"1\"\noutput_per_mtok = \"2\"\n\
             [[model.above]]\ninput_tokens = 128000\ninput_per_mtok = \"2\"\noutput_per_mtok = \"4\"\n",
        )
        .unwrap();
        let p = c.lookup("x", "m", 0).unwrap();
        // the sum of ten 100k-token requests is not one 1M-token request
        let sum = Tokens { input: 1_000_000, output: 1_000_000, ..Default::default() };
        assert_eq!(p.cost(&sum, Tier::Default), Some(usd("6")), "one request above 128k: long-context rates");
        assert_eq!(p.cost_at_base_rates(&sum, Tier::Default), Some(usd("3")));
        assert_eq!(p.cost_at_base_rates(&sum, Tier::Batch), Some(usd("1.5")));
        let small = Tokens { input: 100_000, cache_read: 0, output: 10, ..Default::default() };
        assert_eq!(p.cost_at_base_rates(&small, Tier::Default), p.cost(&small, Tier::Default));
        let names = c.model_names();
        assert!(names.contains(&"openai/gpt-4o".to_string()) && names.contains(&"m".to_string()), "{names:?}");
        assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
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
        assert_eq!(c.stats.ignored_cost_fields, 2, "per-image fields; web search is priced per call");
        let p = c.lookup("openai", "gpt-4o", 0).unwrap();
        assert_eq!(p.rate(Class::Input, Tier::Default), Some(2_500_000_000_000));
        assert_eq!(p.rate(Class::Output, Tier::Default), Some(10_000_000_000_000));
        assert_eq!(p.web_search_rate(), Some(usd("0.03")), "search_context_size_medium, else low");
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
        let t = Tokens {
            input: 1_000_000,
            cache_read: 400_000,
            cache_write: 100_000,
            output: 200_000,
            ..Default::default()
        };
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
        assert_eq!(p0.rate(Class::Input, Tier::Default), Some(usd("2.5") / 1_000_000));
        assert_eq!(p0.rate(Class::Output, Tier::Default), Some(usd("8") / 1_000_000), "override beats list price");
        let p1 = c.lookup("openai", "gpt-4o", after).unwrap();
        assert_eq!(p1.rate(Class::Input, Tier::Default), Some(usd("2") / 1_000_000));
        assert_eq!(
            p1.rate(Class::Output, Tier::Default),
            Some(usd("8") / 1_000_000),
            "dated version inherits other fields"
        );
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
        assert_eq!(
            (p.rate(Class::Input, Tier::Default), p.rate(Class::Output, Tier::Default)),
            (Some(usd("1.5") / 1_000_000), Some(usd("6") / 1_000_000))
        );
        let p = c.lookup("any", "x", 0).unwrap();
        assert_eq!(
            (p.rate(Class::Input, Tier::Default), p.rate(Class::Output, Tier::Default)),
            (Some(usd("1") / 1_000_000), Some(usd("6") / 1_000_000))
        );

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

    #[test]
    fn long_context_tier_prices_the_whole_request() {
        let mut c = PriceCatalog::default();
        c.add_litellm_json(
            "t.json",
            r#"{"gemini-2.5-pro": {"input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05,
                "cache_read_input_token_cost": 1.25e-07, "input_cost_per_token_above_200k_tokens": 2.5e-06,
                "output_cost_per_token_above_200k_tokens": 1.5e-05, "cache_read_input_token_cost_above_200k_tokens": 2.5e-07,
                "input_cost_per_token_above_200k_tokens_priority": 4.5e-06, "litellm_provider": "gemini"}}"#,
        )
        .unwrap();
        let p = c.lookup("gemini", "gemini-2.5-pro", 0).unwrap();
        let small = Tokens { input: 200_000, output: 1_000, ..Default::default() };
        assert_eq!(p.long_context_tier(&small), None, "exactly 200k is not above 200k");
        assert_eq!(p.cost(&small, Tier::Default), Some(usd("0.25") + usd("0.01")));
        let big = Tokens { input: 200_001, cache_read: 100_000, output: 1_000, reasoning: 500, ..Default::default() };
        assert_eq!(p.long_context_tier(&big), Some(200_000));
        // every token of the request at the >200k rates: 100,001 x 2.5 + 100,000 x 0.25 + 1,000 x 15 per 1M
        assert_eq!(p.cost(&big, Tier::Default), Some(usd("0.2500025") + usd("0.025") + usd("0.015")));
        // the priority tier above 200k uses its own input rate; output scaled like the standard tier
        let t = Tokens { input: 300_000, output: 0, ..Default::default() };
        assert_eq!(p.cost(&t, Tier::Priority), Some(usd("1.35")));
        // our TOML states tiers as [[model.above]]
        let mut c = PriceCatalog::default();
        c.add_toml_str(
            "lc.toml",
            "[[model]]\nname = \"m\"\ninput_per_mtok = \"1\"\noutput_per_mtok = \"2\"\n\
             [[model.above]]\ninput_tokens = 128000\ninput_per_mtok = \"2\"\noutput_per_mtok = \"4\"\n",
        )
        .unwrap();
        let p = c.lookup("x", "m", 0).unwrap();
        assert_eq!(
            p.cost(&Tokens { input: 128_001, output: 1_000_000, ..Default::default() }, Tier::Default),
            Some(usd("4.256002"))
        );
    }

    #[test]
    fn one_hour_cache_writes_audio_and_web_search_have_their_own_prices() {
        let mut c = PriceCatalog::default();
        c.add_litellm_json(
            "t.json",
            r#"{"claude-sonnet-4-5": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                  "cache_read_input_token_cost": 3e-07, "cache_creation_input_token_cost": 3.75e-06,
                  "cache_creation_input_token_cost_above_1hr": 6e-06,
                  "search_context_cost_per_query": {"search_context_size_low": 0.01, "search_context_size_medium": 0.01}},
                "gpt-4o-audio-preview": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                  "input_cost_per_audio_token": 4e-05, "output_cost_per_audio_token": 8e-05}}"#,
        )
        .unwrap();
        let p = c.lookup("anthropic", "claude-sonnet-4-5", 0).unwrap();
        let t =
            Tokens { input: 10_000, cache_write: 4_000, cache_write_1h: 1_000, web_search: 3, ..Default::default() };
        // 6,000 x 3 + 3,000 x 3.75 + 1,000 x 6 per 1M + 3 searches x $0.01
        assert_eq!(p.cost(&t, Tier::Default), Some(usd("0.018") + usd("0.01125") + usd("0.006") + usd("0.03")));
        let a = c.lookup("openai", "gpt-4o-audio-preview", 0).unwrap();
        let t = Tokens { input: 1_375, audio_input: 1_146, output: 2_052, audio_output: 1_673, ..Default::default() };
        // 229 x 2.5 + 1,146 x 40 + 379 x 10 + 1,673 x 80 per 1M
        assert_eq!(
            a.cost(&t, Tier::Default),
            Some(usd("0.0005725") + usd("0.04584") + usd("0.00379") + usd("0.13384"))
        );
        // a billed web search on a model without a search price is unpriced, never free
        assert_eq!(a.cost(&Tokens { input: 1, output: 1, web_search: 1, ..Default::default() }, Tier::Default), None);
    }

    #[test]
    fn effective_to_ends_a_price_and_replays_use_the_price_of_their_day() {
        let mut c = PriceCatalog::builtin();
        c.add_toml_str(
            "promo.toml",
            "[[model]]\nname = \"gpt-4o\"\neffective_from = \"2026-10-01\"\neffective_to = \"2026-11-01\"\ninput_per_mtok = \"1\"\n",
        )
        .unwrap();
        let (sep, oct, nov) = (
            parse_date_ms("2026-09-30").unwrap(),
            parse_date_ms("2026-10-15").unwrap(),
            parse_date_ms("2026-11-01").unwrap(),
        );
        let input = |ts| c.lookup("openai", "gpt-4o", ts).unwrap().rate(Class::Input, Tier::Default);
        assert_eq!(input(sep), Some(usd("2.5") / 1_000_000));
        assert_eq!(input(oct), Some(usd("1") / 1_000_000));
        assert_eq!(input(nov), Some(usd("2.5") / 1_000_000), "list price again from effective_to on");
        let ids: Vec<String> =
            [sep, oct, nov].iter().map(|t| c.lookup("openai", "gpt-4o", *t).unwrap().id.to_string()).collect();
        assert!(ids[1].starts_with("openai/gpt-4o@2026-10-01#"), "{ids:?}");
        assert_eq!(ids[0].rsplit_once('#').unwrap().1, ids[2].rsplit_once('#').unwrap().1, "same rates, same hash");
        assert_ne!(ids[0].rsplit_once('#').unwrap().1, ids[1].rsplit_once('#').unwrap().1);
        let e = PriceCatalog::default()
            .add_toml_str(
                "bad.toml",
                "[[model]]\nname = \"m\"\neffective_from = \"2026-02-01\"\neffective_to = \"2026-01-01\"\n",
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("effective_to"), "{e}");
    }

    #[test]
    fn owner_overrides_beat_the_list_price_for_that_owner_only() {
        let mut c = PriceCatalog::builtin();
        c.add_toml_str(
            "deals.toml",
            "[[model]]\nname = \"gpt-4o\"\nowner = \"search\"\ninput_per_mtok = \"2.00\"\n\
             [[model]]\nname = \"claude-sonnet-4-5\"\nprovider = \"anthropic\"\nowner = \"search\"\ndiscount_percent = \"12.5\"\n",
        )
        .unwrap();
        let t = Tokens { input: 1_000_000, output: 1_000_000, ..Default::default() };
        let list = c.lookup_for("other", "openai", "gpt-4o", 0).unwrap();
        assert_eq!(list.cost(&t, Tier::Default), Some(usd("12.5")));
        let deal = c.lookup_for("search", "openai", "gpt-4o-2024-08-06", 0).unwrap();
        assert_eq!(deal.cost(&t, Tier::Default), Some(usd("12")), "2.00 input, list output");
        assert!(deal.id.contains("owner=search:gpt-4o"), "{}", deal.id);
        let sonnet = c.lookup_for("search", "anthropic", "claude-sonnet-4-5", 0).unwrap();
        assert_eq!(sonnet.cost(&t, Tier::Default), Some(usd("18") * 875 / 1000), "12.5 % off 3 + 15");
        assert_eq!(c.stats.owner_overrides, 2);
        let e = PriceCatalog::default()
            .add_toml_str("d.toml", "[[model]]\nname = \"m\"\nowner = \"o\"\ndiscount_percent = \"12.34567\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("discount_percent"), "{e}");
    }

    #[test]
    fn aliases_and_model_name_normalization() {
        let mut c = PriceCatalog::builtin();
        c.add_toml_str(
            "aliases.toml",
            "[[alias]]\nname = \"prod-eastus-4o\"\nprovider = \"azure\"\nmodel = \"gpt-4o\"\n\
             [[model]]\nname = \"gpt-4o\"\nprovider = \"azure\"\ninput_per_mtok = \"2.5\"\noutput_per_mtok = \"10\"\n",
        )
        .unwrap();
        assert!(c.lookup("azure", "prod-eastus-4o", 0).unwrap().id.starts_with("azure/gpt-4o@"));
        assert!(c.lookup("openai", "prod-eastus-4o", 0).is_none(), "the alias is for azure deployments");
        for (m, want) in [
            ("gpt-4o-2024-08-06", "gpt-4o"),
            ("openai/gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
            ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
            (
                "arn:aws:bedrock:us-east-1:1234:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                "claude-sonnet-4-5",
            ),
            ("anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5"),
            ("gemini-2.5-flash-latest", "gemini-2.5-flash"),
        ] {
            assert!(model_candidates(m).iter().any(|x| x == want), "{m}: {:?}", model_candidates(m));
        }
        // an exact catalog entry wins over a normalized one (dated snapshots may be priced differently)
        let mut c = PriceCatalog::builtin();
        c.add_toml_str(
            "snap.toml",
            "[[model]]\nname = \"gpt-4o-2024-05-13\"\ninput_per_mtok = \"5\"\noutput_per_mtok = \"15\"\n",
        )
        .unwrap();
        assert_eq!(
            c.lookup("openai", "gpt-4o-2024-05-13", 0).unwrap().rate(Class::Input, Tier::Default),
            Some(usd("5") / 1_000_000)
        );
        assert_eq!(
            c.lookup("openai", "gpt-4o-2024-08-06", 0).unwrap().rate(Class::Input, Tier::Default),
            Some(usd("2.5") / 1_000_000)
        );
        assert!(c.lookup("openai", "gpt-9-2031-01-01", 0).is_none());
    }

    #[test]
    fn review_regressions_tiers_owners_overrides_aliases_and_overflow() {
        // priority above a long-context threshold keeps the priority premium when the catalog has no
        // `_above_*_priority` rate: the long-context rate scaled by the tier's ratio at any size
        let mut c = PriceCatalog::default();
        c.add_litellm_json(
            "t.json",
            r#"{"m": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "input_cost_per_token_priority": 2e-06,
                      "input_cost_per_token_above_272k_tokens": 1.5e-06}}"#,
        )
        .unwrap();
        let p = c.lookup("x", "m", 0).unwrap();
        let t = Tokens { input: 300_000, ..Default::default() };
        assert_eq!(p.cost(&t, Tier::Default), Some(usd("0.45")));
        assert_eq!(p.cost(&t, Tier::Priority), Some(usd("0.9")), "2x like the standard-size priority rate");

        // an owner's discount on `gpt-4o` applies to calls naming a dated snapshot the list prices too
        let mut c = PriceCatalog::builtin();
        c.add_toml_str(
            "l.toml",
            "[[model]]\nname = \"gpt-4o-2024-08-06\"\ninput_per_mtok = \"2.5\"\noutput_per_mtok = \"10\"\n",
        )
        .unwrap();
        c.add_toml_str("o.toml", "[[model]]\nname = \"gpt-4o\"\nowner = \"search\"\ndiscount_percent = \"20\"\n")
            .unwrap();
        let t = Tokens { input: 1_000_000, ..Default::default() };
        assert_eq!(
            c.lookup_for("search", "openai", "gpt-4o-2024-08-06", 0).unwrap().cost(&t, Tier::Default),
            Some(usd("2"))
        );

        // a provider-less override reaches provider entries loaded after it
        let mut c = PriceCatalog::default();
        c.add_toml_str("a.toml", "[[model]]\nname = \"m\"\neffective_from = \"2026-01-01\"\ninput_per_mtok = \"5\"\n")
            .unwrap();
        c.add_toml_str(
            "b.toml",
            "[[model]]\nname = \"m\"\nprovider = \"p\"\ninput_per_mtok = \"1\"\noutput_per_mtok = \"1\"\n",
        )
        .unwrap();
        let jan = parse_date_ms("2026-01-02").unwrap();
        assert_eq!(c.lookup("p", "m", jan).unwrap().rate(Class::Input, Tier::Default), Some(usd("5") / 1_000_000));

        // an explicit alias beats the exact name, and its target may be listed under another provider
        let mut c = PriceCatalog::builtin();
        c.add_toml_str(
            "al.toml",
            "[[alias]]\nname = \"gpt-4o\"\nprovider = \"openai\"\nmodel = \"gpt-4o-mini\"\n\
             [[alias]]\nname = \"prod-chat\"\nmodel = \"gpt-4o\"\n",
        )
        .unwrap();
        assert!(c.lookup("openai", "gpt-4o", 0).unwrap().id.starts_with("openai/gpt-4o-mini@"));
        assert!(c.lookup("azure", "prod-chat", 0).unwrap().id.starts_with("openai/gpt-4o@"), "azure deployment");

        // an absurd rate times 2^53 tokens is unpriced, not a wrapped number (and no panic)
        let mut c = PriceCatalog::default();
        c.add_toml_str("x.toml", "[[model]]\nname = \"x\"\ninput_per_mtok = \"25000000000000\"\noutput_per_mtok = \"1\"\ndiscount_percent = \"10\"\n")
            .unwrap();
        let t = Tokens { input: 1 << 53, ..Default::default() };
        assert_eq!(c.lookup("p", "x", 0).unwrap().cost(&t, Tier::Default), None);
    }
}
