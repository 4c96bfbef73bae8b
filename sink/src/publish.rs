//! Publishing a commit's outbox: alerts (CloudEvents JSON, key = owner) to the alert topic and dead letters
//! (raw bytes, reason in headers) to the dead-letter topic, with the idempotent producer.
//! Alerts carry deterministic ids and are re-sent with identical payloads after a crash, so consumers
//! that dedupe on `source` + `id` see each alert once.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::SinkError;
use crate::lake::Outbox;

/// The Kafka side of the sink.
pub struct Publisher {
    producer: FutureProducer,
    alert_topic: String,
    dead_letter_topic: Option<String>,
    /// Alerts as Avro (`schemas/alert.avsc`) instead of CloudEvents JSON.
    avro_alerts: Option<aifinops_schemas::avro::AvroFraming>,
}

impl Publisher {
    pub fn new(
        brokers: &str,
        alert_topic: &str,
        dead_letter_topic: Option<&str>,
        properties: &BTreeMap<String, String>,
    ) -> Result<Self, SinkError> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "15000")
            .set("linger.ms", "5")
            // after a broker outage, reconnect within 2 s of its return (librdkafka's default backs off to 10 s)
            .set("reconnect.backoff.max.ms", "2000");
        for (k, v) in properties {
            cfg.set(k, v);
        }
        let producer: FutureProducer = cfg
            .create()
            .map_err(|e| SinkError::Kafka { context: format!("creating producer for {brokers}"), source: e })?;
        Ok(Publisher {
            producer,
            alert_topic: alert_topic.to_string(),
            dead_letter_topic: dead_letter_topic.map(str::to_string),
            avro_alerts: None,
        })
    }

    /// Publishes alerts Avro-encoded (`schemas/alert.avsc`) with the given framing.
    pub fn with_avro_alerts(mut self, framing: aifinops_schemas::avro::AvroFraming) -> Self {
        self.avro_alerts = Some(framing);
        self
    }

    pub fn alert_topic(&self) -> &str {
        &self.alert_topic
    }

    /// Sends every alert and dead letter of an outbox and waits for all acknowledgements.
    pub async fn publish(&self, outbox: &Outbox) -> Result<(), SinkError> {
        let mut pending = Vec::new();
        for a in &outbox.alerts {
            let (payload, content_type) = match self.avro_alerts {
                None => (serde_json::to_vec(a).expect("alert json"), "application/cloudevents+json"),
                Some(f) => (
                    aifinops_schemas::avro::encode_alert(a, f)
                        .map_err(|e| SinkError::Manifest { path: format!("alert {}", a.id), reason: e.to_string() })?,
                    "avro/binary",
                ),
            };
            let headers = OwnedHeaders::new()
                .insert(Header { key: "ce_id", value: Some(a.id.as_str()) })
                .insert(Header { key: "ce_type", value: Some(a.kind.as_str()) })
                .insert(Header { key: "content-type", value: Some(content_type) });
            let key = a.owner().to_string();
            let topic = self.alert_topic.clone();
            let producer = self.producer.clone();
            pending.push(tokio::spawn(async move {
                let rec = FutureRecord::to(&topic).key(&key).payload(&payload).headers(headers);
                producer
                    .send(rec, Duration::from_secs(30))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| SinkError::Kafka { context: format!("publishing alert to {topic}"), source: e })
            }));
        }
        if let Some(topic) = &self.dead_letter_topic {
            for d in &outbox.dead_letters {
                let raw = d.raw();
                let headers = OwnedHeaders::new()
                    .insert(Header { key: "aifinops_source", value: Some(d.source.as_str()) })
                    .insert(Header { key: "aifinops_reason", value: Some(d.reason.as_str()) })
                    .insert(Header { key: "aifinops_kind", value: Some(d.kind.as_str()) });
                let topic = topic.clone();
                let producer = self.producer.clone();
                let key = d.source.clone();
                pending.push(tokio::spawn(async move {
                    let rec = FutureRecord::to(&topic).key(&key).payload(&raw).headers(headers);
                    producer.send(rec, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| SinkError::Kafka {
                        context: format!("publishing dead letter to {topic}"),
                        source: e,
                    })
                }));
            }
        }
        let mut first_err = None;
        for p in pending {
            match p.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(join) => {
                    first_err.get_or_insert(SinkError::Manifest { path: "publish".into(), reason: join.to_string() });
                }
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}
