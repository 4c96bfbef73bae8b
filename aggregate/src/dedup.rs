//! Deduplication of redelivered events by `event_id` within a horizon of event time.
//!
//! The set holds 96 bits of a 128-bit hash of each accepted `event_id` with its event time in ticks of
//! 1/8192 of the horizon (12 bytes an entry); segments on disk hold the whole hash and the time in
//! milliseconds. Entries older than `watermark - horizon` are evicted at each commit; a duplicate arriving
//! later than that is counted again (documented in DESIGN.md). Each commit persists only the entries added
//! since the previous one (an append-only segment), so commit cost is O(new events), not O(events in the
//! horizon); a restart loads the live segments back.
//!
//! In memory the set is two parts: the entries of the last events (up to ~230 thousand) in a hash table,
//! and all older ones in one array sorted by key, into which the table is merged (in place) once it holds
//! an eighth as many. The array is indexed by the top 16 to 24 bits of the key (about four entries a
//! bucket, never fewer than 65,536 buckets), so an entry leaves out its top 16 bits: where it sits says
//! them. A hash table alone is sized by doubling: with the 2.2M events of a day at 25 events/s it held 4.2M
//! slots of 17 bytes (71 MB); the array holds exactly its entries (26 MB), and the horizon is the one state
//! that grows with the event rate.

use std::collections::HashMap;

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

/// What the set holds of an event key: 96 of its 128 bits, 4-byte aligned (the set is what grows with the
/// event rate times the horizon: 2.2M entries for a day of 25 events/s). Two distinct keys share 96 bits
/// with probability 2^-96 per pair: with 10M keys in the horizon and 1M new events a second, one event
/// wrongly dropped as a duplicate every ~10^8 years. Segments on disk keep all 128 bits. Ordered as the
/// 96-bit number whose most significant word is the first ([`Key::wide`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key([u32; 3]);

impl Key {
    fn of(id: Id) -> Key {
        Key([id.0 as u32, (id.0 >> 32) as u32, id.1 as u32])
    }

    /// The key as a 96-bit number.
    fn wide(self) -> u128 {
        let [a, b, c] = self.0;
        (u128::from(a) << 64) | (u128::from(b) << 32) | u128::from(c)
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let [a, b, c] = self.0;
        h.write_u64((u64::from(a) | (u64::from(b) << 32)) ^ u64::from(c).rotate_left(32));
    }
}

/// Event time in ticks of 1/8192 of the horizon (whole seconds; 11 s for 24 h), counted modulo 2^16: an
/// entry's age is read against the cutoff within ±4 horizons ([`live`]). The horizon is kept to the tick,
/// rounding in favour of keeping an entry (up to a tick longer, never shorter).
#[derive(Debug, Clone, Copy)]
struct Clock {
    tick_ms: i64,
}

impl Clock {
    fn new(horizon_ms: i64) -> Clock {
        let secs = (horizon_ms.max(0) as u64).div_ceil(8192 * 1000).max(1);
        Clock { tick_ms: secs as i64 * 1000 }
    }

    fn tick(self, ts_ms: i64) -> u16 {
        ts_ms.div_euclid(self.tick_ms) as u16
    }
}

/// Whether an entry of `tick` is at or after the cutoff's tick: within 2^15 ticks (4 horizons) of the
/// cutoff the answer is exact. An entry more than 4 horizons ahead of the cutoff (a producer's clock years
/// off) reads as behind it and is forgotten at the next eviction; one more than 4 behind is kept until it
/// reads as behind again, at most 4 horizons longer.
fn live(tick: u16, cutoff: u16) -> bool {
    tick.wrapping_sub(cutoff) as i16 >= 0
}

type SeenMap = HashMap<Key, u16, std::hash::BuildHasherDefault<IdHasher>>;

/// The top 16 bits of a 96-bit key: they pick the sorted part's group, so its entries leave them out.
const GROUP_BITS: u32 = 16;
const GROUPS: usize = 1 << GROUP_BITS;
/// The 80 bits of a key that an entry of the sorted part holds.
const REST: u128 = (1 << 80) - 1;

/// An entry of the sorted part (12 bytes): the low 80 bits of its key, then its tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot([u32; 3]);

impl Slot {
    fn new(key: u128, tick: u16) -> Slot {
        let v = ((key & REST) << 16) | u128::from(tick);
        Slot([(v >> 64) as u32, (v >> 32) as u32, v as u32])
    }

