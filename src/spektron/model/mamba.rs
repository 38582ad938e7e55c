//! Mamba block (selective state-space model). The recurrence h_t = a_t·h_{t−1} + b_t is
//! evaluated with a log-depth (Hillis–Steele) scan: a per-step loop slices the `[B, L, di, ds]`
//! tensors L times, and each slice's backward pass allocates a full-size gradient, which made
//! the backward pass O(L²) in memory traffic (8× the forward time at the default size).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig1d};
use burn::tensor::activation::{silu, softplus};
use burn::tensor::{Device, Tensor};
use rand::Rng;

use crate::backend::tensor_from;

#[derive(Module, Debug)]
pub struct MambaBlock {
    pub norm: LayerNorm,
    pub in_proj: Linear,
    pub conv: Conv1d,
    pub x_proj: Linear,
    pub dt_proj: Linear,
    /// log(−A), `[d_inner, d_state]` (S4D-real initialisation A = −(1..=d_state)).
    pub a_log: Param<Tensor<2>>,
    pub d_skip: Param<Tensor<1>>,
    pub out_proj: Linear,
    pub d_inner: usize,
    pub d_state: usize,
    pub dt_rank: usize,
}

pub struct MambaDims {
    pub d_model: usize,
    pub d_state: usize,
    pub d_conv: usize,
    pub expand: usize,
    pub dt_min: f64,
    pub dt_max: f64,
}

impl MambaBlock {
    pub fn new(c: &MambaDims, rng: &mut impl Rng, device: &Device) -> Self {
        let di = c.expand * c.d_model;
        let dt_rank = c.d_model.div_ceil(16);
        let mut dt_proj = LinearConfig::new(dt_rank, di).init(device);
        // Δ = softplus(bias) starts log-uniform in [dt_min, dt_max] (inverse softplus).
        let bias: Vec<f32> = (0..di)
            .map(|_| {
                let u: f64 = rng.random();
                let dt = (u * (c.dt_max.ln() - c.dt_min.ln()) + c.dt_min.ln()).exp();
                (dt + (-(-dt).exp_m1()).ln()) as f32
            })
            .collect();
        dt_proj.bias = Some(Param::from_tensor(tensor_from(bias, [di], device)));
        let a: Vec<f32> = (0..di)
            .flat_map(|_| (1..=c.d_state).map(|s| (s as f32).ln()))
            .collect();
        MambaBlock {
            norm: LayerNormConfig::new(c.d_model).init(device),
            in_proj: LinearConfig::new(c.d_model, 2 * di)
                .with_bias(false)
                .init(device),
            conv: Conv1dConfig::new(di, di, c.d_conv)
                .with_groups(di)
                .with_padding(PaddingConfig1d::Explicit(c.d_conv - 1, c.d_conv - 1))
                .init(device),
            x_proj: LinearConfig::new(di, dt_rank + 2 * c.d_state)
                .with_bias(false)
                .init(device),
            dt_proj,
            a_log: Param::from_tensor(tensor_from(a, [di, c.d_state], device)),
            d_skip: Param::from_tensor(Tensor::ones([di], device)),
            out_proj: LinearConfig::new(di, c.d_model)
                .with_bias(false)
                .init(device),
            d_inner: di,
            d_state: c.d_state,
            dt_rank,
        }
    }

    /// `[B, L, d_model]` → `[B, L, d_model]` (pre-norm residual).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, l, _] = x.dims();
        let (di, ds, r) = (self.d_inner, self.d_state, self.dt_rank);
        let h = self.in_proj.forward(self.norm.forward(x.clone()));
        let xs = h.clone().narrow(2, 0, di);
        let z = h.narrow(2, di, di);
        // Causal depthwise conv: pad both sides, keep the first L outputs.
        let xs = self
            .conv
            .forward(xs.swap_dims(1, 2))
            .narrow(2, 0, l)
            .swap_dims(1, 2);
        let xs = silu(xs);
        let p = self.x_proj.forward(xs.clone());
        let dt = softplus(self.dt_proj.forward(p.clone().narrow(2, 0, r)), 1.0); // [B,L,di]
        let bm = p.clone().narrow(2, r, ds); // [B,L,ds]
        let cm = p.narrow(2, r + ds, ds);
        let a = self.a_log.val().exp().neg().reshape([1, 1, di, ds]);
        let da = (dt.clone().reshape([b, l, di, 1]) * a).exp(); // [B,L,di,ds]
        let dbx = (dt * xs.clone()).reshape([b, l, di, 1]) * bm.reshape([b, l, 1, ds]);
        let hs = scan(da, dbx); // [B,L,di,ds]
        let y = (hs * cm.reshape([b, l, 1, ds]))
            .sum_dim(3)
            .reshape([b, l, di]);
        let y = y + xs * self.d_skip.val().reshape([1, 1, di]);
        let y = y * silu(z);
        x + self.out_proj.forward(y)
    }
}

/// Sequential reference scan over dim 1: `h_t = a_t·h_{t−1} + b_t`, `h_{−1} = 0`.
pub fn scan_sequential(a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
    let [n, l, di, ds] = a.dims();
    let mut state = Tensor::<4>::zeros([n, 1, di, ds], &a.device());
    let mut states = Vec::with_capacity(l);
    for t in 0..l {
        state = a.clone().narrow(1, t, 1) * state + b.clone().narrow(1, t, 1);
        states.push(state.clone());
    }
    Tensor::cat(states, 1)
}

/// The same recurrence as [`scan_sequential`] by the associative combine
/// (a₁, b₁)∘(a₂, b₂) = (a₁a₂, a₂b₁ + b₂) at offsets 1, 2, 4, … (⌈log₂ L⌉ levels).
pub fn scan(a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
    let [n, l, di, ds] = a.dims();
    let dev = a.device();
    let (mut a, mut b) = (a, b);
    let mut d = 1;
    while d < l {
        let b_prev = Tensor::cat(
            vec![
                Tensor::<4>::zeros([n, d, di, ds], &dev),
                b.clone().narrow(1, 0, l - d),
            ],
            1,
        );
        let last = 2 * d >= l;
        let a_prev = (!last).then(|| {
            Tensor::cat(
                vec![
                    Tensor::<4>::ones([n, d, di, ds], &dev),
                    a.clone().narrow(1, 0, l - d),
                ],
                1,
            )
        });
        b = a.clone() * b_prev + b;
        if let Some(ap) = a_prev {
            a = a * ap;
        }
        d *= 2;
    }
    b
}
