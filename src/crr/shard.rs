//! Cluster use: `--shard K/N` builds the K-th (1-based) of N contiguous wavelength blocks into
//! a part file; `merge` joins the N parts into the cube. Part files are written atomically and
//! carry DATASUM/CHECKSUM on every HDU: an existing part with the right input fingerprint and
//! valid checksums is complete and a rerun skips it; a truncated or bit-flipped part is
//! rebuilt by `build` and refused by `merge`.

use std::path::{Path, PathBuf};

use ndarray::{Array3, Axis, Ix3};

use super::checksum::{verify_checksums, write_fits_checksummed};
use super::cube::{BandSlice, Builder, Part};
use super::quality::Correl;
use super::rss::Rss;
use super::{BANDS, CrrConfig};
use crate::error::SpxError;
use crate::io::fits::{Card, FitsReader};

/// `--shard K/N` of a job array (parsed by [`crate::shard::JobShard`]); CRR gives shard K
/// the K-th of N contiguous wavelength blocks.
pub use crate::shard::JobShard as Shard;

impl Shard {
    /// Slice range [start, end) of this shard among `nwave` slices.
    pub fn range(&self, nwave: usize) -> (usize, usize) {
        ((self.k - 1) * nwave / self.n, self.k * nwave / self.n)
    }

    pub fn part_path(&self, dir: &Path, stem: &str) -> PathBuf {
        dir.join(format!("{stem}.part-{}-of-{}.fits", self.k, self.n))
    }
}

/// FNV-1a 64 of a string, hex: fingerprint of (input, settings) stored in every part.
pub fn fingerprint(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn int_list(v: &[usize]) -> String {
    v.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_list(path: &Path, key: &str, text: &str) -> Result<Vec<usize>, SpxError> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim().parse().map_err(|_| {
                SpxError::field(path, format!("PRIMARY:{key}"), "not a list of integers")
            })
        })
        .collect()
}

pub fn write_part(path: &Path, part: &Part, shard: Shard, fp: &str) -> Result<(), SpxError> {
    write_fits_checksummed(path, |w| {
        w.primary_card("SPXPART", 1)?;
        w.primary_card("SHARDK", shard.k as i64)?;
        w.primary_card("SHARDN", shard.n as i64)?;
        w.primary_card("ISTART", part.start as i64)?;
        w.primary_card("INHASH", fp)?;
        w.primary_card("FAILED", int_list(&part.failed))?;
        w.primary_card("EMPTY", int_list(&part.empty))?;
        w.primary_card("REUSEERR", part.reuse_max_error)?;
        w.primary_card("REUSEFB", part.reuse_fallbacks as i64)?;
        w.image_f32("FLUX", &part.flux.clone().into_dyn(), &[])?;
        w.image_f32("IVAR", &part.ivar.clone().into_dyn(), &[])?;
        w.image_i32("MASK", &part.mask.clone().into_dyn(), &[])?;
        if let Some((a, b)) = &part.lsf {
            w.image_f32("LSFPOST", &a.clone().into_dyn(), &[])?;
            w.image_f32("LSFPRE", &b.clone().into_dyn(), &[])?;
        }
        for b in &part.bands {
            let name = BANDS[b.band].0;
            w.image_f64(
                &format!("{name}PSF"),
                &b.psf.clone().into_dyn(),
                &[("BBINDEX", Card::Int(b.index as i64))],
            )?;
            w.table(&format!("{name}CORREL"), &b.correl.columns(), &[])?;
        }
        Ok(())
    })
}

/// The fingerprint and shard recorded in a part file, or `None` if it is not a part (checksums
/// not verified).
pub fn part_header(path: &Path) -> Option<(String, Shard)> {
    let mut f = FitsReader::open(path).ok()?;
    let fp = f.card_str("PRIMARY", "INHASH").ok()?;
    let k = f.card_i64("PRIMARY", "SHARDK").ok()? as usize;
    let n = f.card_i64("PRIMARY", "SHARDN").ok()? as usize;
    Some((fp, Shard { k, n }))
}

