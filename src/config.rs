//! The one config layer.
//!
//! Every knob has a default in `configs/*.toml`; those files are embedded in the binary, so the
//! defaults a user reads in the repository are exactly the ones that run. Layers, lowest first:
//! built-in defaults < `--config FILE.toml` < `--set section.key=value` < explicit CLI flags.
//! A key that no default file defines is an error, as is a value whose type differs from the
//! default's; both name the key and the layer (file path, `--set …` or flag) it came from.
//!
//! A method adds its section by adding `configs/<method>.toml` to [`DEFAULT_FILES`] and a field
//! of the same name to [`Config`].

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::error::SpxError;
use crate::io::atomic::write_atomic;

/// Embedded default files: (name shown in messages, contents).
pub const DEFAULT_FILES: &[(&str, &str)] = &[
    ("configs/run.toml", include_str!("../configs/run.toml")),
    (
        "configs/spektron.toml",
        include_str!("../configs/spektron.toml"),
    ),
    (
        "configs/ptycho.toml",
        include_str!("../configs/ptycho.toml"),
    ),
    ("configs/crr.toml", include_str!("../configs/crr.toml")),
    ("configs/dip.toml", include_str!("../configs/dip.toml")),
];

/// Named overlays (`--profile NAME`, and command switches such as `--quick`): each is a partial
/// config applied as one layer between `--config` and `--set`, checked like any user layer.
pub const PROFILE_FILES: &[(&str, &str)] = &[
    ("quick", include_str!("../configs/profiles/quick.toml")),
    ("demo", include_str!("../configs/profiles/demo.toml")),
    ("cpu", include_str!("../configs/profiles/cpu.toml")),
    (
        "reference",
        include_str!("../configs/profiles/reference.toml"),
    ),
];

/// Renamed keys, `(old dotted key, new dotted key)`. A user layer (file, profile or `--set`)
/// that names an old key is applied to the new one, with a warning naming both; the old names
/// are accepted for one release.
pub const DEPRECATED_KEYS: &[(&str, &str)] = &[
    // dip: the flat `[dip]` keys split into `[dip.net]`, `[dip.prior]` and `[dip.train]`.
    ("dip.depth", "dip.net.depth"),
    ("dip.filters", "dip.net.filters"),
    ("dip.kernel_size", "dip.net.kernel_size"),
    ("dip.leaky_slope", "dip.net.leaky_slope"),
    ("dip.init", "dip.net.init"),
    ("dip.noise_std", "dip.net.noise_std"),
    ("dip.positivity", "dip.net.positivity"),
    ("dip.start_flat", "dip.net.start_flat"),
    ("dip.regularization_weight", "dip.prior.cwt_weight"),
    ("dip.cwt_scales", "dip.prior.cwt_scales"),
    ("dip.smoothness_weight", "dip.prior.smoothness_weight"),
    ("dip.smooth_output", "dip.prior.smooth_output"),
    ("dip.smooth_passes", "dip.prior.smooth_passes"),
    ("dip.loss_mode", "dip.train.loss_mode"),
    ("dip.scale_flux", "dip.train.scale_flux"),
    ("dip.epochs", "dip.train.epochs"),
    ("dip.lr", "dip.train.lr"),
    ("dip.stop_chi2", "dip.train.stop_chi2"),
    ("dip.validation_fraction", "dip.train.validation_fraction"),
    ("dip.validation_patience", "dip.train.validation_patience"),
    ("dip.ema_decay", "dip.train.ema_decay"),
    ("dip.early_stop_patience", "dip.train.early_stop_patience"),
    ("dip.early_stop_min_delta", "dip.train.early_stop_min_delta"),
];

/// File name of the effective config recorded next to every command's output.
pub const EFFECTIVE_CONFIG_NAME: &str = "spx-config.toml";

/// Settings shared by every command.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub seed: u64,
    /// Parsed once, when the config is built (`cpu`, `wgpu[:N]`, `cuda[:N]`).
    #[serde(with = "crate::backend::device_str")]
    pub device: crate::backend::DeviceSpec,
    pub out_dir: PathBuf,
    pub threads: usize,
}

impl RunConfig {
    /// `run.device` names a backend compiled into this binary. Commands that make no tensors
    /// check it too, so no summary ever reports a device the run could not have used.
    pub fn check_device(&self) -> Result<(), SpxError> {
        let name = self.device.backend_name();
        if crate::backend::compiled_backends().contains(&name) {
            Ok(())
        } else {
            Err(SpxError::ConfigKey {
                source_name: "run.device".into(),
                message: format!(
                    "device `{}` is not compiled into this binary (compiled: {}); rebuild with \
                     `cargo build --release --features {name}`",
                    self.device,
                    crate::backend::compiled_backends().join(", ")
                ),
            })
        }
    }
}

/// The effective configuration of a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub run: RunConfig,
    #[serde(default)]
    pub spektron: crate::spektron::config::SpektronConfig,
    #[serde(default)]
    pub ptycho: crate::ptycho::PtychoConfig,
    #[serde(default)]
    pub crr: crate::crr::CrrConfig,
    #[serde(default)]
    pub dip: crate::dip::DipConfig,
}

impl Default for Config {
    fn default() -> Self {
        ConfigBuilder::new()
            .and_then(ConfigBuilder::build)
            .expect("embedded configs/*.toml are valid")
    }
}

