//! Spectrum readers (JCAMP-DX, RRUFF, two-column CSV/TSV, MATLAB v5 / corn CSV tables), the
//! pre-training corpus and the synthetic corpus.

pub mod corpus;
pub mod csv;
pub mod instruments;
pub mod jcamp;
pub mod mat;
pub mod modality;
pub mod rruff;
pub mod synth;

use std::path::Path;

use crate::error::SpxError;
pub use modality::Modality;

/// One 1-D spectrum as read from a file (x in the file's own units and order).
#[derive(Clone, Debug, PartialEq)]
pub struct Spectrum {
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub modality: Modality,
    pub name: String,
    pub x_units: String,
    pub y_units: String,
}

/// File kinds the corpus builder understands, from the extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Jcamp,
    Rruff,
    Columns,
}

impl FileKind {
    pub fn of(path: &Path) -> Option<FileKind> {
        let ext = path.extension()?.to_string_lossy().to_ascii_lowercase();
        match ext.as_str() {
            "jdx" | "dx" | "jcamp" | "jcm" => Some(FileKind::Jcamp),
            "rruff" => Some(FileKind::Rruff),
            // RRUFF bulk downloads are .txt with a `##` header; plain .txt falls back to columns.
            "txt" => Some(FileKind::Rruff),
            "csv" | "tsv" => Some(FileKind::Columns),
            _ => None,
        }
    }
}

/// Read every spectrum in `path`; `default` is the modality used when the file does not say.
pub fn read_spectra(path: &Path, default: Modality) -> Result<Vec<Spectrum>, SpxError> {
    match FileKind::of(path) {
        Some(FileKind::Jcamp) => jcamp::read_jcamp(path),
        Some(FileKind::Rruff) => rruff::read_rruff(path, default).map(|s| vec![s]),
        Some(FileKind::Columns) => csv::read_two_column(path, default).map(|s| vec![s]),
        None => Err(SpxError::file(path, "unknown spectrum file extension")),
    }
}
