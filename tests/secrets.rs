//! Secrets planted in gateway records (identity fields, tags, free text, rejected records) never reach
//! the lake, the alert topic, the dead-letter topic, the metrics or the logs: only their fingerprints do.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{create_topics, produce_bytes, read_payloads};
use common::*;

const DAY: i64 = 1_764_460_800_000; // 2025-11-30T00:00:00Z

/// Realistic credentials: OpenAI project and legacy keys, an Anthropic key, AWS access key id and secret,
/// a bearer JWT, a GitHub token.
const SECRETS: [&str; 7] = [
    "sk-proj-Q1w2E3r4T5y6U7i8O9p0AaSsDdFfGgHhJjKkLl",
    "sk-ant-api03-Zx81LeakedQa7Rt5Wv3Yb2Nc4Md6Kf9Hg0-AbCdEf",
    "AKIAIOSFODNN7EXAMPL3",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY1a",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudC03In0.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk",
    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "sk-live-9fQ2mZ7xL4vB8nR1tY6wE3uI5oP0aS2dF",
];

/// Records that carry the secrets where gateways put them; some valid, some rejected.
fn records() -> Vec<Vec<u8>> {
    let s = SECRETS;
    let ts = |i: i64| DAY + 10 * 3_600_000 + i * 1_000;
    let mut v = vec![
        // the key itself as the identity (a misconfigured gateway logging the key, not its id)
        format!(
            r#"{{"event_id":"s1","timestamp":{},"provider":"openai","model":"gpt-4o","input_tokens":100,"output_tokens":10,"api_key_id":"{}"}}"#,
            ts(1),
            s[0]
        ),
        format!(
            r#"{{"event_id":"s2","timestamp":{},"provider":"anthropic","model":"claude-haiku-4-5","input_tokens":100,"output_tokens":10,"api_key_id":"{}"}}"#,
            ts(2),
            s[1]
        ),
        format!(
            r#"{{"event_id":"s3","timestamp":{},"provider":"bedrock","model":"anthropic.claude-3-haiku-20240307-v1:0","input_tokens":100,"output_tokens":10,"service_account":"{}"}}"#,
            ts(3),
            s[2]
        ),
        // tags and free text: team, project, workflow, environment carrying tokens
        format!(
            r#"{{"event_id":"s4","timestamp":{},"provider":"openai","model":"gpt-4o","input_tokens":100,"output_tokens":10,"api_key_id":"key-search-1","team":"Bearer {}","project":"aws secret {}","workflow":"retry with key {} now","environment":"prod"}}"#,
            ts(4),
            s[4],
            s[3],
            s[6]
        ),
        // an unknown model named after a token (the unpriced-model alert names models)
        format!(
            r#"{{"event_id":"s5","timestamp":{},"provider":"openai","model":"{}","input_tokens":100,"output_tokens":10,"api_key_id":"{}"}}"#,
            ts(5),
            s[5],
            s[6]
        ),
        // rejected records quoting the secrets in the field the reason names, and in broken JSON
        format!(
            r#"{{"event_id":"s6","timestamp":{},"provider":"openai","model":"gpt-4o","input_tokens":100,"output_tokens":10,"status":"{}"}}"#,
            ts(6),
            s[0]
        ),
        format!(
            r#"{{"event_id":"s7","timestamp":{},"provider":"openai","model":"gpt-4o","input_tokens":"{}","output_tokens":10}}"#,
            ts(7),
            s[1]
        ),
        format!(r#"{{"event_id":"s8","authorization":"Bearer {}","api_key":"{}""#, s[4], s[2]),
        format!(
            r#"{{"event_id":"s9","timestamp":"{}","provider":"openai","model":"gpt-4o","input_tokens":1,"output_tokens":1}}"#,
            s[3]
        ),
        // a LiteLLM row with the raw key where the hash belongs
        format!(
            r#"{{"id":"s10","call_type":"acompletion","startTime":"2025-11-30T10:00:10Z","endTime":"2025-11-30T10:00:11Z","model":"gpt-4o","custom_llm_provider":"openai","status":"success","response_cost":0.001,"prompt_tokens":100,"completion_tokens":10,"total_tokens":110,"metadata":{{"user_api_key_hash":"{}","user_api_key_alias":null,"requester_ip_address":"10.0.0.1"}}}}"#,
            s[6]
        ),
    ];
    // plus ordinary traffic, so windows, alerts and metrics have something to say
    for i in 0..50 {
        v.push(format!(r#"{{"event_id":"ok{i}","timestamp":{},"provider":"openai","model":"gpt-4o-mini","input_tokens":1000,"output_tokens":100,"api_key_id":"key-search-2"}}"#, ts(20 + i)));
    }
    v.into_iter().map(String::into_bytes).collect()
}

fn assert_clean(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for s in SECRETS {
        // the distinctive tail of each secret (a fragment would leak it just the same)
        let tail = &s[s.len() - 12..];
        assert!(!text.contains(tail), "{what} contains the secret {s}:\n{}", &text[..text.len().min(4000)]);
    }
}

fn lake_bytes(lake: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    let mut stack = vec![lake.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                all.extend(std::fs::read(&p).unwrap());
            }
        }
    }
    all
}

/// The lake's files (state, manifests, outbox) byte for byte, and its Parquet tables decoded (compressed
/// pages would hide a secret from a byte scan).
fn assert_lake_clean(lake: &std::path::Path) {
    let all = lake_bytes(lake);
    assert!(all.len() > 10_000, "the lake was written");
    assert_clean("the lake's files", &all);
    for sql in [
        "SELECT * FROM rollups",
        "SELECT id, type, owner, subject, data, event FROM alerts",
        "SELECT source, kind, reason, CAST(raw AS VARCHAR) AS raw FROM dead_letters",
    ] {
        let rows = query(lake, sql);
        assert!(!rows.is_empty(), "{sql}");
        assert_clean(sql, serde_json::to_string(&rows).unwrap().as_bytes());
    }
}

#[test]
fn secrets_in_files_leave_only_fingerprints_in_the_lake_and_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    let mut text = Vec::new();
    for r in records() {
        text.extend(r);
        text.push(b'\n');
    }
    std::fs::write(&input, &text).unwrap();
    std::fs::write(dir.path().join("owners.toml"), OWNERS).unwrap();
    let lake = dir.path().join("lake");
    let out = aifinops_env(
        &[
            "replay",
            "--lake",
            lake.to_str().unwrap(),
            "--owners",
            dir.path().join("owners.toml").to_str().unwrap(),
            input.to_str().unwrap(),
        ],
        &[("RUST_LOG", "debug")],
    );
    ok(&out);
    assert_clean("replay's logs", &out.stderr);
    assert_clean("replay's output", &out.stdout);
    assert_lake_clean(&lake);
    // the fingerprints are there instead, stable and usable
    let ids = query(&lake, "SELECT DISTINCT identity FROM rollups WHERE identity LIKE 'fp:%' ORDER BY identity");
    assert!(ids.len() >= 3, "{ids:?}");
    let dl = query(&lake, "SELECT count(*) AS n FROM dead_letters");
    assert_eq!(dl[0]["n"].as_i64(), Some(4), "the four rejected records are dead letters");
}

