//! `spx ptycho …`: ptychography commands sharing the raw-NPZ data contract of `spx::ptycho`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use spx::config::Config;
use spx::io;
use spx::ptycho::pipeline::{self, Hooks, Loss};
use spx::ptycho::{self, PtychoConfig, RawData, recon};
use toml::Value;

use super::{Global, flag, flag_count, flags};

#[derive(Subcommand, Debug)]
pub enum PtychoCmd {
    /// Simulate a scan with known ground truth (lines object, disk probe, Poisson diffraction)
    /// and write it as a raw NPZ (+ overview PNG).
    Simulate(SimulateArgs),
    /// Train the PtychoPINN network on a raw NPZ (writes model.bpk, model.json, history).
    Train(TrainArgs),
    /// Reconstruct a raw NPZ with a trained model, stitch, and score against objectGuess.
    Infer(InferArgs),
    /// ePIE baseline reconstruction of a raw NPZ (known probe).
    Epie(EpieArgs),
    /// Dose study: train/test at 1e9 and 1e4 photons, NLL vs MAE arms, 6-panel figure.
    DoseStudy(DoseArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training data (raw NPZ).
    #[arg(long)]
    pub data: PathBuf,
    /// Photons per pattern for the initial intensity scale (ptycho.pinn.nphotons; default:
    /// the NPZ's `nphotons` when present).
    #[arg(long)]
    pub nphotons: Option<f64>,
    /// Epochs (ptycho.pinn.train.epochs).
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    pub epochs: Option<usize>,
    /// Training loss (sets ptycho.pinn.train.nll_weight / mae_weight to 1/0).
    #[arg(long, value_enum)]
    pub loss: Option<Loss>,
    /// Continue from OUT/checkpoint (written after every epoch) when it holds a checkpoint of
    /// the same data and settings; the result equals an uninterrupted run. Also extends a
    /// finished run to a larger --epochs.
    #[arg(long)]
    pub resume: bool,
}

#[derive(Args, Debug)]
pub struct InferArgs {
    /// Model directory written by `spx ptycho train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Test data (raw NPZ).
    #[arg(long)]
    pub data: PathBuf,
}

#[derive(Args, Debug)]
pub struct EpieArgs {
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 50, allow_negative_numbers = true, value_parser = super::count)]
    pub iterations: usize,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub alpha: f64,
    /// Probe step (0 = fixed probe).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub beta: f64,
}

#[derive(Args, Debug)]
pub struct DoseArgs {
    /// Small run: the `quick` profile (configs/profiles/quick.toml: N=32, 512 train / 256 test
    /// positions on a 96² object, 20 epochs, narrow net, stitch crop 12).
    #[arg(long)]
    pub quick: bool,
    /// Continue each training arm from its OUT/<dose>/<loss>/checkpoint (written after every
    /// epoch) instead of restarting it; finished arms are not retrained.
    #[arg(long)]
    pub resume: bool,
    /// Photons per pattern, comma-separated (ptycho.dose.doses), e.g. 1e3,1e4,1e5,1e6,1e9.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub doses: Option<Vec<f64>>,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Mean photons per diffraction pattern (overrides ptycho.simulate.nphotons).
    #[arg(long)]
    pub nphotons: Option<f64>,
    /// Number of scan positions (overrides ptycho.simulate.n_positions).
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    pub positions: Option<usize>,
    /// Pattern/probe size N (overrides ptycho.simulate.n).
    #[arg(long = "size", allow_negative_numbers = true, value_parser = super::count)]
    pub n: Option<usize>,
    /// Output NPZ name inside the output directory.
    #[arg(long, default_value = "ptycho_sim.npz")]
    pub name: String,
}

pub fn run(g: &Global, cmd: &PtychoCmd) -> Result<ExitCode> {
    match cmd {
        PtychoCmd::Simulate(a) => simulate(g, a),
        PtychoCmd::Train(a) => train_cmd(g, a),
        PtychoCmd::Infer(a) => infer_cmd(g, a),
        PtychoCmd::Epie(a) => epie_cmd(g, a),
        PtychoCmd::DoseStudy(a) => dose_cmd(g, a),
    }
}

/// The pipeline hooks of a command: its progress bars and messages, and `spx-config.toml`
/// (the command's config with the sub-run's `[ptycho]` settings and seed) as the record.
fn hooks<'a>(
    g: &Global,
    say: &'a dyn Fn(String),
    record: &'a dyn Fn(&Path, &PtychoConfig, u64) -> Result<PathBuf, spx::SpxError>,
) -> Hooks<'a> {
    Hooks {
        progress: g.progress(),
        say,
        record,
    }
}

/// `record` for [`hooks`]: `cfg` with `p` and `seed` written as the effective config of `dir`.
fn recorder(cfg: &Config) -> impl Fn(&Path, &PtychoConfig, u64) -> Result<PathBuf, spx::SpxError> {
    move |dir, p, seed| {
        let mut c = cfg.clone();
        c.ptycho = p.clone();
        c.run.seed = seed;
        c.write_effective(dir)
    }
}

