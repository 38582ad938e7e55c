//! E1: pretraining ablation (`spx spektron experiment pretraining`). The same model is
//! pretrained three ways on one synthetic corpus (`[spektron.synth]`, made in the run) with
//! `[spektron.pretrain]`: `none` (random weights), `msrp` (masked spectral reconstruction only:
//! the other loss weights set to 0) and `all` (every `[spektron.loss]` weight as configured);
//! each is then put through E4's model arms ([`experiment::run_model_arms`]) at N =
//! `spektron.experiment.table_n` on the seeded splits of the classical rows. The `none` rows are
//! E4 without `--checkpoint` (same seeds). Pretraining outputs are working files, removed at the
//! end; the report keeps each variant's last validation MSRP.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use indicatif::ProgressBar;
use serde::Serialize;

use super::baselines::Cell;
use super::data::corpus::CorpusConfig;
use super::data::synth::{self, SynthConfig};
use super::experiment::{self, Input, Prepared, Settings, Task};
use super::model::LossConfig;
use super::model::pretrain;
use super::report;
use crate::error::SpxError;
use crate::io::atomic::{Stage, safe_component};
use crate::io::{plot as iplot, write_atomic};

/// Pretraining variants, in table order.
pub const VARIANTS: &[&str] = &["none", "msrp", "all"];

/// What pretraining reads (besides the model of the arms).
#[derive(Clone, Copy, Debug)]
pub struct PretrainInput<'a> {
    pub loss: &'a LossConfig,
    pub pretrain: &'a super::model::PretrainConfig,
    pub synth: &'a SynthConfig,
    pub corpus: &'a CorpusConfig,
}

/// One variant's pretraining.
#[derive(Clone, Debug, Serialize)]
pub struct VariantRun {
    pub variant: String,
    pub steps: usize,
    /// Last validation terms' MSRP (None without pretraining or validation).
    pub val_msrp: Option<f64>,
    pub pretrain_seconds: f64,
}

/// One (variant, arm, N) cell.
#[derive(Clone, Debug, Serialize)]
pub struct VariantCell {
    pub variant: String,
    #[serde(flatten)]
    pub cell: Cell,
}

/// `e1_<stem>.json`.
#[derive(Clone, Debug, Serialize)]
pub struct AblationReport {
    pub experiment: &'static str,
    pub data: Option<String>,
    pub source: String,
    pub target: String,
    pub property: String,
    pub repeats: usize,
    pub n_test: usize,
    pub n_transfer: usize,
    pub corpus_spectra: usize,
    pub variants: Vec<VariantRun>,
    /// Classical reference rows (SBC at N, re-centring on the unlabelled test spectra).
    pub classical: Vec<Cell>,
    pub cells: Vec<VariantCell>,
    pub config: String,
    #[serde(skip)]
    pub files: Vec<PathBuf>,
    #[serde(skip)]
    pub markdown: String,
}

/// The loss weights of a variant (`msrp`: every weight but MSRP's set to 0).
pub fn variant_loss(variant: &str, loss: &LossConfig) -> LossConfig {
    let mut l = loss.clone();
    if variant == "msrp" {
        l.contrastive = 0.0;
        l.denoise = 0.0;
        l.ot = 0.0;
        l.physics = 0.0;
        l.vib = 0.0;
        l.moe = 0.0;
    }
    l
}

