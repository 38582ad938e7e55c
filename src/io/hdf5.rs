//! HDF5 over the pure-Rust `rust-hdf5` crate: no C library, no cmake, no build script.
//!
//! What spx writes: n-d numeric datasets (contiguous, or chunked with shuffle + gzip), complex
//! numbers as the compound {r, i} that h5py reads as complex64/128, variable-length UTF-8 string
//! datasets, datasets that grow by blocks of rows (a corpus larger than memory streams through),
//! and scalar string / i64 / f64 attributes. Objects record no timestamps, so the same input and
//! seed give byte-identical files. Every file appears under its final name only when complete.
//!
//! What spx reads: the same, and what h5py writes with its default and `libver='latest'`
//! settings (contiguous and chunked + gzip datasets, with and without an unlimited dimension,
//! big- or little-endian numbers converted to the asked-for type when no value is lost).
//! `rust-hdf5` 0.7 has no public reader for numeric attributes of groups (the root included);
//! [`attrs`] reads those from the root group's object header with the crate's public format
//! decoders.

mod attrs;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewD, IxDyn};
use num_complex::Complex;
use rust_hdf5::{H5Dataset, H5File, H5Group, H5Type};

use crate::error::SpxError;
use crate::io::atomic::with_atomic_path;

/// Chunking and compression of a new dataset.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// Chunk shape; `None` stores the dataset contiguously (no compression possible).
    pub chunk: Option<Vec<usize>>,
    /// gzip level 1–9; needs `chunk`.
    pub deflate: Option<u8>,
    /// Byte shuffle before gzip (helps floats compress).
    pub shuffle: bool,
}

impl Layout {
    pub fn contiguous() -> Self {
        Layout::default()
    }

    pub fn chunked_gzip(chunk: &[usize], level: u8) -> Self {
        Layout {
            chunk: Some(chunk.to_vec()),
            deflate: Some(level),
            shuffle: true,
        }
    }
}

/// An element type spx stores in HDF5: the integers, `f32`/`f64`, and `Complex<f32/f64>`.
pub trait H5Elem: Copy + 'static {
    /// The `rust-hdf5` type with the same bytes in memory.
    type Raw: H5Type + Copy;
    /// `values` as the raw type (borrowed when the types are the same).
    fn to_raw(values: &[Self]) -> Cow<'_, [Self::Raw]>;
    /// A whole dataset, converted to `Self` where that loses nothing.
    fn read_all(ds: &H5Dataset) -> rust_hdf5::Result<Vec<Self>>;
    /// A hyperslab (`starts`, `counts` per dimension).
    fn read_part(
        ds: &H5Dataset,
        starts: &[usize],
        counts: &[usize],
    ) -> rust_hdf5::Result<Vec<Self>>;
}

macro_rules! numeric_elem {
    ($($t:ty),*) => {$(
        impl H5Elem for $t {
            type Raw = $t;
            fn to_raw(values: &[Self]) -> Cow<'_, [Self::Raw]> {
                Cow::Borrowed(values)
            }
            fn read_all(ds: &H5Dataset) -> rust_hdf5::Result<Vec<Self>> {
                ds.read_numeric_as::<$t>()
            }
            fn read_part(
                ds: &H5Dataset,
                starts: &[usize],
                counts: &[usize],
            ) -> rust_hdf5::Result<Vec<Self>> {
                ds.read_numeric_slice_as::<$t>(starts, counts)
            }
        }
    )*};
}
numeric_elem!(i8, i16, i32, i64, u8, u16, u32, u64, f32, f64);

macro_rules! complex_elem {
    ($f:ty, $raw:ty) => {
        impl H5Elem for Complex<$f> {
            type Raw = $raw;
            fn to_raw(values: &[Self]) -> Cow<'_, [Self::Raw]> {
                Cow::Owned(
                    values
                        .iter()
                        .map(|z| <$raw>::from_parts(z.re, z.im))
                        .collect(),
                )
            }
            fn read_all(ds: &H5Dataset) -> rust_hdf5::Result<Vec<Self>> {
                check_complex::<$raw>(ds)?;
                Ok(ds
                    .read_raw::<$raw>()?
                    .into_iter()
                    .map(|z| Complex::new(z.re, z.im))
                    .collect())
            }
            fn read_part(
                ds: &H5Dataset,
                starts: &[usize],
                counts: &[usize],
            ) -> rust_hdf5::Result<Vec<Self>> {
                check_complex::<$raw>(ds)?;
                Ok(ds
                    .read_slice::<$raw>(starts, counts)?
                    .into_iter()
                    .map(|z| Complex::new(z.re, z.im))
                    .collect())
            }
        }
    };
}

