//! A whole README table from one command (`spx spektron experiment grid SPEC.toml`, issue #17
//! item 5): a checked-in spec names the runs (each a list of `--set` overrides and an optional
//! checkpoint), the cells (source × target × property on one data file), the flags every run
//! shares and the table's columns; [`run`] computes every (run, cell) through the library
//! pipelines — [`experiment::run_into`] (`spektron experiment table`) or
//! [`classical::run_into`] (`spektron baselines`), [`ttt_steps::run`] (E9) or the pretraining
//! ablations (E1, E2, E7, E8) —, writes each one's usual report files into `<run>/` and assembles
//! the table ([`assemble`]) as Markdown, with every per-split number in CSV and JSON.
//!
//! Kinds with variants (E9's two starts, the ablations' variants) put one row per cell and
//! variant, with a variant column after the cell's label (`variant_header`, labels from
//! `variant_labels` or the experiment's own); their items are `steps:K` (E9: RMSEP after K TTT
//! steps), the model arms (ablations), `val_msrp` (ablations: the variant's last validation
//! MSRP) and the classical rows they report, `recentre_test` and `sbc` (`best` = SBC there).
//!
//! The spec does not touch the config: its `set` strings are applied by the caller (the CLI
//! maps config → [`RunInput`] settings), so this module reads only settings views.
//!
//! Spec format (TOML; every key is checked, unknown keys are refused):
//!
//! ```toml
//! kind = "experiment"          # or "baselines" (classical rows only), "ttt-steps" (E9),
//!                              # "pretraining", "masking", "architecture", "losses" (E1/E2/E7/E8)
//! layout = "cells"             # rows = cells (default), or "methods": rows = entries
//! quick = true                 # the `quick` profile (experiment only)
//! repeats = 5                  # seeded splits
//! n_transfer = [10]            # experiment: one N; baselines: the N list
//! set = ["spektron.experiment.residual=true"]   # every run
//! corner = "pair, property"    # header of the first column
//! label = "{source} → {target}, {property}"     # row label (layout "methods": column header)
//!
//! [cells]
//! source = ["m5"]
//! target = ["mp5", "mp6"]
//! property = ["moisture", "oil", "protein", "starch"]
//!
//! [[runs]]
//! name = "a"                   # letters, digits, '_' and '-'; also the run's output folder
//! set = ["spektron.experiment.slope_bias=true"]
//! # checkpoint = "pre/checkpoints/last"
//!
//! [[columns]]                  # layout "methods": [[rows]] with `label` instead of `header`
//! header = "LoRA N=10"
//! show = "a:spektron_lora"     # see `Item`; a list is joined with " / "
//! ratio = true                 # " (1.87×)": ratio to the best classical method at N
//! mark_below_sbc = true        # "<" inside the ratio's parentheses when below classical SBC
//! # decimals = 3, ratio_decimals = 2, sd = false (" ± 0.054"), r2 = false (" (0.21)"),
//! # gate = false (" (2/5)")
//!
//! [[blocks]]                   # optional row groups (layout "cells"): a heading row, then
//! heading = "*input = snv*"    # every cell with `run` as the default run of the columns
//! run = "snv"
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::ablation::PretrainInput;
use super::baselines::{Cell, METHODS};
use super::classical;
use super::data::Modality;
use super::experiment::{self, BlendWeights, ExperimentConfig, Kind};
use super::report::{self, ARMS};
use super::supervised::arms::ROWS as SUPERVISED_ROWS;
use super::{arch_ablation, loss_ablation, mask_ablation, pretrain_ablation, ttt_steps};
use crate::error::SpxError;
use crate::io::atomic::{ensure_dir, safe_component};
use crate::io::write_atomic;

/// What each cell of a grid runs.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum GridKind {
    /// `spektron experiment table`: classical rows and model arms at one N.
    #[default]
    Experiment,
    /// `spektron baselines`: the classical rows at every N of `n_transfer`.
    Baselines,
    /// `spektron experiment ttt-steps` (E9): one row per cell and start (`zero_shot`,
    /// `few_shot`); items `steps:K` (RMSEP after K TTT steps), `recentre_test`, `sbc`, `best`.
    TttSteps,
    /// `spektron experiment pretraining` (E1): one row per cell and variant (`none`, `msrp`,
    /// `all`); items the model arms, `recentre_test`, `sbc`, `best`, `val_msrp`.
    Pretraining,
    /// `spektron experiment masking` (E2), rows per variant as `pretraining`.
    Masking,
    /// `spektron experiment architecture` (E7), rows per variant as `pretraining`.
    Architecture,
    /// `spektron experiment losses` (E8), rows per variant as `pretraining`.
    Losses,
}

impl GridKind {
    /// The spec's spelling.
    pub fn name(self) -> &'static str {
        match self {
            GridKind::Experiment => "experiment",
            GridKind::Baselines => "baselines",
            GridKind::TttSteps => "ttt-steps",
            GridKind::Pretraining => "pretraining",
            GridKind::Masking => "masking",
            GridKind::Architecture => "architecture",
            GridKind::Losses => "losses",
        }
    }

    /// One table row per cell and variant (E9's starts, the ablations' variants).
    pub fn has_variants(self) -> bool {
        !matches!(self, GridKind::Experiment | GridKind::Baselines)
    }

    /// A pretraining ablation (E1, E2, E7, E8): it pretrains its own models.
    pub fn is_ablation(self) -> bool {
        self.has_variants() && self != GridKind::TttSteps
    }
}

/// How the table is laid out.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// One row per cell (in blocks when given), one column per entry of `columns`.
    #[default]
    Cells,
    /// One row per entry of `rows`, one column per cell.
    Methods,
}

/// A grid spec (see the module documentation for the format).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub kind: GridKind,
    #[serde(default)]
    pub layout: Layout,
    #[serde(default)]
    pub quick: bool,
    pub repeats: usize,
    pub n_transfer: Vec<usize>,
    #[serde(default)]
    pub set: Vec<String>,
    pub corner: String,
    pub label: String,
    pub cells: CellsSpec,
    pub runs: Vec<RunSpec>,
    #[serde(default)]
    pub blocks: Vec<BlockSpec>,
    #[serde(default)]
    pub columns: Vec<Entry>,
    #[serde(default)]
    pub rows: Vec<Entry>,
    /// Kinds with variants: header of the variant column (after the cell's label).
    #[serde(default = "default_variant_header")]
    pub variant_header: String,
    /// Kinds with variants: printed label per variant name (default: the experiment's own).
    #[serde(default)]
    pub variant_labels: std::collections::BTreeMap<String, String>,
}

fn default_variant_header() -> String {
    "variant".to_string()
}

/// The cells: every (source, target, property), property fastest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CellsSpec {
    pub source: Vec<String>,
    pub target: Vec<String>,
    pub property: Vec<String>,
}

/// One run: `set` overrides (after the spec's own `set`) and an optional checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub name: String,
    #[serde(default)]
    pub set: Vec<String>,
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
}

/// A group of rows: a heading row, then every cell read from `run` by default.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlockSpec {
    pub heading: String,
    pub run: String,
}

/// `show`: one item or several joined with " / ".
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Show {
    One(String),
    Many(Vec<String>),
}

impl Show {
    fn items(&self) -> Vec<&str> {
        match self {
            Show::One(s) => vec![s.as_str()],
            Show::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// A column (layout "cells") or a row (layout "methods") of the table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Column header, or the row label of layout "methods".
    #[serde(alias = "label")]
    pub header: String,
    pub show: Show,
    /// Decimals of the RMSEP values (0–6).
    #[serde(default = "default_decimals")]
    pub decimals: usize,
    /// Append " (r×)", r = value / best classical RMSEP at the run's N.
    #[serde(default)]
    pub ratio: bool,
    /// Decimals of the ratio (0–4).
    #[serde(default = "default_ratio_decimals")]
    pub ratio_decimals: usize,
    /// Mark a value below the classical SBC RMSEP at the run's N with "<" (inside the ratio's
    /// parentheses).
    #[serde(default)]
    pub mark_below_sbc: bool,
    /// Append " ± sd" (standard deviation over the splits, the value's decimals) right after the
    /// value.
    #[serde(default)]
    pub sd: bool,
    /// Append " (R²)" (mean R² over the splits, 2 decimals).
    #[serde(default)]
    pub r2: bool,
    /// Append " (k/n)": splits in which the residual gate's factor is > 0.
    #[serde(default)]
    pub gate: bool,
}

fn default_decimals() -> usize {
    3
}

fn default_ratio_decimals() -> usize {
    2
}

/// What one entry of `show` prints, with an optional `RUN:` prefix (default: the block's run,
/// else the first run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// `best`: the lowest classical RMSEP at the run's N (methods target-only PLS, SBC, DS, PDS,
    /// CCA, re-centring, di-PLS) and its name: "0.214 (sbc)".
    Best,
    /// `METHOD[@N]`: a classical method or model arm (N: given, else the run's N when the method
    /// has a row there, else 0).
    Method(String, Option<usize>),
    /// `below_sbc:METHOD[@N]`: splits in which the method's RMSEP is below classical SBC's, "k/n".
    BelowSbc(String, Option<usize>),
    /// `source_cv`: the blend's out-of-fold RMSE on the source set, PLS / Spektron / CNN (means
    /// over the splits, `blend = "source"`).
    SourceCv,
    /// `steps:K` (kind `ttt-steps`): the row's RMSEP after K test-time-training steps.
    Steps(usize),
    /// `val_msrp` (pretraining ablations): the variant's last validation MSRP ("–" without
    /// pretraining).
    ValMsrp,
}

/// A parsed `show` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ref {
    pub run: Option<String>,
    pub item: Item,
}

