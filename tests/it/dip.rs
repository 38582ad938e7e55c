//! DIP spectral reconstruction: kernels, padding, the observation operator against a literal
//! dense H, every QC rule, the Tikhonov solver, the CLI's errors and outputs, and an end-to-end
//! reconstruction of a simulated source with known truth.

use crate::common::spx;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use burn::tensor::ops::PadMode;
use spx::backend::{self, tensor_from, to_vec};
use spx::config::Config;
use spx::dip::forward::{Operator, chi2, covered};
use spx::dip::grid::linspace;
use spx::dip::input::{self, clip_band, outliers};
use spx::dip::kernel::{cwt_host, reflect_pad, ricker, ricker_bank};
use spx::dip::simulate::{self, LINES, line_integral, measure_line, relative_rms, truth_flux};
use spx::dip::tikhonov::{self, Banded};
use spx::dip::train::{LossTerms, Problem, StopReason};
use spx::dip::{ClipMode, LossMode, Weighting};

fn cfg() -> Config {
    Config::default()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `spx dip recon INPUT --out OUT --solver tikhonov EXTRA…` (exit code, stdout, stderr).
fn recon_tikhonov(input: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "dip",
        "recon",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--solver",
        "tikhonov",
    ];
    args.extend_from_slice(extra);
    spx(&args)
}

#[test]
fn ricker_equals_closed_form() {
    let _rng = crate::common::burn_rng_lock();
    // s = 1: r = 4, K = 9, t = −4..4, A = 2/(√3·π^¼) = 0.86732507...
    let k = ricker(1.0);
    assert_eq!(k.len(), 9);
    let a = 2.0 / (3f64.sqrt() * std::f64::consts::PI.powf(0.25));
    assert!((a - 0.867_325_070_584_077_6).abs() < 1e-12);
    let raw: Vec<f64> = (-4..=4)
        .map(|t| {
            let t = t as f64;
            a * (1.0 - t * t) * (-t * t / 2.0).exp()
        })
        .collect();
    let mean = raw.iter().sum::<f64>() / 9.0;
    for (got, r) in k.iter().zip(&raw) {
        assert!((got - (r - mean)).abs() < 1e-12);
    }
    assert!(k.iter().sum::<f64>().abs() < 1e-12, "zero mean");
    // s = 2.5: r = 10, K = 21, t = linspace(−10, 10, 21) = the integers −10..10.
    let k = ricker(2.5);
    assert_eq!(k.len(), 21);
    let a = 2.0 / ((7.5f64).sqrt() * std::f64::consts::PI.powf(0.25));
    let raw: Vec<f64> = (-10..=10)
        .map(|t| {
            let u = (t as f64 / 2.5).powi(2);
            a * (1.0 - u) * (-u / 2.0).exp()
        })
        .collect();
    let mean = raw.iter().sum::<f64>() / 21.0;
    assert!(
        k.iter()
            .zip(&raw)
            .all(|(g, r)| (g - (r - mean)).abs() < 1e-12)
    );
    // Bank: shorter kernels centred in the longest.
    let (bank, kmax, pad) = ricker_bank(&[1.0, 2.0]);
    assert_eq!((kmax, pad), (17, 8));
    let k1 = ricker(1.0);
    assert_eq!(&bank[4..13], &k1[..]);
    assert!(bank[..4].iter().chain(&bank[13..17]).all(|v| *v == 0.0));
}

#[test]
fn reflect_padding_matches_hand_example_on_host_and_device() {
    let _rng = crate::common::burn_rng_lock();
    assert_eq!(
        reflect_pad(&[1.0, 2.0, 3.0, 4.0], 2),
        vec![3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0]
    );
    let dev = Device::flex();
    let t = tensor_from(vec![1.0, 2.0, 3.0, 4.0], [1, 1, 4], &dev);
    let p = to_vec(t.pad([(2, 2)], PadMode::Reflect));
    assert_eq!(p, vec![3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0]);
    // "Same" CWT of a straight line is zero away from the edges (zero-mean kernel, symmetric):
    // and at the edges reflect padding keeps it zero only for a constant.
    let c = cwt_host(&[5.0; 30], &ricker(2.0));
    assert!(c.iter().all(|v| v.abs() < 1e-12));
}

/// Dense H built literally: H_ij = [λ_j inside the boxcar] / λ_j², rows normalised.
fn dense_h(grid: &[f64], c: &[f64], bw: &[f64]) -> Vec<Vec<f64>> {
    c.iter()
        .zip(bw)
        .map(|(&c, &b)| {
            let row: Vec<f64> = grid
                .iter()
                .map(|&l| {
                    if l >= c - b / 2.0 - 1e-12 && l <= c + b / 2.0 + 1e-12 {
                        1.0 / (l * l)
                    } else {
                        0.0
                    }
                })
                .collect();
            let s: f64 = row.iter().sum();
            row.iter().map(|v| v / s).collect()
        })
        .collect()
}

#[test]
fn forward_operator_equals_dense_h() {
    let _rng = crate::common::burn_rng_lock();
    let grid = linspace(1.0, 2.0, 21); // Δλ = 0.05
    let c = [1.0, 1.23, 1.5, 1.975, 0.9, 3.0, 1.5];
    let bw = [0.1, 0.2, 0.05, 0.1, 0.25, 0.1, 0.001];
    let (op, kept) = Operator::build(&grid, &c, &bw);
    // 3.0 µm covers nothing; bw 0.001 at 1.5 covers exactly the pixel at 1.5.
    assert_eq!(kept, vec![0, 1, 2, 3, 4, 6]);
    assert_eq!(covered(&grid, 1.5, 0.05), (10, 1));
    assert_eq!(covered(&grid, 1.5, 0.1), (9, 3)); // edges on pixel centres count
    assert_eq!(covered(&grid, 0.9, 0.25), (0, 1));
    let cc: Vec<f64> = kept.iter().map(|&i| c[i]).collect();
    let bb: Vec<f64> = kept.iter().map(|&i| bw[i]).collect();
    let h = dense_h(&grid, &cc, &bb);
    let x: Vec<f64> = grid.iter().map(|l| (3.0 * l).sin() + 2.0).collect();
    let want: Vec<f64> = h
        .iter()
        .map(|r| r.iter().zip(&x).map(|(a, b)| a * b).sum())
        .collect();
    let got = op.apply(&x);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-12, "{g} vs {w}");
    }
    let r: Vec<f64> = (0..op.m).map(|i| i as f64 - 1.7).collect();
    let adj = op.adjoint(&r);
    for j in 0..grid.len() {
        let w: f64 = (0..op.m).map(|i| h[i][j] * r[i]).sum();
        assert!((adj[j] - w).abs() < 1e-12);
    }

    // Device loss terms: H x, χ² data term and the pixel expansion, against the literal sums.
    let y: Vec<f64> = want.iter().map(|v| v * 1.1 + 0.05).collect();
    let sigma: Vec<f64> = (0..op.m).map(|i| 0.1 + 0.02 * i as f64).collect();
    let dev = Device::flex();
    let xt = tensor_from(x.iter().map(|&v| v as f32).collect(), [grid.len()], &dev);
    let mut dc = cfg().dip;
    dc.prior.cwt_weight = 0.0;
    let p = Problem {
        op: &op,
        y: &y,
        sigma: &sigma,
    };
    let terms = LossTerms::new(&dc, &p, 1.0, &[], 0.0, &dev);
    let pred = to_vec(terms.predict(xt.clone()));
    assert!(
        pred.iter()
            .zip(&want)
            .all(|(a, b)| (*a as f64 - b).abs() < 1e-5)
    );
    let data = to_vec(terms.data(xt.clone()))[0] as f64;
    let c2 = chi2(&op, &x, &y, &sigma);
    assert!((data - c2).abs() < 1e-4 * c2, "{data} vs {c2}");

    dc.train.loss_mode = LossMode::Pixel;
    dc.weighting = Weighting::Sigma;
    let terms = LossTerms::new(&dc, &p, 1.0, &[], 0.0, &dev);
    let data = to_vec(terms.data(xt))[0] as f64;
    let mut want_pix = 0.0;
    for i in 0..op.m {
        for j in 0..grid.len() {
            want_pix += (1.0 / (sigma[i] + dc.epsilon_weight)) * h[i][j] * (y[i] - x[j]).powi(2);
        }
    }
    assert!(
        (data - want_pix).abs() < 1e-4 * want_pix,
        "{data} vs {want_pix}"
    );
}

#[test]
fn device_cwt_matches_host_convolution() {
    let _rng = crate::common::burn_rng_lock();
    let dev = Device::flex();
    let n = 64;
    let x: Vec<f64> = (0..n)
        .map(|i| ((i as f64) * 0.3).sin() + 0.01 * (i * i) as f64)
        .collect();
    let grid = linspace(1.0, 2.0, n);
    let (op, _) = Operator::build(&grid, &[1.5], &[0.1]);
    let mut dc = cfg().dip;
    dc.prior.cwt_scales = vec![1.0, 2.0, 3.0];
    let p = Problem {
        op: &op,
        y: &[1.0],
        sigma: &[1.0],
    };
    let terms = LossTerms::new(&dc, &p, 1.0, &[], 0.0, &dev);
    let got = to_vec(terms.cwt(tensor_from(
        x.iter().map(|&v| v as f32).collect(),
        [n],
        &dev,
    )));
    for (s, scale) in [1.0, 2.0, 3.0].iter().enumerate() {
        let want = cwt_host(&x, &ricker(*scale));
        for j in 0..n {
            assert!(
                (got[s * n + j] as f64 - want[j]).abs() < 1e-4,
                "scale {scale} pixel {j}"
            );
        }
    }
}

const HEADER: &str =
    "obs_id,mjd,flux,flux_error,wavelength,bandwidth,band,flag,flag_binary,pix_x\n";

fn row(flux: f64, err: f64, wl: f64, band: &str, flag: u64) -> String {
    format!(
        "x,1.0,{flux},{err},{wl},{},{band},{flag},{flag:022b},3.0\n",
        wl / 40.0
    )
}

#[test]
fn qc_rules_each_remove_what_they_should() {
    let _rng = crate::common::burn_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("# comment line\n# another\n");
    text.push_str(HEADER);
    // D1: 12 clean points, one with bad bit 0, one with bit 21 only (kept), one NaN,
    // one flux_error 0, one SNR 2.
    for i in 0..12 {
        text.push_str(&row(
            100.0 + (i % 3) as f64,
            5.0,
            0.8 + 0.02 * i as f64,
            "D1",
            2097152,
        ));
    }
    text.push_str(&row(100.0, 5.0, 0.85, "D1", 2097153)); // bit 0
    text.push_str(&row(100.0, 5.0, 0.86, "D1", 2097216)); // bit 6
    text.push_str(&row(100.0, 5.0, 0.87, "1", 2097152)); // numeric band, kept
    text.push_str("x,1.0,,5.0,0.9,0.02,D1,0,0,0\n"); // empty flux → NaN → invalid
    text.push_str(&row(100.0, 0.0, 0.91, "D1", 0)); // flux_error 0
    text.push_str(&row(10.0, 5.0, 0.92, "D1", 0)); // SNR 2
    // D2: only 5 points → band skipped.
    for i in 0..5 {
        text.push_str(&row(50.0, 5.0, 1.2 + 0.05 * i as f64, "D2", 0));
    }
    let p = write(dir.path(), "qc.csv", &text);
    let qc = cfg().dip.qc;
    let (obs, rep) = input::load(&p, &qc).unwrap();
    let d1 = &rep.bands[0];
    assert_eq!(
        (d1.read, d1.bad_flag, d1.invalid, d1.low_snr),
        (18, 2, 2, 1)
    );
    assert_eq!(d1.kept, 13);
    let d2 = &rep.bands[1];
    assert!(d2.skipped && d2.kept == 0 && d2.read == 5);
    assert_eq!(obs.len(), 13);
    assert!(obs.windows(2).all(|w| w[0].wavelength <= w[1].wavelength));
    assert!(obs.iter().all(|o| o.band == 1));
    assert_eq!(rep.rows_read, 23);
}

