//! I/O helpers: atomic writes, FITS/NPZ round trips, PNG plots.

use std::io::Write;

use ndarray::{Array1, Array2, ArrayD, IxDyn};
use num_complex::Complex32;
use spx::io::{fits, npz, plot, with_atomic_path, write_atomic};

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn atomic_write_leaves_nothing_when_writer_fails_midway() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("out.bin");
    let r = write_atomic(&p, |w| {
        w.write_all(&[1u8; 100_000])?;
        Err(std::io::Error::other("disk on fire"))
    });
    let err = r.unwrap_err().to_string();
    assert!(
        err.contains("out.bin") && err.contains("disk on fire"),
        "{err}"
    );
    assert!(
        entries(dir.path()).is_empty(),
        "left behind: {:?}",
        entries(dir.path())
    );

    // An existing result survives a failed rewrite untouched.
    write_atomic(&p, |w| w.write_all(b"good")).unwrap();
    let _ = write_atomic(&p, |w| {
        w.write_all(b"bad partial")?;
        Err(std::io::Error::other("stop"))
    });
    assert_eq!(std::fs::read(&p).unwrap(), b"good");
    assert_eq!(entries(dir.path()), vec!["out.bin"]);
}

#[test]
fn atomic_path_removes_partial_file_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cube.fits");
    let r: Result<(), _> = with_atomic_path(&p, |tmp| {
        std::fs::write(tmp, b"half a cube").unwrap();
        Err(spx::SpxError::file(&p, "failed mid-way"))
    });
    assert!(r.is_err());
    assert!(
        entries(dir.path()).is_empty(),
        "left behind: {:?}",
        entries(dir.path())
    );

    // A FITS writer failing after writing one HDU leaves nothing either.
    let r = fits::write_fits(&p, |w| {
        w.image_f32("A", &ArrayD::zeros(IxDyn(&[4, 4])), &[])?;
        w.table(
            "T",
            &[
                fits::Column::F64("X".into(), vec![1.0, 2.0]),
                fits::Column::F64("Y".into(), vec![1.0]),
            ],
            &[],
        )
    });
    let err = r.unwrap_err().to_string();
    assert!(err.contains("T.Y") && err.contains("cube.fits"), "{err}");
    assert!(
        entries(dir.path()).is_empty(),
        "left behind: {:?}",
        entries(dir.path())
    );
}

