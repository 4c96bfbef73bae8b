//! Event-time tumbling windows on DataFusion: partial aggregation per micro-batch, merge of partials,
//! emission of windows the watermark has passed.
//!
//! Each micro-batch of priced events is aggregated by a DataFusion GROUP BY into partial rollup rows for the
//! finest window size; a coarser size that the finer divides takes those partial rows with their window bounds
//! moved (no second GROUP BY per batch; else it aggregates the events). Partial rows wait until their
//! window closes: [`WindowEngine::close`] merges the rows of the windows the watermark has passed (sums of
//! sums by window, late flag and key hash, [`crate::sums`]; skipped for a window whose rows are all in one
//! GROUP BY's output) and emits them.
//! Rows of windows still open are merged into the open state only when they outnumber it (compaction), so
//! a day window is not re-aggregated at every commit. State is therefore O(open windows x keys) within a
//! small factor, never O(events).
//!
//! A row is flagged `late` when its window had already ended more than `allowed_lateness` before the
//! watermark when its events arrived. Late rows and rows for windows that closed earlier are emitted as
//! additional, additive rows: a window's total is always the SUM of its rows.

use aifinops_schemas::event::{DIMENSIONS, EVENT_COUNTS, EVENT_MONEY, TS};
use aifinops_schemas::rollup::{LATE, REQUESTS, WINDOW_END, WINDOW_START, count_measures, rollup_schema};
use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::{FilterBuilder, cast, concat, filter, interleave, max, min, not};
use datafusion::arrow::datatypes::{
    DataType, Decimal128Type, Field, Int64Type, Schema, SchemaRef, TimestampMillisecondType, UInt64Type,
};
use datafusion::functions::expr_fn::date_bin;
use datafusion::functions_aggregate::count::count_all;
use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::prelude::{SessionConfig, SessionContext, col, lit};
use datafusion::scalar::ScalarValue;

use crate::AggregateError;
use crate::dims::{DIMS_PART, Dims};

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
    /// Index of the finer series this one is derived from (its partial rows re-bucketed), if it divides evenly.
    from: Option<usize>,
    /// Partial rows not yet merged, each batch one row per window, key and late flag (a batch's GROUP BY).
    pending: Vec<RecordBatch>,
    /// Rows restored from a snapshot or adopted, where a key may have several rows.
    unmerged: Vec<RecordBatch>,
    /// Merged rows of windows not yet emitted (one row per window, key and late flag over all of them: the
    /// key cap leaves its kept rows and its fold as two batches instead of copying them into one).
    open: Vec<RecordBatch>,
}

/// The windowed aggregation of one pipeline.
pub struct WindowEngine {
    ctx: SessionContext,
    series: Vec<Series>,
    /// Most distinct keys per window (see [`WindowEngine::with_key_cap`]).
    key_cap: usize,
    /// Rows folded into `__other__` rows since start, for metrics.
    overflowed: u64,
    /// The values of the state rows' dimension ids.
    dims: Dims,
}

/// The value the dimensions of keys beyond a window's key cap take (the owner is kept).
pub const OVERFLOW: &str = "__other__";

/// The dimensions a folded row keeps.
const CAP_KEPT: [&str; 2] = ["owner", "risk_owner"];

/// Whether column `name` is a dimension a row folded at the key cap gives up (set to [`OVERFLOW`]).
fn given_up(name: &str) -> bool {
    DIMENSIONS.contains(&name) && !CAP_KEPT.contains(&name)
}

/// Rows emitted for one window size by one close, in parts as the close found or merged them (not copied
/// into one batch): each window's rows are in one part, except that a window over the key cap has its
/// `__other__` rows in the part after its kept rows. The parts have the rollup columns with the dimensions
/// as dictionary columns, `Dictionary(UInt32, Utf8)` (the Parquet writer takes them as the strings they
/// stand for).
#[derive(Debug, Clone)]
pub struct Emitted {
    pub size: WindowSize,
    pub parts: Vec<RecordBatch>,
}

impl Emitted {
    pub fn num_rows(&self) -> usize {
        self.parts.iter().map(|b| b.num_rows()).sum()
    }

    /// The parts as one batch of [`rollup_schema`], dimensions as plain strings (tests).
    #[cfg(test)]
    pub(crate) fn rows(&self) -> RecordBatch {
        let plain: Vec<RecordBatch> = self
            .parts
            .iter()
            .map(|b| {
                let cols: Vec<ArrayRef> = b
                    .columns()
                    .iter()
                    .map(|c| match c.data_type() {
                        DataType::Dictionary(..) => cast(c, &DataType::Utf8).expect("a dictionary of strings"),
                        _ => c.clone(),
                    })
                    .collect();
                RecordBatch::try_new(rollup_schema(), cols).expect("rollup rows")
            })
            .collect();
        datafusion::arrow::compute::concat_batches(&rollup_schema(), &plain).expect("rollup rows")
    }
}

/// Pending partial rows of a series beyond which they are merged into the open state before the next close.
const COMPACT_ROWS: usize = 200_000;

/// The two halves of a row's key hash: a 128-bit xxh3 of its dimensions. Rows of the engine's state carry
/// them after the rollup columns, so merges group by bounds, late flag and key (five fixed-width columns)
/// and never hash or compare the eleven dimension strings again; the dimensions of a merged
/// row are taken from its first input row. Two different keys share a hash with probability 2^-128 a pair
/// (with 10^6 keys in a window, ~10^-27). Not rollup columns: what the engine emits and snapshots has none.
const KEY_HI: &str = "__key_hi";
const KEY_LO: &str = "__key_lo";

/// The schema of the engine's state rows: the rollup columns with each dimension as its id in the engine's
/// dictionary ([`crate::dims`]), then the key hash.
fn state_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let mut fields: Vec<Field> = id_rollup_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(KEY_HI, DataType::UInt64, false));
            fields.push(Field::new(KEY_LO, DataType::UInt64, false));
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// The rollup columns with each dimension as its id: state rows without the key hash, as the snapshot has
/// them.
fn id_rollup_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| rollup_with_dimensions_as(DataType::UInt32)).clone()
}

/// The rollup schema with every dimension of type `t` (not null).
fn rollup_with_dimensions_as(t: DataType) -> SchemaRef {
    let fields: Vec<Field> = rollup_schema()
        .fields()
        .iter()
        .map(|f| {
            if DIMENSIONS.contains(&f.name().as_str()) {
                Field::new(f.name(), t.clone(), false)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// The key hash of one row's dimension values (in [`DIMENSIONS`] order).
fn key_hash<'a>(buf: &mut Vec<u8>, values: impl Iterator<Item = Option<&'a [u8]>>) -> u128 {
    buf.clear();
    for v in values {
        // length-prefixed, so ("ab", "c") and ("a", "bc") differ; a null (never written) is its own value
        match v {
            None => buf.extend_from_slice(&u32::MAX.to_le_bytes()),
            Some(v) => {
                buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
                buf.extend_from_slice(v);
            }
        }
    }
    xxhash_rust::xxh3::xxh3_128(buf)
}

/// Rollup rows as state rows: their dimensions as ids in `dict`, and their key hash added.
fn with_keys(rows: RecordBatch, dict: &mut Dims) -> Result<RecordBatch, AggregateError> {
    let dims = DIMENSIONS
        .iter()
        .map(|d| {
            rows.column_by_name(d)
                .map(|c| c.as_string::<i32>())
                .ok_or_else(|| AggregateError::State(format!("rollup rows without dimension {d}")))
        })
        .collect::<Result<Vec<&StringArray>, _>>()?;
    let n = rows.num_rows();
    let (mut hi, mut lo) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    for i in 0..n {
        let h = key_hash(&mut buf, dims.iter().map(|c| c.is_valid(i).then(|| c.value(i).as_bytes())));
        hi.push((h >> 64) as u64);
        lo.push(h as u64);
    }
    let rollup = rollup_schema();
    let mut cols = Vec::with_capacity(rollup.fields().len() + 2);
    for (f, c) in rollup.fields().iter().zip(rows.columns()) {
        cols.push(match DIMENSIONS.iter().position(|d| d == f.name()) {
            Some(d) => Arc::new(dict.intern(d, c.as_string::<i32>())?) as ArrayRef,
            // a measure that is zero (or null) in every row is kept as the shared column
            None => crate::zeros::compact(c.clone()),
        });
    }
    cols.push(Arc::new(UInt64Array::from(hi)));
    cols.push(Arc::new(UInt64Array::from(lo)));
    RecordBatch::try_new(state_schema(), cols)
        .map_err(|e| AggregateError::Arrow { context: "adding key hashes".into(), source: e })
}

/// State rows without the key hash (the same arrays, dimensions as ids), as the snapshot has them.
fn strip_keys(rows: &RecordBatch) -> RecordBatch {
    let n = id_rollup_schema().fields().len();
    RecordBatch::try_new(id_rollup_schema(), rows.columns()[..n].to_vec()).expect("state rows hold the rollup columns")
}

/// The schema of the rows the engine emits ([`Emitted`]): the rollup columns, each dimension as a
/// dictionary column (`Dictionary(UInt32, Utf8)`) whose keys are the state rows' ids and whose values are
/// the engine's dictionary of that dimension.
pub(crate) fn emitted_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            rollup_with_dimensions_as(DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8)))
        })
        .clone()
}

/// State rows as the rows a close emits ([`emitted_schema`]): each dimension's ids become the keys of a
/// dictionary column over `dict`'s values (no string is copied), every other column as it is.
fn to_emitted(rows: &RecordBatch, dict: &mut Dims) -> Result<RecordBatch, AggregateError> {
    let schema = emitted_schema();
    let mut cols = Vec::with_capacity(schema.fields().len());
    for (f, c) in schema.fields().iter().zip(rows.columns()) {
        cols.push(match DIMENSIONS.iter().position(|d| d == f.name()) {
            Some(d) => dict.dictionary(d, crate::dims::ids(c))?,
            None => c.clone(),
        });
    }
    RecordBatch::try_new(schema, cols)
        .map_err(|source| AggregateError::Arrow { context: "the dimension values of rollup rows".into(), source })
}

