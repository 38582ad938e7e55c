//! Masked spectral pretraining on a corpus HDF5 (`/spectra` (N, n_points) f32, `/modality` i8):
//! AdamW, linear warm-up + cosine decay, gradient-norm clipping, augmentation, validation loss,
//! checkpoints and resume, loss log.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor};
use indicatif::ProgressBar;
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution as _, Normal};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, LogEntry, StreamState};
use super::losses::{self, LossTerms};
use super::{LossConfig, ModelConfig, PretrainConfig, SpektronModel, TokenLayout};
use crate::backend::{seeded, tensor_from};
use crate::error::SpxError;
use crate::io::hdf5::H5Reader;
use crate::train::schedule::WarmupCosine;

/// Learning rate at `step` (0-based): linear warm-up to `lr`, then cosine decay to 0 at `steps`
/// ([`WarmupCosine`], burn-optim's cosine annealing after the warm-up).
pub fn lr_at(step: usize, cfg: &PretrainConfig) -> Result<f64, SpxError> {
    let mut s = WarmupCosine::new(cfg.lr, cfg.warmup, cfg.steps)?;
    s.skip(step);
    Ok(s.next_lr())
}

/// Augmentation in place: intensity ×(1±a), integer shift ±s (edge-padded), a random linear
/// baseline drift, Gaussian noise.
pub fn augment(x: &mut [f32], cfg: &PretrainConfig, rng: &mut impl Rng) {
    let n = x.len();
    let scale = 1.0 + cfg.aug_intensity * (2.0 * rng.random::<f64>() - 1.0);
    let shift = if cfg.aug_shift > 0 {
        rng.random_range(-(cfg.aug_shift as i64)..=cfg.aug_shift as i64) as isize
    } else {
        0
    };
    let src = x.to_vec();
    let d0 = cfg.aug_drift * (2.0 * rng.random::<f64>() - 1.0);
    let d1 = cfg.aug_drift * (2.0 * rng.random::<f64>() - 1.0);
    let noise = Normal::new(0.0, cfg.aug_noise.max(0.0)).expect("σ ≥ 0");
    for (i, v) in x.iter_mut().enumerate() {
        let j = (i as isize - shift).clamp(0, n as isize - 1) as usize;
        let t = i as f64 / (n - 1).max(1) as f64;
        let drift = d0 + (d1 - d0) * t;
        *v = (f64::from(src[j]) * scale + drift + noise.sample(rng)) as f32;
    }
}

/// Streams random rows from the corpus: a window of consecutive rows (one HDF5 read) is
/// shuffled and served in batches, then refilled at a new random offset, so memory stays
/// bounded for corpora larger than RAM. Validation rows are excluded from training.
pub struct CorpusStream {
    reader: H5Reader,
    path: PathBuf,
    pub n_rows: usize,
    pub n_points: usize,
    modality: Vec<i8>,
    pub val_rows: Vec<usize>,
    val_set: HashSet<usize>,
    window: usize,
    buf: Vec<usize>,
    buf_data: Vec<f32>,
    buf_start: usize,
}

impl CorpusStream {
    pub fn open(
        path: &Path,
        n_points: usize,
        cfg: &PretrainConfig,
        rng: &mut impl Rng,
    ) -> Result<Self, SpxError> {
        let reader = H5Reader::open(path)?;
        let shape = reader.shape("spectra")?;
        if shape.len() != 2 || shape[1] != n_points {
            return Err(SpxError::field(
                path,
                "/spectra",
                format!(
                    "expected shape (N, {n_points}) (spektron.model.n_points), found {shape:?}"
                ),
            ));
        }
        let n_rows = shape[0];
        check_rows_fit(path, n_rows)?;
        if n_rows < 2 {
            return Err(SpxError::field(path, "/spectra", "need at least 2 spectra"));
        }
        let modality: Vec<i8> = reader.read::<i8>("modality")?.iter().copied().collect();
        if modality.len() != n_rows {
            return Err(SpxError::field(
                path,
                "/modality",
                format!("length {} ≠ {n_rows} spectra", modality.len()),
            ));
        }
        check_modality_codes(path, &modality)?;
        let n_val = ((cfg.val_fraction * n_rows as f64).round() as usize)
            .min(cfg.val_batches * cfg.batch)
            .min(n_rows - 1);
        let mut all: Vec<usize> = (0..n_rows).collect();
        all.shuffle(rng);
        let mut val_rows = all[..n_val].to_vec();
        val_rows.sort_unstable();
        Ok(CorpusStream {
            reader,
            path: path.to_path_buf(),
            n_rows,
            n_points,
            modality,
            val_set: val_rows.iter().copied().collect(),
            val_rows,
            window: (cfg.batch * 16).max(1024).min(n_rows),
            buf: Vec::new(),
            buf_data: Vec::new(),
            buf_start: 0,
        })
    }