#[test]
fn fits_round_trip_images_tables_cards() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.fits");
    let cube = ArrayD::from_shape_fn(IxDyn(&[3, 4, 5]), |ix| {
        (ix[0] * 100 + ix[1] * 10 + ix[2]) as f32 * 0.5
    });
    let img64 = Array2::from_shape_fn((2, 3), |(r, c)| r as f64 - 1.5 * c as f64).into_dyn();
    let mask = ArrayD::from_shape_fn(IxDyn(&[2, 2]), |ix| 1i32 << (ix[0] + 2 * ix[1]));
    fits::write_fits(&p, |w| {
        w.primary_card("NEXP", 9i64)?;
        w.primary_card("IFURA", 205.4384)?;
        w.primary_card("OBJECT", "test")?;
        w.image_f32("FLUX", &cube, &[("BUNIT", "1e-17 erg/s/cm2/A".into())])?;
        w.image_f64("WAVE", &img64, &[])?;
        w.image_i32("MASK", &mask, &[])?;
        w.table(
            "OBSINFO",
            &[
                fits::Column::F64("SEEING".into(), vec![1.1, 1.25]),
                fits::Column::I64("EXPNUM".into(), vec![177, 178]),
                fits::Column::Str("PLATE".into(), vec!["8485".into(), "8485-12".into()]),
            ],
            &[],
        )
    })
    .unwrap();

    let mut r = fits::FitsReader::open(&p).unwrap();
    assert_eq!(
        r.hdu_names(),
        vec!["PRIMARY", "FLUX", "WAVE", "MASK", "OBSINFO"]
    );
    assert_eq!(r.image_shape("FLUX").unwrap(), vec![3, 4, 5]);
    assert_eq!(r.image_f32("FLUX").unwrap(), cube);
    assert_eq!(r.image_f64("WAVE").unwrap(), img64);
    assert_eq!(r.image_i32("MASK").unwrap(), mask);
    assert_eq!(r.card_i64("PRIMARY", "NEXP").unwrap(), 9);
    assert_eq!(r.card_f64("PRIMARY", "IFURA").unwrap(), 205.4384);
    assert_eq!(r.card_str("PRIMARY", "OBJECT").unwrap(), "test");
    assert_eq!(r.card_str("FLUX", "BUNIT").unwrap(), "1e-17 erg/s/cm2/A");
    assert_eq!(r.col_f64("OBSINFO", "SEEING").unwrap(), vec![1.1, 1.25]);
    assert_eq!(r.col_i64("OBSINFO", "EXPNUM").unwrap(), vec![177, 178]);
    assert_eq!(
        r.col_str("OBSINFO", "PLATE").unwrap(),
        vec!["8485", "8485-12"]
    );

    let err = r.image_f32("IVAR").unwrap_err().to_string();
    assert!(err.contains("t.fits") && err.contains("IVAR"), "{err}");
    let err = r.col_f64("OBSINFO", "PSFFAC").unwrap_err().to_string();
    assert!(err.contains("OBSINFO.PSFFAC"), "{err}");
    let err = fits::FitsReader::open(&dir.path().join("missing.fits"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing.fits"), "{err}");
}

#[test]
fn npz_round_trip_all_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.npz");
    let f32a = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |ix| (ix[0] + ix[1] * ix[2]) as f32 / 3.0);
    let f64a = Array1::linspace(-1.0, 1.0, 7).into_dyn();
    let i64a = ArrayD::from_shape_fn(IxDyn(&[5]), |ix| ix[0] as i64 * -3);
    let c64a = ArrayD::from_shape_fn(IxDyn(&[2, 2]), |ix| {
        Complex32::new(ix[0] as f32, -(ix[1] as f32) * 0.5)
    });
    for compressed in [false, true] {
        npz::write_npz(
            &p,
            &[
                ("f", npz::NpzArray::F32(f32a.clone())),
                ("d", npz::NpzArray::F64(f64a.clone())),
                ("i", npz::NpzArray::I64(i64a.clone())),
                ("probeGuess", npz::NpzArray::C64(c64a.clone())),
            ],
            compressed,
        )
        .unwrap();
        let mut r = npz::NpzFile::open(&p).unwrap();
        assert_eq!(r.f32("f").unwrap(), f32a);
        assert_eq!(r.f64("d").unwrap(), f64a);
        assert_eq!(r.i64("i").unwrap(), i64a);
        assert_eq!(r.c64("probeGuess").unwrap(), c64a);
        assert_eq!(r.real_f64("f").unwrap(), f32a.mapv(f64::from));
        let err = r.f32("diff3d").unwrap_err().to_string();
        assert!(err.contains("a.npz") && err.contains("diff3d"), "{err}");
        let err = r.i64("f").unwrap_err().to_string();
        assert!(err.contains("`f`"), "{err}");
    }
    std::fs::write(&p, b"PK\x03\x04 not really a zip").unwrap();
    let err = npz::NpzFile::open(&p).err().unwrap().to_string();
    assert!(err.contains("a.npz"), "{err}");
}

