//! Measure DIP settings against the Tikhonov baseline on simulated sources, through the same
//! code path as `spx dip recon --truth` (CSV, QC, operator, DIP and baseline in one run).
//!
//! ```sh
//! DIP_KINDS=qso,ice,star DIP_DENSITIES=65,250,1000 DIP_SEEDS=1,2,3 \
//!   DIP_VARIANTS='defaults:;old:dip.prior.smooth_output=false,dip.prior.smoothness_weight=0' \
//!   cargo run --release --example dip_tune
//! ```
//!
//! `DIP_VARIANTS`: `;`-separated `name:key=value,key=value` (config assignments on top of the
//! defaults, split at commas outside brackets so that list values stay whole; empty = the
//! defaults). `DIP_BASE`: assignments applied to every variant (e.g.
//! `dip.resolution=1000,dip.net.filters=16` for quick proxies). Kinds `qso|ice|star` are drawn with
//! the issue's noise model (σ = U(2 %, 10 %)·flux + 10/25 µJy floor, 3 % flagged rows with
//! corrupted flux, no glitches); kind `default` is the source the defaults were first tuned on.
//! Prints one CSV row per source and variant, then per (variant, kind, density) the median RMS
//! error of the written spectrum against the truth smoothed to λ/R for DIP and Tikhonov, and the
//! worst DIP/Tikhonov ratio. `DIP_DUMP=DIR` also writes, per source and variant,
//! `DIR/VARIANT_KIND_DENSITY_SEED.csv` (wavelength, smoothed truth, DIP, Tikhonov) and
//! `…_obs.csv` (the observations after QC with both models' predictions), for diagnosis.
//! `DIP_HISTORY=DIR` writes `DIR/VARIANT_KIND_DENSITY_SEED_loss.csv` (per epoch: total loss, data
//! term, regulariser, χ²/M of the first member).

use std::collections::BTreeMap;

use burn::tensor::Device;
use spx::backend;
use spx::config::{Config, ConfigBuilder};
use spx::dip::forward::chi2;
use spx::dip::grid::linspace;
use spx::dip::input::median;
use spx::dip::recon::{self, LineScore};
use spx::dip::simulate::{FeatureKind, simulate_kind, smooth_to_resolution};
use spx::logging::Progress;

