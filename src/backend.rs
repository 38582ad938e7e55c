//! Device selection (cpu/wgpu/cuda), seeding and the device self-check.
//!
//! burn 0.22 dispatches on a runtime `Device`; every tensor routine in spx takes a `&Device`
//! and never names a backend type. The CPU device is burn's pure-Rust `flex` backend.

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::SpxError;

/// The working floating-point dtype of every tensor spx creates.
pub type Elem = f32;

/// A device as the user names it on the command line or in `[run] device`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum DeviceSpec {
    /// burn's `flex` CPU backend (always compiled in).
    Cpu,
    /// wgpu; `None` lets wgpu pick the best adapter, `Some(i)` the i-th discrete GPU.
    Wgpu(Option<usize>),
    /// CUDA device with the given index.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = SpxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => {
                let idx = i.parse::<usize>().map_err(|_| {
                    SpxError::Config(format!(
                        "device `{s}`: index `{i}` is not a non-negative integer"
                    ))
                })?;
                (n.to_string(), Some(idx))
            }
            None => (s.clone(), None),
        };
        match name.as_str() {
            "cpu" | "flex" => {
                if index.is_some() {
                    return Err(SpxError::Config(format!(
                        "device `{s}`: the cpu device takes no index"
                    )));
                }
                Ok(DeviceSpec::Cpu)
            }
            "wgpu" => Ok(DeviceSpec::Wgpu(index)),
            "cuda" => Ok(DeviceSpec::Cuda(index.unwrap_or(0))),
            _ => Err(SpxError::Config(format!(
                "unknown device `{s}`: expected cpu, wgpu[:N] or cuda[:N]"
            ))),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Wgpu(None) => write!(f, "wgpu"),
            DeviceSpec::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Backends compiled into this binary, in the order `spx device` lists them.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = vec!["cpu"];
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

/// Serde for a [`DeviceSpec`] as the string a user writes (`cpu`, `wgpu:1`, `cuda:0`): the form
/// `[run] device` has in config files, so the config is parsed once into a `DeviceSpec`.
pub mod device_str {
    use super::DeviceSpec;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(spec: &DeviceSpec, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(spec)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DeviceSpec, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl DeviceSpec {
    /// The name of the cargo feature / backend (`cpu`, `wgpu`, `cuda`).
    pub fn backend_name(&self) -> &'static str {
        match self {
            DeviceSpec::Cpu => "cpu",
            DeviceSpec::Wgpu(_) => "wgpu",
            DeviceSpec::Cuda(_) => "cuda",
        }
    }

    /// The burn device, without autodiff. Asking for a backend that is not compiled in is an
    /// error naming the cargo feature that adds it.
    pub fn device(&self) -> Result<Device, SpxError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::flex()),
            DeviceSpec::Wgpu(index) => wgpu_device(*index),
            DeviceSpec::Cuda(index) => cuda_device(*index),
        }
    }

    /// The same device with autodiff enabled, for training.
    pub fn autodiff_device(&self) -> Result<Device, SpxError> {
        Ok(self.device()?.autodiff())
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device(index: Option<usize>) -> Result<Device, SpxError> {
    use burn::tensor::DeviceKind;
    Ok(Device::wgpu(match index {
        None => DeviceKind::DefaultDevice,
        Some(i) => DeviceKind::DiscreteGpu(i),
    }))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device(_index: Option<usize>) -> Result<Device, SpxError> {
    Err(SpxError::BackendNotCompiled {
        device: "wgpu",
        feature: "wgpu",
    })
}

#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> Result<Device, SpxError> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_index: usize) -> Result<Device, SpxError> {
    Err(SpxError::BackendNotCompiled {
        device: "cuda",
        feature: "cuda",
    })
}

/// Keep freed tensor buffers in the process instead of handing them back to the kernel.
///
/// Training allocates and frees the same large activation and gradient buffers every step.
/// glibc serves blocks above its (dynamic) mmap threshold with `mmap` and returns trimmed heap
/// tops with `madvise`/`brk`, so every step faulted its buffers in again, zero-filled by the
/// kernel: 0.5–0.7 s of system time per 6 PtychoPINN steps (batch 16, N 64), ≈ 5–10 % of a
/// step. Here blocks up to 32 MiB (glibc's largest allowed threshold) come from the heap, the
/// heap is not trimmed below 1 GiB of free top, and it grows 64 MiB at a time: system time
/// 0.2 s for the same steps. Call once at start-up, before threads are spawned (the `spx`
/// binary does). Process-wide; a no-op outside glibc; peak memory is unchanged to within the
/// pad (the buffers are reused, not added).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        unsafe extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_TOP_PAD: c_int = -2;
        const M_MMAP_THRESHOLD: c_int = -3;
        // SAFETY: mallopt only changes glibc's allocation parameters; called before other
        // threads exist (and glibc takes its arena lock anyway).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
            mallopt(M_TOP_PAD, 64 << 20);
        }
    }
}

