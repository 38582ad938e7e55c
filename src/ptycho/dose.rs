//! The dose study (PtychoPINN `dose_response_study.py`): train/test scans at two doses,
//! Poisson-NLL and MAE arms, an ePIE baseline, and its report (figure, CSV table, JSON).
//! [`study`] is the pipeline; the CLI only builds its settings and prints its report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::PtychoConfig;
use super::data::RawData;
use super::epie::EpieConfig;
use super::metrics::Metrics;
use super::pipeline::{self, Hooks, Loss};
use super::recon::{self, Recon, centre_crop, write_recon};
use super::train::Checkpointing;
use crate::backend::DeviceSpec;
use crate::error::SpxError;
use crate::io;
use crate::io::plot::{ColorMap, ImageGrid, Panel, image_grid};

/// `[ptycho.dose]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DoseConfig {
    pub n_train: usize,
    pub n_test: usize,
    /// ePIE iterations on each test scan; 0 = no ePIE arm.
    pub epie_iterations: usize,
    /// Photons per pattern of each study row (the figure has one row per dose).
    pub doses: Vec<f64>,
    /// Independent repeats (seeds `run.seed + 1000·k`): new scans, new initialisations.
    pub repeats: usize,
}

/// One arm of the dose study.
#[derive(Clone, Debug, Serialize)]
pub struct Arm {
    pub nphotons: f64,
    /// Seed of the repeat (training scan; the test scan uses seed + 1).
    pub seed: u64,
    /// Side of the centred square the metrics are computed on (pixels).
    pub window: usize,
    /// "PINN" or "ePIE".
    pub method: String,
    /// "MAE" / "NLL" for the PINN; "-" for ePIE.
    pub loss: String,
    /// Epochs (PINN) or iterations (ePIE).
    pub epochs_run: usize,
    /// Final training loss (PINN) or normalised Fourier error (ePIE).
    pub final_loss: f64,
    pub train_seconds: f64,
    pub metrics: Option<Metrics>,
}

/// The metrics table as CSV text, one row per arm (empty metric cells where there is no
/// ground truth).
pub fn metrics_csv(arms: &[&Arm]) -> String {
    let mut s = String::from(
        "nphotons,seed,method,loss,window,epochs_run,final_loss,train_seconds,amp_mae,amp_psnr_max,\
         amp_psnr_255,amp_ssim,amp_frc50,phase_mae,phase_ssim,phase_frc50\n",
    );
    for a in arms {
        let m = a.metrics.as_ref().map_or(",,,,,,,".to_string(), |m| {
            format!(
                "{},{},{},{},{},{},{},{}",
                m.amp_mae,
                m.amp_psnr_max,
                m.amp_psnr_255,
                m.amp_ssim,
                m.amp_frc50,
                m.phase_mae,
                m.phase_ssim,
                m.phase_frc50
            )
        });
        s += &format!(
            "{:e},{},{},{},{},{},{},{},{m}\n",
            a.nphotons,
            a.seed,
            a.method,
            a.loss,
            a.window,
            a.epochs_run,
            a.final_loss,
            a.train_seconds
        );
    }
    s
}

/// A trained arm: its scored reconstruction of the test scan and its table row.
pub struct ArmResult {
    pub recon: Recon,
    pub arm: Arm,
}

/// One dose of the study (one figure row): the log10 diffraction of the first test pattern
/// and the MAE and NLL arms.
pub struct DoseRow {
    pub nphotons: f64,
    pub diffraction: Array2<f64>,
    pub mae: ArmResult,
    pub nll: ArmResult,
}

