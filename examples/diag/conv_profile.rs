//! Conv profile and training-step timer for spx's conv kernels (`spx::nn`).
//!
//! `conv_profile layers [pinn|dip] [reps]`: every conv of the PtychoPINN network (batch 16, N 64,
//! C 4, default config) or of the DIP U-Net (3000 px, 32 filters, depth 3, k 3) timed alone:
//! forward, input gradient and weight gradient, in GFLOP per CPU-second (process CPU time, so the
//! number is honest on a shared machine), then the totals.
//!
//! `conv_profile step pinn|dip|dipfit [steps] [stock]`: whole training steps (forward + backward +
//! Adam) of the network, after 2 warm-up steps; prints one JSON line with wall and CPU
//! milliseconds per step and the parameter count. `stock` computes the convs with burn's own conv
//! instead. `pinn` runs on a rayon worker, as `ptycho::train` does; `dip` is the U-Net module
//! (`UNet::forward`, burn's Adam: the path `stock` can swap), `dipfit` the path `spx dip recon`
//! trains (`UNet::forward_stacked` with its fused ops and the stacked Adam, on a rayon worker).
//! The process starts with [`spx::backend::keep_freed_memory`], as the `spx` binary does
//! (`SPX_LIBC_MALLOC_DEFAULTS=1` leaves glibc's defaults, to measure what it saves).
//! Threads: `RAYON_NUM_THREADS`. The PyTorch twins in `benches/peers/` print the same line.
//!
//! `conv_profile kernels`: the AVX-512 direct kernels alone (`spx::nn::direct`, the DIP U-Net's
//! 3-tap 1-D convs) on the U-Net's channel counts and lengths, operands hot in cache, best of 40
//! calls on one thread: what the kernels reach without the epoch's cache misses and other ops
//! (a Zen 4 core's FMA peak is 32 FLOP per cycle).
//!
//! `conv_profile peak`: this core's FMA peak in GFLOP per CPU-second — 12 independent chains of
//! fused multiply-adds on the widest vectors the CPU has (AVX-512F, else AVX2 + FMA), one
//! thread: the ceiling every GFLOP figure above is read against (a Zen 4 core with AVX-512 and
//! a Zen 3 core with AVX2 both retire 32 f32 FLOP per cycle).
//!
//! `cargo run --release --example conv_profile -- layers pinn`

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Device;
use burn::tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use spx::backend::{tensor_from, to_vec};
use spx::dip::NetInit;
use spx::dip::batch::adam;
use spx::dip::unet::{UNet, UNetSpec};
use spx::nn::ConvImpl;
use spx::nn::kernels::{self, ConvGeom, Mat, Need, PadMode};
use spx::ptycho::PtychoConfig;
use spx::ptycho::fixture::{self, PinnBatch};
use spx::ptycho::losses;
use spx::ptycho::model::{ModelShape, PtychoPinn};

/// CPU seconds used by this process (all threads), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // fields after the parenthesised command name; utime and stime are fields 14 and 15
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// (wall s, cpu s) per call, over enough calls for ≥ 0.3 CPU-s (the tick is 10 ms).
fn time(mut f: impl FnMut()) -> (f64, f64) {
    f();
    let (w0, c0) = (Instant::now(), cpu_seconds());
    let mut reps = 0;
    while reps < 2 || cpu_seconds() - c0 < 0.3 {
        f();
        reps += 1;
    }
    let r = reps as f64;
    (w0.elapsed().as_secs_f64() / r, (cpu_seconds() - c0) / r)
}

const PINN: (usize, usize, usize) = (16, 4, 64);
const DIP: (usize, usize, usize, usize) = (3000, 32, 3, 3);

/// (count, geometry) of every conv of the network.
fn pinn_layers() -> Vec<(usize, ConvGeom)> {
    let (b, ch, n) = PINN;
    let shape = ModelShape::new(&PtychoConfig::default().pinn.model, n, 2, 1e9);
    let g = |cin, cout, s| ConvGeom {
        batch: b,
        cin,
        h: s,
        w: s,
        cout,
        kh: 3,
        kw: 3,
        pad: [1; 4],
        mode: PadMode::Zero,
    };
    let mut v = vec![];
    let (mut cin, mut s) = (ch, n);
    for &f in &shape.encoder {
        v.push((1, g(cin, f, s)));
        v.push((1, g(f, f, s)));
        cin = f;
        s /= 2;
    }
    for &f in &shape.decoder {
        v.push((2, g(cin, f, s)));
        v.push((2, g(f, f, s)));
        cin = f;
        s *= 2;
    }
    let bf = shape.border_filters;
    v.push((2, g(cin - 4, ch, s)));
    v.push((2, g(4, bf, s)));
    v.push((2, g(bf, bf, s)));
    v.push((2, g(bf, ch, 2 * s)));
    v
}

