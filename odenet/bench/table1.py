"""``odenet bench table1``: Chen et al.'s Table 1 on the seed's architecture — what the ODE block contributes.

The seed's encoder and classifier with, in the middle: nothing (``identity``); a residual block ``z + f(z)`` with
f shaped like the seed's ODE function, applied once (``resblock``) or ``K`` times with its own weights each
(``resnet``, ``K`` = the ODE-Net's forward NFE); backpropagation through a fixed rk4 grid of the seed's function
(``rknet``); the seed's ODE-Net with the adjoint (``odenet``); the same with the best recipe's kinetic-energy term
(``odenet-kinetic``); the paper's 1-layer MLP baseline on the pixels (``mlp``); and the paper's own conv ODE-Net
(``paper``: ``NeuralODEModel(arch="paper")``, its width a parameter so that it runs on a CPU). Three rows ask
whether the seed's ODE block can matter more with its architecture unchanged: the ODE-Net integrated to T = 4
(``odenet-t4``), and the encoder frozen at its random initialization so that the middle must separate the classes
(``identity-frozen`` and ``resblock-frozen`` against ``odenet-frozen``). For the ODE rows the classifier is also
applied to z(0): the error without the flow. One recipe for all (the seed's: Adam, lr 1e-3, batch 64, no
augmentation); per variant: parameters, test error (final epoch, mean ± sd over the
seeds, nothing chosen on the test set), seconds per epoch, the bytes autograd saves for one training step's
backward pass, and the forward NFE.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import count
from .common import saved_bytes, write_study

VARIANTS = ("mlp", "identity", "resblock", "resnet", "rknet", "odenet", "odenet-kinetic", "odenet-t4",
            "identity-frozen", "resblock-frozen", "odenet-frozen", "paper")
KINETIC = 1e-4  # configs/best.yaml's weight


def _f(dim: int = 64, hidden: int = 128) -> nn.Sequential:
    """A function shaped like the seed's ODE function: 64-128-128-128-64, ReLU."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim))


class Residual(nn.Module):
    """``z + f(z)``: one step of a ResNet (an Euler step of size 1 of dz/dt = f(z))."""

    def __init__(self):
        super().__init__()
        self.f = _f()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.f(z)


class Sandwich(nn.Module):
    """The seed's encoder, a middle ``(B, 64) -> (B, 64)``, the seed's classifier."""

    def __init__(self, middle: nn.Module):
        super().__init__()
        from ..model import NeuralODEModel

        seed = NeuralODEModel()
        self.encoder, self.middle, self.classifier = seed.encoder, middle, seed.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.middle(self.encoder(x)))


def variant(name: str, blocks: int = 20, width: int = 64) -> nn.Module:
    """One row's network (``blocks``: the ResNet's depth; ``width``: the paper ODE-Net's channels)."""
    from ..model import NeuralODEModel

    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10))
    if name == "identity":
        return Sandwich(nn.Identity())
    if name in ("resblock", "resblock-frozen"):
        return Sandwich(Residual())
    if name == "resnet":
        return Sandwich(nn.Sequential(*[Residual() for _ in range(blocks)]))
    if name == "rknet":
        return NeuralODEModel(method="rk4", step_size=0.25, adjoint=False)
    if name in ("odenet", "odenet-kinetic", "odenet-frozen"):
        return NeuralODEModel()
    if name == "odenet-t4":
        return NeuralODEModel(t_end=4.0)
    if name == "identity-frozen":
        return Sandwich(nn.Identity())
    if name == "paper":
        return NeuralODEModel(width, arch="paper")
    raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")


