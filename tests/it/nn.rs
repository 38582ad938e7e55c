//! spx's conv kernels (`spx::nn`) against burn's stock conv and finite differences, on every
//! stride/padding/kernel/channel combination the DIP U-Net and the PtychoPINN network use, and
//! the two networks' training losses over 20 Adam steps with either conv.
//!
//! The spx conv is an opaque backend-extension op: burn's autodiff cannot differentiate through
//! it, so every gradient these tests read for its inputs comes from spx's hand-written backward.

use burn::module::Module;
use burn::nn::conv::{Conv1dConfig, Conv2dConfig};
use burn::nn::{PaddingConfig1d, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spx::backend::{tensor_from, to_vec};
use spx::dip::NetInit;
use spx::dip::unet::{UNet, UNetSpec};
use spx::nn::{self, ConvImpl, PadMode};
use spx::ptycho::losses;
use spx::ptycho::model::{ModelConfig, ModelShape, PtychoPinn};
use spx::ptycho::physics::{self, Cplx, GroupGeometry};

fn rand_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// max |a − b| / max |b|.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    crate::common::max_abs_diff(a, b) / scale.max(1e-12)
}

/// One 2-D case: batch, cin, h, w, cout, kernel (kh, kw), padding (t, b, l, r), mode.
type Case = (
    usize,
    usize,
    usize,
    usize,
    usize,
    [usize; 2],
    [usize; 4],
    PadMode,
);

/// The networks' convs: PINN 3×3 "same" zeros at 4→F, F→F, F→2F, 2F→F, F−4→4, F→4 (batch > 1);
/// DIP (as h = 1) k-tap reflect with k/2 padding at 1→F, F→F, 3F→F, and the 1×1 head F→1; and
/// two sizes large enough to be cut into several cache tiles per sample.
fn cases() -> Vec<Case> {
    use PadMode::{Reflect, Zero};
    vec![
        (3, 4, 8, 8, 6, [3, 3], [1, 1, 1, 1], Zero),
        (3, 6, 8, 8, 6, [3, 3], [1, 1, 1, 1], Zero),
        (2, 6, 4, 4, 12, [3, 3], [1, 1, 1, 1], Zero),
        (2, 12, 4, 4, 6, [3, 3], [1, 1, 1, 1], Zero),
        (2, 5, 8, 8, 4, [3, 3], [1, 1, 1, 1], Zero),
        (2, 6, 16, 16, 4, [3, 3], [1, 1, 1, 1], Zero),
        (1, 4, 8, 8, 5, [3, 3], [1, 1, 1, 1], Zero),
        (1, 1, 1, 40, 5, [1, 3], [0, 0, 1, 1], Reflect),
        (1, 5, 1, 40, 5, [1, 5], [0, 0, 2, 2], Reflect),
        (1, 5, 1, 20, 10, [1, 7], [0, 0, 3, 3], Reflect),
        (1, 15, 1, 20, 5, [1, 3], [0, 0, 1, 1], Reflect),
        (1, 5, 1, 40, 1, [1, 1], [0, 0, 0, 0], Zero),
        (2, 3, 1, 17, 4, [1, 3], [0, 0, 1, 1], Reflect),
        // several cache tiles per sample, tiles starting mid-row
        (2, 64, 13, 15, 3, [3, 3], [1, 1, 1, 1], Zero),
        (1, 40, 1, 700, 3, [1, 3], [0, 0, 1, 1], Reflect),
        // few input channels, many output channels: the shifted-GEMM input gradient
        (2, 4, 12, 12, 20, [3, 3], [1, 1, 1, 1], Zero),
        (1, 3, 1, 300, 24, [1, 3], [0, 0, 1, 1], Reflect),
    ]
}

struct Run {
    y: Vec<f32>,
    gx: Vec<f32>,
    gw: Vec<f32>,
    gb: Vec<f32>,
}

