//! MaNGA LOGRSS-layout files: FLUX/IVAR/MASK/XPOS/YPOS (n_exp·n_fiber × n_wave, rows
//! exposure-major), WAVE, SPECRES, LSFPOST/LSFPRE (DR17) or DISP/PREDISP (DR15), OBSINFO
//! (SEEING, PSFFAC, …), primary header NEXP, IFURA, IFUDEC.

use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayD, Ix2};

use crate::error::SpxError;
use crate::io::fits::{self, Card, Column, FitsReader};

#[derive(Clone, Debug)]
pub struct Rss {
    pub path: PathBuf,
    pub nexp: usize,
    pub nfiber: usize,
    pub flux: Array2<f32>,
    pub ivar: Array2<f32>,
    pub mask: Array2<i32>,
    pub xpos: Array2<f32>,
    pub ypos: Array2<f32>,
    /// (post-pixelisation, pre-pixelisation) LSF, 1σ in Å, if present.
    pub lsf: Option<(Array2<f32>, Array2<f32>)>,
    pub wave: Vec<f64>,
    /// The 1-D spectral-resolution HDUs present in the input ([`RESOLUTION_HDUS`]), copied to
    /// the cube under the same names.
    pub resolution: Vec<(String, Vec<f64>)>,
    /// Per exposure: guider seeing FWHM (arcsec) and the PSF size factor.
    pub seeing: Vec<f64>,
    pub psffac: Vec<f64>,
    /// OBSINFO scalar columns with their stored types (integers, floats, text), copied to the
    /// cube.
    pub obsinfo: Vec<Column>,
    pub ifura: f64,
    pub ifudec: f64,
    /// Primary-header keys of [`CARRIED_KEYS`] present in the input, copied to the cube.
    pub cards: Vec<(String, Card)>,
}

/// LOGRSS 1-D HDUs carried to the LOGCUBE (MaNGA DR17 datamodel).
pub const RESOLUTION_HDUS: [&str; 4] = ["SPECRES", "SPECRESD", "PRESPECRES", "PRESPECRESD"];

/// Primary-header keys the DRP carries from the RSS to the cube, with their FITS type
/// ('A' text, 'I' integer, 'F' float).
pub const CARRIED_KEYS: [(&str, char); 22] = [
    ("PLATEIFU", 'A'),
    ("IFUDSGN", 'A'),
    ("MANGAID", 'A'),
    ("OBJECT", 'A'),
    ("PLATEID", 'I'),
    ("DESIGNID", 'I'),
    ("DRP3QUAL", 'I'),
    ("MNGTARG1", 'I'),
    ("MNGTARG2", 'I'),
    ("MNGTARG3", 'I'),
    ("OBJRA", 'F'),
    ("OBJDEC", 'F'),
    ("CENRA", 'F'),
    ("CENDEC", 'F'),
    ("EBVGAL", 'F'),
    ("SEEMIN", 'F'),
    ("SEEMED", 'F'),
    ("SEEMAX", 'F'),
    ("AIRMSMIN", 'F'),
    ("AIRMSMED", 'F'),
    ("AIRMSMAX", 'F'),
    ("EXPTIME", 'F'),
];

/// Largest |XPOS|, |YPOS| accepted (arcsec): the 127-fiber bundle spans ±16″ and refraction
/// adds < 3″, so anything beyond is a corrupt value that must not size the output grid.
pub const MAX_POSITION: f64 = 60.0;

fn as2(path: &Path, name: &str, a: ArrayD<f32>) -> Result<Array2<f32>, SpxError> {
    a.into_dimensionality::<Ix2>()
        .map_err(|_| SpxError::field(path, name, "expected a 2-D image (rows × wavelengths)"))
}

impl Rss {
    pub fn nrow(&self) -> usize {
        self.flux.nrows()
    }
    pub fn nwave(&self) -> usize {
        self.wave.len()
    }

