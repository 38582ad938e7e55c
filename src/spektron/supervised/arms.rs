//! The supervised deep baselines on the experiments' seeded splits ([`crate::spektron::protocol`],
//! the splits of the classical rows). Per repetition and model (CNN, Transformer): a master trained
//! on the labelled source calibration spectra (inputs as the Spektron arms': resampled + SNV, and
//! with `centre` centred on the source calibration mean / RMS scale; targets standardised by the
//! source calibration mean and standard deviation, kept through the transfer), then for each N:
//! full fine-tuning on the N labelled target spectra (`cnn_transfer`, `transformer_transfer`) and
//! LoRA fine-tuning of the Transformer master (`lora_ct`). N = 0 rows: the master on target test
//! spectra (`*_no_transfer`) and on source test spectra (`*_master_on_master`).

use burn::tensor::Device;
use serde::Serialize;

use super::cnn::Cnn1d;
use super::transformer::{self, SpectrumTransformer, TransformerDims};
use super::{Fit, SupervisedConfig, fit, predict};
use crate::backend::seeded;
use crate::error::SpxError;
use crate::spektron::baselines::{Cell, r2, rmsep};
use crate::spektron::protocol::{Acc, Centring, Split, sub_seed, take};

/// Row names, in table order.
pub const ROWS: &[&str] = &[
    "cnn_master_on_master",
    "cnn_no_transfer",
    "cnn_transfer",
    "transformer_master_on_master",
    "transformer_no_transfer",
    "transformer_transfer",
    "lora_ct",
];

/// The protocol the rows follow.
#[derive(Clone, Copy, Debug)]
pub struct Protocol<'a> {
    pub cfg: &'a SupervisedConfig,
    pub n_test: usize,
    pub repeats: usize,
    /// First split index (repetitions first_repeat..first_repeat + repeats).
    pub first_repeat: usize,
    pub centre: bool,
    pub seed: u64,
}

/// What the rows were computed with.
#[derive(Clone, Debug, Serialize)]
pub struct SupervisedSummary {
    pub cnn_parameters: usize,
    pub transformer_parameters: usize,
    /// Trainable parameters of LoRA-CT (adapters + head).
    pub lora_ct_trainable: usize,
    /// Best epoch of each master, per repetition.
    pub cnn_master_epochs: Vec<usize>,
    pub transformer_master_epochs: Vec<usize>,
}

fn trainable<M: burn::module::Module>(m: &M) -> usize {
    struct C(usize);
    impl burn::module::ModuleVisitor for C {
        fn visit_float<const D: usize>(
            &mut self,
            p: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            if p.is_require_grad() {
                self.0 += p.shape().num_elements();
            }
        }
    }
    let mut c = C(0);
    m.visit(&mut c);
    c.0
}

/// The masters' source training (`[spektron.supervised]` epochs, lr, batch, weight decay,
/// early stopping).
pub fn source_fit(c: &SupervisedConfig) -> Fit {
    Fit {
        epochs: c.epochs,
        lr: c.lr,
        batch: c.batch,
        weight_decay: c.weight_decay,
        patience: c.patience,
        val_fraction: c.val_fraction,
    }
}

/// A CNN with random weights drawn after seeding the backend with `seed`.
fn new_cnn(c: &SupervisedConfig, p: usize, device: &Device, seed: u64) -> Result<Cnn1d, SpxError> {
    let _ = seeded(device, seed);
    Cnn1d::new(p, c.cnn_channels, c.cnn_kernel, c.cnn_stride, device)
}

/// The CNN master: random weights (seed `seed`) trained with [`source_fit`] on spectra `x`
/// (`p` points) and standardised targets `y`.
pub fn cnn_master(
    c: &SupervisedConfig,
    x: &[f32],
    y: &[f32],
    p: usize,
    device: &Device,
    seed: u64,
) -> Result<(Cnn1d, super::FitReport), SpxError> {
    fit(
        new_cnn(c, p, device, seed)?,
        x,
        y,
        p,
        &source_fit(c),
        device,
        seed,
    )
}

/// Mean and sample standard deviation (1 when zero) of the calibration property, by which the
/// masters' targets are standardised.
pub fn standardiser(y: &[f64]) -> (f64, f64) {
    let ym = y.iter().sum::<f64>() / y.len().max(1) as f64;
    let ysd =
        (y.iter().map(|v| (v - ym).powi(2)).sum::<f64>() / (y.len().max(2) - 1) as f64).sqrt();
    (ym, if ysd > 0.0 { ysd } else { 1.0 })
}

