//! `aifinops run`: the consumer-group pipeline. Offsets live in the lake's commit (see DESIGN.md);
//! alerts and dead letters are published after each commit from its outbox.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aifinops_aggregate::watermark::{PartitionClock, compute};
use aifinops_ingest::kafka::{KafkaSettings, KafkaSource};
use aifinops_sink::{OutboxLog, Publisher};
use anyhow::Context;
use tokio::sync::Notify;

use crate::config::Config;
use crate::pipeline::{Pipeline, now_ms};

/// A flag set by SIGINT or SIGTERM.
pub fn shutdown_signal() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested: flushing and committing");
        f.store(true, Ordering::SeqCst);
    });
    flag
}

/// Publishes committed outboxes (alerts, dead letters) beside the commit loop, in commit order, retrying
/// with backoff, so a slow or unavailable alert topic never stalls consumption: the alerts are durable in
/// the lake until acknowledged.
struct OutboxPublisher {
    wake: Arc<Notify>,
    closing: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl OutboxPublisher {
    fn spawn(log: OutboxLog, publisher: Publisher) -> Self {
        let wake = Arc::new(Notify::new());
        let closing = Arc::new(AtomicBool::new(false));
        let (w, c) = (wake.clone(), closing.clone());
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                match drain(&log, &publisher).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(500);
                        metrics::gauge!("aifinops_alert_publisher_healthy").set(1.0);
                        // closing: leave only when nothing committed is left unpublished
                        if c.load(Ordering::SeqCst) {
                            if log.pending().map(|p| p.is_empty()).unwrap_or(false) {
                                return;
                            }
                            continue;
                        }
                        let _ = tokio::time::timeout(Duration::from_secs(5), w.notified()).await;
                    }
                    Err(e) => {
                        metrics::counter!("aifinops_alert_publish_failures_total").increment(1);
                        metrics::gauge!("aifinops_alert_publisher_healthy").set(0.0);
                        tracing::warn!(error = %e, retry_in = ?backoff, "publishing the outbox failed; alerts stay in the lake and are retried");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
        OutboxPublisher { wake, closing, task }
    }

    fn notify(&self) {
        self.wake.notify_one();
    }

    /// Publishes what is pending, waiting at most `within`; anything left is sent on the next start.
    async fn close(self, within: Duration) {
        self.closing.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(within, self.task).await.is_err() {
            abort.abort();
            tracing::warn!(
                "some alerts could not be published yet; they stay in the lake's outbox and are sent on the next start"
            );
        }
    }
}

async fn drain(log: &OutboxLog, publisher: &Publisher) -> anyhow::Result<()> {
    for (seq, outbox) in log.pending()? {
        aifinops_sink::fault::point("before_publish");
        publisher.publish(&outbox).await?;
        for a in &outbox.alerts {
            metrics::counter!("aifinops_alerts_published_total", "type" => a.kind.clone()).increment(1);
            tracing::info!(id = %a.id, kind = %a.kind, subject = %a.subject, owner = a.owner(), "alert published");
        }
        aifinops_sink::fault::point("after_publish");
        log.mark_published(seq)?;
    }
    Ok(())
}

/// The consumer's health for operators: the `aifinops_kafka_connected` gauge (1 while a broker connection is
/// up, 0 while none is) and one log line per change. librdkafka reconnects by itself with backoff; the
/// pipeline keeps running, and whatever it had not committed is re-read from the lake's offsets.
#[derive(Default)]
struct KafkaHealth {
    known: Option<bool>,
    down_since: Option<Instant>,
}

impl KafkaHealth {
    fn update(&mut self, connected: Option<bool>) {
        let Some(up) = connected else { return };
        if self.known == Some(up) {
            return;
        }
        metrics::gauge!("aifinops_kafka_connected").set(if up { 1.0 } else { 0.0 });
        if up {
            if let Some(since) = self.down_since.take() {
                tracing::info!(down_for = ?since.elapsed(), "Kafka reachable again: consuming");
            }
        } else {
            metrics::counter!("aifinops_kafka_disconnects_total").increment(1);
            self.down_since = Some(Instant::now());
            tracing::warn!(
                "Kafka unreachable: no broker connection is up (unhealthy); reconnecting with backoff, nothing committed is lost"
            );
        }
        self.known = Some(up);
    }
}

/// A commit the lake refused without harm (fenced, or a duplicate another writer counted first).
fn is_refused(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<aifinops_sink::SinkError>(),
        Some(aifinops_sink::SinkError::Fenced { .. } | aifinops_sink::SinkError::DedupConflict { .. })
    )
}

fn offsets_map(src: &KafkaSource) -> BTreeMap<String, BTreeMap<i32, i64>> {
    let mut m: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for ((t, p), o) in src.next_offsets() {
        m.entry(t).or_default().insert(p, o);
    }
    m
}

