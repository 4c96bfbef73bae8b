//! `aifinops whatif`: re-prices a month of real usage under other catalog models, service tiers, or a
//! self-hosted option, and prints the comparison per owner (see docs/whatif.md).
//!
//! The usage is the lake's rollups of the month, one window size per day (the coarsest the lake has for
//! that day, so nothing is counted twice), summed per owner, provider, model, service tier, price version
//! and window. The baseline is the cost the pipeline recorded. A scenario re-prices each row's token sums:
//!
//! * usage the scenario does not change (model not mapped, or mapped to the catalog entry that priced it,
//!   and the same tier) keeps the recorded cost exactly;
//! * usage mapped to another catalog model, or moved to another tier, is priced from its token sums at that
//!   model's rates for requests of any size ([`ModelPrice::cost_at_base_rates`]): rollups keep no
//!   per-request sizes, so long-context tiers are not applied;
//! * usage routed to a self-hosted option costs GPU hours: (input + output tokens) / throughput / 3600 x
//!   the hourly price, in exact integer arithmetic.
//!
//! Usage whose cost the lake does not know (unpriced calls, calls without usage) is in neither column.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use aifinops_aggregate::WindowSize;
use aifinops_ingest::PriceCatalog;
use aifinops_ingest::catalog::{ModelPrice, PriceRef, Tier, Tokens, model_candidates};
use aifinops_schemas::money::{COST_PRECISION, COST_SCALE, ONE_USD, format_usd, format_usd_rounded, parse_usd};
use anyhow::{Context, bail};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Int64Type};
use serde_json::json;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Lake directory.
    #[arg(long)]
    pub lake: PathBuf,
    /// Month (YYYY-MM, UTC).
    #[arg(long)]
    pub month: String,
    /// Replace a model: `FROM=TO`. FROM is a model as the lake names it (dated snapshots match their base
    /// name; `provider/model` for one provider's only); TO is a catalog model (`provider/model` to pick the
    /// provider) or the NAME of a `--self-hosted` option. Repeatable.
    #[arg(long = "model", value_name = "FROM=TO")]
    pub models: Vec<String>,
    /// Price every call of the scenario at this service tier (`batch`, `flex`, `priority`, `standard`).
    #[arg(long)]
    pub tier: Option<String>,
    /// A self-hosted option `NAME:USD_PER_GPU_HOUR:TOKENS_PER_SEC` (repeatable). Usage mapped to NAME with
    /// `--model FROM=NAME` runs there; an option no mapping names is its own scenario taking all usage.
    #[arg(long = "self-hosted", value_name = "NAME:USD_PER_GPU_HOUR:TOKENS_PER_SEC")]
    pub self_hosted: Vec<String>,
    /// Configuration file: its `[prices]` (built-in catalog on/off, files) are loaded first.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Price catalog files (LiteLLM JSON or aifinops TOML), on top of the built-in catalog (or the config's).
    #[arg(long = "prices")]
    pub prices: Vec<PathBuf>,
    /// Output format.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut catalog = match &args.config {
        Some(path) => {
            let cfg = crate::config::Config::load(Some(path))?;
            let mut c = if cfg.prices.builtin { PriceCatalog::builtin() } else { PriceCatalog::default() };
            for f in &cfg.prices.files {
                c.add_file(f)
                    .with_context(|| format!("loading prices from {} (config {})", f.display(), path.display()))?;
            }
            c
        }
        None => PriceCatalog::builtin(),
    };
    for f in &args.prices {
        catalog.add_file(f).with_context(|| format!("loading prices from {}", f.display()))?;
    }
    let month = Month::parse(&args.month)?;
    let options = args.self_hosted.iter().map(|s| SelfHosted::parse(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut names = BTreeSet::new();
    for o in &options {
        if !names.insert(o.name.as_str()) {
            bail!("--self-hosted {:?}: the name {:?} is given twice", o.spec, o.name);
        }
    }
    let tier = args.tier.as_deref().map(parse_tier).transpose()?;
    let mappings = args
        .models
        .iter()
        .map(|m| Mapping::parse(m, &options, &catalog, month.start_ms))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let scenarios = Scenario::plan(mappings, tier, &options)?;
    let usage = read_usage(&args.lake, &month).await?;
    let report = Report::build(&catalog, &usage, &scenarios, &options, &month)?;
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&report.json(&args.lake, &scenarios, &options))?),
        _ => print!("{}", report.render(&args.lake, &scenarios, &options)),
    }
    Ok(())
}

/// A calendar month, UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Month {
    label: String,
    /// First day and the first day of the next month, `YYYY-MM-DD`.
    first: String,
    next: String,
    start_ms: i64,
    days: i64,
}

impl Month {
    fn parse(s: &str) -> anyhow::Result<Month> {
        let bad = || anyhow::anyhow!("--month {s:?} is not a month like 2026-05 (YYYY-MM)");
        if s.len() != 7 || s.as_bytes()[4] != b'-' {
            return Err(bad());
        }
        let first = chrono::NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d").map_err(|_| bad())?;
        let next = first.checked_add_months(chrono::Months::new(1)).ok_or_else(bad)?;
        let start_ms = first.and_hms_opt(0, 0, 0).ok_or_else(bad)?.and_utc().timestamp_millis();
        Ok(Month {
            label: s.to_string(),
            first: first.format("%Y-%m-%d").to_string(),
            next: next.format("%Y-%m-%d").to_string(),
            start_ms,
            days: (next - first).num_days(),
        })
    }
}

fn parse_tier(s: &str) -> anyhow::Result<Tier> {
    Tier::parse(s).ok_or_else(|| anyhow::anyhow!("--tier {s:?} is not one of standard, batch, flex, priority"))
}

/// A self-hosted option: GPU hours at a stated throughput times an hourly price.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SelfHosted {
    spec: String,
    name: String,
    /// USD per GPU hour, 10^-18 units.
    usd_per_hour: i128,
    /// Tokens per second per GPU, in thousandths (up to 3 decimals are exact).
    tps_milli: i128,
}

impl SelfHosted {
    fn parse(spec: &str) -> anyhow::Result<SelfHosted> {
        let bad = |why: String| {
            anyhow::anyhow!("--self-hosted {spec:?}: {why} (expected NAME:USD_PER_GPU_HOUR:TOKENS_PER_SEC)")
        };
        let mut parts = spec.rsplitn(3, ':');
        let (Some(tps), Some(price), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("not three parts separated by ':'".into()));
        };
        let name = name.trim();
        if name.is_empty() || name.contains('=') {
            return Err(bad(format!("name {name:?} must be non-empty and without '='")));
        }
        let usd_per_hour = parse_usd("USD_PER_GPU_HOUR", price).map_err(|e| bad(e.to_string()))?;
        if usd_per_hour < 0 {
            return Err(bad(format!("USD_PER_GPU_HOUR {price:?} is negative")));
        }
        let tps_units = parse_usd("TOKENS_PER_SEC", tps).map_err(|e| bad(e.to_string()))?;
        let milli = ONE_USD / 1000;
        if tps_units <= 0 || tps_units % milli != 0 {
            return Err(bad(format!("TOKENS_PER_SEC {tps:?} must be positive with at most 3 decimals")));
        }
        Ok(SelfHosted { spec: spec.to_string(), name: name.to_string(), usd_per_hour, tps_milli: tps_units / milli })
    }

    /// Exact cost of processing `tokens`: tokens / (tokens/s x 3600) GPU hours x USD per hour, rounded half
    /// up to 10^-18 USD.
    fn cost(&self, tokens: i128) -> anyhow::Result<i128> {
        mul_div_round(tokens * 1000, self.usd_per_hour, self.tps_milli * 3600)
            .with_context(|| format!("self-hosted {}: cost of {tokens} tokens does not fit", self.name))
    }

    /// GPU hours for `tokens`, in 10^-18 hours.
    fn gpu_hours(&self, tokens: i128) -> anyhow::Result<i128> {
        mul_div_round(tokens * 1000, ONE_USD, self.tps_milli * 3600)
            .with_context(|| format!("self-hosted {}: GPU hours of {tokens} tokens do not fit", self.name))
    }

    fn describe(&self) -> String {
        format!(
            "self-hosted {} ({} USD/GPU-hour, {} tokens/s per GPU)",
            self.name,
            format_usd(self.usd_per_hour),
            format_usd(self.tps_milli * (ONE_USD / 1000))
        )
    }
}

