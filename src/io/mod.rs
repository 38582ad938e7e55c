//! File formats spx reads and writes, and the atomic-write rule every writer follows: output goes
//! to a temporary file in the destination's directory and is renamed into place only when it is
//! complete, so a failure never leaves a half-written result under the final name.

pub mod atomic;
pub mod burnpack;
pub mod fits;
pub mod hdf5;
pub mod npz;
pub mod plot;

pub use atomic::{ensure_dir, with_atomic_path, write_atomic};
