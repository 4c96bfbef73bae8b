//! `Decoder::push` under every format: the first byte picks the format (`Format::ALL[b % 13]`), the rest
//! is the record. The pipeline's path: detection, every adapter, validation, pricing with the built-in
//! catalog, attribution, Avro with local schemas. Invariants: no panic; a record is accepted (rows, each
//! with an event time in range and non-negative counts and costs) or one dead letter with a kind and a
//! reason; the stats agree with the batch.
#![no_main]

use std::cell::RefCell;

use aifinops_ingest::Decoder;
use aifinops_ingest::decode::{MAX_TS_MS, MIN_TS_MS};
use aifinops_ingest::formats::Format;
use aifinops_schemas::SourceRef;
use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static DECODER: RefCell<Decoder> = RefCell::new(aifinops_fuzz::decoder());
}

/// Counts and costs are never negative, event times never outside the accepted range.
fn check_batch(b: &RecordBatch) {
    assert_eq!(b.schema(), aifinops_schemas::event::priced_event_schema());
    for (field, col) in b.schema().fields().iter().zip(b.columns()) {
        let name = field.name();
        match field.data_type() {
            DataType::Int64 => {
                assert!(col.as_primitive::<Int64Type>().iter().flatten().all(|v| v >= 0), "negative {name}")
            }
            DataType::Decimal128(..) => {
                assert!(col.as_primitive::<Decimal128Type>().iter().flatten().all(|v| v >= 0), "negative {name}")
            }
            DataType::Timestamp(..) => {
                let ts = col.as_primitive::<TimestampMillisecondType>();
                assert!(ts.null_count() == 0 && ts.iter().flatten().all(|t| (MIN_TS_MS..MAX_TS_MS).contains(&t)));
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&f, payload)) = data.split_first() else { return };
    let format = Format::ALL[f as usize % Format::ALL.len()];
    DECODER.with(|d| {
        let mut d = d.borrow_mut();
        let ts = d.push(payload, format, || SourceRef::File { path: "fuzz".into(), line: 1 }, 0);
        let out = d.finish();
        let rows = out.batch.num_rows() as u64;
        assert_eq!(rows, out.stats.accepted);
        assert_eq!(out.dead_letters.len() as u64, out.stats.dead_letters);
        match ts {
            Some(ts) => {
                assert!(rows > 0 && out.dead_letters.is_empty());
                assert!((MIN_TS_MS..MAX_TS_MS).contains(&ts), "event time {ts} out of range");
            }
            None if out.dead_letters.is_empty() => assert!(rows == 0 && out.stats.without_calls == 1),
            None => assert_eq!(rows, 0, "a record is accepted or rejected whole"),
        }
        for dl in &out.dead_letters {
            assert!(!dl.kind.is_empty() && !dl.reason.trim().is_empty(), "{dl:?}");
            assert_eq!(dl.source, "fuzz:1");
        }
        check_batch(&out.batch);
    });
});
