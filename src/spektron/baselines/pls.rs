//! PLS1 regression, centred and not scaled (chemometric convention; sklearn's `scale=True`
//! default is not). Two algorithms with identical predictions: NIPALS (deflates X) and the
//! improved kernel algorithm #1 of Dayal & MacGregor (1997), which only deflates Xᵀy and so
//! suits p = 2048. One fit gives every prefix model 1..=A, which makes k-fold CV cheap.

use ndarray::{Array1, ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

use super::linalg::{centre, col_mean, rows};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlsAlgorithm {
    Nipals,
    Kernel,
}

/// A fitted PLS1 model: `ŷ = (x − x̄)·B_a + ȳ` for every a = 1..=A.
#[derive(Clone, Debug)]
pub struct Pls {
    pub x_mean: Array1<f64>,
    pub y_mean: f64,
    /// `coefs[a-1]` = regression vector with a latent variables.
    pub coefs: Vec<Array1<f64>>,
}

impl Pls {
    /// Fit up to `a_max` LVs (fewer if X runs out of rank).
    pub fn fit(x: ArrayView2<f64>, y: ArrayView1<f64>, a_max: usize, alg: PlsAlgorithm) -> Pls {
        let x_mean = col_mean(x);
        let y_mean = y.mean().expect("at least one sample");
        let xc = centre(x, x_mean.view());
        let yc = y.mapv(|v| v - y_mean);
        let a_max = a_max.min(x.nrows().saturating_sub(1)).min(x.ncols()).max(1);
        let mut coefs = match alg {
            PlsAlgorithm::Nipals => nipals(xc, yc, a_max),
            PlsAlgorithm::Kernel => kernel(xc.view(), yc.view(), a_max),
        };
        if coefs.is_empty() {
            // y (or X) has no variance left to explain: the model is the mean of y.
            coefs.push(Array1::zeros(x.ncols()));
        }
        Pls {
            x_mean,
            y_mean,
            coefs,
        }
    }

    pub fn n_lv(&self) -> usize {
        self.coefs.len()
    }

    /// Coefficients with `a` LVs (clamped to the fitted count).
    pub fn coef(&self, a: usize) -> &Array1<f64> {
        &self.coefs[a.clamp(1, self.coefs.len()) - 1]
    }

    pub fn predict(&self, x: ArrayView2<f64>, a: usize) -> Array1<f64> {
        self.predict_centred_on(x, self.x_mean.view(), a)
    }

    /// Predict after centring `x` on another mean (re-centring on target spectra).
    pub fn predict_centred_on(
        &self,
        x: ArrayView2<f64>,
        mean: ArrayView1<f64>,
        a: usize,
    ) -> Array1<f64> {
        centre(x, mean).dot(self.coef(a)) + self.y_mean
    }
}

const TINY: f64 = 1e-300;

fn nipals(mut e: ndarray::Array2<f64>, mut f: Array1<f64>, a_max: usize) -> Vec<Array1<f64>> {
    let p = e.ncols();
    let mut b = Array1::<f64>::zeros(p);
    let mut rs: Vec<Array1<f64>> = Vec::new();
    let mut ps: Vec<Array1<f64>> = Vec::new();
    let mut out = Vec::new();
    for _ in 0..a_max {
        let mut w = e.t().dot(&f);
        let nw = w.dot(&w).sqrt();
        if nw < TINY {
            break;
        }
        w /= nw;
        let t = e.dot(&w);
        let tt = t.dot(&t);
        if tt < TINY {
            break;
        }
        let pl = e.t().dot(&t) / tt;
        let q = f.dot(&t) / tt;
        // r = W (PᵀW)⁻¹ column by column: r_a = w_a − Σ_j (p_jᵀ w_a) r_j.
        let mut r = w.clone();
        for (rj, pj) in rs.iter().zip(&ps) {
            r.scaled_add(-pj.dot(&w), rj);
        }
        e -= &(t
            .view()
            .insert_axis(ndarray::Axis(1))
            .dot(&pl.view().insert_axis(ndarray::Axis(0))));
        f.scaled_add(-q, &t);
        b.scaled_add(q, &r);
        out.push(b.clone());
        rs.push(r);
        ps.push(pl);
    }
    out
}

fn kernel(x: ArrayView2<f64>, y: ArrayView1<f64>, a_max: usize) -> Vec<Array1<f64>> {
    let p = x.ncols();
    let mut xty = x.t().dot(&y);
    let mut b = Array1::<f64>::zeros(p);
    let mut rs: Vec<Array1<f64>> = Vec::new();
    let mut ps: Vec<Array1<f64>> = Vec::new();
    let mut out = Vec::new();
    for _ in 0..a_max {
        let nw = xty.dot(&xty).sqrt();
        if nw < TINY {
            break;
        }
        let w = &xty / nw;
        let mut r = w.clone();
        for (rj, pj) in rs.iter().zip(&ps) {
            r.scaled_add(-pj.dot(&w), rj);
        }
        let t = x.dot(&r);
        let tt = t.dot(&t);
        if tt < TINY {
            break;
        }
        let v = x.t().dot(&t);
        let q = xty.dot(&r) / tt;
        xty.scaled_add(-q, &v);
        b.scaled_add(q, &r);
        out.push(b.clone());
        rs.push(r);
        ps.push(v / tt);
    }
    out
}

/// k-fold CV: PRESS for 1..=a_max LVs over the given folds (`folds[i]` = test rows of fold i);
/// returns (best LV count = first minimum, PRESS per LV count).
pub fn cv_press(
    x: ArrayView2<f64>,
    y: ArrayView1<f64>,
    folds: &[Vec<usize>],
    a_max: usize,
    alg: PlsAlgorithm,
) -> (usize, Vec<f64>) {
    let n = x.nrows();
    let mut press = vec![0.0; a_max];
    for test in folds {
        let mut is_test = vec![false; n];
        for &i in test {
            is_test[i] = true;
        }
        let train: Vec<usize> = (0..n).filter(|&i| !is_test[i]).collect();
        let m = Pls::fit(
            rows(x, &train).view(),
            y.select(ndarray::Axis(0), &train).view(),
            a_max,
            alg,
        );
        let xt = rows(x, test);
        for (a, pr) in press.iter_mut().enumerate() {
            let yh = m.predict(xt.view(), a + 1);
            *pr += test
                .iter()
                .zip(yh.iter())
                .map(|(&i, &h)| (y[i] - h).powi(2))
                .sum::<f64>();
        }
    }
    let best = press
        .iter()
        .enumerate()
        .fold(
            (0, f64::INFINITY),
            |b, (i, &v)| if v < b.1 { (i, v) } else { b },
        )
        .0;
    (best + 1, press)
}
