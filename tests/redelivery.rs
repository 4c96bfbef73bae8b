//! Redelivery, duplicates and late data through the real test broker: producer retries that duplicate
//! messages, the same events replayed from offset 0 into a second topic, and events up to 48 h late are
//! counted exactly once (dedup by `event_id` within `pipeline.dedup_horizon`, DESIGN.md "Deduplication").

mod common;

use std::process::Command;

use common::kafka::{create_topics, produce_bytes};
use common::*;

const DAY: i64 = 1_764_460_800_000; // 2025-11-30T00:00:00Z

fn run_until_caught_up(config: &std::path::Path, brokers: &str, topics: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(bin());
    cmd.args(["run", "--config", config.to_str().unwrap(), "--brokers", brokers, "--until-caught-up"])
        .args(["--group", &unique("redelivery"), "--alert-topic", &unique("redelivery-alerts")])
        .env("RUST_LOG", "warn");
    for t in topics {
        cmd.args(["--topic", t]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    err
}

#[test]
fn retried_and_replayed_events_count_once_and_late_events_count_too() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    // 48 hours of traffic whose last 20 events arrive 28+ hours late, with 40 exact redeliveries in the file
    let (lines, e) = workload(8_000, DAY, 48, 40, 5);
    let (a, b) = (unique("redelivery-a"), unique("redelivery-b"));
    create_topics(&brokers, &[(&a, 3), (&b, 2)]);
    // topic A: every record, and the first 300 valid ones produced twice more (a producer retrying after a
    // lost ack); topic B: the whole of A's input again (a replay from offset 0 into a second topic)
    let mut first: Vec<Vec<u8>> = lines.iter().map(|l| l.clone().into_bytes()).collect();
    let valid: Vec<&String> = lines.iter().filter(|l| l.contains("\"event_id\":\"ev-")).take(300).collect();
    first.extend(valid.iter().map(|l| l.as_bytes().to_vec()));
    produce_bytes(&brokers, &a, &first);
    produce_bytes(&brokers, &b, &lines.iter().map(|l| l.clone().into_bytes()).collect::<Vec<_>>());
    std::fs::write(dir.path().join("owners.toml"), OWNERS).unwrap();
    let lake = dir.path().join("lake");
    let config = dir.path().join("aifinops.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\ncommit_interval = \"500ms\"\nbatch_max_wait = \"100ms\"\nidle_timeout = \"2s\"\n\
             dedup_horizon = \"72h\"\n[lake]\ndir = \"{}\"\n[owners]\nfile = \"{}\"\n",
            lake.display(),
            dir.path().join("owners.toml").display()
        ),
    )
    .unwrap();
    let err = run_until_caught_up(&config, &brokers, &[&a, &b], &[]);
    // each valid event is in the lake once: 40 in-file redeliveries x 2 topics, 300 producer retries, and
    // the whole second topic are duplicates
    let valid_records = (lines.len() - e.bad) as u64;
    let dups = 40 + 300 + valid_records;
    assert!(err.contains(&format!("{dups} duplicates dropped")), "{dups} duplicates expected: {err}");
    // exact in every window, the 28-hour-late events included (whether they are flagged `late` depends on
    // how far the watermark of all partitions had moved when they were read; tests/e2e_replay.rs checks the
    // flag on an ordered file)
    assert_lake_totals(&lake, &e, &["1m", "1h", "1d"]);

    // running again in a new consumer group over the same lake reads nothing: the offsets live in the lake
    let err = run_until_caught_up(&config, &brokers, &[&a, &b], &[]);
    assert!(err.contains("run: 0 records"), "the lake's committed offsets hold across consumer groups: {err}");
    assert_lake_totals(&lake, &e, &["1m", "1h", "1d"]);
}

#[test]
fn a_partition_whose_clock_jumps_a_day_ahead_does_not_close_anyone_elses_windows() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("clock-jump");
    create_topics(&brokers, &[(&topic, 2)]);
    let now = chrono::Utc::now().timestamp_millis();
    let base = (now - 3 * 3_600_000).div_euclid(3_600_000) * 3_600_000;
    let ev = |id: String, ts: i64| {
        format!(
            r#"{{"event_id":"{id}","timestamp":{ts},"provider":"openai","model":"gpt-4o-mini","input_tokens":1000,"output_tokens":100,"api_key_id":"key-search-1"}}"#
        )
    };
    let p0: Vec<String> = (0..200).map(|i| ev(format!("p0-{i}"), base + i * 36_000)).collect();
    let mut p1: Vec<String> = (0..100).map(|i| ev(format!("p1-{i}"), base + i * 72_000)).collect();
    // a producer whose clock is a day ahead
    p1.extend((0..10).map(|i| ev(format!("future-{i}"), now + 86_400_000 + i)));
    common::kafka::produce_to(&brokers, &topic, 0, &p0);
    common::kafka::produce_to(&brokers, &topic, 1, &p1);
    std::fs::write(dir.path().join("owners.toml"), OWNERS).unwrap();
    let lake = dir.path().join("lake");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("aifinops.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\ncommit_interval = \"500ms\"\nbatch_max_wait = \"100ms\"\nidle_timeout = \"2s\"\n\
             [lake]\ndir = \"{}\"\n[owners]\nfile = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            lake.display(),
            dir.path().join("owners.toml").display()
        ),
    )
    .unwrap();
    let child = Command::new(bin())
        .args(["run", "--config", config.to_str().unwrap(), "--brokers", &brokers, "--topic", &topic])
        .args(["--group", &unique("clock"), "--alert-topic", &unique("clock-alerts")])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // every normal event reaches closed windows: the watermark moved to wall clock + skew, not a day ahead
    let t0 = std::time::Instant::now();
    let hour_rows = |lake: &std::path::Path| -> i64 {
        if !lake.join("_aifinops").exists() {
            return 0;
        }
        query(lake, "SELECT sum(requests) AS r FROM rollups WHERE \"window\" = '1h'")
            .first()
            .and_then(|r| r.get("r").and_then(|v| v.as_i64()))
            .unwrap_or(0)
    };
    while hour_rows(&lake) < 300 {
        assert!(t0.elapsed() < std::time::Duration::from_secs(60), "normal windows did not close");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    let m = scrape(port);
    assert_eq!(metric(&m, "aifinops_future_events_total"), Some(10.0), "{m}");
    assert_eq!(hour_rows(&lake), 300, "the day-ahead events' windows are still open");
    let future = query(
        &lake,
        &format!("SELECT count(*) AS n FROM rollups WHERE window_start > to_timestamp_millis({})", now + 2 * 3_600_000),
    );
    assert_eq!(future[0]["n"].as_i64(), Some(0), "no window beyond wall clock + skew closed");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut child = child;
    assert!(child.wait().unwrap().success());
    // the end of input flushes them: nothing lost
    run_until_caught_up(&config, &brokers, &[&topic], &[]);
    assert_eq!(hour_rows(&lake), 310);
}
