//! The shipped Avro schemas parse, accept a canonical event, and agree with `usage_event.schema.json`.

use apache_avro::{Schema, types::Record, types::Value};

fn read(name: &str) -> String {
    // the checkout the tests run in (cargo sets it at run time; a binary built from another checkout with the
    // same target directory would have that one's path compiled in)
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    std::fs::read_to_string(dir.join(name)).unwrap()
}

#[test]
fn usage_event_avsc_parses_and_encodes_a_canonical_event() {
    let text = read("usage_event.avsc");
    let schema = Schema::parse_str(&text).expect("usage_event.avsc is valid Avro");
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema).build().expect("writer");

    let mut r = Record::new(&schema).unwrap();
    r.put("event_id", "req-1");
    r.put("timestamp", Value::TimestampMillis(1_764_460_800_000));
    r.put("provider", "openai");
    r.put("model", "gpt-4o");
    r.put("input_tokens", Value::Union(1, Box::new(Value::Long(1200))));
    r.put("output_tokens", Value::Union(1, Box::new(Value::Long(300))));
    r.put("cache_write_tokens", Value::Union(1, Box::new(Value::Long(100))));
    r.put("cache_write_1h_tokens", Value::Union(1, Box::new(Value::Long(40))));
    r.put("audio_input_tokens", Value::Union(1, Box::new(Value::Long(10))));
    r.put("audio_output_tokens", Value::Union(1, Box::new(Value::Long(5))));
    r.put("cache_hit", Value::Union(1, Box::new(Value::Boolean(false))));
    let bytes = writer.write_value_to_vec(r).expect("a canonical event encodes with usage_event.avsc");
    assert!(!bytes.is_empty());

    // Usage missing: only the required fields, every optional one (the token counts too) defaults to null.
    let mut r = Record::new(&schema).unwrap();
    r.put("event_id", "req-2");
    r.put("timestamp", Value::TimestampMillis(1_764_460_800_000));
    r.put("provider", "anthropic");
    r.put("model", "claude-sonnet-4-5");
    writer.write_value_to_vec(r).expect("an event without usage encodes with usage_event.avsc");
}

/// The Avro type of a field with its `["null", T]` union removed, and whether it was nullable.
fn unwrap_nullable(t: &serde_json::Value) -> (&serde_json::Value, bool) {
    match t.as_array() {
        Some(branches) => {
            assert_eq!(branches.len(), 2, "optional fields are [\"null\", T], got {t}");
            assert_eq!(branches[0], "null", "optional fields are [\"null\", T] (null first, for the null default)");
            (&branches[1], true)
        }
        None => (t, false),
    }
}

#[test]
fn usage_event_avsc_agrees_with_the_json_schema() {
    let json: serde_json::Value = serde_json::from_str(&read("usage_event.schema.json")).unwrap();
    let avsc: serde_json::Value = serde_json::from_str(&read("usage_event.avsc")).unwrap();
    let fields = avsc["fields"].as_array().unwrap();
    let required: Vec<&str> = json["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let properties = json["properties"].as_object().unwrap();

    assert_eq!(fields.len(), properties.len(), "the two schemas have different field counts");
    for (name, prop) in properties {
        let field = fields
            .iter()
            .find(|f| f["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} missing from usage_event.avsc"));
        let (t, nullable) = unwrap_nullable(&field["type"]);
        if required.contains(&name.as_str()) {
            assert!(!nullable, "{name} is required in the JSON schema but nullable in the avsc");
        } else {
            assert!(nullable, "{name} is optional in the JSON schema but not nullable in the avsc");
            assert_eq!(field.get("default"), Some(&serde_json::Value::Null), "{name} must default to null");
        }
        // The Avro type matches the JSON type.
        let avro_type = t.get("type").unwrap_or(t);
        let logical = t.get("logicalType").and_then(|l| l.as_str());
        match (prop.get("type").and_then(|t| t.as_str()), prop.get("enum")) {
            (Some("integer"), _) => {
                assert!(avro_type == "long" || avro_type == "int", "{name}: integer in JSON, {t} in Avro")
            }
            (Some("string"), _) => assert_eq!(avro_type, "string", "{name}"),
            (Some("boolean"), _) => assert_eq!(avro_type, "boolean", "{name}"),
            (Some("object"), _) => {
                assert_eq!(avro_type, "map", "{name}");
                assert_eq!(t["values"], "string", "{name}");
            }
            (None, Some(symbols)) => {
                assert_eq!(avro_type, "enum", "{name}");
                assert_eq!(&t["symbols"], symbols, "{name}: enum symbols differ");
            }
            _ if name == "timestamp" => assert_eq!(logical, Some("timestamp-millis")),
            _ if name == "cost_usd" => assert_eq!(avro_type, "string", "cost_usd is a decimal string in Avro"),
            other => panic!("{name}: unexpected JSON type {other:?}"),
        }
    }
    // Both token totals or none: the JSON schema says so with dependentRequired; Avro cannot, the decoder does.
    assert_eq!(json["dependentRequired"]["input_tokens"], serde_json::json!(["output_tokens"]));
    assert_eq!(json["dependentRequired"]["output_tokens"], serde_json::json!(["input_tokens"]));
}

#[test]
fn alert_avsc_parses() {
    Schema::parse_str(&read("alert.avsc")).expect("alert.avsc is valid Avro");
}
