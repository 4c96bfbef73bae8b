//! `aifinops report` (one self-contained HTML file whose charts render in a browser) and
//! `aifinops export focus` (FOCUS-shaped Parquet whose EffectiveCost adds up to the rollups' cost exactly).

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;

const OWNERS_TOML: &str = r#"
[[owner]]
id = "search"
api_key_id = ["key-search-*"]
team = ["search"]
[[owner]]
id = "support-bot"
service_account = ["svc-support-*"]
[[owner]]
id = "research-agents"
service_account = ["svc-research"]
workflow = ["agent-*"]
[[owner]]
id = "growth"
api_key_id = ["key-growth-*"]
team = ["growth"]
"#;

/// Decimal text (`12.5`, `-0.000001`) as integer units of 10^-18.
fn units(s: &str) -> i128 {
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    assert!(frac.len() <= 18, "{s}");
    let v = int.parse::<i128>().unwrap() * 10i128.pow(18) + format!("{frac:0<18}").parse::<i128>().unwrap();
    if neg { -v } else { v }
}

/// Three generated days (the last two of October and the first of November) replayed into a lake.
fn month_lake(dir: &Path) -> std::path::PathBuf {
    let lake = dir.join("lake");
    let owners = dir.join("owners.toml");
    std::fs::write(&owners, OWNERS_TOML).unwrap();
    let mut files = Vec::new();
    for (i, day) in ["2026-10-30", "2026-10-31", "2026-11-01"].iter().enumerate() {
        let f = dir.join(format!("{day}.ndjson"));
        ok(&aifinops(&["gen", "--day", day, "--seed", &(i + 3).to_string(), "--out", f.to_str().unwrap()]));
        files.push(f.to_str().unwrap().to_string());
    }
    let mut args = vec!["replay", "--lake", lake.to_str().unwrap(), "--owners", owners.to_str().unwrap()];
    args.extend(files.iter().map(|s| s.as_str()));
    ok(&aifinops(&args));
    lake
}

fn rollup_cost(lake: &Path, window: &str, month: &str) -> i128 {
    let r = query(
        lake,
        &format!(
            "SELECT CAST(sum(cost_usd) AS VARCHAR) AS c FROM rollups WHERE \"window\" = '{window}' AND date LIKE '{month}-%'"
        ),
    );
    units(r[0]["c"].as_str().expect("a cost"))
}

