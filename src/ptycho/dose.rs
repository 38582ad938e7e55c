//! Train → infer → stitch → evaluate pipeline and the dose study (PtychoPINN
//! `dose_response_study.py`): train/test scans at two doses, Poisson-NLL and MAE arms.

use std::path::Path;

use burn::tensor::Device;
use indicatif::ProgressBar;
use ndarray::Array2;
use num_complex::Complex32;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::data::RawData;
use super::epie::{EpieConfig, EpieResult, epie};
use super::grouping::{GroupConfig, group};
use super::metrics::{self, Metrics};
use super::model::{ModelShape, PtychoPinn};
use super::simulate::extract_patch;
use super::stitch::stitch;
use super::train::{PinnConfig, PinnData, predict_objects};
use crate::error::SpxError;
use crate::io::plot::{ColorMap, ImageGrid, Panel, image_grid};

/// `[ptycho.dose]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DoseConfig {
    pub n_train: usize,
    pub n_test: usize,
    /// ePIE iterations on each test scan; 0 = no ePIE arm.
    pub epie_iterations: usize,
    pub quick: QuickConfig,
}

/// `[ptycho.dose.quick]`: the `--quick` sizes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuickConfig {
    pub n: usize,
    pub object_size: usize,
    pub nlines: usize,
    pub buffer: f64,
    pub probe_scale: f64,
    pub n_train: usize,
    pub n_test: usize,
    pub epochs: usize,
    pub filters_base: usize,
    pub border_filters: usize,
    pub stitch_crop: usize,
}

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
    /// "PINN" or "ePIE".
    pub method: String,
    /// "MAE" / "NLL" for the PINN; "-" for ePIE.
    pub loss: String,
    /// Epochs (PINN) or iterations (ePIE).
    pub epochs_run: usize,
    /// Final training loss (PINN) or normalised Fourier error (ePIE).
    pub final_loss: f64,
    pub train_seconds: f64,
    pub metrics: Option<Metrics>,
}

/// The metrics table as CSV text, one row per arm (empty metric cells where there is no
/// ground truth).
pub fn metrics_csv(arms: &[&Arm]) -> String {
    let mut s = String::from(
        "nphotons,method,loss,epochs_run,final_loss,train_seconds,amp_mae,amp_psnr_max,\
         amp_psnr_255,amp_ssim,amp_frc50,phase_mae,phase_ssim,phase_frc50\n",
    );
    for a in arms {
        let m = a.metrics.as_ref().map_or(",,,,,,,".to_string(), |m| {
            format!(
                "{},{},{},{},{},{},{},{}",
                m.amp_mae,
                m.amp_psnr_max,
                m.amp_psnr_255,
                m.amp_ssim,
                m.amp_frc50,
                m.phase_mae,
                m.phase_ssim,
                m.phase_frc50
            )
        });
        s += &format!(
            "{:e},{},{},{},{},{},{m}\n",
            a.nphotons, a.method, a.loss, a.epochs_run, a.final_loss, a.train_seconds
        );
    }
    s
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
    // one colour scale for all diffraction panels, so the doses compare directly
    let dmax = rows
        .iter()
        .flat_map(|r| r.1.iter())
        .cloned()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    for (nph, diff, mae_r, nll_r, mae_a, nll_a) in rows {
        let mut p = Panel::new(
            format!("log10(diffraction+1), {nph:.0e} photons"),
            diff.clone(),
            ColorMap::Viridis,
        );
        p.limits = Some((0.0, dmax.max(1e-12)));
        panels.push(p);
        for (r, a) in [(mae_r, mae_a), (nll_r, nll_a)] {
            let k = r.object.nrows().min(128);
            let amp = centre_crop(&r.object, k).mapv(|z| z.norm() as f64);
            // grey scale over the stitched pixels only (uncovered pixels are exactly 0)
            let (lo, hi) = amp
                .iter()
                .filter(|v| **v > 0.0)
                .fold((f64::MAX, f64::MIN), |m, v| (m.0.min(*v), m.1.max(*v)));
            let mut p = Panel::new(label(a), amp, ColorMap::Gray);
            if lo < hi {
                p.limits = Some((lo, hi));
            }
            panels.push(p);
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

/// ePIE on `raw` (known probe), cropped to a square for scoring: `region` = (centre (x, y),
/// side) when given (e.g. the PINN's covered square, so both are scored on the same pixels),
/// else the largest square inside the scanned bounding box.
pub fn epie_reconstruct(
    raw: &RawData,
    cfg: &EpieConfig,
    region: Option<((f64, f64), usize)>,
    seed: u64,
    pb: &ProgressBar,
) -> Result<(Recon, EpieResult), SpxError> {
    let shape = match &raw.object {
        Some(o) => o.dim(),
        None => {
            let n = raw.n();
            let mx = raw.xcoords.iter().cloned().fold(0.0, f64::max);
            let my = raw.ycoords.iter().cloned().fold(0.0, f64::max);
            // Saturating: a corrupt 1e30 coordinate gives a huge shape that epie refuses.
            let side = |m: f64| (m.ceil().min(1e12) as usize).saturating_add(n);
            (side(my), side(mx))
        }
    };
    let x = raw.xcoords.to_vec();
    let y = raw.ycoords.to_vec();
    let r = epie(
        raw.diffraction.view(),
        &x,
        &y,
        &raw.probe,
        shape,
        cfg,
        seed,
        pb,
    )?;
    let ((cx, cy), side) = region.unwrap_or_else(|| {
        let span = |v: &[f64]| {
            v.iter()
                .fold((f64::MAX, f64::MIN), |a, &t| (a.0.min(t), a.1.max(t)))
        };
        let ((x0, x1), (y0, y1)) = (span(&x), span(&y));
        (
            ((x0 + x1) / 2.0, (y0 + y1) / 2.0),
            (((x1 - x0).min(y1 - y0)) as usize / 2) * 2,
        )
    });
    let to32 =
        |a: Array2<num_complex::Complex64>| a.mapv(|z| Complex32::new(z.re as f32, z.im as f32));
    let crop = to32(extract_patch(&r.object, cx, cy, side));
    let truth = raw
        .object
        .as_ref()
        .map(|o| to32(extract_patch(o, cx, cy, side)));
    let metrics = truth
        .as_ref()
        .and_then(|t| (side > 11).then(|| metrics::evaluate(&crop, t, 2)));
    let rec = Recon {
        object: crop,
        centre: (cx, cy),
        truth,
        metrics,
        covered: side,
    };
    Ok((rec, r))
}
