//! Hostile input: a corpus of bad records (`hostile/corpus.rs`), each of which must become a dead letter
//! with a reason and its location, interleaved with good records whose totals must stay exact, while the
//! pipeline keeps running and its counters match the corpus: in process, through `aifinops replay` from
//! files (file:line), and through Kafka into `aifinops run` (topic/partition@offset).

mod common;
#[path = "hostile/corpus.rs"]
mod corpus;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aifinops_ingest::avro::{AvroDecoder, SchemaSource};
use aifinops_ingest::{Decoder, Format, OwnerMap, PriceCatalog, RawPolicy};
use aifinops_schemas::SourceRef;
use common::*;
use corpus::*;

/// Writes the Avro schema files of the corpus: id 1 = usage_event.avsc, id 2 = an unrelated record.
fn schema_dir(dir: &Path) -> PathBuf {
    let avsc = dir.join("avsc");
    std::fs::create_dir_all(&avsc).unwrap();
    std::fs::write(avsc.join("1.avsc"), aifinops_schemas::avro::USAGE_EVENT_AVSC).unwrap();
    std::fs::write(avsc.join("2.avsc"), UNRELATED_AVSC).unwrap();
    avsc
}

fn format(t: Topic) -> Format {
    Format::parse(t.format()).unwrap()
}

#[test]
fn the_corpus_has_every_kind_the_issue_names() {
    let cases = corpus();
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), cases.len(), "case names are unique");
    assert!(cases.len() >= 30, "{} kinds", cases.len());
    for needle in [
        "truncated JSON",
        "count as a string",
        "count beyond u64",
        "negative count",
        "NaN literal",
        "10,000 levels of nesting",
        "10 MB message",
        "invalid UTF-8",
        "Avro magic byte with an unknown schema id",
        "Avro bytes on a JSON topic",
        "timestamp in year 9999",
        "timestamp in 1970",
        "empty message",
        "UTF-8 byte order mark",
        "trailing garbage",
        "duplicate key",
        "count in exponent notation",
        "Infinity literal",
        "lone UTF-16 surrogate",
        "control character",
        "JSON array",
        "truncated Avro body",
        "negative timestamp",
        "timestamp beyond i64",
        "unknown shape",
        "ambiguous shape",
    ] {
        assert!(names.iter().any(|n| n.contains(needle)), "no case for {needle:?}");
    }
    let file_cases = cases.iter().filter(|c| !c.kafka_only).count();
    assert!(file_cases >= 30, "{file_cases} cases fit in an NDJSON file");
    // the hand-written Avro bodies follow usage_event.avsc
    let apache_avro::Schema::Record(r) = aifinops_schemas::avro::usage_event_avro_schema() else { panic!() };
    let after = r.fields.iter().position(|f| f.name == "output_tokens").unwrap();
    assert_eq!(r.fields.len() - after - 1, AVRO_OPTIONAL_AFTER_TOTALS);
}

fn decoder(avsc: &Path) -> Decoder {
    let owners = OwnerMap::from_toml_str("owners", OWNERS).unwrap();
    Decoder::new(Arc::new(PriceCatalog::builtin()), Arc::new(owners), 1 << 20, RawPolicy::Redacted)
        .with_avro(AvroDecoder::new(SchemaSource::Local { files: vec![avsc.to_path_buf()] }).unwrap())
}

