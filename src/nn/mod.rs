//! spx-owned convolutions for burn's CPU (`flex`) backend, with a hand-written backward.
//!
//! burn-flex 0.22 has no conv backward of its own: burn's generic default computes the weight
//! gradient as a forward conv whose kernel is the whole output-gradient image and the input
//! gradient through `conv_transpose`. This module registers one backend-extension op
//! (`spx_conv`, see [`kernels`]) for `Flex` and `Autodiff<Flex>`: forward as im2col (zero or
//! reflect padding fused into the gather) + GEMM over cache-sized tiles of output pixels; weight
//! gradient as the same tiles' GEMMs summed; input gradient as the transposed conv.
//!
//! [`conv1d`] / [`conv2d`] take burn's own `Conv1d` / `Conv2d` modules, so parameters, their
//! initialisation and their record names are burn's; only how the conv is computed changes.
//! On other devices (wgpu, cuda), other dtypes, or strided/dilated/grouped convs, they compute
//! the same function with burn's stock conv ([`ConvImpl::Stock`] forces that path).

pub mod adam;
pub mod direct;
pub mod kernels;
pub mod pool;
pub mod shifted;
pub mod upsample;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, DispatchDevice, Flex, TensorMetadata, backend_extension};
use burn::nn::conv::{Conv1d, Conv2d};
use burn::nn::{PaddingConfig1d, PaddingConfig2d};
use burn::tensor::module as tm;
use burn::tensor::ops::{ConvOptions, PadMode as BurnPad};
use burn::tensor::{DType, Tensor, TensorData};

pub use kernels::{ConvGeom, PadMode};

/// Which implementation computes a conv.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvImpl {
    /// spx's kernels where they apply (flex device, f32, stride 1, no dilation, no groups),
    /// burn's stock conv elsewhere.
    #[default]
    Spx,
    /// Always burn's stock conv (explicit `pad` for reflect padding + `conv1d`/`conv2d`).
    Stock,
}

/// The conv primitive, as a burn backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait SpxConvBackend: burn::backend::Backend {
    /// `x` `[n, cin, h, w]`, `weight` `[cout, cin, kh, kw]`, `bias` `[cout]`; stride 1;
    /// `pad` = (top, bottom, left, right); reflect padding when `reflect`, zeros otherwise.
    fn spx_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad: [usize; 4],
        reflect: bool,
        act: Option<f32>,
    ) -> FloatTensor<Self>;
}

fn geom(x: &FlexTensor, w: &FlexTensor, pad: [usize; 4], reflect: bool) -> ConvGeom {
    let (xs, ws) = (x.shape(), w.shape());
    ConvGeom {
        batch: xs[0],
        cin: xs[1],
        h: xs[2],
        w: xs[3],
        cout: ws[0],
        kh: ws[2],
        kw: ws[3],
        pad,
        mode: if reflect {
            PadMode::Reflect
        } else {
            PadMode::Zero
        },
    }
}

/// The f32 contents of a flex tensor in row-major order (copied only when strided).
pub(crate) fn host(t: &FlexTensor) -> FlexTensor {
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// The f32 data of a contiguous flex tensor ([`host`]'s result).
pub(crate) fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("spx's conv ops are only routed f32 tensors (see `uses_spx_kernels`)")
}