/// The 2×3 figure: per dose, log10 diffraction | MAE amplitude | NLL amplitude.
pub fn dose_figure(path: &Path, rows: &[DoseRow]) -> Result<(), SpxError> {
    let mut panels = vec![];
    let label = |a: &Arm| match &a.metrics {
        Some(m) => format!(
            "{} |O|  PSNR {:.1} dB  SSIM {:.3}  FRC50 {:.1}",
            a.loss, m.amp_psnr_max, m.amp_ssim, m.amp_frc50
        ),
        None => format!("{} |O|", a.loss),
    };
    // one colour scale for all diffraction panels, so the doses compare directly
    let dmax = rows
        .iter()
        .flat_map(|r| r.diffraction.iter())
        .cloned()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    for row in rows {
        let mut p = Panel::new(
            format!("log10(diffraction+1), {:.0e} photons", row.nphotons),
            row.diffraction.clone(),
            ColorMap::Viridis,
        );
        p.limits = Some((0.0, dmax.max(1e-12)));
        panels.push(p);
        for ArmResult { recon: r, arm: a } in [&row.mae, &row.nll] {
            let k = r.object.nrows().min(128);
            let amp = centre_crop(&r.object, k).mapv(|z| z.norm() as f64);
            // grey scale over the stitched pixels only (uncovered pixels are exactly 0)
            let (lo, hi) = amp
                .iter()
                .filter(|v| **v > 0.0)
                .fold((f64::MAX, f64::MIN), |m, v| (m.0.min(*v), m.1.max(*v)));
            let mut p = Panel::new(label(a), amp, ColorMap::Gray);
            if lo < hi {
                p.limits = Some((lo, hi));
            }
            panels.push(p);
        }
    }
    image_grid(
        path,
        &ImageGrid {
            title: "PtychoPINN dose study: MAE vs Poisson NLL".into(),
            panels,
            ncols: 3,
            cell: (520, 460),
        },
    )
}

/// The Markdown summary: per dose and arm the mean and range over repeats of amplitude SSIM,
/// PSNR and FRC50, then the NLL − MAE difference per dose with its spread over repeats.
pub fn metrics_markdown(arms: &[Arm]) -> String {
    let mut keys: Vec<(f64, String, String)> = vec![];
    for a in arms {
        let k = (a.nphotons, a.method.clone(), a.loss.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let stat = |v: &[f64]| {
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if v.len() > 1 {
            format!("{mean:.3} [{lo:.3}, {hi:.3}]")
        } else {
            format!("{mean:.3}")
        }
    };
    let metric = |sel: &[&Arm], f: fn(&Metrics) -> f64| -> Vec<f64> {
        sel.iter()
            .filter_map(|a| a.metrics.as_ref().map(f))
            .collect()
    };
    let mut s = String::from(
        "| photons | method | loss | repeats | window px | amp SSIM | amp PSNR dB | amp FRC50 |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for (nph, method, loss) in &keys {
        let sel: Vec<&Arm> = arms
            .iter()
            .filter(|a| a.nphotons == *nph && &a.method == method && &a.loss == loss)
            .collect();
        s += &format!(
            "| {nph:.0e} | {method} | {loss} | {} | {} | {} | {} | {} |\n",
            sel.len(),
            {
                let lo = sel.iter().map(|a| a.window).min().unwrap_or(0);
                let hi = sel.iter().map(|a| a.window).max().unwrap_or(0);
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}–{hi}")
                }
            },
            stat(&metric(&sel, |m| m.amp_ssim)),
            stat(&metric(&sel, |m| m.amp_psnr_max)),
            stat(&metric(&sel, |m| m.amp_frc50)),
        );
    }
    s += "\n| photons | NLL − MAE SSIM | NLL − MAE FRC50 |\n|---|---|---|\n";
    let mut doses: Vec<f64> = vec![];
    for k in &keys {
        if !doses.contains(&k.0) {
            doses.push(k.0);
        }
    }
    for nph in doses {
        let pairs: Vec<(&Metrics, &Metrics)> = arms
            .iter()
            .filter(|a| a.nphotons == nph && a.loss == "NLL")
            .filter_map(|n| {
                let m = arms
                    .iter()
                    .find(|a| a.nphotons == nph && a.loss == "MAE" && a.seed == n.seed)?;
                Some((n.metrics.as_ref()?, m.metrics.as_ref()?))
            })
            .collect();
        let d = |f: fn(&Metrics) -> f64| -> Vec<f64> {
            pairs.iter().map(|(n, m)| f(n) - f(m)).collect()
        };
        s += &format!(
            "| {nph:.0e} | {} | {} |\n",
            stat(&d(|m| m.amp_ssim)),
            stat(&d(|m| m.amp_frc50))
        );
    }
    s
}

