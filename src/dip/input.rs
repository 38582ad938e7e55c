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
    /// The observations the rolling clip removed (drawn on the plot).
    #[serde(skip)]
    pub clipped_rows: Vec<Observation>,
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

/// A CSV read by the `csv` crate: the header and the data records, each with its 1-based line
/// number in the file. Blank lines and `#` comment lines are skipped (they keep their line
/// numbers), a UTF-8 byte-order mark before the header is stripped, fields are trimmed, quoting
/// is RFC 4180, and a header naming a column twice is refused (the column is named).
#[derive(Clone, Debug)]
pub struct CsvTable {
    pub headers: csv::StringRecord,
    pub records: Vec<(usize, csv::StringRecord)>,
}

impl CsvTable {
    /// Index of the column `name` (exact, or ASCII case-insensitive when `fold`).
    pub fn column(&self, name: &str, fold: bool) -> Option<usize> {
        self.headers.iter().position(|h| {
            if fold {
                h.eq_ignore_ascii_case(name)
            } else {
                h == name
            }
        })
    }
}

/// Read `path` as a [`CsvTable`] (see there); `fold` compares header names case-insensitively
/// when looking for duplicates.
pub fn read_table(path: &Path, fold: bool) -> Result<CsvTable, SpxError> {
    let bytes = std::fs::read(path).map_err(|e| SpxError::io(path, e))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let text = std::str::from_utf8(bytes)
        .map_err(|e| SpxError::file(path, format!("not UTF-8 text: {e}")))?;
    // Comment and blank lines become empty lines, which the reader skips, so that every record's
    // position is still its line in the file.
    let mut kept = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        if body.trim().is_empty() || body.trim_start().starts_with('#') {
            kept.push('\n');
        } else {
            kept.push_str(line);
        }
    }
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(kept.as_bytes());
    let mut it = rd.records();
    let line_of = |r: &csv::StringRecord| r.position().map_or(0, |p| p.line() as usize);
    let csv_err = |e: csv::Error| {
        let at = e
            .position()
            .map(|p| format!("line {}: ", p.line()))
            .unwrap_or_default();
        SpxError::file(path, format!("{at}{e}"))
    };
    let headers = match it.next() {
        None => return Err(SpxError::file(path, "empty file: no CSV header")),
        Some(h) => h.map_err(csv_err)?,
    };
    let hline = line_of(&headers);
    let key = |h: &str| {
        if fold {
            h.to_ascii_lowercase()
        } else {
            h.to_string()
        }
    };
    let mut seen = std::collections::HashMap::with_capacity(headers.len());
    for (k, h) in headers.iter().enumerate() {
        if let Some(first) = seen.insert(key(h), k) {
            return Err(SpxError::field(
                path,
                format!("column `{h}`"),
                format!(
                    "line {hline}: appears twice in the header (columns {} and {})",
                    first + 1,
                    k + 1
                ),
            ));
        }
    }
    let mut records = Vec::new();
    for r in it {
        let r = r.map_err(csv_err)?;
        let line = line_of(&r);
        if r.len() != headers.len() {
            return Err(SpxError::file(
                path,
                format!(
                    "line {line}: {} fields, header has {}",
                    r.len(),
                    headers.len()
                ),
            ));
        }
        records.push((line, r));
    }
    Ok(CsvTable { headers, records })
}

/// Read every data row of a spxquery CSV. Errors name the file, the column and the line.
pub fn read_csv(path: &Path) -> Result<Vec<RawRow>, SpxError> {
    read_csv_with_ids(path).map(|(rows, _)| rows)
}

