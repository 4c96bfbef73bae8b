//! `aifinops prices check`: which models seen in traffic the catalog cannot price.
//!
//! Reads the files the way `replay` does (any input format), prices every call against the given
//! catalogs, and lists the (provider, model) pairs left unpriced with their call and token counts: the
//! list to fix before a replay, not after the month closed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use aifinops_ingest::file::FileSource;
use aifinops_ingest::{Decoder, Format, OwnerMap, PriceCatalog, RawPolicy};
use anyhow::Context;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;

/// What one check found.
pub struct Report {
    pub calls: u64,
    pub priced: u64,
    /// Calls whose source reported no usage (not a catalog gap).
    pub usage_missing: u64,
    pub dead_letters: u64,
    /// (provider, model) -> (calls, input tokens, output tokens)
    pub unpriced: BTreeMap<(String, String), (i64, i64, i64)>,
}

impl Report {
    pub fn render(&self, catalogs: &[PathBuf], builtin: bool) -> String {
        let mut out = format!(
            "{} calls read, {} priced, {} unpriced, {} without usage, {} records unreadable (catalog: {}{})\n",
            self.calls,
            self.priced,
            self.calls - self.priced - self.usage_missing,
            self.usage_missing,
            self.dead_letters,
            if builtin { "built-in" } else { "" },
            catalogs.iter().map(|c| format!(" + {}", c.display())).collect::<String>(),
        );
        if self.unpriced.is_empty() {
            out.push_str("every model seen is priced\n");
            return out;
        }
        out.push_str(&format!("{:<14} {:<60} {:>10} {:>14} {:>14}\n", "provider", "model", "calls", "input", "output"));
        for ((p, m), (n, i, o)) in &self.unpriced {
            out.push_str(&format!("{p:<14} {m:<60} {n:>10} {i:>14} {o:>14}\n"));
        }
        out.push_str(
            "add them to a TOML catalog ([[model]] with *_per_mtok prices) or map them to a priced model \
             ([[alias]] name = \"...\" model = \"...\")\n",
        );
        out
    }
}

pub fn check(catalogs: &[PathBuf], builtin: bool, files: Vec<(PathBuf, Format)>) -> anyhow::Result<Report> {
    let mut catalog = if builtin { PriceCatalog::builtin() } else { PriceCatalog::default() };
    for c in catalogs {
        catalog.add_file(c).with_context(|| format!("loading prices from {}", c.display()))?;
    }
    let mut decoder = Decoder::new(Arc::new(catalog), Arc::new(OwnerMap::default()), 16 << 20, RawPolicy::Redacted);
    let mut src = FileSource::with_formats(files);
    let mut report = Report { calls: 0, priced: 0, usage_missing: 0, dead_letters: 0, unpriced: BTreeMap::new() };
    loop {
        let chunk = src.read_into(&mut decoder, 50_000, 0)?;
        let out = decoder.finish();
        report.dead_letters += out.dead_letters.len() as u64;
        for dl in out.dead_letters.iter().take(5) {
            eprintln!("unreadable: {}: {}", dl.source, dl.reason);
        }
        let b = &out.batch;
        let col = |n: &str| b.column_by_name(n).expect("event column");
        let (prov, model) = (col("provider").as_string::<i32>(), col("model").as_string::<i32>());
        let unpriced = col("unpriced_requests").as_primitive::<Int64Type>();
        let missing = col("usage_missing_requests").as_primitive::<Int64Type>();
        let (input, output) =
            (col("input_tokens").as_primitive::<Int64Type>(), col("output_tokens").as_primitive::<Int64Type>());
        for r in 0..b.num_rows() {
            report.calls += 1;
            if missing.value(r) == 1 {
                report.usage_missing += 1;
                continue;
            }
            if unpriced.value(r) == 0 {
                report.priced += 1;
                continue;
            }
            let e = report.unpriced.entry((prov.value(r).to_string(), model.value(r).to_string())).or_default();
            e.0 += 1;
            e.1 += input.value(r);
            e.2 += output.value(r);
        }
        if chunk.done {
            break;
        }
    }
    Ok(report)
}

/// `aifinops prices export`: the resolved per-token rates of `models` (`provider/model`) at `at_ms`, as
/// CSV with exact decimal USD per token (for other tools to price the same traffic the same way, e.g. the
/// benchmark's DuckDB and Python jobs). Fails on a model the catalog cannot price.
pub fn export(
    catalogs: &[PathBuf],
    builtin: bool,
    at_ms: i64,
    tier: &str,
    models: &[String],
) -> anyhow::Result<String> {
    use aifinops_ingest::catalog::{Class, Tier};
    use aifinops_schemas::money::format_usd;
    let mut catalog = if builtin { PriceCatalog::builtin() } else { PriceCatalog::default() };
    for c in catalogs {
        catalog.add_file(c).with_context(|| format!("loading prices from {}", c.display()))?;
    }
    let t = Tier::parse(tier).ok_or_else(|| anyhow::anyhow!("unknown service tier {tier:?}"))?;
    const CLASSES: [(Class, &str); 8] = [
        (Class::Input, "input"),
        (Class::CacheRead, "cache_read"),
        (Class::CacheWrite, "cache_write"),
        (Class::CacheWrite1h, "cache_write_1h"),
        (Class::AudioInput, "audio_input"),
        (Class::Output, "output"),
        (Class::Reasoning, "reasoning"),
        (Class::AudioOutput, "audio_output"),
    ];
    let mut out = String::from("provider,model,tier,price_id");
    for (_, name) in CLASSES {
        out.push(',');
        out.push_str(name);
    }
    out.push_str(",long_context_above,discount_ppm\n");
    for m in models {
        let (provider, model) =
            m.split_once('/').ok_or_else(|| anyhow::anyhow!("{m:?}: models are given as provider/model"))?;
        let p = catalog.lookup(provider, model, at_ms).ok_or_else(|| anyhow::anyhow!("{m}: not priced"))?;
        out.push_str(&format!("{provider},{model},{},{}", t.as_str(), p.id));
        for (c, name) in CLASSES {
            let r = p.rate(c, t).ok_or_else(|| anyhow::anyhow!("{m}: no {name} rate"))?;
            out.push(',');
            out.push_str(&format_usd(r));
        }
        let above = p.long_context_thresholds().first().map(|a| a.to_string()).unwrap_or_default();
        let discount = p.discount_ppm().map(|d| d.to_string()).unwrap_or_default();
        out.push_str(&format!(",{above},{discount}\n"));
    }
    Ok(out)
}
