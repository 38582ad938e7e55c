//! Spektron data readers, corpus, and calibration-transfer baselines.
//!
//! MAT fixtures in tests/data/spektron were written with scipy 1.17:
//! ```python
//! import numpy as np, scipy.io as sio
//! from scipy.io.matlab import MatlabObject
//! dt = [('name', 'O'), ('data', 'O'), ('label', 'O'), ('axisscale', 'O')]
//! obj = np.empty((1, 1), dtype=dt)
//! obj[0, 0]['name'] = 'tiny'
//! obj[0, 0]['data'] = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]])
//! label = np.empty((2, 1), dtype=object); label[0, 0] = np.zeros((0, 0))
//! label[1, 0] = np.array(['Alpha', 'Beta ', 'Gamma'])
//! axis = np.empty((2, 1), dtype=object); axis[0, 0] = np.zeros((0, 0))
//! axis[1, 0] = np.array([[1100, 1102, 1104]], dtype=np.uint16)
//! obj[0, 0]['label'] = label; obj[0, 0]['axisscale'] = axis
//! cells = np.empty((1, 2), dtype=object); cells[0, 0] = np.array([[7.0, 8.0]]); cells[0, 1] = 'text'
//! for name, z in [('dataset_v5.mat', False), ('dataset_v5_zlib.mat', True)]:
//!     sio.savemat(name, {'ds': MatlabObject(obj, 'dataset'), 'plain': np.arange(6.0).reshape(2, 3),
//!                        'cells': cells}, format='5', do_compression=z)
//! ```

use crate::common::spx;

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::{Array1, Array2, Axis, array, s};
use spx::spektron::baselines::dipls::DiPls;
use spx::spektron::baselines::linalg::{centre, col_mean, pinv};
use spx::spektron::baselines::pls::{Pls, PlsAlgorithm, cv_press};
use spx::spektron::baselines::{splits, transfer};
use spx::spektron::data::corpus::{self, Reject, prepare};
use spx::spektron::data::mat::{self, MatValue};
use spx::spektron::data::{Modality, csv, jcamp, rruff, synth};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/spektron")
        .join(name)
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

// ---------------------------------------------------------------- JCAMP-DX

#[test]
fn jcamp_golden_values() {
    // (file, n, x0, x_last, y0, y_last, min y, max y, y tolerance) from shared/data/README.md.
    let golden = [
        (
            "dupinc1.jdx",
            440,
            250.0,
            469.5,
            1.1663,
            0.1626,
            0.0769,
            3.3747,
            1e-9,
        ),
        (
            "fixinc4.jdx",
            81,
            -2.0,
            2.0,
            0.018316,
            0.018316,
            0.018316,
            0.999997,
            1e-6,
        ),
        (
            "pacdec1.jdx",
            3301,
            4000.0,
            700.0,
            101.60,
            101.24,
            86.31,
            101.89,
            1e-9,
        ),
    ];
    for (f, n, x0, x1, y0, y1, lo, hi, tol) in golden {
        let sp = jcamp::read_jcamp(&data(f)).unwrap();
        assert_eq!(sp.len(), 1, "{f}");
        let s = &sp[0];
        assert_eq!(s.x.len(), n, "{f}");
        assert_eq!(s.y.len(), n, "{f}");
        assert!(
            close(s.x[0], x0, 1e-9) && close(s.x[n - 1], x1, 1e-9),
            "{f} x"
        );
        assert!(close(s.y[0], y0, tol), "{f} y0 {}", s.y[0]);
        assert!(close(s.y[n - 1], y1, tol), "{f} ylast {}", s.y[n - 1]);
        let min = s.y.iter().copied().fold(f64::INFINITY, f64::min);
        let max = s.y.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!(
            close(min, lo, tol) && close(max, hi, tol),
            "{f} {min} {max}"
        );
    }
    let pac = &jcamp::read_jcamp(&data("pacdec1.jdx")).unwrap()[0];
    assert_eq!(pac.modality, Modality::Ir);
    assert!(close(pac.x[1] - pac.x[0], -1.0, 1e-9));
}

