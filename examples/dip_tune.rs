//! Choose `dip.regularization_weight` by measurement: reconstruct simulated sources (default
//! `[dip.simulate]`, several seeds) with a range of weights and print χ²/M, the relative RMS error
//! against the truth smoothed to the instrument resolution, and recovered/true line fluxes.
//!
//! `cargo run --release --example dip_tune -- [epochs] [weights,comma,separated] [seeds]`
//! (env DIP_TUNE_RESOLUTION, DIP_TUNE_FILTERS, DIP_TUNE_LR, DIP_TUNE_PER_BAND override the grid, width,
//! lr and the simulated observations per band;
//! DIP_TUNE_TRACE=N prints the loss every N epochs to stderr).

use burn::tensor::Device;
use indicatif::ProgressBar;
use spx::backend;
use spx::config::Config;
use spx::dip::Weighting;
use spx::dip::forward::{Operator, chi2};
use spx::dip::grid::linspace;
use spx::dip::input;
use spx::dip::recon::write_simulation;
use spx::dip::simulate::{self, LINES, line_integral, measure_line, relative_rms, truth_flux};
use spx::dip::tikhonov;
use spx::dip::train::{self, Problem};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let epochs: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(1500);
    let weights: Vec<f64> = args
        .get(2)
        .map(|s| s.split(',').map(|w| w.parse().unwrap()).collect())
        .unwrap_or_else(|| vec![0.0, 0.001, 0.01, 0.1, 1.0]);
    let seeds: u64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(2);
    let mut cfg = Config::default();
    cfg.dip.epochs = epochs;
    // Cheaper proxies for sweeps on a small CPU: a coarser grid and fewer filters.
    if let Ok(r) = std::env::var("DIP_TUNE_RESOLUTION") {
        cfg.dip.resolution = r.parse().unwrap();
    }
    if let Ok(f) = std::env::var("DIP_TUNE_FILTERS") {
        cfg.dip.filters = f.parse().unwrap();
    }
    if let Ok(n) = std::env::var("DIP_TUNE_PER_BAND") {
        cfg.dip.simulate.per_band = n.parse().unwrap();
    }
    if let Ok(lr) = std::env::var("DIP_TUNE_LR") {
        cfg.dip.lr = lr.parse().unwrap();
    }
    let grid = linspace(
        cfg.dip.wavelength_min,
        cfg.dip.wavelength_max,
        cfg.dip.resolution,
    );
    let truth: Vec<f64> = grid
        .iter()
        .map(|&l| truth_flux(l, &cfg.dip.simulate))
        .collect();
    println!("weight,seed,chi2_per_obs,rel_rms,line1,line2,line3,best_epoch,seconds");
    for seed in 1..=seeds {
        let dev = Device::flex();
        let mut rng = backend::seeded(&dev, seed);
        // Through the same CSV + quality control as `spx dip recon` (bad flags and glitches go).
        let rows = simulate::simulate(&cfg.dip.simulate, &mut rng);
        let dir = tempfile::tempdir().expect("temp dir");
        let (csv, _) = write_simulation(&rows, &cfg.dip.simulate, &grid, dir.path(), seed)
            .expect("write simulated CSV");
        let (obs, _) = input::load(&csv, &cfg.dip.qc).expect("load simulated CSV");
        let c: Vec<f64> = obs.iter().map(|o| o.wavelength).collect();
        let b: Vec<f64> = obs.iter().map(|o| o.bandwidth).collect();
        let (op, kept) = Operator::build(&grid, &c, &b);
        let y: Vec<f64> = kept.iter().map(|&i| obs[i].flux).collect();
        let s: Vec<f64> = kept.iter().map(|&i| obs[i].flux_error).collect();
        let report = |name: &str, x: &[f64], best: usize, secs: f64| {
            let ratios: Vec<f64> = LINES
                .iter()
                .enumerate()
                .map(|(i, l)| measure_line(&grid, x, l.0) / line_integral(i, &cfg.dip.simulate))
                .collect();
            println!(
                "{name},{seed},{:.3},{:.4},{:.3},{:.3},{:.3},{best},{secs:.1}",
                chi2(&op, x, &y, &s) / y.len() as f64,
                relative_rms(&grid, x, &truth, 0.8, 4.95),
                ratios[0],
                ratios[1],
                ratios[2],
            );
        };
        let t = tikhonov::solve(&op, &y, &s, &cfg.dip.tikhonov, Weighting::Variance, 1e-10)
            .expect("tikhonov solve");
        report("tikhonov", &t.spectrum, 0, t.seconds);
        for &w in &weights {
            let mut dc = cfg.dip.clone();
            dc.regularization_weight = w;
            let p = Problem {
                op: &op,
                y: &y,
                sigma: &s,
            };
            let f = train::fit(
                &dc,
                &p,
                &dev.clone().autodiff(),
                seed,
                &ProgressBar::hidden(),
            );
            if let Some(every) = std::env::var("DIP_TUNE_TRACE")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
            {
                for h in f.history.iter().filter(|h| h.epoch % every.max(1) == 0) {
                    eprintln!(
                        "  epoch {} total {:.4e} data {:.4e} reg {:.4e} chi2/M {:.3}",
                        h.epoch, h.total, h.data, h.reg, h.chi2
                    );
                }
            }
            report(&w.to_string(), &f.spectrum, f.best_epoch, f.seconds);
        }
    }
}
