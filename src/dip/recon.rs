//! `spx dip recon`: CSV → QC → operator → DIP (or Tikhonov) → files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::forward::{Operator, chi2};
use super::grid::linspace;
use super::input::split_csv_line;
use super::input::{self, Observation};
use super::output::{self, DipRun, PlotInput, Summary};
use super::simulate::{
    Feature, FeatureKind, SimRow, Source, feature_half_width, feature_peak, measure_feature,
    relative_rms, relative_rms_written, smooth_to_resolution,
};
use super::train::{self, Problem};
use super::{Solver, tikhonov};
use crate::backend::DeviceSpec;
use crate::config::Config;
use crate::error::SpxError;
use crate::io::atomic::write_atomic;
use crate::logging::Progress;

/// The spectrum and everything measured about it.
#[derive(Clone, Debug)]
pub struct Reconstruction {
    pub grid: Vec<f64>,
    pub flux: Vec<f64>,
    /// Per-bin standard deviation over ensemble members (ensembles only).
    pub flux_std: Option<Vec<f64>>,
    pub baseline: Option<Vec<f64>>,
    pub obs: Vec<Observation>,
    pub op: Operator,
    pub histories: Vec<Vec<train::EpochLoss>>,
    /// A known spectrum on the grid (`--truth`), drawn on the plot.
    pub truth: Option<Vec<f64>>,
    pub summary: Summary,
}

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
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let (_, header) = lines
        .next()
        .ok_or_else(|| SpxError::file(path, "empty file (no header)"))?;
    let header = split_csv_line(header).map_err(|e| SpxError::file(path, e))?;
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| SpxError::field(path, name, "missing column"))
    };
    let (cw, cf) = (col("wavelength")?, col("flux")?);
    let (mut wl, mut fl) = (Vec::new(), Vec::new());
    for (i, line) in lines {
        let f = split_csv_line(line)
            .map_err(|e| SpxError::file(path, format!("line {}: {e}", i + 1)))?;
        let num = |c: usize, name: &str| -> Result<f64, SpxError> {
            f.get(c)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    SpxError::field(path, name, format!("line {}: not a finite number", i + 1))
                })
        };
        let w = num(cw, "wavelength")?;
        if wl.last().is_some_and(|&p| w <= p) {
            return Err(SpxError::field(
                path,
                "wavelength",
                format!("line {}: not increasing", i + 1),
            ));
        }
        wl.push(w);
        fl.push(num(cf, "flux")?);
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

/// Score `r` (and its baseline) against `truth`, read by [`read_truth`] from `path`; sets
/// `r.truth` and `r.summary.truth`.
pub fn score_against(r: &mut Reconstruction, path: &Path, truth: Truth) {
    let feats = truth.features.clone().unwrap_or_default();
    let (rms, rms_s, lines) = score_spectrum(&r.grid, &r.flux, &truth.flux, &feats);
    let lines_note = match &truth.features {
        None => Some(format!(
            "{} lists no features (`# feature,emission|absorption,CENTRE,SIGMA`): line ratios skipped",
            path.display()
        )),
        Some(_) if lines.is_empty() => {
            Some("no listed feature has its measuring window on the grid".to_string())
        }
        Some(_) => None,
    };
    let baseline = (r.summary.solver == "dip")
        .then_some(r.baseline.as_ref())
        .flatten()
        .map(|b| {
            let (rms, rms_s, lines) = score_spectrum(&r.grid, b, &truth.flux, &feats);
            BaselineScore {
                relative_rms: rms,
                relative_rms_smoothed_output: rms_s,
                lines,
            }
        });
    r.summary.truth = Some(TruthScore {
        file: path.display().to_string(),
        relative_rms: rms,
        relative_rms_smoothed_output: rms_s,
        lines,
        lines_note,
        baseline,
    });
    r.truth = Some(truth.flux);
}

