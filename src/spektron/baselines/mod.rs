//! Classical calibration-transfer baselines and the seeded evaluation protocol of the research
//! note (§2.3): master PLS1 on the source calibration set (LVs by k-fold CV), then each method
//! adapts it to the target instrument with N transfer samples; RMSEP/R² on target test spectra.

pub mod dipls;
pub mod linalg;
pub mod pls;
pub mod splits;
pub mod transfer;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use self::linalg::{col_mean, rows};
use self::pls::{Pls, PlsAlgorithm};
use crate::error::SpxError;

/// `[spektron.baselines]`: the seeded evaluation protocol and the classical methods' knobs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BaselinesConfig {
    pub n_transfer: Vec<usize>,
    pub repeats: usize,
    /// First seeded split: repetitions s = first_repeat..first_repeat + repeats (fresh splits
    /// without rerunning the earlier ones).
    #[serde(default)]
    pub first_repeat: usize,
    pub n_test: usize,
    pub cv_folds: usize,
    pub max_lv: usize,
    pub pls_algorithm: PlsAlgorithm,
    pub pds_half_window: usize,
    pub pds_variance: f64,
    pub cca_max_components: usize,
    pub dipls_heuristic: bool,
    pub dipls_lambda: f64,
}

/// Paired two-instrument data with one property.
#[derive(Clone, Debug)]
pub struct TransferData {
    /// Source (master) spectra, samples × channels.
    pub source: Array2<f64>,
    /// Target (slave) spectra of the same samples.
    pub target: Array2<f64>,
    pub y: Array1<f64>,
}

/// Method names, in table order. N = 0 rows use the first four.
pub const METHODS: &[&str] = &[
    "no_transfer",
    "recentre_test",
    "target_all",
    "master_on_master",
    "target_only",
    "sbc",
    "ds",
    "pds",
    "cca",
    "recentre",
    "dipls",
];

pub fn rmsep(y: ArrayView1<f64>, yh: ArrayView1<f64>) -> f64 {
    (y.iter().zip(yh).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / y.len() as f64).sqrt()
}

pub fn r2(y: ArrayView1<f64>, yh: ArrayView1<f64>) -> f64 {
    let m = y.mean().unwrap_or(0.0);
    let ss_res: f64 = y.iter().zip(yh).map(|(a, b)| (a - b).powi(2)).sum();
    let ss_tot: f64 = y.iter().map(|a| (a - m).powi(2)).sum();
    1.0 - ss_res / ss_tot
}

/// One (method, N) cell over all repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub method: String,
    pub n_transfer: usize,
    pub rmsep_mean: f64,
    pub rmsep_std: f64,
    pub r2_mean: f64,
    pub rmsep: Vec<f64>,
}

impl Cell {
    /// Mean/std (n − 1) of RMSEP and mean R² over repetitions `v` = [(rmsep, r2)].
    pub fn aggregate(method: &str, n_transfer: usize, v: &[(f64, f64)]) -> Cell {
        let r: Vec<f64> = v.iter().map(|e| e.0).collect();
        let mean = r.iter().sum::<f64>() / r.len() as f64;
        let var = r.iter().map(|x| (x - mean).powi(2)).sum::<f64>()
            / (r.len().saturating_sub(1).max(1)) as f64;
        Cell {
            method: method.to_string(),
            n_transfer,
            rmsep_mean: mean,
            rmsep_std: var.sqrt(),
            r2_mean: v.iter().map(|e| e.1).sum::<f64>() / v.len() as f64,
            rmsep: r,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BaselineReport {
    pub cells: Vec<Cell>,
    /// Master LV count chosen by CV, per repetition.
    pub master_lvs: Vec<usize>,
}

impl BaselineReport {
    pub fn get(&self, method: &str, n: usize) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.method == method && c.n_transfer == n)
    }
}

/// Predictions of every method for one repetition and one N (N = 0: the reference rows).
/// One repetition's rows: calibration, test, transfer subset, and the CV seed.
struct Split<'a> {
    cal: &'a [usize],
    test: &'a [usize],
    tr: &'a [usize],
    seed: u32,
}

