#!/usr/bin/env bash
# The PtychoPINN dose study at the reference size on a GPU (#16 item 5), everything under one
# folder:  scripts/ptycho_reference_gpu.sh [OUT=ptycho-reference-gpu] [DEVICE=wgpu]
#  1. builds spx with the wgpu backend (cold: ~50 min on 2 cores, minutes on a big machine),
#  2. runs `spx ptycho dose-study --profile reference` (N 64, grid scan, 2000 training groups,
#     50 epochs, reference filter ladder; doses 1e3..1e9 for the FRC50-vs-dose figure),
#  3. measures inference throughput: `spx ptycho infer` on an 8000-position grid scan with the 1e9
#     NLL model (patterns/s = 4 · groups / seconds, stitching and scoring included; the paper's
#     6.1k patterns/s at 64×64 is network-only),
#  4. runs the CPU criterion bench of the same network for comparison.
# Outputs: OUT/study (figure, FRC50 plot, CSV/Markdown/JSON), OUT/throughput.json,
# OUT/bench.txt, OUT/env.txt, OUT/log.txt.
set -euo pipefail
OUT=${1:-ptycho-reference-gpu}
DEVICE=${2:-wgpu}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/log.txt") 2>&1
cd "$ROOT"
{ date -u; uname -a; nproc; command -v nvidia-smi >/dev/null && nvidia-smi -L || true; git rev-parse HEAD; } > "$OUT/env.txt"
cargo build --release --all-targets --features wgpu
SPX=${CARGO_TARGET_DIR:-target}/release/spx
"$SPX" --device "$DEVICE" device
/usr/bin/time -v "$SPX" --device "$DEVICE" --profile reference --out "$OUT/study" \
  ptycho dose-study --doses 1e3,1e4,1e5,1e6,1e9 --resume
"$SPX" --profile reference --out "$OUT/scan" --seed 7 ptycho simulate --positions 8000 --name scan.npz
for i in 1 2; do # the first call warms the device up
  "$SPX" --device "$DEVICE" --profile reference --json --out "$OUT/infer" ptycho infer --model "$OUT/study/1e9/nll" \
    --data "$OUT/scan/scan.npz" > "$OUT/infer_$i.json"
done
python3 - "$OUT" <<'PY'
import json, sys
o = sys.argv[1]
j = json.load(open(f"{o}/infer_2.json"))
r = {"groups": j["groups"], "seconds": j["seconds"],
     "patterns_per_second": 4 * j["groups"] / j["seconds"], "metrics": j["metrics"]}
json.dump(r, open(f"{o}/throughput.json", "w"), indent=1)
print(r)
PY
cargo bench --bench ptycho_pinn -- infer 2>&1 | tee "$OUT/bench.txt"
echo "done: $OUT"