/// State rows (or rows of [`id_rollup_schema`]) as rollup rows: the dimension values of their ids in
/// `dict`, every other column as it is.
fn to_rollup(rows: &RecordBatch, dict: &Dims) -> Result<RecordBatch, AggregateError> {
    let rollup = rollup_schema();
    let mut cols = Vec::with_capacity(rollup.fields().len());
    for (f, c) in rollup.fields().iter().zip(rows.columns()) {
        cols.push(match DIMENSIONS.iter().position(|d| d == f.name()) {
            Some(d) => Arc::new(dict.strings(d, crate::dims::ids(c))?) as ArrayRef,
            None => c.clone(),
        });
    }
    RecordBatch::try_new(rollup, cols)
        .map_err(|source| AggregateError::Arrow { context: "the dimension values of rollup rows".into(), source })
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
            series.push(Series { size: s, from, pending: vec![], unmerged: vec![], open: vec![] });
        }
        let config = SessionConfig::new().with_target_partitions(1).with_batch_size(65536);
        Ok(WindowEngine {
            ctx: SessionContext::new_with_config(config),
            series,
            key_cap: usize::MAX,
            overflowed: 0,
            dims: Dims::new(),
        })
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

    /// Applies the key cap to merged rows (one row per window, key and late flag). Only the windows over
    /// the cap are touched: the first `cap` real keys are kept as they are, and the rest, together with the
    /// window's existing overflow rows, are summed per owner (see [`WindowEngine::fold_mask`]).
    fn cap(&mut self, merged: RecordBatch) -> Result<Vec<RecordBatch>, AggregateError> {
        let folded_dims = folded_dims(&merged);
        let is_overflow = |i: usize| folded_dims.iter().all(|c| c.value(i) == Dims::OVERFLOW_ID);
        let Some((mask, n_folded)) = self.fold_mask(&merged, is_overflow)? else { return Ok(vec![merged]) };
        let ae = |source| AggregateError::Arrow { context: "splitting rows at the key cap".into(), source };
        let keep = FilterBuilder::new(&not(&mask).map_err(ae)?).optimize().build();
        let fold = FilterBuilder::new(&mask).optimize().build();
        // the rows kept and the rows to fold (without copying the dimensions they give up), one column at a
        // time, each merged column let go once both sides have it: the cap runs on the largest batches the
        // engine holds, the day window's rows at its close
        let other: ArrayRef = Arc::new(UInt32Array::from(vec![Dims::OVERFLOW_ID; mask.true_count()]));
        let n_rollup = rollup_schema().fields().len();
        let (schema, columns, _) = merged.into_parts();
        let (mut kept, mut folding) = (Vec::with_capacity(columns.len()), Vec::with_capacity(n_rollup));
        for (i, c) in columns.into_iter().enumerate() {
            kept.push(crate::zeros::select(&c, keep.count(), |c| keep.filter(c)).map_err(ae)?);
            if i < n_rollup {
                folding.push(if given_up(schema.field(i).name()) {
                    other.clone()
                } else {
                    crate::zeros::select(&c, fold.count(), |c| fold.filter(c)).map_err(ae)?
                });
            }
        }
        let kept = RecordBatch::try_new(schema, kept).map_err(ae)?;
        Ok(vec![kept, self.fold(folding, n_folded)?])
    }

    /// Which merged rows the key cap folds: in each window (and late flag) over the cap, the rows beyond the
    /// `cap` most expensive real keys, ranked by cost (nulls last), then requests, then the key hash, so the
    /// choice is deterministic, and the window's existing overflow rows (`is_overflow`). `rows` needs the
    /// bounds, late flag, cost, requests and key hash, not the dimensions. `None`: nothing to fold.
    fn fold_mask(
        &self,
        rows: &RecordBatch,
        is_overflow: impl Fn(usize) -> bool,
    ) -> Result<Option<(BooleanArray, usize)>, AggregateError> {
        if rows.num_rows() <= self.key_cap {
            return Ok(None);
        }
        let col = |name: &str| {
            rows.column_by_name(name).ok_or_else(|| AggregateError::State(format!("rows to cap without column {name}")))
        };
        let starts = col(WINDOW_START)?.as_primitive::<TimestampMillisecondType>().values();
        let late = col(LATE)?.as_boolean();
        // rows per window and late flag; merged rows come in runs of one window, counted without a lookup
        let mut count: crate::keyhash::FastMap<(i64, bool), usize> = Default::default();
        let mut run: Option<((i64, bool), usize)> = None;
        for (i, &st) in starts.iter().enumerate() {
            let w = (st, late.value(i));
            match &mut run {
                Some((cur, n)) if *cur == w => *n += 1,
                _ => {
                    if let Some((cur, n)) = run.replace((w, 1)) {
                        *count.entry(cur).or_default() += n;
                    }
                }
            }
        }
        if let Some((cur, n)) = run {
            *count.entry(cur).or_default() += n;
        }
        // the rows of the windows over the cap
        let mut per: crate::keyhash::FastMap<(i64, bool), Vec<u32>> =
            count.into_iter().filter(|&(_, n)| n > self.key_cap).map(|(w, n)| (w, Vec::with_capacity(n))).collect();
        if per.is_empty() {
            return Ok(None);
        }
        for (i, &st) in starts.iter().enumerate() {
            if let Some(v) = per.get_mut(&(st, late.value(i))) {
                v.push(i as u32);
            }
        }
        let cost = col("cost_usd")?
            .as_primitive_opt::<Decimal128Type>()
            .ok_or_else(|| AggregateError::State("rows to cap have a cost_usd that is not a Decimal128".into()))?;
        let requests = col(REQUESTS)?.as_primitive::<Int64Type>().values();
        let hi = col(KEY_HI)?.as_primitive::<UInt64Type>().values();
        let lo = col(KEY_LO)?.as_primitive::<UInt64Type>().values();
        // most expensive first: a cost before no cost, then larger cost, more requests, smaller key hash
        let rank = |&a: &u32, &b: &u32| {
            let (a, b) = (a as usize, b as usize);
            let c = |i: usize| cost.is_valid(i).then(|| cost.value(i));
            match (c(a), c(b)) {
                (Some(x), Some(y)) => y.cmp(&x),
                (x, y) => y.is_some().cmp(&x.is_some()),
            }
            .then(requests[b].cmp(&requests[a]))
            .then(hi[a].cmp(&hi[b]))
            .then(lo[a].cmp(&lo[b]))
        };
        let mut fold = vec![false; rows.num_rows()];
        let mut n_folded = 0usize;
        for (_, window) in per {
            let (old, mut real): (Vec<u32>, Vec<u32>) = window.into_iter().partition(|&i| is_overflow(i as usize));
            old.iter().for_each(|&i| fold[i as usize] = true);
            if real.len() <= self.key_cap {
                continue;
            }
            // the top `cap` before the rest (neither half sorted): linear, not a sort of the window
            real.select_nth_unstable_by(self.key_cap, rank);
            for &i in &real[self.key_cap..] {
                fold[i as usize] = true;
                n_folded += 1;
            }
        }
        Ok((n_folded > 0).then(|| (BooleanArray::from(fold), n_folded)))
    }

    /// Sums rows the key cap folds (the rollup columns, dimensions as ids, the given-up ones already
    /// [`OVERFLOW`]) per window, late flag and kept dimensions.
    fn fold(&mut self, cols: Vec<ArrayRef>, n_folded: usize) -> Result<RecordBatch, AggregateError> {
        // their keys change: hashed again, from their values as every key hash is, once per distinct key (the
        // folded rows of a window have one key per owner)
        let n = cols.first().map_or(0, |c| c.len());
        let schema = id_rollup_schema();
        let dim_cols: Vec<&UInt32Array> = schema
            .fields()
            .iter()
            .zip(&cols)
            .filter(|(f, _)| DIMENSIONS.contains(&f.name().as_str()))
            .map(|(_, c)| crate::dims::ids(c))
            .collect();
        let (mut hi, mut lo) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut seen: crate::keyhash::FastMap<[u32; DIMENSIONS.len()], u128> = Default::default();
        let mut buf = Vec::with_capacity(256);
        for i in 0..n {
            let ids: [u32; DIMENSIONS.len()] = std::array::from_fn(|d| dim_cols[d].value(i));
            let h = *seen.entry(ids).or_insert_with(|| {
                key_hash(&mut buf, ids.iter().enumerate().map(|(d, &id)| Some(self.dims.get(d, id).as_bytes())))
            });
            hi.push((h >> 64) as u64);
            lo.push(h as u64);
        }
        let mut cols = cols;
        cols.push(Arc::new(UInt64Array::from(hi)));
        cols.push(Arc::new(UInt64Array::from(lo)));
        let folding = RecordBatch::try_new(state_schema(), cols)
            .map_err(|source| AggregateError::Arrow { context: "folding keys".into(), source })?;
        let folded = self.merge(vec![folding])?;
        self.overflowed += n_folded as u64;
        metrics::counter!("aifinops_window_overflow_keys_total").increment(n_folded as u64);
        tracing::debug!(keys = n_folded, cap = self.key_cap, "keys beyond the window key cap folded into __other__");
        Ok(folded)
    }

    pub fn sizes(&self) -> Vec<WindowSize> {
        self.series.iter().map(|s| s.size.clone()).collect()
    }

    /// Buckets raw events into windows of `size` with DataFusion: one GROUP BY of window start, dimensions and
    /// late flag, summing the measures. Its `window_end` column is the window start: the end is added after
    /// the query ([`with_ends`]), since timestamp + interval arithmetic goes through calendar math per row (4 %
    /// of replay's instructions). The late flag compares the start with the cutoff minus the size (the same
    /// test as end <= cutoff). The plan is built with expressions, not SQL text: parsing SQL for every
    /// micro-batch mapped ~5.5 MiB more of the binary's code (the SQL parser and planner) into memory.
    async fn bucket(
        &self,
        events: RecordBatch,
        size: &WindowSize,
        late_cutoff_ms: i64,
    ) -> Result<RecordBatch, AggregateError> {
        if events.num_rows() == 0 {
            return conform(vec![]);
        }
        let de = |context: &str| {
            let context = format!("{context} of {} windows", size.label);
            move |source| AggregateError::DataFusion { context, source }
        };
        let ts = |ms: i64| lit(ScalarValue::TimestampMillisecond(Some(ms), Some("UTC".into())));
        let start =
            date_bin(lit(ScalarValue::new_interval_mdn(0, 0, size.ms.saturating_mul(1_000_000))), col(TS), ts(0));
        let late = start.clone().lt_eq(ts(late_cutoff_ms.saturating_sub(size.ms)));
        let mut group = vec![start.alias(WINDOW_START)];
        group.extend(DIMENSIONS.iter().map(|d| col(*d)));
        group.push(late.alias(LATE));
        let mut measures = vec![count_all().alias(REQUESTS)];
        measures.extend(EVENT_COUNTS.iter().chain(EVENT_MONEY.iter()).map(|c| sum(col(*c)).alias(*c)));
        // the rollup's column order: bounds, dimensions, measures, late flag
        let mut out = vec![col(WINDOW_START), col(WINDOW_START).alias(WINDOW_END)];
        out.extend(
            DIMENSIONS
                .iter()
                .chain([REQUESTS].iter())
                .chain(EVENT_COUNTS.iter())
                .chain(EVENT_MONEY.iter())
                .map(|c| col(*c)),
        );
        out.push(col(LATE));
        let batches = self
            .ctx
            .read_batch(events)
            .and_then(|df| df.aggregate(group, measures))
            .and_then(|df| df.select(out))
            .map_err(de("planning the GROUP BY"))?
            .collect()
            .await
            .map_err(de("aggregating"))?;
        conform(batches)
    }

    /// Adds one micro-batch of (deduplicated) priced events. `watermark_ms` is the watermark before this
    /// batch; events whose window ended more than `allowed_lateness_ms` before it are flagged late.
    /// Returns the partial rows of the finest window size (used by the alert rules).
    ///
    /// Only the finest size is aggregated here (one GROUP BY per micro-batch); a coarser size takes the
    /// finer partial rows with their window bounds moved to its own windows, as rows to merge when the
    /// window closes (or at compaction), so each row goes through one GROUP BY per size, not two. The events
    /// are let go before any compaction runs: a micro-batch of events is as large as a tenth of the state, and
    /// compactions are where the engine's memory peaks.
    pub async fn add(
        &mut self,
        events: RecordBatch,
        watermark_ms: Option<i64>,
        allowed_lateness_ms: i64,
    ) -> Result<RecordBatch, AggregateError> {
        let cutoff = watermark_ms.map_or(0, |w| w.saturating_sub(allowed_lateness_ms).max(0));
        let mut partials: Vec<RecordBatch> = Vec::with_capacity(self.series.len());
        // the finest size's partial rows with their dimension values, for the alert rules
        let mut finest: Option<RecordBatch> = None;
        for i in 0..self.series.len() {
            let size = self.series[i].size.clone();
            let part = match self.series[i].from {
                Some(f) => {
                    let part = rebucket(&partials[f], &size, cutoff)?;
                    if part.num_rows() > 0 {
                        self.series[i].unmerged.push(part.clone());
                    }
                    part
                }
                None => {
                    let part = with_ends(self.bucket(events.clone(), &size, cutoff).await?, &size)?;
                    if finest.is_none() {
                        finest = Some(part.clone());
                    }
                    let part = with_keys(part, &mut self.dims)?;
                    if part.num_rows() > 0 {
                        self.series[i].pending.push(part.clone());
                    }
                    part
                }
            };
            partials.push(part);
        }
        drop(events);
        // compaction: partial rows waiting for the next close are bounded by keys, not by events
        for i in 0..self.series.len() {
            self.compact(i, watermark_ms)?;
        }
        drop(partials);
        Ok(finest.expect("the finest size aggregates the events"))
    }

    /// Merges state rows into one row per window, key and late flag. The sums see only the bounds, the late
    /// flag, the key hash and the measures, and give each merged row's first input row; the dimensions of
    /// each merged row are then taken from that input row.
    fn merge(&self, batches: Vec<RecordBatch>) -> Result<RecordBatch, AggregateError> {
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        if batches.is_empty() {
            return Ok(RecordBatch::new_empty(state_schema()));
        }
        let mut inputs = crate::sums::columns(batches);
        let (merged, from) = Self::merge_narrow(&mut inputs)?;
        assemble(&mut inputs, merged, &from)
    }

    /// [`WindowEngine::merge`] followed by the key cap, which ranks and splits the merged rows before their
    /// dimensions are taken: the rows it folds get only the dimensions they keep, no merged row is copied a
    /// second time, and each column is let go once used (this is the day window's compaction, the largest
    /// merge the engine does).
    fn merge_capped(&mut self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, AggregateError> {
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        if batches.is_empty() {
            return Ok(vec![]);
        }
        // the merge takes the inputs' measures (each let go once summed): only their dimensions are left
        let mut inputs = crate::sums::columns(batches);
        let (merged, from) = Self::merge_narrow(&mut inputs)?;
        let state = state_schema();
        let given_up_cols: Vec<usize> =
            (0..state.fields().len()).filter(|&i| given_up(state.field(i).name())).collect();
        let folded = {
            let dims: Vec<Vec<&UInt32Array>> = inputs
                .iter()
                .map(|b| given_up_cols.iter().map(|&c| crate::dims::ids(b[c].as_ref().expect("a dimension"))).collect())
                .collect();
            let is_overflow = |i: usize| {
                let (b, r) = from[i];
                dims[b].iter().all(|c| c.value(r) == Dims::OVERFLOW_ID)
            };
            self.fold_mask(&merged, is_overflow)?
        };
        let Some((mask, n_folded)) = folded else { return Ok(vec![assemble(&mut inputs, merged, &from)?]) };
        let ae = |source| AggregateError::Arrow { context: "splitting rows at the key cap".into(), source };
        let keep_mask = not(&mask).map_err(ae)?;
        let (mut keep_from, mut fold_from) = (Vec::new(), Vec::new());
        for (f, &at) in mask.values().iter().zip(&from) {
            if f { fold_from.push(at) } else { keep_from.push(at) }
        }
        drop(from);
        // the merged columns split one at a time, each let go once copied to both sides
        let narrow = narrow_schema();
        let mut merged: Vec<Option<ArrayRef>> = merged.into_parts().1.into_iter().map(Some).collect();
        let other: ArrayRef = Arc::new(UInt32Array::from(vec![Dims::OVERFLOW_ID; fold_from.len()]));
        let n_rollup = rollup_schema().fields().len();
        let (mut kept, mut folding) = (Vec::with_capacity(state.fields().len()), Vec::with_capacity(n_rollup));
        for (i, f) in state.fields().iter().enumerate() {
            let name = f.name().as_str();
            let (k, f) = if CAP_KEPT.contains(&name) {
                let [k, f] = take_rows(&mut inputs, i, [&keep_from, &fold_from])?;
                (k, f)
            } else if DIMENSIONS.contains(&name) {
                let [k] = take_rows(&mut inputs, i, [&keep_from])?;
                (k, other.clone())
            } else {
                let c = merged[narrow.index_of(name).map_err(ae)?]
                    .take()
                    .ok_or_else(|| AggregateError::State(format!("merged column {name} taken twice")))?;
                let (n_keep, n_fold) = (keep_from.len(), fold_from.len());
                (
                    crate::zeros::select(&c, n_keep, |c| filter(c, &keep_mask)).map_err(ae)?,
                    crate::zeros::select(&c, n_fold, |c| filter(c, &mask)).map_err(ae)?,
                )
            };
            kept.push(k);
            if i < n_rollup {
                folding.push(f);
            }
        }
        drop((inputs, merged));
        let kept = RecordBatch::try_new(state, kept).map_err(ae)?;
        Ok(vec![kept, self.fold(folding, n_folded)?])
    }

    /// The first half of a merge of (non-empty) state rows: the merged bounds, late flag, key hash and
    /// measures ([`narrow_schema`]), and for each merged row the (input batch, row) of its first input row.
    /// The group and measure columns of `inputs` are taken, their dimensions left.
    fn merge_narrow(inputs: &mut DimColumns) -> Result<(RecordBatch, Vec<(usize, usize)>), AggregateError> {
        if inputs.iter().any(|b| b.len() != state_schema().fields().len()) {
            return Err(AggregateError::State("rows to merge without their key hash".into()));
        }
        crate::sums::sum_by_key(inputs, &state_schema(), &narrow_schema(), KEY_HI, KEY_LO)
    }

    /// Returns the rows of every window whose end is at or before `watermark_ms` (`None` = end of input:
    /// everything), merged into one row per window, key and late flag. Only the closing windows' rows are
    /// merged; the rows of windows still open stay as they are until the compaction bound asks for a merge
    /// (so a day window is not re-aggregated at every commit).
    pub async fn close(&mut self, watermark_ms: Option<i64>) -> Result<Vec<Emitted>, AggregateError> {
        let mut out = Vec::new();
        for i in 0..self.series.len() {
            let s = &mut self.series[i];
            if s.pending.is_empty() && s.unmerged.is_empty() && s.open.is_empty() {
                continue;
            }
            let size = s.size.clone();
            // closing rows, each part flagged with whether it holds one row per window and key
            let mut closing: Vec<(RecordBatch, bool)> = Vec::new();
            let mut pending = Vec::new();
            for b in std::mem::take(&mut s.pending) {
                let (c, o) = split_at(b, watermark_ms)?;
                closing.extend(c.into_iter().map(|c| (c, true)));
                pending.extend(o);
            }
            let mut unmerged = Vec::new();
            for b in std::mem::take(&mut s.unmerged) {
                let (c, o) = split_at(b, watermark_ms)?;
                closing.extend(c.into_iter().map(|c| (c, false)));
                unmerged.extend(o);
            }
            let mut open = Vec::new();
            for b in std::mem::take(&mut s.open) {
                let (c, o) = split_at(b, watermark_ms)?;
                closing.extend(c.into_iter().map(|c| (c, true)));
                open.extend(o);
            }
            (s.pending, s.unmerged, s.open) = (pending, unmerged, open);
            self.compact(i, watermark_ms)?;
            if !closing.is_empty() {
                // each part capped on its own (a window's rows are all in one part), none copied into one
                // batch: at a close of many micro-batches' 1m rows that copy was the heap's peak
                let mut parts = Vec::new();
                for part in self.merge_parts(closing)? {
                    for b in self.cap(part)?.iter().filter(|b| b.num_rows() > 0) {
                        parts.push(to_emitted(b, &mut self.dims)?);
                    }
                }
                out.push(Emitted { size, parts });
            }
        }
        Ok(out)
    }

    /// Merges parts into one row per window, key and late flag. A window whose rows are all in one part
    /// that already has one row per key (a 1m window inside one micro-batch, the usual case) is passed
    /// through; only the windows spread over several parts are merged (into one more part). Every window's
    /// rows end up in one part.
    fn merge_parts(&self, parts: Vec<(RecordBatch, bool)>) -> Result<Vec<RecordBatch>, AggregateError> {
        if let [(_, true)] = parts.as_slice() {
            return Ok(parts.into_iter().map(|p| p.0).collect());
        }
        // window start -> the part it was first seen in, or usize::MAX once it needs a merge
        let mut seen: HashMap<i64, usize> = HashMap::new();
        for (p, (b, unique)) in parts.iter().enumerate() {
            let starts = b.column(0).as_primitive::<TimestampMillisecondType>();
            let mut last = None;
            for &st in starts.values().iter() {
                if last == Some(st) {
                    continue;
                }
                last = Some(st);
                let e = seen.entry(st).or_insert(p);
                if *e != p || !unique {
                    *e = usize::MAX;
                }
            }
        }
        let ae = |source| AggregateError::Arrow { context: "selecting windows to merge".into(), source };
        let mut direct = Vec::new();
        let mut to_merge = Vec::new();
        for (b, _) in parts {
            let starts = b.column(0).as_primitive::<TimestampMillisecondType>();
            let mask: BooleanArray = starts.values().iter().map(|st| Some(seen[st] == usize::MAX)).collect();
            match mask.true_count() {
                0 => direct.push(b),
                n if n == b.num_rows() => to_merge.push(b),
                // a micro-batch's rows come in the order of their windows' first events: on ordered input
                // the windows shared with the batches before and after are its first and last rows, and
                // both sides are slices of it, not copies (the direct side is let go once written). The
                // direct side must be one slice: the parts emitted hold each window's rows in one part.
                _ => match runs(&mask).filter(|r| r.iter().filter(|r| !r.2).count() == 1) {
                    Some(runs) => {
                        for (at, len, merge) in runs {
                            if merge { &mut to_merge } else { &mut direct }.push(b.slice(at, len));
                        }
                    }
                    None => {
                        to_merge.push(filter_rows(&b, &mask).map_err(ae)?);
                        direct.push(filter_rows(&b, &not(&mask).map_err(ae)?).map_err(ae)?);
                    }
                },
            }
        }
        if !to_merge.is_empty() {
            direct.push(self.merge(to_merge)?);
        }
        Ok(direct)
    }

    /// Merges a series' pending rows into its open state once they outnumber the open rows and the
    /// compaction floor (`COMPACT_ROWS`, or the key cap when smaller: state stays within a small multiple
    /// of the cap). Pending rows of windows that end at or before `watermark_ms` do not count: the next
    /// commit closes those windows and merges their rows once, and the pipeline commits once the rows it
    /// holds have grown by a bounded number. (Counting them had the 1m and 1h windows, whose rows come
    /// almost one per event on a workload of many keys, merged twice: at 2M events, 3M of the 6.2M rows
    /// compactions merged were theirs, and the merges gave back as many rows as they took.)
    fn compact(&mut self, i: usize, watermark_ms: Option<i64>) -> Result<(), AggregateError> {
        let floor = COMPACT_ROWS.min(self.key_cap);
        let s = &mut self.series[i];
        let pending: usize = s.pending.iter().chain(&s.unmerged).map(|b| rows_after(b, watermark_ms)).sum();
        let open: usize = s.open.iter().map(|b| b.num_rows()).sum();
        if pending == 0 || pending <= floor.max(open) {
            return Ok(());
        }
        let mut batches = std::mem::take(&mut s.pending);
        batches.append(&mut s.unmerged);
        batches.append(&mut s.open);
        self.series[i].open = self.merge_capped(batches)?;
        Ok(())
    }

    /// The open state per window size, for the commit's state snapshot: the merged rows and the pending
    /// partial rows as they are (the snapshot is additive, a later merge sums them; restoring one puts it
    /// back as rows to merge), their dimensions as ids of [`WindowEngine::dims_part`].
    pub fn snapshot(&self) -> Vec<(WindowSize, Vec<RecordBatch>)> {
        self.series
            .iter()
            .filter(|s| !s.open.is_empty() || !s.pending.is_empty() || !s.unmerged.is_empty())
            .map(|s| (s.size.clone(), s.open.iter().chain(&s.pending).chain(&s.unmerged).map(strip_keys).collect()))
            .collect()
    }

    /// The dictionary of the snapshot's dimension ids, as the snapshot's part labelled [`DIMS_PART`]: the
    /// same batch from commit to commit until a new value is seen.
    pub fn dims_part(&mut self) -> RecordBatch {
        self.dims.batch()
    }

    /// Replaces all state with a snapshot (on start and on rollback). The dictionary starts again from the
    /// values of the rows restored.
    pub fn restore(&mut self, snapshot: Vec<(String, RecordBatch)>) -> Result<(), AggregateError> {
        for s in &mut self.series {
            s.pending.clear();
            s.unmerged.clear();
            s.open.clear();
        }
        self.dims = Dims::new();
        self.absorb(snapshot)
    }

    /// Adds open window rows of another pipeline's snapshot (a member of a shared lake that left without
    /// emitting them) to this one's: they are merged with the open state when their windows close or at the
    /// next compaction. Rows with dimension ids take their values from the snapshot's own dictionary part;
    /// rows with dimension values (a state written before the dictionary existed) are taken as they are.
    pub fn absorb(&mut self, snapshot: Vec<(String, RecordBatch)>) -> Result<(), AggregateError> {
        let dict = snapshot.iter().find(|(l, _)| l == DIMS_PART).map(|(_, b)| Dims::from_batch(b)).transpose()?;
        for (label, batch) in snapshot {
            if label == DIMS_PART {
                continue;
            }
            let i = self.series_of(&label, &batch)?;
            let with_ids =
                DIMENSIONS.iter().any(|d| batch.column_by_name(d).is_some_and(|c| crate::dims::is_ids(c.as_ref())));
            let rows = if with_ids {
                let dict = dict.as_ref().ok_or_else(|| {
                    AggregateError::State(format!(
                        "the state's {label} rows have dimension ids but the state has no {DIMS_PART} part"
                    ))
                })?;
                let rows = conform_to(&id_rollup_schema(), vec![batch])?;
                to_rollup(&rows, dict)?
            } else {
                conform(vec![batch])?
            };
            self.series[i].unmerged.push(with_keys(rows, &mut self.dims)?);
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
                s.open.iter().map(|b| b.num_rows()).sum::<usize>()
                    + s.pending.iter().chain(&s.unmerged).map(|b| b.num_rows()).sum::<usize>()
            })
            .sum()
    }
}