/// loss = Σ r·y² for the conv of (x, w, b); returns y and the three gradients.
fn run(case: &Case, data: &[Vec<f32>; 4], imp: ConvImpl, act: nn::Act, dev: &Device) -> Run {
    let &(n, ci, h, w, co, [kh, kw], pad, mode) = case;
    let x = tensor_from(data[0].clone(), [n, ci, h, w], dev).require_grad();
    let wt = tensor_from(data[1].clone(), [co, ci, kh, kw], dev).require_grad();
    let b = tensor_from(data[2].clone(), [co], dev).require_grad();
    let y = nn::conv2d_with_act(x.clone(), wt.clone(), Some(b.clone()), pad, mode, imp, act);
    let r = tensor_from(data[3].clone(), y.dims(), dev);
    let loss = (y.clone().powi_scalar(2) * r).sum();
    let g = loss.backward();
    Run {
        y: to_vec(y),
        gx: to_vec(x.grad(&g).expect("x grad")),
        gw: to_vec(wt.grad(&g).expect("w grad")),
        gb: to_vec(b.grad(&g).expect("b grad")),
    }
}

fn case_data(case: &Case, rng: &mut ChaCha8Rng) -> [Vec<f32>; 4] {
    let &(n, ci, h, w, co, [kh, kw], pad, _) = case;
    let (ho, wo) = (h + pad[0] + pad[1] + 1 - kh, w + pad[2] + pad[3] + 1 - kw);
    [
        rand_vec(rng, n * ci * h * w),
        rand_vec(rng, co * ci * kh * kw),
        rand_vec(rng, co),
        rand_vec(rng, n * co * ho * wo),
    ]
}

#[test]
fn forward_and_gradients_equal_burns_stock_conv() {
    let dev = Device::flex().autodiff();
    let probe = Tensor::<4>::zeros([1, 1, 1, 1], &dev);
    assert!(
        nn::uses_spx_kernels(&probe),
        "autodiff flex f32 routes to spx's op"
    );
    assert!(nn::uses_spx_kernels(&probe.to_device(&Device::flex())));
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // no activation, and the fused ReLU and leaky ReLU against burn's own after the stock conv
    for (case, act) in cases()
        .into_iter()
        .flat_map(|c| [None, Some(0.0), Some(0.1)].map(|a| (c, a)))
    {
        let data = case_data(&case, &mut rng);
        let a = run(&case, &data, ConvImpl::Spx, act, &dev);
        let s = run(&case, &data, ConvImpl::Stock, act, &dev);
        for (name, got, want) in [
            ("y", &a.y, &s.y),
            ("dx", &a.gx, &s.gx),
            ("dw", &a.gw, &s.gw),
            ("db", &a.gb, &s.gb),
        ] {
            let e = rel(got, want);
            assert!(
                e < 1e-4,
                "{case:?} {act:?} {name}: relative difference {e:e}"
            );
        }
    }
}

#[test]
fn gradients_pass_finite_differences() {
    let dev = Device::flex().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for case in cases() {
        let data = case_data(&case, &mut rng);
        let a = run(&case, &data, ConvImpl::Spx, None, &dev);
        let loss = |d: &[Vec<f32>; 4]| -> f64 {
            let y = run(&case, d, ConvImpl::Spx, None, &dev).y;
            y.iter()
                .zip(&d[3])
                .map(|(v, r)| (*v as f64).powi(2) * *r as f64)
                .sum()
        };
        // the loss is quadratic in each input, so a central difference is exact up to rounding
        let eps = 0.05f32;
        for (t, grad) in [(0, &a.gx), (1, &a.gw), (2, &a.gb)] {
            let scale = grad.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            for _ in 0..12 {
                let i = rng.random_range(0..grad.len());
                let mut p = data.clone();
                p[t][i] += eps;
                let mut m = data.clone();
                m[t][i] -= eps;
                let fd = (loss(&p) - loss(&m)) / (2.0 * eps as f64);
                assert!(
                    (fd - grad[i] as f64).abs() < 2e-3 * scale.max(1.0),
                    "{case:?} input {t} [{i}]: finite difference {fd} vs backward {}",
                    grad[i]
                );
            }
        }
    }
}

