//! spx: five research methods for astronomers and spectroscopists behind one CLI.
//!
//! The library holds everything; `src/main.rs` only parses arguments and reports. Shared ground:
//! [`backend`] (burn device selection and seeding), [`config`] (one layered TOML config),
//! [`io`] (FITS, NPZ, HDF5, PNG plots, atomic writes) and [`logging`].

pub mod backend;
pub mod config;
pub mod crr;
pub mod dip;
pub mod error;
pub mod io;
pub mod logging;
pub mod nn;
pub mod ptycho;
pub mod shard;
pub mod spektron;
pub mod train;

pub use error::{Result, SpxError};
