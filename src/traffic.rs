//! Synthetic gateway traffic: a day of calls for a handful of owners, with the incidents aifinops exists to
//! catch (a runaway agent hour, a key that belongs to nobody, a model missing from the catalog, malformed
//! records and redelivered duplicates). Deterministic for a given seed.

use std::fmt::Write as _;

/// xorshift64*: small, deterministic, good enough for traffic shapes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [lo, hi].
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The owner map that matches the demo traffic.
pub const DEMO_OWNERS: &str = r#"# Owner map of the demo: first matching rule wins; lists are alternatives.
[[owner]]
id = "search"
risk_owner = "search-lead@example.com"
api_key_id = ["key-search-*"]
team = ["search"]

[[owner]]
id = "support-bot"
risk_owner = "support-eng@example.com"
service_account = ["svc-support-*"]

[[owner]]
id = "research-agents"
risk_owner = "ml-platform@example.com"
service_account = ["svc-research"]
workflow = ["agent-*"]

[[owner]]
id = "growth"
risk_owner = "growth-lead@example.com"
api_key_id = ["key-growth-*"]
team = ["growth"]
"#;

/// The leaked key of the demo: it matches no owner and looks like a real secret.
pub const DEMO_LEAKED_KEY: &str = "sk-proj-Zx81LeakedQa7Rt5Wv3Yb2Nc4Md6Kf9Hg0";

/// One call; unset fields are zero / none (`attempt` 0 and 1 both mean a first try).
#[derive(Default)]
struct Call<'a> {
    ts: i64,
    provider: &'a str,
    model: &'a str,
    input: u64,
    cache_read: u64,
    cache_write: u64,
    output: u64,
    reasoning: u64,
    attrs: &'a str,
    tier: Option<&'a str>,
    status_error: bool,
    attempt: u64,
}

