//! CRR hot paths: the weights of one wavelength slice (19 fibers × 9 exposures, 0.75″ pixels:
//! Ñ^(-1/2)A is 171 × ~260) and a whole 19-fiber cube of 200 slices, CRR and Shepard.
//! Full-size cube timings (4563 slices) are in the README (`spx crr build`).

use criterion::{Criterion, criterion_group, criterion_main};
use spx::config::Config;
use spx::crr::cube::Builder;
use spx::crr::weights::{Workspace, crr_weights_gram, crr_weights_svd, design_matrix};
use spx::crr::{Method, simulate};

fn bench(c: &mut Criterion) {
    let mut cfg = Config::default().crr;
    cfg.simulate.nwave = 200;
    cfg.simulate.snr = 30.0;
    let rss = simulate::simulate(&cfg, 1).expect("simulate");
    let b = Builder::new(&rss, &cfg).expect("builder");
    let l = 100;
    let (xs, ys, good) = b.samples(l);
    let fit = b.grid.pixels_near(&xs, &ys, cfg.fit_radius);
    let seeing = b.seeing_rows(l);
    c.bench_function("crr design matrix 19x9 @0.75", |bch| {
        bch.iter(|| design_matrix(&b.table, &b.grid, &fit, &xs, &ys, &seeing, &good))
    });
    let na = design_matrix(&b.table, &b.grid, &fit, &xs, &ys, &seeing, &good);
    c.bench_function("crr weights (SVD + W) 19x9 @0.75", |bch| {
        bch.iter(|| crr_weights_svd(na.as_ref(), &good, cfg.lambda, cfg.sv_cutoff).expect("svd"))
    });
    let mut ws = Workspace::default();
    c.bench_function("crr weights (Gram EVD + W) 19x9 @0.75", |bch| {
        bch.iter(|| {
            crr_weights_gram(na.as_ref(), &good, cfg.lambda, cfg.sv_cutoff, &mut ws).expect("evd")
        })
    });
    let mut g = c.benchmark_group("cube 19 fibers x 200 slices");
    g.sample_size(10);
    for m in [Method::Crr, Method::Shepard] {
        cfg.method = m;
        let b = Builder::new(&rss, &cfg).expect("builder");
        let pb = indicatif::ProgressBar::hidden();
        g.bench_function(m.name(), |bch| bch.iter(|| b.build_range(0, 200, &pb)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
