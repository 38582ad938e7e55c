//! E3 (sample efficiency) and E4 (table) as pipelines ([`sample_efficiency`], [`table`]: data,
//! classical baselines, model arms, report files in a stage), and the model arms on the same seeded splits as the
//! classical baselines (`baselines::evaluate`): repetition s tests on the first `n_test` rows of
//! `RandomState(s).permutation(n)` and transfers with the first N rows of
//! `RandomState(1000+s).permutation(n_cal)` of the calibration set.
//!
//! Arms, mirroring the classical protocol (a master calibration on the source instrument, then
//! adaptation with N target samples):
//! - `spektron_master`: the (pretrained or random) model fully fine-tuned on the labelled source
//!   calibration spectra; N = 0 rows: on target test spectra (no transfer) and on source test
//!   spectra (`spektron_master_on_master`);
//! - `spektron_ttt` (N = 0): the master model after test-time training (`spektron.ttt.scope`:
//!   norm layers or the whole encoder) on the unlabelled target test spectra (transductive, like
//!   `recentre_test`); with `spektron.ttt.guard` the master is kept instead when the adapted
//!   model is worse on the labelled source calibration set;
//! - `spektron_sbc` (`spektron.experiment.slope_bias`): slope/bias correction of the master's
//!   predictions fitted on the N labelled target spectra (as the classical SBC);
//! - `spektron_lora`: the master model + LoRA adapters trained on N labelled target spectra,
//!   keeping the master's target standardisation;
//! - `scratch`: a randomly initialised model trained on the N labelled target spectra only;
//! - `pls_sbc_inputs` / `spektron_residual` (`spektron.experiment.residual`): PLS calibrated on
//!   the source calibration set (the model's SNV-resampled input spectra) with slope/bias
//!   correction on the N target samples, and the same plus a LoRA correction of its residuals
//!   learned by the master model from the N target samples (a residual design: the network
//!   corrects PLS/SBC, it does not replace it);
//! - `spektron_residual_gated` (`residual_gate_folds` > 0): the residual arm with its correction
//!   scaled by a factor in [0, `residual_gate_max`] chosen by k-fold cross-validation on the N
//!   target samples ([`anchored::gate_factor`]; 0 = `pls_sbc_inputs`); the factors are reported;
//! - `spektron_pls_head` / `pls_head_linear` (`spektron.experiment.pls_head`): a head on the
//!   source PLS model's latent-variable contributions and z_chem that starts at PLS + SBC exactly
//!   and is trained with LoRA on the N target samples towards that start ([`anchored::fit_head`]);
//!   `pls_head_linear` = the same head without the network (a classical control row);
//! - `cnn_sbc` / `blend_spektron` / `blend_cnn` (`spektron.experiment.blend`): the supervised
//!   CNN master + slope/bias on the N target samples, and `pls_sbc_inputs` blended with the
//!   Spektron or CNN master + slope/bias, the network's share chosen out-of-fold on the source
//!   calibration set or on the N transfer samples ([`blend`]); the shares are reported.
//!
//! `spektron.experiment.input` chooses the model's input spectra (`snv`: resampled + SNV, as
//! the corpus; `resample`: resampled only), which every arm (and the PLS of the residual arms)
//! reads.
//!
//! `spektron.experiment.adapt_unlabelled` adapts the initial model self-supervised (masked
//! reconstruction, `[spektron.ttt]`) on the task's unlabelled spectra before the master
//! calibration, so every arm starts from it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::anchored::{self, HeadInput, HeadSettings, Start};
use super::baselines;
use super::baselines::{BaselinesConfig, Cell, TransferData, r2, rmsep, splits};
use super::blend;
use super::data::{Modality, corpus, instruments, synth};
use super::model::finetune::{self, FinetuneConfig, FinetuneMode, Labelled, TttConfig};
use super::model::{ModelConfig, SpektronModel, checkpoint};
use super::protocol::{Centring, Split, slope_bias, sub_seed, take, to_array};
use super::report;
use super::supervised::arms::{self as supervised_arms, SupervisedSummary};
use super::supervised::cnn::Cnn1d;
use super::supervised::{self, SupervisedConfig};
use crate::backend::seeded;
use crate::error::SpxError;
use crate::io::atomic::{Stage, safe_component};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    pub n_transfer: Vec<usize>,
    pub table_n: usize,
    pub repeats: usize,
    pub master_epochs: usize,
    pub transfer_epochs: usize,
    pub scratch_epochs: usize,
    pub full_lr: f64,
    pub centre: bool,
    /// Add the `spektron_sbc` arm (slope/bias of the master's predictions on the N samples).
    #[serde(default)]
    pub slope_bias: bool,
    /// Add the `pls_sbc_inputs` and `spektron_residual` arms: PLS calibrated on the source
    /// calibration set (the model's input spectra, LVs by CV as the classical master),
    /// slope/bias-corrected on the N target samples; the residual arm adds a correction the
    /// master model learns (LoRA) from the N target residuals of that prediction.
    #[serde(default)]
    pub residual: bool,
    /// Self-supervised adaptation (masked reconstruction, `[spektron.ttt]` steps/lr/scope) of
    /// the initial model on the task's unlabelled spectra (source and target calibration and
    /// target test spectra, transductive as `recentre_test`) before the master calibration.
    #[serde(default)]
    pub adapt_unlabelled: bool,
    /// Add the `spektron_residual_gated` arm when > 0 (with `residual`): k-fold cross-validation
    /// (k clamped to N; N = leave-one-out) on the N target samples chooses the factor of the
    /// residual correction. 0 = off; 1 is refused.
    #[serde(default)]
    pub residual_gate_folds: usize,
    /// Largest factor of the gated correction (0 makes the gated arm `pls_sbc_inputs`).
    #[serde(default = "default_one")]
    pub residual_gate_max: f64,
    /// Add the `spektron_pls_head` and `pls_head_linear` arms (with `residual`): a head on the
    /// source PLS model's latent-variable contributions and z_chem, starting at PLS + SBC.
    #[serde(default)]
    pub pls_head: bool,
    /// Full-batch AdamW steps of the PLS-anchored head (0 = the start, PLS + SBC).
    #[serde(default = "default_pls_head_steps")]
    pub pls_head_steps: usize,
    /// Learning rate of the PLS-anchored head and its LoRA adapters.
    #[serde(default = "default_pls_head_lr")]
    pub pls_head_lr: f64,
    /// λ of the penalty Σ(q − 1)² + ‖v‖² towards the start.
    #[serde(default = "default_one")]
    pub pls_head_penalty: f64,
    /// Model input spectra: resampled + SNV (`snv`, the corpus's) or resampled only.
    #[serde(default)]
    pub input: InputPrep,
    /// Add the `cnn_sbc`, `blend_spektron` and `blend_cnn` arms (with `residual`): PLS + SBC
    /// blended with the Spektron master + SBC and with the supervised CNN master + SBC, the
    /// network's share chosen out-of-fold on the source calibration set (`source`) or on the N
    /// transfer samples (`transfer`); `off` = none.
    #[serde(default)]
    pub blend: BlendWeights,
    /// Folds of the source-set cross-validation of `blend = "source"` (masters refitted per fold).
    #[serde(default = "default_blend_folds")]
    pub blend_folds: usize,
    /// Largest network share of the blends (0 makes them `pls_sbc_inputs`).
    #[serde(default = "default_one")]
    pub blend_max: f64,
    /// Add the supervised deep baselines (`[spektron.supervised]`: 1-D CNN, plain Transformer,
    /// LoRA-CT), trained on the source calibration set and transferred with the N target samples.
    #[serde(default)]
    pub supervised: bool,
    /// E9 (`experiment ttt-steps`): the test-time-training step counts reported.
    #[serde(default)]
    pub ttt_steps: Vec<usize>,
    /// E7 (`experiment architecture`): experts of the MoE arm when `spektron.model.moe_experts`
    /// is 0.
    #[serde(default = "default_ablation_moe_experts")]
    pub ablation_moe_experts: usize,
    pub synth_samples: usize,
    pub synth_channels: usize,
    pub synth_shift: f64,
    pub synth_gain: f64,
    pub synth_offset: f64,
    pub synth_noise: f64,
}

