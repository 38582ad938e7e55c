//! The PtychoPINN network (`ptycho/model.py`): a CNN encoder, two decoders (amplitude with a
//! sigmoid head, phase with a π·tanh head, swish border branches), a trainable log intensity
//! scale, and the physics layers of [`super::physics`] behind it.
//!
//! Tensors are NCHW: diffraction `[B, C, N, N]` with C = gridsize² channels.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::activation::{sigmoid, silu, tanh};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::physics::{self, Cplx, GroupGeometry};
use crate::backend::tensor_from;
use crate::nn::{self, ConvImpl, PadMode};

/// Architecture settings (`[ptycho.pinn.model]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Filter multiplier (reference `n_filters_scale`).
    pub n_filters_scale: usize,
    /// Filters of the first encoder level; 0 = reference ladder `n_filters_scale·32·64/N`.
    pub filters_base: usize,
    /// Filters of the border branch; 0 = reference `n_filters_scale·2048/N`.
    pub border_filters: usize,
}

/// Sizes the network is built for (saved next to the checkpoint).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelShape {
    pub n: usize,
    pub gridsize: usize,
    /// Encoder filters per level (each level halves the size; the last is at 8 px or N/2).
    pub encoder: Vec<usize>,
    pub decoder: Vec<usize>,
    pub border_filters: usize,
    /// Initial `exp(log_scale)` = sqrt(nphotons)/(N/2).
    pub intensity_scale: f64,
}

impl ModelShape {
    pub fn new(cfg: &ModelConfig, n: usize, gridsize: usize, nphotons: f64) -> Self {
        assert!(
            n.is_power_of_two() && n >= 8,
            "N must be a power of two >= 8"
        );
        // reference: the encoder ends at 8 px for N >= 16
        let levels = ((n / 8).trailing_zeros() as usize).max(1);
        let base = if cfg.filters_base > 0 {
            cfg.filters_base
        } else {
            (cfg.n_filters_scale * 32 * 64 / n).max(1)
        };
        let encoder: Vec<usize> = (0..levels).map(|i| base << i).collect();
        let decoder: Vec<usize> = encoder[..levels - 1].iter().rev().copied().collect();
        let border_filters = if cfg.border_filters > 0 {
            cfg.border_filters
        } else {
            (cfg.n_filters_scale * 2048 / n).max(1)
        };
        ModelShape {
            n,
            gridsize,
            encoder,
            decoder,
            border_filters,
            intensity_scale: nphotons.sqrt() / (n as f64 / 2.0),
        }
    }

    pub fn channels(&self) -> usize {
        self.gridsize * self.gridsize
    }
}