    /// The low 80 bits of the key.
    fn rest(self) -> u128 {
        let [a, b, c] = self.0;
        (u128::from(a) << 48) | (u128::from(b) << 16) | u128::from(c >> 16)
    }

    fn tick(self) -> u16 {
        self.0[2] as u16
    }
}

/// An entry being merged into the sorted part.
#[derive(Debug, Clone, Copy)]
struct New {
    key: Key,
    tick: u16,
}

/// The recent part is merged into the sorted part once it holds this many entries, or an eighth of the
/// sorted part when that is more (each entry is then moved about eight times while it lives), up to
/// [`RECENT_MAX`].
#[cfg(not(test))]
const RECENT_MIN: usize = 65_536;
/// Small in unit tests, so that they merge often.
#[cfg(test)]
const RECENT_MIN: usize = 16;
/// The most entries the recent part holds: as many as a table of 2^18 slots takes before it doubles (it
/// takes 7/8 of its slots).
const RECENT_MAX: usize = (1 << 18) / 8 * 7;

#[derive(Clone)]
pub struct Deduplicator {
    clock: Clock,
    /// Entries added since the last merge.
    recent: SeenMap,
    /// Merge the recent part once it holds this many.
    merge_at: usize,
    /// Older entries, sorted by key.
    sorted: Vec<Slot>,
    /// `index[b]..index[b + 1]` is the range of `sorted` whose keys have `b` in their top `bits` bits
    /// (16 to 24; empty when `sorted` is).
    index: Vec<u32>,
    bits: u32,
    /// Entries added since the last [`Deduplicator::take_segment`], as the segment's bytes.
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
            .field("sorted", &self.sorted.len())
            .field("fresh", &(self.fresh.len() / SEGMENT_ENTRY))
            .finish()
    }
}

impl Deduplicator {
    /// An empty set for a horizon of `horizon_ms` of event time (it sets the resolution of entries' times).
    pub fn new(horizon_ms: i64) -> Self {
        Deduplicator {
            clock: Clock::new(horizon_ms),
            recent: SeenMap::default(),
            merge_at: RECENT_MIN,
            sorted: Vec::new(),
            index: Vec::new(),
            bits: 0,
            fresh: Vec::new(),
            fresh_max: i64::MIN,
        }
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
        let mask: BooleanArray = (0..keys.len())
            .map(|i| {
                let k = Id::from_bytes(keys.value(i));
                // the first sighting's time is kept, as its segment on disk has it
                let fresh = self.insert(k, ts.value(i));
                if !fresh {
                    dups += 1;
                }
                Some(fresh)
            })
            .collect();
        if dups == 0 {
            return Ok((batch.clone(), 0));
        }
        let kept = filter_record_batch(batch, &mask)
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
            if !self.insert(Id::from_bytes(keys.value(i)), ts.value(i)) && retries.value(i) == 0 {
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

    /// Whether the set holds `key`.
    fn contains(&self, key: Key) -> bool {
        self.recent.contains_key(&key) || self.in_sorted(key.wide())
    }

    /// Whether the sorted part holds the 96-bit `key`: a scan of its bucket.
    fn in_sorted(&self, key: u128) -> bool {
        if self.sorted.is_empty() {
            return false;
        }
        let b = (key >> (96 - self.bits)) as usize;
        let Slot([x, y, z]) = Slot::new(key, 0);
        self.sorted[self.index[b] as usize..self.index[b + 1] as usize]
            .iter()
            .any(|s| s.0[0] == x && s.0[1] == y && s.0[2] >> 16 == z >> 16)
    }

    /// Adds event key `id` first seen at `ts_ms` (persisted with the next segment); false when it is
    /// already in the set (nothing changes).
    fn insert(&mut self, id: Id, ts_ms: i64) -> bool {
        let key = Key::of(id);
        if self.in_sorted(key.wide()) {
            return false;
        }
        match self.recent.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(self.clock.tick(ts_ms));
                let mut entry = [0u8; SEGMENT_ENTRY];
                entry[..8].copy_from_slice(&id.0.to_le_bytes());
                entry[8..16].copy_from_slice(&id.1.to_le_bytes());
                entry[16..].copy_from_slice(&ts_ms.to_le_bytes());
                self.fresh.extend_from_slice(&entry);
                self.fresh_max = self.fresh_max.max(ts_ms);
                if self.recent.len() >= self.merge_at {
                    self.merge_recent();
                }
                true
            }
        }
    }

