//! E9: RMSEP vs test-time-training steps (`spx spektron experiment ttt-steps`), on the seeded
//! splits of E3/E4. Per repetition: the master calibration of E4 ([`experiment::calibrate_master`]),
//! then TTT (`[spektron.ttt]`: lr, scope, batch, mask ratio) on the unlabelled target test spectra
//! for each step count of `spektron.experiment.ttt_steps`, from two starting points:
//! - `zero_shot`: the master (no labelled target spectra); at 0 steps it is E4's
//!   `spektron_no_transfer`, at `spektron.ttt.steps` E4's `spektron_ttt` (same seeds);
//! - `few_shot`: the master + LoRA on N = `spektron.experiment.table_n` labelled target spectra;
//!   at 0 steps it is E4's `spektron_lora`.
//!
//! The step counts are read off one TTT run per starting point (the model after k steps of the
//! longest run), so a row at k steps is what `spektron.ttt.steps = k` would give. Reference rows:
//! the classical `recentre_test` (N = 0, the same unlabelled spectra) and SBC at N.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;

use super::baselines::{self, r2, rmsep};
use super::experiment::{self, Input, MasterInput, Prepared, Settings, Task};
use super::model::SpektronModel;
use super::model::finetune::{self, FinetuneConfig, FinetuneMode, FinetuneReport, Labelled};
use super::protocol::{Acc, Centring, Split, sub_seed, take};
use super::report;
use crate::backend::seeded;
use crate::error::SpxError;
use crate::io::atomic::safe_component;
use crate::io::{plot as iplot, write_atomic};

/// One (starting point, steps) row over the repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct StepRow {
    /// `zero_shot`, `few_shot`, or a classical reference (`recentre_test`, `sbc`).
    pub setting: String,
    pub steps: usize,
    pub rmsep_mean: f64,
    pub rmsep_std: f64,
    pub r2_mean: f64,
    pub rmsep: Vec<f64>,
}

/// `e9_<stem>.json`.
#[derive(Clone, Debug, Serialize)]
pub struct TttStepsReport {
    pub experiment: &'static str,
    pub data: Option<String>,
    pub source: String,
    pub target: String,
    pub property: String,
    pub pretrained: Option<String>,
    pub repeats: usize,
    pub n_test: usize,
    /// Labelled target spectra of the few-shot start (LoRA).
    pub n_transfer: usize,
    pub steps: Vec<usize>,
    pub ttt_scope: finetune::TttScope,
    pub ttt_lr: f64,
    pub model_seconds: f64,
    pub config: String,
    pub rows: Vec<StepRow>,
    #[serde(skip)]
    pub files: Vec<PathBuf>,
    #[serde(skip)]
    pub markdown: String,
}

fn aggregate(setting: &str, steps: usize, v: &[(f64, f64)]) -> StepRow {
    let c = baselines::Cell::aggregate(setting, steps, v);
    StepRow {
        setting: c.method,
        steps,
        rmsep_mean: c.rmsep_mean,
        rmsep_std: c.rmsep_std,
        r2_mean: c.r2_mean,
        rmsep: c.rmsep,
    }
}

