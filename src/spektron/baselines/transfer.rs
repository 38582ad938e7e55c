//! Spectrum-level transfer maps slave (target) → master (source) space: `x_m ≈ (x_s − x̄_s)·F + x̄_m`,
//! fitted on N transfer samples measured on both instruments. DS uses a full F, PDS a banded
//! one, CCA a rank-k one through canonical variates of PCA scores.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, s};

use super::linalg::{centre, col_mean, pinv, svd};

/// A fitted spectrum transfer `x ↦ (x − x̄_s) F + x̄_m`.
#[derive(Clone, Debug)]
pub struct SpectrumMap {
    pub slave_mean: Array1<f64>,
    pub master_mean: Array1<f64>,
    pub f: MapMatrix,
}

#[derive(Clone, Debug)]
pub enum MapMatrix {
    Full(Array2<f64>),
    /// Column j = Σ_i coefs[j][i]·x[start[j] + i] (PDS).
    Banded {
        start: Vec<usize>,
        coefs: Vec<Vec<f64>>,
    },
}

impl SpectrumMap {
    /// Transfer rows of slave spectra into master space.
    pub fn apply(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let xc = centre(x, self.slave_mean.view());
        let mut out = match &self.f {
            MapMatrix::Full(f) => xc.dot(f),
            MapMatrix::Banded { start, coefs } => {
                let mut o = Array2::zeros((x.nrows(), coefs.len()));
                for (j, (st, c)) in start.iter().zip(coefs).enumerate() {
                    let w = xc.slice(s![.., *st..*st + c.len()]);
                    o.column_mut(j)
                        .assign(&w.dot(&ArrayView1::from(c.as_slice())));
                }
                o
            }
        };
        out += &self.master_mean.view().insert_axis(ndarray::Axis(0));
        out
    }

    /// The dense F (for tests and model-level forms).
    pub fn dense(&self) -> Array2<f64> {
        match &self.f {
            MapMatrix::Full(f) => f.clone(),
            MapMatrix::Banded { start, coefs } => {
                let p = self.slave_mean.len();
                let mut f = Array2::zeros((p, coefs.len()));
                for (j, (st, c)) in start.iter().zip(coefs).enumerate() {
                    for (i, v) in c.iter().enumerate() {
                        f[[st + i, j]] = *v;
                    }
                }
                f
            }
        }
    }
}

/// DS (Wang, Veltkamp & Kowalski 1991), centred: `F = pinv(Xs − x̄s)(Xm − x̄m)`.
pub fn ds(xm: ArrayView2<f64>, xs: ArrayView2<f64>) -> SpectrumMap {
    let (mm, ms) = (col_mean(xm), col_mean(xs));
    let f = pinv(centre(xs, ms.view()).view()).dot(&centre(xm, mm.view()));
    SpectrumMap {
        slave_mean: ms,
        master_mean: mm,
        f: MapMatrix::Full(f),
    }
}

/// Number of leading singular values holding `frac` of Σs², at most `cap`.
fn n_components(sv: &[f64], frac: f64, cap: usize) -> usize {
    let total: f64 = sv.iter().map(|v| v * v).sum();
    if total <= 0.0 {
        return 0;
    }
    let mut acc = 0.0;
    for (k, v) in sv.iter().enumerate() {
        acc += v * v;
        if acc >= frac * total || k + 1 >= cap {
            return k + 1;
        }
    }
    sv.len().min(cap)
}

