//! NumPy `.npz` archives over `ndarray-npy`: f32, f64, i64 and complex64 arrays, the dtypes
//! numpy users exchange with spx.

use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{NpzReader, NpzWriter, ReadNpyError, ReadNpzError, ReadableElement};
use num_complex::Complex32;

use crate::error::SpxError;
use crate::io::atomic::write_atomic;

/// One array to store.
#[derive(Clone, Debug)]
pub enum NpzArray {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    I64(ArrayD<i64>),
    C64(ArrayD<Complex32>),
}

/// Write `arrays` to `path` atomically (`compressed` = `np.savez_compressed`).
pub fn write_npz(
    path: &Path,
    arrays: &[(&str, NpzArray)],
    compressed: bool,
) -> Result<(), SpxError> {
    write_atomic(path, |w| {
        let mut npz = if compressed {
            NpzWriter::new_compressed(w)
        } else {
            NpzWriter::new(w)
        };
        for (name, a) in arrays {
            let r = match a {
                NpzArray::F32(a) => npz.add_array(*name, a),
                NpzArray::F64(a) => npz.add_array(*name, a),
                NpzArray::I64(a) => npz.add_array(*name, a),
                NpzArray::C64(a) => npz.add_array(*name, a),
            };
            r.map_err(|e| std::io::Error::other(format!("array `{name}`: {e}")))?;
        }
        npz.finish().map_err(std::io::Error::other)?;
        Ok(())
    })
}

/// An open `.npz` archive; every error names the file and the key.
pub struct NpzFile {
    reader: NpzReader<File>,
    path: PathBuf,
    names: Vec<String>,
}

impl NpzFile {
    pub fn open(path: &Path) -> Result<Self, SpxError> {
        let f = File::open(path).map_err(|e| SpxError::io(path, e))?;
        let mut reader = NpzReader::new(f)
            .map_err(|e| SpxError::file(path, format!("not a valid .npz archive: {e}")))?;
        let names = reader
            .names()
            .map_err(|e| SpxError::file(path, format!("corrupt .npz archive: {e}")))?;
        Ok(NpzFile {
            reader,
            path: path.to_path_buf(),
            names,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Array names (without the `.npy` suffix).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    fn require(&self, name: &str) -> Result<(), SpxError> {
        if self.contains(name) {
            Ok(())
        } else {
            Err(SpxError::field(
                &self.path,
                name,
                format!("key missing (keys present: {})", self.names.join(", ")),
            ))
        }
    }

    /// `Ok(None)` when the stored dtype is not `T`, so the caller can try another; a missing key
    /// or an unreadable array is an error.
    pub fn try_read<T: ReadableElement>(
        &mut self,
        name: &str,
    ) -> Result<Option<ArrayD<T>>, SpxError> {
        self.require(name)?;
        match self.reader.by_name::<ndarray::OwnedRepr<T>, IxDyn>(name) {
            Ok(a) => Ok(Some(a)),
            Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(_))) => Ok(None),
            Err(e) => Err(SpxError::field(
                &self.path,
                name,
                format!("unreadable array: {e}"),
            )),
        }
    }

    fn read<T: ReadableElement>(&mut self, name: &str) -> Result<ArrayD<T>, SpxError> {
        self.require(name)?;
        self.reader
            .by_name::<ndarray::OwnedRepr<T>, IxDyn>(name)
            .map_err(|e| SpxError::field(&self.path, name, e))
    }

    pub fn f32(&mut self, name: &str) -> Result<ArrayD<f32>, SpxError> {
        self.read(name)
    }

    pub fn f64(&mut self, name: &str) -> Result<ArrayD<f64>, SpxError> {
        self.read(name)
    }

    pub fn i64(&mut self, name: &str) -> Result<ArrayD<i64>, SpxError> {
        self.read(name)
    }

    pub fn c64(&mut self, name: &str) -> Result<ArrayD<Complex32>, SpxError> {
        self.read(name)
    }

    /// A real array stored as f64 or f32, returned as f64.
    pub fn real_f64(&mut self, name: &str) -> Result<ArrayD<f64>, SpxError> {
        if let Some(a) = self.try_read::<f64>(name)? {
            return Ok(a);
        }
        if let Some(a) = self.try_read::<f32>(name)? {
            return Ok(a.mapv(f64::from));
        }
        Err(SpxError::field(
            &self.path,
            name,
            "unsupported dtype (expected float64 or float32)",
        ))
    }

    /// A real array stored as f32 or f64, returned as f32.
    pub fn real_f32(&mut self, name: &str) -> Result<ArrayD<f32>, SpxError> {
        if let Some(a) = self.try_read::<f32>(name)? {
            return Ok(a);
        }
        if let Some(a) = self.try_read::<f64>(name)? {
            return Ok(a.mapv(|v| v as f32));
        }
        Err(SpxError::field(
            &self.path,
            name,
            "unsupported dtype (expected float32 or float64)",
        ))
    }
}
