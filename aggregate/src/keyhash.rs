//! Hash maps keyed by the strings of rollup rows (series keys, dimension values), for the detectors: they
//! hash every row of every closed window, where SipHash showed in the profiles. `foldhash` (the hasher
//! DataFusion and hashbrown use) is seeded per map from a per-process random seed.

use std::collections::HashMap;

/// A map from a string key.
pub(crate) type KeyMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// A map from any hashable key (tuples of borrowed strings included).
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
