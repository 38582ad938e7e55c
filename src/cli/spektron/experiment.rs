//! `spx spektron baselines`, `spx spektron experiment sample-efficiency|table`, and the
//! Spektron part of `spx demo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use spx::config::Config;
use spx::io::atomic::Stage;
use spx::spektron::baselines::BaselineReport;
use spx::spektron::experiment::{self as ex, Kind};
use spx::spektron::{classical, demo as sdemo};

use super::{Flag, Global, int, ints, load, modality};

#[derive(Args, Debug)]
pub struct BaselinesArgs {
    /// corn.mat / nir_shootout_2002.mat, or a directory with the corn CSV files.
    #[arg(long)]
    pub data: PathBuf,
    /// Source (master) instrument, e.g. m5 (corn) or 1 (tablets).
    #[arg(long)]
    pub source: String,
    /// Target (slave) instrument, e.g. mp6.
    #[arg(long)]
    pub target: String,
    /// Property name (from the file's labels) or 1-based column number.
    #[arg(long)]
    pub property: String,
    /// Numbers of transfer samples, e.g. 5,10,20,30,50 (spektron.baselines.n_transfer).
    #[arg(long, value_delimiter = ',')]
    pub n_transfer: Option<Vec<usize>>,
    /// Seeded repetitions (spektron.baselines.repeats).
    #[arg(long, allow_negative_numbers = true, value_parser = super::super::count)]
    pub repeats: Option<usize>,
}

#[derive(Subcommand, Debug)]
pub enum ExperimentCmd {
    /// E3: RMSEP vs N transfer samples, model arms and classical baselines (CSV, JSON, MD, PNG).
    SampleEfficiency(ExperimentArgs),
    /// E4: RMSEP/R² table at N = spektron.experiment.table_n plus the N = 0 rows (CSV, JSON, MD).
    Table(ExperimentArgs),
    /// E9: RMSEP vs test-time-training steps, from the master (0-shot) and from master + LoRA on
    /// N = spektron.experiment.table_n target spectra (few-shot) (CSV, JSON, MD, PNG).
    TttSteps(TttStepsArgs),
    /// E1: pretraining ablation (none / masked reconstruction only / all losses) on a synthetic
    /// corpus made in the run ([spektron.synth], [spektron.pretrain]), then E4's model arms at
    /// N = spektron.experiment.table_n (CSV, JSON, MD, PNG).
    Pretraining(ExperimentArgs),
    /// E2: MSRP masking strategy (random / contiguous / peak-aware), each pretrained on a
    /// synthetic corpus made in the run, then E4's model arms at N = spektron.experiment.table_n
    /// (CSV, JSON, MD, PNG).
    Masking(ExperimentArgs),
    /// E7: architecture, one factor at a time around the hybrid with wavelet tokens (Transformer
    /// only, Mamba only, hybrid, hybrid with raw-spectrum tokens, hybrid + MoE), each pretrained,
    /// then E4's model arms; parameters and training time per arm (CSV, JSON, MD, PNG).
    Architecture(ExperimentArgs),
    /// E8: progressive pretraining losses (MSRP, then adding contrastive, denoising, OT, physics
    /// and VIB), each pretrained, then E4's model arms, with the physics-violation rate of the
    /// reconstructions (CSV, JSON, MD, PNG).
    Losses(ExperimentArgs),
    /// E10: disentanglement: 2-D PCA of z_chem and z_inst by instrument and by sample, scores,
    /// and the z_inst swap test, on the --checkpoint or a model pretrained in the run (CSV, JSON,
    /// MD, PNG).
    Disentanglement(ExperimentArgs),
    /// A whole README table from one spec (configs/tables/*.toml): every run × cell through
    /// `experiment table` (or `baselines`), each cell's reports in OUT/<run>/, the table as
    /// Markdown plus every split in CSV and JSON (OUT/<spec stem>.{md,csv,json}).
    Grid(GridArgs),
}

