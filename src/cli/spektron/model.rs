//! `spx spektron pretrain|finetune|ttt`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;
use serde::Serialize;
use spx::io::atomic::Stage;
use spx::spektron::model::pretrain;
use spx::spektron::{finetune as ft, report, ttt as tt};
use toml::Value;

use super::{Global, int, load, modality};

#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// Corpus file written by `spx spektron corpus build|synth`.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Resume from a checkpoint directory (e.g. OUT/checkpoints/last).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Total optimisation steps (spektron.pretrain.steps).
    #[arg(long, allow_negative_numbers = true, value_parser = super::super::count)]
    pub steps: Option<usize>,
    /// Batch size (spektron.pretrain.batch).
    #[arg(long, allow_negative_numbers = true, value_parser = super::super::count)]
    pub batch: Option<usize>,
    /// Accept a --resume checkpoint without optimizer state (AdamW restarts its moments);
    /// without this flag such a checkpoint is refused.
    #[arg(long, requires = "resume")]
    pub reset_optimizer: bool,
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
    #[arg(long, allow_negative_numbers = true, value_parser = super::super::count)]
    pub steps: Option<usize>,
    /// Modality of --data spectra (ir, raman, nir, ftir, unknown).
    #[arg(long, default_value = "nir")]
    pub modality: String,
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
    /// `--resume` continued the checkpointed batch stream (equal to an uninterrupted run).
    stream_restored: bool,
    initial_val_msrp: Option<f64>,
    final_val_msrp: Option<f64>,
}

pub fn pretrain(g: &Global, a: &PretrainArgs) -> Result<ExitCode> {
    let mut extra = Vec::new();
    if let Some(n) = a.steps {
        extra.push(int("spektron.pretrain.steps", n, "--steps"));
    }
    if let Some(n) = a.batch {
        extra.push(int("spektron.pretrain.batch", n, "--batch"));
    }
    let cfg = load(g, extra)?;
    let out = cfg.run.out_dir.clone();
    // Checkpoints go straight to OUT/checkpoints (all or nothing each, and needed by --resume
    // while the run goes on); the loss log, curve and config appear together at the end.
    let stage = Stage::begin(&out)?.inputs([a.corpus.as_path()]);
    let dev = cfg.run.device.autodiff_device()?;
    let pb = g
        .progress()
        .bar(cfg.spektron.pretrain.steps as u64, "pretraining");
    let (_, rep) = pretrain::pretrain_with(
        &a.corpus,
        &out,
        cfg.spektron.pretrain_settings(),
        &dev,
        cfg.run.seed,
        a.resume.as_deref(),
        a.reset_optimizer,
        &pb,
    )?;
    pb.finish_and_clear();
    let (json, png) = report::write_loss_files(stage.dir(), &rep)?;
    let (json, png) = (stage.final_path(&json), stage.final_path(&png));
    let cp = stage.final_path(&cfg.write_effective(stage.dir())?);
    stage.commit()?;
    let final_val = rep
        .log
        .iter()
        .rev()
        .find_map(|e| e.val.as_ref())
        .map(|v| v.msrp);
    let fmt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.4}"));
    g.say(format!(
        "pretrained {} steps ({} parameters, {} tokens): {:.1} spectra/s; validation MSRP {} → {}\ncheckpoint {}\nloss log {} , curve {}",
        rep.steps_done,
        rep.parameters,
        rep.n_tokens,
        rep.spectra_per_s,
        fmt(rep.initial_val.as_ref().map(|v| v.msrp)),
        fmt(final_val),
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
        stream_restored: rep.stream_restored,
        initial_val_msrp: rep.initial_val.as_ref().map(|v| v.msrp),
        final_val_msrp: final_val,
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn finetune(g: &Global, a: &FinetuneArgs) -> Result<ExitCode> {
    let mut extra = Vec::new();
    if let Some(m) = &a.mode {
        extra.push(("spektron.finetune.mode", Value::String(m.clone()), "--mode"));
    }
    let cfg = load(g, extra)?;
    // Outputs (checkpoint, report, config) are staged and appear together at the end; an
    // unwritable OUT fails here, before training.
    let stage = Stage::begin(&cfg.run.out_dir)?.inputs([a.checkpoint.join("model.bpk").as_path()]);
    let config_file = stage.out().join(spx::config::EFFECTIVE_CONFIG_NAME);
    let input = ft::Input {
        checkpoint: &a.checkpoint,
        data: &a.data,
        target: &a.target,
        source: &a.source,
        property: &a.property,
        n: a.n,
        modality: modality(&a.modality)?,
        config_file: &config_file,
    };
    let dev = cfg.run.device.autodiff_device()?;
    let s = ft::run(
        &input,
        cfg.spektron.finetune_settings(cfg.run.seed),
        &dev,
        &stage,
    )?;
    cfg.write_effective(stage.dir())?;
    stage.commit()?;
    g.say(format!(
        "fine-tuned ({:?}, {} trainable parameters) on {} {} spectra: RMSEP {:.4}, R² {:.3} on {} test spectra\nreport {}",
        s.mode, s.trainable_params, s.n_transfer, s.target, s.rmsep, s.r2, s.n_test, s.file.display()
    ));
    g.emit_json(&serde_json::to_value(&s)?)?;
    Ok(ExitCode::SUCCESS)
}

pub fn ttt(g: &Global, a: &TttArgs) -> Result<ExitCode> {
    let mut extra = Vec::new();
    if let Some(n) = a.steps {
        extra.push(int("spektron.ttt.steps", n, "--steps"));
    }
    let cfg = load(g, extra)?;
    // Outputs (checkpoint, report, config) are staged and appear together at the end; an
    // unwritable OUT fails here, before training.
    let stage = Stage::begin(&cfg.run.out_dir)?.inputs([a.checkpoint.join("model.bpk").as_path()]);
    let config_file = stage.out().join(spx::config::EFFECTIVE_CONFIG_NAME);
    let spectra = match (&a.corpus, &a.data) {
        (Some(c), _) => tt::Spectra::Corpus(c),
        (None, Some(d)) => tt::Spectra::Instrument {
            data: d,
            target: a
                .target
                .as_deref()
                .context("--data needs --target (the instrument to adapt to)")?,
            property: &a.property,
            modality: modality(&a.modality)?,
        },
        (None, None) => anyhow::bail!("give the unlabelled target spectra with --corpus or --data"),
    };
    let input = tt::Input {
        checkpoint: &a.checkpoint,
        spectra,
        finetune_report: a.finetune_report.as_deref(),
        config_file: &config_file,
    };
    let dev = cfg.run.device.autodiff_device()?;
    let r = tt::run(
        &input,
        cfg.spektron.ttt_settings(cfg.run.seed),
        &dev,
        &stage,
    )?;
    cfg.write_effective(stage.dir())?;
    stage.commit()?;
    let fmt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.4}"));
    g.say(format!(
        "test-time training: {} steps on {} unlabelled spectra ({:.1} s), masked-reconstruction loss {} → {}; RMSEP {} → {}\ncheckpoint {}\nreport {}",
        r.msrp_loss.len(),
        r.spectra,
        r.seconds,
        fmt(r.msrp_loss.first().copied()),
        fmt(r.msrp_loss.last().copied()),
        fmt(r.rmsep_before),
        fmt(r.rmsep_after),
        r.checkpoint,
        r.file.display()
    ));
    g.emit_json(&serde_json::to_value(&r)?)?;
    Ok(ExitCode::SUCCESS)
}