#[test]
fn rolling_clip_removes_glitches_but_keeps_emission_lines() {
    let _rng = crate::common::burn_rng_lock();
    let ripple = |i: usize| 100.0 + [0.0, 1.0, -1.0, 0.5, -0.5][i % 5];
    // Sparse sampling: 60 points 0.01 µm apart with 0.05-µm filters (about 5 see each
    // wavelength), an emission line lifting the 4 neighbours whose filters cover it, and one
    // isolated glitch.
    let mut f: Vec<f64> = (0..60).map(ripple).collect();
    let wl: Vec<f64> = (0..60).map(|i| 1.0 + 0.01 * i as f64).collect();
    let bw = vec![0.05; 60];
    for v in &mut f[20..24] {
        *v += 40.0;
    }
    f[45] += 30.0;
    let st = outliers(&f, 21, 3.0);
    assert!(st[20..24].iter().all(|&s| s == 1));
    assert_eq!(st[45], 1);
    let mut qc = cfg().dip.qc;
    assert_eq!(qc.clip, ClipMode::Runs);
    assert_eq!(clip_band(&f, &[1.0; 60], &wl, &bw, &qc), vec![45]);
    qc.clip = ClipMode::All;
    let removed = clip_band(&f, &[1.0; 60], &wl, &bw, &qc);
    assert!(removed.contains(&45) && (20..24).all(|i| removed.contains(&i)));
    qc.clip = ClipMode::Off;
    assert!(clip_band(&f, &[1.0; 60], &wl, &bw, &qc).is_empty());
    // Deep-field density: 400 points 0.0005 µm apart with 0.02-µm filters (41 centred within
    // half a width of any point) and two coincident glitches. They are neighbours, but 2 of 41
    // is below clip_protect_fraction (0.25), so they go; counting neighbours only, they stay.
    qc.clip = ClipMode::Runs;
    let mut d: Vec<f64> = (0..400).map(ripple).collect();
    d[200] += 35.0;
    d[201] += 32.0;
    let dw: Vec<f64> = (0..400).map(|i| 1.0 + 0.0005 * i as f64).collect();
    assert_eq!(
        clip_band(&d, &[1.0; 400], &dw, &[0.02; 400], &qc),
        vec![200, 201]
    );
    qc.clip_protect_fraction = 0.0;
    assert!(clip_band(&d, &[1.0; 400], &dw, &[0.02; 400], &qc).is_empty());
    // Fewer points than the window: whole-band clip.
    let g = [10.0, 10.5, 9.5, 10.2, 9.8, 30.0, 10.1, 9.9];
    let gw: Vec<f64> = (0..8).map(|i| i as f64).collect();
    assert_eq!(clip_band(&g, &[1.0; 8], &gw, &[1.0; 8], &qc), vec![5]);
}

#[test]
fn bad_csvs_give_one_line_errors_and_no_outputs() {
    let _rng = crate::common::burn_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut good_rows = String::new();
    for i in 0..12 {
        good_rows.push_str(&row(100.0, 5.0, 0.8 + 0.02 * i as f64, "D1", 0));
    }
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "missing.csv",
            "flux,flux_error,wavelength,band,flag\n1,1,1,D1,0\n".into(),
            "bandwidth",
        ),
        (
            "nonnum.csv",
            format!("{HEADER}{}x,1,abc,5,0.8,0.02,D1,0,0,0\n", good_rows),
            "flux",
        ),
        (
            "flags.csv",
            format!("{HEADER}{}", row(100.0, 5.0, 0.8, "D1", 1).repeat(12)),
            "flag",
        ),
        (
            "snr.csv",
            format!("{HEADER}{}", row(1.0, 5.0, 0.8, "D1", 0).repeat(12)),
            "snr",
        ),
        (
            "band.csv",
            format!("{HEADER}{}", row(100.0, 5.0, 0.8, "D9", 0)),
            "band",
        ),
        (
            "dupcol.csv",
            format!("{}{good_rows}", HEADER.replace("pix_x", "FLUX")),
            "FLUX",
        ),
        (
            "width.csv",
            format!("{HEADER}{good_rows}1,2,3\n"),
            "line 14",
        ),
    ];
    for (name, text, col) in cases {
        let p = write(dir.path(), name, &text);
        let out = dir.path().join(format!("out-{name}"));
        let (code, stdout, err) = recon_tikhonov(&p, &out, &[]);
        assert_eq!(code, 2, "{name}: {stdout}{err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: {err}");
        let named = if col.starts_with("line") {
            col.to_string()
        } else {
            format!("`{col}`")
        };
        assert!(err.contains(name) && err.contains(&named), "{name}: {err}");
        assert!(!out.exists(), "{name}: no output directory on error");
    }
    // A UTF-8 byte-order mark before the header is not part of the first column's name, and
    // comment lines, blank lines and quoted fields are read as before.
    let text = format!("\u{feff}# a comment\n\n{HEADER}{good_rows}");
    let text = text.replacen(",D1,", ",\"D1\",", 1);
    let p = write(dir.path(), "bom.csv", &text);
    let rows = input::read_csv(&p).unwrap();
    assert_eq!(rows.len(), 12);
    assert_eq!(rows[0].obs.band, 1);
    assert_eq!(rows[0].obs.row, 1);
    assert!((rows[0].obs.flux - 100.0).abs() < 1e-12);
}

/// The flat `[dip]` keys of earlier releases, in a `--config` file and in `--set`, still work:
/// each lands on its new nested key, with a warning naming both.
#[test]
fn old_flat_dip_keys_still_work_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "old.toml",
        "[dip]\nepochs = 7\nregularization_weight = 0.05\nfilters = 12\n",
    );
    let out = dir.path().join("out");
    let (code, stdout, err) = spx(&[
        "--config",
        file.to_str().unwrap(),
        "--set",
        "dip.lr=0.002",
        "--set",
        "dip.positivity=false",
        "--out",
        out.to_str().unwrap(),
        "dip",
        "simulate",
        "--per-band",
        "20",
    ]);
    assert_eq!(code, 0, "{stdout}{err}");
    for (old, new) in [
        ("dip.epochs", "dip.train.epochs"),
        ("dip.regularization_weight", "dip.prior.cwt_weight"),
        ("dip.filters", "dip.net.filters"),
        ("dip.lr", "dip.train.lr"),
        ("dip.positivity", "dip.net.positivity"),
    ] {
        assert!(
            err.contains(&format!("`{old}` is deprecated, use `{new}`")),
            "{old}: {err}"
        );
    }
    let text = std::fs::read_to_string(out.join("spx-config.toml")).unwrap();
    let c: Config = toml::from_str(&text).unwrap();
    assert_eq!(c.dip.train.epochs, 7);
    assert_eq!(c.dip.prior.cwt_weight, 0.05);
    assert_eq!(c.dip.net.filters, 12);
    assert_eq!(c.dip.train.lr, 0.002);
    assert!(!c.dip.net.positivity);
    // The recorded config uses the new layout only.
    let t: toml::Table = text.parse().unwrap();
    let dip = t["dip"].as_table().unwrap();
    assert!(!dip.contains_key("epochs") && !dip.contains_key("regularization_weight"));
    // A new key given beside its old name wins.
    let (code, shown, err) = spx(&[
        "--set",
        "dip.epochs=9",
        "--set",
        "dip.train.epochs=11",
        "config",
        "show",
        "dip",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        shown.contains("[dip.train]") && shown.contains("epochs = 11"),
        "{shown}"
    );
}

#[test]
fn banded_cholesky_matches_dense_solve() {
    let _rng = crate::common::burn_rng_lock();
    let n = 12;
    let kb = 3;
    let mut a = Banded::zeros(n, kb);
    let mut dense = vec![vec![0.0; n]; n];
    for j in 0..n {
        for d in 0..=kb.min(n - 1 - j) {
            let v = if d == 0 {
                10.0 + j as f64
            } else {
                1.0 / (1.0 + d as f64 + j as f64 * 0.1)
            };
            a.band[j * (kb + 1) + d] = v;
            dense[j + d][j] = v;
            dense[j][j + d] = v;
        }
    }
    let x_true: Vec<f64> = (0..n).map(|i| (i as f64 * 0.7).cos()).collect();
    let b: Vec<f64> = (0..n)
        .map(|i| (0..n).map(|j| dense[i][j] * x_true[j]).sum())
        .collect();
    assert_eq!(
        a.matvec(&x_true)
            .iter()
            .zip(&b)
            .filter(|(p, q)| (*p - *q).abs() > 1e-12)
            .count(),
        0
    );
    let x = a.solve(&b).unwrap();
    assert!(x.iter().zip(&x_true).all(|(p, q)| (p - q).abs() < 1e-10));
}

/// A simulated deep-field-like source through the library (no files).
fn simulated_problem(seed: u64) -> (Config, Vec<f64>, Operator, Vec<f64>, Vec<f64>, Vec<f64>) {
    let c = cfg();
    let dev = Device::flex();
    let mut rng = backend::seeded(&dev, seed);
    let rows = simulate::simulate(&c.dip.simulate, &mut rng);
    let dir = tempfile::tempdir().unwrap();
    let grid = linspace(c.dip.wavelength_min, c.dip.wavelength_max, c.dip.resolution);
    let (csv, _) = spx::dip::recon::write_simulation(
        &rows,
        &simulate::Source::default_from(&c.dip.simulate),
        &grid,
        dir.path(),
        seed,
    )
    .unwrap();
    let (obs, rep) = input::load(&csv, &c.dip.qc).unwrap();
    // Every bad-flag row goes; glitches (isolated) are clipped.
    let bad = rows.iter().filter(|r| r.flag & 1 == 1).count();
    assert_eq!(rep.bands.iter().map(|b| b.bad_flag).sum::<usize>(), bad);
    let (op, kept) = Operator::build(
        &grid,
        &obs.iter().map(|o| o.wavelength).collect::<Vec<_>>(),
        &obs.iter().map(|o| o.bandwidth).collect::<Vec<_>>(),
    );
    assert_eq!(kept.len(), obs.len());
    let y = obs.iter().map(|o| o.flux).collect();
    let s = obs.iter().map(|o| o.flux_error).collect();
    let truth = grid
        .iter()
        .map(|&l| truth_flux(l, &c.dip.simulate))
        .collect();
    (c, grid, op, y, s, truth)
}

#[test]
fn tikhonov_reaches_target_chi2_and_tracks_truth() {
    let _rng = crate::common::burn_rng_lock();
    let (c, grid, op, y, s, truth) = simulated_problem(1);
    let t = tikhonov::solve(&op, &y, &s, &c.dip.tikhonov, Weighting::Variance, 1e-10).unwrap();
    assert!(
        (t.chi2_per_obs - 1.0).abs() < 0.02,
        "χ²/M {}",
        t.chi2_per_obs
    );
    let err = relative_rms(&grid, &t.spectrum, &truth, 0.8, 4.95);
    // Measured 2.0–2.1 % on seeds 1–3 (examples/diag/dip_tune.rs, 1000 observations per band).
    assert!(err < 0.04, "Tikhonov relative RMS vs smoothed truth {err}");
    for (l, r) in LINES.iter().zip(line_ratios(&grid, &t.spectrum, &c)) {
        assert!((r - 1.0).abs() < 0.15, "line {} µm recovered at {r}", l.0);
    }
    let mut nn = c.dip.tikhonov.clone();
    nn.nonnegative = true;
    let t2 = tikhonov::solve(&op, &y, &s, &nn, Weighting::Variance, 1e-10).unwrap();
    assert!(t2.spectrum.iter().all(|v| *v >= 0.0));
}

#[test]
fn line_measure_recovers_true_integral() {
    let _rng = crate::common::burn_rng_lock();
    let c = cfg();
    let grid = linspace(0.75, 5.0, 3000);
    let truth: Vec<f64> = grid
        .iter()
        .map(|&l| truth_flux(l, &c.dip.simulate))
        .collect();
    for (i, &(centre, _, _)) in LINES.iter().enumerate() {
        let got = measure_line(&grid, &truth, centre);
        let want = line_integral(i, &c.dip.simulate);
        assert!(
            (got / want - 1.0).abs() < 0.03,
            "line {centre}: {got} vs {want}"
        );
    }
}

