//! Spend spikes per owner and per identity, scored on every closed window of one size (default `1h`).
//!
//! Baselines, by how much history a series has (see DESIGN.md, "Spike detection"):
//! - **warm-up** (< `ewma_warmup_hours`): no alert;
//! - **EWMA** (until `min_history_hours`): fast/slow exponentially weighted moving averages; a runaway is
//!   `fast / slow >= ewma_ratio`;
//! - **trailing** (until `seasonal_min_weeks`): robust z-score against the same hour of the day over the
//!   trailing `trailing_hours` (median and MAD);
//! - **seasonal**: robust z-score against the same hour of the week over the last `seasonal_weeks` weeks.
//!
//! `z = 0.6745 (x - median) / MAD`. An alert needs the score AND an absolute floor (`min_usd` over the
//! expectation) AND a percent floor AND a minimum request count. Each series has the state OK -> ALERT -> OK
//! with one event per transition: `aifinops.spend.spike` when it fires, `aifinops.spend.recovered` when
//! every series of the incident is back to normal. When an identity and its owner fire in the same window
//! they are one incident, reported on the owner with the identity named (one alert, not two).
//!
//! State: the open incidents and the last evaluated window travel in the commit snapshot; the series
//! history is rebuilt from the lake's rollups on start ([`Detector::warm`]), so a restart neither forgets
//! the baseline nor re-alerts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use aifinops_schemas::alert::{Alert, AlertType, rfc3339_ms};
use aifinops_schemas::money::{ONE_USD, format_usd_rounded, parse_usd};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Decimal128Type, Int64Type, TimestampMillisecondType};
use serde::{Deserialize, Serialize};

use crate::keyhash::{FastMap, KeyMap};
use crate::{AggregateError, Detector, Emitted, WindowSize};

const WEEK_MS: i64 = 7 * 86_400_000;
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
/// Baseline samples scored without a heap allocation (8 weeks or 7 days by default).
const STACK_SAMPLES: usize = 32;

/// What a spike series is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Owner,
    Identity,
}

fn d_true() -> bool {
    true
}
fn d_window() -> String {
    "1h".into()
}
fn d_z() -> f64 {
    3.5
}
fn d_recover_z() -> f64 {
    2.0
}
fn d_min_usd() -> String {
    "5".into()
}
fn d_min_percent() -> f64 {
    50.0
}
fn d_min_requests() -> i64 {
    10
}
fn d_ratio() -> f64 {
    4.0
}
fn d_fast() -> f64 {
    0.5
}
fn d_slow() -> f64 {
    24.0
}
fn d_warmup() -> u32 {
    24
}
fn d_min_history() -> u32 {
    168
}
fn d_trailing() -> u32 {
    168
}
fn d_weeks() -> u32 {
    8
}
fn d_min_weeks() -> u32 {
    4
}
fn d_scopes() -> Vec<Scope> {
    vec![Scope::Owner, Scope::Identity]
}
fn d_max_series() -> usize {
    100_000
}
fn d_top() -> usize {
    5
}

/// `[spike]` in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpikeConfig {
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// The window series scored (one of `pipeline.windows`).
    #[serde(default = "d_window")]
    pub window: String,
    /// Robust z-score at or above which a window is anomalous.
    #[serde(default = "d_z")]
    pub z: f64,
    /// An alerting series recovers when its z-score falls below this (hysteresis against flapping).
    #[serde(default = "d_recover_z")]
    pub recover_z: f64,
    /// Absolute floor: actual - expected must be at least this many USD (decimal string).
    #[serde(default = "d_min_usd")]
    pub min_usd: String,
    /// Percent floor: (actual - expected) / expected must be at least this many percent.
    #[serde(default = "d_min_percent")]
    pub min_percent: f64,
    /// The window must hold at least this many requests of the series.
    #[serde(default = "d_min_requests")]
    pub min_requests: i64,
    /// Runaway threshold of fast EWMA / slow EWMA (before robust baselines exist).
    #[serde(default = "d_ratio")]
    pub ewma_ratio: f64,
    /// Half-life of the fast EWMA, in windows.
    #[serde(default = "d_fast")]
    pub ewma_fast_halflife: f64,
    /// Half-life of the slow EWMA, in windows.
    #[serde(default = "d_slow")]
    pub ewma_slow_halflife: f64,
    /// Hours of history before any alert (EWMA from then on).
    #[serde(default = "d_warmup")]
    pub ewma_warmup_hours: u32,
    /// Hours of history before the robust z-score replaces the EWMA.
    #[serde(default = "d_min_history")]
    pub min_history_hours: u32,
    /// Trailing horizon of the short-history baseline (same hour of day), 24-168.
    #[serde(default = "d_trailing")]
    pub trailing_hours: u32,
    /// Weeks of same-hour-of-week samples in the seasonal baseline (at most).
    #[serde(default = "d_weeks")]
    pub seasonal_weeks: u32,
    /// Weeks of history before the seasonal baseline is used.
    #[serde(default = "d_min_weeks")]
    pub seasonal_min_weeks: u32,
    /// Series kinds: `owner`, `identity`.
    #[serde(default = "d_scopes")]
    pub scopes: Vec<Scope>,
    /// Most series kept in memory; the least recently active non-alerting ones are dropped beyond it.
    #[serde(default = "d_max_series")]
    pub max_series: usize,
    /// Top contributors listed per dimension.
    #[serde(default = "d_top")]
    pub top: usize,
}

impl Default for SpikeConfig {
    fn default() -> Self {
        toml_defaults()
    }
}

fn toml_defaults() -> SpikeConfig {
    SpikeConfig {
        enabled: true,
        window: d_window(),
        z: d_z(),
        recover_z: d_recover_z(),
        min_usd: d_min_usd(),
        min_percent: d_min_percent(),
        min_requests: d_min_requests(),
        ewma_ratio: d_ratio(),
        ewma_fast_halflife: d_fast(),
        ewma_slow_halflife: d_slow(),
        ewma_warmup_hours: d_warmup(),
        min_history_hours: d_min_history(),
        trailing_hours: d_trailing(),
        seasonal_weeks: d_weeks(),
        seasonal_min_weeks: d_min_weeks(),
        scopes: d_scopes(),
        max_series: d_max_series(),
        top: d_top(),
    }
}

/// One series' history: its window costs (missing = 0 after `first`) and the EWMAs.
///
/// The history is what grows with time (a cost per series and window with spend, for `seasonal_weeks`:
/// 22 000 series of hourly costs over 8 weeks are 30M values), so a cost is a [`Cost16`] (2 bytes, within
/// 0.034 %; baselines are medians of these, while alerts report the window's exact cost), held as
/// [`History`].
#[derive(Debug, Clone)]
struct Series {
    /// First window index with spend: the start of the history.
    first: i64,
    /// Last window index seen (activity, for eviction).
    last: i64,
    hist: History,
    fast: f64,
    slow: f64,
}

impl Series {
    fn new(idx: i64) -> Self {
        Series { first: idx, last: idx, hist: History::Sparse(VecDeque::new()), fast: 0.0, slow: 0.0 }
    }

    /// `idx` relative to `first` (an i32 covers 4 000 years of minutes).
    fn rel(&self, idx: i64) -> i32 {
        (idx - self.first).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
    }

    fn value_at(&self, idx: i64) -> f64 {
        self.hist.get(self.rel(idx)).usd()
    }

