"""Backward-pass cost of the adjoint's error norm, native engine vs torchdiffeq, on the SPEC model in float64.

    python benchmarks/adjoint_norms.py [--rtol 1e-6] [--atol 1e-8]

Prints forward/backward NFE and seconds for the full (torchdiffeq's default) norm and the seminorm on both
backends. Same random model and inputs for all four.
"""
import argparse
import time

import torch

from odenet.model import NeuralODEModel
from odenet.ode import Solver, integrate

p = argparse.ArgumentParser()
p.add_argument("--rtol", type=float, default=1e-6)
p.add_argument("--atol", type=float, default=1e-8)
args = p.parse_args()
torch.manual_seed(0)
m = NeuralODEModel().double()
z0 = torch.tanh(torch.randn(64, 64, dtype=torch.float64)).requires_grad_()
print(f"dopri5, rtol {args.rtol:g}, atol {args.atol:g}, batch 64, float64, {torch.get_num_threads()} threads")
print("| backend | adjoint norm | NFE forward | NFE backward | seconds |\n|---|---|---|---|---|")
for backend in ("native", "torchdiffeq"):
    for semi in (False, True):
        m.zero_grad()
        z0.grad = None
        t0 = time.perf_counter()
        solver = Solver.of(method="dopri5", rtol=args.rtol, atol=args.atol, seminorm=semi, backend=backend)
        sol = integrate(m.odefunc, z0, [0.0, 1.0], solver)
        sol.ys[-1].pow(2).sum().backward()
        st = sol.stats
        print(f"| {backend} | {'seminorm' if semi else 'full'} | {st.nfe_forward} | {st.nfe_backward} | "
              f"{time.perf_counter() - t0:.2f} |")
