//! `aifinops export focus`: a month of rollups as FOCUS-shaped Parquet (FinOps Open Cost and Usage
//! Specification), one row per charge period × owner × model × token class (SkuMeter).
//!
//! Rollups carry one exact cost per (window, key), not per token class, so each rollup row's cost is split
//! over its token classes in proportion to their list cost (tokens × the catalog's list rate for the row's
//! model and tier), with integer arithmetic and the remainder units handed out by largest remainder: the
//! classes of a row add up to its cost to the last 10^-18 USD, so `sum(EffectiveCost)` equals the rollups'
//! `sum(cost_usd)` for the month exactly. `ListCost` is tokens × list rate (null when the catalog has no
//! list price for the model); log-derived figures are estimates, so `BilledCost` = `EffectiveCost` until
//! reconciled with an invoice. Unpriced calls have no cost (null, never $0) and set `x_Unpriced`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use aifinops_ingest::catalog::{Class, ModelPrice, PriceCatalog, Tier, Tokens};
use aifinops_schemas::money::{COST_PRECISION, COST_SCALE, cost_type};
use anyhow::Context;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Decimal128Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::config::Config;
use crate::lake_read::{DAY_MS, HOUR_MS, collect, costs, ints, month_range, strings, window_extent};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Lake directory.
    #[arg(long)]
    pub lake: PathBuf,
    /// Month to export (YYYY-MM, UTC).
    #[arg(long)]
    pub month: String,
    /// Output directory; the file is `<out>/focus-<month>.parquet`.
    #[arg(long)]
    pub out: PathBuf,
    /// Charge period: `day` or `hour` (hour needs `1h` rollups).
    #[arg(long, default_value = "day", value_parser = ["day", "hour"])]
    pub period: String,
    /// Configuration file, for the price catalogs (`[prices]`) that give list prices.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
}

/// Scale of the quantity columns (`ConsumedQuantity`, `PricingQuantity`): exact for tokens / 10^6.
pub const QUANTITY_SCALE: i8 = 6;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn quantity_type() -> DataType {
    DataType::Decimal128(38, QUANTITY_SCALE)
}

/// The Arrow schema of the export (FOCUS 1.2 column names; `x_` columns are aifinops' own).
pub fn focus_schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        Field::new("BillingPeriodStart", ts_type(), false),
        Field::new("BillingPeriodEnd", ts_type(), false),
        Field::new("ChargePeriodStart", ts_type(), false),
        Field::new("ChargePeriodEnd", ts_type(), false),
        s("ChargeCategory"),
        s("ChargeFrequency"),
        s("ChargeDescription"),
        s("BillingCurrency"),
        Field::new("BilledCost", cost_type(), true),
        Field::new("EffectiveCost", cost_type(), true),
        Field::new("ListCost", cost_type(), true),
        Field::new("ContractedCost", cost_type(), true),
        Field::new("ListUnitPrice", cost_type(), true),
        Field::new("ConsumedQuantity", quantity_type(), false),
        s("ConsumedUnit"),
        Field::new("PricingQuantity", quantity_type(), false),
        s("PricingUnit"),
        s("ServiceCategory"),
        s("ServiceSubcategory"),
        s("ServiceName"),
        s("ServiceProviderName"),
        s("SkuId"),
        s("SkuPriceId"),
        s("SkuMeter"),
        s("SkuPriceDetails"),
        s("Tags"),
        s("x_Owner"),
        s("x_Provider"),
        s("x_Model"),
        s("x_TokenClass"),
        s("x_ServiceTiers"),
        Field::new("x_Unpriced", DataType::Boolean, false),
        s("x_CostSource"),
    ]))
}

/// A FOCUS meter: the token class (or per-call charge) a row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Meter {
    Input,
    CacheRead,
    CacheWrite,
    Output,
    Reasoning,
    WebSearch,
}

impl Meter {
    pub const ALL: [Meter; 6] =
        [Meter::Input, Meter::CacheRead, Meter::CacheWrite, Meter::Output, Meter::Reasoning, Meter::WebSearch];

