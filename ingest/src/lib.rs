//! aifinops ingest: reads usage records from Kafka or NDJSON files, decodes and validates them, prices
//! every token class exactly and attributes each call to an owner, producing priced Arrow batches
//! (`aifinops_schemas::event::priced_event_schema`) and dead letters.

pub mod avro;
pub mod catalog;
pub mod decode;
mod fastjson;
pub mod file;
pub mod formats;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod owners;

pub use catalog::PriceCatalog;
pub use decode::{Decoded, Decoder, RawPolicy};
pub use formats::Format;
pub use owners::OwnerMap;

/// Everything that can go wrong while ingesting, with the input it concerns.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("price catalog {file}: {reason}")]
    Catalog { file: String, reason: String },
    #[error("owner map {file}: {reason}")]
    OwnerMap { file: String, reason: String },
    #[error(
        "the lake has consumed {topic}/{partition} up to offset {committed}, but the partition ends at {end}: \
         was the topic recreated, or does this lake belong to another cluster? Use a new lake directory"
    )]
    Position { topic: String, partition: i32, committed: i64, end: i64 },
    #[cfg(feature = "kafka")]
    #[error("claiming {partitions} in the lake's ledger: {reason}")]
    Claim { partitions: String, reason: String },
    #[error(
        "cannot connect to the Kafka brokers {brokers}: TLS/SASL failure: {reason}; check the security.protocol, \
         ssl.* and sasl.* properties of [kafka.consumer] (and the broker's listener)"
    )]
    KafkaSecurity { brokers: String, reason: String },
    #[cfg(feature = "kafka")]
    #[error("kafka: {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}
