//! spx's integration tests: one binary (burn is linked once), a module per area.

mod backend;
mod cli;
mod common;
mod config;
mod crr;
mod dip;
mod hostile;
mod interop;
mod io;
mod nn;
mod ptycho;
mod ptycho_pinn;
mod spektron;
mod spektron_ablation;
mod spektron_drift;
mod spektron_model;
mod spektron_supervised;
