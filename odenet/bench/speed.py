"""``odenet bench speed``: plain torchdiffeq scripts vs odenet's training step, interleaved in one process."""
from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

from ..config import count
from .common import sync, write_study


def _odenet_stepper(device, data_dir, seed, verify=True, **solver):
    """A training-step closure over odenet's own path (data on the device, index batches)."""
    from ..data import load_split
    from ..model import NeuralODEModel
    from ..train import make_optimizer, train_step

    split = load_split("mnist", data_dir, True, device, verify=verify)
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
        st = train_step(model, opt, x, y)
        return st.nfe_f, st.nfe_b

    return step, model


def _baseline_stepper(device, data_dir, seed, tmp):
    from . import plain_torchdiffeq as plain

    _private_copy(data_dir, tmp)
    torch.manual_seed(seed)
    loader = plain.train_loader(str(tmp))
    model = plain.NeuralODEModel().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = {"it": iter(loader)}

    def step():
        try:
            x, y = next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            x, y = next(state["it"])
        _, nf, nb = plain.train_step(model, opt, x.to(device), y.to(device))
        return nf, nb

    return step, model


def _tensor_baseline_stepper(device, data_dir, seed, tmp):
    """Plain torchdiffeq written with MNIST as one tensor on the device (no DataLoader): the strongest plain script."""
    from . import plain_torchdiffeq as plain

    _private_copy(data_dir, tmp)
    torch.manual_seed(seed)
    batches = plain.tensor_batches(str(tmp), device=device)
    model = plain.NeuralODEModel().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        x, y = next(batches)
        _, nf, nb = plain.train_step(model, opt, x, y)
        return nf, nb

    return step, model


