//! The Spektron network: patch embedding + [CLS] + [DOMAIN] + positions, a hybrid stack of
//! Mamba and Transformer blocks in the configured order, and the heads.

use burn::module::{Module, Param};
use burn::nn::transformer::{TransformerEncoderConfig, TransformerEncoderLayer};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Int, Tensor};
use rand::Rng;

use super::fno::FnoHead;
use super::heads::{Gaussian, Heads};
use super::mamba::{MambaBlock, MambaDims};
use super::moe::Moe;
use super::tokens::{N_SPECIAL, TokenLayout};
use super::{HeadKind, ModelConfig};
use crate::error::SpxError;
use crate::spektron::data::Modality;

/// One backbone block: exactly one of the two is present.
#[derive(Module, Debug)]
pub struct Block {
    pub mamba: Option<MambaBlock>,
    pub attn: Option<TransformerEncoderLayer>,
}

#[derive(Module, Debug)]
pub struct SpektronModel {
    pub patch_embed: Linear,
    pub pos: Param<Tensor<2>>,
    pub cls: Param<Tensor<1>>,
    pub mask_token: Param<Tensor<1>>,
    pub domain: Embedding,
    pub blocks: Vec<Block>,
    /// Optional mixture-of-experts layer after the blocks (`spektron.model.moe_experts > 0`).
    pub moe: Option<Moe>,
    pub norm: LayerNorm,
    pub heads: Heads,
    pub n_patches: usize,
    pub patch: usize,
    pub d_model: usize,
}

/// Everything one forward pass produces.
#[derive(Clone, Debug)]
pub struct ModelOutput {
    /// `[B, n_tokens, d_model]`.
    pub hidden: Tensor<3>,
    /// Reconstructed patches `[B, n_patches, patch]`.
    pub recon: Tensor<3>,
    /// `[B, z_chem]`.
    pub chem: Gaussian,
    /// `[B, z_inst]`.
    pub inst: Gaussian,
    /// MoE balance loss when the model has an MoE layer.
    pub balance: Option<Tensor<1>>,
}

impl SpektronModel {
    /// Validates the config and builds the model (weights from burn's RNG, seeded by the caller
    /// through `backend::seeded`, and `rng` for the Mamba Δ initialisation).
    pub fn new(cfg: &ModelConfig, rng: &mut impl Rng, device: &Device) -> Result<Self, SpxError> {
        let bad = |f: &str, m: &str| SpxError::field("config", format!("spektron.model.{f}"), m);
        if cfg.layers.is_empty() || cfg.layers.chars().any(|c| c != 'm' && c != 't') {
            return Err(bad(
                "layers",
                "must be a non-empty string of 'm' (Mamba) and 't' (Transformer)",
            ));
        }
        if cfg.n_heads == 0 || !cfg.d_model.is_multiple_of(cfg.n_heads) {
            return Err(bad("n_heads", "must divide d_model"));
        }
        if cfg.patch == 0 || cfg.n_points < 16 {
            return Err(bad("patch", "patch must be > 0 and n_points >= 16"));
        }
        if cfg.moe_experts > 0 && !(1..=cfg.moe_experts).contains(&cfg.moe_top_k) {
            return Err(bad("moe_top_k", "must be in 1..=moe_experts"));
        }
        if cfg.moe_experts > 0 && cfg.moe_d_expert == 0 {
            return Err(bad("moe_d_expert", "must be > 0"));
        }
        if cfg.head == HeadKind::Fno && (cfg.fno_width == 0 || cfg.fno_modes == 0) {
            return Err(bad("fno_width", "fno_width and fno_modes must be > 0"));
        }
        let lay: TokenLayout = cfg.layout();
        let d = cfg.d_model;
        let dims = MambaDims {
            d_model: d,
            d_state: cfg.d_state,
            d_conv: cfg.d_conv,
            expand: cfg.expand,
            dt_min: cfg.dt_min,
            dt_max: cfg.dt_max,
        };
        let tcfg = TransformerEncoderConfig::new(d, cfg.d_ff, cfg.n_heads, 1)
            .with_dropout(cfg.dropout)
            .with_norm_first(true);
        let blocks = cfg
            .layers
            .chars()
            .map(|c| match c {
                'm' => Block {
                    mamba: Some(MambaBlock::new(&dims, rng, device)),
                    attn: None,
                },
                _ => Block {
                    mamba: None,
                    attn: Some(TransformerEncoderLayer::new(&tcfg, device)),
                },
            })
            .collect();
        let mut heads = Heads::new(d, cfg.patch, cfg.z_chem, cfg.z_inst, cfg.n_targets, device);
        if cfg.head == HeadKind::Fno {
            heads.fno = Some(FnoHead::new(
                cfg.fno_width,
                cfg.fno_modes,
                cfg.fno_layers,
                cfg.n_targets,
                device,
            ));
        }
        let moe = (cfg.moe_experts > 0)
            .then(|| Moe::new(d, cfg.moe_experts, cfg.moe_top_k, cfg.moe_d_expert, device));
        let small = |n: usize| Tensor::<1>::random([n], Distribution::Normal(0.0, 0.02), device);
        Ok(SpektronModel {
            patch_embed: LinearConfig::new(cfg.patch, d).init(device),
            pos: Param::from_tensor(small(lay.n_tokens * d).reshape([lay.n_tokens, d])),
            cls: Param::from_tensor(small(d).reshape([d])),
            mask_token: Param::from_tensor(small(d).reshape([d])),
            domain: EmbeddingConfig::new(Modality::ALL.len(), d).init(device),
            blocks,
            moe,
            norm: LayerNormConfig::new(d).init(device),
            heads,
            n_patches: lay.n_patches,
            patch: cfg.patch,
            d_model: d,
        })
    }