/// `a x b / c` rounded half up, for `a, b >= 0` and `c > 0`, without overflowing in the intermediate
/// product when the result fits (a = q c + r, so a b / c = q b + r b / c).
fn mul_div_round(a: i128, b: i128, c: i128) -> Option<i128> {
    if a < 0 || b < 0 || c <= 0 {
        return None;
    }
    let (q, r) = (a / c, a % c);
    let rb = r.checked_mul(b)?;
    let (q2, r2) = (rb / c, rb % c);
    let mut out = q.checked_mul(b)?.checked_add(q2)?;
    if r2.checked_mul(2)? >= c {
        out = out.checked_add(1)?;
    }
    Some(out)
}

/// A catalog model usage is mapped to.
#[derive(Debug, Clone)]
struct CatalogTarget {
    spec: String,
    /// Providers whose entry prices the bare name, for usage whose own provider does not list it.
    providers: Vec<String>,
}

impl CatalogTarget {
    /// The price of the target for usage of `owner` from `provider` at `ts_ms`: `provider/model` as
    /// written; a bare name at the usage's own provider first, else at the one provider that lists it.
    fn price<'c>(
        &self,
        catalog: &'c PriceCatalog,
        owner: &str,
        provider: &str,
        ts_ms: i64,
    ) -> anyhow::Result<PriceRef<'c>> {
        if let Some((p, m)) = self.spec.split_once('/')
            && let Some(price) = catalog.lookup_for(owner, p, m, ts_ms)
        {
            return Ok(price);
        }
        if let Some(price) = catalog.lookup_for(owner, provider, &self.spec, ts_ms) {
            return Ok(price);
        }
        match self.providers.as_slice() {
            [p] => catalog
                .lookup_for(owner, p, &self.spec, ts_ms)
                .ok_or_else(|| anyhow::anyhow!("{}/{} has no price on {}", p, self.spec, day_of(ts_ms))),
            [] => bail!("{} has no price on {} in the catalog", self.spec, day_of(ts_ms)),
            many => bail!(
                "{} is listed by several providers ({}) and not by {provider}: write provider/model, e.g. {}/{}",
                self.spec,
                many.join(", "),
                many[0],
                self.spec
            ),
        }
    }
}

fn day_of(ts_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts_ms)
        .map_or_else(|| ts_ms.to_string(), |d| d.format("%Y-%m-%d").to_string())
}

#[derive(Debug, Clone)]
enum Target {
    Catalog(CatalogTarget),
    /// Index into the self-hosted options.
    SelfHosted(usize),
}

/// `--model FROM=TO`.
#[derive(Debug, Clone)]
struct Mapping {
    spec: String,
    from: String,
    to: Target,
}

impl Mapping {
    fn parse(spec: &str, options: &[SelfHosted], catalog: &PriceCatalog, ts_ms: i64) -> anyhow::Result<Mapping> {
        let Some((from, to)) = spec.split_once('=') else {
            bail!("--model {spec:?} is not FROM=TO");
        };
        let (from, to) = (from.trim(), to.trim());
        if from.is_empty() || to.is_empty() {
            bail!("--model {spec:?}: FROM and TO must be non-empty");
        }
        if let Some(i) = options.iter().position(|o| o.name == to) {
            return Ok(Mapping { spec: spec.to_string(), from: from.to_string(), to: Target::SelfHosted(i) });
        }
        Ok(Mapping {
            spec: spec.to_string(),
            from: from.to_string(),
            to: Target::Catalog(resolve_to(spec, to, catalog, ts_ms)?),
        })
    }

    /// How specifically this mapping's FROM names usage of `model` from `provider` (lower is more
    /// specific), or `None` when it does not: the exact name, then its normalized names
    /// ([`model_candidates`]: dated snapshots, provider prefixes, ...); `provider/name` beats `name`.
    fn rank(&self, provider: &str, model: &str) -> Option<usize> {
        let candidates = model_candidates(model);
        if let Some((p, m)) = self.from.split_once('/')
            && p == provider
            && let Some(i) = candidates.iter().position(|c| c == m)
        {
            return Some(2 * i);
        }
        candidates.iter().position(|c| *c == self.from).map(|i| 2 * i + 1)
    }
}

/// Checks TO against the catalog: known (at the month's start) under the name as written, as
/// `provider/model`, or under some provider. An unknown name is an error listing close catalog names.
fn resolve_to(spec: &str, to: &str, catalog: &PriceCatalog, ts_ms: i64) -> anyhow::Result<CatalogTarget> {
    let names = catalog.model_names();
    let direct = to.split_once('/').is_some_and(|(p, m)| catalog.lookup(p, m, ts_ms).is_some())
        || catalog.lookup("", to, ts_ms).is_some();
    let mut providers: Vec<String> = Vec::new();
    if !direct {
        let all: BTreeSet<&str> = names.iter().filter_map(|n| n.split_once('/').map(|(p, _)| p)).collect();
        providers = all.into_iter().filter(|p| catalog.lookup(p, to, ts_ms).is_some()).map(str::to_string).collect();
    }
    if !direct && providers.is_empty() {
        let close = close_names(to, &names);
        let hint = if close.is_empty() {
            format!("no close name among its {} models", names.len())
        } else {
            format!("close catalog names: {}", close.join(", "))
        };
        bail!(
            "--model {spec:?}: {to:?} is not a priced model in the catalog on {} ({hint}); add it with --prices FILE",
            day_of(ts_ms)
        );
    }
    Ok(CatalogTarget { spec: to.to_string(), providers })
}

