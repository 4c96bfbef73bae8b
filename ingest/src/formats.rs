//! Input formats: what gateways and SDKs already write, normalized to the canonical usage event.
//!
//! Every adapter follows the source's own inclusion rules and produces [`Call`]s in canonical terms
//! (cache reads/writes and uncached audio inside `input`, 1-hour writes inside `cache_write`, reasoning
//! and audio output inside `output`). `auto` detects the format per record from markers that only that
//! format has; a record that matches none, or more than one, is rejected with the reason: it never
//! guesses. The shapes and the sources they were taken from are in `tests/fixtures/formats/README.md`.

use std::borrow::Cow;

use serde_json::Value;

use crate::decode::{Count, Rejection, Ts, count_from_f64, reject};

/// How the records of a topic or file are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Detect per record (Avro framing by its magic byte, JSON formats by their markers).
    #[default]
    Auto,
    /// aifinops' own usage event (`schemas/usage_event.schema.json`).
    Canonical,
    /// LiteLLM StandardLoggingPayload or LiteLLM_SpendLogs row.
    Litellm,
    /// OpenTelemetry GenAI spans: OTLP/JSON export or one span as a flat attribute map.
    Otel,
    /// An OpenAI chat completion or Responses API response in the aifinops envelope.
    Openai,
    /// An Anthropic Messages API response in the aifinops envelope.
    Anthropic,
    /// A Gemini generateContent response in the aifinops envelope.
    Gemini,
    /// A Bedrock Converse response in the envelope, or a Bedrock model-invocation log record.
    Bedrock,
    /// Kong AI Gateway log (ai-proxy plugin section).
    Kong,
    /// Portkey log export row (cost in cents).
    Portkey,
    /// Cloudflare AI Gateway log.
    Cloudflare,
    /// A CloudEvents 1.0 structured event whose `data` is any of the JSON formats.
    Cloudevents,
    /// Avro: Confluent wire format (schema registry or local `.avsc` files) or single-object encoding.
    Avro,
}

impl Format {
    pub const ALL: [Format; 13] = [
        Format::Auto,
        Format::Canonical,
        Format::Litellm,
        Format::Otel,
        Format::Openai,
        Format::Anthropic,
        Format::Gemini,
        Format::Bedrock,
        Format::Kong,
        Format::Portkey,
        Format::Cloudflare,
        Format::Cloudevents,
        Format::Avro,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Canonical => "canonical",
            Format::Litellm => "litellm",
            Format::Otel => "otel",
            Format::Openai => "openai",
            Format::Anthropic => "anthropic",
            Format::Gemini => "gemini",
            Format::Bedrock => "bedrock",
            Format::Kong => "kong",
            Format::Portkey => "portkey",
            Format::Cloudflare => "cloudflare",
            Format::Cloudevents => "cloudevents",
            Format::Avro => "avro",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The gateway's own cost figure for a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Reported<'a> {
    /// USD as a JSON number's literal or a decimal string.
    Usd(Cow<'a, str>),
    /// US cents (Portkey).
    Cents(Cow<'a, str>),
}

/// One model call normalized to the canonical usage event, not yet validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Call<'a> {
    pub event_id: Option<Cow<'a, str>>,
    pub ts: Option<Ts>,
    pub provider: Option<Cow<'a, str>>,
    pub model: Option<Cow<'a, str>>,
    pub input: Option<Count>,
    pub output: Option<Count>,
    pub cache_read: Option<Count>,
    pub cache_write: Option<Count>,
    pub cache_write_1h: Option<Count>,
    pub audio_input: Option<Count>,
    pub audio_output: Option<Count>,
    pub reasoning: Option<Count>,
    pub retrieval: Option<Count>,
    pub service_tier: Option<Cow<'a, str>>,
    /// `ok` / `error` (canonical) or the source's own success/failure words.
    pub status: Option<Cow<'a, str>>,
    pub attempt: Option<Count>,
    pub trace_id: Option<Cow<'a, str>>,
    /// The agent step within the trace (a string or an integer on the wire); [`BAD_STEP`] when neither.
    pub step: Option<Cow<'a, str>>,
    pub api_key_id: Option<Cow<'a, str>>,
    pub service_account: Option<Cow<'a, str>>,
    pub end_user: Option<Cow<'a, str>>,
    pub team: Option<Cow<'a, str>>,
    pub project: Option<Cow<'a, str>>,
    pub workflow: Option<Cow<'a, str>>,
    pub environment: Option<Cow<'a, str>>,
    /// The gateway answered from its own response cache: the provider was not called.
    pub cache_hit: bool,
    pub reported: Option<Reported<'a>>,
}

// ---------------------------------------------------------------------------------------------------
// Value helpers

fn at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    (!cur.is_null()).then_some(cur)
}

/// A non-empty string at `path` (numbers are rendered: ids are sometimes numeric).
fn text<'v>(v: &'v Value, path: &[&str]) -> Option<Cow<'v, str>> {
    match at(v, path)? {
        Value::String(s) if !s.trim().is_empty() => Some(Cow::Borrowed(s.as_str())),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

/// A count at `path`: JSON numbers, and decimal strings where a format encodes integers as strings.
fn count(v: &Value, path: &[&str]) -> Option<Count> {
    at(v, path).map(count_of)
}

fn count_of(v: &Value) -> Count {
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                count_from_f64(u as f64, Some(u))
            } else if let Some(i) = n.as_i64() {
                if i < 0 { Count::Negative } else { count_from_f64(i as f64, Some(i as u64)) }
            } else {
                count_from_f64(n.as_f64().unwrap_or(f64::NAN), None)
            }
        }
        Value::String(s) => match s.trim().parse::<u64>() {
            Ok(u) => count_from_f64(u as f64, Some(u)),
            Err(_) if s.trim().starts_with('-') => Count::Negative,
            Err(_) => Count::WrongType("string"),
        },
        Value::Bool(_) => Count::WrongType("boolean"),
        Value::Array(_) => Count::WrongType("array"),
        Value::Object(_) => Count::WrongType("object"),
        Value::Null => Count::WrongType("null"),
    }
}

fn sum(a: Option<Count>, b: Option<Count>) -> Option<Count> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(Count::Ok(x)), Some(Count::Ok(y))) => {
            Some(if (x + y) as u64 > crate::decode::MAX_COUNT { Count::TooLarge } else { Count::Ok(x + y) })
        }
        (Some(Count::Ok(_)), Some(bad)) | (Some(bad), _) => Some(bad),
    }
}

