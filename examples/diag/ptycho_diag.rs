//! Consistency check of the PINN physics on a simulated scan: the Poisson NLL of the TRUE
//! object patches (×α, centre N/2 only, like the network's central head) pushed through
//! merge/extract + ψ = P·O + diffraction, vs the unmerged truth and a flat object; with a
//! model directory also the trained network's loss on the same groups.
//! `cargo run --release --example ptycho_diag -- train.npz NPHOTONS [MODEL_DIR]`
//! (truth merged equals truth direct to 1e-5 relative: merge/extract and positions agree with
//! the simulator).
use burn::tensor::{Device, Tensor};
use spx::backend::{tensor_from, to_vec};
use spx::ptycho::physics::{self, Cplx};
use spx::ptycho::{PtychoConfig, RawData, losses, train};

fn main() {
    let path = std::env::args().nth(1).expect("npz");
    let nph: f64 = std::env::args().nth(2).map_or(1e9, |v| v.parse().unwrap());
    let raw = RawData::load(std::path::Path::new(&path)).unwrap();
    let pc = PtychoConfig::default();
    let data = spx::ptycho::recon::prepare(&raw, &pc.group, 1).unwrap();
    let dev = Device::flex();
    let n = data.n;
    let s = nph.sqrt() / (n as f64 / 2.0);
    let probe = train::model_probe(&raw.probe, pc.pinn.probe_scale, &dev);
    let obj = raw.object.clone().unwrap();
    let idx: Vec<usize> = (0..64.min(data.len())).collect();
    let x = data.batch(&idx, &dev) * s;
    let geo = data.geometry(&idx, &dev);
    let c = data.c;
    let (mut re, mut im) = (vec![], vec![]);
    for &g in &idx {
        for k in 0..c {
            let (cx, cy) = data.offsets[g];
            let (dx, dy) = data.rel[g][k];
            let p = spx::ptycho::simulate::extract_patch(&obj, cx - dx, cy - dy, n);
            re.extend(p.iter().map(|z| z.re as f32));
            im.extend(p.iter().map(|z| z.im as f32));
        }
    }
    let b = idx.len();
    let truth = Cplx::new(
        tensor_from(re, [b, c, n, n], &dev),
        tensor_from(im, [b, c, n, n], &dev),
    );
    // the network's centre head: zero outside the central N/2 square
    let centre = (spx::ptycho::model::border_mask(n, &dev) - 1.0) * -1.0;
    // Poisson deviance per pixel, mean of λ − y ln λ − (y − y ln y), at the best global
    // scale α² = Σy/Σλ₁ (Poisson noise alone gives ≈ 0.5 where counts are large).
    let y = to_vec(x.clone().powi_scalar(2));
    let deviance = |amp1: Tensor<4>| -> (f64, f64) {
        let l1 = to_vec(amp1.powi_scalar(2));
        let a2 =
            y.iter().map(|v| *v as f64).sum::<f64>() / l1.iter().map(|v| *v as f64).sum::<f64>();
        let d: f64 = l1
            .iter()
            .zip(&y)
            .map(|(&l, &y)| {
                let (l, y) = (a2 * l as f64 + 1e-12, y as f64);
                let sat = if y > 0.0 { y - y * y.ln() } else { 0.0 };
                l - y * l.ln() - sat
            })
            .sum();
        (a2.sqrt(), d / l1.len() as f64)
    };
    let t = Cplx::new(
        truth.re.clone() * centre.clone(),
        truth.im.clone() * centre.clone(),
    );
    let flat = Cplx::new(
        truth.re.clone() * 0.0 + centre.clone(),
        truth.im.clone() * 0.0,
    );
    for (name, o, merge) in [
        ("truth direct", t.clone(), false),
        ("truth merged", t, true),
        ("flat merged", flat, true),
    ] {
        let o = if merge { geo.merge_extract(o).1 } else { o };
        let (a, d) = deviance(physics::forward_amplitude(&probe, o) * s);
        println!("{name}: best scale {a:.4}, Poisson deviance per pixel {d:.4e}");
    }
    if let Some(dir) = std::env::args().nth(3) {
        let (m, _) = train::load_model(std::path::Path::new(&dir), &dev).unwrap();
        let out = m.forward(x.clone(), &geo, &probe);
        let l: f32 = losses::poisson_nll(out.pred_amp.clone(), x.clone()).into_scalar();
        println!("trained model {dir}: {:.6e}", l);
        let (a, d) = deviance(out.pred_amp);
        println!("trained model: best extra scale {a:.4}, Poisson deviance per pixel {d:.4e}");
        let o = m.object_patches(x.clone());
        let oc = Cplx::new(o.re.clone() * centre.clone(), o.im.clone() * centre.clone());
        let a = physics::forward_amplitude(&probe, geo.merge_extract(oc).1)
            * m.log_scale.val().exp().into_scalar::<f32>() as f64;
        let l: f32 = losses::poisson_nll(a, x.clone()).into_scalar();
        println!("trained model, border branch zeroed: {:.6e}", l);
        let a = to_vec(o.clone().abs2().sqrt());
        let nn = n * n;
        println!(
            "patch 0 amp centre row: {:?}",
            &a[nn / 2 + n / 4..nn / 2 + 3 * n / 4]
                .iter()
                .map(|v| (v * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        );
        let ph = to_vec(o.im.clone().atan2(o.re.clone()));
        println!(
            "patch 0 phase centre row: {:?}",
            &ph[nn / 2 + n / 4..nn / 2 + 3 * n / 4]
                .iter()
                .map(|v| (v * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        );
    }
}
