//! The ptychography pipelines behind `spx ptycho …`, callable from Rust: simulate a scan,
//! train the PINN on it, reconstruct a scan with a trained model, and the ePIE baseline.
//! Each takes typed settings and an output directory and returns a typed summary; the dose
//! study ([`super::dose::study`]) is built from them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::PtychoConfig;
use super::data::RawData;
use super::epie::EpieConfig;
use super::metrics::Metrics;
use super::recon::{self, Recon};
use super::simulate::Scan;
use super::train::{self, Checkpointing, PinnData, Trained};
use crate::backend::DeviceSpec;
use crate::error::SpxError;
use crate::io;
use crate::logging::Progress;
use crate::train::history::History;

/// How a pipeline talks to its caller: progress bars, one-line messages, and a record of the
/// effective settings of each sub-run written into its directory (the CLI writes
/// `spx-config.toml` there; settings outside `[ptycho]` are the caller's).
pub struct Hooks<'a> {
    pub progress: Progress,
    pub say: &'a dyn Fn(String),
    /// `record(dir, settings, seed)`: the run in `dir` used `settings` and `seed`.
    pub record: &'a dyn Fn(&Path, &PtychoConfig, u64) -> Result<PathBuf, SpxError>,
}

impl Hooks<'_> {
    /// No messages, no bars, no config records (tests, examples).
    pub fn silent() -> Hooks<'static> {
        Hooks {
            progress: Progress { visible: false },
            say: &|_| {},
            record: &|dir, _, _| Ok(dir.to_path_buf()),
        }
    }
}

/// The training loss of an arm (`--loss`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Loss {
    /// Poisson negative log-likelihood of the intensities.
    Nll,
    /// Mean absolute error of the amplitudes.
    Mae,
}

impl Loss {
    /// `(nll_weight, mae_weight)`.
    pub fn weights(self) -> (f64, f64) {
        match self {
            Loss::Nll => (1.0, 0.0),
            Loss::Mae => (0.0, 1.0),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Loss::Nll => "nll",
            Loss::Mae => "mae",
        }
    }
}

impl std::str::FromStr for Loss {
    type Err = SpxError;
    fn from_str(s: &str) -> Result<Self, SpxError> {
        match s {
            "nll" => Ok(Loss::Nll),
            "mae" => Ok(Loss::Mae),
            o => Err(SpxError::Config(format!(
                "--loss `{o}`: expected nll or mae"
            ))),
        }
    }
}

/// What `simulate_into` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct SimulateSummary {
    pub npz: String,
    pub png: Option<String>,
    pub config: String,
    pub seed: u64,
    pub n_positions: usize,
    pub n: usize,
    pub object_size: usize,
    pub nphotons: f64,
    pub photon_scale: f64,
    pub mean_counts_per_pattern: f64,
    pub seconds: f64,
}

/// Simulate `cfg.simulate` with `seed`, write NPZ (named `name`) + PNG + effective settings
/// into `out`.
pub fn simulate_into(
    cfg: &PtychoConfig,
    seed: u64,
    out: &Path,
    name: &str,
    hooks: &Hooks,
) -> Result<SimulateSummary, SpxError> {
    io::ensure_dir(out)?;
    let sc = &cfg.simulate;
    let t0 = Instant::now();
    let pb = hooks
        .progress
        .bar(sc.n_positions as u64, "simulating diffraction");
    let sim = super::simulate::simulate(sc, seed, &pb)?;
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
    let config = (hooks.record)(out, cfg, seed)?;
    Ok(SimulateSummary {
        npz: npz.display().to_string(),
        png,
        config: config.display().to_string(),
        seed,
        n_positions: sim.raw.n_positions(),
        n: sc.n,
        object_size: sc.object_size,
        nphotons: sc.nphotons,
        photon_scale: sim.photon_scale,
        mean_counts_per_pattern: sim.mean_counts,
        seconds,
    })
}

