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
//! - `dedup`: the dedup set alone at a high event rate (default 10,000 events/s for 26 hours of event time
//!   against a 24-hour horizon, 1 % redeliveries): its speed, memory, disk and disk reads as it fills and
//!   evicts, and whether it found exactly the redeliveries it was given. Not part of `bench/run` (it writes
//!   tens of GB); see bench/README.md.

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
    /// Feed the dedup set `rate` events/s of event time for `hours` and report its speed, memory and disk.
    Dedup {
        /// Events per second of event time.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Hours of event time to feed.
        #[arg(long, default_value_t = 26.0)]
        hours: f64,
        /// The dedup horizon, in hours (`pipeline.dedup_horizon`).
        #[arg(long, default_value_t = 24.0)]
        horizon_hours: f64,
        /// Percent of events that redeliver an id first seen up to `dup_within_s` seconds before.
        #[arg(long, default_value_t = 1.0)]
        dup_percent: f64,
        #[arg(long, default_value_t = 3600)]
        dup_within_s: u64,
        /// Events per batch; the horizon is evicted and the segment taken after each (as a commit does).
        #[arg(long, default_value_t = 50_000)]
        batch: usize,
        /// Where the runs go (`pipeline.spill_dir`; default the system's temporary directory).
        #[arg(long)]
        spill_dir: Option<PathBuf>,
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
        Cmd::Dedup { rate, hours, horizon_hours, dup_percent, dup_within_s, batch, spill_dir } => {
            dedup(&DedupLoad { rate, hours, horizon_hours, dup_percent, dup_within_s, batch }, spill_dir)
        }
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
                let [a, f] = status_kib(&path, ["RssAnon:", "RssFile:"]);
                anon.fetch_max(a, Ordering::Relaxed);
                file.fetch_max(f, Ordering::Relaxed);
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

struct DedupLoad {
    rate: u64,
    hours: f64,
    horizon_hours: f64,
    dup_percent: f64,
    dup_within_s: u64,
    batch: usize,
}

/// The event key of the `n`th distinct event: two words of splitmix64 (keys are hashes, uniform).
fn nth_key(n: u64) -> [u8; 16] {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let a = mix(n.wrapping_mul(2).wrapping_add(0x9e37_79b9_7f4a_7c15));
    let b = mix(n.wrapping_mul(2).wrapping_add(1).wrapping_add(0x9e37_79b9_7f4a_7c15));
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_le_bytes());
    k[8..].copy_from_slice(&b.to_le_bytes());
    k
}

/// Bytes of the files this process holds open and has unlinked under `dir` (the dedup set's runs).
fn unlinked_bytes(dir: &Path) -> u64 {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    fds.filter_map(Result::ok)
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|t| t.starts_with(dir) && t.to_string_lossy().ends_with(" (deleted)"))
        })
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .map(|m| m.len())
        .sum()
}