impl Config {
    /// The methods' own checks that a per-key range cannot express (e.g. `grid_size` 0 or
    /// 2–100), run once whenever a config is built; the error reads `key: message`.
    pub fn validate(&self) -> Result<(), String> {
        self.crr.validate()?;
        self.ptycho.validate()
    }

    /// Section names, in the order they are printed.
    pub fn sections() -> Vec<String> {
        let mut names = Vec::new();
        for (_, text) in DEFAULT_FILES {
            let t: Table = text.parse().expect("embedded defaults parse");
            names.extend(t.keys().cloned());
        }
        names
    }

    /// The config as TOML: every section, or `[run]` plus one method's section.
    pub fn to_toml(&self, section: Option<&str>) -> Result<String, SpxError> {
        let mut table = Table::try_from(self)
            .map_err(|e| SpxError::Config(format!("cannot serialise config: {e}")))?;
        if let Some(name) = section {
            if !table.contains_key(name) {
                return Err(SpxError::Config(format!(
                    "no config section `{name}`; sections are: {}",
                    Config::sections().join(", ")
                )));
            }
            table.retain(|k, _| k == "run" || k == name);
        }
        toml::to_string_pretty(&table)
            .map_err(|e| SpxError::Config(format!("cannot serialise config: {e}")))
    }

    /// Record the effective config in `dir/spx-config.toml` (atomically).
    pub fn write_effective(&self, dir: &Path) -> Result<PathBuf, SpxError> {
        let path = dir.join(EFFECTIVE_CONFIG_NAME);
        let text = format!(
            "# Effective spx {} configuration of this run.\n# Rerun with: spx --config {} ...\n{}",
            env!("CARGO_PKG_VERSION"),
            EFFECTIVE_CONFIG_NAME,
            self.to_toml(None)?
        );
        write_atomic(&path, |w| w.write_all(text.as_bytes()))?;
        Ok(path)
    }
}

/// Builds a [`Config`] layer by layer.
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    defaults: Table,
    merged: Table,
}

impl ConfigBuilder {
    /// Start from the embedded defaults.
    pub fn new() -> Result<Self, SpxError> {
        let mut defaults = Table::new();
        for (name, text) in DEFAULT_FILES {
            let t: Table = text.parse().map_err(|e| SpxError::ConfigKey {
                source_name: format!("built-in {name}"),
                message: format!("{e}"),
            })?;
            for (k, v) in t {
                defaults.insert(k, v);
            }
        }
        let merged = defaults.clone();
        Ok(ConfigBuilder { defaults, merged })
    }

    /// Apply a user TOML file.
    pub fn file(self, path: &Path) -> Result<Self, SpxError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpxError::io(path, e))?;
        let layer: Table = text.parse().map_err(|e| SpxError::ConfigKey {
            source_name: path.display().to_string(),
            message: format!("not valid TOML: {e}"),
        })?;
        self.apply(layer, &path.display().to_string())
    }

    /// Apply one `section.key=value` assignment. The value is read as TOML (`42`, `1e-3`,
    /// `true`, `[1, 2]`, `"text"`); anything that is not valid TOML is taken as a bare string, so
    /// `--set run.device=cuda:1` needs no quotes.
    pub fn set(self, assignment: &str) -> Result<Self, SpxError> {
        let source = format!("--set {assignment}");
        let (key, raw) = assignment
            .split_once('=')
            .ok_or_else(|| SpxError::ConfigKey {
                source_name: source.clone(),
                message: "expected section.key=value".into(),
            })?;
        let path: Vec<&str> = key.trim().split('.').map(str::trim).collect();
        if path.len() < 2 || path.iter().any(|p| p.is_empty()) {
            return Err(SpxError::ConfigKey {
                source_name: source,
                message: format!("key `{key}` must be section.key"),
            });
        }
        let value = parse_value(raw.trim());
        self.apply(nest(&path, value), &source)
    }

    /// Apply the named overlay `configs/profiles/NAME.toml`.
    pub fn profile(self, name: &str) -> Result<Self, SpxError> {
        let Some((_, text)) = PROFILE_FILES.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = PROFILE_FILES.iter().map(|(n, _)| *n).collect();
            return Err(SpxError::ConfigKey {
                source_name: format!("--profile {name}"),
                message: format!("unknown profile (known: {})", known.join(", ")),
            });
        };
        let source = format!("profile {name} (configs/profiles/{name}.toml)");
        let layer: Table = text.parse().map_err(|e| SpxError::ConfigKey {
            source_name: source.clone(),
            message: format!("not valid TOML: {e}"),
        })?;
        self.apply(layer, &source)
    }

    /// Apply an explicit CLI flag (highest precedence).
    pub fn flag(self, key: &str, value: Value, flag: &str) -> Result<Self, SpxError> {
        let path: Vec<&str> = key.split('.').collect();
        self.apply(nest(&path, value), &format!("flag {flag}"))
    }

    /// Merge a layer, checking keys and types against the defaults, then check that the result
    /// still deserialises (enumerated strings, ranges) and attribute any failure to this layer.
    pub fn apply(mut self, mut layer: Table, source: &str) -> Result<Self, SpxError> {
        rename_deprecated(&mut layer, DEPRECATED_KEYS, source);
        merge_checked(&mut self.merged, &self.defaults, layer, "", source)?;
        deserialize(&self.merged, source)?;
        Ok(self)
    }

    pub fn build(self) -> Result<Config, SpxError> {
        deserialize(&self.merged, "merged config")
    }
}

