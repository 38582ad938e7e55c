//! The 1-D U-Net generator of the deep image prior.
//!
//! Stage 0: two k-tap convs 1→F→F; `depth` down stages (max-pool 2, C→2C→2C); `depth` up stages
//! (linear ×2 upsampling with aligned corners, concat the skip, 3C→C→C); 1×1 head; Softplus when
//! `positivity`. Every conv is reflect-padded (burn's Conv1d has no reflect mode: its padding is
//! `Valid` and spx's conv ([`crate::nn::conv1d`]) fuses the reflection into its gather) and
//! followed by LeakyReLU.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::interpolate::{Interpolate1d, Interpolate1dConfig, InterpolateMode};
use burn::nn::pool::{MaxPool1d, MaxPool1dConfig};
use burn::tensor::activation::{leaky_relu, softplus};
use burn::tensor::{Device, Tensor};

use super::NetInit;
use crate::nn::{self, ConvImpl, PadMode};

/// A k-tap conv `cin → cout`; `gain` is the He gain of the nonlinearity that follows.
fn conv(cin: usize, cout: usize, k: usize, init: NetInit, gain: f64, device: &Device) -> Conv1d {
    let cfg = Conv1dConfig::new(cin, cout, k);
    match init {
        NetInit::Pytorch => cfg.init(device),
        NetInit::Kaiming => {
            let mut c = cfg
                .with_initializer(Initializer::KaimingNormal {
                    gain,
                    fan_out_only: false,
                })
                .init(device);
            c.bias = Some(Param::from_tensor(Tensor::zeros([cout], device)));
            c
        }
    }
}

#[derive(Module, Debug)]
pub struct ConvBlock {
    c1: Conv1d,
    c2: Conv1d,
    #[module(skip)]
    pad: usize,
    #[module(skip)]
    slope: f64,
}

impl ConvBlock {
    fn new(cin: usize, cout: usize, spec: &UNetSpec, device: &Device) -> Self {
        let (k, slope) = (spec.kernel_size, spec.leaky_slope);
        let gain = (2.0 / (1.0 + slope * slope)).sqrt();
        ConvBlock {
            c1: conv(cin, cout, k, spec.init, gain, device),
            c2: conv(cout, cout, k, spec.init, gain, device),
            pad: k / 2,
            slope,
        }
    }

    fn conv(&self, c: &Conv1d, x: Tensor<3>, imp: ConvImpl) -> Tensor<3> {
        leaky_relu(
            nn::conv1d(c, x, self.pad, PadMode::Reflect, imp),
            self.slope,
        )
    }

    fn forward(&self, x: Tensor<3>, imp: ConvImpl) -> Tensor<3> {
        let x = self.conv(&self.c1, x, imp);
        self.conv(&self.c2, x, imp)
    }
}

#[derive(Module, Debug)]
pub struct UNet {
    inc: ConvBlock,
    downs: Vec<ConvBlock>,
    ups: Vec<ConvBlock>,
    upsample: Vec<Interpolate1d>,
    pool: MaxPool1d,
    head: Conv1d,
    #[module(skip)]
    positivity: bool,
    #[module(skip)]
    convs: ConvImpl,
}

/// Architecture settings of [`UNet`].
#[derive(Clone, Debug)]
pub struct UNetSpec {
    pub length: usize,
    pub depth: usize,
    pub filters: usize,
    pub kernel_size: usize,
    pub leaky_slope: f64,
    pub init: NetInit,
    pub positivity: bool,
}

impl UNet {
    /// Initialise from burn's seeded generator (see [`NetInit`]).
    pub fn new(spec: &UNetSpec, device: &Device) -> Self {
        let f = spec.filters;
        let inc = ConvBlock::new(1, f, spec, device);
        let downs = (1..=spec.depth)
            .map(|i| ConvBlock::new(f << (i - 1), f << i, spec, device))
            .collect();
        // Up stage i restores level depth−1−i: in = 2C (from below) + C (skip), out = C.
        let ups = (0..spec.depth)
            .map(|i| {
                let c = f << (spec.depth - 1 - i);
                ConvBlock::new(3 * c, c, spec, device)
            })
            .collect();
        let upsample = (0..spec.depth)
            .map(|i| {
                Interpolate1dConfig::new()
                    .with_output_size(Some(spec.length >> (spec.depth - 1 - i)))
                    .with_mode(InterpolateMode::Linear)
                    .with_align_corners(true)
                    .init()
            })
            .collect();
        UNet {
            inc,
            downs,
            ups,
            upsample,
            pool: MaxPool1dConfig::new(2).init(),
            head: conv(f, 1, 1, spec.init, 1.0, device),
            positivity: spec.positivity,
            convs: ConvImpl::Spx,
        }
    }

