//! Checkpoints: model weights as burnpack (`model.bpk`, burn's `save_file`/`load_file`) plus
//! `state.json` (step, loss log, CRC-32 checksum and length of every weight file) in one directory per
//! checkpoint; `last` is a copy of the newest. Pretraining also stores the AdamW state
//! (`optimizer.bpk`, burn's optimizer record keyed by parameter id; burnpack model files keep
//! those ids), so `--resume` continues the moment estimates instead of restarting them. The
//! optimizer file is written in a canonical tensor order ([`crate::io::burnpack`]), so the same
//! state gives the same bytes.
//!
//! All or nothing: a checkpoint is written into a hidden sibling directory and renamed into
//! place when complete, and `last` is replaced by a rename too, so a kill leaves either the old
//! or the new checkpoint, never a mixture. Self-checking: [`load`] recomputes the recorded
//! hashes, so a checkpoint whose files do not belong together (copied by hand, truncated, bit
//! flipped) is refused with the file named.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::ModuleOptimizer;
use burn::tensor::{Bool, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::SpektronModel;
use super::losses::LossTerms;
use crate::error::SpxError;
use crate::io::{ensure_dir, write_atomic};

const MODEL: &str = "model.bpk";
const OPTIMIZER: &str = "optimizer.bpk";
const STATE: &str = "state.json";

/// One pretraining step of the loss log a checkpoint carries.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LogEntry {
    pub step: usize,
    pub lr: f64,
    pub train: LossTerms,
    /// Validation terms when computed at this step.
    pub val: Option<LossTerms>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainState {
    pub step: usize,
    pub log: Vec<LogEntry>,
    /// CRC-32 checksum and length (hex) of each weight file of the checkpoint, by file name.
    #[serde(default)]
    pub checksum: std::collections::BTreeMap<String, String>,
    /// Where pretraining's batch stream stood after `step` (absent in fine-tuning/TTT
    /// checkpoints and in pretraining checkpoints written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamState>,
}

/// The position of pretraining's batch stream after a checkpointed step, so that a resumed
/// run draws exactly the batches, augmentations and masks the uninterrupted run would have.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StreamState {
    /// ChaCha8 key of the host RNG (64 hex digits).
    pub rng_key: String,
    /// ChaCha8 stream number.
    pub rng_stream: u64,
    /// ChaCha8 word position (a u128, written in decimal).
    pub rng_word_pos: String,
    /// First corpus row of the window held in memory.
    pub window_start: usize,
    /// Rows of that window not yet served, in serving order from the end (empty: the next
    /// batch reads a new window).
    pub window_rows: Vec<usize>,
}

/// Gives every parameter the id of its position in the module (0, 1, 2, …) instead of burn's
/// random one: the ids are stored in `model.bpk` and key the optimizer state, so with random
/// ids the same weights would give different bytes on every run.
struct Renumber(u64);

impl Renumber {
    fn next(&mut self) -> ParamId {
        self.0 += 1;
        ParamId::from(self.0 - 1)
    }
}

impl ModuleMapper for Renumber {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (_, t, m) = param.consume();
        Param::from_mapped_value(self.next(), t, m)
    }
    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        let (_, t, m) = param.consume();
        Param::from_mapped_value(self.next(), t, m)
    }
    fn map_bool<const D: usize>(
        &mut self,
        param: Param<Tensor<D, Bool>>,
    ) -> Param<Tensor<D, Bool>> {
        let (_, t, m) = param.consume();
        Param::from_mapped_value(self.next(), t, m)
    }
}

/// The module with deterministic parameter ids (see [`Renumber`]). Call it before an
/// optimizer sees the module: the optimizer state is keyed by these ids.
pub fn renumber_params<M: Module>(module: M) -> M {
    module.map(&mut Renumber(0))
}

fn checksum_of(path: &Path) -> Result<String, SpxError> {
    crate::io::atomic::file_checksum(path)
}

/// burnpack may append its extension to the name it is given; return the file it wrote.
fn written(tmp: &Path) -> PathBuf {
    if tmp.exists() {
        tmp.to_path_buf()
    } else {
        tmp.with_extension("tmp.bpk")
    }
}

