//! Helpers shared by the end-to-end tests: the binary, synthetic inputs with independently computed
//! expected totals, lake queries, and the test broker.
#![allow(dead_code)]

pub mod kafka;
pub mod tls;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The checkout the tests run in. Cargo sets `CARGO_MANIFEST_DIR` when it runs a test; `env!` would compile in
/// the path of whichever checkout built the test binary, which is another one (maybe deleted since) when
/// several clones share a target directory, as CI's clean clones and the working tree do.
pub fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_aifinops"))
}

pub fn aifinops(args: &[&str]) -> Output {
    aifinops_env(args, &[])
}

pub fn aifinops_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run aifinops")
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "aifinops failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs SQL over the lake with `aifinops query --format json` and returns the rows.
pub fn query(lake: &Path, sql: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let out = ok(&aifinops(&["query", "--lake", lake.to_str().unwrap(), "--format", "json", sql]));
    out.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("json row")).collect()
}

/// Test prices (USD per 1M tokens, scaled by 1e6 to integers of 1e-12 USD per token... kept as micro-USD
/// per 1M tokens): input, cache read, output. Same numbers as the built-in catalog.
pub const MINI: (u64, u64, u64) = (150_000, 75_000, 600_000); // gpt-4o-mini: 0.15 / 0.075 / 0.60 per 1M
pub const HAIKU: (u64, u64, u64) = (1_000_000, 100_000, 5_000_000); // claude-haiku-4-5: 1 / 0.10 / 5 per 1M
pub const HAIKU_CACHE_WRITE: u64 = 1_250_000;

/// Expected totals, computed here independently of aifinops' code.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expected {
    pub requests: i64,
    pub input: i64,
    pub cache_read: i64,
    pub cache_write: i64,
    pub output: i64,
    /// cost in 10^-12 USD (micro-USD per 1M tokens x tokens)
    pub cost_pico: u128,
    pub per_owner_requests: BTreeMap<String, i64>,
    pub per_owner_cost_pico: BTreeMap<String, u128>,
    pub unpriced: i64,
    pub bad: usize,
}

impl Expected {
    /// The cost as a decimal string with 12 fractional digits trimmed (to compare with the lake).
    pub fn cost_str(pico: u128) -> String {
        let int = pico / 1_000_000_000_000;
        let frac = pico % 1_000_000_000_000;
        if frac == 0 { format!("{int}") } else { format!("{int}.{}", format!("{frac:012}").trim_end_matches('0')) }
    }
}

pub const OWNERS: &str = r#"
[[owner]]
id = "search"
risk_owner = "search-lead@example.com"
approver = "vp-search@example.com"
api_key_id = ["key-search-*"]

[[owner]]
id = "support"
risk_owner = "support@example.com"
service_account = ["svc-support"]

[[owner]]
id = "agents"
risk_owner = "ml@example.com"
workflow = ["agent-*"]
"#;

/// xorshift for deterministic inputs
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

type Kind<'a> = (&'a str, &'a str, String, &'a str, Option<(u64, u64, u64)>);

