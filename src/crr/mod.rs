//! CRR: data cubes from row-stacked IFU spectra by Covariance-Regularized Reconstruction
//! (Liu, Blanton & Law 2020, AJ 159:22) and by Shepard's method (the MaNGA DRP default).
//!
//! Conventions follow the authors' production code where it differs from a literal reading of
//! the paper (see `configs/crr.toml` and the README): kernel amplitude ratio 1/9 of integrals,
//! Q = V diag((Σ²+λ²)/Σ) Vᵀ behind the flux-conserving normalisation, Ñ ∈ {0, 1}.
//!
//! Parts: [`kernel`] (fiber ⊗ seeing radial table), [`grid`] (output pixels), [`weights`]
//! (CRR weights), [`shepard`], [`rss`] (LOGRSS reader/writer), [`simulate`], [`cube`]
//! (per-slice reconstruction and LOGCUBE output), [`shard`] (job-array parts and merge),
//! [`quality`] (FWHM, pseudo-Strehl, correlations).

pub mod cube;
pub mod grid;
pub mod kernel;
pub mod quality;
pub mod rss;
pub mod shard;
pub mod shepard;
pub mod simulate;
pub mod weights;

use serde::{Deserialize, Serialize};

/// Reconstruction method.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Crr,
    Shepard,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Crr => "crr",
            Method::Shepard => "shepard",
        }
    }
}

/// How the outer Gaussian's weight 1/9 is read (see `configs/crr.toml`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KernelConvention {
    Code,
    Paper,
}

/// `[crr]` section of the config.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CrrConfig {
    pub method: Method,
    pub pixel_scale: f64,
    pub grid_size: f64,
    pub lambda: f64,
    pub sv_cutoff: f64,
    pub kernel_radius: f64,
    pub fit_radius: f64,
    pub fiber_diameter: f64,
    pub kernel_convention: KernelConvention,
    pub seeing_ref_wave: f64,
    pub reject_3d: bool,
    pub shepard_sigma: f64,
    pub shepard_rlim: f64,
    pub corr_threshold: f64,
    pub reuse_tolerance: f64,
    pub simulate: SimulateConfig,
}

/// The embedded defaults (configs/crr.toml), so a config text without `[crr]` (e.g.
/// `spx config show run`) still parses.
impl Default for CrrConfig {
    fn default() -> Self {
        let t: toml::Table = include_str!("../../configs/crr.toml")
            .parse()
            .expect("embedded configs/crr.toml parses");
        t["crr"]
            .clone()
            .try_into()
            .expect("embedded configs/crr.toml matches CrrConfig")
    }
}

/// `[crr.simulate]`: the synthetic LOGRSS generator.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimulateConfig {
    pub nfiber: usize,
    pub nexp: usize,
    pub nwave: usize,
    pub seeing: f64,
    pub seeing_jitter: f64,
    pub airmass: f64,
    pub dither_jitter: f64,
    pub point_flux: f64,
    pub point_x: f64,
    pub point_y: f64,
    pub blob_flux: f64,
    pub blob_sigma: f64,
    pub blob_x: f64,
    pub blob_y: f64,
    pub sky: f64,
    pub snr: f64,
    pub dead_fibers: usize,
    pub reject_fraction: f64,
}

/// MANGA_DRP2PIXMASK (RSS) bits used here.
pub mod rssbits {
    pub const DEADFIBER: i32 = 1 << 13;
    pub const REJECT3D: i32 = 1 << 30;
}

/// MANGA_DRP3PIXMASK (cube) bits.
pub mod cubebits {
    pub const NOCOV: i32 = 1 << 0;
    pub const LOWCOV: i32 = 1 << 1;
    pub const DEADFIBER: i32 = 1 << 2;
    pub const DONOTUSE: i32 = 1 << 10;
}

/// g/r/i/z pivot wavelengths (Å) at which correlation tables and PSF images are made.
pub const BANDS: [(&str, f64); 4] = [
    ("G", 4702.50),
    ("R", 6176.58),
    ("I", 7496.12),
    ("Z", 8946.71),
];