    /// Backbone: patches `[B, n_patches, patch]`, modality codes `[B]`, optional mask
    /// `[B, n_patches]` (1 = masked, replaced by the learned mask token) → `[B, n_tokens, d]`.
    pub fn encode(
        &self,
        patches: Tensor<3>,
        domain: Tensor<1, Int>,
        mask: Option<Tensor<2>>,
    ) -> Tensor<3> {
        self.encode_aux(patches, domain, mask).0
    }

    /// [`Self::encode`] plus the MoE balance loss (when the model has an MoE layer).
    pub fn encode_aux(
        &self,
        patches: Tensor<3>,
        domain: Tensor<1, Int>,
        mask: Option<Tensor<2>>,
    ) -> (Tensor<3>, Option<Tensor<1>>) {
        let [b, p, k] = patches.dims();
        assert_eq!((p, k), (self.n_patches, self.patch), "patch tensor shape");
        let d = self.d_model;
        let mut e = self.patch_embed.forward(patches);
        if let Some(m) = mask {
            let m = m.reshape([b, p, 1]);
            let tok = self.mask_token.val().reshape([1, 1, d]);
            e = e * (m.clone().neg() + 1.0) + tok * m;
        }
        let cls = self.cls.val().reshape([1, 1, d]).repeat_dim(0, b);
        let dom = self.domain.forward(domain.reshape([b, 1]));
        let mut x = Tensor::cat(vec![cls, dom, e], 1) + self.pos.val().unsqueeze_dim(0);
        for blk in &self.blocks {
            if let Some(mb) = &blk.mamba {
                x = mb.forward(x);
            } else if let Some(a) = &blk.attn {
                x = a.forward(x, None, None);
            }
        }
        let mut balance = None;
        if let Some(moe) = &self.moe {
            let (y, bl) = moe.forward(x);
            x = y;
            balance = Some(bl);
        }
        (self.norm.forward(x), balance)
    }

    /// Encode, then all heads.
    pub fn forward(
        &self,
        patches: Tensor<3>,
        domain: Tensor<1, Int>,
        mask: Option<Tensor<2>>,
    ) -> ModelOutput {
        let (hidden, balance) = self.encode_aux(patches, domain, mask);
        let [b, t, d] = hidden.dims();
        let cls = hidden.clone().narrow(1, 0, 1).reshape([b, d]);
        let dom = hidden.clone().narrow(1, 1, 1).reshape([b, d]);
        let recon = self
            .heads
            .recon
            .forward(hidden.clone().narrow(1, N_SPECIAL, t - N_SPECIAL));
        ModelOutput {
            chem: self.heads.chem(cls),
            inst: self.heads.inst(dom),
            recon,
            hidden,
            balance,
        }
    }

    /// Property prediction from the mean of z_chem: `[B, n_targets]`.
    pub fn predict(&self, patches: Tensor<3>, domain: Tensor<1, Int>) -> Tensor<2> {
        let out = self.forward(patches, domain, None);
        self.heads.property(out.chem.mu)
    }
}
