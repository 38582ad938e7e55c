//! DIP timing: one training epoch (forward + backward + Adam step) and a full default run on a
//! simulated source (600 observations, 3000-pixel grid), plus the Tikhonov baseline solve.
//! The full run takes minutes on CPU and is timed once when SPX_BENCH_DIP_FULL=1 is set.

use burn::tensor::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use indicatif::ProgressBar;
use spx::backend;
use spx::config::Config;
use spx::dip::forward::Operator;
use spx::dip::grid::linspace;
use spx::dip::train::{self, Problem};
use spx::dip::{Weighting, simulate, tikhonov};

fn bench(c: &mut Criterion) {
    let cfg = Config::default();
    let dev = Device::flex();
    let mut rng = backend::seeded(&dev, 1);
    let rows = simulate::simulate(&cfg.dip.simulate, &mut rng);
    let grid = linspace(
        cfg.dip.wavelength_min,
        cfg.dip.wavelength_max,
        cfg.dip.resolution,
    );
    let cen: Vec<f64> = rows.iter().map(|r| r.wavelength).collect();
    let bw: Vec<f64> = rows.iter().map(|r| r.bandwidth).collect();
    let (op, _) = Operator::build(&grid, &cen, &bw);
    let y: Vec<f64> = rows.iter().map(|r| r.flux).collect();
    let s: Vec<f64> = rows.iter().map(|r| r.flux_error).collect();
    let p = Problem {
        op: &op,
        y: &y,
        sigma: &s,
    };
    let ad = dev.clone().autodiff();

    let mut one = cfg.dip.clone();
    one.epochs = 1;
    let mut g = c.benchmark_group("dip");
    g.sample_size(10);
    g.bench_function("one epoch (3000 px, 600 obs, U-Net 32x3)", |b| {
        b.iter(|| train::fit(&one, &p, &ad, 1, &ProgressBar::hidden()))
    });
    g.bench_function("tikhonov baseline (auto lambda)", |b| {
        b.iter(|| tikhonov::solve(&op, &y, &s, &cfg.dip.tikhonov, Weighting::Variance, 1e-10))
    });
    g.finish();
    // Criterion needs >= 10 samples; a default run takes minutes on CPU, so it is timed once.
    if std::env::var("SPX_BENCH_DIP_FULL").is_ok() {
        let t0 = std::time::Instant::now();
        let f = train::fit(&cfg.dip, &p, &ad, 1, &ProgressBar::hidden());
        println!(
            "dip/default run ({} epochs): {:.1} s ({:.1} ms/epoch)",
            f.epochs_run,
            t0.elapsed().as_secs_f64(),
            1e3 * t0.elapsed().as_secs_f64() / f.epochs_run as f64
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
