//! Ptycho data: raw-NPZ loader, KD-tree grouping, simulator physics, CLI.
//!
//! The fixtures in tests/data/ptycho/ were written by numpy with `make_fixtures.py` there:
//!
//! ```python
//! n, h, w = 5, 4, 4
//! i, r, c = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
//! diff = (100 * i + 10 * r + c).astype(np.float32)          # diff[i, r, c] = 100 i + 10 r + c
//! x = np.array([10.0, 11.5, 13.25, 9.0, 12.0])              # float64
//! y = np.array([20.0, 21.0, 19.5, 22.75, 20.5])
//! yy, xx = np.mgrid[0:h, 0:w]
//! probe = (yy + 1j * xx).astype(np.complex64)                # probe[r, c] = r + i c
//! obj = np.full((8, 8), 1 + 0.5j, dtype=np.complex64)
//! scan = np.arange(n, dtype=np.int64)
//! np.savez_compressed("raw_diff3d.npz", xcoords=x, ycoords=y, diff3d=diff, probeGuess=probe,
//!                     objectGuess=obj, scan_index=scan, xcoords_start=x + 0.25, ycoords_start=y - 0.25)
//! np.savez("raw_diffraction.npz", xcoords=x, ycoords=y, diffraction=diff, probeGuess=probe)
//! np.savez_compressed("raw_hwn.npz", xcoords=x, ycoords=y,
//!                     diff3d=np.ascontiguousarray(diff.transpose(1, 2, 0)), probeGuess=probe)
//! meta = json.dumps({"schema_version": "1.0.0", "physics_parameters": {"nphotons": 1e9, "N": 4}})
//! np.savez_compressed("raw_metadata.npz", xcoords=x, ycoords=y, diff3d=diff, probeGuess=probe,
//!                     _metadata=np.array(meta, dtype=object))
//! # > 255 characters: pickled with BINUNICODE ('X', 4-byte length) instead of SHORT_BINUNICODE.
//! long_meta = json.dumps({"schema_version": "1.0.0", "notes": "x" * 400})
//! np.savez_compressed("raw_metadata_long.npz", xcoords=x, ycoords=y, diff3d=diff, probeGuess=probe,
//!                     _metadata=np.array(long_meta, dtype=object))
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::ProgressBar;
use ndarray::{Array1, Array2, Array3, ArrayD, Axis, IxDyn};
use num_complex::{Complex32, Complex64};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spx::io::npz::{NpzArray, NpzFile, write_npz};
use spx::ptycho::fft::{Fft2, far_field_intensity};
use spx::ptycho::grouping::{ChannelOrder, gather, grid_order, group, group_positions};
use spx::ptycho::object::{gaussian_filter, gaussian_kernel, line_pixels, lines_object};
use spx::ptycho::probe::{default_probe, probe_disk};
use spx::ptycho::simulate::{Noise, SimConfig, exit_wave, extract_patch, scan_positions, simulate};
use spx::ptycho::{GroupConfig, RawData};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/ptycho")
        .join(name)
}

fn expected_diff() -> Array3<f32> {
    Array3::from_shape_fn((5, 4, 4), |(i, r, c)| (100 * i + 10 * r + c) as f32)
}

const X: [f64; 5] = [10.0, 11.5, 13.25, 9.0, 12.0];
const Y: [f64; 5] = [20.0, 21.0, 19.5, 22.75, 20.5];

fn expected_probe() -> Array2<Complex32> {
    Array2::from_shape_fn((4, 4), |(r, c)| Complex32::new(r as f32, c as f32))
}

// ---------------------------------------------------------------- loader

#[test]
fn loads_numpy_fixture_with_all_keys() {
    let d = RawData::load(&fixture("raw_diff3d.npz")).unwrap();
    assert_eq!(d.xcoords.to_vec(), X.to_vec());
    assert_eq!(d.ycoords.to_vec(), Y.to_vec());
    assert_eq!(d.xcoords_start.to_vec(), X.map(|v| v + 0.25).to_vec());
    assert_eq!(d.ycoords_start.to_vec(), Y.map(|v| v - 0.25).to_vec());
    assert_eq!(d.diffraction, expected_diff());
    assert_eq!(d.probe, expected_probe());
    assert_eq!(
        d.object.clone().unwrap(),
        Array2::from_elem((8, 8), Complex32::new(1.0, 0.5))
    );
    assert_eq!(d.scan_index.to_vec(), vec![0, 1, 2, 3, 4]);
    assert_eq!(d.diffraction_key, "diff3d");
    assert!(!d.transposed && !d.had_metadata && d.metadata.is_none());
    assert_eq!(d.n(), 4);
}

#[test]
fn loads_diffraction_key_and_defaults_optional_keys() {
    let d = RawData::load(&fixture("raw_diffraction.npz")).unwrap();
    assert_eq!(d.diffraction_key, "diffraction");
    assert_eq!(d.diffraction, expected_diff());
    assert_eq!(d.xcoords_start, d.xcoords);
    assert_eq!(d.ycoords_start, d.ycoords);
    assert_eq!(d.scan_index, Array1::<i64>::zeros(5));
    assert!(d.object.is_none());
}

