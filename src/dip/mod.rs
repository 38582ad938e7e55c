//! Deep-Image-Prior (DIP) spectral reconstruction of SPHEREx photometry.
//!
//! A source's SPHEREx photometry (one narrow-band flux per exposure, at a wavelength set by the
//! linear variable filter) is inverted to a spectrum on a fine grid by fitting the weights of a
//! 1-D U-Net that maps fixed noise to a correction of a smooth Tikhonov start, with a Ricker-CWT
//! L1 penalty and a second-difference prior ([`train`], [`batch`]). A weighted Tikhonov solver ([`tikhonov`]) is the baseline; [`simulate`] makes
//! sources with a known answer. Pipeline: [`input`] (CSV + QC) → [`grid`] → [`forward`]
//! (observation operator) → solver → [`output`].

pub mod batch;
pub mod catalog;
pub mod forward;
pub mod grid;
pub mod input;
pub mod kernel;
pub mod layers;
pub mod members;
pub mod output;
pub mod pipeline;
pub mod recon;
pub mod refine;
pub mod simulate;
pub mod stacked;
pub mod tikhonov;
pub mod train;
pub mod truth;
pub mod unet;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Solver {
    Dip,
    Tikhonov,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LossMode {
    Forward,
    Pixel,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Weighting {
    /// 1/σ² (χ²).
    Variance,
    /// 1/(σ + ε), the spxquery plan's weight.
    Sigma,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClipMode {
    Runs,
    All,
    Off,
}

/// Weight initialisation of the U-Net convolutions.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NetInit {
    /// He-normal with the LeakyReLU gain √(2/(1+a²)), zero biases: keeps the variance of the
    /// input noise through the layers.
    Kaiming,
    /// PyTorch's Conv1d default, U(±1/√fan_in) for weights and biases (the original code).
    Pytorch,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    Random,
    Channels,
}

/// What `spx dip simulate` draws (see [`simulate`]).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The fixed power law + lines + PAH + ices source (ChaCha8 stream of the seed).
    Default,
    /// Quasar: power law with broad/narrow lines at a random redshift.
    Qso,
    /// Young stellar object: rising continuum, ice absorptions and PAH of random depth/width.
    Ice,
    /// One or two blackbodies.
    Star,
}

/// Per-observation errors of `spx dip simulate`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NoiseModel {
    /// σ = `noise_ujy` of the band.
    Band,
    /// σ = U(noise_fraction)·|flux| + `noise_floor_ujy` of the band.
    Relative,
}

/// `[dip]` of the config (documented key by key in `configs/dip.toml`): the grid, the
/// observation weights and the run shape; the network, its prior, its training, the input QC,
/// the baseline and the simulator in their own sections.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DipConfig {
    pub solver: Solver,
    pub wavelength_min: f64,
    pub wavelength_max: f64,
    pub resolution: usize,
    pub weighting: Weighting,
    pub epsilon_weight: f64,
    pub ensemble: usize,
    /// Fits per batch (sources × ensemble members; 0 = auto, see [`batch::batch_size`]).
    pub batch_sources: usize,
    pub compare_baseline: bool,
    pub net: NetConfig,
    pub prior: PriorConfig,
    pub train: TrainConfig,
    pub qc: QcConfig,
    pub tikhonov: TikhonovConfig,
    pub simulate: SimulateConfig,
}

/// `[dip.net]`: the U-Net, its input and its output layer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub depth: usize,
    pub filters: usize,
    pub kernel_size: usize,
    pub leaky_slope: f64,
    pub init: NetInit,
    pub noise_std: f64,
    pub positivity: bool,
    pub start_flat: bool,
    pub start_baseline: bool,
    pub baseline_smoothing: f64,
    pub start_fit_sigmas: f64,
}

/// `[dip.prior]`: what the loss and the output impose beside the data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriorConfig {
    pub cwt_weight: f64,
    pub cwt_scales: Vec<f64>,
    pub smoothness_weight: f64,
    pub smooth_output: bool,
    pub smooth_passes: usize,
    pub smooth_written_density: f64,
    pub smooth_written_cv_folds: usize,
    pub refine_cv_folds: usize,
    pub refine_factors: Vec<f64>,
}

