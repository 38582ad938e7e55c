//! Outputs of `spx dip recon`: `spectrum.csv`, `loss.csv`, `summary.toml`, `spectrum.png`.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::input::{Observation, QcReport};
use super::simulate::band_label;
use crate::error::SpxError;
use crate::io::atomic::write_atomic;
use crate::io::plot;

/// Everything `spx dip recon` reports (written as TOML and printed as JSON).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub input: String,
    pub solver: String,
    pub observations_used: usize,
    /// Observations dropped because their filter covers no grid pixel.
    pub dropped_off_grid: usize,
    pub grid_pixels: usize,
    /// χ²/M on the true forward model (1/σ² weights) of the returned spectrum.
    pub chi2_per_obs: f64,
    pub weighted_residual_mean: f64,
    pub weighted_residual_std: f64,
    pub negative_flux_fraction: f64,
    pub flux_scale_ujy: f64,
    pub seconds: f64,
    pub seed: u64,
    pub device: String,
    pub dip: Option<DipRun>,
    pub tikhonov: Option<super::tikhonov::TikhonovResult>,
    pub qc: QcReport,
    /// Accuracy against `--truth` when given.
    pub truth: Option<super::recon::TruthScore>,
    pub files: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DipRun {
    pub members: usize,
    pub seeds: Vec<u64>,
    pub epochs_run: Vec<usize>,
    pub best_epoch: Vec<usize>,
    pub best_loss: Vec<f64>,
    pub stopped_early: Vec<bool>,
    pub stop_reason: Vec<super::train::StopReason>,
    pub seconds_per_member: Vec<f64>,
    pub seconds_per_epoch: f64,
}

/// Weighted-residual statistics (mean, std) of `pred` against the data.
pub fn residual_stats(pred: &[f64], y: &[f64], sigma: &[f64]) -> (f64, f64) {
    let r: Vec<f64> = pred
        .iter()
        .zip(y.iter().zip(sigma))
        .map(|(p, (y, s))| (y - p) / s)
        .collect();
    let n = r.len() as f64;
    let mean = r.iter().sum::<f64>() / n;
    let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// `spectrum.csv`: wavelength (µm), flux (µJy), flux_std (ensembles), baseline_flux (when the
/// baseline ran), band (nominal detector of the pixel). One row per grid pixel.
pub fn write_spectrum_csv(
    path: &Path,
    grid: &[f64],
    flux: &[f64],
    std: Option<&[f64]>,
    baseline: Option<&[f64]>,
) -> Result<(), SpxError> {
    write_atomic(path, |w| {
        let mut head = vec!["wavelength", "flux"];
        if std.is_some() {
            head.push("flux_std");
        }
        if baseline.is_some() {
            head.push("baseline_flux");
        }
        head.push("band");
        writeln!(w, "{}", head.join(","))?;
        for (j, &l) in grid.iter().enumerate() {
            write!(w, "{l:.6},{:.6e}", flux[j])?;
            if let Some(s) = std {
                write!(w, ",{:.6e}", s[j])?;
            }
            if let Some(b) = baseline {
                write!(w, ",{:.6e}", b[j])?;
            }
            writeln!(w, ",{}", band_label(l))?;
        }
        Ok(())
    })
}

/// `loss.csv`: epoch, total, data, reg of each DIP member (scaled units).
pub fn write_loss_csv(
    path: &Path,
    histories: &[Vec<super::train::EpochLoss>],
) -> Result<(), SpxError> {
    write_atomic(path, |w| {
        writeln!(w, "member,epoch,total,data,reg,chi2_per_obs")?;
        for (k, h) in histories.iter().enumerate() {
            for e in h {
                writeln!(
                    w,
                    "{k},{},{:.8e},{:.8e},{:.8e},{:.6e}",
                    e.epoch, e.total, e.data, e.reg, e.chi2
                )?;
            }
        }
        Ok(())
    })
}

pub fn write_summary_toml(path: &Path, s: &Summary) -> Result<(), SpxError> {
    let text = toml::to_string_pretty(s)
        .map_err(|e| SpxError::file(path, format!("cannot serialise summary: {e}")))?;
    write_atomic(path, |w| w.write_all(text.as_bytes()))
}

/// The curves drawn by [`plot_spectrum`].
pub struct PlotInput<'a> {
    pub title: String,
    pub grid: &'a [f64],
    pub obs: &'a [Observation],
    pub flux: &'a [f64],
    pub std: Option<&'a [f64]>,
    pub baseline: Option<&'a [f64]>,
    pub truth: Option<&'a [f64]>,
}

/// `spectrum.png`: data with error bars, reconstruction (±1σ band for ensembles), baseline and
/// truth when given.
pub fn plot_spectrum(path: &Path, p: &PlotInput) -> Result<(), SpxError> {
    let mut lp = plot::LinePlot::new(&p.title, "wavelength [µm]", "F_ν [µJy]");
    lp.series.push(plot::Series::points_with_errors(
        "photometry (after QC)",
        p.obs.iter().map(|o| o.wavelength).collect(),
        p.obs.iter().map(|o| o.flux).collect(),
        p.obs.iter().map(|o| o.flux_error).collect(),
    ));
    if let Some(t) = p.truth {
        lp.series
            .push(plot::Series::line("truth", p.grid.to_vec(), t.to_vec()));
    }
    if let Some(b) = p.baseline {
        lp.series.push(plot::Series::line(
            "Tikhonov baseline",
            p.grid.to_vec(),
            b.to_vec(),
        ));
    }
    if let Some(s) = p.std {
        let lo: Vec<f64> = p.flux.iter().zip(s).map(|(f, s)| f - s).collect();
        let hi: Vec<f64> = p.flux.iter().zip(s).map(|(f, s)| f + s).collect();
        lp.series.push(plot::Series::line(
            "reconstruction −1σ",
            p.grid.to_vec(),
            lo,
        ));
        lp.series.push(plot::Series::line(
            "reconstruction +1σ",
            p.grid.to_vec(),
            hi,
        ));
    }
    lp.series.push(plot::Series::line(
        "reconstruction",
        p.grid.to_vec(),
        p.flux.to_vec(),
    ));
    plot::line_plot(path, &lp)
}
