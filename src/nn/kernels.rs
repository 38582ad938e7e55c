//! f32 stride-1 convolution kernels on contiguous NCHW slices: im2col (zero or reflect padding
//! fused into the gather) + one GEMM with the batch folded into the GEMM's N dimension, and the
//! backward as one GEMM for the weight gradient and one GEMM + col2im for the input gradient.
//!
//! A 1-D conv is the 2-D one with `h = 1`, `kh = 1` and no vertical padding.
//!
//! Layouts (all row-major):
//! - `x` `[n, cin, h, w]`, `weight` `[cout, cin, kh, kw]`, output `[n, cout, ho, wo]`;
//! - `cols` `[cin·kh·kw, n·ho·wo]`: row `(c, ky, kx)`, column `(b, oy, ox)` holds the padded
//!   input at `(b, c, oy + ky − pt, ox + kx − pl)`.
//!
//! Forward `out[co, (b,p)] = W[co, :] · cols[:, (b,p)]`; weight gradient
//! `dW = G[co, (b,p)] · colsᵀ`; input gradient `dcols = Wᵀ · G`, then col2im adds every entry of
//! `dcols` back to the input pixel it was gathered from (for reflect padding, the mirrored pixel).

use rayon::prelude::*;

/// How the border outside the input is filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    /// Zeros (burn's and PyTorch's default).
    Zero,
    /// Mirror without repeating the edge sample (`x[-1] = x[1]`), as `torch.nn.ReflectionPad`.
    Reflect,
}

/// Sizes of one stride-1, dilation-1, ungrouped convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    /// Padding (top, bottom, left, right).
    pub pad: [usize; 4],
    pub mode: PadMode,
}

impl ConvGeom {
    pub fn ho(&self) -> usize {
        (self.h + self.pad[0] + self.pad[1] + 1).saturating_sub(self.kh)
    }
    pub fn wo(&self) -> usize {
        (self.w + self.pad[2] + self.pad[3] + 1).saturating_sub(self.kw)
    }
    /// Rows of `cols`: `cin·kh·kw`.
    pub fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    /// Output pixels per sample and channel.
    pub fn l(&self) -> usize {
        self.ho() * self.wo()
    }
    /// Multiply-adds of the forward (= of each gradient): `n·cout·cin·kh·kw·ho·wo`.
    pub fn macs(&self) -> usize {
        self.batch * self.cout * self.k() * self.l()
    }

    /// Why these sizes cannot be convolved, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        let [pt, pb, pl, pr] = self.pad;
        if self.batch == 0 || self.cin == 0 || self.cout == 0 || self.kh == 0 || self.kw == 0 {
            return Err(format!("empty convolution {self:?}"));
        }
        if self.h + pt + pb < self.kh || self.w + pl + pr < self.kw {
            return Err(format!(
                "kernel {}×{} larger than the padded input {}×{}",
                self.kh,
                self.kw,
                self.h + pt + pb,
                self.w + pl + pr
            ));
        }
        if self.mode == PadMode::Reflect
            && (pt.max(pb) >= self.h.max(1) || pl.max(pr) >= self.w.max(1))
        {
            return Err(format!(
                "reflect padding {:?} must be smaller than the input {}×{}",
                self.pad, self.h, self.w
            ));
        }
        Ok(())
    }

    fn is_identity_gather(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.pad == [0; 4] && self.batch == 1
    }
}

/// For one kernel offset along one axis: the input index each output index reads, `None` where
/// it reads zero padding; plus the interior range `[lo, hi)` where input = output + shift.
struct AxisMap {
    src: Vec<Option<usize>>,
    lo: usize,
    hi: usize,
    /// input index of output `lo` (valid when `lo < hi`).
    base: usize,
}

