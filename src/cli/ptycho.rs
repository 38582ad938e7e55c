//! `spx ptycho …`: ptychography commands sharing the raw-NPZ data contract of `spx::ptycho`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use spx::config::Config;
use spx::io;
use spx::ptycho::pipeline::{self, Hooks, Loss};
use spx::ptycho::{self, PtychoConfig};

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
    /// Iterations (ptycho.epie.iterations, default 50).
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    pub iterations: Option<usize>,
    /// Object step (ptycho.epie.alpha, default 1).
    #[arg(long, allow_negative_numbers = true)]
    pub alpha: Option<f64>,
    /// Probe step (ptycho.epie.beta, default 0 = fixed probe).
    #[arg(long, allow_negative_numbers = true)]
    pub beta: Option<f64>,
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

/// Run `f` with the pipeline hooks of a command: its progress bars and messages, and
/// `spx-config.toml` (`cfg` with the sub-run's `[ptycho]` settings and seed) as the record.
fn with_hooks<T>(g: &Global, cfg: &Config, f: impl FnOnce(&Hooks) -> T) -> T {
    let say = |t: String| g.say(t);
    let record = |dir: &Path, p: &PtychoConfig, seed: u64| {
        let mut c = cfg.clone();
        c.ptycho = p.clone();
        c.run.seed = seed;
        c.write_effective(dir)
    };
    f(&Hooks {
        progress: g.progress(),
        say: &say,
        record: &record,
    })
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
    let (dir, seed) = (stage.dir(), cfg.run.seed);
    let mut s = with_hooks(g, &cfg, |h| {
        pipeline::simulate_into(&cfg.ptycho, seed, dir, &a.name, h)
    })?;
    let fin = |p: &str| stage.final_path(Path::new(p)).display().to_string();
    s.npz = fin(&s.npz);
    s.png = s.png.map(|p| fin(&p));
    s.config = fin(&s.config);
    stage.commit()?;
    g.say(format!(
        "simulated {} patterns of {}×{} in {:.2} s; mean counts/pattern {:.6e} (target {:.3e})",
        s.n_positions, s.n, s.n, s.seconds, s.mean_counts_per_pattern, s.nphotons
    ));
    let files = [Some(&s.npz), s.png.as_ref(), Some(&s.config)];
    say_scores(
        g,
        None,
        false,
        &files.into_iter().flatten().cloned().collect::<Vec<_>>(),
    );
    g.emit_json(&s)?;
    Ok(ExitCode::SUCCESS)
}

/// `spx demo` hook: [`ptycho::demo::run`] with this command's messages and config records.
pub fn demo(g: &Global, cfg: &Config, out: &Path) -> Result<ptycho::demo::DemoReport> {
    let (device, seed) = (&cfg.run.device, cfg.run.seed);
    Ok(with_hooks(g, cfg, |h| {
        ptycho::demo::run(&cfg.ptycho, seed, device, out, h)
    })?)
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
    let (seed, out, device) = (cfg.run.seed, &cfg.run.out_dir, &cfg.run.device);
    let s = with_hooks(g, &cfg, |h| {
        pipeline::train_file(&cfg.ptycho, seed, device, &a.data, out, a.resume, h)
    })?;
    g.say(format!(
        "trained on {} groups, {} epochs in {:.1} s; final loss {:.6e}; model in {}",
        s.groups, s.epochs_run, s.seconds, s.final_loss, s.model_dir
    ));
    g.emit_json(&s)?;
    Ok(ExitCode::SUCCESS)
}

/// The amplitude scores of a reconstruction (with the 255-peak PSNR for `infer`) and its files.
fn say_scores(g: &Global, m: Option<&ptycho::metrics::Metrics>, psnr_255: bool, files: &[String]) {
    if let Some(m) = m {
        let psnr = if psnr_255 {
            format!(
                "{:.2} dB (peak = max |O_true|) / {:.2} dB (peak 255)",
                m.amp_psnr_max, m.amp_psnr_255
            )
        } else {
            format!("{:.2} dB (peak max)", m.amp_psnr_max)
        };
        g.say(format!(
            "amplitude: MAE {:.4}, PSNR {psnr}, SSIM {:.4}, FRC50 {:.1}",
            m.amp_mae, m.amp_ssim, m.amp_frc50
        ));
    }
    for f in files {
        g.say(format!("wrote {f}"));
    }
}

fn infer_cmd(g: &Global, a: &InferArgs) -> Result<ExitCode> {
    let cfg = g.setup()?;
    let (seed, out, device) = (cfg.run.seed, &cfg.run.out_dir, &cfg.run.device);
    let r = with_hooks(g, &cfg, |h| {
        pipeline::infer_file(&cfg.ptycho, seed, device, &a.model, &a.data, out, h)
    })?;
    let (groups, secs) = (r.groups.unwrap_or(0), r.seconds);
    g.say(format!("reconstructed {groups} groups in {secs:.2} s"));
    say_scores(g, r.metrics.as_ref(), true, &r.files);
    g.emit_json(&r)?;
    Ok(ExitCode::SUCCESS)
}

fn epie_cmd(g: &Global, a: &EpieArgs) -> Result<ExitCode> {
    let cfg = g.setup_with(
        &[],
        flags([
            flag_count("ptycho.epie.iterations", a.iterations, "--iterations"),
            flag("ptycho.epie.alpha", a.alpha, "--alpha"),
            flag("ptycho.epie.beta", a.beta, "--beta"),
        ]),
    )?;
    let (seed, out) = (cfg.run.seed, &cfg.run.out_dir);
    let r = with_hooks(g, &cfg, |h| {
        pipeline::epie_file(&cfg.ptycho, seed, &a.data, out, h)
    })?;
    let errors = r.errors.as_deref().unwrap_or_default();
    let (e0, e1) = (errors.first(), errors.last());
    let (e0, e1) = (
        e0.copied().unwrap_or(f64::NAN),
        e1.copied().unwrap_or(f64::NAN),
    );
    let (n, secs) = (cfg.ptycho.epie.iterations, r.seconds);
    g.say(format!(
        "ePIE {n} iterations in {secs:.2} s; Fourier error {e0:.3e} → {e1:.3e}"
    ));
    say_scores(g, r.metrics.as_ref(), false, &r.files);
    g.emit_json(&r)?;
    Ok(ExitCode::SUCCESS)
}

fn dose_cmd(g: &Global, a: &DoseArgs) -> Result<ExitCode> {
    let profiles: &[&str] = if a.quick { &["quick"] } else { &[] };
    let doses = flag("ptycho.dose.doses", a.doses.clone(), "--doses");
    let cfg = g.setup_with(profiles, flags([doses]))?;
    let settings = ptycho::dose::DoseSettings {
        ptycho: cfg.ptycho.clone(),
        seed: cfg.run.seed,
        device: cfg.run.device.clone(),
        resume: a.resume,
    };
    let report = with_hooks(g, &cfg, |h| {
        ptycho::dose::study(&settings, &cfg.run.out_dir, h)
    })?;
    g.emit_json(&report)?;
    Ok(ExitCode::SUCCESS)
}
