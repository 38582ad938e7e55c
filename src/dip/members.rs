//! Finished ensemble members of a single-source `spx dip recon --ensemble M`, kept on disk so
//! that a killed run resumes per member.
//!
//! Each member is stored, as soon as its fit ends, in one file written atomically
//! (`member-K-KEY.json`), every float as its IEEE bits so that a reused member is bit-identical
//! to a refitted one. KEY hashes the input file's bytes, the `[dip]` settings (less
//! `ensemble` and `batch_sources`, which do not change a member's fit), the member's seed and
//! the device, so a rerun reuses a member only when it would compute exactly the same fit.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DipConfig;
use super::catalog::{Fnv, settings_key};
use super::train::{EpochLoss, FitResult, Restore, StopReason};
use crate::backend::DeviceSpec;
use crate::error::SpxError;
use crate::io::atomic::write_atomic;

/// The key of the member fitted with `seed` on `input_bytes` under `dc` on `device`.
pub fn member_key(dc: &DipConfig, input_bytes: &[u8], seed: u64, device: &DeviceSpec) -> String {
    let mut d = dc.clone();
    d.ensemble = 1;
    let mut h = Fnv::new();
    h.bytes(settings_key(&d, seed, device).as_bytes());
    h.bytes(input_bytes);
    format!("{:016x}", h.0)
}

/// Where member `k` with `key` is kept under `dir`.
pub fn member_path(dir: &Path, k: usize, key: &str) -> PathBuf {
    dir.join(format!("member-{k}-{key}.json"))
}

/// A [`FitResult`] with every float as its bits (JSON has no NaN and need not round-trip).
#[derive(Serialize, Deserialize)]
struct Stored {
    key: String,
    spectrum: Vec<u64>,
    best_epoch: usize,
    best_loss: u64,
    epochs_run: usize,
    stopped_early: bool,
    stop_reason: StopReason,
    seconds: u64,
    /// (epoch, total, data, reg, chi2, val_chi2) per epoch.
    history: Vec<(usize, u64, u64, u64, u64, u64)>,
    seed: u64,
    scale: u64,
    held_out: Vec<usize>,
    d2_lambda: u64,
    refine_factor: u64,
    #[serde(default)]
    restores: Vec<Restore>,
}

/// Store a finished member (atomically: the file appears complete or not at all).
pub fn save(path: &Path, key: &str, f: &FitResult) -> Result<(), SpxError> {
    let s = Stored {
        key: key.to_string(),
        spectrum: f.spectrum.iter().map(|v| v.to_bits()).collect(),
        best_epoch: f.best_epoch,
        best_loss: f.best_loss.to_bits(),
        epochs_run: f.epochs_run,
        stopped_early: f.stopped_early,
        stop_reason: f.stop_reason,
        seconds: f.seconds.to_bits(),
        history: f
            .history
            .iter()
            .map(|h| {
                (
                    h.epoch,
                    h.total.to_bits(),
                    h.data.to_bits(),
                    h.reg.to_bits(),
                    h.chi2.to_bits(),
                    h.val_chi2.to_bits(),
                )
            })
            .collect(),
        seed: f.seed,
        scale: f.scale.to_bits(),
        held_out: f.held_out.clone(),
        d2_lambda: f.d2_lambda.to_bits(),
        refine_factor: f.refine_factor.to_bits(),
        restores: f.restores.clone(),
    };
    if let Some(dir) = path.parent() {
        crate::io::ensure_dir(dir)?;
    }
    write_atomic(path, |w| {
        serde_json::to_writer(&mut *w, &s).map_err(std::io::Error::other)
    })
}

/// A stored member, if `path` holds one with `key` and `n` grid pixels (anything else, e.g. a
/// file from other settings or a damaged one, is not reused).
pub fn load(path: &Path, key: &str, n: usize) -> Option<FitResult> {
    let text = std::fs::read(path).ok()?;
    let s: Stored = serde_json::from_slice(&text).ok()?;
    if s.key != key || s.spectrum.len() != n {
        return None;
    }
    let f = f64::from_bits;
    Some(FitResult {
        spectrum: s.spectrum.into_iter().map(f).collect(),
        best_epoch: s.best_epoch,
        best_loss: f(s.best_loss),
        epochs_run: s.epochs_run,
        stopped_early: s.stopped_early,
        stop_reason: s.stop_reason,
        seconds: f(s.seconds),
        history: s
            .history
            .into_iter()
            .map(|(epoch, t, d, r, c, v)| EpochLoss {
                epoch,
                total: f(t),
                data: f(d),
                reg: f(r),
                chi2: f(c),
                val_chi2: f(v),
            })
            .collect(),
        seed: s.seed,
        scale: f(s.scale),
        held_out: s.held_out,
        d2_lambda: f(s.d2_lambda),
        refine_factor: f(s.refine_factor),
        restores: s.restores,
    })
}
