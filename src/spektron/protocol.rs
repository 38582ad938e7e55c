//! The seeded protocol the model arms share with the classical rows (`baselines::evaluate`):
//! repetition s tests on the first `n_test` rows of `RandomState(s).permutation(n)` and
//! transfers with the first N rows of `RandomState(1000+s).permutation(n_cal)` of the
//! calibration set; plus the input centring, slope/bias and per-run seeds the arms use.

use super::baselines::splits;

/// One repetition's rows: test, calibration, and the transfer order (indices into `cal`).
#[derive(Clone, Debug)]
pub struct Split {
    pub test: Vec<usize>,
    pub cal: Vec<usize>,
    pub tperm: Vec<usize>,
}

impl Split {
    pub fn new(s: usize, n: usize, n_test: usize) -> Split {
        let perm = splits::permutation(s as u32, n);
        let (test, cal) = perm.split_at(n_test.min(n));
        Split {
            test: test.to_vec(),
            cal: cal.to_vec(),
            tperm: splits::permutation(1000 + s as u32, cal.len()),
        }
    }

    /// The first `k` transfer rows (indices into the data).
    pub fn transfer(&self, k: usize) -> Vec<usize> {
        self.tperm[..k].iter().map(|&i| self.cal[i]).collect()
    }
}

/// Row-major `p`-column spectra as an f64 matrix (for PLS).
pub fn to_array(x: &[f32], p: usize) -> ndarray::Array2<f64> {
    let n = x.len() / p.max(1);
    ndarray::Array2::from_shape_fn((n, p), |(i, j)| f64::from(x[i * p + j]))
}

pub fn take(x: &[f32], rows: &[usize], p: usize) -> Vec<f32> {
    rows.iter()
        .flat_map(|&r| x[r * p..(r + 1) * p].iter().copied())
        .collect()
}

/// Centring of a calibration set, as PLS centres X: the mean spectrum and one RMS scale of the
/// centred rows (the sample-to-sample differences that carry the property are ~1 % of an SNV
/// spectrum; uncentred they are a small perturbation of one shared input).
#[derive(Clone, Debug)]
pub struct Centring {
    mean: Vec<f32>,
    scale: f32,
}

impl Centring {
    pub fn fit(x: &[f32], p: usize) -> Self {
        let n = (x.len() / p).max(1);
        let mut mean = vec![0.0f64; p];
        for row in x.chunks(p) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v) / n as f64;
            }
        }
        let ss: f64 = x
            .chunks(p)
            .flat_map(|row| {
                row.iter()
                    .zip(&mean)
                    .map(|(&v, m)| (f64::from(v) - m).powi(2))
            })
            .sum();
        let rms = (ss / x.len().max(1) as f64).sqrt();
        Centring {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            scale: if rms > 0.0 { rms as f32 } else { 1.0 },
        }
    }

    pub fn identity(p: usize) -> Self {
        Centring {
            mean: vec![0.0; p],
            scale: 1.0,
        }
    }

    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        x.chunks(self.mean.len())
            .flat_map(|row| {
                row.iter()
                    .zip(&self.mean)
                    .map(|(v, m)| (v - m) / self.scale)
            })
            .collect()
    }
}

/// Least-squares `y ≈ a + b·x`; a constant `x` gives the mean offset (b = 1).
pub fn slope_bias(x: &[f64], y: &[f64]) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxx: f64 = x.iter().map(|v| (v - mx).powi(2)).sum();
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let b = if sxx > 1e-12 * n { sxy / sxx } else { 1.0 };
    (my - b * mx, b)
}

/// Seed for one (repetition, arm, N) training run: burn's dropout draws from the global RNG,
/// so every training call reseeds it.
pub fn sub_seed(seed: u64, rep: usize, arm: u64, n: usize) -> u64 {
    seed ^ (((rep as u64) << 40) | (arm << 32) | n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// (RMSEP, R²) of every repetition per (row name, N), rows in first-seen order.
#[derive(Clone, Debug, Default)]
pub struct Acc(pub Vec<Row>);

/// One row of an [`Acc`]: name, N, per-repetition (RMSEP, R²).
pub type Row = (&'static str, usize, Vec<(f64, f64)>);

impl Acc {
    pub fn push(&mut self, m: &'static str, k: usize, e: (f64, f64)) {
        match self.0.iter_mut().find(|(mm, kk, _)| *mm == m && *kk == k) {
            Some(c) => c.2.push(e),
            None => self.0.push((m, k, vec![e])),
        }
    }
}
