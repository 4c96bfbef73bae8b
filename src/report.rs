//! `aifinops report`: one self-contained HTML file about a month of the lake, for the people who look at
//! spend: spend per owner over time (stacked, spikes marked), top models and identities, token mix per
//! owner, month to date against the forecast with its 80 % interval and the budget, unattributed and
//! unpriced spend, retry cost. Charts are inline SVG (`crate::svg`); the file needs no network.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use aifinops_aggregate::Period;
use aifinops_aggregate::forecast::{LEVEL, forecast_daily};
use aifinops_schemas::money::{format_usd_rounded, parse_usd};
use anyhow::Context;
use datafusion::prelude::SessionContext;

use crate::config::Config;
use crate::lake_read::{DAY_MS, HOUR_MS, collect, costs, ints, month_range, rfc3339, strings, window_extent};
use crate::svg::{self, Marker, esc};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Lake directory.
    #[arg(long)]
    pub lake: PathBuf,
    /// Output HTML file.
    #[arg(long, default_value = "aifinops-report.html")]
    pub out: PathBuf,
    /// Month (YYYY-MM, UTC); default the month of the lake's latest data.
    #[arg(long)]
    pub month: Option<String>,
    /// Configuration file, for the month budgets drawn on the forecast chart.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
}

/// Owners shown as their own layer; the rest are summed as "other owners".
const TOP_OWNERS: usize = 8;
const TOP_ITEMS: usize = 10;

fn usd(units: i128) -> f64 {
    units as f64 / 1e18
}

fn cost_of(v: Option<i128>) -> i128 {
    v.unwrap_or(0)
}

/// What the report shows, read from the lake.
struct Data {
    month: String,
    start: i64,
    end: i64,
    /// Spend series granularity (1h, or 1d when the lake has no hourly rollups).
    slot_ms: i64,
    slots: usize,
    owners: Vec<(String, Vec<f64>)>,
    owner_totals: Vec<(String, i128)>,
    models: Vec<(String, i128, i64, i64)>,
    identities: Vec<(String, String, i128, i64)>,
    mix: Vec<(String, Vec<f64>)>,
    spikes: Vec<Spike>,
    total: i128,
    unattributed: i128,
    unattributed_ids: Vec<(String, i128, i64)>,
    unpriced: Vec<(String, i64, i64)>,
    retry: Vec<(String, String, i128, i128, i128)>,
    /// Daily total cost of every complete day up to `as_of` (USD), oldest first, with the first day.
    history: Vec<f64>,
    history_start: i64,
    /// Last complete day (start, epoch ms).
    as_of: Option<i64>,
}

struct Spike {
    owner: String,
    start_ms: i64,
    actual: String,
    expected: String,
    summary: String,
    recovered: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    let html = render(&args, &cfg).await?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, &html).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{}: report ({} KiB); open it in a browser (no network needed)", args.out.display(), html.len() / 1024);
    Ok(())
}

pub async fn render(args: &Args, cfg: &Config) -> anyhow::Result<String> {
    let ctx = crate::query::session(&args.lake).await?;
    let data = load(&ctx, args).await?;
    Ok(html(&data, cfg))
}