/// `from_parts` for both raw complex types.
trait FromParts<F> {
    fn from_parts(re: F, im: F) -> Self;
}
impl FromParts<f32> for rust_hdf5::Complex32 {
    fn from_parts(re: f32, im: f32) -> Self {
        rust_hdf5::Complex32 { re, im }
    }
}
impl FromParts<f64> for rust_hdf5::Complex64 {
    fn from_parts(re: f64, im: f64) -> Self {
        rust_hdf5::Complex64 { re, im }
    }
}
complex_elem!(f32, rust_hdf5::Complex32);
complex_elem!(f64, rust_hdf5::Complex64);

/// A complex read only of the compound {r, i} (or {real, imag}) of the same float width.
fn check_complex<R: H5Type>(ds: &H5Dataset) -> rust_hdf5::Result<()> {
    let dt = ds.datatype()?;
    let ok = match (&dt, R::hdf5_type()) {
        (
            rust_hdf5::DatatypeMessage::Compound { size, members },
            rust_hdf5::DatatypeMessage::Compound { size: want, .. },
        ) => *size == want && members.len() == 2,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(rust_hdf5::Hdf5Error::TypeMismatch(format!(
            "expected a complex compound of {} bytes, found {dt:?}",
            R::element_size()
        )))
    }
}

fn herr(path: &Path, field: &str, e: impl std::fmt::Display) -> SpxError {
    SpxError::field(path, field, e)
}

fn split_parent(name: &str) -> (&str, &str) {
    match name.trim_start_matches('/').rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", name.trim_start_matches('/')),
    }
}

/// An HDF5 file being written; obtained from [`write_h5`].
pub struct H5Writer {
    file: H5File,
    path: PathBuf,
    /// Groups created so far (paths without a leading '/').
    groups: RefCell<BTreeSet<String>>,
}

impl H5Writer {
    /// The group `name` (nested, e.g. "a/b"; "" = root), created with its parents if missing.
    fn group(&self, name: &str) -> Result<H5Group, SpxError> {
        let root = self.file.root_group();
        let name = name.trim_matches('/');
        if name.is_empty() {
            return Ok(root);
        }
        let mut prefix = String::new();
        let mut parent = root;
        for part in name.split('/').filter(|p| !p.is_empty()) {
            let full = if prefix.is_empty() {
                part.to_string()
            } else {
                format!("{prefix}/{part}")
            };
            let exists = self.groups.borrow().contains(&full);
            parent = if exists {
                self.file.root_group().group(&full)
            } else {
                let g = parent.create_group(part);
                if g.is_ok() {
                    self.groups.borrow_mut().insert(full.clone());
                }
                g
            }
            .map_err(|e| herr(&self.path, name, e))?;
            prefix = full;
        }
        Ok(parent)
    }

    /// Write an n-d dataset (f32, f64, the integers, `Complex<f32/f64>`).
    pub fn dataset<T: H5Elem>(
        &self,
        name: &str,
        data: ArrayViewD<T>,
        layout: &Layout,
    ) -> Result<(), SpxError> {
        let (parent, leaf) = split_parent(name);
        let g = self.group(parent)?;
        let mut b = g.new_dataset::<T::Raw>().shape(data.shape());
        if let Some(c) = &layout.chunk {
            b = b.chunk(c);
            b = match (layout.shuffle, layout.deflate) {
                (true, Some(level)) => b.shuffle_deflate(u32::from(level)),
                (false, Some(level)) => b.deflate(u32::from(level)),
                (true, None) => b.shuffle(),
                (false, None) => b,
            };
        }
        let data = data.as_standard_layout();
        let values = data.as_slice().expect("standard layout is contiguous");
        b.create(leaf)
            .and_then(|ds| ds.write_raw(&T::to_raw(values)))
            .map_err(|e| herr(&self.path, name, e))
    }