#[test]
fn transposes_hwn_layout() {
    let d = RawData::load(&fixture("raw_hwn.npz")).unwrap();
    assert!(d.transposed);
    assert_eq!(d.diffraction, expected_diff());
}

#[test]
fn skips_pickled_metadata() {
    let d = RawData::load(&fixture("raw_metadata.npz")).unwrap();
    assert!(d.had_metadata);
    let m = d.metadata.as_ref().expect("JSON recovered from the pickle");
    assert_eq!(m["schema_version"], "1.0.0");
    assert_eq!(m["physics_parameters"]["N"], 4);
    assert_eq!(m["physics_parameters"]["nphotons"], 1e9);
    let d = RawData::load(&fixture("raw_metadata_long.npz")).unwrap();
    assert_eq!(d.metadata.unwrap()["notes"].as_str().unwrap().len(), 400);
    assert_eq!(d.diffraction, expected_diff());
    // Bytes that hold no JSON object give no metadata rather than an error.
    assert!(spx::ptycho::data::pickled_json(b"\x80\x04X\x03\x00\x00\x00abc.").is_none());
    assert_eq!(d.diffraction, expected_diff());
    assert_eq!(d.probe, expected_probe());
}

/// The valid arrays of the fixture as (name, array), to be broken one at a time.
fn valid_arrays() -> Vec<(&'static str, NpzArray)> {
    vec![
        (
            "xcoords",
            NpzArray::F64(Array1::from(X.to_vec()).into_dyn()),
        ),
        (
            "ycoords",
            NpzArray::F64(Array1::from(Y.to_vec()).into_dyn()),
        ),
        ("diff3d", NpzArray::F32(expected_diff().into_dyn())),
        ("probeGuess", NpzArray::C64(expected_probe().into_dyn())),
    ]
}

