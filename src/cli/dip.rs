//! `spx dip recon` and `spx dip simulate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use spx::backend;
use spx::config::Config;
use spx::dip::{grid::linspace, recon, simulate};
use toml::Value;

use super::Global;

#[derive(Subcommand, Debug)]
pub enum DipCmd {
    /// Reconstruct a spectrum from a spxquery photometry CSV.
    Recon(ReconArgs),
    /// Write a synthetic source (simulated.csv) and its true spectrum (truth.csv).
    Simulate(SimulateArgs),
}

#[derive(Args, Debug)]
pub struct ReconArgs {
    /// Photometry CSV (spxquery schema: flux, flux_error, wavelength, bandwidth, band, flag).
    pub input: PathBuf,
    /// dip | tikhonov (overrides dip.solver).
    #[arg(long)]
    pub solver: Option<String>,
    /// forward | pixel (overrides dip.loss_mode).
    #[arg(long)]
    pub loss_mode: Option<String>,
    /// Training epochs (overrides dip.epochs).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Number of ensemble members with seeds seed..seed+K−1 (overrides dip.ensemble).
    #[arg(long)]
    pub ensemble: Option<usize>,
    /// CWT L1 weight in scaled units (overrides dip.regularization_weight).
    #[arg(long)]
    pub reg_weight: Option<f64>,
    /// A known spectrum (CSV with `wavelength`, `flux`, e.g. `spx dip simulate`'s truth.csv):
    /// report the relative error and line fluxes against it and draw it on the plot.
    #[arg(long)]
    pub truth: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// random | channels (overrides dip.simulate.sampling).
    #[arg(long)]
    pub sampling: Option<String>,
    /// Observations per band for random sampling (overrides dip.simulate.per_band).
    #[arg(long)]
    pub per_band: Option<usize>,
    /// default | qso | ice | star (overrides dip.simulate.kind).
    #[arg(long)]
    pub kind: Option<String>,
    /// band | relative (overrides dip.simulate.noise).
    #[arg(long)]
    pub noise: Option<String>,
}

fn int(v: usize) -> Value {
    Value::Integer(v as i64)
}

/// The effective config with this subcommand's flags on top (they only touch `[dip]`; the
/// global flags are applied by `g.setup()`).
fn load(g: &Global, flags: Vec<(&str, Value, &str)>) -> Result<Config> {
    let base = g.setup()?;
    if flags.is_empty() {
        return Ok(base);
    }
    let mut b = spx::config::ConfigBuilder::new()?;
    if let Some(f) = &g.config {
        b = b.file(f)?;
    }
    for s in &g.sets {
        b = b.set(s)?;
    }
    for (k, v, f) in flags {
        b = b.flag(k, v, f)?;
    }
    let mut cfg = b.build()?;
    cfg.run = base.run;
    Ok(cfg)
}

