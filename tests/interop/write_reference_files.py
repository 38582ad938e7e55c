"""Write reference files with astropy, numpy and h5py for spx's readers."""
import sys
from pathlib import Path

import h5py
import numpy as np
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).parent))
import formulas as F  # noqa: E402

d = Path(sys.argv[1])
d.mkdir(parents=True, exist_ok=True)

prim = fits.PrimaryHDU()
prim.header["NEXP"] = 9
prim.header["IFURA"] = 205.4384
flux = fits.ImageHDU(F.cube(), name="FLUX")
flux.header["BUNIT"] = "1e-17 erg/s/cm2/Ang"
wave = fits.ImageHDU(F.wave(), name="WAVE")
tab = fits.BinTableHDU.from_columns(
    [
        fits.Column(name="SEEING", format="D", array=F.coords()),
        fits.Column(name="NAME", format="8A", array=np.array([f"exp{i}" for i in range(6)])),
    ],
    name="OBSINFO",
)
fits.HDUList([prim, flux, wave, tab]).writeto(d / "ref.fits", overwrite=True)

meta = np.empty((), dtype=object)
meta[()] = {"source": "numpy", "version": 1}
np.savez(d / "ref.npz", cube=F.cube(), wave=F.wave(), probeGuess=F.probe(), ids=F.ids(), _metadata=meta)
np.savez_compressed(d / "ref_compressed.npz", cube=F.cube(), probeGuess=F.probe())

# The same content under h5py's default format and libver='latest' (v3 superblock, v2 object
# headers, dense attribute storage past 8 attributes), in every layout spx must read.
for name, libver in (("ref.h5", None), ("ref_latest.h5", "latest")):
    with h5py.File(d / name, "w", libver=libver) as h:
        h.create_dataset("spectra", data=F.spectra(), chunks=(64, 64), compression="gzip", maxshape=(None, 64))
        h.create_dataset("spectra_contiguous", data=F.spectra())
        h.create_dataset("spectra_fixed", data=F.spectra(), chunks=(50, 64), compression="gzip", shuffle=True)
        h.create_dataset("spectra_be", data=F.spectra().astype(">f8"))
        h.create_dataset("modality", data=F.modality())
        h.create_dataset("group/probe", data=F.probe())
        h.create_dataset("source_files", data=F.names(), dtype=h5py.string_dtype())
        h["spectra"].attrs["scale"] = 0.25
        h.attrs["n_points"] = 64
        h.attrs["creator"] = "h5py"
        h.attrs["fixed"] = np.bytes_("ascii")
        h.attrs["ratio"] = np.float32(1.5)
        h.attrs["big"] = np.array(-7, dtype=">i2")
        for k in range(12):  # enough attributes for dense storage under libver='latest'
            h.attrs[f"extra_{k:02d}"] = k * 10
print("python wrote reference files")
