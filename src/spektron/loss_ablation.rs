//! E8: progressive loss ablation (`spx spektron experiment losses`). The configured model is
//! pretrained once per prefix of the loss list MSRP → + contrastive → + denoising → + optimal
//! transport → + physics → + VIB (→ + MoE balance when the model has an MoE layer): variant k
//! keeps the configured weights of the first k terms and sets the others to 0 (same corpus,
//! masks and seed). The last variant is every configured loss (E1's `all`), the first E1's
//! `msrp`. Each is put through E4's model arms at N = `spektron.experiment.table_n`
//! ([`ablation::run`]) and scored for physics violations ([`violation`]).
//!
//! **Physics-violation rate** (the design notes define none; this is the definition used): the
//! pretrained model reconstructs every spectrum of the task, both instruments, as the arms read
//! them (resampled, SNV; unmasked forward pass, reconstructed tokens decoded back to a
//! spectrum). A reconstructed point ŝ_j of a measured spectrum s violates physics when
//! - *roughness*: |ŝ_{j+1} − 2ŝ_j + ŝ_{j−1}| exceeds the largest |s_{i+1} − 2s_i + s_{i−1}| of the
//!   measured spectrum (the reconstruction bends more sharply than the measurement anywhere does;
//!   what the smoothness and derivative terms penalise), or
//! - *range*: ŝ_j lies outside [min s − 5 %, max s + 5 %] of the measured range (on SNV spectra,
//!   which are negative by construction, the bounded-intensity stand-in for non-negativity).
//!
//! The rate is the fraction of (spectrum, point) pairs violating either rule.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;

use super::ablation::{self, AblationReport, Presentation, PretrainInput, Variant, Violation};
use super::experiment::{Input, Settings};
use super::model::{LossConfig, SpektronModel, checkpoint, finetune};
use crate::backend::seeded;
use crate::error::SpxError;

/// Relative margin of the range rule.
pub const RANGE_MARGIN: f64 = 0.05;

/// The loss terms in the order they are added: (variant name, row label).
pub const TERMS: &[(&str, &str)] = &[
    ("msrp", "MSRP (masked reconstruction)"),
    ("contrastive", "+ contrastive (InfoNCE)"),
    ("denoise", "+ denoising"),
    ("ot", "+ optimal transport (Sinkhorn)"),
    (
        "physics",
        "+ physics (smoothness, non-negativity, derivative)",
    ),
    ("vib", "+ VIB (KL)"),
    ("moe", "+ MoE balance"),
];

/// The loss weights of the first `k` terms of [`TERMS`] (the rest 0).
pub fn prefix_loss(loss: &LossConfig, k: usize) -> LossConfig {
    let mut l = loss.clone();
    let keep = |i: usize, w: f64| if i < k { w } else { 0.0 };
    l.msrp = keep(0, l.msrp);
    l.contrastive = keep(1, l.contrastive);
    l.denoise = keep(2, l.denoise);
    l.ot = keep(3, l.ot);
    l.physics = keep(4, l.physics);
    l.vib = keep(5, l.vib);
    l.moe = keep(6, l.moe);
    l
}

/// One variant per prefix (the MoE term only when the model has an MoE layer).
pub fn variants(cfg: &Settings<'_>, pre: &PretrainInput<'_>) -> Vec<Variant> {
    let n = if cfg.arms.model.moe_experts > 0 {
        TERMS.len()
    } else {
        TERMS.len() - 1
    };
    TERMS[..n]
        .iter()
        .enumerate()
        .map(|(i, &(name, label))| Variant {
            name: name.to_string(),
            label: label.to_string(),
            axis: if i == 0 {
                "MSRP".to_string()
            } else {
                format!("+ {name}")
            },
            model: cfg.arms.model.clone(),
            loss: prefix_loss(pre.loss, i + 1),
            pretrain: true,
        })
        .collect()
}

/// Physics violations of reconstructions `recon` of the measured spectra `input` (row-major,
/// `n_points` per spectrum); see the module docs.
pub fn violation(input: &[f32], recon: &[f32], n_points: usize) -> Violation {
    let d2 = |s: &[f32], j: usize| {
        (f64::from(s[j + 1]) - 2.0 * f64::from(s[j]) + f64::from(s[j - 1])).abs()
    };
    let (mut rough, mut out, mut either, mut total) = (0usize, 0usize, 0usize, 0usize);
    for (s, r) in input.chunks(n_points).zip(recon.chunks(n_points)) {
        if s.len() < 3 || r.len() != s.len() {
            continue;
        }
        let max_d2 = (1..s.len() - 1).map(|j| d2(s, j)).fold(0.0, f64::max);
        let lo = s
            .iter()
            .map(|&v| f64::from(v))
            .fold(f64::INFINITY, f64::min);
        let hi = s
            .iter()
            .map(|&v| f64::from(v))
            .fold(f64::NEG_INFINITY, f64::max);
        let m = RANGE_MARGIN * (hi - lo);
        for (j, &v) in r.iter().enumerate() {
            let v = f64::from(v);
            let a = j > 0 && j + 1 < r.len() && {
                let c = d2(r, j);
                c > max_d2 || c.is_nan()
            };
            let b = v < lo - m || v > hi + m || v.is_nan();
            rough += usize::from(a);
            out += usize::from(b);
            either += usize::from(a || b);
            total += 1;
        }
    }
    let f = |c: usize| c as f64 / total.max(1) as f64;
    Violation {
        rate: f(either),
        roughness: f(rough),
        range: f(out),
        spectra: total / n_points.max(1),
    }
}

/// E8 on the data of `input`; working and report files go into `dir`.
pub fn run(
    input: &Input,
    cfg: Settings<'_>,
    pre: PretrainInput<'_>,
    device: &Device,
    dir: &Path,
    on_progress: impl FnMut(&str),
) -> Result<AblationReport, SpxError> {
    let vs = variants(&cfg, &pre);
    let modality = input.modality.code();
    let ab = ablation::run(
        input,
        cfg,
        pre,
        &vs,
        "e8",
        device,
        dir,
        on_progress,
        |t, run| {
            let Some(dir) = t.checkpoint else {
                return Ok(());
            };
            let mut rng = seeded(device, cfg.seed);
            let model = SpektronModel::new(&t.variant.model, &mut rng, device)?;
            let model = checkpoint::load(dir, model)?.0.valid();
            let lay = t.variant.model.layout();
            let mut x = t.prepared.xs.clone();
            x.extend_from_slice(&t.prepared.xt);
            let mods = vec![modality; x.len() / lay.n_points];
            let recon = finetune::reconstruct(&model, &lay, &x, &mods, device);
            run.physics_violation = Some(violation(&x, &recon, lay.n_points));
            Ok(())
        },
    )?;
    let pct = |f: fn(&Violation) -> f64| -> Vec<String> {
        ab.runs
            .iter()
            .map(|r| {
                r.physics_violation
                    .as_ref()
                    .map_or("–".to_string(), |v| format!("{:.2} %", 100.0 * f(v)))
            })
            .collect()
    };
    let pres = Presentation {
        experiment: "E8",
        tag: "e8",
        variant_header: "pretraining losses",
        columns: vec![
            ablation::val_msrp_column(&ab.runs, "val MSRP"),
            ("physics-violation rate".to_string(), pct(|v| v.rate)),
            ("roughness".to_string(), pct(|v| v.roughness)),
            ("range".to_string(), pct(|v| v.range)),
        ],
    };
    ablation::report(input, &cfg, pre.synth.n, ab, &vs, &pres, dir)
}
