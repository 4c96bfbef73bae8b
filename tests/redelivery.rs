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
