//! The Avro decoder with local schemas (1 = usage_event.avsc, 2 = an evolved writer schema). The first
//! byte picks the framing so that most inputs reach the body decoder: 0 = Confluent id 1, 1 = Confluent
//! id 2, 2 = single-object with the built-in schema's fingerprint, anything else = the bytes as they are
//! (framing included). Invariants: no panic; a decoded record is a JSON object, and it goes on through
//! the canonical reader without panicking.
#![no_main]

use std::cell::RefCell;

use aifinops_ingest::avro::AvroDecoder;
use aifinops_schemas::avro::{AvroFraming, frame, usage_event_avro_schema};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static AVRO: RefCell<AvroDecoder> = RefCell::new(aifinops_fuzz::avro_decoder());
}

fuzz_target!(|data: &[u8]| {
    let Some((&f, body)) = data.split_first() else { return };
    let schema = usage_event_avro_schema();
    let payload = match f {
        0 => frame(AvroFraming::Confluent { schema_id: 1 }, schema, body),
        1 => frame(AvroFraming::Confluent { schema_id: 2 }, schema, body),
        2 => frame(AvroFraming::SingleObject, schema, body),
        _ => body.to_vec(),
    };
    AVRO.with(|a| {
        if let Ok(v) = a.borrow_mut().decode(&payload) {
            assert!(v.is_object(), "{v}");
        }
    });
});
