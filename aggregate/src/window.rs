//! Event-time tumbling windows: partial aggregation per micro-batch into hash tables keyed by window and
//! interned dimensions, emission of windows the watermark has passed.
//!
//! Each micro-batch of priced events is folded row by row into one table per window size: the key is the
//! window start, the late flag and the 11 dimensions as interned ids (a string is hashed once per batch
//! column run, not once per window size), the value the sums of the count and money measures. State is
//! therefore O(open windows x keys), never O(events). [`WindowEngine::close`] emits, as Arrow batches in the
//! rollup schema, every row whose `window_end <= watermark`. (Earlier versions ran three DataFusion SQL
//! aggregations per micro-batch and a merge per commit; the hash tables give the same rows at a fraction of
//! the cost: see bench/README.md.)
//!
//! A row is flagged `late` when its window had already ended more than `allowed_lateness` before the
//! watermark when its events arrived. Late rows and rows for windows that closed earlier are emitted as
//! additional, additive rows: a window's total is always the SUM of its rows.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use aifinops_schemas::event::{DIMENSIONS, EVENT_COUNTS, EVENT_MONEY, TS};
use aifinops_schemas::money::{COST_PRECISION, COST_SCALE};
use aifinops_schemas::rollup::{LATE, REQUESTS, rollup_schema};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Int64Array, RecordBatch, StringBuilder,
    TimestampMillisecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{Decimal128Type, Int64Type, TimestampMillisecondType};

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

const NDIM: usize = DIMENSIONS.len();
/// `requests` and the event counts.
const NCOUNT: usize = 1 + EVENT_COUNTS.len();
const NMONEY: usize = EVENT_MONEY.len();

