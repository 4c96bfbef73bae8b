//! Agentic retries and failures: `aifinops.retry.storm` when the cost of failed calls plus the cost of
//! retries exceeds a share of a workflow's spend in a closed window (an agent looping on errors burns money
//! before anyone reads a log).

use aifinops_schemas::alert::{Alert, AlertType};
use aifinops_schemas::money::{ONE_USD, format_usd, format_usd_rounded};
use datafusion::arrow::array::{Array, AsArray, Decimal128Array, RecordBatch};
use datafusion::arrow::datatypes::{Decimal128Type, Int64Type, TimestampMillisecondType};

use crate::keyhash::FastMap;
use crate::{Detector, Emitted};

/// The retry-storm detector over closed windows of one size.
pub struct RetryStormDetector {
    source: String,
    window_ms: i64,
    /// Share of the workflow's spend, in 10^-18 percent units (as parsed by `parse_usd`).
    share_percent: i128,
    min_usd: i128,
}

impl RetryStormDetector {
    pub fn new(source: &str, window_ms: i64, share_percent: i128, min_usd: i128) -> Self {
        RetryStormDetector { source: source.to_string(), window_ms, share_percent, min_usd }
    }

    /// The groups of one part of a closed window's rows over the thresholds.
    fn storms<'b>(&self, b: &'b RecordBatch) -> Vec<(Group<'b>, Acc)> {
        let s = |n: &str| crate::dims::Strs::of(b, n);
        let i = |n: &str| b.column_by_name(n).expect("rollup column").as_primitive::<Int64Type>();
        let m = |n: &str| b.column_by_name(n).expect("rollup column").as_primitive::<Decimal128Type>();
        let (owner, risk, workflow) = (s("owner"), s("risk_owner"), s("workflow"));
        let (requests, errors, retries) = (i("requests"), i("error_requests"), i("retry_requests"));
        let (cost, failed, retry) = (m("cost_usd"), m("failed_cost_usd"), m("retry_cost_usd"));
        let late = b.column_by_name("late").expect("late").as_boolean();
        let ts = |n: &str| b.column_by_name(n).expect("rollup column").as_primitive::<TimestampMillisecondType>();
        let (start, end) = (ts("window_start"), ts("window_end"));
        let v = |c: &Decimal128Array, r: usize| if c.is_null(r) { 0 } else { c.value(r) };
        // keys borrow the batch's strings (no allocation per row); ordered once for the alerts
        let key = |r: usize| (owner.value(r), risk.value(r), workflow.value(r), start.value(r));
        let live = |r: &usize| !late.value(*r);
        // A group needs `min_usd` of failed and retried spend to alert, and only rows with some hold any: the
        // groups are first summed over those rows alone, and the window's other rows are visited only when
        // a group reaches the floor (most windows have none, and then no row is hashed but the wasteful).
        let candidates: Option<FastMap<Group<'_>, i128>> = (self.min_usd > 0).then(|| {
            let mut wasted: FastMap<Group<'_>, i128> = FastMap::default();
            for r in (0..b.num_rows()).filter(live).filter(|&r| v(failed, r) != 0 || v(retry, r) != 0) {
                *wasted.entry(key(r)).or_default() += v(failed, r) + v(retry, r);
            }
            wasted.retain(|_, w| *w >= self.min_usd);
            wasted
        });
        if candidates.as_ref().is_some_and(|c| c.is_empty()) {
            return Vec::new();
        }
        let mut groups: FastMap<Group<'_>, Acc> = FastMap::default();
        for r in (0..b.num_rows()).filter(live) {
            let k = key(r);
            if candidates.as_ref().is_some_and(|c| !c.contains_key(&k)) {
                continue;
            }
            let a = groups.entry(k).or_default();
            let v = |c: &Decimal128Array| v(c, r);
            a.cost += v(cost);
            a.failed += v(failed);
            a.retry += v(retry);
            a.requests += requests.value(r);
            a.errors += errors.value(r);
            a.retries += retries.value(r);
            a.end_ms = end.value(r);
        }
        // only the groups over the thresholds are kept (to be ordered for the alerts), not every group
        groups
            .into_iter()
            .filter(|(_, a)| {
                let wasted = a.failed + a.retry;
                // wasted / cost * 100 >= share, exact: wasted * 100 * 10^6 >= share/10^12 * cost
                wasted >= self.min_usd
                    && a.cost != 0
                    && wasted * 100_000_000 >= self.share_percent / 1_000_000_000_000 * a.cost
            })
            .collect()
    }
}

