//! CRR weights for one wavelength slice (paper Eqs. 19–23, authors' conventions).
//!
//! With Ñ^(−½)A = UΣVᵀ (thin SVD), the code's Q = V diag((Σ²+λ²)/Σ) Vᵀ and R = Q / rowsum(Q),
//! W = R V Σ*⁻¹ Uᵀ Ñ^(−½) collapses to diag(1/s) · V_k U_kᵀ · Ñ^(−½) with s = Q·1, where k are
//! the modes with Σ ≥ cutoff (Σ*⁻¹ = Σ/(Σ²+λ²) cancels against Q's diagonal). No nfit × nfit
//! matrix is formed.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{ComputeEigenvectors, self_adjoint_evd, self_adjoint_evd_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self as tri, BlockStructure};
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
    // Beyond the kernel radius K = 0 (most of B for large bundles): skip the square root.
    let r2max = table.rmax * table.rmax;
    for (c, &(px, py)) in centres.iter().enumerate() {
        let col = a
            .col_mut(c)
            .try_as_col_major_mut()
            .expect("owned column is contiguous");
        let col = col.as_slice_mut();
        for &(x, y, row, i) in &live {
            let (dx, dy) = (x - px, y - py);
            let d2 = dx * dx + dy * dy;
            if d2 <= r2max {
                col[i] = row.eval(d2.sqrt()) * p2;
            }
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

/// Per-thread scratch for [`crr_weights_gram`], reused across slices: the EVD workspace and
/// every m × m / m × n buffer, so a slice allocates only its output W.
pub struct Workspace {
    mem: Option<(usize, MemBuffer)>,
    /// B restricted to the good samples, rows in band order (m × n).
    b: Mat<f64>,
    /// Gram matrix B Bᵀ (lower triangle), then the eigenvectors U.
    g: Mat<f64>,
    u: Mat<f64>,
    /// U_k Σ_k^(−½), then the middle factor U_k Σ_k⁻¹ U_kᵀ.
    c: Mat<f64>,
    mid: Mat<f64>,
    /// Bᵀ · mid before the 1/s scaling and the scatter to sample columns (n × m).
    wg: Mat<f64>,
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace {
            mem: None,
            b: Mat::new(),
            g: Mat::new(),
            u: Mat::new(),
            c: Mat::new(),
            mid: Mat::new(),
            wg: Mat::new(),
        }
    }
}

/// Below this order the tridiagonal eigenproblem is solved by QR iteration rather than divide and
/// conquer (faer's default switch is 128): 10 % faster on the 171 × 171 Gram matrix of a
/// 19-fiber, 9-exposure slice, no difference at 1143.
const EVD_QR_BELOW: usize = 256;

/// Pixel columns per panel of the banded products (see [`crr_weights_gram`]).
const PANEL: usize = 64;

fn evd_params() -> faer::linalg::evd::SelfAdjointEvdParams {
    let mut p: faer::linalg::evd::SelfAdjointEvdParams = faer::Auto::<f64>::auto();
    p.recursion_threshold = EVD_QR_BELOW;
    p
}

fn shape(m: &mut Mat<f64>, r: usize, c: usize) {
    if m.nrows() != r || m.ncols() != c {
        m.resize_with(r, c, |_, _| 0.0);
    }
}

fn col(m: MatRef<'_, f64>, j: usize) -> &[f64] {
    m.col(j)
        .try_as_col_major()
        .expect("owned column is contiguous")
        .as_slice()
}

/// The EVD scratch for order `n`, allocated only when the order changes.
fn evd_stack(mem: &mut Option<(usize, MemBuffer)>, n: usize) -> &mut MemStack {
    {
        if mem.as_ref().map(|(m, _)| *m) != Some(n) {
            let req = self_adjoint_evd_scratch::<f64>(
                n,
                ComputeEigenvectors::Yes,
                Par::Seq,
                evd_params().into(),
            );
            *mem = Some((n, MemBuffer::new(req)));
        }
        MemStack::new(&mut mem.as_mut().expect("just set").1)
    }
}

/// Banded products are used when the panels cover less than this share of B.
const BANDED_BELOW: f64 = 0.7;

/// Good sample rows in band order and the column panels of B with their row ranges.
struct Bands {
    rows: Vec<usize>,
    /// (first column, end column, first row, end row) in `rows` order.
    panels: Vec<(usize, usize, usize, usize)>,
    /// Σ panel areas / (rows × columns).
    coverage: f64,
}

fn bands(na: MatRef<'_, f64>, good: &[bool]) -> Bands {
    let (nsample, n) = na.shape();
    // First/last non-zero column of each sample row.
    let mut lo = vec![usize::MAX; nsample];
    let mut hi = vec![0usize; nsample];
    for j in 0..n {
        for (i, &x) in col(na, j).iter().enumerate() {
            if x != 0.0 {
                if lo[i] == usize::MAX {
                    lo[i] = j;
                }
                hi[i] = j;
            }
        }
    }
    let mut rows: Vec<usize> = (0..nsample).filter(|&i| good[i]).collect();
    rows.sort_by_key(|&i| (lo[i].min(n) + hi[i], i));
    let m = rows.len();
    let mut panels = Vec::new();
    let mut covered = 0usize;
    for j0 in (0..n).step_by(PANEL) {
        let j1 = (j0 + PANEL).min(n);
        let (mut r0, mut r1) = (m, 0);
        for (c, &i) in rows.iter().enumerate() {
            if lo[i] < j1 && hi[i] >= j0 {
                r0 = r0.min(c);
                r1 = r1.max(c + 1);
            }
        }
        if r1 > r0 {
            covered += (r1 - r0) * (j1 - j0);
            panels.push((j0, j1, r0, r1));
        }
    }
    let coverage = if m * n == 0 {
        1.0
    } else {
        covered as f64 / (m * n) as f64
    };
    Bands {
        rows,
        panels,
        coverage,
    }
}

/// Share of Ñ^(−½)A (good rows × fit pixels) that [`crr_weights_gram`]'s banded products touch;
/// below 0.7 it uses them (127 fibers × 9 exposures: ≈ 0.25; 19 fibers: ≈ 1).
pub fn band_coverage(na: MatRef<'_, f64>, good: &[bool]) -> f64 {
    bands(na, good).coverage
}

/// CRR weights from the eigendecomposition of the smaller Gram matrix G = B Bᵀ, B = Ñ^(−½)A
/// restricted to the good samples (rows) with rows (samples) < columns (fit pixels):
/// G = U Σ² Uᵀ gives the same U and Σ as the thin SVD, and V_k = Bᵀ U_k Σ_k⁻¹, so
///   W = diag(1/s) · Bᵀ (U_k Σ_k⁻¹ U_kᵀ),   s = Bᵀ U_k ((Σ_k²+λ²)/Σ_k³ ∘ U_kᵀ B 1).
/// One m × m symmetric EVD (QR iteration below order 256), the middle factor as a symmetric
/// rank-k product (lower triangle only), G likewise, and two GEMVs; W columns of bad samples
/// are zero. Modes with Σ < `cutoff` are dropped (their share of s, < cutoff, is left out).
/// Σ² is resolved to ~1e-16·‖G‖ here, so a mode is also dropped when Σ² is below 64 ε ‖G‖
/// (unresolvable); with the defaults this never binds (cutoff² = 1e-12 ≫ 64 ε ‖G‖).
///
/// Banded products: the kernel is zero beyond its radius, so a panel of 64 fit pixels only
/// meets the samples near it. Rows are ordered by the midpoint of their first and last non-zero
/// column (pixels are row-major on the sky, so this sorts samples by y); each panel then touches a
/// contiguous row range [r0, r1) that is read off B's own non-zeros (exact: every row outside it
/// is zero in that panel), and G and Bᵀ·mid are summed panel by panel over those ranges only.
/// Used when the panels cover less than 70 % of B (127 fibers: ≈ 25 %; 19 fibers: all of it).
pub fn crr_weights_gram(
    na: MatRef<'_, f64>,
    good: &[bool],
    lambda: f64,
    cutoff: f64,
    ws: &mut Workspace,
) -> Result<Mat<f64>, WeightsError> {
    let (nsample, n) = na.shape();
    let Bands {
        rows,
        panels,
        coverage,
    } = bands(na, good);
    let m = rows.len();
    let banded = coverage < BANDED_BELOW;
    shape(&mut ws.b, m, n);
    for j in 0..n {
        let src = col(na, j);
        let dst =
            ws.b.col_mut(j)
                .try_as_col_major_mut()
                .expect("owned column is contiguous")
                .as_slice_mut();
        for (d, &i) in dst.iter_mut().zip(&rows) {
            *d = src[i];
        }
    }
    shape(&mut ws.g, m, m);
    shape(&mut ws.u, m, m);
    shape(&mut ws.c, m, m);
    shape(&mut ws.mid, m, m);
    shape(&mut ws.wg, n, m);
    let b = ws.b.as_ref();
    if banded {
        ws.g.fill(0.0);
        for &(j0, j1, r0, r1) in &panels {
            let bp = b.submatrix(r0, j0, r1 - r0, j1 - j0);
            tri::matmul(
                ws.g.as_mut().submatrix_mut(r0, r0, r1 - r0, r1 - r0),
                BlockStructure::TriangularLower,
                Accum::Add,
                bp,
                BlockStructure::Rectangular,
                bp.transpose(),
                BlockStructure::Rectangular,
                1.0,
                Par::Seq,
            );
        }
    } else {
        tri::matmul(
            ws.g.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Replace,
            b,
            BlockStructure::Rectangular,
            b.transpose(),
            BlockStructure::Rectangular,
            1.0,
            Par::Seq,
        );
    }
    let mut e = faer::diag::Diag::<f64>::zeros(m);
    {
        let stack = evd_stack(&mut ws.mem, m);
        self_adjoint_evd(
            ws.g.as_ref(),
            e.as_mut(),
            Some(ws.u.as_mut()),
            Par::Seq,
            stack,
            evd_params().into(),
        )
        .map_err(|_| WeightsError::Evd)?;
    }
    let emax = (0..m).map(|i| e[i].abs()).fold(0.0, f64::max);
    let floor = (cutoff * cutoff).max(64.0 * f64::EPSILON * emax);
    // faer sorts eigenvalues ascending: the kept modes are a suffix.
    let first = (0..m).find(|&i| e[i] >= floor && e[i] > 0.0).unwrap_or(m);
    let k = m - first;
    let b = ws.b.as_ref();
    let uk = ws.u.as_ref().subcols(first, k);
    // d = ((Σ²+λ²)/Σ³) ∘ U_kᵀ B 1, y = U_k d, s = Bᵀ y.
    let ones = faer::Col::<f64>::from_fn(n, |_| 1.0);
    let mut b1 = faer::Col::<f64>::zeros(m);
    matmul(b1.as_mut(), Accum::Replace, b, ones.as_ref(), 1.0, Par::Seq);
    let mut d = faer::Col::<f64>::zeros(k);
    matmul(
        d.as_mut(),
        Accum::Replace,
        uk.transpose(),
        b1.as_ref(),
        1.0,
        Par::Seq,
    );
    for c in 0..k {
        let ev = e[first + c];
        let sv = ev.sqrt();
        d[c] *= (ev + lambda * lambda) / (ev * sv);
        // C = U_k Σ_k^(−½), so C Cᵀ = U_k Σ_k⁻¹ U_kᵀ.
        let q = 1.0 / sv.sqrt();
        let dst =
            ws.c.col_mut(c)
                .try_as_col_major_mut()
                .expect("owned column is contiguous")
                .as_slice_mut();
        for (o, &a) in dst.iter_mut().zip(col(uk, c)) {
            *o = a * q;
        }
    }
    let mut y = faer::Col::<f64>::zeros(m);
    matmul(y.as_mut(), Accum::Replace, uk, d.as_ref(), 1.0, Par::Seq);
    let ck = ws.c.as_ref().subcols(0, k);
    tri::matmul(
        ws.mid.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        ck,
        BlockStructure::Rectangular,
        ck.transpose(),
        BlockStructure::Rectangular,
        1.0,
        Par::Seq,
    );
    for c in 1..m {
        for r in 0..c {
            ws.mid[(r, c)] = ws.mid[(c, r)];
        }
    }
    let mut s = faer::Col::<f64>::zeros(n);
    matmul(
        s.as_mut(),
        Accum::Replace,
        b.transpose(),
        y.as_ref(),
        1.0,
        Par::Seq,
    );
    let inv: Vec<f64> = (0..n)
        .map(|j| {
            let r = 1.0 / s[j];
            if r.is_finite() { r } else { 0.0 }
        })
        .collect();
    if banded {
        for &(j0, j1, r0, r1) in &panels {
            matmul(
                ws.wg.as_mut().submatrix_mut(j0, 0, j1 - j0, m),
                Accum::Replace,
                b.submatrix(r0, j0, r1 - r0, j1 - j0).transpose(),
                ws.mid.as_ref().subrows(r0, r1 - r0),
                1.0,
                Par::Seq,
            );
        }
        // Columns of no panel (all-zero in B) stay zero.
        let mut j = 0;
        for &(j0, j1, _, _) in &panels {
            ws.wg.as_mut().subrows_mut(j, j0 - j).fill(0.0);
            j = j1;
        }
        ws.wg.as_mut().subrows_mut(j, n - j).fill(0.0);
    } else {
        matmul(
            ws.wg.as_mut(),
            Accum::Replace,
            b.transpose(),
            ws.mid.as_ref(),
            1.0,
            Par::Seq,
        );
    }
    let mut w = Mat::<f64>::zeros(n, nsample);
    for (c, &i) in rows.iter().enumerate() {
        let dst = w
            .col_mut(i)
            .try_as_col_major_mut()
            .expect("owned column is contiguous")
            .as_slice_mut();
        for ((o, &a), &r) in dst.iter_mut().zip(col(ws.wg.as_ref(), c)).zip(&inv) {
            *o = a * r;
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