#[test]
fn dip_fit_lowers_chi2_returns_its_best_and_is_deterministic() {
    let _rng = crate::common::burn_rng_lock();
    let (c, _grid, op, y, s, _truth) = simulated_problem(5);
    let mut dc = c.dip.clone();
    dc.net.filters = 8;
    dc.train.epochs = 25;
    dc.train.lr = 3e-3;
    // The network's own fit (a baseline start may meet the discrepancy at epoch 0), returned
    // as fitted (no fallback to the baseline, no Tikhonov step after the fit, no λ/R pass of the
    // written spectrum), full steps.
    dc.net.start_baseline = false;
    dc.train.fallback_baseline = false;
    dc.train.warmup_epochs = 0;
    dc.prior.smooth_written_density = 0.0;
    dc.prior.refine_cv_folds = 0;
    let dev = Device::flex().autodiff();
    let p = Problem {
        op: &op,
        y: &y,
        sigma: &s,
    };
    let pb = indicatif::ProgressBar::hidden();
    let a = spx::dip::batch::fit(&dc, &p, &dev, 11, &pb);
    let b = spx::dip::batch::fit(&dc, &p, &dev, 11, &pb);
    let other = spx::dip::batch::fit(&dc, &p, &dev, 12, &pb);
    assert_eq!(a.spectrum, b.spectrum, "same seed, same spectrum");
    assert_ne!(a.spectrum, other.spectrum);
    let min = a
        .history
        .iter()
        .map(|e| e.total)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(a.best_loss, min);
    assert_eq!(a.history[a.best_epoch].total, min);
    // The returned spectrum is the best epoch's: its χ² (scaled units = µJy units) matches.
    let c2 = chi2(&op, &a.spectrum, &y, &s);
    let rel = (c2 - a.history[a.best_epoch].data).abs() / c2;
    assert!(
        rel < 1e-3,
        "χ² of returned spectrum {c2} vs logged {}",
        a.history[a.best_epoch].data
    );
    assert!(
        c2 < 0.6 * a.history[0].data,
        "training lowers χ²: {} → {c2}",
        a.history[0].data
    );
    assert!(
        a.spectrum.iter().all(|v| *v >= 0.0),
        "Softplus output is non-negative"
    );
    // Early stopping: a 50 % improvement is never reached twice in a row.
    dc.train.early_stop_patience = 2;
    dc.train.early_stop_min_delta = 0.5;
    let e = spx::dip::batch::fit(&dc, &p, &dev, 11, &pb);
    assert!(e.stopped_early && e.epochs_run < dc.train.epochs);
    assert_eq!(e.stop_reason, StopReason::Patience);
    // Discrepancy stop with the threshold at the χ²/M the unstopped run had at epoch 10: the fit
    // ends at the first epoch at or below it and returns that epoch's spectrum.
    assert_eq!(a.stop_reason, StopReason::Epochs);
    dc.train.early_stop_patience = 0;
    dc.train.stop_sigmas = 0.0;
    dc.train.stop_chi2 = a.history[10].chi2;
    let d = spx::dip::batch::fit(&dc, &p, &dev, 11, &pb);
    let first = a
        .history
        .iter()
        .position(|h| h.chi2 <= dc.train.stop_chi2)
        .unwrap();
    assert_eq!(d.stop_reason, StopReason::Discrepancy);
    assert_eq!((d.epochs_run, d.best_epoch), (first + 1, first));
    let dc2 = chi2(&op, &d.spectrum, &y, &s) / y.len() as f64;
    assert!(
        dc2 <= dc.train.stop_chi2 * (1.0 + 1e-4),
        "{dc2} vs {}",
        dc.train.stop_chi2
    );
    // `train.stop_sigmas` = k moves the threshold k·√(2/M) below `stop_chi2` (M fitted rows);
    // once the fit has run twice the epochs it took to reach `stop_chi2` (epoch e₀), it also
    // stops at the first epoch from 2e₀ on at or below `stop_chi2`. The unstopped run's
    // history says where.
    let expected = |base: f64, k: f64| {
        let at = base - k * (2.0 / y.len() as f64).sqrt();
        let e0 = a.history.iter().position(|h| h.chi2 <= base)?;
        a.history
            .iter()
            .position(|h| h.chi2 <= at || (h.chi2 <= base && h.epoch >= 2 * e0))
    };
    let k = 1.5;
    dc.train.stop_sigmas = k;
    for base in [
        a.history[10].chi2,
        a.history[10].chi2 + k * (2.0 / y.len() as f64).sqrt(),
    ] {
        dc.train.stop_chi2 = base;
        let e = spx::dip::batch::fit(&dc, &p, &dev, 11, &pb);
        match expected(base, k) {
            Some(first) => {
                assert_eq!(e.stop_reason, StopReason::Discrepancy);
                assert_eq!((e.epochs_run, e.best_epoch), (first + 1, first));
                let ec2 = chi2(&op, &e.spectrum, &y, &s) / y.len() as f64;
                assert!(ec2 <= base * (1.0 + 1e-4), "{ec2} vs {base}");
            }
            None => assert_eq!(e.stop_reason, StopReason::Epochs),
        }
    }
}

/// The #20 switches on a dense source (1000 observations per band): `train.fallback_baseline`
/// returns the baseline for a fit that ends fitting worse than it (here the unfitted smoothed
/// start), `net.start_fit_sigmas` lowers the start's smoothing until it fits within k·√(2/M) of
/// the baseline, and `train.warmup_epochs` scales the first steps' size by t/W.
#[test]
fn dip_fallback_fitted_start_and_warmup() {
    let _rng = crate::common::burn_rng_lock();
    let (c, grid, op, y, s, _truth) = simulated_problem(3);
    let mut dc = c.dip.clone();
    dc.net.filters = 8;
    dc.train.epochs = 1;
    dc.train.fallback_baseline = false;
    dc.train.warmup_epochs = 0;
    // What the fit itself returns: no held-out-checked step after it.
    dc.prior.refine_cv_folds = 0;
    // 1000 per band, ~60 per λ/R element: the written spectrum is smoothed by default.
    let smooth = dc.prior.smooth_written_density;
    assert!(smooth > 0.0 && y.len() as f64 / spx::dip::batch::resolution_elements(&grid) > smooth);
    dc.prior.smooth_written_density = 0.0;
    let dev = Device::flex().autodiff();
    let p = Problem {
        op: &op,
        y: &y,
        sigma: &s,
    };
    let pb = indicatif::ProgressBar::hidden();
    let m = y.len() as f64;
    let t = tikhonov::solve(&op, &y, &s, &dc.tikhonov, dc.weighting, dc.epsilon_weight).unwrap();
    let tc2 = chi2(&op, &t.spectrum, &y, &s) / m;
    // No training: the fit returns its start, λ × 10, which fits worse than the baseline.
    let f = spx::dip::batch::fit(&dc, &p, &dev, 7, &pb);
    let fc2 = chi2(&op, &f.spectrum, &y, &s) / m;
    assert_eq!(f.stop_reason, StopReason::Epochs);
    assert!(fc2 > tc2 + 0.01, "start χ²/M {fc2} vs baseline {tc2}");
    dc.train.fallback_baseline = true;
    let fb = spx::dip::batch::fit(&dc, &p, &dev, 7, &pb);
    assert_eq!(fb.stop_reason, StopReason::Baseline);
    assert!(max_rel(&fb.spectrum, &t.spectrum) < 1e-9);
    // The written spectrum through the λ/R kernel (here the baseline it fell back to).
    dc.prior.smooth_written_density = smooth;
    let fbs = spx::dip::batch::fit(&dc, &p, &dev, 7, &pb);
    let want = simulate::smooth_to_resolution(&grid, &t.spectrum);
    assert!(max_rel(&fbs.spectrum, &want) < 1e-9);
    assert!(max_rel(&fbs.spectrum, &t.spectrum) > 1e-3);
    dc.prior.smooth_written_density = 0.0;
    dc.train.fallback_baseline = false;
    // The start fitted to within 3σ of χ²/M: above the baseline's χ²/M (it is smoother), below
    // the limit (up to the f32 rounding of the start).
    let limit = tc2 + 3.0 * (2.0 / m).sqrt();
    assert!(
        f.history[0].chi2 > limit,
        "{} vs {limit}",
        f.history[0].chi2
    );
    dc.net.start_fit_sigmas = 3.0;
    let fs = spx::dip::batch::fit(&dc, &p, &dev, 7, &pb);
    let sc2 = fs.history[0].chi2;
    assert!(
        sc2 <= limit + 1e-4 && sc2 >= tc2 - 1e-4,
        "{sc2}: [{tc2}, {limit}]"
    );
    // Warm-up over 10 steps: the first step is the step of lr/10 without warm-up; the second
    // (2·lr/10) is not.
    dc.net.start_fit_sigmas = 0.0;
    dc.train.epochs = 3;
    dc.train.early_stop_patience = 0;
    dc.train.stop_chi2 = 0.0;
    let lr = dc.train.lr;
    dc.train.warmup_epochs = 10;
    let w = spx::dip::batch::fit(&dc, &p, &dev, 7, &pb);
    dc.train.warmup_epochs = 0;
    dc.train.lr = lr / 10.0;
    let l = spx::dip::batch::fit(&dc, &p, &dev, 7, &pb);
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    assert!(rel(w.history[1].total, l.history[1].total) < 1e-6);
    assert!(rel(w.history[2].total, l.history[2].total) > 1e-6);
}

