//! The lake and its commit protocol (see DESIGN.md, "Commit protocol").
//!
//! ```text
//! <lake>/rollups/window=1h/date=2026-11-30/part-0000000042-000.parquet   committed data (readers glob these)
//! <lake>/alerts/date=…/part-….parquet, <lake>/dead_letters/date=…/part-….parquet
//! <lake>/_aifinops/manifest/0000000042.json   the commit point: offsets, files, state dir
//! <lake>/_aifinops/staging/0000000042/…       data files before the commit point (never globbed)
//! <lake>/_aifinops/state/0000000042/…         rule state, outbox, the list of the open windows' parts
//! <lake>/_aifinops/parts/0000000042-0003.arrow open window rows written by commit 42 (shared by later states)
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
use std::sync::Arc;

use aifinops_schemas::alert::alert_schema;
use aifinops_schemas::dead_letter::dead_letter_schema;
use aifinops_schemas::{Alert, DeadLetter};
use datafusion::arrow::array::{
    ArrayRef, AsArray, BinaryArray, BooleanArray, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::compute::{FilterBuilder, FilterPredicate};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use serde::{Deserialize, Serialize};

use crate::ledger::{Ledger, Tp, segment_keys, valid_writer_name, writer_meta};
use crate::parquet_io::write_parquet;
use crate::{SinkError, fault, io_err};

pub(crate) const META: &str = "_aifinops";

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
    /// The named writer of a shared lake that made this commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
    /// A lake shared by named writers: the order of this commit among all writers' commits.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lake_seq: u64,
    /// Kafka: the offsets this commit consumed, topic -> partition -> [from, to).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ranges: BTreeMap<String, BTreeMap<i32, (i64, i64)>>,
    /// A shared lake: chains of departed writers this writer adopted, writer -> the seq adopted (kept in every
    /// later manifest of this chain).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub adopted: BTreeMap<String, u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The open state carried from one commit to the next.
#[derive(Debug, Clone, Default)]
pub struct StateSnapshot {
    /// Open window rows per window label; a label may appear several times (merged and pending rows,
    /// written to one file); read back, each label comes once.
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
    /// Kafka: the offsets consumed since the previous commit, topic -> partition -> [from, to). In a shared
    /// lake, the writer must still own each of these partitions at the commit point.
    pub ranges: BTreeMap<String, BTreeMap<i32, (i64, i64)>>,
    /// A shared lake: the departed writer and seq whose open windows this commit takes over.
    pub adopt: Option<(String, u64)>,
    /// Alerts and dead letters committed by a departed writer and not yet sent: published with this commit's.
    pub handover: Outbox,
}

/// Runs the alert rules of a shared lake at the commit point: given the rule state of the lake's latest
/// commit, returns the alerts raised and the rule state to commit.
pub type RulesHook<'a> = Box<dyn FnOnce(serde_json::Value) -> Result<(Vec<Alert>, serde_json::Value), String> + 'a>;

/// What a commit wrote.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    pub seq: u64,
    pub files: usize,
    pub bytes: u64,
    pub rollup_rows: usize,
    /// A shared lake: dedup entries other writers committed since this writer last looked, to merge into
    /// its set.
    pub foreign_dedup: Vec<u8>,
}

/// What `open` found: the last commit and its state.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub manifest: Manifest,
    pub state: StateSnapshot,
}

/// A lake directory with its commit log. One writer at a time per commit chain: a lake has one chain
/// (`_aifinops/`), or one per named writer (`_aifinops/writers/<name>/`) when several members of a
/// consumer group share it, coordinated by the [`Ledger`]. A chain is locked while open.
pub struct Lake {
    root: PathBuf,
    /// The commit chain's directory: `_aifinops`, or `_aifinops/writers/<name>`.
    meta: PathBuf,
    /// Data file names start with this (`<name>-` for a named writer), so writers never collide.
    prefix: String,
    ledger: Option<Arc<Ledger>>,
    last: Option<Manifest>,
    /// The open window batches of the last committed state and the part files holding them: a batch of
    /// the next snapshot that is one of these (the same column arrays) is not written again.
    parts: Vec<Part>,
    /// Exclusive `flock` on the chain's `lock`, released when the lake is dropped (or the process dies).
    _lock: fs::File,
}

/// Where a data file of commit `seq` of the chain in `meta` is staged.
fn staged_in(meta: &Path, seq: u64, rel: &str) -> PathBuf {
    meta.join("staging").join(seq_name(seq)).join(format!("{}.staged", rel.replace('/', "__")))
}

/// The seq of a chain's last commit that another member adopted (`retired`), if any.
fn retired_seq(meta: &Path) -> Option<u64> {
    fs::read_to_string(meta.join("retired")).ok().and_then(|s| s.trim().parse().ok())
}

/// The newest manifest of a commit chain.
pub(crate) fn latest_manifest(meta: &Path) -> Result<Option<Manifest>, SinkError> {
    let dir = meta.join("manifest");
    for _ in 0..10 {
        let seq = match fs::read_dir(&dir) {
            Ok(rd) => rd
                .flatten()
                .filter_map(|e| {
                    e.file_name().to_string_lossy().strip_suffix(".json").and_then(|s| s.parse::<u64>().ok())
                })
                .max(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(SinkError::Io { context: format!("listing {}", dir.display()), source: e }),
        };
        let Some(seq) = seq else { return Ok(None) };
        let p = dir.join(format!("{}.json", seq_name(seq)));
        match fs::read_to_string(&p) {
            Ok(text) => {
                return serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| SinkError::Manifest { path: p.display().to_string(), reason: e.to_string() });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // a newer one replaced it: list again
            Err(e) => return Err(SinkError::Io { context: format!("reading {}", p.display()), source: e }),
        }
    }
    Err(SinkError::Manifest { path: dir.display().to_string(), reason: "manifests keep disappearing".into() })
}

/// Opens (creating) a file that is only ever `flock`ed.
pub(crate) fn open_lock_file(path: &Path) -> Result<fs::File, SinkError> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))
}

/// The exclusive lock of a commit chain, or `None` when another process holds it.
fn try_lock(meta: &Path) -> Result<Option<fs::File>, SinkError> {
    use std::os::fd::AsRawFd;
    let f = open_lock_file(&meta.join("lock"))?;
    // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel call.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(None);
    }
    Ok(Some(f))
}

/// The chain's lock; a named writer waits up to 10 s for it (another member may be adopting the chain).
fn lock(meta: &Path, what: &str, wait: bool) -> Result<fs::File, SinkError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(if wait { 10 } else { 0 });
    loop {
        if let Some(f) = try_lock(meta)? {
            return Ok(f);
        }
        if std::time::Instant::now() >= deadline {
            return Err(SinkError::Manifest { path: meta.join("lock").display().to_string(), reason: what.into() });
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Writes each `jobs[i]` to `paths[i]` as Parquet, largest first, on as many threads as this process
/// may run on (its CPU affinity), at most one per file. Returns each file's size or error, in order.
fn write_files(paths: &[PathBuf], jobs: &[(String, Vec<RecordBatch>)]) -> Vec<Result<u64, SinkError>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len());
    if threads <= 1 {
        return paths.iter().zip(jobs).map(|(p, (_, b))| write_parquet(p, b)).collect();
    }
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(jobs[i].1.iter().map(|b| b.num_rows()).sum::<usize>()));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<u64, SinkError>>>> =
        jobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&i) = order.get(k) else { break };
                    let r = write_parquet(&paths[i], &jobs[i].1);
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every file written"))
        .collect()
}

