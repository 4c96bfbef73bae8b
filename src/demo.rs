//! `aifinops demo`: two weeks of ordinary gateway traffic backfilled with `replay` (the history the
//! detectors and forecasts learn from), then a live day with incidents produced into an embedded
//! Kafka-protocol broker (librdkafka's mock cluster) and consumed by the real `run` pipeline, and what a
//! user would look at: spend, the spike, the projected budget breach, the month-end forecast.
//! The mock cluster keeps only the newest ~5 MiB per partition, so the live day stays small (~9k calls).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::util::pretty::pretty_format_batches;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::Config;
use crate::traffic;

pub fn yesterday_ms() -> i64 {
    let today = chrono::Utc::now().date_naive();
    (today - chrono::Days::new(1)).and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis()
}

pub async fn run(dir: &Path, metrics: Option<std::net::SocketAddr>, hold: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let lake = dir.join("lake");
    if lake.exists() {
        std::fs::remove_dir_all(&lake)
            .with_context(|| format!("clearing the previous demo lake {}", lake.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let owners = dir.join("owners.toml");
    std::fs::write(&owners, traffic::DEMO_OWNERS)?;
    // the live day is the 15th of last month, after two weeks of history in the same month
    let day = demo_day_ms();
    let day_str = chrono::DateTime::from_timestamp_millis(day).unwrap_or_default().format("%Y-%m-%d");
    let history: Vec<String> =
        (1..=HISTORY_DAYS).rev().flat_map(|d| traffic::normal_day(day - d * 86_400_000, 100 + d as u64)).collect();
    let history_file = dir.join("history.ndjson");
    std::fs::write(&history_file, history.join("\n") + "\n")?;
    let lines = traffic::demo_day(day, 7);
    std::fs::write(dir.join("traffic.ndjson"), lines.join("\n") + "\n")?;

    let mut cfg = Config::default();
    cfg.lake.dir = lake.clone();
    cfg.owners.file = Some(owners);
    cfg.budgets = toml::from_str::<DemoBudgets>(DEMO_BUDGETS)?.budget;
    println!(
        "backfilling {HISTORY_DAYS} days of ordinary traffic before {day_str} ({} records) with `aifinops replay`: \
         the history spike baselines and forecasts learn from",
        history.len()
    );
    let summary = crate::replay::run(&cfg, &[(history_file, aifinops_ingest::Format::Auto)], true).await?;
    println!("{summary}\n");
    // the month budget: what finance set for all AI spend, a little under what this month is heading for
    let ctx = crate::query::session(&lake).await?;
    let per_day: f64 = ctx
        .sql("SELECT CAST(sum(cost_usd) AS DOUBLE) AS usd FROM rollups WHERE \"window\" = '1d'")
        .await?
        .collect()
        .await?
        .first()
        .and_then(|b| b.column(0).as_primitive_opt::<datafusion::arrow::datatypes::Float64Type>().map(|c| c.value(0)))
        .unwrap_or(0.0)
        / HISTORY_DAYS as f64;
    let monthly = ((per_day * 26.0 / 100.0).round() * 100.0).max(100.0);
    if let Some(b) = cfg.budgets.iter_mut().find(|b| b.name == "all-ai-monthly") {
        b.limit_usd = format!("{monthly:.0}");
    }
    let history_alerts = count_alerts(&lake).await?;

    println!("starting an embedded Kafka-protocol broker (librdkafka mock cluster)");
    let cluster = MockCluster::new(1).context("starting the mock cluster")?;
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("llm-usage", 3, 1).context("creating llm-usage")?;
    cluster.create_topic("aifinops.alerts", 1, 1).context("creating aifinops.alerts")?;
    cluster.create_topic("aifinops.dead-letters", 1, 1).context("creating aifinops.dead-letters")?;
    println!(
        "producing {} gateway records for {day_str} (owners: search, support-bot, research-agents, growth; a runaway agent hour at 14:00, a leaked key, an unknown model, 6 malformed records, 10 redelivered duplicates)",
        lines.len()
    );
    produce_lines(&brokers, "llm-usage", &lines).await?;

    cfg.kafka.brokers = brokers.clone();
    cfg.kafka.group = "aifinops-demo".into();
    cfg.kafka.session_timeout = Duration::from_secs(6);
    cfg.kafka.max_poll_interval = Duration::from_secs(10);
    cfg.pipeline.batch_max_wait = Duration::from_millis(200);
    // small micro-batches so the day unfolds in many commits, as it would live
    cfg.pipeline.batch_max_events = 1000;
    cfg.pipeline.commit_interval = Duration::from_millis(200);
    std::fs::write(dir.join("aifinops.toml"), toml::to_string(&cfg)?)?;
    println!("running the pipeline (consumer group {}, lake {})", cfg.kafka.group, lake.display());
    let summary = crate::run::run(&cfg, Arc::new(AtomicBool::new(false)), true).await?;
    println!("{summary}\n");

    let ctx = crate::query::session(&lake).await?;
    let spend = ctx
        .sql(&format!(
            "SELECT owner, sum(requests) AS requests, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, \
             CAST(sum(cost_usd) AS DECIMAL(18,4)) AS usd, sum(unpriced_requests) AS unpriced, sum(error_requests) AS errors \
             FROM rollups WHERE \"window\" = '1d' AND date = '{day_str}' GROUP BY owner ORDER BY usd DESC NULLS LAST",
        ))
        .await?
        .collect()
        .await?;
    println!("Spend per owner for {day_str} (UTC):\n{}\n", pretty_format_batches(&spend)?);
    let hourly = ctx
        .sql(&format!(
            "SELECT CAST(window_start AS VARCHAR) AS hour, CAST(sum(cost_usd) AS DECIMAL(18,2)) AS usd, sum(requests) AS requests \
             FROM rollups WHERE \"window\" = '1h' AND owner = 'research-agents' AND date = '{day_str}' GROUP BY window_start ORDER BY usd DESC LIMIT 3",
        ))
        .await?
        .collect()
        .await?;
    println!("research-agents, most expensive hours (the runaway loop):\n{}\n", pretty_format_batches(&hourly)?);
    let dead = ctx.sql("SELECT source, kind, reason FROM dead_letters ORDER BY source").await?.collect().await?;
    println!(
        "Dead letters (kept in the lake and on aifinops.dead-letters, with the reason):\n{}\n",
        pretty_format_batches(&dead)?
    );

    // Read the alerts back from the alert topic with a separate consumer, as a downstream system would.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "demo-alert-reader")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()?;
    consumer.subscribe(&["aifinops.alerts"])?;
    let expected = count_alerts(&lake).await? - history_alerts;
    println!("Alerts published to topic aifinops.alerts (CloudEvents, key = owner):");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = 0usize;
    while seen < expected {
        let Ok(Ok(m)) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            break;
        };
        seen += 1;
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
        let d = &v["data"];
        let what = match v["type"].as_str().unwrap_or_default() {
            "aifinops.budget.threshold" | "aifinops.budget.projected" | "aifinops.spend.recovered" => {
                d["summary"].as_str().unwrap_or_default().to_string()
            }
            "aifinops.spend.spike" => format!(
                "{} (score {} by {}; top identity {}, top model {})",
                d["summary"].as_str().unwrap_or_default(),
                d["score"],
                d["method"].as_str().unwrap_or_default(),
                d["top_identities"][0]["identity"].as_str().unwrap_or("-"),
                d["top_models"][0]["model"].as_str().unwrap_or("-")
            ),
            "aifinops.spend.unattributed" => format!(
                "identity {} spent ${} with no owner on {}",
                d["identity"].as_str().unwrap_or_default(),
                d["observed_usd"].as_str().unwrap_or_default(),
                d["day"].as_str().unwrap_or_default()
            ),
            "aifinops.model.unpriced" => format!(
                "model {} is not in the price catalog ({} calls on {})",
                d["model"].as_str().unwrap_or_default(),
                d["unpriced_requests"],
                d["day"].as_str().unwrap_or_default()
            ),
            _ => v["subject"].as_str().unwrap_or_default().to_string(),
        };
        println!(
            "  [{}] key={} {}",
            v["type"].as_str().unwrap_or_default(),
            String::from_utf8_lossy(m.key().unwrap_or_default()),
            what
        );
    }
    if seen < expected {
        println!("  (read {seen} of {expected} alerts from the topic before the timeout)");
    }
    println!(
        "\nMonth-end forecast (aifinops forecast --lake {} --config {}):",
        lake.display(),
        dir.join("aifinops.toml").display()
    );
    crate::forecast::run(crate::forecast::Args {
        lake: lake.clone(),
        owner: None,
        month: None,
        config: Some(dir.join("aifinops.toml")),
    })
    .await?;
    let abs = std::fs::canonicalize(&lake)?;
    let month = crate::lake_read::month_of(day);
    let report = dir.join("report.html");
    crate::report::run(crate::report::Args {
        lake: lake.clone(),
        out: report.clone(),
        month: Some(month.clone()),
        config: Some(dir.join("aifinops.toml")),
    })
    .await?;
    let report = std::fs::canonicalize(&report)?;
    println!("\nThe month's spend report (spend per owner with the spike circled, forecast and budget, token mix):");
    println!("  open {}   # one HTML file, no network needed", report.display());
    println!(
        "  aifinops report --lake {} --month {month} --config {} --out report.html",
        abs.display(),
        dir.join("aifinops.toml").display()
    );
    println!("FOCUS cost and usage export of the month (Parquet):");
    println!("  aifinops export focus --lake {} --month {month} --out ./focus", abs.display());
    println!("\nQuery the lake yourself:");
    println!(
        "  duckdb -c \"SELECT owner, sum(cost_usd) AS usd FROM read_parquet('{}/rollups/**/*.parquet', hive_partitioning=true) WHERE \\\"window\\\"='1d' GROUP BY owner ORDER BY usd DESC\"",
        abs.display()
    );
    println!(
        "  aifinops query --lake {} \"SELECT owner, model, sum(cost_usd) FROM rollups WHERE \\\"window\\\"='1h' GROUP BY owner, model\"",
        abs.display()
    );
    if let (Some(addr), Some(scrape)) = (metrics, crate::health::render()) {
        println!("\nMetrics of the live run (curl -s http://{addr}/metrics; docs/operations.md), an excerpt:");
        let keep = [
            "aifinops_input_records_total",
            "aifinops_input_events_priced_total",
            "aifinops_dead_letters_total",
            "aifinops_unpriced_requests_total",
            "aifinops_consumer_lag_messages",
            "aifinops_alerts_published_total",
            "aifinops_lake_commits_total",
        ];
        for l in scrape.lines().filter(|l| keep.iter().any(|k| l.starts_with(k))) {
            println!("  {l}");
        }
    }
    println!("\ndemo finished in {:.1}s", started.elapsed().as_secs_f64());
    if let (true, Some(addr)) = (hold, metrics) {
        // the handlers are in place before the line that tells a script it may stop us
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        println!(
            "serving http://{addr}/metrics, /healthz and /readyz until Ctrl-C (try: curl -s http://{addr}/metrics)"
        );
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    }
    drop(consumer);
    drop(cluster);
    Ok(())
}

/// Produces each line as one message (idempotent producer), in order, waiting for every acknowledgement.
pub async fn produce_lines(brokers: &str, topic: &str, lines: &[String]) -> anyhow::Result<()> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()
        .context("creating the producer")?;
    let mut acks = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        let key = format!("k{}", i % 97);
        let mut rec = FutureRecord::to(topic).key(&key).payload(l);
        // enqueued one after the other: each partition receives the lines in file order
        loop {
            match producer.send_result(rec) {
                Ok(ack) => break acks.push(ack),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(e).with_context(|| format!("producing to {topic}")),
            }
        }
    }
    for ack in acks {
        match ack.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e).with_context(|| format!("producing to {topic}")),
            Err(_) => anyhow::bail!("producing to {topic}: the producer dropped a delivery"),
        }
    }
    Ok(())
}