#[test]
fn cli_simulate_then_tikhonov_recon_writes_readable_files() {
    let _rng = crate::common::burn_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, _, err) = spx(&[
        "dip",
        "simulate",
        "--out",
        d,
        "--sampling",
        "channels",
        "--seed",
        "4",
    ]);
    assert_eq!(code, 0, "{err}");
    let csv = dir.path().join("simulated.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(
        text.lines().filter(|l| !l.starts_with('#')).count(),
        1 + 102
    );
    let out = dir.path().join("r");
    let (code, stdout, err) = recon_tikhonov(&csv, &out, &["--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let c2 = v["chi2_per_obs"].as_f64().unwrap();
    assert!((c2 - 1.0).abs() < 0.05, "{c2}");
    let spec = std::fs::read_to_string(out.join("spectrum.csv")).unwrap();
    let mut lines = spec.lines();
    assert_eq!(lines.next().unwrap(), "wavelength,flux,band");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3000);
    assert_eq!(rows[0][2], "D1");
    assert_eq!(rows[2999][2], "D6");
    let s: toml::Table = std::fs::read_to_string(out.join("summary.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(s["qc"]["rows_read"].as_integer(), Some(102));
    assert!(out.join("spectrum.png").exists() && out.join("spx-config.toml").exists());
}

#[test]
fn ensemble_is_mean_and_std_of_seeded_members() {
    let _rng = crate::common::burn_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg();
    c.dip.resolution = 256;
    c.dip.net.filters = 4;
    c.dip.train.epochs = 3;
    c.dip.ensemble = 2;
    c.dip.compare_baseline = false;
    c.run.seed = 9;
    let dev = Device::flex();
    let mut rng = backend::seeded(&dev, 1);
    let rows = simulate::simulate(&c.dip.simulate, &mut rng);
    let grid = linspace(c.dip.wavelength_min, c.dip.wavelength_max, c.dip.resolution);
    let (csv, _) = spx::dip::recon::write_simulation(
        &rows,
        &simulate::Source::default_from(&c.dip.simulate),
        &grid,
        dir.path(),
        1,
    )
    .unwrap();
    let mut r = spx::dip::recon::reconstruct(
        &c.dip,
        &spx::backend::DeviceSpec::Cpu,
        c.run.seed,
        &csv,
        spx::logging::Progress::hidden(),
    )
    .unwrap();
    let std = r.flux_std.clone().expect("ensemble std");
    // The members, refitted one by one with seeds 9 and 10.
    let (obs, _) = input::load(&csv, &c.dip.qc).unwrap();
    let (op, _) = Operator::build(
        &grid,
        &obs.iter().map(|o| o.wavelength).collect::<Vec<_>>(),
        &obs.iter().map(|o| o.bandwidth).collect::<Vec<_>>(),
    );
    let y: Vec<f64> = obs.iter().map(|o| o.flux).collect();
    let s: Vec<f64> = obs.iter().map(|o| o.flux_error).collect();
    let p = Problem {
        op: &op,
        y: &y,
        sigma: &s,
    };
    let ad = dev.autodiff();
    let pb = indicatif::ProgressBar::hidden();
    let a = spx::dip::batch::fit(&c.dip, &p, &ad, 9, &pb).spectrum;
    let b = spx::dip::batch::fit(&c.dip, &p, &ad, 10, &pb).spectrum;
    for j in 0..grid.len() {
        let mean = 0.5 * (a[j] + b[j]);
        let sd = ((a[j] - mean).powi(2) + (b[j] - mean).powi(2)).sqrt(); // n − 1 = 1
        assert!((r.flux[j] - mean).abs() <= 1e-9 * mean.abs().max(1.0));
        assert!((std[j] - sd).abs() <= 1e-9 * sd.max(1.0));
    }
    assert_eq!(r.summary.dip.as_ref().unwrap().seeds, vec![9, 10]);
    let files = spx::dip::recon::write_outputs(&c.dip, &mut r, &dir.path().join("out"), |d| {
        c.write_effective(d)
    })
    .unwrap();
    let head = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        head.starts_with("wavelength,flux,flux_std,band\n"),
        "{}",
        &head[..60]
    );
}

/// Integrated flux of each emission line of [`LINES`] in `x`, over the true value.
fn line_ratios(grid: &[f64], x: &[f64], c: &Config) -> Vec<f64> {
    LINES
        .iter()
        .enumerate()
        .map(|(i, l)| measure_line(grid, x, l.0) / line_integral(i, &c.dip.simulate))
        .collect()
}

/// End to end with every default (3000 px, U-Net depth 3 × 32 filters, Adam 1e-3 with a 100-step
/// warm-up, a correction of the smoothed Tikhonov start seen through λ/R, D2 prior 0.3·λ_T, CWT
/// weight 0.01, discrepancy or plateau stop, fallback to the baseline, the written spectrum
/// through λ/R at this density) on the default simulated deep-field source (1000 observations
/// per band). Measured (seed 1): discrepancy stop after 487 epochs, written χ²/M 1.58 (the λ/R
/// pass), written error 1.6 %, line fluxes 0.98 / 0.98 / 0.95. Stated bounds: χ²/M in [0.5, 2],
/// written RMS < 4 %, every line within 15 %.
#[test]
fn dip_with_defaults_recovers_simulated_source() {
    let _rng = crate::common::burn_rng_lock();
    let (c, grid, op, y, s, truth) = simulated_problem(1);
    let p = Problem {
        op: &op,
        y: &y,
        sigma: &s,
    };
    let f = spx::dip::batch::fit(
        &c.dip,
        &p,
        &Device::flex().autodiff(),
        1,
        &indicatif::ProgressBar::hidden(),
    );
    // At this density (~60 observations per λ/R element) the written spectrum is the fit passed
    // through the λ/R kernel: the same fit without that step, smoothed, is it.
    let mut raw = c.dip.clone();
    raw.prior.smooth_written_density = 0.0;
    let g = spx::dip::batch::fit(
        &raw,
        &p,
        &Device::flex().autodiff(),
        1,
        &indicatif::ProgressBar::hidden(),
    );
    assert!(c.dip.prior.smooth_written_density > 0.0);
    assert!(
        max_rel(
            &f.spectrum,
            &simulate::smooth_to_resolution(&grid, &g.spectrum)
        ) < 1e-12
    );
    let c2 = chi2(&op, &f.spectrum, &y, &s) / y.len() as f64;
    // The written spectrum as written against the truth at λ/R (it is already at λ/R).
    let rms = simulate::relative_rms_written(&grid, &f.spectrum, &truth, 0.8, 4.95);
    let lines = line_ratios(&grid, &f.spectrum, &c);
    eprintln!(
        "DIP: {} epochs ({:?}), χ²/M {c2:.3}, RMS {rms:.4}, lines {lines:.3?}, {:.1} s",
        f.epochs_run, f.stop_reason, f.seconds
    );
    assert!((0.5..=2.0).contains(&c2), "χ²/M {c2}");
    assert!(rms < 0.04, "relative RMS {rms}");
    for (l, r) in LINES.iter().zip(&lines) {
        assert!((r - 1.0).abs() < 0.15, "line {} µm recovered at {r}", l.0);
    }
    // At this density the λ/R output cannot follow the finer structure the data resolve, so the
    // fit may plateau above χ²/M = 1 (seed 42, with the rule at 100 epochs: 1.24 after 803) and end on the plateau
    // rule, returning its lowest-loss epoch; if it reaches the discrepancy instead, it returns
    // the stopping epoch.
    let f = g;
    let c2 = chi2(&op, &f.spectrum, &y, &s) / y.len() as f64;
    match f.stop_reason {
        StopReason::Discrepancy => {
            assert_eq!(f.best_epoch + 1, f.epochs_run);
            assert!(f.history[f.best_epoch].chi2 <= c.dip.train.stop_chi2);
        }
        // Neither stop fired within the epoch budget (the plateau rule's minimum gain was not
        // met for long enough): the lowest-loss epoch is returned, as for the plateau stop.
        StopReason::Patience | StopReason::Epochs => {
            let min = f
                .history
                .iter()
                .map(|h| h.total)
                .fold(f64::INFINITY, f64::min);
            assert_eq!(f.history[f.best_epoch].total, min);
            assert!(f.epochs_run > f.best_epoch);
            if f.stop_reason == StopReason::Epochs {
                assert_eq!(f.epochs_run, c.dip.train.epochs);
            }
        }
        // Ended fitting worse than the baseline: the baseline is returned.
        StopReason::Baseline => {
            let dc = &c.dip;
            let t = tikhonov::solve(&op, &y, &s, &dc.tikhonov, dc.weighting, dc.epsilon_weight);
            assert!(max_rel(&f.spectrum, &t.unwrap().spectrum) < 1e-9);
            return;
        }
        other => panic!("unexpected stop {other:?}"),
    }
    assert!((f.history[f.best_epoch].chi2 - c2).abs() < 1e-3 * c2);
}

/// Std over pixels of the U-Net's pre-Softplus output for input noise N(0, 0.1²), and the std of
/// the change in output when the input noise is redrawn (how much the output depends on z).
fn output_spread(init: spx::dip::NetInit, seed: u64) -> (f64, f64) {
    use spx::dip::unet::{UNet, UNetSpec};
    let dev = Device::flex();
    let mut rng = backend::seeded(&dev, seed);
    let n = 3000;
    let spec = UNetSpec {
        length: n,
        depth: 3,
        filters: 32,
        kernel_size: 3,
        leaky_slope: 0.2,
        init,
        positivity: false,
    };
    let net = UNet::new(&spec, &dev);
    let normal = rand_distr::Normal::new(0.0, 0.1).unwrap();
    let mut draw = || -> Vec<f32> {
        (0..n)
            .map(|_| rand_distr::Distribution::sample(&normal, &mut rng) as f32)
            .collect()
    };
    let (z1, z2) = (draw(), draw());
    let y1 = to_vec(net.forward(tensor_from(z1, [1, 1, n], &dev)));
    let y2 = to_vec(net.forward(tensor_from(z2, [1, 1, n], &dev)));
    let std = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    };
    let a: Vec<f64> = y1.iter().map(|&v| v as f64).collect();
    let d: Vec<f64> = y1.iter().zip(&y2).map(|(p, q)| (p - q) as f64).collect();
    (std(&a), std(&d))
}

/// The root cause of the default-size DIP stalling: with PyTorch's default conv init and no
/// normalisation layers, the 0.1-σ input noise is attenuated through the 16 convs, so the
/// output barely depends on z and the fit sits on a plateau. He init with the LeakyReLU gain
/// keeps the signal at the input's order of magnitude.
#[test]
fn kaiming_init_keeps_the_input_signal_through_the_unet() {
    use spx::dip::NetInit;
    let _rng = crate::common::burn_rng_lock();
    let (kstd, kdep) = output_spread(NetInit::Kaiming, 4);
    let (pstd, pdep) = output_spread(NetInit::Pytorch, 4);
    eprintln!(
        "kaiming: spread {kstd:.3e}, z-dependence {kdep:.3e}; pytorch: {pstd:.3e}, {pdep:.3e}"
    );
    assert!(kdep > 0.02, "He init: output follows z ({kdep})");
    assert!(
        pdep < 0.1 * kdep,
        "PyTorch init: output ~independent of z ({pdep})"
    );
}

/// `--truth`: the reported error and line fluxes equal a direct computation from the written
/// spectrum and the simulator's truth; a truth file without a `flux` column is a one-line error
/// naming the file and the column, with no outputs.
#[test]
fn cli_recon_scores_against_truth() {
    let _rng = crate::common::burn_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, _, err) = spx(&["dip", "simulate", "--out", d, "--seed", "1"]);
    assert_eq!(code, 0, "{err}");
    let csv = dir.path().join("simulated.csv");
    let truth_csv = dir.path().join("truth.csv");
    let recon = |truth: &Path, out: &Path| {
        recon_tikhonov(&csv, out, &["--truth", truth.to_str().unwrap(), "--json"])
    };
    let out = dir.path().join("r");
    let (code, stdout, err) = recon(&truth_csv, &out);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let t = &v["truth"];
    // Direct: the spectrum as written, the truth from the simulator's formula.
    let c = cfg();
    let spec = std::fs::read_to_string(out.join("spectrum.csv")).unwrap();
    // The exact grid (the CSV's 6-decimal wavelengths would shift the λ/R windows).
    let grid = linspace(0.75, 5.0, 3000);
    let flux: Vec<f64> = spec
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse::<f64>().unwrap())
        .collect();
    assert_eq!(flux.len(), grid.len());
    let truth: Vec<f64> = grid
        .iter()
        .map(|&l| truth_flux(l, &c.dip.simulate))
        .collect();
    let rms = simulate::relative_rms_written(&grid, &flux, &truth, 0.8, 4.95);
    let got = t["relative_rms"].as_f64().unwrap();
    assert!((got - rms).abs() < 1e-3 * rms, "{got} vs {rms}");
    // The smoothed-output error is reported beside it: the same with the written flux at λ/R.
    let rms_s = relative_rms(&grid, &flux, &truth, 0.8, 4.95);
    let got_s = t["relative_rms_smoothed_output"].as_f64().unwrap();
    assert!((got_s - rms_s).abs() < 1e-3 * rms_s, "{got_s} vs {rms_s}");
    // At 1000 observations per band the baseline resolves structure finer than λ/R (narrower
    // lines than the smoothed truth), which the written-spectrum score counts as error.
    assert!(got_s < 0.04 && got < 0.15, "Tikhonov errors {got}, {got_s}");
    // One score per feature the truth file lists (3 lines, PAH, 3 ices of the default source),
    // each equal to a direct measurement over that feature's window.
    let feats = simulate::Source::default_from(&c.dip.simulate).features(0.75, 5.0);
    let lines = t["lines"].as_array().unwrap();
    assert_eq!(lines.len(), feats.len());
    assert!(t["lines_note"].is_null());
    for (l, f) in lines.iter().zip(&feats) {
        assert!((l["wavelength"].as_f64().unwrap() - f.centre).abs() < 1e-6);
        let half = simulate::feature_half_width(f.centre, f.sigma);
        let want = simulate::measure_feature(&grid, &flux, f.centre, half)
            / simulate::measure_feature(&grid, &truth, f.centre, half);
        let ratio = l["ratio"].as_f64().unwrap();
        assert!(
            (ratio - want).abs() < 1e-3,
            "{}: {ratio} vs {want}",
            f.centre
        );
    }
    for l in LINES.iter() {
        let got = lines
            .iter()
            .find(|v| (v["wavelength"].as_f64().unwrap() - l.0).abs() < 1e-6)
            .unwrap()["ratio"]
            .as_f64()
            .unwrap();
        assert!((got - 1.0).abs() < 0.15, "line {}: {got}", l.0);
    }
    // A truth without `# feature` lines: no line ratios, and a note saying so.
    let plain = std::fs::read_to_string(&truth_csv)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let plain = write(dir.path(), "plain_truth.csv", &plain);
    let (code, stdout, err) = recon(&plain, &dir.path().join("r3"));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["truth"]["lines"].as_array().unwrap().len(), 0);
    assert!(
        v["truth"]["lines_note"]
            .as_str()
            .unwrap()
            .contains("lists no features")
    );
    // A truth file without `flux`.
    let bad = write(dir.path(), "bad_truth.csv", "wavelength,f\n0.7,1\n5.1,1\n");
    let out2 = dir.path().join("r2");
    let (code, _, err) = recon(&bad, &out2);
    assert_eq!(code, 2);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("bad_truth.csv") && err.contains("flux"),
        "{err}"
    );
    assert!(!out2.exists());
}