#[test]
fn jcamp_truncated_and_garbage_files_are_reported_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(data("pacdec1.jdx")).unwrap();
    let cut: String = text.lines().take(60).collect::<Vec<_>>().join("\n");
    let p = dir.path().join("truncated.jdx");
    std::fs::write(&p, cut).unwrap();
    let e = jcamp::read_jcamp(&p).unwrap_err().to_string();
    assert!(e.contains("truncated.jdx") && e.contains("NPOINTS"), "{e}");
    // A Y-check mismatch in DIF data names the line.
    let dif = "##TITLE=t\n##NPOINTS=4\n##FIRSTX=0\n##LASTX=3\n##XYDATA=(X++(Y..Y))\n0 A J\n2 E J\n##END=\n";
    let p = dir.path().join("ycheck.jdx");
    std::fs::write(&p, dif).unwrap();
    let e = jcamp::read_jcamp(&p).unwrap_err().to_string();
    assert!(e.contains("ycheck.jdx") && e.contains("Y-check"), "{e}");
    let p = dir.path().join("none.jdx");
    std::fs::write(&p, "##TITLE=x\n##END=\n").unwrap();
    let e = jcamp::read_jcamp(&p).unwrap_err().to_string();
    assert!(e.contains("none.jdx"), "{e}");
}

#[test]
fn jcamp_xypoints_and_multiblock() {
    let t = "##TITLE=a\n##DATA TYPE=RAMAN SPECTRUM\n##XFACTOR=2\n##YFACTOR=0.5\n##XYPOINTS=(XY..XY)\n1, 10; 2, 20\n3,30\n##END=\n\
             ##TITLE=b\n##DATATYPE=INFRARED SPECTRUM\n##XUNITS=NANOMETERS\n##FIRSTX=1000\n##LASTX=1003\n##NPOINTS=4\n##XYDATA=(X++(Y..Y))\n1000 1 2 3 4\n##END=\n";
    let sp = jcamp::parse_jcamp(Path::new("m.jdx"), t).unwrap();
    assert_eq!(sp.len(), 2);
    assert_eq!(sp[0].x, vec![2.0, 4.0, 6.0]);
    assert_eq!(sp[0].y, vec![5.0, 10.0, 15.0]);
    assert_eq!(sp[0].modality, Modality::Raman);
    assert_eq!(sp[1].x, vec![1000.0, 1001.0, 1002.0, 1003.0]);
    assert_eq!(sp[1].modality, Modality::Nir);
}

// ---------------------------------------------------------------- RRUFF / CSV

const RRUFF: &str = "##NAMES=Testite\n##RRUFFID=R000001\n##LOCALITY=Nowhere\n##LASER_WAVELENGTH=780\n\n\
                     100.5, 10\n101.5,12.5\n102.5 11\n103.5\t9\n##END=\n";

#[test]
fn rruff_header_and_comma_or_space_rows() {
    let f = rruff::parse_rruff(Path::new("r.txt"), RRUFF, Modality::Unknown).unwrap();
    assert_eq!(f.header["NAMES"], "Testite");
    assert_eq!(f.header["LASER_WAVELENGTH"], "780");
    assert_eq!(f.spectrum.x, vec![100.5, 101.5, 102.5, 103.5]);
    assert_eq!(f.spectrum.y, vec![10.0, 12.5, 11.0, 9.0]);
    assert_eq!(f.spectrum.modality, Modality::Raman);
    assert_eq!(f.spectrum.name, "R000001");
    let e = rruff::parse_rruff(
        Path::new("bad.txt"),
        "##NAMES=x\n1, 2\n3, oops\n",
        Modality::Raman,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("bad.txt") && e.contains("line 3"), "{e}");
}

#[test]
fn csv_two_column_and_table() {
    let s = csv::parse_two_column(
        Path::new("s.csv"),
        "wavenumber,intensity\n1,2\n2\t3\n3 4\n",
        Modality::Ftir,
    )
    .unwrap();
    assert_eq!((s.x, s.y), (vec![1.0, 2.0, 3.0], vec![2.0, 3.0, 4.0]));
    let t = csv::parse_table(Path::new("t.csv"), "1100,1102\n0.5,0.6\n0.7,0.8\n").unwrap();
    assert_eq!(t.numeric_header(), Some(vec![1100.0, 1102.0]));
    assert_eq!(t.data, array![[0.5, 0.6], [0.7, 0.8]]);
    let e = csv::parse_table(Path::new("t.csv"), "a,b\n1,x\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 2 column `b`"), "{e}");
    // Tab-separated, a BOM, blank lines and padded cells; a short row is named by its line.
    let t = csv::parse_table(Path::new("t.tsv"), "\u{feff}x\t y\n\n 1\t2 \n3\t4\n").unwrap();
    assert_eq!(t.header, vec!["x", "y"]);
    assert_eq!(t.data, array![[1.0, 2.0], [3.0, 4.0]]);
    let e = csv::parse_table(Path::new("t.csv"), "a,b\n1,2\n\n3\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 4") && e.contains("1 values, header has 2"),
        "{e}"
    );
}

