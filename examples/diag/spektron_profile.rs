//! Timing of the Spektron model parts at the default size (forward + backward), used to find
//! where pretraining time goes: `cargo run --release --example spektron_profile`.

use std::time::Instant;

use burn::tensor::{Distribution, Int, Tensor};
use spx::backend::{DeviceSpec, seeded};
use spx::config::Config;
use spx::spektron::model::SpektronModel;
use spx::spektron::model::mamba::{MambaBlock, MambaDims};

fn main() {
    let dev = DeviceSpec::Cpu.autodiff_device().unwrap();
    let mut rng = seeded(&dev, 1);
    let cfg = Config::default().spektron.model;
    let b: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let lay = cfg.layout();
    let dims = MambaDims {
        d_model: cfg.d_model,
        d_state: cfg.d_state,
        d_conv: cfg.d_conv,
        expand: cfg.expand,
        dt_min: cfg.dt_min,
        dt_max: cfg.dt_max,
    };
    let mb = MambaBlock::new(&dims, &mut rng, &dev);
    let x = Tensor::<3>::random(
        [b, lay.n_tokens, cfg.d_model],
        Distribution::Normal(0.0, 1.0),
        &dev,
    );
    for rep in 0..2 {
        let t = Instant::now();
        let y = mb.forward(x.clone());
        let tf = t.elapsed().as_secs_f64();
        let g = y.powi_scalar(2).mean().backward();
        let _ = mb.in_proj.weight.grad(&g);
        println!(
            "mamba block B={b}: fwd {:.3}s total {:.3}s (rep {rep})",
            tf,
            t.elapsed().as_secs_f64()
        );
    }
    let model = SpektronModel::new(&cfg, &mut rng, &dev).unwrap();
    let p = Tensor::<3>::random(
        [b, lay.n_patches, lay.patch],
        Distribution::Normal(0.0, 1.0),
        &dev,
    );
    let d = Tensor::<1, Int>::zeros([b], &dev);
    for rep in 0..2 {
        let t = Instant::now();
        let o = model.forward(p.clone(), d.clone(), None);
        let tf = t.elapsed().as_secs_f64();
        let g = o.recon.powi_scalar(2).mean().backward();
        let _ = model.patch_embed.weight.grad(&g);
        println!(
            "model B={b}: fwd {:.3}s total {:.3}s (rep {rep})",
            tf,
            t.elapsed().as_secs_f64()
        );
    }
}
