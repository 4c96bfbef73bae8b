//! End to end through a real Kafka-protocol broker (Tansu, started by scripts/test): `run` consumes in a
//! consumer group, writes exact totals, publishes alerts that a separate consumer reads back, sends dead
//! letters to their topic, flushes on SIGTERM, and loses or doubles nothing under kill -9.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{create_topics, run_config};
use common::*;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const DAY: i64 = 1_764_460_800_000; // 2025-11-30T00:00:00Z

fn produce(brokers: &str, topic: &str, lines: &[String]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    for (i, l) in lines.iter().enumerate() {
        let key = format!("k{}", i % 31);
        loop {
            match p.send(BaseRecord::to(topic).key(&key).payload(l)) {
                Ok(()) => break,
                Err((e, _)) if e.to_string().contains("Queue full") => {
                    p.poll(Duration::from_millis(50));
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
        if i % 1000 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

/// A message read back: key, payload, headers.
type Received = (Option<String>, Vec<u8>, BTreeMap<String, String>);

/// Reads every message of `topic` (from the beginning) with a fresh consumer.
fn read_all(brokers: &str, topic: &str, expect_at_least: usize, within: Duration) -> Vec<Received> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let mut h = BTreeMap::new();
                if let Some(hs) = m.headers() {
                    for x in hs.iter() {
                        h.insert(x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).to_string());
                    }
                }
                out.push((
                    m.key().map(|k| String::from_utf8_lossy(k).to_string()),
                    m.payload().unwrap_or_default().to_vec(),
                    h,
                ));
                quiet_since = Instant::now();
            }
            _ => {
                if out.len() >= expect_at_least && quiet_since.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
        }
    }
    out
}

struct Setup {
    brokers: String,
    input: String,
    alerts: String,
    dlq: String,
    group: String,
    config: std::path::PathBuf,
    lake: std::path::PathBuf,
    metrics_port: u16,
}

fn setup(dir: &Path, brokers: String, name: &str) -> Setup {
    let input = unique(&format!("{name}-in"));
    let alerts = unique(&format!("{name}-alerts"));
    let dlq = unique(&format!("{name}-dlq"));
    create_topics(&brokers, &[(&input, 3), (&alerts, 1), (&dlq, 1)]);
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (config, lake) = run_config(dir, &dlq, &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\""));
    Setup { brokers, input, alerts, dlq, group: unique(&format!("{name}-group")), config, lake, metrics_port }
}

fn start(s: &Setup, extra: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(bin());
    cmd.args([
        "run",
        "--config",
        s.config.to_str().unwrap(),
        "--brokers",
        &s.brokers,
        "--topic",
        &s.input,
        "--group",
        &s.group,
        "--alert-topic",
        &s.alerts,
    ])
    .args(extra)
    .env("RUST_LOG", "warn")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn aifinops run")
}

