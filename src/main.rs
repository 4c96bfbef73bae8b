//! The `aifinops` binary: wires ingest -> aggregate -> sink into `run` (Kafka), `replay` (files), `demo`
//! (an embedded broker and a synthetic day), `query` (SQL over the lake) and `config`.

mod config;
mod demo;
mod focus;
mod forecast;
mod health;
mod lake_read;
mod pipeline;
mod prices;
mod query;
mod replay;
mod report;
mod run;
mod svg;
mod traffic;
mod whatif;

use std::path::PathBuf;

use aifinops_ingest::Format;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "aifinops",
    version,
    about = "FinOps for AI: price, attribute and govern LLM spend from Kafka into Parquet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags shared by `run` and `replay` that override the config file.
#[derive(clap::Args, Clone, Default)]
struct Overrides {
    /// Configuration file (TOML); optional.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Lake directory (overrides lake.dir).
    #[arg(long)]
    lake: Option<PathBuf>,
    /// Price catalog: LiteLLM JSON or aifinops TOML (repeatable; overrides prices.files).
    #[arg(long = "prices")]
    prices: Vec<PathBuf>,
    /// Owner map TOML (overrides owners.file).
    #[arg(long)]
    owners: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// A synthetic day of gateway traffic through an embedded broker and the real pipeline, no setup.
    Demo {
        /// Where the demo writes its lake and inputs.
        #[arg(long, default_value = "./aifinops-demo")]
        dir: PathBuf,
        /// Where the live run serves /metrics, /healthz and /readyz ("" = off; a busy port is skipped).
        #[arg(long, default_value = "127.0.0.1:9898")]
        metrics_listen: String,
        /// Keep serving /metrics, /healthz and /readyz after the demo until Ctrl-C (to try curl).
        #[arg(long)]
        hold: bool,
    },
    /// Consume the input topics in a consumer group until SIGINT/SIGTERM (flush, commit, exit 0).
    Run {
        #[command(flatten)]
        o: Overrides,
        /// Bootstrap servers (overrides kafka.brokers).
        #[arg(long)]
        brokers: Option<String>,
        /// Input topic (repeatable; overrides kafka.topics).
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// Consumer group (overrides kafka.group).
        #[arg(long)]
        group: Option<String>,
        /// Alert topic (overrides kafka.alert_topic).
        #[arg(long)]
        alert_topic: Option<String>,
        /// Exit (after a final flush of all windows) once every partition is consumed to its end.
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Backfill from exported gateway logs (NDJSON, `.gz`, `-` for stdin) through the same pipeline.
    Replay {
        #[command(flatten)]
        o: Overrides,
        /// Replay files even if the lake says they were replayed already.
        #[arg(long)]
        force: bool,
        /// Format of the files' records (auto detects per record); a file written `FORMAT:PATH`
        /// (e.g. `litellm:spend.ndjson`) has its own.
        #[arg(long, default_value = "auto", value_parser = parse_format)]
        format: Format,
        /// Input files (NDJSON, `.gz`, or `-` for standard input).
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Run DataFusion SQL over the lake (tables `rollups`, `alerts`, `dead_letters`, `forecasts`).
    Query {
        #[arg(long)]
        lake: PathBuf,
        /// Output format.
        #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
        format: String,
        sql: String,
    },
    /// Print the commented example configuration, or check a configuration file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Produce NDJSON lines (one record per message) into a topic, e.g. to try `run`.
    Produce {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        topic: String,
        /// Partitions of the topic when it has to be created.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        /// NDJSON files (`-` for stdin).
        files: Vec<PathBuf>,
    },
    /// Month-end spend projection per owner (and total) from the lake's daily series, with an 80 % interval,
    /// the budget, and the peak hours of the week; writes forecast rows to `<lake>/forecasts/`.
    Forecast(forecast::Args),
    /// Re-price a month of real usage under other models, service tiers, or a self-hosted option.
    Whatif(whatif::Args),
    /// One self-contained HTML report of a month: spend per owner with spikes, forecast and budget, top
    /// models and identities, token mix, unattributed and unpriced spend, retry cost (docs/report.md).
    Report(report::Args),
    /// Export the lake in other shapes (FOCUS cost and usage data).
    Export {
        #[command(subcommand)]
        what: ExportWhat,
    },
    /// Price catalog tools.
    Prices {
        #[command(subcommand)]
        action: PricesAction,
    },
    /// Write synthetic gateway traffic as NDJSON (the demo's day), for trying replay.
    Gen {
        #[arg(long, default_value = "-")]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Day to generate (YYYY-MM-DD, UTC); default yesterday. With --events: the first event's day.
        #[arg(long)]
        day: Option<String>,
        /// The benchmark workload instead of the demo day: this many events, one per 40 ms.
        #[arg(long)]
        events: Option<u64>,
        /// Benchmark workload: number of teams (owners).
        #[arg(long, default_value_t = 2_000)]
        teams: u64,
        /// Benchmark workload: number of API keys.
        #[arg(long, default_value_t = 20_000)]
        keys: u64,
        /// Benchmark workload: also write its owner map here.
        #[arg(long)]
        owners_out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PricesAction {
    /// List the models seen in traffic files that the catalog cannot price (exit code 1 if any).
    Check {
        /// Catalog files in load order (LiteLLM `.json`, aifinops `.toml`); later override earlier.
        #[arg(long = "catalog")]
        catalogs: Vec<PathBuf>,
        /// Leave out the built-in catalog.
        #[arg(long)]
        no_builtin: bool,
        /// Format of the files' records; `FORMAT:PATH` gives one file its own.
        #[arg(long, default_value = "auto", value_parser = parse_format)]
        format: Format,
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Print the resolved per-token rates (exact decimal USD) of models as CSV, for pricing the same
    /// traffic elsewhere (e.g. the benchmark's DuckDB and Python jobs).
    Export {
        /// Catalog files in load order (LiteLLM `.json`, aifinops `.toml`); later override earlier.
        #[arg(long = "catalog")]
        catalogs: Vec<PathBuf>,
        /// Leave out the built-in catalog.
        #[arg(long)]
        no_builtin: bool,
        /// Price versions in effect on this day (YYYY-MM-DD, UTC); default today.
        #[arg(long)]
        at: Option<String>,
        /// Service tier of the rates.
        #[arg(long, default_value = "default")]
        tier: String,
        /// Models as `provider/model`.
        #[arg(required = true)]
        models: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ExportWhat {
    /// A month as FOCUS-shaped Parquet: one row per charge period × owner × model × token class (docs/report.md).
    Focus(focus::Args),
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the example configuration.
    Example,
    /// Validate a configuration file and the files it points to.
    Check { file: PathBuf },
}

/// Set when logs are JSON: the final summary and a fatal error are then log events too, so standard error
/// stays one JSON object per line.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let json = cfg.log.format == "json";
    let ok = if json { builder.json().try_init() } else { builder.try_init() }.is_ok();
    JSON_LOGS.store(json && ok, std::sync::atomic::Ordering::SeqCst);
}

/// The one-line summary of `run` / `replay` on standard error (an `info` event with JSON logs).
fn print_summary(text: &str) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::SeqCst) {
        tracing::info!(summary = text, "finished");
    } else {
        eprintln!("{text}");
    }
}

fn apply(o: &Overrides) -> anyhow::Result<Config> {
    let mut cfg = Config::load(o.config.as_deref())?;
    if let Some(l) = &o.lake {
        cfg.lake.dir = l.clone();
    }
    if !o.prices.is_empty() {
        cfg.prices.files = o.prices.clone();
    }
    if let Some(f) = &o.owners {
        cfg.owners.file = Some(f.clone());
    }
    Ok(cfg)
}

/// One glibc malloc arena (the default allows eight per core), and a fixed mmap threshold of 1 MiB.
///
/// Several threads allocate large buffers: decoding, the pipeline, and a commit's file writers, each of
/// which glibc would give an arena of its own, and memory freed into one arena is not reused by the others
/// (the decoder's batches are freed by the pipeline). Small allocations go through glibc's per-thread
/// caches without the arena's lock. Measured on `replay` of 10M events: peak RSS 656 MiB with the default,
/// 580–609 with two arenas (fifth round of issue 6), and in its thirteenth round 426–436 with two against
/// 407–418 with one, at the same speed (bench/README.md).
///
/// glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so after the
/// first batches every column buffer and Parquet page came from the heap, where a buffer freed among live
/// small blocks cannot go back to the system: the heap crept up with the run's length. Blocks of 1 MiB and
/// more (batch columns, a commit's encoded pages, a dedup run's merge buffers) are mapped and unmapped
/// instead. Measured on `replay` (nineteenth round of issue 6, idle machine, three runs each): peak RSS at
/// 10M events 239–246 → 227–231 MiB, at 1M 216–218 → 210–212 MiB, for ~3 % more CPU (system time: page
/// faults of fresh mappings); 2 MiB gave 228–232 at 10M. `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=N` or
/// `MALLOC_MMAP_THRESHOLD_=N` overrides it.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // unless the threshold is set in the environment (glibc reads it there before `main`)
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        let threshold_set =
            tunables.contains("malloc.mmap_threshold") || std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some();
        // SAFETY: mallopt only sets allocator parameters; called first thing in main, before any thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            if !threshold_set {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aifinops: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if JSON_LOGS.load(std::sync::atomic::Ordering::SeqCst) {
                tracing::error!(error = format!("{e:#}"), "aifinops failed");
            } else {
                eprintln!("aifinops: error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo { dir, metrics_listen, hold } => {
            let mut cfg = Config::default();
            init_logging(&Config {
                log: config::LogConfig { level: "error".into(), ..cfg.log.clone() },
                ..cfg.clone()
            });
            cfg.metrics.listen = metrics_listen;
            cfg.lake.dir = dir.join("lake");
            let served = match health::start(&cfg).await {
                Ok(a) => a,
                Err(e) => {
                    println!("(not serving /metrics: {e:#})");
                    None
                }
            };
            demo::run(&dir, served, hold).await
        }
        Command::Run { o, brokers, topics, group, alert_topic, until_caught_up } => {
            let mut cfg = apply(&o)?;
            if let Some(b) = brokers {
                cfg.kafka.brokers = b;
            }
            if !topics.is_empty() {
                cfg.kafka.topics = topics;
            }
            if let Some(g) = group {
                cfg.kafka.group = g;
            }
            if let Some(t) = alert_topic {
                cfg.kafka.alert_topic = t;
            }
            init_logging(&cfg);
            health::start(&cfg).await?;
            let stop = run::shutdown_signal();
            let summary = run::run(&cfg, stop, until_caught_up).await?;
            print_summary(&summary);
            Ok(())
        }
        Command::Replay { o, force, format, files } => {
            let cfg = apply(&o)?;
            init_logging(&cfg);
            let files: Vec<(PathBuf, Format)> = files.iter().map(|f| split_format(f, format)).collect();
            let summary = replay::run(&cfg, &files, force).await?;
            print_summary(&summary);
            Ok(())
        }
        Command::Query { lake, format, sql } => {
            let out = query::run(&lake, &sql, &format).await?;
            print!("{out}");
            Ok(())
        }
        Command::Config { action } => match action {
            ConfigAction::Example => {
                print!("{}", config::EXAMPLE);
                Ok(())
            }
            ConfigAction::Check { file } => {
                print!("{}", config::check(&file)?);
                Ok(())
            }
        },
        Command::Prices { action: PricesAction::Check { catalogs, no_builtin, format, files } } => {
            let files: Vec<(PathBuf, Format)> = files.iter().map(|f| split_format(f, format)).collect();
            let report = prices::check(&catalogs, !no_builtin, files)?;
            print!("{}", report.render(&catalogs, !no_builtin));
            if !report.unpriced.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Prices { action: PricesAction::Export { catalogs, no_builtin, at, tier, models } } => {
            let at_ms = match at {
                Some(d) => aifinops_ingest::catalog::parse_date_ms(&d)
                    .with_context(|| format!("--at {d:?} is not YYYY-MM-DD"))?,
                None => pipeline::now_ms(),
            };
            print!("{}", prices::export(&catalogs, !no_builtin, at_ms, &tier, &models)?);
            Ok(())
        }
        Command::Forecast(args) => forecast::run(args).await,
        Command::Whatif(args) => whatif::run(args).await,
        Command::Report(args) => report::run(args).await,
        Command::Export { what: ExportWhat::Focus(args) } => focus::run(args).await,
        Command::Produce { brokers, topic, partitions, files } => {
            let n = demo::produce_files(&brokers, &topic, partitions, &files).await?;
            eprintln!("produced {n} records to {topic}");
            Ok(())
        }
        Command::Gen { out, seed, day, events, teams, keys, owners_out } => {
            let start = match day {
                Some(d) => aifinops_ingest::catalog::parse_date_ms(&d)
                    .with_context(|| format!("--day {d:?} is not YYYY-MM-DD"))?,
                None => demo::yesterday_ms(),
            };
            if let Some(f) = &owners_out {
                std::fs::write(f, traffic::bench_owners(teams)).with_context(|| format!("writing {}", f.display()))?;
            }
            let mut w: Box<dyn std::io::Write> = if out.as_os_str() == "-" {
                Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
            } else {
                let f = std::fs::File::create(&out).with_context(|| format!("writing {}", out.display()))?;
                Box::new(std::io::BufWriter::with_capacity(1 << 20, f))
            };
            match events {
                Some(n) => traffic::bench_events(&mut w, n, teams, keys, start, seed),
                None => {
                    w.write_all((traffic::demo_day(start, seed).join("\n") + "\n").as_bytes()).and_then(|_| w.flush())
                }
            }
            .with_context(|| format!("writing {}", out.display()))
        }
    }
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s)
        .ok_or_else(|| format!("unknown format {s:?}; one of {}", Format::ALL.map(|f| f.as_str()).join(", ")))
}

/// `FORMAT:PATH` names a file's own format; anything else is a path in the default format.
fn split_format(arg: &str, default: Format) -> (PathBuf, Format) {
    match arg.split_once(':').and_then(|(f, p)| Format::parse(f).map(|f| (p, f))) {
        Some((path, f)) if !path.is_empty() => (PathBuf::from(path), f),
        _ => (PathBuf::from(arg), default),
    }
}