    pub fn read(path: &Path) -> Result<Self, SpxError> {
        let mut f = FitsReader::open(path)?;
        let names = f.hdu_names();
        let need = |n: &str| -> Result<(), SpxError> {
            if names.iter().any(|h| h.eq_ignore_ascii_case(n)) {
                Ok(())
            } else {
                Err(SpxError::field(
                    path,
                    n,
                    format!("required HDU missing (file has: {})", names.join(", ")),
                ))
            }
        };
        for n in ["FLUX", "IVAR", "MASK", "XPOS", "YPOS", "WAVE", "OBSINFO"] {
            need(n)?;
        }
        let flux = as2(path, "FLUX", f.image_f32("FLUX")?)?;
        let shape = flux.dim();
        let check = |name: &str, a: &Array2<f32>| -> Result<(), SpxError> {
            if a.dim() != shape {
                return Err(SpxError::field(
                    path,
                    name,
                    format!("shape {:?} differs from FLUX {:?}", a.dim(), shape),
                ));
            }
            Ok(())
        };
        let ivar = as2(path, "IVAR", f.image_f32("IVAR")?)?;
        check("IVAR", &ivar)?;
        let mask = f
            .image_i32("MASK")?
            .into_dimensionality::<Ix2>()
            .map_err(|_| SpxError::field(path, "MASK", "expected a 2-D image"))?;
        if mask.dim() != shape {
            return Err(SpxError::field(path, "MASK", "shape differs from FLUX"));
        }
        let xpos = as2(path, "XPOS", f.image_f32("XPOS")?)?;
        check("XPOS", &xpos)?;
        let ypos = as2(path, "YPOS", f.image_f32("YPOS")?)?;
        check("YPOS", &ypos)?;
        let has = |n: &str| names.iter().any(|h| h.eq_ignore_ascii_case(n));
        let lsf = if has("LSFPOST") && has("LSFPRE") {
            Some(("LSFPOST", "LSFPRE"))
        } else if has("DISP") && has("PREDISP") {
            Some(("DISP", "PREDISP"))
        } else {
            None
        };
        let lsf = match lsf {
            Some((a, b)) => {
                let post = as2(path, a, f.image_f32(a)?)?;
                check(a, &post)?;
                let pre = as2(path, b, f.image_f32(b)?)?;
                check(b, &pre)?;
                Some((post, pre))
            }
            None => None,
        };
        let wave: Vec<f64> = f.image_f64("WAVE")?.iter().copied().collect();
        if wave.len() != shape.1 {
            return Err(SpxError::field(
                path,
                "WAVE",
                format!("{} values but FLUX has {} wavelengths", wave.len(), shape.1),
            ));
        }
        if wave.windows(2).any(|w| w[1].is_nan() || w[1] <= w[0])
            || wave.iter().any(|w| w.is_nan() || *w <= 0.0)
        {
            return Err(SpxError::field(
                path,
                "WAVE",
                "must be positive and increasing",
            ));
        }
        for (name, a) in [("XPOS", &xpos), ("YPOS", &ypos)] {
            if let Some(((i, l), v)) = a
                .indexed_iter()
                .find(|(_, v)| v.is_finite() && v.abs() as f64 > MAX_POSITION)
            {
                return Err(SpxError::field(
                    path,
                    name,
                    format!(
                        "row {i}, slice {l}: {v:e} arcsec is beyond the ±{MAX_POSITION}″ \
                         limit (corrupt position)"
                    ),
                ));
            }
        }
        let mut resolution = Vec::new();
        for h in RESOLUTION_HDUS {
            if has(h) {
                let s: Vec<f64> = f.image_f64(h)?.iter().copied().collect();
                if s.len() == wave.len() {
                    resolution.push((h.to_string(), s));
                }
            }
        }
        let kinds = f.column_kinds("OBSINFO")?;
        let cols: Vec<String> = kinds.iter().map(|(n, _)| n.clone()).collect();
        for c in ["SEEING", "PSFFAC"] {
            if !cols.iter().any(|n| n.eq_ignore_ascii_case(c)) {
                return Err(SpxError::field(
                    path,
                    format!("OBSINFO.{c}"),
                    "required column missing",
                ));
            }
        }
        let seeing = f.col_f64("OBSINFO", "SEEING")?;
        let psffac = f.col_f64("OBSINFO", "PSFFAC")?;
        // Scalar columns with their types (vector, logical and complex columns are not copied).
        let mut obsinfo = Vec::new();
        for (c, kind) in &kinds {
            let col = match kind {
                'I' => f
                    .col_i64("OBSINFO", c)
                    .ok()
                    .map(|v| Column::I64(c.clone(), v)),
                'F' => f
                    .col_f64("OBSINFO", c)
                    .ok()
                    .map(|v| Column::F64(c.clone(), v)),
                'A' => f
                    .col_str("OBSINFO", c)
                    .ok()
                    .map(|v| Column::Str(c.clone(), v)),
                _ => None,
            };
            if let Some(col) = col.filter(|col| col.len() == seeing.len()) {
                obsinfo.push(col);
            }
        }
        let nexp = match f.card_i64("PRIMARY", "NEXP") {
            Ok(n) if n > 0 => n as usize,
            _ => seeing.len(),
        };
        if nexp == 0 || shape.0 % nexp != 0 {
            return Err(SpxError::field(
                path,
                "PRIMARY:NEXP",
                format!("{nexp} exposures do not divide the {} RSS rows", shape.0),
            ));
        }
        if seeing.len() != nexp {
            return Err(SpxError::field(
                path,
                "OBSINFO",
                format!("{} rows but NEXP = {nexp}", seeing.len()),
            ));
        }
        if let Some((i, s)) = seeing
            .iter()
            .zip(&psffac)
            .map(|(s, p)| s * p)
            .enumerate()
            .find(|(_, s)| !(*s > 0.0 && s.is_finite()))
        {
            return Err(SpxError::field(
                path,
                "OBSINFO.SEEING",
                format!("exposure {i}: SEEING·PSFFAC = {s} is not a positive number"),
            ));
        }
        let card = |f: &mut FitsReader, k: &str| {
            f.card_f64("PRIMARY", k).or_else(|_| f.card_f64("FLUX", k))
        };
        let ifura = card(&mut f, "IFURA")?;
        let ifudec = card(&mut f, "IFUDEC")?;
        let mut cards = Vec::new();
        for (k, kind) in CARRIED_KEYS {
            let v = match kind {
                'A' => f.card_str("PRIMARY", k).ok().map(Card::Str),
                'I' => f.card_i64("PRIMARY", k).ok().map(Card::Int),
                _ => f.card_f64("PRIMARY", k).ok().map(Card::Float),
            };
            if let Some(v) = v {
                cards.push((k.to_string(), v));
            }
        }
        Ok(Rss {
            path: path.to_path_buf(),
            nexp,
            nfiber: shape.0 / nexp,
            flux,
            ivar,
            mask,
            xpos,
            ypos,
            lsf,
            wave,
            resolution,
            seeing,
            psffac,
            obsinfo,
            ifura,
            ifudec,
            cards,
        })
    }

