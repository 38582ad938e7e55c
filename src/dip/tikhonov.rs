//! Baseline: weighted least squares with a second-difference penalty,
//! `min Σ w_i (y_i − H_i x)² + λ‖D2 x‖²`, solved through the banded normal equations
//! `(HᵀWH + λD2ᵀD2) x = HᵀWy` by a banded Cholesky factorisation (half-bandwidth = widest
//! filter). λ is chosen by bisection in log λ so that χ²/M reaches the target (discrepancy
//! principle). Works in the same scaled units as the DIP.

use std::time::Instant;

use serde::Serialize;

use super::forward::{Operator, chi2};
use super::train::flux_scale;
use super::{TikhonovConfig, Weighting};

/// A symmetric banded matrix: `band[j*(kb+1) + d] = A[j+d][j]`.
#[derive(Clone, Debug)]
pub struct Banded {
    pub n: usize,
    pub kb: usize,
    pub band: Vec<f64>,
}

impl Banded {
    pub fn zeros(n: usize, kb: usize) -> Self {
        Banded {
            n,
            kb,
            band: vec![0.0; n * (kb + 1)],
        }
    }

    /// Add `v` to A[i][j] (and A[j][i]); |i − j| ≤ kb.
    fn add(&mut self, i: usize, j: usize, v: f64) {
        let (hi, lo) = if i >= j { (i, j) } else { (j, i) };
        self.band[lo * (self.kb + 1) + (hi - lo)] += v;
    }

    pub fn get(&self, i: usize, j: usize) -> f64 {
        let (hi, lo) = if i >= j { (i, j) } else { (j, i) };
        if hi - lo > self.kb {
            0.0
        } else {
            self.band[lo * (self.kb + 1) + (hi - lo)]
        }
    }

    pub fn matvec(&self, x: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; self.n];
        for j in 0..self.n {
            for d in 0..=self.kb.min(self.n - 1 - j) {
                let a = self.band[j * (self.kb + 1) + d];
                y[j + d] += a * x[j];
                if d > 0 {
                    y[j] += a * x[j + d];
                }
            }
        }
        y
    }

    /// Solve A x = b by banded Cholesky; `None` if A is not positive definite.
    pub fn solve(&self, b: &[f64]) -> Option<Vec<f64>> {
        let l = self.cholesky()?;
        Some(self.substitute(&l, b))
    }

    /// The banded Cholesky factor `l[j*(kb+1) + d] = L[j+d][j]`; `None` if not positive definite.
    pub fn cholesky(&self) -> Option<Vec<f64>> {
        let (n, kb) = (self.n, self.kb);
        let w = kb + 1;
        // l[j*w + d] = L[j+d][j]
        let mut l = self.band.clone();
        for j in 0..n {
            let mut diag = l[j * w];
            for p in j.saturating_sub(kb)..j {
                let v = l[p * w + (j - p)];
                diag -= v * v;
            }
            if diag.is_nan() || diag <= 0.0 {
                return None;
            }
            let dj = diag.sqrt();
            l[j * w] = dj;
            for i in j + 1..(j + w).min(n) {
                let mut s = l[j * w + (i - j)];
                for p in i.saturating_sub(kb)..j {
                    s -= l[p * w + (i - p)] * l[p * w + (j - p)];
                }
                l[j * w + (i - j)] = s / dj;
            }
        }
        Some(l)
    }

    /// Solve A x = b with the factor from [`Banded::cholesky`].
    pub fn substitute(&self, l: &[f64], b: &[f64]) -> Vec<f64> {
        let (n, kb) = (self.n, self.kb);
        let w = kb + 1;
        let mut z = b.to_vec();
        for i in 0..n {
            let mut s = z[i];
            for p in i.saturating_sub(kb)..i {
                s -= l[p * w + (i - p)] * z[p];
            }
            z[i] = s / l[i * w];
        }
        for i in (0..n).rev() {
            let mut s = z[i];
            for q in i + 1..(i + w).min(n) {
                s -= l[i * w + (q - i)] * z[q];
            }
            z[i] = s / l[i * w];
        }
        z
    }
}