/// A flex tensor holding `v` with `shape`.
pub(crate) fn flex(v: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

fn flex_forward(
    x: &FlexTensor,
    w: &FlexTensor,
    b: &FlexTensor,
    pad: [usize; 4],
    reflect: bool,
    act: Option<f32>,
) -> FlexTensor {
    let g = geom(x, w, pad, reflect);
    let (x, w, b) = (host(x), host(w), host(b));
    let out = kernels::conv_forward_act(slice(&x), slice(&w), Some(slice(&b)), &g, act);
    flex(out, vec![g.batch, g.cout, g.ho(), g.wo()])
}

impl SpxConvBackend for Flex {
    fn spx_conv(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        pad: [usize; 4],
        reflect: bool,
        act: Option<f32>,
    ) -> FlexTensor {
        flex_forward(&x, &weight, &bias, pad, reflect, act)
    }
}

#[derive(Debug)]
struct SpxConvBackward;

impl Backward<Flex, 3> for SpxConvBackward {
    /// Input and weight nodes, padding, reflect, and (slope, activated output) when fused.
    type State = (NodeId, NodeId, [usize; 4], bool, Option<(f32, FlexTensor)>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let mut gout = host(&grads.consume::<Flex>(&ops.node));
        let (x_id, w_id, pad, reflect, act) = ops.state;
        if let Some((slope, y)) = act {
            let shape = gout.shape().to_vec();
            let pre = kernels::deactivate(slice(&gout), slice(&host(&y)), slope);
            gout = flex(pre, shape);
        }
        let x: FlexTensor = host(&ckpt.retrieve_node_output(x_id));
        let w: FlexTensor = host(&ckpt.retrieve_node_output(w_id));
        let g = geom(&x, &w, pad, reflect);
        let need = kernels::Need {
            x: node_x.is_some(),
            weight: node_w.is_some(),
            bias: node_b.is_some(),
        };
        let r = kernels::conv_backward(slice(&x), slice(&w), slice(&gout), &g, need);
        if let (Some(node), Some(v)) = (node_x, r.x) {
            grads.register::<Flex>(node.id, flex(v, vec![g.batch, g.cin, g.h, g.w]));
        }
        if let (Some(node), Some(v)) = (node_w, r.weight) {
            grads.register::<Flex>(node.id, flex(v, vec![g.cout, g.cin, g.kh, g.kw]));
        }
        if let (Some(node), Some(v)) = (node_b, r.bias) {
            grads.register::<Flex>(node.id, flex(v, vec![g.cout]));
        }
    }
}

impl<C: CheckpointStrategy> SpxConvBackend for Autodiff<Flex, C> {
    fn spx_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad: [usize; 4],
        reflect: bool,
        act: Option<f32>,
    ) -> FloatTensor<Self> {
        match SpxConvBackward
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
                    reflect,
                    act,
                );
                let keep = act.map(|slope| (slope, out.clone()));
                prep.finish((x_id, w_id, pad, reflect, keep), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(flex_forward(
                x.primitive(),
                weight.primitive(),
                bias.primitive(),
                pad,
                reflect,
                act,
            )),
        }
    }
}

/// Whether `x` lives where spx's kernels run: the flex device (with or without autodiff), f32.
pub fn uses_spx_kernels<const D: usize>(x: &Tensor<D>) -> bool {
    let on_flex = match x.device().as_dispatch() {
        DispatchDevice::Flex(_) => true,
        DispatchDevice::Autodiff(a) => matches!(a.clone().inner(), DispatchDevice::Flex(_)),
        #[allow(unreachable_patterns)]
        _ => false,
    };
    on_flex && x.dtype() == DType::F32
}

/// The activation fused into a conv: `None`, or a leaky ReLU `max(v, slope·v)` (`slope` in
/// [0, 1); 0 is the ReLU). Fused, the activation runs on each output tile while it is in cache
/// and its backward is folded into the conv's, instead of two more passes over the tensor.
pub type Act = Option<f32>;

/// `act` applied with burn's own ops (the stock path).
fn activate<const D: usize>(y: Tensor<D>, act: Act) -> Tensor<D> {
    match act {
        None => y,
        Some(0.0) => burn::tensor::activation::relu(y),
        Some(s) => burn::tensor::activation::leaky_relu(y, s as f64),
    }
}

/// Stride-1 2-D convolution of `x` `[n, cin, h, w]` with `weight` `[cout, cin, kh, kw]`,
/// padding (top, bottom, left, right) filled per `mode`.
pub fn conv2d_with(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    pad: [usize; 4],
    mode: PadMode,
    imp: ConvImpl,
) -> Tensor<4> {
    conv2d_with_act(x, weight, bias, pad, mode, imp, None)
}

/// [`conv2d_with`] followed by the activation `act`.
pub fn conv2d_with_act(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    pad: [usize; 4],
    mode: PadMode,
    imp: ConvImpl,
    act: Act,
) -> Tensor<4> {
    let [n, cin, h, w] = x.dims();
    let [cout, wcin, kh, kw] = weight.dims();
    let g = ConvGeom {
        batch: n,
        cin,
        h,
        w,
        cout,
        kh,
        kw,
        pad,
        mode,
    };
    if imp == ConvImpl::Spx && wcin == cin && g.check().is_ok() && uses_spx_kernels(&x) {
        let bias = bias.unwrap_or_else(|| Tensor::zeros([cout], &x.device()));
        return Tensor::from_dispatch(Dispatch::spx_conv(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            pad,
            mode == PadMode::Reflect,
            act,
        ));
    }
    let [pt, pb, pl, pr] = pad;
    let y = match mode {
        PadMode::Zero => tm::conv2d(
            x,
            weight,
            bias,
            ConvOptions::new_with_padding([1, 1], [(pt, pb), (pl, pr)], [1, 1], 1),
        ),
        PadMode::Reflect => {
            let x = if pad == [0; 4] {
                x
            } else {
                x.pad([(pt, pb), (pl, pr)], BurnPad::Reflect)
            };
            tm::conv2d(x, weight, bias, ConvOptions::new([1, 1], [0, 0], [1, 1], 1))
        }
    };
    activate(y, act)
}

