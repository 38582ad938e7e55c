//! The spxquery photometry CSV and its quality control.
//!
//! Required columns: `flux`, `flux_error` (µJy), `wavelength`, `bandwidth` (µm, full width),
//! `band` ("D1".."D6" or 1..6), `flag` (integer bitmap). `snr` is optional (else
//! flux/flux_error). Other columns are ignored; `#` lines are comments. QC runs in spxquery's
//! order: bad flag bits, invalid values, SNR, per-band rolling median/MAD clip, band size.

use std::path::Path;

use serde::Serialize;

use super::{ClipMode, QcConfig};
use crate::error::SpxError;

/// One photometric measurement that survived QC.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub wavelength: f64,
    pub bandwidth: f64,
    pub flux: f64,
    pub flux_error: f64,
    /// Detector 1..=6.
    pub band: u8,
    /// 1-based data row in the CSV (after the header, comments excluded).
    pub row: usize,
}

/// A row as read, before QC.
#[derive(Clone, Debug)]
pub struct RawRow {
    pub obs: Observation,
    pub flag: u64,
    pub snr: f64,
}

/// Counts of rows removed by each QC step, for one band.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct BandQc {
    pub band: String,
    pub read: usize,
    pub bad_flag: usize,
    pub invalid: usize,
    pub low_snr: usize,
    pub clipped: usize,
    /// Points in the band after QC (0 when the band was skipped).
    pub kept: usize,
    /// Skipped for having fewer than `min_points_per_band` points.
    pub skipped: bool,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct QcReport {
    pub rows_read: usize,
    pub kept: usize,
    pub bands: Vec<BandQc>,
}

pub const BAND_NAMES: [&str; 6] = ["D1", "D2", "D3", "D4", "D5", "D6"];
const REQUIRED: [&str; 6] = [
    "flux",
    "flux_error",
    "wavelength",
    "bandwidth",
    "band",
    "flag",
];

fn parse_f64(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() {
        return Some(f64::NAN);
    }
    t.parse::<f64>().ok()
}

fn parse_band(s: &str) -> Option<u8> {
    let t = s.trim();
    let digits = t
        .strip_prefix('D')
        .or_else(|| t.strip_prefix('d'))
        .unwrap_or(t);
    match digits.parse::<f64>() {
        Ok(v) if v.fract() == 0.0 && (1.0..=6.0).contains(&v) => Some(v as u8),
        _ => None,
    }
}

fn parse_flag(s: &str) -> Option<u64> {
    let t = s.trim();
    if let Ok(v) = t.parse::<u64>() {
        return Some(v);
    }
    // Some writers store integer columns as floats ("2097152.0").
    match t.parse::<f64>() {
        Ok(v) if v.fract() == 0.0 && v >= 0.0 && v < 2f64.powi(63) => Some(v as u64),
        _ => None,
    }
}

/// Split one CSV line into fields (RFC 4180 quoting: `"a,b"` and `""` inside quotes).
pub fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (false, '"') if cur.trim().is_empty() => {
                cur.clear();
                quoted = true;
            }
            (false, ',') => fields.push(std::mem::take(&mut cur)),
            (_, c) => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    fields.push(cur);
    Ok(fields.into_iter().map(|f| f.trim().to_string()).collect())
}

