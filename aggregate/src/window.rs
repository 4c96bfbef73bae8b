//! Event-time tumbling windows on DataFusion: partial aggregation per micro-batch, merge of partials,
//! emission of windows the watermark has passed.
//!
//! Each micro-batch of priced events is aggregated with SQL into partial rollup rows for the finest
//! window size; coarser sizes are derived from the finer partial when they divide evenly (else from the
//! events). Partial rows wait in `pending` until [`WindowEngine::close`] merges them with the open state
//! (a second SQL: sums of sums) and emits every row whose `window_end <= watermark`. State is therefore
//! O(open windows x keys), never O(events).
//!
//! A row is flagged `late` when its window had already ended more than `allowed_lateness` before the
//! watermark when its events arrived. Late rows and rows for windows that closed earlier are emitted as
//! additional, additive rows: a window's total is always the SUM of its rows.

use aifinops_schemas::event::{DIMENSIONS, EVENT_COUNTS, EVENT_MONEY};
use aifinops_schemas::rollup::{LATE, REQUESTS, WINDOW_END, WINDOW_START, rollup_schema};
use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::AggregateError;

/// A window size, e.g. 1 minute, with its lake label (`1m`, `1h`, `1d`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSize {
    pub label: String,
    pub ms: i64,
}

impl WindowSize {
    /// Parses `30s`, `1m`, `15m`, `1h`, `1d`.
    pub fn parse(label: &str) -> Result<Self, AggregateError> {
        let bad = || AggregateError::Config(format!("window size {label:?} is not like 30s, 1m, 1h or 1d"));
        let (num, unit) = label.split_at(label.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
        let n: i64 = num.parse().map_err(|_| bad())?;
        let unit_ms = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        if n <= 0 {
            return Err(bad());
        }
        Ok(WindowSize { label: label.to_string(), ms: n * unit_ms })
    }
}

struct Series {
    size: WindowSize,
    /// Index of the finer series this one is derived from, if it divides evenly.
    from: Option<usize>,
    /// Partial rows not yet merged.
    pending: Vec<RecordBatch>,
    /// Merged rows of windows not yet emitted.
    open: Option<RecordBatch>,
}

/// The windowed aggregation of one pipeline.
pub struct WindowEngine {
    ctx: SessionContext,
    series: Vec<Series>,
    /// Most distinct keys per window (see [`WindowEngine::with_key_cap`]).
    key_cap: usize,
    /// Rows folded into `__other__` rows since start, for metrics.
    overflowed: u64,
}

/// The value the dimensions of keys beyond a window's key cap take (the owner is kept).
pub const OVERFLOW: &str = "__other__";

/// Rows emitted for one window size.
#[derive(Debug, Clone)]
pub struct Emitted {
    pub size: WindowSize,
    pub rows: RecordBatch,
}

fn measures_sql(from_events: bool) -> String {
    let mut cols =
        vec![if from_events { format!("count(*) AS {REQUESTS}") } else { format!("sum({REQUESTS}) AS {REQUESTS}") }];
    for c in EVENT_COUNTS {
        cols.push(format!("sum({c}) AS {c}"));
    }
    for m in EVENT_MONEY {
        cols.push(format!("sum({m}) AS {m}"));
    }
    cols.join(", ")
}

/// Pending partial rows of a series beyond which they are merged into the open state before the next close.
const COMPACT_ROWS: usize = 200_000;

fn ts_literal(ms: i64) -> String {
    format!("to_timestamp_millis({ms})")
}

impl WindowEngine {
    /// `sizes` in any order; the engine keeps them sorted finest first.
    pub fn new(mut sizes: Vec<WindowSize>) -> Result<Self, AggregateError> {
        if sizes.is_empty() {
            return Err(AggregateError::Config("at least one window size is required".into()));
        }
        sizes.sort_by_key(|s| s.ms);
        sizes.dedup_by_key(|s| s.ms);
        let mut series: Vec<Series> = Vec::new();
        for s in sizes {
            let from = series.iter().rposition(|f| s.ms % f.size.ms == 0);
            series.push(Series { size: s, from, pending: vec![], open: None });
        }
        let config = SessionConfig::new().with_target_partitions(1).with_batch_size(65536);
        Ok(WindowEngine { ctx: SessionContext::new_with_config(config), series, key_cap: usize::MAX, overflowed: 0 })
    }