    pub fn sku_meter(self) -> &'static str {
        match self {
            Meter::Input => "Input Tokens",
            Meter::CacheRead => "Cache Read Input Tokens",
            Meter::CacheWrite => "Cache Write Input Tokens",
            Meter::Output => "Output Tokens",
            Meter::Reasoning => "Reasoning Output Tokens",
            Meter::WebSearch => "Web Search Requests",
        }
    }

    fn class(self) -> &'static str {
        match self {
            Meter::Input => "input",
            Meter::CacheRead => "cache_read",
            Meter::CacheWrite => "cache_write",
            Meter::Output => "output",
            Meter::Reasoning => "reasoning",
            Meter::WebSearch => "web_search",
        }
    }

    fn is_tokens(self) -> bool {
        self != Meter::WebSearch
    }

    /// (TokenDirection, TokenCacheAction) of the FOCUS AI SkuPriceDetails.
    fn direction(self) -> Option<(&'static str, &'static str)> {
        match self {
            Meter::Input => Some(("Input", "Uncached")),
            Meter::CacheRead => Some(("Input", "Read")),
            Meter::CacheWrite => Some(("Input", "Write")),
            Meter::Output | Meter::Reasoning => Some(("Output", "Uncached")),
            Meter::WebSearch => None,
        }
    }
}

/// The FOCUS meters of a rollup group's token sums (the catalog's [`Tokens`], in the canonical inclusion).
trait MeterQuantities {
    fn quantity(&self, m: Meter) -> i64;
    fn list_cost(&self, m: Meter, price: &ModelPrice, tier: Tier) -> Option<i128>;
}

impl MeterQuantities for Tokens {
    /// The quantity of each meter (uncached input holds uncached audio; output holds audio output).
    fn quantity(&self, m: Meter) -> i64 {
        match m {
            Meter::Input => (self.input - self.cache_read - self.cache_write).max(0),
            Meter::CacheRead => self.cache_read,
            Meter::CacheWrite => self.cache_write,
            Meter::Output => (self.output - self.reasoning).max(0),
            Meter::Reasoning => self.reasoning,
            Meter::WebSearch => self.web_search,
        }
    }

    /// List cost of a meter's quantity at the price's base rates in `tier` (10^-18 USD).
    fn list_cost(&self, m: Meter, price: &ModelPrice, tier: Tier) -> Option<i128> {
        let r = |c: Class| price.rate(c, tier);
        let mul = |n: i64, rate: Option<i128>| -> Option<i128> {
            if n == 0 { Some(0) } else { (n as i128).checked_mul(rate?) }
        };
        match m {
            Meter::Input => {
                let audio = self.audio_input.min(self.quantity(Meter::Input));
                mul(self.quantity(Meter::Input) - audio, r(Class::Input))?
                    .checked_add(mul(audio, r(Class::AudioInput))?)
            }
            Meter::CacheRead => mul(self.cache_read, r(Class::CacheRead)),
            Meter::CacheWrite => {
                let h1 = self.cache_write_1h.min(self.cache_write);
                mul(self.cache_write - h1, r(Class::CacheWrite))?.checked_add(mul(h1, r(Class::CacheWrite1h))?)
            }
            Meter::Output => {
                let audio = self.audio_output.min(self.quantity(Meter::Output));
                mul(self.quantity(Meter::Output) - audio, r(Class::Output))?
                    .checked_add(mul(audio, r(Class::AudioOutput))?)
            }
            Meter::Reasoning => mul(self.reasoning, r(Class::Reasoning)),
            Meter::WebSearch => mul(self.web_search, price.web_search_rate()),
        }
    }
}

/// Splits `total` over `weights` in proportion, exactly: the parts add up to `total` (largest remainder).
/// Without any positive weight, all of it goes to the first part with a positive `fallback` (else the first).
pub fn allocate(total: i128, weights: &[i128], fallback: &[i128]) -> Vec<i128> {
    if total < 0 {
        return allocate(-total, weights, fallback).into_iter().map(|p| -p).collect();
    }
    let mut w: Vec<i128> = weights.iter().map(|x| (*x).max(0)).collect();
    if w.iter().all(|x| *x == 0) {
        let i = fallback.iter().position(|x| *x > 0).unwrap_or(0);
        if let Some(x) = w.get_mut(i) {
            *x = 1;
        }
    }
    // scale the weights down until total × sum cannot overflow (the split stays exact, only coarser)
    while w.iter().try_fold(0i128, |s, x| s.checked_add(*x)).and_then(|s| total.checked_mul(s)).is_none() {
        w.iter_mut().for_each(|x| *x /= 1024);
        if w.iter().all(|x| *x == 0) {
            w[0] = 1;
        }
    }
    let sum: i128 = w.iter().sum();
    if sum == 0 {
        return w;
    }
    let mut parts: Vec<i128> = w.iter().map(|x| total * x / sum).collect();
    let mut rem: Vec<(i128, usize)> =
        w.iter().enumerate().filter(|(_, x)| **x > 0).map(|(i, x)| ((total * x) % sum, i)).collect();
    // each positive weight's part lost less than one unit: fewer units are left than positive weights
    let left = (total - parts.iter().sum::<i128>()) as usize;
    rem.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in rem.iter().take(left) {
        parts[*i] += 1;
    }
    parts
}

