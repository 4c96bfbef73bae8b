//! aifinops aggregate: event-time windows over priced event batches (DataFusion SQL, partial per batch and
//! merge of partials), deduplication, and the alert rules (budgets, unattributed spend, unpriced models).
//!
//! Detectors that need closed windows (spikes, retry storms, forecasts) implement [`Detector`] and are
//! fed every emitted window; the rules of this release work on each micro-batch's partial rows so that a
//! budget breach is reported within a commit interval, not when a day-long window closes.

pub mod dedup;
pub mod drift;
pub mod forecast;
pub mod retry;
pub mod rules;
pub mod watermark;
pub mod window;

#[cfg(test)]
mod testutil;

pub use dedup::Deduplicator;
pub use drift::DriftDetector;
pub use retry::RetryStormDetector;
pub use rules::{Action, AlertRules, BudgetConfig, Period, RulesState};
pub use window::{Emitted, WindowEngine, WindowSize};

/// A detector over closed windows. Implementations keep their own state in the commit snapshot.
pub trait Detector: Send {
    /// Called with every batch of rows emitted for a closed window; returns alerts to publish.
    fn on_closed(&mut self, emitted: &Emitted, now_ms: i64) -> Vec<aifinops_schemas::Alert>;
}

/// Errors of aggregation, naming the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("state: {0}")]
    State(String),
    #[error("datafusion error while {context}: {source}")]
    DataFusion {
        context: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("arrow error while {context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: datafusion::arrow::error::ArrowError,
    },
}
