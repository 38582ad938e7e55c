//! Shifted-GEMM convolution ("implicit im2col") for stride-1 convs with enough channels.
//!
//! The padded input of the whole batch is laid out channel-major on one flat grid,
//! `xp[c][q]` with `q = (b·hp + py)·wp + px` (`hp`, `wp` the padded sizes), followed by `reach =
//! (kh − 1)·wp + kw − 1` zeros. Output pixel `(b, oy, ox)` sits at grid index `q = (b·hp +
//! oy)·wp + ox`, and its input under kernel offset `(ky, kx)` at `q + ky·wp + kx`, so for every
//! offset the im2col rows of all output pixels are one plain strided view of `xp`:
//!
//! - forward: `out[o, q] = Σ_{ky,kx} W_{ky,kx}[o, :] · xp[:, q + ky·wp + kx]`, `kh·kw` GEMMs with
//!   inner dimension `cin` accumulating into a cache-sized tile of `q`, no im2col copy; grid
//!   positions that are not output pixels (the last `kw − 1` columns and `kh − 1` rows of each
//!   sample) are computed and dropped;
//! - weight gradient: `dW_{ky,kx} = Gw · xp[:, · + ky·wp + kx]ᵀ`, where `Gw` is the output
//!   gradient on the same grid with zeros at the dropped positions; batch folded into the GEMM's
//!   inner dimension;
//! - input gradient: the gradient of the padded grid, `dxp[c, p] = Σ_{ky,kx} W_{ky,kx}[:, c]ᵀ ·
//!   Gw[:, p − ky·wp − kx]` (`Gw` preceded by `reach` zeros), then folded back onto the input:
//!   zero padding drops the border, reflect padding adds it onto the pixels it mirrors.
//!
//! The layout costs one copy of the input and of the output gradient, instead of the `kh·kw`
//! copies an im2col makes, but `kh·kw` GEMMs with a short inner dimension instead of one with
//! `cin·kh·kw`; [`worth_it`] says for which passes that wins.

use rayon::prelude::*;

use super::direct;
use super::kernels::{
    ConvGeom, ConvGrads, Mat, Need, Out, PadMode, gemm_strided, sum_f64, unleaky,
};

/// The padded grid of one conv: sizes and the reach of its largest kernel offset.
#[derive(Clone, Copy, Debug)]
struct Grid {
    hp: usize,
    wp: usize,
    /// Grid positions: `batch·hp·wp`.
    s: usize,
    /// `(kh − 1)·wp + kw − 1`: the largest kernel offset on the flat grid.
    reach: usize,
}

impl Grid {
    fn new(g: &ConvGeom) -> Self {
        let (hp, wp) = (g.h + g.pad[0] + g.pad[1], g.w + g.pad[2] + g.pad[3]);
        Grid {
            hp,
            wp,
            s: g.batch * hp * wp,
            reach: (g.kh - 1) * wp + g.kw - 1,
        }
    }
    fn offset(&self, g: &ConvGeom, k: usize) -> usize {
        (k / g.kw) * self.wp + k % g.kw
    }
}

/// Whether the shifted GEMMs beat im2col for a pass whose GEMM writes `rows` output channels
/// (`cout` forward and for the weight gradient, `cin` for the input gradient) with inner
/// dimension `inner` (`cin` forward, `cout` for the input gradient): for few output rows (the
/// PtychoPINN's C→4 heads, the input gradient of its 4→C layers) `gemm` packs the whole im2col
/// tile for a handful of output rows, which is where im2col loses (measured per layer with
/// `conv_profile layers pinn`: 64→4 weight gradient 14 → 35 GFLOP per CPU-s, 60→4 forward
/// 19 → 41, 4→64 input gradient 20 → 34); for wide layers one GEMM over `cin·kh·kw` keeps the
/// output in registers longer and im2col wins (64→64 input gradient 83 vs 48).
///
/// 1-D convs (the DIP U-Net's: `h = kh = 1`, k 3 taps, reflect padding) have only `kw` GEMMs
/// per pass, so the shifted form wins for the forward and the input gradient at every width
/// (`conv_profile layers dip`, GFLOP per CPU-s, im2col → shifted: 32→32 at 3000 px forward
/// 41 → 64, 96→32 forward 55 → 81, 384→128 input gradient 72–79 → 82–87; all layers forward
/// 71 → 82, input gradient 66–69 → 72–74) but not for the weight gradient (69 → 66: the
/// im2col tile's GEMM keeps `dW` in registers over a longer inner dimension); `inner =
/// usize::MAX` marks the weight-gradient call.
///
/// 3-tap 1-D convs on a CPU with AVX-512F take the direct kernels ([`direct`]) for all three
/// passes and every channel count, including the U-Net's 1-channel input and output layers.
pub fn worth_it(g: &ConvGeom, rows: usize, inner: usize) -> bool {
    if g.check().is_err() {
        return false;
    }
    if direct_1d(g) {
        return true;
    }
    if inner < 16 || g.kh * g.kw <= 1 {
        return false;
    }
    let one_d = g.h == 1 && g.kh == 1;
    rows <= 8 || (one_d && inner != usize::MAX)
}