/// E1 on the data of `input`; working and report files go into `stage`.
pub fn run(
    input: &Input,
    cfg: Settings<'_>,
    pre: PretrainInput<'_>,
    device: &Device,
    stage: &Stage,
    mut on_progress: impl FnMut(&str),
) -> Result<AblationReport, SpxError> {
    let arms = cfg.arms;
    let ec = arms.experiment;
    if pre.corpus.target_points != arms.model.n_points {
        return Err(SpxError::field(
            "config",
            "spektron.corpus.target_points",
            format!(
                "{} must equal spektron.model.n_points ({})",
                pre.corpus.target_points, arms.model.n_points
            ),
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
    let y = data.y.to_vec();
    let work = stage.dir().join("e1-work");
    std::fs::create_dir_all(&work).map_err(|e| SpxError::file(&work, e))?;
    let corpus = work.join("corpus.h5");
    on_progress("synthetic corpus");
    synth::write_synth_corpus(
        &corpus,
        cfg.seed,
        pre.synth,
        pre.corpus,
        &ProgressBar::hidden(),
    )?;
    let mut variants = Vec::new();
    let mut cells = Vec::new();
    for v in VARIANTS {
        let t0 = Instant::now();
        let (ckpt, val_msrp, steps) = if *v == "none" {
            (None, None, 0)
        } else {
            on_progress(&format!("pretraining: {v}"));
            let loss = variant_loss(v, pre.loss);
            let settings = pretrain::Settings {
                model: arms.model,
                loss: &loss,
                pretrain: pre.pretrain,
            };
            let out = work.join(format!("pretrain-{v}"));
            let (_, rep) = pretrain::pretrain(
                &corpus,
                &out,
                settings,
                device,
                cfg.seed,
                None,
                &ProgressBar::hidden(),
            )?;
            let val = rep
                .log
                .iter()
                .rev()
                .find_map(|e| e.val.as_ref())
                .map(|t| t.msrp);
            (Some(rep.checkpoint), val, rep.steps_done)
        };
        let pretrain_seconds = t0.elapsed().as_secs_f64();
        on_progress(&format!("model arms: {v}"));
        let c = experiment::run_model_arms(
            &xs,
            &xt,
            &y,
            &[k],
            arms,
            ckpt.as_deref(),
            input.modality.code(),
            device,
            cfg.seed,
            |_| {},
        )?;
        cells.extend(c.into_iter().map(|cell| VariantCell {
            variant: v.to_string(),
            cell,
        }));
        variants.push(VariantRun {
            variant: v.to_string(),
            steps,
            val_msrp,
            pretrain_seconds,
        });
    }
    std::fs::remove_dir_all(&work).map_err(|e| SpxError::file(&work, e))?;
    let classical: Vec<Cell> = [("recentre_test", 0), ("sbc", k)]
        .iter()
        .filter_map(|(m, n)| base.get(m, *n).cloned())
        .collect();
    let stem = safe_component(&format!("e1_{stem}"));
    let title = format!("E1: {title}");
    let dir = stage.dir();
    let mut files = Vec::new();
    let path = dir.join(format!("{stem}.csv"));
    write_csv(&path, &cells, &classical)?;
    files.push(path);
    let md = markdown(&title, &cells, &classical, &variants, k, ec.repeats);
    let path = dir.join(format!("{stem}.md"));
    write_atomic(&path, |w| std::io::Write::write_all(w, md.as_bytes()))?;
    files.push(path);
    let path = dir.join(format!("{stem}.png"));
    plot(&path, &title, &cells, &classical, k, ec.repeats)?;
    files.push(path);
    let mut rep = AblationReport {
        experiment: "E1",
        data: input.data.map(|d| d.display().to_string()),
        source: input.source.to_string(),
        target: input.target.to_string(),
        property,
        repeats: ec.repeats,
        n_test: arms.n_test,
        n_transfer: k,
        corpus_spectra: pre.synth.n,
        variants,
        classical,
        cells,
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

fn variant_label(v: &str) -> &'static str {
    match v {
        "none" => "no pretraining (random weights)",
        "msrp" => "pretrained, masked reconstruction only",
        "all" => "pretrained, all losses",
        _ => "?",
    }
}

/// The arms reported per variant (those present).
fn arm_names(cells: &[VariantCell]) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = Vec::new();
    for c in cells {
        let key = (c.cell.method.clone(), c.cell.n_transfer);
        if !v.contains(&key) {
            v.push(key);
        }
    }
    v
}

/// `variant,method,n_transfer,rmsep_mean,rmsep_std,r2_mean` (classical rows: variant `-`).
fn write_csv(path: &Path, cells: &[VariantCell], classical: &[Cell]) -> Result<(), SpxError> {
    let mut csv = String::from("variant,method,n_transfer,rmsep_mean,rmsep_std,r2_mean\n");
    let rows = cells
        .iter()
        .map(|c| (c.variant.as_str(), &c.cell))
        .chain(classical.iter().map(|c| ("-", c)));
    for (v, c) in rows {
        let _ = writeln!(
            csv,
            "{v},{},{},{:.6},{:.6},{:.6}",
            c.method, c.n_transfer, c.rmsep_mean, c.rmsep_std, c.r2_mean
        );
    }
    write_atomic(path, |w| std::io::Write::write_all(w, csv.as_bytes()))
}

/// Rows = pretraining variants, columns = model arms; classical references below.
fn markdown(
    title: &str,
    cells: &[VariantCell],
    classical: &[Cell],
    variants: &[VariantRun],
    k: usize,
    repeats: usize,
) -> String {
    let arms = arm_names(cells);
    let mut md = format!(
        "### {title}\n\nRMSEP mean ± sd (R² mean) over {repeats} seeded splits, N = {k} labelled target spectra where the arm uses them.\n\n| pretraining | steps | val MSRP |"
    );
    for (m, n) in &arms {
        let _ = write!(md, " {} (N={n}) |", report::method_label(m));
    }
    md.push_str("\n|---|---|---|");
    for _ in &arms {
        md.push_str("---|");
    }
    md.push('\n');
    for v in variants {
        let _ = write!(
            md,
            "| {} | {} | {} |",
            variant_label(&v.variant),
            v.steps,
            v.val_msrp.map_or("–".to_string(), |x| format!("{x:.4}"))
        );
        for (m, n) in &arms {
            match cells
                .iter()
                .find(|c| c.variant == v.variant && c.cell.method == *m && c.cell.n_transfer == *n)
            {
                Some(c) => {
                    let _ = write!(
                        md,
                        " {:.4} ± {:.4} ({:.2}) |",
                        c.cell.rmsep_mean, c.cell.rmsep_std, c.cell.r2_mean
                    );
                }
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    md.push_str("\nClassical references on the same splits:\n\n");
    for c in classical {
        let _ = writeln!(
            md,
            "- {} (N={}): {:.4} ± {:.4} ({:.2})",
            report::method_label(&c.method),
            c.n_transfer,
            c.rmsep_mean,
            c.rmsep_std,
            c.r2_mean
        );
    }
    md
}

/// RMSEP ± 1 sd per arm vs pretraining variant (x = 0 none, 1 MSRP only, 2 all losses).
fn plot(
    path: &Path,
    title: &str,
    cells: &[VariantCell],
    classical: &[Cell],
    k: usize,
    repeats: usize,
) -> Result<(), SpxError> {
    let mut lp = iplot::LinePlot::new(
        format!("{title} ({repeats} splits, ± 1 sd, N = {k})"),
        "pretraining: 0 = none, 1 = masked reconstruction only, 2 = all losses",
        "RMSEP on target test spectra (property units)",
    );
    lp.legend_outside = true;
    for (m, n) in arm_names(cells) {
        let pts: Vec<(f64, &Cell)> = VARIANTS
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                cells
                    .iter()
                    .find(|c| c.variant == *v && c.cell.method == m && c.cell.n_transfer == n)
                    .map(|c| (i as f64, &c.cell))
            })
            .collect();
        let mut s = iplot::Series::points_with_errors(
            report::method_label(&m),
            pts.iter().map(|p| p.0).collect(),
            pts.iter().map(|p| p.1.rmsep_mean).collect(),
            pts.iter().map(|p| p.1.rmsep_std).collect(),
        );
        s.mark = iplot::Mark::LineAndPoints;
        lp.series.push(s);
    }
    for c in classical {
        lp.series.push(iplot::Series::line(
            format!("{} (N={})", report::method_label(&c.method), c.n_transfer),
            vec![0.0, (VARIANTS.len() - 1) as f64],
            vec![c.rmsep_mean, c.rmsep_mean],
        ));
    }
    iplot::line_plot(path, &lp)
}