/// Finer partial rows moved to the windows of `size` (which the finer size divides): new bounds and late
/// flags, every other column shared, not copied.
fn rebucket(finer: &RecordBatch, size: &WindowSize, late_cutoff_ms: i64) -> Result<RecordBatch, AggregateError> {
    let starts = finer.column(0).as_primitive::<TimestampMillisecondType>();
    let tz = starts.timezone().map(Arc::<str>::from);
    let new_starts = starts.unary::<_, TimestampMillisecondType>(|s| s.div_euclid(size.ms) * size.ms);
    let ends = new_starts.unary::<_, TimestampMillisecondType>(|s| s + size.ms);
    let late: BooleanArray = ends.values().iter().map(|&e| Some(e <= late_cutoff_ms)).collect();
    let mut cols = finer.columns().to_vec();
    cols[0] = Arc::new(new_starts.with_timezone_opt(tz.clone()));
    cols[1] = Arc::new(ends.with_timezone_opt(tz));
    let li = finer.schema().index_of(LATE).map_err(|e| AggregateError::Arrow { context: "late".into(), source: e })?;
    cols[li] = Arc::new(late);
    RecordBatch::try_new(finer.schema(), cols)
        .map_err(|e| AggregateError::Arrow { context: format!("moving rows to {} windows", size.label), source: e })
}

