//! Deduplication of redelivered events by `event_id` within a horizon of event time.
//!
//! The set holds 96 bits of a 128-bit hash of each accepted `event_id` with its event time in seconds
//! (16 bytes an entry); segments on disk hold the whole hash and the time in milliseconds. Entries older
//! than `watermark - horizon` are evicted at each commit; a duplicate arriving later than that is counted
//! again (documented in DESIGN.md). Each commit persists only the entries added since the previous one
//! (an append-only segment), so commit cost is O(new events), not O(events in the horizon); a restart
//! loads the live segments back.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

#[derive(Debug, Default, Clone)]
pub struct Deduplicator {
    seen: SeenMap,
    /// Entries added since the last [`Deduplicator::take_segment`].
    fresh: Vec<(Id, i64)>,
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
                let fresh = match self.seen.entry(Key::of(k)) {
                    std::collections::hash_map::Entry::Occupied(_) => false,
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(secs(ts.value(i)));
                        true
                    }
                };
                if fresh {
                    self.fresh.push((k, ts.value(i)));
                } else {
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
            let k = Id::from_bytes(keys.value(i));
            match self.seen.entry(Key::of(k)) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    if retries.value(i) == 0 {
                        marked.push(i);
                    }
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(secs(ts.value(i)));
                    self.fresh.push((k, ts.value(i)));
                }
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

    /// Forgets events older than `cutoff_ms` (event time).
    pub fn evict_before(&mut self, cutoff_ms: i64) {
        let cutoff = secs(cutoff_ms);
        self.seen.retain(|_, ts| *ts >= cutoff);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
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
        let other = Deduplicator::from_bytes(bytes)?;
        for (k, ts) in other.seen {
            self.seen.entry(k).or_insert(ts);
        }
        Ok(())
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AggregateError> {
        if !bytes.len().is_multiple_of(24) {
            return Err(AggregateError::State(format!("dedup state has {} bytes, not a multiple of 24", bytes.len())));
        }
        let seen = bytes
            .chunks_exact(24)
            .map(|c| (Key::of(Id::from_bytes(&c[..16])), secs(i64::from_le_bytes(c[16..].try_into().expect("8")))))
            .collect();
        Ok(Deduplicator { seen, fresh: Vec::new() })
    }
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