// ---------------------------------------------------------------- MAT v5

#[test]
fn mat_dataset_object_cells_and_compression() {
    for f in ["dataset_v5.mat", "dataset_v5_zlib.mat"] {
        let p = data(f);
        let vars = mat::read_mat(&p).unwrap();
        let ds = mat::dataset(&p, &vars, "ds").unwrap();
        assert_eq!(ds.data, array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]], "{f}");
        assert_eq!(ds.axis, vec![1100.0, 1102.0, 1104.0], "{f}");
        assert_eq!(ds.labels, vec!["Alpha", "Beta", "Gamma"], "{f}");
        match &vars.iter().find(|v| v.0 == "ds").unwrap().1 {
            MatValue::Struct { class_name, .. } => assert_eq!(class_name, "dataset"),
            other => panic!("{other:?}"),
        }
        let plain = mat::dataset(&p, &vars, "plain").unwrap();
        assert_eq!(plain.data, array![[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]);
        let cells = &vars.iter().find(|v| v.0 == "cells").unwrap().1;
        assert_eq!(cells.dims(), &[1, 2]);
        assert_eq!(
            cells.cell(0, 0).unwrap().matrix().unwrap(),
            array![[7.0, 8.0]]
        );
        assert_eq!(cells.cell(0, 1).unwrap().char_rows().unwrap(), vec!["text"]);
        let e = mat::dataset(&p, &vars, "nope").unwrap_err().to_string();
        assert!(e.contains(f) && e.contains("nope"), "{e}");
    }
}

/// A big-endian MAT v5 file built by hand: one 2×2 double matrix `m` = [[1, 3], [2, 4]]ᵀ.
#[test]
fn mat_big_endian_and_wrong_files() {
    let mut b = vec![b' '; 116];
    b.extend_from_slice(&[0u8; 8]);
    b.extend_from_slice(&[0x01, 0x00]);
    b.extend_from_slice(b"MI");
    let el = |t: u32, payload: &[u8]| {
        let mut v = t.to_be_bytes().to_vec();
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        while !v.len().is_multiple_of(8) {
            v.push(0);
        }
        v
    };
    let mut m = el(6, &[0, 0, 0, 6, 0, 0, 0, 0]); // flags: mxDOUBLE
    m.extend(el(5, &[0, 0, 0, 2, 0, 0, 0, 2]));
    m.extend(el(1, b"m"));
    let vals: Vec<u8> = [1.0f64, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    m.extend(el(9, &vals));
    b.extend(el(14, &m));
    let vars = mat::parse_mat(Path::new("be.mat"), &b).unwrap();
    let d = mat::dataset(Path::new("be.mat"), &vars, "m").unwrap();
    assert_eq!(d.data, array![[1.0, 3.0], [2.0, 4.0]]);
    let e = mat::parse_mat(Path::new("x.mat"), b"not a mat file")
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.mat"), "{e}");
    let mut cut = b.clone();
    cut.truncate(b.len() - 20);
    let e = mat::parse_mat(Path::new("cut.mat"), &cut)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut.mat") && e.contains("past the end"), "{e}");
}

// ---------------------------------------------------------------- splits

#[test]
fn splits_match_numpy_random_state() {
    // np.random.RandomState(0).permutation(10), RandomState(1000).permutation(60)[:8]
    assert_eq!(
        splits::permutation(0, 10),
        vec![2, 8, 4, 9, 1, 6, 7, 3, 0, 5]
    );
    assert_eq!(
        splits::permutation(1000, 60)[..8],
        [44, 46, 32, 9, 22, 3, 8, 6]
    );
    let f = splits::kfold(3, 23, 10);
    assert_eq!(
        f.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    );
    let mut all: Vec<usize> = f.concat();
    all.sort();
    assert_eq!(all, (0..23).collect::<Vec<_>>());
}

// ---------------------------------------------------------------- PLS

fn lowrank(n: usize, p: usize, rank: usize, seed: u64) -> Array2<f64> {
    // Deterministic pseudo-random rank-`rank` matrix plus an offset.
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    };
    let a = Array2::from_shape_fn((n, rank), |_| next());
    let b = Array2::from_shape_fn((rank, p), |_| next());
    a.dot(&b) + 0.3
}

