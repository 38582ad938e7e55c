//! Differentiable ptychographic forward model on burn tensors (PtychoPINN `ProbeIllumination`,
//! `pad_and_diffract`, `ReassemblePatchesLayer`, `ExtractPatchesPositionLayer`).
//!
//! Complex fields are carried as `(re, im)` tensor pairs (burn 0.22 has no complex dtype).
//! Sub-pixel translations with zero fill are separable bilinear maps, so pad → translate →
//! crop is written as `Ry · O · Rxᵀ` with small host-built matrices: differentiable through
//! `matmul`, per group and per channel (never mixing groups of a batch).

use burn::signal::cfft;
use burn::tensor::{Device, Tensor};

use crate::backend::tensor_from;

/// A complex tensor as a `(re, im)` pair.
#[derive(Clone, Debug)]
pub struct Cplx<const D: usize> {
    pub re: Tensor<D>,
    pub im: Tensor<D>,
}

impl<const D: usize> Cplx<D> {
    pub fn new(re: Tensor<D>, im: Tensor<D>) -> Self {
        Cplx { re, im }
    }

    /// Elementwise complex product (broadcasting like the real ops).
    pub fn cmul(self, o: Cplx<D>) -> Cplx<D> {
        let re = self.re.clone() * o.re.clone() - self.im.clone() * o.im.clone();
        let im = self.re * o.im + self.im * o.re;
        Cplx { re, im }
    }

    /// `A·exp(iφ)`.
    pub fn from_polar(amp: Tensor<D>, phase: Tensor<D>) -> Cplx<D> {
        Cplx {
            re: amp.clone() * phase.clone().cos(),
            im: amp * phase.sin(),
        }
    }

    pub fn abs2(self) -> Tensor<D> {
        self.re.powi_scalar(2) + self.im.powi_scalar(2)
    }
}

/// `sqrt(fftshift(|FFT2 ψ|²) / N²)` over the last two dims of `ψ` (N×N, N a power of two).
/// A tiny floor inside the square root keeps the gradient finite where the intensity is 0.
pub fn diffract_amplitude<const D: usize>(psi: Cplx<D>) -> Tensor<D> {
    let dims = psi.re.dims();
    let (h, w) = (dims[D - 2], dims[D - 1]);
    let (re, im) = cfft(psi.re, psi.im, D - 1, None);
    let (re, im) = cfft(re, im, D - 2, None);
    let power = (re.powi_scalar(2) + im.powi_scalar(2)) / ((h * w) as f64);
    let shifted = power.roll(&[(h / 2) as i64, (w / 2) as i64], &[D - 2, D - 1]);
    (shifted + 1e-12).sqrt()
}

/// `ψ = P·O` then the far-field amplitude; `probe` is N×N and broadcasts over leading dims.
pub fn forward_amplitude(probe: &Cplx<4>, obj: Cplx<4>) -> Tensor<4> {
    diffract_amplitude(obj.cmul(probe.clone()))
}

/// The 1-D linear map `out[i] = in[i − t]` (linear interpolation, zero fill) from a length
/// `n_in` signal placed at offset `pad_in` on a canvas, onto an output window of length
/// `n_out` starting at canvas index `start_out`. Row-major `n_out × n_in`.
pub fn shift_matrix(n_out: usize, n_in: usize, pad_in: f64, start_out: f64, t: f64) -> Vec<f32> {
    let mut m = vec![0f32; n_out * n_in];
    for i in 0..n_out {
        // canvas coordinate of output sample i, then source coordinate on the input
        let s = start_out + i as f64 - t - pad_in;
        let f = s.floor();
        let a = s - f;
        let f = f as i64;
        for (j, wgt) in [(f, 1.0 - a), (f + 1, a)] {
            if j >= 0 && (j as usize) < n_in && wgt != 0.0 {
                m[i * n_in + j as usize] += wgt as f32;
            }
        }
    }
    m
}

/// Host-built merge/extract matrices for a batch of groups (PtychoPINN constraint map).
#[derive(Clone, Debug)]
pub struct GroupGeometry {
    /// `[B, C, P, N]`: rows of `T(−r_k)[Pad(O_k)]`.
    pub merge_y: Tensor<4>,
    /// `[B, C, N, P]`: transposed column map of the same.
    pub merge_xt: Tensor<4>,
    /// `[B, C, N, P]`: rows of `crop_N(T(+r_k)[region])`.
    pub extract_y: Tensor<4>,
    /// `[B, C, P, N]`.
    pub extract_xt: Tensor<4>,
    /// `[B, 1, P, P]`: `1 / (Σ_k T(−r_k)[Pad(centre ones)] + 1e-3)`.
    pub inv_norm: Tensor<4>,
    pub n: usize,
    pub padded: usize,
}

