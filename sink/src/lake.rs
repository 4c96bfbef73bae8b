//! The lake and its commit protocol (see DESIGN.md, "Commit protocol").
//!
//! ```text
//! <lake>/rollups/window=1h/date=2026-11-30/part-0000000042-000.parquet   committed data (readers glob these)
//! <lake>/alerts/date=…/part-….parquet, <lake>/dead_letters/date=…/part-….parquet
//! <lake>/_aifinops/manifest/0000000042.json   the commit point: offsets, files, state dir
//! <lake>/_aifinops/staging/0000000042/…       data files before the commit point (never globbed)
//! <lake>/_aifinops/state/0000000042/…         open windows, rule state, outbox
//! <lake>/_aifinops/dedup/0000000042.bin        event ids first seen in commit 42 (append-only segments)
//! <lake>/_aifinops/published                   last seq whose outbox reached Kafka
//! ```
//! A commit writes data files to staging and the state snapshot, fsyncs them, then atomically renames
//! the manifest into place (the commit point), then renames the staged files to their final names.
//! Recovery finishes that roll-forward for the last manifest and deletes everything newer than it, so a
//! reader that globs `rollups/**/*.parquet` never sees a torn file or an uncommitted row, and the
//! consumer resumes from exactly the offsets whose effects are in the lake.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use aifinops_schemas::alert::alert_schema;
use aifinops_schemas::dead_letter::dead_letter_schema;
use aifinops_schemas::{Alert, DeadLetter};
use datafusion::arrow::array::{
    ArrayRef, AsArray, BinaryArray, BooleanArray, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use serde::{Deserialize, Serialize};

use crate::parquet_io::write_parquet;
use crate::{SinkError, fault, io_err};

const META: &str = "_aifinops";

/// The commit record. Field names are part of the on-disk format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub seq: u64,
    pub committed_at: String,
    /// Kafka: topic -> partition -> next offset to consume.
    #[serde(default)]
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Replay: file -> lines already consumed (`u64::MAX` once finished).
    #[serde(default)]
    pub files: BTreeMap<String, u64>,
    /// Data files this commit added, relative to the lake root.
    pub added: Vec<String>,
    /// Watermark (event time, ms) after this commit.
    pub watermark_ms: Option<i64>,
    /// Per-partition event-time maxima (`topic/partition` -> ms) for the watermark after restart.
    #[serde(default)]
    pub partition_max_ts: BTreeMap<String, i64>,
    /// State directory relative to the lake root.
    pub state_dir: String,
    /// True when the state directory holds an outbox (alerts and dead letters to publish).
    pub outbox: bool,
    /// Live dedup segments: commit seq -> largest event time in it. A segment leaves the list (and
    /// the disk) once all its entries are older than the dedup horizon.
    #[serde(default)]
    pub dedup_segments: BTreeMap<u64, i64>,
    /// Running totals, for operators (`aifinops query` reads the Parquet; these are for logs).
    #[serde(default)]
    pub totals: BTreeMap<String, u64>,
}

/// The open state carried from one commit to the next.
#[derive(Debug, Clone, Default)]
pub struct StateSnapshot {
    /// Open window rows per window label.
    pub partials: Vec<(String, RecordBatch)>,
    /// Dedup entries. On commit: only those new since the previous commit (a segment); on recovery: all
    /// live segments concatenated.
    pub dedup: Vec<u8>,
    /// Largest event time in `dedup` (on commit).
    pub dedup_max_ts: i64,
    /// Segments whose largest event time is below this are dropped (on commit).
    pub dedup_cutoff_ms: Option<i64>,
    /// Alert rule state (JSON).
    pub rules: serde_json::Value,
}

/// Alerts and dead letters a commit made, to publish after the commit point.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outbox {
    pub alerts: Vec<Alert>,
    /// Dead letters as (source, kind, reason, raw hex).
    pub dead_letters: Vec<OutboxDeadLetter>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxDeadLetter {
    pub source: String,
    pub kind: String,
    pub reason: String,
    pub raw_hex: String,
    pub received_at_ms: i64,
}

impl OutboxDeadLetter {
    pub fn raw(&self) -> Vec<u8> {
        (0..self.raw_hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(&self.raw_hex[2 * i..2 * i + 2], 16).ok())
            .collect()
    }
}