#[test]
fn pls_one_lv_is_the_literal_formula_and_full_rank_is_ols() {
    let x = lowrank(12, 4, 4, 1);
    let y = Array1::from_shape_fn(12, |i| (i as f64 * 0.7).sin() + 2.0);
    for alg in [PlsAlgorithm::Nipals, PlsAlgorithm::Kernel] {
        let m = Pls::fit(x.view(), y.view(), 4, alg);
        let xc = centre(x.view(), col_mean(x.view()).view());
        let yc = &y - y.mean().unwrap();
        // A = 1: B = w q with w = Xᵀy/‖Xᵀy‖, t = Xw, q = yᵀt/tᵀt.
        let mut w = xc.t().dot(&yc);
        w /= w.dot(&w).sqrt();
        let t = xc.dot(&w);
        let b1 = &w * (yc.dot(&t) / t.dot(&t));
        for (a, b) in m.coef(1).iter().zip(&b1) {
            assert!(close(*a, *b, 1e-12), "{alg:?} A=1");
        }
        // A = p (n > p, full rank): ordinary least squares B = (XᵀX)⁻¹Xᵀy.
        let ols = pinv(xc.t().dot(&xc).view()).dot(&xc.t().dot(&yc));
        for (a, b) in m.coef(4).iter().zip(&ols) {
            assert!(
                close(*a, *b, 1e-8 * b.abs().max(1.0)),
                "{alg:?} OLS {a} {b}"
            );
        }
    }
}

#[test]
fn pls_nipals_and_kernel_agree_and_cv_finds_the_rank() {
    let x = lowrank(40, 30, 3, 7);
    let truth = Array1::from_shape_fn(30, |j| ((j as f64) * 0.3).cos());
    let y = x.dot(&truth);
    let a = Pls::fit(x.view(), y.view(), 8, PlsAlgorithm::Nipals);
    let b = Pls::fit(x.view(), y.view(), 8, PlsAlgorithm::Kernel);
    for k in 1..=3 {
        for (u, v) in a.coef(k).iter().zip(b.coef(k)) {
            assert!(close(*u, *v, 1e-9), "LV {k}");
        }
    }
    // Rank-3 X and noiseless y: 3 LVs fit exactly, so CV PRESS is ~0 from 3 on.
    let folds = splits::kfold(0, 40, 5);
    let (best, press) = cv_press(x.view(), y.view(), &folds, 6, PlsAlgorithm::Nipals);
    assert!(press[2] < 1e-12 * press[0], "{press:?}");
    assert!(best >= 3, "{best}");
    let yh = a.predict(x.view(), 3);
    assert!(yh.iter().zip(&y).all(|(p, t)| close(*p, *t, 1e-9)));
}

// ---------------------------------------------------------------- transfer methods

#[test]
fn sbc_recovers_slope_and_bias() {
    let y = array![1.0, 2.0, 4.0, 7.0, 11.0];
    let yhat = y.mapv(|v| (v - 0.3) / 1.7);
    let (s, b) = transfer::sbc(y.view(), yhat.view());
    assert!(close(s, 1.7, 1e-12) && close(b, 0.3, 1e-12), "{s} {b}");
}

/// Master/slave pairs from the synthetic NIR-like generator; the slave is a shifted, scaled and
/// offset copy. Returns (master transfer, slave transfer, master test, slave test).
fn instrument_pair(shift: f64, noise: f64) -> (Array2<f64>, Array2<f64>, Array2<f64>, Array2<f64>) {
    let (xm, xs, _) = synth::two_instrument(5, 60, 120, shift, 0.85, 0.04, noise);
    (
        xm.slice(s![..30, ..]).to_owned(),
        xs.slice(s![..30, ..]).to_owned(),
        xm.slice(s![30.., ..]).to_owned(),
        xs.slice(s![30.., ..]).to_owned(),
    )
}

fn max_abs(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    a.iter()
        .zip(b)
        .map(|(u, v)| (u - v).abs())
        .fold(0.0, f64::max)
}

#[test]
fn ds_cca_pds_recover_gain_and_offset_exactly() {
    // Without a shift the slave is an exact affine copy: DS, CCA and PDS map it back exactly.
    let (xm, xs, tm, ts) = instrument_pair(0.0, 0.0);
    let before = max_abs(&ts, &tm);
    assert!(before > 0.05, "{before}");
    for (name, map) in [
        ("ds", transfer::ds(xm.view(), xs.view())),
        ("cca", transfer::cca(xm.view(), xs.view(), 10)),
        // All local components kept: exact; 99.9 % of the window variance: approximate.
        ("pds", transfer::pds(xm.view(), xs.view(), 2, 1.0)),
    ] {
        let err = max_abs(&map.apply(ts.view()), &tm);
        assert!(err < 1e-8, "{name}: {err}");
    }
    let pds = transfer::pds(xm.view(), xs.view(), 2, 0.999);
    let err = max_abs(&pds.apply(ts.view()), &tm);
    assert!(err < 0.02 * before, "pds 99.9 %: {err} (before {before})");
    // Literal DS: F = pinv(Xs − x̄s)(Xm − x̄m).
    let ds = transfer::ds(xm.view(), xs.view());
    let f = pinv(centre(xs.view(), col_mean(xs.view()).view()).view())
        .dot(&centre(xm.view(), col_mean(xm.view()).view()));
    assert!(max_abs(&ds.dense(), &f) < 1e-12);
}

