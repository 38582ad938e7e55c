//! The reconstruction kernel: a fiber top-hat (radius `R`) convolved with the double-Gaussian
//! seeing profile, normalised to unit integral (units arcsec⁻²), tabulated radially once per
//! run over (seeing, r) so that no pair (fiber, pixel) re-integrates it.

use rayon::prelude::*;

use super::KernelConvention;

/// Gauss–Legendre nodes/weights on [-1, 1] (8 points).
const GL_X: [f64; 4] = [
    0.183_434_642_495_649_8,
    0.525_532_409_916_329,
    0.796_666_477_413_626_7,
    0.960_289_856_497_536_3,
];
const GL_W: [f64; 4] = [
    0.362_683_783_378_362,
    0.313_706_645_877_887_3,
    0.222_381_034_453_374_5,
    0.101_228_536_290_376_3,
];

/// exp(-x)·I0(x) for x ≥ 0 (Abramowitz & Stegun 9.8.1–9.8.2, |rel. err| < 2e-7).
pub fn i0e(x: f64) -> f64 {
    if x < 3.75 {
        let t = (x / 3.75).powi(2);
        let i0 = 1.0
            + t * (3.515_622_9
                + t * (3.089_942_4
                    + t * (1.206_749_2 + t * (0.265_973_2 + t * (0.036_076_8 + t * 0.004_581_3)))));
        i0 * (-x).exp()
    } else {
        let t = 3.75 / x;
        let p = 0.398_942_28
            + t * (0.013_285_92
                + t * (0.002_253_19
                    + t * (-0.001_575_65
                        + t * (0.009_162_81
                            + t * (-0.020_577_06
                                + t * (0.026_355_37 + t * (-0.016_476_33 + t * 0.003_923_77)))))));
        p / x.sqrt()
    }
}

/// A normalised circular Gaussian (σ) averaged over a disk of radius `radius` centred at
/// distance `r`: (1/πR²) ∫_disk G. Radial integral with the angular part done by I0.
pub fn disk_gaussian(r: f64, sigma: f64, radius: f64) -> f64 {
    let s2 = sigma * sigma;
    // Panels a fraction of σ wide keep the 8-point rule accurate to ~1e-9 (disk edge on a
    // panel boundary).
    let panels = (2.0 * radius / sigma).ceil().clamp(4.0, 32.0) as usize;
    let h = radius / panels as f64;
    let mut sum = 0.0;
    for p in 0..panels {
        let mid = (p as f64 + 0.5) * h;
        for k in 0..4 {
            for sign in [-1.0, 1.0] {
                let rho = mid + sign * GL_X[k] * 0.5 * h;
                let d = r - rho;
                sum += GL_W[k]
                    * 0.5
                    * h
                    * (rho / s2)
                    * (-(d * d) / (2.0 * s2)).exp()
                    * i0e(r * rho / s2);
            }
        }
    }
    // ∫ρ dρ dθ G /(2πσ²) with the θ-integral 2π·I0; divide by the disk area.
    sum / (std::f64::consts::PI * radius * radius)
}

/// Kernel model: fiber radius and the seeing → double-Gaussian mapping.
#[derive(Clone, Copy, Debug)]
pub struct KernelModel {
    pub fiber_radius: f64,
    pub convention: KernelConvention,
}

impl KernelModel {
    /// (weight, σ) of the two Gaussians for a seeing FWHM (arcsec); weights sum to 1.
    /// σ1 = seeing/2.355/1.05 and σ2 = 2σ1 in both conventions (paper Eqs. 26–27, code).
    pub fn gaussians(&self, seeing: f64) -> [(f64, f64); 2] {
        let s1 = seeing / 2.355 / 1.05;
        // "code": normalised Gaussians weighted 1 : 1/9. "paper": central values 1 : 1/9, i.e.
        // integrals 1 : 4/9 because the outer Gaussian is twice as wide.
        let a2 = match self.convention {
            KernelConvention::Code => 1.0 / 9.0,
            KernelConvention::Paper => 4.0 / 9.0,
        };
        [(1.0 / (1.0 + a2), s1), (a2 / (1.0 + a2), 2.0 * s1)]
    }

    /// The kernel at radius r (arcsec) by direct integration (slow; the table uses it).
    pub fn direct(&self, r: f64, seeing: f64) -> f64 {
        self.gaussians(seeing)
            .iter()
            .map(|&(w, s)| w * disk_gaussian(r, s, self.fiber_radius))
            .sum()
    }
}

/// Radial lookup table K(r; seeing) in arcsec⁻²; zero beyond `rmax`.
#[derive(Clone, Debug)]
pub struct KernelTable {
    pub model: KernelModel,
    pub rmax: f64,
    seeing0: f64,
    dseeing: f64,
    nseeing: usize,
    dr: f64,
    nr: usize,
    data: Vec<f64>,
}

impl KernelTable {
    pub const SEEING_MIN: f64 = 0.2;
    pub const SEEING_MAX: f64 = 4.0;

