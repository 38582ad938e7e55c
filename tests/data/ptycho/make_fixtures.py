# Makes the tiny raw-NPZ fixtures read by tests/ptycho.rs (run from this folder with numpy).
import json
import numpy as np

n, h, w = 5, 4, 4
i, r, c = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
diff = (100 * i + 10 * r + c).astype(np.float32)          # diff[i, r, c] = 100 i + 10 r + c
x = np.array([10.0, 11.5, 13.25, 9.0, 12.0])              # float64
y = np.array([20.0, 21.0, 19.5, 22.75, 20.5])
yy, xx = np.mgrid[0:h, 0:w]
probe = (yy + 1j * xx).astype(np.complex64)                # probe[r, c] = r + i c
obj = np.full((8, 8), 1 + 0.5j, dtype=np.complex64)
scan = np.arange(n, dtype=np.int64)

np.savez_compressed("raw_diff3d.npz", xcoords=x, ycoords=y, diff3d=diff, probeGuess=probe,
                    objectGuess=obj, scan_index=scan, xcoords_start=x + 0.25, ycoords_start=y - 0.25)
np.savez("raw_diffraction.npz", xcoords=x, ycoords=y, diffraction=diff, probeGuess=probe)
np.savez_compressed("raw_hwn.npz", xcoords=x, ycoords=y,
                    diff3d=np.ascontiguousarray(diff.transpose(1, 2, 0)), probeGuess=probe)
meta = json.dumps({"schema_version": "1.0.0", "physics_parameters": {"nphotons": 1e9, "N": 4}})
np.savez_compressed("raw_metadata.npz", xcoords=x, ycoords=y, diff3d=diff, probeGuess=probe,
                    _metadata=np.array(meta, dtype=object))
# > 255 characters: pickled with BINUNICODE ('X', 4-byte length) instead of SHORT_BINUNICODE.
long_meta = json.dumps({"schema_version": "1.0.0", "notes": "x" * 400})
np.savez_compressed("raw_metadata_long.npz", xcoords=x, ycoords=y, diff3d=diff, probeGuess=probe,
                    _metadata=np.array(long_meta, dtype=object))
