//! Report writers of the Spektron pipelines: the classical-baselines table (CSV, Markdown, JSON,
//! PNG), the E3/E4 experiment tables, the pretraining loss log and curve, and JSON reports.
//! JSON is written through `serde_json::Value`, so object keys come out sorted.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::baselines::{BaselineReport, Cell, METHODS};
use super::model::checkpoint::LogEntry;
use super::model::pretrain::PretrainReport;
use super::supervised::arms::ROWS as SUPERVISED_ROWS;
use crate::error::SpxError;
use crate::io::{plot, write_atomic};

/// Model-arm method names (table order after the classical methods).
pub const ARMS: &[&str] = &[
    "spektron_master_on_master",
    "spektron_no_transfer",
    "spektron_ttt",
    "spektron_sbc",
    "pls_sbc_inputs",
    "spektron_residual",
    "spektron_residual_gated",
    "spektron_pls_head",
    "pls_head_linear",
    "cnn_sbc",
    "blend_spektron",
    "blend_cnn",
    "spektron_lora",
    "scratch",
];

/// Table label of a method or model arm.
pub fn method_label(m: &str) -> &'static str {
    match m {
        "no_transfer" => "no transfer (master model on target)",
        "recentre_test" => "re-centring on the unlabelled test spectra",
        "target_all" => "target PLS on the whole calibration set",
        "master_on_master" => "master model on master test spectra",
        "target_only" => "PLS on N labelled target spectra",
        "sbc" => "SBC (slope/bias on predictions)",
        "ds" => "DS (centred pinv + offset)",
        "pds" => "PDS (local PCR + offset)",
        "cca" => "CCA in PCA space",
        "recentre" => "re-centring on N unlabelled target spectra",
        "dipls" => "di-PLS (N unlabelled target)",
        "spektron_master_on_master" => "Spektron master model on master test spectra",
        "spektron_no_transfer" => "Spektron master model on target (no transfer)",
        "spektron_ttt" => "Spektron + TTT on the unlabelled target test spectra",
        "spektron_sbc" => "Spektron master + slope/bias on N labelled target spectra",
        "pls_sbc_inputs" => "PLS on the model's inputs + slope/bias on N target spectra",
        "spektron_residual" => "PLS + slope/bias + Spektron LoRA correction of its residuals",
        "spektron_residual_gated" => {
            "PLS + slope/bias + the LoRA correction scaled by a cross-validated factor"
        }
        "spektron_pls_head" => {
            "Spektron head started at PLS + slope/bias, LoRA on N target spectra"
        }
        "pls_head_linear" => "PLS latent variables re-weighted on N target spectra (no network)",
        "cnn_sbc" => "1-D CNN master + slope/bias on N labelled target spectra",
        "blend_spektron" => "PLS + slope/bias blended with Spektron master + slope/bias",
        "blend_cnn" => "PLS + slope/bias blended with 1-D CNN master + slope/bias",
        "spektron_lora" => "Spektron + LoRA on N labelled target spectra",
        "scratch" => "Spektron from scratch on N labelled target spectra",
        "cnn_master_on_master" => "1-D CNN (source-trained) on master test spectra",
        "cnn_no_transfer" => "1-D CNN (source-trained) on target (no transfer)",
        "cnn_transfer" => "1-D CNN fine-tuned on N labelled target spectra",
        "transformer_master_on_master" => "Transformer (source-trained) on master test spectra",
        "transformer_no_transfer" => "Transformer (source-trained) on target (no transfer)",
        "transformer_transfer" => "Transformer fine-tuned on N labelled target spectra",
        "lora_ct" => "LoRA-CT: Transformer + LoRA on N labelled target spectra",
        _ => "?",
    }
}

fn json_err(path: &Path, e: serde_json::Error) -> SpxError {
    SpxError::file(path, format!("JSON report: {e}"))
}

/// Pretty JSON of `value` with object keys sorted (through `serde_json::Value`).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), SpxError> {
    let v = serde_json::to_value(value).map_err(|e| json_err(path, e))?;
    let text = serde_json::to_vec_pretty(&v).map_err(|e| json_err(path, e))?;
    write_atomic(path, |w| w.write_all(&text))
}