/// Up to 8 catalog names close to `name` (edit distance on the model part, or containing each other).
fn close_names(name: &str, names: &[String]) -> Vec<String> {
    let want = name.to_ascii_lowercase();
    let want_model = want.rsplit_once('/').map_or(want.as_str(), |(_, m)| m);
    let limit = (want_model.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &String)> = names
        .iter()
        .filter_map(|n| {
            let lower = n.to_ascii_lowercase();
            let model = lower.rsplit_once('/').map_or(lower.as_str(), |(_, m)| m);
            let d = levenshtein(want_model, model).min(levenshtein(&want, &lower));
            let contains =
                want_model.len() >= 3 && model.len() >= 3 && (model.contains(want_model) || want_model.contains(model));
            (d <= limit || contains).then_some((d, n))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(8).map(|(_, n)| n.clone()).collect()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// One comparison: model mappings and a tier, or all usage on one self-hosted option.
#[derive(Debug, Clone)]
struct Scenario {
    mappings: Vec<Mapping>,
    tier: Option<Tier>,
    /// All usage runs on this self-hosted option.
    all_to: Option<usize>,
}

impl Scenario {
    /// The mappings and the tier make one scenario; each self-hosted option that no mapping names is its
    /// own scenario taking all usage.
    fn plan(mappings: Vec<Mapping>, tier: Option<Tier>, options: &[SelfHosted]) -> anyhow::Result<Vec<Scenario>> {
        for (i, m) in mappings.iter().enumerate() {
            if let Some(d) = mappings[..i].iter().find(|o| o.from == m.from) {
                bail!("--model {:?} and --model {:?} map the same FROM", d.spec, m.spec);
            }
        }
        let named: BTreeSet<usize> =
            mappings.iter().filter_map(|m| if let Target::SelfHosted(i) = m.to { Some(i) } else { None }).collect();
        let mut out = Vec::new();
        if !mappings.is_empty() || tier.is_some() {
            out.push(Scenario { mappings, tier, all_to: None });
        }
        out.extend((0..options.len()).filter(|i| !named.contains(i)).map(|i| Scenario {
            mappings: vec![],
            tier: None,
            all_to: Some(i),
        }));
        if out.is_empty() {
            bail!(
                "nothing to compare: give --model FROM=TO, --tier TIER or --self-hosted NAME:USD_PER_GPU_HOUR:TOKENS_PER_SEC"
            );
        }
        Ok(out)
    }

    fn describe(&self, options: &[SelfHosted]) -> String {
        if let Some(i) = self.all_to {
            return format!("all usage on {}", options[i].describe());
        }
        let mut parts: Vec<String> = self
            .mappings
            .iter()
            .map(|m| match &m.to {
                Target::Catalog(c) => format!("{} -> {}", m.from, c.spec),
                Target::SelfHosted(i) => format!("{} -> {}", m.from, options[*i].describe()),
            })
            .collect();
        if let Some(t) = self.tier {
            parts.push(format!("every catalog-priced call at the {} tier", t.as_str()));
        }
        parts.join("; ")
    }

    /// The mapping that applies to usage of `model` from `provider` (the most specific FROM).
    fn mapping_for(&self, provider: &str, model: &str) -> Option<&Mapping> {
        self.mappings.iter().filter_map(|m| Some((m.rank(provider, model)?, m))).min_by_key(|(r, _)| *r).map(|(_, m)| m)
    }
}

/// The usage of one owner, provider, model, tier and price version in one window of the month.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Usage {
    owner: String,
    provider: String,
    model: String,
    tier: Option<Tier>,
    tier_label: String,
    price_id: String,
    window_start_ms: i64,
    requests: i64,
    unpriced: i64,
    usage_missing: i64,
    cache_hits: i64,
    tokens: Tokens,
    /// Recorded cost (null when no call of the row was priced).
    cost: Option<i128>,
}

/// What the lake holds for the month.
#[derive(Debug, Clone, Default)]
struct LakeUsage {
    rows: Vec<Usage>,
    /// window label -> days read from it
    days_by_window: BTreeMap<String, usize>,
    /// Window labels left aside: not dividing a day evenly.
    ignored_windows: Vec<String>,
}

/// For every date of the month with committed rollups, the coarsest window size the lake has for it (a
/// day's 1d window is written when the day closes; until then its 1h or 1m rows hold the usage). Only
/// sizes that divide a day are used, so each window lies within one date.
fn choose_windows(lake: &Path, month: &Month) -> anyhow::Result<(BTreeMap<String, WindowSize>, Vec<String>)> {
    let root = lake.join("rollups");
    let entries = std::fs::read_dir(&root).with_context(|| format!("reading {}", root.display()))?;
    let mut chosen: BTreeMap<String, WindowSize> = BTreeMap::new();
    let mut ignored = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("reading {}", root.display()))?;
        let name = e.file_name().to_string_lossy().to_string();
        let Some(label) = name.strip_prefix("window=") else { continue };
        let size = match WindowSize::parse(label) {
            Ok(s) if 86_400_000 % s.ms == 0 => s,
            _ => {
                ignored.push(label.to_string());
                continue;
            }
        };
        let dir = e.path();
        for d in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let d = d.with_context(|| format!("reading {}", dir.display()))?;
            let dname = d.file_name().to_string_lossy().to_string();
            let Some(date) = dname.strip_prefix("date=") else { continue };
            let valid = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok() && date.len() == 10;
            if !valid || date < month.first.as_str() || date >= month.next.as_str() {
                continue;
            }
            let has_data = std::fs::read_dir(d.path())
                .with_context(|| format!("reading {}", d.path().display()))?
                .filter_map(Result::ok)
                .any(|f| f.file_name().to_string_lossy().ends_with(".parquet"));
            if has_data && chosen.get(date).is_none_or(|c| c.ms < size.ms) {
                chosen.insert(date.to_string(), size.clone());
            }
        }
    }
    ignored.sort();
    Ok((chosen, ignored))
}

const TOKEN_COLUMNS: [&str; 9] = [
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "audio_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "audio_output_tokens",
    "retrieval_calls",
];

async fn read_usage(lake: &Path, month: &Month) -> anyhow::Result<LakeUsage> {
    let ctx = crate::query::session(lake).await?;
    let (chosen, ignored_windows) = choose_windows(lake, month)?;
    if chosen.is_empty() {
        bail!(
            "{} has no rollups for {} (no rollups/window=*/date={}-* partition)",
            lake.display(),
            month.label,
            month.label
        );
    }
    let mut by_label: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (date, size) in &chosen {
        by_label.entry(size.label.as_str()).or_default().push(date.as_str());
    }
    // labels and dates come from directory names checked above (a window size, a YYYY-MM-DD date)
    let filter = by_label
        .iter()
        .map(|(label, dates)| {
            let list = dates.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ");
            format!("(\"window\" = '{label}' AND date IN ({list}))")
        })
        .collect::<Vec<_>>()
        .join(" OR ");
    let sums = ["requests", "unpriced_requests", "usage_missing_requests", "cache_hit_requests"]
        .iter()
        .chain(TOKEN_COLUMNS.iter())
        .map(|c| format!("sum({c}) AS {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT owner, provider, model, service_tier, price_id, window_start, {sums}, sum(cost_usd) AS cost_usd \
         FROM rollups WHERE {filter} GROUP BY owner, provider, model, service_tier, price_id, window_start"
    );
    let batches = ctx
        .sql(&sql)
        .await
        .with_context(|| format!("planning the usage query over {}", lake.display()))?
        .collect()
        .await
        .with_context(|| format!("reading rollups of {} from {}", month.label, lake.display()))?;
    let mut rows = Vec::new();
    for b in &batches {
        rows.extend(
            usage_rows(b).with_context(|| format!("reading rollups of {} from {}", month.label, lake.display()))?,
        );
    }
    // deterministic order whatever the scan order
    rows.sort_by(|a, b| {
        (&a.owner, &a.provider, &a.model, &a.tier_label, &a.price_id, a.window_start_ms).cmp(&(
            &b.owner,
            &b.provider,
            &b.model,
            &b.tier_label,
            &b.price_id,
            b.window_start_ms,
        ))
    });
    let mut days_by_window = BTreeMap::new();
    for size in chosen.values() {
        *days_by_window.entry(size.label.clone()).or_default() += 1;
    }
    Ok(LakeUsage { rows, days_by_window, ignored_windows })
}

fn column(b: &RecordBatch, name: &str, to: &DataType) -> anyhow::Result<ArrayRef> {
    let c = b.column_by_name(name).with_context(|| format!("no column {name}"))?;
    cast(c, to).with_context(|| format!("column {name} as {to}"))
}

fn usage_rows(b: &RecordBatch) -> anyhow::Result<Vec<Usage>> {
    let strings = ["owner", "provider", "model", "service_tier", "price_id"]
        .map(|n| column(b, n, &DataType::Utf8))
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let s = |i: usize, r: usize| strings[i].as_string::<i32>().value(r).to_string();
    let ts = column(b, "window_start", &DataType::Int64)?;
    let ints = ["requests", "unpriced_requests", "usage_missing_requests", "cache_hit_requests"]
        .iter()
        .chain(TOKEN_COLUMNS.iter())
        .map(|n| column(b, n, &DataType::Int64))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let n = |i: usize, r: usize| -> i64 {
        let a = ints[i].as_primitive::<Int64Type>();
        if a.is_null(r) { 0 } else { a.value(r) }
    };
    let cost = column(b, "cost_usd", &DataType::Decimal128(COST_PRECISION, COST_SCALE))?;
    let cost = cost.as_primitive::<Decimal128Type>();
    let mut out = Vec::with_capacity(b.num_rows());
    for r in 0..b.num_rows() {
        let tier_label = s(3, r);
        out.push(Usage {
            owner: s(0, r),
            provider: s(1, r),
            model: s(2, r),
            tier: Tier::parse(&tier_label),
            tier_label,
            price_id: s(4, r),
            window_start_ms: ts.as_primitive::<Int64Type>().value(r),
            requests: n(0, r),
            unpriced: n(1, r),
            usage_missing: n(2, r),
            cache_hits: n(3, r),
            tokens: Tokens {
                input: n(4, r),
                cache_read: n(5, r),
                cache_write: n(6, r),
                cache_write_1h: n(7, r),
                audio_input: n(8, r),
                output: n(9, r),
                reasoning: n(10, r),
                audio_output: n(11, r),
                web_search: n(12, r),
            },
            cost: (!cost.is_null(r)).then(|| cost.value(r)),
        });
    }
    Ok(out)
}

/// Why usage is in neither column.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum LeftOut {
    /// Calls the lake could not price (model or web search price missing), with the priced calls that
    /// share their rollup row.
    Unpriced,
    /// Calls whose source reported no usage.
    UsageMissing,
    /// Usage the scenario cannot price.
    Scenario(String),
}

