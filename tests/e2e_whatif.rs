//! `aifinops whatif` end to end: a lake replayed from two generated days, re-priced under other models, the
//! batch tier and a self-hosted option; every figure is checked against arithmetic done here from the lake's
//! token sums and the built-in catalog's list prices.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

const OWNERS_TOML: &str = r#"
[[owner]]
id = "search"
api_key_id = ["key-search-*"]

[[owner]]
id = "support-bot"
service_account = ["svc-support-*"]

[[owner]]
id = "research-agents"
service_account = ["svc-research"]

[[owner]]
id = "growth"
api_key_id = ["key-growth-*"]
"#;

const ONE: i128 = 1_000_000_000_000_000_000;

/// A decimal USD string as 10^-18 units.
fn units(s: &str) -> i128 {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (i, f) = s.split_once('.').unwrap_or((s, ""));
    assert!(f.len() <= 18, "{s}");
    let v = i.parse::<i128>().unwrap() * ONE + format!("{f:0<18}").parse::<i128>().unwrap();
    if neg { -v } else { v }
}

fn whatif(lake: &Path, args: &[&str]) -> Value {
    let mut all = vec!["whatif", "--lake", lake.to_str().unwrap(), "--month", "2026-05", "--format", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(&aifinops(&all))).expect("whatif JSON")
}

/// Token sums and recorded cost of one model over the month, from the daily windows.
struct Sums {
    input: i128,
    cache_read: i128,
    cache_write: i128,
    output: i128,
    reasoning: i128,
    cost: i128,
}

fn sums(lake: &Path, model: &str, extra: &str) -> Sums {
    let rows = query(
        lake,
        &format!(
            "SELECT sum(input_tokens) AS i, sum(cache_read_tokens) AS cr, sum(cache_write_tokens) AS cw, \
             sum(output_tokens) AS o, sum(reasoning_tokens) AS r, CAST(sum(cost_usd) AS VARCHAR) AS c \
             FROM rollups WHERE \"window\" = '1d' AND model = '{model}' {extra}"
        ),
    );
    let r = &rows[0];
    let n = |k: &str| r[k].as_i64().unwrap_or_else(|| panic!("{k} in {r:?}")) as i128;
    Sums {
        input: n("i"),
        cache_read: n("cr"),
        cache_write: n("cw"),
        output: n("o"),
        reasoning: n("r"),
        cost: units(r["c"].as_str().unwrap()),
    }
}

/// The model line of a scenario (lake provider/model/tier).
fn model_line<'a>(scenario: &'a Value, provider: &str, model: &str, tier: &str) -> &'a Value {
    scenario["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["provider"] == provider && m["model"] == model && m["tier"] == tier)
        .unwrap_or_else(|| panic!("no line for {provider}/{model}@{tier} in {scenario:#}"))
}

fn usd_of(v: &Value, key: &str) -> i128 {
    units(v[key].as_str().unwrap_or_else(|| panic!("{key} in {v}")))
}

