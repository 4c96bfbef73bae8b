//! Fault injection for crash tests: `AIFINOPS_FAULT=point[:n]` aborts the process (like `kill -9`) the
//! n-th time (default 1st) execution reaches `point`. Points: `mid_parquet`, `before_manifest`,
//! `after_manifest`, `mid_rollforward`, `before_publish`, `after_publish`.

use std::sync::atomic::{AtomicU64, Ordering};

static HITS: AtomicU64 = AtomicU64::new(0);

/// Aborts here if the environment asks for a crash at `point`.
pub fn point(name: &str) {
    let Ok(spec) = std::env::var("AIFINOPS_FAULT") else {
        return;
    };
    let (p, n) = match spec.split_once(':') {
        Some((p, n)) => (p.to_string(), n.parse::<u64>().unwrap_or(1)),
        None => (spec.clone(), 1),
    };
    if p != name {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 >= n {
        eprintln!("aifinops: fault injection: aborting at {name}");
        std::process::abort();
    }
}