fn write_variant(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut Vec<(&'static str, NpzArray)>),
) -> PathBuf {
    let mut arrays = valid_arrays();
    edit(&mut arrays);
    let p = dir.join(name);
    write_npz(&p, &arrays, false).unwrap();
    p
}

fn set(arrays: &mut [(&'static str, NpzArray)], key: &str, a: NpzArray) {
    arrays.iter_mut().find(|(k, _)| *k == key).unwrap().1 = a;
}

fn load_err(p: &Path) -> String {
    RawData::load(p).unwrap_err().to_string()
}

fn assert_names(msg: &str, p: &Path, key: &str, also: &str) {
    assert!(msg.contains(&p.display().to_string()), "no path in: {msg}");
    assert!(
        msg.contains(&format!("`{key}`")),
        "no key `{key}` in: {msg}"
    );
    assert!(msg.contains(also), "no `{also}` in: {msg}");
}

#[test]
fn bad_inputs_name_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let p = write_variant(d, "ok.npz", |_| {});
    RawData::load(&p).unwrap();

    let p = write_variant(d, "no_y.npz", |a| a.retain(|(k, _)| *k != "ycoords"));
    assert_names(&load_err(&p), &p, "ycoords", "missing");

    let p = write_variant(d, "no_diff.npz", |a| a.retain(|(k, _)| *k != "diff3d"));
    assert_names(&load_err(&p), &p, "diff3d", "diffraction");

    let p = write_variant(d, "no_probe.npz", |a| a.retain(|(k, _)| *k != "probeGuess"));
    assert_names(&load_err(&p), &p, "probeGuess", "missing");

    let p = write_variant(d, "short_y.npz", |a| {
        set(
            a,
            "ycoords",
            NpzArray::F64(Array1::from(vec![1.0, 2.0]).into_dyn()),
        )
    });
    assert_names(&load_err(&p), &p, "ycoords", "length 2");

    let p = write_variant(d, "nan_x.npz", |a| {
        set(
            a,
            "xcoords",
            NpzArray::F64(Array1::from(vec![1.0, f64::NAN, 3.0, 4.0, 5.0]).into_dyn()),
        )
    });
    assert_names(&load_err(&p), &p, "xcoords", "index 1");

    let p = write_variant(d, "x2d.npz", |a| {
        set(
            a,
            "xcoords",
            NpzArray::F64(Array2::<f64>::zeros((5, 1)).into_dyn()),
        )
    });
    assert_names(&load_err(&p), &p, "xcoords", "1-D");

    let p = write_variant(d, "diff2d.npz", |a| {
        set(
            a,
            "diff3d",
            NpzArray::F32(Array2::<f32>::zeros((5, 16)).into_dyn()),
        )
    });
    assert_names(&load_err(&p), &p, "diff3d", "3-D");

    let p = write_variant(d, "diff_n.npz", |a| {
        set(
            a,
            "diff3d",
            NpzArray::F32(Array3::<f32>::zeros((6, 4, 4)).into_dyn()),
        )
    });
    assert_names(&load_err(&p), &p, "diff3d", "no axis matching");

    let p = write_variant(d, "diff_neg.npz", |a| {
        let mut bad = expected_diff();
        bad[[2, 1, 3]] = -1.0;
        set(a, "diff3d", NpzArray::F32(bad.into_dyn()))
    });
    assert_names(&load_err(&p), &p, "diff3d", "(2, 1, 3)");

    let p = write_variant(d, "probe_shape.npz", |a| {
        set(
            a,
            "probeGuess",
            NpzArray::C64(Array2::<Complex32>::zeros((8, 8)).into_dyn()),
        )
    });
    assert_names(&load_err(&p), &p, "probeGuess", "(8, 8)");

    let p = write_variant(d, "scan_len.npz", |a| {
        a.push((
            "scan_index",
            NpzArray::I64(Array1::<i64>::zeros(3).into_dyn()),
        ))
    });
    assert_names(&load_err(&p), &p, "scan_index", "length 3");

    let p = write_variant(d, "x_dtype.npz", |a| {
        set(
            a,
            "xcoords",
            NpzArray::C64(Array1::<Complex32>::zeros(5).into_dyn()),
        )
    });
    assert_names(&load_err(&p), &p, "xcoords", "dtype");

    // Not a zip at all, and a truncated copy of a valid archive.
    let p = d.join("garbage.npz");
    std::fs::write(&p, b"this is not an npz archive").unwrap();
    let m = load_err(&p);
    assert!(
        m.contains(&p.display().to_string()) && m.contains("npz"),
        "{m}"
    );
    let bytes = std::fs::read(fixture("raw_diff3d.npz")).unwrap();
    let p = d.join("truncated.npz");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert!(load_err(&p).contains(&p.display().to_string()));

    let p = d.join("missing.npz");
    assert!(load_err(&p).contains("missing.npz"));
}

// ---------------------------------------------------------------- grouping

fn cfg(gridsize: usize, k: usize, n_groups: usize) -> GroupConfig {
    GroupConfig {
        gridsize,
        neighbor_count: k,
        n_groups,
        order: ChannelOrder::Random,
        mode: spx::ptycho::grouping::GroupMode::Neighbors,
    }
}

#[test]
fn literal_four_positions_gridsize_two() {
    let x = [0.0, 1.0, 0.0, 1.0];
    let y = [0.0, 0.0, 1.0, 1.0];
    let diff = Array3::from_shape_fn((4, 4, 4), |(i, r, c)| (i * 16 + r * 4 + c) as f32);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let g = group(&x, &y, diff.view(), &cfg(2, 4, 2), &mut rng).unwrap();
    assert_eq!(g.diffraction.shape(), &[2, 4, 4, 4]);
    assert_eq!(g.x_full.shape(), &[2, 4, 4, 4]);
    assert_eq!(g.index.coords_relative.shape(), &[2, 1, 2, 4]);
    assert_eq!(g.index.coords_offsets.shape(), &[2, 1, 2, 1]);
    assert_eq!(g.index.coords_nn.shape(), &[2, 1, 2, 4]);
    assert_eq!(g.index.nn_indices.shape(), &[2, 4]);
    for b in 0..2 {
        // With only 4 positions every group is the whole scan, centred at (0.5, 0.5).
        let mut m: Vec<usize> = g.index.nn_indices.row(b).to_vec();
        m.sort();
        assert_eq!(m, vec![0, 1, 2, 3]);
        assert_eq!(g.index.coords_offsets[[b, 0, 0, 0]], 0.5);
        assert_eq!(g.index.coords_offsets[[b, 0, 1, 0]], 0.5);
        for c in 0..4 {
            let i = g.index.nn_indices[[b, c]];
            assert_eq!(g.index.coords_relative[[b, 0, 0, c]], -(x[i] - 0.5));
            assert_eq!(g.index.coords_relative[[b, 0, 1, c]], -(y[i] - 0.5));
            assert_eq!(
                g.diffraction.slice(ndarray::s![b, .., .., c]),
                diff.index_axis(Axis(0), i)
            );
        }
    }
    let err = group(&x, &y, diff.view(), &cfg(2, 3, 2), &mut rng)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("neighbor_count = 3") && err.contains("C = gridsize² = 4"),
        "{err}"
    );
}

#[test]
fn too_few_positions_is_an_error() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let err = group_positions(&[0.0, 1.0, 2.0], &[0.0; 3], &cfg(2, 4, 0), &mut rng)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("3 scan positions") && err.contains("gridsize"),
        "{err}"
    );
}

#[test]
fn gridsize_one_uses_the_seed_alone() {
    let x: Vec<f64> = (0..10).map(f64::from).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let g = group_positions(&x, &x, &cfg(1, 4, 0), &mut rng).unwrap();
    assert_eq!(g.nn_indices.column(0).to_vec(), (0..10).collect::<Vec<_>>());
    assert!(g.coords_relative.iter().all(|&v| v == 0.0));
    let g = group_positions(&x, &x, &cfg(1, 4, 6), &mut rng).unwrap();
    assert_eq!(g.nn_indices.column(0).to_vec(), g.seeds);
}

#[test]
fn normalisation_invariant_holds() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let n = 40;
    let x: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 50.0).collect();
    let y: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 50.0).collect();
    let diff = Array3::from_shape_fn((n, 8, 8), |_| rng.random::<f32>() * 3.0);
    let g = group(&x, &y, diff.view(), &cfg(2, 6, 25), &mut rng).unwrap();
    let (b, h, w, c) = g.x_full.dim();
    let mut total = 0.0f64;
    for gi in 0..b {
        for ci in 0..c {
            for r in 0..h {
                for col in 0..w {
                    total += f64::from(g.x_full[[gi, r, col, ci]]).powi(2);
                }
            }
        }
    }
    let mean = total / (b * c) as f64;
    assert!(
        (mean / 16.0 - 1.0).abs() < 1e-5,
        "mean Σ X_full² = {mean}, want (N/2)² = 16"
    );
    for (a, o) in g.x_full.iter().zip(&g.diffraction) {
        assert!(
            (f64::from(*a) - f64::from(*o) * g.norm_factor).abs() < 1e-5 * (1.0 + f64::from(*a))
        );
    }
}

