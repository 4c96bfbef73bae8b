//! Deduplication of redelivered events by `event_id` within a horizon of event time.
//!
//! The set holds 96 bits of a 128-bit hash of each accepted `event_id` with its event time in seconds
//! (16 bytes an entry); segments on disk hold the whole hash and the time in milliseconds. Entries older
//! than `watermark - horizon` are evicted at each commit; a duplicate arriving later than that is counted
//! again (documented in DESIGN.md). Each commit persists only the entries added since the previous one
//! (an append-only segment), so commit cost is O(new events), not O(events in the horizon); a restart
//! loads the live segments back.
//!
//! In memory the set is two parts: the entries of the last few hundred thousand events in a hash table,
//! and all older ones in one array sorted by key with an index over its first word, into which the table
//! is merged (in place) once it holds an eighth as many. A hash table alone is sized by doubling: with the
//! 2.2M events of a day at 25 events/s it held 4.2M slots of 17 bytes (71 MB); the array holds exactly
//! its entries (35 MB), and the horizon is the one state that grows with the event rate.

use std::collections::HashMap;

use aifinops_schemas::event::{EVENT_KEY, TS};
use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::TimestampMillisecondType;

use crate::AggregateError;

/// An event key (a 128-bit xxh3 hash) as two words: 8-byte aligned, so an entry with its time is 24 bytes
/// (a `u128` key made it 32), and already uniform, so the table hashes it by folding, not SipHash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Id(u64, u64);

impl Id {
    fn from_bytes(b: &[u8]) -> Id {
        Id(u64::from_le_bytes(b[..8].try_into().expect("8")), u64::from_le_bytes(b[8..16].try_into().expect("8")))
    }
}

impl std::hash::Hash for Id {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(self.0 ^ self.1.rotate_left(32));
    }
}

/// Passes an [`Id`]'s folded word through.
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

/// What the set holds of an event key: 96 of its 128 bits, 4-byte aligned, so an entry with its time in
/// seconds is 16 bytes (the set is what grows with the event rate times the horizon: 2.2M entries for a day
/// of 25 events/s). Two distinct keys share 96 bits with probability 2^-96 per pair: with 10M keys in the
/// horizon and 1M new events a second, one event wrongly dropped as a duplicate every ~10^8 years. Segments
/// on disk keep all 128 bits.
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

/// Event time in whole seconds since the epoch (until 2106); the horizon is kept to the second, rounding
/// in favour of keeping an entry (up to a second longer, never shorter).
fn secs(ts_ms: i64) -> u32 {
    ts_ms.div_euclid(1000).clamp(0, i64::from(u32::MAX)) as u32
}

type SeenMap = HashMap<Key, u32, std::hash::BuildHasherDefault<IdHasher>>;

/// An entry of the sorted part: a key and its event second (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    key: Key,
    secs: u32,
}

/// The recent part is merged into the sorted part once it holds this many entries, or an eighth of the
/// sorted part when that is more (each entry is then moved about eight times while it lives).
#[cfg(not(test))]
const RECENT_MIN: usize = 65_536;
/// Small in unit tests, so that they merge often.
#[cfg(test)]
const RECENT_MIN: usize = 16;

#[derive(Default, Clone)]
pub struct Deduplicator {
    /// Entries added since the last merge.
    recent: SeenMap,
    /// Older entries, sorted by key.
    sorted: Vec<Entry>,
    /// `index[b]..index[b + 1]` is the range of `sorted` whose keys' first word has `b` in its top `bits`
    /// bits (about four entries a bucket).
    index: Vec<u32>,
    bits: u32,
    /// Entries added since the last [`Deduplicator::take_segment`].
    fresh: Vec<(Id, i64)>,
}

/// Millions of hashes say nothing in a log: the set shows its sizes only.
impl std::fmt::Debug for Deduplicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deduplicator")
            .field("recent", &self.recent.len())
            .field("sorted", &self.sorted.len())
            .field("fresh", &self.fresh.len())
            .finish()
    }
}