impl GroupGeometry {
    /// `rel[b][k] = (dx, dy)`: coords_relative of channel k in group b (x = column, y = row).
    pub fn new(rel: &[Vec<(f64, f64)>], n: usize, padded: usize, device: &Device) -> Self {
        let b = rel.len();
        let c = rel.first().map_or(1, |r| r.len());
        let pad = ((padded - n) / 2) as f64;
        let (mut my, mut mxt, mut ey, mut ext) = (vec![], vec![], vec![], vec![]);
        let mut norm = vec![0f64; b * padded * padded];
        let centre_lo = n / 4;
        let centre_hi = n / 4 + n / 2;
        for (g, group) in rel.iter().enumerate() {
            assert_eq!(group.len(), c, "GroupGeometry: ragged channel count");
            for &(dx, dy) in group {
                // merge: input N at canvas offset `pad`, translated by −r, output whole canvas
                let ry = shift_matrix(padded, n, pad, 0.0, -dy);
                let rx = shift_matrix(padded, n, pad, 0.0, -dx);
                // norm: the same map applied to the centre N/2 ones
                for i in 0..padded {
                    let sy: f64 = (centre_lo..centre_hi).map(|j| ry[i * n + j] as f64).sum();
                    if sy == 0.0 {
                        continue;
                    }
                    for jx in 0..padded {
                        let sx: f64 = (centre_lo..centre_hi).map(|j| rx[jx * n + j] as f64).sum();
                        norm[(g * padded + i) * padded + jx] += sy * sx;
                    }
                }
                my.extend_from_slice(&ry);
                mxt.extend(transpose(&rx, padded, n));
                // extract: canvas translated by +r, output the centre N window
                let ey_k = shift_matrix(n, padded, 0.0, pad, dy);
                let ex_k = shift_matrix(n, padded, 0.0, pad, dx);
                ey.extend_from_slice(&ey_k);
                ext.extend(transpose(&ex_k, n, padded));
            }
        }
        let inv: Vec<f32> = norm.iter().map(|v| (1.0 / (v + 1e-3)) as f32).collect();
        GroupGeometry {
            merge_y: tensor_from(my, [b, c, padded, n], device),
            merge_xt: tensor_from(mxt, [b, c, n, padded], device),
            extract_y: tensor_from(ey, [b, c, n, padded], device),
            extract_xt: tensor_from(ext, [b, c, padded, n], device),
            inv_norm: tensor_from(inv, [b, 1, padded, padded], device),
            n,
            padded,
        }
    }

    /// Merge the C patches of each group into its region, then return the region's centre
    /// N×N crop (`trimmed_obj`, `[B,1,N,N]`) and the re-extracted patches (`[B,C,N,N]`).
    pub fn merge_extract(&self, obj: Cplx<4>) -> (Cplx<4>, Cplx<4>) {
        let merge = |t: Tensor<4>| -> Tensor<4> {
            let per = self.merge_y.clone().matmul(t).matmul(self.merge_xt.clone());
            per.sum_dim(1) * self.inv_norm.clone()
        };
        let region = Cplx::new(merge(obj.re), merge(obj.im));
        let lo = (self.padded - self.n) / 2;
        let hi = lo + self.n;
        let trim = |t: Tensor<4>| {
            let b = t.dims()[0];
            t.slice([0..b, 0..1, lo..hi, lo..hi])
        };
        let trimmed = Cplx::new(trim(region.re.clone()), trim(region.im.clone()));
        let extract = |t: Tensor<4>| -> Tensor<4> {
            self.extract_y
                .clone()
                .matmul(t)
                .matmul(self.extract_xt.clone())
        };
        let c = self.extract_y.dims()[1];
        let patches = Cplx::new(
            extract(region.re.repeat_dim(1, c)),
            extract(region.im.repeat_dim(1, c)),
        );
        (trimmed, patches)
    }
}

fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// `padded_size = N + (gridsize − 1)·offset + max_position_jitter` (PtychoPINN defaults 4, 10),
/// rounded up to keep `(P − N)` even so padding is symmetric.
pub fn padded_size(n: usize, gridsize: usize) -> usize {
    let p = n + (gridsize.saturating_sub(1)) * 4 + 10;
    p + (p - n) % 2
}
