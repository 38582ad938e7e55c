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

if failures:
    print("\n".join(failures))
    sys.exit(1)
print("python read spx files: all values match")
