//! Ricker (Mexican-hat) wavelets for the CWT regulariser, and reflect padding.

use std::f64::consts::PI;

/// The plan's Ricker kernel at scale `s` pixels: r = ⌊4s⌋, K = 2r+1 taps at
/// t = linspace(−4s, 4s, K), A = 2/(√(3s)·π^¼), k = A(1 − (t/s)²)·e^{−(t/s)²/2}, then the mean
/// is subtracted so the kernel has zero response to a constant.
pub fn ricker(s: f64) -> Vec<f64> {
    let r = (4.0 * s).floor() as usize;
    let k = 2 * r + 1;
    let a = 2.0 / ((3.0 * s).sqrt() * PI.powf(0.25));
    let t: Vec<f64> = if k == 1 {
        vec![0.0]
    } else {
        (0..k)
            .map(|i| -4.0 * s + 8.0 * s * i as f64 / (k - 1) as f64)
            .collect()
    };
    let mut v: Vec<f64> = t
        .iter()
        .map(|&t| {
            let u = (t / s).powi(2);
            a * (1.0 - u) * (-0.5 * u).exp()
        })
        .collect();
    let mean = v.iter().sum::<f64>() / k as f64;
    v.iter_mut().for_each(|x| *x -= mean);
    v
}

/// All scales as one bank of equal-length kernels (shorter ones centred and zero-padded), so a
/// single convolution with reflect padding `pad` = max r computes every scale; the zero taps
/// make this identical to padding each scale by its own r.
pub fn ricker_bank(scales: &[f64]) -> (Vec<f64>, usize, usize) {
    let kernels: Vec<Vec<f64>> = scales.iter().map(|&s| ricker(s)).collect();
    let kmax = kernels.iter().map(Vec::len).max().unwrap_or(1);
    let mut bank = vec![0.0; kernels.len() * kmax];
    for (c, k) in kernels.iter().enumerate() {
        let off = (kmax - k.len()) / 2;
        bank[c * kmax + off..c * kmax + off + k.len()].copy_from_slice(k);
    }
    (bank, kmax, kmax / 2)
}

/// PyTorch `mode="reflect"` padding: mirror about the edge sample, excluding it
/// (`[1,2,3,4]` padded by 2 → `[3,2,1,2,3,4,3,2]`).
pub fn reflect_pad(x: &[f64], pad: usize) -> Vec<f64> {
    let n = x.len();
    assert!(
        pad < n,
        "reflect padding {pad} needs more than {pad} samples"
    );
    let mut out = Vec::with_capacity(n + 2 * pad);
    out.extend((1..=pad).rev().map(|i| x[i]));
    out.extend_from_slice(x);
    out.extend((1..=pad).map(|i| x[n - 1 - i]));
    out
}

/// "Same" cross-correlation (PyTorch conv1d) of `x` with `k` after reflect padding.
pub fn cwt_host(x: &[f64], k: &[f64]) -> Vec<f64> {
    let r = k.len() / 2;
    let p = reflect_pad(x, r);
    (0..x.len())
        .map(|i| k.iter().enumerate().map(|(t, &kt)| kt * p[i + t]).sum())
        .collect()
}
