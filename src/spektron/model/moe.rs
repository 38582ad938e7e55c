//! Mixture-of-experts feed-forward layer (top-k of E experts, pre-norm residual) with the
//! Switch-Transformer balance loss E·Σₑ fₑ·Pₑ (fₑ: share of the N·k routing assignments sent
//! to expert e, Pₑ: mean router probability of e; 1 for perfectly uniform routing).
//! Every expert is evaluated densely and weighted by its gate (zero outside the top k): the
//! same output as sparse dispatch, simpler on small token counts.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Int, Tensor};

#[derive(Module, Debug)]
pub struct Moe {
    pub norm: LayerNorm,
    pub router: Linear,
    pub up: Vec<Linear>,
    pub down: Vec<Linear>,
    pub top_k: usize,
}

/// Router decision for N tokens.
#[derive(Clone, Debug)]
pub struct Routing {
    /// Softmax probabilities `[N, E]`.
    pub probs: Tensor<2>,
    /// Selected experts `[N, k]` (descending probability).
    pub experts: Tensor<2, Int>,
    /// Gate weights `[N, E]`: top-k probabilities renormalised to sum 1, zero elsewhere.
    pub gates: Tensor<2>,
    /// Balance loss (scalar).
    pub balance: Tensor<1>,
}

/// Top-k routing of router logits `[N, E]`.
pub fn route(logits: Tensor<2>, k: usize) -> Routing {
    let [n, e] = logits.dims();
    let probs = softmax(logits, 1);
    let (_, experts) = probs.clone().topk_with_indices(k, 1);
    let mask = experts
        .clone()
        .one_hot::<3>(e)
        .float()
        .sum_dim(1)
        .reshape([n, e]);
    let sel = probs.clone() * mask.clone();
    let gates = sel.clone() / sel.sum_dim(1);
    let f = mask.sum_dim(0) / (n * k) as f64; // [1, E], piecewise constant: no gradient path
    let p = probs.clone().mean_dim(0);
    let balance = (f * p).sum() * e as f64;
    Routing {
        probs,
        experts,
        gates,
        balance,
    }
}

impl Moe {
    pub fn new(
        d_model: usize,
        experts: usize,
        top_k: usize,
        d_expert: usize,
        device: &Device,
    ) -> Self {
        Moe {
            norm: LayerNormConfig::new(d_model).init(device),
            router: LinearConfig::new(d_model, experts)
                .with_bias(false)
                .init(device),
            up: (0..experts)
                .map(|_| LinearConfig::new(d_model, d_expert).init(device))
                .collect(),
            down: (0..experts)
                .map(|_| LinearConfig::new(d_expert, d_model).init(device))
                .collect(),
            top_k,
        }
    }

    /// `[B, L, d]` → (`[B, L, d]`, balance loss).
    pub fn forward(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<1>) {
        let [b, l, d] = x.dims();
        let h = self.norm.forward(x.clone()).reshape([b * l, d]);
        let r = route(self.router.forward(h.clone()), self.top_k);
        let mut y = Tensor::<2>::zeros([b * l, d], &h.device());
        for (i, (up, down)) in self.up.iter().zip(&self.down).enumerate() {
            let g = r.gates.clone().narrow(1, i, 1);
            y = y + down.forward(gelu(up.forward(h.clone()))) * g;
        }
        (x + y.reshape([b, l, d]), r.balance)
    }
}
