//! Hostile input (issue 14): corrupted files, out-of-range configs, faults. Every refused run
//! must exit 2 with a first stderr line naming the file (or config source) and the field, print
//! no panic, leave no new file in `--out`, and stay under 1 GB of address space (the binary
//! runs under `prlimit --as`, so an allocation sized from a lying header aborts the test).
//!
//! Classes (issue numbering): 1 sizes trusted from headers/config, 2 panics, 3 exit 0 with
//! garbage, 4 run-level atomicity, 5 torn checkpoints, 6 resume, 7 data safety and paths,
//! 8 directory walks, 9 messages, 10 byte determinism.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Run, listing, refused_run, spx_limited};

/// A refused run (see [`refused_run`]) with `-q --out OUT` in front of `args`.
fn refused(cwd: &Path, out: &Path, args: &[&str], names: &[&str]) -> String {
    std::fs::create_dir_all(out).unwrap();
    let mut full = vec!["-q", "--out", out.to_str().unwrap()];
    full.extend_from_slice(args);
    refused_run(cwd, out, &full, names)
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Crafted files

/// A NumPy `.npy` member: `descr` like `<f8`, `shape` like `(4,)`, raw little-endian data.
fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.extend_from_slice(data);
    v
}

fn f64s(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// complex64 array of `n` elements all equal to 1 + 0i.
fn c64_ones(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|_| [1f32.to_le_bytes(), 0f32.to_le_bytes()].concat())
        .collect()
}

