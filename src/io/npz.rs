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

/// Deflate cannot expand data by more than ~1032:1; with this factor a member's real (compressed)
/// length bounds what its `.npy` header may honestly declare.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// The (shape, item size) a `.npy` header declares, read from its first bytes only.
fn npy_header(mut r: impl std::io::Read) -> Result<(Vec<u64>, u64, u64), String> {
    let mut pre = [0u8; 10];
    r.read_exact(&mut pre)
        .map_err(|e| format!("truncated .npy header: {e}"))?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (bad magic)".into());
    }
    let (hlen, pre_len) = match pre[6] {
        1 => (u64::from(u16::from_le_bytes([pre[8], pre[9]])), 10u64),
        2 | 3 => {
            let mut more = [0u8; 2];
            r.read_exact(&mut more)
                .map_err(|e| format!("truncated .npy header: {e}"))?;
            (
                u64::from(u32::from_le_bytes([pre[8], pre[9], more[0], more[1]])),
                12,
            )
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    if hlen > 1 << 20 {
        return Err(format!(".npy header of {hlen} bytes"));
    }
    let mut text = vec![0u8; hlen as usize];
    r.read_exact(&mut text)
        .map_err(|e| format!("truncated .npy header: {e}"))?;
    let text = String::from_utf8_lossy(&text);
    let field = |key: &str| -> Result<String, String> {
        let at = text
            .find(&format!("'{key}'"))
            .ok_or_else(|| format!(".npy header has no '{key}'"))?;
        Ok(text[at + key.len() + 2..]
            .trim_start()
            .trim_start_matches(':')
            .trim_start()
            .to_string())
    };
    let descr = field("descr")?;
    let descr: String = descr
        .trim_start_matches(['\'', '"'])
        .chars()
        .take_while(|c| *c != '\'' && *c != '"')
        .collect();
    let item: u64 = descr
        .trim_start_matches(['<', '>', '|', '='])
        .get(1..)
        .and_then(|d| d.parse().ok())
        .unwrap_or(1);
    let shape = field("shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("unreadable 'shape' in .npy header")?;
    let dims = inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<u64>()
                .map_err(|_| format!("bad dimension `{d}` in .npy shape"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((dims, item, pre_len + hlen))
}

/// Check the shape a member's `.npy` header declares against what the archive really holds,
/// before ndarray-npy allocates for it: a 100-byte file declaring (1e9, 64, 64) is refused
/// here instead of aborting the process.
fn check_member_size(path: &Path, name: &str) -> Result<(), SpxError> {
    let f = File::open(path).map_err(|e| SpxError::io(path, e))?;
    let file_len = f.metadata().map_err(|e| SpxError::io(path, e))?.len();
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|e| SpxError::file(path, format!("not a valid .npz archive: {e}")))?;
    let member = format!("{name}.npy");
    let Ok(m) = zip.by_name(&member) else {
        return Ok(()); // ndarray-npy reports the missing member itself
    };
    let (stored, declared) = (m.compressed_size(), m.size());
    let ratio = match m.compression() {
        zip::CompressionMethod::Stored => 1,
        _ => MAX_DEFLATE_RATIO,
    };
    let (dims, item, header) = npy_header(m).map_err(|e| SpxError::field(path, name, e))?;
    let bytes = dims
        .iter()
        .try_fold(item, |a, &d| a.checked_mul(d))
        .ok_or_else(|| SpxError::field(path, name, format!("shape {dims:?} overflows")))?;
    let limit = declared
        .min(stored.min(file_len).saturating_mul(ratio))
        .saturating_sub(header);
    if bytes > limit {
        return Err(SpxError::field(
            path,
            name,
            format!(
                "header declares shape {dims:?} ({bytes} bytes) but the archive holds at most \
                 {limit} bytes for it (file of {file_len} bytes): truncated or corrupt"
            ),
        ));
    }
    Ok(())
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
            check_member_size(&self.path, name)
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
