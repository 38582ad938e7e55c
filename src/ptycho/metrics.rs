//! Reconstruction metrics (PtychoPINN `evaluation.eval_reconstruction`): trimming, global
//! amplitude scale and phase-plane alignment, MAE, PSNR, SSIM and FRC.

use ndarray::{Array2, s};
use num_complex::{Complex32, Complex64};
use serde::Serialize;

use super::fft::Fft2;

/// Drop `k` pixels on every side.
pub fn trim<T: Clone>(a: &Array2<T>, k: usize) -> Array2<T> {
    let (h, w) = a.dim();
    a.slice(s![k..h - k, k..w - k]).to_owned()
}

/// Multiply `pred` by `mean(gt)/mean(pred)` (the reference amplitude normalisation).
pub fn align_scale(pred: &Array2<f64>, gt: &Array2<f64>) -> (Array2<f64>, f64) {
    let f = gt.mean().unwrap_or(0.0) / pred.mean().unwrap_or(1.0);
    (pred * f, f)
}

/// Remove the least-squares plane `a·x + b·y + c` from a phase image.
pub fn remove_phase_plane(ph: &Array2<f64>) -> Array2<f64> {
    let (h, w) = ph.dim();
    // normal equations for [x, y, 1]
    let mut ata = [[0.0f64; 3]; 3];
    let mut atb = [0.0f64; 3];
    for ((r, c), v) in ph.indexed_iter() {
        let row = [c as f64, r as f64, 1.0];
        for i in 0..3 {
            for j in 0..3 {
                ata[i][j] += row[i] * row[j];
            }
            atb[i] += row[i] * v;
        }
    }
    let coef = solve3(ata, atb);
    Array2::from_shape_fn((h, w), |(r, c)| {
        ph[[r, c]] - (coef[0] * c as f64 + coef[1] * r as f64 + coef[2])
    })
}

fn solve3(mut a: [[f64; 3]; 3], mut b: [f64; 3]) -> [f64; 3] {
    for col in 0..3 {
        let p = (col..3)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .expect("3 rows");
        a.swap(col, p);
        b.swap(col, p);
        let d = a[col][col];
        if d.abs() < 1e-300 {
            return [0.0; 3];
        }
        for r in 0..3 {
            if r != col {
                let f = a[r][col] / d;
                let pivot = a[col];
                for (x, p) in a[r].iter_mut().zip(pivot) {
                    *x -= f * p;
                }
                b[r] -= f * b[col];
            }
        }
    }
    [b[0] / a[0][0], b[1] / a[1][1], b[2] / a[2][2]]
}

pub fn mae(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    (a - b).mapv(f64::abs).mean().unwrap_or(f64::NAN)
}

pub fn mse(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    (a - b).mapv(|v| v * v).mean().unwrap_or(f64::NAN)
}

/// `10·log10(peak² / MSE)`.
pub fn psnr(gt: &Array2<f64>, pred: &Array2<f64>, peak: f64) -> f64 {
    10.0 * (peak * peak / mse(gt, pred)).log10()
}

