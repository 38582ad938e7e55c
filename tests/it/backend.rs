//! The device self-check on CPU computes values that match closed forms.

use spx::backend::{self, DeviceSpec, closed_form};

#[test]
fn cpu_self_check_matches_closed_forms() {
    let r = backend::self_check(&DeviceSpec::Cpu).unwrap();
    assert_eq!(r.checks.len(), 3);
    for c in &r.checks {
        assert!(c.passed, "{c:?}");
        assert!(c.max_abs_err_closed_form <= c.tolerance, "{c:?}");
    }
    assert!(r.passed);
    assert_eq!(r.compiled_backends[0], "cpu");
}

#[test]
fn cfft_of_two_tones_has_two_peaks() {
    let n = 32;
    let dev = DeviceSpec::Cpu.device().unwrap();
    let (re, im) = closed_form::fft_inputs(n);
    let (fr, fi) = burn::signal::cfft(
        backend::tensor_from(re, [n], &dev),
        backend::tensor_from(im, [n], &dev),
        0,
        None,
    );
    let (fr, fi) = (backend::to_vec(fr), backend::to_vec(fi));
    for k in 0..n {
        let mag = (fr[k].powi(2) + fi[k].powi(2)).sqrt();
        let want = if k == closed_form::K0 {
            n as f32
        } else if k == n - closed_form::K1 {
            n as f32 / 2.0
        } else {
            0.0
        };
        assert!((mag - want).abs() < 1e-3, "bin {k}: {mag} vs {want}");
    }
}

#[test]
fn autodiff_gradient_matches_closed_form() {
    let dev = DeviceSpec::Cpu.autodiff_device().unwrap();
    let xs = closed_form::grad_inputs(16);
    let x = backend::tensor_from(xs.clone(), [16], &dev).require_grad();
    let loss = (x.clone().sin() * x.clone().powi_scalar(2)).sum();
    let g = backend::to_vec(x.grad(&loss.backward()).unwrap());
    for (gi, want) in g.iter().zip(closed_form::grad_expected(&xs)) {
        assert!((*gi as f64 - want).abs() < 1e-5, "{gi} vs {want}");
    }
}

#[test]
fn seeding_is_reproducible() {
    use rand::Rng;
    let dev = DeviceSpec::Cpu.device().unwrap();
    let a: Vec<u64> = (0..4)
        .map({
            let mut r = backend::seeded(&dev, 5);
            move |_| r.random()
        })
        .collect();
    let b: Vec<u64> = (0..4)
        .map({
            let mut r = backend::seeded(&dev, 5);
            move |_| r.random()
        })
        .collect();
    assert_eq!(a, b);
    let t1 = burn::tensor::Tensor::<1>::random([8], burn::tensor::Distribution::Default, &{
        dev.seed(9);
        dev.clone()
    });
    dev.seed(9);
    let t2 = burn::tensor::Tensor::<1>::random([8], burn::tensor::Distribution::Default, &dev);
    assert_eq!(backend::to_vec(t1), backend::to_vec(t2));
}
