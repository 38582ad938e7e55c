//! `spx demo`'s ptychography part as a library pipeline: a small simulation read back through
//! the loader and grouped (the whole data path end to end), then the small PINN run
//! (simulate → train → infer/stitch/score, [`pipeline::pinn_demo`]) scored against its truth.

use std::path::Path;

use serde::Serialize;

use super::metrics::Metrics;
use super::pipeline::{self, Hooks, TrainSummary};
use super::{PtychoConfig, RawData, recon};
use crate::backend::DeviceSpec;
use crate::error::SpxError;

/// The PINN part of the demo.
#[derive(Debug, Serialize)]
pub struct PinnDemo {
    pub train: TrainSummary,
    pub files: Vec<String>,
    pub metrics: Option<Metrics>,
}

/// What the ptycho demo did (the `ptycho` object of `spx demo --json`).
#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub pinn: PinnDemo,
    pub npz: String,
    pub png: Option<String>,
    pub n_positions: usize,
    pub nphotons: f64,
    pub mean_counts_per_pattern: f64,
    pub groups: usize,
    pub diffraction_grouped_shape: [usize; 4],
    pub seconds: f64,
}

/// Run the demo into `out/ptycho` (the simulation at `cfg`'s sizes) and `out/ptycho_pinn` (the
/// PINN at [`pipeline::demo_pinn_settings`]); the PINN's scores go to `hooks.say`.
pub fn run(
    cfg: &PtychoConfig,
    seed: u64,
    device: &DeviceSpec,
    out: &Path,
    hooks: &Hooks,
) -> Result<DemoReport, SpxError> {
    let s = pipeline::simulate_into(cfg, seed, &out.join("ptycho"), "ptycho_sim.npz", hooks)?;
    let raw = RawData::load(Path::new(&s.npz))?;
    let grouped = recon::prepare(&raw, &cfg.group, seed)?;
    let small = pipeline::demo_pinn_settings(cfg);
    let (train, files, r) =
        pipeline::pinn_demo(&small, seed, device, &out.join("ptycho_pinn"), hooks)?;
    if let Some(m) = &r.metrics {
        (hooks.say)(format!(
            "ptycho PINN demo (N 32 grid scan, {} epochs, scored on its scan): amplitude SSIM \
             {:.3}, PSNR {:.2} dB, FRC50 {:.1} on a {} px window",
            train.epochs_run, m.amp_ssim, m.amp_psnr_max, m.amp_frc50, r.covered
        ));
    }
    Ok(DemoReport {
        pinn: PinnDemo {
            train,
            files,
            metrics: r.metrics,
        },
        npz: s.npz,
        png: s.png,
        n_positions: s.n_positions,
        nphotons: s.nphotons,
        mean_counts_per_pattern: s.mean_counts_per_pattern,
        groups: grouped.len(),
        diffraction_grouped_shape: [grouped.len(), grouped.n, grouped.n, grouped.c],
        seconds: s.seconds,
    })
}
