//! Parameter-efficient adaptation: LoRA on the attention Q/K/V projections (burn's built-in
//! `apply_lora`, which freezes every existing parameter) and test-time training of the
//! normalisation layers only. Also a path → values snapshot used to verify what changed.

use std::collections::BTreeMap;

use burn::module::{Lora, Module, ModuleVisitor, Param, ParamGroup};
use burn::tensor::Tensor;

use super::SpektronModel;
use crate::backend::to_vec;
use crate::error::SpxError;

/// Parameter paths LoRA adapts: the Q/K/V weights of every Transformer block.
pub const LORA_TARGETS: &str = r"attn\.mha\.(query|key|value)\.weight$";
/// Heads that stay trainable during LoRA fine-tuning (regression reads z_chem's mean).
pub const LORA_TRAINABLE_HEADS: &str = r"^heads\.(regress|vib_chem|fno)\.";
/// Normalisation parameters (LayerNorm γ/β) updated by test-time training.
pub const NORM_PARAMS: &str = r"(^|\.)norm(_[12])?\.(gamma|beta)$";

/// Encoder parameters (everything but the heads), updated by TTT with `scope = "encoder"`.
pub const ENCODER_PARAMS: &str = r"^(patch_embed|pos|cls|mask_token|domain|blocks|moe|norm)(\.|$)";

fn group(re: &str) -> Result<ParamGroup, SpxError> {
    ParamGroup::from_regex(re).map_err(|e| {
        SpxError::field(
            "spektron",
            "lora",
            format!("bad parameter pattern {re}: {e:?}"),
        )
    })
}

/// Inject rank-`rank` adapters (scale α/rank) into Q/K/V; freeze everything else except the
/// regression and z_chem heads.
pub fn with_lora(model: SpektronModel, rank: usize, alpha: f64) -> Result<SpektronModel, SpxError> {
    if rank == 0 {
        return Err(SpxError::field(
            "config",
            "spektron.finetune.lora_rank",
            "must be > 0",
        ));
    }
    let m = model.apply_lora(Lora::new(rank, alpha).set_param_group(group(LORA_TARGETS)?));
    Ok(m.unfreeze_group(group(LORA_TRAINABLE_HEADS)?))
}

/// Freeze everything but the LayerNorm parameters (test-time training).
pub fn norms_only(model: SpektronModel) -> Result<SpektronModel, SpxError> {
    Ok(model.no_grad().unfreeze_group(group(NORM_PARAMS)?))
}

/// Freeze everything but the encoder (test-time training with `scope = "encoder"`).
pub fn encoder_only(model: SpektronModel) -> Result<SpektronModel, SpxError> {
    Ok(model.no_grad().unfreeze_group(group(ENCODER_PARAMS)?))
}

/// Path → flattened values of every float parameter; LoRA factors appear as `<weight>.lora.a|b`.
pub fn snapshot(model: &SpektronModel) -> BTreeMap<String, Vec<f32>> {
    struct V(BTreeMap<String, Vec<f32>>, Vec<String>);
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.1.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.1.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let path = self.1.join(".");
            self.0.insert(path, to_vec(p.val()));
        }
    }
    let mut v = V(BTreeMap::new(), Vec::new());
    model.visit(&mut v);
    v.0
}
