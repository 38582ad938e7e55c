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

/// File name of the effective config recorded next to every command's output.
pub const EFFECTIVE_CONFIG_NAME: &str = "spx-config.toml";

/// Settings shared by every command.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub seed: u64,
    pub device: String,
    pub out_dir: PathBuf,
    pub threads: usize,
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

    /// Apply an explicit CLI flag (highest precedence).
    pub fn flag(self, key: &str, value: Value, flag: &str) -> Result<Self, SpxError> {
        let path: Vec<&str> = key.split('.').collect();
        self.apply(nest(&path, value), &format!("flag {flag}"))
    }

    /// Merge a layer, checking keys and types against the defaults, then check that the result
    /// still deserialises (enumerated strings, ranges) and attribute any failure to this layer.
    pub fn apply(mut self, layer: Table, source: &str) -> Result<Self, SpxError> {
        merge_checked(&mut self.merged, &self.defaults, layer, "", source)?;
        deserialize(&self.merged, source)?;
        Ok(self)
    }

    pub fn build(self) -> Result<Config, SpxError> {
        deserialize(&self.merged, "merged config")
    }
}

fn deserialize(table: &Table, source: &str) -> Result<Config, SpxError> {
    let value = Value::Table(table.clone());
    serde_path_to_error::deserialize::<_, Config>(value).map_err(|e| SpxError::ConfigKey {
        source_name: source.to_string(),
        message: format!("key `{}`: {}", e.path(), e.inner()),
    })
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

/// Build the effective config from the usual CLI inputs.
pub fn load(
    file: Option<&Path>,
    sets: &[String],
    flags: &[(&str, Value, &str)],
) -> Result<Config, SpxError> {
    let mut b = ConfigBuilder::new()?;
    if let Some(f) = file {
        b = b.file(f)?;
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
        assert_eq!(c.run.device, t["run"]["device"].as_str().unwrap());
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
