//! `aifinops forecast`: month-end projection per owner from the lake (see aifinops_aggregate::forecast).
//!
//! Reads the daily cost per owner (`window=1d` rollups, or the `1h` rollups summed per day when the lake has
//! no daily ones), forecasts the rest of the month, compares the projection with the month budgets of the
//! configuration, finds the peak hours of the week (`1h` rollups of the last 4 weeks), prints a table, and
//! writes the forecast rows to `<lake>/forecasts/date=<as_of>/forecast.parquet` (the `forecasts` table of
//! `aifinops query`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aifinops_aggregate::forecast::{self as model, Forecast, LEVEL};
use aifinops_aggregate::{BudgetConfig, Period};
use aifinops_schemas::money::{COST_PRECISION, COST_SCALE, cost_type, format_usd_rounded, parse_usd};
use anyhow::Context;
use chrono::{Datelike, Duration, NaiveDate};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Decimal128Array, Float64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Field, Int64Type, Schema, SchemaRef};
use datafusion::prelude::SessionContext;
use globset::{Glob, GlobMatcher};

use crate::config::Config;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Lake directory.
    #[arg(long)]
    pub lake: PathBuf,
    /// Only this owner (default: every owner and the total).
    #[arg(long)]
    pub owner: Option<String>,
    /// Month to project (YYYY-MM); default the month of the lake's last complete day.
    #[arg(long)]
    pub month: Option<String>,
    /// Configuration file, for the month budgets to compare against.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
}

/// The owner value of the rows about the total across owners.
pub const TOTAL: &str = "*";
/// Days ahead written to the forecasts table at least, so that every as-of day (also the last of a month)
/// leaves rows to backtest.
const MIN_HORIZON_DAYS: i64 = 7;
/// How far after the as-of month `--month` may be.
const MAX_MONTHS_AHEAD: i64 = 12;
/// Weeks of `1h` rollups the peak hours are taken from.
const PEAK_WEEKS: i64 = 4;
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// The Arrow schema of `<lake>/forecasts/date=<as_of>/forecast.parquet` (the partition `date` is added by
/// the reader).
pub fn forecast_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("as_of", DataType::Date32, false),
                Field::new("owner", DataType::Utf8, false),
                Field::new("day", DataType::Date32, false),
                Field::new("method", DataType::Utf8, false),
                Field::new("point_usd", cost_type(), false),
                Field::new("lower_usd", cost_type(), false),
                Field::new("upper_usd", cost_type(), false),
                Field::new("level", DataType::Float64, false),
            ]))
        })
        .clone()
}

/// Cost of one scope (owner, workflow, environment) on one day, in cost units (10^-18 USD).
struct DayRow {
    owner: String,
    workflow: String,
    environment: String,
    day: NaiveDate,
    cost: i128,
}

/// Hourly cost of one owner.
struct HourRow {
    owner: String,
    hour_ms: i64,
    cost: i128,
}

/// What the lake holds for forecasting.
struct LakeSpend {
    /// `1d` or `1h`: the window the daily series were built from.
    source: &'static str,
    /// The last complete day.
    as_of: NaiveDate,
    days: Vec<DayRow>,
    /// `1h` rows of the peak-hour range, empty when the lake has no hourly rollups.
    hours: Vec<HourRow>,
    /// First hour of the peak-hour range (inclusive) and the end (exclusive), epoch ms.
    hour_range: (i64, i64),
}

/// A daily series and its forecast from the day after `as_of`.
struct Projection {
    history_days: usize,
    forecast: Forecast,
    /// Month-to-date actual (days of the month up to `as_of`), cost units.
    mtd: i128,
    /// Forecast of the month's remaining days, USD.
    rest: (f64, f64, f64),
    /// Daily actuals of the month up to `as_of` then forecast points: (day, USD), for breach dates.
    month_path: Vec<(NaiveDate, f64, f64)>,
}

