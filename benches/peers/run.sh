#!/usr/bin/env bash
# spx against its PyTorch twins (benches/peers/twins.py): PtychoPINN training step (batch 16,
# N 64, C 4) and DIP epoch (3000 px, 32 filters, depth 3), at 1 and 2 threads, spx and torch run
# one after the other, alternated over ROUNDS rounds. Prints every run's JSON line, then the
# median ms per step (wall and CPU) and the ratio spx/torch.
#
#   benches/peers/run.sh [ROUNDS] [PINN_STEPS] [DIP_STEPS]
#
# torch is a benchmark-only dependency: it goes into its own venv ($SPX_PEERS_VENV, default
# ~/.cache/spx-peers-venv), made here from PyPI on first use. torch gets OMP_WAIT_POLICY=PASSIVE
# (spinning OpenMP workers steal the other core on a shared box), spx RAYON_NUM_THREADS.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
PINN_STEPS=${2:-3}
DIP_STEPS=${3:-20}
VENV=${SPX_PEERS_VENV:-$HOME/.cache/spx-peers-venv}
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet torch numpy
fi
cargo build --release --quiet --example conv_profile
BIN="${CARGO_TARGET_DIR:-target}/release/examples/conv_profile"
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
for threads in 1 2; do
    for net in pinn dip; do
        steps=$PINN_STEPS
        [ "$net" = dip ] && steps=$DIP_STEPS
        for _ in $(seq "$ROUNDS"); do
            # dip: the path `spx dip recon` trains (conv_profile's `dipfit`)
            RAYON_NUM_THREADS=$threads "$BIN" step "${net/dip/dipfit}" "$steps" | tee -a "$LOG"
            OMP_NUM_THREADS=$threads OMP_WAIT_POLICY=PASSIVE MKL_NUM_THREADS=$threads \
                "$VENV/bin/python" benches/peers/twins.py "$net" "$steps" "$threads" | tee -a "$LOG"
        done
    done
done
"$VENV/bin/python" - "$LOG" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print("\nnet   threads  params(spx/torch)      spx ms (cpu)      torch ms (cpu)   spx/torch wall  cpu")
for net in ("pinn", "dip"):
    for t in (1, 2):
        sel = lambda impl: [r for r in rows if r["net"] == net and r["threads"] == t and r["impl"] == impl]
        s, p = sel("spx"), sel("torch")
        if not s or not p:
            continue
        med = lambda rs, k: statistics.median(r[k] for r in rs)
        sw, sc, pw, pc = med(s, "ms_per_step"), med(s, "cpu_ms_per_step"), med(p, "ms_per_step"), med(p, "cpu_ms_per_step")
        print(f"{net:5} {t:7}  {s[0]['params']:>9}/{p[0]['params']:<9}  {sw:8.1f} ({sc:7.1f})  {pw:8.1f} ({pc:7.1f})   {sw/pw:10.2f}  {sc/pc:5.2f}")
EOF