fn is_zero(c: Option<Count>) -> bool {
    matches!(c, None | Some(Count::Ok(0)))
}

/// Epoch seconds (integer or fractional) as milliseconds.
fn ts_seconds(v: Option<&Value>) -> Option<Ts> {
    let v = v?;
    Some(match v {
        Value::Number(n) => match n.as_f64() {
            Some(s) if s.is_finite() && s.abs() < 1e13 => Ts::Ms((s * 1000.0).round() as i64),
            _ => Ts::Bad("epoch seconds out of range"),
        },
        Value::String(s) => text_ts(s),
        _ => Ts::Bad("must be epoch seconds or a date-time string"),
    })
}

/// Epoch milliseconds.
fn ts_millis(v: Option<&Value>) -> Option<Ts> {
    let v = v?;
    Some(match v {
        Value::Number(n) => match n.as_i64() {
            Some(ms) => Ts::Ms(ms),
            None => Ts::Bad("epoch milliseconds must be an integer"),
        },
        Value::String(s) => text_ts(s),
        _ => Ts::Bad("must be epoch milliseconds or a date-time string"),
    })
}

/// Epoch nanoseconds (OTLP: a decimal string or a number).
fn ts_nanos(v: Option<&Value>) -> Option<Ts> {
    let v = v?;
    let n: Option<i128> = match v {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_u64().map(|u| u as i128),
        _ => None,
    };
    Some(match n {
        Some(ns) => match i64::try_from(ns / 1_000_000) {
            Ok(ms) => Ts::Ms(ms),
            Err(_) => Ts::Bad("epoch nanoseconds out of range"),
        },
        None => Ts::Bad("must be epoch nanoseconds"),
    })
}

/// An RFC 3339 date-time, or a zone-less `YYYY-MM-DD[ T]HH:MM:SS[.f]` read as UTC (database exports).
pub(crate) fn text_ts(s: &str) -> Ts {
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ts::Ms(d.timestamp_millis());
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(d) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Ts::Ms(d.and_utc().timestamp_millis());
        }
    }
    Ts::Bad("not an RFC 3339 timestamp")
}

/// A JSON number's literal or a decimal string, for exact money parsing downstream.
fn money<'v>(v: Option<&'v Value>) -> Option<Cow<'v, str>> {
    match v? {
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        _ => Some(Cow::Borrowed("not-a-number")),
    }
}

fn obj_keys(v: &Value) -> impl Iterator<Item = &str> {
    v.as_object().into_iter().flat_map(|o| o.keys().map(String::as_str))
}

fn has(v: &Value, key: &str) -> bool {
    v.get(key).is_some_and(|x| !x.is_null())
}

// ---------------------------------------------------------------------------------------------------
// Detection

/// The formats a JSON record carries the markers of (more than one = ambiguous).
fn candidates(v: &Value) -> Vec<Format> {
    let mut out = Vec::new();
    if !v.is_object() {
        return out;
    }
    if has(v, "specversion") && (v.get("data").is_some() || v.get("data_base64").is_some()) {
        out.push(Format::Cloudevents);
        return out; // the envelope decides; its data is detected on its own
    }
    if has(v, "resourceSpans") || obj_keys(v).any(|k| k.starts_with("gen_ai.")) || otel_span_attrs(v) {
        out.push(Format::Otel);
    }
    if (has(v, "call_type") || has(v, "response_cost") || (has(v, "spend") && has(v, "request_id")))
        && (has(v, "prompt_tokens") || has(v, "custom_llm_provider") || has(v, "model_group"))
    {
        out.push(Format::Litellm);
    }
    if v.get("schemaType").and_then(Value::as_str) == Some("ModelInvocationLog")
        || (has(v, "modelId") && at(v, &["input", "inputTokenCount"]).is_some())
    {
        out.push(Format::Bedrock);
    }
    if v.get("ai").is_some_and(Value::is_object) || (has(v, "started_at") && has(v, "latencies")) {
        out.push(Format::Kong);
    }
    if has(v, "ai_org") || (has(v, "ai_model") && has(v, "req_units")) {
        out.push(Format::Portkey);
    }
    if has(v, "tokens_in") || has(v, "tokens_out") {
        out.push(Format::Cloudflare);
    }
    if let Some(r) = v.get("response").filter(|r| r.is_object()) {
        // our envelope carries `timestamp`; LiteLLM's payload also embeds the response, with `startTime`
        if has(v, "timestamp")
            && let Some(f) = response_shape(r)
        {
            out.push(f);
        }
    } else if has(v, "event_id") && has(v, "model") {
        out.push(Format::Canonical);
    }
    if out == [Format::Canonical] && foreign_usage_key(v).is_some() {
        out.push(Format::Auto); // reported as ambiguous below
    }
    out
}

/// A key that carries token counts under a name the canonical event does not use.
fn foreign_usage_key(v: &Value) -> Option<&str> {
    const KEYS: [&str; 9] = [
        "usage",
        "usageMetadata",
        "prompt_tokens",
        "completion_tokens",
        "tokens_in",
        "tokens_out",
        "req_units",
        "res_units",
        "response",
    ];
    obj_keys(v).find(|k| KEYS.contains(k) || k.starts_with("gen_ai.usage."))
}

fn otel_span_attrs(v: &Value) -> bool {
    (has(v, "spanId") || has(v, "span_id"))
        && v.get("attributes").and_then(Value::as_array).is_some_and(|a| {
            a.iter().any(|kv| kv.get("key").and_then(Value::as_str).is_some_and(|k| k.starts_with("gen_ai.")))
        })
}

/// Which provider's response a body is, from markers only that provider's bodies carry.
fn response_shape(r: &Value) -> Option<Format> {
    if has(r, "usageMetadata") || has(r, "candidates") || has(r, "modelVersion") {
        return Some(Format::Gemini);
    }
    if let Some("chat.completion" | "chat.completion.chunk" | "response" | "text_completion") =
        r.get("object").and_then(Value::as_str)
    {
        return Some(Format::Openai);
    }
    if r.get("type").and_then(Value::as_str) == Some("message") {
        return Some(Format::Anthropic);
    }
    if at(r, &["usage", "inputTokens"]).is_some() || has(r, "stopReason") {
        return Some(Format::Bedrock);
    }
    None
}