fn default_ablation_moe_experts() -> usize {
    4
}

fn default_blend_folds() -> usize {
    5
}

fn default_one() -> f64 {
    1.0
}

fn default_pls_head_steps() -> usize {
    100
}

fn default_pls_head_lr() -> f64 {
    1e-3
}

/// The model's input spectra (`spektron.experiment.input`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InputPrep {
    /// Resampled to `n_points` and SNV-normalised, as the pretraining corpus.
    #[default]
    Snv,
    /// Resampled to `n_points` only (absorbance scale kept; `centre` still centres and scales).
    Resample,
}

/// How the blends' network share is chosen (`spektron.experiment.blend`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BlendWeights {
    /// No blend arms.
    #[default]
    Off,
    /// k-fold (`blend_folds`) on the labelled source calibration set: PLS and the masters
    /// refitted without each fold, residuals of the held-out source spectra.
    Source,
    /// Leave-one-out on the N transfer samples: both slope/bias corrections refitted without
    /// each held-out sample (the masters are not refitted).
    Transfer,
}

/// What the model arms read from the config.
#[derive(Clone, Copy, Debug)]
pub struct ArmSettings<'a> {
    pub model: &'a ModelConfig,
    pub finetune: &'a FinetuneConfig,
    pub ttt: &'a TttConfig,
    /// `spektron.loss.mask_block` (TTT masks blocks of this many patches).
    pub mask_block: usize,
    pub experiment: &'a ExperimentConfig,
    /// `spektron.baselines.n_test` (the same test split as the classical rows).
    pub n_test: usize,
    /// `[spektron.baselines]` (PLS LV selection of the residual arm).
    pub baselines: &'a BaselinesConfig,
    /// `[spektron.supervised]` (the CNN master of the blend arms).
    pub supervised: &'a SupervisedConfig,
}

/// Resample every row of both instruments to the model length (+ SNV, as the corpus).
pub fn prepare_spectra(
    data: &TransferData,
    axis: &[f64],
    n_points: usize,
    min_std: f64,
) -> Result<(Vec<f32>, Vec<f32>), SpxError> {
    prepare_spectra_as(data, axis, n_points, min_std, InputPrep::Snv)
}

/// [`prepare_spectra`] with the given preprocessing.
pub fn prepare_spectra_as(
    data: &TransferData,
    axis: &[f64],
    n_points: usize,
    min_std: f64,
    prep: InputPrep,
) -> Result<(Vec<f32>, Vec<f32>), SpxError> {
    let p = data.source.ncols();
    let ax: Vec<f64> = if axis.len() == p {
        axis.to_vec()
    } else {
        (0..p).map(|i| i as f64).collect()
    };
    let one = |x: &ndarray::Array2<f64>, which: &str| -> Result<Vec<f32>, SpxError> {
        let mut out = Vec::with_capacity(x.nrows() * n_points);
        for (i, row) in x.rows().into_iter().enumerate() {
            let row = row.to_vec();
            let r = match prep {
                InputPrep::Snv => corpus::prepare(&ax, &row, n_points, min_std),
                InputPrep::Resample => corpus::resample(&ax, &row, n_points)
                    .map(|v| v.into_iter().map(|a| a as f32).collect()),
            }
            .map_err(|e| {
                SpxError::field(
                    "experiment",
                    which,
                    format!("spectrum {i} rejected ({e:?})"),
                )
            })?;
            out.extend(r);
        }
        Ok(out)
    };
    Ok((one(&data.source, "source")?, one(&data.target, "target")?))
}

/// The source side of one repetition: centred calibration spectra and property values, the
/// task's unlabelled target spectra (centred target calibration + test; used with
/// `adapt_unlabelled`), the modality code and the repetition index.
pub struct MasterInput<'a> {
    pub xc: &'a [f32],
    pub yc: &'a [f32],
    pub unlabelled_target: &'a [f32],
    pub modality: i8,
    pub repetition: usize,
}