def _private_copy(data_dir, tmp) -> None:
    """torchvision extracts next to the files: the baselines work on a private copy of the raw folder."""
    raw = Path(data_dir) / "MNIST" / "raw"
    (Path(tmp) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
    for f in raw.iterdir():
        if not (Path(tmp) / "MNIST" / "raw" / f.name).exists():
            shutil.copy(f, Path(tmp) / "MNIST" / "raw" / f.name)


PLAIN = ("torchdiffeq, plain (DataLoader, odeint_adjoint)", "torchdiffeq, plain (MNIST as one tensor)")


def _interleaved(steppers: Dict, device: torch.device, batches: int, rounds: int, warmup: int):
    """Each variant's step timed in turn, ``rounds`` times (the first round after ``warmup`` untimed steps)."""
    times: Dict[str, List[float]] = {k: [] for k in steppers}
    nfes: Dict[str, List[tuple]] = {k: [] for k in steppers}
    per_round = max(1, math.ceil(batches / rounds))
    for r in range(rounds):
        for k, (step, _) in steppers.items():
            for i in range(per_round + (warmup if r == 0 else 0)):
                sync(device)
                t0 = time.perf_counter()
                nf, nb = step()
                sync(device)
                if r > 0 or i >= warmup:
                    times[k].append(time.perf_counter() - t0)
                    nfes[k].append((nf, nb))
    return times, nfes


def _full_epochs(steppers: Dict, device: torch.device, chunks: int = 10) -> Dict[str, float]:
    """Seconds of one whole epoch (938 batches of 64) of each variant, timed in ``chunks`` interleaved slices
    (each variant's next slice in turn, the order reversed every round) so that a machine whose speed drifts
    over the minutes an epoch takes slows every variant alike."""
    total = math.ceil(60000 / 64)
    epoch_s = {k: 0.0 for k in steppers}
    names = list(steppers)
    for c in range(chunks):
        n = total * (c + 1) // chunks - total * c // chunks
        for k in (names if c % 2 == 0 else names[::-1]):
            step = steppers[k][0]
            sync(device)
            t0 = time.perf_counter()
            for _ in range(n):
                step()
            sync(device)
            epoch_s[k] += time.perf_counter() - t0
    return epoch_s


def bench_speed(data_dir: str, device: torch.device, batches: int = 60, warmup: int = 5, rounds: int = 3,
                seed: int = 0, full_epoch: bool = False) -> Dict:
    """ms per training batch of each variant, interleaved in rounds on the same machine; plus inference."""
    from ..data import load_split
    from ..evaluate import run_eval

    variants = {
        PLAIN[0]: lambda tmp: _baseline_stepper(device, data_dir, seed, tmp),
        PLAIN[1]: lambda tmp: _tensor_baseline_stepper(device, data_dir, seed, tmp),
        "odenet loop, backend torchdiffeq": lambda tmp: _odenet_stepper(device, data_dir, seed, backend="torchdiffeq"),
        "odenet native, autograd vjp": lambda tmp: _odenet_stepper(device, data_dir, seed, backend="native",
                                                                  fused_vjp=False),
        "odenet native (default)": lambda tmp: _odenet_stepper(device, data_dir, seed, backend="native"),
        "odenet native + seminorm": lambda tmp: _odenet_stepper(device, data_dir, seed, backend="native",
                                                               seminorm=True),
    }
    with tempfile.TemporaryDirectory() as tmp:
        steppers = {k: make(tmp) for k, make in variants.items()}
        times, nfes = _interleaved(steppers, device, batches, rounds, warmup)
        epoch_s = _full_epochs(steppers, device) if full_epoch else {}
    n_batches = math.ceil(60000 / 64)
    rows = []
    for k in variants:
        med = statistics.median(times[k])
        rows.append({"variant": k, "ms/batch (median)": med * 1e3,
                     "s/epoch": epoch_s.get(k, med * n_batches),
                     "NFE fwd": statistics.mean(n for n, _ in nfes[k]),
                     "NFE bwd": statistics.mean(n for _, n in nfes[k])})
    # speed-ups are against the strongest (fastest) plain torchdiffeq script, not a handicapped one
    base = min((r for r in rows if r["variant"] in PLAIN), key=lambda r: r["ms/batch (median)"])
    for r in rows:
        r["speed-up"] = base["ms/batch (median)"] / r["ms/batch (median)"]
        if full_epoch:
            r["epoch speed-up"] = base["s/epoch"] / r["s/epoch"]
    test = load_split("mnist", data_dir, False, device)
    inf_rows = []
    model = steppers["odenet native (default)"][1]
    for backend in ("torchdiffeq", "native"):
        with model.odeblock.settings(backend=backend):
            run_eval(model, test, 1000)  # warm-up
            ev = run_eval(model, test, 1000)
        inf_rows.append({"backend": backend, "images/s": ev["images_per_s"], "NFE per batch": ev["nfe"]})
    return {"rows": rows, "inference": inf_rows, "timed_batches": len(times[next(iter(variants))]),
            "baseline": base["variant"],
            "epoch": "measured (one epoch each, in 10 interleaved slices)" if full_epoch else "median ms/batch x 938 batches"}


def add_args(s) -> None:
    s.add_argument("--batches", type=count(1, 100_000), default=60, help="timed batches per variant (default: 60)")
    s.add_argument("--rounds", type=count(1, 1000), default=3, help="interleaved rounds (default: 3)")
    s.add_argument("--warmup", type=count(0, 10_000), default=5, help="untimed first batches (default: 5)")
    s.add_argument("--full-epoch", action="store_true", help="also time one whole epoch of each variant")


def run(args, device: torch.device, data_dir: str, meta: Dict, out: Path) -> None:
    res = bench_speed(data_dir, device, args.batches, args.warmup, args.rounds, args.seed, args.full_epoch)
    meta.update({"timed batches per variant": res["timed_batches"], "s/epoch": res["epoch"],
                 "speed-up": f"against the fastest plain script: {res['baseline']}"})
    write_study(out, "speed", "Training speed: plain torchdiffeq vs odenet", meta, {
        "Training step (batch 64, dopri5, rtol 1e-3, atol 1e-4, adjoint)":
            (res["rows"], ["variant", "ms/batch (median)", "s/epoch", "NFE fwd", "NFE bwd", "speed-up"]
                         + (["epoch speed-up"] if args.full_epoch else [])),
        "Inference on the 10,000 test images (batch 1000)": (res["inference"], ["backend", "images/s", "NFE per batch"]),
    }, as_json=args.json)
