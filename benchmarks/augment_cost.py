"""Cost of the on-device augmentation of one training batch, variants interleaved in one process.

    python benchmarks/augment_cost.py [--batch 256] [--rounds 200]

The recipe's affine transform (±10°, ±2 px, ±10%), the same with an elastic distortion (1.5 px, sigma 4), and the
elastic distortion alone, on random images. Prints the median time per batch over rounds (first 10 dropped).
"""
import argparse
import statistics
import time

import torch

from odenet.data import random_affine

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=256)
p.add_argument("--rounds", type=int, default=200)
a = p.parse_args()
torch.manual_seed(0)
x = torch.randn(a.batch, 1, 28, 28)
variants = {
    "affine (recipe)": dict(rotate=10, translate=2, scale=0.1),
    "affine + elastic 1.5 px": dict(rotate=10, translate=2, scale=0.1, elastic=1.5),
    "elastic 1.5 px only": dict(rotate=0, translate=0, scale=0, elastic=1.5),
}
times = {k: [] for k in variants}
for _ in range(a.rounds):
    for k, kw in variants.items():
        t = time.perf_counter()
        random_affine(x, background=-0.42, **kw)
        times[k].append((time.perf_counter() - t) * 1000)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {a.batch}")
print("| augmentation | ms per batch (median) |")
print("|---|---|")
for k in variants:
    print(f"| {k} | {statistics.median(times[k][10:]):.2f} |")
