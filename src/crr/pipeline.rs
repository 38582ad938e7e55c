//! The CRR pipelines behind `spx crr build|merge|simulate|quality` (and the demo's CRR part),
//! callable from Rust: each takes the method's settings and paths and returns a typed report;
//! the CLI only prints it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array2, Ix2, Ix3};
use serde::Serialize;

use super::cube::Builder;
use super::kernel::{KernelModel, KernelTable};
use super::logcube::{self, CubeSummary};
use super::quality::{self, Correl};
use super::rss::Rss;
use super::shard::{self, Shard, ShardOutcome};
use super::{BANDS, CrrConfig, Method, simulate};
use crate::error::SpxError;
use crate::io::{self, fits::FitsReader};
use crate::logging::Progress;

/// A whole cube written by [`build`] or [`merge`].
#[derive(Clone, Debug, Serialize)]
pub struct CubeReport {
    pub cube: PathBuf,
    pub method: Method,
    pub seconds: f64,
    pub summary: CubeSummary,
}

/// What `build` produced: one shard part, or the whole cube.
#[derive(Clone, Debug)]
pub enum BuildReport {
    Shard {
        outcome: ShardOutcome,
        slices: (usize, usize),
        seconds: f64,
    },
    Cube(CubeReport),
}

/// The cube path: `output`, or `<out_dir>/<stem>-<METHOD>-LOGCUBE.fits`; refuses a path that is
/// the input RSS itself (never write over an input).
pub fn cube_path(
    out_dir: &Path,
    rss: &Path,
    method: Method,
    output: Option<&Path>,
) -> Result<PathBuf, SpxError> {
    let path = output.map(Path::to_path_buf).unwrap_or_else(|| {
        out_dir.join(format!(
            "{}-LOGCUBE.fits",
            logcube::output_stem(rss, method)
        ))
    });
    if same_file(&path, rss) {
        return Err(SpxError::field(
            &path,
            "--output",
            "is the input RSS; refusing to write over an input",
        ));
    }
    Ok(path)
}

