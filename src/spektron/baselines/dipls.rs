//! di-PLS (Nikzad-Langerodi et al. 2018), a port of diPLSlib's `DIPLS(A, l, heuristic,
//! rescale='Target')` for one target domain. The p×p discrepancy matrix
//! `D = |xsᵀxs/ns − xtᵀxt/nt|` (eigenvalues made absolute) has rank ≤ ns+nt, so it is never
//! formed: with `[xs; xt]ᵀ = Q R`, `D = Q G Qᵀ`, and `w_pls (I + cD)⁻¹ = w_pls − (w_pls Q)(I −
//! (I + cG)⁻¹) Qᵀ`.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, concatenate};

use super::linalg::{centre, col_mean, eigh, pinv, svd};

#[derive(Clone, Debug)]
pub struct DiPls {
    pub b: Array1<f64>,
    pub b0: f64,
    /// Mean of the unlabelled target spectra (prediction centring, `rescale='Target'`).
    pub target_mean: Array1<f64>,
    /// λ used per LV (the heuristic's value when it is on).
    pub lambdas: Vec<f64>,
}

/// Low-rank D = Q G Qᵀ of the current (deflated) xs, xt.
fn discrepancy(xs: ArrayView2<f64>, xt: ArrayView2<f64>) -> (Array2<f64>, Array2<f64>) {
    let (ns, nt) = (xs.nrows() as f64, xt.nrows() as f64);
    let z = concatenate(Axis(0), &[xs, xt]).expect("same width");
    let (u, sv, v) = svd(z.t()); // zᵀ = U S Vᵀ → Q = U, R = S Vᵀ
    let keep = sv.iter().filter(|&&s| s > sv[0] * 1e-13).count().max(1);
    let q = u.slice(ndarray::s![.., ..keep]).to_owned();
    let mut r = v.slice(ndarray::s![.., ..keep]).t().to_owned(); // keep × m
    for (mut row, &s) in r.outer_iter_mut().zip(&sv) {
        row.mapv_inplace(|x| x * s);
    }
    let m = z.nrows();
    let scale: Array1<f64> = (0..m)
        .map(|i| if (i as f64) < ns { 1.0 / ns } else { -1.0 / nt })
        .collect();
    let rs = &r * &scale.view().insert_axis(Axis(0));
    let mm = rs.dot(&r.t());
    let mm = (&mm + &mm.t()) * 0.5;
    let (vals, vecs) = eigh(mm.view());
    let mut g = Array2::<f64>::zeros((keep, keep));
    for (k, lam) in vals.iter().enumerate() {
        let c = vecs.column(k);
        g.scaled_add(
            lam.abs(),
            &c.insert_axis(Axis(1)).dot(&c.insert_axis(Axis(0))),
        );
    }
    (q, g)
}

impl DiPls {
    /// `x`, `y`: labelled source data; `xs`: source spectra; `xt`: unlabelled target spectra.
    /// `lambda` is used unless `heuristic` is set.
    pub fn fit(
        x: ArrayView2<f64>,
        y: ArrayView1<f64>,
        xs: ArrayView2<f64>,
        xt: ArrayView2<f64>,
        n_lv: usize,
        lambda: f64,
        heuristic: bool,
    ) -> DiPls {
        let b0 = y.mean().expect("samples");
        let mut x = centre(x, col_mean(x).view());
        let mut xs = centre(xs, col_mean(xs).view());
        let target_mean = col_mean(xt);
        let mut xt = centre(xt, target_mean.view());
        let mut y = y.mapv(|v| v - b0);
        let p = x.ncols();
        let a_max = n_lv.min(x.nrows().saturating_sub(1)).max(1);
        let (mut w_all, mut p_all, mut c_all) = (Vec::new(), Vec::new(), Vec::new());
        let mut lambdas = Vec::new();
        for _ in 0..a_max {
            let yy = y.dot(&y);
            if yy <= 1e-300 {
                break;
            }
            let mut w_pls = x.t().dot(&y) / yy;
            let mut w = if lambda != 0.0 || heuristic {
                let (q, g) = discrepancy(xs.view(), xt.view());
                let mut l = lambda;
                if heuristic {
                    let nw = w_pls.dot(&w_pls).sqrt();
                    w_pls /= nw;
                    let resid = &x
                        - &y.view()
                            .insert_axis(Axis(1))
                            .dot(&w_pls.view().insert_axis(Axis(0)));
                    let wq = w_pls.dot(&q);
                    l = resid.iter().map(|v| v * v).sum::<f64>() / wq.dot(&g.dot(&wq));
                }
                lambdas.push(l);
                let c = l / yy;
                let k = g.nrows();
                let reg = Array2::<f64>::eye(k) + &(&g * c);
                let inner = Array2::<f64>::eye(k) - pinv(reg.view());
                let wq = w_pls.dot(&q);
                &w_pls - &q.dot(&inner.t().dot(&wq))
            } else {
                lambdas.push(0.0);
                w_pls
            };
            let nw = w.dot(&w).sqrt();
            if nw <= 1e-300 {
                break;
            }
            w /= nw;
            let t = x.dot(&w);
            let ts = xs.dot(&w);
            let tt = xt.dot(&w);
            let t2 = t.dot(&t);
            let c = y.dot(&t) / t2;
            let pl = x.t().dot(&t) / t2;
            let ps = xs.t().dot(&ts) / ts.dot(&ts).max(1e-300);
            let pt = xt.t().dot(&tt) / tt.dot(&tt).max(1e-300);
            let outer = |a: &Array1<f64>, b: &Array1<f64>| {
                a.view()
                    .insert_axis(Axis(1))
                    .dot(&b.view().insert_axis(Axis(0)))
            };
            x -= &outer(&t, &pl);
            xs -= &outer(&ts, &ps);
            if xt.iter().any(|&v| v != 0.0) {
                xt -= &outer(&tt, &pt);
            }
            y.scaled_add(-c, &t);
            w_all.push(w);
            p_all.push(pl);
            c_all.push(c);
        }
        let a = w_all.len();
        let mut wm = Array2::<f64>::zeros((p, a));
        let mut pm = Array2::<f64>::zeros((p, a));
        for k in 0..a {
            wm.column_mut(k).assign(&w_all[k]);
            pm.column_mut(k).assign(&p_all[k]);
        }
        let c = Array1::from(c_all);
        let b = wm.dot(&pinv(pm.t().dot(&wm).view()).dot(&c));
        DiPls {
            b,
            b0,
            target_mean,
            lambdas,
        }
    }

    pub fn predict(&self, x: ArrayView2<f64>) -> Array1<f64> {
        centre(x, self.target_mean.view()).dot(&self.b) + self.b0
    }
}