#[derive(Args, Debug)]
pub struct GridArgs {
    /// The table's spec, e.g. configs/tables/spektron-switches.toml.
    pub spec: PathBuf,
    /// corn.mat / nir_shootout_2002.mat, or a directory with the corn CSV files.
    #[arg(long)]
    pub data: PathBuf,
    /// Only this cell, SOURCE:TARGET:PROPERTY (repeatable; default: every cell of the spec).
    #[arg(long = "cell", value_name = "SOURCE:TARGET:PROPERTY")]
    pub cells: Vec<String>,
    /// Seeded splits of every run (replaces the spec's `repeats`).
    #[arg(long, allow_negative_numbers = true, value_parser = super::super::count)]
    pub repeats: Option<usize>,
    /// Checkpoint of every run (replaces the spec's `checkpoint`).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Modality of the spectra (ir, raman, nir, ftir, unknown).
    #[arg(long, default_value = "nir")]
    pub modality: String,
}

#[derive(Args, Debug)]
pub struct TttStepsArgs {
    #[command(flatten)]
    pub common: ExperimentArgs,
    /// TTT step counts, e.g. 0,5,10,20,50 (spektron.experiment.ttt_steps).
    #[arg(long, value_delimiter = ',')]
    pub steps: Option<Vec<usize>>,
}

#[derive(Args, Debug)]
pub struct ExperimentArgs {
    /// corn.mat / corn CSV directory / tablets .mat; without it, synthetic two-instrument data
    /// (spektron.experiment.synth_*).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Source (master) instrument.
    #[arg(long, default_value = "m5")]
    pub source: String,
    /// Target (slave) instrument.
    #[arg(long, default_value = "mp6")]
    pub target: String,
    /// Property name or 1-based column.
    #[arg(long, default_value = "moisture")]
    pub property: String,
    /// Pretrained checkpoint (same [spektron.model]); without it the model starts from random
    /// weights.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Seeded repetitions (spektron.experiment.repeats).
    #[arg(long, allow_negative_numbers = true, value_parser = super::super::count)]
    pub repeats: Option<usize>,
    /// E3: the N values (spektron.experiment.n_transfer); E4: one value (spektron.experiment.table_n).
    #[arg(long, value_delimiter = ',')]
    pub n_transfer: Option<Vec<usize>>,
    /// Modality of the spectra (ir, raman, nir, ftir, unknown).
    #[arg(long, default_value = "nir")]
    pub modality: String,
    /// Small profile for a quick check: d_model 32, layers "mt", 1 repetition, N 5 and 20,
    /// 20 epochs (keys given with --set win).
    #[arg(long)]
    pub quick: bool,
}

#[derive(Serialize)]
struct BaselinesSummary<'a> {
    data: String,
    source: &'a str,
    target: &'a str,
    property: &'a str,
    samples: usize,
    channels: usize,
    files: Vec<String>,
    report: &'a BaselineReport,
}