/// `n` valid events over `hours` hours from `start_ms`, slightly out of order, for three owners plus an
/// unattributed key and an unpriced model; then `dups` exact redeliveries and a handful of bad records.
pub fn workload(n: usize, start_ms: i64, hours: i64, dups: usize, seed: u64) -> (Vec<String>, Expected) {
    let mut rng = Rng(seed | 1);
    let mut e = Expected::default();
    let mut lines = Vec::with_capacity(n + dups + 8);
    let span = hours * 3_600_000;
    // When the input spans 30 h or more, its last 20 events are 28+ hours late (batch API results).
    let late_from = if hours >= 30 { n.saturating_sub(20) } else { n };
    for i in 0..n {
        let ts = if i >= late_from {
            start_ms + 1_800_000 + i as i64
        } else {
            start_ms + (i as i64 * span / n as i64) + rng.range(0, 120_000) as i64 - 60_000
        };
        let kind = rng.next() % 10;
        let (model, provider, attrs, owner, prices): Kind<'_> = match kind {
            0..=3 => ("gpt-4o-mini", "openai", format!(r#""api_key_id":"key-search-{}""#, i % 3), "search", Some(MINI)),
            4..=6 => {
                ("claude-haiku-4-5", "anthropic", r#""service_account":"svc-support""#.into(), "support", Some(HAIKU))
            }
            7 | 8 => (
                "gpt-4o-mini",
                "openai",
                r#""workflow":"agent-nightly","service_account":"svc-agent""#.into(),
                "agents",
                Some(MINI),
            ),
            _ if i % 2 == 0 => {
                ("gpt-4o-mini", "openai", r#""api_key_id":"key-stray-9""#.into(), "unattributed", Some(MINI))
            }
            _ => ("mystery-model-1", "openai", r#""api_key_id":"key-search-1""#.into(), "search", None),
        };
        let input = rng.range(100, 20_000) as i64;
        let cache_read = if rng.next().is_multiple_of(2) { input / 2 } else { 0 };
        let cache_write = if provider == "anthropic" && rng.next().is_multiple_of(4) { input / 10 } else { 0 };
        let output = rng.range(10, 2_000) as i64;
        let line = format!(
            r#"{{"event_id":"ev-{seed}-{i}","timestamp":{ts},"provider":"{provider}","model":"{model}","input_tokens":{input},"output_tokens":{output},"cache_read_tokens":{cache_read},"cache_write_tokens":{cache_write},{attrs}}}"#
        );
        lines.push(line);
        e.requests += 1;
        e.input += input;
        e.cache_read += cache_read;
        e.cache_write += cache_write;
        e.output += output;
        *e.per_owner_requests.entry(owner.into()).or_default() += 1;
        match prices {
            Some((pin, pcr, pout)) => {
                let pcw = if provider == "anthropic" { HAIKU_CACHE_WRITE } else { pin };
                let c = (input - cache_read - cache_write) as u128 * pin as u128
                    + cache_read as u128 * pcr as u128
                    + cache_write as u128 * pcw as u128
                    + output as u128 * pout as u128;
                e.cost_pico += c;
                *e.per_owner_cost_pico.entry(owner.into()).or_default() += c;
            }
            None => e.unpriced += 1,
        }
    }
    for d in 0..dups {
        let idx = (d * 7919) % n;
        let copy = lines[idx].clone();
        lines.push(copy);
    }
    let bad = [
        "{not json",
        r#"{"event_id":"b1","timestamp":1764496800000,"provider":"openai","model":"gpt-4o","input_tokens":-1,"output_tokens":1}"#,
        r#"{"event_id":"b2","timestamp":"2026-13-40T00:00:00Z","provider":"openai","model":"gpt-4o","input_tokens":1,"output_tokens":1}"#,
        r#"{"event_id":"b3","provider":"openai","model":"gpt-4o","input_tokens":1,"output_tokens":1}"#,
        r#"{"event_id":"b4","timestamp":1764496800000,"provider":"openai","model":"gpt-4o","input_tokens":5,"output_tokens":1,"cache_read_tokens":6}"#,
        "[]",
    ];
    for (i, b) in bad.iter().enumerate() {
        let at = (i * 1_001 + 17) % lines.len();
        lines.insert(at, b.to_string());
    }
    e.bad = bad.len();
    (lines, e)
}

/// Checks the lake's totals for every window size against the expected totals. Exact.
pub fn assert_lake_totals(lake: &Path, e: &Expected, windows: &[&str]) {
    for w in windows {
        let rows = query(
            lake,
            &format!(
                "SELECT sum(requests) AS r, sum(input_tokens) AS i, sum(cache_read_tokens) AS cr, sum(cache_write_tokens) AS cw, \
                 sum(output_tokens) AS o, CAST(sum(cost_usd) AS VARCHAR) AS c, sum(unpriced_requests) AS u FROM rollups WHERE \"window\" = '{w}'"
            ),
        );
        let r = &rows[0];
        let num = |k: &str| r[k].as_i64().unwrap_or_else(|| panic!("{k} in {r:?}"));
        assert_eq!(num("r"), e.requests, "requests in window={w}");
        assert_eq!(num("i"), e.input, "input tokens in window={w}");
        assert_eq!(num("cr"), e.cache_read, "cache read tokens in window={w}");
        assert_eq!(num("cw"), e.cache_write, "cache write tokens in window={w}");
        assert_eq!(num("o"), e.output, "output tokens in window={w}");
        assert_eq!(num("u"), e.unpriced, "unpriced in window={w}");
        let cost = r["c"].as_str().unwrap_or_default();
        assert_eq!(trim_decimal(cost), Expected::cost_str(e.cost_pico), "cost in window={w}");
    }
    let owners = query(
        lake,
        "SELECT owner, sum(requests) AS r, CAST(sum(cost_usd) AS VARCHAR) AS c FROM rollups WHERE \"window\" = '1h' GROUP BY owner ORDER BY owner",
    );
    let got: BTreeMap<String, i64> =
        owners.iter().map(|r| (r["owner"].as_str().unwrap().to_string(), r["r"].as_i64().unwrap())).collect();
    assert_eq!(got, e.per_owner_requests, "requests per owner");
    for r in &owners {
        let o = r["owner"].as_str().unwrap();
        assert_eq!(
            trim_decimal(r["c"].as_str().unwrap_or("0")),
            Expected::cost_str(e.per_owner_cost_pico[o]),
            "cost of owner {o}"
        );
    }
}

pub fn trim_decimal(s: &str) -> String {
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s.to_string() }
}

/// The test broker's address. In CI (`CI` set) a missing broker is a failure, elsewhere the test is skipped.
pub fn brokers() -> Option<String> {
    match std::env::var("AIFINOPS_TEST_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ => {
            if std::env::var("CI").is_ok() {
                panic!(
                    "AIFINOPS_TEST_BROKERS is not set: run the tests through scripts/test, which starts the test broker"
                );
            }
            eprintln!("skipping: AIFINOPS_TEST_BROKERS not set (scripts/test starts a broker)");
            None
        }
    }
}

pub fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{name}-{}-{}", std::process::id(), n % 1_000_000_000)
}

/// GET /metrics from a Prometheus endpoint on localhost (empty when nothing listens yet).
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// The value of an unlabelled metric in a scrape.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

/// Headless Chromium (Debian package `chromium`), or `None` when it is not installed. `./scripts/test`
/// installs it and sets `AIFINOPS_REQUIRE_CHROMIUM=1`, so there a missing browser fails the test.
pub fn chromium() -> Option<PathBuf> {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(c).output()
            && out.status.success()
        {
            return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string()));
        }
    }
    assert!(
        std::env::var_os("AIFINOPS_REQUIRE_CHROMIUM").is_none(),
        "chromium is required (apt-get install -y chromium)"
    );
    eprintln!("chromium not installed: the browser checks of this test are skipped");
    None
}

