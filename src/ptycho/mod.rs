//! Ptychography after PtychoPINN: the raw-NPZ data contract ([`data`]), KD-tree grouping of
//! scan positions into solution regions ([`grouping`]), a simulator with known ground truth
//! ([`simulate`], built from [`object`], [`probe`] and [`fft`]), the physics-informed network
//! ([`model`], [`physics`], [`losses`], [`train`]), inference/stitching/scoring and the ePIE
//! baseline ([`recon`], [`stitch`], [`metrics`], [`epie`]).
//!
//! Pipelines (what `spx ptycho …` runs): [`pipeline`] (simulate, train, infer, ePIE) and the
//! dose study [`dose::study`].
//!
//! Conventions (PtychoPINN): `x` is the column and `y` the row on the object grid, in pixels;
//! a patch centred on `(x, y)` holds `obj[y − N/2 + i, x − N/2 + j]`.

pub mod data;
pub mod demo;
pub mod dose;
pub mod epie;
pub mod fft;
pub mod fixture;
pub mod grouping;
pub mod losses;
pub mod metrics;
pub mod model;
pub mod object;
pub mod physics;
pub mod pipeline;
pub mod probe;
pub mod recon;
pub mod simulate;
pub mod stitch;
pub mod train;

use serde::{Deserialize, Serialize};

pub use data::RawData;
pub use grouping::{GroupConfig, GroupIndex, Grouped};
pub use simulate::{Noise, SimConfig, Simulated};

/// The `[ptycho]` config section.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PtychoConfig {
    pub group: GroupConfig,
    pub simulate: SimConfig,
    pub pinn: train::PinnConfig,
    pub epie: epie::EpieConfig,
    pub dose: dose::DoseConfig,
}

impl PtychoConfig {
    /// Cross-field checks (run by `Config::validate`): a grid scan grouped in blocks must have
    /// the group side the simulator laid out, or every "group" would straddle two squares.
    pub fn validate(&self) -> Result<(), String> {
        let (s, g) = (&self.simulate, &self.group);
        if s.scan == simulate::Scan::Grid
            && g.mode == grouping::GroupMode::Blocks
            && s.grid_size != g.gridsize
        {
            return Err(format!(
                "ptycho.simulate.grid_size: {} must equal ptycho.group.gridsize = {} when a grid \
                 scan is grouped in blocks",
                s.grid_size, g.gridsize
            ));
        }
        Ok(())
    }
}

/// The embedded defaults of `configs/ptycho.toml`, so a config text without a `[ptycho]`
/// section (e.g. `spx config show run`) still deserialises.
impl Default for PtychoConfig {
    fn default() -> Self {
        #[derive(Deserialize)]
        struct File {
            ptycho: PtychoConfig,
        }
        toml::from_str::<File>(include_str!("../../configs/ptycho.toml"))
            .expect("embedded configs/ptycho.toml is valid")
            .ptycho
    }
}
