//! Builders of priced event batches for the unit tests.

use std::sync::Arc;

use aifinops_schemas::event::priced_event_schema;
use aifinops_schemas::money::{COST_PRECISION, COST_SCALE};
use datafusion::arrow::array::{
    ArrayRef, Decimal128Array, FixedSizeBinaryArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};

/// Pseudo-random words (xorshift64), the same on every run.
pub fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// One test event: time, owner, identity, input tokens, cost in 10^-18 USD (None = unpriced).
pub struct Ev<'a> {
    pub ts: i64,
    pub id: u128,
    pub owner: &'a str,
    pub identity: &'a str,
    pub input: i64,
    pub cost: Option<i128>,
}

pub fn batch(evs: &[Ev<'_>]) -> RecordBatch {
    let schema = priced_event_schema();
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(evs.iter().map(|e| e.ts)).with_timezone("UTC")),
        Arc::new(FixedSizeBinaryArray::try_from_iter(evs.iter().map(|e| e.id.to_le_bytes())).unwrap()),
    ];
    for f in schema.fields().iter().skip(2) {
        let name = f.name().as_str();
        let col: ArrayRef = match name {
            "owner" => Arc::new(StringArray::from_iter_values(evs.iter().map(|e| e.owner))),
            "identity" => Arc::new(StringArray::from_iter_values(evs.iter().map(|e| e.identity))),
            "model" => Arc::new(StringArray::from_iter_values(
                evs.iter().map(|e| if e.cost.is_some() { "m" } else { "unknown-model" }),
            )),
            "input_tokens" => Arc::new(Int64Array::from_iter_values(evs.iter().map(|e| e.input))),
            "retry_key" => Arc::new(FixedSizeBinaryArray::new_null(16, evs.len())),
            "unpriced_requests" => Arc::new(Int64Array::from_iter_values(evs.iter().map(|e| e.cost.is_none() as i64))),
            "cost_usd" => Arc::new(
                Decimal128Array::from_iter(evs.iter().map(|e| e.cost))
                    .with_precision_and_scale(COST_PRECISION, COST_SCALE)
                    .unwrap(),
            ),
            "reported_cost_usd" => Arc::new(
                Decimal128Array::from_iter(evs.iter().map(|_| None::<i128>))
                    .with_precision_and_scale(COST_PRECISION, COST_SCALE)
                    .unwrap(),
            ),
            _ if matches!(f.data_type(), datafusion::arrow::datatypes::DataType::Decimal128(_, _)) => Arc::new(
                Decimal128Array::from_iter_values(evs.iter().map(|_| 0))
                    .with_precision_and_scale(COST_PRECISION, COST_SCALE)
                    .unwrap(),
            ),
            _ if matches!(f.data_type(), datafusion::arrow::datatypes::DataType::Utf8) => {
                Arc::new(StringArray::from_iter_values(evs.iter().map(|_| "")))
            }
            _ => Arc::new(Int64Array::from_iter_values(evs.iter().map(|_| 0))),
        };
        cols.push(col);
    }
    RecordBatch::try_new(schema, cols).unwrap()
}

/// A closed window of `n` rollup rows: `column(name)` gives a column, every other one is filled with
/// defaults (window 10:00-11:00 of day 0 for `1h`, day 2026-11-04 for `1d`; empty strings, zeros, not late).
pub fn rollup_window(n: usize, size: &str, column: impl Fn(&str) -> Option<ArrayRef>) -> crate::Emitted {
    use aifinops_schemas::rollup::rollup_schema;
    use datafusion::arrow::array::BooleanArray;
    use datafusion::arrow::datatypes::DataType;
    let size = crate::WindowSize::parse(size).unwrap();
    let start = if size.ms == 86_400_000 { 1_793_750_400_000 } else { 10 * size.ms };
    let schema = rollup_schema();
    let cols: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| {
            column(f.name()).unwrap_or_else(|| match (f.name().as_str(), f.data_type()) {
                ("window_start", _) => Arc::new(TimestampMillisecondArray::from(vec![start; n]).with_timezone("UTC")),
                ("window_end", _) => {
                    Arc::new(TimestampMillisecondArray::from(vec![start + size.ms; n]).with_timezone("UTC"))
                }
                ("late", _) => Arc::new(BooleanArray::from(vec![false; n])),
                (_, DataType::Utf8) => Arc::new(StringArray::from_iter_values((0..n).map(|_| ""))),
                (_, DataType::Decimal128(_, _)) => Arc::new(
                    Decimal128Array::from(vec![0i128; n]).with_precision_and_scale(COST_PRECISION, COST_SCALE).unwrap(),
                ),
                _ => Arc::new(Int64Array::from(vec![0; n])),
            })
        })
        .collect();
    crate::Emitted { size, parts: vec![RecordBatch::try_new(schema, cols).unwrap()] }
}

/// A Decimal128(38, 18) column of USD amounts (`None` = NULL).
pub fn usd_column<S: AsRef<str>>(values: impl IntoIterator<Item = Option<S>>) -> ArrayRef {
    let v: Vec<Option<i128>> =
        values.into_iter().map(|x| x.map(|s| aifinops_schemas::money::parse_usd("usd", s.as_ref()).unwrap())).collect();
    Arc::new(Decimal128Array::from(v).with_precision_and_scale(COST_PRECISION, COST_SCALE).unwrap())
}