impl LeftOut {
    fn describe(&self) -> String {
        match self {
            LeftOut::Unpriced => "unpriced in the lake (no catalog price at ingest)".into(),
            LeftOut::UsageMissing => "no usage reported by the source".into(),
            LeftOut::Scenario(why) => format!("not priceable in the scenario: {why}"),
        }
    }
}

/// Whether the lake's cost of a row is known for all of its calls.
fn lake_left_out(u: &Usage) -> Option<LeftOut> {
    if u.unpriced > 0 || (u.cost.is_none() && u.usage_missing == 0) {
        Some(LeftOut::Unpriced)
    } else if u.usage_missing > 0 {
        Some(LeftOut::UsageMissing)
    } else {
        None
    }
}

/// What a scenario makes of one row.
enum Priced {
    Usd(i128),
    /// Tokens processed on a self-hosted option (GPU time), with the retrieval calls it does not price.
    Gpu {
        option: usize,
        tokens: i128,
        retrieval: i64,
    },
    LeftOut(LeftOut),
}

/// Sums for one owner or one model in one scenario.
#[derive(Debug, Clone, Default)]
struct Acc {
    requests: i64,
    /// Requests in neither column.
    left_out: i64,
    /// The lake's counts (whatever the scenario).
    unpriced: i64,
    usage_missing: i64,
    baseline: i128,
    /// Catalog-priced part of the scenario.
    usd: i128,
    /// Tokens per self-hosted option (priced from the sum by [`Acc::finish`]).
    gpu_tokens: BTreeMap<usize, i128>,
    /// The scenario's cost of the compared usage (set by [`Acc::finish`]).
    scenario: i128,
}

impl Acc {
    fn add(&mut self, u: &Usage, priced: &Priced) -> anyhow::Result<()> {
        self.requests += u.requests;
        self.unpriced += u.unpriced;
        self.usage_missing += u.usage_missing;
        let cost = u.cost.unwrap_or(0);
        match priced {
            Priced::LeftOut(_) => self.left_out += u.requests,
            Priced::Usd(v) => {
                self.baseline = self.baseline.checked_add(cost).context("baseline sum overflows")?;
                self.usd = self.usd.checked_add(*v).context("scenario sum overflows")?;
            }
            Priced::Gpu { option, tokens, .. } => {
                self.baseline = self.baseline.checked_add(cost).context("baseline sum overflows")?;
                *self.gpu_tokens.entry(*option).or_default() += tokens;
            }
        }
        Ok(())
    }

    /// Sets `scenario`: the catalog-priced part plus each self-hosted option's cost of its token sum.
    fn finish(&mut self, options: &[SelfHosted]) -> anyhow::Result<()> {
        let mut v = self.usd;
        for (i, t) in &self.gpu_tokens {
            v = v.checked_add(options[*i].cost(*t)?).context("scenario sum overflows")?;
        }
        self.scenario = v;
        Ok(())
    }

    fn delta(&self) -> i128 {
        self.scenario - self.baseline
    }
}

/// The month's use of one self-hosted option in a scenario.
#[derive(Debug, Clone)]
struct GpuUse {
    option: usize,
    tokens: i128,
    /// 10^-18 GPU hours.
    hours: i128,
    usd: i128,
    /// Retrieval (web search) calls routed there: not priced.
    retrieval: i64,
}

/// A model's line in the breakdown: lake provider, model and tier, and where the scenario puts it.
type ModelKey = (String, String, String, String);

#[derive(Debug)]
struct ScenarioResult {
    owners: BTreeMap<String, Acc>,
    total: Acc,
    models: BTreeMap<ModelKey, Acc>,
    left_out: BTreeMap<LeftOut, (i64, i128)>,
    /// Self-hosted option -> retrieval calls routed there (not priced).
    retrieval_on_gpu: BTreeMap<usize, i64>,
    gpu: Vec<GpuUse>,
    /// Catalog prices used by the scenario that have long-context tiers: name -> threshold.
    long_context: BTreeMap<String, i64>,
}

#[derive(Debug)]
struct Report {
    month: Month,
    usage: LakeUsage,
    results: Vec<ScenarioResult>,
    check: Check,
}

/// The lake's own usage re-priced from the rollup sums at its own catalog entries, to show how far
/// pricing from sums is from per-call pricing on this data.
#[derive(Debug, Clone, Default)]
struct Check {
    recorded: i128,
    repriced: i128,
    /// Rows priced at ingest by a price version the loaded catalog does not have: (rows, recorded cost).
    foreign_rows: usize,
    foreign_cost: i128,
}

impl Report {
    fn build(
        catalog: &PriceCatalog,
        usage: &LakeUsage,
        scenarios: &[Scenario],
        options: &[SelfHosted],
        month: &Month,
    ) -> anyhow::Result<Report> {
        // every FROM names usage of the month: a typo must not pass as "no change"
        let seen: BTreeSet<(&str, &str)> = usage.rows.iter().map(|u| (u.provider.as_str(), u.model.as_str())).collect();
        for s in scenarios {
            for m in &s.mappings {
                if !seen.iter().any(|(p, model)| m.rank(p, model).is_some()) {
                    let list = seen.iter().map(|(p, m)| format!("{p}/{m}")).collect::<BTreeSet<_>>();
                    bail!(
                        "--model {:?}: no usage of {:?} in {}; models with usage: {}",
                        m.spec,
                        m.from,
                        month.label,
                        list.into_iter().collect::<Vec<_>>().join(", ")
                    );
                }
            }
        }
        let mut check = Check::default();
        for u in &usage.rows {
            if lake_left_out(u).is_some() || u.cache_hits > 0 {
                continue;
            }
            let (Some(tier), Some(cost)) = (u.tier, u.cost) else { continue };
            match catalog.lookup_for(&u.owner, &u.provider, &u.model, u.window_start_ms) {
                Some(p) if *p.id == *u.price_id => {
                    if let Some(v) = p.cost_at_base_rates(&u.tokens, tier) {
                        check.recorded += cost;
                        check.repriced += v;
                    }
                }
                _ => {
                    check.foreign_rows += 1;
                    check.foreign_cost += cost;
                }
            }
        }
        let mut results = Vec::new();
        for s in scenarios {
            results.push(
                price_scenario(catalog, usage, s, options)
                    .with_context(|| format!("pricing the scenario {:?}", s.describe(options)))?,
            );
        }
        Ok(Report { month: month.clone(), usage: usage.clone(), results, check })
    }
}

