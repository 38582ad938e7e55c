//! PINN training (PtychoPINN `train`): Adam, shuffled mini-batches, a validation split,
//! ReduceLROnPlateau on the validation loss, early stopping on the training loss, and a
//! burnpack checkpoint with the sizes needed to rebuild the network.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use indicatif::ProgressBar;
use ndarray::Array2;
use num_complex::Complex32;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::grouping::Grouped;
use super::losses;
use super::model::{ModelConfig, ModelShape, PtychoPinn};
use super::physics::{self, Cplx, GroupGeometry};
use crate::backend::{seeded, tensor_from, to_vec};
use crate::error::SpxError;
use crate::io;
use crate::train::{Monitor, ReduceOnPlateau};

/// `[ptycho.pinn]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PinnConfig {
    /// Photons per pattern that set the initial intensity scale sqrt(nphotons)/(N/2).
    pub nphotons: f64,
    /// Model probe normalisation: P / (probe_scale · mean|P · disk(r < N/4)|).
    pub probe_scale: f64,
    /// Centre crop M of each group's object used when stitching.
    pub stitch_crop: usize,
    pub model: ModelConfig,
    pub train: TrainConfig,
}

/// `[ptycho.pinn.train]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub nll_weight: f64,
    pub mae_weight: f64,
    pub lr: f64,
    pub batch_size: usize,
    pub epochs: usize,
    /// Fraction of groups held out for the validation loss (0 = none).
    pub val_fraction: f64,
    pub plateau_factor: f64,
    pub plateau_patience: usize,
    pub min_lr: f64,
    /// Stop after this many epochs without a lower training loss (0 = never).
    pub early_stop_patience: usize,
}

/// Groups in network layout.
#[derive(Clone, Debug)]
pub struct PinnData {
    pub n: usize,
    pub c: usize,
    /// `[B, C, N, N]` normalised amplitudes X_full, row-major.
    pub x: Vec<f32>,
    /// coords_relative per group and channel, (dx, dy).
    pub rel: Vec<Vec<(f64, f64)>>,
    /// Group centroids (x, y) in object pixels.
    pub offsets: Vec<(f64, f64)>,
}

impl PinnData {
    pub fn from_grouped(g: &Grouped) -> Self {
        let (b, n, _, c) = g.x_full.dim();
        let mut x = vec![0f32; b * c * n * n];
        for ((bi, r, col, ch), v) in g.x_full.indexed_iter() {
            x[((bi * c + ch) * n + r) * n + col] = *v;
        }
        let cr = &g.index.coords_relative;
        let co = &g.index.coords_offsets;
        let rel = (0..b)
            .map(|bi| {
                (0..c)
                    .map(|k| (cr[[bi, 0, 0, k]], cr[[bi, 0, 1, k]]))
                    .collect()
            })
            .collect();
        let offsets = (0..b)
            .map(|bi| (co[[bi, 0, 0, 0]], co[[bi, 0, 1, 0]]))
            .collect();
        PinnData {
            n,
            c,
            x,
            rel,
            offsets,
        }
    }

    pub fn len(&self) -> usize {
        self.rel.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rel.is_empty()
    }

    /// Network input `[b, C, N, N]` for the given groups.
    pub fn batch(&self, idx: &[usize], dev: &Device) -> Tensor<4> {
        let per = self.c * self.n * self.n;
        let mut v = Vec::with_capacity(idx.len() * per);
        for &i in idx {
            v.extend_from_slice(&self.x[i * per..(i + 1) * per]);
        }
        tensor_from(v, [idx.len(), self.c, self.n, self.n], dev)
    }

    pub fn geometry(&self, idx: &[usize], dev: &Device) -> GroupGeometry {
        let rel: Vec<_> = idx.iter().map(|&i| self.rel[i].clone()).collect();
        let gs = (self.c as f64).sqrt().round() as usize;
        GroupGeometry::new(&rel, self.n, physics::padded_size(self.n, gs), dev)
    }
}

/// The model probe `[1,1,N,N]`: P / (probe_scale · mean over N×N of |P|·[r < N/4]).
pub fn model_probe(probe: &Array2<Complex32>, probe_scale: f64, dev: &Device) -> Cplx<4> {
    let n = probe.nrows();
    let mut s = 0.0f64;
    for ((r, c), p) in probe.indexed_iter() {
        let y = r as f64 - (n / 2) as f64 + 0.5;
        let x = c as f64 - (n / 2) as f64 + 0.5;
        if (x * x + y * y).sqrt() < (n / 4) as f64 {
            s += p.norm() as f64;
        }
    }
    let div = probe_scale * s / (n * n) as f64;
    let re = probe.iter().map(|p| (p.re as f64 / div) as f32).collect();
    let im = probe.iter().map(|p| (p.im as f64 / div) as f32).collect();
    Cplx::new(
        tensor_from(re, [1, 1, n, n], dev),
        tensor_from(im, [1, 1, n, n], dev),
    )
}

