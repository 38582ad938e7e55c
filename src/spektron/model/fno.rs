//! Fourier-neural-operator transfer head: the latent vector z `[B, L]` is read as a 1-channel
//! signal of length L, lifted to `width` channels, passed through spectral-convolution layers
//! (truncated real DFT → per-mode complex channel mixing → inverse real DFT, plus a pointwise
//! linear path, GELU) and projected to the targets, averaged over positions.
//! The DFTs are dense matmuls with cos/sin matrices, so any L works (burn's FFT needs powers of
//! two and has no inverse) and gradients come for free.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Distribution, Tensor};

use crate::backend::tensor_from;

#[derive(Module, Debug)]
pub struct SpectralConv {
    /// Real and imaginary mode weights `[c_in, c_out, modes]`.
    pub w_re: Param<Tensor<3>>,
    pub w_im: Param<Tensor<3>>,
    pub modes: usize,
}

/// `(cos, sin)` forward matrices `[L, M]` (entry (n, k) = cos/sin 2πkn/L) and inverse matrices
/// `[M, L]` with the irfft weights c_k/L (c_0 = c_{L/2} = 1, else 2).
fn dft_mats(l: usize, m: usize, device: &Device) -> [Tensor<2>; 4] {
    let w = |k: usize, n: usize| 2.0 * std::f64::consts::PI * (k * n % l) as f64 / l as f64;
    let c = |k: usize| if k == 0 || 2 * k == l { 1.0 } else { 2.0 } / l as f64;
    let f = |g: fn(f64) -> f64| -> Vec<f32> {
        (0..l)
            .flat_map(|n| (0..m).map(move |k| g(w(k, n)) as f32))
            .collect()
    };
    let inv = |g: fn(f64) -> f64| -> Vec<f32> {
        (0..m)
            .flat_map(|k| (0..l).map(move |n| (c(k) * g(w(k, n))) as f32))
            .collect()
    };
    [
        tensor_from(f(f64::cos), [l, m], device),
        tensor_from(f(f64::sin), [l, m], device),
        tensor_from(inv(f64::cos), [m, l], device),
        tensor_from(inv(f64::sin), [m, l], device),
    ]
}

impl SpectralConv {
    pub fn new(c_in: usize, c_out: usize, modes: usize, device: &Device) -> Self {
        let s = 1.0 / (c_in * c_out) as f64;
        let w = || {
            Param::from_tensor(Tensor::random(
                [c_in, c_out, modes],
                Distribution::Uniform(0.0, s),
                device,
            ))
        };
        SpectralConv {
            w_re: w(),
            w_im: w(),
            modes,
        }
    }

    /// `[B, C_in, L]` → `[B, C_out, L]`; modes above ⌊L/2⌋ are dropped.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, c, l] = x.dims();
        let [_, o, _] = self.w_re.dims();
        let m = self.modes.min(l / 2 + 1);
        let [fc, fs, gc, gs] = dft_mats(l, m, &x.device());
        let x2 = x.reshape([b * c, l]);
        let xr = x2.clone().matmul(fc).reshape([b, c, 1, m]);
        let xi = x2.matmul(fs).neg().reshape([b, c, 1, m]);
        let wr = self.w_re.val().narrow(2, 0, m).unsqueeze_dim::<4>(0);
        let wi = self.w_im.val().narrow(2, 0, m).unsqueeze_dim::<4>(0);
        let yr = (xr.clone() * wr.clone() - xi.clone() * wi.clone()).sum_dim(1);
        let yi = (xr * wi + xi * wr).sum_dim(1);
        let y = yr.reshape([b * o, m]).matmul(gc) - yi.reshape([b * o, m]).matmul(gs);
        y.reshape([b, o, l])
    }
}

#[derive(Module, Debug)]
pub struct FnoHead {
    pub lift: Linear,
    pub convs: Vec<SpectralConv>,
    pub pointwise: Vec<Linear>,
    pub proj: Linear,
}

impl FnoHead {
    pub fn new(
        width: usize,
        modes: usize,
        layers: usize,
        n_targets: usize,
        device: &Device,
    ) -> Self {
        FnoHead {
            lift: LinearConfig::new(1, width).init(device),
            convs: (0..layers)
                .map(|_| SpectralConv::new(width, width, modes, device))
                .collect(),
            pointwise: (0..layers)
                .map(|_| LinearConfig::new(width, width).init(device))
                .collect(),
            proj: LinearConfig::new(width, n_targets).init(device),
        }
    }

    /// `[B, L]` → `[B, n_targets]`.
    pub fn forward(&self, z: Tensor<2>) -> Tensor<2> {
        let [b, l] = z.dims();
        let mut h = self.lift.forward(z.reshape([b, l, 1])); // [B, L, W]
        for (conv, pw) in self.convs.iter().zip(&self.pointwise) {
            let s = conv.forward(h.clone().swap_dims(1, 2)).swap_dims(1, 2);
            h = gelu(s + pw.forward(h));
        }
        let t = self.proj.forward(h); // [B, L, T]
        let [_, _, k] = t.dims();
        t.mean_dim(1).reshape([b, k])
    }
}