fn wait_output(c: Child, within: Duration) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + within;
    let mut c = c;
    loop {
        if let Some(_st) = c.try_wait().unwrap() {
            let out = c.wait_with_output().unwrap();
            return (out.status, String::from_utf8_lossy(&out.stderr).to_string());
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let out = c.wait_with_output().unwrap();
            panic!("aifinops run did not finish in {within:?}:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn committed_offsets(lake: &Path) -> i64 {
    let dir = lake.join("_aifinops/manifest");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut names: Vec<_> =
        rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    names.sort();
    let Some(last) = names.last() else { return 0 };
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(last).unwrap()).unwrap();
    m["offsets"]
        .as_object()
        .map(|t| t.values().flat_map(|p| p.as_object().unwrap().values().map(|o| o.as_i64().unwrap())).sum())
        .unwrap_or(0)
}

#[test]
fn run_writes_exact_totals_publishes_alerts_and_dead_letters_and_flushes_on_sigterm() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), brokers, "run");
    let (lines, e) = workload(6_000, DAY, 6, 30, 21);
    produce(&s.brokers, &s.input, &lines);
    let total = lines.len() as i64;

    // 1. run until stopped: wait for the lake to commit every offset, then SIGTERM -> exit 0
    let child = start(&s, &[], &[]);
    let pid = child.id() as i32;
    let t0 = Instant::now();
    while committed_offsets(&s.lake) < total {
        assert!(t0.elapsed() < Duration::from_secs(120), "run did not consume {total} records in 120 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    // the Prometheus endpoint reports what happened (the commit counter moves just after the commit point)
    let mut m = scrape(s.metrics_port);
    let t1 = Instant::now();
    while !m.contains("aifinops_lake_commits_total") && t1.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        m = scrape(s.metrics_port);
    }
    assert!(m.contains("aifinops_events_decoded_total"), "{m}");
    assert!(m.contains("aifinops_dead_letters_total"), "{m}");
    assert!(m.contains("aifinops_lake_commits_total"), "{m}");
    // and where the main loop's time went
    for stage in ["receive", "process", "commit"] {
        let us = metric(&m, &format!("aifinops_run_stage_microseconds_total{{stage=\"{stage}\"}}"));
        assert!(us.is_some_and(|us| us > 0.0), "time in {stage}: {m}");
    }
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (status, stderr) = wait_output(child, Duration::from_secs(60));
    assert!(status.success(), "SIGTERM must flush, commit and exit 0: {status}\n{stderr}");
    // the summary splits the run's time into its stages, which add up to no more than the whole
    let secs = |after: &str| -> f64 {
        let at = stderr.find(after).unwrap_or_else(|| panic!("{after:?} in the summary: {stderr}")) + after.len();
        stderr[at..].split('s').next().unwrap().trim().parse().unwrap()
    };
    let (whole, stages) =
        (secs("records in "), [secs("receiving and decoding "), secs("processing "), secs("committing ")]);
    assert!(stages.iter().all(|s| *s >= 0.0) && stages[0] > 0.0, "{stages:?}: {stderr}");
    // (each is rounded to 0.1 s)
    assert!(stages.iter().sum::<f64>() <= whole + 0.2, "{stages:?} in {whole} s: {stderr}");
    assert_eq!(committed_offsets(&s.lake), total, "all offsets committed to the lake");

    // 2. a second run resumes from the lake's offsets and, caught up, flushes every open window
    let child = start(&s, &["--until-caught-up"], &[]);
    let (status, stderr) = wait_output(child, Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("run: 0 records"), "the second run must not re-read anything: {stderr}");
    assert_lake_totals(&s.lake, &e, &["1m", "1h", "1d"]);

    // 3. alerts on the topic, read back by a separate consumer: CloudEvents, key = owner, once each
    let lake_alerts = query(&s.lake, "SELECT id, type, owner FROM alerts");
    assert!(lake_alerts.iter().any(|a| a["type"] == "aifinops.budget.threshold"), "{lake_alerts:?}");
    let msgs = read_all(&s.brokers, &s.alerts, lake_alerts.len(), Duration::from_secs(60));
    assert_eq!(msgs.len(), lake_alerts.len(), "every alert in the lake is on the topic exactly once");
    let mut ids = std::collections::BTreeSet::new();
    for (key, payload, headers) in &msgs {
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        for k in ["specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"] {
            assert!(v.get(k).is_some(), "CloudEvent field {k} missing: {v}");
        }
        assert_eq!(key.as_deref(), v["data"]["owner"].as_str(), "key = owner");
        assert!(v["data"]["controls"].as_array().is_some_and(|c| !c.is_empty()), "governance context: {v}");
        if v["data"]["owner"] == "search" {
            assert_eq!(v["data"]["approver"], "vp-search@example.com", "{v}");
            assert_eq!(v["data"]["risk_owner"], "search-lead@example.com", "{v}");
        }
        assert_eq!(headers.get("ce_id").map(|s| s.as_str()), v["id"].as_str());
        assert!(ids.insert(v["id"].as_str().unwrap().to_string()), "alert id published twice");
    }
    let thresholds: Vec<_> = msgs
        .iter()
        .map(|(_, p, _)| serde_json::from_slice::<serde_json::Value>(p).unwrap())
        .filter(|v| v["type"] == "aifinops.budget.threshold")
        .map(|v| v["data"]["threshold_percent"].as_u64().unwrap())
        .collect();
    for t in [50, 80, 100] {
        assert_eq!(thresholds.iter().filter(|x| **x == t).count() as i64, {
            // search's daily budget of $1 is crossed once per day of traffic
            query(&s.lake, &format!("SELECT count(*) AS n FROM alerts WHERE type = 'aifinops.budget.threshold' AND data LIKE '%\"threshold_percent\":{t}%'"))[0]["n"].as_i64().unwrap()
        });
    }

    // 4. dead letters: on their topic with the reason, and in the lake with topic/partition@offset
    let dl = read_all(&s.brokers, &s.dlq, e.bad, Duration::from_secs(30));
    assert_eq!(dl.len(), e.bad);
    for (_, _, h) in &dl {
        assert!(h.get("aifinops_source").is_some_and(|s| s.contains('@')), "{h:?}");
        assert!(h.get("aifinops_reason").is_some_and(|r| !r.is_empty()));
    }
    let lake_dl = query(&s.lake, "SELECT source FROM dead_letters");
    assert_eq!(lake_dl.len(), e.bad);
    assert!(lake_dl.iter().all(|r| { r["source"].as_str().unwrap().starts_with(&format!("{}/", s.input)) }));
}