/// One epoch's record in the loss history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: f64,
    /// NaN when there is no validation split.
    pub val_loss: f64,
    pub lr: f64,
    pub intensity_scale: f64,
    pub seconds: f64,
}

pub struct Trained {
    pub model: PtychoPinn,
    pub shape: ModelShape,
    pub history: Vec<EpochRecord>,
    pub stopped_early: bool,
}

fn loss_on(
    model: &PtychoPinn,
    data: &PinnData,
    idx: &[usize],
    probe: &Cplx<4>,
    s: f64,
    tc: &TrainConfig,
    dev: &Device,
) -> Tensor<1> {
    let x = data.batch(idx, dev) * s;
    let out = model.forward(x.clone(), &data.geometry(idx, dev), probe);
    losses::combined(out.pred_amp, x, tc.nll_weight, tc.mae_weight)
}

/// Train a fresh model on `data` (device must have autodiff). The target is `s·X_full` with
/// `s` the initial intensity scale, as the reference feeds `X·intensity_scale`.
pub fn train(
    cfg: &PinnConfig,
    data: &PinnData,
    probe: &Array2<Complex32>,
    dev: &Device,
    seed: u64,
    pb: &ProgressBar,
) -> Result<Trained, SpxError> {
    train_with(cfg, data, probe, dev, seed, pb, None)
}

/// Per-epoch checkpointing of [`train_with`].
#[derive(Clone, Debug)]
pub struct Checkpointing {
    /// Directory replaced (all or nothing) after every epoch.
    pub dir: std::path::PathBuf,
    /// Identifies the data and every setting that shapes the run except the epoch count: a
    /// checkpoint with another fingerprint is refused on resume.
    pub fingerprint: String,
    /// Continue from `dir` when it holds a checkpoint.
    pub resume: bool,
}

/// The training state after an epoch. Floats are stored as their bits, so a resumed run
/// continues from exactly the values an uninterrupted one holds (JSON text would round, and
/// has no NaN or infinity).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct EpochState {
    fingerprint: String,
    epochs_done: usize,
    stopped_early: bool,
    lr: u64,
    best_val: u64,
    plateau: usize,
    best_loss: u64,
    stall: usize,
    /// (epoch, loss, val_loss, lr, intensity_scale, seconds), floats as bits.
    history: Vec<(usize, u64, u64, u64, u64, u64)>,
    /// CRC-32 checksum and length of model.bpk and optimizer.bpk.
    checksum: std::collections::BTreeMap<String, String>,
}

const CK_STATE: &str = "state.json";
const CK_OPT: &str = "optimizer.bpk";

fn save_epoch(
    dir: &Path,
    model: &PtychoPinn,
    opt: &burn::optim::ModuleOptimizer,
    st: &mut EpochState,
) -> Result<(), SpxError> {
    io::atomic::write_dir_atomic(dir, |tmp| {
        let wp = tmp.join(WEIGHTS);
        model
            .clone()
            .save_file(&wp)
            .map_err(|e| SpxError::file(&wp, format!("saving checkpoint: {e}")))?;
        let op = tmp.join(CK_OPT);
        // burn lays the record out in hash-map order; the canonical layout makes the same
        // state the same bytes (see `io::burnpack`).
        let bytes = opt
            .into_bytes()
            .map_err(|e| format!("{e}"))
            .and_then(|raw| io::burnpack::canonical(&raw))
            .map_err(|e| SpxError::file(&op, format!("saving optimizer state: {e}")))?;
        io::write_atomic(&op, |w| w.write_all(&bytes))?;
        st.checksum.clear();
        for f in [WEIGHTS, CK_OPT] {
            st.checksum
                .insert(f.to_string(), io::atomic::file_checksum(&tmp.join(f))?);
        }
        let json = serde_json::to_vec_pretty(st).expect("state serialises");
        io::write_atomic(&tmp.join(CK_STATE), |w| w.write_all(&json))
    })
}

