//! Spektron's pretraining ablations E2 (masking), E7 (architecture), E8 (losses): the mask
//! strategies, raw-spectrum tokens, the physics-violation rate, and the three commands at their
//! `--quick` size, read back and cross-checked.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use spx::spektron::loss_ablation::violation;
use spx::spektron::model::TokenLayout;
use spx::spektron::model::losses::{
    MaskStrategy, block_mask, peak_mask, random_mask, strategy_mask,
};

#[test]
fn mask_strategies_mask_the_ratio_and_peak_aware_follows_the_energy() {
    let n = 40;
    let target = (0.2f64 * n as f64).round() as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let energy: Vec<f64> = (0..n)
        .map(|i| if i < n / 2 { 100.0 } else { 0.0 })
        .collect();
    let (mut high, mut low) = (0usize, 0usize);
    let mut distinct = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let r = random_mask(n, 0.2, &mut rng);
        assert_eq!(r.iter().filter(|&&m| m).count(), target);
        distinct.insert(r);
        let p = peak_mask(&energy, 0.2, 3, &mut rng);
        assert_eq!(p.iter().filter(|&&m| m).count(), target);
        high += p[..n / 2].iter().filter(|&&m| m).count();
        low += p[n / 2..].iter().filter(|&&m| m).count();
        // No energy anywhere: uniform centres, still the exact count.
        let z = peak_mask(&vec![0.0; n], 0.2, 3, &mut rng);
        assert_eq!(z.iter().filter(|&&m| m).count(), target);
    }
    // Centres ∝ energy + mean: 150 vs 50 per patch, so about 3:1 (blocks straddling the edge
    // and masking without replacement pull it towards 1:1).
    assert!(high > 2 * low, "high-energy half {high}, flat half {low}");
    assert!(
        distinct.len() > 250,
        "random masks repeat: {}",
        distinct.len()
    );
    // The default strategy is the contiguous block mask, draw for draw.
    let patches = vec![1.0f32; n * 4];
    let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(9), ChaCha8Rng::seed_from_u64(9));
    for _ in 0..20 {
        assert_eq!(
            strategy_mask(MaskStrategy::default(), &patches, n, 0.2, 3, &mut a),
            block_mask(n, 0.2, 3, &mut b)
        );
    }
    // Peak-aware reads the patch energies: with only patch 5 non-zero and blocks of 1, a 1-patch
    // mask lands on it far more often than the 1/n of a uniform draw.
    let mut one = vec![0.0f32; n * 4];
    one[5 * 4..6 * 4].fill(30.0);
    let hits = (0..400)
        .filter(|_| strategy_mask(MaskStrategy::PeakAware, &one, n, 1.0 / n as f64, 1, &mut a)[5])
        .count();
    assert!(hits > 400 / 3, "patch 5 masked {hits} / 400 times");
}

#[test]
fn raw_tokens_are_the_spectrum_cut_into_patches() {
    let lay = TokenLayout::raw(100, 32);
    assert_eq!((lay.n_patches, lay.n_tokens, lay.padded()), (4, 6, 128));
    let x: Vec<f32> = (0..100).map(|i| (i as f32 * 0.1).sin()).collect();
    let t = lay.encode(&x);
    assert_eq!(&t[..100], &x[..]);
    assert!(t[100..].iter().all(|&v| v == 0.0));
    assert_eq!(lay.decode(&t), x);
    // The synthesis matrix maps tokens to the spectrum: identity on the first 100 rows.
    let m = lay.synthesis_matrix();
    for i in 0..lay.padded() {
        for j in 0..100 {
            let want = if i == j { 1.0 } else { 0.0 };
            assert_eq!(m[i * 100 + j], want, "row {i} col {j}");
        }
    }
}

