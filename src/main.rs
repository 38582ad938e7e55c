//! The `spx` command line: global flags, then one subcommand per method. Each `cli/<cmd>.rs`
//! turns its arguments into config layers (`Global::setup_with`), calls the method's library
//! pipeline and prints the typed report it returns.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// spx — spectral and imaging research methods in one binary.
#[derive(Parser, Debug)]
#[command(name = "spx", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: cli::Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List compiled-in backends and self-check the chosen device (matmul, autodiff, FFT).
    Device(cli::device::DeviceArgs),
    /// Show the effective configuration.
    #[command(subcommand)]
    Config(cli::config::ConfigCmd),
    /// Run a real end-to-end job on built-in synthetic data.
    Demo(cli::demo::DemoArgs),
    /// Spektron: spectral foundation model (corpus, pretraining, LoRA fine-tuning, TTT,
    /// experiments) and the classical calibration-transfer baselines.
    #[command(subcommand)]
    Spektron(cli::spektron::SpektronCmd),
    /// PtychoPINN: simulate scans, train/infer from raw NPZ, ePIE baseline, dose study.
    #[command(subcommand)]
    Ptycho(cli::ptycho::PtychoCmd),
    /// IFU data cubes from row-stacked spectra: CRR (Liu, Blanton & Law 2020) and Shepard.
    #[command(subcommand)]
    Crr(cli::crr::CrrCmd),
    /// Deep-Image-Prior spectral reconstruction of SPHEREx photometry.
    #[command(subcommand)]
    Dip(cli::dip::DipCmd),
}

fn main() -> ExitCode {
    spx::backend::keep_freed_memory();
    let args = Cli::parse();
    spx::logging::init(args.global.verbose, args.global.quiet);
    let result = match &args.command {
        Command::Device(a) => cli::device::run(&args.global, a),
        Command::Config(c) => cli::config::run(&args.global, c),
        Command::Demo(a) => cli::demo::run(&args.global, a),
        Command::Spektron(c) => cli::spektron::run(&args.global, c),
        Command::Ptycho(c) => cli::ptycho::run(&args.global, c),
        Command::Crr(c) => cli::crr::run(&args.global, c),
        Command::Dip(c) => cli::dip::run(&args.global, c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