/// The checkpoint in `dir`, verified (fingerprint and hashes); `None` when there is none.
fn load_epoch(dir: &Path, fingerprint: &str) -> Result<Option<EpochState>, SpxError> {
    let sp = dir.join(CK_STATE);
    if !sp.is_file() {
        return Ok(None);
    }
    let text = std::fs::read(&sp).map_err(|e| SpxError::io(&sp, e))?;
    let st: EpochState =
        serde_json::from_slice(&text).map_err(|e| SpxError::file(&sp, format!("{e}")))?;
    if st.fingerprint != fingerprint {
        return Err(SpxError::field(
            &sp,
            "fingerprint",
            "checkpoint of another run (different data, seed or settings); \
             remove it or choose another --out",
        ));
    }
    for f in [WEIGHTS, CK_OPT] {
        let p = dir.join(f);
        let want = st
            .checksum
            .get(f)
            .ok_or_else(|| SpxError::field(&sp, "checksum", format!("no hash recorded for {f}")))?;
        if &io::atomic::file_checksum(&p)? != want {
            return Err(SpxError::file(
                &p,
                format!(
                    "content does not match {CK_STATE} (epoch {}): torn or corrupt checkpoint",
                    st.epochs_done
                ),
            ));
        }
    }
    Ok(Some(st))
}

/// [`train`], writing a checkpoint after every epoch and optionally resuming from one. A
/// resumed run gives the same weights and history as an uninterrupted one: the host random
/// stream is replayed to the epoch reached, and the Adam moments, learning rate and
/// plateau/early-stopping counters are restored.
///
/// Training runs on a worker of rayon's global pool ([`crate::train::on_pool_worker`]), as the
/// DIP fit does.
#[allow(clippy::too_many_arguments)]
pub fn train_with(
    cfg: &PinnConfig,
    data: &PinnData,
    probe: &Array2<Complex32>,
    dev: &Device,
    seed: u64,
    pb: &ProgressBar,
    ck: Option<&Checkpointing>,
) -> Result<Trained, SpxError> {
    crate::train::on_pool_worker(|| train_here(cfg, data, probe, dev, seed, pb, ck))
}