#[test]
fn inference_forward_equals_stock_and_modules_keep_their_parameters() {
    let dev = Device::flex();
    let _rng = crate::common::burn_rng_lock();
    dev.seed(3);
    let c2 = Conv2dConfig::new([4, 6], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .init(&dev);
    let x = Tensor::<4>::random([2, 4, 9, 7], burn::tensor::Distribution::Default, &dev);
    let a = to_vec(nn::conv2d(&c2, x.clone(), PadMode::Zero, ConvImpl::Spx));
    let s = to_vec(c2.forward(x));
    assert!(rel(&a, &s) < 1e-5);
    // a 1-D module with its own `Same` padding and one with reflect padding added
    let c1 = Conv1dConfig::new(3, 2, 5)
        .with_padding(PaddingConfig1d::Same)
        .init(&dev);
    let x = Tensor::<3>::random([2, 3, 11], burn::tensor::Distribution::Default, &dev);
    let a = to_vec(nn::conv1d(&c1, x.clone(), 0, PadMode::Zero, ConvImpl::Spx));
    let s = to_vec(c1.forward(x.clone()));
    assert!(rel(&a, &s) < 1e-5);
    let v = Conv1dConfig::new(3, 2, 5).init(&dev);
    let a = to_vec(nn::conv1d(
        &v,
        x.clone(),
        2,
        PadMode::Reflect,
        ConvImpl::Spx,
    ));
    let s = to_vec(v.forward(x.pad([(2, 2)], burn::tensor::ops::PadMode::Reflect)));
    assert!(rel(&a, &s) < 1e-5);
    assert_eq!(a.len(), 2 * 2 * 11);
}

/// Relative difference of two loss curves.
fn curves_agree(a: &[f32], b: &[f32], what: &str) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = ((x - y) / y.abs().max(1e-12)).abs();
        assert!(d < 1e-4, "{what} step {i}: spx {x} vs stock {y} ({d:e})");
    }
}

#[test]
fn dip_training_losses_match_the_stock_conv() {
    let dev = Device::flex().autodiff();
    let l = 200;
    let _rng = crate::common::burn_rng_lock();
    dev.seed(11);
    let spec = UNetSpec {
        length: l,
        depth: 3,
        filters: 6,
        kernel_size: 5,
        leaky_slope: 0.2,
        init: NetInit::Pytorch,
        positivity: true,
    };
    let net = UNet::new(&spec, &dev);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let z = tensor_from(rand_vec(&mut rng, l), [1, 1, l], &dev);
    let target: Vec<f32> = (0..l).map(|i| 1.0 + (i as f32 * 0.05).sin()).collect();
    let target = tensor_from(target, [1, 1, l], &dev);
    let train = |imp: ConvImpl| -> Vec<f32> {
        let mut net = net.clone().with_convs(imp);
        let mut opt = AdamConfig::new().init();
        (0..20)
            .map(|_| {
                let loss = (net.forward(z.clone()) - target.clone())
                    .powi_scalar(2)
                    .mean();
                let v = to_vec(loss.clone())[0];
                let g = GradientsParams::from_grads(loss.backward(), &net);
                net = opt.step(2e-3, net.clone(), g);
                v
            })
            .collect()
    };
    let (a, s) = (train(ConvImpl::Spx), train(ConvImpl::Stock));
    assert!(a[19] < a[0], "training lowers the loss: {a:?}");
    curves_agree(&a, &s, "DIP");
}

#[test]
fn pinn_training_losses_match_the_stock_conv() {
    let dev = Device::flex().autodiff();
    let (b, n) = (2usize, 32usize);
    let _rng = crate::common::burn_rng_lock();
    dev.seed(13);
    let cfg = ModelConfig {
        n_filters_scale: 1,
        filters_base: 8,
        border_filters: 6,
    };
    let shape = ModelShape::new(&cfg, n, 2, 1e6);
    let ch = shape.channels();
    let model = PtychoPinn::new(&shape, &dev);
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let x = tensor_from(
        rand_vec(&mut rng, b * ch * n * n)
            .iter()
            .map(|v| v.abs() * 3.0)
            .collect(),
        [b, ch, n, n],
        &dev,
    );
    let probe = Cplx::new(
        tensor_from(rand_vec(&mut rng, n * n), [1, 1, n, n], &dev),
        tensor_from(rand_vec(&mut rng, n * n), [1, 1, n, n], &dev),
    );
    let rel_pos: Vec<Vec<(f64, f64)>> = (0..b)
        .map(|i| {
            (0..ch)
                .map(|k| ((k as f64 - 1.5) * 2.0, i as f64 - 0.5))
                .collect()
        })
        .collect();
    let geo = GroupGeometry::new(&rel_pos, n, physics::padded_size(n, 2), &dev);
    let train = |imp: ConvImpl| -> Vec<f32> {
        let mut m = model.clone().with_convs(imp);
        let mut opt = AdamConfig::new().init();
        (0..20)
            .map(|_| {
                let out = m.forward(x.clone(), &geo, &probe);
                let loss = losses::poisson_nll(out.pred_amp, x.clone());
                let v = to_vec(loss.clone())[0];
                let g = GradientsParams::from_grads(loss.backward(), &m);
                m = opt.step(1e-3, m.clone(), g);
                v
            })
            .collect()
    };
    let (a, s) = (train(ConvImpl::Spx), train(ConvImpl::Stock));
    assert!(a[19] < a[0], "training lowers the loss: {a:?}");
    curves_agree(&a, &s, "PINN");
    let _ = model.num_params();
}

