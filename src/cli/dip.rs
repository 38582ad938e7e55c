//! `spx dip recon` and `spx dip simulate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;
use spx::config::Config;
use spx::dip::{catalog, pipeline};
use toml::Value;

use super::Global;

#[derive(Subcommand, Debug)]
pub enum DipCmd {
    /// Reconstruct a spectrum from a spxquery photometry CSV, or a catalog of sources (several
    /// CSVs, a directory of CSVs, or a CSV with a `source_id` column) into one HDF5 file.
    Recon(ReconArgs),
    /// Join the HDF5 files of `spx dip recon --shard K/N` runs into one catalog file.
    Merge(MergeArgs),
    /// Write a synthetic source (simulated.csv) and its true spectrum (truth.csv).
    Simulate(SimulateArgs),
}

#[derive(Args, Debug)]
pub struct ReconArgs {
    /// Photometry CSV (spxquery schema: flux, flux_error, wavelength, bandwidth, band, flag);
    /// several CSVs, a directory, or a CSV with a `source_id` column run the catalog mode.
    #[arg(required = true, num_args = 1..)]
    pub inputs: Vec<PathBuf>,
    /// Catalog mode: fit only shard K of N (sources i with i mod N = K−1), e.g. for a SLURM
    /// array; finished sources are kept in `catalog-parts/`, so a rerun resumes.
    #[arg(long, value_name = "K/N", value_parser = spx::dip::catalog::parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// Catalog mode: also write plots/<source>.png per source.
    #[arg(long)]
    pub plots: bool,
    /// Fits trained together per batch (overrides dip.batch_sources; 0 = auto).
    #[arg(long)]
    pub batch_sources: Option<usize>,
    /// dip | tikhonov (overrides dip.solver).
    #[arg(long)]
    pub solver: Option<String>,
    /// forward | pixel (overrides dip.train.loss_mode).
    #[arg(long)]
    pub loss_mode: Option<String>,
    /// Training epochs (overrides dip.train.epochs).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Number of ensemble members with seeds seed..seed+K−1 (overrides dip.ensemble).
    #[arg(long)]
    pub ensemble: Option<usize>,
    /// CWT L1 weight in scaled units (overrides dip.prior.cwt_weight).
    #[arg(long)]
    pub reg_weight: Option<f64>,
    /// A known spectrum (CSV with `wavelength`, `flux`, e.g. `spx dip simulate`'s truth.csv):
    /// report the relative error and line fluxes against it and draw it on the plot.
    #[arg(long)]
    pub truth: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Shard files written by `spx dip recon --shard K/N` (all N of them).
    #[arg(required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
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

/// The effective config with this subcommand's flags as one layer (checked like `--set`).
fn load(g: &Global, flags: Vec<super::Flag>) -> Result<Config> {
    g.setup_with(&[], flags)
}

pub fn run(g: &Global, cmd: &DipCmd) -> Result<ExitCode> {
    match cmd {
        DipCmd::Recon(a) => {
            let mut flags: Vec<super::Flag> = Vec::new();
            if let Some(s) = &a.solver {
                flags.push(("dip.solver", Value::String(s.clone()), "--solver"));
            }
            if let Some(s) = &a.loss_mode {
                flags.push((
                    "dip.train.loss_mode",
                    Value::String(s.clone()),
                    "--loss-mode",
                ));
            }
            if let Some(e) = a.epochs {
                flags.push(("dip.train.epochs", int(e), "--epochs"));
            }
            if let Some(k) = a.ensemble {
                flags.push(("dip.ensemble", int(k), "--ensemble"));
            }
            if let Some(w) = a.reg_weight {
                flags.push(("dip.prior.cwt_weight", Value::Float(w), "--reg-weight"));
            }
            if let Some(b) = a.batch_sources {
                flags.push(("dip.batch_sources", int(b), "--batch-sources"));
            }
            let cfg = load(g, flags)?;
            let sources = catalog::collect_sources(&a.inputs)?;
            let single = a.inputs.len() == 1
                && a.inputs[0].is_file()
                && sources.len() == 1
                && a.shard.is_none()
                && !a.plots;
            if single {
                let summary =
                    recon_to(g, &cfg, &a.inputs[0], a.truth.as_deref(), &cfg.run.out_dir)?;
                g.emit_json(&summary)?;
                return Ok(ExitCode::SUCCESS);
            }
            if a.truth.is_some() {
                anyhow::bail!("--truth scores one source; it is not available in catalog mode");
            }
            catalog_to(g, &cfg, &sources, a)
        }
        DipCmd::Merge(a) => {
            let cfg = g.setup()?;
            let out = cfg.run.out_dir.join(catalog::output_name(None));
            spx::io::ensure_dir(&cfg.run.out_dir)?;
            let n = catalog::merge(&a.files, &out)?;
            g.say(format!(
                "merged {} files, {n} sources: wrote {}",
                a.files.len(),
                out.display()
            ));
            g.emit_json(&json!({"file": out, "sources": n}))?;
            Ok(ExitCode::SUCCESS)
        }
        DipCmd::Simulate(a) => {
            let mut flags: Vec<super::Flag> = Vec::new();
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
    let files = pipeline::simulate_files(&cfg.dip, &cfg.run.device, cfg.run.seed, out)?;
    cfg.write_effective(out)?;
    Ok(files)
}

/// Catalog mode: exit 0 when every source was fitted, 1 when any failed (listed).
fn catalog_to(
    g: &Global,
    cfg: &Config,
    sources: &[catalog::SourceInput],
    a: &ReconArgs,
) -> Result<ExitCode> {
    let settings = catalog::CatalogSettings {
        dip: cfg.dip.clone(),
        device: cfg.run.device.clone(),
        seed: cfg.run.seed,
        shard: a.shard,
        plots: a.plots,
        out: cfg.run.out_dir.clone(),
    };
    spx::io::ensure_dir(&settings.out)?;
    let rep = catalog::run(&settings, sources, g.progress())?;
    cfg.write_effective(&settings.out)?;
    g.say(format!(
        "{} sources ({} resumed from catalog-parts/), {} fitted, {} failed, batch {}, {:.1} s",
        rep.sources,
        rep.resumed,
        rep.fitted,
        rep.failed.len(),
        rep.batch_sources,
        rep.seconds
    ));
    for (id, why) in &rep.failed {
        g.say(format!("failed: {id}: {why}"));
    }
    g.say(format!("wrote {}", rep.file.display()));
    g.emit_json(&rep)?;
    Ok(if rep.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn recon_to(
    g: &Global,
    cfg: &Config,
    input: &Path,
    truth: Option<&Path>,
    out: &Path,
) -> Result<serde_json::Value> {
    let paths = pipeline::SourcePaths { input, truth, out };
    let rep = pipeline::recon_one(
        &cfg.dip,
        &cfg.run.device,
        cfg.run.seed,
        paths,
        g.progress(),
        |d| cfg.write_effective(d),
    )?;
    let s = &rep.reconstruction.summary;
    if let Some(line) = pipeline::resumed_line(&rep.reconstruction) {
        g.say(line);
    }
    for line in pipeline::report_lines(s, cfg.dip.tikhonov.target_chi2, &rep.files) {
        g.say(line);
    }
    Ok(serde_json::to_value(s)?)
}

/// The DIP part of `spx demo`: simulate a source, reconstruct it with a short run.
pub fn demo(g: &Global, cfg: &Config, out: &Path) -> Result<serde_json::Value> {
    let mut cfg = cfg.clone();
    // A converged fit (discrepancy stop) within the demo's one-minute budget on 2 CPU cores: a
    // 1000-pixel grid and 16 filters; `spx dip recon` runs the 3000-pixel default.
    cfg.dip.resolution = 1000;
    cfg.dip.net.filters = 16;
    cfg.dip.train.epochs = 1500;
    let out = out.join("dip");
    let (csv, truth) = simulate_to(&cfg, &out)?;
    recon_to(g, &cfg, &csv, Some(&truth), &out)
}
