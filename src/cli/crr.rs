//! `spx crr build|merge|simulate|quality`: IFU cubes from row-stacked spectra (CRR, Shepard).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ndarray::{Array2, Ix2, Ix3};
use serde_json::json;
use spx::config::Config;
use spx::crr::cube::Builder;
use spx::crr::kernel::{KernelModel, KernelTable};
use spx::crr::logcube::{self, CubeSummary};
use spx::crr::quality::Correl;
use spx::crr::rss::Rss;
use spx::crr::shard::{self, Shard};
use spx::crr::{BANDS, Method, quality, simulate};
use spx::io::{self, fits::FitsReader};

use super::Global;

#[derive(Subcommand, Debug)]
pub enum CrrCmd {
    /// Build a data cube from a LOGRSS file (whole cube, or one shard with --shard K/N).
    Build(BuildArgs),
    /// Join the N shard parts of `build --shard K/N` into the cube.
    Merge(MergeArgs),
    /// Write a synthetic LOGRSS file with a known sky (point source, blob, flat sky).
    Simulate(SimArgs),
    /// FWHM, pseudo-Strehl, neighbour correlation and flux of a cube (paper Tables 1–2).
    Quality(QualityArgs),
}

#[derive(Args, Debug, Clone)]
pub struct MethodArgs {
    /// crr or shepard (overrides crr.method).
    #[arg(long, value_parser = parse_method)]
    pub method: Option<Method>,
    /// Spaxel size in arcsec (overrides crr.pixel_scale).
    #[arg(long)]
    pub pixel_scale: Option<f64>,
    /// Regularisation λ (overrides crr.lambda).
    #[arg(long)]
    pub lambda: Option<f64>,
}

fn parse_method(s: &str) -> Result<Method, String> {
    match s.to_ascii_lowercase().as_str() {
        "crr" => Ok(Method::Crr),
        "shepard" => Ok(Method::Shepard),
        _ => Err(format!("`{s}`: expected crr or shepard")),
    }
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Input LOGRSS FITS file.
    pub rss: PathBuf,
    #[command(flatten)]
    pub m: MethodArgs,
    /// Build only the K-th (1-based) of N contiguous wavelength blocks into a part file
    /// (for job arrays; join with `spx crr merge --shards N`). Complete parts are skipped.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// Output cube path (default: <out>/<stem>-<METHOD>-LOGCUBE.fits).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The input LOGRSS file the parts were built from.
    pub rss: PathBuf,
    /// Number of shards N used in `build --shard K/N`.
    #[arg(long)]
    pub shards: usize,
    #[command(flatten)]
    pub m: MethodArgs,
    /// Output cube path (default: <out>/<stem>-<METHOD>-LOGCUBE.fits).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Output path (default: <out>/sim-<nfiber>-LOGRSS.fits).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Fibers (7, 19, 37, 61, 91, 127) (overrides crr.simulate.nfiber).
    #[arg(long)]
    pub nfiber: Option<usize>,
    /// Exposures (overrides crr.simulate.nexp).
    #[arg(long)]
    pub nexp: Option<usize>,
    /// Wavelength channels (overrides crr.simulate.nwave).
    #[arg(long)]
    pub nwave: Option<usize>,
    /// Peak-fiber S/N, 0 = noiseless (overrides crr.simulate.snr).
    #[arg(long)]
    pub snr: Option<f64>,
}

#[derive(Args, Debug)]
pub struct QualityArgs {
    /// A cube written by `spx crr build`.
    pub cube: PathBuf,
    /// Known total flux of a point source in the cube; enables Strehl and flux ratios of the
    /// FLUX cube itself (the PSF extensions are always measured).
    #[arg(long)]
    pub flux: Option<f64>,
}

pub fn run(g: &Global, cmd: &CrrCmd) -> Result<ExitCode> {
    match cmd {
        CrrCmd::Build(a) => build(g, a),
        CrrCmd::Merge(a) => merge(g, a),
        CrrCmd::Simulate(a) => simulate_cmd(g, a),
        CrrCmd::Quality(a) => quality_cmd(g, a),
    }
}

