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
    /// Loss: "nll" or "mae" (sets the two weights to 1/0).
    #[arg(long)]
    pub loss: Option<String>,
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
    /// Small run with the sizes of `[ptycho.dose.quick]` (default: N=32, 512 train / 256 test
    /// positions on a 96² object, 20 epochs, narrow net, stitch crop 12).
    #[arg(long)]
    pub quick: bool,
    /// Continue each training arm from its OUT/<dose>/<loss>/checkpoint (written after every
    /// epoch) instead of restarting it; finished arms are not retrained.
    #[arg(long)]
    pub resume: bool,
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
    io::atomic::check_file_name(&a.name, "--name")?;
    let cfg = with_flags(g.setup()?, &flags)?;
    let stage = io::atomic::Stage::begin(&cfg.run.out_dir)?;
    let mut s = simulate_into(g, &cfg, stage.dir(), &a.name)?;
    s.npz = stage.final_path(Path::new(&s.npz)).display().to_string();
    s.png = s
        .png
        .map(|p| stage.final_path(Path::new(&p)).display().to_string());
    s.config = stage.final_path(Path::new(&s.config)).display().to_string();
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
    let pinn = demo_pinn(g, &cfg, &out.join("ptycho_pinn"))?;
    Ok(serde_json::json!({
        "pinn": pinn,
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

fn npz_nphotons(path: &Path) -> Option<f64> {
    let mut f = io::npz::NpzFile::open(path).ok()?;
    if !f.contains("nphotons") {
        return None;
    }
    f.real_f64("nphotons").ok()?.iter().next().copied()
}

fn loss_weights(loss: &str) -> Result<(f64, f64)> {
    match loss {
        "nll" => Ok((1.0, 0.0)),
        "mae" => Ok((0.0, 1.0)),
        o => anyhow::bail!("--loss `{o}`: expected nll or mae"),
    }
}

#[derive(Serialize)]
struct TrainSummary {
    model_dir: String,
    groups: usize,
    epochs_run: usize,
    stopped_early: bool,
    final_loss: f64,
    final_val_loss: Option<f64>,
    intensity_scale_init: f64,
    intensity_scale_final: f64,
    seconds: f64,
}

/// Train on `raw`, write the model directory (weights, sizes, history JSON + PNG).
fn train_into(
    g: &Global,
    cfg: &Config,
    raw: &RawData,
    out: &Path,
    ck: Option<&ptycho::train::Checkpointing>,
) -> Result<(
    ptycho::train::Trained,
    ptycho::train::PinnData,
    TrainSummary,
)> {
    let t0 = std::time::Instant::now();
    ptycho::train::check_pattern_size(raw.n())?;
    let data = ptycho::dose::prepare(raw, &cfg.ptycho.group, cfg.run.seed)?;
    let spec: spx::backend::DeviceSpec = cfg.run.device.clone();
    let dev = spec.autodiff_device()?;
    let pb = g.progress().bar(1, "training PtychoPINN");
    let t = ptycho::train::train_with(
        &cfg.ptycho.pinn,
        &data,
        &raw.probe,
        &dev,
        cfg.run.seed,
        &pb,
        ck,
    )?;
    pb.finish_and_clear();
    ptycho::train::save_model(&t.model, &t.shape, out)?;
    let hist = serde_json::to_vec_pretty(&t.history)?;
    io::write_atomic(&out.join("history.json"), |w| {
        std::io::Write::write_all(w, &hist)
    })?;
    let ep: Vec<f64> = t.history.iter().map(|r| r.epoch as f64).collect();
    let mut lp = io::plot::LinePlot::new("PtychoPINN training", "epoch", "loss");
    lp.series.push(io::plot::Series::line(
        "train",
        ep.clone(),
        t.history.iter().map(|r| r.loss).collect(),
    ));
    if t.history.iter().all(|r| r.val_loss.is_finite()) {
        lp.series.push(io::plot::Series::line(
            "validation",
            ep,
            t.history.iter().map(|r| r.val_loss).collect(),
        ));
    }
    if t.history.iter().all(|r| r.loss > 0.0) {
        lp.log_y = true;
    }
    io::plot::line_plot(&out.join("history.png"), &lp)?;
    cfg.write_effective(out)?;
    let last = t
        .history
        .last()
        .context("no epoch ran (ptycho.pinn.train.epochs = 0)")?;
    let s = TrainSummary {
        model_dir: out.display().to_string(),
        groups: data.len(),
        epochs_run: t.history.len(),
        stopped_early: t.stopped_early,
        final_loss: last.loss,
        final_val_loss: last.val_loss.is_finite().then_some(last.val_loss),
        intensity_scale_init: t.shape.intensity_scale,
        intensity_scale_final: last.intensity_scale,
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((t, data, s))
}

/// What a `ptycho train` checkpoint must agree with to be resumed: the data file's content and
/// every setting that shapes training except the epoch count (and the device string).
fn train_fingerprint(cfg: &Config, data_id: &str) -> Result<String> {
    let mut p = cfg.ptycho.pinn.clone();
    p.train.epochs = 0;
    Ok(format!(
        "data {data_id} seed {} pinn {} group {}",
        cfg.run.seed,
        serde_json::to_string(&p)?,
        serde_json::to_string(&cfg.ptycho.group)?
    ))
}

fn train_cmd(g: &Global, a: &TrainArgs) -> Result<ExitCode> {
    let mut flags: Vec<(&str, Value, &str)> = Vec::new();
    let nph = a.nphotons.or_else(|| npz_nphotons(&a.data));
    if let Some(v) = nph {
        flags.push(("ptycho.pinn.nphotons", Value::Float(v), "--nphotons"));
    }
    if let Some(v) = a.epochs {
        flags.push((
            "ptycho.pinn.train.epochs",
            Value::Integer(v as i64),
            "--epochs",
        ));
    }
    if let Some(l) = &a.loss {
        let (n, m) = loss_weights(l)?;
        flags.push(("ptycho.pinn.train.nll_weight", Value::Float(n), "--loss"));
        flags.push(("ptycho.pinn.train.mae_weight", Value::Float(m), "--loss"));
    }
    let cfg = with_flags(g.setup()?, &flags)?;
    let out = cfg.run.out_dir.clone();
    let stage = io::atomic::Stage::begin(&out)?.inputs([a.data.as_path()]);
    let raw = RawData::load(&a.data)?;
    ptycho::train::check_pattern_size(raw.n())
        .map_err(|e| spx::SpxError::field(&a.data, raw.diffraction_key.as_str(), e))?;
    let ck = ptycho::train::Checkpointing {
        dir: out.join("checkpoint"),
        fingerprint: train_fingerprint(&cfg, &io::atomic::file_checksum(&a.data)?)?,
        resume: a.resume,
    };
    let (_, _, mut s) = train_into(g, &cfg, &raw, stage.dir(), Some(&ck))?;
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

/// Write the reconstruction NPZ + PNG (+ metrics JSON) into `out` with file stem `stem`.
fn write_recon(out: &Path, stem: &str, r: &ptycho::dose::Recon) -> Result<Vec<String>> {
    use io::npz::NpzArray;
    use io::plot::{ColorMap, ImageGrid, Panel};
    io::ensure_dir(out)?;
    let npz = out.join(format!("{stem}.npz"));
    let mut arrays = vec![
        ("object", NpzArray::C64(r.object.clone().into_dyn())),
        (
            "centre_xy",
            NpzArray::F64(ndarray::arr1(&[r.centre.0, r.centre.1]).into_dyn()),
        ),
    ];
    if let Some(t) = &r.truth {
        arrays.push(("truth", NpzArray::C64(t.clone().into_dyn())));
    }
    io::npz::write_npz(&npz, &arrays, true)?;
    let mut panels = vec![
        Panel::new(
            "|O| reconstructed",
            r.object.mapv(|z| z.norm() as f64),
            ColorMap::Gray,
        ),
        Panel::new(
            "arg O reconstructed",
            r.object.mapv(|z| z.arg() as f64),
            ColorMap::Phase,
        ),
    ];
    if let Some(t) = &r.truth {
        panels.push(Panel::new(
            "|O| truth",
            t.mapv(|z| z.norm() as f64),
            ColorMap::Gray,
        ));
    }
    let png = out.join(format!("{stem}.png"));
    io::plot::image_grid(
        &png,
        &ImageGrid {
            title: stem.to_string(),
            ncols: panels.len(),
            panels,
            cell: (420, 400),
        },
    )?;
    let mut files = vec![npz.display().to_string(), png.display().to_string()];
    if let Some(m) = &r.metrics {
        let p = out.join(format!("{stem}_metrics.json"));
        let j = serde_json::to_vec_pretty(m)?;
        io::write_atomic(&p, |w| std::io::Write::write_all(w, &j))?;
        files.push(p.display().to_string());
    }
    Ok(files)
}

fn infer_cmd(g: &Global, a: &InferArgs) -> Result<ExitCode> {
    let cfg = g.setup()?;
    let stage = io::atomic::Stage::begin(&cfg.run.out_dir)?.inputs([
        a.data.as_path(),
        a.model.join(ptycho::train::WEIGHTS).as_path(),
    ]);
    let t0 = std::time::Instant::now();
    let spec: spx::backend::DeviceSpec = cfg.run.device.clone();
    let dev = spec.device()?;
    let (model, shape) = ptycho::train::load_model(&a.model, &dev)?;
    let raw = RawData::load(&a.data)?;
    let mut gc = cfg.ptycho.group.clone();
    gc.gridsize = shape.gridsize;
    let data = ptycho::dose::prepare(&raw, &gc, cfg.run.seed)?;
    if data.n != shape.n {
        anyhow::bail!(
            "{}: patterns are {}×{} but the model in {} was trained for N = {}",
            a.data.display(),
            data.n,
            data.n,
            a.model.display(),
            shape.n
        );
    }
    let pb = g.progress().bar(data.len() as u64, "inferring");
    let r = ptycho::dose::reconstruct(&model, &shape, &data, &raw, &cfg.ptycho.pinn, 64, &dev, &pb);
    pb.finish_and_clear();
    let files = write_recon(stage.dir(), "pinn_recon", &r)?;
    cfg.write_effective(stage.dir())?;
    let files = final_names(&stage, files);
    stage.commit()?;
    let secs = t0.elapsed().as_secs_f64();
    g.say(format!(
        "reconstructed {} groups in {secs:.2} s",
        data.len()
    ));
    if let Some(m) = &r.metrics {
        g.say(format!(
            "amplitude: MAE {:.4}, PSNR {:.2} dB (peak = max |O_true|) / {:.2} dB (peak 255), SSIM {:.4}, FRC50 {:.1}",
            m.amp_mae, m.amp_psnr_max, m.amp_psnr_255, m.amp_ssim, m.amp_frc50
        ));
    }
    for f in &files {
        g.say(format!("wrote {f}"));
    }
    g.emit_json(&serde_json::json!({"files": files, "groups": data.len(), "seconds": secs, "metrics": r.metrics}))?;
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
    let pb = g.progress().bar(a.iterations as u64, "ePIE");
    let (rec, r) = ptycho::dose::epie_reconstruct(&raw, &ec, None, cfg.run.seed, &pb)
        .with_context(|| a.data.display().to_string())?;
    pb.finish_and_clear();
    let files = write_recon(stage.dir(), "epie_recon", &rec)?;
    cfg.write_effective(stage.dir())?;
    let files = final_names(&stage, files);
    stage.commit()?;
    let secs = t0.elapsed().as_secs_f64();
    g.say(format!(
        "ePIE {} iterations in {secs:.2} s; Fourier error {:.3e} → {:.3e}",
        a.iterations,
        r.errors.first().copied().unwrap_or(f64::NAN),
        r.errors.last().copied().unwrap_or(f64::NAN)
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
    g.emit_json(&serde_json::json!({"files": files, "errors": r.errors, "seconds": secs, "metrics": rec.metrics}))?;
    Ok(ExitCode::SUCCESS)
}

/// Apply the `--quick` sizes of `[ptycho.dose.quick]`.
fn quick(cfg: &mut Config) {
    let q = cfg.ptycho.dose.quick.clone();
    let s = &mut cfg.ptycho.simulate;
    s.n = q.n;
    s.object_size = q.object_size;
    s.nlines = q.nlines;
    s.buffer = q.buffer;
    s.probe_scale = q.probe_scale;
    let p = &mut cfg.ptycho.pinn;
    p.stitch_crop = q.stitch_crop;
    p.model.filters_base = q.filters_base;
    p.model.border_filters = q.border_filters;
    p.train.epochs = q.epochs;
    cfg.ptycho.dose.n_train = q.n_train;
    cfg.ptycho.dose.n_test = q.n_test;
}

fn dose_cmd(g: &Global, a: &DoseArgs) -> Result<ExitCode> {
    let mut cfg = g.setup()?;
    io::atomic::Stage::begin(&cfg.run.out_dir)?; // an unwritable OUT fails now, not after hours
    if a.quick {
        quick(&mut cfg);
    }
    let summary = dose_study(g, &cfg, &cfg.run.out_dir.clone(), a.resume)?;
    g.emit_json(&summary)?;
    Ok(ExitCode::SUCCESS)
}

/// The four-arm study into `out`; returns the JSON summary.
fn dose_study(g: &Global, cfg: &Config, out: &Path, resume: bool) -> Result<serde_json::Value> {
    let (n_train, n_test) = (cfg.ptycho.dose.n_train, cfg.ptycho.dose.n_test);
    use ptycho::dose::{Arm, Recon};
    let t0 = std::time::Instant::now();
    let cpu0 = cpu_seconds();
    io::ensure_dir(out)?;
    let mut rows_data: Vec<(f64, ndarray::Array2<f64>, Recon, Recon, Arm, Arm)> = vec![];
    let mut epie_arms: Vec<Arm> = vec![];
    let spec: spx::backend::DeviceSpec = cfg.run.device.clone();
    for nph in [1e9, 1e4] {
        let tag = format!("{nph:.0e}");
        let mut c = cfg.clone();
        c.ptycho.simulate.nphotons = nph;
        c.ptycho.simulate.plot = false;
        c.ptycho.pinn.nphotons = nph;
        let mut ct = c.clone();
        ct.ptycho.simulate.n_positions = n_train;
        let tr = simulate_into(g, &ct, &out.join(&tag), "train.npz")?;
        let mut cs = c.clone();
        cs.ptycho.simulate.n_positions = n_test;
        cs.run.seed = c.run.seed + 1;
        let te = simulate_into(g, &cs, &out.join(&tag), "test.npz")?;
        let train_raw = RawData::load(Path::new(&tr.npz))?;
        let test_raw = RawData::load(Path::new(&te.npz))?;
        let mut arms = vec![];
        for loss in ["mae", "nll"] {
            let mut ca = c.clone();
            let (wn, wm) = loss_weights(loss)?;
            ca.ptycho.pinn.train.nll_weight = wn;
            ca.ptycho.pinn.train.mae_weight = wm;
            let dir = out.join(&tag).join(loss);
            let ck = ptycho::train::Checkpointing {
                dir: dir.join("checkpoint"),
                // the training scan is re-simulated: identify it by how it was made
                fingerprint: train_fingerprint(
                    &ca,
                    &format!(
                        "simulated {} seed {}",
                        serde_json::to_string(&ct.ptycho.simulate)?,
                        ct.run.seed
                    ),
                )?,
                resume,
            };
            let (t, _, s) = train_into(g, &ca, &train_raw, &dir, Some(&ck))?;
            let dev = spec.device()?;
            let model = burn::module::Module::valid(&t.model);
            let test = ptycho::dose::prepare(&test_raw, &ca.ptycho.group, ca.run.seed)?;
            let pb = g.progress().bar(test.len() as u64, "inferring");
            let r = ptycho::dose::reconstruct(
                &model,
                &t.shape,
                &test,
                &test_raw,
                &ca.ptycho.pinn,
                64,
                &dev,
                &pb,
            );
            pb.finish_and_clear();
            write_recon(&dir, "pinn_recon", &r)?;
            let arm = Arm {
                nphotons: nph,
                method: "PINN".into(),
                loss: loss.to_uppercase(),
                epochs_run: s.epochs_run,
                final_loss: s.final_loss,
                train_seconds: s.seconds,
                metrics: r.metrics.clone(),
            };
            g.say(format!(
                "{tag} {loss}: {} epochs in {:.1} s; amp PSNR {} SSIM {} FRC50 {}",
                arm.epochs_run,
                arm.train_seconds,
                r.metrics
                    .as_ref()
                    .map_or("-".into(), |m| format!("{:.2} dB", m.amp_psnr_max)),
                r.metrics
                    .as_ref()
                    .map_or("-".into(), |m| format!("{:.3}", m.amp_ssim)),
                r.metrics
                    .as_ref()
                    .map_or("-".into(), |m| format!("{:.1}", m.amp_frc50)),
            ));
            arms.push((r, arm));
        }
        let d0 = test_raw
            .diffraction
            .index_axis(ndarray::Axis(0), 0)
            .mapv(|v| {
                ((v as f64) * te.photon_scale.max(1e-300)).powi(2).ln_1p() / std::f64::consts::LN_10
            });
        let (nll, mae) = (arms.pop().expect("nll arm"), arms.pop().expect("mae arm"));
        let iters = cfg.ptycho.dose.epie_iterations;
        if iters > 0 {
            // scored on the NLL arm's covered square, so all arms see the same pixels
            let ec = ptycho::epie::EpieConfig {
                iterations: iters,
                alpha: 1.0,
                beta: 0.0,
            };
            let t1 = std::time::Instant::now();
            let pb = g.progress().bar(iters as u64, "ePIE");
            let region = (nll.0.covered > 11).then_some((nll.0.centre, nll.0.covered));
            let (rec, r) = ptycho::dose::epie_reconstruct(&test_raw, &ec, region, c.run.seed, &pb)?;
            pb.finish_and_clear();
            write_recon(&out.join(&tag).join("epie"), "epie_recon", &rec)?;
            let arm = Arm {
                nphotons: nph,
                method: "ePIE".into(),
                loss: "-".into(),
                epochs_run: iters,
                final_loss: r.errors.last().copied().unwrap_or(f64::NAN),
                train_seconds: t1.elapsed().as_secs_f64(),
                metrics: rec.metrics.clone(),
            };
            g.say(format!(
                "{tag} ePIE: {iters} iterations in {:.1} s; amp SSIM {}",
                arm.train_seconds,
                rec.metrics
                    .as_ref()
                    .map_or("-".into(), |m| format!("{:.3}", m.amp_ssim)),
            ));
            epie_arms.push(arm);
        }
        rows_data.push((nph, d0, mae.0, nll.0, mae.1, nll.1));
    }
    let fig = out.join("dose_study.png");
    let rows: Vec<_> = rows_data
        .iter()
        .map(|(n, d, rm, rn, am, an)| (*n, d.clone(), rm, rn, am, an))
        .collect();
    ptycho::dose::dose_figure(&fig, &rows)?;
    let mut arms: Vec<&Arm> = rows_data.iter().flat_map(|r| [&r.4, &r.5]).collect();
    arms.extend(epie_arms.iter());
    let csv = out.join("dose_metrics.csv");
    let text = ptycho::dose::metrics_csv(&arms);
    io::write_atomic(&csv, |w| std::io::Write::write_all(w, text.as_bytes()))?;
    let summary = serde_json::json!({
        "figure": fig.display().to_string(),
        "metrics_csv": csv.display().to_string(),
        "arms": arms,
        "wall_seconds": t0.elapsed().as_secs_f64(),
        "cpu_seconds": cpu_seconds() - cpu0,
        "n_train": n_train,
        "n_test": n_test,
        "n": cfg.ptycho.simulate.n,
    });
    let p = out.join("dose_study.json");
    let j = serde_json::to_vec_pretty(&summary)?;
    io::write_atomic(&p, |w| std::io::Write::write_all(w, &j))?;
    cfg.write_effective(out)?;
    g.say(format!(
        "wrote {}, {} and {}",
        fig.display(),
        p.display(),
        csv.display()
    ));
    Ok(summary)
}

/// Process CPU time (user + system) from /proc/self/stat; 0 where unavailable.
fn cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(rest) = s.rsplit(')').next() else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Small PINN run for `spx demo` (N = 16, 64 positions, narrow net, 4 epochs; seconds on CPU):
/// simulate → train → infer/stitch/score, plus ePIE on the same data.
fn demo_pinn(g: &Global, cfg: &Config, out: &Path) -> Result<serde_json::Value> {
    let mut c = cfg.clone();
    let s = &mut c.ptycho.simulate;
    s.n = 16;
    s.object_size = 40;
    s.nlines = 30;
    s.buffer = 8.0;
    s.n_positions = 64;
    s.nphotons = 1e6;
    s.plot = false;
    c.ptycho.group.neighbor_count = 4;
    let p = &mut c.ptycho.pinn;
    p.nphotons = 1e6;
    p.stitch_crop = 8;
    p.model.filters_base = 8;
    p.model.border_filters = 4;
    p.train.epochs = 4;
    let sim = simulate_into(g, &c, out, "sim.npz")?;
    let raw = RawData::load(Path::new(&sim.npz))?;
    let (t, _, ts) = train_into(g, &c, &raw, &out.join("model"), None)?;
    let spec: spx::backend::DeviceSpec = c.run.device.clone();
    let dev = spec.device()?;
    let model = burn::module::Module::valid(&t.model);
    let data = ptycho::dose::prepare(&raw, &c.ptycho.group, c.run.seed)?;
    let r = ptycho::dose::reconstruct(
        &model,
        &t.shape,
        &data,
        &raw,
        &c.ptycho.pinn,
        64,
        &dev,
        &indicatif::ProgressBar::hidden(),
    );
    let files = write_recon(out, "pinn_recon", &r)?;
    Ok(serde_json::json!({
        "train": ts,
        "files": files,
        "metrics": r.metrics,
    }))
}
