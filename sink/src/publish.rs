//! Publishing a commit's outbox: alerts (CloudEvents JSON, key = owner) to the alert topic and dead letters
//! (raw bytes, reason in headers) to the dead-letter topic, with the idempotent producer.
//! Alerts carry deterministic ids and are re-sent with identical payloads after a crash, so consumers
//! that dedupe on `source` + `id` see each alert once.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

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
    /// Enqueues one record, waiting while the producer's queue is full. Records are enqueued in order, so
    /// with the idempotent producer they land in order on their partition (a spike before its recovery).
    async fn enqueue(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
        what: &str,
    ) -> Result<DeliveryFuture, SinkError> {
        let mut rec = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
        loop {
            match self.producer.send_result(rec) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err((e, _)) => {
                    return Err(SinkError::Kafka { context: format!("publishing {what} to {topic}"), source: e });
                }
            }
        }
    }

    /// Publishes an outbox: its alerts in order, then its dead letters; succeeds when every one is acked.
    pub async fn publish(&self, outbox: &Outbox) -> Result<(), SinkError> {
        let mut pending: Vec<(DeliveryFuture, String)> = Vec::new();
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
            let what = format!("alert to {}", self.alert_topic);
            pending.push((self.enqueue(&self.alert_topic, a.owner(), &payload, headers, "alert").await?, what));
        }
        if let Some(topic) = &self.dead_letter_topic {
            for d in &outbox.dead_letters {
                let headers = OwnedHeaders::new()
                    .insert(Header { key: "aifinops_source", value: Some(d.source.as_str()) })
                    .insert(Header { key: "aifinops_reason", value: Some(d.reason.as_str()) })
                    .insert(Header { key: "aifinops_kind", value: Some(d.kind.as_str()) });
                let f = self.enqueue(topic, &d.source, &d.raw(), headers, "dead letter").await?;
                pending.push((f, format!("dead letter to {topic}")));
            }
        }
        let mut first_err = None;
        for (f, what) in pending {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    first_err.get_or_insert(SinkError::Kafka { context: format!("publishing {what}"), source: e });
                }
                Err(_) => {
                    first_err.get_or_insert(SinkError::Manifest {
                        path: "publish".into(),
                        reason: format!("the producer dropped the delivery of {what}"),
                    });
                }
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}
