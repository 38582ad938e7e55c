"""Values both sides write and expect (mirrored in tests/interop.rs)."""
import numpy as np


def cube():  # (3, 4, 5) float32
    i, j, k = np.indices((3, 4, 5))
    return (i * 100 + j * 10 + k * 0.5).astype(np.float32)


def wave():  # (50,) float64
    return 3600.0 + 100.0 * np.arange(50)


def probe():  # (4, 4) complex64
    r, c = np.indices((4, 4))
    return (r + 1j * (c - 0.5 * r)).astype(np.complex64)


def coords():  # (6,) float64
    return np.arange(6, dtype=np.float64) * 1.5 - 2.0


def ids():  # (5,) int64
    return np.array([3, -1, 4, -1, 5], dtype=np.int64)


def spectra(n_rows=300):  # (n_rows, 64) float32, exact in binary
    r, t = np.indices((n_rows, 64))
    return ((r * 64 + t) * 0.25).astype(np.float32)


def modality(n_rows=300):
    return (np.arange(n_rows) % 5).astype(np.int8)


def names():
    return ["a.jdx", "b/c.csv", "naïve.txt"]
