//! The shipped Avro schemas parse and accept a canonical event.

use apache_avro::{Schema, types::Record};

#[test]
fn usage_event_avsc_parses_and_encodes_a_canonical_event() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/usage_event.avsc")).unwrap();
    let schema = Schema::parse_str(&text).expect("usage_event.avsc is valid Avro");
    let mut r = Record::new(&schema).unwrap();
    r.put("event_id", "req-1");
    r.put("timestamp", apache_avro::types::Value::TimestampMillis(1_764_460_800_000));
    r.put("provider", "openai");
    r.put("model", "gpt-4o");
    r.put("input_tokens", 1200i64);
    r.put("output_tokens", 300i64);
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema).build().expect("writer");
    let bytes = writer.write_value_to_vec(r).expect("a canonical event encodes with usage_event.avsc");
    assert!(!bytes.is_empty());
    // Every required JSON-schema field is a non-optional Avro field, and the optional ones default to null.
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/usage_event.schema.json")).unwrap(),
    )
    .unwrap();
    let avsc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let avro_fields: Vec<&str> =
        avsc["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    for p in json["properties"].as_object().unwrap().keys() {
        assert!(avro_fields.contains(&p.as_str()), "{p} missing from usage_event.avsc");
    }
}

#[test]
fn alert_avsc_parses() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/alert.avsc")).unwrap();
    Schema::parse_str(&text).expect("alert.avsc is valid Avro");
}
