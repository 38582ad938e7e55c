//! Heads: VIB (z_chem from [CLS], z_inst from [DOMAIN]), masked-patch reconstruction and
//! property regression on z_chem.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Tensor};

#[derive(Module, Debug)]
pub struct Heads {
    pub vib_chem: Linear,
    pub vib_inst: Linear,
    pub recon: Linear,
    pub regress: Linear,
    /// FNO transfer head (`spektron.model.head = "fno"`), used instead of `regress`.
    pub fno: Option<super::fno::FnoHead>,
    pub z_chem: usize,
    pub z_inst: usize,
}

/// Mean and log-variance of a diagonal Gaussian.
#[derive(Clone, Debug)]
pub struct Gaussian {
    pub mu: Tensor<2>,
    pub logvar: Tensor<2>,
}

impl Gaussian {
    /// Reparameterised sample μ + σ·ε (ε from burn's seeded RNG).
    pub fn sample(&self) -> Tensor<2> {
        let eps = Tensor::random(
            self.mu.shape(),
            Distribution::Normal(0.0, 1.0),
            &self.mu.device(),
        );
        self.mu.clone() + (self.logvar.clone() * 0.5).exp() * eps
    }
}

impl Heads {
    pub fn new(
        d_model: usize,
        patch: usize,
        z_chem: usize,
        z_inst: usize,
        n_targets: usize,
        device: &Device,
    ) -> Self {
        Heads {
            vib_chem: LinearConfig::new(d_model, 2 * z_chem).init(device),
            vib_inst: LinearConfig::new(d_model, 2 * z_inst).init(device),
            recon: LinearConfig::new(d_model, patch).init(device),
            regress: LinearConfig::new(z_chem, n_targets).init(device),
            fno: None,
            z_chem,
            z_inst,
        }
    }

    fn gaussian(lin: &Linear, h: Tensor<2>, z: usize) -> Gaussian {
        let p = lin.forward(h);
        Gaussian {
            mu: p.clone().narrow(1, 0, z),
            // Clamped so exp(logvar) cannot overflow early in training.
            logvar: p.narrow(1, z, z).clamp(-10.0, 10.0),
        }
    }

    pub fn chem(&self, cls: Tensor<2>) -> Gaussian {
        Self::gaussian(&self.vib_chem, cls, self.z_chem)
    }

    /// Properties `[B, n_targets]` from z_chem's mean.
    pub fn property(&self, z: Tensor<2>) -> Tensor<2> {
        match &self.fno {
            Some(f) => f.forward(z),
            None => self.regress.forward(z),
        }
    }

    pub fn inst(&self, dom: Tensor<2>) -> Gaussian {
        Self::gaussian(&self.vib_inst, dom, self.z_inst)
    }
}
