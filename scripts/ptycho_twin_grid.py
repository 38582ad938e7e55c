"""Grid-mode groups for the PyTorch twin (#16, docs/ptycho-dose.md §6; the paper's dose study:
2×2 members at ±h around a centre, centres on a lattice of pitch `outer`, fixed row-major channel
order) from the objects and probe of spx-simulated NPZs (`spx ptycho simulate`, objectGuess).

    python scripts/ptycho_twin_grid.py OUT_PREFIX h outer nphot obj1.npz [obj2.npz ...]

Writes OUT_PREFIX_train.npz (every lattice group) and OUT_PREFIX_test.npz (256 groups of the
lattice shifted by outer/2) with the keys of examples/diag/ptycho_dump.rs. Integer positions.
"""
import sys, numpy as np
pre, h, outer, nphot = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
objs = [np.load(f) for f in sys.argv[5:]]
P = objs[0]["probeGuess"]; n = P.shape[0]
rng = np.random.default_rng(7)
def groups(O, shift):
    S = O.shape[0]; lo, hi = n // 2 + h + 1, S - n // 2 - h - 1
    cs = np.arange(lo + shift, hi, outer)
    out = []
    for cy in cs:
        for cx in cs:
            out.append((cx, cy))
    return out
def make(shift, limit=None):
    X, R, TR, TI = [], [], [], []
    for d in objs:
        O = d["objectGuess"]
        gs = groups(O, shift)
        if limit: gs = [gs[i] for i in rng.choice(len(gs), min(limit // len(objs), len(gs)), replace=False)]
        for cx, cy in gs:
            xs, rs, ps = [], [], []
            for sy in (-1, 1):
                for sx in (-1, 1):
                    px, py = cx + sx * h, cy + sy * h
                    patch = O[py - n // 2: py + n // 2, px - n // 2: px + n // 2]
                    f = np.fft.fftshift(np.fft.fft2(P * patch))
                    xs.append(np.abs(f) ** 2 / n**2); rs.append((-sx * h, -sy * h)); ps.append(patch)
            X.append(xs); R.append(rs); TR.append([p.real for p in ps]); TI.append([p.imag for p in ps])
    I = np.array(X, np.float64)
    counts = rng.poisson(I * nphot / I.sum((-1, -2)).mean())
    x = np.sqrt(counts / nphot) * (n / 2)
    return dict(x=x.astype(np.float32), rel=np.array(R, np.float64), truth_re=np.array(TR, np.float32),
                truth_im=np.array(TI, np.float32), probe_re=P.real.astype(np.float32), probe_im=P.imag.astype(np.float32),
                offsets=np.zeros((len(X), 2)))
tr = make(0); te = make(outer // 2, 256)
print("train", tr["x"].shape, "test", te["x"].shape, "mean sum x^2", (tr["x"].astype(np.float64)**2).sum((-1,-2)).mean())
np.savez(pre + "_train.npz", **tr); np.savez(pre + "_test.npz", **te)
