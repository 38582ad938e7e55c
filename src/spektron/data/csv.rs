//! Plain-text tables: two-column `x, y` spectra (CSV/TSV/whitespace, optional header lines) and
//! the corn CSV layout (header row of wavelengths or property names, one sample per row).

use std::path::Path;

use ndarray::Array2;

use super::rruff::split_row;
use super::{Modality, Spectrum};
use crate::error::SpxError;

fn read_text(path: &Path) -> Result<String, SpxError> {
    let bytes = std::fs::read(path).map_err(|e| SpxError::io(path, e))?;
    // A UTF-8 byte-order mark (Excel's "CSV UTF-8") is not part of the first header name.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// A two-column spectrum; leading non-numeric lines (a header) are skipped, `#` lines too.
pub fn parse_two_column(path: &Path, text: &str, m: Modality) -> Result<Spectrum, SpxError> {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = split_row(t).collect();
        let parsed: Option<Vec<f64>> = parts.iter().map(|p| p.parse().ok()).collect();
        match parsed {
            Some(v) if v.len() == 2 => {
                x.push(v[0]);
                y.push(v[1]);
            }
            None if x.is_empty() => continue, // header
            _ => {
                return Err(SpxError::field(
                    path,
                    format!("line {}", i + 1),
                    format!("expected two numeric columns, got `{t}`"),
                ));
            }
        }
    }
    if x.is_empty() {
        return Err(SpxError::file(path, "no numeric rows"));
    }
    Ok(Spectrum {
        x,
        y,
        modality: m,
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        x_units: String::new(),
        y_units: String::new(),
    })
}

pub fn read_two_column(path: &Path, m: Modality) -> Result<Spectrum, SpxError> {
    parse_two_column(path, &read_text(path)?, m)
}

/// A table with a header row and numeric rows of equal length (corn CSV layout).
#[derive(Clone, Debug)]
pub struct Table {
    pub header: Vec<String>,
    pub data: Array2<f64>,
}

impl Table {
    /// The header parsed as numbers (wavelengths); `None` if any is not numeric.
    pub fn numeric_header(&self) -> Option<Vec<f64>> {
        self.header.iter().map(|h| h.trim().parse().ok()).collect()
    }
}

/// Read a header row and numeric rows of equal length with the `csv` crate (comma- or, when the
/// first line holds a tab, tab-separated; cells trimmed; blank lines skipped). Errors name the
/// line and column.
pub fn parse_table(path: &Path, text: &str) -> Result<Table, SpxError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let sep = if first.contains('\t') { b'\t' } else { b',' };
    let mut rd = ::csv::ReaderBuilder::new()
        .delimiter(sep)
        .has_headers(false)
        .flexible(true)
        .trim(::csv::Trim::All)
        .from_reader(text.as_bytes());
    // Line numbers from byte offsets: the csv crate's own line count skips blank lines.
    let line_at = |p: Option<&::csv::Position>| {
        let b = text.as_bytes();
        let mut byte = p.map_or(0, |p| p.byte() as usize).min(b.len());
        // a record's position can be the start of the blank lines before it
        while byte < b.len() && (b[byte] == b'\n' || b[byte] == b'\r') {
            byte += 1;
        }
        1 + b[..byte].iter().filter(|&&c| c == b'\n').count()
    };
    let line_of = |r: &::csv::StringRecord| line_at(r.position());
    let bad = |e: ::csv::Error| SpxError::field(path, format!("line {}", line_at(e.position())), e);
    let mut records = rd
        .records()
        .filter(|r| !matches!(r, Ok(r) if r.iter().all(str::is_empty)));
    let head = records
        .next()
        .ok_or_else(|| SpxError::file(path, "empty table"))?
        .map_err(bad)?;
    let header: Vec<String> = head.iter().map(str::to_string).collect();
    let mut seen = std::collections::HashMap::with_capacity(header.len());
    for (k, h) in header.iter().enumerate() {
        if let Some(first) = seen.insert(h.as_str(), k) {
            return Err(SpxError::field(
                path,
                format!("column `{h}`"),
                format!(
                    "appears twice in the header (columns {} and {})",
                    first + 1,
                    k + 1
                ),
            ));
        }
    }
    let mut vals = Vec::new();
    let mut rows = 0;
    for rec in records {
        let rec = rec.map_err(bad)?;
        let line = line_of(&rec);
        if rec.len() != header.len() {
            return Err(SpxError::field(
                path,
                format!("line {line}"),
                format!("{} values, header has {}", rec.len(), header.len()),
            ));
        }
        for (cell, name) in rec.iter().zip(&header) {
            let v: f64 = cell.parse().map_err(|_| {
                SpxError::field(
                    path,
                    format!("line {line} column `{name}`"),
                    format!("not a number: `{cell}`"),
                )
            })?;
            vals.push(v);
        }
        rows += 1;
    }
    let data = Array2::from_shape_vec((rows, header.len()), vals).expect("row lengths checked");
    Ok(Table { header, data })
}

pub fn read_table(path: &Path) -> Result<Table, SpxError> {
    parse_table(path, &read_text(path)?)
}
