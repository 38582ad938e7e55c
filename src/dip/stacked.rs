//! Stacked per-source convolutions for the batched DIP (`batch.rs`): row r of the input
//! convolved with its own weights, B rows in one op; each row's arithmetic is a lone fit's
//! (one sample, spx's conv kernel, one thread).

use std::cell::RefCell;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use crate::nn::kernels::{self, ConvGeom, Need, PadMode};
use crate::nn::{self as spxnn, ConvImpl, flex, host, slice};

/// B per-source convs as one op, for burn's CPU backend.
#[backend_extension(Flex, Autodiff)]
pub trait DipConvBackend: burn::backend::Backend {
    /// `x` `[B, cin, L]`, `weight` `[Bw, cout, cin, k]` and `bias` `[Bw, cout]` with `Bw = B`
    /// (one network per row) or 1 (shared); `pad` samples of reflect padding on each side;
    /// `act`: a leaky ReLU of that slope applied to the output (see [`leaky`]).
    fn dip_batch_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad: usize,
        act: Option<f32>,
    ) -> FloatTensor<Self>;
}

/// Sizes of one row's conv: a single sample, so that its arithmetic is that of a lone fit.
struct Sizes {
    nb: usize,
    nw: usize,
    cin: usize,
    l: usize,
    cout: usize,
    k: usize,
    g: ConvGeom,
}

fn sizes(x: &FlexTensor, w: &FlexTensor, pad: usize) -> Sizes {
    let (xs, ws) = (x.shape(), w.shape());
    let (nb, cin, l) = (xs[0], xs[1], xs[2]);
    let (nw, cout, k) = (ws[0], ws[1], ws[3]);
    Sizes {
        nb,
        nw,
        cin,
        l,
        cout,
        k,
        g: ConvGeom {
            batch: 1,
            cin,
            h: 1,
            w: l,
            cout,
            kh: 1,
            kw: k,
            pad: [0, 0, pad, pad],
            mode: PadMode::Reflect,
        },
    }
}

thread_local! {
    /// A one-thread pool per calling thread: a row's kernels run alone, so their sums are
    /// grouped the same way whatever the batch and the machine's core count.
    static SOLO: RefCell<Option<rayon::ThreadPool>> = const { RefCell::new(None) };
}

/// Run `f` with rayon limited to one thread (the calling row's kernels). The pool is taken out
/// while `f` runs: a rayon worker waiting on it may run another row's job, which then builds
/// a pool of its own.
fn solo<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if rayon::current_num_threads() <= 1 {
        return f();
    }
    let pool = SOLO
        .with(|p| p.borrow_mut().take())
        .or_else(|| rayon::ThreadPoolBuilder::new().num_threads(1).build().ok());
    match pool {
        Some(pool) => {
            let out = pool.install(f);
            SOLO.with(|p| *p.borrow_mut() = Some(pool));
            out
        }
        None => f(),
    }
}

/// One row's conv (+ activation) on the calling thread's one-thread pool.
fn row_forward(x: &[f32], w: &[f32], b: &[f32], g: &ConvGeom, act: Option<f32>) -> Vec<f32> {
    solo(|| {
        // The activation is applied to each output tile while it is in cache (`activate`
        // scales `v ≤ 0`, burn `v < 0`: the same values, ±0 keeping its sign).
        kernels::conv_forward_act(x, w, Some(b), g, act)
    })
}

fn flex_forward(
    x: &FlexTensor,
    w: &FlexTensor,
    b: &FlexTensor,
    pad: usize,
    act: Option<f32>,
) -> FlexTensor {
    let s = sizes(x, w, pad);
    let (x, w, b) = (host(x), host(w), host(b));
    let (xv, wv, bv) = (slice(&x), slice(&w), slice(&b));
    let (xl, wl, lo) = (s.cin * s.l, s.cout * s.cin * s.k, s.g.wo());
    let row = |r: usize| {
        let rw = if s.nw == 1 { 0 } else { r };
        row_forward(
            &xv[r * xl..(r + 1) * xl],
            &wv[rw * wl..(rw + 1) * wl],
            &bv[rw * s.cout..(rw + 1) * s.cout],
            &s.g,
            act,
        )
    };
    // A batch of one is its row's output, without a copy or a hand-off to the pool.
    let out = if s.nb == 1 {
        row(0)
    } else {
        let mut out = vec![0f32; s.nb * s.cout * lo];
        out.par_chunks_mut(s.cout * lo)
            .enumerate()
            .for_each(|(r, o)| o.copy_from_slice(&row(r)));
        out
    };
    flex(out, vec![s.nb, s.cout, lo])
}

impl DipConvBackend for Flex {
    fn dip_batch_conv(
        x: FlexTensor,
        w: FlexTensor,
        b: FlexTensor,
        pad: usize,
        act: Option<f32>,
    ) -> FlexTensor {
        flex_forward(&x, &w, &b, pad, act)
    }
}

#[derive(Debug)]
struct BatchConvBackward;