/// FRC50 (amplitude) against log10 dose for the MAE and NLL arms and ePIE (mean over repeats).
pub fn frc_figure(path: &Path, arms: &[Arm]) -> Result<(), SpxError> {
    let mut lp = crate::io::plot::LinePlot::new(
        "FRC50 vs dose (amplitude)",
        "log10 photons per pattern",
        "FRC50 (ring index)",
    );
    for (method, loss, label) in [
        ("PINN", "MAE", "PINN MAE"),
        ("PINN", "NLL", "PINN Poisson NLL"),
        ("ePIE", "-", "ePIE"),
    ] {
        let mut doses: Vec<f64> = arms
            .iter()
            .filter(|a| a.method == method && a.loss == loss)
            .map(|a| a.nphotons)
            .collect();
        doses.sort_by(f64::total_cmp);
        doses.dedup();
        let (mut x, mut y) = (vec![], vec![]);
        for d in doses {
            let v: Vec<f64> = arms
                .iter()
                .filter(|a| a.method == method && a.loss == loss && a.nphotons == d)
                .filter_map(|a| a.metrics.as_ref().map(|m| m.amp_frc50))
                .collect();
            if !v.is_empty() {
                x.push(d.log10());
                y.push(v.iter().sum::<f64>() / v.len() as f64);
            }
        }
        if !x.is_empty() {
            lp.series.push(crate::io::plot::Series::line(label, x, y));
        }
    }
    crate::io::plot::line_plot(path, &lp)
}

/// Settings of one dose study.
#[derive(Clone, Debug)]
pub struct DoseSettings {
    /// Sizes, network and training settings; `dose` holds the doses, position counts, repeats
    /// and ePIE.
    pub ptycho: PtychoConfig,
    pub seed: u64,
    pub device: DeviceSpec,
    /// Continue each arm from its per-epoch checkpoint; finished arms are not retrained.
    pub resume: bool,
}

/// What [`study`] measured and wrote (also written as `dose_study.json`).
#[derive(Clone, Debug, Serialize)]
pub struct DoseReport {
    /// Per repeat and dose the PINN arms (MAE, NLL) and ePIE.
    pub arms: Vec<Arm>,
    pub cpu_seconds: f64,
    pub figure: String,
    pub frc_figure: String,
    pub markdown: String,
    pub metrics_csv: String,
    pub n: usize,
    pub n_test: usize,
    pub n_train: usize,
    pub repeats: usize,
    pub wall_seconds: f64,
}