impl Deduplicator {
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
        self.merge_if_due();
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
        self.merge_if_due();
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
        self.recent.contains_key(&key) || self.in_sorted(key)
    }

    /// Whether the sorted part holds `key`: a scan of its bucket.
    fn in_sorted(&self, key: Key) -> bool {
        if self.sorted.is_empty() {
            return false;
        }
        let b = bucket(key, self.bits);
        self.sorted[self.index[b] as usize..self.index[b + 1] as usize].iter().any(|e| e.key == key)
    }

    /// Adds event key `id` first seen at `ts_ms` (persisted with the next segment); false when it is
    /// already in the set (nothing changes).
    fn insert(&mut self, id: Id, ts_ms: i64) -> bool {
        let key = Key::of(id);
        if self.in_sorted(key) {
            return false;
        }
        match self.recent.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(secs(ts_ms));
                self.fresh.push((id, ts_ms));
                true
            }
        }
    }

    /// Merges the recent entries into the sorted ones once they are many enough.
    fn merge_if_due(&mut self) {
        if self.recent.len() >= RECENT_MIN.max(self.sorted.len() / 8) {
            self.merge_recent();
        }
    }

    /// Merges the recent entries into the sorted ones, in place from the back (the array grows by the
    /// recent entries only, no second copy of it is made), and rebuilds the index.
    fn merge_recent(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        let mut new: Vec<Entry> = self.recent.drain().map(|(key, secs)| Entry { key, secs }).collect();
        new.sort_unstable_by_key(|e| e.key);
        let (n, m) = (self.sorted.len(), new.len());
        self.sorted.reserve_exact(m);
        self.sorted.resize(n + m, Entry { key: Key([0; 3]), secs: 0 });
        // from the back: the largest remaining entry of either part goes last; once the recent ones are all
        // placed, the sorted ones left are already where they belong (keys are unique across both parts: a
        // key is only added when the set does not hold it)
        let (mut i, mut j) = (n, m);
        while j > 0 {
            if i > 0 && self.sorted[i - 1].key > new[j - 1].key {
                self.sorted[i + j - 1] = self.sorted[i - 1];
                i -= 1;
            } else {
                self.sorted[i + j - 1] = new[j - 1];
                j -= 1;
            }
        }
        self.reindex();
    }

    /// Rebuilds the bucket index of the sorted entries (about four entries a bucket).
    fn reindex(&mut self) {
        let n = self.sorted.len();
        self.bits = if n < 64 { 0 } else { (n / 4).ilog2().min(24) };
        let (bits, buckets) = (self.bits, 1usize << self.bits);
        self.index.clear();
        self.index.reserve_exact(buckets + 1);
        let mut at = 0usize;
        for b in 0..buckets {
            self.index.push(at as u32);
            while at < n && bucket(self.sorted[at].key, bits) == b {
                at += 1;
            }
        }
        self.index.push(n as u32);
    }

    /// Forgets events older than `cutoff_ms` (event time).
    pub fn evict_before(&mut self, cutoff_ms: i64) {
        let cutoff = secs(cutoff_ms);
        self.recent.retain(|_, ts| *ts >= cutoff);
        let before = self.sorted.len();
        self.sorted.retain(|e| e.secs >= cutoff);
        if self.sorted.len() != before {
            if self.sorted.capacity() > self.sorted.len() + self.sorted.len() / 4 + RECENT_MIN {
                self.sorted.shrink_to_fit();
            }
            self.reindex();
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
        let max = self.fresh.iter().map(|e| e.1).max().unwrap_or(i64::MIN);
        let bytes = encode(self.fresh.iter().copied(), self.fresh.len());
        self.fresh.clear();
        (bytes, max)
    }

    /// Merges entries another writer of a shared lake committed (a segment's bytes): they count as seen,
    /// but are not this writer's to persist.
    pub fn absorb(&mut self, bytes: &[u8]) -> Result<(), AggregateError> {
        for (key, secs) in entries(bytes)? {
            if !self.contains(key) {
                self.recent.insert(key, secs);
            }
        }
        self.merge_if_due();
        Ok(())
    }

    /// The set that segments (concatenated) hold. A key held twice was seen again after it left the
    /// horizon: it keeps its latest time.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AggregateError> {
        let mut sorted: Vec<Entry> = entries(bytes)?.map(|(key, secs)| Entry { key, secs }).collect();
        sorted.sort_unstable_by_key(|e| e.key);
        sorted.dedup_by(|later, kept| {
            let same = later.key == kept.key;
            if same {
                kept.secs = kept.secs.max(later.secs);
            }
            same
        });
        sorted.shrink_to_fit();
        let mut d = Deduplicator { sorted, ..Default::default() };
        d.reindex();
        Ok(d)
    }
}

