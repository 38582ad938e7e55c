//! E2: masking-strategy ablation (`spx spektron experiment masking`). The configured model is
//! pretrained with every `[spektron.loss]` weight as configured, once per MSRP mask strategy
//! (`spektron.loss.mask_strategy`: random single patches, contiguous blocks, peak-aware blocks;
//! same ratio `mask_ratio`, same corpus, same seed), and each is put through E4's model arms at
//! N = `spektron.experiment.table_n` on the seeded splits of the classical rows
//! ([`ablation::run`]). The `contiguous` variant is E1's `all` variant (the default strategy).

use std::path::Path;

use burn::tensor::Device;

use super::ablation::{self, AblationReport, Presentation, PretrainInput, Variant};
use super::experiment::{Input, Settings};
use super::model::losses::MaskStrategy;
use crate::error::SpxError;

/// The strategies in table order: (strategy, variant name, row label, axis label).
pub const STRATEGIES: &[(MaskStrategy, &str, &str, &str)] = &[
    (
        MaskStrategy::Random,
        "random",
        "random single patches",
        "random",
    ),
    (
        MaskStrategy::Contiguous,
        "contiguous",
        "contiguous blocks (spektron.loss.mask_block patches)",
        "contiguous",
    ),
    (
        MaskStrategy::PeakAware,
        "peak-aware",
        "peak-aware blocks (centres ∝ patch energy + mean energy)",
        "peak-aware",
    ),
];

/// One pretrained variant per strategy, on the configured model and losses.
pub fn variants(cfg: &Settings<'_>, pre: &PretrainInput<'_>) -> Vec<Variant> {
    STRATEGIES
        .iter()
        .map(|&(st, name, label, axis)| {
            let mut loss = pre.loss.clone();
            loss.mask_strategy = st;
            Variant {
                name: name.to_string(),
                label: label.to_string(),
                axis: axis.to_string(),
                model: cfg.arms.model.clone(),
                loss,
                pretrain: true,
            }
        })
        .collect()
}

/// E2 on the data of `input`; working and report files go into `dir`.
pub fn run(
    input: &Input,
    cfg: Settings<'_>,
    pre: PretrainInput<'_>,
    device: &Device,
    dir: &Path,
    on_progress: impl FnMut(&str),
) -> Result<AblationReport, SpxError> {
    let vs = variants(&cfg, &pre);
    let ab = ablation::run(
        input,
        cfg,
        pre,
        &vs,
        "e2",
        device,
        dir,
        on_progress,
        |_, _| Ok(()),
    )?;
    let pres = Presentation {
        experiment: "E2",
        tag: "e2",
        variant_header: "MSRP masking",
        columns: vec![
            ablation::steps_column(&ab.runs),
            ablation::val_msrp_column(&ab.runs, "val MSRP (own masks)"),
        ],
    };
    ablation::report(input, &cfg, pre.synth.n, ab, &vs, &pres, dir)
}