/// A workflow's window: owner, risk owner, workflow, window start.
type Group<'a> = (&'a str, &'a str, &'a str, i64);

#[derive(Default)]
struct Acc {
    cost: i128,
    failed: i128,
    retry: i128,
    requests: i64,
    errors: i64,
    retries: i64,
    end_ms: i64,
}

impl Detector for RetryStormDetector {
    fn name(&self) -> &'static str {
        "retry_storm"
    }

    fn on_closed(&mut self, e: &Emitted, now_ms: i64) -> Vec<Alert> {
        if e.size.ms != self.window_ms {
            return Vec::new();
        }
        // a window's rows are in one part, its `__other__` rows (workflow `__other__`) in the next when it is
        // over the key cap: each part's groups are complete
        let mut storms: Vec<(Group<'_>, Acc)> = e.parts.iter().flat_map(|b| self.storms(b)).collect();
        storms.sort_unstable_by(|x, y| x.0.cmp(&y.0));
        let mut alerts = Vec::with_capacity(storms.len());
        for ((owner, risk, workflow, start_ms), a) in storms {
            let wasted = a.failed + a.retry;
            let iso = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|d| d.to_rfc3339()).unwrap_or_default();
            let share = format_usd_rounded(wasted * 100_000_000 / a.cost * (ONE_USD / 1_000_000), 2);
            alerts.push(Alert::new(
                &self.source,
                AlertType::RetryStorm,
                format!("owner/{owner}/workflow/{workflow}"),
                now_ms,
                &[owner, workflow, &start_ms.to_string(), &self.window_ms.to_string()],
                serde_json::json!({
                    "owner": owner,
                    "risk_owner": risk,
                    "workflow": workflow,
                    "window_start": iso(start_ms),
                    "window_end": iso(a.end_ms),
                    "cost_usd": format_usd(a.cost),
                    "failed_cost_usd": format_usd(a.failed),
                    "retry_cost_usd": format_usd(a.retry),
                    "wasted_percent": share,
                    "requests": a.requests,
                    "error_requests": a.errors,
                    "retry_requests": a.retries,
                    "reason": "failed calls and retries are a large share of this workflow's spend: an agent loop \
                               or a failing dependency",
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
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};

    use super::*;
    use crate::WindowSize;
    use crate::testutil::{rollup_window, usd_column};

    const H: i64 = 3_600_000;

    /// (owner, workflow, cost, failed cost, retry cost) of a rollup row.
    type Row<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str);

    /// Rollup rows of one closed hour (10:00-11:00), 10 requests each.
    fn hour(rows: &[Row<'_>]) -> Emitted {
        rollup_window(rows.len(), "1h", |name| -> Option<ArrayRef> {
            Some(match name {
                "owner" => Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                "workflow" => Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                "cost_usd" => usd_column(rows.iter().map(|r| Some(r.2))),
                "failed_cost_usd" => usd_column(rows.iter().map(|r| Some(r.3))),
                "retry_cost_usd" => usd_column(rows.iter().map(|r| Some(r.4))),
                "requests" => Arc::new(Int64Array::from(vec![10; rows.len()])),
                _ => return None,
            })
        })
    }

    #[test]
    fn a_workflow_burning_its_spend_on_failures_and_retries_alerts_once() {
        let mut d =
            RetryStormDetector::new("aifinops/t", H, parse_usd("p", "30").unwrap(), parse_usd("m", "5").unwrap());
        let e = hour(&[
            // agent loop: $40 of $60 on failed calls and retries, split over two rollup rows (two models)
            ("agents", "nightly", "50", "20", "15"),
            ("agents", "nightly", "10", "0", "5"),
            // healthy workflow: 2 % retries
            ("search", "rag", "100", "1", "1"),
            // a high share, but under the $5 floor
            ("ops", "triage", "4", "3", "0"),
        ]);
        let alerts = d.on_closed(&e, 0);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let a = &alerts[0];
        assert_eq!(a.kind, "aifinops.retry.storm");
        assert_eq!((a.data["owner"].as_str(), a.data["workflow"].as_str()), (Some("agents"), Some("nightly")));
        assert_eq!((a.data["failed_cost_usd"].as_str(), a.data["retry_cost_usd"].as_str()), (Some("20"), Some("20")));
        assert_eq!(a.data["wasted_percent"], "66.67");
        assert_eq!(d.on_closed(&e, 9)[0].id, a.id, "same window, same alert id");
        // other window sizes are not checked
        let mut day = e;
        day.size = WindowSize::parse("1d").unwrap();
        assert!(d.on_closed(&day, 0).is_empty());
    }

    /// A close emits its rows in parts (each window's rows in one part): every part's storms alert, in the
    /// order of their groups whatever the order of the parts.
    #[test]
    fn storms_in_every_part_of_a_close_alert_in_group_order() {
        let mut d =
            RetryStormDetector::new("aifinops/t", H, parse_usd("p", "30").unwrap(), parse_usd("m", "5").unwrap());
        let ten = hour(&[("agents", "nightly", "50", "20", "15"), ("search", "rag", "100", "1", "1")]);
        let mut nine = hour(&[("agents", "nightly", "60", "30", "0")]);
        // the same workflow's hour before, in a part of its own
        let part = nine.parts.pop().unwrap();
        let start = TimestampMillisecondArray::from(vec![9 * H]).with_timezone("UTC");
        let end = TimestampMillisecondArray::from(vec![10 * H]).with_timezone("UTC");
        let mut cols = part.columns().to_vec();
        cols[part.schema().index_of("window_start").unwrap()] = Arc::new(start);
        cols[part.schema().index_of("window_end").unwrap()] = Arc::new(end);
        let nine = RecordBatch::try_new(part.schema(), cols).unwrap();
        let e = Emitted { size: ten.size.clone(), parts: vec![ten.parts[0].clone(), nine] };
        let alerts = d.on_closed(&e, 0);
        let starts: Vec<&str> = alerts.iter().map(|a| a.data["window_start"].as_str().unwrap()).collect();
        assert_eq!(starts, ["1970-01-01T09:00:00+00:00", "1970-01-01T10:00:00+00:00"], "{alerts:?}");
        assert_eq!(alerts[0].data["failed_cost_usd"], "30");
        assert_eq!(alerts[1].data["retry_cost_usd"], "15");
    }

    /// Only rows with failed or retried spend pick the candidate groups, but a candidate's share is of all
    /// its spend: its rows without any waste count too (and without a floor every group is summed).
    #[test]
    fn a_candidate_workflows_share_counts_its_rows_without_waste() {
        for (min, other_cost, alerts) in [("5", "60", 1), ("5", "70", 0), ("0", "60", 1), ("0", "70", 0)] {
            let mut d =
                RetryStormDetector::new("aifinops/t", H, parse_usd("p", "30").unwrap(), parse_usd("m", min).unwrap());
            // $35 wasted of $110 (31.8 %) or of $120 (29.2 %); the second row wastes nothing
            let e = hour(&[("agents", "nightly", "50", "20", "15"), ("agents", "nightly", other_cost, "0", "0")]);
            let got = d.on_closed(&e, 0);
            assert_eq!(got.len(), alerts, "min {min}, other row {other_cost}: {got:?}");
            if let Some(a) = got.first() {
                assert_eq!((a.data["cost_usd"].as_str(), a.data["requests"].as_i64()), (Some("110"), Some(20)));
                assert_eq!(a.data["wasted_percent"], "31.82");
            }
        }
    }
}
