//! End to end: three weeks of synthetic traffic (`aifinops gen`) replayed into a lake, then
//! `aifinops forecast`: per-owner month projections whose month-to-date equals the lake's, the seasonal
//! model from 14 days of history, month budgets with a breach date, peak hours, and forecast rows that
//! `aifinops query` reads and joins to the actuals that arrived later (a backtest).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

/// The owner map of the synthetic traffic (`aifinops gen`).
const GEN_OWNERS: &str = r#"
[[owner]]
id = "search"
risk_owner = "search-lead@example.com"
api_key_id = ["key-search-*"]

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
"#;

const BUDGETS: &str = r#"
[[budget]]
name = "search-monthly"
owner = "search"
period = "month"
limit_usd = "60.00"

[[budget]]
name = "everyone-monthly"
owner = "*"
period = "month"
limit_usd = "1000000"

[[budget]]
name = "agents-daily"
owner = "research-agents"
period = "day"
limit_usd = "50"
"#;

/// One projection row of the printed table.
#[derive(Debug)]
struct Row {
    history: String,
    method: String,
    mtd: String,
    projection: f64,
    lower: f64,
    upper: f64,
}

/// Parses the owner table (between its header line and the next blank line).
fn table(out: &str) -> BTreeMap<String, Row> {
    let mut rows = BTreeMap::new();
    let mut lines = out.lines().skip_while(|l| !l.starts_with("owner "));
    assert!(lines.next().is_some(), "no owner table in:\n{out}");
    for l in lines.take_while(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 9, "owner row {l:?}");
        let num = |s: &str| s.parse::<f64>().unwrap_or_else(|_| panic!("number {s:?} in {l:?}"));
        rows.insert(
            f[0].to_string(),
            Row {
                history: f[1].into(),
                method: f[2].into(),
                mtd: f[3].into(),
                projection: num(f[5]),
                lower: num(f[6]),
                upper: num(f[8]),
            },
        );
    }
    rows
}

/// A decimal string rounded half away from zero to cents, as the table prints it.
fn cents(s: &str) -> String {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let frac = format!("{frac:0<3}");
    let mut c: u128 = format!("{int}{}", &frac[..2]).parse().unwrap();
    if frac.as_bytes()[2] >= b'5' {
        c += 1;
    }
    format!("{}.{:02}", c / 100, c % 100)
}

