//! Max-pooling by 2 — pairs along the last axis of `[n, c, l]` (the DIP U-Net's `MaxPool1d`,
//! kernel 2, stride 2) and 2 × 2 blocks of `[n, c, h, w]` (the PtychoPINN encoder's
//! `MaxPool2d`) — as one op each on the CPU, with its backward.
//!
//! burn-flex runs both as a 3-D max-pool (with an index tensor written for the backward): ≈ 6 %
//! of a DIP epoch at 3000 bins and 3 % of a PtychoPINN step, for ops that read each sample once.
//! Here the forward takes each window's winner and the backward sends each gradient to it, found
//! again from the saved input. The winner rule is burn's: windows are scanned in row-major order
//! and a sample replaces the current one when it is greater or NaN (so the first of equal
//! maxima, the last NaN); an odd last row or column is dropped (floor) and gets zero gradient.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::Tensor;
use burn::tensor::ops::MaxPoolOptions;
use rayon::prelude::*;

use super::{flex, host, slice, uses_spx_kernels};

/// The fused max-pool by 2, as a burn backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait SpxPool2Backend: burn::backend::Backend {
    /// `x` `[n, c, l]` → `[n, c, l / 2]`, the larger of each pair `(2t, 2t + 1)`.
    fn spx_max_pool2(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `x` `[n, c, h, w]` → `[n, c, h / 2, w / 2]`, the largest of each 2 × 2 block.
    fn spx_max_pool2x2(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Whether the pair's second sample wins (burn's rule: greater, or NaN).
#[inline]
fn second_wins(a: f32, b: f32) -> bool {
    b > a || b.is_nan()
}

/// Index (0..4, row-major) of the winner of a 2 × 2 block `[a, b, c, d]` by burn's rule.
#[inline]
fn block_winner(v: [f32; 4]) -> usize {
    let mut k = 0;
    for (i, &x) in v.iter().enumerate().skip(1) {
        if second_wins(v[k], x) {
            k = i;
        }
    }
    k
}

/// The 2 × 2 block at output (y, x) of an input plane of width `w`.
#[inline]
fn block(p: &[f32], w: usize, y: usize, x: usize) -> [f32; 4] {
    let (r0, r1) = (&p[2 * y * w..][..w], &p[(2 * y + 1) * w..][..w]);
    [r0[2 * x], r0[2 * x + 1], r1[2 * x], r1[2 * x + 1]]
}

/// Rows (`n · c`) per rayon task: each row is `l` samples, so tasks stay ≥ ~16 k samples.
fn rows_per_task(l: usize) -> usize {
    (16_384 / l.max(1)).max(1)
}

fn forward(x: &FlexTensor) -> FlexTensor {
    let s = x.shape();
    let (rows, l) = (s[0] * s[1], s[2]);
    let lo = l / 2;
    let x = host(x);
    let xv = slice(&x);
    let mut out = vec![0f32; rows * lo];
    if lo > 0 {
        let k = rows_per_task(l);
        out.par_chunks_mut(k * lo)
            .zip(xv.par_chunks(k * l))
            .for_each(|(o, p)| {
                for (orow, prow) in o.chunks_exact_mut(lo).zip(p.chunks_exact(l)) {
                    for (v, pair) in orow.iter_mut().zip(prow.chunks_exact(2)) {
                        *v = if second_wins(pair[0], pair[1]) {
                            pair[1]
                        } else {
                            pair[0]
                        };
                    }
                }
            });
    }
    flex(out, vec![s[0], s[1], lo])
}

/// Gradient w.r.t. the input `x` `[n, c, l]` of the pooled output's gradient `g` `[n, c, l/2]`.
fn backward(x: &FlexTensor, g: &FlexTensor) -> FlexTensor {
    let s = x.shape();
    let (rows, l) = (s[0] * s[1], s[2]);
    let lo = l / 2;
    let (x, g) = (host(x), host(g));
    let (xv, gv) = (slice(&x), slice(&g));
    let mut gx = vec![0f32; rows * l];
    if lo > 0 {
        let k = rows_per_task(l);
        gx.par_chunks_mut(k * l)
            .zip(xv.par_chunks(k * l))
            .zip(gv.par_chunks(k * lo))
            .for_each(|((d, p), gr)| {
                for ((drow, prow), grow) in d
                    .chunks_exact_mut(l)
                    .zip(p.chunks_exact(l))
                    .zip(gr.chunks_exact(lo))
                {
                    for ((dp, pair), &gv) in
                        drow.chunks_exact_mut(2).zip(prow.chunks_exact(2)).zip(grow)
                    {
                        // 0 + g as burn's scatter-add computes it (−0 becomes +0).
                        let (win, lose) = if second_wins(pair[0], pair[1]) {
                            (1, 0)
                        } else {
                            (0, 1)
                        };
                        dp[win] = 0.0 + gv;
                        dp[lose] = 0.0;
                    }
                }
            });
    }
    flex(gx, vec![s[0], s[1], l])
}

fn forward_2x2(x: &FlexTensor) -> FlexTensor {
    let s = x.shape();
    let (planes, h, w) = (s[0] * s[1], s[2], s[3]);
    let (ho, wo) = (h / 2, w / 2);
    let x = host(x);
    let xv = slice(&x);
    let mut out = vec![0f32; planes * ho * wo];
    if ho * wo > 0 {
        out.par_chunks_mut(ho * wo)
            .zip(xv.par_chunks(h * w))
            .for_each(|(o, p)| {
                for (y, orow) in o.chunks_exact_mut(wo).enumerate() {
                    for (xo, v) in orow.iter_mut().enumerate() {
                        let b = block(p, w, y, xo);
                        *v = b[block_winner(b)];
                    }
                }
            });
    }
    flex(out, vec![s[0], s[1], ho, wo])
}

fn backward_2x2(x: &FlexTensor, g: &FlexTensor) -> FlexTensor {
    let s = x.shape();
    let (planes, h, w) = (s[0] * s[1], s[2], s[3]);
    let (ho, wo) = (h / 2, w / 2);
    let (x, g) = (host(x), host(g));
    let (xv, gv) = (slice(&x), slice(&g));
    let mut gx = vec![0f32; planes * h * w];
    if ho * wo > 0 {
        gx.par_chunks_mut(h * w)
            .zip(xv.par_chunks(h * w))
            .zip(gv.par_chunks(ho * wo))
            .for_each(|((d, p), gp)| {
                for (y, grow) in gp.chunks_exact(wo).enumerate() {
                    for (xo, &gval) in grow.iter().enumerate() {
                        let k = block_winner(block(p, w, y, xo));
                        // 0 + g as burn's scatter-add computes it (−0 becomes +0).
                        d[(2 * y + k / 2) * w + 2 * xo + k % 2] = 0.0 + gval;
                    }
                }
            });
    }
    flex(gx, vec![s[0], s[1], h, w])
}

impl SpxPool2Backend for Flex {
    fn spx_max_pool2(x: FlexTensor) -> FlexTensor {
        forward(&x)
    }
    fn spx_max_pool2x2(x: FlexTensor) -> FlexTensor {
        forward_2x2(&x)
    }
}

/// The backward of either pool: `two_d` picks the 2 × 2 one.
#[derive(Debug)]
struct PoolBackward {
    two_d: bool,
}

impl Backward<Flex, 1> for PoolBackward {
    /// The op's input, to find each window's winner again.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let g = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node_x {
            let gx = if self.two_d {
                backward_2x2(&ops.state, &g)
            } else {
                backward(&ops.state, &g)
            };
            grads.register::<Flex>(node.id, gx);
        }
    }
}

