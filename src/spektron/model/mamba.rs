//! Mamba block (selective state-space model) with a sequential scan over the ~67 tokens.
//! Each slice's backward pass allocates a gradient the size of the sliced tensor, so the loop
//! slices only the `[B, L, di]` / `[B, L, ds]` inputs and builds decays and states per step
//! ([`selective_scan`]); slicing precomputed `[B, L, di, ds]` tensors made the backward pass
//! 8× the forward time at the default size.

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
        let [_, l, _] = x.dims();
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
        let a = self.a_log.val().exp().neg(); // [di, ds]
        let y = selective_scan(dt.clone(), dt * xs.clone(), a, bm, cm); // [B,L,di]
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

/// The selective scan `h_t = exp(Δ_t·A)⊙h_{t−1} + (Δ_t x_t) ⊗ B_t`, `y_t = h_t·C_t`, stepping
/// through time on per-step slices of the `[B, L, di]` / `[B, L, ds]` inputs: the `[B, L, di, ds]`
/// tensors of decays, inputs and states are never materialised, and the slices whose backward
/// pass allocates a full-size gradient are ds times smaller than the state tensors.
/// dt, dtx: `[B, L, di]`; a: `[di, ds]`; bm, cm: `[B, L, ds]` → y `[B, L, di]`.
pub fn selective_scan(
    dt: Tensor<3>,
    dtx: Tensor<3>,
    a: Tensor<2>,
    bm: Tensor<3>,
    cm: Tensor<3>,
) -> Tensor<3> {
    let [b, l, di] = dt.dims();
    let ds = a.dims()[1];
    let a = a.reshape([1, di, ds]);
    let mut h = Tensor::<3>::zeros([b, di, ds], &dt.device());
    let mut ys = Vec::with_capacity(l);
    // Two-level slicing (chunks of CHUNK steps, then steps within the chunk): a step slice's
    // backward allocates a chunk-sized gradient instead of a whole-sequence one.
    const CHUNK: usize = 8;
    for c0 in (0..l).step_by(CHUNK) {
        let n = CHUNK.min(l - c0);
        let (dt_c, dtx_c) = (dt.clone().narrow(1, c0, n), dtx.clone().narrow(1, c0, n));
        let (bm_c, cm_c) = (bm.clone().narrow(1, c0, n), cm.clone().narrow(1, c0, n));
        for t in 0..n {
            let da = (dt_c.clone().narrow(1, t, 1).reshape([b, di, 1]) * a.clone()).exp();
            let bx = dtx_c.clone().narrow(1, t, 1).reshape([b, di, 1])
                * bm_c.clone().narrow(1, t, 1).reshape([b, 1, ds]);
            h = da * h + bx;
            let y = (h.clone() * cm_c.clone().narrow(1, t, 1).reshape([b, 1, ds])).sum_dim(2);
            ys.push(y.reshape([b, 1, di]));
        }
    }
    Tensor::cat(ys, 1)
}
