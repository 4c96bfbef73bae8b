//! `aifinops demo` works with no setup and shows what it promises.

mod common;

use common::*;

#[test]
fn demo_runs_the_pipeline_through_an_embedded_broker_and_shows_spend_alerts_and_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    // as a newcomer would: the demo, then curl its /metrics, /healthz, /readyz (held until Ctrl-C / SIGTERM)
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = dir.path().join("demo.log");
    let mut child = std::process::Command::new(bin())
        .args(["demo", "--dir", demo.to_str().unwrap(), "--metrics-listen", &format!("127.0.0.1:{port}"), "--hold"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut out = String::new();
    {
        use std::io::BufRead;
        for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            out.push_str(&line);
            out.push('\n');
            if line.starts_with("serving http://") {
                break;
            }
        }
    }
    assert!(
        out.contains(&format!("serving http://127.0.0.1:{port}/metrics")),
        "{out}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let metrics = scrape(port);
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("aifinops_input_records_total{topic=\"llm-usage\",format=\"auto\"}"), "{metrics}");
    assert!(metrics.contains("aifinops_alerts_published_total{type=\"aifinops.spend.spike\"} 1"), "{metrics}");
    assert!(metrics.contains("aifinops_consumer_lag_messages{topic=\"llm-usage\",partition=\"0\"}"), "{metrics}");
    assert!(out.contains("Metrics of the live run") && out.contains("aifinops_dead_letters_total"), "{out}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success(), "the held demo exits 0 on SIGTERM");
    // the spend table names every owner, including the one that belongs to nobody
    for owner in ["search", "support-bot", "research-agents", "growth", "unattributed"] {
        assert!(out.contains(owner), "spend table lacks {owner}:\n{out}");
    }
    // the three alert kinds, read back from the alert topic
    for kind in ["aifinops.budget.threshold", "aifinops.spend.unattributed", "aifinops.model.unpriced"] {
        assert!(out.contains(&format!("[{kind}]")), "no {kind} alert read back:\n{out}");
    }
    assert!(out.contains("research-agents-daily crossed 100%"), "runaway agent budget alert:\n{out}");
    // learned from the backfilled history: the runaway hour is a spike (and recovers), the month budget is
    // projected to be breached, and the month-end forecast uses the seasonal model
    for kind in ["aifinops.spend.spike", "aifinops.spend.recovered", "aifinops.budget.projected"] {
        assert_eq!(out.matches(&format!("[{kind}]")).count(), 1, "one {kind} alert read back:\n{out}");
    }
    assert!(out.contains("owner research-agents spent $119.14 in the 1h window"), "{out}");
    assert!(out.contains("all-ai-monthly is projected to reach its"), "{out}");
    assert!(out.contains("Month-end forecast") && out.contains("mstl_ets"), "{out}");
    assert!(out.contains("projected breach on"), "forecast against the budget:\n{out}");
    assert!(out.contains("gpt-9-preview"), "unpriced model alert:\n{out}");
    assert!(out.contains("duckdb -c"), "DuckDB one-liner:\n{out}");
    assert!(!out.contains("sk-proj-Zx81"), "the leaked key must appear only as a fingerprint:\n{out}");
    // the month's HTML report: the planted spike circled on the spend chart, the forecast against the budget
    let report = demo.join("report.html");
    assert!(out.contains(&format!("open {}", std::fs::canonicalize(&report).unwrap().display())), "{out}");
    assert!(out.contains("aifinops export focus --lake"), "{out}");
    let html = std::fs::read_to_string(&report).unwrap();
    assert_eq!(html.matches("class=\"spike-marker\"").count(), 1, "one spike marked");
    // the baseline is learned from the two weeks before the demo day, the 15th of last month: which days of
    // them are weekends (lighter traffic) moves it with the calendar, so it is read from the alert
    let expected = out
        .split("owner research-agents spent $119.14 in the 1h window")
        .nth(1)
        .and_then(|rest| rest.split("expected $").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the spike alert names its expected spend:\n{out}"));
    let baseline: f64 = expected.parse().unwrap_or_else(|e| panic!("expected ${expected}: {e}"));
    assert!((1.0..10.0).contains(&baseline), "an ordinary hour of research-agents costs a few dollars: ${expected}");
    assert!(html.contains(&format!("spike: research-agents $119.14 (expected ${expected})")), "the planted spike");
    assert!(html.contains("class=\"forecast-band\"") && html.contains("class=\"budget-line\""));
    assert!(html.contains("budget all-ai-monthly") && html.contains("projected to be exceeded"), "budget line");
    assert!(!html.contains("sk-proj-Zx81"), "no raw key in the report");
    assert!(
        html.contains("cost unknown (unpriced) · 36 calls") && !html.contains("$0.00 · 36 calls"),
        "the unpriced model's cost is unknown in the top models, never $0"
    );
    assert_report_renders(&report, 7);
    // the lake it wrote agrees with its input: every valid, unique record is counted once
    let lake = demo.join("lake");
    let lines = std::fs::read_to_string(demo.join("traffic.ndjson")).unwrap();
    let mut ids = std::collections::BTreeSet::new();
    let mut valid = 0;
    for l in lines.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let Some(id) = v["event_id"].as_str() else {
            continue;
        };
        if id.starts_with("bad-") {
            continue;
        }
        if ids.insert(id.to_string()) {
            valid += 1;
        }
    }
    // the live day (the history before it was backfilled from history.ndjson)
    let first: serde_json::Value = lines.lines().find_map(|l| serde_json::from_str(l).ok()).unwrap();
    let day = &first["timestamp"].as_str().unwrap()[..10];
    let r = query(&lake, &format!("SELECT sum(requests) AS r FROM rollups WHERE \"window\" = '1h' AND date = '{day}'"));
    assert_eq!(r[0]["r"].as_i64(), Some(valid));
    let dl = query(&lake, "SELECT count(*) AS n FROM dead_letters");
    assert_eq!(dl[0]["n"].as_i64(), Some(6));
    let secrets = query(&lake, "SELECT count(*) AS n FROM rollups WHERE identity LIKE 'sk-%'");
    assert_eq!(secrets[0]["n"].as_i64(), Some(0));

    // replay of the same traffic from a file writes the same totals as the run through the broker
    let replayed = dir.path().join("replayed");
    ok(&aifinops(&[
        "replay",
        "--lake",
        replayed.to_str().unwrap(),
        "--owners",
        demo.join("owners.toml").to_str().unwrap(),
        demo.join("traffic.ndjson").to_str().unwrap(),
    ]));
    let totals = format!(
        "SELECT \"window\", owner, sum(requests) AS r, sum(input_tokens) AS i, sum(cache_read_tokens) AS cr, \
         sum(output_tokens) AS o, CAST(sum(cost_usd) AS VARCHAR) AS c FROM rollups WHERE date = '{day}' GROUP BY 1, 2 ORDER BY 1, 2"
    );
    assert_eq!(query(&lake, &totals), query(&replayed, &totals), "run and replay agree");

    // the FOCUS export of the demo month adds up to the rollups' cost of the month, exactly
    let month = &day[..7];
    let focus = dir.path().join("focus");
    ok(&aifinops(&[
        "export",
        "focus",
        "--lake",
        lake.to_str().unwrap(),
        "--month",
        month,
        "--out",
        focus.to_str().unwrap(),
    ]));
    let t = read_parquet_py(&focus.join(format!("focus-{month}.parquet")));
    let cents = |s: &str| -> i128 {
        let (i, f) = s.split_once('.').unwrap_or((s, ""));
        i.parse::<i128>().unwrap() * 10i128.pow(18) + format!("{f:0<18}").parse::<i128>().unwrap()
    };
    let sum: i128 = t["rows"].as_array().unwrap().iter().filter_map(|r| r["EffectiveCost"].as_str()).map(cents).sum();
    let r = query(
        &lake,
        &format!(
            "SELECT CAST(sum(cost_usd) AS VARCHAR) AS c FROM rollups WHERE \"window\" = '1h' AND date LIKE '{month}-%'"
        ),
    );
    assert_eq!(sum, cents(r[0]["c"].as_str().unwrap()));
}
