//! PtychoPINN losses on scaled amplitudes (`s·X` observed, `Â·exp(log_scale)` predicted).

use burn::tensor::Tensor;

/// Floor on the predicted intensity inside the log (the reference requires `y_pred > 0`).
pub const NLL_EPS: f64 = 1e-12;

/// Poisson negative log-likelihood without the constant `ln(y!)` term
/// (`tf.nn.log_poisson_loss(..., compute_full_loss=False)`): mean of `λ − y·ln λ` with
/// `λ = pred²`, `y = obs²`.
pub fn poisson_nll<const D: usize>(pred_amp: Tensor<D>, obs_amp: Tensor<D>) -> Tensor<1> {
    let lambda = pred_amp.powi_scalar(2);
    let y = obs_amp.powi_scalar(2);
    (lambda.clone() - y * (lambda + NLL_EPS).log()).mean()
}

/// Mean absolute error of amplitudes.
pub fn mae<const D: usize>(pred_amp: Tensor<D>, obs_amp: Tensor<D>) -> Tensor<1> {
    (pred_amp - obs_amp).abs().mean()
}

/// `w_nll·NLL + w_mae·MAE` (terms with weight 0 are skipped).
pub fn combined<const D: usize>(
    pred_amp: Tensor<D>,
    obs_amp: Tensor<D>,
    nll_weight: f64,
    mae_weight: f64,
) -> Tensor<1> {
    let mut total: Option<Tensor<1>> = None;
    if nll_weight != 0.0 {
        total = Some(poisson_nll(pred_amp.clone(), obs_amp.clone()) * nll_weight);
    }
    if mae_weight != 0.0 {
        let m = mae(pred_amp.clone(), obs_amp.clone()) * mae_weight;
        total = Some(match total {
            Some(t) => t + m,
            None => m,
        });
    }
    total.unwrap_or_else(|| (pred_amp * 0.0).sum())
}