#[test]
fn transfer_methods_recover_a_wavelength_shift() {
    // Shift of 1.5 channels + gain 0.85 + offset 0.04 + noise 1e-4 (peak ≈ 1).
    let (xm, xs, tm, ts) = instrument_pair(1.5, 1e-4);
    let before = max_abs(&ts, &tm);
    assert!(before > 0.05, "{before}");
    // DS/CCA are global maps (near exact); PDS with 99.9 % local variance is the coarser,
    // noise-robust one: it must remove at least 90 % of the instrument difference.
    for (name, map, tol) in [
        ("ds", transfer::ds(xm.view(), xs.view()), 2e-3),
        ("cca", transfer::cca(xm.view(), xs.view(), 10), 2e-3),
        (
            "pds",
            transfer::pds(xm.view(), xs.view(), 2, 0.999),
            0.1 * before,
        ),
        (
            "pds-full",
            transfer::pds(xm.view(), xs.view(), 2, 1.0),
            0.1 * before,
        ),
    ] {
        let err = max_abs(&map.apply(ts.view()), &tm);
        eprintln!("{name}: max error {err:.2e} (before {before:.2e})");
        assert!(err < tol, "{name}: {err} (before {before})");
    }
    // PDS's F is banded: window 5.
    let f = transfer::pds(xm.view(), xs.view(), 2, 0.999).dense();
    for ((i, j), v) in f.indexed_iter() {
        if i.abs_diff(j) > 2 {
            assert_eq!(*v, 0.0);
        }
    }
}

/// di-PLS with the dense p×p formula of diPLSlib (eigendecomposed D, explicit solve), as a
/// reference for the low-rank implementation.
fn dipls_dense(
    x: &Array2<f64>,
    y: &Array1<f64>,
    xt: &Array2<f64>,
    a_max: usize,
    lambda: f64,
) -> Array1<f64> {
    use spx::spektron::baselines::linalg::eigh;
    let b0 = y.mean().unwrap();
    let mut x = centre(x.view(), col_mean(x.view()).view());
    let mut xs = x.clone();
    let mut xt = centre(xt.view(), col_mean(xt.view()).view());
    let mut y = y - b0;
    let p = x.ncols();
    let (mut ws, mut ps, mut cs) = (vec![], vec![], vec![]);
    let outer = |a: &Array1<f64>, b: &Array1<f64>| {
        a.view()
            .insert_axis(Axis(1))
            .dot(&b.view().insert_axis(Axis(0)))
    };
    for _ in 0..a_max {
        let yy = y.dot(&y);
        let w_pls = x.t().dot(&y) / yy;
        let rot = xs.t().dot(&xs) / xs.nrows() as f64 - xt.t().dot(&xt) / xt.nrows() as f64;
        let (vals, vecs) = eigh(rot.view());
        let mut d = Array2::<f64>::zeros((p, p));
        for (k, l) in vals.iter().enumerate() {
            let c = vecs.column(k).to_owned();
            d.scaled_add(l.abs(), &outer(&c, &c));
        }
        let reg = Array2::<f64>::eye(p) + &(d * (lambda / yy));
        let mut w = pinv(reg.view()).dot(&w_pls);
        w /= w.dot(&w).sqrt();
        let t = x.dot(&w);
        let ts = xs.dot(&w);
        let tt = xt.dot(&w);
        let c = y.dot(&t) / t.dot(&t);
        let pl = x.t().dot(&t) / t.dot(&t);
        x -= &outer(&t, &pl);
        xs -= &outer(&ts, &(xs.t().dot(&ts) / ts.dot(&ts)));
        xt -= &outer(&tt, &(xt.t().dot(&tt) / tt.dot(&tt)));
        y = &y - &(&t * c);
        ws.push(w);
        ps.push(pl);
        cs.push(c);
    }
    let a = ws.len();
    let wm = Array2::from_shape_fn((p, a), |(i, k)| ws[k][i]);
    let pm = Array2::from_shape_fn((p, a), |(i, k)| ps[k][i]);
    wm.dot(&pinv(pm.t().dot(&wm).view()).dot(&Array1::from(cs)))
}