#[test]
fn members_are_among_the_k_nearest_of_their_seed() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let n = 600;
    let k = 7;
    let x: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 100.0).collect();
    let y: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 100.0).collect();
    let g = group_positions(&x, &y, &cfg(2, k, 300), &mut rng).unwrap();
    let mut seeds = g.seeds.clone();
    seeds.sort();
    seeds.dedup();
    assert_eq!(seeds.len(), 300, "seeds are drawn without replacement");
    let d2 = |a: usize, b: usize| (x[a] - x[b]).powi(2) + (y[a] - y[b]).powi(2);
    for (b, &s) in g.seeds.iter().enumerate() {
        let mut others: Vec<f64> = (0..n).filter(|&j| j != s).map(|j| d2(s, j)).collect();
        others.sort_by(f64::total_cmp);
        let kth = others[k - 1];
        let mut m = g.nn_indices.row(b).to_vec();
        for &i in &m {
            assert_ne!(i, s, "the seed is not its own group member");
            assert!(
                d2(s, i) <= kth,
                "member {i} of seed {s} is not among its {k} nearest"
            );
        }
        m.sort();
        m.dedup();
        assert_eq!(m.len(), 4, "members are distinct");
    }
    // Same seed, same groups; another seed, other groups.
    let a = group_positions(&x, &y, &cfg(2, k, 300), &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
    let b = group_positions(&x, &y, &cfg(2, k, 300), &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
    let c = group_positions(&x, &y, &cfg(2, k, 300), &mut ChaCha8Rng::seed_from_u64(2)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.nn_indices, c.nn_indices);
}

/// `order = "grid"` lays each group's members out row-major (top row by x, then the next),
/// with the same members as the drawn order: channel k always holds the same corner of the
/// group, which is the only geometry the network sees.
#[test]
fn grid_order_lays_members_out_row_major() {
    let mut m = vec![0, 1, 2, 3];
    // 0: bottom-right, 1: top-left, 2: bottom-left, 3: top-right (y grows downwards)
    let (x, y) = ([5.0, 1.0, 1.2, 4.8], [5.1, 0.9, 5.0, 1.1]);
    grid_order(&mut m, &x, &y, 2);
    assert_eq!(m, vec![1, 3, 2, 0]);

    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let n = 400;
    let x: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 60.0).collect();
    let y: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 60.0).collect();
    let drawn = group_positions(&x, &y, &cfg(2, 7, 0), &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
    let mut gc = cfg(2, 7, 0);
    gc.order = ChannelOrder::Grid;
    let grid = group_positions(&x, &y, &gc, &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
    for b in 0..n {
        let (mut a, g) = (
            drawn.nn_indices.row(b).to_vec(),
            grid.nn_indices.row(b).to_vec(),
        );
        a.sort();
        let mut s = g.clone();
        s.sort();
        assert_eq!(a, s, "same members");
        assert!(
            y[g[0]].max(y[g[1]]) <= y[g[2]].min(y[g[3]]),
            "top row first"
        );
        assert!(x[g[0]] <= x[g[1]] && x[g[2]] <= x[g[3]], "rows by x");
        for k in 0..4 {
            // coords_relative follows the reordered members
            assert_eq!(grid.coords_nn[[b, 0, 0, k]], x[g[k]]);
        }
    }
    // the default is the reference's drawn order
    assert_eq!(cfg_group().order, ChannelOrder::Random);
}

#[test]
fn grid_scan_groups_are_exact_squares_on_the_lattice_and_blocks_keep_them() {
    use spx::ptycho::grouping::GroupMode;
    use spx::ptycho::simulate::grid_positions;
    // 40 px object, buffer 4, members 2 px apart, pitch 4: centres span [5, 35] → 8 per axis
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (x, y) = grid_positions(40, 40, (2, 2.0, 4.0, 0.0), 4.0, 1000, &mut rng).unwrap();
    assert_eq!(x.len(), 8 * 8 * 4);
    let mut centres = vec![];
    for g in 0..64 {
        let (gx, gy) = (&x[4 * g..4 * g + 4], &y[4 * g..4 * g + 4]);
        let (cx, cy) = (gx.iter().sum::<f64>() / 4.0, gy.iter().sum::<f64>() / 4.0);
        // members row-major: (−1,−1), (+1,−1), (−1,+1), (+1,+1) around the centre
        let want = [(-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0)];
        for k in 0..4 {
            assert!(
                (gx[k] - cx - want[k].0).abs() < 1e-12,
                "group {g} member {k} x"
            );
            assert!(
                (gy[k] - cy - want[k].1).abs() < 1e-12,
                "group {g} member {k} y"
            );
        }
        // lattice 6, 10, …, 34 (7 pitches centred in [5, 35]: start 5 + (30 − 28)/2)
        for v in [cx, cy] {
            assert!(
                ((v - 6.0) / 4.0 - ((v - 6.0) / 4.0).round()).abs() < 1e-12,
                "{v}"
            );
            assert!((6.0..=34.0).contains(&v), "{v}");
        }
        centres.push(((cx * 10.0) as i64, (cy * 10.0) as i64));
    }
    let stored = centres.clone();
    centres.sort();
    centres.dedup();
    assert_eq!(centres.len(), 64, "every lattice point once");
    assert_ne!(stored, centres, "groups are stored in shuffled order");
    // a cap keeps whole groups
    let (xc, _) = grid_positions(40, 40, (2, 2.0, 4.0, 0.0), 4.0, 30, &mut rng).unwrap();
    assert_eq!(xc.len(), 28);
    // no room: an error, not an empty scan
    assert!(grid_positions(6, 6, (2, 6.0, 4.0, 0.0), 3.0, 100, &mut rng).is_err());

    // blocks grouping takes the stored runs of C as groups, in stored order
    let mut gc = cfg(2, 7, 0);
    gc.mode = GroupMode::Blocks;
    let gi = group_positions(&x, &y, &gc, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
    assert_eq!(gi.n_groups(), 64);
    for g in 0..64 {
        assert_eq!(
            gi.nn_indices.row(g).to_vec(),
            vec![4 * g, 4 * g + 1, 4 * g + 2, 4 * g + 3]
        );
        assert!(
            (gi.coords_relative[[g, 0, 0, 0]] - 1.0).abs() < 1e-12,
            "rel = −(x − centroid)"
        );
        assert!((gi.coords_relative[[g, 0, 1, 3]] + 1.0).abs() < 1e-12);
    }
    gc.n_groups = 10;
    let sub = group_positions(&x, &y, &gc, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
    assert_eq!(sub.n_groups(), 10);
    assert!(sub.nn_indices.column(0).iter().all(|&i| i % 4 == 0));
    // a scan that is not whole blocks is refused, naming the key
    let e = group_positions(&x[..7], &y[..7], &gc, &mut ChaCha8Rng::seed_from_u64(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ptycho.group.mode"), "{e}");
}

#[test]
fn grid_scan_in_blocks_needs_the_group_side_it_was_laid_out_with() {
    let mut c = spx::config::Config::default();
    c.ptycho.simulate.scan = spx::ptycho::simulate::Scan::Grid;
    c.ptycho.group.mode = spx::ptycho::grouping::GroupMode::Blocks;
    assert!(c.validate().is_ok(), "2 and 2 agree");
    c.ptycho.simulate.grid_size = 3;
    let e = c.validate().unwrap_err();
    assert!(
        e.starts_with("ptycho.simulate.grid_size:") && e.contains("gridsize = 2"),
        "{e}"
    );
    // neighbour grouping does not read the stored layout, so no constraint there
    c.ptycho.group.mode = spx::ptycho::grouping::GroupMode::Neighbors;
    assert!(c.validate().is_ok());
}

#[test]
fn duplicate_positions_never_group_the_seed_with_itself() {
    // Every position is doubled, so KD-tree ties can put the twin before the seed.
    let x: Vec<f64> = (0..20).map(|i| f64::from(i / 2)).collect();
    let y = vec![0.0; 20];
    let g = group_positions(&x, &y, &cfg(2, 5, 0), &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    for (b, &s) in g.seeds.iter().enumerate() {
        assert!(!g.nn_indices.row(b).iter().any(|&i| i == s));
    }
}

// ---------------------------------------------------------------- simulator pieces

/// Direct O(N⁴) DFT, fftshifted, / N²: the definition the FFT path must match.
fn direct_far_field(psi: &Array2<Complex64>) -> Array2<f64> {
    let n = psi.nrows();
    let h = n / 2;
    let tau = 2.0 * std::f64::consts::PI / n as f64;
    Array2::from_shape_fn((n, n), |(r, c)| {
        let (ku, kv) = ((r + n - h) % n, (c + n - h) % n);
        let mut acc = Complex64::new(0.0, 0.0);
        for y in 0..n {
            for x in 0..n {
                let ph = -tau * ((ku * y + kv * x) % n) as f64;
                acc += psi[[y, x]] * Complex64::from_polar(1.0, ph);
            }
        }
        acc.norm_sqr() / (n * n) as f64
    })
}

fn random_complex(n: usize, rng: &mut impl Rng) -> Array2<Complex64> {
    Array2::from_shape_fn((n, n), |_| {
        Complex64::new(rng.random::<f64>() - 0.5, rng.random::<f64>() - 0.5)
    })
}

#[test]
fn fft_matches_direct_dft_and_parseval() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for n in [8, 6, 5] {
        let psi = random_complex(n, &mut rng);
        let fast = far_field_intensity(&Fft2::new(n), &psi);
        let slow = direct_far_field(&psi);
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a - b).abs() < 1e-12 * (1.0 + b), "N={n}: {a} vs {b}");
        }
        let e_real: f64 = psi.iter().map(|v| v.norm_sqr()).sum();
        let e_far: f64 = fast.sum();
        assert!((e_real - e_far).abs() < 1e-12 * e_real, "Parseval at N={n}");
    }
    // A plane wave exp(2πi(3x + 1y)/8) lands on one pixel, offset from the centre by (1, 3).
    let n = 8;
    let psi = Array2::from_shape_fn((n, n), |(y, x)| {
        Complex64::from_polar(
            1.0,
            2.0 * std::f64::consts::PI * (3 * x + y) as f64 / n as f64,
        )
    });
    let f = far_field_intensity(&Fft2::new(n), &psi);
    assert!((f[[4 + 1, 4 + 3]] - 64.0).abs() < 1e-9);
    assert!((f.sum() - 64.0).abs() < 1e-9);
}

#[test]
fn bilinear_extraction_of_integer_and_half_offsets() {
    let obj = Array2::from_shape_fn((40, 50), |(r, c)| Complex32::new(r as f32, c as f32 * 0.5));
    let n = 16;
    let p = extract_patch(&obj, 20.0, 15.0, n);
    for i in 0..n {
        for j in 0..n {
            let o = obj[[15 - 8 + i, 20 - 8 + j]];
            assert_eq!(p[[i, j]], Complex64::new(f64::from(o.re), f64::from(o.im)));
        }
    }
    // Half a pixel right: the mean of two columns. Quarter pixel down: 3:1 of two rows.
    let p = extract_patch(&obj, 20.5, 15.25, n);
    for i in 0..n {
        for j in 0..n {
            let (r, c) = ((15 - 8 + i) as f64 + 0.25, (20 - 8 + j) as f64 + 0.5);
            assert!((p[[i, j]] - Complex64::new(r, c * 0.5)).norm() < 1e-5);
        }
    }
    // Patches straddling the edge (general path) agree with interior ones (fast path) where
    // both see the same pixels: shift the object and compare.
    let big = Array2::from_shape_fn((60, 70), |(r, c)| {
        if r >= 10 && c >= 10 && r < 50 && c < 60 {
            obj[[r - 10, c - 10]]
        } else {
            Complex32::new(0.0, 0.0)
        }
    });
    for (x, y) in [(3.3, 4.7), (45.6, 33.2), (8.0, 8.0), (49.0, 39.0)] {
        let a = extract_patch(&obj, x, y, n);
        let b = extract_patch(&big, x + 10.0, y + 10.0, n);
        assert!(
            a.iter().zip(&b).all(|(p, q)| (p - q).norm() < 1e-9),
            "at ({x}, {y})"
        );
    }
    // Outside the object the patch is zero.
    let p = extract_patch(&obj, 2.0, 3.0, n);
    assert_eq!(p[[0, 0]], Complex64::new(0.0, 0.0));
    assert_eq!(p[[8 - 3, 8 - 2]], Complex64::new(0.0, 0.0));
}

#[test]
fn default_probe_matches_reference_numbers() {
    // PtychoPINN get_default_probe(64) with default_probe_scale 0.7: a 376-pixel disk,
    // Σ P² = 337.76 (notes/ptycho.md §2.2, computed from the reference formulas).
    assert_eq!(probe_disk(64, 0.7).sum(), 376.0);
    let p = default_probe(64, 0.7);
    let s2: f64 = p.iter().map(|c| f64::from(c.norm_sqr())).sum();
    assert!((s2 - 337.76).abs() < 0.01, "Σ P² = {s2}");
    assert!(p.iter().all(|c| c.im == 0.0 && c.re > 0.0));
}

#[test]
fn gaussian_filter_and_lines() {
    let k = gaussian_kernel(5.0);
    assert_eq!(k.len(), 41);
    assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    // A centred delta becomes the outer product of the kernel; a constant stays constant.
    let mut img = Array2::<f64>::zeros((31, 31));
    img[[15, 15]] = 1.0;
    let g = gaussian_filter(&img, 2.0);
    let k = gaussian_kernel(2.0);
    for r in 0..k.len() {
        for c in 0..k.len() {
            assert!((g[[15 - 8 + r, 15 - 8 + c]] - k[r] * k[c]).abs() < 1e-15);
        }
    }
    let g = gaussian_filter(&Array2::from_elem((12, 9), 2.5), 10.0);
    assert!(g.iter().all(|v| (v - 2.5).abs() < 1e-12));

    let px = line_pixels(2, 1, 7, 13);
    assert_eq!(px.len(), 13);
    assert_eq!((px[0], px[12]), ((2, 1), (7, 13)));
    assert!(
        px.windows(2)
            .all(|w| (w[0].0 - w[1].0).abs() <= 1 && w[1].1 - w[0].1 == 1)
    );

    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let o = lines_object(32, 20, 0.0, &mut rng);
    let amp: Vec<f32> = o.iter().map(|c| c.re).collect();
    assert!(o.iter().all(|c| c.im == 0.0));
    assert!(amp.iter().all(|&a| (0.5..=1.5).contains(&a)));
    assert_eq!(amp.iter().cloned().fold(0.0, f32::max), 1.5);
    let o = lines_object(32, 20, 0.3, &mut rng);
    let max_phase = o.iter().map(|c| c.arg().abs()).fold(0.0, f32::max);
    assert!((max_phase - 0.3).abs() < 1e-5, "max |phase| {max_phase}");
}

#[test]
fn scan_positions_respect_the_buffer() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // (H, W) = (128, 100): x is the column, so x spans the width.
    let (x, y) = scan_positions(128, 100, 500, 15.0, &mut rng);
    assert!(x.iter().all(|&v| (15.0..85.0).contains(&v)));
    assert!(y.iter().all(|&v| (15.0..113.0).contains(&v)));
    assert!(x.iter().any(|&v| v > 80.0) && y.iter().any(|&v| v > 105.0));
    // The buffer is capped at min(H, W)/2 − 1.
    let (x, _) = scan_positions(20, 20, 200, 50.0, &mut rng);
    assert!(x.iter().all(|&v| (9.0..11.0).contains(&v)));
}

// ---------------------------------------------------------------- simulation

fn small_cfg(nphotons: f64, noise: Noise) -> SimConfig {
    SimConfig {
        n: 32,
        object_size: 64,
        nlines: 40,
        object_phase: 0.4,
        probe_scale: 0.7,
        n_positions: 60,
        buffer: 8.0,
        scan: spx::ptycho::simulate::Scan::Random,
        grid_size: 2,
        grid_step: 0.0,
        grid_pitch: 0.0,
        grid_phase: 0.0,
        nphotons,
        noise,
        save_patches: true,
        plot: false,
    }
}

fn counts(d: &RawData, s: f64) -> Array3<f64> {
    d.diffraction.mapv(|a| (f64::from(a) * s).powi(2))
}

#[test]
fn noiseless_diffraction_is_fft_of_probe_times_patch() {
    let sim = simulate(&small_cfg(1e6, Noise::None), 3, &ProgressBar::hidden()).unwrap();
    let obj = sim.raw.object.as_ref().unwrap();
    let s2 = sim.photon_scale * sim.photon_scale;
    for i in [0, 17, 59] {
        let patch = extract_patch(obj, sim.raw.xcoords[i], sim.raw.ycoords[i], 32);
        let want = direct_far_field(&exit_wave(&sim.raw.probe, &patch)) * s2;
        let got = counts(&sim.raw, sim.photon_scale);
        let got = got.index_axis(Axis(0), i);
        let peak = want.fold(0.0f64, |m, &v| m.max(v));
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5 * peak, "pattern {i}: {a} vs {b}");
        }
        // The stored ground-truth patches are the same extraction.
        let y = sim
            .patches
            .as_ref()
            .unwrap()
            .index_axis(Axis(0), i)
            .to_owned();
        assert!(
            y.iter()
                .zip(&patch)
                .all(|(a, b)| (Complex64::new(f64::from(a.re), f64::from(a.im)) - b).norm() < 1e-6)
        );
    }
    // Expected photons: s² · mean Σ|P·O_i|² = nphotons, so the noiseless mean is exact.
    assert!((sim.mean_counts / 1e6 - 1.0).abs() < 1e-9);
}