/// spx's fused nearest ×2 up-sampling: the same values as burn's reshape + `repeat_dim`s, each
/// output sample equal to its source, and the input gradient of `Σ w ⊙ up2(x)` equal to the sum
/// of `w` over each 2 × 2 block (exactly: four f32 terms, checked against an f64 sum).
#[test]
fn up2_equals_repeat_dims_and_its_gradient_sums_each_block() {
    let dev = Device::flex().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    for [b, c, h, w] in [[2usize, 3, 4, 5], [1, 1, 1, 1], [3, 2, 8, 1]] {
        let xv = rand_vec(&mut rng, b * c * h * w);
        let wv = rand_vec(&mut rng, b * c * 4 * h * w);
        let x = tensor_from(xv.clone(), [b, c, h, w], &dev).require_grad();
        let y = nn::upsample::up2(x.clone());
        assert_eq!(y.dims(), [b, c, 2 * h, 2 * w]);
        let stock = to_vec(nn::upsample::up2_stock(x.clone().detach()));
        let yv = to_vec(y.clone());
        assert_eq!(
            yv,
            stock,
            "values of up2 vs repeat_dim at {:?}",
            [b, c, h, w]
        );
        for p in 0..b * c {
            for yy in 0..2 * h {
                for xx in 0..2 * w {
                    let got = yv[(p * 2 * h + yy) * 2 * w + xx];
                    assert_eq!(got, xv[(p * h + yy / 2) * w + xx / 2]);
                }
            }
        }
        let wt = tensor_from(wv.clone(), [b, c, 2 * h, 2 * w], &dev);
        let grads = (y * wt).sum().backward();
        let gx = to_vec(x.grad(&grads).expect("x is tracked"));
        for p in 0..b * c {
            for yy in 0..h {
                for xx in 0..w {
                    let at = |dy: usize, dx: usize| {
                        wv[(p * 2 * h + 2 * yy + dy) * 2 * w + 2 * xx + dx] as f64
                    };
                    let want = at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1);
                    let got = gx[(p * h + yy) * w + xx] as f64;
                    assert!(
                        (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                        "{got} vs {want}"
                    );
                }
            }
        }
    }
}

/// The DIP U-Net's fused up-sampling + concat (`dip::layers::up_cat`) against burn's
/// `Interpolate1d` (linear, aligned corners) + `cat`: the same values and the same input
/// gradients, bit for bit on finite data (the fused op leaves out burn's unit-height terms,
/// which multiply by exactly 1 or add ±0).
#[test]
fn dip_up_cat_equals_burns_interpolate_and_cat() {
    use burn::nn::interpolate::{Interpolate1dConfig, InterpolateMode};
    let dev = Device::flex().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    for (b, c, cs, l, lo) in [
        (1usize, 4usize, 3usize, 375usize, 750usize),
        (2, 2, 2, 7, 15),
    ] {
        let up = Interpolate1dConfig::new()
            .with_output_size(Some(lo))
            .with_mode(InterpolateMode::Linear)
            .with_align_corners(true)
            .init();
        let xv = rand_vec(&mut rng, b * c * l);
        let sv = rand_vec(&mut rng, b * cs * lo);
        let wv = rand_vec(&mut rng, b * (c + cs) * lo);
        let run = |fused: bool| {
            let x = tensor_from(xv.clone(), [b, c, l], &dev).require_grad();
            let s = tensor_from(sv.clone(), [b, cs, lo], &dev).require_grad();
            let y = if fused {
                spx::dip::layers::up_cat(&up, x.clone(), s.clone())
            } else {
                Tensor::cat(vec![up.forward(x.clone()), s.clone()], 1)
            };
            let wt = tensor_from(wv.clone(), [b, c + cs, lo], &dev);
            let grads = (y.clone() * wt).sum().backward();
            (
                to_vec(y),
                to_vec(x.grad(&grads).expect("x tracked")),
                to_vec(s.grad(&grads).expect("skip tracked")),
            )
        };
        let (fused, stock) = (run(true), run(false));
        assert_eq!(fused.0, stock.0, "values");
        assert_eq!(fused.1, stock.1, "gradient of the up-sampled input");
        assert_eq!(fused.2, stock.2, "gradient of the skip");
    }
}

