//! Thin CLI layer: parse arguments, load the config, call the library, report.

pub mod config;
pub mod crr;
pub mod demo;
pub mod device;
pub mod dip;
pub mod ptycho;
pub mod spektron;

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use serde::Serialize;
use spx::config::Config;
use spx::logging::Progress;
use toml::Value;

/// A command-line flag as a config layer: (dotted key, value, flag name for messages).
pub type Flag = (&'static str, Value, &'static str);

/// A flag given on the command line, as a config layer (`None` = not given).
pub fn flag<V: Into<Value>>(
    key: &'static str,
    value: Option<V>,
    name: &'static str,
) -> Option<Flag> {
    value.map(|v| (key, v.into(), name))
}

/// A count flag (`--epochs`, `--nfiber`, …) as a config layer.
pub fn flag_count(key: &'static str, value: Option<usize>, name: &'static str) -> Option<Flag> {
    value.map(|v| {
        (
            key,
            Value::Integer(i64::try_from(v).unwrap_or(i64::MAX)),
            name,
        )
    })
}

/// An enum flag (clap `ValueEnum`) as a config layer: its value name is the config string.
pub fn flag_enum<E: clap::ValueEnum>(
    key: &'static str,
    value: Option<&E>,
    name: &'static str,
) -> Option<Flag> {
    value
        .and_then(|v| v.to_possible_value())
        .map(|p| (key, Value::String(p.get_name().to_string()), name))
}

/// The flags of one command that were given, in order.
pub fn flags<const N: usize>(list: [Option<Flag>; N]) -> Vec<Flag> {
    list.into_iter().flatten().collect()
}

/// Flags accepted by every subcommand.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// TOML file overriding the built-in defaults (see `spx config show`).
    #[arg(long, global = true, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Apply a named overlay from `configs/profiles/NAME.toml` (repeatable; after --config,
    /// before --set), e.g. `--profile quick`.
    #[arg(long = "profile", global = true, value_name = "NAME")]
    pub profiles: Vec<String>,
    /// Override one setting, e.g. `--set run.seed=7` (repeatable; applied after --config).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    /// Compute device: cpu, wgpu[:N] or cuda[:N] (overrides run.device).
    #[arg(long, global = true)]
    pub device: Option<String>,
    /// Random seed (overrides run.seed).
    #[arg(long, global = true)]
    pub seed: Option<u64>,
    /// Output directory (overrides run.out_dir).
    #[arg(long = "out", global = true, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// CPU worker threads, 0 = all cores (overrides run.threads; at most 1024).
    #[arg(long, global = true, allow_negative_numbers = true, value_parser = count)]
    pub threads: Option<usize>,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors; no progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print a one-object JSON summary on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Value parser for counts (`--epochs`, `--threads`, …): a negative or fractional number gets
/// a message saying what is expected, instead of clap's "unexpected argument '-5'".
pub fn count(s: &str) -> std::result::Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .map_err(|_| format!("`{s}` is not a count (expected a whole number >= 0)"))
}

impl Global {
    /// The global flags as config layers (`--device`, `--seed`, `--out`, `--threads`).
    pub fn flags(&self) -> Result<Vec<Flag>> {
        let mut flags: Vec<Flag> = Vec::new();
        if let Some(d) = &self.device {
            flags.push(("run.device", Value::String(d.clone()), "--device"));
        }
        if let Some(s) = self.seed {
            let s = i64::try_from(s).context("--seed must be below 2^63")?;
            flags.push(("run.seed", Value::Integer(s), "--seed"));
        }
        if let Some(o) = &self.out_dir {
            flags.push((
                "run.out_dir",
                Value::String(o.display().to_string()),
                "--out",
            ));
        }
        if let Some(t) = self.threads {
            flags.push((
                "run.threads",
                Value::Integer(i64::try_from(t).unwrap_or(i64::MAX)),
                "--threads",
            ));
        }
        Ok(flags)
    }

    /// The effective config: defaults < --config < `profiles` then --profile < --set <
    /// command flags < global flags. The one layering every command uses.
    pub fn load_config_with(&self, profiles: &[&str], flags: Vec<Flag>) -> Result<Config> {
        let mut all = flags;
        all.extend(self.flags()?);
        let mut names: Vec<&str> = profiles.to_vec();
        names.extend(self.profiles.iter().map(String::as_str));
        let cfg = spx::config::load_layers(self.config.as_deref(), &names, &self.sets, &all)?;
        Ok(cfg)
    }

    /// The effective config of a command without profiles or flags of its own.
    pub fn load_config(&self) -> Result<Config> {
        self.load_config_with(&[], Vec::new())
    }

    /// Load the config and apply process-wide settings (thread pool). The device must be one
    /// this binary has, even for commands that make no tensors (their summaries name it).
    pub fn setup(&self) -> Result<Config> {
        self.setup_with(&[], Vec::new())
    }

    /// [`Global::setup`] for a command that implies `profiles` (e.g. `--quick` → `["quick"]`)
    /// and has flags of its own (`flags`, as config keys, checked like `--set`).
    pub fn setup_with(&self, profiles: &[&str], flags: Vec<Flag>) -> Result<Config> {
        let cfg = self.load_config_with(profiles, flags)?;
        cfg.run.check_device()?;
        if cfg.run.threads > 0 {
            // Only the first call in a process takes effect; the CLI calls it once.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(cfg.run.threads)
                .build_global();
        }
        Ok(cfg)
    }

    pub fn progress(&self) -> Progress {
        Progress::new(self.quiet)
    }

    /// Print `summary` as one JSON object when `--json` was given.
    pub fn emit_json<T: Serialize>(&self, summary: &T) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string(summary)?);
        }
        Ok(())
    }

    /// Human-readable output goes to stdout unless `--json` claims it.
    pub fn say(&self, text: impl AsRef<str>) {
        if !self.json {
            println!("{}", text.as_ref());
        }
    }
}
