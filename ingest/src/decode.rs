//! Decoding usage records straight into Arrow column builders, validating, pricing and attributing them on
//! the way. Bad records become [`DeadLetter`]s with a reason naming the field.
//!
//! The hot path (canonical JSON) deserializes each record into a borrowed struct (strings without escapes
//! are not copied) and appends to column builders; there is no per-event heap object. Other formats are
//! read into a `serde_json::Value` and normalized by [`crate::formats`] first.

use std::borrow::Cow;
use std::sync::Arc;

use aifinops_schemas::event::{UNATTRIBUTED, UNKNOWN_IDENTITY, priced_event_schema};
use aifinops_schemas::money::{COST_PRECISION, COST_SCALE, parse_usd};
use aifinops_schemas::secret::{redact, redact_field, redact_text};
use aifinops_schemas::{DeadLetter, SourceRef};
use arrow_array::builder::{
    ArrayBuilder, FixedSizeBinaryBuilder, PrimitiveBuilder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::types::{Decimal128Type, Int64Type};
use arrow_array::{ArrayRef, ArrowPrimitiveType, PrimitiveArray, RecordBatch};
use arrow_buffer::{Buffer, NullBuffer, ScalarBuffer};
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::catalog::{PriceCatalog, Tier, Tokens};
use crate::formats::{Call, Format, Reported, adapt};
use crate::owners::{Identity, MatchCache, OwnerMap};

/// Largest token count accepted (2^53, the largest integer every JSON reader keeps exact).
pub const MAX_COUNT: u64 = 1 << 53;
/// Largest gateway-reported cost of one call accepted: $1M (sums stay far inside Decimal128(38, 18)).
const MAX_REPORTED_COST: i128 = 1_000_000 * aifinops_schemas::money::ONE_USD;
/// Event times outside [2000-01-01, 2200-01-01) are rejected as implausible (epoch seconds sent as
/// milliseconds land in 1970; a broken clock in year 9999).
pub const MIN_TS_MS: i64 = 946_684_800_000;
pub const MAX_TS_MS: i64 = 7_258_118_400_000;

/// What to keep of a dead letter's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RawPolicy {
    /// Secret-looking tokens replaced by fingerprints (default: dead letters often have weaker access control).
    #[default]
    Redacted,
    /// The bytes exactly as received.
    Raw,
}

/// Counts of one decoded batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeStats {
    /// Model calls accepted (a record may carry several, or none).
    pub accepted: u64,
    pub dead_letters: u64,
    pub unpriced: u64,
    pub unattributed: u64,
    pub usage_missing: u64,
    /// Records read that carry no model call (e.g. a gateway log of a plain HTTP request).
    pub without_calls: u64,
}

/// The result of decoding a run of records.
#[derive(Debug)]
pub struct Decoded {
    pub batch: RecordBatch,
    pub dead_letters: Vec<DeadLetter>,
    pub stats: DecodeStats,
}

/// A token count as read, before validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    Ok(i64),
    Negative,
    NotInteger,
    TooLarge,
    WrongType(&'static str),
}

/// A count from a JSON number: `exact` when it was an integer literal that fits 64 bits. A number written
/// with a fraction or an exponent (`1.5`, `1000.0`, `1e3`) is not a count even when its value is whole:
/// read as a double, `1000.00000000000001` would be exactly 1000, so only integer literals are exact.
pub(crate) fn count_from_f64(v: f64, exact: Option<u64>) -> Count {
    if let Some(u) = exact {
        return if u > MAX_COUNT { Count::TooLarge } else { Count::Ok(u as i64) };
    }
    if v > MAX_COUNT as f64 {
        Count::TooLarge // also integer literals beyond 64 bits, which JSON readers hand over as doubles
    } else if v < 0.0 {
        Count::Negative
    } else {
        Count::NotInteger
    }
}