#[test]
fn whatif_reprices_the_lake_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let owners = dir.path().join("owners.toml");
    std::fs::write(&owners, OWNERS_TOML).unwrap();
    for (day, seed) in [("2026-05-10", "7"), ("2026-05-11", "8")] {
        let f = dir.path().join(format!("{day}.ndjson"));
        ok(&aifinops(&["gen", "--day", day, "--seed", seed, "--out", f.to_str().unwrap()]));
        ok(&aifinops(&[
            "replay",
            "--lake",
            lake.to_str().unwrap(),
            "--owners",
            owners.to_str().unwrap(),
            f.to_str().unwrap(),
        ]));
    }
    let lake_total = units(
        query(&lake, "SELECT CAST(sum(cost_usd) AS VARCHAR) AS c FROM rollups WHERE \"window\" = '1d'")[0]["c"]
            .as_str()
            .unwrap(),
    );

    // (a) a model mapped to itself: zero delta, exactly; and the lake's usage re-priced from its token sums
    // equals the recorded cost (no token class counted twice)
    let r = whatif(&lake, &["--model", "gpt-4o=gpt-4o"]);
    let s = &r["scenarios"][0];
    assert_eq!(s["total"]["delta_usd"], "0", "{s:#}");
    assert_eq!(usd_of(&s["total"], "baseline_usd"), lake_total);
    assert_eq!(r["check"]["recorded_usd"], r["check"]["repriced_from_sums_usd"], "{:#}", r["check"]);
    assert_eq!(usd_of(&r["check"], "recorded_usd"), lake_total);
    assert_eq!(r["days_by_window"], serde_json::json!({"1d": 2}));
    for o in s["owners"].as_array().unwrap() {
        assert_eq!(o["delta_usd"], "0", "{o}");
    }
    // the model nobody can price is counted, in neither column
    let unpriced = model_line(s, "openai", "gpt-9-preview", "default");
    assert!(unpriced["not_compared_requests"].as_i64().unwrap() > 0 && unpriced["baseline_usd"] == "0", "{unpriced}");
    assert_eq!(s["total"]["not_compared_requests"], unpriced["not_compared_requests"]);

    // (b) gpt-4o-mini -> gpt-4.1-mini: the token sums at gpt-4.1-mini's list rates (0.40 / 0.10 / 1.60 per 1M)
    let mini = sums(&lake, "gpt-4o-mini", "");
    assert_eq!((mini.cache_write, mini.reasoning), (0, 0), "the generator sends neither for gpt-4o-mini");
    let per_m = |n: i128, usd_per_m: &str| n * units(usd_per_m) / 1_000_000;
    let want =
        per_m(mini.input - mini.cache_read, "0.40") + per_m(mini.cache_read, "0.10") + per_m(mini.output, "1.60");
    let r = whatif(&lake, &["--model", "gpt-4o-mini=gpt-4.1-mini"]);
    let s = &r["scenarios"][0];
    let line = model_line(s, "openai", "gpt-4o-mini", "default");
    assert_eq!(line["runs_as"], "openai/gpt-4.1-mini @default");
    assert_eq!(usd_of(line, "baseline_usd"), mini.cost);
    assert_eq!(usd_of(line, "scenario_usd"), want);
    assert_eq!(usd_of(&s["total"], "scenario_usd"), lake_total - mini.cost + want);
    assert_eq!(usd_of(&s["total"], "delta_usd"), want - mini.cost);
    // gpt-4o-mini's own sums at its own rates (0.15 / 0.075 / 0.60) are what the lake recorded
    let own =
        per_m(mini.input - mini.cache_read, "0.15") + per_m(mini.cache_read, "0.075") + per_m(mini.output, "0.60");
    assert_eq!(own, mini.cost);

    // (c) --tier batch: gpt-4o has batch rates of exactly half; calls already on batch do not change
    let r = whatif(&lake, &["--tier", "batch"]);
    let s = &r["scenarios"][0];
    let gpt4o = model_line(s, "openai", "gpt-4o", "default");
    assert_eq!(usd_of(gpt4o, "scenario_usd") * 2, usd_of(gpt4o, "baseline_usd"), "{gpt4o}");
    assert_eq!(gpt4o["delta_percent"], "-50.0");
    assert_eq!(usd_of(gpt4o, "baseline_usd"), sums(&lake, "gpt-4o", "AND provider = 'openai'").cost);
    let flash_batch = model_line(s, "gemini", "gemini-2.5-flash", "batch");
    assert_eq!(flash_batch["delta_usd"], "0", "{flash_batch}");

    // (d) claude-sonnet-4-5 on a self-hosted GPU: (input + output) / 2500 tokens/s / 3600 h x 2.50 USD/h
    let sonnet = sums(&lake, "claude-sonnet-4-5", "");
    let tokens = sonnet.input + sonnet.output;
    let r = whatif(&lake, &["--self-hosted", "llama:2.50:2500", "--model", "claude-sonnet-4-5=llama"]);
    assert_eq!(r["scenarios"].as_array().unwrap().len(), 1, "a mapped option is part of the one scenario");
    let s = &r["scenarios"][0];
    let g = &s["self_hosted"][0];
    assert_eq!(g["name"], "llama");
    assert_eq!(g["tokens"], tokens.to_string());
    // hours = tokens / 9,000,000 and cost = tokens x 2.5 / 9,000,000, both rounded half up to 1e-18
    let div_round = |num: i128, den: i128| (2 * num + den) / (2 * den);
    assert_eq!(usd_of(g, "gpu_hours"), div_round(tokens * ONE, 9_000_000));
    assert_eq!(usd_of(g, "usd"), div_round(tokens * units("2.5"), 9_000_000));
    let line = model_line(s, "anthropic", "claude-sonnet-4-5", "default");
    assert_eq!(line["runs_as"], "self-hosted llama");
    assert_eq!(usd_of(line, "scenario_usd"), usd_of(g, "usd"));
    assert_eq!(usd_of(&s["total"], "scenario_usd"), lake_total - sonnet.cost + usd_of(g, "usd"));
    // an option no mapping names takes all usage, in a scenario of its own
    let r = whatif(&lake, &["--self-hosted", "qwen:1:1000"]);
    let all = query(
        &lake,
        "SELECT sum(input_tokens + output_tokens) AS t FROM rollups WHERE \"window\" = '1d' AND unpriced_requests = 0",
    );
    assert_eq!(r["scenarios"][0]["all_usage_to"], "qwen");
    assert_eq!(r["scenarios"][0]["self_hosted"][0]["tokens"], all[0]["t"].as_i64().unwrap().to_string());

    // the table: per owner, a total row, the per-model breakdown and the approximation in the footer
    let text = ok(&aifinops(&[
        "whatif",
        "--lake",
        lake.to_str().unwrap(),
        "--month",
        "2026-05",
        "--model",
        "gpt-4o=gpt-4o-mini",
        "--tier",
        "batch",
    ]));
    for want in ["research-agents", "TOTAL", "By model", "long-context", "delta %", "unpriced in the lake"] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }

    // (e) an unknown TO model is an error naming it and close catalog names
    let out =
        aifinops(&["whatif", "--lake", lake.to_str().unwrap(), "--month", "2026-05", "--model", "gpt-4o=gpt-4o-minii"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gpt-4o-minii") && err.contains("openai/gpt-4o-mini"), "{err}");
    // and so is a FROM without usage, or a month without data
    let out = aifinops(&["whatif", "--lake", lake.to_str().unwrap(), "--month", "2026-05", "--model", "gpt-5=gpt-4o"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no usage of \"gpt-5\"") && err.contains("openai/gpt-4o-mini"),
        "{err}"
    );
    let out = aifinops(&["whatif", "--lake", lake.to_str().unwrap(), "--month", "2026-04", "--tier", "batch"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no rollups for 2026-04"));

    // a day whose daily window is not written yet is read from its hourly windows: same figures
    let before = whatif(&lake, &["--tier", "batch"]);
    std::fs::remove_dir_all(lake.join("rollups/window=1d/date=2026-05-11")).unwrap();
    let after = whatif(&lake, &["--tier", "batch"]);
    assert_eq!(after["days_by_window"], serde_json::json!({"1d": 1, "1h": 1}));
    assert_eq!(after["scenarios"][0]["total"], before["scenarios"][0]["total"]);
    assert_eq!(after["scenarios"][0]["owners"], before["scenarios"][0]["owners"]);
}
