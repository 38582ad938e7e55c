//! Raw ptychography scans in the PtychoPINN NPZ contract (`RawData.from_file`,
//! `docs/specs/spec-ptycho-core.md`):
//!
//! | key | shape | dtype | |
//! |---|---|---|---|
//! | `xcoords`, `ycoords` | (n,) | float64 (float32 accepted) | required, pixels, x = column |
//! | `diff3d` or `diffraction` | (n, H, W) or (H, W, n) | float32/64 amplitude | required (`diff3d` preferred) |
//! | `probeGuess` | (H, W) | complex64 (complex128 / real accepted) | required |
//! | `objectGuess` | (M, M') | complex64 | optional |
//! | `scan_index` | (n,) | int64 | optional, default 0 |
//! | `xcoords_start`, `ycoords_start` | (n,) | float64 | optional, default `xcoords`/`ycoords` |
//!
//! `_metadata` (a pickled 0-d object array holding JSON) never fails a load: its JSON is recovered
//! when possible ([`RawData::metadata`]); other keys are ignored.

use std::fs::File;
use std::path::Path;

use ndarray::{Array1, Array2, Array3, ArrayD, Axis, Ix1, Ix2};
use num_complex::{Complex32, Complex64};

use crate::error::SpxError;
use crate::io::npz::{NpzArray, NpzFile, write_npz};

/// Largest |coordinate| (pixels) accepted: scans span hundreds to a few thousand pixels, and
/// the ePIE object and stitching canvas are sized from the coordinates.
pub const MAX_COORD: f64 = 16384.0;

/// One scan: positions, diffraction amplitudes (n, H, W), probe and optional object.
#[derive(Clone, Debug, PartialEq)]
pub struct RawData {
    pub xcoords: Array1<f64>,
    pub ycoords: Array1<f64>,
    pub xcoords_start: Array1<f64>,
    pub ycoords_start: Array1<f64>,
    /// Diffraction amplitudes (sqrt of counts, possibly rescaled), (n, H, W).
    pub diffraction: Array3<f32>,
    pub probe: Array2<Complex32>,
    pub object: Option<Array2<Complex32>>,
    pub scan_index: Array1<i64>,
    /// Which key the diffraction came from (`diff3d` or `diffraction`).
    pub diffraction_key: String,
    /// Whether the diffraction was stored (H, W, n) and transposed on load.
    pub transposed: bool,
    /// Whether the file carried a `_metadata` entry.
    pub had_metadata: bool,
    /// The JSON inside PtychoPINN's pickled `_metadata`, when it could be recovered.
    pub metadata: Option<serde_json::Value>,
}

impl RawData {
    pub fn n_positions(&self) -> usize {
        self.xcoords.len()
    }

    /// Pattern side length N (the diffraction is N×N).
    pub fn n(&self) -> usize {
        self.diffraction.dim().1
    }

    /// Read and validate a raw NPZ; every error names the file and the key.
    pub fn load(path: &Path) -> Result<Self, SpxError> {
        let mut a = Archive::open(path)?;
        let xcoords = a.coords("xcoords")?;
        let n = xcoords.len();
        if n == 0 {
            return Err(SpxError::field(path, "xcoords", "no scan positions"));
        }
        let ycoords = a.coords("ycoords")?;
        a.check_len("ycoords", ycoords.len(), n)?;
        let xcoords_start = a.optional_coords("xcoords_start", &xcoords)?;
        let ycoords_start = a.optional_coords("ycoords_start", &ycoords)?;

        let key = if a.contains("diff3d") {
            "diff3d"
        } else if a.contains("diffraction") {
            "diffraction"
        } else {
            return Err(SpxError::field(
                path,
                "diff3d",
                format!(
                    "key missing (neither `diff3d` nor `diffraction`; keys present: {})",
                    a.names.join(", ")
                ),
            ));
        };
        let (diffraction, transposed) = a.diffraction(key, n)?;
        if transposed {
            tracing::info!(
                "{}: `{key}` stored (H, W, n); transposed to (n, H, W)",
                path.display()
            );
        }
        let (h, w) = (diffraction.dim().1, diffraction.dim().2);

        let probe = a.complex2("probeGuess")?;
        if probe.dim() != (h, w) {
            return Err(SpxError::field(
                path,
                "probeGuess",
                format!(
                    "shape {:?} does not match the diffraction patterns ({h}, {w})",
                    probe.dim()
                ),
            ));
        }
        let object = if a.contains("objectGuess") {
            Some(a.complex2("objectGuess")?)
        } else {
            None
        };
        let scan_index = if a.contains("scan_index") {
            let s = a.int1("scan_index")?;
            a.check_len("scan_index", s.len(), n)?;
            s
        } else {
            Array1::zeros(n)
        };
        Ok(RawData {
            xcoords,
            ycoords,
            xcoords_start,
            ycoords_start,
            diffraction,
            probe,
            object,
            scan_index,
            diffraction_key: key.to_string(),
            transposed,
            had_metadata: a.contains("_metadata"),
            metadata: if a.contains("_metadata") {
                read_metadata(path)
            } else {
                None
            },
        })
    }

