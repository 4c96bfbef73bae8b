//! The priced, attributed usage event batch: what `ingest` hands to `aggregate`.
//!
//! One row per accepted model call. The canonical *input* format (JSON) is documented in
//! `schemas/usage_event.schema.json` and `schemas/usage_event.avsc`; this is its normalized, priced form.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::money::cost_type;

/// Event time (call start), UTC milliseconds.
pub const TS: &str = "ts";
/// 128-bit hash of `event_id`, the deduplication key.
pub const EVENT_KEY: &str = "event_key";
/// Length in bytes of [`EVENT_KEY`].
pub const EVENT_KEY_LEN: i32 = 16;

/// Dimension columns (strings) shared by events and rollups, in rollup order.
pub const DIMENSIONS: [&str; 11] = [
    "owner",
    "risk_owner",
    "team",
    "project",
    "workflow",
    "environment",
    "identity",
    "provider",
    "model",
    "service_tier",
    // cost lineage: the catalog entry and version that priced the call ("" = unpriced)
    "price_id",
];

/// Count measures of an event (0/1 flags and token counts), summed in rollups under the same name.
/// `requests` is not an event column: it is `count(*)`.
/// Inclusion: cache reads/writes and uncached audio input are inside `input_tokens`, 1-hour cache writes
/// inside `cache_write_tokens`, reasoning and audio output inside `output_tokens`.
pub const EVENT_COUNTS: [&str; 15] = [
    "error_requests",
    "retry_requests",
    "unpriced_requests",
    // calls whose source reported no usage (e.g. a stream without usage): counted, cost unknown
    "usage_missing_requests",
    // calls answered from the gateway's own response cache: no provider cost
    "cache_hit_requests",
    // calls for which the gateway reported its own cost figure (`reported_cost_usd`)
    "reported_requests",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "audio_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "audio_output_tokens",
    "retrieval_calls",
];

/// Money measures (Decimal128(38, 18), null = unknown).
/// `failed_cost_usd`: the cost of calls with status error (0 for others); `retry_cost_usd`: the cost of calls
/// that are retries (`attempt > 1`, or a repeated `trace_id` + `step`). Both are parts of `cost_usd`.
pub const EVENT_MONEY: [&str; 4] = ["cost_usd", "reported_cost_usd", "failed_cost_usd", "retry_cost_usd"];

/// Hash of `trace_id` + `step` (null when the call has no step): a second call of the same agent step in
/// the same trace is a retry, marked after deduplication (not a rollup column).
pub const RETRY_KEY: &str = "retry_key";

/// The Arrow schema of a priced event batch.
pub fn priced_event_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let mut fields = vec![
                Field::new(TS, DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
                Field::new(EVENT_KEY, DataType::FixedSizeBinary(EVENT_KEY_LEN), false),
            ];
            for d in DIMENSIONS {
                fields.push(Field::new(d, DataType::Utf8, false));
            }
            for c in EVENT_COUNTS {
                fields.push(Field::new(c, DataType::Int64, false));
            }
            for m in EVENT_MONEY {
                fields.push(Field::new(m, cost_type(), true));
            }
            fields.push(Field::new(RETRY_KEY, DataType::FixedSizeBinary(EVENT_KEY_LEN), true));
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// Owner given to calls that match no owner rule.
pub const UNATTRIBUTED: &str = "unattributed";
/// Identity given to calls that carry no API key and no service account.
pub const UNKNOWN_IDENTITY: &str = "unknown";
