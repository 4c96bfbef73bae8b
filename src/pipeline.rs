//! The pipeline that `run`, `replay` and `demo` share: decode -> dedup -> windows + rules -> lake commit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use aifinops_aggregate::{AlertRules, Deduplicator, Detector, Emitted, RulesState, WindowEngine, WindowSize};
use aifinops_ingest::{Decoder, OwnerMap, PriceCatalog};
use aifinops_schemas::{Alert, DeadLetter};
use aifinops_sink::{Commit, CommitInfo, Lake, Manifest, StateSnapshot};
use anyhow::Context;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;

use crate::config::Config;

/// Counters since start (also exported as Prometheus metrics).
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub records: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub dead_letters: u64,
    pub unpriced: u64,
    pub unattributed: u64,
    pub late_rows: u64,
    pub alerts: u64,
    pub commits: u64,
}

pub struct Pipeline {
    cfg: Config,
    pub decoder: Decoder,
    /// The owner map (shared with the decoder), for the governance context of alerts.
    owners: Arc<OwnerMap>,
    dedup: Deduplicator,
    windows: WindowEngine,
    rules: AlertRules,
    /// Detectors over closed windows (spikes, retry storms, forecasts plug in here).
    detectors: Vec<Box<dyn Detector>>,
    lake: Lake,
    /// The next end of a spike-scored window: when the watermark passes it, a live pipeline commits at once
    /// (alert latency).
    boundary: Option<i64>,
    /// Live input (`run`): commit as soon as a scored window closes. A backfill commits on its interval only.
    live: bool,
    /// Open window rows right after the last commit: a commit is also due when 50 000 more are open,
    /// so state between commits is bounded by keys, not by the events of a commit interval.
    open_after_commit: usize,
    emitted: Vec<Emitted>,
    /// A lake shared by several members: the finest partial rows since the last commit, for the alert rules,
    /// which run at the commit point over the lake-wide rule state (see [`Pipeline::commit`]).
    rule_rows: Vec<datafusion::arrow::array::RecordBatch>,
    alerts: Vec<Alert>,
    dead: Vec<DeadLetter>,
    /// A shared lake: the departed writer, seq and unsent outbox the next commit adopts.
    adoption: Option<(String, u64, aifinops_sink::Outbox)>,
    watermark: Option<i64>,
    dirty: bool,
    last_commit: Instant,
    pub totals: Totals,
}