/// Run the configured solver on the photometry CSV at `input` (no files written).
pub fn reconstruct(
    cfg: &Config,
    input: &Path,
    progress: Progress,
) -> Result<Reconstruction, SpxError> {
    let t0 = Instant::now();
    let dc = &cfg.dip;
    dc.validate()?;
    let (obs, qc) = input::load(input, &dc.qc)?;
    let grid = linspace(dc.wavelength_min, dc.wavelength_max, dc.resolution);
    let centers: Vec<f64> = obs.iter().map(|o| o.wavelength).collect();
    let widths: Vec<f64> = obs.iter().map(|o| o.bandwidth).collect();
    let (op, kept) = Operator::build(&grid, &centers, &widths);
    if kept.is_empty() {
        return Err(SpxError::field(
            input,
            "wavelength",
            format!(
                "no observation's filter overlaps the grid {}–{} µm",
                dc.wavelength_min, dc.wavelength_max
            ),
        ));
    }
    let dropped_off_grid = obs.len() - kept.len();
    let obs: Vec<Observation> = kept.iter().map(|&i| obs[i].clone()).collect();
    let y: Vec<f64> = obs.iter().map(|o| o.flux).collect();
    let sigma: Vec<f64> = obs.iter().map(|o| o.flux_error).collect();

    let base = if dc.solver == Solver::Tikhonov || dc.compare_baseline {
        Some(
            tikhonov::solve(&op, &y, &sigma, &dc.tikhonov, dc.weighting, dc.epsilon_weight)
                .ok_or_else(|| {
                    SpxError::Config(
                        "Tikhonov normal equations are not positive definite; raise dip.tikhonov.lambda"
                            .into(),
                    )
                })?,
        )
    } else {
        None
    };

    let spec: DeviceSpec = cfg.run.device.clone();
    let (flux, flux_std, dip, histories, scale) = match dc.solver {
        Solver::Tikhonov => {
            let b = base.as_ref().expect("baseline solved");
            (b.spectrum.clone(), None, None, Vec::new(), b.scale)
        }
        Solver::Dip => {
            let device = spec.autodiff_device()?;
            let problem = Problem {
                op: &op,
                y: &y,
                sigma: &sigma,
            };
            let mut fits = Vec::with_capacity(dc.ensemble);
            for k in 0..dc.ensemble {
                let label = if dc.ensemble > 1 {
                    format!("dip {}/{}", k + 1, dc.ensemble)
                } else {
                    "dip".to_string()
                };
                let pb = progress.bar(dc.epochs as u64, &label);
                fits.push(train::fit(
                    dc,
                    &problem,
                    &device,
                    cfg.run.seed + k as u64,
                    &pb,
                ));
                pb.finish_and_clear();
            }
            let n = grid.len();
            let kf = fits.len() as f64;
            let mean: Vec<f64> = (0..n)
                .map(|j| fits.iter().map(|f| f.spectrum[j]).sum::<f64>() / kf)
                .collect();
            let std = (fits.len() > 1).then(|| {
                (0..n)
                    .map(|j| {
                        let v = fits
                            .iter()
                            .map(|f| (f.spectrum[j] - mean[j]).powi(2))
                            .sum::<f64>()
                            / (kf - 1.0);
                        v.sqrt()
                    })
                    .collect()
            });
            let total_epochs: usize = fits.iter().map(|f| f.epochs_run).sum();
            let total_secs: f64 = fits.iter().map(|f| f.seconds).sum();
            let run = DipRun {
                members: fits.len(),
                seeds: fits.iter().map(|f| f.seed).collect(),
                epochs_run: fits.iter().map(|f| f.epochs_run).collect(),
                best_epoch: fits.iter().map(|f| f.best_epoch).collect(),
                best_loss: fits.iter().map(|f| f.best_loss).collect(),
                stopped_early: fits.iter().map(|f| f.stopped_early).collect(),
                stop_reason: fits.iter().map(|f| f.stop_reason).collect(),
                held_out: fits.iter().map(|f| f.held_out.len()).collect(),
                d2_lambda: fits.iter().map(|f| f.d2_lambda).collect(),
                seconds_per_member: fits.iter().map(|f| f.seconds).collect(),
                seconds_per_epoch: total_secs / total_epochs.max(1) as f64,
            };
            let scale = fits[0].scale;
            let hist = fits.into_iter().map(|f| f.history).collect();
            (mean, std, Some(run), hist, scale)
        }
    };

    let m = y.len() as f64;
    let pred = op.apply(&flux);
    let (rmean, rstd) = output::residual_stats(&pred, &y, &sigma);
    let summary = Summary {
        input: input.display().to_string(),
        solver: format!("{:?}", dc.solver).to_lowercase(),
        observations_used: y.len(),
        dropped_off_grid,
        grid_pixels: grid.len(),
        chi2_per_obs: chi2(&op, &flux, &y, &sigma) / m,
        weighted_residual_mean: rmean,
        weighted_residual_std: rstd,
        negative_flux_fraction: flux.iter().filter(|v| **v < 0.0).count() as f64
            / flux.len() as f64,
        flux_scale_ujy: scale,
        seconds: t0.elapsed().as_secs_f64(),
        seed: cfg.run.seed,
        device: spec.to_string(),
        dip,
        tikhonov: base.clone(),
        qc,
        truth: None,
        files: Vec::new(),
    };
    Ok(Reconstruction {
        grid,
        flux,
        flux_std,
        baseline: base.map(|b| b.spectrum),
        obs,
        op,
        histories,
        truth: None,
        summary,
    })
}

