//! Alert rules of the first release: budget thresholds, unattributed spend and unpriced models.
//! Spike, retry-storm and forecast detectors plug in beside these (see `Detector`).
//!
//! Rules read the finest partial rollup rows of each micro-batch (not raw events), so their cost is
//! O(keys) per batch. Their state (period spend, thresholds already fired, identities and models already
//! reported) is part of the commit's state snapshot, so a restart neither forgets nor re-sends an alert.

use std::collections::{BTreeMap, BTreeSet};

use aifinops_schemas::event::UNATTRIBUTED;
use aifinops_schemas::money::{ONE_USD, format_usd, format_usd_rounded, parse_usd};
use aifinops_schemas::{Alert, AlertType};
use chrono::{Datelike, TimeZone, Utc};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Decimal128Type, Int64Type, TimestampMillisecondType};
use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Serialize};

use crate::AggregateError;

/// Budget period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// An hour (UTC): short leashes for experimental agent workflows.
    Hour,
    Day,
    Month,
}

/// What a budget does at its limit besides the threshold alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Threshold alerts only.
    #[default]
    Alert,
    /// Also publish `aifinops.policy.block` once per period when spend reaches the limit: a machine-readable
    /// event a gateway can act on. aifinops itself never calls a gateway.
    Block,
}

fn star() -> String {
    "*".into()
}
fn default_thresholds() -> Vec<u32> {
    vec![50, 80, 100]
}

/// A budget from the config: a scope, a period, a limit and thresholds in percent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Unique name; part of the alert id.
    pub name: String,
    /// Owner id or glob (`*` = all owners).
    #[serde(default = "star")]
    pub owner: String,
    /// Workflow glob.
    #[serde(default = "star")]
    pub workflow: String,
    /// Environment glob.
    #[serde(default = "star")]
    pub environment: String,
    pub period: Period,
    /// Limit in USD, a decimal string (`"250.00"`).
    pub limit_usd: String,
    /// Percent thresholds, each fired once per period.
    #[serde(default = "default_thresholds")]
    pub thresholds: Vec<u32>,
    /// `alert` (default) or `block`.
    #[serde(default)]
    pub action: Action,
}

struct Budget {
    cfg: BudgetConfig,
    limit: i128,
    owner: GlobMatcher,
    workflow: GlobMatcher,
    environment: GlobMatcher,
}

impl Budget {
    /// The owner a budget alert is about: the budget's owner, or the top spender when it is a glob.
    fn owner_of(&self, acc: &BudgetAcc) -> String {
        if self.cfg.owner.contains(['*', '?', '[']) {
            acc.by_owner.iter().max_by_key(|(_, s)| s.cost).map(|(o, _)| o.clone()).unwrap_or_default()
        } else {
            self.cfg.owner.clone()
        }
    }
}