#[allow(clippy::too_many_arguments)]
fn train_here(
    cfg: &PinnConfig,
    data: &PinnData,
    probe: &Array2<Complex32>,
    dev: &Device,
    seed: u64,
    pb: &ProgressBar,
    ck: Option<&Checkpointing>,
) -> Result<Trained, SpxError> {
    let tc = &cfg.train;
    if data.len() < 2 {
        return Err(SpxError::Config(
            "ptycho.pinn: need at least 2 groups to train".into(),
        ));
    }
    check_pattern_size(data.n)?;
    if !(tc.lr.is_finite() && tc.lr > 0.0) {
        return Err(SpxError::Config(format!(
            "ptycho.pinn.train.lr = {} must be finite and > 0",
            tc.lr
        )));
    }
    let gs = (data.c as f64).sqrt().round() as usize;
    let shape = ModelShape::new(&cfg.model, data.n, gs, cfg.nphotons);
    let mut rng = seeded(dev, seed);
    // Deterministic parameter ids: same weights, same model.bpk bytes.
    let mut model =
        crate::spektron::model::checkpoint::renumber_params(PtychoPinn::new(&shape, dev));
    let probe_t = model_probe(probe, cfg.probe_scale, dev);
    let s = shape.intensity_scale;

    let mut order: Vec<usize> = (0..data.len()).collect();
    order.shuffle(&mut rng);
    let n_val = ((tc.val_fraction * data.len() as f64).round() as usize).min(data.len() - 1);
    let (val, mut tr) = (order[..n_val].to_vec(), order[n_val..].to_vec());

    let mut opt = AdamConfig::new().init();
    // ReduceLROnPlateau on the validation loss; early stopping on the training loss.
    let mut plateau =
        ReduceOnPlateau::new(tc.lr, tc.plateau_factor, tc.plateau_patience, tc.min_lr);
    let mut stall = Monitor::new(0.0);
    let mut lr = tc.lr;
    let mut history = vec![];
    let mut stopped_early = false;
    if tc.batch_size == 0 {
        return Err(SpxError::Config(
            "ptycho.pinn.train.batch_size must be >= 1".into(),
        ));
    }
    let bs = tc.batch_size;
    pb.set_length((tc.epochs * tr.len().div_ceil(bs)) as u64);
    let mut start = 0;
    if let Some(ck) = ck
        && ck.resume
        && let Some(st) = load_epoch(&ck.dir, &ck.fingerprint)?
    {
        model = model.try_load_file(ck.dir.join(WEIGHTS)).map_err(|e| {
            SpxError::file(ck.dir.join(WEIGHTS), format!("loading checkpoint: {e}"))
        })?;
        opt = opt.load(ck.dir.join(CK_OPT)).map_err(|e| {
            SpxError::file(ck.dir.join(CK_OPT), format!("loading optimizer state: {e}"))
        })?;
        start = st.epochs_done;
        // Replay the per-epoch shuffles so the batches continue as without the interruption.
        for _ in 0..start {
            tr.shuffle(&mut rng);
        }
        lr = f64::from_bits(st.lr);
        plateau.lr = lr;
        plateau.monitor.best = f64::from_bits(st.best_val);
        plateau.monitor.since = st.plateau;
        stall.best = f64::from_bits(st.best_loss);
        stall.since = st.stall;
        stopped_early = st.stopped_early;
        history = st
            .history
            .iter()
            .map(|&(epoch, l, v, r, i, sec)| EpochRecord {
                epoch,
                loss: f64::from_bits(l),
                val_loss: f64::from_bits(v),
                lr: f64::from_bits(r),
                intensity_scale: f64::from_bits(i),
                seconds: f64::from_bits(sec),
            })
            .collect();
        tracing::info!("resuming PtychoPINN training after epoch {start}");
        pb.set_position((start * tr.len().div_ceil(bs)) as u64);
    }
    let first = if stopped_early { tc.epochs } else { start };
    for epoch in first..tc.epochs {
        let t0 = Instant::now();
        tr.shuffle(&mut rng);
        let (mut sum, mut count) = (0.0f64, 0usize);
        for chunk in tr.chunks(bs) {
            let loss = loss_on(&model, data, chunk, &probe_t, s, tc, dev);
            let l: f32 = loss.clone().into_scalar();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = opt.step(lr, model, grads);
            sum += l as f64 * chunk.len() as f64;
            count += chunk.len();
            pb.inc(1);
        }
        let loss = sum / count as f64;
        let val_loss = if val.is_empty() {
            f64::NAN
        } else {
            let mut v = 0.0;
            for chunk in val.chunks(bs) {
                let l: f32 = loss_on(&model, data, chunk, &probe_t, s, tc, dev).into_scalar();
                v += l as f64 * chunk.len() as f64;
            }
            v / val.len() as f64
        };
        let scale = to_vec(model.log_scale.val())[0].exp() as f64;
        history.push(EpochRecord {
            epoch,
            loss,
            val_loss,
            lr,
            intensity_scale: scale,
            seconds: t0.elapsed().as_secs_f64(),
        });
        tracing::debug!(epoch, loss, val_loss, lr, "pinn epoch");
        if !loss.is_finite() {
            return Err(SpxError::Config(format!(
                "ptycho.pinn: training loss became {loss} at epoch {epoch}; lower ptycho.pinn.train.lr"
            )));
        }
        // ReduceLROnPlateau on the validation loss (training loss without a split)
        let monitored = if val_loss.is_nan() { loss } else { val_loss };
        lr = plateau.observe(epoch, monitored);
        if !stall.observe(epoch, loss) && stall.stalled(tc.early_stop_patience) {
            stopped_early = true;
        }
        if let Some(ck) = ck {
            let mut st = EpochState {
                fingerprint: ck.fingerprint.clone(),
                epochs_done: epoch + 1,
                stopped_early,
                lr: lr.to_bits(),
                best_val: plateau.monitor.best.to_bits(),
                plateau: plateau.monitor.since,
                best_loss: stall.best.to_bits(),
                stall: stall.since,
                history: history
                    .iter()
                    .map(|r| {
                        (
                            r.epoch,
                            r.loss.to_bits(),
                            r.val_loss.to_bits(),
                            r.lr.to_bits(),
                            r.intensity_scale.to_bits(),
                            r.seconds.to_bits(),
                        )
                    })
                    .collect(),
                checksum: Default::default(),
            };
            save_epoch(&ck.dir, &model, &opt, &mut st)?;
        }
        if stopped_early {
            break;
        }
    }
    Ok(Trained {
        model,
        shape,
        history,
        stopped_early,
    })
}

/// The network halves the pattern down to 8 px and mirrors it back: N must be a power of two
/// of at least 8 (`ptycho simulate` also accepts other sizes, for ePIE).
pub fn check_pattern_size(n: usize) -> Result<(), SpxError> {
    if n.is_power_of_two() && n >= 8 {
        Ok(())
    } else {
        Err(SpxError::Config(format!(
            "PtychoPINN needs N×N patterns with N a power of two >= 8, got N = {n} \
             (ePIE, `spx ptycho epie`, takes any size)"
        )))
    }
}

