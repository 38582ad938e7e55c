//! Checkpoints: model weights as burnpack (`model.bpk`, burn's `save_file`/`load_file`) plus
//! `state.json` (step, loss log) in one directory per checkpoint; `last` is a copy of the newest.
//! Pretraining also stores the AdamW state (`optimizer.bpk`, burn's optimizer record keyed by
//! parameter id; burnpack model files keep those ids), so `--resume` continues the moment
//! estimates instead of restarting them.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use super::SpektronModel;
use super::pretrain::LogEntry;
use crate::error::SpxError;
use crate::io::{ensure_dir, write_atomic};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainState {
    pub step: usize,
    pub log: Vec<LogEntry>,
}

fn write_one(
    dir: &Path,
    model: &SpektronModel,
    opt: Option<&ModuleOptimizer>,
    state: &TrainState,
) -> Result<(), SpxError> {
    ensure_dir(dir)?;
    if let Some(opt) = opt {
        let f = dir.join("optimizer.bpk");
        let tmp = dir.join("optimizer.bpk.tmp");
        opt.save(&tmp)
            .map_err(|e| SpxError::file(&f, format!("saving optimizer state: {e}")))?;
        let written = if tmp.exists() {
            tmp
        } else {
            tmp.with_extension("tmp.bpk")
        };
        std::fs::rename(&written, &f).map_err(|e| SpxError::io(&f, e))?;
    }
    let bpk = dir.join("model.bpk");
    let tmp = dir.join("model.bpk.tmp");
    model
        .clone()
        .save_file(&tmp)
        .map_err(|e| SpxError::file(&bpk, format!("saving checkpoint: {e}")))?;
    // burnpack may append its extension; accept either name.
    let written = if tmp.exists() {
        tmp
    } else {
        tmp.with_extension("tmp.bpk")
    };
    std::fs::rename(&written, &bpk).map_err(|e| SpxError::io(&bpk, e))?;
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| SpxError::file(dir.join("state.json"), e.to_string()))?;
    write_atomic(&dir.join("state.json"), |w| {
        std::io::Write::write_all(w, &json)
    })
}

/// Save `dir/step-<N>/` and `dir/last/`; returns the `last` directory.
pub fn save(
    dir: &Path,
    model: &SpektronModel,
    step: usize,
    log: &[LogEntry],
) -> Result<PathBuf, SpxError> {
    save_with_optimizer(dir, model, None, step, log)
}

/// [`save`] plus the optimizer state (`optimizer.bpk`) when given.
pub fn save_with_optimizer(
    dir: &Path,
    model: &SpektronModel,
    opt: Option<&ModuleOptimizer>,
    step: usize,
    log: &[LogEntry],
) -> Result<PathBuf, SpxError> {
    let state = TrainState {
        step,
        log: log.to_vec(),
    };
    write_one(&dir.join(format!("step-{step:07}")), model, opt, &state)?;
    let last = dir.join("last");
    write_one(&last, model, opt, &state)?;
    Ok(last)
}

/// Restore the optimizer state stored in a checkpoint directory into `opt` (same optimizer
/// config; the model must have been loaded from the same checkpoint so parameter ids match).
/// Returns `(opt, false)` unchanged when the checkpoint has no `optimizer.bpk`.
pub fn load_optimizer(
    dir: &Path,
    opt: ModuleOptimizer,
) -> Result<(ModuleOptimizer, bool), SpxError> {
    let f = dir.join("optimizer.bpk");
    if !f.is_file() {
        return Ok((opt, false));
    }
    let opt = opt
        .load(&f)
        .map_err(|e| SpxError::file(&f, format!("loading optimizer state: {e}")))?;
    Ok((opt, true))
}

/// Load weights and state from a checkpoint directory into a model of the same config.
pub fn load(dir: &Path, model: SpektronModel) -> Result<(SpektronModel, TrainState), SpxError> {
    let bpk = dir.join("model.bpk");
    if !bpk.is_file() {
        return Err(SpxError::file(&bpk, "checkpoint weights not found"));
    }
    let model = model.try_load_file(&bpk).map_err(|e| {
        SpxError::file(
            &bpk,
            format!("loading checkpoint (model config must match): {e}"),
        )
    })?;
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| SpxError::io(&sp, e))?;
    let state: TrainState =
        serde_json::from_str(&text).map_err(|e| SpxError::file(&sp, e.to_string()))?;
    Ok((model, state))
}