/// The master model of one repetition: random weights (seed `sub_seed(seed, s, 1, 0)`) or the
/// checkpoint, adapted self-supervised on the task's unlabelled spectra when `adapt_unlabelled`,
/// then fully fine-tuned on the labelled source calibration set (`master_epochs`, `full_lr`).
pub fn calibrate_master(
    cfg: ArmSettings<'_>,
    pretrained: Option<&Path>,
    m: &MasterInput<'_>,
    device: &Device,
    seed: u64,
) -> Result<(SpektronModel, finetune::FinetuneReport), SpxError> {
    let ec = cfg.experiment;
    let lay = cfg.model.layout();
    let p = lay.n_points;
    let s = m.repetition;
    let mut mc = cfg.model.clone();
    mc.n_targets = 1;
    let mods = |k: usize| vec![m.modality; k];
    let ms = sub_seed(seed, s, 1, 0);
    let mut rng = seeded(device, ms);
    let mut base = SpektronModel::new(&mc, &mut rng, device)?;
    if let Some(dir) = pretrained {
        base = checkpoint::load(dir, base)?.0;
    }
    if ec.adapt_unlabelled {
        // Unlabelled spectra of the task: source and target calibration, target test.
        let mut u = m.xc.to_vec();
        u.extend_from_slice(m.unlabelled_target);
        let us = sub_seed(seed, s, 5, 0);
        let _ = seeded(device, us);
        base = finetune::ttt(
            base,
            &lay,
            &u,
            &mods(u.len() / p),
            cfg.ttt,
            cfg.mask_block,
            device,
            us,
        )?
        .0;
    }
    let mcfg = FinetuneConfig {
        mode: FinetuneMode::Full,
        lr: ec.full_lr,
        epochs: ec.master_epochs,
        ..cfg.finetune.clone()
    };
    let _ = seeded(device, ms);
    finetune::finetune_scaled(
        base,
        &lay,
        &Labelled {
            x: m.xc,
            y: m.yc,
            modality: &mods(m.yc.len()),
        },
        &mcfg,
        device,
        ms,
        None,
    )
}

/// Run the model arms for every repetition and N; returns one [`Cell`] per (arm, N).
/// `pretrained`: checkpoint directory (same `[spektron.model]`), or `None` for random init.
#[allow(clippy::too_many_arguments)]
pub fn run_model_arms(
    xs: &[f32],
    xt: &[f32],
    y: &[f64],
    ns: &[usize],
    cfg: ArmSettings<'_>,
    pretrained: Option<&Path>,
    modality: i8,
    device: &Device,
    seed: u64,
    on_progress: impl FnMut(&str),
) -> Result<Vec<Cell>, SpxError> {
    run_model_arms_noted(
        xs,
        xt,
        y,
        ns,
        cfg,
        pretrained,
        modality,
        device,
        seed,
        on_progress,
    )
    .map(|r| r.0)
}

/// The residual gate's factor of one (repetition, N).
#[derive(Clone, Debug, Serialize)]
pub struct GateChoice {
    pub repetition: usize,
    pub n_transfer: usize,
    pub factor: f64,
}

/// The PLS-anchored heads of one (repetition, N): final LV weights q (start 1), offset change
/// (standardised units), ‖v‖ (z_chem weights, start 0); with and without the network.
#[derive(Clone, Debug, Serialize)]
pub struct HeadNote {
    pub repetition: usize,
    pub n_transfer: usize,
    pub q: Vec<f64>,
    pub offset_change: f64,
    pub v_norm: f64,
    pub q_linear: Vec<f64>,
    pub offset_change_linear: f64,
}

/// The blends' network shares of one (repetition, N) (0 = PLS + SBC only).
#[derive(Clone, Debug, Serialize)]
pub struct BlendNote {
    pub repetition: usize,
    pub n_transfer: usize,
    pub spektron_share: f64,
    pub cnn_share: f64,
    /// With `blend = source`: out-of-fold RMSE on the source calibration set of PLS, the
    /// Spektron master and the CNN master (empty otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_cv_rmse: Vec<f64>,
}

/// What the model arms report besides the cells (empty unless the switches are on).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ArmNotes {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub residual_gate: Vec<GateChoice>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pls_head: Vec<HeadNote>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blend: Vec<BlendNote>,
}

impl ArmNotes {
    pub fn is_empty(&self) -> bool {
        self.residual_gate.is_empty() && self.pls_head.is_empty() && self.blend.is_empty()
    }

    /// One Markdown line per N on the gate: its factors and how often it let the network in.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let mut ns: Vec<usize> = self.residual_gate.iter().map(|g| g.n_transfer).collect();
        ns.sort_unstable();
        ns.dedup();
        for n in ns {
            let f: Vec<f64> = self
                .residual_gate
                .iter()
                .filter(|g| g.n_transfer == n)
                .map(|g| g.factor)
                .collect();
            let on = f.iter().filter(|&&v| v > 0.0).count();
            let list: Vec<String> = f.iter().map(|v| format!("{v:.2}")).collect();
            md.push_str(&format!(
                "\nResidual gate N={n}: factor per split {} — the network correction is used (> 0) in {on} of {} splits.\n",
                list.join(", "),
                f.len()
            ));
        }
        let mut ns: Vec<usize> = self.blend.iter().map(|g| g.n_transfer).collect();
        ns.sort_unstable();
        ns.dedup();
        for n in ns {
            let list = |f: fn(&BlendNote) -> f64| -> String {
                let v: Vec<String> = self
                    .blend
                    .iter()
                    .filter(|g| g.n_transfer == n)
                    .map(|g| format!("{:.2}", f(g)))
                    .collect();
                v.join(", ")
            };
            md.push_str(&format!(
                "\nBlend N={n}: network share per split — Spektron {}; CNN {}.\n",
                list(|g| g.spektron_share),
                list(|g| g.cnn_share)
            ));
            let cv: Vec<&BlendNote> = self
                .blend
                .iter()
                .filter(|g| g.n_transfer == n && g.source_cv_rmse.len() == 3)
                .collect();
            if !cv.is_empty() {
                let mean = |i: usize| {
                    cv.iter().map(|g| g.source_cv_rmse[i]).sum::<f64>() / cv.len() as f64
                };
                md.push_str(&format!(
                    "Source-set out-of-fold RMSE (mean over splits): PLS {:.4}, Spektron {:.4}, CNN {:.4}.\n",
                    mean(0),
                    mean(1),
                    mean(2)
                ));
            }
        }
        md
    }
}

