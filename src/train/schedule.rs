//! Step-driven learning-rate schedules from burn-optim's schedulers.

use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;

use crate::error::SpxError;

/// Linear warm-up over `warmup` steps (`lr · (s + 1) / warmup` at step `s`), then burn-optim's
/// cosine annealing from `lr` to 0 over the remaining `steps − warmup` steps, 0 after `steps`.
/// The warm-up is the one-line ramp rather than burn-optim's `LinearLrScheduler`, which reaches
/// the same values by accumulating a step size and so differs in the last bits; keeping the
/// ramp keeps runs bit-identical with earlier ones. `lr` must be in (0, 1] (burn-optim's limit).
pub struct WarmupCosine {
    lr: f64,
    warmup: usize,
    decay_steps: usize,
    cosine: ModuleLrScheduler,
    step: usize,
}

impl WarmupCosine {
    pub fn new(lr: f64, warmup: usize, steps: usize) -> Result<Self, SpxError> {
        let decay_steps = steps.saturating_sub(warmup).max(1);
        let cosine = CosineAnnealingLrSchedulerConfig::new(lr, decay_steps)
            .init()
            .map_err(|m| SpxError::Config(format!("learning-rate schedule (lr {lr}): {m}")))?;
        Ok(WarmupCosine {
            lr,
            warmup,
            decay_steps,
            cosine,
            step: 0,
        })
    }

    /// Advance past `n` steps (a resumed run continues at step `n`).
    pub fn skip(&mut self, n: usize) {
        for _ in 0..n {
            self.next_lr();
        }
    }

    /// The learning rate of the next step.
    pub fn next_lr(&mut self) -> f64 {
        let s = self.step;
        self.step += 1;
        if s < self.warmup {
            self.lr * (s + 1) as f64 / self.warmup as f64
        } else if s - self.warmup > self.decay_steps {
            0.0
        } else {
            self.cosine.step().base()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_zero() {
        let (lr, warmup, steps) = (1e-3, 4, 12);
        let mut s = WarmupCosine::new(lr, warmup, steps).unwrap();
        let got: Vec<f64> = (0..16).map(|_| s.next_lr()).collect();
        for (i, g) in got.iter().enumerate() {
            let want = if i < warmup {
                lr * (i + 1) as f64 / warmup as f64
            } else {
                let t = ((i - warmup) as f64 / (steps - warmup) as f64).min(1.0);
                lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            };
            assert_eq!(g.to_bits(), want.to_bits(), "step {i}: {g} vs {want}");
        }
        assert_eq!(got[warmup], lr);
        assert!(got[steps] < 1e-18 && got[15] == 0.0);
        assert!(WarmupCosine::new(2.0, 0, 10).is_err());
    }
}
