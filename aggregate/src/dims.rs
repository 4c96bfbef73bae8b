//! The window engine's dictionary of dimension values: the state rows carry each dimension as a `u32` id
//! into it (4 bytes a row and dimension, where the strings took ~19 on average), so the rows waiting in the
//! open windows and the copies a merge takes of them hold no strings.
//!
//! Ids are per dimension and dense, in the order values were first seen; id 0 is [`OVERFLOW`] in every
//! dimension. The dictionary only grows while the engine runs (the values a long run sees are owners,
//! identities, models: thousands, not millions; a restart builds it again from the live state). The
//! commit's state snapshot writes it as one more part ([`Dims::batch`], label [`DIMS_PART`]), so the parts of
//! window rows keep their id columns as they are in memory, and a part unchanged since the last commit is
//! not written again.

use std::sync::Arc;

use aifinops_schemas::event::DIMENSIONS;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, RecordBatch, StringArray, UInt8Array, UInt32Array,
};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use hashbrown::HashTable;

use crate::AggregateError;
use crate::window::OVERFLOW;

pub use aifinops_schemas::rollup::DIMS_PART;

/// Bytes after the last value, so that a value of up to this many bytes is copied as one fixed-size block.
const PAD: usize = 32;

/// The values of one dimension: their bytes end to end (and [`PAD`] zero bytes), and a table from value
/// to id.
#[derive(Clone)]
struct Values {
    bytes: Vec<u8>,
    /// `offsets[id]..offsets[id + 1]` is the value of `id`.
    offsets: Vec<u32>,
    table: HashTable<u32>,
}

impl Values {
    fn new() -> Values {
        Values { bytes: vec![0; PAD], offsets: vec![0], table: HashTable::new() }
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    fn get(&self, id: u32) -> &str {
        let (a, b) = (self.offsets[id as usize] as usize, self.offsets[id as usize + 1] as usize);
        // every value was appended from a `&str`
        std::str::from_utf8(&self.bytes[a..b]).expect("dimension values are UTF-8")
    }

    /// The id of `v` (UTF-8), and whether it was added. `Err` only when the dimension's values outgrow 4 GiB.
    fn intern(&mut self, v: &[u8], state: &foldhash::fast::FixedState) -> Result<(u32, bool), String> {
        let hash = hash_of(state, v);
        let Values { bytes, offsets, table } = self;
        let eq = |&id: &u32| {
            let (a, b) = (offsets[id as usize] as usize, offsets[id as usize + 1] as usize);
            &bytes[a..b] == v
        };
        if let Some(&id) = table.find(hash, eq) {
            return Ok((id, false));
        }
        let id = u32::try_from(offsets.len() - 1).map_err(|_| "more than 2^32 values".to_string())?;
        bytes.truncate(bytes.len() - PAD);
        bytes.extend_from_slice(v);
        let end = u32::try_from(bytes.len()).map_err(|_| "values longer than 4 GiB".to_string())?;
        bytes.extend_from_slice(&[0; PAD]);
        offsets.push(end);
        let (bytes, offsets) = (&*bytes, &*offsets);
        table.insert_unique(hash, id, |&id| {
            let (a, b) = (offsets[id as usize] as usize, offsets[id as usize + 1] as usize);
            hash_of(state, &bytes[a..b])
        });
        Ok((id, true))
    }
}

fn hash_of(state: &foldhash::fast::FixedState, v: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    state.hash_one(v)
}

/// The dictionary of every dimension (see the module docs).
#[derive(Clone)]
pub(crate) struct Dims {
    values: Vec<Values>,
    state: foldhash::fast::FixedState,
    /// The snapshot part of the dictionary as it is, until a value is added.
    batch: Option<RecordBatch>,
}

impl std::fmt::Debug for Dims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dims").field("values", &self.values.iter().map(Values::len).collect::<Vec<_>>()).finish()
    }
}