#[test]
fn focus_export_has_the_focus_columns_and_types_and_its_effective_cost_equals_the_rollups() {
    let dir = tempfile::tempdir().unwrap();
    let lake = month_lake(dir.path());
    let out = dir.path().join("focus");
    let printed = ok(&aifinops(&[
        "export",
        "focus",
        "--lake",
        lake.to_str().unwrap(),
        "--month",
        "2026-10",
        "--out",
        out.to_str().unwrap(),
    ]));
    let file = out.join("focus-2026-10.parquet");
    assert!(printed.contains("focus-2026-10.parquet"), "{printed}");
    let t = read_parquet_py(&file);
    let schema: Vec<(String, String)> = t["schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c[0].as_str().unwrap().to_string(), c[1].as_str().unwrap().to_string()))
        .collect();
    let ty = |name: &str| {
        schema
            .iter()
            .find(|c| c.0 == name)
            .map(|c| c.1.clone())
            .unwrap_or_else(|| panic!("no column {name}: {schema:?}"))
    };
    for c in ["BilledCost", "EffectiveCost", "ListCost", "ContractedCost"] {
        assert_eq!(ty(c), "decimal128(38, 18)", "{c} is money: Decimal");
    }
    for c in ["ChargePeriodStart", "ChargePeriodEnd", "BillingPeriodStart", "BillingPeriodEnd"] {
        assert_eq!(ty(c), "timestamp[ms, tz=UTC]", "{c}");
    }
    assert_eq!(ty("ConsumedQuantity"), "decimal128(38, 6)");
    assert_eq!(ty("PricingQuantity"), "decimal128(38, 6)");
    for c in [
        "ChargeCategory",
        "ChargeFrequency",
        "BillingCurrency",
        "ConsumedUnit",
        "PricingUnit",
        "ServiceCategory",
        "ServiceSubcategory",
        "ServiceName",
        "ServiceProviderName",
        "SkuId",
        "SkuPriceId",
        "SkuMeter",
        "SkuPriceDetails",
        "Tags",
    ] {
        assert_eq!(ty(c), "string", "{c}");
    }
    let custom: Vec<&String> =
        schema.iter().map(|c| &c.0).filter(|n| n.chars().next().is_some_and(|ch| ch.is_lowercase())).collect();
    assert!(custom.iter().all(|n| n.starts_with("x_")), "custom columns are prefixed x_: {custom:?}");

    let rows = t["rows"].as_array().unwrap();
    assert!(rows.len() > 20, "{} rows", rows.len());
    // the month's cost, exactly (the 1h and 1d rollups agree; November is not in October's export)
    let sum: i128 = rows.iter().filter_map(|r| r["EffectiveCost"].as_str()).map(units).sum();
    assert_eq!(sum, rollup_cost(&lake, "1h", "2026-10"));
    assert_eq!(sum, rollup_cost(&lake, "1d", "2026-10"));
    assert!(rollup_cost(&lake, "1h", "2026-11") > 0, "the lake also has November");
    let billed: i128 = rows.iter().filter_map(|r| r["BilledCost"].as_str()).map(units).sum();
    assert_eq!(billed, sum);

    // one row per charge period x owner x model x token class; days of October only
    let mut keys = BTreeSet::new();
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or_else(|| panic!("{k} in {r}")).to_string();
        assert!(
            keys.insert((s("ChargePeriodStart"), s("x_Owner"), s("x_Provider"), s("x_Model"), s("SkuMeter"))),
            "duplicate row {r}"
        );
        assert!(s("ChargePeriodStart").starts_with("2026-10-3"), "{r}");
        assert_eq!(s("ChargeCategory"), "Usage");
        assert_eq!(s("ServiceCategory"), "AI and Machine Learning");
        let details: serde_json::Value = serde_json::from_str(&s("SkuPriceDetails")).unwrap();
        assert_eq!(details["ModelId"].as_str(), Some(s("x_Model").as_str()), "{details}");
        let tags: serde_json::Value = serde_json::from_str(&s("Tags")).unwrap();
        assert_eq!(tags["owner"].as_str(), Some(s("x_Owner").as_str()));
        assert!(tags.get("team").is_some() && tags.get("workflow").is_some(), "{tags}");
        if s("ConsumedUnit") == "Tokens" {
            assert_eq!(s("PricingUnit"), "1000000 Tokens");
            let (dir, cache) = match s("SkuMeter").as_str() {
                "Input Tokens" => ("Input", "Uncached"),
                "Cache Read Input Tokens" => ("Input", "Read"),
                "Cache Write Input Tokens" => ("Input", "Write"),
                "Output Tokens" | "Reasoning Output Tokens" => ("Output", "Uncached"),
                other => panic!("unexpected meter {other}"),
            };
            assert_eq!(details["TokenDirection"], dir, "{details}");
            assert_eq!(details["TokenCacheAction"], cache, "{details}");
            // PricingQuantity is ConsumedQuantity in millions of tokens
            assert_eq!(units(&s("PricingQuantity")) * 1_000_000, units(&s("ConsumedQuantity")));
        }
        // unpriced calls have no cost: null, never $0
        if r["x_Unpriced"].as_bool() == Some(true) && r["EffectiveCost"].is_null() {
            assert!(r["BilledCost"].is_null());
        }
    }
    assert!(rows.iter().any(|r| r["EffectiveCost"].is_null() && r["x_Unpriced"] == true), "the unpriced model's rows");
    // token quantities equal the rollups' token classes
    let q = |meter: &str| -> i128 {
        rows.iter()
            .filter(|r| r["SkuMeter"] == meter)
            .map(|r| units(r["ConsumedQuantity"].as_str().unwrap()))
            .sum::<i128>()
            / 10i128.pow(18)
    };
    let tok = query(
        &lake,
        "SELECT sum(input_tokens) AS i, sum(cache_read_tokens) AS cr, sum(cache_write_tokens) AS cw, \
         sum(output_tokens) AS o, sum(reasoning_tokens) AS r FROM rollups WHERE \"window\" = '1h' AND date LIKE '2026-10-%'",
    );
    let n = |k: &str| tok[0][k].as_i64().unwrap() as i128;
    assert_eq!(q("Cache Read Input Tokens"), n("cr"));
    assert_eq!(q("Cache Write Input Tokens"), n("cw"));
    assert_eq!(q("Input Tokens"), n("i") - n("cr") - n("cw"));
    assert_eq!(q("Output Tokens") + q("Reasoning Output Tokens"), n("o"));

    // hourly charge periods split the same cost
    let hourly = dir.path().join("hourly");
    ok(&aifinops(&[
        "export",
        "focus",
        "--lake",
        lake.to_str().unwrap(),
        "--month",
        "2026-10",
        "--period",
        "hour",
        "--out",
        hourly.to_str().unwrap(),
    ]));
    let h = read_parquet_py(&hourly.join("focus-2026-10.parquet"));
    let hrows = h["rows"].as_array().unwrap();
    assert!(hrows.len() > rows.len());
    assert_eq!(hrows.iter().filter_map(|r| r["EffectiveCost"].as_str()).map(units).sum::<i128>(), sum);
    // a month without usage is an error that says so
    let e = aifinops(&[
        "export",
        "focus",
        "--lake",
        lake.to_str().unwrap(),
        "--month",
        "2026-01",
        "--out",
        hourly.to_str().unwrap(),
    ]);
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("no usage in 2026-01"),
        "{}",
        String::from_utf8_lossy(&e.stderr)
    );
}