/// 3×3 "same" conv initialised like the reference's Keras layers (glorot-uniform kernel,
/// zero bias) rather than burn's default (Kaiming-uniform, gain 1/√3, on kernel and bias).
fn conv(cin: usize, cout: usize, dev: &Device) -> Conv2d {
    let mut c = Conv2dConfig::new([cin, cout], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .with_initializer(Initializer::XavierUniform { gain: 1.0 })
        .init(dev);
    c.bias = Some(Param::from_tensor(Tensor::zeros([cout], dev)));
    c
}

/// 2 × (conv3×3 + ReLU).
#[derive(Module, Debug)]
pub struct DoubleConv {
    a: Conv2d,
    b: Conv2d,
}

impl DoubleConv {
    fn new(cin: usize, cout: usize, dev: &Device) -> Self {
        DoubleConv {
            a: conv(cin, cout, dev),
            b: conv(cout, cout, dev),
        }
    }
    fn forward(&self, x: Tensor<4>, imp: ConvImpl) -> Tensor<4> {
        let h = nn::conv2d_act(&self.a, x, PadMode::Zero, imp, RELU);
        nn::conv2d_act(&self.b, h, PadMode::Zero, imp, RELU)
    }
}

/// ReLU, fused into spx's conv on the CPU.
const RELU: nn::Act = Some(0.0);

/// A 3×3 "same" conv through spx's kernels (burn's stock conv off the CPU, or when `imp` says).
fn conv2d(c: &Conv2d, x: Tensor<4>, imp: ConvImpl) -> Tensor<4> {
    nn::conv2d(c, x, PadMode::Zero, imp)
}

/// One decoder: Conv_Up blocks to N/2, then the central head (zero-padded by N/4) plus the
/// swish border branch masked to outside the central N/2 square.
#[derive(Module, Debug)]
pub struct Decoder {
    blocks: Vec<DoubleConv>,
    centre: Conv2d,
    border_block: DoubleConv,
    border: Conv2d,
}

impl Decoder {
    fn new(shape: &ModelShape, dev: &Device) -> Self {
        let mut cin = *shape.encoder.last().expect("encoder has a level");
        let mut blocks = vec![];
        for &f in &shape.decoder {
            blocks.push(DoubleConv::new(cin, f, dev));
            cin = f;
        }
        assert!(
            cin > 4,
            "decoder needs more than 4 channels at its last level"
        );
        let c = shape.channels();
        Decoder {
            blocks,
            centre: conv(cin - 4, c, dev),
            border_block: DoubleConv::new(4, shape.border_filters, dev),
            border: conv(shape.border_filters, c, dev),
        }
    }

    /// Returns (central pre-activation `[B,C,N/2,N/2]`, border output `[B,C,N,N]` already masked).
    fn forward(
        &self,
        mut x: Tensor<4>,
        border_mask: &Tensor<4>,
        imp: ConvImpl,
    ) -> (Tensor<4>, Tensor<4>) {
        for b in &self.blocks {
            x = nn::upsample::up2(b.forward(x, imp));
        }
        let [bs, ch, h, w] = x.dims();
        let centre = conv2d(
            &self.centre,
            x.clone().slice([0..bs, 0..ch - 4, 0..h, 0..w]),
            imp,
        );
        let last = x.slice([0..bs, ch - 4..ch, 0..h, 0..w]);
        let border = silu(conv2d(
            &self.border,
            nn::upsample::up2(self.border_block.forward(last, imp)),
            imp,
        ));
        (centre, border * border_mask.clone())
    }
}

/// The network plus the trainable log intensity scale.
#[derive(Module, Debug)]
pub struct PtychoPinn {
    encoder: Vec<DoubleConv>,
    pool: MaxPool2d,
    amp: Decoder,
    phase: Decoder,
    pub log_scale: Param<Tensor<1>>,
    #[module(skip)]
    convs: ConvImpl,
}

/// What one forward pass yields.
pub struct Output {
    /// `[B,1,N,N]` merged object estimate of each group (`trimmed_obj`).
    pub object: Cplx<4>,
    /// `[B,C,N,N]` predicted amplitudes scaled by `exp(log_scale)`.
    pub pred_amp: Tensor<4>,
}

impl PtychoPinn {
    /// A fresh model; `log_scale` starts at `ln(sqrt(nphotons)/(N/2))` for every model.
    pub fn new(shape: &ModelShape, dev: &Device) -> Self {
        let mut encoder = vec![];
        let mut cin = shape.channels();
        for &f in &shape.encoder {
            encoder.push(DoubleConv::new(cin, f, dev));
            cin = f;
        }
        PtychoPinn {
            encoder,
            pool: MaxPool2dConfig::new([2, 2]).init(),
            amp: Decoder::new(shape, dev),
            phase: Decoder::new(shape, dev),
            log_scale: Param::from_tensor(tensor_from(
                vec![shape.intensity_scale.ln() as f32],
                [1],
                dev,
            )),
            convs: ConvImpl::Spx,
        }
    }

    /// The same network computing its convs with `imp` (burn's stock conv for comparisons).
    pub fn with_convs(mut self, imp: ConvImpl) -> Self {
        self.convs = imp;
        self
    }

    fn scale4(&self) -> Tensor<4> {
        self.log_scale.val().exp().reshape([1, 1, 1, 1])
    }

    /// The object patches `[B,C,N,N]` for network input `x` = `s·X_full`.
    pub fn object_patches(&self, x: Tensor<4>) -> Cplx<4> {
        let n = x.dims()[2];
        self.decode(self.encode(x), n)
    }

    /// Encoder features `[B, F, 8, 8]` of the network input `x` = `s·X_full`.
    pub fn encode(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = x / self.scale4();
        for b in &self.encoder {
            let y = b.forward(h, self.convs);
            h = match self.convs {
                ConvImpl::Spx => crate::nn::pool::max_pool2x2(y),
                ConvImpl::Stock => self.pool.forward(y),
            };
        }
        h
    }

    /// Both decoders and heads: encoder features → complex object patches `[B,C,N,N]`.
    pub fn decode(&self, h: Tensor<4>, n: usize) -> Cplx<4> {
        let dev = h.device();
        let mask = border_mask(n, &dev);
        let q = n / 4;
        let pad = |t: Tensor<4>| t.pad([(0, 0), (0, 0), (q, q), (q, q)], 0.0);
        let (ac, ab) = self.amp.forward(h.clone(), &mask, self.convs);
        let (pc, pb) = self.phase.forward(h, &mask, self.convs);
        let amp = pad(sigmoid(ac)) + ab;
        let phase = pad(tanh(pc) * std::f64::consts::PI) + pb;
        Cplx::from_polar(amp, phase)
    }

    /// Full PINN forward: network → per-group merge/extract → `ψ = P·O` → scaled amplitude.
    pub fn forward(&self, x: Tensor<4>, geo: &GroupGeometry, probe: &Cplx<4>) -> Output {
        let patches = self.object_patches(x);
        let (object, extracted) = geo.merge_extract(patches);
        let amp = physics::forward_amplitude(probe, extracted);
        Output {
            object,
            pred_amp: amp * self.scale4(),
        }
    }
}

/// 1 outside the central N/2×N/2 square, 0 inside; `[1,1,N,N]`.
pub fn border_mask(n: usize, dev: &Device) -> Tensor<4> {
    let (lo, hi) = (n / 4, n / 4 + n / 2);
    let v: Vec<f32> = (0..n * n)
        .map(|k| {
            let (r, c) = (k / n, k % n);
            if (lo..hi).contains(&r) && (lo..hi).contains(&c) {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    tensor_from(v, [1, 1, n, n], dev)
}