fn predict_all(
    d: &TransferData,
    cfg: &BaselinesConfig,
    sp: &Split,
    master: &Pls,
    a: usize,
) -> Vec<(&'static str, Array1<f64>)> {
    let (cal, test, tr, seed) = (sp.cal, sp.test, sp.tr, sp.seed);
    let xt_test = rows(d.target.view(), test);
    let mut out = Vec::new();
    if tr.is_empty() {
        let xm_test = rows(d.source.view(), test);
        out.push(("no_transfer", master.predict(xt_test.view(), a)));
        let m = col_mean(xt_test.view());
        out.push((
            "recentre_test",
            master.predict_centred_on(xt_test.view(), m.view(), a),
        ));
        let xtc = rows(d.target.view(), cal);
        let yc = d.y.select(Axis(0), cal);
        let (tm, at) = fit_cv(xtc.view(), yc.view(), cfg, seed);
        out.push(("target_all", tm.predict(xt_test.view(), at)));
        out.push(("master_on_master", master.predict(xm_test.view(), a)));
        return out;
    }
    let xs_tr = rows(d.target.view(), tr);
    let xm_tr = rows(d.source.view(), tr);
    let y_tr = d.y.select(Axis(0), tr);
    let n = tr.len();
    let a_t = a.min(n.saturating_sub(1)).max(1);
    let to = Pls::fit(xs_tr.view(), y_tr.view(), a_t, cfg.pls_algorithm);
    out.push(("target_only", to.predict(xt_test.view(), a_t)));
    let (s, b) = transfer::sbc(y_tr.view(), master.predict(xs_tr.view(), a).view());
    out.push(("sbc", master.predict(xt_test.view(), a).mapv(|v| s * v + b)));
    let ds = transfer::ds(xm_tr.view(), xs_tr.view());
    out.push(("ds", master.predict(ds.apply(xt_test.view()).view(), a)));
    let pds = transfer::pds(
        xm_tr.view(),
        xs_tr.view(),
        cfg.pds_half_window,
        cfg.pds_variance,
    );
    out.push(("pds", master.predict(pds.apply(xt_test.view()).view(), a)));
    let cca = transfer::cca(xm_tr.view(), xs_tr.view(), cfg.cca_max_components);
    out.push(("cca", master.predict(cca.apply(xt_test.view()).view(), a)));
    let m = col_mean(xs_tr.view());
    out.push((
        "recentre",
        master.predict_centred_on(xt_test.view(), m.view(), a),
    ));
    let xc = rows(d.source.view(), cal);
    let yc = d.y.select(Axis(0), cal);
    let dp = dipls::DiPls::fit(
        xc.view(),
        yc.view(),
        xc.view(),
        xs_tr.view(),
        a,
        cfg.dipls_lambda,
        cfg.dipls_heuristic,
    );
    out.push(("dipls", dp.predict(xt_test.view())));
    out
}

/// The note's protocol: repetition s splits with `RandomState(s).permutation(n)` (test = first
/// `n_test`), transfer subsets = first N of `RandomState(1000+s).permutation(n_cal)`, master LVs
/// by `KFold(cv_folds, shuffle, random_state=s)`.
///
/// The SVDs and eigendecompositions (faer) run on a one-thread pool: their blocking follows the
/// pool's size, so this keeps the report bit-identical whatever `--threads` is.
pub fn evaluate(
    d: &TransferData,
    cfg: &BaselinesConfig,
    on_repeat: impl FnMut(usize) + Send,
) -> Result<BaselineReport, SpxError> {
    match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        Ok(pool) => pool.install(|| evaluate_seq(d, cfg, on_repeat)),
        Err(_) => evaluate_seq(d, cfg, on_repeat),
    }
}

/// Property values and spectra must be finite, and the property must vary: PLS on a constant
/// property has nothing to fit and every R² would be 0/0.
fn check_data(d: &TransferData) -> Result<(), SpxError> {
    for (what, bad) in [
        ("source spectra", d.source.iter().any(|v| !v.is_finite())),
        ("target spectra", d.target.iter().any(|v| !v.is_finite())),
        ("property values", d.y.iter().any(|v| !v.is_finite())),
    ] {
        if bad {
            return Err(SpxError::Config(format!(
                "{what} contain NaN or infinite values"
            )));
        }
    }
    let (lo, hi) =
        d.y.iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
    if d.y.is_empty() || lo == hi {
        return Err(SpxError::Config(format!(
            "the property is constant ({lo}) over all {} samples: nothing to calibrate",
            d.y.len()
        )));
    }
    Ok(())
}

