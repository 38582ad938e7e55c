//! Image-quality numbers of the paper's Tables 1–2: FWHM from a kernel-model fit (seeing free,
//! as in the paper, not a Gaussian), pseudo-Strehl, neighbour correlations.

use ndarray::Array2;

use super::grid::Grid;
use super::kernel::KernelTable;
use crate::io::fits::Column;

/// Sparse correlation matrix of one slice: upper triangle (diagonal included) with |ρ| above
/// the threshold; (C1, C2) = (x, y) index of each spaxel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Correl {
    pub i_c1: Vec<i32>,
    pub i_c2: Vec<i32>,
    pub j_c1: Vec<i32>,
    pub j_c2: Vec<i32>,
    pub rho: Vec<f64>,
}

impl Correl {
    /// The MaNGA xCORREL binary-table columns (shared by cubes and shard parts).
    pub fn columns(&self) -> Vec<Column> {
        vec![
            Column::I32("INDXI_C1".into(), self.i_c1.clone()),
            Column::I32("INDXI_C2".into(), self.i_c2.clone()),
            Column::I32("INDXJ_C1".into(), self.j_c1.clone()),
            Column::I32("INDXJ_C2".into(), self.j_c2.clone()),
            Column::F64("RHOIJ".into(), self.rho.clone()),
        ]
    }

    /// Read an xCORREL table.
    pub fn read(
        f: &mut crate::io::fits::FitsReader,
        table: &str,
    ) -> Result<Self, crate::error::SpxError> {
        let mut i32col = |c: &str| -> Result<Vec<i32>, crate::error::SpxError> {
            f.col_i64(table, c)?
                .into_iter()
                .map(|v| {
                    i32::try_from(v).map_err(|_| {
                        crate::error::SpxError::field(
                            f.path(),
                            format!("{table}.{c}"),
                            "index out of range",
                        )
                    })
                })
                .collect()
        };
        let (i_c1, i_c2, j_c1, j_c2) = (
            i32col("INDXI_C1")?,
            i32col("INDXI_C2")?,
            i32col("INDXJ_C1")?,
            i32col("INDXJ_C2")?,
        );
        let rho = f.col_f64(table, "RHOIJ")?;
        Ok(Correl {
            i_c1,
            i_c2,
            j_c1,
            j_c2,
            rho,
        })
    }