fn detect(v: &Value) -> Result<Format, Rejection> {
    let c = candidates(v);
    match c.as_slice() {
        [one] => Ok(*one),
        [] => {
            if !v.is_object() {
                return Err(reject("not_object", format!("a usage record must be a JSON object, got {}", kind(v))));
            }
            if v.get("usage").is_some() || v.get("response").is_some_and(|r| r.get("usage").is_some()) {
                return Err(reject(
                    "ambiguous_format",
                    "a `usage` object without a marker of its provider (`object` of OpenAI, `type: message` of \
                     Anthropic, `usageMetadata` of Gemini, camelCase Bedrock usage): cache tokens are inside \
                     `input_tokens` for some providers and on top of it for others, so it is not guessed; set \
                     the topic's `format`",
                ));
            }
            Err(reject(
                "unknown_format",
                "matches no input format (canonical, litellm, otel, openai/anthropic/gemini/bedrock envelope, \
                 bedrock invocation log, kong, portkey, cloudflare, cloudevents); set the topic's `format` or fix \
                 the producer",
            ))
        }
        [Format::Canonical, Format::Auto] => Err(reject(
            "ambiguous_format",
            format!(
                "canonical fields beside `{}`, which carries token counts under another format's names: not \
                 guessed; set the topic's `format`",
                foreign_usage_key(v).unwrap_or("?")
            ),
        )),
        many => Err(reject(
            "ambiguous_format",
            format!(
                "carries the markers of several formats ({}): not guessed; set the topic's `format`",
                many.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
        Value::Object(_) => "object",
    }
}

/// Normalizes one JSON record of `format` (`Auto` detects it) into the calls it describes (an OTLP export
/// or a Kong log may carry several, a log without a model call none).
pub fn adapt<'v>(format: Format, v: &'v Value) -> Result<Vec<Call<'v>>, Rejection> {
    adapt_depth(format, v, 0)
}

fn adapt_depth<'v>(format: Format, v: &'v Value, depth: u8) -> Result<Vec<Call<'v>>, Rejection> {
    if !v.is_object() {
        return Err(reject("not_object", format!("a usage record must be a JSON object, got {}", kind(v))));
    }
    let format = match format {
        Format::Auto => detect(v)?,
        f => f,
    };
    match format {
        // (`Auto` was resolved above; an Avro datum arrives here already as a canonical value)
        Format::Auto | Format::Avro | Format::Canonical => Ok(vec![canonical(v)?]),
        Format::Litellm => Ok(vec![litellm(v)?]),
        Format::Otel => otel(v),
        Format::Openai | Format::Anthropic | Format::Gemini => Ok(vec![envelope(format, v)?]),
        Format::Bedrock => {
            if v.get("response").is_some() {
                Ok(vec![envelope(format, v)?])
            } else {
                Ok(vec![bedrock_log(v)?])
            }
        }
        Format::Kong => kong(v),
        Format::Portkey => Ok(vec![portkey(v)?]),
        Format::Cloudflare => Ok(vec![cloudflare(v)?]),
        Format::Cloudevents => cloudevent(v, depth),
    }
}

// ---------------------------------------------------------------------------------------------------
// canonical (as a JSON value: CloudEvents data, Avro)

/// The canonical event read from a JSON value (the fast path for raw JSON bytes is in `decode`).
/// `step` of a record whose `step` is neither a string nor an integer (rejected in validation).
pub const BAD_STEP: &str = "\u{0}bad step";

/// `step` as a string or an integer; anything else is [`BAD_STEP`].
pub(crate) fn step_of(v: &Value) -> Option<Cow<'_, str>> {
    match v.get("step") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Cow::Borrowed(s.as_str())),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(Cow::Owned(n.to_string())),
        Some(_) => Some(Cow::Borrowed(BAD_STEP)),
    }
}

pub(crate) fn canonical(v: &Value) -> Result<Call<'_>, Rejection> {
    canonical_fields(v, true)
}

/// The string fields of the canonical shape (the fast reader's optional strings are the ones after
/// `model`, in this order).
pub(crate) const CANONICAL_STRINGS: [&str; 13] = [
    "event_id",
    "provider",
    "model",
    "service_tier",
    "status",
    "trace_id",
    "api_key_id",
    "service_account",
    "end_user",
    "team",
    "project",
    "workflow",
    "environment",
];

/// The canonical fields of `v`; `own_usage` = the counts must be canonical ones (false in an envelope,
/// whose counts come from its `response`).
fn canonical_fields(v: &Value, own_usage: bool) -> Result<Call<'_>, Rejection> {
    for f in CANONICAL_STRINGS {
        if let Some(x) = v.get(f)
            && !x.is_string()
            && !x.is_null()
        {
            return Err(reject("invalid_type", format!("`{f}` must be a string")));
        }
    }
    let strict = |f: &str| -> Option<Count> {
        match v.get(f) {
            None | Some(Value::Null) => None,
            Some(Value::String(_)) => Some(Count::WrongType("string")),
            Some(x) => Some(count_of(x)),
        }
    };
    let s = |f: &str| v.get(f).and_then(Value::as_str).map(Cow::Borrowed);
    if own_usage
        && strict("input_tokens").is_none()
        && strict("output_tokens").is_none()
        && let Some(k) = foreign_usage_key(v)
    {
        return Err(reject(
            "missing_field",
            format!("no `input_tokens`/`output_tokens`, but `{k}` carries token counts: not a canonical event"),
        ));
    }
    let cache_hit = match v.get("cache_hit") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(reject("invalid_type", "`cache_hit` must be a boolean")),
    };
    let reported = match v.get("cost_usd") {
        None | Some(Value::Null) => None,
        Some(x @ (Value::Number(_) | Value::String(_))) => money(Some(x)).map(Reported::Usd),
        Some(_) => return Err(reject("invalid_type", "`cost_usd` must be a number or a decimal string")),
    };
    Ok(Call {
        event_id: s("event_id"),
        ts: v.get("timestamp").map(|t| match t {
            Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
                Ok(d) => Ts::Ms(d.timestamp_millis()),
                Err(_) => Ts::Bad("not an RFC 3339 timestamp"),
            },
            other => ts_millis(Some(other)).unwrap_or(Ts::Bad("must be a string or a number")),
        }),
        provider: s("provider"),
        model: s("model"),
        input: strict("input_tokens"),
        output: strict("output_tokens"),
        cache_read: strict("cache_read_tokens"),
        cache_write: strict("cache_write_tokens"),
        cache_write_1h: strict("cache_write_1h_tokens"),
        audio_input: strict("audio_input_tokens"),
        audio_output: strict("audio_output_tokens"),
        reasoning: strict("reasoning_tokens"),
        retrieval: strict("retrieval_calls"),
        service_tier: s("service_tier"),
        status: s("status"),
        attempt: strict("attempt"),
        trace_id: s("trace_id"),
        step: step_of(v),
        api_key_id: s("api_key_id"),
        service_account: s("service_account"),
        end_user: s("end_user"),
        team: s("team"),
        project: s("project"),
        workflow: s("workflow"),
        environment: s("environment"),
        cache_hit,
        reported,
    })
}

