//! `aifinops replay`: NDJSON files through the same pipeline as `run`, into the same lake.
//! Positions (file, line) are committed with the data, so an interrupted replay resumes exactly; a file
//! replayed to the end is refused a second time (it would double the spend) unless `--force`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use aifinops_aggregate::watermark::{PartitionClock, compute};
use aifinops_ingest::Format;
use aifinops_ingest::file::FileSource;
use anyhow::bail;

use crate::config::Config;
use crate::pipeline::{Pipeline, now_ms};

/// A micro-batch decoded by the reader thread, with the file positions it ends at.
struct Batch {
    chunk: aifinops_ingest::file::Chunk,
    decoded: aifinops_ingest::Decoded,
    positions: BTreeMap<String, u64>,
    bytes_read: u64,
}

pub async fn run(cfg: &Config, files: &[(PathBuf, Format)], force: bool) -> anyhow::Result<String> {
    let started = Instant::now();
    if !cfg.lake.writer.is_empty() {
        anyhow::bail!(
            "lake.writer ({}) is for `run` members sharing a lake; `replay` writes a lake of its own: unset it",
            cfg.lake.writer
        );
    }
    let (mut p, manifest) = Pipeline::open(cfg).await?;
    let mut done: BTreeMap<String, u64> = manifest.map(|m| m.files).unwrap_or_default();
    // Files are known by their canonical path, so `./a.ndjson` and `a.ndjson` are one file; each once.
    let mut inputs: Vec<(PathBuf, Format)> = Vec::new();
    for (f, format) in files {
        let f = if f.as_os_str() == "-" {
            f.clone()
        } else {
            std::fs::canonicalize(f).map_err(|e| anyhow::anyhow!("input file {}: {e}", f.display()))?
        };
        if !inputs.iter().any(|(i, _)| *i == f) {
            inputs.push((f, *format));
        }
    }
    let name = |f: &PathBuf| f.display().to_string();
    // An interrupted replay of several files is resumed by running the same command again: files it
    // finished are skipped then. Otherwise a finished file is refused (it would double its spend).
    let resuming = inputs.iter().any(|(f, _)| done.get(&name(f)).is_some_and(|l| *l != u64::MAX));
    let mut todo = Vec::new();
    for (f, format) in inputs {
        let n = name(&f);
        if done.get(&n) == Some(&u64::MAX) {
            if force {
                done.remove(&n);
            } else if resuming {
                tracing::info!(file = %n, "already replayed; skipped while resuming an interrupted replay");
                continue;
            } else {
                bail!(
                    "{n} was already replayed into {} (its spend is in the lake); use --force to count it again",
                    cfg.lake.dir.display()
                );
            }
        }
        todo.push((f, format));
    }
    let mut src = FileSource::with_formats(todo);
    src.resume_from(done.iter().filter(|(_, v)| **v != u64::MAX).map(|(k, v)| (k.clone(), *v)).collect());
    let total_bytes = src.total_bytes();
    let bar = if std::io::stderr().is_terminal() && total_bytes > 0 {
        let b = indicatif::ProgressBar::new(total_bytes);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{bar:24}] {bytes}/{total_bytes} {msg}")
                .expect("template")
                .progress_chars("=> "),
        );
        Some(b)
    } else {
        None
    };
    let delay = cfg.pipeline.watermark_delay.as_millis() as i64;
    let skew = cfg.pipeline.max_future_skew.as_millis() as i64;
    let mut clock: Option<i64> = p.watermark().map(|w| w + delay);
    let mut last_report = Instant::now();
    // Reading and decoding run on a thread of their own, one micro-batch ahead of dedup, windows and commits
    // (a second core takes about a third of the work); a batch carries the file positions it ends at, so a
    // commit records exactly the records processed.
    let placeholder = aifinops_ingest::Decoder::new(
        Default::default(),
        Default::default(),
        cfg.pipeline.max_record_bytes,
        cfg.pipeline.dead_letter_raw,
    );
    let mut decoder = std::mem::replace(&mut p.decoder, placeholder);
    let batch_max = cfg.pipeline.batch_max_events;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch, aifinops_ingest::IngestError>>(0);
    let reader = std::thread::Builder::new().name("replay-decode".into()).spawn(move || {
        loop {
            let batch = src.read_into(&mut decoder, batch_max, now_ms()).map(|chunk| Batch {
                chunk,
                decoded: decoder.finish(),
                positions: src.positions(),
                bytes_read: src.bytes_read(),
            });
            let stop = batch.as_ref().map_or(true, |b| b.chunk.done);
            if tx.send(batch).is_err() || stop {
                return;
            }
        }
    })?;
    let mut last_positions: BTreeMap<String, u64>;
    loop {
        let Ok(batch) = rx.recv() else { bail!("the replay reader stopped") };
        let Batch { chunk, decoded, positions, bytes_read } = batch?;
        last_positions = positions;
        if let Some(t) = chunk.max_ts_ms {
            clock = Some(clock.map_or(t, |c| c.max(t)));
        }
        // A file is one ordered stream: its clock is the watermark input. History is in the past, so a
        // record dated far ahead of the wall clock must not drag the watermark (and close every window).
        let wm = compute(&[PartitionClock { max_ts_ms: clock, idle: false }], delay, Some((now_ms(), skew)));
        p.process_decoded(decoded, chunk.records, wm.watermark_ms).await?;
        // events/s since the start: on a terminal in the bar, otherwise a log line every 10 s (text or JSON)
        let rate = p.totals.accepted as f64 / started.elapsed().as_secs_f64().max(1e-3);
        if let Some(b) = &bar {
            b.set_position(bytes_read);
            b.set_message(format!("{} events, {rate:.0} events/s", p.totals.accepted));
        } else if last_report.elapsed().as_secs() >= 10 {
            let done = if total_bytes > 0 { bytes_read as f64 / total_bytes as f64 * 100.0 } else { 0.0 };
            tracing::info!(
                percent = format!("{done:.1}"),
                events = p.totals.accepted,
                events_per_sec = rate.round() as u64,
                dead_letters = p.totals.dead_letters,
                "replay progress"
            );
            last_report = Instant::now();
        }
        if chunk.done {
            break;
        }
        if p.commit_due() {
            let mut positions = done.clone();
            positions.extend(last_positions.clone());
            p.commit(BTreeMap::new(), BTreeMap::new(), positions, false, false).await?;
        }
    }
    let _ = reader.join();
    let mut positions = done.clone();
    positions.extend(last_positions);
    let info = p.commit(BTreeMap::new(), BTreeMap::new(), positions, false, true).await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    let t = &p.totals;
    Ok(format!(
        "replay: {} records in {:.2}s ({:.0}/s): {} events, {} duplicates dropped, {} dead letters, {} unpriced, {} unattributed, {} late; {} alerts; lake {} (commit {})",
        t.records,
        secs,
        t.records as f64 / secs.max(1e-9),
        t.accepted - t.duplicates,
        t.duplicates,
        t.dead_letters,
        t.unpriced,
        t.unattributed,
        t.late_rows,
        t.alerts,
        cfg.lake.dir.display(),
        info.seq
    ))
}