/// Rows whose `window_end` column holds the window start, with the end (start + size) in its place.
fn with_ends(rows: RecordBatch, size: &WindowSize) -> Result<RecordBatch, AggregateError> {
    let starts = rows.column(1).as_primitive::<TimestampMillisecondType>();
    let tz = starts.timezone().map(Arc::<str>::from);
    let ends = starts.unary::<_, TimestampMillisecondType>(|s| s + size.ms).with_timezone_opt(tz);
    let mut cols = rows.columns().to_vec();
    cols[1] = Arc::new(ends);
    RecordBatch::try_new(rows.schema(), cols)
        .map_err(|e| AggregateError::Arrow { context: format!("ends of {} windows", size.label), source: e })
}

/// The columns of a merge's output before the dimensions are taken: bounds, late flag, key hash, measures.
fn narrow_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let state = state_schema();
            let fields: Vec<Field> = [WINDOW_START, WINDOW_END, LATE, KEY_HI, KEY_LO]
                .into_iter()
                .chain(count_measures())
                .chain(EVENT_MONEY)
                .map(|n| state.field_with_name(n).expect("a state column").clone())
                .collect();
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// The ids of the dimensions of state rows that a row folded at the key cap gives up (all [`OVERFLOW`]).
fn folded_dims(rows: &RecordBatch) -> Vec<&UInt32Array> {
    DIMENSIONS
        .iter()
        .filter(|d| given_up(d))
        .map(|d| crate::dims::ids(rows.column_by_name(d).expect("dimension")))
        .collect()
}

/// The columns of state rows, per batch and state column, `None` once taken: after a merge has summed the
/// measures, only the dimensions are left.
type DimColumns = crate::sums::Columns;

