//! The MaNGA LOGCUBE-layout output (DR17 datamodel `mangaCube`): FLUX/IVAR/MASK/LSFPOST/LSFPRE
//! with the RA---TAN/DEC--TAN/WAVE-LOG WCS, WAVE, SPECRES/SPECRESD/PRESPECRES/PRESPECRESD,
//! OBSINFO, G/R/I/ZIMG, G/R/I/ZPSF, G/R/I/ZCORREL, CONFIG; primary keys carried from the RSS;
//! DATASUM/CHECKSUM on every HDU.

use std::path::Path;

use ndarray::{Array1, Array2, s};

use super::checksum::write_fits_checksummed;
use super::cube::{Builder, Part};
use super::{BANDS, Method, cubebits, quality};
use crate::error::SpxError;
use crate::io::fits::{Card, Column};

/// Summary of a written cube.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CubeSummary {
    pub nside: usize,
    pub nwave: usize,
    pub failed_slices: usize,
    pub empty_slices: usize,
    /// Weight reuse: largest estimated error of a slice that kept reused weights (noise
    /// units) and slices between run ends solved exactly.
    pub reuse_max_error: f64,
    pub reuse_fallbacks: usize,
    /// Per band: (name, FWHM ″ of the reconstructed PSF, pseudo-Strehl, total PSF flux).
    pub bands: Vec<(String, f64, f64, f64)>,
}

/// Approximate g/r/i/z band edges (Å) for the top-hat band images.
pub const BAND_EDGES: [(f64, f64); 4] = [
    (4000.0, 5500.0),
    (5500.0, 6950.0),
    (6950.0, 8400.0),
    (8400.0, 10000.0),
];

/// CD3_3 of a WAVE-LOG axis (FITS Paper III): λ = CRVAL3·exp(CD3_3·(p − CRPIX3)/CRVAL3), so a
/// grid with a constant log step has CD3_3 = λ₀·ln(λ_{n−1}/λ₀)/(n−1) (MaNGA: 0.8339 Å).
pub fn wave_log_cd(wave: &[f64]) -> f64 {
    let n = wave.len();
    if n < 2 {
        return 1.0;
    }
    wave[0] * (wave[n - 1] / wave[0]).ln() / (n - 1) as f64
}