    fn refill(&mut self, rng: &mut impl Rng) -> Result<(), SpxError> {
        let start = rng.random_range(0..=self.n_rows - self.window);
        let rows = self
            .reader
            .read_rows::<f32>("spectra", start, self.window)?;
        self.buf_data = rows.iter().copied().collect();
        check_finite(&self.path, &self.buf_data, start, self.n_points)?;
        self.buf_start = start;
        self.buf = (start..start + self.window)
            .filter(|r| !self.val_set.contains(r))
            .collect();
        self.buf.shuffle(rng);
        Ok(())
    }

    /// Next training batch: spectra (row-major) and modality codes.
    pub fn next_batch(
        &mut self,
        batch: usize,
        rng: &mut impl Rng,
    ) -> Result<(Vec<f32>, Vec<i8>), SpxError> {
        let mut x = Vec::with_capacity(batch * self.n_points);
        let mut m = Vec::with_capacity(batch);
        while m.len() < batch {
            if self.buf.is_empty() {
                self.refill(rng)?;
            }
            let r = self.buf.pop().expect("refilled");
            let o = (r - self.buf_start) * self.n_points;
            x.extend_from_slice(&self.buf_data[o..o + self.n_points]);
            m.push(self.modality[r]);
        }
        Ok((x, m))
    }

    /// The window position for a checkpoint: its first row and the rows not yet served.
    fn position(&self) -> (usize, Vec<usize>) {
        (self.buf_start, self.buf.clone())
    }

    /// Put the window back where [`position`](Self::position) found it (re-reading its rows),
    /// so the next batches are the ones the uninterrupted run drew. `state` names the file
    /// the position came from, for errors.
    fn restore(&mut self, start: usize, rows: &[usize], state: &Path) -> Result<(), SpxError> {
        if rows.is_empty() {
            self.buf.clear();
            return Ok(());
        }
        let end = start.checked_add(self.window).filter(|&e| e <= self.n_rows);
        let fits = end.is_some_and(|e| {
            rows.iter()
                .all(|r| (start..e).contains(r) && !self.val_set.contains(r))
        });
        if !fits {
            return Err(SpxError::field(
                state,
                "stream",
                format!(
                    "window at row {start} does not fit this corpus ({} rows, window {}): \
                     resume with the corpus and spektron.pretrain.batch of the checkpointed run",
                    self.n_rows, self.window
                ),
            ));
        }
        let data = self
            .reader
            .read_rows::<f32>("spectra", start, self.window)?;
        self.buf_data = data.iter().copied().collect();
        check_finite(&self.path, &self.buf_data, start, self.n_points)?;
        self.buf_start = start;
        self.buf = rows.to_vec();
        Ok(())
    }

    /// Validation rows `[i·batch, (i+1)·batch)`.
    pub fn val_batch(&self, i: usize, batch: usize) -> Result<(Vec<f32>, Vec<i8>), SpxError> {
        let mut x = Vec::new();
        let mut m = Vec::new();
        for &r in self.val_rows.iter().skip(i * batch).take(batch) {
            let row: Vec<f32> = self
                .reader
                .read_rows::<f32>("spectra", r, 1)?
                .iter()
                .copied()
                .collect();
            check_finite(&self.path, &row, r, self.n_points)?;
            x.extend(row);
            m.push(self.modality[r]);
        }
        Ok((x, m))
    }
}

/// A corpus header may declare far more rows than were ever written (unwritten HDF5 chunks
/// take no space). Every real row takes at least one byte on disk even compressed, so more
/// rows than the file has bytes is a corrupt file, refused before anything is sized from it.
pub fn check_rows_fit(path: &Path, n_rows: usize) -> Result<(), SpxError> {
    let len = std::fs::metadata(path)
        .map_err(|e| SpxError::io(path, e))?
        .len();
    if n_rows as u64 > len {
        return Err(SpxError::field(
            path,
            "/spectra",
            format!("declares {n_rows} rows but the file has {len} bytes: unwritten or corrupt"),
        ));
    }
    Ok(())
}