    /// EWMAs decayed over the empty windows since the last value, as of just before `idx`.
    fn ewma_before(&self, idx: i64, a_fast: f64, a_slow: f64) -> (f64, f64) {
        if self.hist.is_empty() {
            return (0.0, 0.0);
        }
        let gap = (idx - self.last - 1).max(0) as i32;
        (self.fast * (1.0 - a_fast).powi(gap), self.slow * (1.0 - a_slow).powi(gap))
    }

    fn push(&mut self, idx: i64, x: f64, a_fast: f64, a_slow: f64, keep_from: i64) {
        if self.hist.is_empty() {
            self.fast = x;
            self.slow = x;
        } else {
            let (f, s) = self.ewma_before(idx, a_fast, a_slow);
            self.fast = a_fast * x + (1.0 - a_fast) * f;
            self.slow = a_slow * x + (1.0 - a_slow) * s;
        }
        self.hist.add(self.rel(idx), x);
        self.last = self.last.max(idx);
        self.hist.evict_before(self.rel(keep_from));
    }
}

/// A window's cost in a series' history, in 2 bytes: 0 for no cost, else a step on a logarithmic scale of
/// 1/1024 of an octave from 2^-20 USD (about a millionth of a dollar) to 2^44 USD. Reading one back is
/// within 0.034 % of what was stored (a cost below the scale reads as its bottom, never as 0; one above it as
/// its top). Baselines are medians and MADs of these, and the MAD has a floor of 5 % of the median, so the
/// rounding does not move a score; an alert reports the window's exact cost, not this.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cost16(u16);

impl Cost16 {
    /// Steps per octave.
    const STEPS: f64 = 1024.0;
    /// log2 of the smallest cost above 0 (code 1).
    const MIN_LOG2: f64 = -20.0;

    /// The code of `usd` (costs are not negative: anything not above 0 is 0).
    fn new(usd: f64) -> Cost16 {
        if usd.is_nan() || usd <= 0.0 {
            return Cost16(0);
        }
        let step = ((usd.log2() - Self::MIN_LOG2) * Self::STEPS).round();
        Cost16((step + 1.0).clamp(1.0, f64::from(u16::MAX)) as u16)
    }

    fn usd(self) -> f64 {
        match self.0 {
            0 => 0.0,
            c => (f64::from(c - 1) / Self::STEPS + Self::MIN_LOG2).exp2(),
        }
    }

    fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// This cost plus `usd`, rounded again. A window's spend reaches its history as one exact sum per
    /// series (a close's, or the lake's rows summed per window on start), so this runs once per window,
    /// not once per row.
    fn plus(self, usd: f64) -> Cost16 {
        Cost16::new(self.usd() + usd)
    }
}

/// A series' window costs by window index (relative to the series' first): sparse (index, cost) pairs, 8
/// bytes a window with spend, or, once at least a quarter of the windows in its span have spend, the costs
/// of consecutive windows with 0 where none, 2 bytes a window (back to sparse below a sixth). A series that
/// spends every hour, the usual case, takes a quarter of the memory, and looking a window up is an index,
/// not a binary search. Adding to a window already held adds to its cost.
#[derive(Debug, Clone)]
enum History {
    Sparse(VecDeque<(i32, Cost16)>),
    Dense { start: i32, costs: VecDeque<Cost16> },
}

impl History {
    /// Sparse histories at least this long are checked for density.
    const MIN_DENSE: usize = 16;
    /// Bytes of a dense window against a sparse one: a sparse history turns dense once at least 1 in
    /// `RATIO` of the windows in its span are held, and a dense one sparse below 1 in `RATIO * 3 / 2`.
    const RATIO: usize = std::mem::size_of::<(i32, Cost16)>() / std::mem::size_of::<Cost16>();

    fn is_empty(&self) -> bool {
        match self {
            History::Sparse(v) => v.is_empty(),
            History::Dense { costs, .. } => costs.is_empty(),
        }
    }

    fn get(&self, rel: i32) -> Cost16 {
        match self {
            History::Sparse(v) => v.binary_search_by_key(&rel, |(i, _)| *i).map_or(Cost16(0), |p| v[p].1),
            History::Dense { start, costs } => usize::try_from(i64::from(rel) - i64::from(*start))
                .ok()
                .and_then(|k| costs.get(k))
                .copied()
                .unwrap_or_default(),
        }
    }

    fn add(&mut self, rel: i32, x: f64) {
        match self {
            History::Sparse(v) => {
                match v.back_mut() {
                    Some(b) if b.0 == rel => b.1 = b.1.plus(x),
                    Some(b) if b.0 > rel => match v.binary_search_by_key(&rel, |(i, _)| *i) {
                        Ok(p) => v[p].1 = v[p].1.plus(x),
                        Err(p) => v.insert(p, (rel, Cost16::new(x))),
                    },
                    _ => v.push_back((rel, Cost16::new(x))),
                }
                let span = v.back().map_or(0, |b| i64::from(b.0) - i64::from(v[0].0) + 1);
                if v.len() >= Self::MIN_DENSE && (Self::RATIO * v.len()) as i64 >= span {
                    let start = v[0].0;
                    let mut costs = VecDeque::with_capacity(span as usize);
                    for &(i, c) in v.iter() {
                        costs.resize((i - start) as usize, Cost16(0));
                        costs.push_back(c);
                    }
                    *self = History::Dense { start, costs };
                }
            }
            History::Dense { start, costs } => {
                if costs.is_empty() {
                    *start = rel;
                }
                let (k, len) = (i64::from(rel) - i64::from(*start), costs.len());
                if (0..len as i64).contains(&k) {
                    costs[k as usize] = costs[k as usize].plus(x);
                    return;
                }
                // a window before the history, or after a gap that would leave it less than a sixth full:
                // sparse (never an allocation for the windows of a long gap)
                let held = costs.iter().filter(|c| !c.is_zero()).count() + 1;
                let sparse_below = Self::RATIO * 3 / 2;
                if k < 0
                    || (k > len as i64 && k as usize + 1 >= Self::MIN_DENSE && sparse_below * held < k as usize + 1)
                {
                    *self = History::Sparse(Self::sparse(*start, costs));
                    self.add(rel, x);
                    return;
                }
                let k = k as usize;
                if costs.capacity() < k + 1 {
                    // by half, not doubling: a full history of 8 weeks of hours is 1 345 costs
                    costs.reserve_exact((k + 1 - len).max(len / 2).max(8));
                }
                costs.resize(k, Cost16(0));
                costs.push_back(Cost16::new(x));
            }
        }
    }

    /// The (window, cost) pairs of a dense history: its windows with a cost, and its newest window (which
    /// may have calls and no cost).
    fn sparse(start: i32, costs: &VecDeque<Cost16>) -> VecDeque<(i32, Cost16)> {
        (start..)
            .zip(costs.iter())
            .enumerate()
            .filter(|&(j, (_, &c))| !c.is_zero() || j + 1 == costs.len())
            .map(|(_, (i, &c))| (i, c))
            .collect()
    }

    /// Forgets the windows before `rel`.
    fn evict_before(&mut self, rel: i32) {
        match self {
            History::Sparse(v) => {
                while v.front().is_some_and(|(i, _)| *i < rel) {
                    v.pop_front();
                }
            }
            History::Dense { start, costs } => {
                let k = (i64::from(rel) - i64::from(*start)).clamp(0, costs.len() as i64) as usize;
                costs.drain(..k);
                *start += k as i32;
            }
        }
    }
}

/// Spend of one series in one window: what scoring needs.
#[derive(Debug, Default, Clone, Copy)]
struct Spend {
    cost: i128,
    requests: i64,
}