/// PDS (Wang 1991; Bouveresse & Massart 1996): master channel j regressed on slave channels
/// j−hw…j+hw (truncated at the edges) by centred local PCR keeping `var_frac` of the window
/// variance (≤ N−1 components), plus the offset from the means.
pub fn pds(
    xm: ArrayView2<f64>,
    xs: ArrayView2<f64>,
    half_window: usize,
    var_frac: f64,
) -> SpectrumMap {
    let (mm, ms) = (col_mean(xm), col_mean(xs));
    let (xmc, xsc) = (centre(xm, mm.view()), centre(xs, ms.view()));
    let p = xs.ncols();
    let n = xs.nrows();
    let mut start = Vec::with_capacity(p);
    let mut coefs = Vec::with_capacity(p);
    for j in 0..p {
        let lo = j.saturating_sub(half_window);
        let hi = (j + half_window + 1).min(p);
        let win = xsc.slice(s![.., lo..hi]);
        let (u, sv, v) = svd(win);
        let k = n_components(&sv, var_frac, n.saturating_sub(1).max(1));
        let target = xmc.column(j);
        let mut b = Array1::<f64>::zeros(hi - lo);
        for c in 0..k {
            if sv[c] <= f64::EPSILON * sv[0] * (n.max(hi - lo) as f64) {
                break;
            }
            let coef = u.column(c).dot(&target) / sv[c];
            b.scaled_add(coef, &v.column(c));
        }
        start.push(lo);
        coefs.push(b.to_vec());
    }
    SpectrumMap {
        slave_mean: ms,
        master_mean: mm,
        f: MapMatrix::Banded { start, coefs },
    }
}

/// CCA transfer in PCA space: k = min(N−1, max_k) PCA components per instrument, canonical
/// variates by whitening (the PCA score bases U are already white) and an SVD of U_sᵀU_m;
/// `F = V_s S_s⁻¹ A · F1 · F2` with `F1 = pinv(Ux) Uy`, `F2 = pinv(Uy) (Xm − x̄m)`. Raw-space
/// CCA is degenerate when p ≫ N.
pub fn cca(xm: ArrayView2<f64>, xs: ArrayView2<f64>, max_k: usize) -> SpectrumMap {
    let (mm, ms) = (col_mean(xm), col_mean(xs));
    let (xmc, xsc) = (centre(xm, mm.view()), centre(xs, ms.view()));
    let k = xs.nrows().saturating_sub(1).min(max_k).max(1);
    let (us, ss, vs) = svd(xsc.view());
    let (um, _, _) = svd(xmc.view());
    let tol = |s: &[f64]| s.first().copied().unwrap_or(0.0) * 1e-12;
    let ks = ss.iter().take(k).filter(|&&v| v > tol(&ss)).count().max(1);
    let us = us.slice(s![.., ..ks]).to_owned();
    let um = um.slice(s![.., ..k.min(um.ncols())]).to_owned();
    let (a, _, b) = svd(us.t().dot(&um).view());
    let ux = us.dot(&a);
    let uy = um.dot(&b);
    let f1 = pinv(ux.view()).dot(&uy);
    let f2 = pinv(uy.view()).dot(&xmc);
    // Slave spectrum → whitened PCA scores: x V_s S_s⁻¹, then canonical weights A.
    let mut w = vs.slice(s![.., ..ks]).to_owned();
    for (mut col, &s) in w.columns_mut().into_iter().zip(&ss) {
        col.mapv_inplace(|v| v / s);
    }
    let f = w.dot(&a).dot(&f1).dot(&f2);
    SpectrumMap {
        slave_mean: ms,
        master_mean: mm,
        f: MapMatrix::Full(f),
    }
}

/// Prediction-level slope/bias correction: OLS fit of `y_ref = b + s·ŷ_slave`; returns (s, b).
pub fn sbc(y_ref: ArrayView1<f64>, y_pred: ArrayView1<f64>) -> (f64, f64) {
    let n = y_ref.len() as f64;
    let (my, mp) = (y_ref.sum() / n, y_pred.sum() / n);
    let sxy: f64 = y_ref
        .iter()
        .zip(y_pred)
        .map(|(a, b)| (a - my) * (b - mp))
        .sum();
    let sxx: f64 = y_pred.iter().map(|b| (b - mp).powi(2)).sum();
    // A constant prediction cannot give a slope: fall back to a pure bias.
    let slope = if sxx > 0.0 { sxy / sxx } else { 1.0 };
    (slope, my - slope * mp)
}
