//! `spx spektron …`: corpus building/inspection/synthesis and the classical calibration-transfer
//! baselines. Model subcommands (pretrain, finetune, ttt) are further variants of
//! [`SpektronCmd`].

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use spx::config::Config;
use spx::io::{self, plot};
use spx::spektron::baselines::{self, BaselineReport, METHODS, TransferData};
use spx::spektron::data::{Modality, corpus, instruments, synth};
use spx::spektron::model::pretrain;
use toml::Value;

use super::Global;

#[derive(Subcommand, Debug)]
pub enum SpektronCmd {
    /// Build, inspect or synthesise a pre-training corpus (HDF5).
    #[command(subcommand)]
    Corpus(CorpusCmd),
    /// Classical calibration transfer (PLS, SBC, DS, PDS, CCA, di-PLS, …) on two instruments.
    Baselines(BaselinesArgs),
    /// Masked spectral pretraining of the Spektron model on a corpus HDF5.
    Pretrain(PretrainArgs),
    /// Fine-tune a pretrained checkpoint (LoRA or full) on N labelled target-instrument spectra.
    Finetune(FinetuneArgs),
    /// Test-time training: adapt a checkpoint's normalisation layers to unlabelled target spectra.
    Ttt(TttArgs),
    /// Model arms beside the classical baselines on the same seeded splits (E3, E4).
    #[command(subcommand)]
    Experiment(ExperimentCmd),
}

#[derive(Args, Debug)]
pub struct TttArgs {
    /// Checkpoint to adapt (pretrained, or OUT/checkpoints/last of `spektron finetune`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Unlabelled target spectra as a corpus HDF5 (`/spectra` (N, n_points), `/modality`).
    #[arg(long, conflicts_with = "data")]
    pub corpus: Option<PathBuf>,
    /// …or an instrument file (corn.mat / corn CSV directory / tablets .mat) with --target.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Target instrument of --data (e.g. mp6).
    #[arg(long)]
    pub target: Option<String>,
    /// Property of --data scored before and after (with --finetune-report); name or 1-based column.
    #[arg(long, default_value = "1")]
    pub property: String,
    /// finetune.json of `spektron finetune`: TTT then runs on its test rows (unlabelled use) and
    /// reports RMSEP/R² there before and after, with its target standardisation.
    #[arg(long)]
    pub finetune_report: Option<PathBuf>,
    /// TTT steps (spektron.ttt.steps).
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    pub steps: Option<usize>,
    /// Modality of --data spectra (ir, raman, nir, ftir, unknown).
    #[arg(long, default_value = "nir")]
    pub modality: String,
}

#[derive(Subcommand, Debug)]
pub enum ExperimentCmd {
    /// E3: RMSEP vs N transfer samples, model arms and classical baselines (CSV, JSON, MD, PNG).
    SampleEfficiency(ExperimentArgs),
    /// E4: RMSEP/R² table at N = spektron.experiment.table_n plus the N = 0 rows (CSV, JSON, MD).
    Table(ExperimentArgs),
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
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
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

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// Pretrained checkpoint directory (…/checkpoints/last); same [spektron.model] config.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// corn.mat / nir_shootout_2002.mat, or a directory with the corn CSV files.
    #[arg(long)]
    pub data: PathBuf,
    /// Target instrument (e.g. mp6); its spectra are fine-tuned on and tested.
    #[arg(long)]
    pub target: String,
    /// Any other instrument of the file (only used to open the pair), e.g. m5.
    #[arg(long)]
    pub source: String,
    /// Property name or 1-based column.
    #[arg(long)]
    pub property: String,
    /// Labelled target spectra used for fine-tuning (the rest is the test set).
    #[arg(long, default_value_t = 20)]
    pub n: usize,
    /// lora | full (spektron.finetune.mode).
    #[arg(long)]
    pub mode: Option<String>,
    /// Modality of the spectra (ir, raman, nir, ftir, unknown).
    #[arg(long, default_value = "nir")]
    pub modality: String,
}

#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// Corpus file written by `spx spektron corpus build|synth`.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Resume from a checkpoint directory (e.g. OUT/checkpoints/last).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Total optimisation steps (spektron.pretrain.steps).
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    pub steps: Option<usize>,
    /// Batch size (spektron.pretrain.batch).
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    pub batch: Option<usize>,
    /// Accept a --resume checkpoint without optimizer state (AdamW restarts its moments);
    /// without this flag such a checkpoint is refused.
    #[arg(long, requires = "resume")]
    pub reset_optimizer: bool,
}

#[derive(Subcommand, Debug)]
pub enum CorpusCmd {
    /// Parse every spectrum file under DIR… (JCAMP-DX, RRUFF, CSV/TSV), resample, SNV, write HDF5.
    Build(BuildArgs),
    /// Summarise a corpus file.
    Info(InfoArgs),
    /// Write a synthetic corpus (bands + baselines + noise per modality).
    Synth(SynthArgs),
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Input directories or files; input i gets source_id i.
    #[arg(required = true, value_name = "DIR")]
    pub inputs: Vec<PathBuf>,
    /// Modality for files that do not state one (ir, raman, nir, ftir, unknown).
    #[arg(long)]
    pub modality: Option<String>,
    /// Points per resampled spectrum (spektron.corpus.target_points).
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    pub points: Option<usize>,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Corpus file written by `spx spektron corpus build|synth`.
    pub corpus: PathBuf,
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Number of spectra (spektron.synth.n).
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    pub n: Option<usize>,
    /// Points per resampled spectrum (spektron.corpus.target_points).
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    pub points: Option<usize>,
}

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
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    pub repeats: Option<usize>,
}

/// Effective config with this command's flags on top of the global ones.
fn load(g: &Global, extra: Vec<(&str, Value, &str)>) -> Result<Config> {
    g.setup()?; // thread pool + validation of the global layers
    let mut flags: Vec<(&str, Value, &str)> = g.flags()?;
    flags.extend(extra);
    Ok(spx::config::load(g.config.as_deref(), &g.sets, &flags)?)
}

/// `--out x.h5` names the corpus file itself; any other `--out` is a directory.
fn corpus_path(cfg: &Config, default_name: &str) -> Result<(PathBuf, PathBuf)> {
    let o = &cfg.run.out_dir;
    let is_file = o
        .extension()
        .is_some_and(|e| matches!(e.to_string_lossy().as_ref(), "h5" | "hdf5"));
    let (dir, file) = if is_file {
        let dir = o
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        (dir, o.clone())
    } else {
        (o.clone(), o.join(default_name))
    };
    io::ensure_dir(&dir)?;
    Ok((dir, file))
}

