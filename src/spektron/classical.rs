//! The classical calibration-transfer comparison as a pipeline (`spx spektron baselines`):
//! open a paired data file, run every method of [`baselines`] on the seeded splits, and write
//! the CSV/Markdown/JSON/PNG report into a [`Stage`].

use std::path::{Path, PathBuf};

use super::baselines::{self, BaselineReport, BaselinesConfig};
use super::data::instruments;
use super::report;
use crate::error::SpxError;
use crate::io::atomic::{Stage, safe_component};

#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// corn.mat / nir_shootout_2002.mat, or a directory with the corn CSV files.
    pub data: &'a Path,
    /// Source (master) instrument.
    pub source: &'a str,
    /// Target (slave) instrument.
    pub target: &'a str,
    /// Property name or 1-based column.
    pub property: &'a str,
}

/// A finished comparison.
#[derive(Clone, Debug)]
pub struct ClassicalRun {
    pub report: BaselineReport,
    /// The property's label in the file.
    pub property: String,
    pub samples: usize,
    pub channels: usize,
    /// Report files (final paths): CSV, Markdown, JSON, PNG.
    pub files: Vec<PathBuf>,
    pub markdown: String,
}

/// Run the classical methods; `on_repeat` is called after each repetition.
pub fn run(
    input: &Input,
    cfg: &BaselinesConfig,
    stage: &Stage,
    on_repeat: impl FnMut(usize) + Send,
) -> Result<ClassicalRun, SpxError> {
    let mut r = run_into(input, cfg, stage.dir(), on_repeat)?;
    r.files = r.files.iter().map(|f| stage.final_path(f)).collect();
    Ok(r)
}

/// [`run`] writing its report files into the directory `dir` (an existing staging directory or
/// a folder in one); `files` are the paths written there.
pub fn run_into(
    input: &Input,
    cfg: &BaselinesConfig,
    dir: &Path,
    on_repeat: impl FnMut(usize) + Send,
) -> Result<ClassicalRun, SpxError> {
    let pair = instruments::load_pair(input.data, input.source, input.target, input.property)?;
    let report = baselines::evaluate(&pair.data, cfg, on_repeat)
        .map_err(|e| SpxError::file(input.data, e))?;
    let prop = pair.property.to_ascii_lowercase();
    // The property label comes from the data file: it must not steer the output path.
    let stem = safe_component(&format!(
        "baselines_{}_{}_{}",
        input.source, input.target, prop
    ));
    let title = format!(
        "{} → {}, {} (RMSEP)",
        input.source, input.target, pair.property
    );
    let files = report::write_baselines(dir, &stem, &title, &report, &cfg.n_transfer)?;
    let markdown = report::baselines_markdown(&title, &report, &cfg.n_transfer);
    Ok(ClassicalRun {
        property: pair.property,
        samples: pair.data.y.len(),
        channels: pair.data.source.ncols(),
        files,
        report,
        markdown,
    })
}
