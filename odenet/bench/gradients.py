"""``odenet bench gradients``: adjoint vs backprop through the solver: gradient error, memory and time."""
from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..config import count
from ..config import default_data_dir
from ..errors import OdenetError
from .common import saved_bytes, sync, write_study


def _batch(batch: int, data_dir: Optional[str], device: torch.device):
    """``batch`` MNIST test images and labels from ``data_dir``; without one, from the default folder, or random
    images where it has no MNIST (the same code paths). A ``data_dir`` given but unreadable is an error."""
    from ..data import load_split

    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    try:
        split = load_split("mnist", data_dir or default_data_dir(), False, torch.device("cpu"), batch, verify=False)
        x, y = split.x, split.y
    except OdenetError:
        if data_dir is not None:
            raise
    return x.to(device), y.to(device)


def bench_gradients(device: torch.device, t_ends: Sequence[float] = (1, 2, 4, 8),
                    rk4_steps: Sequence[int] = (4, 16, 64, 256), batch: int = 64, reps: int = 3,
                    data_dir: Optional[str] = None, seed: int = 0) -> Dict:
    """Adjoint vs direct backprop vs seminorm adjoint: gradient error, memory and time as steps grow."""
    from ..model import NeuralODEModel

    torch.manual_seed(seed)
    x, y = _batch(batch, data_dir, device)
    base = NeuralODEModel()

    def grads(model, xx):
        model.zero_grad(set_to_none=True)
        loss, saved = saved_bytes(lambda: F.cross_entropy(model(xx), y))
        steps_nfe = model.stats.nfe_forward
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        loss.backward()
        peak = (torch.cuda.max_memory_allocated(device) - before) if device.type == "cuda" else float("nan")
        return torch.cat([p.grad.flatten() for p in model.parameters()]).double(), saved, steps_nfe, peak

    def ref_grads(t_end):
        m = copy.deepcopy(base).double().to(device)
        m.odeblock.t_end = t_end
        m.odeblock.solver = m.odeblock.solver.replace(method="dopri5", rtol=1e-10, atol=1e-12, adjoint=False,
                                                      max_steps=100_000)
        return grads(m, x.double())[0]

    rows = []
    cases = [("dopri5", t, None) for t in t_ends] + [("rk4", 1.0, 1.0 / n) for n in rk4_steps]
    modes = {"adjoint": dict(adjoint=True), "direct backprop": dict(adjoint=False),
             "adjoint + seminorm": dict(adjoint=True, seminorm=True)}
    for method, t_end, h in cases:
        ref = ref_grads(t_end)
        for mode, kw in modes.items():
            if method != "dopri5" and mode == "adjoint + seminorm":
                continue  # seminorm only changes adaptive step control
            m = copy.deepcopy(base).to(device)
            m.odeblock.t_end = t_end
            m.odeblock.solver = m.odeblock.solver.replace(method=method, step_size=h or 0.1, adjoint=kw["adjoint"],
                                                          seminorm=kw.get("seminorm", False))
            ts = []
            for _ in range(reps):
                sync(device)
                t0 = time.perf_counter()
                g, saved, nfe, peak = grads(m, x)
                sync(device)
                ts.append(time.perf_counter() - t0)
            rows.append({"solver": method, "T": t_end, "steps": (nfe - 2) // 6 if method == "dopri5" else int(t_end / h),
                         "mode": mode, "rel. grad error": float((g - ref).norm() / ref.norm()),
                         "autograd MB": saved / 2**20, "CUDA peak MB": peak / 2**20 if peak == peak else float("nan"),
                         "ms/batch": statistics.median(ts) * 1e3})
            print(f"  {method} T={t_end} {mode}: {rows[-1]['ms/batch']:.1f} ms, {rows[-1]['autograd MB']:.1f} MB, "
                  f"err {rows[-1]['rel. grad error']:.2e}", flush=True)
    return {"rows": rows}


def _plot_gradients(rows: List[Dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    from ..figures import COLORS, STYLE

    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
        modes = ["adjoint", "direct backprop", "adjoint + seminorm"]
        for solver, marker in (("rk4", "o"), ("dopri5", "s")):
            for i, mode in enumerate(modes):
                rs = [r for r in rows if r["solver"] == solver and r["mode"] == mode]
                if not rs:
                    continue
                st = [r["steps"] for r in rs]
                kw = dict(color=COLORS[i], marker=marker, label=f"{mode} ({solver})")
                axes[0].plot(st, [r["autograd MB"] for r in rs], **kw)
                axes[1].plot(st, [r["ms/batch"] for r in rs], **kw)
                axes[2].plot(st, [r["rel. grad error"] for r in rs], **kw)
        axes[0].set(xscale="log", xlabel="solver steps", ylabel="MB saved for backward", title="Memory")
        axes[1].set(xscale="log", yscale="log", xlabel="solver steps", ylabel="ms per batch", title="Time")
        axes[2].set(xscale="log", yscale="log", xlabel="solver steps", ylabel="relative error",
                    title="Gradient error vs float64 reference")
        axes[0].legend(fontsize=7)
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)


MAX_T_END = 64.0  # the float64 reference solve's steps grow with T (and stop at 100,000)


def add_args(s) -> None:
    s.add_argument("--t-ends", nargs="+", type=float, default=[1, 2, 4, 8], help="dopri5 T values (default: 1 2 4 8)")
    s.add_argument("--rk4-steps", nargs="+", type=count(1, 100_000), default=[4, 16, 64, 256],
                   help="rk4 step counts over T=1 (default: 4 16 64 256)")
    s.add_argument("--batch", type=count(1, 60_000), default=64, help="batch size (default: 64)")
    s.add_argument("--reps", type=count(1, 1000), default=3, help="timed repetitions (default: 3)")


def run(args, dev: torch.device, data_dir: str, meta: Dict, out: Path) -> None:
    for t in args.t_ends:  # before anything is loaded: a long T is a long reference solve
        if not 0 < t <= MAX_T_END:
            raise OdenetError(f"--t-ends: each T must be a number in (0, {MAX_T_END:g}], got {t!r}")
    res = bench_gradients(dev, args.t_ends, args.rk4_steps, args.batch, args.reps, args.data_dir, args.seed)
    meta.update({"reference": "float64, dopri5 rtol 1e-10 atol 1e-12, direct backprop",
                 "memory": "autograd MB = bytes of tensors saved for the backward pass (whole model)"})
    write_study(out, "gradients", "Gradients: adjoint vs backprop through the solver", meta, {
        "Gradient error, memory and time as the number of steps grows":
            (res["rows"], ["solver", "T", "steps", "mode", "rel. grad error", "autograd MB", "CUDA peak MB",
                           "ms/batch"])}, plot=lambda p: _plot_gradients(res["rows"], p), as_json=args.json)