impl Projection {
    fn total(&self) -> (f64, f64, f64) {
        let m = usd(self.mtd);
        (m + self.rest.0, m + self.rest.1, m + self.rest.2)
    }
}

fn usd(units: i128) -> f64 {
    units as f64 / 1e18
}

/// USD to cost units, rounded to the micro-dollar (the model's precision is far coarser than 10^-18).
fn units(usd: f64) -> i128 {
    (usd * 1e6).round() as i128 * 1_000_000_000_000
}

fn fmt_usd(v: f64) -> String {
    format_usd_rounded(units(v), 2)
}

fn epoch_day(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
}

fn day_of_ms(ms: i64) -> NaiveDate {
    chrono::DateTime::from_timestamp_millis(ms.div_euclid(DAY_MS) * DAY_MS).unwrap_or_default().date_naive()
}

/// First and last day of the month `YYYY-MM`.
fn parse_month(s: &str) -> anyhow::Result<(NaiveDate, NaiveDate)> {
    let first = NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d")
        .with_context(|| format!("--month {s:?} is not a month written YYYY-MM"))?;
    anyhow::ensure!((1970..=9999).contains(&first.year()), "--month {s:?}: the year is out of range");
    Ok((first, month_last(first)))
}

fn month_last(d: NaiveDate) -> NaiveDate {
    let (y, m) = if d.month() == 12 { (d.year() + 1, 1) } else { (d.year(), d.month() + 1) };
    NaiveDate::from_ymd_opt(y, m, 1).expect("first of a month") - Duration::days(1)
}

fn month_first(d: NaiveDate) -> NaiveDate {
    d.with_day(1).expect("day 1")
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    let budgets: Vec<&BudgetConfig> = cfg.budgets.iter().filter(|b| b.period == Period::Month).collect();
    let ctx = crate::query::session(&args.lake).await?;
    let spend = load(&ctx, &args.lake).await?;
    let (first, last) = match &args.month {
        Some(m) => parse_month(m)?,
        None => (month_first(spend.as_of), month_last(spend.as_of)),
    };
    anyhow::ensure!(
        last <= month_last(spend.as_of) + Duration::days(MAX_MONTHS_AHEAD * 31),
        "--month {} is more than {MAX_MONTHS_AHEAD} months after the lake's last complete day ({})",
        first.format("%Y-%m"),
        spend.as_of
    );
    let owners: BTreeSet<&str> = spend.days.iter().map(|r| r.owner.as_str()).collect();
    if let Some(o) = &args.owner
        && !owners.contains(o.as_str())
    {
        anyhow::bail!(
            "owner {o:?} has no spend in {} (owners: {})",
            args.lake.display(),
            owners.iter().copied().collect::<Vec<_>>().join(", ")
        );
    }

    // Forecast every owner and the total (the file is complete for the as-of day, whatever is printed).
    let horizon_end = month_last(spend.as_of).max(last).max(spend.as_of + Duration::days(MIN_HORIZON_DAYS));
    let horizon = (horizon_end - spend.as_of).num_days() as usize;
    let mut projections: Vec<(String, Projection)> = Vec::new();
    for o in owners.iter().copied().chain(std::iter::once(TOTAL)) {
        let series = daily_series(&spend.days, |r| o == TOTAL || r.owner == o);
        projections.push((o.to_string(), project(&series, spend.as_of, horizon, first, last)));
    }
    let path = write_forecasts(&args.lake, spend.as_of, &projections)?;

    let shown: Vec<&(String, Projection)> = projections
        .iter()
        .filter(|(o, _)| match &args.owner {
            Some(x) => o == x,
            None => true,
        })
        .collect();
    let mut out = String::new();
    render_header(&mut out, &args.lake, &spend, first, last);
    render_projections(&mut out, &shown);
    render_budgets(&mut out, &budgets, &spend, args.owner.as_deref(), horizon, first, last)?;
    render_peaks(&mut out, &spend, &shown);
    let rows = projections.len() * horizon;
    let _ = writeln!(out, "\nforecast rows: {} ({rows} rows; table `forecasts` of `aifinops query`)", path.display());
    print!("{out}");
    Ok(())
}