pub fn read_part(path: &Path) -> Result<Part, SpxError> {
    let mut f = FitsReader::open(path)?;
    let start = f.card_i64("PRIMARY", "ISTART")? as usize;
    let i3 = |a: ndarray::ArrayD<f32>, n: &str| -> Result<Array3<f32>, SpxError> {
        a.into_dimensionality::<Ix3>()
            .map_err(|_| SpxError::field(path, n, "expected a 3-D image"))
    };
    let flux = i3(f.image_f32("FLUX")?, "FLUX")?;
    let ivar = i3(f.image_f32("IVAR")?, "IVAR")?;
    let mask = f
        .image_i32("MASK")?
        .into_dimensionality::<Ix3>()
        .map_err(|_| SpxError::field(path, "MASK", "expected a 3-D image"))?;
    let lsf = if f.has_hdu("LSFPOST") {
        Some((
            i3(f.image_f32("LSFPOST")?, "LSFPOST")?,
            i3(f.image_f32("LSFPRE")?, "LSFPRE")?,
        ))
    } else {
        None
    };
    let mut bands = Vec::new();
    for (b, (name, _)) in BANDS.iter().enumerate() {
        let Some((psf, index)) = super::logcube::read_band_psf(&mut f, path, name)? else {
            continue;
        };
        let index = usize::try_from(index)
            .map_err(|_| SpxError::field(path, format!("{name}PSF.BBINDEX"), "negative"))?;
        let correl = Correl::read(&mut f, &format!("{name}CORREL"))?;
        bands.push(BandSlice {
            band: b,
            index,
            psf,
            correl,
        });
    }
    let failed = parse_list(path, "FAILED", &f.card_str("PRIMARY", "FAILED")?)?;
    let empty = parse_list(path, "EMPTY", &f.card_str("PRIMARY", "EMPTY")?)?;
    let reuse_max_error = f.card_f64("PRIMARY", "REUSEERR")?;
    let reuse_fallbacks = f.card_i64("PRIMARY", "REUSEFB")?.max(0) as usize;
    Ok(Part {
        start,
        flux,
        ivar,
        mask,
        lsf,
        bands,
        failed,
        empty,
        reuse_max_error,
        reuse_fallbacks,
    })
}

/// Fingerprint of an input RSS and the reconstruction settings (simulation settings excluded):
/// parts are only merged, or skipped on resume, when it matches.
pub fn input_fingerprint(rss: &Rss, cfg: &CrrConfig) -> String {
    let size = std::fs::metadata(&rss.path).map(|m| m.len()).unwrap_or(0);
    let wsum: f64 = rss.wave.iter().sum();
    let fsum: f64 = rss
        .flux
        .iter()
        .map(|&v| v as f64)
        .filter(|v| v.is_finite())
        .sum();
    fingerprint(&format!(
        "{size}|{}|{}|{}|{wsum:e}|{fsum:e}|{}",
        rss.nrow(),
        rss.nwave(),
        rss.nexp,
        cfg.reconstruction_toml()
    ))
}

/// Result of building one shard.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ShardOutcome {
    pub path: PathBuf,
    pub skipped: bool,
    pub slices: (usize, usize),
    /// Slices taken from checkpoints of an interrupted run.
    pub resumed_slices: usize,
}

/// Build shard `shard` into `dir`, unless a complete part with the same fingerprint is there.
/// With `crr.checkpoint_slices > 0` (and no weight reuse) the shard is built in blocks of that
/// many slices, each written as a checksummed checkpoint next to the part; a rerun after a kill
/// reuses every valid checkpoint and builds only the rest. The blocks are joined into the part
/// (bit-identical to building the range in one go: slices are independent without reuse) and
/// the checkpoints removed.
pub fn build_shard(
    b: &Builder<'_>,
    shard: Shard,
    dir: &Path,
    stem: &str,
    pb: &indicatif::ProgressBar,
) -> Result<ShardOutcome, SpxError> {
    let fp = input_fingerprint(b.rss, &b.cfg);
    let path = shard.part_path(dir, stem);
    let (start, end) = shard.range(b.nwave());
    if let Some((old, s)) = part_header(&path) {
        match verify_checksums(&path) {
            Ok(()) if old == fp && s == shard => {
                return Ok(ShardOutcome {
                    path,
                    skipped: true,
                    slices: (start, end),
                    resumed_slices: 0,
                });
            }
            Ok(()) => tracing::warn!(
                "{}: stale part (different input or settings), rebuilding",
                path.display()
            ),
            Err(e) => tracing::warn!("{e}; rebuilding"),
        }
    }
    let block = b.cfg.checkpoint_slices;
    let (part, resumed_slices, checkpoints) = if block == 0 || b.cfg.reuse_tolerance > 0.0 {
        (b.build_range(start, end, pb), 0, Vec::new())
    } else {
        build_blocks(b, shard, &path, &fp, (start, end), block, pb)?
    };
    write_part(&path, &part, shard, &fp)?;
    for c in checkpoints {
        // The part is complete and checksummed; a leftover checkpoint only costs disk.
        let _ = std::fs::remove_file(&c);
    }
    Ok(ShardOutcome {
        path,
        skipped: false,
        slices: (start, end),
        resumed_slices,
    })
}

/// Checkpoint file of block `j` (0-based) of `m` inside a part.
fn checkpoint_path(part: &Path, j: usize, m: usize) -> PathBuf {
    let stem = part.file_stem().unwrap_or_default().to_string_lossy();
    part.with_file_name(format!("{stem}.ckpt-{}-of-{m}.fits", j + 1))
}

