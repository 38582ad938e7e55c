//! DIP timing: one training epoch (forward + backward + Adam step) and a full default run on a
//! simulated source (the default deep-field density, 1000 random observations per band, through
//! QC; 3000-pixel grid), plus the Tikhonov baseline solve.
//! The full run takes minutes on CPU and is timed once when SPX_BENCH_DIP_FULL=1 is set.

use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use indicatif::ProgressBar;
use spx::backend;
use spx::config::Config;
use spx::dip::batch;
use spx::dip::forward::Operator;
use spx::dip::grid::linspace;
use spx::dip::recon::write_simulation;
use spx::dip::train::Problem;
use spx::dip::unet::{UNet, UNetSpec};
use spx::dip::{NetInit, Weighting, input, simulate, tikhonov};
use spx::nn::ConvImpl;

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
    let dir = tempfile::tempdir().expect("temp dir");
    let (csv, _) = write_simulation(
        &rows,
        &spx::dip::simulate::Source::default_from(&cfg.dip.simulate),
        &grid,
        dir.path(),
        1,
    )
    .expect("write CSV");
    let (obs, _) = input::load(&csv, &cfg.dip.qc).expect("load CSV");
    let cen: Vec<f64> = obs.iter().map(|r| r.wavelength).collect();
    let bw: Vec<f64> = obs.iter().map(|r| r.bandwidth).collect();
    let (op, _) = Operator::build(&grid, &cen, &bw);
    let y: Vec<f64> = obs.iter().map(|r| r.flux).collect();
    let s: Vec<f64> = obs.iter().map(|r| r.flux_error).collect();
    let p = Problem {
        op: &op,
        y: &y,
        sigma: &s,
    };
    let ad = dev.clone().autodiff();

    let mut one = cfg.dip.clone();
    one.train.epochs = 1;
    let mut g = c.benchmark_group("dip");
    g.sample_size(10);
    g.bench_function("one epoch (3000 px, 6000 obs, U-Net 32x3)", |b| {
        b.iter(|| batch::fit(&one, &p, &ad, 1, &ProgressBar::hidden()))
    });
    // The U-Net alone (3000 px, 32 filters, depth 3; MSE to a fixed target, Adam), with spx's
    // conv kernels and with burn's stock conv: the network's share of an epoch.
    for imp in [ConvImpl::Spx, ConvImpl::Stock] {
        let spec = UNetSpec {
            length: cfg.dip.resolution,
            depth: cfg.dip.net.depth,
            filters: cfg.dip.net.filters,
            kernel_size: cfg.dip.net.kernel_size,
            leaky_slope: cfg.dip.net.leaky_slope,
            init: NetInit::Pytorch,
            positivity: true,
        };
        let l = spec.length;
        let mut net = UNet::new(&spec, &ad).with_convs(imp);
        let z = backend::tensor_from(vec![0.05; l], [1, 1, l], &ad);
        let target = backend::tensor_from(vec![1.0; l], [1, 1, l], &ad);
        let mut opt = AdamConfig::new().init();
        g.bench_function(format!("U-Net step, {imp:?} conv"), |b| {
            b.iter(|| {
                let loss = (net.forward(z.clone()) - target.clone())
                    .powi_scalar(2)
                    .mean();
                let grads = GradientsParams::from_grads(loss.backward(), &net);
                net = opt.step(1e-3, net.clone(), grads);
            })
        });
    }
    g.bench_function("tikhonov baseline (auto lambda)", |b| {
        b.iter(|| tikhonov::solve(&op, &y, &s, &cfg.dip.tikhonov, Weighting::Variance, 1e-10))
    });
    g.finish();
    // Criterion needs >= 10 samples; full runs take minutes on CPU, so they are timed once: the
    // default run (ends at the discrepancy stop) and 3000 epochs with the stop off.
    if std::env::var("SPX_BENCH_DIP_FULL").is_ok() {
        let mut all = cfg.dip.clone();
        all.train.stop_chi2 = 0.0;
        for (name, dc) in [("default run", &cfg.dip), ("3000 epochs, no stop", &all)] {
            let f = batch::fit(dc, &p, &ad, 1, &ProgressBar::hidden());
            println!(
                "dip/{name}: {} epochs in {:.1} s ({:.1} ms/epoch)",
                f.epochs_run,
                f.seconds,
                1e3 * f.seconds / f.epochs_run as f64
            );
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
