//! The shared vocabulary of aifinops.
//!
//! Every crate speaks these types: the priced usage event batch that `ingest` produces, the rollup rows
//! that `aggregate` emits, the alerts (CloudEvents 1.0) and the dead letters that `sink` writes. Money is
//! Arrow `Decimal128(38, 18)` everywhere: an `i128` count of 10^-18 USD, never a float.

pub mod alert;
pub mod avro;
pub mod dead_letter;
pub mod event;
pub mod money;
pub mod rollup;
pub mod secret;

pub use alert::{Alert, AlertType};
pub use dead_letter::{DeadLetter, SourceRef};

/// Errors of the shared vocabulary (schema conversions and decimal parsing).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("invalid decimal {value:?} for {what}: {reason}")]
    Decimal { what: String, value: String, reason: String },
    #[error("arrow error while {context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow_schema::ArrowError,
    },
    #[error("alert JSON error: {0}")]
    Json(#[from] serde_json::Error),
}
