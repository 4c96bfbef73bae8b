//! Kafka as a source: a consumer-group member whose start positions come from the lake's last commit.
//!
//! The consumed offsets live in the sink's commit, never only in the consumer group: on every
//! assignment the partitions are assigned at the offsets of the last lake commit (earliest for a
//! partition the lake has never seen), messages below the expected offset are skipped, and every
//! rebalance bumps a generation so the pipeline rolls its uncommitted state back to that commit.
//! Group offsets are committed after each lake commit, for lag monitoring only.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aifinops_schemas::SourceRef;
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::IngestError;
use crate::decode::Decoder;
use crate::formats::Format;

/// A topic partition.
pub type Tp = (String, i32);

/// Connection and group settings of the consumer.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group: String,
    pub topics: Vec<String>,
    /// The format of each topic's records (topics not listed: `auto`).
    pub formats: HashMap<String, Format>,
    pub session_timeout_ms: u32,
    pub max_poll_interval_ms: u32,
    /// Extra librdkafka properties (e.g. security settings, `queued.max.messages.kbytes`).
    pub properties: BTreeMap<String, String>,
    /// Events dated further than this ahead of the wall clock are counted in [`Poll::future_events`].
    pub max_future_skew_ms: i64,
}

#[derive(Default)]
struct Shared {
    /// Where each partition starts when (re)assigned: the offsets of the last lake commit.
    start_offsets: Mutex<HashMap<Tp, i64>>,
    /// Partitions currently assigned.
    assigned: Mutex<Vec<Tp>>,
    /// Bumped on every assignment change.
    generation: AtomicU64,
}

/// Rebalance handling: assigns partitions at the lake's committed offsets.
pub struct SourceContext {
    shared: Arc<Shared>,
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility = fac, "{log_message}")
            }
            _ => tracing::debug!(target: "librdkafka", facility = fac, "{log_message}"),
        }
    }
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, "{reason}");
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let starts = self.shared.start_offsets.lock().expect("lock");
                let mut assigned = Vec::new();
                for e in tpl.elements() {
                    assigned.push((e.topic().to_string(), e.partition()));
                }
                for (t, p) in &assigned {
                    let off = match starts.get(&(t.clone(), *p)) {
                        Some(o) => Offset::Offset(*o),
                        None => Offset::Beginning,
                    };
                    if let Err(e) = tpl.set_partition_offset(t, *p, off) {
                        tracing::error!(topic = %t, partition = p, error = %e, "cannot set start offset");
                    }
                }
                drop(starts);
                let result = match consumer.rebalance_protocol() {
                    rdkafka::consumer::RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
                    _ => consumer.assign(tpl),
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "partition assignment failed");
                }
                tracing::info!(partitions = ?assigned, "partitions assigned at the lake's committed offsets");
                let mut cur = self.shared.assigned.lock().expect("lock");
                for tp in assigned {
                    if !cur.contains(&tp) {
                        cur.push(tp);
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked: Vec<Tp> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                let result = match consumer.rebalance_protocol() {
                    rdkafka::consumer::RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
                    _ => consumer.unassign(),
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "partition revocation failed");
                }
                tracing::info!(partitions = ?revoked, "partitions revoked");
                self.shared.assigned.lock().expect("lock").retain(|tp| !revoked.contains(tp));
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
                self.shared.assigned.lock().expect("lock").clear();
            }
        }
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// Per-partition progress: next offset and event-time clock.
#[derive(Debug, Clone, Copy)]
pub struct PartitionProgress {
    /// The next offset to consume (everything below is in the batch or committed).
    pub next_offset: i64,
    /// Largest event time accepted from this partition, if any.
    pub max_ts_ms: Option<i64>,
    /// When the partition last delivered a message (or was assigned).
    pub last_active: Instant,
}

/// What one poll did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Poll {
    pub records: u64,
    pub bytes: u64,
    /// The assignment changed: uncommitted state must be rolled back to the last commit before going on.
    pub rebalanced: bool,
    /// Messages skipped because they were below the expected offset (redelivery after a seek).
    pub skipped: u64,
    /// Events dated beyond wall clock + `max_future_skew` (a producer with a bad clock): counted in their
    /// windows, but their partition's clock is capped for the watermark.
    pub future_events: u64,
}

/// The consumer plus the progress the pipeline needs for its commit and watermark.
pub struct KafkaSource {
    consumer: StreamConsumer<SourceContext>,
    shared: Arc<Shared>,
    seen_generation: u64,
    /// topic -> partition -> progress; nested so the per-message lookup borrows the topic name.
    progress: HashMap<String, HashMap<i32, PartitionProgress>>,
    /// A message received right after a rebalance, processed on the next poll (after the rollback).
    pending: Option<rdkafka::message::OwnedMessage>,
    topic_names: Vec<String>,
    formats: HashMap<String, Format>,
    max_future_skew_ms: i64,
}