struct CountVisitor;
impl<'de> Visitor<'de> for CountVisitor {
    type Value = Count;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a non-negative integer")
    }
    fn visit_u64<E>(self, v: u64) -> Result<Count, E> {
        Ok(count_from_f64(v as f64, Some(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Count, E> {
        Ok(if v < 0 { Count::Negative } else { count_from_f64(v as f64, Some(v as u64)) })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Count, E> {
        Ok(count_from_f64(v, None))
    }
    fn visit_str<E>(self, _: &str) -> Result<Count, E> {
        Ok(Count::WrongType("string"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Count, E> {
        Ok(Count::WrongType("boolean"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Count, A::Error> {
        while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Count::WrongType("object"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Count, A::Error> {
        while s.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Count::WrongType("array"))
    }
}
impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CountVisitor)
    }
}

/// An event time as read, before validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ts {
    Ms(i64),
    Bad(&'static str),
}
struct TsVisitor;
impl<'de> Visitor<'de> for TsVisitor {
    type Value = Ts;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an RFC 3339 string or epoch milliseconds")
    }
    fn visit_u64<E>(self, v: u64) -> Result<Ts, E> {
        Ok(i64::try_from(v).map(Ts::Ms).unwrap_or(Ts::Bad("epoch milliseconds out of range")))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Ts, E> {
        Ok(Ts::Ms(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Ts, E> {
        Ok(if !v.is_finite() || v.fract() != 0.0 {
            Ts::Bad("epoch milliseconds must be an integer")
        } else if v.abs() < 9.0e15 {
            Ts::Ms(v as i64)
        } else {
            Ts::Bad("epoch milliseconds out of range")
        })
    }
    fn visit_str<E>(self, v: &str) -> Result<Ts, E> {
        Ok(match chrono::DateTime::parse_from_rfc3339(v) {
            Ok(d) => Ts::Ms(d.timestamp_millis()),
            Err(_) => Ts::Bad("not an RFC 3339 timestamp"),
        })
    }
    fn visit_bool<E>(self, _: bool) -> Result<Ts, E> {
        Ok(Ts::Bad("must be a string or a number, got boolean"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ts, A::Error> {
        while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Ts::Bad("must be a string or a number, got object"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Ts, A::Error> {
        while s.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Ts::Bad("must be a string or a number, got array"))
    }
}
impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TsVisitor)
    }
}

/// The canonical event as it appears on the wire. Unknown fields are ignored; the `_marker` fields only
/// note keys that other formats carry, so that `auto` sends such records to detection.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    timestamp: Option<Ts>,
    #[serde(borrow)]
    provider: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    input_tokens: Option<Count>,
    output_tokens: Option<Count>,
    cache_read_tokens: Option<Count>,
    cache_write_tokens: Option<Count>,
    cache_write_1h_tokens: Option<Count>,
    audio_input_tokens: Option<Count>,
    audio_output_tokens: Option<Count>,
    reasoning_tokens: Option<Count>,
    retrieval_calls: Option<Count>,
    #[serde(borrow)]
    service_tier: Option<Cow<'a, str>>,
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
    attempt: Option<Count>,
    #[serde(borrow)]
    trace_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    step: Option<&'a RawValue>,
    #[serde(borrow)]
    api_key_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    service_account: Option<Cow<'a, str>>,
    #[serde(borrow)]
    end_user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    team: Option<Cow<'a, str>>,
    #[serde(borrow)]
    project: Option<Cow<'a, str>>,
    #[serde(borrow)]
    workflow: Option<Cow<'a, str>>,
    #[serde(borrow)]
    environment: Option<Cow<'a, str>>,
    #[serde(rename = "tags")]
    _tags: Option<IgnoredAny>,
    cache_hit: Option<bool>,
    #[serde(borrow)]
    cost_usd: Option<&'a RawValue>,
    #[serde(alias = "specversion", alias = "resourceSpans", alias = "call_type", alias = "prompt_tokens")]
    #[serde(alias = "response_cost", alias = "spend", alias = "ai", alias = "ai_org", alias = "tokens_in")]
    #[serde(alias = "schemaType", alias = "usage", alias = "usageMetadata", alias = "custom_llm_provider")]
    #[serde(alias = "request_id", alias = "startTime")]
    response: Option<IgnoredAny>,
}

impl<'a> From<crate::fastjson::Flat<'a>> for Wire<'a> {
    fn from(f: crate::fastjson::Flat<'a>) -> Self {
        let [
            input,
            output,
            cache_read,
            cache_write,
            cache_write_1h,
            audio_input,
            audio_output,
            reasoning,
            retrieval,
            attempt,
        ] = f.counts;
        let [
            service_tier,
            status,
            trace_id,
            api_key_id,
            service_account,
            end_user,
            team,
            project,
            workflow,
            environment,
        ] = f.strs;
        Wire {
            event_id: f.event_id,
            timestamp: f.timestamp,
            provider: f.provider,
            model: f.model,
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: cache_read,
            cache_write_tokens: cache_write,
            cache_write_1h_tokens: cache_write_1h,
            audio_input_tokens: audio_input,
            audio_output_tokens: audio_output,
            reasoning_tokens: reasoning,
            retrieval_calls: retrieval,
            service_tier,
            status,
            attempt,
            trace_id,
            step: None,
            api_key_id,
            service_account,
            end_user,
            team,
            project,
            workflow,
            environment,
            _tags: None,
            cache_hit: f.cache_hit,
            cost_usd: None,
            response: None,
        }
    }
}

impl<'a> Wire<'a> {
    /// Whether the record has a key another format owns.
    fn foreign(&self) -> bool {
        self.response.is_some()
    }

    fn into_call(self) -> Call<'a> {
        let reported = self.cost_usd.and_then(|raw| {
            let t = raw.get();
            if t == "null" {
                return None;
            }
            let t = t.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(t);
            Some(Reported::Usd(Cow::Borrowed(t)))
        });
        Call {
            event_id: self.event_id,
            ts: self.timestamp,
            provider: self.provider,
            model: self.model,
            input: self.input_tokens,
            output: self.output_tokens,
            cache_read: self.cache_read_tokens,
            cache_write: self.cache_write_tokens,
            cache_write_1h: self.cache_write_1h_tokens,
            audio_input: self.audio_input_tokens,
            audio_output: self.audio_output_tokens,
            reasoning: self.reasoning_tokens,
            retrieval: self.retrieval_calls,
            service_tier: self.service_tier,
            status: self.status,
            attempt: self.attempt,
            trace_id: self.trace_id,
            step: self.step.and_then(|raw| {
                let t = raw.get();
                match t.as_bytes().first() {
                    Some(b'n') => None,
                    Some(b'"') if !t.contains('\\') => Some(Cow::Borrowed(&t[1..t.len() - 1])),
                    Some(b'-' | b'0'..=b'9') if !t.contains(['.', 'e', 'E']) => Some(Cow::Borrowed(t)),
                    _ => match serde_json::from_str::<serde_json::Value>(t) {
                        Ok(serde_json::Value::String(s)) => Some(Cow::Owned(s)),
                        _ => Some(Cow::Borrowed(crate::formats::BAD_STEP)),
                    },
                }
            }),
            api_key_id: self.api_key_id,
            service_account: self.service_account,
            end_user: self.end_user,
            team: self.team,
            project: self.project,
            workflow: self.workflow,
            environment: self.environment,
            cache_hit: self.cache_hit.unwrap_or(false),
            reported,
        }
    }
}

/// A rejected record: a short kind for metrics and a reason for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: &'static str,
    pub reason: String,
}

pub(crate) fn reject(kind: &'static str, reason: impl Into<String>) -> Rejection {
    Rejection { kind, reason: reason.into() }
}

fn count(field: &str, c: Option<Count>) -> Result<i64, Rejection> {
    match c {
        None => Ok(0),
        Some(Count::Ok(v)) => Ok(v),
        Some(Count::Negative) => Err(reject("invalid_count", format!("`{field}` is negative"))),
        Some(Count::NotInteger) => Err(reject("invalid_count", format!("`{field}` is not an integer"))),
        Some(Count::TooLarge) => Err(reject("invalid_count", format!("`{field}` is larger than 2^53"))),
        Some(Count::WrongType(t)) => {
            Err(reject("invalid_type", format!("`{field}` must be a non-negative integer, got {t}")))
        }
    }
}

fn required_str<'a>(field: &str, v: &'a Option<Cow<'_, str>>) -> Result<&'a str, Rejection> {
    match v.as_deref() {
        None => Err(reject("missing_field", format!("missing required field `{field}`"))),
        Some(s) if s.trim().is_empty() => Err(reject("missing_field", format!("required field `{field}` is empty"))),
        Some(s) => Ok(s),
    }
}

/// The record as a JSON value, or the reason it is not one.
fn parse_json(payload: &[u8]) -> Result<serde_json::Value, Rejection> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let parsed = Strict::deserialize(&mut de).and_then(|v| de.end().map(|()| v.0));
    parsed.map_err(|e| {
        let text = match std::str::from_utf8(payload) {
            Ok(t) => t,
            Err(u) => return reject("invalid_utf8", format!("not UTF-8 (invalid byte at {})", u.valid_up_to())),
        };
        if text.trim().is_empty() {
            return reject("empty", "empty record");
        }
        if text.starts_with('\u{feff}') {
            return reject("not_json", "not valid JSON: starts with a byte order mark (EF BB BF)");
        }
        let e = e.to_string();
        if e.starts_with(DUPLICATE_KEY) {
            return reject("duplicate_key", format!("{e}: which of the values counts would be a guess"));
        }
        reject("not_json", format!("not valid JSON: {e}"))
    })
}

/// Parses JSON text (a record, or a JSON document inside one of its strings) like [`serde_json::Value`],
/// but a key that appears twice in one object is an error (`duplicate key …`) instead of the last copy
/// silently winning.
pub(crate) fn parse_strict(text: &str) -> Result<serde_json::Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = Strict::deserialize(&mut de)?;
    de.end()?;
    Ok(v.0)
}

const DUPLICATE_KEY: &str = "duplicate key";

/// Largest nesting of JSON arrays and objects in a record.
pub const MAX_JSON_DEPTH: usize = 64;

/// Where a JSON text nests arrays and objects deeper than [`MAX_JSON_DEPTH`] (a byte offset), if it does.
/// Brackets inside strings do not count. Cheap for ordinary records: it only walks the text when it has
/// more than `MAX_JSON_DEPTH` opening brackets at all, counted 255 bytes at a time into a `u8` (which
/// vectorizes: about 2 % of decoding a canonical record).
fn too_deep(payload: &[u8]) -> Option<usize> {
    let mut brackets = 0usize;
    for chunk in payload.chunks(255) {
        // `{` is 0x7b and `[` 0x5b: the only bytes that are 0x7b with bit 0x20 set
        brackets += usize::from(chunk.iter().map(|&b| u8::from(b | 0x20 == b'{')).sum::<u8>());
        if brackets > MAX_JSON_DEPTH {
            break;
        }
    }
    if brackets <= MAX_JSON_DEPTH {
        return None;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in payload.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Some(i);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// A JSON value whose objects have no duplicate keys.
struct Strict(serde_json::Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;
impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(v.into()))
    }
    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(v.into()))
    }
    fn visit_none<E>(self) -> Result<Strict, E> {
        Ok(Strict(serde_json::Value::Null))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(serde_json::Value::Null))
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Strict, D::Error> {
        Strict::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Strict, A::Error> {
        let mut out = Vec::with_capacity(s.size_hint().unwrap_or(0).min(1024));
        while let Some(Strict(v)) = s.next_element()? {
            out.push(v);
        }
        Ok(Strict(serde_json::Value::Array(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Strict, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(k) = m.next_key::<String>()? {
            let Strict(v) = m.next_value()?;
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!("{DUPLICATE_KEY} `{}`", k.escape_debug())));
            }
            out.insert(k, v);
        }
        Ok(Strict(serde_json::Value::Object(out)))
    }
}

/// A string field that becomes a dimension or a key must not carry control characters (U+0000–U+001F,
/// U+007F): they are no part of a name, and in a report they can rewrite a terminal.
fn check_text(field: &str, v: Option<&str>) -> Result<(), Rejection> {
    if let Some(b) = v.and_then(|s| s.bytes().find(|b| *b < 0x20 || *b == 0x7f)) {
        return Err(reject("invalid_value", format!("`{field}` contains the control character U+{b:04X}")));
    }
    Ok(())
}

/// A gateway's cost figure in 10^-18 USD: exact when it has at most 18 decimals, else rounded half to even
/// (gateways sum floats: `0.0056725000000000005`); `cents` divides by 100 the same way.
fn parse_reported(field: &str, text: &str, cents: bool) -> Result<i128, String> {
    use rust_decimal::prelude::*;
    if let Ok(v) = parse_usd(field, text)
        && (!cents || v % 100 == 0)
    {
        return Ok(if cents { v / 100 } else { v });
    }
    let d = Decimal::from_str_exact(text)
        .or_else(|_| Decimal::from_scientific(text))
        .map_err(|e| format!("`{field}` {text:?} is not a decimal number: {e}"))?;
    let d = if cents { d / Decimal::ONE_HUNDRED } else { d };
    let d = d.round_dp_with_strategy(18, RoundingStrategy::MidpointNearestEven);
    parse_usd(field, &d.to_string()).map_err(|e| e.to_string())
}

/// An Avro-framed record on a topic of a JSON format: named as such rather than as broken JSON.
fn avro_on_json_topic(payload: &[u8], format: Format) -> Rejection {
    let framing = match payload {
        [0, a, b, c, d, ..] => format!("the Avro Confluent wire format (magic byte 0x00, schema id {})", {
            u32::from_be_bytes([*a, *b, *c, *d])
        }),
        [0, ..] => "a 0x00 byte, the magic byte of the Avro Confluent wire format".to_string(),
        _ => "0xC3 0x01, the marker of Avro single-object encoding".to_string(),
    };
    reject(
        "not_json",
        format!(
            "not JSON: starts with {framing}; Avro on a topic whose format is {format}? (set the topic's format to \
             avro or auto)"
        ),
    )
}

/// Lineage of rows that no catalog entry priced.
const PRICE_ID_GATEWAY_CACHE: &str = "gateway-cache-hit";

/// The price that priced a row: by slot in [`PriceIds`], not a clone of the catalog's `Arc<str>`.
#[derive(Clone, Copy)]
enum PriceId {
    None,
    GatewayCache,
    Slot(u32),
}

/// The price ids a decoder's rows name, one slot each, keyed by the address of the catalog's `Arc<str>`
/// (held here, so the address is not reused while it is a key). A row holding a clone of the `Arc`
/// instead cost an atomic increment and decrement per event, ~0.14 CPU s per million events (perf: 4 % of
/// the samples of a replay with the 1h window only, the twenty-first round).
#[derive(Default)]
struct PriceIds {
    ids: Vec<Arc<str>>,
    by_addr: std::collections::HashMap<usize, u32, foldhash::fast::FixedState>,
}

impl PriceIds {
    /// More distinct ids than this (owner-negotiated prices of many owners) are let go between batches.
    const MAX: usize = 4096;

    fn slot(&mut self, id: &Arc<str>) -> PriceId {
        let ids = &mut self.ids;
        let slot = *self.by_addr.entry(Arc::as_ptr(id) as *const u8 as usize).or_insert_with(|| {
            ids.push(Arc::clone(id));
            (ids.len() - 1) as u32
        });
        PriceId::Slot(slot)
    }

    fn get(&self, id: PriceId) -> &str {
        match id {
            PriceId::None => "",
            PriceId::GatewayCache => PRICE_ID_GATEWAY_CACHE,
            PriceId::Slot(i) => &self.ids[i as usize],
        }
    }
}

/// A validated, priced and attributed call, ready to append.
struct Row<'c> {
    ts: i64,
    key: [u8; 16],
    /// Index of the owner rule that matched.
    owner: Option<usize>,
    dims: [Option<&'c str>; 4],
    identity: &'c str,
    provider: &'c str,
    model: &'c str,
    tier: Tier,
    price_id: PriceId,
    counts: [i64; 15],
    cost: Option<i128>,
    reported: Option<i128>,
    retry_key: Option<[u8; 16]>,
}

/// Decodes, validates, prices and attributes records into one Arrow batch.
pub struct Decoder {
    catalog: Arc<PriceCatalog>,
    owners: Arc<OwnerMap>,
    max_record_bytes: usize,
    raw_policy: RawPolicy,
    owner_cache: MatchCache,
    price_ids: PriceIds,
    avro: Option<crate::avro::AvroDecoder>,
    ts: TimestampMillisecondBuilder,
    key: FixedSizeBinaryBuilder,
    dims: [StringBuilder; 11],
    counts: [Lazy<Int64Type>; 15],
    cost: Lazy<Decimal128Type>,
    reported: Lazy<Decimal128Type>,
    failed_cost: Lazy<Decimal128Type>,
    retry_cost: Lazy<Decimal128Type>,
    /// Zeros that the measure columns no row of a batch set share (see [`Lazy`]).
    zeros: Buffer,
    retry_key: FixedSizeBinaryBuilder,
    dead: Vec<DeadLetter>,
    stats: DecodeStats,
    /// The size of the last finished batch (rows, bytes per dimension), to size the builders for at the
    /// next batch's first row.
    presize_for: Option<(usize, [usize; 11])>,
}

/// A measure column of the batch being decoded that is written only from the first row whose value differs
/// from its default (0 for counts and for the failed and retry parts of the cost, null for a cost); until
/// then it counts rows. Most calls have no audio, no 1-hour cache writes, no error, no retry, no reported
/// cost: such a column of a batch is then a slice of the decoder's one buffer of zeros, not a buffer of its
/// own written full of them (13 of the 19 measure columns on the benchmark workload: 6.4 MB a batch of 50k
/// events). Readers see an ordinary array.
struct Lazy<T: ArrowPrimitiveType> {
    builder: PrimitiveBuilder<T>,
    /// The value the rows before the first that differs have: zero or null.
    default: Option<T::Native>,
    /// Rows of the batch while none differs.
    pending: usize,
    live: bool,
    /// Rows to reserve when a row differs (the last batch's).
    capacity: usize,
}

impl<T: ArrowPrimitiveType> Lazy<T> {
    /// `default` is zero or null (the rows before the first that differs read as zeros of the shared
    /// buffer, or as nulls).
    fn new(default: Option<T::Native>) -> Self {
        debug_assert!(default.is_none_or(|d| d == T::Native::default()), "the default is zero or null");
        Lazy { builder: PrimitiveBuilder::new(), default, pending: 0, live: false, capacity: 0 }
    }

    fn append(&mut self, v: Option<T::Native>) {
        if self.live {
            self.builder.append_option(v);
        } else if v == self.default {
            self.pending += 1;
        } else {
            self.go_live();
            self.builder.append_option(v);
        }
    }

    /// [`Lazy::append`] of a value that is never null (counts: no validity to keep).
    fn append_value(&mut self, v: T::Native) {
        if self.live {
            self.builder.append_value(v);
        } else if Some(v) == self.default {
            self.pending += 1;
        } else {
            self.go_live();
            self.builder.append_value(v);
        }
    }

    /// Writes the rows so far (all of the default) into a builder, from which on every row is written.
    #[cold]
    fn go_live(&mut self) {
        self.builder = PrimitiveBuilder::with_capacity(self.capacity.max(self.pending + 1));
        match self.default {
            Some(d) => self.builder.append_value_n(d, self.pending),
            None => self.builder.append_nulls(self.pending),
        }
        self.live = true;
    }

    /// The column, and the builder reset for the next batch; `zeros` holds at least 16 bytes a row.
    fn finish(&mut self, zeros: &Buffer) -> PrimitiveArray<T> {
        let rows = std::mem::take(&mut self.pending);
        if std::mem::take(&mut self.live) {
            return self.builder.finish();
        }
        let nulls = self.default.is_none().then(|| NullBuffer::new_null(rows));
        PrimitiveArray::new(ScalarBuffer::new(zeros.clone(), 0, rows), nulls)
    }
}

impl Decoder {
    pub fn new(
        catalog: Arc<PriceCatalog>,
        owners: Arc<OwnerMap>,
        max_record_bytes: usize,
        raw_policy: RawPolicy,
    ) -> Self {
        Decoder {
            catalog,
            owners,
            max_record_bytes,
            raw_policy,
            owner_cache: MatchCache::default(),
            price_ids: PriceIds::default(),
            avro: None,
            ts: TimestampMillisecondBuilder::new(),
            key: FixedSizeBinaryBuilder::new(aifinops_schemas::event::EVENT_KEY_LEN),
            dims: std::array::from_fn(|_| StringBuilder::new()),
            counts: std::array::from_fn(|_| Lazy::new(Some(0))),
            cost: Lazy::new(None),
            reported: Lazy::new(None),
            failed_cost: Lazy::new(Some(0)),
            retry_cost: Lazy::new(Some(0)),
            zeros: Buffer::from_vec(Vec::<i128>::new()),
            retry_key: FixedSizeBinaryBuilder::new(aifinops_schemas::event::EVENT_KEY_LEN),
            dead: Vec::new(),
            stats: DecodeStats::default(),
            presize_for: None,
        }
    }

    /// Enables Avro input (`format = "avro"`, or Avro framing seen by `auto`).
    pub fn with_avro(mut self, avro: crate::avro::AvroDecoder) -> Self {
        self.avro = Some(avro);
        self
    }

    /// Number of accepted events waiting in the builders.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts of the records pushed since the last [`Decoder::finish`].
    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    /// Decodes one record of `format`. `source` is only rendered when the record is rejected.
    /// Returns the latest event time of the calls it carried; `None` for a dead letter or a record
    /// without calls.
    pub fn push(
        &mut self,
        payload: &[u8],
        format: Format,
        source: impl FnOnce() -> SourceRef,
        received_ms: i64,
    ) -> Option<i64> {
        match self.try_push(payload, format) {
            Ok(ts) => ts,
            Err(r) => {
                self.dead_letter(payload, r, source, received_ms);
                None
            }
        }
    }

    /// The largest record accepted (`pipeline.max_record_bytes`): a source need not read more of one.
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// A record of `len` bytes that the source did not read whole because it is over
    /// [`Decoder::max_record_bytes`]: a `too_large` dead letter keeping `head`, the part that was read.
    pub fn push_too_large(&mut self, head: &[u8], len: u64, source: impl FnOnce() -> SourceRef, received_ms: i64) {
        let r = reject("too_large", format!("record is {len} bytes, over the {} byte limit", self.max_record_bytes));
        self.dead_letter(head, r, source, received_ms);
    }

    fn dead_letter(&mut self, payload: &[u8], r: Rejection, source: impl FnOnce() -> SourceRef, received_ms: i64) {
        self.stats.dead_letters += 1;
        let keep = payload.len().min(64 * 1024);
        let raw = match self.raw_policy {
            RawPolicy::Raw => payload[..keep].to_vec(),
            RawPolicy::Redacted => redact_text(&String::from_utf8_lossy(&payload[..keep])).into_bytes(),
        };
        self.dead.push(DeadLetter {
            source: source().to_string(),
            // reasons may quote a field's value: never let a secret through them either
            reason: redact_text(&r.reason),
            kind: r.kind,
            raw,
            received_at_ms: received_ms,
        });
    }

    fn try_push(&mut self, payload: &[u8], format: Format) -> Result<Option<i64>, Rejection> {
        if payload.len() > self.max_record_bytes {
            return Err(reject(
                "too_large",
                format!("record is {} bytes, over the {} byte limit", payload.len(), self.max_record_bytes),
            ));
        }
        if payload.is_empty() {
            // whatever the format (a Kafka tombstone on an Avro topic too)
            return Err(reject("empty", "empty record (no bytes)"));
        }
        let avro_framed = payload.first() == Some(&0) || payload.starts_with(&[0xC3, 0x01]);
        if !avro_framed
            && format != Format::Avro
            && let Some(at) = too_deep(payload)
        {
            return Err(reject(
                "too_deep",
                format!("JSON nested deeper than {MAX_JSON_DEPTH} arrays or objects (at byte {at})"),
            ));
        }
        match format {
            Format::Canonical | Format::Auto if !avro_framed => {
                // the hot path: canonical JSON read in place (the common flat shape by a reader that skips
                // serde's dispatch, anything else by serde)
                let wire = match crate::fastjson::read(payload) {
                    Some(f) => Ok(Wire::from(f)),
                    None => serde_json::from_slice::<Wire<'_>>(payload),
                };
                match wire {
                    // (usage missing takes the slow path, which checks for counts under other names)
                    Ok(w)
                        if (format == Format::Canonical || (!w.foreign() && w.event_id.is_some()))
                            && (w.input_tokens.is_some() || w.output_tokens.is_some()) =>
                    {
                        let call = w.into_call();
                        let row = self.row(&call)?;
                        let ts = row.ts;
                        self.append(row);
                        return Ok(Some(ts));
                    }
                    // not canonical-shaped, or a field of the wrong type: the slow path names the reason
                    Ok(_) | Err(_) => {}
                }
                let v = parse_json(payload)?;
                let calls = adapt(format, &v)?;
                self.accept(&calls)
            }
            Format::Avro | Format::Auto => {
                let Some(avro) = self.avro.as_mut() else {
                    return Err(reject(
                        "avro_not_configured",
                        format!(
                            "Avro-framed record (first byte 0x{:02x}) but no Avro schema source is configured \
                             ([avro] schema_registry_url or schema_files)",
                            payload.first().copied().unwrap_or(0)
                        ),
                    ));
                };
                let v = avro.decode(payload)?;
                let call = crate::formats::canonical(&v)?;
                self.accept(std::slice::from_ref(&call))
            }
            f => {
                if avro_framed {
                    return Err(avro_on_json_topic(payload, f));
                }
                let v = parse_json(payload)?;
                let calls = adapt(f, &v)?;
                self.accept(&calls)
            }
        }
    }

    /// Validates every call of a record, then appends them all (a record is accepted or rejected whole).
    fn accept(&mut self, calls: &[Call<'_>]) -> Result<Option<i64>, Rejection> {
        if calls.is_empty() {
            self.stats.without_calls += 1;
            return Ok(None);
        }
        let mut rows = Vec::with_capacity(calls.len());
        for (i, c) in calls.iter().enumerate() {
            rows.push(self.row(c).map_err(|r| {
                if calls.len() > 1 {
                    Rejection { kind: r.kind, reason: format!("call {} of {}: {}", i + 1, calls.len(), r.reason) }
                } else {
                    r
                }
            })?);
        }
        let mut max_ts = i64::MIN;
        for r in rows {
            max_ts = max_ts.max(r.ts);
            self.append(r);
        }
        Ok(Some(max_ts))
    }

    /// Validates, prices and attributes one call.
    fn row<'c>(&mut self, c: &'c Call<'_>) -> Result<Row<'c>, Rejection> {
        let event_id = required_str("event_id", &c.event_id)?;
        let provider = required_str("provider", &c.provider)?;
        let model = required_str("model", &c.model)?;
        for (field, v) in [
            ("event_id", Some(event_id)),
            ("provider", Some(provider)),
            ("model", Some(model)),
            ("api_key_id", c.api_key_id.as_deref()),
            ("service_account", c.service_account.as_deref()),
            ("team", c.team.as_deref()),
            ("project", c.project.as_deref()),
            ("workflow", c.workflow.as_deref()),
            ("environment", c.environment.as_deref()),
            ("trace_id", c.trace_id.as_deref()),
            ("step", c.step.as_deref().filter(|s| *s != crate::formats::BAD_STEP)),
        ] {
            check_text(field, v)?;
        }
        let ts = match c.ts {
            None => {
                return Err(reject("missing_field", "missing required field `timestamp`"));
            }
            Some(Ts::Bad(why)) => {
                return Err(reject("invalid_timestamp", format!("`timestamp` {why}")));
            }
            Some(Ts::Ms(ms)) if !(MIN_TS_MS..MAX_TS_MS).contains(&ms) => {
                return Err(reject(
                    "invalid_timestamp",
                    format!("`timestamp` {ms} ms is outside 2000-01-01..2200-01-01 (seconds instead of milliseconds?)"),
                ));
            }
            Some(Ts::Ms(ms)) => ms,
        };
        // Usage missing (both totals absent) is not zero usage: the call is counted, its cost unknown.
        let usage_missing = c.input.is_none() && c.output.is_none();
        if !usage_missing {
            if c.input.is_none() {
                return Err(reject(
                    "missing_field",
                    "missing required field `input_tokens` (output_tokens is present)",
                ));
            }
            if c.output.is_none() {
                return Err(reject(
                    "missing_field",
                    "missing required field `output_tokens` (input_tokens is present)",
                ));
            }
        } else if let Some((f, _)) = [
            ("cache_read_tokens", c.cache_read),
            ("cache_write_tokens", c.cache_write),
            ("reasoning_tokens", c.reasoning),
            ("audio_input_tokens", c.audio_input),
            ("audio_output_tokens", c.audio_output),
        ]
        .into_iter()
        .find(|(_, v)| !matches!(v, None | Some(Count::Ok(0))))
        {
            return Err(reject("missing_field", format!("`{f}` without input_tokens and output_tokens")));
        }
        let t = Tokens {
            input: count("input_tokens", c.input)?,
            output: count("output_tokens", c.output)?,
            cache_read: count("cache_read_tokens", c.cache_read)?,
            cache_write: count("cache_write_tokens", c.cache_write)?,
            cache_write_1h: count("cache_write_1h_tokens", c.cache_write_1h)?,
            audio_input: count("audio_input_tokens", c.audio_input)?,
            audio_output: count("audio_output_tokens", c.audio_output)?,
            reasoning: count("reasoning_tokens", c.reasoning)?,
            web_search: count("retrieval_calls", c.retrieval)?,
        };
        if t.cache_read + t.cache_write + t.audio_input > t.input {
            return Err(reject(
                "inconsistent_tokens",
                format!(
                    "cache_read_tokens ({}) + cache_write_tokens ({}) + audio_input_tokens ({}) exceed input_tokens \
                     ({}); they are counted inside it",
                    t.cache_read, t.cache_write, t.audio_input, t.input
                ),
            ));
        }
        if t.cache_write_1h > t.cache_write {
            return Err(reject(
                "inconsistent_tokens",
                format!(
                    "cache_write_1h_tokens ({}) exceed cache_write_tokens ({}); they are counted inside it",
                    t.cache_write_1h, t.cache_write
                ),
            ));
        }
        if t.reasoning + t.audio_output > t.output {
            return Err(reject(
                "inconsistent_tokens",
                format!(
                    "reasoning_tokens ({}) + audio_output_tokens ({}) exceed output_tokens ({}); they are counted \
                     inside it",
                    t.reasoning, t.audio_output, t.output
                ),
            ));
        }
        let tier = match c.service_tier.as_deref() {
            None | Some("") => Tier::Default,
            Some(s) => Tier::parse(s).ok_or_else(|| {
                reject("invalid_value", format!("`service_tier` {s:?} is not one of default, batch, flex, priority"))
            })?,
        };
        let error = match c.status.as_deref() {
            None | Some("") | Some("ok") | Some("success") => 0,
            Some("error") | Some("failure") => 1,
            Some(s) => {
                return Err(reject("invalid_value", format!("`status` {s:?} is not ok or error")));
            }
        };
        let attempt = match c.attempt {
            None => 1,
            Some(a) => count("attempt", Some(a))?,
        };
        let retry_key = match (c.trace_id.as_deref(), c.step.as_deref()) {
            (_, Some(crate::formats::BAD_STEP)) => {
                return Err(reject("invalid_type", "`step` must be a string or an integer".to_string()));
            }
            (Some(trace), Some(step)) if !trace.is_empty() && !step.is_empty() => {
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                for part in ["retry", trace, step] {
                    h.update(part.as_bytes());
                    h.update(&[0x1f]);
                }
                Some(h.digest128().to_le_bytes())
            }
            _ => None,
        };
        let reported = match &c.reported {
            None => None,
            Some(r) => {
                let (text, cents) = match r {
                    Reported::Usd(t) => (t.as_ref(), false),
                    Reported::Cents(t) => (t.as_ref(), true),
                };
                let field = if cents { "cost (cents)" } else { "cost_usd" };
                let v = parse_reported(field, text, cents).map_err(|e| reject("invalid_value", e))?;
                // a call costing more than $1M, or less than nothing, is a broken gateway figure
                if !(0..=MAX_REPORTED_COST).contains(&v) {
                    return Err(reject("invalid_value", format!("`{field}` {text} is outside 0..=1000000 USD")));
                }
                Some(v)
            }
        };

        // Attribution on the raw values (rules may name key ids), then secrets become fingerprints.
        let idn = Identity {
            api_key_id: c.api_key_id.as_deref(),
            service_account: c.service_account.as_deref(),
            team: c.team.as_deref(),
            project: c.project.as_deref(),
            workflow: c.workflow.as_deref(),
        };
        let owner = self.owners.resolve_index(&idn, &mut self.owner_cache);
        let identity = c
            .api_key_id
            .as_deref()
            .filter(|s| !s.is_empty())
            .or(c.service_account.as_deref().filter(|s| !s.is_empty()))
            .unwrap_or(UNKNOWN_IDENTITY);
        let owner_id = owner.map_or(UNATTRIBUTED, |i| self.owners.owner(i).id.as_str());
        let (cost, price_id, unpriced) = if c.cache_hit {
            (Some(0), PriceId::GatewayCache, 0)
        } else if usage_missing {
            (None, PriceId::None, 0)
        } else {
            match self.catalog.lookup_for(owner_id, provider, model, ts) {
                Some(p) => match p.cost(&t, tier) {
                    Some(cost) => (Some(cost), self.price_ids.slot(&p.id), 0),
                    // e.g. a billed web search without a price
                    None => (None, self.price_ids.slot(&p.id), 1),
                },
                None => (None, PriceId::None, 1),
            }
        };
        let counts = [
            error,
            (attempt > 1) as i64,
            unpriced,
            usage_missing as i64,
            c.cache_hit as i64,
            reported.is_some() as i64,
            t.input,
            t.cache_read,
            t.cache_write,
            t.cache_write_1h,
            t.audio_input,
            t.output,
            t.reasoning,
            t.audio_output,
            t.web_search,
        ];
        Ok(Row {
            ts,
            key: xxhash_rust::xxh3::xxh3_128(event_id.as_bytes()).to_le_bytes(),
            owner,
            dims: [c.team.as_deref(), c.project.as_deref(), c.workflow.as_deref(), c.environment.as_deref()],
            identity,
            provider,
            model,
            tier,
            price_id,
            counts,
            cost,
            reported,
            retry_key,
        })
    }

    fn append(&mut self, r: Row<'_>) {
        if let Some((rows, dim_bytes)) = self.presize_for.take() {
            self.presize(rows, dim_bytes);
        }
        // All checks passed: append (nothing below can fail, so columns stay aligned).
        self.ts.append_value(r.ts);
        self.key.append_value(r.key).expect("16 bytes");
        let (owner_id, risk) = match r.owner {
            Some(i) => {
                let o = self.owners.owner(i);
                (o.id.as_str(), o.risk_owner.as_str())
            }
            None => {
                self.stats.unattributed += 1;
                (UNATTRIBUTED, "")
            }
        };
        let dims = &mut self.dims;
        dims[0].append_value(owner_id);
        dims[1].append_value(risk);
        for (b, v) in dims[2..6].iter_mut().zip(r.dims) {
            match v {
                None => b.append_value(""),
                Some(s) => b.append_value(redact_field(s)),
            }
        }
        dims[6].append_value(redact_field(r.identity));
        dims[7].append_value(redact(r.provider));
        dims[8].append_value(redact(r.model));
        dims[9].append_value(r.tier.as_str());
        dims[10].append_value(self.price_ids.get(r.price_id));
        self.stats.unpriced += r.counts[2] as u64;
        self.stats.usage_missing += r.counts[3] as u64;
        self.stats.accepted += 1;
        for (b, v) in self.counts.iter_mut().zip(r.counts) {
            b.append_value(v);
        }
        self.cost.append(r.cost);
        self.reported.append(r.reported);
        // parts of the cost: unknown when the cost is, 0 for calls that did not fail / are not retries
        self.failed_cost.append(if r.counts[0] == 1 { r.cost } else { Some(0) });
        self.retry_cost.append(if r.counts[1] == 1 { r.cost } else { Some(0) });
        match r.retry_key {
            Some(k) => self.retry_key.append_value(k).expect("16-byte retry key"),
            None => self.retry_key.append_null(),
        }
    }

    /// Takes the accepted events as one batch and the rejected records, resetting the decoder.
    pub fn finish(&mut self) -> Decoded {
        let rows = self.ts.len();
        let dim_bytes: [usize; 11] = std::array::from_fn(|i| self.dims[i].values_slice().len());
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(30);
        cols.push(Arc::new(self.ts.finish().with_timezone("UTC")));
        cols.push(Arc::new(self.key.finish()));
        for d in &mut self.dims {
            cols.push(Arc::new(d.finish()));
        }
        if self.zeros.len() < rows * 16 {
            // `vec![0; n]` is a `calloc`: Arrow's 64-byte aligned zeroed allocation writes every byte
            self.zeros = Buffer::from_vec(vec![0i128; rows]);
        }
        for c in &mut self.counts {
            cols.push(Arc::new(c.finish(&self.zeros)));
        }
        for m in [&mut self.cost, &mut self.reported, &mut self.failed_cost, &mut self.retry_cost] {
            cols.push(Arc::new(
                m.finish(&self.zeros).with_precision_and_scale(COST_PRECISION, COST_SCALE).expect("valid decimal type"),
            ));
        }
        cols.push(Arc::new(self.retry_key.finish()));
        let batch = RecordBatch::try_new(priced_event_schema(), cols).expect("decoder builds the priced event schema");
        self.presize_for = Some((rows, dim_bytes));
        if self.price_ids.ids.len() > PriceIds::MAX {
            self.price_ids = PriceIds::default();
        }
        Decoded { batch, dead_letters: std::mem::take(&mut self.dead), stats: std::mem::take(&mut self.stats) }
    }

    /// Builders sized for a batch like the last one: a finished builder starts from nothing and would grow
    /// by doubling, copying each column about once more than it holds (a tenth of replay's memory copies).
    /// Done at the next batch's first row, not when a batch is finished: a decoder that runs a batch ahead
    /// (replay's decoding thread) holds the finished batch until it is taken, and would hold a whole empty
    /// batch's worth of builders next to it.
    fn presize(&mut self, rows: usize, dim_bytes: [usize; 11]) {
        use aifinops_schemas::event::EVENT_KEY_LEN;
        self.ts = TimestampMillisecondBuilder::with_capacity(rows);
        self.key = FixedSizeBinaryBuilder::with_capacity(rows, EVENT_KEY_LEN);
        self.dims = std::array::from_fn(|i| StringBuilder::with_capacity(rows, dim_bytes[i]));
        for c in &mut self.counts {
            c.capacity = rows;
        }
        for m in [&mut self.cost, &mut self.reported, &mut self.failed_cost, &mut self.retry_cost] {
            m.capacity = rows;
        }
        self.retry_key = FixedSizeBinaryBuilder::with_capacity(rows, EVENT_KEY_LEN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Decimal128Type, Int64Type};

    fn decoder() -> Decoder {
        let owners = OwnerMap::from_toml_str(
            "o",
            "[[owner]]\nid = \"search\"\nrisk_owner = \"lead@x\"\napi_key_id = [\"key-search-*\"]\n",
        )
        .unwrap();
        Decoder::new(Arc::new(PriceCatalog::builtin()), Arc::new(owners), 1 << 20, RawPolicy::Redacted)
    }

    fn src() -> SourceRef {
        SourceRef::File { path: "in.ndjson".into(), line: 7 }
    }

    fn reason_of(line: &str) -> (String, String) {
        let mut d = decoder();
        assert!(d.push(line.as_bytes(), Format::Canonical, src, 0).is_none(), "accepted: {line}");
        let out = d.finish();
        assert_eq!(out.batch.num_rows(), 0);
        let dl = &out.dead_letters[0];
        assert_eq!(dl.source, "in.ndjson:7");
        (dl.kind.to_string(), dl.reason.clone())
    }

    #[test]
    fn batches_after_the_first_hold_exactly_their_own_rows() {
        // the builders are sized for the last batch at the next batch's first row: a batch of several rows,
        // an empty one (a dead letter only), then smaller and larger ones, each with its own values
        let line = |id: &str, input: i64, key: &str| {
            format!(
                r#"{{"event_id":"{id}","timestamp":"2026-11-30T10:00:00Z","provider":"openai","model":"gpt-4o","input_tokens":{input},"output_tokens":1,"api_key_id":"{key}"}}"#
            )
        };
        let mut d = decoder();
        for (n, batch) in [5usize, 0, 2, 9].into_iter().enumerate() {
            if batch == 0 {
                assert!(d.push(b"not json", Format::Canonical, src, 0).is_none());
            }
            for i in 0..batch {
                let key = if i % 2 == 0 { "key-search-1" } else { "key-other" };
                let l = line(&format!("b{n}-{i}"), (100 * n + i) as i64, key);
                assert!(d.push(l.as_bytes(), Format::Canonical, src, 0).is_some(), "{l}");
            }
            let out = d.finish();
            let b = out.batch;
            assert_eq!(b.num_rows(), batch, "batch {n}");
            assert!(b.columns().iter().all(|c| c.len() == batch), "batch {n}: every column holds its rows");
            let input = b.column_by_name("input_tokens").unwrap().as_primitive::<Int64Type>();
            let owner = b.column_by_name("owner").unwrap().as_string::<i32>();
            for i in 0..batch {
                assert_eq!(input.value(i), (100 * n + i) as i64, "batch {n} row {i}");
                assert_eq!(owner.value(i), if i % 2 == 0 { "search" } else { UNATTRIBUTED }, "batch {n} row {i}");
            }
            assert_eq!(out.dead_letters.len(), usize::from(batch == 0), "batch {n}");
        }
    }

    /// Each row names the price that priced it: the list price, an owner's negotiated price, the gateway's
    /// cache, or none; across batches, and after the decoder lets its price slots go.
    #[test]
    fn every_row_names_its_own_price_across_batches() {
        let mut catalog = PriceCatalog::builtin();
        catalog
            .add_toml_str("deals.toml", "[[model]]\nname = \"gpt-4o\"\nowner = \"search\"\ninput_per_mtok = \"2.00\"\n")
            .unwrap();
        let owners =
            OwnerMap::from_toml_str("o", "[[owner]]\nid = \"search\"\napi_key_id = [\"key-search-*\"]\n").unwrap();
        let catalog = Arc::new(catalog);
        let ts = 1_764_496_800_000_i64;
        let list = |model: &str| catalog.lookup_for("", "openai", model, ts).unwrap().id.to_string();
        let deal = catalog.lookup_for("search", "openai", "gpt-4o", ts).unwrap().id.to_string();
        assert_ne!(deal, list("gpt-4o"));
        let mut d = Decoder::new(Arc::clone(&catalog), Arc::new(owners), 1 << 20, RawPolicy::Redacted);
        let cases = [
            ("gpt-4o", "key-other", "", list("gpt-4o")),
            ("gpt-4o", "key-search-1", "", deal.clone()),
            ("gpt-4o-mini", "key-search-1", "", list("gpt-4o-mini")),
            ("gpt-4o", "key-other", r#","cache_hit":true"#, PRICE_ID_GATEWAY_CACHE.to_string()),
            ("no-such-model", "key-other", "", String::new()),
            ("gpt-4o", "key-search-2", "", deal),
        ];
        for batch in 0..3 {
            if batch == 2 {
                // more distinct ids than a decoder keeps between batches: the next batch starts over
                for i in 0..=PriceIds::MAX {
                    d.price_ids.slot(&Arc::from(format!("other-{i}")));
                }
                assert!(d.finish().batch.num_rows() == 0 && d.price_ids.ids.is_empty());
            }
            for (i, (model, key, extra, _)) in cases.iter().enumerate() {
                let line = format!(
                    r#"{{"event_id":"p{batch}-{i}","timestamp":{ts},"provider":"openai","model":"{model}","input_tokens":10,"output_tokens":1,"api_key_id":"{key}"{extra}}}"#
                );
                assert!(d.push(line.as_bytes(), Format::Canonical, src, 0).is_some(), "{line}");
            }
            let b = d.finish().batch;
            let ids = b.column_by_name("price_id").unwrap().as_string::<i32>();
            let got: Vec<&str> = ids.iter().map(|v| v.unwrap()).collect();
            let want: Vec<&str> = cases.iter().map(|c| c.3.as_str()).collect();
            assert_eq!(got, want, "batch {batch}");
        }
        // one slot per distinct price, held while the decoder lives
        assert_eq!(d.price_ids.ids.len(), 3, "{:?}", d.price_ids.ids);
    }

    /// Measure columns that no row of a batch sets are slices of one buffer of zeros (null for a reported
    /// cost); one that a row sets holds the rows before it as zeros or nulls; each batch starts over.
    #[test]
    fn measures_no_row_sets_share_one_buffer_of_zeros() {
        let line = |i: usize, extra: &str| {
            format!(
                r#"{{"event_id":"z{i}","timestamp":"2026-11-30T10:00:00Z","provider":"openai","model":"gpt-4o","input_tokens":10,"output_tokens":1,"api_key_id":"key-search-1"{extra}}}"#
            )
        };
        let mut d = decoder();
        for (i, extra) in ["", "", r#","cache_read_tokens":4,"cost_usd":0.0035"#, ""].iter().enumerate() {
            assert!(d.push(line(i, extra).as_bytes(), Format::Canonical, src, 0).is_some());
        }
        let b = d.finish().batch;
        let ints = |b: &RecordBatch, n: &str| b.column_by_name(n).unwrap().as_primitive::<Int64Type>().clone();
        let money = |b: &RecordBatch, n: &str| b.column_by_name(n).unwrap().as_primitive::<Decimal128Type>().clone();
        assert_eq!(ints(&b, "cache_read_tokens").values().to_vec(), vec![0, 0, 4, 0]);
        let reported = money(&b, "reported_cost_usd");
        assert_eq!(
            reported.iter().collect::<Vec<_>>(),
            vec![None, None, Some(35 * 10i128.pow(COST_SCALE as u32 - 4)), None]
        );
        let (audio, web, failed) =
            (ints(&b, "audio_input_tokens"), ints(&b, "retrieval_calls"), money(&b, "failed_cost_usd"));
        assert_eq!((audio.values().to_vec(), audio.null_count()), (vec![0; 4], 0));
        assert_eq!((failed.iter().collect::<Vec<_>>(), failed.null_count()), (vec![Some(0); 4], 0));
        let at = |a: &dyn Array| a.to_data().buffers()[0].as_ptr();
        assert_eq!(at(&audio), at(&web), "unset columns share one buffer");
        assert_eq!(at(&audio), at(&failed));
        assert_ne!(at(&audio), at(&ints(&b, "input_tokens")));
        assert_eq!(b.schema(), aifinops_schemas::event::priced_event_schema(), "types, precision and scale");
        // the next batch starts over: the column set above is shared again, and rows set later than the first
        for (i, extra) in ["", r#","audio_input_tokens":2"#].iter().enumerate() {
            assert!(d.push(line(10 + i, extra).as_bytes(), Format::Canonical, src, 0).is_some());
        }
        let b = d.finish().batch;
        assert_eq!(ints(&b, "audio_input_tokens").values().to_vec(), vec![0, 2]);
        let (cache, web) = (ints(&b, "cache_read_tokens"), ints(&b, "retrieval_calls"));
        assert_eq!((cache.values().to_vec(), at(&cache)), (vec![0, 0], at(&web)));
        assert_eq!(money(&b, "reported_cost_usd").null_count(), 2);
    }

    #[test]
    fn trace_id_and_step_make_the_retry_key_on_every_path() {
        let base = r#"{"event_id":"s","timestamp":"2026-11-30T10:00:00Z","provider":"openai","model":"gpt-4o","input_tokens":10,"output_tokens":1,"trace_id":"t1""#;
        let mut d = decoder();
        for (i, tail) in
            [r#","step":"plan"}"#, r#","step":"plan","usage":null}"#, r#","step":7}"#, r#","step":"7"}"#, "}"]
                .iter()
                .enumerate()
        {
            let line = format!("{base}{tail}").replace(r#""s""#, &format!(r#""s{i}""#));
            assert!(d.push(line.as_bytes(), Format::Canonical, src, 0).is_some(), "{line}");
        }
        let b = d.finish().batch;
        let k = b.column_by_name(aifinops_schemas::event::RETRY_KEY).unwrap().as_fixed_size_binary();
        assert_eq!(k.value(0), k.value(1), "fast and slow paths agree");
        assert_eq!(k.value(2), k.value(3), "an integer step is its decimal text");
        assert_ne!(k.value(0), k.value(2));
        assert!(k.is_null(4), "no step: no retry key");
        let (kind, reason) = reason_of(&format!(r#"{base},"step":{{"n":1}}}}"#));
        assert_eq!((kind.as_str(), reason.as_str()), ("invalid_type", "`step` must be a string or an integer"));
    }

    const GOOD: &str = r#"{"event_id":"r1","timestamp":"2026-11-30T10:00:00Z","provider":"openai","model":"gpt-4o","input_tokens":1000,"output_tokens":100,"cache_read_tokens":400,"api_key_id":"key-search-1","team":"search","cost_usd":0.0035}"#;

    #[test]
    fn accepts_and_prices_a_canonical_event() {
        let mut d = decoder();
        assert!(d.push(GOOD.as_bytes(), Format::Canonical, src, 0).is_some());
        let out = d.finish();
        let b = &out.batch;
        assert_eq!(b.num_rows(), 1);
        assert_eq!(b.column_by_name("owner").unwrap().as_string::<i32>().value(0), "search");
        assert_eq!(b.column_by_name("risk_owner").unwrap().as_string::<i32>().value(0), "lead@x");
        // 600 uncached x 2.5/M + 400 cached x 1.25/M + 100 x 10/M = 0.0015 + 0.0005 + 0.001
        let cost = b.column_by_name("cost_usd").unwrap().as_primitive::<Decimal128Type>().value(0);
        assert_eq!(cost, parse_usd("c", "0.003").unwrap());
        let reported = b.column_by_name("reported_cost_usd").unwrap().as_primitive::<Decimal128Type>().value(0);
        assert_eq!(reported, parse_usd("c", "0.0035").unwrap());
        assert_eq!(b.column_by_name("cache_read_tokens").unwrap().as_primitive::<Int64Type>().value(0), 400);
        assert_eq!(out.stats, DecodeStats { accepted: 1, ..Default::default() });
    }

    #[test]
    fn epoch_millis_unknown_fields_and_secrets() {
        let mut d = decoder();
        let line = r#"{"event_id":"r2","timestamp":1764496800000,"provider":"openai","model":"gpt-9","input_tokens":5,"output_tokens":1,"api_key_id":"sk-proj-abcdEFGH1234ijklMNOP5678qrst","extra":{"x":[1,2]}}"#;
        assert!(d.push(line.as_bytes(), Format::Canonical, src, 0).is_some());
        let b = d.finish();
        let id = b.batch.column_by_name("identity").unwrap().as_string::<i32>().value(0).to_string();
        assert!(id.starts_with("fp:"), "{id}");
        assert_eq!(b.batch.column_by_name("owner").unwrap().as_string::<i32>().value(0), UNATTRIBUTED);
        assert!(b.batch.column_by_name("cost_usd").unwrap().is_null(0), "unpriced is null, not 0");
        assert_eq!(b.stats.unpriced, 1);
        assert_eq!(b.stats.unattributed, 1);
    }

    #[test]
    fn rejects_with_reasons_naming_the_field() {
        let cases = [
            ("not json", "not_json", "not valid JSON"),
            ("[1,2]", "not_object", "array"),
            (
                r#"{"timestamp":"2026-11-30T10:00:00Z","provider":"p","model":"m","input_tokens":1,"output_tokens":1}"#,
                "missing_field",
                "event_id",
            ),
            (
                r#"{"event_id":"a","timestamp":"yesterday","provider":"p","model":"m","input_tokens":1,"output_tokens":1}"#,
                "invalid_timestamp",
                "RFC 3339",
            ),
            (
                r#"{"event_id":"a","timestamp":1764496800,"provider":"p","model":"m","input_tokens":1,"output_tokens":1}"#,
                "invalid_timestamp",
                "seconds",
            ),
            (
                r#"{"event_id":"a","timestamp":"9999-01-01T00:00:00Z","provider":"p","model":"m","input_tokens":1,"output_tokens":1}"#,
                "invalid_timestamp",
                "outside",
            ),
            (
                r#"{"event_id":"a","timestamp":1764496800000,"provider":"p","model":"m","input_tokens":-1,"output_tokens":1}"#,
                "invalid_count",
                "`input_tokens` is negative",
            ),
            (
                r#"{"event_id":"a","timestamp":1764496800000,"provider":"p","model":"m","input_tokens":1.5,"output_tokens":1}"#,
                "invalid_count",
                "not an integer",
            ),
            (
                r#"{"event_id":"a","timestamp":1764496800000,"provider":"p","model":"m","input_tokens":9007199254740993,"output_tokens":1}"#,
                "invalid_count",
                "2^53",
            ),
            (
                r#"{"event_id":"a","timestamp":1764496800000,"provider":"p","model":"m","input_tokens":"12","output_tokens":1}"#,
                "invalid_type",
                "got string",
            ),
            (
                r#"{"event_id":"a","timestamp":1764496800000,"provider":"p","model":"m","input_tokens":10,"output_tokens":1,"cache_read_tokens":11}"#,
                "inconsistent_tokens",
                "exceed input_tokens",
            ),
            (
                r#"{"event_id":"a","timestamp":1764496800000,"provider":"p","model":"m","input_tokens":10,"output_tokens":1,"reasoning_tokens":2}"#,
                "inconsistent_tokens",
                "exceed output_tokens",
            ),
            (
                r#"{"event_id":"a","timestamp":1764496800000,"provider":"p","model":5,"input_tokens":10,"output_tokens":1}"#,
                "invalid_type",
                "`model` must be a string",
            ),
            (
                r#"{"event_id":"a","timestamp":1764496800000,"provider":"p","model":"m","input_tokens":10,"output_tokens":1,"service_tier":"gold"}"#,
                "invalid_value",
                "service_tier",
            ),
            (
                r#"{"event_id":"a","timestamp":1764496800000,"provider":"p","model":"m","input_tokens":10}"#,
                "missing_field",
                "output_tokens",
            ),
            ("", "empty", "empty"),
        ];
        for (line, kind, needle) in cases {
            let (k, r) = reason_of(line);
            assert_eq!(k, kind, "{line} -> {r}");
            assert!(r.contains(needle), "{line}: reason {r:?} should mention {needle:?}");
        }
        let mut d = decoder();
        assert!(d.push(&[0xff, 0xfe, b'{'], Format::Canonical, src, 0).is_none());
        assert_eq!(d.finish().dead_letters[0].kind, "invalid_utf8");
    }

    /// Hostile records that were once accepted (or misnamed), each with the reason it gets now.
    #[test]
    fn hostile_records_once_accepted_are_rejected_with_their_reason() {
        let rec = |extra: &str| {
            format!(
                r#"{{"event_id":"h","timestamp":1764496800000,"provider":"openai","model":"gpt-4o","input_tokens":10,"output_tokens":1{extra}}}"#
            )
        };
        let cases = [
            // duplicate keys: the last copy used to win silently
            (rec(r#","input_tokens":5000000"#), "duplicate_key", "duplicate key `input_tokens`"),
            (rec(r#","event_id":"h2""#), "duplicate_key", "duplicate key `event_id`"),
            // counts written as doubles used to be read as whole numbers
            (rec(",\"cache_read_tokens\":1.0"), "invalid_count", "`cache_read_tokens` is not an integer"),
            (rec(",\"cache_read_tokens\":1e0"), "invalid_count", "not an integer"),
            (rec(",\"cache_read_tokens\":1.00000000000000001"), "invalid_count", "not an integer"),
            (rec(",\"cache_read_tokens\":-2.5"), "invalid_count", "negative"),
            (rec(",\"cache_read_tokens\":1e300"), "invalid_count", "2^53"),
            // nesting beyond 64 levels used to be skipped in unknown fields (and 128 was the limit elsewhere)
            (rec(&format!(",\"x\":{}{}", "[".repeat(64), "]".repeat(64))), "too_deep", "deeper than 64"),
            // control characters in names used to reach the lake (and terminals)
            (rec(",\"team\":\"a\\u0007b\""), "invalid_value", "`team` contains the control character U+0007"),
            (rec(",\"workflow\":\"w\\u007f\""), "invalid_value", "`workflow` contains the control character U+007F"),
            // a timestamp beyond 2^63 ms written as a double was "not an integer"
            (rec("").replace("1764496800000", "1e20"), "invalid_timestamp", "out of range"),
            // a byte order mark was "expected value at line 1 column 1"
            (format!("\u{feff}{}", rec("")), "not_json", "byte order mark"),
        ];
        for (line, kind, needle) in &cases {
            let (k, r) = reason_of(line);
            assert_eq!(&k, kind, "{line} -> {r}");
            assert!(r.contains(needle), "{line}: reason {r:?} should mention {needle:?}");
        }
        // at the limits: 63 nested arrays in an object (64 levels), and a key repeated in different objects
        let mut d = decoder();
        for (i, extra) in [
            format!(",\"x\":{}{}", "[".repeat(63), "]".repeat(63)),
            r#","tags":{"a":"1"},"x":{"a":2}"#.to_string(),
            r#","team":"équipe 🚀""#.to_string(),
        ]
        .iter()
        .enumerate()
        {
            let line = rec(extra).replace("\"h\"", &format!("\"h{i}\""));
            assert!(d.push(line.as_bytes(), Format::Canonical, src, 0).is_some(), "{line}");
        }
        // a duplicate inside a CloudEvent's data (the slow path reads every object strictly)
        let mut d = decoder();
        let ce = format!(r#"{{"specversion":"1.0","id":"c","data":{}}}"#, rec(r#","model":"gpt-4o-mini""#));
        assert!(d.push(ce.as_bytes(), Format::Auto, src, 0).is_none());
        assert_eq!(d.finish().dead_letters[0].kind, "duplicate_key");
        // Avro bytes on a JSON topic are named as such, not as broken JSON or UTF-8
        assert!(d.push(&[0, 0, 0, 0, 7, 2, b'a'], Format::Litellm, src, 0).is_none());
        let dl = &d.finish().dead_letters[0];
        assert_eq!(dl.kind, "not_json");
        assert!(dl.reason.contains("Confluent wire format (magic byte 0x00, schema id 7)"), "{}", dl.reason);
        assert!(dl.reason.contains("format is litellm"), "{}", dl.reason);
        // no bytes is `empty` on every topic, an Avro one too (it was `avro_framing` there)
        let mut d = decoder();
        for f in Format::ALL {
            assert!(d.push(b"", f, src, 0).is_none());
        }
        assert!(d.finish().dead_letters.iter().all(|dl| dl.kind == "empty"));
        // a JSON document inside a string field is read with the same duplicate-key check
        assert!(parse_strict(r#"{"a":{"b":1,"b":2}}"#).unwrap_err().to_string().starts_with("duplicate key `b`"));
    }

    #[test]
    fn oversized_records_are_dead_letters_and_secrets_are_redacted_in_them() {
        let mut d =
            Decoder::new(Arc::new(PriceCatalog::builtin()), Arc::new(OwnerMap::default()), 100, RawPolicy::Redacted);
        let big = format!(
            r#"{{"event_id":"a","api_key_id":"sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789","pad":"{}"}}"#,
            "x".repeat(200)
        );
        assert!(d.push(big.as_bytes(), Format::Canonical, src, 0).is_none());
        let out = d.finish();
        assert_eq!(out.dead_letters[0].kind, "too_large");
        let raw = String::from_utf8(out.dead_letters[0].raw.clone()).unwrap();
        assert!(!raw.contains("sk-ant-api03"), "{raw}");
    }
}
