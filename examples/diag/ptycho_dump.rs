//! Dump a raw NPZ grouped for the PINN (network layout) plus the true object patches, for the
//! PyTorch twin (`benches/peers/twins.py pinn-train`):
//! `cargo run --release --example ptycho_dump -- scan.npz out.npz [n_groups_seed]`.
//! Keys: x `[B,C,N,N]` (X_full), rel `[B,C,2]` (dx, dy), offsets `[B,2]`, truth_re/truth_im
//! `[B,C,N,N]` (objectGuess at each member's position), probe_re/probe_im `[N,N]`.
use spx::io::npz::{NpzArray, write_npz};
use spx::ptycho::{PtychoConfig, RawData, recon, simulate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut a = std::env::args().skip(1);
    let (src, dst) = (a.next().ok_or("scan.npz")?, a.next().ok_or("out.npz")?);
    let seed: u64 = a.next().map_or(Ok(1), |v| v.parse())?;
    let raw = RawData::load(std::path::Path::new(&src))?;
    let pc = PtychoConfig::default();
    let d = recon::prepare(&raw, &pc.group, seed)?;
    let obj = raw.object.clone().ok_or("scan has no objectGuess")?;
    let (b, c, n) = (d.len(), d.c, d.n);
    let (mut tre, mut tim, mut rel) = (vec![], vec![], vec![]);
    for g in 0..b {
        for k in 0..c {
            let ((cx, cy), (dx, dy)) = (d.offsets[g], d.rel[g][k]);
            let p = simulate::extract_patch(&obj, cx - dx, cy - dy, n);
            tre.extend(p.iter().map(|z| z.re as f32));
            tim.extend(p.iter().map(|z| z.im as f32));
            rel.extend([dx, dy]);
        }
    }
    let f32a =
        |v: Vec<f32>, s: &[usize]| NpzArray::F32(ndarray::ArrayD::from_shape_vec(s, v).unwrap());
    let f64a =
        |v: Vec<f64>, s: &[usize]| NpzArray::F64(ndarray::ArrayD::from_shape_vec(s, v).unwrap());
    let off: Vec<f64> = d.offsets.iter().flat_map(|&(x, y)| [x, y]).collect();
    let pre: Vec<f32> = raw.probe.iter().map(|z| z.re).collect();
    let pim: Vec<f32> = raw.probe.iter().map(|z| z.im).collect();
    write_npz(
        std::path::Path::new(&dst),
        &[
            ("x", f32a(d.x.clone(), &[b, c, n, n])),
            ("rel", f64a(rel, &[b, c, 2])),
            ("offsets", f64a(off, &[b, 2])),
            ("truth_re", f32a(tre, &[b, c, n, n])),
            ("truth_im", f32a(tim, &[b, c, n, n])),
            ("probe_re", f32a(pre, &[n, n])),
            ("probe_im", f32a(pim, &[n, n])),
        ],
        true,
    )?;
    println!("{b} groups of {c} × {n}×{n} -> {dst}");
    Ok(())
}