async fn load(ctx: &SessionContext, args: &Args) -> anyhow::Result<Data> {
    let h = window_extent(ctx, "1h").await?;
    let d = window_extent(ctx, "1d").await?;
    let (source, slot_ms, extent) = match (h, d) {
        (Some(e), _) => ("1h", HOUR_MS, e),
        (None, Some(e)) => ("1d", DAY_MS, e),
        _ => anyhow::bail!("{} has no 1h or 1d rollups to report on", args.lake.display()),
    };
    let month = match &args.month {
        Some(m) => m.clone(),
        None => crate::lake_read::month_of(extent.1 - 1),
    };
    let (start, end) = month_range(&month)?;
    let in_month =
        format!("\"window\" = '{source}' AND date >= '{}' AND date < '{}'", &rfc3339(start)[..10], &rfc3339(end)[..10]);
    // the series runs to the end of the data in the month (not to the month's end)
    let series_end = end.min(extent.1.max(start + slot_ms));
    let slots = ((series_end - start) / slot_ms).max(1) as usize;

    // spend per owner per slot
    let rows = collect(
        ctx,
        &format!(
            "SELECT window_start AS s, owner, sum(cost_usd) AS cost FROM rollups WHERE {in_month} GROUP BY window_start, owner"
        ),
    )
    .await?;
    let mut per_owner: BTreeMap<String, (i128, Vec<f64>)> = BTreeMap::new();
    let mut total: i128 = 0;
    for b in &rows {
        let (s, o, c) = (ints(b, "s")?, strings(b, "owner")?, costs(b, "cost")?);
        for i in 0..b.num_rows() {
            if s[i] < start || s[i] >= end {
                continue;
            }
            let slot = ((s[i] - start) / slot_ms) as usize;
            let e = per_owner.entry(o[i].clone()).or_insert_with(|| (0, vec![0.0; slots]));
            e.0 += cost_of(c[i]);
            total += cost_of(c[i]);
            if let Some(v) = e.1.get_mut(slot) {
                *v += usd(cost_of(c[i]));
            }
        }
    }
    anyhow::ensure!(
        !per_owner.is_empty(),
        "{} has no usage in {month} ({source} rollups from {} to {})",
        args.lake.display(),
        rfc3339(extent.0),
        rfc3339(extent.1)
    );
    let mut owner_totals: Vec<(String, i128)> = per_owner.iter().map(|(o, (c, _))| (o.clone(), *c)).collect();
    owner_totals.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut owners: Vec<(String, Vec<f64>)> = Vec::new();
    let mut other = vec![0.0; slots];
    for (k, (o, _)) in owner_totals.iter().enumerate() {
        let v = &per_owner[o].1;
        if k < TOP_OWNERS {
            owners.push((o.clone(), v.clone()));
        } else {
            other.iter_mut().zip(v).for_each(|(a, b)| *a += b);
        }
    }
    if owner_totals.len() > TOP_OWNERS {
        owners.push(("other owners".into(), other));
    }

    let models = collect(
        ctx,
        &format!(
            "SELECT provider, model, sum(cost_usd) AS cost, sum(requests) AS requests, \
             sum(unpriced_requests) AS unpriced FROM rollups WHERE {in_month} \
             GROUP BY provider, model ORDER BY cost DESC NULLS LAST, requests DESC LIMIT {TOP_ITEMS}"
        ),
    )
    .await?;
    let mut top_models = Vec::new();
    for b in &models {
        let (p, m, c, r) = (strings(b, "provider")?, strings(b, "model")?, costs(b, "cost")?, ints(b, "requests")?);
        let u = ints(b, "unpriced")?;
        for i in 0..b.num_rows() {
            top_models.push((format!("{}/{}", p[i], m[i]), cost_of(c[i]), r[i], u[i]));
        }
    }
    let ids = collect(
        ctx,
        &format!(
            "SELECT identity, owner, sum(cost_usd) AS cost, sum(requests) AS requests FROM rollups WHERE {in_month} \
             GROUP BY identity, owner ORDER BY cost DESC NULLS LAST LIMIT {TOP_ITEMS}"
        ),
    )
    .await?;
    let mut identities = Vec::new();
    for b in &ids {
        let (id, o, c, r) = (strings(b, "identity")?, strings(b, "owner")?, costs(b, "cost")?, ints(b, "requests")?);
        for i in 0..b.num_rows() {
            identities.push((id[i].clone(), o[i].clone(), cost_of(c[i]), r[i]));
        }
    }

    let mixq = collect(
        ctx,
        &format!(
            "SELECT owner, sum(input_tokens) AS i, sum(cache_read_tokens) AS cr, sum(cache_write_tokens) AS cw, \
             sum(output_tokens) AS o, sum(reasoning_tokens) AS r FROM rollups WHERE {in_month} GROUP BY owner ORDER BY owner"
        ),
    )
    .await?;
    let mut mix = Vec::new();
    for b in &mixq {
        let (o, i_, cr, cw, out, r) =
            (strings(b, "owner")?, ints(b, "i")?, ints(b, "cr")?, ints(b, "cw")?, ints(b, "o")?, ints(b, "r")?);
        for k in 0..b.num_rows() {
            let uncached = (i_[k] - cr[k] - cw[k]).max(0) as f64;
            mix.push((
                o[k].clone(),
                vec![uncached, cr[k] as f64, cw[k] as f64, (out[k] - r[k]).max(0) as f64, r[k] as f64],
            ));
        }
    }

    let alerts = collect(
        ctx,
        "SELECT type, owner, data FROM alerts WHERE type IN ('aifinops.spend.spike', 'aifinops.spend.recovered') ORDER BY time",
    )
    .await?;
    let mut spikes: Vec<Spike> = Vec::new();
    for b in &alerts {
        let (t, o, d) = (strings(b, "type")?, strings(b, "owner")?, strings(b, "data")?);
        for i in 0..b.num_rows() {
            let v: serde_json::Value = serde_json::from_str(&d[i]).unwrap_or_default();
            if t[i] == "aifinops.spend.recovered" {
                if let Some(s) = spikes.iter_mut().rev().find(|s| s.owner == o[i] && !s.recovered) {
                    s.recovered = true;
                }
                continue;
            }
            let Some(ws) = v["window_start"].as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()) else {
                continue;
            };
            let start_ms = ws.timestamp_millis();
            if start_ms < start || start_ms >= end {
                continue;
            }
            spikes.push(Spike {
                owner: if o[i].is_empty() { v["owner"].as_str().unwrap_or_default().to_string() } else { o[i].clone() },
                start_ms,
                actual: v["actual_usd"].as_str().unwrap_or_default().to_string(),
                expected: v["expected_usd"].as_str().unwrap_or_default().to_string(),
                summary: v["summary"].as_str().unwrap_or_default().to_string(),
                recovered: false,
            });
        }
    }

    let un = collect(
        ctx,
        &format!(
            "SELECT identity, sum(cost_usd) AS cost, sum(requests) AS requests FROM rollups WHERE {in_month} \
             AND owner = 'unattributed' GROUP BY identity ORDER BY cost DESC NULLS LAST LIMIT {TOP_ITEMS}"
        ),
    )
    .await?;
    let mut unattributed_ids = Vec::new();
    for b in &un {
        let (id, c, r) = (strings(b, "identity")?, costs(b, "cost")?, ints(b, "requests")?);
        for i in 0..b.num_rows() {
            unattributed_ids.push((id[i].clone(), cost_of(c[i]), r[i]));
        }
    }
    let unattributed = owner_totals.iter().find(|(o, _)| o == "unattributed").map(|x| x.1).unwrap_or(0);
    let up = collect(
        ctx,
        &format!(
            "SELECT provider, model, sum(unpriced_requests) AS n, sum(input_tokens + output_tokens) AS tokens \
             FROM rollups WHERE {in_month} GROUP BY provider, model HAVING sum(unpriced_requests) > 0 ORDER BY n DESC"
        ),
    )
    .await?;
    let mut unpriced = Vec::new();
    for b in &up {
        let (p, m, n, t) = (strings(b, "provider")?, strings(b, "model")?, ints(b, "n")?, ints(b, "tokens")?);
        for i in 0..b.num_rows() {
            unpriced.push((format!("{}/{}", p[i], m[i]), n[i], t[i]));
        }
    }
    let rq = collect(
        ctx,
        &format!(
            "SELECT owner, workflow, sum(retry_cost_usd) AS retry, sum(failed_cost_usd) AS failed, sum(cost_usd) AS cost \
             FROM rollups WHERE {in_month} GROUP BY owner, workflow \
             HAVING sum(retry_cost_usd) > 0 OR sum(failed_cost_usd) > 0 ORDER BY retry DESC NULLS LAST LIMIT {TOP_ITEMS}"
        ),
    )
    .await?;
    let mut retry = Vec::new();
    for b in &rq {
        let (o, w, r, f, c) =
            (strings(b, "owner")?, strings(b, "workflow")?, costs(b, "retry")?, costs(b, "failed")?, costs(b, "cost")?);
        for i in 0..b.num_rows() {
            retry.push((o[i].clone(), w[i].clone(), cost_of(r[i]), cost_of(f[i]), cost_of(c[i])));
        }
    }

    // daily totals of every complete day (the forecast's history), as `aifinops forecast` reads them
    let daily_source = if d.is_some() { "1d" } else { source };
    let dq = collect(
        ctx,
        &format!(
            "SELECT window_start AS s, sum(cost_usd) AS cost FROM rollups WHERE \"window\" = '{daily_source}' GROUP BY window_start"
        ),
    )
    .await?;
    let mut days: BTreeMap<i64, i128> = BTreeMap::new();
    for b in &dq {
        let (s, c) = (ints(b, "s")?, costs(b, "cost")?);
        for i in 0..b.num_rows() {
            *days.entry(s[i].div_euclid(DAY_MS) * DAY_MS).or_default() += cost_of(c[i]);
        }
    }
    let daily_end = window_extent(ctx, daily_source).await?.map(|e| e.1).unwrap_or(extent.1);
    let complete_end = (extent.1.min(daily_end)).div_euclid(DAY_MS) * DAY_MS;
    let as_of = (complete_end > days.keys().next().copied().unwrap_or(i64::MAX)).then_some(complete_end - DAY_MS);
    let history_start = days.keys().next().copied().unwrap_or(start);
    let mut history = Vec::new();
    if let Some(a) = as_of {
        let mut t = history_start;
        while t <= a {
            history.push(usd(days.get(&t).copied().unwrap_or(0)));
            t += DAY_MS;
        }
    }
    Ok(Data {
        month,
        start,
        end,
        slot_ms,
        slots,
        owners,
        owner_totals,
        models: top_models,
        identities,
        mix,
        spikes,
        total,
        unattributed,
        unattributed_ids,
        unpriced,
        retry,
        history,
        history_start,
        as_of,
    })
}

