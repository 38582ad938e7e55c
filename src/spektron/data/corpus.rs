//! The pre-training corpus: every input spectrum sorted by x (duplicates averaged), linearly
//! resampled to `target_points` over its own range, SNV-normalised, and appended to HDF5 in
//! chunk-sized blocks, so a corpus larger than memory streams through.
//!
//! Layout (h5py-readable): `/spectra` (N, P) f32, `/modality` (N,) i8 (IR 0, RAMAN 1, NIR 2,
//! FTIR 3, UNKNOWN 4), `/source_id` (N,) i16 (index into `/sources`), `/file_index` (N,) i32
//! (index into `/files`), `/original_range` (N, 2) f64 (x min, x max), `/original_points` (N,)
//! i32, `/sources`, `/files`, `/modality_names` (strings); root attributes `corpus_size`,
//! `target_points`, `normalization = "snv"`, `rejected_flat`, `rejected_nan`,
//! `rejected_short`, `files_failed`, `format = "spektron-corpus-v1"`.

use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use ndarray::{Array2, ArrayView1};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Modality, Spectrum, read_spectra};
use crate::error::SpxError;
use crate::io::hdf5::{AppendRows, AppendVec, H5Reader, H5Writer, write_h5};

/// `[spektron.corpus]`: resampling and HDF5 layout of the pre-training corpus.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorpusConfig {
    pub target_points: usize,
    pub min_std: f64,
    pub chunk_rows: usize,
    pub deflate: u8,
    pub default_modality: Modality,
}

/// Why a spectrum was not written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// NaN or infinite values.
    NonFinite,
    /// Fewer than two distinct x values.
    Short,
    /// Standard deviation below `min_std` after resampling.
    Flat,
}

/// Sort by x, average duplicate x, resample linearly to `points` over [x_min, x_max], SNV.
pub fn prepare(x: &[f64], y: &[f64], points: usize, min_std: f64) -> Result<Vec<f32>, Reject> {
    let out = resample(x, y, points)?;
    let mean = out.iter().sum::<f64>() / points as f64;
    let std = (out.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / points as f64).sqrt();
    if std.is_nan() || std < min_std {
        return Err(Reject::Flat);
    }
    Ok(out.iter().map(|v| ((v - mean) / std) as f32).collect())
}

/// Sort by x, average duplicate x, resample linearly to `points` over [x_min, x_max] (the first
/// step of [`prepare`], without SNV).
pub fn resample(x: &[f64], y: &[f64], points: usize) -> Result<Vec<f64>, Reject> {
    if x.len() != y.len() || x.iter().chain(y).any(|v| !v.is_finite()) {
        return Err(Reject::NonFinite);
    }
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let (mut xs, mut ys): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let mut count = 0.0;
    for &i in &idx {
        if xs.last() == Some(&x[i]) {
            let last = ys.last_mut().expect("paired");
            *last = (*last * count + y[i]) / (count + 1.0);
            count += 1.0;
        } else {
            xs.push(x[i]);
            ys.push(y[i]);
            count = 1.0;
        }
    }
    if xs.len() < 2 || points < 2 {
        return Err(Reject::Short);
    }
    let (lo, hi) = (xs[0], xs[xs.len() - 1]);
    let mut out = Vec::with_capacity(points);
    let mut k = 0;
    for i in 0..points {
        let t = lo + (hi - lo) * i as f64 / (points - 1) as f64;
        while k + 2 < xs.len() && xs[k + 1] < t {
            k += 1;
        }
        let (x0, x1) = (xs[k], xs[k + 1]);
        let f = ((t - x0) / (x1 - x0)).clamp(0.0, 1.0);
        out.push(ys[k] + f * (ys[k + 1] - ys[k]));
    }
    Ok(out)
}

/// Rejected spectra listed by name in a report (all are counted and logged).
pub const MAX_LISTED: usize = 1000;

/// Counts reported after a build.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CorpusReport {
    pub spectra: usize,
    pub files_read: usize,
    pub files_failed: Vec<(String, String)>,
    pub rejected_flat: usize,
    pub rejected_nan: usize,
    pub rejected_short: usize,
    /// (file, spectrum name, reason) of the first [`MAX_LISTED`] rejected spectra.
    pub rejected: Vec<(String, String, String)>,
    /// Spectra per modality code 0..=4.
    pub per_modality: [usize; 5],
}

/// Streams spectra into an open HDF5 file.
pub struct CorpusWriter {
    points: usize,
    min_std: f64,
    block: usize,
    buf: Vec<f32>,
    meta: Vec<(i8, i16, i32, f64, f64, i32)>,
    spectra: AppendRows<f32>,
    modality: AppendVec<i8>,
    source: AppendVec<i16>,
    file_index: AppendVec<i32>,
    range: AppendRows<f64>,
    npts: AppendVec<i32>,
    pub report: CorpusReport,
}