fn config(g: &Global, m: &MethodArgs) -> Result<Config> {
    let mut cfg = g.setup()?;
    if let Some(v) = m.method {
        cfg.crr.method = v;
    }
    if let Some(v) = m.pixel_scale {
        cfg.crr.pixel_scale = v;
    }
    if let Some(v) = m.lambda {
        cfg.crr.lambda = v;
    }
    Ok(cfg)
}

/// The cube path; refuses a path that is the input RSS itself (never write over an input).
fn cube_path(cfg: &Config, rss: &Path, output: &Option<PathBuf>) -> Result<PathBuf> {
    let path = output.clone().unwrap_or_else(|| {
        cfg.run.out_dir.join(format!(
            "{}-LOGCUBE.fits",
            logcube::output_stem(rss, cfg.crr.method)
        ))
    });
    if same_file(&path, rss) {
        bail!(
            "{}: field `--output`: is the input RSS; refusing to write over an input",
            path.display()
        );
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

fn report(g: &Global, path: &Path, s: &CubeSummary, secs: f64, method: Method) {
    g.say(format!(
        "wrote {} ({}: {}×{} spaxels × {} slices, {:.1} s, {} failed and {} empty slices)",
        path.display(),
        method.name(),
        s.nside,
        s.nside,
        s.nwave,
        secs,
        s.failed_slices,
        s.empty_slices
    ));
    if s.reuse_fallbacks > 0 || s.reuse_max_error > 0.0 {
        g.say(format!(
            "  weight reuse: max checked error {:.3} noise units, {} slices fell back to exact",
            s.reuse_max_error, s.reuse_fallbacks
        ));
    }
    for (b, fwhm, strehl, tot) in &s.bands {
        g.say(format!(
            "  {b}: PSF FWHM {fwhm:.3}\"  pseudo-Strehl {strehl:.3}  PSF flux {tot:.4}"
        ));
    }
}

fn build(g: &Global, a: &BuildArgs) -> Result<ExitCode> {
    let cfg = config(g, &a.m)?;
    let t0 = Instant::now();
    let rss = Rss::read(&a.rss)?;
    let b = Builder::new(&rss, &cfg.crr)?;
    let out_dir = cfg.run.out_dir.clone();
    let path = cube_path(&cfg, &a.rss, &a.output)?;
    io::ensure_dir(&out_dir)?;
    let stem = logcube::output_stem(&a.rss, cfg.crr.method);
    if let Some(sh) = a.shard {
        if sh.range(rss.nwave()).0 == sh.range(rss.nwave()).1 {
            bail!(
                "shard {}/{}: no slices (only {} wavelengths)",
                sh.k,
                sh.n,
                rss.nwave()
            );
        }
        let (s0, s1) = sh.range(rss.nwave());
        let pb = g.progress().bar((s1 - s0) as u64, "slices");
        let o = shard::build_shard(&b, sh, &out_dir, &stem, &pb)?;
        pb.finish_and_clear();
        cfg.write_effective(&out_dir)?;
        if o.skipped {
            g.say(format!("{} already complete, skipped", o.path.display()));
        } else {
            g.say(format!(
                "wrote {} (slices {}..{}, {:.1} s)",
                o.path.display(),
                s0,
                s1,
                t0.elapsed().as_secs_f64()
            ));
        }
        g.emit_json(&o)?;
        return Ok(ExitCode::SUCCESS);
    }
    let pb = g.progress().bar(rss.nwave() as u64, "slices");
    let part = b.build_range(0, rss.nwave(), &pb);
    pb.finish_and_clear();
    if let Some(p) = path.parent() {
        io::ensure_dir(p)?;
    }
    let s = logcube::write_cube(&path, &b, &part)?;
    cfg.write_effective(&out_dir)?;
    report(g, &path, &s, t0.elapsed().as_secs_f64(), cfg.crr.method);
    g.emit_json(&json!({"cube": path, "seconds": t0.elapsed().as_secs_f64(), "summary": s}))?;
    Ok(ExitCode::SUCCESS)
}

fn merge(g: &Global, a: &MergeArgs) -> Result<ExitCode> {
    let cfg = config(g, &a.m)?;
    let t0 = Instant::now();
    if a.shards == 0 {
        bail!("--shards must be ≥ 1");
    }
    let rss = Rss::read(&a.rss)?;
    let b = Builder::new(&rss, &cfg.crr)?;
    let stem = logcube::output_stem(&a.rss, cfg.crr.method);
    let path = cube_path(&cfg, &a.rss, &a.output)?;
    let part = shard::collect_parts(&b, a.shards, &cfg.run.out_dir, &stem)?;
    let s = logcube::write_cube(&path, &b, &part)?;
    cfg.write_effective(&cfg.run.out_dir)?;
    report(g, &path, &s, t0.elapsed().as_secs_f64(), cfg.crr.method);
    g.emit_json(&json!({"cube": path, "summary": s}))?;
    Ok(ExitCode::SUCCESS)
}

fn simulate_cmd(g: &Global, a: &SimArgs) -> Result<ExitCode> {
    let mut cfg = g.setup()?;
    let s = &mut cfg.crr.simulate;
    if let Some(v) = a.nfiber {
        s.nfiber = v;
    }
    if let Some(v) = a.nexp {
        s.nexp = v;
    }
    if let Some(v) = a.nwave {
        s.nwave = v;
    }
    if let Some(v) = a.snr {
        s.snr = v;
    }
    let path = a.output.clone().unwrap_or_else(|| {
        cfg.run
            .out_dir
            .join(format!("sim-{}-LOGRSS.fits", cfg.crr.simulate.nfiber))
    });
    if let Some(p) = path.parent() {
        io::ensure_dir(p)?;
    }
    let rss = simulate::simulate(&cfg.crr, cfg.run.seed)?;
    rss.write(
        &path,
        &[
            ("ORIGIN", "spx crr simulate".into()),
            ("SEED", (cfg.run.seed as i64).into()),
        ],
    )?;
    cfg.write_effective(path.parent().unwrap_or(Path::new(".")))?;
    g.say(format!(
        "wrote {} ({} fibers × {} exposures, {} wavelengths)",
        path.display(),
        rss.nfiber,
        rss.nexp,
        rss.nwave()
    ));
    g.emit_json(
        &json!({"rss": path, "nfiber": rss.nfiber, "nexp": rss.nexp, "nwave": rss.nwave()}),
    )?;
    Ok(ExitCode::SUCCESS)
}

fn quality_cmd(g: &Global, a: &QualityArgs) -> Result<ExitCode> {
    let cfg = g.setup()?;
    let mut f = FitsReader::open(&a.cube)?;
    let pixel = f.card_f64("PRIMARY", "PIXSCALE")?;
    let flux = f
        .image_f32("FLUX")?
        .into_dimensionality::<Ix3>()
        .context("FLUX is not 3-D")?;
    let mask = f
        .image_i32("MASK")?
        .into_dimensionality::<Ix3>()
        .context("MASK is not 3-D")?;
    let nside = flux.dim().1;
    let grid = spx::crr::grid::Grid { nside, pixel };
    let table = KernelTable::new(
        KernelModel {
            fiber_radius: 0.5 * cfg.crr.fiber_diameter,
            convention: cfg.crr.kernel_convention,
        },
        cfg.crr.kernel_radius,
    );
    let c = (nside / 2) as i32;
    let mut rows = Vec::new();
    g.say(format!(
        "{}: {nside}×{nside} spaxels of {pixel}\"",
        a.cube.display()
    ));
    g.say("band  wave     PSF-FWHM  Strehl  PSF-flux  rho(1px) rho(2px)  src-FWHM  src-flux/true");
    for (name, _) in BANDS {
        let h = format!("{name}PSF");
        if !f.has_hdu(&h) {
            continue;
        }
        let psf: Array2<f64> = f.image_f64(&h)?.into_dimensionality::<Ix2>()?;
        let seeing = f.card_f64(&h, "SEEING")?;
        let index = f.card_i64(&h, "BBINDEX")? as usize;
        let wave = f.card_f64(&h, "BBWAVE")?;
        let fit = quality::fit_psf(&psf, &grid, &table);
        let strehl = quality::pseudo_strehl(&psf, 1.0, &grid, &table, seeing);
        let cr = Correl::read(&mut f, &format!("{name}CORREL"))?;
        let (r1, r2) = (
            quality::neighbour_correlation(&cr, (c, c), 1),
            quality::neighbour_correlation(&cr, (c, c), 2),
        );
        // The cube's own point source at this slice (masked spaxels excluded).
        let img = Array2::from_shape_fn((nside, nside), |(y, x)| {
            if mask[(index, y, x)] & spx::crr::cubebits::DONOTUSE != 0 {
                f64::NAN
            } else {
                flux[(index, y, x)] as f64
            }
        });
        let src = quality::fit_psf(&img, &grid, &table);
        let total: f64 = img.iter().filter(|v| v.is_finite()).sum();
        let ratio = a.flux.map(|t| total / t);
        g.say(format!(
            "{name:>4}  {wave:7.1}  {:8.3}  {strehl:6.3}  {:8.4}  {r1:8.3} {r2:8.3}  {:8.3}  {}",
            fit.fwhm,
            psf.sum(),
            src.fwhm,
            ratio
                .map(|r| format!("{r:.4}"))
                .unwrap_or_else(|| "-".into())
        ));
        rows.push(
            json!({"band": name, "wave": wave, "psf_fwhm": fit.fwhm, "seeing": seeing,
            "strehl": strehl, "psf_flux": psf.sum(), "rho1": r1, "rho2": r2,
            "source_fwhm": src.fwhm, "source_flux_ratio": ratio}),
        );
    }
    if rows.is_empty() {
        bail!("{}: no GPSF/RPSF/IPSF/ZPSF extensions", a.cube.display());
    }
    g.emit_json(&json!({"cube": a.cube, "bands": rows}))?;
    Ok(ExitCode::SUCCESS)
}

/// `spx demo` hook: simulate a 19-fiber RSS (noisy point source + blob), build CRR and
/// Shepard cubes, and report FWHM / correlation side by side.
pub fn demo(g: &Global, cfg: &Config, out: &Path) -> Result<serde_json::Value> {
    let mut c = cfg.crr.clone();
    c.simulate.nwave = 60;
    c.simulate.snr = 50.0;
    c.simulate.blob_flux = 50.0;
    let rss_path = out.join("crr-sim-LOGRSS.fits");
    simulate::simulate(&c, cfg.run.seed)?.write(&rss_path, &[("ORIGIN", "spx demo".into())])?;
    let rss = Rss::read(&rss_path)?;
    let mut res = serde_json::Map::new();
    for m in [Method::Crr, Method::Shepard] {
        c.method = m;
        let t0 = Instant::now();
        let b = Builder::new(&rss, &c)?;
        let pb = g.progress().bar(rss.nwave() as u64, m.name());
        let part = b.build_range(0, rss.nwave(), &pb);
        pb.finish_and_clear();
        let path = out.join(format!(
            "{}-LOGCUBE.fits",
            logcube::output_stem(&rss_path, m)
        ));
        let s = logcube::write_cube(&path, &b, &part)?;
        let r = &s.bands.iter().find(|b| b.0 == "R").context("no R band")?;
        let rb = part
            .bands
            .iter()
            .find(|b| b.band == 1)
            .context("no R band")?;
        let cc = (b.grid.nside / 2) as i32;
        let rho1 = quality::neighbour_correlation(&rb.correl, (cc, cc), 1);
        g.say(format!(
            "crr demo {}: r-band PSF FWHM {:.3}\", Strehl {:.3}, 1-px correlation {:.3} ({:.1} s) -> {}",
            m.name(),
            r.1,
            r.2,
            rho1,
            t0.elapsed().as_secs_f64(),
            path.display()
        ));
        res.insert(
            m.name().into(),
            json!({"cube": path, "r_fwhm": r.1, "r_strehl": r.2, "rho1": rho1}),
        );
    }
    Ok(serde_json::Value::Object(res))
}
