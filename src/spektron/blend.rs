//! Blends of PLS + slope/bias correction with a supervised network master + slope/bias
//! correction (issue #17, `spektron.experiment.blend`).
//!
//! Both members are calibrated on the labelled source spectra and each is slope/bias-corrected
//! on the N labelled target spectra; the blend is `base + u · (net − base)`, u ∈ [0, `max`] the
//! share of the network chosen out-of-fold ([`network_share`]): on the source calibration set
//! (k-fold, both members refitted without each held-out fold) or on the N transfer samples
//! (leave-one-out, both slope/bias corrections refitted without the held-out sample). u = 0 is
//! exactly the base (PLS + SBC).

use super::anchored::gate_factor;
use super::protocol::slope_bias;

/// The network's share u ∈ [0, `max`] that minimises Σ (a − u (a − b))² over out-of-fold
/// residuals `a` of the base and `b` of the network (i.e. the residual of the blend
/// `base + u (net − base)`); 0 when the two members' residuals do not differ.
pub fn network_share(base_resid: &[f64], net_resid: &[f64], max: f64) -> f64 {
    let d: Vec<f64> = base_resid
        .iter()
        .zip(net_resid)
        .map(|(a, b)| a - b)
        .collect();
    gate_factor(base_resid, &d, max)
}

/// `base + u · (net − base)` element-wise (u = 0 returns `base` bit for bit).
pub fn mix(base: &[f64], net: &[f64], u: f64) -> Vec<f64> {
    if u == 0.0 {
        return base.to_vec();
    }
    base.iter().zip(net).map(|(b, n)| b + u * (n - b)).collect()
}

/// Slope/bias correction `y ≈ a + b·fit` fitted on (`fit`, `y`) and applied to `pred`.
pub fn sbc(fit: &[f64], y: &[f64], pred: &[f64]) -> Vec<f64> {
    let (a, b) = slope_bias(fit, y);
    pred.iter().map(|&v| a + b * v).collect()
}

/// Leave-one-out residuals `y_i − (a₋ᵢ + b₋ᵢ · fit_i)` of a slope/bias correction, the
/// correction refitted without sample i (n ≥ 3).
pub fn loo_sbc_residuals(fit: &[f64], y: &[f64]) -> Vec<f64> {
    (0..y.len())
        .map(|i| {
            let f: Vec<f64> = (0..fit.len()).filter(|&j| j != i).map(|j| fit[j]).collect();
            let t: Vec<f64> = (0..y.len()).filter(|&j| j != i).map(|j| y[j]).collect();
            let (a, b) = slope_bias(&f, &t);
            y[i] - (a + b * fit[i])
        })
        .collect()
}