impl Dims {
    pub(crate) fn new() -> Dims {
        let state = foldhash::fast::FixedState::with_seed(0x5eed_d1a5);
        let mut values: Vec<Values> = DIMENSIONS.iter().map(|_| Values::new()).collect();
        for v in &mut values {
            let (id, _) = v.intern(OVERFLOW.as_bytes(), &state).expect("one value");
            debug_assert_eq!(id, 0);
        }
        Dims { values, state, batch: None }
    }

    /// The id of [`OVERFLOW`] in every dimension.
    pub(crate) const OVERFLOW_ID: u32 = 0;

    /// Number of values of dimension `d`.
    pub(crate) fn len(&self, d: usize) -> usize {
        self.values[d].len()
    }

    /// The value of `id` in dimension `d` (`DIMENSIONS[d]`).
    pub(crate) fn get(&self, d: usize, id: u32) -> &str {
        self.values[d].get(id)
    }

    /// The ids of a column of dimension `d` (no nulls: a rollup's dimensions are never null).
    pub(crate) fn intern(&mut self, d: usize, col: &StringArray) -> Result<UInt32Array, AggregateError> {
        if col.null_count() > 0 {
            return Err(AggregateError::State(format!("rollup rows with a null {}", DIMENSIONS[d])));
        }
        let mut ids = Vec::with_capacity(col.len());
        let mut added = false;
        let (values, state) = (&mut self.values[d], &self.state);
        let (offsets, data) = (col.value_offsets(), col.value_data());
        // rows of a GROUP BY's output often repeat the value of the row before (half of them in replay)
        let mut last: (&[u8], u32) = (&[], u32::MAX);
        for w in offsets.windows(2) {
            let v = &data[w[0] as usize..w[1] as usize];
            if last.1 != u32::MAX && last.0 == v {
                ids.push(last.1);
                continue;
            }
            let (id, new) = values
                .intern(v, state)
                .map_err(|e| AggregateError::State(format!("dimension {}: {e}", DIMENSIONS[d])))?;
            added |= new;
            ids.push(id);
            last = (v, id);
        }
        if added {
            self.batch = None;
        }
        Ok(UInt32Array::from(ids))
    }

    /// The values of `ids` of dimension `d`, as a string column.
    pub(crate) fn strings(&self, d: usize, ids: &UInt32Array) -> Result<StringArray, AggregateError> {
        let v = &self.values[d];
        let n = v.len();
        let mut offsets: Vec<i32> = Vec::with_capacity(ids.len() + 1);
        offsets.push(0);
        let mut len = 0usize;
        for &id in ids.values().iter() {
            if id as usize >= n {
                return Err(AggregateError::State(format!(
                    "state rows with {} id {id}, beyond the {n} values of the dictionary",
                    DIMENSIONS[d]
                )));
            }
            len += (v.offsets[id as usize + 1] - v.offsets[id as usize]) as usize;
            offsets.push(i32::try_from(len).map_err(|_| {
                AggregateError::State(format!("{} values of one batch longer than 2 GiB", DIMENSIONS[d]))
            })?);
        }
        // values of up to PAD bytes (nearly all) are copied as one PAD-byte block, the next value's copy
        // overwriting what went past this one's end: no call to memcpy per value
        let mut bytes = vec![0u8; len + PAD];
        let mut at = 0usize;
        for (&id, w) in ids.values().iter().zip(offsets.windows(2)) {
            let n = (w[1] - w[0]) as usize;
            let from = v.offsets[id as usize] as usize;
            if n <= PAD {
                bytes[at..at + PAD].copy_from_slice(&v.bytes[from..from + PAD]);
            } else {
                bytes[at..at + n].copy_from_slice(&v.bytes[from..from + n]);
            }
            at += n;
        }
        bytes.truncate(len);
        let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
        StringArray::try_new(offsets, Buffer::from_vec(bytes), ids.nulls().cloned())
            .map_err(|source| AggregateError::Arrow { context: format!("the values of {}", DIMENSIONS[d]), source })
    }

