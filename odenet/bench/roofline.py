"""``odenet bench roofline``: how far the seed's training step is from what this machine's cores can do.

Counts the floating-point operations of one training step (forward, adjoint backward, optimizer) with
``torch.utils.flop_counter`` — matrix products and convolutions, the work that counts — times the step, and
measures in the same run the machine's rate on a large matrix product in float32 and bfloat16. The achieved
GFLOP/s over the matrix-product rate says how much of the step is arithmetic; the rest is dispatch and memory
traffic of many small operations.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Dict

import torch
import torch.nn.functional as F

from ..config import count
from .common import sync, write_study


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 1024, reps: int = 10) -> float:
    """GFLOP/s of an ``n x n`` matrix product in ``dtype`` (median of ``reps``), or NaN where the dtype fails."""
    try:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.mm(a, b)
    except (RuntimeError, TypeError):
        return float("nan")
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


class FlopCount:
    """Counts the FLOPs of the operations run inside it by ``torch.utils.flop_counter``'s formulas, at the
    dispatcher (``FlopCounterMode`` itself also tracks modules with global hooks, which would switch the model's
    hand-written fast paths off and change what is measured)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                formula = flop_registry.get(func._overloadpacket)
                if formula is not None:
                    counter.total += formula(*args, **kwargs, out_val=out)
                return out

        self.total, self._mode = 0, _Mode()

    def __enter__(self) -> "FlopCount":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


def step_flops(model, opt, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
    """FLOPs of one training step, counted: its forward pass, and its backward pass with the optimizer's step."""
    with FlopCount() as fwd:
        loss = F.cross_entropy(model(x), y)
    with FlopCount() as bwd:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {"forward": float(fwd.total), "backward": float(bwd.total)}


def add_args(s) -> None:
    s.add_argument("--batch", type=count(1, 60_000), default=64, help="training batch (default: 64, the seed's)")
    s.add_argument("--steps", type=count(1, 10_000), default=30, help="timed training steps (default: 30)")


def run(args, dev: torch.device, data_dir: str, meta: Dict, out: Path) -> None:
    from ..model import NeuralODEModel
    from ..train import make_optimizer

    torch.manual_seed(args.seed)
    model = NeuralODEModel().to(dev)
    opt = make_optimizer(model, 0.0)  # all of Adam's arithmetic, weights unchanged: every step is the same step
    x = torch.randn(args.batch, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    flops = step_flops(model, opt, x, y)
    nfe = (model.stats.nfe_forward, model.stats.nfe_backward)
    times = []
    for _ in range(args.steps + 3):
        sync(dev)
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(dev)
        times.append(time.perf_counter() - t0)
    step = statistics.median(times[3:])
    assert (model.stats.nfe_forward, model.stats.nfe_backward) == nfe  # the step counted is the step timed
    total = flops["forward"] + flops["backward"]
    rates = {"float32": matmul_rate(dev, torch.float32), "bfloat16": matmul_rate(dev, torch.bfloat16)}
    achieved = total / step / 1e9
    rows = [{"what": "training step (seed, float32)", "GFLOP": total / 1e9, "ms": 1e3 * step, "GFLOP/s": achieved,
             "% of float32 matmul": 100 * achieved / rates["float32"]},
            {"what": "  of which forward", "GFLOP": flops["forward"] / 1e9},
            {"what": "  of which backward + optimizer", "GFLOP": flops["backward"] / 1e9},
            {"what": "1024x1024 matmul, float32", "GFLOP/s": rates["float32"]},
            {"what": "1024x1024 matmul, bfloat16", "GFLOP/s": rates["bfloat16"]}]
    meta.update({"batch": args.batch, "NFE forward / backward": f"{nfe[0]} / {nfe[1]}",
                 "counted": "torch.utils.flop_counter (matrix products and convolutions)"})
    write_study(out, "roofline", "The training step against the machine's limit", meta, {
        "FLOPs, time and rate": (rows, ["what", "GFLOP", "ms", "GFLOP/s", "% of float32 matmul"])},
        as_json=args.json)
