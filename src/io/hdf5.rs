//! HDF5 over `hdf5-metno` (HDF5 2.x built from source and linked statically).
//!
//! Why not the pure-Rust `hdf5-pure` 0.47: measured against h5py 3.16 it cannot grow a rank-2
//! dataset (`AppendInPlaceUnsupported("only rank-1 datasets are supported")`), so a corpus
//! larger than memory could only be stored as a 1-D or array-typed dataset that h5py users do
//! not expect; it could not read gzip-filtered chunked datasets from h5py `libver='latest'` files
//! ("invalid data layout version: 5") nor edit h5py's default files. The C library does all of
//! that; its price is cmake ≥ 3.26 at build time.
//!
//! Complex numbers are stored as the compound {r, i}, which h5py reads as complex64/128.

use std::path::{Path, PathBuf};

use hdf5::types::{FixedAscii, VarLenAscii, VarLenUnicode};
use hdf5::{Extent, File, Group, H5Type};
use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewD, s};

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
    file: File,
    path: PathBuf,
}

impl H5Writer {
    /// The group `name` (nested, e.g. "a/b"), created with its parents if missing.
    pub fn group(&self, name: &str) -> Result<Group, SpxError> {
        let mut g: Group = (*self.file).clone();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            g = if g.link_exists(part) {
                g.group(part)
            } else {
                g.create_group(part)
            }
            .map_err(|e| herr(&self.path, name, e))?;
        }
        Ok(g)
    }

    /// Write an n-d dataset (any `H5Type`: f32, f64, i8, i16, i64, Complex32, …).
    pub fn dataset<T: H5Type + Clone>(
        &self,
        name: &str,
        data: ArrayViewD<T>,
        layout: &Layout,
    ) -> Result<(), SpxError> {
        let (parent, leaf) = split_parent(name);
        let g = self.group(parent)?;
        let mut b = g.new_dataset_builder();
        if let Some(c) = &layout.chunk {
            b = b.chunk(c.clone());
            if layout.shuffle {
                b = b.shuffle();
            }
            if let Some(level) = layout.deflate {
                b = b.deflate(level);
            }
        }
        let data = data.as_standard_layout();
        b.with_data(&data)
            .create(leaf)
            .map_err(|e| herr(&self.path, name, e))?;
        Ok(())
    }

    /// A 1-D dataset of variable-length UTF-8 strings (h5py: `h5py.string_dtype()`).
    pub fn strings(&self, name: &str, values: &[String]) -> Result<(), SpxError> {
        let v: Vec<VarLenUnicode> = values
            .iter()
            .map(|s| s.parse().map_err(|e| herr(&self.path, name, e)))
            .collect::<Result<_, _>>()?;
        let arr = ndarray::Array1::from(v).into_dyn();
        self.dataset(name, arr.view(), &Layout::contiguous())
    }

    /// A dataset of rows that grows by [`AppendRows::append`]; only one block is ever in memory.
    /// `chunk_rows` rows form one chunk.
    pub fn appendable<T: H5Type + Clone>(
        &self,
        name: &str,
        row_len: usize,
        chunk_rows: usize,
        deflate: Option<u8>,
    ) -> Result<AppendRows<T>, SpxError> {
        let (parent, leaf) = split_parent(name);
        let g = self.group(parent)?;
        let mut b = g
            .new_dataset::<T>()
            .chunk((chunk_rows.max(1), row_len))
            .shape((Extent::resizable(0), Extent::fixed(row_len)));
        if let Some(level) = deflate {
            b = b.shuffle().deflate(level);
        }
        let ds = b.create(leaf).map_err(|e| herr(&self.path, name, e))?;
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
    pub fn appendable_1d<T: H5Type>(
        &self,
        name: &str,
        chunk: usize,
        deflate: Option<u8>,
    ) -> Result<AppendVec<T>, SpxError> {
        let (parent, leaf) = split_parent(name);
        let g = self.group(parent)?;
        let mut b = g
            .new_dataset::<T>()
            .chunk(chunk.max(1))
            .shape(Extent::resizable(0));
        if let Some(level) = deflate {
            b = b.deflate(level);
        }
        let ds = b.create(leaf).map_err(|e| herr(&self.path, name, e))?;
        Ok(AppendVec {
            ds,
            len: 0,
            name: name.to_string(),
            path: self.path.clone(),
            _t: std::marker::PhantomData,
        })
    }

    fn location(&self, object: &str) -> Result<hdf5::Location, SpxError> {
        let o = object.trim_start_matches('/');
        if o.is_empty() {
            return Ok((**self.file).clone());
        }
        if let Ok(ds) = self.file.dataset(o) {
            return Ok((**ds).clone());
        }
        self.file
            .group(o)
            .map(|g| (*g).clone())
            .map_err(|e| herr(&self.path, object, e))
    }

    /// A string attribute (variable-length UTF-8; h5py returns `str`) on `object` ("/" = root).
    pub fn attr_str(&self, object: &str, key: &str, value: &str) -> Result<(), SpxError> {
        let field = format!("{object}@{key}");
        let v: VarLenUnicode = value.parse().map_err(|e| herr(&self.path, &field, e))?;
        self.location(object)?
            .new_attr::<VarLenUnicode>()
            .create(key)
            .and_then(|a| a.write_scalar(&v))
            .map_err(|e| herr(&self.path, &field, e))
    }

    pub fn attr_i64(&self, object: &str, key: &str, value: i64) -> Result<(), SpxError> {
        let field = format!("{object}@{key}");
        self.location(object)?
            .new_attr::<i64>()
            .create(key)
            .and_then(|a| a.write_scalar(&value))
            .map_err(|e| herr(&self.path, &field, e))
    }

    pub fn attr_f64(&self, object: &str, key: &str, value: f64) -> Result<(), SpxError> {
        let field = format!("{object}@{key}");
        self.location(object)?
            .new_attr::<f64>()
            .create(key)
            .and_then(|a| a.write_scalar(&value))
            .map_err(|e| herr(&self.path, &field, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Rows appended to a growing 2-D dataset.
pub struct AppendRows<T: H5Type + Clone> {
    ds: hdf5::Dataset,
    rows: usize,
    row_len: usize,
    name: String,
    path: PathBuf,
    _t: std::marker::PhantomData<T>,
}

impl<T: H5Type + Clone> AppendRows<T> {
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
        let start = self.rows;
        self.ds
            .resize((start + n, w))
            .and_then(|_| {
                self.ds
                    .write_slice(&block.as_standard_layout(), s![start..start + n, ..])
            })
            .map_err(|e| herr(&self.path, &self.name, e))?;
        self.rows += n;
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// Values appended to a growing 1-D dataset.
pub struct AppendVec<T: H5Type> {
    ds: hdf5::Dataset,
    len: usize,
    name: String,
    path: PathBuf,
    _t: std::marker::PhantomData<T>,
}

impl<T: H5Type> AppendVec<T> {
    pub fn append(&mut self, values: &[T]) -> Result<(), SpxError> {
        if values.is_empty() {
            return Ok(());
        }
        let start = self.len;
        self.ds
            .resize(start + values.len())
            .and_then(|_| self.ds.write_slice(values, start..start + values.len()))
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
        let file = File::create(tmp).map_err(|e| herr(path, "file", e))?;
        let mut w = H5Writer {
            file,
            path: path.to_path_buf(),
        };
        let out = build(&mut w)?;
        w.file.close().map_err(|e| herr(path, "file", e))?;
        Ok(out)
    })
}

/// Reads an HDF5 file; every error names the file and the dataset or attribute.
pub struct H5Reader {
    file: File,
    path: PathBuf,
}

impl H5Reader {
    pub fn open(path: &Path) -> Result<Self, SpxError> {
        if !path.exists() {
            return Err(SpxError::file(path, "no such file"));
        }
        let file = File::open(path)
            .map_err(|e| SpxError::file(path, format!("not a readable HDF5 file: {e}")))?;
        Ok(H5Reader {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn ds(&self, name: &str) -> Result<hdf5::Dataset, SpxError> {
        self.file
            .dataset(name.trim_start_matches('/'))
            .map_err(|_| herr(&self.path, name, "dataset not found"))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.file.link_exists(name.trim_start_matches('/'))
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>, SpxError> {
        Ok(self.ds(name)?.shape())
    }

    /// Chunk shape, `None` for contiguous storage.
    pub fn chunk(&self, name: &str) -> Result<Option<Vec<usize>>, SpxError> {
        Ok(self.ds(name)?.chunk())
    }

    /// Whether the dataset is gzip-compressed.
    pub fn is_deflated(&self, name: &str) -> Result<bool, SpxError> {
        Ok(self
            .ds(name)?
            .filters()
            .iter()
            .any(|f| matches!(f, hdf5::filters::Filter::Deflate(_))))
    }

    /// Read a whole dataset (HDF5 converts numeric types where it can).
    pub fn read<T: H5Type>(&self, name: &str) -> Result<ArrayD<T>, SpxError> {
        self.ds(name)?
            .read_dyn::<T>()
            .map_err(|e| herr(&self.path, name, e))
    }

    /// Rows `start..start+n` of a 2-D dataset, reading only the chunks they touch.
    pub fn read_rows<T: H5Type>(
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
        let end = (start + n).min(shape[0]);
        if start >= end {
            return Ok(Array2::from_shape_vec((0, shape[1]), Vec::new()).expect("empty"));
        }
        ds.read_slice_2d::<T, _>(s![start..end, ..])
            .map_err(|e| herr(&self.path, name, e))
    }

    /// A 1-D string dataset (variable- or fixed-length, UTF-8 or ASCII).
    pub fn strings(&self, name: &str) -> Result<Vec<String>, SpxError> {
        let ds = self.ds(name)?;
        if let Ok(v) = ds.read_raw::<VarLenUnicode>() {
            return Ok(v.iter().map(|s| s.as_str().to_string()).collect());
        }
        if let Ok(v) = ds.read_raw::<VarLenAscii>() {
            return Ok(v.iter().map(|s| s.as_str().to_string()).collect());
        }
        ds.read_raw::<FixedAscii<1024>>()
            .map(|v| v.iter().map(|s| s.as_str().to_string()).collect())
            .map_err(|e| herr(&self.path, name, e))
    }

    fn attr(&self, object: &str, key: &str) -> Result<hdf5::Attribute, SpxError> {
        let o = object.trim_start_matches('/');
        let loc: hdf5::Location = if o.is_empty() {
            (**self.file).clone()
        } else if let Ok(ds) = self.file.dataset(o) {
            (**ds).clone()
        } else {
            self.file
                .group(o)
                .map(|g| (*g).clone())
                .map_err(|e| herr(&self.path, object, e))?
        };
        loc.attr(key).map_err(|_| {
            herr(
                &self.path,
                &format!("{object}@{key}"),
                "attribute not found",
            )
        })
    }

    pub fn attr_str(&self, object: &str, key: &str) -> Result<String, SpxError> {
        let a = self.attr(object, key)?;
        if let Ok(v) = a.read_scalar::<VarLenUnicode>() {
            return Ok(v.as_str().to_string());
        }
        if let Ok(v) = a.read_scalar::<VarLenAscii>() {
            return Ok(v.as_str().to_string());
        }
        a.read_scalar::<FixedAscii<1024>>()
            .map(|v| v.as_str().to_string())
            .map_err(|e| herr(&self.path, &format!("{object}@{key}"), e))
    }

    pub fn attr_i64(&self, object: &str, key: &str) -> Result<i64, SpxError> {
        self.attr(object, key)?
            .read_scalar::<i64>()
            .map_err(|e| herr(&self.path, &format!("{object}@{key}"), e))
    }

    pub fn attr_f64(&self, object: &str, key: &str) -> Result<f64, SpxError> {
        self.attr(object, key)?
            .read_scalar::<f64>()
            .map_err(|e| herr(&self.path, &format!("{object}@{key}"), e))
    }
}