/// Contributors of a series in one window: read back from the window's rows for the series that fire only
/// (rows are many and spikes rare, so collecting them for every series cost more than the scoring).
#[derive(Debug, Default, Clone)]
struct Contributors {
    owners: BTreeMap<String, i128>,
    risk_owner: String,
    models: BTreeMap<String, i128>,
    identities: BTreeMap<String, i128>,
    workflows: BTreeMap<String, i128>,
}

/// A closed window collected but not yet scored.
#[derive(Debug, Default)]
struct Pending {
    /// Spend per series key.
    spend: KeyMap<Spend>,
    /// The batches holding the window's rows, in the order they were collected (shared, not copied).
    batches: Vec<RecordBatch>,
    /// The [`SpikeDetector::collect`] call that last added a batch (a batch is listed once per call).
    call: u64,
}

/// An open incident (a published spike not yet recovered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Incident {
    /// The spike alert's id (the recovery event refers to it).
    alert_id: String,
    subject: String,
    owner: String,
    risk_owner: String,
    identity: String,
    /// Start of the window that fired.
    since_ms: i64,
    expected_usd: String,
    actual_usd: String,
    /// Series keys (`owner/x`, `identity/y`) still anomalous.
    series: BTreeSet<String>,
}

/// Detector state carried in every commit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpikeState {
    /// Index (window_start / size) of the last window evaluated.
    last_eval: Option<i64>,
    /// Open incidents by alert id.
    incidents: BTreeMap<String, Incident>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    Warmup,
    Ewma,
    Trailing,
    Seasonal,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Warmup => "warmup",
            Method::Ewma => "ewma",
            Method::Trailing => "trailing_median",
            Method::Seasonal => "seasonal_median",
        }
    }
}

/// A window's cost scored against its series' baseline.
#[derive(Debug, Clone)]
struct Score {
    method: Method,
    actual: f64,
    expected: f64,
    upper: f64,
    /// z (robust) or fast/slow ratio (EWMA).
    score: f64,
    samples: usize,
}

/// The spike detector.
pub struct SpikeDetector {
    source: String,
    cfg: SpikeConfig,
    size: WindowSize,
    min_usd: f64,
    a_fast: f64,
    a_slow: f64,
    series: KeyMap<Series>,
    /// Closed windows collected but not yet scored, by window index.
    pending: BTreeMap<i64, Pending>,
    /// [`SpikeDetector::collect`] calls so far.
    calls: u64,
    state: SpikeState,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn usd_f64(units: i128) -> f64 {
    units as f64 / ONE_USD as f64
}

/// USD with 2 decimals for messages (f64 -> i128 units, then the exact formatter).
fn usd2(v: f64) -> String {
    format_usd_rounded((v * 1e6).round() as i128 * (ONE_USD / 1_000_000), 2)
}

fn top(map: &BTreeMap<String, i128>, key: &str, n: usize) -> serde_json::Value {
    let mut v: Vec<_> = map.iter().filter(|(k, _)| !k.is_empty()).collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    serde_json::Value::Array(
        v.into_iter()
            .take(n)
            .map(|(k, c)| serde_json::json!({ key: k, "cost_usd": format_usd_rounded(*c, 6) }))
            .collect(),
    )
}

fn alpha(halflife: f64) -> f64 {
    if halflife <= 0.0 { 1.0 } else { 1.0 - 0.5f64.powf(1.0 / halflife) }
}

impl SpikeDetector {
    pub fn new(source: &str, cfg: SpikeConfig) -> Result<Self, AggregateError> {
        let size = WindowSize::parse(&cfg.window)?;
        let min_usd = usd_f64(
            parse_usd("spike.min_usd", &cfg.min_usd)
                .map_err(|e| AggregateError::Config(format!("spike.min_usd: {e}")))?,
        );
        let bad = |m: String| Err(AggregateError::Config(format!("spike: {m}")));
        if !(cfg.z > 0.0 && cfg.recover_z >= 0.0 && cfg.recover_z <= cfg.z) {
            return bad(format!("need 0 <= recover_z ({}) <= z ({}) and z > 0", cfg.recover_z, cfg.z));
        }
        if cfg.ewma_ratio <= 1.0 {
            return bad(format!("ewma_ratio {} must be above 1", cfg.ewma_ratio));
        }
        if !(24..=168).contains(&cfg.trailing_hours) {
            return bad(format!("trailing_hours {} must be within 24..=168", cfg.trailing_hours));
        }
        if cfg.seasonal_min_weeks == 0 || cfg.seasonal_min_weeks > cfg.seasonal_weeks {
            return bad(format!(
                "need 1 <= seasonal_min_weeks ({}) <= seasonal_weeks ({})",
                cfg.seasonal_min_weeks, cfg.seasonal_weeks
            ));
        }
        if size.ms > DAY_MS || DAY_MS % size.ms != 0 {
            return bad(format!("window {} must divide a day evenly (e.g. 15m, 1h, 1d)", cfg.window));
        }
        Ok(SpikeDetector {
            source: source.to_string(),
            a_fast: alpha(cfg.ewma_fast_halflife),
            a_slow: alpha(cfg.ewma_slow_halflife),
            min_usd,
            size,
            cfg,
            series: KeyMap::default(),
            pending: BTreeMap::new(),
            calls: 0,
            state: SpikeState::default(),
        })
    }

    /// Series in memory (for metrics).
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    fn history_ms(&self) -> i64 {
        i64::from(self.cfg.seasonal_weeks) * WEEK_MS + self.size.ms
    }

    fn score(&self, s: Option<&Series>, idx: i64, actual: f64) -> Score {
        let mut sc = Score { method: Method::Warmup, actual, expected: 0.0, upper: 0.0, score: 0.0, samples: 0 };
        let Some(s) = s else { return sc };
        let span_ms = (idx - s.first) * self.size.ms;
        let robust = |lag_windows: i64, max_k: i64, sc: &mut Score, m: Method| {
            // the samples and their deviations, on the stack for the usual horizons (scored for every series)
            let n = usize::try_from(max_k).unwrap_or(0);
            let (mut stack, mut heap) = ([0f64; 2 * STACK_SAMPLES], Vec::new());
            let buf: &mut [f64] = if n <= STACK_SAMPLES {
                &mut stack[..2 * n]
            } else {
                heap.resize(2 * n, 0.0);
                &mut heap
            };
            let (xs, dev) = buf.split_at_mut(n);
            let mut len = 0;
            for j in (1..=max_k).map(|k| idx - k * lag_windows).take_while(|j| *j >= s.first) {
                xs[len] = s.value_at(j);
                len += 1;
            }
            let (xs, dev) = (&mut xs[..len], &mut dev[..len]);
            let med = median(xs);
            for (d, x) in dev.iter_mut().zip(xs.iter()) {
                *d = (x - med).abs();
            }
            // a floor under the MAD: 5 % of the median or a cent, so a flat series does not divide by zero
            let mad = median(dev).max(med * 0.05).max(0.01);
            sc.method = m;
            sc.samples = len;
            sc.expected = med;
            sc.score = 0.6745 * (actual - med) / mad;
            sc.upper = med + self.cfg.z * mad / 0.6745;
        };
        if span_ms >= i64::from(self.cfg.seasonal_min_weeks) * WEEK_MS {
            robust(WEEK_MS / self.size.ms, i64::from(self.cfg.seasonal_weeks), &mut sc, Method::Seasonal);
        } else if span_ms >= i64::from(self.cfg.min_history_hours) * HOUR_MS {
            let lag = (DAY_MS / self.size.ms).max(1);
            let k = i64::from(self.cfg.trailing_hours) * HOUR_MS / (lag * self.size.ms);
            robust(lag, k.max(1), &mut sc, Method::Trailing);
        } else if span_ms >= i64::from(self.cfg.ewma_warmup_hours) * HOUR_MS {
            let (f, slow) = s.ewma_before(idx, self.a_fast, self.a_slow);
            let fast = self.a_fast * actual + (1.0 - self.a_fast) * f;
            let slow = slow.max(0.01);
            sc.method = Method::Ewma;
            sc.expected = slow;
            sc.score = fast / slow;
            // the actual at which fast / slow reaches the ratio
            sc.upper = (self.cfg.ewma_ratio * slow - (1.0 - self.a_fast) * f) / self.a_fast;
        }
        sc
    }

