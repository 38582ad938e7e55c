//! Ptychography from Rust: simulate a scan with known ground truth, reconstruct it with the ePIE
//! baseline and with a freshly trained PtychoPINN network, and score both against the truth —
//! the library calls behind `spx ptycho simulate|epie|train|infer`.
//!
//! ```text
//! cargo run --release --example ptycho [OUT_DIR]
//! ```
//! Sizes are the demo's PINN run (N 16, 64 positions on a 40² object, 4 epochs): seconds on a
//! CPU, so the PINN scores are those of a barely trained network. `spx ptycho dose-study
//! --profile cpu` is the study-sized run.

use std::path::{Path, PathBuf};

use spx::config;
use spx::ptycho::metrics::Metrics;
use spx::ptycho::pipeline::{self, Hooks};

fn show(name: &str, m: Option<&Metrics>) {
    match m {
        Some(m) => println!(
            "{name:5} amplitude SSIM {:.3}, PSNR {:.2} dB, FRC50 {:.1}; phase MAE {:.3} rad",
            m.amp_ssim, m.amp_psnr_max, m.amp_frc50, m.phase_mae
        ),
        None => println!("{name:5} (no ground truth in the scan)"),
    }
}

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("spx-example-ptycho"));
    let cfg = config::load_layers(None, &[], &[], &[])?;
    let (seed, device) = (cfg.run.seed, cfg.run.device.clone());
    let p = pipeline::demo_pinn_settings(&cfg.ptycho);
    let hooks = Hooks::silent();
    let sim = pipeline::simulate_into(&p, seed, &out, "scan.npz", &hooks)?;
    let data = Path::new(&sim.npz);
    println!(
        "simulated {} patterns of {}×{} at {:.0e} photons → {}",
        sim.n_positions, sim.n, sim.n, sim.nphotons, sim.npz
    );
    let epie = pipeline::epie_file(&p, seed, data, &out.join("epie"), &hooks)?;
    show("ePIE", epie.metrics.as_ref());
    let model = out.join("model");
    let t = pipeline::train_file(&p, seed, &device, data, &model, false, &hooks)?;
    println!(
        "trained on {} groups for {} epochs in {:.1} s (final loss {:.4e})",
        t.groups, t.epochs_run, t.seconds, t.final_loss
    );
    let pinn = pipeline::infer_file(&p, seed, &device, &model, data, &out.join("pinn"), &hooks)?;
    show("PINN", pinn.metrics.as_ref());
    for f in epie.files.iter().chain(&pinn.files) {
        println!("wrote {f}");
    }
    Ok(())
}
