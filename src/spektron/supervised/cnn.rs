//! A small 1-D CNN regressor: two strided convolutions (GELU) over the spectrum, flattened, one
//! linear output. The positions of the features are kept (no global pooling): in NIR the
//! property sits in where the bands are, as in a PLS regression vector.

use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Gelu, Linear, LinearConfig, PaddingConfig1d};
use burn::tensor::{Device, Tensor};

use super::Regressor;
use crate::error::SpxError;

#[derive(Module, Debug)]
pub struct Cnn1d {
    pub conv1: Conv1d,
    pub conv2: Conv1d,
    pub head: Linear,
    act: Gelu,
    n_points: usize,
}

/// Output length of a convolution with padding `k / 2` on both sides.
fn out_len(l: usize, k: usize, s: usize) -> usize {
    (l + 2 * (k / 2) - k) / s + 1
}

impl Cnn1d {
    /// `channels` filters in the first layer, twice that in the second; kernel `kernel`, stride
    /// `stride` in both. Weights from burn's RNG (seeded by the caller).
    pub fn new(
        n_points: usize,
        channels: usize,
        kernel: usize,
        stride: usize,
        device: &Device,
    ) -> Result<Self, SpxError> {
        let bad =
            |f: &str, m: String| SpxError::field("config", format!("spektron.supervised.{f}"), m);
        if channels == 0 || stride == 0 || kernel == 0 {
            return Err(bad(
                "cnn_channels",
                "channels, kernel and stride must be > 0".into(),
            ));
        }
        if kernel > n_points {
            return Err(bad(
                "cnn_kernel",
                format!("{kernel} is longer than the {n_points}-point spectrum"),
            ));
        }
        let l2 = out_len(out_len(n_points, kernel, stride), kernel, stride);
        let conv = |cin: usize, cout: usize| {
            Conv1dConfig::new(cin, cout, kernel)
                .with_stride(stride)
                .with_padding(PaddingConfig1d::Explicit(kernel / 2, kernel / 2))
                .init(device)
        };
        Ok(Cnn1d {
            conv1: conv(1, channels),
            conv2: conv(channels, 2 * channels),
            head: LinearConfig::new(2 * channels * l2, 1).init(device),
            act: Gelu::new(),
            n_points,
        })
    }
}

impl Regressor for Cnn1d {
    fn regress(&self, x: Tensor<2>) -> Tensor<2> {
        let [b, p] = x.dims();
        debug_assert_eq!(p, self.n_points);
        let h = self.act.forward(self.conv1.forward(x.reshape([b, 1, p])));
        let h = self.act.forward(self.conv2.forward(h));
        let [_, c, l] = h.dims();
        self.head.forward(h.reshape([b, c * l]))
    }
}