impl KafkaSource {
    /// Creates the consumer and subscribes. `committed` are the lake's committed next offsets.
    pub fn connect(settings: &KafkaSettings, committed: HashMap<Tp, i64>) -> Result<Self, IngestError> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", settings.session_timeout_ms.to_string())
            .set("queued.max.messages.kbytes", "65536")
            .set("fetch.max.bytes", "52428800");
        for (k, v) in &settings.properties {
            cfg.set(k, v);
        }
        let shared = Arc::new(Shared::default());
        *shared.start_offsets.lock().expect("lock") = committed;
        let consumer: StreamConsumer<SourceContext> =
            cfg.create_with_context(SourceContext { shared: shared.clone() }).map_err(|e| IngestError::Kafka {
                context: format!("creating consumer for {}", settings.brokers),
                source: e,
            })?;
        let topics: Vec<&str> = settings.topics.iter().map(|s| s.as_str()).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| IngestError::Kafka { context: format!("subscribing to {topics:?}"), source: e })?;
        Ok(KafkaSource {
            consumer,
            shared,
            seen_generation: 0,
            progress: HashMap::new(),
            pending: None,
            topic_names: settings.topics.clone(),
            formats: settings.formats.clone(),
            max_future_skew_ms: settings.max_future_skew_ms,
        })
    }

    /// Records the offsets of a new lake commit: future (re)assignments start there, and the group's
    /// offsets follow them (for lag monitoring only).
    pub fn committed(&mut self, offsets: &HashMap<Tp, i64>) {
        self.shared.start_offsets.lock().expect("lock").extend(offsets.iter().map(|(k, v)| (k.clone(), *v)));
        let mut tpl = TopicPartitionList::new();
        let assigned = self.assigned();
        for ((t, p), o) in offsets {
            if assigned.contains(&(t.clone(), *p)) {
                let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::warn!(error = %e, "group offset commit (lag monitoring only) failed");
        }
    }

    /// Forgets uncommitted progress after a rollback: positions restart at the committed offsets.
    pub fn reset_progress(&mut self) {
        let starts = self.shared.start_offsets.lock().expect("lock").clone();
        let assigned = self.assigned();
        let now = Instant::now();
        self.progress = HashMap::new();
        for tp in assigned {
            let next = starts.get(&tp).copied().unwrap_or(-1);
            let e = self.progress.entry(tp.0).or_default().entry(tp.1).or_insert(PartitionProgress {
                next_offset: next,
                max_ts_ms: None,
                last_active: now,
            });
            e.next_offset = next;
            // the discarded records' event times must not move the watermark ahead of the re-read
            e.max_ts_ms = None;
        }
    }

    /// Fails when the lake's committed offset of an assigned partition lies beyond the partition's end:
    /// the topic was recreated or the lake belongs to another cluster, and resuming would silently skip.
    pub fn check_positions(&self, timeout: Duration) -> Result<(), IngestError> {
        let starts = self.shared.start_offsets.lock().expect("lock").clone();
        for (t, p) in self.assigned() {
            let Some(start) = starts.get(&(t.clone(), p)) else { continue };
            let (_, high) = self
                .consumer
                .fetch_watermarks(&t, p, timeout)
                .map_err(|e| IngestError::Kafka { context: format!("watermarks of {t}/{p}"), source: e })?;
            if *start > high {
                return Err(IngestError::Position { topic: t, partition: p, committed: *start, end: high });
            }
        }
        Ok(())
    }

    /// Partitions currently assigned to this member.
    pub fn assigned(&self) -> Vec<Tp> {
        self.shared.assigned.lock().expect("lock").clone()
    }

    /// Progress of the assigned partitions.
    pub fn progress(&self) -> impl Iterator<Item = &PartitionProgress> {
        self.progress.values().flat_map(|parts| parts.values())
    }

    /// Next offsets of all partitions consumed in this assignment (for the lake commit). Partitions
    /// that started from "beginning" and delivered nothing are absent.
    pub fn next_offsets(&self) -> HashMap<Tp, i64> {
        self.progress
            .iter()
            .flat_map(|(t, parts)| parts.iter().map(move |(p, pp)| ((t.clone(), *p), pp.next_offset)))
            .filter(|(_, next)| *next >= 0)
            .collect()
    }

    /// Receives up to `max_records` messages or until `max_wait` passes, decoding into `decoder`.
    pub async fn poll_into(
        &mut self,
        decoder: &mut Decoder,
        max_records: usize,
        max_wait: Duration,
        now_ms: impl Fn() -> i64,
    ) -> Result<Poll, IngestError> {
        let mut poll = Poll::default();
        let deadline = tokio::time::Instant::now() + max_wait;
        if let Some(m) = self.pending.take() {
            let ctx = (&self.formats, self.max_future_skew_ms, now_ms());
            accept(&mut self.progress, &self.shared, ctx, &m, decoder, &mut poll);
        }
        while (poll.records as usize) < max_records {
            let msg = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kafka receive error");
                    if generation_changed(&self.shared, &mut self.seen_generation) {
                        poll.rebalanced = true;
                        return Ok(poll);
                    }
                    continue;
                }
                Ok(Ok(m)) => m,
            };
            if generation_changed(&self.shared, &mut self.seen_generation) {
                // received after a rebalance: kept (copied, rare) until the rollback is done
                self.pending = Some(msg.detach());
                poll.rebalanced = true;
                return Ok(poll);
            }
            // the borrowed message is decoded in place: no copy of the payload or the topic name
            let ctx = (&self.formats, self.max_future_skew_ms, now_ms());
            accept(&mut self.progress, &self.shared, ctx, &msg, decoder, &mut poll);
        }
        if generation_changed(&self.shared, &mut self.seen_generation) {
            poll.rebalanced = true;
        }
        Ok(poll)
    }

    /// True when every partition of the subscribed topics has been consumed up to its high watermark.
    pub fn caught_up(&self, timeout: Duration) -> Result<bool, IngestError> {
        let md = self
            .consumer
            .fetch_metadata(None, timeout)
            .map_err(|e| IngestError::Kafka { context: "fetching metadata".into(), source: e })?;
        for t in md.topics().iter().filter(|t| self.topic_names.iter().any(|n| n == t.name())) {
            for p in t.partitions() {
                let (low, high) = self.consumer.fetch_watermarks(t.name(), p.id(), timeout).map_err(|e| {
                    IngestError::Kafka { context: format!("watermarks of {}/{}", t.name(), p.id()), source: e }
                })?;
                if high <= low {
                    continue;
                }
                let next = self
                    .progress
                    .get(t.name())
                    .and_then(|parts| parts.get(&p.id()))
                    .map(|p| p.next_offset)
                    .or_else(|| {
                        self.shared.start_offsets.lock().expect("lock").get(&(t.name().to_string(), p.id())).copied()
                    })
                    .unwrap_or(-1);
                if next < high {
                    tracing::debug!(topic = t.name(), partition = p.id(), next, high, "not caught up");
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// True once per assignment change since the last call.
fn generation_changed(shared: &Shared, seen: &mut u64) -> bool {
    let g = shared.generation.load(Ordering::SeqCst);
    let changed = g != *seen;
    *seen = g;
    changed
}

/// Takes one message: skips it below the partition's expected offset, else decodes it into `decoder`
/// and advances the partition's offset and event-time clock.
/// Decodes one message; `(formats, max future skew, now)` is the context of the poll.
fn accept<M: Message>(
    progress: &mut HashMap<String, HashMap<i32, PartitionProgress>>,
    shared: &Shared,
    (formats, max_future_skew_ms, now_ms): (&HashMap<String, Format>, i64, i64),
    m: &M,
    decoder: &mut Decoder,
    poll: &mut Poll,
) {
    let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
    let parts = match progress.get_mut(topic) {
        Some(parts) => parts,
        None => progress.entry(topic.to_string()).or_default(),
    };
    let p = parts.entry(partition).or_insert_with(|| PartitionProgress {
        next_offset: shared
            .start_offsets
            .lock()
            .expect("lock")
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(-1),
        max_ts_ms: None,
        last_active: Instant::now(),
    });
    if offset < p.next_offset {
        poll.skipped += 1;
        return;
    }
    if p.next_offset >= 0 && offset > p.next_offset {
        tracing::warn!(
            topic,
            partition,
            expected = p.next_offset,
            got = offset,
            "offset gap (compaction or control records)"
        );
    }
    p.next_offset = offset + 1;
    p.last_active = Instant::now();
    let payload = m.payload().unwrap_or(&[]);
    poll.records += 1;
    poll.bytes += payload.len() as u64;
    let format = if formats.is_empty() { Format::Auto } else { formats.get(topic).copied().unwrap_or_default() };
    if let Some(ts) =
        decoder.push(payload, format, || SourceRef::Kafka { topic: topic.to_string(), partition, offset }, now_ms)
    {
        p.max_ts_ms = Some(p.max_ts_ms.map_or(ts, |x| x.max(ts)));
        if ts > now_ms.saturating_add(max_future_skew_ms) {
            poll.future_events += 1;
        }
    }
}