/// Creates `topic` with `partitions` partitions unless it exists.
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &opts).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

/// `aifinops produce`: NDJSON files into a topic (created with `partitions` partitions if missing).
pub async fn produce_files(
    brokers: &str,
    topic: &str,
    partitions: i32,
    files: &[std::path::PathBuf],
) -> anyhow::Result<usize> {
    ensure_topic(brokers, topic, partitions).await?;
    let mut lines = Vec::new();
    for f in files {
        let text = if f.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        };
        lines.extend(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
    }
    produce_lines(brokers, topic, &lines).await?;
    Ok(lines.len())
}

/// Days of ordinary traffic the demo backfills before its live day.
const HISTORY_DAYS: i64 = 14;

/// The demo's live day: the 15th of last month (so two weeks of history fall in the same month).
pub fn demo_day_ms() -> i64 {
    use chrono::Datelike;
    let today = chrono::Utc::now().date_naive();
    let last_month = today.with_day(1).expect("day 1") - chrono::Days::new(1);
    last_month.with_day(15).expect("day 15").and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis()
}

async fn count_alerts(lake: &Path) -> anyhow::Result<usize> {
    let ctx = crate::query::session(lake).await?;
    let n = ctx.sql("SELECT count(*) FROM alerts").await?.collect().await?;
    Ok(n.first()
        .and_then(|b| b.column(0).as_primitive_opt::<datafusion::arrow::datatypes::Int64Type>().map(|c| c.value(0)))
        .unwrap_or(0) as usize)
}

#[derive(serde::Deserialize)]
struct DemoBudgets {
    budget: Vec<aifinops_aggregate::BudgetConfig>,
}

const DEMO_BUDGETS: &str = r#"
[[budget]]
name = "research-agents-daily"
owner = "research-agents"
workflow = "agent-*"
period = "day"
limit_usd = "150"

[[budget]]
name = "search-daily"
owner = "search"
period = "day"
limit_usd = "40"

[[budget]]
name = "all-ai-monthly"
owner = "*"
period = "month"
# set from the backfilled history when the demo starts
limit_usd = "1000000"
thresholds = [80, 100]
"#;