#[test]
fn high_dose_mean_counts_within_one_percent() {
    let sim = simulate(&small_cfg(1e9, Noise::Poisson), 8, &ProgressBar::hidden()).unwrap();
    let c = counts(&sim.raw, sim.photon_scale);
    let mean = c.sum() / 60.0;
    assert!((mean / 1e9 - 1.0).abs() < 0.01, "mean counts {mean}");
    assert!((sim.mean_counts / 1e9 - 1.0).abs() < 0.01);
}

#[test]
fn low_dose_counts_have_poisson_statistics() {
    let clean = simulate(&small_cfg(1e4, Noise::None), 21, &ProgressBar::hidden()).unwrap();
    let noisy = simulate(&small_cfg(1e4, Noise::Poisson), 21, &ProgressBar::hidden()).unwrap();
    // Same seed: same object, probe and positions; only the noise differs.
    assert_eq!(clean.raw.xcoords, noisy.raw.xcoords);
    assert_eq!(clean.photon_scale, noisy.photon_scale);
    let lam = counts(&clean.raw, clean.photon_scale);
    let k = counts(&noisy.raw, noisy.photon_scale);
    assert!(
        k.iter().all(|&v| (v - v.round()).abs() < 1e-3),
        "counts are integers"
    );
    // Pearson χ² per pixel ≈ 1 over the pixels with λ > 0.5, and the total is Poisson(Σλ).
    let (mut chi2, mut dof) = (0.0, 0usize);
    for (&l, &c) in lam.iter().zip(&k) {
        if l > 0.5 {
            chi2 += (c - l).powi(2) / l;
            dof += 1;
        }
    }
    let r = chi2 / dof as f64;
    assert!(
        dof > 5000 && (r - 1.0).abs() < 5.0 * (4.0 / dof as f64).sqrt() + 0.02,
        "χ²/dof = {r} over {dof}"
    );
    let (tl, tk) = (lam.sum(), k.sum());
    assert!(
        (tk - tl).abs() < 5.0 * tl.sqrt(),
        "total {tk} vs expected {tl}"
    );
    assert!((tl / 60.0 / 1e4 - 1.0).abs() < 1e-6);
}