    /// A column of dimension `d` ids as a dictionary column (`Dictionary(UInt32, Utf8)`): the ids are its
    /// keys as they are, and its values are every value of the dimension, a slice of the snapshot part's
    /// column ([`Dims::batch`]), so the closes and the commit between two new values share one copy of
    /// them and no row's string is copied.
    pub(crate) fn dictionary(&mut self, d: usize, ids: &UInt32Array) -> Result<ArrayRef, AggregateError> {
        let start = (0..d).map(|e| self.len(e)).sum();
        let values = self.batch().column(1).slice(start, self.len(d));
        // checks every id against the dimension's values: an id it does not have is an error, not a wrong value
        DictionaryArray::<UInt32Type>::try_new(ids.clone(), values).map(|a| Arc::new(a) as ArrayRef).map_err(|e| {
            AggregateError::State(format!("state rows with {} ids beyond the dictionary: {e}", DIMENSIONS[d]))
        })
    }

    fn schema() -> SchemaRef {
        static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
        SCHEMA
            .get_or_init(|| {
                Arc::new(Schema::new(vec![
                    Field::new("dimension", DataType::UInt8, false),
                    Field::new("value", DataType::Utf8, false),
                ]))
            })
            .clone()
    }

    /// The dictionary as the snapshot's part: one row per (dimension index, value), in id order. The same
    /// batch (the same arrays) until a value is added, so an unchanged dictionary is not written again.
    pub(crate) fn batch(&mut self) -> RecordBatch {
        if let Some(b) = &self.batch {
            return b.clone();
        }
        let mut dim: Vec<u8> = Vec::new();
        let mut offsets: Vec<i32> = vec![0];
        let mut bytes: Vec<u8> = Vec::new();
        for (d, v) in self.values.iter().enumerate() {
            for id in 0..v.len() as u32 {
                dim.push(d as u8);
                bytes.extend_from_slice(v.get(id).as_bytes());
                offsets.push(i32::try_from(bytes.len()).expect("a dictionary under 2 GiB"));
            }
        }
        for (d, name) in DIMENSIONS.iter().enumerate() {
            metrics::gauge!("aifinops_window_dimension_values", "dimension" => *name).set(self.len(d) as f64);
        }
        let value = StringArray::new(OffsetBuffer::new(ScalarBuffer::from(offsets)), Buffer::from_vec(bytes), None);
        let cols: Vec<ArrayRef> = vec![Arc::new(UInt8Array::from(dim)), Arc::new(value)];
        let b = RecordBatch::try_new(Self::schema(), cols).expect("the dictionary's schema");
        self.batch = Some(b.clone());
        b
    }

    /// A dictionary read back from its snapshot part: the same ids for the same values.
    pub(crate) fn from_batch(b: &RecordBatch) -> Result<Dims, AggregateError> {
        let bad = |why: String| AggregateError::State(format!("the state's dimension dictionary {why}"));
        let dim = b
            .column_by_name("dimension")
            .and_then(|c| c.as_primitive_opt::<datafusion::arrow::datatypes::UInt8Type>())
            .ok_or_else(|| bad("has no UInt8 column dimension".into()))?;
        let value = b
            .column_by_name("value")
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| bad("has no Utf8 column value".into()))?;
        let mut dims = Dims { values: DIMENSIONS.iter().map(|_| Values::new()).collect(), ..Dims::new() };
        for i in 0..b.num_rows() {
            let d = dim.value(i) as usize;
            if d >= DIMENSIONS.len() || dim.is_null(i) || value.is_null(i) {
                return Err(bad(format!("has a bad row {i}")));
            }
            let v = value.value(i);
            let (values, state) = (&mut dims.values[d], &dims.state);
            let (_, new) = values.intern(v.as_bytes(), state).map_err(bad)?;
            if !new {
                return Err(bad(format!("has {v:?} twice in {}", DIMENSIONS[d])));
            }
        }
        if let Some(d) = (0..DIMENSIONS.len()).find(|&d| dims.values[d].len() == 0 || dims.get(d, 0) != OVERFLOW) {
            return Err(bad(format!("does not start {} with {OVERFLOW}", DIMENSIONS[d])));
        }
        Ok(dims)
    }
}

