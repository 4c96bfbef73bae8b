//! The hostile-input corpus: records that must each become a dead letter with a reason, never an event,
//! a panic or a stopped pipeline. Each case names its kind, the input format of the topic (or file) it
//! is sent on, and the dead-letter kind it must get. Good records to interleave with them are here too,
//! with their exact expected totals.
#![allow(dead_code)]

/// The format of the topic or file a case is sent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Topic {
    /// `auto`, with Avro enabled (local schema files: id 1 = usage_event.avsc, id 2 = an unrelated record).
    Auto,
    /// `canonical`: a JSON topic.
    Canonical,
    /// `avro`.
    Avro,
    /// `litellm`.
    Litellm,
    /// `openai` (provider responses in the aifinops envelope).
    Openai,
}

impl Topic {
    pub const ALL: [Topic; 5] = [Topic::Auto, Topic::Canonical, Topic::Avro, Topic::Litellm, Topic::Openai];
    pub fn format(self) -> &'static str {
        match self {
            Topic::Auto => "auto",
            Topic::Canonical => "canonical",
            Topic::Avro => "avro",
            Topic::Litellm => "litellm",
            Topic::Openai => "openai",
        }
    }
}

/// One hostile record.
pub struct Case {
    /// What is wrong with it (unique).
    pub name: &'static str,
    pub topic: Topic,
    pub payload: Vec<u8>,
    /// The dead-letter kind it must get.
    pub kind: &'static str,
    /// Whether it goes through the Kafka test only: an empty record or one with a line break is not one
    /// NDJSON line (blank lines are not records).
    pub kafka_only: bool,
}

/// 2025-11-30T00:00:00Z: the good records' day.
pub const DAY: i64 = 1_764_460_800_000;
/// gpt-4o-mini in the built-in catalog, in 10^-12 USD per token: input, output.
pub const MINI_IN: u128 = 150_000;
pub const MINI_OUT: u128 = 600_000;

/// The JSON of a valid canonical event with `fields` replacing or adding fields (written verbatim:
/// `"k":v` pairs), so each case differs from a good record in one thing only.
pub fn canonical_with(id: &str, fields: &str) -> String {
    let base = [
        ("event_id", format!("\"{id}\"")),
        ("timestamp", "1764496800000".to_string()),
        ("provider", "\"openai\"".to_string()),
        ("model", "\"gpt-4o-mini\"".to_string()),
        ("input_tokens", "1000".to_string()),
        ("output_tokens", "100".to_string()),
        ("api_key_id", "\"key-search-1\"".to_string()),
    ];
    let mut out = String::from("{");
    for (k, v) in base {
        if !fields.contains(&format!("\"{k}\":")) {
            out.push_str(&format!("\"{k}\":{v},"));
        }
    }
    out.push_str(fields);
    if out.ends_with(',') {
        out.pop();
    }
    out.push('}');
    out
}

