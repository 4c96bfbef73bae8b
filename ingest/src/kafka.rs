//! Kafka as a source: a consumer-group member whose start positions come from the lake's last commit.
//!
//! The consumed offsets live in the sink's commit, never only in the consumer group: on every
//! assignment the partitions are assigned at the offsets of the last lake commit (earliest for a
//! partition the lake has never seen), messages below the expected offset are skipped, and every
//! rebalance bumps a generation so the pipeline rolls its uncommitted state back to that commit.
//! Group offsets are committed after each lake commit, for lag monitoring only.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aifinops_schemas::SourceRef;
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};

use crate::IngestError;
use crate::decode::Decoder;
use crate::formats::Format;

/// A topic partition.
pub type Tp = (String, i32);

/// Claims newly assigned partitions in a lake shared by several members and returns where each starts
/// (absent: from the beginning). Called from the rebalance callback, before the partitions are assigned.
pub type ClaimFn = Box<dyn Fn(&[Tp]) -> Result<HashMap<Tp, i64>, String> + Send + Sync>;

/// Connection and group settings of the consumer.
#[derive(Clone)]
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

/// Credentials among the properties (`ssl.key.password`, `sasl.password`, ...) are never printed.
impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("group", &self.group)
            .field("topics", &self.topics)
            .field("formats", &self.formats)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("max_poll_interval_ms", &self.max_poll_interval_ms)
            .field("properties", &aifinops_schemas::secret::redact_kafka_properties(&self.properties))
            .field("max_future_skew_ms", &self.max_future_skew_ms)
            .finish()
    }
}

struct Shared {
    /// Where each partition starts when (re)assigned: the offsets of the last lake commit.
    start_offsets: Mutex<HashMap<Tp, i64>>,
    /// Partitions currently assigned.
    assigned: Mutex<Vec<Tp>>,
    /// Bumped on every assignment change.
    generation: AtomicU64,
    /// Broker connections in state UP, from librdkafka's statistics (every second); -1 before the first
    /// report (or when `statistics.interval.ms` is set to 0) unless a record has arrived (then 1).
    brokers_up: AtomicI64,
    /// (low, high) watermark of each partition as librdkafka last reported it (statistics).
    ends: Mutex<HashMap<Tp, (i64, i64)>>,
    /// Set for a lake shared by several members: partitions are claimed in its ledger on assignment.
    claim: Mutex<Option<ClaimFn>>,
    /// A claim that failed: the source stops with this error.
    fatal: Mutex<Option<IngestError>>,
    /// A broker connection has been up at least once.
    ever_up: AtomicBool,
    /// The last TLS or SASL failure librdkafka reported (names the broker): a configuration error, not
    /// an outage, while no connection has ever come up.
    security_failure: Mutex<Option<String>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            start_offsets: Mutex::default(),
            assigned: Mutex::default(),
            generation: AtomicU64::new(0),
            brokers_up: AtomicI64::new(-1),
            ends: Mutex::default(),
            claim: Mutex::default(),
            fatal: Mutex::default(),
            ever_up: AtomicBool::new(false),
            security_failure: Mutex::default(),
        }
    }
}

/// What the pipeline reads in a librdkafka statistics report.
#[derive(Debug, Default, PartialEq)]
struct StatsView {
    /// Broker connections in state UP (the internal pseudo-broker aside).
    brokers_up: i64,
    /// (low, high) watermark per partition, where librdkafka knows them.
    ends: Vec<(Tp, (i64, i64))>,
}

fn parse_stats(stats: &[u8]) -> Option<StatsView> {
    fn invalid() -> i64 {
        -1
    }
    #[derive(serde::Deserialize)]
    struct Broker {
        #[serde(default)]
        state: String,
        #[serde(default)]
        source: String,
    }
    #[derive(serde::Deserialize)]
    struct Partition {
        #[serde(default = "invalid")]
        lo_offset: i64,
        #[serde(default = "invalid")]
        hi_offset: i64,
    }
    #[derive(serde::Deserialize)]
    struct Topic {
        #[serde(default)]
        partitions: HashMap<String, Partition>,
    }
    #[derive(serde::Deserialize)]
    struct Stats {
        #[serde(default)]
        brokers: HashMap<String, Broker>,
        #[serde(default)]
        topics: HashMap<String, Topic>,
    }
    let s: Stats = serde_json::from_slice(stats).ok()?;
    let mut ends = Vec::new();
    for (t, topic) in s.topics {
        for (p, part) in topic.partitions {
            // "-1" is librdkafka's internal unassigned partition; a negative offset is "not known yet"
            if let Ok(p) = p.parse::<i32>()
                && p >= 0
                && part.hi_offset >= 0
            {
                ends.push(((t.clone(), p), (part.lo_offset, part.hi_offset)));
            }
        }
    }
    Some(StatsView {
        brokers_up: s.brokers.values().filter(|b| b.source != "internal" && b.state == "UP").count() as i64,
        ends,
    })
}

