//! Helpers of `bench/run` (see bench/README.md):
//! - `produce`: streams an NDJSON file into a topic (one record per line), creating the topic;
//! - `consume`: the broker + client limit: reads every message of a topic with rdkafka in a consumer group
//!   and discards it, counting messages and bytes, until `--expect` messages arrived.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

#[derive(Parser)]
#[command(name = "aifinops-bench")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create `topic` with `partitions` and produce every line of `file` into it (round robin).
    Produce {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 2)]
        partitions: i32,
        file: PathBuf,
    },
    /// Consume `topic` from the beginning in a fresh group and discard every message.
    Consume {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        group: String,
        /// Messages to read before stopping.
        #[arg(long)]
        expect: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Produce { brokers, topic, partitions, file } => produce(&brokers, &topic, partitions, &file),
        Cmd::Consume { brokers, topic, group, expect, timeout } => consume(&brokers, &topic, &group, expect, timeout),
    }
}

fn produce(brokers: &str, topic: &str, partitions: i32, file: &PathBuf) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().context("admin client")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let res = rt.block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))?;
    for r in res {
        if let Err((t, e)) = r {
            bail!("creating topic {t}: {e}");
        }
    }
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "50")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .context("producer")?;
    let started = Instant::now();
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let (mut n, mut bytes) = (0u64, 0u64);
    for (i, line) in std::io::BufReader::with_capacity(1 << 20, f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let part = (i % partitions as usize) as i32;
        loop {
            match p.send(BaseRecord::<(), _>::to(topic).partition(part).payload(&line)) {
                Ok(()) => break,
                Err((e, _)) if e.to_string().contains("Queue full") => {
                    p.poll(Duration::from_millis(20));
                }
                Err((e, _)) => bail!("produce: {e}"),
            }
        }
        n += 1;
        bytes += line.len() as u64;
        if n.is_multiple_of(10_000) {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(600)).context("flush")?;
    let s = started.elapsed().as_secs_f64();
    eprintln!("produced {n} records ({bytes} bytes) to {topic} in {s:.1}s ({:.0}/s)", n as f64 / s);
    Ok(())
}

fn consume(brokers: &str, topic: &str, group: &str, expect: u64, timeout: u64) -> anyhow::Result<()> {
    // the same fetch settings as `aifinops run` (ingest/src/kafka.rs)
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("queued.max.messages.kbytes", "65536")
        .set("fetch.max.bytes", "52428800")
        .create()
        .context("consumer")?;
    c.subscribe(&[topic])?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(timeout);
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    while n < expect {
        if Instant::now() > deadline {
            bail!("only {n} of {expect} messages within {timeout}s");
        }
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                n += 1;
                bytes += m.payload_len() as u64;
            }
            Some(Err(e)) => bail!("consume: {e}"),
            None => {}
        }
    }
    let s = started.elapsed().as_secs_f64();
    let join = first.map_or(0.0, |f| (f - started).as_secs_f64());
    eprintln!("consumed {n} messages ({bytes} bytes) in {s:.2}s (first message after {join:.2}s)");
    println!("{n} {bytes} {s:.3} {join:.3}");
    Ok(())
}