    /// Bounds the state: a window holding more than `cap` distinct keys keeps the `cap` most expensive ones
    /// and folds the rest, per owner, into one row whose other dimensions are [`OVERFLOW`] (so the owner's
    /// totals stay exact; identity and model detail of the long tail is what is given up).
    pub fn with_key_cap(mut self, cap: usize) -> Self {
        self.key_cap = cap.max(1);
        self
    }

    /// Rows folded into overflow rows since start.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// Applies the key cap to merged rows (one row per window, key and late flag).
    async fn cap(&mut self, merged: RecordBatch) -> Result<RecordBatch, AggregateError> {
        if merged.num_rows() <= self.key_cap {
            return Ok(merged);
        }
        let starts = merged.column(0).as_primitive::<TimestampMillisecondType>();
        let late = merged.column_by_name(LATE).expect("late").as_boolean();
        let mut per: std::collections::HashMap<(i64, bool), usize> = std::collections::HashMap::new();
        for i in 0..merged.num_rows() {
            *per.entry((starts.value(i), late.value(i))).or_default() += 1;
        }
        let over: usize = per.values().map(|n| n.saturating_sub(self.key_cap)).sum();
        if over == 0 {
            return Ok(merged);
        }
        let kept = ["owner", "risk_owner"];
        let folded: Vec<String> = DIMENSIONS
            .iter()
            .map(|d| {
                if kept.contains(d) {
                    d.to_string()
                } else {
                    format!("CASE WHEN rn > {cap} THEN '{OVERFLOW}' ELSE {d} END AS {d}", cap = self.key_cap)
                }
            })
            .collect();
        let dims = DIMENSIONS.join(", ");
        let measures: Vec<String> =
            aifinops_schemas::rollup::count_measures().chain(EVENT_MONEY).map(String::from).collect();
        let q = format!(
            "SELECT {WINDOW_START}, {WINDOW_END}, {dims}, {agg}, {LATE} FROM (\
               SELECT {WINDOW_START}, {WINDOW_END}, {folded}, {measures}, {LATE} FROM (\
                 SELECT *, row_number() OVER (PARTITION BY {WINDOW_START}, {LATE} \
                   ORDER BY cost_usd DESC NULLS LAST, {REQUESTS} DESC, {dims}) AS rn FROM capped)) \
             GROUP BY {WINDOW_START}, {WINDOW_END}, {dims}, {LATE}",
            agg = measures_sql(false),
            folded = folded.join(", "),
            measures = measures.join(", "),
        );
        let out = self.sql("capped", merged, &q).await?;
        self.overflowed += over as u64;
        metrics::counter!("aifinops_window_overflow_keys_total").increment(over as u64);
        tracing::debug!(keys = over, cap = self.key_cap, "keys beyond the window key cap folded into __other__");
        Ok(out)
    }

    pub fn sizes(&self) -> Vec<WindowSize> {
        self.series.iter().map(|s| s.size.clone()).collect()
    }

    async fn sql(&self, table: &str, batch: RecordBatch, query: &str) -> Result<RecordBatch, AggregateError> {
        if batch.num_rows() == 0 {
            return Ok(RecordBatch::new_empty(rollup_schema()));
        }
        let _ = self.ctx.deregister_table(table);
        self.ctx
            .register_batch(table, batch)
            .map_err(|e| AggregateError::DataFusion { context: format!("registering {table}"), source: e })?;
        let df = self
            .ctx
            .sql(query)
            .await
            .map_err(|e| AggregateError::DataFusion { context: format!("planning {query}"), source: e })?;
        let out =
            df.collect().await.map_err(|e| AggregateError::DataFusion { context: "aggregating".into(), source: e })?;
        let _ = self.ctx.deregister_table(table);
        conform(out)
    }

