//! Kafka security (DESIGN.md, "Kafka security"): `aifinops run` consumes and publishes over TLS (with a client
//! certificate: mutual TLS) and over SASL_SSL (SCRAM-SHA-512), configured only through the config file's
//! `[kafka.consumer]` / `[kafka.producer]` librdkafka properties and `AIFINOPS__KAFKA__…` environment
//! overrides; credentials never reach the logs; a wrong CA, a plaintext broker or a wrong password fail the
//! run at startup with an error naming the broker and TLS/SASL, and write nothing.
//!
//! The brokers are Tansu (installed by scripts/test), each test's own: the broker must advertise the TLS
//! proxy's address (tests/common/tls.rs; Tansu 0.6.0 has no TLS listener of its own), which the shared
//! broker of scripts/test cannot. The plaintext case uses the shared broker. `./scripts/test kafka_tls`
//! runs them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use common::kafka::{
    Tansu, create_topics_with, free_port, produce_bytes_with, read_payloads_with, run_config, tansu_bin,
};
use common::tls::{Pki, TlsProxy};
use common::*;

const DAY: i64 = 1_764_460_800_000; // 2025-11-30T00:00:00Z
const KEY_PASSWORD: &str = "k3y-pa55word-never-logged";
const SASL_PASSWORD: &str = "sa5l-pa55word-never-logged";

/// Only under scripts/test (the shared broker is up and Tansu installed); a failure in CI otherwise.
fn tansu_available() -> bool {
    if brokers().is_none() {
        return false;
    }
    if tansu_bin().is_none() {
        assert!(std::env::var("CI").is_err(), "tansu is not installed: scripts/test installs it");
        eprintln!("skipping: tansu not on PATH (scripts/test installs it)");
        return false;
    }
    true
}

/// A Tansu behind a TLS proxy: the broker advertises the proxy, so clients reach it through TLS only.
struct TlsBroker {
    proxy: TlsProxy,
    tansu: Tansu,
}

impl TlsBroker {
    fn start(dir: &Path, pki: &Pki, client_auth: bool, tansu_args: &[&str]) -> TlsBroker {
        let proxy_port = free_port();
        let tansu = Tansu::start_with(dir.join("tansu"), Some(proxy_port), tansu_args);
        let proxy = TlsProxy::start(proxy_port, tansu.port, pki, client_auth);
        TlsBroker { proxy, tansu }
    }

    fn addr(&self) -> String {
        self.proxy.addr()
    }
}

struct Topics {
    input: String,
    alerts: String,
    dlq: String,
}

fn topics(name: &str) -> Topics {
    Topics {
        input: unique(&format!("{name}-in")),
        alerts: unique(&format!("{name}-alerts")),
        dlq: unique(&format!("{name}-dlq")),
    }
}

/// The run's configuration file: the pipeline settings of the end-to-end tests, one daily budget (so alerts
/// are published), and `security` as the librdkafka properties of both [kafka.consumer] and [kafka.producer].
fn write_config(dir: &Path, t: &Topics, security: &str) -> (PathBuf, PathBuf) {
    run_config(dir, &t.dlq, &format!("[kafka.consumer]\n{security}\n[kafka.producer]\n{security}"))
}

/// What a run did.
struct Ran {
    status: ExitStatus,
    log: String,
    took: Duration,
    /// Every value of the `aifinops_kafka_connected` gauge scraped while it ran (every 25 ms).
    connected: Vec<f64>,
}