#[test]
fn secrets_through_kafka_reach_no_topic_metric_or_log() {
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (input, alerts, dlq) = (unique("secrets-in"), unique("secrets-alerts"), unique("secrets-dlq"));
    create_topics(&brokers, &[(&input, 2), (&alerts, 1), (&dlq, 1)]);
    std::fs::write(dir.path().join("owners.toml"), OWNERS).unwrap();
    let lake = dir.path().join("lake");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("aifinops.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\ncommit_interval = \"500ms\"\nbatch_max_wait = \"100ms\"\nidle_timeout = \"2s\"\n\
             [kafka]\ndead_letter_topic = \"{dlq}\"\n[lake]\ndir = \"{}\"\n[owners]\nfile = \"{}\"\n\
             [metrics]\nlisten = \"127.0.0.1:{port}\"\n[[budget]]\nname = \"tiny\"\nowner = \"*\"\nperiod = \"day\"\nlimit_usd = \"0.001\"\n",
            lake.display(),
            dir.path().join("owners.toml").display()
        ),
    )
    .unwrap();
    produce_bytes(&brokers, &input, &records());
    let child = Command::new(bin())
        .args(["run", "--config", config.to_str().unwrap(), "--brokers", &brokers, "--topic", &input])
        .args(["--group", &unique("secrets"), "--alert-topic", &alerts])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.path().join("run.log")).unwrap()))
        .spawn()
        .unwrap();
    // wait until every record is committed, scrape the metrics, then stop it
    let t0 = Instant::now();
    let total = records().len() as i64;
    let mut metrics = String::new();
    loop {
        let committed = if lake.join("_aifinops").exists() {
            query(&lake, "SELECT count(*) AS n FROM dead_letters").first().and_then(|r| r["n"].as_i64())
        } else {
            None
        };
        if committed == Some(4) {
            metrics = scrape(port);
            if metrics.contains("aifinops_events_decoded_total") {
                break;
            }
        }
        if t0.elapsed() > Duration::from_secs(90) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read(dir.path().join("run.log")).unwrap();
            let err = String::from_utf8_lossy(&log);
            panic!(
                "the run did not commit the {total} records: {committed:?} dead letters, metrics {:?}; log tail:\n{}",
                &metrics[..metrics.len().min(300)],
                &err[err.len().saturating_sub(3000)..]
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut child = child;
    let status = child.wait().unwrap();
    let log = std::fs::read(dir.path().join("run.log")).unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&log));
    assert!(log.len() > 100_000, "debug logs were written");
    assert_clean("run's logs", &log);
    assert_clean("the metrics", metrics.as_bytes());
    assert_lake_clean(&lake);
    let a = read_payloads(&brokers, &alerts, 1, Duration::from_secs(30));
    assert!(a.iter().any(|p| String::from_utf8_lossy(p).contains("fp:")), "alerts name fingerprints");
    assert_clean("the alert topic", &a.concat());
    let d = read_payloads(&brokers, &dlq, 4, Duration::from_secs(30));
    assert_eq!(d.len(), 4);
    assert_clean("the dead-letter topic", &d.concat());
}