/// Whether this conv's passes run on the direct kernels: 1-D, 3 taps, AVX-512F.
fn direct_1d(g: &ConvGeom) -> bool {
    g.h == 1 && g.kh == 1 && g.kw == direct::TAPS && direct::available()
}

/// The direct kernels' tap offsets on the grid (1-D: tap `k` at `k`), `reach − k` when
/// `reversed` (the input gradient reads the output gradient backwards from `reach`).
fn direct_offsets(gr: &Grid, reversed: bool) -> [usize; direct::TAPS] {
    std::array::from_fn(|k| if reversed { gr.reach - k } else { k })
}

/// A channel-major flat grid: channel `c` at `data[c·stride..]`, `head` zeros, the grid, zeros.
struct Flat {
    data: Vec<f32>,
    stride: usize,
}

/// Where grid index `i` of an axis reads from a source axis of `len` samples placed at `off`.
fn axis(grid_len: usize, len: usize, off: usize, mode: PadMode) -> Vec<Option<usize>> {
    (0..grid_len)
        .map(|i| {
            let j = i as isize - off as isize;
            let n = len as isize;
            if (0..n).contains(&j) {
                Some(j as usize)
            } else if mode == PadMode::Reflect && j > -n && j < 2 * n - 1 {
                Some(if j < 0 { -j } else { 2 * (n - 1) - j } as usize)
            } else {
                None
            }
        })
        .collect()
}

/// `src` `[batch, c, sh, sw]` on the grid: position `(b, py, px)` of channel `c` holds
/// `src[b, c, py − y0, px − x0]`, `mode` padding outside the source; `head` zeros before each
/// channel's grid and `tail` after it.
#[allow(clippy::too_many_arguments)]
fn flatten(
    src: &[f32],
    dims: (usize, usize, usize, usize),
    gr: &Grid,
    origin: (usize, usize),
    mode: PadMode,
    head: usize,
    tail: usize,
) -> Flat {
    flatten_scaled(src, dims, gr, origin, mode, (head, tail), None)
}

/// [`flatten`], with each copied sample `src[i]` multiplied by `slope` where `leaky =
/// Some((slope, y))` has `y[i] < 0` (the gradient before a leaky ReLU whose output was `y`).
fn flatten_scaled(
    src: &[f32],
    (_, c, sh, sw): (usize, usize, usize, usize),
    gr: &Grid,
    (y0, x0): (usize, usize),
    mode: PadMode,
    (head, tail): (usize, usize),
    leaky: Option<(f32, &[f32])>,
) -> Flat {
    let at = |i: usize| leaky.map_or(src[i], |(slope, y)| unleaky(src[i], y[i], slope));
    let stride = head + gr.s + tail;
    let fy = axis(gr.hp, sh, y0, mode);
    let fx = axis(gr.wp, sw, x0, mode);
    let inner = x0.min(gr.wp)..(x0 + sw).min(gr.wp);
    // Each element is written once (zeros, copies or mirrored samples): no zero-fill first.
    let mut data: Vec<f32> = Vec::with_capacity(c * stride);
    data.spare_capacity_mut()[..c * stride]
        .par_chunks_mut(stride.max(1))
        .enumerate()
        .for_each(|(ch, plane)| {
            let (lead, rest) = plane.split_at_mut(head);
            let (grid, trail) = rest.split_at_mut(gr.s);
            lead.iter_mut().chain(trail.iter_mut()).for_each(|v| {
                v.write(0.0);
            });
            for (row, d) in grid.chunks_exact_mut(gr.wp).enumerate() {
                let (b, py) = (row / gr.hp, row % gr.hp);
                let Some(sy) = fy[py] else {
                    d.iter_mut().for_each(|v| {
                        v.write(0.0);
                    });
                    continue;
                };
                let r0 = ((b * c + ch) * sh + sy) * sw;
                let span = r0 + inner.start - x0..r0 + inner.end - x0;
                if let Some((slope, y)) = leaky {
                    for ((v, &s), &y) in d[inner.clone()]
                        .iter_mut()
                        .zip(&src[span.clone()])
                        .zip(&y[span])
                    {
                        v.write(unleaky(s, y, slope));
                    }
                } else {
                    for (v, &s) in d[inner.clone()].iter_mut().zip(&src[span]) {
                        v.write(s);
                    }
                }
                for px in (0..inner.start).chain(inner.end..gr.wp) {
                    d[px].write(fx[px].map_or(0.0, |sx| at(r0 + sx)));
                }
            }
        });
    // SAFETY: every element of every channel's plane (head, grid rows, tail) was written above.
    unsafe { data.set_len(c * stride) };
    Flat { data, stride }
}