fn list(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `key=value,key=value` split at the commas outside brackets (a list value such as
/// `dip.prior.refine_factors=[1.0,3.0]` stays whole).
fn assignments(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut from) = (Vec::new(), 0i32, 0);
    for (i, ch) in s.char_indices() {
        match ch {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[from..]);
    out
}

fn config(assignments: &[&str]) -> Config {
    let mut b = ConfigBuilder::new().expect("config");
    for a in assignments.iter().filter(|a| !a.trim().is_empty()) {
        b = b.set(a.trim()).unwrap_or_else(|e| panic!("{a}: {e}"));
    }
    b.build().expect("config")
}

/// Mean peak ratio over emission features and mean depth ratio over absorptions.
fn peaks(lines: &[LineScore]) -> (f64, f64) {
    let mean = |k: FeatureKind| {
        let v: Vec<f64> = lines
            .iter()
            .filter(|l| l.kind == k)
            .map(|l| l.peak_ratio)
            .collect();
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    (mean(FeatureKind::Emission), mean(FeatureKind::Absorption))
}

/// Mean over observations of ((x(c_i) − (Hx)_i)/σ_i)²: how far the spectrum read at each
/// filter centre is from what that filter sees of it, in units of the observation's error.
fn pass_change(
    grid: &[f64],
    op: &spx::dip::forward::Operator,
    obs: &[spx::dip::input::Observation],
    x: &[f64],
) -> f64 {
    let h = op.apply(x);
    let (g0, dx) = (grid[0], grid[1] - grid[0]);
    let n = grid.len();
    obs.iter()
        .zip(&h)
        .map(|(o, hx)| {
            let t = ((o.wavelength - g0) / dx).clamp(0.0, (n - 1) as f64);
            let j = (t.floor() as usize).min(n - 2);
            let f = t - j as f64;
            let xc = x[j] * (1.0 - f) + x[j + 1] * f;
            ((xc - hx) / o.flux_error).powi(2)
        })
        .sum::<f64>()
        / obs.len().max(1) as f64
}

/// Write the first member's loss history (see `DIP_HISTORY`).
fn history(dir: &str, stem: &str, r: &recon::Reconstruction) {
    use std::io::Write;
    std::fs::create_dir_all(dir).expect("history dir");
    let mut f = std::fs::File::create(format!("{dir}/{stem}_loss.csv")).expect("history");
    writeln!(f, "epoch,total,data,reg,chi2").expect("history");
    for h in r.histories.first().into_iter().flatten() {
        writeln!(f, "{},{},{},{},{}", h.epoch, h.total, h.data, h.reg, h.chi2).expect("history");
    }
}

/// Write the source's spectra and observations (see `DIP_DUMP`).
fn dump(dir: &str, stem: &str, r: &recon::Reconstruction) {
    use std::io::Write;
    std::fs::create_dir_all(dir).expect("dump dir");
    let ts = r
        .truth
        .as_ref()
        .map(|t| smooth_to_resolution(&r.grid, t))
        .unwrap_or_else(|| vec![f64::NAN; r.grid.len()]);
    let nan = vec![f64::NAN; r.grid.len()];
    let b = r.baseline.as_ref().unwrap_or(&nan);
    let mut f = std::fs::File::create(format!("{dir}/{stem}.csv")).expect("dump");
    writeln!(f, "wavelength,truth_smoothed,dip,tik").expect("dump");
    for j in 0..r.grid.len() {
        writeln!(f, "{},{},{},{}", r.grid[j], ts[j], r.flux[j], b[j]).expect("dump");
    }
    let pd = r.op.apply(&r.flux);
    let pt = r.op.apply(b);
    let mut f = std::fs::File::create(format!("{dir}/{stem}_obs.csv")).expect("dump");
    writeln!(f, "wavelength,bandwidth,flux,flux_error,pred_dip,pred_tik").expect("dump");
    for (i, o) in r.obs.iter().enumerate() {
        writeln!(
            f,
            "{},{},{},{},{},{}",
            o.wavelength, o.bandwidth, o.flux, o.flux_error, pd[i], pt[i]
        )
        .expect("dump");
    }
}

fn main() {
    let kinds = list("DIP_KINDS", "qso,ice,star");
    let densities: Vec<usize> = list("DIP_DENSITIES", "65,250")
        .iter()
        .map(|s| s.parse().expect("density"))
        .collect();
    let seeds: Vec<u64> = list("DIP_SEEDS", "1,2,3")
        .iter()
        .map(|s| s.parse().expect("seed"))
        .collect();
    let base = std::env::var("DIP_BASE").unwrap_or_default();
    let variants: Vec<(String, String)> = std::env::var("DIP_VARIANTS")
        .unwrap_or_else(|_| "defaults:".into())
        .split(';')
        .filter(|s| !s.is_empty())
        .map(|v| {
            let (n, a) = v.split_once(':').unwrap_or((v, ""));
            (n.to_string(), a.to_string())
        })
        .collect();
    println!(
        "variant,kind,per_band,seed,obs_used,clipped,dip_rms,dip_rms_smoothed,tik_rms,tik_rms_smoothed,dip_peak_em,tik_peak_em,dip_depth_abs,tik_depth_abs,chi2,epochs,best_epoch,stop,tik_cap,seconds,start_chi2,tik_chi2,chi2_smoothed_output,rows_on_features,clipped_on_features,clipped_elsewhere,pass_dip,pass_tik,cv_pass,refine,restores"
    );
    // (variant, kind, density) → (dip, tik) errors.
    let mut cells: BTreeMap<(String, String, usize), Vec<(f64, f64)>> = BTreeMap::new();
    for kind in &kinds {
        for &pb in &densities {
            for &seed in &seeds {
                let mut sim_sets = vec![
                    format!("dip.simulate.kind=\"{kind}\""),
                    format!("dip.simulate.per_band={pb}"),
                ];
                if kind != "default" {
                    sim_sets.push("dip.simulate.noise=\"relative\"".into());
                    sim_sets.push("dip.simulate.glitch_fraction=0.0".into());
                }
                let mut sets: Vec<&str> = assignments(&base);
                sets.extend(sim_sets.iter().map(String::as_str));
                let scfg = config(&sets);
                let dev = Device::flex();
                let mut rng = backend::seeded(&dev, seed);
                let (src, rows) = simulate_kind(&scfg.dip.simulate, seed, &mut rng);
                let grid = linspace(
                    scfg.dip.wavelength_min,
                    scfg.dip.wavelength_max,
                    scfg.dip.resolution,
                );
                let dir = tempfile::tempdir().expect("temp dir");
                let (csv, truth_path) =
                    recon::write_simulation(&rows, &src, &grid, dir.path(), seed).expect("write");
                for (name, assign) in &variants {
                    let mut s = sets.clone();
                    s.extend(assignments(assign));
                    let mut cfg = config(&s);
                    cfg.run.seed = seed;
                    cfg.dip.compare_baseline = true;
                    let truth = recon::read_truth(&truth_path, &grid).expect("truth");
                    let mut r = recon::reconstruct(
                        &cfg.dip,
                        &spx::backend::DeviceSpec::Cpu,
                        cfg.run.seed,
                        &csv,
                        Progress::hidden(),
                    )
                    .expect("reconstruct");
                    recon::score_against(&mut r, &truth_path, truth);
                    if let Ok(d) = std::env::var("DIP_DUMP") {
                        dump(&d, &format!("{name}_{kind}_{pb}_{seed}"), &r);
                    }
                    if let Ok(d) = std::env::var("DIP_HISTORY") {
                        history(&d, &format!("{name}_{kind}_{pb}_{seed}"), &r);
                    }
                    let t = r.summary.truth.as_ref().expect("scored");
                    let b = t.baseline.as_ref().expect("baseline");
                    let (dp, da) = peaks(&t.lines);
                    let (tp, ta) = peaks(&b.lines);
                    let d = r.summary.dip.as_ref().expect("dip");
                    let clipped: usize = r.summary.qc.bands.iter().map(|b| b.clipped).sum();
                    // A row is on a feature when its filter reaches within 2σ of the centre.
                    let feats = src.features(0.75, 5.0);
                    let on = |wl: f64, bw: f64| {
                        feats
                            .iter()
                            .any(|f| (wl - f.centre).abs() < 0.5 * bw + 2.0 * f.sigma)
                    };
                    let good = rows.iter().filter(|r| r.flag & 1 == 0);
                    let on_rows = good.filter(|r| on(r.wavelength, r.bandwidth)).count();
                    let cl = &r.summary.qc.clipped_rows;
                    let cl_on = cl.iter().filter(|o| on(o.wavelength, o.bandwidth)).count();
                    println!(
                        "{name},{kind},{pb},{seed},{},{clipped},{:.4},{:.4},{:.4},{:.4},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{:?},{},{:.1},{:.3},{:.3},{:.3},{on_rows},{cl_on},{},{:.3},{:.3},{},{},{}",
                        r.summary.observations_used,
                        t.relative_rms,
                        t.relative_rms_smoothed_output,
                        b.relative_rms,
                        b.relative_rms_smoothed_output,
                        dp,
                        tp,
                        da,
                        ta,
                        r.summary.chi2_per_obs,
                        d.epochs_run[0],
                        d.best_epoch[0],
                        d.stop_reason[0],
                        r.summary.tikhonov.as_ref().is_some_and(|t| t.lambda_at_cap),
                        r.summary.seconds,
                        r.histories[0].first().map_or(f64::NAN, |h| h.chi2),
                        r.summary
                            .tikhonov
                            .as_ref()
                            .map_or(f64::NAN, |t| t.chi2_per_obs),
                        {
                            let xs = smooth_to_resolution(&r.grid, &r.flux);
                            let y: Vec<f64> = r.obs.iter().map(|o| o.flux).collect();
                            let s: Vec<f64> = r.obs.iter().map(|o| o.flux_error).collect();
                            chi2(&r.op, &xs, &y, &s) / y.len() as f64
                        },
                        cl.len() - cl_on,
                        pass_change(&r.grid, &r.op, &r.obs, &r.flux),
                        r.baseline
                            .as_ref()
                            .map_or(f64::NAN, |b| pass_change(&r.grid, &r.op, &r.obs, b)),
                        {
                            // What cross-validation of the baseline says of the λ/R pass.
                            let y: Vec<f64> = r.obs.iter().map(|o| o.flux).collect();
                            let s: Vec<f64> = r.obs.iter().map(|o| o.flux_error).collect();
                            let p = spx::dip::train::Problem {
                                op: &r.op,
                                y: &y,
                                sigma: &s,
                            };
                            r.summary
                                .tikhonov
                                .as_ref()
                                .and_then(|t| {
                                    spx::dip::batch::written_pass_helps(&cfg.dip, &p, t, &r.grid, 5)
                                })
                                .map_or("-", |h| if h { "pass" } else { "raw" })
                        },
                        d.refine_factor[0],
                        d.restores[0],
                    );
                    cells
                        .entry((name.clone(), kind.clone(), pb))
                        .or_default()
                        .push((t.relative_rms, b.relative_rms));
                }
            }
        }
    }
    println!("\nvariant,kind,per_band,n,median_dip,median_tik,worst_dip_over_tik");
    for ((name, kind, pb), v) in &cells {
        let mut d: Vec<f64> = v.iter().map(|p| p.0).collect();
        let mut t: Vec<f64> = v.iter().map(|p| p.1).collect();
        let worst = v.iter().map(|p| p.0 / p.1).fold(0.0, f64::max);
        println!(
            "{name},{kind},{pb},{},{:.4},{:.4},{worst:.2}",
            v.len(),
            median(&mut d),
            median(&mut t)
        );
    }
}