/// Whether two paths name the same existing file (symlinks and `..` resolved).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Build the cube of `rss_path` (or, with `shard`, one part of it under `out_dir`).
pub fn build(
    cfg: &CrrConfig,
    rss_path: &Path,
    out_dir: &Path,
    output: Option<&Path>,
    shard: Option<Shard>,
    progress: &Progress,
) -> Result<BuildReport, SpxError> {
    let t0 = Instant::now();
    let rss = Rss::read(rss_path)?;
    let b = Builder::new(&rss, cfg)?;
    let path = cube_path(out_dir, rss_path, cfg.method, output)?;
    io::ensure_dir(out_dir)?;
    let stem = logcube::output_stem(rss_path, cfg.method);
    if let Some(sh) = shard {
        let (s0, s1) = sh.range(rss.nwave());
        if s0 == s1 {
            return Err(SpxError::field(
                rss_path,
                "--shard",
                format!(
                    "shard {}/{}: no slices (only {} wavelengths)",
                    sh.k,
                    sh.n,
                    rss.nwave()
                ),
            ));
        }
        let pb = progress.bar((s1 - s0) as u64, "slices");
        let outcome = shard::build_shard(&b, sh, out_dir, &stem, &pb)?;
        pb.finish_and_clear();
        return Ok(BuildReport::Shard {
            outcome,
            slices: (s0, s1),
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    let pb = progress.bar(rss.nwave() as u64, "slices");
    let part = b.build_range(0, rss.nwave(), &pb);
    pb.finish_and_clear();
    if let Some(p) = path.parent() {
        io::ensure_dir(p)?;
    }
    let summary = logcube::write_cube(&path, &b, &part)?;
    Ok(BuildReport::Cube(CubeReport {
        cube: path,
        method: cfg.method,
        seconds: t0.elapsed().as_secs_f64(),
        summary,
    }))
}

/// Join the `shards` parts of `build --shard K/N` (found in `out_dir`) into the cube.
pub fn merge(
    cfg: &CrrConfig,
    rss_path: &Path,
    shards: usize,
    out_dir: &Path,
    output: Option<&Path>,
) -> Result<CubeReport, SpxError> {
    let t0 = Instant::now();
    if shards == 0 {
        return Err(SpxError::Config("--shards must be ≥ 1".into()));
    }
    let rss = Rss::read(rss_path)?;
    let b = Builder::new(&rss, cfg)?;
    let stem = logcube::output_stem(rss_path, cfg.method);
    let path = cube_path(out_dir, rss_path, cfg.method, output)?;
    let part = shard::collect_parts(&b, shards, out_dir, &stem)?;
    let summary = logcube::write_cube(&path, &b, &part)?;
    Ok(CubeReport {
        cube: path,
        method: cfg.method,
        seconds: t0.elapsed().as_secs_f64(),
        summary,
    })
}

/// Simulate a LOGRSS file with a known sky (`cfg.simulate`) and write it to `path`.
pub fn simulate_file(cfg: &CrrConfig, seed: u64, path: &Path) -> Result<Rss, SpxError> {
    if let Some(p) = path.parent() {
        io::ensure_dir(p)?;
    }
    let rss = simulate::simulate(cfg, seed)?;
    rss.write(
        path,
        &[
            ("ORIGIN", "spx crr simulate".into()),
            ("SEED", (seed as i64).into()),
        ],
    )?;
    Ok(rss)
}

/// Image quality of one broad band of a cube (paper Tables 1–2).
#[derive(Clone, Debug, Serialize)]
pub struct BandQuality {
    pub band: String,
    pub wave: f64,
    pub psf_fwhm: f64,
    pub seeing: f64,
    pub strehl: f64,
    pub psf_flux: f64,
    pub rho1: f64,
    pub rho2: f64,
    pub source_fwhm: f64,
    /// Flux of the cube's own point source over the known total (with `known_flux`).
    pub source_flux_ratio: Option<f64>,
}

/// [`quality_of`]'s report.
#[derive(Clone, Debug, Serialize)]
pub struct QualityReport {
    pub cube: PathBuf,
    pub nside: usize,
    pub pixel: f64,
    pub bands: Vec<BandQuality>,
}

/// FWHM, pseudo-Strehl, neighbour correlation and flux of a cube written by [`build`]: the
/// band PSF extensions always, the FLUX cube's point source with `known_flux`.
pub fn quality_of(
    cfg: &CrrConfig,
    cube: &Path,
    known_flux: Option<f64>,
) -> Result<QualityReport, SpxError> {
    let mut f = FitsReader::open(cube)?;
    let pixel = f.card_f64("PRIMARY", "PIXSCALE")?;
    let flux = f
        .image_f32("FLUX")?
        .into_dimensionality::<Ix3>()
        .map_err(|_| SpxError::field(cube, "FLUX", "is not 3-D"))?;
    let mask = f
        .image_i32("MASK")?
        .into_dimensionality::<Ix3>()
        .map_err(|_| SpxError::field(cube, "MASK", "is not 3-D"))?;
    let nside = flux.dim().1;
    let grid = super::grid::Grid { nside, pixel };
    let table = KernelTable::new(
        KernelModel {
            fiber_radius: 0.5 * cfg.fiber_diameter,
            convention: cfg.kernel_convention,
        },
        cfg.kernel_radius,
    );
    let c = (nside / 2) as i32;
    let mut bands = Vec::new();
    for (name, _) in BANDS {
        let h = format!("{name}PSF");
        if !f.has_hdu(&h) {
            continue;
        }
        let psf: Array2<f64> = f
            .image_f64(&h)?
            .into_dimensionality::<Ix2>()
            .map_err(|_| SpxError::field(cube, &h, "is not 2-D"))?;
        let seeing = f.card_f64(&h, "SEEING")?;
        let index = f.card_i64(&h, "BBINDEX")?;
        let index = usize::try_from(index)
            .ok()
            .filter(|&i| i < flux.dim().0)
            .ok_or_else(|| {
                SpxError::field(
                    cube,
                    format!("{h}.BBINDEX"),
                    format!("{index} is outside the cube"),
                )
            })?;
        let wave = f.card_f64(&h, "BBWAVE")?;
        let fit = quality::fit_psf(&psf, &grid, &table);
        let strehl = quality::pseudo_strehl(&psf, 1.0, &grid, &table, seeing);
        let cr = Correl::read(&mut f, &format!("{name}CORREL"))?;
        // The cube's own point source at this slice (masked spaxels excluded).
        let img = Array2::from_shape_fn((nside, nside), |(y, x)| {
            if mask[(index, y, x)] & super::cubebits::DONOTUSE != 0 {
                f64::NAN
            } else {
                flux[(index, y, x)] as f64
            }
        });
        let src = quality::fit_psf(&img, &grid, &table);
        let total: f64 = img.iter().filter(|v| v.is_finite()).sum();
        bands.push(BandQuality {
            band: name.to_string(),
            wave,
            psf_fwhm: fit.fwhm,
            seeing,
            strehl,
            psf_flux: psf.sum(),
            rho1: quality::neighbour_correlation(&cr, (c, c), 1),
            rho2: quality::neighbour_correlation(&cr, (c, c), 2),
            source_fwhm: src.fwhm,
            source_flux_ratio: known_flux.map(|t| total / t),
        });
    }
    if bands.is_empty() {
        return Err(SpxError::file(cube, "no GPSF/RPSF/IPSF/ZPSF extensions"));
    }
    Ok(QualityReport {
        cube: cube.to_path_buf(),
        nside,
        pixel,
        bands,
    })
}

/// One method of the demo: its cube and r-band image quality.
#[derive(Clone, Debug, Serialize)]
pub struct DemoArm {
    pub method: Method,
    pub cube: PathBuf,
    pub r_fwhm: f64,
    pub r_strehl: f64,
    pub rho1: f64,
    pub seconds: f64,
}

/// The demo's CRR part: simulate a noisy point source + blob (`cfg.simulate`), build CRR and
/// Shepard cubes of it into `out`, and measure the r-band PSF of each.
pub fn demo(
    cfg: &CrrConfig,
    seed: u64,
    out: &Path,
    progress: &Progress,
) -> Result<Vec<DemoArm>, SpxError> {
    let mut c = cfg.clone();
    let rss_path = out.join("crr-sim-LOGRSS.fits");
    simulate::simulate(&c, seed)?.write(&rss_path, &[("ORIGIN", "spx demo".into())])?;
    let rss = Rss::read(&rss_path)?;
    let mut arms = Vec::new();
    for m in [Method::Crr, Method::Shepard] {
        c.method = m;
        let t0 = Instant::now();
        let b = Builder::new(&rss, &c)?;
        let pb = progress.bar(rss.nwave() as u64, m.name());
        let part = b.build_range(0, rss.nwave(), &pb);
        pb.finish_and_clear();
        let path = out.join(format!(
            "{}-LOGCUBE.fits",
            logcube::output_stem(&rss_path, m)
        ));
        let s = logcube::write_cube(&path, &b, &part)?;
        let no_r = || SpxError::file(&path, "no r band in the simulated cube");
        let r = s.bands.iter().find(|b| b.0 == "R").ok_or_else(no_r)?;
        let rb = part.bands.iter().find(|b| b.band == 1).ok_or_else(no_r)?;
        let cc = (b.grid.nside / 2) as i32;
        arms.push(DemoArm {
            method: m,
            cube: path.clone(),
            r_fwhm: r.1,
            r_strehl: r.2,
            rho1: quality::neighbour_correlation(&rb.correl, (cc, cc), 1),
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    Ok(arms)
}