/// The dose study into `out`: per repeat and dose, simulate a training and a test scan, train
/// an MAE and an NLL arm, reconstruct and score the test scan, and run ePIE on it; then write
/// the figure (first repeat), the FRC50-vs-dose plot, the metrics table (CSV, Markdown) and
/// the JSON report. Every output becomes visible together when the study ends (staged in
/// `out`); only the per-arm checkpoints are written in place, so a killed study resumes.
pub fn study(s: &DoseSettings, out: &Path, hooks: &Hooks) -> Result<DoseReport, SpxError> {
    let cfg = &s.ptycho;
    let (n_train, n_test) = (cfg.dose.n_train, cfg.dose.n_test);
    if cfg.dose.doses.is_empty() || cfg.dose.repeats == 0 {
        return Err(SpxError::Config(
            "ptycho.dose: need at least one dose and one repeat".into(),
        ));
    }
    let t0 = Instant::now();
    let cpu0 = pipeline::cpu_seconds();
    let stage = io::atomic::Stage::begin(out)?;
    let work = stage.dir().to_path_buf();
    let mut rows: Vec<DoseRow> = vec![];
    let mut arms: Vec<Arm> = vec![];
    for rep in 0..cfg.dose.repeats {
        let seed = s.seed + 1000 * rep as u64;
        // the first repeat writes where a single study does; others under seed<k>/
        let sub = if rep == 0 {
            PathBuf::new()
        } else {
            PathBuf::from(format!("seed{seed}"))
        };
        let mut epie_arms = vec![];
        for &nph in &cfg.dose.doses {
            let tag = sub.join(format!("{nph:.0e}"));
            let (row, epie) = one_dose(s, seed, nph, &tag, out, &work, hooks)?;
            epie_arms.extend(epie);
            if rep == 0 {
                rows.push(row);
            } else {
                arms.extend([row.mae.arm, row.nll.arm]);
            }
        }
        if rep == 0 {
            dose_figure(&work.join("dose_study.png"), &rows)?;
            arms.extend(
                std::mem::take(&mut rows)
                    .into_iter()
                    .flat_map(|r| [r.mae.arm, r.nll.arm]),
            );
        }
        arms.extend(epie_arms);
    }
    let text = metrics_csv(&arms.iter().collect::<Vec<_>>());
    io::write_atomic(&work.join("dose_metrics.csv"), |w| {
        std::io::Write::write_all(w, text.as_bytes())
    })?;
    let md = metrics_markdown(&arms);
    io::write_atomic(&work.join("dose_metrics.md"), |w| {
        std::io::Write::write_all(w, md.as_bytes())
    })?;
    frc_figure(&work.join("dose_frc50.png"), &arms)?;
    let name = |f: &str| out.join(f).display().to_string();
    let report = DoseReport {
        figure: name("dose_study.png"),
        frc_figure: name("dose_frc50.png"),
        markdown: name("dose_metrics.md"),
        metrics_csv: name("dose_metrics.csv"),
        arms,
        wall_seconds: t0.elapsed().as_secs_f64(),
        cpu_seconds: pipeline::cpu_seconds() - cpu0,
        n_train,
        n_test,
        n: cfg.simulate.n,
        repeats: cfg.dose.repeats,
    };
    let j = serde_json::to_vec_pretty(&report).expect("report serialises");
    io::write_atomic(&work.join("dose_study.json"), |w| {
        std::io::Write::write_all(w, &j)
    })?;
    (hooks.record)(&work, cfg, s.seed)?;
    stage.commit()?;
    (hooks.say)(format!(
        "wrote {}, {}, {}, {} and {}",
        report.figure,
        report.frc_figure,
        name("dose_study.json"),
        report.metrics_csv,
        report.markdown
    ));
    Ok(report)
}

/// One dose of one repeat: scans, the two PINN arms and ePIE (when configured).
fn one_dose(
    s: &DoseSettings,
    seed: u64,
    nph: f64,
    tag: &Path,
    out: &Path,
    work: &Path,
    hooks: &Hooks,
) -> Result<(DoseRow, Option<Arm>), SpxError> {
    let cfg = &s.ptycho;
    let mut c = cfg.clone();
    c.simulate.nphotons = nph;
    c.simulate.plot = false;
    c.pinn.nphotons = nph;
    // training and held-out test positions on the same object (as the reference study)
    let (train_raw, test_raw, photon_scale) = pipeline::simulate_split_into(
        &c,
        seed,
        &work.join(tag),
        ["train.npz", "test.npz"],
        (cfg.dose.n_train, cfg.dose.n_test),
        hooks,
    )?;
    let train_id = format!(
        "simulated {} seed {seed} split {}+{}",
        serde_json::to_string(&c.simulate).expect("settings serialise"),
        cfg.dose.n_train,
        cfg.dose.n_test
    );
    let arm = |loss| {
        let a = ArmSpec {
            loss,
            seed,
            tag,
            train_id: &train_id,
        };
        train_arm(s, &c, &a, &train_raw, &test_raw, out, work, hooks)
    };
    let mae = arm(Loss::Mae)?;
    let nll = arm(Loss::Nll)?;
    let d0 = test_raw
        .diffraction
        .index_axis(ndarray::Axis(0), 0)
        .mapv(|v| {
            ((v as f64) * photon_scale.max(1e-300)).powi(2).ln_1p() / std::f64::consts::LN_10
        });
    let iters = cfg.dose.epie_iterations;
    let mut epie_arm = None;
    if iters > 0 {
        // scored on the NLL arm's covered square, so all arms see the same pixels
        let ec = EpieConfig {
            iterations: iters,
            alpha: 1.0,
            beta: 0.0,
        };
        let t1 = Instant::now();
        let pb = hooks.progress.bar(iters as u64, "ePIE");
        let region = (nll.recon.covered > 11).then_some((nll.recon.centre, nll.recon.covered));
        let (rec, r) = recon::epie_reconstruct(&test_raw, &ec, region, seed, &pb)?;
        pb.finish_and_clear();
        write_recon(&work.join(tag).join("epie"), "epie_recon", &rec)?;
        let arm = Arm {
            nphotons: nph,
            seed,
            window: rec.covered,
            method: "ePIE".into(),
            loss: "-".into(),
            epochs_run: iters,
            final_loss: r.errors.last().copied().unwrap_or(f64::NAN),
            train_seconds: t1.elapsed().as_secs_f64(),
            metrics: rec.metrics.clone(),
        };
        (hooks.say)(format!(
            "{} ePIE: {iters} iterations in {:.1} s; amp SSIM {}",
            tag.display(),
            arm.train_seconds,
            rec.metrics
                .as_ref()
                .map_or("-".into(), |m| format!("{:.3}", m.amp_ssim)),
        ));
        epie_arm = Some(arm);
    }
    let row = DoseRow {
        nphotons: nph,
        diffraction: d0,
        mae,
        nll,
    };
    Ok((row, epie_arm))
}

