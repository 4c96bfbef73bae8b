//! Deduplication of redelivered events by `event_id` within a horizon of event time.
//!
//! The set holds 96 bits of a 128-bit hash of each accepted `event_id` with its event time in whole
//! seconds; segments in the lake hold the whole hash and the time in milliseconds. Ids older than
//! `watermark - horizon` are forgotten at each commit; a duplicate arriving later than that is counted
//! again (documented in DESIGN.md). Each commit persists only the ids added since the previous one (an
//! append-only segment), so commit cost is O(new events), not O(events in the horizon); a restart loads the
//! live segments back.
//!
//! The horizon is the one state that grows with the event rate, so the set keeps it on local disk, as a
//! small log-structured merge tree:
//! - the ids of the last events (up to ~115 thousand) are in a hash table in memory;
//! - older ones are in *runs*: unlinked files in the spill directory, 16 bytes an id, sorted by key. The
//!   table is flushed as a new run once it holds an eighth as many ids as the runs; four runs of a tier
//!   are merged into one of the next, so an id is rewritten once a tier and a lookup looks in at most three
//!   runs a tier. A run is deleted once all of it is behind the horizon, and rewritten without the ids
//!   behind it once half of it is.
//! - In memory a run keeps a split-block Bloom filter (12 bits an id) and where each bucket of ~64 ids
//!   starts (0.06 bytes an id). A lookup reads a run's file only when its filter says yes: for every true
//!   duplicate and ~0.5 % of new ids a run, one read of ~1 KB, from the page cache while the run is hot.
//!
//! A day at 25 events/s (2.2M ids) takes ~4 MB of memory besides the table, and 35 MB of disk; as a sorted
//! array in memory it took 26 MB. A day at 10,000 events/s takes ~1.3 GB of memory and 14 GB of disk,
//! where the array would have taken 10 GB of memory (and moved all of it at every merge).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use aifinops_schemas::event::{EVENT_KEY, TS};
use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::TimestampMillisecondType;

use crate::AggregateError;

/// An event key (a 128-bit xxh3 hash) as two words, as the segments on disk hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Id(u64, u64);

impl Id {
    fn from_bytes(b: &[u8]) -> Id {
        Id(u64::from_le_bytes(b[..8].try_into().expect("8")), u64::from_le_bytes(b[8..16].try_into().expect("8")))
    }
}

/// Passes a [`Key`]'s folded word through (the key is a hash already, uniform: no SipHash needed).
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// What the set holds of an event key: 96 of its 128 bits. Two distinct keys share 96 bits with
/// probability 2^-96 per pair: with 10M keys in the horizon and 1M new events a second, one event wrongly
/// dropped as a duplicate every ~10^8 years. Segments in the lake keep all 128 bits. Ordered as the 96-bit
/// number whose most significant word is the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key([u32; 3]);

impl Key {
    fn of(id: Id) -> Key {
        Key([id.0 as u32, (id.0 >> 32) as u32, id.1 as u32])
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let [a, b, c] = self.0;
        h.write_u64((u64::from(a) | (u64::from(b) << 32)) ^ u64::from(c).rotate_left(32));
    }
}

/// Event time as the set holds it: whole seconds since 1970 (earlier times read as 0). An id is kept
/// while its second is not before the cutoff's: up to a second longer than the horizon, never shorter.
fn second(ts_ms: i64) -> u32 {
    ts_ms.div_euclid(1000).clamp(0, i64::from(u32::MAX)) as u32
}

type SeenMap = HashMap<Key, u32, std::hash::BuildHasherDefault<IdHasher>>;

/// The recent part is merged into the run once it holds this many ids, or an eighth of the run when that
/// is more (each id is then rewritten about eight times while it lives), up to [`RECENT_MAX`].
#[cfg(not(test))]
const RECENT_MIN: usize = 65_536;
/// Small in unit tests, so that they merge often.
#[cfg(test)]
const RECENT_MIN: usize = 16;
/// The most ids the recent part holds: as many as a table of 2^17 slots takes before it doubles (it takes
/// 7/8 of its slots).
const RECENT_MAX: usize = (1 << 17) / 8 * 7;

pub struct Deduplicator {
    /// The horizon in seconds (it sets the resolution of a run's age counts).
    horizon_s: u32,
    /// Ids of an earlier second are behind the horizon: they count as unseen, and go at the next rewrite.
    cutoff: u32,
    /// Ids added since the last merge, with their second.
    recent: SeenMap,
    /// Merge the recent part once it holds this many.
    merge_at: usize,
    /// Older ids, on disk: runs from the oldest to the newest, each of a contiguous stretch of arrival.
    runs: Vec<Run>,
    /// Where runs are written (the system's temporary directory when `None`).
    spill_dir: Option<PathBuf>,
    /// Lookups that read the run's file (its filter said yes).
    disk_reads: std::cell::Cell<u64>,
    /// Ids added since the last [`Deduplicator::take_segment`], as the segment's bytes.
    fresh: Vec<u8>,
    /// The largest event time in `fresh`.
    fresh_max: i64,
}

/// A set for the default horizon of 24 h.
impl Default for Deduplicator {
    fn default() -> Self {
        Deduplicator::new(24 * 3_600_000)
    }
}

/// Millions of hashes say nothing in a log: the set shows its sizes only.
impl std::fmt::Debug for Deduplicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deduplicator")
            .field("recent", &self.recent.len())
            .field("runs", &self.runs.iter().map(|r| r.len).collect::<Vec<_>>())
            .field("fresh", &(self.fresh.len() / SEGMENT_ENTRY))
            .finish()
    }
}