#[test]
fn run_is_exactly_once_under_kill_9() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(dir.path(), brokers, "crash");
    // Eight days of traffic, so that every day crosses the search budget and raises alerts to publish.
    let (lines, e) = workload(40_000, DAY, 8 * 24, 100, 77);
    // crashes at every step of the commit protocol (fault injection = abort, like kill -9)
    let points = [
        "mid_parquet:2",
        "before_manifest:3",
        "after_manifest:2",
        "mid_rollforward:2",
        "before_manifest:6",
        "before_publish:1",
        "after_publish:2",
    ];
    // Each run gets fresh input, produced before it starts (a day of events, then the rest before the
    // SIGKILLs). A run that consumed everything left would finish without reaching its fault point, and so
    // would every run after it.
    let chunk = lines.len().div_ceil(points.len() + 1);
    let mut chunks = lines.chunks(chunk);
    // The redeliveries come last, of events up to eight days older. A dedup horizon of 24 h would count
    // again those that arrive more than a day of event time behind the watermark (the documented limit),
    // and how far the watermark is by then depends on the order the broker delivered the partitions in
    // (it once had 4 of the 100 counted twice). A horizon over the whole workload takes that out.
    let horizon = ("AIFINOPS__PIPELINE__DEDUP_HORIZON", "216h");
    let env_small =
        [("AIFINOPS__PIPELINE__BATCH_MAX_EVENTS", "500"), ("AIFINOPS__PIPELINE__COMMIT_INTERVAL", "0s"), horizon];
    let mut crashed = 0;
    for p in points {
        produce(&s.brokers, &s.input, chunks.next().unwrap());
        let mut env = env_small.to_vec();
        env.push(("AIFINOPS_FAULT", p));
        eprintln!("fault point {p}");
        // a fresh group per run: the offsets live in the lake, and Tansu may strand partitions with the
        // aborted member of a group for minutes (tests/reliability.rs does the same)
        s.group = unique("crash-group");
        let child = start(&s, &["--until-caught-up"], &env);
        let (status, stderr) = wait_output(child, Duration::from_secs(120));
        if status.success() {
            eprintln!("{p}: the run finished without reaching its fault point:\n{stderr}");
        } else {
            crashed += 1;
            assert!(stderr.contains("fault injection"), "{p}: unexpected failure:\n{stderr}");
        }
        query(&s.lake, "SELECT count(*) FROM rollups"); // every visible file is whole
    }
    for rest in chunks {
        produce(&s.brokers, &s.input, rest);
    }
    // and SIGKILL at arbitrary moments
    for (i, ms) in [700u64, 1500, 2300].iter().enumerate() {
        s.group = unique("crash-group");
        let child = start(&s, &["--until-caught-up"], &env_small);
        std::thread::sleep(Duration::from_millis(*ms + i as u64 * 100));
        let pid = child.id() as i32;
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = wait_output(child, Duration::from_secs(30));
    }
    assert_eq!(crashed, points.len(), "every fault-injected run must crash at its point");
    s.group = unique("crash-group");
    let child = start(&s, &["--until-caught-up"], &[horizon]);
    let (status, stderr) = wait_output(child, Duration::from_secs(180));
    assert!(status.success(), "{stderr}");
    assert_lake_totals(&s.lake, &e, &["1m", "1h", "1d"]);
    let dl = query(&s.lake, "SELECT count(*) AS n FROM dead_letters");
    assert_eq!(dl[0]["n"].as_i64(), Some(e.bad as i64), "each dead letter once in the lake");
    // no alert id on the topic with two different payloads
    let n_alerts = query(&s.lake, "SELECT count(*) AS n FROM alerts")[0]["n"].as_i64().unwrap() as usize;
    let msgs = read_all(&s.brokers, &s.alerts, n_alerts, Duration::from_secs(60));
    let mut by_id: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (_, p, _) in &msgs {
        let v: serde_json::Value = serde_json::from_slice(p).unwrap();
        let id = v["id"].as_str().unwrap().to_string();
        if let Some(prev) = by_id.insert(id.clone(), p.clone()) {
            assert_eq!(prev, *p, "alert {id} published with two different payloads");
        }
    }
    assert_eq!(by_id.len(), n_alerts, "every alert of the lake reached the topic");
}