/// Simulate `n_first + n_second` positions of `cfg.simulate` on one object (grid scans: see
/// [`simulate_grid_split`]) and write them as
/// two scans `names` (training and held-out test positions) plus the effective settings into
/// `out`; returns the two loaded scans and the photon scale.
pub fn simulate_split_into(
    cfg: &PtychoConfig,
    seed: u64,
    out: &Path,
    names: [&str; 2],
    (n_first, n_second): (usize, usize),
    hooks: &Hooks,
) -> Result<(RawData, RawData, f64), SpxError> {
    io::ensure_dir(out)?;
    if cfg.simulate.scan == Scan::Grid {
        return simulate_grid_split(cfg, seed, out, names, (n_first, n_second), hooks);
    }
    let mut c = cfg.clone();
    c.simulate.n_positions = n_first + n_second;
    let pb = hooks
        .progress
        .bar(c.simulate.n_positions as u64, "simulating diffraction");
    let sim = super::simulate::simulate(&c.simulate, seed, &pb)?;
    pb.finish_and_clear();
    let mut scans = vec![];
    for (name, range) in names.iter().zip([0..n_first, n_first..n_first + n_second]) {
        let part = sim.select(range);
        part.save(&out.join(name))?;
        scans.push(part.raw);
    }
    (hooks.record)(out, &c, seed)?;
    let test = scans.pop().expect("two scans");
    let train = scans.pop().expect("two scans");
    Ok((train, test, sim.photon_scale))
}

/// Grid scans: [`super::simulate::grid_split`] (training lattice, held-out lattice shifted by
/// half a pitch, same object), written like the random split.
fn simulate_grid_split(
    c: &PtychoConfig,
    seed: u64,
    out: &Path,
    names: [&str; 2],
    caps: (usize, usize),
    hooks: &Hooks,
) -> Result<(RawData, RawData, f64), SpxError> {
    let pb = hooks
        .progress
        .bar((caps.0 + caps.1) as u64, "simulating diffraction");
    let (train, test) = super::simulate::grid_split(&c.simulate, seed, caps, &pb)?;
    pb.finish_and_clear();
    train.save(&out.join(names[0]))?;
    test.save(&out.join(names[1]))?;
    (hooks.record)(out, c, seed)?;
    Ok((train.raw, test.raw, train.photon_scale))
}

/// What `train_into` wrote and how training went.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub model_dir: String,
    pub groups: usize,
    pub epochs_run: usize,
    pub stopped_early: bool,
    pub final_loss: f64,
    pub final_val_loss: Option<f64>,
    pub intensity_scale_init: f64,
    pub intensity_scale_final: f64,
    pub seconds: f64,
}

