"""PyTorch twins of spx's DIP U-Net (src/dip/unet.rs) and PtychoPINN network
(src/ptycho/model.rs + physics.rs): same layers, same parameter count (printed), same inputs,
loss and optimiser as `conv_profile step` (examples/diag/conv_profile.rs).

    python twins.py pinn|dip STEPS THREADS

prints one JSON line: wall and CPU (process_time, all threads) milliseconds per training step
after 2 warm-up steps. A benchmark-only peer: spx never needs torch to build or test.
"""

import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------- DIP U-Net (1-D)
L, FILTERS, DEPTH, K, SLOPE = 3000, 32, 3, 3, 0.2


class ConvBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        # reflect-padded k-tap convs (spx fuses the reflection into its im2col)
        self.c1 = nn.Conv1d(cin, cout, K, padding=K // 2, padding_mode="reflect")
        self.c2 = nn.Conv1d(cout, cout, K, padding=K // 2, padding_mode="reflect")

    def forward(self, x):
        x = F.leaky_relu(self.c1(x), SLOPE)
        return F.leaky_relu(self.c2(x), SLOPE)


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        f = FILTERS
        self.inc = ConvBlock(1, f)
        self.downs = nn.ModuleList(ConvBlock(f << (i - 1), f << i) for i in range(1, DEPTH + 1))
        self.ups = nn.ModuleList(
            ConvBlock(3 * (f << (DEPTH - 1 - i)), f << (DEPTH - 1 - i)) for i in range(DEPTH)
        )
        self.sizes = [L >> (DEPTH - 1 - i) for i in range(DEPTH)]
        self.head = nn.Conv1d(f, 1, 1)

    def forward(self, z):
        x = self.inc(z)
        skips = []
        for d in self.downs:
            skips.append(x)
            x = d(F.max_pool1d(x, 2))
        for u, size in zip(self.ups, self.sizes):
            up = F.interpolate(x, size=size, mode="linear", align_corners=True)
            x = u(torch.cat([up, skips.pop()], 1))
        return F.softplus(self.head(x))


def dip_setup():
    torch.manual_seed(1)
    net = UNet()
    z = 0.1 * torch.randn(1, 1, L)
    y = (1.0 + 0.5 * torch.sin(torch.arange(L, dtype=torch.float32) * 0.01)).reshape(1, 1, L)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = ((net(z) - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss.item()

    return net, step


# ---------------------------------------------------------------- PtychoPINN (2-D)
B, C, N = 16, 4, 64
SCALE = 2  # configs/ptycho.toml n_filters_scale
LEVELS = max(int(math.log2(N // 8)), 1)
BASE = SCALE * 32 * 64 // N
ENC = [BASE << i for i in range(LEVELS)]
DEC = list(reversed(ENC[:-1]))
BORDER = SCALE * 2048 // N
NPHOT = 1e9


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
    def __init__(self):
        super().__init__()
        cin = ENC[-1]
        blocks = []
        for f in DEC:
            blocks.append(DoubleConv(cin, f))
            cin = f
        self.blocks = nn.ModuleList(blocks)
        self.centre = conv3(cin - 4, C)
        self.border_block = DoubleConv(4, BORDER)
        self.border = conv3(BORDER, C)

    def forward(self, x, mask):
        for b in self.blocks:
            x = up2(b(x))
        ch = x.shape[1]
        centre = self.centre(x[:, : ch - 4])
        border = F.silu(self.border(up2(self.border_block(x[:, ch - 4 :]))))
        return centre, border * mask


class PtychoPinn(nn.Module):
    def __init__(self):
        super().__init__()
        enc, cin = [], C
        for f in ENC:
            enc.append(DoubleConv(cin, f))
            cin = f
        self.encoder = nn.ModuleList(enc)
        self.amp, self.phase = Decoder(), Decoder()
        self.log_scale = nn.Parameter(torch.tensor([math.log(math.sqrt(NPHOT) / (N / 2))]))

    def forward(self, x, geo, probe_re, probe_im, mask):
        s = self.log_scale.exp().reshape(1, 1, 1, 1)
        h = x / s
        for b in self.encoder:
            h = F.max_pool2d(b(h), 2)
        q = N // 4
        ac, ab = self.amp(h, mask)
        pc, pb = self.phase(h, mask)
        amp = F.pad(torch.sigmoid(ac), (q, q, q, q)) + ab
        phase = F.pad(torch.tanh(pc) * math.pi, (q, q, q, q)) + pb
        re, im = amp * torch.cos(phase), amp * torch.sin(phase)
        re, im = merge_extract(geo, re), merge_extract(geo, im)
        # ψ = P·O, far-field amplitude sqrt(fftshift(|FFT2 ψ|²)/N² + 1e-12)
        pre = re * probe_re - im * probe_im
        pim = re * probe_im + im * probe_re
        f = torch.fft.fft2(torch.complex(pre, pim))
        power = (f.real**2 + f.imag**2) / (N * N)
        power = torch.roll(power, (N // 2, N // 2), (2, 3))
        return (power + 1e-12).sqrt() * s


def shift_matrix(n_out, n_in, pad_in, start_out, t):
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        s = start_out + i - t - pad_in
        f = math.floor(s)
        a = s - f
        for j, w in ((f, 1.0 - a), (f + 1, a)):
            if 0 <= j < n_in and w != 0.0:
                m[i, j] += w
    return m


def geometry(rel, padded):
    pad = (padded - N) // 2
    my, mxt, ey, ext = [], [], [], []
    norm = torch.zeros(B, 1, padded, padded, dtype=torch.float64)
    lo, hi = N // 4, N // 4 + N // 2
    for g, group in enumerate(rel):
        rows = ([], [], [], [])
        for dx, dy in group:
            ry = shift_matrix(padded, N, pad, 0.0, -dy)
            rx = shift_matrix(padded, N, pad, 0.0, -dx)
            norm[g, 0] += torch.outer(ry[:, lo:hi].sum(1), rx[:, lo:hi].sum(1)).double()
            rows[0].append(ry)
            rows[1].append(rx.T)
            rows[2].append(shift_matrix(N, padded, 0.0, pad, dy))
            rows[3].append(shift_matrix(N, padded, 0.0, pad, dx).T)
        for acc, r in zip((my, mxt, ey, ext), rows):
            acc.append(torch.stack(r))
    return dict(
        merge_y=torch.stack(my),
        merge_xt=torch.stack(mxt),
        extract_y=torch.stack(ey),
        extract_xt=torch.stack(ext),
        inv_norm=(1.0 / (norm + 1e-3)).float(),
    )


def merge_extract(geo, t):
    region = (geo["merge_y"] @ t @ geo["merge_xt"]).sum(1, keepdim=True) * geo["inv_norm"]
    return geo["extract_y"] @ region.expand(-1, C, -1, -1) @ geo["extract_xt"]


def pinn_setup():
    torch.manual_seed(1)
    net = PtychoPinn()

    def vals(k, s):
        return torch.tensor([((i * 37 % 101) / 101.0) * s for i in range(k)], dtype=torch.float32)

    probe_re = vals(N * N, 1.0).reshape(1, 1, N, N)
    probe_im = torch.zeros(1, 1, N, N)
    rel = [[((k - 1.5) * 2.0, (i % 3) - 1.0) for k in range(C)] for i in range(B)]
    p = N + (2 - 1) * 4 + 10
    padded = p + (p - N) % 2
    geo = geometry(rel, padded)
    mask = torch.ones(1, 1, N, N)
    mask[:, :, N // 4 : N // 4 + N // 2, N // 4 : N // 4 + N // 2] = 0.0
    x = vals(B * C * N * N, 1.0).reshape(B, C, N, N)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        lam = net(x, geo, probe_re, probe_im, mask) ** 2
        loss = (lam - x**2 * torch.log(lam + 1e-12)).mean()
        loss.backward()
        opt.step()
        return loss.item()

    return net, step


def main():
    net_name, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(threads)
    net, step = (pinn_setup if net_name == "pinn" else dip_setup)()
    params = sum(p.numel() for p in net.parameters())
    for _ in range(2):
        step()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = step()
    w, c = time.perf_counter() - w0, time.process_time() - c0
    print(
        json.dumps(
            {
                "impl": "torch",
                "net": net_name,
                "threads": threads,
                "params": params,
                "steps": steps,
                "ms_per_step": round(1e3 * w / steps, 2),
                "cpu_ms_per_step": round(1e3 * c / steps, 2),
                "last_loss": loss,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
