//! Golden tests of every input format: each real-shaped sample record under `tests/fixtures/formats/<format>/`
//! is decoded with its format and with `auto`, and the normalized, priced rows (or the dead letter) must
//! equal `<case>.expected.json`. `AIFINOPS_BLESS=1` rewrites the expected files (review the diff!).

use std::path::PathBuf;
use std::sync::Arc;

use aifinops_ingest::{Decoder, Format, OwnerMap, PriceCatalog, RawPolicy};
use aifinops_schemas::SourceRef;
use aifinops_schemas::money::format_usd;
use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use serde_json::{Map, Value, json};

fn fixtures() -> PathBuf {
    // the checkout the tests run in (set by cargo at run time, not compiled in: see tests/common/mod.rs `repo`)
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .join("../tests/fixtures/formats")
}

fn decoder() -> Decoder {
    let owners = OwnerMap::from_toml_str(
        "owners.toml",
        r#"
        [[owner]]
        id = "support"
        risk_owner = "support-lead@acme.test"
        team = ["customer-support", "customer-success"]
        [[owner]]
        id = "legal"
        risk_owner = "legal-ops@acme.test"
        team = ["legal-ops"]
        "#,
    )
    .unwrap();
    Decoder::new(Arc::new(PriceCatalog::builtin()), Arc::new(owners), 1 << 20, RawPolicy::Redacted)
}

/// Rows of a priced batch as JSON objects (money as exact decimal strings; zero counts left out).
fn rows(b: &RecordBatch) -> Vec<Value> {
    (0..b.num_rows())
        .map(|i| {
            let mut o = Map::new();
            for (f, c) in b.schema().fields().iter().zip(b.columns()) {
                let v = match f.data_type() {
                    DataType::Utf8 => {
                        let s = c.as_string::<i32>().value(i);
                        if s.is_empty() { continue } else { json!(s) }
                    }
                    DataType::Int64 => {
                        let n = c.as_primitive::<Int64Type>().value(i);
                        if n == 0 { continue } else { json!(n) }
                    }
                    DataType::Decimal128(_, _) => {
                        let a = c.as_primitive::<Decimal128Type>();
                        if a.is_null(i) { json!(null) } else { json!(format_usd(a.value(i))) }
                    }
                    DataType::Timestamp(_, _) => {
                        let ms = c.as_primitive::<TimestampMillisecondType>().value(i);
                        json!(chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339())
                    }
                    _ => continue, // the event key is a hash of the event id
                };
                o.insert(f.name().clone(), v);
            }
            Value::Object(o)
        })
        .collect()
}

fn decode(format: Format, record: &[u8]) -> Value {
    let mut d = decoder();
    d.push(record, format, || SourceRef::File { path: "fixture".into(), line: 1 }, 0);
    let out = d.finish();
    if let Some(dl) = out.dead_letters.first() {
        return json!({"dead_letter": {"kind": dl.kind, "reason": dl.reason}});
    }
    json!({"rows": rows(&out.batch), "without_calls": out.stats.without_calls})
}