/// Every case through the decoder itself, each between two good records: a dead letter of its kind with
/// a reason, and the good records all accepted.
#[test]
fn every_hostile_record_is_a_dead_letter_of_its_kind_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = decoder(&schema_dir(dir.path()));
    let cases = corpus();
    let mut good_n = 0;
    let mut wrong = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let (g, ..) = good(0, 2 * i);
        assert!(d.push(g.as_bytes(), Format::Auto, || SourceRef::File { path: "g".into(), line: 0 }, 0).is_some());
        let accepted =
            d.push(&case.payload, format(case.topic), || SourceRef::File { path: "c".into(), line: i as u64 }, 0);
        let out = d.finish();
        good_n += out.batch.num_rows();
        match (accepted, out.dead_letters.as_slice()) {
            (None, [dl]) if dl.kind == case.kind && !dl.reason.trim().is_empty() && dl.source == format!("c:{i}") => {
                println!("{:<55} {:<26} {}", case.name, dl.kind, dl.reason.chars().take(140).collect::<String>());
            }
            (_, dls) => wrong.push(format!(
                "{}: expected {}, got {:?}",
                case.name,
                case.kind,
                dls.iter().map(|d| (d.kind, d.reason.clone())).collect::<Vec<_>>()
            )),
        }
    }
    assert!(wrong.is_empty(), "{} cases not dead-lettered as expected:\n{}", wrong.len(), wrong.join("\n"));
    assert_eq!(good_n, cases.len());
    // and a valid Avro record with the same framing is accepted (the Avro cases fail for their own reason)
    let ok = good_avro("avro-good", DAY + 3_600_000, 10, 1);
    assert!(d.push(&ok, Format::Avro, || SourceRef::File { path: "a".into(), line: 1 }, 0).is_some());
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &cases {
        *kinds.entry(c.kind).or_default() += 1;
    }
    println!("{} hostile kinds, dead-letter kinds: {kinds:?}", cases.len());
}

/// The lake's totals for the good records (all gpt-4o-mini; canonical ones owned by `search`, Avro ones
/// unattributed).
#[derive(Default)]
struct Good {
    e: Expected,
}

impl Good {
    fn add(&mut self, owner: &str, input: i64, output: i64) {
        let e = &mut self.e;
        e.requests += 1;
        e.input += input;
        e.output += output;
        let c = cost_pico(input, output);
        e.cost_pico += c;
        *e.per_owner_requests.entry(owner.into()).or_default() += 1;
        *e.per_owner_cost_pico.entry(owner.into()).or_default() += c;
    }
}

/// The records of one topic or file: bad cases of that topic between good records. Returns the payloads
/// with, for each bad one, the index of its case.
fn interleave(
    cases: &[Case],
    topic: Topic,
    round: usize,
    include: impl Fn(&Case) -> bool,
    good: &mut Good,
) -> Vec<(Vec<u8>, Option<usize>)> {
    let mut out = Vec::new();
    let mut n = 0;
    let mut push_good = |out: &mut Vec<(Vec<u8>, Option<usize>)>| {
        n += 1;
        let i = topic as usize * 1_000 + n;
        match topic {
            Topic::Auto | Topic::Canonical => {
                let (line, input, output) = corpus::good(round, i);
                good.add("search", input, output);
                out.push((line.into_bytes(), None));
            }
            Topic::Avro => {
                // a good Avro record must fit one NDJSON line: pick counts whose encoding has no line break
                let (input, output) = (10..)
                    .map(|k| (k * 3, k))
                    .find(|(a, b)| {
                        !good_avro(&format!("av-{round}-{i}"), DAY + 36_000_000 + i as i64, *a, *b).contains(&b'\n')
                    })
                    .unwrap();
                good.add("unattributed", input, output);
                out.push((good_avro(&format!("av-{round}-{i}"), DAY + 36_000_000 + i as i64, input, output), None));
            }
            Topic::Litellm | Topic::Openai => {}
        }
    };
    push_good(&mut out);
    for (i, c) in cases.iter().enumerate().filter(|(_, c)| c.topic == topic && include(c)) {
        out.push((c.payload.clone(), Some(i)));
        push_good(&mut out);
    }
    out
}

fn config(dir: &Path, extra: &str) -> PathBuf {
    std::fs::write(dir.join("owners.toml"), OWNERS).unwrap();
    let avsc = schema_dir(dir);
    let cfg = dir.join("aifinops.toml");
    std::fs::write(
        &cfg,
        format!(
            "[lake]\ndir = \"{}\"\n[owners]\nfile = \"{}\"\n[avro]\nschema_files = [\"{}\"]\n{extra}",
            dir.join("lake").display(),
            dir.join("owners.toml").display(),
            avsc.display()
        ),
    )
    .unwrap();
    cfg
}

