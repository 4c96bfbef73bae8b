//! Measure columns with one value in every row: zero (a token class or request kind no call of the batch
//! has: audio, 1-hour cache writes, retries, errors, unpriced calls… are zero in most rows of most
//! deployments) or null (a money column no call reported, `reported_cost_usd` when the gateway sends no cost).
//! Such a column of the window state does not hold its own buffer of zeros: it is a slice of one zeroed
//! allocation shared by all of them, which is never written (so its pages stay the kernel's zero page and
//! take no memory), with, for a null column, a validity bitmap of its own.
//!
//! The engine makes a column shared where it is built (the GROUP BY's output, a merge's sums) and keeps it
//! shared where rows are selected ([`select`]): a merge does not add up a measure whose inputs are all
//! shared zeros. What reads the columns (the lake's writer, detectors, snapshots) sees ordinary arrays.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Decimal128Array, Int64Array};
use datafusion::arrow::buffer::{Buffer, NullBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Int64Type};
use datafusion::arrow::error::ArrowError;

/// Bytes of the shared allocation: columns of up to 4M money values or 8M counts. Above glibc's largest
/// mmap threshold (32 MiB), so it is always a fresh mapping of zero pages.
const BYTES: usize = 64 << 20;

fn zeros() -> &'static Buffer {
    static ZEROS: OnceLock<Buffer> = OnceLock::new();
    // `vec![0; n]` of 16-byte values is a `calloc`, which for a fresh mapping writes nothing (an allocation
    // aligned beyond 16 bytes, as Arrow's `MutableBuffer` asks, is zeroed by writing every byte: 64 MiB of
    // memory taken for nothing)
    ZEROS.get_or_init(|| Buffer::from_vec(vec![0i128; BYTES / 16]))
}

/// What a shared column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    Zero,
    Null,
}

/// The shared column of `n` rows of `t` (`Int64` or `Decimal128`) holding `fill`; `None` for another type
/// or a column longer than the allocation.
pub(crate) fn shared(t: &DataType, n: usize, fill: Fill) -> Option<ArrayRef> {
    let nulls = (fill == Fill::Null).then(|| NullBuffer::new_null(n));
    match t {
        DataType::Int64 if n * 8 <= BYTES => {
            Some(Arc::new(Int64Array::new(ScalarBuffer::new(zeros().clone(), 0, n), nulls)))
        }
        DataType::Decimal128(p, s) if n * 16 <= BYTES => Some(Arc::new(
            Decimal128Array::new(ScalarBuffer::new(zeros().clone(), 0, n), nulls)
                .with_precision_and_scale(*p, *s)
                .ok()?,
        )),
        _ => None,
    }
}

/// What `c` holds when it is a shared column (its values in the shared allocation, every row zero or every
/// row null); `None` for any other column.
pub(crate) fn fill_of(c: &dyn Array) -> Option<Fill> {
    let values = match c.data_type() {
        DataType::Int64 => c.as_primitive::<Int64Type>().values().inner(),
        DataType::Decimal128(..) => c.as_primitive::<Decimal128Type>().values().inner(),
        _ => return None,
    };
    let base = zeros().as_ptr() as usize;
    let at = values.as_ptr() as usize;
    if at < base || at + values.len() > base + BYTES {
        return None;
    }
    match c.null_count() {
        0 => Some(Fill::Zero),
        n if n == c.len() => Some(Fill::Null),
        _ => None,
    }
}

/// `c`, or the shared column of its length and type when every row of it is zero (none null) or every row
/// null. Columns of other types, and shared ones, are returned as they are.
pub(crate) fn compact(c: ArrayRef) -> ArrayRef {
    if c.is_empty() || fill_of(c.as_ref()).is_some() {
        return c;
    }
    let fill = match c.data_type() {
        _ if c.null_count() == c.len() => Fill::Null,
        _ if c.null_count() > 0 => return c,
        DataType::Int64 if c.as_primitive::<Int64Type>().values().iter().all(|&v| v == 0) => Fill::Zero,
        DataType::Decimal128(..) if c.as_primitive::<Decimal128Type>().values().iter().all(|&v| v == 0) => Fill::Zero,
        _ => return c,
    };
    shared(c.data_type(), c.len(), fill).unwrap_or(c)
}

/// `n` rows of `c` picked by `pick` (a filter or take of `c` that yields `n` rows): the shared column of
/// `n` rows when `c` is one, without running `pick`.
pub(crate) fn select(
    c: &ArrayRef,
    n: usize,
    pick: impl FnOnce(&dyn Array) -> Result<ArrayRef, ArrowError>,
) -> Result<ArrayRef, ArrowError> {
    match fill_of(c.as_ref()).and_then(|f| shared(c.data_type(), n, f)) {
        Some(s) => Ok(s),
        None => pick(c.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_null_columns_share_one_allocation_and_read_as_ordinary_arrays() {
        let money = DataType::Decimal128(38, 18);
        let z = compact(Arc::new(Int64Array::from(vec![0, 0, 0])));
        assert_eq!(fill_of(z.as_ref()), Some(Fill::Zero));
        assert_eq!(z.as_primitive::<Int64Type>().values().to_vec(), [0, 0, 0]);
        let n = compact(Arc::new(Decimal128Array::from(vec![None, None]).with_precision_and_scale(38, 18).unwrap()));
        assert_eq!((fill_of(n.as_ref()), n.data_type(), n.null_count()), (Some(Fill::Null), &money, 2));
        let d = compact(Arc::new(Decimal128Array::from(vec![0, 0]).with_precision_and_scale(38, 18).unwrap()));
        assert_eq!((fill_of(d.as_ref()), d.data_type()), (Some(Fill::Zero), &money));
        // the same allocation
        let ptr = |c: &ArrayRef| c.to_data().buffers()[0].as_ptr();
        assert_eq!(ptr(&z), ptr(&d));
        // columns with a value, or with some nulls, stay as they are
        for c in [
            Arc::new(Int64Array::from(vec![0, 1])) as ArrayRef,
            Arc::new(Int64Array::from(vec![Some(0), None])),
            Arc::new(Decimal128Array::from(vec![0, 7]).with_precision_and_scale(38, 18).unwrap()),
        ] {
            let back = compact(c.clone());
            assert!(Arc::ptr_eq(&back, &c) && fill_of(back.as_ref()).is_none());
        }
        // a shared column's slice is still one; a selection of it is one without running the selection
        assert_eq!(fill_of(z.slice(1, 2).as_ref()), Some(Fill::Zero));
        let picked = select(&n, 5, |_| unreachable!("not run")).unwrap();
        assert_eq!((fill_of(picked.as_ref()), picked.len(), picked.data_type()), (Some(Fill::Null), 5, &money));
        let other: ArrayRef = Arc::new(Int64Array::from(vec![4, 5]));
        let picked = select(&other, 1, |c| Ok(c.slice(1, 1))).unwrap();
        assert_eq!(picked.as_primitive::<Int64Type>().values().to_vec(), [5]);
        // types other than counts and money are not shared
        assert!(shared(&DataType::Utf8, 3, Fill::Zero).is_none());
    }
}
