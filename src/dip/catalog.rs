//! Catalog mode of `spx dip recon`: many sources in one run, fitted in batches
//! ([`super::batch`]), written to one HDF5 file; `--shard K/N` splits a catalog over a SLURM
//! array and [`merge`] joins the shard files.
//!
//! Sources come from several CSVs (one source each, named by the file stem), a directory of
//! CSVs, or a CSV with a `source_id` column (one source per id). Source i of the catalog (in
//! that order) belongs to shard `i mod N + 1`. Every source uses the run's seed (ensemble member
//! k: seed + k), so its spectrum is the one `spx dip recon` of that source alone gives.
//!
//! Restarts: each finished source (or its failure) is saved at once as
//! `catalog-parts/<key>.h5` under `--out` (a one-row catalog file), keyed by a hash of its rows and of the settings
//! (the batch size excluded: it does not change a result); a rerun loads those and fits only
//! the rest, so a killed shard resumes and ends with the same numbers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::DipConfig;
use super::batch::{Job, batch_size, fit_batch};
use super::forward::{Operator, chi2};
use super::grid::linspace;
use super::input::{self, Observation, QcReport, RawRow};
use super::output::{self, PlotInput};
use super::tikhonov;
use super::train::Problem;
use crate::backend::DeviceSpec;
use crate::error::SpxError;
use crate::io::atomic::ensure_dir;
use crate::io::hdf5::{H5Reader, Layout, write_h5};
use crate::logging::Progress;

/// One source of a catalog, as read.
#[derive(Clone, Debug)]
pub struct SourceInput {
    pub id: String,
    /// The file it came from.
    pub input: PathBuf,
    pub rows: Vec<RawRow>,
}

/// Sources from `inputs` (CSV files and directories of `*.csv`, in the order given; a
/// directory's files sorted by name; symlinks to directories and non-regular files skipped).
/// A CSV with a `source_id` column gives one source per id, in order of first appearance.
pub fn collect_sources(inputs: &[PathBuf]) -> Result<Vec<SourceInput>, SpxError> {
    let mut files = Vec::new();
    for p in inputs {
        let meta = std::fs::metadata(p).map_err(|e| SpxError::io(p, e))?;
        if meta.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| SpxError::io(p, e))?
                .filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_type().is_ok_and(|t| t.is_file())
                        && e.path()
                            .extension()
                            .is_some_and(|x| x.eq_ignore_ascii_case("csv"))
                })
                .map(|e| e.path())
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(SpxError::file(p, "directory holds no *.csv file"));
            }
            files.extend(v);
        } else {
            files.push(p.clone());
        }
    }
    let mut out: Vec<SourceInput> = Vec::new();
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for f in files {
        let (rows, ids) = input::read_csv_with_ids(&f)?;
        let mut add = |id: String, rows: Vec<RawRow>| -> Result<(), SpxError> {
            if let Some(prev) = seen.insert(id.clone(), f.clone()) {
                return Err(SpxError::field(
                    &f,
                    "source_id",
                    format!("source `{id}` also in {}", prev.display()),
                ));
            }
            out.push(SourceInput {
                id,
                input: f.clone(),
                rows,
            });
            Ok(())
        };
        match ids {
            None => {
                let id = f
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| f.display().to_string());
                add(id, rows)?;
            }
            Some(ids) => {
                let mut order: Vec<String> = Vec::new();
                let mut groups: BTreeMap<String, Vec<RawRow>> = BTreeMap::new();
                for (id, r) in ids.into_iter().zip(rows) {
                    let g = groups.entry(id.clone()).or_default();
                    if g.is_empty() {
                        order.push(id);
                    }
                    g.push(r);
                }
                for id in order {
                    let rows = groups.remove(&id).unwrap_or_default();
                    add(id, rows)?;
                }
            }
        }
    }
    Ok(out)
}

/// `K/N` (1 ≤ K ≤ N) as (K, N) ([`crate::shard::JobShard`]).
pub fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    s.parse::<crate::shard::JobShard>().map(|j| (j.k, j.n))
}

/// What a catalog run needs besides the sources.
#[derive(Clone, Debug)]
pub struct CatalogSettings {
    pub dip: DipConfig,
    pub device: DeviceSpec,
    pub seed: u64,
    /// (K, N): this run fits sources i with i mod N = K − 1.
    pub shard: Option<(usize, usize)>,
    /// Write `plots/<id>.png` per source.
    pub plots: bool,
    pub out: PathBuf,
}