/// Which arm [`train_arm`] trains.
struct ArmSpec<'a> {
    loss: Loss,
    seed: u64,
    /// Directory of the dose (relative to the output directory).
    tag: &'a Path,
    /// Identifies the training scan in the checkpoint fingerprint.
    train_id: &'a str,
}

/// Train one PINN arm on `train_raw` (checkpointed in `out`, outputs in `work`), then
/// reconstruct and score `test_raw`.
#[allow(clippy::too_many_arguments)]
fn train_arm(
    s: &DoseSettings,
    c: &PtychoConfig,
    a: &ArmSpec,
    train_raw: &RawData,
    test_raw: &RawData,
    out: &Path,
    work: &Path,
    hooks: &Hooks,
) -> Result<ArmResult, SpxError> {
    let (loss, seed) = (a.loss, a.seed);
    let mut ca = c.clone();
    (ca.pinn.train.nll_weight, ca.pinn.train.mae_weight) = loss.weights();
    let ck = Checkpointing {
        dir: out.join(a.tag).join(loss.name()).join("checkpoint"),
        fingerprint: pipeline::fingerprint(&ca, seed, a.train_id),
        resume: s.resume,
    };
    let dir: PathBuf = work.join(a.tag).join(loss.name());
    let (t, _, ts) = pipeline::train_into(&ca, seed, &s.device, train_raw, &dir, Some(&ck), hooks)?;
    let dev = s.device.device()?;
    let model = burn::module::Module::valid(&t.model);
    let test = recon::prepare(test_raw, &ca.group, seed)?;
    let pb = hooks.progress.bar(test.len() as u64, "inferring");
    let r = recon::reconstruct(&model, &t.shape, &test, test_raw, &ca.pinn, 64, &dev, &pb);
    pb.finish_and_clear();
    write_recon(&dir, "pinn_recon", &r)?;
    let arm = Arm {
        nphotons: c.pinn.nphotons,
        seed,
        window: r.covered,
        method: "PINN".into(),
        loss: loss.name().to_uppercase(),
        epochs_run: ts.epochs_run,
        final_loss: ts.final_loss,
        train_seconds: ts.seconds,
        metrics: r.metrics.clone(),
    };
    let m = r.metrics.as_ref();
    (hooks.say)(format!(
        "{} {}: {} epochs in {:.1} s; amp PSNR {} SSIM {} FRC50 {} ({} px window)",
        a.tag.display(),
        loss.name(),
        arm.epochs_run,
        arm.train_seconds,
        m.map_or("-".into(), |m| format!("{:.2} dB", m.amp_psnr_max)),
        m.map_or("-".into(), |m| format!("{:.3}", m.amp_ssim)),
        m.map_or("-".into(), |m| format!("{:.1}", m.amp_frc50)),
        r.covered,
    ));
    Ok(ArmResult { recon: r, arm })
}