/// Seed burn's generator on `device` (used by module initialisers) and return a host RNG for
/// everything spx draws itself. Host-side draws are uploaded, so they do not depend on the
/// backend's generator and are identical on every device.
pub fn seeded(device: &Device, seed: u64) -> ChaCha8Rng {
    device.seed(seed);
    ChaCha8Rng::seed_from_u64(seed)
}

/// Build a float tensor from host data.
pub fn tensor_from<const D: usize>(
    values: Vec<Elem>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(values, shape), device)
}

/// Read a float tensor back to the host as f32.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<Elem> {
    t.into_data()
        .convert::<Elem>()
        .try_into_vec::<Elem>()
        .expect("tensor data converted to f32")
}

/// One check of the device self-test.
#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    /// Wall time of the operation on the device, synchronised, milliseconds.
    pub millis: f64,
    /// Max |device − closed form| over all outputs.
    pub max_abs_err_closed_form: f64,
    /// Max |device − CPU| over all outputs (0 when the device is the CPU).
    pub max_abs_diff_cpu: f64,
    /// Tolerance used for both comparisons (relative to the output's scale).
    pub tolerance: f64,
    pub passed: bool,
}

/// Outcome of `spx device`.
#[derive(Clone, Debug, Serialize)]
pub struct SelfCheck {
    pub device: String,
    pub compiled_backends: Vec<&'static str>,
    pub checks: Vec<CheckResult>,
    pub passed: bool,
}

/// Size of the self-check problems (kept small: the check must run in well under a second on CPU).
pub const CHECK_N: usize = 64;

/// Inputs and closed-form answers of the three self-check problems.
pub mod closed_form {
    use std::f64::consts::PI;

    /// A_ij = (i + j)/n, B_jk = (j − k)/n; C = AB has
    /// C_ik = [i·S1 − n·i·k + S2 − k·S1]/n² with S1 = Σj, S2 = Σj².
    pub fn matmul_inputs(n: usize) -> (Vec<f32>, Vec<f32>) {
        let mut a = vec![0f32; n * n];
        let mut b = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (i + j) as f32 / n as f32;
                b[i * n + j] = (i as f32 - j as f32) / n as f32;
            }
        }
        (a, b)
    }

    pub fn matmul_expected(n: usize) -> Vec<f64> {
        let nf = n as f64;
        let s1 = nf * (nf - 1.0) / 2.0;
        let s2 = (nf - 1.0) * nf * (2.0 * nf - 1.0) / 6.0;
        let mut c = vec![0f64; n * n];
        for i in 0..n {
            for k in 0..n {
                let (i, kf) = (i as f64, k as f64);
                c[i as usize * n + k] = (i * s1 - nf * i * kf + s2 - kf * s1) / (nf * nf);
            }
        }
        c
    }

    /// x_j = −2 + 4j/(n−1); loss = Σ sin(x)·x², ∂loss/∂x = cos(x)·x² + 2x·sin(x).
    pub fn grad_inputs(n: usize) -> Vec<f32> {
        (0..n)
            .map(|j| (-2.0 + 4.0 * j as f64 / (n as f64 - 1.0)) as f32)
            .collect()
    }

    pub fn grad_expected(x: &[f32]) -> Vec<f64> {
        x.iter()
            .map(|&x| {
                let x = x as f64;
                x.cos() * x * x + 2.0 * x * x.sin()
            })
            .collect()
    }

    /// Two complex tones: z_t = e^{2πi·k0·t/n} + 0.5·e^{−2πi·k1·t/n}.
    pub const K0: usize = 5;
    pub const K1: usize = 9;

    pub fn fft_inputs(n: usize) -> (Vec<f32>, Vec<f32>) {
        let (mut re, mut im) = (vec![0f32; n], vec![0f32; n]);
        for t in 0..n {
            let a0 = 2.0 * PI * (K0 * t) as f64 / n as f64;
            let a1 = -2.0 * PI * (K1 * t) as f64 / n as f64;
            re[t] = (a0.cos() + 0.5 * a1.cos()) as f32;
            im[t] = (a0.sin() + 0.5 * a1.sin()) as f32;
        }
        (re, im)
    }

    /// The DFT is n at bin k0, n/2 at bin n−k1, zero elsewhere; returned as (re, im).
    pub fn fft_expected(n: usize) -> (Vec<f64>, Vec<f64>) {
        let mut re = vec![0f64; n];
        re[K0] = n as f64;
        re[n - K1] += 0.5 * n as f64;
        (re, vec![0f64; n])
    }
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
}

