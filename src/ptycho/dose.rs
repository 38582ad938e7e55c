//! Train → infer → stitch → evaluate pipeline and the dose study (PtychoPINN
//! `dose_response_study.py`): train/test scans at two doses, Poisson-NLL and MAE arms.

use std::path::Path;

use burn::tensor::Device;
use indicatif::ProgressBar;
use ndarray::Array2;
use num_complex::Complex32;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::data::RawData;
use super::grouping::{GroupConfig, group};
use super::metrics::{self, Metrics};
use super::model::{ModelShape, PtychoPinn};
use super::simulate::extract_patch;
use super::stitch::stitch;
use super::train::{PinnConfig, PinnData, predict_objects};
use crate::error::SpxError;
use crate::io::plot::{ColorMap, ImageGrid, Panel, image_grid};

/// Group a raw scan for the network.
pub fn prepare(raw: &RawData, gc: &GroupConfig, seed: u64) -> Result<PinnData, SpxError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = raw.xcoords.to_vec();
    let y = raw.ycoords.to_vec();
    let g = group(&x, &y, raw.diffraction.view(), gc, &mut rng)?;
    Ok(PinnData::from_grouped(&g))
}

/// A stitched reconstruction with the matching ground-truth crop when the data has one.
pub struct Recon {
    pub object: Array2<Complex32>,
    /// Object-pixel (x, y) of the canvas centre.
    pub centre: (f64, f64),
    pub truth: Option<Array2<Complex32>>,
    pub metrics: Option<Metrics>,
    /// Side of the centred square where every pixel is covered (used for metrics).
    pub covered: usize,
}

/// Largest centred square of `a` with no exactly-zero pixel.
fn covered_side(a: &Array2<Complex32>) -> usize {
    let n = a.nrows().min(a.ncols());
    let (h, w) = a.dim();
    let mut k = n;
    while k > 0 {
        let (r0, c0) = ((h - k) / 2, (w - k) / 2);
        if a.slice(ndarray::s![r0..r0 + k, c0..c0 + k])
            .iter()
            .all(|z| z.norm() > 0.0)
        {
            return k;
        }
        k -= 2;
    }
    0
}

fn centre_crop(a: &Array2<Complex32>, k: usize) -> Array2<Complex32> {
    let (h, w) = a.dim();
    let (r0, c0) = ((h - k) / 2, (w - k) / 2);
    a.slice(ndarray::s![r0..r0 + k, c0..c0 + k]).to_owned()
}

/// Infer every group, stitch, and compare with `objectGuess` (trim 2 px, aligned).
#[allow(clippy::too_many_arguments)]
pub fn reconstruct(
    model: &PtychoPinn,
    shape: &ModelShape,
    data: &PinnData,
    raw: &RawData,
    cfg: &PinnConfig,
    batch: usize,
    dev: &Device,
    pb: &ProgressBar,
) -> Recon {
    let (objs, weights) = predict_objects(model, shape, data, &raw.probe, cfg, batch, dev, pb);
    // only the central N/2 square of a group estimate is normalised by the constraint map
    let (object, centre) = stitch(
        &objs,
        &weights,
        &data.offsets,
        cfg.stitch_crop.min(data.n / 2),
    );
    let size = object.nrows();
    let truth = raw.object.as_ref().map(|o| {
        extract_patch(o, centre.0, centre.1, size)
            .mapv(|z| Complex32::new(z.re as f32, z.im as f32))
    });
    let covered = covered_side(&object);
    let metrics = truth.as_ref().and_then(|t| {
        (covered > 11)
            .then(|| metrics::evaluate(&centre_crop(&object, covered), &centre_crop(t, covered), 2))
    });
    Recon {
        object,
        centre,
        truth,
        metrics,
        covered,
    }
}

/// One arm of the dose study.
#[derive(Clone, Debug, Serialize)]
pub struct Arm {
    pub nphotons: f64,
    pub loss: String,
    pub epochs_run: usize,
    pub final_loss: f64,
    pub train_seconds: f64,
    pub metrics: Option<Metrics>,
}

/// One figure row: dose, log10 diffraction, MAE and NLL reconstructions with their arms.
pub type FigureRow<'a> = (f64, Array2<f64>, &'a Recon, &'a Recon, &'a Arm, &'a Arm);

/// The 2×3 figure: per dose, log10 diffraction | MAE amplitude | NLL amplitude.
pub fn dose_figure(path: &Path, rows: &[FigureRow<'_>]) -> Result<(), SpxError> {
    let mut panels = vec![];
    let label = |a: &Arm| match &a.metrics {
        Some(m) => format!(
            "{} |O|  PSNR {:.1} dB  SSIM {:.3}  FRC50 {:.1}",
            a.loss, m.amp_psnr_max, m.amp_ssim, m.amp_frc50
        ),
        None => format!("{} |O|", a.loss),
    };
    for (nph, diff, mae_r, nll_r, mae_a, nll_a) in rows {
        panels.push(Panel::new(
            format!("log10(diffraction+1), {nph:.0e} photons"),
            diff.clone(),
            ColorMap::Viridis,
        ));
        for (r, a) in [(mae_r, mae_a), (nll_r, nll_a)] {
            let k = r.object.nrows().min(128);
            panels.push(Panel::new(
                label(a),
                centre_crop(&r.object, k).mapv(|z| z.norm() as f64),
                ColorMap::Gray,
            ));
        }
    }
    image_grid(
        path,
        &ImageGrid {
            title: "PtychoPINN dose study: MAE vs Poisson NLL".into(),
            panels,
            ncols: 3,
            cell: (520, 460),
        },
    )
}
