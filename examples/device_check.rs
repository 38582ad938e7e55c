//! Run the device self-check from library code: `cargo run --release --example device_check [DEVICE]`.

use spx::backend::{self, DeviceSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec: DeviceSpec = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "cpu".into())
        .parse()?;
    let report = backend::self_check(&spec)?;
    for c in &report.checks {
        println!(
            "{:<14} {:>8.3} ms  err {:.2e}  diff-vs-cpu {:.2e}  {}",
            c.name,
            c.millis,
            c.max_abs_err_closed_form,
            c.max_abs_diff_cpu,
            if c.passed { "ok" } else { "FAILED" }
        );
    }
    Ok(())
}
