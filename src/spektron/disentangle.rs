//! E10: disentanglement of z_chem and z_inst (`spx spektron experiment disentanglement`). The
//! model is the `--checkpoint` (same `[spektron.model]`), or one pretrained in the run with
//! every configured loss on a synthetic corpus (`[spektron.synth]`, `[spektron.pretrain]`, as
//! E1's `all`). Every sample of the task is encoded on both instruments (the spectra as the model
//! arms read them: resampled, SNV, not centred), giving the means of z_chem (from [CLS]) and
//! z_inst (from [DOMAIN]).
//!
//! - **Embedding:** the first two principal components (PCA of the latents of all 2n spectra,
//!   centred, not scaled) of each latent, plotted coloured by instrument and by sample (samples
//!   grouped into property terciles, since n colours cannot be told apart).
//! - **Scores** per latent: `same_sample_ratio` = mean distance between the two instruments' z of
//!   the same sample / mean distance between the two instruments' z of different samples (< 1:
//!   the latent knows the sample across instruments); `instrument_accuracy` = nearest-centroid
//!   classification of the instrument of the test spectra, centroids from the calibration spectra
//!   (0.5 = chance).
//! - **Swap test.** The model's reconstruction head reads the patch tokens, not (z_chem, z_inst),
//!   so a linear decoder D: [z_chem, z_inst, 1] → spectrum is fitted post hoc (ridge, λ =
//!   `RIDGE` × mean diagonal of ZᵀZ) on the calibration spectra of both instruments (the split of
//!   repetition 0). For each test sample and direction (source → target, target → source):
//!   *unswapped* = D(z_chem(from), z_inst(from)), *swapped* = D(z_chem(from), z_inst(to)), both
//!   compared (RMSE over the points) with the measured spectrum on the `to` instrument; *own* =
//!   D(z_chem(to), z_inst(to)) is the decoder's floor. If z_inst carries the instrument, swapping
//!   brings the decoded spectrum closer to the other instrument's measurement.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use ndarray::{Array1, Array2, Axis};
use serde::Serialize;

use super::ablation::{self, PretrainInput, Variant};
use super::baselines::linalg;
use super::experiment::{self, Input, Settings};
use super::model::{SpektronModel, checkpoint, finetune};
use super::protocol::Split;
use super::report;
use crate::backend::seeded;
use crate::error::SpxError;
use crate::io::atomic::{Stage, safe_component};
use crate::io::{plot as iplot, write_atomic};

/// Ridge factor of the swap-test decoder (relative to the mean diagonal of ZᵀZ).
pub const RIDGE: f64 = 1e-3;

/// Scores of one latent.
#[derive(Clone, Debug, Serialize)]
pub struct LatentScores {
    pub dims: usize,
    /// Variance fraction of the two plotted principal components.
    pub explained: [f64; 2],
    pub same_sample_ratio: f64,
    pub instrument_accuracy: f64,
}

/// Mean RMSE of the swap test's decoded spectra against the measured `to` spectra.
#[derive(Clone, Debug, Serialize)]
pub struct SwapTest {
    pub test_samples: usize,
    pub unswapped_rmse: f64,
    pub swapped_rmse: f64,
    pub own_rmse: f64,
    /// Mean RMSE between the two instruments' measured spectra of the same test sample (how
    /// far apart the instruments are).
    pub instrument_rmse: f64,
    /// Fraction of (test sample, direction) pairs where swapping brings the decoded spectrum
    /// closer to the `to` instrument's measurement.
    pub swap_closer_fraction: f64,
    pub ridge_lambda: f64,
}

/// `e10_<stem>.json`.
#[derive(Clone, Debug, Serialize)]
pub struct DisentangleReport {
    pub experiment: &'static str,
    pub data: Option<String>,
    pub source: String,
    pub target: String,
    pub property: String,
    pub pretrained: Option<String>,
    /// Pretraining steps run here (0 with `--checkpoint`).
    pub pretrain_steps: usize,
    pub samples: usize,
    pub n_test: usize,
    pub z_chem: LatentScores,
    pub z_inst: LatentScores,
    pub swap: SwapTest,
    pub config: String,
    #[serde(skip)]
    pub files: Vec<PathBuf>,
    #[serde(skip)]
    pub markdown: String,
}