impl Deduplicator {
    /// An empty set for a horizon of `horizon_ms` of event time, spilling to the system's temporary
    /// directory.
    pub fn new(horizon_ms: i64) -> Self {
        Deduplicator {
            horizon_s: second(horizon_ms).max(1),
            cutoff: 0,
            recent: SeenMap::default(),
            merge_at: RECENT_MIN,
            runs: Vec::new(),
            spill_dir: None,
            disk_reads: std::cell::Cell::new(0),
            fresh: Vec::new(),
            fresh_max: i64::MIN,
        }
    }

    /// Writes runs to `dir` instead of the system's temporary directory (`None`: that directory).
    pub fn spilling_to(mut self, dir: Option<PathBuf>) -> Self {
        self.spill_dir = dir;
        self
    }

    /// Drops events already seen (in earlier batches or earlier in this one). Returns the kept batch and
    /// the number of duplicates dropped.
    pub fn filter(&mut self, batch: &RecordBatch) -> Result<(RecordBatch, u64), AggregateError> {
        let keys = batch
            .column_by_name(EVENT_KEY)
            .ok_or_else(|| AggregateError::Config("event batch has no event_key".into()))?
            .as_fixed_size_binary();
        let ts = batch
            .column_by_name(TS)
            .ok_or_else(|| AggregateError::Config("event batch has no ts".into()))?
            .as_primitive::<TimestampMillisecondType>();
        let mut dups = 0u64;
        let mut mask = Vec::with_capacity(keys.len());
        for i in 0..keys.len() {
            // the first sighting's time is kept, as its segment on disk has it
            let fresh = self.insert(Id::from_bytes(keys.value(i)), ts.value(i))?;
            dups += u64::from(!fresh);
            mask.push(fresh);
        }
        if dups == 0 {
            return Ok((batch.clone(), 0));
        }
        let kept = filter_record_batch(batch, &BooleanArray::from(mask))
            .map_err(|e| AggregateError::Arrow { context: "dropping duplicates".into(), source: e })?;
        Ok((kept, dups))
    }