/// Train on `raw`, write the model directory `out` (weights, sizes, history JSON + PNG,
/// effective settings). `ck`: per-epoch checkpoint (and resume) settings.
pub fn train_into(
    cfg: &PtychoConfig,
    seed: u64,
    device: &DeviceSpec,
    raw: &RawData,
    out: &Path,
    ck: Option<&Checkpointing>,
    hooks: &Hooks,
) -> Result<(Trained, PinnData, TrainSummary), SpxError> {
    let t0 = Instant::now();
    train::check_pattern_size(raw.n())?;
    let data = recon::prepare(raw, &cfg.group, seed)?;
    let dev = device.autodiff_device()?;
    let pb = hooks.progress.bar(1, "training PtychoPINN");
    let t = train::train_with(&cfg.pinn, &data, &raw.probe, &dev, seed, &pb, ck)?;
    pb.finish_and_clear();
    train::save_model(&t.model, &t.shape, out)?;
    let hist = serde_json::to_vec_pretty(&t.history).expect("history serialises");
    io::write_atomic(&out.join("history.json"), |w| {
        std::io::Write::write_all(w, &hist)
    })?;
    // The loss curves in the shared history format (CSV + PNG; the JSON above has every field).
    let h = &t.history;
    let col = |f: fn(&train::EpochRecord) -> f64| h.iter().map(f).collect::<Vec<f64>>();
    let mut hist = History::new("epoch").column("train", col(|r| r.loss));
    hist.x = col(|r| r.epoch as f64);
    if h.iter().all(|r| r.val_loss.is_finite()) {
        hist = hist.column("validation", col(|r| r.val_loss));
    }
    hist.write_csv(&out.join("history.csv"))?;
    hist.write_png(&out.join("history.png"), "PtychoPINN training")?;
    (hooks.record)(out, cfg, seed)?;
    let last = t
        .history
        .last()
        .ok_or_else(|| SpxError::Config("no epoch ran (ptycho.pinn.train.epochs = 0)".into()))?;
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

/// What a training checkpoint must agree with to be resumed: the data (`data_id`: its content
/// checksum, or how it was simulated) and every setting that shapes training except the epoch
/// count (and the device).
pub fn fingerprint(cfg: &PtychoConfig, seed: u64, data_id: &str) -> String {
    let mut p = cfg.pinn.clone();
    p.train.epochs = 0;
    format!(
        "data {data_id} seed {seed} pinn {} group {}",
        serde_json::to_string(&p).expect("settings serialise"),
        serde_json::to_string(&cfg.group).expect("settings serialise")
    )
}

/// `nphotons` stored in a raw NPZ, when there is one.
pub fn npz_nphotons(path: &Path) -> Option<f64> {
    let mut f = io::npz::NpzFile::open(path).ok()?;
    if !f.contains("nphotons") {
        return None;
    }
    f.real_f64("nphotons").ok()?.iter().next().copied()
}

/// Reconstruct `data` with the model in `model_dir`: infer every group, stitch, score against
/// the NPZ's `objectGuess` when it has one. Returns the reconstruction and the group count.
pub fn infer(
    cfg: &PtychoConfig,
    seed: u64,
    device: &DeviceSpec,
    model_dir: &Path,
    data: &Path,
    hooks: &Hooks,
) -> Result<(Recon, usize), SpxError> {
    let dev = device.device()?;
    let (model, shape) = train::load_model(model_dir, &dev)?;
    let raw = RawData::load(data)?;
    let mut gc = cfg.group.clone();
    gc.gridsize = shape.gridsize;
    let pd = recon::prepare(&raw, &gc, seed)?;
    if pd.n != shape.n {
        return Err(SpxError::file(
            data,
            format!(
                "patterns are {}×{} but the model in {} was trained for N = {}",
                pd.n,
                pd.n,
                model_dir.display(),
                shape.n
            ),
        ));
    }
    let pb = hooks.progress.bar(pd.len() as u64, "inferring");
    let r = recon::reconstruct(&model, &shape, &pd, &raw, &cfg.pinn, 64, &dev, &pb);
    pb.finish_and_clear();
    Ok((r, pd.len()))
}

/// ePIE on `raw` (known probe): the scored reconstruction and the Fourier errors.
pub fn epie(
    raw: &RawData,
    ec: &EpieConfig,
    seed: u64,
    hooks: &Hooks,
) -> Result<(Recon, Vec<f64>), SpxError> {
    let pb = hooks.progress.bar(ec.iterations as u64, "ePIE");
    let (rec, r) = recon::epie_reconstruct(raw, ec, None, seed, &pb)?;
    pb.finish_and_clear();
    Ok((rec, r.errors))
}

/// The sizes of `spx demo`'s PINN run on top of `cfg`: the cpu profile's grid scan on a 96²
/// object (361 groups), N 32 at 1e6 photons, 16 filters, 30 epochs (≈ 640 Adam steps,
/// ≈ 50 CPU-s) — the object's main structure shows (#16), where the old 4-epoch N 16 run gave
/// a flat field (a 64² object with 8 filters and 490 steps reached SSIM 0.46 only).
pub fn demo_pinn_settings(cfg: &PtychoConfig) -> PtychoConfig {
    let mut c = cfg.clone();
    let s = &mut c.simulate;
    s.n = 32;
    s.object_size = 96;
    s.nlines = 49;
    s.buffer = 10.0;
    s.n_positions = 100_000;
    s.nphotons = 1e6;
    s.plot = false;
    s.scan = super::simulate::Scan::Grid;
    s.grid_size = 2;
    s.grid_step = 0.0;
    s.grid_pitch = 0.0;
    s.grid_phase = 0.0;
    c.group.mode = super::grouping::GroupMode::Blocks;
    c.group.gridsize = 2;
    c.group.n_groups = 0;
    let p = &mut c.pinn;
    p.nphotons = 1e6;
    p.stitch_crop = 12;
    p.model.filters_base = 16;
    p.model.border_filters = 16;
    p.train.epochs = 30;
    p.train.early_stop_patience = 0;
    // 18 validation groups: too noisy a plateau signal, it would halve the rate every few epochs
    p.train.plateau_patience = 30;
    c
}

/// Small PINN run (`spx demo`): simulate → train → infer/stitch/score on `cfg` (the caller's
/// small settings) into `out`.
pub fn pinn_demo(
    cfg: &PtychoConfig,
    seed: u64,
    device: &DeviceSpec,
    out: &Path,
    hooks: &Hooks,
) -> Result<(TrainSummary, Vec<String>, Recon), SpxError> {
    let sim = simulate_into(cfg, seed, out, "sim.npz", hooks)?;
    let raw = RawData::load(Path::new(&sim.npz))?;
    let (t, _, ts) = train_into(cfg, seed, device, &raw, &out.join("model"), None, hooks)?;
    let dev = device.device()?;
    let model = burn::module::Module::valid(&t.model);
    let data = recon::prepare(&raw, &cfg.group, seed)?;
    let r = recon::reconstruct(
        &model,
        &t.shape,
        &data,
        &raw,
        &cfg.pinn,
        64,
        &dev,
        &indicatif::ProgressBar::hidden(),
    );
    let files = recon::write_recon(out, "pinn_recon", &r)?;
    Ok((ts, files, r))
}

/// Process CPU time (user + system) from /proc/self/stat; 0 where unavailable.
pub fn cpu_seconds() -> f64 {
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

/// `spx ptycho train` as one call: train on the raw NPZ `data` into `out`, staged (the model
/// directory's files appear together or not at all), with a per-epoch checkpoint in
/// `out/checkpoint`; `resume` continues from it when it matches the data and settings.
pub fn train_file(
    cfg: &PtychoConfig,
    seed: u64,
    device: &DeviceSpec,
    data: &Path,
    out: &Path,
    resume: bool,
    hooks: &Hooks,
) -> Result<TrainSummary, SpxError> {
    let stage = io::atomic::Stage::begin(out)?.inputs([data]);
    let raw = RawData::load(data)?;
    train::check_pattern_size(raw.n())
        .map_err(|e| SpxError::field(data, raw.diffraction_key.as_str(), e))?;
    let ck = Checkpointing {
        dir: out.join("checkpoint"),
        fingerprint: fingerprint(cfg, seed, &io::atomic::file_checksum(data)?),
        resume,
    };
    let (_, _, mut s) = train_into(cfg, seed, device, &raw, stage.dir(), Some(&ck), hooks)?;
    s.model_dir = out.display().to_string();
    stage.commit()?;
    Ok(s)
}

/// What `spx ptycho infer` / `epie` wrote and how the reconstruction scored.
#[derive(Clone, Debug, Serialize)]
pub struct ReconReport {
    /// ePIE's normalised Fourier error per iteration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<f64>>,
    pub files: Vec<String>,
    /// Groups the network reconstructed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<usize>,
    pub metrics: Option<Metrics>,
    pub seconds: f64,
}

/// Write `rec` as `<name>.npz/.png` and the settings record into the stage, commit it, and
/// report the files under their final names.
fn commit_recon(
    stage: io::atomic::Stage,
    name: &str,
    rec: Recon,
    (cfg, seed, hooks): (&PtychoConfig, u64, &Hooks),
    t0: Instant,
) -> Result<ReconReport, SpxError> {
    let files = recon::write_recon(stage.dir(), name, &rec)?;
    (hooks.record)(stage.dir(), cfg, seed)?;
    let files = files
        .iter()
        .map(|f| stage.final_path(Path::new(f)).display().to_string())
        .collect();
    stage.commit()?;
    Ok(ReconReport {
        errors: None,
        files,
        groups: None,
        metrics: rec.metrics,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// `spx ptycho infer` as one call: [`infer`] `data` with the model in `model_dir` and write
/// `pinn_recon.npz/.png` into `out` (staged).
pub fn infer_file(
    cfg: &PtychoConfig,
    seed: u64,
    device: &DeviceSpec,
    model_dir: &Path,
    data: &Path,
    out: &Path,
    hooks: &Hooks,
) -> Result<ReconReport, SpxError> {
    let weights = model_dir.join(train::WEIGHTS);
    let stage = io::atomic::Stage::begin(out)?.inputs([data, weights.as_path()]);
    let t0 = Instant::now();
    let (r, groups) = infer(cfg, seed, device, model_dir, data, hooks)?;
    let mut rep = commit_recon(stage, "pinn_recon", r, (cfg, seed, hooks), t0)?;
    rep.groups = Some(groups);
    Ok(rep)
}

/// `spx ptycho epie` as one call: [`epie`] on the raw NPZ `data` with `cfg.epie`, writing
/// `epie_recon.npz/.png` into `out` (staged).
pub fn epie_file(
    cfg: &PtychoConfig,
    seed: u64,
    data: &Path,
    out: &Path,
    hooks: &Hooks,
) -> Result<ReconReport, SpxError> {
    let stage = io::atomic::Stage::begin(out)?.inputs([data]);
    let raw = RawData::load(data)?;
    let t0 = Instant::now();
    let (rec, errors) =
        epie(&raw, &cfg.epie, seed, hooks).map_err(|e| SpxError::file(data, format!("{e}")))?;
    let mut rep = commit_recon(stage, "epie_recon", rec, (cfg, seed, hooks), t0)?;
    rep.errors = Some(errors);
    Ok(rep)
}