#[test]
fn every_format_matches_its_golden_file_and_auto_detects_it() {
    let bless = std::env::var("AIFINOPS_BLESS").is_ok();
    let mut checked = 0;
    let mut dirs: Vec<_> = std::fs::read_dir(fixtures()).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        let name = dir.file_name().unwrap().to_str().unwrap();
        let format = if name == "ambiguous" { Format::Auto } else { Format::parse(name).expect("dir is a format") };
        let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "json") && !f.to_str().unwrap().ends_with(".expected.json"))
        {
            let pretty: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
            let line = serde_json::to_vec(&pretty).unwrap(); // one NDJSON line / Kafka message
            let got = decode(format, &line);
            let golden = f.with_extension("expected.json");
            if bless {
                std::fs::write(&golden, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
            }
            let want: Value = serde_json::from_slice(
                &std::fs::read(&golden)
                    .unwrap_or_else(|_| panic!("{} missing: run with AIFINOPS_BLESS=1", golden.display())),
            )
            .unwrap();
            assert_eq!(got, want, "{}", f.display());
            // auto must reach the same result as the explicit format, without guessing
            if format != Format::Auto {
                assert_eq!(decode(Format::Auto, &line), got, "auto on {}", f.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} fixtures");
}

#[test]
fn the_traps_are_counted_right() {
    let read = |p: &str| {
        serde_json::to_vec(&serde_json::from_slice::<Value>(&std::fs::read(fixtures().join(p)).unwrap()).unwrap())
            .unwrap()
    };
    let row = |p: &str, f: Format| decode(f, &read(p))["rows"][0].clone();
    // An OpenAI-shaped body from a proxy in front of Anthropic: prompt_tokens already holds the caches.
    let r = row("openai/trap_anthropic_via_openai_proxy.json", Format::Openai);
    assert_eq!((r["input_tokens"].as_i64(), r["cache_read_tokens"].as_i64()), (Some(41_227), Some(36_864)));
    assert_eq!(r["provider"], "anthropic");
    assert_eq!(r["retry_requests"], 1);
    assert_eq!(r["retry_cost_usd"], r["cost_usd"], "a retry's whole cost is retry cost");
    assert_eq!(r["failed_cost_usd"], "0");
    // ... and read as Anthropic it is refused, not double counted
    let d = decode(Format::Anthropic, &read("openai/trap_anthropic_via_openai_proxy.json"));
    assert_eq!(d["dead_letter"]["kind"], "format_mismatch", "{d}");
    // Anthropic's own body: caches are added on top of input_tokens; 1h writes kept apart
    let r = row("anthropic/message_cache_read_5m_1h_writes.json", Format::Anthropic);
    assert_eq!(r["input_tokens"], 58_086);
    assert_eq!((r["cache_write_tokens"].as_i64(), r["cache_write_1h_tokens"].as_i64()), (Some(6_912), Some(4_352)));
    // 3,046 x 3 + 48,128 x 0.30 + 2,560 x 3.75 + 4,352 x 6 + 1,532 x 15 per 1M
    assert_eq!(r["cost_usd"], "0.0822684");
    // Gemini: thoughts are outside candidates and billed as output
    let r = row("gemini/thoughts_and_cached_content.json", Format::Gemini);
    assert_eq!((r["output_tokens"].as_i64(), r["reasoning_tokens"].as_i64()), (Some(2_519), Some(1_877)));
    assert_eq!(r["cache_read_tokens"], 32_768);
    // streamed calls without usage: counted as usage missing, cost unknown (null), never 0
    for (p, f) in [
        ("openai/stream_final_chunk_no_usage.json", Format::Openai),
        ("litellm/slp_stream_usage_missing.json", Format::Litellm),
        ("canonical/usage_missing.json", Format::Canonical),
    ] {
        let r = row(p, f);
        assert_eq!(r["usage_missing_requests"], 1, "{p}: {r}");
        assert_eq!(r["cost_usd"], Value::Null, "{p}");
        assert!(r.get("input_tokens").is_none(), "{p}");
    }
    // gateway cache hits cost exactly 0; Portkey's cost is in cents
    let r = row("portkey/export_row_cache_hit.json", Format::Portkey);
    assert_eq!((r["cost_usd"].as_str(), r["cache_hit_requests"].as_i64()), (Some("0"), Some(1)));
    let r = row("portkey/export_row_success.json", Format::Portkey);
    assert_eq!(r["reported_cost_usd"], "0.005945");
    // a Kong log of a plain HTTP request carries no model call: read, nothing priced
    let d = decode(Format::Kong, &read("kong/plain_http_no_ai_plugin.json"));
    assert_eq!((d["rows"].as_array().unwrap().len(), d["without_calls"].as_i64()), (0, Some(1)));
    // OTLP export: two GenAI spans priced, the HTTP span skipped
    let d = decode(Format::Otel, &read("otel/otlp_json_new_semconv.json"));
    assert_eq!(d["rows"].as_array().unwrap().len(), 2, "{d}");
}

/// Avro: the canonical fixtures encoded with `schemas/usage_event.avsc` (Confluent framing, schema id 1 in
/// a local `.avsc` file, and single-object encoding) decode to the same rows as their JSON.
#[test]
fn avro_records_normalize_like_their_canonical_json() {
    use aifinops_ingest::avro::{AvroDecoder, SchemaSource};
    use aifinops_schemas::avro::{AvroFraming, USAGE_EVENT_AVSC, frame, usage_event_avro_schema};
    use apache_avro::Schema;
    use apache_avro::types::Value as A;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("1.avsc"), USAGE_EVENT_AVSC).unwrap();
    let schema = usage_event_avro_schema();
    let Schema::Record(rec) = schema else { panic!("record schema") };
    for case in ["batch_tier", "cache_write_1h", "usage_missing"] {
        let json: Value =
            serde_json::from_slice(&std::fs::read(fixtures().join(format!("canonical/{case}.json"))).unwrap()).unwrap();
        let fields = rec
            .fields
            .iter()
            .map(|f| {
                let v = match (f.name.as_str(), json.get(&f.name).filter(|v| !v.is_null())) {
                    ("timestamp", Some(Value::String(t))) => {
                        A::TimestampMillis(chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis())
                    }
                    ("timestamp", Some(t)) => A::TimestampMillis(t.as_i64().unwrap()),
                    ("service_tier" | "status", Some(Value::String(s))) => {
                        let Schema::Union(u) = &f.schema else { panic!() };
                        let Some(Schema::Enum(e)) = u.variants().iter().find(|b| matches!(b, Schema::Enum(_))) else {
                            panic!()
                        };
                        A::Enum(e.symbols.iter().position(|x| x == s).unwrap() as u32, s.clone())
                    }
                    ("cost_usd", Some(v)) => A::String(v.as_str().map_or_else(|| v.to_string(), str::to_string)),
                    ("tags", Some(Value::Object(m))) => {
                        A::Map(m.iter().map(|(k, v)| (k.clone(), A::String(v.as_str().unwrap().into()))).collect())
                    }
                    ("attempt", Some(n)) => A::Int(n.as_i64().unwrap() as i32),
                    ("cache_hit", Some(b)) => A::Boolean(b.as_bool().unwrap()),
                    (_, Some(Value::String(s))) => A::String(s.clone()),
                    (_, Some(n)) => A::Long(n.as_i64().unwrap()),
                    (_, None) => A::Null,
                };
                let v = match &f.schema {
                    Schema::Union(_) if v == A::Null => A::Union(0, Box::new(A::Null)),
                    Schema::Union(u) => {
                        let i = u.variants().iter().position(|b| !matches!(b, Schema::Null)).unwrap();
                        A::Union(i as u32, Box::new(v))
                    }
                    _ => v,
                };
                (f.name.clone(), v)
            })
            .collect();
        let body = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(A::Record(fields))
            .unwrap();
        let want: Value =
            serde_json::from_slice(&std::fs::read(fixtures().join(format!("canonical/{case}.expected.json"))).unwrap())
                .unwrap();
        for framing in [AvroFraming::Confluent { schema_id: 1 }, AvroFraming::SingleObject] {
            let mut d = decoder()
                .with_avro(AvroDecoder::new(SchemaSource::Local { files: vec![dir.path().join("1.avsc")] }).unwrap());
            for f in [Format::Avro, Format::Auto] {
                d.push(&frame(framing, schema, &body), f, || SourceRef::File { path: "avro".into(), line: 1 }, 0);
            }
            let out = d.finish();
            assert!(out.dead_letters.is_empty(), "{case}: {:?}", out.dead_letters);
            let rows = rows(&out.batch);
            assert_eq!(rows.len(), 2);
            for r in rows {
                assert_eq!(r, want["rows"][0], "{case} {framing:?}");
            }
        }
    }
}

#[test]
fn review_regressions_in_the_adapters() {
    let one = |f: Format, v: Value| decode(f, &serde_json::to_vec(&v).unwrap());
    // a LiteLLM cost with float noise is rounded to 18 decimals, not a dead letter that loses the call
    let slp = json!({"id": "c1", "call_type": "acompletion", "startTime": 1793715727.5, "model": "gpt-4o",
                     "custom_llm_provider": "openai", "prompt_tokens": 10, "completion_tokens": 5,
                     "status": "success", "response_cost": 0.0056725000000000005});
    let r = one(Format::Auto, slp);
    assert_eq!(r["rows"][0]["reported_cost_usd"], "0.0056725", "{r}");
    // Portkey cents with more decimals than fit once divided by 100: rounded half to even
    let pk = json!({"id": "p1", "created_at": "2026-11-04T16:09:51Z", "ai_org": "openai", "ai_model": "gpt-4o",
                    "req_units": 1, "res_units": 1, "cost": 0.000000000000000125, "is_success": 1});
    assert_eq!(one(Format::Portkey, pk)["rows"][0]["reported_cost_usd"], "0.000000000000000001");
    // canonical fields beside counts under other names are not taken as "usage missing"
    for extra in [
        json!({"usage": {"input_tokens": 9, "output_tokens": 1}}),
        json!({"prompt_tokens": 9}),
        json!({"tokens_out": 3}),
        json!({"gen_ai.usage.input_tokens": 9}),
    ] {
        let mut v =
            json!({"event_id": "e", "timestamp": "2026-11-04T16:09:51Z", "provider": "openai", "model": "gpt-4o"});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        for f in [Format::Auto, Format::Canonical] {
            let d = one(f, v.clone());
            assert!(d.get("dead_letter").is_some(), "{f:?} {v}: {d}");
        }
    }
    // an OTel agent span carries its children's usage rolled up: only the chat span is priced
    let span = |id: &str, op: &str, n: i64| {
        json!({"spanId": id, "traceId": "t1", "startTimeUnixNano": "1793605450250000000", "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": op}},
            {"key": "gen_ai.provider.name", "value": {"stringValue": "openai"}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": n.to_string()}},
            {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "1"}}]})
    };
    let otlp = json!({"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"spans": [
        span("a1", "invoke_agent", 100), span("c1", "chat", 100)]}]}]});
    let d = one(Format::Otel, otlp);
    assert_eq!(d["rows"].as_array().unwrap().len(), 1, "{d}");
    // Anthropic counts whose sum passes 2^53 are refused, not accepted as 2^54 tokens
    let big = json!({"timestamp": "2026-11-04T16:09:51Z", "response": {"id": "msg_1", "type": "message", "model": "m",
                     "usage": {"input_tokens": 1_i64 << 53, "cache_read_input_tokens": 1_i64 << 53, "output_tokens": 1}}});
    assert_eq!(one(Format::Anthropic, big)["dead_letter"]["kind"], "invalid_count");
    // OTLP nanoseconds beyond i64 milliseconds are a bad timestamp, not a wrapped date
    let mut s = span("c2", "chat", 1);
    s["startTimeUnixNano"] = json!("18446744073709551617000000000");
    let d = one(Format::Otel, json!({"resourceSpans": [{"scopeSpans": [{"spans": [s]}]}]}));
    assert_eq!(d["dead_letter"]["kind"], "invalid_timestamp", "{d}");
}
