//! CRR: data cubes from row-stacked IFU spectra by Covariance-Regularized Reconstruction
//! (Liu, Blanton & Law 2020, AJ 159:22) and by Shepard's method (the MaNGA DRP default).
//!
//! Conventions follow the authors' production code where it differs from a literal reading of
//! the paper (see `configs/crr.toml` and the README): kernel amplitude ratio 1/9 of integrals,
//! Q = V diag((Σ²+λ²)/Σ) Vᵀ behind the flux-conserving normalisation, Ñ ∈ {0, 1}.
//!
//! Parts: [`kernel`] (fiber ⊗ seeing radial table), [`grid`] (output pixels), [`weights`]
//! (CRR weights), [`shepard`], [`rss`] (LOGRSS reader/writer), [`simulate`], [`cube`]
//! (per-slice reconstruction into a [`cube::Part`]), [`logcube`] (the LOGCUBE file),
//! [`shard`] (job-array parts, their checksums and the merge), [`quality`] (FWHM,
//! pseudo-Strehl, correlations), [`pipeline`] (the commands' pipelines, typed reports).
//! Dependencies point one way: quality ← cube ← logcube, shard ← pipeline.

pub mod checksum;
pub mod cube;
pub mod grid;
pub mod kernel;
pub mod logcube;
pub mod pipeline;
pub mod quality;
pub mod rss;
pub mod shard;
pub mod shepard;
pub mod simulate;
pub mod weights;

use serde::{Deserialize, Serialize};

/// Reconstruction method.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
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

/// How the CRR weights are solved (see `configs/crr.toml`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Solver {
    Svd,
    Gram,
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
    pub solver: Solver,
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
    pub reuse_max_error: f64,
    pub simulate: SimulateConfig,
}

impl CrrConfig {
    /// Every number finite and in its stated range; the first violation as `crr.key: message`.
    pub fn validate(&self) -> Result<(), String> {
        let range = |k: &str, v: f64, lo: f64, hi: f64| {
            if v.is_finite() && v >= lo && v <= hi {
                Ok(())
            } else {
                Err(format!("crr.{k}: {v} is outside [{lo}, {hi}]"))
            }
        };
        range("pixel_scale", self.pixel_scale, 0.1, 5.0)?;
        if self.grid_size != 0.0 {
            range("grid_size", self.grid_size, 2.0, 100.0)?;
        }
        range("lambda", self.lambda, 0.0, 1.0)?;
        range("sv_cutoff", self.sv_cutoff, 0.0, 0.1)?;
        range("kernel_radius", self.kernel_radius, 0.5, 10.0)?;
        range("fit_radius", self.fit_radius, 0.1, 10.0)?;
        range("fiber_diameter", self.fiber_diameter, 0.1, 10.0)?;
        range("seeing_ref_wave", self.seeing_ref_wave, 1000.0, 30000.0)?;
        range("shepard_sigma", self.shepard_sigma, 0.05, 10.0)?;
        range("shepard_rlim", self.shepard_rlim, 0.1, 10.0)?;
        range("corr_threshold", self.corr_threshold, 0.0, 1.0)?;
        range("reuse_tolerance", self.reuse_tolerance, 0.0, 1.0)?;
        range("reuse_max_error", self.reuse_max_error, 0.0, 100.0)?;
        let s = &self.simulate;
        range("simulate.nexp", s.nexp as f64, 1.0, 100.0)?;
        range("simulate.nwave", s.nwave as f64, 2.0, 20000.0)?;
        range("simulate.seeing", s.seeing, 0.3, 3.0)?;
        range("simulate.seeing_jitter", s.seeing_jitter, 0.0, 1.0)?;
        range("simulate.airmass", s.airmass, 1.0, 3.0)?;
        range("simulate.dither_jitter", s.dither_jitter, 0.0, 2.0)?;
        for (k, v) in [
            ("point_flux", s.point_flux),
            ("blob_flux", s.blob_flux),
            ("sky", s.sky),
        ] {
            range(&format!("simulate.{k}"), v, -1e30, 1e30)?;
        }
        for (k, v) in [
            ("point_x", s.point_x),
            ("point_y", s.point_y),
            ("blob_x", s.blob_x),
            ("blob_y", s.blob_y),
        ] {
            range(&format!("simulate.{k}"), v, -30.0, 30.0)?;
        }
        range("simulate.blob_sigma", s.blob_sigma, 0.01, 30.0)?;
        range("simulate.snr", s.snr, 0.0, 1e6)?;
        range("simulate.reject_fraction", s.reject_fraction, 0.0, 1.0)?;
        Ok(())
    }

    /// The reconstruction settings as TOML (`[crr]` without `[crr.simulate]`): what a cube's
    /// CONFIG HDU records and what a shard part's fingerprint covers. Nothing about the run
    /// (threads, output paths) enters, so the same input gives the same bytes.
    pub fn reconstruction_toml(&self) -> String {
        let mut t = toml::Table::try_from(self).unwrap_or_default();
        t.remove("simulate");
        let mut outer = toml::Table::new();
        outer.insert("crr".into(), toml::Value::Table(t));
        toml::to_string(&outer).unwrap_or_default()
    }
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

/// MANGA_DRP3PIXMASK (cube) bits, as in the SDSS datamodel (`sdssMaskbits.par`): NOCOV
/// (bit 0) a spaxel no fiber-exposure reaches (outside the fit pixels for CRR; no good sample
/// within `shepard_rlim` for Shepard); LOWCOV (bit 1) unit-noise depth Σ_i W_ji² zero or above
/// twice its median (paper Eq. 25; zero on every NOCOV spaxel, so uncovered spaxels are
/// 1|2|1024 = 1027 as in the authors' code); DEADFIBER (bit 2) a dead fiber (RSS bit 13) lies
/// inside the weight footprint — within `kernel_radius` of a fit pixel for CRR, within
/// `shepard_rlim` for Shepard; FORESTAR (bit 3) is never set (needs a star catalogue);
/// DONOTUSE (bit 10) = NOCOV or LOWCOV.
pub mod cubebits {
    pub const NOCOV: i32 = 1 << 0;
    pub const LOWCOV: i32 = 1 << 1;
    pub const DEADFIBER: i32 = 1 << 2;
    pub const FORESTAR: i32 = 1 << 3;
    pub const DONOTUSE: i32 = 1 << 10;
}

/// g/r/i/z pivot wavelengths (Å) at which correlation tables and PSF images are made.
pub const BANDS: [(&str, f64); 4] = [
    ("G", 4702.50),
    ("R", 6176.58),
    ("I", 7496.12),
    ("Z", 8946.71),
];