/// Move every deprecated key of `layer` to its new name (a new name given in the same layer
/// wins), warning once per key with the layer's name.
fn rename_deprecated(layer: &mut Table, renames: &[(&str, &str)], source: &str) {
    for (old, new) in renames {
        let old_path: Vec<&str> = old.split('.').collect();
        let Some(value) = take_path(layer, &old_path) else {
            continue;
        };
        tracing::warn!(
            "{source}: `{old}` is deprecated, use `{new}` (old name accepted for one release)"
        );
        let new_path: Vec<&str> = new.split('.').collect();
        merge_missing(layer, nest(&new_path, value));
    }
}

/// Insert the keys of `from` that `into` lacks (recursing into tables both have).
fn merge_missing(into: &mut Table, from: Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (None, v) => {
                into.insert(k, v);
            }
            (Some(Value::Table(it)), Value::Table(ft)) => merge_missing(it, ft),
            _ => {}
        }
    }
}

/// Remove and return the value at a dotted path, dropping tables the removal leaves empty.
fn take_path(table: &mut Table, path: &[&str]) -> Option<Value> {
    match path {
        [] => None,
        [last] => table.remove(*last),
        [head, rest @ ..] => {
            let Some(Value::Table(sub)) = table.get_mut(*head) else {
                return None;
            };
            let v = take_path(sub, rest);
            if sub.is_empty() {
                table.remove(*head);
            }
            v
        }
    }
}

fn deserialize(table: &Table, source: &str) -> Result<Config, SpxError> {
    check_ranges(table, "", source)?;
    let value = Value::Table(table.clone());
    let cfg =
        serde_path_to_error::deserialize::<_, Config>(value).map_err(|e| SpxError::ConfigKey {
            source_name: source.to_string(),
            message: format!("key `{}`: {}", e.path(), e.inner()),
        })?;
    cfg.validate().map_err(|message| SpxError::ConfigKey {
        source_name: source.to_string(),
        message,
    })?;
    Ok(cfg)
}

/// A closed or half-open interval for one numeric key (array keys: for every element).
#[derive(Clone, Copy, Debug)]
pub struct Range {
    pub lo: f64,
    /// `lo` itself is excluded (`lr > 0`).
    pub lo_open: bool,
    pub hi: f64,
    /// `hi` itself is excluded (`dropout < 1`).
    pub hi_open: bool,
}

impl Range {
    const fn closed(lo: f64, hi: f64) -> Self {
        Range {
            lo,
            lo_open: false,
            hi,
            hi_open: false,
        }
    }
    const fn open_lo(lo: f64, hi: f64) -> Self {
        Range {
            lo,
            lo_open: true,
            hi,
            hi_open: false,
        }
    }
    const fn open_hi(lo: f64, hi: f64) -> Self {
        Range {
            lo,
            lo_open: false,
            hi,
            hi_open: true,
        }
    }

    pub fn contains(&self, v: f64) -> bool {
        v.is_finite()
            && (if self.lo_open {
                v > self.lo
            } else {
                v >= self.lo
            })
            && (if self.hi_open {
                v < self.hi
            } else {
                v <= self.hi
            })
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{}, {}{}",
            if self.lo_open { "(" } else { "[" },
            self.lo,
            self.hi,
            if self.hi_open { ")" } else { "]" }
        )
    }
}

const C: fn(f64, f64) -> Range = Range::closed;
const GT: fn(f64, f64) -> Range = Range::open_lo;
const LT: fn(f64, f64) -> Range = Range::open_hi;
/// Largest finite value a "no upper limit" float key may take.
const BIG: f64 = 1e300;
/// Cap on counts of things that are allocated (points, samples, positions): keeps every
/// allocation a config can ask for far below the memory of the machine.
const COUNT: f64 = 1e7;

