//! Logging (`tracing`) and progress bars (`indicatif`).
//!
//! Logs go to stderr so that `--json` output on stdout stays machine-readable. Progress bars are
//! hidden when stderr is not a terminal (batch jobs, pipes) or with `--quiet`.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::EnvFilter;

/// Install the stderr subscriber. `RUST_LOG` wins when set; otherwise `-v` raises the level from
/// `info` (`-v` debug, `-vv` trace) and `--quiet` lowers it to `warn`.
pub fn init(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("spx={level},warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Whether progress bars are drawn.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub visible: bool,
}

impl Progress {
    /// Visible only on an interactive stderr and without `--quiet`.
    pub fn new(quiet: bool) -> Self {
        Progress {
            visible: !quiet && std::io::stderr().is_terminal(),
        }
    }

    pub fn hidden() -> Self {
        Progress { visible: false }
    }

    /// A bar over `len` steps, e.g. epochs or wavelength slices.
    pub fn bar(&self, len: u64, message: &str) -> ProgressBar {
        let pb = ProgressBar::with_draw_target(
            Some(len),
            if self.visible {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta}) {prefix}",
            )
            .expect("valid template"),
        );
        pb.set_message(message.to_string());
        pb.enable_steady_tick(Duration::from_millis(250));
        pb
    }
}