/// Takes state column `col` of the inputs and returns, for each list of (input batch, row), those rows of
/// it; the inputs' column is let go.
fn take_rows<const N: usize>(
    inputs: &mut DimColumns,
    col: usize,
    froms: [&[(usize, usize)]; N],
) -> Result<[ArrayRef; N], AggregateError> {
    let cols = inputs
        .iter_mut()
        .map(|b| b[col].take())
        .collect::<Option<Vec<ArrayRef>>>()
        .ok_or_else(|| AggregateError::State(format!("dimension column {col} taken twice")))?;
    let refs: Vec<&dyn Array> = cols.iter().map(|c| c.as_ref()).collect();
    let mut out = Vec::with_capacity(N);
    for from in froms {
        out.push(interleave(&refs, from).map_err(|source| AggregateError::Arrow {
            context: "taking the dimensions of merged rows".into(),
            source,
        })?);
    }
    Ok(out.try_into().expect("one array per list"))
}

/// State rows from a merge's output (columns of [`narrow_schema`]), with the dimensions of input row
/// `from[i]` for row `i`; each column is let go once used.
fn assemble(
    inputs: &mut DimColumns,
    merged: RecordBatch,
    from: &[(usize, usize)],
) -> Result<RecordBatch, AggregateError> {
    let ae = |context: &str| {
        let context = context.to_string();
        move |source| AggregateError::Arrow { context: context.clone(), source }
    };
    let state = state_schema();
    let narrow_schema = narrow_schema();
    let mut merged: Vec<Option<ArrayRef>> = merged.into_parts().1.into_iter().map(Some).collect();
    let mut cols = Vec::with_capacity(state.fields().len());
    for (i, f) in state.fields().iter().enumerate() {
        let name = f.name().as_str();
        cols.push(if DIMENSIONS.contains(&name) {
            let [c] = take_rows(inputs, i, [from])?;
            c
        } else {
            let at = narrow_schema.index_of(name).map_err(ae("a merged column"))?;
            merged[at].take().ok_or_else(|| AggregateError::State(format!("merged column {name} taken twice")))?
        });
    }
    RecordBatch::try_new(state, cols).map_err(ae("building merged rows"))
}

/// Casts DataFusion output to the exact rollup schema (types and nullability).
fn conform(batches: Vec<RecordBatch>) -> Result<RecordBatch, AggregateError> {
    conform_to(&rollup_schema(), batches)
}

/// DataFusion output as one batch of `schema` (columns by position, cast to its types).
fn conform_to(schema: &SchemaRef, batches: Vec<RecordBatch>) -> Result<RecordBatch, AggregateError> {
    let ae = |context: String| move |source| AggregateError::Arrow { context, source };
    // each batch's columns, let go one column at a time as they are concatenated: a merge's output is the
    // largest thing the engine holds, and a whole second copy of it was the pipeline's peak of memory
    let mut parts: Vec<Vec<Option<ArrayRef>>> = batches
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| b.columns().iter().cloned().map(Some).collect())
        .collect();
    if parts.is_empty() {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    let mut cols = Vec::with_capacity(schema.fields().len());
    for (i, f) in schema.fields().iter().enumerate() {
        let arrays: Vec<ArrayRef> = parts
            .iter_mut()
            .map(|p| p.get_mut(i).and_then(Option::take))
            .collect::<Option<_>>()
            .ok_or_else(|| AggregateError::State(format!("rollup rows without column {}", f.name())))?;
        let c = concat(&arrays.iter().map(|a| a.as_ref()).collect::<Vec<_>>())
            .map_err(ae(format!("concatenating {}", f.name())))?;
        drop(arrays);
        let mut c = if c.data_type() == f.data_type() {
            c
        } else {
            cast(&c, f.data_type()).map_err(ae(format!("casting {}", f.name())))?
        };
        // one batch is passed through as it is: DataFusion grew its buffers by doubling, and these rows may
        // wait in the state for a day (the 1h and 1d windows share the 1m partial's columns)
        c.shrink_to_fit();
        cols.push(c);
    }
    RecordBatch::try_new(schema.clone(), cols).map_err(ae("building rollup rows".into()))
}

/// The number of rows of windows ending after `watermark_ms` (`None`: all rows).
fn rows_after(b: &RecordBatch, watermark_ms: Option<i64>) -> usize {
    let Some(w) = watermark_ms else { return b.num_rows() };
    let ends = b.column(1).as_primitive::<TimestampMillisecondType>();
    if ends.null_count() == 0 {
        ends.values().iter().filter(|&&e| e > w).count()
    } else {
        ends.iter().filter(|e| e.is_none_or(|e| e > w)).count()
    }
}

/// Most runs of rows a batch is split into as slices rather than copies (see [`runs`]).
const MAX_RUNS: usize = 8;

/// The runs of equal values of `mask` as (offset, length, value), when there are at most [`MAX_RUNS`].
fn runs(mask: &BooleanArray) -> Option<Vec<(usize, usize, bool)>> {
    let mut out: Vec<(usize, usize, bool)> = Vec::new();
    for (i, v) in mask.values().iter().enumerate() {
        if let Some(run) = out.last_mut()
            && run.2 == v
        {
            run.1 += 1;
        } else if out.len() == MAX_RUNS {
            return None;
        } else {
            out.push((i, 1, v));
        }
    }
    Some(out)
}

/// Splits rows into those of windows ending at or before `watermark_ms` (`None`: all) and the others,
/// without copying when a batch lies entirely on one side. On ordered input the closing rows are the
/// batch's first rows: they are then slices of it (emitted and let go at this commit), and so are the rows
/// that stay when they are at least half of it; a smaller remainder is copied, so the state does not keep
/// the whole batch alive for a few rows.
fn split_at(b: RecordBatch, watermark_ms: Option<i64>) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>), AggregateError> {
    let some = |b: RecordBatch| if b.num_rows() > 0 { vec![b] } else { vec![] };
    let Some(w) = watermark_ms else { return Ok((some(b), vec![])) };
    let ends = b.column(1).as_primitive::<TimestampMillisecondType>();
    match (min(ends), max(ends)) {
        (Some(lo), _) if lo > w => return Ok((vec![], some(b))),
        (_, Some(hi)) if hi <= w && ends.null_count() == 0 => return Ok((some(b), vec![])),
        _ => {}
    }
    let closed: BooleanArray = ends.iter().map(|e| Some(e.is_some_and(|e| e <= w))).collect();
    if let Some(runs) = runs(&closed) {
        let open_rows = b.num_rows() - closed.true_count();
        if open_rows * 2 >= b.num_rows() {
            let (mut c, mut o) = (Vec::new(), Vec::new());
            for (at, len, is_closed) in runs {
                if is_closed { &mut c } else { &mut o }.push(b.slice(at, len));
            }
            return Ok((c, o));
        }
        let ae = |source| AggregateError::Arrow { context: "splitting windows".into(), source };
        let open = filter_rows(&b, &not(&closed).map_err(ae)?).map_err(ae)?;
        let c = runs.into_iter().filter(|r| r.2).map(|(at, len, _)| b.slice(at, len)).collect();
        return Ok((c, vec![open]));
    }
    let (c, o) = split_by(b, &closed, "splitting windows")?;
    Ok((some(c), some(o)))
}

/// The rows of `b` that `mask` (no nulls) selects; shared zero and null columns stay shared
/// ([`crate::zeros`]).
fn filter_rows(b: &RecordBatch, mask: &BooleanArray) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let pick = FilterBuilder::new(mask).optimize().build();
    let cols = b
        .columns()
        .iter()
        .map(|c| crate::zeros::select(c, pick.count(), |c| pick.filter(c)))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(b.schema(), cols)
}