    /// SQL that buckets `table` rows into windows of `size` (from raw events or from finer partial rows).
    fn bucket_sql(size: &WindowSize, table: &str, ts_col: &str, from_events: bool, late_cutoff_ms: i64) -> String {
        let start = format!("date_bin(INTERVAL '{} milliseconds', {ts_col}, to_timestamp_millis(0))", size.ms);
        let end = format!("({start} + INTERVAL '{} milliseconds')", size.ms);
        let dims = DIMENSIONS.join(", ");
        format!(
            "SELECT {start} AS {WINDOW_START}, {end} AS {WINDOW_END}, {dims}, {measures}, \
             ({end} <= {cutoff}) AS {LATE} FROM {table} GROUP BY {start}, {dims}, ({end} <= {cutoff})",
            measures = measures_sql(from_events),
            cutoff = ts_literal(late_cutoff_ms),
        )
    }

    /// Adds one micro-batch of (deduplicated) priced events. `watermark_ms` is the watermark before this
    /// batch; events whose window ended more than `allowed_lateness_ms` before it are flagged late.
    /// Returns the partial rows of the finest window size (used by the alert rules).
    pub async fn add(
        &mut self,
        events: &RecordBatch,
        watermark_ms: Option<i64>,
        allowed_lateness_ms: i64,
    ) -> Result<RecordBatch, AggregateError> {
        let cutoff = watermark_ms.map_or(0, |w| w.saturating_sub(allowed_lateness_ms).max(0));
        let mut partials: Vec<RecordBatch> = Vec::with_capacity(self.series.len());
        for i in 0..self.series.len() {
            let size = self.series[i].size.clone();
            let part = match self.series[i].from {
                Some(f) => {
                    let q = Self::bucket_sql(&size, "finer", WINDOW_START, false, cutoff);
                    self.sql("finer", partials[f].clone(), &q).await?
                }
                None => {
                    let q = Self::bucket_sql(&size, "events", "ts", true, cutoff);
                    self.sql("events", events.clone(), &q).await?
                }
            };
            if part.num_rows() > 0 {
                self.series[i].pending.push(part.clone());
            }
            partials.push(part);
            // compaction: partial rows waiting for the next close are bounded by keys, not by events
            let pending: usize = self.series[i].pending.iter().map(|b| b.num_rows()).sum();
            let open = self.series[i].open.as_ref().map_or(0, |b| b.num_rows());
            if pending > COMPACT_ROWS.max(open) {
                let mut batches = std::mem::take(&mut self.series[i].pending);
                batches.extend(self.series[i].open.take());
                let merged = self.merge(batches).await?;
                let merged = self.cap(merged).await?;
                self.series[i].open = Some(merged);
            }
        }
        Ok(partials.into_iter().next().expect("one series"))
    }

    async fn merge(&self, batches: Vec<RecordBatch>) -> Result<RecordBatch, AggregateError> {
        let all = concat_batches(&rollup_schema(), &batches)
            .map_err(|e| AggregateError::Arrow { context: "concatenating partials".into(), source: e })?;
        let dims = DIMENSIONS.join(", ");
        let q = format!(
            "SELECT {WINDOW_START}, {WINDOW_END}, {dims}, {measures}, {LATE} FROM partials \
             GROUP BY {WINDOW_START}, {WINDOW_END}, {dims}, {LATE}",
            measures = measures_sql(false)
        );
        self.sql("partials", all, &q).await
    }

    /// Merges pending partials into the open state and returns the rows of every window whose end is at
    /// or before `watermark_ms` (`None` = end of input: everything).
    pub async fn close(&mut self, watermark_ms: Option<i64>) -> Result<Vec<Emitted>, AggregateError> {
        let mut out = Vec::new();
        for i in 0..self.series.len() {
            let s = &mut self.series[i];
            if s.pending.is_empty() && s.open.is_none() {
                continue;
            }
            let mut batches = std::mem::take(&mut s.pending);
            if let Some(o) = s.open.take() {
                batches.push(o);
            }
            let size = s.size.clone();
            let merged = self.merge(batches).await?;
            let merged = self.cap(merged).await?;
            let (closed, open) = match watermark_ms {
                None => (merged, RecordBatch::new_empty(rollup_schema())),
                Some(w) => split_closed(&merged, w)?,
            };
            let s = &mut self.series[i];
            if open.num_rows() > 0 {
                s.open = Some(open);
            }
            if closed.num_rows() > 0 {
                out.push(Emitted { size, rows: closed });
            }
        }
        Ok(out)
    }