/// Modality codes index the model's per-modality embeddings: a code outside the five known
/// ones (IR 0 … UNKNOWN 4) is an error naming the row, not an index panic later.
pub fn check_modality_codes(path: &Path, codes: &[i8]) -> Result<(), SpxError> {
    let n = crate::spektron::data::Modality::ALL.len() as i8;
    if let Some((row, c)) = codes.iter().enumerate().find(|(_, c)| !(0..n).contains(*c)) {
        return Err(SpxError::field(
            path,
            "/modality",
            format!(
                "code {c} at row {row} is not a modality (0 = IR … {} = UNKNOWN)",
                n - 1
            ),
        ));
    }
    Ok(())
}

/// NaN or infinite values in spectra read for training would turn every weight into NaN.
fn check_finite(
    path: &Path,
    rows: &[f32],
    first_row: usize,
    n_points: usize,
) -> Result<(), SpxError> {
    if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
        return Err(SpxError::field(
            path,
            "/spectra",
            format!(
                "row {} has a non-finite value ({}) at point {}",
                first_row + i / n_points.max(1),
                rows[i],
                i % n_points.max(1)
            ),
        ));
    }
    Ok(())
}

/// Everything the loss needs besides the model; built once per run.
pub struct LossContext {
    pub layout: TokenLayout,
    /// `[padded, n_points]` synthesis matrix (coefficients → spectrum), for the physics terms.
    pub synth: Tensor<2>,
}

impl LossContext {
    pub fn new(layout: TokenLayout, device: &Device) -> Self {
        let m = layout.synthesis_matrix();
        let synth = tensor_from(m, [layout.padded(), layout.n_points], device);
        LossContext { layout, synth }
    }
}

fn patches_of(lay: &TokenLayout, spectra: &[f32], device: &Device) -> Tensor<3> {
    let b = spectra.len() / lay.n_points;
    let flat: Vec<f32> = spectra
        .chunks(lay.n_points)
        .flat_map(|s| lay.encode(s))
        .collect();
    tensor_from(flat, [b, lay.n_patches, lay.patch], device)
}