impl SourceContext {
    /// A TLS or SASL failure: logged as an error, and kept for [`KafkaSource::security_failure`]. librdkafka's
    /// text names the broker (`ssl://host:port/id: ...`).
    fn security_failure(&self, text: &str) {
        tracing::error!(
            target: "librdkafka",
            "TLS/SASL failure: {text} (check the security.protocol, ssl.* and sasl.* properties of [kafka.consumer])"
        );
        *self.shared.security_failure.lock().expect("lock") = Some(text.to_string());
    }
}

/// Whether a librdkafka error or log text is a TLS or SASL failure (a certificate that does not verify, a
/// handshake with a broker that does not speak TLS, rejected credentials) rather than a broker being away.
fn is_security_failure_text(text: &str) -> bool {
    [
        "SSL handshake failed",
        "in state SSL_HANDSHAKE",
        "SASL authentication",
        "in state AUTH_",
        "certificate verify failed",
    ]
    .iter()
    .any(|s| text.contains(s))
}

/// Offsets between a partition's high watermark and the consumer's position that do not make it "behind":
/// transaction markers (and aborted records) at a partition's end are never delivered.
const BACKLOG_SLACK: i64 = 16;

/// Rebalance handling: assigns partitions at the lake's committed offsets.
pub struct SourceContext {
    shared: Arc<Shared>,
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        // a handshake that times out (TLS to a plaintext listener) is only logged, never an error event
        if fac == "FAIL" && is_security_failure_text(log_message) {
            // without librdkafka's thread tag: "[thrd:ssl://host:port/bootstrap]: ssl://host:port/bootstrap: ..."
            let text = match log_message.strip_prefix("[thrd:").and_then(|rest| rest.split_once("]: ")) {
                Some((_, text)) => text,
                None => log_message,
            };
            self.security_failure(text);
            return;
        }
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
        let security =
            matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication));
        if security || is_security_failure_text(reason) {
            self.security_failure(reason);
        } else {
            tracing::warn!(target: "librdkafka", %error, "{reason}");
        }
    }
    fn stats_raw(&self, statistics: &[u8]) {
        if let Some(v) = parse_stats(statistics) {
            if v.brokers_up > 0 {
                self.shared.ever_up.store(true, Ordering::SeqCst);
            }
            self.shared.brokers_up.store(v.brokers_up, Ordering::SeqCst);
            self.shared.ends.lock().expect("lock").extend(v.ends);
        }
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut assigned = Vec::new();
                for e in tpl.elements() {
                    assigned.push((e.topic().to_string(), e.partition()));
                }
                if let Some(claim) = self.shared.claim.lock().expect("lock").as_ref() {
                    match claim(&assigned) {
                        Ok(claimed) => {
                            let mut starts = self.shared.start_offsets.lock().expect("lock");
                            for tp in &assigned {
                                match claimed.get(tp) {
                                    Some(o) => starts.insert(tp.clone(), *o),
                                    None => starts.remove(tp),
                                };
                            }
                        }
                        Err(reason) => {
                            tracing::error!(partitions = ?assigned, %reason, "claiming partitions in the lake's ledger failed");
                            *self.shared.fatal.lock().expect("lock") =
                                Some(IngestError::Claim { partitions: format!("{assigned:?}"), reason });
                            let _ = consumer.unassign();
                            self.shared.generation.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
                let starts = self.shared.start_offsets.lock().expect("lock");
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
    /// The first offset consumed since the last commit (-1: none yet).
    pub from_offset: i64,
}

/// Records of one topic in a poll, for the per-topic metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TopicCounts {
    pub topic: String,
    /// The topic's configured format (`auto` when none).
    pub format: Format,
    /// Messages consumed.
    pub records: u64,
    /// Model calls decoded (accepted).
    pub decoded: u64,
    /// Decoded calls with a cost (not unpriced, usage not missing).
    pub priced: u64,
}

/// Where an assigned partition stands, for the lag and watermark metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// Next offset to consume; -1 before the first message of a partition the lake has never seen.
    pub next_offset: i64,
    /// The partition's low and high watermarks from librdkafka's last statistics, if known.
    pub low_watermark: Option<i64>,
    pub high_watermark: Option<i64>,
    /// Largest event time read from the partition since the last rollback.
    pub max_ts_ms: Option<i64>,
}

/// What one poll did.
#[derive(Debug, Default, Clone)]
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
    /// Per topic: records consumed, calls decoded and priced.
    pub per_topic: Vec<TopicCounts>,
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
    /// Partitions of the consumed topics that the lake has offsets for, not assigned here, and since when.
    away_since: HashMap<Tp, Instant>,
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
            .set("fetch.max.bytes", "52428800")
            // broker connection states every second, for `connected` (health)
            .set("statistics.interval.ms", "1000")
            // after a broker outage, reconnect within 2 s of its return (librdkafka's default backs off to 10 s)
            .set("reconnect.backoff.max.ms", "2000");
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
            away_since: HashMap::new(),
        })
    }

    /// Records the offsets of a new lake commit: future (re)assignments start there, and the group's
    /// offsets follow them (for lag monitoring only).
    pub fn committed(&mut self, offsets: &HashMap<Tp, i64>) {
        self.shared.start_offsets.lock().expect("lock").extend(offsets.iter().map(|(k, v)| (k.clone(), *v)));
        for ((t, p), o) in offsets {
            if let Some(pp) = self.progress.get_mut(t).and_then(|ps| ps.get_mut(p)) {
                pp.from_offset = *o;
            }
        }
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
                from_offset: next,
            });
            e.next_offset = next;
            e.from_offset = next;
            // the discarded records' event times must not move the watermark ahead of the re-read
            e.max_ts_ms = None;
        }
    }

    /// In a lake shared by several members: claim each newly assigned partition in the lake's ledger.
    pub fn set_claim(&self, claim: ClaimFn) {
        *self.shared.claim.lock().expect("lock") = Some(claim);
    }

    /// The offsets consumed since the last commit: partition -> [from, to).
    pub fn consumed_ranges(&self) -> BTreeMap<String, BTreeMap<i32, (i64, i64)>> {
        let mut out: BTreeMap<String, BTreeMap<i32, (i64, i64)>> = BTreeMap::new();
        for (t, parts) in &self.progress {
            for (p, pp) in parts {
                if pp.from_offset >= 0 && pp.next_offset > pp.from_offset {
                    out.entry(t.clone()).or_default().insert(*p, (pp.from_offset, pp.next_offset));
                }
            }
        }
        out
    }

    /// Re-reads every assigned partition from its committed offset (after a commit was refused and the
    /// pipeline rolled back without a rebalance).
    /// The assignment is re-applied at those offsets (which also drops what was fetched beyond them); a
    /// rebalance that is under way replaces it with its own, claimed at the lake's offsets as usual.
    pub fn rewind(&mut self) -> Result<(), IngestError> {
        let starts = self.shared.start_offsets.lock().expect("lock").clone();
        self.pending = None;
        let mut tpl = TopicPartitionList::new();
        for (t, p) in self.assigned() {
            let off = starts.get(&(t.clone(), p)).map_or(Offset::Beginning, |o| Offset::Offset(*o));
            tpl.add_partition_offset(&t, p, off)
                .map_err(|e| IngestError::Kafka { context: format!("rewinding {t}/{p} to {off:?}"), source: e })?;
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| IngestError::Kafka { context: "re-assigning at the lake's offsets".into(), source: e })?;
        self.reset_progress();
        Ok(())
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

    /// Whether the consumer has a live connection to at least one broker (librdkafka statistics, refreshed
    /// every second while polling; before the first report, a record that arrived counts as a connection);
    /// `None` before either.
    pub fn connected(&self) -> Option<bool> {
        match self.shared.brokers_up.load(Ordering::SeqCst) {
            n if n < 0 => None,
            n => Some(n > 0),
        }
    }

    /// A TLS or SASL failure while no broker connection has ever come up: the security settings (or the
    /// broker's) are wrong, and waiting will not help. After a first connection the same failures count as an
    /// outage (unhealthy, retried), since credentials and certificates can be rotated under a running
    /// pipeline.
    pub fn security_failure(&self, brokers: &str) -> Option<IngestError> {
        if self.shared.ever_up.load(Ordering::SeqCst) || self.shared.brokers_up.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let reason = self.shared.security_failure.lock().expect("lock").clone()?;
        Some(IngestError::KafkaSecurity { brokers: brokers.to_string(), reason })
    }

    /// Partitions currently assigned to this member.
    pub fn assigned(&self) -> Vec<Tp> {
        self.shared.assigned.lock().expect("lock").clone()
    }

    /// Progress of the assigned partitions.
    pub fn progress(&self) -> impl Iterator<Item = &PartitionProgress> {
        self.progress.values().flat_map(|parts| parts.values())
    }

    /// Progress of the assigned partitions, each with whether records are known to wait in it: librdkafka's
    /// last reported high watermark is ahead of the partition's next offset (a partition starved by the
    /// others' backlog is behind, not idle).
    pub fn progress_and_backlog(&self) -> impl Iterator<Item = (&PartitionProgress, bool)> {
        let ends = self.shared.ends.lock().expect("lock").clone();
        self.progress.iter().flat_map(move |(t, parts)| {
            let ends = ends.clone();
            parts.iter().map(move |(p, pp)| {
                let behind = ends.get(&(t.clone(), *p)).is_some_and(|&(lo, hi)| {
                    let base = if pp.next_offset >= 0 { pp.next_offset } else { lo.max(0) };
                    hi - base > BACKLOG_SLACK
                });
                (pp, behind)
            })
        })
    }

    /// Each assigned partition's position, high watermark and event-time clock (for metrics).
    pub fn partition_status(&self) -> Vec<PartitionStatus> {
        let ends = self.shared.ends.lock().expect("lock").clone();
        let starts = self.shared.start_offsets.lock().expect("lock").clone();
        self.assigned()
            .into_iter()
            .map(|(topic, partition)| {
                let pp = self.progress.get(&topic).and_then(|parts| parts.get(&partition));
                let tp = (topic.clone(), partition);
                PartitionStatus {
                    next_offset: pp.map(|p| p.next_offset).or_else(|| starts.get(&tp).copied()).unwrap_or(-1),
                    low_watermark: ends.get(&tp).map(|e| e.0),
                    high_watermark: ends.get(&tp).map(|e| e.1),
                    max_ts_ms: pp.and_then(|p| p.max_ts_ms),
                    topic,
                    partition,
                }
            })
            .collect()
    }

    /// For each partition of the consumed topics that the lake has offsets for but that is not assigned to
    /// this member, how long it has been away (a killed member keeps its partitions until its session
    /// times out).
    pub fn away(&mut self) -> Vec<Duration> {
        let assigned = self.assigned();
        let known: Vec<Tp> = self
            .shared
            .start_offsets
            .lock()
            .expect("lock")
            .keys()
            .filter(|(t, _)| self.topic_names.contains(t))
            .cloned()
            .collect();
        let now = Instant::now();
        self.away_since.retain(|tp, _| known.contains(tp) && !assigned.contains(tp));
        for tp in known.into_iter().filter(|tp| !assigned.contains(tp)) {
            self.away_since.entry(tp).or_insert(now);
        }
        self.away_since.values().map(|since| now.duration_since(*since)).collect()
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
        if let Some(e) = self.shared.fatal.lock().expect("lock").take() {
            return Err(e);
        }
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
            // a delivered record proves a broker connection: a short run reports health before librdkafka's
            // first statistics (every second) arrive (a plain load per record; the exchange only until then)
            if self.shared.brokers_up.load(Ordering::Relaxed) < 0
                && self.shared.brokers_up.compare_exchange(-1, 1, Ordering::SeqCst, Ordering::SeqCst).is_ok()
            {
                self.shared.ever_up.store(true, Ordering::SeqCst);
            }
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
    ///
    /// Asks the broker only when the high watermarks librdkafka last reported (every second, with its
    /// statistics) do not already show records waiting in an assigned partition: the metadata and
    /// watermark requests went to the broker every half second and made the main loop wait on them while
    /// it consumed a backlog (a high watermark never goes back, so a partition known behind is behind).
    pub fn caught_up(&self, timeout: Duration) -> Result<bool, IngestError> {
        let known_behind = {
            let ends = self.shared.ends.lock().expect("lock");
            self.progress.iter().any(|(t, parts)| {
                parts.iter().any(|(p, pp)| {
                    ends.get(&(t.clone(), *p)).is_some_and(|&(_, hi)| pp.next_offset >= 0 && pp.next_offset < hi)
                })
            })
        };
        if known_behind {
            return Ok(false);
        }
        let md = self
            .consumer
            .fetch_metadata(None, timeout)
            .map_err(|e| IngestError::Kafka { context: "fetching metadata".into(), source: e })?;
        // a partition the metadata leaves out (an incomplete answer, a leader being elected) is not known to
        // be consumed: every assigned partition must be checked
        let mut unchecked = self.assigned();
        for t in md.topics().iter().filter(|t| self.topic_names.iter().any(|n| n == t.name())) {
            for p in t.partitions() {
                unchecked.retain(|(ut, up)| !(ut == t.name() && *up == p.id()));
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
        if !unchecked.is_empty() {
            tracing::debug!(?unchecked, "assigned partitions missing from the broker's metadata: not known caught up");
            return Ok(false);
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
    let p = parts.entry(partition).or_insert_with(|| {
        let next =
            shared.start_offsets.lock().expect("lock").get(&(topic.to_string(), partition)).copied().unwrap_or(-1);
        PartitionProgress { next_offset: next, max_ts_ms: None, last_active: Instant::now(), from_offset: next }
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
    if p.from_offset < 0 {
        p.from_offset = offset;
    }
    p.next_offset = offset + 1;
    p.last_active = Instant::now();
    let payload = m.payload().unwrap_or(&[]);
    poll.records += 1;
    poll.bytes += payload.len() as u64;
    let format = if formats.is_empty() { Format::Auto } else { formats.get(topic).copied().unwrap_or_default() };
    let before = *decoder.stats();
    let pushed =
        decoder.push(payload, format, || SourceRef::Kafka { topic: topic.to_string(), partition, offset }, now_ms);
    let after = decoder.stats();
    let i = match poll.per_topic.iter().position(|c| c.topic == topic) {
        Some(i) => i,
        None => {
            poll.per_topic.push(TopicCounts { topic: topic.to_string(), format, ..Default::default() });
            poll.per_topic.len() - 1
        }
    };
    let c = &mut poll.per_topic[i];
    c.records += 1;
    let decoded = after.accepted - before.accepted;
    c.decoded += decoded;
    c.priced += decoded.saturating_sub(after.unpriced - before.unpriced + after.usage_missing - before.usage_missing);
    if let Some(ts) = pushed {
        p.max_ts_ms = Some(p.max_ts_ms.map_or(ts, |x| x.max(ts)));
        if ts > now_ms.saturating_add(max_future_skew_ms) {
            poll.future_events += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_stats;

    #[test]
    fn broker_connections_and_partition_ends_are_read_from_statistics() {
        let up = br#"{"name":"c","brokers":{
            "127.0.0.1:9092/bootstrap":{"name":"127.0.0.1:9092/bootstrap","source":"configured","state":"INIT"},
            "127.0.0.1:9092/1":{"name":"127.0.0.1:9092/1","source":"learned","state":"UP","nodeid":1},
            ":0/internal":{"name":":0/internal","source":"internal","state":"UP"}},
            "topics":{"usage":{"partitions":{
              "0":{"partition":0,"lo_offset":0,"hi_offset":107528,"app_offset":-1001},
              "1":{"partition":1,"lo_offset":-1001,"hi_offset":-1001},
              "-1":{"partition":-1,"lo_offset":-1001,"hi_offset":-1001}}}}}"#;
        let v = parse_stats(up).unwrap();
        assert_eq!(v.brokers_up, 1);
        assert_eq!(v.ends, vec![(("usage".to_string(), 0), (0, 107528))]);
        let down = br#"{"brokers":{"127.0.0.1:9092/1":{"source":"learned","state":"TRY_CONNECT"},
            ":0/internal":{"source":"internal","state":"UP"}}}"#;
        assert_eq!(parse_stats(down).unwrap().brokers_up, 0);
        assert_eq!(parse_stats(b"not json"), None);
    }
}