#[test]
fn same_seed_same_file_and_round_trip_through_loader_and_grouping() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_cfg(1e4, Noise::Poisson);
    let pb = ProgressBar::hidden();
    let a = simulate(&cfg, 5, &pb).unwrap();
    let b = simulate(&cfg, 5, &pb).unwrap();
    let c = simulate(&cfg, 6, &pb).unwrap();
    let (pa, pb_, pc) = (
        dir.path().join("a.npz"),
        dir.path().join("b.npz"),
        dir.path().join("c.npz"),
    );
    a.save(&pa).unwrap();
    b.save(&pb_).unwrap();
    c.save(&pc).unwrap();
    assert_eq!(
        std::fs::read(&pa).unwrap(),
        std::fs::read(&pb_).unwrap(),
        "byte-identical files"
    );
    let la = RawData::load(&pa).unwrap();
    assert_eq!(la, RawData::load(&pb_).unwrap());
    assert_ne!(la.diffraction, RawData::load(&pc).unwrap().diffraction);
    assert_eq!(
        la, a.raw,
        "the loader reads back exactly what the simulator wrote"
    );
    let mut f = NpzFile::open(&pa).unwrap();
    assert_eq!(
        f.f64("nphotons").unwrap(),
        ArrayD::from_elem(IxDyn(&[]), 1e4)
    );
    assert_eq!(f.f64("photon_scale").unwrap()[IxDyn(&[])], a.photon_scale);
    assert_eq!(f.c64("Y").unwrap().shape(), &[60, 32, 32]);

    let gi = group_positions(
        la.xcoords.as_slice().unwrap(),
        la.ycoords.as_slice().unwrap(),
        &cfg_group(),
        &mut ChaCha8Rng::seed_from_u64(1),
    )
    .unwrap();
    let g = gather(gi, la.diffraction.view());
    assert_eq!(g.diffraction.shape(), &[60, 32, 32, 4]);
    let i = g.index.nn_indices[[7, 2]];
    assert_eq!(
        g.diffraction.slice(ndarray::s![7, .., .., 2]),
        la.diffraction.index_axis(Axis(0), i)
    );
}