/// The judged kinds: heteroscedastic errors σ = U(2 %, 10 %)·|clean| + the band's floor, ~3 %
/// flagged rows with corrupted fluxes, `per_band` centres inside each band, a generator stream
/// other than the default's (same seed, different draws), deterministic per seed, and the
/// features listed in truth.csv.
#[test]
fn simulator_kinds_have_the_issue_noise_model_and_list_their_features() {
    use spx::dip::{NoiseModel, SourceKind};
    let mut c = cfg().dip.simulate;
    c.noise = NoiseModel::Relative;
    c.per_band = 400;
    c.glitch_fraction = 0.0;
    let dev = Device::flex();
    for kind in [SourceKind::Qso, SourceKind::Ice, SourceKind::Star] {
        c.kind = kind;
        let mut rng = backend::seeded(&dev, 3);
        let (src, rows) = simulate::simulate_kind(&c, 3, &mut rng);
        let mut rng2 = backend::seeded(&dev, 3);
        let (src2, rows2) = simulate::simulate_kind(&c, 3, &mut rng2);
        assert_eq!(src, src2);
        assert!(rows.iter().zip(&rows2).all(|(a, b)| a.flux == b.flux));
        assert_eq!(rows.len(), 6 * 400);
        let mut flagged = 0;
        for r in &rows {
            let b = r.band as usize - 1;
            let (lo, hi) = spx::dip::grid::BAND_RANGES[b];
            assert!(r.wavelength >= lo && r.wavelength < hi);
            assert!((r.bandwidth - r.wavelength / spx::dip::grid::BAND_R[b]).abs() < 1e-12);
            let frac = (r.flux_error - c.noise_floor_ujy[b]) / r.clean.abs();
            assert!(
                (0.02 - 1e-9..=0.10 + 1e-9).contains(&frac),
                "σ fraction {frac}"
            );
            // The clean flux is the Δν-weighted boxcar mean of the source.
            let want = simulate::boxcar_mean(r.wavelength, r.bandwidth, |l| src.flux(l));
            assert!((r.clean - want).abs() <= 1e-9 * want.abs());
            if r.flag & 1 == 1 {
                flagged += 1;
            }
        }
        let f = flagged as f64 / rows.len() as f64;
        assert!((0.015..0.05).contains(&f), "{kind:?}: flagged fraction {f}");
        // Written features come back from truth.csv.
        let dir = tempfile::tempdir().unwrap();
        let grid = linspace(0.75, 5.0, 600);
        let (_, tp) = spx::dip::recon::write_simulation(&rows, &src, &grid, dir.path(), 3).unwrap();
        let t = spx::dip::recon::read_truth(&tp, &grid).unwrap();
        let listed = src.features(0.75, 5.0);
        match kind {
            SourceKind::Star => assert!(t.features.is_none() && listed.is_empty()),
            _ => {
                let got = t.features.unwrap();
                assert_eq!(got.len(), listed.len());
                assert!(!got.is_empty());
                for (a, b) in got.iter().zip(&listed) {
                    assert_eq!(a.kind, b.kind);
                    assert!((a.centre - b.centre).abs() < 1e-6);
                }
            }
        }
    }
    // The default kind keeps its ChaCha8 stream: same rows as `simulate`.
    c.kind = SourceKind::Default;
    let mut r1 = backend::seeded(&dev, 3);
    let mut r2 = backend::seeded(&dev, 3);
    let a = simulate::simulate(&c, &mut r1);
    let (_, b) = simulate::simulate_kind(&c, 3, &mut r2);
    assert!(a.iter().zip(&b).all(|(p, q)| p.flux == q.flux));
    // Another kind with the same seed draws a different source.
    c.kind = SourceKind::Qso;
    let (q3, _) = simulate::simulate_kind(&c, 3, &mut backend::seeded(&dev, 3));
    let (q4, _) = simulate::simulate_kind(&c, 4, &mut backend::seeded(&dev, 4));
    assert_ne!(q3, q4);
}

/// Noise-free data on a straight line: even the smoothest spectrum fits them below χ²/M = 1,
/// so the automatic λ sits at its cap — and says so.
#[test]
fn tikhonov_reports_lambda_at_its_cap() {
    let grid = linspace(0.75, 5.0, 400);
    let c: Vec<f64> = (0..120).map(|i| 0.8 + 4.0 * i as f64 / 120.0).collect();
    let bw: Vec<f64> = c.iter().map(|l| l / 40.0).collect();
    let (op, _) = Operator::build(&grid, &c, &bw);
    let x: Vec<f64> = grid.iter().map(|l| 100.0 + 10.0 * l).collect();
    let y = op.apply(&x);
    let s = vec![5.0; y.len()];
    let t = tikhonov::solve(&op, &y, &s, &cfg().dip.tikhonov, Weighting::Variance, 0.0).unwrap();
    assert!(t.lambda_at_cap && !t.lambda_at_floor);
    assert_eq!(t.lambda, tikhonov::LAMBDA_MAX);
    assert!(t.chi2_per_obs < 0.01);
    // Curved data with noise: λ inside its range, χ²/M at the target.
    let mut rng = backend::seeded(&Device::flex(), 1);
    let n = rand_distr::Normal::new(0.0, 1.0).unwrap();
    let xc: Vec<f64> = grid
        .iter()
        .map(|l| 100.0 + 50.0 * (3.0 * l).sin())
        .collect();
    let yn: Vec<f64> = op
        .apply(&xc)
        .iter()
        .map(|v| v + rand_distr::Distribution::sample(&n, &mut rng))
        .collect();
    let s1 = vec![1.0; y.len()];
    let t = tikhonov::solve(&op, &yn, &s1, &cfg().dip.tikhonov, Weighting::Variance, 0.0).unwrap();
    assert!(!t.lambda_at_cap && !t.lambda_at_floor);
    assert!((t.chi2_per_obs - 1.0).abs() < 0.02, "{}", t.chi2_per_obs);
}

/// The accuracy claim at all-sky density, at reduced size (1000-pixel grid, 16 filters): on
/// sparse sources from the judged generator (qso, ice; 65 observations per band, σ = U(2 %,
/// 10 %)·flux + floor, 3 % flagged rows), the spectrum the DIP writes with the default settings
/// is scored against the truth smoothed to λ/R beside the Tikhonov baseline of the same run. The
/// pre-issue-20 defaults (raw network output, no resolution-element prior) are run on the first
/// source too: they ring, and this guard must tell them apart. Each line source is also fitted
/// with the discrepancy stop at χ²/M = 1 (`train.stop_sigmas = 0`), which lost to the baseline at
/// 65 per band on fresh seeds (issue #20): the guard fails if the lowered stop stops helping.
#[test]
fn dip_defaults_match_tikhonov_on_sparse_sources() {
    use spx::dip::{NoiseModel, SourceKind};
    let _rng = crate::common::burn_rng_lock();
    let mut results = Vec::new();
    let mut stopped_at_1 = Vec::new();
    // Emission peaks of the qso sources (DIP, baseline), judged on their mean: one source's
    // peak ratio moves by ±0.01 with the last bits of the convolutions' sums.
    let mut peaks = Vec::new();
    for (kind, seed) in [
        (SourceKind::Qso, 11u64),
        (SourceKind::Qso, 14),
        (SourceKind::Qso, 15),
        (SourceKind::Ice, 12),
        (SourceKind::Star, 13),
    ] {
        let mut c = cfg();
        c.dip.resolution = 1000;
        c.dip.net.filters = 16;
        c.dip.simulate.kind = kind;
        c.dip.simulate.noise = NoiseModel::Relative;
        c.dip.simulate.glitch_fraction = 0.0;
        c.dip.simulate.per_band = 65;
        c.run.seed = seed;
        let dir = tempfile::tempdir().unwrap();
        let (grid, csv, tp) = simulated_csv(&c, seed, dir.path());
        let score = |c: &Config| {
            let mut r = spx::dip::recon::reconstruct(
                &c.dip,
                &spx::backend::DeviceSpec::Cpu,
                c.run.seed,
                &csv,
                spx::logging::Progress::hidden(),
            )
            .unwrap();
            let truth = spx::dip::recon::read_truth(&tp, &grid).unwrap();
            spx::dip::recon::score_against(&mut r, &tp, truth);
            let t = r.summary.truth.unwrap();
            let b = t.baseline.unwrap();
            // Mean emission-peak ratio (recovered / truth at λ/R) of the DIP and the baseline.
            let peak = |v: &[spx::dip::recon::LineScore]| {
                let p: Vec<f64> = v
                    .iter()
                    .filter(|l| l.kind == simulate::FeatureKind::Emission)
                    .map(|l| l.peak_ratio)
                    .collect();
                p.iter().sum::<f64>() / p.len().max(1) as f64
            };
            (
                t.relative_rms,
                b.relative_rms,
                peak(&t.lines),
                peak(&b.lines),
            )
        };
        let (dip, tik, dpk, tpk) = score(&c);
        eprintln!(
            "{kind:?} seed {seed}: DIP {dip:.4}, Tikhonov {tik:.4}; emission peaks {dpk:.2} / {tpk:.2}"
        );
        if kind != SourceKind::Star {
            assert!(dip <= 1.5 * tik, "{kind:?}: DIP {dip} vs Tikhonov {tik}");
        }
        // Line peaks (vs the truth at λ/R) are kept at least as well as by the baseline (the
        // ice source's PAH peak is not: README); checked on the qso mean after the loop.
        if kind == SourceKind::Qso {
            peaks.push((dpk, tpk));
        }
        if kind == SourceKind::Star {
            // A blackbody whose baseline λ is below its cap at this size: the correction of the
            // smoothed start adds structure the data do not demand; without the warm-up and the
            // fallback to the baseline (the session-3 defaults, which had no Tikhonov step after
            // the fit either) it wrote 7.4 % vs 2.8 %.
            assert!(
                dip <= tik * (1.0 + 1e-9),
                "star: DIP {dip} vs Tikhonov {tik}"
            );
            let mut prev = c.clone();
            prev.dip.train.fallback_baseline = false;
            prev.dip.train.warmup_epochs = 0;
            prev.dip.prior.refine_cv_folds = 0;
            prev.dip.train.stop_sigmas = 0.0;
            let (p, _, _, _) = score(&prev);
            eprintln!("  without warm-up and fallback: DIP {p:.4}");
            assert!(p > 1.5 * dip, "without warm-up and fallback {p} vs {dip}");
            continue;
        }
        if kind == SourceKind::Qso && seed == 11 {
            let mut old = c.clone();
            old.dip.prior.smooth_output = false;
            old.dip.prior.smoothness_weight = 0.0;
            old.dip.net.start_baseline = false;
            old.dip.train.warmup_epochs = 0;
            old.dip.train.fallback_baseline = false;
            old.dip.prior.smooth_written_density = 0.0;
            old.dip.prior.refine_cv_folds = 0;
            old.dip.train.stop_sigmas = 0.0;
            let (o, t2, _, _) = score(&old);
            eprintln!("  pre-issue defaults: DIP {o:.4} (Tikhonov {t2:.4})");
            assert_eq!(t2, tik);
            assert!(o > 1.15 * dip, "old defaults {o} vs new {dip}");
        }
        // The same source stopped at χ²/M = 1 (`train.stop_sigmas = 0`, the session-6 stop):
        // the fit leaves the lines and bands short (README, issue #20's seeds 6–8).
        let mut at1 = c.clone();
        at1.dip.train.stop_sigmas = 0.0;
        let (a, t2, _, _) = score(&at1);
        eprintln!("  stopped at χ²/M = 1: DIP {a:.4} (Tikhonov {t2:.4})");
        assert_eq!(t2, tik);
        stopped_at_1.push(a);
        results.push((dip, tik));
    }
    // Over the four sparse line sources (qso 11, 14, 15, ice 12; measured 0.198 vs 0.207, each
    // source but qso 14 below its baseline) the DIP is below the baseline; stopped at χ²/M = 1
    // it is not (0.209), and lowering the stop must stay measurably better than that.
    let (d, t): (f64, f64) = results
        .iter()
        .fold((0.0, 0.0), |a, r| (a.0 + r.0, a.1 + r.1));
    assert!(d <= t, "mean DIP {d} vs Tikhonov {t} (sums)");
    let a: f64 = stopped_at_1.iter().sum();
    assert!(
        a > 1.02 * d,
        "stopped at χ²/M = 1: {a} vs defaults {d} (sums)"
    );
    let n = peaks.len() as f64;
    let (dpk, tpk) = peaks
        .iter()
        .fold((0.0, 0.0), |a, p| (a.0 + p.0 / n, a.1 + p.1 / n));
    assert!(
        dpk >= 0.9 * tpk,
        "qso emission peaks {dpk} vs {tpk} (means)"
    );
}