pub fn run(g: &Global, cmd: &DipCmd) -> Result<ExitCode> {
    match cmd {
        DipCmd::Recon(a) => {
            let mut flags: Vec<(&str, Value, &str)> = Vec::new();
            if let Some(s) = &a.solver {
                flags.push(("dip.solver", Value::String(s.clone()), "--solver"));
            }
            if let Some(s) = &a.loss_mode {
                flags.push(("dip.loss_mode", Value::String(s.clone()), "--loss-mode"));
            }
            if let Some(e) = a.epochs {
                flags.push(("dip.epochs", int(e), "--epochs"));
            }
            if let Some(k) = a.ensemble {
                flags.push(("dip.ensemble", int(k), "--ensemble"));
            }
            if let Some(w) = a.reg_weight {
                flags.push(("dip.regularization_weight", Value::Float(w), "--reg-weight"));
            }
            let cfg = load(g, flags)?;
            let summary = recon_to(g, &cfg, &a.input, a.truth.as_deref(), &cfg.run.out_dir)?;
            g.emit_json(&summary)?;
            Ok(ExitCode::SUCCESS)
        }
        DipCmd::Simulate(a) => {
            let mut flags: Vec<(&str, Value, &str)> = Vec::new();
            if let Some(s) = &a.sampling {
                flags.push((
                    "dip.simulate.sampling",
                    Value::String(s.clone()),
                    "--sampling",
                ));
            }
            if let Some(n) = a.per_band {
                flags.push(("dip.simulate.per_band", int(n), "--per-band"));
            }
            if let Some(k) = &a.kind {
                flags.push(("dip.simulate.kind", Value::String(k.clone()), "--kind"));
            }
            if let Some(k) = &a.noise {
                flags.push(("dip.simulate.noise", Value::String(k.clone()), "--noise"));
            }
            let cfg = load(g, flags)?;
            let (csv, truth) = simulate_to(&cfg, &cfg.run.out_dir)?;
            g.say(format!(
                "wrote {}\nwrote {}",
                csv.display(),
                truth.display()
            ));
            g.emit_json(&json!({"csv": csv, "truth": truth, "seed": cfg.run.seed}))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn simulate_to(cfg: &Config, out: &Path) -> Result<(PathBuf, PathBuf)> {
    cfg.dip.validate()?;
    let device = cfg.run.device.device()?;
    let mut rng = backend::seeded(&device, cfg.run.seed);
    let (src, rows) = simulate::simulate_kind(&cfg.dip.simulate, cfg.run.seed, &mut rng);
    let grid = linspace(
        cfg.dip.wavelength_min,
        cfg.dip.wavelength_max,
        cfg.dip.resolution,
    );
    let files = recon::write_simulation(&rows, &src, &grid, out, cfg.run.seed)?;
    cfg.write_effective(out)?;
    Ok(files)
}

fn recon_to(
    g: &Global,
    cfg: &Config,
    input: &Path,
    truth: Option<&Path>,
    out: &Path,
) -> Result<serde_json::Value> {
    // Read the truth before fitting, so that a bad file fails in milliseconds.
    let grid = linspace(
        cfg.dip.wavelength_min,
        cfg.dip.wavelength_max,
        cfg.dip.resolution,
    );
    let known = truth.map(|t| recon::read_truth(t, &grid)).transpose()?;
    let mut r = recon::reconstruct(cfg, input, g.progress())?;
    if let (Some(t), Some(k)) = (truth, known) {
        recon::score_against(&mut r, t, k);
    }
    let files = recon::write_outputs(cfg, &mut r, out)
        .with_context(|| format!("writing outputs to {}", out.display()))?;
    let s = &r.summary;
    g.say(format!(
        "{}: {} observations used ({} read), solver {}, χ²/M = {:.3}, {:.1} s",
        input.display(),
        s.observations_used,
        s.qc.rows_read,
        s.solver,
        s.chi2_per_obs,
        s.seconds
    ));
    if let Some(t) = &s.tikhonov
        && (t.lambda_at_cap || t.lambda_at_floor)
    {
        g.say(format!(
            "warning: Tikhonov λ hit the {} of its range ({:.0e}); χ²/M = {:.3} instead of {}",
            if t.lambda_at_cap { "cap" } else { "floor" },
            t.lambda,
            t.chi2_per_obs,
            cfg.dip.tikhonov.target_chi2
        ));
    }
    if let Some(t) = &s.truth {
        let lines = |v: &[recon::LineScore]| -> String {
            v.iter()
                .map(|l| {
                    format!(
                        "{:.3} µm {:.3} (peak {:.2})",
                        l.wavelength, l.ratio, l.peak_ratio
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        g.say(format!(
            "vs {}: relative error of the written spectrum {:.2} % (smoothed to λ/R first: {:.2} %)",
            t.file,
            100.0 * t.relative_rms,
            100.0 * t.relative_rms_smoothed_output
        ));
        if let Some(b) = &t.baseline {
            g.say(format!(
                "  Tikhonov baseline: {:.2} % (smoothed: {:.2} %)",
                100.0 * b.relative_rms,
                100.0 * b.relative_rms_smoothed_output
            ));
        }
        match &t.lines_note {
            Some(n) => g.say(format!("  line ratios: {n}")),
            None => {
                g.say(format!(
                    "  feature flux recovered/true: {}",
                    lines(&t.lines)
                ));
                if let Some(b) = &t.baseline {
                    g.say(format!("  Tikhonov: {}", lines(&b.lines)));
                }
            }
        }
    }
    for f in &files {
        g.say(format!("wrote {}", f.display()));
    }
    Ok(serde_json::to_value(s)?)
}

/// The DIP part of `spx demo`: simulate a source, reconstruct it with a short run.
pub fn demo(g: &Global, cfg: &Config, out: &Path) -> Result<serde_json::Value> {
    let mut cfg = cfg.clone();
    // A converged fit (discrepancy stop) within the demo's one-minute budget on 2 CPU cores: a
    // 1000-pixel grid and 16 filters; `spx dip recon` runs the 3000-pixel default.
    cfg.dip.resolution = 1000;
    cfg.dip.filters = 16;
    cfg.dip.epochs = 1500;
    let out = out.join("dip");
    let (csv, truth) = simulate_to(&cfg, &out)?;
    recon_to(g, &cfg, &csv, Some(&truth), &out)
}