/// One commit's content.
#[derive(Debug, Default)]
pub struct Commit {
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    pub files: BTreeMap<String, u64>,
    pub rollups: Vec<(String, RecordBatch)>,
    pub alerts: Vec<Alert>,
    pub dead_letters: Vec<DeadLetter>,
    pub state: StateSnapshot,
    pub watermark_ms: Option<i64>,
    pub partition_max_ts: BTreeMap<String, i64>,
    pub totals: BTreeMap<String, u64>,
    /// Whether alerts/dead letters must be published to Kafka after the commit.
    pub publish: bool,
}

/// What a commit wrote.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    pub seq: u64,
    pub files: usize,
    pub bytes: u64,
    pub rollup_rows: usize,
}

/// What `open` found: the last commit and its state.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub manifest: Manifest,
    pub state: StateSnapshot,
}

/// A lake directory with its commit log. One writer at a time: the lake is locked while open.
pub struct Lake {
    root: PathBuf,
    last: Option<Manifest>,
    /// Exclusive `flock` on `_aifinops/lock`, released when the lake is dropped (or the process dies).
    _lock: fs::File,
}

fn lock(root: &Path) -> Result<fs::File, SinkError> {
    use std::os::fd::AsRawFd;
    let path = root.join(META).join("lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel call.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(SinkError::Manifest {
            path: path.display().to_string(),
            reason: "the lake is in use by another aifinops process (one writer per lake)".into(),
        });
    }
    Ok(f)
}

fn seq_name(seq: u64) -> String {
    format!("{seq:010}")
}

fn fsync_dir(dir: &Path) -> Result<(), SinkError> {
    fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io_err(format!("fsync directory {}", dir.display())))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = fs::File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        f.write_all(bytes).map_err(io_err(format!("writing {}", tmp.display())))?;
        f.sync_all().map_err(io_err(format!("fsync {}", tmp.display())))?;
    }
    fs::rename(&tmp, path).map_err(io_err(format!("renaming {} into place", path.display())))?;
    fsync_dir(path.parent().expect("parent"))
}

fn date_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%d").to_string()
}

/// Splits rows by the UTC date of a timestamp column (a date is formatted once per distinct day).
fn by_date(batch: &RecordBatch, ts_col: usize) -> Result<Vec<(String, RecordBatch)>, SinkError> {
    const DAY_MS: i64 = 86_400_000;
    let ts = batch.column(ts_col).as_primitive::<TimestampMillisecondType>();
    let days: Vec<i64> = ts.values().iter().map(|&v| v.div_euclid(DAY_MS)).collect();
    let mut uniq = days.clone();
    uniq.sort_unstable();
    uniq.dedup();
    if uniq.len() == 1 {
        return Ok(vec![(date_of(uniq[0] * DAY_MS), batch.clone())]);
    }
    let mut out = Vec::new();
    for d in uniq {
        let mask: BooleanArray = days.iter().map(|x| Some(*x == d)).collect();
        let part = filter_record_batch(batch, &mask)
            .map_err(|e| SinkError::Arrow { context: "partitioning by date".into(), source: e })?;
        out.push((date_of(d * DAY_MS), part));
    }
    Ok(out)
}

impl Lake {
    /// Opens (creating) a lake, recovering from any interrupted commit.
    pub fn open(root: &Path) -> Result<(Lake, Option<Recovered>), SinkError> {
        for d in ["manifest", "staging", "state", "dedup"] {
            fs::create_dir_all(root.join(META).join(d))
                .map_err(io_err(format!("creating {}", root.join(META).join(d).display())))?;
        }
        let mut lake = Lake { root: root.to_path_buf(), last: None, _lock: lock(root)? };
        let recovered = lake.recover()?;
        Ok((lake, recovered))
    }