    /// Write in the LOGRSS layout (used by `spx crr simulate`).
    pub fn write(&self, path: &Path, extra_cards: &[(&str, Card)]) -> Result<(), SpxError> {
        fits::write_fits(path, |w| {
            w.primary_card("NEXP", self.nexp as i64)?;
            w.primary_card("IFURA", self.ifura)?;
            w.primary_card("IFUDEC", self.ifudec)?;
            for (k, v) in &self.cards {
                w.primary_card(k, v.clone())?;
            }
            for (k, v) in extra_cards {
                w.primary_card(k, v.clone())?;
            }
            let wcs = |bunit: &str| -> Vec<(&'static str, Card)> {
                vec![
                    ("BUNIT", Card::from(bunit.to_string())),
                    ("CTYPE1", "WAVE-LOG".into()),
                    ("CRPIX1", 1.0.into()),
                    ("CRVAL1", self.wave[0].into()),
                ]
            };
            let mut fc = wcs("1E-17 erg/s/cm^2/Angstrom/fiber");
            fc.push(("MASKNAME", "MANGA_DRP2PIXMASK".into()));
            w.image_f32("FLUX", &self.flux.clone().into_dyn(), &fc)?;
            w.image_f32("IVAR", &self.ivar.clone().into_dyn(), &[])?;
            w.image_i32("MASK", &self.mask.clone().into_dyn(), &fc[3..])?;
            if let Some((post, pre)) = &self.lsf {
                w.image_f32("LSFPOST", &post.clone().into_dyn(), &[])?;
                w.image_f32("LSFPRE", &pre.clone().into_dyn(), &[])?;
            }
            let wave = ndarray::Array1::from(self.wave.clone()).into_dyn();
            w.image_f64("WAVE", &wave, &[("BUNIT", "Angstrom".into())])?;
            for (h, s) in &self.resolution {
                w.image_f64(h, &ndarray::Array1::from(s.clone()).into_dyn(), &[])?;
            }
            w.table("OBSINFO", &self.obsinfo, &[])?;
            w.image_f32(
                "XPOS",
                &self.xpos.clone().into_dyn(),
                &[("BUNIT", "arcsec".into())],
            )?;
            w.image_f32(
                "YPOS",
                &self.ypos.clone().into_dyn(),
                &[("BUNIT", "arcsec".into())],
            )
        })
    }
}
