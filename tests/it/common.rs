//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Address-space limit for every hostile run.
pub const AS_LIMIT: &str = "1000000000";

#[allow(dead_code)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run spx under the address-space limit (when `prlimit` exists) with a wall-clock limit, so
/// a hang fails the test instead of stalling the suite.
#[allow(dead_code)]
pub fn spx_limited(cwd: &Path, args: &[&str], timeout: Duration) -> Run {
    let bin = env!("CARGO_BIN_EXE_spx");
    let mut cmd = if Path::new("/usr/bin/prlimit").exists() {
        let mut c = Command::new("/usr/bin/prlimit");
        c.arg(format!("--as={AS_LIMIT}")).arg("--").arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let mut child = cmd
        .args(args)
        .current_dir(cwd)
        // glibc reserves 64 MiB of address space per malloc arena; keep that out of the budget.
        .env("MALLOC_ARENA_MAX", "2")
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "spx {args:?} hung (> {timeout:?}); stderr: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Every file under `dir` (relative paths), hidden ones included.
#[allow(dead_code)]
pub fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

/// A refused run: exit 2 under the address-space limit, first stderr line names every `names`
/// item, no panic or abort text, nothing new in `out`. `args` are complete. Returns stderr.
#[allow(dead_code)]
pub fn refused_run(cwd: &Path, out: &Path, args: &[&str], names: &[&str]) -> String {
    let before = listing(out);
    let r = spx_limited(cwd, args, Duration::from_secs(120));
    let first = r.stderr.lines().next().unwrap_or("").to_string();
    assert_eq!(
        r.code, 2,
        "spx {args:?}: exit {}; stderr:\n{}",
        r.code, r.stderr
    );
    for bad in ["panicked", "memory allocation of", "RUST_BACKTRACE"] {
        assert!(
            !r.stderr.contains(bad),
            "spx {args:?}: {bad}:\n{}",
            r.stderr
        );
    }
    assert!(first.starts_with("error: "), "{first}");
    for n in names {
        assert!(first.contains(n), "first stderr line lacks `{n}`: {first}");
    }
    assert_eq!(listing(out), before, "spx {args:?} left files in --out");
    r.stderr
}