/// Splits rows into those `mask` selects and the others, one column at a time: each column of `b` is let
/// go once both sides have their rows. (The day window's open rows are the largest batch the engine holds;
/// a split that kept them whole until both copies were made held them twice, at the day's close.)
fn split_by(b: RecordBatch, mask: &BooleanArray, context: &str) -> Result<(RecordBatch, RecordBatch), AggregateError> {
    let ae = |source| AggregateError::Arrow { context: context.into(), source };
    let yes = FilterBuilder::new(mask).optimize().build();
    let no = FilterBuilder::new(&not(mask).map_err(ae)?).optimize().build();
    let (schema, columns, _) = b.into_parts();
    let (mut a, mut o) = (Vec::with_capacity(columns.len()), Vec::with_capacity(columns.len()));
    for c in columns {
        a.push(crate::zeros::select(&c, yes.count(), |c| yes.filter(c)).map_err(ae)?);
        o.push(crate::zeros::select(&c, no.count(), |c| no.filter(c)).map_err(ae)?);
    }
    Ok((RecordBatch::try_new(schema.clone(), a).map_err(ae)?, RecordBatch::try_new(schema, o).map_err(ae)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_a_mask_up_to_the_most_a_batch_is_sliced_into() {
        let mask = |v: &[bool]| BooleanArray::from(v.to_vec());
        assert_eq!(
            runs(&mask(&[true, true, false, false, false, true])),
            Some(vec![(0, 2, true), (2, 3, false), (5, 1, true)])
        );
        assert_eq!(runs(&mask(&[false; 4])), Some(vec![(0, 4, false)]));
        let alternating: Vec<bool> = (0..MAX_RUNS + 1).map(|i| i % 2 == 0).collect();
        assert_eq!(runs(&mask(&alternating[..MAX_RUNS])).map(|r| r.len()), Some(MAX_RUNS));
        assert_eq!(runs(&mask(&alternating)), None);
    }

    /// Rows of windows ending at `ends[i]` minutes (the other state columns are not read by a split).
    fn ends_batch(ends: &[i64]) -> RecordBatch {
        use datafusion::arrow::array::TimestampMillisecondArray;
        use datafusion::arrow::datatypes::TimeUnit;
        let ts = |v: Vec<i64>| Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC")) as ArrayRef;
        let schema = Arc::new(Schema::new(vec![
            Field::new("window_start", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
            Field::new("window_end", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
            Field::new("row", DataType::Int64, false),
        ]));
        let cols = vec![
            ts(ends.iter().map(|e| (e - 1) * 60_000).collect()),
            ts(ends.iter().map(|e| e * 60_000).collect()),
            Arc::new(datafusion::arrow::array::Int64Array::from_iter_values(0..ends.len() as i64)) as ArrayRef,
        ];
        RecordBatch::try_new(schema, cols).unwrap()
    }

    /// The closing rows of an ordered batch are slices of it; the rows that stay are slices when they are at
    /// least half of it, else a copy (the state does not keep the batch alive for them); rows in more runs
    /// than [`MAX_RUNS`] are copied to both sides.
    #[test]
    fn a_split_at_the_watermark_slices_ordered_rows_and_copies_a_small_remainder() {
        let rows = |parts: &[RecordBatch]| -> Vec<i64> {
            parts.iter().flat_map(|b| b.column(2).as_primitive::<Int64Type>().values().to_vec()).collect()
        };
        // whether `part`'s values lie in `of`'s memory (a slice of it, not a copy)
        let shares = |part: &RecordBatch, of: &RecordBatch| {
            let at = |b: &RecordBatch| b.column(2).as_primitive::<Int64Type>().values().as_ptr() as usize;
            (at(of)..at(of) + 8 * of.num_rows()).contains(&at(part))
        };
        // 2 closing rows, 3 staying: both sides slices
        let b = ends_batch(&[1, 1, 2, 2, 2]);
        let (c, o) = split_at(b.clone(), Some(60_000)).unwrap();
        assert_eq!((rows(&c), rows(&o)), (vec![0, 1], vec![2, 3, 4]));
        assert!(c.iter().chain(&o).all(|p| shares(p, &b)));
        // 4 closing rows, 1 staying: the closing side a slice, the remainder a copy
        let b = ends_batch(&[1, 1, 1, 1, 2]);
        let (c, o) = split_at(b.clone(), Some(60_000)).unwrap();
        assert_eq!((rows(&c), rows(&o)), (vec![0, 1, 2, 3], vec![4]));
        assert!(shares(&c[0], &b) && !shares(&o[0], &b));
        // alternating windows: copies, the same rows
        let ends: Vec<i64> = (0..MAX_RUNS as i64 + 2).map(|i| 1 + i % 2).collect();
        let b = ends_batch(&ends);
        let (c, o) = split_at(b.clone(), Some(60_000)).unwrap();
        assert_eq!(rows(&c), (0..ends.len() as i64).step_by(2).collect::<Vec<_>>());
        assert_eq!(rows(&o), (1..ends.len() as i64).step_by(2).collect::<Vec<_>>());
        assert!(!c.iter().chain(&o).any(|p| shares(p, &b)));
        // every row on one side: the batch itself
        let (c, o) = split_at(b.clone(), Some(10 * 60_000)).unwrap();
        assert!(o.is_empty() && c.len() == 1 && shares(&c[0], &b));
    }

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

    /// Rollup rows of one window: `dims[i]` gives row i's (team, project), every other dimension "x",
    /// `requests` row i's.
    fn rows(dims: &[(&str, &str)], requests: &[i64]) -> RecordBatch {
        use datafusion::arrow::array::{Int64Array, TimestampMillisecondArray, new_null_array};
        let n = dims.len();
        let cols: Vec<ArrayRef> = rollup_schema()
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match (f.name().as_str(), f.data_type()) {
                    ("team", _) => Arc::new(StringArray::from_iter_values(dims.iter().map(|d| d.0))),
                    ("project", _) => Arc::new(StringArray::from_iter_values(dims.iter().map(|d| d.1))),
                    (_, DataType::Utf8) => Arc::new(StringArray::from(vec!["x"; n])),
                    (_, DataType::Timestamp(..)) => {
                        Arc::new(TimestampMillisecondArray::from(vec![0; n]).with_timezone("UTC"))
                    }
                    (REQUESTS, _) => Arc::new(Int64Array::from(requests.to_vec())),
                    (_, DataType::Int64) => Arc::new(Int64Array::from(vec![0; n])),
                    (_, DataType::Boolean) => Arc::new(BooleanArray::from(vec![false; n])),
                    (_, other) => new_null_array(other, n),
                }
            })
            .collect();
        RecordBatch::try_new(rollup_schema(), cols).unwrap()
    }

    #[tokio::test]
    async fn a_merge_by_key_hash_keeps_keys_apart_whose_dimensions_concatenate_alike_and_sums_the_same_key() {
        let mut w = WindowEngine::new(vec![WindowSize::parse("1h").unwrap()]).unwrap();
        // ("ab", "c") and ("a", "bc") are different keys; the second batch repeats both and adds ("", "abc")
        let a = with_keys(rows(&[("ab", "c"), ("a", "bc")], &[1, 2]), &mut w.dims).unwrap();
        let b = with_keys(rows(&[("a", "bc"), ("", "abc"), ("ab", "c")], &[10, 100, 1000]), &mut w.dims).unwrap();
        let merged = w.merge(vec![a, b]).unwrap();
        assert_eq!(merged.schema(), state_schema());
        // the state holds ids: 3 values of team ("ab", "a", "") and of project after __other__
        assert_eq!((w.dims.len(2), w.dims.len(3)), (4, 4));
        let out = to_rollup(&merged, &w.dims).unwrap();
        assert_eq!(out.schema(), rollup_schema());
        let team = out.column_by_name("team").unwrap().as_string::<i32>();
        let project = out.column_by_name("project").unwrap().as_string::<i32>();
        let req = out.column_by_name(REQUESTS).unwrap().as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let mut got: Vec<(String, String, i64)> = (0..out.num_rows())
            .map(|i| (team.value(i).to_string(), project.value(i).to_string(), req.value(i)))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [("".into(), "abc".into(), 100), ("a".into(), "bc".into(), 12), ("ab".into(), "c".into(), 1001)]
        );
        // every other dimension came along from the input rows
        assert!(out.column_by_name("identity").unwrap().as_string::<i32>().iter().all(|v| v == Some("x")));
    }
    #[test]
    fn the_key_cap_keeps_the_most_expensive_keys_nulls_last_then_requests_then_the_key_hash() {
        use datafusion::arrow::array::{Decimal128Array, Int64Array, TimestampMillisecondArray};
        // one window; (cost, requests, key hi) per row
        let keys: [(Option<i128>, i64, u64); 7] = [
            (None, 100, 1),
            (Some(5), 1, 2),
            (Some(5), 3, 3),
            (Some(7), 1, 4),
            (Some(5), 3, 0),
            (None, 1, 5),
            (Some(1), 1, 6),
        ];
        let n = keys.len();
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                WINDOW_START,
                DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
                false,
            ),
            Field::new(LATE, DataType::Boolean, false),
            Field::new("cost_usd", DataType::Decimal128(38, 18), true),
            Field::new(REQUESTS, DataType::Int64, false),
            Field::new(KEY_HI, DataType::UInt64, false),
            Field::new(KEY_LO, DataType::UInt64, false),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![0; n])),
                Arc::new(BooleanArray::from(vec![false; n])),
                Arc::new(
                    Decimal128Array::from_iter(keys.iter().map(|k| k.0)).with_precision_and_scale(38, 18).unwrap(),
                ),
                Arc::new(Int64Array::from_iter_values(keys.iter().map(|k| k.1))),
                Arc::new(UInt64Array::from_iter_values(keys.iter().map(|k| k.2))),
                Arc::new(UInt64Array::from(vec![0; n])),
            ],
        )
        .unwrap();
        let kept = |cap: usize| -> Vec<u64> {
            let w = WindowEngine::new(vec![WindowSize::parse("1h").unwrap()]).unwrap().with_key_cap(cap);
            let (mask, folded) = w.fold_mask(&rows, |_| false).unwrap().unwrap();
            assert_eq!(folded, n - cap);
            let mut k: Vec<u64> = (0..n).filter(|&i| !mask.value(i)).map(|i| keys[i].2).collect();
            k.sort();
            k
        };
        // 7 first; of the three costing 5, the two with 3 requests, the smaller key hash first
        assert_eq!(kept(1), [4]);
        assert_eq!(kept(2), [0, 4]);
        assert_eq!(kept(3), [0, 3, 4]);
        assert_eq!(kept(5), [0, 2, 3, 4, 6]);
        // a key without a price comes after every priced one, whatever its requests
        assert_eq!(kept(6), [0, 1, 2, 3, 4, 6]);
        // at the cap or under it, nothing folds
        let w = WindowEngine::new(vec![WindowSize::parse("1h").unwrap()]).unwrap().with_key_cap(n);
        assert!(w.fold_mask(&rows, |_| false).unwrap().is_none());
    }
}

#[cfg(test)]
mod engine_tests {
    use super::*;
    use crate::testutil::{Ev, batch};
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::datatypes::{Decimal128Type, Int64Type, TimestampMillisecondType};

    const MIN: i64 = 60_000;
    const HOUR: i64 = 3_600_000;
    const T0: i64 = 1_764_460_800_000; // a midnight UTC