/// The stated range of every numeric config key. Every float must also be finite; sizes are
/// capped so that no config value can ask for more memory or threads than a run can use.
/// `ranges_cover_every_numeric_default` keeps this list and `configs/*.toml` in step.
pub fn ranges() -> Vec<(&'static str, Range)> {
    vec![
        ("run.seed", C(0.0, i64::MAX as f64)),
        ("run.threads", C(0.0, 1024.0)),
        // spektron
        ("spektron.corpus.target_points", C(8.0, 65536.0)),
        ("spektron.corpus.min_std", C(0.0, BIG)),
        ("spektron.corpus.chunk_rows", C(1.0, 65536.0)),
        ("spektron.corpus.deflate", C(0.0, 9.0)),
        ("spektron.synth.n", C(1.0, COUNT)),
        ("spektron.synth.bands_min", C(1.0, 1000.0)),
        ("spektron.synth.bands_max", C(1.0, 1000.0)),
        ("spektron.synth.noise", C(0.0, 100.0)),
        ("spektron.synth.baseline", C(0.0, 100.0)),
        ("spektron.baselines.n_transfer", C(1.0, COUNT)),
        ("spektron.baselines.repeats", C(1.0, 10000.0)),
        ("spektron.baselines.first_repeat", C(0.0, 1e6)),
        ("spektron.baselines.n_test", C(1.0, COUNT)),
        ("spektron.baselines.cv_folds", C(2.0, 1000.0)),
        ("spektron.baselines.max_lv", C(1.0, 1000.0)),
        ("spektron.baselines.pds_half_window", C(0.0, 1000.0)),
        ("spektron.baselines.pds_variance", GT(0.0, 1.0)),
        ("spektron.baselines.cca_max_components", C(1.0, 1000.0)),
        ("spektron.baselines.dipls_lambda", C(0.0, BIG)),
        ("spektron.model.n_points", C(8.0, 65536.0)),
        ("spektron.model.level", C(1.0, 12.0)),
        ("spektron.model.patch", C(1.0, 4096.0)),
        ("spektron.model.d_model", C(1.0, 4096.0)),
        ("spektron.model.n_heads", C(1.0, 256.0)),
        ("spektron.model.d_ff", C(1.0, 65536.0)),
        ("spektron.model.dropout", LT(0.0, 1.0)),
        ("spektron.model.d_state", C(1.0, 1024.0)),
        ("spektron.model.d_conv", C(1.0, 64.0)),
        ("spektron.model.expand", C(1.0, 16.0)),
        ("spektron.model.dt_min", GT(0.0, 1.0)),
        ("spektron.model.dt_max", GT(0.0, 1000.0)),
        ("spektron.model.z_chem", C(1.0, 4096.0)),
        ("spektron.model.z_inst", C(1.0, 4096.0)),
        ("spektron.model.n_targets", C(1.0, 1024.0)),
        ("spektron.model.moe_experts", C(0.0, 256.0)),
        ("spektron.model.moe_top_k", C(1.0, 256.0)),
        ("spektron.model.moe_d_expert", C(1.0, 65536.0)),
        ("spektron.model.fno_width", C(1.0, 4096.0)),
        ("spektron.model.fno_modes", C(1.0, 65536.0)),
        ("spektron.model.fno_layers", C(0.0, 64.0)),
        ("spektron.loss.mask_ratio", LT(0.0, 1.0)),
        ("spektron.loss.mask_block", C(1.0, 65536.0)),
        ("spektron.loss.msrp", C(0.0, 1e6)),
        ("spektron.loss.contrastive", C(0.0, 1e6)),
        ("spektron.loss.temperature", GT(0.0, 1e6)),
        ("spektron.loss.denoise", C(0.0, 1e6)),
        ("spektron.loss.ot", C(0.0, 1e6)),
        ("spektron.loss.ot_reg", GT(0.0, 1e6)),
        ("spektron.loss.ot_iters", C(1.0, 1e6)),
        ("spektron.loss.physics", C(0.0, 1e6)),
        ("spektron.loss.smoothness", C(0.0, 1e6)),
        ("spektron.loss.nonneg", C(0.0, 1e6)),
        ("spektron.loss.derivative", C(0.0, 1e6)),
        ("spektron.loss.vib", C(0.0, 1e6)),
        ("spektron.loss.beta", C(0.0, 1e6)),
        ("spektron.loss.moe", C(0.0, 1e6)),
        ("spektron.pretrain.batch", C(2.0, 65536.0)),
        ("spektron.pretrain.steps", C(1.0, 1e9)),
        ("spektron.pretrain.lr", GT(0.0, 1.0)),
        ("spektron.pretrain.weight_decay", C(0.0, 10.0)),
        ("spektron.pretrain.warmup", C(0.0, 1e9)),
        ("spektron.pretrain.clip", C(0.0, 1e6)),
        ("spektron.pretrain.val_fraction", LT(0.0, 1.0)),
        ("spektron.pretrain.val_every", C(0.0, 1e9)),
        ("spektron.pretrain.val_batches", C(1.0, 1e6)),
        ("spektron.pretrain.checkpoint_every", C(0.0, 1e9)),
        ("spektron.pretrain.aug_noise", C(0.0, 100.0)),
        ("spektron.pretrain.aug_drift", C(0.0, 100.0)),
        ("spektron.pretrain.aug_shift", C(0.0, 65536.0)),
        ("spektron.pretrain.aug_intensity", C(0.0, 100.0)),
        ("spektron.finetune.lora_rank", C(1.0, 4096.0)),
        ("spektron.finetune.lora_alpha", GT(0.0, 1e6)),
        ("spektron.finetune.lr", GT(0.0, 10.0)),
        ("spektron.finetune.weight_decay", C(0.0, 10.0)),
        ("spektron.finetune.epochs", C(1.0, 1e7)),
        ("spektron.finetune.batch", C(1.0, 65536.0)),
        ("spektron.finetune.patience", C(0.0, 1e7)),
        ("spektron.finetune.val_fraction", LT(0.0, 1.0)),
        ("spektron.ttt.steps", C(0.0, 1e7)),
        ("spektron.ttt.lr", GT(0.0, 10.0)),
        ("spektron.ttt.mask_ratio", LT(0.0, 1.0)),
        ("spektron.ttt.batch", C(1.0, 65536.0)),
        ("spektron.experiment.n_transfer", C(1.0, COUNT)),
        ("spektron.experiment.table_n", C(1.0, COUNT)),
        ("spektron.experiment.repeats", C(1.0, 10000.0)),
        ("spektron.experiment.master_epochs", C(0.0, 1e7)),
        ("spektron.experiment.transfer_epochs", C(0.0, 1e7)),
        ("spektron.experiment.scratch_epochs", C(0.0, 1e7)),
        ("spektron.experiment.full_lr", GT(0.0, 10.0)),
        ("spektron.experiment.synth_samples", C(2.0, 1e6)),
        ("spektron.experiment.synth_channels", C(8.0, 65536.0)),
        ("spektron.experiment.synth_shift", C(-1e4, 1e4)),
        ("spektron.experiment.synth_gain", GT(0.0, 1e6)),
        ("spektron.experiment.synth_offset", C(-1e6, 1e6)),
        ("spektron.experiment.synth_noise", C(0.0, 100.0)),
        ("spektron.experiment.ttt_steps", C(0.0, 1e7)),
        ("spektron.experiment.ablation_moe_experts", C(1.0, 256.0)),
        ("spektron.experiment.residual_gate_folds", C(0.0, COUNT)),
        ("spektron.experiment.residual_gate_max", C(0.0, 1.0)),
        ("spektron.experiment.blend_folds", C(2.0, COUNT)),
        ("spektron.experiment.blend_max", C(0.0, 1.0)),
        ("spektron.experiment.pls_head_steps", C(0.0, 1e7)),
        ("spektron.experiment.pls_head_lr", GT(0.0, 10.0)),
        ("spektron.experiment.pls_head_penalty", C(0.0, 1e6)),
        ("spektron.supervised.cnn_channels", C(1.0, 4096.0)),
        ("spektron.supervised.cnn_kernel", C(1.0, 4096.0)),
        ("spektron.supervised.cnn_stride", C(1.0, 4096.0)),
        ("spektron.supervised.tf_patch", C(1.0, 65536.0)),
        ("spektron.supervised.tf_d_model", C(1.0, 8192.0)),
        ("spektron.supervised.tf_heads", C(1.0, 256.0)),
        ("spektron.supervised.tf_layers", C(1.0, 256.0)),
        ("spektron.supervised.tf_d_ff", C(1.0, 65536.0)),
        ("spektron.supervised.epochs", C(0.0, 1e7)),
        ("spektron.supervised.lr", GT(0.0, 10.0)),
        ("spektron.supervised.batch", C(1.0, 65536.0)),
        ("spektron.supervised.weight_decay", C(0.0, 10.0)),
        ("spektron.supervised.patience", C(0.0, 1e7)),
        ("spektron.supervised.val_fraction", LT(0.0, 1.0)),
        ("spektron.supervised.transfer_epochs", C(0.0, 1e7)),
        ("spektron.supervised.transfer_lr", GT(0.0, 10.0)),
        ("spektron.supervised.lora_rank", C(1.0, 4096.0)),
        ("spektron.supervised.lora_alpha", GT(0.0, 1e6)),
        ("spektron.supervised.lora_lr", GT(0.0, 10.0)),
        // ptycho
        ("ptycho.group.gridsize", C(1.0, 16.0)),
        ("ptycho.group.neighbor_count", C(1.0, 1000.0)),
        ("ptycho.group.n_groups", C(0.0, COUNT)),
        ("ptycho.simulate.n", C(2.0, 1024.0)),
        ("ptycho.simulate.object_size", C(4.0, 16384.0)),
        ("ptycho.simulate.nlines", C(0.0, 1e6)),
        ("ptycho.simulate.object_phase", C(-100.0, 100.0)),
        ("ptycho.simulate.probe_scale", GT(0.0, 1000.0)),
        ("ptycho.simulate.n_positions", C(1.0, 1e6)),
        ("ptycho.simulate.buffer", C(0.0, 16384.0)),
        ("ptycho.simulate.grid_size", C(1.0, 16.0)),
        ("ptycho.simulate.grid_step", C(0.0, 4096.0)),
        ("ptycho.simulate.grid_pitch", C(0.0, 4096.0)),
        ("ptycho.simulate.grid_phase", C(0.0, 4096.0)),
        ("ptycho.simulate.nphotons", GT(0.0, 1e18)),
        ("ptycho.pinn.nphotons", GT(0.0, 1e18)),
        ("ptycho.pinn.probe_scale", GT(0.0, 1e6)),
        ("ptycho.pinn.stitch_crop", C(1.0, 1024.0)),
        ("ptycho.pinn.model.n_filters_scale", C(1.0, 64.0)),
        ("ptycho.pinn.model.filters_base", C(0.0, 4096.0)),
        ("ptycho.pinn.model.border_filters", C(0.0, 4096.0)),
        ("ptycho.pinn.train.nll_weight", C(0.0, 1e6)),
        ("ptycho.pinn.train.mae_weight", C(0.0, 1e6)),
        ("ptycho.pinn.train.lr", GT(0.0, 10.0)),
        ("ptycho.pinn.train.batch_size", C(1.0, 65536.0)),
        ("ptycho.pinn.train.epochs", C(1.0, 1e6)),
        ("ptycho.pinn.train.val_fraction", LT(0.0, 1.0)),
        ("ptycho.pinn.train.plateau_factor", GT(0.0, 1.0)),
        ("ptycho.pinn.train.plateau_patience", C(0.0, 1e6)),
        ("ptycho.pinn.train.min_lr", C(0.0, 10.0)),
        ("ptycho.pinn.train.early_stop_patience", C(0.0, 1e6)),
        ("ptycho.epie.iterations", C(1.0, 1e6)),
        ("ptycho.epie.alpha", GT(0.0, 2.0)),
        ("ptycho.epie.beta", C(0.0, 2.0)),
        ("ptycho.dose.n_train", C(1.0, 1e6)),
        ("ptycho.dose.n_test", C(1.0, 1e6)),
        ("ptycho.dose.epie_iterations", C(0.0, 1e6)),
        ("ptycho.dose.doses", GT(0.0, 1e15)),
        ("ptycho.dose.repeats", C(1.0, 100.0)),
        // crr
        ("crr.pixel_scale", C(0.1, 5.0)),
        ("crr.grid_size", C(0.0, 100.0)),
        ("crr.lambda", C(0.0, 1.0)),
        ("crr.sv_cutoff", C(0.0, 0.1)),
        ("crr.kernel_radius", C(0.5, 10.0)),
        ("crr.fit_radius", C(0.1, 10.0)),
        ("crr.fiber_diameter", C(0.1, 10.0)),
        ("crr.seeing_ref_wave", C(1000.0, 30000.0)),
        ("crr.shepard_sigma", C(0.05, 10.0)),
        ("crr.shepard_rlim", C(0.1, 10.0)),
        ("crr.corr_threshold", C(0.0, 1.0)),
        ("crr.reuse_tolerance", C(0.0, 1.0)),
        ("crr.reuse_max_error", C(0.0, 100.0)),
        ("crr.checkpoint_slices", C(0.0, 1e6)),
        ("crr.simulate.nfiber", C(7.0, 127.0)),
        ("crr.simulate.nexp", C(1.0, 100.0)),
        ("crr.simulate.nwave", C(2.0, 20000.0)),
        ("crr.simulate.seeing", C(0.3, 3.0)),
        ("crr.simulate.seeing_jitter", C(0.0, 1.0)),
        ("crr.simulate.airmass", C(1.0, 3.0)),
        ("crr.simulate.dither_jitter", C(0.0, 2.0)),
        ("crr.simulate.point_flux", C(-1e30, 1e30)),
        ("crr.simulate.point_x", C(-30.0, 30.0)),
        ("crr.simulate.point_y", C(-30.0, 30.0)),
        ("crr.simulate.blob_flux", C(-1e30, 1e30)),
        ("crr.simulate.blob_sigma", C(0.01, 30.0)),
        ("crr.simulate.blob_x", C(-30.0, 30.0)),
        ("crr.simulate.blob_y", C(-30.0, 30.0)),
        ("crr.simulate.sky", C(-1e30, 1e30)),
        ("crr.simulate.snr", C(0.0, 1e6)),
        ("crr.simulate.dead_fibers", C(0.0, 127.0)),
        ("crr.simulate.reject_fraction", C(0.0, 1.0)),
        // dip
        ("dip.wavelength_min", GT(0.0, 1000.0)),
        ("dip.wavelength_max", GT(0.0, 1000.0)),
        ("dip.resolution", C(16.0, 1e6)),
        ("dip.epsilon_weight", C(0.0, BIG)),
        ("dip.prior.cwt_weight", C(0.0, 1e6)),
        ("dip.prior.cwt_scales", GT(0.0, 1e4)),
        ("dip.net.depth", C(1.0, 10.0)),
        ("dip.net.filters", C(1.0, 1024.0)),
        ("dip.net.kernel_size", C(1.0, 63.0)),
        ("dip.net.leaky_slope", C(0.0, 1.0)),
        ("dip.net.noise_std", C(0.0, 1e3)),
        ("dip.net.baseline_smoothing", C(1.0, 1e8)),
        ("dip.net.start_fit_sigmas", C(0.0, 1e6)),
        ("dip.prior.smooth_written_density", C(0.0, 1e9)),
        ("dip.prior.smooth_written_cv_folds", C(0.0, 100.0)),
        ("dip.prior.refine_cv_folds", C(0.0, 100.0)),
        ("dip.prior.refine_factors", GT(0.0, 1e8)),
        ("dip.train.epochs", C(1.0, 1e7)),
        ("dip.train.lr", GT(0.0, 10.0)),
        ("dip.train.warmup_epochs", C(0.0, 1e7)),
        ("dip.train.stop_chi2", C(0.0, 1e12)),
        ("dip.train.stop_sigmas", C(0.0, 100.0)),
        ("dip.train.restore_jump", GT(1.0, 1e6)),
        ("dip.train.restore_jump_sigmas", C(0.0, 1e6)),
        ("dip.train.restore_every", C(1.0, 1e7)),
        ("dip.train.restore_lr_factor", GT(0.0, 1.0)),
        ("dip.train.max_restores", C(0.0, 1e6)),
        ("dip.train.stall_restore_epochs", C(0.0, 1e7)),
        ("dip.train.early_stop_patience", C(0.0, 1e9)),
        ("dip.train.early_stop_min_delta", C(0.0, 1.0)),
        ("dip.ensemble", C(1.0, 1000.0)),
        ("dip.batch_sources", C(0.0, 4096.0)),
        ("dip.train.validation_fraction", LT(0.0, 1.0)),
        ("dip.train.validation_patience", C(1.0, 1e9)),
        ("dip.prior.smooth_passes", C(0.0, 100.0)),
        ("dip.prior.smoothness_weight", C(0.0, 1e6)),
        ("dip.train.ema_decay", LT(0.0, 1.0)),
        ("dip.qc.clip_protect_sigma", GT(0.0, 1e6)),
        ("dip.qc.clip_false_positives", C(0.0, 1e6)),
        ("dip.simulate.noise_fraction", C(0.0, 10.0)),
        ("dip.simulate.noise_floor_ujy", C(0.0, 1e12)),
        ("dip.qc.bad_flag_bits", C(0.0, 62.0)),
        ("dip.qc.snr_min", C(-1e6, 1e6)),
        ("dip.qc.clip_sigma", GT(0.0, 1e6)),
        ("dip.qc.clip_window", C(3.0, 1e6)),
        ("dip.qc.clip_max_iter", C(0.0, 1e6)),
        ("dip.qc.clip_protect_run", C(1.0, 1e6)),
        ("dip.qc.clip_protect_fraction", C(0.0, 1.0)),
        ("dip.qc.min_points_per_band", C(0.0, 1e9)),
        ("dip.tikhonov.lambda", C(0.0, BIG)),
        ("dip.tikhonov.target_chi2", GT(0.0, 1e12)),
        ("dip.simulate.per_band", C(1.0, 1e6)),
        ("dip.simulate.continuum_ujy", C(0.0, 1e12)),
        ("dip.simulate.alpha", C(-20.0, 20.0)),
        ("dip.simulate.line_scale", C(0.0, 1e6)),
        ("dip.simulate.pah_scale", C(0.0, 1e6)),
        ("dip.simulate.ice_scale", C(0.0, 1e6)),
        ("dip.simulate.noise_ujy", GT(0.0, 1e12)),
        ("dip.simulate.bad_flag_fraction", C(0.0, 1.0)),
        ("dip.simulate.glitch_fraction", C(0.0, 1.0)),
    ]
}

