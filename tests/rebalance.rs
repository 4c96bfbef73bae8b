//! Several `run` members of one consumer group over one lake (issue 5, "Rebalance"), while the input keeps
//! arriving, with redeliveries that land in other partitions than their originals and events sent into two
//! partitions at once:
//! - member-a starts alone and freezes in the middle of a commit (`AIFINOPS_STALL=…:stop`, SIGSTOP: a long
//!   stop-the-world pause); b and c join and claim its partitions; when a continues, its commit is fenced;
//! - b leaves (SIGTERM); d joins, consumes, commits and is killed for good (SIGKILL); a and c leave, and e,
//!   under another name and in a new group, adopts d's open windows and claims every partition.
//!
//! At the end the lake's totals equal the input's exactly, every alert id is committed and published once,
//! a budget over all members' spend fires each threshold once, and the commit chains of all writers together
//! cover every partition's offsets exactly once: no offset range committed by two members, none missing. A
//! watcher thread reads every manifest of every writer as it appears (a chain keeps only its last 20).
//! `AIFINOPS_REBALANCE_KEEP=1` keeps the work directory (the lake and each member's log).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kafka::{create_topics, produce_to};
use common::*;

const DAY: i64 = 1_764_460_800_000; // 2025-11-30T00:00:00Z
const PARTITIONS: i32 = 6;

/// (writer, seq) -> the manifest.
type Seen = Arc<Mutex<BTreeMap<(String, u64), serde_json::Value>>>;

fn watch(lake: PathBuf, seen: Seen, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        loop {
            let done = stop.load(Ordering::SeqCst);
            collect(&lake, &seen);
            if done {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

fn collect(lake: &Path, seen: &Seen) {
    let Ok(writers) = std::fs::read_dir(lake.join("_aifinops/writers")) else { return };
    for w in writers.flatten() {
        let name = w.file_name().to_string_lossy().to_string();
        let Ok(rd) = std::fs::read_dir(w.path().join("manifest")) else { continue };
        for e in rd.flatten() {
            let f = e.file_name().to_string_lossy().to_string();
            let Some(seq) = f.strip_suffix(".json").and_then(|s| s.parse::<u64>().ok()) else { continue };
            if seen.lock().unwrap().contains_key(&(name.clone(), seq)) {
                continue;
            }
            // renamed into place whole: a failed read means cleanup removed it meanwhile
            let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
            let m: serde_json::Value = serde_json::from_str(&text).expect("a manifest is whole");
            seen.lock().unwrap().insert((name.clone(), seq), m);
        }
    }
}

/// Offsets committed so far: for each partition, its owner's (per the ledger) committed position.
fn committed(lake: &Path) -> i64 {
    let Ok(text) = std::fs::read_to_string(lake.join("_aifinops/ledger.json")) else { return 0 };
    let ledger: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut total = 0;
    for (topic, parts) in ledger["partitions"].as_object().unwrap() {
        for (p, owner) in parts.as_object().unwrap() {
            let w = owner["writer"].as_str().unwrap();
            let dir = lake.join("_aifinops/writers").join(w).join("manifest");
            let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
            names.retain(|p| p.extension().is_some_and(|e| e == "json"));
            names.sort();
            let own = names
                .last()
                .and_then(|f| std::fs::read_to_string(f).ok())
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|m| m["offsets"][topic][p].as_i64());
            total += own.unwrap_or(0).max(owner["from"].as_i64().unwrap_or(0));
        }
    }
    total
}

/// A member writing its log to `<lake>.<writer>.log` (a pipe nobody reads would block it).
fn member(config: &Path, brokers: &str, topic: &str, group: &str, writer: &str, env: &[(&str, &str)]) -> Child {
    let lake = config.parent().unwrap().join("lake");
    let log = std::fs::File::create(lake.with_extension(format!("{writer}.log"))).unwrap();
    Command::new(bin())
        .envs(env.iter().copied())
        .args(["run", "--config", config.to_str().unwrap(), "--brokers", brokers, "--topic", topic])
        .args(["--group", group])
        .env("AIFINOPS__LAKE__WRITER", writer)
        .env("RUST_LOG", "info,aifinops_sink::lake=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn aifinops run")
}

/// Whether a chain has a commit that consumed offsets: a manifest (`*.json`), not one still being written
/// (`*.tmp`, whose rename is the commit point: a member killed before it has committed nothing).
fn consumed_by(manifests: &Path) -> bool {
    std::fs::read_dir(manifests).into_iter().flatten().flatten().any(|e| {
        e.path().extension().is_some_and(|x| x == "json")
            && std::fs::read_to_string(e.path())
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|m| m["ranges"].as_object().is_some_and(|r| !r.is_empty()))
    })
}

/// Whether a process is stopped (SIGSTOP): state `T` in /proc/<pid>/stat.
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('T')))
        .unwrap_or(false)
}