    /// Micro-batches of ordered events share their first and last minutes with the batches before and
    /// after: a close emits the minutes a batch holds alone as slices of its partial rows, not copies, and
    /// merges the shared ones, each window's rows in one part. Out-of-order rows (five sweeps through each
    /// batch) come to the same rows.
    #[tokio::test]
    async fn a_close_slices_ordered_micro_batches_and_keeps_each_window_in_one_part() {
        let idents: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
        for shuffled in [false, true] {
            let mut w = WindowEngine::new(vec![WindowSize::parse("1m").unwrap()]).unwrap();
            // 150 events 10 s apart (6 keys a minute) in 3 batches of 50 (8 min 20 s each)
            for k in 0..3usize {
                let mut order: Vec<usize> = (k * 50..(k + 1) * 50).collect();
                if shuffled {
                    // five sweeps through the batch: its windows' rows in five ascending runs, interleaved
                    order.sort_by_key(|&i| (i % 5, i));
                }
                let evs: Vec<Ev<'_>> = order
                    .iter()
                    .map(|&i| Ev {
                        ts: T0 + i as i64 * 10_000,
                        id: i as u128,
                        owner: "o",
                        identity: &idents[i % 6],
                        input: 1,
                        cost: Some(i as i128 + 1),
                    })
                    .collect();
                w.add(batch(&evs), None, 0).await.unwrap();
            }
            // where each batch's partial rows hold their tokens
            let token_buffers: Vec<std::ops::Range<*const i64>> = w.series[0]
                .pending
                .iter()
                .map(|b| b.column_by_name("input_tokens").unwrap().as_primitive::<Int64Type>().values().as_ptr_range())
                .collect();
            let closed = w.close(Some(T0 + 20 * MIN)).await.unwrap();
            let parts = &closed[0].parts;
            // minutes 0-7, 9-15 and 17-19 as slices of the three batches' rows, minutes 8 and 16 merged
            let sliced = parts
                .iter()
                .filter(|p| {
                    let tokens = p.column_by_name("input_tokens").unwrap().as_primitive::<Int64Type>();
                    // a slice of a batch's rows starts inside its column
                    token_buffers.iter().any(|b| b.contains(&tokens.values().as_ptr()))
                })
                .count();
            if !shuffled {
                assert_eq!((parts.len(), sliced), (4, 3));
            }
            let mut part_of: HashMap<i64, usize> = HashMap::new();
            let mut per_minute: HashMap<i64, (usize, i64, i128)> = HashMap::new();
            for (p, b) in parts.iter().enumerate() {
                let start = b.column(0).as_primitive::<TimestampMillisecondType>();
                let req = b.column_by_name("requests").unwrap().as_primitive::<Int64Type>();
                let cost = b.column_by_name("cost_usd").unwrap().as_primitive::<Decimal128Type>();
                for r in 0..b.num_rows() {
                    assert_eq!(*part_of.entry(start.value(r)).or_insert(p), p, "a window in two parts");
                    let m = per_minute.entry(start.value(r)).or_default();
                    (m.0, m.1, m.2) = (m.0 + 1, m.1 + req.value(r), m.2 + cost.value(r));
                }
            }
            assert_eq!(per_minute.len(), 20);
            for minute in 0..20i64 {
                // events 6m..6m+5, costing i + 1 each
                let cost: i128 = (6 * minute as i128..6 * minute as i128 + 6).map(|i| i + 1).sum();
                assert_eq!(per_minute[&(T0 + minute * MIN)], (6, 6, cost), "minute {minute}, shuffled: {shuffled}");
            }
            let rest = w.close(None).await.unwrap();
            assert_eq!(sum(&rest, "1m", "requests"), 30);
            assert_eq!(cost(&rest, "1m"), (120..150).map(|i| i + 1).sum::<i128>());
        }
    }

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
        w.add(batch(&evs[..6]), None, HOUR).await.unwrap();
        w.add(batch(&evs[6..]), None, HOUR).await.unwrap();
        let out = w.close(None).await.unwrap();
        let rows = &out[0].rows();
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

    /// Event `i` of key `idents[i]`, at `t + i` ms, one input token, costing `i + 1`.
    fn keyed<'a>(t: i64, i: usize, owner: &'a str, idents: &'a [String]) -> Ev<'a> {
        Ev { ts: t + i as i64, id: i as u128, owner, identity: &idents[i], input: 1, cost: Some(i as i128 + 1) }
    }

    fn sum(rows: &[Emitted], label: &str, col: &str) -> i64 {
        rows.iter()
            .filter(|e| e.size.label == label)
            .map(|e| e.rows().column_by_name(col).unwrap().as_primitive::<Int64Type>().iter().flatten().sum::<i64>())
            .sum()
    }

    fn cost(rows: &[Emitted], label: &str) -> i128 {
        rows.iter()
            .filter(|e| e.size.label == label)
            .map(|e| {
                e.rows()
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
        w.add(batch(&evs), None, 24 * HOUR).await.unwrap();
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
            w.add(batch(&[ev(T0 + i * 1000, "a", 1, Some(1))]), None, 24 * HOUR).await.unwrap();
        }
        let out = w.close(None).await.unwrap();
        for e in &out {
            assert_eq!(e.rows().num_rows(), 1, "{} rows merged", e.size.label);
        }
        assert_eq!(sum(&out, "1d", "requests"), 5);
    }

    #[tokio::test]
    async fn events_behind_the_allowed_lateness_are_additional_late_rows_not_dropped() {
        let mut w = engine();
        w.add(batch(&[ev(T0 + 10, "a", 1, Some(10))]), None, 24 * HOUR).await.unwrap();
        let first = w.close(Some(T0 + 30 * HOUR)).await.unwrap();
        assert_eq!(sum(&first, "1h", "requests"), 1);
        // 30 h later an event for the first minute arrives (e.g. a batch API result)
        w.add(batch(&[ev(T0 + 20, "a", 1, Some(10))]), Some(T0 + 30 * HOUR), 24 * HOUR).await.unwrap();
        let late = w.close(Some(T0 + 30 * HOUR)).await.unwrap();
        for e in &late {
            let rows = e.rows();
            let flags = rows.column_by_name("late").unwrap().as_boolean();
            match e.size.label.as_str() {
                "1m" | "1h" => assert!(flags.value(0), "{} row flagged late", e.size.label),
                // the day window ended 6 h before the watermark: within 24 h of lateness
                _ => assert!(!flags.value(0)),
            }
        }
        assert_eq!(sum(&late, "1m", "requests") + sum(&first, "1m", "requests"), 2, "nothing dropped");
    }

    /// (window label, identity) -> (rows, requests, cost) of emitted rows.
    fn per_key(rows: &[Emitted]) -> std::collections::BTreeMap<(String, i64, String), (usize, i64, i128)> {
        let mut m = std::collections::BTreeMap::new();
        for e in rows {
            let rows = e.rows();
            let start = rows.column(0).as_primitive::<TimestampMillisecondType>();
            let ident = rows.column_by_name("identity").unwrap().as_string::<i32>();
            let req = rows.column_by_name("requests").unwrap().as_primitive::<Int64Type>();
            let cost = rows.column_by_name("cost_usd").unwrap().as_primitive::<Decimal128Type>();
            for i in 0..rows.num_rows() {
                let v: &mut (usize, i64, i128) =
                    m.entry((e.size.label.clone(), start.value(i), ident.value(i).to_string())).or_default();
                v.0 += 1;
                v.1 += req.value(i);
                v.2 += cost.value(i);
            }
        }
        m
    }

    #[tokio::test]
    async fn open_windows_waiting_over_several_batches_and_a_restore_emit_one_row_per_key() {
        let mut w = engine();
        let e = |ts: i64, identity: &'static str, cost: i128| Ev {
            ts,
            id: ts as u128,
            owner: "a",
            identity,
            input: 1,
            cost: Some(cost),
        };
        // three batches into the same hour and day, a close in between that only closes minutes
        w.add(batch(&[e(T0, "k1", 1), e(T0 + 1, "k2", 2)]), None, 24 * HOUR).await.unwrap();
        let first = w.close(Some(T0 + 5 * MIN)).await.unwrap();
        assert!(first.iter().all(|e| e.size.label == "1m"), "only minutes closed");
        w.add(batch(&[e(T0 + 6 * MIN, "k1", 10)]), Some(T0 + 5 * MIN), 24 * HOUR).await.unwrap();
        w.add(batch(&[e(T0 + 7 * MIN, "k1", 100), e(T0 + 7 * MIN, "k2", 20)]), Some(T0 + 6 * MIN), 24 * HOUR)
            .await
            .unwrap();
        // the waiting rows of the hour and the day are not merged yet: the snapshot carries them as they are
        let snap = w.snapshot();
        let hour_rows: usize =
            snap.iter().filter(|(s, _)| s.label == "1h").flat_map(|(_, b)| b).map(|b| b.num_rows()).sum();
        assert_eq!(hour_rows, 5, "one row per key and batch waits for the hour to close");
        let mut w2 = engine();
        w2.restore(with_dims(&mut w, snap)).unwrap();
        w2.add(batch(&[e(T0 + 8 * MIN, "k2", 200)]), Some(T0 + 7 * MIN), 24 * HOUR).await.unwrap();
        let rest = w2.close(None).await.unwrap();
        let got = per_key(&rest);
        for label in ["1h", "1d"] {
            let start = if label == "1h" { T0 } else { T0 - T0 % (24 * HOUR) };
            assert_eq!(got[&(label.to_string(), start, "k1".to_string())], (1, 3, 111), "{label} k1");
            assert_eq!(got[&(label.to_string(), start, "k2".to_string())], (1, 3, 222), "{label} k2");
        }
        let minutes: Vec<_> = got.iter().filter(|(k, _)| k.0 == "1m").map(|(_, v)| *v).collect();
        assert_eq!(minutes, vec![(1, 1, 10), (1, 1, 100), (1, 1, 20), (1, 1, 200)]);
        assert_eq!(w2.open_rows(), 0);
    }

    #[tokio::test]
    async fn a_window_capped_twice_keeps_one_overflow_row_per_owner_and_exact_totals() {
        let mut w = WindowEngine::new(vec![WindowSize::parse("1d").unwrap()]).unwrap().with_key_cap(2);
        let idents: Vec<String> = (0..8).map(|i| format!("key-{i}")).collect();
        let ev = |i: usize| keyed(T0, i, "o", &idents);
        // compaction runs the cap as rows come in (cap 2: the floor is 2 rows)
        for chunk in [0..3, 3..6, 6..8] {
            let evs: Vec<Ev<'_>> = chunk.map(ev).collect();
            w.add(batch(&evs), None, HOUR).await.unwrap();
        }
        let out = w.close(None).await.unwrap();
        let got = per_key(&out);
        let day = T0 - T0 % (24 * HOUR);
        let k = |s: &str| ("1d".to_string(), day, s.to_string());
        assert_eq!(got[&k(OVERFLOW)], (1, 6, (1..=6).sum::<i128>()), "one overflow row");
        assert_eq!(got[&k("key-7")], (1, 1, 8));
        assert_eq!(got[&k("key-6")], (1, 1, 7));
        assert_eq!(got.len(), 3);
        assert_eq!(w.overflowed(), 6, "each key counted once as folded");
    }