/// Read every data row of a spxquery CSV. Errors name the file, the column and the line.
// The `csv` crate was the first choice, but adding it changed the feature set of `serde_core`
// for the whole dependency graph and forced a full rebuild of burn; this reader covers what
// spxquery writes (comments, header, quoted fields).
pub fn read_csv(path: &Path) -> Result<Vec<RawRow>, SpxError> {
    let text = std::fs::read_to_string(path).map_err(|e| SpxError::io(path, e))?;
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim_start().starts_with('#') && !l.trim().is_empty());
    let (hline, header) = lines
        .next()
        .ok_or_else(|| SpxError::file(path, "empty file: no CSV header"))?;
    let headers =
        split_csv_line(header).map_err(|e| SpxError::file(path, format!("line {hline}: {e}")))?;
    let find = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let mut cols = [0usize; 6];
    for (slot, name) in cols.iter_mut().zip(REQUIRED) {
        *slot = find(name).ok_or_else(|| {
            SpxError::field(
                path,
                name,
                format!(
                    "required column missing (header has: {})",
                    headers.join(", ")
                ),
            )
        })?;
    }
    let snr_col = find("snr");
    let mut rows = Vec::new();
    for (i, (line, text)) in lines.enumerate() {
        let rec =
            split_csv_line(text).map_err(|e| SpxError::file(path, format!("line {line}: {e}")))?;
        if rec.len() != headers.len() {
            return Err(SpxError::file(
                path,
                format!(
                    "line {line}: {} fields, header has {}",
                    rec.len(),
                    headers.len()
                ),
            ));
        }
        let get = |c: usize| rec.get(c).map(String::as_str).unwrap_or("");
        let num = |k: usize| {
            parse_f64(get(cols[k])).ok_or_else(|| {
                SpxError::field(
                    path,
                    REQUIRED[k],
                    format!("line {line}: `{}` is not a number", get(cols[k])),
                )
            })
        };
        let flux = num(0)?;
        let flux_error = num(1)?;
        let wavelength = num(2)?;
        let bandwidth = num(3)?;
        let band = parse_band(get(cols[4])).ok_or_else(|| {
            SpxError::field(
                path,
                "band",
                format!(
                    "line {line}: `{}` is not a band (D1..D6 or 1..6)",
                    get(cols[4])
                ),
            )
        })?;
        let flag = parse_flag(get(cols[5])).ok_or_else(|| {
            SpxError::field(
                path,
                "flag",
                format!(
                    "line {line}: `{}` is not a non-negative integer",
                    get(cols[5])
                ),
            )
        })?;
        let snr = match snr_col {
            Some(c) => parse_f64(get(c)).ok_or_else(|| {
                SpxError::field(
                    path,
                    "snr",
                    format!("line {line}: `{}` is not a number", get(c)),
                )
            })?,
            None if flux_error > 0.0 => flux / flux_error,
            None => 0.0,
        };
        rows.push(RawRow {
            obs: Observation {
                wavelength,
                bandwidth,
                flux,
                flux_error,
                band,
                row: i + 1,
            },
            flag,
            snr,
        });
    }
    if rows.is_empty() {
        return Err(SpxError::file(path, "no data rows"));
    }
    Ok(rows)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Robust centre and σ (1.4826·MAD) of `v`.
pub fn median_mad(v: &[f64]) -> (f64, f64) {
    let mut a = v.to_vec();
    let med = median(&mut a);
    let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
    (med, 1.4826 * median(&mut dev))
}

/// One pass of the rolling clip over fluxes sorted by wavelength: the signed outlier state of
/// every point (+1 high, −1 low, 0 inlier). Windows of `window` neighbours are shifted inward
/// at the ends; with fewer points than `window` the whole band is one window.
pub fn outliers(flux: &[f64], window: usize, nsigma: f64) -> Vec<i8> {
    let n = flux.len();
    let mut out = vec![0i8; n];
    if n < 3 {
        return out;
    }
    let w = window.min(n);
    let whole = n < window;
    let (gmed, gsig) = if whole { median_mad(flux) } else { (0.0, 0.0) };
    for i in 0..n {
        let (med, sig) = if whole {
            (gmed, gsig)
        } else {
            let lo = i.saturating_sub(w / 2).min(n - w);
            median_mad(&flux[lo..lo + w])
        };
        let d = flux[i] - med;
        if sig > 0.0 && d.abs() > nsigma * sig {
            out[i] = if d > 0.0 { 1 } else { -1 };
        }
    }
    out
}

/// Indices (into `flux`, sorted by wavelength `wl`, filter widths `bw`) removed by the iterated
/// clip. In `runs` mode a run of same-side outliers is kept as an emission line when it has at
/// least `clip_protect_run` points and at least `clip_protect_fraction` of the observations
/// centred within half a filter width of it: a line lifts every observation whose filter covers
/// it, while coincident glitches at deep-field density are 2 of the ~50 that see that wavelength.
pub fn clip_band(flux: &[f64], wl: &[f64], bw: &[f64], qc: &QcConfig) -> Vec<usize> {
    if qc.clip == ClipMode::Off {
        return Vec::new();
    }
    let mut alive: Vec<usize> = (0..flux.len()).collect();
    let mut removed = Vec::new();
    for _ in 0..qc.clip_max_iter {
        let f: Vec<f64> = alive.iter().map(|&i| flux[i]).collect();
        let w: Vec<f64> = alive.iter().map(|&i| wl[i]).collect();
        let state = outliers(&f, qc.clip_window, qc.clip_sigma);
        let mut drop = vec![false; f.len()];
        let mut k = 0;
        while k < f.len() {
            if state[k] == 0 {
                k += 1;
                continue;
            }
            // A run of neighbouring outliers on the same side.
            let mut e = k;
            while e + 1 < f.len() && state[e + 1] == state[k] {
                e += 1;
            }
            let run = e - k + 1;
            let protect = qc.clip == ClipMode::Runs && run >= qc.clip_protect_run.max(2) && {
                let half = 0.5 * alive[k..=e].iter().map(|&i| bw[i]).sum::<f64>() / run as f64;
                let c = 0.5 * (w[k] + w[e]);
                let seen =
                    w.partition_point(|&x| x <= c + half) - w.partition_point(|&x| x < c - half);
                run as f64 >= qc.clip_protect_fraction * seen as f64
            };
            if !protect {
                drop[k..=e].iter_mut().for_each(|d| *d = true);
            }
            k = e + 1;
        }
        if !drop.iter().any(|&d| d) {
            break;
        }
        let mut next = Vec::with_capacity(alive.len());
        for (j, &i) in alive.iter().enumerate() {
            if drop[j] {
                removed.push(i);
            } else {
                next.push(i);
            }
        }
        alive = next;
    }
    removed.sort_unstable();
    removed
}