/// Write a complete checkpoint into the fresh directory `dir`.
fn write_into(
    dir: &Path,
    model: &SpektronModel,
    opt: Option<&ModuleOptimizer>,
    state: &mut TrainState,
) -> Result<(), SpxError> {
    ensure_dir(dir)?;
    state.checksum.clear();
    if let Some(opt) = opt {
        let f = dir.join(OPTIMIZER);
        // burn lays the record out in hash-map order; the canonical layout makes the same
        // state the same bytes (see `canonical`).
        let raw = opt
            .into_bytes()
            .map_err(|e| SpxError::file(&f, format!("saving optimizer state: {e}")))?;
        let bytes = crate::io::burnpack::canonical(&raw)
            .map_err(|e| SpxError::file(&f, format!("saving optimizer state: {e}")))?;
        write_atomic(&f, |w| std::io::Write::write_all(w, &bytes))?;
        state.checksum.insert(OPTIMIZER.into(), checksum_of(&f)?);
    }
    let bpk = dir.join(MODEL);
    let tmp = dir.join("model.bpk.tmp");
    // Without optimizer state nothing is keyed by the live ids, so the saved copy can always
    // carry deterministic ones.
    let m = if opt.is_some() {
        model.clone()
    } else {
        renumber_params(model.clone())
    };
    m.save_file(&tmp)
        .map_err(|e| SpxError::file(&bpk, format!("saving checkpoint: {e}")))?;
    std::fs::rename(written(&tmp), &bpk).map_err(|e| SpxError::io(&bpk, e))?;
    state.checksum.insert(MODEL.into(), checksum_of(&bpk)?);
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| SpxError::file(dir.join(STATE), e.to_string()))?;
    // state.json last: a directory with a state.json is complete.
    write_atomic(&dir.join(STATE), |w| std::io::Write::write_all(w, &json))
}

/// Write one checkpoint directory all or nothing.
fn write_one(
    dest: &Path,
    model: &SpektronModel,
    opt: Option<&ModuleOptimizer>,
    state: &mut TrainState,
) -> Result<(), SpxError> {
    crate::io::atomic::write_dir_atomic(dest, |tmp| write_into(tmp, model, opt, state))
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
    save_resumable(dir, model, opt, step, log, None)
}

/// [`save_with_optimizer`] plus the batch-stream position (pretraining).
pub fn save_resumable(
    dir: &Path,
    model: &SpektronModel,
    opt: Option<&ModuleOptimizer>,
    step: usize,
    log: &[LogEntry],
    stream: Option<StreamState>,
) -> Result<PathBuf, SpxError> {
    let mut state = TrainState {
        step,
        log: log.to_vec(),
        checksum: Default::default(),
        stream,
    };
    write_one(&dir.join(format!("step-{step:07}")), model, opt, &mut state)?;
    let last = dir.join("last");
    write_one(&last, model, opt, &mut state)?;
    Ok(last)
}

/// Read `state.json` and check every recorded hash against the files beside it.
pub fn verify(dir: &Path) -> Result<TrainState, SpxError> {
    let sp = dir.join(STATE);
    let text = std::fs::read_to_string(&sp).map_err(|e| SpxError::io(&sp, e))?;
    let state: TrainState =
        serde_json::from_str(&text).map_err(|e| SpxError::file(&sp, e.to_string()))?;
    if !state.checksum.contains_key(MODEL) {
        return Err(SpxError::field(
            &sp,
            "checksum",
            "no content hash recorded: not a complete spx checkpoint",
        ));
    }
    for (name, want) in &state.checksum {
        let f = dir.join(name);
        if !f.is_file() {
            return Err(SpxError::file(
                &f,
                format!("missing, but {STATE} (step {}) records it", state.step),
            ));
        }
        let got = checksum_of(&f)?;
        if &got != want {
            return Err(SpxError::file(
                &f,
                format!(
                    "content does not match the hash in {STATE} (step {}): torn or corrupt \
                     checkpoint; use an intact step-* directory",
                    state.step
                ),
            ));
        }
    }
    if dir.join(OPTIMIZER).is_file() && !state.checksum.contains_key(OPTIMIZER) {
        return Err(SpxError::file(
            dir.join(OPTIMIZER),
            format!("not recorded in {STATE}: it does not belong to this checkpoint"),
        ));
    }
    Ok(state)
}

/// Whether the checkpoint in `dir` carries optimizer state.
pub fn has_optimizer(dir: &Path) -> bool {
    dir.join(OPTIMIZER).is_file()
}

/// Restore the optimizer state stored in a checkpoint directory into `opt` (same optimizer
/// config; the model must have been loaded from the same checkpoint so parameter ids match).
/// Returns `(opt, false)` unchanged when the checkpoint has no `optimizer.bpk`.
pub fn load_optimizer(
    dir: &Path,
    opt: ModuleOptimizer,
) -> Result<(ModuleOptimizer, bool), SpxError> {
    let f = dir.join(OPTIMIZER);
    if !f.is_file() {
        return Ok((opt, false));
    }
    let opt = opt
        .load(&f)
        .map_err(|e| SpxError::file(&f, format!("loading optimizer state: {e}")))?;
    Ok((opt, true))
}

/// Load weights and state from a checkpoint directory into a model of the same config, after
/// [`verify`]ing it.
pub fn load(dir: &Path, model: SpektronModel) -> Result<(SpektronModel, TrainState), SpxError> {
    let bpk = dir.join(MODEL);
    if !bpk.is_file() {
        return Err(SpxError::file(&bpk, "checkpoint weights not found"));
    }
    let state = verify(dir)?;
    let model = model.try_load_file(&bpk).map_err(|e| {
        SpxError::file(
            &bpk,
            format!("loading checkpoint (model config must match): {e}"),
        )
    })?;
    Ok((model, state))
}