/// Checks the lake's dead letters against the expected (source -> case) and returns how many there are.
fn assert_lake_dead_letters(lake: &Path, cases: &[Case], expected: &BTreeMap<String, usize>) {
    let rows = query(lake, "SELECT source, kind, reason FROM dead_letters");
    let mut got: BTreeMap<String, (String, String)> = BTreeMap::new();
    for r in &rows {
        let source = r["source"].as_str().unwrap().to_string();
        let v = (r["kind"].as_str().unwrap().to_string(), r["reason"].as_str().unwrap().to_string());
        assert!(got.insert(source.clone(), v).is_none(), "{source} dead-lettered twice");
    }
    let mut wrong = Vec::new();
    for (source, i) in expected {
        let c = &cases[*i];
        match got.remove(source) {
            Some((kind, reason)) if kind == c.kind && !reason.trim().is_empty() => {}
            other => wrong.push(format!("{source} ({}): expected {}, got {other:?}", c.name, c.kind)),
        }
    }
    assert!(wrong.is_empty(), "dead letters not as expected:\n{}", wrong.join("\n"));
    assert!(got.is_empty(), "unexpected dead letters: {got:?}");
}

/// Every case that fits in an NDJSON line, in files of each format between good records, through
/// `aifinops replay`: each a dead letter at its file:line with its kind and a reason, the good records'
/// totals exact, exit 0, the summary's counts equal to the corpus.
#[test]
fn replay_dead_letters_every_hostile_record_at_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let cases = corpus();
    let mut good = Good::default();
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    let mut args = vec!["replay".to_string(), "-c".into(), cfg.display().to_string()];
    let mut records = 0;
    for topic in Topic::ALL {
        let file = std::fs::canonicalize(dir.path()).unwrap().join(format!("{}.ndjson", topic.format()));
        let recs = interleave(&cases, topic, 0, |c| !c.kafka_only, &mut good);
        let mut bytes = Vec::new();
        for (line, (payload, case)) in recs.iter().enumerate() {
            assert!(!payload.contains(&b'\n'));
            bytes.extend_from_slice(payload);
            bytes.push(b'\n');
            if let Some(i) = case {
                expected.insert(format!("{}:{}", file.display(), line + 1), *i);
            }
        }
        records += recs.len();
        std::fs::write(&file, bytes).unwrap();
        args.push(format!("{}:{}", topic.format(), file.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = aifinops(&args);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stderr.lines().find(|l| l.starts_with("replay: ")).unwrap_or_else(|| panic!("{stderr}"));
    let want = format!(
        "replay: {records} records in|: {} events, 0 duplicates dropped, {} dead letters, 0 unpriced",
        good.e.requests,
        expected.len()
    );
    for part in want.split('|') {
        assert!(summary.contains(part), "summary {summary:?} should contain {part:?}");
    }
    let lake = dir.path().join("lake");
    assert_lake_dead_letters(&lake, &cases, &expected);
    assert_lake_totals(&lake, &good.e, &["1m", "1h", "1d"]);
    println!("{summary}");
}

mod kafka {
    //! Minimal Kafka helpers for this test (the broker is the one scripts/test starts).
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    pub fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    pub fn create_topics(brokers: &str, topics: &[&str]) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
        let new: Vec<NewTopic> = topics.iter().map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1))).collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for r in rt().block_on(admin.create_topics(&new, &opts)).unwrap() {
            if let Err((t, e)) = r {
                panic!("creating topic {t}: {e}");
            }
        }
    }

    /// A message to send: key (None = null key) and payload (None = null payload, a tombstone).
    pub type Out = (Option<String>, Option<Vec<u8>>);

    /// Sends the messages in order, one at a time; returns the `partition@offset` of each.
    pub fn produce(brokers: &str, topic: &str, msgs: &[Out]) -> Vec<String> {
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("message.max.bytes", "16000000")
            .set("linger.ms", "0")
            .create()
            .unwrap();
        rt().block_on(async {
            let mut at = Vec::new();
            for (key, payload) in msgs {
                let mut r: FutureRecord<'_, String, Vec<u8>> = FutureRecord::to(topic);
                if let Some(k) = key {
                    r = r.key(k);
                }
                if let Some(b) = payload {
                    r = r.payload(b);
                }
                let d = p.send(r, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("produce");
                at.push(format!("{}@{}", d.partition, d.offset));
            }
            at
        })
    }

    /// Every message of `topic` from the beginning: its headers.
    pub fn read_headers(brokers: &str, topic: &str, expect: usize, within: Duration) -> Vec<BTreeMap<String, String>> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", super::unique("hostile-reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        c.subscribe(&[topic]).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + within;
        let mut quiet = Instant::now();
        while Instant::now() < deadline {
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let mut h = BTreeMap::new();
                    for x in m.headers().into_iter().flat_map(|hs| hs.iter()) {
                        h.insert(x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).to_string());
                    }
                    out.push(h);
                    quiet = Instant::now();
                }
                _ if out.len() >= expect && quiet.elapsed() > Duration::from_secs(2) => break,
                _ => {}
            }
        }
        out
    }

    /// GET /metrics.
    pub fn scrape(port: u16) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint listening");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    }

    /// The value of a counter line `name{labels} value` (0 when absent).
    pub fn counter(metrics: &str, name_and_labels: &str) -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// The sum of the offsets in the lake's last commit.
    pub fn committed_offsets(lake: &std::path::Path) -> i64 {
        let Ok(rd) = std::fs::read_dir(lake.join("_aifinops/manifest")) else { return 0 };
        let mut names: Vec<_> =
            rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
        names.sort();
        let Some(last) = names.last() else { return 0 };
        let Ok(m) = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(last).unwrap_or_default())
        else {
            return 0;
        };
        m["offsets"]
            .as_object()
            .map(|t| t.values().flat_map(|p| p.as_object().unwrap().values().map(|o| o.as_i64().unwrap())).sum())
            .unwrap_or(0)
    }

    /// Waits for the child to exit; its status and stderr.
    pub fn wait_output(mut c: std::process::Child, within: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + within;
        loop {
            if c.try_wait().unwrap().is_some() {
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
}

/// Every case through Kafka, one topic per format, between good records (half of them with null keys, the
/// bad ones all, and a tombstone: null key and null value, on each topic):
/// a long-running `aifinops run` dead-letters each at its topic/partition@offset, in the lake and on the
/// dead-letter topic, keeps running (its metrics count every kind), and exits 0 on SIGTERM; a second round
/// through `run --until-caught-up` does the same. Totals of the good records are exact.
#[test]
fn kafka_run_dead_letters_every_hostile_record_at_its_offset_and_keeps_running() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let Some(brokers) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    // The test broker (Tansu 0.6) stores a 10 MB message but never serves it (a real Kafka broker returns
    // an oversized first batch whole, KIP-74): through Kafka the oversized record is 4 MB, the most the
    // test broker serves. The 10 MB one goes through the decoder and `replay` in the other tests.
    let cases: Vec<Case> = corpus()
        .into_iter()
        .map(|mut c| {
            if c.kind == "too_large" {
                c.payload = huge(4_000_000);
            }
            c
        })
        .collect();
    let topics: BTreeMap<Topic, String> =
        Topic::ALL.iter().map(|t| (*t, unique(&format!("hostile-{}", t.format())))).collect();
    let (alerts, dlq) = (unique("hostile-alerts"), unique("hostile-dlq"));
    let mut all: Vec<&str> = topics.values().map(String::as_str).collect();
    all.extend([alerts.as_str(), dlq.as_str()]);
    kafka::create_topics(&brokers, &all);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let formats: String = topics.iter().map(|(t, name)| format!("\"{name}\" = \"{}\"\n", t.format())).collect();
    let topic_list: Vec<String> = topics.values().map(|t| format!("\"{t}\"")).collect();
    let cfg = config(
        dir.path(),
        &format!(
            "[pipeline]\ncommit_interval = \"1s\"\nbatch_max_wait = \"200ms\"\nidle_timeout = \"5s\"\n\
             [metrics]\nlisten = \"127.0.0.1:{port}\"\n\
             [kafka]\nbrokers = \"{brokers}\"\ntopics = [{}]\ngroup = \"{}\"\nalert_topic = \"{alerts}\"\n\
             dead_letter_topic = \"{dlq}\"\nsession_timeout = \"6s\"\nmax_poll_interval = \"10s\"\n\
             [kafka.formats]\n{formats}",
            topic_list.join(", "),
            unique("hostile-group")
        ),
    );
    let lake = dir.path().join("lake");
    /// What was sent: the good records' totals, the expected dead letters (source -> case), the tombstones.
    #[derive(Default)]
    struct Sent {
        good: Good,
        expected: BTreeMap<String, usize>,
        tombstones: Vec<String>,
        total: i64,
    }
    // one round of the corpus (the 10 MB message in the first only), plus a tombstone per topic
    let send_round = |round: usize, s: &mut Sent| {
        for (topic, name) in &topics {
            let recs = interleave(&cases, *topic, round, |c| round == 0 || c.kind != "too_large", &mut s.good);
            // keys are not read: bad records (the empty one too) and half the good ones have a null key
            let mut msgs: Vec<kafka::Out> = recs
                .iter()
                .enumerate()
                .map(|(j, (payload, case))| {
                    ((case.is_none() && j % 4 == 0).then(|| format!("k{j}")), Some(payload.clone()))
                })
                .collect();
            msgs.push((None, None)); // null key, null value: a tombstone
            let at = kafka::produce(&brokers, name, &msgs);
            for ((_, case), at) in recs.iter().zip(&at) {
                if let Some(i) = case {
                    s.expected.insert(format!("{name}/{at}"), *i);
                }
            }
            s.tombstones.push(format!("{name}/{}", at.last().unwrap()));
            s.total += msgs.len() as i64;
        }
    };
    let mut sent = Sent::default();
    let start = |extra: &[&str]| {
        Command::new(bin())
            .args(["run", "-c", cfg.to_str().unwrap()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aifinops run")
    };
    let kinds = |expected: &BTreeMap<String, usize>, tombstones: usize| {
        let mut k: BTreeMap<&str, u64> = BTreeMap::new();
        for i in expected.values() {
            *k.entry(cases[*i].kind).or_default() += 1;
        }
        *k.entry("empty").or_default() += tombstones as u64;
        k
    };

    // round 1: a long-running run
    send_round(0, &mut sent);
    let child = start(&[]);
    let t0 = Instant::now();
    let mut child = child;
    while kafka::committed_offsets(&lake) < sent.total {
        if t0.elapsed() > Duration::from_secs(120) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "run committed {} of {} offsets:\n{}",
                kafka::committed_offsets(&lake),
                sent.total,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = kafka::scrape(port);
    assert_eq!(kafka::counter(&m, "aifinops_records_consumed_total"), sent.total as u64, "{m}");
    assert_eq!(kafka::counter(&m, "aifinops_events_decoded_total"), sent.good.e.requests as u64, "{m}");
    for (kind, n) in kinds(&sent.expected, sent.tombstones.len()) {
        let got = kafka::counter(&m, &format!("aifinops_dead_letters_total{{reason=\"{kind}\"}}"));
        assert_eq!(got, n, "dead letters of kind {kind} in the metrics:\n{m}");
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (status, stderr) = kafka::wait_output(child, Duration::from_secs(60));
    assert!(status.success(), "SIGTERM: flush, commit, exit 0: {status}\n{stderr}");
    let dead = sent.expected.len() + sent.tombstones.len();
    let summary = format!("{} events, 0 duplicates dropped, {dead} dead letters, 0 unpriced", sent.good.e.requests);
    assert!(
        stderr.contains(&format!("run: {} records", sent.total)) && stderr.contains(&summary),
        "{summary}\n{stderr}"
    );

    // round 2: the corpus again, through `run --until-caught-up`
    let before = (sent.total, sent.good.e.requests, dead);
    send_round(1, &mut sent);
    let (status, stderr) = kafka::wait_output(start(&["--until-caught-up"]), Duration::from_secs(180));
    assert!(status.success(), "{stderr}");
    let summary = format!(
        "run: {} records in|: {} events, 0 duplicates dropped, {} dead letters, 0 unpriced",
        sent.total - before.0,
        sent.good.e.requests - before.1,
        sent.expected.len() + sent.tombstones.len() - before.2
    );
    for part in summary.split('|') {
        assert!(stderr.contains(part), "{part:?} not in:\n{stderr}");
    }

    // the lake: every dead letter at its topic/partition@offset with its kind; exact totals
    let mut with_tombstones = sent.expected.clone();
    let empty = cases.iter().position(|c| c.kind == "empty").unwrap();
    for t in &sent.tombstones {
        with_tombstones.insert(t.clone(), empty);
    }
    assert_lake_dead_letters(&lake, &cases, &with_tombstones);
    assert_lake_totals(&lake, &sent.good.e, &["1m", "1h", "1d"]);

    // the dead-letter topic: each once, with its source, kind and reason
    let dl = kafka::read_headers(&brokers, &dlq, with_tombstones.len(), Duration::from_secs(60));
    let mut seen = BTreeSet::new();
    for h in &dl {
        let source = h.get("aifinops_source").cloned().unwrap_or_default();
        let i = with_tombstones.get(&source).unwrap_or_else(|| panic!("unexpected dead letter {h:?}"));
        assert_eq!(h.get("aifinops_kind").map(String::as_str), Some(cases[*i].kind), "{source}");
        assert!(h.get("aifinops_reason").is_some_and(|r| !r.trim().is_empty()), "{h:?}");
        assert!(seen.insert(source.clone()), "{source} published twice");
    }
    assert_eq!(seen.len(), with_tombstones.len(), "every dead letter on the dead-letter topic");
}

/// The fuzz targets start from this corpus: `fuzz/seeds/decode/` holds each case (up to 64 KiB) and two
/// good records as `[format index] + payload` (the `decode` target's input), `fuzz/seeds/avro/` the Avro
/// ones as `[0xff] + payload` (the `avro` target's raw framing) and a good body for each framing. Run with
/// `AIFINOPS_WRITE_FUZZ_SEEDS=1` to rewrite them after changing the corpus.
#[test]
fn the_fuzz_seeds_are_the_hostile_corpus() {
    let root = common::repo().join("fuzz/seeds");
    let slug = |name: &str| -> String {
        let s: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        s.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-")
    };
    let index = |f: Format| Format::ALL.iter().position(|x| *x == f).unwrap() as u8;
    let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for c in corpus().iter().filter(|c| c.payload.len() <= 64 * 1024) {
        want.insert(format!("decode/{}", slug(c.name)), [&[index(format(c.topic))][..], &c.payload].concat());
        if c.topic == Topic::Avro || matches!(c.payload.first(), Some(0 | 0xc3)) {
            want.insert(format!("avro/{}", slug(c.name)), [&[0xff][..], &c.payload].concat());
        }
    }
    let (line, ..) = corpus::good(0, 1);
    want.insert("decode/good-canonical".into(), [&[index(Format::Auto)][..], line.as_bytes()].concat());
    let avro = good_avro("seed", DAY + 36_000_000, 1_000, 100);
    want.insert("decode/good-avro".into(), [&[index(Format::Avro)][..], &avro].concat());
    for framing in 0..3u8 {
        want.insert(format!("avro/good-body-{framing}"), [&[framing][..], &avro[5..]].concat());
    }
    if std::env::var_os("AIFINOPS_WRITE_FUZZ_SEEDS").is_some() {
        for dir in ["decode", "avro"] {
            let _ = std::fs::remove_dir_all(root.join(dir));
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        for (name, bytes) in &want {
            std::fs::write(root.join(name), bytes).unwrap();
        }
    }
    let mut have: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for dir in ["decode", "avro"] {
        for e in std::fs::read_dir(root.join(dir)).expect("fuzz/seeds (AIFINOPS_WRITE_FUZZ_SEEDS=1 writes them)") {
            let p = e.unwrap().path();
            have.insert(format!("{dir}/{}", p.file_name().unwrap().to_str().unwrap()), std::fs::read(&p).unwrap());
        }
    }
    let differ: Vec<&String> = want.keys().chain(have.keys()).filter(|k| want.get(*k) != have.get(*k)).collect();
    assert!(
        differ.is_empty(),
        "fuzz seeds differ from the corpus (AIFINOPS_WRITE_FUZZ_SEEDS=1 rewrites them): {differ:?}"
    );
}