/// `c.dip.simulate`'s source for `seed` written into `dir` as spxquery CSV + truth file: the
/// grid, the CSV path and the truth path.
fn simulated_csv(
    c: &Config,
    seed: u64,
    dir: &std::path::Path,
) -> (Vec<f64>, std::path::PathBuf, std::path::PathBuf) {
    let grid = linspace(0.75, 5.0, c.dip.resolution);
    let (src, rows) = simulate::simulate_kind(
        &c.dip.simulate,
        seed,
        &mut backend::seeded(&Device::flex(), seed),
    );
    let (csv, tp) = spx::dip::recon::write_simulation(&rows, &src, &grid, dir, seed).unwrap();
    (grid, csv, tp)
}

/// A judged-generator source (`kind`, `per_band`, `seed`; relative noise, no glitches) through
/// `spx dip recon --solver tikhonov` at full size: the config, the grid, the reconstruction and
/// the true spectrum on the grid.
fn baseline_of_simulated(
    kind: spx::dip::SourceKind,
    per_band: usize,
    seed: u64,
) -> (Config, Vec<f64>, spx::dip::recon::Reconstruction, Vec<f64>) {
    let mut c = cfg();
    c.dip.simulate.kind = kind;
    c.dip.simulate.noise = spx::dip::NoiseModel::Relative;
    c.dip.simulate.glitch_fraction = 0.0;
    c.dip.simulate.per_band = per_band;
    c.dip.solver = spx::dip::Solver::Tikhonov;
    let dir = tempfile::tempdir().unwrap();
    let (grid, csv, tp) = simulated_csv(&c, seed, dir.path());
    let r = spx::dip::recon::reconstruct(
        &c.dip,
        &spx::backend::DeviceSpec::Cpu,
        seed,
        &csv,
        spx::logging::Progress::hidden(),
    )
    .unwrap();
    let truth = spx::dip::recon::read_truth(&tp, &grid).unwrap().flux;
    (c, grid, r, truth)
}

/// The fluxes and errors of a reconstruction's observations (µJy).
fn fluxes_and_errors(r: &spx::dip::recon::Reconstruction) -> (Vec<f64>, Vec<f64>) {
    (
        r.obs.iter().map(|o| o.flux).collect(),
        r.obs.iter().map(|o| o.flux_error).collect(),
    )
}

/// The λ/R pass of the written spectrum is decided per source by cross-validating the baseline
/// (`dip.prior.smooth_written_cv_folds`), not by the density alone: two YSOs at 250 per band,
/// where the pass costs one 9 % (its solution does not resolve the narrow ice bands and PAH, the
/// pass only blurs them) and saves the other 10 %, and a dense quasar (whose broad lines the
/// solution resolves below λ/R) where it saves 80 %. Each decision must agree with the truth
/// (the baseline scored as solved and after the pass, against the truth at λ/R); the density
/// rule alone passes all three (issue 20: ice at 250 per band lost to the baseline that way).
#[test]
fn written_pass_follows_held_out_observations() {
    use spx::dip::SourceKind;
    let _rng = crate::common::burn_rng_lock();
    for (kind, per_band, seed, want) in [
        (SourceKind::Qso, 1000usize, 21u64, true),
        (SourceKind::Ice, 250, 3, false),
        (SourceKind::Ice, 250, 25, true),
    ] {
        let (c, grid, r, truth) = baseline_of_simulated(kind, per_band, seed);
        // At these densities the density rule alone would pass the written spectrum.
        let per_element = r.op.m as f64 / spx::dip::batch::resolution_elements(&grid);
        assert!(per_element >= c.dip.prior.smooth_written_density);
        let (y, s) = fluxes_and_errors(&r);
        let p = Problem {
            op: &r.op,
            y: &y,
            sigma: &s,
        };
        let t = r.summary.tikhonov.as_ref().unwrap();
        let helps = spx::dip::batch::written_pass_helps(&c.dip, &p, t, &grid, 5).expect("decided");
        let (lo, hi) = (grid[0] + 0.05, grid[grid.len() - 1] - 0.05);
        let raw = simulate::relative_rms_written(&grid, &r.flux, &truth, lo, hi);
        let passed = simulate::relative_rms_written(
            &grid,
            &simulate::smooth_to_resolution(&grid, &r.flux),
            &truth,
            lo,
            hi,
        );
        eprintln!(
            "{kind:?} {per_band}/band seed {seed}: baseline {raw:.4}, after the pass {passed:.4}; cross-validation says pass: {helps}"
        );
        assert_eq!(helps, passed < raw, "{kind:?}: {raw} vs {passed}");
        assert_eq!(helps, want, "{kind:?}");
    }
}

/// The Tikhonov step after the fit (`dip.prior.refine_cv_folds`) is taken exactly when the
/// spectrum it starts from left structure the data resolve, checked against the truth on a YSO at
/// 250 per band (the source the DIP lost on): started from the true spectrum itself (residuals =
/// the noise) cross-validation declines it; started from a spectrum blurred so that the CO band
/// and the PAH peak are too shallow (what the DIP's early stop left), it takes it and the written
/// error against the truth drops.
#[test]
fn refine_step_follows_held_out_observations() {
    use spx::dip::{SourceKind, refine};
    let _rng = crate::common::burn_rng_lock();
    let (c, grid, r, truth) = baseline_of_simulated(SourceKind::Ice, 250, 3);
    let (y, s) = fluxes_and_errors(&r);
    let p = Problem {
        op: &r.op,
        y: &y,
        sigma: &s,
    };
    let t = r.summary.tikhonov.as_ref().unwrap();
    let (lo, hi) = (grid[0] + 0.05, grid[grid.len() - 1] - 0.05);
    let err = |x: &[f64]| simulate::relative_rms_written(&grid, x, &truth, lo, hi);
    let (folds, factors, w, eps) = (
        c.dip.prior.refine_cv_folds,
        c.dip.prior.refine_factors.clone(),
        c.dip.weighting,
        c.dip.epsilon_weight,
    );
    assert!(folds >= 2, "the step is on by default");

    // The true spectrum: its residuals are the noise, and the step only fits noise.
    let exact = refine::choose(&p, &truth, t, &factors, folds, w, eps).expect("decided");
    eprintln!("from the truth: {exact:?}");
    assert_eq!(exact.chosen, None, "{exact:?}");

    // The truth blurred over ~4 resolution elements: the CO band and the PAH peak too shallow.
    let mut blurred = truth.clone();
    for _ in 0..16 {
        blurred = simulate::smooth_to_resolution(&grid, &blurred);
    }
    let choice = refine::choose(&p, &blurred, t, &factors, folds, w, eps).expect("decided");
    let f = choice.chosen.expect("the step is taken on a blurred start");
    let stepped = refine::apply(&p, &blurred, t, f, w, eps).unwrap();
    eprintln!(
        "from the blurred truth: {choice:?}; error {:.4} -> {:.4} (baseline {:.4})",
        err(&blurred),
        err(&stepped),
        err(&r.flux)
    );
    assert!(err(&stepped) < 0.8 * err(&blurred));
    // The step is anchored on its start: the χ² it adds back is what the data resolve.
    assert!(chi2(&r.op, &stepped, &y, &s) < chi2(&r.op, &blurred, &y, &s));
}

/// Small simulated sources of different kinds and observation counts, written as CSVs in `dir`
/// (`src{i}.csv`), with the config the catalog tests fit them with.
fn small_catalog(dir: &Path, n: usize) -> (Config, Vec<PathBuf>) {
    let mut c = cfg();
    c.dip.resolution = 256;
    c.dip.net.filters = 4;
    c.dip.net.depth = 2;
    c.dip.train.epochs = 30;
    c.dip.train.lr = 3e-3;
    c.dip.simulate.noise = spx::dip::NoiseModel::Relative;
    let kinds = [
        spx::dip::SourceKind::Qso,
        spx::dip::SourceKind::Star,
        spx::dip::SourceKind::Ice,
    ];
    let grid = linspace(c.dip.wavelength_min, c.dip.wavelength_max, c.dip.resolution);
    let files = (0..n)
        .map(|i| {
            let mut sc = c.dip.simulate.clone();
            sc.kind = kinds[i % 3];
            sc.per_band = 20 + 7 * i;
            let seed = 100 + i as u64;
            let (src, rows) =
                simulate::simulate_kind(&sc, seed, &mut backend::seeded(&Device::flex(), seed));
            let sub = dir.join(format!("sim{i}"));
            let (csv, _) =
                spx::dip::recon::write_simulation(&rows, &src, &grid, &sub, seed).unwrap();
            let to = dir.join(format!("src{i}.csv"));
            std::fs::rename(&csv, &to).unwrap();
            to
        })
        .collect();
    (c, files)
}

/// Two fits per problem (seeds `7 + 3i` and `8 + 3i`), in problem order.
fn two_jobs_each(probs: &[(Operator, Vec<f64>, Vec<f64>)]) -> Vec<spx::dip::batch::Job<'_>> {
    probs
        .iter()
        .enumerate()
        .flat_map(|(i, (op, y, s))| {
            (0..2).map(move |k| spx::dip::batch::Job {
                problem: Problem { op, y, sigma: s },
                seed: 7 + 3 * i as u64 + k,
            })
        })
        .collect()
}

fn problem_of(c: &Config, csv: &Path) -> (Operator, Vec<f64>, Vec<f64>) {
    let grid = linspace(c.dip.wavelength_min, c.dip.wavelength_max, c.dip.resolution);
    let (obs, _) = input::load(csv, &c.dip.qc).unwrap();
    let (op, kept) = Operator::build(
        &grid,
        &obs.iter().map(|o| o.wavelength).collect::<Vec<_>>(),
        &obs.iter().map(|o| o.bandwidth).collect::<Vec<_>>(),
    );
    let obs: Vec<_> = kept.iter().map(|&i| obs[i].clone()).collect();
    (
        op,
        obs.iter().map(|o| o.flux).collect(),
        obs.iter().map(|o| o.flux_error).collect(),
    )
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1e-300);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0.0, f64::max)
}