    /// The same network computing its convs with `imp` (burn's stock conv for comparisons).
    pub fn with_convs(mut self, imp: ConvImpl) -> Self {
        self.convs = imp;
        self
    }

    /// z: [1, 1, L] → spectrum [1, 1, L].
    pub fn forward(&self, z: Tensor<3>) -> Tensor<3> {
        let imp = self.convs;
        let mut x = self.inc.forward(z, imp);
        let mut skips = Vec::with_capacity(self.downs.len());
        for d in &self.downs {
            skips.push(x.clone());
            let pooled = match imp {
                ConvImpl::Spx => crate::nn::pool::max_pool2(x),
                ConvImpl::Stock => self.pool.forward(x),
            };
            x = d.forward(pooled, imp);
        }
        for (u, up) in self.ups.iter().zip(&self.upsample) {
            let skip = skips.pop().expect("one skip per level");
            x = u.forward(Tensor::cat(vec![up.forward(x), skip], 1), imp);
        }
        let out = nn::conv1d(&self.head, x, 0, PadMode::Zero, imp);
        if self.positivity {
            softplus(out, 1.0)
        } else {
            out
        }
    }
}

impl UNet {
    /// Every conv's weight `[cout, cin, k]` and bias `[cout]` in forward order (input block,
    /// down blocks, up blocks, head), without autodiff: the layout [`UNet::forward_stacked`]
    /// takes, one network per row.
    pub fn conv_params(&self) -> Vec<(Tensor<3>, Tensor<1>)> {
        let mut convs: Vec<&Conv1d> = vec![&self.inc.c1, &self.inc.c2];
        for b in self.downs.iter().chain(&self.ups) {
            convs.push(&b.c1);
            convs.push(&b.c2);
        }
        convs.push(&self.head);
        convs
            .into_iter()
            .map(|c| {
                let w = c.weight.val().inner();
                let cout = w.dims()[0];
                let b = match &c.bias {
                    Some(b) => b.val().inner(),
                    None => Tensor::zeros([cout], &w.device()),
                };
                (w, b)
            })
            .collect()
    }

    /// B networks of this architecture at once: row r of `z` `[B, 1, L]` through the weights
    /// `w[c][r]` `[cout, cin, k]`, `b[c][r]` of every conv c (the order of
    /// [`UNet::conv_params`]), → `[B, 1, L]`. No row reads another's weights or activations.
    pub fn forward_stacked(&self, w: &[Tensor<4>], b: &[Tensor<2>], z: Tensor<3>) -> Tensor<3> {
        let (pad, slope) = (self.inc.pad, self.inc.slope);
        let mut next = 0usize;
        // Block convs carry their leaky ReLU fused into the op (`stacked::conv_act`).
        let mut conv = |x: Tensor<3>, pad: usize, act: Option<f64>| {
            let c = next;
            next += 1;
            super::stacked::conv_act(x, w[c].clone(), b[c].clone(), pad, act)
        };
        let mut block = |x: Tensor<3>| {
            let x = conv(x, pad, Some(slope));
            conv(x, pad, Some(slope))
        };
        let mut x = block(z);
        let mut skips = Vec::with_capacity(self.downs.len());
        for _ in &self.downs {
            skips.push(x.clone());
            x = block(crate::nn::pool::max_pool2(x));
        }
        for up in &self.upsample {
            let skip = skips.pop().expect("one skip per level");
            x = block(super::layers::up_cat(up, x, skip));
        }
        let out = conv(x, 0, None);
        if self.positivity {
            softplus(out, 1.0)
        } else {
            out
        }
    }
}
