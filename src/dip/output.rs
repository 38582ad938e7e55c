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
    pub truth: Option<super::truth::TruthScore>,
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
    /// Observations held out for the validation stop, per member.
    pub held_out: Vec<usize>,
    /// Weight of ‖D2 x‖² (scaled units) per member (0 = none).
    pub d2_lambda: Vec<f64>,
    /// Factor of the baseline's λ of the held-out-checked step after the fit, per member (0 =
    /// not taken).
    pub refine_factor: Vec<f64>,
    /// Restores to a snapshot after a jump of the loss (`train.restore_jump`), per member.
    pub restores: Vec<usize>,
    /// [epoch of the jump, epoch restored to] of each restore, per member.
    pub restored_epochs: Vec<Vec<[usize; 2]>>,
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
        writeln!(
            w,
            "member,epoch,total,data,reg,chi2_per_obs,val_chi2_per_obs"
        )?;
        for (k, h) in histories.iter().enumerate() {
            for e in h {
                writeln!(
                    w,
                    "{k},{},{:.8e},{:.8e},{:.8e},{:.6e},{:.6e}",
                    e.epoch, e.total, e.data, e.reg, e.chi2, e.val_chi2
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
    /// Observations after QC and the model's prediction Hx for each.
    pub obs: &'a [Observation],
    pub model_obs: &'a [f64],
    /// Observations removed by the rolling clip and Hx for each.
    pub clipped: &'a [Observation],
    pub model_clipped: &'a [f64],
    pub flux: &'a [f64],
    pub std: Option<&'a [f64]>,
    pub baseline: Option<&'a [f64]>,
    /// The known spectrum smoothed to λ/R (what a reconstruction can reach).
    pub truth_smoothed: Option<&'a [f64]>,
}

fn perr(path: &Path, e: impl std::fmt::Display) -> SpxError {
    SpxError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    (lo - 0.05 * span, hi + 0.05 * span)
}

/// `spectrum.png`: top panel — photometry with error bars (clipped points as crosses), the
/// reconstruction (±1σ for ensembles), the baseline and the truth smoothed to λ/R when given;
/// bottom panel — (data − model)/σ per observation; the legend in a strip right of the data.
pub fn plot_spectrum(path: &Path, p: &PlotInput) -> Result<(), SpxError> {
    use plotters::prelude::*;
    plot::ensure_font();
    let e = |err| perr(path, err);
    let data_c = RGBColor(120, 120, 120);
    let clip_c = RGBColor(214, 39, 40);
    let truth_c = BLACK;
    let base_c = RGBColor(44, 160, 44);
    let rec_c = RGBColor(31, 119, 180);
    let band_c = RGBColor(158, 202, 225);
    let wl: Vec<f64> = p.obs.iter().map(|o| o.wavelength).collect();
    let xr = range(
        p.grid
            .iter()
            .copied()
            .chain(wl.iter().copied())
            .chain(p.clipped.iter().map(|o| o.wavelength)),
    );
    let yr = range(
        p.obs
            .iter()
            .flat_map(|o| [o.flux - o.flux_error, o.flux + o.flux_error])
            .chain(p.flux.iter().copied())
            .chain(p.baseline.unwrap_or(&[]).iter().copied())
            .chain(p.truth_smoothed.unwrap_or(&[]).iter().copied()),
    );
    let resid = |o: &Observation, m: f64| (o.flux - m) / o.flux_error;
    let r_kept: Vec<(f64, f64)> = p
        .obs
        .iter()
        .zip(p.model_obs)
        .map(|(o, &m)| (o.wavelength, resid(o, m)))
        .collect();
    let r_clip: Vec<(f64, f64)> = p
        .clipped
        .iter()
        .zip(p.model_clipped)
        .map(|(o, &m)| (o.wavelength, resid(o, m)))
        .collect();
    let rmax = r_kept
        .iter()
        .chain(&r_clip)
        .map(|r| r.1.abs())
        .filter(|v| v.is_finite())
        .fold(4.0f64, f64::max)
        .min(50.0)
        * 1.05;
    crate::io::atomic::with_atomic_path(path, |tmp| {
        let root = BitMapBackend::new(tmp, (1300, 850)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let root = root.titled(&p.title, ("sans-serif", 22)).map_err(e)?;
        let (plots, legend) = root.split_horizontally(1040);
        let (top, bottom) = plots.split_vertically(560);
        let mut c = ChartBuilder::on(&top)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(80)
            .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)
            .map_err(e)?;
        c.configure_mesh()
            .y_desc("F_ν [µJy]")
            .x_label_formatter(&|v| plot::tick(*v))
            .y_label_formatter(&|v| plot::tick(*v))
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(e)?;
        c.draw_series(p.obs.iter().map(|o| {
            ErrorBar::new_vertical(
                o.wavelength,
                o.flux - o.flux_error,
                o.flux,
                o.flux + o.flux_error,
                data_c.mix(0.5).stroke_width(1),
                3,
            )
        }))
        .map_err(e)?;
        c.draw_series(
            p.obs
                .iter()
                .map(|o| Circle::new((o.wavelength, o.flux), 2, data_c.filled())),
        )
        .map_err(e)?;
        c.draw_series(p.clipped.iter().map(|o| {
            Cross::new(
                (o.wavelength, o.flux.clamp(yr.0, yr.1)),
                6,
                clip_c.stroke_width(2),
            )
        }))
        .map_err(e)?;
        let line = |v: &[f64]| -> Vec<(f64, f64)> {
            p.grid
                .iter()
                .zip(v)
                .filter(|(_, y)| y.is_finite())
                .map(|(&x, &y)| (x, y))
                .collect()
        };
        if let Some(s) = p.std {
            let hi: Vec<f64> = p.flux.iter().zip(s).map(|(f, s)| f + s).collect();
            let lo: Vec<f64> = p.flux.iter().zip(s).map(|(f, s)| f - s).collect();
            let mut poly = line(&hi);
            poly.extend(line(&lo).into_iter().rev());
            c.draw_series(std::iter::once(Polygon::new(
                poly,
                band_c.mix(0.6).filled(),
            )))
            .map_err(e)?;
        }
        if let Some(t) = p.truth_smoothed {
            c.draw_series(LineSeries::new(line(t), truth_c.stroke_width(2)))
                .map_err(e)?;
        }
        if let Some(b) = p.baseline {
            c.draw_series(LineSeries::new(line(b), base_c.stroke_width(2)))
                .map_err(e)?;
        }
        c.draw_series(LineSeries::new(line(p.flux), rec_c.stroke_width(2)))
            .map_err(e)?;

        let mut r = ChartBuilder::on(&bottom)
            .margin(10)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(xr.0..xr.1, -rmax..rmax)
            .map_err(e)?;
        r.configure_mesh()
            .x_desc("wavelength [µm]")
            .y_desc("(data − model)/σ")
            .x_label_formatter(&|v| plot::tick(*v))
            .y_label_formatter(&|v| plot::tick(*v))
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(e)?;
        for (lvl, col) in [(0.0, BLACK), (3.0, clip_c), (-3.0, clip_c)] {
            r.draw_series(LineSeries::new(
                vec![(xr.0, lvl), (xr.1, lvl)],
                col.mix(0.5).stroke_width(1),
            ))
            .map_err(e)?;
        }
        r.draw_series(
            r_kept
                .iter()
                .map(|&(x, y)| Circle::new((x, y.clamp(-rmax, rmax)), 2, rec_c.filled())),
        )
        .map_err(e)?;
        r.draw_series(
            r_clip
                .iter()
                .map(|&(x, y)| Cross::new((x, y.clamp(-rmax, rmax)), 6, clip_c.stroke_width(2))),
        )
        .map_err(e)?;

        // Legend, outside the data.
        let mut entries: Vec<(String, RGBColor, bool)> = vec![(
            format!("photometry after QC ({})", p.obs.len()),
            data_c,
            false,
        )];
        if !p.clipped.is_empty() {
            entries.push((format!("clipped ({})", p.clipped.len()), clip_c, false));
        }
        if p.truth_smoothed.is_some() {
            entries.push(("truth at λ/R".into(), truth_c, true));
        }
        if p.baseline.is_some() {
            entries.push(("Tikhonov baseline".into(), base_c, true));
        }
        entries.push(("reconstruction".into(), rec_c, true));
        if p.std.is_some() {
            entries.push(("±1σ (ensemble)".into(), band_c, true));
        }
        entries.push(("residuals (bottom)".into(), rec_c, false));
        for (i, (label, col, is_line)) in entries.iter().enumerate() {
            let y = 60 + 28 * i as i32;
            if *is_line {
                legend
                    .draw(&PathElement::new(
                        vec![(10, y), (40, y)],
                        col.stroke_width(3),
                    ))
                    .map_err(e)?;
            } else if label.starts_with("clipped") {
                legend
                    .draw(&Cross::new((25, y), 6, col.stroke_width(2)))
                    .map_err(e)?;
            } else {
                legend
                    .draw(&Circle::new((25, y), 4, col.filled()))
                    .map_err(e)?;
            }
            legend
                .draw(&Text::new(
                    label.clone(),
                    (48, y - 9),
                    ("sans-serif", 15).into_font().color(&BLACK),
                ))
                .map_err(e)?;
        }
        root.present().map_err(e)?;
        Ok(())
    })
}
