//! Operating `aifinops run`: the Prometheus endpoint, `/healthz`, `/readyz`, JSON logs, and the config
//! tools (`config example`, `config check`). `./scripts/test ops` runs these.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{create_topics, produce_bytes};
use common::*;

/// `GET path` on 127.0.0.1:port: (status code, body); None when nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> Option<String>) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < within, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A labelled series' value in a scrape: `name{labels}` exactly as rendered (labels in their order).
fn series(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        let (n, rest) = key.split_once('{').unwrap_or((key, "}"));
        if n != name {
            return None;
        }
        let set = rest.trim_end_matches('}');
        labels.iter().all(|(k, v)| set.split(',').any(|p| p == format!("{k}=\"{v}\""))).then(|| value.parse().ok())?
    })
}

fn committed_offsets(lake: &Path) -> i64 {
    let Ok(rd) = std::fs::read_dir(lake.join("_aifinops/manifest")) else { return 0 };
    let mut names: Vec<_> =
        rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    names.sort();
    let Some(last) = names.last() else { return 0 };
    let Ok(m) = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(last).unwrap_or_default()) else {
        return 0;
    };
    m["offsets"]
        .as_object()
        .map(|t| t.values().flat_map(|p| p.as_object().unwrap().values().map(|o| o.as_i64().unwrap())).sum())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn_run(config: &Path, extra: &[&str], log: &Path) -> Child {
    Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(config)
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn stop(child: Child, log: &Path) -> String {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut child = child;
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("run did not stop on SIGTERM:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(log).unwrap();
    assert!(child.wait().unwrap().success(), "SIGTERM: exit 0\n{log}");
    log
}

#[test]
fn ops_healthz_is_up_and_readyz_says_what_is_missing_without_a_broker() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("aifinops.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"127.0.0.1:1\"\ntopics = [\"nowhere\"]\n[lake]\ndir = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.path().join("lake").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("run.log");
    let child = spawn_run(&config, &[], &log);
    let up = wait_for("/healthz", Duration::from_secs(60), || get(port, "/healthz").map(|r| format!("{r:?}")));
    assert!(up.contains("200") && up.contains("ok"), "{up}");
    // give librdkafka time to fail its first connection attempts
    std::thread::sleep(Duration::from_secs(3));
    let (code, body) = get(port, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("not ready"), "{body}");
    assert!(body.contains("FAIL assigned partitions: 0"), "{body}");
    assert!(body.contains("FAIL broker reachable"), "{body}");
    assert!(body.contains("ok   lake writable: yes"), "{body}");
    assert_eq!(get(port, "/nope").unwrap().0, 404);
    let (code, metrics) = get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("# HELP") || metrics.is_empty() || metrics.contains("aifinops_"), "{metrics}");
    stop(child, &log);
}

#[test]
fn ops_metrics_per_topic_partition_and_type_readyz_and_json_logs_while_running() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = unique("ops-in");
    let (alerts, dlq) = (unique("ops-alerts"), unique("ops-dlq"));
    create_topics(&brokers, &[(&input, 2), (&alerts, 1), (&dlq, 1)]);
    // the demo's synthetic day: 4 owners' traffic, an unpriced model, 6 malformed records, 10 duplicates
    let day = dir.path().join("day.ndjson");
    ok(&aifinops(&["gen", "--day", "2026-10-14", "--out", day.to_str().unwrap()]));
    let lines: Vec<Vec<u8>> = std::fs::read_to_string(&day).unwrap().lines().map(|l| l.as_bytes().to_vec()).collect();
    produce_bytes(&brokers, &input, &lines);
    let total = lines.len() as i64;
    let port = free_port();
    let lake = dir.path().join("lake");
    let config = dir.path().join("aifinops.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
commit_interval = "500ms"
batch_max_wait = "200ms"
[kafka]
brokers = "{brokers}"
topics = ["{input}"]
group = "{group}"
alert_topic = "{alerts}"
dead_letter_topic = "{dlq}"
session_timeout = "6s"
max_poll_interval = "10s"
[kafka.formats]
"{input}" = "canonical"
[lake]
dir = "{lake}"
[metrics]
listen = "127.0.0.1:{port}"
[log]
format = "json"
level = "info"
"#,
            group = unique("ops-group"),
            lake = lake.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("run.log");
    let child = spawn_run(&config, &[], &log);
    wait_for("every offset committed to the lake", Duration::from_secs(120), || {
        (committed_offsets(&lake) >= total).then(String::new)
    });
    // readiness: partitions assigned, broker up, lake writable
    let ready =
        wait_for("/readyz 200", Duration::from_secs(30), || get(port, "/readyz").filter(|r| r.0 == 200).map(|r| r.1));
    assert!(ready.starts_with("ready") && ready.contains("ok   assigned partitions: 2"), "{ready}");
    assert!(ready.contains("ok   broker reachable: yes"), "{ready}");
    // metrics: lag reaches 0 on both partitions once the statistics catch up
    let labels_in = [("topic", input.as_str()), ("format", "canonical")];
    let m = wait_for("lag 0 and every record counted", Duration::from_secs(30), || {
        let (_, m) = get(port, "/metrics")?;
        let lag0 = series(&m, "aifinops_consumer_lag_messages", &[("topic", &input), ("partition", "0")]);
        let lag1 = series(&m, "aifinops_consumer_lag_messages", &[("topic", &input), ("partition", "1")]);
        let records = series(&m, "aifinops_input_records_total", &labels_in);
        (lag0 == Some(0.0) && lag1 == Some(0.0) && records == Some(total as f64)).then_some(m)
    });
    let decoded = series(&m, "aifinops_input_events_decoded_total", &labels_in).unwrap();
    let priced = series(&m, "aifinops_input_events_priced_total", &labels_in).unwrap();
    let unpriced = metric(&m, "aifinops_unpriced_requests_total").unwrap();
    assert_eq!(decoded, (total - 6) as f64, "all but the 6 malformed records decoded:\n{m}");
    assert_eq!(decoded, metric(&m, "aifinops_events_decoded_total").unwrap(), "per topic = all topics");
    assert!(unpriced > 0.0);
    assert_eq!(priced + unpriced, decoded, "priced + unpriced = decoded");
    for p in ["0", "1"] {
        let w = series(&m, "aifinops_partition_watermark_seconds", &[("topic", &input), ("partition", p)]).unwrap();
        assert!((1_792_000_000.0..1_792_100_000.0).contains(&w), "partition {p} clock in 2026-10-14: {w}");
    }
    let dead: f64 = m
        .lines()
        .filter(|l| l.starts_with("aifinops_dead_letters_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(dead, 6.0, "dead letters by reason:\n{m}");
    assert!(series(&m, "aifinops_window_open_windows", &[("window", "1h")]).is_some(), "{m}");
    assert!(series(&m, "aifinops_window_open_keys", &[("window", "1d")]).is_some(), "{m}");
    assert!(metric(&m, "aifinops_lake_commits_total").unwrap() >= 1.0);
    assert!(metric(&m, "aifinops_lake_bytes_total").unwrap() > 1000.0);
    assert_eq!(metric(&m, "aifinops_assigned_partitions"), Some(2.0));
    assert_eq!(metric(&m, "aifinops_kafka_connected"), Some(1.0));
    assert!(metric(&m, "aifinops_duplicate_events_total").unwrap() >= 10.0);
    assert!(m.contains("# HELP aifinops_consumer_lag_messages"), "metrics describe themselves");
    // alerts by type, once the publisher has sent them
    let m = wait_for("an unpriced-model alert published", Duration::from_secs(30), || {
        let (_, m) = get(port, "/metrics")?;
        series(&m, "aifinops_alerts_published_total", &[("type", "aifinops.model.unpriced")]).map(|_| m)
    });
    assert!(series(&m, "aifinops_alerts_published_total", &[("type", "aifinops.spend.unattributed")]).is_some(), "{m}");
    assert_eq!(metric(&m, "aifinops_alert_publish_failures_total").unwrap_or(0.0), 0.0);

    let log = stop(child, &log);
    // structured logs: one JSON object per line; dead letters name topic/partition@offset
    let mut dead_lines = 0;
    for l in log.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
        if v["fields"]["message"] == "dead letter" {
            dead_lines += 1;
            let src = v["fields"]["source"].as_str().unwrap();
            assert!(src.starts_with(&format!("{input}/")) && src.contains('@'), "{src}");
            assert!(v["fields"]["kind"].is_string() && v["fields"]["reason"].is_string(), "{l}");
        }
    }
    assert_eq!(dead_lines, 6, "{log}");
    assert!(log.lines().filter(|l| !l.trim().is_empty()).all(|l| l.starts_with('{')), "only JSON lines:\n{log}");
    assert!(log.contains("\"summary\":\"run: "), "the summary is a log event too:\n{log}");
}

#[test]
fn ops_config_example_is_fully_commented_and_config_check_says_precisely_what_is_wrong() {
    let example = ok(&aifinops(&["config", "example"]));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("aifinops.toml");
    std::fs::write(&f, &example).unwrap();
    let checked = ok(&aifinops(&["config", "check", f.to_str().unwrap()]));
    assert!(checked.contains(": ok"), "{checked}");
    // every section of the configuration is in the example, and every key has a comment near it
    for section in [
        "[pipeline]",
        "[kafka]",
        "[lake]",
        "[prices]",
        "[owners]",
        "[avro]",
        "[drift]",
        "[retry_storm]",
        "[spike]",
        "[metrics]",
        "[log]",
        "[[budget]]",
    ] {
        assert!(example.contains(section), "{section} in the example");
    }
    // docs/config.md documents every key of the example
    let doc = std::fs::read_to_string(common::repo().join("docs/config.md")).unwrap();
    let mut section = String::new();
    let mut keys = 0;
    for l in example.lines() {
        let t = l.trim();
        let t = t.strip_prefix("# ").unwrap_or(t); // commented-out keys (optional settings)
        if t.starts_with('[') {
            section = t.trim_start_matches('[').split(']').next().unwrap().to_string();
            continue;
        }
        let Some((k, _)) = t.split_once(" = ") else { continue };
        let k = k.trim();
        // free-form maps (topic formats, librdkafka properties) have no fixed keys
        if !k.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') || section.starts_with("kafka.")
        {
            continue;
        }
        keys += 1;
        assert!(doc.contains(&format!("`{section}.{k}`")), "docs/config.md lacks `{section}.{k}`");
    }
    assert!(keys > 60, "{keys} keys checked");
    // precise errors: the key, the file, the missing file
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[kafka]\nbroker = \"x:1\"\n").unwrap();
    let e = aifinops(&["config", "check", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && err.contains("broker") && err.contains("bad.toml"), "{err}");
    std::fs::write(&bad, "[owners]\nfile = \"/nonexistent/owners.toml\"\n").unwrap();
    let e = aifinops(&["config", "check", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && err.contains("/nonexistent/owners.toml"), "{err}");
    std::fs::write(&bad, "[prices]\nfiles = [\"/nonexistent/prices.json\"]\n").unwrap();
    let e = aifinops(&["config", "check", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && err.contains("/nonexistent/prices.json"), "{err}");
    std::fs::write(&bad, "[metrics]\nlisten = \"nine-eight\"\n").unwrap();
    let e = aifinops(&["config", "check", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && err.contains("metrics.listen"), "{err}");
}

#[test]
fn ops_replay_shows_a_progress_bar_with_events_per_second_on_a_terminal_and_no_escapes_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    ok(&aifinops(&["gen", "--events", "30000", "--day", "2026-10-01", "--out", input.to_str().unwrap()]));
    // standard error on a pseudo-terminal: the indicatif bar with events/s
    let script = r#"
import os, pty, subprocess, sys
m, s = pty.openpty()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=s)
os.close(s)
out = b""
while True:
    try:
        d = os.read(m, 65536)
    except OSError:
        break
    if not d:
        break
    out += d
sys.stdout.write(out.decode(errors="replace"))
sys.exit(p.wait())
"#;
    let tty_lake = dir.path().join("tty-lake");
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(bin())
        .args(["replay", "--lake", tty_lake.to_str().unwrap(), input.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(tty.contains("events/s") && tty.contains("[="), "a progress bar with events/s:\n{tty}");
    assert!(tty.contains("replay: 30000 records"), "then the summary:\n{tty}");
    // piped: plain text, no terminal escapes
    let piped =
        aifinops(&["replay", "--lake", dir.path().join("pipe-lake").to_str().unwrap(), input.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success() && err.contains("replay: 30000 records"), "{err}");
    assert!(!err.contains('\x1b') && !err.contains("events/s,"), "no bar when not on a terminal:\n{err}");
}