/// The pretraining objective on one batch of clean spectra. View 1 is augmented and
/// block-masked (MSRP on its masked patches); view 2 is augmented and reconstructed whole
/// against the clean spectrum (denoising, physics); z_chem of the two views are pulled
/// together (InfoNCE on samples) and their mean distributions aligned (Sinkhorn); VIB KL on
/// both latents.
pub fn batch_loss(
    model: &SpektronModel,
    ctx: &LossContext,
    spectra: &[f32],
    modality: &[i8],
    lc: &LossConfig,
    pc: &PretrainConfig,
    rng: &mut impl Rng,
) -> (Tensor<1>, LossTerms) {
    let lay = &ctx.layout;
    let dev = ctx.synth.device();
    let b = modality.len();
    let mut v1 = spectra.to_vec();
    let mut v2 = spectra.to_vec();
    for (a, c) in v1.chunks_mut(lay.n_points).zip(v2.chunks_mut(lay.n_points)) {
        augment(a, pc, rng);
        augment(c, pc, rng);
    }
    // View 1's tokens (host), read by the peak-aware mask.
    let enc1: Vec<f32> = v1
        .chunks(lay.n_points)
        .flat_map(|s| lay.encode(s))
        .collect();
    let mask: Vec<f32> = enc1
        .chunks(lay.padded())
        .flat_map(|t| {
            losses::strategy_mask(
                lc.mask_strategy,
                t,
                lay.n_patches,
                lc.mask_ratio,
                lc.mask_block,
                rng,
            )
        })
        .map(|m| if m { 1.0 } else { 0.0 })
        .collect();
    let mask = tensor_from(mask, [b, lay.n_patches], &dev);
    let dom = Tensor::<1, Int>::from_ints(
        modality
            .iter()
            .map(|&m| i64::from(m))
            .collect::<Vec<_>>()
            .as_slice(),
        &dev,
    );
    let p1 = tensor_from(enc1, [b, lay.n_patches, lay.patch], &dev);
    let p2 = patches_of(lay, &v2, &dev);
    let clean = patches_of(lay, spectra, &dev);
    let o1 = model.forward(p1.clone(), dom.clone(), Some(mask.clone()));
    let o2 = model.forward(p2, dom, None);

    let msrp = losses::masked_mse(o1.recon.clone(), p1, mask);
    let denoise = losses::mse(o2.recon.clone(), clean.clone());
    let z1 = o1.chem.sample();
    let z2 = o2.chem.sample();
    let contrastive = losses::info_nce(z1.clone(), z2.clone(), lc.temperature);
    // OT on the noise-free means, cost per latent dimension (sampled 128-d z would make the
    // cost ≈ 2·z_dim from the VIB noise alone and swamp every other term).
    let zs = (o1.chem.mu.dims()[1] as f64).sqrt();
    let ot = losses::sinkhorn(
        o1.chem.mu.clone() / zs,
        o2.chem.mu.clone() / zs,
        lc.ot_reg,
        lc.ot_iters,
    );
    let spec = o2
        .recon
        .reshape([b, lay.padded()])
        .matmul(ctx.synth.clone());
    let target = tensor_from(spectra.to_vec(), [b, lay.n_points], &dev);
    let physics = losses::smoothness(spec.clone()) * lc.smoothness
        + losses::nonneg(spec.clone()) * lc.nonneg
        + losses::derivative(spec, target) * lc.derivative;
    let vib = (losses::vib_kl(o1.chem.mu, o1.chem.logvar)
        + losses::vib_kl(o2.chem.mu, o2.chem.logvar)
        + losses::vib_kl(o1.inst.mu, o1.inst.logvar)
        + losses::vib_kl(o2.inst.mu, o2.inst.logvar))
        * lc.beta;
    let moe = match (o1.balance, o2.balance) {
        (Some(a), Some(b)) => (a + b) * 0.5,
        _ => Tensor::<1>::zeros([1], &dev),
    };
    let total = moe.clone() * lc.moe
        + msrp.clone() * lc.msrp
        + contrastive.clone() * lc.contrastive
        + denoise.clone() * lc.denoise
        + ot.clone() * lc.ot
        + physics.clone() * lc.physics
        + vib.clone() * lc.vib;
    let s = |t: &Tensor<1>| f64::from(t.clone().into_scalar::<f32>());
    let terms = LossTerms {
        total: s(&total),
        msrp: s(&msrp),
        contrastive: s(&contrastive),
        denoise: s(&denoise),
        ot: s(&ot),
        physics: s(&physics),
        vib: s(&vib),
        moe: s(&moe),
    };
    (total, terms)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PretrainReport {
    pub steps_done: usize,
    pub start_step: usize,
    pub spectra_per_s: f64,
    pub parameters: usize,
    pub n_tokens: usize,
    /// Validation terms of the untrained model (fresh runs only).
    pub initial_val: Option<LossTerms>,
    /// Whether `--resume` restored the AdamW moments (checkpoints without `optimizer.bpk` do not).
    pub optimizer_restored: bool,
    /// Whether `--resume` continued the checkpointed batch stream (RNG state and corpus
    /// window), which makes the resumed run equal to an uninterrupted one.
    pub stream_restored: bool,
    pub log: Vec<LogEntry>,
    pub checkpoint: PathBuf,
}

/// What pretraining reads from the config: the model, its losses and the optimisation.
#[derive(Clone, Copy, Debug)]
pub struct Settings<'a> {
    pub model: &'a ModelConfig,
    pub loss: &'a LossConfig,
    pub pretrain: &'a PretrainConfig,
}

/// Run (or resume) pretraining; writes checkpoints under `out/checkpoints/`. A resume from a
/// checkpoint without optimizer state is refused (see [`pretrain_with`]).
#[allow(clippy::too_many_arguments)]
pub fn pretrain(
    corpus: &Path,
    out: &Path,
    cfg: Settings<'_>,
    device: &Device,
    seed: u64,
    resume: Option<&Path>,
    pb: &ProgressBar,
) -> Result<(SpektronModel, PretrainReport), SpxError> {
    pretrain_with(corpus, out, cfg, device, seed, resume, false, pb)
}

