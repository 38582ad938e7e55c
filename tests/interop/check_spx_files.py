"""Read files written by spx with astropy, numpy and h5py; exit 1 on any mismatch."""
import sys
from pathlib import Path

import h5py
import numpy as np
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).parent))
import formulas as F  # noqa: E402

d = Path(sys.argv[1])
failures = []


def check(name, got, want):
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype or not np.array_equal(got, want):
        failures.append(f"{name}: got {got.dtype}{got.shape} {got.ravel()[:4]}, want {want.dtype}{want.shape} {want.ravel()[:4]}")


with fits.open(d / "spx.fits") as h:
    check("fits FLUX", h["FLUX"].data.astype(np.float32), F.cube())
    if h["FLUX"].data.dtype.kind != "f" or h["FLUX"].data.dtype.itemsize != 4:
        failures.append(f"fits FLUX dtype {h['FLUX'].data.dtype}")
    check("fits WAVE", h["WAVE"].data.astype(np.float64), F.wave())
    check("fits NEXP", h[0].header["NEXP"], 9)
    check("fits BUNIT", h["FLUX"].header["BUNIT"], "1e-17 erg/s/cm2/Ang")
    t = h["OBSINFO"].data
    check("fits OBSINFO.SEEING", np.asarray(t["SEEING"], dtype=np.float64), F.coords())
    check("fits OBSINFO.NAME", [s.strip() for s in t["NAME"]], [f"exp{i}" for i in range(6)])

z = np.load(d / "spx.npz")
check("npz cube", z["cube"], F.cube())
check("npz wave", z["wave"], F.wave())
check("npz probeGuess", z["probeGuess"], F.probe())
check("npz ids", z["ids"], F.ids())

with h5py.File(d / "spx.h5", "r") as h:
    ds = h["spectra"]
    check("h5 spectra", ds[...], F.spectra())
    if ds.compression != "gzip" or ds.chunks is None:
        failures.append(f"h5 spectra: chunks={ds.chunks} compression={ds.compression}")
    check("h5 modality", h["modality"][...], F.modality())
    check("h5 probe", h["group/probe"][...], F.probe())
    check("h5 attr n_points", h.attrs["n_points"], 64)
    check("h5 attr creator", h.attrs["creator"].decode() if isinstance(h.attrs["creator"], bytes) else h.attrs["creator"], "spx")
    names = [n.decode() if isinstance(n, bytes) else n for n in h["source_files"][...]]
    check("h5 source_files", names, F.names())
    layout = (ds.shape, str(ds.dtype), ds.chunks, ds.compression, ds.shuffle, ds.maxshape)
    if layout != ((300, 64), "float32", (64, 64), "gzip", True, (None, 64)):
        failures.append(f"h5 spectra layout: {layout}")
    if h["modality"].dtype != np.int8 or h["group/probe"].dtype != np.complex64:
        failures.append(f"h5 dtypes: {h['modality'].dtype} {h['group/probe'].dtype}")
    if h.attrs["n_points"].dtype != np.int64:
        failures.append(f"h5 attr n_points dtype {h.attrs['n_points'].dtype}")
    check("h5 attr scale", h["spectra"].attrs["scale"], 0.25)

# Every file the spx binary writes with HDF5 (corpus synth, corpus build, demo) opens in h5py.
for extra in sorted(d.glob("cli_*.h5")):
    with h5py.File(extra, "r") as h:
        sp = h["spectra"]
        n = int(h.attrs["corpus_size"])
        if sp.shape != (n, int(h.attrs["target_points"])) or sp.dtype != np.float32:
            failures.append(f"{extra.name}: spectra {sp.shape} {sp.dtype}, corpus_size {n}")
        if sp.compression != "gzip" or sp.chunks is None or sp.maxshape[0] is not None:
            failures.append(f"{extra.name}: spectra chunks={sp.chunks} compression={sp.compression} maxshape={sp.maxshape}")
        for key, dtype in (("modality", np.int8), ("source_id", np.int16), ("file_index", np.int32)):
            if h[key].shape != (n,) or h[key].dtype != dtype:
                failures.append(f"{extra.name}: {key} {h[key].shape} {h[key].dtype}")
        if h["original_range"].shape != (n, 2) or h.attrs["normalization"] != "snv":
            failures.append(f"{extra.name}: original_range {h['original_range'].shape} normalization {h.attrs['normalization']!r}")
        x = sp[...]
        if n and not (np.all(np.isfinite(x)) and np.allclose(x.mean(axis=1), 0, atol=1e-4) and np.allclose(x.std(axis=1), 1, atol=1e-3)):
            failures.append(f"{extra.name}: spectra are not SNV-normalised")
        names = [s.decode() if isinstance(s, bytes) else s for s in h["modality_names"][...]]
        if names != ["IR", "RAMAN", "NIR", "FTIR", "UNKNOWN"]:
            failures.append(f"{extra.name}: modality_names {names}")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print("python read spx files: all values match")