/// Stride-1 1-D convolution of `x` `[n, cin, l]` with `weight` `[cout, cin, k]`, padding
/// (left, right) filled per `mode`.
pub fn conv1d_with(
    x: Tensor<3>,
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
    pad: [usize; 2],
    mode: PadMode,
    imp: ConvImpl,
) -> Tensor<3> {
    conv1d_with_act(x, weight, bias, pad, mode, imp, None)
}

/// [`conv1d_with`] followed by the activation `act`.
pub fn conv1d_with_act(
    x: Tensor<3>,
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
    pad: [usize; 2],
    mode: PadMode,
    imp: ConvImpl,
    act: Act,
) -> Tensor<3> {
    if imp == ConvImpl::Stock || !uses_spx_kernels(&x) {
        let x = match (mode, pad) {
            (_, [0, 0]) => x,
            (PadMode::Reflect, [l, r]) => x.pad([(l, r)], BurnPad::Reflect),
            (PadMode::Zero, [l, r]) => x.pad([(l, r)], 0.0),
        };
        return activate(
            tm::conv1d(x, weight, bias, ConvOptions::new([1], [0], [1], 1)),
            act,
        );
    }
    let [n, cin, l] = x.dims();
    let [cout, wcin, k] = weight.dims();
    let y = conv2d_with_act(
        x.reshape([n, cin, 1, l]),
        weight.reshape([cout, wcin, 1, k]),
        bias,
        [0, 0, pad[0], pad[1]],
        mode,
        imp,
        act,
    );
    let [n, c, _, lo] = y.dims();
    y.reshape([n, c, lo])
}

/// `same`-style padding pair of a stride-1 conv (burn's rule: the extra sample goes last).
fn same(k: usize) -> (usize, usize) {
    let total = k.saturating_sub(1);
    (total / 2, total - total / 2)
}

/// burn's `Conv2d::forward`, computed by spx's kernels on the CPU. `mode` fills the module's
/// padding (burn's own conv only knows zeros).
pub fn conv2d(m: &Conv2d, x: Tensor<4>, mode: PadMode, imp: ConvImpl) -> Tensor<4> {
    conv2d_act(m, x, mode, imp, None)
}

/// [`conv2d`] followed by the activation `act` (fused on the CPU).
pub fn conv2d_act(m: &Conv2d, x: Tensor<4>, mode: PadMode, imp: ConvImpl, act: Act) -> Tensor<4> {
    if m.stride != [1, 1] || m.dilation != [1, 1] || m.groups != 1 {
        return activate(m.forward(x), act);
    }
    let pad = match m.padding {
        PaddingConfig2d::Valid => [0; 4],
        PaddingConfig2d::Same => {
            let ((t, b), (l, r)) = (same(m.kernel_size[0]), same(m.kernel_size[1]));
            [t, b, l, r]
        }
        PaddingConfig2d::Explicit(t, l, b, r) => [t, b, l, r],
    };
    conv2d_with_act(
        x,
        m.weight.val(),
        m.bias.as_ref().map(|b| b.val()),
        pad,
        mode,
        imp,
        act,
    )
}

/// burn's `Conv1d::forward` after `extra` samples of `mode` padding on each side (DIP's reflect
/// padding, fused into the conv), computed by spx's kernels on the CPU.
pub fn conv1d(m: &Conv1d, x: Tensor<3>, extra: usize, mode: PadMode, imp: ConvImpl) -> Tensor<3> {
    conv1d_act(m, x, extra, mode, imp, None)
}

/// [`conv1d`] followed by the activation `act` (fused on the CPU).
pub fn conv1d_act(
    m: &Conv1d,
    x: Tensor<3>,
    extra: usize,
    mode: PadMode,
    imp: ConvImpl,
    act: Act,
) -> Tensor<3> {
    let own = match m.padding {
        PaddingConfig1d::Valid => (0, 0),
        PaddingConfig1d::Same => same(m.kernel_size),
        PaddingConfig1d::Explicit(l, r) => (l, r),
    };
    if m.stride != 1 || m.dilation != 1 || m.groups != 1 || (own != (0, 0) && extra > 0) {
        let x = if extra > 0 {
            match mode {
                PadMode::Reflect => x.pad([(extra, extra)], BurnPad::Reflect),
                PadMode::Zero => x.pad([(extra, extra)], 0.0),
            }
        } else {
            x
        };
        return activate(m.forward(x), act);
    }
    let (pad, mode) = if extra > 0 {
        ([extra, extra], mode)
    } else {
        ([own.0, own.1], PadMode::Zero)
    };
    conv1d_with_act(
        x,
        m.weight.val(),
        m.bias.as_ref().map(|b| b.val()),
        pad,
        mode,
        imp,
        act,
    )
}
