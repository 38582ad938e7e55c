//! The observation operator: each measurement is the Δν-weighted mean of the spectrum over the
//! grid pixels inside its boxcar `[c − bw/2, c + bw/2]`.
//!
//! Stored as gathered (index, weight) rows padded to the widest filter: `ŷ_i = Σ_k w_ik
//! x[idx_ik]` is a gather plus a row sum on the device, with no dense or sparse matrix. Padding
//! entries carry weight 0.

/// Gathered rows of H for `m` observations on an `n`-pixel grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Operator {
    pub m: usize,
    pub n: usize,
    /// Row width (the widest filter, in pixels).
    pub k: usize,
    /// First covered pixel and number of covered pixels of each row.
    pub start: Vec<usize>,
    pub len: Vec<usize>,
    /// `m·k` pixel indices (row-major; padding repeats the row's first pixel).
    pub idx: Vec<usize>,
    /// `m·k` weights, each row summing to 1 (padding 0).
    pub w: Vec<f64>,
}

/// Pixels of a uniform grid inside `[c − bw/2, c + bw/2]` (inclusive, with a tolerance of 1e-9
/// pixel so that edges landing exactly on a pixel centre count).
pub fn covered(grid: &[f64], center: f64, bandwidth: f64) -> (usize, usize) {
    let n = grid.len();
    let (g0, dx) = (grid[0], grid[1] - grid[0]);
    let lo = ((center - 0.5 * bandwidth - g0) / dx - 1e-9).ceil();
    let hi = ((center + 0.5 * bandwidth - g0) / dx + 1e-9).floor();
    let lo = lo.max(0.0);
    let hi = hi.min((n - 1) as f64);
    if hi < lo {
        return (0, 0);
    }
    (lo as usize, (hi - lo) as usize + 1)
}

impl Operator {
    /// Build rows for observations (`centers`, `bandwidths`, µm). Returns the operator and the
    /// indices of the observations kept (those covering at least one pixel).
    pub fn build(grid: &[f64], centers: &[f64], bandwidths: &[f64]) -> (Operator, Vec<usize>) {
        let n = grid.len();
        let mut rows = Vec::new();
        let mut kept = Vec::new();
        for (i, (&c, &bw)) in centers.iter().zip(bandwidths).enumerate() {
            let (s, l) = covered(grid, c, bw);
            if l == 0 {
                continue;
            }
            // Flux densities are per unit frequency: a boxcar in λ weights pixel j by its
            // frequency width Δν_j ∝ Δλ/λ_j² on a uniform λ grid.
            let raw: Vec<f64> = (s..s + l).map(|j| 1.0 / (grid[j] * grid[j])).collect();
            let tot: f64 = raw.iter().sum();
            rows.push((s, l, raw.into_iter().map(|v| v / tot).collect::<Vec<_>>()));
            kept.push(i);
        }
        let m = rows.len();
        let k = rows.iter().map(|r| r.1).max().unwrap_or(1);
        let mut idx = vec![0usize; m * k];
        let mut w = vec![0f64; m * k];
        let (mut start, mut len) = (Vec::with_capacity(m), Vec::with_capacity(m));
        for (i, (s, l, ws)) in rows.into_iter().enumerate() {
            for t in 0..k {
                idx[i * k + t] = if t < l { s + t } else { s };
                if t < l {
                    w[i * k + t] = ws[t];
                }
            }
            start.push(s);
            len.push(l);
        }
        (
            Operator {
                m,
                n,
                k,
                start,
                len,
                idx,
                w,
            },
            kept,
        )
    }

    /// The operator of the observations `rows` (indices into this one's), in that order.
    pub fn rows(&self, rows: &[usize]) -> Operator {
        let k = self.k;
        Operator {
            m: rows.len(),
            n: self.n,
            k,
            start: rows.iter().map(|&i| self.start[i]).collect(),
            len: rows.iter().map(|&i| self.len[i]).collect(),
            idx: rows
                .iter()
                .flat_map(|&i| self.idx[i * k..(i + 1) * k].iter().copied())
                .collect(),
            w: rows
                .iter()
                .flat_map(|&i| self.w[i * k..(i + 1) * k].iter().copied())
                .collect(),
        }
    }

    /// ŷ = H x.
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        (0..self.m)
            .map(|i| {
                (0..self.k)
                    .map(|t| self.w[i * self.k + t] * x[self.idx[i * self.k + t]])
                    .sum()
            })
            .collect()
    }

    /// Hᵀ r.
    pub fn adjoint(&self, r: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.n];
        for i in 0..self.m {
            for t in 0..self.k {
                out[self.idx[i * self.k + t]] += self.w[i * self.k + t] * r[i];
            }
        }
        out
    }
}

/// χ² = Σ((y − Hx)/σ)².
pub fn chi2(op: &Operator, x: &[f64], y: &[f64], sigma: &[f64]) -> f64 {
    op.apply(x)
        .iter()
        .zip(y.iter().zip(sigma))
        .map(|(p, (y, s))| ((y - p) / s).powi(2))
        .sum()
}
