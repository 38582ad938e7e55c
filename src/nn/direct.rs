//! Register-blocked direct kernels for 3-tap 1-D convolutions (the DIP U-Net's) on AVX-512.
//!
//! The shifted-GEMM form ([`super::shifted`]) hands each tap to `gemm`, which packs both
//! operands per call: for the U-Net's 32- and 64-channel layers at 1500–3000 px that packing and
//! the short inner dimension hold the passes at 42–75 GFLOP per CPU-second (`conv_profile layers
//! dip`), against ≈ 106 for `gemm` on square matrices. These kernels read the same padded,
//! channel-major grids as the shifted GEMMs and keep a block of outputs in the 32 vector
//! registers over the whole inner sum, reading every operand straight from the grid:
//!
//! - [`corr`] (forward and input gradient): `out[r, j] = Σ_s Σ_t w(r, s, t) · src[s, j + o_t]`,
//!   4 output rows × 96 positions (24 accumulators) per block; per (s, t) 6 loads, 4 broadcasts,
//!   24 FMAs;
//! - [`weight_grad`]: `dw(r, c, t) = Σ_j g[r, j] · x[c, j + o_t]`, 4 rows × 2 columns × 3 taps
//!   (24 accumulators) per block; per 16 positions 6 loads and 24 FMAs, then one horizontal sum
//!   per accumulator.
//!
//! The sums run in another order than `gemm`'s (each lane sums its positions in order, then the
//! lanes are added pairwise), so results differ from the GEMM path in the last bits; the
//! definition tests in `kernels` and `shifted` hold them to the same tolerances. Other CPUs (no
//! AVX-512F) keep the shifted GEMMs: [`available`] decides at run time.

/// Taps per kernel the direct kernels handle (the DIP U-Net's 1-D convs).
pub const TAPS: usize = 3;

/// Whether this CPU runs the direct kernels (AVX-512F); elsewhere the GEMM paths are used.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Weights of a 3-tap correlation: `w(r, s, t) = w[r·rs + s·ss + t·ts]`.
#[derive(Clone, Copy)]
pub struct Taps<'a> {
    pub w: &'a [f32],
    pub rs: usize,
    pub ss: usize,
    pub ts: usize,
}

impl Taps<'_> {
    fn fits(&self, rows: usize, inner: usize) -> bool {
        rows == 0
            || inner == 0
            || (rows - 1) * self.rs + (inner - 1) * self.ss + (TAPS - 1) * self.ts < self.w.len()
    }
}

