//! aifinops aggregate: event-time windows over priced event batches (a DataFusion GROUP BY per batch and
//! merge of partials), deduplication, and the alert rules (budgets, unattributed spend, unpriced models).
//!
//! Detectors that need closed windows (spikes, retry storms, forecasts) implement [`Detector`] and are
//! fed every emitted window; the rules of this release work on each micro-batch's partial rows so that a
//! budget breach is reported within a commit interval, not when a day-long window closes.

pub mod dedup;
mod dims;
pub mod drift;
pub mod forecast;
mod keyhash;
pub mod retry;
pub mod rules;
pub mod spike;
mod sums;
pub mod watermark;
pub mod window;
mod zeros;

#[cfg(test)]
mod testutil;

use datafusion::arrow::array::RecordBatch;

pub use dedup::Deduplicator;
pub use dims::DIMS_PART;
pub use drift::DriftDetector;
pub use retry::RetryStormDetector;
pub use rules::{Action, AlertRules, BudgetConfig, Period, RulesState};
pub use spike::{SpikeConfig, SpikeDetector};
pub use window::{Emitted, OVERFLOW, WindowEngine, WindowSize};

/// A detector over closed windows. Implementations keep their own state in the commit snapshot
/// ([`Detector::state`]) and may rebuild longer history from the lake's rollups on start ([`Detector::warm`]).
pub trait Detector: Send {
    /// A stable name: the key of its state in the commit snapshot.
    fn name(&self) -> &'static str;
    /// Called with every batch of rows emitted for a closed window; returns alerts to publish.
    fn on_closed(&mut self, emitted: &Emitted, now_ms: i64) -> Vec<aifinops_schemas::Alert>;
    /// Called once per commit after the closed windows, with the watermark every closed window ends at or
    /// before (`None` on a final flush, when every window was closed).
    fn on_watermark(&mut self, _closed_through_ms: Option<i64>, _now_ms: i64) -> Vec<aifinops_schemas::Alert> {
        Vec::new()
    }
    /// State to carry in the commit snapshot (JSON; `null` = none).
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Restores the state of the last commit (`null` when there is none).
    fn restore(&mut self, _state: &serde_json::Value) -> Result<(), AggregateError> {
        Ok(())
    }
    /// The rollups this detector wants on start, after `restore`: window size and `[from, to)` of
    /// `window_start`, epoch ms.
    fn history(&self) -> Option<(WindowSize, i64, i64)> {
        None
    }
    /// Rows of the `history` range (columns `window_start`, `owner`, `identity`, `cost_usd`, summed per key).
    fn warm(&mut self, _rows: &RecordBatch) -> Result<(), AggregateError> {
        Ok(())
    }
}

/// Errors of aggregation, naming the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("state: {0}")]
    State(String),
    #[error("dedup spill file: {context}: {source}")]
    Spill {
        context: String,
        #[source]
        source: std::io::Error,
    },
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
