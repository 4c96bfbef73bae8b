//! The configuration tree: defaults, then the TOML file, then `AIFINOPS__SECTION__KEY` environment
//! variables, then command-line flags. Unknown keys are errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aifinops_aggregate::{BudgetConfig, SpikeConfig};
use aifinops_ingest::{Format, RawPolicy};
use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The example configuration shipped with aifinops (`aifinops config example`); a test parses it.
pub const EXAMPLE: &str = include_str!("../aifinops.example.toml");

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub lake: LakeConfig,
    #[serde(default)]
    pub prices: PricesConfig,
    #[serde(default)]
    pub owners: OwnersConfig,
    #[serde(default, rename = "budget")]
    pub budgets: Vec<BudgetConfig>,
    #[serde(default)]
    pub drift: DriftConfig,
    #[serde(default)]
    pub retry_storm: RetryStormConfig,
    #[serde(default)]
    pub spike: SpikeConfig,
    #[serde(default)]
    pub avro: AvroConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Name of this pipeline; the CloudEvents `source` of its alerts is `aifinops/<name>`.
    pub name: String,
    /// Tumbling window sizes (`30s`, `1m`, `1h`, `1d`).
    pub windows: Vec<String>,
    /// Bounded out-of-orderness: the watermark trails the event-time clock by this much.
    #[serde(with = "humantime_serde")]
    pub watermark_delay: Duration,
    /// Rows for windows that ended more than this before the watermark are flagged `late = true`.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// A partition silent for this long no longer holds the watermark back.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Event times further than this ahead of the wall clock do not advance the watermark beyond it.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Redelivered events (same `event_id`) within this much event time count once.
    #[serde(with = "humantime_serde")]
    pub dedup_horizon: Duration,
    /// Where the dedup set keeps the ids of its horizon (unlinked files, gone when the process ends); the
    /// system's temporary directory (`$TMPDIR`, else `/tmp`) when unset. Best on a local disk, not tmpfs.
    pub spill_dir: Option<PathBuf>,
    /// Most records decoded into one micro-batch.
    pub batch_max_events: usize,
    /// Longest wait to fill a micro-batch.
    #[serde(with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// How often the lake commits (offsets, closed windows, alerts, state).
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Records larger than this are dead letters.
    pub max_record_bytes: usize,
    /// Most distinct keys (dimension combinations) a window holds; beyond it the least expensive keys are
    /// folded, per owner, into one row whose other dimensions are `__other__` (owner totals stay exact).
    pub max_keys_per_window: usize,
    /// What dead letters keep of a record: `redacted` (secrets fingerprinted) or `raw`.
    pub dead_letter_raw: RawPolicy,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            name: "aifinops".into(),
            windows: vec!["1m".into(), "1h".into(), "1d".into()],
            watermark_delay: Duration::from_secs(5),
            allowed_lateness: Duration::from_secs(24 * 3600),
            idle_timeout: Duration::from_secs(30),
            max_future_skew: Duration::from_secs(3600),
            dedup_horizon: Duration::from_secs(24 * 3600),
            spill_dir: None,
            batch_max_events: 50_000,
            batch_max_wait: Duration::from_millis(500),
            commit_interval: Duration::from_secs(2),
            max_record_bytes: 1 << 20,
            max_keys_per_window: 100_000,
            dead_letter_raw: RawPolicy::Redacted,
        }
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topics: Vec<String>,
    /// The format of each input topic's records (`auto`, `canonical`, `litellm`, `otel`, `openai`,
    /// `anthropic`, `gemini`, `bedrock`, `kong`, `portkey`, `cloudflare`, `cloudevents`, `avro`);
    /// topics not listed are `auto` (detected per record, never guessed).
    pub formats: BTreeMap<String, Format>,
    pub group: String,
    pub alert_topic: String,
    /// Alerts on the topic as `json` (CloudEvents structured mode) or `avro` (`schemas/alert.avsc`,
    /// framed per `avro.alert_schema_id`).
    pub alert_format: AlertFormat,
    /// Topic for records that could not be read; empty = lake only.
    pub dead_letter_topic: String,
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Longest time between polls before the member leaves the group; also the rebalance timeout
    /// (how long a rebalance waits for a member that died), so keep it short. At least `session_timeout`.
    #[serde(with = "humantime_serde")]
    pub max_poll_interval: Duration,
    /// Extra librdkafka consumer properties (security, `queued.max.messages.kbytes`, ...). See
    /// [`librdkafka_properties`] for the accepted spellings.
    #[serde(deserialize_with = "librdkafka_properties")]
    pub consumer: BTreeMap<String, String>,
    /// Extra librdkafka producer properties (alerts and dead letters).
    #[serde(deserialize_with = "librdkafka_properties")]
    pub producer: BTreeMap<String, String>,
}