// ---------------------------------------------------------------------------------------------------
// LiteLLM

/// `key:value` request tags of LiteLLM (`workflow:x`, `env:prod`); the first plain tag is the workflow.
fn tag_value<'v>(tags: &[&'v str], keys: &[&str]) -> Option<&'v str> {
    tags.iter().find_map(|t| {
        let (k, val) = t.split_once(':')?;
        keys.contains(&k.trim()).then_some(val.trim()).filter(|v| !v.is_empty())
    })
}

fn litellm(v: &Value) -> Result<Call<'_>, Rejection> {
    // SpendLogs exports may carry `metadata` and `request_tags` as JSON-encoded strings: read those
    // into owned values first (cold: only such exports pay for it).
    let meta_owned: Option<Value> = match v.get("metadata") {
        Some(Value::String(s)) => Some(
            crate::decode::parse_strict(s)
                .map_err(|e| reject("invalid_value", format!("`metadata` is a string but not JSON: {e}")))?,
        ),
        _ => None,
    };
    let tags_owned: Option<Value> = match v.get("request_tags") {
        Some(Value::String(s)) => Some(
            crate::decode::parse_strict(s)
                .map_err(|e| reject("invalid_value", format!("`request_tags` is a string but not JSON: {e}")))?,
        ),
        _ => None,
    };
    let meta = meta_owned.as_ref().or(v.get("metadata")).unwrap_or(&Value::Null);
    let tags_v = tags_owned.as_ref().or(v.get("request_tags"));
    let tags: Vec<&str> = tags_v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let usage = at(meta, &["usage_object"]).unwrap_or(&Value::Null);
    let owned = |c: Option<Cow<'_, str>>| c.map(|c| Cow::Owned(c.into_owned()));
    let to_static = |s: Option<&str>| s.map(|s| Cow::Owned(s.to_string()));

    let prompt = count(v, &["prompt_tokens"]).or_else(|| count(usage, &["prompt_tokens"]));
    let completion = count(v, &["completion_tokens"]).or_else(|| count(usage, &["completion_tokens"]));
    let failed = matches!(v.get("status").and_then(Value::as_str), Some("failure" | "error"));
    // LiteLLM logs a call whose provider sent no usage (a stream without usage) as all-zero counts with
    // status success: unknown, not free.
    let missing = !failed && is_zero(prompt) && is_zero(completion);
    let cache_read = count(usage, &["prompt_tokens_details", "cached_tokens"])
        .filter(|c| !matches!(c, Count::Ok(0)))
        .or_else(|| count(usage, &["cache_read_input_tokens"]));
    let cache_write = count(usage, &["cache_creation_input_tokens"])
        .filter(|c| !matches!(c, Count::Ok(0)))
        .or_else(|| count(usage, &["prompt_tokens_details", "cache_creation_tokens"]));
    let cw1h = count(usage, &["prompt_tokens_details", "cache_creation_token_details", "ephemeral_1h_input_tokens"])
        .or_else(|| count(usage, &["cache_creation", "ephemeral_1h_input_tokens"]));
    let cache_hit = match v.get("cache_hit") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    };
    let ts = match v.get("startTime") {
        Some(Value::Number(_)) => ts_seconds(v.get("startTime")),
        Some(Value::String(s)) => Some(text_ts(s)),
        _ => None,
    };
    let identity = owned(text(meta, &["user_api_key_alias"]))
        .or_else(|| owned(text(meta, &["user_api_key_hash"])))
        .or_else(|| text(v, &["api_key"]).map(|c| Cow::Owned(c.into_owned())));
    let spend_meta = at(meta, &["spend_logs_metadata"]).unwrap_or(&Value::Null);
    let plain_tag = tags.iter().find(|t| !t.contains(':')).copied();
    Ok(Call {
        event_id: text(v, &["id"]).or_else(|| text(v, &["request_id"])),
        ts,
        provider: text(v, &["custom_llm_provider"]),
        model: text(v, &["model"]),
        input: if missing { None } else { prompt.or(Some(Count::Ok(0))) },
        output: if missing { None } else { completion.or(Some(Count::Ok(0))) },
        cache_read: if missing { None } else { cache_read },
        cache_write: if missing { None } else { cache_write },
        cache_write_1h: if missing { None } else { cw1h },
        audio_input: if missing { None } else { count(usage, &["prompt_tokens_details", "audio_tokens"]) },
        audio_output: if missing { None } else { count(usage, &["completion_tokens_details", "audio_tokens"]) },
        reasoning: if missing { None } else { count(usage, &["completion_tokens_details", "reasoning_tokens"]) },
        retrieval: if missing { None } else { count(usage, &["server_tool_use", "web_search_requests"]) },
        service_tier: None,
        status: Some(Cow::Borrowed(if failed { "error" } else { "ok" })),
        attempt: None,
        trace_id: text(v, &["trace_id"]).or_else(|| text(v, &["session_id"])),
        step: step_of(spend_meta).or_else(|| step_of(meta)).map(|c| Cow::Owned(c.into_owned())),
        api_key_id: identity,
        service_account: owned(text(meta, &["user_api_key_user_id"])).or_else(|| text(v, &["user"])),
        end_user: text(v, &["end_user"]),
        team: owned(text(meta, &["user_api_key_team_alias"]))
            .or_else(|| owned(text(meta, &["user_api_key_team_id"])))
            .or_else(|| text(v, &["team_id"])),
        project: owned(text(spend_meta, &["project"])).or_else(|| to_static(tag_value(&tags, &["project"]))),
        workflow: to_static(tag_value(&tags, &["workflow"]))
            .or_else(|| owned(text(spend_meta, &["workflow"])))
            .or_else(|| to_static(plain_tag)),
        environment: to_static(tag_value(&tags, &["env", "environment"]))
            .or_else(|| owned(text(spend_meta, &["environment"]))),
        cache_hit,
        reported: money(at(v, &["response_cost"]).or_else(|| at(v, &["spend"]))).map(Reported::Usd),
    })
}

