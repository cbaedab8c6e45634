#!/usr/bin/env bash
# Data-parallel scaling on CPU: one epoch of the seed configuration on 1, 2, 4, 8 gloo processes (one thread
# each), then images/s and test accuracy per process count. Needs as many free cores as the largest count.
#
#   DATA=folder/with/MNIST/raw OUT=results bash benchmarks/ddp_scaling.sh [COUNTS...]
#
# The repository is used in place (PYTHONPATH); SUBSET training images per epoch (default 60000).
set -uo pipefail
OUT=${OUT:-bench-ddp}
DATA=${DATA:?set DATA to a folder holding MNIST/raw/*.gz}
SUBSET=${SUBSET:-60000}
COUNTS=${*:-1 2 4 8}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
echo "cores: $(nproc)  torch: $(python3 -c 'import torch; print(torch.__version__)')" | tee "$OUT/ddp_machine.txt"
for n in $COUNTS; do
  rm -rf "$OUT/ddp-runs/n$n"
  python3 -m torch.distributed.run --standalone --nproc-per-node "$n" -m odenet train --device cpu --epochs 1 \
      --train-subset "$SUBSET" --data-dir "$DATA" --out "$OUT/ddp-runs" --name "n$n" --no-report --no-progress \
      2>&1 | tee "$OUT/ddp-n$n.log" | grep -E "epoch|error"
done
python3 - "$OUT" $COUNTS <<'PY' | tee "$OUT/ddp_scaling.md"
import json, sys
out, counts = sys.argv[1], [int(c) for c in sys.argv[2:]]
rows, base = [], None
for n in counts:
    try:
        r = json.loads(open(f"{out}/ddp-runs/n{n}/metrics.jsonl").read().splitlines()[-1])
    except (OSError, IndexError):
        rows.append(f"| {n} | failed | | | |"); continue
    base = base or r["images_per_s"]
    rows.append(f"| {n} | {r['images_per_s']:.0f} | {r['images_per_s'] / base:.2f}x | {r['epoch_seconds']:.1f} | "
                f"{100 * r['test_acc']:.2f}% |")
print("| processes (1 thread each) | images/s | speed-up | s/epoch | test accuracy after 1 epoch |")
print("|---|---|---|---|---|")
print("\n".join(rows))
PY
