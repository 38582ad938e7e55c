//! Spektron model hot paths at the default size (3.47 M parameters, 67 tokens): one pretraining
//! step (two views, every loss term, backward, AdamW) and encoder throughput (inference).

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Int, Tensor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spx::backend::{DeviceSpec, seeded, tensor_from};
use spx::config::Config;
use spx::spektron::model::SpektronModel;
use spx::spektron::model::pretrain::{LossContext, batch_loss};

fn spectra(b: usize, n: usize) -> Vec<f32> {
    (0..b * n)
        .map(|j| {
            let (i, k) = ((j / n) as f32, (j % n) as f32);
            (k * 0.01 * (1.0 + 0.05 * i)).sin()
                + 0.3 * (-(k - 900.0 - 40.0 * i).powi(2) / 800.0).exp()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let cfg = Config::default().spektron;
    let lay = cfg.model.layout();
    let b = 8;
    let x = spectra(b, lay.n_points);
    let modality = vec![2i8; b];

    let dev = DeviceSpec::Cpu.autodiff_device().unwrap();
    let mut rng = seeded(&dev, 1);
    let mut model = SpektronModel::new(&cfg.model, &mut rng, &dev).unwrap();
    let ctx = LossContext::new(lay.clone(), &dev);
    let mut opt = AdamWConfig::new().with_weight_decay(0.01).init();
    let mut g = c.benchmark_group("spektron_model");
    g.sample_size(10);
    g.throughput(Throughput::Elements(b as u64));
    g.bench_function("pretrain step, default size, batch 8", |bch| {
        bch.iter(|| {
            let (loss, _) = batch_loss(
                &model,
                &ctx,
                &x,
                &modality,
                &cfg.loss,
                &cfg.pretrain,
                &mut rng,
            );
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = opt.step(1e-4, model.clone(), grads);
        })
    });

    let inf = model.valid();
    let idev = DeviceSpec::Cpu.device().unwrap();
    let flat: Vec<f32> = x.chunks(lay.n_points).flat_map(|s| lay.encode(s)).collect();
    let p = tensor_from(flat, [b, lay.n_patches, lay.patch], &idev);
    let d = Tensor::<1, Int>::from_ints([2i64; 8], &idev);
    g.bench_function("encode, default size, batch 8", |bch| {
        bch.iter(|| inf.encode(p.clone(), d.clone(), None))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