fn write_npz(path: &Path, members: &[(&str, Vec<u8>)]) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opt =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in members {
        z.start_file(format!("{name}.npy"), opt).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

/// A raw ptycho NPZ with `n` positions, `k`×`k` patterns and an `objectGuess` of side `obj`.
fn raw_npz(path: &Path, n: usize, k: usize, obj: usize) {
    let xs: Vec<f64> = (0..n).map(|i| 10.0 + i as f64).collect();
    write_npz(
        path,
        &[
            ("xcoords", npy("<f8", &format!("({n},)"), &f64s(&xs))),
            ("ycoords", npy("<f8", &format!("({n},)"), &f64s(&xs))),
            (
                "diff3d",
                npy(
                    "<f4",
                    &format!("({n}, {k}, {k})"),
                    &vec![0u8; n * k * k * 4],
                ),
            ),
            (
                "probeGuess",
                npy("<c8", &format!("({k}, {k})"), &c64_ones(k * k)),
            ),
            (
                "objectGuess",
                npy("<c8", &format!("({obj}, {obj})"), &c64_ones(obj * obj)),
            ),
        ],
    );
}

/// MAT v5 header (128 bytes, little endian).
fn mat_header() -> Vec<u8> {
    let mut h = vec![b' '; 116];
    h[..20].copy_from_slice(b"MATLAB 5.0 MAT-file ");
    h.extend_from_slice(&[0u8; 8]);
    h.extend_from_slice(&0x0100u16.to_le_bytes());
    h.extend_from_slice(b"IM");
    h
}

fn tag(t: u32, n: u32) -> Vec<u8> {
    [t.to_le_bytes(), n.to_le_bytes()].concat()
}

/// One miMATRIX with class `class`, i64 dims `dims` and name `x`, no data.
fn mat_matrix(class: u32, dims: &[i64]) -> Vec<u8> {
    let mut p = tag(6, 8);
    p.extend_from_slice(&class.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend(tag(12, 8 * dims.len() as u32));
    for d in dims {
        p.extend_from_slice(&d.to_le_bytes());
    }
    // name `x` as a small data element
    p.extend_from_slice(&((1u32 << 16) | 1).to_le_bytes());
    p.extend_from_slice(b"x\0\0\0");
    let mut v = mat_header();
    v.extend(tag(14, p.len() as u32));
    v.extend(p);
    v
}

/// Corn-layout CSV directory: `corn_m5spec.csv`, `corn_mp6spec.csv` (40 samples × 30
/// channels, header of wavelengths) and `corn_propvals.csv` with `props` columns.
/// A property column: name and value of sample i.
type Prop<'a> = (&'a str, fn(usize) -> f64);

fn corn_dir(dir: &Path, props: &[Prop], bom: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let n = 40;
    let head: Vec<String> = (0..30).map(|j| format!("{}", 1100 + 2 * j)).collect();
    for (inst, gain) in [("m5", 1.0), ("mp6", 0.93)] {
        let mut t = head.join(",") + "\n";
        for i in 0..n {
            let c = (i as f64 * 0.37).sin();
            let row: Vec<String> = (0..30)
                .map(|j| {
                    let x = j as f64 / 29.0;
                    format!(
                        "{:.6}",
                        gain * (0.5 + c * (-(x - 0.4f64).powi(2) * 20.0).exp())
                            + 0.01 * ((i * 31 + j * 7) % 13) as f64
                    )
                })
                .collect();
            t += &(row.join(",") + "\n");
        }
        std::fs::write(dir.join(format!("corn_{inst}spec.csv")), t).unwrap();
    }
    let mut t = String::new();
    if bom {
        t.push('\u{feff}');
    }
    t += &props.iter().map(|p| p.0).collect::<Vec<_>>().join(",");
    t.push('\n');
    for i in 0..n {
        let row: Vec<String> = props.iter().map(|p| format!("{:.6}", (p.1)(i))).collect();
        t += &(row.join(",") + "\n");
    }
    std::fs::write(dir.join("corn_propvals.csv"), t).unwrap();
}

fn moisture(i: usize) -> f64 {
    10.0 + (i as f64 * 0.37).sin() * 2.0
}

fn baselines_args<'a>(data: &'a str, prop: &'a str) -> Vec<&'a str> {
    vec![
        "spektron",
        "baselines",
        "--data",
        data,
        "--source",
        "m5",
        "--target",
        "mp6",
        "--property",
        prop,
        "--n-transfer",
        "5,10",
        "--repeats",
        "2",
    ]
}

/// Python with h5py for editing corpus files, when available.
fn python() -> Option<String> {
    let p = std::env::var("SPX_INTEROP_PYTHON").ok().or_else(|| {
        let h = std::env::var("HOME").ok()?;
        let p = format!("{h}/.cache/spx-venv/bin/python");
        Path::new(&p).exists().then_some(p)
    })?;
    let ok = Command::new(&p)
        .args(["-c", "import h5py"])
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(p)
}

const TINY_MODEL: &[&str] = &[
    "spektron.model.d_model=16",
    "spektron.model.n_heads=2",
    "spektron.model.d_ff=32",
    "spektron.model.layers=mt",
    "spektron.model.d_state=4",
    "spektron.model.z_chem=8",
    "spektron.model.z_inst=4",
    "spektron.pretrain.warmup=1",
    "spektron.pretrain.val_every=2",
    "spektron.pretrain.checkpoint_every=1",
];

fn with_sets<'a>(sets: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = Vec::new();
    for s in sets {
        v.push("--set");
        v.push(*s);
    }
    v.extend_from_slice(rest);
    v
}

fn ok(cwd: &Path, args: &[&str]) -> Run {
    let r = spx_limited(cwd, args, Duration::from_secs(300));
    assert_eq!(r.code, 0, "spx {args:?}:\n{}", r.stderr);
    r
}

/// `spx spektron corpus synth` of 40 spectra into `dir/c.h5`.
fn synth_corpus(dir: &Path) {
    ok(
        dir,
        &[
            "-q",
            "--set",
            "spektron.synth.n=40",
            "--out",
            "c.h5",
            "spektron",
            "corpus",
            "synth",
        ],
    );
}

/// A synthetic corpus edited by the h5py statement `edit` (on the open file `f`) must stop a
/// tiny pretraining run with a refusal naming `names`. Skipped without python + h5py.
fn pretrain_on_edited_corpus(edit: &str, names: &[&str]) {
    let Some(py) = python() else {
        eprintln!("no python with h5py: corpus editing skipped");
        return;
    };
    let d = tempfile::tempdir().unwrap();
    synth_corpus(d.path());
    let script = format!("import h5py, sys\nwith h5py.File(sys.argv[1], 'r+') as f:\n    {edit}\n");
    let st = Command::new(&py)
        .args(["-c", &script, s(&d.path().join("c.h5"))])
        .status()
        .unwrap();
    assert!(st.success());
    let mut args = with_sets(TINY_MODEL, &[]);
    args.extend([
        "spektron", "pretrain", "--corpus", "c.h5", "--steps", "2", "--batch", "4",
    ]);
    refused(d.path(), &d.path().join("run"), &args, names);
}