/// `method,n_transfer,rmsep_mean,rmsep_std,r2_mean` rows (method names are plain words).
pub fn write_cells_csv(path: &Path, cells: &[Cell]) -> Result<(), SpxError> {
    let mut csv = String::from("method,n_transfer,rmsep_mean,rmsep_std,r2_mean\n");
    for c in cells {
        let _ = writeln!(
            csv,
            "{},{},{:.6},{:.6},{:.6}",
            c.method, c.n_transfer, c.rmsep_mean, c.rmsep_std, c.r2_mean
        );
    }
    write_atomic(path, |w| w.write_all(csv.as_bytes()))
}

/// CSV, Markdown, JSON and PNG of a classical-baselines report in `dir`; returns the files
/// written (in that order).
pub fn write_baselines(
    dir: &Path,
    stem: &str,
    title: &str,
    report: &BaselineReport,
    ns: &[usize],
) -> Result<Vec<PathBuf>, SpxError> {
    let mut files = Vec::new();
    let p = dir.join(format!("{stem}.csv"));
    write_cells_csv(&p, &report.cells)?;
    files.push(p);
    let p = dir.join(format!("{stem}.md"));
    let md = baselines_markdown(title, report, ns);
    write_atomic(&p, |w| w.write_all(md.as_bytes()))?;
    files.push(p);
    let p = dir.join(format!("{stem}.json"));
    let js = serde_json::to_string_pretty(report).map_err(|e| json_err(&p, e))?;
    write_atomic(&p, |w| w.write_all(js.as_bytes()))?;
    files.push(p);
    let p = dir.join(format!("{stem}.png"));
    // Linear axis without the no-transfer level (often 10× the rest): it goes in the title.
    // Mean ± 1 sd over the seeded splits (their count in the title), spelled-out method names in
    // a legend beside the axes (issue #17 item 4).
    let splits = report
        .cells
        .iter()
        .map(|c| c.rmsep.len())
        .max()
        .unwrap_or(0);
    let mut title = format!(
        "{title} ({splits} seeded split{}, ± 1 sd)",
        if splits == 1 { "" } else { "s" }
    );
    if let Some(c) = report.get("no_transfer", 0) {
        title.push_str(&format!("; no transfer {:.3}", c.rmsep_mean));
    }
    let mut lp = plot::LinePlot::new(
        title,
        "N labelled target transfer samples",
        "RMSEP on target test spectra (property units)",
    );
    lp.legend_outside = true;
    for m in &METHODS[4..] {
        let pts: Vec<&Cell> = ns.iter().filter_map(|&n| report.get(m, n)).collect();
        if !pts.is_empty() {
            lp.series.push(rmsep_vs_n(m, &pts));
        }
    }
    plot::line_plot(&p, &lp)?;
    files.push(p);
    Ok(files)
}

/// One method's RMSEP vs N: mean ± 1 sd over the splits, its spelled-out name, line and points.
fn rmsep_vs_n(method: &str, pts: &[&Cell]) -> plot::Series {
    let mut s = plot::Series::points_with_errors(
        method_label(method),
        pts.iter().map(|c| c.n_transfer as f64).collect(),
        pts.iter().map(|c| c.rmsep_mean).collect(),
        pts.iter().map(|c| c.rmsep_std).collect(),
    );
    s.mark = plot::Mark::LineAndPoints;
    s
}