/// FxHash (rustc's): a multiply-rotate hash, fast on short fixed keys; the inputs are our own ids and
/// dimension strings, and a table is per process, so flooding is no concern beyond what the key cap bounds.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let r = chunks.remainder();
        if !r.is_empty() {
            let mut b = [0u8; 8];
            b[..r.len()].copy_from_slice(r);
            self.add(u64::from_le_bytes(b) ^ ((r.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_i64(&mut self, i: i64) {
        self.add(i as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // the multiply leaves the entropy in the high bits; hashbrown indexes buckets with the low ones
        self.0.rotate_left(26)
    }
}

pub(crate) type Fx = BuildHasherDefault<FxHasher>;

/// Dimension strings as dense ids.
#[derive(Default)]
struct Interner {
    ids: HashMap<Arc<str>, u32, Fx>,
    strs: Vec<Arc<str>>,
}

impl Interner {
    #[inline]
    fn id(&mut self, s: &str) -> u32 {
        if let Some(i) = self.ids.get(s) {
            return *i;
        }
        let a: Arc<str> = Arc::from(s);
        let i = self.strs.len() as u32;
        self.strs.push(a.clone());
        self.ids.insert(a, i);
        i
    }
    fn get(&self, i: u32) -> &str {
        &self.strs[i as usize]
    }
}

/// Interned strings beyond which the interner is rebuilt from the live keys (on close): ids of keys long
/// emitted must not accumulate in a process that runs for months.
const INTERNER_REBUILD: usize = 1 << 18;

/// A row's identity: window start, late flag, interned dimensions.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    start: i64,
    late: bool,
    dims: [u32; NDIM],
}

/// A row's measures: SQL sums (a money sum over only null values is null).
#[derive(Clone, Copy, Default)]
struct Acc {
    counts: [i64; NCOUNT],
    money: [i128; NMONEY],
    valid: [bool; NMONEY],
}

impl Acc {
    #[inline]
    fn add(&mut self, o: &Acc) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a = a.wrapping_add(*b);
        }
        for k in 0..NMONEY {
            if o.valid[k] {
                self.money[k] = self.money[k].wrapping_add(o.money[k]);
                self.valid[k] = true;
            }
        }
    }
    fn money(&self, k: usize) -> Option<i128> {
        self.valid[k].then_some(self.money[k])
    }
}

type Table = HashMap<Key, Acc, Fx>;

struct Series {
    size: WindowSize,
    /// Open rows: one per window, key and late flag.
    rows: Table,
    /// Rows right after the key cap was last applied: the cap runs again when they double.
    rows_after_cap: usize,
}

/// The windowed aggregation of one pipeline.
pub struct WindowEngine {
    series: Vec<Series>,
    strings: Interner,
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

/// Growth of a series' open rows (beyond a tenth) after which the key cap is applied before the next close.
const COMPACT_ROWS: usize = 10_000;

/// The dimensions kept when a key is folded into an overflow row.
const KEPT_ON_OVERFLOW: [&str; 2] = ["owner", "risk_owner"];

fn arrow_err(context: &str) -> impl FnOnce(datafusion::arrow::error::ArrowError) -> AggregateError + '_ {
    move |e| AggregateError::Arrow { context: context.to_string(), source: e }
}

impl WindowEngine {
    /// `sizes` in any order; the engine keeps them sorted finest first.
    pub fn new(mut sizes: Vec<WindowSize>) -> Result<Self, AggregateError> {
        if sizes.is_empty() {
            return Err(AggregateError::Config("at least one window size is required".into()));
        }
        sizes.sort_by_key(|s| s.ms);
        sizes.dedup_by_key(|s| s.ms);
        let series = sizes.into_iter().map(|size| Series { size, rows: Table::default(), rows_after_cap: 0 }).collect();
        Ok(WindowEngine { series, strings: Interner::default(), key_cap: usize::MAX, overflowed: 0 })
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

    pub fn sizes(&self) -> Vec<WindowSize> {
        self.series.iter().map(|s| s.size.clone()).collect()
    }

    /// Applies the key cap to series `i`: per window and late flag, rows ranked by cost (descending, unknown
    /// last), requests (descending) and the dimensions (ascending); rows ranked beyond the cap are folded.
    fn cap(&mut self, i: usize) {
        let cap = self.key_cap;
        let len = self.series[i].rows.len();
        self.series[i].rows_after_cap = len;
        if len <= cap {
            return;
        }
        let rows = &self.series[i].rows;
        let mut per: HashMap<(i64, bool), usize, Fx> = HashMap::default();
        for k in rows.keys() {
            *per.entry((k.start, k.late)).or_default() += 1;
        }
        per.retain(|_, n| *n > cap);
        if per.is_empty() {
            return;
        }
        let other = self.strings.id(OVERFLOW);
        let kept: Vec<bool> = DIMENSIONS.iter().map(|d| KEPT_ON_OVERFLOW.contains(d)).collect();
        let rows = &mut self.series[i].rows;
        let mut groups: HashMap<(i64, bool), Vec<(Key, Acc)>, Fx> = HashMap::default();
        rows.retain(|k, a| match per.contains_key(&(k.start, k.late)) {
            true => {
                groups.entry((k.start, k.late)).or_default().push((*k, *a));
                false
            }
            false => true,
        });
        let strings = &self.strings;
        let mut over = 0usize;
        for (_, mut g) in groups {
            // the top `cap` by the ranking below (a total order: keys are unique): a selection, not a sort
            g.select_nth_unstable_by(cap - 1, |(ka, a), (kb, b)| {
                // cost DESC NULLS LAST
                let cost = match (a.money(0), b.money(0)) {
                    (Some(x), Some(y)) => y.cmp(&x),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                };
                cost.then_with(|| b.counts[0].cmp(&a.counts[0])).then_with(|| {
                    ka.dims
                        .iter()
                        .zip(&kb.dims)
                        .map(
                            |(x, y)| {
                                if x == y { std::cmp::Ordering::Equal } else { strings.get(*x).cmp(strings.get(*y)) }
                            },
                        )
                        .find(|o| o.is_ne())
                        .unwrap_or(std::cmp::Ordering::Equal)
                })
            });
            over += g.len() - cap;
            for (rank, (mut k, a)) in g.into_iter().enumerate() {
                if rank >= cap {
                    for (d, keep) in k.dims.iter_mut().zip(&kept) {
                        if !keep {
                            *d = other;
                        }
                    }
                }
                rows.entry(k).or_default().add(&a);
            }
        }
        self.series[i].rows_after_cap = rows.len();
        self.overflowed += over as u64;
        metrics::counter!("aifinops_window_overflow_keys_total").increment(over as u64);
        tracing::debug!(keys = over, cap, "keys beyond the window key cap folded into __other__");
    }

    /// Adds one micro-batch of (deduplicated) priced events. `watermark_ms` is the watermark before this
    /// batch; events whose window ended more than `allowed_lateness_ms` before it are flagged late.
    /// Returns the partial rows of this batch for the finest window size (used by the alert rules).
    pub async fn add(
        &mut self,
        events: &RecordBatch,
        watermark_ms: Option<i64>,
        allowed_lateness_ms: i64,
    ) -> Result<RecordBatch, AggregateError> {
        let cutoff = watermark_ms.map_or(0, |w| w.saturating_sub(allowed_lateness_ms).max(0));
        let n = events.num_rows();
        let col = |name: &str| {
            events.column_by_name(name).ok_or_else(|| AggregateError::Config(format!("event batch has no {name}")))
        };
        // dimension ids, column by column (a run of equal values is interned once)
        let mut dims: Vec<[u32; NDIM]> = vec![[0; NDIM]; n];
        for (d, name) in DIMENSIONS.iter().enumerate() {
            let c = col(name)?.as_string::<i32>();
            let mut last: Option<(&str, u32)> = None;
            for (i, row) in dims.iter_mut().enumerate() {
                let v = if c.is_null(i) { "" } else { c.value(i) };
                let id = match last {
                    Some((s, id)) if s == v => id,
                    _ => {
                        let id = self.strings.id(v);
                        last = Some((v, id));
                        id
                    }
                };
                row[d] = id;
            }
        }
        let ts = col(TS)?.as_primitive::<TimestampMillisecondType>().values();
        let counts: Vec<&[i64]> = EVENT_COUNTS
            .iter()
            .map(|c| col(c).map(|a| a.as_primitive::<Int64Type>().values().as_ref()))
            .collect::<Result<_, _>>()?;
        let money: Vec<&Decimal128Array> =
            EVENT_MONEY.iter().map(|m| col(m).map(|a| a.as_primitive::<Decimal128Type>())).collect::<Result<_, _>>()?;
        let mut finest = Table::default();
        for i in 0..n {
            let mut acc = Acc::default();
            acc.counts[0] = 1;
            for (k, c) in counts.iter().enumerate() {
                acc.counts[k + 1] = c[i];
            }
            for (k, m) in money.iter().enumerate() {
                if m.is_valid(i) {
                    acc.money[k] = m.value(i);
                    acc.valid[k] = true;
                }
            }
            for (s, series) in self.series.iter_mut().enumerate() {
                let ms = series.size.ms;
                let start = ts[i].div_euclid(ms) * ms;
                let key = Key { start, late: start.saturating_add(ms) <= cutoff, dims: dims[i] };
                if s == 0 {
                    finest.entry(key).or_default().add(&acc);
                } else {
                    series.rows.entry(key).or_default().add(&acc);
                }
            }
        }
        let rows = &mut self.series[0].rows;
        rows.reserve(finest.len());
        for (k, a) in &finest {
            rows.entry(*k).or_default().add(a);
        }
        // the key cap bounds the state between closes too: it is applied again once the rows grew by a tenth
        // (a selection per window, linear in its rows)
        for i in 0..self.series.len() {
            let s = &self.series[i];
            if s.rows.len() > self.key_cap
                && s.rows.len() > s.rows_after_cap + (s.rows_after_cap / 10).max(COMPACT_ROWS)
            {
                self.cap(i);
            }
        }
        let size_ms = self.series[0].size.ms;
        let part: Vec<(&Key, &Acc)> = finest.iter().collect();
        self.batch(size_ms, &part)
    }

    /// Rows as a batch in the rollup schema.
    fn batch(&self, size_ms: i64, rows: &[(&Key, &Acc)]) -> Result<RecordBatch, AggregateError> {
        let n = rows.len();
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(rollup_schema().fields().len());
        let start = TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.0.start)).with_timezone("UTC");
        let end = TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.0.start.saturating_add(size_ms)))
            .with_timezone("UTC");
        cols.push(Arc::new(start));
        cols.push(Arc::new(end));
        for d in 0..NDIM {
            let bytes = rows.iter().map(|r| self.strings.get(r.0.dims[d]).len()).sum();
            let mut b = StringBuilder::with_capacity(n, bytes);
            for r in rows {
                b.append_value(self.strings.get(r.0.dims[d]));
            }
            cols.push(Arc::new(b.finish()));
        }
        for c in 0..NCOUNT {
            cols.push(Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1.counts[c]))));
        }
        for m in 0..NMONEY {
            let a = Decimal128Array::from_iter(rows.iter().map(|r| r.1.money(m)))
                .with_precision_and_scale(COST_PRECISION, COST_SCALE)
                .map_err(arrow_err("building rollup rows"))?;
            cols.push(Arc::new(a));
        }
        cols.push(Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.0.late)))));
        RecordBatch::try_new(rollup_schema(), cols).map_err(arrow_err("building rollup rows"))
    }

    /// Returns the rows of every window whose end is at or before `watermark_ms` (`None` = end of input:
    /// everything), after applying the key cap.
    pub async fn close(&mut self, watermark_ms: Option<i64>) -> Result<Vec<Emitted>, AggregateError> {
        let mut out = Vec::new();
        for i in 0..self.series.len() {
            if self.series[i].rows.is_empty() {
                continue;
            }
            self.cap(i);
            let s = &mut self.series[i];
            let ms = s.size.ms;
            let closed: Vec<(Key, Acc)> = match watermark_ms {
                None => s.rows.drain().collect(),
                Some(w) => s.rows.extract_if(|k, _| k.start.saturating_add(ms) <= w).collect(),
            };
            s.rows_after_cap = s.rows.len();
            if closed.is_empty() {
                continue;
            }
            // in window order (references are sorted, not the rows)
            let mut refs: Vec<(&Key, &Acc)> = closed.iter().map(|(k, a)| (k, a)).collect();
            refs.sort_unstable_by_key(|r| r.0.start);
            let size = s.size.clone();
            out.push(Emitted { rows: self.batch(ms, &refs)?, size });
        }
        self.rebuild_strings();
        Ok(out)
    }

    /// Drops interned strings no open row uses, once there are many.
    fn rebuild_strings(&mut self) {
        if self.strings.strs.len() < INTERNER_REBUILD {
            return;
        }
        let old = std::mem::take(&mut self.strings);
        for s in &mut self.series {
            let rows = std::mem::take(&mut s.rows);
            s.rows = rows
                .into_iter()
                .map(|(mut k, a)| {
                    for d in &mut k.dims {
                        *d = self.strings.id(old.get(*d));
                    }
                    (k, a)
                })
                .collect();
        }
    }

    /// Open rows per window size, for the commit's state snapshot.
    pub async fn snapshot(&mut self) -> Result<Vec<(WindowSize, RecordBatch)>, AggregateError> {
        let mut out = Vec::new();
        for s in &self.series {
            if s.rows.is_empty() {
                continue;
            }
            let rows: Vec<(&Key, &Acc)> = s.rows.iter().collect();
            out.push((s.size.clone(), self.batch(s.size.ms, &rows)?));
        }
        Ok(out)
    }

    /// Replaces all state with a snapshot (on start and on rollback).
    pub fn restore(&mut self, snapshot: Vec<(String, RecordBatch)>) -> Result<(), AggregateError> {
        for s in &mut self.series {
            s.rows.clear();
            s.rows_after_cap = 0;
        }
        for (label, batch) in snapshot {
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
            let i = self
                .series
                .iter()
                .position(|s| s.size.label == label)
                .ok_or_else(|| AggregateError::Config(format!("state has window size {label} that is no longer configured; keep it in `windows` or start a new lake")))?;
            let batch = conform(batch)?;
            let starts = batch.column(0).as_primitive::<TimestampMillisecondType>().values().clone();
            let late = batch.column_by_name(LATE).expect("late").as_boolean().clone();
            let dims: Vec<_> =
                DIMENSIONS.iter().map(|d| batch.column_by_name(d).expect("dim").as_string::<i32>().clone()).collect();
            let counts: Vec<_> = std::iter::once(REQUESTS)
                .chain(EVENT_COUNTS)
                .map(|c| batch.column_by_name(c).expect("count").as_primitive::<Int64Type>().clone())
                .collect();
            let money: Vec<_> = EVENT_MONEY
                .iter()
                .map(|m| batch.column_by_name(m).expect("money").as_primitive::<Decimal128Type>().clone())
                .collect();
            for r in 0..batch.num_rows() {
                let mut key = Key { start: starts[r], late: late.value(r), dims: [0; NDIM] };
                for (d, c) in dims.iter().enumerate() {
                    key.dims[d] = self.strings.id(c.value(r));
                }
                let mut acc = Acc::default();
                for (k, c) in counts.iter().enumerate() {
                    acc.counts[k] = c.value(r);
                }
                for (k, m) in money.iter().enumerate() {
                    if m.is_valid(r) {
                        acc.money[k] = m.value(r);
                        acc.valid[k] = true;
                    }
                }
                self.series[i].rows.entry(key).or_default().add(&acc);
            }
            self.series[i].rows_after_cap = self.series[i].rows.len();
        }
        Ok(())
    }

    /// Number of open (window, key) rows held, for metrics.
    pub fn open_rows(&self) -> usize {
        self.series.iter().map(|s| s.rows.len()).sum()
    }
}

/// Casts a state batch to the exact rollup schema (types and nullability).
fn conform(b: RecordBatch) -> Result<RecordBatch, AggregateError> {
    let schema = rollup_schema();
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
    RecordBatch::try_new(schema, cols).map_err(arrow_err("building rollup rows"))
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