#[test]
fn dipls_low_rank_matches_the_dense_formula_and_lambda_zero_is_recentred_pls() {
    let x = lowrank(30, 20, 20, 11);
    let xt = lowrank(8, 20, 20, 12) * 1.3 + 0.2;
    let y = Array1::from_shape_fn(30, |i| x[[i, 5]] * 2.0 - x[[i, 12]] + 0.1 * i as f64 / 30.0);
    for lambda in [10.0, 1e4] {
        let m = DiPls::fit(x.view(), y.view(), x.view(), xt.view(), 3, lambda, false);
        let r = dipls_dense(&x, &y, &xt, 3, lambda);
        for (u, v) in m.b.iter().zip(&r) {
            assert!(
                close(*u, *v, 1e-7 * v.abs().max(1.0)),
                "λ={lambda}: {u} vs {v}"
            );
        }
    }
    // λ = 0: plain PLS, predictions centred on the target mean.
    let m = DiPls::fit(x.view(), y.view(), x.view(), xt.view(), 3, 0.0, false);
    let pls = Pls::fit(x.view(), y.view(), 3, PlsAlgorithm::Nipals);
    let tm = col_mean(xt.view());
    let a = m.predict(xt.view());
    let b = pls.predict_centred_on(xt.view(), tm.view(), 3);
    assert!(a.iter().zip(&b).all(|(u, v)| close(*u, *v, 1e-9)));
}

// ---------------------------------------------------------------- corpus

#[test]
fn prepare_resamples_snv_and_rejects() {
    let x = [3.0, 1.0, 2.0, 2.0];
    let y = [30.0, 10.0, 18.0, 22.0]; // duplicates at x = 2 average to 20 → a straight line
    let v = prepare(&x, &y, 5, 1e-10).unwrap();
    let line = [-2.0f64, -1.0, 0.0, 1.0, 2.0];
    let sd = (line.iter().map(|t| t * t).sum::<f64>() / 5.0).sqrt();
    for (a, t) in v.iter().zip(line) {
        assert!(close(*a as f64, t / sd, 1e-6));
    }
    assert_eq!(
        prepare(&[1.0, 2.0], &[f64::NAN, 1.0], 5, 1e-10),
        Err(Reject::NonFinite)
    );
    assert_eq!(
        prepare(&[1.0, 2.0, 3.0], &[4.0; 3], 5, 1e-10),
        Err(Reject::Flat)
    );
    assert_eq!(
        prepare(&[1.0, 1.0], &[1.0, 2.0], 5, 1e-10),
        Err(Reject::Short)
    );
}

fn python() -> Option<PathBuf> {
    std::env::var_os("SPX_INTEROP_PYTHON").map(PathBuf::from)
}