    /// Where each group (the keys' top 16 bits) starts in the sorted part, and its end: `GROUPS + 1`
    /// positions.
    fn groups(&self) -> Vec<u32> {
        if self.sorted.is_empty() {
            return vec![0; GROUPS + 1];
        }
        let step = 1usize << (self.bits - GROUP_BITS);
        (0..GROUPS).map(|g| self.index[g * step]).chain([self.sorted.len() as u32]).collect()
    }

    /// Merges the recent entries into the sorted ones, in place from the back (the array grows by the
    /// recent entries only, no second copy of it is made), and rebuilds the index.
    fn merge_recent(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        let mut new: Vec<New> = self.recent.drain().map(|(key, tick)| New { key, tick }).collect();
        new.sort_unstable_by_key(|e| e.key);
        let mut groups = self.groups();
        let (n, bits) = (self.sorted.len(), self.bits);
        self.sorted.reserve_exact(new.len());
        self.sorted.resize(n + new.len(), Slot::default());
        // from the largest new entry down: the old entries after where it goes move up by the new entries
        // not yet placed, as one block (keys are unique across both parts: a key is only added when the set
        // does not hold it). Within a bucket every key has the bucket's top bits (16 or more), so the rest
        // of the key orders them.
        let mut end = n;
        for (j, e) in new.iter().enumerate().rev() {
            let key = e.key.wide();
            let at = if n == 0 {
                0
            } else {
                let b = (key >> (96 - bits)) as usize;
                // old entries from `end` on have moved already (none of them is smaller than this key)
                let (lo, hi) = ((self.index[b] as usize).min(end), (self.index[b + 1] as usize).min(end));
                let rest = key & REST;
                lo + self.sorted[lo..hi].iter().take_while(|s| s.rest() < rest).count()
            };
            self.sorted.copy_within(at..end, at + j + 1);
            self.sorted[at + j] = Slot::new(key, e.tick);
            end = at;
        }
        // each group starts later by the new entries of the groups before it
        for (start, added) in groups.iter_mut().zip(group_starts(new.iter().map(|e| e.key))) {
            *start += added;
        }
        self.reindex(&groups);
    }

    /// Rebuilds the bucket index (about four entries a bucket, at least one bucket a group) from where
    /// each group starts, and the merge threshold.
    fn reindex(&mut self, groups: &[u32]) {
        let n = self.sorted.len();
        self.merge_at = RECENT_MIN.max(n / 8).min(RECENT_MAX);
        self.index.clear();
        if n == 0 {
            self.bits = 0;
            self.index.shrink_to_fit();
            return;
        }
        self.bits = (n / 4).max(1).ilog2().clamp(GROUP_BITS, 24);
        let k = self.bits - GROUP_BITS;
        let buckets = (1usize << self.bits) + 1;
        if self.index.capacity() > 2 * buckets {
            self.index.shrink_to(buckets);
        }
        self.index.reserve_exact(buckets);
        for g in 0..GROUPS {
            let (mut at, end) = (groups[g] as usize, groups[g + 1] as usize);
            for q in 0..1u128 << k {
                // the first entry of the group whose next k bits are at least q
                while at < end && self.sorted[at].rest() >> (80 - k) < q {
                    at += 1;
                }
                self.index.push(at as u32);
            }
        }
        self.index.push(n as u32);
    }

    /// Forgets events older than `cutoff_ms` (event time; to the tick, see [`Clock`]).
    pub fn evict_before(&mut self, cutoff_ms: i64) {
        let cutoff = self.clock.tick(cutoff_ms);
        self.recent.retain(|_, t| live(*t, cutoff));
        if self.sorted.iter().all(|s| live(s.tick(), cutoff)) {
            return;
        }
        let groups = self.groups();
        let mut kept = Vec::with_capacity(GROUPS + 1);
        let mut w = 0usize;
        for g in 0..GROUPS {
            kept.push(w as u32);
            for r in groups[g] as usize..groups[g + 1] as usize {
                if live(self.sorted[r].tick(), cutoff) {
                    self.sorted[w] = self.sorted[r];
                    w += 1;
                }
            }
        }
        kept.push(w as u32);
        if w != self.sorted.len() {
            self.sorted.truncate(w);
            if self.sorted.capacity() > w + w / 4 + RECENT_MIN {
                self.sorted.shrink_to_fit();
            }
            self.reindex(&kept);
        }
    }