    /// A 1-D dataset of variable-length UTF-8 strings (h5py: `h5py.string_dtype()`).
    pub fn strings(&self, name: &str, values: &[String]) -> Result<(), SpxError> {
        let (parent, leaf) = split_parent(name);
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        self.group(parent)?
            .write_vlen_strings(leaf, &refs)
            .map(|_| ())
            .map_err(|e| herr(&self.path, name, e))
    }

    /// A dataset of rows that grows by [`AppendRows::append`]; only one block is ever in memory.
    /// `chunk_rows` rows form one chunk.
    pub fn appendable<T: H5Elem>(
        &self,
        name: &str,
        row_len: usize,
        chunk_rows: usize,
        deflate: Option<u8>,
    ) -> Result<AppendRows<T>, SpxError> {
        let ds = self.growing::<T>(name, &[row_len], chunk_rows, deflate, true)?;
        Ok(AppendRows {
            ds,
            rows: 0,
            row_len,
            name: name.to_string(),
            path: self.path.clone(),
            _t: std::marker::PhantomData,
        })
    }

    /// A 1-D dataset that grows by [`AppendVec::append`] (labels, ids next to appended rows).
    pub fn appendable_1d<T: H5Elem>(
        &self,
        name: &str,
        chunk: usize,
        deflate: Option<u8>,
    ) -> Result<AppendVec<T>, SpxError> {
        let ds = self.growing::<T>(name, &[], chunk, deflate, false)?;
        Ok(AppendVec {
            ds,
            len: 0,
            name: name.to_string(),
            path: self.path.clone(),
            _t: std::marker::PhantomData,
        })
    }

    /// A chunked dataset of shape (0, trailing…) with an unlimited first dimension.
    fn growing<T: H5Elem>(
        &self,
        name: &str,
        trailing: &[usize],
        chunk_rows: usize,
        deflate: Option<u8>,
        shuffle: bool,
    ) -> Result<H5Dataset, SpxError> {
        let (parent, leaf) = split_parent(name);
        let g = self.group(parent)?;
        let shape: Vec<usize> = std::iter::once(0).chain(trailing.iter().copied()).collect();
        let chunk: Vec<usize> = std::iter::once(chunk_rows.max(1))
            .chain(trailing.iter().copied())
            .collect();
        let max: Vec<Option<usize>> = std::iter::once(None)
            .chain(trailing.iter().map(|&n| Some(n)))
            .collect();
        let mut b = g
            .new_dataset::<T::Raw>()
            .shape(&shape)
            .chunk(&chunk)
            .max_shape(&max);
        if let Some(level) = deflate {
            b = if shuffle {
                b.shuffle_deflate(u32::from(level))
            } else {
                b.deflate(u32::from(level))
            };
        }
        b.create(leaf).map_err(|e| herr(&self.path, name, e))
    }

    /// A string attribute (variable-length UTF-8; h5py returns `str`) on `object` ("/" = root).
    pub fn attr_str(&self, object: &str, key: &str, value: &str) -> Result<(), SpxError> {
        self.attr(object, key, Attr::Str(value))
    }

    pub fn attr_i64(&self, object: &str, key: &str, value: i64) -> Result<(), SpxError> {
        self.attr(object, key, Attr::I64(value))
    }

    pub fn attr_f64(&self, object: &str, key: &str, value: f64) -> Result<(), SpxError> {
        self.attr(object, key, Attr::F64(value))
    }

