//! PtychoPINN hot paths at the reference size (N = 64, gridsize 2, batch 16): the
//! differentiable forward model alone, and one full training step (forward + backward + Adam)
//! of the 2.34M-parameter network on the CPU (flex) backend, and inference (forward only).
//! The training step is timed with spx's conv kernels and with burn's stock conv.
//! Patterns per second = 64 / time (16 groups × C 4).

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use spx::backend::tensor_from;
use spx::nn::ConvImpl;
use spx::ptycho::PtychoConfig;
use spx::ptycho::fixture::{self, PinnBatch};
use spx::ptycho::losses;
use spx::ptycho::model::PtychoPinn;
use spx::ptycho::physics::{self, Cplx};

fn bench(c: &mut Criterion) {
    let (b, ch, n) = (16usize, 4usize, 64usize);
    let dev = Device::flex();
    let model_cfg = PtychoConfig::default().pinn.model;
    let PinnBatch {
        x: x0,
        probe,
        geo,
        shape,
    } = fixture::pinn_batch((b, ch, n), 1.0, &model_cfg, &dev);
    let obj = Cplx::new(
        tensor_from(fixture::pattern(b * ch * n * n, 1.0), [b, ch, n, n], &dev),
        tensor_from(fixture::pattern(b * ch * n * n, 0.5), [b, ch, n, n], &dev),
    );
    let mut g = c.benchmark_group("ptycho_pinn");
    g.sample_size(10);
    g.bench_function("merge_extract_diffract_b16_c4_n64", |bch| {
        bch.iter(|| {
            let (_, p) = geo.merge_extract(obj.clone());
            physics::forward_amplitude(&probe, p).into_data()
        })
    });
    // inference: the whole network + physics without autodiff, batch 16 groups = 64 patterns
    let plain = PtychoPinn::new(&shape, &dev);
    g.bench_function("infer_b16_c4_n64", |bch| {
        bch.iter(|| {
            plain
                .forward(x0.clone(), &geo, &probe)
                .object
                .re
                .into_data()
        })
    });
    let ad = dev.autodiff();
    let mut model = PtychoPinn::new(&shape, &ad);
    let mut opt = AdamConfig::new().init();
    let PinnBatch {
        x,
        probe: probe_ad,
        geo: geo_ad,
        ..
    } = fixture::pinn_batch((b, ch, n), 1.0, &model_cfg, &ad);
    g.bench_function("train_step_b16_c4_n64", |bch| {
        bch.iter(|| {
            let out = model.forward(x.clone(), &geo_ad, &probe_ad);
            let loss = losses::poisson_nll(out.pred_amp, x.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = opt.step(1e-3, model.clone(), grads);
        })
    });
    // the same step with burn's stock conv (spx's conv kernels off), for the before/after ratio
    let mut stock = PtychoPinn::new(&shape, &ad).with_convs(ConvImpl::Stock);
    let mut opt_s = AdamConfig::new().init();
    g.bench_function("train_step_b16_c4_n64_stock_conv", |bch| {
        bch.iter(|| {
            let out = stock.forward(x.clone(), &geo_ad, &probe_ad);
            let loss = losses::poisson_nll(out.pred_amp, x.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &stock);
            stock = opt_s.step(1e-3, stock.clone(), grads);
        })
    });
    g.finish();
    let _ = model.num_params();
}

criterion_group!(benches, bench);
criterion_main!(benches);