    /// Anomalous and above every floor: a spike.
    fn fires(&self, sc: &Score, requests: i64) -> bool {
        let threshold = match sc.method {
            Method::Warmup => return false,
            Method::Ewma => self.cfg.ewma_ratio,
            Method::Trailing | Method::Seasonal => self.cfg.z,
        };
        let impact = sc.actual - sc.expected;
        sc.score >= threshold
            && impact >= self.min_usd
            && (sc.expected <= 0.0 || impact / sc.expected * 100.0 >= self.cfg.min_percent)
            && requests >= self.cfg.min_requests
    }

    /// Still anomalous (hysteresis): an alerting series stays alerting while this holds.
    fn persists(&self, sc: &Score) -> bool {
        let impact = sc.actual - sc.expected;
        let anomalous = match sc.method {
            Method::Warmup => false,
            // pointwise: the window itself, not the smoothed fast average that lags the recovery
            Method::Ewma => sc.actual >= sc.expected * self.cfg.ewma_ratio / 2.0,
            Method::Trailing | Method::Seasonal => sc.score >= self.cfg.recover_z,
        };
        anomalous && impact >= self.min_usd / 2.0
    }

    /// Adds a window's spend (series key, cost) to the history (no scoring).
    fn absorb(&mut self, idx: i64, accs: impl IntoIterator<Item = (String, i128)>) {
        let keep_from = idx - self.history_ms() / self.size.ms;
        for (key, cost) in accs {
            let x = usd_f64(cost);
            match self.series.get_mut(key.as_str()) {
                Some(s) => s.push(idx, x, self.a_fast, self.a_slow, keep_from),
                None => {
                    let mut s = Series::new(idx);
                    s.push(idx, x, self.a_fast, self.a_slow, keep_from);
                    self.series.insert(key, s);
                }
            }
        }
        if self.series.len() > self.cfg.max_series {
            let alerting: BTreeSet<&String> = self.state.incidents.values().flat_map(|i| i.series.iter()).collect();
            let mut v: Vec<(i64, String)> =
                self.series.iter().filter(|(k, _)| !alerting.contains(k)).map(|(k, s)| (s.last, k.clone())).collect();
            v.sort();
            let drop = self.series.len() - self.cfg.max_series * 9 / 10;
            for (_, k) in v.into_iter().take(drop) {
                self.series.remove(&k);
            }
            metrics::counter!("aifinops_spike_series_evicted_total").increment(drop as u64);
        }
    }

