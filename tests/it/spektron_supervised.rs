//! Spektron's supervised deep baselines (1-D CNN, plain Transformer, LoRA-CT) and the E9
//! TTT-steps experiment.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spx::backend::{DeviceSpec, seeded, to_vec};
use spx::spektron::supervised::cnn::Cnn1d;
use spx::spektron::supervised::transformer::{self, SpectrumTransformer, TransformerDims};
use spx::spektron::supervised::{Fit, fit, predict};

/// Smooth random spectra (`n` × `p`, Gaussian-smoothed noise) and a linear property of them,
/// y = w·x with w one and a half periods of a sine, standardised.
fn linear_task(n: usize, p: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let k: Vec<f64> = (-6..=6)
        .map(|i| (-0.5 * (f64::from(i) / 2.0).powi(2)).exp())
        .collect();
    let mut x = Vec::with_capacity(n * p);
    for _ in 0..n {
        // Box–Muller normals.
        let raw: Vec<f64> = (0..p)
            .map(|_| {
                let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
            })
            .collect();
        for j in 0..p {
            let s: f64 = (0..k.len())
                .filter_map(|t| {
                    let c = (j + t).checked_sub(6)?;
                    raw.get(c).map(|r| r * k[t])
                })
                .sum();
            x.push(s as f32);
        }
    }
    let w: Vec<f64> = (0..p)
        .map(|j| (3.0 * std::f64::consts::PI * j as f64 / (p - 1) as f64).sin())
        .collect();
    let y: Vec<f64> = x
        .chunks(p)
        .map(|r| r.iter().zip(&w).map(|(&a, b)| f64::from(a) * b).sum())
        .collect();
    let m = y.iter().sum::<f64>() / n as f64;
    let sd = (y.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n as f64).sqrt();
    (x, y.iter().map(|v| ((v - m) / sd) as f32).collect())
}

fn r2(y: &[f32], yh: &[f32]) -> f64 {
    let m = y.iter().map(|&v| f64::from(v)).sum::<f64>() / y.len() as f64;
    let res: f64 = y
        .iter()
        .zip(yh)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    let tot: f64 = y.iter().map(|&a| (f64::from(a) - m).powi(2)).sum();
    1.0 - res / tot
}

#[test]
fn cnn_and_transformer_fit_a_linear_target() {
    let _rng = crate::common::burn_rng_lock();
    let dev = DeviceSpec::Cpu.autodiff_device().unwrap();
    let (p, n_train, n_test) = (64, 240, 60);
    let (x, y) = linear_task(n_train + n_test, p, 5);
    let (xtr, xte) = x.split_at(n_train * p);
    let (ytr, yte) = y.split_at(n_train);
    let s = Fit {
        epochs: 100,
        lr: 1e-3,
        batch: 16,
        weight_decay: 1e-4,
        patience: 0,
        val_fraction: 0.2,
    };
    let _ = seeded(&dev, 1);
    let cnn = Cnn1d::new(p, 8, 9, 4, &dev).unwrap();
    // conv 1→8 (k 9) + conv 8→16 (k 9) + linear over 16 channels × 4 positions (64 → 16 → 4).
    assert_eq!(
        cnn.num_params(),
        (8 * 9 + 8) + (16 * 8 * 9 + 16) + (16 * 4 + 1)
    );
    let (cnn, rep) = fit(cnn, xtr, ytr, p, &s, &dev, 2).unwrap();
    assert_eq!(rep.epochs_run, 100);
    let r = r2(yte, &predict(&cnn, xte, p, &dev));
    assert!(r > 0.97, "CNN held-out R² {r}");

    let _ = seeded(&dev, 3);
    let dims = TransformerDims {
        patch: 8,
        d_model: 32,
        heads: 4,
        layers: 2,
        d_ff: 64,
    };
    let tf = SpectrumTransformer::new(p, dims, &dev).unwrap();
    let (tf, _) = fit(tf, xtr, ytr, p, &s, &dev, 4).unwrap();
    let r = r2(yte, &predict(&tf, xte, p, &dev));
    assert!(r > 0.95, "Transformer held-out R² {r}");
    // A constant predictor has R² ≤ 0 on the same rows: the bound is not trivially met.
    assert!(r2(yte, &vec![0.0; yte.len()]) <= 0.0);
}