impl CorpusWriter {
    pub fn new(w: &H5Writer, cfg: &CorpusConfig) -> Result<Self, SpxError> {
        let block = cfg.chunk_rows.max(1);
        let deflate = (cfg.deflate > 0).then_some(cfg.deflate.min(9));
        Ok(CorpusWriter {
            points: cfg.target_points,
            min_std: cfg.min_std,
            block,
            buf: Vec::with_capacity(block * cfg.target_points),
            meta: Vec::with_capacity(block),
            spectra: w.appendable::<f32>("spectra", cfg.target_points, block, deflate)?,
            modality: w.appendable_1d::<i8>("modality", block * 16, deflate)?,
            source: w.appendable_1d::<i16>("source_id", block * 16, deflate)?,
            file_index: w.appendable_1d::<i32>("file_index", block * 16, deflate)?,
            range: w.appendable::<f64>("original_range", 2, block * 16, deflate)?,
            npts: w.appendable_1d::<i32>("original_points", block * 16, deflate)?,
            report: CorpusReport::default(),
        })
    }

    /// Prepare and queue one spectrum; returns the rejection reason if it was not kept.
    pub fn push(
        &mut self,
        s: &Spectrum,
        source: i16,
        file: i32,
    ) -> Result<Option<Reject>, SpxError> {
        let prepared = prepare(&s.x, &s.y, self.points, self.min_std);
        self.push_prepared(s, prepared, source, file)
    }

    /// Queue a spectrum already passed through [`prepare`] (lets callers prepare in parallel).
    pub fn push_prepared(
        &mut self,
        s: &Spectrum,
        prepared: Result<Vec<f32>, Reject>,
        source: i16,
        file: i32,
    ) -> Result<Option<Reject>, SpxError> {
        match prepared {
            Err(r) => {
                match r {
                    Reject::Flat => self.report.rejected_flat += 1,
                    Reject::NonFinite => self.report.rejected_nan += 1,
                    Reject::Short => self.report.rejected_short += 1,
                }
                Ok(Some(r))
            }
            Ok(v) => {
                self.buf.extend_from_slice(&v);
                let (lo, hi) =
                    s.x.iter()
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                            (a.min(x), b.max(x))
                        });
                self.meta
                    .push((s.modality.code(), source, file, lo, hi, s.x.len() as i32));
                self.report.spectra += 1;
                self.report.per_modality[s.modality as usize] += 1;
                if self.meta.len() >= self.block {
                    self.flush()?;
                }
                Ok(None)
            }
        }
    }

    fn flush(&mut self) -> Result<(), SpxError> {
        let n = self.meta.len();
        if n == 0 {
            return Ok(());
        }
        let block = Array2::from_shape_vec((n, self.points), std::mem::take(&mut self.buf))
            .expect("buffer holds n rows");
        self.spectra.append(block.view())?;
        let m: Vec<i8> = self.meta.iter().map(|m| m.0).collect();
        self.modality.append(&m)?;
        let s: Vec<i16> = self.meta.iter().map(|m| m.1).collect();
        self.source.append(&s)?;
        let f: Vec<i32> = self.meta.iter().map(|m| m.2).collect();
        self.file_index.append(&f)?;
        let r = Array2::from_shape_fn((n, 2), |(i, j)| {
            if j == 0 {
                self.meta[i].3
            } else {
                self.meta[i].4
            }
        });
        self.range.append(r.view())?;
        let p: Vec<i32> = self.meta.iter().map(|m| m.5).collect();
        self.npts.append(&p)?;
        self.meta.clear();
        self.buf = Vec::with_capacity(self.block * self.points);
        Ok(())
    }

    /// Flush the last block and write the name tables and attributes.
    pub fn finish(
        mut self,
        w: &H5Writer,
        sources: &[String],
        files: &[String],
    ) -> Result<CorpusReport, SpxError> {
        self.flush()?;
        w.strings("sources", sources)?;
        w.strings("files", files)?;
        let names: Vec<String> = Modality::ALL.iter().map(|m| m.name().to_string()).collect();
        w.strings("modality_names", &names)?;
        let r = &self.report;
        w.attr_str("/", "format", "spektron-corpus-v1")?;
        w.attr_i64("/", "corpus_size", r.spectra as i64)?;
        w.attr_i64("/", "target_points", self.points as i64)?;
        w.attr_str("/", "normalization", "snv")?;
        w.attr_str("/", "resampling", "linear over each spectrum's own x range")?;
        w.attr_str("/", "modality_codes", "IR=0 RAMAN=1 NIR=2 FTIR=3 UNKNOWN=4")?;
        w.attr_i64("/", "rejected_flat", r.rejected_flat as i64)?;
        w.attr_i64("/", "rejected_nan", r.rejected_nan as i64)?;
        w.attr_i64("/", "rejected_short", r.rejected_short as i64)?;
        w.attr_i64("/", "files_failed", r.files_failed.len() as i64)?;
        Ok(self.report)
    }
}