// ---------------------------------------------------------------------------------------------
// Class 1: sizes trusted from headers and config

#[test]
fn c1_config_sizes_have_ranges() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    // 1 << 64 wrapped in release builds: a 64-level U-Net (21 GB).
    refused(
        d.path(),
        &out,
        &["--set", "dip.net.depth=64", "dip", "simulate"],
        &["--set dip.net.depth=64", "dip.net.depth", "[1, 10]"],
    );
    refused(
        d.path(),
        &out,
        &["--set", "dip.net.filters=100000", "dip", "simulate"],
        &["dip.net.filters"],
    );
    refused(
        d.path(),
        &out,
        &["--threads", "100000", "spektron", "corpus", "synth"],
        &["flag --threads", "run.threads"],
    );
    refused(
        d.path(),
        &out,
        &["spektron", "corpus", "synth", "--points", "2000000000"],
        &["flag --points", "spektron.corpus.target_points"],
    );
    refused(
        d.path(),
        &out,
        &["ptycho", "simulate", "--size", "100000"],
        &["flag --size", "ptycho.simulate.n"],
    );
    refused(
        d.path(),
        &out,
        &["--set", "crr.pixel_scale=1e-4", "crr", "simulate"],
        &["crr.pixel_scale"],
    );
}

#[test]
fn c1_jcamp_dup_bomb_does_not_expand() {
    let d = tempfile::tempdir().unwrap();
    let inp = d.path().join("in");
    std::fs::create_dir_all(&inp).unwrap();
    // 100 bytes: `V99999999` repeats the previous ordinate 10^8 times.
    std::fs::write(
        inp.join("bomb.jdx"),
        "##TITLE=bomb\n##NPOINTS=4\n##FIRSTX=0\n##LASTX=3\n##XYDATA=(X++(Y..Y))\n0 1V99999999\n##END=\n",
    )
    .unwrap();
    let err = refused(
        d.path(),
        &d.path().join("out"),
        &["spektron", "corpus", "build", s(&inp)],
        // SQZ/DUP `V` is 4: the count is 499999999
        &[
            "no usable spectrum",
            "bomb.jdx",
            "XYDATA",
            "DUP count 499999999",
        ],
    );
    assert!(err.lines().count() <= 2, "{err}");
}

#[test]
fn c1_npz_header_larger_than_the_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("big.npz");
    let xs = f64s(&[1.0, 2.0, 3.0, 4.0]);
    write_npz(
        &f,
        &[
            ("xcoords", npy("<f8", "(4,)", &xs)),
            ("ycoords", npy("<f8", "(4,)", &xs)),
            // declares 1e9 × 64 × 64 float32 = 16 TB, holds 64 bytes
            ("diff3d", npy("<f4", "(1000000000, 64, 64)", &[0u8; 64])),
        ],
    );
    refused(
        d.path(),
        &d.path().join("out"),
        &["ptycho", "epie", "--data", s(&f)],
        &["big.npz", "field `diff3d`", "header declares shape"],
    );
}

#[test]
fn c1_mat_cell_of_1e12_elements_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("cell.mat");
    let mut bytes = mat_matrix(1, &[1_000_000_000_000, 1]);
    bytes.resize(192, 0);
    std::fs::write(&f, &bytes).unwrap();
    refused(
        d.path(),
        &d.path().join("out"),
        &baselines_args(s(&f), "moisture"),
        &["cell.mat", "element at byte 128", "1000000000000"],
    );
}

