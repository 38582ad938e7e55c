//! Inference, stitching and scoring of one scan (PtychoPINN `reassemble_cdi_image` +
//! `eval_reconstruction`), the ePIE baseline on the same footing, and the reconstruction
//! writer (NPZ + PNG + metrics JSON).

use std::path::Path;

use burn::tensor::Device;
use indicatif::ProgressBar;
use ndarray::Array2;
use num_complex::Complex32;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::data::RawData;
use super::epie::{EpieConfig, EpieResult, epie};
use super::grouping::{GroupConfig, group};
use super::metrics::{self, Metrics};
use super::model::{ModelShape, PtychoPinn};
use super::simulate::extract_patch;
use super::stitch::stitch;
use super::train::{PinnConfig, PinnData, predict_objects};
use crate::error::SpxError;
use crate::io;

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

/// Set the exactly-zero (unreached) pixels of `a` from the same pixels of the larger,
/// co-centred canvas `wide`.
fn fill_holes(a: &mut Array2<Complex32>, wide: &Array2<Complex32>) {
    let d = (wide.nrows().saturating_sub(a.nrows())) / 2;
    for ((r, c), z) in a.indexed_iter_mut() {
        if z.norm() == 0.0
            && let Some(v) = wide.get((r + d, c + d))
        {
            *z = *v;
        }
    }
}

pub(crate) fn centre_crop(a: &Array2<Complex32>, k: usize) -> Array2<Complex32> {
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
    let m = cfg.stitch_crop.min(data.n / 2);
    let (mut object, centre) = stitch(&objs, &weights, &data.offsets, m);
    // Pixels inside the scan that no group's M×M crop reaches are filled from the wider
    // N/2 crops of the overlapping groups, so the scored square has no holes.
    let wide = data.n / 2 - (data.n / 2 - m) % 2;
    if wide > m {
        let (w, _) = stitch(&objs, &weights, &data.offsets, wide);
        fill_holes(&mut object, &w);
    }
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

/// Write the reconstruction NPZ + PNG (+ metrics JSON) into `out` with file stem `stem`;
/// returns the written paths.
pub fn write_recon(out: &Path, stem: &str, r: &Recon) -> Result<Vec<String>, SpxError> {
    use io::npz::NpzArray;
    use io::plot::{ColorMap, ImageGrid, Panel};
    io::ensure_dir(out)?;
    let npz = out.join(format!("{stem}.npz"));
    let mut arrays = vec![
        ("object", NpzArray::C64(r.object.clone().into_dyn())),
        (
            "centre_xy",
            NpzArray::F64(ndarray::arr1(&[r.centre.0, r.centre.1]).into_dyn()),
        ),
    ];
    if let Some(t) = &r.truth {
        arrays.push(("truth", NpzArray::C64(t.clone().into_dyn())));
    }
    io::npz::write_npz(&npz, &arrays, true)?;
    let mut panels = vec![
        Panel::new(
            "|O| reconstructed",
            r.object.mapv(|z| z.norm() as f64),
            ColorMap::Gray,
        ),
        Panel::new(
            "arg O reconstructed",
            r.object.mapv(|z| z.arg() as f64),
            ColorMap::Phase,
        ),
    ];
    if let Some(t) = &r.truth {
        panels.push(Panel::new(
            "|O| truth",
            t.mapv(|z| z.norm() as f64),
            ColorMap::Gray,
        ));
    }
    let png = out.join(format!("{stem}.png"));
    io::plot::image_grid(
        &png,
        &ImageGrid {
            title: stem.to_string(),
            ncols: panels.len(),
            panels,
            cell: (420, 400),
        },
    )?;
    let mut files = vec![npz.display().to_string(), png.display().to_string()];
    if let Some(m) = &r.metrics {
        let p = out.join(format!("{stem}_metrics.json"));
        let j = serde_json::to_vec_pretty(m).expect("metrics serialise");
        io::write_atomic(&p, |w| std::io::Write::write_all(w, &j))?;
        files.push(p.display().to_string());
    }
    Ok(files)
}
