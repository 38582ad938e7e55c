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
    pub quick: QuickConfig,
}

/// `[ptycho.dose.quick]`: the `--quick` sizes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuickConfig {
    pub n: usize,
    pub object_size: usize,
    pub nlines: usize,
    pub buffer: f64,
    pub probe_scale: f64,
    pub n_train: usize,
    pub n_test: usize,
    pub epochs: usize,
    pub filters_base: usize,
    pub border_filters: usize,
    pub stitch_crop: usize,
}

/// One arm of the dose study.
#[derive(Clone, Debug, Serialize)]
pub struct Arm {
    pub nphotons: f64,
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
        "nphotons,method,loss,epochs_run,final_loss,train_seconds,amp_mae,amp_psnr_max,\
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
            "{:e},{},{},{},{},{},{m}\n",
            a.nphotons, a.method, a.loss, a.epochs_run, a.final_loss, a.train_seconds
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

/// Settings of one dose study.
#[derive(Clone, Debug)]
pub struct DoseSettings {
    /// Sizes, network and training settings; `dose` holds the position counts and ePIE.
    pub ptycho: PtychoConfig,
    pub seed: u64,
    pub device: DeviceSpec,
    /// Continue each arm from its per-epoch checkpoint; finished arms are not retrained.
    pub resume: bool,
}

/// What [`study`] measured and wrote (also written as `dose_study.json`).
#[derive(Clone, Debug, Serialize)]
pub struct DoseReport {
    /// PINN arms per dose (MAE, NLL), then the ePIE arms.
    pub arms: Vec<Arm>,
    pub cpu_seconds: f64,
    pub figure: String,
    pub metrics_csv: String,
    pub n: usize,
    pub n_test: usize,
    pub n_train: usize,
    pub wall_seconds: f64,
}

/// The doses of the study, in figure-row order.
pub const DOSES: [f64; 2] = [1e9, 1e4];

/// The dose study into `out`: per dose, simulate a training and a test scan, train an MAE and
/// an NLL arm, reconstruct and score the test scan, and run ePIE on it; then write the figure,
/// the metrics table (CSV) and the JSON report. Every output becomes visible together when
/// the study ends (staged in `out`); only the per-arm checkpoints are written in place, so a
/// killed study resumes.
pub fn study(s: &DoseSettings, out: &Path, hooks: &Hooks) -> Result<DoseReport, SpxError> {
    let cfg = &s.ptycho;
    let (n_train, n_test) = (cfg.dose.n_train, cfg.dose.n_test);
    let t0 = Instant::now();
    let cpu0 = pipeline::cpu_seconds();
    let stage = io::atomic::Stage::begin(out)?;
    let work = stage.dir().to_path_buf();
    let mut rows: Vec<DoseRow> = vec![];
    let mut epie_arms: Vec<Arm> = vec![];
    for nph in DOSES {
        let tag = format!("{nph:.0e}");
        let mut c = cfg.clone();
        c.simulate.nphotons = nph;
        c.simulate.plot = false;
        c.pinn.nphotons = nph;
        let mut ct = c.clone();
        ct.simulate.n_positions = n_train;
        let tr = pipeline::simulate_into(&ct, s.seed, &work.join(&tag), "train.npz", hooks)?;
        let mut cs = c.clone();
        cs.simulate.n_positions = n_test;
        let test_seed = s.seed + 1;
        let te = pipeline::simulate_into(&cs, test_seed, &work.join(&tag), "test.npz", hooks)?;
        let train_raw = RawData::load(Path::new(&tr.npz))?;
        let test_raw = RawData::load(Path::new(&te.npz))?;
        let train_id = format!(
            "simulated {} seed {}",
            serde_json::to_string(&ct.simulate).expect("settings serialise"),
            s.seed
        );
        let mut arms = vec![];
        for loss in [Loss::Mae, Loss::Nll] {
            let r = train_arm(
                s, &c, loss, &tag, &train_id, &train_raw, &test_raw, out, &work, hooks,
            )?;
            arms.push(r);
        }
        let d0 = test_raw
            .diffraction
            .index_axis(ndarray::Axis(0), 0)
            .mapv(|v| {
                ((v as f64) * te.photon_scale.max(1e-300)).powi(2).ln_1p() / std::f64::consts::LN_10
            });
        let nll = arms.pop().expect("nll arm");
        let mae = arms.pop().expect("mae arm");
        let iters = cfg.dose.epie_iterations;
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
            let (rec, r) = recon::epie_reconstruct(&test_raw, &ec, region, s.seed, &pb)?;
            pb.finish_and_clear();
            write_recon(&work.join(&tag).join("epie"), "epie_recon", &rec)?;
            let arm = Arm {
                nphotons: nph,
                method: "ePIE".into(),
                loss: "-".into(),
                epochs_run: iters,
                final_loss: r.errors.last().copied().unwrap_or(f64::NAN),
                train_seconds: t1.elapsed().as_secs_f64(),
                metrics: rec.metrics.clone(),
            };
            (hooks.say)(format!(
                "{tag} ePIE: {iters} iterations in {:.1} s; amp SSIM {}",
                arm.train_seconds,
                rec.metrics
                    .as_ref()
                    .map_or("-".into(), |m| format!("{:.3}", m.amp_ssim)),
            ));
            epie_arms.push(arm);
        }
        rows.push(DoseRow {
            nphotons: nph,
            diffraction: d0,
            mae,
            nll,
        });
    }
    dose_figure(&work.join("dose_study.png"), &rows)?;
    let mut arms: Vec<Arm> = rows
        .into_iter()
        .flat_map(|r| [r.mae.arm, r.nll.arm])
        .collect();
    arms.extend(epie_arms);
    let text = metrics_csv(&arms.iter().collect::<Vec<_>>());
    io::write_atomic(&work.join("dose_metrics.csv"), |w| {
        std::io::Write::write_all(w, text.as_bytes())
    })?;
    let report = DoseReport {
        figure: out.join("dose_study.png").display().to_string(),
        metrics_csv: out.join("dose_metrics.csv").display().to_string(),
        arms,
        wall_seconds: t0.elapsed().as_secs_f64(),
        cpu_seconds: pipeline::cpu_seconds() - cpu0,
        n_train,
        n_test,
        n: cfg.simulate.n,
    };
    let j = serde_json::to_vec_pretty(&report).expect("report serialises");
    io::write_atomic(&work.join("dose_study.json"), |w| {
        std::io::Write::write_all(w, &j)
    })?;
    (hooks.record)(&work, cfg, s.seed)?;
    stage.commit()?;
    (hooks.say)(format!(
        "wrote {}, {} and {}",
        report.figure,
        out.join("dose_study.json").display(),
        report.metrics_csv
    ));
    Ok(report)
}