/// Apply QC to rows read from `path` (named in errors). Returns the kept observations sorted by
/// wavelength and the per-band report. Empty results are errors naming the column responsible.
pub fn quality_control(
    path: &Path,
    rows: &[RawRow],
    qc: &QcConfig,
) -> Result<(Vec<Observation>, QcReport), SpxError> {
    let bad_mask: u64 = qc.bad_flag_bits.iter().fold(0, |m, &b| m | (1u64 << b));
    let mut report = QcReport {
        rows_read: rows.len(),
        kept: 0,
        bands: BAND_NAMES
            .iter()
            .map(|b| BandQc {
                band: b.to_string(),
                ..Default::default()
            })
            .collect(),
    };
    let mut kept = Vec::new();
    let (mut after_flag, mut after_valid, mut after_snr) = (0usize, 0usize, 0usize);
    for band in 1..=6u8 {
        let bq = &mut report.bands[band as usize - 1];
        let mut pts: Vec<&RawRow> = Vec::new();
        for r in rows.iter().filter(|r| r.obs.band == band) {
            bq.read += 1;
            let o = &r.obs;
            if r.flag & bad_mask != 0 {
                bq.bad_flag += 1;
                continue;
            }
            after_flag += 1;
            let finite = [o.flux, o.flux_error, o.wavelength, o.bandwidth]
                .iter()
                .all(|v| v.is_finite());
            if !finite || o.flux_error <= 0.0 || o.bandwidth <= 0.0 || o.wavelength <= 0.0 {
                bq.invalid += 1;
                continue;
            }
            after_valid += 1;
            if r.snr.is_nan() || r.snr < qc.snr_min {
                bq.low_snr += 1;
                continue;
            }
            after_snr += 1;
            pts.push(r);
        }
        pts.sort_by(|a, b| a.obs.wavelength.total_cmp(&b.obs.wavelength));
        let flux: Vec<f64> = pts.iter().map(|r| r.obs.flux).collect();
        let wl: Vec<f64> = pts.iter().map(|r| r.obs.wavelength).collect();
        let bw: Vec<f64> = pts.iter().map(|r| r.obs.bandwidth).collect();
        let removed = clip_band(&flux, &wl, &bw, qc);
        bq.clipped = removed.len();
        let survivors: Vec<Observation> = pts
            .iter()
            .enumerate()
            .filter(|(i, _)| removed.binary_search(i).is_err())
            .map(|(_, r)| r.obs.clone())
            .collect();
        if survivors.is_empty() {
            continue;
        }
        if survivors.len() < qc.min_points_per_band {
            bq.skipped = true;
            continue;
        }
        bq.kept = survivors.len();
        kept.extend(survivors);
    }
    let n = rows.len();
    if kept.is_empty() {
        let (field, msg) = if after_flag == 0 {
            (
                "flag",
                format!("all {n} rows have a bad flag bit ({:?})", qc.bad_flag_bits),
            )
        } else if after_valid == 0 {
            (
                "flux_error",
                "no row has finite values and flux_error > 0".to_string(),
            )
        } else if after_snr == 0 {
            (
                "snr",
                format!("no row reaches the SNR threshold {}", qc.snr_min),
            )
        } else {
            (
                "band",
                format!(
                    "no band keeps {} points after QC (min_points_per_band)",
                    qc.min_points_per_band
                ),
            )
        };
        return Err(SpxError::field(
            path,
            field,
            format!("no observations left after quality control: {msg}"),
        ));
    }
    kept.sort_by(|a, b| a.wavelength.total_cmp(&b.wavelength));
    report.kept = kept.len();
    Ok((kept, report))
}

/// Read and QC a photometry CSV.
pub fn load(path: &Path, qc: &QcConfig) -> Result<(Vec<Observation>, QcReport), SpxError> {
    let rows = read_csv(path)?;
    quality_control(path, &rows, qc)
}