fn dip_layers() -> Vec<(usize, ConvGeom)> {
    let (l, f, depth, k) = DIP;
    let g = |cin, cout, len, k: usize| ConvGeom {
        batch: 1,
        cin,
        h: 1,
        w: len,
        cout,
        kh: 1,
        kw: k,
        pad: [0, 0, k / 2, k / 2],
        mode: if k > 1 {
            PadMode::Reflect
        } else {
            PadMode::Zero
        },
    };
    let mut v = vec![(1, g(1, f, l, k)), (1, g(f, f, l, k))];
    for i in 1..=depth {
        v.push((1, g(f << (i - 1), f << i, l >> i, k)));
        v.push((1, g(f << i, f << i, l >> i, k)));
    }
    for i in 0..depth {
        let c = f << (depth - 1 - i);
        let len = l >> (depth - 1 - i);
        v.push((1, g(3 * c, c, len, k)));
        v.push((1, g(c, c, len, k)));
    }
    v.push((1, g(f, 1, l, 1)));
    v
}

fn layers(net: &str) {
    let list = if net == "dip" {
        dip_layers()
    } else {
        pinn_layers()
    };
    println!(
        "{net}: rayon threads {}; GFLOP per CPU-second (ms CPU per call)",
        rayon::current_num_threads()
    );
    println!(
        "{:>5} {:>4}→{:<4} {:>5}  {:>16} {:>16} {:>16}",
        "count", "cin", "cout", "size", "forward", "input grad", "weight grad"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut rv = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    // the GEMM's own rate on this machine now, for scale
    for m in [256usize, 1024] {
        let (a, b) = (rv(m * m), rv(m * m));
        let mut c = vec![0f32; m * m];
        let (_, cs) = time(|| {
            let (am, bm) = (Mat::row_major(&a, m), Mat::row_major(&b, m));
            kernels::gemm(m, m, m, &mut c, false, am, bm)
        });
        println!(
            "gemm {m}³: {:.1} GFLOP per CPU-s",
            2.0 * (m * m * m) as f64 / cs / 1e9
        );
    }
    let (mut flops, mut cpu) = ([0f64; 3], [0f64; 3]);
    for (count, g) in list {
        let x = rv(g.batch * g.cin * g.h * g.w);
        let w = rv(g.cout * g.k());
        let bias = rv(g.cout);
        let gout = rv(g.batch * g.cout * g.l());
        let fl = 2.0 * g.macs() as f64 * count as f64;
        let only = |x: bool, weight: bool| Need {
            x,
            weight,
            bias: weight,
        };
        let t = [
            time(|| drop(kernels::conv_forward(&x, &w, Some(&bias), &g))),
            time(|| drop(kernels::conv_backward(&x, &w, &gout, &g, only(true, false)))),
            time(|| drop(kernels::conv_backward(&x, &w, &gout, &g, only(false, true)))),
        ];
        let cell = |i: usize| {
            let c = t[i].1 * count as f64;
            format!("{:7.1} ({:6.1})", fl / c.max(1e-9) / 1e9, c * 1e3)
        };
        println!(
            "{count:>5} {:>4}→{:<4} {:>5}  {} {} {}",
            g.cin,
            g.cout,
            if g.h == 1 {
                format!("{}", g.w)
            } else {
                format!("{}²", g.h)
            },
            cell(0),
            cell(1),
            cell(2)
        );
        for i in 0..3 {
            flops[i] += fl;
            cpu[i] += t[i].1 * count as f64;
        }
    }
    let names = ["forward", "input grad", "weight grad"];
    for i in 0..3 {
        println!(
            "total {:<12} {:7.1} GFLOP per CPU-s, {:7.1} ms CPU",
            names[i],
            flops[i] / cpu[i] / 1e9,
            cpu[i] * 1e3
        );
    }
    let (f, c) = (flops.iter().sum::<f64>(), cpu.iter().sum::<f64>());
    println!(
        "total fwd+bwd      {:7.1} GFLOP per CPU-s, {:7.1} ms CPU per step",
        f / c / 1e9,
        c * 1e3
    );
}

fn report(net: &str, imp: ConvImpl, params: usize, steps: usize, wall: f64, cpu: f64, loss: f32) {
    println!(
        "{{\"impl\": \"spx{}\", \"net\": \"{net}\", \"threads\": {}, \"params\": {params}, \"steps\": {steps}, \"ms_per_step\": {:.2}, \"cpu_ms_per_step\": {:.2}, \"last_loss\": {loss}}}",
        if imp == ConvImpl::Stock { "-stock" } else { "" },
        rayon::current_num_threads(),
        1e3 * wall / steps as f64,
        1e3 * cpu / steps as f64,
    );
}

fn step_pinn(steps: usize, imp: ConvImpl) {
    let (b, ch, n) = PINN;
    let dev = Device::flex().autodiff();
    dev.seed(1);
    let model_cfg = PtychoConfig::default().pinn.model;
    let PinnBatch {
        x,
        probe,
        geo,
        shape,
    } = fixture::pinn_batch((b, ch, n), 1.0, &model_cfg, &dev);
    let mut model = PtychoPinn::new(&shape, &dev).with_convs(imp);
    let params = model.num_params();
    let mut opt = AdamConfig::new().init();
    let mut loss_v = 0.0;
    let mut one = |model: PtychoPinn| -> PtychoPinn {
        let out = model.forward(x.clone(), &geo, &probe);
        let loss = losses::poisson_nll(out.pred_amp, x.clone());
        loss_v = to_vec(loss.clone())[0];
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        opt.step(1e-3, model, grads)
    };
    for _ in 0..2 {
        model = one(model);
    }
    let (w0, c0) = (Instant::now(), cpu_seconds());
    for _ in 0..steps {
        model = one(model);
    }
    let (w, c) = (w0.elapsed().as_secs_f64(), cpu_seconds() - c0);
    report("pinn", imp, params, steps, w, c, loss_v);
}

/// The DIP network, its input noise `z` and target `y` (3000 px, 32 filters, depth 3), the
/// same for [`step_dip`], [`step_dip_fit`] and the PyTorch twin (`dip_setup` in twins.py).
fn dip_setup(dev: &Device) -> (UNet, Tensor<3>, Tensor<3>) {
    let (l, f, depth, k) = DIP;
    dev.seed(1);
    let spec = UNetSpec {
        length: l,
        depth,
        filters: f,
        kernel_size: k,
        leaky_slope: 0.2,
        init: NetInit::Pytorch,
        positivity: true,
    };
    let net = UNet::new(&spec, dev);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let z: Vec<f32> = (0..l)
        .map(|_| 0.1 * rng.sample::<f32, _>(StandardNormal))
        .collect();
    let y: Vec<f32> = (0..l)
        .map(|i| 1.0 + 0.5 * (i as f32 * 0.01).sin())
        .collect();
    (
        net,
        tensor_from(z, [1, 1, l], dev),
        tensor_from(y, [1, 1, l], dev),
    )
}

fn step_dip(steps: usize, imp: ConvImpl) {
    let dev = Device::flex().autodiff();
    let (net, z, y) = dip_setup(&dev);
    let mut net = net.with_convs(imp);
    let params = net.num_params();
    let mut opt = AdamConfig::new().init();
    let mut loss_v = 0.0;
    let mut one = |net: UNet| -> UNet {
        let loss = (net.forward(z.clone()) - y.clone()).powi_scalar(2).mean();
        loss_v = to_vec(loss.clone())[0];
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        opt.step(1e-3, net, grads)
    };
    for _ in 0..2 {
        net = one(net);
    }
    let (w0, c0) = (Instant::now(), cpu_seconds());
    for _ in 0..steps {
        net = one(net);
    }
    let (w, c) = (w0.elapsed().as_secs_f64(), cpu_seconds() - c0);
    report("dip", imp, params, steps, w, c, loss_v);
}

/// The DIP U-Net the way `spx dip recon` trains it (`dip::batch`): one network as a stacked
/// row through `UNet::forward_stacked` (spx's per-row conv op with the leaky ReLU fused, the
/// fused up-sampling + concat) and the stacked Adam — same loss and inputs as [`step_dip`].
fn step_dip_fit(steps: usize) {
    let dev = Device::flex().autodiff();
    let (net, z, y) = dip_setup(&dev);
    let params = net.num_params();
    let (mut w, mut b): (Vec<Tensor<4>>, Vec<Tensor<2>>) = net
        .conv_params()
        .into_iter()
        .map(|(w, b)| (w.unsqueeze::<4>(), b.unsqueeze::<2>()))
        .map(|(w, b)| (Tensor::from_inner(w), Tensor::from_inner(b)))
        .unzip();
    let (mut mw, mut mb) = (vec![None; w.len()], vec![None; b.len()]);
    let mut loss_v = 0.0;
    let mut t = 0;
    let mut one = || {
        let wa: Vec<Tensor<4>> = w
            .iter()
            .map(|t| t.clone().detach().require_grad())
            .collect();
        let ba: Vec<Tensor<2>> = b
            .iter()
            .map(|t| t.clone().detach().require_grad())
            .collect();
        let loss = (net.forward_stacked(&wa, &ba, z.clone()) - y.clone())
            .powi_scalar(2)
            .mean();
        loss_v = to_vec(loss.clone())[0];
        let grads = loss.backward();
        t += 1;
        for c in 0..w.len() {
            let gw = wa[c].grad(&grads).expect("tracked weight");
            let gb = ba[c].grad(&grads).expect("tracked bias");
            let (p, s) = adam(w[c].clone().inner(), gw, mw[c].take(), t, 1e-3);
            w[c] = Tensor::from_inner(p);
            mw[c] = Some(s);
            let (p, s) = adam(b[c].clone().inner(), gb, mb[c].take(), t, 1e-3);
            b[c] = Tensor::from_inner(p);
            mb[c] = Some(s);
        }
    };
    for _ in 0..2 {
        one();
    }
    let (w0, c0) = (Instant::now(), cpu_seconds());
    for _ in 0..steps {
        one();
    }
    let (wl, c) = (w0.elapsed().as_secs_f64(), cpu_seconds() - c0);
    report("dip", ConvImpl::Spx, params, steps, wl, c, loss_v);
}

/// See the module doc (`kernels`).
fn kernels() {
    use spx::nn::direct;
    if !direct::available() {
        eprintln!("no AVX-512F on this CPU: the DIP convs run on the shifted GEMMs");
        return;
    }
    let reps = 40;
    let (mut tf, mut tw, mut flops) = (0.0, 0.0, 0.0);
    println!("cout  cin  length   forward/input-grad kernel   weight-gradient kernel (GFLOP/s)");
    for (co, ci, n) in [
        (32usize, 32usize, 3000usize),
        (64, 64, 1500),
        (128, 128, 750),
        (128, 384, 750),
        (256, 256, 375),
        (32, 96, 3000),
    ] {
        let stride = n + 2;
        let val = |i: usize, p: usize| ((i * p) % 1000) as f32 * 1e-3;
        let x: Vec<f32> = (0..ci * stride + 2).map(|i| val(i, 7919)).collect();
        let g: Vec<f32> = (0..co * stride).map(|i| val(i, 104_729)).collect();
        let w: Vec<f32> = (0..co * ci * 3).map(|i| val(i, 31)).collect();
        let mut out = vec![0f32; co * n];
        let mut dw = vec![0f32; co * ci * 3];
        let taps = direct::Taps {
            w: &w,
            rs: ci * 3,
            ss: 3,
            ts: 1,
        };
        let (mut best_f, mut best_w) = (f64::MAX, f64::MAX);
        for _ in 0..reps {
            let t = Instant::now();
            // SAFETY: `available()` checked AVX-512F; `out` holds co rows of n.
            unsafe { direct::corr(out.as_mut_ptr(), n, co, n, ci, taps, &x, stride, [0, 1, 2]) };
            best_f = best_f.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            // SAFETY: as above.
            unsafe {
                direct::weight_grad(
                    &mut dw,
                    (ci * 3, 3),
                    co,
                    ci,
                    n,
                    (&g, stride),
                    (&x, stride),
                    [0, 1, 2],
                )
            };
            best_w = best_w.min(t.elapsed().as_secs_f64());
        }
        let flop = 2.0 * (co * ci * 3 * n) as f64;
        println!(
            "{co:4} {ci:4} {n:7}   {:26.1}   {:22.1}",
            flop / best_f * 1e-9,
            flop / best_w * 1e-9
        );
        (tf, tw, flops) = (tf + best_f, tw + best_w, flops + flop);
    }
    println!(
        "all shapes: forward/input-grad kernel {:.1}, weight-gradient kernel {:.1} GFLOP/s",
        flops / tf * 1e-9,
        flops / tw * 1e-9
    );
}

/// `conv_profile peak`: GFLOP per CPU-second of 12 independent FMA chains, 3 runs.
fn peak() {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        use std::hint::black_box as bb;
        const CHAINS: usize = 12;
        let iters = 400_000_000u64;
        /// Runs the chains; returns (FLOP, a checksum that keeps them live).
        #[target_feature(enable = "avx512f")]
        fn run512(iters: u64) -> (f64, f32) {
            let (b, c) = (_mm512_set1_ps(bb(0.999_999_9)), _mm512_set1_ps(bb(1e-7)));
            let mut a: [__m512; CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(bb(i as f32)));
            for _ in 0..iters {
                for v in a.iter_mut() {
                    *v = _mm512_fmadd_ps(*v, b, c);
                }
            }
            let s = a.iter().map(|&v| _mm512_reduce_add_ps(v)).sum();
            ((iters * CHAINS as u64 * 32) as f64, s)
        }
        #[target_feature(enable = "avx2,fma")]
        fn run256(iters: u64) -> (f64, f32) {
            let (b, c) = (_mm256_set1_ps(bb(0.999_999_9)), _mm256_set1_ps(bb(1e-7)));
            let mut a: [__m256; CHAINS] = std::array::from_fn(|i| _mm256_set1_ps(bb(i as f32)));
            for _ in 0..iters {
                for v in a.iter_mut() {
                    *v = _mm256_fmadd_ps(*v, b, c);
                }
            }
            let mut lanes = [0f32; 8];
            let mut s = 0.0;
            for v in a {
                // SAFETY: `lanes` holds 8 f32.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
                s += lanes.iter().sum::<f32>();
            }
            ((iters * CHAINS as u64 * 16) as f64, s)
        }
        let (wide, fma) = (
            std::is_x86_feature_detected!("avx512f"),
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
        );
        if !wide && !fma {
            println!("no AVX2 + FMA on this CPU");
            return;
        }
        for _ in 0..3 {
            let c0 = cpu_seconds();
            // SAFETY: the features were detected above.
            let (flop, sum) = unsafe { if wide { run512(iters) } else { run256(iters) } };
            let cpu = cpu_seconds() - c0;
            println!(
                "FMA peak ({}): {:.1} GFLOP per CPU-s ({cpu:.2} CPU-s, checksum {sum:.3e})",
                if wide { "AVX-512F" } else { "AVX2 + FMA" },
                flop / cpu * 1e-9
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("peak: x86_64 only");
}

fn main() {
    if std::env::var_os("SPX_LIBC_MALLOC_DEFAULTS").is_none() {
        spx::backend::keep_freed_memory();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let usage = "usage: conv_profile layers [pinn|dip] | step pinn|dip|dipfit [steps] [stock] | kernels | peak";
    match (arg(0), arg(1)) {
        (Some("kernels"), _) => kernels(),
        (Some("peak"), _) => peak(),
        (Some("layers"), net) => layers(net.unwrap_or("pinn")),
        (Some("step"), Some("dipfit")) => {
            let steps = arg(2)
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(5)
                .max(1);
            spx::train::on_pool_worker(|| step_dip_fit(steps))
        }
        (Some("step"), Some(net @ ("pinn" | "dip"))) => {
            let Some(steps) = arg(2).map_or(Some(5), |s| s.parse::<usize>().ok()) else {
                eprintln!("{usage}");
                std::process::exit(2);
            };
            let imp = if arg(3) == Some("stock") {
                ConvImpl::Stock
            } else {
                ConvImpl::Spx
            };
            if net == "pinn" {
                // On a worker of the pool, as `ptycho::train` runs.
                spx::train::on_pool_worker(|| step_pinn(steps.max(1), imp))
            } else {
                step_dip(steps.max(1), imp)
            }
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
