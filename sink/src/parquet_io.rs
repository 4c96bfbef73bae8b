//! Parquet writing: dictionaries and LZ4 for strings and decimals, delta encoding for counts and times,
//! chunk statistics, one row group per file of a commit, written to a staging path and fsynced.

use std::fs::File;
use std::path::Path;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, Encoding};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;

use crate::{SinkError, io_err};

/// String columns that keep chunk statistics (what readers filter rollups, alerts and dead letters by).
const PRUNED_BY: [&str; 5] = ["owner", "provider", "model", "type", "kind"];

/// Writes `batches` (one schema) to `path` and fsyncs it. Returns bytes written.
pub fn write_parquet(path: &Path, batches: &[RecordBatch]) -> Result<u64, SinkError> {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| SinkError::Manifest { path: path.display().to_string(), reason: "no rows to write".into() })?;
    let pe = |e| SinkError::Parquet { path: path.display().to_string(), source: e };
    let file = File::create(path).map_err(io_err(format!("creating {}", path.display())))?;
    // Dictionaries for the string columns only (dimensions repeat; measures rarely do, and hashing every
    // value for a dictionary that is then abandoned was a third of the write); column chunk statistics
    // (what readers prune row groups with) on times and a few low-cardinality strings, not per page; LZ4
    // (zstd cost a tenth of replay's instructions on the benchmark workload, for files about a third
    // smaller).
    let mut props = WriterProperties::builder()
        .set_compression(Compression::LZ4_RAW)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_created_by("aifinops".into());
    for f in schema.fields() {
        let col = || ColumnPath::from(f.name().as_str());
        match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                props = props.set_column_dictionary_enabled(col(), true);
                // min/max of identities, projects, workflows… span nearly every value in a file: they prune
                // nothing and comparing every value for them was a tenth of the write
                if !PRUNED_BY.contains(&f.name().as_str()) {
                    props = props.set_column_statistics_enabled(col(), EnabledStatistics::None);
                }
            }
            // counts and times: delta encoding (most count columns of a rollup file are all zero, and times
            // repeat) instead of plain values that LZ4 then has to squeeze; statistics on sums prune nothing
            // a reader asks for (time, owner, model do)
            DataType::Int64 => {
                props = props
                    .set_column_statistics_enabled(col(), EnabledStatistics::None)
                    .set_column_encoding(col(), Encoding::DELTA_BINARY_PACKED)
                    .set_column_compression(col(), Compression::UNCOMPRESSED);
            }
            DataType::Timestamp(..) => {
                props = props
                    .set_column_encoding(col(), Encoding::DELTA_BINARY_PACKED)
                    .set_column_compression(col(), Compression::UNCOMPRESSED);
            }
            DataType::Decimal128(..) | DataType::Float64 => {
                props = props.set_column_statistics_enabled(col(), EnabledStatistics::None);
            }
            _ => {}
        }
    }
    let props = props.build();
    let mut w = ArrowWriter::try_new(file, schema, Some(props)).map_err(pe)?;
    for (i, b) in batches.iter().enumerate() {
        w.write(b).map_err(pe)?;
        if i == 0 {
            crate::fault::point("mid_parquet");
        }
    }
    let file = w.into_inner().map_err(pe)?;
    file.sync_all().map_err(io_err(format!("fsync {}", path.display())))?;
    Ok(file.metadata().map(|m| m.len()).unwrap_or(0))
}
