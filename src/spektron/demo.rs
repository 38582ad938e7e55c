//! `spx demo`'s Spektron part: a small synthetic corpus, the classical baselines on a synthetic
//! two-instrument set (slave = master shifted by 1.5 channels, gain 0.9, offset 0.05, noise), a
//! 20-step pretraining of a small model on the corpus, and the model arms from that checkpoint.

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
    let mut sc = cfg.synth.clone();
    sc.n = 200;
    let corpus_file = dir.join("synth.h5");
    let r = synth::write_synth_corpus(
        &corpus_file,
        seed,
        &sc,
        &cfg.corpus,
        &indicatif::ProgressBar::hidden(),
    )?;
    let (xm, xs, y) = synth::two_instrument(seed, 80, 200, 1.5, 0.9, 0.05, 2e-3);
    let data = TransferData {
        source: xm,
        target: xs,
        y,
    };
    let mut bc = cfg.baselines.clone();
    bc.n_transfer = vec![5, 10, 20];
    bc.repeats = 3;
    let base = baselines::evaluate(&data, &bc, |_| {})?;
    let files = report::write_baselines(
        &dir,
        "baselines_synthetic",
        "synthetic master → slave (shift 1.5 ch, gain 0.9, offset 0.05)",
        &base,
        &bc.n_transfer,
    )?;
    let cell = |m: &str, n: usize| base.get(m, n).map_or(f64::NAN, |c| c.rmsep_mean);
    // A tiny masked pretraining run on the same corpus (small model, 20 steps).
    let mut sp = cfg.clone();
    sp.model.d_model = 32;
    sp.model.n_heads = 4;
    sp.model.d_ff = 64;
    sp.model.layers = "mt".into();
    sp.model.d_state = 4;
    sp.pretrain.batch = 8;
    sp.pretrain.steps = 20;
    sp.pretrain.warmup = 2;
    sp.pretrain.lr = 2e-3;
    sp.pretrain.val_every = 10;
    sp.pretrain.checkpoint_every = 0;
    let dev = DeviceSpec::Cpu.autodiff_device()?;
    let pdir = dir.join("pretrain");
    let (_, prep) = pretrain::pretrain(
        &corpus_file,
        &pdir,
        sp.pretrain_settings(),
        &dev,
        seed,
        None,
        &indicatif::ProgressBar::hidden(),
    )?;
    let (loss_json, loss_png) = report::write_loss_files(&pdir, &prep)?;
    // Model arms on the same synthetic two-instrument set, from the checkpoint just written
    // (one repetition, N = 20, short training).
    let mut ex = sp.clone();
    ex.baselines.n_test = 20;
    ex.experiment.repeats = 1;
    ex.experiment.master_epochs = 20;
    ex.experiment.transfer_epochs = 20;
    ex.experiment.scratch_epochs = 10;
    ex.finetune.lr = 1e-3;
    ex.ttt.steps = 3;
    let (xs, xt) = experiment::prepare_spectra(&data, &[], ex.model.n_points, ex.corpus.min_std)?;
    let arms = experiment::run_model_arms(
        &xs,
        &xt,
        &data.y.to_vec(),
        &[20],
        ex.arm_settings(),
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
