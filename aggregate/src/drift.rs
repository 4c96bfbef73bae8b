//! Reconciliation: where gateways report their own cost, compare it with ours per owner, model and day
//! and alert `aifinops.cost.drift` when they differ by more than a percent (and an absolute floor).
//!
//! Only calls that both sides priced are compared: rollup rows where every call has a reported cost
//! (`reported_requests = requests`) and none is unpriced or without usage. Late correction rows are not
//! compared again (the day was reconciled when it closed).

use std::collections::BTreeMap;

use aifinops_schemas::alert::{Alert, AlertType};
use aifinops_schemas::money::{ONE_USD, format_usd, format_usd_rounded};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Decimal128Type, Int64Type, TimestampMillisecondType};

use crate::{Detector, Emitted};

/// The drift detector over closed `1d` windows.
pub struct DriftDetector {
    source: String,
    /// Percent in 10^-18 units (as parsed by `parse_usd`).
    percent: i128,
    min_usd: i128,
}

impl DriftDetector {
    /// `percent` and `min_usd` in 10^-18 units (e.g. `parse_usd("5")` for 5 %).
    pub fn new(source: &str, percent: i128, min_usd: i128) -> Self {
        DriftDetector { source: source.to_string(), percent, min_usd }
    }
}

#[derive(Default)]
struct Acc {
    ours: i128,
    reported: i128,
    requests: i64,
}

impl Detector for DriftDetector {
    fn name(&self) -> &'static str {
        "drift"
    }

    fn on_closed(&mut self, e: &Emitted, now_ms: i64) -> Vec<Alert> {
        if e.size.ms != 86_400_000 || e.num_rows() == 0 {
            return Vec::new();
        }
        let mut groups: BTreeMap<(String, String, String, i64), Acc> = BTreeMap::new();
        for b in &e.parts {
            let s = |n: &str| crate::dims::Strs::of(b, n);
            let i = |n: &str| b.column_by_name(n).expect("rollup column").as_primitive::<Int64Type>();
            let m = |n: &str| b.column_by_name(n).expect("rollup column").as_primitive::<Decimal128Type>();
            let (owner, model, provider) = (s("owner"), s("model"), s("provider"));
            let (requests, reported_n, unpriced, missing) =
                (i("requests"), i("reported_requests"), i("unpriced_requests"), i("usage_missing_requests"));
            let (cost, reported) = (m("cost_usd"), m("reported_cost_usd"));
            let late = b.column_by_name("late").expect("late").as_boolean();
            let start =
                b.column_by_name("window_start").expect("window_start").as_primitive::<TimestampMillisecondType>();
            for r in 0..b.num_rows() {
                let fair = !late.value(r)
                    && requests.value(r) > 0
                    && reported_n.value(r) == requests.value(r)
                    && unpriced.value(r) == 0
                    && missing.value(r) == 0
                    && !cost.is_null(r)
                    && !reported.is_null(r);
                if !fair {
                    continue;
                }
                let a = groups
                    .entry((
                        owner.value(r).to_string(),
                        provider.value(r).to_string(),
                        model.value(r).to_string(),
                        start.value(r),
                    ))
                    .or_default();
                a.ours += cost.value(r);
                a.reported += reported.value(r);
                a.requests += requests.value(r);
            }
        }
        let mut alerts = Vec::new();
        for ((owner, provider, model, day_ms), a) in groups {
            let diff = a.ours - a.reported;
            if diff.abs() < self.min_usd {
                continue;
            }
            // |diff| / reported * 100 > percent, exact: |diff| * 100 * 10^6 > percent/10^12 * reported
            let pct_e6 = self.percent / 1_000_000_000_000;
            let over = a.reported == 0 || diff.abs() * 100_000_000 > pct_e6 * a.reported;
            if !over {
                continue;
            }
            let day = chrono::DateTime::from_timestamp_millis(day_ms)
                .map(|d| d.format("%Y-%m-%d").to_string())
                .unwrap_or_default();
            let diff_pct = if a.reported == 0 {
                serde_json::Value::Null
            } else {
                // percent with 2 decimals, as a decimal string (millionths of a percent, then 10^-18 units)
                serde_json::json!(format_usd_rounded(diff * 100_000_000 / a.reported * (ONE_USD / 1_000_000), 2))
            };
            alerts.push(Alert::new(
                &self.source,
                AlertType::CostDrift,
                format!("owner/{owner}"),
                now_ms,
                &[&owner, &provider, &model, &day],
                serde_json::json!({
                    "owner": owner,
                    "provider": provider,
                    "model": model,
                    "day": day,
                    "requests": a.requests,
                    "cost_usd": format_usd(a.ours),
                    "reported_cost_usd": format_usd(a.reported),
                    "diff_usd": format_usd(diff),
                    "diff_percent": diff_pct,
                    "reason": "the gateway's cost differs from the catalog price of the same calls: a stale or \
                               missing price on one side (cache discounts, long-context tiers, negotiated prices)",
                }),
            ));
        }
        alerts
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use aifinops_schemas::money::parse_usd;
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};

    use super::*;
    use crate::WindowSize;
    use crate::testutil::{rollup_window, usd_column};

    /// (owner, model, requests, reported_requests, cost, reported)
    type Row<'a> = (&'a str, &'a str, i64, i64, &'a str, Option<&'a str>);

    fn day(rows: &[Row<'_>]) -> Emitted {
        rollup_window(rows.len(), "1d", |name| -> Option<ArrayRef> {
            Some(match name {
                "owner" => Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                "model" => Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                "requests" => Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                "reported_requests" => Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
                "cost_usd" => usd_column(rows.iter().map(|r| Some(r.4))),
                "reported_cost_usd" => usd_column(rows.iter().map(|r| r.5)),
                _ => return None,
            })
        })
    }

    #[test]
    fn drift_beyond_the_percent_and_floor_alerts_once_per_owner_model_day() {
        let mut d = DriftDetector::new("aifinops/t", parse_usd("p", "5").unwrap(), parse_usd("m", "1").unwrap());
        let e = day(&[
            // Kong's cost ignores the cache discount: ours 78.925, theirs 102.925 -> -23.32 %
            ("search", "gpt-4o", 10_000, 10_000, "78.925", Some("102.925")),
            // within 5 %
            ("search", "claude", 100, 100, "100", Some("103")),
            // over 5 % but under the $1 floor
            ("ops", "gpt-4o", 10, 10, "0.50", Some("0.70")),
            // not every call has a reported cost: not comparable
            ("ops", "claude", 10, 5, "50", Some("10")),
        ]);
        let alerts = d.on_closed(&e, 0);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let a = &alerts[0];
        assert_eq!(a.kind, "aifinops.cost.drift");
        assert_eq!(a.data["diff_usd"], "-24");
        assert_eq!(a.data["diff_percent"], "-23.32");
        assert_eq!(a.data["day"], "2026-11-04");
        assert_eq!(a.owner(), "search");
        // the same day again (e.g. after a restart) yields the same alert id
        assert_eq!(d.on_closed(&e, 5)[0].id, a.id);
        // hourly windows are not reconciled
        let mut h = e;
        h.size = WindowSize::parse("1h").unwrap();
        assert!(d.on_closed(&h, 0).is_empty());
    }
}