/// The padded input on the grid, followed by `reach` zeros so that every offset's view fits.
fn padded_input(x: &[f32], g: &ConvGeom, gr: &Grid) -> Flat {
    let dims = (g.batch, g.cin, g.h, g.w);
    flatten(x, dims, gr, (g.pad[0], g.pad[2]), g.mode, 0, gr.reach)
}

/// Kernel offset `k`'s `[cout, cin]` slice of `w` `[cout, cin, kh, kw]` as a strided GEMM
/// operand, or its transpose `[cin, cout]` when `transpose` (no copy: `gemm` packs its left
/// operand anyway).
fn tap<'a>(w: &'a [f32], g: &ConvGeom, k: usize, transpose: bool) -> Mat<'a> {
    let (ci, kk) = (g.cin, g.kh * g.kw);
    let (rs, cs) = if transpose {
        (kk, ci * kk)
    } else {
        (ci * kk, kk)
    };
    Mat {
        data: &w[k..],
        rs,
        cs,
    }
}

/// Grid positions per tile: `rows` output rows of `tile` stay near 512 KiB; a multiple of 64,
/// so that `gemm` uses the unit-stride views as they are instead of packing them.
fn tile_len(rows: usize) -> usize {
    (131072 / rows.max(1)).clamp(256, 16384) / 64 * 64
}

fn starts(s: usize, t: usize) -> Vec<usize> {
    (0..s).step_by(t.max(1)).collect()
}

