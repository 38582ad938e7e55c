//! Catalog-mode throughput of `spx dip recon`: sources per hour at several batch sizes, and how
//! far each batched spectrum is from the one-at-a-time (batch 1) spectrum of the same source.
//!
//! ```sh
//! cargo run --release --example dip_catalog_bench -- 256 1,4,16,64
//! #   args: SOURCES BATCHES [RESOLUTION FILTERS DEPTH EPOCHS]   (defaults 64 1,8 512 8 3 300)
//! ```
//!
//! Sources are simulated quasars, YSOs and stars at all-sky density (65 observations per band,
//! relative noise), seeds 1..=SOURCES; every batch size fits the same CSVs with `run.seed` 42.
//! CPU time is read from /proc/self/stat (user + system of the whole process).

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use spx::backend::{self, DeviceSpec};
use spx::dip::catalog::{self, CatalogSettings};
use spx::dip::grid::linspace;
use spx::dip::{DipConfig, NoiseModel, SourceKind, recon, simulate};
use spx::logging::Progress;

fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime, stime are fields 14, 15 of the whole line = 11, 12 after the ')'.
    (tick(11) + tick(12)) / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let n: usize = arg(0, "64").parse().expect("SOURCES");
    let batches: Vec<usize> = arg(1, "1,8")
        .split(',')
        .map(|b| b.parse().expect("BATCHES"))
        .collect();
    let mut dip = DipConfig {
        resolution: arg(2, "512").parse().expect("RESOLUTION"),
        ..DipConfig::default()
    };
    dip.net.filters = arg(3, "8").parse().expect("FILTERS");
    dip.net.depth = arg(4, "3").parse().expect("DEPTH");
    dip.train.epochs = arg(5, "300").parse().expect("EPOCHS");
    dip.simulate.noise = NoiseModel::Relative;
    dip.simulate.per_band = 65;
    dip.validate().expect("settings");

    let dir = tempfile::tempdir().expect("tempdir");
    let inputs = dir.path().join("in");
    let grid = linspace(dip.wavelength_min, dip.wavelength_max, dip.resolution);
    let kinds = [SourceKind::Qso, SourceKind::Ice, SourceKind::Star];
    for i in 0..n {
        let mut sc = dip.simulate.clone();
        sc.kind = kinds[i % 3];
        let seed = 1 + i as u64;
        let (src, rows) =
            simulate::simulate_kind(&sc, seed, &mut backend::seeded(&Device::flex(), seed));
        let sub = dir.path().join(format!("sim{i}"));
        let (csv, _) = recon::write_simulation(&rows, &src, &grid, &sub, seed).expect("write");
        std::fs::create_dir_all(&inputs).expect("mkdir");
        std::fs::rename(csv, inputs.join(format!("src{i:04}.csv"))).expect("rename");
    }
    let sources = catalog::collect_sources(&[inputs]).expect("sources");
    println!(
        "{n} sources, grid {} px, filters {}, depth {}, ≤ {} epochs, rayon threads {}",
        dip.resolution,
        dip.net.filters,
        dip.net.depth,
        dip.train.epochs,
        rayon::current_num_threads()
    );
    println!(
        "batch  wall_s  cpu_s  sources/h(wall)  sources/h(cpu)  epochs  max_rel_diff_vs_batch1  failed"
    );
    let mut reference: Option<Vec<catalog::SourceResult>> = None;
    for &b in &batches {
        let mut d = dip.clone();
        d.batch_sources = b;
        let out: PathBuf = dir.path().join(format!("out{b}"));
        let s = CatalogSettings {
            dip: d,
            device: DeviceSpec::Cpu,
            seed: 42,
            shard: None,
            plots: false,
            out,
        };
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let rep = catalog::run(&s, &sources, Progress::hidden()).expect("catalog run");
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
        let (_, rows, _) = catalog::read_catalog(&rep.file).expect("read back");
        let epochs: usize = rows.iter().map(|r| r.epochs).sum();
        let diff = reference.as_ref().map_or(0.0, |r0| {
            rows.iter()
                .zip(r0)
                .filter(|(a, _)| a.error.is_none())
                .map(|(a, z)| {
                    let scale = z.flux.iter().map(|v| v.abs()).fold(0.0, f64::max);
                    a.flux
                        .iter()
                        .zip(&z.flux)
                        .map(|(p, q)| (p - q).abs() / scale)
                        .fold(0.0, f64::max)
                })
                .fold(0.0, f64::max)
        });
        println!(
            "{b:5}  {wall:6.1}  {cpu:5.1}  {:15.0}  {:14.0}  {epochs:6}  {diff:22.2e}  {}",
            3600.0 * n as f64 / wall,
            3600.0 * n as f64 / cpu.max(1e-9),
            rep.failed.len()
        );
        if reference.is_none() {
            reference = Some(rows);
        }
    }
}
