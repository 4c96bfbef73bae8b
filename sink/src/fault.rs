//! Fault injection for crash tests: `AIFINOPS_FAULT=point[:n]` aborts the process (like `kill -9`) the
//! n-th time (default 1st) execution reaches `point`. Points: `mid_parquet`, `before_manifest`,
//! `after_manifest`, `mid_rollforward`, `before_publish`, `after_publish`.
//!
//! `AIFINOPS_STALL=point:n:ms` instead freezes the thread for `ms` milliseconds the n-th time it reaches
//! `point`; `point:n:stop` stops the whole process (`SIGSTOP` to itself, librdkafka's heartbeats included)
//! until a `SIGCONT`: a stop-the-world pause after which the group has evicted the member and it comes
//! back as a zombie. Points:
//! `before_commit` (a commit that consumed Kafka offsets has written its data and state, its commit point
//! not yet taken).

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

static STALLS: AtomicU64 = AtomicU64::new(0);

/// Freezes the thread here if the environment asks for a stall at `point`.
pub fn stall(name: &str) {
    let Ok(spec) = std::env::var("AIFINOPS_STALL") else {
        return;
    };
    let mut parts = spec.split(':');
    let (Some(p), Some(n), Some(ms)) = (parts.next(), parts.next(), parts.next()) else { return };
    let Ok(n) = n.parse::<u64>() else { return };
    if p != name || STALLS.fetch_add(1, Ordering::SeqCst) + 1 != n {
        return;
    }
    if ms == "stop" {
        eprintln!("aifinops: fault injection: stopping the process at {name} until SIGCONT");
        // SAFETY: raise only sends a signal to this process.
        unsafe { libc::raise(libc::SIGSTOP) };
        eprintln!("aifinops: fault injection: continuing at {name}");
    } else if let Ok(ms) = ms.parse::<u64>() {
        eprintln!("aifinops: fault injection: stalling {ms} ms at {name}");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}