/// scikit-image `structural_similarity` defaults: 7×7 uniform window, K1 0.01, K2 0.03,
/// sample covariance (49/48), mean over windows fully inside the image.
pub fn ssim(gt: &Array2<f64>, pred: &Array2<f64>, data_range: f64) -> f64 {
    let (h, w) = gt.dim();
    let win = 7usize;
    if h < win || w < win {
        return f64::NAN;
    }
    let np = (win * win) as f64;
    let cov_norm = np / (np - 1.0);
    let c1 = (0.01 * data_range).powi(2);
    let c2 = (0.03 * data_range).powi(2);
    let mut total = 0.0;
    let mut count = 0usize;
    for r in 0..=h - win {
        for c in 0..=w - win {
            let (mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for i in r..r + win {
                for j in c..c + win {
                    let x = gt[[i, j]];
                    let y = pred[[i, j]];
                    sx += x;
                    sy += y;
                    sxx += x * x;
                    syy += y * y;
                    sxy += x * y;
                }
            }
            let (ux, uy) = (sx / np, sy / np);
            let vx = cov_norm * (sxx / np - ux * ux);
            let vy = cov_norm * (syy / np - uy * uy);
            let vxy = cov_norm * (sxy / np - ux * uy);
            total += ((2.0 * ux * uy + c1) * (2.0 * vxy + c2))
                / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
            count += 1;
        }
    }
    total / count as f64
}

/// Fourier ring correlation of two images (centre-cropped to a common square), rings
/// `round(|k|)` about `floor(n/2)` up to n/2. Each image has its mean removed and is tapered
/// by a Hann window first: without it the jump at the crop's edges (the FFT treats the image
/// as periodic) puts the same streaks into both spectra at every frequency, and the curve of
/// any two smooth images stays above 0.5 up to the last ring (FRC50 saturates).
pub fn frc(a: &Array2<f64>, b: &Array2<f64>) -> Vec<f64> {
    let n = a.nrows().min(a.ncols()).min(b.nrows()).min(b.ncols());
    let hann: Vec<f64> = (0..n)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * (i as f64 + 0.5) / n as f64).cos())
        .collect();
    let crop = |x: &Array2<f64>| -> Vec<Complex64> {
        let (h, w) = x.dim();
        let (r0, c0) = ((h - n) / 2, (w - n) / 2);
        let v = x.slice(s![r0..r0 + n, c0..c0 + n]);
        let mean = v.mean().unwrap_or(0.0);
        v.indexed_iter()
            .map(|((r, c), v)| Complex64::new((v - mean) * hann[r] * hann[c], 0.0))
            .collect()
    };
    let plan = Fft2::new(n);
    let mut tmp = vec![Complex64::new(0.0, 0.0); n * n];
    let mut fa = crop(a);
    let mut fb = crop(b);
    plan.forward(&mut fa, &mut tmp);
    plan.forward(&mut fb, &mut tmp);
    let rings = n / 2 + 1;
    let (mut cross, mut pa, mut pb) = (
        vec![Complex64::new(0.0, 0.0); rings],
        vec![0.0; rings],
        vec![0.0; rings],
    );
    let h = (n / 2) as f64;
    for r in 0..n {
        for c in 0..n {
            // shifted coordinates relative to floor(n/2)
            let kr = ((r + n / 2) % n) as f64 - h;
            let kc = ((c + n / 2) % n) as f64 - h;
            let ring = (kr * kr + kc * kc).sqrt().round() as usize;
            if ring >= rings {
                continue;
            }
            let (x, y) = (fa[r * n + c], fb[r * n + c]);
            cross[ring] += x * y.conj();
            pa[ring] += x.norm_sqr();
            pb[ring] += y.norm_sqr();
        }
    }
    (0..rings)
        .map(|i| cross[i].norm() / (pa[i] * pb[i]).sqrt().max(1e-300))
        .collect()
}

/// First ring where the curve drops below `t`, linearly interpolated (ring index);
/// the last ring when it never does.
pub fn frc_threshold(curve: &[f64], t: f64) -> f64 {
    for i in 1..curve.len() {
        if curve[i] < t {
            let (a, b) = (curve[i - 1], curve[i]);
            return (i - 1) as f64 + if a > b { (a - t) / (a - b) } else { 0.0 };
        }
    }
    (curve.len() - 1) as f64
}

/// Amplitude and phase metrics of a reconstruction against the ground truth.
#[derive(Clone, Debug, Serialize)]
pub struct Metrics {
    pub amp_mae: f64,
    pub amp_mse: f64,
    /// PSNR with peak 255 on O(1) amplitudes (the reference's cv2 default, for comparison
    /// with published numbers).
    pub amp_psnr_255: f64,
    /// PSNR with peak = ground-truth amplitude maximum.
    pub amp_psnr_max: f64,
    pub amp_ssim: f64,
    pub amp_frc50: f64,
    pub phase_mae: f64,
    pub phase_ssim: f64,
    pub phase_frc50: f64,
    pub amp_scale: f64,
}

/// Trim `trim_px`, align (amplitude by mean ratio, phase by plane removal) and measure.
pub fn evaluate(pred: &Array2<Complex32>, gt: &Array2<Complex32>, trim_px: usize) -> Metrics {
    assert_eq!(pred.dim(), gt.dim(), "evaluate: shapes differ");
    let p = trim(pred, trim_px);
    let g = trim(gt, trim_px);
    let pa = p.mapv(|z| z.norm() as f64);
    let ga = g.mapv(|z| z.norm() as f64);
    let (pa, scale) = align_scale(&pa, &ga);
    let pp = remove_phase_plane(&p.mapv(|z| z.arg() as f64));
    let gp = remove_phase_plane(&g.mapv(|z| z.arg() as f64));
    let range =
        ga.iter().cloned().fold(f64::MIN, f64::max) - ga.iter().cloned().fold(f64::MAX, f64::min);
    let gmax = ga.iter().cloned().fold(f64::MIN, f64::max);
    let to01 =
        |x: &Array2<f64>| x.mapv(|v| (v + std::f64::consts::PI) / (2.0 * std::f64::consts::PI));
    Metrics {
        amp_mae: mae(&ga, &pa),
        amp_mse: mse(&ga, &pa),
        amp_psnr_255: psnr(&ga, &pa, 255.0),
        amp_psnr_max: psnr(&ga, &pa, gmax),
        amp_ssim: ssim(&ga, &pa, if range > 0.0 { range } else { 1.0 }),
        amp_frc50: frc_threshold(&frc(&ga, &pa), 0.5),
        phase_mae: mae(&gp, &pp),
        phase_ssim: ssim(&to01(&gp), &to01(&pp), 1.0),
        phase_frc50: frc_threshold(&frc(&gp, &pp), 0.5),
        amp_scale: scale,
    }
}
