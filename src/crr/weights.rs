//! CRR weights for one wavelength slice (paper Eqs. 19–23, authors' conventions).
//!
//! With Ñ^(−½)A = UΣVᵀ (thin SVD), the code's Q = V diag((Σ²+λ²)/Σ) Vᵀ and R = Q / rowsum(Q),
//! W = R V Σ*⁻¹ Uᵀ Ñ^(−½) collapses to diag(1/s) · V_k U_kᵀ · Ñ^(−½) with s = Q·1, where k are
//! the modes with Σ ≥ cutoff (Σ*⁻¹ = Σ/(Σ²+λ²) cancels against Q's diagonal). No nfit × nfit
//! matrix is formed.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::matmul::matmul;
use faer::linalg::svd::{ComputeSvdVectors, SvdError, svd, svd_scratch};
use faer::{Accum, Mat, MatRef, Par};

use super::grid::Grid;
use super::kernel::KernelTable;

/// (U, singular values, V) of a thin SVD.
pub type Svd = (Mat<f64>, Vec<f64>, Mat<f64>);

/// Thin SVD on the calling thread (slices are already parallel; nested threading of small
/// SVDs is much slower). Returns (U, σ, V).
pub fn thin_svd(a: MatRef<'_, f64>) -> Result<Svd, SvdError> {
    let (m, n) = a.shape();
    let k = m.min(n);
    let mut u = Mat::<f64>::zeros(m, k);
    let mut v = Mat::<f64>::zeros(n, k);
    let mut s = faer::diag::Diag::<f64>::zeros(k);
    let thin = ComputeSvdVectors::Thin;
    let mut mem = MemBuffer::new(svd_scratch::<f64>(
        m,
        n,
        thin,
        thin,
        Par::Seq,
        Default::default(),
    ));
    svd(
        a,
        s.as_mut(),
        Some(u.as_mut()),
        Some(v.as_mut()),
        Par::Seq,
        MemStack::new(&mut mem),
        Default::default(),
    )?;
    let sv = (0..k).map(|i| s[i]).collect();
    Ok((u, sv, v))
}

/// Ñ^(−½)A for one slice: rows = samples (exposure-major fiber rows), columns = `fit` pixels;
/// A_ij = K(r_ij; seeing_i)·p², zero for bad samples (Ñ^(−½) = 0) and beyond the kernel radius.
pub fn design_matrix(
    table: &KernelTable,
    grid: &Grid,
    fit: &[usize],
    xs: &[f64],
    ys: &[f64],
    seeing: &[f64],
    good: &[bool],
) -> Mat<f64> {
    let p2 = grid.pixel * grid.pixel;
    let centres: Vec<(f64, f64)> = fit.iter().map(|&j| grid.centre(j)).collect();
    Mat::from_fn(xs.len(), fit.len(), |i, c| {
        if !good[i] {
            return 0.0;
        }
        let (px, py) = centres[c];
        let r = ((xs[i] - px).powi(2) + (ys[i] - py).powi(2)).sqrt();
        table.eval(r, seeing[i]) * p2
    })
}

/// Fast CRR weights W (nfit × nsample) from Ñ^(−½)A (see module docs).
pub fn crr_weights(
    na: MatRef<'_, f64>,
    good: &[bool],
    lambda: f64,
    cutoff: f64,
) -> Result<Mat<f64>, SvdError> {
    let (nsample, nfit) = na.shape();
    let (u, sv, v) = thin_svd(na)?;
    let k = sv.len();
    let kept = sv.iter().take_while(|&&s| s >= cutoff).count();
    // s = V diag(q) Vᵀ 1 with the code's q = D/filt: (Σ²+λ²)/Σ for kept modes, Σ for dropped.
    let mut coef = vec![0.0; k];
    for (m, c) in coef.iter_mut().enumerate() {
        let vt1: f64 = (0..nfit).map(|j| v[(j, m)]).sum();
        let q = if m < kept {
            (sv[m] * sv[m] + lambda * lambda) / sv[m]
        } else {
            sv[m]
        };
        *c = q * vt1;
    }
    let inv_s: Vec<f64> = (0..nfit)
        .map(|j| {
            let s: f64 = (0..k).map(|m| v[(j, m)] * coef[m]).sum();
            let r = 1.0 / s;
            if r.is_finite() { r } else { 0.0 }
        })
        .collect();
    let vs = Mat::from_fn(nfit, kept, |j, m| v[(j, m)] * inv_s[j]);
    let ug = Mat::from_fn(nsample, kept, |i, m| if good[i] { u[(i, m)] } else { 0.0 });
    let mut w = Mat::<f64>::zeros(nfit, nsample);
    matmul(
        w.as_mut(),
        Accum::Replace,
        vs.as_ref(),
        ug.as_ref().transpose(),
        1.0,
        Par::Seq,
    );
    Ok(w)
}

/// The authors' formula taken literally (blanton144/mnsa `create_weights`):
/// A⁺ = V diag(filt/Σ) Uᵀ, Q = V diag(Σ/filt) Vᵀ, R = Q/rowsum(Q), W = R A⁺ Ñ^(−½).
/// O(nfit²·nsample); for tests and small cases.
pub fn crr_weights_literal(
    na: MatRef<'_, f64>,
    good: &[bool],
    lambda: f64,
    cutoff: f64,
) -> Result<Mat<f64>, SvdError> {
    let (nsample, nfit) = na.shape();
    let (u, sv, v) = thin_svd(na)?;
    let k = sv.len();
    let dinv: Vec<f64> = sv
        .iter()
        .map(|&d| if d < cutoff { 0.0 } else { 1.0 / d })
        .collect();
    let filt: Vec<f64> = dinv
        .iter()
        .map(|&di| 1.0 / (1.0 + lambda * lambda * di * di))
        .collect();
    let a_plus = Mat::from_fn(nfit, nsample, |j, i| {
        (0..k)
            .map(|m| v[(j, m)] * filt[m] * dinv[m] * u[(i, m)])
            .sum::<f64>()
    });
    let q = Mat::from_fn(nfit, nfit, |a, b| {
        (0..k)
            .map(|m| v[(a, m)] * sv[m] / filt[m] * v[(b, m)])
            .sum::<f64>()
    });
    let r = Mat::from_fn(nfit, nfit, |a, b| {
        let rs: f64 = (0..nfit).map(|c| q[(a, c)]).sum();
        let x = q[(a, b)] / rs;
        if x.is_finite() { x } else { 0.0 }
    });
    let w = &r * &a_plus;
    Ok(Mat::from_fn(nfit, nsample, |j, i| {
        if good[i] { w[(j, i)] } else { 0.0 }
    }))
}