/// Spectrum files under `dir` (recursive, sorted so builds are reproducible).
pub fn walk(dir: &Path) -> Result<Vec<PathBuf>, SpxError> {
    walk_listing(dir).map(|(files, _)| files)
}

/// [`walk`] plus what was passed over and why: symbolic links to directories are not followed
/// (a link to `.` or to an ancestor would repeat files or never end), directories already seen
/// (same device and inode) are not entered twice, and anything that is not a regular file
/// (FIFO, socket, device, dangling link) is skipped instead of opened, since reading a FIFO
/// blocks forever.
/// Files to read, and (path, reason) of each entry passed over.
pub type Listing = (Vec<PathBuf>, Vec<(PathBuf, &'static str)>);

pub fn walk_listing(dir: &Path) -> Result<Listing, SpxError> {
    let meta = std::fs::metadata(dir).map_err(|e| SpxError::io(dir, e))?;
    if meta.is_file() {
        return Ok((vec![dir.to_path_buf()], Vec::new()));
    }
    if !meta.is_dir() {
        return Err(SpxError::file(
            dir,
            "not a regular file or directory (FIFO, socket or device?)",
        ));
    }
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Some(id) = dir_id(&d)
            && !seen.insert(id)
        {
            skipped.push((d, "directory already walked"));
            continue;
        }
        let rd = std::fs::read_dir(&d).map_err(|e| SpxError::io(&d, e))?;
        for e in rd {
            let e = e.map_err(|e| SpxError::io(&d, e))?;
            let p = e.path();
            let ft = e.file_type().map_err(|err| SpxError::io(&p, err))?;
            if ft.is_dir() {
                stack.push(p);
                continue;
            }
            let spectrum_file = super::FileKind::of(&p).is_some();
            if ft.is_symlink() {
                match std::fs::metadata(&p) {
                    Ok(m) if m.is_dir() => {
                        skipped.push((p, "symbolic link to a directory (not followed)"))
                    }
                    Ok(m) if m.is_file() && spectrum_file => out.push(p),
                    Ok(m) if m.is_file() => {}
                    Ok(_) if spectrum_file => {
                        skipped.push((p, "link to something that is not a regular file"))
                    }
                    Err(_) if spectrum_file => skipped.push((p, "dangling symbolic link")),
                    _ => {}
                }
            } else if !spectrum_file {
                continue;
            } else if ft.is_file() {
                out.push(p);
            } else {
                skipped.push((p, "not a regular file (FIFO, socket or device)"));
            }
        }
    }
    out.sort();
    skipped.sort();
    Ok((out, skipped))
}

#[cfg(unix)]
fn dir_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn dir_id(_p: &Path) -> Option<(u64, u64)> {
    None
}

/// Build a corpus from input directories (or files): input i becomes source_id i. Files that
/// fail to parse are counted and listed in the report with their error, never dropped silently.
pub fn build(
    inputs: &[PathBuf],
    out: &Path,
    cfg: &CorpusConfig,
    pb: &ProgressBar,
) -> Result<CorpusReport, SpxError> {
    if inputs.len() > i16::MAX as usize {
        return Err(SpxError::Config(
            "too many input sources (max 32767)".into(),
        ));
    }
    let mut lists = Vec::new();
    let mut passed_over = Vec::new();
    for d in inputs {
        let (files, skipped) = walk_listing(d)?;
        for (p, why) in &skipped {
            tracing::info!("skipping {}: {why}", p.display());
        }
        passed_over.extend(skipped);
        lists.push(files);
    }
    pb.set_length(lists.iter().map(Vec::len).sum::<usize>() as u64);
    type Parsed = Result<Vec<(Spectrum, Result<Vec<f32>, Reject>)>, SpxError>;
    write_h5(out, |w| {
        let mut cw = CorpusWriter::new(w, cfg)?;
        cw.report.files_failed.extend(
            passed_over
                .iter()
                .map(|(p, why)| (p.display().to_string(), why.to_string())),
        );
        let mut files = Vec::new();
        for (src, list) in lists.iter().enumerate() {
            // Parse and resample a batch in parallel, write it in file order: only one batch
            // is in memory and the output does not depend on the thread count.
            for batch in list.chunks(cfg.chunk_rows.max(64)) {
                let parsed: Vec<Parsed> = batch
                    .par_iter()
                    .map(|path| {
                        read_spectra(path, cfg.default_modality).map(|v| {
                            v.into_iter()
                                .map(|s| {
                                    let p = prepare(&s.x, &s.y, cfg.target_points, cfg.min_std);
                                    (s, p)
                                })
                                .collect()
                        })
                    })
                    .collect();
                for (path, res) in batch.iter().zip(parsed) {
                    pb.inc(1);
                    let fi = files.len() as i32;
                    files.push(path.display().to_string());
                    match res {
                        Ok(spectra) => {
                            cw.report.files_read += 1;
                            for (s, p) in spectra {
                                if let Some(r) = cw.push_prepared(&s, p, src as i16, fi)? {
                                    let why = match r {
                                        Reject::NonFinite => "NaN or infinite values",
                                        Reject::Flat => "flat (std below min_std)",
                                        Reject::Short => "fewer than 2 distinct x values",
                                    };
                                    // Listed in the report; info, so a failing run's first
                                    // stderr line is its error.
                                    tracing::info!(
                                        "{}: spectrum `{}` rejected: {why}",
                                        path.display(),
                                        s.name
                                    );
                                    if cw.report.rejected.len() < MAX_LISTED {
                                        cw.report.rejected.push((
                                            path.display().to_string(),
                                            s.name.clone(),
                                            why.to_string(),
                                        ));
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            tracing::info!("skipping {}: {e}", path.display());
                            cw.report
                                .files_failed
                                .push((path.display().to_string(), e.to_string()));
                        }
                    }
                }
            }
        }
        let sources: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        cw.finish(w, &sources, &files)
    })
}

/// Summary of a corpus file.
#[derive(Clone, Debug, Serialize)]
pub struct CorpusInfo {
    pub path: String,
    pub spectra: usize,
    pub points: usize,
    pub per_modality: Vec<(String, usize)>,
    pub sources: Vec<(String, usize)>,
    pub files: usize,
    pub normalization: String,
    pub rejected_flat: i64,
    pub rejected_nan: i64,
    pub rejected_short: i64,
    pub files_failed: i64,
    pub x_min: f64,
    pub x_max: f64,
    pub chunk: Option<Vec<usize>>,
    pub compressed: bool,
}

pub fn info(path: &Path) -> Result<CorpusInfo, SpxError> {
    let r = H5Reader::open(path)?;
    let shape = r.shape("spectra")?;
    if shape.len() != 2 {
        return Err(SpxError::field(path, "spectra", "expected a 2-D dataset"));
    }
    let m = r.read::<i8>("modality")?;
    let mut per = [0usize; 5];
    for &c in m.iter() {
        per[Modality::from_code(c).unwrap_or(Modality::Unknown) as usize] += 1;
    }
    let src_names = r.strings("sources")?;
    let sid = r.read::<i16>("source_id")?;
    let mut per_src = vec![0usize; src_names.len()];
    for &s in sid.iter() {
        if let Some(c) = per_src.get_mut(s as usize) {
            *c += 1;
        }
    }
    let range = r.read::<f64>("original_range")?;
    let col = |j: usize| -> Vec<f64> { range.outer_iter().map(|row| row[j]).collect() };
    let x_min = col(0).into_iter().fold(f64::INFINITY, f64::min);
    let x_max = col(1).into_iter().fold(f64::NEG_INFINITY, f64::max);
    Ok(CorpusInfo {
        path: path.display().to_string(),
        spectra: shape[0],
        points: shape[1],
        per_modality: Modality::ALL
            .iter()
            .map(|m| (m.name().to_string(), per[*m as usize]))
            .collect(),
        sources: src_names.into_iter().zip(per_src).collect(),
        files: r.strings("files")?.len(),
        normalization: r.attr_str("/", "normalization")?,
        rejected_flat: r.attr_i64("/", "rejected_flat")?,
        rejected_nan: r.attr_i64("/", "rejected_nan")?,
        rejected_short: r.attr_i64("/", "rejected_short")?,
        files_failed: r.attr_i64("/", "files_failed")?,
        x_min,
        x_max,
        chunk: r.chunk("spectra")?,
        compressed: r.is_deflated("spectra")?,
    })
}

/// Mean and population std of a row (SNV check helper).
pub fn mean_std(v: ArrayView1<f32>) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let s = (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n).sqrt();
    (m, s)
}