    /// Merged open state per window size, for the commit's state snapshot.
    pub async fn snapshot(&mut self) -> Result<Vec<(WindowSize, RecordBatch)>, AggregateError> {
        let mut out = Vec::new();
        for i in 0..self.series.len() {
            let mut batches = std::mem::take(&mut self.series[i].pending);
            if let Some(o) = self.series[i].open.take() {
                batches.push(o);
            }
            let merged = match batches.len() {
                0 => continue,
                // one batch is already one row per key (the output of a GROUP BY): no second merge
                1 => batches.pop().expect("one batch"),
                _ => self.merge(batches).await?,
            };
            self.series[i].open = Some(merged.clone());
            out.push((self.series[i].size.clone(), merged));
        }
        Ok(out)
    }

    /// Replaces all state with a snapshot (on start and on rollback).
    pub fn restore(&mut self, snapshot: Vec<(String, RecordBatch)>) -> Result<(), AggregateError> {
        for s in &mut self.series {
            s.pending.clear();
            s.open = None;
        }
        for (label, batch) in snapshot {
            let i = self.series_of(&label, &batch)?;
            self.series[i].open = Some(conform(vec![batch])?);
        }
        Ok(())
    }

    /// Adds open window rows of another pipeline's snapshot (a member of a shared lake that left without
    /// emitting them) to this one's: they are merged with the open state at the next close or snapshot.
    pub fn absorb(&mut self, snapshot: Vec<(String, RecordBatch)>) -> Result<(), AggregateError> {
        for (label, batch) in snapshot {
            let i = self.series_of(&label, &batch)?;
            self.series[i].pending.push(conform(vec![batch])?);
        }
        Ok(())
    }

    /// The series of a snapshot's window label, after checking the snapshot's columns.
    fn series_of(&self, label: &str, batch: &RecordBatch) -> Result<usize, AggregateError> {
        let want = rollup_schema();
        let names = |s: &datafusion::arrow::datatypes::Schema| -> Vec<String> {
            s.fields().iter().map(|f| f.name().clone()).collect()
        };
        if names(&batch.schema()) != names(&want) {
            return Err(AggregateError::State(format!(
                "the lake's window state has columns {:?}, this aifinops writes {:?}: the lake was written by \
                 another version; replay into a new lake directory",
                names(&batch.schema()),
                names(&want)
            )));
        }
        self.series.iter().position(|s| s.size.label == label).ok_or_else(|| {
            AggregateError::Config(format!(
                "state has window size {label} that is no longer configured; keep it in `windows` or start a new lake"
            ))
        })
    }

    /// Number of open (window, key) rows held, for metrics.
    pub fn open_rows(&self) -> usize {
        self.series
            .iter()
            .map(|s| {
                s.open.as_ref().map_or(0, |b| b.num_rows()) + s.pending.iter().map(|b| b.num_rows()).sum::<usize>()
            })
            .sum()
    }
}

/// Casts DataFusion output to the exact rollup schema (types and nullability).
fn conform(batches: Vec<RecordBatch>) -> Result<RecordBatch, AggregateError> {
    let schema = rollup_schema();
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        if b.num_rows() == 0 {
            continue;
        }
        let mut cols = Vec::with_capacity(schema.fields().len());
        for (i, f) in schema.fields().iter().enumerate() {
            let c = b.column(i);
            cols.push(if c.data_type() == f.data_type() {
                c.clone()
            } else {
                cast(c, f.data_type())
                    .map_err(|e| AggregateError::Arrow { context: format!("casting {}", f.name()), source: e })?
            });
        }
        out.push(
            RecordBatch::try_new(schema.clone(), cols)
                .map_err(|e| AggregateError::Arrow { context: "building rollup rows".into(), source: e })?,
        );
    }
    concat_batches(&schema, &out)
        .map_err(|e| AggregateError::Arrow { context: "concatenating rollup rows".into(), source: e })
}