/// Train one PINN arm on `train_raw` (checkpointed in `out`, outputs in `work`), then
/// reconstruct and score `test_raw`.
#[allow(clippy::too_many_arguments)]
fn train_arm(
    s: &DoseSettings,
    c: &PtychoConfig,
    loss: Loss,
    tag: &str,
    train_id: &str,
    train_raw: &RawData,
    test_raw: &RawData,
    out: &Path,
    work: &Path,
    hooks: &Hooks,
) -> Result<ArmResult, SpxError> {
    let mut ca = c.clone();
    (ca.pinn.train.nll_weight, ca.pinn.train.mae_weight) = loss.weights();
    let ck = Checkpointing {
        dir: out.join(tag).join(loss.name()).join("checkpoint"),
        fingerprint: pipeline::fingerprint(&ca, s.seed, train_id),
        resume: s.resume,
    };
    let dir: PathBuf = work.join(tag).join(loss.name());
    let (t, _, ts) =
        pipeline::train_into(&ca, s.seed, &s.device, train_raw, &dir, Some(&ck), hooks)?;
    let dev = s.device.device()?;
    let model = burn::module::Module::valid(&t.model);
    let test = recon::prepare(test_raw, &ca.group, s.seed)?;
    let pb = hooks.progress.bar(test.len() as u64, "inferring");
    let r = recon::reconstruct(&model, &t.shape, &test, test_raw, &ca.pinn, 64, &dev, &pb);
    pb.finish_and_clear();
    write_recon(&dir, "pinn_recon", &r)?;
    let arm = Arm {
        nphotons: c.pinn.nphotons,
        method: "PINN".into(),
        loss: loss.name().to_uppercase(),
        epochs_run: ts.epochs_run,
        final_loss: ts.final_loss,
        train_seconds: ts.seconds,
        metrics: r.metrics.clone(),
    };
    let m = r.metrics.as_ref();
    (hooks.say)(format!(
        "{tag} {}: {} epochs in {:.1} s; amp PSNR {} SSIM {} FRC50 {}",
        loss.name(),
        arm.epochs_run,
        arm.train_seconds,
        m.map_or("-".into(), |m| format!("{:.2} dB", m.amp_psnr_max)),
        m.map_or("-".into(), |m| format!("{:.3}", m.amp_ssim)),
        m.map_or("-".into(), |m| format!("{:.1}", m.amp_frc50)),
    ));
    Ok(ArmResult { recon: r, arm })
}
