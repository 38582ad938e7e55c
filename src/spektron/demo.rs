//! `spx demo`'s Spektron part: a small synthetic corpus, the classical baselines on a synthetic
//! two-instrument set (slave = master shifted by 1.5 channels, gain 0.9, offset 0.05, noise), a
//! 20-step pretraining of a small model on the corpus, and the model arms from that checkpoint.
//! The sizes are the caller's settings: `spx demo` applies the `demo` profile
//! (`configs/profiles/demo.toml`, section `[spektron.*]`).

use std::path::Path;

use serde::Serialize;

use super::baselines::{self, TransferData};
use super::config::SpektronConfig;
use super::data::{Modality, synth};
use super::experiment;
use super::model::pretrain;
use super::report;
use crate::backend::DeviceSpec;
use crate::error::SpxError;
use crate::io::ensure_dir;

/// Headline numbers and files of the demo.
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    pub corpus: String,
    pub corpus_spectra: usize,
    pub files: Vec<String>,
    pub model_rmsep_lora_n20: f64,
    pub model_rmsep_no_transfer: f64,
    pub model_rmsep_scratch_n20: f64,
    pub pretrain_files: Vec<String>,
    pub pretrain_spectra_per_s: f64,
    pub pretrain_val_msrp_final: Option<f64>,
    pub pretrain_val_msrp_initial: Option<f64>,
    pub rmsep_ds_n20: f64,
    pub rmsep_no_transfer: f64,
    pub rmsep_pds_n10: f64,
}

/// Run the demo into `out/spektron/` (CPU).
pub fn run(cfg: &SpektronConfig, seed: u64, out: &Path) -> Result<DemoReport, SpxError> {
    let dir = out.join("spektron");
    ensure_dir(&dir)?;
    let corpus_file = dir.join("synth.h5");
    let r = synth::write_synth_corpus(
        &corpus_file,
        seed,
        &cfg.synth,
        &cfg.corpus,
        &indicatif::ProgressBar::hidden(),
    )?;
    let (xm, xs, y) = synth::two_instrument(seed, 80, 200, 1.5, 0.9, 0.05, 2e-3);
    let data = TransferData {
        source: xm,
        target: xs,
        y,
    };
    let bc = &cfg.baselines;
    let base = baselines::evaluate(&data, bc, |_| {})?;
    let files = report::write_baselines(
        &dir,
        "baselines_synthetic",
        "synthetic master → slave (shift 1.5 ch, gain 0.9, offset 0.05)",
        &base,
        &bc.n_transfer,
    )?;
    let cell = |m: &str, n: usize| base.get(m, n).map_or(f64::NAN, |c| c.rmsep_mean);
    // A tiny masked pretraining run on the same corpus (the demo profile's small model and
    // 20 steps).
    let dev = DeviceSpec::Cpu.autodiff_device()?;
    let pdir = dir.join("pretrain");
    let (_, prep) = pretrain::pretrain(
        &corpus_file,
        &pdir,
        cfg.pretrain_settings(),
        &dev,
        seed,
        None,
        &indicatif::ProgressBar::hidden(),
    )?;
    let (loss_json, loss_png) = report::write_loss_files(&pdir, &prep)?;
    // Model arms on the same synthetic two-instrument set, from the checkpoint just written
    // (N = 20; the demo profile's one repetition and short training).
    let (xs, xt) = experiment::prepare_spectra(&data, &[], cfg.model.n_points, cfg.corpus.min_std)?;
    let arms = experiment::run_model_arms(
        &xs,
        &xt,
        &data.y.to_vec(),
        &[20],
        cfg.arm_settings(),
        Some(&prep.checkpoint),
        Modality::Nir.code(),
        &dev,
        seed,
        |_| {},
    )?;
    let arm = |m: &str| {
        arms.iter()
            .find(|c| c.method == m)
            .map_or(f64::NAN, |c| c.rmsep_mean)
    };
    Ok(DemoReport {
        corpus: corpus_file.display().to_string(),
        corpus_spectra: r.spectra,
        files: files.iter().map(|f| f.display().to_string()).collect(),
        model_rmsep_lora_n20: arm("spektron_lora"),
        model_rmsep_no_transfer: arm("spektron_no_transfer"),
        model_rmsep_scratch_n20: arm("scratch"),
        pretrain_files: vec![
            loss_json.display().to_string(),
            loss_png.display().to_string(),
            prep.checkpoint.display().to_string(),
        ],
        pretrain_spectra_per_s: prep.spectra_per_s,
        pretrain_val_msrp_final: prep.log.last().and_then(|e| e.val.as_ref()).map(|v| v.msrp),
        pretrain_val_msrp_initial: prep.initial_val.as_ref().map(|v| v.msrp),
        rmsep_ds_n20: cell("ds", 20),
        rmsep_no_transfer: cell("no_transfer", 0),
        rmsep_pds_n10: cell("pds", 10),
    })
}
