//! The merge of the window engine's state rows: the sums of their measures per window bounds, `late` flag
//! and key hash, in one pass over the rows with a hash table of group numbers.
//!
//! State rows carry a 128-bit hash of their eleven dimensions, so grouping them needs only fixed-width
//! columns. A generic GROUP BY (DataFusion's, which did these merges before) keeps a row-format copy of the
//! group keys, accumulators that grow by doubling and an output built with that slack and then copied: at the
//! day window's compaction (~250k rows into ~240k groups) that was ~100 MB on top of the inputs and the
//! result, the largest allocation of the pipeline. Here the table holds a `u32` per group; the group keys,
//! the sums and the first input row of each group are columns of exactly the output's size.
//!
//! Sums follow SQL: counts are never null; a money column's sum is null only when all of its inputs are.
//! An overflow (of `i64` for a count, of `Decimal128(38, _)` for money) is an error, never a wrapped value.

use std::sync::Arc;

use aifinops_schemas::event::EVENT_MONEY;
use aifinops_schemas::rollup::{LATE, WINDOW_END, WINDOW_START, count_measures};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Int64Array, PrimitiveArray, RecordBatch, UInt64Array,
};
use datafusion::arrow::buffer::{NullBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{
    DataType, Decimal128Type, Int64Type, SchemaRef, TimestampMillisecondType, UInt64Type,
};
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use crate::AggregateError;

/// Multiplier mixing the window start into the table's hash (the key hash's low half is already uniform).
const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// The columns of input batches, by index in the state schema; a merge takes (and lets go of) the columns
/// it has used, so that each input column is freed as soon as its sums are built.
pub(crate) type Columns = Vec<Vec<Option<ArrayRef>>>;

/// `batches` as [`Columns`], every column present.
pub(crate) fn columns(batches: Vec<RecordBatch>) -> Columns {
    batches.into_iter().map(|b| b.into_parts().1.into_iter().map(Some).collect()).collect()
}

/// Merges state rows (`inputs`: batches of `state`'s columns; `key_hi`, `key_lo` the key hash) into one
/// row per window bounds, late flag and key. Returns rows of `out` (the five group columns in the order
/// window start, window end, late, key hi, key lo, then every count and money measure, each as named in
/// `out`) in the order their groups first occur, and for each the (input batch, row) of its first input
/// row, where the dimensions are taken from. The group and measure columns of `inputs` are taken: each
/// measure's input columns are let go once its sums are built, so the inputs' measures and the merged
/// ones are not all live at once (the day window's compaction, where the engine's memory peaks, holds a
/// few hundred thousand rows of 24 measures on each side); the other columns are left in `inputs`.
pub(crate) fn sum_by_key(
    inputs: &mut Columns,
    state: &SchemaRef,
    out: &SchemaRef,
    key_hi: &str,
    key_lo: &str,
) -> Result<(RecordBatch, Vec<(usize, usize)>), AggregateError> {
    let index = |name: &str| -> Result<usize, AggregateError> {
        state.index_of(name).map_err(|_| AggregateError::State(format!("rows to merge without column {name}")))
    };
    let n_inputs = inputs.len();
    let (i_start, i_end, i_late, i_hi, i_lo) =
        (index(WINDOW_START)?, index(WINDOW_END)?, index(LATE)?, index(key_hi)?, index(key_lo)?);
    let total: usize = inputs.iter().map(|b| b.get(i_start).and_then(|c| c.as_ref()).map_or(0, |c| c.len())).sum();
    let mut take = |bi: usize, at: usize, name: &str| -> Result<ArrayRef, AggregateError> {
        inputs[bi]
            .get_mut(at)
            .and_then(Option::take)
            .ok_or_else(|| AggregateError::State(format!("rows to merge without column {name}")))
    };
    let mut table: HashTable<u32> = HashTable::with_capacity(total);
    let mut groups = Groups::with_capacity(total);
    // each input row's group number, per batch
    let mut ids: Vec<Vec<u32>> = Vec::with_capacity(n_inputs);
    for bi in 0..n_inputs {
        let (starts, ends, late, hi, lo) = (
            take(bi, i_start, WINDOW_START)?,
            take(bi, i_end, WINDOW_END)?,
            take(bi, i_late, LATE)?,
            take(bi, i_hi, key_hi)?,
            take(bi, i_lo, key_lo)?,
        );
        let rows = starts.len();
        if [&ends, &late, &hi, &lo].iter().any(|c| c.len() != rows) {
            return Err(uneven("the window bounds, late flag and key"));
        }
        if [&starts, &ends, &late, &hi, &lo].iter().any(|c| c.null_count() > 0) {
            return Err(AggregateError::State("rows to merge with a null window bound, late flag or key".into()));
        }
        let starts = starts.as_primitive::<TimestampMillisecondType>().values();
        let ends = ends.as_primitive::<TimestampMillisecondType>().values();
        let late = late.as_boolean();
        let hi = hi.as_primitive::<UInt64Type>().values();
        let lo = lo.as_primitive::<UInt64Type>().values();
        let mut row_ids = Vec::with_capacity(rows);
        for r in 0..rows {
            let key = GroupKey { start: starts[r], end: ends[r], late: late.value(r), hi: hi[r], lo: lo[r] };
            let hash = key.hash();
            let g = match table.entry(hash, |&g| groups.key(g) == key, |&g| groups.key(g).hash()) {
                Entry::Occupied(o) => *o.get(),
                Entry::Vacant(v) => {
                    let g = u32::try_from(groups.len())
                        .map_err(|_| AggregateError::State("more than 2^32 groups in one merge".into()))?;
                    v.insert(g);
                    groups.push(key, (bi, r));
                    g
                }
            };
            row_ids.push(g);
        }
        ids.push(row_ids);
    }
    drop(table);
    // the group columns become arrays as they are (a closing window's rows may wait in the state for a day)
    groups.shrink_to_fit();
    let n = groups.len();
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(out.fields().len());
    let ts = |f: usize, v: Vec<i64>| -> ArrayRef {
        Arc::new(
            PrimitiveArray::<TimestampMillisecondType>::new(ScalarBuffer::from(v), None)
                .with_data_type(out.field(f).data_type().clone()),
        )
    };
    cols.push(ts(0, groups.start));
    cols.push(ts(1, groups.end));
    cols.push(Arc::new(BooleanArray::from(groups.late)));
    cols.push(Arc::new(UInt64Array::from(groups.hi)));
    cols.push(Arc::new(UInt64Array::from(groups.lo)));
    // per measure: the inputs' columns are taken (and let go once summed); a measure whose inputs are all
    // the shared zero (or null) column is the shared column of the output's length, not summed
    let mut measure = |name: &str| -> Result<Vec<ArrayRef>, AggregateError> {
        let at = index(name)?;
        let cols = (0..n_inputs).map(|bi| take(bi, at, name)).collect::<Result<Vec<_>, _>>()?;
        if cols.iter().zip(&ids).any(|(c, row_ids)| c.len() != row_ids.len()) {
            return Err(uneven(name));
        }
        Ok(cols)
    };
    for name in count_measures() {
        let taken = measure(name)?;
        if let Some(c) = all_shared(&taken, out, name, n)? {
            cols.push(c);
            continue;
        }
        let mut sums = vec![0i64; n];
        let mut overflow = false;
        for (v, row_ids) in taken.iter().zip(&ids) {
            let v = v.as_primitive_opt::<Int64Type>().ok_or_else(|| not_a(name, "Int64", v.data_type()))?;
            if v.null_count() > 0 {
                return Err(AggregateError::State(format!("rows to merge with a null {name}")));
            }
            for (&g, &x) in row_ids.iter().zip(v.values()) {
                let (s, o) = sums[g as usize].overflowing_add(x);
                sums[g as usize] = s;
                overflow |= o;
            }
        }
        if overflow {
            return Err(AggregateError::State(format!("the sum of {name} of a window and key overflows 64 bits")));
        }
        cols.push(crate::zeros::compact(Arc::new(Int64Array::from(sums))));
    }
    for name in EVENT_MONEY {
        let DataType::Decimal128(precision, scale) = *out.field_with_name(name).map_err(not_in_out)?.data_type() else {
            return Err(AggregateError::State(format!("money column {name} is not a Decimal128")));
        };
        let taken = measure(name)?;
        if let Some(c) = all_shared(&taken, out, name, n)? {
            cols.push(c);
            continue;
        }
        let mut sums = vec![0i128; n];
        let mut valid = vec![false; n];
        let mut overflow = false;
        for (v, row_ids) in taken.iter().zip(&ids) {
            let v = v.as_primitive_opt::<Decimal128Type>().ok_or_else(|| not_a(name, "Decimal128", v.data_type()))?;
            let mut add = |g: u32, x: i128| {
                let (s, o) = sums[g as usize].overflowing_add(x);
                sums[g as usize] = s;
                valid[g as usize] = true;
                overflow |= o;
            };
            match v.nulls() {
                None => row_ids.iter().zip(v.values()).for_each(|(&g, &x)| add(g, x)),
                Some(nulls) => {
                    for ((&g, &x), ok) in row_ids.iter().zip(v.values()).zip(nulls.iter()) {
                        if ok {
                            add(g, x);
                        }
                    }
                }
            }
        }
        let sums = Decimal128Array::new(ScalarBuffer::from(sums), Some(NullBuffer::from(valid)))
            .with_precision_and_scale(precision, scale)
            .map_err(|source| AggregateError::Arrow { context: format!("summing {name}"), source })?;
        if overflow || sums.validate_decimal_precision(precision).is_err() {
            return Err(AggregateError::State(format!(
                "the sum of {name} of a window and key does not fit in {precision} digits"
            )));
        }
        cols.push(crate::zeros::compact(Arc::new(sums)));
    }
    let rows = RecordBatch::try_new(out.clone(), cols)
        .map_err(|source| AggregateError::Arrow { context: "building merged rows".into(), source })?;
    Ok((rows, groups.from))
}

/// The merged column of measure `name` when every input of it is a shared column of one fill (all zero,
/// or all null: money only, a count is never null): the shared column of `n` rows, of the output's type.
/// `None` otherwise.
fn all_shared(inputs: &[ArrayRef], out: &SchemaRef, name: &str, n: usize) -> Result<Option<ArrayRef>, AggregateError> {
    use crate::zeros::{Fill, fill_of, shared};
    let Some(fill) = inputs.first().and_then(|c| fill_of(c.as_ref())) else { return Ok(None) };
    if inputs.iter().any(|c| fill_of(c.as_ref()) != Some(fill)) {
        return Ok(None);
    }
    if fill == Fill::Null
        && !matches!(out.field_with_name(name).map_err(not_in_out)?.data_type(), DataType::Decimal128(..))
    {
        return Err(AggregateError::State(format!("rows to merge with a null {name}")));
    }
    let t = out.field_with_name(name).map_err(not_in_out)?.data_type();
    Ok(shared(t, n, fill))
}

fn uneven(name: &str) -> AggregateError {
    AggregateError::State(format!("rows to merge with {name} of another length than their window bounds"))
}

fn not_a(name: &str, want: &str, got: &DataType) -> AggregateError {
    AggregateError::State(format!("rows to merge have {name} as {got}, not {want}"))
}

fn not_in_out(source: datafusion::arrow::error::ArrowError) -> AggregateError {
    AggregateError::Arrow { context: "the merged rows' schema".into(), source }
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct GroupKey {
    start: i64,
    end: i64,
    late: bool,
    hi: u64,
    lo: u64,
}

impl GroupKey {
    fn hash(&self) -> u64 {
        self.lo ^ (self.start as u64).wrapping_mul(MIX) ^ u64::from(self.late)
    }
}

/// The groups of a merge, one entry per group in each column.
struct Groups {
    start: Vec<i64>,
    end: Vec<i64>,
    late: Vec<bool>,
    hi: Vec<u64>,
    lo: Vec<u64>,
    from: Vec<(usize, usize)>,
}

impl Groups {
    fn with_capacity(n: usize) -> Self {
        Groups {
            start: Vec::with_capacity(n),
            end: Vec::with_capacity(n),
            late: Vec::with_capacity(n),
            hi: Vec::with_capacity(n),
            lo: Vec::with_capacity(n),
            from: Vec::with_capacity(n),
        }
    }

    fn shrink_to_fit(&mut self) {
        self.start.shrink_to_fit();
        self.end.shrink_to_fit();
        self.late.shrink_to_fit();
        self.hi.shrink_to_fit();
        self.lo.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.start.len()
    }

    fn key(&self, g: u32) -> GroupKey {
        let g = g as usize;
        GroupKey { start: self.start[g], end: self.end[g], late: self.late[g], hi: self.hi[g], lo: self.lo[g] }
    }

    fn push(&mut self, key: GroupKey, from: (usize, usize)) {
        self.start.push(key.start);
        self.end.push(key.end);
        self.late.push(key.late);
        self.hi.push(key.hi);
        self.lo.push(key.lo);
        self.from.push(from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifinops_schemas::money::{COST_PRECISION, COST_SCALE};
    use datafusion::arrow::array::TimestampMillisecondArray;
    use datafusion::arrow::datatypes::{Field, Schema};

    /// Group columns, every count, every money column: both the input and the output schema.
    fn schema() -> SchemaRef {
        let ts = DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, Some("UTC".into()));
        let mut fields = vec![
            Field::new(WINDOW_START, ts.clone(), false),
            Field::new(WINDOW_END, ts, false),
            Field::new(LATE, DataType::Boolean, false),
            Field::new("hi", DataType::UInt64, false),
            Field::new("lo", DataType::UInt64, false),
        ];
        fields.extend(count_measures().map(|c| Field::new(c, DataType::Int64, false)));
        fields.extend(EVENT_MONEY.map(|m| Field::new(m, DataType::Decimal128(COST_PRECISION, COST_SCALE), true)));
        Arc::new(Schema::new(fields))
    }

    /// (window start, late, key hi, key lo, requests, cost_usd)
    type Row = (i64, bool, u64, u64, i64, Option<i128>);

    /// State rows; every other count is 1, every other money column null.
    fn rows(rows: &[Row]) -> RecordBatch {
        let s = schema();
        let n = rows.len();
        let cols: Vec<ArrayRef> = s
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.name().as_str() {
                    WINDOW_START => Arc::new(
                        TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.0)).with_timezone("UTC"),
                    ),
                    WINDOW_END => Arc::new(
                        TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.0 + 60_000))
                            .with_timezone("UTC"),
                    ),
                    LATE => Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.1)))),
                    "hi" => Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.2))),
                    "lo" => Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.3))),
                    "requests" => Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.4))),
                    "cost_usd" => Arc::new(
                        Decimal128Array::from_iter(rows.iter().map(|r| r.5))
                            .with_precision_and_scale(COST_PRECISION, COST_SCALE)
                            .unwrap(),
                    ),
                    _ if f.data_type() == &DataType::Int64 => Arc::new(Int64Array::from(vec![1; n])),
                    _ => datafusion::arrow::array::new_null_array(f.data_type(), n),
                }
            })
            .collect();
        RecordBatch::try_new(s, cols).unwrap()
    }

    fn merge(batches: &[RecordBatch]) -> Result<(RecordBatch, Vec<(usize, usize)>), AggregateError> {
        sum_by_key(&mut columns(batches.to_vec()), &schema(), &schema(), "hi", "lo")
    }

    #[test]
    fn groups_are_window_late_flag_and_whole_key_in_first_seen_order_and_money_sums_like_sql() {
        const T0: i64 = 1_764_460_800_000;
        const T1: i64 = T0 + 60_000;
        let a = rows(&[
            (T0, false, 7, 1, 1, None),
            (T0, false, 7, 2, 2, Some(5)),
            (T0, true, 7, 1, 4, Some(7)),
            (T1, false, 7, 1, 8, None),
        ]);
        // the same keys again, and a key whose low half equals key 1's (same table hash, another key)
        let b = rows(&[
            (T0, false, 7, 1, 16, None),
            (T0, false, 9, 1, 128, Some(-2)),
            (T0, false, 7, 2, 32, None),
            (T1, false, 7, 1, 64, Some(3)),
        ]);
        let (out, from) = merge(&[a, b]).unwrap();
        assert_eq!(out.schema(), schema());
        let col = |name: &str| out.column_by_name(name).unwrap().clone();
        let starts: Vec<i64> = col(WINDOW_START).as_primitive::<TimestampMillisecondType>().values().to_vec();
        let ends: Vec<i64> = col(WINDOW_END).as_primitive::<TimestampMillisecondType>().values().to_vec();
        let late: Vec<bool> = col(LATE).as_boolean().iter().map(Option::unwrap).collect();
        let hi: Vec<u64> = col("hi").as_primitive::<UInt64Type>().values().to_vec();
        let lo: Vec<u64> = col("lo").as_primitive::<UInt64Type>().values().to_vec();
        let req: Vec<i64> = col("requests").as_primitive::<Int64Type>().values().to_vec();
        let other_count: Vec<i64> = col("error_requests").as_primitive::<Int64Type>().values().to_vec();
        let cost: Vec<Option<i128>> = col("cost_usd").as_primitive::<Decimal128Type>().iter().collect();
        assert_eq!(starts, [T0, T0, T0, T1, T0]);
        assert_eq!(ends, [T0 + 60_000, T0 + 60_000, T0 + 60_000, T1 + 60_000, T0 + 60_000]);
        assert_eq!(late, [false, false, true, false, false]);
        assert_eq!(hi, [7, 7, 7, 7, 9]);
        assert_eq!(lo, [1, 2, 1, 1, 1]);
        assert_eq!(req, [17, 34, 4, 72, 128]);
        assert_eq!(other_count, [2, 2, 1, 2, 1]);
        // null only where every input was null; a null input does not make a sum null or zero
        assert_eq!(cost, [None, Some(5), Some(7), Some(3), Some(-2)]);
        assert!(col("reported_cost_usd").as_primitive::<Decimal128Type>().iter().all(|c| c.is_none()));
        assert_eq!(
            col("cost_usd").data_type(),
            &DataType::Decimal128(COST_PRECISION, COST_SCALE),
            "the output keeps the money type"
        );
        assert_eq!(from, [(0, 0), (0, 1), (0, 2), (0, 3), (1, 1)]);
    }

    #[test]
    fn a_sum_that_does_not_fit_is_an_error_not_a_wrapped_value() {
        let big = i64::MAX / 2 + 1;
        let e = merge(&[rows(&[(0, false, 1, 1, big, None), (0, false, 1, 1, big, None)])]).unwrap_err();
        assert!(e.to_string().contains("requests"), "{e}");
        // 6 * 10^37 twice fits an i128 but not 38 digits
        let m = 6 * 10i128.pow(37);
        let e = merge(&[rows(&[(0, false, 1, 1, 1, Some(m))]), rows(&[(0, false, 1, 1, 1, Some(m))])]).unwrap_err();
        assert!(e.to_string().contains("cost_usd") && e.to_string().contains("38 digits"), "{e}");
        // one of them alone is fine
        assert!(merge(&[rows(&[(0, false, 1, 1, 1, Some(m))])]).is_ok());
    }

    /// The merge takes what it sums from its inputs (so each input measure is freed once summed) and leaves
    /// the other columns; a column shorter than the window bounds is an error, not a partial sum.
    #[test]
    fn a_merge_takes_the_columns_it_sums_and_leaves_the_others() {
        let mut fields: Vec<Field> = schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("owner", DataType::Utf8, false));
        let state = Arc::new(Schema::new(fields));
        let with_owner = |b: RecordBatch| {
            let mut cols = b.columns().to_vec();
            cols.push(Arc::new(datafusion::arrow::array::StringArray::from(vec!["a"; b.num_rows()])));
            RecordBatch::try_new(state.clone(), cols).unwrap()
        };
        let batches = vec![
            with_owner(rows(&[(0, false, 1, 1, 2, Some(5)), (0, false, 1, 2, 3, None)])),
            with_owner(rows(&[(0, false, 1, 1, 4, Some(1))])),
        ];
        let mut inputs = columns(batches.clone());
        let (out, from) = sum_by_key(&mut inputs, &state, &schema(), "hi", "lo").unwrap();
        assert_eq!(out.column_by_name("requests").unwrap().as_primitive::<Int64Type>().values().to_vec(), [6, 3]);
        assert_eq!(from, [(0, 0), (0, 1)]);
        let owner = state.index_of("owner").unwrap();
        for b in &inputs {
            for (i, c) in b.iter().enumerate() {
                assert_eq!(c.is_some(), i == owner, "column {} of an input", state.field(i).name());
            }
        }
        // a measure cut short
        let mut inputs = columns(batches);
        let at = state.index_of("input_tokens").unwrap();
        inputs[0][at] = inputs[0][at].as_ref().map(|c| c.slice(0, 1));
        let e = sum_by_key(&mut inputs, &state, &schema(), "hi", "lo").unwrap_err().to_string();
        assert!(e.contains("input_tokens") && e.contains("length"), "{e}");
    }

    /// A measure whose inputs are all the shared zero (or, for money, null) column is that shared column in
    /// the output, not summed; one input with values makes it an ordinary sum; a sum that comes out all
    /// zero is made shared.
    #[test]
    fn shared_zero_and_null_columns_merge_into_shared_columns() {
        use crate::zeros::{Fill, fill_of, shared};
        let s = schema();
        let share = |b: RecordBatch, name: &str, fill: Fill| {
            let i = s.index_of(name).unwrap();
            let mut cols = b.columns().to_vec();
            cols[i] = shared(s.field(i).data_type(), b.num_rows(), fill).unwrap();
            RecordBatch::try_new(s.clone(), cols).unwrap()
        };
        let a = rows(&[(0, false, 1, 1, 2, Some(5)), (0, false, 1, 2, 3, None)]);
        let b = rows(&[(0, false, 1, 1, 4, Some(1))]);
        let a = share(share(a, "audio_input_tokens", Fill::Zero), "reported_cost_usd", Fill::Null);
        let b = share(share(b, "audio_input_tokens", Fill::Zero), "reported_cost_usd", Fill::Null);
        // requests summed as usual; error_requests (1 a row) summed; input_tokens: one side shared zero
        let b = share(b, "input_tokens", Fill::Zero);
        let (out, _) = merge(&[a.clone(), b.clone()]).unwrap();
        let col = |name: &str| out.column_by_name(name).unwrap().clone();
        assert_eq!(fill_of(col("audio_input_tokens").as_ref()), Some(Fill::Zero));
        assert_eq!(col("audio_input_tokens").len(), 2);
        assert_eq!(fill_of(col("reported_cost_usd").as_ref()), Some(Fill::Null));
        assert_eq!(col("reported_cost_usd").data_type(), &DataType::Decimal128(COST_PRECISION, COST_SCALE));
        assert_eq!(col("requests").as_primitive::<Int64Type>().values().to_vec(), [6, 3]);
        assert_eq!(col("input_tokens").as_primitive::<Int64Type>().values().to_vec(), [1, 1]);
        assert_eq!(fill_of(col("input_tokens").as_ref()), None);
        assert_eq!(col("cost_usd").as_primitive::<Decimal128Type>().iter().collect::<Vec<_>>(), [Some(6), None]);
        // sums that come out zero everywhere are made shared
        let zero = rows(&[(0, false, 1, 1, 0, Some(0))]);
        let (out, _) = merge(&[zero.clone(), zero]).unwrap();
        assert_eq!(fill_of(out.column_by_name("requests").unwrap().as_ref()), Some(Fill::Zero));
        assert_eq!(fill_of(out.column_by_name("cost_usd").unwrap().as_ref()), Some(Fill::Zero));
    }
}