#[test]
fn report_is_one_offline_html_file_whose_charts_render_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let lake = month_lake(dir.path());
    let html = dir.path().join("out/report.html");
    ok(&aifinops(&["report", "--lake", lake.to_str().unwrap(), "--month", "2026-10", "--out", html.to_str().unwrap()]));
    let text = std::fs::read_to_string(&html).unwrap();
    // self-contained: nothing to fetch
    for needle in ["http://", "https://", " src=", "<link", "@import", "url("] {
        assert!(!text.contains(needle), "the report references {needle:?}: it must open offline");
    }
    assert_eq!(text.matches("<svg ").count(), 7, "seven charts");
    for id in [
        "spend-per-owner",
        "spend-per-owner-daily",
        "forecast",
        "top-models",
        "top-identities",
        "token-mix",
        "retry-cost",
    ] {
        assert!(text.contains(&format!("<svg id=\"{id}\"")), "chart {id}");
    }
    for owner in ["search", "support-bot", "research-agents", "growth", "unattributed"] {
        assert!(text.contains(owner), "owner {owner} in the report");
    }
    assert!(text.contains("gpt-9-preview"), "the unpriced model is listed");
    // October is complete in this lake (November has begun): its actuals, nothing left to forecast
    assert!(text.contains("class=\"actual-line\"") && !text.contains("class=\"forecast-line\""));
    assert!(text.contains("the month is complete"));
    // the October report shows October only; the November one its own day
    assert!(text.contains("AI spend report, 2026-10"));
    let nov = dir.path().join("nov.html");
    ok(&aifinops(&["report", "--lake", lake.to_str().unwrap(), "--out", nov.to_str().unwrap()]));
    let nov_html = std::fs::read_to_string(&nov).unwrap();
    assert!(nov_html.contains("AI spend report, 2026-11"), "default: the latest month");
    // November has one complete day: month to date, and the forecast of the rest with its interval
    assert!(
        nov_html.contains("class=\"forecast-band\"") && nov_html.contains("class=\"forecast-line\""),
        "forecast drawn"
    );
    assert!(nov_html.contains("Month to date (through 2026-11-01)"), "as of the last complete day");
    // a month without usage is an error that says so, not an empty report
    let e =
        aifinops(&["report", "--lake", lake.to_str().unwrap(), "--month", "2026-01", "--out", nov.to_str().unwrap()]);
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("no usage in 2026-01"),
        "{}",
        String::from_utf8_lossy(&e.stderr)
    );
    assert_report_renders(&html, 7);
}
