"""Test-time augmentation: accuracy of trained models with one view, five and nine, on their validation or test split.

    python benchmarks/tta_views.py RUN_OR_CHECKPOINT [...] [--split val|test] [--data-dir DIR] [--json FILE]

Views: the image alone; the image and its four one-pixel shifts (odenet's ``--tta``, ``TTA_SHIFTS``); the image
and all eight one-pixel neighbours. Each model is classified by the softmax averaged over the views
(``odenet.evaluate.run_eval(..., tta=...)``). Prints one markdown row per model (named by its run folder, or its file for a
checkpoint) and the mean gain of each set over one view; ``--json`` also writes the rows to FILE.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from odenet.checkpoint import open_model
from odenet.data import TTA_SHIFTS
from odenet.errors import OdenetError
from odenet.evaluate import run_eval

VIEWS = {"1 view": False, "5 views (--tta)": TTA_SHIFTS,
         "9 views": tuple((dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", metavar="FILE", help="also write the rows to FILE (never overwritten)")
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {a.split} split")
    print("| model | " + " | ".join(VIEWS) + " |")
    print("|---|" + "---|" * len(VIEWS))
    if a.json and Path(a.json).exists():
        raise OdenetError(f"{a.json} exists: not overwritten")
    gains, rows = {k: [] for k in VIEWS}, []
    for ref in a.models:
        m = open_model(ref, "cpu", test=a.split == "test", data_dir=a.data_dir)
        split = m.test if a.split == "test" else m.val_split(a.data_dir)
        accs = {k: round(100.0 * run_eval(m.model, split, tta=shifts)["acc"], 4) for k, shifts in VIEWS.items()}
        for k in VIEWS:
            gains[k].append(accs[k] - accs["1 view"])
        name = Path(ref).name if Path(ref).is_dir() else str(ref)
        rows.append({"model": name, "split": a.split, "n": len(split), "accuracy": accs})
        print(f"| {name} | " + " | ".join(f"{accs[k]:.2f}%" for k in VIEWS) + " |", flush=True)
    print("| mean gain over 1 view | " + " | ".join(f"{statistics.mean(g):+.3f} pp" for g in gains.values()) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    try:
        main()
    except OdenetError as e:
        sys.exit(f"tta_views: error: {e}")
