//! FITS over `fitsio` (cfitsio built from source by the `fitsio-src` feature).
//!
//! Image axes are given and returned in numpy/C order (slowest axis first), i.e. the shape
//! astropy reports as `hdu.data.shape`.

use std::path::{Path, PathBuf};

use fitsio::FitsFile;
use fitsio::hdu::{FitsHdu, HduInfo};
use fitsio::images::{ImageDescription, ImageType};
use fitsio::tables::{ColumnDataType, ColumnDescription};
use ndarray::{ArrayD, IxDyn};

use crate::error::SpxError;
use crate::io::atomic::with_atomic_path;

/// A header card value.
#[derive(Clone, Debug, PartialEq)]
pub enum Card {
    Int(i64),
    Float(f64),
    Str(String),
}

impl From<i64> for Card {
    fn from(v: i64) -> Self {
        Card::Int(v)
    }
}
impl From<f64> for Card {
    fn from(v: f64) -> Self {
        Card::Float(v)
    }
}
impl From<&str> for Card {
    fn from(v: &str) -> Self {
        Card::Str(v.to_string())
    }
}
impl From<String> for Card {
    fn from(v: String) -> Self {
        Card::Str(v)
    }
}

/// A binary-table column.
#[derive(Clone, Debug)]
pub enum Column {
    F64(String, Vec<f64>),
    F32(String, Vec<f32>),
    I32(String, Vec<i32>),
    I64(String, Vec<i64>),
    Str(String, Vec<String>),
}