fn zigzag(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn avro_string(s: &str) -> Vec<u8> {
    let mut out = zigzag(s.len() as i64);
    out.extend_from_slice(s.as_bytes());
    out
}

/// The Avro body of a `usage_event.avsc` record (written by hand: the schema's field order; every optional
/// field after the token totals null).
pub fn avro_body(event_id: &str, ts: i64, input: i64, output: i64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(avro_string(event_id));
    b.extend(zigzag(ts));
    b.extend(avro_string("openai"));
    b.extend(avro_string("gpt-4o-mini"));
    b.extend(zigzag(1)); // union branch long
    b.extend(zigzag(input));
    b.extend(zigzag(1));
    b.extend(zigzag(output));
    b.extend(std::iter::repeat_n(0u8, AVRO_OPTIONAL_AFTER_TOTALS)); // branch null
    b
}

/// Fields of usage_event.avsc after `output_tokens` (checked by the corpus test against the schema).
pub const AVRO_OPTIONAL_AFTER_TOTALS: usize = 22;

/// Confluent wire format: magic 0, 4-byte big-endian schema id, body.
pub fn confluent(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A valid Avro usage event (schema id 1), used as a good record on the Avro topic.
pub fn good_avro(id: &str, ts: i64, input: i64, output: i64) -> Vec<u8> {
    confluent(1, &avro_body(id, ts, input, output))
}

/// A nesting of `depth` arrays.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// The corpus. Every case is a dead letter of its kind, whatever else is on the topic.
pub fn corpus() -> Vec<Case> {
    let mut v: Vec<Case> = Vec::new();
    let mut add = |name: &'static str, topic: Topic, payload: Vec<u8>, kind: &'static str| {
        let kafka_only = payload.contains(&b'\n') || payload.iter().all(u8::is_ascii_whitespace);
        v.push(Case { name, topic, payload, kind, kafka_only });
    };
    let c = |fields: &str| canonical_with("bad", fields).into_bytes();
    use Topic::*;

    // --- not JSON at all, or not one JSON value
    let good = canonical_with("bad", "");
    add("truncated JSON", Auto, good.as_bytes()[..good.len() / 2].to_vec(), "not_json");
    add("truncated JSON on a canonical topic", Canonical, good.as_bytes()[..40].to_vec(), "not_json");
    add("empty message", Auto, Vec::new(), "empty");
    add("whitespace-only message", Canonical, b" \t \r\n ".to_vec(), "empty");
    add(
        "invalid UTF-8 in a string",
        Auto,
        [&b"{\"event_id\":\"\xff\xfe\","[..], &good.as_bytes()[1..]].concat(),
        "invalid_utf8",
    );
    add(
        "AWS key prefix followed by invalid UTF-8 (dead-letter redaction)",
        Auto,
        [&b"{\"api_key_id\":\"ASIA\x01\x00\x00t\x84\x00"[..], &[0xe4; 20], b"\"}"].concat(),
        "invalid_utf8",
    );
    add(
        "AWS key prefix followed by multi-byte characters",
        Canonical,
        c("\"api_key_id\":\"ASIA€€€€€€€€\",\"model\":\"gpt\\u0007\""),
        "invalid_value",
    );
    add("Latin-1 bytes in a field name", Canonical, b"{\"mod\xe8le\":\"x\"}".to_vec(), "invalid_utf8");
    add("UTF-16 encoded JSON", Auto, good.encode_utf16().flat_map(u16::to_le_bytes).collect(), "not_json");
    add("UTF-8 byte order mark before the object", Auto, [&b"\xef\xbb\xbf"[..], good.as_bytes()].concat(), "not_json");
    add("trailing garbage after the object", Auto, format!("{good} trailing").into_bytes(), "not_json");
    add("two objects in one message", Canonical, format!("{good}{good}").into_bytes(), "not_json");
    add("comment before the object", Auto, format!("/* usage */ {good}").into_bytes(), "not_json");
    add("single-quoted JSON", Auto, good.replace('"', "'").into_bytes(), "not_json");
    add("NaN literal as a count", Auto, c("\"input_tokens\":NaN"), "not_json");
    add("Infinity literal as a cost", Canonical, c("\"cost_usd\":Infinity"), "not_json");
    add("number beyond f64 (1e400)", Auto, c("\"input_tokens\":1e400"), "not_json");
    add("leading zeros in a count", Auto, c("\"input_tokens\":0100"), "not_json");
    add("lone UTF-16 surrogate escape", Auto, c("\"model\":\"gpt-\\ud800-4o\""), "not_json");
    add("raw control character in a string", Auto, c("\"model\":\"gpt\u{1}4o\""), "not_json");
    add("raw line break inside a string", Auto, c("\"model\":\"gpt\n4o\""), "not_json");
    add("10,000 levels of nesting", Auto, format!("{{\"x\":{}}}", nested(10_000)).into_bytes(), "too_deep");
    add("200 levels of nesting in an unknown field", Canonical, c(&format!("\"extra\":{}", nested(200))), "too_deep");
    add("a million unclosed brackets", Auto, "[".repeat(1_000_000).into_bytes(), "too_deep");

    // --- JSON, but not a usage record
    add("JSON array", Auto, b"[1,2,3]".to_vec(), "not_object");
    add("JSON null", Auto, b"null".to_vec(), "not_object");
    add("JSON string", Canonical, b"\"usage\"".to_vec(), "not_object");
    add("JSON number", Auto, b"42".to_vec(), "not_object");
    add("empty object", Auto, b"{}".to_vec(), "unknown_format");
    add("unknown shape", Auto, br#"{"request":"r1","tokens":12,"price":"0.1"}"#.to_vec(), "unknown_format");
    add(
        "ambiguous shape (usage without a provider marker)",
        Auto,
        br#"{"event_id":"a","usage":{"prompt_tokens":10,"completion_tokens":2}}"#.to_vec(),
        "ambiguous_format",
    );
    add(
        "ambiguous shape (markers of two gateways)",
        Auto,
        br#"{"id":"x","tokens_in":5,"tokens_out":1,"ai_org":"openai","ai_model":"gpt-4o","req_units":5}"#.to_vec(),
        "ambiguous_format",
    );
    add("duplicate key", Auto, c("\"input_tokens\":1,\"output_tokens\":1,\"input_tokens\":5000000"), "duplicate_key");
    add(
        "duplicate key on a canonical topic",
        Canonical,
        c("\"model\":\"gpt-4o-mini\",\"model\":\"gpt-4o\""),
        "duplicate_key",
    );
    add("duplicate key in a nested object", Litellm, br#"{"id":"l1","call_type":"completion","model":"gpt-4o-mini","custom_llm_provider":"openai","startTime":1764496800.0,"prompt_tokens":10,"completion_tokens":1,"metadata":{"user_api_key_team_alias":"a","user_api_key_team_alias":"b"}}"#.to_vec(), "duplicate_key");

    // --- wrong types
    add("count as a string", Canonical, c("\"input_tokens\":\"1000\""), "invalid_type");
    add("count as a boolean", Auto, c("\"output_tokens\":true"), "invalid_type");
    add("count as an object", Auto, c("\"input_tokens\":{\"$numberLong\":\"1000\"}"), "invalid_type");
    add("model as a number", Auto, c("\"model\":4"), "invalid_type");
    add("event_id as an object (injection shape)", Auto, c("\"event_id\":{\"$gt\":\"\"}"), "invalid_type");
    add("timestamp as a boolean", Auto, c("\"timestamp\":true"), "invalid_timestamp");
    add("cost as an array", Canonical, c("\"cost_usd\":[0.1]"), "invalid_value");
    add(
        "OpenAI envelope whose response is a string",
        Openai,
        br#"{"event_id":"o1","timestamp":"2025-11-30T10:00:00Z","response":"{\"object\":\"chat.completion\"}"}"#
            .to_vec(),
        "invalid_type",
    );
    add("LiteLLM metadata string that is not JSON", Litellm, br#"{"id":"l2","call_type":"completion","model":"gpt-4o-mini","custom_llm_provider":"openai","startTime":1764496800.0,"prompt_tokens":10,"completion_tokens":1,"metadata":"{not json"}"#.to_vec(), "invalid_value");

    // --- numbers out of range
    add("negative count", Auto, c("\"input_tokens\":-5"), "invalid_count");
    add("negative zero-point count", Auto, c("\"output_tokens\":-0.5"), "invalid_count");
    add("count above 2^53", Canonical, c("\"input_tokens\":9007199254740993"), "invalid_count");
    add("count beyond u64", Auto, c("\"input_tokens\":184467440737095516160"), "invalid_count");
    add("decimal count", Auto, c("\"input_tokens\":1000.5"), "invalid_count");
    add("decimal count with a zero fraction", Auto, c("\"input_tokens\":1000.0"), "invalid_count");
    add("count in exponent notation", Canonical, c("\"input_tokens\":1e3"), "invalid_count");
    add(
        "count that rounds to an integer as a double",
        Auto,
        c("\"input_tokens\":1000.00000000000001"),
        "invalid_count",
    );
    add("cached tokens above the input", Auto, c("\"cache_read_tokens\":1001"), "inconsistent_tokens");
    add("negative cost", Auto, c("\"cost_usd\":-0.01"), "invalid_value");
    add("absurd cost (1e30 USD)", Canonical, c("\"cost_usd\":1e30"), "invalid_value");
    add("cost \"NaN\" as a string", Auto, c("\"cost_usd\":\"NaN\""), "invalid_value");

    // --- timestamps
    add("timestamp in year 9999", Auto, c("\"timestamp\":\"9999-12-31T23:59:59Z\""), "invalid_timestamp");
    add("timestamp in 1970 (epoch 0)", Auto, c("\"timestamp\":0"), "invalid_timestamp");
    add("timestamp 1970 as RFC 3339", Canonical, c("\"timestamp\":\"1970-01-01T00:00:00Z\""), "invalid_timestamp");
    add("timestamp in seconds instead of milliseconds", Auto, c("\"timestamp\":1764496800"), "invalid_timestamp");
    add("negative timestamp", Auto, c("\"timestamp\":-1764496800000"), "invalid_timestamp");
    add("timestamp beyond i64 milliseconds", Auto, c("\"timestamp\":18446744073709551615"), "invalid_timestamp");
    add("timestamp beyond u64 milliseconds", Canonical, c("\"timestamp\":1e25"), "invalid_timestamp");
    add("timestamp that is not a date", Auto, c("\"timestamp\":\"yesterday\""), "invalid_timestamp");
    add("timestamp with an invalid month", Auto, c("\"timestamp\":\"2025-13-40T00:00:00Z\""), "invalid_timestamp");

    // --- fields
    add("missing event_id", Canonical, br#"{"timestamp":1764496800000,"provider":"openai","model":"gpt-4o-mini","input_tokens":1,"output_tokens":1,"event_id":null}"#.to_vec(), "missing_field");
    add("empty model", Canonical, c("\"model\":\"  \""), "missing_field");
    add("escaped control character in the model", Auto, c("\"model\":\"gpt-4o\\u0000\""), "invalid_value");
    add("escape sequence in a team name", Canonical, c("\"team\":\"search\\u001b[31m\""), "invalid_value");
    add("unknown service tier", Auto, c("\"service_tier\":\"platinum\""), "invalid_value");

    // --- Avro
    let body = avro_body("avro-bad", 1_764_496_800_000, 10, 1);
    add("Avro magic byte with an unknown schema id", Auto, confluent(99, &body), "avro_schema_unknown");
    add("Avro with an unknown schema id on an Avro topic", Avro, confluent(0x0a0b_0c0d, &body), "avro_schema_unknown");
    add("Avro written with an incompatible schema", Avro, confluent(2, &body), "avro_schema_incompatible");
    add(
        "Avro single-object with an unknown fingerprint",
        Auto,
        [&[0xc3, 0x01][..], &[7; 8], &body].concat(),
        "avro_schema_unknown",
    );
    add("Avro bytes on a JSON topic", Canonical, good_avro("avro-on-json", 1_764_496_800_000, 10, 1), "not_json");
    add(
        "Avro single-object bytes on a JSON topic",
        Canonical,
        [&[0xc3, 0x01][..], &[7; 8], &body].concat(),
        "not_json",
    );
    add("JSON on an Avro topic", Avro, good.clone().into_bytes(), "avro_framing");
    add("Avro header cut short", Auto, vec![0, 0, 0], "avro_framing");
    add("truncated Avro body", Auto, confluent(1, &body[..body.len() - 5]), "avro_decode");
    add("Avro body cut inside the first string", Avro, confluent(1, &body[..3]), "avro_decode");
    add("Avro body with trailing bytes", Auto, confluent(1, &[&body[..], b"junk"].concat()), "avro_decode");
    add("Avro string length of 500 MB", Avro, confluent(1, &zigzag(500 << 20)), "avro_decode");
    add("Avro negative string length", Auto, confluent(1, &zigzag(-7)), "avro_decode");
    add("Avro timestamp in year 9999", Avro, good_avro("avro-9999", 253_402_300_799_000, 10, 1), "invalid_timestamp");
    add("Avro negative count", Auto, good_avro("avro-neg", 1_764_496_800_000, -10, 1), "invalid_count");

    // --- size
    add("10 MB message", Auto, huge(10 << 20), "too_large");
    v
}

/// A valid canonical event padded to about `bytes` bytes.
pub fn huge(bytes: usize) -> Vec<u8> {
    canonical_with("huge", &format!("\"pad\":\"{}\"", "x".repeat(bytes))).into_bytes()
}

/// A good canonical record: (JSON, input, output). Its owner is `search` (key-search-N), its model
/// gpt-4o-mini.
pub fn good(round: usize, i: usize) -> (String, i64, i64) {
    let input = 1_000 + i as i64 * 7;
    let output = 100 + i as i64 * 3;
    let ts = DAY + 36_000_000 + i as i64 * 60_000;
    let line = format!(
        r#"{{"event_id":"good-{round}-{i}","timestamp":{ts},"provider":"openai","model":"gpt-4o-mini","input_tokens":{input},"output_tokens":{output},"api_key_id":"key-search-{}"}}"#,
        i % 3
    );
    (line, input, output)
}

/// The cost of a good record in 10^-12 USD.
pub fn cost_pico(input: i64, output: i64) -> u128 {
    input as u128 * MINI_IN + output as u128 * MINI_OUT
}

/// An Avro schema that is not a usage event (local schema id 2).
pub const UNRELATED_AVSC: &str =
    r#"{"type":"record","name":"Click","fields":[{"name":"url","type":"string"},{"name":"n","type":"long"}]}"#;