pub fn baselines(g: &Global, a: &BaselinesArgs) -> Result<ExitCode> {
    let mut extra = Vec::new();
    if let Some(ns) = &a.n_transfer {
        extra.push(ints("spektron.baselines.n_transfer", ns, "--n-transfer"));
    }
    if let Some(r) = a.repeats {
        extra.push(int("spektron.baselines.repeats", r, "--repeats"));
    }
    let cfg = load(g, extra)?;
    let stage = Stage::begin(&cfg.run.out_dir)?.inputs([a.data.as_path()]);
    let input = classical::Input {
        data: &a.data,
        source: &a.source,
        target: &a.target,
        property: &a.property,
    };
    let bc = &cfg.spektron.baselines;
    let pb = g.progress().bar(bc.repeats as u64, "baselines");
    let r = classical::run(&input, bc, &stage, |_| pb.inc(1))?;
    pb.finish_and_clear();
    let mut files = r.files.clone();
    files.push(stage.final_path(&cfg.write_effective(stage.dir())?));
    stage.commit()?;
    g.say(&r.markdown);
    g.say(format!(
        "master LVs (CV) per repetition: {:?}",
        r.report.master_lvs
    ));
    for f in &files {
        g.say(format!("wrote {}", f.display()));
    }
    g.emit_json(&BaselinesSummary {
        data: a.data.display().to_string(),
        source: &a.source,
        target: &a.target,
        property: &r.property,
        samples: r.samples,
        channels: r.channels,
        files: files.iter().map(|f| f.display().to_string()).collect(),
        report: &r.report,
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn run(g: &Global, cmd: &ExperimentCmd) -> Result<ExitCode> {
    let (kind, a) = match cmd {
        ExperimentCmd::SampleEfficiency(a) => (Kind::SampleEfficiency, a),
        ExperimentCmd::Table(a) => (Kind::Table, a),
        ExperimentCmd::TttSteps(t) => return ttt_steps(g, t),
        ExperimentCmd::Pretraining(a) => return ablation(g, a, Ablation::Pretraining),
        ExperimentCmd::Masking(a) => return ablation(g, a, Ablation::Masking),
        ExperimentCmd::Architecture(a) => return ablation(g, a, Ablation::Architecture),
        ExperimentCmd::Losses(a) => return ablation(g, a, Ablation::Losses),
        ExperimentCmd::Disentanglement(a) => return disentanglement(g, a),
        ExperimentCmd::Grid(a) => return grid(g, a),
    };
    let mut extra = common_flags(a);
    match (&a.n_transfer, kind) {
        (Some(ns), Kind::Table) if ns.len() != 1 => {
            bail!("--n-transfer: the table takes one N (got {ns:?})")
        }
        (Some(ns), Kind::Table) => {
            extra.push(int("spektron.experiment.table_n", ns[0], "--n-transfer"))
        }
        (Some(ns), Kind::SampleEfficiency) => {
            extra.push(ints("spektron.experiment.n_transfer", ns, "--n-transfer"))
        }
        (None, _) => {}
    }
    // --quick = the `quick` profile (configs/profiles/quick.toml), one layer below --set.
    let cfg = g.setup_with(if a.quick { &["quick"] } else { &[] }, extra)?;
    // Report files and config are staged and appear together at the end; an unwritable OUT
    // fails here, before training.
    let stage = Stage::begin(&cfg.run.out_dir)?
        .inputs(a.data.iter().chain(&a.checkpoint).map(PathBuf::as_path));
    let config_file = stage.out().join(spx::config::EFFECTIVE_CONFIG_NAME);
    let input = input_of(a, &config_file)?;
    let dev = cfg.run.device.autodiff_device()?;
    let ec = &cfg.spektron.experiment;
    let label = match kind {
        Kind::SampleEfficiency => "E3 sample efficiency",
        Kind::Table => "E4 table",
    };
    let pb = g.progress().bar(ex::progress_len(kind, ec), label);
    let settings = cfg.spektron.experiment_settings(cfg.run.seed);
    let r = ex::run(kind, &input, settings, &dev, &stage, |m| {
        pb.set_message(m.to_string());
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    cfg.write_effective(stage.dir())?;
    stage.commit()?;
    g.say(&r.markdown);
    g.say(format!(
        "model arms: {} parameters, {:.1} s{}",
        r.model_parameters,
        r.model_seconds,
        if a.checkpoint.is_none() {
            " (no --checkpoint: the Spektron arms start from random weights)"
        } else {
            ""
        }
    ));
    report_files(g, &r, &r.files)
}

/// Say which files an experiment wrote and emit its report as JSON with their final paths.
fn report_files(g: &Global, report: &impl Serialize, files: &[PathBuf]) -> Result<ExitCode> {
    for f in files {
        g.say(format!("wrote {}", f.display()));
    }
    let mut js = serde_json::to_value(report)?;
    js["files"] = serde_json::json!(
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
    );
    g.emit_json(&js)?;
    Ok(ExitCode::SUCCESS)
}

/// Flags every experiment takes (--repeats).
fn common_flags(a: &ExperimentArgs) -> Vec<Flag> {
    let mut extra = Vec::new();
    if let Some(r) = a.repeats {
        extra.push(int("spektron.experiment.repeats", r, "--repeats"));
    }
    extra
}

fn input_of<'a>(a: &'a ExperimentArgs, config_file: &'a Path) -> Result<ex::Input<'a>> {
    Ok(ex::Input {
        data: a.data.as_deref(),
        source: &a.source,
        target: &a.target,
        property: &a.property,
        checkpoint: a.checkpoint.as_deref(),
        modality: modality(&a.modality)?,
        config_file,
    })
}

/// E9: `spx spektron experiment ttt-steps`.
fn ttt_steps(g: &Global, t: &TttStepsArgs) -> Result<ExitCode> {
    let a = &t.common;
    let mut extra = common_flags(a);
    match &a.n_transfer {
        Some(ns) if ns.len() != 1 => bail!("--n-transfer: E9 takes one N (got {ns:?})"),
        Some(ns) => extra.push(int("spektron.experiment.table_n", ns[0], "--n-transfer")),
        None => {}
    }
    if let Some(st) = &t.steps {
        extra.push(ints("spektron.experiment.ttt_steps", st, "--steps"));
    }
    let cfg = g.setup_with(if a.quick { &["quick"] } else { &[] }, extra)?;
    let stage = Stage::begin(&cfg.run.out_dir)?
        .inputs(a.data.iter().chain(&a.checkpoint).map(PathBuf::as_path));
    let config_file = stage.out().join(spx::config::EFFECTIVE_CONFIG_NAME);
    let input = input_of(a, &config_file)?;
    let dev = cfg.run.device.autodiff_device()?;
    let ec = &cfg.spektron.experiment;
    let pb = g.progress().bar(ec.repeats as u64, "E9 TTT steps");
    let settings = cfg.spektron.experiment_settings(cfg.run.seed);
    let r = spx::spektron::ttt_steps::run(&input, settings, &dev, stage.dir(), |m| {
        pb.set_message(m.to_string());
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    cfg.write_effective(stage.dir())?;
    let files: Vec<PathBuf> = r.files.iter().map(|f| stage.final_path(f)).collect();
    stage.commit()?;
    g.say(&r.markdown);
    report_files(g, &r, &files)
}

/// The pretraining ablations (E1, E2, E7, E8): one CLI shape, one library driver each.
#[derive(Clone, Copy)]
enum Ablation {
    Pretraining,
    Masking,
    Architecture,
    Losses,
}

impl Ablation {
    /// (experiment name, progress label, variants).
    fn names(self) -> (&'static str, &'static str, u64) {
        match self {
            Ablation::Pretraining => ("E1", "E1 pretraining ablation", 3),
            Ablation::Masking => ("E2", "E2 masking strategy", 3),
            Ablation::Architecture => ("E7", "E7 architecture ablation", 5),
            Ablation::Losses => ("E8", "E8 loss ablation", 7),
        }
    }
}

/// `spx spektron experiment pretraining|masking|architecture|losses`.
fn ablation(g: &Global, a: &ExperimentArgs, which: Ablation) -> Result<ExitCode> {
    let (name, label, variants) = which.names();
    let mut extra = common_flags(a);
    match &a.n_transfer {
        Some(ns) if ns.len() != 1 => bail!("--n-transfer: {name} takes one N (got {ns:?})"),
        Some(ns) => extra.push(int("spektron.experiment.table_n", ns[0], "--n-transfer")),
        None => {}
    }
    if a.checkpoint.is_some() {
        bail!("--checkpoint: {name} pretrains its own models (it takes none)");
    }
    let cfg = g.setup_with(if a.quick { &["quick"] } else { &[] }, extra)?;
    let stage = Stage::begin(&cfg.run.out_dir)?.inputs(a.data.iter().map(PathBuf::as_path));
    let config_file = stage.out().join(spx::config::EFFECTIVE_CONFIG_NAME);
    let input = input_of(a, &config_file)?;
    let dev = cfg.run.device.autodiff_device()?;
    let sc = &cfg.spektron;
    // Corpus, then pretraining + model arms per variant.
    let pb = g.progress().bar(1 + 2 * variants, label);
    let pre = sc.pretrain_input();
    let settings = sc.experiment_settings(cfg.run.seed);
    let progress = |m: &str| {
        pb.set_message(m.to_string());
        pb.inc(1);
    };
    use spx::spektron::{arch_ablation, loss_ablation, mask_ablation, pretrain_ablation};
    let r = match which {
        Ablation::Pretraining => {
            pretrain_ablation::run(&input, settings, pre, &dev, stage.dir(), progress)
        }
        Ablation::Masking => mask_ablation::run(&input, settings, pre, &dev, stage.dir(), progress),
        Ablation::Architecture => {
            arch_ablation::run(&input, settings, pre, &dev, stage.dir(), progress)
        }
        Ablation::Losses => loss_ablation::run(&input, settings, pre, &dev, stage.dir(), progress),
    }?;
    pb.finish_and_clear();
    cfg.write_effective(stage.dir())?;
    let files: Vec<PathBuf> = r.files.iter().map(|f| stage.final_path(f)).collect();
    stage.commit()?;
    g.say(&r.markdown);
    report_files(g, &r, &files)
}

/// E10: `spx spektron experiment disentanglement`.
fn disentanglement(g: &Global, a: &ExperimentArgs) -> Result<ExitCode> {
    if a.n_transfer.is_some() {
        bail!("--n-transfer: E10 transfers nothing (it takes none)");
    }
    let cfg = g.setup_with(if a.quick { &["quick"] } else { &[] }, common_flags(a))?;
    let stage = Stage::begin(&cfg.run.out_dir)?
        .inputs(a.data.iter().chain(&a.checkpoint).map(PathBuf::as_path));
    let config_file = stage.out().join(spx::config::EFFECTIVE_CONFIG_NAME);
    let input = input_of(a, &config_file)?;
    let dev = cfg.run.device.autodiff_device()?;
    let sc = &cfg.spektron;
    let pb = g.progress().bar(3, "E10 disentanglement");
    let pre = sc.pretrain_input();
    let settings = sc.experiment_settings(cfg.run.seed);
    let r = spx::spektron::disentangle::run(&input, settings, pre, &dev, &stage, |m| {
        pb.set_message(m.to_string());
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    cfg.write_effective(stage.dir())?;
    stage.commit()?;
    g.say(&r.markdown);
    report_files(g, &r, &r.files)
}

/// `spx demo` hook (see `spx::spektron::demo`).
pub fn demo(cfg: &Config, out: &Path) -> Result<serde_json::Value> {
    let r = sdemo::run(&cfg.spektron, cfg.run.seed, out)?;
    Ok(serde_json::to_value(&r)?)
}

/// `spx spektron experiment grid SPEC.toml`: the spec's runs as config layers — defaults <
/// --config < the `quick` profile < the spec's `set` < the run's `set` < the command line's
/// --set < the spec's repeats / N (and --repeats) < global flags — then one library call.
fn grid(g: &Global, a: &GridArgs) -> Result<ExitCode> {
    use spx::spektron::grid::{self, GridKind, Spec};
    let spec = Spec::load(&a.spec)?;
    let cells = spec.select_cells(&a.spec, &a.cells)?;
    let repeats = a.repeats.unwrap_or(spec.repeats);
    if !(1..=1000).contains(&repeats) {
        bail!("--repeats {repeats}: not in 1..=1000");
    }
    let (rflag, nflag) = if a.repeats.is_some() {
        ("--repeats", "spec n_transfer")
    } else {
        ("spec repeats", "spec n_transfer")
    };
    let flags = match spec.kind {
        GridKind::Baselines => vec![
            int("spektron.baselines.repeats", repeats, rflag),
            ints("spektron.baselines.n_transfer", &spec.n_transfer, nflag),
        ],
        _ => vec![
            int("spektron.experiment.repeats", repeats, rflag),
            int("spektron.experiment.table_n", spec.n_transfer[0], nflag),
        ],
    };
    let profiles: &[&str] = if spec.quick { &["quick"] } else { &[] };
    let mut cfgs = Vec::new();
    for (i, r) in spec.runs.iter().enumerate() {
        // The spec's own overrides, checked alone so that an error names the spec and field.
        for (field, sets) in [("set", &spec.set), (&*format!("runs[{i}].set"), &r.set)] {
            let mut names: Vec<&str> = profiles.to_vec();
            names.extend(g.profiles.iter().map(String::as_str));
            if let Err(e) = spx::config::load_layers(None, &names, sets, &[]) {
                bail!("{}: field `{field}`: {e}", a.spec.display());
            }
        }
        let mut gr = g.clone();
        gr.sets = spec
            .set
            .iter()
            .chain(&r.set)
            .chain(&g.sets)
            .cloned()
            .collect();
        cfgs.push(gr.setup_with(profiles, flags.clone())?);
    }
    let first = &cfgs[0];
    let checkpoints: Vec<Option<&Path>> = spec
        .runs
        .iter()
        .map(|r| a.checkpoint.as_deref().or(r.checkpoint.as_deref()))
        .collect();
    if spec.kind == GridKind::Baselines && a.checkpoint.is_some() {
        bail!("--checkpoint: kind \"baselines\" trains no model");
    }
    if spec.kind.is_ablation() && a.checkpoint.is_some() {
        bail!(
            "--checkpoint: kind \"{}\" pretrains its own models (it takes none)",
            spec.kind.name()
        );
    }
    let stage = Stage::begin(&first.run.out_dir)?
        .inputs(std::iter::once(a.data.as_path()).chain(checkpoints.iter().flatten().copied()));
    let config_files: Vec<PathBuf> = spec
        .runs
        .iter()
        .map(|r| {
            stage
                .out()
                .join(spx::io::atomic::safe_component(&r.name))
                .join(spx::config::EFFECTIVE_CONFIG_NAME)
        })
        .collect();
    let runs: Vec<grid::RunInput> = spec
        .runs
        .iter()
        .zip(&cfgs)
        .zip(&config_files)
        .zip(&checkpoints)
        .map(|(((r, cfg), cf), ck)| grid::RunInput {
            name: &r.name,
            settings: cfg.spektron.experiment_settings(cfg.run.seed),
            pretrain: cfg.spektron.pretrain_input(),
            checkpoint: *ck,
            config_file: cf,
        })
        .collect();
    let input = grid::GridInput {
        spec: &spec,
        spec_path: &a.spec,
        data: &a.data,
        modality: modality(&a.modality)?,
        cells: &cells,
    };
    let dev = first.run.device.autodiff_device()?;
    let pb = g
        .progress()
        .bar(grid::progress_len(spec.kind, &runs, cells.len()), "grid");
    let r = grid::run(&input, &runs, &dev, stage.dir(), |m| {
        pb.set_message(m.to_string());
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    for (run, cfg) in spec.runs.iter().zip(&cfgs) {
        let d = stage.dir().join(spx::io::atomic::safe_component(&run.name));
        spx::io::atomic::ensure_dir(&d)?;
        cfg.write_effective(&d)?;
    }
    let files: Vec<PathBuf> = r.files.iter().map(|f| stage.final_path(f)).collect();
    stage.commit()?;
    g.say(&r.table.markdown);
    report_files(g, &r, &files)
}
