//! `spx dip recon`: CSV → QC → operator → DIP (or Tikhonov) → files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::batch::Job;
use super::forward::{Operator, chi2};
use super::grid::linspace;
use super::input::{self, Observation};
use super::members;
use super::output::{self, DipRun, PlotInput, Summary};
use super::simulate::{FeatureKind, SimRow, Source, smooth_to_resolution};
use super::train::{self, Problem};
pub use super::truth::{BaselineScore, LineScore, Truth, TruthScore, read_truth, score_spectrum};
use super::{DipConfig, Solver, tikhonov};
use crate::backend::DeviceSpec;
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
    /// Ensemble members reused from an earlier run's stored parts.
    pub resumed_members: usize,
    pub summary: Summary,
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

/// The observations whose filters overlap the grid, their forward operator, fluxes and errors.
pub(crate) struct OnGrid {
    pub op: Operator,
    pub obs: Vec<Observation>,
    pub y: Vec<f64>,
    pub sigma: Vec<f64>,
    /// Observations dropped because no filter overlaps the grid.
    pub dropped: usize,
}

/// Build the forward operator of `obs` on `grid`, keeping the observations it can see; an
/// error (for the `wavelength` field) when none overlaps the grid.
pub(crate) fn on_grid(dc: &DipConfig, grid: &[f64], obs: &[Observation]) -> Result<OnGrid, String> {
    let centers: Vec<f64> = obs.iter().map(|o| o.wavelength).collect();
    let widths: Vec<f64> = obs.iter().map(|o| o.bandwidth).collect();
    let (op, kept) = Operator::build(grid, &centers, &widths);
    if kept.is_empty() {
        return Err(format!(
            "no observation's filter overlaps the grid {}–{} µm",
            dc.wavelength_min, dc.wavelength_max
        ));
    }
    let dropped = obs.len() - kept.len();
    let obs: Vec<Observation> = kept.iter().map(|&i| obs[i].clone()).collect();
    let y = obs.iter().map(|o| o.flux).collect();
    let sigma = obs.iter().map(|o| o.flux_error).collect();
    Ok(OnGrid {
        op,
        obs,
        y,
        sigma,
        dropped,
    })
}

/// Run the configured solver on the photometry CSV at `input` (no files written); DIP
/// ensemble member k uses seed `seed + k`.
pub fn reconstruct(
    dc: &DipConfig,
    spec: &DeviceSpec,
    seed: u64,
    input: &Path,
    progress: Progress,
) -> Result<Reconstruction, SpxError> {
    reconstruct_resuming(dc, spec, seed, input, progress, None)
}

