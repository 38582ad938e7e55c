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
    #[arg(long)]
    pub steps: Option<usize>,
    /// Batch size (spektron.pretrain.batch).
    #[arg(long)]
    pub batch: Option<usize>,
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
    #[arg(long)]
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
    #[arg(long)]
    pub n: Option<usize>,
    /// Points per resampled spectrum (spektron.corpus.target_points).
    #[arg(long)]
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
    #[arg(long)]
    pub repeats: Option<usize>,
}

/// Effective config with this command's flags on top of the global ones.
fn load(g: &Global, extra: Vec<(&str, Value, &str)>) -> Result<Config> {
    g.setup()?; // thread pool + validation of the global layers
    let mut flags: Vec<(&str, Value, &str)> = Vec::new();
    if let Some(d) = &g.device {
        flags.push(("run.device", Value::String(d.clone()), "--device"));
    }
    if let Some(s) = g.seed {
        let s = i64::try_from(s).context("--seed must be below 2^63")?;
        flags.push(("run.seed", Value::Integer(s), "--seed"));
    }
    if let Some(o) = &g.out_dir {
        flags.push((
            "run.out_dir",
            Value::String(o.display().to_string()),
            "--out",
        ));
    }
    if let Some(t) = g.threads {
        flags.push(("run.threads", Value::Integer(t as i64), "--threads"));
    }
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
    let pb = g.progress().bar(0, "corpus build");
    let t0 = std::time::Instant::now();
    let r = corpus::build(&a.inputs, &file, &cfg.spektron.corpus, &pb)?;
    pb.finish_and_clear();
    tracing::info!(
        "{} spectra in {:.2} s",
        r.spectra,
        t0.elapsed().as_secs_f64()
    );
    let cp = cfg.write_effective(&dir)?;
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
    let pb = g.progress().bar(0, "synthetic corpus");
    let r = synth::write_synth_corpus(
        &file,
        cfg.run.seed,
        &cfg.spektron.synth,
        &cfg.spektron.corpus,
        &pb,
    )?;
    pb.finish_and_clear();
    let cp = cfg.write_effective(&dir)?;
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
    let pair = instruments::load_pair(&a.data, &a.source, &a.target, &a.property)?;
    let bc = &cfg.spektron.baselines;
    let dir = cfg.run.out_dir.clone();
    io::ensure_dir(&dir)?;
    let pb = g.progress().bar(bc.repeats as u64, "baselines");
    let report = baselines::evaluate(&pair.data, bc, |_| pb.inc(1))
        .with_context(|| format!("{}", a.data.display()))?;
    pb.finish_and_clear();
    let prop = pair.property.to_ascii_lowercase();
    let stem = format!("baselines_{}_{}_{}", a.source, a.target, prop);
    let title = format!("{} → {}, {} (RMSEP)", a.source, a.target, pair.property);
    let mut files = write_report(&dir, &stem, &title, &report, &bc.n_transfer)?;
    files.push(cfg.write_effective(&dir)?);
    let md = std::fs::read_to_string(&files[1]).unwrap_or_default();
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
    Ok(serde_json::json!({
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
    io::ensure_dir(&out)?;
    let cp = cfg.write_effective(&out)?;
    let dev = cfg
        .run
        .device
        .parse::<spx::backend::DeviceSpec>()?
        .autodiff_device()?;
    let pb = g
        .progress()
        .bar(cfg.spektron.pretrain.steps as u64, "pretraining");
    let (_, rep) = pretrain::pretrain(
        &a.corpus,
        &out,
        &cfg.spektron,
        &dev,
        cfg.run.seed,
        a.resume.as_deref(),
        &pb,
    )
    .with_context(|| format!("pretraining on {}", a.corpus.display()))?;
    pb.finish_and_clear();
    let (json, png) = write_loss_files(&out, &rep)?;
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
    let out = cfg.run.out_dir.clone();
    io::ensure_dir(&out)?;
    let cp = cfg.write_effective(&out)?;
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
    let dev = cfg
        .run
        .device
        .parse::<spx::backend::DeviceSpec>()?
        .autodiff_device()?;
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
        "checkpoint": ck.display().to_string(), "config": cp.display().to_string(),
        "report": rep, "test_rows": te, "predictions": pred,
    });
    let f = out.join("finetune.json");
    let text = serde_json::to_vec_pretty(&summary)?;
    io::write_atomic(&f, |w| w.write_all(&text))?;
    g.say(format!(
        "fine-tuned ({:?}, {} trainable parameters) on {} {} spectra: RMSEP {rmsep:.4}, R² {r2:.3} on {} test spectra\nreport {}",
        cfg.spektron.finetune.mode, rep.trainable_params, a.n, a.target, te.len(), f.display()
    ));
    g.emit_json(&summary)?;
    Ok(ExitCode::SUCCESS)
}