/// `[dip.train]`: the data term, Adam and the stopping rules.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub loss_mode: LossMode,
    pub scale_flux: bool,
    pub epochs: usize,
    pub lr: f64,
    pub stop_chi2: f64,
    pub stop_sigmas: f64,
    pub validation_fraction: f64,
    pub validation_patience: usize,
    pub ema_decay: f64,
    pub early_stop_patience: usize,
    pub early_stop_min_delta: f64,
    pub stop_dof: bool,
    pub fallback_baseline: bool,
    pub warmup_epochs: usize,
    /// A fit's total loss above `restore_jump` × its last snapshot's loss is a jump: its
    /// weights and Adam moments are put back to the snapshot (see [`batch`]).
    pub restore_jump: f64,
    /// A rise of the total loss above the snapshot's by more than this many standard deviations
    /// of χ² over the fitted observations (`k·√(2M)`) is also a jump (0 = off, the default): on
    /// dense data a fit can lose 20 % of its χ² without doubling it.
    pub restore_jump_sigmas: f64,
    /// Snapshot every this many epochs (of the weights and Adam moments, per fit).
    pub restore_every: usize,
    /// The fit's step size is multiplied by this at each restore.
    pub restore_lr_factor: f64,
    /// At most this many restores per fit (0 = never restore).
    pub max_restores: usize,
    /// A fit whose total loss has not improved (by `early_stop_min_delta`) for this many epochs
    /// while its best spectrum fits the data worse than both the discrepancy target and the
    /// baseline (it would fall back if it stopped now) goes back to its lowest-loss snapshot and
    /// continues at `restore_lr_factor` × its step size (a restore, counted in `max_restores`;
    /// 0 = off).
    pub stall_restore_epochs: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QcConfig {
    pub bad_flag_bits: Vec<u32>,
    pub snr_min: f64,
    pub clip: ClipMode,
    pub clip_sigma: f64,
    pub clip_window: usize,
    pub clip_max_iter: usize,
    pub clip_protect_run: usize,
    pub clip_protect_fraction: f64,
    pub clip_protect_sigma: f64,
    pub clip_false_positives: f64,
    pub min_points_per_band: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TikhonovConfig {
    pub lambda: f64,
    pub target_chi2: f64,
    pub nonnegative: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimulateConfig {
    pub kind: SourceKind,
    pub sampling: Sampling,
    pub per_band: usize,
    pub continuum_ujy: f64,
    pub alpha: f64,
    pub line_scale: f64,
    pub pah_scale: f64,
    pub ice_scale: f64,
    pub noise: NoiseModel,
    pub noise_ujy: Vec<f64>,
    pub noise_fraction: Vec<f64>,
    pub noise_floor_ujy: Vec<f64>,
    pub bad_flag_fraction: f64,
    pub glitch_fraction: f64,
}

/// The built-in `configs/dip.toml` (the `[dip]` layer of the default config).
pub const DEFAULT_TOML: &str = include_str!("../../configs/dip.toml");

impl Default for DipConfig {
    /// The built-in `configs/dip.toml` values.
    fn default() -> Self {
        #[derive(Deserialize)]
        struct File {
            dip: DipConfig,
        }
        toml::from_str::<File>(DEFAULT_TOML)
            .expect("the built-in configs/dip.toml matches DipConfig (tested)")
            .dip
    }
}

impl DipConfig {
    /// Checks that serde cannot express (ranges, lengths); errors name the key.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |key: &str, msg: &str| {
            Err(crate::SpxError::Config(format!(
                "config key `dip.{key}`: {msg}"
            )))
        };
        if !(self.wavelength_min.is_finite()
            && self.wavelength_max.is_finite()
            && self.wavelength_max > self.wavelength_min
            && self.wavelength_min > 0.0)
        {
            return bad("wavelength_max", "need 0 < wavelength_min < wavelength_max");
        }
        if self.resolution < 16 {
            return bad("resolution", "need at least 16 grid pixels");
        }
        if !self.resolution.is_multiple_of(1 << self.net.depth) {
            return bad(
                "resolution",
                &format!(
                    "must be divisible by 2^depth = {} for the U-Net",
                    1 << self.net.depth
                ),
            );
        }
        if self.net.kernel_size.is_multiple_of(2) {
            return bad("net.kernel_size", "must be odd");
        }
        if self.batch_sources > 4096 {
            return bad("batch_sources", "must be in 0..=4096 (0 = auto)");
        }
        if self.net.filters == 0 || self.train.epochs == 0 || self.ensemble == 0 {
            return bad("net.filters/train.epochs/ensemble", "must be >= 1");
        }
        if self
            .prior
            .cwt_scales
            .iter()
            .any(|s| s.is_nan() || *s <= 0.0)
        {
            return bad("prior.cwt_scales", "scales must be > 0");
        }
        let max_r = self
            .prior
            .cwt_scales
            .iter()
            .map(|s| (4.0 * s).floor() as usize)
            .max()
            .unwrap_or(0);
        if max_r >= self.resolution {
            return bad("prior.cwt_scales", "largest kernel exceeds the grid");
        }
        if self.train.lr.is_nan() || self.train.lr <= 0.0 || self.prior.cwt_weight < 0.0 {
            return bad(
                "train.lr/prior.cwt_weight",
                "lr > 0 and weight >= 0 required",
            );
        }
        if self.qc.bad_flag_bits.iter().any(|&b| b > 62) {
            return bad("qc.bad_flag_bits", "bits must be 0..=62");
        }
        if self.qc.clip_window < 3 {
            return bad("qc.clip_window", "must be >= 3");
        }
        for (k, v, lo, hi) in [
            ("qc.clip_sigma", self.qc.clip_sigma, 0.5, 100.0),
            (
                "qc.clip_protect_fraction",
                self.qc.clip_protect_fraction,
                0.0,
                1.0,
            ),
            (
                "qc.clip_protect_sigma",
                self.qc.clip_protect_sigma,
                0.0,
                100.0,
            ),
            (
                "qc.clip_false_positives",
                self.qc.clip_false_positives,
                0.0,
                1e6,
            ),
            ("qc.snr_min", self.qc.snr_min, -1e9, 1e9),
        ] {
            if !(lo..=hi).contains(&v) {
                return bad(k, &format!("must be in [{lo}, {hi}]"));
            }
        }
        if !(0.0..=0.5).contains(&self.train.validation_fraction) {
            return bad("train.validation_fraction", "must be in [0, 0.5]");
        }
        if self.train.validation_fraction > 0.0 && self.train.validation_patience == 0 {
            return bad(
                "train.validation_patience",
                "must be >= 1 with a validation split",
            );
        }
        if !(1..=4).contains(&self.prior.smooth_passes) {
            return bad("prior.smooth_passes", "must be in 1..=4");
        }
        if !(0.0..=1e6).contains(&self.prior.smoothness_weight) {
            return bad("prior.smoothness_weight", "must be in [0, 1e6]");
        }
        if !(0.0..1.0).contains(&self.train.ema_decay) {
            return bad("train.ema_decay", "must be in [0, 1)");
        }
        if !(self.train.stop_chi2.is_finite() && self.train.stop_chi2 >= 0.0) {
            return bad("train.stop_chi2", "must be finite and >= 0");
        }
        if !(self.train.stop_sigmas.is_finite() && self.train.stop_sigmas >= 0.0) {
            return bad("train.stop_sigmas", "must be finite and >= 0");
        }
        if !(self.train.restore_jump.is_finite() && self.train.restore_jump > 1.0) {
            return bad("train.restore_jump", "must be finite and > 1");
        }
        if !(self.train.restore_jump_sigmas.is_finite() && self.train.restore_jump_sigmas >= 0.0) {
            return bad("train.restore_jump_sigmas", "must be finite and >= 0");
        }
        if self.train.restore_every == 0 {
            return bad("train.restore_every", "must be >= 1");
        }
        if !(self.train.restore_lr_factor > 0.0 && self.train.restore_lr_factor <= 1.0) {
            return bad("train.restore_lr_factor", "must be in (0, 1]");
        }
        if !(self.net.baseline_smoothing.is_finite() && self.net.baseline_smoothing >= 1.0) {
            return bad("net.baseline_smoothing", "must be finite and >= 1");
        }
        if self.net.start_flat && self.net.start_baseline {
            return bad(
                "net.start_flat",
                "cannot be combined with net.start_baseline (set one of them false)",
            );
        }
        if !(self.prior.smooth_written_density.is_finite()
            && (0.0..=1e9).contains(&self.prior.smooth_written_density))
        {
            return bad("prior.smooth_written_density", "must be in [0, 1e9]");
        }
        if self.prior.smooth_written_cv_folds == 1 || self.prior.smooth_written_cv_folds > 100 {
            return bad(
                "prior.smooth_written_cv_folds",
                "must be 0 (off) or in 2..=100",
            );
        }
        if self.prior.refine_cv_folds == 1 || self.prior.refine_cv_folds > 100 {
            return bad("prior.refine_cv_folds", "must be 0 (off) or in 2..=100");
        }
        if self.prior.refine_cv_folds > 0
            && (self.prior.refine_factors.is_empty()
                || self
                    .prior
                    .refine_factors
                    .iter()
                    .any(|f| !(f.is_finite() && *f > 0.0 && *f <= 1e8)))
        {
            return bad(
                "prior.refine_factors",
                "needs at least one factor, each in (0, 1e8]",
            );
        }
        if !(self.net.start_fit_sigmas.is_finite()
            && (0.0..=1e6).contains(&self.net.start_fit_sigmas))
        {
            return bad("net.start_fit_sigmas", "must be in [0, 1e6]");
        }
        if !(self.net.noise_std.is_finite() && self.net.noise_std >= 0.0) {
            return bad("net.noise_std", "must be finite and >= 0");
        }
        let s = &self.simulate;
        if s.noise_ujy.len() != 6 || s.noise_ujy.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return bad("simulate.noise_ujy", "needs 6 finite values > 0 (D1..D6)");
        }
        if s.noise_floor_ujy.len() != 6
            || s.noise_floor_ujy
                .iter()
                .any(|v| !(v.is_finite() && *v >= 0.0))
        {
            return bad(
                "simulate.noise_floor_ujy",
                "needs 6 finite values >= 0 (D1..D6)",
            );
        }
        if s.noise_fraction.len() != 2
            || !(0.0..=1.0).contains(&s.noise_fraction[0])
            || !(s.noise_fraction[0]..=1.0).contains(&s.noise_fraction[1])
        {
            return bad(
                "simulate.noise_fraction",
                "needs [lo, hi] with 0 <= lo <= hi <= 1",
            );
        }
        if s.noise == NoiseModel::Relative
            && s.noise_fraction[1] == 0.0
            && s.noise_floor_ujy.contains(&0.0)
        {
            return bad(
                "simulate.noise_floor_ujy",
                "zero error in some band (fraction and floor 0)",
            );
        }
        if !(1..=1_000_000).contains(&s.per_band) {
            return bad("simulate.per_band", "must be in 1..=1000000");
        }
        if !(0.0..=1.0).contains(&(s.bad_flag_fraction + s.glitch_fraction))
            || s.bad_flag_fraction < 0.0
            || s.glitch_fraction < 0.0
        {
            return bad(
                "simulate.bad_flag_fraction",
                "fractions must be >= 0 and sum to <= 1",
            );
        }
        for (k, v) in [
            ("continuum_ujy", s.continuum_ujy),
            ("alpha", s.alpha),
            ("line_scale", s.line_scale),
            ("pah_scale", s.pah_scale),
            ("ice_scale", s.ice_scale),
        ] {
            if !v.is_finite() || v.abs() > 1e9 {
                return bad(&format!("simulate.{k}"), "must be finite (|v| <= 1e9)");
            }
        }
        Ok(())
    }
}
