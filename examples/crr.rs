//! CRR from Rust: simulate a 19-fiber × 9-exposure LOGRSS with a known sky, build its cube by
//! Covariance-Regularized Reconstruction and by Shepard's method, and measure both cubes' PSF —
//! the library calls behind `spx crr simulate`, `spx crr build` and `spx crr quality`.
//!
//! ```text
//! cargo run --release --example crr [OUT_DIR]
//! ```
//! Sizes are the `demo` profile's (`configs/profiles/demo.toml`: 60 wavelengths), a few seconds.

use std::path::PathBuf;

use spx::config;
use spx::crr::Method;
use spx::crr::pipeline::{self, BuildReport};
use spx::logging::Progress;

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("spx-example-crr"));
    // The defaults with the demo profile on top: the same layering the CLI uses.
    let cfg = config::load_layers(None, &["demo"], &[], &[])?;
    let seed = cfg.run.seed;
    let rss_path = out.join("sim-19-LOGRSS.fits");
    let rss = pipeline::simulate_file(&cfg.crr, seed, &rss_path)?;
    println!(
        "simulated {} fiber-exposures × {} wavelengths → {}",
        rss.nrow(),
        rss.nwave(),
        rss_path.display()
    );
    let quiet = Progress { visible: false };
    for method in [Method::Crr, Method::Shepard] {
        let mut c = cfg.crr.clone();
        c.method = method;
        let BuildReport::Cube(cube) = pipeline::build(&c, &rss_path, &out, None, None, &quiet)?
        else {
            anyhow::bail!("a build without --shard returns the cube");
        };
        let q = pipeline::quality_of(&c, &cube.cube, None)?;
        for b in &q.bands {
            println!(
                "{:8} {} band ({:.0} Å): PSF FWHM {:.3}″ (seeing {:.3}″), Strehl {:.3}, \
                 neighbour correlation {:.2}",
                method.name(),
                b.band,
                b.wave,
                b.psf_fwhm,
                b.seeing,
                b.strehl,
                b.rho1
            );
        }
        println!(
            "         cube {} in {:.2} s",
            cube.cube.display(),
            cube.seconds
        );
    }
    Ok(())
}