impl Column {
    pub fn name(&self) -> &str {
        match self {
            Column::F64(n, _)
            | Column::F32(n, _)
            | Column::I32(n, _)
            | Column::I64(n, _)
            | Column::Str(n, _) => n,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn len(&self) -> usize {
        match self {
            Column::F64(_, v) => v.len(),
            Column::F32(_, v) => v.len(),
            Column::I32(_, v) => v.len(),
            Column::I64(_, v) => v.len(),
            Column::Str(_, v) => v.len(),
        }
    }
}

/// Writes one FITS file; obtained from [`write_fits`].
pub struct FitsWriter {
    file: FitsFile,
    path: PathBuf,
}

fn ferr(path: &Path, what: impl std::fmt::Display, e: impl std::fmt::Display) -> SpxError {
    SpxError::file(path, format!("{what}: {e}"))
}

impl FitsWriter {
    /// Write a header card to the primary HDU.
    pub fn primary_card(&mut self, key: &str, value: impl Into<Card>) -> Result<(), SpxError> {
        let hdu = self
            .file
            .primary_hdu()
            .map_err(|e| ferr(&self.path, "primary HDU", e))?;
        write_card(&mut self.file, &hdu, &self.path, key, value.into())
    }

    fn image<T: fitsio::images::WriteImage + Clone>(
        &mut self,
        name: &str,
        ty: ImageType,
        data: &ArrayD<T>,
        cards: &[(&str, Card)],
    ) -> Result<(), SpxError> {
        let shape = data.shape().to_vec();
        let desc = ImageDescription {
            data_type: ty,
            dimensions: &shape,
        };
        let hdu = self
            .file
            .create_image(name.to_string(), &desc)
            .map_err(|e| ferr(&self.path, format!("HDU {name}"), e))?;
        let flat: Vec<T> = data.as_standard_layout().iter().cloned().collect();
        hdu.write_image(&mut self.file, &flat)
            .map_err(|e| ferr(&self.path, format!("HDU {name}"), e))?;
        for (k, v) in cards {
            write_card(&mut self.file, &hdu, &self.path, k, v.clone())?;
        }
        Ok(())
    }

    /// Add an f32 image extension named `name` (EXTNAME) with extra header cards.
    pub fn image_f32(
        &mut self,
        name: &str,
        data: &ArrayD<f32>,
        cards: &[(&str, Card)],
    ) -> Result<(), SpxError> {
        self.image(name, ImageType::Float, data, cards)
    }

    /// Add an f64 image extension.
    pub fn image_f64(
        &mut self,
        name: &str,
        data: &ArrayD<f64>,
        cards: &[(&str, Card)],
    ) -> Result<(), SpxError> {
        self.image(name, ImageType::Double, data, cards)
    }

    /// Add an i32 image extension (masks).
    pub fn image_i32(
        &mut self,
        name: &str,
        data: &ArrayD<i32>,
        cards: &[(&str, Card)],
    ) -> Result<(), SpxError> {
        self.image(name, ImageType::Long, data, cards)
    }

    /// Add a binary table. All columns must have the same length.
    pub fn table(
        &mut self,
        name: &str,
        columns: &[Column],
        cards: &[(&str, Card)],
    ) -> Result<(), SpxError> {
        let n = columns.first().map(Column::len).unwrap_or(0);
        if let Some(c) = columns.iter().find(|c| c.len() != n) {
            return Err(SpxError::field(
                &self.path,
                format!("{name}.{}", c.name()),
                format!("column has {} rows, expected {n}", c.len()),
            ));
        }
        let mut descs = Vec::new();
        for c in columns {
            let (ty, width) = match c {
                Column::F64(..) => (ColumnDataType::Double, 1),
                Column::F32(..) => (ColumnDataType::Float, 1),
                Column::I32(..) => (ColumnDataType::Int, 1),
                Column::I64(..) => (ColumnDataType::LongLong, 1),
                Column::Str(_, v) => (
                    ColumnDataType::String,
                    v.iter().map(String::len).max().unwrap_or(1).max(1),
                ),
            };
            let mut d = ColumnDescription::new(c.name());
            let d = d.with_type(ty);
            if width > 1 {
                d.that_repeats(width);
            }
            descs.push(
                d.create()
                    .map_err(|e| ferr(&self.path, format!("{name}.{}", c.name()), e))?,
            );
        }
        let hdu = self
            .file
            .create_table(name.to_string(), &descs)
            .map_err(|e| ferr(&self.path, format!("HDU {name}"), e))?;
        let f = &mut self.file;
        let p = &self.path;
        for c in columns {
            let r = match c {
                Column::F64(n, v) => hdu.write_col(f, n.as_str(), v).map(|_| ()),
                Column::F32(n, v) => hdu.write_col(f, n.as_str(), v).map(|_| ()),
                Column::I32(n, v) => hdu.write_col(f, n.as_str(), v).map(|_| ()),
                Column::I64(n, v) => hdu.write_col(f, n.as_str(), v).map(|_| ()),
                Column::Str(n, v) => hdu.write_col(f, n.as_str(), v).map(|_| ()),
            };
            r.map_err(|e| ferr(p, format!("{name}.{}", c.name()), e))?;
        }
        for (k, v) in cards {
            write_card(&mut self.file, &hdu, &self.path, k, v.clone())?;
        }
        Ok(())
    }
}

fn write_card(
    file: &mut FitsFile,
    hdu: &FitsHdu,
    path: &Path,
    key: &str,
    value: Card,
) -> Result<(), SpxError> {
    let r = match value {
        Card::Int(v) => hdu.write_key(file, key, v),
        Card::Float(v) => hdu.write_key(file, key, v),
        Card::Str(v) => hdu.write_key(file, key, v),
    };
    r.map_err(|e| ferr(path, format!("header card {key}"), e))
}

/// Create `path` atomically: `build` adds HDUs to a file with an empty primary HDU; the file
/// appears under its final name only if `build` succeeds.
pub fn write_fits<F>(path: &Path, build: F) -> Result<(), SpxError>
where
    F: FnOnce(&mut FitsWriter) -> Result<(), SpxError>,
{
    with_atomic_path(path, |tmp| {
        let file = FitsFile::create(tmp)
            .open()
            .map_err(|e| ferr(path, "cannot create", e))?;
        let mut w = FitsWriter {
            file,
            path: path.to_path_buf(),
        };
        build(&mut w)
        // Dropping the writer closes the file (flushes cfitsio's buffers) before the rename.
    })
}

/// Reads a FITS file; every error names the file and the HDU/key/column.
pub struct FitsReader {
    file: FitsFile,
    path: PathBuf,
}

impl FitsReader {
    pub fn open(path: &Path) -> Result<Self, SpxError> {
        if !path.exists() {
            return Err(SpxError::file(path, "no such file"));
        }
        let file = FitsFile::open(path).map_err(|e| ferr(path, "not a readable FITS file", e))?;
        Ok(FitsReader {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Extension names (EXTNAME) in file order; the primary HDU is "PRIMARY".
    pub fn hdu_names(&mut self) -> Vec<String> {
        let n = self.file.num_hdus().unwrap_or(0);
        (0..n)
            .map(|i| {
                let name = self
                    .file
                    .hdu(i)
                    .and_then(|h| h.name(&mut self.file))
                    .unwrap_or_default();
                if i == 0 && name.is_empty() {
                    "PRIMARY".into()
                } else {
                    name
                }
            })
            .collect()
    }

    pub fn has_hdu(&mut self, name: &str) -> bool {
        self.file.hdu(name).is_ok()
    }

    fn hdu(&mut self, name: &str) -> Result<FitsHdu, SpxError> {
        if name.eq_ignore_ascii_case("PRIMARY") {
            return self
                .file
                .primary_hdu()
                .map_err(|e| ferr(&self.path, "primary HDU", e));
        }
        self.file
            .hdu(name)
            .map_err(|_| SpxError::field(&self.path, name, "HDU not found"))
    }

    /// Shape of an image HDU (numpy order).
    pub fn image_shape(&mut self, name: &str) -> Result<Vec<usize>, SpxError> {
        match self.hdu(name)?.info {
            HduInfo::ImageInfo { shape, .. } => Ok(shape),
            _ => Err(SpxError::field(&self.path, name, "HDU is not an image")),
        }
    }

    fn read_image<T>(&mut self, name: &str) -> Result<ArrayD<T>, SpxError>
    where
        Vec<T>: fitsio::images::ReadImage,
    {
        let shape = self.image_shape(name)?;
        self.check_image_size(name, &shape)?;
        let hdu = self.hdu(name)?;
        let flat: Vec<T> = hdu
            .read_image(&mut self.file)
            .map_err(|e| SpxError::field(&self.path, name, e))?;
        ArrayD::from_shape_vec(IxDyn(&shape), flat)
            .map_err(|e| SpxError::field(&self.path, name, e))
    }

    fn file_len(&self) -> Result<u64, SpxError> {
        std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|e| SpxError::io(&self.path, e))
    }

    /// The header's NAXISn against the file's real length, before anything is allocated for
    /// the data: a header may declare 10⁹ rows in a file of a few kilobytes. Tile-compressed
    /// images (ZIMAGE = T) may hold up to 1032× their stored size.
    fn check_image_size(&mut self, name: &str, shape: &[usize]) -> Result<(), SpxError> {
        let bytes_per = match self.hdu(name)?.info {
            HduInfo::ImageInfo { image_type, .. } => match image_type {
                ImageType::UnsignedByte | ImageType::Byte => 1u64,
                ImageType::Short | ImageType::UnsignedShort => 2,
                ImageType::Long | ImageType::UnsignedLong | ImageType::Float => 4,
                ImageType::LongLong | ImageType::Double => 8,
            },
            _ => return Err(SpxError::field(&self.path, name, "HDU is not an image")),
        };
        let hdu = self.hdu(name)?;
        let compressed = hdu
            .read_key::<String>(&mut self.file, "ZIMAGE")
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("T"));
        let len = self.file_len()?;
        let limit = if compressed {
            len.saturating_mul(1032)
        } else {
            len
        };
        let bytes = shape
            .iter()
            .try_fold(bytes_per, |a, &d| a.checked_mul(d as u64));
        match bytes {
            Some(b) if b <= limit => Ok(()),
            _ => Err(SpxError::field(
                &self.path,
                format!("{name}:NAXIS"),
                format!(
                    "header declares an image of shape {shape:?} ({} bytes) but the file has \
                     {len} bytes: truncated or corrupt",
                    bytes.map_or("more than 2^64".into(), |b| b.to_string())
                ),
            )),
        }
    }

    /// NAXIS2 of a table against the file's real length (each row takes at least one byte).
    fn check_table_rows(&mut self, hdu: &str) -> Result<(), SpxError> {
        let rows = match self.hdu(hdu)?.info {
            HduInfo::TableInfo { num_rows, .. } => num_rows as u64,
            _ => return Err(SpxError::field(&self.path, hdu, "HDU is not a table")),
        };
        let len = self.file_len()?;
        if rows > len {
            return Err(SpxError::field(
                &self.path,
                format!("{hdu}:NAXIS2"),
                format!(
                    "header declares {rows} rows but the file has {len} bytes: truncated or corrupt"
                ),
            ));
        }
        Ok(())
    }

    /// Read an image HDU as f32 (cfitsio converts from the stored type).
    pub fn image_f32(&mut self, name: &str) -> Result<ArrayD<f32>, SpxError> {
        self.read_image(name)
    }

    pub fn image_f64(&mut self, name: &str) -> Result<ArrayD<f64>, SpxError> {
        self.read_image(name)
    }

    pub fn image_i32(&mut self, name: &str) -> Result<ArrayD<i32>, SpxError> {
        self.read_image(name)
    }

    pub fn card_f64(&mut self, hdu: &str, key: &str) -> Result<f64, SpxError> {
        let h = self.hdu(hdu)?;
        h.read_key::<f64>(&mut self.file, key)
            .map_err(|e| SpxError::field(&self.path, format!("{hdu}:{key}"), e))
    }

    pub fn card_i64(&mut self, hdu: &str, key: &str) -> Result<i64, SpxError> {
        let h = self.hdu(hdu)?;
        h.read_key::<i64>(&mut self.file, key)
            .map_err(|e| SpxError::field(&self.path, format!("{hdu}:{key}"), e))
    }

    pub fn card_str(&mut self, hdu: &str, key: &str) -> Result<String, SpxError> {
        let h = self.hdu(hdu)?;
        h.read_key::<String>(&mut self.file, key)
            .map_err(|e| SpxError::field(&self.path, format!("{hdu}:{key}"), e))
    }

    /// Column names of a table HDU.
    pub fn column_names(&mut self, hdu: &str) -> Result<Vec<String>, SpxError> {
        match self.hdu(hdu)?.info {
            HduInfo::TableInfo {
                column_descriptions,
                ..
            } => Ok(column_descriptions.into_iter().map(|c| c.name).collect()),
            _ => Err(SpxError::field(&self.path, hdu, "HDU is not a table")),
        }
    }

    /// Column names of a table HDU with their stored kind: 'I' integer, 'F' float, 'A' text,
    /// '?' other (logical, complex, bit).
    pub fn column_kinds(&mut self, hdu: &str) -> Result<Vec<(String, char)>, SpxError> {
        use fitsio::tables::ColumnDataType as T;
        match self.hdu(hdu)?.info {
            HduInfo::TableInfo {
                column_descriptions,
                ..
            } => Ok(column_descriptions
                .into_iter()
                .map(|c| {
                    let k = match c.data_type.typ {
                        T::Byte
                        | T::Short
                        | T::Int
                        | T::Long
                        | T::LongLong
                        | T::UnsignedShort
                        | T::UnsignedLong
                        | T::UnsignedLongLong
                        | T::SignedByte => 'I',
                        T::Float | T::Double => 'F',
                        T::String | T::Text => 'A',
                        _ => '?',
                    };
                    (c.name, k)
                })
                .collect()),
            _ => Err(SpxError::field(&self.path, hdu, "HDU is not a table")),
        }
    }

    fn col<T: fitsio::tables::ReadsCol>(
        &mut self,
        hdu: &str,
        col: &str,
    ) -> Result<Vec<T>, SpxError> {
        self.check_table_rows(hdu)?;
        let h = self.hdu(hdu)?;
        h.read_col::<T>(&mut self.file, col)
            .map_err(|e| SpxError::field(&self.path, format!("{hdu}.{col}"), e))
    }

    pub fn col_f64(&mut self, hdu: &str, col: &str) -> Result<Vec<f64>, SpxError> {
        self.col(hdu, col)
    }

    pub fn col_i64(&mut self, hdu: &str, col: &str) -> Result<Vec<i64>, SpxError> {
        self.col(hdu, col)
    }

    pub fn col_str(&mut self, hdu: &str, col: &str) -> Result<Vec<String>, SpxError> {
        self.col(hdu, col)
    }
}
