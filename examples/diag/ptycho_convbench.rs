//! Conv 3×3 "same" on flex at the three heaviest PtychoPINN layer sizes (batch 16): burn's conv2d vs the
//! same conv written as pad + 9 slices + cat + one broadcast matmul (autodiff through
//! matmul/slice). Measured on the shared 2-core CPU: the matmul form was 1.2–2.4× slower
//! forward and not consistently faster forward + backward, so the model keeps burn's conv.
//! `cargo run --release --example ptycho_convbench`.
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Device, Tensor};
use std::time::Instant;

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

fn im2col_conv(x: Tensor<4>, w: Tensor<4>, b: Tensor<1>) -> Tensor<4> {
    let [bs, ci, h, wd] = x.dims();
    let co = w.dims()[0];
    let xp = x.pad([(0, 0), (0, 0), (1, 1), (1, 1)], 0.0);
    let mut cols = Vec::with_capacity(9);
    for ky in 0..3 {
        for kx in 0..3 {
            cols.push(xp.clone().slice([0..bs, 0..ci, ky..ky + h, kx..kx + wd]));
        }
    }
    let col = Tensor::cat(cols, 1).reshape([bs, 9 * ci, h * wd]);
    let wm = w.permute([0, 2, 3, 1]).reshape([1, co, 9 * ci]);
    wm.matmul(col).reshape([bs, co, h, wd]) + b.reshape([1, co, 1, 1])
}

fn main() {
    let reps = 3;
    for &(ci, co, hw) in &[(64usize, 64usize, 64usize), (128, 128, 32), (256, 256, 16)] {
        for grad in [false, true] {
            let dev = if grad {
                Device::flex().autodiff()
            } else {
                Device::flex()
            };
            let conv = Conv2dConfig::new([ci, co], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(&dev);
            let x =
                Tensor::<4>::random([16, ci, hw, hw], burn::tensor::Distribution::Default, &dev);
            let x = if grad { x.require_grad() } else { x };
            let fin = |t: Tensor<4>| {
                if grad {
                    let _ = t.sum().backward();
                } else {
                    let _ = t.into_data();
                }
            };
            let a = conv.forward(x.clone());
            let b = im2col_conv(
                x.clone(),
                conv.weight.val(),
                conv.bias.as_ref().unwrap().val(),
            );
            let err: f32 = (a - b).abs().max().into_scalar();
            let t1 = time(reps, || fin(conv.forward(x.clone())));
            let t2 = time(reps, || {
                fin(im2col_conv(
                    x.clone(),
                    conv.weight.val(),
                    conv.bias.as_ref().unwrap().val(),
                ))
            });
            println!(
                "{ci:>3}->{co:>3} @{hw:>2} {}: flex {t1:7.1} ms  im2col {t2:7.1} ms  (max diff {err:.2e})",
                if grad { "fwd+bwd" } else { "fwd    " }
            );
            if grad {
                let opts = burn::tensor::ops::ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
                let wd = conv.weight.val().detach();
                let bd = conv.bias.as_ref().unwrap().val().detach();
                let tx = time(reps, || {
                    fin(burn::tensor::module::conv2d(
                        x.clone(),
                        wd.clone(),
                        Some(bd.clone()),
                        opts.clone(),
                    ))
                });
                let xd = x.clone().detach();
                let tw = time(reps, || fin(conv.forward(xd.clone())));
                println!("      x-grad only {tx:7.1} ms   w-grad only {tw:7.1} ms");
            }
        }
    }
}
