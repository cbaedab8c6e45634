"""Benchmarks: ``odenet bench speed | solvers | gradients``. Each prints a markdown table and writes
``<out>/<study>.md``, ``<study>.json`` and ``<study>.png``. Benchmarks measure; tests only exercise them."""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .config import Config, default_data_dir
from .errors import OdenetError

MAIN_SOLVERS = ["dopri5", "bosh3", "adaptive_heun", "rk4", "midpoint", "euler"]


# ----------------------------------------------------------------------------------------------- shared
def machine(device: torch.device) -> str:
    """The hardware a number was measured on, in words."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads (torch {torch.__version__})"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def markdown_table(rows: List[Dict], columns: Sequence[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            if math.isnan(v):
                return "-"
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_study(out: Path, name: str, title: str, meta: Dict, tables: Dict[str, tuple],
                plot: Optional[Callable[[Path], None]] = None, as_json: bool = False) -> str:
    """Write ``name.md`` / ``name.json`` (and ``name.png`` via ``plot``); return the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    md = [f"## {title}", "", "\n".join(f"- {k}: {v}" for k, v in meta.items()), ""]
    for caption, (rows, cols) in tables.items():
        md += [f"### {caption}", "", markdown_table(rows, cols), ""]
    text = "\n".join(md)
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "tables": {k: v[0] for k, v in tables.items()}},
                                                 indent=2, default=str))
    if plot is not None:
        plot(out / f"{name}.png")
    print(json.dumps({"meta": meta, "tables": {k: v[0] for k, v in tables.items()}}, indent=2, default=str)
          if as_json else text, flush=True)
    return text


def _device(name: str) -> torch.device:
    from .train import resolve_device

    return resolve_device(name)


# ----------------------------------------------------------------------------------------------- speed
def _odenet_stepper(device, data_dir, seed, verify=True, **solver):
    """A training-step closure over odenet's own path (data on the device, index batches)."""
    from .data import load
    from .model import NeuralODEModel
    from .train import make_optimizer, train_step

    split = load("mnist", data_dir, True, device, verify=verify)
    torch.manual_seed(seed)
    model = NeuralODEModel(**solver).to(device)
    opt = make_optimizer(model, 1e-3)
    gen = torch.Generator().manual_seed(seed)
    state = {"it": split.batches(64, gen)}

    def step():
        try:
            x, y = next(state["it"])
        except StopIteration:
            state["it"] = split.batches(64, gen)
            x, y = next(state["it"])
        return train_step(model, opt, x, y)[2:]

    return step, model