/// Where the main loop's time goes, so that an operator (and the benchmark) can tell a run that waits on the
/// broker from one that waits on its own work: also `aifinops_run_stage_microseconds_total{stage}`.
#[derive(Clone, Copy)]
enum Stage {
    /// Waiting for records and decoding them (`poll_into`).
    Receive,
    /// Dedup, windows, rules.
    Process,
    /// Closing windows and the lake commit (Parquet, fsyncs, manifest).
    Commit,
}

#[derive(Default)]
struct Spent([Duration; 3]);

impl Spent {
    fn add(&mut self, stage: Stage, since: Instant) {
        let d = since.elapsed();
        self.0[stage as usize] += d;
        let label = match stage {
            Stage::Receive => "receive",
            Stage::Process => "process",
            Stage::Commit => "commit",
        };
        metrics::counter!("aifinops_run_stage_microseconds_total", "stage" => label).increment(d.as_micros() as u64);
    }
}

impl std::fmt::Display for Spent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [r, p, c] = self.0.map(|d| d.as_secs_f64());
        write!(f, "receiving and decoding {r:.1}s, processing {p:.1}s, committing {c:.1}s")
    }
}

pub async fn run(cfg: &Config, stop: Arc<AtomicBool>, until_caught_up: bool) -> anyhow::Result<String> {
    let started = Instant::now();
    let (mut p, manifest) = Pipeline::open(cfg).await?;
    p.set_live();
    let mut committed = std::collections::HashMap::new();
    if let Some(m) = &manifest {
        for (t, parts) in &m.offsets {
            for (part, o) in parts {
                committed.insert((t.clone(), *part), *o);
            }
        }
    }
    let dlq = (!cfg.kafka.dead_letter_topic.is_empty()).then_some(cfg.kafka.dead_letter_topic.as_str());
    let mut publisher = Publisher::new(&cfg.kafka.brokers, &cfg.kafka.alert_topic, dlq, &cfg.kafka.producer)?;
    if cfg.kafka.alert_format == crate::config::AlertFormat::Avro {
        publisher = publisher.with_avro_alerts(match cfg.avro.alert_schema_id {
            Some(schema_id) => aifinops_schemas::avro::AvroFraming::Confluent { schema_id },
            None => aifinops_schemas::avro::AvroFraming::SingleObject,
        });
    }
    let outbox = OutboxPublisher::spawn(p.lake().outbox_log(), publisher);
    let settings = KafkaSettings {
        brokers: cfg.kafka.brokers.clone(),
        group: cfg.kafka.group.clone(),
        topics: cfg.kafka.topics.clone(),
        formats: cfg.kafka.formats.iter().map(|(t, f)| (t.clone(), *f)).collect(),
        session_timeout_ms: cfg.kafka.session_timeout.as_millis() as u32,
        max_poll_interval_ms: cfg.kafka.max_poll_interval.as_millis() as u32,
        properties: cfg.kafka.consumer.clone(),
        max_future_skew_ms: cfg.pipeline.max_future_skew.as_millis() as i64,
    };
    for t in cfg.kafka.formats.keys().filter(|t| !cfg.kafka.topics.contains(t)) {
        tracing::warn!(topic = %t, topics = ?cfg.kafka.topics, "kafka.formats names a topic that is not consumed");
    }
    let mut src = KafkaSource::connect(&settings, committed).context("connecting to Kafka")?;
    if let Some(ledger) = p.lake().ledger() {
        // a lake shared by several members: every assignment is claimed in the lake's ledger, which fences the
        // previous owner and tells where the partition starts
        src.set_claim(Box::new(move |tps| ledger.claim(tps).map_err(|e| e.to_string())));
        p.adopt_orphans(BTreeMap::new()).await?;
    }
    tracing::info!(brokers = %cfg.kafka.brokers, topics = ?cfg.kafka.topics, group = %cfg.kafka.group, lake = %cfg.lake.dir.display(), "consuming");
    let delay = cfg.pipeline.watermark_delay.as_millis() as i64;
    let idle = cfg.pipeline.idle_timeout;
    // how long a killed member can keep its partitions: its session times out, then the rebalance waits
    let rebalance_grace = cfg.kafka.session_timeout + cfg.kafka.max_poll_interval;
    let skew = cfg.pipeline.max_future_skew.as_millis() as i64;
    let mut last_caught_up_check = Instant::now();
    let mut health = KafkaHealth::default();
    let mut spent = Spent::default();
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if !stopping {
            let t = Instant::now();
            let poll = src
                .poll_into(&mut p.decoder, cfg.pipeline.batch_max_events, cfg.pipeline.batch_max_wait, now_ms)
                .await?;
            spent.add(Stage::Receive, t);
            health.update(src.connected());
            if let Some(e) = src.security_failure(&cfg.kafka.brokers) {
                // a configuration error at startup, not an outage: fail instead of retrying forever
                return Err(e.into());
            }
            crate::health::observe(&src, &poll, src.connected());
            if poll.rebalanced {
                if p.is_dirty() || !p.decoder.is_empty() {
                    p.rollback().await?;
                } else {
                    let _ = p.decoder.finish();
                }
                src.reset_progress();
                src.check_positions(Duration::from_secs(10))?;
                // a member that left without emitting its open windows (killed) is adopted here
                if p.shared_lake() && p.adopt_orphans(offsets_map(&src)).await? > 0 {
                    src.committed(
                        &offsets_map(&src)
                            .into_iter()
                            .flat_map(|(t, ps)| ps.into_iter().map(move |(pp, o)| ((t.clone(), pp), o)))
                            .collect(),
                    );
                    outbox.notify();
                }
                continue;
            }
            if poll.skipped > 0 {
                metrics::counter!("aifinops_records_skipped_total").increment(poll.skipped);
                tracing::info!(
                    skipped = poll.skipped,
                    "skipped records below the lake's committed offsets (redelivery)"
                );
            }
            // A partition is idle when it has been silent for `idle_timeout` and has nothing waiting (a partition
            // starved by the others' backlog is behind, not idle). A partition of the lake that a killed member
            // still holds comes back within a rebalance and holds the watermark until then. Otherwise the
            // watermark would run ahead of records still to be read, and the dedup horizon behind it would
            // forget the ids their redeliveries must be matched against.
            let mut clocks: Vec<PartitionClock> = src
                .away()
                .into_iter()
                .filter(|away| *away < rebalance_grace)
                .map(|_| PartitionClock { max_ts_ms: None, idle: false })
                .collect();
            clocks.extend(src.progress_and_backlog().map(|(pp, behind)| PartitionClock {
                max_ts_ms: pp.max_ts_ms,
                idle: pp.last_active.elapsed() >= idle && !behind,
            }));
            let wm = compute(&clocks, delay, Some((now_ms(), skew)));
            if poll.future_events > 0 {
                metrics::counter!("aifinops_future_events_total").increment(poll.future_events);
                tracing::warn!(
                    events = poll.future_events,
                    max_future_skew = ?cfg.pipeline.max_future_skew,
                    "events dated ahead of the wall clock (a producer clock?): counted, but they do not move the watermark past now + max_future_skew"
                );
            }
            if wm.clamped_partitions > 0 {
                metrics::counter!("aifinops_watermark_clamped_total").increment(wm.clamped_partitions as u64);
            }
            let t = Instant::now();
            p.process(poll.records, wm.watermark_ms).await?;
            spent.add(Stage::Process, t);
        }
        let caught_up = until_caught_up
            && !stopping
            && last_caught_up_check.elapsed() >= Duration::from_millis(500)
            && !src.assigned().is_empty()
            && {
                last_caught_up_check = Instant::now();
                match src.caught_up(Duration::from_secs(5)) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "checking whether the input is consumed to its end");
                        false
                    }
                }
            };
        let finishing = stopping || caught_up;
        if p.commit_due() || finishing {
            let offsets = offsets_map(&src);
            // a member leaving a shared lake emits its open windows (rows are additive): nobody else would
            let final_flush = caught_up || (stopping && p.shared_lake());
            let t = Instant::now();
            let committed = p.commit(offsets.clone(), src.consumed_ranges(), BTreeMap::new(), true, final_flush).await;
            spent.add(Stage::Commit, t);
            match committed {
                Ok(info) => {
                    let flat = offsets
                        .iter()
                        .flat_map(|(t, ps)| ps.iter().map(move |(pp, o)| ((t.clone(), *pp), *o)))
                        .collect();
                    src.committed(&flat);
                    outbox.notify();
                    tracing::debug!(seq = info.seq, "committed");
                }
                Err(e) if is_refused(&e) => {
                    // fenced (a partition moved to another member) or raced on a duplicate: nothing of this
                    // commit is visible; roll back and re-read from the last commit
                    tracing::warn!(error = %e, "lake commit refused; rolling back to the last commit");
                    metrics::counter!("aifinops_commits_refused_total").increment(1);
                    p.rollback().await?;
                    src.rewind()?;
                    if !finishing {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        if finishing {
            break;
        }
    }
    outbox.close(Duration::from_secs(30)).await;
    let t = &p.totals;
    Ok(format!(
        "run: {} records in {:.1}s ({spent}): {} events, {} duplicates dropped, {} dead letters, {} unpriced, {} unattributed; {} alerts; {} commits; lake {}",
        t.records,
        started.elapsed().as_secs_f64(),
        t.accepted - t.duplicates,
        t.duplicates,
        t.dead_letters,
        t.unpriced,
        t.unattributed,
        t.alerts,
        t.commits,
        cfg.lake.dir.display()
    ))
}