fn evaluate_seq(
    d: &TransferData,
    cfg: &BaselinesConfig,
    mut on_repeat: impl FnMut(usize),
) -> Result<BaselineReport, SpxError> {
    let n = d.y.len();
    if d.source.dim() != d.target.dim() || d.source.nrows() != n {
        return Err(SpxError::Config(format!(
            "source {:?}, target {:?} and {} property values do not match",
            d.source.dim(),
            d.target.dim(),
            n
        )));
    }
    check_data(d)?;
    if cfg.n_test == 0 {
        return Err(SpxError::Config(
            "spektron.baselines.n_test must be >= 1 (the test set scores every method)".into(),
        ));
    }
    let n_cal = n
        .checked_sub(cfg.n_test)
        .filter(|&c| c >= 3)
        .ok_or_else(|| {
            SpxError::Config(format!(
                "spektron.baselines.n_test = {} leaves no calibration set from {n} samples",
                cfg.n_test
            ))
        })?;
    if let Some(&bad) = cfg.n_transfer.iter().find(|&&k| k < 2 || k > n_cal) {
        return Err(SpxError::Config(format!(
            "spektron.baselines.n_transfer: {bad} must be in 2..={n_cal}"
        )));
    }
    if cfg.repeats == 0 || cfg.cv_folds < 2 {
        return Err(SpxError::Config(
            "spektron.baselines: repeats must be >= 1 and cv_folds >= 2".into(),
        ));
    }
    let mut ns = vec![0usize];
    ns.extend(cfg.n_transfer.iter().copied());
    // (method, N, [(RMSEP, R²) per repetition])
    type Acc = Vec<(&'static str, usize, Vec<(f64, f64)>)>;
    let mut acc: Acc = Vec::new();
    let mut master_lvs = Vec::new();
    for s in cfg.first_repeat..cfg.first_repeat + cfg.repeats {
        let perm = splits::permutation(s as u32, n);
        let (test, cal) = perm.split_at(cfg.n_test);
        let xc = rows(d.source.view(), cal);
        let yc = d.y.select(Axis(0), cal);
        let (master, a) = fit_cv(xc.view(), yc.view(), cfg, s as u32);
        master_lvs.push(a);
        let tperm = splits::permutation(1000 + s as u32, cal.len());
        let y_test = d.y.select(Axis(0), test);
        for &k in &ns {
            let tr: Vec<usize> = tperm[..k].iter().map(|&i| cal[i]).collect();
            for (name, yh) in predict_all(
                d,
                cfg,
                &Split {
                    cal,
                    test,
                    tr: &tr,
                    seed: s as u32,
                },
                &master,
                a,
            ) {
                let e = (
                    rmsep(y_test.view(), yh.view()),
                    r2(y_test.view(), yh.view()),
                );
                match acc.iter_mut().find(|(m, kk, _)| *m == name && *kk == k) {
                    Some(c) => c.2.push(e),
                    None => acc.push((name, k, vec![e])),
                }
            }
        }
        on_repeat(s);
    }
    let cells = acc
        .into_iter()
        .map(|(m, k, v)| Cell::aggregate(m, k, &v))
        .collect();
    Ok(BaselineReport { cells, master_lvs })
}

/// PLS1 with the LV count chosen by `KFold(cv_folds, shuffle, random_state=seed)` CV over
/// 1..=max_lv (capped by the smallest training fold); returns the model and the LV count.
pub fn fit_cv(
    x: ArrayView2<f64>,
    y: ArrayView1<f64>,
    cfg: &BaselinesConfig,
    seed: u32,
) -> (Pls, usize) {
    let folds = splits::kfold(seed, x.nrows(), cfg.cv_folds);
    let smallest_train = x.nrows() - x.nrows().div_ceil(cfg.cv_folds.max(2));
    let a_max = cfg.max_lv.min(smallest_train.saturating_sub(1)).max(1);
    let (a, _) = pls::cv_press(x, y, &folds, a_max, cfg.pls_algorithm);
    (Pls::fit(x, y, a, cfg.pls_algorithm), a)
}