    /// ρ between spaxels (x1, y1) and (x2, y2), 0 if not stored.
    pub fn get(&self, a: (i32, i32), b: (i32, i32)) -> f64 {
        for k in 0..self.rho.len() {
            let p = (self.i_c1[k], self.i_c2[k]);
            let q = (self.j_c1[k], self.j_c2[k]);
            if (p == a && q == b) || (p == b && q == a) {
                return self.rho[k];
            }
        }
        0.0
    }
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct PsfFit {
    pub x0: f64,
    pub y0: f64,
    pub seeing: f64,
    pub amplitude: f64,
    /// FWHM (arcsec) of the fitted kernel.
    pub fwhm: f64,
}

/// Least-squares fit of amp·K(|x − x0|; seeing)·p² to an image (nside × nside); amplitude in
/// closed form, (x0, y0, seeing) by Nelder–Mead.
pub fn fit_psf(img: &Array2<f64>, grid: &Grid, table: &KernelTable) -> PsfFit {
    let p2 = grid.pixel * grid.pixel;
    let pix: Vec<(f64, f64, f64)> = img
        .indexed_iter()
        .filter(|(_, v)| v.is_finite())
        .map(|((iy, ix), &v)| {
            let (x, y) = grid.centre(iy * grid.nside + ix);
            (x, y, v)
        })
        .collect();
    let (lo, hi) = table.seeing_range();
    let model = |q: &[f64; 3]| -> (f64, f64) {
        let s = q[2].clamp(lo, hi);
        let (mut kk, mut kv) = (0.0, 0.0);
        let ks: Vec<f64> = pix
            .iter()
            .map(|&(x, y, v)| {
                let k = table.eval((x - q[0]).hypot(y - q[1]), s) * p2;
                kk += k * k;
                kv += k * v;
                k
            })
            .collect();
        let amp = if kk > 0.0 { kv / kk } else { 0.0 };
        let mut chi = pix
            .iter()
            .zip(&ks)
            .map(|(&(_, _, v), k)| (v - amp * k).powi(2))
            .sum::<f64>();
        // Keep the search inside the tabulated seeing range.
        chi += 1e6 * ((q[2] - s).abs());
        (chi, amp)
    };
    // Start at the brightest pixel.
    let (bx, by, _) = pix
        .iter()
        .copied()
        .fold((0.0, 0.0, f64::MIN), |a, b| if b.2 > a.2 { b } else { a });
    let best = nelder_mead(|q| model(q).0, [bx, by, 1.2], [0.3, 0.3, 0.3], 400);
    let s = best[2].clamp(lo, hi);
    PsfFit {
        x0: best[0],
        y0: best[1],
        seeing: s,
        amplitude: model(&best).1,
        fwhm: table.fwhm(s),
    }
}

fn nelder_mead(
    f: impl Fn(&[f64; 3]) -> f64,
    x0: [f64; 3],
    step: [f64; 3],
    iters: usize,
) -> [f64; 3] {
    let mut pts: Vec<([f64; 3], f64)> = (0..4)
        .map(|k| {
            let mut p = x0;
            if k > 0 {
                p[k - 1] += step[k - 1];
            }
            (p, f(&p))
        })
        .collect();
    for _ in 0..iters {
        pts.sort_by(|a, b| a.1.total_cmp(&b.1));
        let mut c = [0.0; 3];
        for p in &pts[..3] {
            for (cd, pd) in c.iter_mut().zip(&p.0) {
                *cd += pd / 3.0;
            }
        }
        let at = |t: f64| {
            let mut q = [0.0; 3];
            for d in 0..3 {
                q[d] = c[d] + t * (pts[3].0[d] - c[d]);
            }
            q
        };
        let xr = at(-1.0);
        let fr = f(&xr);
        if fr < pts[0].1 {
            let xe = at(-2.0);
            let fe = f(&xe);
            pts[3] = if fe < fr { (xe, fe) } else { (xr, fr) };
        } else if fr < pts[2].1 {
            pts[3] = (xr, fr);
        } else {
            let xc = at(0.5);
            let fc = f(&xc);
            if fc < pts[3].1 {
                pts[3] = (xc, fc);
            } else {
                let b = pts[0].0;
                for p in pts.iter_mut().skip(1) {
                    for (pd, bd) in p.0.iter_mut().zip(&b) {
                        *pd = bd + 0.5 * (*pd - bd);
                    }
                    p.1 = f(&p.0);
                }
            }
        }
        let spread = pts
            .iter()
            .map(|p| (p.1 - pts[0].1).abs())
            .fold(0.0, f64::max);
        if spread < 1e-16 * pts[0].1.abs().max(1e-300) {
            break;
        }
    }
    pts.sort_by(|a, b| a.1.total_cmp(&b.1));
    pts[0].0
}

/// Peak of the image over the peak of the true (kernel-convolved) point-source image of total
/// flux `flux` at this seeing: flux·K(0)·p².
pub fn pseudo_strehl(
    img: &Array2<f64>,
    flux: f64,
    grid: &Grid,
    table: &KernelTable,
    seeing: f64,
) -> f64 {
    let peak = img.iter().copied().fold(f64::MIN, f64::max);
    peak / (flux * table.eval(0.0, seeing) * grid.pixel * grid.pixel)
}

/// Quadratic mean of ρ between spaxel `c` = (x, y) and its four neighbours at `d` pixels
/// along the axes (paper Table 2).
pub fn neighbour_correlation(cr: &Correl, c: (i32, i32), d: i32) -> f64 {
    let nb = [(d, 0), (-d, 0), (0, d), (0, -d)];
    let ss: f64 = nb
        .iter()
        .map(|&(dx, dy)| cr.get(c, (c.0 + dx, c.1 + dy)).powi(2))
        .sum();
    (ss / 4.0).sqrt()
}
