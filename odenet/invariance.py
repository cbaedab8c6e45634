"""Solver invariance: does a trained model give the same answers under another solver?

A model trained with one discretisation may change its answers under another (Ott et al., ICLR 2021). ``sweep``
solves the test set's z(0) under fixed grids (euler, midpoint, rk4 at 1-16 steps) and under adaptive solvers at
the training tolerances, and compares each with a tight reference solve (dopri5, rtol 1e-7): the test accuracy,
the share of answers that change, and the NFE. ``coarsest`` is the cheapest fixed grid whose answers match the
reference on at least ``AGREEMENT`` of the digits: the grid ``odenet export`` unrolls by default.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import torch

from .data import Split
from .errors import OdenetError
from .model import NeuralODEModel

FIXED = ("euler", "midpoint", "rk4")
STEPS = (1, 2, 4, 8, 16)
ADAPTIVE = ("dopri5", "bosh3")
REFERENCE = {"method": "dopri5", "rtol": 1e-7, "atol": 1e-9}
AGREEMENT = 0.999


@dataclass
class Row:
    """One solver setting: ``steps`` of a fixed grid over [0, T] (None for an adaptive method), the forward NFE
    per image batch, the test accuracy and the share of answers that differ from the reference solve."""

    solver: str
    steps: Optional[int]
    nfe: float
    accuracy: float
    changed: float

    @property
    def agreement(self) -> float:
        return 1.0 - self.changed

    @property
    def label(self) -> str:
        return f"{self.solver} × {self.steps}" if self.steps else f"{self.solver} (adaptive)"


@dataclass
class Sweep:
    """The reference's accuracy and NFE, every row, and the coarsest fixed grid that matches the reference."""

    reference_accuracy: float
    reference_nfe: float
    rows: List[Row]
    n: int
    t_end: float
    tolerances: Dict[str, float]

    @property
    def coarsest(self) -> Optional[Row]:
        """The fixed grid of fewest evaluations whose answers match the reference on >= ``AGREEMENT``."""
        ok = [r for r in self.rows if r.steps and r.agreement >= AGREEMENT]
        return min(ok, key=lambda r: (r.nfe, -r.agreement)) if ok else None

    def to_dict(self) -> Dict:
        best = self.coarsest
        return {"reference": dict(REFERENCE, accuracy=self.reference_accuracy, nfe=self.reference_nfe),
                "n": self.n, "t_end": self.t_end, "training_tolerances": self.tolerances,
                "rows": [asdict(r) for r in self.rows],
                "coarsest_fixed_grid": None if best is None else {"solver": best.solver, "steps": best.steps,
                                                                  "agreement": best.agreement}}

    def verdict(self) -> str:
        """One sentence on whether the model is solver-invariant."""
        best = self.coarsest
        if best is None:
            worst = min(self.rows, key=lambda r: r.agreement)
            return (f"not solver-invariant: no fixed grid up to {max(STEPS)} steps gives the reference's answers on "
                    f"{AGREEMENT:.1%} of the {self.n} digits ({worst.label} changes {worst.changed:.2%})")
        return (f"solver-invariant down to {best.label} ({best.nfe:.0f} NFE): it changes {best.changed:.2%} of the "
                f"reference's answers on {self.n} digits")


@torch.no_grad()
def _answers(model: NeuralODEModel, z0: List[torch.Tensor], labels: torch.Tensor, **settings):
    """Predicted classes, accuracy and mean forward NFE per batch of ``z0`` under ``settings``."""
    block = model.odeblock
    preds, nfe = [], []
    with block.settings(**settings):
        for z in z0:
            preds.append(model.classifier(block(z)).argmax(1))
            nfe.append(block.stats.nfe_forward)
    pred = torch.cat(preds)
    return pred, float((pred == labels).float().mean()), sum(nfe) / len(nfe)


@torch.no_grad()
def sweep(model: NeuralODEModel, split: Split, batch_size: int = 1000, fixed: Sequence[str] = FIXED,
          steps: Sequence[int] = STEPS, adaptive: Sequence[str] = ADAPTIVE) -> Sweep:
    """The model's answers on ``split`` under each solver setting, against the reference solve."""
    if len(split) == 0:
        raise OdenetError("the solver-invariance sweep needs at least one image")
    model.eval()
    block = model.odeblock
    t_end = float(block.end_time)
    z0 = [model.encode(x) for x, _ in split.batches(batch_size)]
    labels = split.y
    ref, ref_acc, ref_nfe = _answers(model, z0, labels, **REFERENCE, max_steps=None)
    c = block.solver.controller
    rows = []
    for method in fixed:
        for n in steps:
            pred, acc, nfe = _answers(model, z0, labels, method=method, step_size=t_end / n, max_steps=None)
            rows.append(Row(method, n, nfe, acc, float((pred != ref).float().mean())))
    for method in adaptive:
        pred, acc, nfe = _answers(model, z0, labels, method=method, rtol=c.rtol, atol=c.atol, step_size=None)
        rows.append(Row(method, None, nfe, acc, float((pred != ref).float().mean())))
    return Sweep(ref_acc, ref_nfe, rows, len(labels), t_end, {"rtol": c.rtol, "atol": c.atol})


def table(result: Sweep) -> str:
    """The sweep as a markdown table."""
    lines = ["| solver | steps | NFE | test accuracy | answers changed vs reference |", "|---|---|---|---|---|",
             f"| dopri5 rtol 1e-7 (reference) | adaptive | {result.reference_nfe:.0f} | "
             f"{result.reference_accuracy:.4f} | — |"]
    for r in result.rows:
        steps = r.steps if r.steps else f"adaptive, rtol {result.tolerances['rtol']:g}"
        lines.append(f"| {r.solver} | {steps} | {r.nfe:.0f} | {r.accuracy:.4f} | {r.changed:.2%} |")
    return "\n".join(lines)


__all__ = ["sweep", "Sweep", "Row", "table", "AGREEMENT", "REFERENCE"]