/// Path → values of every float parameter (LoRA factors under `<weight>.lora.a|b`).
fn snapshot<M: Module>(m: &M) -> BTreeMap<String, Vec<f32>> {
    struct V(BTreeMap<String, Vec<f32>>, Vec<String>);
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.1.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.1.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.insert(self.1.join("."), to_vec(p.val()));
        }
    }
    let mut v = V(BTreeMap::new(), Vec::new());
    m.visit(&mut v);
    v.0
}

#[test]
fn lora_ct_trains_only_adapters_and_the_head() {
    let _rng = crate::common::burn_rng_lock();
    let dev = DeviceSpec::Cpu.autodiff_device().unwrap();
    let p = 64;
    let (x, y) = linear_task(12, p, 9);
    let _ = seeded(&dev, 6);
    let dims = TransformerDims {
        patch: 8,
        d_model: 16,
        heads: 2,
        layers: 2,
        d_ff: 32,
    };
    let tf = SpectrumTransformer::new(p, dims, &dev).unwrap();
    let before = snapshot(&tf);
    let adapted = transformer::with_lora(tf, 2, 4.0).unwrap();
    let s = Fit {
        epochs: 5,
        lr: 1e-2,
        batch: 4,
        weight_decay: 0.0,
        patience: 0,
        val_fraction: 0.2,
    };
    let (after, _) = fit(adapted, &x, &y, p, &s, &dev, 1).unwrap();
    let after = snapshot(&after);
    let mut adapters = 0;
    for (k, v) in &after {
        if k.contains(".lora.") {
            adapters += 1;
            continue;
        }
        let adapted = ["query", "key", "value"]
            .iter()
            .any(|q| k.ends_with(&format!("mha.{q}.weight")));
        if k.starts_with("head.") {
            assert_ne!(&before[k], v, "{k} should have been trained");
        } else if !adapted {
            assert_eq!(&before[k], v, "{k} must stay frozen");
        }
    }
    // 2 layers × Q/K/V × (a, b).
    assert_eq!(adapters, 12);
    assert!(
        after
            .iter()
            .filter(|(k, _)| k.ends_with(".lora.b"))
            .any(|(_, v)| v.iter().any(|&b| b != 0.0)),
        "the adapters were not trained"
    );
}

fn cells(v: &serde_json::Value, key: &str) -> Vec<serde_json::Value> {
    v[key].as_array().cloned().unwrap_or_default()
}

fn find<'a>(
    cs: &'a [serde_json::Value],
    name_key: &str,
    name: &str,
    n_key: &str,
    n: u64,
) -> &'a serde_json::Value {
    cs.iter()
        .find(|c| c[name_key] == name && c[n_key] == n)
        .unwrap_or_else(|| panic!("{name} at {n_key} {n}"))
}