/// The fused max-pool by 2: each output the larger of its pair (written out here, not taken
/// from burn), equal bit for bit to burn's `max_pool1d` (kernel 2, stride 2), including ties
/// (the first sample wins), a NaN in either place (it wins) and an odd length (the last sample is
/// dropped); the input gradient of `Σ w ⊙ pool(x)` is `w` at each pair's winner and 0 elsewhere,
/// equal to burn's own backward.
#[test]
fn max_pool2_takes_each_pairs_larger_and_sends_its_gradient_there() {
    let dev = Device::flex().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    for [b, c, l] in [[2usize, 3, 10], [1, 2, 7], [1, 1, 1], [3, 4, 64]] {
        let mut xv = rand_vec(&mut rng, b * c * l);
        if l >= 4 {
            xv[1] = xv[0]; // a tie: the first sample wins
            xv[2] = f32::NAN; // NaN first: it stays
            xv[l + 1] = f32::NAN; // NaN second: it wins
        }
        let lo = l / 2;
        let wv = rand_vec(&mut rng, b * c * lo);
        let x = tensor_from(xv.clone(), [b, c, l], &dev).require_grad();
        let y = nn::pool::max_pool2(x.clone());
        assert_eq!(y.dims(), [b, c, lo]);
        let yv = to_vec(y.clone());
        let winner = |r: usize, t: usize| {
            let (a, s) = (xv[r * l + 2 * t], xv[r * l + 2 * t + 1]);
            if s > a || s.is_nan() { 1 } else { 0 }
        };
        for r in 0..b * c {
            for t in 0..lo {
                let want = xv[r * l + 2 * t + winner(r, t)];
                let got = yv[r * lo + t];
                assert!(
                    got.to_bits() == want.to_bits(),
                    "row {r} pair {t}: {got} vs {want}"
                );
            }
        }
        let xs = tensor_from(xv.clone(), [b, c, l], &dev).require_grad();
        let ys = nn::pool::max_pool2_stock(xs.clone());
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(
            bits(to_vec(ys.clone())),
            bits(yv),
            "values vs burn at {:?}",
            [b, c, l]
        );
        let wt = tensor_from(wv.clone(), [b, c, lo], &dev);
        let gx = to_vec(
            x.grad(&(y * wt.clone()).sum().backward())
                .expect("x is tracked"),
        );
        let gs = to_vec(xs.grad(&(ys * wt).sum().backward()).expect("xs is tracked"));
        for r in 0..b * c {
            for i in 0..l {
                let t = i / 2;
                let want = if t < lo && i % 2 == winner(r, t) {
                    wv[r * lo + t]
                } else {
                    0.0
                };
                assert_eq!(gx[r * l + i], want, "gradient row {r} sample {i}");
            }
        }
        assert_eq!(bits(gx), bits(gs), "gradient vs burn at {:?}", [b, c, l]);
    }
}