/// [`run_model_arms`] with the [`ArmNotes`].
#[allow(clippy::too_many_arguments)]
pub fn run_model_arms_noted(
    xs: &[f32],
    xt: &[f32],
    y: &[f64],
    ns: &[usize],
    cfg: ArmSettings<'_>,
    pretrained: Option<&Path>,
    modality: i8,
    device: &Device,
    seed: u64,
    mut on_progress: impl FnMut(&str),
) -> Result<(Vec<Cell>, ArmNotes), SpxError> {
    let ec = cfg.experiment;
    let lay = cfg.model.layout();
    let p = lay.n_points;
    let n = y.len();
    if xs.len() != n * p || xt.len() != n * p {
        return Err(SpxError::field(
            "experiment",
            "data",
            format!(
                "{n} property values but {} / {} spectrum values",
                xs.len(),
                xt.len()
            ),
        ));
    }
    let n_test = cfg.n_test;
    let n_cal = n.checked_sub(n_test).filter(|&c| c >= 3).ok_or_else(|| {
        SpxError::field(
            "config",
            "spektron.baselines.n_test",
            format!("{n_test} leaves no calibration set from {n} samples"),
        )
    })?;
    if let Some(&bad) = ns.iter().find(|&&k| k < 2 || k > n_cal) {
        return Err(SpxError::field(
            "config",
            "spektron.experiment.n_transfer",
            format!("{bad} must be in 2..={n_cal}"),
        ));
    }
    if ec.repeats == 0 {
        return Err(SpxError::field(
            "config",
            "spektron.experiment.repeats",
            "must be >= 1",
        ));
    }
    if ec.residual_gate_folds == 1 {
        return Err(SpxError::field(
            "config",
            "spektron.experiment.residual_gate_folds",
            "must be 0 (off) or >= 2",
        ));
    }
    // Both build on the residual arm's PLS + SBC (and the gate on its correction).
    for (on, key) in [
        (ec.residual_gate_folds > 0, "residual_gate_folds"),
        (ec.pls_head, "pls_head"),
        (ec.blend != BlendWeights::Off, "blend"),
    ] {
        if on && !ec.residual {
            return Err(SpxError::field(
                "config",
                format!("spektron.experiment.{key}"),
                "needs spektron.experiment.residual = true",
            ));
        }
    }
    if ec.blend == BlendWeights::Source && ec.blend_folds < 2 {
        return Err(SpxError::field(
            "config",
            "spektron.experiment.blend_folds",
            "must be >= 2",
        ));
    }
    let mut notes = ArmNotes::default();
    let mut mc = cfg.model.clone();
    mc.n_targets = 1;
    let full = FinetuneConfig {
        mode: FinetuneMode::Full,
        lr: ec.full_lr,
        ..cfg.finetune.clone()
    };
    let lora = FinetuneConfig {
        mode: FinetuneMode::Lora,
        epochs: ec.transfer_epochs,
        ..cfg.finetune.clone()
    };
    let fresh = |s: u64| -> Result<SpektronModel, SpxError> {
        let mut rng = seeded(device, s);
        SpektronModel::new(&mc, &mut rng, device)
    };
    let yv = |rows: &[usize]| -> Vec<f32> { rows.iter().map(|&r| y[r] as f32).collect() };
    let score = |rows: &[usize], pred: &[f64]| -> (f64, f64) {
        let yt = ndarray::Array1::from(rows.iter().map(|&r| y[r]).collect::<Vec<_>>());
        let yh = ndarray::ArrayView1::from(pred);
        (rmsep(yt.view(), yh), r2(yt.view(), yh))
    };
    type Acc = Vec<(&'static str, usize, Vec<(f64, f64)>)>;
    let mut acc: Acc = Vec::new();
    let mut push = |m: &'static str, k: usize, e: (f64, f64)| match acc
        .iter_mut()
        .find(|(mm, kk, _)| *mm == m && *kk == k)
    {
        Some(c) => c.2.push(e),
        None => acc.push((m, k, vec![e])),
    };
    let first = cfg.baselines.first_repeat;
    for s in first..first + ec.repeats {
        let sp = Split::new(s, n, n_test);
        let (test, cal, tperm) = (&sp.test[..], &sp.cal[..], &sp.tperm);
        let mods = |k: usize| vec![modality; k];
        // Master-side centring (from the source calibration rows) for the master, TTT and LoRA
        // arms, as the classical methods reuse the master PLS centring.
        let cm = if ec.centre {
            Centring::fit(&take(xs, cal, p), p)
        } else {
            Centring::identity(p)
        };
        let xt_test = cm.apply(&take(xt, test, p));

        on_progress(&format!("repetition {}: master calibration", s + 1));
        let (xc, yc) = (cm.apply(&take(xs, cal, p)), yv(cal));
        // Source PLS on the model's input spectra (residual arm), LVs by CV as the classical
        // master.
        let pls = if ec.residual {
            let x = to_array(&take(xs, cal, p), p);
            let yc64 = ndarray::Array1::from(cal.iter().map(|&r| y[r]).collect::<Vec<_>>());
            Some(baselines::fit_cv(
                x.view(),
                yc64.view(),
                cfg.baselines,
                s as u32,
            ))
        } else {
            None
        };
        let unlabelled_target = if ec.adapt_unlabelled {
            let mut u = cm.apply(&take(xt, cal, p));
            u.extend_from_slice(&xt_test);
            u
        } else {
            Vec::new()
        };
        let master_in = MasterInput {
            xc: &xc,
            yc: &yc,
            unlabelled_target: &unlabelled_target,
            modality,
            repetition: s,
        };
        let (master, mrep) = calibrate_master(cfg, pretrained, &master_in, device, seed)?;
        let pred = |m: &SpektronModel, x: &[f32], rep: &finetune::FinetuneReport| {
            finetune::predict(&m.valid(), &lay, x, &mods(x.len() / p), rep, device)
        };
        push(
            "spektron_no_transfer",
            0,
            score(test, &pred(&master, &xt_test, &mrep)),
        );
        push(
            "spektron_master_on_master",
            0,
            score(test, &pred(&master, &cm.apply(&take(xs, test, p)), &mrep)),
        );

        on_progress(&format!("repetition {}: test-time training", s + 1));
        let ts = sub_seed(seed, s, 2, 0);
        let _ = seeded(device, ts);
        let (adapted, _) = finetune::ttt(
            master.clone(),
            &lay,
            &xt_test,
            &mods(test.len()),
            cfg.ttt,
            cfg.mask_block,
            device,
            ts,
        )?;
        // Guard: the adapted model must not be worse on the labelled source calibration set.
        let adapted = if cfg.ttt.guard {
            let cal_rmse = |m: &SpektronModel| score(cal, &pred(m, &xc, &mrep)).0;
            if cal_rmse(&adapted) > cal_rmse(&master) {
                master.clone()
            } else {
                adapted
            }
        } else {
            adapted
        };
        push(
            "spektron_ttt",
            0,
            score(test, &pred(&adapted, &xt_test, &mrep)),
        );
        let master_test = pred(&master, &xt_test, &mrep);
        let blend = if ec.blend == BlendWeights::Off {
            None
        } else {
            on_progress(&format!("repetition {}: blend members", s + 1));
            let bi = BlendInput {
                xs,
                y,
                cal,
                master_in: &master_in,
                repetition: s,
                modality,
            };
            Some(blend_members(cfg, pretrained, &bi, device, seed)?)
        };

        for &k in ns {
            let tr: Vec<usize> = tperm[..k].iter().map(|&i| cal[i]).collect();
            let raw = take(xt, &tr, p);
            let (xtr, ytr) = (cm.apply(&raw), yv(&tr));
            let data = Labelled {
                x: &xtr,
                y: &ytr,
                modality: &mods(k),
            };
            if ec.slope_bias {
                // SBC on the neural master: y ≈ a + b·ŷ fitted on the N transfer samples.
                let fit = pred(&master, &xtr, &mrep);
                let (a, b) = slope_bias(&fit, &tr.iter().map(|&r| y[r]).collect::<Vec<_>>());
                let corrected: Vec<f64> = master_test.iter().map(|&v| a + b * v).collect();
                push("spektron_sbc", k, score(test, &corrected));
            }
            if let Some((pls, a)) = &pls {
                // PLS + SBC on the N target samples, then a LoRA correction of its residuals.
                let ytr64: Vec<f64> = tr.iter().map(|&r| y[r]).collect();
                let on = |rows: &[usize]| pls.predict(to_array(&take(xt, rows, p), p).view(), *a);
                let fit = on(&tr).to_vec();
                let (a0, b0) = slope_bias(&fit, &ytr64);
                let base_test: Vec<f64> = on(test).iter().map(|&v| a0 + b0 * v).collect();
                push("pls_sbc_inputs", k, score(test, &base_test));
                let resid: Vec<f32> = fit
                    .iter()
                    .zip(&ytr64)
                    .map(|(&f, &t)| (t - (a0 + b0 * f)) as f32)
                    .collect();
                let rs = sub_seed(seed, s, 6, k);
                let _ = seeded(device, rs);
                let (m, rep) = finetune::finetune_scaled(
                    master.clone(),
                    &lay,
                    &Labelled {
                        x: &xtr,
                        y: &resid,
                        modality: &mods(k),
                    },
                    &lora,
                    device,
                    rs,
                    None,
                )?;
                let corr = pred(&m, &xt_test, &rep);
                let yh: Vec<f64> = base_test.iter().zip(&corr).map(|(b, c)| b + c).collect();
                push("spektron_residual", k, score(test, &yh));
                if let Some(bm) = &blend {
                    // Each member slope/bias-corrected on the N samples, blended with PLS + SBC.
                    let spk_fit = pred(&master, &xtr, &mrep);
                    let cnn_fit = bm.predict(&xtr, p, device);
                    let cnn_test = bm.predict(&xt_test, p, device);
                    let spk_sbc = blend::sbc(&spk_fit, &ytr64, &master_test);
                    let cnn_sbc = blend::sbc(&cnn_fit, &ytr64, &cnn_test);
                    push("cnn_sbc", k, score(test, &cnn_sbc));
                    let (us, uc) = match bm.source_shares {
                        Some(u) => u,
                        None => {
                            let r_pls = blend::loo_sbc_residuals(&fit, &ytr64);
                            let share = |f: &[f64]| {
                                let r = blend::loo_sbc_residuals(f, &ytr64);
                                blend::network_share(&r_pls, &r, ec.blend_max)
                            };
                            (share(&spk_fit), share(&cnn_fit))
                        }
                    };
                    push(
                        "blend_spektron",
                        k,
                        score(test, &blend::mix(&base_test, &spk_sbc, us)),
                    );
                    push(
                        "blend_cnn",
                        k,
                        score(test, &blend::mix(&base_test, &cnn_sbc, uc)),
                    );
                    notes.blend.push(BlendNote {
                        repetition: s,
                        n_transfer: k,
                        spektron_share: us,
                        cnn_share: uc,
                        source_cv_rmse: bm.source_cv_rmse.clone(),
                    });
                }
                if ec.residual_gate_folds > 0 {
                    // Out-of-fold residuals of PLS + SBC and out-of-fold corrections, SBC and
                    // LoRA refitted without the held-out fold.
                    let folds = splits::kfold(s as u32, k, ec.residual_gate_folds.min(k));
                    let (mut r_oof, mut c_oof) = (Vec::new(), Vec::new());
                    for (f, held) in folds.iter().enumerate() {
                        let fit_rows: Vec<usize> = (0..k).filter(|i| !held.contains(i)).collect();
                        let pick = |v: &[f64], rows: &[usize]| -> Vec<f64> {
                            rows.iter().map(|&i| v[i]).collect()
                        };
                        let (a1, b1) = slope_bias(&pick(&fit, &fit_rows), &pick(&ytr64, &fit_rows));
                        let res_f: Vec<f32> = fit_rows
                            .iter()
                            .map(|&i| (ytr64[i] - (a1 + b1 * fit[i])) as f32)
                            .collect();
                        let gs = sub_seed(seed, s, 7, k + 1000 * (f + 1));
                        let _ = seeded(device, gs);
                        let (mf, rf) = finetune::finetune_scaled(
                            master.clone(),
                            &lay,
                            &Labelled {
                                x: &take(&xtr, &fit_rows, p),
                                y: &res_f,
                                modality: &mods(fit_rows.len()),
                            },
                            &lora,
                            device,
                            gs,
                            None,
                        )?;
                        c_oof.extend(pred(&mf, &take(&xtr, held, p), &rf));
                        r_oof.extend(held.iter().map(|&i| ytr64[i] - (a1 + b1 * fit[i])));
                    }
                    let g = anchored::gate_factor(&r_oof, &c_oof, ec.residual_gate_max);
                    let yg: Vec<f64> = base_test
                        .iter()
                        .zip(&corr)
                        .map(|(b, c)| b + g * c)
                        .collect();
                    push("spektron_residual_gated", k, score(test, &yg));
                    notes.residual_gate.push(GateChoice {
                        repetition: s,
                        n_transfer: k,
                        factor: g,
                    });
                }
                if ec.pls_head {
                    let start = Start {
                        pls,
                        lvs: *a,
                        a0,
                        b0,
                        y_mean: mrep.y_mean[0],
                        y_std: mrep.y_std[0],
                    };
                    let hs = HeadSettings {
                        steps: ec.pls_head_steps,
                        lr: ec.pls_head_lr,
                        penalty: ec.pls_head_penalty,
                        lora_rank: cfg.finetune.lora_rank,
                        lora_alpha: cfg.finetune.lora_alpha,
                    };
                    let train_in = HeadInput {
                        x_pls: &raw,
                        x_net: &xtr,
                        modality: &mods(k),
                    };
                    let test_pls = take(xt, test, p);
                    let test_in = HeadInput {
                        x_pls: &test_pls,
                        x_net: &xt_test,
                        modality: &mods(test.len()),
                    };
                    let hseed = sub_seed(seed, s, 8, k);
                    let _ = seeded(device, hseed);
                    let with_net = anchored::fit_head(
                        Some(master.clone()),
                        &lay,
                        start,
                        &train_in,
                        &ytr64,
                        hs,
                        device,
                    )?;
                    let yh = with_net.predict(&lay, start, &test_in, device);
                    push("spektron_pls_head", k, score(test, &yh));
                    let linear =
                        anchored::fit_head(None, &lay, start, &train_in, &ytr64, hs, device)?;
                    let yl = linear.predict(&lay, start, &test_in, device);
                    push("pls_head_linear", k, score(test, &yl));
                    let c0 = start.offset();
                    notes.pls_head.push(HeadNote {
                        repetition: s,
                        n_transfer: k,
                        q: with_net.q,
                        offset_change: with_net.c - c0,
                        v_norm: with_net.v_norm,
                        q_linear: linear.q,
                        offset_change_linear: linear.c - c0,
                    });
                }
            }
            on_progress(&format!("repetition {}: LoRA transfer N={k}", s + 1));
            let ls = sub_seed(seed, s, 3, k);
            let _ = seeded(device, ls);
            let (m, rep) = finetune::finetune_scaled(
                master.clone(),
                &lay,
                &data,
                &lora,
                device,
                ls,
                Some((&mrep.y_mean, &mrep.y_std)),
            )?;
            push("spektron_lora", k, score(test, &pred(&m, &xt_test, &rep)));

            on_progress(&format!("repetition {}: from scratch N={k}", s + 1));
            let ss = sub_seed(seed, s, 4, k);
            let scfg = FinetuneConfig {
                epochs: ec.scratch_epochs,
                ..full.clone()
            };
            // From scratch: centred on its own N target spectra (as target-only PLS).
            let cs = if ec.centre {
                Centring::fit(&raw, p)
            } else {
                Centring::identity(p)
            };
            let xtr_s = cs.apply(&raw);
            let data_s = Labelled {
                x: &xtr_s,
                y: &ytr,
                modality: &mods(k),
            };
            let m0 = fresh(ss)?;
            let (m, rep) = finetune::finetune_scaled(m0, &lay, &data_s, &scfg, device, ss, None)?;
            let xt_test_s = cs.apply(&take(xt, test, p));
            push("scratch", k, score(test, &pred(&m, &xt_test_s, &rep)));
        }
    }
    Ok((
        acc.into_iter()
            .map(|(m, k, v)| Cell::aggregate(m, k, &v))
            .collect(),
        notes,
    ))
}

/// What the blend members of one repetition are computed from.
struct BlendInput<'a> {
    /// All source spectra (model inputs, uncentred) and the property.
    xs: &'a [f32],
    y: &'a [f64],
    /// Calibration rows of the repetition.
    cal: &'a [usize],
    /// The Spektron master's input (centred calibration spectra and property).
    master_in: &'a MasterInput<'a>,
    repetition: usize,
    modality: i8,
}

