//! `aifinops query`: DataFusion SQL over the lake's Hive-partitioned Parquet.

use std::path::Path;
use std::sync::Arc;

use aifinops_schemas::{alert::alert_schema, dead_letter::dead_letter_schema, rollup::rollup_schema};
use anyhow::Context;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::prelude::SessionContext;

/// A session with `rollups`, `alerts`, `dead_letters` and `forecasts` registered over `lake`.
pub async fn session(lake: &Path) -> anyhow::Result<SessionContext> {
    if !lake.join("_aifinops").exists() {
        anyhow::bail!("{} is not an aifinops lake (no _aifinops directory)", lake.display());
    }
    let ctx = SessionContext::new();
    let tables: [(&str, SchemaRef, Vec<&str>); 4] = [
        ("rollups", rollup_schema(), vec!["window", "date"]),
        ("alerts", alert_schema(), vec!["date"]),
        ("dead_letters", dead_letter_schema(), vec!["date"]),
        // written by `aifinops forecast`; `date` is the as-of day
        ("forecasts", crate::forecast::forecast_schema(), vec!["date"]),
    ];
    for (name, schema, parts) in tables {
        let dir = lake.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let opts = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(parts.iter().map(|p| (p.to_string(), DataType::Utf8)).collect());
        let url = format!("{}/", std::fs::canonicalize(&dir)?.display());
        ctx.register_listing_table(name, &url, opts, Some(schema), None)
            .await
            .with_context(|| format!("registering table {name} over {url}"))?;
    }
    Ok(ctx)
}

pub async fn run(lake: &Path, sql: &str, format: &str) -> anyhow::Result<String> {
    let ctx = session(lake).await?;
    let df = ctx.sql(sql).await.with_context(|| format!("in query {sql:?}"))?;
    let batches = df.collect().await.with_context(|| format!("running {sql:?}"))?;
    Ok(match format {
        "csv" | "json" => {
            let mut buf = Vec::new();
            if format == "csv" {
                let mut w = datafusion::arrow::csv::Writer::new(&mut buf);
                for b in &batches {
                    w.write(b)?;
                }
            } else {
                let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
                for b in &batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
            String::from_utf8(buf)?
        }
        _ => format!("{}\n", pretty_format_batches(&batches)?),
    })
}