fn split_closed(b: &RecordBatch, watermark_ms: i64) -> Result<(RecordBatch, RecordBatch), AggregateError> {
    let ends = b.column(1).as_primitive::<TimestampMillisecondType>();
    let closed: BooleanArray = ends.iter().map(|e| Some(e.is_some_and(|e| e <= watermark_ms))).collect();
    let open = datafusion::arrow::compute::not(&closed)
        .map_err(|e| AggregateError::Arrow { context: "splitting windows".into(), source: e })?;
    let f = |m: &BooleanArray| {
        filter_record_batch(b, m).map_err(|e| AggregateError::Arrow { context: "splitting windows".into(), source: e })
    };
    Ok((f(&closed)?, f(&open)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_sizes_parse() {
        assert_eq!(WindowSize::parse("1m").unwrap().ms, 60_000);
        assert_eq!(WindowSize::parse("1h").unwrap().ms, 3_600_000);
        assert_eq!(WindowSize::parse("1d").unwrap().ms, 86_400_000);
        assert_eq!(WindowSize::parse("30s").unwrap().ms, 30_000);
        assert!(WindowSize::parse("1w").is_err());
        assert!(WindowSize::parse("m").is_err());
        assert!(WindowSize::parse("0m").is_err());
    }
}

#[cfg(test)]
mod engine_tests {
    use super::*;
    use crate::testutil::{Ev, batch};
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Decimal128Type, Int64Type};

    const MIN: i64 = 60_000;
    const HOUR: i64 = 3_600_000;
    const T0: i64 = 1_764_460_800_000; // a midnight UTC

    fn engine() -> WindowEngine {
        WindowEngine::new(["1m", "1h", "1d"].iter().map(|s| WindowSize::parse(s).unwrap()).collect()).unwrap()
    }

    #[tokio::test]
    async fn keys_beyond_the_cap_fold_into_an_overflow_row_per_owner_and_totals_stay_exact() {
        let mut w = WindowEngine::new(vec![WindowSize::parse("1h").unwrap()]).unwrap().with_key_cap(3);
        // 10 identities of search (identity i spends i+1 units) and 2 of ops, in one hour, over two batches
        let idents: Vec<String> = (0..12).map(|i| format!("key-{i}")).collect();
        let evs: Vec<Ev<'_>> = (0..12)
            .map(|i| Ev {
                ts: T0 + i as i64 * MIN,
                id: i as u128,
                owner: if i < 10 { "search" } else { "ops" },
                identity: &idents[i],
                input: 1,
                cost: Some((i as i128 + 1) * 1_000),
            })
            .collect();
        w.add(&batch(&evs[..6]), None, HOUR).await.unwrap();
        w.add(&batch(&evs[6..]), None, HOUR).await.unwrap();
        let out = w.close(None).await.unwrap();
        let rows = &out[0].rows;
        assert_eq!(w.overflowed(), 9, "12 keys, cap 3");
        let ident = rows.column_by_name("identity").unwrap().as_string::<i32>();
        let owner = rows.column_by_name("owner").unwrap().as_string::<i32>();
        let cost = rows.column_by_name("cost_usd").unwrap().as_primitive::<Decimal128Type>();
        let req = rows.column_by_name("requests").unwrap().as_primitive::<Int64Type>();
        let mut got: Vec<(String, String, i128, i64)> = (0..rows.num_rows())
            .map(|i| (owner.value(i).to_string(), ident.value(i).to_string(), cost.value(i), req.value(i)))
            .collect();
        got.sort();
        // the three most expensive keys (ops' key-11 and key-10, search's key-9) stay; the rest fold per owner
        assert_eq!(
            got,
            vec![
                ("ops".into(), "key-10".into(), 11_000, 1),
                ("ops".into(), "key-11".into(), 12_000, 1),
                ("search".into(), OVERFLOW.into(), (1..=9).sum::<i128>() * 1_000, 9),
                ("search".into(), "key-9".into(), 10_000, 1),
            ]
        );
        let o = (0..rows.num_rows()).find(|i| ident.value(*i) == OVERFLOW).unwrap();
        assert_eq!(rows.column_by_name("model").unwrap().as_string::<i32>().value(o), OVERFLOW);
    }

    fn ev(ts: i64, owner: &str, input: i64, cost: Option<i128>) -> Ev<'_> {
        Ev { ts, id: ts as u128, owner, identity: "k", input, cost }
    }

    fn sum(rows: &[Emitted], label: &str, col: &str) -> i64 {
        rows.iter()
            .filter(|e| e.size.label == label)
            .map(|e| e.rows.column_by_name(col).unwrap().as_primitive::<Int64Type>().iter().flatten().sum::<i64>())
            .sum()
    }

    fn cost(rows: &[Emitted], label: &str) -> i128 {
        rows.iter()
            .filter(|e| e.size.label == label)
            .map(|e| {
                e.rows
                    .column_by_name("cost_usd")
                    .unwrap()
                    .as_primitive::<Decimal128Type>()
                    .iter()
                    .flatten()
                    .sum::<i128>()
            })
            .sum()
    }

    #[tokio::test]
    async fn windows_close_when_the_watermark_passes_their_end_and_totals_are_kept() {
        let mut w = engine();
        let evs = [
            ev(T0 + 10, "a", 5, Some(100)),
            ev(T0 + MIN + 5, "a", 7, Some(200)),
            ev(T0 + 2 * MIN, "b", 11, None),
            ev(T0 + 2 * MIN + 1, "b", 13, Some(1)),
        ];
        w.add(&batch(&evs), None, 24 * HOUR).await.unwrap();
        let closed = w.close(Some(T0 + 2 * MIN)).await.unwrap();
        // only the 1m windows [0,1) and [1,2) have ended
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].size.label, "1m");
        assert_eq!(sum(&closed, "1m", "requests"), 2);
        assert_eq!(sum(&closed, "1m", "input_tokens"), 12);
        assert_eq!(cost(&closed, "1m"), 300);
        // end of input: everything else, and the totals of every window size are the input's
        let rest = w.close(None).await.unwrap();
        assert_eq!(sum(&rest, "1m", "requests"), 2);
        for label in ["1h", "1d"] {
            assert_eq!(sum(&rest, label, "requests"), 4);
            assert_eq!(sum(&rest, label, "input_tokens"), 36);
            assert_eq!(sum(&rest, label, "unpriced_requests"), 1);
            assert_eq!(cost(&rest, label), 301);
        }
        assert_eq!(w.open_rows(), 0);
    }

    #[tokio::test]
    async fn partials_of_many_batches_merge_into_one_row_per_window_and_key() {
        let mut w = engine();
        for i in 0..5 {
            w.add(&batch(&[ev(T0 + i * 1000, "a", 1, Some(1))]), None, 24 * HOUR).await.unwrap();
        }
        let out = w.close(None).await.unwrap();
        for e in &out {
            assert_eq!(e.rows.num_rows(), 1, "{} rows merged", e.size.label);
        }
        assert_eq!(sum(&out, "1d", "requests"), 5);
    }

    #[tokio::test]
    async fn events_behind_the_allowed_lateness_are_additional_late_rows_not_dropped() {
        let mut w = engine();
        w.add(&batch(&[ev(T0 + 10, "a", 1, Some(10))]), None, 24 * HOUR).await.unwrap();
        let first = w.close(Some(T0 + 30 * HOUR)).await.unwrap();
        assert_eq!(sum(&first, "1h", "requests"), 1);
        // 30 h later an event for the first minute arrives (e.g. a batch API result)
        w.add(&batch(&[ev(T0 + 20, "a", 1, Some(10))]), Some(T0 + 30 * HOUR), 24 * HOUR).await.unwrap();
        let late = w.close(Some(T0 + 30 * HOUR)).await.unwrap();
        for e in &late {
            let flags = e.rows.column_by_name("late").unwrap().as_boolean();
            match e.size.label.as_str() {
                "1m" | "1h" => assert!(flags.value(0), "{} row flagged late", e.size.label),
                // the day window ended 6 h before the watermark: within 24 h of lateness
                _ => assert!(!flags.value(0)),
            }
        }
        assert_eq!(sum(&late, "1m", "requests") + sum(&first, "1m", "requests"), 2, "nothing dropped");
    }

    #[tokio::test]
    async fn snapshot_and_restore_keep_open_windows() {
        let mut w = engine();
        w.add(&batch(&[ev(T0, "a", 3, Some(5)), ev(T0 + HOUR, "b", 4, Some(6))]), None, 24 * HOUR).await.unwrap();
        let snap = w.snapshot().await.unwrap();
        let mut w2 = engine();
        w2.restore(snap.into_iter().map(|(s, b)| (s.label, b)).collect()).unwrap();
        let out = w2.close(None).await.unwrap();
        assert_eq!(sum(&out, "1d", "input_tokens"), 7);
        assert_eq!(cost(&out, "1h"), 11);
    }
}