fn range_of(key: &str) -> Option<Range> {
    ranges()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, r)| r)
}

/// Every number in `table` (arrays element by element) is finite and inside its key's stated
/// range; a numeric key without a range is itself an error, so no knob escapes the check.
fn check_ranges(table: &Table, prefix: &str, source: &str) -> Result<(), SpxError> {
    for (key, value) in table {
        let full = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let numbers: Vec<f64> = match value {
            Value::Table(t) => {
                check_ranges(t, &full, source)?;
                continue;
            }
            Value::Integer(i) => vec![*i as f64],
            Value::Float(f) => vec![*f],
            Value::Array(items) => items
                .iter()
                .filter_map(|v| match v {
                    Value::Integer(i) => Some(*i as f64),
                    Value::Float(f) => Some(*f),
                    _ => None,
                })
                .collect(),
            _ => continue,
        };
        if numbers.is_empty() {
            continue;
        }
        let Some(range) = range_of(&full) else {
            return Err(SpxError::ConfigKey {
                source_name: source.to_string(),
                message: format!(
                    "key `{full}`: no stated range (internal: add it to config::ranges)"
                ),
            });
        };
        if let Some(bad) = numbers.iter().find(|v| !range.contains(**v)) {
            let what = if bad.is_finite() {
                "out of range"
            } else {
                "not a finite number"
            };
            return Err(SpxError::ConfigKey {
                source_name: source.to_string(),
                message: format!("key `{full}`: {bad} is {what}; allowed {range}"),
            });
        }
    }
    Ok(())
}