fn max_abs_diff_f32(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, f64::max)
}

fn time_it<T>(device: &Device, f: impl FnOnce() -> T) -> (T, f64) {
    let t0 = Instant::now();
    let out = f();
    // Async backends return before the kernel ran; waiting makes the timing honest.
    let _ = device.sync();
    (out, t0.elapsed().as_secs_f64() * 1e3)
}

/// The three computations of the self-check; each returns its outputs flattened.
fn run_matmul(device: &Device, n: usize) -> Vec<f32> {
    let (a, b) = closed_form::matmul_inputs(n);
    let a = tensor_from(a, [n, n], device);
    let b = tensor_from(b, [n, n], device);
    to_vec(a.matmul(b))
}

fn run_grad(device: &Device, n: usize) -> Vec<f32> {
    let ad = device.clone().autodiff();
    let x = tensor_from(closed_form::grad_inputs(n), [n], &ad).require_grad();
    let loss = (x.clone().sin() * x.clone().powi_scalar(2)).sum();
    let grads = loss.backward();
    to_vec(x.grad(&grads).expect("x is a tracked leaf"))
}

fn run_cfft(device: &Device, n: usize) -> Vec<f32> {
    let (re, im) = closed_form::fft_inputs(n);
    let re = tensor_from(re, [n], device);
    let im = tensor_from(im, [n], device);
    let (fre, fim) = burn::signal::cfft(re, im, 0, None);
    let mut out = to_vec(fre);
    out.extend(to_vec(fim));
    out
}

/// Run matmul, one autodiff gradient and one complex FFT on `spec`, compare each with its closed
/// form and with the CPU result.
pub fn self_check(spec: &DeviceSpec) -> Result<SelfCheck, SpxError> {
    let device = spec.device()?;
    let cpu = Device::flex();
    let n = CHECK_N;
    let is_cpu = *spec == DeviceSpec::Cpu;

    type Runner = fn(&Device, usize) -> Vec<f32>;
    let (fft_re, fft_im) = closed_form::fft_expected(n);
    let fft_expected: Vec<f64> = fft_re.into_iter().chain(fft_im).collect();
    let problems: [(&'static str, Runner, Vec<f64>, f64); 3] = [
        (
            "matmul",
            run_matmul,
            closed_form::matmul_expected(n),
            n as f64,
        ),
        (
            "autodiff_grad",
            run_grad,
            closed_form::grad_expected(&closed_form::grad_inputs(n)),
            4.0,
        ),
        ("cfft", run_cfft, fft_expected, n as f64),
    ];

    let mut checks = Vec::new();
    for (name, run, expected, scale) in problems {
        // Warm-up: first use of a GPU kernel includes compilation, which is not what users time.
        let _ = run(&device, n);
        let (got, millis) = time_it(&device, || run(&device, n));
        let cpu_got = if is_cpu { got.clone() } else { run(&cpu, n) };
        let err = max_abs_diff(&got, &expected);
        let diff = max_abs_diff_f32(&got, &cpu_got);
        // f32 arithmetic over n terms of size `scale`: allow ~1e-4 relative.
        let tolerance = 1e-4 * scale;
        checks.push(CheckResult {
            name,
            millis,
            max_abs_err_closed_form: err,
            max_abs_diff_cpu: diff,
            tolerance,
            passed: err <= tolerance && diff <= tolerance && got.iter().all(|v| v.is_finite()),
        });
    }
    let passed = checks.iter().all(|c| c.passed);
    Ok(SelfCheck {
        device: spec.to_string(),
        compiled_backends: compiled_backends(),
        checks,
        passed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("CUDA:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(
            "wgpu".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Wgpu(None)
        );
        assert_eq!(
            "wgpu:2".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Wgpu(Some(2))
        );
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("cpu:1".parse::<DeviceSpec>().is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_backend_names_the_feature() {
        let err = DeviceSpec::Cuda(0).device().unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }

    #[test]
    fn matmul_closed_form_matches_naive_product() {
        let n = 7;
        let (a, b) = closed_form::matmul_inputs(n);
        let want = closed_form::matmul_expected(n);
        for i in 0..n {
            for k in 0..n {
                let s: f64 = (0..n)
                    .map(|j| a[i * n + j] as f64 * b[j * n + k] as f64)
                    .sum();
                assert!((s - want[i * n + k]).abs() < 1e-5);
            }
        }
    }
}