    fn evaluate(&mut self, idx: i64, window: Pending, now_ms: i64) -> Vec<Alert> {
        let accs = &window.spend;
        let start_ms = idx * self.size.ms;
        let mut alerts = Vec::new();
        // 1. open incidents: each of their series either persists or has recovered
        let ids: Vec<String> = self.state.incidents.keys().cloned().collect();
        for id in ids {
            let series: Vec<String> = self.state.incidents[&id].series.iter().cloned().collect();
            for key in series {
                let actual = accs.get(key.as_str()).map(|a| usd_f64(a.cost)).unwrap_or(0.0);
                let sc = self.score(self.series.get(&key), idx, actual);
                if !self.persists(&sc) {
                    self.state.incidents.get_mut(&id).expect("incident").series.remove(&key);
                }
            }
            if self.state.incidents[&id].series.is_empty() {
                let inc = self.state.incidents.remove(&id).expect("incident");
                alerts.push(self.recovered(&inc, idx, start_ms, accs, now_ms));
            }
        }
        // 2. new spikes among the series not already alerting
        let alerting: BTreeSet<String> = self.state.incidents.values().flat_map(|i| i.series.iter().cloned()).collect();
        let mut fired: BTreeMap<String, Score> = BTreeMap::new();
        for (key, a) in accs {
            if alerting.contains(key) {
                continue;
            }
            let sc = self.score(self.series.get(key), idx, usd_f64(a.cost));
            if self.fires(&sc, a.requests) {
                fired.insert(key.clone(), sc);
            }
        }
        let who = self.contributors(idx, &window.batches, fired.keys());
        // an identity firing with its owner is one incident, reported on the owner
        let mut folded: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for key in fired.keys().filter(|k| k.starts_with("identity/")) {
            let a = &who[key.as_str()];
            let owner = a.owners.iter().max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0))).map(|(o, _)| o.as_str());
            if let Some(o) = owner
                && fired.contains_key(&format!("owner/{o}"))
            {
                folded.entry(format!("owner/{o}")).or_default().push(key.clone());
            }
        }
        let folded_ids: BTreeSet<&String> = folded.values().flatten().collect();
        for (key, sc) in &fired {
            if folded_ids.contains(key) {
                continue;
            }
            let with = folded.get(key).cloned().unwrap_or_default();
            alerts.push(self.spike(key, sc, &with, (&accs[key.as_str()], &who[key.as_str()]), idx, now_ms));
        }
        // 3. the window joins the history
        self.absorb(idx, window.spend.into_iter().map(|(k, a)| (k, a.cost)));
        self.state.last_eval = Some(idx);
        alerts
    }

    fn spike(
        &mut self,
        key: &str,
        sc: &Score,
        with: &[String],
        (a, who): (&Spend, &Contributors),
        idx: i64,
        now_ms: i64,
    ) -> Alert {
        let (scope, name) = key.split_once('/').expect("series key");
        let owner = if scope == "owner" {
            name.to_string()
        } else {
            who.owners.iter().max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0))).map(|(o, _)| o.clone()).unwrap_or_default()
        };
        // the identity named: the identity series' own, or the one folded in, or the owner's top identity
        let identity = if scope == "identity" {
            name.to_string()
        } else {
            with.first().map(|k| k.trim_start_matches("identity/").to_string()).unwrap_or_default()
        };
        let start_ms = idx * self.size.ms;
        let impact = sc.actual - sc.expected;
        let percent = if sc.expected > 0.0 { Some(impact / sc.expected * 100.0) } else { None };
        let mut controls = vec!["NIST AI RMF MEASURE 2.7", "NIST AI RMF MANAGE 4.1"];
        if !identity.is_empty() {
            controls.push("OWASP Non-Human Identities Top 10 (NHI2 secret leakage, NHI7 long-lived secrets)");
        }
        let mut series: BTreeSet<String> = with.iter().cloned().collect();
        series.insert(key.to_string());
        let window = self.size.label.clone();
        let data = serde_json::json!({
            "owner": owner,
            "risk_owner": who.risk_owner,
            "identity": identity,
            "scope": scope,
            "series": series,
            "window": window,
            "window_start": rfc3339_ms(start_ms),
            "window_end": rfc3339_ms(start_ms + self.size.ms),
            "actual_usd": usd2(sc.actual),
            "expected_usd": usd2(sc.expected),
            "upper_bound_usd": usd2(sc.upper),
            "impact_usd": usd2(impact),
            "impact_percent": percent.map(|p| format!("{p:.1}")),
            "score": (sc.score * 100.0).round() / 100.0,
            "method": sc.method.as_str(),
            "baseline_samples": sc.samples,
            "requests": a.requests,
            "top_models": top(&who.models, "model", self.cfg.top),
            "top_identities": top(&who.identities, "identity", self.cfg.top),
            "top_workflows": top(&who.workflows, "workflow", self.cfg.top),
            "controls": controls,
            "summary": format!(
                "{scope} {name} spent ${} in the {window} window from {}, expected ${} (upper bound ${})",
                usd2(sc.actual), rfc3339_ms(start_ms), usd2(sc.expected), usd2(sc.upper)
            ),
        });
        let alert = Alert::new(
            &self.source,
            AlertType::SpendSpike,
            key.to_string(),
            now_ms,
            &[key, &window, &start_ms.to_string()],
            data,
        );
        self.state.incidents.insert(
            alert.id.clone(),
            Incident {
                alert_id: alert.id.clone(),
                subject: key.to_string(),
                owner,
                risk_owner: who.risk_owner.clone(),
                identity,
                since_ms: start_ms,
                expected_usd: usd2(sc.expected),
                actual_usd: usd2(sc.actual),
                series,
            },
        );
        alert
    }

    fn recovered(&self, inc: &Incident, idx: i64, start_ms: i64, accs: &KeyMap<Spend>, now_ms: i64) -> Alert {
        let actual = accs.get(inc.subject.as_str()).map(|a| a.cost).unwrap_or(0);
        let data = serde_json::json!({
            "owner": inc.owner,
            "risk_owner": inc.risk_owner,
            "identity": inc.identity,
            "spike_id": inc.alert_id,
            "window": self.size.label,
            "spike_window_start": rfc3339_ms(inc.since_ms),
            "recovered_window_start": rfc3339_ms(start_ms),
            "duration_windows": idx - inc.since_ms / self.size.ms,
            "spike_actual_usd": inc.actual_usd,
            "expected_usd": inc.expected_usd,
            "actual_usd": format_usd_rounded(actual, 2),
            "summary": format!("{} is back within its baseline", inc.subject),
        });
        Alert::new(&self.source, AlertType::SpendRecovered, inc.subject.clone(), now_ms, &[&inc.alert_id], data)
    }

    /// Collects a closed window's rows: the spend per series, and the batch for the contributors.
    fn collect(&mut self, rows: &RecordBatch) {
        let cost = rows.column_by_name("cost_usd").expect("cost_usd").as_primitive::<Decimal128Type>();
        let req = rows.column_by_name("requests").expect("requests").as_primitive::<Int64Type>();
        let start =
            rows.column_by_name("window_start").expect("window_start").as_primitive::<TimestampMillisecondType>();
        let late = rows.column_by_name("late").map(|c| c.as_boolean().clone());
        let s = |n: &str| crate::dims::Strs::of(rows, n);
        let (owner, identity) = (s("owner"), s("identity"));
        self.calls += 1;
        let call = self.calls;
        // summed per window, owner and identity first, with the batch's own strings as keys: each series key
        // is then built and looked up once per pair in the batch, not once per row and scope (a rollup has
        // several rows per identity and hour: one per model and workflow)
        let mut pairs: FastMap<(i64, &str, &str), Spend> = FastMap::default();
        for r in 0..rows.num_rows() {
            if late.as_ref().is_some_and(|l| l.value(r)) {
                continue; // late rows reach the history on the next start, from the lake
            }
            let idx = start.value(r).div_euclid(self.size.ms);
            if self.state.last_eval.is_some_and(|l| idx <= l) {
                continue;
            }
            let a = pairs.entry((idx, owner.value(r), identity.value(r))).or_default();
            a.cost += if cost.is_null(r) { 0 } else { cost.value(r) };
            a.requests += req.value(r);
        }
        // keys are built in a reused buffer and copied only when first seen
        let mut key = String::new();
        for ((idx, o, ident), s) in pairs {
            let window = self.pending.entry(idx).or_default();
            if window.call != call {
                window.call = call;
                window.batches.push(rows.clone());
            }
            for scope in &self.cfg.scopes {
                if !series_key(&mut key, *scope, o, ident) {
                    continue;
                }
                let a = match window.spend.get_mut(key.as_str()) {
                    Some(a) => a,
                    None => window.spend.entry(key.clone()).or_default(),
                };
                a.cost += s.cost;
                a.requests += s.requests;
            }
        }
    }

    /// The contributors of the series `keys` in window `idx`, read from the window's rows as
    /// [`SpikeDetector::collect`] took them (one pass for all the series).
    fn contributors<'k>(
        &self,
        idx: i64,
        batches: &[RecordBatch],
        keys: impl Iterator<Item = &'k String>,
    ) -> KeyMap<Contributors> {
        let mut out: KeyMap<Contributors> = keys.map(|k| (k.clone(), Contributors::default())).collect();
        if out.is_empty() {
            return out;
        }
        let (mut m, mut key) = (String::new(), String::new());
        for rows in batches {
            let s = |n: &str| crate::dims::Strs::of(rows, n);
            let (owner, risk, identity, provider, model, workflow) =
                (s("owner"), s("risk_owner"), s("identity"), s("provider"), s("model"), s("workflow"));
            let cost = rows.column_by_name("cost_usd").expect("cost_usd").as_primitive::<Decimal128Type>();
            let start =
                rows.column_by_name("window_start").expect("window_start").as_primitive::<TimestampMillisecondType>();
            let late = rows.column_by_name("late").map(|c| c.as_boolean().clone());
            for r in 0..rows.num_rows() {
                // the rows collect took: the batch is listed under this window only if they were after the last
                // evaluated window then, which holds for all of the window's rows
                if late.as_ref().is_some_and(|l| l.value(r)) || start.value(r).div_euclid(self.size.ms) != idx {
                    continue;
                }
                let c = if cost.is_null(r) { 0 } else { cost.value(r) };
                let (o, ident) = (owner.value(r), identity.value(r));
                for scope in &self.cfg.scopes {
                    if !series_key(&mut key, *scope, o, ident) {
                        continue;
                    }
                    let Some(a) = out.get_mut(key.as_str()) else { continue };
                    bump(&mut a.owners, o, c);
                    if a.risk_owner.is_empty() {
                        a.risk_owner = risk.value(r).to_string();
                    }
                    m.clear();
                    m.push_str(provider.value(r));
                    m.push('/');
                    m.push_str(model.value(r));
                    bump(&mut a.models, &m, c);
                    bump(&mut a.workflows, workflow.value(r), c);
                    if *scope == Scope::Owner {
                        bump(&mut a.identities, ident, c);
                    }
                }
            }
        }
        out
    }
}

/// Writes the series key of `scope` for a row into `key`; false when the row has no such series.
fn series_key(key: &mut String, scope: Scope, owner: &str, identity: &str) -> bool {
    key.clear();
    match scope {
        Scope::Owner => {
            key.push_str("owner/");
            key.push_str(owner);
        }
        // the overflow bucket of a window's long tail is many identities, not one
        Scope::Identity if !identity.is_empty() && identity != crate::window::OVERFLOW => {
            key.push_str("identity/");
            key.push_str(identity);
        }
        Scope::Identity => return false,
    }
    true
}

/// Adds `c` to `k`'s sum, copying the key only when it is new.
fn bump(map: &mut BTreeMap<String, i128>, k: &str, c: i128) {
    match map.get_mut(k) {
        Some(v) => *v += c,
        None => {
            map.insert(k.to_string(), c);
        }
    }
}

