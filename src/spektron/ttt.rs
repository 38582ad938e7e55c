//! Test-time training as a pipeline: open the unlabelled target spectra (a corpus HDF5, or one
//! instrument of a paired data file), load a checkpoint, adapt it with
//! [`model::finetune::ttt`](super::model::finetune::ttt), and — when a `finetune.json` of
//! `spx spektron finetune` names the test rows and the target standardisation — score RMSEP/R²
//! on those rows before and after. Writes `checkpoints/` and `ttt.json` into a [`Stage`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::baselines;
use super::data::{Modality, corpus, instruments};
use super::model::finetune::{self, FinetuneReport, TttConfig};
use super::model::pretrain::{check_modality_codes, check_rows_fit};
use super::model::{ModelConfig, SpektronModel, checkpoint};
use super::report;
use crate::error::SpxError;
use crate::io::atomic::Stage;
use crate::io::hdf5::H5Reader;

/// What TTT reads from the config.
#[derive(Clone, Copy, Debug)]
pub struct Settings<'a> {
    pub model: &'a ModelConfig,
    pub ttt: &'a TttConfig,
    /// `spektron.loss.mask_block`.
    pub mask_block: usize,
    /// `spektron.corpus.min_std` (for spectra read from a data file).
    pub min_std: f64,
    pub seed: u64,
}

/// Where the unlabelled target spectra come from.
#[derive(Clone, Copy, Debug)]
pub enum Spectra<'a> {
    /// A corpus HDF5 (`/spectra` (N, n_points), `/modality`).
    Corpus(&'a Path),
    /// One instrument of a paired data file (corn.mat / corn CSV directory / tablets .mat).
    Instrument {
        data: &'a Path,
        target: &'a str,
        /// Property name or 1-based column (scored with a fine-tuning report).
        property: &'a str,
        modality: Modality,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// Checkpoint to adapt.
    pub checkpoint: &'a Path,
    pub spectra: Spectra<'a>,
    /// `finetune.json` of `spx spektron finetune`: TTT runs on its test rows and scores them.
    pub finetune_report: Option<&'a Path>,
    /// The effective config file of the run, recorded in the report.
    pub config_file: &'a Path,
}

/// The parts of `finetune.json` TTT uses.
#[derive(Clone, Debug, Deserialize)]
pub struct FinetuneOutput {
    pub report: FinetuneReport,
    pub test_rows: Vec<usize>,
}

impl FinetuneOutput {
    pub fn read(path: &Path) -> Result<Self, SpxError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpxError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| SpxError::file(path, e.to_string()))
    }
}

/// `ttt.json`.
#[derive(Clone, Debug, Serialize)]
pub struct TttReport {
    pub checkpoint_in: String,
    pub checkpoint: String,
    pub config: String,
    pub spectra: usize,
    pub steps: usize,
    pub seconds: f64,
    pub msrp_loss: Vec<f64>,
    pub rmsep_before: Option<f64>,
    pub r2_before: Option<f64>,
    pub rmsep_after: Option<f64>,
    pub r2_after: Option<f64>,
    pub predictions_after: Option<Vec<f64>>,
    /// Final path of `ttt.json`.
    #[serde(skip)]
    pub file: PathBuf,
}

/// Unlabelled spectra, their modality codes, and the labels of the same rows when known.
type Loaded = (Vec<f32>, Vec<i8>, Option<Vec<f64>>);

