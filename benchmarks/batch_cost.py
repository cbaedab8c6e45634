"""Cost per image of one training step of the seed's network at several batch sizes, interleaved in one process.

    python benchmarks/batch_cost.py [--batches 64 128 256 512] [--rounds 8]

rk4 with step 0.25 (16 NFE forward and backward, the same work per image at every batch size), adjoint, AdamW,
random images: only the per-image cost is measured, not accuracy. Prints the median over rounds (first 2 dropped).
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from odenet.model import NeuralODEModel
from odenet.train import make_optimizer

p = argparse.ArgumentParser()
p.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512])
p.add_argument("--rounds", type=int, default=8)
a = p.parse_args()
torch.manual_seed(0)
setups = {}
for b in a.batches:
    m = NeuralODEModel(method="rk4", step_size=0.25)
    setups[b] = (m, make_optimizer(m, 1e-3, "adamw", 0.05), torch.randn(b, 1, 28, 28), torch.randint(0, 10, (b,)))
times = {b: [] for b in a.batches}
for _ in range(a.rounds):
    for b, (m, opt, x, y) in setups.items():
        t = time.perf_counter()
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times[b].append((time.perf_counter() - t) / b * 1000)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
print("| batch | ms per image (median) | vs first |")
print("|---|---|---|")
base = statistics.median(times[a.batches[0]][2:])
for b in a.batches:
    med = statistics.median(times[b][2:])
    print(f"| {b} | {med:.3f} | {med / base:.2f}x |")
