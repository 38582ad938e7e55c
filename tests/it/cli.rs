//! The `spx` binary end to end: global flags, config show, device, demo.

use crate::common::spx;

#[test]
fn config_show_applies_file_set_and_flags_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "[run]\nseed = 7\nthreads = 4\n").unwrap();
    let fs = f.to_str().unwrap();
    let (code, out, err) = spx(&[
        "config",
        "show",
        "--config",
        fs,
        "--set",
        "run.threads=2",
        "--seed",
        "11",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("seed = 11"), "{out}");
    assert!(out.contains("threads = 2"), "{out}");

    let (code, out, _) = spx(&["config", "show", "run", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["run"]["seed"], 42);
}

#[test]
fn config_errors_name_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("typo.toml");
    std::fs::write(&f, "[run]\nthread = 4\n").unwrap();
    let (code, _, err) = spx(&["config", "show", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("typo.toml") && err.contains("run.thread"),
        "{err}"
    );
}

#[test]
fn device_cpu_self_check_json() {
    let (code, out, err) = spx(&["device", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["passed"], true);
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["matmul", "autodiff_grad", "cfft"]);
}

#[test]
fn uncompiled_backend_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    let (code, _, err) = spx(&["device", "--device", "cuda:0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--features cuda"), "{err}");
    let (code, _, err) = spx(&["device", "--device", "tpu"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown device `tpu`"), "{err}");
}

#[test]
fn demo_writes_every_format_and_the_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = spx(&[
        "demo",
        "--out",
        dir.path().to_str().unwrap(),
        "--json",
        "--seed",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // Plane wave (6, 3) cycles → fftshifted peak at row 32 ± 3, col 32 ± 6.
    let peak = v["power_peak_bin"].as_array().unwrap();
    let (r, c) = (peak[0].as_i64().unwrap(), peak[1].as_i64().unwrap());
    assert!(matches!((r, c), (35, 38) | (29, 26)), "peak at {r},{c}");
    let demo = dir.path().join("demo");
    for f in [
        "spectrum.png",
        "field.png",
        "demo.fits",
        "demo.npz",
        "demo.h5",
        "spx-config.toml",
    ] {
        assert!(demo.join(f).exists(), "{f} missing");
    }
    let cfg = std::fs::read_to_string(demo.join("spx-config.toml")).unwrap();
    assert!(cfg.contains("seed = 3"), "{cfg}");
}
