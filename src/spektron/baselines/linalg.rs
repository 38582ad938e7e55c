//! Dense linear algebra on ndarray through faer (SVD, symmetric eigendecomposition).

use faer::{Mat, Side};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

pub(crate) fn to_faer(a: ArrayView2<f64>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[[i, j]])
}

pub(crate) fn from_faer(m: faer::MatRef<'_, f64>) -> Array2<f64> {
    Array2::from_shape_fn((m.nrows(), m.ncols()), |(i, j)| m[(i, j)])
}

/// Thin SVD `A = U diag(s) Vᵀ`; returns (U m×k, s, V n×k), k = min(m, n), s descending.
pub fn svd(a: ArrayView2<f64>) -> (Array2<f64>, Vec<f64>, Array2<f64>) {
    let m = to_faer(a);
    let s = m.thin_svd().expect("SVD converges on finite input");
    let sv: Vec<f64> = (0..s.S().dim()).map(|i| s.S().column_vector()[i]).collect();
    (from_faer(s.U()), sv, from_faer(s.V()))
}

/// Numerical rank cut-off as in MATLAB/numpy: max(m, n)·eps·s_max.
fn cutoff(m: usize, n: usize, s: &[f64]) -> f64 {
    m.max(n) as f64 * f64::EPSILON * s.first().copied().unwrap_or(0.0)
}

/// Moore–Penrose pseudo-inverse (n×m).
pub fn pinv(a: ArrayView2<f64>) -> Array2<f64> {
    let (u, s, v) = svd(a);
    let tol = cutoff(a.nrows(), a.ncols(), &s);
    let mut vs = v.clone();
    for (j, &sj) in s.iter().enumerate() {
        let inv = if sj > tol { 1.0 / sj } else { 0.0 };
        vs.column_mut(j).mapv_inplace(|x| x * inv);
    }
    vs.dot(&u.t())
}

/// Symmetric eigendecomposition: (eigenvalues ascending, eigenvectors as columns).
pub fn eigh(a: ArrayView2<f64>) -> (Vec<f64>, Array2<f64>) {
    let m = to_faer(a);
    let e = m
        .self_adjoint_eigen(Side::Lower)
        .expect("eigendecomposition converges on finite input");
    let vals = (0..e.S().dim()).map(|i| e.S().column_vector()[i]).collect();
    (vals, from_faer(e.U()))
}

/// Column means.
pub fn col_mean(x: ArrayView2<f64>) -> Array1<f64> {
    x.mean_axis(Axis(0)).expect("at least one row")
}

/// `x − mean` row-wise.
pub fn centre(x: ArrayView2<f64>, mean: ArrayView1<f64>) -> Array2<f64> {
    &x - &mean.insert_axis(Axis(0))
}

/// Rows of `x` picked by index.
pub fn rows(x: ArrayView2<f64>, idx: &[usize]) -> Array2<f64> {
    x.select(Axis(0), idx)
}