fn price_scenario(
    catalog: &PriceCatalog,
    usage: &LakeUsage,
    s: &Scenario,
    options: &[SelfHosted],
) -> anyhow::Result<ScenarioResult> {
    let mut r = ScenarioResult {
        owners: BTreeMap::new(),
        total: Acc::default(),
        models: BTreeMap::new(),
        left_out: BTreeMap::new(),
        retrieval_on_gpu: BTreeMap::new(),
        gpu: Vec::new(),
        long_context: BTreeMap::new(),
    };
    for u in &usage.rows {
        let (priced, to_label) = price_row(catalog, u, s, options, &mut r.long_context).with_context(|| {
            format!("usage of {}/{} by {} on {}", u.provider, u.model, u.owner, day_of(u.window_start_ms))
        })?;
        match &priced {
            Priced::LeftOut(why) => {
                let e = r.left_out.entry(why.clone()).or_default();
                e.0 += u.requests;
                e.1 += u.cost.unwrap_or(0);
            }
            Priced::Gpu { option, retrieval, .. } if *retrieval > 0 => {
                *r.retrieval_on_gpu.entry(*option).or_default() += retrieval;
            }
            _ => {}
        }
        r.owners.entry(u.owner.clone()).or_default().add(u, &priced)?;
        r.total.add(u, &priced)?;
        let key = (u.provider.clone(), u.model.clone(), u.tier_label.clone(), to_label);
        r.models.entry(key).or_default().add(u, &priced)?;
    }
    for a in r.owners.values_mut().chain(r.models.values_mut()).chain(std::iter::once(&mut r.total)) {
        a.finish(options)?;
    }
    for (i, t) in &r.total.gpu_tokens {
        let o = &options[*i];
        let retrieval = r.retrieval_on_gpu.get(i).copied().unwrap_or(0);
        r.gpu.push(GpuUse { option: *i, tokens: *t, hours: o.gpu_hours(*t)?, usd: o.cost(*t)?, retrieval });
    }
    Ok(r)
}

/// Prices one row under a scenario; also returns where the scenario puts it (for the model breakdown).
fn price_row(
    catalog: &PriceCatalog,
    u: &Usage,
    s: &Scenario,
    options: &[SelfHosted],
    long_context: &mut BTreeMap<String, i64>,
) -> anyhow::Result<(Priced, String)> {
    let target = match s.all_to {
        Some(i) => Some(Target::SelfHosted(i)),
        None => s.mapping_for(&u.provider, &u.model).map(|m| m.to.clone()),
    };
    let to_tier = s.tier.or(u.tier);
    let to_price = match &target {
        Some(Target::Catalog(c)) => Some(c.price(catalog, &u.owner, &u.provider, u.window_start_ms)?),
        _ => None,
    };
    let label = match (&target, &to_price) {
        (None, _) if s.tier.is_none() => "unchanged".to_string(),
        (None, _) => format!("{}/{} @{}", u.provider, u.model, tier_name(to_tier)),
        (Some(Target::SelfHosted(i)), _) => format!("self-hosted {}", options[*i].name),
        (Some(Target::Catalog(c)), p) => {
            format!("{} @{}", p.as_ref().map_or(c.spec.as_str(), |p| entry_name(&p.id)), tier_name(to_tier))
        }
    };
    let cost = match (lake_left_out(u), u.cost) {
        (None, Some(cost)) => cost,
        (why, _) => return Ok((Priced::LeftOut(why.unwrap_or(LeftOut::Unpriced)), label)),
    };
    // a gateway's own response cache costs nothing under any scenario
    if u.cache_hits > 0 && u.cache_hits == u.requests {
        return Ok((Priced::Usd(0), label));
    }
    let Some(from_tier) = u.tier else {
        bail!("service_tier {:?} is not one of default, batch, flex, priority", u.tier_label);
    };
    let tier = to_tier.unwrap_or(from_tier);
    let mut reprice = |p: &ModelPrice, name: &str| -> Priced {
        if let Some(th) = p.long_context_tier(&Tokens { input: i64::MAX, ..Tokens::default() }) {
            long_context.insert(name.to_string(), th);
        }
        match p.cost_at_base_rates(&u.tokens, tier) {
            Some(v) => Priced::Usd(v),
            None if u.tokens.web_search > 0 && p.web_search_rate().is_none() => {
                Priced::LeftOut(LeftOut::Scenario(format!("{name} has no price per retrieval (web search) call")))
            }
            None => Priced::LeftOut(LeftOut::Scenario(format!("{name}: the cost does not fit"))),
        }
    };
    let priced = match target {
        None if tier == from_tier => Priced::Usd(cost),
        None => match catalog.lookup_for(&u.owner, &u.provider, &u.model, u.window_start_ms) {
            Some(p) => reprice(&p, &format!("{}/{}", u.provider, u.model)),
            None => Priced::LeftOut(LeftOut::Scenario(format!(
                "{}/{} is not in the loaded catalog (load the price files the pipeline used)",
                u.provider, u.model
            ))),
        },
        Some(Target::Catalog(c)) => match &to_price {
            // the entry that priced it, same tier: exactly what was recorded
            Some(p) if *p.id == *u.price_id && tier == from_tier => Priced::Usd(cost),
            Some(p) => reprice(p, entry_name(&p.id)),
            None => bail!("no price for {}", c.spec),
        },
        Some(Target::SelfHosted(i)) => Priced::Gpu {
            option: i,
            tokens: u.tokens.input as i128 + u.tokens.output as i128,
            retrieval: u.tokens.web_search,
        },
    };
    Ok((priced, label))
}

/// The catalog entry of a price id (`openai/gpt-4o@list#1a2b3c4d`, or a negotiated
/// `<list id>+owner=<owner>:<entry>@…` / `owner=<owner>:<entry>@…`): `openai/gpt-4o`.
fn entry_name(price_id: &str) -> &str {
    let head = price_id.split('@').next().unwrap_or(price_id);
    match head.strip_prefix("owner=") {
        Some(rest) => rest.split_once(':').map_or(rest, |(_, e)| e),
        None => head,
    }
}

fn tier_name(t: Option<Tier>) -> &'static str {
    t.map_or("?", Tier::as_str)
}

/// Delta in percent of the baseline, in tenths, rounded half away from zero.
fn delta_tenths(baseline: i128, scenario: i128) -> Option<i128> {
    if baseline == 0 {
        return None;
    }
    let d = (scenario - baseline).checked_mul(2000)?;
    let q = d / baseline;
    Some(if q >= 0 { (q + 1) / 2 } else { (q - 1) / 2 })
}

fn percent(t: Option<i128>) -> String {
    match t {
        None => "n/a".into(),
        Some(t) => format!("{}{}.{}%", if t < 0 { "-" } else { "+" }, t.abs() / 10, t.abs() % 10),
    }
}

fn usd(v: i128) -> String {
    format_usd_rounded(v, 4)
}