/// One open-window part of a state: its window size and its file in the chain's `parts` directory
/// (`partials.json` of a state directory lists them). A part with a `base` holds only the columns in which
/// it differs from that (whole) part; its other columns are the base's. A coarser window holds the finer
/// window's partial rows with only their bounds and late flag changed (`1h` and `1d` share the `1m`
/// GROUP BY's dimensions and measures), so those rows are written once, not once per window size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PartRef {
    window: String,
    part: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base: Option<String>,
}

/// The state list of a state directory.
const PARTS_LIST: &str = "partials.json";

/// The `parts` directory of the chain a state directory (`<chain>/state/<seq>`) belongs to.
fn parts_dir_of(state_dir: &Path) -> PathBuf {
    state_dir.parent().and_then(Path::parent).unwrap_or(state_dir).join("parts")
}

/// A written part: its window size, file name and the identity of the batch it holds. The batch's columns
/// are held weakly, so the state the engine let go of is freed at once; a weak pointer keeps its
/// allocation's address from being reused, so a match is never a different array at the same address.
struct Part {
    window: String,
    name: String,
    /// The whole part whose columns this one shares (see [`PartRef`]).
    base: Option<String>,
    rows: usize,
    columns: Vec<std::sync::Weak<dyn datafusion::arrow::array::Array>>,
}

impl Part {
    fn new(window: &str, name: String, base: Option<String>, b: &RecordBatch) -> Part {
        Part {
            window: window.to_string(),
            name,
            base,
            rows: b.num_rows(),
            columns: b.columns().iter().map(Arc::downgrade).collect(),
        }
    }

    /// Which columns of `b` this (whole) part already holds, when it holds at least half of them: `b` is
    /// then written as its other columns on this base.
    fn shared_with(&self, b: &RecordBatch) -> Option<Vec<bool>> {
        if self.base.is_some() || self.rows != b.num_rows() || self.columns.len() != b.num_columns() {
            return None;
        }
        let same: Vec<bool> =
            self.columns.iter().zip(b.columns()).map(|(w, c)| std::sync::Weak::ptr_eq(w, &Arc::downgrade(c))).collect();
        (same.iter().filter(|&&s| s).count() * 2 >= same.len()).then_some(same)
    }

    /// Whether `b` is the batch this part holds: the same column arrays (an open window batch the engine
    /// kept unchanged since the last commit).
    fn holds(&self, window: &str, b: &RecordBatch) -> bool {
        self.window == window
            && self.rows == b.num_rows()
            && self.columns.len() == b.num_columns()
            && self.columns.iter().zip(b.columns()).all(|(w, c)| std::sync::Weak::ptr_eq(w, &Arc::downgrade(c)))
    }
}

/// A part written on a base: the base's columns, with those the part holds (by name) in their place.
fn on_base(own: &RecordBatch, base: &RecordBatch, part: &str, base_name: &str) -> Result<RecordBatch, SinkError> {
    let bad = |reason: String| SinkError::Manifest { path: part.to_string(), reason };
    if own.num_rows() != base.num_rows() {
        return Err(bad(format!("{} rows on base part {base_name} of {} rows", own.num_rows(), base.num_rows())));
    }
    let schema = base.schema();
    if let Some(f) = own.schema().fields().iter().find(|f| schema.index_of(f.name()).is_err()) {
        return Err(bad(format!("column {} that its base part {base_name} lacks", f.name())));
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut cols = Vec::with_capacity(schema.fields().len());
    for (f, c) in schema.fields().iter().zip(base.columns()) {
        match own.schema().index_of(f.name()) {
            Ok(i) => {
                fields.push(own.schema().field(i).clone());
                cols.push(own.column(i).clone());
            }
            Err(_) => {
                fields.push(f.as_ref().clone());
                cols.push(c.clone());
            }
        }
    }
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
    RecordBatch::try_new(schema, cols).map_err(|e| bad(format!("on base part {base_name}: {e}")))
}

/// The batches of an Arrow IPC file, in one batch.
fn read_ipc(p: &Path) -> Result<RecordBatch, SinkError> {
    let ae = |e| SinkError::Arrow { context: format!("reading {}", p.display()), source: e };
    let f = fs::File::open(p).map_err(io_err(format!("opening {}", p.display())))?;
    let r = FileReader::try_new(f, None).map_err(ae)?;
    let schema = r.schema();
    let batches = r.collect::<Result<Vec<_>, _>>().map_err(ae)?;
    datafusion::arrow::compute::concat_batches(&schema, &batches).map_err(ae)
}

/// The parts a state directory lists (`partials.json`); `None` for a state written before parts existed.
fn read_part_list(dir: &Path) -> Result<Option<Vec<PartRef>>, SinkError> {
    let p = dir.join(PARTS_LIST);
    match fs::read_to_string(&p) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| SinkError::Manifest { path: p.display().to_string(), reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SinkError::Io { context: format!("reading {}", p.display()), source: e }),
    }
}

/// Open window rows of a state directory: the parts its `partials.json` lists, one batch per part (or,
/// in a state written before parts existed, its `partials-<window>.arrow` files).
fn read_partials(dir: &Path) -> Result<Vec<(String, RecordBatch)>, SinkError> {
    if let Some(list) = read_part_list(dir)? {
        let parts = parts_dir_of(dir);
        let mut bases: std::collections::HashMap<String, RecordBatch> = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(list.len());
        for r in list {
            let own = read_ipc(&parts.join(&r.part))?;
            let Some(base) = r.base else {
                out.push((r.window, own));
                continue;
            };
            let whole = match bases.entry(base.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(read_ipc(&parts.join(&base))?),
            };
            out.push((r.window, on_base(&own, whole, &r.part, &base)?));
        }
        return Ok(out);
    }
    let rd = fs::read_dir(dir).map_err(io_err(format!("listing state {}", dir.display())))?;
    let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    names.sort();
    let mut out = Vec::new();
    for p in names {
        let name = p.file_name().unwrap_or_default().to_string_lossy().to_string();
        let Some(label) = name.strip_prefix("partials-").and_then(|s| s.strip_suffix(".arrow")) else { continue };
        out.push((label.to_string(), read_ipc(&p)?));
    }
    Ok(out)
}

/// A commit chain of a shared lake whose writer is gone (its lock is free) and that holds open windows or
/// unsent alerts: a running member adopts them in its next commit ([`Lake::orphans`]).
pub struct Orphan {
    pub writer: String,
    /// The orphan's last commit, which the adoption takes over.
    pub seq: u64,
    /// Its open window rows.
    pub partials: Vec<(String, RecordBatch)>,
    /// Its committed alerts and dead letters not yet published.
    pub outbox: Outbox,
    /// The orphan's chain lock, held until the adoption is committed and recorded.
    _lock: fs::File,
}