/// [`pretrain`]; `reset_optimizer` allows resuming from a checkpoint that has no optimizer
/// state (fresh AdamW moments), which would otherwise be refused.
#[allow(clippy::too_many_arguments)]
pub fn pretrain_with(
    corpus: &Path,
    out: &Path,
    cfg: Settings<'_>,
    device: &Device,
    seed: u64,
    resume: Option<&Path>,
    reset_optimizer: bool,
    pb: &ProgressBar,
) -> Result<(SpektronModel, PretrainReport), SpxError> {
    let pc = cfg.pretrain;
    if pc.batch < 2 {
        return Err(SpxError::field(
            "config",
            "spektron.pretrain.batch",
            "must be ≥ 2 (contrastive/OT pairs)",
        ));
    }
    let mut rng: ChaCha8Rng = seeded(device, seed);
    if !(pc.lr.is_finite() && pc.lr > 0.0) {
        return Err(SpxError::field(
            "config",
            "spektron.pretrain.lr",
            format!("{} is not a finite positive learning rate", pc.lr),
        ));
    }
    let mut model = checkpoint::renumber_params(SpektronModel::new(cfg.model, &mut rng, device)?);
    let mut log: Vec<LogEntry> = Vec::new();
    let mut start = 0;
    let mut saved_stream = None;
    if let Some(dir) = resume {
        if !dir.is_dir() {
            return Err(SpxError::file(dir, "checkpoint directory not found"));
        }
        if !checkpoint::has_optimizer(dir) && !reset_optimizer {
            return Err(SpxError::file(
                dir.join("optimizer.bpk"),
                "checkpoint has no optimizer state; resuming would restart the AdamW moments \
                 (pass --reset-optimizer to accept that)",
            ));
        }
        let st = checkpoint::load(dir, model)?;
        model = st.0;
        start = st.1.step;
        log = st.1.log;
        saved_stream = st.1.stream;
    }
    let lay = cfg.model.layout();
    let ctx = LossContext::new(lay.clone(), device);
    let mut stream = CorpusStream::open(corpus, lay.n_points, pc, &mut rng)?;
    // A checkpoint that records the stream continues it exactly (same batches, augmentations,
    // masks and device draws as the uninterrupted run); an older one starts a distinct host
    // stream per resumed segment, so it does not replay the same batches.
    let mut rng = ChaCha8Rng::seed_from_u64_mixed(seed, start as u64);
    let stream_restored = match (resume, &saved_stream) {
        (Some(dir), Some(st)) => {
            let state = dir.join("state.json");
            rng = restore_rng(st, &state)?;
            stream.restore(st.window_start, &st.window_rows, &state)?;
            device.seed(device_seed(seed, start));
            true
        }
        _ => false,
    };
    let clip = (pc.clip > 0.0).then_some(GradientClippingConfig::Norm(pc.clip as f32));
    let mut opt = AdamWConfig::new()
        .with_weight_decay(pc.weight_decay as f32)
        .with_grad_clipping(clip)
        .init();
    let mut optimizer_restored = false;
    if let Some(dir) = resume {
        (opt, optimizer_restored) = checkpoint::load_optimizer(dir, opt)?;
    }
    let ck_dir = out.join("checkpoints");
    crate::io::atomic::clean_stale(&ck_dir);
    let initial_val = if start == 0 {
        Some(validate(&model.valid(), &ctx, &stream, cfg, seed)?)
    } else {
        None
    };
    pb.set_length(pc.steps as u64);
    pb.set_position(start as u64);
    let t0 = Instant::now();
    let mut seen = 0usize;
    let mut last = ck_dir.join("last");
    let mut schedule = WarmupCosine::new(pc.lr, pc.warmup, pc.steps)?;
    schedule.skip(start);
    for step in start..pc.steps {
        let (x, m) = stream.next_batch(pc.batch, &mut rng)?;
        let (loss, terms) = batch_loss(&model, &ctx, &x, &m, cfg.loss, pc, &mut rng);
        if !terms.total.is_finite() {
            return Err(SpxError::field(
                corpus,
                "/spectra",
                format!(
                    "training loss became {} at step {}; no checkpoint written for it \
                     (lower spektron.pretrain.lr or check the corpus)",
                    terms.total,
                    step + 1
                ),
            ));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = schedule.next_lr();
        model = opt.step(lr, model, grads);
        seen += pc.batch;
        let mut entry = LogEntry {
            step: step + 1,
            lr,
            train: terms,
            val: None,
        };
        let is_last = step + 1 == pc.steps;
        if (pc.val_every > 0 && (step + 1) % pc.val_every == 0) || is_last {
            entry.val = Some(validate(&model.valid(), &ctx, &stream, cfg, seed)?);
        }
        pb.set_message(format!("loss {:.4}", entry.train.total));
        pb.inc(1);
        log.push(entry);
        if (pc.checkpoint_every > 0 && (step + 1) % pc.checkpoint_every == 0) || is_last {
            let st = stream_state(&rng, &stream);
            last =
                checkpoint::save_resumable(&ck_dir, &model, Some(&opt), step + 1, &log, Some(st))?;
            device.seed(device_seed(seed, step + 1));
        }
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    let parameters = model.num_params();
    Ok((
        model,
        PretrainReport {
            steps_done: pc.steps.saturating_sub(start),
            start_step: start,
            spectra_per_s: seen as f64 / secs,
            parameters,
            n_tokens: lay.n_tokens,
            initial_val,
            optimizer_restored,
            stream_restored,
            log,
            checkpoint: last,
        },
    ))
}

/// Mean loss terms over the validation rows (fixed augmentation/mask seed, so comparable
/// across steps).
pub fn validate(
    model: &SpektronModel,
    ctx: &LossContext,
    stream: &CorpusStream,
    cfg: Settings<'_>,
    seed: u64,
) -> Result<LossTerms, SpxError> {
    let pc = cfg.pretrain;
    let mut rng = ChaCha8Rng::seed_from_u64_mixed(seed, u64::MAX);
    let mut acc = LossTerms::default();
    let mut nb = 0.0;
    let n_batches = stream.val_rows.len().div_ceil(pc.batch);
    for i in 0..n_batches {
        let (x, m) = stream.val_batch(i, pc.batch)?;
        if m.len() < 2 {
            continue;
        }
        let (_, t) = batch_loss(model, ctx, &x, &m, cfg.loss, pc, &mut rng);
        acc.total += t.total;
        acc.msrp += t.msrp;
        acc.contrastive += t.contrastive;
        acc.denoise += t.denoise;
        acc.ot += t.ot;
        acc.physics += t.physics;
        acc.vib += t.vib;
        acc.moe += t.moe;
        nb += 1.0;
    }
    if nb > 0.0 {
        for v in [
            &mut acc.total,
            &mut acc.msrp,
            &mut acc.contrastive,
            &mut acc.denoise,
            &mut acc.ot,
            &mut acc.physics,
            &mut acc.vib,
            &mut acc.moe,
        ] {
            *v /= nb;
        }
    }
    Ok(acc)
}

/// The batch stream's position after a step: host RNG state and the corpus window.
fn stream_state(rng: &ChaCha8Rng, stream: &CorpusStream) -> StreamState {
    let (window_start, window_rows) = stream.position();
    StreamState {
        rng_key: rng.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
        rng_stream: rng.get_stream(),
        rng_word_pos: rng.get_word_pos().to_string(),
        window_start,
        window_rows,
    }
}

/// The host RNG recorded by [`stream_state`]; `state` names the file for errors.
fn restore_rng(st: &StreamState, state: &Path) -> Result<ChaCha8Rng, SpxError> {
    use rand::SeedableRng;
    let bad = |what: &str| SpxError::field(state, "stream", format!("unreadable {what}"));
    let hex = st.rng_key.as_bytes();
    if hex.len() != 64 {
        return Err(bad("rng_key (64 hex digits)"));
    }
    let mut key = [0u8; 32];
    for (k, pair) in key.iter_mut().zip(hex.chunks(2)) {
        let txt = std::str::from_utf8(pair).map_err(|_| bad("rng_key"))?;
        *k = u8::from_str_radix(txt, 16).map_err(|_| bad("rng_key"))?;
    }
    let pos: u128 = st.rng_word_pos.parse().map_err(|_| bad("rng_word_pos"))?;
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(st.rng_stream);
    rng.set_word_pos(pos);
    Ok(rng)
}

/// Seed of burn's device RNG (VIB sampling, dropout) after checkpointed `step`: the device
/// RNG's state cannot be read back, so a run re-seeds it from `(seed, step)` after every
/// checkpoint, and a resume does the same, so both continue with the same draws.
fn device_seed(seed: u64, step: usize) -> u64 {
    seed ^ (step as u64)
        .wrapping_add(1)
        .wrapping_mul(0xD1B5_4A32_D192_ED03)
        .rotate_left(29)
}

trait SeedMix {
    fn seed_from_u64_mixed(seed: u64, salt: u64) -> Self;
}

impl SeedMix for ChaCha8Rng {
    fn seed_from_u64_mixed(seed: u64, salt: u64) -> Self {
        use rand::SeedableRng;
        ChaCha8Rng::seed_from_u64(seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17))
    }
}