fn known_method(m: &str) -> bool {
    METHODS.contains(&m) || ARMS.contains(&m) || SUPERVISED_ROWS.contains(&m)
}

fn method_and_n(s: &str) -> Result<(String, Option<usize>), String> {
    let (m, n) = match s.split_once('@') {
        Some((m, n)) => {
            let n: usize = n
                .parse()
                .map_err(|_| format!("`{s}`: N after '@' must be a whole number"))?;
            (m, Some(n))
        }
        None => (s, None),
    };
    if !known_method(m) {
        return Err(format!(
            "`{m}` is not a method (one of: {}, {}, {})",
            METHODS.join(", "),
            ARMS.join(", "),
            SUPERVISED_ROWS.join(", ")
        ));
    }
    Ok((m.to_string(), n))
}

impl Ref {
    /// `[RUN:]best | [RUN:]METHOD[@N] | [RUN:]below_sbc:METHOD[@N] | [RUN:]source_cv |
    /// [RUN:]steps:K | [RUN:]val_msrp`.
    pub fn parse(s: &str) -> Result<Ref, String> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        let (run, rest) = match parts.as_slice() {
            [r, w @ ("below_sbc" | "steps"), m] => (Some(*r), vec![*w, m]),
            [w @ ("below_sbc" | "steps"), m] => (None, vec![*w, m]),
            [r, x] => (Some(*r), vec![*x]),
            [x] => (None, vec![*x]),
            _ => return Err(format!("`{s}`: expected [RUN:]ITEM")),
        };
        let item = match rest.as_slice() {
            ["below_sbc", m] => {
                let (m, n) = method_and_n(m)?;
                Item::BelowSbc(m, n)
            }
            ["steps", k] => Item::Steps(
                k.parse()
                    .map_err(|_| format!("`{s}`: steps:K takes a whole number of steps"))?,
            ),
            ["best"] => Item::Best,
            ["source_cv"] => Item::SourceCv,
            ["val_msrp"] => Item::ValMsrp,
            [m] => {
                let (m, n) = method_and_n(m)?;
                Item::Method(m, n)
            }
            _ => unreachable!(),
        };
        Ok(Ref {
            run: run.map(str::to_string),
            item,
        })
    }
}

/// One cell of the grid.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CellKey {
    pub source: String,
    pub target: String,
    pub property: String,
}

impl CellKey {
    /// `SOURCE:TARGET:PROPERTY`.
    pub fn id(&self) -> String {
        format!("{}:{}:{}", self.source, self.target, self.property)
    }

    fn label(&self, template: &str) -> String {
        template
            .replace("{source}", &self.source)
            .replace("{target}", &self.target)
            .replace("{property}", &self.property)
    }
}

fn field(path: &Path, f: impl Into<String>, msg: impl ToString) -> SpxError {
    SpxError::field(path, f, msg)
}

/// The first line of a TOML error and where it points: "field `key` (line L): message".
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> SpxError {
    let msg = e.message().lines().next().unwrap_or("").trim().to_string();
    match e.span() {
        Some(sp) => {
            let line = text[..sp.start.min(text.len())].matches('\n').count() + 1;
            let src = text.lines().nth(line - 1).unwrap_or("").trim();
            let key = src.split_once('=').map_or(src, |(k, _)| k.trim());
            SpxError::file(path, format!("field `{key}` (line {line}): {msg}"))
        }
        None => SpxError::file(path, msg),
    }
}

