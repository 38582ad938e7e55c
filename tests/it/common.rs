//! Helpers shared by the integration tests.

use std::process::Command;

/// Run the `spx` binary; returns (exit code, stdout, stderr).
#[allow(dead_code)]
pub fn spx(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spx"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run the `spx` binary in `dir`, asserting success (stderr in the failure message); returns
/// its output.
#[allow(dead_code)]
pub fn spx_ok_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let o = Command::new(env!("CARGO_BIN_EXE_spx"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Largest |a_i − b_i| (f32 or f64 slices of the same length).
#[allow(dead_code)]
pub fn max_abs_diff<T: Copy + Into<f64>>(a: &[T], b: &[T]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(&u, &v)| (u.into() - v.into()).abs())
        .fold(0.0, f64::max)
}

static BURN_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// burn's device seed is process-global: tests that seed it and then initialise a model hold
/// this lock, so a test running in parallel cannot draw from (or reseed) the generator between.
#[allow(dead_code)]
pub fn burn_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    BURN_RNG.lock().unwrap_or_else(|e| e.into_inner())
}
