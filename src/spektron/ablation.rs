//! The driver every pretraining ablation shares (E1 pretraining, E2 masking, E7 architecture,
//! E8 losses): one synthetic corpus (`[spektron.synth]`, made in the run), then per variant a
//! model built and pretrained as the variant says (`[spektron.pretrain]`), put through E4's model
//! arms ([`experiment::run_model_arms`]) at N = `spektron.experiment.table_n` on the seeded
//! splits of the classical rows. Pretraining outputs are working files, removed at the end.
//! Also the ablations' report writers: CSV (`variant,method,n_transfer,…`), Markdown (variants ×
//! arms, with per-variant columns of the experiment) and the RMSEP-per-variant plot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use indicatif::ProgressBar;
use serde::Serialize;

use super::baselines::Cell;
use super::data::corpus::CorpusConfig;
use super::data::synth::{self, SynthConfig};
use super::experiment::{self, ArmSettings, Input, Prepared, Settings, Task};
use super::model::pretrain;
use super::model::{LossConfig, ModelConfig, PretrainConfig};
use super::report;
use crate::error::SpxError;
use crate::io::atomic::safe_component;
use crate::io::{plot as iplot, write_atomic};

/// What pretraining reads (besides the model of the arms).
#[derive(Clone, Copy, Debug)]
pub struct PretrainInput<'a> {
    pub loss: &'a LossConfig,
    pub pretrain: &'a PretrainConfig,
    pub synth: &'a SynthConfig,
    pub corpus: &'a CorpusConfig,
}

/// One arm of an ablation: the model it builds and how it is pretrained.
#[derive(Clone, Debug)]
pub struct Variant {
    /// Key in the CSV/JSON (`variant` column).
    pub name: String,
    /// Row label of the Markdown table.
    pub label: String,
    /// Short label on the plot's x axis.
    pub axis: String,
    pub model: ModelConfig,
    pub loss: LossConfig,
    /// Pretrain on the corpus (false: the arms start from random weights).
    pub pretrain: bool,
}

/// Physics-violation rate of a model's reconstructions (E8).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Violation {
    /// Fraction of reconstructed points violating either rule.
    pub rate: f64,
    /// Fraction bending more sharply than the measured spectrum anywhere does.
    pub roughness: f64,
    /// Fraction outside the measured spectrum's intensity range (± 5 % of it).
    pub range: f64,
    /// Reconstructed spectra scored.
    pub spectra: usize,
}

/// One variant's pretraining (and what the experiment measured about it).
#[derive(Clone, Debug, Serialize)]
pub struct VariantRun {
    pub variant: String,
    pub steps: usize,
    /// Last validation terms' MSRP (None without pretraining or validation).
    pub val_msrp: Option<f64>,
    pub pretrain_seconds: f64,
    /// Trainable parameters of the variant's model (E7).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<usize>,
    /// Wall time of the model arms of the variant (E7).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arms_seconds: Option<f64>,
    /// Physics violations of the pretrained model's reconstructions (E8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub physics_violation: Option<Violation>,
}

/// One (variant, arm, N) cell.
#[derive(Clone, Debug, Serialize)]
pub struct VariantCell {
    pub variant: String,
    #[serde(flatten)]
    pub cell: Cell,
}

/// `<stem>.json` of an ablation.
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

/// A pretrained (or random) variant, as [`run`]'s `inspect` hook sees it.
pub struct Trained<'a> {
    pub index: usize,
    pub variant: &'a Variant,
    /// The pretraining checkpoint (None without pretraining).
    pub checkpoint: Option<&'a Path>,
    /// The task's model-input spectra (source, target), as the arms read them.
    pub prepared: &'a Prepared,
}

/// How an experiment names and presents its ablation.
pub struct Presentation<'a> {
    /// `E1`, `E2`, …
    pub experiment: &'static str,
    /// File-name tag (`e1`, …).
    pub tag: &'a str,
    /// Header of the variant column (also the plot axis' name).
    pub variant_header: &'a str,
    /// Extra per-variant columns: header and one cell per variant.
    pub columns: Vec<(String, Vec<String>)>,
}

/// What [`run`] measured: the task, one [`VariantRun`] per variant, the cells of the model arms
/// per variant, the classical reference rows, and the wall time of each variant's model arms.
pub struct Ablation {
    pub prepared: Prepared,
    pub runs: Vec<VariantRun>,
    pub cells: Vec<VariantCell>,
    pub classical: Vec<Cell>,
    pub arms_seconds: Vec<f64>,
}

