//! Rollup rows: additive sums per event-time window and key, as written to `<lake>/rollups/`.
//!
//! The true total of a window and key is the SUM over its rows: a window may have several rows (one per
//! flush, late corrections flagged `late = true`), so every reader aggregates. The window size is not a
//! column: it is the Hive partition key `window=1m|1h|1d` of the file's directory.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::event::{DIMENSIONS, EVENT_COUNTS, EVENT_MONEY};
use crate::money::cost_type;

pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";
pub const REQUESTS: &str = "requests";
pub const LATE: &str = "late";

/// The label of the commit state's part that holds the window engine's dictionary of dimension values (the
/// open window rows it keeps carry each dimension as an id into it): not a window size, and no open rows.
pub const DIMS_PART: &str = "__dims";

/// Every count measure of a rollup (all `Int64`, summed when merging).
pub fn count_measures() -> impl Iterator<Item = &'static str> {
    std::iter::once(REQUESTS).chain(EVENT_COUNTS)
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The Arrow schema of rollup rows in the lake.
pub fn rollup_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let mut fields = vec![Field::new(WINDOW_START, ts_type(), false), Field::new(WINDOW_END, ts_type(), false)];
            for d in DIMENSIONS {
                fields.push(Field::new(d, DataType::Utf8, false));
            }
            for c in count_measures() {
                fields.push(Field::new(c, DataType::Int64, false));
            }
            for m in EVENT_MONEY {
                fields.push(Field::new(m, cost_type(), true));
            }
            fields.push(Field::new(LATE, DataType::Boolean, false));
            Arc::new(Schema::new(fields))
        })
        .clone()
}
