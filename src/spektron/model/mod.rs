//! Spektron model: db4 wavelet tokens, hybrid Mamba/Transformer backbone, VIB and
//! reconstruction/regression heads, pretraining losses and the masked pretraining loop.

pub mod backbone;
pub mod checkpoint;
pub mod finetune;
pub mod fno;
pub mod heads;
pub mod lora;
pub mod losses;
pub mod mamba;
pub mod moe;
pub mod pretrain;
pub mod tokens;
pub mod wavelet;

use serde::{Deserialize, Serialize};

pub use backbone::{ModelOutput, SpektronModel};
pub use tokens::TokenLayout;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub n_points: usize,
    pub level: usize,
    pub patch: usize,
    /// Token values: db4 wavelet coefficients (default) or the raw spectrum (E7's ablation).
    #[serde(default)]
    pub embedding: Embedding,
    pub d_model: usize,
    pub n_heads: usize,
    pub d_ff: usize,
    pub dropout: f64,
    pub layers: String,
    pub d_state: usize,
    pub d_conv: usize,
    pub expand: usize,
    pub dt_min: f64,
    pub dt_max: f64,
    pub z_chem: usize,
    pub z_inst: usize,
    pub n_targets: usize,
    pub moe_experts: usize,
    pub moe_top_k: usize,
    pub moe_d_expert: usize,
    pub head: HeadKind,
    pub fno_width: usize,
    pub fno_modes: usize,
    pub fno_layers: usize,
}

/// What the patch tokens hold (`spektron.model.embedding`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Embedding {
    /// The concatenated db4 coefficients (`level` levels).
    #[default]
    Wavelet,
    /// The resampled spectrum itself.
    Raw,
}

/// Property head on z_chem's mean.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    Linear,
    Fno,
}

impl ModelConfig {
    pub fn layout(&self) -> TokenLayout {
        match self.embedding {
            Embedding::Wavelet => TokenLayout::new(self.n_points, self.level, self.patch),
            Embedding::Raw => TokenLayout::raw(self.n_points, self.patch),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    pub mask_ratio: f64,
    pub mask_block: usize,
    /// Which patches MSRP masks: contiguous blocks (default), random single patches, or
    /// peak-aware blocks (E2).
    #[serde(default)]
    pub mask_strategy: losses::MaskStrategy,
    pub msrp: f64,
    pub contrastive: f64,
    pub temperature: f64,
    pub denoise: f64,
    pub ot: f64,
    pub ot_reg: f64,
    pub ot_iters: usize,
    pub physics: f64,
    pub smoothness: f64,
    pub nonneg: f64,
    pub derivative: f64,
    pub vib: f64,
    pub beta: f64,
    pub moe: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    pub batch: usize,
    pub steps: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup: usize,
    pub clip: f64,
    pub val_fraction: f64,
    pub val_every: usize,
    pub val_batches: usize,
    pub checkpoint_every: usize,
    pub aug_noise: f64,
    pub aug_drift: f64,
    pub aug_shift: usize,
    pub aug_intensity: f64,
}