fn axis_maps(len_in: usize, pad_lo: usize, k: usize, len_out: usize, mode: PadMode) -> Vec<AxisMap> {
    (0..k)
        .map(|kk| {
            let src: Vec<Option<usize>> = (0..len_out)
                .map(|o| {
                    let i = o as isize + kk as isize - pad_lo as isize;
                    let n = len_in as isize;
                    if (0..n).contains(&i) {
                        Some(i as usize)
                    } else {
                        match mode {
                            PadMode::Zero => None,
                            PadMode::Reflect => {
                                let r = if i < 0 { -i } else { 2 * (n - 1) - i };
                                Some(r.clamp(0, n - 1) as usize)
                            }
                        }
                    }
                })
                .collect();
            // interior: 0 <= o + kk - pad_lo < len_in
            let lo = pad_lo.saturating_sub(kk).min(len_out);
            let hi = (len_in + pad_lo).saturating_sub(kk).clamp(lo, len_out);
            let base = (lo + kk).saturating_sub(pad_lo);
            AxisMap { src, lo, hi, base }
        })
        .collect()
}

struct Maps {
    y: Vec<AxisMap>,
    x: Vec<AxisMap>,
}

impl Maps {
    fn new(g: &ConvGeom) -> Self {
        Maps {
            y: axis_maps(g.h, g.pad[0], g.kh, g.ho(), g.mode),
            x: axis_maps(g.w, g.pad[2], g.kw, g.wo(), g.mode),
        }
    }
}

/// Fill `cols` `[k, batch·l]` from `x` `[batch, cin, h, w]`; rows in parallel.
pub fn im2col(x: &[f32], g: &ConvGeom, cols: &mut [f32]) {
    let (l, wo, hw) = (g.l(), g.wo(), g.h * g.w);
    assert_eq!(x.len(), g.batch * g.cin * hw, "im2col: input size");
    assert_eq!(cols.len(), g.k() * g.batch * l, "im2col: cols size");
    let maps = Maps::new(g);
    let khw = g.kh * g.kw;
    cols.par_chunks_mut(g.batch * l)
        .enumerate()
        .for_each(|(r, row)| {
            let (c, ky, kx) = (r / khw, (r % khw) / g.kw, r % g.kw);
            let (my, mx) = (&maps.y[ky], &maps.x[kx]);
            for b in 0..g.batch {
                let plane = &x[(b * g.cin + c) * hw..][..hw];
                let dst = &mut row[b * l..][..l];
                for (oy, d) in dst.chunks_exact_mut(wo).enumerate() {
                    let Some(iy) = my.src[oy] else {
                        d.fill(0.0);
                        continue;
                    };
                    let srow = &plane[iy * g.w..][..g.w];
                    for ox in (0..mx.lo).chain(mx.hi..wo) {
                        d[ox] = mx.src[ox].map_or(0.0, |ix| srow[ix]);
                    }
                    let n = mx.hi - mx.lo;
                    d[mx.lo..mx.hi].copy_from_slice(&srow[mx.base..mx.base + n]);
                }
            }
        });
}

/// Add `dcols` `[k, batch·l]` back into `dx` `[batch, cin, h, w]` (overwritten); one task per
/// input plane, so no two tasks write the same pixel.
pub fn col2im(dcols: &[f32], g: &ConvGeom, dx: &mut [f32]) {
    let (l, wo, hw) = (g.l(), g.wo(), g.h * g.w);
    assert_eq!(dx.len(), g.batch * g.cin * hw, "col2im: input size");
    assert_eq!(dcols.len(), g.k() * g.batch * l, "col2im: cols size");
    let maps = Maps::new(g);
    let nl = g.batch * l;
    dx.par_chunks_mut(hw).enumerate().for_each(|(bc, plane)| {
        let (b, c) = (bc / g.cin, bc % g.cin);
        plane.fill(0.0);
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = (c * g.kh + ky) * g.kw + kx;
                let src = &dcols[r * nl + b * l..][..l];
                let (my, mx) = (&maps.y[ky], &maps.x[kx]);
                for (oy, s) in src.chunks_exact(wo).enumerate() {
                    let Some(iy) = my.src[oy] else { continue };
                    let drow = &mut plane[iy * g.w..][..g.w];
                    for ox in (0..mx.lo).chain(mx.hi..wo) {
                        if let Some(ix) = mx.src[ox] {
                            drow[ix] += s[ox];
                        }
                    }
                    let n = mx.hi - mx.lo;
                    for (d, v) in drow[mx.base..mx.base + n].iter_mut().zip(&s[mx.lo..mx.hi]) {
                        *d += v;
                    }
                }
            }
        }
    });
}