/// HᵀWH and HᵀWy.
pub fn normal_equations(op: &Operator, y: &[f64], wt: &[f64]) -> (Banded, Vec<f64>) {
    let kb = op.k.max(3) - 1;
    let mut a = Banded::zeros(op.n, kb);
    let mut b = vec![0.0; op.n];
    for i in 0..op.m {
        let (s, len) = (op.start[i], op.len[i]);
        let row = &op.w[i * op.k..i * op.k + len];
        for t in 0..len {
            b[s + t] += wt[i] * row[t] * y[i];
            for u in 0..=t {
                a.add(s + t, s + u, wt[i] * row[t] * row[u]);
            }
        }
    }
    (a, b)
}

/// Add λ·D2ᵀD2 (D2 rows [1, −2, 1]) to `a`.
pub fn add_second_difference(a: &mut Banded, lambda: f64) {
    let c = [1.0, -2.0, 1.0];
    for r in 0..a.n.saturating_sub(2) {
        for t in 0..3 {
            for u in 0..=t {
                a.add(r + t, r + u, lambda * c[t] * c[u]);
            }
        }
    }
}

/// Effective number of parameters of the Tikhonov solution at `lambda` (scaled units): the trace
/// of its hat matrix, Σ_i w_i h_iᵀ (HᵀWH + λD2ᵀD2)⁻¹ h_i with w = 1/σ², the number of degrees of
/// freedom the smoothed solution spends on the data (so that E[χ²] ≈ M − p for a fit that
/// leaves only noise).
pub fn effective_parameters(op: &Operator, sigma_scaled: &[f64], lambda: f64) -> Option<f64> {
    let wt: Vec<f64> = sigma_scaled.iter().map(|s| 1.0 / (s * s)).collect();
    let zeros = vec![0.0; op.m];
    let (mut a, _) = normal_equations(op, &zeros, &wt);
    add_second_difference(&mut a, lambda);
    let tr = (0..a.n).map(|j| a.get(j, j)).sum::<f64>() / a.n as f64;
    for j in 0..a.n {
        a.band[j * (a.kb + 1)] += 1e-12 * tr;
    }
    let l = a.cholesky()?;
    let mut p = 0.0;
    let mut e = vec![0.0; op.n];
    for (i, &wi) in wt.iter().enumerate() {
        let (s, len) = (op.start[i], op.len[i]);
        let row = &op.w[i * op.k..i * op.k + len];
        e.iter_mut().for_each(|v| *v = 0.0);
        e[s..s + len].copy_from_slice(row);
        let z = a.substitute(&l, &e);
        p += wi
            * row
                .iter()
                .zip(&z[s..s + len])
                .map(|(h, z)| h * z)
                .sum::<f64>();
    }
    Some(p)
}

fn solve_at(a0: &Banded, b: &[f64], lambda: f64, fixed: &[bool]) -> Option<Vec<f64>> {
    let mut a = a0.clone();
    add_second_difference(&mut a, lambda);
    // A whisper of ridge keeps the system definite when data constrain nothing locally.
    let tr = (0..a.n).map(|j| a.get(j, j)).sum::<f64>() / a.n as f64;
    for j in 0..a.n {
        a.band[j * (a.kb + 1)] += 1e-12 * tr;
    }
    let mut rhs = b.to_vec();
    for j in (0..a.n).filter(|&j| fixed[j]) {
        for d in 0..=a.kb {
            if j + d < a.n {
                a.band[j * (a.kb + 1) + d] = 0.0;
            }
            if d > 0 && j >= d {
                a.band[(j - d) * (a.kb + 1) + d] = 0.0;
            }
        }
        a.band[j * (a.kb + 1)] = 1.0;
        rhs[j] = 0.0;
    }
    a.solve(&rhs)
}

