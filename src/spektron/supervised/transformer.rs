//! A plain Transformer regressor: the spectrum cut into patches of `patch` points (zero-padded
//! at the end), a linear patch embedding plus learned positions, a pre-norm Transformer encoder,
//! a final LayerNorm and one linear output over the flattened tokens (position-specific, as the
//! CNN's and a PLS regression vector: a mean over tokens fits even a linear target poorly). No wavelet tokens, no
//! pretraining, no VIB: the supervised baseline of the plan's E4 table. LoRA-CT puts adapters on
//! its attention projections ([`with_lora`]).

use burn::module::{Lora, Module, Param, ParamGroup};
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Tensor};

use super::Regressor;
use crate::error::SpxError;

#[derive(Module, Debug)]
pub struct SpectrumTransformer {
    pub embed: Linear,
    pub pos: Param<Tensor<2>>,
    pub encoder: TransformerEncoder,
    pub norm: LayerNorm,
    pub head: Linear,
    patch: usize,
    n_tokens: usize,
}

/// Sizes of [`SpectrumTransformer`].
#[derive(Clone, Copy, Debug)]
pub struct TransformerDims {
    pub patch: usize,
    pub d_model: usize,
    pub heads: usize,
    pub layers: usize,
    pub d_ff: usize,
}

/// Parameters LoRA-CT adapts (Q/K/V of every encoder layer) and the head it keeps trainable.
pub const LORA_TARGETS: &str = r"mha\.(query|key|value)\.weight$";
pub const LORA_TRAINABLE: &str = r"^head\.";

impl SpectrumTransformer {
    pub fn new(n_points: usize, d: TransformerDims, device: &Device) -> Result<Self, SpxError> {
        let bad =
            |f: &str, m: &str| SpxError::field("config", format!("spektron.supervised.{f}"), m);
        if d.patch == 0 || d.patch > n_points {
            return Err(bad("tf_patch", "must be in 1..=n_points"));
        }
        if d.heads == 0 || d.d_model == 0 || !d.d_model.is_multiple_of(d.heads) {
            return Err(bad("tf_heads", "must divide tf_d_model"));
        }
        if d.layers == 0 || d.d_ff == 0 {
            return Err(bad("tf_layers", "tf_layers and tf_d_ff must be > 0"));
        }
        let n_tokens = n_points.div_ceil(d.patch);
        let cfg = TransformerEncoderConfig::new(d.d_model, d.d_ff, d.heads, d.layers)
            .with_dropout(0.0)
            .with_norm_first(true);
        let pos = Tensor::<1>::random(
            [n_tokens * d.d_model],
            Distribution::Normal(0.0, 0.02),
            device,
        )
        .reshape([n_tokens, d.d_model]);
        Ok(SpectrumTransformer {
            embed: LinearConfig::new(d.patch, d.d_model).init(device),
            pos: Param::from_tensor(pos),
            encoder: cfg.init(device),
            norm: LayerNormConfig::new(d.d_model).init(device),
            head: LinearConfig::new(n_tokens * d.d_model, 1).init(device),
            patch: d.patch,
            n_tokens,
        })
    }
}

impl Regressor for SpectrumTransformer {
    fn regress(&self, x: Tensor<2>) -> Tensor<2> {
        let [b, p] = x.dims();
        let full = self.n_tokens * self.patch;
        let x = if full > p {
            Tensor::cat(vec![x.clone(), x.zeros_like().narrow(1, 0, full - p)], 1)
        } else {
            x
        };
        let tokens = x.reshape([b, self.n_tokens, self.patch]);
        let h = self.embed.forward(tokens) + self.pos.val().unsqueeze_dim(0);
        let h = self
            .norm
            .forward(self.encoder.forward(TransformerEncoderInput::new(h)));
        let [_, t, d] = h.dims();
        self.head.forward(h.reshape([b, t * d]))
    }
}

fn group(re: &str) -> Result<ParamGroup, SpxError> {
    ParamGroup::from_regex(re).map_err(|e| {
        SpxError::field(
            "spektron",
            "supervised",
            format!("bad parameter pattern {re}: {e:?}"),
        )
    })
}

/// LoRA-CT: rank-`rank` adapters (scale α/rank) on Q/K/V, every other parameter frozen except the
/// output head.
pub fn with_lora(
    model: SpectrumTransformer,
    rank: usize,
    alpha: f64,
) -> Result<SpectrumTransformer, SpxError> {
    if rank == 0 {
        return Err(SpxError::field(
            "config",
            "spektron.supervised.lora_rank",
            "must be > 0",
        ));
    }
    let m = model.apply_lora(Lora::new(rank, alpha).set_param_group(group(LORA_TARGETS)?));
    Ok(m.unfreeze_group(group(LORA_TRAINABLE)?))
}
