//! `spx crr build|merge|simulate|quality`: IFU cubes from row-stacked spectra (CRR, Shepard).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;
use spx::config::Config;
use spx::crr::Method;
use spx::crr::pipeline::{self, BuildReport, CubeReport};
use spx::crr::shard::Shard;

use super::{Flag, Global, flag, flag_count, flag_enum, flags};

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
    /// Reconstruction method (overrides crr.method).
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// Spaxel size in arcsec (overrides crr.pixel_scale).
    #[arg(long)]
    pub pixel_scale: Option<f64>,
    /// Regularisation λ (overrides crr.lambda).
    #[arg(long)]
    pub lambda: Option<f64>,
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

impl MethodArgs {
    fn flags(&self) -> Vec<Flag> {
        flags([
            flag_enum("crr.method", self.method.as_ref(), "--method"),
            flag("crr.pixel_scale", self.pixel_scale, "--pixel-scale"),
            flag("crr.lambda", self.lambda, "--lambda"),
        ])
    }
}

fn report(g: &Global, r: &CubeReport) {
    let s = &r.summary;
    g.say(format!(
        "wrote {} ({}: {}×{} spaxels × {} slices, {:.1} s, {} failed and {} empty slices)",
        r.cube.display(),
        r.method.name(),
        s.nside,
        s.nside,
        s.nwave,
        r.seconds,
        s.failed_slices,
        s.empty_slices
    ));
    if s.reuse_fallbacks > 0 || s.reuse_max_error > 0.0 {
        g.say(format!(
            "  weight reuse: max estimated error {:.3} noise units, {} slices between run ends solved exactly",
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
    let cfg = g.setup_with(&[], a.m.flags())?;
    let out_dir = &cfg.run.out_dir;
    let r = pipeline::build(
        &cfg.crr,
        &a.rss,
        out_dir,
        a.output.as_deref(),
        a.shard,
        &g.progress(),
    )?;
    cfg.write_effective(out_dir)?;
    match r {
        BuildReport::Shard {
            outcome,
            slices: (s0, s1),
            seconds,
        } => {
            if outcome.skipped {
                g.say(format!(
                    "{} already complete, skipped",
                    outcome.path.display()
                ));
            } else {
                let resumed = match outcome.resumed_slices {
                    0 => String::new(),
                    n => format!(", {n} of them from checkpoints of an interrupted run"),
                };
                g.say(format!(
                    "wrote {} (slices {s0}..{s1}{resumed}, {seconds:.1} s)",
                    outcome.path.display()
                ));
            }
            g.emit_json(&outcome)?;
        }
        BuildReport::Cube(r) => {
            report(g, &r);
            g.emit_json(&json!({"cube": r.cube, "seconds": r.seconds, "summary": r.summary}))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn merge(g: &Global, a: &MergeArgs) -> Result<ExitCode> {
    let cfg = g.setup_with(&[], a.m.flags())?;
    let r = pipeline::merge(
        &cfg.crr,
        &a.rss,
        a.shards,
        &cfg.run.out_dir,
        a.output.as_deref(),
    )?;
    cfg.write_effective(&cfg.run.out_dir)?;
    report(g, &r);
    g.emit_json(&json!({"cube": r.cube, "summary": r.summary}))?;
    Ok(ExitCode::SUCCESS)
}

fn simulate_cmd(g: &Global, a: &SimArgs) -> Result<ExitCode> {
    let cfg = g.setup_with(
        &[],
        flags([
            flag_count("crr.simulate.nfiber", a.nfiber, "--nfiber"),
            flag_count("crr.simulate.nexp", a.nexp, "--nexp"),
            flag_count("crr.simulate.nwave", a.nwave, "--nwave"),
            flag("crr.simulate.snr", a.snr, "--snr"),
        ]),
    )?;
    let path = a.output.clone().unwrap_or_else(|| {
        cfg.run
            .out_dir
            .join(format!("sim-{}-LOGRSS.fits", cfg.crr.simulate.nfiber))
    });
    let rss = pipeline::simulate_file(&cfg.crr, cfg.run.seed, &path)?;
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
    let q = pipeline::quality_of(&cfg.crr, &a.cube, a.flux)?;
    let (nside, pixel) = (q.nside, q.pixel);
    g.say(format!(
        "{}: {nside}×{nside} spaxels of {pixel}\"",
        a.cube.display()
    ));
    g.say("band  wave     PSF-FWHM  Strehl  PSF-flux  rho(1px) rho(2px)  src-FWHM  src-flux/true");
    for b in &q.bands {
        g.say(format!(
            "{:>4}  {:7.1}  {:8.3}  {:6.3}  {:8.4}  {:8.3} {:8.3}  {:8.3}  {}",
            b.band,
            b.wave,
            b.psf_fwhm,
            b.strehl,
            b.psf_flux,
            b.rho1,
            b.rho2,
            b.source_fwhm,
            b.source_flux_ratio
                .map(|r| format!("{r:.4}"))
                .unwrap_or_else(|| "-".into())
        ));
    }
    g.emit_json(&json!({"cube": q.cube, "bands": q.bands}))?;
    Ok(ExitCode::SUCCESS)
}

/// `spx demo` hook: CRR and Shepard cubes of a simulated 19-fiber RSS (sizes from the `demo`
/// profile), FWHM / correlation side by side.
pub fn demo(g: &Global, cfg: &Config, out: &Path) -> Result<serde_json::Value> {
    let arms = pipeline::demo(&cfg.crr, cfg.run.seed, out, &g.progress())?;
    let mut res = serde_json::Map::new();
    for a in arms {
        g.say(format!(
            "crr demo {}: r-band PSF FWHM {:.3}\", Strehl {:.3}, 1-px correlation {:.3} ({:.1} s) -> {}",
            a.method.name(),
            a.r_fwhm,
            a.r_strehl,
            a.rho1,
            a.seconds,
            a.cube.display()
        ));
        res.insert(
            a.method.name().into(),
            json!({"cube": a.cube, "r_fwhm": a.r_fwhm, "r_strehl": a.r_strehl, "rho1": a.rho1}),
        );
    }
    Ok(serde_json::Value::Object(res))
}