def _baseline_stepper(device, data_dir, seed, tmp):
    from . import baseline

    raw = Path(data_dir) / "MNIST" / "raw"
    (Path(tmp) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
    for f in raw.iterdir():  # torchvision extracts next to the files: work on a private copy
        shutil.copy(f, Path(tmp) / "MNIST" / "raw" / f.name)
    torch.manual_seed(seed)
    loader = baseline.train_loader(str(tmp))
    model = baseline.NeuralODEModel().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = {"it": iter(loader)}

    def step():
        try:
            x, y = next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            x, y = next(state["it"])
        _, nf, nb = baseline.train_step(model, opt, x.to(device), y.to(device))
        return nf, nb

    return step, model


def bench_speed(data_dir: str, device: torch.device, batches: int = 60, warmup: int = 5, rounds: int = 3,
                seed: int = 0, full_epoch: bool = False) -> Dict:
    """ms per training batch of each variant, interleaved in rounds on the same machine; plus inference."""
    from .data import load
    from .evaluate import run_eval

    variants = {
        "torchdiffeq, plain (DataLoader, odeint_adjoint)": lambda tmp: _baseline_stepper(device, data_dir, seed, tmp),
        "odenet loop, backend torchdiffeq": lambda tmp: _odenet_stepper(device, data_dir, seed, backend="torchdiffeq"),
        "odenet native, autograd vjp": lambda tmp: _odenet_stepper(device, data_dir, seed, backend="native"),
        "odenet native (default)": lambda tmp: _odenet_stepper(device, data_dir, seed, backend="native"),
        "odenet native + seminorm": lambda tmp: _odenet_stepper(device, data_dir, seed, backend="native",
                                                               seminorm=True),
    }
    times: Dict[str, List[float]] = {k: [] for k in variants}
    nfes: Dict[str, List[tuple]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        steppers = {}
        for k, make in variants.items():
            steppers[k] = make(tmp)
        steppers["odenet native, autograd vjp"][1].odeblock.fused_vjp = False
        per_round = max(1, math.ceil(batches / rounds))
        for r in range(rounds):
            for k, (step, _) in steppers.items():
                for i in range(per_round + (warmup if r == 0 else 0)):
                    _sync(device)
                    t0 = time.perf_counter()
                    nf, nb = step()
                    _sync(device)
                    if r > 0 or i >= warmup:
                        times[k].append(time.perf_counter() - t0)
                        nfes[k].append((nf, nb))
        epoch_s = {}
        if full_epoch:
            for k, (step, _) in steppers.items():
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(math.ceil(60000 / 64)):
                    step()
                _sync(device)
                epoch_s[k] = time.perf_counter() - t0
    n_batches = math.ceil(60000 / 64)
    base = statistics.median(times[next(iter(variants))])
    rows = []
    for k in variants:
        med = statistics.median(times[k])
        rows.append({"variant": k, "ms/batch (median)": med * 1e3,
                     "s/epoch": epoch_s.get(k, med * n_batches),
                     "NFE fwd": statistics.mean(n for n, _ in nfes[k]),
                     "NFE bwd": statistics.mean(n for _, n in nfes[k]), "speed-up": base / med})
    if full_epoch:
        for r in rows:
            r["epoch speed-up"] = rows[0]["s/epoch"] / r["s/epoch"]
    test = load("mnist", data_dir, False, device)
    inf_rows = []
    model = steppers["odenet native (default)"][1]
    for backend in ("torchdiffeq", "native"):
        model.odeblock.backend = backend
        run_eval(model, test, 1000)  # warm-up
        ev = run_eval(model, test, 1000)
        inf_rows.append({"backend": backend, "images/s": ev["images_per_s"], "NFE per batch": ev["nfe"]})
    model.odeblock.backend = "native"
    return {"rows": rows, "inference": inf_rows, "timed_batches": len(times[next(iter(variants))]),
            "epoch": "measured" if full_epoch else "median ms/batch x 938 batches"}


# ----------------------------------------------------------------------------------------------- solvers
def _train_tmp(cfg: Config, tmp: str):
    from .checkpoint import load_model
    from .train import train

    run = Path(tmp) / cfg.name
    summary = train(cfg, run, progress=False, log=lambda m: None)
    model, _, _ = load_model(str(run / "checkpoints" / "last.pt"), _device(cfg.device))
    return summary, model


@torch.no_grad()
def _stability(model, test, cfg: Config, n: int = 1000) -> Dict[str, float]:
    from .evaluate import run_eval
    from .ode import is_adaptive

    model.eval()
    block = model.odeblock
    z0 = model.encode(test.x[:n])
    own = block(z0)
    reference = dict(method="dopri5", rtol=1e-7, atol=1e-9, backend="native")
    ref = block.trajectory(z0, [0.0, cfg.t_end], **reference)[-1]
    err = float((own - ref).norm() / ref.norm())
    acc_own = run_eval(model, test, 1000)["acc"]
    with block.settings(**reference):
        acc_ref = run_eval(model, test, 1000)["acc"]
    finer = (dict(rtol=cfg.rtol / 100, atol=cfg.atol / 100) if is_adaptive(cfg.solver)
             else dict(step_size=cfg.step_size / 4))
    with block.settings(**finer):
        acc_fine = run_eval(model, test, 1000)["acc"]
    return {"z(T) rel. error vs ref": err, "acc (reference solver)": acc_ref, "acc (finer)": acc_fine,
            "drop vs reference": acc_own - acc_ref, "_acc_own": acc_own}


def bench_solvers(base: Config, solvers: Sequence[str], rtols: Sequence[float], steps: Sequence[float],
                  fixed_for_sweep: Sequence[str] = ("euler", "midpoint", "rk4")) -> Dict:
    """Train the same model from the same seed per setting; measure accuracy, time, NFE and stability."""
    from .data import load
    from .ode import is_adaptive

    device = _device(base.device)
    test = load(base.dataset, base.resolved_data_dir(), False, device, base.test_subset, base.verify_data)
    settings = [("solvers", dict(solver=s)) for s in solvers]
    settings += [("dopri5 tolerance sweep", dict(solver="dopri5", rtol=r, atol=r / 10)) for r in rtols]
    settings += [("fixed-step sweep", dict(solver=s, step_size=h)) for s in fixed_for_sweep for h in steps]
    out: Dict[str, List[Dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (study, kw) in enumerate(settings):
            cfg = copy.deepcopy(base)
            for k, v in kw.items():
                setattr(cfg, k, v)
            cfg.name, cfg.report = f"s{i}", False
            cfg.validate()
            setting = (f"rtol={cfg.rtol:g}" if is_adaptive(cfg.solver) else f"step={cfg.step_size:g}")
            try:
                summary, model = _train_tmp(cfg, tmp)
            except OdenetError as e:
                out.setdefault(study, []).append({"solver": cfg.solver, "setting": setting, "note": str(e)[:80]})
                continue
            h = summary["final"]
            row = {"solver": cfg.solver, "setting": setting, "test acc": h["test_acc"],
                   "s/epoch": summary["total_train_seconds"] / summary["epochs"],
                   "NFE fwd": h["nfe_forward"], "NFE bwd": h["nfe_backward"]}
            stab = _stability(model, test, cfg)
            row.update({k: v for k, v in stab.items() if not k.startswith("_")})
            out.setdefault(study, []).append(row)
            print(f"  {study}: {cfg.solver} {setting}: acc {row['test acc']:.4f}, {row['s/epoch']:.1f} s/epoch, "
                  f"NFE {row['NFE fwd']:.1f}/{row['NFE bwd']:.1f}", flush=True)
    return out


def _plot_solvers(results: Dict[str, List[Dict]], path: Path) -> None:
    import matplotlib.pyplot as plt

    from .figures import COLORS, STYLE

    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        names = sorted({r["solver"] for rows in results.values() for r in rows})
        seen = set()
        for rows in results.values():
            for r in rows:
                if "test acc" not in r or (r["solver"], r["setting"]) in seen:
                    continue
                seen.add((r["solver"], r["setting"]))
                c = COLORS[names.index(r["solver"]) % 10]
                nfe = r["NFE fwd"] + r["NFE bwd"]
                axes[0].scatter(nfe, r["test acc"], color=c)
                axes[0].annotate(r["setting"], (nfe, r["test acc"]), fontsize=6, xytext=(3, 2),
                                 textcoords="offset points")
                axes[1].scatter(r["s/epoch"], r["test acc"], color=c)
        for n in names:
            axes[0].scatter([], [], color=COLORS[names.index(n) % 10], label=n)
        axes[0].set(xscale="log", xlabel="NFE per batch (forward + backward)", ylabel="test accuracy",
                    title="Accuracy vs function evaluations")
        axes[1].set(xlabel="seconds per epoch", ylabel="test accuracy", title="Accuracy vs training time")
        axes[0].legend(title="solver")
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)


# ----------------------------------------------------------------------------------------------- gradients
def _saved_bytes(fn: Callable[[], torch.Tensor]):
    """Run ``fn`` and return (result, bytes of tensors autograd saved for the backward pass)."""
    total = [0]
    seen = set()

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def bench_gradients(device: torch.device, t_ends: Sequence[float] = (1, 2, 4, 8),
                    rk4_steps: Sequence[int] = (4, 16, 64, 256), batch: int = 64, reps: int = 3,
                    data_dir: Optional[str] = None, seed: int = 0) -> Dict:
    """Adjoint vs direct backprop vs seminorm adjoint: gradient error, memory and time as steps grow."""
    from .model import NeuralODEModel

    torch.manual_seed(seed)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    try:
        from .data import load

        split = load("mnist", data_dir or default_data_dir(), False, torch.device("cpu"), batch, verify=False)
        x, y = split.x, split.y
    except OdenetError:
        pass  # random images still exercise the same code and memory paths
    base = NeuralODEModel()
    x, y = x.to(device), y.to(device)

    def grads(model, xx):
        model.zero_grad(set_to_none=True)
        model.nfe = 0
        loss, saved = _saved_bytes(lambda: F.cross_entropy(model(xx), y))
        steps_nfe = model.nfe
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        loss.backward()
        peak = (torch.cuda.max_memory_allocated(device) - before) if device.type == "cuda" else float("nan")
        return torch.cat([p.grad.flatten() for p in model.parameters()]).double(), saved, steps_nfe, peak

    def ref_grads(t_end):
        m = copy.deepcopy(base).double().to(device)
        m.odeblock.t_end, m.odeblock.rtol, m.odeblock.atol, m.odeblock.adjoint = t_end, 1e-10, 1e-12, False
        m.odeblock.method, m.odeblock.max_steps = "dopri5", 100_000
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
            m.odeblock.method, m.odeblock.t_end, m.odeblock.step_size = method, t_end, h or 0.1
            m.odeblock.adjoint, m.odeblock.seminorm = kw["adjoint"], kw.get("seminorm", False)
            ts = []
            for _ in range(reps):
                _sync(device)
                t0 = time.perf_counter()
                g, saved, nfe, peak = grads(m, x)
                _sync(device)
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

    from .figures import COLORS, STYLE

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


# ----------------------------------------------------------------------------------------------- CLI
def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: speed, solvers, gradients")
    bs = p.add_subparsers(dest="study", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default="bench", help="folder for the tables and plots (default: bench)")
    common.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    common.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    common.add_argument("--data-dir", default=None, help="dataset folder (default: $ODENET_DATA_DIR or the cache)")
    common.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    common.add_argument("--no-verify-data", dest="verify_data", action="store_false",
                        help="skip the MD5 check of dataset files (for your own IDX files)")

    s = bs.add_parser("speed", parents=[common], help="plain torchdiffeq vs odenet's training step (same data, seed)")
    s.add_argument("--batches", type=int, default=60, help="timed batches per variant (default: 60)")
    s.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    s.add_argument("--warmup", type=int, default=5, help="untimed first batches (default: 5)")
    s.add_argument("--full-epoch", action="store_true", help="also time one whole epoch of each variant")

    s = bs.add_parser("solvers", parents=[common], help="accuracy, time, NFE and stability per solver")
    s.add_argument("--epochs", type=int, default=2, help="epochs per setting (default: 2)")
    s.add_argument("--train-subset", type=int, default=20000, help="training images (default: 20000)")
    s.add_argument("--test-subset", type=int, default=2000, help="test images (default: 2000)")
    s.add_argument("--solvers", nargs="+", default=MAIN_SOLVERS, help=f"(default: {' '.join(MAIN_SOLVERS)})")
    s.add_argument("--rtols", nargs="*", type=float, default=[1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
                   help="dopri5 sweep (default: 1e-1 ... 1e-5)")
    s.add_argument("--steps", nargs="*", type=float, default=[0.5, 0.25, 0.1, 0.05],
                   help="fixed-step sweep for euler, midpoint, rk4 (default: 0.5 0.25 0.1 0.05)")
    s.add_argument("--backend", default="native", help="solver engine (default: native)")

    s = bs.add_parser("gradients", parents=[common], help="adjoint vs direct backprop: error, memory, time")
    s.add_argument("--t-ends", nargs="+", type=float, default=[1, 2, 4, 8], help="dopri5 T values (default: 1 2 4 8)")
    s.add_argument("--rk4-steps", nargs="+", type=int, default=[4, 16, 64, 256],
                   help="rk4 step counts over T=1 (default: 4 16 64 256)")
    s.add_argument("--batch", type=int, default=64, help="batch size (default: 64)")
    s.add_argument("--reps", type=int, default=3, help="timed repetitions (default: 3)")


def run(args) -> int:
    device = _device(args.device)
    out = Path(args.out)
    data_dir = args.data_dir or default_data_dir()
    command = ("odenet " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("odenet")
               else "odenet bench " + args.study)
    meta = {"machine": machine(device), "date": time.strftime("%Y-%m-%d"), "command": command}
    for k in ("batches", "rounds", "epochs", "train_subset", "test_subset"):
        if hasattr(args, k) and getattr(args, k) is not None and getattr(args, k) <= 0:
            raise OdenetError(f"--{k.replace('_', '-')} must be positive")
    if args.study == "speed":
        res = bench_speed(data_dir, device, args.batches, args.warmup, args.rounds, args.seed, args.full_epoch)
        meta.update({"timed batches per variant": res["timed_batches"], "s/epoch": res["epoch"]})
        write_study(out, "speed", "Training speed: plain torchdiffeq vs odenet", meta, {
            "Training step (batch 64, dopri5, rtol 1e-3, atol 1e-4, adjoint)":
                (res["rows"], ["variant", "ms/batch (median)", "s/epoch", "NFE fwd", "NFE bwd", "speed-up"]
                             + (["epoch speed-up"] if args.full_epoch else [])),
            "Inference on the 10,000 test images (batch 1000)": (res["inference"], ["backend", "images/s", "NFE per batch"]),
        }, as_json=args.json)
    elif args.study == "solvers":
        base = Config(epochs=args.epochs, train_subset=args.train_subset, test_subset=args.test_subset,
                      data_dir=data_dir, verify_data=args.verify_data, device=args.device, seed=args.seed,
                      backend=args.backend, report=False)
        base.validate()
        meta.update({"budget": f"{args.epochs} epochs on {args.train_subset} training images, "
                               f"test on {args.test_subset}; same seed for every setting",
                     "reference": "dopri5, rtol 1e-7, atol 1e-9", "finer": "rtol/100 (adaptive) or step/4 (fixed)"})
        res = bench_solvers(base, args.solvers, args.rtols, args.steps)
        cols = ["solver", "setting", "test acc", "s/epoch", "NFE fwd", "NFE bwd", "z(T) rel. error vs ref",
                "acc (reference solver)", "acc (finer)", "drop vs reference"]
        write_study(out, "solvers", "Solvers measured", meta, {k: (v, cols) for k, v in res.items()},
                    plot=lambda p: _plot_solvers(res, p), as_json=args.json)
    else:
        res = bench_gradients(device, args.t_ends, args.rk4_steps, args.batch, args.reps, data_dir, args.seed)
        meta.update({"reference": "float64, dopri5 rtol 1e-10 atol 1e-12, direct backprop",
                     "memory": "autograd MB = bytes of tensors saved for the backward pass (whole model)"})
        write_study(out, "gradients", "Gradients: adjoint vs backprop through the solver", meta, {
            "Gradient error, memory and time as the number of steps grows":
                (res["rows"], ["solver", "T", "steps", "mode", "rel. grad error", "autograd MB", "CUDA peak MB",
                               "ms/batch"])}, plot=lambda p: _plot_gradients(res["rows"], p), as_json=args.json)
    return 0
