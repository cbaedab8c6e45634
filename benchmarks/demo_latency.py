"""Latency of one demo prediction on this machine: preprocessing, the flow (41 times, dense output), the
"not a digit" score and both figures written as PNG files, as the page does on every stroke.

    python benchmarks/demo_latency.py [--n 30] [--solver dopri5]

Uses the shipped model; digits are real MNIST test images when $ODENET_DATA_DIR holds them, else drawn ones.
"""
import argparse
import os
import statistics
import time

import numpy as np
import torch

from odenet.bench.common import machine
import shutil
import tempfile

from odenet.demo import load_predictor
from odenet.images import prepare_image
from odenet.checkpoint import SHIPPED

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, default=30)
p.add_argument("--solver", default="dopri5")
a = p.parse_args()
pred = load_predictor(str(SHIPPED))
pred.out_dir = tempfile.mkdtemp(prefix="odenet-latency-")
try:
    from odenet.data import read_split

    images = read_split("mnist", os.environ["ODENET_DATA_DIR"], False)[0][:a.n]
except (KeyError, Exception):  # noqa: BLE001 - no data: drawn bars
    images = np.zeros((a.n, 28, 28), np.uint8)
    images[:, 4:24, 12:16] = 255
parts = {"preprocess": [], "flow, score, figures and PNG files": [], "total": []}
for i, img in enumerate(np.concatenate([images[:3], images])):  # the first 3 warm up
    t0 = time.perf_counter()
    x = prepare_image(np.kron(img, np.ones((10, 10), np.uint8)))  # a 280x280 canvas, as drawn on the page
    t1 = time.perf_counter()
    pred.render(x, a.solver, 1e-3, 1e-4, 0.1, 1.0)  # what the page does: the flow, the score, two PNG files
    t2 = time.perf_counter()
    if i >= 3:
        for k, v in zip(parts, (t1 - t0, t2 - t1, t2 - t0)):
            v and parts[k].append(v)
print(f"{machine(torch.device('cpu'))}; solver {a.solver}; {a.n} digits")
print("| part | median ms | max ms |\n|---|---|---|")
for k, v in parts.items():
    print(f"| {k} | {statistics.median(v) * 1e3:.0f} | {max(v) * 1e3:.0f} |")
shutil.rmtree(pred.out_dir, ignore_errors=True)