fn seq_name(seq: u64) -> String {
    format!("{seq:010}")
}

fn fsync_dir(dir: &Path) -> Result<(), SinkError> {
    fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io_err(format!("fsync directory {}", dir.display())))
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
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
fn by_date(batch: RecordBatch, ts_col: usize) -> Result<Vec<(String, RecordBatch)>, SinkError> {
    const DAY_MS: i64 = 86_400_000;
    let days: Vec<i64> = {
        let ts = batch.column(ts_col).as_primitive::<TimestampMillisecondType>();
        ts.values().iter().map(|&v| v.div_euclid(DAY_MS)).collect()
    };
    let mut uniq = days.clone();
    uniq.sort_unstable();
    uniq.dedup();
    if uniq.len() == 1 {
        return Ok(vec![(date_of(uniq[0] * DAY_MS), batch)]);
    }
    let ae = |source| SinkError::Arrow { context: "partitioning by date".into(), source };
    let preds: Vec<FilterPredicate> = uniq
        .iter()
        .map(|d| FilterBuilder::new(&days.iter().map(|x| Some(x == d)).collect::<BooleanArray>()).optimize().build())
        .collect();
    // column by column, each of the batch's columns let go once every date has its rows: a commit that
    // spans midnight holds its rollup rows once, not twice, while it writes them
    let (schema, columns, _) = batch.into_parts();
    let mut parts: Vec<Vec<ArrayRef>> = vec![Vec::with_capacity(columns.len()); uniq.len()];
    for c in columns {
        for (p, part) in preds.iter().zip(&mut parts) {
            part.push(p.filter(c.as_ref()).map_err(ae)?);
        }
    }
    uniq.into_iter()
        .zip(parts)
        .map(|(d, cols)| Ok((date_of(d * DAY_MS), RecordBatch::try_new(schema.clone(), cols).map_err(ae)?)))
        .collect()
}

impl Lake {
    /// Opens (creating) a lake, recovering from any interrupted commit.
    pub fn open(root: &Path) -> Result<(Lake, Option<Recovered>), SinkError> {
        Lake::open_as(root, None)
    }

    /// Opens a lake as the named writer of a shared lake (`Some`), or as its only writer (`None`).
    pub fn open_as(root: &Path, writer: Option<&str>) -> Result<(Lake, Option<Recovered>), SinkError> {
        let shared = root.join(META).join("writers");
        let single = root.join(META).join("manifest");
        let has_entries = |d: &Path| fs::read_dir(d).map(|mut rd| rd.next().is_some()).unwrap_or(false);
        let meta = match writer {
            None => {
                if has_entries(&shared) {
                    return Err(SinkError::Manifest {
                        path: shared.display().to_string(),
                        reason: "this lake is shared by named writers: set lake.writer".into(),
                    });
                }
                root.join(META)
            }
            Some(w) => {
                if !valid_writer_name(w) {
                    return Err(SinkError::Manifest {
                        path: root.display().to_string(),
                        reason: format!("lake.writer {w:?}: use 1-64 letters, digits, '-', '_' or '.'"),
                    });
                }
                if single.join(format!("{}.json", seq_name(1))).exists() || has_entries(&single) {
                    return Err(SinkError::Manifest {
                        path: single.display().to_string(),
                        reason: "this lake has a single writer (lake.writer unset); a lake shared by named writers \
                                 must start as one"
                            .into(),
                    });
                }
                writer_meta(root, w)
            }
        };
        for d in ["manifest", "staging", "state", "parts", "dedup"] {
            fs::create_dir_all(meta.join(d)).map_err(io_err(format!("creating {}", meta.join(d).display())))?;
        }
        let what = match writer {
            None => {
                "the lake is in use by another aifinops process (one writer per lake unless lake.writer names each)"
                    .to_string()
            }
            Some(w) => format!("writer {w} is already running on this lake"),
        };
        let _lock = lock(&meta, &what, writer.is_some())?;
        let mut lake = Lake {
            root: root.to_path_buf(),
            prefix: writer.map(|w| format!("{w}-")).unwrap_or_default(),
            ledger: writer.map(|w| Arc::new(Ledger::new(root, w))),
            meta,
            last: None,
            parts: Vec::new(),
            _lock,
        };
        let recovered = lake.recover()?;
        Ok((lake, recovered))
    }

    /// The partition ledger of a lake shared by named writers.
    pub fn ledger(&self) -> Option<Arc<Ledger>> {
        self.ledger.clone()
    }