/// What a headless browser made of an HTML file: the DOM after its scripts ran, and statistics of a
/// screenshot (`{"width", "height", "non_white", "colors"}`, sampled pixels).
pub struct Rendered {
    pub dom: String,
    pub shot: serde_json::Value,
}

pub fn render_in_chromium(browser: &Path, html: &Path) -> Rendered {
    let profile = tempfile::tempdir().unwrap();
    let shot = profile.path().join("shot.png");
    let url = format!("file://{}", std::fs::canonicalize(html).unwrap().display());
    let run = |extra: &[&str]| {
        let mut c = Command::new(browser);
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1100,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().join("profile").display()))
        .args(extra)
        .arg(&url);
        let out = c.output().expect("run chromium");
        assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let dom = String::from_utf8_lossy(&run(&["--dump-dom"]).stdout).to_string();
    run(&[&format!("--screenshot={}", shot.display())]);
    let script = repo().join("tests/png_stats.py");
    let out = Command::new("python3").arg(script).arg(&shot).output().expect("python3");
    assert!(out.status.success(), "png_stats: {}", String::from_utf8_lossy(&out.stderr));
    let shot = serde_json::from_slice(&out.stdout).expect("png stats json");
    Rendered { dom, shot }
}

/// Checks a report's charts in a headless browser: every `svg.chart` was laid out with a size and shapes
/// (the report's script writes `data-rendered="WxH:shapes"`), and the screenshot is not blank.
pub fn assert_report_renders(html: &Path, charts: usize) {
    let Some(browser) = chromium() else { return };
    let r = render_in_chromium(&browser, html);
    assert!(r.dom.contains(&format!("data-charts=\"{charts}\"")), "{charts} charts rendered:\n{}", r.dom);
    let sizes: Vec<&str> = r.dom.split("data-rendered=\"").skip(1).map(|s| &s[..s.find('"').unwrap()]).collect();
    assert_eq!(sizes.len(), charts, "{sizes:?}");
    for s in &sizes {
        let (wh, shapes) = s.split_once(':').unwrap();
        let (w, h) = wh.split_once('x').unwrap();
        let (w, h, shapes): (u32, u32, u32) = (w.parse().unwrap(), h.parse().unwrap(), shapes.parse().unwrap());
        assert!(w > 300 && h > 40 && shapes > 0, "a chart rendered empty: {sizes:?}");
    }
    let non_white = r.shot["non_white"].as_u64().unwrap();
    let colors = r.shot["colors"].as_u64().unwrap();
    assert!(non_white > 5_000 && colors > 20, "the screenshot is (nearly) blank: {}", r.shot);
}

/// Reads a Parquet file's schema and rows with pyarrow (an independent reader), as JSON:
/// `{"schema": [[name, type], ...], "rows": [{...}]}` with decimals as strings.
pub fn read_parquet_py(path: &Path) -> serde_json::Value {
    let script = r#"
import json, sys, decimal, datetime
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
def conv(v):
    if isinstance(v, decimal.Decimal): return str(v)
    if isinstance(v, datetime.datetime): return v.isoformat()
    return v
rows = [{k: conv(v) for k, v in r.items()} for r in t.to_pylist()]
print(json.dumps({"schema": [[f.name, str(f.type)] for f in t.schema], "rows": rows}))
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(path).output().expect("python3");
    assert!(out.status.success(), "pyarrow: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}