pub fn run(g: &Global, cmd: &SpektronCmd) -> Result<ExitCode> {
    match cmd {
        SpektronCmd::Corpus(CorpusCmd::Build(a)) => build(g, a),
        SpektronCmd::Corpus(CorpusCmd::Info(a)) => info(g, a),
        SpektronCmd::Corpus(CorpusCmd::Synth(a)) => synth_cmd(g, a),
        SpektronCmd::Baselines(a) => baselines_cmd(g, a),
        SpektronCmd::Pretrain(a) => pretrain_cmd(g, a),
        SpektronCmd::Finetune(a) => finetune_cmd(g, a),
        SpektronCmd::Ttt(a) => ttt_cmd(g, a),
        SpektronCmd::Experiment(ExperimentCmd::SampleEfficiency(a)) => experiment_cmd(g, a, false),
        SpektronCmd::Experiment(ExperimentCmd::Table(a)) => experiment_cmd(g, a, true),
    }
}

#[derive(Serialize)]
struct CorpusSummary<'a> {
    corpus: String,
    config: String,
    #[serde(flatten)]
    report: &'a corpus::CorpusReport,
}

fn report_corpus(g: &Global, file: &Path, cfg_path: &Path, r: &corpus::CorpusReport) -> Result<()> {
    g.say(format!(
        "wrote {} spectra to {} ({} files read, {} failed; rejected: {} flat, {} NaN, {} too short)",
        r.spectra,
        file.display(),
        r.files_read,
        r.files_failed.len(),
        r.rejected_flat,
        r.rejected_nan,
        r.rejected_short
    ));
    for (f, e) in &r.files_failed {
        g.say(format!("  skipped {f}: {e}"));
    }
    for (f, name, why) in &r.rejected {
        g.say(format!("  rejected {f} ({name}): {why}"));
    }
    let per: Vec<String> = Modality::ALL
        .iter()
        .map(|m| format!("{} {}", m.name(), r.per_modality[*m as usize]))
        .collect();
    g.say(format!("modalities: {}", per.join(", ")));
    g.emit_json(&CorpusSummary {
        corpus: file.display().to_string(),
        config: cfg_path.display().to_string(),
        report: r,
    })
}

fn build(g: &Global, a: &BuildArgs) -> Result<ExitCode> {
    let mut extra = Vec::new();
    if let Some(m) = &a.modality {
        let m = Modality::parse(m).with_context(|| {
            format!("--modality `{m}`: expected ir, raman, nir, ftir or unknown")
        })?;
        extra.push((
            "spektron.corpus.default_modality",
            Value::String(m.name().to_ascii_lowercase()),
            "--modality",
        ));
    }
    if let Some(p) = a.points {
        extra.push((
            "spektron.corpus.target_points",
            Value::Integer(p as i64),
            "--points",
        ));
    }
    let cfg = load(g, extra)?;
    for d in &a.inputs {
        if !d.exists() {
            bail!("{}: no such file or directory", d.display());
        }
    }
    let (dir, file) = corpus_path(&cfg, "corpus.h5")?;
    let stage = io::atomic::Stage::begin(&dir)?.inputs(a.inputs.iter().map(PathBuf::as_path));
    let staged = stage
        .dir()
        .join(file.file_name().context("corpus file name")?);
    let pb = g.progress().bar(0, "corpus build");
    let t0 = std::time::Instant::now();
    let r = corpus::build(&a.inputs, &staged, &cfg.spektron.corpus, &pb)?;
    pb.finish_and_clear();
    tracing::info!(
        "{} spectra in {:.2} s",
        r.spectra,
        t0.elapsed().as_secs_f64()
    );
    if r.spectra == 0 {
        let why = r
            .files_failed
            .first()
            .map_or_else(String::new, |(f, e)| format!("; first failure {f}: {e}"));
        bail!(
            "{}: no usable spectrum ({} files read, {} failed, {} rejected){why}",
            a.inputs[0].display(),
            r.files_read,
            r.files_failed.len(),
            r.rejected_flat + r.rejected_nan + r.rejected_short
        );
    }
    cfg.write_effective(stage.dir())?;
    stage.commit()?;
    let cp = dir.join(spx::config::EFFECTIVE_CONFIG_NAME);
    report_corpus(g, &file, &cp, &r)?;
    Ok(ExitCode::SUCCESS)
}

fn synth_cmd(g: &Global, a: &SynthArgs) -> Result<ExitCode> {
    let mut extra = Vec::new();
    if let Some(n) = a.n {
        extra.push(("spektron.synth.n", Value::Integer(n as i64), "--n"));
    }
    if let Some(p) = a.points {
        extra.push((
            "spektron.corpus.target_points",
            Value::Integer(p as i64),
            "--points",
        ));
    }
    let cfg = load(g, extra)?;
    let (dir, file) = corpus_path(&cfg, "synth.h5")?;
    let stage = io::atomic::Stage::begin(&dir)?;
    let staged = stage
        .dir()
        .join(file.file_name().context("corpus file name")?);
    let pb = g.progress().bar(0, "synthetic corpus");
    let r = synth::write_synth_corpus(
        &staged,
        cfg.run.seed,
        &cfg.spektron.synth,
        &cfg.spektron.corpus,
        &pb,
    )?;
    pb.finish_and_clear();
    if r.spectra == 0 {
        bail!(
            "spektron.synth: no spectrum was generated (n = {})",
            cfg.spektron.synth.n
        );
    }
    cfg.write_effective(stage.dir())?;
    stage.commit()?;
    let cp = dir.join(spx::config::EFFECTIVE_CONFIG_NAME);
    report_corpus(g, &file, &cp, &r)?;
    Ok(ExitCode::SUCCESS)
}

fn info(g: &Global, a: &InfoArgs) -> Result<ExitCode> {
    let i = corpus::info(&a.corpus)?;
    let mut t = format!(
        "{}: {} spectra × {} points, normalisation {}, chunks {:?}, {}compressed\n",
        i.path,
        i.spectra,
        i.points,
        i.normalization,
        i.chunk.clone().unwrap_or_default(),
        if i.compressed { "" } else { "not " }
    );
    for (m, c) in &i.per_modality {
        let _ = writeln!(t, "  {m:<8} {c}");
    }
    for (s, c) in &i.sources {
        let _ = writeln!(t, "  source {s}: {c}");
    }
    let _ = write!(
        t,
        "  {} files; rejected {} flat, {} NaN, {} short; {} files failed; original x range {} … {}",
        i.files,
        i.rejected_flat,
        i.rejected_nan,
        i.rejected_short,
        i.files_failed,
        i.x_min,
        i.x_max
    );
    g.say(t);
    g.emit_json(&i)?;
    Ok(ExitCode::SUCCESS)
}