// ---------------------------------------------------------------------------------------------------
// OpenTelemetry GenAI

/// One span's attributes (and its resource's) as plain JSON values.
struct Attrs<'r, 'v> {
    span: Vec<(&'v str, &'v Value)>,
    resource: &'r [(&'v str, &'v Value)],
}

impl<'v> Attrs<'_, 'v> {
    fn get(&self, key: &str) -> Option<&'v Value> {
        self.span.iter().chain(self.resource).find(|(k, _)| *k == key).map(|(_, v)| *v).filter(|v| !v.is_null())
    }
    fn text(&self, key: &str) -> Option<Cow<'v, str>> {
        match self.get(key)? {
            Value::String(s) if !s.is_empty() => Some(Cow::Borrowed(s)),
            Value::Number(n) => Some(Cow::Owned(n.to_string())),
            _ => None,
        }
    }
    fn count(&self, key: &str) -> Option<Count> {
        self.get(key).map(count_of)
    }
}

/// OTLP typed attribute values (`{"stringValue": …}`, `{"intValue": "12"}` …) unwrapped.
fn otlp_attrs(list: Option<&Value>) -> Vec<(&str, &Value)> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let k = kv.get("key")?.as_str()?;
            let v = kv.get("value")?;
            let inner = ["stringValue", "intValue", "doubleValue", "boolValue", "arrayValue"]
                .iter()
                .find_map(|t| v.get(t))
                .unwrap_or(v);
            Some((k, inner))
        })
        .collect()
}

fn otel_provider(p: Cow<'_, str>) -> Cow<'_, str> {
    match p.as_ref() {
        "aws.bedrock" => Cow::Borrowed("bedrock"),
        "gcp.gemini" | "gemini" => Cow::Borrowed("gemini"),
        "gcp.vertex_ai" | "vertex_ai" => Cow::Borrowed("vertex_ai"),
        "azure.ai.openai" | "az.ai.openai" | "azure_openai" => Cow::Borrowed("azure"),
        "azure.ai.inference" | "az.ai.inference" => Cow::Borrowed("azure_ai"),
        "gcp.gen_ai" => Cow::Borrowed("vertex_ai"),
        _ => p,
    }
}

/// A model call span: GenAI usage or model attributes, and not an agent / workflow / tool span (those
/// carry their children's usage rolled up; pricing them too would double the cost).
fn is_genai(a: &Attrs<'_, '_>) -> bool {
    let op = a.get("gen_ai.operation.name").and_then(Value::as_str);
    if op.is_some_and(|o| matches!(o, "invoke_agent" | "create_agent" | "invoke_workflow" | "execute_tool")) {
        return false;
    }
    a.span.iter().any(|(k, _)| k.starts_with("gen_ai.usage.") || *k == "gen_ai.request.model")
}

fn otel_call<'v>(a: &Attrs<'_, 'v>, id: Option<Cow<'v, str>>, ts: Option<Ts>, error: bool) -> Call<'v> {
    let input = a.count("gen_ai.usage.input_tokens").or_else(|| a.count("gen_ai.usage.prompt_tokens"));
    let output = a.count("gen_ai.usage.output_tokens").or_else(|| a.count("gen_ai.usage.completion_tokens"));
    let error = error || a.get("error.type").is_some();
    Call {
        event_id: id,
        ts,
        provider: a.text("gen_ai.provider.name").or_else(|| a.text("gen_ai.system")).map(otel_provider),
        model: a.text("gen_ai.response.model").or_else(|| a.text("gen_ai.request.model")),
        input,
        output,
        // semantic conventions: cache and reasoning counts are INSIDE input/output tokens
        cache_read: a.count("gen_ai.usage.cache_read.input_tokens"),
        cache_write: a
            .count("gen_ai.usage.cache_creation.input_tokens")
            .or_else(|| a.count("gen_ai.usage.cache_write.input_tokens")),
        reasoning: a.count("gen_ai.usage.reasoning.output_tokens"),
        service_tier: a.text("gen_ai.openai.response.service_tier").or_else(|| a.text("openai.response.service_tier")),
        status: Some(Cow::Borrowed(if error { "error" } else { "ok" })),
        trace_id: a.text("trace_id"),
        api_key_id: a.text("aifinops.api_key_id").or_else(|| a.text("gen_ai.agent.id")),
        service_account: a.text("service.name"),
        end_user: a.text("enduser.id").or_else(|| a.text("user.id")),
        team: a.text("aifinops.team"),
        project: a.text("aifinops.project"),
        workflow: a.text("aifinops.workflow").or_else(|| a.text("gen_ai.workflow.name")),
        environment: a.text("deployment.environment.name").or_else(|| a.text("deployment.environment")),
        ..Call::default()
    }
}

