//! The `[spektron]` config section (defaults in `configs/spektron.toml`).

use serde::{Deserialize, Serialize};

use super::baselines::pls::PlsAlgorithm;

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
    pub experiment: super::model::experiment::ExperimentConfig,
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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorpusConfig {
    pub target_points: usize,
    pub min_std: f64,
    pub chunk_rows: usize,
    pub deflate: u8,
    pub default_modality: super::data::Modality,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    pub n: usize,
    pub bands_min: usize,
    pub bands_max: usize,
    pub noise: f64,
    pub baseline: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BaselinesConfig {
    pub n_transfer: Vec<usize>,
    pub repeats: usize,
    pub n_test: usize,
    pub cv_folds: usize,
    pub max_lv: usize,
    pub pls_algorithm: PlsAlgorithm,
    pub pds_half_window: usize,
    pub pds_variance: f64,
    pub cca_max_components: usize,
    pub dipls_heuristic: bool,
    pub dipls_lambda: f64,
}