/// A canonical JSON event (from the workload) as an Avro record of `schemas/usage_event.avsc`.
fn avro_event(line: &str) -> Option<Vec<u8>> {
    use apache_avro::Schema;
    use apache_avro::types::Value as A;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let schema = aifinops_schemas::avro::usage_event_avro_schema();
    let Schema::Record(rec) = schema else { panic!("usage_event.avsc is a record") };
    let fields = rec
        .fields
        .iter()
        .map(|f| {
            let j = v.get(&f.name).filter(|x| !x.is_null());
            let value = match (f.name.as_str(), j) {
                ("timestamp", Some(t)) => A::TimestampMillis(t.as_i64()?),
                (_, Some(serde_json::Value::String(s))) => A::String(s.clone()),
                (_, Some(serde_json::Value::Number(n))) => A::Long(n.as_i64().unwrap()),
                (_, _) => A::Null,
            };
            let value = match &f.schema {
                Schema::Union(_) if value == A::Null => A::Union(0, Box::new(A::Null)),
                Schema::Union(u) => {
                    let i = u.variants().iter().position(|b| !matches!(b, Schema::Null)).unwrap();
                    A::Union(i as u32, Box::new(value))
                }
                _ => value,
            };
            Some((f.name.clone(), value))
        })
        .collect::<Option<Vec<_>>>()?;
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value_to_vec(A::Record(fields))
        .ok()?;
    Some(aifinops_schemas::avro::frame(aifinops_schemas::avro::AvroFraming::Confluent { schema_id: 1 }, schema, &body))
}

#[test]
fn avro_topic_with_local_schemas_and_avro_alerts() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), brokers, "avro");
    std::fs::create_dir_all(dir.path().join("avsc")).unwrap();
    std::fs::write(dir.path().join("avsc/1.avsc"), aifinops_schemas::avro::USAGE_EVENT_AVSC).unwrap();
    let mut cfg = std::fs::read_to_string(&s.config).unwrap();
    cfg.push_str(&format!(
        "[kafka.formats]\n\"{}\" = \"avro\"\n[avro]\nschema_files = [\"{}\"]\n",
        s.input,
        dir.path().join("avsc").display()
    ));
    std::fs::write(&s.config, cfg).unwrap();
    // the workload's valid events as Confluent-framed Avro; its bad records stay raw bytes (JSON on an
    // Avro topic) and must be dead letters
    let (lines, e) = workload(3_000, DAY, 6, 20, 33);
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", &s.brokers).create().unwrap();
    let mut raw = 0;
    for l in &lines {
        // the workload's bad records (not JSON, negative or inconsistent counts, bad timestamps) stay raw
        let payload = match avro_event(l) {
            Some(b) if !l.contains("\"event_id\":\"b") => b,
            _ => {
                raw += 1;
                l.as_bytes().to_vec()
            }
        };
        while let Err((e, _)) = p.send(BaseRecord::<(), _>::to(&s.input).payload(&payload)) {
            assert!(e.to_string().contains("Queue full"), "{e}");
            p.poll(Duration::from_millis(50));
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
    let child = start(&s, &["--until-caught-up"], &[("AIFINOPS__KAFKA__ALERT_FORMAT", "avro")]);
    let (status, stderr) = wait_output(child, Duration::from_secs(180));
    assert!(status.success(), "{stderr}");
    assert_lake_totals(&s.lake, &e, &["1h", "1d"]);
    let dl = query(&s.lake, "SELECT kind, count(*) AS n FROM dead_letters GROUP BY kind ORDER BY kind");
    let total: i64 = dl.iter().map(|r| r["n"].as_i64().unwrap()).sum();
    assert_eq!(total, raw, "{dl:?}");
    assert!(dl.iter().any(|r| r["kind"] == "avro_framing"), "{dl:?}");
    // alerts on the topic are Avro single-object encoded `schemas/alert.avsc` records
    let lake_alerts = query(&s.lake, "SELECT id FROM alerts");
    assert!(!lake_alerts.is_empty());
    let msgs = read_all(&s.brokers, &s.alerts, lake_alerts.len(), Duration::from_secs(60));
    assert_eq!(msgs.len(), lake_alerts.len());
    for (_, payload, headers) in &msgs {
        assert_eq!(headers.get("content-type").map(String::as_str), Some("avro/binary"));
        let aifinops_schemas::avro::Frame::SingleObject { fingerprint, body } =
            aifinops_schemas::avro::unframe(payload).unwrap()
        else {
            panic!("not single-object encoded")
        };
        assert_eq!(fingerprint, aifinops_schemas::avro::fingerprint(aifinops_schemas::avro::alert_avro_schema()));
        let mut rest = body;
        let v = apache_avro::reader::datum::GenericDatumReader::builder(aifinops_schemas::avro::alert_avro_schema())
            .build()
            .unwrap()
            .read_value(&mut rest)
            .unwrap();
        let apache_avro::types::Value::Record(fields) = v else { panic!("{v:?}") };
        let id = fields.iter().find(|(n, _)| n == "id").map(|(_, v)| format!("{v:?}")).unwrap();
        assert!(lake_alerts.iter().any(|a| id.contains(a["id"].as_str().unwrap())), "{id}");
    }
}

/// Reads `topic` from the start until a message satisfies `done`; returns what was read and when the
/// first matching message arrived.
fn read_until(
    brokers: &str,
    topic: &str,
    within: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> (Vec<serde_json::Value>, Option<Instant>) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("spike-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
            let hit = done(&v);
            out.push(v);
            if hit {
                return (out, Some(Instant::now()));
            }
        }
    }
    (out, None)
}