/// The CNN master of one repetition (property standardised by mean `ym`, sd `ysd`) and, with
/// `blend = source`, the Spektron and CNN shares chosen out-of-fold on the source set.
struct BlendMembers {
    cnn: Cnn1d,
    ym: f64,
    ysd: f64,
    source_shares: Option<(f64, f64)>,
    /// Out-of-fold source RMSE of PLS, Spektron, CNN (`blend = source`).
    source_cv_rmse: Vec<f64>,
}

impl BlendMembers {
    /// The CNN master's predictions (property units) for centred spectra `x`.
    fn predict(&self, x: &[f32], p: usize, device: &Device) -> Vec<f64> {
        supervised::predict(&self.cnn, x, p, device)
            .into_iter()
            .map(|v| f64::from(v) * self.ysd + self.ym)
            .collect()
    }
}

/// Train a CNN master on centred spectra `x` and property `y` (standardised by their own mean
/// and sd), seeded by `seed`.
fn train_cnn(
    c: &SupervisedConfig,
    x: &[f32],
    y: &[f64],
    p: usize,
    device: &Device,
    seed: u64,
) -> Result<BlendMembers, SpxError> {
    let (ym, ysd) = supervised_arms::standardiser(y);
    let ys: Vec<f32> = y.iter().map(|v| ((v - ym) / ysd) as f32).collect();
    let (cnn, _) = supervised_arms::cnn_master(c, x, &ys, p, device, seed)?;
    Ok(BlendMembers {
        cnn,
        ym,
        ysd,
        source_shares: None,
        source_cv_rmse: Vec::new(),
    })
}