#[test]
fn c1_fits_naxis2_beyond_the_file_is_refused() {
    use spx::io::fits::{FitsReader, write_fits};
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("img.fits");
    write_fits(&f, |w| {
        w.image_f32(
            "FLUX",
            &ndarray::Array2::<f32>::zeros((4, 8)).into_dyn(),
            &[],
        )
    })
    .unwrap();
    // Patch the FLUX header's NAXIS2 card to 10^9 (the file stays a few kB).
    let mut bytes = std::fs::read(&f).unwrap();
    let hdr2 = bytes.windows(8).rposition(|w| w == b"NAXIS2  ").unwrap();
    let card = format!("{:<8}= {:>20}", "NAXIS2", 1_000_000_000);
    bytes[hdr2..hdr2 + card.len()].copy_from_slice(card.as_bytes());
    std::fs::write(&f, &bytes).unwrap();
    let mut r = FitsReader::open(&f).unwrap();
    let e = r.image_f32("FLUX").unwrap_err().to_string();
    assert!(
        e.contains("img.fits") && e.contains("FLUX:NAXIS") && e.contains("1000000000"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Class 2: panics on input

#[test]
fn c2_mat_small_element_overrun_and_dims_overflow() {
    let d = tempfile::tempdir().unwrap();
    // 144 bytes: a miMATRIX of 4 bytes whose payload is a small element announcing 4 more.
    let mut small = mat_header();
    small.extend(tag(14, 4));
    small.extend_from_slice(&((4u32 << 16) | 6).to_le_bytes());
    small.extend_from_slice(&[0u8; 4]);
    assert_eq!(small.len(), 144);
    let f = d.path().join("small.mat");
    std::fs::write(&f, &small).unwrap();
    refused(
        d.path(),
        &d.path().join("out"),
        &baselines_args(s(&f), "moisture"),
        &["small.mat", "element at byte 128", "runs past the end"],
    );
    // Three dims of 2^32 − 1: their product overflows usize.
    let f = d.path().join("dims.mat");
    let m = u32::MAX as i64;
    std::fs::write(&f, mat_matrix(6, &[m, m, m])).unwrap();
    refused(
        d.path(),
        &d.path().join("out"),
        &baselines_args(s(&f), "moisture"),
        &["dims.mat", "element at byte 128", "overflow"],
    );
}

#[test]
fn c2_baselines_constant_property_and_n_test_zero() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("corn");
    corn_dir(&data, &[("moisture", moisture), ("flat", |_| 3.0)], false);
    let out = d.path().join("out");
    refused(
        d.path(),
        &out,
        &baselines_args(s(&data), "flat"),
        &["corn", "property is constant"],
    );
    let mut args = vec!["--set", "spektron.baselines.n_test=0"];
    args.extend(baselines_args(s(&data), "moisture"));
    refused(
        d.path(),
        &out,
        &args,
        &[
            "--set spektron.baselines.n_test=0",
            "spektron.baselines.n_test",
        ],
    );
}

#[test]
fn c2_epie_object_smaller_than_the_scan() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("tiny_obj.npz");
    raw_npz(&f, 6, 8, 4);
    refused(
        d.path(),
        &d.path().join("out"),
        &["ptycho", "epie", "--data", s(&f), "--iterations", "2"],
        &["tiny_obj.npz", "objectGuess", "4×4"],
    );
}

#[test]
fn c2_ptycho_train_on_a_size_simulate_accepts() {
    let d = tempfile::tempdir().unwrap();
    let sim = d.path().join("sim");
    ok(
        d.path(),
        &with_sets(
            &[
                "ptycho.simulate.object_size=64",
                "ptycho.simulate.plot=false",
            ],
            &[
                "-q",
                "--out",
                s(&sim),
                "ptycho",
                "simulate",
                "--size",
                "24",
                "--positions",
                "40",
            ],
        ),
    );
    let data = sim.join("ptycho_sim.npz");
    refused(
        d.path(),
        &d.path().join("out"),
        &["ptycho", "train", "--data", s(&data), "--epochs", "1"],
        &["power of two", "N = 24"],
    );
}

#[test]
fn c2_corpus_modality_code_outside_0_4() {
    pretrain_on_edited_corpus(
        "f['modality'][3] = 7",
        &["c.h5", "/modality", "code 7 at row 3"],
    );
}

// ---------------------------------------------------------------------------------------------
// Class 3: exit 0 with garbage

#[test]
fn c3_non_finite_and_degenerate_knobs_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    for (set, cmd) in [
        (
            "spektron.pretrain.lr=nan",
            vec!["spektron", "corpus", "synth"],
        ),
        (
            "spektron.pretrain.lr=-1",
            vec!["spektron", "corpus", "synth"],
        ),
        ("dip.prior.cwt_weight=nan", vec!["dip", "simulate"]),
        ("dip.train.lr=inf", vec!["dip", "simulate"]),
        ("ptycho.pinn.train.batch_size=0", vec!["ptycho", "simulate"]),
        (
            "ptycho.pinn.train.val_fraction=2",
            vec!["ptycho", "simulate"],
        ),
    ] {
        let key = set.split('=').next().unwrap();
        let mut args = vec!["--set", set];
        args.extend(cmd);
        refused(d.path(), &out, &args, &[&format!("--set {set}"), key]);
    }
    refused(
        d.path(),
        &out,
        &["spektron", "corpus", "synth", "--n", "0"],
        &["flag --n", "spektron.synth.n"],
    );
    refused(
        d.path(),
        &out,
        &["dip", "simulate", "--per-band", "0"],
        &["dip.simulate.per_band"],
    );
    let f = d.path().join("raw.npz");
    raw_npz(&f, 6, 8, 32);
    refused(
        d.path(),
        &out,
        &["ptycho", "epie", "--data", s(&f), "--alpha", "nan"],
        &["--alpha", "ptycho.epie.alpha"],
    );
}