/// Forward of a stride-1 conv: `out` `[batch, cout, ho, wo]`.
pub fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeom,
    act: Option<f32>,
) -> Vec<f32> {
    let gr = Grid::new(g);
    let (co, ci, kk) = (g.cout, g.cin, g.kh * g.kw);
    let (ho, wo, l) = (g.ho(), g.wo(), g.l());
    assert_eq!(
        x.len(),
        g.batch * ci * g.h * g.w,
        "conv forward: input size"
    );
    assert_eq!(w.len(), co * ci * kk, "conv forward: weight size");
    let xp = padded_input(x, g, &gr);
    // Every output pixel is written once below (its grid position lies in exactly one tile),
    // so the buffer is not zero-filled first.
    let n_out = g.batch * co * l;
    let mut out: Vec<f32> = Vec::with_capacity(n_out);
    let dst = Out(out.as_mut_ptr());
    let t = tile_len(co + ci);
    let direct = direct_1d(g);
    starts(gr.s, t)
        .into_par_iter()
        .for_each_init(Vec::new, |buf: &mut Vec<f32>, q0| {
            let n = t.min(gr.s - q0);
            buf.clear();
            buf.reserve(co * n);
            if ci == 0 || kk == 0 {
                buf.resize(co * n, 0.0);
            }
            if direct {
                let taps = direct::Taps {
                    w,
                    rs: ci * kk,
                    ss: kk,
                    ts: 1,
                };
                // SAFETY: `direct_1d` checked AVX-512F; buf is this task's own buffer with
                // capacity for co·n elements, written whole (rows co, columns n).
                unsafe {
                    direct::corr(
                        buf.as_mut_ptr(),
                        n,
                        co,
                        n,
                        ci,
                        taps,
                        &xp.data[q0..],
                        xp.stride,
                        direct_offsets(&gr, false),
                    )
                };
            } else {
                for k in 0..kk {
                    let off = gr.offset(g, k);
                    // SAFETY: buf is this task's own buffer with capacity for co·n elements.
                    unsafe {
                        gemm_strided(
                            co,
                            n,
                            ci,
                            buf.as_mut_ptr(),
                            n,
                            1,
                            k > 0,
                            tap(w, g, k, false),
                            Mat {
                                data: &xp.data[q0 + off..],
                                rs: xp.stride,
                                cs: 1,
                            },
                            false,
                        )
                    };
                }
            }
            // SAFETY: the direct kernel or the k = 0 GEMM (accumulate = false, inner size ci ≥ 1)
            // wrote all co·n elements of the reserved buffer (or it was zero-filled above).
            unsafe { buf.set_len(co * n) };
            // keep the output pixels of this tile: grid rows (b, oy < ho), columns ox < wo
            let mut q = q0;
            while q < q0 + n {
                let (row, ox) = (q / gr.wp, q % gr.wp);
                let (b, oy) = (row / gr.hp, row % gr.hp);
                let end = (q0 + n).min(q + gr.wp - ox);
                if oy < ho && ox < wo {
                    let e = end.min(q + wo - ox);
                    for o in 0..co {
                        let src = &buf[o * n + q - q0..][..e - q];
                        let add = bias.map_or(0.0, |bv| bv[o]);
                        // SAFETY: pixel (b, o, oy, ox..) belongs to grid positions of this tile
                        // only; tiles are disjoint. The run is written through the pointer
                        // before the slice over it is made.
                        let d = unsafe {
                            let p = { dst }.0.add(((b * co + o) * ho + oy) * wo + ox);
                            for (i, v) in src.iter().enumerate() {
                                p.add(i).write(v + add);
                            }
                            std::slice::from_raw_parts_mut(p, e - q)
                        };
                        if let Some(slope) = act {
                            super::kernels::activate(d, slope);
                        }
                    }
                }
                q = end;
            }
        });
    // SAFETY: every one of the n_out output pixels was written above.
    unsafe { out.set_len(n_out) };
    out
}

/// The weight gradient of a [`direct_1d`] conv from the padded input's grid and the output
/// gradient's grid `(g, stride)` (the grid's first position first).
fn direct_weight_grad(
    xp: &Flat,
    (gw, stride): (&[f32], usize),
    g: &ConvGeom,
    gr: &Grid,
) -> Vec<f32> {
    let (co, ci, kk) = (g.cout, g.cin, g.kh * g.kw);
    let mut dw = vec![0f32; co * ci * kk];
    // SAFETY: callers checked `direct_1d` (AVX-512F); the operands' sizes are checked inside.
    unsafe {
        direct::weight_grad(
            &mut dw,
            (ci * kk, kk),
            co,
            ci,
            gr.s,
            (gw, stride),
            (&xp.data, xp.stride),
            direct_offsets(gr, false),
        )
    };
    dw
}

