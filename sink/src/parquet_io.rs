//! Parquet writing: dictionaries for strings, LZ4 for strings and decimals, delta encoding for counts and
//! times (plain and LZ4 for a count or time with one value in the file), chunk statistics, row groups of
//! up to [`ROW_GROUP_BYTES`] encoded (one for nearly every file of a commit), written to a staging path
//! and fsynced.

use std::fs::File;
use std::path::Path;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, Encoding};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;
use std::sync::Arc;

use crate::{SinkError, io_err};

/// String columns that keep chunk statistics (what readers filter rollups, alerts and dead letters by).
const PRUNED_BY: [&str; 5] = ["owner", "provider", "model", "type", "kind"];

/// Encoded bytes after which a file's row group is written out and the next one begun. The writer holds a
/// row group's encoded pages in memory until the row group is complete (its column chunks go to the file
/// one after the other), so without a bound a large file (a day window of many keys) was held whole. Every
/// file of the benchmark's workload (up to ~180k rows) stays one row group under it.
const ROW_GROUP_BYTES: usize = 8 << 20;

/// Rows handed to the Parquet writer at a time (see [`write_parquet`]).
const WRITE_SLICE_ROWS: usize = 16_384;

/// Whether 64-bit integer (or timestamp) column `i` holds one value, and no null, in all of `batches`.
fn constant(batches: &[RecordBatch], i: usize) -> bool {
    let mut value = None;
    for b in batches {
        let data = b.column(i).to_data();
        if data.null_count() > 0 || data.buffers().len() != 1 {
            return false;
        }
        let vals = &data.buffers()[0].typed_data::<i64>()[data.offset()..data.offset() + data.len()];
        let Some(&first) = vals.first() else { continue };
        if value.is_some_and(|v| v != first) || vals.iter().any(|&x| x != first) {
            return false;
        }
        value = Some(first);
    }
    value.is_some()
}

