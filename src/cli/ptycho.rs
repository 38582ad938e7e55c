//! `spx ptycho …`: ptychography commands sharing the raw-NPZ data contract of `spx::ptycho`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use spx::config::{Config, ConfigBuilder};
use spx::io;
use spx::ptycho::{self, RawData};
use toml::Value;

use super::Global;

#[derive(Subcommand, Debug)]
pub enum PtychoCmd {
    /// Simulate a scan with known ground truth (lines object, disk probe, Poisson diffraction)
    /// and write it as a raw NPZ (+ overview PNG).
    Simulate(SimulateArgs),
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Mean photons per diffraction pattern (overrides ptycho.simulate.nphotons).
    #[arg(long)]
    pub nphotons: Option<f64>,
    /// Number of scan positions (overrides ptycho.simulate.n_positions).
    #[arg(long)]
    pub positions: Option<usize>,
    /// Pattern/probe size N (overrides ptycho.simulate.n).
    #[arg(long = "size")]
    pub n: Option<usize>,
    /// Output NPZ name inside the output directory.
    #[arg(long, default_value = "ptycho_sim.npz")]
    pub name: String,
}

pub fn run(g: &Global, cmd: &PtychoCmd) -> Result<ExitCode> {
    match cmd {
        PtychoCmd::Simulate(a) => simulate(g, a),
    }
}

/// Apply command-specific flags on top of the effective config (highest precedence).
pub fn with_flags(cfg: Config, flags: &[(&str, Value, &str)]) -> Result<Config> {
    if flags.is_empty() {
        return Ok(cfg);
    }
    let table = toml::Table::try_from(&cfg).context("serialising the config")?;
    let mut b = ConfigBuilder::new()?.apply(table, "effective config")?;
    for (key, value, flag) in flags {
        b = b.flag(key, value.clone(), flag)?;
    }
    Ok(b.build()?)
}

#[derive(Serialize)]
struct SimulateSummary {
    npz: String,
    png: Option<String>,
    config: String,
    seed: u64,
    n_positions: usize,
    n: usize,
    object_size: usize,
    nphotons: f64,
    photon_scale: f64,
    mean_counts_per_pattern: f64,
    seconds: f64,
}

/// Simulate, write NPZ + PNG + effective config into `out`; `stem` names the files.
fn simulate_into(g: &Global, cfg: &Config, out: &Path, name: &str) -> Result<SimulateSummary> {
    io::ensure_dir(out)?;
    let sc = &cfg.ptycho.simulate;
    let t0 = std::time::Instant::now();
    let pb = g
        .progress()
        .bar(sc.n_positions as u64, "simulating diffraction");
    let sim = ptycho::simulate::simulate(sc, cfg.run.seed, &pb)?;
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    let npz = out.join(name);
    sim.save(&npz)?;
    let png = if sc.plot {
        let p: PathBuf = npz.with_extension("png");
        sim.plot(&p)?;
        Some(p.display().to_string())
    } else {
        None
    };
    let config = cfg.write_effective(out)?;
    Ok(SimulateSummary {
        npz: npz.display().to_string(),
        png,
        config: config.display().to_string(),
        seed: cfg.run.seed,
        n_positions: sc.n_positions,
        n: sc.n,
        object_size: sc.object_size,
        nphotons: sc.nphotons,
        photon_scale: sim.photon_scale,
        mean_counts_per_pattern: sim.mean_counts,
        seconds,
    })
}

fn simulate(g: &Global, a: &SimulateArgs) -> Result<ExitCode> {
    let mut flags: Vec<(&str, Value, &str)> = Vec::new();
    if let Some(v) = a.nphotons {
        flags.push(("ptycho.simulate.nphotons", Value::Float(v), "--nphotons"));
    }
    if let Some(v) = a.positions {
        flags.push((
            "ptycho.simulate.n_positions",
            Value::Integer(v as i64),
            "--positions",
        ));
    }
    if let Some(v) = a.n {
        flags.push(("ptycho.simulate.n", Value::Integer(v as i64), "--size"));
    }
    let cfg = with_flags(g.setup()?, &flags)?;
    let s = simulate_into(g, &cfg, &cfg.run.out_dir, &a.name)?;
    g.say(format!(
        "simulated {} patterns of {}×{} in {:.2} s; mean counts/pattern {:.6e} (target {:.3e})",
        s.n_positions, s.n, s.n, s.seconds, s.mean_counts_per_pattern, s.nphotons
    ));
    g.say(format!("wrote {}", s.npz));
    if let Some(p) = &s.png {
        g.say(format!("wrote {p}"));
    }
    g.say(format!("wrote {}", s.config));
    g.emit_json(&s)?;
    Ok(ExitCode::SUCCESS)
}

/// `spx demo` hook: a small simulation at 1e4 photons, read back through the loader and
/// grouped, so the whole data path runs end to end.
pub fn demo(g: &Global, cfg: &Config, out: &Path) -> Result<serde_json::Value> {
    let mut cfg = cfg.clone();
    cfg.ptycho.simulate.n_positions = 256;
    cfg.ptycho.simulate.nphotons = 1e4;
    let s = simulate_into(g, &cfg, &out.join("ptycho"), "ptycho_sim.npz")?;
    let raw = RawData::load(Path::new(&s.npz))?;
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(cfg.run.seed);
    let grouped = ptycho::grouping::group(
        raw.xcoords.as_slice().expect("contiguous"),
        raw.ycoords.as_slice().expect("contiguous"),
        raw.diffraction.view(),
        &cfg.ptycho.group,
        &mut rng,
    )?;
    Ok(serde_json::json!({
        "npz": s.npz,
        "png": s.png,
        "n_positions": s.n_positions,
        "nphotons": s.nphotons,
        "mean_counts_per_pattern": s.mean_counts_per_pattern,
        "groups": grouped.index.n_groups(),
        "diffraction_grouped_shape": grouped.diffraction.shape(),
        "seconds": s.seconds,
    }))
}