#[test]
fn c3_device_not_compiled_in_is_refused_even_without_tensors() {
    if cfg!(feature = "cuda") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    refused(
        d.path(),
        &d.path().join("out"),
        &[
            "--device", "cuda", "spektron", "corpus", "synth", "--n", "5",
        ],
        &["run.device", "cuda", "not compiled"],
    );
}

#[test]
fn c3_corpus_build_with_nothing_usable_exits_non_zero() {
    let d = tempfile::tempdir().unwrap();
    let inp = d.path().join("in");
    std::fs::create_dir_all(&inp).unwrap();
    std::fs::write(inp.join("flat.csv"), "x,y\n1,5\n2,5\n3,5\n4,5\n").unwrap();
    std::fs::write(inp.join("junk.jdx"), "not jcamp at all\n").unwrap();
    refused(
        d.path(),
        &d.path().join("out"),
        &["spektron", "corpus", "build", s(&inp)],
        &["in", "no usable spectrum"],
    );
}

#[test]
fn c3_nan_spectra_in_a_corpus_stop_pretraining() {
    pretrain_on_edited_corpus(
        "s = f['spectra'][...]; s[:, 5] = float('nan'); f['spectra'][...] = s",
        &["c.h5", "/spectra", "non-finite"],
    );
}

// ---------------------------------------------------------------------------------------------
// Class 4: run-level atomicity

