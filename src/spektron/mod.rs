//! Spektron, non-neural half: spectrum readers, the pre-training corpus (HDF5), a synthetic
//! corpus, and the classical calibration-transfer baselines the model has to beat.
//!
//! Facts, anchors and the upstream defects this code avoids: `shared/notes/spektron.md`.

pub mod baselines;
pub mod config;
pub mod data;
pub mod model;
