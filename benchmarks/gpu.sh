#!/usr/bin/env bash
# One prepared call on a GPU machine: correctness checks on the GPU, then plain torchdiffeq vs odenet timed
# side by side (same data, same seed), then the gradient study with CUDA peak memory, then (TABLE1=1) the paper's
# conv ODE-Net at its own width (64 channels) beside the seed's ODE-Net in Table 1's recipe (docs/table1.md).
#
#   DATA=folder/with/MNIST/raw OUT=results bash benchmarks/gpu.sh
#
# Needs python3 with torch (CUDA), torchvision, torchdiffeq, numpy, matplotlib, scikit-learn, pyyaml, tqdm, pytest.
# The repository is used in place (PYTHONPATH), nothing is installed. Takes about 5-7 minutes on an H100/H200 with 16 cores.
set -uo pipefail
OUT=${OUT:-bench-gpu}
DATA=${DATA:?set DATA to a folder holding MNIST/raw/*.gz}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 DATA
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchdiffeq; print('torch', torch.__version__, 'torchdiffeq', torchdiffeq.__version__, torch.cuda.get_device_name())"
# native engine vs torchdiffeq on the GPU: same solutions, gradients within 1e-4 in float64
python3 - <<'PY' 2>&1 | tee "$OUT/checks.txt"
import torch
from odenet.model import NeuralODEModel
from odenet.ode import Solver, integrate
dev = torch.device("cuda")
torch.manual_seed(0)
m = NeuralODEModel().double().to(dev)
z0 = torch.tanh(torch.randn(64, 64, dtype=torch.float64, device=dev)).requires_grad_()
rel = lambda a, b: float((a - b).norm() / b.norm())
for method, kw, bound in (("rk4", dict(step_size=0.05), 1e-8), ("dopri5", dict(rtol=1e-6, atol=1e-8, seminorm=True), 1e-3)):
    # the same typed Solver on both backends: only where it runs differs
    res = {}
    for be in ("native", "torchdiffeq"):
        m.zero_grad(); z0.grad = None
        zT = integrate(m.odefunc, z0, [0.0, 1.0], Solver.of(method=method, backend=be, adjoint=True, **kw)).ys[-1]
        zT.pow(2).sum().backward()
        res[be] = (zT.detach(), torch.cat([z0.grad.flatten()] + [p.grad.flatten() for p in m.odefunc.parameters()]))
    ds, dg = rel(res["native"][0], res["torchdiffeq"][0]), rel(res["native"][1], res["torchdiffeq"][1])
    print(f"GPU check {method}: native vs torchdiffeq, solution rel diff {ds:.2e}, adjoint gradient rel diff {dg:.2e}")
    assert ds < bound and dg < bound, method
PY
# the Python API on the GPU: nothing falls back to the CPU, and the answers are the CPU's
python3 - <<'PY' 2>&1 | tee -a "$OUT/checks.txt"
import os
import torch
import odenet
dev = os.environ.get("ODENET_CHECK_DEVICE", "cuda")
gpu, cpu = odenet.load(device=dev), odenet.load()
x, y = odenet.dataset(n=1000, data_dir=os.environ["DATA"], device=dev)
p = gpu.predict(x)
assert p.device.type == torch.device(dev).type and gpu.trajectory(x[:8], [0.0, 0.5, 1.0]).device == p.device
agree = (p.argmax(1).cpu() == cpu.predict(x.cpu()).argmax(1)).float().mean().item()
print(f"Python API on {dev}: accuracy {(p.argmax(1) == y).float().mean().item():.4f}, agreement with the CPU {agree:.4f},"
      f" {gpu.stats}")
assert agree > 0.999
PY
python3 -m odenet bench speed --device cuda --batches 150 --rounds 3 --full-epoch --data-dir "$DATA" --out "$OUT" 2>&1 | tee "$OUT/speed.log"
python3 -m odenet bench gradients --device cuda --data-dir "$DATA" --out "$OUT" 2>&1 | tee "$OUT/gradients.log"
# data-parallel scaling on the machine's CPU cores (gloo): 1, 2, 4, 8 processes, one thread each
SUBSET=20000 OUT="$OUT" DATA="$DATA" bash benchmarks/ddp_scaling.sh 1 2 4 8 2>&1 | tail -8
# the paper's conv ODE-Net at the paper's width, beside the seed's ODE-Net (docs/table1.md: CPU runs use 16 channels)
if [ "${TABLE1:-0}" = 1 ]; then
  python3 -m odenet bench table1 --device cuda --variants odenet paper --paper-width 64 --epochs "${TABLE1_EPOCHS:-2}" \
    --seeds 0 1 2 --data-dir "$DATA" --out "$OUT" 2>&1 | tee "$OUT/table1.log"
fi