fn tier_of(s: &str) -> Tier {
    Tier::parse(s).unwrap_or(Tier::Default)
}

/// A provider's display name (ServiceName / ServiceProviderName).
pub fn provider_name(p: &str) -> String {
    match p {
        "openai" => "OpenAI".into(),
        "anthropic" => "Anthropic".into(),
        "gemini" | "google" | "vertex_ai" => "Google".into(),
        "bedrock" | "aws.bedrock" | "aws" => "Amazon Web Services".into(),
        "azure" | "azure_ai" => "Microsoft".into(),
        "" => "unknown".into(),
        other => other.to_string(),
    }
}

#[derive(Default)]
struct Acc {
    quantity: i64,
    effective: Option<i128>,
    list: Option<i128>,
    list_known: bool,
    teams: BTreeSet<String>,
    workflows: BTreeSet<String>,
    tiers: BTreeSet<String>,
    unpriced: bool,
}

/// One exported row's key: charge period start, owner, provider, model, meter.
type Key = (i64, String, String, String, Meter);

pub struct Export {
    pub path: PathBuf,
    pub rows: usize,
    pub effective_cost: i128,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let e = export(&args).await?;
    println!(
        "{}: {} FOCUS rows for {}, EffectiveCost ${} (equals the rollups' cost for the month)",
        e.path.display(),
        e.rows,
        args.month,
        aifinops_schemas::money::format_usd_rounded(e.effective_cost, 2)
    );
    Ok(())
}