fn splits(c: &serde_json::Value) -> Vec<f64> {
    c["rmsep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[test]
fn cli_table_with_supervised_rows_and_e9_e1_on_the_same_splits() {
    let _rng = crate::common::burn_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let run = |tail: &[&str]| {
        let mut a = vec![
            "-q",
            "--json",
            "--threads",
            "1",
            "--set",
            "spektron.ttt.steps=3",
            "--set",
            "spektron.supervised.epochs=15",
            "--set",
            "spektron.supervised.transfer_epochs=5",
        ];
        a.extend_from_slice(tail);
        let o = crate::common::spx_ok_in(dir.path(), &a);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let e4 = run(&[
        "--out",
        "e4",
        "--set",
        "spektron.experiment.supervised=true",
        "spektron",
        "experiment",
        "table",
        "--quick",
        "--repeats",
        "2",
        "--n-transfer",
        "10",
    ]);
    let cs = cells(&e4, "cells");
    assert_eq!(e4["n_test"], 20);
    // Every supervised row, at the N it says, with one RMSEP per split, beside the classical rows.
    for (m, n) in [
        ("sbc", 10),
        ("no_transfer", 0),
        ("cnn_master_on_master", 0),
        ("cnn_no_transfer", 0),
        ("cnn_transfer", 10),
        ("transformer_master_on_master", 0),
        ("transformer_no_transfer", 0),
        ("transformer_transfer", 10),
        ("lora_ct", 10),
    ] {
        let c = find(&cs, "method", m, "n_transfer", n);
        let r = splits(c);
        assert_eq!(r.len(), 2, "{m}: {r:?}");
        assert!(r.iter().all(|v| v.is_finite() && *v > 0.0), "{m}: {r:?}");
    }
    // The CNN of [spektron.supervised] (8 → 16 filters, kernel 9, stride 4) on 2048 points:
    // 2048 → 512 → 128 positions.
    assert_eq!(
        e4["supervised"]["cnn_parameters"],
        (8 * 9 + 8) + (16 * 8 * 9 + 16) + (16 * 128 + 1)
    );
    let md = std::fs::read_to_string(dir.path().join("e4/e4_synthetic.md")).unwrap();
    assert!(md.contains("| LoRA-CT: Transformer + LoRA on N labelled target spectra |"));

    let e9 = run(&[
        "--out",
        "e9",
        "spektron",
        "experiment",
        "ttt-steps",
        "--quick",
        "--repeats",
        "2",
        "--n-transfer",
        "10",
        "--steps",
        "0,2,3",
    ]);
    let rows = cells(&e9, "rows");
    assert_eq!(e9["steps"], serde_json::json!([0, 2, 3]));
    // E9 uses E4's splits, master and seeds: at 0 steps the 0-shot row is E4's master on target,
    // the few-shot row E4's LoRA arm; at spektron.ttt.steps (3) the 0-shot row is E4's TTT arm.
    for (setting, steps, method, n) in [
        ("zero_shot", 0, "spektron_no_transfer", 0),
        ("few_shot", 0, "spektron_lora", 10),
        ("zero_shot", 3, "spektron_ttt", 0),
        ("sbc", 0, "sbc", 10),
    ] {
        let a = splits(find(&rows, "setting", setting, "steps", steps));
        let b = splits(find(&cs, "method", method, "n_transfer", n));
        assert_eq!(a, b, "E9 {setting} at {steps} steps vs E4 {method}");
    }
    assert_eq!(
        splits(find(&rows, "setting", "few_shot", "steps", 2)).len(),
        2
    );
    let csv = std::fs::read_to_string(dir.path().join("e9/e9_synthetic.csv")).unwrap();
    // header + 2 settings × 3 step counts + 2 classical references.
    assert_eq!(csv.lines().count(), 1 + 6 + 2);
    assert!(dir.path().join("e9/e9_synthetic.png").is_file());

    // E1: the `none` variant is E4 without a checkpoint (same splits and seeds); the pretrained
    // variants start elsewhere; working files are gone.
    let e1 = run(&[
        "--out",
        "e1",
        "spektron",
        "experiment",
        "pretraining",
        "--quick",
        "--repeats",
        "2",
        "--n-transfer",
        "10",
    ]);
    let e1c = cells(&e1, "cells");
    let of = |v: &str, m: &str, n: u64| {
        splits(
            e1c.iter()
                .find(|c| c["variant"] == v && c["method"] == m && c["n_transfer"] == n)
                .unwrap_or_else(|| panic!("E1 {v} {m} N={n}")),
        )
    };
    for (m, n) in [
        ("spektron_no_transfer", 0),
        ("spektron_lora", 10),
        ("scratch", 10),
    ] {
        assert_eq!(
            of("none", m, n),
            splits(find(&cs, "method", m, "n_transfer", n)),
            "E1 none vs E4 {m}"
        );
    }
    assert_ne!(
        of("msrp", "spektron_master_on_master", 0),
        of("none", "spektron_master_on_master", 0)
    );
    let vs = cells(&e1, "variants");
    assert_eq!(vs.len(), 3);
    for v in &vs[1..] {
        assert_eq!(v["steps"], 30, "{v}");
        assert!(v["val_msrp"].as_f64().is_some_and(f64::is_finite), "{v}");
    }
    assert!(!dir.path().join("e1/e1-work").exists());
    let csv = std::fs::read_to_string(dir.path().join("e1/e1_synthetic.csv")).unwrap();
    // header + 3 variants × 5 arms + 2 classical references.
    assert_eq!(csv.lines().count(), 1 + 15 + 2);
    assert!(dir.path().join("e1/e1_synthetic.png").is_file());
}