impl Spec {
    /// Parse and check a spec; errors name `path` and the field.
    pub fn parse(path: &Path, text: &str) -> Result<Spec, SpxError> {
        let table: toml::Table = text.parse().map_err(|e| toml_error(path, text, &e))?;
        let spec: Spec =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                // toml's message repeats the key on a second line ("in `key`"): one line here.
                let m = e.inner().to_string();
                let m = m.lines().next().unwrap_or("");
                // At the top level the path is "."; "missing field `x`" then names the field.
                let p = e.path().to_string();
                let f = match (p.as_str(), m.split('`').nth(1)) {
                    (".", Some(k)) => k.to_string(),
                    _ => p,
                };
                field(path, f, m)
            })?;
        spec.validate(path)?;
        Ok(spec)
    }

    /// Read and [`Spec::parse`] a spec file.
    pub fn load(path: &Path) -> Result<Spec, SpxError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpxError::io(path, e))?;
        Spec::parse(path, &text)
    }

    /// Every cell, property fastest.
    pub fn cells(&self) -> Vec<CellKey> {
        let c = &self.cells;
        let mut v = Vec::new();
        for s in &c.source {
            for t in &c.target {
                for p in &c.property {
                    v.push(CellKey {
                        source: s.clone(),
                        target: t.clone(),
                        property: p.clone(),
                    });
                }
            }
        }
        v
    }

    /// The cells named in `only` (`SOURCE:TARGET:PROPERTY`, in the spec's order), or all.
    pub fn select_cells(&self, path: &Path, only: &[String]) -> Result<Vec<CellKey>, SpxError> {
        let all = self.cells();
        for o in only {
            if !all.iter().any(|c| c.id() == *o) {
                return Err(field(
                    path,
                    "cells",
                    format!(
                        "--cell {o}: not a cell of the spec (cells: {})",
                        all.iter().map(CellKey::id).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        Ok(all
            .into_iter()
            .filter(|c| only.is_empty() || only.contains(&c.id()))
            .collect())
    }

    fn entries(&self) -> (&'static str, &[Entry]) {
        match self.layout {
            Layout::Cells => ("columns", &self.columns),
            Layout::Methods => ("rows", &self.rows),
        }
    }

    /// The run an entry item reads in a row of block `block` (index into `runs`).
    fn run_index(&self, r: &Ref, block: Option<&BlockSpec>) -> usize {
        let name = r
            .run
            .as_deref()
            .or(block.map(|b| b.run.as_str()))
            .unwrap_or(&self.runs[0].name);
        self.runs.iter().position(|x| x.name == name).unwrap_or(0)
    }

    /// Every check that needs no data: sizes and ranges, names, references.
    pub fn validate(&self, path: &Path) -> Result<(), SpxError> {
        let bad = |f: &str, m: String| Err(field(path, f, m));
        if !(1..=1000).contains(&self.repeats) {
            return bad("repeats", format!("{} not in 1..=1000", self.repeats));
        }
        if self.n_transfer.is_empty() {
            return bad("n_transfer", "empty".into());
        }
        if let Some(n) = self.n_transfer.iter().find(|n| !(1..=1000).contains(*n)) {
            return bad("n_transfer", format!("{n} not in 1..=1000"));
        }
        let kind = self.kind.name();
        match self.kind {
            GridKind::Baselines if self.quick => {
                return bad(
                    "quick",
                    "kind \"baselines\" trains no model (quick is for experiments)".into(),
                );
            }
            GridKind::Baselines => {}
            _ if self.n_transfer.len() != 1 => {
                return bad(
                    "n_transfer",
                    format!("kind \"{kind}\" takes one N (got {:?})", self.n_transfer),
                );
            }
            _ => {}
        }
        for (name, v) in [
            ("cells.source", &self.cells.source),
            ("cells.target", &self.cells.target),
            ("cells.property", &self.cells.property),
        ] {
            if v.is_empty() {
                return bad(name, "empty".into());
            }
            if let Some(s) = v
                .iter()
                .find(|s| s.is_empty() || s.contains(':') || s.trim() != *s)
            {
                return bad(
                    name,
                    format!("`{s}`: a name without ':' or surrounding spaces"),
                );
            }
        }
        let rest = self
            .label
            .replace("{source}", "")
            .replace("{target}", "")
            .replace("{property}", "");
        if rest.contains(['{', '}']) {
            return bad(
                "label",
                "placeholders are {source}, {target} and {property}".into(),
            );
        }
        let sets = |f: String, v: &[String]| -> Result<(), SpxError> {
            for (i, s) in v.iter().enumerate() {
                if !s.split_once('=').is_some_and(|(k, _)| k.contains('.')) {
                    return Err(field(
                        path,
                        format!("{f}[{i}]"),
                        format!("`{s}`: expected section.key=value"),
                    ));
                }
            }
            Ok(())
        };
        sets("set".into(), &self.set)?;
        if self.runs.is_empty() {
            return bad("runs", "no run".into());
        }
        for (i, r) in self.runs.iter().enumerate() {
            let ok = !r.name.is_empty()
                && r.name.len() <= 64
                && r.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                && r.name != "below_sbc"
                && r.name != "steps";
            if !ok {
                return bad(
                    &format!("runs[{i}].name"),
                    format!(
                        "`{}`: 1–64 letters, digits, '_' or '-' (and not `below_sbc` or `steps`)",
                        r.name
                    ),
                );
            }
            if self.runs[..i].iter().any(|x| x.name == r.name) {
                return bad(
                    &format!("runs[{i}].name"),
                    format!("`{}` named twice", r.name),
                );
            }
            sets(format!("runs[{i}].set"), &r.set)?;
            if r.checkpoint.is_some()
                && (self.kind == GridKind::Baselines || self.kind.is_ablation())
            {
                return bad(
                    &format!("runs[{i}].checkpoint"),
                    format!("kind \"{kind}\" takes no checkpoint"),
                );
            }
        }
        let run_known = |n: &str| self.runs.iter().any(|r| r.name == n);
        if self.layout == Layout::Methods && !self.blocks.is_empty() {
            return bad("blocks", "blocks are for layout \"cells\"".into());
        }
        if self.layout == Layout::Methods && self.kind.has_variants() {
            return bad(
                "layout",
                format!("kind \"{kind}\" has a row per cell and variant (layout \"cells\")"),
            );
        }
        if !self.kind.has_variants() && !self.variant_labels.is_empty() {
            return bad("variant_labels", format!("kind \"{kind}\" has no variants"));
        }
        for (i, b) in self.blocks.iter().enumerate() {
            if !run_known(&b.run) {
                return bad(
                    &format!("blocks[{i}].run"),
                    format!("`{}` is not a run", b.run),
                );
            }
        }
        let (which, entries) = self.entries();
        let other = if which == "columns" {
            &self.rows
        } else {
            &self.columns
        };
        if !other.is_empty() {
            return bad(
                if which == "columns" {
                    "rows"
                } else {
                    "columns"
                },
                format!("layout {:?} takes `{which}`", self.layout),
            );
        }
        if entries.is_empty() {
            return bad(which, "no entry".into());
        }
        for (i, e) in entries.iter().enumerate() {
            let f = |k: &str| format!("{which}[{i}].{k}");
            if e.decimals > 6 {
                return bad(&f("decimals"), format!("{} not in 0..=6", e.decimals));
            }
            if e.ratio_decimals > 4 {
                return bad(
                    &f("ratio_decimals"),
                    format!("{} not in 0..=4", e.ratio_decimals),
                );
            }
            let items = e.show.items();
            if items.is_empty() {
                return bad(&f("show"), "empty".into());
            }
            for s in items {
                let r = Ref::parse(s).map_err(|m| field(path, f("show"), m))?;
                if let Some(run) = &r.run
                    && !run_known(run)
                {
                    return bad(&f("show"), format!("`{s}`: `{run}` is not a run"));
                }
                let method = match &r.item {
                    Item::Method(m, n) | Item::BelowSbc(m, n) => Some((m, n)),
                    _ => None,
                };
                if let Some((m, n)) = method {
                    let reference = m == "recentre_test" || m == "sbc";
                    let refused = match self.kind {
                        GridKind::Experiment => None,
                        GridKind::Baselines => (!METHODS.contains(&m.as_str()))
                            .then_some("has only the classical methods"),
                        GridKind::TttSteps => (!reference).then_some(
                            "has the classical rows recentre_test and sbc (model rows: steps:K)",
                        ),
                        _ => (!reference && !ARMS.contains(&m.as_str())).then_some(
                            "has the model arms and the classical rows recentre_test and sbc",
                        ),
                    };
                    if let Some(why) = refused {
                        return bad(&f("show"), format!("`{s}`: kind \"{kind}\" {why}"));
                    }
                    if let Some(n) = n
                        && *n != 0
                        && !self.n_transfer.contains(n)
                    {
                        return bad(
                            &f("show"),
                            format!("`{s}`: N = {n} is neither 0 nor in n_transfer"),
                        );
                    }
                }
                let value_item = matches!(r.item, Item::Method(..) | Item::Steps(_));
                if !value_item && (e.ratio || e.mark_below_sbc || e.r2 || e.gate || e.sd) {
                    return bad(
                        &f("show"),
                        format!(
                            "`{s}`: ratio, mark_below_sbc, sd, r2 and gate apply to METHOD and steps:K items"
                        ),
                    );
                }
                if e.gate && self.kind != GridKind::Experiment {
                    return bad(&f("gate"), format!("no residual gate in kind \"{kind}\""));
                }
                let only = match r.item {
                    Item::Steps(_) => Some(GridKind::TttSteps),
                    Item::SourceCv => Some(GridKind::Experiment),
                    _ => None,
                };
                if let Some(k) = only
                    && k != self.kind
                {
                    return bad(&f("show"), format!("`{s}`: only in kind \"{}\"", k.name()));
                }
                if r.item == Item::ValMsrp && !self.kind.is_ablation() {
                    return bad(
                        &f("show"),
                        format!(
                            "`{s}`: only in the pretraining ablations (pretraining, masking, architecture, losses)"
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Checks that need each run's settings: every METHOD item names an arm its run computes
    /// (e.g. `spektron_sbc` needs `spektron.experiment.slope_bias`), so a long grid does not
    /// fail after its last cell.
    pub fn check_runs(&self, path: &Path, runs: &[&ExperimentConfig]) -> Result<(), SpxError> {
        assert_eq!(runs.len(), self.runs.len(), "one config per run");
        let (which, entries) = self.entries();
        let blocks: Vec<Option<&BlockSpec>> = if self.blocks.is_empty() {
            vec![None]
        } else {
            self.blocks.iter().map(Some).collect()
        };
        for (i, e) in entries.iter().enumerate() {
            for s in e.show.items() {
                let r = Ref::parse(s).map_err(|m| field(path, format!("{which}[{i}].show"), m))?;
                for b in &blocks {
                    let k = self.run_index(&r, *b);
                    let ec = runs[k];
                    let name = &self.runs[k].name;
                    let need = match &r.item {
                        Item::Method(m, _) | Item::BelowSbc(m, _) => {
                            if self.kind == GridKind::Experiment || self.kind.is_ablation() {
                                arm_switch(m, ec).map(str::to_string)
                            } else {
                                None
                            }
                        }
                        Item::SourceCv => (ec.blend != BlendWeights::Source)
                            .then(|| "spektron.experiment.blend=source".to_string()),
                        Item::Steps(k) => (!ec.ttt_steps.contains(k))
                            .then(|| format!("{k} in spektron.experiment.ttt_steps")),
                        Item::Best | Item::ValMsrp => None,
                    };
                    let need = need.or_else(|| {
                        (e.gate && ec.residual_gate_folds == 0)
                            .then(|| "spektron.experiment.residual_gate_folds=5".to_string())
                    });
                    if let Some(k) = need {
                        return Err(field(
                            path,
                            format!("{which}[{i}].show"),
                            format!("`{s}`: run `{name}` does not compute it (it needs {k})"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The switch an arm of `spektron experiment table` needs, when it is off.
fn arm_switch(m: &str, ec: &ExperimentConfig) -> Option<&'static str> {
    match m {
        "spektron_sbc" if !ec.slope_bias => Some("spektron.experiment.slope_bias=true"),
        "pls_sbc_inputs" | "spektron_residual" if !ec.residual => {
            Some("spektron.experiment.residual=true")
        }
        "spektron_residual_gated" if ec.residual_gate_folds == 0 || !ec.residual => {
            Some("spektron.experiment.residual_gate_folds=5 with residual")
        }
        "spektron_pls_head" | "pls_head_linear" if !ec.pls_head || !ec.residual => {
            Some("spektron.experiment.pls_head=true with residual")
        }
        "cnn_sbc" | "blend_spektron" | "blend_cnn"
            if ec.blend == BlendWeights::Off || !ec.residual =>
        {
            Some("spektron.experiment.blend=source|transfer with residual")
        }
        m if SUPERVISED_ROWS.contains(&m) && !ec.supervised => {
            Some("spektron.experiment.supervised=true")
        }
        _ => None,
    }
}

/// The results of one (run, cell): every row of its report and the notes the table reads.
#[derive(Clone, Debug, Serialize)]
pub struct CellResult {
    pub run: String,
    pub cell: CellKey,
    /// Kinds with variants: the variant (E9: `zero_shot` / `few_shot`; ablations: the
    /// experiment's variant names) and its printed label.
    pub variant: Option<String>,
    pub variant_label: Option<String>,
    /// Pretraining ablations: the variant's last validation MSRP (None without pretraining).
    pub val_msrp: Option<f64>,
    /// The property's label in the data file.
    pub property_label: String,
    /// N of `best`, the ratios and the SBC mark (the run's first N).
    pub table_n: usize,
    /// Index of the first seeded split (`spektron.baselines.first_repeat`).
    pub first_split: usize,
    pub cells: Vec<Cell>,
    /// The residual gate's factor per split at `table_n` (empty without the gate).
    pub gate: Vec<f64>,
    /// Per split at `table_n`, `blend = "source"`: out-of-fold source RMSE of PLS, Spektron,
    /// CNN (empty otherwise).
    pub source_cv_rmse: Vec<Vec<f64>>,
    /// The report files of this (run, cell), relative to the output directory.
    pub files: Vec<PathBuf>,
}

impl CellResult {
    /// A result of `run` on `cell` with `cells`: no variant, gate factors or blend notes.
    pub fn new(
        run: &str,
        cell: &CellKey,
        property_label: &str,
        table_n: usize,
        first_split: usize,
        files: Vec<PathBuf>,
        cells: Vec<Cell>,
    ) -> CellResult {
        CellResult {
            run: run.to_string(),
            cell: cell.clone(),
            variant: None,
            variant_label: None,
            val_msrp: None,
            property_label: property_label.to_string(),
            table_n,
            first_split,
            cells,
            gate: Vec::new(),
            source_cv_rmse: Vec::new(),
            files,
        }
    }

    fn get(&self, m: &str, n: usize) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.method == m && c.n_transfer == n)
    }

    fn at_steps(&self, k: usize) -> Result<&Cell, String> {
        let m = format!("ttt_{k}");
        self.cells.iter().find(|c| c.method == m).ok_or_else(|| {
            format!(
                "run `{}`, cell {}: no RMSEP after {k} TTT steps",
                self.run,
                self.cell.id()
            )
        })
    }

    fn lookup(&self, m: &str, n: Option<usize>) -> Result<&Cell, String> {
        let found = match n {
            Some(n) => self.get(m, n),
            None => self.get(m, self.table_n).or_else(|| self.get(m, 0)),
        };
        found.ok_or_else(|| {
            format!(
                "run `{}`, cell {}: no row `{m}`{}",
                self.run,
                self.cell.id(),
                n.map(|n| format!(" at N = {n}")).unwrap_or_default()
            )
        })
    }

    /// The lowest classical RMSEP at `table_n` and its method.
    fn best(&self) -> Result<(&str, f64), String> {
        METHODS[4..]
            .iter()
            .filter_map(|m| self.get(m, self.table_n).map(|c| (*m, c.rmsep_mean)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .ok_or_else(|| {
                format!(
                    "run `{}`, cell {}: no classical row at N = {}",
                    self.run,
                    self.cell.id(),
                    self.table_n
                )
            })
    }
}

/// The assembled table.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GridTable {
    /// Header row (first the corner).
    pub header: Vec<String>,
    /// Rows: a block heading is a one-element row.
    pub rows: Vec<Vec<String>>,
    /// The table in Markdown, as the README prints it.
    pub markdown: String,
}

/// A value item's cell with the entry's options: the RMSEP mean, then " ± sd", " (ratio×<)",
/// " (R²)" and " (k/n)" as the entry asks.
fn format_value(e: &Entry, c: &Cell, res: &CellResult, block: &str) -> Result<String, String> {
    let d = e.decimals;
    let v = c.rmsep_mean;
    let mut s = format!("{v:.d$}");
    if e.sd {
        let _ = write!(s, " ± {:.d$}", c.rmsep_std);
    }
    if e.ratio || e.mark_below_sbc {
        let mut inner = String::new();
        if e.ratio {
            let (_, best) = res.best()?;
            let _ = write!(inner, "{:.*}×", e.ratio_decimals, v / best);
        }
        if e.mark_below_sbc {
            let sbc = res.lookup("sbc", Some(res.table_n))?.rmsep_mean;
            if v < sbc {
                inner.push('<');
            }
        }
        if !inner.is_empty() {
            let _ = write!(s, " ({inner})");
        }
    }
    if e.r2 {
        let _ = write!(s, " ({:.2})", c.r2_mean);
    }
    if e.gate {
        if res.gate.is_empty() {
            return Err(format!(
                "run `{}`, cell {}: no residual-gate factors{block}",
                res.run,
                res.cell.id()
            ));
        }
        let on = res.gate.iter().filter(|&&g| g > 0.0).count();
        let _ = write!(s, " ({on}/{})", res.gate.len());
    }
    Ok(s)
}

fn format_item(e: &Entry, r: &Ref, res: &CellResult, block: &str) -> Result<String, String> {
    let d = e.decimals;
    match &r.item {
        Item::Best => {
            let (m, v) = res.best()?;
            Ok(format!("{v:.d$} ({m})"))
        }
        Item::ValMsrp => Ok(res
            .val_msrp
            .map_or_else(|| "–".to_string(), |v| format!("{v:.d$}"))),
        Item::Method(m, n) => format_value(e, res.lookup(m, *n)?, res, block),
        Item::Steps(k) => format_value(e, res.at_steps(*k)?, res, block),
        Item::BelowSbc(m, n) => {
            let c = res.lookup(m, *n)?;
            // Classical SBC at the method's N (an N = 0 row: at the run's N).
            let n = if c.n_transfer == 0 {
                res.table_n
            } else {
                c.n_transfer
            };
            let sbc = res.lookup("sbc", Some(n))?;
            let k = c
                .rmsep
                .iter()
                .zip(&sbc.rmsep)
                .filter(|(a, b)| a < b)
                .count();
            Ok(format!("{k}/{}", c.rmsep.len().min(sbc.rmsep.len())))
        }
        Item::SourceCv => {
            let v = &res.source_cv_rmse;
            if v.is_empty() || v.iter().any(|x| x.len() != 3) {
                return Err(format!(
                    "run `{}`, cell {}: no source-set CV RMSE (blend = \"source\"){block}",
                    res.run,
                    res.cell.id()
                ));
            }
            let mean = |i: usize| v.iter().map(|x| x[i]).sum::<f64>() / v.len() as f64;
            Ok(format!(
                "{:.d$} / {:.d$} / {:.d$}",
                mean(0),
                mean(1),
                mean(2)
            ))
        }
    }
}

fn md_row(cells: &[String]) -> String {
    let mut s = String::from("|");
    for c in cells {
        let _ = write!(s, " {c} |");
    }
    s.push('\n');
    s
}

/// The table of `spec` over `cells` from `results` (one per run × cell; any order). Errors
/// (a row the spec names but a run did not compute) name `path` and the entry.
pub fn assemble(
    path: &Path,
    spec: &Spec,
    cells: &[CellKey],
    results: &[CellResult],
) -> Result<GridTable, SpxError> {
    let (which, entries) = spec.entries();
    let find = |run: &str, c: &CellKey, v: Option<&str>| -> Result<&CellResult, SpxError> {
        results
            .iter()
            .find(|r| r.run == run && r.cell == *c && r.variant.as_deref() == v)
            .ok_or_else(|| {
                field(
                    path,
                    "runs",
                    format!(
                        "no result of run `{run}` on cell {}{}",
                        c.id(),
                        v.map(|v| format!(", variant `{v}`")).unwrap_or_default()
                    ),
                )
            })
    };
    // The rows of a cell: one, or one per variant of the block's run (in the run's order).
    let variants = |c: &CellKey, block: Option<&BlockSpec>| -> Vec<(Option<&str>, &str)> {
        if !spec.kind.has_variants() {
            return vec![(None, "")];
        }
        let run = block.map_or(spec.runs[0].name.as_str(), |b| b.run.as_str());
        results
            .iter()
            .filter(|r| r.run == run && r.cell == *c)
            .filter_map(|r| {
                let v = r.variant.as_deref()?;
                let label = spec
                    .variant_labels
                    .get(v)
                    .map(String::as_str)
                    .or(r.variant_label.as_deref())
                    .unwrap_or(v);
                Some((Some(v), label))
            })
            .collect()
    };
    let entry = |i: usize, e: &Entry, c: &CellKey, v: Option<&str>, block: Option<&BlockSpec>| {
        let mut parts = Vec::new();
        for s in e.show.items() {
            let r = Ref::parse(s).map_err(|m| field(path, format!("{which}[{i}].show"), m))?;
            let run = &spec.runs[spec.run_index(&r, block)].name;
            let res = find(run, c, v)?;
            let where_ = block
                .map(|b| format!(" (block {})", b.heading))
                .unwrap_or_default();
            parts.push(
                format_item(e, &r, res, &where_)
                    .map_err(|m| field(path, format!("{which}[{i}].show"), m))?,
            );
        }
        Ok::<String, SpxError>(parts.join(" / "))
    };
    let mut header = vec![spec.corner.clone()];
    let mut rows = Vec::new();
    match spec.layout {
        Layout::Cells => {
            if spec.kind.has_variants() {
                header.push(spec.variant_header.clone());
            }
            header.extend(entries.iter().map(|e| e.header.clone()));
            let blocks: Vec<Option<&BlockSpec>> = if spec.blocks.is_empty() {
                vec![None]
            } else {
                spec.blocks.iter().map(Some).collect()
            };
            for b in blocks {
                if let Some(b) = b {
                    rows.push(vec![b.heading.clone()]);
                }
                for c in cells {
                    let vs = variants(c, b);
                    if vs.is_empty() {
                        let run = b.map_or(&spec.runs[0].name, |b| &b.run);
                        return Err(field(
                            path,
                            "runs",
                            format!("no result of run `{run}` on cell {}", c.id()),
                        ));
                    }
                    for (v, vlabel) in vs {
                        let mut row = vec![c.label(&spec.label)];
                        if v.is_some() {
                            row.push(vlabel.to_string());
                        }
                        for (i, e) in entries.iter().enumerate() {
                            row.push(entry(i, e, c, v, b)?);
                        }
                        rows.push(row);
                    }
                }
            }
        }
        Layout::Methods => {
            header.extend(cells.iter().map(|c| c.label(&spec.label)));
            for (i, e) in entries.iter().enumerate() {
                let mut row = vec![e.header.clone()];
                for c in cells {
                    row.push(entry(i, e, c, None, None)?);
                }
                rows.push(row);
            }
        }
    }
    let mut markdown = md_row(&header);
    markdown.push_str(&md_row(&vec!["---".to_string(); header.len()]).replace(" --- ", "---"));
    for r in &rows {
        if r.len() == 1 {
            let mut s = format!("| {} |", r[0]);
            for _ in 1..header.len() {
                s.push_str(" |");
            }
            s.push('\n');
            markdown.push_str(&s);
        } else {
            markdown.push_str(&md_row(r));
        }
    }
    Ok(GridTable {
        header,
        rows,
        markdown,
    })
}

/// One run's settings, as the caller built them from the spec's `set` (and the command's flags).
#[derive(Clone, Copy, Debug)]
pub struct RunInput<'a> {
    pub name: &'a str,
    pub settings: experiment::Settings<'a>,
    /// What the pretraining ablations read (corpus, pretraining, losses).
    pub pretrain: PretrainInput<'a>,
    pub checkpoint: Option<&'a Path>,
    /// Final path of the run's effective config file (recorded in each cell's JSON report).
    pub config_file: &'a Path,
}

/// The grid's data and cells.
#[derive(Clone, Copy, Debug)]
pub struct GridInput<'a> {
    pub spec: &'a Spec,
    /// The spec file (named in errors; its stem names the outputs).
    pub spec_path: &'a Path,
    pub data: &'a Path,
    pub modality: Modality,
    pub cells: &'a [CellKey],
}

/// The variants of a run of a kind with variants, (name, label) in table order (empty for the
/// other kinds).
pub fn variants(kind: GridKind, r: &RunInput) -> Result<Vec<(String, String)>, SpxError> {
    let cfg = &r.settings;
    let pre = &r.pretrain;
    let vs = match kind {
        GridKind::Experiment | GridKind::Baselines => return Ok(Vec::new()),
        GridKind::TttSteps => {
            let k = cfg.arms.experiment.table_n;
            return Ok(vec![
                ("zero_shot".into(), "0-shot (master)".into()),
                ("few_shot".into(), format!("few-shot (LoRA, N = {k})")),
            ]);
        }
        GridKind::Pretraining => pretrain_ablation::variants(cfg, pre),
        GridKind::Masking => mask_ablation::variants(cfg, pre),
        GridKind::Architecture => arch_ablation::variants(cfg, pre)?,
        GridKind::Losses => loss_ablation::variants(cfg, pre),
    };
    Ok(vs.into_iter().map(|v| (v.name, v.axis)).collect())
}

/// Progress units of [`run`]: per (run, cell) those of its experiment (baselines and E9:
/// repetitions; ablations: the corpus, then pretraining and model arms per variant).
pub fn progress_len(kind: GridKind, runs: &[RunInput], cells: usize) -> u64 {
    runs.iter()
        .map(|r| match kind {
            GridKind::Experiment => {
                experiment::progress_len(Kind::Table, r.settings.arms.experiment)
            }
            GridKind::Baselines => r.settings.baselines.repeats as u64,
            GridKind::TttSteps => r.settings.arms.experiment.repeats as u64,
            _ => 1 + 2 * variants(kind, r).map_or(0, |v| v.len() as u64),
        })
        .sum::<u64>()
        * cells as u64
}

/// A finished grid.
#[derive(Clone, Debug, Serialize)]
pub struct GridReport {
    pub spec_file: String,
    pub spec: Spec,
    pub data: String,
    pub results: Vec<CellResult>,
    pub table: GridTable,
    /// Files written (paths in the directory given to [`run`]): `<stem>.md`, `.csv`, `.json`.
    #[serde(skip)]
    pub files: Vec<PathBuf>,
}

/// `run,variant,source,target,property,method,n_transfer,split,rmsep,rmsep_mean,rmsep_std,
/// r2_mean`, one line per split (`variant` "-" in kinds without variants; E9's RMSEP after K
/// TTT steps is method `ttt_K`).
pub fn results_csv(results: &[CellResult]) -> String {
    let mut s = String::from(
        "run,variant,source,target,property,method,n_transfer,split,rmsep,rmsep_mean,rmsep_std,r2_mean\n",
    );
    for r in results {
        for c in &r.cells {
            for (i, v) in c.rmsep.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{},{},{v},{},{},{}",
                    r.run,
                    r.variant.as_deref().unwrap_or("-"),
                    r.cell.source,
                    r.cell.target,
                    r.cell.property,
                    c.method,
                    c.n_transfer,
                    r.first_split + i,
                    c.rmsep_mean,
                    c.rmsep_std,
                    c.r2_mean
                );
            }
        }
    }
    s
}

/// Run every (run, cell) of the grid, writing each one's report files into `dir/<run>/`, then
/// the table: `dir/<stem>.md` (the Markdown table), `<stem>.csv` ([`results_csv`]) and
/// `<stem>.json` (spec, per-cell results with every split, the table), `stem` = the spec file's
/// stem. `dir` is a staging directory: the caller commits it.
pub fn run<'a>(
    g: &GridInput<'a>,
    runs: &[RunInput<'a>],
    device: &Device,
    dir: &Path,
    mut on_progress: impl FnMut(&str),
) -> Result<GridReport, SpxError> {
    let spec = g.spec;
    assert_eq!(runs.len(), spec.runs.len(), "one RunInput per run");
    let ecs: Vec<&ExperimentConfig> = runs.iter().map(|r| r.settings.arms.experiment).collect();
    spec.check_runs(g.spec_path, &ecs)?;
    // The variants of each run (kinds with variants); `variant_labels` must name one of them.
    let run_variants = runs
        .iter()
        .map(|r| variants(spec.kind, r))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(k) = spec
        .variant_labels
        .keys()
        .find(|k| !run_variants.iter().flatten().any(|(v, _)| v == *k))
    {
        let known: Vec<&str> = run_variants[0].iter().map(|(v, _)| v.as_str()).collect();
        return Err(field(
            g.spec_path,
            format!("variant_labels.{k}"),
            format!("not a variant (variants: {})", known.join(", ")),
        ));
    }
    let mut results = Vec::new();
    for (ri, r) in runs.iter().enumerate() {
        let rdir = dir.join(safe_component(r.name));
        ensure_dir(&rdir)?;
        let experiment_input = |c: &'a CellKey, checkpoint: Option<&'a Path>| experiment::Input {
            data: Some(g.data),
            source: &c.source,
            target: &c.target,
            property: &c.property,
            checkpoint,
            modality: g.modality,
            config_file: r.config_file,
        };
        for c in g.cells {
            let tag = format!("{} {}", r.name, c.id());
            let rel = |f: &[PathBuf]| -> Vec<PathBuf> {
                f.iter()
                    .map(|p| p.strip_prefix(dir).unwrap_or(p).to_path_buf())
                    .collect()
            };
            let one = |res: CellResult| vec![res];
            let res = match spec.kind {
                GridKind::Experiment => {
                    let input = experiment_input(c, r.checkpoint);
                    let rep = experiment::run_into(
                        Kind::Table,
                        &input,
                        r.settings,
                        device,
                        &rdir,
                        |m| on_progress(&format!("{tag}: {m}")),
                    )?;
                    let n = r.settings.arms.experiment.table_n;
                    let first = r.settings.baselines.first_repeat;
                    let files = rel(&rep.files);
                    one(CellResult {
                        gate: rep
                            .notes
                            .residual_gate
                            .iter()
                            .filter(|x| x.n_transfer == n)
                            .map(|x| x.factor)
                            .collect(),
                        source_cv_rmse: rep
                            .notes
                            .blend
                            .iter()
                            .filter(|x| x.n_transfer == n && !x.source_cv_rmse.is_empty())
                            .map(|x| x.source_cv_rmse.clone())
                            .collect(),
                        ..CellResult::new(r.name, c, &rep.property, n, first, files, rep.cells)
                    })
                }
                GridKind::Baselines => {
                    let input = classical::Input {
                        data: g.data,
                        source: &c.source,
                        target: &c.target,
                        property: &c.property,
                    };
                    let bc = r.settings.baselines;
                    // The classical repetitions run in parallel (a `Send` callback): the
                    // progress units are reported together at the end of the cell.
                    let cr = classical::run_into(&input, bc, &rdir, |_| {})?;
                    for _ in 0..bc.repeats {
                        on_progress(&tag);
                    }
                    let n = bc.n_transfer.first().copied().unwrap_or(0);
                    one(CellResult::new(
                        r.name,
                        c,
                        &cr.property,
                        n,
                        bc.first_repeat,
                        rel(&cr.files),
                        cr.report.cells,
                    ))
                }
                GridKind::TttSteps => {
                    let rep = ttt_steps::run(
                        &experiment_input(c, r.checkpoint),
                        r.settings,
                        device,
                        &rdir,
                        |m| on_progress(&format!("{tag}: {m}")),
                    )?;
                    let k = rep.n_transfer;
                    let cell = |x: &ttt_steps::StepRow, method: String, n: usize| Cell {
                        method,
                        n_transfer: n,
                        rmsep_mean: x.rmsep_mean,
                        rmsep_std: x.rmsep_std,
                        r2_mean: x.r2_mean,
                        rmsep: x.rmsep.clone(),
                    };
                    // The classical references: recentre_test (N = 0) and SBC at N.
                    let refs: Vec<Cell> = rep
                        .rows
                        .iter()
                        .filter(|x| !x.setting.ends_with("_shot"))
                        .map(|x| {
                            let n = if x.setting == "sbc" { k } else { 0 };
                            cell(x, x.setting.clone(), n)
                        })
                        .collect();
                    let files = rel(&rep.files);
                    run_variants[ri]
                        .iter()
                        .map(|(v, label)| {
                            let n = if v == "few_shot" { k } else { 0 };
                            let mut cells: Vec<Cell> = rep
                                .rows
                                .iter()
                                .filter(|x| x.setting == *v)
                                .map(|x| cell(x, format!("ttt_{}", x.steps), n))
                                .collect();
                            cells.extend(refs.iter().cloned());
                            CellResult {
                                variant: Some(v.clone()),
                                variant_label: Some(label.clone()),
                                ..CellResult::new(
                                    r.name,
                                    c,
                                    &rep.property,
                                    k,
                                    r.settings.baselines.first_repeat,
                                    files.clone(),
                                    cells,
                                )
                            }
                        })
                        .collect()
                }
                kind => {
                    let input = experiment_input(c, None);
                    let p = |m: &str| on_progress(&format!("{tag}: {m}"));
                    let (s, pre) = (r.settings, r.pretrain);
                    let rep = match kind {
                        GridKind::Pretraining => {
                            pretrain_ablation::run(&input, s, pre, device, &rdir, p)
                        }
                        GridKind::Masking => mask_ablation::run(&input, s, pre, device, &rdir, p),
                        GridKind::Architecture => {
                            arch_ablation::run(&input, s, pre, device, &rdir, p)
                        }
                        _ => loss_ablation::run(&input, s, pre, device, &rdir, p),
                    }?;
                    let files = rel(&rep.files);
                    rep.variants
                        .iter()
                        .map(|vr| {
                            let mut cells: Vec<Cell> = rep
                                .cells
                                .iter()
                                .filter(|x| x.variant == vr.variant)
                                .map(|x| x.cell.clone())
                                .collect();
                            cells.extend(rep.classical.iter().cloned());
                            let label = run_variants[ri]
                                .iter()
                                .find(|(v, _)| *v == vr.variant)
                                .map(|(_, l)| l.clone());
                            CellResult {
                                variant: Some(vr.variant.clone()),
                                variant_label: label,
                                val_msrp: vr.val_msrp,
                                ..CellResult::new(
                                    r.name,
                                    c,
                                    &rep.property,
                                    rep.n_transfer,
                                    r.settings.baselines.first_repeat,
                                    files.clone(),
                                    cells,
                                )
                            }
                        })
                        .collect()
                }
            };
            results.extend(res);
        }
    }
    let table = assemble(g.spec_path, spec, g.cells, &results)?;
    let stem = safe_component(
        &g.spec_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "grid".into()),
    );
    let mut files = Vec::new();
    let p = dir.join(format!("{stem}.md"));
    write_atomic(&p, |w| {
        std::io::Write::write_all(w, table.markdown.as_bytes())
    })?;
    files.push(p);
    let p = dir.join(format!("{stem}.csv"));
    let csv = results_csv(&results);
    write_atomic(&p, |w| std::io::Write::write_all(w, csv.as_bytes()))?;
    files.push(p);
    let mut rep = GridReport {
        spec_file: g.spec_path.display().to_string(),
        spec: spec.clone(),
        data: g.data.display().to_string(),
        results,
        table,
        files: Vec::new(),
    };
    let p = dir.join(format!("{stem}.json"));
    report::write_json(&p, &rep)?;
    files.push(p);
    rep.files = files;
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
quick = true
repeats = 2
n_transfer = [10]
corner = "pair, property"
label = "{source}→{target} {property}"
[cells]
source = ["m5"]
target = ["mp5"]
property = ["moisture", "oil"]
[[runs]]
name = "a"
[[runs]]
name = "b"
set = ["spektron.experiment.slope_bias=true"]
[[blocks]]
heading = "*run a*"
run = "a"
[[blocks]]
heading = "*run b*"
run = "b"
[[columns]]
header = "best"
show = "best"
[[columns]]
header = "SBC"
show = "sbc"
decimals = 4
[[columns]]
header = "PLS+SBC"
show = "pls_sbc_inputs"
ratio = true
mark_below_sbc = true
gate = true
[[columns]]
header = "TTT of a (N=0)"
show = "a:spektron_ttt"
ratio = true
ratio_decimals = 1
[[columns]]
header = "LoRA / master (R²)"
show = ["spektron_lora", "spektron_master_on_master"]
r2 = true
[[columns]]
header = "wins"
show = "below_sbc:pls_sbc_inputs"
[[columns]]
header = "source CV"
show = "b:source_cv"
decimals = 2
"#;

    fn path() -> &'static Path {
        Path::new("t/spec.toml")
    }

    fn cell(m: &str, n: usize, v: &[(f64, f64)]) -> Cell {
        Cell::aggregate(m, n, v)
    }

    /// A result of `run` on `cell` at N = 10 with `cells`, no variant, gate or blend notes.
    fn result(run: &str, cell: CellKey, cells: Vec<Cell>) -> CellResult {
        CellResult::new(run, &cell, "P", 10, 0, Vec::new(), cells)
    }

    /// Two runs on two cells with hand-made rows: run b's values are run a's times `k`.
    fn results() -> Vec<CellResult> {
        let spec = Spec::parse(path(), SPEC).unwrap();
        let mut out = Vec::new();
        for (run, k) in [("a", 1.0), ("b", 2.0)] {
            for (ci, c) in spec.cells().into_iter().enumerate() {
                let off = ci as f64 * 0.1;
                let cells = vec![
                    cell("no_transfer", 0, &[(1.0, -3.0), (1.0, -3.0)]),
                    cell("target_only", 10, &[(0.5, 0.1), (0.5, 0.1)]),
                    cell("sbc", 10, &[(0.2 + off, 0.5), (0.3 + off, 0.5)]),
                    cell("pds", 10, &[(0.3, 0.4), (0.3, 0.4)]),
                    cell("recentre", 10, &[(0.24 + off, 0.4), (0.24 + off, 0.4)]),
                    cell("spektron_ttt", 0, &[(0.48 * k, 0.0), (0.48 * k, 0.0)]),
                    cell("spektron_master_on_master", 0, &[(0.3, 0.21), (0.3, 0.23)]),
                    cell("pls_sbc_inputs", 10, &[(0.1 * k, 0.6), (0.38 * k, 0.4)]),
                    cell("spektron_lora", 10, &[(0.36, -0.1), (0.6, -0.2)]),
                ];
                out.push(CellResult {
                    first_split: 3,
                    gate: vec![0.0, 0.5 * (k - 1.0)],
                    source_cv_rmse: vec![vec![0.01, 0.3, 0.2], vec![0.03, 0.5, 0.4]],
                    ..result(run, c, cells)
                });
            }
        }
        out
    }

    #[test]
    fn assembles_known_results_into_the_readme_markdown() {
        let spec = Spec::parse(path(), SPEC).unwrap();
        let t = assemble(path(), &spec, &spec.cells(), &results()).unwrap();
        // Cell 1 (oil) has every classical value + 0.1: best = recentre 0.34 (pds 0.30 < 0.34!).
        let want = "\
| pair, property | best | SBC | PLS+SBC | TTT of a (N=0) | LoRA / master (R²) | wins | source CV |
|---|---|---|---|---|---|---|---|
| *run a* | | | | | | | |
| m5→mp5 moisture | 0.240 (recentre) | 0.2500 | 0.240 (1.00×<) (0/2) | 0.480 (2.0×) | 0.480 (-0.15) / 0.300 (0.22) | 1/2 | 0.02 / 0.40 / 0.30 |
| m5→mp5 oil | 0.300 (pds) | 0.3500 | 0.240 (0.80×<) (0/2) | 0.480 (1.6×) | 0.480 (-0.15) / 0.300 (0.22) | 2/2 | 0.02 / 0.40 / 0.30 |
| *run b* | | | | | | | |
| m5→mp5 moisture | 0.240 (recentre) | 0.2500 | 0.480 (2.00×) (1/2) | 0.480 (2.0×) | 0.480 (-0.15) / 0.300 (0.22) | 0/2 | 0.02 / 0.40 / 0.30 |
| m5→mp5 oil | 0.300 (pds) | 0.3500 | 0.480 (1.60×) (1/2) | 0.480 (1.6×) | 0.480 (-0.15) / 0.300 (0.22) | 1/2 | 0.02 / 0.40 / 0.30 |
";
        assert_eq!(t.markdown, want);
        assert_eq!(t.rows.len(), 6);
        assert_eq!(t.rows[0], vec!["*run a*".to_string()]);
    }

    #[test]
    fn methods_layout_puts_cells_in_columns() {
        let text = SPEC
            .replace(
                "corner = \"pair, property\"",
                "corner = \"method (N)\"\nlayout = \"methods\"",
            )
            .replace(
                "label = \"{source}→{target} {property}\"",
                "label = \"{property}\"",
            );
        // Only the rows of the methods layout: drop blocks and columns, add two rows.
        let head = text.split("[[blocks]]").next().unwrap().to_string();
        let text = format!(
            "{head}[[rows]]\nlabel = \"SBC (N=10)\"\nshow = \"sbc\"\nr2 = true\n\
             [[rows]]\nlabel = \"TTT\"\nshow = \"b:spektron_ttt@0\"\nratio = true\n"
        );
        let spec = Spec::parse(path(), &text).unwrap();
        let t = assemble(path(), &spec, &spec.cells(), &results()).unwrap();
        let want = "\
| method (N) | moisture | oil |
|---|---|---|
| SBC (N=10) | 0.250 (0.50) | 0.350 (0.50) |
| TTT | 0.960 (4.00×) | 0.960 (3.20×) |
";
        assert_eq!(t.markdown, want);
    }

    #[test]
    fn a_row_the_runs_did_not_compute_is_an_error_naming_the_entry() {
        let spec = Spec::parse(path(), SPEC).unwrap();
        let mut r = results();
        r[0].cells.retain(|c| c.method != "spektron_lora");
        let e = assemble(path(), &spec, &spec.cells(), &r)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t/spec.toml")
                && e.contains("columns[4].show")
                && e.contains("spektron_lora"),
            "{e}"
        );
        let mut r = results();
        r[3].gate.clear();
        let e = assemble(path(), &spec, &spec.cells(), &r)
            .unwrap_err()
            .to_string();
        assert!(e.contains("columns[2].show") && e.contains("gate"), "{e}");
    }

    #[test]
    fn results_csv_has_one_line_per_split_numbered_from_the_first_split() {
        let r = results();
        let csv = results_csv(&r[..1]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 1 + 9 * 2);
        assert_eq!(
            lines[0],
            "run,variant,source,target,property,method,n_transfer,split,rmsep,rmsep_mean,rmsep_std,r2_mean"
        );
        assert!(
            lines[5].starts_with("a,-,m5,mp5,moisture,sbc,10,3,0.2,"),
            "{}",
            lines[5]
        );
        assert!(
            lines[6].starts_with("a,-,m5,mp5,moisture,sbc,10,4,0.3,"),
            "{}",
            lines[6]
        );
    }

    #[test]
    fn show_items_parse() {
        let p = |s: &str| Ref::parse(s).unwrap();
        assert_eq!(
            p("best"),
            Ref {
                run: None,
                item: Item::Best
            }
        );
        assert_eq!(
            p("a:spektron_lora@10"),
            Ref {
                run: Some("a".into()),
                item: Item::Method("spektron_lora".into(), Some(10))
            }
        );
        assert_eq!(
            p("t:below_sbc:blend_cnn"),
            Ref {
                run: Some("t".into()),
                item: Item::BelowSbc("blend_cnn".into(), None)
            }
        );
        assert_eq!(
            p("below_sbc:sbc@5"),
            Ref {
                run: None,
                item: Item::BelowSbc("sbc".into(), Some(5))
            }
        );
        assert_eq!(p("source:source_cv").item, Item::SourceCv);
        assert_eq!(p("steps:20").item, Item::Steps(20));
        assert_eq!(
            p("e9:steps:0"),
            Ref {
                run: Some("e9".into()),
                item: Item::Steps(0)
            }
        );
        assert_eq!(p("val_msrp").item, Item::ValMsrp);
        assert!(Ref::parse("steps:x").is_err());
        assert!(Ref::parse("steps:-1").is_err());
        assert!(Ref::parse("a:lora").is_err());
        assert!(Ref::parse("sbc@x").is_err());
        assert!(Ref::parse("a:b:c:d").is_err());
    }

    /// Each bad spec is refused with one line naming the file and the field.
    #[test]
    fn bad_specs_are_refused_naming_file_and_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("repeats = 2", "repeats = 0", "repeats"),
            ("repeats = 2", "repeats = -1", "repeats"),
            ("repeats = 2\n", "", "repeats"),
            ("repeats = 2", "repeats = 2\nrepeat = 3", "repeat"),
            ("n_transfer = [10]", "n_transfer = [10, 20]", "n_transfer"),
            ("n_transfer = [10]", "n_transfer = [0]", "n_transfer"),
            ("n_transfer = [10]", "n_transfer = []", "n_transfer"),
            ("{property}\"", "{prop}\"", "label"),
            ("name = \"b\"", "name = \"a\"", "runs[1].name"),
            ("name = \"b\"", "name = \"b c\"", "runs[1].name"),
            ("name = \"b\"", "name = \"steps\"", "runs[1].name"),
            ("show = \"best\"", "show = \"steps:5\"", "columns[0].show"),
            ("show = \"best\"", "show = \"val_msrp\"", "columns[0].show"),
            (
                "corner = ",
                "variant_labels = { none = \"x\" }\ncorner = ",
                "variant_labels",
            ),
            ("slope_bias=true\"]", "slope_bias\"]", "runs[1].set[0]"),
            ("run = \"b\"", "run = \"z\"", "blocks[1].run"),
            ("show = \"best\"", "show = \"lora\"", "columns[0].show"),
            ("show = \"best\"", "show = \"z:sbc\"", "columns[0].show"),
            ("show = \"best\"", "show = \"sbc@20\"", "columns[0].show"),
            ("decimals = 4", "decimals = 7", "columns[1].decimals"),
            (
                "ratio_decimals = 1",
                "ratio_decimals = 9",
                "columns[3].ratio_decimals",
            ),
            (
                "show = \"b:source_cv\"",
                "show = \"b:source_cv\"\nratio = true",
                "columns[6].show",
            ),
            (
                "show = \"b:source_cv\"",
                "show = \"b:source_cv\"\nsd = true",
                "columns[6].show",
            ),
            (
                "property = [\"moisture\", \"oil\"]",
                "property = []",
                "cells.property",
            ),
            (
                "property = [\"moisture\", \"oil\"]",
                "property = [\"a:b\"]",
                "cells.property",
            ),
            ("quick = true", "quick = tru", "quick"),
            ("quick = true", "quick = 1", "quick"),
            (
                "[[columns]]\nheader = \"best\"",
                "[[rows]]\nheader = \"best\"",
                "rows",
            ),
        ];
        for (from, to, field) in cases {
            assert!(SPEC.contains(from), "{from}");
            let text = SPEC.replacen(from, to, 1);
            let e = Spec::parse(path(), &text).unwrap_err().to_string();
            assert!(
                e.starts_with("t/spec.toml: ")
                    && e.contains(&format!("`{field}"))
                    && !e.contains('\n'),
                "{to}: {e}"
            );
        }
        // Kind "baselines": no model arms, no quick, no checkpoint.
        let b = SPEC.replacen("quick = true", "kind = \"baselines\"", 1);
        let e = Spec::parse(path(), &b).unwrap_err().to_string();
        assert!(
            e.contains("columns[2].show") && e.contains("classical"),
            "{e}"
        );
        let e = Spec::parse(
            path(),
            &SPEC.replacen("quick = true", "kind = \"baselines\"\nquick = true", 1),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`quick`"), "{e}");
    }

    #[test]
    fn runs_that_do_not_compute_a_column_are_refused_before_running() {
        let spec = Spec::parse(path(), SPEC).unwrap();
        // The defaults of configs/spektron.toml (this module sits below `spektron::config`).
        let t: toml::Table = include_str!("../../configs/spektron.toml").parse().unwrap();
        let mut a: ExperimentConfig = t["spektron"]["experiment"].clone().try_into().unwrap();
        a.residual = true;
        a.residual_gate_folds = 5;
        let mut b = a.clone();
        b.blend = BlendWeights::Source;
        spec.check_runs(path(), &[&a, &b]).unwrap();
        let mut b2 = b.clone();
        b2.blend = BlendWeights::Off;
        let e = spec.check_runs(path(), &[&a, &b2]).unwrap_err().to_string();
        assert!(
            e.contains("columns[6].show") && e.contains("run `b`"),
            "{e}"
        );
        let mut a2 = a.clone();
        a2.residual_gate_folds = 0;
        let e = spec.check_runs(path(), &[&a2, &b]).unwrap_err().to_string();
        assert!(
            e.contains("columns[2].show") && e.contains("run `a`"),
            "{e}"
        );
    }

    const E9: &str = r#"
kind = "ttt-steps"
repeats = 2
n_transfer = [10]
corner = "property"
label = "{property}"
variant_header = "start"
[variant_labels]
zero_shot = "0-shot"
[cells]
source = ["m5"]
target = ["mp5"]
property = ["moisture", "oil"]
[[runs]]
name = "t"
[[columns]]
header = "0"
show = "steps:0"
ratio = true
[[columns]]
header = "20 steps"
show = "steps:20"
r2 = true
sd = true
mark_below_sbc = true
[[columns]]
header = "SBC"
show = "sbc"
decimals = 4
"#;

    /// E9-like results: per cell and start, RMSEP after 0 and 20 steps, and the classical rows.
    fn e9_results() -> Vec<CellResult> {
        let spec = Spec::parse(path(), E9).unwrap();
        let mut out = Vec::new();
        for (ci, c) in spec.cells().into_iter().enumerate() {
            let off = ci as f64 * 0.1;
            for (v, label, n, base) in [
                ("zero_shot", "0-shot (master)", 0, 0.4),
                ("few_shot", "few-shot (LoRA, N = 10)", 10, 0.3),
            ] {
                let cells = vec![
                    cell("ttt_0", n, &[(base + off, 0.1), (base + off, 0.3)]),
                    cell("ttt_20", n, &[(base - 0.1, 0.5), (base - 0.2, 0.6)]),
                    cell("recentre_test", 0, &[(0.25, 0.7), (0.25, 0.7)]),
                    cell("sbc", 10, &[(0.2 + off, 0.8), (0.2 + off, 0.8)]),
                ];
                out.push(CellResult {
                    variant: Some(v.into()),
                    variant_label: Some(label.into()),
                    ..result("t", c.clone(), cells)
                });
            }
        }
        out
    }

    #[test]
    fn variant_kinds_put_one_row_per_cell_and_variant() {
        let spec = Spec::parse(path(), E9).unwrap();
        let t = assemble(path(), &spec, &spec.cells(), &e9_results()).unwrap();
        // best = SBC (0.2 / 0.3: recentre_test is an N = 0 row); "<" below SBC.
        let want = "\
| property | start | 0 | 20 steps | SBC |
|---|---|---|---|---|
| moisture | 0-shot | 0.400 (2.00×) | 0.250 ± 0.071 (0.55) | 0.2000 |
| moisture | few-shot (LoRA, N = 10) | 0.300 (1.50×) | 0.150 ± 0.071 (<) (0.55) | 0.2000 |
| oil | 0-shot | 0.500 (1.67×) | 0.250 ± 0.071 (<) (0.55) | 0.3000 |
| oil | few-shot (LoRA, N = 10) | 0.400 (1.33×) | 0.150 ± 0.071 (<) (0.55) | 0.3000 |
";
        assert_eq!(t.markdown, want);
        // A step count the run did not record is an error naming the entry.
        let mut r = e9_results();
        r[3].cells.retain(|c| c.method != "ttt_20");
        let e = assemble(path(), &spec, &spec.cells(), &r)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("columns[1].show") && e.contains("20 TTT steps"),
            "{e}"
        );
        // The grid CSV names the variant.
        let csv = results_csv(&e9_results()[1..2]);
        assert!(
            csv.lines()
                .nth(1)
                .unwrap()
                .starts_with("t,few_shot,m5,mp5,moisture,ttt_0,10,0,0.3,"),
            "{csv}"
        );
        // An ablation's val_msrp column: 4 decimals, "–" without pretraining.
        let text = E9
            .replace("kind = \"ttt-steps\"", "kind = \"pretraining\"")
            .replace("[variant_labels]\nzero_shot = \"0-shot\"\n", "")
            .replace(
                "show = \"steps:0\"\nratio = true",
                "show = \"val_msrp\"\ndecimals = 4",
            )
            .replace("show = \"steps:20\"", "show = \"spektron_lora\"");
        let spec = Spec::parse(path(), &text).unwrap();
        let mut r = e9_results();
        for (i, x) in r.iter_mut().enumerate() {
            x.val_msrp = (i % 2 == 1).then_some(0.91234);
            x.cells[1].method = "spektron_lora".into();
        }
        let t = assemble(path(), &spec, &spec.cells(), &r).unwrap();
        assert_eq!(t.rows[0][2], "–");
        assert_eq!(t.rows[1][2], "0.9123");
        assert_eq!(t.rows[1][3], "0.150 ± 0.071 (<) (0.55)");
    }

    #[test]
    fn variant_kinds_refuse_items_and_settings_they_do_not_have() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "show = \"sbc\"",
                "show = \"spektron_lora\"",
                "columns[2].show",
            ),
            ("show = \"sbc\"", "show = \"pds\"", "columns[2].show"),
            ("show = \"sbc\"", "show = \"val_msrp\"", "columns[2].show"),
            ("show = \"sbc\"", "show = \"source_cv\"", "columns[2].show"),
            ("decimals = 4", "decimals = 4\ngate = true", "columns[2]"),
            ("n_transfer = [10]", "n_transfer = [10, 20]", "n_transfer"),
            ("corner = ", "layout = \"methods\"\ncorner = ", "layout"),
        ];
        for (from, to, field) in cases {
            assert!(E9.contains(from), "{from}");
            let e = Spec::parse(path(), &E9.replacen(from, to, 1))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("t/spec.toml: ") && e.contains(&format!("`{field}")),
                "{to}: {e}"
            );
        }
        // Ablations pretrain their own models: no checkpoint; their model arms are allowed.
        let ab = E9.replace("kind = \"ttt-steps\"", "kind = \"losses\"");
        let e = Spec::parse(
            path(),
            &ab.replace("name = \"t\"", "name = \"t\"\ncheckpoint = \"c\""),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("runs[0].checkpoint"), "{e}");
        let e = Spec::parse(path(), &ab).unwrap_err().to_string();
        assert!(
            e.contains("columns[0].show") && e.contains("steps:0"),
            "{e}"
        );
        Spec::parse(
            path(),
            &ab.replace("show = \"steps:0\"", "show = \"spektron_lora\"")
                .replace("show = \"steps:20\"", "show = \"spektron_no_transfer\""),
        )
        .unwrap();
        // A step count outside spektron.experiment.ttt_steps is refused before running.
        let spec = Spec::parse(path(), E9).unwrap();
        let t: toml::Table = include_str!("../../configs/spektron.toml").parse().unwrap();
        let mut ec: ExperimentConfig = t["spektron"]["experiment"].clone().try_into().unwrap();
        ec.ttt_steps = vec![0, 20];
        spec.check_runs(path(), &[&ec]).unwrap();
        ec.ttt_steps = vec![0, 5];
        let e = spec.check_runs(path(), &[&ec]).unwrap_err().to_string();
        assert!(
            e.contains("columns[1].show") && e.contains("20 in spektron.experiment.ttt_steps"),
            "{e}"
        );
    }

    #[test]
    fn the_checked_in_specs_parse_and_select_cells() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tables");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let s = Spec::load(&p).unwrap_or_else(|e| panic!("{e}"));
                let all = s.cells();
                let one = s.select_cells(&p, &[all[0].id()]).unwrap();
                assert_eq!(one, vec![all[0].clone()]);
                assert!(s.select_cells(&p, &["x:y:z".into()]).is_err());
                n += 1;
            }
        }
        assert!(n >= 11, "{n} specs");
    }
}
