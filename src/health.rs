//! What operators scrape and probe while `run` consumes: one small HTTP server on `metrics.listen` with
//! `/metrics` (Prometheus text, from the `metrics` recorder), `/healthz` (the process is up) and `/readyz`
//! (partitions assigned, a broker reachable, the lake writable; 503 naming what is not), and the metrics
//! fed from the consumer: per topic and format, per partition (lag, event-time clock), window state.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aifinops_ingest::kafka::{KafkaSource, Poll};
use anyhow::Context;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;

/// What `/readyz` checks, updated by the consume loop.
struct Readiness {
    assigned: AtomicUsize,
    /// 0 = not known yet, 1 = a broker connection is up, 2 = none is.
    broker: AtomicU8,
    lake: Mutex<Option<PathBuf>>,
    last_gauges: Mutex<Option<Instant>>,
    /// Partitions given a gauge, so that revoked ones can be zeroed.
    partitions: Mutex<BTreeSet<(String, i32)>>,
}

static READY: Readiness = Readiness {
    assigned: AtomicUsize::new(0),
    broker: AtomicU8::new(0),
    lake: Mutex::new(None),
    last_gauges: Mutex::new(None),
    partitions: Mutex::new(BTreeSet::new()),
};

static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();

/// The current scrape, when the recorder is installed (the demo prints an excerpt).
pub fn render() -> Option<String> {
    HANDLE.get().map(|h| h.render())
}

/// Installs the Prometheus recorder and serves `/metrics`, `/healthz`, `/readyz` on `metrics.listen`
/// (nothing when it is empty). Returns the bound address (`:0` picks a free port).
pub async fn start(cfg: &Config) -> anyhow::Result<Option<SocketAddr>> {
    if cfg.metrics.listen.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = cfg
        .metrics
        .listen
        .parse()
        .with_context(|| format!("metrics.listen {:?} is not host:port", cfg.metrics.listen))?;
    let handle = PrometheusBuilder::new().install_recorder().context("installing the Prometheus recorder")?;
    let _ = HANDLE.set(handle.clone());
    describe();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics.listen: cannot listen on {addr} (in use?)"))?;
    let bound = listener.local_addr()?;
    *READY.lake.lock().expect("lock") = Some(cfg.lake.dir.clone());
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    let h = handle.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(conn, &h).await {
                            tracing::debug!(error = %e, "metrics/health connection");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics/health listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    Ok(Some(bound))
}

async fn serve(mut conn: tokio::net::TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request not received within 5 s"))??;
    let line = String::from_utf8_lossy(&buf);
    let mut parts = line.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            handle.run_upkeep();
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", handle.render())
        }
        ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_string()),
        ("GET" | "HEAD", "/readyz") => {
            let (ready, report) = readiness();
            (if ready { "200 OK" } else { "503 Service Unavailable" }, "text/plain; charset=utf-8", report)
        }
        ("GET" | "HEAD", _) => {
            ("404 Not Found", "text/plain; charset=utf-8", "not found: try /metrics, /healthz or /readyz\n".into())
        }
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET and HEAD\n".into()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        conn.write_all(body.as_bytes()).await?;
    }
    conn.shutdown().await
}

/// Whether `run` is ready, and one line per check.
fn readiness() -> (bool, String) {
    let assigned = READY.assigned.load(Ordering::SeqCst);
    let broker = READY.broker.load(Ordering::SeqCst);
    let lake = READY.lake.lock().expect("lock").clone();
    let lake_ok = lake.as_ref().map(|l| lake_writable(l));
    let checks = [
        (assigned > 0, format!("assigned partitions: {assigned}")),
        (
            broker == 1,
            match broker {
                1 => "broker reachable: yes".to_string(),
                2 => "broker reachable: no (no broker connection is up)".to_string(),
                _ => "broker reachable: not known yet".to_string(),
            },
        ),
        (
            matches!(lake_ok, Some(Ok(()))),
            match (&lake, &lake_ok) {
                (Some(l), Some(Ok(()))) => format!("lake writable: yes ({})", l.display()),
                (Some(l), Some(Err(e))) => format!("lake writable: no ({}: {e})", l.display()),
                _ => "lake writable: not known".to_string(),
            },
        ),
    ];
    let ready = checks.iter().all(|c| c.0);
    let mut out = String::from(if ready { "ready\n" } else { "not ready\n" });
    for (ok, line) in &checks {
        out.push_str(if *ok { "ok   " } else { "FAIL " });
        out.push_str(line);
        out.push('\n');
    }
    (ready, out)
}

/// Writes, syncs and removes a probe file in the lake's control directory.
fn lake_writable(lake: &std::path::Path) -> std::io::Result<()> {
    let dir = lake.join("_aifinops");
    let dir = if dir.is_dir() { dir } else { lake.to_path_buf() };
    let probe = dir.join(format!(".readyz-{}", std::process::id()));
    let f = std::fs::File::create(&probe)?;
    f.sync_all()?;
    std::fs::remove_file(&probe)
}

