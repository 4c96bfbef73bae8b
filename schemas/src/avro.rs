//! Avro: the shipped schemas, the two message framings aifinops reads and writes, and the Avro form of
//! an [`Alert`](crate::Alert).
//!
//! Framings (one Kafka message value = header + Avro binary body of one record):
//! - Confluent wire format: byte `0x00`, the 4-byte big-endian schema registry id, the body.
//! - Avro single-object encoding: bytes `0xC3 0x01`, the 8-byte little-endian CRC-64-AVRO (Rabin)
//!   fingerprint of the writer schema's Parsing Canonical Form, the body.

use std::sync::OnceLock;

use apache_avro::{Schema, rabin::Rabin, types::Value, writer::datum::GenericDatumWriter};

/// `usage_event.avsc`: the canonical usage event (the reader schema of the Avro decoder).
pub const USAGE_EVENT_AVSC: &str = include_str!("../usage_event.avsc");
/// `alert.avsc`: an alert as a CloudEvents 1.0 record, `data` as JSON text.
pub const ALERT_AVSC: &str = include_str!("../alert.avsc");

/// First byte of the Confluent wire format.
pub const CONFLUENT_MAGIC: u8 = 0x00;
/// First two bytes of Avro single-object encoding (format version 1).
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
/// Header length of the Confluent wire format (magic + schema id).
pub const CONFLUENT_HEADER_LEN: usize = 5;
/// Header length of single-object encoding (magic + fingerprint).
pub const SINGLE_OBJECT_HEADER_LEN: usize = 10;

/// Errors of the Avro encodings.
#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    #[error("Avro encoding of {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: apache_avro::Error,
    },
    #[error("alert data is not serializable as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Why a message is not an Avro message in either framing (the text names the bytes found).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("empty message: no Avro framing")]
    Empty,
    #[error("{len}-byte message is shorter than the {header}-byte {framing} header")]
    Truncated { framing: &'static str, len: usize, header: usize },
    #[error("{}", describe_magic(*.first, *.second))]
    UnknownMagic { first: u8, second: Option<u8> },
}

fn describe_magic(first: u8, second: Option<u8>) -> String {
    let expected = "neither the Confluent wire format (0x00) nor Avro single-object encoding (0xC3 0x01)";
    if first == SINGLE_OBJECT_MAGIC[0] {
        let second = second.map_or("nothing".to_string(), |b| format!("0x{b:02x}"));
        return format!("first bytes 0xc3 then {second}: not the single-object marker 0xC3 0x01 (unknown version?)");
    }
    let shown =
        if first.is_ascii_graphic() || first == b' ' { format!(" ('{}')", first as char) } else { String::new() };
    let hint = match first {
        b'{' | b'[' | b'"' | b' ' | b'\t' | b'\r' | b'\n' => ": JSON on an Avro topic?",
        _ if first.is_ascii_graphic() => ": text on an Avro topic?",
        _ => "",
    };
    format!("first byte 0x{first:02x}{shown}: {expected}{hint}")
}

/// How an Avro message is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AvroFraming {
    /// Confluent wire format with this schema registry id.
    Confluent { schema_id: u32 },
    /// Avro single-object encoding (the schema's fingerprint in the header).
    SingleObject,
}

/// A message split into its framing header and its Avro body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Confluent wire format: the registry id of the writer schema.
    Confluent { schema_id: u32, body: &'a [u8] },
    /// Single-object encoding: the writer schema's CRC-64-AVRO fingerprint (little-endian bytes, as on
    /// the wire).
    SingleObject { fingerprint: [u8; 8], body: &'a [u8] },
}

/// Splits a message into framing and body. Nothing about the body is checked.
pub fn unframe(payload: &[u8]) -> Result<Frame<'_>, FramingError> {
    match payload {
        [] => Err(FramingError::Empty),
        [CONFLUENT_MAGIC, rest @ ..] => match rest.split_first_chunk::<4>() {
            Some((id, body)) => Ok(Frame::Confluent { schema_id: u32::from_be_bytes(*id), body }),
            None => Err(FramingError::Truncated {
                framing: "Confluent wire format",
                len: payload.len(),
                header: CONFLUENT_HEADER_LEN,
            }),
        },
        [0xC3, 0x01, rest @ ..] => match rest.split_first_chunk::<8>() {
            Some((fingerprint, body)) => Ok(Frame::SingleObject { fingerprint: *fingerprint, body }),
            None => Err(FramingError::Truncated {
                framing: "single-object encoding",
                len: payload.len(),
                header: SINGLE_OBJECT_HEADER_LEN,
            }),
        },
        [first, rest @ ..] => Err(FramingError::UnknownMagic { first: *first, second: rest.first().copied() }),
    }
}