/// The writers named as owners in the lake's ledger.
fn owners(lake: &Path) -> String {
    let text = std::fs::read_to_string(lake.join("_aifinops/ledger.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let mut out = Vec::new();
    for parts in v["partitions"].as_object().into_iter().flat_map(|t| t.values()) {
        for o in parts.as_object().into_iter().flat_map(|p| p.values()) {
            out.push(o["writer"].as_str().unwrap_or_default().to_string());
        }
    }
    out.join(",")
}

/// SIGTERM, then the exit status and the log.
fn stop(mut c: Child, within: Duration, log: PathBuf) -> (bool, String) {
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + within;
    while c.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = c.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = c.wait().unwrap();
    (status.success(), std::fs::read_to_string(log).unwrap_or_default())
}

fn wait_for(lake: &Path, at_least: i64, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let n = committed(lake);
        if n >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {n} of {at_least} offsets committed after {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn produce(brokers: &str, topic: &str, lines: &[(usize, String)]) {
    for p in 0..PARTITIONS {
        let part: Vec<String> =
            lines.iter().filter(|(i, _)| *i as i32 % PARTITIONS == p).map(|(_, l)| l.clone()).collect();
        produce_to(brokers, topic, p, &part);
    }
}

#[test]
fn rebalance_members_join_and_leave_over_one_lake_with_exact_totals_and_each_offset_committed_once() {
    let Some(brokers) = brokers() else { return };
    let mut dir = tempfile::tempdir().unwrap();
    if std::env::var("AIFINOPS_REBALANCE_KEEP").is_ok() {
        dir.disable_cleanup(true);
        eprintln!("rebalance: work directory kept: {}", dir.path().display());
    }
    let topic = unique("rebalance-in");
    let alerts = unique("rebalance-alerts");
    let group = unique("rebalance-group");
    let dlq = unique("rebalance-dlq");
    create_topics(&brokers, &[(&topic, PARTITIONS), (&alerts, 1), (&dlq, 1)]);
    std::fs::write(dir.path().join("owners.toml"), OWNERS).unwrap();
    let lake = dir.path().join("lake");
    let config = dir.path().join("aifinops.toml");
    // 60,000 calls over a day, then 300 redeliveries (each in another partition than its original) and bad records
    let (lines, e) = workload(60_000, DAY, 24, 300, 4242);
    // a day budget of the search owner at 90 % of its day's spend: only the members' spend together crosses
    // 100 %, and each threshold fires once for the lake, not once per member
    let limit = Expected::cost_str(e.per_owner_cost_pico["search"] * 9 / 10);
    std::fs::write(
        &config,
        format!(
            "[pipeline]\ncommit_interval = \"1s\"\nbatch_max_wait = \"200ms\"\nbatch_max_events = 2000\nidle_timeout = \"5s\"\n\
             [kafka]\nalert_topic = \"{alerts}\"\ndead_letter_topic = \"{dlq}\"\nsession_timeout = \"6s\"\nmax_poll_interval = \"10s\"\n\
             [lake]\ndir = \"{}\"\n[owners]\nfile = \"{}\"\n\
             [[budget]]\nname = \"search-daily\"\nowner = \"search\"\nperiod = \"day\"\nlimit_usd = \"{limit}\"\n",
            lake.display(),
            dir.path().join("owners.toml").display()
        ),
    )
    .unwrap();
    let mut lines: Vec<(usize, String)> = lines.into_iter().enumerate().collect();
    // and 300 events of the last third sent twice at once, the copy in the next partition: two members read
    // them concurrently, and whichever commits second must not count them again
    let copies: Vec<(usize, String)> = lines[40_000..40_300].iter().map(|(i, l)| (i + 1, l.clone())).collect();
    lines.extend(copies);
    let total = lines.len() as i64;
    let thirds = [&lines[..20_000], &lines[20_000..40_000], &lines[40_000..50_000], &lines[50_000..]];

    let seen: Seen = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch(lake.clone(), seen.clone(), done.clone());

    produce(&brokers, &topic, thirds[0]);
    // member-a starts alone and stops (SIGSTOP, heartbeats included) in its 2nd commit that consumed offsets,
    // its data and state written, its commit point not taken. b and c join; once a's session has timed out
    // they own every partition. Then a continues: its commit must be fenced, and nothing of it visible.
    // (small batches, a commit after each: its second commit comes before it has read everything)
    let a = member(
        &config,
        &brokers,
        &topic,
        &group,
        "member-a",
        &[
            ("AIFINOPS_STALL", "before_commit:2:stop"),
            ("AIFINOPS__PIPELINE__BATCH_MAX_EVENTS", "500"),
            ("AIFINOPS__PIPELINE__COMMIT_INTERVAL", "0s"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while !stopped(a.id()) {
        assert!(Instant::now() < deadline, "member-a never reached its second commit");
        std::thread::sleep(Duration::from_millis(50));
    }
    let b = member(&config, &brokers, &topic, &group, "member-b", &[]);
    let c = member(&config, &brokers, &topic, &group, "member-c", &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while owners(&lake).contains("member-a") {
        assert!(Instant::now() < deadline, "b and c never took the partitions of the stopped member-a");
        std::thread::sleep(Duration::from_millis(200));
    }
    unsafe { libc::kill(a.id() as i32, libc::SIGCONT) };
    wait_for(&lake, 20_000, Duration::from_secs(120), "b and c took over from member-a");
    produce(&brokers, &topic, thirds[1]);
    wait_for(&lake, 40_000, Duration::from_secs(120), "member-a is back");
    let (ok_b, log_b) = stop(b, Duration::from_secs(60), lake.with_extension("member-b.log"));
    assert!(ok_b, "member-b left with an error:\n{log_b}");
    // member-d joins, consumes and commits (its open windows are in its last commit), and is killed for good.
    // Then the group is redeployed: a and c leave (SIGTERM), and member-e (another name, like a replacement
    // pod) starts in a new consumer group (positions live in the lake; Tansu 0.6 also keeps a killed member's
    // partitions assigned to it for minutes), adopts d's open windows and claims every partition.
    let mut d = member(&config, &brokers, &topic, &group, "member-d", &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !owners(&lake).contains("member-d") {
        assert!(Instant::now() < deadline, "member-d never got a partition");
        std::thread::sleep(Duration::from_millis(200));
    }
    produce(&brokers, &topic, thirds[2]);
    let d_chain = lake.join("_aifinops/writers/member-d/manifest");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !consumed_by(&d_chain) {
        assert!(Instant::now() < deadline, "member-d never committed what it consumed");
        std::thread::sleep(Duration::from_millis(100));
    }
    d.kill().unwrap();
    d.wait().unwrap();
    let (ok_a, log_a) = stop(a, Duration::from_secs(60), lake.with_extension("member-a.log"));
    let (ok_c, log_c) = stop(c, Duration::from_secs(60), lake.with_extension("member-c.log"));
    let e_member = member(&config, &brokers, &topic, &unique("rebalance-group-2"), "member-e", &[]);
    produce(&brokers, &topic, thirds[3]);
    wait_for(&lake, total, Duration::from_secs(180), "member-d was killed");
    let (ok_e, log_e) = stop(e_member, Duration::from_secs(60), lake.with_extension("member-e.log"));
    assert!(ok_a, "member-a:\n{log_a}");
    assert!(ok_c, "member-c:\n{log_c}");
    assert!(ok_e, "member-e:\n{log_e}");
    let log_d = std::fs::read_to_string(lake.with_extension("member-d.log")).unwrap_or_default();
    let adoptions = [&log_a, &log_c, &log_d, &log_e]
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| l.contains("adopting the open windows") && l.contains("member-d"))
        .count();
    assert_eq!(adoptions, 1, "the killed member-d was adopted once:\n{log_e}");
    assert!(lake.join("_aifinops/writers/member-d/retired").exists(), "member-d's chain is retired");
    assert!(log_a.contains("continuing at before_commit"), "member-a stopped and continued:\n{log_a}");
    assert!(log_a.contains("fenced:"), "member-a's commit after its stop was fenced:\n{log_a}");
    done.store(true, Ordering::SeqCst);
    watcher.join().unwrap();

    // exact totals in every window size, per owner, and each dead letter once
    assert_lake_totals(&lake, &e, &["1m", "1h", "1d"]);
    let dl = query(&lake, "SELECT count(*) AS n FROM dead_letters");
    assert_eq!(dl[0]["n"].as_i64(), Some(e.bad as i64), "each dead letter once");

    // each alert once in the lake and on the topic, the day budget's thresholds once each
    let twice = query(&lake, "SELECT id, count(*) AS n FROM alerts GROUP BY id HAVING count(*) > 1");
    assert!(twice.is_empty(), "alerts committed twice: {twice:?}");
    let budget = query(
        &lake,
        "SELECT data FROM alerts WHERE type = 'aifinops.budget.threshold' AND subject LIKE '%search-daily%' ORDER BY time",
    );
    let fired: Vec<String> = budget
        .iter()
        .map(|r| {
            let d: serde_json::Value = serde_json::from_str(r["data"].as_str().unwrap()).unwrap();
            format!("{}@{}", d["threshold_percent"], d["period"]["key"].as_str().unwrap_or_default())
        })
        .collect();
    assert_eq!(fired.len(), 3, "the 50, 80 and 100 % thresholds of the lake-wide spend, once each: {fired:?}");
    let n_alerts = query(&lake, "SELECT count(*) AS n FROM alerts")[0]["n"].as_i64().unwrap() as usize;
    let mut by_id: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for p in common::kafka::read_payloads(&brokers, &alerts, n_alerts, Duration::from_secs(60)) {
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        let id = v["id"].as_str().unwrap().to_string();
        if let Some(prev) = by_id.insert(id.clone(), p.clone()) {
            assert_eq!(prev, p, "alert {id} published with two different payloads");
        }
    }
    assert_eq!(by_id.len(), n_alerts, "every alert of the lake reached the topic");

    // every offset of every partition committed by exactly one member, and partitions did change hands
    let seen = seen.lock().unwrap();
    let mut ranges: BTreeMap<i32, Vec<(i64, i64, String)>> = BTreeMap::new();
    for ((writer, _), m) in seen.iter() {
        if let Some(parts) = m["ranges"][&topic].as_object() {
            for (p, r) in parts {
                let (from, to) = (r[0].as_i64().unwrap(), r[1].as_i64().unwrap());
                ranges.entry(p.parse().unwrap()).or_default().push((from, to, writer.clone()));
            }
        }
    }
    let mut handed_over = 0;
    let mut covered = 0;
    for (p, rs) in ranges.iter_mut() {
        rs.sort();
        let mut next = 0;
        for (from, to, w) in rs.iter() {
            assert_eq!(
                *from, next,
                "partition {p}: offsets [{next}, {from}) committed by nobody or twice ({w}): {rs:?}"
            );
            next = *to;
        }
        covered += next;
        let writers: std::collections::BTreeSet<&String> = rs.iter().map(|r| &r.2).collect();
        handed_over += (writers.len() > 1) as usize;
    }
    assert_eq!(ranges.len(), PARTITIONS as usize, "every partition was committed");
    assert_eq!(covered, total, "the committed ranges cover the input");
    assert!(handed_over >= 2, "partitions changed hands: {ranges:?}");
    let writers: std::collections::BTreeSet<&String> = seen.keys().map(|k| &k.0).collect();
    assert_eq!(writers.len(), 5, "five members committed");
    let logs = [log_a, log_b, log_c, log_e].concat();
    eprintln!(
        "rebalance: {total} records, {} commits by {} members, {handed_over} of {PARTITIONS} partitions handed over, \
         {} claims, {} commits refused (fenced or a duplicate counted by another member)",
        seen.len(),
        writers.len(),
        logs.matches("partition claimed in the lake's ledger").count(),
        logs.matches("lake commit refused").count(),
    );
}
