//! A deterministic PtychoPINN batch without a data file, for the benches, profiles and examples
//! that time the network and the physics (`benches/ptycho_pinn.rs`,
//! `examples/diag/{ptycho_profile,conv_profile}.rs`): one definition of the values, the probe
//! and the group geometry they all time.

use burn::tensor::{Device, Tensor};

use super::model::{ModelConfig, ModelShape};
use super::physics::{self, Cplx, GroupGeometry};
use crate::backend::tensor_from;

/// `k` values in `[0, s)` in a fixed, non-constant pattern.
pub fn pattern(k: usize, s: f32) -> Vec<f32> {
    (0..k)
        .map(|i| ((i * 37 % 101) as f32 / 101.0) * s)
        .collect()
}

/// Relative positions of `ch` patterns in each of `b` groups (gridsize 2 spacing).
pub fn relative_positions(b: usize, ch: usize) -> Vec<Vec<(f64, f64)>> {
    (0..b)
        .map(|i| {
            (0..ch)
                .map(|k| ((k as f64 - 1.5) * 2.0, (i % 3) as f64 - 1.0))
                .collect()
        })
        .collect()
}

/// One batch: `b` groups of `ch` patterns of `n`×`n`, and the model shape for `model`.
pub struct PinnBatch {
    /// Network input `[b, ch, n, n]`, values in `[0, x_scale)`.
    pub x: Tensor<4>,
    /// A real probe `[1, 1, n, n]`.
    pub probe: Cplx<4>,
    pub geo: GroupGeometry,
    pub shape: ModelShape,
}

/// The batch on `dev` (gridsize 2, 1e9 photons).
pub fn pinn_batch(
    (b, ch, n): (usize, usize, usize),
    x_scale: f32,
    model: &ModelConfig,
    dev: &Device,
) -> PinnBatch {
    PinnBatch {
        x: tensor_from(pattern(b * ch * n * n, x_scale), [b, ch, n, n], dev),
        probe: Cplx::new(
            tensor_from(pattern(n * n, 1.0), [1, 1, n, n], dev),
            tensor_from(vec![0.0; n * n], [1, 1, n, n], dev),
        ),
        geo: GroupGeometry::new(
            &relative_positions(b, ch),
            n,
            physics::padded_size(n, 2),
            dev,
        ),
        shape: ModelShape::new(model, n, 2, 1e9),
    }
}