/// Labels for the table.
fn method_label(m: &str) -> &'static str {
    match m {
        "no_transfer" => "no transfer (master model on target)",
        "recentre_test" => "re-centring on the unlabelled test spectra",
        "target_all" => "target PLS on the whole calibration set",
        "master_on_master" => "master model on master test spectra",
        "target_only" => "PLS on N labelled target spectra",
        "sbc" => "SBC (slope/bias on predictions)",
        "ds" => "DS (centred pinv + offset)",
        "pds" => "PDS (local PCR + offset)",
        "cca" => "CCA in PCA space",
        "recentre" => "re-centring on N unlabelled target spectra",
        "dipls" => "di-PLS (N unlabelled target)",
        "spektron_master_on_master" => "Spektron master model on master test spectra",
        "spektron_no_transfer" => "Spektron master model on target (no transfer)",
        "spektron_ttt" => "Spektron + TTT on the unlabelled target test spectra",
        "spektron_lora" => "Spektron + LoRA on N labelled target spectra",
        "scratch" => "Spektron from scratch on N labelled target spectra",
        _ => "?",
    }
}

/// CSV, markdown, JSON and PNG of a report; returns the files written.
pub fn write_report(
    dir: &Path,
    stem: &str,
    title: &str,
    report: &BaselineReport,
    ns: &[usize],
) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let p = dir.join(format!("{stem}.csv"));
    let mut csv = String::from("method,n_transfer,rmsep_mean,rmsep_std,r2_mean\n");
    for c in &report.cells {
        let _ = writeln!(
            csv,
            "{},{},{:.6},{:.6},{:.6}",
            c.method, c.n_transfer, c.rmsep_mean, c.rmsep_std, c.r2_mean
        );
    }
    io::write_atomic(&p, |w| w.write_all(csv.as_bytes()))?;
    files.push(p);
    let mut md = format!("### {title}\n\nRMSEP mean (R² mean) over the repetitions.\n\n");
    for m in &METHODS[..4] {
        if let Some(c) = report.get(m, 0) {
            let _ = writeln!(
                md,
                "- {}: {:.4} (R² {:.2})",
                method_label(m),
                c.rmsep_mean,
                c.r2_mean
            );
        }
    }
    let _ = write!(md, "\n| method |");
    for n in ns {
        let _ = write!(md, " N={n} |");
    }
    let _ = write!(md, "\n|---|");
    for _ in ns {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    for m in &METHODS[4..] {
        let _ = write!(md, "| {} |", method_label(m));
        for &n in ns {
            match report.get(m, n) {
                Some(c) => {
                    let _ = write!(md, " {:.4} ({:.2}) |", c.rmsep_mean, c.r2_mean);
                }
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    let p = dir.join(format!("{stem}.md"));
    io::write_atomic(&p, |w| w.write_all(md.as_bytes()))?;
    files.push(p);
    let p = dir.join(format!("{stem}.json"));
    let js = serde_json::to_string_pretty(report)?;
    io::write_atomic(&p, |w| w.write_all(js.as_bytes()))?;
    files.push(p);
    let p = dir.join(format!("{stem}.png"));
    // Linear axis without the no-transfer level (often 10× the rest): it goes in the title.
    let title = match report.get("no_transfer", 0) {
        Some(c) => format!("{title}; no transfer {:.3}", c.rmsep_mean),
        None => title.to_string(),
    };
    let mut lp = plot::LinePlot::new(title, "N transfer samples", "RMSEP");
    for m in &METHODS[4..] {
        let pts: Vec<(f64, f64)> = ns
            .iter()
            .filter_map(|&n| report.get(m, n).map(|c| (n as f64, c.rmsep_mean)))
            .collect();
        if !pts.is_empty() {
            lp.series.push(plot::Series::line(
                *m,
                pts.iter().map(|p| p.0).collect(),
                pts.iter().map(|p| p.1).collect(),
            ));
        }
    }
    plot::line_plot(&p, &lp)?;
    files.push(p);
    Ok(files)
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

fn baselines_cmd(g: &Global, a: &BaselinesArgs) -> Result<ExitCode> {
    let mut extra = Vec::new();
    if let Some(ns) = &a.n_transfer {
        extra.push((
            "spektron.baselines.n_transfer",
            Value::Array(ns.iter().map(|&n| Value::Integer(n as i64)).collect()),
            "--n-transfer",
        ));
    }
    if let Some(r) = a.repeats {
        extra.push((
            "spektron.baselines.repeats",
            Value::Integer(r as i64),
            "--repeats",
        ));
    }
    let cfg = load(g, extra)?;
    let stage = io::atomic::Stage::begin(&cfg.run.out_dir)?.inputs([a.data.as_path()]);
    let pair = instruments::load_pair(&a.data, &a.source, &a.target, &a.property)?;
    let bc = &cfg.spektron.baselines;
    let pb = g.progress().bar(bc.repeats as u64, "baselines");
    let report = baselines::evaluate(&pair.data, bc, |_| pb.inc(1))
        .with_context(|| format!("{}", a.data.display()))?;
    pb.finish_and_clear();
    let prop = pair.property.to_ascii_lowercase();
    // The property label comes from the data file: it must not steer the output path.
    let stem = io::atomic::safe_component(&format!("baselines_{}_{}_{}", a.source, a.target, prop));
    let title = format!("{} → {}, {} (RMSEP)", a.source, a.target, pair.property);
    let staged = write_report(stage.dir(), &stem, &title, &report, &bc.n_transfer)?;
    let md = std::fs::read_to_string(&staged[1]).unwrap_or_default();
    let mut files: Vec<PathBuf> = staged.iter().map(|f| stage.final_path(f)).collect();
    files.push(stage.final_path(&cfg.write_effective(stage.dir())?));
    stage.commit()?;
    g.say(md);
    g.say(format!(
        "master LVs (CV) per repetition: {:?}",
        report.master_lvs
    ));
    for f in &files {
        g.say(format!("wrote {}", f.display()));
    }
    g.emit_json(&BaselinesSummary {
        data: a.data.display().to_string(),
        source: &a.source,
        target: &a.target,
        property: &pair.property,
        samples: pair.data.y.len(),
        channels: pair.data.source.ncols(),
        files: files.iter().map(|f| f.display().to_string()).collect(),
        report: &report,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `spx demo` hook: a small synthetic corpus and the baselines on a synthetic two-instrument
/// set (slave = master shifted by 1.5 channels, gain 0.9, offset 0.05, noise).
pub fn demo(cfg: &Config, out: &Path) -> Result<serde_json::Value> {
    let dir = out.join("spektron");
    io::ensure_dir(&dir)?;
    let mut sc = cfg.spektron.synth.clone();
    sc.n = 200;
    let corpus_file = dir.join("synth.h5");
    let r = synth::write_synth_corpus(
        &corpus_file,
        cfg.run.seed,
        &sc,
        &cfg.spektron.corpus,
        &indicatif::ProgressBar::hidden(),
    )?;
    let (xm, xs, y) = synth::two_instrument(cfg.run.seed, 80, 200, 1.5, 0.9, 0.05, 2e-3);
    let data = TransferData {
        source: xm,
        target: xs,
        y,
    };
    let mut bc = cfg.spektron.baselines.clone();
    bc.n_transfer = vec![5, 10, 20];
    bc.repeats = 3;
    let report = baselines::evaluate(&data, &bc, |_| {})?;
    let files = write_report(
        &dir,
        "baselines_synthetic",
        "synthetic master → slave (shift 1.5 ch, gain 0.9, offset 0.05)",
        &report,
        &bc.n_transfer,
    )?;
    let cell = |m: &str, n: usize| report.get(m, n).map_or(f64::NAN, |c| c.rmsep_mean);
    // A tiny masked pretraining run on the same corpus (small model, 20 steps).
    let mut sp = cfg.spektron.clone();
    sp.model.d_model = 32;
    sp.model.n_heads = 4;
    sp.model.d_ff = 64;
    sp.model.layers = "mt".into();
    sp.model.d_state = 4;
    sp.pretrain.batch = 8;
    sp.pretrain.steps = 20;
    sp.pretrain.warmup = 2;
    sp.pretrain.lr = 2e-3;
    sp.pretrain.val_every = 10;
    sp.pretrain.checkpoint_every = 0;
    let dev = spx::backend::DeviceSpec::Cpu.autodiff_device()?;
    let pdir = dir.join("pretrain");
    let (_, prep) = pretrain::pretrain(
        &corpus_file,
        &pdir,
        &sp,
        &dev,
        cfg.run.seed,
        None,
        &indicatif::ProgressBar::hidden(),
    )?;
    let (loss_json, loss_png) = write_loss_files(&pdir, &prep)?;
    // Model arms on the same synthetic two-instrument set, from the checkpoint just written
    // (one repetition, N = 20, short training).
    let mut ex = sp.clone();
    ex.baselines.n_test = 20;
    ex.experiment.repeats = 1;
    ex.experiment.master_epochs = 20;
    ex.experiment.transfer_epochs = 20;
    ex.experiment.scratch_epochs = 10;
    ex.finetune.lr = 1e-3;
    ex.ttt.steps = 3;
    let (xs, xt) = spx::spektron::model::experiment::prepare_spectra(
        &data,
        &[],
        ex.model.n_points,
        ex.corpus.min_std,
    )?;
    let arms = spx::spektron::model::experiment::run_model_arms(
        &xs,
        &xt,
        &data.y.to_vec(),
        &[20],
        &ex,
        Some(&prep.checkpoint),
        Modality::Nir.code(),
        &dev,
        cfg.run.seed,
        |_| {},
    )?;
    let arm = |m: &str| {
        arms.iter()
            .find(|c| c.method == m)
            .map_or(f64::NAN, |c| c.rmsep_mean)
    };
    Ok(serde_json::json!({
        "model_rmsep_no_transfer": arm("spektron_no_transfer"),
        "model_rmsep_lora_n20": arm("spektron_lora"),
        "model_rmsep_scratch_n20": arm("scratch"),
        "pretrain_val_msrp_initial": prep.initial_val.as_ref().map(|v| v.msrp),
        "pretrain_val_msrp_final": prep.log.last().and_then(|e| e.val.as_ref()).map(|v| v.msrp),
        "pretrain_spectra_per_s": prep.spectra_per_s,
        "pretrain_files": [loss_json.display().to_string(), loss_png.display().to_string(), prep.checkpoint.display().to_string()],
        "corpus": corpus_file.display().to_string(),
        "corpus_spectra": r.spectra,
        "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "rmsep_no_transfer": cell("no_transfer", 0),
        "rmsep_pds_n10": cell("pds", 10),
        "rmsep_ds_n20": cell("ds", 20),
    }))
}

#[derive(Serialize)]
struct PretrainSummary {
    corpus: String,
    out_dir: String,
    checkpoint: String,
    loss_log: String,
    loss_plot: String,
    config: String,
    start_step: usize,
    steps_done: usize,
    parameters: usize,
    tokens: usize,
    spectra_per_s: f64,
    initial_val_msrp: Option<f64>,
    final_val_msrp: Option<f64>,
}

/// Loss log (JSON) and loss-curve PNG (train total + MSRP, validation MSRP).
fn write_loss_files(dir: &Path, rep: &pretrain::PretrainReport) -> Result<(PathBuf, PathBuf)> {
    let json = dir.join("loss_log.json");
    let text = serde_json::to_vec_pretty(rep)?;
    io::write_atomic(&json, |w| w.write_all(&text))?;
    let step = |e: &pretrain::LogEntry| e.step as f64;
    let mut series = vec![
        plot::Series::line(
            "train total",
            rep.log.iter().map(step).collect(),
            rep.log.iter().map(|e| e.train.total).collect(),
        ),
        plot::Series::line(
            "train MSRP",
            rep.log.iter().map(step).collect(),
            rep.log.iter().map(|e| e.train.msrp).collect(),
        ),
    ];
    let mut vx = Vec::new();
    let mut vy = Vec::new();
    if let Some(v) = &rep.initial_val {
        vx.push(0.0);
        vy.push(v.msrp);
    }
    for e in &rep.log {
        if let Some(v) = &e.val {
            vx.push(step(e));
            vy.push(v.msrp);
        }
    }
    series.push(plot::Series::line("validation MSRP", vx, vy));
    let png = dir.join("loss_curve.png");
    let mut lp = plot::LinePlot::new("Spektron pretraining", "step", "loss");
    lp.series = series;
    lp.log_y = true;
    plot::line_plot(&png, &lp)?;
    Ok((json, png))
}

fn pretrain_cmd(g: &Global, a: &PretrainArgs) -> Result<ExitCode> {
    let mut extra = Vec::new();
    if let Some(n) = a.steps {
        extra.push((
            "spektron.pretrain.steps",
            Value::Integer(n as i64),
            "--steps",
        ));
    }
    if let Some(n) = a.batch {
        extra.push((
            "spektron.pretrain.batch",
            Value::Integer(n as i64),
            "--batch",
        ));
    }
    let cfg = load(g, extra)?;
    let out = cfg.run.out_dir.clone();
    // Checkpoints go straight to OUT/checkpoints (all or nothing each, and needed by --resume
    // while the run goes on); the loss log, curve and config appear together at the end.
    let stage = io::atomic::Stage::begin(&out)?.inputs([a.corpus.as_path()]);
    let dev = cfg.run.device.autodiff_device()?;
    let pb = g
        .progress()
        .bar(cfg.spektron.pretrain.steps as u64, "pretraining");
    let (_, rep) = pretrain::pretrain_with(
        &a.corpus,
        &out,
        &cfg.spektron,
        &dev,
        cfg.run.seed,
        a.resume.as_deref(),
        a.reset_optimizer,
        &pb,
    )?;
    pb.finish_and_clear();
    let (json, png) = write_loss_files(stage.dir(), &rep)?;
    let (json, png) = (stage.final_path(&json), stage.final_path(&png));
    let cp = stage.final_path(&cfg.write_effective(stage.dir())?);
    stage.commit()?;
    let final_val = rep
        .log
        .iter()
        .rev()
        .find_map(|e| e.val.as_ref())
        .map(|v| v.msrp);
    g.say(format!(
        "pretrained {} steps ({} parameters, {} tokens): {:.1} spectra/s; validation MSRP {} → {}\ncheckpoint {}\nloss log {} , curve {}",
        rep.steps_done,
        rep.parameters,
        rep.n_tokens,
        rep.spectra_per_s,
        rep.initial_val.as_ref().map_or("–".into(), |v| format!("{:.4}", v.msrp)),
        final_val.map_or("–".into(), |v| format!("{v:.4}")),
        rep.checkpoint.display(),
        json.display(),
        png.display()
    ));
    g.emit_json(&PretrainSummary {
        corpus: a.corpus.display().to_string(),
        out_dir: out.display().to_string(),
        checkpoint: rep.checkpoint.display().to_string(),
        loss_log: json.display().to_string(),
        loss_plot: png.display().to_string(),
        config: cp.display().to_string(),
        start_step: rep.start_step,
        steps_done: rep.steps_done,
        parameters: rep.parameters,
        tokens: rep.n_tokens,
        spectra_per_s: rep.spectra_per_s,
        initial_val_msrp: rep.initial_val.as_ref().map(|v| v.msrp),
        final_val_msrp: final_val,
    })?;
    Ok(ExitCode::SUCCESS)
}

fn finetune_cmd(g: &Global, a: &FinetuneArgs) -> Result<ExitCode> {
    use burn::module::Module;
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    use spx::spektron::model::{SpektronModel, checkpoint, finetune};
    let mut extra = Vec::new();
    if let Some(m) = &a.mode {
        extra.push(("spektron.finetune.mode", Value::String(m.clone()), "--mode"));
    }
    let cfg = load(g, extra)?;
    // Outputs (checkpoint, report, config) are staged and appear together at the end; an
    // unwritable OUT fails here, before training.
    let stage = io::atomic::Stage::begin(&cfg.run.out_dir)?
        .inputs([a.checkpoint.join("model.bpk").as_path()]);
    let out = stage.dir().to_path_buf();
    let cp = stage.out().join(spx::config::EFFECTIVE_CONFIG_NAME);
    let modality = Modality::parse(&a.modality)
        .with_context(|| format!("--modality {}: unknown", a.modality))?;
    let pair = instruments::load_pair(&a.data, &a.source, &a.target, &a.property)?;
    let x = &pair.data.target;
    let (n, p) = x.dim();
    if a.n < 2 || a.n >= n {
        bail!("--n {} must be in 2..{} (the file has {n} samples)", a.n, n);
    }
    let axis: Vec<f64> = if pair.axis.len() == p {
        pair.axis.clone()
    } else {
        (0..p).map(|i| i as f64).collect()
    };
    let lay = cfg.spektron.model.layout();
    let mut spectra = Vec::with_capacity(n * lay.n_points);
    for (i, row) in x.rows().into_iter().enumerate() {
        let r = corpus::prepare(
            &axis,
            &row.to_vec(),
            lay.n_points,
            cfg.spektron.corpus.min_std,
        )
        .map_err(|e| {
            anyhow::anyhow!("{}: target spectrum {i} rejected ({e:?})", a.data.display())
        })?;
        spectra.extend(r);
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(cfg.run.seed));
    let (tr, te) = idx.split_at(a.n);
    let pick = |rows: &[usize]| -> (Vec<f32>, Vec<f32>) {
        let xs = rows
            .iter()
            .flat_map(|&r| spectra[r * lay.n_points..(r + 1) * lay.n_points].to_vec())
            .collect();
        let ys = rows.iter().map(|&r| pair.data.y[r] as f32).collect();
        (xs, ys)
    };
    let (xtr, ytr) = pick(tr);
    let (xte, yte) = pick(te);
    let dev = cfg.run.device.autodiff_device()?;
    let mut rng = spx::backend::seeded(&dev, cfg.run.seed);
    let mut mc = cfg.spektron.model.clone();
    mc.n_targets = 1;
    let model = SpektronModel::new(&mc, &mut rng, &dev)?;
    let (model, _) = checkpoint::load(&a.checkpoint, model)?;
    let mtr = vec![modality.code(); tr.len()];
    let data = finetune::Labelled {
        x: &xtr,
        y: &ytr,
        modality: &mtr,
    };
    let (model, rep) = finetune::finetune(
        model,
        &lay,
        &data,
        &cfg.spektron.finetune,
        &dev,
        cfg.run.seed,
    )?;
    let pred = finetune::predict(
        &model.valid(),
        &lay,
        &xte,
        &vec![modality.code(); te.len()],
        &rep,
        &dev,
    );
    let yt = ndarray::Array1::from(yte.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
    let yh = ndarray::Array1::from(pred.clone());
    let rmsep = baselines::rmsep(yt.view(), yh.view());
    let r2 = baselines::r2(yt.view(), yh.view());
    let ck = checkpoint::save(
        &out.join("checkpoints"),
        &model.valid().materialize(),
        rep.epochs_run,
        &[],
    )?;
    let summary = serde_json::json!({
        "data": a.data.display().to_string(), "target": a.target, "property": pair.property,
        "n_transfer": a.n, "n_test": te.len(), "mode": cfg.spektron.finetune.mode,
        "rmsep": rmsep, "r2": r2, "trainable_params": rep.trainable_params,
        "epochs_run": rep.epochs_run, "best_epoch": rep.best_epoch,
        "checkpoint": stage.final_path(&ck).display().to_string(), "config": cp.display().to_string(),
        "report": rep, "test_rows": te, "predictions": pred,
    });
    let f = out.join("finetune.json");
    let text = serde_json::to_vec_pretty(&summary)?;
    io::write_atomic(&f, |w| w.write_all(&text))?;
    cfg.write_effective(&out)?;
    let f = stage.final_path(&f);
    stage.commit()?;
    g.say(format!(
        "fine-tuned ({:?}, {} trainable parameters) on {} {} spectra: RMSEP {rmsep:.4}, R² {r2:.3} on {} test spectra\nreport {}",
        cfg.spektron.finetune.mode, rep.trainable_params, a.n, a.target, te.len(), f.display()
    ));
    g.emit_json(&summary)?;
    Ok(ExitCode::SUCCESS)
}

fn prepared_rows(
    path: &Path,
    axis: &[f64],
    x: &ndarray::Array2<f64>,
    n_points: usize,
    min_std: f64,
) -> Result<Vec<f32>> {
    let (n, p) = x.dim();
    let ax: Vec<f64> = if axis.len() == p {
        axis.to_vec()
    } else {
        (0..p).map(|i| i as f64).collect()
    };
    let mut out = Vec::with_capacity(n * n_points);
    for (i, row) in x.rows().into_iter().enumerate() {
        let r = corpus::prepare(&ax, &row.to_vec(), n_points, min_std)
            .map_err(|e| anyhow::anyhow!("{}: spectrum {i} rejected ({e:?})", path.display()))?;
        out.extend(r);
    }
    Ok(out)
}

fn ttt_cmd(g: &Global, a: &TttArgs) -> Result<ExitCode> {
    use burn::module::Module;
    use spx::spektron::model::{SpektronModel, checkpoint, finetune};
    let mut extra = Vec::new();
    if let Some(n) = a.steps {
        extra.push(("spektron.ttt.steps", Value::Integer(n as i64), "--steps"));
    }
    let cfg = load(g, extra)?;
    // Outputs (checkpoint, report, config) are staged and appear together at the end; an
    // unwritable OUT fails here, before training.
    let stage = io::atomic::Stage::begin(&cfg.run.out_dir)?
        .inputs([a.checkpoint.join("model.bpk").as_path()]);
    let out = stage.dir().to_path_buf();
    let cp = stage.out().join(spx::config::EFFECTIVE_CONFIG_NAME);
    let lay = cfg.spektron.model.layout();
    let np = lay.n_points;
    // (mean, std, test rows) of a fine-tuning run, when given.
    let ft: Option<(Vec<f64>, Vec<f64>, Vec<usize>)> = match &a.finetune_report {
        Some(f) => {
            let text = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
            let v: serde_json::Value =
                serde_json::from_str(&text).with_context(|| f.display().to_string())?;
            let nums = |key: &str| -> Result<Vec<f64>> {
                v["report"][key]
                    .as_array()
                    .and_then(|a| a.iter().map(serde_json::Value::as_f64).collect())
                    .with_context(|| format!("{}: no numeric array report.{key}", f.display()))
            };
            let rows: Vec<usize> = v["test_rows"]
                .as_array()
                .and_then(|a| a.iter().map(|r| r.as_u64().map(|r| r as usize)).collect())
                .with_context(|| format!("{}: no integer array test_rows", f.display()))?;
            Some((nums("y_mean")?, nums("y_std")?, rows))
        }
        None => None,
    };
    // Unlabelled spectra (+ labels of the same rows when scoring).
    let (x, modality, labels): (Vec<f32>, Vec<i8>, Option<Vec<f64>>) = match (&a.corpus, &a.data) {
        (Some(c), _) => {
            let r = spx::io::hdf5::H5Reader::open(c)?;
            let sh = r.shape("spectra")?;
            if sh.len() != 2 || sh[1] != np {
                bail!(
                    "{}: /spectra has shape {sh:?}, expected (N, {np}) (spektron.model.n_points)",
                    c.display()
                );
            }
            pretrain::check_rows_fit(c, sh[0])?;
            let x: Vec<f32> = r.read::<f32>("spectra")?.iter().copied().collect();
            let m: Vec<i8> = r.read::<i8>("modality")?.iter().copied().collect();
            pretrain::check_modality_codes(c, &m)?;
            if m.len() != sh[0] {
                bail!(
                    "{}: /modality has {} rows, /spectra {}",
                    c.display(),
                    m.len(),
                    sh[0]
                );
            }
            (x, m, None)
        }
        (None, Some(d)) => {
            let t = a
                .target
                .as_deref()
                .context("--data needs --target (the instrument to adapt to)")?;
            let pair = instruments::load_pair(d, t, t, &a.property)?;
            let code = Modality::parse(&a.modality)
                .with_context(|| format!("--modality {}: unknown", a.modality))?
                .code();
            let all = prepared_rows(
                d,
                &pair.axis,
                &pair.data.target,
                np,
                cfg.spektron.corpus.min_std,
            )?;
            let n = pair.data.y.len();
            let rows: Vec<usize> = match &ft {
                Some((_, _, r)) => r.clone(),
                None => (0..n).collect(),
            };
            if let Some(&bad) = rows.iter().find(|&&r| r >= n) {
                bail!(
                    "test row {bad} of --finetune-report is beyond the {n} samples of {}",
                    d.display()
                );
            }
            let x = rows
                .iter()
                .flat_map(|&r| all[r * np..(r + 1) * np].to_vec())
                .collect();
            let y = rows.iter().map(|&r| pair.data.y[r]).collect();
            (x, vec![code; rows.len()], Some(y))
        }
        (None, None) => bail!("give the unlabelled target spectra with --corpus or --data"),
    };
    let dev = cfg.run.device.autodiff_device()?;
    let mut rng = spx::backend::seeded(&dev, cfg.run.seed);
    let mut mc = cfg.spektron.model.clone();
    if let Some((m, _, _)) = &ft {
        mc.n_targets = m.len();
    }
    let model = SpektronModel::new(&mc, &mut rng, &dev)?;
    let (model, _) = checkpoint::load(&a.checkpoint, model)?;
    let scale = ft.as_ref().map(|(m, s, _)| finetune::FinetuneReport {
        epochs_run: 0,
        best_epoch: 0,
        best_val_loss: f64::NAN,
        train_loss: vec![],
        val_loss: vec![],
        trainable_params: 0,
        y_mean: m.clone(),
        y_std: s.clone(),
    });
    let score = |m: &SpektronModel| -> Option<(f64, f64, Vec<f64>)> {
        let (rep, y) = (scale.as_ref()?, labels.as_ref()?);
        if rep.y_mean.len() != 1 {
            return None;
        }
        let pred = finetune::predict(&m.valid(), &lay, &x, &modality, rep, &dev);
        let yt = ndarray::ArrayView1::from(y.as_slice());
        let yh = ndarray::ArrayView1::from(pred.as_slice());
        Some((baselines::rmsep(yt, yh), baselines::r2(yt, yh), pred))
    };
    let before = score(&model);
    let t0 = std::time::Instant::now();
    let (model, hist) = finetune::ttt(
        model,
        &lay,
        &x,
        &modality,
        &cfg.spektron.ttt,
        cfg.spektron.loss.mask_block,
        &dev,
        cfg.run.seed,
    )?;
    let secs = t0.elapsed().as_secs_f64();
    let after = score(&model);
    let ck = checkpoint::save(
        &out.join("checkpoints"),
        &model.valid(),
        cfg.spektron.ttt.steps,
        &[],
    )?;
    let summary = serde_json::json!({
        "checkpoint_in": a.checkpoint.display().to_string(),
        "checkpoint": stage.final_path(&ck).display().to_string(),
        "config": cp.display().to_string(),
        "spectra": modality.len(),
        "steps": cfg.spektron.ttt.steps,
        "seconds": secs,
        "msrp_loss": hist,
        "rmsep_before": before.as_ref().map(|b| b.0),
        "r2_before": before.as_ref().map(|b| b.1),
        "rmsep_after": after.as_ref().map(|b| b.0),
        "r2_after": after.as_ref().map(|b| b.1),
        "predictions_after": after.as_ref().map(|b| b.2.clone()),
    });
    let f = out.join("ttt.json");
    let text = serde_json::to_vec_pretty(&summary)?;
    io::write_atomic(&f, |w| w.write_all(&text))?;
    cfg.write_effective(&out)?;
    let (f, ck) = (stage.final_path(&f), stage.final_path(&ck));
    stage.commit()?;
    let fmt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.4}"));
    g.say(format!(
        "test-time training: {} steps on {} unlabelled spectra ({secs:.1} s), masked-reconstruction loss {} → {}; RMSEP {} → {}\ncheckpoint {}\nreport {}",
        hist.len(),
        modality.len(),
        fmt(hist.first().copied()),
        fmt(hist.last().copied()),
        fmt(before.as_ref().map(|b| b.0)),
        fmt(after.as_ref().map(|b| b.0)),
        ck.display(),
        f.display()
    ));
    g.emit_json(&summary)?;
    Ok(ExitCode::SUCCESS)
}

/// The `--quick` profile (keys the user set with `--set` are left alone).
const QUICK: &[(&str, &str)] = &[
    ("spektron.model.d_model", "32"),
    ("spektron.model.n_heads", "4"),
    ("spektron.model.d_ff", "64"),
    ("spektron.model.layers", "\"mt\""),
    ("spektron.model.d_state", "4"),
    ("spektron.model.z_chem", "16"),
    ("spektron.model.z_inst", "8"),
    ("spektron.model.dropout", "0.0"),
    ("spektron.experiment.repeats", "1"),
    ("spektron.experiment.n_transfer", "[5, 20]"),
    ("spektron.experiment.table_n", "20"),
    ("spektron.experiment.master_epochs", "20"),
    ("spektron.experiment.transfer_epochs", "20"),
    ("spektron.experiment.scratch_epochs", "20"),
    ("spektron.ttt.steps", "5"),
];

/// Rows = methods (classical, then model arms), columns = N; cells "RMSEP (R²)".
fn experiment_markdown(title: &str, cells: &[baselines::Cell], ns: &[usize]) -> String {
    use spx::spektron::model::experiment::ARMS;
    let mut cols = vec![0usize];
    cols.extend(ns.iter().copied());
    let mut md = format!(
        "### {title}\n\nRMSEP mean ± sd (R² mean) over the repetitions; N = labelled/paired target transfer samples.\n\n| method |"
    );
    for n in &cols {
        let _ = write!(md, " N={n} |");
    }
    md.push_str("\n|---|");
    for _ in &cols {
        md.push_str("---|");
    }
    md.push('\n');
    for m in METHODS.iter().chain(ARMS) {
        if !cells.iter().any(|c| c.method == *m) {
            continue;
        }
        let _ = write!(md, "| {} |", method_label(m));
        for &n in &cols {
            match cells.iter().find(|c| c.method == *m && c.n_transfer == n) {
                Some(c) => {
                    let _ = write!(
                        md,
                        " {:.4} ± {:.4} ({:.2}) |",
                        c.rmsep_mean, c.rmsep_std, c.r2_mean
                    );
                }
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    md
}

fn experiment_cmd(g: &Global, a: &ExperimentArgs, table: bool) -> Result<ExitCode> {
    use burn::module::Module;
    use spx::spektron::model::{SpektronModel, experiment};
    let mut extra: Vec<(&str, Value, &str)> = Vec::new();
    if a.quick {
        for (k, v) in QUICK {
            let pre = format!("{k}=");
            if !g.sets.iter().any(|s| s.trim_start().starts_with(&pre)) {
                let val: Value = toml::from_str::<toml::Table>(&format!("v = {v}"))
                    .expect("quick profile values are TOML")["v"]
                    .clone();
                extra.push((k, val, "--quick"));
            }
        }
    }
    if let Some(r) = a.repeats {
        extra.push((
            "spektron.experiment.repeats",
            Value::Integer(r as i64),
            "--repeats",
        ));
    }
    if let Some(ns) = &a.n_transfer {
        if table {
            if ns.len() != 1 {
                bail!("--n-transfer: the table takes one N (got {ns:?})");
            }
            extra.push((
                "spektron.experiment.table_n",
                Value::Integer(ns[0] as i64),
                "--n-transfer",
            ));
        } else {
            extra.push((
                "spektron.experiment.n_transfer",
                Value::Array(ns.iter().map(|&n| Value::Integer(n as i64)).collect()),
                "--n-transfer",
            ));
        }
    }
    let cfg = load(g, extra)?;
    let ec = &cfg.spektron.experiment;
    let ns: Vec<usize> = if table {
        vec![ec.table_n]
    } else {
        ec.n_transfer.clone()
    };
    let out = cfg.run.out_dir.clone();
    io::atomic::Stage::begin(&out)?; // fails now, not after training, if OUT is unwritable
    let cp = out.join(spx::config::EFFECTIVE_CONFIG_NAME);
    let modality = Modality::parse(&a.modality)
        .with_context(|| format!("--modality {}: unknown", a.modality))?;
    let (data, axis, title, stem, property, short) = match &a.data {
        Some(d) => {
            let pair = instruments::load_pair(d, &a.source, &a.target, &a.property)?;
            let prop = pair.property.trim().to_string();
            (
                pair.data,
                pair.axis,
                format!("{} → {}, {}", a.source, a.target, prop),
                format!("{}_{}_{}", a.source, a.target, prop.to_ascii_lowercase()),
                prop.clone(),
                format!("{} → {}, {}", a.source, a.target, prop),
            )
        }
        None => {
            let (xm, xs, y) = synth::two_instrument(
                cfg.run.seed,
                ec.synth_samples,
                ec.synth_channels,
                ec.synth_shift,
                ec.synth_gain,
                ec.synth_offset,
                ec.synth_noise,
            );
            (
                TransferData {
                    source: xm,
                    target: xs,
                    y,
                },
                Vec::new(),
                format!(
                    "synthetic master → slave (shift {} ch, gain {}, offset {})",
                    ec.synth_shift, ec.synth_gain, ec.synth_offset
                ),
                "synthetic".to_string(),
                "analyte 1".to_string(),
                "synthetic".to_string(),
            )
        }
    };
    let mut bc = cfg.spektron.baselines.clone();
    bc.n_transfer = ns.clone();
    bc.repeats = ec.repeats;
    let base = baselines::evaluate(&data, &bc, |_| {})
        .with_context(|| "classical baselines".to_string())?;
    let lay = cfg.spektron.model.layout();
    let (xs, xt) =
        experiment::prepare_spectra(&data, &axis, lay.n_points, cfg.spektron.corpus.min_std)?;
    let dev = cfg.run.device.autodiff_device()?;
    let params = {
        let mut mc = cfg.spektron.model.clone();
        mc.n_targets = 1;
        let mut rng = spx::backend::seeded(&dev, cfg.run.seed);
        SpektronModel::new(&mc, &mut rng, &dev)?.num_params()
    };
    let pb = g.progress().bar(
        (ec.repeats * (2 + 2 * ns.len())) as u64,
        if table {
            "E4 table"
        } else {
            "E3 sample efficiency"
        },
    );
    let t0 = std::time::Instant::now();
    let arms = experiment::run_model_arms(
        &xs,
        &xt,
        &data.y.to_vec(),
        &ns,
        &cfg.spektron,
        a.checkpoint.as_deref(),
        modality.code(),
        &dev,
        cfg.run.seed,
        |m| {
            pb.set_message(m.to_string());
            pb.inc(1);
        },
    )?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let mut cells = base.cells.clone();
    cells.extend(arms);
    let (tag, name) = if table { ("e4", "E4") } else { ("e3", "E3") };
    let stem = io::atomic::safe_component(&format!("{tag}_{stem}"));
    let title = format!("{name}: {title}");
    let mut files = Vec::new();
    let p = out.join(format!("{stem}.csv"));
    let mut csv = String::from("method,n_transfer,rmsep_mean,rmsep_std,r2_mean\n");
    for c in &cells {
        let _ = writeln!(
            csv,
            "{},{},{:.6},{:.6},{:.6}",
            c.method, c.n_transfer, c.rmsep_mean, c.rmsep_std, c.r2_mean
        );
    }
    io::write_atomic(&p, |w| w.write_all(csv.as_bytes()))?;
    files.push(p);
    let md = experiment_markdown(&title, &cells, &ns);
    let p = out.join(format!("{stem}.md"));
    io::write_atomic(&p, |w| w.write_all(md.as_bytes()))?;
    files.push(p);
    if !table {
        let p = out.join(format!("{stem}.png"));
        let cell = |m: &str| {
            cells
                .iter()
                .find(|c| c.method == m && c.n_transfer == 0)
                .map_or(f64::NAN, |c| c.rmsep_mean)
        };
        let mut lp = plot::LinePlot::new(
            format!(
                "{name} {short}; N=0: no transfer {:.3}, Spektron TTT {:.3}",
                cell("no_transfer"),
                cell("spektron_ttt")
            ),
            "N transfer samples",
            "RMSEP",
        );
        lp.log_y = true;
        for m in METHODS[4..].iter().chain(&["spektron_lora", "scratch"]) {
            let pts: Vec<(f64, f64)> = ns
                .iter()
                .filter_map(|&n| {
                    cells
                        .iter()
                        .find(|c| c.method == *m && c.n_transfer == n)
                        .map(|c| (n as f64, c.rmsep_mean))
                })
                .collect();
            if !pts.is_empty() {
                lp.series.push(plot::Series::line(
                    *m,
                    pts.iter().map(|p| p.0).collect(),
                    pts.iter().map(|p| p.1).collect(),
                ));
            }
        }
        plot::line_plot(&p, &lp)?;
        files.push(p);
    }
    let summary = serde_json::json!({
        "experiment": name,
        "data": a.data.as_ref().map(|d| d.display().to_string()),
        "source": a.source, "target": a.target, "property": property,
        "pretrained": a.checkpoint.as_ref().map(|d| d.display().to_string()),
        "repeats": ec.repeats, "n_test": bc.n_test, "n_transfer": ns,
        "model_parameters": params, "model_seconds": secs,
        "master_lvs": base.master_lvs,
        "config": cp.display().to_string(),
        "cells": cells,
    });
    let p = out.join(format!("{stem}.json"));
    let text = serde_json::to_vec_pretty(&summary)?;
    io::write_atomic(&p, |w| w.write_all(&text))?;
    files.push(p);
    cfg.write_effective(&out)?;
    g.say(md);
    g.say(format!(
        "model arms: {params} parameters, {secs:.1} s{}",
        if a.checkpoint.is_none() {
            " (no --checkpoint: the Spektron arms start from random weights)"
        } else {
            ""
        }
    ));
    for f in &files {
        g.say(format!("wrote {}", f.display()));
    }
    let mut js = summary;
    js["files"] = serde_json::json!(
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
    );
    g.emit_json(&js)?;
    Ok(ExitCode::SUCCESS)
}
