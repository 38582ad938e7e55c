//! Wavelet tokens: the concatenated db4 coefficients `[cA4 | cD4 | cD3 | cD2 | cD1]` cut into
//! non-overlapping patches (zero-padded at the end), then `[CLS]` and `[DOMAIN]` in front; or,
//! with `spektron.model.embedding = "raw"` (E7's ablation), the spectrum itself cut into patches.
//! Every consumer (embedding, masking, heads, losses) takes its sizes from [`TokenLayout`].

use super::wavelet;

/// Tokens placed before the patch tokens: `[CLS]`, `[DOMAIN]`.
pub const N_SPECIAL: usize = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenLayout {
    pub n_points: usize,
    pub level: usize,
    pub patch: usize,
    /// `[cA_L, cD_L, …, cD_1]` lengths.
    pub coeff_lens: Vec<usize>,
    /// Sum of `coeff_lens`.
    pub n_coeffs: usize,
    /// ⌈n_coeffs / patch⌉.
    pub n_patches: usize,
    /// `n_patches + N_SPECIAL`.
    pub n_tokens: usize,
    /// Wavelet coefficients (true) or the raw spectrum (false, `level` 0) as token values.
    pub wavelet: bool,
}

impl TokenLayout {
    /// The single place the token count is derived.
    pub fn new(n_points: usize, level: usize, patch: usize) -> Self {
        let coeff_lens = wavelet::wavedec_lengths(n_points, level);
        let n_coeffs: usize = coeff_lens.iter().sum();
        let n_patches = n_coeffs.div_ceil(patch);
        TokenLayout {
            n_points,
            level,
            patch,
            coeff_lens,
            n_coeffs,
            n_patches,
            n_tokens: n_patches + N_SPECIAL,
            wavelet: true,
        }
    }

    /// Raw-spectrum tokens: the `n_points` values cut into patches (no wavelet transform).
    pub fn raw(n_points: usize, patch: usize) -> Self {
        let n_patches = n_points.div_ceil(patch);
        TokenLayout {
            n_points,
            level: 0,
            patch,
            coeff_lens: vec![n_points],
            n_coeffs: n_points,
            n_patches,
            n_tokens: n_patches + N_SPECIAL,
            wavelet: false,
        }
    }

    /// Padded coefficient vector length (`n_patches · patch`).
    pub fn padded(&self) -> usize {
        self.n_patches * self.patch
    }

    /// Spectrum → padded coefficient vector (row-major `[n_patches, patch]`).
    pub fn encode(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(x.len(), self.n_points, "spectrum length");
        if !self.wavelet {
            let mut out = x.to_vec();
            out.resize(self.padded(), 0.0);
            return out;
        }
        let xd: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let mut out = Vec::with_capacity(self.padded());
        for c in wavelet::wavedec(&xd, self.level) {
            out.extend(c.iter().map(|&v| v as f32));
        }
        out.resize(self.padded(), 0.0);
        out
    }

    /// Padded coefficient vector → spectrum (the padding is ignored).
    pub fn decode(&self, p: &[f32]) -> Vec<f32> {
        assert_eq!(p.len(), self.padded(), "patch vector length");
        if !self.wavelet {
            return p[..self.n_points].to_vec();
        }
        let mut coeffs = Vec::with_capacity(self.coeff_lens.len());
        let mut o = 0;
        for &l in &self.coeff_lens {
            coeffs.push(p[o..o + l].iter().map(|&v| f64::from(v)).collect());
            o += l;
        }
        wavelet::waverec(&coeffs, self.n_points)
            .into_iter()
            .map(|v| v as f32)
            .collect()
    }

    /// Dense synthesis matrix `[padded, n_points]` (row i = spectrum of unit coefficient i), so
    /// the model can map reconstructed coefficients back to a spectrum inside the graph.
    pub fn synthesis_matrix(&self) -> Vec<f32> {
        let mut m = vec![0.0f32; self.padded() * self.n_points];
        let mut e = vec![0.0f32; self.padded()];
        for i in 0..self.n_coeffs {
            e[i] = 1.0;
            let row = self.decode(&e);
            m[i * self.n_points..(i + 1) * self.n_points].copy_from_slice(&row);
            e[i] = 0.0;
        }
        m
    }
}