#[test]
fn c4_unwritable_out_fails_before_computing_and_stale_parts_are_cleaned() {
    let d = tempfile::tempdir().unwrap();
    // --out below a regular file can never be created (root ignores permission bits).
    std::fs::write(d.path().join("file"), b"x").unwrap();
    let t0 = Instant::now();
    let r = spx_limited(
        d.path(),
        &[
            "-q",
            "--out",
            "file/sub",
            "--set",
            "ptycho.simulate.n_positions=100000",
            "ptycho",
            "simulate",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.lines().next().unwrap().contains("file/sub"),
        "{}",
        r.stderr
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "failed only after computing"
    );

    // A killed run's hidden temporaries (pid 0: never alive) are removed by the next run in
    // the same directory; other hidden files are not touched.
    let out = d.path().join("out");
    std::fs::create_dir_all(out.join(".spx-stage.0.abcdef")).unwrap();
    std::fs::write(out.join(".ptycho_sim.npz.0.AbCd12.part.npz"), b"half").unwrap();
    std::fs::write(out.join(".keep.part"), b"user").unwrap();
    ok(
        d.path(),
        &with_sets(
            &[
                "ptycho.simulate.n=16",
                "ptycho.simulate.object_size=40",
                "ptycho.simulate.plot=false",
            ],
            &[
                "-q",
                "--out",
                "out",
                "ptycho",
                "simulate",
                "--positions",
                "8",
            ],
        ),
    );
    let names: Vec<String> = listing(&out)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        names,
        vec![".keep.part", "ptycho_sim.npz", "spx-config.toml"],
        "{names:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Class 5: torn checkpoints

#[test]
fn c5_torn_checkpoint_and_missing_optimizer_are_refused() {
    let _rng = crate::common::burn_rng_lock();
    let d = tempfile::tempdir().unwrap();
    synth_corpus(d.path());
    let mut args = with_sets(TINY_MODEL, &["-q", "--out", "run"]);
    args.extend([
        "spektron", "pretrain", "--corpus", "c.h5", "--steps", "2", "--batch", "4",
    ]);
    ok(d.path(), &args);
    let ck = d.path().join("run/checkpoints");
    let last = ck.join("last");
    let resume = |extra: &[&str]| {
        let mut a = with_sets(TINY_MODEL, &[]);
        a.extend([
            "spektron", "pretrain", "--corpus", "c.h5", "--steps", "3", "--batch", "4", "--resume",
        ]);
        a.push(s(&last));
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    // The tear: state.json of step 1 beside step-2 weights.
    let good_state = std::fs::read(last.join("state.json")).unwrap();
    std::fs::copy(ck.join("step-0000001/state.json"), last.join("state.json")).unwrap();
    let r = resume(&[]);
    refused(
        d.path(),
        &d.path().join("run2"),
        &refs(&r),
        &["last/model.bpk", "torn or corrupt"],
    );
    // Step-1 weights under step-2 state.
    std::fs::write(last.join("state.json"), &good_state).unwrap();
    let good_model = std::fs::read(last.join("model.bpk")).unwrap();
    std::fs::copy(ck.join("step-0000001/model.bpk"), last.join("model.bpk")).unwrap();
    refused(
        d.path(),
        &d.path().join("run2"),
        &refs(&r),
        &["last/model.bpk", "torn or corrupt"],
    );
    std::fs::write(last.join("model.bpk"), &good_model).unwrap();
    // A checkpoint without optimizer state (and not claiming one): refused without
    // --reset-optimizer, accepted with it.
    std::fs::remove_file(last.join("optimizer.bpk")).unwrap();
    let mut st: serde_json::Value = serde_json::from_slice(&good_state).unwrap();
    st["checksum"]
        .as_object_mut()
        .unwrap()
        .remove("optimizer.bpk");
    std::fs::write(last.join("state.json"), serde_json::to_vec(&st).unwrap()).unwrap();
    refused(
        d.path(),
        &d.path().join("run2"),
        &refs(&r),
        &["optimizer.bpk", "--reset-optimizer"],
    );
    let r = resume(&["--reset-optimizer"]);
    let mut a = vec!["-q", "--out", "run2"];
    a.extend(refs(&r));
    ok(d.path(), &a);
    assert!(
        d.path()
            .join("run2/checkpoints/step-0000003/model.bpk")
            .is_file()
    );
}

// ---------------------------------------------------------------------------------------------
// Class 6: resume where work is long

const PINN_SMALL: &[&str] = &[
    "ptycho.simulate.n=16",
    "ptycho.simulate.object_size=40",
    "ptycho.simulate.nlines=30",
    "ptycho.simulate.buffer=8",
    "ptycho.simulate.nphotons=1e6",
    "ptycho.simulate.plot=false",
    "ptycho.group.neighbor_count=4",
    "ptycho.pinn.nphotons=1e6",
    "ptycho.pinn.stitch_crop=8",
    "ptycho.pinn.model.filters_base=8",
    "ptycho.pinn.model.border_filters=4",
    "ptycho.pinn.train.early_stop_patience=0",
];

#[test]
fn c6_ptycho_train_killed_and_resumed_equals_uninterrupted() {
    let _rng = crate::common::burn_rng_lock();
    let d = tempfile::tempdir().unwrap();
    ok(
        d.path(),
        &with_sets(
            PINN_SMALL,
            &[
                "-q",
                "--out",
                "sim",
                "ptycho",
                "simulate",
                "--positions",
                "64",
            ],
        ),
    );
    let train = |out: &str, epochs: &str, resume: bool| {
        let mut a = with_sets(
            PINN_SMALL,
            &["-q", "--threads", "1", "--out", out, "ptycho", "train"],
        );
        a.extend(["--data", "sim/ptycho_sim.npz", "--epochs", epochs]);
        if resume {
            a.push("--resume");
        }
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    ok(d.path(), &refs(&train("a", "6", false)));

    // Kill a run once its checkpoint records 2 epochs, then resume it.
    let args = train("b", "6", false);
    let mut child = Command::new(env!("CARGO_BIN_EXE_spx"))
        .args(&args)
        .current_dir(d.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = d.path().join("b/checkpoint/state.json");
    let t0 = Instant::now();
    let mut killed = false;
    while t0.elapsed() < Duration::from_secs(300) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let done = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["epochs_done"].as_u64())
            .unwrap_or(0);
        if done >= 2 {
            child.kill().unwrap();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.wait();
    if killed {
        assert!(
            !d.path().join("b/model.bpk").exists(),
            "a killed run left model.bpk"
        );
    }
    ok(d.path(), &refs(&train("b", "6", true)));

    let hist = |dir: &str| -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(d.path().join(dir).join("history.json")).unwrap(),
        )
        .unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.as_object_mut().unwrap().remove("seconds");
                r
            })
            .collect()
    };
    assert_eq!(
        hist("a"),
        hist("b"),
        "resumed history differs (killed: {killed})"
    );
    assert_eq!(hist("a").len(), 6);
    assert_eq!(
        std::fs::read(d.path().join("a/model.bpk")).unwrap(),
        std::fs::read(d.path().join("b/model.bpk")).unwrap(),
        "resumed weights differ (killed: {killed})"
    );
    // The last epoch's optimizer state is written in a canonical layout: same state, same bytes.
    let opt = |dir: &str| std::fs::read(d.path().join(dir).join("checkpoint/optimizer.bpk"));
    assert_eq!(
        opt("a").unwrap(),
        opt("b").unwrap(),
        "resumed optimizer state differs (killed: {killed})"
    );
}

// ---------------------------------------------------------------------------------------------
// Class 7: data safety and paths

#[test]
fn c7_outputs_never_replace_inputs_or_escape_out() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    refused(
        d.path(),
        &out,
        &["ptycho", "simulate", "--name", "../escape.npz"],
        &["--name", "../escape.npz"],
    );
    assert!(!d.path().join("escape.npz").exists());
    // A raw scan that happens to be named like epie's output, read from and written to OUT.
    let f = out.join("epie_recon.npz");
    raw_npz(&f, 6, 8, 32);
    let before = std::fs::read(&f).unwrap();
    refused(
        d.path(),
        &out,
        &["ptycho", "epie", "--data", s(&f), "--iterations", "1"],
        &["epie_recon.npz", "refusing to write over the input"],
    );
    assert_eq!(std::fs::read(&f).unwrap(), before);

    // A property label from the data file cannot steer the output path.
    let data = d.path().join("corn");
    corn_dir(&data, &[("../../x", moisture)], false);
    let o2 = d.path().join("o2");
    ok(
        d.path(),
        &[
            &["-q", "--out", s(&o2)][..],
            &baselines_args(s(&data), "../../x"),
        ]
        .concat(),
    );
    let names = listing(&o2);
    assert!(
        names.iter().all(|p| p.components().count() == 1),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|p| p.to_str().unwrap() == "baselines_m5_mp6_.._.._x.csv"),
        "{names:?}"
    );
    assert_eq!(
        listing(d.path())
            .iter()
            .filter(|p| p.ends_with("x.csv"))
            .count(),
        0
    );
}