/// `aifinops run --until-caught-up` with `env`, its metrics scraped while it runs; killed (and failed)
/// after `within`.
fn run(config: &Path, brokers: &str, t: &Topics, env: &[(&str, &str)], within: Duration) -> Ran {
    let metrics_port = free_port();
    let mut cmd = Command::new(bin());
    cmd.args(["run", "--config", config.to_str().unwrap(), "--brokers", brokers, "--topic", &t.input])
        .args(["--group", &unique("tls-group"), "--alert-topic", &t.alerts, "--until-caught-up"])
        .env("RUST_LOG", "warn")
        .env("AIFINOPS__METRICS__LISTEN", format!("127.0.0.1:{metrics_port}"))
        .stdout(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // the log goes to a file: a pipe nobody reads while waiting would fill up and stall the run
    let log = config.with_file_name(unique("run") + ".log");
    cmd.stderr(std::fs::File::create(&log).unwrap());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn aifinops run");
    let mut connected = Vec::new();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        connected.extend(metric(&scrape(metrics_port), "aifinops_kafka_connected"));
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("aifinops run did not finish in {within:?}:\n{}", &text[text.len().saturating_sub(5000)..]);
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    Ran { status, log: std::fs::read_to_string(&log).unwrap_or_default(), took: started.elapsed(), connected }
}

/// The run failed with one `aifinops: error:` line naming `broker` and `what`, and wrote nothing.
fn assert_refused(r: &Ran, lake: &Path, broker: &str, what: &[&str]) -> String {
    let log = &r.log;
    assert!(!r.status.success(), "the run must fail:\n{log}");
    let err =
        log.lines().find(|l| l.starts_with("aifinops: error:")).unwrap_or_else(|| panic!("no error line:\n{log}"));
    assert!(err.contains(broker), "the error names the broker {broker}: {err}");
    for w in what {
        assert!(err.contains(w), "the error says {w}: {err}");
    }
    // the failure is logged as an error as it happens, too
    assert!(log.lines().any(|l| l.contains("ERROR") && l.contains("TLS/SASL failure")), "{log}");
    assert!(r.connected.iter().all(|v| *v == 0.0), "aifinops_kafka_connected must stay 0: {:?}", r.connected);
    assert!(lake_files(lake).is_empty(), "nothing may be written: {:?}", lake_files(lake));
    err.to_string()
}

/// Files under the lake directory (the run may create the directory; it must not commit anything).
fn lake_files(lake: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() { walk(&p, out) } else { out.push(p) }
        }
    }
    let mut out = Vec::new();
    walk(lake, &mut out);
    out.retain(|p| p.extension().is_some_and(|e| e == "parquet" || e == "json"));
    out
}