/// [`read_csv`], plus the `source_id` column of a catalog CSV (many sources in one file) when
/// the file has one.
pub fn read_csv_with_ids(path: &Path) -> Result<(Vec<RawRow>, Option<Vec<String>>), SpxError> {
    let table = read_table(path, true)?;
    let find = |name: &str| table.column(name, true);
    let mut cols = [0usize; 6];
    for (slot, name) in cols.iter_mut().zip(REQUIRED) {
        *slot = find(name).ok_or_else(|| {
            SpxError::field(
                path,
                name,
                format!(
                    "required column missing (header has: {})",
                    table.headers.iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
    }
    let snr_col = find("snr");
    let id_col = find("source_id");
    let mut ids = Vec::new();
    let mut rows = Vec::new();
    for (i, (line, rec)) in table.records.iter().enumerate() {
        let get = |c: usize| rec.get(c).unwrap_or("");
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
        if let Some(c) = id_col {
            let id = get(c);
            if id.is_empty() {
                return Err(SpxError::field(
                    path,
                    "source_id",
                    format!("line {line}: empty source id"),
                ));
            }
            ids.push(id.to_string());
        }
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
    Ok((rows, id_col.map(|_| ids)))
}

/// Median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
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
    let z = deviations(flux, &vec![1.0; flux.len()], window, 0.0);
    z.iter()
        .map(|&v| {
            if v > nsigma {
                1
            } else if v < -nsigma {
                -1
            } else {
                0
            }
        })
        .collect()
}

/// Robust normalised deviation of every point from its rolling window: with d_j = (y_j −
/// median(y))/σ_j over the window, z_i = (d_i − median(d))/(1.4826·MAD(d)). Dividing by each
/// point's own σ first keeps heteroscedastic errors from reading as outliers (a 10 %-error point
/// among 2 %-error ones); the MAD absorbs real structure inside the window. The robust scale is
/// at least `floor`: with trusted errors (`floor` = 1) a window cannot scatter less than its
/// errors say, so the ±25 % sampling noise of a 21-point MAD does not clip good points. 0 where
/// the window has no spread.
pub fn deviations(flux: &[f64], sigma: &[f64], window: usize, floor: f64) -> Vec<f64> {
    let n = flux.len();
    let mut out = vec![0.0; n];
    if n < 3 {
        return out;
    }
    let w = window.min(n);
    let whole = n < window;
    let stats = |lo: usize, hi: usize| {
        let (med, _) = median_mad(&flux[lo..hi]);
        let d: Vec<f64> = (lo..hi).map(|j| (flux[j] - med) / sigma[j]).collect();
        let (md, sd) = median_mad(&d);
        (med, md, sd.max(floor))
    };
    let global = whole.then(|| stats(0, n));
    for i in 0..n {
        let (med, md, sd) = global.unwrap_or_else(|| {
            let lo = i.saturating_sub(w / 2).min(n - w);
            stats(lo, lo + w)
        });
        if sd > 0.0 {
            out[i] = ((flux[i] - med) / sigma[i] - md) / sd;
        }
    }
    out
}

/// Complementary error function (Numerical Recipes `erfcc`, relative error < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The two-sided Gaussian threshold k with n·P(|z| > k) = `expected` (bisection).
pub fn gaussian_threshold(n: usize, expected: f64) -> f64 {
    if n == 0 || expected <= 0.0 {
        return 0.0;
    }
    let p = (expected / n as f64).min(1.0);
    let (mut lo, mut hi) = (0.0f64, 40.0f64);
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if erfc(mid / std::f64::consts::SQRT_2) > p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Indices (into `flux`, sorted by wavelength `wl`, errors `sigma`, filter widths `bw`) removed
/// by the iterated clip. A point is an outlier when its [`deviations`] exceed `clip_sigma`, or
/// the Gaussian threshold at which a band of this size loses `clip_false_positives` good points
/// on average, whichever is larger. In `runs` mode a run of same-side outliers is kept as an
/// emission line when the observations centred within one filter width of it that deviate to
/// the same side by more than `clip_protect_sigma` (the run included) number at least
/// `clip_protect_run` and at least `clip_protect_fraction` of all observations there: a line
/// lifts every filter that covers it — at all-sky density that may be one clipped point and a few
/// less-lifted neighbours — while a glitch has no lifted neighbours, and two coincident glitches
/// at deep-field density are 2 of ~80 points there.
pub fn clip_band(flux: &[f64], sigma: &[f64], wl: &[f64], bw: &[f64], qc: &QcConfig) -> Vec<usize> {
    if qc.clip == ClipMode::Off {
        return Vec::new();
    }
    let nsigma = qc
        .clip_sigma
        .max(gaussian_threshold(flux.len(), qc.clip_false_positives));
    let mut alive: Vec<usize> = (0..flux.len()).collect();
    let mut removed = Vec::new();
    for _ in 0..qc.clip_max_iter {
        let f: Vec<f64> = alive.iter().map(|&i| flux[i]).collect();
        let s: Vec<f64> = alive.iter().map(|&i| sigma[i]).collect();
        let w: Vec<f64> = alive.iter().map(|&i| wl[i]).collect();
        let z = deviations(&f, &s, qc.clip_window, 1.0);
        let state: Vec<i8> = z
            .iter()
            .map(|&v| (v > nsigma) as i8 - (v < -nsigma) as i8)
            .collect();
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
            let protect = qc.clip == ClipMode::Runs && {
                let width = alive[k..=e].iter().map(|&i| bw[i]).sum::<f64>() / run as f64;
                let (a, b) = (
                    w.partition_point(|&x| x < w[k] - width),
                    w.partition_point(|&x| x <= w[e] + width),
                );
                let side = state[k] as f64;
                let lifted = (a..b)
                    .filter(|&j| side * z[j] > qc.clip_protect_sigma)
                    .count();
                lifted >= qc.clip_protect_run.max(2)
                    && lifted as f64 >= qc.clip_protect_fraction * (b - a) as f64
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
        clipped_rows: Vec::new(),
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
        let sig: Vec<f64> = pts.iter().map(|r| r.obs.flux_error).collect();
        let removed = clip_band(&flux, &sig, &wl, &bw, qc);
        bq.clipped = removed.len();
        report
            .clipped_rows
            .extend(removed.iter().map(|&i| pts[i].obs.clone()));
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