/// The fused 2 × 2 max-pool: each output the largest of its block by burn's rule (row-major scan,
/// a sample replaces the current winner when greater or NaN — written out here), bit for bit
/// burn's `max_pool2d` (kernel and stride 2 × 2) with ties, NaNs and odd sizes; the input
/// gradient is the output gradient at each block's winner and 0 elsewhere, equal to burn's.
#[test]
fn max_pool2x2_takes_each_blocks_largest_and_sends_its_gradient_there() {
    let dev = Device::flex().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(29);
    for [b, c, h, w] in [
        [2usize, 3, 4, 6],
        [1, 2, 5, 7],
        [1, 1, 1, 3],
        [2, 4, 16, 16],
    ] {
        let mut xv = rand_vec(&mut rng, b * c * h * w);
        if h >= 4 && w >= 4 {
            xv[w] = xv[0]; // a tie down the first block: the first wins
            xv[2] = f32::NAN; // NaN first in block (0, 1)
            xv[w + 3] = f32::NAN; // and NaN last in it: the last NaN wins
        }
        let (ho, wo) = (h / 2, w / 2);
        let wv = rand_vec(&mut rng, b * c * ho * wo);
        let x = tensor_from(xv.clone(), [b, c, h, w], &dev).require_grad();
        let y = nn::pool::max_pool2x2(x.clone());
        assert_eq!(y.dims(), [b, c, ho, wo]);
        let yv = to_vec(y.clone());
        let winner = |p: usize, oy: usize, ox: usize| {
            let at = |k: usize| (p * h + 2 * oy + k / 2) * w + 2 * ox + k % 2;
            let mut best = 0;
            for k in 1..4 {
                let (cur, v) = (xv[at(best)], xv[at(k)]);
                if v > cur || v.is_nan() {
                    best = k;
                }
            }
            at(best)
        };
        for p in 0..b * c {
            for oy in 0..ho {
                for ox in 0..wo {
                    let want = xv[winner(p, oy, ox)];
                    let got = yv[(p * ho + oy) * wo + ox];
                    assert!(
                        got.to_bits() == want.to_bits(),
                        "{p} ({oy}, {ox}): {got} vs {want}"
                    );
                }
            }
        }
        let xs = tensor_from(xv.clone(), [b, c, h, w], &dev).require_grad();
        let ys = nn::pool::max_pool2x2_stock(xs.clone());
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(
            bits(to_vec(ys.clone())),
            bits(yv),
            "values vs burn at {:?}",
            [b, c, h, w]
        );
        let wt = tensor_from(wv.clone(), [b, c, ho, wo], &dev);
        let gx = to_vec(
            x.grad(&(y * wt.clone()).sum().backward())
                .expect("x is tracked"),
        );
        let gs = to_vec(xs.grad(&(ys * wt).sum().backward()).expect("xs is tracked"));
        let mut want = vec![0f32; b * c * h * w];
        for p in 0..b * c {
            for oy in 0..ho {
                for ox in 0..wo {
                    want[winner(p, oy, ox)] = wv[(p * ho + oy) * wo + ox];
                }
            }
        }
        assert_eq!(gx, want, "gradient at {:?}", [b, c, h, w]);
        assert_eq!(bits(gx), bits(gs), "gradient vs burn at {:?}", [b, c, h, w]);
    }
}

/// The fused Adam step equals burn's tensor-op Adam bit for bit (parameters and both moments)
/// over five steps from no state, and its first step is the closed form: with m₀ = v₀ = 0,
/// m₁ = (1−β₁)g, v₁ = (1−β₂)g², and p₁ = p − lr·g/(|g| + ε) up to rounding.
#[test]
fn fused_adam_equals_the_tensor_ops_bit_for_bit() {
    use spx::nn::adam::{BETAS_EPS, adam, adam_stock};
    let dev = Device::flex();
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let n = 7 * 10_001; // more than one rayon chunk, not a multiple of it
    let bits = |t: Tensor<2>| to_vec(t).into_iter().map(f32::to_bits).collect::<Vec<_>>();
    let p0 = tensor_from(rand_vec(&mut rng, n), [7, n / 7], &dev);
    let (mut pf, mut ps) = (p0.clone(), p0.clone());
    let (mut sf, mut ss) = (None, None);
    for t in 1..=5 {
        let g = tensor_from(rand_vec(&mut rng, n), [7, n / 7], &dev);
        if t == 1 {
            let (p1, (m1, v1)) = adam(p0.clone(), g.clone(), None, 1, 1e-2);
            let (pv, gv, p1v) = (to_vec(p0.clone()), to_vec(g.clone()), to_vec(p1));
            let (b1, b2, eps) = BETAS_EPS;
            for (i, (&mv, &vv)) in to_vec(m1).iter().zip(&to_vec(v1)).enumerate() {
                assert_eq!(mv, gv[i] * (1.0 - b1));
                assert_eq!(vv, gv[i] * gv[i] * (1.0 - b2));
                let want = pv[i] as f64 - 1e-2 * gv[i] as f64 / (gv[i].abs() as f64 + eps as f64);
                assert!((p1v[i] as f64 - want).abs() < 1e-6, "{} vs {want}", p1v[i]);
            }
        }
        let (p, s) = adam(pf, g.clone(), sf, t, 1e-2);
        let (q, r) = adam_stock(ps, g, ss, t, 1e-2);
        assert_eq!(bits(p.clone()), bits(q.clone()), "parameters at step {t}");
        assert_eq!(bits(s.0.clone()), bits(r.0.clone()), "m at step {t}");
        assert_eq!(bits(s.1.clone()), bits(r.1.clone()), "v at step {t}");
        (pf, ps, sf, ss) = (p, q, Some(s), Some(r));
    }
}