/// The CRC-64-AVRO (Rabin) fingerprint of the schema's Parsing Canonical Form, as the 8 little-endian
/// bytes that single-object encoding puts on the wire.
pub fn fingerprint(schema: &Schema) -> [u8; 8] {
    let fp = schema.fingerprint::<Rabin>();
    let mut out = [0u8; 8];
    out.copy_from_slice(&fp.bytes);
    out
}

/// Prepends the framing header to an Avro body written with `writer_schema`.
pub fn frame(framing: AvroFraming, writer_schema: &Schema, body: &[u8]) -> Vec<u8> {
    match framing {
        AvroFraming::Confluent { schema_id } => frame_with(framing, [0; 8], schema_id, body),
        AvroFraming::SingleObject => frame_with(framing, fingerprint(writer_schema), 0, body),
    }
}

fn frame_with(framing: AvroFraming, fp: [u8; 8], schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SINGLE_OBJECT_HEADER_LEN + body.len());
    match framing {
        AvroFraming::Confluent { .. } => {
            out.push(CONFLUENT_MAGIC);
            out.extend_from_slice(&schema_id.to_be_bytes());
        }
        AvroFraming::SingleObject => {
            out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
            out.extend_from_slice(&fp);
        }
    }
    out.extend_from_slice(body);
    out
}

/// `usage_event.avsc`, parsed once.
pub fn usage_event_avro_schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema::parse_str(USAGE_EVENT_AVSC).expect("usage_event.avsc is valid Avro (tested)"))
}

/// `alert.avsc`, parsed once.
pub fn alert_avro_schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema::parse_str(ALERT_AVSC).expect("alert.avsc is valid Avro (tested)"))
}

fn alert_fingerprint() -> [u8; 8] {
    static FP: OnceLock<[u8; 8]> = OnceLock::new();
    *FP.get_or_init(|| fingerprint(alert_avro_schema()))
}