/// Weight gradient `[cout, cin, kh, kw]` for the output gradient `gout` `[batch, cout, ho, wo]`.
pub fn weight_grad(x: &[f32], gout: &[f32], g: &ConvGeom) -> Vec<f32> {
    let gr = Grid::new(g);
    let (co, ci, kk) = (g.cout, g.cin, g.kh * g.kw);
    let xp = padded_input(x, g, &gr);
    let gw = flatten(
        gout,
        (g.batch, co, g.ho(), g.wo()),
        &gr,
        (0, 0),
        PadMode::Zero,
        0,
        0,
    );
    if direct_1d(g) {
        return direct_weight_grad(&xp, (&gw.data, gw.stride), g, &gr);
    }
    let t = tile_len(co + ci);
    let acc = starts(gr.s, t)
        .into_par_iter()
        .fold(
            || vec![0f32; kk * co * ci],
            |mut acc, q0| {
                let n = t.min(gr.s - q0);
                for k in 0..kk {
                    let off = gr.offset(g, k);
                    // SAFETY: acc is this fold's own kk·co·ci buffer.
                    unsafe {
                        gemm_strided(
                            co,
                            ci,
                            n,
                            acc.as_mut_ptr().add(k * co * ci),
                            ci,
                            1,
                            true,
                            Mat {
                                data: &gw.data[q0..],
                                rs: gw.stride,
                                cs: 1,
                            },
                            Mat {
                                data: &xp.data[q0 + off..],
                                rs: 1,
                                cs: xp.stride,
                            },
                            false,
                        )
                    };
                }
                acc
            },
        )
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(u, v)| *u += v);
            a
        })
        .unwrap_or_else(|| vec![0f32; kk * co * ci]);
    let mut dw = vec![0f32; co * ci * kk];
    dw.par_chunks_mut(ci * kk).enumerate().for_each(|(o, row)| {
        for c in 0..ci {
            for k in 0..kk {
                row[c * kk + k] = acc[(k * co + o) * ci + c];
            }
        }
    });
    dw
}

/// One-sample 1-D 3-tap convs on the direct kernels: all requested gradients from ONE grid of
/// the output gradient, scaled by `slope` where `leaky = Some((slope, y))` has `y < 0` (the
/// gradient before a leaky ReLU whose output was `y`) as it is laid out. The bias sums its rows,
/// the weight gradient reads it after its `reach` leading zeros, the input gradient as
/// [`input_grad`]: the same sums in the same order as the separate passes on a separately
/// scaled gradient, without the scaled copy and the second grid. `None` for other convs.
pub fn backward_direct_1d(
    x: &[f32],
    w: &[f32],
    gout: &[f32],
    leaky: Option<(f32, &[f32])>,
    g: &ConvGeom,
    need: Need,
) -> Option<ConvGrads> {
    let one_row = g.batch == 1 && g.h == 1 && g.pad[0] == 0 && g.pad[1] == 0;
    if !one_row || !direct_1d(g) || g.check().is_err() {
        return None;
    }
    let gr = Grid::new(g);
    let (co, ci, wo) = (g.cout, g.cin, g.wo());
    assert_eq!(gout.len(), co * wo, "conv backward: output gradient size");
    assert_eq!(x.len(), ci * g.w, "conv backward: input size");
    if let Some((_, y)) = leaky {
        assert_eq!(y.len(), gout.len(), "conv backward: activated output size");
    }
    let head = gr.reach;
    let gw = flatten_scaled(
        gout,
        (1, co, 1, wo),
        &gr,
        (0, 0),
        PadMode::Zero,
        (head, 0),
        leaky,
    );
    // one sample: the f64 sum over samples of `kernels::conv_backward`, of one term
    let bias = need.bias.then(|| {
        (0..co)
            .into_par_iter()
            .map(|c| {
                std::iter::once(sum_f64(&gw.data[c * gw.stride + head..][..wo])).sum::<f64>() as f32
            })
            .collect()
    });
    let weight = need.weight.then(|| {
        let xp = padded_input(x, g, &gr);
        direct_weight_grad(&xp, (&gw.data[head..], gw.stride), g, &gr)
    });
    let dx = need.x.then(|| input_grad_on(w, &gw, g, &gr));
    Some(ConvGrads {
        x: dx,
        weight,
        bias,
    })
}

/// Input gradient `[batch, cin, h, w]` for the output gradient `gout` `[batch, cout, ho, wo]`.
pub fn input_grad(w: &[f32], gout: &[f32], g: &ConvGeom) -> Vec<f32> {
    let gr = Grid::new(g);
    let gw = flatten(
        gout,
        (g.batch, g.cout, g.ho(), g.wo()),
        &gr,
        (0, 0),
        PadMode::Zero,
        gr.reach,
        0,
    );
    input_grad_on(w, &gw, g, &gr)
}