fn otel(v: &Value) -> Result<Vec<Call<'_>>, Rejection> {
    let mut calls = Vec::new();
    if let Some(rs) = v.get("resourceSpans") {
        let Some(rs) = rs.as_array() else {
            return Err(reject("invalid_type", "`resourceSpans` must be an array"));
        };
        for r in rs {
            let resource = otlp_attrs(at(r, &["resource", "attributes"]));
            for ss in r.get("scopeSpans").and_then(Value::as_array).into_iter().flatten() {
                for span in ss.get("spans").and_then(Value::as_array).into_iter().flatten() {
                    let a = Attrs { span: otlp_attrs(span.get("attributes")), resource: &resource };
                    if !is_genai(&a) {
                        continue; // an HTTP or DB span of the same trace: not a model call
                    }
                    let id = match (text(span, &["traceId"]), text(span, &["spanId"])) {
                        (Some(t), Some(s)) => Some(Cow::Owned(format!("{t}:{s}"))),
                        _ => None,
                    };
                    let error = at(span, &["status", "code"]).is_some_and(|c| c == 2 || c == "STATUS_CODE_ERROR");
                    let mut call = otel_call(&a, id, ts_nanos(span.get("startTimeUnixNano")), error);
                    call.trace_id = text(span, &["traceId"]);
                    calls.push(call);
                }
            }
        }
        return Ok(calls);
    }
    // one span: a flat attribute map, or a span object with an OTLP attribute list
    let attrs: Vec<(&str, &Value)> = match v.get("attributes") {
        Some(list @ Value::Array(_)) => otlp_attrs(Some(list)),
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        _ => Vec::new(),
    };
    let top: Vec<(&str, &Value)> = v.as_object().into_iter().flatten().map(|(k, v)| (k.as_str(), v)).collect();
    let a = Attrs { span: attrs.into_iter().chain(top).collect(), resource: &[] };
    if !is_genai(&a) {
        return Err(reject(
            "missing_field",
            "an OTel span without GenAI attributes (`gen_ai.usage.*`, `gen_ai.request.model`)",
        ));
    }
    let trace = text(v, &["trace_id"]).or_else(|| text(v, &["traceId"]));
    let span = text(v, &["span_id"]).or_else(|| text(v, &["spanId"]));
    let id = match (&trace, span) {
        (Some(t), Some(s)) => Some(Cow::Owned(format!("{t}:{s}"))),
        _ => text(v, &["event_id"]),
    };
    let ts = if let Some(n) = v.get("startTimeUnixNano") {
        ts_nanos(Some(n))
    } else {
        ts_millis(v.get("start_time").or_else(|| v.get("timestamp")))
    };
    let error = matches!(v.get("status_code").and_then(Value::as_str), Some("STATUS_CODE_ERROR" | "ERROR"));
    let mut call = otel_call(&a, id, ts, error);
    call.trace_id = trace;
    Ok(vec![call])
}

// ---------------------------------------------------------------------------------------------------
// Provider responses in the aifinops envelope

/// The envelope's attribution fields, shared by every provider response.
fn envelope_fields<'v>(v: &'v Value) -> Result<Call<'v>, Rejection> {
    let c = canonical_fields(v, false)?;
    // the envelope is canonical minus the token counts: those come from the response only
    for (f, x) in [
        ("input_tokens", &c.input),
        ("output_tokens", &c.output),
        ("cache_read_tokens", &c.cache_read),
        ("cache_write_tokens", &c.cache_write),
        ("cache_write_1h_tokens", &c.cache_write_1h),
        ("audio_input_tokens", &c.audio_input),
        ("audio_output_tokens", &c.audio_output),
        ("reasoning_tokens", &c.reasoning),
        ("retrieval_calls", &c.retrieval),
    ] {
        if x.is_some() {
            return Err(reject(
                "ambiguous_format",
                format!("the envelope carries `{f}` beside a provider `response`: counts come from the response only"),
            ));
        }
    }
    Ok(c)
}

fn envelope(format: Format, v: &Value) -> Result<Call<'_>, Rejection> {
    let (mut c, r) = match v.get("response") {
        Some(r @ Value::Object(_)) => (envelope_fields(v)?, r),
        Some(_) => return Err(reject("invalid_type", "`response` must be the provider's response object")),
        // a bare response (explicit format only): no attribution, time from the response if it has one
        None => (Call::default(), v),
    };
    let shape = response_shape(r);
    if let Some(s) = shape
        && s != format
    {
        return Err(reject(
            "format_mismatch",
            format!(
                "the topic's format is {format} but the response is shaped like {s} ({}): token inclusion rules \
                 differ (an OpenAI-compatible proxy folds cache tokens into prompt_tokens), so read it as {s}",
                match s {
                    Format::Openai => "has an OpenAI `object`",
                    Format::Anthropic => "has `type: message`",
                    Format::Gemini => "has `usageMetadata`",
                    _ => "has camelCase Bedrock usage",
                }
            ),
        ));
    }
    if c.provider.is_none() {
        c.provider = Some(Cow::Borrowed(format.as_str()));
    }
    match format {
        Format::Openai => openai_response(&mut c, r),
        Format::Anthropic => anthropic_response(&mut c, r),
        Format::Gemini => gemini_response(&mut c, r),
        Format::Bedrock => bedrock_response(&mut c, r),
        _ => unreachable!("only provider formats are enveloped"),
    }
    Ok(c)
}

fn openai_response<'v>(c: &mut Call<'v>, r: &'v Value) {
    c.event_id = c.event_id.take().or_else(|| text(r, &["id"]));
    if c.ts.is_none() {
        c.ts = ts_seconds(r.get("created").or_else(|| r.get("created_at")));
    }
    c.model = c.model.take().or_else(|| text(r, &["model"]));
    if let Some(t) = text(r, &["service_tier"]) {
        c.service_tier = Some(t); // the tier the response says was used, not the one requested
    }
    if r.get("status").and_then(Value::as_str).is_some_and(|s| s == "failed") || at(r, &["error"]).is_some() {
        c.status = Some(Cow::Borrowed("error"));
    }
    let Some(u) = at(r, &["usage"]) else {
        return; // a stream without `include_usage`: usage missing
    };
    // chat: prompt/completion tokens; responses: input/output tokens. Cached, cache-creation (LiteLLM's
    // proxy adds them for Anthropic models), reasoning and audio counts are INSIDE the totals.
    c.input = count(u, &["prompt_tokens"]).or_else(|| count(u, &["input_tokens"]));
    c.output = count(u, &["completion_tokens"]).or_else(|| count(u, &["output_tokens"]));
    let details = at(u, &["prompt_tokens_details"]).or_else(|| at(u, &["input_tokens_details"]));
    let out_details = at(u, &["completion_tokens_details"]).or_else(|| at(u, &["output_tokens_details"]));
    c.cache_read = details
        .and_then(|d| count(d, &["cached_tokens"]))
        .filter(|x| !matches!(x, Count::Ok(0)))
        .or_else(|| count(u, &["cache_read_input_tokens"]));
    c.cache_write = count(u, &["cache_creation_input_tokens"])
        .filter(|x| !matches!(x, Count::Ok(0)))
        .or_else(|| details.and_then(|d| count(d, &["cache_creation_tokens"])));
    c.cache_write_1h = details
        .and_then(|d| count(d, &["cache_creation_token_details", "ephemeral_1h_input_tokens"]))
        .or_else(|| count(u, &["cache_creation", "ephemeral_1h_input_tokens"]));
    // audio: uncached audio input (cached audio is inside cached_tokens)
    let audio_in = details.and_then(|d| count(d, &["audio_tokens"]));
    let cached_audio = details.and_then(|d| count(d, &["cached_tokens_details", "audio_tokens"]));
    c.audio_input = match (audio_in, cached_audio) {
        (Some(Count::Ok(a)), Some(Count::Ok(ca))) => Some(Count::Ok(a.saturating_sub(ca))),
        (a, _) => a,
    };
    c.reasoning = out_details.and_then(|d| count(d, &["reasoning_tokens"]));
    c.audio_output = out_details.and_then(|d| count(d, &["audio_tokens"]));
}