/// Credentials (`ssl.key.password`, `sasl.password`, ...) are never printed: the configuration is
/// debug-printed in errors and logs with those values redacted.
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use aifinops_schemas::secret::redact_kafka_properties;
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("formats", &self.formats)
            .field("group", &self.group)
            .field("alert_topic", &self.alert_topic)
            .field("alert_format", &self.alert_format)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("session_timeout", &self.session_timeout)
            .field("max_poll_interval", &self.max_poll_interval)
            .field("consumer", &redact_kafka_properties(&self.consumer))
            .field("producer", &redact_kafka_properties(&self.producer))
            .finish()
    }
}

/// A librdkafka property value as a config source may spell it: TOML and environment values may be
/// numbers or booleans (`AIFINOPS__KAFKA__CONSUMER__SESSION_TIMEOUT_MS=6000`), and an unquoted dotted TOML
/// key (`security.protocol = "ssl"`) or a dotted environment name is a nested table.
#[derive(Deserialize)]
#[serde(untagged)]
enum PropertyValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Table(BTreeMap<String, PropertyValue>),
}

/// librdkafka properties: `"security.protocol" = "ssl"` (quoted), `security.protocol = "ssl"` (nested)
/// and, for environment variables whose names cannot hold dots, `security_protocol` all name
/// `security.protocol` (librdkafka's properties settable as text have no underscores, but `log_level` and
/// `enabled_events`). Values may be numbers or booleans; librdkafka gets their text.
fn librdkafka_properties<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    fn flatten(prefix: &str, table: BTreeMap<String, PropertyValue>, out: &mut BTreeMap<String, String>) {
        const UNDERSCORED: [&str; 2] = ["log_level", "enabled_events"];
        for (k, v) in table {
            let key = if UNDERSCORED.contains(&k.as_str()) { k } else { k.replace('_', ".") };
            let key = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
            let text = match v {
                PropertyValue::Table(t) => {
                    flatten(&key, t, out);
                    continue;
                }
                PropertyValue::Bool(b) => b.to_string(),
                PropertyValue::Int(i) => i.to_string(),
                PropertyValue::Float(x) => x.to_string(),
                PropertyValue::Text(s) => s,
            };
            out.insert(key, text);
        }
    }
    let table = BTreeMap::<String, PropertyValue>::deserialize(d)?;
    let mut out = BTreeMap::new();
    flatten("", table, &mut out);
    Ok(out)
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "localhost:9092".into(),
            topics: vec!["llm-usage".into()],
            formats: BTreeMap::new(),
            group: "aifinops".into(),
            alert_format: AlertFormat::Json,
            alert_topic: "aifinops.alerts".into(),
            dead_letter_topic: "aifinops.dead-letters".into(),
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(30),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

/// How alerts are encoded on the alert topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertFormat {
    #[default]
    Json,
    Avro,
}

/// Avro input (and Avro alerts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AvroConfig {
    /// Confluent Schema Registry base URL (`http://host:8081`); writer schemas are fetched by id.
    pub schema_registry_url: String,
    /// Without a registry: writer schemas as `.avsc` files named `<id>.avsc` (or directories of them).
    pub schema_files: Vec<PathBuf>,
    /// Registered id of `schemas/alert.avsc` for Confluent framing of Avro alerts; unset = single-object
    /// encoding (fingerprint framing, no registry needed).
    pub alert_schema_id: Option<u32>,
}

impl AvroConfig {
    pub fn enabled(&self) -> bool {
        !self.schema_registry_url.is_empty() || !self.schema_files.is_empty()
    }
}