    pub fn len(&self) -> usize {
        self.recent.len() + self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
            if !self.contains(key) {
                self.recent.insert(key, self.clock.tick(ts_ms));
                if self.recent.len() >= self.merge_at {
                    self.merge_recent();
                }
            }
        }
        Ok(())
    }

    /// The set that segments (concatenated) hold, for a horizon of `horizon_ms`. A key held twice was seen
    /// again after it left the horizon: it keeps its latest time.
    pub fn from_bytes(bytes: &[u8], horizon_ms: i64) -> Result<Self, AggregateError> {
        let mut all: Vec<(Key, i64)> = entries(bytes)?.collect();
        all.sort_unstable_by_key(|e| e.0);
        all.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = kept.1.max(later.1);
            }
            same
        });
        let mut d = Deduplicator::new(horizon_ms);
        let groups = group_starts(all.iter().map(|e| e.0));
        d.sorted = all.iter().map(|&(key, ts)| Slot::new(key.wide(), d.clock.tick(ts))).collect();
        drop(all);
        d.reindex(&groups);
        Ok(d)
    }
}

/// Where each group (the keys' top 16 bits) starts among `keys` in order, and their end: `GROUPS + 1`
/// positions.
fn group_starts(keys: impl Iterator<Item = Key>) -> Vec<u32> {
    let mut starts = vec![0u32; GROUPS + 1];
    for key in keys {
        starts[(key.wide() >> 80) as usize + 1] += 1;
    }
    for g in 0..GROUPS {
        starts[g + 1] += starts[g];
    }
    starts
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

    /// A horizon of an hour: ticks of a second.
    const HOUR: i64 = 3_600_000;

    #[test]
    fn the_set_survives_a_restart_and_forgets_beyond_the_horizon() {
        let mut d = Deduplicator::new(HOUR);
        d.filter(&batch(&[ev(1, 1_000), ev(2, 5_000)])).unwrap();
        let mut restored = Deduplicator::from_bytes(&d.take_segment().0, HOUR).unwrap();
        assert_eq!(restored.filter(&batch(&[ev(1, 1_000)])).unwrap().1, 1, "redelivery after restart");
        restored.evict_before(2_000);
        assert_eq!(restored.filter(&batch(&[ev(1, 1_000)])).unwrap().1, 0, "beyond the horizon it counts again");
        assert!(Deduplicator::from_bytes(&[0; 7], HOUR).is_err());
    }

    #[test]
    fn an_entry_is_12_bytes_and_the_horizon_rounds_towards_keeping() {
        assert_eq!(std::mem::size_of::<Slot>(), 12);
        assert_eq!(std::mem::size_of::<(Key, u16)>(), 16);
        let mut d = Deduplicator::new(HOUR);
        d.filter(&batch(&[ev(1, 1_999), ev(2, 2_000), ev(3, 2_999)])).unwrap();
        d.merge_recent();
        // 2.5 s: the entry at 2.0 s and the one at 2.999 s stay (same second), the one at 1.999 s goes
        d.evict_before(2_500);
        assert_eq!(d.len(), 2);
        assert_eq!(d.filter(&batch(&[ev(1, 1_999), ev(2, 2_000), ev(3, 2_999)])).unwrap().1, 2);
        // a day's horizon has ticks of 11 s: an entry stays up to a tick past the horizon, never less
        let mut d = Deduplicator::default();
        assert_eq!(d.clock.tick_ms, 11_000);
        d.filter(&batch(&[ev(1, 21_999), ev(2, 22_000), ev(3, 33_000)])).unwrap();
        d.merge_recent();
        d.evict_before(22_000);
        assert_eq!(d.len(), 2, "21.999 s is in the tick before 22 s");
        d.evict_before(32_999);
        assert_eq!(d.len(), 2, "22 s stays until the cutoff leaves its tick");
        d.evict_before(33_000);
        assert_eq!(d.len(), 1);
        // keys that differ only in the 32 bits the set does not hold are one entry; on disk all 128 bits stay
        let (a, b) = (5u128, 5u128 | (7u128 << 96));
        let mut d = Deduplicator::default();
        assert_eq!(d.filter(&batch(&[ev(a, 10), ev(b, 10)])).unwrap().1, 1);
        let (seg, _) = d.take_segment();
        assert_eq!(seg.len(), 24);
        assert_eq!(u128::from_le_bytes(seg[..16].try_into().unwrap()) & !(u128::MAX >> 32), 0);
    }

    /// Ticks count modulo 2^16: ages read right across the wrap, and an entry years ahead of the cutoff is
    /// let go at the next eviction instead of being held for years.
    #[test]
    fn ticks_wrap_around_and_far_future_entries_do_not_stay() {
        let wrap = 65_536 * 1_000; // tick 0 again, with ticks of a second
        let mut d = Deduplicator::new(HOUR);
        let evs = [ev(1, wrap - 10_000), ev(2, wrap - 1_000), ev(3, wrap + 5_000), ev(4, wrap + 3_600_000)];
        d.filter(&batch(&evs)).unwrap();
        d.filter(&batch(&[ev(5, wrap + 40_000_000)])).unwrap(); // 11 h ahead: more than 2^15 ticks
        d.merge_recent();
        d.evict_before(wrap - 1_000);
        assert_eq!(d.len(), 3, "1 is behind the cutoff and 5 reads as behind it; 2, 3 and 4 stay across the wrap");
        let dropped = d.filter(&batch(&evs)).unwrap().1;
        assert_eq!(dropped, 3, "2, 3 and 4 are still known");
    }

    /// Sets large enough for buckets finer than the 16 group bits (bits 17 and 18): every key stays found
    /// through merges and an eviction of half of them, and nothing else is.
    #[test]
    fn a_large_set_finds_exactly_its_keys() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        let mut d = Deduplicator::new(HOUR);
        let ids: Vec<Id> = (0..1_100_000).map(|_| Id(next(), next())).collect();
        for (i, id) in ids.iter().enumerate() {
            assert!(d.insert(*id, (i % 2) as i64 * 10_000), "{i}");
        }
        d.merge_recent();
        assert_eq!((d.bits, d.len()), (18, ids.len()));
        assert!(ids.iter().all(|id| d.contains(Key::of(*id))));
        d.evict_before(5_000);
        assert_eq!((d.bits, d.len()), (17, ids.len() / 2));
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(d.contains(Key::of(*id)), i % 2 == 1, "{i}");
        }
        assert!((0..1000).all(|_| !d.contains(Key::of(Id(next(), next())))));
        let (seg, max) = d.take_segment();
        let restored = Deduplicator::from_bytes(&seg, HOUR).unwrap();
        assert_eq!((restored.len(), restored.bits, max), (ids.len(), 18, 10_000));
        assert!(ids.iter().all(|id| restored.contains(Key::of(*id))));
    }

    /// The set against a plain map of every id with its first time, through batches with redeliveries,
    /// evictions, restarts from the segments and entries another writer committed: the same events are
    /// dropped, at every step, while the recent part is merged into the sorted one again and again.
    #[test]
    fn the_set_drops_exactly_what_a_plain_map_of_first_sightings_drops() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        let mut model: HashMap<u128, i64> = HashMap::new();
        let mut d = Deduplicator::new(HOUR);
        let mut segments: Vec<(Vec<u8>, i64)> = Vec::new();
        let (mut cutoff, mut merges_seen) = (0i64, 0usize);
        for step in 0..300i64 {
            // ids from a pool that grows (new events) with redeliveries of earlier ones
            let evs: Vec<Ev<'static>> = (0..1 + next() % 40)
                .map(|_| {
                    let id = u128::from(next() % (20 + 8 * step as u64)) | (u128::from(next() % 3) << 100);
                    ev(id, step * 1_000 + (next() % 5_000) as i64)
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
            let sorted_before = d.sorted.len();
            let (kept, dups) = d.filter(&batch(&evs)).unwrap();
            assert_eq!((kept.num_rows(), dups as usize), (want, evs.len() - want), "step {step}");
            merges_seen += usize::from(d.sorted.len() > sorted_before);
            match next() % 10 {
                0 | 1 => {
                    // whole seconds, where the set's rounding and the lake's list of segments agree
                    cutoff += (next() % 4) as i64 * 1_000;
                    d.evict_before(cutoff);
                    model.retain(|_, t| *t >= cutoff);
                }
                2 => {
                    // a restart: the segments of entries still in the horizon
                    segments.push(d.take_segment());
                    let live: Vec<u8> =
                        segments.iter().filter(|(_, max)| *max >= cutoff).flat_map(|(b, _)| b.clone()).collect();
                    d = Deduplicator::from_bytes(&live, HOUR).unwrap();
                    d.evict_before(cutoff);
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
            assert_eq!(d.len(), model.len(), "step {step}");
        }
        assert!(merges_seen > 20 && d.sorted.len() > 1_000, "{merges_seen} merges, {} sorted", d.sorted.len());
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
}