fn anthropic_response<'v>(c: &mut Call<'v>, r: &'v Value) {
    c.event_id = c.event_id.take().or_else(|| text(r, &["id"]));
    c.model = c.model.take().or_else(|| text(r, &["model"]));
    if r.get("type").and_then(Value::as_str) == Some("error") {
        c.status = Some(Cow::Borrowed("error"));
    }
    let Some(u) = at(r, &["usage"]) else {
        return;
    };
    // Anthropic: cache reads and writes are ADDED on top of input_tokens.
    let read = count(u, &["cache_read_input_tokens"]);
    let write = count(u, &["cache_creation_input_tokens"]).or_else(|| {
        sum(
            count(u, &["cache_creation", "ephemeral_5m_input_tokens"]),
            count(u, &["cache_creation", "ephemeral_1h_input_tokens"]),
        )
    });
    c.input = sum(sum(count(u, &["input_tokens"]), read), write);
    c.output = count(u, &["output_tokens"]);
    c.cache_read = read;
    c.cache_write = write;
    c.cache_write_1h = count(u, &["cache_creation", "ephemeral_1h_input_tokens"]);
    c.retrieval = count(u, &["server_tool_use", "web_search_requests"]);
    if let Some(t) = text(u, &["service_tier"]).or_else(|| text(r, &["service_tier"])) {
        c.service_tier = Some(t);
    }
}

fn gemini_response<'v>(c: &mut Call<'v>, r: &'v Value) {
    c.event_id = c.event_id.take().or_else(|| text(r, &["responseId"]));
    c.model = c.model.take().or_else(|| text(r, &["modelVersion"]));
    let Some(u) = at(r, &["usageMetadata"]) else {
        return;
    };
    // Gemini: cached content is INSIDE promptTokenCount; tool-use prompt tokens and thoughts are
    // OUTSIDE prompt and candidates (total = prompt + toolUsePrompt + candidates + thoughts).
    c.input = sum(count(u, &["promptTokenCount"]), count(u, &["toolUsePromptTokenCount"]));
    let thoughts = count(u, &["thoughtsTokenCount"]);
    c.output = sum(count(u, &["candidatesTokenCount"]), thoughts);
    if c.input.is_some() && c.output.is_none() {
        c.output = Some(Count::Ok(0)); // no candidates (blocked prompt): counted, nothing generated
    }
    c.cache_read = count(u, &["cachedContentTokenCount"]);
    c.reasoning = thoughts;
    if text(u, &["trafficType"]).is_some_and(|t| t == "ON_DEMAND_PRIORITY") {
        c.service_tier = Some(Cow::Borrowed("priority"));
    }
}

fn bedrock_response<'v>(c: &mut Call<'v>, r: &'v Value) {
    let Some(u) = at(r, &["usage"]) else {
        return;
    };
    // Bedrock: cache read/write counts are separate from (on top of) inputTokens.
    let read = count(u, &["cacheReadInputTokens"]);
    let write = count(u, &["cacheWriteInputTokens"]);
    c.input = sum(sum(count(u, &["inputTokens"]), read), write);
    c.output = count(u, &["outputTokens"]);
    c.cache_read = read;
    c.cache_write = write;
    if let Some(t) = text(r, &["serviceTier", "type"]) {
        c.service_tier = Some(t);
    }
}

/// A Bedrock model-invocation log record (CloudWatch/S3 delivery), which carries its own time and caller.
fn bedrock_log(v: &Value) -> Result<Call<'_>, Rejection> {
    let read = count(v, &["input", "cacheReadInputTokenCount"]);
    let write = count(v, &["input", "cacheWriteInputTokenCount"]);
    let meta = at(v, &["requestMetadata"]).unwrap_or(&Value::Null);
    let error = at(v, &["errorCode"]).is_some() || at(v, &["error"]).is_some();
    Ok(Call {
        event_id: text(v, &["requestId"]),
        ts: ts_millis(v.get("timestamp")),
        provider: Some(Cow::Borrowed("bedrock")),
        model: text(v, &["modelId"]),
        input: sum(sum(count(v, &["input", "inputTokenCount"]), read), write),
        output: count(v, &["output", "outputTokenCount"]),
        cache_read: read,
        cache_write: write,
        status: Some(Cow::Borrowed(if error { "error" } else { "ok" })),
        api_key_id: text(meta, &["api_key_id"]).or_else(|| text(v, &["identity", "arn"])),
        service_account: text(v, &["identity", "arn"]),
        team: text(meta, &["team"]),
        project: text(meta, &["project"]),
        workflow: text(meta, &["workflow"]),
        environment: text(meta, &["environment"]),
        end_user: text(meta, &["end_user"]),
        ..Call::default()
    })
}

// ---------------------------------------------------------------------------------------------------
// Gateways: Kong, Portkey, Cloudflare

