//! The `spx dip` commands as library calls: simulate a source into files, reconstruct one
//! source into files (scored against a known spectrum when given), and the lines the CLI
//! prints about the result. The catalog mode is [`super::catalog::run`].

use std::path::{Path, PathBuf};

use super::DipConfig;
use super::grid::linspace;
use super::output::Summary;
use super::recon::{self, LineScore, Reconstruction};
use super::simulate;
use crate::backend::{self, DeviceSpec};
use crate::error::SpxError;
use crate::logging::Progress;

/// `spx dip simulate`: draw the configured source with `seed` and write `simulated.csv` and
/// `truth.csv` into `out`; returns their paths.
pub fn simulate_files(
    dc: &DipConfig,
    device: &DeviceSpec,
    seed: u64,
    out: &Path,
) -> Result<(PathBuf, PathBuf), SpxError> {
    dc.validate()?;
    let device = device.device()?;
    let mut rng = backend::seeded(&device, seed);
    let (src, rows) = simulate::simulate_kind(&dc.simulate, seed, &mut rng);
    let grid = linspace(dc.wavelength_min, dc.wavelength_max, dc.resolution);
    recon::write_simulation(&rows, &src, &grid, out, seed)
}

/// Directory in `--out` holding the finished members of an ensemble while it runs.
pub const ENSEMBLE_PARTS: &str = "ensemble-parts";

/// A finished single-source reconstruction and the files written for it.
#[derive(Clone, Debug)]
pub struct ReconReport {
    pub reconstruction: Reconstruction,
    pub files: Vec<PathBuf>,
}

/// Where a single-source run reads and writes.
#[derive(Clone, Copy, Debug)]
pub struct SourcePaths<'a> {
    /// The photometry CSV.
    pub input: &'a Path,
    /// A known spectrum to score against (`--truth`).
    pub truth: Option<&'a Path>,
    /// The output directory.
    pub out: &'a Path,
}

/// `spx dip recon` on one source: reconstruct `paths.input`, score it against `paths.truth` when
/// given (the truth is read first, so a bad file fails before the fit), and write the outputs
/// into `paths.out` (`write_config` writes the effective config into the directory it is given).
pub fn recon_one(
    dc: &DipConfig,
    device: &DeviceSpec,
    seed: u64,
    paths: SourcePaths,
    progress: Progress,
    write_config: impl FnOnce(&Path) -> Result<PathBuf, SpxError>,
) -> Result<ReconReport, SpxError> {
    let grid = linspace(dc.wavelength_min, dc.wavelength_max, dc.resolution);
    let known = paths
        .truth
        .map(|t| recon::read_truth(t, &grid))
        .transpose()?;
    // An ensemble keeps its finished members until the outputs are written, so that a killed
    // run resumes per member.
    let parts = (dc.solver == super::Solver::Dip && dc.ensemble > 1)
        .then(|| paths.out.join(ENSEMBLE_PARTS));
    let mut r =
        recon::reconstruct_resuming(dc, device, seed, paths.input, progress, parts.as_deref())?;
    if let (Some(t), Some(k)) = (paths.truth, known) {
        recon::score_against(&mut r, t, k);
    }
    let files = recon::write_outputs(dc, &mut r, paths.out, write_config)?;
    if let Some(p) = parts.filter(|p| p.exists()) {
        std::fs::remove_dir_all(&p).map_err(|e| SpxError::io(&p, e))?;
    }
    Ok(ReconReport {
        reconstruction: r,
        files,
    })
}

fn line_list(v: &[LineScore]) -> String {
    v.iter()
        .map(|l| {
            format!(
                "{:.3} µm {:.3} (peak {:.2})",
                l.wavelength, l.ratio, l.peak_ratio
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `spx dip recon` prints about a single-source run: the fit, a warning when the Tikhonov
/// λ sits at an end of its range (`target_chi2` is the χ²/M it aimed at), the scores against a
/// known spectrum, and the files written.
pub fn report_lines(s: &Summary, target_chi2: f64, files: &[PathBuf]) -> Vec<String> {
    let mut out = vec![format!(
        "{}: {} observations used ({} read), solver {}, χ²/M = {:.3}, {:.1} s",
        s.input, s.observations_used, s.qc.rows_read, s.solver, s.chi2_per_obs, s.seconds
    )];
    if let Some(t) = &s.tikhonov
        && (t.lambda_at_cap || t.lambda_at_floor)
    {
        out.push(format!(
            "warning: Tikhonov λ hit the {} of its range ({:.0e}); χ²/M = {:.3} instead of {}",
            if t.lambda_at_cap { "cap" } else { "floor" },
            t.lambda,
            t.chi2_per_obs,
            target_chi2
        ));
    }
    if let Some(t) = &s.truth {
        out.push(format!(
            "vs {}: relative error of the written spectrum {:.2} % (smoothed to λ/R first: {:.2} %)",
            t.file,
            100.0 * t.relative_rms,
            100.0 * t.relative_rms_smoothed_output
        ));
        if let Some(b) = &t.baseline {
            out.push(format!(
                "  Tikhonov baseline: {:.2} % (smoothed: {:.2} %)",
                100.0 * b.relative_rms,
                100.0 * b.relative_rms_smoothed_output
            ));
        }
        match &t.lines_note {
            Some(n) => out.push(format!("  line ratios: {n}")),
            None => {
                out.push(format!(
                    "  feature flux recovered/true: {}",
                    line_list(&t.lines)
                ));
                if let Some(b) = &t.baseline {
                    out.push(format!("  Tikhonov: {}", line_list(&b.lines)));
                }
            }
        }
    }
    out.extend(files.iter().map(|f| format!("wrote {}", f.display())));
    out
}

/// The line `spx dip recon` prints when ensemble members were reused (none otherwise).
pub fn resumed_line(r: &Reconstruction) -> Option<String> {
    (r.resumed_members > 0).then(|| {
        format!(
            "resumed {} of {} ensemble members from {ENSEMBLE_PARTS}/",
            r.resumed_members,
            r.summary.dip.as_ref().map_or(0, |d| d.members)
        )
    })
}