/// The blend members of one repetition: the CNN master (seed `sub_seed(seed, s, 11, 0)`, the
/// supervised baselines' CNN master) and, with `blend = source`, the network shares from
/// k-fold residuals on the source calibration set (PLS with LVs by CV, the Spektron master and
/// the CNN master each refitted without the held-out fold).
fn blend_members(
    cfg: ArmSettings<'_>,
    pretrained: Option<&Path>,
    b: &BlendInput<'_>,
    device: &Device,
    seed: u64,
) -> Result<BlendMembers, SpxError> {
    let ec = cfg.experiment;
    let lay = cfg.model.layout();
    let p = lay.n_points;
    let s = b.repetition;
    let ycal: Vec<f64> = b.cal.iter().map(|&r| b.y[r]).collect();
    let mut members = train_cnn(
        cfg.supervised,
        b.master_in.xc,
        &ycal,
        p,
        device,
        sub_seed(seed, s, 11, 0),
    )?;
    if ec.blend != BlendWeights::Source {
        return Ok(members);
    }
    let folds = splits::kfold(s as u32, b.cal.len(), ec.blend_folds.min(b.cal.len()));
    let (mut r_pls, mut r_spk, mut r_cnn) = (Vec::new(), Vec::new(), Vec::new());
    for (f, held) in folds.iter().enumerate() {
        let fit_loc: Vec<usize> = (0..b.cal.len()).filter(|i| !held.contains(i)).collect();
        let rows = |loc: &[usize]| -> Vec<usize> { loc.iter().map(|&i| b.cal[i]).collect() };
        let (fit_rows, held_rows) = (rows(&fit_loc), rows(held));
        let y_fit: Vec<f64> = fit_rows.iter().map(|&r| b.y[r]).collect();
        let y_held: Vec<f64> = held_rows.iter().map(|&r| b.y[r]).collect();
        let resid =
            |pred: &[f64]| -> Vec<f64> { y_held.iter().zip(pred).map(|(t, v)| t - v).collect() };
        // PLS on the raw model inputs, LVs by CV within the fold.
        let (pls, a) = baselines::fit_cv(
            to_array(&take(b.xs, &fit_rows, p), p).view(),
            ndarray::ArrayView1::from(&y_fit),
            cfg.baselines,
            s as u32,
        );
        r_pls.extend(resid(
            &pls.predict(to_array(&take(b.xs, &held_rows, p), p).view(), a)
                .to_vec(),
        ));
        // The masters on the centred spectra (centring of the whole calibration set: X only).
        let xc_fit = take(b.master_in.xc, &fit_loc, p);
        let xc_held = take(b.master_in.xc, held, p);
        let yc_fit: Vec<f32> = y_fit.iter().map(|&v| v as f32).collect();
        let fold_in = MasterInput {
            xc: &xc_fit,
            yc: &yc_fit,
            ..*b.master_in
        };
        let (m, rep) =
            calibrate_master(cfg, pretrained, &fold_in, device, sub_seed(seed, s, 9, f))?;
        r_spk.extend(resid(&finetune::predict(
            &m.valid(),
            &lay,
            &xc_held,
            &vec![b.modality; held.len()],
            &rep,
            device,
        )));
        let cnn = train_cnn(
            cfg.supervised,
            &xc_fit,
            &y_fit,
            p,
            device,
            sub_seed(seed, s, 10, f),
        )?;
        r_cnn.extend(resid(&cnn.predict(&xc_held, p, device)));
    }
    let rms = |r: &[f64]| (r.iter().map(|v| v * v).sum::<f64>() / r.len().max(1) as f64).sqrt();
    members.source_cv_rmse = vec![rms(&r_pls), rms(&r_spk), rms(&r_cnn)];
    members.source_shares = Some((
        blend::network_share(&r_pls, &r_spk, ec.blend_max),
        blend::network_share(&r_pls, &r_cnn, ec.blend_max),
    ));
    Ok(members)
}