/// A strided f32 matrix operand: element `(i, j)` at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        Mat {
            data,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major `[rows, cols]` matrix.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: cols,
        }
    }
    fn fits(&self, m: usize, n: usize) -> bool {
        m == 0 || n == 0 || (m - 1) * self.rs + (n - 1) * self.cs < self.data.len()
    }
}

/// `dst[m, n] (row-major) = (accumulate ? dst : 0) + lhs[m, k] · rhs[k, n]` with the `gemm`
/// crate; multithreaded through rayon when the product is large enough to pay for it.
pub fn gemm(m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, lhs: Mat, rhs: Mat) {
    assert!(dst.len() >= m * n, "gemm: dst too small");
    assert!(lhs.fits(m, k) && rhs.fits(k, n), "gemm: operand too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 && m * n * k >= 48 * 48 * 48 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the product touches is in bounds (checked above: dst holds m·n
    // row-major, lhs/rhs hold their largest strided index) and dst does not alias lhs or rhs
    // (it is a distinct &mut borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Forward: `out` `[batch, cout, ho, wo]` from `x`, `weight` `[cout, k]` and `bias` `[cout]`.
pub fn conv_forward(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
    let (k, l, co) = (g.k(), g.l(), g.cout);
    assert_eq!(weight.len(), co * k, "conv_forward: weight size");
    let owned;
    let cols: &[f32] = if g.is_identity_gather() {
        x
    } else {
        owned = {
            let mut c = vec![0.0; k * g.batch * l];
            im2col(x, g, &mut c);
            c
        };
        &owned
    };
    let nl = g.batch * l;
    let wmat = Mat::row_major(weight, k);
    let cmat = Mat::row_major(cols, nl);
    if g.batch == 1 {
        let mut out = match bias {
            Some(b) => b.iter().flat_map(|&v| std::iter::repeat_n(v, l)).collect(),
            None => vec![0.0; co * l],
        };
        gemm(co, l, k, &mut out, bias.is_some(), wmat, cmat);
        return out;
    }
    let mut tmp = vec![0.0; co * nl];
    gemm(co, nl, k, &mut tmp, false, wmat, cmat);
    let mut out = vec![0.0; g.batch * co * l];
    out.par_chunks_mut(l).enumerate().for_each(|(bc, o)| {
        let (b, c) = (bc / co, bc % co);
        let s = &tmp[c * nl + b * l..][..l];
        let bv = bias.map_or(0.0, |bb| bb[c]);
        for (d, v) in o.iter_mut().zip(s) {
            *d = v + bv;
        }
    });
    out
}

/// Gradients of one convolution; `None` where not asked for.
pub struct ConvGrads {
    pub x: Option<Vec<f32>>,
    pub weight: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
}

/// Which gradients to compute.
#[derive(Clone, Copy, Debug)]
pub struct Need {
    pub x: bool,
    pub weight: bool,
    pub bias: bool,
}

/// Backward of [`conv_forward`] for the output gradient `gout` `[batch, cout, ho, wo]`.
pub fn conv_backward(x: &[f32], weight: &[f32], gout: &[f32], g: &ConvGeom, need: Need) -> ConvGrads {
    let (k, l, co) = (g.k(), g.l(), g.cout);
    let nl = g.batch * l;
    assert_eq!(gout.len(), co * nl, "conv_backward: output gradient size");
    assert_eq!(weight.len(), co * k, "conv_backward: weight size");
    // G as [cout, batch·l]
    let owned_g;
    let gm: &[f32] = if g.batch == 1 {
        gout
    } else {
        let mut t = vec![0.0; co * nl];
        t.par_chunks_mut(nl).enumerate().for_each(|(c, row)| {
            for (b, d) in row.chunks_exact_mut(l).enumerate() {
                d.copy_from_slice(&gout[(b * co + c) * l..][..l]);
            }
        });
        owned_g = t;
        &owned_g
    };
    let bias = need.bias.then(|| {
        gm.par_chunks(nl)
            .map(|r| r.iter().map(|&v| v as f64).sum::<f64>() as f32)
            .collect()
    });
    let gmat = Mat::row_major(gm, nl);
    let weight_grad = need.weight.then(|| {
        let owned;
        let cols: &[f32] = if g.is_identity_gather() {
            x
        } else {
            owned = {
                let mut c = vec![0.0; k * nl];
                im2col(x, g, &mut c);
                c
            };
            &owned
        };
        let mut dw = vec![0.0; co * k];
        gemm(co, k, nl, &mut dw, false, gmat, Mat::transposed(cols, nl));
        dw
    });
    let x_grad = need.x.then(|| {
        let wt = Mat::transposed(weight, k);
        if g.is_identity_gather() {
            let mut dx = vec![0.0; k * nl];
            gemm(k, nl, co, &mut dx, false, wt, gmat);
            return dx;
        }
        let mut dcols = vec![0.0; k * nl];
        gemm(k, nl, co, &mut dcols, false, wt, gmat);
        let mut dx = vec![0.0; g.batch * g.cin * g.h * g.w];
        col2im(&dcols, g, &mut dx);
        dx
    });
    ConvGrads {
        x: x_grad,
        weight: weight_grad,
        bias,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The literal definition, in f64.
    fn naive(x: &[f32], w: &[f32], b: &[f32], g: &ConvGeom) -> Vec<f64> {
        let (ho, wo) = (g.ho(), g.wo());
        let src = |i: isize, n: usize, pad: usize| -> Option<usize> {
            let i = i - pad as isize;
            let n = n as isize;
            if (0..n).contains(&i) {
                Some(i as usize)
            } else if g.mode == PadMode::Reflect {
                Some(if i < 0 { -i } else { 2 * (n - 1) - i } as usize)
            } else {
                None
            }
        };
        let mut out = vec![0.0; g.batch * g.cout * ho * wo];
        for bb in 0..g.batch {
            for co in 0..g.cout {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut s = b[co] as f64;
                        for c in 0..g.cin {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let (Some(iy), Some(ix)) = (
                                        src((oy + ky) as isize, g.h, g.pad[0]),
                                        src((ox + kx) as isize, g.w, g.pad[2]),
                                    ) else {
                                        continue;
                                    };
                                    s += w[((co * g.cin + c) * g.kh + ky) * g.kw + kx] as f64
                                        * x[((bb * g.cin + c) * g.h + iy) * g.w + ix] as f64;
                                }
                            }
                        }
                        out[((bb * g.cout + co) * ho + oy) * wo + ox] = s;
                    }
                }
            }
        }
        out
    }

    fn rand_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn geoms() -> Vec<ConvGeom> {
        let mut v = vec![];
        for (batch, cin, h, w, cout, kh, kw, pad, mode) in [
            (2, 3, 5, 6, 4, 3, 3, [1, 1, 1, 1], PadMode::Zero),
            (1, 4, 4, 4, 2, 3, 3, [1, 1, 1, 1], PadMode::Zero),
            (3, 2, 1, 9, 3, 1, 5, [0, 0, 2, 2], PadMode::Reflect),
            (1, 2, 1, 7, 3, 1, 3, [0, 0, 1, 1], PadMode::Reflect),
            (1, 5, 1, 8, 1, 1, 1, [0, 0, 0, 0], PadMode::Zero),
            (2, 3, 4, 5, 2, 2, 3, [0, 1, 2, 0], PadMode::Zero),
            (2, 2, 3, 4, 3, 3, 3, [1, 1, 2, 2], PadMode::Reflect),
        ] {
            v.push(ConvGeom {
                batch,
                cin,
                h,
                w,
                cout,
                kh,
                kw,
                pad,
                mode,
            });
        }
        v
    }

    #[test]
    fn forward_matches_the_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for g in geoms() {
            g.check().unwrap();
            let x = rand_vec(&mut rng, g.batch * g.cin * g.h * g.w);
            let w = rand_vec(&mut rng, g.cout * g.k());
            let b = rand_vec(&mut rng, g.cout);
            let got = conv_forward(&x, &w, Some(&b), &g);
            let want = naive(&x, &w, &b, &g);
            assert_eq!(got.len(), want.len());
            for (a, e) in got.iter().zip(&want) {
                assert!((*a as f64 - e).abs() < 1e-5, "{g:?}: {a} vs {e}");
            }
        }
    }

    /// The backward is the adjoint of the forward: <G, conv(x)> = <dx, x> (bias-free, linear in x)
    /// and = <dW, W> (linear in W); the bias gradient is Σ G per channel.
    #[test]
    fn backward_is_the_adjoint() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for g in geoms() {
            let x = rand_vec(&mut rng, g.batch * g.cin * g.h * g.w);
            let w = rand_vec(&mut rng, g.cout * g.k());
            let gout = rand_vec(&mut rng, g.batch * g.cout * g.l());
            let y = conv_forward(&x, &w, None, &g);
            let lhs: f64 = y.iter().zip(&gout).map(|(a, b)| *a as f64 * *b as f64).sum();
            let need = Need {
                x: true,
                weight: true,
                bias: true,
            };
            let gr = conv_backward(&x, &w, &gout, &g, need);
            let dot = |a: &[f32], b: &[f32]| -> f64 {
                a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum()
            };
            let via_x = dot(gr.x.as_ref().unwrap(), &x);
            let via_w = dot(gr.weight.as_ref().unwrap(), &w);
            assert!((lhs - via_x).abs() < 1e-4 * (1.0 + lhs.abs()), "{g:?} {lhs} {via_x}");
            assert!((lhs - via_w).abs() < 1e-4 * (1.0 + lhs.abs()), "{g:?} {lhs} {via_w}");
            let gb = gr.bias.unwrap();
            for c in 0..g.cout {
                let s: f64 = (0..g.batch)
                    .flat_map(|b| &gout[(b * g.cout + c) * g.l()..][..g.l()])
                    .map(|&v| v as f64)
                    .sum();
                assert!((gb[c] as f64 - s).abs() < 1e-4, "{g:?} bias {c}");
            }
        }
    }

    #[test]
    fn reflect_padding_mirrors_without_repeating_the_edge() {
        // x = [1, 2, 3], k = 3 all-ones, reflect pad 1 → padded [2,1,2,3,2]
        let g = ConvGeom {
            batch: 1,
            cin: 1,
            h: 1,
            w: 3,
            cout: 1,
            kh: 1,
            kw: 3,
            pad: [0, 0, 1, 1],
            mode: PadMode::Reflect,
        };
        let y = conv_forward(&[1.0, 2.0, 3.0], &[1.0; 3], None, &g);
        assert_eq!(y, vec![5.0, 6.0, 8.0]);
        let gr = conv_backward(
            &[1.0, 2.0, 3.0],
            &[1.0; 3],
            &[1.0; 3],
            &g,
            Need {
                x: true,
                weight: true,
                bias: false,
            },
        );
        // padded column 0 (x[1]) feeds output 0; padded 4 (x[1]) feeds output 2
        assert_eq!(gr.x.unwrap(), vec![1.0, 4.0, 1.0]);
        // dW[kx] = Σ_o padded[o + kx] = [2+1+2, 1+2+3, 2+3+2]
        assert_eq!(gr.weight.unwrap(), vec![5.0, 6.0, 7.0]);
    }

    #[test]
    fn bad_geometry_is_reported() {
        let g = ConvGeom {
            batch: 1,
            cin: 1,
            h: 1,
            w: 2,
            cout: 1,
            kh: 1,
            kw: 5,
            pad: [0, 0, 2, 2],
            mode: PadMode::Reflect,
        };
        assert!(g.check().is_err());
    }
}