/// Exact totals in the lake, every alert of the lake on the alert topic once and every dead letter on its
/// topic, both read back over the same secured connection.
fn assert_delivered(lake: &Path, e: &Expected, brokers: &str, client: &[(&str, &str)], t: &Topics) {
    assert_lake_totals(lake, e, &["1m", "1h", "1d"]);
    let lake_alerts = query(lake, "SELECT id FROM alerts");
    assert!(!lake_alerts.is_empty(), "the workload crosses the search budget: alerts expected");
    let msgs = read_payloads_with(brokers, client, &t.alerts, lake_alerts.len(), Duration::from_secs(60));
    let mut on_topic: Vec<String> = msgs
        .iter()
        .map(|p| serde_json::from_slice::<serde_json::Value>(p).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    on_topic.sort();
    let mut in_lake: Vec<String> = lake_alerts.iter().map(|a| a["id"].as_str().unwrap().to_string()).collect();
    in_lake.sort();
    assert_eq!(on_topic, in_lake, "every alert of the lake published once, over TLS");
    let dl = read_payloads_with(brokers, client, &t.dlq, e.bad, Duration::from_secs(30));
    assert_eq!(dl.len(), e.bad, "dead letters published over TLS");
}

#[test]
fn kafka_tls_mutual_tls_end_to_end_with_secrets_from_the_environment() {
    if !tansu_available() {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"));
    // the client key encrypted (ssl.key.password) when the openssl command is there, else unencrypted
    let encrypted = pki.encrypted_client_key(KEY_PASSWORD);
    let key = encrypted.clone().unwrap_or_else(|| pki.client_key.clone());
    let broker = TlsBroker::start(dir.path(), &pki, true, &[]);
    let (ca, cert, key) = (pki.ca.to_str().unwrap(), pki.client_cert.to_str().unwrap(), key.to_str().unwrap());
    let mut client = vec![
        ("security.protocol", "ssl"),
        ("ssl.ca.location", ca),
        ("ssl.certificate.location", cert),
        ("ssl.key.location", key),
    ];
    if encrypted.is_some() {
        client.push(("ssl.key.password", KEY_PASSWORD));
    }
    let t = topics("mtls");
    create_topics_with(&broker.addr(), &client, &[(&t.input, 3), (&t.alerts, 1), (&t.dlq, 1)]);
    let (lines, e) = workload(3_000, DAY, 6, 20, 91);
    let payloads: Vec<Vec<u8>> = lines.iter().map(|l| l.clone().into_bytes()).collect();
    produce_bytes_with(&broker.addr(), &client, &t.input, &payloads);
    let produced_handshakes = broker.proxy.stats.handshakes.load(std::sync::atomic::Ordering::SeqCst);
    assert!(produced_handshakes > 0, "the test clients went through the TLS proxy");

    // The file names the protocol and the CA (quoted and unquoted dotted keys); the client certificate and
    // the key's password come from the environment, as a secret store would inject them.
    let security = format!("\"security.protocol\" = \"ssl\"\nssl.ca.location = \"{ca}\"\n");
    let (config, lake) = write_config(dir.path(), &t, &security);
    let mut env = vec![
        ("AIFINOPS__KAFKA__CONSUMER__SSL_CERTIFICATE_LOCATION", cert),
        ("AIFINOPS__KAFKA__CONSUMER__SSL_KEY_LOCATION", key),
        ("AIFINOPS__KAFKA__PRODUCER__SSL_CERTIFICATE_LOCATION", cert),
        ("AIFINOPS__KAFKA__PRODUCER__SSL_KEY_LOCATION", key),
        // everything the pipeline and librdkafka log, to check the password is never among it
        ("RUST_LOG", "info,librdkafka=debug,aifinops=debug,aifinops_ingest=debug,aifinops_sink=debug"),
    ];
    if encrypted.is_some() {
        env.push(("AIFINOPS__KAFKA__CONSUMER__SSL_KEY_PASSWORD", KEY_PASSWORD));
        env.push(("AIFINOPS__KAFKA__PRODUCER__SSL_KEY_PASSWORD", KEY_PASSWORD));
    }
    let Ran { status, log, took, connected } = run(&config, &broker.addr(), &t, &env, Duration::from_secs(180));
    assert!(status.success(), "aifinops run over mutual TLS failed ({status}):\n{log}");
    assert!(connected.contains(&1.0), "aifinops_kafka_connected reached 1 over TLS: {connected:?}");
    assert!(log.contains(&format!("run: {} records", lines.len())), "{}", &log[log.len().saturating_sub(2000)..]);
    assert!(!log.contains(KEY_PASSWORD), "ssl.key.password leaked into the logs");
    let handshakes = broker.proxy.stats.handshakes.load(std::sync::atomic::Ordering::SeqCst);
    let with_cert = broker.proxy.stats.client_certs.load(std::sync::atomic::Ordering::SeqCst);
    assert!(handshakes > produced_handshakes, "the pipeline's consumer and producer connected through TLS");
    assert_eq!(with_cert, handshakes, "every TLS connection presented the client certificate");

    assert_delivered(&lake, &e, &broker.addr(), &client, &t);
    // without the client certificate, the proxy (mutual TLS) turns the client away
    let failed_before = broker.proxy.stats.failed.load(std::sync::atomic::Ordering::SeqCst);
    let no_cert = read_payloads_with(
        &broker.addr(),
        &[("security.protocol", "ssl"), ("ssl.ca.location", ca)],
        &t.alerts,
        1,
        Duration::from_secs(5),
    );
    assert!(no_cert.is_empty(), "a client without a certificate read the alert topic");
    assert!(broker.proxy.stats.failed.load(std::sync::atomic::Ordering::SeqCst) > failed_before);
    eprintln!(
        "mutual TLS: {} events through the pipeline in {:.1} s ({handshakes} TLS handshakes, all with the client \
         certificate); key password {}; test {:.1} s",
        lines.len(),
        took.as_secs_f64(),
        if encrypted.is_some() { "from the environment, not logged" } else { "not used (no openssl command)" },
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn kafka_tls_wrong_ca_or_plaintext_broker_fails_at_startup_and_writes_nothing() {
    if !tansu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"));
    let broker = TlsBroker::start(dir.path(), &pki, false, &[]);
    let client = [("security.protocol", "ssl"), ("ssl.ca.location", pki.ca.to_str().unwrap())];
    let t = topics("wrongca");
    create_topics_with(&broker.addr(), &client, &[(&t.input, 1), (&t.alerts, 1), (&t.dlq, 1)]);
    let (lines, _) = workload(200, DAY, 1, 0, 5);
    produce_bytes_with(
        &broker.addr(),
        &client,
        &t.input,
        &lines.iter().map(|l| l.clone().into_bytes()).collect::<Vec<_>>(),
    );

    // 1. the client trusts another CA: the broker's certificate does not verify
    let case = dir.path().join("wrong-ca");
    std::fs::create_dir_all(&case).unwrap();
    let security = format!("\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"{}\"\n", pki.other_ca.display());
    let (config, lake) = write_config(&case, &t, &security);
    let r = run(&config, &broker.addr(), &t, &[], Duration::from_secs(120));
    let err = assert_refused(&r, &lake, &broker.addr(), &["TLS", "certificate verify failed"]);
    eprintln!("wrong CA: failed after {:.1} s: {err}", r.took.as_secs_f64());

    // 2. TLS to a plaintext broker (the shared broker of scripts/test)
    let plain = brokers().unwrap();
    let case = dir.path().join("plaintext");
    std::fs::create_dir_all(&case).unwrap();
    // (Tansu waits for the rest of a "request" as long as the TLS hello claims: the handshake times out)
    let security = format!(
        "\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"{}\"\n\"socket.connection.setup.timeout.ms\" = 10000\n",
        pki.ca.display()
    );
    let (config, lake) = write_config(&case, &t, &security);
    let r = run(&config, &plain, &t, &[], Duration::from_secs(120));
    let err = assert_refused(&r, &lake, &plain, &["TLS", "SSL_HANDSHAKE"]);
    assert!(r.connected.contains(&0.0), "unhealthy while it waited: {:?}", r.connected);
    eprintln!("plaintext broker: failed after {:.1} s: {err}", r.took.as_secs_f64());
}

#[test]
fn kafka_tls_sasl_ssl_scram_end_to_end_and_a_wrong_password_fails() {
    if !tansu_available() {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"));
    let mut broker = TlsBroker::start(dir.path(), &pki, false, &[]);
    // Tansu keeps SCRAM credentials in its storage: create the user, then restart with authentication
    let st = Command::new(tansu_bin().unwrap())
        .args(["user", "create", "--broker", &format!("tcp://{}", broker.tansu.addr()), "--mechanism", "scram512"])
        .args(["aifinops", SASL_PASSWORD])
        .status()
        .expect("tansu user create");
    assert!(st.success(), "tansu user create: {st}");
    broker.tansu.stop();
    broker.tansu.args = vec!["--authentication".into()];
    broker.tansu.restart();

    let ca = pki.ca.to_str().unwrap();
    let client = [
        ("security.protocol", "sasl_ssl"),
        ("ssl.ca.location", ca),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "aifinops"),
        ("sasl.password", SASL_PASSWORD),
    ];
    let t = topics("sasl");
    create_topics_with(&broker.addr(), &client, &[(&t.input, 3), (&t.alerts, 1), (&t.dlq, 1)]);
    let (lines, e) = workload(2_000, DAY, 4, 10, 17);
    produce_bytes_with(
        &broker.addr(),
        &client,
        &t.input,
        &lines.iter().map(|l| l.clone().into_bytes()).collect::<Vec<_>>(),
    );

    // the password only in the environment; the rest in the file (the env names spell dots as underscores)
    let security = format!(
        "\"security.protocol\" = \"SASL_SSL\"\n\"ssl.ca.location\" = \"{ca}\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"aifinops\"\n"
    );
    let (config, lake) = write_config(dir.path(), &t, &security);
    let env = [
        ("AIFINOPS__KAFKA__CONSUMER__SASL_PASSWORD", SASL_PASSWORD),
        ("AIFINOPS__KAFKA__PRODUCER__SASL_PASSWORD", SASL_PASSWORD),
        ("RUST_LOG", "info,librdkafka=debug,aifinops=debug,aifinops_ingest=debug,aifinops_sink=debug"),
    ];
    let Ran { status, log, took, connected } = run(&config, &broker.addr(), &t, &env, Duration::from_secs(180));
    assert!(status.success(), "aifinops run over SASL_SSL failed ({status}):\n{log}");
    assert!(connected.contains(&1.0), "aifinops_kafka_connected reached 1 over SASL_SSL: {connected:?}");
    assert!(!log.contains(SASL_PASSWORD), "sasl.password leaked into the logs");
    assert_delivered(&lake, &e, &broker.addr(), &client, &t);

    // a wrong password: the broker refuses the SCRAM exchange, the run fails naming SASL and the broker
    let case = dir.path().join("wrong-password");
    std::fs::create_dir_all(&case).unwrap();
    let (config, lake) = write_config(&case, &t, &security);
    let wrong = [
        ("AIFINOPS__KAFKA__CONSUMER__SASL_PASSWORD", "not-the-password"),
        ("AIFINOPS__KAFKA__PRODUCER__SASL_PASSWORD", "not-the-password"),
    ];
    let r = run(&config, &broker.addr(), &t, &wrong, Duration::from_secs(120));
    let err = assert_refused(&r, &lake, &broker.addr(), &["SASL authentication", "SCRAM"]);
    assert!(!r.log.contains("not-the-password"), "the wrong password leaked into the logs");
    let failed_after = r.took;
    eprintln!(
        "SASL_SSL (SCRAM-SHA-512): {} events in {:.1} s; wrong password failed after {:.1} s: {err}; test {:.1} s",
        lines.len(),
        took.as_secs_f64(),
        failed_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