fn parse_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

fn nest(path: &[&str], value: Value) -> Table {
    let mut v = value;
    for key in path.iter().rev() {
        let mut t = Table::new();
        t.insert((*key).to_string(), v);
        v = Value::Table(t);
    }
    match v {
        Value::Table(t) => t,
        _ => unreachable!("path is non-empty"),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Coerce `new` to the type of `default`, or explain why not. Integers are accepted where a
/// float is expected (`lr = 1` means 1.0); arrays are checked element-wise against the first
/// default element.
fn coerce(default: &Value, new: Value) -> Result<Value, String> {
    match (default, new) {
        (Value::Float(_), Value::Integer(i)) => Ok(Value::Float(i as f64)),
        (Value::Array(d), Value::Array(items)) => match d.first() {
            None => Ok(Value::Array(items)),
            Some(proto) => items
                .into_iter()
                .enumerate()
                .map(|(i, it)| coerce(proto, it).map_err(|e| format!("element {i}: {e}")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
        },
        (d, n) if std::mem::discriminant(d) == std::mem::discriminant(&n) => Ok(n),
        (d, n) => Err(format!(
            "expected {}, found {}",
            type_name(d),
            type_name(&n)
        )),
    }
}

fn merge_checked(
    into: &mut Table,
    defaults: &Table,
    layer: Table,
    prefix: &str,
    source: &str,
) -> Result<(), SpxError> {
    for (key, value) in layer {
        let full = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let Some(default) = defaults.get(&key) else {
            let known: Vec<&str> = defaults.keys().map(String::as_str).collect();
            let scope = if prefix.is_empty() {
                "sections".to_string()
            } else {
                format!("keys in [{prefix}]")
            };
            return Err(SpxError::ConfigKey {
                source_name: source.to_string(),
                message: format!("unknown key `{full}` (known {scope}: {})", known.join(", ")),
            });
        };
        match (default, value) {
            (Value::Table(dt), Value::Table(lt)) => {
                let slot = into
                    .entry(key.clone())
                    .or_insert_with(|| Value::Table(Table::new()));
                let Value::Table(st) = slot else {
                    unreachable!("merged mirrors defaults' shape")
                };
                merge_checked(st, dt, lt, &full, source)?;
            }
            (d, v) => {
                let v = coerce(d, v).map_err(|m| SpxError::ConfigKey {
                    source_name: source.to_string(),
                    message: format!("key `{full}`: {m}"),
                })?;
                into.insert(key, v);
            }
        }
    }
    Ok(())
}

/// Build the effective config from the usual CLI inputs (no profiles).
pub fn load(
    file: Option<&Path>,
    sets: &[String],
    flags: &[(&str, Value, &str)],
) -> Result<Config, SpxError> {
    load_layers(file, &[], sets, flags)
}

/// The one layering of every command: built-in defaults < `--config FILE` < profiles (in the
/// order given) < `--set` (in order) < flags (in order). Keys, types and ranges are checked for
/// every layer and any failure names the layer.
pub fn load_layers(
    file: Option<&Path>,
    profiles: &[&str],
    sets: &[String],
    flags: &[(&str, Value, &str)],
) -> Result<Config, SpxError> {
    let mut b = ConfigBuilder::new()?;
    if let Some(f) = file {
        b = b.file(f)?;
    }
    for p in profiles {
        b = b.profile(p)?;
    }
    for s in sets {
        b = b.set(s)?;
    }
    for (key, value, flag) in flags {
        b = b.flag(key, value.clone(), flag)?;
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_file() {
        let c = Config::default();
        let t: Table = include_str!("../configs/run.toml").parse().unwrap();
        assert_eq!(c.run.seed as i64, t["run"]["seed"].as_integer().unwrap());
        assert_eq!(
            c.run.device.to_string(),
            t["run"]["device"].as_str().unwrap()
        );
    }

    #[test]
    fn set_parses_bare_strings_and_toml_values() {
        assert_eq!(parse_value("cuda:1"), Value::String("cuda:1".into()));
        assert_eq!(parse_value("7"), Value::Integer(7));
        assert_eq!(parse_value("\"x y\""), Value::String("x y".into()));
        assert_eq!(
            parse_value("[1, 2]"),
            Value::Array(vec![Value::Integer(1), Value::Integer(2)])
        );
    }

    #[test]
    fn ranges_cover_every_numeric_default() {
        // Every default is inside its range (check_ranges also fails on a key without one) ...
        let b = ConfigBuilder::new().unwrap();
        check_ranges(&b.defaults, "", "built-in").unwrap();
        // ... and every range names a key that exists.
        let c = Config::default().to_toml(None).unwrap();
        let t: Table = c.parse().unwrap();
        for (key, _) in ranges() {
            let mut v = &Value::Table(t.clone());
            for part in key.split('.') {
                v = v
                    .get(part)
                    .unwrap_or_else(|| panic!("range for unknown key {key}"));
            }
        }
    }

    #[test]
    fn range_bounds_and_non_finite() {
        let r = Range::open_lo(0.0, 1.0);
        assert!(!r.contains(0.0) && r.contains(1.0) && !r.contains(f64::NAN));
        let r = Range::open_hi(0.0, 1.0);
        assert!(r.contains(0.0) && !r.contains(1.0) && !r.contains(f64::INFINITY));
        let err = load(None, &["dip.depth=64".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dip.depth") && err.contains("--set dip.depth=64"),
            "{err}"
        );
        let err = load(None, &["spektron.pretrain.lr=nan".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a finite number"), "{err}");
        let err = load(None, &["run.threads=100000".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("run.threads") && err.contains("[0, 1024]"),
            "{err}"
        );
    }

    #[test]
    fn profiles_are_one_layer_between_file_and_set() {
        // Every embedded profile is valid on its own.
        for (name, _) in PROFILE_FILES {
            load_layers(None, &[name], &[], &[]).unwrap();
        }
        let demo = load_layers(None, &["demo"], &[], &[]).unwrap();
        assert_eq!(demo.crr.simulate.nwave, 60);
        // --set wins over the profile, the profile over the defaults.
        let sets = vec!["crr.simulate.nwave=70".to_string()];
        let c = load_layers(None, &["demo"], &sets, &[]).unwrap();
        assert_eq!((c.crr.simulate.nwave, c.crr.simulate.snr), (70, 50.0));
        let err = load_layers(None, &["nope"], &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--profile nope") && err.contains("known: quick, demo, cpu, reference"),
            "{err}"
        );
    }

    #[test]
    fn deprecated_keys_move_to_their_new_names() {
        let renames = [("dip.old_lr", "dip.train.lr"), ("dip.gone", "dip.net.gone")];
        let mut layer: Table = "[dip]\nold_lr = 0.5\nkeep = 1\n[dip.train]\nepochs = 3\n"
            .parse()
            .unwrap();
        rename_deprecated(&mut layer, &renames, "test");
        let want: Table = "[dip]\nkeep = 1\n[dip.train]\nepochs = 3\nlr = 0.5\n"
            .parse()
            .unwrap();
        assert_eq!(layer, want);
        // A new name given in the same layer wins over the old one.
        let mut layer: Table = "[dip]\nold_lr = 0.5\n[dip.train]\nlr = 0.1\n"
            .parse()
            .unwrap();
        rename_deprecated(&mut layer, &renames, "test");
        let want: Table = "[dip.train]\nlr = 0.1\n".parse().unwrap();
        assert_eq!(layer, want);
    }

    #[test]
    fn coerce_rules() {
        assert_eq!(
            coerce(&Value::Float(1.0), Value::Integer(2)).unwrap(),
            Value::Float(2.0)
        );
        assert!(coerce(&Value::Integer(1), Value::Float(2.0)).is_err());
        assert!(coerce(&Value::String("a".into()), Value::Integer(2)).is_err());
        let arr = Value::Array(vec![Value::Float(1.0)]);
        assert!(coerce(&arr, Value::Array(vec![Value::String("x".into())])).is_err());
    }
}