    /// An attribute on the dataset `object` if there is one, else on the group of that name.
    fn attr(&self, object: &str, key: &str, value: Attr) -> Result<(), SpxError> {
        let field = format!("{object}@{key}");
        let err = |e: rust_hdf5::Hdf5Error| herr(&self.path, &field, e);
        let o = object.trim_matches('/');
        let (parent, leaf) = split_parent(o);
        if !o.is_empty()
            && let Ok(ds) = self.group(parent)?.dataset_writer(leaf)
        {
            return match value {
                Attr::Str(s) => ds
                    .new_attr::<rust_hdf5::VarLenUnicode>()
                    .shape(())
                    .create(key)
                    .and_then(|a| a.write_string(s)),
                Attr::I64(v) => ds
                    .new_attr::<i64>()
                    .shape(())
                    .create(key)
                    .and_then(|a| a.write_numeric(&v)),
                Attr::F64(v) => ds
                    .new_attr::<f64>()
                    .shape(())
                    .create(key)
                    .and_then(|a| a.write_numeric(&v)),
            }
            .map_err(err);
        }
        if !o.is_empty() && !self.groups.borrow().contains(o) {
            return Err(herr(&self.path, &field, "no such dataset or group"));
        }
        let g = self.group(o)?;
        match value {
            Attr::Str(s) => g.set_attr_string(key, s),
            Attr::I64(v) => g.set_attr_numeric(key, &v),
            Attr::F64(v) => g.set_attr_numeric(key, &v),
        }
        .map_err(err)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

enum Attr<'a> {
    Str(&'a str),
    I64(i64),
    F64(f64),
}

/// Rows appended to a growing 2-D dataset.
pub struct AppendRows<T: H5Elem> {
    ds: H5Dataset,
    rows: usize,
    row_len: usize,
    name: String,
    path: PathBuf,
    _t: std::marker::PhantomData<T>,
}

impl<T: H5Elem> AppendRows<T> {
    /// Append a block of rows (shape `(n, row_len)`).
    pub fn append(&mut self, block: ArrayView2<T>) -> Result<(), SpxError> {
        let (n, w) = block.dim();
        if w != self.row_len {
            return Err(herr(
                &self.path,
                &self.name,
                format!("block has rows of {w} values, dataset has {}", self.row_len),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        let block = block.as_standard_layout();
        let values = block.as_slice().expect("standard layout is contiguous");
        self.ds
            .append(&T::to_raw(values))
            .map_err(|e| herr(&self.path, &self.name, e))?;
        self.rows += n;
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// Values appended to a growing 1-D dataset.
pub struct AppendVec<T: H5Elem> {
    ds: H5Dataset,
    len: usize,
    name: String,
    path: PathBuf,
    _t: std::marker::PhantomData<T>,
}

impl<T: H5Elem> AppendVec<T> {
    pub fn append(&mut self, values: &[T]) -> Result<(), SpxError> {
        if values.is_empty() {
            return Ok(());
        }
        self.ds
            .append(&T::to_raw(values))
            .map_err(|e| herr(&self.path, &self.name, e))?;
        self.len += values.len();
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Create `path` atomically: the file appears under its final name only if `build` succeeds.
pub fn write_h5<T, F>(path: &Path, build: F) -> Result<T, SpxError>
where
    F: FnOnce(&mut H5Writer) -> Result<T, SpxError>,
{
    with_atomic_path(path, |tmp| {
        let file = H5File::options()
            .track_times(false)
            .create(tmp)
            .map_err(|e| herr(path, "file", e))?;
        let mut w = H5Writer {
            file,
            path: path.to_path_buf(),
            groups: RefCell::new(BTreeSet::new()),
        };
        let out = build(&mut w)?;
        w.file.close().map_err(|e| herr(path, "file", e))?;
        Ok(out)
    })
}

/// Reads an HDF5 file; every error names the file and the dataset or attribute.
pub struct H5Reader {
    file: H5File,
    path: PathBuf,
}

impl H5Reader {
    pub fn open(path: &Path) -> Result<Self, SpxError> {
        if !path.exists() {
            return Err(SpxError::file(path, "no such file"));
        }
        let file = H5File::open(path)
            .map_err(|e| SpxError::file(path, format!("not a readable HDF5 file: {e}")))?;
        Ok(H5Reader {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn ds(&self, name: &str) -> Result<H5Dataset, SpxError> {
        self.file
            .dataset(name.trim_start_matches('/'))
            .map_err(|_| herr(&self.path, name, "dataset not found"))
    }

    /// Whether a dataset of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.file.dataset(name.trim_start_matches('/')).is_ok()
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>, SpxError> {
        Ok(self.ds(name)?.shape())
    }

    /// Chunk shape, `None` for contiguous storage.
    pub fn chunk(&self, name: &str) -> Result<Option<Vec<usize>>, SpxError> {
        Ok(self.ds(name)?.chunk_dims())
    }

    /// Whether the dataset is gzip-compressed.
    pub fn is_deflated(&self, name: &str) -> Result<bool, SpxError> {
        let filters = self
            .ds(name)?
            .filters()
            .map_err(|e| herr(&self.path, name, e))?;
        Ok(filters
            .iter()
            .any(|f| f.id == rust_hdf5::format::messages::filter::FILTER_DEFLATE))
    }

    /// Read a whole dataset (integers and floats widen to the asked-for type where exact).
    pub fn read<T: H5Elem>(&self, name: &str) -> Result<ArrayD<T>, SpxError> {
        let ds = self.ds(name)?;
        let shape = ds.shape();
        let values = T::read_all(&ds).map_err(|e| herr(&self.path, name, e))?;
        ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| herr(&self.path, name, e))
    }

    /// Rows `start..start+n` of a 2-D dataset, reading only the chunks they touch.
    pub fn read_rows<T: H5Elem>(
        &self,
        name: &str,
        start: usize,
        n: usize,
    ) -> Result<Array2<T>, SpxError> {
        let ds = self.ds(name)?;
        let shape = ds.shape();
        if shape.len() != 2 {
            return Err(herr(
                &self.path,
                name,
                format!("expected a 2-D dataset, found shape {shape:?}"),
            ));
        }
        let end = start.saturating_add(n).min(shape[0]);
        if start >= end {
            return Ok(Array2::from_shape_vec((0, shape[1]), Vec::new()).expect("empty"));
        }
        let values = T::read_part(&ds, &[start, 0], &[end - start, shape[1]])
            .map_err(|e| herr(&self.path, name, e))?;
        Array2::from_shape_vec((end - start, shape[1]), values)
            .map_err(|e| herr(&self.path, name, e))
    }

    /// A 1-D string dataset (variable- or fixed-length, UTF-8 or ASCII).
    pub fn strings(&self, name: &str) -> Result<Vec<String>, SpxError> {
        self.ds(name)?
            .read_strings()
            .map_err(|e| herr(&self.path, name, e))
    }

    /// The attribute `key` of `object` ("/" = root, a group or a dataset).
    fn attr_value(&self, object: &str, key: &str) -> Result<attrs::Value, SpxError> {
        let field = format!("{object}@{key}");
        let o = object.trim_matches('/');
        if !o.is_empty()
            && let Ok(ds) = self.file.dataset(o)
        {
            let a = ds
                .attr(key)
                .map_err(|_| herr(&self.path, &field, "attribute not found"))?;
            let dt = a.datatype().map_err(|e| herr(&self.path, &field, e))?;
            let raw = a.read_raw().map_err(|e| herr(&self.path, &field, e))?;
            return attrs::Value::decode(&dt, &raw).map_err(|e| herr(&self.path, &field, e));
        }
        attrs::group_attr(&self.path, o, key).map_err(|e| herr(&self.path, &field, e))
    }

    pub fn attr_str(&self, object: &str, key: &str) -> Result<String, SpxError> {
        let field = format!("{object}@{key}");
        let o = object.trim_matches('/');
        // Variable-length strings live in the global heap: the crate resolves them.
        let via_crate = if o.is_empty() {
            self.file.attr_string(key).ok()
        } else if let Ok(ds) = self.file.dataset(o) {
            ds.attr(key).and_then(|a| a.read_string()).ok()
        } else {
            self.file
                .root_group()
                .group(o)
                .and_then(|g| g.attr_string(key))
                .ok()
        };
        if let Some(s) = via_crate {
            return Ok(s);
        }
        match self.attr_value(object, key)? {
            attrs::Value::Str(s) => Ok(s),
            other => Err(herr(
                &self.path,
                &field,
                format!("expected a string, found {other}"),
            )),
        }
    }

    pub fn attr_i64(&self, object: &str, key: &str) -> Result<i64, SpxError> {
        let field = format!("{object}@{key}");
        match self.attr_value(object, key)? {
            attrs::Value::Int(v) => Ok(v),
            other => Err(herr(
                &self.path,
                &field,
                format!("expected an integer, found {other}"),
            )),
        }
    }

    pub fn attr_f64(&self, object: &str, key: &str) -> Result<f64, SpxError> {
        let field = format!("{object}@{key}");
        match self.attr_value(object, key)? {
            attrs::Value::Float(v) => Ok(v),
            attrs::Value::Int(v) => Ok(v as f64),
            other => Err(herr(
                &self.path,
                &field,
                format!("expected a number, found {other}"),
            )),
        }
    }
}