/// The KiB values of `fields` (e.g. `"VmRSS:"`) in a `/proc/<pid>/status` file; 0 for one not there.
fn status_kib<const N: usize>(path: &str, fields: [&str; N]) -> [u64; N] {
    let status = std::fs::read_to_string(path).unwrap_or_default();
    fields.map(|name| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

/// This process's resident memory now, and its peak, in KiB.
fn rss_kib() -> (u64, u64) {
    let [now, peak] = status_kib("/proc/self/status", ["VmRSS:", "VmHWM:"]);
    (now, peak)
}

fn dedup(load: &DedupLoad, spill_dir: Option<PathBuf>) -> anyhow::Result<()> {
    use std::sync::Arc;

    use aifinops_aggregate::Deduplicator;
    use aifinops_schemas::event::{EVENT_KEY, EVENT_KEY_LEN, TS};
    use datafusion::arrow::array::{ArrayRef, FixedSizeBinaryBuilder, RecordBatch, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    if load.rate == 0 || load.batch == 0 || !(0.0..100.0).contains(&load.dup_percent) {
        bail!("--rate and --batch must be positive and --dup-percent in [0, 100)");
    }
    let dir = spill_dir.clone().unwrap_or_else(std::env::temp_dir);
    let horizon_ms = (load.horizon_hours * 3_600_000.0) as i64;
    // every redelivery must be of an id still in the horizon (the cutoff trails the last batch by the
    // horizon, to the second), or the set rightly counts it as new and the exact check below cannot hold
    let batch_span_ms = (load.batch as u64 * 1000).div_ceil(load.rate) as i64;
    if (load.dup_within_s as i64) * 1000 + batch_span_ms + 1000 >= horizon_ms {
        bail!(
            "--dup-within-s ({} s) plus a batch ({batch_span_ms} ms of event time) must stay inside the horizon ({} h)",
            load.dup_within_s,
            load.horizon_hours
        );
    }
    let events = (load.hours * 3600.0 * load.rate as f64) as u64;
    let mut set = Deduplicator::new(horizon_ms).spilling_to(spill_dir);
    let schema = Arc::new(Schema::new(vec![
        Field::new(EVENT_KEY, DataType::FixedSizeBinary(EVENT_KEY_LEN), false),
        Field::new(TS, DataType::Timestamp(TimeUnit::Millisecond, None), false),
    ]));
    // 2026-11-01T00:00:00Z
    let t0 = 1_793_491_200_000i64;
    let ts_of = |i: u64| t0 + (i as i128 * 1000 / load.rate as i128) as i64;
    let dup_every = if load.dup_percent > 0.0 { 100.0 / load.dup_percent } else { f64::INFINITY };
    let within = load.dup_within_s * load.rate;
    let (mut distinct, mut injected, mut found) = (0u64, 0u64, 0u64);
    let (mut max_mem, mut max_disk, mut max_held) = (0usize, 0u64, 0usize);
    let (cpu0, wall0) = (thread_cpu(), Instant::now());
    let (mut next_report, report_every) = (t0 + 3_600_000, 3_600_000);
    println!(
        "dedup set: {} events/s for {} h of event time ({events} events), horizon {} h, {} % redeliveries of ids \
         up to {} s old, batches of {}, runs in {}",
        load.rate,
        load.hours,
        load.horizon_hours,
        load.dup_percent,
        load.dup_within_s,
        load.batch,
        dir.display()
    );
    println!(
        "{:>6} {:>12} {:>12} {:>10} {:>10} {:>10} {:>12} {:>9}",
        "hour", "events", "ids held", "memory MB", "disk MB", "RSS MiB", "disk reads", "CPU s"
    );
    let mut i = 0u64;
    let mut dup_credit = 0.0f64;
    while i < events {
        let n = (load.batch as u64).min(events - i) as usize;
        let mut keys = FixedSizeBinaryBuilder::with_capacity(n, EVENT_KEY_LEN);
        let mut ts = Vec::with_capacity(n);
        for j in i..i + n as u64 {
            dup_credit += 1.0;
            let key = if dup_credit >= dup_every && distinct > 0 {
                dup_credit -= dup_every;
                injected += 1;
                // a redelivery of one of the last `within` distinct ids (a multiplicative hash picks which)
                let back = 1 + (j.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % within.min(distinct).max(1);
                nth_key(distinct - back)
            } else {
                distinct += 1;
                nth_key(distinct - 1)
            };
            keys.append_value(key)?;
            ts.push(ts_of(j));
        }
        i += n as u64;
        let last_ts = *ts.last().expect("a batch has rows");
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(keys.finish()) as ArrayRef, Arc::new(TimestampMillisecondArray::from(ts)) as ArrayRef],
        )?;
        let (_, dups) = set.filter(&batch)?;
        found += dups;
        set.evict_before(last_ts - horizon_ms)?;
        drop(set.take_segment());
        max_mem = max_mem.max(set.memory_bytes());
        max_held = max_held.max(set.len());
        if last_ts >= next_report || i == events {
            let disk = unlinked_bytes(&dir);
            max_disk = max_disk.max(disk);
            println!(
                "{:>6.1} {:>12} {:>12} {:>10.1} {:>10.1} {:>10} {:>12} {:>9.1}",
                (last_ts - t0) as f64 / 3_600_000.0,
                i,
                set.len(),
                set.memory_bytes() as f64 / 1e6,
                disk as f64 / 1e6,
                rss_kib().0 / 1024,
                set.disk_reads(),
                thread_cpu() - cpu0
            );
            next_report += report_every;
        }
    }
    let (cpu, wall) = (thread_cpu() - cpu0, wall0.elapsed().as_secs_f64());
    let lookups_new = events - injected;
    println!(
        "{events} events in {wall:.1} s wall, {cpu:.1} CPU s: {:.0} events/s a core, {:.0} ns an event",
        events as f64 / cpu,
        cpu * 1e9 / events as f64
    );
    println!(
        "at most {max_held} ids held; memory at most {:.1} MB ({:.2} bytes an id held), disk at most {:.1} MB \
         (sampled hourly), peak RSS {} MiB",
        max_mem as f64 / 1e6,
        max_mem as f64 / max_held.max(1) as f64,
        max_disk as f64 / 1e6,
        rss_kib().1 / 1024
    );
    println!(
        "disk reads: {} for {injected} redeliveries and {lookups_new} new ids ({:.2} % of lookups)",
        set.disk_reads(),
        set.disk_reads() as f64 * 100.0 / events as f64
    );
    if found != injected {
        bail!("the set dropped {found} events as duplicates, but {injected} were redeliveries");
    }
    println!("redeliveries found: {found} of {injected} (exact)");
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
