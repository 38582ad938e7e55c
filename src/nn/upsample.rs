//! Nearest-neighbour ×2 up-sampling of `[n, c, h, w]` as one op on the CPU, with its backward
//! (the PtychoPINN decoder's `UpSampling2D`).
//!
//! With burn's ops it is a reshape to `[n, c, h, 1, w, 1]`, two `repeat_dim`s and a reshape back;
//! its backward sums the repeated axes with two `sum_dim`s over strided views. Here the forward
//! writes each input sample into its 2 × 2 output block and the backward adds the block's four
//! gradients (in the order (0,0), (0,1), (1,0), (1,1)), one pass each way.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::{flex, host, slice, uses_spx_kernels};

/// The fused nearest ×2 up-sampling, as a burn backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait SpxUp2Backend: burn::backend::Backend {
    /// `x` `[n, c, h, w]` → `[n, c, 2h, 2w]`, each sample repeated over its 2 × 2 block.
    fn spx_up2(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

fn forward(x: &FlexTensor) -> FlexTensor {
    let s = x.shape();
    let (planes, h, w) = (s[0] * s[1], s[2], s[3]);
    let x = host(x);
    let xv = slice(&x);
    let mut out = vec![0f32; planes * 4 * h * w];
    if h * w > 0 {
        out.par_chunks_mut(4 * h * w)
            .zip(xv.par_chunks(h * w))
            .for_each(|(o, p)| {
                for (y, row) in p.chunks_exact(w).enumerate() {
                    let (top, bottom) = o[2 * y * 2 * w..(2 * y + 2) * 2 * w].split_at_mut(2 * w);
                    for ((pair, &v), pair2) in top
                        .chunks_exact_mut(2)
                        .zip(row)
                        .zip(bottom.chunks_exact_mut(2))
                    {
                        pair[0] = v;
                        pair[1] = v;
                        pair2[0] = v;
                        pair2[1] = v;
                    }
                }
            });
    }
    flex(out, vec![s[0], s[1], 2 * h, 2 * w])
}

fn backward(g: &FlexTensor) -> FlexTensor {
    let s = g.shape();
    let (planes, h2, w2) = (s[0] * s[1], s[2], s[3]);
    let (h, w) = (h2 / 2, w2 / 2);
    let g = host(g);
    let gv = slice(&g);
    let mut gx = vec![0f32; planes * h * w];
    if h * w > 0 {
        gx.par_chunks_mut(h * w)
            .zip(gv.par_chunks(h2 * w2))
            .for_each(|(d, p)| {
                for (y, drow) in d.chunks_exact_mut(w).enumerate() {
                    let top = &p[2 * y * w2..][..w2];
                    let bottom = &p[(2 * y + 1) * w2..][..w2];
                    for (x, v) in drow.iter_mut().enumerate() {
                        *v = top[2 * x] + top[2 * x + 1] + bottom[2 * x] + bottom[2 * x + 1];
                    }
                }
            });
    }
    flex(gx, vec![s[0], s[1], h, w])
}

impl SpxUp2Backend for Flex {
    fn spx_up2(x: FlexTensor) -> FlexTensor {
        forward(&x)
    }
}

#[derive(Debug)]
struct Up2Backward;

impl Backward<Flex, 1> for Up2Backward {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let g = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, backward(&g));
        }
    }
}

impl<C: CheckpointStrategy> SpxUp2Backend for Autodiff<Flex, C> {
    fn spx_up2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match Up2Backward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((), forward(x.primitive())),
            OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive())),
        }
    }
}

/// Nearest-neighbour ×2 up-sampling of `x` `[n, c, h, w]` → `[n, c, 2h, 2w]`: one op on the CPU
/// (f32), burn's `repeat_dim`s elsewhere (the same function).
pub fn up2(x: Tensor<4>) -> Tensor<4> {
    if uses_spx_kernels(&x) {
        return Tensor::from_dispatch(Dispatch::spx_up2(x.into_dispatch()));
    }
    up2_stock(x)
}

/// [`up2`] with burn's ops: reshape, two `repeat_dim`s, reshape.
pub fn up2_stock(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .repeat_dim(3, 2)
        .repeat_dim(5, 2)
        .reshape([b, c, 2 * h, 2 * w])
}