/// Reconciliation of the gateway's reported cost with ours (`aifinops.cost.drift`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Alert when ours and the reported cost of an owner/model/day differ by more than this percent.
    pub percent: String,
    /// ... and by at least this many USD (small days are noise).
    pub min_usd: String,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig { percent: "5".into(), min_usd: "1".into() }
    }
}

/// `aifinops.retry.storm`: failed + retried calls' cost as a share of a workflow's spend in a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryStormConfig {
    /// The closed window checked (one of `pipeline.windows`).
    pub window: String,
    /// Alert when failed and retried calls cost at least this percent of the workflow's spend ...
    pub share_percent: String,
    /// ... and at least this many USD.
    pub min_usd: String,
}

impl Default for RetryStormConfig {
    fn default() -> Self {
        RetryStormConfig { window: "1h".into(), share_percent: "30".into(), min_usd: "5".into() }
    }
}

impl RetryStormConfig {
    /// (window ms, percent, min USD) as exact 10^-18 units.
    pub fn thresholds(&self, windows: &[String]) -> anyhow::Result<(i64, i128, i128)> {
        if !windows.contains(&self.window) {
            anyhow::bail!("retry_storm.window {:?} is not one of pipeline.windows {windows:?}", self.window);
        }
        let w = aifinops_aggregate::WindowSize::parse(&self.window)?;
        let pct = aifinops_schemas::money::parse_usd("retry_storm.share_percent", &self.share_percent)?;
        let min = aifinops_schemas::money::parse_usd("retry_storm.min_usd", &self.min_usd)?;
        if pct <= 0 || min < 0 {
            anyhow::bail!("retry_storm.share_percent must be positive and retry_storm.min_usd not negative");
        }
        Ok((w.ms, pct, min))
    }
}

