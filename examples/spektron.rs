//! Spektron's classical calibration transfer from Rust: load the corn data set (instrument m5 as
//! the master, mp6 as the target), run PLS, direct standardisation, piecewise direct
//! standardisation, slope/bias correction and the other baselines on seeded splits, and write
//! the report (CSV, Markdown, JSON, PNG) — the library call behind `spx spektron baselines`.
//!
//! ```text
//! cargo run --release --example spektron [corn.mat|corn-csv-dir] [OUT_DIR]
//! ```
//! Default data: `../shared/data/corn/corn.mat` (the checkout's sibling `shared/`).

use std::path::PathBuf;

use spx::config;
use spx::io::atomic::Stage;
use spx::spektron::classical;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let data = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data/corn/corn.mat"));
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("spx-example-spektron"));
    let cfg = config::load_layers(None, &[], &[], &[])?;
    let mut bc = cfg.spektron.baselines.clone();
    bc.n_transfer = vec![5, 10, 20];
    bc.repeats = 3;
    // The report files appear in `out` together, when `commit` renames them into place.
    let stage = Stage::begin(&out)?.inputs([data.as_path()]);
    let input = classical::Input {
        data: &data,
        source: "m5",
        target: "mp6",
        property: "moisture",
    };
    let mut done = 0;
    let run = classical::run(&input, &bc, &stage, |_| {
        done += 1;
        eprintln!("repetition {done} of {} done", bc.repeats);
    })?;
    stage.commit()?;
    println!(
        "{} samples × {} channels, property {}\n",
        run.samples, run.channels, run.property
    );
    println!("{}", run.markdown);
    println!(
        "master PLS latent variables (CV) per repetition: {:?}",
        run.report.master_lvs
    );
    for f in &run.files {
        println!("wrote {}", f.display());
    }
    Ok(())
}