/// [`reconstruct`], keeping each finished DIP ensemble member in `parts` (see [`members`]) and
/// reusing those an earlier, killed run with the same input and settings left there: the result
/// is bit-identical to an uninterrupted run.
pub fn reconstruct_resuming(
    dc: &DipConfig,
    spec: &DeviceSpec,
    seed: u64,
    input: &Path,
    progress: Progress,
    parts: Option<&Path>,
) -> Result<Reconstruction, SpxError> {
    let t0 = Instant::now();
    let mut resumed = 0;
    dc.validate()?;
    let (obs, qc) = input::load(input, &dc.qc)?;
    let grid = linspace(dc.wavelength_min, dc.wavelength_max, dc.resolution);
    let OnGrid {
        op,
        obs,
        y,
        sigma,
        dropped: dropped_off_grid,
    } = on_grid(dc, &grid, &obs).map_err(|m| SpxError::field(input, "wavelength", m))?;

    let base = if dc.solver == Solver::Tikhonov || dc.compare_baseline {
        Some(
            tikhonov::solve(
                &op,
                &y,
                &sigma,
                &dc.tikhonov,
                dc.weighting,
                dc.epsilon_weight,
            )
            .ok_or_else(|| {
                let big = y.iter().map(|v| v.abs()).fold(0.0, f64::max);
                SpxError::field(
                    input,
                    "flux",
                    format!("{} (largest |flux| {big:e} µJy)", tikhonov::FAILED),
                )
            })?,
        )
    } else {
        None
    };

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
            // Ensemble members train together, `batch_size` fits per batch; each equals its
            // fit alone. With `parts`, members an earlier run with the same input and settings
            // finished are reused, and each new member is stored as soon as its fit ends.
            let keys: Vec<String> = match parts {
                Some(_) => {
                    let bytes = std::fs::read(input).map_err(|e| SpxError::io(input, e))?;
                    (0..dc.ensemble)
                        .map(|k| members::member_key(dc, &bytes, seed + k as u64, spec))
                        .collect()
                }
                None => Vec::new(),
            };
            let mut slots: Vec<Option<train::FitResult>> = (0..dc.ensemble)
                .map(|k| {
                    let dir = parts?;
                    members::load(
                        &members::member_path(dir, k, &keys[k]),
                        &keys[k],
                        grid.len(),
                    )
                })
                .collect();
            resumed = slots.iter().filter(|s| s.is_some()).count();
            let todo: Vec<usize> = (0..dc.ensemble).filter(|&k| slots[k].is_none()).collect();
            let jobs: Vec<Job> = todo
                .iter()
                .map(|&k| Job {
                    problem: problem.clone(),
                    seed: seed + k as u64,
                })
                .collect();
            let bs = super::batch::batch_size(dc, spec).max(1);
            let label = if dc.ensemble > 1 {
                format!("dip ×{}", dc.ensemble)
            } else {
                "dip".to_string()
            };
            let pb = progress.bar((dc.train.epochs * jobs.len().div_ceil(bs)) as u64, &label);
            let mut stored: Result<(), SpxError> = Ok(());
            for (c, chunk) in jobs.chunks(bs).enumerate() {
                let mut save = |j: usize, f: &train::FitResult| {
                    let k = todo[c * bs + j];
                    if let (Some(dir), Ok(())) = (parts, &stored) {
                        stored =
                            members::save(&members::member_path(dir, k, &keys[k]), &keys[k], f);
                    }
                };
                let fits = super::batch::fit_batch_with(dc, chunk, &device, &pb, &mut save);
                for (j, f) in fits.into_iter().enumerate() {
                    slots[todo[c * bs + j]] = Some(f);
                }
            }
            pb.finish_and_clear();
            stored?;
            let fits: Vec<train::FitResult> = slots.into_iter().flatten().collect();
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
                refine_factor: fits.iter().map(|f| f.refine_factor).collect(),
                restores: fits.iter().map(|f| f.restores.len()).collect(),
                restored_epochs: fits
                    .iter()
                    .map(|f| f.restores.iter().map(|r| [r.epoch, r.to_epoch]).collect())
                    .collect(),
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
        seed,
        device: spec.to_string(),
        dip,
        tikhonov: base.clone(),
        qc,
        truth: None,
        files: Vec::new(),
    };
    Ok(Reconstruction {
        resumed_members: resumed,
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

/// Write spectrum.csv, loss.csv (DIP), spectrum.png, the effective config (`write_config`
/// writes it into the directory it is given and returns its path) and summary.toml to `out`.
pub fn write_outputs(
    dc: &DipConfig,
    r: &mut Reconstruction,
    out: &Path,
    write_config: impl FnOnce(&Path) -> Result<PathBuf, SpxError>,
) -> Result<Vec<PathBuf>, SpxError> {
    crate::io::ensure_dir(out)?;
    let mut files = Vec::new();
    let p = out.join("spectrum.csv");
    output::write_spectrum_csv(
        &p,
        &r.grid,
        &r.flux,
        r.flux_std.as_deref(),
        if dc.solver == Solver::Dip {
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
            baseline: if dc.solver == Solver::Dip {
                r.baseline.as_deref()
            } else {
                None
            },
            truth_smoothed: truth_smoothed.as_deref(),
        },
    )?;
    files.push(p);
    files.push(write_config(out)?);
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