/// The strings of a dimension column of rollup rows, plain (`Utf8`: rows read from the lake, tests) or as
/// the window engine emits them (`Dictionary(UInt32, Utf8)`, [`Dims::dictionary`]). Detectors read closed
/// windows' dimensions through it.
#[derive(Clone, Copy)]
pub(crate) enum Strs<'a> {
    Plain(&'a StringArray),
    Dict(&'a [u32], &'a StringArray),
}

impl<'a> Strs<'a> {
    /// Column `name` of rollup rows; panics on a column that is neither (the rollup schema has only these).
    pub(crate) fn of(rows: &'a RecordBatch, name: &str) -> Strs<'a> {
        let c = rows.column_by_name(name).unwrap_or_else(|| panic!("rollup rows without column {name}"));
        match c.data_type() {
            DataType::Dictionary(k, v) if **k == DataType::UInt32 && **v == DataType::Utf8 => {
                let d = c.as_dictionary::<UInt32Type>();
                Strs::Dict(d.keys().values(), d.values().as_string::<i32>())
            }
            _ => Strs::Plain(c.as_string::<i32>()),
        }
    }

    #[inline]
    pub(crate) fn value(&self, row: usize) -> &'a str {
        match self {
            Strs::Plain(a) => a.value(row),
            Strs::Dict(keys, values) => values.value(keys[row] as usize),
        }
    }
}

/// Whether `c` is a column of dimension ids (state rows) rather than of values (rollup rows).
pub(crate) fn is_ids(c: &dyn Array) -> bool {
    c.data_type() == &DataType::UInt32
}

/// The ids of a state column of dimension ids.
pub(crate) fn ids(c: &ArrayRef) -> &UInt32Array {
    c.as_primitive::<datafusion::arrow::datatypes::UInt32Type>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_get_dense_ids_from_one_and_come_back_through_the_snapshot_part() {
        let mut d = Dims::new();
        let a = d.intern(0, &StringArray::from(vec!["team-a", "team-b", "team-a", "", "team-b"])).unwrap();
        assert_eq!(a.values().to_vec(), vec![1, 2, 1, 3, 2]);
        let m = d.intern(8, &StringArray::from(vec!["gpt-4o", OVERFLOW])).unwrap();
        assert_eq!(m.values().to_vec(), vec![1, 0]);
        assert_eq!(d.strings(0, &a).unwrap(), StringArray::from(vec!["team-a", "team-b", "team-a", "", "team-b"]));
        let part = d.batch();
        // unchanged: the same arrays; a new value: a new part
        assert!(Arc::ptr_eq(part.column(1), d.batch().column(1)));
        let back = Dims::from_batch(&part).unwrap();
        assert_eq!(back.strings(8, &m).unwrap(), StringArray::from(vec!["gpt-4o", OVERFLOW]));
        assert_eq!((back.len(0), back.len(8), back.len(1)), (4, 2, 1));
        d.intern(0, &StringArray::from(vec!["team-c"])).unwrap();
        assert!(!Arc::ptr_eq(part.column(1), d.batch().column(1)));
        // an id the dictionary does not have is an error, not a wrong value
        let err = back.strings(0, &UInt32Array::from(vec![7])).unwrap_err().to_string();
        assert!(err.contains("id 7"), "{err}");
        // a dictionary part that lost a row does not restore
        let cut = part.slice(1, part.num_rows() - 1);
        assert!(Dims::from_batch(&cut).is_err());
    }
}