pub async fn export(args: &Args) -> anyhow::Result<Export> {
    let cfg = Config::load(args.config.as_deref())?;
    let (catalog, _) = crate::pipeline::load_reference(&cfg)?;
    let (start, end) = month_range(&args.month)?;
    let ctx = crate::query::session(&args.lake).await?;
    let has_1h = window_extent(&ctx, "1h").await?.is_some();
    let source = if has_1h {
        "1h"
    } else if window_extent(&ctx, "1d").await?.is_some() {
        anyhow::ensure!(args.period == "day", "--period hour needs 1h rollups; {} has only 1d", args.lake.display());
        "1d"
    } else {
        anyhow::bail!("{} has no 1h or 1d rollups to export", args.lake.display());
    };
    let period_ms = if args.period == "hour" { HOUR_MS } else { DAY_MS };
    let (first_date, next_date) = (crate::lake_read::rfc3339(start), crate::lake_read::rfc3339(end));
    let sql = format!(
        "SELECT window_start AS s, owner, team, workflow, provider, model, service_tier, \
         sum(input_tokens) AS input_tokens, sum(cache_read_tokens) AS cache_read_tokens, \
         sum(cache_write_tokens) AS cache_write_tokens, sum(cache_write_1h_tokens) AS cache_write_1h_tokens, \
         sum(audio_input_tokens) AS audio_input_tokens, sum(output_tokens) AS output_tokens, \
         sum(reasoning_tokens) AS reasoning_tokens, sum(audio_output_tokens) AS audio_output_tokens, \
         sum(retrieval_calls) AS retrieval_calls, sum(unpriced_requests) AS unpriced, sum(cost_usd) AS cost \
         FROM rollups WHERE \"window\" = '{source}' AND date >= '{}' AND date < '{}' \
         GROUP BY window_start, owner, team, workflow, provider, model, service_tier",
        &first_date[..10],
        &next_date[..10]
    );
    let batches = collect(&ctx, &sql).await?;
    let mut acc: BTreeMap<Key, Acc> = BTreeMap::new();
    let mut prices: HashMap<(String, String, i64), Option<Arc<ModelPrice>>> = HashMap::new();
    let mut total: i128 = 0;
    for b in &batches {
        let s = ints(b, "s")?;
        let (owner, team, workflow) = (strings(b, "owner")?, strings(b, "team")?, strings(b, "workflow")?);
        let (provider, model, tier) = (strings(b, "provider")?, strings(b, "model")?, strings(b, "service_tier")?);
        let col = |n: &str| ints(b, n);
        let (inp, cr, cw, cw1, ai) = (
            col("input_tokens")?,
            col("cache_read_tokens")?,
            col("cache_write_tokens")?,
            col("cache_write_1h_tokens")?,
            col("audio_input_tokens")?,
        );
        let (out, rs, ao, ws, unpriced) = (
            col("output_tokens")?,
            col("reasoning_tokens")?,
            col("audio_output_tokens")?,
            col("retrieval_calls")?,
            col("unpriced")?,
        );
        let cost = costs(b, "cost")?;
        for i in 0..b.num_rows() {
            if s[i] < start || s[i] >= end {
                continue;
            }
            let t = Tokens {
                input: inp[i],
                cache_read: cr[i],
                cache_write: cw[i],
                cache_write_1h: cw1[i],
                audio_input: ai[i],
                output: out[i],
                reasoning: rs[i],
                audio_output: ao[i],
                web_search: ws[i],
            };
            // one lookup per model and day (prices are dated by day)
            let price = prices
                .entry((provider[i].clone(), model[i].clone(), s[i].div_euclid(DAY_MS)))
                .or_insert_with(|| catalog_price(&catalog, &provider[i], &model[i], s[i]))
                .clone();
            let tr = tier_of(&tier[i]);
            let quantities: Vec<i128> = Meter::ALL.iter().map(|m| t.quantity(*m) as i128).collect();
            let lists: Vec<Option<i128>> =
                Meter::ALL.iter().map(|m| price.as_ref().and_then(|p| t.list_cost(*m, p, tr))).collect();
            let weights: Vec<i128> = lists.iter().map(|l| l.unwrap_or(0)).collect();
            let split = cost[i].map(|c| {
                total += c;
                allocate(c, &weights, &quantities)
            });
            let period = s[i].div_euclid(period_ms) * period_ms;
            for (j, m) in Meter::ALL.iter().enumerate() {
                let part = split.as_ref().map(|p| p[j]);
                if quantities[j] == 0 && part.unwrap_or(0) == 0 {
                    continue;
                }
                let a = acc.entry((period, owner[i].clone(), provider[i].clone(), model[i].clone(), *m)).or_default();
                a.quantity += quantities[j] as i64;
                if let Some(p) = part {
                    a.effective = Some(a.effective.unwrap_or(0) + p);
                }
                if let Some(l) = lists[j] {
                    a.list = Some(a.list.unwrap_or(0) + l);
                    a.list_known = true;
                }
                a.teams.insert(team[i].clone());
                a.workflows.insert(workflow[i].clone());
                a.tiers.insert(tier[i].clone());
                a.unpriced |= unpriced[i] > 0;
            }
        }
    }
    anyhow::ensure!(!acc.is_empty(), "{} has no usage in {} (window {source})", args.lake.display(), args.month);
    let batch = to_batch(&acc, start, end, period_ms)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let path = args.out.join(format!("focus-{}.parquet", args.month));
    let tmp = path.with_extension("parquet.tmp");
    aifinops_sink::parquet_io::write_parquet(&tmp, &[batch]).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(Export { path, rows: acc.len(), effective_cost: total })
}

fn catalog_price(catalog: &PriceCatalog, provider: &str, model: &str, ts: i64) -> Option<Arc<ModelPrice>> {
    catalog.lookup(provider, model, ts).map(|p| Arc::new((*p).clone()))
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>().join(",")
}

