"""``odenet bench solvers``: train the same model per solver setting; accuracy, time, NFE and stability."""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from ..config import count
from ..config import Config
from ..errors import OdenetError
from ..ode import FIXED_METHODS, NATIVE_METHODS
from .common import device, write_study

MAIN_SOLVERS = list(NATIVE_METHODS)


def _train_tmp(cfg: Config, tmp: str):
    from ..checkpoint import open_model
    from ..train import train

    run = Path(tmp) / cfg.name
    summary = train(cfg, run, progress=False, log=lambda m: None)
    return summary, open_model(run / "checkpoints" / "last.pt", cfg.device).model


@torch.no_grad()
def _stability(model, test, cfg: Config, n: int = 1000) -> Dict[str, float]:
    from ..evaluate import run_eval

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
    finer = (dict(rtol=cfg.rtol / 100, atol=cfg.atol / 100) if block.solver.adaptive
             else dict(step_size=cfg.step_size / 4))
    with block.settings(**finer):
        acc_fine = run_eval(model, test, 1000)["acc"]
    return {"z(T) rel. error vs ref": err, "acc (reference solver)": acc_ref, "acc (finer)": acc_fine,
            "drop vs reference": acc_own - acc_ref, "_acc_own": acc_own}


def bench_solvers(base: Config, solvers: Sequence[str], rtols: Sequence[float], steps: Sequence[float],
                  fixed_for_sweep: Sequence[str] = FIXED_METHODS) -> Dict:
    """Train the same model from the same seed per setting; measure accuracy, time, NFE and stability."""
    from ..data import load_split

    settings = [("solvers", dict(solver=s)) for s in solvers]
    settings += [("dopri5 tolerance sweep", dict(solver="dopri5", rtol=r, atol=r / 10)) for r in rtols]
    settings += [("fixed-step sweep", dict(solver=s, step_size=h)) for s in fixed_for_sweep for h in steps]
    configs = []
    for i, (study, kw) in enumerate(settings):  # every setting checked before any data is read or model trained
        cfg = copy.deepcopy(base)
        for k, v in kw.items():
            setattr(cfg, k, v)
        cfg.name, cfg.report = f"s{i}", False
        configs.append((study, cfg.validate()))
    dev = device(base.device)
    test = load_split(base.dataset, base.resolved_data_dir(), False, dev, base.test_subset, base.verify_data)
    out: Dict[str, List[Dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for study, cfg in configs:
            setting = f"rtol={cfg.rtol:g}" if cfg.ode_solver().adaptive else f"step={cfg.step_size:g}"
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

    from ..figures import COLORS, STYLE

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


def add_args(s) -> None:
    s.add_argument("--epochs", type=count(1, 1000), default=2, help="epochs per setting (default: 2)")
    s.add_argument("--train-subset", type=count(1, 60_000), default=20000, help="training images (default: 20000)")
    s.add_argument("--test-subset", type=count(1, 10_000), default=2000, help="test images (default: 2000)")
    s.add_argument("--solvers", nargs="+", default=MAIN_SOLVERS, help=f"(default: {' '.join(MAIN_SOLVERS)})")
    s.add_argument("--rtols", nargs="*", type=float, default=[1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
                   help="dopri5 sweep (default: 1e-1 ... 1e-5)")
    s.add_argument("--steps", nargs="*", type=float, default=[0.5, 0.25, 0.1, 0.05],
                   help=f"fixed-step sweep for {', '.join(FIXED_METHODS)} (default: 0.5 0.25 0.1 0.05)")
    s.add_argument("--backend", default="native", help="solver engine (default: native)")


def run(args, dev: torch.device, data_dir: str, meta: Dict, out: Path) -> None:
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
