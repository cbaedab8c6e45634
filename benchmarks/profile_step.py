"""Where one training step's time goes (seed configuration, batch 64), and the CPU's matrix-product rate.

    python benchmarks/profile_step.py          # the split of one step into its parts
    python benchmarks/profile_step.py --ops    # also: how many operators one step dispatches, and the busiest
    python benchmarks/profile_step.py --compile  # also: the step with the fused vjp through torch.compile
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from odenet.model import NeuralODEModel
from odenet.train import make_optimizer

torch.manual_seed(0)
x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
m = NeuralODEModel()
opt = make_optimizer(m, 1e-3)
parts = {k: [] for k in ("encoder forward", "ODE forward", "classifier + loss", "ODE adjoint backward",
                         "encoder backward", "optimizer step")}
nfe = []


def step(mark=lambda: None):
    """One training step; ``mark()`` after each of the six parts."""
    z0 = m.encode(x); mark()
    zd = z0.detach().requires_grad_()
    zT = m.odeblock(zd); mark()
    loss = F.cross_entropy(m.classifier(zT), y); opt.zero_grad(); mark()
    loss.backward(); mark()
    z0.backward(zd.grad); mark()
    opt.step(); mark()


for i in range(60):
    t = [time.perf_counter()]
    step(lambda: t.append(time.perf_counter()))
    if i >= 10:
        for k, a, b in zip(parts, t[:-1], t[1:]):
            parts[k].append(b - a)
        nfe.append((m.stats.nfe_forward, m.stats.nfe_backward))
print(f"{torch.get_num_threads()} torch threads; NFE fwd/bwd {statistics.mean(a for a, _ in nfe):.1f}/"
      f"{statistics.mean(b for _, b in nfe):.1f}\n| part | ms (median) |\n|---|---|")
total = 0.0
for k, v in parts.items():
    total += statistics.median(v) * 1e3
    print(f"| {k} | {statistics.median(v) * 1e3:.2f} |")
print(f"| total | {total:.2f} |")
for mm, k, n in ((64, 128, 128), (64, 64, 128), (1000, 128, 128)):
    a, w = torch.randn(mm, k), torch.randn(k, n)
    for _ in range(100):
        a @ w
    t0 = time.perf_counter()
    for _ in range(2000):
        a @ w
    dt = (time.perf_counter() - t0) / 2000
    print(f"mm {mm}x{k}x{n}: {dt * 1e6:.1f} us, {2 * mm * k * n / dt / 1e9:.0f} GFLOP/s")

if "--ops" in sys.argv:
    from torch.profiler import ProfilerActivity, profile

    steps = 20
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    calls = sum(e.count for e in events)
    self_us = sum(e.self_cpu_time_total for e in events)
    print(f"\n{calls / steps:.0f} aten operator calls per step (self CPU time {self_us / steps / 1e3:.2f} ms, "
          f"{self_us / calls:.1f} us per call on average; nested calls counted)")
    print("| operator | calls per step | self CPU ms per step | us per call |\n|---|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]:
        print(f"| {e.key} | {e.count / steps:.0f} | {e.self_cpu_time_total / steps / 1e3:.2f} | "
              f"{e.self_cpu_time_total / e.count:.1f} |")

if "--compile" in sys.argv:
    # The fused vjp (the adjoint's every evaluation) through torch.compile (inductor's C++ kernels, shapes fixed):
    # what the compiled operator buys a training step, and what compiling it costs, beside the eager step.
    from odenet.model import _FusedMLP

    eager_vjp = _FusedMLP._vjp

    compiled = torch.compile(eager_vjp, fullgraph=True, dynamic=False)  # the same function, traced once

    def compiled_vjp(self, z, a, energy_cotangent):
        return compiled(self, z, a, energy_cotangent)

    zc, ac = torch.randn(64, 64), torch.randn(64, 64)
    fused = _FusedMLP(m.odeblock.odefunc)
    with torch.no_grad():
        ref = eager_vjp(fused, zc, ac, None)
        t0 = time.perf_counter()
        out = compiled_vjp(fused, zc, ac, None)
        first = time.perf_counter() - t0
    diff = max(float((r - o).abs().max()) for r, o in zip(ref, out))
    times = {"eager": [], "compiled": []}
    for r in range(20):  # interleaved, the order alternating
        for name in (("eager", "compiled") if r % 2 else ("compiled", "eager")):
            _FusedMLP._vjp = eager_vjp if name == "eager" else compiled_vjp
            t0 = time.perf_counter()
            for _ in range(5):
                step()
            times[name].append((time.perf_counter() - t0) / 5)
    _FusedMLP._vjp = eager_vjp
    e, c = statistics.median(times["eager"]) * 1e3, statistics.median(times["compiled"]) * 1e3
    print(f"\ntorch.compile of the fused vjp: first call (compiling) {first:.1f} s; max |eager - compiled| {diff:.2g}\n"
          f"| vjp | training step, ms (median of 20 rounds of 5) |\n|---|---|\n| eager | {e:.2f} |\n"
          f"| compiled | {c:.2f} ({e / c:.2f}x) |")
