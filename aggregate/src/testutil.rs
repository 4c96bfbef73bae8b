//! Builders of priced event batches for the unit tests.

use std::sync::Arc;

use aifinops_schemas::event::priced_event_schema;
use aifinops_schemas::money::{COST_PRECISION, COST_SCALE};
use datafusion::arrow::array::{
    ArrayRef, Decimal128Array, FixedSizeBinaryArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};

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