fn forecast(lake: &Path, cfg: &Path, extra: &[&str]) -> String {
    let mut args = vec!["forecast", "--lake", lake.to_str().unwrap(), "--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(&aifinops(&args))
}

fn day(i: i64) -> String {
    // 2025-11-20 + i days
    (chrono::NaiveDate::from_ymd_opt(2025, 11, 20).unwrap() + chrono::Duration::days(i)).to_string()
}

#[test]
fn forecast_projects_the_month_per_owner_from_three_weeks_of_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let owners = dir.path().join("owners.toml");
    std::fs::write(&owners, GEN_OWNERS).unwrap();
    let cfg = dir.path().join("aifinops.toml");
    std::fs::write(&cfg, format!("[owners]\nfile = {:?}\n{BUDGETS}", owners.to_str().unwrap())).unwrap();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap();

    // 21 days, 2025-11-20 .. 2025-12-10, each from its own seed
    let files: Vec<String> = (0..21)
        .map(|i| {
            let f = dir.path().join(format!("{}.ndjson", day(i)));
            ok(&aifinops(&["gen", "--day", &day(i), "--seed", &(100 + i).to_string(), "--out", f.to_str().unwrap()]));
            f.to_str().unwrap().to_string()
        })
        .collect();

    // Two weeks first: as of 2025-12-03, exactly MIN_SEASONAL_DAYS of history -> the seasonal model.
    let mut args = vec!["replay", "--config", cfg.to_str().unwrap(), "--lake", lake_s];
    args.extend(files[..14].iter().map(|s| s.as_str()));
    ok(&aifinops(&args));
    let first = forecast(&lake, &cfg, &[]);
    assert!(first.contains("as of 2025-12-03 (the last complete day): 28 of 31 days"), "{first}");
    for (o, r) in table(&first) {
        assert_eq!((r.history.as_str(), r.method.as_str()), ("14d", "mstl_ets"), "{o} at 14 days:\n{first}");
    }

    // The third week arrives; the forecast is now as of 2025-12-10.
    let mut args = vec!["replay", "--config", cfg.to_str().unwrap(), "--lake", lake_s];
    args.extend(files[14..].iter().map(|s| s.as_str()));
    ok(&aifinops(&args));
    let out = forecast(&lake, &cfg, &[]);
    assert!(out.contains("Forecast for month 2025-12"), "{out}");
    assert!(out.contains("as of 2025-12-10 (the last complete day): 21 of 31 days to forecast"), "{out}");
    assert!(out.contains("window=1d rollups"), "{out}");
    let rows = table(&out);

    // Month-to-date per owner equals the lake's, computed independently from the hourly rollups.
    let mtd = query(
        &lake,
        "SELECT owner, CAST(sum(cost_usd) AS VARCHAR) AS c FROM rollups WHERE \"window\" = '1h' \
         AND window_start >= TIMESTAMP '2025-12-01T00:00:00Z' AND window_start < TIMESTAMP '2025-12-11T00:00:00Z' \
         GROUP BY owner ORDER BY owner",
    );
    let lake_owners: Vec<String> = mtd.iter().map(|r| r["owner"].as_str().unwrap().to_string()).collect();
    assert!(lake_owners.len() >= 4, "owners in the lake: {lake_owners:?}");
    for r in &mtd {
        let o = r["owner"].as_str().unwrap();
        let row = rows.get(o).unwrap_or_else(|| panic!("no projection for owner {o}:\n{out}"));
        assert_eq!(row.mtd, cents(r["c"].as_str().unwrap_or("0")), "month-to-date of {o}");
        assert_eq!((row.history.as_str(), row.method.as_str()), ("21d", "mstl_ets"), "{o}");
        let mtd: f64 = row.mtd.parse().unwrap();
        assert!(row.lower <= row.projection && row.projection <= row.upper, "{o}: {row:?}");
        assert!(row.lower >= mtd && row.projection > mtd, "the rest of the month adds spend for {o}: {row:?}");
    }
    let total = query(
        &lake,
        "SELECT CAST(sum(cost_usd) AS VARCHAR) AS c FROM rollups WHERE \"window\" = '1h' \
         AND window_start >= TIMESTAMP '2025-12-01T00:00:00Z' AND window_start < TIMESTAMP '2025-12-11T00:00:00Z'",
    );
    assert_eq!(rows["*"].mtd, cents(total[0]["c"].as_str().unwrap()), "month-to-date of the total");
    assert_eq!(rows.len(), lake_owners.len() + 1, "every owner and the total:\n{out}");

    // Budgets: the month ones only, each with its projection, percent and breach verdict.
    assert!(out.contains("budget search-monthly (owner=search): limit 60.00, projected"), "{out}");
    let search_budget = out.lines().find(|l| l.contains("budget search-monthly")).unwrap();
    let breach = search_budget
        .split("projected breach on ")
        .nth(1)
        .unwrap_or_else(|| panic!("the search budget is projected to break: {search_budget}"));
    assert!(breach.trim() > "2025-12-10" && breach.trim() <= "2025-12-31", "{search_budget}");
    assert!(search_budget.contains("% of limit"), "{search_budget}");
    let everyone = out.lines().find(|l| l.contains("budget everyone-monthly")).unwrap();
    assert!(everyone.contains("no breach projected"), "{everyone}");
    assert!(!out.contains("agents-daily"), "day budgets are not month projections:\n{out}");

    // Peak hours: the research agents' runaway hour is 14:00 UTC every day.
    assert!(out.contains("Peak hours of the week"), "{out}");
    let agents = out.lines().rfind(|l| l.trim_start().starts_with("research-agents")).unwrap();
    assert_eq!(agents.matches("14:00 UTC").count(), 3, "top 3 peak hours of the agents: {agents}");

    // Forecast rows: every owner and the total, Dec 11 .. Dec 31, queryable.
    let parquet = lake.join("forecasts/date=2025-12-10/forecast.parquet");
    assert!(parquet.exists(), "{}", parquet.display());
    let fr = query(
        &lake,
        "SELECT owner, count(*) AS n, CAST(min(day) AS VARCHAR) AS first, CAST(max(day) AS VARCHAR) AS last, \
         min(method) AS method, min(level) AS level, sum(CASE WHEN lower_usd <= point_usd AND point_usd <= upper_usd \
         AND lower_usd >= 0 THEN 1 ELSE 0 END) AS ordered FROM forecasts WHERE date = '2025-12-10' GROUP BY owner \
         ORDER BY owner",
    );
    assert_eq!(fr.len(), lake_owners.len() + 1, "{fr:?}");
    for r in &fr {
        assert_eq!(r["n"].as_i64(), Some(21), "{r:?}");
        assert_eq!((r["first"].as_str(), r["last"].as_str()), (Some("2025-12-11"), Some("2025-12-31")), "{r:?}");
        assert_eq!(r["method"].as_str(), Some("mstl_ets"), "{r:?}");
        assert_eq!(r["level"].as_f64(), Some(0.8), "{r:?}");
        assert_eq!(r["ordered"].as_i64(), Some(21), "lower <= point <= upper: {r:?}");
    }
    // Re-running for the same as-of day replaces the file.
    forecast(&lake, &cfg, &[]);
    let files = std::fs::read_dir(lake.join("forecasts/date=2025-12-10")).unwrap().count();
    assert_eq!(files, 1, "one file per as-of day");
    let n = query(&lake, "SELECT count(*) AS n FROM forecasts WHERE date = '2025-12-10'");
    assert_eq!(n[0]["n"].as_i64(), Some(21 * (lake_owners.len() as i64 + 1)));

    // Backtest: the forecast made as of Dec 3 against the daily actuals of Dec 4 .. 10.
    let bt = query(
        &lake,
        "SELECT f.owner, count(*) AS days, \
         avg(abs(CAST(f.point_usd AS DOUBLE) - CAST(a.actual AS DOUBLE)) / CAST(a.actual AS DOUBLE)) AS mape \
         FROM forecasts f JOIN ( \
           SELECT owner, CAST(window_start AS DATE) AS day, sum(cost_usd) AS actual FROM rollups \
           WHERE \"window\" = '1d' GROUP BY owner, CAST(window_start AS DATE) \
           UNION ALL SELECT '*', CAST(window_start AS DATE), sum(cost_usd) FROM rollups \
           WHERE \"window\" = '1d' GROUP BY CAST(window_start AS DATE)) a \
         ON f.owner = a.owner AND f.day = a.day WHERE f.date = '2025-12-03' GROUP BY f.owner ORDER BY f.owner",
    );
    assert_eq!(bt.len(), lake_owners.len() + 1, "{bt:?}");
    for r in &bt {
        assert_eq!(r["days"].as_i64(), Some(7), "{r:?}");
    }
    let total_mape = bt.iter().find(|r| r["owner"] == "*").unwrap()["mape"].as_f64().unwrap();
    assert!(total_mape < 0.10, "a week ahead on steady traffic: MAPE {total_mape}");

    // One owner only: its row, and the budgets whose owner glob matches it.
    let one = forecast(&lake, &cfg, &["--owner", "search"]);
    let t = table(&one);
    assert_eq!(t.keys().collect::<Vec<_>>(), vec!["search"], "{one}");
    assert_eq!(t["search"].mtd, rows["search"].mtd);
    assert!(one.contains("budget search-monthly") && one.contains("budget everyone-monthly"), "{one}");
    let unknown = aifinops(&["forecast", "--lake", lake_s, "--owner", "nobody"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("owner \"nobody\" has no spend"));
}

#[test]
fn forecast_uses_hourly_rollups_and_the_run_rate_on_a_short_history() {
    let dir = tempfile::tempdir().unwrap();
    let owners = dir.path().join("owners.toml");
    std::fs::write(&owners, GEN_OWNERS).unwrap();
    // a lake with hourly windows only
    let cfg = dir.path().join("aifinops.toml");
    std::fs::write(&cfg, format!("[pipeline]\nwindows = [\"1h\"]\n[owners]\nfile = {:?}\n", owners.to_str().unwrap()))
        .unwrap();
    let lake = dir.path().join("lake");
    let mut files = Vec::new();
    for i in 0..5 {
        let f = dir.path().join(format!("{i}.ndjson"));
        ok(&aifinops(&["gen", "--day", &day(i), "--seed", &i.to_string(), "--out", f.to_str().unwrap()]));
        files.push(f.to_str().unwrap().to_string());
    }
    let mut args = vec!["replay", "--config", cfg.to_str().unwrap(), "--lake", lake.to_str().unwrap()];
    args.extend(files.iter().map(|s| s.as_str()));
    ok(&aifinops(&args));
    let out = ok(&aifinops(&["forecast", "--lake", lake.to_str().unwrap(), "--month", "2025-11"]));
    assert!(out.contains("window=1h rollups"), "{out}");
    assert!(out.contains("as of 2025-11-24 (the last complete day): 6 of 30 days"), "{out}");
    let rows = table(&out);
    assert!(rows.len() >= 5, "{out}");
    for (o, r) in &rows {
        assert_eq!((r.history.as_str(), r.method.as_str()), ("5d", "run_rate"), "{o}");
    }
    assert!(out.contains("none configured"), "no config, no budgets:\n{out}");
    let mtd = query(&lake, "SELECT CAST(sum(cost_usd) AS VARCHAR) AS c FROM rollups");
    assert_eq!(rows["*"].mtd, cents(mtd[0]["c"].as_str().unwrap()));
}
