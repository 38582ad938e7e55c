//! `spx device`: compiled-in backends and a parity self-check of the chosen device.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use spx::backend::{self, DeviceSpec};

use super::Global;

#[derive(Args, Debug)]
pub struct DeviceArgs {}

pub fn run(g: &Global, _a: &DeviceArgs) -> Result<ExitCode> {
    let cfg = g.setup()?;
    let spec: DeviceSpec = cfg.run.device.clone();
    let report = backend::self_check(&spec)?;
    g.say(format!(
        "compiled-in backends: {}\ndevice: {}",
        report.compiled_backends.join(", "),
        report.device
    ));
    g.say(format!(
        "{:<14} {:>10} {:>14} {:>14} {:>10}  result",
        "check", "time ms", "|err| closed", "|diff| cpu", "tol"
    ));
    for c in &report.checks {
        g.say(format!(
            "{:<14} {:>10.3} {:>14.3e} {:>14.3e} {:>10.1e}  {}",
            c.name,
            c.millis,
            c.max_abs_err_closed_form,
            c.max_abs_diff_cpu,
            c.tolerance,
            if c.passed { "ok" } else { "FAILED" }
        ));
    }
    g.say(if report.passed {
        "self-check passed".to_string()
    } else {
        format!(
            "self-check FAILED on {}: do not trust results computed on this device",
            report.device
        )
    });
    g.emit_json(&report)?;
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
