//! Hostile input: a corpus of bad records (`hostile/corpus.rs`), each of which must become a dead letter
//! with a reason and its location, interleaved with good records whose totals must stay exact, while the
//! pipeline keeps running and its counters match the corpus: in process, through `aifinops replay` from
//! files (file:line), and through Kafka into `aifinops run` (topic/partition@offset).

mod common;
#[path = "hostile/corpus.rs"]
mod corpus;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aifinops_ingest::avro::{AvroDecoder, SchemaSource};
use aifinops_ingest::{Decoder, Format, OwnerMap, PriceCatalog, RawPolicy};
use aifinops_schemas::SourceRef;
use common::*;
use corpus::*;

/// Writes the Avro schema files of the corpus: id 1 = usage_event.avsc, id 2 = an unrelated record.
fn schema_dir(dir: &Path) -> PathBuf {
    let avsc = dir.join("avsc");
    std::fs::create_dir_all(&avsc).unwrap();
    std::fs::write(avsc.join("1.avsc"), aifinops_schemas::avro::USAGE_EVENT_AVSC).unwrap();
    std::fs::write(avsc.join("2.avsc"), UNRELATED_AVSC).unwrap();
    avsc
}

fn format(t: Topic) -> Format {
    Format::parse(t.format()).unwrap()
}

#[test]
fn the_corpus_has_every_kind_the_issue_names() {
    let cases = corpus();
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), cases.len(), "case names are unique");
    assert!(cases.len() >= 30, "{} kinds", cases.len());
    for needle in [
        "truncated JSON",
        "count as a string",
        "count beyond u64",
        "negative count",
        "NaN literal",
        "10,000 levels of nesting",
        "10 MB message",
        "invalid UTF-8",
        "Avro magic byte with an unknown schema id",
        "Avro bytes on a JSON topic",
        "timestamp in year 9999",
        "timestamp in 1970",
        "empty message",
        "UTF-8 byte order mark",
        "trailing garbage",
        "duplicate key",
        "count in exponent notation",
        "Infinity literal",
        "lone UTF-16 surrogate",
        "control character",
        "JSON array",
        "truncated Avro body",
        "negative timestamp",
        "timestamp beyond i64",
        "unknown shape",
        "ambiguous shape",
    ] {
        assert!(names.iter().any(|n| n.contains(needle)), "no case for {needle:?}");
    }
    let file_cases = cases.iter().filter(|c| !c.kafka_only).count();
    assert!(file_cases >= 30, "{file_cases} cases fit in an NDJSON file");
    // the hand-written Avro bodies follow usage_event.avsc
    let apache_avro::Schema::Record(r) = aifinops_schemas::avro::usage_event_avro_schema() else { panic!() };
    let after = r.fields.iter().position(|f| f.name == "output_tokens").unwrap();
    assert_eq!(r.fields.len() - after - 1, AVRO_OPTIONAL_AFTER_TOTALS);
}

fn decoder(avsc: &Path) -> Decoder {
    let owners = OwnerMap::from_toml_str("owners", OWNERS).unwrap();
    Decoder::new(Arc::new(PriceCatalog::builtin()), Arc::new(owners), 1 << 20, RawPolicy::Redacted)
        .with_avro(AvroDecoder::new(SchemaSource::Local { files: vec![avsc.to_path_buf()] }).unwrap())
}

/// Every case through the decoder itself, each between two good records: a dead letter of its kind with
/// a reason, and the good records all accepted.
#[test]
fn every_hostile_record_is_a_dead_letter_of_its_kind_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = decoder(&schema_dir(dir.path()));
    let cases = corpus();
    let mut good_n = 0;
    let mut wrong = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let (g, ..) = good(0, 2 * i);
        assert!(d.push(g.as_bytes(), Format::Auto, || SourceRef::File { path: "g".into(), line: 0 }, 0).is_some());
        let accepted =
            d.push(&case.payload, format(case.topic), || SourceRef::File { path: "c".into(), line: i as u64 }, 0);
        let out = d.finish();
        good_n += out.batch.num_rows();
        match (accepted, out.dead_letters.as_slice()) {
            (None, [dl]) if dl.kind == case.kind && !dl.reason.trim().is_empty() && dl.source == format!("c:{i}") => {
                println!("{:<55} {:<26} {}", case.name, dl.kind, dl.reason.chars().take(140).collect::<String>());
            }
            (_, dls) => wrong.push(format!(
                "{}: expected {}, got {:?}",
                case.name,
                case.kind,
                dls.iter().map(|d| (d.kind, d.reason.clone())).collect::<Vec<_>>()
            )),
        }
    }
    assert!(wrong.is_empty(), "{} cases not dead-lettered as expected:\n{}", wrong.len(), wrong.join("\n"));
    assert_eq!(good_n, cases.len());
    // and a valid Avro record with the same framing is accepted (the Avro cases fail for their own reason)
    let ok = good_avro("avro-good", DAY + 3_600_000, 10, 1);
    assert!(d.push(&ok, Format::Avro, || SourceRef::File { path: "a".into(), line: 1 }, 0).is_some());
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &cases {
        *kinds.entry(c.kind).or_default() += 1;
    }
    println!("{} hostile kinds, dead-letter kinds: {kinds:?}", cases.len());
}