/// Aligns columns: text columns left, numbers right.
fn table(head: &[&str], rows: &[Vec<String>], numeric: &[bool]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            if numeric[i] {
                let _ = write!(s, "{c:>width$}", width = w[i]);
            } else {
                let _ = write!(s, "{c:<width$}", width = w[i]);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head.to_vec());
    out += &line(w.iter().map(|n| "-".repeat(*n)).collect::<Vec<_>>().iter().map(String::as_str).collect());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

impl Report {
    fn sources(&self) -> String {
        let days: Vec<String> =
            self.usage.days_by_window.iter().map(|(w, n)| format!("{n} day(s) from window={w}")).collect();
        days.join(", ")
    }

    fn notes(&self, scenarios: &[Scenario], options: &[SelfHosted]) -> Vec<String> {
        let mut notes = vec![
            "Baseline: the cost the pipeline recorded per call. Usage a scenario leaves unchanged keeps that \
             cost exactly; usage it moves is priced from its token sums per owner, model, tier and rollup window."
                .to_string(),
            "Approximation: rollups keep token sums, not request sizes, so re-priced usage is priced at each \
             model's base (any-size) rates: long-context tiers (the whole request at a higher rate above N input \
             tokens) are not applied, and a negotiated discount is applied to the sum."
                .to_string(),
        ];
        let c = &self.check;
        if c.recorded != 0 || c.repriced != 0 {
            let diff = c.repriced - c.recorded;
            notes.push(format!(
                "Check: the month's own usage re-priced that way at the entries that priced it gives {} USD for {} \
                 USD recorded ({} USD{}).",
                usd(c.repriced),
                usd(c.recorded),
                usd(diff),
                if diff == 0 { ", exact" } else { ": long-context tiers and per-call rounding the sums cannot see" }
            ));
        }
        if c.foreign_rows > 0 {
            notes.push(format!(
                "{} rollup rows ({} USD) were priced at ingest by price versions the loaded catalog does not have; \
                 load the price files the pipeline used (--config or --prices) for like-for-like rates.",
                c.foreign_rows,
                usd(c.foreign_cost)
            ));
        }
        let mut lc: BTreeMap<&str, i64> = BTreeMap::new();
        for r in &self.results {
            for (n, t) in &r.long_context {
                lc.insert(n, *t);
            }
        }
        for (n, t) in lc {
            notes.push(format!(
                "{n} prices requests above {t} input tokens at higher rates; the scenario prices all of its usage at \
                 the base rates (an under-estimate if many requests are that long)."
            ));
        }
        if options.iter().enumerate().any(|(i, _)| scenarios.iter().any(|s| s.uses(i))) {
            notes.push(
                "Self-hosted: GPU hours = (input + output tokens, cached input and reasoning included) / \
                 TOKENS_PER_SEC / 3600, priced at USD_PER_GPU_HOUR, exact to 1e-18 USD; it assumes every GPU \
                 hour is busy at that throughput (no idle or peak headroom) and no gateway cache hits reach it."
                    .to_string(),
            );
        }
        if !self.usage.ignored_windows.is_empty() {
            notes.push(format!(
                "Window sizes left aside (they do not divide a day): {}.",
                self.usage.ignored_windows.join(", ")
            ));
        }
        notes
    }

    fn render(&self, lake: &Path, scenarios: &[Scenario], options: &[SelfHosted]) -> String {
        let mut out =
            format!("What-if for {} from {} ({}); amounts in USD.\n", self.month.label, lake.display(), self.sources());
        let money =
            |a: &Acc| [usd(a.baseline), usd(a.scenario), usd(a.delta()), percent(delta_tenths(a.baseline, a.scenario))];
        for (n, (s, r)) in scenarios.iter().zip(&self.results).enumerate() {
            let _ = write!(out, "\nScenario {}: {}\n", n + 1, s.describe(options));
            let mut owners: Vec<(&String, &Acc)> = r.owners.iter().collect();
            owners.sort_by(|a, b| b.1.baseline.cmp(&a.1.baseline).then(a.0.cmp(b.0)));
            let row = |name: &str, a: &Acc| -> Vec<String> {
                let mut v = vec![name.to_string(), a.requests.to_string(), a.left_out.to_string()];
                v.extend(money(a));
                v
            };
            let mut rows: Vec<Vec<String>> = owners.iter().map(|(o, a)| row(o, a)).collect();
            rows.push(row("TOTAL", &r.total));
            out += &table(
                &["owner", "requests", "not compared", "baseline", "scenario", "delta", "delta %"],
                &rows,
                &[false, true, true, true, true, true, true],
            );
            out += "\nBy model (all owners):\n";
            let mut models: Vec<(&ModelKey, &Acc)> = r.models.iter().collect();
            models.sort_by(|a, b| b.1.baseline.cmp(&a.1.baseline).then(a.0.cmp(b.0)));
            let rows: Vec<Vec<String>> = models
                .iter()
                .map(|((p, m, t, to), a)| {
                    let mut v = vec![format!("{p}/{m}"), t.clone(), to.clone(), a.requests.to_string()];
                    v.push(a.left_out.to_string());
                    v.extend(money(a));
                    v
                })
                .collect();
            out += &table(
                &["model", "tier", "runs as", "requests", "not compared", "baseline", "scenario", "delta", "delta %"],
                &rows,
                &[false, false, false, true, true, true, true, true, true],
            );
            let covered = self.days_with_data();
            for g in &r.gpu {
                let o = &options[g.option];
                let busy = mul_div_round(g.hours, 1, covered.max(1) as i128 * 24)
                    .map_or_else(|| "n/a".to_string(), |b| format_usd_rounded(b, 2));
                let _ = writeln!(
                    out,
                    "\n{}: {} tokens -> {} GPU hours -> {} USD, i.e. {busy} GPUs busy around the clock over the {covered} \
                     day(s) with data; one always-on GPU for the whole month ({} h) costs {} USD.",
                    o.describe(),
                    g.tokens,
                    format_usd_rounded(g.hours, 2),
                    usd(g.usd),
                    self.month.days * 24,
                    usd(o.usd_per_hour * self.month.days as i128 * 24),
                );
                if g.retrieval > 0 {
                    let _ = writeln!(
                        out,
                        "{} retrieval (web search) calls routed to {} are not priced.",
                        g.retrieval, o.name
                    );
                }
            }
            if !r.left_out.is_empty() {
                out += "\nNot compared (in neither column):\n";
                for (why, (n, cost)) in &r.left_out {
                    let _ = write!(out, "- {n} requests {}", why.describe());
                    if *cost != 0 {
                        let _ = write!(out, " (the recorded cost of their priced calls: {} USD)", usd(*cost));
                    }
                    out.push('\n');
                }
            }
        }
        out += "\nNotes:\n";
        for n in self.notes(scenarios, options) {
            let _ = writeln!(out, "- {n}");
        }
        out
    }

    fn days_with_data(&self) -> i64 {
        self.usage.days_by_window.values().map(|d| *d as i64).sum()
    }

    fn json(&self, lake: &Path, scenarios: &[Scenario], options: &[SelfHosted]) -> serde_json::Value {
        let acc = |a: &Acc, mut head: serde_json::Map<String, serde_json::Value>| {
            let pct = delta_tenths(a.baseline, a.scenario)
                .map(|t| format!("{}{}.{}", if t < 0 { "-" } else { "" }, t.abs() / 10, t.abs() % 10));
            let body = json!({
                "requests": a.requests,
                "not_compared_requests": a.left_out,
                "unpriced_requests": a.unpriced,
                "usage_missing_requests": a.usage_missing,
                "baseline_usd": format_usd(a.baseline),
                "scenario_usd": format_usd(a.scenario),
                "delta_usd": format_usd(a.delta()),
                "delta_percent": pct,
            });
            if let serde_json::Value::Object(b) = body {
                head.extend(b);
            }
            serde_json::Value::Object(head)
        };
        let obj = |v: serde_json::Value| match v {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let scenario = |s: &Scenario, r: &ScenarioResult| {
            let mappings: Vec<serde_json::Value> = s
                .mappings
                .iter()
                .map(|m| match &m.to {
                    Target::Catalog(c) => json!({"from": m.from, "to": c.spec, "to_self_hosted": false}),
                    Target::SelfHosted(i) => json!({"from": m.from, "to": options[*i].name, "to_self_hosted": true}),
                })
                .collect();
            let owners: Vec<_> = r.owners.iter().map(|(o, a)| acc(a, obj(json!({ "owner": o })))).collect();
            let models: Vec<_> = r
                .models
                .iter()
                .map(|((p, m, t, to), a)| acc(a, obj(json!({"provider": p, "model": m, "tier": t, "runs_as": to}))))
                .collect();
            let gpu: Vec<_> = r
                .gpu
                .iter()
                .map(|g| {
                    let o = &options[g.option];
                    json!({
                        "name": o.name,
                        "usd_per_gpu_hour": format_usd(o.usd_per_hour),
                        "tokens_per_sec": format_usd(o.tps_milli * (ONE_USD / 1000)),
                        "tokens": g.tokens.to_string(),
                        "gpu_hours": format_usd(g.hours),
                        "usd": format_usd(g.usd),
                        "unpriced_retrieval_calls": g.retrieval,
                    })
                })
                .collect();
            let left_out: Vec<_> = r
                .left_out
                .iter()
                .map(|(why, (n, c))| json!({"reason": why.describe(), "requests": n, "recorded_usd": format_usd(*c)}))
                .collect();
            json!({
                "description": s.describe(options),
                "mappings": mappings,
                "tier": s.tier.map(Tier::as_str),
                "all_usage_to": s.all_to.map(|i| options[i].name.clone()),
                "owners": owners,
                "total": acc(&r.total, serde_json::Map::new()),
                "models": models,
                "self_hosted": gpu,
                "not_compared": left_out,
            })
        };
        json!({
            "month": self.month.label,
            "lake": lake.display().to_string(),
            "days_by_window": self.usage.days_by_window,
            "days_with_data": self.days_with_data(),
            "scenarios": scenarios.iter().zip(&self.results).map(|(s, r)| scenario(s, r)).collect::<Vec<_>>(),
            "check": {
                "recorded_usd": format_usd(self.check.recorded),
                "repriced_from_sums_usd": format_usd(self.check.repriced),
                "rows_priced_by_other_catalog": self.check.foreign_rows,
            },
            "notes": self.notes(scenarios, options),
        })
    }
}

impl Scenario {
    /// Whether any usage may run on self-hosted option `i`.
    fn uses(&self, i: usize) -> bool {
        self.all_to == Some(i) || self.mappings.iter().any(|m| matches!(m.to, Target::SelfHosted(j) if j == i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd_units(s: &str) -> i128 {
        parse_usd("t", s).unwrap()
    }

    #[test]
    fn month_parsing() {
        let m = Month::parse("2026-02").unwrap();
        assert_eq!((m.first.as_str(), m.next.as_str(), m.days), ("2026-02-01", "2026-03-01", 28));
        assert_eq!(Month::parse("2026-12").unwrap().next, "2027-01-01");
        for bad in ["2026-13", "2026-1", "202605", "2026-05-01", "may"] {
            let e = Month::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("YYYY-MM"), "{e}");
        }
    }

    #[test]
    fn self_hosted_parsing() {
        let o = SelfHosted::parse("llama-70b:2.50:1500.5").unwrap();
        assert_eq!((o.name.as_str(), o.usd_per_hour, o.tps_milli), ("llama-70b", usd_units("2.5"), 1_500_500));
        let o = SelfHosted::parse("vllm:host:a:4:100").unwrap();
        assert_eq!(o.name, "vllm:host:a", "the name may contain ':' (the last two fields are numbers)");
        for bad in ["x:1", ":1:1", "x:-1:1", "x:1:0", "x:1:-5", "x:1:1.0001", "x:abc:1", "a=b:1:1"] {
            let e = SelfHosted::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("NAME:USD_PER_GPU_HOUR:TOKENS_PER_SEC"), "{e}");
        }
    }

    #[test]
    fn self_hosted_arithmetic_is_exact() {
        // 3.6M tokens at 1000 tokens/s = 1 GPU hour
        let o = SelfHosted::parse("x:2.5:1000").unwrap();
        assert_eq!(o.gpu_hours(3_600_000).unwrap(), ONE_USD);
        assert_eq!(o.cost(3_600_000).unwrap(), usd_units("2.5"));
        // 1 token at 3 tokens/s, $1/h: 1/10800 USD, rounded half up to 1e-18
        let o = SelfHosted::parse("x:1:3").unwrap();
        assert_eq!(o.cost(1).unwrap(), ONE_USD / 10_800 + 1); // 92592592592592.59... -> ...593
        // fractional throughput: 7,200,000 tokens at 0.5 tokens/s = 4000 h
        let o = SelfHosted::parse("x:0.75:0.5").unwrap();
        assert_eq!(o.gpu_hours(7_200_000).unwrap(), 4000 * ONE_USD);
        assert_eq!(o.cost(7_200_000).unwrap(), usd_units("3000"));
        // no intermediate overflow for a very large month: 10^15 tokens at $1000/h, 1 token/s
        let o = SelfHosted::parse("x:1000:1").unwrap();
        let big = 1_000_000_000_000_000i128;
        assert_eq!(o.cost(big).unwrap(), mul_div_round(big, usd_units("1000"), 3600).unwrap());
    }

    #[test]
    fn mul_div_round_matches_wide_arithmetic() {
        for (a, b, c) in [(7, 3, 2), (1, 1, 3), (2, 1, 3), (10, 10, 7), (0, 5, 9), (i64::MAX as i128, 1_000, 3)] {
            let want = (a * b + c / 2) / c;
            assert_eq!(mul_div_round(a, b, c), Some(want), "{a} {b} {c}");
        }
        assert_eq!(mul_div_round(1, 1, 0), None);
        assert_eq!(mul_div_round(i128::MAX, i128::MAX, 1), None);
    }

    #[test]
    fn entry_names_of_price_ids() {
        assert_eq!(entry_name("openai/gpt-4o@list#1a2b3c4d"), "openai/gpt-4o");
        assert_eq!(entry_name("gpt-4o@2026-01-01#00ff00ff"), "gpt-4o");
        assert_eq!(entry_name("openai/gpt-4o@list#1+owner=search:gpt-4o@list#2"), "openai/gpt-4o");
        assert_eq!(entry_name("owner=search:anthropic/claude-haiku-4-5@list#3"), "anthropic/claude-haiku-4-5");
    }

    #[test]
    fn delta_percent_rounds_half_away_from_zero() {
        assert_eq!(delta_tenths(100, 50), Some(-500));
        assert_eq!(delta_tenths(3, 4), Some(333));
        assert_eq!(delta_tenths(3, 2), Some(-333));
        assert_eq!(delta_tenths(2000, 2001), Some(1)); // +0.05 % -> +0.1 %
        assert_eq!(delta_tenths(0, 5), None);
        assert_eq!(percent(Some(-500)), "-50.0%");
        assert_eq!(percent(Some(5)), "+0.5%");
        assert_eq!(percent(None), "n/a");
    }

    fn mapping(spec: &str) -> anyhow::Result<Mapping> {
        let opts = vec![SelfHosted::parse("llama:2:1000").unwrap()];
        Mapping::parse(spec, &opts, &PriceCatalog::builtin(), 0)
    }

    #[test]
    fn mapping_parsing_and_matching() {
        let m = mapping("gpt-4o=gpt-4o-mini").unwrap();
        assert!(matches!(&m.to, Target::Catalog(c) if c.spec == "gpt-4o-mini"));
        assert_eq!(m.rank("openai", "gpt-4o"), Some(1));
        assert!(m.rank("openai", "gpt-4o-2024-08-06").is_some(), "a dated snapshot is the model");
        assert_eq!(m.rank("openai", "gpt-4o-mini"), None);
        let m = mapping("openai/gpt-4o=claude-haiku-4-5").unwrap();
        assert_eq!(m.rank("openai", "gpt-4o"), Some(0));
        assert_eq!(m.rank("azure", "gpt-4o"), None, "provider/model matches that provider only");
        assert!(matches!(&m.to, Target::Catalog(c) if c.providers == ["anthropic"]), "the only provider listing it");
        let m = mapping("claude-sonnet-4-5=llama").unwrap();
        assert!(matches!(m.to, Target::SelfHosted(0)));
        assert!(mapping("anthropic/claude-haiku-4-5=openai/gpt-4o-mini").is_ok());
        for bad in ["gpt-4o", "=x", "gpt-4o="] {
            assert!(mapping(bad).unwrap_err().to_string().contains(bad), "{bad}");
        }
    }

    #[test]
    fn unknown_to_model_names_close_catalog_names() {
        let e = mapping("gpt-4o=gpt-4o-minii").unwrap_err().to_string();
        assert!(e.contains("\"gpt-4o-minii\" is not a priced model"), "{e}");
        assert!(e.contains("openai/gpt-4o-mini"), "{e}");
        let e = mapping("gpt-4o=zzzzzzzzzzzzzzzzz").unwrap_err().to_string();
        assert!(e.contains("no close name"), "{e}");
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
    }

    #[test]
    fn scenario_plan() {
        let opts = vec![SelfHosted::parse("a:1:1").unwrap(), SelfHosted::parse("b:1:1").unwrap()];
        let cat = PriceCatalog::builtin();
        let m = |s: &str| Mapping::parse(s, &opts, &cat, 0).unwrap();
        // a mapped option is part of the main scenario, an unmapped one is its own scenario
        let plan = Scenario::plan(vec![m("gpt-4o=a")], None, &opts).unwrap();
        assert_eq!(plan.len(), 2);
        assert!(plan[0].uses(0) && !plan[0].uses(1) && plan[1].all_to == Some(1));
        let plan = Scenario::plan(vec![], Some(Tier::Batch), &[]).unwrap();
        assert_eq!(plan.len(), 1);
        assert!(Scenario::plan(vec![], None, &[]).unwrap_err().to_string().contains("nothing to compare"));
        let e = Scenario::plan(vec![m("gpt-4o=gpt-4o-mini"), m("gpt-4o=gpt-4.1")], None, &[]).unwrap_err();
        assert!(e.to_string().contains("same FROM"), "{e}");
        // the most specific FROM wins
        let s = Scenario::plan(vec![m("gpt-4o=gpt-4o-mini"), m("gpt-4o-2024-08-06=gpt-4.1")], None, &[]).unwrap();
        assert_eq!(s[0].mapping_for("openai", "gpt-4o-2024-08-06").unwrap().from, "gpt-4o-2024-08-06");
        assert_eq!(s[0].mapping_for("openai", "gpt-4o-2024-11-20").unwrap().from, "gpt-4o");
    }

    fn row(model: &str, tier: &str, tokens: Tokens, cost: Option<i128>, price_id: &str) -> Usage {
        Usage {
            owner: "o".into(),
            provider: "openai".into(),
            model: model.into(),
            tier: Tier::parse(tier),
            tier_label: tier.into(),
            price_id: price_id.into(),
            requests: 10,
            tokens,
            cost,
            ..Usage::default()
        }
    }

    #[test]
    fn scenario_pricing_of_rows() {
        let cat = PriceCatalog::builtin();
        let id = cat.lookup("openai", "gpt-4o", 0).unwrap().id.to_string();
        // 1M input of which 400k cached, 100k output: 600k x 2.5 + 400k x 1.25 + 100k x 10 per 1M = 3 USD
        let t = Tokens { input: 1_000_000, cache_read: 400_000, output: 100_000, ..Tokens::default() };
        let recorded = usd_units("3") + 7; // as if per-call rounding had made it differ
        let usage = LakeUsage {
            rows: vec![
                row("gpt-4o", "default", t, Some(recorded), &id),
                row("gpt-9", "default", t, None, ""),
                Usage { unpriced: 0, usage_missing: 10, ..row("gpt-4o", "default", Tokens::default(), None, "") },
                Usage { cache_hits: 10, ..row("gpt-4o", "default", t, Some(0), "gateway-cache-hit") },
            ],
            ..LakeUsage::default()
        };
        let opts = vec![SelfHosted::parse("llama:3.6:1000").unwrap()];
        let month = Month::parse("1970-01").unwrap();
        let m = |s: &str| Mapping::parse(s, &opts, &cat, 0).unwrap();
        let plan = |ms: Vec<Mapping>, tier| Scenario::plan(ms, tier, &opts).unwrap();
        let report = |s: &[Scenario]| Report::build(&cat, &usage, s, &opts, &month).unwrap();

        // X=X keeps the recorded cost exactly (the entry that priced it, same tier)
        let s = plan(vec![m("gpt-4o=gpt-4o"), m("llama-x=llama")], None);
        let e = Report::build(&cat, &usage, &s, &opts, &month).unwrap_err().to_string();
        assert!(e.contains("no usage of \"llama-x\"") && e.contains("openai/gpt-4o"), "{e}");
        let s = plan(vec![m("gpt-4o=gpt-4o")], None);
        let r = report(&s);
        let total = &r.results[0].total;
        assert_eq!((total.baseline, total.scenario), (recorded, recorded));
        assert_eq!((total.requests, total.left_out), (40, 20), "unpriced and usage-missing rows are left out");
        assert_eq!(r.check.repriced, usd_units("3"));
        assert_eq!(r.check.recorded, recorded);

        // another model: the token sums at its rates (0.15 / 0.075 / 0.60): 0.09 + 0.03 + 0.06
        let r = report(&plan(vec![m("gpt-4o=gpt-4o-mini")], None));
        assert_eq!(r.results[0].total.scenario, usd_units("0.18"));
        // batch tier: gpt-4o's batch rates are half
        let r = report(&plan(vec![], Some(Tier::Batch)));
        assert_eq!(r.results[0].total.scenario, usd_units("1.5"));
        // self-hosted takes everything not cached by the gateway: 1.1M tokens at 1000/s = 1100/3600 h x 3.6
        let r = report(&plan(vec![], None));
        assert_eq!(r.results[0].total.scenario, usd_units("1.1"));
        assert_eq!(r.results[0].total.gpu_tokens[&0], 1_100_000);
        let text = r.render(Path::new("lake"), &plan(vec![], None), &opts);
        assert!(text.contains("TOTAL") && text.contains("Approximation"), "{text}");
    }

    #[test]
    fn long_context_targets_are_named_in_the_notes() {
        let mut cat = PriceCatalog::builtin();
        cat.add_toml_str(
            "lc.toml",
            "[[model]]\nname = \"long\"\nprovider = \"openai\"\ninput_per_mtok = \"1\"\noutput_per_mtok = \"2\"\n\
             [[model.above]]\ninput_tokens = 128000\ninput_per_mtok = \"2\"\noutput_per_mtok = \"4\"\n",
        )
        .unwrap();
        let id = cat.lookup("openai", "gpt-4o", 0).unwrap().id.to_string();
        let t = Tokens { input: 1_000_000, output: 1_000_000, ..Tokens::default() };
        let usage =
            LakeUsage { rows: vec![row("gpt-4o", "default", t, Some(usd_units("12.5")), &id)], ..LakeUsage::default() };
        let s = Scenario::plan(vec![Mapping::parse("gpt-4o=long", &[], &cat, 0).unwrap()], None, &[]).unwrap();
        let r = Report::build(&cat, &usage, &s, &[], &Month::parse("1970-01").unwrap()).unwrap();
        assert_eq!(r.results[0].total.scenario, usd_units("3"), "base rates, not the >128k rates of one request");
        let notes = r.notes(&s, &[]).join("\n");
        assert!(notes.contains("openai/long prices requests above 128000 input tokens"), "{notes}");
    }

    #[test]
    fn retrieval_calls_without_a_price_in_the_scenario_are_left_out_not_free() {
        let cat = PriceCatalog::builtin();
        let id = cat.lookup("anthropic", "claude-haiku-4-5", 0).unwrap().id.to_string();
        let t = Tokens { input: 1000, output: 100, web_search: 2, ..Tokens::default() };
        let mut u = row("claude-haiku-4-5", "default", t, Some(usd_units("0.0215")), &id);
        u.provider = "anthropic".into();
        let usage = LakeUsage { rows: vec![u], ..LakeUsage::default() };
        let s = Scenario::plan(vec![Mapping::parse("claude-haiku-4-5=gpt-4o-mini", &[], &cat, 0).unwrap()], None, &[])
            .unwrap();
        let r = Report::build(&cat, &usage, &s, &[], &Month::parse("1970-01").unwrap()).unwrap();
        let res = &r.results[0];
        assert_eq!((res.total.baseline, res.total.left_out), (0, 10));
        let (why, (n, cost)) = res.left_out.iter().next().unwrap();
        assert!(why.describe().contains("retrieval"), "{}", why.describe());
        assert_eq!((*n, *cost), (10, usd_units("0.0215")));
    }
}
