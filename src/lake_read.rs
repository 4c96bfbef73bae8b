//! Small readers of DataFusion query results over the lake, shared by `report` and `export focus`.

use anyhow::Context;
use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Int64Type};
use datafusion::prelude::SessionContext;

use aifinops_schemas::money::cost_type;

pub const DAY_MS: i64 = 86_400_000;
pub const HOUR_MS: i64 = 3_600_000;

pub async fn collect(ctx: &SessionContext, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let df = ctx.sql(sql).await.with_context(|| format!("planning {sql:?}"))?;
    df.collect().await.with_context(|| format!("running {sql:?}"))
}

fn column(b: &RecordBatch, name: &str, to: &DataType) -> anyhow::Result<ArrayRef> {
    let c = b.column_by_name(name).with_context(|| format!("query result has no column {name}"))?;
    cast(c, to).with_context(|| format!("column {name} ({}) as {to}", c.data_type()))
}

pub fn strings(b: &RecordBatch, name: &str) -> anyhow::Result<Vec<String>> {
    let a = column(b, name, &DataType::Utf8)?;
    Ok(a.as_string::<i32>().iter().map(|v| v.unwrap_or_default().to_string()).collect())
}

/// Integers (and timestamps as epoch ms); null is 0.
pub fn ints(b: &RecordBatch, name: &str) -> anyhow::Result<Vec<i64>> {
    let a = column(b, name, &DataType::Int64)?;
    Ok(a.as_primitive::<Int64Type>().iter().map(|v| v.unwrap_or(0)).collect())
}

/// A money column in cost units (10^-18 USD); null (only unpriced calls) stays `None`.
pub fn costs(b: &RecordBatch, name: &str) -> anyhow::Result<Vec<Option<i128>>> {
    let a = column(b, name, &cost_type())?;
    Ok(a.as_primitive::<Decimal128Type>().iter().collect())
}

/// The month `YYYY-MM` as [first day 00:00, first day of the next month 00:00) in epoch ms.
pub fn month_range(month: &str) -> anyhow::Result<(i64, i64)> {
    use chrono::{Datelike, NaiveDate};
    let first = NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d")
        .with_context(|| format!("--month {month:?} is not a month written YYYY-MM"))?;
    anyhow::ensure!((2000..=2199).contains(&first.year()), "--month {month:?}: the year is out of range");
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
    }
    .context("next month")?;
    let ms = |d: NaiveDate| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis();
    Ok((ms(first), ms(next)))
}

/// `YYYY-MM` of an epoch-ms instant (UTC).
pub fn month_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m").to_string()
}

/// The lake's windows present among `1h` and `1d` with (min start, max end) in epoch ms.
pub async fn window_extent(ctx: &SessionContext, window: &str) -> anyhow::Result<Option<(i64, i64)>> {
    let b = collect(
        ctx,
        &format!(
            "SELECT min(window_start) AS s, max(window_end) AS e, count(*) AS n FROM rollups WHERE \"window\" = '{window}'"
        ),
    )
    .await?;
    let Some(b) = b.first() else { return Ok(None) };
    if b.num_rows() == 0 || ints(b, "n")?[0] == 0 {
        return Ok(None);
    }
    Ok(Some((ints(b, "s")?[0], ints(b, "e")?[0])))
}

/// Rfc3339 (seconds) of an epoch-ms instant.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}