/// Non-negative solution by active-set iterations: clamp negative pixels to zero and re-solve,
/// releasing fixed pixels whose gradient points inward, until neither changes.
fn solve_nonneg(a0: &Banded, b: &[f64], lambda: f64) -> Option<Vec<f64>> {
    let n = a0.n;
    let mut fixed = vec![false; n];
    let mut full = a0.clone();
    add_second_difference(&mut full, lambda);
    let mut x = solve_at(a0, b, lambda, &fixed)?;
    for _ in 0..200 {
        let mut changed = false;
        for j in 0..n {
            if !fixed[j] && x[j] < 0.0 {
                fixed[j] = true;
                changed = true;
            }
        }
        if !changed {
            // KKT: a fixed pixel may leave the bound if the objective decreases as it grows.
            let g = full.matvec(&x);
            for j in 0..n {
                if fixed[j] && g[j] - b[j] < -1e-9 * b[j].abs().max(1.0) {
                    fixed[j] = false;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
        x = solve_at(a0, b, lambda, &fixed)?;
        for j in 0..n {
            if fixed[j] {
                x[j] = 0.0;
            }
        }
    }
    Some(x)
}

#[derive(Clone, Debug, Serialize)]
pub struct TikhonovResult {
    /// Spectrum on the grid, µJy.
    #[serde(skip)]
    pub spectrum: Vec<f64>,
    /// λ in scaled units (fluxes divided by `scale`).
    pub lambda: f64,
    pub chi2_per_obs: f64,
    pub solves: usize,
    pub seconds: f64,
    pub scale: f64,
    /// λ was chosen automatically but sits at the top of its search range (`LAMBDA_MAX`): even
    /// the smoothest spectrum fits the data below the target χ²/M.
    pub lambda_at_cap: bool,
    /// λ sits at the bottom of its range (`LAMBDA_MIN`): no λ reaches the target χ²/M.
    pub lambda_at_floor: bool,
}

/// Why the Tikhonov solve failed (the normal equations lost positive definiteness, e.g. to
/// fluxes or errors so extreme that their squares overflow).
pub const FAILED: &str = "Tikhonov normal equations are not positive definite: \
    check flux and flux_error for extreme values, or raise dip.tikhonov.lambda";

/// Search range of the automatic λ (scaled units).
pub const LAMBDA_MIN: f64 = 1e-8;
pub const LAMBDA_MAX: f64 = 1e8;

/// Solve the baseline for observations `y ± sigma` (µJy).
pub fn solve(
    op: &Operator,
    y: &[f64],
    sigma: &[f64],
    cfg: &TikhonovConfig,
    weighting: Weighting,
    eps: f64,
) -> Option<TikhonovResult> {
    let t0 = Instant::now();
    let scale = flux_scale(y);
    let ys: Vec<f64> = y.iter().map(|v| v / scale).collect();
    let ss: Vec<f64> = sigma.iter().map(|v| v / scale).collect();
    let wt = super::train::obs_weights(&ss, weighting, eps);
    let (a0, b) = normal_equations(op, &ys, &wt);
    let m = op.m as f64;
    let mut solves = 0;
    let mut eval = |lam: f64| -> Option<(Vec<f64>, f64)> {
        solves += 1;
        let x = solve_at(&a0, &b, lam, &vec![false; op.n])?;
        let c = chi2(op, &x, &ys, &ss) / m;
        Some((x, c))
    };
    let (mut at_cap, mut at_floor) = (false, false);
    let lambda = if cfg.lambda > 0.0 {
        cfg.lambda
    } else {
        let (mut lo, mut hi) = (LAMBDA_MIN.log10(), LAMBDA_MAX.log10());
        let c_lo = eval(LAMBDA_MIN)?.1;
        let c_hi = eval(LAMBDA_MAX)?.1;
        if c_lo >= cfg.target_chi2 {
            at_floor = true;
            LAMBDA_MIN
        } else if c_hi <= cfg.target_chi2 {
            at_cap = true;
            LAMBDA_MAX
        } else {
            for _ in 0..40 {
                let mid = 0.5 * (lo + hi);
                if eval(10f64.powf(mid))?.1 > cfg.target_chi2 {
                    hi = mid;
                } else {
                    lo = mid;
                }
                if hi - lo < 1e-3 {
                    break;
                }
            }
            10f64.powf(0.5 * (lo + hi))
        }
    };
    let x = if cfg.nonnegative {
        solves += 1;
        solve_nonneg(&a0, &b, lambda)?
    } else {
        eval(lambda)?.0
    };
    let chi2_per_obs = chi2(op, &x, &ys, &ss) / m;
    Some(TikhonovResult {
        spectrum: x.iter().map(|v| v * scale).collect(),
        lambda,
        chi2_per_obs,
        solves,
        seconds: t0.elapsed().as_secs_f64(),
        scale,
        lambda_at_cap: at_cap,
        lambda_at_floor: at_floor,
    })
}
