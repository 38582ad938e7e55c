//! Held-out SSIM against Adam steps for one NLL arm (#16; docs/ptycho-dose.md §5): simulates
//! NPOS + NTEST positions of one lines object (cpu-profile sizes by default), groups both
//! parts, trains on the first and scores the stitched held-out amplitude every EVAL steps.
//! `RAYON_NUM_THREADS=1 ORDER=0|1 STEPS=1500 EVAL=500 cargo run --release --example
//! ptycho_learn` (ORDER 1 = `ptycho.group.order = "grid"`); other knobs (env): FB, BF
//! (filters), LR, BATCH, NPOS, NTEST, NLINES, OBJ, N, NPH, SEED; GRID=1 (grid scan, block
//! groups; PITCH, STEP in px, 0 = N/8, N/16).
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Device;
use rand::seq::SliceRandom;
use spx::ptycho::model::{ModelShape, PtychoPinn};
use spx::ptycho::{PtychoConfig, losses, recon, train};

fn env<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    let dev = Device::flex();
    let mut pc = PtychoConfig::default();
    let s = &mut pc.simulate;
    s.n = env("N", 32);
    s.object_size = env("OBJ", 96);
    s.nlines = env("NLINES", 60);
    s.buffer = 10.0;
    let (ntr, nte) = (env("NPOS", 2000usize), env("NTEST", 128usize));
    s.n_positions = ntr + nte;
    s.nphotons = env("NPH", 1e9);
    if env("GRID", 0) == 1 {
        s.scan = spx::ptycho::simulate::Scan::Grid;
        s.grid_pitch = env("PITCH", 0.0);
        s.grid_step = env("STEP", 0.0);
        pc.group.mode = spx::ptycho::grouping::GroupMode::Blocks;
    }
    let seed: u64 = env("SEED", 1);
    let hidden = indicatif::ProgressBar::hidden();
    let (trs, tes) = if pc.simulate.scan == spx::ptycho::simulate::Scan::Grid {
        // as the dose study: training lattice, held-out lattice shifted by half a pitch
        spx::ptycho::simulate::grid_split(&pc.simulate, seed, (ntr, nte), &hidden).unwrap()
    } else {
        let sim = spx::ptycho::simulate::simulate(&pc.simulate, seed, &hidden).unwrap();
        (sim.select(0..ntr), sim.select(ntr..ntr + nte))
    };
    if env("ORDER", 1) == 0 {
        pc.group.order = spx::ptycho::grouping::ChannelOrder::Random;
    }
    let data = recon::prepare(&trs.raw, &pc.group, seed).unwrap();
    let test = recon::prepare(&tes.raw, &pc.group, seed).unwrap();
    let mut cfg = pc.pinn.clone();
    cfg.nphotons = pc.simulate.nphotons;
    cfg.stitch_crop = 12;
    cfg.model.filters_base = env("FB", 16);
    cfg.model.border_filters = env("BF", 16);
    let lr: f64 = env("LR", 1e-3);
    let steps: usize = env("STEPS", 1200);
    let every: usize = env("EVAL", 200);
    let bs: usize = env("BATCH", 16);
    let ad = dev.clone().autodiff();
    let shape = ModelShape::new(&cfg.model, data.n, 2, cfg.nphotons);
    let mut rng = spx::backend::seeded(&ad, seed);
    let mut model = PtychoPinn::new(&shape, &ad);
    let probe_ad = train::model_probe(&trs.raw.probe, cfg.probe_scale, &ad);
    let sc = shape.intensity_scale;
    let mut opt = AdamConfig::new().init();
    let mut order: Vec<usize> = (0..data.len()).collect();
    let score = |m: &PtychoPinn| {
        let r = recon::reconstruct(
            m,
            &shape,
            &test,
            &tes.raw,
            &cfg,
            64,
            &dev,
            &indicatif::ProgressBar::hidden(),
        );
        match r.metrics {
            Some(mm) => (mm.amp_ssim, mm.amp_frc50, r.covered),
            None => (f64::NAN, f64::NAN, r.covered),
        }
    };
    let t0 = spx::ptycho::pipeline::cpu_seconds();
    let (mut step, mut acc, mut cnt) = (0usize, 0.0, 0usize);
    let (a, f, w) = score(&model.valid());
    println!(
        "step 0 ssim {a:.3} frc {f:.1} win {w} groups {}",
        data.len()
    );
    'outer: loop {
        order.shuffle(&mut rng);
        for chunk in order.chunks(bs) {
            if chunk.len() < bs {
                continue;
            }
            let x = data.batch(chunk, &ad) * sc;
            let out = model.forward(x.clone(), &data.geometry(chunk, &ad), &probe_ad);
            let loss = losses::combined(out.pred_amp, x, 1.0, 0.0);
            let l: f32 = loss.clone().into_scalar();
            acc += l as f64;
            cnt += 1;
            let g = GradientsParams::from_grads(loss.backward(), &model);
            model = opt.step(lr, model, g);
            step += 1;
            if step % every == 0 {
                let (a, f, _) = score(&model.valid());
                let ls = spx::backend::to_vec(model.log_scale.val())[0];
                println!(
                    "step {step} loss {:.4e} ssim {a:.3} frc {f:.1} scale {:.2} cpu {:.0}s",
                    acc / cnt as f64,
                    ls.exp(),
                    spx::ptycho::pipeline::cpu_seconds() - t0
                );
                (acc, cnt) = (0.0, 0);
            }
            if step >= steps {
                break 'outer;
            }
        }
    }
}
