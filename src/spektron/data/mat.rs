//! MATLAB v5 `.mat` reader (both byte orders, zlib-compressed elements) for the Eigenvector
//! corn and IDRC-2002 tablet files: numeric, char, cell, struct and object (`dataset`) arrays.
//! Eigenvector DataSet objects keep the matrix in field `data`, wavelengths in
//! `axisscale{2,1}` and property names in `label{2,1}`.

use std::io::Read;
use std::path::Path;

use ndarray::Array2;

use crate::error::SpxError;

/// A decoded MATLAB array. Numeric data are column-major, converted to f64.
#[derive(Clone, Debug, PartialEq)]
pub enum MatValue {
    Numeric {
        dims: Vec<usize>,
        data: Vec<f64>,
    },
    Char {
        dims: Vec<usize>,
        chars: Vec<char>,
    },
    Cell {
        dims: Vec<usize>,
        items: Vec<MatValue>,
    },
    Struct {
        class_name: String,
        dims: Vec<usize>,
        fields: Vec<String>,
        /// `values[element][field]`.
        values: Vec<Vec<MatValue>>,
    },
    /// Sparse, function handles, …: not needed for spectra.
    Unsupported {
        class: u8,
    },
}

impl MatValue {
    pub fn dims(&self) -> &[usize] {
        match self {
            MatValue::Numeric { dims, .. }
            | MatValue::Char { dims, .. }
            | MatValue::Cell { dims, .. }
            | MatValue::Struct { dims, .. } => dims,
            MatValue::Unsupported { .. } => &[],
        }
    }

    /// Field `name` of the first element of a struct or object.
    pub fn field(&self, name: &str) -> Option<&MatValue> {
        match self {
            MatValue::Struct { fields, values, .. } => {
                let k = fields.iter().position(|f| f == name)?;
                values.first()?.get(k)
            }
            _ => None,
        }
    }

    /// Rows of a char matrix as trimmed strings.
    pub fn char_rows(&self) -> Option<Vec<String>> {
        match self {
            MatValue::Char { dims, chars } => {
                let r = dims.first().copied().unwrap_or(0);
                let c = chars.len().checked_div(r).unwrap_or(0);
                Some(
                    (0..r)
                        .map(|i| {
                            (0..c)
                                .map(|j| chars[i + j * r])
                                .collect::<String>()
                                .trim()
                                .to_string()
                        })
                        .collect(),
                )
            }
            _ => None,
        }
    }

    /// A 2-D numeric array in row-major order.
    pub fn matrix(&self) -> Option<Array2<f64>> {
        match self {
            MatValue::Numeric { dims, data } if dims.len() == 2 => {
                let (r, c) = (dims[0], dims[1]);
                Some(Array2::from_shape_fn((r, c), |(i, j)| data[i + j * r]))
            }
            _ => None,
        }
    }

    /// Cell element at (row, col), 0-based.
    pub fn cell(&self, row: usize, col: usize) -> Option<&MatValue> {
        match self {
            MatValue::Cell { dims, items } if dims.len() == 2 => {
                if row < dims[0] && col < dims[1] {
                    items.get(row + col * dims[0])
                } else {
                    None
                }
            }
            _ => None,
        }
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    le: bool,
}

type R<T> = Result<T, String>;

impl<'a> Cursor<'a> {
    fn u32_at(&self, p: usize) -> R<u32> {
        let s: [u8; 4] = self
            .b
            .get(p..p + 4)
            .ok_or("unexpected end of data")?
            .try_into()
            .expect("4 bytes");
        Ok(if self.le {
            u32::from_le_bytes(s)
        } else {
            u32::from_be_bytes(s)
        })
    }

    /// Next element: (type, payload).
    fn element(&mut self) -> R<(u32, &'a [u8])> {
        let t = self.u32_at(self.pos)?;
        if t >> 16 != 0 {
            // Small data element: type and size share the first 4 bytes.
            let n = (t >> 16) as usize;
            if n > 4 {
                return Err("bad small data element".into());
            }
            let data = self
                .b
                .get(self.pos + 4..self.pos + 4 + n)
                .ok_or("small data element runs past the end of the data")?;
            self.pos += 8;
            return Ok((t & 0xffff, data));
        }
        let n = self.u32_at(self.pos + 4)? as usize;
        let start = self.pos + 8;
        let data = start
            .checked_add(n)
            .and_then(|end| self.b.get(start..end))
            .ok_or_else(|| format!("element of {n} bytes runs past the end of the file"))?;
        // Compressed elements are not padded (scipy and MATLAB both write them back to back).
        self.pos = if t == 15 {
            start + n
        } else {
            start + n.div_ceil(8) * 8
        };
        Ok((t, data))
    }
}

fn numbers(t: u32, d: &[u8], le: bool) -> R<Vec<f64>> {
    macro_rules! conv {
        ($ty:ty, $n:expr) => {
            d.chunks_exact($n)
                .map(|c| {
                    let a: [u8; $n] = c.try_into().expect("chunk");
                    (if le {
                        <$ty>::from_le_bytes(a)
                    } else {
                        <$ty>::from_be_bytes(a)
                    }) as f64
                })
                .collect()
        };
    }
    Ok(match t {
        1 => d.iter().map(|&v| v as i8 as f64).collect(),
        2 | 16 => d.iter().map(|&v| v as f64).collect(),
        3 => conv!(i16, 2),
        4 | 17 => conv!(u16, 2),
        5 => conv!(i32, 4),
        6 | 18 => conv!(u32, 4),
        7 => conv!(f32, 4),
        9 => conv!(f64, 8),
        12 => conv!(i64, 8),
        13 => conv!(u64, 8),
        _ => return Err(format!("unsupported numeric data type {t}")),
    })
}

fn ascii(d: &[u8]) -> String {
    d.iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as char)
        .collect()
}

