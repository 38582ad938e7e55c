//! E1: pretraining ablation (`spx spektron experiment pretraining`). The same model is
//! pretrained three ways on one synthetic corpus (`[spektron.synth]`, made in the run) with
//! `[spektron.pretrain]`: `none` (random weights), `msrp` (masked spectral reconstruction only:
//! the other loss weights set to 0) and `all` (every `[spektron.loss]` weight as configured);
//! each is then put through E4's model arms ([`super::experiment::run_model_arms`]) at N =
//! `spektron.experiment.table_n` on the seeded splits of the classical rows (the shared driver
//! [`ablation::run`]). The `none` rows are E4 without `--checkpoint` (same seeds). The report
//! keeps each variant's last validation MSRP.

use std::path::Path;

use burn::tensor::Device;

use super::ablation::{self, AblationReport, Presentation, Variant};
use super::experiment::{Input, Settings};
use super::model::LossConfig;
use crate::error::SpxError;

pub use super::ablation::{PretrainInput, VariantCell, VariantRun};

/// Pretraining variants, in table order.
pub const VARIANTS: &[&str] = &["none", "msrp", "all"];

/// The loss weights of a variant (`msrp`: every weight but MSRP's set to 0).
pub fn variant_loss(variant: &str, loss: &LossConfig) -> LossConfig {
    let mut l = loss.clone();
    if variant == "msrp" {
        l.contrastive = 0.0;
        l.denoise = 0.0;
        l.ot = 0.0;
        l.physics = 0.0;
        l.vib = 0.0;
        l.moe = 0.0;
    }
    l
}

/// The three variants on the configured model.
pub fn variants(cfg: &Settings<'_>, pre: &PretrainInput<'_>) -> Vec<Variant> {
    VARIANTS
        .iter()
        .map(|v| {
            let (label, axis) = match *v {
                "none" => ("no pretraining (random weights)", "none"),
                "msrp" => (
                    "pretrained, masked reconstruction only",
                    "masked reconstruction only",
                ),
                _ => ("pretrained, all losses", "all losses"),
            };
            Variant {
                name: v.to_string(),
                label: label.to_string(),
                axis: axis.to_string(),
                model: cfg.arms.model.clone(),
                loss: variant_loss(v, pre.loss),
                pretrain: *v != "none",
            }
        })
        .collect()
}

/// E1 on the data of `input`; working and report files go into `dir`.
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
        "e1",
        device,
        dir,
        on_progress,
        |_, _| Ok(()),
    )?;
    let pres = Presentation {
        experiment: "E1",
        tag: "e1",
        variant_header: "pretraining",
        columns: vec![
            ablation::steps_column(&ab.runs),
            ablation::val_msrp_column(&ab.runs, "val MSRP"),
        ],
    };
    ablation::report(input, &cfg, pre.synth.n, ab, &vs, &pres, dir)
}
