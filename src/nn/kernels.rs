//! f32 stride-1 convolution kernels on contiguous NCHW slices: im2col (zero or reflect padding
//! fused into the gather) + GEMM, tiled over output pixels so each im2col tile stays in cache.
//!
//! A 1-D conv is the 2-D one with `h = 1`, `kh = 1` and no vertical padding.
//!
//! Layouts (all row-major):
//! - `x` `[n, cin, h, w]`, `weight` `[cout, cin, kh, kw]`, output `[n, cout, ho, wo]`;
//! - an im2col tile of output pixels `p0..p1` of sample `b` is `[cin·kh·kw, p1 − p0]`: row
//!   `(c, ky, kx)`, column `p = (oy, ox)` holds the padded input at `(b, c, oy + ky − pt,
//!   ox + kx − pl)`.
//!
//! Forward: `out[b, :, p0..p1] = W[cout, k] · tile` (one strided GEMM per tile, tiles in
//! parallel). Weight gradient: `dW = Σ_tiles G[b, :, p0..p1] · tileᵀ` (per-thread partial sums).
//! Input gradient: the transposed conv written as a forward conv of `G` with the flipped,
//! channel-swapped kernel ("full" padding); for reflect padding it yields the gradient of the
//! padded input, whose border is added back onto the pixels it mirrors.

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
        if pt.max(pb) >= self.kh || pl.max(pr) >= self.kw {
            return Err(format!(
                "padding {:?} not below the kernel {}×{}",
                self.pad, self.kh, self.kw
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

fn axis_maps(
    len_in: usize,
    pad_lo: usize,
    k: usize,
    len_out: usize,
    mode: PadMode,
) -> Vec<AxisMap> {
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

/// Gather the im2col tile of output pixels `[p0, p1)` of one sample: `tile` `[k, p1 − p0]`,
/// row `(c, ky, kx)`, from `xs` `[cin, h, w]` (that sample's planes).
fn gather_tile(xs: &[f32], g: &ConvGeom, maps: &Maps, p0: usize, p1: usize, tile: &mut [f32]) {
    let (wo, hw, np) = (g.wo(), g.h * g.w, p1 - p0);
    let khw = g.kh * g.kw;
    for (r, row) in tile.chunks_exact_mut(np).enumerate() {
        let (c, ky, kx) = (r / khw, (r % khw) / g.kw, r % g.kw);
        let (my, mx) = (&maps.y[ky], &maps.x[kx]);
        let plane = &xs[c * hw..][..hw];
        let mut p = p0;
        while p < p1 {
            let (oy, ox0) = (p / wo, p % wo);
            let ox1 = wo.min(ox0 + (p1 - p));
            let d = &mut row[p - p0..][..ox1 - ox0];
            match my.src[oy] {
                None => d.fill(0.0),
                Some(iy) => {
                    let srow = &plane[iy * g.w..][..g.w];
                    let a = ox0.max(mx.lo).min(ox1);
                    let b = ox1.min(mx.hi).max(a);
                    for ox in (ox0..a).chain(b..ox1) {
                        d[ox - ox0] = mx.src[ox].map_or(0.0, |ix| srow[ix]);
                    }
                    if b > a {
                        let s0 = mx.base + (a - mx.lo);
                        d[a - ox0..b - ox0].copy_from_slice(&srow[s0..s0 + (b - a)]);
                    }
                }
            }
            p += ox1 - ox0;
        }
    }
}

/// Output pixels per tile: the tile `[k, P]` stays near 256 KiB (cache-resident), P ≥ 128.
fn tile_len(g: &ConvGeom) -> usize {
    (65536 / g.k().max(1)).clamp(128, 4096).min(g.l().max(1))
}

/// (sample, p0, p1) of every tile.
fn tiles(g: &ConvGeom) -> Vec<(usize, usize, usize)> {
    let (l, p) = (g.l(), tile_len(g));
    (0..g.batch)
        .flat_map(|b| (0..l).step_by(p).map(move |p0| (b, p0, (p0 + p).min(l))))
        .collect()
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

/// `dst[i·dst_rs + j] = (accumulate ? dst : 0) + Σ_k lhs[i, k]·rhs[k, j]` with the `gemm`
/// crate, on the calling thread or on rayon's pool.
///
/// # Safety
/// `dst` must be valid for writes at every `i·dst_rs + j` (i < m, j < n), not aliased by `lhs`
/// or `rhs`, and written by nobody else during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    parallel: bool,
) {
    // SAFETY: forwarded contract.
    unsafe { gemm_strided(m, n, k, dst, dst_rs, 1, accumulate, lhs, rhs, parallel) }
}

/// [`gemm_raw`] with a column stride for `dst`: element `(i, j)` at `dst[i·dst_rs + j·dst_cs]`.
///
/// # Safety
/// As [`gemm_raw`], for every `i·dst_rs + j·dst_cs`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    parallel: bool,
) {
    assert!(lhs.fits(m, k) && rhs.fits(k, n), "gemm: operand too small");
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if parallel && threads > 1 && m * n * k >= 48 * 48 * 48 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: operands are in bounds (asserted); dst is the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
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

/// `dst[m, n] (row-major) = (accumulate ? dst : 0) + lhs[m, k] · rhs[k, n]`, multithreaded
/// through rayon when large enough to pay for it.
pub fn gemm(m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, lhs: Mat, rhs: Mat) {
    assert!(dst.len() >= m * n, "gemm: dst too small");
    if k == 0 && !accumulate {
        dst[..m * n].fill(0.0);
    }
    // SAFETY: dst holds m·n row-major and is a unique borrow.
    unsafe { gemm_raw(m, n, k, dst.as_mut_ptr(), n, accumulate, lhs, rhs, true) }
}

/// A raw output pointer shared by tiles that write disjoint parts of it.
#[derive(Clone, Copy)]
pub(crate) struct Out(pub(crate) *mut f32);
// SAFETY: only used to hand disjoint regions of one live buffer to rayon tasks.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// Forward: `out` `[batch, cout, ho, wo]` from `x`, `weight` `[cout, k]` and `bias` `[cout]`.
///
/// Tiles of output pixels run in parallel; each gathers its im2col tile (padding fused into the
/// gather) into a cache-resident buffer and multiplies it by the weight into its own columns of
/// the output (`out[b, :, p0..p1]`, one strided GEMM per tile).
pub fn conv_forward(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
    conv_forward_act(x, weight, bias, g, None)
}

/// `v ← max(v, slope·v)`: a leaky ReLU (`slope` in [0, 1]; 0 is the ReLU).
pub fn activate(v: &mut [f32], slope: f32) {
    for a in v {
        if *a <= 0.0 {
            *a *= slope;
        }
    }
}

/// The output gradient before [`activate`]: `gout` where the activated output `y > 0`,
/// `slope·gout` elsewhere (burn's ReLU / leaky-ReLU backward).
pub fn deactivate(gout: &[f32], y: &[f32], slope: f32) -> Vec<f32> {
    gout.par_iter()
        .zip(y)
        .map(|(&g, &v)| if v <= 0.0 { g * slope } else { g })
        .collect()
}

/// [`conv_forward`] followed by the leaky ReLU of slope `act` (when given), applied to each
/// tile of the output while it is still in cache.
pub fn conv_forward_act(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeom,
    act: Option<f32>,
) -> Vec<f32> {
    if super::shifted::worth_it(g, g.cout, g.cin) {
        return super::shifted::forward(x, weight, bias, g, act);
    }
    let (k, l, co) = (g.k(), g.l(), g.cout);
    let chw = g.cin * g.h * g.w;
    assert_eq!(x.len(), g.batch * chw, "conv_forward: input size");
    assert_eq!(weight.len(), co * k, "conv_forward: weight size");
    // The output is written once: filled with the bias (the GEMMs then accumulate onto it), or
    // left to the GEMMs, which overwrite every element when there is no bias (k ≥ 1: each
    // tile's GEMM writes its rows 0..co, columns p0..p1, and the tiles cover every pixel). No
    // zero-fill first (a memset of every conv output was ≈ 2 % of a PtychoPINN step).
    let n_out = g.batch * co * l;
    let mut out: Vec<f32> = Vec::with_capacity(n_out);
    if let Some(b) = bias {
        assert_eq!(b.len(), co, "conv_forward: bias size");
        out.spare_capacity_mut()[..n_out]
            .par_chunks_mut(l.max(1))
            .enumerate()
            .for_each(|(i, o)| {
                for v in o {
                    v.write(b[i % co]);
                }
            });
    } else if k == 0 || l == 0 {
        out.resize(n_out, 0.0);
    }
    let maps = Maps::new(g);
    let dst = Out(out.as_mut_ptr());
    let wmat = Mat::row_major(weight, k);
    let identity = g.kh == 1 && g.kw == 1 && g.pad == [0; 4];
    tiles(g)
        .into_par_iter()
        .for_each_init(Vec::new, |buf, (b, p0, p1)| {
            let np = p1 - p0;
            let xs = &x[b * chw..][..chw];
            let rhs = if identity {
                Mat {
                    data: &xs[p0..],
                    rs: l,
                    cs: 1,
                }
            } else {
                buf.resize(k * np, 0.0);
                gather_tile(xs, g, &maps, p0, p1, buf);
                Mat::row_major(buf, np)
            };
            // SAFETY: this tile alone writes rows 0..co, columns p0..p1 of sample b.
            unsafe {
                let d = dst;
                gemm_raw(
                    co,
                    np,
                    k,
                    d.0.add(b * co * l + p0),
                    l,
                    bias.is_some(),
                    wmat,
                    rhs,
                    false,
                );
                if let Some(slope) = act {
                    for o in 0..co {
                        let row = d.0.add(b * co * l + o * l + p0);
                        activate(std::slice::from_raw_parts_mut(row, np), slope);
                    }
                }
            }
        });
    // SAFETY: every element of `out[..n_out]` is written: by the bias fill, by the zero fill
    // (k = 0 or l = 0), or else by the tiles' GEMMs (accumulate = false), see above.
    unsafe { out.set_len(n_out) };
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

/// `dW[co, k] = Σ_tiles G[b, co, p0..p1] · tileᵀ`: per-thread partial sums, then added.
fn weight_grad(x: &[f32], gout: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (k, l, co) = (g.k(), g.l(), g.cout);
    let chw = g.cin * g.h * g.w;
    let maps = Maps::new(g);
    let identity = g.kh == 1 && g.kw == 1 && g.pad == [0; 4];
    tiles(g)
        .into_par_iter()
        .fold(
            || (vec![0f32; co * k], Vec::new()),
            |(mut dw, mut buf), (b, p0, p1)| {
                let np = p1 - p0;
                let xs = &x[b * chw..][..chw];
                // The tile's columns as rows `[k, np]` (the input itself for a 1×1 unpadded conv).
                let cols_t = if identity {
                    Mat::row_major(&xs[p0..], l)
                } else {
                    buf.resize(k * np, 0.0);
                    gather_tile(xs, g, &maps, p0, p1, &mut buf);
                    Mat::row_major(&buf, np)
                };
                // dWᵀ[k, co] = cols_t · goutᵀ: the long side (k = cin·taps) as the GEMM's M,
                // where its micro-kernel is widest; written into dw [co, k] through strides.
                let g_t = Mat {
                    data: &gout[b * co * l + p0..],
                    rs: 1,
                    cs: l,
                };
                // SAFETY: dw is this fold's own co·k buffer; (i, j) → j·k + i covers it once.
                unsafe { gemm_strided(k, co, np, dw.as_mut_ptr(), 1, k, true, cols_t, g_t, false) };
                (dw, buf)
            },
        )
        .map(|(dw, _)| dw)
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(u, v)| *u += v);
            a
        })
        .unwrap_or_else(|| vec![0f32; co * k])
}

/// `dx`: the transposed conv, computed as a forward conv of `gout` with the flipped,
/// channel-swapped kernel. Zero padding: "full" padding `k − 1 − pad` gives `dx` directly.
/// Reflect padding: the gradient of the padded input (padding `k − 1`), whose border is then
/// added onto the pixels it mirrors.
fn input_grad(weight: &[f32], gout: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (kh, kw, co, ci) = (g.kh, g.kw, g.cout, g.cin);
    let mut wt = vec![0f32; co * g.k()];
    wt.par_chunks_mut(co * kh * kw)
        .enumerate()
        .for_each(|(c, rows)| {
            for o in 0..co {
                for ky in 0..kh {
                    for kx in 0..kw {
                        rows[(o * kh + ky) * kw + kx] =
                            weight[((o * ci + c) * kh + (kh - 1 - ky)) * kw + (kw - 1 - kx)];
                    }
                }
            }
        });
    let [pt, pb, pl, pr] = g.pad;
    let back = |pad: [usize; 4]| ConvGeom {
        batch: g.batch,
        cin: co,
        h: g.ho(),
        w: g.wo(),
        cout: ci,
        kh,
        kw,
        pad,
        mode: PadMode::Zero,
    };
    if g.mode == PadMode::Zero || g.pad == [0; 4] {
        let full = [kh - 1 - pt, kh - 1 - pb, kw - 1 - pl, kw - 1 - pr];
        return conv_forward_act(gout, &wt, None, &back(full), None);
    }
    let (hp, wp) = (g.h + pt + pb, g.w + pl + pr);
    let dxp = conv_forward_act(
        gout,
        &wt,
        None,
        &back([kh - 1, kh - 1, kw - 1, kw - 1]),
        None,
    );
    let fy: Vec<usize> = (0..hp).map(|i| reflect(i, pt, g.h)).collect();
    let fx: Vec<usize> = (0..wp).map(|i| reflect(i, pl, g.w)).collect();
    let mut dx = vec![0f32; g.batch * ci * g.h * g.w];
    dx.par_chunks_mut(g.h * g.w)
        .zip(dxp.par_chunks(hp * wp))
        .for_each(|(d, s)| {
            for (py, srow) in s.chunks_exact(wp).enumerate() {
                let drow = &mut d[fy[py] * g.w..][..g.w];
                for (px, v) in srow.iter().enumerate() {
                    drow[fx[px]] += v;
                }
            }
        });
    dx
}

/// The input index that padded index `i` (padding `pad` before an axis of `n`) reads under
/// reflect padding.
fn reflect(i: usize, pad: usize, n: usize) -> usize {
    let j = i as isize - pad as isize;
    let n = n as isize;
    let r = if j < 0 {
        -j
    } else if j >= n {
        2 * (n - 1) - j
    } else {
        j
    };
    r.clamp(0, n - 1) as usize
}

/// Σ v in f64 over 8 interleaved partial sums (vectorised: a single running sum is one
/// dependent add per element). The f64 result differs from the sequential sum by rounding
/// (≈ 1e-16 relative), far below the f32 it is cast to.
pub(super) fn sum_f64(v: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = v.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&x| x as f64).sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Backward of [`conv_forward`] for the output gradient `gout` `[batch, cout, ho, wo]`.
pub fn conv_backward(
    x: &[f32],
    weight: &[f32],
    gout: &[f32],
    g: &ConvGeom,
    need: Need,
) -> ConvGrads {
    conv_backward_leaky(x, weight, gout, None, g, need)
}

/// The gradient before a leaky ReLU of slope `slope` from the gradient `g` after it and the
/// activated output `y`: `slope·g` where `y < 0` (the rule of [`conv_backward_leaky`]).
#[inline]
pub(super) fn unleaky(g: f32, y: f32, slope: f32) -> f32 {
    if y < 0.0 { g * slope } else { g }
}

/// [`conv_backward`] of a conv followed by a leaky ReLU: `leaky = Some((slope, y))`, `y` the
/// activated output, scales the gradient by `slope` where `y < 0` first (burn's leaky-ReLU
/// backward, except for a negative pre-activation so small (|v| < 2⁻¹⁴⁹/slope) that `slope·v`
/// rounds to −0, which burn scales and this does not). One-sample 1-D convs on the direct
/// kernels scale while laying out their one gradient grid
/// ([`super::shifted::backward_direct_1d`]).
pub fn conv_backward_leaky(
    x: &[f32],
    weight: &[f32],
    gout: &[f32],
    leaky: Option<(f32, &[f32])>,
    g: &ConvGeom,
    need: Need,
) -> ConvGrads {
    assert_eq!(weight.len(), g.cout * g.k(), "conv_backward: weight size");
    if let Some(grads) = super::shifted::backward_direct_1d(x, weight, gout, leaky, g, need) {
        return grads;
    }
    let scaled: Vec<f32>;
    let gout = match leaky {
        Some((slope, y)) => {
            assert_eq!(y.len(), gout.len(), "conv_backward: activated output size");
            scaled = gout
                .par_iter()
                .zip(y)
                .map(|(&g, &y)| unleaky(g, y, slope))
                .collect();
            &scaled[..]
        }
        None => gout,
    };
    let (k, l, co) = (g.k(), g.l(), g.cout);
    assert_eq!(
        gout.len(),
        g.batch * co * l,
        "conv_backward: output gradient size"
    );
    assert_eq!(weight.len(), co * k, "conv_backward: weight size");
    assert_eq!(
        x.len(),
        g.batch * g.cin * g.h * g.w,
        "conv_backward: input size"
    );
    let bias = need.bias.then(|| {
        (0..co)
            .into_par_iter()
            .map(|c| {
                (0..g.batch)
                    .map(|b| sum_f64(&gout[(b * co + c) * l..][..l]))
                    .sum::<f64>() as f32
            })
            .collect()
    });
    ConvGrads {
        x: need.x.then(|| {
            if super::shifted::worth_it(g, g.cin, g.cout) {
                super::shifted::input_grad(weight, gout, g)
            } else {
                input_grad(weight, gout, g)
            }
        }),
        weight: need.weight.then(|| {
            if super::shifted::worth_it(g, g.cout, usize::MAX) {
                super::shifted::weight_grad(x, gout, g)
            } else {
                weight_grad(x, gout, g)
            }
        }),
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
            // several tiles per sample (tile_len 128 here), starting mid-row
            (2, 64, 11, 13, 3, 3, 3, [1, 1, 1, 1], PadMode::Zero),
            (1, 200, 1, 400, 2, 1, 3, [0, 0, 1, 1], PadMode::Reflect),
            (1, 300, 1, 300, 2, 1, 1, [0, 0, 0, 0], PadMode::Zero),
            // many output channels: the shifted input gradient; several grid tiles
            (2, 17, 9, 10, 20, 3, 3, [1, 1, 1, 1], PadMode::Reflect),
            (3, 16, 12, 12, 24, 3, 3, [1, 1, 1, 1], PadMode::Zero),
            (1, 24, 1, 700, 32, 1, 5, [0, 0, 2, 2], PadMode::Reflect),
            (2, 40, 33, 35, 16, 2, 3, [1, 0, 2, 0], PadMode::Zero),
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
            let t = tiles(&g);
            assert_eq!(
                t.iter().map(|(_, a, b)| b - a).sum::<usize>(),
                g.batch * g.l()
            );
            let x = rand_vec(&mut rng, g.batch * g.cin * g.h * g.w);
            let w = rand_vec(&mut rng, g.cout * g.k());
            let b = rand_vec(&mut rng, g.cout);
            let got = conv_forward(&x, &w, Some(&b), &g);
            let want = naive(&x, &w, &b, &g);
            assert_eq!(got.len(), want.len());
            for (a, e) in got.iter().zip(&want) {
                assert!(
                    (*a as f64 - e).abs() < 1e-5 * (1.0 + e.abs()),
                    "{g:?}: {a} vs {e}"
                );
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
            let lhs: f64 = y
                .iter()
                .zip(&gout)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
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
            assert!(
                (lhs - via_x).abs() < 1e-4 * (1.0 + lhs.abs()),
                "{g:?} {lhs} {via_x}"
            );
            assert!(
                (lhs - via_w).abs() < 1e-4 * (1.0 + lhs.abs()),
                "{g:?} {lhs} {via_w}"
            );
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

    /// The shifted-GEMM kernels on every geometry, whatever their channel counts: forward
    /// against the definition, both gradients against the adjoint identities.
    #[test]
    fn shifted_gemm_matches_the_definition() {
        use crate::nn::shifted;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for g in geoms() {
            let x = rand_vec(&mut rng, g.batch * g.cin * g.h * g.w);
            let w = rand_vec(&mut rng, g.cout * g.k());
            let b = rand_vec(&mut rng, g.cout);
            let got = shifted::forward(&x, &w, Some(&b), &g, None);
            let want = naive(&x, &w, &b, &g);
            for (a, e) in got.iter().zip(&want) {
                assert!((*a as f64 - e).abs() < 1e-5 * (1.0 + e.abs()), "{g:?}");
            }
            let gout = rand_vec(&mut rng, g.batch * g.cout * g.l());
            let y = shifted::forward(&x, &w, None, &g, None);
            let dot = |a: &[f32], b: &[f32]| -> f64 {
                a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum()
            };
            let lhs = dot(&y, &gout);
            let via_x = dot(&shifted::input_grad(&w, &gout, &g), &x);
            let via_w = dot(&shifted::weight_grad(&x, &gout, &g), &w);
            let tol = 1e-4 * (1.0 + lhs.abs());
            assert!((lhs - via_x).abs() < tol, "{g:?} {lhs} {via_x}");
            assert!((lhs - via_w).abs() < tol, "{g:?} {lhs} {via_w}");
        }
    }

    #[test]
    fn reflect_padding_mirrors_without_repeating_the_edge() {
        // x = [1, 2, 3], k = 3 all-ones, reflect pad 1 → padded [2, 1, 2, 3, 2]
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
        assert_eq!(y, vec![5.0, 6.0, 7.0]);
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
        // padded sample j feeds 1, 2, 3, 2, 1 outputs; j = 0, 2, 4 are x[1], j = 1 x[0], j = 3 x[2]
        assert_eq!(gr.x.unwrap(), vec![2.0, 5.0, 2.0]);
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