/// Rows of `z` (n × d) projected on their first two principal components, and the variance
/// fraction of each; signs fixed so each component's largest loading is positive.
pub fn pca2(z: &Array2<f64>) -> Result<(Array2<f64>, [f64; 2]), SpxError> {
    if z.iter().any(|v| !v.is_finite()) {
        return Err(SpxError::field(
            "experiment",
            "latents",
            "non-finite latent values",
        ));
    }
    let c = linalg::centre(z.view(), linalg::col_mean(z.view()).view());
    let (_, s, v) = linalg::svd(c.view());
    let total: f64 = s.iter().map(|x| x * x).sum();
    let mut pcs = Array2::zeros((z.nrows(), 2));
    let mut explained = [0.0; 2];
    for k in 0..2.min(v.ncols()) {
        let mut col = v.column(k).to_owned();
        let big = col
            .iter()
            .fold(0.0f64, |a, &b| if b.abs() > a.abs() { b } else { a });
        if big < 0.0 {
            col.mapv_inplace(|x| -x);
        }
        pcs.column_mut(k).assign(&c.dot(&col));
        explained[k] = if total > 0.0 {
            s[k] * s[k] / total
        } else {
            0.0
        };
    }
    Ok((pcs, explained))
}

fn dist(a: ndarray::ArrayView1<f64>, b: ndarray::ArrayView1<f64>) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Scores of a latent given as source rows `zs` and target rows `zt` (same sample order).
pub fn scores(zs: &Array2<f64>, zt: &Array2<f64>, split: &Split) -> (f64, f64) {
    let n = zs.nrows();
    let (mut same, mut other, mut n_other) = (0.0, 0.0, 0usize);
    for i in 0..n {
        same += dist(zs.row(i), zt.row(i));
        for j in (0..n).filter(|&j| j != i) {
            other += dist(zs.row(i), zt.row(j));
            n_other += 1;
        }
    }
    let ratio = (same / n as f64) / (other / n_other.max(1) as f64);
    let cs = linalg::col_mean(linalg::rows(zs.view(), &split.cal).view());
    let ct = linalg::col_mean(linalg::rows(zt.view(), &split.cal).view());
    let mut right = 0usize;
    for &i in &split.test {
        right += usize::from(dist(zs.row(i), cs.view()) < dist(zs.row(i), ct.view()));
        right += usize::from(dist(zt.row(i), ct.view()) < dist(zt.row(i), cs.view()));
    }
    (ratio, right as f64 / (2 * split.test.len()).max(1) as f64)
}

/// The swap test (module docs) on latents `[z_chem | z_inst]` of both instruments and the
/// measured spectra `xs`, `xt` (n × p).
pub fn swap_test(
    (cs, is): (&Array2<f64>, &Array2<f64>),
    (ct, it): (&Array2<f64>, &Array2<f64>),
    xs: &Array2<f64>,
    xt: &Array2<f64>,
    split: &Split,
) -> SwapTest {
    let feats = |c: ndarray::ArrayView1<f64>, i: ndarray::ArrayView1<f64>| -> Array1<f64> {
        c.iter().chain(i.iter()).copied().chain([1.0]).collect()
    };
    let d = cs.ncols() + is.ncols() + 1;
    let cal = &split.cal;
    let mut z = Array2::zeros((2 * cal.len(), d));
    let mut x = Array2::zeros((2 * cal.len(), xs.ncols()));
    for (k, &r) in cal.iter().enumerate() {
        z.row_mut(2 * k).assign(&feats(cs.row(r), is.row(r)));
        z.row_mut(2 * k + 1).assign(&feats(ct.row(r), it.row(r)));
        x.row_mut(2 * k).assign(&xs.row(r));
        x.row_mut(2 * k + 1).assign(&xt.row(r));
    }
    let mut g = z.t().dot(&z);
    let lambda = RIDGE * g.diag().sum() / d as f64;
    for k in 0..d {
        g[[k, k]] += lambda;
    }
    let w = linalg::pinv(g.view()).dot(&z.t().dot(&x));
    let rmse = |f: Array1<f64>, m: ndarray::ArrayView1<f64>| {
        let yh = f.insert_axis(Axis(0)).dot(&w);
        (yh.iter().zip(m).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / m.len() as f64).sqrt()
    };
    let (mut un, mut sw, mut own, mut closer, mut cnt) = (0.0, 0.0, 0.0, 0usize, 0usize);
    let mut apart = 0.0;
    for &i in &split.test {
        let d = &xs.row(i) - &xt.row(i);
        apart += (d.mapv(|v| v * v).sum() / d.len() as f64).sqrt();
        for (cf, if_, ito, cto, to) in [(cs, is, it, ct, xt.row(i)), (ct, it, is, cs, xs.row(i))] {
            let u = rmse(feats(cf.row(i), if_.row(i)), to);
            let s = rmse(feats(cf.row(i), ito.row(i)), to);
            own += rmse(feats(cto.row(i), ito.row(i)), to);
            un += u;
            sw += s;
            closer += usize::from(s < u);
            cnt += 1;
        }
    }
    let m = cnt.max(1) as f64;
    SwapTest {
        test_samples: split.test.len(),
        unswapped_rmse: un / m,
        swapped_rmse: sw / m,
        own_rmse: own / m,
        instrument_rmse: apart / split.test.len().max(1) as f64,
        swap_closer_fraction: closer as f64 / m,
        ridge_lambda: lambda,
    }
}