/// After each poll of `run`: per-topic counters (every poll), and at most once a second the readiness
/// state and the per-partition gauges (consumer lag, event-time clock).
pub fn observe(src: &KafkaSource, poll: &Poll, connected: Option<bool>) {
    for c in &poll.per_topic {
        let labels = [("topic", c.topic.clone()), ("format", c.format.as_str().to_string())];
        metrics::counter!("aifinops_input_records_total", &labels).increment(c.records);
        metrics::counter!("aifinops_input_events_decoded_total", &labels).increment(c.decoded);
        metrics::counter!("aifinops_input_events_priced_total", &labels).increment(c.priced);
    }
    if let Some(up) = connected {
        READY.broker.store(if up { 1 } else { 2 }, Ordering::SeqCst);
    }
    {
        let mut last = READY.last_gauges.lock().expect("lock");
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(Instant::now());
    }
    let status = src.partition_status();
    READY.assigned.store(status.len(), Ordering::SeqCst);
    metrics::gauge!("aifinops_assigned_partitions").set(status.len() as f64);
    let mut known = READY.partitions.lock().expect("lock");
    let mut now: BTreeSet<(String, i32)> = BTreeSet::new();
    for s in &status {
        let labels = [("topic", s.topic.clone()), ("partition", s.partition.to_string())];
        if let Some(hi) = s.high_watermark {
            let from = if s.next_offset >= 0 { s.next_offset } else { s.low_watermark.unwrap_or(0).max(0) };
            metrics::gauge!("aifinops_consumer_lag_messages", &labels).set((hi - from).max(0) as f64);
        }
        if let Some(ts) = s.max_ts_ms {
            metrics::gauge!("aifinops_partition_watermark_seconds", &labels).set(ts as f64 / 1000.0);
        }
        now.insert((s.topic.clone(), s.partition));
        known.insert((s.topic.clone(), s.partition));
    }
    // a revoked partition is another member's now: no lag here
    for (t, p) in known.iter().filter(|k| !now.contains(*k)) {
        let labels = [("topic", t.clone()), ("partition", p.to_string())];
        metrics::gauge!("aifinops_consumer_lag_messages", &labels).set(0.0);
    }
}

/// Window state after a commit, per window size: distinct open windows, and the rows held for them (one
/// per window and key once merged, plus partial rows not merged yet).
pub fn window_state(partials: &[(aifinops_aggregate::WindowSize, Vec<RecordBatch>)]) {
    for (size, batches) in partials {
        let mut windows = BTreeSet::new();
        let mut rows = 0;
        for b in batches {
            rows += b.num_rows();
            if let Some(c) = b
                .column_by_name(aifinops_schemas::rollup::WINDOW_START)
                .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
            {
                windows.extend(c.values().iter().copied());
            }
        }
        metrics::gauge!("aifinops_window_open_windows", "window" => size.label.clone()).set(windows.len() as f64);
        metrics::gauge!("aifinops_window_open_keys", "window" => size.label.clone()).set(rows as f64);
    }
}

/// HELP lines of the metrics, so a scrape explains itself.
fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!("aifinops_records_consumed_total", "Records read from all inputs");
    describe_counter!("aifinops_events_decoded_total", "Model calls decoded (accepted) from all inputs");
    describe_counter!("aifinops_input_records_total", "Kafka messages consumed, per topic and configured format");
    describe_counter!("aifinops_input_events_decoded_total", "Model calls decoded, per topic and configured format");
    describe_counter!(
        "aifinops_input_events_priced_total",
        "Decoded model calls with a cost (not unpriced, usage not missing), per topic and format"
    );
    describe_counter!("aifinops_dead_letters_total", "Records rejected, per reason (dead-letter kind)");
    describe_counter!("aifinops_unpriced_requests_total", "Calls of models the price catalog lacks (cost unknown)");
    describe_counter!("aifinops_unattributed_requests_total", "Calls whose identity maps to no owner");
    describe_counter!("aifinops_duplicate_events_total", "Redelivered events dropped by the dedup horizon");
    describe_counter!("aifinops_late_events_total", "Calls that arrived after their window's allowed lateness");
    describe_counter!("aifinops_future_events_total", "Events dated beyond wall clock + max_future_skew");
    describe_counter!("aifinops_watermark_clamped_total", "Polls x partitions whose clock was capped at now + skew");
    describe_gauge!("aifinops_watermark_seconds", "The pipeline watermark (Unix seconds of event time)");
    describe_gauge!("aifinops_partition_watermark_seconds", "Largest event time read per input partition");
    describe_gauge!("aifinops_consumer_lag_messages", "Messages between the partition's end and the next offset");
    describe_gauge!("aifinops_assigned_partitions", "Input partitions assigned to this member");
    describe_gauge!("aifinops_window_open_rows", "Open (window, key) rows held in memory, all window sizes");
    describe_gauge!("aifinops_window_open_keys", "Open (window, key) rows per window size after a commit");
    describe_gauge!("aifinops_window_open_windows", "Distinct open windows per window size after a commit");
    describe_gauge!(
        "aifinops_window_dimension_values",
        "Values in the window state's dictionary per dimension (it grows while the process runs)"
    );
    describe_counter!(
        "aifinops_run_stage_microseconds_total",
        "Time of run's main loop per stage: receive (wait + decode), process, commit"
    );
    describe_counter!("aifinops_lake_commits_total", "Lake commits");
    describe_counter!("aifinops_lake_bytes_total", "Bytes of Parquet written to the lake");
    describe_counter!(
        "aifinops_commits_refused_total",
        "Shared lake: commits refused at the commit point (fenced, or an event another member counted first)"
    );
    describe_counter!(
        "aifinops_writers_adopted_total",
        "Shared lake: open windows and unsent alerts of members that are gone, taken over"
    );
    describe_counter!("aifinops_alerts_published_total", "Alerts acknowledged by the alert topic, per type");
    describe_counter!("aifinops_alert_publish_failures_total", "Failed attempts to publish an outbox");
    describe_gauge!("aifinops_kafka_connected", "1 while a broker connection is up");
}