fn png_size(path: &std::path::Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let w = u32::from_be_bytes(b[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(b[20..24].try_into().unwrap());
    (w, h)
}

#[test]
fn plots_write_pngs_of_the_requested_size() {
    let dir = tempfile::tempdir().unwrap();
    let x: Vec<f64> = (0..50).map(|i| i as f64 / 10.0).collect();
    let y: Vec<f64> = x.iter().map(|v| v.sin() + 2.0).collect();
    let mut lp = plot::LinePlot::new("t", "x", "y");
    lp.series.push(plot::Series::points_with_errors(
        "pts",
        x.clone(),
        y.clone(),
        vec![0.1; 50],
    ));
    lp.series
        .push(plot::Series::line("line", x.clone(), y.clone()));
    let p = dir.path().join("l.png");
    plot::line_plot(&p, &lp).unwrap();
    assert_eq!(png_size(&p), (1000, 600));
    lp.log_y = true;
    plot::line_plot(&p, &lp).unwrap();

    let img = Array2::from_shape_fn((16, 20), |(r, c)| (r * c) as f64);
    let g = plot::ImageGrid {
        title: "grid".into(),
        panels: (0..3)
            .map(|i| plot::Panel::new(format!("p{i}"), img.clone(), plot::ColorMap::Viridis))
            .collect(),
        ncols: 2,
        cell: (300, 250),
    };
    let p = dir.path().join("g.png");
    plot::image_grid(&p, &g).unwrap();
    assert_eq!(png_size(&p), (600, 2 * 250 + 40));
    let names = entries(dir.path());
    assert_eq!(names, vec!["g.png", "l.png"]);

    let empty = plot::LinePlot::new("t", "x", "y");
    assert!(plot::line_plot(&dir.path().join("e.png"), &empty).is_err());
    assert!(!dir.path().join("e.png").exists());
}

#[test]
fn hdf5_round_trip_chunked_appended_attrs_complex_strings() {
    use spx::io::hdf5::{H5Reader, Layout, write_h5};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.h5");
    let img = Array2::from_shape_fn((100, 30), |(r, c)| (r as f32).sin() + c as f32);
    let z = ArrayD::from_shape_fn(IxDyn(&[3, 2]), |ix| {
        Complex32::new(ix[0] as f32, ix[1] as f32 - 0.25)
    });
    let names: Vec<String> = vec!["a.jdx".into(), "naïve/b.csv".into(), String::new()];
    let rows_written = write_h5(&p, |w| {
        w.dataset(
            "img",
            img.view().into_dyn(),
            &Layout::chunked_gzip(&[16, 30], 4),
        )?;
        w.dataset("deep/er/z", z.view(), &Layout::contiguous())?;
        w.strings("names", &names)?;
        let mut app = w.appendable::<f32>("spectra", 64, 50, Some(4))?;
        let mut ids = w.appendable_1d::<i16>("source_id", 50, None)?;
        for b in 0..7 {
            let block =
                Array2::from_shape_fn((37, 64), |(r, c)| (b * 37 + r) as f32 + c as f32 / 64.0);
            app.append(block.view())?;
            ids.append(&[b as i16; 37])?;
        }
        assert!(app.append(Array2::<f32>::zeros((2, 63)).view()).is_err());
        w.attr_str("/", "creator", "spx")?;
        w.attr_i64("spectra", "n_points", 64)?;
        w.attr_f64("img", "scale", 0.75)?;
        Ok(app.rows())
    })
    .unwrap();
    assert_eq!(rows_written, 7 * 37);

    let r = H5Reader::open(&p).unwrap();
    assert_eq!(r.read::<f32>("img").unwrap(), img.clone().into_dyn());
    assert_eq!(r.chunk("img").unwrap(), Some(vec![16, 30]));
    assert!(r.is_deflated("img").unwrap());
    assert_eq!(r.read::<Complex32>("deep/er/z").unwrap(), z);
    assert_eq!(r.strings("names").unwrap(), names);
    assert_eq!(r.shape("spectra").unwrap(), vec![259, 64]);
    let rows = r.read_rows::<f32>("spectra", 100, 5).unwrap();
    for (i, row) in rows.outer_iter().enumerate() {
        assert_eq!(row[3], (100 + i) as f32 + 3.0 / 64.0);
    }
    assert_eq!(r.read_rows::<f32>("spectra", 257, 10).unwrap().nrows(), 2);
    assert_eq!(r.read::<i16>("source_id").unwrap()[[40]], 1);
    assert_eq!(r.attr_str("/", "creator").unwrap(), "spx");
    assert_eq!(r.attr_i64("spectra", "n_points").unwrap(), 64);
    assert_eq!(r.attr_f64("img", "scale").unwrap(), 0.75);
    let err = r.read::<f32>("nope").unwrap_err().to_string();
    assert!(err.contains("c.h5") && err.contains("nope"), "{err}");
    let err = r.attr_i64("/", "missing").unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");

    // A failing build leaves no file.
    let q = dir.path().join("fail.h5");
    let res: Result<(), _> = write_h5(&q, |w| {
        w.dataset("x", img.view().into_dyn(), &Layout::contiguous())?;
        Err(spx::SpxError::file(&q, "stop"))
    });
    assert!(res.is_err());
    assert!(!q.exists());
    assert_eq!(entries(dir.path()), vec!["c.h5"]);
}
