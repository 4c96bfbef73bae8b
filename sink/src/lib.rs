//! aifinops sinks: the Parquet lake with its atomic commit manifest and state snapshots, the alert topic,
//! and dead letters (in the lake always, on a Kafka topic in `run`).

pub mod fault;
pub mod lake;
pub mod ledger;
pub mod parquet_io;
pub mod publish;

pub use lake::{Commit, CommitInfo, Lake, Manifest, Orphan, Outbox, OutboxLog, Recovered, RulesHook, StateSnapshot};
pub use ledger::Ledger;
pub use publish::Publisher;

/// Everything that can go wrong while writing, naming the file or topic.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parquet error writing {path}: {source}")]
    Parquet {
        path: String,
        #[source]
        source: datafusion::parquet::errors::ParquetError,
    },
    #[error("arrow error while {context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: datafusion::arrow::error::ArrowError,
    },
    #[error("manifest {path}: {reason}")]
    Manifest { path: String, reason: String },
    #[error(
        "fenced: {topic}/{partition} is now owned by {owner}, not by this writer ({writer}); this commit is \
         discarded and its input re-read by the owner"
    )]
    Fenced { topic: String, partition: i32, owner: String, writer: String },
    #[error("{events} event ids of this commit were counted by another writer meanwhile; rolling back to re-read")]
    DedupConflict { events: usize },
    #[error("kafka: {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SinkError {
    let context = context.into();
    move |source| SinkError::Io { context, source }
}