/// Write the LOGCUBE-layout FITS file from a complete part. The CONFIG HDU holds
/// [`super::CrrConfig::reconstruction_toml`] only, so the bytes do not depend on threads or
/// output paths.
pub fn write_cube(path: &Path, b: &Builder<'_>, cube: &Part) -> Result<CubeSummary, SpxError> {
    let rss = b.rss;
    let n = b.grid.nside;
    let p = b.grid.pixel;
    let nwave = rss.nwave();
    let crpix = (n as f64 + 1.0) / 2.0;
    let spatial: Vec<(&str, Card)> = vec![
        ("CTYPE1", "RA---TAN".into()),
        ("CTYPE2", "DEC--TAN".into()),
        ("CUNIT1", "deg".into()),
        ("CUNIT2", "deg".into()),
        ("CRPIX1", crpix.into()),
        ("CRPIX2", crpix.into()),
        ("CRVAL1", rss.ifura.into()),
        ("CRVAL2", rss.ifudec.into()),
        ("CD1_1", (-p / 3600.0).into()),
        ("CD1_2", 0.0.into()),
        ("CD2_1", 0.0.into()),
        ("CD2_2", (p / 3600.0).into()),
    ];
    let mut cubecards = spatial.clone();
    cubecards.extend([
        ("CTYPE3", Card::from("WAVE-LOG")),
        ("CUNIT3", "Angstrom".into()),
        ("CRPIX3", 1.0.into()),
        ("CRVAL3", rss.wave[0].into()),
        ("CD3_3", wave_log_cd(&rss.wave).into()),
        ("HDUCLAS1", "CUBE".into()),
    ]);
    let flux_unit = "1E-17 erg/s/cm^2/Angstrom/spaxel";
    let mut fluxcards = cubecards.clone();
    fluxcards.push(("BUNIT", flux_unit.into()));
    fluxcards.push(("MASKNAME", "MANGA_DRP3PIXMASK".into()));
    let mut ivarcards = cubecards.clone();
    ivarcards.push(("BUNIT", "1E+34 (erg/s/cm^2/Angstrom/spaxel)^-2".into()));
    ivarcards.push(("HDUCLAS2", "ERROR".into()));
    ivarcards.push(("ERRDATA", "IVAR".into()));
    let mut maskcards = cubecards.clone();
    maskcards.push(("MASKNAME", "MANGA_DRP3PIXMASK".into()));
    maskcards.push(("HDUCLAS2", "QUALITY".into()));
    // PSF fits and quality numbers per band.
    let mut summary = CubeSummary {
        nside: n,
        nwave,
        failed_slices: cube.failed.len(),
        empty_slices: cube.empty.len(),
        reuse_max_error: cube.reuse_max_error,
        reuse_fallbacks: cube.reuse_fallbacks,
        bands: Vec::new(),
    };
    let mut band_cards: Vec<(String, f64)> = Vec::new();
    for bs in &cube.bands {
        let name = BANDS[bs.band].0;
        let fit = quality::fit_psf(&bs.psf, &b.grid, &b.table);
        let seeing = b.mean_seeing(bs.index);
        let strehl = quality::pseudo_strehl(&bs.psf, 1.0, &b.grid, &b.table, seeing);
        let total = bs.psf.sum();
        summary
            .bands
            .push((name.to_string(), fit.fwhm, strehl, total));
        band_cards.push((format!("{name}FWHM"), fit.fwhm));
    }
    let images = band_images(rss.wave.as_slice(), cube, n);
    let failed_list = cube
        .failed
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let config_lines: Vec<String> = b
        .cfg
        .reconstruction_toml()
        .lines()
        .map(str::to_string)
        .collect();
    write_fits_checksummed(path, |w| {
        for (k, v) in &rss.cards {
            w.primary_card(k, v.clone())?;
        }
        w.primary_card("ORIGIN", "spx crr")?;
        w.primary_card("SPXVERS", env!("CARGO_PKG_VERSION"))?;
        w.primary_card("METHOD", b.cfg.method.name())?;
        w.primary_card("PIXSCALE", p)?;
        w.primary_card("CRRLAMBD", b.cfg.lambda)?;
        w.primary_card("NEXP", rss.nexp as i64)?;
        w.primary_card("IFURA", rss.ifura)?;
        w.primary_card("IFUDEC", rss.ifudec)?;
        w.primary_card("BUNIT", flux_unit)?;
        w.primary_card("MASKNAME", "MANGA_DRP3PIXMASK")?;
        let src = rss
            .path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        w.primary_card("INFILE", src)?;
        w.primary_card("NFAILED", cube.failed.len() as i64)?;
        if !failed_list.is_empty() {
            let mut t = failed_list.clone();
            t.truncate(60);
            w.primary_card("FAILSLIC", t)?;
        }
        for (k, v) in &band_cards {
            w.primary_card(k, *v)?;
        }
        w.image_f32("FLUX", &cube.flux.clone().into_dyn(), &fluxcards)?;
        w.image_f32("IVAR", &cube.ivar.clone().into_dyn(), &ivarcards)?;
        w.image_i32("MASK", &cube.mask.clone().into_dyn(), &maskcards)?;
        if let Some((post, pre)) = &cube.lsf {
            let mut c = cubecards.clone();
            c.push(("BUNIT", "Angstrom".into()));
            w.image_f32("LSFPOST", &post.clone().into_dyn(), &c)?;
            w.image_f32("LSFPRE", &pre.clone().into_dyn(), &c)?;
        }
        w.image_f64(
            "WAVE",
            &Array1::from(rss.wave.clone()).into_dyn(),
            &[("BUNIT", "Angstrom".into())],
        )?;
        for (h, v) in &rss.resolution {
            w.image_f64(h, &Array1::from(v.clone()).into_dyn(), &[])?;
        }
        w.table("OBSINFO", &rss.obsinfo, &[])?;
        for (bi, img) in images.iter().enumerate() {
            let mut c = spatial.clone();
            c.push(("BUNIT", flux_unit.into()));
            c.push(("BANDLO", BAND_EDGES[bi].0.into()));
            c.push(("BANDHI", BAND_EDGES[bi].1.into()));
            w.image_f32(&format!("{}IMG", BANDS[bi].0), &img.clone().into_dyn(), &c)?;
        }
        for bs in &cube.bands {
            let name = BANDS[bs.band].0;
            let mut c = spatial.clone();
            c.push(("BBWAVE", rss.wave[bs.index].into()));
            c.push(("BBINDEX", (bs.index as i64).into()));
            c.push(("SEEING", b.mean_seeing(bs.index).into()));
            w.image_f64(&format!("{name}PSF"), &bs.psf.clone().into_dyn(), &c)?;
        }
        for bs in &cube.bands {
            let name = BANDS[bs.band].0;
            w.table(
                &format!("{name}CORREL"),
                &bs.correl.columns(),
                &[
                    ("BBWAVE", rss.wave[bs.index].into()),
                    ("BBINDEX", (bs.index as i64).into()),
                    ("COVTYPE", "Correlation".into()),
                    ("COVSHAPE", format!("({},{})", n * n, n * n).into()),
                ],
            )?;
        }
        w.table("CONFIG", &[Column::Str("LINE".into(), config_lines)], &[])
    })?;
    Ok(summary)
}

