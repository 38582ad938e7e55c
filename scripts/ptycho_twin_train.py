"""Train the PyTorch twin of spx's PtychoPINN (same layers, physics and loss as
benches/peers/twins.py, sizes as arguments) on a scan grouped by `examples/diag/ptycho_dump.rs`,
and report held-out quality every few hundred steps: the Poisson deviance per pixel (noise
alone gives about 0.5) and the correlation of the predicted patch amplitudes with the truth.

    python scripts/ptycho_twin_train.py train_g.npz test_g.npz NPHOTONS STEPS [key=value ...]

keys: base (first encoder filters, 16), border (16), lr (1e-3), batch (16), loss (nll|mae),
eval (200), seed (1), amp (sigmoid|silu), inscale (1: divide the input by exp(log_scale)),
log1p (0: feed log1p(X) to the encoder instead of X), order (0: as dumped; 1: channels
row-major by position, spx's ptycho.group.order = "grid"; 2: shuffled per group, seed 5).
Needs torch + numpy (/root/.cache/spx-peers-venv).
"""

import math
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3(cin, cout):
    c = nn.Conv2d(cin, cout, 3, padding=1)
    nn.init.xavier_uniform_(c.weight)
    nn.init.zeros_(c.bias)
    return c


class DoubleConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.a, self.b = conv3(cin, cout), conv3(cout, cout)

    def forward(self, x):
        return F.relu(self.b(F.relu(self.a(x))))


def up2(x):
    return F.interpolate(x, scale_factor=2, mode="nearest")


class Decoder(nn.Module):
    def __init__(self, enc, dec, c, border):
        super().__init__()
        cin = enc[-1]
        self.blocks = nn.ModuleList()
        for f in dec:
            self.blocks.append(DoubleConv(cin, f))
            cin = f
        self.centre = conv3(cin - 4, c)
        self.border_block = DoubleConv(4, border)
        self.border = conv3(border, c)

    def forward(self, x, mask):
        for b in self.blocks:
            x = up2(b(x))
        ch = x.shape[1]
        centre = self.centre(x[:, : ch - 4])
        border = F.silu(self.border(up2(self.border_block(x[:, ch - 4 :]))))
        return centre, border * mask


