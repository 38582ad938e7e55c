//! `spx spektron …`: argument parsing, config, one library call per command, printing. The
//! work is in `spx::spektron` (pipelines: `classical`, `finetune`, `ttt`, `experiment`; corpus
//! and pretraining in `data::corpus`, `data::synth`, `model::pretrain`; writers in `report`).

mod corpus;
mod experiment;
mod model;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use spx::config::Config;
use spx::spektron::data::Modality;
use toml::Value;

pub use self::corpus::CorpusCmd;
pub use self::experiment::{BaselinesArgs, ExperimentCmd, demo};
pub use self::model::{FinetuneArgs, PretrainArgs, TttArgs};
use super::{Flag, Global};

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

/// Effective config with this command's flags (one layering: `Global::setup_with`).
fn load(g: &Global, flags: Vec<Flag>) -> Result<Config> {
    g.setup_with(&[], flags)
}

/// A count flag as a config layer.
fn int(key: &'static str, v: usize, flag: &'static str) -> Flag {
    (
        key,
        Value::Integer(i64::try_from(v).unwrap_or(i64::MAX)),
        flag,
    )
}

/// A list-of-counts flag as a config layer.
fn ints(key: &'static str, v: &[usize], flag: &'static str) -> Flag {
    let a = v
        .iter()
        .map(|&n| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)))
        .collect();
    (key, Value::Array(a), flag)
}

fn modality(s: &str) -> Result<Modality> {
    Modality::parse(s).with_context(|| format!("--modality {s}: unknown"))
}

pub fn run(g: &Global, cmd: &SpektronCmd) -> Result<ExitCode> {
    match cmd {
        SpektronCmd::Corpus(c) => corpus::run(g, c),
        SpektronCmd::Baselines(a) => experiment::baselines(g, a),
        SpektronCmd::Pretrain(a) => model::pretrain(g, a),
        SpektronCmd::Finetune(a) => model::finetune(g, a),
        SpektronCmd::Ttt(a) => model::ttt(g, a),
        SpektronCmd::Experiment(c) => experiment::run(g, c),
    }
}
