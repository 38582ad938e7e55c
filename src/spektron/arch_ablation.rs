//! E7: architecture ablation (`spx spektron experiment architecture`), one factor at a time
//! around the hybrid with wavelet tokens (the reference arm). With L =
//! `spektron.model.layers.len()` blocks: Transformer only (`t`×L), Mamba only (`m`×L), the
//! hybrid (the configured order when it mixes both letters, else `m`/`t` alternating from `m`),
//! the hybrid with raw-spectrum tokens (`spektron.model.embedding = "raw"`), and the hybrid with
//! a mixture of experts after the blocks (`spektron.model.moe_experts`, or
//! `spektron.experiment.ablation_moe_experts` when the model has none; no MoE in the other
//! arms). Every arm is pretrained with the configured losses on the same corpus and seed, then
//! put through E4's model arms at N = `spektron.experiment.table_n` ([`ablation::run`]); the
//! report gives each arm's parameter count (the property model, one target) and the wall time of
//! its pretraining and of its model arms.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;

use super::ablation::{self, AblationReport, Presentation, PretrainInput, Variant};
use super::experiment::{Input, Settings};
use super::model::{Embedding, ModelConfig, SpektronModel};
use crate::backend::seeded;
use crate::error::SpxError;

/// The hybrid block order for L blocks: the configured one when it mixes Mamba and
/// Transformer blocks, else alternating from Mamba (None for one block).
pub fn hybrid_layers(layers: &str) -> Option<String> {
    if layers.contains('m') && layers.contains('t') {
        return Some(layers.to_string());
    }
    let l = layers.len();
    (l >= 2).then(|| (0..l).map(|i| if i % 2 == 0 { 'm' } else { 't' }).collect())
}

/// The five arms (see the module docs), all pretrained.
pub fn variants(cfg: &Settings<'_>, pre: &PretrainInput<'_>) -> Result<Vec<Variant>, SpxError> {
    let base = cfg.arms.model;
    let l = base.layers.len();
    let hybrid = hybrid_layers(&base.layers).ok_or_else(|| {
        SpxError::field(
            "config",
            "spektron.model.layers",
            "E7 needs at least 2 blocks for the hybrid arm",
        )
    })?;
    let mk = |layers: &str, embedding: Embedding, moe: bool| {
        let mut m = base.clone();
        m.layers = layers.to_string();
        m.embedding = embedding;
        if moe {
            if m.moe_experts == 0 {
                m.moe_experts = cfg.arms.experiment.ablation_moe_experts;
            }
            m.moe_top_k = m.moe_top_k.clamp(1, m.moe_experts);
        } else {
            m.moe_experts = 0;
        }
        m
    };
    let (tt, mm) = ("t".repeat(l), "m".repeat(l));
    let moe = mk(&hybrid, Embedding::Wavelet, true);
    let moe_label = format!(
        "+ MoE ({} experts, top-{}, width {})",
        moe.moe_experts, moe.moe_top_k, moe.moe_d_expert
    );
    let arms = [
        (
            "transformer",
            "Transformer only",
            &tt,
            Embedding::Wavelet,
            None,
        ),
        ("mamba", "Mamba only", &mm, Embedding::Wavelet, None),
        (
            "hybrid",
            "hybrid Mamba + Transformer",
            &hybrid,
            Embedding::Wavelet,
            None,
        ),
        (
            "hybrid_raw",
            "hybrid Mamba + Transformer",
            &hybrid,
            Embedding::Raw,
            None,
        ),
        (
            "hybrid_moe",
            "hybrid Mamba + Transformer",
            &hybrid,
            Embedding::Wavelet,
            Some(moe),
        ),
    ];
    Ok(arms
        .into_iter()
        .map(|(name, what, layers, emb, moe)| {
            let tok = match emb {
                Embedding::Wavelet => "wavelet tokens",
                Embedding::Raw => "raw-spectrum tokens",
            };
            let extra = if moe.is_some() {
                format!(" {moe_label}")
            } else {
                String::new()
            };
            Variant {
                name: name.to_string(),
                label: format!("{what} ({layers}){extra}, {tok}"),
                // Short: the plot's x axis names every arm on one line.
                axis: format!(
                    "{}{}{}",
                    what.replace("hybrid Mamba + Transformer", "hybrid")
                        .replace(" only", ""),
                    if moe.is_some() { " + MoE" } else { "" },
                    if emb == Embedding::Raw {
                        ", raw tokens"
                    } else {
                        ""
                    }
                ),
                model: moe.unwrap_or_else(|| mk(layers, emb, false)),
                loss: pre.loss.clone(),
                pretrain: true,
            }
        })
        .collect())
}

/// Parameters of the property model (one target) a variant's arms train.
fn parameters(model: &ModelConfig, device: &Device, seed: u64) -> Result<usize, SpxError> {
    let mut mc = model.clone();
    mc.n_targets = 1;
    let mut rng = seeded(device, seed);
    Ok(SpektronModel::new(&mc, &mut rng, device)?.num_params())
}

/// E7 on the data of `input`; working and report files go into `dir`.
pub fn run(
    input: &Input,
    cfg: Settings<'_>,
    pre: PretrainInput<'_>,
    device: &Device,
    dir: &Path,
    on_progress: impl FnMut(&str),
) -> Result<AblationReport, SpxError> {
    let vs = variants(&cfg, &pre)?;
    // Parameter counts first, outside the seeded runs (they draw from burn's RNG).
    let params = vs
        .iter()
        .map(|v| parameters(&v.model, device, cfg.seed))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ab = ablation::run(
        input,
        cfg,
        pre,
        &vs,
        "e7",
        device,
        dir,
        on_progress,
        |t, run| {
            run.parameters = Some(params[t.index]);
            Ok(())
        },
    )?;
    for (r, s) in ab.runs.iter_mut().zip(&ab.arms_seconds) {
        r.arms_seconds = Some(*s);
    }
    let pres = Presentation {
        experiment: "E7",
        tag: "e7",
        variant_header: "architecture",
        columns: vec![
            (
                "parameters".to_string(),
                ab.runs
                    .iter()
                    .map(|r| r.parameters.unwrap_or(0).to_string())
                    .collect(),
            ),
            (
                "pretraining (s, wall)".to_string(),
                ab.runs
                    .iter()
                    .map(|r| format!("{:.1}", r.pretrain_seconds))
                    .collect(),
            ),
            (
                "model arms (s, wall)".to_string(),
                ab.arms_seconds.iter().map(|s| format!("{s:.1}")).collect(),
            ),
            ablation::val_msrp_column(&ab.runs, "val MSRP"),
        ],
    };
    ablation::report(input, &cfg, pre.synth.n, ab, &vs, &pres, dir)
}
