//! E3 (sample efficiency) and E4 (table): the model arms on the same seeded splits as the
//! classical baselines (`baselines::evaluate`): repetition s tests on the first `n_test` rows of
//! `RandomState(s).permutation(n)` and transfers with the first N rows of
//! `RandomState(1000+s).permutation(n_cal)` of the calibration set.
//!
//! Arms, mirroring the classical protocol (a master calibration on the source instrument, then
//! adaptation with N target samples):
//! - `spektron_master`: the (pretrained or random) model fully fine-tuned on the labelled source
//!   calibration spectra; N = 0 rows: on target test spectra (no transfer) and on source test
//!   spectra (`spektron_master_on_master`);
//! - `spektron_ttt` (N = 0): the master model after test-time training (norm layers only) on the
//!   unlabelled target test spectra (transductive, like `recentre_test`);
//! - `spektron_lora`: the master model + LoRA adapters trained on N labelled target spectra,
//!   keeping the master's target standardisation;
//! - `scratch`: a randomly initialised model trained on the N labelled target spectra only.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::finetune::{self, FinetuneConfig, FinetuneMode, Labelled};
use super::{SpektronModel, checkpoint};
use crate::backend::seeded;
use crate::error::SpxError;
use crate::spektron::baselines::{Cell, TransferData, r2, rmsep, splits};
use crate::spektron::config::SpektronConfig;
use crate::spektron::data::corpus;

/// Model-arm method names (table order after the classical methods).
pub const ARMS: &[&str] = &[
    "spektron_master_on_master",
    "spektron_no_transfer",
    "spektron_ttt",
    "spektron_lora",
    "scratch",
];

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
    pub synth_samples: usize,
    pub synth_channels: usize,
    pub synth_shift: f64,
    pub synth_gain: f64,
    pub synth_offset: f64,
    pub synth_noise: f64,
}

/// Resample every row of both instruments to the model length (+ SNV, as the corpus).
pub fn prepare_spectra(
    data: &TransferData,
    axis: &[f64],
    n_points: usize,
    min_std: f64,
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
            let r = corpus::prepare(&ax, &row.to_vec(), n_points, min_std).map_err(|e| {
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

fn take(x: &[f32], rows: &[usize], p: usize) -> Vec<f32> {
    rows.iter()
        .flat_map(|&r| x[r * p..(r + 1) * p].iter().copied())
        .collect()
}

/// Centring of a calibration set, as PLS centres X: the mean spectrum and one RMS scale of the
/// centred rows (the sample-to-sample differences that carry the property are ~1 % of an SNV
/// spectrum; uncentred they are a small perturbation of one shared input).
#[derive(Clone, Debug)]
struct Centring {
    mean: Vec<f32>,
    scale: f32,
}

impl Centring {
    fn fit(x: &[f32], p: usize) -> Self {
        let n = (x.len() / p).max(1);
        let mut mean = vec![0.0f64; p];
        for row in x.chunks(p) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v) / n as f64;
            }
        }
        let ss: f64 = x
            .chunks(p)
            .flat_map(|row| {
                row.iter()
                    .zip(&mean)
                    .map(|(&v, m)| (f64::from(v) - m).powi(2))
            })
            .sum();
        let rms = (ss / x.len().max(1) as f64).sqrt();
        Centring {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            scale: if rms > 0.0 { rms as f32 } else { 1.0 },
        }
    }

    fn identity(p: usize) -> Self {
        Centring {
            mean: vec![0.0; p],
            scale: 1.0,
        }
    }

    fn apply(&self, x: &[f32]) -> Vec<f32> {
        x.chunks(self.mean.len())
            .flat_map(|row| {
                row.iter()
                    .zip(&self.mean)
                    .map(|(v, m)| (v - m) / self.scale)
            })
            .collect()
    }
}

/// Seed for one (repetition, arm, N) training run: burn's dropout draws from the global RNG,
/// so every training call reseeds it.
fn sub_seed(seed: u64, rep: usize, arm: u64, n: usize) -> u64 {
    seed ^ (((rep as u64) << 40) | (arm << 32) | n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Run the model arms for every repetition and N; returns one [`Cell`] per (arm, N).
/// `pretrained`: checkpoint directory (same `[spektron.model]`), or `None` for random init.
#[allow(clippy::too_many_arguments)]
pub fn run_model_arms(
    xs: &[f32],
    xt: &[f32],
    y: &[f64],
    ns: &[usize],
    cfg: &SpektronConfig,
    pretrained: Option<&Path>,
    modality: i8,
    device: &Device,
    seed: u64,
    mut on_progress: impl FnMut(&str),
) -> Result<Vec<Cell>, SpxError> {
    let ec = &cfg.experiment;
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
    let n_test = cfg.baselines.n_test;
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
    for s in 0..ec.repeats {
        let perm = splits::permutation(s as u32, n);
        let (test, cal) = perm.split_at(n_test);
        let tperm = splits::permutation(1000 + s as u32, cal.len());
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
        let ms = sub_seed(seed, s, 1, 0);
        let mut base = fresh(ms)?;
        if let Some(dir) = pretrained {
            base = checkpoint::load(dir, base)?.0;
        }
        let (xc, yc) = (cm.apply(&take(xs, cal, p)), yv(cal));
        let mcfg = FinetuneConfig {
            epochs: ec.master_epochs,
            ..full.clone()
        };
        let _ = seeded(device, ms);
        let (master, mrep) = finetune::finetune_scaled(
            base,
            &lay,
            &Labelled {
                x: &xc,
                y: &yc,
                modality: &mods(cal.len()),
            },
            &mcfg,
            device,
            ms,
            None,
        )?;
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
            &cfg.ttt,
            cfg.loss.mask_block,
            device,
            ts,
        )?;
        push(
            "spektron_ttt",
            0,
            score(test, &pred(&adapted, &xt_test, &mrep)),
        );

        for &k in ns {
            let tr: Vec<usize> = tperm[..k].iter().map(|&i| cal[i]).collect();
            let raw = take(xt, &tr, p);
            let (xtr, ytr) = (cm.apply(&raw), yv(&tr));
            let data = Labelled {
                x: &xtr,
                y: &ytr,
                modality: &mods(k),
            };
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
    Ok(acc
        .into_iter()
        .map(|(m, k, v)| Cell::aggregate(m, k, &v))
        .collect())
}
