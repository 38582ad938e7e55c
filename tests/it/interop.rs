//! Files written by spx open in numpy/astropy/h5py with the right values, and files written by
//! those tools open in spx. Drives tests/interop/*.py (see tests/interop/README.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::{Array1, Array2, ArrayD, IxDyn};
use num_complex::Complex32;
use spx::io::{fits, hdf5, npz};

// Mirrors tests/interop/formulas.py.
fn cube() -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(&[3, 4, 5]), |ix| {
        (ix[0] * 100 + ix[1] * 10) as f32 + ix[2] as f32 * 0.5
    })
}
fn wave() -> Array1<f64> {
    Array1::from_shape_fn(50, |k| 3600.0 + 100.0 * k as f64)
}
fn probe() -> ArrayD<Complex32> {
    ArrayD::from_shape_fn(IxDyn(&[4, 4]), |ix| {
        Complex32::new(ix[0] as f32, ix[1] as f32 - 0.5 * ix[0] as f32)
    })
}
fn coords() -> Vec<f64> {
    (0..6).map(|i| i as f64 * 1.5 - 2.0).collect()
}
fn ids() -> ArrayD<i64> {
    ArrayD::from_shape_vec(IxDyn(&[5]), vec![3, -1, 4, -1, 5]).unwrap()
}
fn spectra(rows: std::ops::Range<usize>) -> Array2<f32> {
    Array2::from_shape_fn((rows.len(), 64), |(r, t)| {
        ((rows.start + r) * 64 + t) as f32 * 0.25
    })
}
fn names() -> Vec<String> {
    vec!["a.jdx".into(), "b/c.csv".into(), "naïve.txt".into()]
}

fn python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SPX_INTEROP_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let ok = Command::new("python3")
        .args(["-c", "import numpy, astropy, h5py"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return Some(PathBuf::from("python3"));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI needs SPX_INTEROP_PYTHON (a python with numpy, astropy, h5py); .ci/run sets it"
    );
    eprintln!("interop: skipped, no python3 with numpy+astropy+h5py (set SPX_INTEROP_PYTHON)");
    None
}

