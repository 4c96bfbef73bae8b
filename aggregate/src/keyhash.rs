//! Hash maps keyed by the strings of rollup rows (series keys, dimension values), for the detectors: they
//! hash every row of every closed window, where SipHash showed in the profiles.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// A map from a string key.
pub(crate) type KeyMap<V> = HashMap<String, V, FoldState>;

/// A map from any hashable key (tuples of borrowed strings included).
pub(crate) type FastMap<K, V> = HashMap<K, V, FoldState>;

const K: u64 = 0xf135_7aea_2e62_a9c5;

/// Builds [`FoldHasher`]s from a seed drawn once per map (so the layout is not the same in every process).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FoldState(u64);

impl Default for FoldState {
    fn default() -> Self {
        FoldState(std::collections::hash_map::RandomState::new().hash_one(K))
    }
}

impl BuildHasher for FoldState {
    type Hasher = FoldHasher;
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher(self.0)
    }
}

/// Folds 8 bytes at a time with a multiply (the FxHash scheme): a few cycles per short key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FoldHasher(u64);

impl FoldHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
    }
}

impl Hasher for FoldHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.add(u64::from(v));
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }
    #[inline]
    fn write_i64(&mut self, v: i64) {
        self.add(v as u64);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // the folds leave their entropy in the high bits and the table indexes by the low ones: a final mix
        // (murmur3's) spreads it over all of them
        let mut h = self.0;
        h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_map_hash_apart_and_equal_keys_alike() {
        let s = FoldState::default();
        let keys: Vec<String> = (0..20_000).map(|i| format!("identity/key-{i:06}")).collect();
        let mut low: std::collections::HashSet<u64> = std::collections::HashSet::new();
        for k in &keys {
            assert_eq!(s.hash_one(k.as_str()), s.hash_one(k.clone()));
            low.insert(s.hash_one(k.as_str()) & 0xffff);
        }
        // 20,000 keys over 65,536 buckets: about 17,000 distinct if the low bits are uniform
        assert!(low.len() > 15_000, "{}", low.len());
    }
}
