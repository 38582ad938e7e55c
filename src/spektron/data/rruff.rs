//! RRUFF text spectra: `##KEY=value` header lines, then `x, y` rows (comma and/or whitespace
//! separated; upstream split on whitespace only and lost every row), optional `##END=`.

use std::collections::BTreeMap;
use std::path::Path;

use super::{Modality, Spectrum};
use crate::error::SpxError;

/// Parsed RRUFF file: its header and the spectrum.
#[derive(Clone, Debug)]
pub struct RruffFile {
    pub header: BTreeMap<String, String>,
    pub spectrum: Spectrum,
}

/// Split a numeric row on commas, semicolons, tabs and spaces.
pub(crate) fn split_row(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|s| !s.is_empty())
}

pub fn parse_rruff(path: &Path, text: &str, default: Modality) -> Result<RruffFile, SpxError> {
    let mut header = BTreeMap::new();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if let Some(rest) = t.strip_prefix("##") {
            let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
            let k = k.trim().to_ascii_uppercase();
            if k == "END" {
                break;
            }
            header.insert(k, v.trim().to_string());
            continue;
        }
        let parts: Vec<&str> = split_row(t).collect();
        let parsed: Option<Vec<f64>> = parts.iter().map(|p| p.parse().ok()).collect();
        match parsed {
            Some(v) if v.len() == 2 => {
                x.push(v[0]);
                y.push(v[1]);
            }
            _ => {
                return Err(SpxError::field(
                    path,
                    format!("line {}", i + 1),
                    format!("expected two numbers `x, y`, got `{t}`"),
                ));
            }
        }
    }
    if x.is_empty() {
        return Err(SpxError::file(path, "no data rows"));
    }
    let kind = header.get("FILETYPE").cloned().unwrap_or_default();
    let fname = path
        .file_name()
        .map(|f| f.to_string_lossy().to_ascii_uppercase());
    let modality = if kind.to_ascii_uppercase().contains("INFRARED")
        || fname.as_deref().is_some_and(|f| f.contains("__INFRARED__"))
    {
        Modality::Ir
    } else if kind.to_ascii_uppercase().contains("RAMAN")
        || header.contains_key("LASER_WAVELENGTH")
        || header.contains_key("RAMAN WAVELENGTH")
        || fname.as_deref().is_some_and(|f| f.contains("__RAMAN__"))
    {
        Modality::Raman
    } else {
        default
    };
    let name = header
        .get("RRUFFID")
        .or_else(|| header.get("NAMES"))
        .cloned()
        .unwrap_or_else(|| path.display().to_string());
    Ok(RruffFile {
        spectrum: Spectrum {
            x,
            y,
            modality,
            name,
            x_units: if modality == Modality::Raman {
                "1/CM (Raman shift)".into()
            } else {
                "1/CM".into()
            },
            y_units: "ARBITRARY UNITS".into(),
        },
        header,
    })
}

pub fn read_rruff(path: &Path, default: Modality) -> Result<Spectrum, SpxError> {
    let bytes = std::fs::read(path).map_err(|e| SpxError::io(path, e))?;
    Ok(parse_rruff(path, &String::from_utf8_lossy(&bytes), default)?.spectrum)
}