/// Month budgets of the configuration that cover every owner (drawn against the total).
fn month_budgets(cfg: &Config) -> Vec<(String, f64)> {
    cfg.budgets
        .iter()
        .filter(|b| b.period == Period::Month && b.owner == "*" && b.workflow == "*" && b.environment == "*")
        .filter_map(|b| parse_usd("limit_usd", &b.limit_usd).ok().map(|l| (b.name.clone(), usd(l))))
        .collect()
}

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1000px;color:#222;background:#fff}
h1{font-size:24px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-top:0}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:150px}.card b{display:block;font-size:20px}
.card span{color:#666;font-size:12px}.card.warn b{color:#d62728}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border-bottom:1px solid #eee;padding:4px 10px;text-align:left}
td.n,th.n{text-align:right}.legend{font-size:12px;margin:4px 0 12px 70px}.legend span{margin-right:14px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
svg.chart{display:block;max-width:100%;height:auto}.note{color:#666;font-size:12px}
"#;

/// Marks each chart with the size it rendered at (`data-rendered="W×H"`), so a headless browser's DOM dump
/// shows the charts were laid out; nothing is fetched.
const SCRIPT: &str = r#"
document.querySelectorAll('svg.chart').forEach(function(s){var r=s.getBoundingClientRect();var n=s.querySelectorAll('path,rect,circle,line').length;s.setAttribute('data-rendered',Math.round(r.width)+'x'+Math.round(r.height)+':'+n);});
document.body.setAttribute('data-charts',document.querySelectorAll('svg.chart[data-rendered]').length);
"#;

fn html(d: &Data, cfg: &Config) -> String {
    let mut h = String::new();
    let budgets = month_budgets(cfg);
    let fc = forecast(d);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>aifinops report {m}</title><style>{STYLE}</style></head><body>",
        m = esc(&d.month)
    );
    let _ = write!(
        h,
        "<h1>AI spend report, {}</h1><p class=\"sub\">From the aifinops lake; all times UTC. Costs are estimates priced from gateway usage logs.</p>",
        esc(&d.month)
    );
    // headline figures
    let card = |h: &mut String, label: &str, value: String, warn: bool| {
        let _ = write!(
            h,
            "<div class=\"card{}\"><b>{}</b><span>{}</span></div>",
            if warn { " warn" } else { "" },
            esc(&value),
            esc(label)
        );
    };
    h.push_str("<div class=\"cards\">");
    card(&mut h, "spend this month", format!("${}", format_usd_rounded(d.total, 2)), false);
    if let Some(f) = &fc {
        card(
            &mut h,
            &format!("projected month end (80 %: {} to {})", svg::money(f.month_lower), svg::money(f.month_upper)),
            svg::money(f.month_point),
            budgets.iter().any(|b| f.month_point >= b.1),
        );
    }
    for (name, b) in &budgets {
        card(&mut h, &format!("budget {name}"), svg::money(*b), false);
    }
    card(&mut h, "unattributed spend", format!("${}", format_usd_rounded(d.unattributed, 2)), d.unattributed > 0);
    let unpriced_calls: i64 = d.unpriced.iter().map(|u| u.1).sum();
    card(&mut h, "unpriced calls (cost unknown)", unpriced_calls.to_string(), unpriced_calls > 0);
    let retry_cost: i128 = d.retry.iter().map(|r| r.2).sum();
    card(&mut h, "retry cost", format!("${}", format_usd_rounded(retry_cost, 2)), false);
    card(&mut h, "spend spikes", d.spikes.len().to_string(), !d.spikes.is_empty());
    h.push_str("</div>");

    // spend per owner over time, spikes marked
    let slot_label = if d.slot_ms == HOUR_MS { "hour" } else { "day" };
    let _ = write!(h, "<h2>Spend per owner per {slot_label}</h2>");
    let mut x_labels = Vec::new();
    let day_slots = (DAY_MS / d.slot_ms) as usize;
    let every = (d.slots / day_slots.max(1) / 10).max(1) * day_slots.max(1);
    for s in (0..d.slots).step_by(every.max(1)) {
        let t = d.start + s as i64 * d.slot_ms;
        x_labels.push((s, chrono::DateTime::from_timestamp_millis(t).unwrap_or_default().format("%b %d").to_string()));
    }
    let markers: Vec<Marker> = d
        .spikes
        .iter()
        .map(|s| Marker {
            slot: ((s.start_ms - d.start) / d.slot_ms) as usize,
            label: format!("spike: {} ${} (expected ${})", s.owner, s.actual, s.expected),
            class: "spike-marker",
        })
        .filter(|m| m.slot < d.slots)
        .collect();
    h.push_str(&svg::stacked_area(
        "spend-per-owner",
        "Spend per owner over time (stacked), spend spikes circled",
        d.slots,
        &d.owners,
        &x_labels,
        &markers,
    ));
    if d.slot_ms == HOUR_MS {
        // the same spend per day: the month's trend, which the hourly scale of a spike can flatten
        let day_slots = (d.slots as u64 * d.slot_ms as u64).div_ceil(DAY_MS as u64) as usize;
        let per = (DAY_MS / d.slot_ms) as usize;
        let daily: Vec<(String, Vec<f64>)> = d
            .owners
            .iter()
            .map(|(o, v)| (o.clone(), (0..day_slots).map(|i| v.iter().skip(i * per).take(per).sum()).collect()))
            .collect();
        let labels: Vec<(usize, String)> = (0..day_slots)
            .step_by((day_slots / 10).max(1))
            .map(|i| {
                let t = d.start + i as i64 * DAY_MS;
                (i, chrono::DateTime::from_timestamp_millis(t).unwrap_or_default().format("%b %d").to_string())
            })
            .collect();
        let markers: Vec<Marker> = d
            .spikes
            .iter()
            .map(|s| Marker {
                slot: ((s.start_ms - d.start) / DAY_MS) as usize,
                label: format!("spike day: {}", s.owner),
                class: "spike-day-marker",
            })
            .filter(|m| m.slot < day_slots)
            .collect();
        h.push_str("<h2>Spend per owner per day</h2>");
        h.push_str(&svg::stacked_area(
            "spend-per-owner-daily",
            "Spend per owner per day (stacked)",
            day_slots,
            &daily,
            &labels,
            &markers,
        ));
    }
    if !d.spikes.is_empty() {
        h.push_str("<table><tr><th>spike</th><th>owner</th><th class=\"n\">actual</th><th class=\"n\">expected</th><th>state</th><th>what</th></tr>");
        for s in &d.spikes {
            let _ = write!(
                h,
                "<tr class=\"spike-row\"><td>{}</td><td>{}</td><td class=\"n\">${}</td><td class=\"n\">${}</td><td>{}</td><td>{}</td></tr>",
                esc(&rfc3339(s.start_ms)),
                esc(&s.owner),
                esc(&s.actual),
                esc(&s.expected),
                if s.recovered { "recovered" } else { "open" },
                esc(&s.summary)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<table><tr><th>owner</th><th class=\"n\">spend</th><th class=\"n\">share</th></tr>");
    for (o, c) in &d.owner_totals {
        let share = if d.total > 0 { usd(*c) / usd(d.total) * 100.0 } else { 0.0 };
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"n\">${}</td><td class=\"n\">{share:.1} %</td></tr>",
            esc(o),
            format_usd_rounded(*c, 2)
        );
    }
    h.push_str("</table>");

    // month to date vs forecast
    h.push_str("<h2>Month to date and forecast</h2>");
    match &fc {
        Some(f) => {
            let start = d.start;
            let label = move |i: usize| {
                chrono::DateTime::from_timestamp_millis(start + i as i64 * DAY_MS)
                    .unwrap_or_default()
                    .format("%d")
                    .to_string()
            };
            h.push_str(&svg::cumulative(
                "forecast",
                "Cumulative spend this month: actual, forecast with its 80 % interval, budget",
                &svg::Cumulative {
                    days: f.days,
                    actual: &f.actual,
                    point: &f.point,
                    lower: &f.lower,
                    upper: &f.upper,
                    budgets: &budgets,
                    day_label: &label,
                },
            ));
            let _ = write!(
                h,
                "<p class=\"forecast-summary\">Month to date (through {}): <b>{}</b>. Projected month end: <b>{}</b> (80 % interval {} to {}), by {} from {} days of history.{}</p>",
                esc(&rfc3339(f.as_of)[..10]),
                svg::money(f.mtd),
                svg::money(f.month_point),
                svg::money(f.month_lower),
                svg::money(f.month_upper),
                esc(&f.method),
                f.history_days,
                budgets
                    .iter()
                    .map(|(n, b)| format!(
                        " Budget {}: {} ({}).",
                        esc(n),
                        svg::money(*b),
                        if f.month_point >= *b { "projected to be exceeded" } else { "projected within" }
                    ))
                    .collect::<String>()
            );
        }
        None => h.push_str("<p class=\"note\">No complete day in this month yet: nothing to forecast.</p>"),
    }

    // top models and identities
    h.push_str("<h2>Top models and identities</h2>");
    let items: Vec<(String, f64, String)> = d
        .models
        .iter()
        .map(|(m, c, r, u)| {
            // an unpriced model's cost is unknown, never $0
            let label = match (*u, *r) {
                (0, _) => format!("${} · {r} calls", format_usd_rounded(*c, 2)),
                (u, r) if u == r => format!("cost unknown (unpriced) · {r} calls"),
                (u, r) => format!("${} + {u} calls of unknown cost · {r} calls", format_usd_rounded(*c, 2)),
            };
            (m.clone(), usd(*c), label)
        })
        .collect();
    h.push_str(&svg::hbars("top-models", "Top models by spend", &items));
    let items: Vec<(String, f64, String)> = d
        .identities
        .iter()
        .map(|(id, o, c, r)| (format!("{id} ({o})"), usd(*c), format!("${} · {} calls", format_usd_rounded(*c, 2), r)))
        .collect();
    h.push_str(&svg::hbars("top-identities", "Top identities by spend", &items));

    // token mix
    h.push_str("<h2>Token mix per owner</h2>");
    let classes = ["input (uncached)", "cache read", "cache write", "output", "reasoning"];
    h.push_str(&svg::mix_bars("token-mix", "Token mix per owner", &classes, &d.mix));

    // unattributed and unpriced
    h.push_str("<h2>Unattributed and unpriced spend</h2>");
    let _ = write!(
        h,
        "<p>Unattributed (identities that map to no owner: a finance gap and a security signal): <b>${}</b>.</p>",
        format_usd_rounded(d.unattributed, 2)
    );
    if !d.unattributed_ids.is_empty() {
        h.push_str("<table><tr><th>identity</th><th class=\"n\">spend</th><th class=\"n\">calls</th></tr>");
        for (id, c, r) in &d.unattributed_ids {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"n\">${}</td><td class=\"n\">{r}</td></tr>",
                esc(id),
                format_usd_rounded(*c, 2)
            );
        }
        h.push_str("</table>");
    }
    if d.unpriced.is_empty() {
        h.push_str("<p>Every call was priced.</p>");
    } else {
        h.push_str("<p>Unpriced calls (the model is missing from the price catalog; their cost is unknown, not $0):</p><table><tr><th>model</th><th class=\"n\">calls</th><th class=\"n\">tokens</th></tr>");
        for (m, n, t) in &d.unpriced {
            let _ = write!(
                h,
                "<tr class=\"unpriced\"><td>{}</td><td class=\"n\">{n}</td><td class=\"n\">{t}</td></tr>",
                esc(m)
            );
        }
        h.push_str("</table>");
    }

    // retries
    h.push_str("<h2>Retry and failure cost</h2>");
    if d.retry.is_empty() {
        h.push_str("<p>No retried or failed calls with a cost this month.</p>");
    } else {
        let items: Vec<(String, f64, String)> = d
            .retry
            .iter()
            .map(|(o, w, r, f, c)| {
                let share = if *c > 0 { (usd(*r) + usd(*f)) / usd(*c) * 100.0 } else { 0.0 };
                (
                    format!("{o} / {}", if w.is_empty() { "-" } else { w }),
                    usd(*r),
                    format!(
                        "retries ${} · failed ${} · {share:.0} % of ${}",
                        format_usd_rounded(*r, 2),
                        format_usd_rounded(*f, 2),
                        format_usd_rounded(*c, 2)
                    ),
                )
            })
            .collect();
        h.push_str(&svg::hbars("retry-cost", "Retry cost per owner and workflow", &items));
    }
    let _ = write!(
        h,
        "<p class=\"note\">Generated by aifinops {} from the lake's rollups ({} to {}).</p><script>{SCRIPT}</script></body></html>",
        env!("CARGO_PKG_VERSION"),
        esc(&rfc3339(d.start)),
        esc(&rfc3339(d.end))
    );
    h
}

struct MonthForecast {
    days: usize,
    as_of: i64,
    actual: Vec<f64>,
    point: Vec<f64>,
    lower: Vec<f64>,
    upper: Vec<f64>,
    mtd: f64,
    month_point: f64,
    month_lower: f64,
    month_upper: f64,
    method: String,
    history_days: usize,
}

/// Cumulative actual spend of the month through the last complete day, and the forecast of the rest.
fn forecast(d: &Data) -> Option<MonthForecast> {
    let as_of = d.as_of?;
    if as_of < d.start {
        return None;
    }
    let days = ((d.end - d.start) / DAY_MS) as usize;
    let last_actual = (as_of.min(d.end - DAY_MS) - d.start) / DAY_MS;
    let mut actual = Vec::new();
    let mut cum = 0.0;
    for i in 0..=last_actual {
        let t = d.start + i * DAY_MS;
        let idx = (t - d.history_start) / DAY_MS;
        cum += if idx >= 0 { d.history.get(idx as usize).copied().unwrap_or(0.0) } else { 0.0 };
        actual.push(cum);
    }
    let rest = days.saturating_sub(actual.len());
    let f = forecast_daily(&d.history, rest, LEVEL);
    let (mut p, mut l, mut u) = (cum, cum, cum);
    let (mut point, mut lower, mut upper) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rest {
        p += f.point.get(i).copied().unwrap_or(0.0);
        l += f.lower.get(i).copied().unwrap_or(0.0);
        u += f.upper.get(i).copied().unwrap_or(0.0);
        point.push(p);
        lower.push(l);
        upper.push(u);
    }
    Some(MonthForecast {
        days,
        as_of,
        actual,
        point,
        lower,
        upper,
        mtd: cum,
        month_point: p,
        month_lower: l,
        month_upper: u,
        method: if rest == 0 { "actuals (the month is complete)".into() } else { f.method.as_str().to_string() },
        history_days: d.history.len(),
    })
}
