//! Ptycho data hot paths: KD-tree grouping of 100k positions, and simulating 2000 N=64
//! diffraction patterns (patch extraction + FFT + Poisson) from a 128² lines object.

use criterion::{Criterion, criterion_group, criterion_main};
use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spx::ptycho::grouping::group_positions;
use spx::ptycho::simulate::{Detector, Noise, diffract, scan_positions};
use spx::ptycho::{GroupConfig, object, probe};

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let n = 100_000;
    let x: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 1000.0).collect();
    let y: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 1000.0).collect();
    let cfg = GroupConfig {
        gridsize: 2,
        neighbor_count: 7,
        n_groups: 0,
        order: spx::ptycho::grouping::ChannelOrder::Random,
        mode: spx::ptycho::grouping::GroupMode::Neighbors,
    };
    let mut g = c.benchmark_group("ptycho");
    g.sample_size(10);
    g.bench_function("group_100k_positions_gs2_k7", |b| {
        b.iter(|| {
            let mut r = ChaCha8Rng::seed_from_u64(2);
            group_positions(&x, &y, &cfg, &mut r).unwrap()
        })
    });

    let obj = object::lines_object(128, 130, 0.0, &mut rng);
    let pr = probe::default_probe(64, 0.7);
    let (sx, sy) = scan_positions(128, 128, 2000, 15.0, &mut rng);
    let pb = ProgressBar::hidden();
    g.bench_function("simulate_2000_patterns_n64_poisson", |b| {
        let det = Detector {
            nphotons: 1e9,
            noise: Noise::Poisson,
            seed: 3,
        };
        b.iter(|| diffract(&obj, &pr, &sx, &sy, &det, &pb))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