/// `schema` with each dictionary column as its values' type: the file's schema. The window engine emits
/// rollup dimensions as dictionary columns; the writer takes them as the strings they stand for (it looks
/// each row's value up in the dictionary), so the file, its Arrow schema hint and what readers get are
/// the same as for plain strings.
fn plain_schema(schema: &SchemaRef) -> SchemaRef {
    if !schema.fields().iter().any(|f| matches!(f.data_type(), DataType::Dictionary(..))) {
        return schema.clone();
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, v) => f.as_ref().clone().with_data_type(v.as_ref().clone()),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Writes `batches` (one schema, or the same columns with some as dictionaries of the values' type) to
/// `path` and fsyncs it. Returns bytes written.
pub fn write_parquet(path: &Path, batches: &[RecordBatch]) -> Result<u64, SinkError> {
    let schema = batches
        .first()
        .map(|b| plain_schema(&b.schema()))
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
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_created_by("aifinops".into());
    for (i, f) in schema.fields().iter().enumerate() {
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
            // A column with one value in the whole file (audio, 1-hour cache writes, failures… are zero in
            // most rollup files; a 1h file's window bounds) is written plain and left to LZ4, which folds
            // the run for a fraction of delta encoding's per-value work.
            DataType::Int64 | DataType::Timestamp(..) if constant(batches, i) => {
                props = props
                    .set_column_encoding(col(), Encoding::PLAIN)
                    .set_column_compression(col(), Compression::LZ4_RAW);
                if f.data_type() == &DataType::Int64 {
                    props = props.set_column_statistics_enabled(col(), EnabledStatistics::None);
                }
            }
            // other counts and times: delta encoding instead of plain values that LZ4 then has to squeeze;
            // statistics on sums prune nothing a reader asks for (time, owner, model do)
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
    let mut first = true;
    for b in batches {
        // In slices: the writer converts each call's decimals to a `FixedLenByteArray` per value (~60 bytes
        // a cell) and reserves a `u64` per row for each string column's dictionary indices, so one call with
        // a commit's 100k-row batch held ~20 MB of temporaries per file next to the encoded pages.
        let mut at = 0;
        while at < b.num_rows() {
            let n = WRITE_SLICE_ROWS.min(b.num_rows() - at);
            w.write(&b.slice(at, n)).map_err(pe)?;
            at += n;
            if std::mem::take(&mut first) {
                crate::fault::point("mid_parquet");
            }
        }
    }
    let file = w.into_inner().map_err(pe)?;
    file.sync_all().map_err(io_err(format!("fsync {}", path.display())))?;
    Ok(file.metadata().map(|m| m.len()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn a_count_with_one_value_in_the_file_is_plain_and_lz4_others_delta_and_all_read_back() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("zero", DataType::Int64, false),
            Field::new("tokens", DataType::Int64, false),
            // one value per batch, but two in the file
            Field::new("per_batch", DataType::Int64, false),
        ]));
        let batch = |zero: Vec<i64>, tokens: Vec<i64>, per: i64| {
            let n = zero.len();
            let cols: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(zero)),
                Arc::new(Int64Array::from(tokens)),
                Arc::new(Int64Array::from(vec![per; n])),
            ];
            RecordBatch::try_new(schema.clone(), cols).unwrap()
        };
        let batches = [batch(vec![0; 3], vec![5, 7, 9], 1), batch(vec![0; 2], vec![11, 2], 2)];
        assert!(constant(&batches, 0) && !constant(&batches, 1) && !constant(&batches, 2));
        assert!(constant(&batches[1..], 2), "one batch, one value");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.parquet");
        write_parquet(&p, &batches).unwrap();
        let r = ParquetRecordBatchReaderBuilder::try_new(File::open(&p).unwrap()).unwrap();
        let rg = r.metadata().row_group(0).clone();
        let col = |i: usize| (rg.column(i).encodings().collect::<Vec<_>>(), rg.column(i).compression());
        assert!(col(0).0.contains(&Encoding::PLAIN) && col(0).1 == Compression::LZ4_RAW, "{:?}", col(0));
        for i in [1, 2] {
            assert!(col(i).0.contains(&Encoding::DELTA_BINARY_PACKED), "{:?}", col(i));
        }
        let back: Vec<RecordBatch> = r.build().unwrap().collect::<Result<_, _>>().unwrap();
        let back = datafusion::arrow::compute::concat_batches(&schema, &back).unwrap();
        assert_eq!(back, datafusion::arrow::compute::concat_batches(&schema, &batches).unwrap());
    }

    #[test]
    fn batches_larger_than_a_write_slice_come_back_whole_in_one_row_group() {
        use datafusion::arrow::array::{Decimal128Array, StringArray};
        let schema = Arc::new(Schema::new(vec![
            Field::new("owner", DataType::Utf8, false),
            Field::new("tokens", DataType::Int64, false),
            Field::new("cost_usd", DataType::Decimal128(38, 18), true),
        ]));
        let batch = |from: usize, n: usize| {
            let rows = from..from + n;
            let cols: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(rows.clone().map(|i| format!("team-{}", i % 97)))),
                Arc::new(Int64Array::from_iter_values(rows.clone().map(|i| (i * 7 % 1000) as i64))),
                Arc::new(
                    Decimal128Array::from_iter(rows.map(|i| (i % 11 != 0).then(|| i as i128 * 1_000_000_000_000_003)))
                        .with_precision_and_scale(38, 18)
                        .unwrap(),
                ),
            ];
            RecordBatch::try_new(schema.clone(), cols).unwrap()
        };
        // two slices and a part of one, then a batch smaller than a slice
        let n = 2 * WRITE_SLICE_ROWS + 1_234;
        let batches = [batch(0, n), batch(n, 10)];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.parquet");
        write_parquet(&p, &batches).unwrap();
        let r = ParquetRecordBatchReaderBuilder::try_new(File::open(&p).unwrap()).unwrap();
        assert_eq!(r.metadata().num_row_groups(), 1);
        assert_eq!(r.metadata().row_group(0).num_rows(), (n + 10) as i64);
        let back: Vec<RecordBatch> = r.build().unwrap().collect::<Result<_, _>>().unwrap();
        let back = datafusion::arrow::compute::concat_batches(&schema, &back).unwrap();
        assert_eq!(back, datafusion::arrow::compute::concat_batches(&schema, &batches).unwrap());
    }

    /// Dimensions as the window engine emits them (dictionary columns whose values are the whole
    /// dictionary, keys sliced out of a larger batch) are written as the strings they stand for: the file's
    /// schema says Utf8, it keeps the string columns' dictionary encoding and statistics, and it reads back
    /// equal to the same rows with plain strings, also when a file mixes both kinds of batch.
    #[test]
    fn dictionary_columns_are_written_as_their_strings() {
        use datafusion::arrow::array::{DictionaryArray, StringArray, UInt32Array};
        use datafusion::arrow::datatypes::UInt32Type;
        use datafusion::parquet::file::statistics::Statistics;
        let dict_type = DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8));
        let emitted = Arc::new(Schema::new(vec![
            Field::new("owner", dict_type, false),
            Field::new("requests", DataType::Int64, false),
        ]));
        let plain = Arc::new(Schema::new(vec![
            Field::new("owner", DataType::Utf8, false),
            Field::new("requests", DataType::Int64, false),
        ]));
        // values the rows do not all use: "zz-unused" must not reach the statistics
        let values: ArrayRef = Arc::new(StringArray::from(vec!["__other__", "team-b", "team-a", "zz-unused"]));
        let keys = UInt32Array::from(vec![1, 2, 2, 0, 1, 2]).slice(1, 4); // team-a team-a __other__ team-b
        let owner: ArrayRef = Arc::new(DictionaryArray::<UInt32Type>::try_new(keys, values).unwrap());
        let dict_rows =
            RecordBatch::try_new(emitted.clone(), vec![owner, Arc::new(Int64Array::from(vec![1, 2, 3, 4]))]).unwrap();
        let plain_rows = RecordBatch::try_new(
            plain.clone(),
            vec![Arc::new(StringArray::from(vec!["team-c"])), Arc::new(Int64Array::from(vec![5]))],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.parquet");
        write_parquet(&p, &[dict_rows, plain_rows]).unwrap();
        let r = ParquetRecordBatchReaderBuilder::try_new(File::open(&p).unwrap()).unwrap();
        assert_eq!(r.schema().as_ref(), plain.as_ref(), "the file's schema has the strings' type");
        let chunk = r.metadata().row_group(0).column(0).clone();
        assert!(chunk.dictionary_page_offset().is_some(), "dictionary-encoded in the file");
        match chunk.statistics() {
            Some(Statistics::ByteArray(s)) => {
                assert_eq!(s.min_opt().unwrap().as_utf8().unwrap(), "__other__");
                assert_eq!(s.max_opt().unwrap().as_utf8().unwrap(), "team-c");
            }
            other => panic!("owner statistics: {other:?}"),
        }
        let back: Vec<RecordBatch> = r.build().unwrap().collect::<Result<_, _>>().unwrap();
        let back = datafusion::arrow::compute::concat_batches(&plain, &back).unwrap();
        let want = RecordBatch::try_new(
            plain,
            vec![
                Arc::new(StringArray::from(vec!["team-a", "team-a", "__other__", "team-b", "team-c"])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])),
            ],
        )
        .unwrap();
        assert_eq!(back, want);
    }

    /// A file whose encoded rows outgrow [`ROW_GROUP_BYTES`] is written in several row groups (the writer
    /// does not hold all of it), and reads back whole.
    #[test]
    fn a_file_larger_than_the_row_group_bound_has_several_row_groups() {
        let schema = Arc::new(Schema::new(vec![Field::new("tokens", DataType::Int64, false)]));
        // pseudo-random values: ~8 bytes each delta-encoded, so 1.5M rows are ~12 MB
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let values: Vec<i64> = (0..1_500_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as i64
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.parquet");
        write_parquet(&p, std::slice::from_ref(&batch)).unwrap();
        let r = ParquetRecordBatchReaderBuilder::try_new(File::open(&p).unwrap()).unwrap();
        let groups = r.metadata().row_groups();
        assert!(groups.len() >= 2, "{} row groups", groups.len());
        assert!(groups.iter().all(|g| g.compressed_size() as usize <= ROW_GROUP_BYTES + (1 << 20)));
        let back: Vec<RecordBatch> = r.build().unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(datafusion::arrow::compute::concat_batches(&schema, &back).unwrap(), batch);
    }
}