    /// Recovers from an interrupted commit and returns the last commit's state: on open, and to roll
    /// uncommitted work back.
    pub fn recover(&mut self) -> Result<Option<Recovered>, SinkError> {
        let root = self.root.clone();
        let root = root.as_path();
        let lake = self;
        lake.last = None;
        let manifests = lake.manifest_seqs()?;
        let last_seq = manifests.last().copied();
        if let Some(seq) = last_seq {
            let m = lake.read_manifest(seq)?;
            lake.roll_forward(&m)?;
            lake.last = Some(m);
        }
        // Anything newer than the last commit point was never committed: remove it.
        let last = last_seq.unwrap_or(0);
        for d in ["staging", "state"] {
            let dir = root.join(META).join(d);
            for e in fs::read_dir(&dir).map_err(io_err(format!("listing {}", dir.display())))? {
                let e = e.map_err(io_err(format!("listing {}", dir.display())))?;
                let name = e.file_name().to_string_lossy().to_string();
                let Ok(seq) = name.parse::<u64>() else {
                    continue;
                };
                let stale_staging = d == "staging" && seq <= last; // rolled forward already
                if seq > last || stale_staging {
                    tracing::info!(dir = %e.path().display(), "removing uncommitted or finished commit directory");
                    fs::remove_dir_all(e.path()).map_err(io_err(format!("removing {}", e.path().display())))?;
                }
            }
        }
        // Dedup segments the last commit does not list are uncommitted or expired.
        let live: std::collections::BTreeSet<u64> =
            lake.last.as_ref().map(|m| m.dedup_segments.keys().copied().collect()).unwrap_or_default();
        for e in fs::read_dir(root.join(META).join("dedup")).map_err(io_err("listing dedup segments"))?.flatten() {
            let seq = e.file_name().to_string_lossy().strip_suffix(".bin").and_then(|s| s.parse::<u64>().ok());
            if seq.is_none_or(|s| !live.contains(&s)) {
                let _ = fs::remove_file(e.path());
            }
        }
        for e in fs::read_dir(root.join(META).join("manifest")).map_err(io_err("listing manifests"))?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(match &lake.last {
            None => None,
            Some(m) => Some(Recovered { manifest: m.clone(), state: lake.read_state(m)? }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn last_manifest(&self) -> Option<&Manifest> {
        self.last.as_ref()
    }

    fn manifest_seqs(&self) -> Result<Vec<u64>, SinkError> {
        let dir = self.root.join(META).join("manifest");
        let mut seqs: Vec<u64> = fs::read_dir(&dir)
            .map_err(io_err(format!("listing {}", dir.display())))?
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".json").and_then(|s| s.parse().ok()))
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    fn read_manifest(&self, seq: u64) -> Result<Manifest, SinkError> {
        let p = self.root.join(META).join("manifest").join(format!("{}.json", seq_name(seq)));
        let text = fs::read_to_string(&p).map_err(io_err(format!("reading {}", p.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| SinkError::Manifest { path: p.display().to_string(), reason: e.to_string() })
    }

    fn staged_path(&self, seq: u64, rel: &str) -> PathBuf {
        self.root.join(META).join("staging").join(seq_name(seq)).join(format!("{}.staged", rel.replace('/', "__")))
    }

    /// Moves a committed manifest's staged files to their final names (idempotent).
    fn roll_forward(&self, m: &Manifest) -> Result<(), SinkError> {
        let mut dirs = std::collections::BTreeSet::new();
        for (i, rel) in m.added.iter().enumerate() {
            let staged = self.staged_path(m.seq, rel);
            let fin = self.root.join(rel);
            if staged.exists() {
                let parent = fin.parent().expect("parent");
                fs::create_dir_all(parent).map_err(io_err(format!("creating {}", parent.display())))?;
                fs::rename(&staged, &fin).map_err(io_err(format!("publishing {}", fin.display())))?;
                dirs.insert(parent.to_path_buf());
                if i == 0 {
                    fault::point("mid_rollforward");
                }
            } else if !fin.exists() {
                return Err(SinkError::Manifest {
                    path: format!("{}/{}.json", META, seq_name(m.seq)),
                    reason: format!(
                        "committed file {rel} is neither staged nor published; the lake was modified by hand"
                    ),
                });
            }
        }
        for d in dirs {
            fsync_dir(&d)?;
        }
        Ok(())
    }

    fn state_dir(&self, seq: u64) -> PathBuf {
        self.root.join(META).join("state").join(seq_name(seq))
    }

    fn read_state(&self, m: &Manifest) -> Result<StateSnapshot, SinkError> {
        let dir = self.root.join(&m.state_dir);
        let mut st = StateSnapshot::default();
        let rd = fs::read_dir(&dir).map_err(io_err(format!("listing state {}", dir.display())))?;
        let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names {
            let name = p.file_name().unwrap_or_default().to_string_lossy().to_string();
            if let Some(label) = name.strip_prefix("partials-").and_then(|s| s.strip_suffix(".arrow")) {
                let f = fs::File::open(&p).map_err(io_err(format!("opening {}", p.display())))?;
                let r = FileReader::try_new(f, None)
                    .map_err(|e| SinkError::Arrow { context: format!("reading {}", p.display()), source: e })?;
                let schema = r.schema();
                let batches: Result<Vec<_>, _> = r.collect();
                let batches =
                    batches.map_err(|e| SinkError::Arrow { context: format!("reading {}", p.display()), source: e })?;
                let b = datafusion::arrow::compute::concat_batches(&schema, &batches)
                    .map_err(|e| SinkError::Arrow { context: format!("reading {}", p.display()), source: e })?;
                st.partials.push((label.to_string(), b));
            } else if name == "rules.json" {
                let t = fs::read_to_string(&p).map_err(io_err(format!("reading {}", p.display())))?;
                st.rules = serde_json::from_str(&t)
                    .map_err(|e| SinkError::Manifest { path: p.display().to_string(), reason: e.to_string() })?;
            }
        }
        for seq in m.dedup_segments.keys() {
            let p = self.dedup_path(*seq);
            st.dedup.extend(fs::read(&p).map_err(io_err(format!("reading dedup segment {}", p.display())))?);
        }
        Ok(st)
    }

    fn dedup_path(&self, seq: u64) -> PathBuf {
        self.root.join(META).join("dedup").join(format!("{}.bin", seq_name(seq)))
    }

    fn write_state(&self, seq: u64, st: &StateSnapshot, outbox: Option<&Outbox>) -> Result<(), SinkError> {
        let dir = self.state_dir(seq);
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        for (label, batch) in &st.partials {
            let p = dir.join(format!("partials-{label}.arrow"));
            let f = fs::File::create(&p).map_err(io_err(format!("creating {}", p.display())))?;
            let ae = |e| SinkError::Arrow { context: format!("writing {}", p.display()), source: e };
            let mut w = FileWriter::try_new(f, &batch.schema()).map_err(ae)?;
            w.write(batch).map_err(|e| SinkError::Arrow { context: format!("writing {}", p.display()), source: e })?;
            w.finish().map_err(|e| SinkError::Arrow { context: format!("writing {}", p.display()), source: e })?;
            let f = w
                .into_inner()
                .map_err(|e| SinkError::Arrow { context: format!("writing {}", p.display()), source: e })?;
            f.sync_all().map_err(io_err(format!("fsync {}", p.display())))?;
        }
        if !st.dedup.is_empty() {
            write_atomic(&self.dedup_path(seq), &st.dedup)?;
        }
        write_atomic(&dir.join("rules.json"), serde_json::to_string(&st.rules).expect("json").as_bytes())?;
        if let Some(o) = outbox {
            write_atomic(&dir.join("outbox.json"), serde_json::to_string(o).expect("json").as_bytes())?;
        }
        fsync_dir(&dir)
    }

    /// Commits: data files, state and offsets become visible together, or not at all.
    pub fn commit(&mut self, c: Commit) -> Result<CommitInfo, SinkError> {
        let seq = self.last.as_ref().map_or(1, |m| m.seq + 1);
        let staging = self.root.join(META).join("staging").join(seq_name(seq));
        fs::create_dir_all(&staging).map_err(io_err(format!("creating {}", staging.display())))?;
        let mut info = CommitInfo { seq, ..Default::default() };
        let mut added = Vec::new();
        let mut write = |rel: String, batches: &[RecordBatch], info: &mut CommitInfo| -> Result<(), SinkError> {
            let staged = self.staged_path(seq, &rel);
            info.bytes += write_parquet(&staged, batches)?;
            info.files += 1;
            added.push(rel);
            Ok(())
        };
        // rollups: one file per window size and date
        let mut by_label: BTreeMap<&str, Vec<&RecordBatch>> = BTreeMap::new();
        for (label, b) in &c.rollups {
            if b.num_rows() > 0 {
                by_label.entry(label.as_str()).or_default().push(b);
            }
        }
        for (label, batches) in by_label {
            let all = datafusion::arrow::compute::concat_batches(&batches[0].schema(), batches.iter().copied())
                .map_err(|e| SinkError::Arrow { context: "concatenating rollups".into(), source: e })?;
            info.rollup_rows += all.num_rows();
            for (date, part) in by_date(&all, 0)? {
                write(
                    format!("rollups/window={label}/date={date}/part-{}-000.parquet", seq_name(seq)),
                    &[part],
                    &mut info,
                )?;
            }
        }
        if !c.alerts.is_empty() {
            let b = alerts_batch(&c.alerts)?;
            for (date, part) in by_date(&b, 2)? {
                write(format!("alerts/date={date}/part-{}-000.parquet", seq_name(seq)), &[part], &mut info)?;
            }
        }
        if !c.dead_letters.is_empty() {
            let b = dead_letters_batch(&c.dead_letters)?;
            for (date, part) in by_date(&b, 4)? {
                write(format!("dead_letters/date={date}/part-{}-000.parquet", seq_name(seq)), &[part], &mut info)?;
            }
        }
        fsync_dir(&staging)?;
        let outbox = (c.publish && (!c.alerts.is_empty() || !c.dead_letters.is_empty())).then(|| Outbox {
            alerts: c.alerts.clone(),
            dead_letters: c
                .dead_letters
                .iter()
                .map(|d| OutboxDeadLetter {
                    source: d.source.clone(),
                    kind: d.kind.to_string(),
                    reason: d.reason.clone(),
                    raw_hex: d.raw.iter().map(|b| format!("{b:02x}")).collect(),
                    received_at_ms: d.received_at_ms,
                })
                .collect(),
        });
        self.write_state(seq, &c.state, outbox.as_ref())?;
        let mut dedup_segments = self.last.as_ref().map(|m| m.dedup_segments.clone()).unwrap_or_default();
        let expired: Vec<u64> = match c.state.dedup_cutoff_ms {
            Some(cut) => dedup_segments.iter().filter(|(_, max)| **max < cut).map(|(s, _)| *s).collect(),
            None => vec![],
        };
        for s in &expired {
            dedup_segments.remove(s);
        }
        if !c.state.dedup.is_empty() {
            dedup_segments.insert(seq, c.state.dedup_max_ts);
        }
        let m = Manifest {
            version: 1,
            seq,
            committed_at: aifinops_schemas::alert::rfc3339_ms(chrono::Utc::now().timestamp_millis()),
            offsets: c.offsets,
            files: c.files,
            added,
            watermark_ms: c.watermark_ms,
            partition_max_ts: c.partition_max_ts,
            state_dir: format!("{META}/state/{}", seq_name(seq)),
            outbox: outbox.is_some(),
            dedup_segments,
            totals: c.totals,
        };
        fault::point("before_manifest");
        let path = self.root.join(META).join("manifest").join(format!("{}.json", seq_name(seq)));
        write_atomic(&path, serde_json::to_string_pretty(&m).expect("json").as_bytes())?;
        // ---- commit point ----
        fault::point("after_manifest");
        self.last = Some(m.clone());
        self.roll_forward(&m)?;
        let _ = fs::remove_dir_all(&staging);
        for s in expired {
            let _ = fs::remove_file(self.dedup_path(s));
        }
        self.last = Some(m);
        self.cleanup(seq);
        Ok(info)
    }

    /// Removes state and manifests no longer needed (keeps the last 2 states, the last 20 manifests,
    /// and any state whose outbox is not yet published).
    fn cleanup(&self, seq: u64) {
        let published = self.outbox_log().published_seq();
        let states = self.root.join(META).join("state");
        for e in fs::read_dir(&states).into_iter().flatten().flatten() {
            let Some(s) = e.file_name().to_string_lossy().parse::<u64>().ok() else { continue };
            // keep the last two states (recovery) and every state whose outbox is not yet published
            if s + 1 < seq && (s <= published || !e.path().join("outbox.json").exists()) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        for s in seq.saturating_sub(60)..seq.saturating_sub(20) {
            let _ = fs::remove_file(self.root.join(META).join("manifest").join(format!("{}.json", seq_name(s))));
        }
    }

    /// The outboxes of this lake, for a publisher that runs beside the commit loop.
    pub fn outbox_log(&self) -> OutboxLog {
        OutboxLog { root: self.root.clone() }
    }
}

/// The committed outboxes of a lake and how far they have been published. Safe to use from another
/// task than the one committing: it only reads committed state and writes the `published` marker.
#[derive(Debug, Clone)]
pub struct OutboxLog {
    root: PathBuf,
}

impl OutboxLog {
    /// The last seq whose outbox was fully published.
    pub fn published_seq(&self) -> u64 {
        fs::read_to_string(self.root.join(META).join("published")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }

    fn committed_seq(&self) -> Result<u64, SinkError> {
        let dir = self.root.join(META).join("manifest");
        Ok(fs::read_dir(&dir)
            .map_err(io_err(format!("listing {}", dir.display())))?
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".json").and_then(|s| s.parse().ok()))
            .max()
            .unwrap_or(0))
    }

    /// Outboxes of committed seqs not yet published, oldest first.
    pub fn pending(&self) -> Result<Vec<(u64, Outbox)>, SinkError> {
        let published = self.published_seq();
        let committed = self.committed_seq()?;
        let mut out = Vec::new();
        let dir = self.root.join(META).join("state");
        let mut seqs: Vec<u64> = fs::read_dir(&dir)
            .map_err(io_err(format!("listing {}", dir.display())))?
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
            .filter(|s| *s > published && *s <= committed)
            .collect();
        seqs.sort_unstable();
        for s in seqs {
            let p = dir.join(seq_name(s)).join("outbox.json");
            let text = match fs::read_to_string(&p) {
                Ok(t) => Some(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None, // that commit had nothing to send
                Err(e) => return Err(SinkError::Io { context: format!("reading outbox {}", p.display()), source: e }),
            };
            if let Some(t) = text {
                let o: Outbox = serde_json::from_str(&t)
                    .map_err(|e| SinkError::Manifest { path: p.display().to_string(), reason: e.to_string() })?;
                out.push((s, o));
            }
        }
        Ok(out)
    }

    /// Records that every outbox up to `seq` reached Kafka.
    pub fn mark_published(&self, seq: u64) -> Result<(), SinkError> {
        if seq <= self.published_seq() {
            return Ok(());
        }
        write_atomic(&self.root.join(META).join("published"), seq.to_string().as_bytes())
    }
}

fn alerts_batch(alerts: &[Alert]) -> Result<RecordBatch, SinkError> {
    let time: Vec<i64> = alerts
        .iter()
        .map(|a| chrono::DateTime::parse_from_rfc3339(&a.time).map(|d| d.timestamp_millis()).unwrap_or(0))
        .collect();
    let cols: Vec<ArrayRef> = vec![
        std::sync::Arc::new(StringArray::from_iter_values(alerts.iter().map(|a| a.id.as_str()))),
        std::sync::Arc::new(StringArray::from_iter_values(alerts.iter().map(|a| a.kind.as_str()))),
        std::sync::Arc::new(TimestampMillisecondArray::from(time).with_timezone("UTC")),
        std::sync::Arc::new(StringArray::from_iter_values(alerts.iter().map(|a| a.owner()))),
        std::sync::Arc::new(StringArray::from_iter_values(alerts.iter().map(|a| a.subject.as_str()))),
        std::sync::Arc::new(StringArray::from_iter_values(alerts.iter().map(|a| a.data.to_string()))),
        std::sync::Arc::new(StringArray::from_iter_values(
            alerts.iter().map(|a| serde_json::to_string(a).expect("json")),
        )),
    ];
    RecordBatch::try_new(alert_schema(), cols)
        .map_err(|e| SinkError::Arrow { context: "building alert rows".into(), source: e })
}

fn dead_letters_batch(d: &[DeadLetter]) -> Result<RecordBatch, SinkError> {
    let cols: Vec<ArrayRef> = vec![
        std::sync::Arc::new(StringArray::from_iter_values(d.iter().map(|x| x.source.as_str()))),
        std::sync::Arc::new(StringArray::from_iter_values(d.iter().map(|x| x.kind))),
        std::sync::Arc::new(StringArray::from_iter_values(d.iter().map(|x| x.reason.as_str()))),
        std::sync::Arc::new(BinaryArray::from_iter_values(d.iter().map(|x| x.raw.as_slice()))),
        std::sync::Arc::new(
            TimestampMillisecondArray::from_iter_values(d.iter().map(|x| x.received_at_ms)).with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(dead_letter_schema(), cols)
        .map_err(|e| SinkError::Arrow { context: "building dead-letter rows".into(), source: e })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifinops_schemas::rollup::rollup_schema;

    #[test]
    fn commit_then_reopen_restores_offsets_and_state() {
        let dir = tempfile::tempdir().unwrap();
        let (mut lake, rec) = Lake::open(dir.path()).unwrap();
        assert!(rec.is_none());
        let mut c = Commit::default();
        c.offsets.entry("t".into()).or_default().insert(0, 42);
        c.state.dedup = vec![1; 24];
        c.state.dedup_max_ts = 5;
        c.state.rules = serde_json::json!({"x": 1});
        c.state.partials.push(("1m".into(), RecordBatch::new_empty(rollup_schema())));
        c.dead_letters.push(DeadLetter {
            source: "t/0@3".into(),
            reason: "bad".into(),
            kind: "not_json",
            raw: b"x".to_vec(),
            received_at_ms: 0,
        });
        c.publish = true;
        let info = lake.commit(c).unwrap();
        assert_eq!(info.seq, 1);
        assert_eq!(info.files, 1);
        assert!(dir.path().join("dead_letters/date=1970-01-01/part-0000000001-000.parquet").exists());
        assert!(Lake::open(dir.path()).is_err(), "one writer per lake");
        drop(lake);
        let (mut lake2, rec) = Lake::open(dir.path()).unwrap();
        let rec = rec.unwrap();
        assert_eq!(rec.manifest.offsets["t"][&0], 42);
        assert_eq!(rec.state.dedup, vec![1; 24]);
        assert_eq!(rec.state.rules["x"], 1);
        assert_eq!(rec.state.partials.len(), 1);
        let pending = lake2.outbox_log().pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].1.dead_letters[0].raw(), b"x");
        lake2.outbox_log().mark_published(1).unwrap();
        assert!(lake2.outbox_log().pending().unwrap().is_empty());

        // a later commit appends a new dedup segment; once the horizon passes a segment, it is gone
        let mut c = Commit::default();
        c.state.dedup = vec![2; 24];
        c.state.dedup_max_ts = 50;
        lake2.commit(c).unwrap();
        let rec = lake2.recover().unwrap();
        assert_eq!(rec.unwrap().state.dedup, [vec![1; 24], vec![2; 24]].concat());
        let mut c = Commit::default();
        c.state.dedup_cutoff_ms = Some(10);
        lake2.commit(c).unwrap();
        let rec = lake2.recover().unwrap().unwrap();
        assert_eq!(rec.manifest.dedup_segments.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(rec.state.dedup, vec![2; 24]);
        assert!(!dir.path().join("_aifinops/dedup/0000000001.bin").exists());
    }

    #[test]
    fn uncommitted_staging_is_discarded_and_committed_staging_rolled_forward() {
        let dir = tempfile::tempdir().unwrap();
        let (mut lake, _) = Lake::open(dir.path()).unwrap();
        let mut c = Commit::default();
        c.dead_letters.push(DeadLetter {
            source: "s".into(),
            reason: "r".into(),
            kind: "k",
            raw: vec![],
            received_at_ms: 0,
        });
        lake.commit(c).unwrap();
        // simulate a crash after the manifest of seq 1 but before roll-forward: move the file back
        let fin = dir.path().join("dead_letters/date=1970-01-01/part-0000000001-000.parquet");
        let staged = lake.staged_path(1, "dead_letters/date=1970-01-01/part-0000000001-000.parquet");
        fs::create_dir_all(staged.parent().unwrap()).unwrap();
        fs::rename(&fin, &staged).unwrap();
        // and a crash in the middle of seq 2, before its manifest
        let orphan = lake.staged_path(2, "rollups/window=1m/date=1970-01-01/part-0000000002-000.parquet");
        fs::create_dir_all(orphan.parent().unwrap()).unwrap();
        fs::write(&orphan, b"partial").unwrap();
        fs::create_dir_all(lake.state_dir(2)).unwrap();
        drop(lake);
        let (lake, rec) = Lake::open(dir.path()).unwrap();
        assert_eq!(rec.unwrap().manifest.seq, 1);
        assert!(fin.exists(), "committed file rolled forward");
        assert!(!orphan.exists(), "uncommitted file removed");
        assert!(!lake.state_dir(2).exists());
    }
}
