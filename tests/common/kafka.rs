//! Kafka helpers for the end-to-end tests (the broker is the real test broker from scripts/test).

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

pub fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let new: Vec<NewTopic> = topics.iter().map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1))).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let res = rt
        .block_on(admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))))
        .unwrap();
    for r in res {
        if let Err((t, e)) = r {
            panic!("creating topic {t}: {e}");
        }
    }
}

/// Produces raw payloads (key `k<i % 7>`) and waits for every acknowledgement.
pub fn produce_bytes(brokers: &str, topic: &str, payloads: &[Vec<u8>]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "20000000")
        .create()
        .unwrap();
    for (i, l) in payloads.iter().enumerate() {
        let key = format!("k{}", i % 7);
        p.send(BaseRecord::to(topic).key(&key).payload(l)).unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

/// Every payload of `topic` from the beginning, read until `expect_at_least` arrived and 2 s passed quietly.
pub fn read_payloads(brokers: &str, topic: &str, expect_at_least: usize, within: Duration) -> Vec<Vec<u8>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", super::unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let (deadline, mut quiet) = (Instant::now() + within, Instant::now());
    let mut out = Vec::new();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(m.payload().unwrap_or_default().to_vec());
                quiet = Instant::now();
            }
            _ if out.len() >= expect_at_least && quiet.elapsed() > Duration::from_secs(2) => break,
            _ => {}
        }
    }
    out
}

/// Produces payloads into one partition of `topic`.
pub fn produce_to(brokers: &str, topic: &str, partition: i32, payloads: &[String]) {
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    for l in payloads {
        p.send(BaseRecord::<(), _>::to(topic).partition(partition).payload(l))
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}