    /// Write in the same contract (`diff3d` key, float64 coords, complex64 probe/object).
    /// `extra` arrays (e.g. simulation provenance) are appended.
    pub fn save(&self, path: &Path, extra: Vec<(&str, NpzArray)>) -> Result<(), SpxError> {
        let mut arrays: Vec<(&str, NpzArray)> = vec![
            ("xcoords", NpzArray::F64(self.xcoords.clone().into_dyn())),
            ("ycoords", NpzArray::F64(self.ycoords.clone().into_dyn())),
            (
                "xcoords_start",
                NpzArray::F64(self.xcoords_start.clone().into_dyn()),
            ),
            (
                "ycoords_start",
                NpzArray::F64(self.ycoords_start.clone().into_dyn()),
            ),
            ("diff3d", NpzArray::F32(self.diffraction.clone().into_dyn())),
            ("probeGuess", NpzArray::C64(self.probe.clone().into_dyn())),
            (
                "scan_index",
                NpzArray::I64(self.scan_index.clone().into_dyn()),
            ),
        ];
        if let Some(o) = &self.object {
            arrays.push(("objectGuess", NpzArray::C64(o.clone().into_dyn())));
        }
        arrays.extend(extra);
        write_npz(path, &arrays, true)
    }
}

/// The raw-NPZ contract's readers on top of [`NpzFile`]; errors name the file and the key.
struct Archive {
    file: NpzFile,
    names: Vec<String>,
}

impl Archive {
    fn open(path: &Path) -> Result<Self, SpxError> {
        let file = NpzFile::open(path)?;
        let names = file.names().to_vec();
        Ok(Archive { file, names })
    }

    fn contains(&self, key: &str) -> bool {
        self.file.contains(key)
    }

    fn err(&self, key: &str, msg: impl ToString) -> SpxError {
        SpxError::field(self.file.path(), key, msg)
    }

    fn check_len(&self, key: &str, len: usize, n: usize) -> Result<(), SpxError> {
        if len != n {
            return Err(self.err(
                key,
                format!("length {len} does not match the {n} positions in `xcoords`"),
            ));
        }
        Ok(())
    }

    fn vector(&self, key: &str, a: ArrayD<f64>) -> Result<Array1<f64>, SpxError> {
        let shape = a.shape().to_vec();
        let v = a
            .into_dimensionality::<Ix1>()
            .map_err(|_| self.err(key, format!("expected a 1-D array, got shape {shape:?}")))?;
        if let Some(i) = v.iter().position(|c| !c.is_finite()) {
            return Err(self.err(key, format!("non-finite value {} at index {i}", v[i])));
        }
        if let Some(i) = v.iter().position(|c| c.abs() > MAX_COORD) {
            return Err(self.err(
                key,
                format!(
                    "value {} at index {i} is beyond ±{MAX_COORD} pixels (objects and canvases are sized from it)",
                    v[i]
                ),
            ));
        }
        Ok(v)
    }

    fn coords(&mut self, key: &str) -> Result<Array1<f64>, SpxError> {
        let a = self.file.real_f64(key)?;
        self.vector(key, a)
    }

    fn optional_coords(
        &mut self,
        key: &str,
        default: &Array1<f64>,
    ) -> Result<Array1<f64>, SpxError> {
        if !self.contains(key) {
            return Ok(default.clone());
        }
        let v = self.coords(key)?;
        self.check_len(key, v.len(), default.len())?;
        Ok(v)
    }

    fn int1(&mut self, key: &str) -> Result<Array1<i64>, SpxError> {
        let a = if let Some(a) = self.file.try_read::<i64>(key)? {
            a
        } else if let Some(a) = self.file.try_read::<i32>(key)? {
            a.mapv(i64::from)
        } else {
            return Err(self.err(key, "unsupported dtype (expected int64 or int32)"));
        };
        let shape = a.shape().to_vec();
        a.into_dimensionality::<Ix1>()
            .map_err(|_| self.err(key, format!("expected a 1-D array, got shape {shape:?}")))
    }

