//! CRR weights for one wavelength slice (paper Eqs. 19–23, authors' conventions).
//!
//! With Ñ^(−½)A = UΣVᵀ (thin SVD), the code's Q = V diag((Σ²+λ²)/Σ) Vᵀ and R = Q / rowsum(Q),
//! W = R V Σ*⁻¹ Uᵀ Ñ^(−½) collapses to diag(1/s) · V_k U_kᵀ · Ñ^(−½) with s = Q·1, where k are
//! the modes with Σ ≥ cutoff (Σ*⁻¹ = Σ/(Σ²+λ²) cancels against Q's diagonal). No nfit × nfit
//! matrix is formed.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{ComputeEigenvectors, self_adjoint_evd, self_adjoint_evd_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::svd::{ComputeSvdVectors, SvdError, svd, svd_scratch};
use faer::{Accum, Mat, MatRef, Par};

use super::grid::Grid;
use super::kernel::{KernelTable, RadialRow};

/// Why one slice's weights could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("SVD did not converge")]
    Svd,
    #[error("eigendecomposition did not converge")]
    Evd,
}

impl From<SvdError> for WeightsError {
    fn from(_: SvdError) -> Self {
        WeightsError::Svd
    }
}

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
    // One radial row per distinct seeing (one per exposure), interpolated in seeing once.
    let mut rows: Vec<(f64, RadialRow)> = Vec::new();
    let row_of: Vec<usize> = seeing
        .iter()
        .map(|&s| match rows.iter().position(|(v, _)| *v == s) {
            Some(k) => k,
            None => {
                rows.push((s, table.row_at(s)));
                rows.len() - 1
            }
        })
        .collect();
    let live: Vec<(f64, f64, &RadialRow, usize)> = (0..xs.len())
        .filter(|&i| good[i])
        .map(|i| (xs[i], ys[i], &rows[row_of[i]].1, i))
        .collect();
    let mut a = Mat::<f64>::zeros(xs.len(), fit.len());
    for (c, &(px, py)) in centres.iter().enumerate() {
        let col = a
            .col_mut(c)
            .try_as_col_major_mut()
            .expect("owned column is contiguous");
        let col = col.as_slice_mut();
        for &(x, y, row, i) in &live {
            col[i] = row.eval((x - px).hypot(y - py)) * p2;
        }
    }
    a
}

