//! Daubechies-4 discrete wavelet transform with PyWavelets' "symmetric" boundary mode
//! (half-sample symmetric extension), so lengths and values match `pywt.wavedec(x, "db4",
//! mode="symmetric", level=4)`: 2048 points → cA4 134, cD4 134, cD3 262, cD2 517, cD1 1027.

/// db4 decomposition low-pass filter (pywt `Wavelet("db4").dec_lo`).
pub const DB4_DEC_LO: [f64; 8] = [
    -0.010597401784997278,
    0.032883011666982945,
    0.030841381835986965,
    -0.18703481171888114,
    -0.02798376941698385,
    0.6308807679295904,
    0.7148465705525415,
    0.23037781330885523,
];

/// High-pass decomposition filter: quadrature mirror of the low-pass one.
pub fn db4_dec_hi() -> [f64; 8] {
    let f = DB4_DEC_LO.len();
    std::array::from_fn(|j| {
        let s = if j % 2 == 0 { -1.0 } else { 1.0 };
        s * DB4_DEC_LO[f - 1 - j]
    })
}

/// Symmetric (half-sample) extension index, pywt mode "symmetric": x[-1] = x[0], x[n] = x[n-1].
fn sym_index(i: isize, n: usize) -> usize {
    let n = n as isize;
    let period = 2 * n;
    let mut k = i.rem_euclid(period);
    if k >= n {
        k = period - 1 - k;
    }
    k as usize
}

/// Length of one DWT level's output for an input of `n` points and a filter of length `f`.
pub fn dwt_len(n: usize, f: usize) -> usize {
    (n + f - 1) / 2
}

/// One analysis level: `(approximation, detail)`; c[k] = Σ_j h[j]·x̃[2k+1−j].
pub fn dwt(x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let lo = DB4_DEC_LO;
    let hi = db4_dec_hi();
    let n = x.len();
    let m = dwt_len(n, lo.len());
    let mut a = vec![0.0; m];
    let mut d = vec![0.0; m];
    for k in 0..m {
        let (mut sa, mut sd) = (0.0, 0.0);
        for j in 0..lo.len() {
            let v = x[sym_index(2 * k as isize + 1 - j as isize, n)];
            sa += lo[j] * v;
            sd += hi[j] * v;
        }
        a[k] = sa;
        d[k] = sd;
    }
    (a, d)
}

/// One synthesis level (pywt `idwt`, valid part): returns 2·m − f + 2 points.
/// x[n] = Σ_k a[k]·h[2k+1−n] + d[k]·g[2k+1−n] (the db4 filters are orthogonal).
pub fn idwt(a: &[f64], d: &[f64]) -> Vec<f64> {
    let lo = DB4_DEC_LO;
    let hi = db4_dec_hi();
    let f = lo.len();
    let m = a.len();
    let len = 2 * m + 2 - f;
    let mut x = vec![0.0; len];
    for (n, xn) in x.iter_mut().enumerate() {
        let mut s = 0.0;
        // Only k with 0 ≤ 2k+1−n ≤ f−1 contribute.
        let kmin = n.saturating_sub(1).div_ceil(2);
        let kmax = ((n + f - 2) / 2).min(m - 1);
        for k in kmin..=kmax {
            let j = 2 * k + 1 - n;
            s += a[k] * lo[j] + d[k] * hi[j];
        }
        *xn = s;
    }
    x
}

/// Coefficient lengths `[cA_L, cD_L, …, cD_1]` of an `level`-level decomposition of `n` points.
pub fn wavedec_lengths(n: usize, level: usize) -> Vec<usize> {
    let f = DB4_DEC_LO.len();
    let mut lens = Vec::with_capacity(level + 1);
    let mut cur = n;
    let mut details = Vec::with_capacity(level);
    for _ in 0..level {
        cur = dwt_len(cur, f);
        details.push(cur);
    }
    lens.push(cur);
    lens.extend(details.iter().rev());
    lens
}

/// Multi-level decomposition, coefficients in pywt order `[cA_L, cD_L, …, cD_1]`.
pub fn wavedec(x: &[f64], level: usize) -> Vec<Vec<f64>> {
    let mut details = Vec::with_capacity(level);
    let mut a = x.to_vec();
    for _ in 0..level {
        let (na, d) = dwt(&a);
        details.push(d);
        a = na;
    }
    let mut out = vec![a];
    out.extend(details.into_iter().rev());
    out
}

/// Inverse of [`wavedec`]; like pywt `waverec`, an approximation one longer than the next detail
/// is trimmed, and the result is cut to `n` points.
pub fn waverec(coeffs: &[Vec<f64>], n: usize) -> Vec<f64> {
    let mut a = coeffs[0].clone();
    for d in &coeffs[1..] {
        if a.len() == d.len() + 1 {
            a.pop();
        }
        a = idwt(&a, d);
    }
    a.truncate(n);
    a
}