fn to_array(v: &[f32], d: usize) -> Array2<f64> {
    Array2::from_shape_fn((v.len() / d.max(1), d), |(i, j)| f64::from(v[i * d + j]))
}

/// E10 on the data of `input`; working and report files go into `stage`.
pub fn run(
    input: &Input,
    cfg: Settings<'_>,
    pre: PretrainInput<'_>,
    device: &Device,
    stage: &Stage,
    mut on_progress: impl FnMut(&str),
) -> Result<DisentangleReport, SpxError> {
    let arms = cfg.arms;
    let ec = arms.experiment;
    let task = experiment::task_data(input, ec, cfg.seed)?;
    let lay = arms.model.layout();
    let p = lay.n_points;
    let (xs, xt) = experiment::prepare_spectra(&task.data, &task.axis, p, cfg.min_std)?;
    let y = task.data.y.to_vec();
    let n = y.len();
    let n_test = arms.n_test;
    if n < n_test + 3 {
        return Err(SpxError::field(
            "config",
            "spektron.baselines.n_test",
            format!("{n_test} leaves no calibration set from {n} samples"),
        ));
    }
    let mut rng = seeded(device, cfg.seed);
    let model = SpektronModel::new(arms.model, &mut rng, device)?;
    let (model, steps) = match input.checkpoint {
        Some(dir) => (checkpoint::load(dir, model)?.0, 0),
        None => {
            if pre.corpus.target_points != p {
                return Err(SpxError::field(
                    "config",
                    "spektron.corpus.target_points",
                    format!(
                        "{} must equal spektron.model.n_points ({p})",
                        pre.corpus.target_points
                    ),
                ));
            }
            let work = stage.dir().join("e10-work");
            on_progress("synthetic corpus");
            let corpus = ablation::make_corpus(&work, cfg.seed, &pre)?;
            on_progress("pretraining");
            let v = Variant {
                name: "all".to_string(),
                label: String::new(),
                axis: String::new(),
                model: arms.model.clone(),
                loss: pre.loss.clone(),
                pretrain: true,
            };
            let (ckpt, _, steps) =
                ablation::pretrain_variant(&corpus, &work, &v, &pre, device, cfg.seed)?;
            let dir =
                ckpt.ok_or_else(|| SpxError::field("experiment", "pretraining", "no checkpoint"))?;
            (checkpoint::load(&dir, model)?.0, steps)
        }
    };
    on_progress("latents");
    let model = model.valid();
    let mods = vec![input.modality.code(); n];
    let (c_s, i_s) = finetune::latents(&model, &lay, &xs, &mods, device);
    let (c_t, i_t) = finetune::latents(&model, &lay, &xt, &mods, device);
    // The checkpoint's weights are read lazily: the working files go only now.
    let work = stage.dir().join("e10-work");
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| SpxError::file(&work, e))?;
    }
    let (zc, zi) = (arms.model.z_chem, arms.model.z_inst);
    let (cs, is, ct, it) = (
        to_array(&c_s, zc),
        to_array(&i_s, zi),
        to_array(&c_t, zc),
        to_array(&i_t, zi),
    );
    let split = Split::new(0, n, n_test);
    let latent =
        |s: &Array2<f64>, t: &Array2<f64>| -> Result<(LatentScores, Array2<f64>), SpxError> {
            let both = ndarray::concatenate(Axis(0), &[s.view(), t.view()])
                .map_err(|e| SpxError::field("experiment", "latents", e.to_string()))?;
            let (pcs, explained) = pca2(&both)?;
            let (ratio, acc) = scores(s, t, &split);
            Ok((
                LatentScores {
                    dims: s.ncols(),
                    explained,
                    same_sample_ratio: ratio,
                    instrument_accuracy: acc,
                },
                pcs,
            ))
        };
    let (z_chem, pc_chem) = latent(&cs, &ct)?;
    let (z_inst, pc_inst) = latent(&is, &it)?;
    let swap = swap_test(
        (&cs, &is),
        (&ct, &it),
        &to_array(&xs, p),
        &to_array(&xt, p),
        &split,
    );

    let stem = safe_component(&format!("e10_{}", task.stem));
    let title = format!("E10: {}", task.title);
    let short = if input.data.is_some() {
        format!("E10 {} → {}", input.source, input.target)
    } else {
        "E10 synthetic".to_string()
    };
    let dir = stage.dir();
    let mut files = Vec::new();
    let path = dir.join(format!("{stem}.csv"));
    write_csv(&path, input, &y, &pc_chem, &pc_inst)?;
    files.push(path);
    let md = markdown(&title, input, &z_chem, &z_inst, &swap, n);
    let path = dir.join(format!("{stem}.md"));
    write_atomic(&path, |w| std::io::Write::write_all(w, md.as_bytes()))?;
    files.push(path);
    for (tag, name, pcs, sc) in [
        ("zchem", "z_chem", &pc_chem, &z_chem),
        ("zinst", "z_inst", &pc_inst, &z_inst),
    ] {
        for by in ["instrument", "sample"] {
            let path = dir.join(format!("{stem}_{tag}_by_{by}.png"));
            plot(&path, &short, name, pcs, sc, by, input, &y)?;
            files.push(path);
        }
    }
    let mut rep = DisentangleReport {
        experiment: "E10",
        data: input.data.map(|d| d.display().to_string()),
        source: input.source.to_string(),
        target: input.target.to_string(),
        property: task.property,
        pretrained: input.checkpoint.map(|d| d.display().to_string()),
        pretrain_steps: steps,
        samples: n,
        n_test,
        z_chem,
        z_inst,
        swap,
        config: input.config_file.display().to_string(),
        files: Vec::new(),
        markdown: md,
    };
    let path = dir.join(format!("{stem}.json"));
    report::write_json(&path, &rep)?;
    files.push(path);
    rep.files = files.iter().map(|f| stage.final_path(f)).collect();
    Ok(rep)
}