/// Encodes an alert per `alert.avsc` (`data` as JSON text) in the given framing. For the Confluent
/// framing, `schema_id` must be the id under which `alert.avsc` is registered.
pub fn encode_alert(alert: &crate::Alert, framing: AvroFraming) -> Result<Vec<u8>, AvroError> {
    let s = |v: &str| Value::String(v.to_string());
    let record = Value::Record(vec![
        ("specversion".into(), s(&alert.specversion)),
        ("id".into(), s(&alert.id)),
        ("source".into(), s(&alert.source)),
        ("type".into(), s(&alert.kind)),
        ("subject".into(), s(&alert.subject)),
        ("time".into(), s(&alert.time)),
        ("datacontenttype".into(), s(&alert.datacontenttype)),
        ("data".into(), Value::String(serde_json::to_string(&alert.data)?)),
    ]);
    let schema = alert_avro_schema();
    let encode_err = |source| AvroError::Encode { what: "an alert", source };
    let body = GenericDatumWriter::builder(schema).build().map_err(encode_err)?.write_value_to_vec(record);
    let body = body.map_err(encode_err)?;
    Ok(match framing {
        AvroFraming::Confluent { schema_id } => frame_with(framing, [0; 8], schema_id, &body),
        AvroFraming::SingleObject => frame_with(framing, alert_fingerprint(), 0, &body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Alert, AlertType};
    use apache_avro::{GenericSingleObjectWriter, reader::datum::GenericDatumReader};

    fn alert() -> Alert {
        Alert::new(
            "aifinops",
            AlertType::BudgetThreshold,
            "owner/search".into(),
            1_764_460_800_000,
            &["search", "2026-11", "80"],
            serde_json::json!({"owner": "search", "spent_usd": "812.50", "threshold": 80, "tags": ["a", "é"]}),
        )
    }

    fn decode_alert(body: &[u8]) -> Alert {
        let mut rest = body;
        let v = GenericDatumReader::builder(alert_avro_schema()).build().unwrap().read_value(&mut rest).unwrap();
        assert!(rest.is_empty(), "{} bytes left after the record", rest.len());
        let Value::Record(fields) = v else { panic!("not a record: {v:?}") };
        let get = |name: &str| match fields.iter().find(|(n, _)| n == name) {
            Some((_, Value::String(s))) => s.clone(),
            other => panic!("{name}: {other:?}"),
        };
        Alert {
            specversion: get("specversion"),
            id: get("id"),
            source: get("source"),
            kind: get("type"),
            subject: get("subject"),
            time: get("time"),
            datacontenttype: get("datacontenttype"),
            data: serde_json::from_str(&get("data")).unwrap(),
        }
    }

    #[test]
    fn alert_round_trips_in_the_confluent_framing() {
        let a = alert();
        let bytes = encode_alert(&a, AvroFraming::Confluent { schema_id: 0x0102_0304 }).unwrap();
        assert_eq!(&bytes[..5], &[0x00, 0x01, 0x02, 0x03, 0x04]);
        let Frame::Confluent { schema_id, body } = unframe(&bytes).unwrap() else { panic!("not Confluent") };
        assert_eq!(schema_id, 0x0102_0304);
        assert_eq!(decode_alert(body), a);
    }

    #[test]
    fn alert_round_trips_in_single_object_encoding() {
        let a = alert();
        let bytes = encode_alert(&a, AvroFraming::SingleObject).unwrap();
        let Frame::SingleObject { fingerprint: fp, body } = unframe(&bytes).unwrap() else { panic!("not single") };
        assert_eq!(fp, fingerprint(alert_avro_schema()));
        assert_eq!(decode_alert(body), a);

        // Byte for byte what apache-avro's own single-object writer produces.
        let mut theirs = Vec::new();
        let mut w = GenericSingleObjectWriter::new_with_capacity(alert_avro_schema(), 1024).unwrap();
        let mut rest = body;
        let value = GenericDatumReader::builder(alert_avro_schema()).build().unwrap().read_value(&mut rest).unwrap();
        w.write_value(value, &mut theirs).unwrap();
        assert_eq!(bytes, theirs);
    }

    #[test]
    fn fingerprint_is_crc64_avro_of_the_canonical_form() {
        // Test vectors of the Avro specification's schema fingerprint tests (as signed 64-bit integers).
        for (schema, expected) in [
            (r#""null""#, 7_195_948_357_588_979_594i64),
            (r#""boolean""#, -6_970_731_678_124_411_036),
            (r#"{"name":"foo","type":"fixed","size":15}"#, 1_756_455_273_707_447_556),
        ] {
            let fp = fingerprint(&Schema::parse_str(schema).unwrap());
            assert_eq!(i64::from_le_bytes(fp), expected, "{schema}");
        }
        // And what apache-avro puts in its single-object header, for both shipped schemas.
        for schema in [alert_avro_schema(), usage_event_avro_schema()] {
            let header = apache_avro::headers::RabinFingerprintHeader::from_schema(schema);
            let header = apache_avro::headers::HeaderBuilder::build_header(&header);
            assert_eq!(header, frame(AvroFraming::SingleObject, schema, &[]));
        }
    }

    #[test]
    fn unframe_explains_what_it_found() {
        assert_eq!(unframe(b""), Err(FramingError::Empty));
        assert!(matches!(unframe(&[0, 0, 1]), Err(FramingError::Truncated { len: 3, header: 5, .. })));
        assert!(matches!(unframe(&[0xC3, 0x01, 1]), Err(FramingError::Truncated { len: 3, header: 10, .. })));
        let e = unframe(br#"{"event_id":"x"}"#).unwrap_err().to_string();
        assert!(e.contains("first byte 0x7b ('{')") && e.contains("JSON on an Avro topic?"), "{e}");
        let e = unframe(&[0xC3, 0x02]).unwrap_err().to_string();
        assert!(e.contains("0xc3 then 0x02"), "{e}");
        let e = unframe(&[0x07]).unwrap_err().to_string();
        assert!(e.starts_with("first byte 0x07: neither"), "{e}");
        assert_eq!(unframe(&[0, 0, 0, 0, 7]), Ok(Frame::Confluent { schema_id: 7, body: &[] }));
    }

    #[test]
    fn shipped_schemas_parse() {
        assert!(matches!(usage_event_avro_schema(), Schema::Record(_)));
        assert!(matches!(alert_avro_schema(), Schema::Record(_)));
    }
}