// ---------------------------------------------------------------------------------------------
// Class 8: directory walks

#[test]
fn c8_corpus_build_skips_symlink_loops_and_fifos() {
    let d = tempfile::tempdir().unwrap();
    let inp = d.path().join("in");
    let sub = inp.join("loop");
    std::fs::create_dir_all(&sub).unwrap();
    let rows: String = (0..50)
        .map(|i| format!("{},{}\n", 400 + i, ((i as f64) * 0.3).sin() + 1.5))
        .collect();
    std::fs::write(sub.join("one.csv"), format!("x,y\n{rows}")).unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(".", sub.join("self")).unwrap();
        std::os::unix::fs::symlink("..", sub.join("up")).unwrap();
        let fifo = sub.join("blocks.csv");
        let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(st.success());
    }
    let r = spx_limited(
        d.path(),
        &[
            "--json",
            "-q",
            "--out",
            "c.h5",
            "spektron",
            "corpus",
            "build",
            s(&inp),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["spectra"], 1, "{v}");
    assert_eq!(v["files_read"], 1, "{v}");
    if cfg!(unix) {
        let failed = v["files_failed"].to_string();
        assert!(
            failed.contains("blocks.csv") && failed.contains("FIFO"),
            "{failed}"
        );
        assert!(
            failed.contains("self") && failed.contains("symbolic link to a directory"),
            "{failed}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Class 9: messages

#[test]
fn c9_messages_name_the_field_once() {
    let d = tempfile::tempdir().unwrap();
    // clap used to say "unexpected argument '-5'".
    let r = spx_limited(
        d.path(),
        &["ptycho", "train", "--data", "x.npz", "--epochs", "-5"],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--epochs") && r.stderr.contains("`-5` is not a count"),
        "{}",
        r.stderr
    );
    // The OS error appears once.
    let r = spx_limited(
        d.path(),
        &[
            "-q",
            "--out",
            "o",
            "ptycho",
            "epie",
            "--data",
            "/nonexistent/x.npz",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.matches("No such file or directory").count(),
        1,
        "{}",
        r.stderr
    );

    // A UTF-8 BOM before the header is not part of the first column's name; a duplicated
    // column is refused by name.
    let data = d.path().join("corn");
    corn_dir(&data, &[("moisture", moisture)], true);
    ok(
        d.path(),
        &[
            &["-q", "--out", "b"][..],
            &baselines_args(s(&data), "moisture"),
        ]
        .concat(),
    );
    let data2 = d.path().join("corn2");
    corn_dir(
        &data2,
        &[("moisture", moisture), ("moisture", moisture)],
        false,
    );
    refused(
        d.path(),
        &d.path().join("out"),
        &baselines_args(s(&data2), "moisture"),
        &["corn_propvals.csv", "column `moisture`", "appears twice"],
    );
}

// ---------------------------------------------------------------------------------------------
// Class 10: byte determinism

#[test]
fn c10_baselines_bytes_do_not_depend_on_threads() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("corn");
    corn_dir(&data, &[("moisture", moisture)], false);
    for (t, o) in [("1", "t1"), ("2", "t2")] {
        ok(
            d.path(),
            &[
                &["-q", "--threads", t, "--out", o][..],
                &baselines_args(s(&data), "moisture"),
            ]
            .concat(),
        );
    }
    for ext in ["csv", "json", "md"] {
        let f = format!("baselines_m5_mp6_moisture.{ext}");
        assert_eq!(
            std::fs::read(d.path().join("t1").join(&f)).unwrap(),
            std::fs::read(d.path().join("t2").join(&f)).unwrap(),
            "{f} differs between --threads 1 and 2"
        );
    }
}

#[test]
fn c10_checkpoint_bytes_do_not_depend_on_the_output_path() {
    let _rng = crate::common::burn_rng_lock();
    let d = tempfile::tempdir().unwrap();
    synth_corpus(d.path());
    for o in ["r1", "somewhere/else/r2"] {
        let mut args = with_sets(TINY_MODEL, &["-q", "--threads", "1", "--out", o]);
        args.extend([
            "spektron", "pretrain", "--corpus", "c.h5", "--steps", "2", "--batch", "4",
        ]);
        ok(d.path(), &args);
    }
    // The weights and the step/loss log are byte-identical. optimizer.bpk holds the same
    // moments, but burn writes the AdamW record from a HashMap, so its tensor order (and with
    // it the checksum recorded in state.json) varies between processes.
    let last = |r: &str| d.path().join(r).join("checkpoints/last");
    assert_eq!(
        std::fs::read(last("r1").join("model.bpk")).unwrap(),
        std::fs::read(last("somewhere/else/r2").join("model.bpk")).unwrap(),
        "model.bpk differs between two identical runs"
    );
    let log = |r: &str| {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(last(r).join("state.json")).unwrap()).unwrap();
        (
            v["step"].clone(),
            v["log"].clone(),
            v["checksum"]["model.bpk"].clone(),
        )
    };
    assert_eq!(log("r1"), log("somewhere/else/r2"));
}