    /// Recovers from an interrupted commit and returns the last commit's state: on open, and to roll
    /// uncommitted work back.
    pub fn recover(&mut self) -> Result<Option<Recovered>, SinkError> {
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
        lake.parts.clear();
        for e in fs::read_dir(lake.meta.join("parts")).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.split('-').next().and_then(|s| s.parse::<u64>().ok()).is_none_or(|s| s > last) {
                fs::remove_file(e.path()).map_err(io_err(format!("removing {}", e.path().display())))?;
            }
        }
        for d in ["staging", "state"] {
            let dir = lake.meta.join(d);
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
        for e in fs::read_dir(lake.meta.join("dedup")).map_err(io_err("listing dedup segments"))?.flatten() {
            let seq = e.file_name().to_string_lossy().strip_suffix(".bin").and_then(|s| s.parse::<u64>().ok());
            if seq.is_none_or(|s| !live.contains(&s)) {
                let _ = fs::remove_file(e.path());
            }
        }
        for e in fs::read_dir(lake.meta.join("manifest")).map_err(io_err("listing manifests"))?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
        let mut recovered = match &lake.last {
            None => None,
            Some(m) => Some(Recovered { manifest: m.clone(), state: lake.read_state(m)? }),
        };
        // a writer of a shared lake whose last commit another member adopted (it was gone): its open windows
        // and unsent alerts were taken over, so it goes on without them
        let adopted = match (retired_seq(&lake.meta), &lake.ledger, &recovered) {
            (Some(r), _, _) => Some(r),
            // the adopter committed but died before recording it here
            (None, Some(l), Some(r)) => l.adopted_by(l.writer(), r.manifest.seq)?.map(|_| r.manifest.seq),
            _ => None,
        };
        if let (Some(r), Some(adopted)) = (recovered.as_mut(), adopted)
            && adopted == r.manifest.seq
        {
            tracing::info!(
                seq = adopted,
                "this writer's last commit was adopted by another member: its open windows went with it"
            );
            r.state.partials.clear();
            lake.outbox_log().mark_published(adopted)?;
        }
        // a shared lake: the other writers' event ids join this writer's dedup set
        if let Some(ledger) = &lake.ledger {
            let _g = ledger.lock()?;
            let (foreign, read) = ledger.foreign_segments(&ledger.latests()?, false)?;
            ledger.mark_seen(read);
            if !foreign.is_empty() {
                let r = recovered.get_or_insert_with(|| Recovered {
                    manifest: Manifest::default(),
                    state: StateSnapshot::default(),
                });
                r.state.dedup.extend(foreign);
            }
        }
        Ok(recovered)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn last_manifest(&self) -> Option<&Manifest> {
        self.last.as_ref()
    }

    fn manifest_seqs(&self) -> Result<Vec<u64>, SinkError> {
        let dir = self.meta.join("manifest");
        let mut seqs: Vec<u64> = fs::read_dir(&dir)
            .map_err(io_err(format!("listing {}", dir.display())))?
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".json").and_then(|s| s.parse().ok()))
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    fn read_manifest(&self, seq: u64) -> Result<Manifest, SinkError> {
        let p = self.meta.join("manifest").join(format!("{}.json", seq_name(seq)));
        let text = fs::read_to_string(&p).map_err(io_err(format!("reading {}", p.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| SinkError::Manifest { path: p.display().to_string(), reason: e.to_string() })
    }

    fn staged_path(&self, seq: u64, rel: &str) -> PathBuf {
        staged_in(&self.meta, seq, rel)
    }

    /// Moves a committed manifest's staged files to their final names (idempotent).
    fn roll_forward(&self, m: &Manifest) -> Result<(), SinkError> {
        self.roll_forward_in(&self.meta, m)
    }

    /// The roll-forward of a commit of the chain in `meta` (this writer's, or an orphan's under its lock).
    fn roll_forward_in(&self, meta: &Path, m: &Manifest) -> Result<(), SinkError> {
        let mut dirs = std::collections::BTreeSet::new();
        for (i, rel) in m.added.iter().enumerate() {
            let staged = staged_in(meta, m.seq, rel);
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
                    path: meta.join("manifest").join(format!("{}.json", seq_name(m.seq))).display().to_string(),
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
        self.meta.join("state").join(seq_name(seq))
    }

    fn read_state(&self, m: &Manifest) -> Result<StateSnapshot, SinkError> {
        let dir = self.root.join(&m.state_dir);
        let mut st = StateSnapshot { partials: read_partials(&dir)?, ..Default::default() };
        let p = dir.join("rules.json");
        match fs::read_to_string(&p) {
            Ok(t) => {
                st.rules = serde_json::from_str(&t)
                    .map_err(|e| SinkError::Manifest { path: p.display().to_string(), reason: e.to_string() })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SinkError::Io { context: format!("reading {}", p.display()), source: e }),
        }
        for seq in m.dedup_segments.keys() {
            let p = self.dedup_path(*seq);
            st.dedup.extend(fs::read(&p).map_err(io_err(format!("reading dedup segment {}", p.display())))?);
        }
        Ok(st)
    }

    fn dedup_path(&self, seq: u64) -> PathBuf {
        self.meta.join("dedup").join(format!("{}.bin", seq_name(seq)))
    }

    /// The state snapshot's bulk: open windows and the new dedup segment. Returns the parts of the state.
    ///
    /// Open window rows are written as parts, one Arrow IPC file per batch, and the state directory lists
    /// them (`partials.json`). A batch the engine kept unchanged since the last commit (a day window's
    /// merged rows between compactions, partial rows of windows still open) is the part the last state
    /// wrote for it: a commit writes the rows that changed, not all open windows again.
    fn write_state_data(&self, seq: u64, st: &StateSnapshot) -> Result<Vec<Part>, SinkError> {
        let dir = self.state_dir(seq);
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let parts_dir = self.meta.join("parts");
        let mut parts = Vec::with_capacity(st.partials.len());
        let mut wrote = false;
        for (i, (label, b)) in st.partials.iter().enumerate() {
            if let Some(p) = self.parts.iter().find(|p| p.holds(label, b)) {
                parts.push(Part::new(label, p.name.clone(), p.base.clone(), b));
                continue;
            }
            // a batch sharing most columns with a whole part of this state (a coarser window's copy of a
            // finer window's partial rows) is written as the columns it does not share
            let shared = parts.iter().chain(&self.parts).find_map(|p| Some((p.name.clone(), p.shared_with(b)?)));
            let (own, base) = match shared {
                Some((base, same)) => {
                    let keep: Vec<usize> = (0..b.num_columns()).filter(|&c| !same[c]).collect();
                    let own = b.project(&keep).map_err(|e| SinkError::Arrow {
                        context: format!("selecting the columns of a part on {base}"),
                        source: e,
                    })?;
                    (own, Some(base))
                }
                None => (b.clone(), None),
            };
            let name = format!("{}-{i:04}.arrow", seq_name(seq));
            let p = parts_dir.join(&name);
            let ae = |e| SinkError::Arrow { context: format!("writing {}", p.display()), source: e };
            let f = fs::File::create(&p).map_err(io_err(format!("creating {}", p.display())))?;
            let mut w = FileWriter::try_new(f, &own.schema()).map_err(ae)?;
            w.write(&own).map_err(ae)?;
            w.finish().map_err(ae)?;
            let f = w.into_inner().map_err(ae)?;
            f.sync_all().map_err(io_err(format!("fsync {}", p.display())))?;
            wrote = true;
            parts.push(Part::new(label, name, base, b));
        }
        if wrote {
            fsync_dir(&parts_dir)?;
        }
        let new = || parts.iter().filter(|p| p.name.starts_with(&seq_name(seq)));
        tracing::debug!(
            seq,
            parts = parts.len(),
            written = new().count(),
            rows_written = new().map(|p| p.rows).sum::<usize>(),
            rows = parts.iter().map(|p| p.rows).sum::<usize>(),
            "state snapshot parts"
        );
        let list: Vec<PartRef> = parts
            .iter()
            .map(|p| PartRef { window: p.window.clone(), part: p.name.clone(), base: p.base.clone() })
            .collect();
        write_atomic(&dir.join(PARTS_LIST), serde_json::to_string(&list).expect("json").as_bytes())?;
        if !st.dedup.is_empty() {
            write_atomic(&self.dedup_path(seq), &st.dedup)?;
        }
        Ok(parts)
    }

    /// The state snapshot's rule state and the commit's outbox (then the state directory is complete).
    fn write_state_meta(&self, seq: u64, rules: &serde_json::Value, outbox: Option<&Outbox>) -> Result<(), SinkError> {
        let dir = self.state_dir(seq);
        write_atomic(&dir.join("rules.json"), serde_json::to_string(rules).expect("json").as_bytes())?;
        if let Some(o) = outbox {
            write_atomic(&dir.join("outbox.json"), serde_json::to_string(o).expect("json").as_bytes())?;
        }
        fsync_dir(&dir)
    }

    /// Commits: data files, state and offsets become visible together, or not at all.
    pub fn commit(&mut self, c: Commit) -> Result<CommitInfo, SinkError> {
        self.commit_with(c, None)
    }

    /// Commits; in a lake shared by named writers, `rules` runs under the ledger lock just before the commit
    /// point with the rule state of the lake's latest commit (any writer's), and returns the alerts it raises
    /// and the rule state to commit (budgets over the whole lake's spend).
    pub fn commit_with(&mut self, mut c: Commit, rules: Option<RulesHook<'_>>) -> Result<CommitInfo, SinkError> {
        let seq = self.last.as_ref().map_or(1, |m| m.seq + 1);
        let staging = self.meta.join("staging").join(seq_name(seq));
        fs::create_dir_all(&staging).map_err(io_err(format!("creating {}", staging.display())))?;
        let mut info = CommitInfo { seq, ..Default::default() };
        let mut added = Vec::new();
        // the data files of this commit: rollups (one file per window size and date, from as many batches as
        // the windows emitted: they are not copied into one) and dead letters
        let mut files: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
        // the commit's rollup rows are moved out of it: each batch is let go once split into its files' rows
        for (label, b) in std::mem::take(&mut c.rollups) {
            if b.num_rows() == 0 {
                continue;
            }
            info.rollup_rows += b.num_rows();
            for (date, part) in by_date(b, 0)? {
                let rel =
                    format!("rollups/window={label}/date={date}/part-{}{}-000.parquet", self.prefix, seq_name(seq));
                files.entry(rel).or_default().push(part);
            }
        }
        if !c.dead_letters.is_empty() {
            let b = dead_letters_batch(&c.dead_letters)?;
            for (date, part) in by_date(b, 4)? {
                files
                    .entry(format!("dead_letters/date={date}/part-{}{}-000.parquet", self.prefix, seq_name(seq)))
                    .or_default()
                    .push(part);
            }
        }
        let jobs: Vec<(String, Vec<RecordBatch>)> = files.into_iter().collect();
        let staged: Vec<PathBuf> = jobs.iter().map(|(rel, _)| self.staged_path(seq, rel)).collect();
        // Parquet encoding is most of a commit's work: the files (and the state snapshot) are written in
        // parallel on the cores this process may use; every file is fsynced before the commit point.
        let (written, state) = std::thread::scope(|scope| {
            let state = scope.spawn(|| self.write_state_data(seq, &c.state));
            let written = write_files(&staged, &jobs);
            (written, state.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        });
        let parts = state?;
        for ((rel, _), bytes) in jobs.into_iter().zip(written) {
            info.bytes += bytes?;
            info.files += 1;
            added.push(rel);
        }
        if !c.ranges.is_empty() {
            fault::stall("before_commit");
        }
        let guard = match &self.ledger {
            None => None,
            Some(ledger) => {
                // the commit point of a shared lake is taken under the ledger lock, after checking ownership
                // and the other writers' newly counted event ids, and after the rules saw the lake's spend
                let g = ledger.lock()?;
                let consumed: Vec<Tp> = c
                    .ranges
                    .iter()
                    .flat_map(|(t, ps)| ps.iter().filter(|(_, r)| r.1 > r.0).map(move |(p, _)| (t.clone(), *p)))
                    .collect();
                ledger.check_owner(&ledger.read()?, &consumed)?;
                let latests = ledger.latests()?;
                let (foreign, read) = ledger.foreign_segments(&latests, true)?;
                if !foreign.is_empty() && !c.state.dedup.is_empty() {
                    let theirs: std::collections::HashSet<[u8; 16]> = segment_keys(&foreign).collect();
                    let twice = segment_keys(&c.state.dedup).filter(|k| theirs.contains(k)).count();
                    if twice > 0 {
                        return Err(SinkError::DedupConflict { events: twice });
                    }
                }
                info.foreign_dedup = foreign;
                if let Some(hook) = rules {
                    let (alerts, state) = hook(ledger.latest_rules(&latests)?)
                        .map_err(|reason| SinkError::Manifest { path: "the lake's rule state".into(), reason })?;
                    c.alerts.extend(alerts);
                    c.state.rules = state;
                }
                Some((g, read, Ledger::lake_seq(&latests) + 1))
            }
        };
        if !c.alerts.is_empty() {
            let b = alerts_batch(&c.alerts)?;
            for (date, part) in by_date(b, 2)? {
                let rel = format!("alerts/date={date}/part-{}{}-000.parquet", self.prefix, seq_name(seq));
                info.bytes += write_parquet(&self.staged_path(seq, &rel), &[part])?;
                info.files += 1;
                added.push(rel);
            }
        }
        fsync_dir(&staging)?;
        let mut outbox = std::mem::take(&mut c.handover);
        outbox.alerts.extend(c.alerts.iter().cloned());
        outbox.dead_letters.extend(c.dead_letters.iter().map(|d| OutboxDeadLetter {
            source: d.source.clone(),
            kind: d.kind.to_string(),
            reason: d.reason.clone(),
            raw_hex: d.raw.iter().map(|b| format!("{b:02x}")).collect(),
            received_at_ms: d.received_at_ms,
        }));
        let outbox = (c.publish && (!outbox.alerts.is_empty() || !outbox.dead_letters.is_empty())).then_some(outbox);
        self.write_state_meta(seq, &c.state.rules, outbox.as_ref())?;
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
            state_dir: self
                .meta
                .join("state")
                .join(seq_name(seq))
                .strip_prefix(&self.root)
                .expect("the chain is inside the lake")
                .to_string_lossy()
                .to_string(),
            outbox: outbox.is_some(),
            dedup_segments,
            totals: c.totals,
            writer: self.ledger.as_ref().map(|l| l.writer().to_string()),
            lake_seq: guard.as_ref().map_or(0, |g| g.2),
            ranges: c.ranges,
            adopted: {
                let mut a = self.last.as_ref().map(|m| m.adopted.clone()).unwrap_or_default();
                a.extend(c.adopt);
                a
            },
        };
        let path = self.meta.join("manifest").join(format!("{}.json", seq_name(seq)));
        fault::point("before_manifest");
        write_atomic(&path, serde_json::to_string_pretty(&m).expect("json").as_bytes())?;
        // ---- commit point ----
        if let (Some(ledger), Some((g, read, _))) = (&self.ledger, guard) {
            ledger.mark_seen(read);
            drop(g);
        }
        fault::point("after_manifest");
        self.last = Some(m.clone());
        self.parts = parts;
        self.roll_forward(&m)?;
        let _ = fs::remove_dir_all(&staging);
        for s in expired {
            let _ = fs::remove_file(self.dedup_path(s));
        }
        self.last = Some(m);
        self.cleanup(seq);
        Ok(info)
    }

    /// Writers of a shared lake that are gone (their chain lock is free) and left open windows or unsent
    /// alerts in their last commit, each returned with its chain locked until [`Lake::retire`]. The
    /// roll-forward of every gone writer's last commit is finished on the way.
    pub fn orphans(&self) -> Result<Vec<Orphan>, SinkError> {
        let Some(ledger) = &self.ledger else { return Ok(vec![]) };
        let _g = ledger.lock()?;
        let mut out = Vec::new();
        for w in ledger.others()? {
            let meta = writer_meta(&self.root, &w);
            let Some(lock) = try_lock(&meta)? else {
                tracing::debug!(writer = %w, "not an orphan: running");
                continue;
            };
            let Some(m) = latest_manifest(&meta)? else {
                tracing::debug!(writer = %w, "gone before its first commit, with nothing to adopt");
                continue;
            };
            // a writer killed between its commit point and the renames of its files: finish them, or its
            // committed rows would stay invisible until it starts again (which it may never do)
            self.roll_forward_in(&meta, &m)?;
            if retired_seq(&meta).is_some_and(|r| r >= m.seq) {
                tracing::debug!(writer = %w, seq = m.seq, "not an orphan: adopted already");
                continue;
            }
            if let Some(by) = ledger.adopted_by(&w, m.seq)? {
                // adopted, but the adopter died before recording it: record it now
                tracing::info!(writer = %w, seq = m.seq, adopter = %by, "recording an earlier adoption");
                write_atomic(&meta.join("retired"), m.seq.to_string().as_bytes())?;
                continue;
            }
            let partials = read_partials(&self.root.join(&m.state_dir))?;
            let mut outbox = Outbox::default();
            for (_, o) in (OutboxLog { meta: meta.clone() }).pending()? {
                outbox.alerts.extend(o.alerts);
                outbox.dead_letters.extend(o.dead_letters);
            }
            if partials.iter().all(|(l, b)| b.num_rows() == 0 || l == aifinops_schemas::rollup::DIMS_PART)
                && outbox.alerts.is_empty()
                && outbox.dead_letters.is_empty()
            {
                tracing::debug!(writer = %w, seq = m.seq, "gone, with nothing to adopt");
                continue;
            }
            out.push(Orphan { writer: w, seq: m.seq, partials, outbox, _lock: lock });
        }
        Ok(out)
    }

    /// Records that an orphan's last commit was adopted (after the adopting commit), and releases its chain.
    pub fn retire(&self, orphan: Orphan) -> Result<(), SinkError> {
        write_atomic(&writer_meta(&self.root, &orphan.writer).join("retired"), orphan.seq.to_string().as_bytes())
    }

    /// Removes state and manifests no longer needed (keeps the last 2 states, the last 20 manifests,
    /// and any state whose outbox is not yet published).
    fn cleanup(&self, seq: u64) {
        let published = self.outbox_log().published_seq();
        let states = self.meta.join("state");
        for e in fs::read_dir(&states).into_iter().flatten().flatten() {
            let Some(s) = e.file_name().to_string_lossy().parse::<u64>().ok() else { continue };
            // keep the last two states (recovery) and every state whose outbox is not yet published
            if s + 1 < seq && (s <= published || !e.path().join("outbox.json").exists()) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        for s in seq.saturating_sub(60)..seq.saturating_sub(20) {
            let _ = fs::remove_file(self.meta.join("manifest").join(format!("{}.json", seq_name(s))));
        }
        // parts no state left lists (the state of this commit is complete: nothing is being written)
        let mut live = std::collections::HashSet::new();
        for e in fs::read_dir(&states).into_iter().flatten().flatten() {
            match read_part_list(&e.path()) {
                Ok(list) => live.extend(list.into_iter().flatten().flat_map(|r| std::iter::once(r.part).chain(r.base))),
                Err(err) => {
                    tracing::warn!(error = %err, "not removing unused state parts: a state's list is unreadable");
                    return;
                }
            }
        }
        for e in fs::read_dir(self.meta.join("parts")).into_iter().flatten().flatten() {
            if !live.contains(e.file_name().to_string_lossy().as_ref()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// The outboxes of this lake, for a publisher that runs beside the commit loop.
    pub fn outbox_log(&self) -> OutboxLog {
        OutboxLog { meta: self.meta.clone() }
    }
}

/// The committed outboxes of a lake and how far they have been published. Safe to use from another
/// task than the one committing: it only reads committed state and writes the `published` marker.
#[derive(Debug, Clone)]
pub struct OutboxLog {
    /// The commit chain (`_aifinops` or a named writer's).
    meta: PathBuf,
}

impl OutboxLog {
    /// The last seq whose outbox was fully published.
    pub fn published_seq(&self) -> u64 {
        fs::read_to_string(self.meta.join("published")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }

    fn committed_seq(&self) -> Result<u64, SinkError> {
        let dir = self.meta.join("manifest");
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
        let dir = self.meta.join("state");
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
        write_atomic(&self.meta.join("published"), seq.to_string().as_bytes())
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
    fn rollup_batches_of_one_window_size_are_written_as_one_file_per_date() {
        use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
        use datafusion::arrow::datatypes::{DataType, Int64Type};
        use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        const DAY: i64 = 86_400_000;
        // rows at (day, requests); every other column a constant
        let rows = |at: &[(i64, i64)]| {
            let schema = rollup_schema();
            let cols: Vec<ArrayRef> = schema
                .fields()
                .iter()
                .map(|f| -> ArrayRef {
                    match (f.name().as_str(), f.data_type()) {
                        ("window_start" | "window_end", _) => Arc::new(
                            TimestampMillisecondArray::from_iter_values(at.iter().map(|a| a.0 * DAY))
                                .with_timezone("UTC"),
                        ),
                        ("requests", _) => Arc::new(Int64Array::from_iter_values(at.iter().map(|a| a.1))),
                        (_, DataType::Utf8) => Arc::new(StringArray::from(vec!["x"; at.len()])),
                        (_, DataType::Int64) => Arc::new(Int64Array::from(vec![0; at.len()])),
                        (_, DataType::Boolean) => {
                            Arc::new(datafusion::arrow::array::BooleanArray::from(vec![false; at.len()]))
                        }
                        (_, t) => datafusion::arrow::array::new_null_array(t, at.len()),
                    }
                })
                .collect();
            RecordBatch::try_new(schema, cols).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut lake, _) = Lake::open(dir.path()).unwrap();
        let mut c = Commit::default();
        // several batches of one window size (e.g. closes since the last commit); one spans two dates
        c.rollups.push(("1m".into(), rows(&[(0, 1), (1, 2)])));
        c.rollups.push(("1m".into(), rows(&[(0, 10), (0, 20)])));
        c.rollups.push(("1h".into(), rows(&[(1, 100)])));
        let info = lake.commit(c).unwrap();
        assert_eq!((info.files, info.rollup_rows), (3, 5));
        let read = |rel: &str| -> Vec<i64> {
            let f = std::fs::File::open(dir.path().join(rel)).unwrap();
            let mut v: Vec<i64> = ParquetRecordBatchReaderBuilder::try_new(f)
                .unwrap()
                .build()
                .unwrap()
                .flat_map(|b| {
                    let b = b.unwrap();
                    b.column_by_name("requests").unwrap().as_primitive::<Int64Type>().values().to_vec()
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(read("rollups/window=1m/date=1970-01-01/part-0000000001-000.parquet"), [1, 10, 20]);
        assert_eq!(read("rollups/window=1m/date=1970-01-02/part-0000000001-000.parquet"), [2]);
        assert_eq!(read("rollups/window=1h/date=1970-01-02/part-0000000001-000.parquet"), [100]);
    }

    fn entry(key: u8, ts: i64) -> Vec<u8> {
        [[key; 16].as_slice(), &ts.to_le_bytes()].concat()
    }

    fn consumed(topic: &str, p: i32, from: i64, to: i64) -> Commit {
        let mut c = Commit::default();
        c.offsets.entry(topic.into()).or_default().insert(p, to);
        c.ranges.entry(topic.into()).or_default().insert(p, (from, to));
        c
    }

    #[test]
    fn a_shared_lake_fences_a_writer_that_lost_its_partition_and_refuses_counting_an_event_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, _) = Lake::open_as(dir.path(), Some("a")).unwrap();
        let (mut b, _) = Lake::open_as(dir.path(), Some("b")).unwrap();
        assert!(Lake::open_as(dir.path(), Some("a")).is_err(), "one process per writer name");
        assert!(Lake::open(dir.path()).is_err(), "a shared lake has no single writer");
        assert!(Lake::open_as(dir.path(), Some("../x")).is_err(), "writer names are plain names");
        let (la, lb) = (a.ledger().unwrap(), b.ledger().unwrap());
        let t0 = ("t".to_string(), 0);
        let t1 = ("t".to_string(), 1);
        assert!(la.claim(std::slice::from_ref(&t0)).unwrap().is_empty(), "never committed: from the beginning");
        let mut c = consumed("t", 0, 0, 10);
        c.state.dedup = entry(1, 5);
        c.state.dedup_max_ts = 5;
        a.commit(c).unwrap();
        assert!(dir.path().join("_aifinops/writers/a/manifest/0000000001.json").exists());

        // b is assigned t/0: it starts where a committed, and a (a zombie now) can no longer commit it
        assert_eq!(lb.claim(std::slice::from_ref(&t0)).unwrap()[&t0], 10);
        let err = a.commit(consumed("t", 0, 10, 20)).unwrap_err();
        assert!(
            matches!(&err, SinkError::Fenced { topic, partition: 0, owner, .. } if topic == "t" && owner == "b@2"),
            "{err}"
        );
        assert_eq!(a.recover().unwrap().unwrap().manifest.seq, 1, "the fenced commit left nothing");
        // a commit that consumed no partition of b's still goes through
        a.commit(Commit::default()).unwrap();

        // b consumed the same event id from t/1 before it learnt of a's: refused, then known after rollback
        lb.claim(std::slice::from_ref(&t1)).unwrap();
        let mut c = consumed("t", 1, 0, 3);
        c.state.dedup = [entry(1, 5), entry(2, 6)].concat();
        c.state.dedup_max_ts = 6;
        assert!(matches!(b.commit(c), Err(SinkError::DedupConflict { events: 1 })));
        let rec = b.recover().unwrap().unwrap();
        assert_eq!(rec.state.dedup, entry(1, 5), "the other writer's ids are loaded on recovery");
        let mut c = consumed("t", 1, 0, 3);
        c.state.dedup = entry(2, 6);
        c.state.dedup_max_ts = 6;
        assert!(b.commit(c).unwrap().foreign_dedup.is_empty(), "already known");
        // ids a commits later reach b with b's next commit
        let mut c = Commit::default();
        c.state.dedup = entry(3, 7);
        c.state.dedup_max_ts = 7;
        a.commit(c).unwrap();
        assert_eq!(b.commit(Commit::default()).unwrap().foreign_dedup, entry(3, 7));
        // a takes t/0 back at b's position (b never consumed it: where its ownership began)
        assert_eq!(la.claim(std::slice::from_ref(&t0)).unwrap()[&t0], 10);
        let m: crate::ledger::LedgerFile =
            serde_json::from_str(&fs::read_to_string(dir.path().join("_aifinops/ledger.json")).unwrap()).unwrap();
        assert_eq!(m.partitions["t"][&0].epoch, 3);
        assert_eq!(m.partitions["t"][&1].writer, "b");
    }

    #[test]
    fn a_member_that_is_gone_is_adopted_once_even_when_the_adopter_dies_before_recording_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, _) = Lake::open_as(dir.path(), Some("a")).unwrap();
        let mut c = Commit::default();
        c.dead_letters.push(DeadLetter {
            source: "t/0@1".into(),
            reason: "bad".into(),
            kind: "not_json",
            raw: b"x".to_vec(),
            received_at_ms: 0,
        });
        c.publish = true;
        a.commit(c).unwrap();
        let (mut b, _) = Lake::open_as(dir.path(), Some("b")).unwrap();
        assert!(b.orphans().unwrap().is_empty(), "a is running: not an orphan");
        // a is killed after its commit point, before renaming its file, with an unsent dead letter
        let rel = "dead_letters/date=1970-01-01/part-a-0000000001-000.parquet";
        let (fin, staged) = (dir.path().join(rel), a.staged_path(1, rel));
        fs::create_dir_all(staged.parent().unwrap()).unwrap();
        fs::rename(&fin, &staged).unwrap();
        drop(a);
        let mut orphans = b.orphans().unwrap();
        assert!(fin.exists() && !staged.exists(), "the roll-forward of a's last commit is finished");
        assert_eq!(orphans.len(), 1);
        let o = orphans.pop().unwrap();
        assert_eq!((o.writer.as_str(), o.seq, o.outbox.dead_letters.len()), ("a", 1, 1));
        assert!(Lake::open_as(dir.path(), Some("a")).is_err(), "a cannot start while it is being adopted");
        let c = Commit {
            adopt: Some(("a".into(), o.seq)),
            handover: o.outbox.clone(),
            publish: true,
            ..Default::default()
        };
        b.commit(c).unwrap();
        let pending = b.outbox_log().pending().unwrap();
        assert_eq!(pending[0].1.dead_letters[0].raw(), b"x", "b sends what a could not");
        drop(o); // b dies before writing `retired`
        let (c_lake, _) = Lake::open_as(dir.path(), Some("c")).unwrap();
        assert!(c_lake.orphans().unwrap().is_empty(), "adopted already (b's manifest says so)");
        assert!(dir.path().join("_aifinops/writers/a/retired").exists(), "and now recorded");
        let (a, rec) = Lake::open_as(dir.path(), Some("a")).unwrap();
        assert_eq!(rec.unwrap().manifest.seq, 1);
        assert!(a.outbox_log().pending().unwrap().is_empty(), "a does not send it again");
        assert_eq!(b.last_manifest().unwrap().adopted["a"], 1);
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

    /// A one-row rollup batch (window start `ms`, `requests`), for state tests.
    fn open_rows(ms: i64, requests: i64) -> RecordBatch {
        use datafusion::arrow::array::{BooleanArray, Int64Array, new_null_array};
        let schema = rollup_schema();
        let cols: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.data_type() {
                    datafusion::arrow::datatypes::DataType::Timestamp(..) => {
                        Arc::new(TimestampMillisecondArray::from(vec![ms]).with_timezone("UTC"))
                    }
                    datafusion::arrow::datatypes::DataType::Utf8 => Arc::new(StringArray::from(vec!["x"])),
                    datafusion::arrow::datatypes::DataType::Int64 => Arc::new(Int64Array::from(vec![requests])),
                    datafusion::arrow::datatypes::DataType::Boolean => Arc::new(BooleanArray::from(vec![false])),
                    other => new_null_array(other, 1), // the money columns (nullable)
                }
            })
            .collect();
        RecordBatch::try_new(schema, cols).unwrap()
    }

    fn part_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir.join("_aifinops/parts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    fn requests_of(rows: &[(String, RecordBatch)]) -> Vec<(String, i64)> {
        use aifinops_schemas::rollup::REQUESTS;
        let mut v: Vec<(String, i64)> = rows
            .iter()
            .flat_map(|(l, b)| {
                let r = b.column_by_name(REQUESTS).unwrap().as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                r.values().iter().map(|v| (l.clone(), *v)).collect::<Vec<_>>()
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_commit_writes_only_the_open_window_rows_that_changed_and_unused_parts_go() {
        let dir = tempfile::tempdir().unwrap();
        let (mut lake, _) = Lake::open(dir.path()).unwrap();
        let day = open_rows(0, 7); // a day window's merged rows, unchanged for a while
        let hour = open_rows(3_600_000, 2);
        let commit = |lake: &mut Lake, partials: Vec<(&str, &RecordBatch)>| {
            let mut c = Commit::default();
            c.state.partials = partials.into_iter().map(|(l, b)| (l.to_string(), b.clone())).collect();
            lake.commit(c).unwrap()
        };
        commit(&mut lake, vec![("1d", &day), ("1h", &hour)]);
        assert_eq!(part_files(dir.path()), ["0000000001-0000.arrow", "0000000001-0001.arrow"]);
        // the day batch is the same; the hour batch is new (even with the same values): only it is written
        let hour2 = open_rows(3_600_000, 2);
        commit(&mut lake, vec![("1d", &day), ("1h", &hour2)]);
        assert_eq!(
            part_files(dir.path()),
            ["0000000001-0000.arrow", "0000000001-0001.arrow", "0000000002-0001.arrow"],
            "the unchanged day rows are not written again"
        );
        let rec = lake.recover().unwrap().unwrap();
        assert_eq!(requests_of(&rec.state.partials), [("1d".to_string(), 7), ("1h".to_string(), 2)]);
        // recovery forgot which batches were written: the next commit writes everything it holds
        let later = open_rows(7_200_000, 5);
        commit(&mut lake, vec![("1d", &day), ("1h", &later)]);
        commit(&mut lake, vec![("1d", &day), ("1h", &later)]);
        // states 3 and 4 are kept (the last two); parts only states 1 and 2 listed are gone
        assert_eq!(part_files(dir.path()), ["0000000003-0000.arrow", "0000000003-0001.arrow"]);
        drop(lake);
        let (mut lake, rec) = Lake::open(dir.path()).unwrap();
        let rec = rec.unwrap();
        assert_eq!(rec.manifest.seq, 4);
        assert_eq!(requests_of(&rec.state.partials), [("1d".to_string(), 7), ("1h".to_string(), 5)]);
        // parts of a commit that never reached its commit point are removed on recovery
        fs::write(dir.path().join("_aifinops/parts/0000000005-0000.arrow"), b"torn").unwrap();
        assert!(lake.recover().unwrap().is_some());
        assert_eq!(part_files(dir.path()), ["0000000003-0000.arrow", "0000000003-0001.arrow"]);
    }

    #[test]
    fn a_coarser_windows_copy_of_partial_rows_is_written_once_and_its_base_outlives_the_finer_window() {
        use aifinops_schemas::rollup::{LATE, WINDOW_END, WINDOW_START};
        use datafusion::arrow::array::BooleanArray;
        let dir = tempfile::tempdir().unwrap();
        let (mut lake, _) = Lake::open(dir.path()).unwrap();
        let hour = open_rows(3_600_000, 2);
        // the day window's copy of the hour's rows: other bounds and late flag, the same other arrays
        let mut cols = hour.columns().to_vec();
        let ts = |ms: i64| -> ArrayRef { Arc::new(TimestampMillisecondArray::from(vec![ms]).with_timezone("UTC")) };
        let schema = hour.schema();
        cols[schema.index_of(WINDOW_START).unwrap()] = ts(0);
        cols[schema.index_of(WINDOW_END).unwrap()] = ts(86_400_000);
        cols[schema.index_of(LATE).unwrap()] = Arc::new(BooleanArray::from(vec![true]));
        let day = RecordBatch::try_new(schema.clone(), cols).unwrap();
        let commit = |lake: &mut Lake, partials: Vec<(&str, &RecordBatch)>| {
            let mut c = Commit::default();
            c.state.partials = partials.into_iter().map(|(l, b)| (l.to_string(), b.clone())).collect();
            lake.commit(c).unwrap()
        };
        commit(&mut lake, vec![("1h", &hour), ("1d", &day)]);
        let parts = dir.path().join("_aifinops/parts");
        let list = read_part_list(&lake.state_dir(1)).unwrap().unwrap();
        assert_eq!(list[1].base.as_deref(), Some("0000000001-0000.arrow"), "the day rows are based on the hour's");
        let day_file = read_ipc(&parts.join(&list[1].part)).unwrap();
        let written: Vec<String> = day_file.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(written, [WINDOW_START, WINDOW_END, LATE], "only the columns the day rows do not share");
        // the hour closes; the day rows stay for three more commits, longer than the hour's state is kept
        for _ in 0..3 {
            commit(&mut lake, vec![("1d", &day)]);
        }
        assert!(!lake.state_dir(1).exists(), "the state that listed the hour's part is gone");
        assert!(parts.join("0000000001-0000.arrow").exists(), "a base is kept while a state lists a part on it");
        drop(lake);
        let (_lake, rec) = Lake::open(dir.path()).unwrap();
        let st = rec.unwrap().state;
        assert_eq!(st.partials.len(), 1);
        let (label, b) = &st.partials[0];
        assert_eq!(label, "1d");
        assert_eq!(b.schema(), schema, "columns in the rollup order");
        assert_eq!(
            b.column_by_name(WINDOW_START).unwrap().as_ref(),
            day.column_by_name(WINDOW_START).unwrap().as_ref()
        );
        assert_eq!(b.column_by_name(LATE).unwrap().as_ref(), day.column_by_name(LATE).unwrap().as_ref());
        assert_eq!(requests_of(&st.partials), [("1d".to_string(), 2)]);
        assert_eq!(b.column_by_name("owner").unwrap().as_string::<i32>().value(0), "x");
    }

    #[test]
    fn a_state_written_before_parts_existed_is_restored() {
        let dir = tempfile::tempdir().unwrap();
        let (mut lake, _) = Lake::open(dir.path()).unwrap();
        let mut c = Commit::default();
        c.state.partials = vec![("1h".into(), open_rows(0, 3))];
        lake.commit(c).unwrap();
        // rewrite state 1 the old way: one partials-<window>.arrow per window size, no list
        let state = lake.state_dir(1);
        fs::remove_file(state.join(PARTS_LIST)).unwrap();
        for e in fs::read_dir(dir.path().join("_aifinops/parts")).unwrap() {
            fs::rename(e.unwrap().path(), state.join("partials-1h.arrow")).unwrap();
        }
        let rec = lake.recover().unwrap().unwrap();
        assert_eq!(requests_of(&rec.state.partials), [("1h".to_string(), 3)]);
    }
}