impl DriftConfig {
    /// (percent, min USD) as exact 10^-18 units.
    pub fn thresholds(&self) -> anyhow::Result<(i128, i128)> {
        let pct = aifinops_schemas::money::parse_usd("drift.percent", &self.percent)?;
        let min = aifinops_schemas::money::parse_usd("drift.min_usd", &self.min_usd)?;
        if pct <= 0 || min < 0 {
            anyhow::bail!("drift.percent must be positive and drift.min_usd not negative");
        }
        Ok((pct, min))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    pub dir: PathBuf,
    /// This member's name in a lake shared by several members of one consumer group (`run` only), e.g. the
    /// pod name of a StatefulSet: each writer has its own commit chain and partitions are handed over
    /// through the lake's ledger. Empty: the lake has one writer. Letters, digits, `-`, `_`, `.`.
    pub writer: String,
}

impl Default for LakeConfig {
    fn default() -> Self {
        LakeConfig { dir: PathBuf::from("./aifinops-lake"), writer: String::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricesConfig {
    /// Load the built-in catalog first (common models' list prices).
    pub builtin: bool,
    /// LiteLLM JSON (`.json`) or aifinops TOML catalogs, later files override earlier ones.
    pub files: Vec<PathBuf>,
}

impl Default for PricesConfig {
    fn default() -> Self {
        PricesConfig { builtin: true, files: vec![] }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OwnersConfig {
    /// Owner map TOML; without one every call is `unattributed`.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prometheus listen address for `run`, e.g. `127.0.0.1:9898`; empty = off.
    pub listen: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `aifinops=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: "text".into(), level: "info".into() }
    }
}

impl Config {
    /// Defaults, then `file` (if any), then `AIFINOPS__…` environment variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                anyhow::bail!("config file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(Env::prefixed("AIFINOPS__").split("__"));
        let cfg: Config = fig.extract().with_context(|| match file {
            Some(f) => format!("invalid configuration in {} (or AIFINOPS__* environment variables)", f.display()),
            None => "invalid configuration in AIFINOPS__* environment variables".to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[cfg(test)]
    pub fn from_toml_str(text: &str) -> anyhow::Result<Config> {
        let cfg: Config = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)).extract()?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let sizes: Vec<_> = self
            .pipeline
            .windows
            .iter()
            .map(|w| aifinops_aggregate::WindowSize::parse(w))
            .collect::<Result<_, _>>()
            .context("pipeline.windows")?;
        let finest = sizes.iter().map(|s| s.ms).min().context("pipeline.windows must not be empty")?;
        if 86_400_000 % finest != 0 {
            anyhow::bail!(
                "pipeline.windows: the finest window ({finest} ms) must divide a day evenly (budget periods are days and months)"
            );
        }
        if self.kafka.consumer.get("partition.assignment.strategy").is_some_and(|s| s.contains("cooperative")) {
            anyhow::bail!(
                "kafka.consumer.\"partition.assignment.strategy\": cooperative rebalancing is not supported yet \
                 (a rollback to the lake's commit must re-position every assigned partition); use range or roundrobin"
            );
        }
        if self.kafka.max_poll_interval < self.kafka.session_timeout {
            anyhow::bail!("kafka.max_poll_interval must be at least kafka.session_timeout");
        }
        if self.pipeline.batch_max_events == 0 {
            anyhow::bail!("pipeline.batch_max_events must be at least 1");
        }
        aifinops_aggregate::AlertRules::new("check", &self.budgets).context("budget")?;
        let avro_topics: Vec<&String> =
            self.kafka.formats.iter().filter(|(_, f)| **f == Format::Avro).map(|(t, _)| t).collect();
        if !avro_topics.is_empty() && !self.avro.enabled() {
            anyhow::bail!(
                "kafka.formats: {avro_topics:?} are Avro but no writer schemas are configured \
                 (avro.schema_registry_url or avro.schema_files)"
            );
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            anyhow::bail!(
                "metrics.listen {:?} is not an address with a port (e.g. \"127.0.0.1:9898\", or \"\" for off)",
                self.metrics.listen
            );
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            anyhow::bail!("log.format {:?} must be \"text\" or \"json\"", self.log.format);
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| anyhow::anyhow!("log.level {:?} is not a tracing filter: {e}", self.log.level))?;
        self.drift.thresholds().context("drift")?;
        self.retry_storm.thresholds(&self.pipeline.windows).context("retry_storm")?;
        if self.spike.enabled {
            if !self.pipeline.windows.contains(&self.spike.window) {
                anyhow::bail!(
                    "spike.window {:?} is not one of pipeline.windows {:?}",
                    self.spike.window,
                    self.pipeline.windows
                );
            }
            aifinops_aggregate::SpikeDetector::new("check", self.spike.clone()).context("spike")?;
        }
        Ok(())
    }
}

/// `aifinops config check FILE`: the file parses and validates, and every file it names can be read
/// (price catalogs, owner map, Avro schemas) and the lake directory can be written. One line per check;
/// the first failure is the error, naming the setting and the file.
pub fn check(file: &Path) -> anyhow::Result<String> {
    let cfg = Config::load(Some(file))?;
    let mut out = String::new();
    let (catalog, owners) = crate::pipeline::load_reference(&cfg)?;
    out.push_str(&format!(
        "prices: {} priced models ({} cost fields not priced yet) from {} file(s){}\n",
        catalog.stats.priced_models,
        catalog.stats.ignored_cost_fields,
        cfg.prices.files.len(),
        if cfg.prices.builtin { " and the built-in catalog" } else { "" }
    ));
    match &cfg.owners.file {
        Some(f) => out.push_str(&format!("owners: {} owners from {}\n", owners.owners().len(), f.display())),
        None => out.push_str("owners: no owner map (every call is unattributed)\n"),
    }
    for f in &cfg.avro.schema_files {
        anyhow::ensure!(f.exists(), "avro.schema_files: {} does not exist", f.display());
    }
    let lake = &cfg.lake.dir;
    let probe_dir = if lake.exists() {
        lake.clone()
    } else {
        let parent = lake.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        anyhow::ensure!(
            parent.is_dir(),
            "lake.dir {}: its parent directory {} does not exist",
            lake.display(),
            parent.display()
        );
        parent.to_path_buf()
    };
    let probe = probe_dir.join(format!(".aifinops-check-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("lake.dir {}: not writable", lake.display()))?;
    let _ = std::fs::remove_file(&probe);
    out.push_str(&format!("lake: {} is writable\n", lake.display()));
    out.push_str(&format!(
        "{}: ok ({} windows, {} budgets, {} input topics, metrics {})\n",
        file.display(),
        cfg.pipeline.windows.len(),
        cfg.budgets.len(),
        cfg.kafka.topics.len(),
        if cfg.metrics.listen.is_empty() { "off".to_string() } else { format!("on {}", cfg.metrics.listen) }
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_the_documented_defaults() {
        let cfg = Config::from_toml_str(EXAMPLE).expect("aifinops.example.toml parses");
        assert_eq!(cfg.pipeline.windows, vec!["1m", "1h", "1d"]);
        assert_eq!(cfg.pipeline.allowed_lateness, Duration::from_secs(86_400));
        assert_eq!(cfg.kafka.topics, vec!["llm-usage"]);
        assert!(!cfg.budgets.is_empty());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Config::from_toml_str("[kafka]\nbroker = \"x:1\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("broker"), "{e:#}");
        let e = Config::from_toml_str("[pipeline]\nwindows = [\"7m\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("divide a day"), "{e:#}");
    }

    #[test]
    fn librdkafka_properties_are_read_in_every_spelling() {
        let cfg = Config::from_toml_str(
            r#"
[kafka.consumer]
"security.protocol" = "ssl"
ssl.ca.location = "/etc/aifinops/ca.pem"
"ssl.key.password" = "hunter2"
"session.timeout.ms" = 6000
log_level = 7
[kafka.producer]
sasl_mechanism = "SCRAM-SHA-512"
"enable.idempotence" = false
"sasl.password" = "s3cr3t"
"#,
        )
        .unwrap();
        let c = &cfg.kafka.consumer;
        assert_eq!(c["security.protocol"], "ssl");
        assert_eq!(c["ssl.ca.location"], "/etc/aifinops/ca.pem");
        assert_eq!(c["session.timeout.ms"], "6000");
        assert_eq!(c["log_level"], "7", "librdkafka's own underscored names stay");
        let p = &cfg.kafka.producer;
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(p["enable.idempotence"], "false");
        // the credentials are in the config, but never in its debug print (logs, error messages)
        assert_eq!(c["ssl.key.password"], "hunter2");
        let shown = format!("{cfg:?} {cfg:#?}");
        assert!(!shown.contains("hunter2") && !shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("ssl.key.password") && shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("/etc/aifinops/ca.pem"), "{shown}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment's own error type
    fn librdkafka_properties_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "aifinops.toml",
                "[kafka]\nbrokers = \"kafka-1:9093\"\n[kafka.consumer]\n\"security.protocol\" = \"plaintext\"\n",
            )?;
            jail.set_env("AIFINOPS__KAFKA__CONSUMER__SECURITY_PROTOCOL", "ssl");
            jail.set_env("AIFINOPS__KAFKA__CONSUMER__SSL_CA_LOCATION", "/run/secrets/ca.pem");
            jail.set_env("AIFINOPS__KAFKA__CONSUMER__SESSION_TIMEOUT_MS", "6000");
            jail.set_env("AIFINOPS__KAFKA__PRODUCER__SASL_PASSWORD", "s3cr3t");
            let cfg = Config::load(Some(Path::new("aifinops.toml"))).expect("config");
            assert_eq!(cfg.kafka.brokers, "kafka-1:9093");
            assert_eq!(cfg.kafka.consumer["security.protocol"], "ssl", "the environment wins over the file");
            assert_eq!(cfg.kafka.consumer["ssl.ca.location"], "/run/secrets/ca.pem");
            assert_eq!(cfg.kafka.consumer["session.timeout.ms"], "6000");
            assert_eq!(cfg.kafka.producer["sasl.password"], "s3cr3t");
            assert!(!format!("{cfg:?}").contains("s3cr3t"));
            Ok(())
        });
    }

    #[test]
    fn topic_formats_are_checked() {
        let cfg =
            Config::from_toml_str("[kafka]\ntopics = [\"a\", \"b\"]\n[kafka.formats]\na = \"litellm\"\n").unwrap();
        assert_eq!(cfg.kafka.formats.get("a"), Some(&Format::Litellm));
        let e = Config::from_toml_str("[kafka]\ntopics = [\"a\"]\n[kafka.formats]\na = \"helicone\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("helicone"), "{e:#}");
        let e = Config::from_toml_str("[kafka]\ntopics = [\"a\"]\n[kafka.formats]\na = \"avro\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("schema_registry_url"), "{e:#}");
        let e = Config::from_toml_str("[drift]\npercent = \"-1\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("drift"), "{e:#}");
    }
}
