//! Alerts: CloudEvents 1.0 JSON, published to the alert topic (key = owner) and written to `<lake>/alerts/`.
//!
//! `id` is deterministic (rule + scope + period + threshold), so a restart never publishes a second,
//! different alert for the same breach and consumers can dedupe on `source` + `id`.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The alert types this version emits (catalog: docs/alerts.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertType {
    BudgetThreshold,
    SpendUnattributed,
    ModelUnpriced,
    CostDrift,
    RetryStorm,
    PolicyBlock,
    SpendSpike,
    SpendRecovered,
    BudgetProjected,
}

impl AlertType {
    /// The control references an alert of this type supports (carried as `data.controls`).
    pub fn controls(self) -> &'static [&'static str] {
        match self {
            AlertType::BudgetThreshold | AlertType::PolicyBlock => &["NIST CSF 2.0 GV.PO-01"],
            AlertType::SpendUnattributed => &["OWASP Non-Human Identities Top 10", "NIST CSF 2.0 GV.PO-01"],
            AlertType::ModelUnpriced | AlertType::CostDrift => &["NIST AI RMF MEASURE"],
            AlertType::RetryStorm => &["NIST AI RMF MANAGE"],
            AlertType::SpendSpike | AlertType::SpendRecovered => &["NIST AI RMF MEASURE 2.7", "NIST AI RMF MANAGE 4.1"],
            AlertType::BudgetProjected => &["NIST CSF 2.0 GV.PO-01", "NIST AI RMF MANAGE"],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AlertType::BudgetThreshold => "aifinops.budget.threshold",
            AlertType::SpendUnattributed => "aifinops.spend.unattributed",
            AlertType::ModelUnpriced => "aifinops.model.unpriced",
            AlertType::CostDrift => "aifinops.cost.drift",
            AlertType::RetryStorm => "aifinops.retry.storm",
            AlertType::PolicyBlock => "aifinops.policy.block",
            AlertType::SpendSpike => "aifinops.spend.spike",
            AlertType::SpendRecovered => "aifinops.spend.recovered",
            AlertType::BudgetProjected => "aifinops.budget.projected",
        }
    }
}

/// A CloudEvents 1.0 structured-mode event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub subject: String,
    /// RFC 3339 UTC.
    pub time: String,
    pub datacontenttype: String,
    pub data: serde_json::Value,
}

impl Alert {
    /// Builds an alert whose id is derived from `id_parts` (rule, scope, period, threshold ...).
    pub fn new(
        source: &str,
        kind: AlertType,
        subject: String,
        time_ms: i64,
        id_parts: &[&str],
        data: serde_json::Value,
    ) -> Self {
        let mut parts = vec![kind.as_str()];
        parts.extend_from_slice(id_parts);
        let mut data = data;
        if let Some(obj) = data.as_object_mut() {
            obj.entry("controls").or_insert_with(|| serde_json::json!(kind.controls()));
        }
        Alert {
            specversion: "1.0".into(),
            id: deterministic_id(&parts),
            source: source.to_string(),
            kind: kind.as_str().to_string(),
            subject,
            time: rfc3339_ms(time_ms),
            datacontenttype: "application/json".into(),
            data,
        }
    }

    /// The owner the alert is about (`data.owner`), the Kafka key.
    pub fn owner(&self) -> &str {
        self.data.get("owner").and_then(|v| v.as_str()).unwrap_or("")
    }
}

/// A UUID-shaped id from the SHA-256 of the parts (separated by U+001F).
pub fn deterministic_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0x1f]);
        }
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// RFC 3339 with milliseconds, UTC (`2026-11-30T12:00:00.000Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The Arrow schema of `<lake>/alerts/`.
pub fn alert_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("time", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        Field::new("owner", DataType::Utf8, false),
        Field::new("subject", DataType::Utf8, false),
        Field::new("data", DataType::Utf8, false),
        Field::new("event", DataType::Utf8, false),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = deterministic_id(&["budget", "search", "2026-11", "80"]);
        assert_eq!(a, deterministic_id(&["budget", "search", "2026-11", "80"]));
        assert_ne!(a, deterministic_id(&["budget", "search", "2026-11", "100"]));
        // the separator keeps ("ab","c") apart from ("a","bc")
        assert_ne!(deterministic_id(&["ab", "c"]), deterministic_id(&["a", "bc"]));
        assert_eq!(a.len(), 36);
    }

    #[test]
    fn alert_is_a_cloudevent() {
        let a = Alert::new(
            "aifinops",
            AlertType::ModelUnpriced,
            "model/gpt-9".into(),
            0,
            &["gpt-9", "1970-01-01"],
            serde_json::json!({"owner": "search"}),
        );
        let v: serde_json::Value = serde_json::to_value(&a).unwrap();
        for k in ["specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["type"], "aifinops.model.unpriced");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(a.owner(), "search");
        assert_eq!(v["data"]["controls"], serde_json::json!(["NIST AI RMF MEASURE"]), "governance context");
    }
}