/// `instrument,sample,property,zchem_pc1,zchem_pc2,zinst_pc1,zinst_pc2` (source rows, then
/// target rows).
fn write_csv(
    path: &Path,
    input: &Input,
    y: &[f64],
    chem: &Array2<f64>,
    inst: &Array2<f64>,
) -> Result<(), SpxError> {
    let n = y.len();
    let mut csv =
        String::from("instrument,sample,property,zchem_pc1,zchem_pc2,zinst_pc1,zinst_pc2\n");
    for r in 0..2 * n {
        let inst_name = if r < n { input.source } else { input.target };
        let _ = writeln!(
            csv,
            "{},{},{},{:.6},{:.6},{:.6},{:.6}",
            safe_component(inst_name),
            r % n,
            y[r % n],
            chem[[r, 0]],
            chem[[r, 1]],
            inst[[r, 0]],
            inst[[r, 1]]
        );
    }
    write_atomic(path, |w| std::io::Write::write_all(w, csv.as_bytes()))
}

fn markdown(
    title: &str,
    input: &Input,
    chem: &LatentScores,
    inst: &LatentScores,
    swap: &SwapTest,
    n: usize,
) -> String {
    let mut md = format!(
        "### {title}\n\n{n} samples, each on {} and {}. Same-sample ratio: mean distance between the two instruments' latents of the same sample / of different samples (< 1: the latent follows the sample). Instrument accuracy: nearest-centroid instrument of the {} test spectra (0.5 = chance).\n\n| latent | dims | PC1 + PC2 variance | same-sample ratio | instrument accuracy |\n|---|---|---|---|---|\n",
        input.source,
        input.target,
        2 * swap.test_samples
    );
    for (name, s) in [("z_chem", chem), ("z_inst", inst)] {
        let _ = writeln!(
            md,
            "| {name} | {} | {:.1} % + {:.1} % | {:.3} | {:.3} |",
            s.dims,
            100.0 * s.explained[0],
            100.0 * s.explained[1],
            s.same_sample_ratio,
            s.instrument_accuracy
        );
    }
    let _ = write!(
        md,
        "\nSwap test ({} test samples × 2 directions; linear decoder [z_chem, z_inst] → spectrum, ridge λ = {:.3e}; RMSE against the other instrument's measured SNV spectrum):\n\n| decoded from | mean RMSE |\n|---|---|\n| z_chem and z_inst of the same instrument (unswapped) | {:.5} |\n| z_chem of that instrument, z_inst of the other (swapped) | {:.5} |\n| both latents of the other instrument (decoder floor) | {:.5} |\n| (measured spectrum of the first instrument, no decoder) | {:.5} |\n\nSwapping brings the decoded spectrum closer in {:.1} % of the pairs.\n",
        swap.test_samples,
        swap.ridge_lambda,
        swap.unswapped_rmse,
        swap.swapped_rmse,
        swap.own_rmse,
        swap.instrument_rmse,
        100.0 * swap.swap_closer_fraction
    );
    md
}