/// File names inside a model directory.
pub const WEIGHTS: &str = "model.bpk";
pub const SHAPE: &str = "model.json";

/// Write the weights (burnpack) and the sizes (JSON) into `dir`.
pub fn save_model(model: &PtychoPinn, shape: &ModelShape, dir: &Path) -> Result<(), SpxError> {
    io::ensure_dir(dir)?;
    let path = dir.join(WEIGHTS);
    io::with_atomic_path(&path, |tmp| {
        model
            .clone()
            .save_file(tmp)
            .map_err(|e| SpxError::file(tmp, format!("saving burnpack: {e}")))
    })?;
    let json = serde_json::to_vec_pretty(shape).expect("shape serialises");
    io::write_atomic(&dir.join(SHAPE), |w| w.write_all(&json))?;
    Ok(())
}

/// Rebuild the network from `dir` on `dev`.
pub fn load_model(dir: &Path, dev: &Device) -> Result<(PtychoPinn, ModelShape), SpxError> {
    let sp = dir.join(SHAPE);
    let text = std::fs::read(&sp).map_err(|e| SpxError::io(&sp, e))?;
    let shape: ModelShape =
        serde_json::from_slice(&text).map_err(|e| SpxError::file(&sp, format!("{e}")))?;
    // The sizes build the network before any weight is read: check them first.
    check_pattern_size(shape.n).map_err(|e| SpxError::field(&sp, "n", e))?;
    let filters_ok = |v: &[usize]| v.iter().all(|&f| (1..=4096).contains(&f));
    if shape.n > 1024
        || !(1..=16).contains(&shape.gridsize)
        || shape.encoder.is_empty()
        || shape.encoder.len() > 8
        || shape.decoder.len() + 1 != shape.encoder.len()
        || !filters_ok(&shape.encoder)
        || !filters_ok(&shape.decoder)
        || !(1..=4096).contains(&shape.border_filters)
        || !(shape.intensity_scale.is_finite() && shape.intensity_scale > 0.0)
    {
        return Err(SpxError::field(
            &sp,
            "encoder/decoder/gridsize",
            "sizes out of range (N ≤ 1024, gridsize 1..=16, 1..=4096 filters per level)",
        ));
    }
    let wp = dir.join(WEIGHTS);
    let model = PtychoPinn::new(&shape, dev)
        .try_load_file(&wp)
        .map_err(|e| SpxError::file(&wp, format!("loading burnpack: {e}")))?;
    Ok((model, shape))
}

/// Merged object of each group (complex N×N) for inference, in batches; the input is scaled
/// by the same initial intensity scale as in training.
#[allow(clippy::too_many_arguments)]
pub fn predict_objects(
    model: &PtychoPinn,
    shape: &ModelShape,
    data: &PinnData,
    probe: &Array2<Complex32>,
    cfg: &PinnConfig,
    batch: usize,
    dev: &Device,
    pb: &ProgressBar,
) -> (Vec<Array2<Complex32>>, Vec<Array2<f32>>) {
    let shape_scale = shape.intensity_scale;
    let probe_t = model_probe(probe, cfg.probe_scale, dev);
    let n = data.n;
    let idx: Vec<usize> = (0..data.len()).collect();
    let mut out = Vec::with_capacity(data.len());
    let mut weights = Vec::with_capacity(data.len());
    for chunk in idx.chunks(batch.max(1)) {
        let x = data.batch(chunk, dev) * shape_scale;
        let geo = data.geometry(chunk, dev);
        let o = model.forward(x, &geo, &probe_t).object;
        let (lo, p) = ((geo.padded - n) / 2, geo.padded);
        let inv = to_vec(geo.inv_norm);
        let re = to_vec(o.re);
        let im = to_vec(o.im);
        for k in 0..chunk.len() {
            out.push(Array2::from_shape_fn((n, n), |(r, c)| {
                let i = k * n * n + r * n + c;
                Complex32::new(re[i], im[i])
            }));
            // pixels the constraint map covers by less than half a patch are amplified by
            // the 1e-3 floor; they get no stitching weight
            weights.push(Array2::from_shape_fn((n, n), |(r, c)| {
                let norm = 1.0 / inv[(k * p + lo + r) * p + lo + c] - 1e-3;
                if norm >= 0.5 { 1.0 } else { 0.0 }
            }));
        }
        pb.inc(chunk.len() as u64);
    }
    (out, weights)
}