/// The result of one source (one row of the HDF5 summary table).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SourceResult {
    /// Position in the whole catalog.
    pub index: usize,
    pub id: String,
    pub input: String,
    /// Hash of the rows and settings (hex).
    pub key: String,
    /// Why the source failed (QC, operator, Tikhonov, non-finite fit); `None` = fitted.
    pub error: Option<String>,
    pub rows_read: usize,
    pub observations_used: usize,
    pub dropped_off_grid: usize,
    pub qc_bad_flag: usize,
    pub qc_invalid: usize,
    pub qc_low_snr: usize,
    pub qc_clipped: usize,
    pub qc_bands_skipped: usize,
    pub chi2_per_obs: Option<f64>,
    pub baseline_chi2_per_obs: Option<f64>,
    /// Epochs run, summed over ensemble members.
    pub epochs: usize,
    /// Stop reason of each member, comma-separated.
    pub stop_reason: String,
    /// Restores after a jump of the loss (`dip.train.restore_jump`), summed over members.
    pub restores: usize,
    /// Seconds from the start of the source's batch to its end (DIP), plus its QC and baseline.
    pub seconds: f64,
    pub flux: Vec<f64>,
    pub flux_std: Option<Vec<f64>>,
    pub baseline_flux: Vec<f64>,
}

/// What a catalog run did.
#[derive(Clone, Debug, Serialize)]
pub struct CatalogReport {
    pub file: PathBuf,
    pub sources: usize,
    pub fitted: usize,
    pub failed: Vec<(String, String)>,
    /// Sources loaded from `catalog-parts/` of an earlier, interrupted run.
    pub resumed: usize,
    pub batch_sources: usize,
    pub seconds: f64,
    pub plots: Vec<PathBuf>,
}

/// 64-bit FNV-1a: a stable content hash (the same on every machine and build).
pub(super) struct Fnv(pub(super) u64);

impl Fnv {
    pub(super) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(super) fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn f64(&mut self, v: f64) {
        self.bytes(&v.to_bits().to_le_bytes());
    }
}

/// Hash of everything that changes a source's result except its rows: the `[dip]` settings
/// (less `batch_sources`), the seed and the device.
pub fn settings_key(dip: &DipConfig, seed: u64, device: &DeviceSpec) -> String {
    let mut d = dip.clone();
    d.batch_sources = 0;
    let text = toml::to_string(&d).unwrap_or_default();
    let mut h = Fnv::new();
    h.bytes(text.as_bytes());
    h.bytes(&seed.to_le_bytes());
    h.bytes(device.to_string().as_bytes());
    format!("{:016x}", h.0)
}

fn source_key(rows: &[RawRow], settings: &str) -> String {
    let mut h = Fnv::new();
    h.bytes(settings.as_bytes());
    for r in rows {
        let o = &r.obs;
        for v in [o.wavelength, o.bandwidth, o.flux, o.flux_error, r.snr] {
            h.f64(v);
        }
        h.bytes(&[o.band]);
        h.bytes(&r.flag.to_le_bytes());
    }
    format!("{:016x}", h.0)
}

/// A source ready to fit.
struct Prepared {
    obs: Vec<Observation>,
    op: Operator,
    y: Vec<f64>,
    sigma: Vec<f64>,
    baseline: Vec<f64>,
    baseline_chi2: f64,
    qc: QcReport,
    dropped: usize,
    seconds: f64,
}