/// The batched path's promise: every fit in a batch (own weights, noise, scale, rows, Adam
/// state, stopping rule; rows padded to the longest problem; fits leaving as they stop) equals
/// the same fit alone, for the plain loss and for validation split + pixel loss + flat start +
/// EMA + two smoothing passes.
#[test]
fn batched_fits_equal_lone_fits() {
    let _rng = crate::common::burn_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (c, files) = small_catalog(dir.path(), 3);
    let probs: Vec<_> = files.iter().map(|f| problem_of(&c, f)).collect();
    let ms: Vec<usize> = probs.iter().map(|p| p.0.m).collect();
    assert!(
        ms[0] != ms[1] && ms[1] != ms[2],
        "different row counts: {ms:?}"
    );
    let dev = Device::flex().autodiff();
    let pb = indicatif::ProgressBar::hidden();
    let mut variants = Vec::new();
    let mut a = c.dip.clone();
    a.net.start_baseline = false;
    // Full steps from the start, so that the plateau rule stops the fits at different epochs.
    a.train.warmup_epochs = 0;
    a.train.early_stop_patience = 4;
    a.train.early_stop_min_delta = 0.02;
    variants.push(a);
    let mut b = c.dip.clone();
    b.train.validation_fraction = 0.2;
    b.train.validation_patience = 5;
    b.train.warmup_epochs = 0;
    b.train.loss_mode = LossMode::Pixel;
    b.net.start_flat = true;
    b.net.start_baseline = false;
    b.train.ema_decay = 0.5;
    b.prior.smooth_passes = 2;
    variants.push(b);
    // The defaults: a correction of a smooth Tikhonov start.
    variants.push(c.dip.clone());
    for (v, dc) in variants.iter().enumerate() {
        let jobs = two_jobs_each(&probs);
        let batched = spx::dip::batch::fit_batch(dc, &jobs, &dev, &pb);
        let mut epochs = Vec::new();
        for (j, f) in jobs.iter().zip(&batched) {
            let alone = spx::dip::batch::fit(dc, &j.problem, &dev, j.seed, &pb);
            let d = max_rel(&f.spectrum, &alone.spectrum);
            assert!(
                d <= 1e-5,
                "variant {v} seed {}: batched vs alone {d:e}",
                j.seed
            );
            assert_eq!(
                (f.epochs_run, f.best_epoch, f.stop_reason),
                (alone.epochs_run, alone.best_epoch, alone.stop_reason)
            );
            assert_eq!(f.history.len(), alone.history.len());
            epochs.push(f.epochs_run);
        }
        // Some fits stopped before others, so rows did leave the batch mid-run.
        assert!(
            v == 2 || epochs.iter().min() < epochs.iter().max(),
            "variant {v}: {epochs:?}"
        );
    }
}