#[test]
fn physics_violations_count_rough_and_out_of_range_points() {
    let p = 100;
    let s: Vec<f32> = (0..p).map(|j| (j as f32 * 0.05).sin()).collect();
    let two: Vec<f32> = s.iter().chain(&s).copied().collect();
    let v = violation(&two, &two, p);
    assert_eq!(
        (v.rate, v.roughness, v.range, v.spectra),
        (0.0, 0.0, 0.0, 2)
    );
    // A spike at j = 50 of the second spectrum: Δ² is +δ, −2δ, +δ at 49, 50, 51 (rough), and
    // the spike leaves the measured range at 50.
    let mut r = two.clone();
    r[p + 50] += 5.0;
    let v = violation(&two, &r, p);
    assert_eq!(v.roughness, 3.0 / 200.0);
    assert_eq!(v.range, 1.0 / 200.0);
    assert_eq!(v.rate, 3.0 / 200.0);
    // A constant offset within 5 % of the range is no violation; beyond it every point is.
    let range = 2.0 * s.iter().fold(0f32, |a, &b| a.max(b.abs()));
    let shift = |d: f32| s.iter().map(|v| v + d).collect::<Vec<_>>();
    assert_eq!(violation(&s, &shift(0.01 * range), p).rate, 0.0);
    let v = violation(&s, &shift(0.2 * range), p);
    assert!(v.range > 0.0 && v.roughness == 0.0, "{v:?}");
}

fn rows(csv: &str) -> Vec<Vec<String>> {
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// `(variant, method, n)` → (rmsep_mean, rmsep_std, r2_mean) of a CSV.
fn cell(rows: &[Vec<String>], v: &str, m: &str) -> [f64; 3] {
    let r = rows
        .iter()
        .find(|r| r[0] == v && r[1] == m)
        .unwrap_or_else(|| panic!("{v} {m}"));
    [
        r[3].parse().unwrap(),
        r[4].parse().unwrap(),
        r[5].parse().unwrap(),
    ]
}

const ARMS: [&str; 5] = [
    "spektron_no_transfer",
    "spektron_master_on_master",
    "spektron_ttt",
    "spektron_lora",
    "scratch",
];

/// Read back an ablation's CSV: the header, one row per (variant, arm) plus the two classical
/// references, every number finite and RMSEP positive.
fn check_csv(path: &std::path::Path, variants: &[&str]) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        text.lines().next(),
        Some("variant,method,n_transfer,rmsep_mean,rmsep_std,r2_mean")
    );
    let rs = rows(&text);
    assert_eq!(rs.len(), variants.len() * ARMS.len() + 2, "{text}");
    for v in variants {
        for m in ARMS {
            let [mean, sd, r2] = cell(&rs, v, m);
            assert!(mean > 0.0 && mean.is_finite() && sd >= 0.0 && r2.is_finite());
        }
    }
    assert_eq!(
        rs.iter()
            .filter(|r| r[0] == "-")
            .map(|r| r[1].as_str())
            .collect::<Vec<_>>(),
        ["recentre_test", "sbc"]
    );
    rs
}