fn run_py(py: &Path, script: &str, dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(script);
    let out = Command::new(py).arg(&script).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{} failed:\n{}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_spx_files(dir: &Path) {
    fits::write_fits(&dir.join("spx.fits"), |w| {
        w.primary_card("NEXP", 9i64)?;
        w.image_f32("FLUX", &cube(), &[("BUNIT", "1e-17 erg/s/cm2/Ang".into())])?;
        w.image_f64("WAVE", &wave().into_dyn(), &[])?;
        w.table(
            "OBSINFO",
            &[
                fits::Column::F64("SEEING".into(), coords()),
                fits::Column::Str("NAME".into(), (0..6).map(|i| format!("exp{i}")).collect()),
            ],
            &[],
        )
    })
    .unwrap();
    npz::write_npz(
        &dir.join("spx.npz"),
        &[
            ("cube", npz::NpzArray::F32(cube())),
            ("wave", npz::NpzArray::F64(wave().into_dyn())),
            ("probeGuess", npz::NpzArray::C64(probe())),
            ("ids", npz::NpzArray::I64(ids())),
        ],
        true,
    )
    .unwrap();
    hdf5::write_h5(&dir.join("spx.h5"), |w| {
        // Appended in blocks, as the corpus builder streams it.
        let mut s = w.appendable::<f32>("spectra", 64, 64, Some(4))?;
        for start in (0..300).step_by(70) {
            s.append(spectra(start..(start + 70).min(300)).view())?;
        }
        let modality: Vec<i8> = (0..300).map(|i| (i % 5) as i8).collect();
        w.dataset(
            "modality",
            ArrayD::from_shape_vec(IxDyn(&[300]), modality)
                .unwrap()
                .view(),
            &hdf5::Layout::contiguous(),
        )?;
        w.dataset("group/probe", probe().view(), &hdf5::Layout::contiguous())?;
        w.strings("source_files", &names())?;
        w.attr_i64("/", "n_points", 64)?;
        w.attr_f64("spectra", "scale", 0.25)?;
        w.attr_str("/", "creator", "spx")
    })
    .unwrap();
    // Corpora written by the binary: synthetic, and built from two-column CSV files.
    let csv_dir = dir.join("csv");
    std::fs::create_dir_all(&csv_dir).unwrap();
    for k in 0..3 {
        let rows: String = (0..400)
            .map(|i| {
                let x = 400.0 + i as f64 * 2.0;
                let y = ((x - 600.0 - 50.0 * k as f64) / 30.0).powi(2);
                format!("{x},{}\n", (-y).exp() + 0.01 * (i % 7) as f64)
            })
            .collect();
        std::fs::write(csv_dir.join(format!("s{k}.csv")), rows).unwrap();
    }
    for args in [
        vec![
            "spektron".into(),
            "corpus".into(),
            "synth".into(),
            "--n".into(),
            "150".into(),
            "--out".into(),
            dir.join("cli_synth.h5").display().to_string(),
        ],
        vec![
            "spektron".into(),
            "corpus".into(),
            "build".into(),
            csv_dir.display().to_string(),
            "--out".into(),
            dir.join("cli_build.h5").display().to_string(),
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_spx"))
            .args(["--out", &dir.join("runs").display().to_string(), "-q"])
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "spx {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn read_reference_files(dir: &Path) {
    let mut f = fits::FitsReader::open(&dir.join("ref.fits")).unwrap();
    assert_eq!(f.image_f32("FLUX").unwrap(), cube());
    assert_eq!(f.image_f64("WAVE").unwrap(), wave().into_dyn());
    assert_eq!(f.card_i64("PRIMARY", "NEXP").unwrap(), 9);
    assert_eq!(f.card_f64("PRIMARY", "IFURA").unwrap(), 205.4384);
    assert_eq!(f.card_str("FLUX", "BUNIT").unwrap(), "1e-17 erg/s/cm2/Ang");
    assert_eq!(f.col_f64("OBSINFO", "SEEING").unwrap(), coords());
    let want: Vec<String> = (0..6).map(|i| format!("exp{i}")).collect();
    assert_eq!(f.col_str("OBSINFO", "NAME").unwrap(), want);

    let mut z = npz::NpzFile::open(&dir.join("ref.npz")).unwrap();
    assert!(
        z.contains("_metadata"),
        "numpy wrote a pickled _metadata entry"
    );
    assert_eq!(z.f32("cube").unwrap(), cube());
    assert_eq!(z.f64("wave").unwrap(), wave().into_dyn());
    assert_eq!(z.c64("probeGuess").unwrap(), probe());
    assert_eq!(z.i64("ids").unwrap(), ids());
    let mut z = npz::NpzFile::open(&dir.join("ref_compressed.npz")).unwrap();
    assert_eq!(z.f32("cube").unwrap(), cube());
    assert_eq!(z.c64("probeGuess").unwrap(), probe());

    for file in ["ref.h5", "ref_latest.h5"] {
        let h = hdf5::H5Reader::open(&dir.join(file)).unwrap();
        let all = spectra(0..300).into_dyn();
        for (name, chunk, deflated) in [
            ("spectra", Some(vec![64, 64]), true),
            ("spectra_contiguous", None, false),
            ("spectra_fixed", Some(vec![50, 64]), true),
        ] {
            assert_eq!(h.shape(name).unwrap(), vec![300, 64], "{file} {name}");
            assert_eq!(h.chunk(name).unwrap(), chunk, "{file} {name}");
            assert_eq!(h.is_deflated(name).unwrap(), deflated, "{file} {name}");
            assert_eq!(h.read::<f32>(name).unwrap(), all, "{file} {name}");
            assert_eq!(
                h.read_rows::<f32>(name, 130, 40).unwrap(),
                spectra(130..170),
                "{file} {name}"
            );
        }
        // Big-endian f64 converts to f64; f64 is never narrowed to f32 silently.
        assert_eq!(
            h.read::<f64>("spectra_be").unwrap(),
            all.mapv(f64::from),
            "{file}"
        );
        assert!(h.read::<f32>("spectra_be").is_err(), "{file}");
        let m = h.read::<i8>("modality").unwrap();
        assert_eq!(m[[7]], 2);
        assert_eq!(h.read::<i64>("modality").unwrap()[[9]], 4);
        assert_eq!(h.read::<Complex32>("group/probe").unwrap(), probe());
        assert!(h.read::<Complex32>("spectra").is_err(), "{file}");
        assert_eq!(h.strings("source_files").unwrap(), names());
        assert_eq!(h.attr_i64("/", "n_points").unwrap(), 64, "{file}");
        assert_eq!(h.attr_str("/", "creator").unwrap(), "h5py", "{file}");
        assert_eq!(h.attr_str("/", "fixed").unwrap(), "ascii", "{file}");
        assert_eq!(h.attr_f64("/", "ratio").unwrap(), 1.5, "{file}");
        assert_eq!(h.attr_i64("/", "big").unwrap(), -7, "{file}");
        assert_eq!(h.attr_i64("/", "extra_11").unwrap(), 110, "{file}");
        assert_eq!(h.attr_f64("spectra", "scale").unwrap(), 0.25, "{file}");
        let err = h.attr_i64("/", "creator").unwrap_err().to_string();
        assert!(err.contains(file) && err.contains("creator"), "{err}");
    }
}

#[test]
fn python_tools_read_spx_files_and_spx_reads_theirs() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    write_spx_files(dir.path());
    run_py(&py, "check_spx_files.py", dir.path());
    run_py(&py, "write_reference_files.py", dir.path());
    read_reference_files(dir.path());
}

/// h5py reads a DIP catalog file (`spx dip recon` catalog mode): shapes, chunking by source,
/// values, the summary table's strings and numbers, and the file attributes.
#[test]
fn h5py_reads_dip_catalog_files() {
    use spx::dip::catalog::{Meta, SourceResult, write_catalog};
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let grid: Vec<f64> = (0..16).map(|i| 0.75 + 0.25 * i as f64).collect();
    let row = |i: usize, failed: bool| SourceResult {
        index: 2 * i,
        id: format!("src-{i}"),
        input: format!("/data/src-{i}.csv"),
        key: format!("{i:016x}"),
        error: failed.then(|| "band: no rows left after QC".to_string()),
        rows_read: 100 + i,
        observations_used: if failed { 0 } else { 90 + i },
        dropped_off_grid: 0,
        qc_bad_flag: 3,
        qc_invalid: 0,
        qc_low_snr: 2,
        qc_clipped: 1,
        qc_bands_skipped: 0,
        chi2_per_obs: (!failed).then_some(1.25),
        baseline_chi2_per_obs: (!failed).then_some(1.0),
        epochs: 300 * i,
        stop_reason: "discrepancy,patience".into(),
        restores: i,
        seconds: 1.5,
        flux: if failed {
            vec![]
        } else {
            (0..16).map(|j| (i * 100 + j) as f64).collect()
        },
        flux_std: (!failed).then(|| vec![0.5; 16]),
        baseline_flux: if failed { vec![] } else { vec![7.0; 16] },
    };
    let rows = vec![row(0, false), row(1, true), row(2, false)];
    let meta = Meta {
        settings_key: "abc".into(),
        shard: 1,
        n_shards: 2,
        n_sources: 6,
        seed: 42,
        ensemble: 2,
    };
    let path = dir.path().join("catalog.h5");
    write_catalog(&path, &grid, &rows, &meta).unwrap();
    let script = r#"
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
assert f["wavelength"].shape == (16,)
for name in ["flux", "baseline_flux", "flux_std"]:
    d = f[name]
    assert d.shape == (3, 16), (name, d.shape)
    assert d.chunks == (1, 16), (name, d.chunks)
flux = f["flux"][...]
assert np.array_equal(flux[0], np.arange(16.0)), flux[0]
assert np.array_equal(flux[2], 200 + np.arange(16.0))
assert np.isnan(flux[1]).all()
s = f["sources"]
ids = [x.decode() if isinstance(x, bytes) else x for x in s["id"][...]]
assert ids == ["src-0", "src-1", "src-2"], ids
status = [x.decode() if isinstance(x, bytes) else x for x in s["status"][...]]
assert status == ["ok", "failed", "ok"], status
assert list(s["index"][...]) == [0, 2, 4]
assert list(s["observations_used"][...]) == [90, 0, 92]
c2 = s["chi2_per_obs"][...]
assert c2[0] == 1.25 and np.isnan(c2[1])
assert f.attrs["n_sources"] == 6 and f.attrs["ensemble"] == 2
key = f.attrs["settings_key"]
assert (key.decode() if isinstance(key, bytes) else key) == "abc"
print("ok")
"#;
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And spx reads back what it wrote.
    let (g, back, m) = spx::dip::catalog::read_catalog(&path).unwrap();
    assert_eq!((g, back, m), (grid, rows, meta));
}
