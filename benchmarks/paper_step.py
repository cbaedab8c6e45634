"""Seconds of one training step of the paper's conv ODE-Net (``NeuralODEModel(arch="paper")``) at a few widths.

    python benchmarks/paper_step.py [WIDTH ...]        # default: 16 32 64

Batch 64 of random images, Adam, dopri5 rtol 1e-3 / atol 1e-4 with the adjoint (the model's defaults), freshly
initialized weights; the median of 6 steps and the last step's solver statistics. Run it alone on the machine.
"""
import statistics
import sys
import time

import torch

from odenet.model import NeuralODEModel

torch.manual_seed(0)
x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
for width in [int(w) for w in sys.argv[1:]] or [16, 32, 64]:
    model = NeuralODEModel(width, arch="paper")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    seconds = []
    for _ in range(6):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seconds.append(time.perf_counter() - start)
    s = statistics.median(seconds)
    print(f"width {width}: {s * 1e3:.0f} ms/step, about {s * 938 / 60:.0f} min per epoch of 938 batches; "
          f"{model.stats}", flush=True)
