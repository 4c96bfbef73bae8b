//! Dead letters: records that could not be read, with where they came from and why.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Where a record came from: a Kafka message or a line of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRef {
    Kafka { topic: String, partition: i32, offset: i64 },
    File { path: String, line: u64 },
}

impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceRef::Kafka { topic, partition, offset } => write!(f, "{topic}/{partition}@{offset}"),
            SourceRef::File { path, line } => write!(f, "{path}:{line}"),
        }
    }
}

/// A record that did not become a usage event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// `topic/partition@offset` or `file:line`.
    pub source: String,
    /// What was wrong, naming the field.
    pub reason: String,
    /// Short machine-readable reason class for metrics (`not_json`, `missing_field`, ...).
    pub kind: &'static str,
    /// The raw bytes, possibly truncated/redacted by the sink's policy.
    pub raw: Vec<u8>,
    /// When aifinops received it, UTC milliseconds.
    pub received_at_ms: i64,
}

/// The Arrow schema of `<lake>/dead_letters/`.
pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Binary, false),
        Field::new("received_at", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
    ]))
}