mod usd {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &i128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&aifinops_schemas::money::format_usd(*v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i128, D::Error> {
        let s = String::deserialize(d)?;
        aifinops_schemas::money::parse_usd("state", &s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Spend {
    #[serde(with = "usd")]
    cost: i128,
    requests: i64,
}

/// Spend of one budget in one period, with what it is made of.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct BudgetAcc {
    spend: Spend,
    unpriced_requests: i64,
    by_model: BTreeMap<String, Spend>,
    by_identity: BTreeMap<String, Spend>,
    by_owner: BTreeMap<String, Spend>,
    risk_owners: BTreeMap<String, String>,
    fired: BTreeSet<u32>,
}

/// Rule state carried in every commit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RulesState {
    /// `budget name` -> `period key` -> accumulator.
    budgets: BTreeMap<String, BTreeMap<String, BudgetAcc>>,
    /// `day` -> identities already reported as unattributed.
    unattributed: BTreeMap<String, BTreeSet<String>>,
    /// `day` -> models already reported as unpriced.
    unpriced: BTreeMap<String, BTreeSet<String>>,
    /// `budget name` -> `day` -> spend: the daily series month budgets are forecast from.
    #[serde(default)]
    daily: BTreeMap<String, BTreeMap<String, Spend>>,
    /// `budget name` -> `period` -> the breach day last announced by `aifinops.budget.projected`.
    #[serde(default)]
    projected: BTreeMap<String, BTreeMap<String, String>>,
    /// The day projections last ran on.
    #[serde(default)]
    projected_on: Option<String>,
}

/// Complete days of history a projection needs (fewer: no projection).
pub const PROJECTION_MIN_DAYS: usize = 3;
/// Days of daily history kept per month budget (8 weeks, what the seasonal forecast uses).
const PROJECTION_HISTORY_DAYS: i64 = 56;

/// The rules and their state.
pub struct AlertRules {
    source: String,
    budgets: Vec<Budget>,
    state: RulesState,
    /// Periods older than this many days before the watermark are closed for alerting.
    retention_days: i64,
}

/// Keeps the largest `n` entries of a contributor map (bounded memory for many identities).
fn trim(map: &mut BTreeMap<String, Spend>, n: usize) {
    if map.len() <= 2 * n {
        return;
    }
    let mut v: Vec<_> = std::mem::take(map).into_iter().collect();
    v.sort_by(|a, b| b.1.cost.cmp(&a.1.cost).then(b.1.requests.cmp(&a.1.requests)));
    v.truncate(n);
    *map = v.into_iter().collect();
}

fn top(map: &BTreeMap<String, Spend>, key: &str, n: usize) -> serde_json::Value {
    let mut v: Vec<_> = map.iter().collect();
    v.sort_by(|a, b| b.1.cost.cmp(&a.1.cost).then(b.1.requests.cmp(&a.1.requests)).then(a.0.cmp(b.0)));
    serde_json::Value::Array(
        v.into_iter()
            .take(n)
            .map(|(k, s)| serde_json::json!({ key: k, "cost_usd": format_usd(s.cost), "requests": s.requests }))
            .collect(),
    )
}

fn day_key(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_default()
}

fn period_bounds(p: Period, ms: i64) -> (String, i64, i64) {
    let d = Utc.timestamp_millis_opt(ms).single().unwrap_or_default().date_naive();
    match p {
        Period::Hour => {
            let start = ms.div_euclid(3_600_000) * 3_600_000;
            let key = Utc.timestamp_millis_opt(start).single().unwrap_or_default().format("%Y-%m-%dT%H").to_string();
            (key, start, start + 3_600_000)
        }
        Period::Day => {
            let start = d.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis();
            (d.format("%Y-%m-%d").to_string(), start, start + 86_400_000)
        }
        Period::Month => {
            let first = d.with_day(1).expect("day 1");
            let next = if first.month() == 12 {
                chrono::NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
            } else {
                chrono::NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
            }
            .expect("valid month");
            let ms = |n: chrono::NaiveDate| n.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis();
            (first.format("%Y-%m").to_string(), ms(first), ms(next))
        }
    }
}

fn glob(field: &str, budget: &str, pat: &str) -> Result<GlobMatcher, AggregateError> {
    Glob::new(pat)
        .map(|g| g.compile_matcher())
        .map_err(|e| AggregateError::Config(format!("budget {budget:?}: {field} pattern {pat:?}: {e}")))
}

impl AlertRules {
    pub fn new(source: &str, budgets: &[BudgetConfig]) -> Result<Self, AggregateError> {
        let mut names = BTreeSet::new();
        let mut out = Vec::new();
        for b in budgets {
            if !names.insert(b.name.clone()) {
                return Err(AggregateError::Config(format!("budget name {:?} is used twice", b.name)));
            }
            let limit = parse_usd("limit_usd", &b.limit_usd)
                .map_err(|e| AggregateError::Config(format!("budget {:?}: {e}", b.name)))?;
            if limit <= 0 {
                return Err(AggregateError::Config(format!("budget {:?}: limit_usd must be positive", b.name)));
            }
            if b.thresholds.is_empty() || b.thresholds.contains(&0) {
                return Err(AggregateError::Config(format!(
                    "budget {:?}: thresholds must be positive percents",
                    b.name
                )));
            }
            out.push(Budget {
                cfg: b.clone(),
                limit,
                owner: glob("owner", &b.name, &b.owner)?,
                workflow: glob("workflow", &b.name, &b.workflow)?,
                environment: glob("environment", &b.name, &b.environment)?,
            });
        }
        Ok(AlertRules { source: source.to_string(), budgets: out, state: RulesState::default(), retention_days: 3 })
    }

    pub fn state(&self) -> &RulesState {
        &self.state
    }

    pub fn restore(&mut self, state: RulesState) {
        self.state = state;
    }

    /// Forgets periods that can no longer receive alerts (older than the retention before `watermark_ms`).
    pub fn prune(&mut self, watermark_ms: i64) {
        let day_cut = day_key(watermark_ms - self.retention_days * 86_400_000);
        let month_cut = day_cut[..7].to_string();
        self.state.unattributed.retain(|d, _| *d >= day_cut);
        self.state.unpriced.retain(|d, _| *d >= day_cut);
        for periods in self.state.budgets.values_mut() {
            periods.retain(|p, _| if p.len() == 7 { *p >= month_cut } else { *p >= day_cut });
        }
        let daily_cut = day_key(watermark_ms - PROJECTION_HISTORY_DAYS * 86_400_000);
        for days in self.state.daily.values_mut() {
            days.retain(|d, _| *d >= daily_cut);
        }
        for periods in self.state.projected.values_mut() {
            periods.retain(|p, _| *p >= month_cut);
        }
    }

    /// Projected breaches of month budgets, once per day of watermark: month-to-date spend (complete
    /// days) plus the forecast of the rest of the month (today included) against the limit. One
    /// `aifinops.budget.projected` per budget and month, re-sent only when the projected breach day moves
    /// earlier. Needs [`PROJECTION_MIN_DAYS`] complete days of history; a budget already at its limit is
    /// left to the threshold alerts.
    pub fn project(&mut self, watermark_ms: i64, now_ms: i64) -> Vec<Alert> {
        let today = day_key(watermark_ms);
        if self.state.projected_on.as_deref() == Some(today.as_str()) {
            return Vec::new();
        }
        self.state.projected_on = Some(today.clone());
        let today_ms = watermark_ms.div_euclid(86_400_000) * 86_400_000;
        let mut alerts = Vec::new();
        for b in self.budgets.iter().filter(|b| b.cfg.period == Period::Month) {
            let Some(days) = self.state.daily.get(&b.cfg.name) else { continue };
            let Some(first) = days.keys().next().and_then(|d| parse_day(d)) else { continue };
            let from = first.max(today_ms - PROJECTION_HISTORY_DAYS * 86_400_000);
            let history: Vec<i128> = (0..(today_ms - from) / 86_400_000)
                .map(|i| days.get(&day_key(from + i * 86_400_000)).map_or(0, |s| s.cost))
                .collect();
            if history.len() < PROJECTION_MIN_DAYS {
                continue;
            }
            let (pkey, pstart, pend) = period_bounds(Period::Month, watermark_ms);
            let acc = self.state.budgets.get(&b.cfg.name).and_then(|p| p.get(&pkey)).cloned().unwrap_or_default();
            if acc.spend.cost >= b.limit {
                continue;
            }
            let mtd: i128 = days.range(day_key(pstart)..today.clone()).map(|(_, s)| s.cost).sum();
            let left = ((pend - today_ms) / 86_400_000) as usize;
            let hist_f: Vec<f64> = history.iter().map(|c| *c as f64 / ONE_USD as f64).collect();
            let f = crate::forecast::forecast_daily(&hist_f, left, crate::forecast::LEVEL);
            let units = |usd: f64| (usd * 1e6).round() as i128 * (ONE_USD / 1_000_000);
            let mut cum = mtd;
            let mut breach = None;
            for (i, p) in f.point.iter().enumerate() {
                cum += units(*p);
                if breach.is_none() && cum >= b.limit {
                    breach = Some(day_key(today_ms + i as i64 * 86_400_000));
                }
            }
            let Some(breach) = breach else { continue };
            let announced = self.state.projected.entry(b.cfg.name.clone()).or_default();
            if announced.get(&pkey).is_some_and(|prev| breach >= *prev) {
                continue;
            }
            announced.insert(pkey.clone(), breach.clone());
            let lower = mtd + f.lower.iter().map(|v| units(*v)).sum::<i128>();
            let upper = mtd + f.upper.iter().map(|v| units(*v)).sum::<i128>();
            let owner_id = b.owner_of(&acc);
            alerts.push(Alert::new(
                &self.source,
                AlertType::BudgetProjected,
                format!("budget/{}", b.cfg.name),
                now_ms,
                &[&b.cfg.name, &pkey, &breach],
                serde_json::json!({
                    "owner": owner_id,
                    "risk_owner": acc.risk_owners.get(&owner_id).cloned().unwrap_or_default(),
                    "budget": b.cfg.name,
                    "scope": {"owner": b.cfg.owner, "workflow": b.cfg.workflow, "environment": b.cfg.environment},
                    "period": {"kind": b.cfg.period, "key": pkey, "start": aifinops_schemas::alert::rfc3339_ms(pstart), "end": aifinops_schemas::alert::rfc3339_ms(pend)},
                    "as_of": today,
                    "limit_usd": format_usd(b.limit),
                    "month_to_date_usd": format_usd_rounded(mtd, 2),
                    "projected_usd": format_usd_rounded(cum, 2),
                    "projected_lower_usd": format_usd_rounded(lower, 2),
                    "projected_upper_usd": format_usd_rounded(upper, 2),
                    "interval_level": f.level,
                    "projected_percent": (cum * 100 / b.limit).to_string(),
                    "breach_date": breach,
                    "method": f.method.as_str(),
                    "history_days": history.len(),
                    "action": b.cfg.action,
                    "top_owners": top(&acc.by_owner, "owner", 5),
                    "summary": format!(
                        "{} is projected to reach its ${} limit on {breach}: ${} projected for {pkey} (80 % interval ${}-${})",
                        b.cfg.name, format_usd_rounded(b.limit, 2), format_usd_rounded(cum, 2), format_usd_rounded(lower, 2), format_usd_rounded(upper, 2)
                    ),
                }),
            ));
        }
        alerts
    }

    /// Feeds the partial rollup rows of one micro-batch (finest window) and returns the alerts they raise.
    pub fn observe(&mut self, rows: &RecordBatch, watermark_ms: Option<i64>, now_ms: i64) -> Vec<Alert> {
        let mut alerts = Vec::new();
        if rows.num_rows() == 0 {
            return alerts;
        }
        let col = |n: &str| rows.column_by_name(n).unwrap_or_else(|| panic!("rollup rows have {n}"));
        let start = col("window_start").as_primitive::<TimestampMillisecondType>();
        let s = |n: &str| col(n).as_string::<i32>().clone();
        let (owner, risk, workflow, env, identity, provider, model) =
            (s("owner"), s("risk_owner"), s("workflow"), s("environment"), s("identity"), s("provider"), s("model"));
        let requests = col("requests").as_primitive::<Int64Type>();
        let unpriced = col("unpriced_requests").as_primitive::<Int64Type>();
        let cost = col("cost_usd").as_primitive::<Decimal128Type>();
        // days as numbers (a date string is formatted once per day, not per row)
        let retention_cut = watermark_ms.map(|w| (w - self.retention_days * 86_400_000).div_euclid(86_400_000));
        let mut day_cache: (i64, String) = (i64::MIN, String::new());

        // Unattributed identities and unpriced models: aggregate this batch first, then alert once per day.
        let mut unattr: BTreeMap<(String, String), Unattributed> = BTreeMap::new();
        let mut unpr: BTreeMap<(String, String), Unpriced> = BTreeMap::new();
        for i in 0..rows.num_rows() {
            let ts = start.value(i);
            let day_n = ts.div_euclid(86_400_000);
            if retention_cut.is_some_and(|c| day_n < c) {
                continue; // too old to alert on; the rows still reach the lake
            }
            if day_cache.0 != day_n {
                day_cache = (day_n, day_key(ts));
            }
            let day = &day_cache.1;
            let c = if cost.is_null(i) { 0 } else { cost.value(i) };
            let r = requests.value(i);
            let spend = Spend { cost: c, requests: r };
            if owner.value(i) == UNATTRIBUTED {
                let e = unattr.entry((identity.value(i).to_string(), day.clone())).or_default();
                add(&mut e.spend, &spend);
                add(e.models.entry(model.value(i).to_string()).or_default(), &spend);
                if !workflow.value(i).is_empty() {
                    e.workflows.insert(workflow.value(i).to_string());
                }
            }
            if unpriced.value(i) > 0 {
                let e = unpr
                    .entry((model.value(i).to_string(), day.clone()))
                    .or_insert_with(|| Unpriced { provider: provider.value(i).to_string(), ..Default::default() });
                e.requests += unpriced.value(i);
                add(
                    e.owners.entry(owner.value(i).to_string()).or_default(),
                    &Spend { cost: 0, requests: unpriced.value(i) },
                );
            }
            for b in &self.budgets {
                if !(b.owner.is_match(owner.value(i))
                    && b.workflow.is_match(workflow.value(i))
                    && b.environment.is_match(env.value(i)))
                {
                    continue;
                }
                let (pkey, _, _) = period_bounds(b.cfg.period, ts);
                let acc = self.state.budgets.entry(b.cfg.name.clone()).or_default().entry(pkey).or_default();
                add(&mut acc.spend, &spend);
                acc.unpriced_requests += unpriced.value(i);
                add(acc.by_model.entry(model.value(i).to_string()).or_default(), &spend);
                add(acc.by_identity.entry(identity.value(i).to_string()).or_default(), &spend);
                add(acc.by_owner.entry(owner.value(i).to_string()).or_default(), &spend);
                acc.risk_owners.entry(owner.value(i).to_string()).or_insert_with(|| risk.value(i).to_string());
                if b.cfg.period == Period::Month {
                    add(
                        self.state.daily.entry(b.cfg.name.clone()).or_default().entry(day.clone()).or_default(),
                        &spend,
                    );
                }
            }
        }
        for ((ident, day), Unattributed { spend, models, workflows }) in unattr {
            if !self.state.unattributed.entry(day.clone()).or_default().insert(ident.clone()) {
                continue;
            }
            alerts.push(Alert::new(
                &self.source,
                AlertType::SpendUnattributed,
                format!("identity/{ident}"),
                now_ms,
                &[&ident, &day],
                serde_json::json!({
                    "owner": UNATTRIBUTED,
                    "risk_owner": "",
                    "identity": ident,
                    "day": day,
                    "observed_usd": format_usd(spend.cost),
                    "requests": spend.requests,
                    "workflows": workflows,
                    "top_models": top(&models, "model", 5),
                    "reason": "spend by an identity that matches no owner rule (leaked key or shadow agent?)",
                }),
            ));
        }
        for ((m, day), Unpriced { provider: prov, requests: n, owners }) in unpr {
            if !self.state.unpriced.entry(day.clone()).or_default().insert(m.clone()) {
                continue;
            }
            let top_owner = owners.iter().max_by_key(|(_, s)| s.requests).map(|(o, _)| o.clone()).unwrap_or_default();
            alerts.push(Alert::new(
                &self.source,
                AlertType::ModelUnpriced,
                format!("model/{m}"),
                now_ms,
                &[&m, &day],
                serde_json::json!({
                    "owner": top_owner,
                    "model": m,
                    "provider": prov,
                    "day": day,
                    "unpriced_requests": n,
                    "owners": top(&owners, "owner", 10),
                    "reason": "model not in the price catalog: its tokens are counted, its cost is unknown (null), never $0",
                }),
            ));
        }
        for b in &self.budgets {
            let Some(periods) = self.state.budgets.get_mut(&b.cfg.name) else {
                continue;
            };
            for (pkey, acc) in periods.iter_mut() {
                trim(&mut acc.by_identity, 50);
                trim(&mut acc.by_model, 50);
                trim(&mut acc.by_owner, 50);
                let mut thresholds = b.cfg.thresholds.clone();
                thresholds.sort_unstable();
                for t in thresholds {
                    // spend * 100 >= limit * t, exact
                    if acc.fired.contains(&t) || acc.spend.cost * 100 < b.limit * t as i128 {
                        continue;
                    }
                    acc.fired.insert(t);
                    let (_, pstart, pend) = period_bounds(b.cfg.period, parse_period_start(pkey));
                    let owner_id = b.owner_of(acc);
                    let percent = acc.spend.cost * 10_000 / b.limit; // hundredths of a percent
                    alerts.push(Alert::new(
                        &self.source,
                        AlertType::BudgetThreshold,
                        format!("budget/{}", b.cfg.name),
                        now_ms,
                        &[&b.cfg.name, pkey, &t.to_string()],
                        serde_json::json!({
                            "owner": owner_id,
                            "risk_owner": acc.risk_owners.get(&owner_id).cloned().unwrap_or_default(),
                            "budget": b.cfg.name,
                            "scope": {"owner": b.cfg.owner, "workflow": b.cfg.workflow, "environment": b.cfg.environment},
                            "period": {"kind": b.cfg.period, "key": pkey, "start": aifinops_schemas::alert::rfc3339_ms(pstart), "end": aifinops_schemas::alert::rfc3339_ms(pend)},
                            "threshold_percent": t,
                            "observed_usd": format_usd(acc.spend.cost),
                            "limit_usd": format_usd(b.limit),
                            "percent": format!("{}.{:02}", percent / 100, (percent % 100).abs()),
                            "requests": acc.spend.requests,
                            "unpriced_requests": acc.unpriced_requests,
                            "top_models": top(&acc.by_model, "model", 5),
                            "top_identities": top(&acc.by_identity, "identity", 5),
                            "top_owners": top(&acc.by_owner, "owner", 5),
                            "summary": format!("{} crossed {t}%: ${} of ${} ({}%) in {}", b.cfg.name, format_usd_rounded(acc.spend.cost, 2), format_usd_rounded(b.limit, 2), percent / 100, pkey),
                        }),
                    ));
                }
                // `action = block`: one machine-readable block event per period once the limit is reached
                if b.cfg.action == Action::Block && !acc.fired.contains(&BLOCK_FIRED) && acc.spend.cost >= b.limit {
                    acc.fired.insert(BLOCK_FIRED);
                    let (_, pstart, pend) = period_bounds(b.cfg.period, parse_period_start(pkey));
                    let owner_id = b.owner_of(acc);
                    alerts.push(Alert::new(
                        &self.source,
                        AlertType::PolicyBlock,
                        format!("budget/{}", b.cfg.name),
                        now_ms,
                        &[&b.cfg.name, pkey],
                        serde_json::json!({
                            "owner": owner_id,
                            "risk_owner": acc.risk_owners.get(&owner_id).cloned().unwrap_or_default(),
                            "budget": b.cfg.name,
                            "action": "block",
                            "scope": {"owner": b.cfg.owner, "workflow": b.cfg.workflow, "environment": b.cfg.environment},
                            "until": aifinops_schemas::alert::rfc3339_ms(pend),
                            "period": {"kind": b.cfg.period, "key": pkey, "start": aifinops_schemas::alert::rfc3339_ms(pstart), "end": aifinops_schemas::alert::rfc3339_ms(pend)},
                            "observed_usd": format_usd(acc.spend.cost),
                            "limit_usd": format_usd(b.limit),
                            "top_identities": top(&acc.by_identity, "identity", 5),
                            "reason": "the budget's limit is reached: calls in `scope` should be refused until `until`",
                        }),
                    ));
                }
            }
        }
        alerts
    }
}

/// Unattributed spend of one identity on one day, within a micro-batch.
#[derive(Default)]
struct Unattributed {
    spend: Spend,
    models: BTreeMap<String, Spend>,
    workflows: BTreeSet<String>,
}

/// Unpriced calls of one model on one day, within a micro-batch.
#[derive(Default)]
struct Unpriced {
    provider: String,
    requests: i64,
    owners: BTreeMap<String, Spend>,
}

fn add(a: &mut Spend, b: &Spend) {
    a.cost += b.cost;
    a.requests += b.requests;
}

/// Marks, among a period's fired thresholds, that its block event was sent.
const BLOCK_FIRED: u32 = u32::MAX;

fn parse_day(day: &str) -> Option<i64> {
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .ok()
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis())
}

fn parse_period_start(key: &str) -> i64 {
    if key.len() == 13 {
        // an hour: YYYY-MM-DDTHH
        return chrono::NaiveDateTime::parse_from_str(&format!("{key}:00:00"), "%Y-%m-%dT%H:%M:%S")
            .map(|d| d.and_utc().timestamp_millis())
            .unwrap_or(0);
    }
    let full = if key.len() == 7 { format!("{key}-01") } else { key.to_string() };
    chrono::NaiveDate::parse_from_str(&full, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Ev, batch};
    use crate::window::{WindowEngine, WindowSize};
    use aifinops_schemas::money::ONE_USD;

    const T0: i64 = 1_764_460_800_000; // 2025-11-30T00:00:00Z
    const DAY: i64 = 86_400_000;

    async fn partial(evs: &[Ev<'_>]) -> RecordBatch {
        let mut w = WindowEngine::new(vec![WindowSize::parse("1m").unwrap()]).unwrap();
        w.add(batch(evs), None, DAY).await.unwrap()
    }

    fn budget(limit: &str, period: Period) -> BudgetConfig {
        BudgetConfig {
            name: "b".into(),
            owner: "search".into(),
            workflow: "*".into(),
            environment: "*".into(),
            period,
            limit_usd: limit.into(),
            thresholds: vec![50, 80, 100],
            action: Action::Alert,
        }
    }

    #[tokio::test]
    async fn hourly_workflow_budget_with_block_publishes_one_block_event_per_hour() {
        const H: i64 = 3_600_000;
        let mut b = budget("10", Period::Hour);
        b.action = Action::Block;
        b.thresholds = vec![80];
        let mut r = AlertRules::new("test", &[b]).unwrap();
        let kinds = |a: &[Alert]| a.iter().map(|a| a.kind.clone()).collect::<Vec<_>>();
        assert!(r.observe(&partial(&[spend(T0, 5)]).await, None, 0).is_empty());
        let a = r.observe(&partial(&[spend(T0 + 1, 3)]).await, None, 0);
        assert_eq!(kinds(&a), vec!["aifinops.budget.threshold"], "80 % of $10");
        let a = r.observe(&partial(&[spend(T0 + 2, 2)]).await, None, 0);
        assert_eq!(kinds(&a), vec!["aifinops.policy.block"], "the limit is reached: block");
        assert_eq!(a[0].data["action"], "block");
        assert_eq!(a[0].data["period"]["key"], day_key(T0) + "T00");
        assert_eq!(a[0].data["until"], aifinops_schemas::alert::rfc3339_ms(T0 + H));
        assert!(r.observe(&partial(&[spend(T0 + 3, 20)]).await, None, 0).is_empty(), "once per period");
        // the next hour is a new period: its own threshold and block
        let a = r.observe(&partial(&[spend(T0 + H, 12)]).await, None, 0);
        assert_eq!(kinds(&a), vec!["aifinops.budget.threshold", "aifinops.policy.block"]);
        // a restart restores what was sent
        let state: RulesState = serde_json::from_value(serde_json::to_value(r.state()).unwrap()).unwrap();
        let mut b2 = budget("10", Period::Hour);
        b2.action = Action::Block;
        b2.thresholds = vec![80];
        let mut r2 = AlertRules::new("test", &[b2]).unwrap();
        r2.restore(state);
        assert!(r2.observe(&partial(&[spend(T0 + H + 1, 1)]).await, None, 0).is_empty());
    }

    #[tokio::test]
    async fn projected_breach_of_a_month_budget_is_sent_once_and_again_only_when_it_moves_earlier() {
        let dec1 = T0 + DAY; // 2025-12-01
        let mut far = budget("5000", Period::Month);
        far.name = "far".into();
        let mut r = AlertRules::new("test", &[budget("500", Period::Month), far]).unwrap();
        let noon = |d: i64| dec1 + d * DAY + DAY / 2;
        // two days of history: too short to project
        for d in 0..2 {
            r.observe(&partial(&[spend(noon(d), 20)]).await, None, 0);
        }
        assert!(r.project(dec1 + 2 * DAY, 0).is_empty(), "warm-up");
        for d in 2..10 {
            r.observe(&partial(&[spend(noon(d), 20)]).await, None, 0);
        }
        // Dec 11: $200 month to date + 21 days x $20 run-rate = $620; $500 is reached on Dec 25
        let a = r.project(dec1 + 10 * DAY + 60_000, 0);
        assert_eq!(a.len(), 1, "{a:#?}");
        let d = &a[0].data;
        assert_eq!(a[0].kind, "aifinops.budget.projected");
        assert_eq!((d["budget"].as_str(), d["breach_date"].as_str()), (Some("b"), Some("2025-12-25")));
        assert_eq!((d["month_to_date_usd"].as_str(), d["projected_usd"].as_str()), (Some("200.00"), Some("620.00")));
        assert_eq!((d["method"].as_str(), d["history_days"].as_u64()), (Some("run_rate"), Some(10)));
        assert_eq!(d["projected_percent"], "124");
        assert_eq!(d["owner"], "search");
        assert!(d["controls"].to_string().contains("GV.PO-01"));
        assert!(r.project(dec1 + 10 * DAY + 7_200_000, 0).is_empty(), "once per day");
        // Dec 12, same pace: the same breach day is not re-sent
        r.observe(&partial(&[spend(noon(10), 20)]).await, None, 0);
        assert!(r.project(dec1 + 11 * DAY, 0).is_empty());
        // a $90 day moves the breach earlier: sent again, with its own id
        r.observe(&partial(&[spend(noon(11), 90)]).await, None, 0);
        let b = r.project(dec1 + 12 * DAY, 0);
        assert_eq!(b.len(), 1, "{b:#?}");
        assert!(b[0].data["breach_date"].as_str().unwrap() < "2025-12-25");
        assert_ne!(a[0].id, b[0].id);
        // the state survives a restart: no re-send
        let state: RulesState = serde_json::from_value(serde_json::to_value(r.state()).unwrap()).unwrap();
        let mut far = budget("5000", Period::Month);
        far.name = "far".into();
        let mut r2 = AlertRules::new("test", &[budget("500", Period::Month), far]).unwrap();
        r2.restore(state);
        assert!(r2.project(dec1 + 13 * DAY, 0).is_empty());
        // over the limit already: the threshold alerts speak, not the projection
        r2.observe(&partial(&[spend(noon(13), 400)]).await, None, 0);
        assert!(r2.project(dec1 + 14 * DAY, 0).is_empty());
    }

    #[tokio::test]
    async fn a_weekly_pattern_is_projected_with_the_seasonal_model_and_raises_nothing_under_the_limit() {
        let dec1 = T0 + DAY; // 2025-12-01, a Monday
        let usd = |d: i64| if d % 7 >= 5 { 5 } else { 30 + d % 3 };
        let month: i128 = (0..31).map(|d| usd(d) as i128).sum();
        for (limit, alerts) in [(month * 115 / 100, 0), (month * 90 / 100, 1)] {
            let mut r = AlertRules::new("test", &[budget(&limit.to_string(), Period::Month)]).unwrap();
            for d in 0..21 {
                r.observe(&partial(&[spend(dec1 + d * DAY + DAY / 2, usd(d) as i128)]).await, None, 0);
            }
            let a = r.project(dec1 + 21 * DAY, 0);
            assert_eq!(a.len(), alerts, "limit {limit} of a {month} month: {a:#?}");
            if let Some(a) = a.first() {
                assert_eq!(a.data["method"], "mstl_ets");
                let projected: f64 = a.data["projected_usd"].as_str().unwrap().parse().unwrap();
                assert!((projected - month as f64).abs() / (month as f64) < 0.05, "{projected} for {month}");
            }
        }
    }

    fn spend(ts: i64, usd: i128) -> Ev<'static> {
        Ev { ts, id: ts as u128, owner: "search", identity: "key-1", input: 1, cost: Some(usd * ONE_USD) }
    }

    fn thresholds(alerts: &[Alert]) -> Vec<u64> {
        alerts
            .iter()
            .filter(|a| a.kind == "aifinops.budget.threshold")
            .map(|a| a.data["threshold_percent"].as_u64().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn each_threshold_fires_once_per_period() {
        let mut r = AlertRules::new("test", &[budget("10", Period::Day)]).unwrap();
        assert_eq!(thresholds(&r.observe(&partial(&[spend(T0, 4)]).await, None, 0)), Vec::<u64>::new());
        assert_eq!(thresholds(&r.observe(&partial(&[spend(T0 + 1, 2)]).await, None, 0)), vec![50]);
        // 9 of 10 spent, then 12: 80 and 100 fire once each, never again that day
        let a = r.observe(&partial(&[spend(T0 + 2, 3)]).await, None, 0);
        assert_eq!(thresholds(&a), vec![80]);
        assert_eq!(a[0].data["observed_usd"], "9");
        assert_eq!(a[0].data["limit_usd"], "10");
        assert_eq!(a[0].owner(), "search");
        assert_eq!(thresholds(&r.observe(&partial(&[spend(T0 + 3, 3)]).await, None, 0)), vec![100]);
        assert!(thresholds(&r.observe(&partial(&[spend(T0 + 4, 50)]).await, None, 0)).is_empty());
        // the next day is a new period
        assert_eq!(thresholds(&r.observe(&partial(&[spend(T0 + DAY, 20)]).await, None, 0)), vec![50, 80, 100]);
    }

    #[tokio::test]
    async fn restored_state_never_sends_the_same_alert_twice_and_ids_are_stable() {
        let mut r = AlertRules::new("test", &[budget("10", Period::Month)]).unwrap();
        let a = r.observe(&partial(&[spend(T0, 6)]).await, None, 0);
        assert_eq!(thresholds(&a), vec![50]);
        let state = serde_json::to_value(r.state()).unwrap();
        let mut r2 = AlertRules::new("test", &[budget("10", Period::Month)]).unwrap();
        r2.restore(serde_json::from_value(state).unwrap());
        let b = r2.observe(&partial(&[spend(T0 + 1, 3)]).await, None, 0);
        assert_eq!(thresholds(&b), vec![80], "50 % is not sent again after a restart");
        // the id depends on rule, scope, period and threshold only
        let mut r3 = AlertRules::new("test", &[budget("10", Period::Month)]).unwrap();
        let c = r3.observe(&partial(&[spend(T0 + 5, 7)]).await, None, 123);
        assert_eq!(c[0].id, a[0].id);
    }

    #[tokio::test]
    async fn unattributed_identities_and_unpriced_models_alert_once_per_day() {
        let mut r = AlertRules::new("test", &[]).unwrap();
        let ev = |ts: i64, identity: &'static str, cost: Option<i128>| Ev {
            ts,
            id: ts as u128,
            owner: UNATTRIBUTED,
            identity,
            input: 1,
            cost,
        };
        let a = r.observe(
            &partial(&[ev(T0, "k1", Some(5)), ev(T0 + 1, "k1", None), ev(T0 + 2, "k2", Some(1))]).await,
            None,
            0,
        );
        let kinds: Vec<_> = a.iter().map(|a| (a.kind.as_str(), a.subject.as_str())).collect();
        assert_eq!(
            kinds,
            vec![
                ("aifinops.spend.unattributed", "identity/k1"),
                ("aifinops.spend.unattributed", "identity/k2"),
                ("aifinops.model.unpriced", "model/unknown-model"),
            ]
        );
        assert!(r.observe(&partial(&[ev(T0 + 3, "k1", Some(5))]).await, None, 0).is_empty());
        assert_eq!(r.observe(&partial(&[ev(T0 + DAY, "k1", Some(5))]).await, None, 0).len(), 1, "next day again");
    }

    #[test]
    fn bad_budgets_are_config_errors() {
        let mut b = budget("-1", Period::Day);
        assert!(AlertRules::new("t", &[b.clone()]).err().unwrap().to_string().contains("positive"));
        b.limit_usd = "x".into();
        assert!(AlertRules::new("t", &[b.clone()]).is_err());
        let ok = budget("1", Period::Day);
        assert!(AlertRules::new("t", &[ok.clone(), ok]).err().unwrap().to_string().contains("twice"));
    }
}