    /// The full seeing range [`Self::SEEING_MIN`, `Self::SEEING_MAX`].
    pub fn new(model: KernelModel, rmax: f64) -> Self {
        Self::with_range(model, rmax, Self::SEEING_MIN, Self::SEEING_MAX)
    }

    /// Only seeing in [lo, hi] (clamped to the full range), which is all one cube needs.
    pub fn with_range(model: KernelModel, rmax: f64, lo: f64, hi: f64) -> Self {
        let dseeing = 0.01;
        let seeing0 = ((lo.max(Self::SEEING_MIN) / dseeing).floor() * dseeing)
            .min(Self::SEEING_MAX - dseeing);
        let hi = hi.clamp(seeing0 + dseeing, Self::SEEING_MAX);
        let dr = 0.01;
        let nseeing = ((hi - seeing0) / dseeing).ceil() as usize + 1;
        let nr = (rmax / dr).ceil() as usize + 4;
        let data: Vec<f64> = (0..nseeing)
            .into_par_iter()
            .flat_map_iter(|is| {
                let s = seeing0 + is as f64 * dseeing;
                (0..nr).map(move |ir| model.direct(ir as f64 * dr, s))
            })
            .collect();
        KernelTable {
            model,
            rmax,
            seeing0,
            dseeing,
            nseeing,
            dr,
            nr,
            data,
        }
    }

    /// Catmull–Rom interpolation in r (using K(−r) = K(r)) at seeing row `is`.
    fn row(&self, is: usize, r: f64) -> f64 {
        let row = &self.data[is * self.nr..(is + 1) * self.nr];
        let u = r / self.dr;
        let i = (u.floor() as usize).min(self.nr - 3);
        let t = u - i as f64;
        let at = |k: isize| row[k.unsigned_abs().min(self.nr - 1)];
        let (p0, p1, p2, p3) = (
            at(i as isize - 1),
            at(i as isize),
            at(i as isize + 1),
            at(i as isize + 2),
        );
        p1 + 0.5
            * t
            * (p2 - p0
                + t * (2.0 * p0 - 5.0 * p1 + 4.0 * p2 - p3 + t * (3.0 * (p1 - p2) + p3 - p0)))
    }

    /// Tabulated seeing range.
    pub fn seeing_range(&self) -> (f64, f64) {
        (
            self.seeing0,
            self.seeing0 + (self.nseeing - 1) as f64 * self.dseeing,
        )
    }

    /// K(r; seeing) in arcsec⁻², 0 for r > rmax. Seeing is clamped to the tabulated range.
    pub fn eval(&self, r: f64, seeing: f64) -> f64 {
        if r > self.rmax {
            return 0.0;
        }
        let u = ((seeing - self.seeing0) / self.dseeing).clamp(0.0, (self.nseeing - 1) as f64);
        let is = (u.floor() as usize).min(self.nseeing - 2);
        let t = u - is as f64;
        (1.0 - t) * self.row(is, r) + t * self.row(is + 1, r)
    }

    /// Full width at half maximum (arcsec) of the kernel at this seeing.
    pub fn fwhm(&self, seeing: f64) -> f64 {
        let half = 0.5 * self.eval(0.0, seeing);
        let (mut lo, mut hi) = (0.0, self.rmax);
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if self.eval(mid, seeing) > half {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo + hi
    }
}

/// Seeing FWHM at wavelength `wave` given the guider seeing at `ref_wave` (λ^(−1/5) scaling).
pub fn seeing_at(seeing_ref: f64, wave: f64, ref_wave: f64) -> f64 {
    seeing_ref * (ref_wave / wave).powf(0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i0e_matches_series() {
        for &x in &[0.0, 0.5, 2.0, 3.7, 3.8, 10.0, 50.0] {
            // Power series of I0, scaled.
            let mut term = 1.0f64;
            let mut sum = 1.0;
            for k in 1..200 {
                term *= (x / 2.0) * (x / 2.0) / (k as f64 * k as f64);
                sum += term;
            }
            let want = sum * (-x).exp();
            assert!((i0e(x) - want).abs() / want < 3e-7, "x={x}");
        }
    }

    #[test]
    fn kernel_has_unit_integral_and_table_matches_direct() {
        let m = KernelModel {
            fiber_radius: 1.0,
            convention: KernelConvention::Code,
        };
        for &s in &[0.8, 1.19, 2.0] {
            // ∫ 2πr K dr over a wide radius.
            let n = 2000;
            let h = 8.0 / n as f64;
            let tot: f64 = (0..n)
                .map(|i| {
                    let r = (i as f64 + 0.5) * h;
                    2.0 * std::f64::consts::PI * r * m.direct(r, s) * h
                })
                .sum();
            assert!((tot - 1.0).abs() < 1e-5, "seeing {s}: integral {tot}");
        }
        let t = KernelTable::new(m, 4.0);
        for &(r, s) in &[(0.0, 1.19), (0.37, 1.234), (1.005, 0.853), (2.51, 1.777)] {
            let (a, b) = (t.eval(r, s), m.direct(r, s));
            assert!(
                (a - b).abs() < 1e-4 * m.direct(0.0, s),
                "r={r} s={s}: {a} vs {b}"
            );
        }
    }
}