fn kong(v: &Value) -> Result<Vec<Call<'_>>, Rejection> {
    let Some(ai) = v.get("ai").and_then(Value::as_object) else {
        return Ok(Vec::new()); // a plain HTTP log line: no model call
    };
    let request_id = text(v, &["request", "id"])
        .or_else(|| text(v, &["request", "headers", "x-kong-request-id"]))
        .or_else(|| text(v, &["request", "headers", "x-request-id"]));
    let mut calls = Vec::new();
    let sections: Vec<(&String, &Value)> = ai.iter().filter(|(_, s)| s.get("usage").is_some()).collect();
    for (plugin, s) in &sections {
        let u = s.get("usage").unwrap_or(&Value::Null);
        let meta = s.get("meta").unwrap_or(&Value::Null);
        let status = v.get("response").and_then(|r| r.get("status")).and_then(Value::as_i64);
        let cache = at(s, &["cache", "cache_status"]).and_then(Value::as_str).unwrap_or("");
        // the proxy plugin's call keeps the request id; other AI plugins' calls get a suffix
        let id = match (&request_id, sections.len()) {
            (Some(r), 1) => Some(r.clone()),
            (Some(r), _) => Some(Cow::Owned(format!("{r}#{plugin}"))),
            _ => None,
        };
        calls.push(Call {
            event_id: id,
            ts: ts_millis(v.get("started_at")),
            provider: text(meta, &["provider_name"]),
            model: text(meta, &["response_model"]).or_else(|| text(meta, &["request_model"])),
            // Kong normalizes to the OpenAI shape: cached tokens are inside prompt_tokens
            input: count(u, &["prompt_tokens"]).or_else(|| count(u, &["prompt_token"])),
            output: count(u, &["completion_tokens"]).or_else(|| count(u, &["completion_token"])),
            cache_read: count(u, &["prompt_tokens_details", "cached_tokens"]),
            audio_input: count(u, &["prompt_tokens_details", "audio_tokens"]),
            reasoning: count(u, &["completion_tokens_details", "reasoning_tokens"]),
            audio_output: count(u, &["completion_tokens_details", "audio_tokens"]),
            status: Some(Cow::Borrowed(if status.is_some_and(|s| s >= 400) { "error" } else { "ok" })),
            api_key_id: text(v, &["consumer", "username"])
                .or_else(|| text(v, &["consumer", "id"]))
                .or_else(|| text(v, &["authenticated_entity", "id"])),
            service_account: text(v, &["service", "name"]),
            workflow: text(v, &["route", "name"]),
            cache_hit: cache.eq_ignore_ascii_case("hit"),
            reported: money(at(u, &["cost"])).map(Reported::Usd),
            ..Call::default()
        });
    }
    Ok(calls)
}

/// Attribution from a gateway's `metadata`, an object or a JSON-encoded string (Portkey, Cloudflare).
fn metadata_attribution(c: &mut Call<'_>, v: &Value) -> Result<(), Rejection> {
    match v.get("metadata") {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            let m: Value = crate::decode::parse_strict(s)
                .map_err(|e| reject("invalid_value", format!("`metadata` is a string but not JSON: {e}")))?;
            attribution(c, &m);
        }
        Some(m) => attribution(c, m),
        None => {}
    }
    Ok(())
}

/// Attribution fields from a gateway's free-form metadata (copied: the metadata may be a parsed string).
fn attribution(c: &mut Call<'_>, m: &Value) {
    let t = |path: &[&str]| text(m, path).map(|s| Cow::Owned(s.into_owned()));
    if let Some(k) = t(&["api_key_id"]) {
        c.api_key_id = Some(k);
    }
    c.service_account = t(&["service_account"]);
    c.end_user = t(&["_user"]).or_else(|| t(&["user"])).or_else(|| t(&["end_user"]));
    c.team = t(&["team"]);
    c.project = t(&["project"]);
    c.workflow = t(&["workflow"]);
    c.environment = t(&["environment"]).or_else(|| t(&["env"]));
}

fn portkey(v: &Value) -> Result<Call<'_>, Rejection> {
    let success = match v.get("is_success") {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        Some(Value::String(s)) => s == "1" || s.eq_ignore_ascii_case("true"),
        _ => true,
    };
    let cache = v.get("cache_status").and_then(Value::as_str).unwrap_or("");
    let mut c = Call {
        event_id: text(v, &["id"]).or_else(|| text(v, &["request_id"])),
        ts: ts_millis(v.get("created_at")),
        provider: text(v, &["ai_org"]),
        model: text(v, &["ai_model"]),
        input: count(v, &["req_units"]),
        output: count(v, &["res_units"]),
        status: Some(Cow::Borrowed(if success { "ok" } else { "error" })),
        trace_id: text(v, &["trace_id"]),
        api_key_id: text(v, &["virtual_key"]),
        // HIT and SEMANTIC HIT are served from Portkey's cache: no provider call, no provider cost
        cache_hit: cache.to_ascii_uppercase().ends_with("HIT"),
        reported: money(at(v, &["cost"])).map(Reported::Cents),
        ..Call::default()
    };
    metadata_attribution(&mut c, v)?;
    Ok(c)
}

fn cloudflare(v: &Value) -> Result<Call<'_>, Rejection> {
    let success = match v.get("success") {
        Some(Value::Bool(b)) => *b,
        _ => v.get("status_code").and_then(Value::as_i64).is_none_or(|s| s < 400),
    };
    let mut c = Call {
        event_id: text(v, &["id"]),
        ts: ts_millis(v.get("created_at")),
        provider: text(v, &["provider"]),
        model: text(v, &["model"]),
        input: count(v, &["tokens_in"]),
        output: count(v, &["tokens_out"]),
        status: Some(Cow::Borrowed(if success { "ok" } else { "error" })),
        cache_hit: v.get("cached").and_then(Value::as_bool).unwrap_or(false),
        reported: money(at(v, &["cost"])).map(Reported::Usd),
        ..Call::default()
    };
    metadata_attribution(&mut c, v)?;
    Ok(c)
}

// ---------------------------------------------------------------------------------------------------
// CloudEvents

fn cloudevent(v: &Value, depth: u8) -> Result<Vec<Call<'_>>, Rejection> {
    if depth > 0 {
        return Err(reject("invalid_value", "a CloudEvent inside a CloudEvent's data is not a usage record"));
    }
    if v.get("specversion").and_then(Value::as_str) != Some("1.0") {
        return Err(reject("invalid_value", "`specversion` must be \"1.0\""));
    }
    let Some(data) = v.get("data").filter(|d| d.is_object()) else {
        return Err(reject(
            "invalid_value",
            "CloudEvent without a JSON object `data` (data_base64 and non-JSON content types are not usage records)",
        ));
    };
    let mut calls = adapt_depth(Format::Auto, data, depth + 1)
        .map_err(|r| Rejection { kind: r.kind, reason: format!("CloudEvent data: {}", r.reason) })?;
    for c in &mut calls {
        // the envelope's id and time stand in for missing ones
        if c.event_id.is_none() {
            c.event_id = text(v, &["id"]);
        }
        if c.ts.is_none() {
            c.ts = v.get("time").and_then(Value::as_str).map(text_ts);
        }
    }
    Ok(calls)
}