/// The Markdown table of [`write_baselines`]: N = 0 rows as a list, then one row per method.
pub fn baselines_markdown(title: &str, report: &BaselineReport, ns: &[usize]) -> String {
    let mut md = format!("### {title}\n\nRMSEP mean (R² mean) over the repetitions.\n\n");
    for m in &METHODS[..4] {
        if let Some(c) = report.get(m, 0) {
            let _ = writeln!(
                md,
                "- {}: {:.4} (R² {:.2})",
                method_label(m),
                c.rmsep_mean,
                c.r2_mean
            );
        }
    }
    let _ = write!(md, "\n| method |");
    for n in ns {
        let _ = write!(md, " N={n} |");
    }
    let _ = write!(md, "\n|---|");
    for _ in ns {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    for m in &METHODS[4..] {
        let _ = write!(md, "| {} |", method_label(m));
        for &n in ns {
            match report.get(m, n) {
                Some(c) => {
                    let _ = write!(md, " {:.4} ({:.2}) |", c.rmsep_mean, c.r2_mean);
                }
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    md
}

/// Rows = methods (classical, then model arms), columns = N = 0 and `ns`; cells
/// "RMSEP mean ± sd (R²)".
pub fn experiment_markdown(title: &str, cells: &[Cell], ns: &[usize]) -> String {
    let mut cols = vec![0usize];
    cols.extend(ns.iter().copied());
    let mut md = format!(
        "### {title}\n\nRMSEP mean ± sd (R² mean) over the repetitions; N = labelled/paired target transfer samples.\n\n| method |"
    );
    for n in &cols {
        let _ = write!(md, " N={n} |");
    }
    md.push_str("\n|---|");
    for _ in &cols {
        md.push_str("---|");
    }
    md.push('\n');
    for m in METHODS.iter().chain(ARMS).chain(SUPERVISED_ROWS) {
        if !cells.iter().any(|c| c.method == *m) {
            continue;
        }
        let _ = write!(md, "| {} |", method_label(m));
        for &n in &cols {
            match cells.iter().find(|c| c.method == *m && c.n_transfer == n) {
                Some(c) => {
                    let _ = write!(
                        md,
                        " {:.4} ± {:.4} ({:.2}) |",
                        c.rmsep_mean, c.rmsep_std, c.r2_mean
                    );
                }
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    md
}

/// RMSEP vs N (log axis) of the N > 0 methods and arms, mean ± 1 sd over the splits (the count
/// in the title), spelled-out method names in a legend beside the axes; the N = 0 levels go in
/// the title.
pub fn experiment_plot(
    path: &Path,
    title: &str,
    cells: &[Cell],
    ns: &[usize],
) -> Result<(), SpxError> {
    let cell = |m: &str| {
        cells
            .iter()
            .find(|c| c.method == m && c.n_transfer == 0)
            .map_or(f64::NAN, |c| c.rmsep_mean)
    };
    let splits = cells.iter().map(|c| c.rmsep.len()).max().unwrap_or(0);
    let mut lp = plot::LinePlot::new(
        format!(
            "{title} ({splits} seeded split{}, ± 1 sd); N=0: no transfer {:.3}, Spektron TTT {:.3}",
            if splits == 1 { "" } else { "s" },
            cell("no_transfer"),
            cell("spektron_ttt")
        ),
        "N labelled target transfer samples",
        "RMSEP on target test spectra (property units)",
    );
    lp.log_y = true;
    lp.legend_outside = true;
    for m in METHODS[4..].iter().chain(&[
        "spektron_sbc",
        "spektron_residual",
        "spektron_residual_gated",
        "spektron_pls_head",
        "pls_head_linear",
        "cnn_sbc",
        "blend_spektron",
        "blend_cnn",
        "spektron_lora",
        "scratch",
        "cnn_transfer",
        "transformer_transfer",
        "lora_ct",
    ]) {
        let pts: Vec<&Cell> = ns
            .iter()
            .filter_map(|&n| cells.iter().find(|c| c.method == *m && c.n_transfer == n))
            .collect();
        if !pts.is_empty() {
            lp.series.push(rmsep_vs_n(m, &pts));
        }
    }
    plot::line_plot(path, &lp)
}

/// Pretraining loss log (`loss_log.json`) and loss curve (`loss_curve.png`: train total and
/// MSRP, validation MSRP) in `dir`.
pub fn write_loss_files(dir: &Path, rep: &PretrainReport) -> Result<(PathBuf, PathBuf), SpxError> {
    let json = dir.join("loss_log.json");
    let text = serde_json::to_vec_pretty(rep).map_err(|e| json_err(&json, e))?;
    write_atomic(&json, |w| w.write_all(&text))?;
    let step = |e: &LogEntry| e.step as f64;
    let mut series = vec![
        plot::Series::line(
            "train total",
            rep.log.iter().map(step).collect(),
            rep.log.iter().map(|e| e.train.total).collect(),
        ),
        plot::Series::line(
            "train MSRP",
            rep.log.iter().map(step).collect(),
            rep.log.iter().map(|e| e.train.msrp).collect(),
        ),
    ];
    let mut vx = Vec::new();
    let mut vy = Vec::new();
    if let Some(v) = &rep.initial_val {
        vx.push(0.0);
        vy.push(v.msrp);
    }
    for e in &rep.log {
        if let Some(v) = &e.val {
            vx.push(step(e));
            vy.push(v.msrp);
        }
    }
    series.push(plot::Series::line("validation MSRP", vx, vy));
    let png = dir.join("loss_curve.png");
    let mut lp = plot::LinePlot::new("Spektron pretraining", "step", "loss");
    lp.series = series;
    lp.log_y = true;
    plot::line_plot(&png, &lp)?;
    Ok((json, png))
}
