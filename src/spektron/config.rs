//! The `[spektron]` config section (defaults in `configs/spektron.toml`): the aggregate of the
//! settings types each part owns (corpus, synth, baselines, model, pretraining, fine-tuning,
//! TTT, experiments), above all of them — no Spektron module imports this one — with the
//! per-pipeline settings views.

use serde::{Deserialize, Serialize};

use super::model::pretrain;
use super::{ablation, experiment, finetune, ttt};

pub use super::baselines::BaselinesConfig;
pub use super::data::corpus::CorpusConfig;
pub use super::data::synth::SynthConfig;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpektronConfig {
    pub corpus: CorpusConfig,
    pub synth: SynthConfig,
    pub baselines: BaselinesConfig,
    pub model: super::model::ModelConfig,
    pub loss: super::model::LossConfig,
    pub pretrain: super::model::PretrainConfig,
    pub finetune: super::model::finetune::FinetuneConfig,
    pub ttt: super::model::finetune::TttConfig,
    pub experiment: super::experiment::ExperimentConfig,
    pub supervised: super::supervised::SupervisedConfig,
}

/// The built-in defaults, so a config file without a `[spektron]` section (e.g. one that only
/// sets `[run]`) still deserialises.
impl Default for SpektronConfig {
    fn default() -> Self {
        #[derive(Deserialize)]
        struct File {
            spektron: SpektronConfig,
        }
        toml::from_str::<File>(include_str!("../../configs/spektron.toml"))
            .expect("embedded configs/spektron.toml is valid")
            .spektron
    }
}

impl SpektronConfig {
    /// What pretraining reads.
    pub fn pretrain_settings(&self) -> pretrain::Settings<'_> {
        pretrain::Settings {
            model: &self.model,
            loss: &self.loss,
            pretrain: &self.pretrain,
        }
    }

    /// What the model arms of E3/E4 read.
    pub fn arm_settings(&self) -> experiment::ArmSettings<'_> {
        experiment::ArmSettings {
            model: &self.model,
            finetune: &self.finetune,
            ttt: &self.ttt,
            mask_block: self.loss.mask_block,
            experiment: &self.experiment,
            n_test: self.baselines.n_test,
            baselines: &self.baselines,
            supervised: &self.supervised,
        }
    }

    /// What an E3/E4 experiment reads.
    pub fn experiment_settings(&self, seed: u64) -> experiment::Settings<'_> {
        experiment::Settings {
            arms: self.arm_settings(),
            baselines: &self.baselines,
            supervised: &self.supervised,
            min_std: self.corpus.min_std,
            seed,
        }
    }

    /// What the pretraining ablations (E1, E2, E7, E8, E10) read besides the experiment.
    pub fn pretrain_input(&self) -> ablation::PretrainInput<'_> {
        ablation::PretrainInput {
            loss: &self.loss,
            pretrain: &self.pretrain,
            synth: &self.synth,
            corpus: &self.corpus,
        }
    }

    /// What fine-tuning reads.
    pub fn finetune_settings(&self, seed: u64) -> finetune::Settings<'_> {
        finetune::Settings {
            model: &self.model,
            finetune: &self.finetune,
            min_std: self.corpus.min_std,
            seed,
        }
    }

    /// What test-time training reads.
    pub fn ttt_settings(&self, seed: u64) -> ttt::Settings<'_> {
        ttt::Settings {
            model: &self.model,
            ttt: &self.ttt,
            mask_block: self.loss.mask_block,
            min_std: self.corpus.min_std,
            seed,
        }
    }
}
