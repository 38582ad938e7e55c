//! `spx spektron corpus build|info|synth`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use spx::config::Config;
use spx::io;
use spx::spektron::data::{Modality, corpus, synth};
use toml::Value;

use super::{Global, int, load};

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
    #[arg(long, allow_negative_numbers = true, value_parser = super::super::count)]
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
    #[arg(long, allow_negative_numbers = true, value_parser = super::super::count)]
    pub n: Option<usize>,
    /// Points per resampled spectrum (spektron.corpus.target_points).
    #[arg(long, allow_negative_numbers = true, value_parser = super::super::count)]
    pub points: Option<usize>,
}

pub fn run(g: &Global, cmd: &CorpusCmd) -> Result<ExitCode> {
    match cmd {
        CorpusCmd::Build(a) => build(g, a),
        CorpusCmd::Info(a) => info(g, a),
        CorpusCmd::Synth(a) => synth_cmd(g, a),
    }
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
        extra.push(int("spektron.corpus.target_points", p, "--points"));
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
        extra.push(int("spektron.synth.n", n, "--n"));
    }
    if let Some(p) = a.points {
        extra.push(int("spektron.corpus.target_points", p, "--points"));
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