fn cfg_group() -> GroupConfig {
    spx::config::Config::default().ptycho.group
}

#[test]
fn bad_simulation_settings_name_the_key() {
    let mut cfg = small_cfg(1e4, Noise::Poisson);
    cfg.nphotons = -1.0;
    let e = simulate(&cfg, 0, &ProgressBar::hidden())
        .unwrap_err()
        .to_string();
    assert!(e.contains("ptycho.simulate.nphotons"), "{e}");
}

// ---------------------------------------------------------------- CLI

#[test]
fn cli_simulate_writes_npz_png_config_and_numpy_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spx"))
        .args([
            "--out",
            dir.path().to_str().unwrap(),
            "--seed",
            "3",
            "--json",
            "-q",
        ])
        .args([
            "ptycho",
            "simulate",
            "--positions",
            "40",
            "--size",
            "32",
            "--nphotons",
            "1e5",
        ])
        .args(["--set", "ptycho.simulate.object_size=64"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["n_positions"], 40);
    assert_eq!(v["nphotons"], 1e5);
    let npz = dir.path().join("ptycho_sim.npz");
    assert!(dir.path().join("ptycho_sim.png").exists());
    assert!(dir.path().join("spx-config.toml").exists());
    let d = RawData::load(&npz).unwrap();
    assert_eq!(d.diffraction.dim(), (40, 32, 32));
    assert_eq!(d.object.as_ref().unwrap().dim(), (64, 64));

    if let Ok(py) = std::env::var("SPX_INTEROP_PYTHON") {
        let script = "import numpy as np, sys\n\
            d = np.load(sys.argv[1])\n\
            assert d['diff3d'].shape == (40, 32, 32) and d['diff3d'].dtype == np.float32\n\
            assert d['probeGuess'].dtype == np.complex64 and d['xcoords'].dtype == np.float64\n\
            c = (d['diff3d'].astype(np.float64) * d['photon_scale'])**2\n\
            assert abs(c.sum(axis=(1, 2)).mean() / d['nphotons'] - 1) < 0.05\n\
            assert np.allclose(c, np.round(c), atol=1e-2)\n";
        let r = Command::new(py)
            .args(["-c", script])
            .arg(&npz)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }

    let bad = Command::new(env!("CARGO_BIN_EXE_spx"))
        .args(["--out", dir.path().to_str().unwrap()])
        .args(["ptycho", "simulate", "--nphotons=-5"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ptycho.simulate.nphotons"));
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let pool = |t: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let x: Vec<f64> = (0..3000).map(|_| rng.random::<f64>() * 200.0).collect();
    let y: Vec<f64> = (0..3000).map(|_| rng.random::<f64>() * 200.0).collect();
    let run_group =
        || group_positions(&x, &y, &cfg(2, 7, 0), &mut ChaCha8Rng::seed_from_u64(4)).unwrap();
    assert_eq!(pool(1).install(run_group), pool(3).install(run_group));
    let run_sim = || {
        simulate(&small_cfg(1e4, Noise::Poisson), 1, &ProgressBar::hidden())
            .unwrap()
            .raw
    };
    assert_eq!(pool(1).install(run_sim), pool(3).install(run_sim));
}

#[test]
fn ptycho_config_defaults_are_the_embedded_file() {
    let d = spx::ptycho::PtychoConfig::default();
    assert_eq!(d, spx::config::Config::default().ptycho);
    assert_eq!((d.group.gridsize, d.group.neighbor_count), (2, 7));
    assert_eq!((d.simulate.n, d.simulate.nphotons), (64, 1e9));
}