/// Top-hat band images: the mean over usable slices (not DONOTUSE) in each band.
fn band_images(wave: &[f64], cube: &Part, n: usize) -> Vec<Array2<f32>> {
    BAND_EDGES
        .iter()
        .map(|&(lo, hi)| {
            let mut sum = Array2::<f64>::zeros((n, n));
            let mut cnt = Array2::<f64>::zeros((n, n));
            for (l, &w) in wave.iter().enumerate() {
                if w < lo || w >= hi {
                    continue;
                }
                for ((iy, ix), &v) in cube.flux.slice(s![l, .., ..]).indexed_iter() {
                    if cube.mask[(l, iy, ix)] & cubebits::DONOTUSE == 0 {
                        sum[(iy, ix)] += v as f64;
                        cnt[(iy, ix)] += 1.0;
                    }
                }
            }
            Array2::from_shape_fn((n, n), |ix| {
                if cnt[ix] > 0.0 {
                    (sum[ix] / cnt[ix]) as f32
                } else {
                    0.0
                }
            })
        })
        .collect()
}

/// Output name stem for an input RSS: `manga-8485-1901-LOGRSS.fits.gz` → `manga-8485-1901-CRR`.
pub fn output_stem(input: &Path, method: Method) -> String {
    let name = input
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rss".into());
    let mut stem = name.as_str();
    for ext in [".gz", ".fits", ".fit"] {
        stem = stem.strip_suffix(ext).unwrap_or(stem);
    }
    let stem = stem
        .strip_suffix("-LOGRSS")
        .or_else(|| stem.strip_suffix("-LINRSS"))
        .unwrap_or(stem);
    format!("{stem}-{}", method.name().to_uppercase())
}

/// The `<band>PSF` image of a cube or part file and its BBINDEX (the slice it was measured at),
/// or `None` when the file has no such HDU.
pub fn read_band_psf(
    f: &mut crate::io::fits::FitsReader,
    path: &Path,
    band: &str,
) -> Result<Option<(ndarray::Array2<f64>, i64)>, SpxError> {
    let h = format!("{band}PSF");
    if !f.has_hdu(&h) {
        return Ok(None);
    }
    let psf = f
        .image_f64(&h)?
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|_| SpxError::field(path, &h, "expected a 2-D image"))?;
    Ok(Some((psf, f.card_i64(&h, "BBINDEX")?)))
}
