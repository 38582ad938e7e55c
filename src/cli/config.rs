//! `spx config show [METHOD]`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::Global;

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Print the effective config as TOML: every section, or [run] plus one method's section.
    Show {
        /// Section to show besides [run] (e.g. dip, crr, spektron, ptycho).
        method: Option<String>,
    },
}

pub fn run(g: &Global, cmd: &ConfigCmd) -> Result<ExitCode> {
    let cfg = g.load_config()?;
    match cmd {
        ConfigCmd::Show { method } => {
            let text = cfg.to_toml(method.as_deref())?;
            if g.json {
                let value: toml::Value = toml::from_str(&text)?;
                println!("{}", serde_json::to_string(&value)?);
            } else {
                print!("{text}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
