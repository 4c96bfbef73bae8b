//! Memory bounds: a million distinct identities (one call each) through `replay` with a key cap keeps the
//! process's peak RSS under a set limit, folds the long tail into `__other__` rows per owner, and keeps
//! every total exact. RSS is measured by the kernel (getrusage of the child), not estimated.

mod common;

use std::io::Write;
use std::process::Command;

use common::*;

const DAY: i64 = 1_764_460_800_000; // 2025-11-30T00:00:00Z
const EVENTS: usize = 1_000_000;
const KEY_CAP: usize = 20_000;
/// The limit this test holds `replay` to (measured: 263 MiB, debug build; before issue 6 ~385 MiB, and
/// 707 MiB with the default cap of 100k keys, 1.9 GiB with no cap).
const RSS_LIMIT_MIB: i64 = 512;

fn peak_child_rss_mib() -> i64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
    u.ru_maxrss / 1024 // kilobytes on Linux
}

#[test]
fn a_million_distinct_identities_stay_under_the_memory_limit_with_exact_totals() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("ids.ndjson");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    // gpt-4o-mini: $0.15 / $0.60 per 1M tokens; one call per identity over ~2 hours, two owners
    let (mut input_tokens, mut output_tokens) = (0u128, 0u128);
    for i in 0..EVENTS {
        let (inp, out) = (1_000 + i % 500, 100 + i % 50);
        input_tokens += inp as u128;
        output_tokens += out as u128;
        let key = if i % 10 == 0 { format!("key-growth-{i}") } else { format!("key-search-{i}") };
        writeln!(
            w,
            r#"{{"event_id":"m{i}","timestamp":{},"provider":"openai","model":"gpt-4o-mini","input_tokens":{inp},"output_tokens":{out},"api_key_id":"{key}"}}"#,
            DAY + i as i64 * 7
        )
        .unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let owners = dir.path().join("owners.toml");
    std::fs::write(
        &owners,
        "[[owner]]\nid = \"search\"\nrisk_owner = \"s\"\napi_key_id = [\"key-search-*\"]\n\
         [[owner]]\nid = \"growth\"\nrisk_owner = \"g\"\napi_key_id = [\"key-growth-*\"]\n",
    )
    .unwrap();
    let lake = dir.path().join("lake");
    let cap = KEY_CAP.to_string();
    let out = Command::new(bin())
        .args(["replay", "--lake", lake.to_str().unwrap(), "--owners", owners.to_str().unwrap()])
        .arg(&input)
        .env("AIFINOPS__PIPELINE__MAX_KEYS_PER_WINDOW", &cap)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    ok(&out);
    let rss = peak_child_rss_mib();
    println!(
        "replay of {EVENTS} distinct identities, key cap {KEY_CAP}: peak RSS {rss} MiB (limit {RSS_LIMIT_MIB} MiB)"
    );
    assert!(rss < RSS_LIMIT_MIB, "peak RSS {rss} MiB over {RSS_LIMIT_MIB} MiB");

    // exact totals in every window size, per owner
    let micro = input_tokens * 150_000 + output_tokens * 600_000; // 10^-12 USD
    let cost = Expected::cost_str(micro);
    for window in ["1m", "1h", "1d"] {
        let r = query(
            &lake,
            &format!(
                "SELECT sum(requests) AS r, CAST(sum(input_tokens) AS BIGINT) AS i, CAST(sum(cost_usd) AS VARCHAR) AS c \
                 FROM rollups WHERE \"window\" = '{window}'"
            ),
        );
        assert_eq!(r[0]["r"].as_i64(), Some(EVENTS as i64), "{window}");
        assert_eq!(r[0]["i"].as_i64(), Some(input_tokens as i64), "{window}");
        assert_eq!(trim_decimal(r[0]["c"].as_str().unwrap()), trim_decimal(&cost), "{window}");
        let owners = query(
            &lake,
            &format!(
                "SELECT owner, sum(requests) AS r FROM rollups WHERE \"window\" = '{window}' GROUP BY owner ORDER BY owner"
            ),
        );
        assert_eq!(owners[0]["r"].as_i64(), Some(EVENTS as i64 / 10), "growth in {window}");
        assert_eq!(owners[1]["r"].as_i64(), Some(EVENTS as i64 * 9 / 10), "search in {window}");
    }
    // the long tail of each hour and of the day is folded, per owner, into one __other__ row
    let rows = query(
        &lake,
        "SELECT \"window\", window_start, count(*) AS n, sum(CASE WHEN identity = '__other__' THEN 1 ELSE 0 END) AS other \
         FROM rollups WHERE \"window\" IN ('1h', '1d') GROUP BY 1, 2",
    );
    assert!(!rows.is_empty());
    for r in &rows {
        assert!(r["n"].as_i64().unwrap() <= KEY_CAP as i64 + 2, "{r:?}");
        assert!(r["other"].as_i64().unwrap() >= 1, "{r:?}");
    }
}