    fn complex2(&mut self, key: &str) -> Result<Array2<Complex32>, SpxError> {
        let a = if let Some(a) = self.file.try_read::<Complex32>(key)? {
            a
        } else if let Some(a) = self.file.try_read::<Complex64>(key)? {
            a.mapv(|c| Complex32::new(c.re as f32, c.im as f32))
        } else if self.contains(key) {
            self.file
                .real_f32(key)
                .map_err(|_| {
                    self.err(
                        key,
                        "unsupported dtype (expected complex64, complex128 or real float)",
                    )
                })?
                .mapv(|v| Complex32::new(v, 0.0))
        } else {
            unreachable!("try_read checked presence")
        };
        let shape = a.shape().to_vec();
        let m = a
            .into_dimensionality::<Ix2>()
            .map_err(|_| self.err(key, format!("expected a 2-D array, got shape {shape:?}")))?;
        if m.iter().any(|c| !c.re.is_finite() || !c.im.is_finite()) {
            return Err(self.err(key, "contains non-finite values"));
        }
        Ok(m)
    }

    /// (n, H, W) as stored, or (H, W, n) transposed (the Run1084 layout); a trailing singleton
    /// 4th axis is squeezed. When both first and last axes equal n the first wins, as in
    /// PtychoPINN's `load_data`.
    fn diffraction(&mut self, key: &str, n: usize) -> Result<(Array3<f32>, bool), SpxError> {
        let mut a = self.file.real_f32(key)?;
        if a.ndim() == 4 && a.shape()[3] == 1 {
            a = a.index_axis_move(Axis(3), 0);
        }
        let shape = a.shape().to_vec();
        if shape.len() != 3 {
            return Err(self.err(
                key,
                format!("expected a 3-D array (n, H, W) or (H, W, n), got shape {shape:?}"),
            ));
        }
        let a = a
            .into_dimensionality::<ndarray::Ix3>()
            .expect("checked 3-D");
        let (d, transposed) = if shape[0] == n {
            (a, false)
        } else if shape[2] == n {
            (
                a.permuted_axes([2, 0, 1]).as_standard_layout().to_owned(),
                true,
            )
        } else {
            return Err(self.err(
                key,
                format!(
                    "shape {shape:?} has no axis matching the {n} positions in `xcoords` \
                     (expected (n, H, W) or (H, W, n))"
                ),
            ));
        };
        if d.dim().1 == 0 || d.dim().2 == 0 {
            return Err(self.err(key, format!("empty patterns, shape {shape:?}")));
        }
        if let Some((ix, v)) = d.indexed_iter().find(|(_, v)| !v.is_finite() || **v < 0.0) {
            return Err(self.err(
                key,
                format!(
                    "amplitudes must be finite and >= 0; found {v} at (pattern, row, col) = {ix:?}{}",
                    if transposed { " after transposing (H, W, n)" } else { "" }
                ),
            ));
        }
        Ok((d, transposed))
    }
}

/// Most bytes read from `_metadata.npy` (PtychoPINN writes a few KiB of JSON).
const MAX_METADATA_BYTES: u64 = 16 << 20;

/// The JSON string inside numpy's pickled 0-d object array `_metadata.npy`, without running the
/// pickle: scan for unicode-string opcodes and keep the first payload that parses as a JSON
/// object. Any failure yields `None`, since metadata is informational.
fn read_metadata(path: &Path) -> Option<serde_json::Value> {
    let f = File::open(path).ok()?;
    let mut z = zip::ZipArchive::new(f).ok()?;
    let mut bytes = Vec::new();
    // Capped: the entry is informational, and a small deflate bomb must not fill memory.
    let entry = z.by_name("_metadata.npy").ok()?;
    std::io::Read::read_to_end(
        &mut std::io::Read::take(entry, MAX_METADATA_BYTES + 1),
        &mut bytes,
    )
    .ok()?;
    if bytes.len() as u64 > MAX_METADATA_BYTES {
        tracing::warn!(
            "{}: `_metadata` inflates past {} MiB; ignored",
            path.display(),
            MAX_METADATA_BYTES >> 20
        );
        return None;
    }
    pickled_json(&bytes)
}

/// First SHORT_BINUNICODE (0x8c), BINUNICODE (`X`) or BINUNICODE8 (0x8d) payload that is a JSON
/// object.
pub fn pickled_json(bytes: &[u8]) -> Option<serde_json::Value> {
    let le = |s: &[u8]| s.iter().rev().fold(0usize, |a, &b| (a << 8) | b as usize);
    for i in 0..bytes.len() {
        let (len_bytes, start) = match bytes[i] {
            0x8c => (1, i + 2),
            b'X' => (4, i + 5),
            0x8d => (8, i + 9),
            _ => continue,
        };
        let Some(len_field) = bytes.get(i + 1..i + 1 + len_bytes) else {
            continue;
        };
        let len = le(len_field);
        let Some(payload) = start.checked_add(len).and_then(|end| bytes.get(start..end)) else {
            continue;
        };
        if payload.first() != Some(&b'{') {
            continue;
        }
        if let Ok(v @ serde_json::Value::Object(_)) = serde_json::from_slice(payload) {
            return Some(v);
        }
    }
    None
}