/// E3 (RMSEP vs N) or E4 (the table at one N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    SampleEfficiency,
    Table,
}

impl Kind {
    /// File-name tag and title prefix.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Kind::SampleEfficiency => ("e3", "E3"),
            Kind::Table => ("e4", "E4"),
        }
    }
}

/// What an experiment reads from the config.
#[derive(Clone, Copy, Debug)]
pub struct Settings<'a> {
    pub arms: ArmSettings<'a>,
    pub baselines: &'a BaselinesConfig,
    /// `[spektron.supervised]` (with `spektron.experiment.supervised`).
    pub supervised: &'a SupervisedConfig,
    /// `spektron.corpus.min_std` (spectra resampled and SNV-normalised as in the corpus).
    pub min_std: f64,
    pub seed: u64,
}

/// The data and model of one experiment.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// corn.mat / corn CSV directory / tablets .mat; `None`: synthetic two-instrument data
    /// (`spektron.experiment.synth_*`).
    pub data: Option<&'a Path>,
    pub source: &'a str,
    pub target: &'a str,
    /// Property name or 1-based column.
    pub property: &'a str,
    /// Pretrained checkpoint (same `[spektron.model]`); `None`: random initial weights.
    pub checkpoint: Option<&'a Path>,
    pub modality: Modality,
    /// The effective config file of the run, recorded in the JSON report.
    pub config_file: &'a Path,
}

/// The JSON report of an experiment (`<stem>.json`; `files` and `markdown` are not in it).
#[derive(Clone, Debug, Serialize)]
pub struct ExperimentReport {
    pub experiment: &'static str,
    pub data: Option<String>,
    pub source: String,
    pub target: String,
    pub property: String,
    pub pretrained: Option<String>,
    pub repeats: usize,
    pub n_test: usize,
    pub n_transfer: Vec<usize>,
    pub model_parameters: usize,
    pub model_seconds: f64,
    pub master_lvs: Vec<usize>,
    /// Sizes and master epochs of the supervised deep baselines (when they ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supervised: Option<SupervisedSummary>,
    /// The residual gate's factors and the PLS-anchored heads (when those arms ran).
    #[serde(skip_serializing_if = "ArmNotes::is_empty")]
    pub notes: ArmNotes,
    pub config: String,
    pub cells: Vec<Cell>,
    /// Files written (final paths), CSV, Markdown, [PNG,] JSON.
    #[serde(skip)]
    pub files: Vec<PathBuf>,
    /// The Markdown table.
    #[serde(skip)]
    pub markdown: String,
}

/// The N values of an experiment.
pub fn n_values(kind: Kind, ec: &ExperimentConfig) -> Vec<usize> {
    match kind {
        Kind::SampleEfficiency => ec.n_transfer.clone(),
        Kind::Table => vec![ec.table_n],
    }
}

/// Progress units [`run`] reports: per repetition, master + TTT + two arms per N (and with the
/// supervised baselines two masters + LoRA-CT per N, with the blends their members).
pub fn progress_len(kind: Kind, ec: &ExperimentConfig) -> u64 {
    let ns = n_values(kind, ec).len();
    let sup = if ec.supervised { 2 + ns } else { 0 };
    let blend = usize::from(ec.blend != BlendWeights::Off);
    (ec.repeats * (2 + 2 * ns + sup + blend)) as u64
}

/// E3: RMSEP vs N for the classical methods and the model arms (CSV, Markdown, PNG, JSON).
pub fn sample_efficiency(
    input: &Input,
    cfg: Settings<'_>,
    device: &Device,
    stage: &Stage,
    on_progress: impl FnMut(&str),
) -> Result<ExperimentReport, SpxError> {
    run(
        Kind::SampleEfficiency,
        input,
        cfg,
        device,
        stage,
        on_progress,
    )
}

/// E4: RMSEP/R² table at N = `table_n` plus the N = 0 rows (CSV, Markdown, JSON).
pub fn table(
    input: &Input,
    cfg: Settings<'_>,
    device: &Device,
    stage: &Stage,
    on_progress: impl FnMut(&str),
) -> Result<ExperimentReport, SpxError> {
    run(Kind::Table, input, cfg, device, stage, on_progress)
}

/// The data of an experiment and its names.
pub struct Task {
    pub data: TransferData,
    /// The file's x axis (empty: channel index).
    pub axis: Vec<f64>,
    pub title: String,
    /// File-name stem `<src>_<tgt>_<property>` or `synthetic`.
    pub stem: String,
    pub property: String,
}

