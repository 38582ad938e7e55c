//! Checkpoints: model weights as burnpack (`model.bpk`, burn's `save_file`/`load_file`) plus
//! `state.json` (step, loss log) in one directory per checkpoint; `last` is a copy of the newest.
//! Optimizer moments are not stored: a resumed run restarts AdamW's moment estimates.

use std::path::{Path, PathBuf};

use burn::module::Module;
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

fn write_one(dir: &Path, model: &SpektronModel, state: &TrainState) -> Result<(), SpxError> {
    ensure_dir(dir)?;
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
    let state = TrainState {
        step,
        log: log.to_vec(),
    };
    write_one(&dir.join(format!("step-{step:07}")), model, &state)?;
    let last = dir.join("last");
    write_one(&last, model, &state)?;
    Ok(last)
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
