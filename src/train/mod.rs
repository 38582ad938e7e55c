//! Training support shared by the neural methods (DIP, PtychoPINN, Spektron).
//!
//! - [`Monitor`]: the best value of a metric and the epochs since it improved — early stopping
//!   and reduce-on-plateau are both "act when `since` reaches a patience"; serialisable, so a
//!   resumed run continues with the same counters.
//! - [`ReduceOnPlateau`]: the learning rate multiplied by a factor when a monitored metric
//!   stalls (burn-optim has no metric-driven scheduler).
//! - [`schedule`]: step-driven learning-rate schedules built from burn-optim's schedulers.
//! - [`history`]: one loss-history file format (CSV with a header, plus a PNG of the curves).
//! - [`on_pool_worker`]: run a training loop on a worker of rayon's global pool.

pub mod history;
pub mod schedule;

use serde::{Deserialize, Serialize};

/// Run `f` on a worker of rayon's global pool (directly when already on one).
///
/// A training loop calls many ops that split their work with rayon (spx's convs, several of
/// burn's CPU kernels). From outside the pool each such op is handed to the pool while the caller
/// sleeps and is woken afterwards; on a worker the op starts on the calling thread. Measured: 18 %
/// of a one-thread DIP fit's CPU time and ≈ 4 % of a one-thread PtychoPINN step went to those
/// hand-offs. Results differ from a call outside the pool in the last bits (rayon splits a job
/// injected from outside the pool once more than one started on a worker, which regroups sums
/// reduced over rayon splits).
pub fn on_pool_worker<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// Best value of a minimised metric and how long ago it was reached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Monitor {
    /// Lowest value seen (`+inf` before the first observation).
    pub best: f64,
    /// Epoch (or step) of `best`.
    pub best_at: usize,
    /// Observations since `best` improved (0 right after an improvement).
    pub since: usize,
    /// An observation improves only if it is below `best · (1 − min_rel_delta)`; 0 means any
    /// strictly lower value counts.
    pub min_rel_delta: f64,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor::new(0.0)
    }
}

impl Monitor {
    pub fn new(min_rel_delta: f64) -> Self {
        Monitor {
            best: f64::INFINITY,
            best_at: 0,
            since: 0,
            min_rel_delta,
        }
    }

    /// Record `value` at `at`; true if it is a new best. A NaN never improves.
    pub fn observe(&mut self, at: usize, value: f64) -> bool {
        let threshold = if self.best.is_finite() && self.min_rel_delta > 0.0 {
            self.best - self.min_rel_delta * self.best.abs()
        } else {
            self.best
        };
        if value < threshold {
            self.best = value;
            self.best_at = at;
            self.since = 0;
            true
        } else {
            self.since += 1;
            false
        }
    }

    /// `patience` observations without improvement (never with patience 0 = disabled).
    pub fn stalled(&self, patience: usize) -> bool {
        patience > 0 && self.since >= patience
    }
}

/// Multiply the learning rate by `factor` (not below `min_lr`) whenever the monitored metric
/// has not improved for `patience` observations (patience 0: after every observation without
/// improvement); the counter restarts after each reduction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReduceOnPlateau {
    pub monitor: Monitor,
    pub factor: f64,
    pub patience: usize,
    pub min_lr: f64,
    pub lr: f64,
}

impl ReduceOnPlateau {
    pub fn new(lr: f64, factor: f64, patience: usize, min_lr: f64) -> Self {
        ReduceOnPlateau {
            monitor: Monitor::new(0.0),
            factor,
            patience,
            min_lr,
            lr,
        }
    }

    /// Observe the metric at `at`; returns the learning rate for what follows.
    pub fn observe(&mut self, at: usize, value: f64) -> f64 {
        if !self.monitor.observe(at, value) && self.monitor.since >= self.patience {
            self.lr = (self.lr * self.factor).max(self.min_lr);
            self.monitor.since = 0;
        }
        self.lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_counts_epochs_since_the_best() {
        let mut m = Monitor::new(0.0);
        let seq = [3.0, 2.0, 2.0, 2.5, 1.0, f64::NAN, 1.5];
        let improved: Vec<bool> = seq
            .iter()
            .enumerate()
            .map(|(i, &v)| m.observe(i, v))
            .collect();
        assert_eq!(improved, [true, true, false, false, true, false, false]);
        assert_eq!((m.best, m.best_at, m.since), (1.0, 4, 2));
        assert!(m.stalled(2) && !m.stalled(3) && !m.stalled(0));
    }

    #[test]
    fn monitor_relative_threshold() {
        let mut m = Monitor::new(0.1);
        assert!(m.observe(0, 10.0));
        assert!(!m.observe(1, 9.5)); // needs < 9.0
        assert!(m.observe(2, 8.9));
        assert_eq!(m.since, 0);
    }

    #[test]
    fn plateau_reduces_after_patience_and_restarts() {
        let mut p = ReduceOnPlateau::new(1e-3, 0.5, 2, 3e-4);
        let lrs: Vec<f64> = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
            .iter()
            .enumerate()
            .map(|(i, &v)| p.observe(i, v))
            .collect();
        assert_eq!(lrs, [1e-3, 1e-3, 5e-4, 5e-4, 3e-4, 3e-4, 3e-4]);
    }
}