def _loss(model: nn.Module, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if name == "odenet-kinetic":
        logits, energy = model(x, energy=True)
        return F.cross_entropy(logits, y) + KINETIC * energy.mean()
    return F.cross_entropy(model(x), y)


def train_variant(name: str, seed: int, train, test, epochs: int, blocks: int, width: int = 64,
                  batch: int = 64) -> Dict:
    """Train one variant with the seed's recipe; its row for this seed."""
    torch.manual_seed(seed)
    model = variant(name, blocks, width).to(train.x.device)
    if name.endswith("-frozen"):
        model.encoder.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    seconds, nfe = [], []
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for x, y in train.batches(batch, order):
            loss = _loss(model, name, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if getattr(model, "stats", None) is not None:
                nfe.append(model.stats.nfe_forward)
        seconds.append(time.perf_counter() - start)
    x, y = next(iter(train.batches(batch, torch.Generator().manual_seed(0))))
    _, saved = saved_bytes(lambda: _loss(model, name, x, y))
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in test.batches(1000))
        at_z0 = (sum(int((model.classifier(model.encode(xb)).argmax(1) == yb).sum()) for xb, yb in test.batches(1000))
                 if hasattr(model, "odeblock") else None)
    return {"variant": name, "seed": seed, "params": sum(p.numel() for p in model.parameters()),
            "trained": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "test_error": 1.0 - correct / len(test),
            "z0_error": float("nan") if at_z0 is None else 1.0 - at_z0 / len(test),
            "s_per_epoch": statistics.median(seconds),
            "saved_MB": saved / 2 ** 20, "nfe": statistics.mean(nfe) if nfe else float("nan")}


def summarize(rows: List[Dict]) -> List[Dict]:
    """One row per variant: mean ± sd of the test error over its seeds."""
    out = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == name]
        errs = [100 * r["test_error"] for r in rs]
        sd = statistics.stdev(errs) if len(errs) > 1 else float("nan")
        out.append({"variant": name, "params (M)": rs[0]["params"] / 1e6, "trained (M)": rs[0]["trained"] / 1e6,
                    "test error %": statistics.mean(errs), "± sd": sd,
                    "error at z(0) %": statistics.mean(100 * r["z0_error"] for r in rs), "seeds": len(rs),
                    "s/epoch": statistics.median(r["s_per_epoch"] for r in rs),
                    "saved MB / step": statistics.mean(r["saved_MB"] for r in rs),
                    "NFE fwd": statistics.mean(r["nfe"] for r in rs)})
    return out


def add_args(s) -> None:
    s.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="rows (default: all)")
    s.add_argument("--seeds", nargs="+", type=count(0, 2 ** 31), default=[0, 1, 2], help="seeds (default: 0 1 2)")
    s.add_argument("--epochs", type=count(1, 100), default=10, help="epochs of the seed's recipe (default: 10)")
    s.add_argument("--blocks", type=count(1, 1000), default=20, help="the ResNet's blocks (default: 20, the "
                                                                      "ODE-Net's forward NFE)")
    s.add_argument("--paper-width", type=count(1, 512), default=64, help="channels of the paper's ODE-Net (default: "
                                                                        "64, the paper's)")
    s.add_argument("--train-subset", type=count(1), default=None, help="a fixed random subset of the training set")


def run(args, dev: torch.device, data_dir: str, meta: Dict, out: Path) -> None:
    from ..data import load_split

    train = load_split("mnist", data_dir, True, dev, args.train_subset, args.verify_data)
    test = load_split("mnist", data_dir, False, dev, None, args.verify_data)
    rows = [train_variant(v, s, train, test, args.epochs, args.blocks, args.paper_width)
            for v in args.variants for s in args.seeds]
    meta.update({"recipe": f"the seed's: Adam lr 1e-3, batch 64, {args.epochs} epochs, no augmentation; "
                           f"test error after the last epoch", "train images": len(train),
                 "paper ODE-Net channels": args.paper_width})
    write_study(out, "table1", "Table 1 on the seed's architecture", meta, {
        "Per variant (mean over seeds)": (summarize(rows), ["variant", "params (M)", "trained (M)", "test error %",
                                                            "± sd", "error at z(0) %", "seeds", "s/epoch",
                                                            "saved MB / step", "NFE fwd"]),
        "Every run": (rows, ["variant", "seed", "params", "test_error", "z0_error", "s_per_epoch", "saved_MB",
                             "nfe"])},
        as_json=args.json)
