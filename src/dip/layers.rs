//! The U-Net's up-sampling step as one op on the CPU: linear ×2 interpolation (aligned corners)
//! of the coarse activations followed by the channel concatenation with the skip connection.
//!
//! burn runs this as its 2-D bilinear kernel on `[B, C, 1, L]` plus a `cat`, with a backward of
//! four scattered adds per output sample and two copies; here each output row is two taps and the
//! skip is copied once. The arithmetic is burn's, expression for expression, except for its
//! terms for the unit-height axis, which multiply by exactly 1 or add ±0 and are left out; so
//! the finite values, and the gradients summed in the same order, are bit for bit those of
//! `cat([Interpolate1d(x), skip], 1)` (up to the sign of an exactly-zero result).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::interpolate::Interpolate1d;
use burn::tensor::Tensor;

use rayon::prelude::*;

use crate::nn::{flex, host, slice, uses_spx_kernels};

/// The fused up-sampling + concatenation, as a burn backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait DipUpCatBackend: burn::backend::Backend {
    /// `x` `[B, C, L]` interpolated linearly (aligned corners) to the length `Lo` of `skip`
    /// `[B, Cs, Lo]`, then `[up(x), skip]` along channels: `[B, C + Cs, Lo]`.
    fn dip_up_cat(x: FloatTensor<Self>, skip: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Source taps of output sample `o` (burn's `coord_ratio`/`map_coord` with aligned corners):
/// low index, high index, weight of the high one.
fn taps(l_in: usize, l_out: usize) -> Vec<(usize, usize, f32)> {
    let ratio = (l_in as f64 - 1.0) / (l_out.max(1) - 1).max(1) as f64;
    (0..l_out)
        .map(|o| {
            let c = o as f64 * ratio;
            let lo = (c.floor().max(0.0)) as usize;
            let hi = (lo + 1).min(l_in - 1);
            (lo, hi, (c - lo as f64).max(0.0) as f32)
        })
        .collect()
}

/// The interpolation's transpose as a gather: for input sample `i`, its terms
/// `terms[start[i]..start[i + 1]]` = (output sample, weight) in the order a scatter over output
/// samples adds them (output order; tap 0's weight `1 − w` before tap 1's `w`).
fn gather_taps(t: &[(usize, usize, f32)], l_in: usize) -> (Vec<usize>, Vec<(usize, f32)>) {
    let mut all: Vec<(usize, usize, f32)> = Vec::with_capacity(2 * t.len());
    for (o, &(i0, i1, w)) in t.iter().enumerate() {
        all.push((i0, o, 1.0 - w));
        all.push((i1, o, w));
    }
    // stable: equal inputs keep output order, and tap 0 before tap 1
    all.sort_by_key(|e| e.0);
    let mut start = vec![0usize; l_in + 1];
    for e in &all {
        start[e.0 + 1] += 1;
    }
    for i in 0..l_in {
        start[i + 1] += start[i];
    }
    (start, all.into_iter().map(|(_, o, w)| (o, w)).collect())
}

/// burn's bilinear sample on a unit-height plane, `a·(1−w)·(1−yw) + b·w·(1−yw) + a·(1−w)·yw +
/// b·w·yw` with the height weight `yw = 0`: the factors `1 − yw` are exactly 1 and the last two
/// terms are ±0, which leave a finite sum unchanged (up to the sign of a zero result), so this
/// is burn's value with two multiply-adds fewer.
#[inline]
fn sample(a: f32, b: f32, w: f32) -> f32 {
    a * (1.0 - w) + b * w
}

fn forward(x: &FlexTensor, skip: &FlexTensor) -> FlexTensor {
    let (xs, ss) = (x.shape(), skip.shape());
    let (nb, c, l) = (xs[0], xs[1], xs[2]);
    let (cs, lo) = (ss[1], ss[2]);
    assert_eq!(ss[0], nb, "dip_up_cat: batch sizes differ");
    let (x, skip) = (host(x), host(skip));
    let (xv, sv) = (slice(&x), slice(&skip));
    let t = taps(l, lo);
    let mut out = vec![0f32; nb * (c + cs) * lo];
    for (b, ob) in out.chunks_mut((c + cs) * lo).enumerate() {
        let (up, rest) = ob.split_at_mut(c * lo);
        for (ch, row) in up.chunks_mut(lo).enumerate() {
            let src = &xv[(b * c + ch) * l..][..l];
            for (o, &(i0, i1, w)) in row.iter_mut().zip(&t) {
                *o = sample(src[i0], src[i1], w);
            }
        }
        rest.copy_from_slice(&sv[b * cs * lo..(b + 1) * cs * lo]);
    }
    flex(out, vec![nb, c + cs, lo])
}

impl DipUpCatBackend for Flex {
    fn dip_up_cat(x: FlexTensor, skip: FlexTensor) -> FlexTensor {
        forward(&x, &skip)
    }
}

#[derive(Debug)]
struct UpCatBackward;

impl Backward<Flex, 2> for UpCatBackward {
    /// (B, C, L) of `x` and (Cs, Lo) of `skip`.
    type State = ([usize; 3], [usize; 2]);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_skip] = ops.parents;
        let g = host(&grads.consume::<Flex>(&ops.node));
        let gv = slice(&g);
        let ([nb, c, l], [cs, lo]) = ops.state;
        let per = (c + cs) * lo;
        if let Some(node) = node_x {
            // burn's interpolate backward: per plane, the four taps of each output sample in
            // output order.
            // (its height-axis terms, `g·(1−w)·0` and `g·w·0`, are ±0 and leave finite sums
            // unchanged, as in [`sample`]: dropped)
            // Computed as a gather (each input sample sums its terms, in the order burn's
            // scatter adds them onto zero: output order, tap 0 before tap 1), so the same bits,
            // without the scatter's store-to-load chain; planes in parallel.
            let (start, terms) = gather_taps(&taps(l, lo), l);
            let mut gx = vec![0f32; nb * c * l];
            gx.par_chunks_mut(l.max(1))
                .enumerate()
                .for_each(|(p, plane)| {
                    let (b, ch) = (p / c, p % c);
                    let src = &gv[b * per + ch * lo..][..lo];
                    for (i, d) in plane.iter_mut().enumerate() {
                        let mut acc = 0f32;
                        for &(o, w) in &terms[start[i]..start[i + 1]] {
                            acc += src[o] * w;
                        }
                        *d = acc;
                    }
                });
            grads.register::<Flex>(node.id, flex(gx, vec![nb, c, l]));
        }
        if let Some(node) = node_skip {
            let gs: Vec<f32> = (0..nb)
                .flat_map(|b| gv[b * per + c * lo..(b + 1) * per].iter().copied())
                .collect();
            grads.register::<Flex>(node.id, flex(gs, vec![nb, cs, lo]));
        }
    }
}

impl<C: CheckpointStrategy> DipUpCatBackend for Autodiff<Flex, C> {
    fn dip_up_cat(x: FloatTensor<Self>, skip: FloatTensor<Self>) -> FloatTensor<Self> {
        let (xs, ss) = (x.primitive().shape(), skip.primitive().shape());
        let state = ([xs[0], xs[1], xs[2]], [ss[1], ss[2]]);
        match UpCatBackward
            .prepare::<C>([x.node(), skip.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, forward(x.primitive(), skip.primitive())),
            OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive(), skip.primitive())),
        }
    }
}

/// `cat([up(x), skip], 1)`: one op on the CPU (f32), burn's layers elsewhere. `up` must be a
/// linear, aligned-corners interpolation to the skip's length (the U-Net's).
pub fn up_cat(up: &Interpolate1d, x: Tensor<3>, skip: Tensor<3>) -> Tensor<3> {
    if uses_spx_kernels(&x) && uses_spx_kernels(&skip) {
        Tensor::from_dispatch(Dispatch::dip_up_cat(
            x.into_dispatch(),
            skip.into_dispatch(),
        ))
    } else {
        Tensor::cat(vec![up.forward(x), skip], 1)
    }
}