/// Governance context from the owner map: the owner's risk owner and approver on every alert about it.
fn enrich(owners: &OwnerMap, a: &mut Alert) {
    let Some(o) = owners.by_id(a.owner()).cloned() else { return };
    if let Some(d) = a.data.as_object_mut() {
        if d.get("risk_owner").and_then(|v| v.as_str()).is_none_or(str::is_empty) {
            d.insert("risk_owner".into(), o.risk_owner.into());
        }
        d.insert("approver".into(), o.approver.into());
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Loads the price catalog and owner map the config names.
pub fn load_reference(cfg: &Config) -> anyhow::Result<(PriceCatalog, OwnerMap)> {
    let mut catalog = if cfg.prices.builtin { PriceCatalog::builtin() } else { PriceCatalog::default() };
    for f in &cfg.prices.files {
        catalog.add_file(f).with_context(|| format!("loading prices from {}", f.display()))?;
    }
    let owners = match &cfg.owners.file {
        Some(f) => OwnerMap::load(f)?,
        None => OwnerMap::default(),
    };
    Ok((catalog, owners))
}

impl Pipeline {
    /// Opens the lake (recovering from any crash) and restores the state of its last commit.
    pub async fn open(cfg: &Config) -> anyhow::Result<(Pipeline, Option<Manifest>)> {
        let (catalog, owners) = load_reference(cfg)?;
        tracing::info!(
            priced_models = catalog.stats.priced_models,
            ignored_cost_fields = catalog.stats.ignored_cost_fields,
            owners = owners.owners().len(),
            "price catalog and owner map loaded"
        );
        let sizes = cfg.pipeline.windows.iter().map(|w| WindowSize::parse(w)).collect::<Result<Vec<_>, _>>()?;
        let windows = WindowEngine::new(sizes)?.with_key_cap(cfg.pipeline.max_keys_per_window);
        let rules = AlertRules::new(&format!("aifinops/{}", cfg.pipeline.name), &cfg.budgets)?;
        let drift = cfg.drift.thresholds()?;
        let storm = cfg.retry_storm.thresholds(&cfg.pipeline.windows)?;
        std::fs::create_dir_all(&cfg.lake.dir)
            .with_context(|| format!("creating lake directory {}", cfg.lake.dir.display()))?;
        let writer = (!cfg.lake.writer.is_empty()).then_some(cfg.lake.writer.as_str());
        let (lake, recovered) =
            Lake::open_as(&cfg.lake.dir, writer).with_context(|| format!("opening lake {}", cfg.lake.dir.display()))?;
        let owners = Arc::new(owners);
        let mut decoder = Decoder::new(
            Arc::new(catalog),
            owners.clone(),
            cfg.pipeline.max_record_bytes,
            cfg.pipeline.dead_letter_raw,
        );
        if cfg.avro.enabled() {
            let source = if cfg.avro.schema_registry_url.is_empty() {
                aifinops_ingest::avro::SchemaSource::Local { files: cfg.avro.schema_files.clone() }
            } else {
                aifinops_ingest::avro::SchemaSource::Registry { url: cfg.avro.schema_registry_url.clone() }
            };
            decoder = decoder.with_avro(aifinops_ingest::avro::AvroDecoder::new(source).context("avro")?);
        }
        let mut p = Pipeline {
            cfg: cfg.clone(),
            decoder,
            owners,
            dedup: Deduplicator::new(cfg.pipeline.dedup_horizon.as_millis() as i64)
                .spilling_to(cfg.pipeline.spill_dir.clone()),
            windows,
            rules,
            detectors: vec![
                Box::new(aifinops_aggregate::DriftDetector::new(
                    &format!("aifinops/{}", cfg.pipeline.name),
                    drift.0,
                    drift.1,
                )),
                Box::new(aifinops_aggregate::RetryStormDetector::new(
                    &format!("aifinops/{}", cfg.pipeline.name),
                    storm.0,
                    storm.1,
                    storm.2,
                )),
            ],
            lake,
            boundary: None,
            live: false,
            open_after_commit: 0,
            emitted: vec![],
            rule_rows: vec![],
            alerts: vec![],
            dead: vec![],
            adoption: None,
            watermark: None,
            dirty: false,
            last_commit: Instant::now(),
            totals: Totals::default(),
        };
        if cfg.spike.enabled {
            // `Config::validate` checked that spike.window is one of pipeline.windows
            p.detectors.push(Box::new(
                aifinops_aggregate::SpikeDetector::new(&format!("aifinops/{}", cfg.pipeline.name), cfg.spike.clone())
                    .context("spike")?,
            ));
        }
        let manifest = recovered.as_ref().map(|r| r.manifest.clone());
        match recovered {
            Some(r) => {
                p.restore(r.manifest.watermark_ms, r.state).await?;
                tracing::info!(seq = r.manifest.seq, watermark = ?r.manifest.watermark_ms, "resumed from the lake's last commit");
            }
            None => p.restore(None, StateSnapshot::default()).await?,
        }
        Ok((p, manifest))
    }

    /// Rebuilds the detectors' history (spike baselines) from the lake's rollups: the rollups are the
    /// state store, so a restart does not forget them.
    async fn warm_detectors(&mut self) -> anyhow::Result<()> {
        for d in &mut self.detectors {
            let Some((size, from, to)) = d.history() else { continue };
            let day = |ms: i64| {
                chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%d").to_string()
            };
            let ctx = crate::query::session(self.lake.root()).await?;
            let sql = format!(
                "SELECT window_start, owner, identity, sum(cost_usd) AS cost_usd FROM rollups \
                 WHERE \"window\" = '{}' AND date >= '{}' AND date <= '{}' \
                 AND window_start >= to_timestamp_millis({from}) AND window_start < to_timestamp_millis({to}) \
                 GROUP BY window_start, owner, identity ORDER BY window_start",
                size.label,
                day(from),
                day(to)
            );
            let batches = ctx
                .sql(&sql)
                .await
                .with_context(|| format!("reading {} history for {}", size.label, d.name()))?
                .collect()
                .await
                .with_context(|| format!("reading {} history for {}", size.label, d.name()))?;
            for b in &batches {
                d.warm(b).with_context(|| format!("rebuilding {} from the lake", d.name()))?;
            }
        }
        Ok(())
    }

    async fn restore(&mut self, watermark: Option<i64>, state: StateSnapshot) -> anyhow::Result<()> {
        self.windows.restore(state.partials)?;
        self.dedup.restore(&state.dedup)?;
        if let Some(w) = watermark {
            self.dedup.evict_before(w - self.cfg.pipeline.dedup_horizon.as_millis() as i64)?;
        }
        // `{"rules": …, "detectors": {name: …}}`; lakes written before detectors had state hold the rules only
        let (rules, detectors) = match state.rules {
            serde_json::Value::Object(mut o) if o.contains_key("detectors") => {
                (o.remove("rules").unwrap_or_default(), o.remove("detectors").unwrap_or_default())
            }
            other => (other, serde_json::Value::Null),
        };
        let rules: RulesState = if rules.is_null() {
            RulesState::default()
        } else {
            serde_json::from_value(rules).context("rule state")?
        };
        self.rules.restore(rules);
        for d in &mut self.detectors {
            d.restore(detectors.get(d.name()).unwrap_or(&serde_json::Value::Null))
                .with_context(|| format!("{} state", d.name()))?;
        }
        self.watermark = watermark;
        self.boundary = None;
        self.warm_detectors().await?;
        Ok(())
    }

    /// Discards everything since the last commit (after a rebalance).
    pub async fn rollback(&mut self) -> anyhow::Result<()> {
        let _ = self.decoder.finish();
        self.emitted.clear();
        self.rule_rows.clear();
        self.alerts.clear();
        self.dead.clear();
        self.dirty = false;
        match self.lake.recover()? {
            Some(r) => self.restore(r.manifest.watermark_ms, r.state).await?,
            None => self.restore(None, StateSnapshot::default()).await?,
        }
        tracing::info!("rolled back to the last lake commit after a rebalance");
        Ok(())
    }

    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// A lake shared by several members: takes over the open windows and unsent alerts that members which are
    /// gone (killed, never restarted under their name) left in their last commit, one commit each. Call
    /// with nothing uncommitted (at start, after a rollback). Returns how many were adopted.
    pub async fn adopt_orphans(&mut self, offsets: BTreeMap<String, BTreeMap<i32, i64>>) -> anyhow::Result<usize> {
        let orphans = self.lake.orphans()?;
        let n = orphans.len();
        for mut o in orphans {
            let rows: usize =
                o.partials.iter().filter(|(l, _)| l != aifinops_aggregate::DIMS_PART).map(|(_, b)| b.num_rows()).sum();
            tracing::info!(
                writer = %o.writer, seq = o.seq, open_rows = rows, alerts = o.outbox.alerts.len(),
                dead_letters = o.outbox.dead_letters.len(),
                "adopting the open windows and unsent alerts of a member that is gone"
            );
            self.windows.absorb(std::mem::take(&mut o.partials))?;
            self.adoption = Some((o.writer.clone(), o.seq, std::mem::take(&mut o.outbox)));
            self.dirty = true;
            self.commit(offsets.clone(), BTreeMap::new(), BTreeMap::new(), true, false)
                .await
                .with_context(|| format!("adopting the last commit of writer {}", o.writer))?;
            self.adoption = None;
            self.lake.retire(o)?;
            metrics::counter!("aifinops_writers_adopted_total").increment(1);
        }
        Ok(n)
    }

    /// Whether this pipeline is one named writer of a lake shared by several members.
    pub fn shared_lake(&self) -> bool {
        self.lake.ledger().is_some()
    }

    /// Marks the input as live (`run`): see [`Pipeline::commit_due`].
    pub fn set_live(&mut self) {
        self.live = true;
    }

    /// A commit is due after the commit interval, or, for live input, at once when the watermark has passed
    /// the end of a spike-scored window (so its alert is on the topic within a second of the watermark).
    pub fn commit_due(&self) -> bool {
        let window_closed = match (self.boundary, self.watermark) {
            (Some(b), Some(w)) => self.live && w >= b,
            _ => false,
        };
        let state_grew = self.windows.open_rows() > self.open_after_commit + 50_000;
        (self.dirty && (self.last_commit.elapsed() >= self.cfg.pipeline.commit_interval || state_grew)) || window_closed
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Processes what the decoder holds: dedup, windows, rules. `watermark` is the input's new watermark.
    pub async fn process(&mut self, records: u64, watermark: Option<i64>) -> anyhow::Result<()> {
        let decoded = self.decoder.finish();
        self.process_decoded(decoded, records, watermark).await
    }

    /// Like [`Pipeline::process`], for records decoded elsewhere (`replay` decodes on a thread of its own).
    pub async fn process_decoded(
        &mut self,
        decoded: aifinops_ingest::Decoded,
        records: u64,
        watermark: Option<i64>,
    ) -> anyhow::Result<()> {
        self.totals.records += records;
        self.totals.accepted += decoded.stats.accepted;
        self.totals.dead_letters += decoded.stats.dead_letters;
        self.totals.unpriced += decoded.stats.unpriced;
        self.totals.unattributed += decoded.stats.unattributed;
        metrics::counter!("aifinops_records_consumed_total").increment(records);
        metrics::counter!("aifinops_events_decoded_total").increment(decoded.stats.accepted);
        metrics::counter!("aifinops_unpriced_requests_total").increment(decoded.stats.unpriced);
        metrics::counter!("aifinops_unattributed_requests_total").increment(decoded.stats.unattributed);
        for d in &decoded.dead_letters {
            tracing::warn!(source = %d.source, kind = d.kind, reason = %d.reason, "dead letter");
            metrics::counter!("aifinops_dead_letters_total", "reason" => d.kind).increment(1);
        }
        if records > 0 || !decoded.dead_letters.is_empty() {
            self.dirty = true;
        }
        self.dead.extend(decoded.dead_letters);
        // each stage's input is let go once the next holds what it needs: the windows free the events
        // before they compact, where memory peaks
        let (events, dups) = self.dedup.filter(&decoded.batch)?;
        drop(decoded.batch);
        self.totals.duplicates += dups;
        metrics::counter!("aifinops_duplicate_events_total").increment(dups);
        let (marked, retries) = self.dedup.mark_retries(&events)?;
        drop(events);
        let events = marked;
        metrics::counter!("aifinops_step_retries_total").increment(retries);
        if events.num_rows() > 0 {
            let lateness = self.cfg.pipeline.allowed_lateness.as_millis() as i64;
            let finest = self.windows.add(events, self.watermark, lateness).await?;
            let late: u64 = late_requests(&finest);
            self.totals.late_rows += late;
            metrics::counter!("aifinops_late_events_total").increment(late);
            if self.shared_lake() {
                self.rule_rows.push(finest);
            } else {
                let mut alerts = self.rules.observe(&finest, self.watermark, now_ms());
                alerts.iter_mut().for_each(|a| enrich(&self.owners, a));
                self.alerts.extend(alerts);
            }
        }
        if let Some(w) = watermark
            && self.watermark.is_none_or(|cur| w > cur)
        {
            // the first advance since the last commit: the end of the window the last close stopped in
            if self.cfg.spike.enabled
                && self.boundary.is_none()
                && let Ok(size) = WindowSize::parse(&self.cfg.spike.window)
            {
                self.boundary = Some((self.watermark.unwrap_or(w).div_euclid(size.ms) + 1) * size.ms);
            }
            self.watermark = Some(w);
            metrics::gauge!("aifinops_watermark_seconds").set(w as f64 / 1000.0);
        }
        Ok(())
    }

    /// Commits closed windows, alerts, dead letters, state and the input positions (`ranges`: the Kafka
    /// offsets consumed since the last commit). `final_flush` closes every window (end of a bounded input,
    /// or a member leaving a shared lake).
    pub async fn commit(
        &mut self,
        offsets: BTreeMap<String, BTreeMap<i32, i64>>,
        ranges: BTreeMap<String, BTreeMap<i32, (i64, i64)>>,
        files: BTreeMap<String, u64>,
        publish: bool,
        final_flush: bool,
    ) -> anyhow::Result<CommitInfo> {
        let close_at = if final_flush { None } else { self.watermark };
        if close_at.is_some() || final_flush {
            let closed = self.windows.close(close_at).await?;
            for e in &closed {
                for d in &mut self.detectors {
                    let mut alerts = d.on_closed(e, now_ms());
                    alerts.iter_mut().for_each(|a| enrich(&self.owners, a));
                    self.alerts.extend(alerts);
                }
            }
            self.emitted.extend(closed);
            self.open_after_commit = self.windows.open_rows();
            for d in &mut self.detectors {
                let mut alerts = d.on_watermark(close_at, now_ms());
                alerts.iter_mut().for_each(|a| enrich(&self.owners, a));
                self.alerts.extend(alerts);
            }
            self.boundary = None;
        }
        let shared = self.shared_lake();
        if !shared && let Some(w) = self.watermark {
            let mut alerts = self.rules.project(w, now_ms());
            alerts.iter_mut().for_each(|a| enrich(&self.owners, a));
            self.alerts.extend(alerts);
        }
        let dedup_cutoff = self.watermark.map(|w| w - self.cfg.pipeline.dedup_horizon.as_millis() as i64);
        if let (Some(w), Some(cut)) = (self.watermark, dedup_cutoff) {
            self.dedup.evict_before(cut)?;
            if !shared {
                self.rules.prune(w);
            }
        }
        let (dedup_segment, dedup_max_ts) = self.dedup.take_segment();
        let partials = self.windows.snapshot();
        crate::health::window_state(&partials);
        // the dictionary of the open rows' dimension ids, then the open rows
        let dims = (aifinops_aggregate::DIMS_PART.to_string(), self.windows.dims_part());
        let state = StateSnapshot {
            partials: std::iter::once(dims)
                .chain(partials.into_iter().flat_map(|(s, bs)| bs.into_iter().map(move |b| (s.label.clone(), b))))
                .collect(),
            dedup: dedup_segment,
            dedup_max_ts,
            dedup_cutoff_ms: dedup_cutoff,
            rules: serde_json::json!({
                "rules": serde_json::to_value(self.rules.state())?,
                "detectors": self.detectors.iter().map(|d| (d.name().to_string(), d.state())).collect::<serde_json::Map<_, _>>(),
            }),
        };
        // Positions of inputs not read this time (another topic, another file) are carried forward, so
        // a later run over them resumes instead of counting them twice.
        let mut all_offsets = self.lake.last_manifest().map(|m| m.offsets.clone()).unwrap_or_default();
        for (topic, parts) in offsets {
            all_offsets.entry(topic).or_default().extend(parts);
        }
        let mut all_files = self.lake.last_manifest().map(|m| m.files.clone()).unwrap_or_default();
        all_files.extend(files);
        let commit = Commit {
            offsets: all_offsets,
            files: all_files,
            rollups: self
                .emitted
                .drain(..)
                .flat_map(|e| e.parts.into_iter().map(move |b| (e.size.label.clone(), b)))
                .collect(),
            alerts: std::mem::take(&mut self.alerts),
            dead_letters: std::mem::take(&mut self.dead),
            state,
            watermark_ms: self.watermark,
            partition_max_ts: BTreeMap::new(),
            totals: BTreeMap::from([
                ("records_since_start".to_string(), self.totals.records),
                ("duplicates_since_start".to_string(), self.totals.duplicates),
                ("dead_letters_since_start".to_string(), self.totals.dead_letters),
            ]),
            publish,
            ranges,
            adopt: self.adoption.as_ref().map(|a| (a.0.clone(), a.1)),
            handover: self.adoption.as_mut().map(|a| std::mem::take(&mut a.2)).unwrap_or_default(),
        };
        let mut n_alerts = commit.alerts.len() as u64;
        // A lake shared by several members: budgets are over the whole lake's spend, so at the commit point
        // (under the ledger lock) the rules continue from the lake's latest rule state, whoever committed it.
        let hook: Option<aifinops_sink::RulesHook<'_>> = if shared {
            let (rules, rule_rows, owners, watermark) =
                (&mut self.rules, &mut self.rule_rows, &self.owners, self.watermark);
            let detectors = commit.state.rules.get("detectors").cloned().unwrap_or_default();
            let raised = &mut n_alerts;
            Some(Box::new(move |latest: serde_json::Value| {
                let latest = match latest {
                    serde_json::Value::Object(mut o) if o.contains_key("detectors") => {
                        o.remove("rules").unwrap_or_default()
                    }
                    other => other,
                };
                rules.restore(if latest.is_null() {
                    RulesState::default()
                } else {
                    serde_json::from_value(latest).map_err(|e| format!("the lake's rule state: {e}"))?
                });
                let now = now_ms();
                let mut alerts = Vec::new();
                for rows in rule_rows.drain(..) {
                    alerts.extend(rules.observe(&rows, watermark, now));
                }
                if let Some(w) = watermark {
                    alerts.extend(rules.project(w, now));
                    rules.prune(w);
                }
                alerts.iter_mut().for_each(|a| enrich(owners, a));
                *raised += alerts.len() as u64;
                let state = serde_json::to_value(rules.state()).map_err(|e| e.to_string())?;
                Ok((alerts, serde_json::json!({"rules": state, "detectors": detectors})))
            }))
        } else {
            None
        };
        let info = self.lake.commit_with(commit, hook)?;
        self.dedup.absorb(&info.foreign_dedup)?;
        self.totals.alerts += n_alerts;
        self.totals.commits += 1;
        self.dirty = false;
        self.last_commit = Instant::now();
        metrics::counter!("aifinops_lake_commits_total").increment(1);
        metrics::counter!("aifinops_lake_bytes_total").increment(info.bytes);
        metrics::gauge!("aifinops_window_open_rows").set(self.windows.open_rows() as f64);
        metrics::gauge!("aifinops_dedup_keys").set(self.dedup.len() as f64);
        metrics::gauge!("aifinops_dedup_memory_bytes").set(self.dedup.memory_bytes() as f64);
        metrics::counter!("aifinops_dedup_disk_reads_total").absolute(self.dedup.disk_reads());
        tracing::debug!(seq = info.seq, files = info.files, bytes = info.bytes, rows = info.rollup_rows, "lake commit");
        Ok(info)
    }
}

fn late_requests(rows: &datafusion::arrow::array::RecordBatch) -> u64 {
    let (Some(late), Some(req)) = (rows.column_by_name("late"), rows.column_by_name("requests")) else {
        return 0;
    };
    let late = late.as_boolean();
    let req = req.as_primitive::<Int64Type>();
    (0..rows.num_rows()).filter(|&i| late.is_valid(i) && late.value(i)).map(|i| req.value(i) as u64).sum()
}