fn simulate(g: &Global, a: &SimulateArgs) -> Result<ExitCode> {
    io::atomic::check_file_name(&a.name, "--name")?;
    let cfg = g.setup_with(
        &[],
        flags([
            flag("ptycho.simulate.nphotons", a.nphotons, "--nphotons"),
            flag_count("ptycho.simulate.n_positions", a.positions, "--positions"),
            flag_count("ptycho.simulate.n", a.n, "--size"),
        ]),
    )?;
    let stage = io::atomic::Stage::begin(&cfg.run.out_dir)?;
    let (say, record) = (|t: String| g.say(t), recorder(&cfg));
    let h = hooks(g, &say, &record);
    let mut s = pipeline::simulate_into(&cfg.ptycho, cfg.run.seed, stage.dir(), &a.name, &h)?;
    let fin = |p: &str| stage.final_path(Path::new(p)).display().to_string();
    s.npz = fin(&s.npz);
    s.png = s.png.map(|p| fin(&p));
    s.config = fin(&s.config);
    stage.commit()?;
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
/// grouped, so the whole data path runs end to end; then the small PINN run.
pub fn demo(g: &Global, cfg: &Config, out: &Path) -> Result<serde_json::Value> {
    let (say, record) = (|t: String| g.say(t), recorder(cfg));
    let h = hooks(g, &say, &record);
    let dir = out.join("ptycho");
    let s = pipeline::simulate_into(&cfg.ptycho, cfg.run.seed, &dir, "ptycho_sim.npz", &h)?;
    let raw = RawData::load(Path::new(&s.npz))?;
    let grouped = recon::prepare(&raw, &cfg.ptycho.group, cfg.run.seed)?;
    let pinn = demo_pinn(g, cfg, &out.join("ptycho_pinn"))?;
    Ok(serde_json::json!({
        "pinn": pinn,
        "npz": s.npz,
        "png": s.png,
        "n_positions": s.n_positions,
        "nphotons": s.nphotons,
        "mean_counts_per_pattern": s.mean_counts_per_pattern,
        "groups": grouped.len(),
        "diffraction_grouped_shape": [grouped.len(), grouped.n, grouped.n, grouped.c],
        "seconds": s.seconds,
    }))
}

fn train_cmd(g: &Global, a: &TrainArgs) -> Result<ExitCode> {
    let nphotons = a.nphotons.or_else(|| pipeline::npz_nphotons(&a.data));
    let (nll, mae) = a.loss.map(Loss::weights).unzip();
    let cfg = g.setup_with(
        &[],
        flags([
            flag("ptycho.pinn.nphotons", nphotons, "--nphotons"),
            flag_count("ptycho.pinn.train.epochs", a.epochs, "--epochs"),
            flag("ptycho.pinn.train.nll_weight", nll, "--loss"),
            flag("ptycho.pinn.train.mae_weight", mae, "--loss"),
        ]),
    )?;
    let out = cfg.run.out_dir.clone();
    let stage = io::atomic::Stage::begin(&out)?.inputs([a.data.as_path()]);
    let raw = RawData::load(&a.data)?;
    ptycho::train::check_pattern_size(raw.n())
        .map_err(|e| spx::SpxError::field(&a.data, raw.diffraction_key.as_str(), e))?;
    let data_id = io::atomic::file_checksum(&a.data)?;
    let ck = ptycho::train::Checkpointing {
        dir: out.join("checkpoint"),
        fingerprint: pipeline::fingerprint(&cfg.ptycho, cfg.run.seed, &data_id),
        resume: a.resume,
    };
    let (say, record) = (|t: String| g.say(t), recorder(&cfg));
    let h = hooks(g, &say, &record);
    let device = cfg.run.device.clone();
    let (seed, dir) = (cfg.run.seed, stage.dir());
    let (_, _, mut s) = pipeline::train_into(&cfg.ptycho, seed, &device, &raw, dir, Some(&ck), &h)?;
    s.model_dir = out.display().to_string();
    stage.commit()?;
    g.say(format!(
        "trained on {} groups, {} epochs in {:.1} s; final loss {:.6e}; model in {}",
        s.groups, s.epochs_run, s.seconds, s.final_loss, s.model_dir
    ));
    g.emit_json(&s)?;
    Ok(ExitCode::SUCCESS)
}

/// Final names of staged files (for messages and the JSON summary).
fn final_names(stage: &io::atomic::Stage, files: Vec<String>) -> Vec<String> {
    files
        .iter()
        .map(|f| stage.final_path(Path::new(f)).display().to_string())
        .collect()
}

fn infer_cmd(g: &Global, a: &InferArgs) -> Result<ExitCode> {
    let cfg = g.setup()?;
    let weights = a.model.join(ptycho::train::WEIGHTS);
    let stage =
        io::atomic::Stage::begin(&cfg.run.out_dir)?.inputs([a.data.as_path(), weights.as_path()]);
    let t0 = std::time::Instant::now();
    let (say, record) = (|t: String| g.say(t), recorder(&cfg));
    let h = hooks(g, &say, &record);
    let device = cfg.run.device.clone();
    let (r, groups) = pipeline::infer(&cfg.ptycho, cfg.run.seed, &device, &a.model, &a.data, &h)?;
    let files = recon::write_recon(stage.dir(), "pinn_recon", &r)?;
    cfg.write_effective(stage.dir())?;
    let files = final_names(&stage, files);
    stage.commit()?;
    let secs = t0.elapsed().as_secs_f64();
    g.say(format!("reconstructed {groups} groups in {secs:.2} s"));
    if let Some(m) = &r.metrics {
        g.say(format!(
            "amplitude: MAE {:.4}, PSNR {:.2} dB (peak = max |O_true|) / {:.2} dB (peak 255), SSIM {:.4}, FRC50 {:.1}",
            m.amp_mae, m.amp_psnr_max, m.amp_psnr_255, m.amp_ssim, m.amp_frc50
        ));
    }
    for f in &files {
        g.say(format!("wrote {f}"));
    }
    g.emit_json(&serde_json::json!({"files": files, "groups": groups, "seconds": secs, "metrics": r.metrics}))?;
    Ok(ExitCode::SUCCESS)
}

fn epie_cmd(g: &Global, a: &EpieArgs) -> Result<ExitCode> {
    let cfg = g.setup()?;
    let stage = io::atomic::Stage::begin(&cfg.run.out_dir)?.inputs([a.data.as_path()]);
    let raw = RawData::load(&a.data)?;
    let t0 = std::time::Instant::now();
    let ec = ptycho::epie::EpieConfig {
        iterations: a.iterations,
        alpha: a.alpha,
        beta: a.beta,
    };
    let (say, record) = (|t: String| g.say(t), recorder(&cfg));
    let h = hooks(g, &say, &record);
    let (rec, errors) = pipeline::epie(&raw, &ec, cfg.run.seed, &h)
        .with_context(|| a.data.display().to_string())?;
    let files = recon::write_recon(stage.dir(), "epie_recon", &rec)?;
    cfg.write_effective(stage.dir())?;
    let files = final_names(&stage, files);
    stage.commit()?;
    let secs = t0.elapsed().as_secs_f64();
    g.say(format!(
        "ePIE {} iterations in {secs:.2} s; Fourier error {:.3e} → {:.3e}",
        a.iterations,
        errors.first().copied().unwrap_or(f64::NAN),
        errors.last().copied().unwrap_or(f64::NAN)
    ));
    if let Some(m) = &rec.metrics {
        g.say(format!(
            "amplitude: MAE {:.4}, PSNR {:.2} dB (peak max), SSIM {:.4}, FRC50 {:.1}",
            m.amp_mae, m.amp_psnr_max, m.amp_ssim, m.amp_frc50
        ));
    }
    for f in &files {
        g.say(format!("wrote {f}"));
    }
    g.emit_json(&serde_json::json!({"files": files, "errors": errors, "seconds": secs, "metrics": rec.metrics}))?;
    Ok(ExitCode::SUCCESS)
}

fn dose_cmd(g: &Global, a: &DoseArgs) -> Result<ExitCode> {
    let doses = a
        .doses
        .as_ref()
        .map(|d| Value::Array(d.iter().map(|x| Value::Float(*x)).collect()));
    let profiles: &[&str] = if a.quick { &["quick"] } else { &[] };
    let cfg = g.setup_with(
        profiles,
        flags([flag("ptycho.dose.doses", doses, "--doses")]),
    )?;
    let settings = ptycho::dose::DoseSettings {
        ptycho: cfg.ptycho.clone(),
        seed: cfg.run.seed,
        device: cfg.run.device.clone(),
        resume: a.resume,
    };
    let (say, record) = (|t: String| g.say(t), recorder(&cfg));
    let report = ptycho::dose::study(&settings, &cfg.run.out_dir, &hooks(g, &say, &record))?;
    g.emit_json(&report)?;
    Ok(ExitCode::SUCCESS)
}

/// Small PINN run for `spx demo` (N = 16, 64 positions, narrow net, 4 epochs; seconds on CPU):
/// simulate → train → infer/stitch/score.
fn demo_pinn(g: &Global, cfg: &Config, out: &Path) -> Result<serde_json::Value> {
    let mut c = cfg.clone();
    c.ptycho = pipeline::demo_pinn_settings(&cfg.ptycho);
    let (say, record) = (|t: String| g.say(t), recorder(&c));
    let h = hooks(g, &say, &record);
    let device = c.run.device.clone();
    let (train, files, r) = pipeline::pinn_demo(&c.ptycho, c.run.seed, &device, out, &h)?;
    if let Some(m) = &r.metrics {
        g.say(format!(
            "ptycho PINN demo (N 16, {} epochs, scored on its scan): amplitude SSIM {:.3}, \
             PSNR {:.2} dB, FRC50 {:.1} on a {} px window",
            train.epochs_run, m.amp_ssim, m.amp_psnr_max, m.amp_frc50, r.covered
        ));
    }
    Ok(serde_json::json!({
        "train": train,
        "files": files,
        "metrics": r.metrics,
    }))
}
