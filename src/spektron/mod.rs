//! Spektron: spectrum readers and the pre-training corpus (`data/`), the classical
//! calibration-transfer baselines (`baselines/`), the neural model with its pretraining,
//! fine-tuning and test-time training (`model/`), and the pipelines on top of them — one
//! function per command: [`classical::run`] (baselines), [`finetune::run`], [`ttt::run`],
//! [`experiment::sample_efficiency`] / [`experiment::table`] (E3/E4, with the supervised deep
//! baselines of [`supervised`]), [`ttt_steps::run`] (E9), [`pretrain_ablation::run`] (E1),
//! [`mask_ablation::run`] (E2), [`arch_ablation::run`] (E7), [`loss_ablation::run`] (E8) — the
//! four on the shared ablation driver [`ablation`] —, [`disentangle::run`] (E10),
//! [`demo::run`] — with their report writers in [`report`] —, and [`grid::run`] (a whole README
//! table: runs × cells of `experiment table` or `baselines` from one spec). [`config`] gathers
//! the settings types and sits above all of them.
//!
//! Layers (a module only imports modules listed before it): `baselines` → `protocol` →
//! `supervised` → `data` → `model` → `anchored` → `blend` → `report` → `classical`/`experiment`/`finetune`/`ttt` →
//! `grid`/`ttt_steps`/`ablation` → `pretrain_ablation`/`mask_ablation`/`arch_ablation`/`loss_ablation`/
//! `disentangle` → `config` → `demo`.
//!
//! Facts, anchors and the upstream defects this code avoids: `shared/notes/spektron.md` (in the
//! project's shared notes, beside the repository).

pub mod ablation;
pub mod anchored;
pub mod arch_ablation;
pub mod baselines;
pub mod blend;
pub mod classical;
pub mod config;
pub mod data;
pub mod demo;
pub mod disentangle;
pub mod experiment;
pub mod finetune;
pub mod grid;
pub mod loss_ablation;
pub mod mask_ablation;
pub mod model;
pub mod pretrain_ablation;
pub mod protocol;
pub mod report;
pub mod supervised;
pub mod ttt;
pub mod ttt_steps;