/// Record the pool `two_d` of `x` on the tape (the input kept for the backward).
fn tracked<C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<Flex, C>>,
    two_d: bool,
) -> FloatTensor<Autodiff<Flex, C>> {
    let f = if two_d { forward_2x2 } else { forward };
    let op = PoolBackward { two_d };
    match op.prepare::<C>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let out = f(x.primitive());
            prep.finish(x.primitive().clone(), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(f(x.primitive())),
    }
}

impl<C: CheckpointStrategy> SpxPool2Backend for Autodiff<Flex, C> {
    fn spx_max_pool2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        tracked::<C>(x, false)
    }
    fn spx_max_pool2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        tracked::<C>(x, true)
    }
}

/// Max-pool by 2 along the last axis of `x` `[n, c, l]` → `[n, c, l / 2]`: one op on the CPU
/// (f32), burn's `max_pool1d` elsewhere (the same function).
pub fn max_pool2(x: Tensor<3>) -> Tensor<3> {
    if uses_spx_kernels(&x) {
        return Tensor::from_dispatch(Dispatch::spx_max_pool2(x.into_dispatch()));
    }
    max_pool2_stock(x)
}

/// [`max_pool2`] with burn's op (kernel 2, stride 2, no padding, no dilation).
pub fn max_pool2_stock(x: Tensor<3>) -> Tensor<3> {
    burn::tensor::module::max_pool1d(x, MaxPoolOptions::new([2]).with_stride([2]))
}

/// Max-pool by 2 × 2 of `x` `[n, c, h, w]` → `[n, c, h / 2, w / 2]`: one op on the CPU (f32),
/// burn's `max_pool2d` elsewhere (the same function).
pub fn max_pool2x2(x: Tensor<4>) -> Tensor<4> {
    if uses_spx_kernels(&x) {
        return Tensor::from_dispatch(Dispatch::spx_max_pool2x2(x.into_dispatch()));
    }
    max_pool2x2_stock(x)
}

/// [`max_pool2x2`] with burn's op (kernel 2 × 2, stride 2 × 2, no padding, no dilation).
pub fn max_pool2x2_stock(x: Tensor<4>) -> Tensor<4> {
    burn::tensor::module::max_pool2d(x, MaxPoolOptions::new([2, 2]).with_stride([2, 2]))
}