#[test]
fn corpus_build_writes_h5_and_reports_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::create_dir_all(a.join("sub")).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    for f in ["dupinc1.jdx", "fixinc4.jdx", "pacdec1.jdx"] {
        std::fs::copy(data(f), a.join("sub").join(f)).unwrap();
    }
    std::fs::write(b.join("mineral.rruff"), RRUFF).unwrap();
    std::fs::write(b.join("flat.csv"), "x,y\n1,5\n2,5\n3,5\n").unwrap();
    std::fs::write(b.join("nan.csv"), "1,2\n2,nan\n3,1\n").unwrap();
    let text = std::fs::read_to_string(data("pacdec1.jdx")).unwrap();
    std::fs::write(
        b.join("broken.jdx"),
        text.lines().take(40).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    std::fs::write(b.join("ignored.bin"), [0u8, 1, 2]).unwrap();
    let out = dir.path().join("corpus.h5");
    let cfg = spx::config::Config::default().spektron.corpus;
    let mut cfg = cfg;
    cfg.chunk_rows = 2; // several appended blocks
    let pb = indicatif::ProgressBar::hidden();
    let r = corpus::build(&[a.clone(), b.clone()], &out, &cfg, &pb).unwrap();
    assert_eq!(r.spectra, 4);
    assert_eq!(r.rejected_flat, 1);
    assert_eq!(r.rejected_nan, 1);
    assert_eq!(r.files_failed.len(), 1);
    let mut rej: Vec<(bool, &str)> = r
        .rejected
        .iter()
        .map(|(f, _, why)| (f.ends_with("nan.csv"), why.as_str()))
        .collect();
    rej.sort();
    assert_eq!(
        rej,
        vec![
            (false, "flat (std below min_std)"),
            (true, "NaN or infinite values")
        ]
    );
    assert!(r.files_failed[0].0.ends_with("broken.jdx") && r.files_failed[0].1.contains("NPOINTS"));

    let h = spx::io::hdf5::H5Reader::open(&out).unwrap();
    assert_eq!(h.shape("spectra").unwrap(), vec![4, 2048]);
    let sp = h.read::<f32>("spectra").unwrap();
    for row in sp.outer_iter() {
        let (m, s) = corpus::mean_std(row.into_dimensionality().unwrap());
        assert!(close(m, 0.0, 1e-4) && close(s, 1.0, 1e-4), "{m} {s}");
    }
    // Row 0 is dupinc1 (sorted walk); it equals prepare() of the parsed file.
    let s0 = &jcamp::read_jcamp(&data("dupinc1.jdx")).unwrap()[0];
    let want = prepare(&s0.x, &s0.y, 2048, 1e-10).unwrap();
    assert!(sp.slice(s![0, ..]).iter().zip(&want).all(|(a, b)| a == b));
    let m: Vec<i8> = h.read::<i8>("modality").unwrap().iter().copied().collect();
    assert_eq!(m, vec![4, 4, 0, 1]); // UV-VIS, simulation, IR, RRUFF Raman
    let src: Vec<i16> = h
        .read::<i16>("source_id")
        .unwrap()
        .iter()
        .copied()
        .collect();
    assert_eq!(src, vec![0, 0, 0, 1]);
    let range = h.read::<f64>("original_range").unwrap();
    assert_eq!(range[[2, 0]], 700.0);
    assert_eq!(range[[2, 1]], 4000.0);
    assert_eq!(h.attr_str("/", "normalization").unwrap(), "snv");
    assert_eq!(h.attr_i64("/", "corpus_size").unwrap(), 4);
    let files = h.strings("files").unwrap();
    let fi: Vec<i32> = h
        .read::<i32>("file_index")
        .unwrap()
        .iter()
        .copied()
        .collect();
    assert!(files[fi[3] as usize].ends_with("mineral.rruff"));
    let info = corpus::info(&out).unwrap();
    assert_eq!(info.spectra, 4);
    assert!(info.compressed);

    if let Some(py) = python() {
        let code = format!(
            "import h5py, numpy as np\nf = h5py.File({:?}, 'r')\ns = f['spectra'][:]\n\
             assert s.shape == (4, 2048) and s.dtype == np.float32\n\
             assert np.allclose(s.mean(1), 0, atol=1e-4) and np.allclose(s.std(1), 1, atol=1e-4)\n\
             assert list(f['modality'][:]) == [4, 4, 0, 1] and f['modality'].dtype == np.int8\n\
             assert f['source_id'].dtype == np.int16\n\
             assert f.attrs['normalization'] == 'snv'\n\
             assert f['files'].asstr()[int(f['file_index'][3])].endswith('mineral.rruff')\n",
            out.display().to_string()
        );
        let st = Command::new(py).args(["-c", &code]).status().unwrap();
        assert!(st.success(), "h5py check failed");
    }
}

#[test]
fn synthetic_spectra_are_deterministic_and_cover_modalities() {
    let cfg = spx::config::Config::default().spektron.synth;
    let a = synth::synth_spectrum(3, 17, &cfg);
    let b = synth::synth_spectrum(3, 17, &cfg);
    assert_eq!(a, b);
    assert_ne!(a, synth::synth_spectrum(4, 17, &cfg));
    let mods: Vec<Modality> = (0..4)
        .map(|i| synth::synth_spectrum(1, i, &cfg).modality)
        .collect();
    assert_eq!(
        mods,
        vec![Modality::Ir, Modality::Raman, Modality::Nir, Modality::Ftir]
    );
}

// ---------------------------------------------------------------- CLI