impl Detector for SpikeDetector {
    fn name(&self) -> &'static str {
        "spike"
    }

    fn on_closed(&mut self, e: &Emitted, _now_ms: i64) -> Vec<Alert> {
        if e.size.ms == self.size.ms {
            for rows in e.parts.iter().filter(|b| b.num_rows() > 0) {
                self.collect(rows);
            }
        }
        Vec::new()
    }

    fn on_watermark(&mut self, closed_through_ms: Option<i64>, now_ms: i64) -> Vec<Alert> {
        // windows whose end <= the watermark (all collected ones on a final flush)
        let through = match closed_through_ms {
            Some(w) => w.div_euclid(self.size.ms), // exclusive
            None => self.pending.keys().next_back().map_or(i64::MIN, |i| i + 1),
        };
        let mut alerts = Vec::new();
        while let Some((&idx, _)) = self.pending.first_key_value() {
            if idx >= through {
                break;
            }
            let window = self.pending.remove(&idx).expect("pending window");
            // an empty window between the last evaluated one and this: alerting series read zero there
            if let Some(l) = self.state.last_eval
                && idx > l + 1
                && !self.state.incidents.is_empty()
            {
                alerts.extend(self.evaluate(l + 1, Pending::default(), now_ms));
            }
            alerts.extend(self.evaluate(idx, window, now_ms));
        }
        if closed_through_ms.is_some()
            && let Some(l) = self.state.last_eval
            && through - 1 > l
            && !self.state.incidents.is_empty()
        {
            alerts.extend(self.evaluate(l + 1, Pending::default(), now_ms));
        }
        alerts
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("spike state is JSON")
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), AggregateError> {
        self.state = if state.is_null() {
            SpikeState::default()
        } else {
            serde_json::from_value(state.clone()).map_err(|e| AggregateError::State(format!("spike state: {e}")))?
        };
        self.series.clear();
        self.pending.clear();
        Ok(())
    }

    fn history(&self) -> Option<(WindowSize, i64, i64)> {
        let l = self.state.last_eval?;
        let end = (l + 1) * self.size.ms;
        Some((self.size.clone(), end - self.history_ms(), end))
    }

    fn warm(&mut self, rows: &RecordBatch) -> Result<(), AggregateError> {
        let need = |n: &str| {
            rows.column_by_name(n).ok_or_else(|| AggregateError::State(format!("spike history: no column {n}")))
        };
        let start = need("window_start")?.as_primitive::<TimestampMillisecondType>();
        let (owner, identity) = (need("owner")?.as_string::<i32>(), need("identity")?.as_string::<i32>());
        let cost = need("cost_usd")?.as_primitive::<Decimal128Type>();
        let mut by_window: BTreeMap<i64, KeyMap<i128>> = BTreeMap::new();
        let mut key = String::new();
        for r in 0..rows.num_rows() {
            let idx = start.value(r).div_euclid(self.size.ms);
            let c = if cost.is_null(r) { 0 } else { cost.value(r) };
            let window = by_window.entry(idx).or_default();
            for scope in &self.cfg.scopes {
                if !series_key(&mut key, *scope, owner.value(r), identity.value(r)) {
                    continue;
                }
                match window.get_mut(key.as_str()) {
                    Some(v) => *v += c,
                    None => {
                        window.insert(key.clone(), c);
                    }
                }
            }
        }
        by_window.retain(|_, keys| !keys.is_empty());
        let n = by_window.len();
        for (idx, accs) in by_window {
            self.absorb(idx, accs);
        }
        tracing::info!(windows = n, series = self.series.len(), "spike baselines rebuilt from the lake");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};

    use super::*;
    use crate::testutil::{rollup_window, usd_column};

    /// A history holds the same costs, in either form, as a map of (window, cost) with the same adds and
    /// evictions: through dense and sparse phases, gaps, repeated and out-of-order windows.
    #[test]
    fn a_history_reads_like_a_map_of_window_costs_through_dense_and_sparse_phases() {
        let mut h = History::Sparse(VecDeque::new());
        let mut model: BTreeMap<i32, Cost16> = BTreeMap::new();
        let mut next = crate::testutil::xorshift(0x2545_f491_4f6c_dd1du64);
        let mut rnd = |n: u64| next() % n;
        let (mut rel, mut forms, mut keep) = (0i32, [0usize; 2], 0i32);
        for step in 0..20_000 {
            // phases of 500 steps: every window, then one window in 8, then a mix
            let gap = match (step / 500) % 3 {
                0 => 1,
                1 => 8,
                _ => 1 + rnd(3) as i32,
            };
            let r = match rnd(20) {
                0 => rel,                                       // the same window again
                1 if rel > keep + 3 => rel - 1 - rnd(3) as i32, // an earlier window still held
                _ => rel + gap,
            };
            rel = rel.max(r);
            let x = rnd(1000) as f64 / 8.0; // 0 now and then, as a window with calls and no cost
            h.add(r, x);
            let m = model.entry(r).or_default();
            *m = m.plus(x);
            if rnd(10) == 0 {
                keep = rel - 200 - rnd(50) as i32;
                h.evict_before(keep);
                model.retain(|&i, _| i >= keep);
            }
            forms[usize::from(matches!(h, History::Dense { .. }))] += 1;
            assert_eq!(h.is_empty(), model.is_empty(), "step {step}");
            for q in (rel - 260)..=(rel + 2) {
                assert_eq!(h.get(q), model.get(&q).copied().unwrap_or_default(), "step {step}, window {q}");
            }
        }
        assert!(forms[0] > 1000 && forms[1] > 1000, "both forms were exercised: {forms:?}");
        // a dense history of every window takes 2 bytes a window, a sparse one 8 a window with spend
        let mut dense = History::Sparse(VecDeque::new());
        (0..1345).for_each(|i| dense.add(i, 1.0));
        let History::Dense { costs, .. } = &dense else { panic!("a series with spend in every window is dense") };
        assert!(costs.capacity() < 1345 * 3 / 2, "capacity {}", costs.capacity());
        // a window with calls and no cost, the newest, is still held once the history turns sparse
        let mut h = History::Sparse(VecDeque::new());
        (0..20).for_each(|i| h.add(i, 1.0));
        h.add(200, 0.0);
        assert!(matches!(h, History::Sparse(_)), "{h:?}");
        h.evict_before(50);
        assert!(!h.is_empty());
        assert_eq!(h.get(200), Cost16(0));
        // a dense history: a window before its start, then one after a long gap, neither allocating the gap
        let mut h = History::Sparse(VecDeque::new());
        (100..140).for_each(|i| h.add(i, 2.0));
        assert!(matches!(h, History::Dense { .. }));
        h.add(90, 1.0);
        h.add(1_000_000_000, 3.0);
        let History::Sparse(v) = &h else { panic!("a long gap makes the history sparse: {h:?}") };
        assert_eq!(v.len(), 42);
        let usd = |rel| h.get(rel).usd();
        assert_eq!((usd(90), usd(99), usd(139), usd(1_000_000_000)), (1.0, 0.0, 2.0, Cost16::new(3.0).usd()));
        // a dense history whose newest window has calls and no cost keeps that window when it turns sparse
        let mut h = History::Sparse(VecDeque::new());
        (0..20).for_each(|i| h.add(i, 1.0));
        h.add(20, 0.0);
        h.add(-100, 1.0);
        assert!(matches!(h, History::Sparse(_)), "{h:?}");
        h.evict_before(20);
        assert!(!h.is_empty(), "{h:?}");
    }

    /// A history's cost reads back within 0.034 % over twelve orders of magnitude, in order; 0 is 0, and
    /// no cost above 0 reads as 0.
    #[test]
    fn a_history_cost_is_two_bytes_within_a_thirtieth_of_a_percent() {
        assert_eq!(std::mem::size_of::<Cost16>(), 2);
        let mut last = Cost16(0);
        let mut worst = 0f64;
        let mut usd = 1e-6;
        while usd < 1e12 {
            let c = Cost16::new(usd);
            worst = worst.max((c.usd() - usd).abs() / usd);
            assert!(c.0 >= last.0, "{usd}: {c:?} after {last:?}");
            last = c;
            usd *= 1.000_37;
        }
        assert!(worst <= 0.000_34, "worst relative error {worst}");
        assert!(worst > 0.000_3, "the scale is as fine as stated: {worst}");
        for exact in [0.5, 1.0, 2.0, 1024.0] {
            assert_eq!(Cost16::new(exact).usd(), exact);
        }
        assert_eq!((Cost16::new(0.0), Cost16::new(-1.0), Cost16::new(f64::NAN)), (Cost16(0), Cost16(0), Cost16(0)));
        assert_eq!(Cost16::new(1e-12), Cost16(1), "a cost below the scale reads as its bottom, not 0");
        assert_eq!(Cost16::new(1e30), Cost16(u16::MAX));
        assert!(Cost16(u16::MAX).usd() > 1.75e13, "the top of the scale is about 2^44 USD");
        // adding to a window re-rounds once: within the same bound of the exact sum
        let (a, b) = (12.345_678, 0.987_654);
        assert!((Cost16::new(a).plus(b).usd() - (a + b)).abs() / (a + b) < 0.000_7);
    }

    /// (owner, identity, cost, requests) rows of the hour `h` (hours since a Monday 00:00 UTC).
    fn hour(h: i64, rows: &[(&str, &str, f64, i64)]) -> Emitted {
        let t0 = 1_793_059_200_000 + h * HOUR_MS; // 2026-10-26, a Monday
        let mut e = rollup_window(rows.len(), "1h", |name| -> Option<ArrayRef> {
            Some(match name {
                "window_start" => Arc::new(TimestampMillisecondArray::from(vec![t0; rows.len()]).with_timezone("UTC")),
                "window_end" => {
                    Arc::new(TimestampMillisecondArray::from(vec![t0 + HOUR_MS; rows.len()]).with_timezone("UTC"))
                }
                "owner" => Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                "identity" => Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                "model" => Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "gpt-4o"))),
                "provider" => Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "openai"))),
                "workflow" => Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "rag"))),
                "cost_usd" => usd_column(rows.iter().map(|r| Some(format!("{:.6}", r.2)))),
                "requests" => Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
                _ => return None,
            })
        });
        e.size = WindowSize::parse("1h").unwrap();
        e
    }

    /// A normal hour of a team with a weekly and daily pattern and +-10 % deterministic noise.
    fn normal(h: i64, base: f64) -> f64 {
        let how = h.rem_euclid(168);
        let (day, hod) = (how / 24, how % 24);
        let daily = if (8..19).contains(&hod) { 3.0 } else { 1.0 };
        let weekly = if day >= 5 { 0.5 } else { 1.0 };
        // splitmix64 of the hour: +-10 %, different every week
        let mut z = (h as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let noise = ((z ^ (z >> 31)) % 2001) as f64 / 10_000.0 - 0.1;
        base * daily * weekly * (1.0 + noise)
    }

    /// The window index of test hour `h`.
    fn ix(h: i64) -> i64 {
        1_793_059_200_000 / HOUR_MS + h
    }

    fn det() -> SpikeDetector {
        SpikeDetector::new("aifinops/t", SpikeConfig::default()).unwrap()
    }

    /// Feeds hours `from..to` (cost from `f`) and returns the alerts.
    fn feed(
        d: &mut SpikeDetector,
        from: i64,
        to: i64,
        f: impl Fn(i64) -> Vec<(String, String, f64, i64)>,
    ) -> Vec<Alert> {
        let mut out = Vec::new();
        for h in from..to {
            let rows = f(h);
            let rows: Vec<(&str, &str, f64, i64)> =
                rows.iter().map(|(o, i, c, r)| (o.as_str(), i.as_str(), *c, *r)).collect();
            let e = hour(h, &rows);
            out.extend(d.on_closed(&e, 0));
            let end = 1_793_059_200_000 + (h + 1) * HOUR_MS;
            out.extend(d.on_watermark(Some(end), 0));
        }
        out
    }

    fn team(h: i64, mult: f64) -> Vec<(String, String, f64, i64)> {
        // two keys share the team's spend
        let c = normal(h, 10.0);
        vec![("search".into(), "key:a".into(), c * 0.5, 40), ("search".into(), "key:b".into(), c * 0.5 * mult, 40)]
    }

    #[test]
    fn six_weeks_of_weekly_seasonality_raise_nothing() {
        let mut d = det();
        let alerts = feed(&mut d, 0, 6 * 168, |h| team(h, 1.0));
        assert!(alerts.is_empty(), "{:#?}", alerts.first());
        assert_eq!(d.score(d.series.get("owner/search"), ix(6 * 168), 1.0).method, Method::Seasonal);
    }

    #[test]
    fn a_seasonal_spike_alerts_once_names_the_key_and_recovers_once() {
        let mut d = det();
        assert!(feed(&mut d, 0, 5 * 168, |h| team(h, 1.0)).is_empty());
        // key:b spends 20x for two hours (Friday 14:00-16:00), then back to normal
        let spike = 5 * 168 + 4 * 24 + 14;
        let alerts =
            feed(&mut d, 5 * 168, spike + 6, |h| team(h, if (spike..spike + 2).contains(&h) { 20.0 } else { 1.0 }));
        let kinds: Vec<&str> = alerts.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(kinds, ["aifinops.spend.spike", "aifinops.spend.recovered"], "{alerts:#?}");
        let a = &alerts[0];
        assert_eq!(a.subject, "owner/search");
        assert_eq!(a.data["identity"], "key:b", "the identity firing with its owner is folded in");
        assert_eq!(a.data["method"], "seasonal_median");
        assert_eq!(a.data["series"], serde_json::json!(["identity/key:b", "owner/search"]));
        assert_eq!(a.data["top_identities"][0]["identity"], "key:b");
        let actual: f64 = a.data["actual_usd"].as_str().unwrap().parse().unwrap();
        let expected: f64 = a.data["expected_usd"].as_str().unwrap().parse().unwrap();
        let upper: f64 = a.data["upper_bound_usd"].as_str().unwrap().parse().unwrap();
        assert!(actual > upper && upper > expected && expected > 20.0, "{a:#?}");
        assert!((actual - normal(spike, 10.0) * 10.5).abs() < 0.01);
        assert!(a.data["score"].as_f64().unwrap() >= 3.5);
        let controls = a.data["controls"].to_string();
        assert!(controls.contains("NIST AI RMF") && controls.contains("OWASP Non-Human"), "{controls}");
        let r = &alerts[1];
        assert_eq!(r.data["spike_id"], a.id.as_str());
        assert_eq!(r.data["recovered_window_start"], rfc3339_ms(1_793_059_200_000 + (spike + 2) * HOUR_MS));
        assert_eq!(r.data["duration_windows"], 2);
    }

    #[test]
    fn a_key_alone_spiking_alerts_on_the_identity() {
        let mut d = det();
        // twenty keys: one at 5x moves the team by 20 % (under the percent floor) while the key is far out
        let f = |h: i64, m: f64| -> Vec<(String, String, f64, i64)> {
            (0..20)
                .map(|k| {
                    let mult = if k == 3 { m } else { 1.0 };
                    ("search".to_string(), format!("key:{k}"), normal(h, 1.0) * mult, 20)
                })
                .collect()
        };
        assert!(feed(&mut d, 0, 4 * 168 + 10, |h| f(h, 1.0)).is_empty());
        let alerts = feed(&mut d, 4 * 168 + 10, 4 * 168 + 11, |h| f(h, 5.0));
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        assert_eq!(alerts[0].subject, "identity/key:3");
        assert_eq!(alerts[0].data["owner"], "search");
        assert_eq!(alerts[0].data["scope"], "identity");
    }

    #[test]
    fn noise_below_the_floors_raises_nothing() {
        let mut d = det();
        assert!(feed(&mut d, 0, 5 * 168, |h| vec![("tiny".into(), "k".into(), normal(h, 0.2), 30)]).is_empty());
        // 10x on a $0.20 hour: a huge z, but $1.8 over the expectation is under the $5 floor
        let a = feed(&mut d, 5 * 168, 5 * 168 + 1, |h| vec![("tiny".into(), "k".into(), normal(h, 0.2) * 10.0, 30)]);
        assert!(a.is_empty(), "{a:#?}");
        // $100 over, but 3 requests: under the request floor
        let a = feed(&mut d, 5 * 168 + 1, 5 * 168 + 2, |_| vec![("tiny".into(), "k".into(), 100.0, 3)]);
        assert!(a.is_empty(), "{a:#?}");
        // +40 % on a $100 hour with a tight baseline: over $5 but under the 50 % floor
        let mut d = det();
        assert!(feed(&mut d, 0, 5 * 168, |_| vec![("big".into(), "k".into(), 100.0, 30)]).is_empty());
        let a = feed(&mut d, 5 * 168, 5 * 168 + 1, |_| vec![("big".into(), "k".into(), 140.0, 30)]);
        assert!(a.is_empty(), "{a:#?}");
        let a = feed(&mut d, 5 * 168 + 1, 5 * 168 + 2, |_| vec![("big".into(), "k".into(), 160.0, 30)]);
        assert_eq!(a.len(), 1, "+60 % is over every floor: {a:#?}");
        assert_eq!((a[0].subject.as_str(), a[0].data["identity"].as_str()), ("owner/big", Some("k")));
    }

    #[test]
    fn warm_up_never_alerts_then_the_ewma_catches_a_runaway() {
        let mut d = det();
        // a runaway in the first day: warm-up, no alert
        let a = feed(&mut d, 0, 20, |h| team(h, if h == 12 { 30.0 } else { 1.0 }));
        assert!(a.is_empty(), "{a:#?}");
        // day 2-3: normal daily pattern under the EWMA, no alert
        assert!(feed(&mut d, 20, 60, |h| team(h, 1.0)).is_empty());
        // a runaway agent loop on key:b at 30x: the EWMA fires before any seasonal history exists
        let a = feed(&mut d, 60, 61, |h| team(h, 30.0));
        assert_eq!(a.len(), 1, "{a:#?}");
        assert_eq!(a[0].data["method"], "ewma");
        assert!(a[0].data["score"].as_f64().unwrap() >= 4.0);
        // it goes on: no second alert; then it stops: one recovery
        let a = feed(&mut d, 61, 66, |h| team(h, if h < 63 { 30.0 } else { 1.0 }));
        let kinds: Vec<&str> = a.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(kinds, ["aifinops.spend.recovered"]);
    }

    #[test]
    fn the_trailing_baseline_covers_the_second_to_fourth_week() {
        let mut d = det();
        assert!(feed(&mut d, 0, 10 * 24, |h| team(h, 1.0)).is_empty());
        let h = 10 * 24 + 11; // a Thursday 11:00
        assert_eq!(d.score(d.series.get("owner/search"), ix(h), 1.0).method, Method::Trailing);
        let a = feed(&mut d, 10 * 24, h + 1, |x| team(x, if x == h { 10.0 } else { 1.0 }));
        assert_eq!(a.len(), 1, "{a:#?}");
        assert_eq!(a[0].data["method"], "trailing_median");
    }

    #[test]
    fn a_restart_rebuilds_the_baseline_from_history_and_neither_forgets_nor_realerts() {
        let mut d = det();
        let spike = 5 * 168 + 30;
        let mut rows_seen: Vec<Emitted> = Vec::new();
        let mut all = Vec::new();
        for h in 0..=spike {
            let rows = team(h, if h == spike { 20.0 } else { 1.0 });
            let rows: Vec<(&str, &str, f64, i64)> =
                rows.iter().map(|(o, i, c, r)| (o.as_str(), i.as_str(), *c, *r)).collect();
            let e = hour(h, &rows);
            all.extend(d.on_closed(&e, 0));
            all.extend(d.on_watermark(Some(1_793_059_200_000 + (h + 1) * HOUR_MS), 0));
            rows_seen.push(e);
        }
        assert_eq!(all.len(), 1);
        // restart: the snapshot state plus the lake's rows of the history horizon
        let mut r = det();
        r.restore(&d.state()).unwrap();
        let (size, from, to) = r.history().unwrap();
        assert_eq!(size.label, "1h");
        assert_eq!(to, 1_793_059_200_000 + (spike + 1) * HOUR_MS);
        let hist: Vec<RecordBatch> = rows_seen
            .iter()
            .filter(|e| {
                let rows = e.rows();
                let s = rows.column_by_name("window_start").unwrap().as_primitive::<TimestampMillisecondType>();
                s.value(0) >= from && s.value(0) < to
            })
            .map(|e| e.rows())
            .collect();
        let hist = datafusion::arrow::compute::concat_batches(&hist[0].schema(), &hist).unwrap();
        r.warm(&hist).unwrap();
        // re-delivery of the spiked window after the restart: already evaluated, no second alert
        assert!(r.on_closed(&rows_seen[spike as usize], 0).is_empty());
        assert!(r.on_watermark(Some(to), 0).is_empty());
        // the next normal hour: the open incident recovers (once), with the spike's id
        let a = feed(&mut r, spike + 1, spike + 3, |h| team(h, 1.0));
        assert_eq!(a.len(), 1, "{a:#?}");
        assert_eq!(a[0].kind, "aifinops.spend.recovered");
        assert_eq!(a[0].data["spike_id"], all[0].id.as_str());
        // the rebuilt baseline equals the original one
        let (x, y) = (
            d.score(d.series.get("owner/search"), ix(spike + 1), 50.0),
            r.score(r.series.get("owner/search"), ix(spike + 1), 50.0),
        );
        assert_eq!((x.method, x.expected, x.samples), (y.method, y.expected, y.samples));
    }

    #[test]
    fn an_idle_gap_recovers_an_alerting_series() {
        let mut d = det();
        let a = feed(&mut d, 0, 60, |h| team(h, if h == 59 { 40.0 } else { 1.0 }));
        assert_eq!(a.len(), 1);
        // no traffic at all for 3 hours: the watermark moves on (idle partitions), the series reads zero
        let a = d.on_watermark(Some(1_793_059_200_000 + 63 * HOUR_MS), 0);
        assert_eq!(a.len(), 1, "{a:#?}");
        assert_eq!(a[0].kind, "aifinops.spend.recovered");
    }

    #[test]
    fn bad_settings_are_refused_with_the_setting_named() {
        let mut c = SpikeConfig { window: "7m".into(), ..SpikeConfig::default() };
        assert!(SpikeDetector::new("s", c.clone()).err().unwrap().to_string().contains("7m"));
        c.window = "1h".into();
        c.recover_z = 5.0;
        assert!(SpikeDetector::new("s", c).err().unwrap().to_string().contains("recover_z"));
    }
}