fn to_batch(acc: &BTreeMap<Key, Acc>, start: i64, end: i64, period_ms: i64) -> anyhow::Result<RecordBatch> {
    let n = acc.len();
    let ts = |v: Vec<i64>| -> ArrayRef { Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC")) };
    let money = |v: Vec<Option<i128>>| -> anyhow::Result<ArrayRef> {
        Ok(Arc::new(Decimal128Array::from(v).with_precision_and_scale(COST_PRECISION, COST_SCALE)?))
    };
    let qty = |v: Vec<i128>| -> anyhow::Result<ArrayRef> {
        Ok(Arc::new(Decimal128Array::from(v).with_precision_and_scale(38, QUANTITY_SCALE)?))
    };
    let text = |v: Vec<String>| -> ArrayRef { Arc::new(StringArray::from(v)) };
    let konst = |s: &str| -> ArrayRef { Arc::new(StringArray::from(vec![s; n])) };
    let scale = 10i128.pow(QUANTITY_SCALE as u32);
    let mut periods = Vec::with_capacity(n);
    let (mut eff, mut list, mut unit_price) = (Vec::new(), Vec::new(), Vec::new());
    let (mut consumed, mut pricing, mut c_unit, mut p_unit) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut service, mut sku, mut sku_price, mut meter, mut details, mut tags) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut owners, mut providers, mut models, mut classes, mut tiers, mut unpriced, mut desc) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((period, owner, provider, model, m), a) in acc {
        periods.push(*period);
        eff.push(a.effective);
        let l = if a.list_known { a.list } else { None };
        list.push(l);
        // list price per PricingUnit (10^6 tokens, or one request)
        unit_price.push(match (l, a.quantity) {
            (Some(l), q) if q > 0 => Some(if m.is_tokens() { l * 1_000_000 / q as i128 } else { l / q as i128 }),
            _ => None,
        });
        consumed.push(a.quantity as i128 * scale);
        pricing.push(if m.is_tokens() { a.quantity as i128 } else { a.quantity as i128 * scale });
        c_unit.push(if m.is_tokens() { "Tokens" } else { "Requests" }.to_string());
        p_unit.push(if m.is_tokens() { "1000000 Tokens" } else { "Requests" }.to_string());
        service.push(provider_name(provider));
        sku.push(format!("{provider}/{model}"));
        sku_price.push(format!("{provider}/{model}/{}", m.class()));
        meter.push(m.sku_meter().to_string());
        let mut d = serde_json::json!({ "ModelId": model, "ModelDeveloper": provider_name(provider) });
        if let Some((dir, cache)) = m.direction() {
            d["TokenDirection"] = dir.into();
            d["TokenCacheAction"] = cache.into();
        }
        if *m == Meter::Reasoning {
            d["x_TokenType"] = "Reasoning".into();
        }
        details.push(d.to_string());
        tags.push(
            serde_json::json!({ "owner": owner, "team": join(&a.teams), "workflow": join(&a.workflows) }).to_string(),
        );
        desc.push(format!("{} of {model} ({owner})", m.sku_meter()));
        owners.push(owner.clone());
        providers.push(provider.clone());
        models.push(model.clone());
        classes.push(m.class().to_string());
        tiers.push(join(&a.tiers));
        unpriced.push(a.unpriced);
    }
    let cols: Vec<ArrayRef> = vec![
        ts(vec![start; n]),
        ts(vec![end; n]),
        ts(periods.clone()),
        ts(periods.iter().map(|p| (p + period_ms).min(end)).collect()),
        konst("Usage"),
        konst("Usage-Based"),
        text(desc),
        konst("USD"),
        money(eff.clone())?,
        money(eff.clone())?,
        money(list)?,
        money(eff)?,
        money(unit_price)?,
        qty(consumed)?,
        text(c_unit),
        qty(pricing)?,
        text(p_unit),
        konst("AI and Machine Learning"),
        konst("Generative AI"),
        text(service.clone()),
        text(service),
        text(sku),
        text(sku_price),
        text(meter),
        text(details),
        text(tags),
        text(owners),
        text(providers),
        text(models),
        text(classes),
        text(tiers),
        Arc::new(BooleanArray::from(unpriced)),
        konst("aifinops estimate from gateway usage logs"),
    ];
    Ok(RecordBatch::try_new(focus_schema(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_exact_and_proportional() {
        let parts = allocate(1_000, &[1, 1, 1], &[0, 0, 0]);
        assert_eq!(parts.iter().sum::<i128>(), 1_000);
        assert_eq!(parts, vec![334, 333, 333]);
        let parts = allocate(10, &[0, 3, 7], &[5, 5, 5]);
        assert_eq!(parts, vec![0, 3, 7]);
        // no list price: everything on the first class that has tokens
        assert_eq!(allocate(9, &[0, 0, 0], &[0, 4, 2]), vec![0, 9, 0]);
        // huge weights and totals do not overflow and stay exact
        let big = 10i128.pow(30);
        let parts = allocate(big + 7, &[10i128.pow(25), 3 * 10i128.pow(25), 1], &[1, 1, 1]);
        assert_eq!(parts.iter().sum::<i128>(), big + 7);
        assert!(parts[1] > 2 * parts[0]);
    }

    #[test]
    fn meters_follow_the_canonical_inclusion() {
        let t = Tokens {
            input: 1000,
            cache_read: 600,
            cache_write: 100,
            output: 300,
            reasoning: 120,
            ..Default::default()
        };
        assert_eq!(t.quantity(Meter::Input), 300);
        assert_eq!(t.quantity(Meter::CacheRead), 600);
        assert_eq!(t.quantity(Meter::CacheWrite), 100);
        assert_eq!(t.quantity(Meter::Output), 180);
        assert_eq!(t.quantity(Meter::Reasoning), 120);
        let total: i64 = Meter::ALL.iter().take(5).map(|m| t.quantity(*m)).sum();
        assert_eq!(total, 1300, "every token in exactly one meter");
    }
}
