//! Hot paths of the shared tensor layer on the selected device (CPU by default; set
//! SPX_BENCH_DEVICE=wgpu or cuda with the matching cargo feature).

use criterion::{Criterion, criterion_group, criterion_main};
use spx::backend::{self, DeviceSpec};

fn device() -> burn::tensor::Device {
    let spec: DeviceSpec = std::env::var("SPX_BENCH_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .expect("SPX_BENCH_DEVICE");
    spec.device().expect("device compiled in")
}

fn bench(c: &mut Criterion) {
    let dev = device();
    let n = 512;
    let a = backend::tensor_from(
        (0..n * n).map(|i| (i % 17) as f32 / 17.0).collect(),
        [n, n],
        &dev,
    );
    let b = a.clone().transpose();
    c.bench_function("matmul 512x512 f32", |bch| {
        bch.iter(|| {
            let out = a.clone().matmul(b.clone());
            let _ = dev.sync();
            out
        })
    });

    let m = 64;
    let re = backend::tensor_from(
        (0..16 * m * m).map(|i| ((i * 7) % 13) as f32).collect(),
        [16, m, m],
        &dev,
    );
    let im = re.zeros_like();
    c.bench_function("fft2 16x64x64 complex (two cfft)", |bch| {
        bch.iter(|| {
            let (r, i) = burn::signal::cfft(re.clone(), im.clone(), 2, None);
            let out = burn::signal::cfft(r, i, 1, None);
            let _ = dev.sync();
            out
        })
    });

    let ad = dev.clone().autodiff();
    let x0 = backend::tensor_from(
        (0..16 * m * m).map(|i| (i % 5) as f32 * 0.1).collect(),
        [16, m, m],
        &ad,
    );
    c.bench_function("fft2 |F|^2 forward+backward 16x64x64", |bch| {
        bch.iter(|| {
            let x = x0.clone().require_grad();
            let (r, i) = burn::signal::cfft(x.clone(), x.zeros_like(), 2, None);
            let (r, i) = burn::signal::cfft(r, i, 1, None);
            let loss = (r.powi_scalar(2) + i.powi_scalar(2)).mean();
            x.grad(&loss.backward())
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
