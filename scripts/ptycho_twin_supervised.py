"""Supervised diagnostic for #16 (docs/ptycho-dose.md §6): the twin's PtychoPINN network
(`ptycho_twin_train.Pinn.patches`, no physics) trained DIRECTLY on the true patch amplitudes
(MSE on the central N/2 square, truth / 1.5), reporting the patch-amplitude correlation on
held-out and training groups. If even this does not learn, the data/geometry is at fault,
not the physics loss.

    python scripts/ptycho_twin_supervised.py train_g.npz test_g.npz STEPS [BASE [LOG1P]]

env: SYM=1 symmetrised target (O + O rotated 180°)/2; STD=1 per-pixel standardised input;
LR (1e-3). Inputs from examples/diag/ptycho_dump.rs or scripts/ptycho_twin_grid.py.
"""
import sys, math, time, os
import numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ptycho_twin_train as tw
tr, te = tw.load(sys.argv[1]), tw.load(sys.argv[2])
steps = int(sys.argv[3]); base = int(sys.argv[4]) if len(sys.argv) > 4 else 16
torch.manual_seed(1); torch.set_num_threads(1)
b, c, n, _ = tr["x"].shape
s = math.sqrt(1e9) / (n / 2)
o = dict(inscale=1, log1p=int(sys.argv[5]) if len(sys.argv) > 5 else 0, amp="sigmoid")
net = tw.Pinn(n, c, base, 16, 1e9, o)
opt = torch.optim.Adam(net.parameters(), lr=float(os.environ.get("LR", "1e-3")))
q = n // 4
import os; SYM = int(os.environ.get("SYM", "0"))
def amp_t(d): 
    a = np.sqrt(d["truth_re"]**2 + d["truth_im"]**2)[..., q:3*q, q:3*q] / 1.5
    if SYM: a = 0.5 * (a + a[..., ::-1, ::-1])
    return torch.from_numpy(a.astype(np.float32))
ytr, yte = amp_t(tr), amp_t(te)
xtr, xte = torch.from_numpy(tr["x"]) * s, torch.from_numpy(te["x"]) * s
if int(os.environ.get("STD", "0")):
    mu = xtr.mean((0, 1), keepdim=True); sd = xtr.std((0, 1), keepdim=True) + 1e-6
    xtr = (xtr - mu) / sd; xte = (xte - mu) / sd
    net.log_scale.data.zero_()
mask = torch.ones(1, 1, n, n); mask[:, :, q:3*q, q:3*q] = 0
def cor(a, t):
    a = a - a.mean((-1, -2), keepdim=True); t = t - t.mean((-1, -2), keepdim=True)
    return ((a*t).sum((-1,-2)) / ((a*a).sum((-1,-2)) * (t*t).sum((-1,-2)) + 1e-30).sqrt()).mean().item()
def ev():
    with torch.no_grad():
        a, _ = net.patches(xte, mask); a = a[..., q:3*q, q:3*q]
        at, _ = net.patches(xtr[:256], mask); at = at[..., q:3*q, q:3*q]
    return cor(a, yte), cor(at, ytr[:256]), F.mse_loss(a, yte).item()
rng = np.random.default_rng(1); step = 0; t0 = time.process_time()
while step < steps:
    for i in range(0, b - 15, 16):
        idx = rng.integers(0, b, 16)
        a, _ = net.patches(xtr[idx], mask)
        loss = F.mse_loss(a[..., q:3*q, q:3*q], ytr[idx])
        opt.zero_grad(); loss.backward(); opt.step(); step += 1
        if step % 250 == 0:
            print(step, "held-out corr %.3f train corr %.3f mse %.2e cpu %.0f" % (*ev(), time.process_time() - t0), flush=True)
        if step >= steps: break