/// Fast CRR weights W (nfit × nsample) from Ñ^(−½)A via its thin SVD (see module docs).
pub fn crr_weights_svd(
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

/// Per-thread scratch for [`crr_weights_gram`], reused across slices.
#[derive(Default)]
pub struct Workspace {
    mem: Option<(usize, MemBuffer)>,
}

impl Workspace {
    fn stack(&mut self, n: usize) -> &mut MemStack {
        if self.mem.as_ref().map(|(m, _)| *m) != Some(n) {
            let req = self_adjoint_evd_scratch::<f64>(
                n,
                ComputeEigenvectors::Yes,
                Par::Seq,
                Default::default(),
            );
            self.mem = Some((n, MemBuffer::new(req)));
        }
        MemStack::new(&mut self.mem.as_mut().expect("just set").1)
    }
}

/// CRR weights from the eigendecomposition of the smaller Gram matrix G = B Bᵀ, B = Ñ^(−½)A
/// with rows (samples) < columns (fit pixels): G = U Σ² Uᵀ gives the same U and Σ as the thin
/// SVD, and V_k = Bᵀ U_k Σ_k⁻¹, so
///   W = diag(1/s) · Bᵀ (U_k Σ_k⁻¹ U_kᵀ),   s = Bᵀ U_k Σ_k⁻¹ ((Σ_k²+λ²)/Σ_k ∘ Σ_k⁻¹ U_kᵀ B 1).
/// Three GEMMs (G, the m×m middle factor, Bᵀ·middle) and one m×m symmetric EVD instead of an
/// m×n SVD. Modes with Σ < `cutoff` are dropped (their share of s, < cutoff, is left out).
/// Σ² is resolved to ~1e-16·‖G‖ here, so a mode is also dropped when Σ² is below 64 ε ‖G‖
/// (unresolvable); with the defaults this never binds (cutoff² = 1e-12 ≫ 64 ε ‖G‖).
pub fn crr_weights_gram(
    na: MatRef<'_, f64>,
    good: &[bool],
    lambda: f64,
    cutoff: f64,
    ws: &mut Workspace,
) -> Result<Mat<f64>, WeightsError> {
    let (m, n) = na.shape();
    let mut g = Mat::<f64>::zeros(m, m);
    matmul(
        g.as_mut(),
        Accum::Replace,
        na,
        na.transpose(),
        1.0,
        Par::Seq,
    );
    let mut e = faer::diag::Diag::<f64>::zeros(m);
    let mut u = Mat::<f64>::zeros(m, m);
    self_adjoint_evd(
        g.as_ref(),
        e.as_mut(),
        Some(u.as_mut()),
        Par::Seq,
        ws.stack(m),
        Default::default(),
    )
    .map_err(|_| WeightsError::Evd)?;
    let emax = (0..m).map(|i| e[i].abs()).fold(0.0, f64::max);
    let floor = (cutoff * cutoff).max(64.0 * f64::EPSILON * emax);
    // Kept modes (eigenvalues ascending in faer; order does not matter here).
    let kept: Vec<usize> = (0..m).filter(|&i| e[i] >= floor && e[i] > 0.0).collect();
    let k = kept.len();
    let sv: Vec<f64> = kept.iter().map(|&i| e[i].sqrt()).collect();
    // Uk Σ⁻¹ (m × k) and Uk (m × k), rows of bad samples zeroed (Ñ^(−½) on the right).
    let uks = Mat::from_fn(m, k, |i, c| u[(i, kept[c])] / sv[c]);
    let ukg = Mat::from_fn(m, k, |i, c| if good[i] { u[(i, kept[c])] } else { 0.0 });
    let mut mid = Mat::<f64>::zeros(m, m);
    matmul(
        mid.as_mut(),
        Accum::Replace,
        uks.as_ref(),
        ukg.as_ref().transpose(),
        1.0,
        Par::Seq,
    );
    // s = Bᵀ y with y = Uk Σ⁻¹ (q ∘ Σ⁻¹ Ukᵀ B1), q = (Σ²+λ²)/Σ.
    let b1: Vec<f64> = (0..m).map(|i| (0..n).map(|j| na[(i, j)]).sum()).collect();
    let coef: Vec<f64> = (0..k)
        .map(|c| {
            let ut_b1: f64 = (0..m).map(|i| u[(i, kept[c])] * b1[i]).sum();
            let q = (sv[c] * sv[c] + lambda * lambda) / sv[c];
            q * ut_b1 / sv[c] / sv[c]
        })
        .collect();
    let y: Vec<f64> = (0..m)
        .map(|i| (0..k).map(|c| u[(i, kept[c])] * coef[c]).sum())
        .collect();
    let mut w = Mat::<f64>::zeros(n, m);
    matmul(
        w.as_mut(),
        Accum::Replace,
        na.transpose(),
        mid.as_ref(),
        1.0,
        Par::Seq,
    );
    for j in 0..n {
        let sj: f64 = (0..m).map(|i| na[(i, j)] * y[i]).sum();
        let r = 1.0 / sj;
        let r = if r.is_finite() { r } else { 0.0 };
        for i in 0..m {
            w[(j, i)] *= r;
        }
    }
    Ok(w)
}

/// CRR weights by the chosen solver: the thin SVD (backward stable, the default) or the Gram
/// EVD (faster; only when samples < fit pixels, otherwise the SVD is used).
pub fn crr_weights(
    na: MatRef<'_, f64>,
    good: &[bool],
    lambda: f64,
    cutoff: f64,
    solver: super::Solver,
    ws: &mut Workspace,
) -> Result<Mat<f64>, WeightsError> {
    if solver == super::Solver::Gram && na.nrows() < na.ncols() {
        crr_weights_gram(na, good, lambda, cutoff, ws)
    } else {
        crr_weights_svd(na, good, lambda, cutoff).map_err(Into::into)
    }
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