/// The bucket of the sorted part's index that `key` falls in: the top `bits` bits of its first word.
fn bucket(key: Key, bits: u32) -> usize {
    if bits == 0 { 0 } else { (key.0[0] >> (32 - bits)) as usize }
}

/// The (key, event second) entries of segments' bytes.
fn entries(bytes: &[u8]) -> Result<impl Iterator<Item = (Key, u32)> + '_, AggregateError> {
    if !bytes.len().is_multiple_of(24) {
        return Err(AggregateError::State(format!("dedup state has {} bytes, not a multiple of 24", bytes.len())));
    }
    Ok(bytes
        .chunks_exact(24)
        .map(|c| (Key::of(Id::from_bytes(&c[..16])), secs(i64::from_le_bytes(c[16..].try_into().expect("8"))))))
}

fn encode(entries: impl Iterator<Item = (Id, i64)>, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 24);
    for (k, ts) in entries {
        out.extend_from_slice(&k.0.to_le_bytes());
        out.extend_from_slice(&k.1.to_le_bytes());
        out.extend_from_slice(&ts.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Ev, batch};

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

    #[test]
    fn the_set_survives_a_restart_and_forgets_beyond_the_horizon() {
        let mut d = Deduplicator::default();
        d.filter(&batch(&[ev(1, 1_000), ev(2, 5_000)])).unwrap();
        let mut restored = Deduplicator::from_bytes(&d.take_segment().0).unwrap();
        assert_eq!(restored.filter(&batch(&[ev(1, 1_000)])).unwrap().1, 1, "redelivery after restart");
        restored.evict_before(2_000);
        assert_eq!(restored.filter(&batch(&[ev(1, 1_000)])).unwrap().1, 0, "beyond the horizon it counts again");
        assert!(Deduplicator::from_bytes(&[0; 7]).is_err());
    }

    #[test]
    fn an_entry_is_16_bytes_and_the_horizon_rounds_towards_keeping() {
        assert_eq!(std::mem::size_of::<(Key, u32)>(), 16);
        assert_eq!(std::mem::size_of::<Entry>(), 16);
        let mut d = Deduplicator::default();
        d.filter(&batch(&[ev(1, 1_999), ev(2, 2_000), ev(3, 2_999)])).unwrap();
        // 2.5 s: the entry at 2.0 s and the one at 2.999 s stay (same second), the one at 1.999 s goes
        d.evict_before(2_500);
        assert_eq!(d.len(), 2);
        assert_eq!(d.filter(&batch(&[ev(1, 1_999), ev(2, 2_000), ev(3, 2_999)])).unwrap().1, 2);
        // keys that differ only in the 32 bits the set does not hold are one entry; on disk all 128 bits stay
        let (a, b) = (5u128, 5u128 | (7u128 << 96));
        let mut d = Deduplicator::default();
        assert_eq!(d.filter(&batch(&[ev(a, 10), ev(b, 10)])).unwrap().1, 1);
        let (seg, _) = d.take_segment();
        assert_eq!(seg.len(), 24);
        assert_eq!(u128::from_le_bytes(seg[..16].try_into().unwrap()) & !(u128::MAX >> 32), 0);
    }

    /// The set against a plain map of every id with its first time, through batches with redeliveries,
    /// evictions, restarts from the segments and entries another writer committed: the same events are
    /// dropped, at every step, while the recent part is merged into the sorted one again and again.
    #[test]
    fn the_set_drops_exactly_what_a_plain_map_of_first_sightings_drops() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut model: HashMap<u128, i64> = HashMap::new();
        let mut d = Deduplicator::default();
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
            let (kept, dups) = d.filter(&batch(&evs)).unwrap();
            assert_eq!((kept.num_rows(), dups as usize), (want, evs.len() - want), "step {step}");
            merges_seen += usize::from(d.recent.is_empty());
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
                    d = Deduplicator::from_bytes(&live).unwrap();
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
        let mut restored = Deduplicator::from_bytes(&[s1, s2].concat()).unwrap();
        assert_eq!(restored.filter(&batch(&[ev(1, 10), ev(3, 30), ev(4, 40)])).unwrap().1, 2);
    }
}