/// Deepest nesting of cells/structs accepted (real files use 2-3; a crafted file could
/// otherwise recurse until the stack overflows).
const MAX_DEPTH: usize = 32;

/// Largest decompressed size of one compressed element (the corn and tablet files inflate to a
/// few MiB); a zlib bomb stops here instead of filling memory.
pub const MAX_INFLATED: u64 = 256 << 20;

/// Parse one miMATRIX payload.
fn parse_matrix(d: &[u8], le: bool) -> R<(String, MatValue)> {
    parse_matrix_at(d, le, 0)
}

fn parse_matrix_at(d: &[u8], le: bool, depth: usize) -> R<(String, MatValue)> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "cells/structs nested deeper than {MAX_DEPTH} levels"
        ));
    }
    if d.is_empty() {
        return Ok((
            String::new(),
            MatValue::Numeric {
                dims: vec![0, 0],
                data: vec![],
            },
        ));
    }
    let mut c = Cursor { b: d, pos: 0, le };
    let (_, flags) = c.element()?;
    let flags = numbers(6, flags, le)?;
    let class = (*flags.first().ok_or("missing array flags")? as u32 & 0xff) as u8;
    let complex = (*flags.first().unwrap_or(&0.0) as u32) & 0x0800 != 0;
    if class == 5 || class > 15 {
        // Sparse or opaque: skip.
        return Ok((String::new(), MatValue::Unsupported { class }));
    }
    let (dt, dims) = c.element()?;
    let dims: Vec<f64> = numbers(dt, dims, le)?;
    if let Some(bad) = dims
        .iter()
        .find(|v| !(**v >= 0.0 && **v <= u32::MAX as f64))
    {
        return Err(format!("dimension {bad} is not a valid array size"));
    }
    let dims: Vec<usize> = dims.iter().map(|&v| v as usize).collect();
    let (_, name) = c.element()?;
    let name = ascii(name);
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("`{name}`: dimensions {dims:?} overflow"))?;
    // Every cell or struct element is a tagged element of at least 8 bytes: the remaining
    // payload bounds the count before anything is allocated for it.
    let remaining = d.len().saturating_sub(c.pos);
    if matches!(class, 1..=3) && count > remaining / 8 {
        return Err(format!(
            "`{name}`: dimensions {dims:?} declare {count} elements but only {remaining} bytes follow"
        ));
    }
    let value = match class {
        1 => {
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                let (t, sub) = c.element()?;
                if t != 14 {
                    return Err(format!("cell element of type {t}, expected miMATRIX"));
                }
                items.push(parse_matrix_at(sub, le, depth + 1)?.1);
            }
            MatValue::Cell { dims, items }
        }
        2 | 3 => {
            let class_name = if class == 3 {
                ascii(c.element()?.1)
            } else {
                String::new()
            };
            let (t, len) = c.element()?;
            let len = *numbers(t, len, le)?
                .first()
                .ok_or("missing field-name length")? as usize;
            let (_, names) = c.element()?;
            if len == 0 {
                return Err("field-name length 0".into());
            }
            let fields: Vec<String> = names.chunks(len).map(ascii).collect();
            if count.saturating_mul(fields.len()) > d.len().saturating_sub(c.pos) / 8 {
                return Err(format!(
                    "`{name}`: {count} elements × {} fields do not fit in the payload",
                    fields.len()
                ));
            }
            let mut values = Vec::with_capacity(count);
            for _ in 0..count {
                let mut row = Vec::with_capacity(fields.len());
                for _ in 0..fields.len() {
                    let (t, sub) = c.element()?;
                    if t != 14 {
                        return Err(format!("struct field of type {t}, expected miMATRIX"));
                    }
                    row.push(parse_matrix_at(sub, le, depth + 1)?.1);
                }
                values.push(row);
            }
            MatValue::Struct {
                class_name,
                dims,
                fields,
                values,
            }
        }
        4 => {
            let (t, data) = c.element()?;
            let chars: Vec<char> = if t == 16 {
                String::from_utf8_lossy(data).chars().collect()
            } else {
                numbers(t, data, le)?
                    .into_iter()
                    .map(|v| char::from_u32(v as u32).unwrap_or('?'))
                    .collect()
            };
            MatValue::Char { dims, chars }
        }
        6..=15 => {
            let (t, re) = c.element()?;
            let data = numbers(t, re, le)?;
            if complex {
                // Keep the real part; spectra are real.
                let _ = c.element()?;
            }
            if data.len() != count {
                return Err(format!(
                    "`{name}`: {} values for dimensions {dims:?}",
                    data.len()
                ));
            }
            MatValue::Numeric { dims, data }
        }
        _ => MatValue::Unsupported { class },
    };
    Ok((name, value))
}

