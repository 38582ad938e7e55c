//! Spektron hot paths: corpus build throughput (parse + resample + SNV + gzip HDF5) and the
//! fit time of PLS1 (15 LVs, corn-sized and 2048-channel) and PDS (window 5).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array2;
use spx::config::Config;
use spx::spektron::baselines::pls::{Pls, PlsAlgorithm};
use spx::spektron::baselines::transfer;
use spx::spektron::data::{corpus, synth};

fn bench(c: &mut Criterion) {
    let cfg = Config::default().spektron;
    // 200 two-column CSV spectra (800–3000 points each) in a temp dir.
    let dir = tempfile::tempdir().unwrap();
    let n_files = 200;
    for i in 0..n_files {
        let s = synth::synth_spectrum(1, i, &cfg.synth);
        let text: String =
            s.x.iter()
                .zip(&s.y)
                .map(|(x, y)| format!("{x},{y}\n"))
                .collect();
        std::fs::write(dir.path().join(format!("s{i:04}.csv")), text).unwrap();
    }
    let out = dir.path().join("corpus.h5");
    let mut g = c.benchmark_group("corpus");
    g.throughput(Throughput::Elements(n_files));
    g.sample_size(10);
    g.bench_function("build 200 CSV spectra -> 2048 pts", |b| {
        b.iter(|| {
            corpus::build(
                &[dir.path().to_path_buf()],
                &out,
                &cfg.corpus,
                &indicatif::ProgressBar::hidden(),
            )
            .unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("baselines");
    g.sample_size(10);
    for (n, p) in [(60usize, 700usize), (60, 2048)] {
        let (xm, xs, y) = synth::two_instrument(2, n, p, 1.5, 0.9, 0.05, 1e-3);
        let xm: Array2<f64> = xm + &xs * 1e-3; // full rank
        g.bench_function(format!("PLS1 nipals 15 LV {n}x{p}"), |b| {
            b.iter(|| Pls::fit(xm.view(), y.view(), 15, PlsAlgorithm::Nipals))
        });
        g.bench_function(format!("PLS1 kernel 15 LV {n}x{p}"), |b| {
            b.iter(|| Pls::fit(xm.view(), y.view(), 15, PlsAlgorithm::Kernel))
        });
        let (tm, ts) = (
            xm.slice(ndarray::s![..30, ..]).to_owned(),
            xs.slice(ndarray::s![..30, ..]).to_owned(),
        );
        g.bench_function(format!("PDS window 5, N=30, p={p}"), |b| {
            b.iter(|| transfer::pds(tm.view(), ts.view(), 2, 0.999))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