/// Build `[start, end)` block by block, reusing valid checkpoints; returns the joined part, the
/// number of slices taken from checkpoints and the checkpoint paths.
fn build_blocks(
    b: &Builder<'_>,
    shard: Shard,
    part_path: &Path,
    fp: &str,
    (start, end): (usize, usize),
    block: usize,
    pb: &indicatif::ProgressBar,
) -> Result<(Part, usize, Vec<PathBuf>), SpxError> {
    let m = (end - start).div_ceil(block);
    // A checkpoint belongs to this input, settings, shard and block size.
    let cfp = fingerprint(&format!("{fp}|{}/{}|{block}", shard.k, shard.n));
    let mut parts = Vec::with_capacity(m);
    let mut paths = Vec::with_capacity(m);
    let mut resumed = 0;
    for j in 0..m {
        let (s0, s1) = (start + j * block, (start + (j + 1) * block).min(end));
        let cpath = checkpoint_path(part_path, j, m);
        let cshard = Shard { k: j + 1, n: m };
        let valid = matches!(part_header(&cpath), Some((h, s)) if h == cfp && s == cshard)
            && verify_checksums(&cpath).is_ok();
        let part = match valid.then(|| read_part(&cpath)) {
            Some(Ok(p)) if p.start == s0 && p.flux.dim().0 == s1 - s0 => {
                resumed += s1 - s0;
                pb.inc((s1 - s0) as u64);
                p
            }
            _ => {
                let p = b.build_range(s0, s1, pb);
                write_part(&cpath, &p, cshard, &cfp)?;
                p
            }
        };
        parts.push(part);
        paths.push(cpath);
    }
    if resumed > 0 {
        tracing::info!(
            "{}: resumed {resumed} of {} slices from checkpoints",
            part_path.display(),
            end - start
        );
    }
    let part = join_span(parts, start, end).map_err(|m| SpxError::file(part_path, m))?;
    Ok((part, resumed, paths))
}

/// Read the N parts from `dir`, check they belong to this input and settings, and join them.
pub fn collect_parts(b: &Builder<'_>, n: usize, dir: &Path, stem: &str) -> Result<Part, SpxError> {
    let fp = input_fingerprint(b.rss, &b.cfg);
    let mut missing = Vec::new();
    let mut parts = Vec::new();
    for k in 1..=n {
        let s = Shard { k, n };
        let path = s.part_path(dir, stem);
        match part_header(&path) {
            None => missing.push(k),
            Some((old, hs)) => {
                if old != fp || hs != s {
                    return Err(SpxError::file(
                        &path,
                        "part was built from a different input or with different settings; rebuild it",
                    ));
                }
                verify_checksums(&path)?;
                parts.push(read_part(&path)?);
            }
        }
    }
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|k| format!("{k}/{n}")).collect();
        return Err(SpxError::file(
            dir,
            format!(
                "missing shard parts {} (expected {})",
                list.join(", "),
                Shard { k: missing[0], n }.part_path(dir, stem).display()
            ),
        ));
    }
    join_parts(parts, b.nwave()).map_err(|m| SpxError::file(dir, m))
}

/// Assemble parts covering every slice (in any order) into one.
pub fn join_parts(parts: Vec<Part>, nwave: usize) -> Result<Part, String> {
    join_span(parts, 0, nwave)
}

/// Assemble parts covering exactly the slices `[start, end)` (in any order) into one.
pub fn join_span(mut parts: Vec<Part>, start: usize, end: usize) -> Result<Part, String> {
    parts.sort_by_key(|p| p.start);
    let mut next = start;
    for p in &parts {
        if p.start != next {
            return Err(format!("slices {next}..{} are missing", p.start));
        }
        next += p.flux.dim().0;
    }
    if next != end {
        return Err(format!(
            "parts cover slices {start}..{next}, not {start}..{end}"
        ));
    }
    let cat3 = |f: &dyn Fn(&Part) -> ndarray::ArrayView3<'_, f32>| {
        let views: Vec<_> = parts.iter().map(f).collect();
        ndarray::concatenate(Axis(0), &views).map_err(|e| format!("parts do not fit: {e}"))
    };
    let flux = cat3(&|p| p.flux.view())?;
    let ivar = cat3(&|p| p.ivar.view())?;
    let mviews: Vec<_> = parts.iter().map(|p| p.mask.view()).collect();
    let mask =
        ndarray::concatenate(Axis(0), &mviews).map_err(|e| format!("parts do not fit: {e}"))?;
    let lsf = match parts
        .iter()
        .map(|p| p.lsf.as_ref())
        .collect::<Option<Vec<_>>>()
    {
        Some(l) => {
            let a: Vec<_> = l.iter().map(|x| x.0.view()).collect();
            let b: Vec<_> = l.iter().map(|x| x.1.view()).collect();
            Some((
                ndarray::concatenate(Axis(0), &a).map_err(|e| format!("LSFPOST: {e}"))?,
                ndarray::concatenate(Axis(0), &b).map_err(|e| format!("LSFPRE: {e}"))?,
            ))
        }
        None => None,
    };
    let mut bands: Vec<BandSlice> = parts.iter().flat_map(|p| p.bands.clone()).collect();
    bands.sort_by_key(|b| b.band);
    Ok(Part {
        start,
        flux,
        ivar,
        mask,
        lsf,
        bands,
        failed: parts.iter().flat_map(|p| p.failed.clone()).collect(),
        empty: parts.iter().flat_map(|p| p.empty.clone()).collect(),
        reuse_max_error: parts.iter().map(|p| p.reuse_max_error).fold(0.0, f64::max),
        reuse_fallbacks: parts.iter().map(|p| p.reuse_fallbacks).sum(),
    })
}