class Pinn(nn.Module):
    def __init__(self, n, c, base, border, nphot, opts):
        super().__init__()
        levels = max(int(math.log2(n // 8)), 1)
        enc = [base << i for i in range(levels)]
        dec = list(reversed(enc[:-1]))
        self.n, self.opts = n, opts
        self.encoder = nn.ModuleList()
        cin = c
        for f in enc:
            self.encoder.append(DoubleConv(cin, f))
            cin = f
        self.amp, self.phase = Decoder(enc, dec, c, border), Decoder(enc, dec, c, border)
        self.log_scale = nn.Parameter(torch.tensor([math.log(math.sqrt(nphot) / (n / 2))]))

    def patches(self, x, mask):
        s = self.log_scale.exp().reshape(1, 1, 1, 1)
        h = x / s if self.opts["inscale"] else x
        if self.opts["log1p"]:
            h = torch.log1p(h)
        for b in self.encoder:
            h = F.max_pool2d(b(h), 2)
        q = self.n // 4
        ac, ab = self.amp(h, mask)
        pc, pb = self.phase(h, mask)
        act = torch.sigmoid if self.opts["amp"] == "sigmoid" else F.silu
        amp = F.pad(act(ac), (q, q, q, q)) + ab
        phase = F.pad(torch.tanh(pc) * math.pi, (q, q, q, q)) + pb
        return amp, phase

    def forward(self, x, geo, pre, pim, mask):
        amp, phase = self.patches(x, mask)
        re, im = amp * torch.cos(phase), amp * torch.sin(phase)
        re, im = merge_extract(geo, re), merge_extract(geo, im)
        return diffract(re, im, pre, pim) * self.log_scale.exp()


def diffract(re, im, pre, pim):
    n = re.shape[-1]
    f = torch.fft.fft2(torch.complex(re * pre - im * pim, re * pim + im * pre))
    power = torch.roll((f.real**2 + f.imag**2) / (n * n), (n // 2, n // 2), (2, 3))
    return (power + 1e-12).sqrt()


def shift_matrix(n_out, n_in, pad_in, start_out, t):
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        s = start_out + i - t - pad_in
        f = math.floor(s)
        a = s - f
        for j, w in ((f, 1.0 - a), (f + 1, a)):
            if 0 <= j < n_in and w != 0.0:
                m[i, j] += w
    return m


def geometry(rel, n, padded):
    pad = (padded - n) // 2
    lo, hi = n // 4, n // 4 + n // 2
    b, c = rel.shape[:2]
    my = np.zeros((b, c, padded, n), np.float32)
    mxt = np.zeros((b, c, n, padded), np.float32)
    ey = np.zeros((b, c, n, padded), np.float32)
    ext = np.zeros((b, c, padded, n), np.float32)
    norm = np.zeros((b, 1, padded, padded))
    for g in range(b):
        for k in range(c):
            dx, dy = rel[g, k]
            ry = shift_matrix(padded, n, pad, 0.0, -dy)
            rx = shift_matrix(padded, n, pad, 0.0, -dx)
            norm[g, 0] += np.outer(ry[:, lo:hi].sum(1), rx[:, lo:hi].sum(1))
            my[g, k], mxt[g, k] = ry, rx.T
            ey[g, k] = shift_matrix(n, padded, 0.0, pad, dy)
            ext[g, k] = shift_matrix(n, padded, 0.0, pad, dx).T
    t = torch.from_numpy
    return dict(my=t(my), mxt=t(mxt), ey=t(ey), ext=t(ext),
                inv=t((1.0 / (norm + 1e-3)).astype(np.float32)))


def merge_extract(geo, t):
    c = t.shape[1]
    region = (geo["my"] @ t @ geo["mxt"]).sum(1, keepdim=True) * geo["inv"]
    return geo["ey"] @ region.expand(-1, c, -1, -1) @ geo["ext"]


def load(path):
    d = np.load(path)
    return {k: d[k] for k in d.files}


def grid_order(d):
    """spx's `ptycho.group.order = "grid"`: each group's channels row-major by position
    (rows by y, then x; position = centroid - rel)."""
    rel = d["rel"]
    b, c = rel.shape[:2]
    g = int(round(math.sqrt(c)))
    pos = -rel
    for i in range(b):
        idx = np.argsort(pos[i, :, 1], kind="stable")
        rows = [sorted(idx[r * g:(r + 1) * g], key=lambda k: pos[i, k, 0]) for r in range(g)]
        perm = np.array([k for r in rows for k in r])
        for key in ("x", "rel", "truth_re", "truth_im"):
            d[key][i] = d[key][i][perm]


def main():
    train, test = load(sys.argv[1]), load(sys.argv[2])
    nphot, steps = float(sys.argv[3]), int(sys.argv[4])
    o = dict(base=16, border=16, lr=1e-3, batch=16, loss="nll", eval=200, seed=1,
             amp="sigmoid", inscale=1, log1p=0, order=0)
    for kv in sys.argv[5:]:
        k, v = kv.split("=")
        o[k] = type(o[k])(v) if not isinstance(o[k], str) else v
    if o["order"] == 1:
        for d in (train, test):
            grid_order(d)
    if o["order"] == 2:
        r = np.random.default_rng(5)
        for d in (train, test):
            for i in range(len(d["x"])):
                perm = r.permutation(d["x"].shape[1])
                for key in ("x", "rel", "truth_re", "truth_im"):
                    d[key][i] = d[key][i][perm]
    torch.manual_seed(o["seed"])
    torch.set_num_threads(1)
    b, c, n, _ = train["x"].shape
    gs = int(round(math.sqrt(c)))
    p = n + (gs - 1) * 4 + 10
    padded = p + (p - n) % 2
    s = math.sqrt(nphot) / (n / 2)
    # model probe: P / (4 · mean over N×N of |P|·[r < N/4])
    pr = torch.from_numpy(train["probe_re"]).float()
    pi = torch.from_numpy(train["probe_im"]).float()
    yy, xx = np.meshgrid(np.arange(n) - n // 2 + 0.5, np.arange(n) - n // 2 + 0.5, indexing="ij")
    disk = torch.from_numpy((np.sqrt(xx**2 + yy**2) < n // 4).astype(np.float32))
    div = 4.0 * float((torch.sqrt(pr**2 + pi**2) * disk).sum()) / (n * n)
    pr, pi = (pr / div).reshape(1, 1, n, n), (pi / div).reshape(1, 1, n, n)
    mask = torch.ones(1, 1, n, n)
    mask[:, :, n // 4: n // 4 + n // 2, n // 4: n // 4 + n // 2] = 0.0
    net = Pinn(n, c, o["base"], o["border"], nphot, o)
    opt = torch.optim.Adam(net.parameters(), lr=o["lr"])
    xtr = torch.from_numpy(train["x"]) * s
    xte = torch.from_numpy(test["x"]) * s
    geo_te = [geometry(test["rel"][i:i + 64], n, padded) for i in range(0, len(xte), 64)]
    tamp = np.sqrt(test["truth_re"] ** 2 + test["truth_im"] ** 2)[..., n // 4: 3 * n // 4, n // 4: 3 * n // 4]
    rng = np.random.default_rng(o["seed"])

    def evaluate():
        dev, cors = [], []
        with torch.no_grad():
            for k, i in enumerate(range(0, len(xte), 64)):
                x = xte[i:i + 64]
                pred = net(x, geo_te[k], pr, pi, mask)
                lam = pred.double() ** 2 + 1e-12
                y = x.double() ** 2
                sat = torch.where(y > 0, y - y * torch.log(y.clamp_min(1e-300)), torch.zeros_like(y))
                dev.append((lam - y * torch.log(lam) - sat).mean().item())
                amp, _ = net.patches(x, mask)
                a = amp.numpy()[..., n // 4: 3 * n // 4, n // 4: 3 * n // 4]
                t = tamp[i:i + 64]
                for g in range(a.shape[0]):
                    for ch in range(c):
                        u, v = a[g, ch] - a[g, ch].mean(), t[g, ch] - t[g, ch].mean()
                        cors.append(float((u * v).sum() / math.sqrt((u * u).sum() * (v * v).sum() + 1e-30)))
        return float(np.mean(dev)), float(np.mean(cors))

    t0 = time.process_time()
    print(f"step 0 deviance/px {evaluate()[0]:.4g} corr {evaluate()[1]:.3f}", flush=True)
    step = 0
    while step < steps:
        order = rng.permutation(b)
        for i in range(0, b - o["batch"] + 1, o["batch"]):
            idx = order[i:i + o["batch"]]
            geo = geometry(train["rel"][idx], n, padded)
            x = xtr[idx]
            pred = net(x, geo, pr, pi, mask)
            if o["loss"] == "nll":
                lam = pred**2
                loss = (lam - x**2 * torch.log(lam + 1e-12)).mean()
            else:
                loss = (pred - x).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % o["eval"] == 0 or step == steps:
                d, cr = evaluate()
                print(f"step {step} deviance/px {d:.4g} corr {cr:.3f} scale {net.log_scale.exp().item():.1f} "
                      f"cpu {time.process_time() - t0:.0f}s", flush=True)
            if step >= steps:
                break


if __name__ == "__main__":
    main()