/// `out[r·ld + j] = Σ_{s < inner} Σ_{t < 3} w(r, s, t) · src[s·sstride + j + offs[t]]` for
/// `r < rows`, `j < n` (overwrites `out`).
///
/// # Safety
/// [`available`] must be true; `out` valid for writes at every `r·ld + j` and written by nobody
/// else during the call.
///
/// # Panics
/// When `src` or `w` is too short for the indices above.
#[allow(clippy::too_many_arguments)]
pub unsafe fn corr(
    out: *mut f32,
    ld: usize,
    rows: usize,
    n: usize,
    inner: usize,
    w: Taps,
    src: &[f32],
    sstride: usize,
    offs: [usize; TAPS],
) {
    assert!(w.fits(rows, inner), "direct::corr: weights too short");
    let reach = offs.iter().copied().max().unwrap_or(0);
    assert!(
        rows == 0 || n == 0 || inner == 0 || (inner - 1) * sstride + n + reach <= src.len(),
        "direct::corr: source too short"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is the caller's contract; operands are in bounds (asserted), `out` is.
    unsafe {
        avx512::corr(out, ld, rows, n, inner, w, src.as_ptr(), sstride, offs)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (out, ld, sstride);
        unreachable!("direct::corr without AVX-512F");
    }
}

/// Weight gradient of a 3-tap correlation:
/// `dw[r·drs + c·dcs + t] = Σ_{j < n} g[r·gstride + j] · x[c·xstride + j + offs[t]]`
/// for `r < rows`, `c < cols` (overwrites `dw`), blocks of rows in parallel on rayon's pool.
///
/// # Safety
/// [`available`] must be true.
///
/// # Panics
/// When an operand is too short for the indices above.
#[allow(clippy::too_many_arguments)]
pub unsafe fn weight_grad(
    dw: &mut [f32],
    (drs, dcs): (usize, usize),
    rows: usize,
    cols: usize,
    n: usize,
    (g, gstride): (&[f32], usize),
    (x, xstride): (&[f32], usize),
    offs: [usize; TAPS],
) {
    if rows == 0 || cols == 0 {
        return;
    }
    let reach = offs.iter().copied().max().unwrap_or(0);
    assert!(
        (rows - 1) * drs + (cols - 1) * dcs + TAPS <= dw.len(),
        "direct::weight_grad: output too short"
    );
    assert!(
        (rows - 1) * gstride + n <= g.len() && (cols - 1) * xstride + n + reach <= x.len(),
        "direct::weight_grad: operand too short"
    );
    #[cfg(target_arch = "x86_64")]
    {
        use rayon::prelude::*;
        let dst = super::kernels::Out(dw.as_mut_ptr());
        let blocks = rows.div_ceil(avx512::WR);
        (0..blocks).into_par_iter().for_each(|b| {
            let r0 = b * avx512::WR;
            // SAFETY: AVX-512F is the caller's contract; operands are in bounds (asserted);
            // block b alone writes rows r0..r0 + WR of dw.
            unsafe {
                avx512::weight_grad_rows(
                    { dst }.0,
                    (drs, dcs),
                    (r0, (rows - r0).min(avx512::WR)),
                    cols,
                    n,
                    (g.as_ptr(), gstride),
                    (x.as_ptr(), xstride),
                    offs,
                )
            }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (g, gstride, x, xstride, drs, dcs, n);
        unreachable!("direct::weight_grad without AVX-512F");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{TAPS, Taps};
    use std::arch::x86_64::*;

    /// Lanes per vector.
    const L: usize = 16;
    /// Output rows per [`corr`] block.
    const R: usize = 4;
    /// Vectors of positions per [`corr`] block.
    const V: usize = 6;
    /// Output rows per weight-gradient block.
    pub const WR: usize = 4;
    /// Input channels per weight-gradient block.
    const WC: usize = 1;

    /// The first `lanes` (≤ 16) lanes.
    fn mask(lanes: usize) -> __mmask16 {
        if lanes >= L {
            0xFFFF
        } else {
            ((1u32 << lanes) - 1) as __mmask16
        }
    }

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn corr(
        out: *mut f32,
        ld: usize,
        rows: usize,
        n: usize,
        inner: usize,
        w: Taps,
        src: *const f32,
        sstride: usize,
        offs: [usize; TAPS],
    ) {
        let mut r0 = 0;
        while r0 < rows {
            let nr = (rows - r0).min(R);
            let mut j0 = 0;
            while j0 < n {
                let len = (n - j0).min(V * L);
                // SAFETY: forwarded contract (see `super::corr`), block inside rows × n.
                unsafe {
                    let o = out.add(r0 * ld + j0);
                    let s = src.add(j0);
                    let full = len == V * L;
                    macro_rules! block {
                        ($nr:tt, $o:expr, $row:expr) => {
                            if full {
                                corr_block::<$nr, false>(
                                    $o, ld, len, inner, &w, $row, s, sstride, offs,
                                )
                            } else {
                                corr_block::<$nr, true>(
                                    $o, ld, len, inner, &w, $row, s, sstride, offs,
                                )
                            }
                        };
                    }
                    if nr == R {
                        block!(R, o, r0);
                    } else {
                        for r in 0..nr {
                            block!(1, o.add(r * ld), r0 + r);
                        }
                    }
                }
                j0 += len;
            }
            r0 += nr;
        }
    }

    /// One block: `NR` rows from `r0`, `len` (≤ 96) positions; `MASKED` when `len < 96`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn corr_block<const NR: usize, const MASKED: bool>(
        out: *mut f32,
        ld: usize,
        len: usize,
        inner: usize,
        w: &Taps,
        r0: usize,
        src: *const f32,
        sstride: usize,
        offs: [usize; TAPS],
    ) {
        let masks: [__mmask16; V] = std::array::from_fn(|v| mask(len.saturating_sub(v * L)));
        let mut acc = [[_mm512_setzero_ps(); V]; NR];
        let wp = w.w.as_ptr();
        for s in 0..inner {
            // SAFETY: the caller checked every index (see `super::corr`).
            unsafe {
                let row = src.add(s * sstride);
                let wrow = wp.add(r0 * w.rs + s * w.ss);
                for (t, &off) in offs.iter().enumerate() {
                    let p = row.add(off);
                    let xs: [__m512; V] = std::array::from_fn(|v| {
                        if MASKED {
                            _mm512_maskz_loadu_ps(masks[v], p.add(v * L))
                        } else {
                            _mm512_loadu_ps(p.add(v * L))
                        }
                    });
                    for (r, a) in acc.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(*wrow.add(r * w.rs + t * w.ts));
                        for (av, &xv) in a.iter_mut().zip(&xs) {
                            *av = _mm512_fmadd_ps(wv, xv, *av);
                        }
                    }
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (v, &av) in a.iter().enumerate() {
                // SAFETY: row r, positions v·16.. of this block lie inside `out`'s rows × n.
                unsafe {
                    let p = out.add(r * ld + v * L);
                    if MASKED {
                        _mm512_mask_storeu_ps(p, masks[v], av);
                    } else {
                        _mm512_storeu_ps(p, av);
                    }
                }
            }
        }
    }

    /// Rows `r0..r0 + nr` (nr ≤ 4) of the weight gradient, every column.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn weight_grad_rows(
        dw: *mut f32,
        (drs, dcs): (usize, usize),
        (r0, nr): (usize, usize),
        cols: usize,
        n: usize,
        (g, gstride): (*const f32, usize),
        (x, xstride): (*const f32, usize),
        offs: [usize; TAPS],
    ) {
        let mut c0 = 0;
        while c0 < cols {
            let nc = (cols - c0).min(WC);
            // SAFETY: forwarded contract (see `super::weight_grad`).
            unsafe {
                let gp = g.add(r0 * gstride);
                let xp = x.add(c0 * xstride);
                let d = dw.add(r0 * drs + c0 * dcs);
                match (nr, nc) {
                    (WR, WC) => {
                        wg_block::<WR, WC>(d, (drs, dcs), n, (gp, gstride), (xp, xstride), offs)
                    }
                    (WR, _) => {
                        wg_block::<WR, 1>(d, (drs, dcs), n, (gp, gstride), (xp, xstride), offs)
                    }
                    _ => {
                        for r in 0..nr {
                            let (d, gp) = (d.add(r * drs), gp.add(r * gstride));
                            for c in 0..nc {
                                let (d, xp) = (d.add(c * dcs), xp.add(c * xstride));
                                wg_block::<1, 1>(
                                    d,
                                    (drs, dcs),
                                    n,
                                    (gp, gstride),
                                    (xp, xstride),
                                    offs,
                                )
                            }
                        }
                    }
                }
            }
            c0 += nc;
        }
    }

    /// `NR × NC × 3` weight-gradient entries, each summed over the `n` positions.
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    unsafe fn wg_block<const NR: usize, const NC: usize>(
        dw: *mut f32,
        (drs, dcs): (usize, usize),
        n: usize,
        (g, gstride): (*const f32, usize),
        (x, xstride): (*const f32, usize),
        offs: [usize; TAPS],
    ) {
        let mut acc = [[[_mm512_setzero_ps(); TAPS]; NC]; NR];
        let full = n / L * L;
        let ops = ((g, gstride), (x, xstride), offs);
        // SAFETY: the caller checked every index (see `super::weight_grad`).
        unsafe {
            for j in (0..full).step_by(L) {
                acc = wg_step::<NR, NC, false>(acc, j, 0xFFFF, ops);
            }
            if full < n {
                acc = wg_step::<NR, NC, true>(acc, full, mask(n - full), ops);
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            for (c, ac) in ar.iter().enumerate() {
                for (t, &av) in ac.iter().enumerate() {
                    // SAFETY: entry (r, c, t) of this block lies inside dw (caller's contract).
                    unsafe { *dw.add(r * drs + c * dcs + t) = _mm512_reduce_add_ps(av) };
                }
            }
        }
    }

    /// Operands of a weight-gradient block: `(g, gstride)`, `(x, xstride)`, tap offsets.
    type WgOps = ((*const f32, usize), (*const f32, usize), [usize; TAPS]);

    /// Adds positions `j..j + 16` (the lanes of `m` when `MASKED`) onto the accumulators.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn wg_step<const NR: usize, const NC: usize, const MASKED: bool>(
        mut acc: [[[__m512; TAPS]; NC]; NR],
        j: usize,
        m: __mmask16,
        ((g, gstride), (x, xstride), offs): WgOps,
    ) -> [[[__m512; TAPS]; NC]; NR] {
        let load = |p: *const f32| {
            // SAFETY: the caller checked every index (see `super::weight_grad`).
            unsafe {
                if MASKED {
                    _mm512_maskz_loadu_ps(m, p)
                } else {
                    _mm512_loadu_ps(p)
                }
            }
        };
        // SAFETY: as above.
        let gv: [__m512; NR] = std::array::from_fn(|r| load(unsafe { g.add(r * gstride + j) }));
        for c in 0..NC {
            for (t, &off) in offs.iter().enumerate() {
                // SAFETY: as above.
                let xv = load(unsafe { x.add(c * xstride + j + off) });
                for (a, &gr) in acc.iter_mut().zip(&gv) {
                    a[c][t] = _mm512_fmadd_ps(gr, xv, a[c][t]);
                }
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::super::kernels::{ConvGeom, PadMode};
    use super::super::shifted;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// 1-D padded input, `[batch][c][i]` for `i < w + pl + pr`, and where each padded index
    /// reads from (for folding the gradient back).
    fn padded(x: &[f32], g: &ConvGeom) -> (Vec<f64>, Vec<Option<usize>>) {
        let (pl, wp) = (g.pad[2], g.w + g.pad[2] + g.pad[3]);
        let src: Vec<Option<usize>> = (0..wp)
            .map(|i| {
                let j = i as isize - pl as isize;
                let n = g.w as isize;
                if (0..n).contains(&j) {
                    Some(j as usize)
                } else if g.mode == PadMode::Reflect {
                    Some(if j < 0 { -j } else { 2 * (n - 1) - j } as usize)
                } else {
                    None
                }
            })
            .collect();
        let mut xp = vec![0f64; g.batch * g.cin * wp];
        for bc in 0..g.batch * g.cin {
            for (i, s) in src.iter().enumerate() {
                if let Some(s) = s {
                    xp[bc * wp + i] = x[bc * g.w + s] as f64;
                }
            }
        }
        (xp, src)
    }

    /// A 3-tap 1-D conv.
    fn conv3(
        batch: usize,
        cin: usize,
        w: usize,
        cout: usize,
        pad: [usize; 4],
        mode: PadMode,
    ) -> ConvGeom {
        ConvGeom {
            batch,
            cin,
            h: 1,
            w,
            cout,
            kh: 1,
            kw: 3,
            pad,
            mode,
        }
    }

    /// Every element of the forward, the weight gradient and the input gradient of 3-tap 1-D
    /// convs against their definitions (f64 sums): row counts that are not multiples of the
    /// 4-row blocks, lengths that are not multiples of 16 or 96 positions, one input or output
    /// channel, several samples, zero and reflect padding, asymmetric padding.
    #[test]
    fn one_d_three_tap_passes_equal_their_definitions_elementwise() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (batch, cin, w, cout, pad, mode) in [
            (3, 5, 37, 7, [0, 0, 1, 1], PadMode::Zero),
            (2, 1, 100, 6, [0, 0, 1, 1], PadMode::Reflect),
            (1, 33, 250, 1, [0, 0, 1, 1], PadMode::Reflect),
            (2, 9, 17, 4, [0, 0, 2, 0], PadMode::Zero),
            (1, 32, 3000, 32, [0, 0, 1, 1], PadMode::Reflect),
        ] {
            let g = conv3(batch, cin, w, cout, pad, mode);
            let (wo, wp) = (g.wo(), w + pad[2] + pad[3]);
            let mut r =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
            let (x, wt, gout) = (r(batch * cin * w), r(cout * cin * 3), r(batch * cout * wo));
            let (xp, src) = padded(&x, &g);
            let wgt = |o: usize, c: usize, k: usize| wt[(o * cin + c) * 3 + k] as f64;
            let close = |a: f32, e: f64, what: &str| {
                assert!(
                    (a as f64 - e).abs() <= 2e-5 * (1.0 + e.abs()),
                    "{g:?} {what}: {a} vs {e}"
                );
            };
            let y = shifted::forward(&x, &wt, None, &g, None);
            let dw = shifted::weight_grad(&x, &gout, &g);
            let dx = shifted::input_grad(&wt, &gout, &g);
            let mut want_dx = vec![0f64; batch * cin * w];
            for b in 0..batch {
                for o in 0..cout {
                    for t in 0..wo {
                        let go = gout[(b * cout + o) * wo + t] as f64;
                        let mut s = 0f64;
                        for c in 0..cin {
                            for k in 0..3 {
                                s += wgt(o, c, k) * xp[(b * cin + c) * wp + t + k];
                                if let Some(i) = src[t + k] {
                                    want_dx[(b * cin + c) * w + i] += wgt(o, c, k) * go;
                                }
                            }
                        }
                        close(y[(b * cout + o) * wo + t], s, "forward");
                    }
                }
            }
            for (a, e) in dx.iter().zip(&want_dx) {
                close(*a, *e, "input gradient");
            }
            for o in 0..cout {
                for c in 0..cin {
                    for k in 0..3 {
                        let mut s = 0f64;
                        for b in 0..batch {
                            for t in 0..wo {
                                s += gout[(b * cout + o) * wo + t] as f64
                                    * xp[(b * cin + c) * wp + t + k];
                            }
                        }
                        close(dw[(o * cin + c) * 3 + k], s, "weight gradient");
                    }
                }
            }
            assert!(shifted::worth_it(&g, cout, cin) || !super::available());
        }
    }

    /// The fused backward of one-sample 1-D convs (`kernels::conv_backward_leaky`: one scaled
    /// gradient grid for bias, weight and input gradients) equals, bit for bit, the separate
    /// passes on a separately scaled gradient: scaled where the activated output is negative
    /// (−0 and +0 not), the bias summed in f64 per row, zero and reflect padding, asymmetric
    /// padding, a 1-channel layer, every gradient or only some.
    #[test]
    fn fused_leaky_backward_equals_the_separate_passes_bit_for_bit() {
        use super::super::kernels::{self, Need};
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (cin, w, cout, pad, mode) in [
            (5, 37, 7, [0, 0, 1, 1], PadMode::Zero),
            (1, 100, 6, [0, 0, 1, 1], PadMode::Reflect),
            (32, 300, 32, [0, 0, 1, 1], PadMode::Reflect),
            (9, 17, 4, [0, 0, 2, 0], PadMode::Zero),
            (6, 50, 1, [0, 0, 1, 1], PadMode::Reflect),
        ] {
            let g = conv3(1, cin, w, cout, pad, mode);
            let wo = g.wo();
            let mut r =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
            let (x, wt, gout) = (r(cin * w), r(cout * cin * 3), r(cout * wo));
            let mut y = r(cout * wo);
            (y[0], y[1]) = (-0.0, 0.0);
            let slope = 0.2f32;
            let scaled: Vec<f32> = gout
                .iter()
                .zip(&y)
                .map(|(&g, &y)| if y < 0.0 { g * slope } else { g })
                .collect();
            assert_ne!(scaled, gout, "some outputs are negative");
            let bits = |v: &[f32]| v.iter().map(|a| a.to_bits()).collect::<Vec<_>>();
            // Without the direct kernels (no AVX-512F) there is no fused path: the leaky entry
            // scales a copy and runs the passes `kernels::conv_backward` chooses, so it must equal
            // that on the scaled gradient, bit for bit (checked below as "plain").
            let all = Need {
                x: true,
                weight: true,
                bias: true,
            };
            let generic = (!super::available()).then(|| {
                assert!(shifted::backward_direct_1d(&x, &wt, &gout, None, &g, all).is_none());
                kernels::conv_backward(&x, &wt, &scaled, &g, all)
            });
            let want_dx = match &generic {
                Some(gr) => gr.x.clone().unwrap(),
                None => shifted::input_grad(&wt, &scaled, &g),
            };
            let want_dw = match &generic {
                Some(gr) => gr.weight.clone().unwrap(),
                None => shifted::weight_grad(&x, &scaled, &g),
            };
            let want_db: Vec<f32> = (0..cout)
                .map(|o| {
                    let row = kernels::sum_f64(&scaled[o * wo..(o + 1) * wo]);
                    std::iter::once(row).sum::<f64>() as f32
                })
                .collect();
            let check = |name: &str, got: &Option<Vec<f32>>, want: &[f32], asked: bool| match got {
                Some(v) => assert!(asked && bits(v) == bits(want), "{g:?} {name}"),
                None => assert!(!asked, "{g:?} {name} missing"),
            };
            for need in [
                Need {
                    x: true,
                    weight: true,
                    bias: true,
                },
                Need {
                    x: false,
                    weight: true,
                    bias: true,
                },
                Need {
                    x: true,
                    weight: false,
                    bias: false,
                },
            ] {
                let got = kernels::conv_backward_leaky(&x, &wt, &gout, Some((slope, &y)), &g, need);
                check("dx", &got.x, &want_dx, need.x);
                check("dw", &got.weight, &want_dw, need.weight);
                check("db", &got.bias, &want_db, need.bias);
                // the unscaled entry on the scaled gradient: the same numbers
                let plain = kernels::conv_backward(&x, &wt, &scaled, &g, need);
                check("dx (plain)", &plain.x, &want_dx, need.x);
                check("dw (plain)", &plain.weight, &want_dw, need.weight);
                check("db (plain)", &plain.bias, &want_db, need.bias);
            }
        }
    }
}