/// Write spectrum.csv, loss.csv (DIP), spectrum.png, summary.toml and spx-config.toml to `out`.
pub fn write_outputs(
    cfg: &Config,
    r: &mut Reconstruction,
    out: &Path,
) -> Result<Vec<PathBuf>, SpxError> {
    crate::io::ensure_dir(out)?;
    let mut files = Vec::new();
    let p = out.join("spectrum.csv");
    output::write_spectrum_csv(
        &p,
        &r.grid,
        &r.flux,
        r.flux_std.as_deref(),
        if cfg.dip.solver == Solver::Dip {
            r.baseline.as_deref()
        } else {
            None
        },
    )?;
    files.push(p);
    if !r.histories.is_empty() {
        let p = out.join("loss.csv");
        output::write_loss_csv(&p, &r.histories)?;
        files.push(p);
    }
    let p = out.join("spectrum.png");
    let name = Path::new(&r.summary.input)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let model_obs = r.op.apply(&r.flux);
    let clipped = &r.summary.qc.clipped_rows;
    let (cop, ckept) = Operator::build(
        &r.grid,
        &clipped.iter().map(|o| o.wavelength).collect::<Vec<_>>(),
        &clipped.iter().map(|o| o.bandwidth).collect::<Vec<_>>(),
    );
    let clipped: Vec<Observation> = ckept.iter().map(|&i| clipped[i].clone()).collect();
    let model_clipped = cop.apply(&r.flux);
    let truth_smoothed = r.truth.as_ref().map(|t| smooth_to_resolution(&r.grid, t));
    output::plot_spectrum(
        &p,
        &PlotInput {
            title: format!(
                "spx dip recon {name} ({}, χ²/M = {:.2})",
                r.summary.solver, r.summary.chi2_per_obs
            ),
            grid: &r.grid,
            obs: &r.obs,
            model_obs: &model_obs,
            clipped: &clipped,
            model_clipped: &model_clipped,
            flux: &r.flux,
            std: r.flux_std.as_deref(),
            baseline: if cfg.dip.solver == Solver::Dip {
                r.baseline.as_deref()
            } else {
                None
            },
            truth_smoothed: truth_smoothed.as_deref(),
        },
    )?;
    files.push(p);
    files.push(cfg.write_effective(out)?);
    let p = out.join("summary.toml");
    files.push(p.clone());
    r.summary.files = files.iter().map(|f| f.display().to_string()).collect();
    output::write_summary_toml(&p, &r.summary)?;
    Ok(files)
}

/// Write a simulated source: `simulated.csv` (spxquery schema) and `truth.csv` (the true
/// spectrum on the reconstruction grid and smoothed to the instrument resolution, with one
/// `# feature,KIND,CENTRE_UM,SIGMA_UM` comment line per feature of the source, or
/// `# features: none`).
pub fn write_simulation(
    rows: &[SimRow],
    src: &Source,
    grid: &[f64],
    out: &Path,
    seed: u64,
) -> Result<(PathBuf, PathBuf), SpxError> {
    let csv = out.join("simulated.csv");
    let tp = out.join("truth.csv");
    let truth: Vec<f64> = grid.iter().map(|&l| src.flux(l)).collect();
    let smooth = smooth_to_resolution(grid, &truth);
    let feats = src.features(grid[0], grid[grid.len() - 1]);
    crate::io::ensure_dir(out)?;
    write_atomic(&csv, |w| {
        writeln!(
            w,
            "# spx dip simulate (seed {seed}, kind {:?}): synthetic SPHEREx photometry",
            src.kind
        )?;
        writeln!(
            w,
            "# flux, flux_error: uJy; wavelength, bandwidth: um (full width); flag: SPHEREx bitmap"
        )?;
        writeln!(
            w,
            "obs_id,mjd,flux,flux_error,wavelength,bandwidth,band,flag,flag_binary,snr"
        )?;
        for (i, r) in rows.iter().enumerate() {
            writeln!(
                w,
                "sim_{i:05},{:.6},{:.6},{:.6},{:.6},{:.6},D{},{},{:022b},{:.4}",
                60800.0 + i as f64 * 0.01,
                r.flux,
                r.flux_error,
                r.wavelength,
                r.bandwidth,
                r.band,
                r.flag,
                r.flag,
                r.flux / r.flux_error
            )?;
        }
        Ok(())
    })?;
    write_atomic(&tp, |w| {
        writeln!(
            w,
            "# spx dip simulate (seed {seed}, kind {:?}): true spectrum",
            src.kind
        )?;
        if feats.is_empty() {
            writeln!(w, "# features: none")?;
        }
        for f in &feats {
            let kind = match f.kind {
                FeatureKind::Emission => "emission",
                FeatureKind::Absorption => "absorption",
            };
            writeln!(w, "# feature,{kind},{:.6},{:.6}", f.centre, f.sigma)?;
        }
        writeln!(w, "wavelength,flux,flux_smoothed")?;
        for ((l, t), s) in grid.iter().zip(&truth).zip(&smooth) {
            writeln!(w, "{l:.6},{t:.6e},{s:.6e}")?;
        }
        Ok(())
    })?;
    Ok((csv, tp))
}