#[test]
fn cli_synth_info_and_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.h5");
    let fs = f.to_str().unwrap();
    let mut bytes = Vec::new();
    for target in [fs.to_string(), format!("{fs}.copy.h5"), fs.to_string()] {
        // Rerun-safe: the third run replaces the first file atomically.
        let (code, out, err) = spx(&[
            "-q", "--json", "--out", &target, "spektron", "corpus", "synth", "--n", "40",
            "--points", "256",
        ]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["spectra"], 40);
        bytes.push(std::fs::read(&target).unwrap());
    }
    // No timestamps in the file: same input and seed, same bytes, whatever the path.
    assert!(bytes[0] == bytes[1] && bytes[1] == bytes[2]);
    assert!(dir.path().join("spx-config.toml").exists());
    let (code, out, err) = spx(&["--json", "spektron", "corpus", "info", fs]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["spectra"], 40);
    assert_eq!(v["points"], 256);
    assert_eq!(v["per_modality"][1][1], 10);
    let (code, _, err) = spx(&["spektron", "corpus", "info", "/nonexistent/x.h5"]);
    assert_eq!(code, 2);
    assert!(err.contains("x.h5"), "{err}");
}

#[test]
fn cli_baselines_on_a_bad_mat_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = spx(&[
        "--out",
        dir.path().to_str().unwrap(),
        "spektron",
        "baselines",
        "--data",
        data("dataset_v5.mat").to_str().unwrap(),
        "--source",
        "m5",
        "--target",
        "mp6",
        "--property",
        "moisture",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("dataset_v5.mat") && err.contains("m5"),
        "{err}"
    );
}

/// Local check on the Eigenvector corn file (not redistributable: skipped when absent). The
/// reference numbers are the research note's §2.3 (m5 → mp6, moisture, 10 repetitions).
#[test]
fn corn_m5_mp6_moisture_matches_the_reference_protocol() {
    let corn = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/corn/corn.mat");
    let corn = if corn.exists() {
        corn
    } else {
        PathBuf::from("/work/shared/data/corn/corn.mat")
    };
    if !corn.exists() {
        eprintln!("corn.mat absent: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = spx(&[
        "-q",
        "--json",
        "--out",
        dir.path().to_str().unwrap(),
        "spektron",
        "baselines",
        "--data",
        corn.to_str().unwrap(),
        "--source",
        "m5",
        "--target",
        "mp6",
        "--property",
        "moisture",
        "--n-transfer",
        "5,20",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let cell = |m: &str, n: u64| {
        v["report"]["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["method"] == m && c["n_transfer"] == n)
            .unwrap()["rmsep_mean"]
            .as_f64()
            .unwrap()
    };
    for (m, n, want) in [
        ("no_transfer", 0, 1.717),
        ("sbc", 5, 0.242),
        ("pds", 5, 0.359),
        ("ds", 20, 0.317),
        ("cca", 20, 0.224),
        ("recentre", 5, 0.307),
        ("target_only", 20, 0.310),
    ] {
        let got = cell(m, n);
        assert!(close(got, want, 6e-4), "{m} N={n}: {got} vs {want}");
    }
}

#[test]
fn tablet_layout_is_stacked_and_properties_by_column_number() {
    use spx::spektron::data::instruments::load_pair;
    let p = data("tablets_tiny.mat");
    let pair = load_pair(&p, "1", "2", "3").unwrap();
    let d = &pair.data;
    assert_eq!(d.source.dim(), (9, 5));
    for i in 0..9 {
        for j in 0..5 {
            let v = 10.0 * i as f64 + j as f64;
            assert_eq!(d.source[[i, j]], v);
            assert_eq!(d.target[[i, j]], 2.0 * v + 1.0);
        }
        assert_eq!(d.y[i], 10.0 * i as f64 + 0.25);
    }
    let e = load_pair(&p, "1", "2", "hardness").unwrap_err().to_string();
    assert!(
        e.contains("tablets_tiny.mat") && e.contains("hardness"),
        "{e}"
    );
    let e = load_pair(&p, "1", "3", "1").unwrap_err().to_string();
    assert!(e.contains("calibrate_3"), "{e}");
}

#[test]
fn cli_corpus_build_into_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("res");
    let (code, stdout, err) = spx(&[
        "-q",
        "--json",
        "--out",
        out.to_str().unwrap(),
        "spektron",
        "corpus",
        "build",
        data("").to_str().unwrap(),
        "--points",
        "512",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["spectra"], 3); // the three JCAMP files; .mat/.md are not spectrum files
    assert_eq!(v["files_read"], 3);
    let h = spx::io::hdf5::H5Reader::open(&out.join("corpus.h5")).unwrap();
    assert_eq!(h.shape("spectra").unwrap(), vec![3, 512]);
    assert!(out.join("spx-config.toml").exists());
    let (code, _, err) = spx(&["spektron", "corpus", "build", "/nonexistent-dir"]);
    assert_eq!(code, 2);
    assert!(err.contains("nonexistent-dir"), "{err}");
}