fn png_size(path: &std::path::Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

#[test]
fn cli_masking_architecture_and_losses_quick() {
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &str, cmd: &str| {
        let o = crate::common::spx_ok_in(
            dir.path(),
            &[
                "-q",
                "--json",
                "--threads",
                "1",
                "--out",
                out,
                "spektron",
                "experiment",
                cmd,
                "--quick",
            ],
        );
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let variants = |j: &serde_json::Value| -> Vec<serde_json::Value> {
        j["variants"].as_array().cloned().unwrap_or_default()
    };

    // E2: three strategies; the mask changes the pretrained model (master rows differ), not the
    // from-scratch arm (random weights, same seeds in every variant).
    let e2 = run("e2", "masking");
    let names = ["random", "contiguous", "peak-aware"];
    let r2 = check_csv(&dir.path().join("e2/e2_synthetic.csv"), &names);
    let vs = variants(&e2);
    assert_eq!(vs.len(), 3);
    for (v, n) in vs.iter().zip(names) {
        assert_eq!(v["variant"], n);
        assert_eq!(v["steps"], 30, "{v}");
        assert!(v["val_msrp"].as_f64().is_some_and(f64::is_finite), "{v}");
    }
    for n in &names[1..] {
        assert_eq!(cell(&r2, n, "scratch"), cell(&r2, "random", "scratch"));
        assert_ne!(
            cell(&r2, n, "spektron_master_on_master"),
            cell(&r2, "random", "spektron_master_on_master"),
            "{n}"
        );
    }
    // One RMSEP per split in the JSON, as many as the repetitions.
    for c in e2["cells"].as_array().unwrap() {
        assert_eq!(c["rmsep"].as_array().unwrap().len(), 1, "{c}");
    }
    let md = std::fs::read_to_string(dir.path().join("e2/e2_synthetic.md")).unwrap();
    assert!(md.contains("| MSRP masking | steps | val MSRP (own masks) |"));
    assert!(md.contains("over 1 seeded splits"));
    let (w, h) = png_size(&dir.path().join("e2/e2_synthetic.png"));
    assert!(w > 400 && h > 200, "{w}×{h}");
    assert!(!dir.path().join("e2/e2-work").exists());

    // E7: parameters follow from the architecture; the reference arm is E2's contiguous run.
    let e7 = run("e7", "architecture");
    let names = ["transformer", "mamba", "hybrid", "hybrid_raw", "hybrid_moe"];
    let r7 = check_csv(&dir.path().join("e7/e7_synthetic.csv"), &names);
    let vs = variants(&e7);
    let params: Vec<i64> = vs
        .iter()
        .map(|v| v["parameters"].as_i64().unwrap())
        .collect();
    assert_eq!(params.len(), 5);
    // quick: d_model 32, 2048 points, patch 32: 67 wavelet tokens (65 + [CLS] + [DOMAIN]) vs 66
    // raw tokens, so raw has one position embedding (32 values) less.
    assert_eq!(params[2] - params[3], 32);
    // MoE (4 experts, width 64): LayerNorm 2·32 + router 32·4 + 4 × (32·64 + 64 + 64·32 + 32).
    assert_eq!(
        params[4] - params[2],
        64 + 128 + 4 * (2048 + 64 + 2048 + 32)
    );
    assert!(params[0] != params[1] && params[1] != params[2]);
    for v in &vs {
        assert!(v["pretrain_seconds"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["arms_seconds"].as_f64().unwrap() > 0.0, "{v}");
    }
    for m in ARMS {
        assert_eq!(cell(&r7, "hybrid", m), cell(&r2, "contiguous", m), "{m}");
    }
    assert!(
        cell(&r7, "transformer", "spektron_master_on_master")
            != cell(&r7, "hybrid", "spektron_master_on_master")
    );
    // Mamba only: [CLS] is the first token and the scan (and its conv) is causal, so z_chem sees
    // no spectrum and the master predicts one constant — the same RMSEP on the source and the
    // target test spectra of a split. With a Transformer block they differ.
    let on = |v: &str| {
        (
            cell(&r7, v, "spektron_master_on_master"),
            cell(&r7, v, "spektron_no_transfer"),
        )
    };
    let (a, b) = on("mamba");
    assert_eq!(a, b);
    let (a, b) = on("hybrid");
    assert_ne!(a, b);
    png_size(&dir.path().join("e7/e7_synthetic.png"));

    // E8: progressive losses; the full list is E2's contiguous run; the violation rate is a
    // fraction bounded by its two rules, over both instruments' spectra (2 × 80 synthetic).
    let e8 = run("e8", "losses");
    let names = ["msrp", "contrastive", "denoise", "ot", "physics", "vib"];
    let r8 = check_csv(&dir.path().join("e8/e8_synthetic.csv"), &names);
    for m in ARMS {
        assert_eq!(cell(&r8, "vib", m), cell(&r2, "contiguous", m), "{m}");
    }
    assert_ne!(
        cell(&r8, "msrp", "spektron_master_on_master"),
        cell(&r8, "vib", "spektron_master_on_master")
    );
    for v in variants(&e8) {
        let pv = &v["physics_violation"];
        let (rate, rough, range) = (
            pv["rate"].as_f64().unwrap(),
            pv["roughness"].as_f64().unwrap(),
            pv["range"].as_f64().unwrap(),
        );
        assert!((0.0..=1.0).contains(&rate), "{v}");
        assert!(
            rate >= rough.max(range) && rate <= rough + range + 1e-12,
            "{v}"
        );
        assert_eq!(pv["spectra"], 160, "{v}");
    }
    let md = std::fs::read_to_string(dir.path().join("e8/e8_synthetic.md")).unwrap();
    assert!(md.contains("| physics-violation rate | roughness | range |"));
    png_size(&dir.path().join("e8/e8_synthetic.png"));
}

#[test]
fn swap_test_and_pca_on_latents_with_a_known_structure() {
    use ndarray::Array2;
    use spx::spektron::disentangle::{pca2, swap_test};
    use spx::spektron::protocol::Split;
    // Spectra = A·z_chem + B·z_inst + 1: z_chem per sample (same on both instruments), z_inst per
    // instrument (its offset). A linear decoder recovers them exactly, so decoding with the
    // other instrument's z_inst reproduces the other instrument's spectrum (swapped ≈ floor ≈ 0)
    // while the unswapped decode keeps the wrong instrument offset.
    let (n, p) = (30, 12);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    use rand::Rng;
    let chem = Array2::from_shape_fn((n, 3), |_| rng.random::<f64>() - 0.5);
    let a = Array2::from_shape_fn((3, p), |_| rng.random::<f64>() - 0.5);
    let b = Array2::from_shape_fn(
        (2, p),
        |(k, j)| if k == 0 { (j as f64 * 0.3).sin() } else { 0.2 },
    );
    let inst = |v: f64| Array2::from_shape_fn((n, 2), |(_, k)| if k == 0 { v } else { -v });
    let (is, it) = (inst(1.0), inst(-1.0));
    let xs = chem.dot(&a) + is.dot(&b) + 1.0;
    let xt = chem.dot(&a) + it.dot(&b) + 1.0;
    let split = Split::new(0, n, 10);
    let s = swap_test((&chem, &is), (&chem, &it), &xs, &xt, &split);
    assert_eq!(s.test_samples, 10);
    assert!(s.swapped_rmse < 1e-2 && s.own_rmse < 1e-2, "{s:?}");
    assert!(s.unswapped_rmse > 0.5, "{s:?}");
    assert_eq!(s.swap_closer_fraction, 1.0);
    // The instruments differ by (is − it)·B = 2·[1, −1]·B on every sample.
    let gap = (2.0 * (&b.row(0) - &b.row(1)))
        .mapv(|v| v * v)
        .mean()
        .unwrap()
        .sqrt();
    assert!((s.instrument_rmse - gap).abs() < 1e-12, "{s:?} vs {gap}");
    // Swapping latents that carry no instrument (z_inst equal on both) changes nothing.
    let s0 = swap_test((&chem, &is), (&chem, &is), &xs, &xs, &split);
    assert_eq!((s0.swap_closer_fraction, s0.instrument_rmse), (0.0, 0.0));
    assert!((s0.swapped_rmse - s0.unswapped_rmse).abs() < 1e-12);

    // PCA of points on a plane in 5-D: two components explain everything, scores are centred and
    // keep the pairwise distances.
    let basis = Array2::from_shape_fn((2, 5), |(k, j)| ((k + 1) as f64 * (j as f64 + 0.5)).cos());
    let coef = Array2::from_shape_fn((n, 2), |_| rng.random::<f64>() * 4.0 - 2.0);
    let z = coef.dot(&basis) + 3.0;
    let (pcs, ex) = pca2(&z).unwrap();
    assert!(
        (ex[0] + ex[1] - 1.0).abs() < 1e-9 && ex[0] >= ex[1],
        "{ex:?}"
    );
    for k in 0..2 {
        assert!(pcs.column(k).sum().abs() < 1e-9);
    }
    let d = |m: &Array2<f64>, i: usize, j: usize| (&m.row(i) - &m.row(j)).mapv(|v| v * v).sum();
    for (i, j) in [(0, 1), (3, 17), (8, 29)] {
        assert!((d(&pcs, i, j) - d(&z, i, j)).abs() < 1e-9);
    }
}

#[test]
fn cli_disentanglement_quick() {
    let dir = tempfile::tempdir().unwrap();
    let o = crate::common::spx_ok_in(
        dir.path(),
        &[
            "-q",
            "--json",
            "--threads",
            "1",
            "--out",
            "e10",
            "spektron",
            "experiment",
            "disentanglement",
            "--quick",
        ],
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["pretrain_steps"], 30);
    assert_eq!(j["samples"], 80);
    let text = std::fs::read_to_string(dir.path().join("e10/e10_synthetic.csv")).unwrap();
    assert_eq!(
        text.lines().next(),
        Some("instrument,sample,property,zchem_pc1,zchem_pc2,zinst_pc1,zinst_pc2")
    );
    let rs = rows(&text);
    assert_eq!(rs.len(), 160);
    // Source rows first, then target rows (the CLI's default instrument names).
    assert!(rs[..80].iter().all(|r| r[0] == "m5") && rs[80..].iter().all(|r| r[0] == "mp6"));
    // Both instruments' rows of a sample carry its property value.
    for i in 0..80 {
        assert_eq!((&rs[i][1], &rs[i][2]), (&rs[80 + i][1], &rs[80 + i][2]));
    }
    // PCA scores read back: finite, centred, PC1 variance ≥ PC2 variance (to the 6 printed
    // decimals), as the JSON's explained fractions say.
    for (c, latent) in [(3, "z_chem"), (5, "z_inst")] {
        let col = |k: usize| -> Vec<f64> { rs.iter().map(|r| r[k].parse().unwrap()).collect() };
        let (a, b) = (col(c), col(c + 1));
        assert!(a.iter().chain(&b).all(|v| v.is_finite()));
        let var = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64;
        let spread = var(&a).sqrt().max(1e-12);
        assert!(
            a.iter().sum::<f64>().abs() / 160.0 < 1e-4 * spread + 1e-6,
            "{latent}"
        );
        assert!(var(&a) >= var(&b) * (1.0 - 1e-6), "{latent}");
        let ex = &j[latent]["explained"];
        let (e1, e2) = (ex[0].as_f64().unwrap(), ex[1].as_f64().unwrap());
        assert!(e1 >= e2 && e1 + e2 <= 1.0 + 1e-9, "{latent}: {ex}");
        if var(&b) > 0.0 {
            let ratio = var(&a) / var(&b);
            assert!(
                (ratio / (e1 / e2) - 1.0).abs() < 1e-3,
                "{latent}: {ratio} vs {e1}/{e2}"
            );
        }
        let acc = j[latent]["instrument_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        assert!(j[latent]["same_sample_ratio"].as_f64().unwrap() > 0.0);
    }
    let s = &j["swap"];
    assert_eq!(s["test_samples"], 20);
    for k in ["unswapped_rmse", "swapped_rmse", "own_rmse"] {
        assert!(
            s[k].as_f64().is_some_and(|v| v.is_finite() && v > 0.0),
            "{k}: {s}"
        );
    }
    for f in [
        "zchem_by_instrument",
        "zchem_by_sample",
        "zinst_by_instrument",
        "zinst_by_sample",
    ] {
        png_size(&dir.path().join(format!("e10/e10_synthetic_{f}.png")));
    }
    assert!(!dir.path().join("e10/e10-work").exists());
}
