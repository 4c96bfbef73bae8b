//! Helpers of `bench/run` (see bench/README.md):
//! - `produce`: streams an NDJSON file into a topic (one record per line), creating the topic;
//! - `consume`: the broker + client limit: reads every message of a topic with rdkafka in a consumer group
//!   and discards it, counting messages and bytes, until `--expect` messages arrived;
//! - `stages`: the floor of `aifinops replay` on this machine: its first stage alone (read the NDJSON and
//!   decode, validate, price and attribute it into Arrow batches with the same catalog and owner map, then
//!   discard them) and its last stage alone (write the rollup rows a replay produced, read back from its
//!   lake beforehand, with the lake's Parquet writer). Whatever else replay does comes on top of both.
//! - `measure`: runs a command and writes its wall time, CPU time and peak RSS (from `wait4`), with the peaks
//!   of its anonymous and file-backed memory sampled every 50 ms, as JSON. The jobs are started from this
//!   small process, not from the Python driver: a child's peak RSS counts the memory of the process it was
//!   spawned from (Linux keeps the spawning process's high-water mark across `exec`), and the driver holds
//!   hundreds of MiB once DuckDB has cross-checked the lakes.

use std::io::BufRead;
use std::path::{Path, PathBuf};
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
    /// Time replay's first stage (decode `file`) and last stage (write the rollups of `lake` again) alone.
    Stages {
        /// The owner map replay used.
        #[arg(long)]
        owners: PathBuf,
        /// A lake a replay of `file` wrote: its rollup files are written again, into `scratch`.
        #[arg(long)]
        lake: PathBuf,
        /// Where the rewritten files go (emptied first, deleted after).
        #[arg(long)]
        scratch: PathBuf,
        /// Records per decoded batch (replay's `pipeline.batch_max_events`).
        #[arg(long, default_value_t = 50_000)]
        batch: usize,
        file: PathBuf,
    },
    /// Run `cmd` and write its wall time, CPU time and memory peaks to `out` (JSON); exits with its code.
    Measure {
        #[arg(long)]
        out: PathBuf,
        #[arg(trailing_var_arg = true, required = true)]
        cmd: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Produce { brokers, topic, partitions, file } => produce(&brokers, &topic, partitions, &file),
        Cmd::Consume { brokers, topic, group, expect, timeout } => consume(&brokers, &topic, &group, expect, timeout),
        Cmd::Stages { owners, lake, scratch, batch, file } => stages(&owners, &lake, &scratch, batch, &file),
        Cmd::Measure { out, cmd } => measure(&out, &cmd),
    }
}

fn measure(out: &Path, cmd: &[String]) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let started = Instant::now();
    let child = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .spawn()
        .with_context(|| format!("starting {}", cmd.join(" ")))?;
    let pid = child.id();
    // the kernel keeps only the peak of their sum (ru_maxrss): sample each
    let done = Arc::new(AtomicBool::new(false));
    let (anon, file) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sampler = {
        let (done, anon, file) = (done.clone(), anon.clone(), file.clone());
        std::thread::spawn(move || {
            let path = format!("/proc/{pid}/status");
            while !done.load(Ordering::Relaxed) {
                for line in std::fs::read_to_string(&path).unwrap_or_default().lines() {
                    let kib = || line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                    if line.starts_with("RssAnon:") {
                        anon.fetch_max(kib(), Ordering::Relaxed);
                    } else if line.starts_with("RssFile:") {
                        file.fetch_max(kib(), Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut status = 0;
    // SAFETY: plain system call on our own child; `ru` is a zeroed out-parameter
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
    let wall = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    if r < 0 {
        bail!("waiting for {}: {}", cmd.join(" "), std::io::Error::last_os_error());
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    let json = serde_json::json!({
        "wall": wall,
        "cpu": secs(ru.ru_utime) + secs(ru.ru_stime),
        "rss_kib": ru.ru_maxrss,
        "anon_kib": anon.load(Ordering::Relaxed),
        "file_kib": file.load(Ordering::Relaxed),
        "exit": code,
    });
    std::fs::write(out, json.to_string()).with_context(|| format!("writing {}", out.display()))?;
    std::process::exit(code)
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

/// CPU seconds this thread has used (user + system).
fn thread_cpu() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec to write to; CLOCK_THREAD_CPUTIME_ID exists on every Linux
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Every Parquet file under `dir`, sorted.
fn parquet_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn stages(owners: &Path, lake: &Path, scratch: &Path, batch: usize, file: &Path) -> anyhow::Result<()> {
    use std::sync::Arc;

    use aifinops_ingest::file::FileSource;
    use aifinops_ingest::{Decoder, OwnerMap, PriceCatalog, RawPolicy};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    // 1. read + decode: what replay's reader thread does, without anything after it
    let owners = OwnerMap::load(owners).with_context(|| format!("owner map {}", owners.display()))?;
    let mut decoder = Decoder::new(Arc::new(PriceCatalog::builtin()), Arc::new(owners), 1 << 20, RawPolicy::Redacted);
    let mut src = FileSource::new(vec![file.to_path_buf()]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let (mut events, mut dead) = (0u64, 0u64);
    loop {
        let chunk = src.read_into(&mut decoder, batch, now)?;
        let decoded = decoder.finish();
        events += decoded.batch.num_rows() as u64;
        dead += decoded.dead_letters.len() as u64;
        if chunk.done {
            break;
        }
    }
    let (decode_wall, decode_cpu) = (wall.elapsed().as_secs_f64(), thread_cpu() - cpu);
    let bytes = src.bytes_read();
    eprintln!(
        "decode: {events} events ({dead} dead letters), {bytes} bytes in {decode_wall:.2}s, {decode_cpu:.2} CPU s"
    );

    // 2. write: the rollup rows of the lake, read into memory first (not timed), then written as the lake
    // writes them, one file per input file
    let files = parquet_files(&lake.join("rollups"))?;
    if files.is_empty() {
        bail!("no rollup files under {}", lake.join("rollups").display());
    }
    let mut tables = Vec::with_capacity(files.len());
    for f in &files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f)?)
            .with_context(|| format!("reading {}", f.display()))?
            .with_batch_size(1 << 20)
            .build()?;
        tables.push(reader.collect::<Result<Vec<_>, _>>().with_context(|| format!("reading {}", f.display()))?);
    }
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let (mut rows, mut written) = (0u64, 0u64);
    for (i, batches) in tables.iter().enumerate() {
        rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        written += aifinops_sink::parquet_io::write_parquet(&scratch.join(format!("{i}.parquet")), batches)?;
    }
    let (write_wall, write_cpu) = (wall.elapsed().as_secs_f64(), thread_cpu() - cpu);
    std::fs::remove_dir_all(scratch).ok();
    eprintln!(
        "write: {rows} rollup rows in {} files, {written} bytes in {write_wall:.2}s, {write_cpu:.2} CPU s",
        files.len()
    );
    println!(
        "{}",
        serde_json::json!({
            "decode": {"events": events, "bytes": bytes, "wall": decode_wall, "cpu": decode_cpu},
            "write": {"rows": rows, "files": files.len(), "bytes": written, "wall": write_wall, "cpu": write_cpu},
        })
    );
    Ok(())
}
