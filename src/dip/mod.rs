//! Deep-Image-Prior (DIP) spectral reconstruction of SPHEREx photometry.
//!
//! A source's SPHEREx photometry (one narrow-band flux per exposure, at a wavelength set by the
//! linear variable filter) is inverted to a spectrum on a fine grid by fitting the weights of a
//! 1-D U-Net that maps fixed noise to the spectrum, with a Ricker-CWT L1 penalty
//! ([`train`]). A weighted Tikhonov solver ([`tikhonov`]) is the baseline; [`simulate`] makes
//! sources with a known answer. Pipeline: [`input`] (CSV + QC) → [`grid`] → [`forward`]
//! (observation operator) → solver → [`output`].

pub mod forward;
pub mod grid;
pub mod input;
pub mod kernel;
pub mod output;
pub mod recon;
pub mod simulate;
pub mod tikhonov;
pub mod train;
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

/// `[dip]` of the config (documented key by key in `configs/dip.toml`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DipConfig {
    pub solver: Solver,
    pub wavelength_min: f64,
    pub wavelength_max: f64,
    pub resolution: usize,
    pub loss_mode: LossMode,
    pub weighting: Weighting,
    pub epsilon_weight: f64,
    pub scale_flux: bool,
    pub regularization_weight: f64,
    pub cwt_scales: Vec<f64>,
    pub depth: usize,
    pub filters: usize,
    pub kernel_size: usize,
    pub leaky_slope: f64,
    pub init: NetInit,
    pub noise_std: f64,
    pub positivity: bool,
    pub epochs: usize,
    pub lr: f64,
    pub stop_chi2: f64,
    pub early_stop_patience: usize,
    pub early_stop_min_delta: f64,
    pub ensemble: usize,
    pub compare_baseline: bool,
    pub qc: QcConfig,
    pub tikhonov: TikhonovConfig,
    pub simulate: SimulateConfig,
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
    pub sampling: Sampling,
    pub per_band: usize,
    pub continuum_ujy: f64,
    pub alpha: f64,
    pub line_scale: f64,
    pub pah_scale: f64,
    pub ice_scale: f64,
    pub noise_ujy: Vec<f64>,
    pub bad_flag_fraction: f64,
    pub glitch_fraction: f64,
}

impl Default for DipConfig {
    /// The built-in `configs/dip.toml` values.
    fn default() -> Self {
        crate::config::Config::default().dip
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
            && self.wavelength_max > self.wavelength_min
            && self.wavelength_min > 0.0)
        {
            return bad("wavelength_max", "need 0 < wavelength_min < wavelength_max");
        }
        if self.resolution < 16 {
            return bad("resolution", "need at least 16 grid pixels");
        }
        if !self.resolution.is_multiple_of(1 << self.depth) {
            return bad(
                "resolution",
                &format!(
                    "must be divisible by 2^depth = {} for the U-Net",
                    1 << self.depth
                ),
            );
        }
        if self.kernel_size.is_multiple_of(2) {
            return bad("kernel_size", "must be odd");
        }
        if self.filters == 0 || self.epochs == 0 || self.ensemble == 0 {
            return bad("filters/epochs/ensemble", "must be >= 1");
        }
        if self.cwt_scales.iter().any(|s| s.is_nan() || *s <= 0.0) {
            return bad("cwt_scales", "scales must be > 0");
        }
        let max_r = self
            .cwt_scales
            .iter()
            .map(|s| (4.0 * s).floor() as usize)
            .max()
            .unwrap_or(0);
        if max_r >= self.resolution {
            return bad("cwt_scales", "largest kernel exceeds the grid");
        }
        if self.lr.is_nan() || self.lr <= 0.0 || self.regularization_weight < 0.0 {
            return bad(
                "lr/regularization_weight",
                "lr > 0 and weight >= 0 required",
            );
        }
        if self.qc.bad_flag_bits.iter().any(|&b| b > 62) {
            return bad("qc.bad_flag_bits", "bits must be 0..=62");
        }
        if self.qc.clip_window < 3 {
            return bad("qc.clip_window", "must be >= 3");
        }
        if self.simulate.noise_ujy.len() != 6 {
            return bad("simulate.noise_ujy", "needs 6 values (D1..D6)");
        }
        Ok(())
    }
}