/// PC1 vs PC2 of one latent, points coloured by instrument or by property tercile (samples).
#[allow(clippy::too_many_arguments)]
fn plot(
    path: &Path,
    title: &str,
    latent: &str,
    pcs: &Array2<f64>,
    sc: &LatentScores,
    by: &str,
    input: &Input,
    y: &[f64],
) -> Result<(), SpxError> {
    let n = y.len();
    let mut lp = iplot::LinePlot::new(
        format!("{title}: {latent} by {by}, {n} samples × 2 instruments"),
        format!(
            "{latent} PC1 ({:.1} % of variance)",
            100.0 * sc.explained[0]
        ),
        format!(
            "{latent} PC2 ({:.1} % of variance)",
            100.0 * sc.explained[1]
        ),
    );
    lp.legend_outside = true;
    let series = |label: String, rows: Vec<usize>| {
        let mut s = iplot::Series::line(
            label,
            rows.iter().map(|&r| pcs[[r, 0]]).collect(),
            rows.iter().map(|&r| pcs[[r, 1]]).collect(),
        );
        s.mark = iplot::Mark::Points;
        s
    };
    if by == "instrument" {
        lp.series.push(series(
            format!("source instrument {}", input.source),
            (0..n).collect(),
        ));
        lp.series.push(series(
            format!("target instrument {}", input.target),
            (n..2 * n).collect(),
        ));
    } else {
        let mut sorted = y.to_vec();
        sorted.sort_by(f64::total_cmp);
        let (t1, t2) = (sorted[n / 3], sorted[(2 * n) / 3]);
        for (name, lo, hi) in [
            ("low", f64::NEG_INFINITY, t1),
            ("middle", t1, t2),
            ("high", t2, f64::INFINITY),
        ] {
            let rows: Vec<usize> = (0..2 * n)
                .filter(|&r| y[r % n] >= lo && y[r % n] < hi)
                .collect();
            lp.series.push(series(
                format!("samples in the {name} third of the property (both instruments)"),
                rows,
            ));
        }
    }
    iplot::line_plot(path, &lp)
}