/// Reads the daily (and hourly) cost from the lake and finds the last complete day.
async fn load(ctx: &SessionContext, lake: &Path) -> anyhow::Result<LakeSpend> {
    let ends = collect(
        ctx,
        "SELECT \"window\" AS w, max(window_end) AS end_ms, min(window_start) AS start_ms FROM rollups \
         GROUP BY \"window\"",
    )
    .await?;
    let mut max_end: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for b in &ends {
        let (w, e, s) = (strings(b, "w")?, ints(b, "end_ms")?, ints(b, "start_ms")?);
        for i in 0..b.num_rows() {
            max_end.insert(w[i].clone(), (s[i], e[i]));
        }
    }
    let source = if max_end.contains_key("1d") {
        "1d"
    } else if max_end.contains_key("1h") {
        "1h"
    } else {
        anyhow::bail!(
            "{} has no 1d or 1h rollups to forecast from (windows found: {})",
            lake.display(),
            if max_end.is_empty() {
                "none".to_string()
            } else {
                max_end.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        );
    };
    // The last complete day: the lake's latest window end floored to a day, no later than what the source
    // window itself covers (a day's 1d window is written some time after its hours).
    let floor = |ms: i64| ms.div_euclid(DAY_MS) * DAY_MS;
    let latest = max_end.values().map(|(_, e)| *e).max().unwrap_or(0);
    let end_ms = floor(latest).min(floor(max_end[source].1));
    let as_of = day_of_ms(end_ms) - Duration::days(1);
    if end_ms <= floor(max_end[source].0) {
        anyhow::bail!(
            "{} has no complete day of {source} rollups yet (they end at {})",
            lake.display(),
            chrono::DateTime::from_timestamp_millis(max_end[source].1).unwrap_or_default()
        );
    }

    let rows = collect(
        ctx,
        &format!(
            "SELECT owner, workflow, environment, window_start AS start_ms, sum(cost_usd) AS cost FROM rollups \
             WHERE \"window\" = '{source}' GROUP BY owner, workflow, environment, window_start"
        ),
    )
    .await?;
    let mut by_day: BTreeMap<(String, String, String, NaiveDate), i128> = BTreeMap::new();
    for b in &rows {
        let (o, w, e, s, c) = (
            strings(b, "owner")?,
            strings(b, "workflow")?,
            strings(b, "environment")?,
            ints(b, "start_ms")?,
            costs(b)?,
        );
        for i in 0..b.num_rows() {
            if s[i] >= end_ms {
                continue;
            }
            *by_day.entry((o[i].clone(), w[i].clone(), e[i].clone(), day_of_ms(s[i]))).or_default() += c[i];
        }
    }
    let days = by_day
        .into_iter()
        .map(|((owner, workflow, environment, day), cost)| DayRow { owner, workflow, environment, day, cost })
        .collect();

    let mut hours = Vec::new();
    let mut hour_range = (end_ms, end_ms);
    if let Some((first_hour, _)) = max_end.get("1h") {
        let from = (end_ms - PEAK_WEEKS * 7 * DAY_MS).max(floor(*first_hour));
        hour_range = (from, end_ms);
        let rows = collect(
            ctx,
            "SELECT owner, window_start AS start_ms, sum(cost_usd) AS cost FROM rollups WHERE \"window\" = '1h' \
             GROUP BY owner, window_start",
        )
        .await?;
        for b in &rows {
            let (o, s, c) = (strings(b, "owner")?, ints(b, "start_ms")?, costs(b)?);
            for i in 0..b.num_rows() {
                if (from..end_ms).contains(&s[i]) {
                    hours.push(HourRow { owner: o[i].clone(), hour_ms: s[i], cost: c[i] });
                }
            }
        }
    }
    Ok(LakeSpend { source, as_of, days, hours, hour_range })
}

async fn collect(ctx: &SessionContext, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let df = ctx.sql(sql).await.with_context(|| format!("planning {sql:?}"))?;
    df.collect().await.with_context(|| format!("running {sql:?}"))
}

fn column(b: &RecordBatch, name: &str, to: &DataType) -> anyhow::Result<ArrayRef> {
    let c = b.column_by_name(name).with_context(|| format!("query result has no column {name}"))?;
    cast(c, to).with_context(|| format!("column {name} ({}) as {to}", c.data_type()))
}

fn strings(b: &RecordBatch, name: &str) -> anyhow::Result<Vec<String>> {
    let a = column(b, name, &DataType::Utf8)?;
    Ok(a.as_string::<i32>().iter().map(|v| v.unwrap_or_default().to_string()).collect())
}

/// Timestamps as epoch ms (the rollup timestamps are milliseconds), never null.
fn ints(b: &RecordBatch, name: &str) -> anyhow::Result<Vec<i64>> {
    let a = column(b, name, &DataType::Int64)?;
    let a = a.as_primitive::<Int64Type>();
    anyhow::ensure!(a.null_count() == 0, "column {name} has nulls");
    Ok(a.values().to_vec())
}

/// The `cost` column in cost units; null (only unpriced calls) is no cost.
fn costs(b: &RecordBatch) -> anyhow::Result<Vec<i128>> {
    let a = column(b, "cost", &cost_type())?;
    Ok(a.as_primitive::<Decimal128Type>().iter().map(|v| v.unwrap_or(0)).collect())
}

/// Daily cost of the rows `keep` accepts, from the first day they have a row to the last, zeros filled.
fn daily_series(rows: &[DayRow], keep: impl Fn(&DayRow) -> bool) -> BTreeMap<NaiveDate, i128> {
    let mut s: BTreeMap<NaiveDate, i128> = BTreeMap::new();
    for r in rows.iter().filter(|r| keep(r)) {
        *s.entry(r.day).or_default() += r.cost;
    }
    if let (Some(first), Some(last)) = (s.keys().next().copied(), s.keys().next_back().copied()) {
        let mut d = first;
        while d < last {
            s.entry(d).or_default();
            d += Duration::days(1);
        }
    }
    s
}

/// Forecasts `horizon` days after `as_of` from `series` (days up to `as_of`) and sums the month
/// [`first`, `last`]: actuals up to `as_of`, forecast after.
fn project(
    series: &BTreeMap<NaiveDate, i128>,
    as_of: NaiveDate,
    horizon: usize,
    first: NaiveDate,
    last: NaiveDate,
) -> Projection {
    // the history runs to as_of even when the scope's last spend was earlier (no spend since is zero)
    let mut history: Vec<f64> = Vec::new();
    if let Some(start) = series.keys().next().copied() {
        let mut d = start;
        while d <= as_of {
            history.push(usd(series.get(&d).copied().unwrap_or(0)));
            d += Duration::days(1);
        }
    }
    let forecast = model::forecast_daily(&history, horizon, LEVEL);
    let mtd: i128 = if first <= as_of { series.range(first..=last.min(as_of)).map(|(_, c)| *c).sum() } else { 0 };
    let mut rest = (0.0, 0.0, 0.0);
    let mut month_path = Vec::new();
    let mut d = first;
    while d <= last {
        if d <= as_of {
            let v = usd(series.get(&d).copied().unwrap_or(0));
            month_path.push((d, v, v));
        } else {
            let i = (d - as_of).num_days() as usize - 1;
            if let (Some(p), Some(l), Some(u)) = (forecast.point.get(i), forecast.lower.get(i), forecast.upper.get(i)) {
                rest = (rest.0 + p, rest.1 + l, rest.2 + u);
                month_path.push((d, *p, *u));
            }
        }
        d += Duration::days(1);
    }
    Projection { history_days: history.len(), forecast, mtd, rest, month_path }
}

/// The first day the cumulative month spend reaches `limit` (USD): on the point path, and on the upper one.
fn breach_days(path: &[(NaiveDate, f64, f64)], limit: f64) -> (Option<NaiveDate>, Option<NaiveDate>) {
    let (mut point, mut upper) = (0.0, 0.0);
    let (mut at_point, mut at_upper) = (None, None);
    for (d, p, u) in path {
        point += p;
        upper += u;
        if at_point.is_none() && point >= limit {
            at_point = Some(*d);
        }
        if at_upper.is_none() && upper >= limit {
            at_upper = Some(*d);
        }
    }
    (at_point, at_upper)
}

/// Writes the forecast rows of every owner and the total, replacing the file of the same as-of day.
fn write_forecasts(lake: &Path, as_of: NaiveDate, projections: &[(String, Projection)]) -> anyhow::Result<PathBuf> {
    let (mut owners, mut days, mut methods, mut points, mut lowers, mut uppers) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (owner, p) in projections {
        let f = &p.forecast;
        for i in 0..f.point.len() {
            owners.push(owner.as_str());
            days.push(epoch_day(as_of + Duration::days(i as i64 + 1)));
            methods.push(f.method.as_str());
            points.push(units(f.point[i]));
            lowers.push(units(f.lower[i]));
            uppers.push(units(f.upper[i]));
        }
    }
    let n = owners.len();
    let dec = |v: Vec<i128>| -> anyhow::Result<ArrayRef> {
        Ok(Arc::new(
            Decimal128Array::from(v)
                .with_precision_and_scale(COST_PRECISION, COST_SCALE)
                .context("forecast amounts as Decimal128(38, 18)")?,
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Date32Array::from(vec![epoch_day(as_of); n])),
        Arc::new(StringArray::from(owners)),
        Arc::new(Date32Array::from(days)),
        Arc::new(StringArray::from(methods)),
        dec(points)?,
        dec(lowers)?,
        dec(uppers)?,
        Arc::new(Float64Array::from(vec![LEVEL; n])),
    ];
    let batch = RecordBatch::try_new(forecast_schema(), columns).context("building the forecast rows")?;
    let dir = lake.join("forecasts").join(format!("date={as_of}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("forecast.parquet");
    // not *.parquet, so that a reader listing the directory never sees a half-written file
    let tmp = dir.join(format!(".forecast.{}.tmp", std::process::id()));
    aifinops_sink::parquet_io::write_parquet(&tmp, &[batch]).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))?;
    Ok(path)
}

fn render_header(out: &mut String, lake: &Path, spend: &LakeSpend, first: NaiveDate, last: NaiveDate) {
    let remaining = if last > spend.as_of { (last - spend.as_of.max(first - Duration::days(1))).num_days() } else { 0 };
    let _ = writeln!(
        out,
        "Forecast for month {} from {}, as of {} (the last complete day): {} of {} days to forecast",
        first.format("%Y-%m"),
        lake.display(),
        spend.as_of,
        remaining,
        (last - first).num_days() + 1
    );
    let _ = writeln!(
        out,
        "Daily series from window={} rollups. Interval {:.0} %; the month's interval adds up the daily bounds \
         (conservative: wider than the interval of the sum).",
        spend.source,
        LEVEL * 100.0
    );
}

fn render_projections(out: &mut String, shown: &[&(String, Projection)]) {
    let _ = writeln!(
        out,
        "\n{:<24} {:>7} {:<9} {:>14} {:>14} {:>14} {:>27}",
        "owner", "history", "method", "month-to-date", "forecast-rest", "projection", "80% interval"
    );
    for (owner, p) in shown {
        let (point, lower, upper) = p.total();
        let _ = writeln!(
            out,
            "{:<24} {:>6}d {:<9} {:>14} {:>14} {:>14} {:>27}",
            owner,
            p.history_days,
            p.forecast.method.as_str(),
            format_usd_rounded(p.mtd, 2),
            fmt_usd(p.rest.0),
            fmt_usd(point),
            format!("{} .. {}", fmt_usd(lower), fmt_usd(upper)),
        );
    }
}

fn glob(budget: &str, field: &str, pat: &str) -> anyhow::Result<GlobMatcher> {
    Ok(Glob::new(pat).with_context(|| format!("budget {budget:?}: {field} pattern {pat:?}"))?.compile_matcher())
}

/// Month budgets: the projection of each budget's own scope (its owner, workflow and environment globs).
fn render_budgets(
    out: &mut String,
    budgets: &[&BudgetConfig],
    spend: &LakeSpend,
    owner: Option<&str>,
    horizon: usize,
    first: NaiveDate,
    last: NaiveDate,
) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    for b in budgets {
        let (o, w, e) = (
            glob(&b.name, "owner", &b.owner)?,
            glob(&b.name, "workflow", &b.workflow)?,
            glob(&b.name, "environment", &b.environment)?,
        );
        if let Some(x) = owner
            && !o.is_match(x)
        {
            continue;
        }
        let limit = parse_usd("limit_usd", &b.limit_usd).with_context(|| format!("budget {:?}", b.name))?;
        let series = daily_series(&spend.days, |r| {
            o.is_match(&r.owner) && w.is_match(&r.workflow) && e.is_match(&r.environment)
        });
        let p = project(&series, spend.as_of, horizon, first, last);
        let (point, lower, upper) = p.total();
        let limit_usd = usd(limit);
        let (at_point, at_upper) = breach_days(&p.month_path, limit_usd);
        let breach = match (at_point, at_upper) {
            (Some(d), _) if d <= spend.as_of => format!("breached on {d}"),
            (Some(d), _) => format!("projected breach on {d}"),
            (None, Some(d)) => format!("no breach projected (upper bound reaches it on {d})"),
            (None, None) => "no breach projected".to_string(),
        };
        let mut scope = format!("owner={}", b.owner);
        if b.workflow != "*" {
            let _ = write!(scope, " workflow={}", b.workflow);
        }
        if b.environment != "*" {
            let _ = write!(scope, " environment={}", b.environment);
        }
        lines.push(format!(
            "budget {} ({scope}): limit {}, projected {} = {:.1} % of limit (80% interval {} .. {}, {}); {}",
            b.name,
            format_usd_rounded(limit, 2),
            fmt_usd(point),
            100.0 * point / limit_usd,
            fmt_usd(lower),
            fmt_usd(upper),
            p.forecast.method.as_str(),
            breach
        ));
    }
    let _ = writeln!(out, "\nMonth budgets:");
    if lines.is_empty() {
        let _ =
            writeln!(out, "  none configured for this scope (give --config with a [[budget]] of period = \"month\")");
    }
    for l in lines {
        let _ = writeln!(out, "  {l}");
    }
    Ok(())
}

fn render_peaks(out: &mut String, spend: &LakeSpend, shown: &[&(String, Projection)]) {
    let (from, to) = spend.hour_range;
    if from >= to {
        let _ = writeln!(out, "\nPeak hours of the week: no 1h rollups in the lake.");
        return;
    }
    let _ = writeln!(
        out,
        "\nPeak hours of the week (mean USD per hour, 1h rollups {} .. {}):",
        day_of_ms(from),
        day_of_ms(to) - Duration::days(1)
    );
    for (owner, _) in shown {
        let mut by_hour: BTreeMap<i64, i128> = (0..(to - from) / HOUR_MS).map(|h| (from + h * HOUR_MS, 0)).collect();
        for r in spend.hours.iter().filter(|r| owner == TOTAL || r.owner == *owner) {
            *by_hour.entry(r.hour_ms).or_default() += r.cost;
        }
        let hourly: Vec<(i64, f64)> = by_hour.into_iter().map(|(h, c)| (h, usd(c))).collect();
        let peaks = model::peak_hours(&model::hour_of_week_profile(&hourly), 3);
        let text = if peaks.is_empty() {
            "no spend".to_string()
        } else {
            peaks
                .iter()
                .map(|(slot, v)| format!("{} {}", model::hour_label(*slot), fmt_usd(*v)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(out, "  {owner:<24} {text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn ms_of_day(d: NaiveDate) -> i64 {
        d.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis()
    }

    #[test]
    fn months_and_days() {
        assert_eq!(parse_month("2024-02").unwrap(), (d("2024-02-01"), d("2024-02-29")));
        assert_eq!(parse_month("2025-12").unwrap(), (d("2025-12-01"), d("2025-12-31")));
        assert!(parse_month("2025-13").is_err());
        assert!(parse_month("december").is_err());
        assert!(parse_month("0000-01").is_err());
        assert_eq!(epoch_day(d("1970-01-02")), 1);
        assert_eq!(day_of_ms(ms_of_day(d("2025-12-21")) + 5 * HOUR_MS), d("2025-12-21"));
        assert_eq!(units(1.005), 1_005_000_000_000_000_000);
    }

    fn row(owner: &str, day: &str, usd: i128) -> DayRow {
        DayRow {
            owner: owner.into(),
            workflow: "w".into(),
            environment: "prod".into(),
            day: d(day),
            cost: usd * aifinops_schemas::money::ONE_USD,
        }
    }

    #[test]
    fn projection_adds_month_to_date_and_the_forecast_of_the_rest() {
        // 10 days of $10 for "a" (from Nov 25), a gap day for "b"
        let mut rows: Vec<DayRow> = (25..=30).map(|i| row("a", &format!("2025-11-{i}"), 10)).collect();
        rows.extend((1..=4).map(|i| row("a", &format!("2025-12-0{i}"), 10)));
        rows.push(row("b", "2025-12-01", 5));
        rows.push(row("b", "2025-12-03", 5));
        let s = daily_series(&rows, |r| r.owner == "a");
        let p = project(&s, d("2025-12-04"), 27, d("2025-12-01"), d("2025-12-31"));
        assert_eq!(p.history_days, 10);
        assert_eq!(p.mtd, 40 * aifinops_schemas::money::ONE_USD);
        assert!((p.rest.0 - 270.0).abs() < 1e-9, "{:?}", p.rest);
        assert_eq!(p.total().0, 310.0);
        assert_eq!(p.month_path.len(), 31);
        let b = daily_series(&rows, |r| r.owner == "b");
        assert_eq!(b.len(), 3, "the gap day is a zero: {b:?}");
        // the history of b runs to as_of (Dec 4 had no spend)
        assert_eq!(project(&b, d("2025-12-04"), 27, d("2025-12-01"), d("2025-12-31")).history_days, 4);
        // a past month is all actuals, a future one all forecast
        let nov = project(&s, d("2025-12-04"), 27, d("2025-11-01"), d("2025-11-30"));
        assert_eq!((nov.mtd, nov.rest.0), (60 * aifinops_schemas::money::ONE_USD, 0.0));
        let jan = project(&s, d("2025-12-04"), 58, d("2026-01-01"), d("2026-01-31"));
        assert_eq!(jan.mtd, 0);
        assert!((jan.rest.0 - 310.0).abs() < 1e-9, "{:?}", jan.rest);
        assert_eq!(jan.month_path.len(), 31);
    }

    #[test]
    fn breach_days_on_the_point_and_upper_paths() {
        let path = [(d("2025-12-01"), 40.0, 40.0), (d("2025-12-02"), 30.0, 60.0), (d("2025-12-03"), 30.0, 30.0)];
        assert_eq!(breach_days(&path, 100.0), (Some(d("2025-12-03")), Some(d("2025-12-02"))));
        assert_eq!(breach_days(&path, 40.0), (Some(d("2025-12-01")), Some(d("2025-12-01"))));
        assert_eq!(breach_days(&path, 131.0), (None, None));
    }
}
