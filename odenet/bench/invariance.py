"""``odenet bench invariance``: a trained model's answers under other solvers, against a tight reference solve."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch

from ..config import count
from .common import write_study


def add_args(s) -> None:
    s.add_argument("--model", metavar="RUN_DIR|CHECKPOINT", help="the model (default: the shipped one)")
    s.add_argument("--test-subset", type=count(1), default=None, help="a fixed random subset of the test set")
    s.add_argument("--batch-size", type=count(1, 60_000), default=1000, help="batch size (default: 1000)")


def run(args, dev: torch.device, data_dir: str, meta: Dict, out: Path) -> None:
    from .. import figures, invariance
    from ..checkpoint import open_model

    m = open_model(args.model, dev, test=True, data_dir=args.data_dir, test_subset=args.test_subset)
    result = invariance.sweep(m.model, m.test, args.batch_size)
    data = result.to_dict()
    meta.update({"model": str(m.path), "reference": "dopri5 rtol 1e-7 atol 1e-9",
                 "test images": result.n, "verdict": result.verdict()})
    rows = [{"solver": r.solver, "steps": r.steps or "adaptive", "NFE": r.nfe, "accuracy": r.accuracy,
             "changed vs reference": r.changed} for r in result.rows]
    write_study(out, "invariance", "Solver invariance of a trained model", meta, {
        "Each solver against the reference (answers changed: share of test digits)":
            (rows, ["solver", "steps", "NFE", "accuracy", "changed vs reference"])},
        plot=lambda p: figures.solver_invariance(data["rows"], p, invariance.AGREEMENT), as_json=args.json)