    /// The day window's compaction caps before it takes dimensions; what it keeps and folds is what a merge
    /// followed by the cap gives, rows with overflow rows already in them and late rows included.
    #[tokio::test]
    async fn a_capped_merge_equals_a_merge_then_the_cap() {
        // partial rows from an engine without a cap (no compaction), merged by one with a cap of 7
        let mut src = WindowEngine::new(vec![WindowSize::parse("1h").unwrap()]).unwrap();
        let mut w = WindowEngine::new(vec![WindowSize::parse("1h").unwrap()]).unwrap().with_key_cap(7);
        let idents: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
        let owners = ["a", "b", "c"];
        let ev = |i: usize| Ev {
            ts: T0 + (i % 2) as i64 * HOUR + i as i64,
            id: i as u128,
            owner: owners[i % 3],
            identity: &idents[i % 40],
            input: 1,
            // ties in cost (and requests) between keys: broken by the key hash
            cost: Some(((i * 7) % 11) as i128),
        };
        let mut batches = Vec::new();
        for (n, chunk) in [0..30, 30..70, 70..120].into_iter().enumerate() {
            let evs: Vec<Ev<'_>> = chunk.map(ev).collect();
            // the last batch arrives late for the first hour
            let wm = (n == 2).then_some(T0 + 3 * HOUR);
            src.add(batch(&evs), wm, 0).await.unwrap();
            batches.append(&mut src.series[0].pending);
        }
        let sorted = |rows: Vec<RecordBatch>| {
            let all = concat_batches(&state_schema(), &rows).unwrap();
            let text = datafusion::arrow::util::pretty::pretty_format_batches(&[all]).unwrap().to_string();
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            lines.sort();
            lines
        };
        // once from partial rows, then again with the first result's overflow rows among the inputs (the
        // rows' dimension ids are the source's)
        w.dims = src.dims.clone();
        let first = w.merge_capped(batches.clone()).unwrap();
        let merged = w.merge(batches.clone()).unwrap();
        let reference = w.cap(merged).unwrap();
        assert!(first.len() == 2 && first[1].num_rows() > 0, "the cap folded rows");
        assert_eq!(sorted(first.clone()), sorted(reference));
        let mut again = first;
        let evs: Vec<Ev<'_>> = (120..160).map(ev).collect();
        src.add(batch(&evs), None, 0).await.unwrap();
        again.append(&mut src.series[0].pending);
        w.dims = src.dims.clone();
        let merged = w.merge(again.clone()).unwrap();
        let reference = w.cap(merged).unwrap();
        assert_eq!(sorted(w.merge_capped(again).unwrap()), sorted(reference));
    }

    /// Rows of windows the watermark has passed wait for the next close instead of being merged into the
    /// open state: only rows of windows still open count towards compaction.
    #[tokio::test]
    async fn rows_of_windows_the_watermark_passed_do_not_compact() {
        let idents: Vec<String> = (0..6).map(|i| format!("key-{i}")).collect();
        let evs =
            |t: i64, keys: std::ops::Range<usize>| -> Vec<Ev<'_>> { keys.map(|i| keyed(t, i, "a", &idents)).collect() };
        // the compaction floor is the key cap (4) here: 3 keys in minute 0, then 3 others in minute 5
        for (watermark, compacted) in [(Some(T0 + 2 * MIN), false), (None, true), (Some(T0 + 30 * 1000), true)] {
            let mut w = WindowEngine::new(vec![WindowSize::parse("1m").unwrap()]).unwrap().with_key_cap(4);
            w.add(batch(&evs(T0, 0..3)), None, HOUR).await.unwrap();
            assert!(w.series[0].open.is_empty(), "3 rows are under the floor");
            w.add(batch(&evs(T0 + 5 * MIN, 3..6)), watermark, HOUR).await.unwrap();
            let s = &w.series[0];
            assert_eq!(!s.open.is_empty(), compacted, "watermark {watermark:?}");
            assert_eq!(s.pending.len(), if compacted { 0 } else { 2 }, "watermark {watermark:?}");
            // either way each window's rows are emitted once, with exact totals
            let out = w.close(Some(T0 + 2 * MIN)).await.unwrap();
            assert_eq!((out[0].rows().num_rows(), sum(&out, "1m", "requests"), cost(&out, "1m")), (3, 3, 1 + 2 + 3));
            let out = w.close(None).await.unwrap();
            assert_eq!((out[0].rows().num_rows(), sum(&out, "1m", "requests"), cost(&out, "1m")), (3, 3, 4 + 5 + 6));
        }
    }

    /// A snapshot as the lake holds it: the dictionary's part, then the window rows.
    fn with_dims(w: &mut WindowEngine, snap: Vec<(WindowSize, Vec<RecordBatch>)>) -> Vec<(String, RecordBatch)> {
        std::iter::once((DIMS_PART.to_string(), w.dims_part()))
            .chain(snap.into_iter().flat_map(|(s, bs)| bs.into_iter().map(move |b| (s.label.clone(), b))))
            .collect()
    }

    #[tokio::test]
    async fn snapshot_and_restore_keep_open_windows() {
        let mut w = engine();
        w.add(batch(&[ev(T0, "a", 3, Some(5)), ev(T0 + HOUR, "b", 4, Some(6))]), None, 24 * HOUR).await.unwrap();
        let snap = w.snapshot();
        let mut w2 = engine();
        w2.restore(with_dims(&mut w, snap)).unwrap();
        let out = w2.close(None).await.unwrap();
        assert_eq!(sum(&out, "1d", "input_tokens"), 7);
        assert_eq!(cost(&out, "1h"), 11);
    }

    /// A close emits each dimension as a dictionary column: its keys are the state rows' ids, its values the
    /// engine's dictionary of the dimension, one array shared by every part and window size of the close
    /// and by the commit's dictionary part (no row's string is copied); detectors read either kind. Measures
    /// that no event has stay shared zero columns ([`crate::zeros`]).
    #[tokio::test]
    async fn a_close_emits_dimensions_as_ids_into_one_shared_dictionary() {
        use datafusion::arrow::datatypes::UInt32Type;
        let mut w = engine();
        let evs = [ev(T0, "b", 1, Some(1)), ev(T0 + 2 * MIN, "a", 2, Some(2)), ev(T0 + HOUR, "b", 4, Some(4))];
        w.add(batch(&evs), None, 24 * HOUR).await.unwrap();
        let out = w.close(None).await.unwrap();
        let part = w.dims_part();
        let part_values = part.column(1).to_data().buffers()[1].as_ptr();
        let mut owners = Vec::new();
        for b in out.iter().flat_map(|e| &e.parts) {
            assert_eq!(b.schema(), emitted_schema());
            let owner = b.column_by_name("owner").unwrap().as_dictionary::<UInt32Type>();
            // "b" was seen first: id 1 ("__other__" is 0)
            assert_eq!(owner.values().len(), 3);
            assert_eq!(owner.values().to_data().buffers()[1].as_ptr(), part_values, "the dictionary part's bytes");
            let s = crate::dims::Strs::of(b, "owner");
            owners.extend((0..b.num_rows()).map(|r| (owner.keys().value(r), s.value(r).to_string())));
        }
        owners.sort();
        owners.dedup();
        assert_eq!(owners, [(1, "b".to_string()), (2, "a".to_string())]);
        // the measures no event has are the shared zero (or null) columns in every part, through the GROUP
        // BY, the 1h and 1d windows' merges and the close; those with values are not
        use crate::zeros::{Fill, fill_of};
        for b in out.iter().flat_map(|e| &e.parts) {
            let fill = |n: &str| fill_of(b.column_by_name(n).unwrap().as_ref());
            let shared = (fill("audio_input_tokens"), fill("retry_cost_usd"), fill("reported_cost_usd"));
            assert_eq!(shared, (Some(Fill::Zero), Some(Fill::Zero), Some(Fill::Null)));
            assert_eq!((fill("input_tokens"), fill("requests"), fill("cost_usd")), (None, None, None));
        }
        // as plain strings, the same totals per owner
        let day = out.iter().find(|e| e.size.label == "1d").unwrap().rows();
        let names = crate::dims::Strs::of(&day, "owner");
        let tokens = day.column_by_name("input_tokens").unwrap().as_primitive::<Int64Type>();
        let mut per_owner: Vec<(&str, i64)> = (0..day.num_rows()).map(|r| (names.value(r), tokens.value(r))).collect();
        per_owner.sort();
        assert_eq!(per_owner, [("a", 2), ("b", 5)]);
    }

    /// The snapshot's rows carry dimension ids: a restore takes their values from the snapshot's own
    /// dictionary (not the restoring engine's, whose ids differ), rows written with values (a lake from
    /// before the dictionary) restore as they are, and ids without a dictionary are an error.
    #[tokio::test]
    async fn a_restore_takes_dimension_values_from_the_snapshots_dictionary() {
        let mut w = engine();
        w.add(batch(&[ev(T0, "a", 3, Some(5)), ev(T0 + HOUR, "b", 4, Some(6))]), None, 24 * HOUR).await.unwrap();
        let snap = w.snapshot();
        // another engine that has seen other values first: "b" and "a" have other ids there
        let mut w2 = engine();
        w2.add(batch(&[ev(T0, "z", 1, Some(1)), ev(T0, "b", 1, Some(1))]), None, 24 * HOUR).await.unwrap();
        w2.close(None).await.unwrap();
        w2.absorb(with_dims(&mut w, snap.clone())).unwrap();
        let per_owner = |out: &[Emitted]| {
            let rows = out.iter().find(|e| e.size.label == "1d").unwrap().rows();
            let owner = rows.column_by_name("owner").unwrap().as_string::<i32>();
            let tokens = rows.column_by_name("input_tokens").unwrap().as_primitive::<Int64Type>();
            let mut m = std::collections::BTreeMap::new();
            for i in 0..rows.num_rows() {
                *m.entry(owner.value(i).to_string()).or_insert(0) += tokens.value(i);
            }
            m
        };
        let out = w2.close(None).await.unwrap();
        assert_eq!(per_owner(&out), [("a".to_string(), 3), ("b".to_string(), 4)].into());
        // rows with values, as a lake written before the dictionary has them
        let legacy: Vec<(String, RecordBatch)> = snap
            .iter()
            .flat_map(|(s, bs)| bs.iter().map(|b| (s.label.clone(), to_rollup(b, &w.dims).unwrap())))
            .collect();
        let mut w3 = engine();
        w3.restore(legacy).unwrap();
        assert_eq!(per_owner(&w3.close(None).await.unwrap()), [("a".to_string(), 3), ("b".to_string(), 4)].into());
        // ids and no dictionary
        let bare: Vec<(String, RecordBatch)> =
            snap.into_iter().flat_map(|(s, bs)| bs.into_iter().map(move |b| (s.label.clone(), b))).collect();
        let err = engine().restore(bare).unwrap_err().to_string();
        assert!(err.contains("no __dims part"), "{err}");
    }
}