fn prepare(dc: &DipConfig, src: &SourceInput, grid: &[f64]) -> Result<Prepared, String> {
    let t0 = Instant::now();
    let (obs, qc) =
        input::quality_control(&src.input, &src.rows, &dc.qc).map_err(|e| e.to_string())?;
    let super::recon::OnGrid {
        op,
        obs,
        y,
        sigma,
        dropped,
    } = super::recon::on_grid(dc, grid, &obs).map_err(|m| format!("wavelength: {m}"))?;
    let base = tikhonov::solve(
        &op,
        &y,
        &sigma,
        &dc.tikhonov,
        dc.weighting,
        dc.epsilon_weight,
    )
    .ok_or_else(|| tikhonov::FAILED.to_string())?;
    Ok(Prepared {
        obs,
        op,
        y,
        sigma,
        baseline_chi2: base.chi2_per_obs,
        baseline: base.spectrum,
        qc,
        dropped,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn failed(index: usize, src: &SourceInput, key: String, error: String) -> SourceResult {
    SourceResult {
        index,
        id: src.id.clone(),
        input: src.input.display().to_string(),
        key,
        error: Some(error),
        rows_read: src.rows.len(),
        observations_used: 0,
        dropped_off_grid: 0,
        qc_bad_flag: 0,
        qc_invalid: 0,
        qc_low_snr: 0,
        qc_clipped: 0,
        qc_bands_skipped: 0,
        chi2_per_obs: None,
        baseline_chi2_per_obs: None,
        epochs: 0,
        stop_reason: String::new(),
        restores: 0,
        seconds: 0.0,
        flux: Vec::new(),
        flux_std: None,
        baseline_flux: Vec::new(),
    }
}

/// The output file of a run: `catalog.h5`, or `catalog-shard-K-of-N.h5`.
pub fn output_name(shard: Option<(usize, usize)>) -> String {
    match shard {
        None => "catalog.h5".to_string(),
        Some((k, n)) => format!("catalog-shard-{k}-of-{n}.h5"),
    }
}

/// A source name usable as a file name (no separators, no `..`).
fn file_safe(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "_".into() } else { s }
}

/// Fit this run's share of `sources` and write the HDF5 file (and plots on request).
pub fn run(
    s: &CatalogSettings,
    sources: &[SourceInput],
    progress: Progress,
) -> Result<CatalogReport, SpxError> {
    let t0 = Instant::now();
    let dc = &s.dip;
    dc.validate()?;
    let device = s.device.autodiff_device()?;
    let grid = linspace(dc.wavelength_min, dc.wavelength_max, dc.resolution);
    let skey = settings_key(dc, s.seed, &s.device);
    let parts = s.out.join("catalog-parts");
    ensure_dir(&parts)?;
    let (k, nsh) = s.shard.unwrap_or((1, 1));
    let mine: Vec<usize> = (0..sources.len()).filter(|i| i % nsh == k - 1).collect();
    let bs = batch_size(dc, &s.device).max(1);

    let mut results: BTreeMap<usize, SourceResult> = BTreeMap::new();
    let mut pending = Vec::new();
    let mut resumed = 0;
    for &i in &mine {
        let key = source_key(&sources[i].rows, &skey);
        let part = parts.join(format!("{key}.h5"));
        let loaded = part
            .is_file()
            .then(|| read_catalog(&part).ok())
            .flatten()
            .filter(|(g, _, m)| *g == grid && m.settings_key == skey)
            .and_then(|(_, mut rows, _)| rows.pop())
            .filter(|r| r.key == key && r.id == sources[i].id);
        match loaded {
            Some(mut r) => {
                r.index = i;
                results.insert(i, r);
                resumed += 1;
            }
            None => pending.push((i, key)),
        }
    }
    // A part is a one-row catalog file: binary, so a resumed source has exactly its bits.
    let members = dc.ensemble.max(1);
    let part_meta = Meta {
        settings_key: skey.clone(),
        shard: 1,
        n_shards: 1,
        n_sources: 1,
        seed: s.seed,
        ensemble: members,
    };
    let save = |r: &SourceResult| -> Result<(), SpxError> {
        let p = parts.join(format!("{}.h5", r.key));
        write_catalog(&p, &grid, std::slice::from_ref(r), &part_meta)
    };

    let pb = progress.bar(pending.len() as u64, "sources");
    let per_batch = (bs / members).max(1);
    let mut it = pending.into_iter().peekable();
    while it.peek().is_some() {
        // The next `per_batch` sources that pass QC.
        let mut group: Vec<(usize, String, Prepared)> = Vec::new();
        while group.len() < per_batch {
            let Some((i, key)) = it.next() else { break };
            match prepare(dc, &sources[i], &grid) {
                Ok(p) => group.push((i, key, p)),
                Err(e) => {
                    let r = failed(i, &sources[i], key, e);
                    save(&r)?;
                    results.insert(i, r);
                    pb.inc(1);
                }
            }
        }
        if group.is_empty() {
            continue;
        }
        let problems: Vec<Problem> = group
            .iter()
            .map(|(_, _, p)| Problem {
                op: &p.op,
                y: &p.y,
                sigma: &p.sigma,
            })
            .collect();
        let jobs: Vec<Job> = problems
            .iter()
            .flat_map(|p| {
                (0..members).map(move |m| Job {
                    problem: p.clone(),
                    seed: s.seed + m as u64,
                })
            })
            .collect();
        let fits = fit_batch(dc, &jobs, &device, &indicatif::ProgressBar::hidden());
        for ((i, key, p), fs) in group.iter().zip(fits.chunks(members)) {
            let src = &sources[*i];
            let n = grid.len();
            let kf = fs.len() as f64;
            let mean: Vec<f64> = (0..n)
                .map(|j| fs.iter().map(|f| f.spectrum[j]).sum::<f64>() / kf)
                .collect();
            let std = (fs.len() > 1).then(|| {
                (0..n)
                    .map(|j| {
                        (fs.iter()
                            .map(|f| (f.spectrum[j] - mean[j]).powi(2))
                            .sum::<f64>()
                            / (kf - 1.0))
                            .sqrt()
                    })
                    .collect::<Vec<f64>>()
            });
            let m = p.y.len() as f64;
            let band = |f: fn(&input::BandQc) -> usize| p.qc.bands.iter().map(f).sum::<usize>();
            let mut r = SourceResult {
                index: *i,
                id: src.id.clone(),
                input: src.input.display().to_string(),
                key: key.clone(),
                error: None,
                rows_read: p.qc.rows_read,
                observations_used: p.y.len(),
                dropped_off_grid: p.dropped,
                qc_bad_flag: band(|b| b.bad_flag),
                qc_invalid: band(|b| b.invalid),
                qc_low_snr: band(|b| b.low_snr),
                qc_clipped: band(|b| b.clipped),
                qc_bands_skipped: p.qc.bands.iter().filter(|b| b.skipped).count(),
                chi2_per_obs: Some(chi2(&p.op, &mean, &p.y, &p.sigma) / m),
                baseline_chi2_per_obs: Some(p.baseline_chi2),
                epochs: fs.iter().map(|f| f.epochs_run).sum(),
                restores: fs.iter().map(|f| f.restores.len()).sum(),
                stop_reason: fs
                    .iter()
                    .map(|f| {
                        serde_json::to_value(f.stop_reason)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                seconds: p.seconds + fs.iter().map(|f| f.seconds).fold(0.0, f64::max),
                flux: mean,
                flux_std: std,
                baseline_flux: p.baseline.clone(),
            };
            if r.flux.iter().any(|v| !v.is_finite()) {
                r = failed(*i, src, key.clone(), "non-finite spectrum".into());
            }
            save(&r)?;
            results.insert(*i, r);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();

    let results: Vec<SourceResult> = results.into_values().collect();
    let file = s.out.join(output_name(s.shard));
    let meta = Meta {
        settings_key: skey.clone(),
        shard: k,
        n_shards: nsh,
        n_sources: sources.len(),
        seed: s.seed,
        ensemble: members,
    };
    write_catalog(&file, &grid, &results, &meta)?;
    let mut plots = Vec::new();
    if s.plots {
        let dir = s.out.join("plots");
        ensure_dir(&dir)?;
        for r in results.iter().filter(|r| r.error.is_none()) {
            let Some(p) = sources
                .get(r.index)
                .and_then(|src| prepare(dc, src, &grid).ok())
            else {
                continue;
            };
            let path = dir.join(format!("{}.png", file_safe(&r.id)));
            let model = p.op.apply(&r.flux);
            output::plot_spectrum(
                &path,
                &PlotInput {
                    title: format!(
                        "spx dip recon {} (dip, χ²/M = {:.2})",
                        r.id,
                        r.chi2_per_obs.unwrap_or(f64::NAN)
                    ),
                    grid: &grid,
                    obs: &p.obs,
                    model_obs: &model,
                    clipped: &[],
                    model_clipped: &[],
                    flux: &r.flux,
                    std: r.flux_std.as_deref(),
                    baseline: Some(&r.baseline_flux),
                    truth_smoothed: None,
                },
            )?;
            plots.push(path);
        }
    }
    let failed: Vec<(String, String)> = results
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| (r.id.clone(), e.clone())))
        .collect();
    Ok(CatalogReport {
        file,
        sources: results.len(),
        fitted: results.len() - failed.len(),
        failed,
        resumed,
        batch_sources: bs,
        seconds: t0.elapsed().as_secs_f64(),
        plots,
    })
}

/// File-level attributes of a catalog file.
#[derive(Clone, Debug, PartialEq)]
pub struct Meta {
    pub settings_key: String,
    pub shard: usize,
    pub n_shards: usize,
    /// Sources in the whole catalog (all shards).
    pub n_sources: usize,
    pub seed: u64,
    pub ensemble: usize,
}

/// Write `results` (in catalog order) as an HDF5 catalog file.
pub fn write_catalog(
    path: &Path,
    grid: &[f64],
    results: &[SourceResult],
    meta: &Meta,
) -> Result<(), SpxError> {
    let n = grid.len();
    let s = results.len();
    let rows = |f: &dyn Fn(&SourceResult) -> Option<&Vec<f64>>| {
        let mut v = Vec::with_capacity(s * n);
        for r in results {
            match f(r) {
                Some(x) if x.len() == n => v.extend_from_slice(x),
                _ => v.extend(std::iter::repeat_n(f64::NAN, n)),
            }
        }
        Array2::from_shape_vec((s, n), v).map_err(|e| SpxError::file(path, e.to_string()))
    };
    let layout = if s == 0 {
        Layout::contiguous()
    } else {
        Layout::chunked_gzip(&[1, n], 4)
    };
    let flux = rows(&|r| Some(&r.flux))?;
    let base = rows(&|r| Some(&r.baseline_flux))?;
    let std = (meta.ensemble > 1)
        .then(|| rows(&|r| r.flux_std.as_ref()))
        .transpose()?;
    let u = |f: &dyn Fn(&SourceResult) -> usize| {
        Array1::from_iter(results.iter().map(|r| f(r) as u64)).into_dyn()
    };
    let fl = |f: &dyn Fn(&SourceResult) -> f64| Array1::from_iter(results.iter().map(f)).into_dyn();
    let st = |f: &dyn Fn(&SourceResult) -> String| results.iter().map(f).collect::<Vec<_>>();
    write_h5(path, |w| {
        w.dataset(
            "wavelength",
            Array1::from_vec(grid.to_vec()).into_dyn().view(),
            &Layout::contiguous(),
        )?;
        w.dataset("flux", flux.view().into_dyn(), &layout)?;
        w.dataset("baseline_flux", base.view().into_dyn(), &layout)?;
        if let Some(sd) = &std {
            w.dataset("flux_std", sd.view().into_dyn(), &layout)?;
        }
        let c = Layout::contiguous();
        w.dataset("sources/index", u(&|r| r.index).view(), &c)?;
        w.strings("sources/id", &st(&|r| r.id.clone()))?;
        w.strings("sources/input", &st(&|r| r.input.clone()))?;
        w.strings("sources/key", &st(&|r| r.key.clone()))?;
        w.strings(
            "sources/status",
            &st(&|r| (if r.error.is_some() { "failed" } else { "ok" }).to_string()),
        )?;
        w.strings(
            "sources/error",
            &st(&|r| r.error.clone().unwrap_or_default()),
        )?;
        w.dataset("sources/rows_read", u(&|r| r.rows_read).view(), &c)?;
        w.dataset(
            "sources/observations_used",
            u(&|r| r.observations_used).view(),
            &c,
        )?;
        w.dataset(
            "sources/dropped_off_grid",
            u(&|r| r.dropped_off_grid).view(),
            &c,
        )?;
        w.dataset("sources/qc_bad_flag", u(&|r| r.qc_bad_flag).view(), &c)?;
        w.dataset("sources/qc_invalid", u(&|r| r.qc_invalid).view(), &c)?;
        w.dataset("sources/qc_low_snr", u(&|r| r.qc_low_snr).view(), &c)?;
        w.dataset("sources/qc_clipped", u(&|r| r.qc_clipped).view(), &c)?;
        w.dataset(
            "sources/qc_bands_skipped",
            u(&|r| r.qc_bands_skipped).view(),
            &c,
        )?;
        w.dataset(
            "sources/chi2_per_obs",
            fl(&|r| r.chi2_per_obs.unwrap_or(f64::NAN)).view(),
            &c,
        )?;
        w.dataset(
            "sources/baseline_chi2_per_obs",
            fl(&|r| r.baseline_chi2_per_obs.unwrap_or(f64::NAN)).view(),
            &c,
        )?;
        w.dataset("sources/epochs", u(&|r| r.epochs).view(), &c)?;
        w.dataset("sources/restores", u(&|r| r.restores).view(), &c)?;
        w.strings("sources/stop_reason", &st(&|r| r.stop_reason.clone()))?;
        w.dataset("sources/seconds", fl(&|r| r.seconds).view(), &c)?;
        w.attr_str("/", "settings_key", &meta.settings_key)?;
        w.attr_i64("/", "shard", meta.shard as i64)?;
        w.attr_i64("/", "n_shards", meta.n_shards as i64)?;
        w.attr_i64("/", "n_sources", meta.n_sources as i64)?;
        w.attr_i64("/", "seed", meta.seed as i64)?;
        w.attr_i64("/", "ensemble", meta.ensemble as i64)?;
        w.attr_str("/", "spx_version", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    })
}

/// Read a catalog file back: grid, rows, attributes.
pub fn read_catalog(path: &Path) -> Result<(Vec<f64>, Vec<SourceResult>, Meta), SpxError> {
    let r = H5Reader::open(path)?;
    let grid: Vec<f64> = r.read::<f64>("wavelength")?.into_iter().collect();
    let n = grid.len();
    let meta = Meta {
        settings_key: r.attr_str("/", "settings_key")?,
        shard: r.attr_i64("/", "shard")?.max(0) as usize,
        n_shards: r.attr_i64("/", "n_shards")?.max(0) as usize,
        n_sources: r.attr_i64("/", "n_sources")?.max(0) as usize,
        seed: r.attr_i64("/", "seed")? as u64,
        ensemble: r.attr_i64("/", "ensemble")?.max(1) as usize,
    };
    let u = |name: &str| -> Result<Vec<usize>, SpxError> {
        Ok(r.read::<u64>(name)?
            .into_iter()
            .map(|v| v as usize)
            .collect())
    };
    let f = |name: &str| -> Result<Vec<f64>, SpxError> {
        Ok(r.read::<f64>(name)?.into_iter().collect())
    };
    let index = u("sources/index")?;
    let s = index.len();
    let mat = |name: &str| -> Result<Vec<f64>, SpxError> {
        let v = f(name)?;
        if v.len() != s * n {
            return Err(SpxError::field(
                path,
                name,
                format!("expected {s}×{n} values"),
            ));
        }
        Ok(v)
    };
    let (flux, base) = (mat("flux")?, mat("baseline_flux")?);
    let std = if r.contains("flux_std") {
        Some(mat("flux_std")?)
    } else {
        None
    };
    let (ids, inputs, keys, errors, stops) = (
        r.strings("sources/id")?,
        r.strings("sources/input")?,
        r.strings("sources/key")?,
        r.strings("sources/error")?,
        r.strings("sources/stop_reason")?,
    );
    let (rr, ou, dg, bf, iv, ls, cl, bs, ep) = (
        u("sources/rows_read")?,
        u("sources/observations_used")?,
        u("sources/dropped_off_grid")?,
        u("sources/qc_bad_flag")?,
        u("sources/qc_invalid")?,
        u("sources/qc_low_snr")?,
        u("sources/qc_clipped")?,
        u("sources/qc_bands_skipped")?,
        u("sources/epochs")?,
    );
    // Files written before restores were counted have no column: none took place.
    let restores = if r.contains("sources/restores") {
        u("sources/restores")?
    } else {
        vec![0; s]
    };
    let (c2, bc2, secs) = (
        f("sources/chi2_per_obs")?,
        f("sources/baseline_chi2_per_obs")?,
        f("sources/seconds")?,
    );
    for (name, len) in [
        ("sources/id", ids.len()),
        ("sources/error", errors.len()),
        ("sources/seconds", secs.len()),
        ("sources/epochs", ep.len()),
    ] {
        if len != s {
            return Err(SpxError::field(
                path,
                name,
                format!("{len} rows, index has {s}"),
            ));
        }
    }
    let opt = |v: f64| v.is_finite().then_some(v);
    let rows = (0..s)
        .map(|i| {
            let failed = !errors[i].is_empty();
            let row = |m: &[f64]| {
                if failed {
                    Vec::new()
                } else {
                    m[i * n..(i + 1) * n].to_vec()
                }
            };
            SourceResult {
                index: index[i],
                id: ids[i].clone(),
                input: inputs.get(i).cloned().unwrap_or_default(),
                key: keys.get(i).cloned().unwrap_or_default(),
                error: failed.then(|| errors[i].clone()),
                rows_read: rr.get(i).copied().unwrap_or(0),
                observations_used: ou.get(i).copied().unwrap_or(0),
                dropped_off_grid: dg.get(i).copied().unwrap_or(0),
                qc_bad_flag: bf.get(i).copied().unwrap_or(0),
                qc_invalid: iv.get(i).copied().unwrap_or(0),
                qc_low_snr: ls.get(i).copied().unwrap_or(0),
                qc_clipped: cl.get(i).copied().unwrap_or(0),
                qc_bands_skipped: bs.get(i).copied().unwrap_or(0),
                chi2_per_obs: c2.get(i).copied().and_then(opt),
                baseline_chi2_per_obs: bc2.get(i).copied().and_then(opt),
                epochs: ep[i],
                stop_reason: stops.get(i).cloned().unwrap_or_default(),
                restores: restores.get(i).copied().unwrap_or(0),
                seconds: secs[i],
                flux: row(flux.as_slice()),
                flux_std: std.as_ref().filter(|_| !failed).map(|m| row(m.as_slice())),
                baseline_flux: row(base.as_slice()),
            }
        })
        .collect();
    Ok((grid, rows, meta))
}

/// Join shard files of one catalog into `out` (rows in catalog order). All files must share
/// the grid and the settings, and together hold every shard of the catalog exactly once.
pub fn merge(files: &[PathBuf], out: &Path) -> Result<usize, SpxError> {
    let first = files
        .first()
        .ok_or_else(|| SpxError::Config("dip merge: no shard files given".into()))?;
    let mut all: BTreeMap<usize, SourceResult> = BTreeMap::new();
    let mut grid0: Option<Vec<f64>> = None;
    let mut meta0: Option<Meta> = None;
    let mut shards = std::collections::BTreeSet::new();
    for f in files {
        if f == out {
            return Err(SpxError::file(f, "is also the merge output"));
        }
        let (grid, rows, meta) = read_catalog(f)?;
        if let Some(g) = &grid0
            && *g != grid
        {
            return Err(SpxError::field(
                f,
                "wavelength",
                format!("differs from {}", first.display()),
            ));
        }
        if let Some(m0) = &meta0
            && (m0.settings_key != meta.settings_key
                || m0.n_shards != meta.n_shards
                || m0.n_sources != meta.n_sources
                || m0.ensemble != meta.ensemble)
        {
            return Err(SpxError::field(
                f,
                "settings_key",
                format!("another catalog or other settings than {}", first.display()),
            ));
        }
        if !shards.insert(meta.shard) {
            return Err(SpxError::field(
                f,
                "shard",
                format!("shard {} given twice", meta.shard),
            ));
        }
        for r in rows {
            let i = r.index;
            if all.insert(i, r).is_some() {
                return Err(SpxError::field(
                    f,
                    "sources/index",
                    format!("source {i} twice"),
                ));
            }
        }
        grid0.get_or_insert(grid);
        meta0.get_or_insert(meta);
    }
    let (Some(grid), Some(meta)) = (grid0, meta0) else {
        return Err(SpxError::Config("dip merge: no shard files given".into()));
    };
    if shards.len() != meta.n_shards {
        let missing: Vec<String> = (1..=meta.n_shards)
            .filter(|k| !shards.contains(k))
            .map(|k| k.to_string())
            .collect();
        return Err(SpxError::field(
            first,
            "shard",
            format!(
                "missing shard(s) {} of {}",
                missing.join(", "),
                meta.n_shards
            ),
        ));
    }
    let rows: Vec<SourceResult> = all.into_values().collect();
    let merged = Meta {
        shard: 1,
        n_shards: 1,
        ..meta
    };
    write_catalog(out, &grid, &rows, &merged)?;
    Ok(rows.len())
}