fn line(id: &str, c: &Call<'_>) -> String {
    let ts = chrono::DateTime::from_timestamp_millis(c.ts).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let mut s = format!(
        r#"{{"event_id":"{id}","timestamp":"{ts}","provider":"{}","model":"{}","input_tokens":{},"output_tokens":{}"#,
        c.provider, c.model, c.input, c.output
    );
    if c.cache_read > 0 {
        let _ = write!(s, r#","cache_read_tokens":{}"#, c.cache_read);
    }
    if c.cache_write > 0 {
        let _ = write!(s, r#","cache_write_tokens":{}"#, c.cache_write);
    }
    if c.reasoning > 0 {
        let _ = write!(s, r#","reasoning_tokens":{}"#, c.reasoning);
    }
    if let Some(t) = c.tier {
        let _ = write!(s, r#","service_tier":"{t}""#);
    }
    if c.status_error {
        s.push_str(r#","status":"error""#);
    }
    if c.attempt > 1 {
        let _ = write!(s, r#","attempt":{}"#, c.attempt);
    }
    s.push_str(c.attrs);
    s.push('}');
    s
}

/// Records of the demo day starting at `day_start_ms` (midnight UTC). Returns NDJSON lines in event-time
/// order (malformed records and duplicates mixed in).
pub fn demo_day(day_start_ms: i64, seed: u64) -> Vec<String> {
    day(day_start_ms, seed, true)
}

/// An ordinary day of the same owners: no incidents, no bad records, and quieter at weekends (60 %).
/// The demo backfills these as the history its detectors and forecasts learn from.
pub fn normal_day(day_start_ms: i64, seed: u64) -> Vec<String> {
    day(day_start_ms, seed, false)
}

fn day(day_start_ms: i64, seed: u64, incidents: bool) -> Vec<String> {
    use chrono::Datelike;
    let weekday = chrono::DateTime::from_timestamp_millis(day_start_ms).unwrap_or_default().weekday();
    let scale = if !incidents && weekday.number_from_monday() >= 6 { 6 } else { 10 };
    let mut rng = Rng::new(seed);
    let mut calls: Vec<(i64, String)> = Vec::new();
    let hour = 3_600_000i64;
    let mut n = 0u64;
    let mut push = |rng: &mut Rng, calls: &mut Vec<(i64, String)>, c: Call<'_>| {
        n += 1;
        let id = format!("req-{:08x}-{n}", rng.next() as u32);
        calls.push((c.ts, line(&id, &c)));
    };
    for h in 0..24i64 {
        let base = day_start_ms + h * hour;
        // a day curve: busier from 08:00 to 20:00
        let busy = if (8..20).contains(&h) { 3 } else { 1 };
        for _ in 0..(40 * busy * scale / 10) {
            let ts = base + rng.range(0, hour as u64 - 1) as i64;
            let mini = rng.chance(80);
            let input = rng.range(300, 3_000);
            let key = if rng.chance(50) { "key-search-1" } else { "key-search-2" };
            let attrs = format!(r#","api_key_id":"{key}","team":"search","project":"web-search","environment":"prod""#);
            let c = Call {
                ts,
                provider: "openai",
                model: if mini { "gpt-4o-mini" } else { "gpt-4o" },
                input,
                cache_read: input / 3,
                output: rng.range(50, 400),
                attrs: &attrs,
                status_error: rng.chance(2),
                ..Default::default()
            };
            push(&mut rng, &mut calls, c);
        }
        for _ in 0..(25 * busy * scale / 10) {
            let ts = base + rng.range(0, hour as u64 - 1) as i64;
            let input = rng.range(2_000, 8_000);
            let cr = input * 6 / 10;
            let attrs = r#","service_account":"svc-support-bot","workflow":"support-triage","environment":"prod""#;
            let c = Call {
                ts,
                provider: "anthropic",
                model: "claude-haiku-4-5",
                input,
                cache_read: cr,
                cache_write: rng.range(0, 200),
                output: rng.range(100, 600),
                attrs,
                ..Default::default()
            };
            push(&mut rng, &mut calls, c);
        }
        let runaway = incidents && h == 14;
        let agent_calls = if runaway { 900 } else { 20 * scale / 10 };
        for i in 0..agent_calls {
            let ts = base + rng.range(0, hour as u64 - 1) as i64;
            let input = rng.range(40_000, 80_000);
            let attrs = r#","service_account":"svc-research","workflow":"agent-deep-research","environment":"prod","trace_id":"tr-agent""#;
            let output = rng.range(2_000, 6_000);
            let c = Call {
                ts,
                provider: "anthropic",
                model: "claude-sonnet-4-5",
                input,
                cache_read: input * 2 / 3,
                cache_write: 1_000,
                output,
                reasoning: output / 2,
                attrs,
                status_error: runaway && i % 7 == 0,
                attempt: if runaway { 1 + (i % 3) as u64 } else { 1 },
                ..Default::default()
            };
            push(&mut rng, &mut calls, c);
        }
        for _ in 0..(10 * busy * scale / 10) {
            let ts = base + rng.range(0, hour as u64 - 1) as i64;
            let attrs =
                r#","api_key_id":"key-growth-1","team":"growth","project":"lifecycle-email","environment":"prod""#;
            let batch = rng.chance(50);
            let c = Call {
                ts,
                provider: "gemini",
                model: "gemini-2.5-flash",
                input: rng.range(1_000, 5_000),
                output: rng.range(200, 1_500),
                attrs,
                tier: batch.then_some("batch"),
                ..Default::default()
            };
            push(&mut rng, &mut calls, c);
        }
        if incidents && (9..18).contains(&h) {
            for _ in 0..4 {
                let ts = base + rng.range(0, hour as u64 - 1) as i64;
                let attrs = r#","api_key_id":"key-growth-1","team":"growth","project":"copy-experiments","environment":"staging""#;
                let c = Call {
                    ts,
                    provider: "openai",
                    model: "gpt-9-preview",
                    input: rng.range(1_000, 3_000),
                    output: rng.range(100, 900),
                    attrs,
                    ..Default::default()
                };
                push(&mut rng, &mut calls, c);
            }
        }
        if incidents && h >= 19 {
            for _ in 0..8 {
                let ts = base + rng.range(0, hour as u64 - 1) as i64;
                let attrs = format!(
                    r#","api_key_id":"{DEMO_LEAKED_KEY}","environment":"prod","tags":{{"user_agent":"python-requests/2.31"}}"#
                );
                let c = Call {
                    ts,
                    provider: "openai",
                    model: "gpt-4o",
                    input: rng.range(5_000, 20_000),
                    output: rng.range(1_000, 4_000),
                    attrs: &attrs,
                    ..Default::default()
                };
                push(&mut rng, &mut calls, c);
            }
        }
    }
    calls.sort_by_key(|c| c.0);
    let mut lines: Vec<String> = calls.into_iter().map(|c| c.1).collect();
    if !incidents {
        return lines;
    }
    // redelivered duplicates (a gateway's producer retried): same event_id, counted once
    for i in 0..10 {
        let idx = (i * 397 + 11) % lines.len();
        let dup = lines[idx].clone();
        lines.insert((idx + 3).min(lines.len()), dup);
    }
    // malformed records a real topic always has
    let bad = [
        r#"{"event_id":"bad-1","timestamp":"2026-11-29T10:00:00Z","provider":"openai","model":"gpt-4o","input_tokens":-5,"output_tokens":10}"#.to_string(),
        r#"{"event_id":"bad-2","timestamp":"not a time","provider":"openai","model":"gpt-4o","input_tokens":5,"output_tokens":10}"#.to_string(),
        r#"{"event_id":"bad-3","provider":"openai","input_tokens":5"#.to_string(),
        r#"{"event_id":"bad-4","timestamp":1764496800000,"provider":"anthropic","model":"claude-haiku-4-5","input_tokens":100,"output_tokens":10,"cache_read_tokens":500}"#.to_string(),
        "this is not json at all".to_string(),
        r#"{"event_id":"bad-6","timestamp":1764496800000,"provider":"openai","input_tokens":5,"output_tokens":10}"#.to_string(),
    ];
    for (i, b) in bad.into_iter().enumerate() {
        let idx = (i * 1013 + 500) % lines.len();
        lines.insert(idx, b);
    }
    lines
}

/// The benchmark workload (issue 6): `n` canonical events of ~400 bytes, one per 40 ms of event time from
/// `start_ms`, spread over `teams` owners (matched by their `team`) and `keys` API keys, on six models with
/// cache reads, cache writes and reasoning tokens. Written as NDJSON without holding it in memory.
pub fn bench_events(
    out: &mut impl std::io::Write,
    n: u64,
    teams: u64,
    keys: u64,
    start_ms: i64,
    seed: u64,
) -> std::io::Result<()> {
    const MODELS: [(&str, &str, bool); 6] = [
        ("openai", "gpt-4o", false),
        ("openai", "gpt-4o-mini", false),
        ("openai", "o4-mini", true),
        ("anthropic", "claude-sonnet-4-5", true),
        ("anthropic", "claude-haiku-4-5", false),
        ("gemini", "gemini-2.5-flash", true),
    ];
    let mut rng = Rng::new(seed);
    let mut line = String::with_capacity(512);
    for i in 0..n {
        let ts = start_ms + i as i64 * 40;
        let key = rng.next() % keys.max(1);
        // a key belongs to one team, so identities and owners agree
        let team = key % teams.max(1);
        let (provider, model, reasoning) = MODELS[(rng.next() % MODELS.len() as u64) as usize];
        let input = rng.range(200, 12_000);
        let cache_read = if rng.chance(60) { input / 2 } else { 0 };
        let cache_write = if provider == "anthropic" && rng.chance(20) { input / 8 } else { 0 };
        let output = rng.range(20, 2_000);
        let reasoning_tokens = if reasoning { output / 2 } else { 0 };
        line.clear();
        let stamp = chrono::DateTime::from_timestamp_millis(ts).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let _ = write!(
            line,
            r#"{{"event_id":"bench-{seed}-{i:010}","timestamp":"{stamp}","provider":"{provider}","model":"{model}","input_tokens":{input},"output_tokens":{output},"cache_read_tokens":{cache_read},"cache_write_tokens":{cache_write},"reasoning_tokens":{reasoning_tokens},"api_key_id":"key-{key:06}","team":"team-{team:05}","project":"project-{p}","workflow":"workflow-{w}","environment":"prod","trace_id":"trace-{t:012x}"}}"#,
            p = team % 97,
            w = rng.next() % 16,
            t = rng.next() & 0xffff_ffff_ffff,
        );
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    out.flush()
}

/// The owner map of the benchmark workload: one owner per team.
pub fn bench_owners(teams: u64) -> String {
    let mut s = String::from("# Owners of the benchmark workload: one per team.\n");
    for t in 0..teams.max(1) {
        let _ = write!(
            s,
            "\n[[owner]]\nid = \"team-{t:05}\"\nrisk_owner = \"lead-{t}@example.com\"\nteam = [\"team-{t:05}\"]\n"
        );
    }
    s
}
