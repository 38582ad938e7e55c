//! Where one PtychoPINN training step spends its time (N = 64, C = 4, batch 16, reference
//! 2.34M-parameter network, CPU flex backend). Times each piece forward-only and forward +
//! backward, then the whole step:
//! `cargo run --release --example ptycho_profile [-- reps [N filters_base border_filters]]`
//! (the quick dose-study network: `-- 5 32 16 16`).

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use spx::ptycho::PtychoConfig;
use spx::ptycho::fixture::{self, PinnBatch};
use spx::ptycho::losses;
use spx::ptycho::model::PtychoPinn;
use spx::ptycho::physics::{self, Cplx, GroupGeometry};

/// Median wall time of `reps` runs of `f`, in milliseconds.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let arg = |i: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse::<usize>().ok())
    };
    let (b, ch, n) = (16usize, 4usize, arg(2).unwrap_or(64));
    let mut mc = PtychoConfig::default().pinn.model;
    mc.filters_base = arg(3).unwrap_or(0);
    mc.border_filters = arg(4).unwrap_or(0);
    println!(
        "rayon threads: {}, batch {b}, C {ch}, N {n}",
        rayon::current_num_threads()
    );
    let rel = fixture::relative_positions(b, ch);
    for (label, dev) in [
        ("forward only", Device::flex()),
        ("forward + backward", Device::flex().autodiff()),
    ] {
        let grad = label != "forward only";
        println!("-- {label}");
        let PinnBatch {
            x,
            probe,
            geo,
            shape,
        } = fixture::pinn_batch((b, ch, n), 1000.0, &mc, &dev);
        let model = PtychoPinn::new(&shape, &dev);
        let t_geo = time(reps, || {
            let _ = GroupGeometry::new(&rel, n, physics::padded_size(n, 2), &dev);
        });
        let finish = |t: Tensor<1>| {
            if grad {
                let _ = t.backward();
            } else {
                let _ = t.into_data();
            }
        };
        let t_enc = time(reps, || finish(model.encode(x.clone()).sum()));
        let h = model.encode(x.clone()).detach();
        let h = if grad { h.require_grad() } else { h };
        let t_dec = time(reps, || {
            let o = model.decode(h.clone(), n);
            finish(o.re.sum() + o.im.sum())
        });
        let obj = model.decode(h.clone(), n);
        let obj = Cplx::new(obj.re.detach(), obj.im.detach());
        let obj = if grad {
            Cplx::new(obj.re.require_grad(), obj.im.require_grad())
        } else {
            obj
        };
        let t_merge = time(reps, || {
            let (t, p) = geo.merge_extract(obj.clone());
            finish(t.re.sum() + p.re.sum() + p.im.sum())
        });
        let (_, p) = geo.merge_extract(obj.clone());
        let p = Cplx::new(p.re.detach(), p.im.detach());
        let p = if grad {
            Cplx::new(p.re.require_grad(), p.im.require_grad())
        } else {
            p
        };
        let t_fft = time(reps, || {
            finish(physics::forward_amplitude(&probe, p.clone()).sum())
        });
        let a = physics::forward_amplitude(&probe, p.clone()).detach() * 900.0;
        let a = if grad { a.require_grad() } else { a };
        let t_loss = time(reps, || finish(losses::poisson_nll(a.clone(), x.clone())));
        let t_all = time(reps, || {
            let o = model.forward(x.clone(), &geo, &probe);
            finish(losses::poisson_nll(o.pred_amp, x.clone()))
        });
        println!(
            "geometry {t_geo:.1} ms | encoder {t_enc:.1} | decoders {t_dec:.1} | merge/extract {t_merge:.1} | P·O + FFT {t_fft:.1} | NLL {t_loss:.1} | whole {t_all:.1} ms"
        );
        if grad {
            let mut model = model;
            let mut opt = AdamConfig::new().init();
            let t_step = time(reps, || {
                let o = model.forward(x.clone(), &geo, &probe);
                let loss = losses::poisson_nll(o.pred_amp, x.clone());
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = opt.step(1e-3, model.clone(), grads);
            });
            println!(
                "full training step (forward + backward + Adam): {t_step:.1} ms = {:.1} patterns/s ({} params)",
                (b * ch) as f64 / (t_step / 1e3),
                model.num_params()
            );
        }
    }
}