/// One hour of the `search` team's traffic: 10-14 calls per key-search-N key (1M input, 100k output tokens of
/// gpt-4o-mini = $0.21 each); `key-search-1` makes `mult` times its calls.
fn search_hour(start_ms: i64, h: i64, mult: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for k in 0..3 {
        let n = (4 + (h * 7 + k) % 3) as usize * if k == 1 { mult } else { 1 };
        for i in 0..n {
            let ts = start_ms + h * 3_600_000 + 10_000 + (i as i64 * 3_000_000 / n as i64);
            lines.push(format!(
                r#"{{"event_id":"sp-{h}-{k}-{i}","timestamp":{ts},"provider":"openai","model":"gpt-4o-mini","input_tokens":1000000,"output_tokens":100000,"api_key_id":"key-search-{k}","workflow":"rag"}}"#
            ));
        }
    }
    lines
}

#[test]
fn a_planted_spike_in_kafka_traffic_raises_one_spike_alert_and_one_recovery() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (input, alerts) = (unique("spike-in"), unique("spike-alerts"));
    create_topics(&brokers, &[(&input, 1), (&alerts, 1)]);
    std::fs::write(dir.path().join("owners.toml"), OWNERS).unwrap();
    let lake = dir.path().join("lake");
    let config = dir.path().join("aifinops.toml");
    // a long commit interval: only the watermark passing the hour's end makes the alert's commit
    std::fs::write(
        &config,
        format!(
            "[pipeline]\ncommit_interval = \"60s\"\nbatch_max_wait = \"50ms\"\nidle_timeout = \"120s\"\n\
             [lake]\ndir = \"{}\"\n[owners]\nfile = \"{}\"\n",
            lake.display(),
            dir.path().join("owners.toml").display()
        ),
    )
    .unwrap();
    let s = Setup {
        brokers,
        input,
        alerts,
        dlq: String::new(),
        group: unique("spike-group"),
        config,
        lake,
        metrics_port: 0,
    };
    // 1. eight and a half days of normal hours, consumed by a first run (the lake is the detector's history)
    let now = chrono::Utc::now().timestamp_millis();
    let start_ms = (now - 10 * 86_400_000).div_euclid(3_600_000) * 3_600_000;
    let history: Vec<String> = (0..204).flat_map(|h| search_hour(start_ms, h, 1)).collect();
    produce(&s.brokers, &s.input, &history);
    let (status, stderr) = wait_output(start(&s, &["--until-caught-up"], &[]), Duration::from_secs(180));
    assert!(status.success(), "{stderr}");
    let lake_alerts = query(&s.lake, "SELECT type FROM alerts");
    assert!(lake_alerts.is_empty(), "normal traffic raises nothing: {lake_alerts:?}");

    // 2. a second, long-running run rebuilds the baselines from the lake; key-search-1 spends 20x for an hour
    let child = start(&s, &[], &[("RUST_LOG", "info")]);
    std::thread::sleep(Duration::from_secs(3));
    produce(&s.brokers, &s.input, &search_hour(start_ms, 204, 20));
    // the first call of the next hour, 6 s in, moves the watermark (5 s delay) past the spike hour's end
    let next = search_hour(start_ms, 205, 1);
    let (first, rest) = next.split_at(1);
    let first = first[0].replace(
        &format!("\"timestamp\":{}", start_ms + 205 * 3_600_000 + 10_000),
        &format!("\"timestamp\":{}", start_ms + 205 * 3_600_000 + 6_000),
    );
    produce(&s.brokers, &s.input, &[first]);
    let sent = Instant::now();
    let (got, at) = read_until(&s.brokers, &s.alerts, Duration::from_secs(60), |v| v["type"] == "aifinops.spend.spike");
    let at = at.unwrap_or_else(|| panic!("no spike alert within 60 s: {got:?}"));
    let latency = at.duration_since(sent);
    println!("spike alert latency from the watermark-moving record: {} ms", latency.as_millis());
    assert!(latency < Duration::from_secs(10), "{latency:?}");
    // 3. the rest of a normal hour, then the next hour's first call: the recovery
    produce(&s.brokers, &s.input, rest);
    let after = search_hour(start_ms, 206, 1);
    produce(&s.brokers, &s.input, &after[..1]);
    let (got, at) =
        read_until(&s.brokers, &s.alerts, Duration::from_secs(60), |v| v["type"] == "aifinops.spend.recovered");
    assert!(at.is_some(), "no recovery within 60 s: {got:?}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (status, stderr) = wait_output(child, Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("spike baselines rebuilt from the lake"), "{stderr}");

    // 4. a restart over the same lake and topic re-alerts nothing
    let (status, stderr) = wait_output(start(&s, &["--until-caught-up"], &[]), Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    let msgs = read_all(&s.brokers, &s.alerts, 2, Duration::from_secs(30));
    let alerts: Vec<serde_json::Value> = msgs.iter().map(|(_, p, _)| serde_json::from_slice(p).unwrap()).collect();
    let kinds: Vec<&str> = alerts.iter().map(|a| a["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["aifinops.spend.spike", "aifinops.spend.recovered"], "{alerts:#?}");
    let (spike, rec) = (&alerts[0]["data"], &alerts[1]["data"]);
    assert_eq!(alerts[0]["subject"], "owner/search");
    assert_eq!(spike["owner"], "search");
    assert_eq!(spike["approver"], "vp-search@example.com");
    assert_eq!(spike["risk_owner"], "search-lead@example.com");
    // the key id that spent 20x (a key id, not a secret: secrets would be fingerprinted at ingest)
    let identity = spike["identity"].as_str().unwrap();
    assert_eq!(identity, "key-search-1");
    assert_eq!(spike["top_identities"][0]["identity"], identity);
    assert_eq!(spike["top_models"][0]["model"], "openai/gpt-4o-mini");
    assert_eq!(spike["top_workflows"][0]["workflow"], "rag");
    let actual: f64 = spike["actual_usd"].as_str().unwrap().parse().unwrap();
    let expected: f64 = spike["expected_usd"].as_str().unwrap().parse().unwrap();
    let calls = search_hour(start_ms, 204, 20).len() as f64;
    assert!((actual - calls * 0.21).abs() < 0.01, "{actual} for {calls} calls of $0.21");
    assert!(expected > 2.0 && expected < 3.2, "{expected}: 10-14 calls of $0.21");
    for c in ["NIST AI RMF", "OWASP Non-Human"] {
        assert!(spike["controls"].to_string().contains(c), "{spike}");
    }
    assert_eq!(rec["spike_id"], alerts[0]["id"]);
    assert_eq!(rec["duration_windows"], 1);
}