/// Run `variants` on the data of `input` (working files in `<tag>-work` inside `dir`,
/// removed at the end); `inspect` sees each variant after its pretraining (while its checkpoint
/// exists) and may fill in [`VariantRun`]'s optional fields.
#[allow(clippy::too_many_arguments)]
pub fn run(
    input: &Input,
    cfg: Settings<'_>,
    pre: PretrainInput<'_>,
    variants: &[Variant],
    tag: &str,
    device: &Device,
    dir: &Path,
    mut on_progress: impl FnMut(&str),
    mut inspect: impl FnMut(&Trained<'_>, &mut VariantRun) -> Result<(), SpxError>,
) -> Result<Ablation, SpxError> {
    let arms = cfg.arms;
    if let Some(v) = variants
        .iter()
        .find(|v| pre.corpus.target_points != v.model.n_points)
    {
        return Err(SpxError::field(
            "config",
            "spektron.corpus.target_points",
            format!(
                "{} must equal spektron.model.n_points ({})",
                pre.corpus.target_points, v.model.n_points
            ),
        ));
    }
    let k = arms.experiment.table_n;
    let prepared = experiment::prepare_task(input, &cfg, &[k])?;
    let y = prepared.task.data.y.to_vec();
    let work = dir.join(format!("{tag}-work"));
    on_progress("synthetic corpus");
    let corpus = make_corpus(&work, cfg.seed, &pre)?;
    let mut runs = Vec::new();
    let mut cells = Vec::new();
    let mut arms_seconds = Vec::new();
    for (index, v) in variants.iter().enumerate() {
        let t0 = Instant::now();
        let (ckpt, val_msrp, steps) = if v.pretrain {
            on_progress(&format!("pretraining: {}", v.name));
            pretrain_variant(&corpus, &work, v, &pre, device, cfg.seed)?
        } else {
            (None, None, 0)
        };
        let pretrain_seconds = t0.elapsed().as_secs_f64();
        let mut run = VariantRun {
            variant: v.name.clone(),
            steps,
            val_msrp,
            pretrain_seconds,
            parameters: None,
            arms_seconds: None,
            physics_violation: None,
        };
        inspect(
            &Trained {
                index,
                variant: v,
                checkpoint: ckpt.as_deref(),
                prepared: &prepared,
            },
            &mut run,
        )?;
        on_progress(&format!("model arms: {}", v.name));
        let t1 = Instant::now();
        let c = experiment::run_model_arms(
            &prepared.xs,
            &prepared.xt,
            &y,
            &[k],
            ArmSettings {
                model: &v.model,
                ..arms
            },
            ckpt.as_deref(),
            input.modality.code(),
            device,
            cfg.seed,
            |_| {},
        )?;
        arms_seconds.push(t1.elapsed().as_secs_f64());
        cells.extend(c.into_iter().map(|cell| VariantCell {
            variant: v.name.clone(),
            cell,
        }));
        runs.push(run);
    }
    std::fs::remove_dir_all(&work).map_err(|e| SpxError::file(&work, e))?;
    let classical: Vec<Cell> = [("recentre_test", 0), ("sbc", k)]
        .iter()
        .filter_map(|(m, n)| prepared.base.get(m, *n).cloned())
        .collect();
    Ok(Ablation {
        prepared,
        runs,
        cells,
        classical,
        arms_seconds,
    })
}

/// The `steps` column of a report (pretraining steps per variant).
pub fn steps_column(runs: &[VariantRun]) -> (String, Vec<String>) {
    (
        "steps".to_string(),
        runs.iter().map(|r| r.steps.to_string()).collect(),
    )
}

/// A column of each variant's last validation MSRP (`–` without one), headed `header`.
pub fn val_msrp_column(runs: &[VariantRun], header: &str) -> (String, Vec<String>) {
    (
        header.to_string(),
        runs.iter()
            .map(|r| r.val_msrp.map_or("–".to_string(), |x| format!("{x:.4}")))
            .collect(),
    )
}

/// Create `work` and write the synthetic pretraining corpus (`[spektron.synth]`, `seed`) into it.
pub fn make_corpus(work: &Path, seed: u64, pre: &PretrainInput<'_>) -> Result<PathBuf, SpxError> {
    std::fs::create_dir_all(work).map_err(|e| SpxError::file(work, e))?;
    let corpus = work.join("corpus.h5");
    synth::write_synth_corpus(&corpus, seed, pre.synth, pre.corpus, &ProgressBar::hidden())?;
    Ok(corpus)
}

/// Pretrain `v` on `corpus` (checkpoints under `work/pretrain-<name>`): its last checkpoint,
/// last validation MSRP and steps done.
pub fn pretrain_variant(
    corpus: &Path,
    work: &Path,
    v: &Variant,
    pre: &PretrainInput<'_>,
    device: &Device,
    seed: u64,
) -> Result<(Option<PathBuf>, Option<f64>, usize), SpxError> {
    let settings = pretrain::Settings {
        model: &v.model,
        loss: &v.loss,
        pretrain: pre.pretrain,
    };
    let out = work.join(format!("pretrain-{}", v.name));
    let (_, rep) = pretrain::pretrain(
        corpus,
        &out,
        settings,
        device,
        seed,
        None,
        &ProgressBar::hidden(),
    )?;
    let val = rep
        .log
        .iter()
        .rev()
        .find_map(|e| e.val.as_ref())
        .map(|t| t.msrp);
    Ok((Some(rep.checkpoint), val, rep.steps_done))
}

/// Write `<tag>_<stem>.{csv,md,png,json}` of an ablation into `dir` (a staging directory: the
/// caller commits it; the report's `files` are paths in `dir`).
pub fn report(
    input: &Input,
    cfg: &Settings<'_>,
    corpus_spectra: usize,
    ab: Ablation,
    variants: &[Variant],
    pres: &Presentation<'_>,
    dir: &Path,
) -> Result<AblationReport, SpxError> {
    let ec = cfg.arms.experiment;
    let k = ec.table_n;
    let Ablation {
        prepared:
            Prepared {
                task:
                    Task {
                        title,
                        stem,
                        property,
                        ..
                    },
                ..
            },
        runs,
        cells,
        classical,
        ..
    } = ab;
    let stem = safe_component(&format!("{}_{stem}", pres.tag));
    let title = format!("{}: {title}", pres.experiment);
    let mut files = Vec::new();
    let path = dir.join(format!("{stem}.csv"));
    write_csv(&path, &cells, &classical)?;
    files.push(path);
    let md = markdown(&title, &cells, &classical, variants, pres, k, ec.repeats);
    let path = dir.join(format!("{stem}.md"));
    write_atomic(&path, |w| std::io::Write::write_all(w, md.as_bytes()))?;
    files.push(path);
    let path = dir.join(format!("{stem}.png"));
    plot(
        &path,
        &title,
        &cells,
        &classical,
        variants,
        pres.variant_header,
        k,
        ec.repeats,
    )?;
    files.push(path);
    let mut rep = AblationReport {
        experiment: pres.experiment,
        data: input.data.map(|d| d.display().to_string()),
        source: input.source.to_string(),
        target: input.target.to_string(),
        property,
        repeats: ec.repeats,
        n_test: cfg.arms.n_test,
        n_transfer: k,
        corpus_spectra,
        variants: runs,
        classical,
        cells,
        config: input.config_file.display().to_string(),
        files: Vec::new(),
        markdown: md,
    };
    let path = dir.join(format!("{stem}.json"));
    report::write_json(&path, &rep)?;
    files.push(path);
    rep.files = files;
    Ok(rep)
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

/// Rows = variants (with the experiment's extra columns), columns = model arms; classical
/// references below.
fn markdown(
    title: &str,
    cells: &[VariantCell],
    classical: &[Cell],
    variants: &[Variant],
    pres: &Presentation<'_>,
    k: usize,
    repeats: usize,
) -> String {
    let arms = arm_names(cells);
    let mut md = format!(
        "### {title}\n\nRMSEP mean ± sd (R² mean) over {repeats} seeded splits, N = {k} labelled target spectra where the arm uses them.\n\n| {} |",
        pres.variant_header
    );
    for (h, _) in &pres.columns {
        let _ = write!(md, " {h} |");
    }
    for (m, n) in &arms {
        let _ = write!(md, " {} (N={n}) |", report::method_label(m));
    }
    md.push_str("\n|---|");
    for _ in 0..pres.columns.len() + arms.len() {
        md.push_str("---|");
    }
    md.push('\n');
    for (i, v) in variants.iter().enumerate() {
        let _ = write!(md, "| {} |", v.label);
        for (_, col) in &pres.columns {
            let _ = write!(md, " {} |", col.get(i).map_or("–", String::as_str));
        }
        for (m, n) in &arms {
            match cells
                .iter()
                .find(|c| c.variant == v.name && c.cell.method == *m && c.cell.n_transfer == *n)
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

/// RMSEP ± 1 sd per arm vs variant (x = the variant's index, named on the axis).
#[allow(clippy::too_many_arguments)]
fn plot(
    path: &Path,
    title: &str,
    cells: &[VariantCell],
    classical: &[Cell],
    variants: &[Variant],
    header: &str,
    k: usize,
    repeats: usize,
) -> Result<(), SpxError> {
    let axis = variants
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{i} = {}", v.axis))
        .collect::<Vec<_>>()
        .join(", ");
    let mut lp = iplot::LinePlot::new(
        format!(
            "{title} ({repeats} seeded split{}, ± 1 sd, N = {k})",
            if repeats == 1 { "" } else { "s" }
        ),
        format!("{header}: {axis}"),
        "RMSEP on target test spectra (property units)",
    );
    lp.legend_outside = true;
    for (m, n) in arm_names(cells) {
        let pts: Vec<(f64, &Cell)> = variants
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                cells
                    .iter()
                    .find(|c| c.variant == v.name && c.cell.method == m && c.cell.n_transfer == n)
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
            vec![0.0, variants.len().saturating_sub(1) as f64],
            vec![c.rmsep_mean, c.rmsep_mean],
        ));
    }
    iplot::line_plot(path, &lp)
}