/// Open the paired data file of `input`, or make the synthetic two-instrument data
/// (`spektron.experiment.synth_*`, seeded by `seed`).
pub fn task_data(input: &Input, ec: &ExperimentConfig, seed: u64) -> Result<Task, SpxError> {
    Ok(match input.data {
        Some(d) => {
            let pair = instruments::load_pair(d, input.source, input.target, input.property)?;
            let prop = pair.property.trim().to_string();
            Task {
                data: pair.data,
                axis: pair.axis,
                title: format!("{} → {}, {}", input.source, input.target, prop),
                stem: format!(
                    "{}_{}_{}",
                    input.source,
                    input.target,
                    prop.to_ascii_lowercase()
                ),
                property: prop,
            }
        }
        None => {
            let (xm, xs, y) = synth::two_instrument(
                seed,
                ec.synth_samples,
                ec.synth_channels,
                ec.synth_shift,
                ec.synth_gain,
                ec.synth_offset,
                ec.synth_noise,
            );
            Task {
                data: TransferData {
                    source: xm,
                    target: xs,
                    y,
                },
                axis: Vec::new(),
                title: format!(
                    "synthetic master → slave (shift {} ch, gain {}, offset {})",
                    ec.synth_shift, ec.synth_gain, ec.synth_offset
                ),
                stem: "synthetic".to_string(),
                property: "analyte 1".to_string(),
            }
        }
    })
}

/// What every corn experiment (E4, E9, E1) starts from: the task's data, its classical rows at
/// `ns` transfer samples on the seeded splits, and the model-input spectra (source, target).
pub struct Prepared {
    pub task: Task,
    pub base: baselines::BaselineReport,
    pub xs: Vec<f32>,
    pub xt: Vec<f32>,
}

/// Open (or synthesise) `input`'s data, evaluate the classical baselines at `ns` with the
/// experiment's repeats, and resample/normalise the spectra for the model.
pub fn prepare_task(input: &Input, cfg: &Settings, ns: &[usize]) -> Result<Prepared, SpxError> {
    let ec = cfg.arms.experiment;
    let task = task_data(input, ec, cfg.seed)?;
    let mut bc = cfg.baselines.clone();
    bc.n_transfer = ns.to_vec();
    bc.repeats = ec.repeats;
    let base = baselines::evaluate(&task.data, &bc, |_| {})?;
    let n_points = cfg.arms.model.layout().n_points;
    let (xs, xt) = prepare_spectra_as(&task.data, &task.axis, n_points, cfg.min_std, ec.input)?;
    Ok(Prepared { task, base, xs, xt })
}

/// One experiment: data (file or synthetic), the classical baselines and the model arms on the
/// same seeded splits; report files are written into `stage` (visible on its commit).
pub fn run(
    kind: Kind,
    input: &Input,
    cfg: Settings<'_>,
    device: &Device,
    stage: &Stage,
    on_progress: impl FnMut(&str),
) -> Result<ExperimentReport, SpxError> {
    let mut rep = run_into(kind, input, cfg, device, stage.dir(), on_progress)?;
    rep.files = rep.files.iter().map(|f| stage.final_path(f)).collect();
    Ok(rep)
}

/// [`run`] writing its report files into the directory `dir` (an existing staging directory or
/// a folder in one); `files` of the report are the paths written there.
pub fn run_into(
    kind: Kind,
    input: &Input,
    cfg: Settings<'_>,
    device: &Device,
    dir: &Path,
    mut on_progress: impl FnMut(&str),
) -> Result<ExperimentReport, SpxError> {
    let ec = cfg.arms.experiment;
    let ns = n_values(kind, ec);
    let Prepared {
        task:
            Task {
                data,
                title,
                stem,
                property,
                ..
            },
        base,
        xs,
        xt,
    } = prepare_task(input, &cfg, &ns)?;
    let lay = cfg.arms.model.layout();
    let short = if input.data.is_some() {
        title.clone()
    } else {
        "synthetic".to_string()
    };
    let params = {
        let mut mc = cfg.arms.model.clone();
        mc.n_targets = 1;
        let mut rng = seeded(device, cfg.seed);
        SpektronModel::new(&mc, &mut rng, device)?.num_params()
    };
    let t0 = Instant::now();
    let (arms, notes) = run_model_arms_noted(
        &xs,
        &xt,
        &data.y.to_vec(),
        &ns,
        cfg.arms,
        input.checkpoint,
        input.modality.code(),
        device,
        cfg.seed,
        &mut on_progress,
    )?;
    let mut cells = base.cells.clone();
    cells.extend(arms);
    let supervised = if ec.supervised {
        let pr = supervised_arms::Protocol {
            cfg: cfg.supervised,
            n_test: cfg.baselines.n_test,
            repeats: ec.repeats,
            first_repeat: cfg.baselines.first_repeat,
            centre: ec.centre,
            seed: cfg.seed,
        };
        let y = data.y.to_vec();
        let (c, summary) = supervised_arms::run_arms(
            &xs,
            &xt,
            &y,
            lay.n_points,
            &ns,
            pr,
            device,
            &mut on_progress,
        )?;
        cells.extend(c);
        Some(summary)
    } else {
        None
    };
    let secs = t0.elapsed().as_secs_f64();
    let (tag, name) = kind.names();
    let stem = safe_component(&format!("{tag}_{stem}"));
    let title = format!("{name}: {title}");
    let mut files = Vec::new();
    let p = dir.join(format!("{stem}.csv"));
    report::write_cells_csv(&p, &cells)?;
    files.push(p);
    let mut markdown = report::experiment_markdown(&title, &cells, &ns);
    markdown.push_str(&notes.markdown());
    let p = dir.join(format!("{stem}.md"));
    crate::io::write_atomic(&p, |w| std::io::Write::write_all(w, markdown.as_bytes()))?;
    files.push(p);
    if kind == Kind::SampleEfficiency {
        let p = dir.join(format!("{stem}.png"));
        report::experiment_plot(&p, &format!("{name} {short}"), &cells, &ns)?;
        files.push(p);
    }
    let mut rep = ExperimentReport {
        experiment: name,
        data: input.data.map(|d| d.display().to_string()),
        source: input.source.to_string(),
        target: input.target.to_string(),
        property,
        pretrained: input.checkpoint.map(|d| d.display().to_string()),
        repeats: ec.repeats,
        n_test: cfg.baselines.n_test,
        n_transfer: ns,
        model_parameters: params,
        model_seconds: secs,
        master_lvs: base.master_lvs,
        supervised,
        notes,
        config: input.config_file.display().to_string(),
        cells,
        files: Vec::new(),
        markdown,
    };
    let p = dir.join(format!("{stem}.json"));
    report::write_json(&p, &rep)?;
    files.push(p);
    rep.files = files;
    Ok(rep)
}