fn load_spectra(
    spectra: &Spectra,
    ft: Option<&FinetuneOutput>,
    n_points: usize,
    min_std: f64,
) -> Result<Loaded, SpxError> {
    match *spectra {
        Spectra::Corpus(c) => {
            let r = H5Reader::open(c)?;
            let sh = r.shape("spectra")?;
            if sh.len() != 2 || sh[1] != n_points {
                return Err(SpxError::field(
                    c,
                    "/spectra",
                    format!("shape {sh:?}, expected (N, {n_points}) (spektron.model.n_points)"),
                ));
            }
            check_rows_fit(c, sh[0])?;
            let x: Vec<f32> = r.read::<f32>("spectra")?.iter().copied().collect();
            let m: Vec<i8> = r.read::<i8>("modality")?.iter().copied().collect();
            check_modality_codes(c, &m)?;
            if m.len() != sh[0] {
                return Err(SpxError::field(
                    c,
                    "/modality",
                    format!("{} rows, /spectra {}", m.len(), sh[0]),
                ));
            }
            Ok((x, m, None))
        }
        Spectra::Instrument {
            data,
            target,
            property,
            modality,
        } => {
            let pair = instruments::load_pair(data, target, target, property)?;
            let x = &pair.data.target;
            let (n, p) = x.dim();
            let axis: Vec<f64> = if pair.axis.len() == p {
                pair.axis.clone()
            } else {
                (0..p).map(|i| i as f64).collect()
            };
            let mut all = Vec::with_capacity(n * n_points);
            for (i, row) in x.rows().into_iter().enumerate() {
                let r = corpus::prepare(&axis, &row.to_vec(), n_points, min_std).map_err(|e| {
                    SpxError::field(data, "spectra", format!("spectrum {i} rejected ({e:?})"))
                })?;
                all.extend(r);
            }
            let rows: Vec<usize> = match ft {
                Some(f) => f.test_rows.clone(),
                None => (0..n).collect(),
            };
            if let Some(&bad) = rows.iter().find(|&&r| r >= n) {
                return Err(SpxError::field(
                    data,
                    "test_rows",
                    format!("test row {bad} of the fine-tuning report is beyond the {n} samples"),
                ));
            }
            let xs = rows
                .iter()
                .flat_map(|&r| all[r * n_points..(r + 1) * n_points].to_vec())
                .collect();
            let y = rows.iter().map(|&r| pair.data.y[r]).collect();
            Ok((xs, vec![modality.code(); rows.len()], Some(y)))
        }
    }
}

/// Run TTT; the adapted checkpoint and `ttt.json` go into `stage`.
pub fn run(
    input: &Input,
    cfg: Settings<'_>,
    device: &Device,
    stage: &Stage,
) -> Result<TttReport, SpxError> {
    let lay = cfg.model.layout();
    let ft = input
        .finetune_report
        .map(FinetuneOutput::read)
        .transpose()?;
    let (x, modality, labels) =
        load_spectra(&input.spectra, ft.as_ref(), lay.n_points, cfg.min_std)?;
    let mut rng = crate::backend::seeded(device, cfg.seed);
    let mut mc = cfg.model.clone();
    if let Some(f) = &ft {
        mc.n_targets = f.report.y_mean.len();
    }
    let model = SpektronModel::new(&mc, &mut rng, device)?;
    let (model, _) = checkpoint::load(input.checkpoint, model)?;
    let score = |m: &SpektronModel| -> Option<(f64, f64, Vec<f64>)> {
        let (rep, y) = (&ft.as_ref()?.report, labels.as_ref()?);
        if rep.y_mean.len() != 1 {
            return None;
        }
        let pred = finetune::predict(&m.valid(), &lay, &x, &modality, rep, device);
        let yt = ndarray::ArrayView1::from(y.as_slice());
        let yh = ndarray::ArrayView1::from(pred.as_slice());
        Some((baselines::rmsep(yt, yh), baselines::r2(yt, yh), pred))
    };
    let before = score(&model);
    let t0 = Instant::now();
    let (model, hist) = finetune::ttt(
        model,
        &lay,
        &x,
        &modality,
        cfg.ttt,
        cfg.mask_block,
        device,
        cfg.seed,
    )?;
    let seconds = t0.elapsed().as_secs_f64();
    let after = score(&model);
    let ck = checkpoint::save(
        &stage.dir().join("checkpoints"),
        &model.valid(),
        cfg.ttt.steps,
        &[],
    )?;
    let file = stage.dir().join("ttt.json");
    let mut rep = TttReport {
        checkpoint_in: input.checkpoint.display().to_string(),
        checkpoint: stage.final_path(&ck).display().to_string(),
        config: input.config_file.display().to_string(),
        spectra: modality.len(),
        steps: cfg.ttt.steps,
        seconds,
        msrp_loss: hist,
        rmsep_before: before.as_ref().map(|b| b.0),
        r2_before: before.as_ref().map(|b| b.1),
        rmsep_after: after.as_ref().map(|b| b.0),
        r2_after: after.as_ref().map(|b| b.1),
        predictions_after: after.map(|b| b.2),
        file: PathBuf::new(),
    };
    report::write_json(&file, &rep)?;
    rep.file = stage.final_path(&file);
    Ok(rep)
}
