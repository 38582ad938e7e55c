//! Fine-tuning as a pipeline: N labelled spectra of one instrument of a paired data file
//! (seeded shuffle; the rest is the test set), a pretrained checkpoint, LoRA or full
//! fine-tuning ([`model::finetune::finetune`](super::model::finetune::finetune)), RMSEP/R² on
//! the test rows. Writes `checkpoints/` and `finetune.json` into a [`Stage`]; `finetune.json`
//! is what `spx spektron ttt --finetune-report` reads back.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use super::baselines;
use super::data::{Modality, corpus, instruments};
use super::model::finetune::{self, FinetuneConfig, FinetuneMode, FinetuneReport, Labelled};
use super::model::{ModelConfig, SpektronModel, checkpoint};
use super::report;
use crate::error::SpxError;
use crate::io::atomic::Stage;

/// What fine-tuning reads from the config.
#[derive(Clone, Copy, Debug)]
pub struct Settings<'a> {
    pub model: &'a ModelConfig,
    pub finetune: &'a FinetuneConfig,
    /// `spektron.corpus.min_std`.
    pub min_std: f64,
    pub seed: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// Pretrained checkpoint directory (same `[spektron.model]`).
    pub checkpoint: &'a Path,
    /// corn.mat / nir_shootout_2002.mat, or a directory with the corn CSV files.
    pub data: &'a Path,
    /// Instrument fine-tuned on and tested.
    pub target: &'a str,
    /// Any other instrument of the file (only used to open the pair).
    pub source: &'a str,
    /// Property name or 1-based column.
    pub property: &'a str,
    /// Labelled target spectra used for fine-tuning.
    pub n: usize,
    pub modality: Modality,
    /// The effective config file of the run, recorded in the report.
    pub config_file: &'a Path,
}

/// `finetune.json`.
#[derive(Clone, Debug, Serialize)]
pub struct FinetuneSummary {
    pub data: String,
    pub target: String,
    pub property: String,
    pub n_transfer: usize,
    pub n_test: usize,
    pub mode: FinetuneMode,
    pub rmsep: f64,
    pub r2: f64,
    pub trainable_params: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub checkpoint: String,
    pub config: String,
    pub report: FinetuneReport,
    pub test_rows: Vec<usize>,
    pub predictions: Vec<f64>,
    /// Final path of `finetune.json`.
    #[serde(skip)]
    pub file: PathBuf,
}

/// Fine-tune and score; outputs go into `stage`.
pub fn run(
    input: &Input,
    cfg: Settings<'_>,
    device: &Device,
    stage: &Stage,
) -> Result<FinetuneSummary, SpxError> {
    let pair = instruments::load_pair(input.data, input.source, input.target, input.property)?;
    let x = &pair.data.target;
    let (n, p) = x.dim();
    if input.n < 2 || input.n >= n {
        return Err(SpxError::field(
            input.data,
            "--n",
            format!("{} must be in 2..{n} (the file has {n} samples)", input.n),
        ));
    }
    let axis: Vec<f64> = if pair.axis.len() == p {
        pair.axis.clone()
    } else {
        (0..p).map(|i| i as f64).collect()
    };
    let lay = cfg.model.layout();
    let np = lay.n_points;
    let mut spectra = Vec::with_capacity(n * np);
    for (i, row) in x.rows().into_iter().enumerate() {
        let r = corpus::prepare(&axis, &row.to_vec(), np, cfg.min_std).map_err(|e| {
            SpxError::field(
                input.data,
                "spectra",
                format!("target spectrum {i} rejected ({e:?})"),
            )
        })?;
        spectra.extend(r);
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed));
    let (tr, te) = idx.split_at(input.n);
    let pick = |rows: &[usize]| -> (Vec<f32>, Vec<f32>) {
        let xs = rows
            .iter()
            .flat_map(|&r| spectra[r * np..(r + 1) * np].to_vec())
            .collect();
        let ys = rows.iter().map(|&r| pair.data.y[r] as f32).collect();
        (xs, ys)
    };
    let (xtr, ytr) = pick(tr);
    let (xte, yte) = pick(te);
    let mut rng = crate::backend::seeded(device, cfg.seed);
    let mut mc = cfg.model.clone();
    mc.n_targets = 1;
    let model = SpektronModel::new(&mc, &mut rng, device)?;
    let (model, _) = checkpoint::load(input.checkpoint, model)?;
    let code = input.modality.code();
    let mtr = vec![code; tr.len()];
    let data = Labelled {
        x: &xtr,
        y: &ytr,
        modality: &mtr,
    };
    let (model, rep) = finetune::finetune(model, &lay, &data, cfg.finetune, device, cfg.seed)?;
    let pred = finetune::predict(
        &model.valid(),
        &lay,
        &xte,
        &vec![code; te.len()],
        &rep,
        device,
    );
    let yt = ndarray::Array1::from(yte.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
    let yh = ndarray::Array1::from(pred.clone());
    let rmsep = baselines::rmsep(yt.view(), yh.view());
    let r2 = baselines::r2(yt.view(), yh.view());
    let ck = checkpoint::save(
        &stage.dir().join("checkpoints"),
        &model.valid().materialize(),
        rep.epochs_run,
        &[],
    )?;
    let file = stage.dir().join("finetune.json");
    let mut summary = FinetuneSummary {
        data: input.data.display().to_string(),
        target: input.target.to_string(),
        property: pair.property,
        n_transfer: input.n,
        n_test: te.len(),
        mode: cfg.finetune.mode,
        rmsep,
        r2,
        trainable_params: rep.trainable_params,
        epochs_run: rep.epochs_run,
        best_epoch: rep.best_epoch,
        checkpoint: stage.final_path(&ck).display().to_string(),
        config: input.config_file.display().to_string(),
        report: rep,
        test_rows: te.to_vec(),
        predictions: pred,
        file: PathBuf::new(),
    };
    report::write_json(&file, &summary)?;
    summary.file = stage.final_path(&file);
    Ok(summary)
}