/// All top-level variables of a MAT v5 file, in file order.
pub fn parse_mat(path: &Path, bytes: &[u8]) -> Result<Vec<(String, MatValue)>, SpxError> {
    if bytes.len() < 128 {
        return Err(SpxError::file(
            path,
            "too short for a MAT v5 file (128-byte header)",
        ));
    }
    let le = match &bytes[126..128] {
        b"IM" => true,
        b"MI" => false,
        _ => {
            return Err(SpxError::file(
                path,
                "not a MATLAB v5 file (no IM/MI endian indicator; v7.3 files are HDF5)",
            ));
        }
    };
    let mut c = Cursor {
        b: bytes,
        pos: 128,
        le,
    };
    let mut vars = Vec::new();
    while c.pos + 8 <= bytes.len() {
        let at = c.pos;
        let (t, d) = c
            .element()
            .map_err(|e| SpxError::field(path, format!("element at byte {at}"), e))?;
        let parsed = match t {
            14 => parse_matrix(d, le),
            15 => {
                let mut inflated = Vec::new();
                flate2::read::ZlibDecoder::new(d)
                    .take(MAX_INFLATED + 1)
                    .read_to_end(&mut inflated)
                    .map_err(|e| SpxError::field(path, format!("element at byte {at}"), e))?;
                if inflated.len() as u64 > MAX_INFLATED {
                    return Err(SpxError::field(
                        path,
                        format!("element at byte {at}"),
                        format!(
                            "compressed element inflates past {} MiB",
                            MAX_INFLATED >> 20
                        ),
                    ));
                }
                let mut ic = Cursor {
                    b: &inflated,
                    pos: 0,
                    le,
                };
                ic.element().and_then(|(it, id)| {
                    if it == 14 {
                        parse_matrix(id, le)
                    } else {
                        Err(format!("compressed element of type {it}"))
                    }
                })
            }
            _ => continue,
        };
        let (name, v) =
            parsed.map_err(|e| SpxError::field(path, format!("element at byte {at}"), e))?;
        vars.push((name, v));
    }
    Ok(vars)
}

pub fn read_mat(path: &Path) -> Result<Vec<(String, MatValue)>, SpxError> {
    let bytes = std::fs::read(path).map_err(|e| SpxError::io(path, e))?;
    parse_mat(path, &bytes)
}

/// A samples × variables matrix with its axis and column names, from an Eigenvector DataSet or
/// a plain numeric matrix.
#[derive(Clone, Debug)]
pub struct DataSet {
    pub name: String,
    pub data: Array2<f64>,
    /// `axisscale{2,1}`: wavelengths (empty when absent).
    pub axis: Vec<f64>,
    /// `label{2,1}`: variable names (empty when absent).
    pub labels: Vec<String>,
}

/// Variable `name` of a parsed file as a [`DataSet`].
pub fn dataset(path: &Path, vars: &[(String, MatValue)], name: &str) -> Result<DataSet, SpxError> {
    let v = vars
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .ok_or_else(|| {
            let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
            SpxError::field(
                path,
                name,
                format!("no such variable; the file has {}", names.join(", ")),
            )
        })?;
    if let Some(m) = v.matrix() {
        return Ok(DataSet {
            name: name.into(),
            data: m,
            axis: vec![],
            labels: vec![],
        });
    }
    let data = v.field("data").and_then(MatValue::matrix).ok_or_else(|| {
        SpxError::field(
            path,
            format!("{name}.data"),
            "not a numeric matrix (expected an Eigenvector DataSet or a matrix)",
        )
    })?;
    let axis = match v.field("axisscale").and_then(|a| a.cell(1, 0)) {
        Some(MatValue::Numeric { data: a, .. }) if a.len() == data.ncols() => a.clone(),
        _ => vec![],
    };
    let labels = v
        .field("label")
        .and_then(|l| l.cell(1, 0))
        .and_then(MatValue::char_rows)
        .filter(|r| r.len() == data.ncols())
        .unwrap_or_default();
    Ok(DataSet {
        name: name.into(),
        data,
        axis,
        labels,
    })
}