impl Backward<Flex, 3> for BatchConvBackward {
    /// Input and weight nodes, padding, and (slope, activated output) when fused.
    type State = (NodeId, NodeId, usize, Option<(f32, FlexTensor)>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let gout = host(&grads.consume::<Flex>(&ops.node));
        let (x_id, w_id, pad, act) = ops.state;
        let act = act.map(|(slope, y)| (slope, host(&y)));
        let x: FlexTensor = host(&ckpt.retrieve_node_output(x_id));
        let w: FlexTensor = host(&ckpt.retrieve_node_output(w_id));
        let s = sizes(&x, &w, pad);
        let need = Need {
            x: node_x.is_some(),
            weight: node_w.is_some(),
            bias: node_b.is_some(),
        };
        let (xv, wv, gv) = (slice(&x), slice(&w), slice(&gout));
        let yv = act.as_ref().map(|(slope, y)| (*slope, slice(y)));
        let (xl, wl, ol) = (s.cin * s.l, s.cout * s.cin * s.k, s.cout * s.g.wo());
        let row = |r: usize| {
            let rw = if s.nw == 1 { 0 } else { r };
            solo(|| {
                kernels::conv_backward_leaky(
                    &xv[r * xl..(r + 1) * xl],
                    &wv[rw * wl..(rw + 1) * wl],
                    &gv[r * ol..(r + 1) * ol],
                    yv.map(|(slope, y)| (slope, &y[r * ol..(r + 1) * ol])),
                    &s.g,
                    need,
                )
            })
        };
        // A batch of one runs on the calling thread.
        let mut rows: Vec<kernels::ConvGrads> = if s.nb == 1 {
            vec![row(0)]
        } else {
            (0..s.nb).into_par_iter().map(row).collect()
        };
        // Row-stacked gradients; a batch of one moves its row's vectors.
        let join = |parts: Vec<Option<Vec<f32>>>| -> Vec<f32> {
            if parts.len() == 1 {
                parts.into_iter().next().flatten().unwrap_or_default()
            } else {
                parts
                    .into_iter()
                    .flat_map(Option::unwrap_or_default)
                    .collect()
            }
        };
        if let Some(node) = node_x {
            let v = join(rows.iter_mut().map(|r| r.x.take()).collect());
            grads.register::<Flex>(node.id, flex(v, vec![s.nb, s.cin, s.l]));
        }
        // Shared weights (Bw = 1) sum their rows' gradients in row order.
        let mut stack = |part: &dyn Fn(&mut kernels::ConvGrads) -> Option<Vec<f32>>, len: usize| {
            if s.nw == 1 && s.nb > 1 {
                let mut acc = vec![0f32; len];
                for r in rows.iter_mut() {
                    if let Some(v) = part(r) {
                        acc.iter_mut().zip(&v).for_each(|(a, b)| *a += b);
                    }
                }
                acc
            } else {
                join(rows.iter_mut().map(part).collect())
            }
        };
        if let Some(node) = node_w {
            let v = stack(&|r| r.weight.take(), wl);
            grads.register::<Flex>(node.id, flex(v, vec![s.nw, s.cout, s.cin, s.k]));
        }
        if let Some(node) = node_b {
            let v = stack(&|r| r.bias.take(), s.cout);
            grads.register::<Flex>(node.id, flex(v, vec![s.nw, s.cout]));
        }
    }
}

impl<C: CheckpointStrategy> DipConvBackend for Autodiff<Flex, C> {
    fn dip_batch_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad: usize,
        act: Option<f32>,
    ) -> FloatTensor<Self> {
        match BatchConvBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let w_id = prep.checkpoint(&weight);
                let out = flex_forward(
                    x.primitive(),
                    weight.primitive(),
                    bias.primitive(),
                    pad,
                    act,
                );
                let keep = act.map(|slope| (slope, out.clone()));
                prep.finish((x_id, w_id, pad, keep), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(flex_forward(
                x.primitive(),
                weight.primitive(),
                bias.primitive(),
                pad,
                act,
            )),
        }
    }
}

/// Row r of `x` `[B, cin, L]` convolved with weights `w[r]` `[cout, cin, k]` and bias `b[r]`
/// (or `w[0]`, `b[0]` for every row when their first dimension is 1), after `pad` samples of
/// reflect padding on each side: `[B, cout, L + 2·pad − k + 1]`.
pub fn conv(x: Tensor<3>, w: Tensor<4>, b: Tensor<2>, pad: usize) -> Tensor<3> {
    conv_act(x, w, b, pad, None)
}

/// [`conv`] followed by burn's leaky ReLU of slope `act` when given, fused into the op on the
/// CPU (the same numbers as `leaky_relu(conv(..))`, see [`kernels::conv_backward_leaky`] for the one exception).
pub fn conv_act(
    x: Tensor<3>,
    w: Tensor<4>,
    b: Tensor<2>,
    pad: usize,
    act: Option<f64>,
) -> Tensor<3> {
    if spxnn::uses_spx_kernels(&x) {
        return Tensor::from_dispatch(Dispatch::dip_batch_conv(
            x.into_dispatch(),
            w.into_dispatch(),
            b.into_dispatch(),
            pad,
            act.map(|a| a as f32),
        ));
    }
    // Other devices: burn's conv per row (the same function), then burn's activation.
    let [nb, _, _] = x.dims();
    let [nw, cout, cin, k] = w.dims();
    let rows = (0..nb)
        .map(|r| {
            let rw = if nw == 1 { 0 } else { r };
            spxnn::conv1d_with(
                x.clone().narrow(0, r, 1),
                w.clone().narrow(0, rw, 1).reshape([cout, cin, k]),
                Some(b.clone().narrow(0, rw, 1).reshape([cout])),
                [pad, pad],
                PadMode::Reflect,
                ConvImpl::Stock,
            )
        })
        .collect();
    let y = Tensor::cat(rows, 0);
    match act {
        Some(slope) => burn::tensor::activation::leaky_relu(y, slope),
        None => y,
    }
}