/// Catalog mode end to end through the library: a directory of sources, one HDF5 file whose
/// rows equal `spx dip recon` of each source alone; a rerun resumes every source from
/// `catalog-parts/`; two shards merged equal the unsharded file.
#[test]
fn catalog_equals_lone_runs_resumes_and_merges() {
    use spx::dip::catalog::{self, CatalogSettings};
    let _rng = crate::common::burn_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let src_dir = dir.path().join("in");
    std::fs::create_dir_all(&src_dir).unwrap();
    let (mut c, files) = small_catalog(&src_dir, 4);
    c.dip.batch_sources = 3;
    c.dip.ensemble = 2;
    // A source that fails QC (every row flagged bad).
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let bad: String = text
        .lines()
        .map(|l| {
            if l.starts_with("sim_") {
                let mut f: Vec<&str> = l.split(',').collect();
                f[7] = "1";
                f.join(",")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    write(&src_dir, "zz_bad.csv", &bad);
    let sources = catalog::collect_sources(std::slice::from_ref(&src_dir)).unwrap();
    assert_eq!(sources.len(), 5);
    assert_eq!(sources[4].id, "zz_bad");
    let settings = |out: &Path, shard| CatalogSettings {
        dip: c.dip.clone(),
        device: spx::backend::DeviceSpec::Cpu,
        seed: 5,
        shard,
        plots: false,
        out: out.to_path_buf(),
    };
    let out = dir.path().join("all");
    let rep = catalog::run(
        &settings(&out, None),
        &sources,
        spx::logging::Progress::hidden(),
    )
    .unwrap();
    assert_eq!((rep.sources, rep.fitted, rep.resumed), (5, 4, 0));
    assert_eq!(rep.failed.len(), 1);
    assert!(rep.failed[0].1.contains("flag"), "{:?}", rep.failed);
    let (grid, rows, meta) = catalog::read_catalog(&rep.file).unwrap();
    assert_eq!(grid.len(), 256);
    assert_eq!((meta.n_sources, meta.ensemble), (5, 2));
    for (r, f) in rows.iter().zip(&files) {
        let alone = spx::dip::recon::reconstruct(
            &c.dip,
            &spx::backend::DeviceSpec::Cpu,
            5,
            f,
            spx::logging::Progress::hidden(),
        )
        .unwrap();
        assert!(r.error.is_none());
        let d = max_rel(&r.flux, &alone.flux);
        assert!(d <= 1e-5, "{}: catalog vs alone {d:e}", r.id);
        assert!(
            max_rel(
                r.flux_std.as_ref().unwrap(),
                alone.flux_std.as_ref().unwrap()
            ) <= 1e-5
        );
        assert_eq!(r.baseline_flux, alone.baseline.unwrap());
        assert_eq!(r.observations_used, alone.summary.observations_used);
    }
    assert!(rows[4].error.is_some() && rows[4].flux.is_empty());
    // Rerun: everything comes from catalog-parts/, nothing is refitted, same numbers.
    let again = catalog::run(
        &settings(&out, None),
        &sources,
        spx::logging::Progress::hidden(),
    )
    .unwrap();
    assert_eq!(again.resumed, 5);
    let (_, rows2, _) = catalog::read_catalog(&again.file).unwrap();
    assert!(
        rows == rows2,
        "a resumed run differs from the run it resumed"
    );
    // Two shards into their own directory, merged.
    let sh = dir.path().join("shards");
    let f1 = catalog::run(
        &settings(&sh, Some((1, 2))),
        &sources,
        spx::logging::Progress::hidden(),
    )
    .unwrap()
    .file;
    let f2 = catalog::run(
        &settings(&sh, Some((2, 2))),
        &sources,
        spx::logging::Progress::hidden(),
    )
    .unwrap()
    .file;
    assert!(catalog::merge(std::slice::from_ref(&f1), &sh.join("m.h5")).is_err());
    assert_eq!(catalog::merge(&[f2, f1], &sh.join("merged.h5")).unwrap(), 5);
    let (_, merged, m) = catalog::read_catalog(&sh.join("merged.h5")).unwrap();
    assert_eq!((m.shard, m.n_shards), (1, 1));
    for (a, b) in merged.iter().zip(&rows) {
        assert_eq!(
            (a.index, &a.id, &a.flux, &a.error),
            (b.index, &b.id, &b.flux, &b.error)
        );
    }
}

/// `spx dip recon --shard` killed after its first saved source and rerun ends with the file an
/// uninterrupted run writes (seconds aside); a failing source gives exit status 1 and is listed.
#[test]
fn catalog_shard_kill_and_rerun_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = dir.path().join("in");
    std::fs::create_dir_all(&src_dir).unwrap();
    let (_c, _files) = small_catalog(&src_dir, 4);
    let args = |out: &Path| -> Vec<String> {
        [
            "dip",
            "recon",
            src_dir.to_str().unwrap(),
            "--shard",
            "1/1",
            "--batch-sources",
            "1",
            "--out",
            out.to_str().unwrap(),
            "--set",
            "dip.resolution=256",
            "--set",
            "dip.net.filters=4",
            "--set",
            "dip.net.depth=2",
            "--set",
            "dip.train.epochs=40",
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let full = dir.path().join("full");
    let a: Vec<String> = args(&full);
    let (rc, _, err) = spx(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(rc, 0, "{err}");
    let cut = dir.path().join("cut");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spx"))
        .args(args(&cut))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let parts = cut.join("catalog-parts");
    let t0 = std::time::Instant::now();
    loop {
        let n = std::fs::read_dir(&parts)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "h5"))
                })
                .count()
            })
            .unwrap_or(0);
        if n >= 1 || t0.elapsed().as_secs() > 300 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let h5 = cut.join("catalog-shard-1-of-1.h5");
    assert!(!h5.exists(), "killed before the end: no output file");
    let b = args(&cut);
    let (rc, out, err) = spx(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(rc, 0, "{out}{err}");
    let (_, x, _) = spx::dip::catalog::read_catalog(&h5).unwrap();
    let (_, y, _) = spx::dip::catalog::read_catalog(&full.join("catalog-shard-1-of-1.h5")).unwrap();
    let strip = |v: Vec<spx::dip::catalog::SourceResult>| {
        v.into_iter()
            .map(|mut r| {
                r.seconds = 0.0;
                r
            })
            .collect::<Vec<_>>()
    };
    let (x, y) = (strip(x), strip(y));
    assert_eq!(x.len(), y.len());
    for (a, b) in x.iter().zip(&y) {
        assert!(
            a == b,
            "{}: killed + rerun differs from uninterrupted",
            a.id
        );
    }
    // A source that fails: listed, the others written, exit status 1.
    write(
        &src_dir,
        "empty.csv",
        "flux,flux_error,wavelength,bandwidth,band,flag\n1,1,1.0,0.01,D1,1\n",
    );
    let (rc, out, _) = spx(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("failed: empty"), "{out}");
}

/// `spx dip recon --ensemble 3`, killed after its first member was stored, resumes: the rerun
/// reuses the stored member, fits the rest, removes the parts, and writes the same bytes as an
/// uninterrupted run.
#[test]
fn ensemble_kill_and_resume_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sim = d.join("sim");
    let (code, _, err) = spx(&[
        "--seed",
        "5",
        "--out",
        sim.to_str().unwrap(),
        "dip",
        "simulate",
        "--kind",
        "qso",
        "--noise",
        "relative",
        "--per-band",
        "40",
    ]);
    assert_eq!(code, 0, "{err}");
    let csv = sim.join("simulated.csv");
    let args = |out: &Path| -> Vec<String> {
        [
            "--threads",
            "1",
            "--out",
            out.to_str().unwrap(),
            "--set",
            "dip.resolution=512",
            "--set",
            "dip.net.filters=4",
            "--set",
            "dip.net.depth=2",
            "--set",
            "dip.train.stop_chi2=0",
            "--set",
            "dip.train.early_stop_patience=0",
            "--set",
            "dip.batch_sources=1",
            "dip",
            "recon",
            csv.to_str().unwrap(),
            "--ensemble",
            "3",
            "--epochs",
            "400",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let whole = d.join("whole");
    let a: Vec<String> = args(&whole);
    let (code, _, err) = spx(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert!(!whole.join("ensemble-parts").exists(), "parts removed");

    let killed = d.join("killed");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spx"))
        .args(args(&killed))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let parts = killed.join("ensemble-parts");
    let t0 = std::time::Instant::now();
    let stored = |p: &Path| {
        std::fs::read_dir(p).map_or(0, |r| {
            r.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("member-"))
                .count()
        })
    };
    while stored(&parts) == 0 && t0.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let n = stored(&parts);
    assert!(
        (1..3).contains(&n),
        "killed with {n} of 3 members stored (too fast a box?)"
    );
    assert!(!killed.join("spectrum.csv").exists());
    let b: Vec<String> = args(&killed);
    let (code, stdout, err) = spx(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains(&format!("resumed {n} of 3 ensemble members")),
        "{stdout}"
    );
    assert!(
        !parts.exists(),
        "parts removed after the outputs are written"
    );
    for f in ["spectrum.csv", "loss.csv"] {
        assert_eq!(
            std::fs::read(whole.join(f)).unwrap(),
            std::fs::read(killed.join(f)).unwrap(),
            "{f}"
        );
    }
    // summary.toml equal but for timings and paths.
    let norm = |p: &Path| -> String {
        std::fs::read_to_string(p.join("summary.toml"))
            .unwrap()
            .lines()
            .filter(|l| !l.contains("seconds") && !l.contains(p.to_str().unwrap()))
            .filter(|l| !l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(norm(&whole), norm(&killed));
}

/// Restores (`train.restore_*`, the original DIP code's remedy for a diverging fit) act per row
/// of a stacked fit. At a step size that makes some of six small fits jump (lr 0.03, 5 warm-up
/// steps, snapshots every 5 epochs, jump factor 2): a jumped row is put back to its snapshot —
/// its next epoch's loss equals the snapshot's, bit for bit — and its history up to the jump is
/// the unrestored run's; the rows that never jump are exactly the unrestored run's (the others'
/// restores do not touch them); every row equals its fit alone; and a fit that misses the
/// discrepancy target without restores (falls back to the baseline, or runs out of epochs)
/// reaches it with them. (The last is a trajectory:
/// if a change of the kernels' bits moves it, pick another step size where it holds.)
#[test]
fn restore_puts_a_jumped_row_back_to_its_snapshot() {
    let _rng = crate::common::burn_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (c, files) = small_catalog(dir.path(), 3);
    let probs: Vec<_> = files.iter().map(|f| problem_of(&c, f)).collect();
    let dev = Device::flex().autodiff();
    let pb = indicatif::ProgressBar::hidden();
    let mut dc = c.dip.clone();
    dc.train.lr = 0.03;
    dc.train.warmup_epochs = 5;
    dc.train.epochs = 400;
    dc.train.restore_every = 5;
    dc.train.restore_jump = 2.0;
    // the factor rule alone here; the σ rule below; no stall restores
    dc.train.restore_jump_sigmas = 0.0;
    dc.train.stall_restore_epochs = 0;
    dc.train.restore_lr_factor = 0.5;
    dc.train.max_restores = 3;
    let jobs = two_jobs_each(&probs);
    let on = spx::dip::batch::fit_batch(&dc, &jobs, &dev, &pb);
    let mut off_cfg = dc.clone();
    off_cfg.train.max_restores = 0;
    let off = spx::dip::batch::fit_batch(&off_cfg, &jobs, &dev, &pb);
    let restored: Vec<usize> = (0..jobs.len())
        .filter(|&j| !on[j].restores.is_empty())
        .collect();
    assert!(
        !restored.is_empty() && restored.len() < jobs.len(),
        "some rows restore, some do not: {restored:?}"
    );
    let mut rescued = 0;
    for (j, (a, b)) in on.iter().zip(&off).enumerate() {
        assert!(b.restores.is_empty());
        if a.restores.is_empty() {
            // Untouched by the other rows' restores.
            assert_eq!(a.spectrum, b.spectrum, "row {j}");
            assert_eq!(
                (a.epochs_run, a.best_epoch, a.stop_reason),
                (b.epochs_run, b.best_epoch, b.stop_reason)
            );
            let (ha, hb): (Vec<f64>, Vec<f64>) = (
                a.history.iter().map(|h| h.total).collect(),
                b.history.iter().map(|h| h.total).collect(),
            );
            assert_eq!(ha, hb, "row {j}");
            continue;
        }
        assert!(a.restores.len() <= dc.train.max_restores);
        // Identical to the unrestored run up to its first jump.
        let first = a.restores[0].epoch;
        for e in 0..=first {
            assert_eq!(a.history[e].total, b.history[e].total, "row {j} epoch {e}");
        }
        for r in &a.restores {
            let (e, s) = (r.epoch, r.to_epoch);
            assert!(s < e && s % dc.train.restore_every == 0, "{r:?}");
            let (jumped, snap) = (a.history[e].total, a.history[s].total);
            assert!(jumped > dc.train.restore_jump * snap, "row {j}: {r:?}");
            // The epoch after the restore runs the snapshot's weights: the snapshot's loss.
            assert_eq!(a.history[e + 1].total, snap, "row {j}: {r:?}");
            assert_eq!(a.history[e + 1].chi2, a.history[s].chi2);
        }
        // Rescued: without restores the fit fell back to the baseline or ran out of epochs
        // short of the discrepancy target; with them it reaches the target.
        if matches!(b.stop_reason, StopReason::Baseline | StopReason::Epochs)
            && a.stop_reason == StopReason::Discrepancy
        {
            rescued += 1;
        }
    }
    assert!(
        rescued > 0,
        "a fit that misses the discrepancy target without restores reaches it with them: {:?} vs {:?}",
        on.iter().map(|f| f.stop_reason).collect::<Vec<_>>(),
        off.iter().map(|f| f.stop_reason).collect::<Vec<_>>()
    );
    // The σ rule alone (no doubling needed): every restore follows a rise of the total loss
    // above its snapshot's by more than k·√(2M), and the next epoch reproduces the snapshot.
    let mut sc = dc.clone();
    sc.train.restore_jump = 1e6;
    sc.train.restore_jump_sigmas = 5.0;
    assert_eq!(sc.train.validation_fraction, 0.0);
    let sig = spx::dip::batch::fit_batch(&sc, &jobs, &dev, &pb);
    assert!(sig.iter().any(|f| !f.restores.is_empty()));
    for (f, job) in sig.iter().zip(&jobs) {
        let margin = 5.0 * (2.0 * job.problem.op.m as f64).sqrt();
        for r in &f.restores {
            let (jumped, snap) = (f.history[r.epoch].total, f.history[r.to_epoch].total);
            assert!(
                jumped > snap + margin,
                "{r:?}: {jumped} vs {snap} + {margin}"
            );
            assert_eq!(f.history[r.epoch + 1].total, snap, "{r:?}");
        }
    }
    // Each row, restores and all, is its fit alone.
    for (j, f) in jobs.iter().zip(&on) {
        let alone = spx::dip::batch::fit(&dc, &j.problem, &dev, j.seed, &pb);
        assert_eq!(f.restores, alone.restores);
        assert!(max_rel(&f.spectrum, &alone.spectrum) <= 1e-5);
        assert_eq!(
            (f.epochs_run, f.best_epoch, f.stop_reason),
            (alone.epochs_run, alone.best_epoch, alone.stop_reason)
        );
    }
}

/// The stall restore (`train.stall_restore_epochs`): a fit whose total loss has not improved for
/// P epochs while its best spectrum fits the data worse than both the discrepancy target and the
/// baseline (it would fall back if it stopped) goes back to its lowest-loss snapshot at a halved
/// step size. With P = the plateau patience, on six small fits at step sizes that make some of
/// them stall (the jump rules off): the rule touches exactly the fits that without it stop on the
/// plateau and fall back to the baseline, at the epoch they would stop (every other row is the
/// rule-off run's, bit for bit); every restore follows P epochs without an
/// `early_stop_min_delta` improvement on the loss before them, while the best loss's χ²/M is above
/// max(1, the baseline's); it goes back to the snapshot with the lowest loss so far, whose loss
/// the next epoch reproduces; no fit falls back while it has restores and epochs left; and some
/// fit that falls back without the rule does not with it. (Which fits stall is a trajectory,
/// hence five step sizes; on the session-9 kernels 8 of the 30 fits fall back without the rule,
/// 4 of them with it, one reaching the discrepancy stop; the other checks hold at each.)
#[test]
fn stall_restore_rescues_a_fit_that_would_fall_back() {
    let _rng = crate::common::burn_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (c, files) = small_catalog(dir.path(), 3);
    let probs: Vec<_> = files.iter().map(|f| problem_of(&c, f)).collect();
    let dev = Device::flex().autodiff();
    let pb = indicatif::ProgressBar::hidden();
    let jobs = two_jobs_each(&probs);
    // The fallback threshold of each job: max(stop_chi2, the baseline's χ²/M).
    let above: Vec<f64> = jobs
        .iter()
        .map(|j| {
            let p = &j.problem;
            let t = tikhonov::solve(
                p.op,
                p.y,
                p.sigma,
                &c.dip.tikhonov,
                c.dip.weighting,
                c.dip.epsilon_weight,
            )
            .unwrap();
            (chi2(p.op, &t.spectrum, p.y, p.sigma) / p.op.m as f64).max(c.dip.train.stop_chi2)
        })
        .collect();
    let (p, every, delta) = (60, 5, 1e-3);
    let (mut rescued, mut stalled) = (0, 0);
    let mut seen = Vec::new();
    for lr in [0.01, 0.006, 0.004, 0.015, 0.002] {
        let mut dc = c.dip.clone();
        dc.train.lr = lr;
        dc.train.warmup_epochs = 5;
        dc.train.epochs = 600;
        dc.train.early_stop_patience = p;
        dc.train.early_stop_min_delta = delta;
        dc.train.restore_every = every;
        dc.train.restore_jump = 1e6;
        dc.train.restore_jump_sigmas = 0.0;
        dc.train.restore_lr_factor = 0.5;
        dc.train.max_restores = 3;
        dc.train.stall_restore_epochs = p;
        let mut off_cfg = dc.clone();
        off_cfg.train.stall_restore_epochs = 0;
        let on = spx::dip::batch::fit_batch(&dc, &jobs, &dev, &pb);
        let off = spx::dip::batch::fit_batch(&off_cfg, &jobs, &dev, &pb);
        for (j, (a, b)) in on.iter().zip(&off).enumerate() {
            assert!(b.restores.is_empty(), "the jump rules are off");
            seen.push((lr, j, b.stop_reason, a.stop_reason, a.restores.len()));
            // A fit falls back only with no restores left, or at the end of its epochs.
            if a.stop_reason == StopReason::Baseline {
                assert!(
                    a.restores.len() == dc.train.max_restores || a.epochs_run == dc.train.epochs,
                    "lr {lr} row {j}"
                );
            }
            if a.restores.is_empty() {
                assert_eq!(a.spectrum, b.spectrum, "lr {lr} row {j}");
                assert_eq!(
                    (a.epochs_run, a.best_epoch, a.stop_reason),
                    (b.epochs_run, b.best_epoch, b.stop_reason)
                );
                continue;
            }
            stalled += 1;
            let h: Vec<f64> = a.history.iter().map(|h| h.total).collect();
            let first = a.restores[0].epoch;
            // Without the rule: the plateau stop at that epoch, and the baseline.
            assert_eq!(
                (b.stop_reason, b.epochs_run),
                (StopReason::Baseline, first + 1),
                "lr {lr} row {j}"
            );
            let hb: Vec<f64> = b.history.iter().map(|h| h.total).collect();
            assert_eq!(h[..=first], hb[..], "lr {lr} row {j}");
            for r in &a.restores {
                let e = r.epoch;
                // P epochs without an improvement on the loss before them.
                let before = h[..=e - p].iter().cloned().fold(f64::INFINITY, f64::min);
                assert!(
                    h[e + 1 - p..=e]
                        .iter()
                        .all(|&v| v >= (1.0 - delta) * before),
                    "lr {lr} row {j}: {r:?}"
                );
                // ... while the best so far would fall back.
                let best = (0..=e).min_by(|&x, &y| h[x].total_cmp(&h[y])).unwrap();
                assert!(a.history[best].chi2 > above[j], "lr {lr} row {j}: {r:?}");
                // Back to the lowest-loss snapshot so far (snapshots every `every` epochs from
                // the first step on; none at a restore's epoch).
                let low = (every..e)
                    .step_by(every)
                    .filter(|s| !a.restores.iter().any(|q| q.epoch == *s))
                    .min_by(|&x, &y| h[x].total_cmp(&h[y]))
                    .unwrap();
                assert_eq!(h[r.to_epoch], h[low], "lr {lr} row {j}: {r:?}");
                assert_eq!(h[e + 1], h[r.to_epoch], "lr {lr} row {j}: {r:?}");
            }
            // Rescued: it no longer falls back (it reaches the discrepancy stop, or ends its
            // epochs fitting the data better than the baseline).
            if a.stop_reason != StopReason::Baseline {
                rescued += 1;
            }
        }
    }
    assert!(stalled > 0 && rescued > 0, "{seen:?}");
}