/// [`input_grad`] from the output gradient's grid `gw` (preceded by `reach` zeros).
fn input_grad_on(w: &[f32], gw: &Flat, g: &ConvGeom, gr: &Grid) -> Vec<f32> {
    let gr = *gr;
    let (co, ci, kk) = (g.cout, g.cin, g.kh * g.kw);
    // Written whole by the first offset's GEMMs (accumulate = false; the tiles cover every
    // column, co ≥ 1), so not zero-filled first.
    let mut dxp: Vec<f32> = Vec::with_capacity(ci * gr.s);
    if co == 0 || kk == 0 {
        dxp.resize(ci * gr.s, 0.0);
    }
    let dst = Out(dxp.as_mut_ptr());
    let t = tile_len(co + ci);
    let direct = direct_1d(g);
    starts(gr.s, t).into_par_iter().for_each(|p0| {
        let n = t.min(gr.s - p0);
        if direct {
            let taps = direct::Taps {
                w,
                rs: kk,
                ss: ci * kk,
                ts: 1,
            };
            // SAFETY: `direct_1d` checked AVX-512F; this task alone writes columns p0..p0+n of
            // every row of dxp.
            unsafe {
                direct::corr(
                    { dst }.0.add(p0),
                    gr.s,
                    ci,
                    n,
                    co,
                    taps,
                    &gw.data[p0..],
                    gw.stride,
                    direct_offsets(&gr, true),
                )
            };
            return;
        }
        for k in 0..kk {
            let off = gr.offset(g, k);
            // SAFETY: this task alone writes columns p0..p0+n of every row of dxp.
            unsafe {
                gemm_strided(
                    ci,
                    n,
                    co,
                    { dst }.0.add(p0),
                    gr.s,
                    1,
                    k > 0,
                    tap(w, g, k, true),
                    Mat {
                        data: &gw.data[gr.reach + p0 - off..],
                        rs: gw.stride,
                        cs: 1,
                    },
                    false,
                )
            };
        }
    });
    // SAFETY: see above; every element of dxp was written by the direct kernel or the k = 0
    // GEMMs.
    unsafe { dxp.set_len(ci * gr.s) };
    // fold the padded grid back onto the input: per grid row, the interior columns as one
    // contiguous add, then the border columns onto the pixels they mirror. A pixel gets at most
    // one border term per row, so with one grid row per sample (1-D) or zero padding (no border
    // terms) the sums are those of column order; 2-D reflect padding may differ in the last bit.
    let (h, w, pl) = (g.h, g.w, g.pad[2]);
    let fy = axis(gr.hp, h, g.pad[0], g.mode);
    let fx = axis(gr.wp, w, pl, g.mode);
    let border: Vec<(usize, usize)> = fx
        .iter()
        .enumerate()
        .filter(|&(px, _)| px < pl || px >= pl + w)
        .filter_map(|(px, x)| x.map(|x| (px, x)))
        .collect();
    // Without mirrored rows (no vertical padding, or zero padding) every input row is the
    // interior of exactly one grid row, so its interior is copied (not added onto zeros) and the
    // buffer need not be zero-filled first.
    let copy_rows = (g.pad[0] == 0 && g.pad[1] == 0) || g.mode == PadMode::Zero;
    let n_dx = g.batch * ci * h * w;
    let mut dx: Vec<f32> = if copy_rows {
        Vec::with_capacity(n_dx)
    } else {
        vec![0f32; n_dx]
    };
    let dx_ptr = Out(dx.as_mut_ptr());
    (0..g.batch * ci).into_par_iter().for_each(|i| {
        // SAFETY: plane i is this task's alone, inside dx's capacity; with `copy_rows` each of
        // its elements is written (rows: fy is the identity) before any is read.
        let plane = unsafe { std::slice::from_raw_parts_mut({ dx_ptr }.0.add(i * h * w), h * w) };
        let (b, c) = (i / ci, i % ci);
        let src = &dxp[c * gr.s + b * gr.hp * gr.wp..][..gr.hp * gr.wp];
        for (py, srow) in src.chunks_exact(gr.wp).enumerate() {
            let Some(y) = fy[py] else { continue };
            let drow = &mut plane[y * w..][..w];
            if copy_rows {
                drow.copy_from_slice(&srow[pl..pl + w]);
            } else {
                for (d, v) in drow.iter_mut().zip(&srow[pl..pl + w]) {
                    *d += v;
                }
            }
            for &(px, x) in &border {
                drow[x] += srow[px];
            }
        }
    });
    // SAFETY: every element was written above (see `copy_rows`), or dx was zero-filled.
    unsafe { dx.set_len(n_dx) };
    dx
}