/// Every row for every repetition and N (`ns`, each in 2..=n_cal); `xs`/`xt` row-major
/// source/target spectra of `p` points, `y` the property.
#[allow(clippy::too_many_arguments)]
pub fn run_arms(
    xs: &[f32],
    xt: &[f32],
    y: &[f64],
    p: usize,
    ns: &[usize],
    pr: Protocol<'_>,
    device: &Device,
    mut on_progress: impl FnMut(&str),
) -> Result<(Vec<Cell>, SupervisedSummary), SpxError> {
    let c = pr.cfg;
    let n = y.len();
    if p == 0 || xs.len() != n * p || xt.len() != n * p {
        return Err(SpxError::field(
            "supervised",
            "data",
            format!(
                "{n} property values but {} / {} spectrum values",
                xs.len(),
                xt.len()
            ),
        ));
    }
    let n_cal = n.saturating_sub(pr.n_test);
    if n_cal < 3 {
        return Err(SpxError::field(
            "config",
            "spektron.baselines.n_test",
            format!("{} leaves no calibration set from {n} samples", pr.n_test),
        ));
    }
    if let Some(&bad) = ns.iter().find(|&&k| k < 2 || k > n_cal) {
        return Err(SpxError::field(
            "config",
            "spektron.experiment.n_transfer",
            format!("{bad} must be in 2..={n_cal}"),
        ));
    }
    let dims = TransformerDims {
        patch: c.tf_patch,
        d_model: c.tf_d_model,
        heads: c.tf_heads,
        layers: c.tf_layers,
        d_ff: c.tf_d_ff,
    };
    let source = source_fit(c);
    let transfer = Fit {
        epochs: c.transfer_epochs,
        lr: c.transfer_lr,
        ..source
    };
    let lora = Fit {
        lr: c.lora_lr,
        ..transfer
    };
    let new_cnn = |s: u64| new_cnn(c, p, device, s);
    let new_tf = |s: u64| {
        let _ = seeded(device, s);
        SpectrumTransformer::new(p, dims, device)
    };
    let mut summary = SupervisedSummary {
        cnn_parameters: burn::module::Module::num_params(&new_cnn(pr.seed)?),
        transformer_parameters: burn::module::Module::num_params(&new_tf(pr.seed)?),
        lora_ct_trainable: trainable(&transformer::with_lora(
            new_tf(pr.seed)?,
            c.lora_rank,
            c.lora_alpha,
        )?),
        cnn_master_epochs: Vec::new(),
        transformer_master_epochs: Vec::new(),
    };
    let mut acc = Acc::default();
    let mut push = |m: &'static str, k: usize, e: (f64, f64)| acc.push(m, k, e);
    for s in pr.first_repeat..pr.first_repeat + pr.repeats {
        let sp = Split::new(s, n, pr.n_test);
        let cm = if pr.centre {
            Centring::fit(&take(xs, &sp.cal, p), p)
        } else {
            Centring::identity(p)
        };
        let ycal: Vec<f64> = sp.cal.iter().map(|&r| y[r]).collect();
        let (ym, ysd) = standardiser(&ycal);
        let std_y = |rows: &[usize]| -> Vec<f32> {
            rows.iter().map(|&r| ((y[r] - ym) / ysd) as f32).collect()
        };
        let score = |rows: &[usize], pred: &[f32]| -> (f64, f64) {
            let yt = ndarray::Array1::from(rows.iter().map(|&r| y[r]).collect::<Vec<_>>());
            let yh = ndarray::Array1::from(
                pred.iter()
                    .map(|&v| f64::from(v) * ysd + ym)
                    .collect::<Vec<_>>(),
            );
            (rmsep(yt.view(), yh.view()), r2(yt.view(), yh.view()))
        };
        let xc = cm.apply(&take(xs, &sp.cal, p));
        let xs_test = cm.apply(&take(xs, &sp.test, p));
        let xt_test = cm.apply(&take(xt, &sp.test, p));
        let yc = std_y(&sp.cal);
        let transfers: Vec<(usize, Vec<f32>, Vec<f32>)> = ns
            .iter()
            .map(|&k| {
                let tr = sp.transfer(k);
                (k, cm.apply(&take(xt, &tr, p)), std_y(&tr))
            })
            .collect();

        on_progress(&format!("repetition {}: CNN", s + 1));
        let ms = sub_seed(pr.seed, s, 11, 0);
        let (cnn, rep) = cnn_master(c, &xc, &yc, p, device, ms)?;
        summary.cnn_master_epochs.push(rep.best_epoch);
        push(
            "cnn_master_on_master",
            0,
            score(&sp.test, &predict(&cnn, &xs_test, p, device)),
        );
        push(
            "cnn_no_transfer",
            0,
            score(&sp.test, &predict(&cnn, &xt_test, p, device)),
        );
        for (k, xtr, ytr) in &transfers {
            let ts = sub_seed(pr.seed, s, 12, *k);
            let (m, _) = fit(cnn.clone(), xtr, ytr, p, &transfer, device, ts)?;
            push(
                "cnn_transfer",
                *k,
                score(&sp.test, &predict(&m, &xt_test, p, device)),
            );
        }

        on_progress(&format!("repetition {}: Transformer", s + 1));
        let ms = sub_seed(pr.seed, s, 13, 0);
        let (tf, rep) = fit(new_tf(ms)?, &xc, &yc, p, &source, device, ms)?;
        summary.transformer_master_epochs.push(rep.best_epoch);
        push(
            "transformer_master_on_master",
            0,
            score(&sp.test, &predict(&tf, &xs_test, p, device)),
        );
        push(
            "transformer_no_transfer",
            0,
            score(&sp.test, &predict(&tf, &xt_test, p, device)),
        );
        for (k, xtr, ytr) in &transfers {
            let ts = sub_seed(pr.seed, s, 14, *k);
            let (m, _) = fit(tf.clone(), xtr, ytr, p, &transfer, device, ts)?;
            push(
                "transformer_transfer",
                *k,
                score(&sp.test, &predict(&m, &xt_test, p, device)),
            );
            on_progress(&format!("repetition {}: LoRA-CT N={k}", s + 1));
            let ls = sub_seed(pr.seed, s, 15, *k);
            let adapted = transformer::with_lora(tf.clone(), c.lora_rank, c.lora_alpha)?;
            let (m, _) = fit(adapted, xtr, ytr, p, &lora, device, ls)?;
            push(
                "lora_ct",
                *k,
                score(&sp.test, &predict(&m, &xt_test, p, device)),
            );
        }
    }
    let cells = ROWS
        .iter()
        .flat_map(|r| acc.0.iter().filter(move |(m, _, _)| m == r))
        .map(|(m, k, v)| Cell::aggregate(m, *k, v))
        .collect();
    Ok((cells, summary))
}
