//! Kafka helpers for the end-to-end tests (the broker is the real test broker from scripts/test, or a
//! [`Tansu`] of the test's own). The `_with` variants take extra librdkafka properties (TLS, SASL).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

pub fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    create_topics_with(brokers, &[], topics)
}

/// A client configuration: the bootstrap servers plus `props`.
pub fn client_config(brokers: &str, props: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in props {
        c.set(*k, *v);
    }
    c
}

pub fn create_topics_with(brokers: &str, props: &[(&str, &str)], topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, props).create().unwrap();
    let new: Vec<NewTopic> = topics.iter().map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1))).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let res = rt
        .block_on(admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))))
        .unwrap();
    for r in res {
        if let Err((t, e)) = r {
            panic!("creating topic {t}: {e}");
        }
    }
}

/// Produces raw payloads (key `k<i % 7>`) and waits for every acknowledgement.
pub fn produce_bytes(brokers: &str, topic: &str, payloads: &[Vec<u8>]) {
    produce_bytes_with(brokers, &[], topic, payloads)
}

pub fn produce_bytes_with(brokers: &str, props: &[(&str, &str)], topic: &str, payloads: &[Vec<u8>]) {
    let p: BaseProducer = client_config(brokers, props)
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "20000000")
        .create()
        .unwrap();
    for (i, l) in payloads.iter().enumerate() {
        let key = format!("k{}", i % 7);
        p.send(BaseRecord::to(topic).key(&key).payload(l)).unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

/// Every payload of `topic` from the beginning, read until `expect_at_least` arrived and 2 s passed quietly.
pub fn read_payloads(brokers: &str, topic: &str, expect_at_least: usize, within: Duration) -> Vec<Vec<u8>> {
    read_payloads_with(brokers, &[], topic, expect_at_least, within)
}

pub fn read_payloads_with(
    brokers: &str,
    props: &[(&str, &str)],
    topic: &str,
    expect_at_least: usize,
    within: Duration,
) -> Vec<Vec<u8>> {
    let c: BaseConsumer = client_config(brokers, props)
        .set("group.id", super::unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let (deadline, mut quiet) = (Instant::now() + within, Instant::now());
    let mut out = Vec::new();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(m.payload().unwrap_or_default().to_vec());
                quiet = Instant::now();
            }
            _ if out.len() >= expect_at_least && quiet.elapsed() > Duration::from_secs(2) => break,
            _ => {}
        }
    }
    out
}

/// Produces payloads into one partition of `topic`.
pub fn produce_to(brokers: &str, topic: &str, partition: i32, payloads: &[String]) {
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    for l in payloads {
        p.send(BaseRecord::<(), _>::to(topic).partition(partition).payload(l))
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The `tansu` binary scripts/test installs (on PATH, or in ~/.cargo/bin).
pub fn tansu_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::split_paths(&path).chain(home).map(|d| d.join("tansu")).find(|p| p.is_file())
}

/// A Tansu broker of a test, on its own port and sqlite file (so a restart keeps the data).
pub struct Tansu {
    pub dir: PathBuf,
    pub port: u16,
    /// The port advertised in metadata (a proxy's, in front of the broker); the broker's own by default.
    pub advertised_port: u16,
    /// Extra `tansu broker` arguments (e.g. `--authentication`), used from the next (re)start on.
    pub args: Vec<String>,
    child: Option<Child>,
}

impl Tansu {
    pub fn start(dir: PathBuf) -> Tansu {
        Tansu::start_with(dir, None, &[])
    }

    /// A broker that advertises `advertised_port` (a TLS proxy's) and runs with `args`.
    pub fn start_with(dir: PathBuf, advertised_port: Option<u16>, args: &[&str]) -> Tansu {
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let advertised_port = advertised_port.unwrap_or(port);
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut t = Tansu { dir, port, advertised_port, args, child: None };
        t.restart();
        t
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let listen = format!("tcp://{}", self.addr());
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised_port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("broker.log")).unwrap();
        let child = Command::new(tansu_bin().expect("tansu"))
            .args(["broker", "--listener-url", &listen, "--advertised-listener-url", &advertised])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .args(&self.args)
            .current_dir(&self.dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn tansu");
        self.child = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(self.addr()).is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "tansu did not listen on {}", self.addr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the broker (SIGKILL: no goodbye to its clients).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling a child process we spawned and have not reaped yet.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes the owner map and the `aifinops run` configuration the Kafka tests share into `dir`: commits every
/// second, a 6 s session, dead letters to `dlq`, the lake in `dir/lake`, the owners of [`super::OWNERS`] and the
/// `search-daily` budget ($1.00 a day). `sections` is appended as is (more tables: `[metrics]`,
/// `[kafka.consumer]`, …). Returns the configuration file and the lake.
pub fn run_config(dir: &Path, dlq: &str, sections: &str) -> (PathBuf, PathBuf) {
    std::fs::write(dir.join("owners.toml"), super::OWNERS).unwrap();
    let lake = dir.join("lake");
    let config = dir.join("aifinops.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
commit_interval = "1s"
batch_max_wait = "200ms"
idle_timeout = "5s"
[kafka]
dead_letter_topic = "{dlq}"
session_timeout = "6s"
max_poll_interval = "10s"
[lake]
dir = "{lake}"
[owners]
file = "{owners}"
[[budget]]
name = "search-daily"
owner = "search"
period = "day"
limit_usd = "1.00"
{sections}
"#,
            lake = lake.display(),
            owners = dir.join("owners.toml").display()
        ),
    )
    .unwrap();
    (config, lake)
}