/// E9 on the data of `input` (file or synthetic); files go into `dir` (a staging directory: the
/// caller commits it; the report's `files` are paths in `dir`).
pub fn run(
    input: &Input,
    cfg: Settings<'_>,
    device: &Device,
    dir: &Path,
    mut on_progress: impl FnMut(&str),
) -> Result<TttStepsReport, SpxError> {
    let arms = cfg.arms;
    let ec = arms.experiment;
    let mut steps = ec.ttt_steps.clone();
    steps.sort_unstable();
    steps.dedup();
    let max_steps = *steps.last().ok_or_else(|| {
        SpxError::field(
            "config",
            "spektron.experiment.ttt_steps",
            "must not be empty",
        )
    })?;
    if ec.repeats == 0 {
        return Err(SpxError::field(
            "config",
            "spektron.experiment.repeats",
            "must be >= 1",
        ));
    }
    let k = ec.table_n;
    let Prepared {
        task:
            Task {
                data,
                title,
                stem,
                property,
                ..
            },
        base,
        xs,
        xt,
    } = experiment::prepare_task(input, &cfg, &[k])?;
    let lay = arms.model.layout();
    let p = lay.n_points;
    let y = data.y.to_vec();
    let n = y.len();
    let n_test = arms.n_test;
    let n_cal = n.saturating_sub(n_test);
    if n_cal < 3 || k < 2 || k > n_cal {
        return Err(SpxError::field(
            "config",
            "spektron.experiment.table_n",
            format!("{k} must be in 2..={n_cal} ({n} samples, n_test {n_test})"),
        ));
    }
    let modality = input.modality.code();
    let mods = |c: usize| vec![modality; c];
    let lora = FinetuneConfig {
        mode: FinetuneMode::Lora,
        epochs: ec.transfer_epochs,
        ..arms.finetune.clone()
    };
    let ttt_cfg = finetune::TttConfig {
        steps: max_steps,
        ..arms.ttt.clone()
    };
    let t0 = Instant::now();
    let mut acc = Acc::default();
    let first = arms.baselines.first_repeat;
    for s in first..first + ec.repeats {
        on_progress(&format!("repetition {}", s + 1));
        let sp = Split::new(s, n, n_test);
        let cm = if ec.centre {
            Centring::fit(&take(&xs, &sp.cal, p), p)
        } else {
            Centring::identity(p)
        };
        let xc = cm.apply(&take(&xs, &sp.cal, p));
        let yc: Vec<f32> = sp.cal.iter().map(|&r| y[r] as f32).collect();
        let xt_test = cm.apply(&take(&xt, &sp.test, p));
        let unlabelled_target = if ec.adapt_unlabelled {
            let mut u = cm.apply(&take(&xt, &sp.cal, p));
            u.extend_from_slice(&xt_test);
            u
        } else {
            Vec::new()
        };
        let (master, mrep) = experiment::calibrate_master(
            arms,
            input.checkpoint,
            &MasterInput {
                xc: &xc,
                yc: &yc,
                unlabelled_target: &unlabelled_target,
                modality,
                repetition: s,
            },
            device,
            cfg.seed,
        )?;
        let yt = ndarray::Array1::from(sp.test.iter().map(|&r| y[r]).collect::<Vec<_>>());
        let score = |m: &SpektronModel, rep: &FinetuneReport| {
            let pred = finetune::predict(
                &m.valid(),
                &lay,
                &xt_test,
                &mods(sp.test.len()),
                rep,
                device,
            );
            let yh = ndarray::ArrayView1::from(&pred);
            (rmsep(yt.view(), yh), r2(yt.view(), yh))
        };
        // Few-shot start: LoRA on the first k transfer rows, seeded as E4's LoRA arm.
        let tr = sp.transfer(k);
        let xtr = cm.apply(&take(&xt, &tr, p));
        let ytr: Vec<f32> = tr.iter().map(|&r| y[r] as f32).collect();
        let ls = sub_seed(cfg.seed, s, 3, k);
        let _ = seeded(device, ls);
        let (few, frep) = finetune::finetune_scaled(
            master.clone(),
            &lay,
            &Labelled {
                x: &xtr,
                y: &ytr,
                modality: &mods(k),
            },
            &lora,
            device,
            ls,
            Some((&mrep.y_mean, &mrep.y_std)),
        )?;
        for (name, start, rep, arm) in [
            ("zero_shot", master, &mrep, 2u64),
            ("few_shot", few, &frep, 7u64),
        ] {
            let ts = sub_seed(cfg.seed, s, arm, if arm == 2 { 0 } else { k });
            let _ = seeded(device, ts);
            finetune::ttt_observed(
                start,
                &lay,
                &xt_test,
                &mods(sp.test.len()),
                &ttt_cfg,
                arms.mask_block,
                device,
                ts,
                |step, m| {
                    if steps.binary_search(&step).is_ok() {
                        acc.push(name, step, score(m, rep));
                    }
                    Ok(())
                },
            )?;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut rows: Vec<StepRow> = acc
        .0
        .iter()
        .map(|(m, st, v)| aggregate(m, *st, v))
        .collect();
    for (m, nn) in [("recentre_test", 0), ("sbc", k)] {
        if let Some(c) = base.get(m, nn) {
            rows.push(StepRow {
                setting: m.to_string(),
                steps: 0,
                rmsep_mean: c.rmsep_mean,
                rmsep_std: c.rmsep_std,
                r2_mean: c.r2_mean,
                rmsep: c.rmsep.clone(),
            });
        }
    }
    let stem = safe_component(&format!("e9_{stem}"));
    let title = format!("E9: {title}");
    let mut files = Vec::new();
    let path = dir.join(format!("{stem}.csv"));
    write_csv(&path, &rows)?;
    files.push(path);
    let markdown = markdown(&title, &rows, k, ec.repeats);
    let path = dir.join(format!("{stem}.md"));
    crate::io::write_atomic(&path, |w| std::io::Write::write_all(w, markdown.as_bytes()))?;
    files.push(path);
    let path = dir.join(format!("{stem}.png"));
    plot(&path, &title, &rows, k, ec.repeats)?;
    files.push(path);
    let mut rep = TttStepsReport {
        experiment: "E9",
        data: input.data.map(|d| d.display().to_string()),
        source: input.source.to_string(),
        target: input.target.to_string(),
        property,
        pretrained: input.checkpoint.map(|d| d.display().to_string()),
        repeats: ec.repeats,
        n_test,
        n_transfer: k,
        steps,
        ttt_scope: arms.ttt.scope,
        ttt_lr: arms.ttt.lr,
        model_seconds: secs,
        config: input.config_file.display().to_string(),
        rows,
        files: Vec::new(),
        markdown,
    };
    let path = dir.join(format!("{stem}.json"));
    report::write_json(&path, &rep)?;
    files.push(path);
    rep.files = files;
    Ok(rep)
}

/// Row label of a setting.
fn label(setting: &str, k: usize) -> String {
    match setting {
        "zero_shot" => "0-shot: master + TTT".to_string(),
        "few_shot" => format!("few-shot: master + LoRA on {k} target spectra + TTT"),
        "recentre_test" => "PLS + re-centring on the unlabelled test spectra".to_string(),
        "sbc" => format!("PLS + SBC on {k} target spectra"),
        m => report::method_label(m).to_string(),
    }
}

/// `setting,steps,rmsep_mean,rmsep_std,r2_mean`.
fn write_csv(path: &Path, rows: &[StepRow]) -> Result<(), SpxError> {
    let mut csv = String::from("setting,steps,rmsep_mean,rmsep_std,r2_mean\n");
    for r in rows {
        let _ = writeln!(
            csv,
            "{},{},{:.6},{:.6},{:.6}",
            r.setting, r.steps, r.rmsep_mean, r.rmsep_std, r.r2_mean
        );
    }
    write_atomic(path, |w| std::io::Write::write_all(w, csv.as_bytes()))
}

/// Rows = settings, columns = TTT steps; the classical references in one column.
fn markdown(title: &str, rows: &[StepRow], k: usize, repeats: usize) -> String {
    let mut steps: Vec<usize> = rows
        .iter()
        .filter(|r| r.setting.ends_with("_shot"))
        .map(|r| r.steps)
        .collect();
    steps.sort_unstable();
    steps.dedup();
    let mut md = format!(
        "### {title}\n\nRMSEP mean ± sd (R² mean) over {repeats} seeded splits vs test-time-training steps on the unlabelled target test spectra.\n\n| setting |"
    );
    for s in &steps {
        let _ = write!(md, " {s} steps |");
    }
    md.push_str("\n|---|");
    for _ in &steps {
        md.push_str("---|");
    }
    md.push('\n');
    for setting in ["zero_shot", "few_shot"] {
        let _ = write!(md, "| {} |", label(setting, k));
        for &st in &steps {
            match rows.iter().find(|r| r.setting == setting && r.steps == st) {
                Some(r) => {
                    let _ = write!(
                        md,
                        " {:.4} ± {:.4} ({:.2}) |",
                        r.rmsep_mean, r.rmsep_std, r.r2_mean
                    );
                }
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    for r in rows.iter().filter(|r| !r.setting.ends_with("_shot")) {
        let _ = writeln!(
            md,
            "| {} (no TTT) | {:.4} ± {:.4} ({:.2}) |{}",
            label(&r.setting, k),
            r.rmsep_mean,
            r.rmsep_std,
            r.r2_mean,
            " – |".repeat(steps.len().saturating_sub(1))
        );
    }
    md
}

/// RMSEP (mean ± sd over the splits) vs TTT steps, the classical references as flat lines.
fn plot(
    path: &Path,
    title: &str,
    rows: &[StepRow],
    k: usize,
    repeats: usize,
) -> Result<(), SpxError> {
    let mut lp = iplot::LinePlot::new(
        format!(
            "{title} ({repeats} seeded split{}, error bars ± 1 sd)",
            if repeats == 1 { "" } else { "s" }
        ),
        "test-time-training steps on the unlabelled target test spectra",
        "RMSEP on target test spectra (property units)",
    );
    lp.legend_outside = true;
    let shot: Vec<&StepRow> = rows
        .iter()
        .filter(|r| r.setting.ends_with("_shot"))
        .collect();
    let (lo, hi) = shot
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), r| {
            (a.min(r.steps as f64), b.max(r.steps as f64))
        });
    for setting in ["zero_shot", "few_shot"] {
        let pts: Vec<&&StepRow> = shot.iter().filter(|r| r.setting == setting).collect();
        let mut s = iplot::Series::points_with_errors(
            label(setting, k),
            pts.iter().map(|r| r.steps as f64).collect(),
            pts.iter().map(|r| r.rmsep_mean).collect(),
            pts.iter().map(|r| r.rmsep_std).collect(),
        );
        s.mark = iplot::Mark::LineAndPoints;
        lp.series.push(s);
    }
    for r in rows.iter().filter(|r| !r.setting.ends_with("_shot")) {
        lp.series.push(iplot::Series::line(
            format!("{} (no TTT)", label(&r.setting, k)),
            vec![lo, hi],
            vec![r.rmsep_mean, r.rmsep_mean],
        ));
    }
    iplot::line_plot(path, &lp)
}
