//! A known spectrum (`spx dip recon --truth`): reading it onto the grid and scoring a
//! reconstruction against it (relative error, feature fluxes and peaks).

use std::path::Path;

use super::input::read_table;
use super::simulate::{
    Feature, FeatureKind, feature_half_width, feature_peak, measure_feature, relative_rms,
    relative_rms_written, smooth_to_resolution,
};
use crate::error::SpxError;

/// Accuracy against a known spectrum (`spx dip recon --truth`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct TruthScore {
    pub file: String,
    /// Relative RMS of the spectrum as written minus the truth smoothed to one resolution element
    /// λ/R, over the grid less 0.05 µm at each end (structure finer than λ/R counts as error).
    pub relative_rms: f64,
    /// The same with the written spectrum smoothed to λ/R too (hides sub-resolution wiggles).
    pub relative_rms_smoothed_output: f64,
    /// The features listed in the truth file (`# feature,KIND,CENTRE,SIGMA` lines).
    pub lines: Vec<LineScore>,
    /// Why `lines` is empty, when it is.
    pub lines_note: Option<String>,
    /// The Tikhonov baseline scored the same way (when it ran beside the DIP).
    pub baseline: Option<BaselineScore>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BaselineScore {
    pub relative_rms: f64,
    pub relative_rms_smoothed_output: f64,
    pub lines: Vec<LineScore>,
}

/// A feature's integrated flux (µJy·µm, above a straight continuum fitted to sidebands; negative
/// for absorptions) and peak (largest deviation from that continuum within λ/R of the centre).
#[derive(Clone, Debug, serde::Serialize)]
pub struct LineScore {
    pub wavelength: f64,
    pub kind: FeatureKind,
    pub truth: f64,
    pub recovered: f64,
    pub ratio: f64,
    /// Recovered peak over the peak of the truth smoothed to λ/R.
    pub peak_ratio: f64,
}

/// A known spectrum on the reconstruction grid and the features it lists.
#[derive(Clone, Debug)]
pub struct Truth {
    pub flux: Vec<f64>,
    /// `None` when the file lists no features.
    pub features: Option<Vec<Feature>>,
}

/// Parse a `# feature,emission|absorption,CENTRE_UM,SIGMA_UM` comment line.
fn parse_feature(line: &str) -> Option<Result<Feature, String>> {
    let rest = line.trim_start().strip_prefix('#')?.trim();
    let rest = rest.strip_prefix("feature,")?;
    let f: Vec<&str> = rest.split(',').map(str::trim).collect();
    let kind = match f.first() {
        Some(&"emission") => FeatureKind::Emission,
        Some(&"absorption") => FeatureKind::Absorption,
        _ => return Some(Err(format!("feature kind `{}`", f.first().unwrap_or(&"")))),
    };
    let num = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    match (num(1), num(2)) {
        (Some(centre), Some(sigma)) => Some(Ok(Feature {
            kind,
            centre,
            sigma,
            strength: f64::NAN,
        })),
        _ => Some(Err("feature centre/sigma must be finite numbers > 0".into())),
    }
}

/// Read columns `wavelength` (µm, increasing) and `flux` (µJy) of a CSV such as the `truth.csv`
/// of `spx dip simulate`, linearly interpolated onto `grid`, and its `# feature,...` lines.
pub fn read_truth(path: &Path, grid: &[f64]) -> Result<Truth, SpxError> {
    let text = std::fs::read_to_string(path).map_err(|e| SpxError::io(path, e))?;
    let mut features = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if let Some(f) = parse_feature(l) {
            features.push(
                f.map_err(|e| SpxError::field(path, "feature", format!("line {}: {e}", i + 1)))?,
            );
        }
    }
    let table = read_table(path, false)?;
    for name in ["wavelength", "flux"] {
        if table.column(name, false).is_none() {
            return Err(SpxError::field(path, name, "missing column"));
        }
    }
    /// One row of the truth table (other columns are ignored).
    #[derive(serde::Deserialize)]
    struct Row {
        wavelength: f64,
        flux: f64,
    }
    let (mut wl, mut fl) = (Vec::new(), Vec::new());
    for (line, rec) in &table.records {
        let row: Row = rec.deserialize(Some(&table.headers)).map_err(|e| {
            let name = match e.kind() {
                csv::ErrorKind::Deserialize { err, .. } => err
                    .field()
                    .and_then(|k| table.headers.get(k as usize))
                    .unwrap_or("wavelength")
                    .to_string(),
                _ => "wavelength".to_string(),
            };
            SpxError::field(path, name, format!("line {line}: not a finite number"))
        })?;
        for (v, name) in [(row.wavelength, "wavelength"), (row.flux, "flux")] {
            if !v.is_finite() {
                return Err(SpxError::field(
                    path,
                    name,
                    format!("line {line}: not a finite number"),
                ));
            }
        }
        let w = row.wavelength;
        if wl.last().is_some_and(|&p| w <= p) {
            return Err(SpxError::field(
                path,
                "wavelength",
                format!("line {line}: not increasing"),
            ));
        }
        wl.push(w);
        fl.push(row.flux);
    }
    let (lo, hi) = (grid[0], grid[grid.len() - 1]);
    if wl.len() < 2 || wl[0] > lo + 1e-9 || wl[wl.len() - 1] < hi - 1e-9 {
        return Err(SpxError::field(
            path,
            "wavelength",
            format!("does not cover the grid {lo}–{hi} µm"),
        ));
    }
    let flux = grid
        .iter()
        .map(|&g| {
            let k = wl.partition_point(|&w| w < g).clamp(1, wl.len() - 1);
            let t = ((g - wl[k - 1]) / (wl[k] - wl[k - 1])).clamp(0.0, 1.0);
            fl[k - 1] + t * (fl[k] - fl[k - 1])
        })
        .collect();
    Ok(Truth {
        flux,
        features: (!features.is_empty()).then_some(features),
    })
}

/// Score `x` against the truth: written and smoothed-output errors, and every listed feature
/// whose measuring window (with sidebands) lies inside the grid.
pub fn score_spectrum(
    grid: &[f64],
    x: &[f64],
    truth: &[f64],
    features: &[Feature],
) -> (f64, f64, Vec<LineScore>) {
    let (lo, hi) = (grid[0], grid[grid.len() - 1]);
    let smooth_truth = smooth_to_resolution(grid, truth);
    let lines = features
        .iter()
        .filter_map(|f| {
            let half = feature_half_width(f.centre, f.sigma);
            (f.centre - 2.0 * half > lo && f.centre + 2.0 * half < hi).then(|| {
                let t = measure_feature(grid, truth, f.centre, half);
                let r = measure_feature(grid, x, f.centre, half);
                let tp = feature_peak(grid, &smooth_truth, f.centre, half);
                let rp = feature_peak(grid, x, f.centre, half);
                LineScore {
                    wavelength: f.centre,
                    kind: f.kind,
                    truth: t,
                    recovered: r,
                    ratio: r / t,
                    peak_ratio: rp / tp,
                }
            })
        })
        .collect();
    (
        relative_rms_written(grid, x, truth, lo + 0.05, hi - 0.05),
        relative_rms(grid, x, truth, lo + 0.05, hi - 0.05),
        lines,
    )
}