    /// Marks agentic retries: a call whose `trace_id` + `step` (its `retry_key`) was seen before, within the
    /// horizon, is a retry: `retry_requests = 1` and `retry_cost_usd = cost_usd`. Run after [`Self::filter`],
    /// so a redelivered event is a duplicate, not a retry. The keys share the dedup set (and its segments
    /// and horizon) in their own hash domain. Returns the batch and the number of retries found.
    pub fn mark_retries(&mut self, batch: &RecordBatch) -> Result<(RecordBatch, u64), AggregateError> {
        use aifinops_schemas::event::RETRY_KEY;
        use datafusion::arrow::array::{ArrayRef, Decimal128Array, Int64Array};
        use datafusion::arrow::datatypes::{Decimal128Type, Int64Type};
        let Some(keys) = batch.column_by_name(RETRY_KEY) else { return Ok((batch.clone(), 0)) };
        if keys.null_count() == keys.len() {
            return Ok((batch.clone(), 0));
        }
        let keys = keys.as_fixed_size_binary();
        let col =
            |n: &str| batch.column_by_name(n).ok_or_else(|| AggregateError::Config(format!("event batch has no {n}")));
        let ts = col(TS)?.as_primitive::<TimestampMillisecondType>();
        let retries = col("retry_requests")?.as_primitive::<Int64Type>();
        let cost = col("cost_usd")?.as_primitive::<Decimal128Type>();
        let retry_cost = col("retry_cost_usd")?.as_primitive::<Decimal128Type>();
        let mut marked: Vec<usize> = Vec::new();
        for i in (0..keys.len()).filter(|i| keys.is_valid(*i)) {
            if !self.insert(Id::from_bytes(keys.value(i)), ts.value(i))? && retries.value(i) == 0 {
                marked.push(i);
            }
        }
        if marked.is_empty() {
            return Ok((batch.clone(), 0));
        }
        let mut r: Vec<i64> = retries.values().to_vec();
        let mut rc: Vec<Option<i128>> = retry_cost.iter().collect();
        for &i in &marked {
            r[i] = 1;
            rc[i] = if cost.is_null(i) { None } else { Some(cost.value(i)) };
        }
        let (p, s) = match retry_cost.data_type() {
            datafusion::arrow::datatypes::DataType::Decimal128(p, s) => (*p, *s),
            _ => return Err(AggregateError::Config("retry_cost_usd is not a decimal".into())),
        };
        let rc = Decimal128Array::from(rc)
            .with_precision_and_scale(p, s)
            .map_err(|e| AggregateError::Arrow { context: "marking retries".into(), source: e })?;
        let schema = batch.schema();
        let cols: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, c)| match f.name().as_str() {
                "retry_requests" => std::sync::Arc::new(Int64Array::from(r.clone())) as ArrayRef,
                "retry_cost_usd" => std::sync::Arc::new(rc.clone()) as ArrayRef,
                _ => c.clone(),
            })
            .collect();
        let out = RecordBatch::try_new(schema, cols)
            .map_err(|e| AggregateError::Arrow { context: "marking retries".into(), source: e })?;
        Ok((out, marked.len() as u64))
    }

    /// Whether the set holds `key`: recent ids until the next eviction, the runs' while not behind the
    /// cutoff.
    fn contains(&self, key: Key) -> Result<bool, AggregateError> {
        Ok(self.recent.contains_key(&key) || self.in_runs(key)?)
    }

    /// Whether a run holds `key` at or after the cutoff. The newest copy decides: a key is added again only
    /// once its earlier copies are behind the cutoff, where they stay.
    fn in_runs(&self, key: Key) -> Result<bool, AggregateError> {
        for run in self.runs.iter().rev() {
            if let Some(s) = run.find(key, &self.disk_reads).map_err(|e| spill("reading a dedup run", e))? {
                return Ok(s >= self.cutoff);
            }
        }
        Ok(false)
    }

    /// Adds event key `id` first seen at `ts_ms` (persisted with the next segment); false when it is
    /// already in the set (nothing changes).
    fn insert(&mut self, id: Id, ts_ms: i64) -> Result<bool, AggregateError> {
        let key = Key::of(id);
        if self.in_runs(key)? {
            return Ok(false);
        }
        match self.recent.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => Ok(false),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(second(ts_ms));
                let mut entry = [0u8; SEGMENT_ENTRY];
                entry[..8].copy_from_slice(&id.0.to_le_bytes());
                entry[8..16].copy_from_slice(&id.1.to_le_bytes());
                entry[16..].copy_from_slice(&ts_ms.to_le_bytes());
                self.fresh.extend_from_slice(&entry);
                self.fresh_max = self.fresh_max.max(ts_ms);
                if self.recent.len() >= self.merge_at {
                    self.flush()?;
                }
                Ok(true)
            }
        }
    }

    /// Writes the recent ids as a new run (tier 0), then merges runs as their tiers fill. Recent ids
    /// already behind the cutoff (late events) stay in the recent part: like every id, they are held until
    /// the next eviction.
    fn flush(&mut self) -> Result<(), AggregateError> {
        let cutoff = self.cutoff;
        let mut new: Vec<(Key, u32)> = self.recent.iter().map(|(k, s)| (*k, *s)).filter(|e| e.1 >= cutoff).collect();
        new.sort_unstable_by_key(|e| e.0);
        let upper = new.len();
        if let Some(run) = self.write_run(vec![Box::new(new.into_iter().map(Ok)) as Source<'_>], upper, 0)? {
            self.runs.push(run);
        }
        // emptied, not `retain`ed: erasing leaves tombstones that fill the table as inserts do, and a
        // table of 2^17 slots then grew to 2^18 at its next fill (heaptrack, 10M events)
        let late: Vec<(Key, u32)> = self.recent.iter().filter(|e| *e.1 < cutoff).map(|(k, s)| (*k, *s)).collect();
        self.recent.clear();
        self.recent.extend(late);
        if self.recent.capacity() > 2 * RECENT_MAX {
            self.recent.shrink_to(RECENT_MAX);
        }
        self.compact()?;
        self.reset_merge_at();
        // the late ids left in the table cannot be flushed: the next flush comes RECENT_MIN ids later
        self.merge_at = self.merge_at.max(self.recent.len() + RECENT_MIN);
        Ok(())
    }

    /// While the newest [`FAN_IN`] runs are of one tier, merges them into one of the next tier. Each id is
    /// so rewritten once a tier (log4 of the horizon's ids over a flush's), and there are at most
    /// `FAN_IN - 1` runs of a tier to look in; merged runs stay contiguous in arrival.
    fn compact(&mut self) -> Result<(), AggregateError> {
        loop {
            let n = self.runs.len();
            if n < FAN_IN || self.runs[n - FAN_IN..].iter().any(|r| r.tier != self.runs[n - 1].tier) {
                return Ok(());
            }
            let tier = self.runs[n - 1].tier + 1;
            let merged = {
                let runs = &self.runs[n - FAN_IN..];
                let upper = runs.iter().map(|r| r.len - r.ages.behind(self.cutoff)).sum();
                self.write_run(runs.iter().map(|r| Box::new(r.entries()) as Source<'_>).collect(), upper, tier)?
            };
            self.runs.truncate(n - FAN_IN);
            self.runs.extend(merged);
        }
    }

    /// A new run of the ids of `sources` (each in key order) at or after the cutoff, a key in several with
    /// its latest time; sized for at most `upper` ids. None when no id is left.
    fn write_run(&self, mut sources: Vec<Source<'_>>, upper: usize, tier: u32) -> Result<Option<Run>, AggregateError> {
        let read = |e: std::io::Error| spill("reading a dedup run", e);
        let width = (self.horizon_s / 64).max(1);
        let ages = Ages { base: self.cutoff / width, width, counts: [0; AGE_SLOTS] };
        let mut out = RunWriter::new(self.spill_dir.as_deref(), upper, ages, tier)?;
        let mut heads: Vec<Option<(Key, u32)>> =
            sources.iter_mut().map(|s| s.next().transpose()).collect::<Result<_, _>>().map_err(read)?;
        while let Some(key) = heads.iter().flatten().map(|e| e.0).min() {
            let mut latest = 0;
            for (head, source) in heads.iter_mut().zip(sources.iter_mut()) {
                if let Some((k, s)) = *head
                    && k == key
                {
                    latest = latest.max(s);
                    *head = source.next().transpose().map_err(read)?;
                }
            }
            if latest >= self.cutoff {
                out.push(key, latest)?;
            }
        }
        out.finish()
    }

    /// Flush once the recent part holds an eighth as many ids as the runs (within the bounds). Not counted
    /// from the ids the table holds now: an eviction after every commit would then put the flush off for
    /// ever, and the table would take the whole horizon.
    fn reset_merge_at(&mut self) {
        let held: usize = self.runs.iter().map(|r| r.len).sum();
        self.merge_at = RECENT_MIN.max(held / 8).min(RECENT_MAX);
    }

    /// Forgets events older than `cutoff_ms` (event time, to the second). Ids in the runs behind the
    /// cutoff count as unseen at once; a run wholly behind it is deleted, and one at least half behind it
    /// is rewritten without them.
    pub fn evict_before(&mut self, cutoff_ms: i64) -> Result<(), AggregateError> {
        let cutoff = second(cutoff_ms);
        self.cutoff = cutoff;
        self.recent.retain(|_, s| *s >= cutoff);
        self.runs.retain(|r| r.max_s >= cutoff);
        let mut i = 0;
        while i < self.runs.len() {
            let run = &self.runs[i];
            let behind = run.ages.behind(cutoff);
            if behind == 0 || behind * 2 < run.len {
                i += 1;
                continue;
            }
            match self.write_run(vec![Box::new(run.entries()) as Source<'_>], run.len - behind, run.tier)? {
                Some(new) => {
                    self.runs[i] = new;
                    i += 1;
                }
                None => {
                    self.runs.remove(i);
                }
            }
        }
        self.reset_merge_at();
        Ok(())
    }

    /// Ids held: those in the horizon, and those behind it that the runs have not dropped yet (less than
    /// half of a run, or those of the last 1/64 of the horizon).
    pub fn len(&self) -> usize {
        self.recent.len() + self.runs.iter().map(|r| r.len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lookups so far that read the disk (a run's filter said yes: a duplicate, or a few % of new ids).
    pub fn disk_reads(&self) -> u64 {
        self.disk_reads.get()
    }

    /// Bytes of memory the set takes (its table, the runs' filters and indexes, the next segment; not the
    /// runs' files).
    pub fn memory_bytes(&self) -> usize {
        let runs: usize = self.runs.iter().map(|r| r.bloom.blocks.capacity() * 32 + r.index.capacity() * 4).sum();
        self.recent.capacity() * (std::mem::size_of::<(Key, u32)>() + 1) + runs + self.fresh.capacity()
    }

    /// The entries added since the last call, as a segment (24 bytes per entry: key, 16 little endian,
    /// then event time, 8), with their largest event time.
    pub fn take_segment(&mut self) -> (Vec<u8>, i64) {
        let max = std::mem::replace(&mut self.fresh_max, i64::MIN);
        (std::mem::take(&mut self.fresh), max)
    }

    /// Merges entries another writer of a shared lake committed (a segment's bytes): they count as seen,
    /// but are not this writer's to persist.
    pub fn absorb(&mut self, bytes: &[u8]) -> Result<(), AggregateError> {
        for (key, ts_ms) in entries(bytes)? {
            if !self.contains(key)? {
                self.recent.insert(key, second(ts_ms));
                if self.recent.len() >= self.merge_at {
                    self.flush()?;
                }
            }
        }
        Ok(())
    }

    /// Replaces the set with what segments (concatenated) hold, as at a start or a rollback: ids not
    /// committed yet are dropped. A key held twice was seen again after it left the horizon: it keeps its
    /// latest time.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), AggregateError> {
        let mut all: Vec<(Key, u32)> = entries(bytes)?.map(|(k, ts)| (k, second(ts))).collect();
        all.sort_unstable_by_key(|e| e.0);
        all.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = kept.1.max(later.1);
            }
            same
        });
        self.recent = SeenMap::default();
        self.runs = Vec::new();
        self.cutoff = 0;
        self.fresh = Vec::new();
        self.fresh_max = i64::MIN;
        // not merged with later runs (none is of its tier): it shrinks as its ids leave the horizon
        let upper = all.len();
        self.runs.extend(self.write_run(
            vec![Box::new(all.into_iter().map(Ok)) as Source<'_>],
            upper,
            RESTORED_TIER,
        )?);
        self.reset_merge_at();
        Ok(())
    }

    /// The set that segments (concatenated) hold, for a horizon of `horizon_ms`, spilling to the system's
    /// temporary directory.
    pub fn from_bytes(bytes: &[u8], horizon_ms: i64) -> Result<Self, AggregateError> {
        let mut d = Deduplicator::new(horizon_ms);
        d.restore(bytes)?;
        Ok(d)
    }
}

fn spill(context: &str, source: std::io::Error) -> AggregateError {
    AggregateError::Spill { context: context.into(), source }
}

/// Bytes of an entry of a segment.
const SEGMENT_ENTRY: usize = 24;

/// The (key, event time in ms) entries of segments' bytes.
fn entries(bytes: &[u8]) -> Result<impl Iterator<Item = (Key, i64)> + '_, AggregateError> {
    if !bytes.len().is_multiple_of(SEGMENT_ENTRY) {
        return Err(AggregateError::State(format!(
            "dedup state has {} bytes, not a multiple of {SEGMENT_ENTRY}",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(SEGMENT_ENTRY)
        .map(|c| (Key::of(Id::from_bytes(&c[..16])), i64::from_le_bytes(c[16..].try_into().expect("8")))))
}

/// Bytes of an id in a run: its key's three words, then its second, little endian.
const RUN_ENTRY: usize = 16;
/// Ids a bucket of a run's index holds on average (a lookup that the filter lets through reads one bucket).
const BUCKET_IDS: usize = 64;
/// Ids read at a time when a run is rewritten.
const READ_CHUNK: usize = 4096;
/// Runs of one tier merged into one of the next.
const FAN_IN: usize = 4;
/// The tier of a run restored from the lake's segments (above any that merges reach).
const RESTORED_TIER: u32 = 64;

/// Ids in key order, from a run's file or from memory.
type Source<'a> = Box<dyn Iterator<Item = std::io::Result<(Key, u32)>> + 'a>;

fn run_entry(b: &[u8]) -> (Key, u32) {
    let w = |i: usize| u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().expect("4"));
    (Key([w(0), w(1), w(2)]), w(3))
}

/// Older ids on local disk, sorted by key, with what finds them in memory.
struct Run {
    /// Unlinked: it goes with the process, however it ends.
    file: File,
    len: usize,
    /// `index[b]..index[b + 1]`: the ids whose key's top `bits` bits are `b`.
    index: Vec<u32>,
    bits: u32,
    bloom: Bloom,
    ages: Ages,
    /// The latest second of its ids: the run is deleted once the cutoff passes it.
    max_s: u32,
    /// 0 for a run flushed from memory; a merge of [`FAN_IN`] runs of tier t is of tier t + 1.
    tier: u32,
}

impl Run {
    /// The second the run holds `key` at, if it holds it.
    fn find(&self, key: Key, reads: &std::cell::Cell<u64>) -> std::io::Result<Option<u32>> {
        if !self.bloom.may_hold(key) {
            return Ok(None);
        }
        reads.set(reads.get() + 1);
        let b = (key.0[0] >> (32 - self.bits)) as usize;
        let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
        let mut buf = vec![0u8; (hi - lo) * RUN_ENTRY];
        self.file.read_exact_at(&mut buf, (lo * RUN_ENTRY) as u64)?;
        Ok(buf.chunks_exact(RUN_ENTRY).map(run_entry).find(|e| e.0 == key).map(|e| e.1))
    }

    /// Every id, in order (read a chunk at a time).
    fn entries(&self) -> impl Iterator<Item = std::io::Result<(Key, u32)>> + '_ {
        let mut buf = Vec::new();
        // the position of the first id in `buf`
        let mut start = 0usize;
        (0..self.len).map(move |i| {
            if i == start + buf.len() / RUN_ENTRY {
                let n = READ_CHUNK.min(self.len - i);
                buf.resize(n * RUN_ENTRY, 0);
                self.file.read_exact_at(&mut buf, (i * RUN_ENTRY) as u64)?;
                start = i;
            }
            let off = (i - start) * RUN_ENTRY;
            Ok(run_entry(&buf[off..off + RUN_ENTRY]))
        })
    }
}

/// Writes a new run, in key order.
struct RunWriter {
    out: BufWriter<File>,
    len: usize,
    bits: u32,
    /// Ids a bucket holds, then (at the end) where each starts.
    index: Vec<u32>,
    bloom: Bloom,
    ages: Ages,
    max_s: u32,
    tier: u32,
    last: Option<Key>,
}

impl RunWriter {
    /// A run for at most `upper` ids, in `dir` (the system's temporary directory when `None`).
    fn new(dir: Option<&Path>, upper: usize, ages: Ages, tier: u32) -> Result<RunWriter, AggregateError> {
        let file = match dir {
            Some(d) => tempfile::tempfile_in(d),
            None => tempfile::tempfile(),
        }
        .map_err(|e| {
            let dir = dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
            spill(&format!("creating a dedup run in {}", dir.display()), e)
        })?;
        let bits = (upper / BUCKET_IDS).max(2).ilog2().min(24);
        Ok(RunWriter {
            out: BufWriter::with_capacity(1 << 16, file),
            len: 0,
            bits,
            index: vec![0; (1 << bits) + 1],
            bloom: Bloom::with_capacity(upper),
            ages,
            max_s: 0,
            tier,
            last: None,
        })
    }

    fn push(&mut self, key: Key, s: u32) -> Result<(), AggregateError> {
        debug_assert!(self.last.is_none_or(|l| l < key), "a run is written in key order, once a key");
        self.last = Some(key);
        let mut b = [0u8; RUN_ENTRY];
        for (i, w) in [key.0[0], key.0[1], key.0[2], s].into_iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        self.out.write_all(&b).map_err(|e| spill("writing a dedup run", e))?;
        self.index[(key.0[0] >> (32 - self.bits)) as usize + 1] += 1;
        self.bloom.insert(key);
        self.ages.add(s);
        self.max_s = self.max_s.max(s);
        self.len += 1;
        Ok(())
    }

    /// The run written (none when it holds no id).
    fn finish(mut self) -> Result<Option<Run>, AggregateError> {
        if self.len == 0 {
            return Ok(None);
        }
        let file = self.out.into_inner().map_err(|e| spill("writing a dedup run", e.into_error()))?;
        for b in 1..self.index.len() {
            self.index[b] += self.index[b - 1];
        }
        let (len, index, bits, bloom, ages, max_s, tier) =
            (self.len, self.index, self.bits, self.bloom, self.ages, self.max_s, self.tier);
        Ok(Some(Run { file, len, index, bits, bloom, ages, max_s, tier }))
    }
}

/// Bits of a run's Bloom filter per id: ~0.5 % of the lookups of new ids read a run's disk.
const BLOOM_BITS: usize = 12;

/// A split-block Bloom filter (as Parquet's): 256-bit blocks, one bit set in each of a block's eight words.
/// A key is a uniform hash already: its second word picks the block, its third the bits.
struct Bloom {
    blocks: Vec<[u32; 8]>,
}

const SALT: [u32; 8] =
    [0x47b6_137b, 0x4497_4d91, 0x8824_ad5b, 0xa2b7_289d, 0x7054_95c7, 0x2df1_424b, 0x9efc_4947, 0x5c6b_fb31];

impl Bloom {
    fn with_capacity(ids: usize) -> Bloom {
        Bloom { blocks: vec![[0; 8]; (ids * BLOOM_BITS).div_ceil(256).max(1)] }
    }

    fn block(&self, key: Key) -> usize {
        ((u64::from(key.0[1]) * self.blocks.len() as u64) >> 32) as usize
    }

    fn insert(&mut self, key: Key) {
        let b = self.block(key);
        for (w, salt) in self.blocks[b].iter_mut().zip(SALT) {
            *w |= 1 << (key.0[2].wrapping_mul(salt) >> 27);
        }
    }

    fn may_hold(&self, key: Key) -> bool {
        self.blocks[self.block(key)]
            .iter()
            .zip(SALT)
            .all(|(w, salt)| w & (1 << (key.0[2].wrapping_mul(salt) >> 27)) != 0)
    }
}

/// Slots of a run's age counts.
const AGE_SLOTS: usize = 256;

/// How many of a run's ids fall in each slot of time (1/64 of the horizon) from the one of the cutoff it
/// was written at (the last slot counts all later ones): an eviction knows, without reading the disk, at
/// least how many ids are behind a new cutoff.
struct Ages {
    base: u32,
    width: u32,
    counts: [u32; AGE_SLOTS],
}

impl Ages {
    fn add(&mut self, s: u32) {
        let i = (s / self.width).saturating_sub(self.base) as usize;
        self.counts[i.min(AGE_SLOTS - 1)] += 1;
    }

    /// Ids in slots wholly before `cutoff`.
    fn behind(&self, cutoff: u32) -> usize {
        let whole = (cutoff / self.width).saturating_sub(self.base) as usize;
        self.counts[..whole.min(AGE_SLOTS - 1)].iter().map(|&c| c as usize).sum()
    }
}

#[cfg(test)]
impl Deduplicator {
    /// Ids the set holds that count as seen: every recent one, and the run's not behind the cutoff (a scan
    /// of the run).
    fn live_len(&self) -> usize {
        let live = |r: &Run| r.entries().filter(|e| e.as_ref().unwrap().1 >= self.cutoff).count();
        self.recent.len() + self.runs.iter().map(live).sum::<usize>()
    }

    fn run_len(&self) -> usize {
        self.runs.iter().map(|r| r.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Ev, batch, xorshift};

    fn ev(id: u128, ts: i64) -> Ev<'static> {
        Ev { ts, id, owner: "o", identity: "i", input: 1, cost: Some(1) }
    }

    #[test]
    fn redeliveries_within_a_batch_and_across_batches_count_once() {
        let mut d = Deduplicator::default();
        let (kept, dups) = d.filter(&batch(&[ev(1, 10), ev(2, 10), ev(1, 11)])).unwrap();
        assert_eq!((kept.num_rows(), dups), (2, 1));
        let (kept, dups) = d.filter(&batch(&[ev(2, 12), ev(3, 12)])).unwrap();
        assert_eq!((kept.num_rows(), dups), (1, 1));
        assert_eq!(d.len(), 3);
    }

    const HOUR: i64 = 3_600_000;

    #[test]
    fn the_set_survives_a_restart_and_forgets_beyond_the_horizon() {
        let mut d = Deduplicator::new(HOUR);
        d.filter(&batch(&[ev(1, 1_000), ev(2, 5_000)])).unwrap();
        let mut restored = Deduplicator::from_bytes(&d.take_segment().0, HOUR).unwrap();
        assert_eq!(restored.run_len(), 2, "a restart puts the ids on disk");
        assert_eq!(restored.filter(&batch(&[ev(1, 1_000)])).unwrap().1, 1, "redelivery after restart");
        restored.evict_before(2_000).unwrap();
        assert_eq!(restored.filter(&batch(&[ev(1, 1_000)])).unwrap().1, 0, "beyond the horizon it counts again");
        assert!(Deduplicator::from_bytes(&[0; 7], HOUR).is_err());
    }

    #[test]
    fn the_horizon_is_kept_to_the_second_rounding_towards_keeping() {
        assert_eq!(std::mem::size_of::<(Key, u32)>(), 16);
        let mut d = Deduplicator::new(HOUR);
        d.filter(&batch(&[ev(1, 1_999), ev(2, 2_000), ev(3, 2_999)])).unwrap();
        d.flush().unwrap();
        assert_eq!((d.run_len(), d.recent.len()), (3, 0));
        // 2.5 s: the ids at 2.0 s and 2.999 s stay (same second), the one at 1.999 s goes
        d.evict_before(2_500).unwrap();
        assert_eq!(d.live_len(), 2);
        assert_eq!(d.filter(&batch(&[ev(1, 1_999), ev(2, 2_000), ev(3, 2_999)])).unwrap().1, 2);
        // with a day's horizon as well: an id stays up to a second past the horizon, never less
        let mut d = Deduplicator::default();
        d.filter(&batch(&[ev(1, 21_999), ev(2, 22_000), ev(3, 33_000)])).unwrap();
        d.flush().unwrap();
        d.evict_before(22_000).unwrap();
        assert_eq!(d.live_len(), 2, "21.999 s is in the second before 22 s");
        d.evict_before(22_999).unwrap();
        assert_eq!(d.live_len(), 2, "22 s stays until the cutoff leaves its second");
        d.evict_before(23_000).unwrap();
        assert_eq!(d.live_len(), 1);
        // ids years apart, and before 1970 (read as 0), keep their order of age
        let mut d = Deduplicator::new(HOUR);
        let years = 10 * 365 * 86_400_000i64;
        d.filter(&batch(&[ev(1, -5_000), ev(2, 0), ev(3, years), ev(4, 20 * years)])).unwrap();
        d.flush().unwrap();
        d.evict_before(years).unwrap();
        assert_eq!(d.live_len(), 2);
        assert_eq!(d.filter(&batch(&[ev(1, 0), ev(2, 0), ev(3, 0), ev(4, 0)])).unwrap().1, 2, "3 and 4 stay");
        // keys that differ only in the 32 bits the set does not hold are one id; segments keep all 128 bits
        let (a, b) = (5u128, 5u128 | (7u128 << 96));
        let mut d = Deduplicator::default();
        assert_eq!(d.filter(&batch(&[ev(a, 10), ev(b, 10)])).unwrap().1, 1);
        let (seg, _) = d.take_segment();
        assert_eq!(seg.len(), 24);
        assert_eq!(u128::from_le_bytes(seg[..16].try_into().unwrap()) & !(u128::MAX >> 32), 0);
    }

    /// A late event behind the cutoff counts as seen until the next eviction, wherever it is (a merge
    /// leaves it in the recent part), as a restart from the segments after that eviction would have it.
    #[test]
    fn a_late_id_behind_the_cutoff_is_held_until_the_next_eviction() {
        let mut d = Deduplicator::new(HOUR);
        d.evict_before(100_000).unwrap();
        d.filter(&batch(&[ev(1, 5_000)])).unwrap();
        d.filter(&batch(&(2..40).map(|i| ev(i, 200_000)).collect::<Vec<_>>())).unwrap();
        assert!(d.run_len() >= 16 && d.recent.contains_key(&Key::of(Id(1, 0))), "merged, and 1 left out");
        assert_eq!(d.filter(&batch(&[ev(1, 5_000)])).unwrap().1, 1, "held until the next eviction");
        d.evict_before(100_000).unwrap();
        assert_eq!(d.filter(&batch(&[ev(1, 5_000)])).unwrap().1, 0, "then forgotten");
    }

    /// An eviction after every commit (the pipeline's rhythm), with commits of fewer ids than a flush
    /// takes, still lets the table flush: it once put the flush off by a flush's worth of ids at every
    /// eviction, so the table took the whole horizon (29 bytes an id instead of ~1.5).
    #[test]
    fn evictions_after_every_small_batch_do_not_put_the_flush_off() {
        let mut d = Deduplicator::new(HOUR);
        for b in 0..1_000i64 {
            let evs: Vec<Ev<'static>> = (0..10).map(|i| ev((b * 10 + i) as u128, b * 1_000)).collect();
            assert_eq!(d.filter(&batch(&evs)).unwrap().1, 0);
            d.evict_before(b * 1_000 - HOUR).unwrap();
            assert!(d.recent.len() <= RECENT_MIN.max(d.run_len() / 8), "batch {b}: {d:?}");
        }
        assert_eq!(d.len(), 10_000);
        assert!(d.run_len() >= 10_000 - RECENT_MIN.max(10_000 / 8), "{d:?}");
    }

    /// A run is read only when its Bloom filter says yes: for every id it holds, and for a few in a
    /// thousand new ids per run. Runs merge in tiers; a run at least half behind a cutoff is rewritten.
    #[test]
    fn a_large_set_finds_exactly_its_keys_and_reads_the_disk_for_few_new_ones() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        let mut d = Deduplicator::new(HOUR);
        let ids: Vec<Id> = (0..1_100_000).map(|_| Id(next(), next())).collect();
        for (i, id) in ids.iter().enumerate() {
            assert!(d.insert(*id, i64::from(i % 4 == 0) * 200_000).unwrap(), "{i}");
        }
        d.flush().unwrap();
        assert_eq!((d.run_len(), d.len(), d.recent.len()), (ids.len(), ids.len(), 0));
        let tiers: Vec<u32> = d.runs.iter().map(|r| r.tier).collect();
        assert!(tiers.windows(2).all(|w| w[0] >= w[1]), "older runs are of higher tiers: {tiers:?}");
        assert!(tiers.iter().all(|t| tiers.iter().filter(|u| *u == t).count() < FAN_IN), "{tiers:?}");
        assert!(tiers[0] >= 3, "{tiers:?}");
        let reads = d.disk_reads();
        assert!(ids.iter().all(|id| d.contains(Key::of(*id)).unwrap()));
        let held_reads = d.disk_reads() - reads;
        assert!((ids.len() as u64..ids.len() as u64 * 11 / 10).contains(&held_reads), "{held_reads} reads");
        let reads = d.disk_reads();
        assert!((0..100_000).all(|_| !d.contains(Key::of(Id(next(), next()))).unwrap()));
        let false_positives = d.disk_reads() - reads;
        let most = 100_000 * d.runs.len() as u64 / 100;
        assert!(false_positives < most, "{false_positives} of 100,000 new ids read the disk ({tiers:?})");
        // slots of 56 s: at 150 s the ids at 0 s are wholly behind, 3/4 of each run: all are rewritten
        d.evict_before(150_000).unwrap();
        assert_eq!(d.run_len(), ids.len() / 4);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(d.contains(Key::of(*id)).unwrap(), i % 4 == 0, "{i}");
        }
        // and once the cutoff passes every id, no run is left
        d.evict_before(201_000).unwrap();
        assert!(d.runs.is_empty() && d.is_empty());
        let (seg, max) = d.take_segment();
        let restored = Deduplicator::from_bytes(&seg, HOUR).unwrap();
        assert_eq!((restored.len(), restored.runs.len(), max), (ids.len(), 1, 200_000));
        assert_eq!(restored.runs[0].bits, 14);
        assert!(ids.iter().all(|id| restored.contains(Key::of(*id)).unwrap()));
        assert!(restored.memory_bytes() < ids.len() * 2, "{} bytes in memory", restored.memory_bytes());
    }

    /// The set against a plain map of every id with its first time, through batches with redeliveries,
    /// evictions, restarts from the segments and entries another writer committed: the same events are
    /// dropped, at every step, while the recent part is merged into the run again and again.
    #[test]
    fn the_set_drops_exactly_what_a_plain_map_of_first_sightings_drops() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        let mut model: HashMap<u128, i64> = HashMap::new();
        let mut d = Deduplicator::new(HOUR);
        let mut segments: Vec<(Vec<u8>, i64)> = Vec::new();
        let (mut cutoff, mut merges_seen) = (0i64, 0usize);
        for step in 0..300i64 {
            // ids from a pool that grows (new events) with redeliveries of earlier ones, some of them late
            let evs: Vec<Ev<'static>> = (0..1 + next() % 40)
                .map(|_| {
                    let id = u128::from(next() % (20 + 8 * step as u64)) | (u128::from(next() % 3) << 100);
                    let late = if next().is_multiple_of(16) { 30_000 } else { 0 };
                    ev(id, (step * 1_000 + (next() % 5_000) as i64 - late).max(0))
                })
                .collect();
            let want = evs
                .iter()
                .filter(|e| {
                    let key = e.id & (u128::MAX >> 32);
                    match model.get(&key) {
                        Some(_) => false,
                        None => {
                            model.insert(key, e.ts.div_euclid(1000) * 1000);
                            true
                        }
                    }
                })
                .count();
            let recent_before = d.recent.len();
            let (kept, dups) = d.filter(&batch(&evs)).unwrap();
            assert_eq!((kept.num_rows(), dups as usize), (want, evs.len() - want), "step {step}");
            merges_seen += usize::from(d.recent.len() < recent_before + want);
            match next() % 10 {
                0 | 1 => {
                    // whole seconds, where the set's rounding and the lake's list of segments agree
                    cutoff += (next() % 4) as i64 * 1_000;
                    d.evict_before(cutoff).unwrap();
                    model.retain(|_, t| *t >= cutoff);
                }
                2 => {
                    // a restart: the segments of entries still in the horizon
                    segments.push(d.take_segment());
                    let live: Vec<u8> =
                        segments.iter().filter(|(_, max)| *max >= cutoff).flat_map(|(b, _)| b.clone()).collect();
                    d = Deduplicator::from_bytes(&live, HOUR).unwrap();
                    d.evict_before(cutoff).unwrap();
                    model.retain(|_, t| *t >= cutoff);
                }
                3 => {
                    // another writer's entries: they count as seen and are not persisted here (a restart
                    // loads that writer's segments too)
                    let id = 1u128 << 90 | u128::from(next());
                    let mut other = Deduplicator::default();
                    other.filter(&batch(&[ev(id, step * 1_000)])).unwrap();
                    let segment = other.take_segment();
                    d.absorb(&segment.0).unwrap();
                    segments.push(segment);
                    model.entry(id & (u128::MAX >> 32)).or_insert(step * 1_000);
                }
                _ => segments.push(d.take_segment()),
            }
            assert_eq!(d.live_len(), model.len(), "step {step}");
        }
        assert!(merges_seen > 20 && d.run_len() > 1_000, "{merges_seen} flushes, {} in the runs", d.run_len());
    }

    #[test]
    fn segments_hold_only_what_is_new_and_together_restore_the_set() {
        let mut d = Deduplicator::default();
        d.filter(&batch(&[ev(1, 10), ev(2, 20)])).unwrap();
        let (s1, max1) = d.take_segment();
        d.filter(&batch(&[ev(2, 20), ev(3, 30)])).unwrap();
        let (s2, max2) = d.take_segment();
        assert_eq!((s1.len(), max1, s2.len(), max2), (48, 20, 24, 30));
        let mut restored = Deduplicator::from_bytes(&[s1, s2].concat(), HOUR).unwrap();
        assert_eq!(restored.filter(&batch(&[ev(1, 10), ev(3, 30), ev(4, 40)])).unwrap().1, 2);
    }

    /// A spill directory that cannot be written is an error that names it, not a lost id.
    #[test]
    fn a_spill_directory_that_cannot_be_written_is_named() {
        let mut d = Deduplicator::new(HOUR).spilling_to(Some("/nonexistent/aifinops-spill".into()));
        let evs: Vec<Ev<'static>> = (0..40).map(|i| ev(i, 1_000)).collect();
        let err = d.filter(&batch(&evs)).unwrap_err().to_string();
        assert!(err.contains("creating a dedup run in /nonexistent/aifinops-spill"), "{err}");
    }
}
