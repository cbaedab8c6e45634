"""Benchmarks: ``odenet bench speed | solvers | gradients | invariance | table1 | roofline``. Each prints a markdown table and writes
``<out>/<study>.md``, ``<study>.json`` and ``<study>.png``. Benchmarks measure; tests only exercise them.

One module per study (``speed``, ``solvers``, ``gradients``, ``invariance``, ``table1``, ``roofline``), each with its ``add_args`` and ``run``; ``common``
holds what they share.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..config import count, default_data_dir
from ..errors import OdenetError
from . import gradients, invariance, roofline, solvers, speed, table1
from .common import device, machine

STUDIES = {
    "speed": (speed, "plain torchdiffeq vs odenet's training step (same data, seed)"),
    "solvers": (solvers, "accuracy, time, NFE and stability per solver"),
    "gradients": (gradients, "adjoint vs direct backprop: error, memory, time"),
    "invariance": (invariance, "a trained model's answers under other solvers (which fixed grid to export)"),
    "table1": (table1, "Chen et al.'s Table 1 on the seed's architecture: what the ODE block contributes"),
    "roofline": (roofline, "the training step's FLOPs and rate against the machine's matrix-product rate"),
}


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: speed, solvers, gradients, invariance, table1, roofline")
    bs = p.add_subparsers(dest="study", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default="bench", help="folder for the tables and plots (default: bench)")
    common.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    common.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    common.add_argument("--data-dir", default=None, help="dataset folder (default: $ODENET_DATA_DIR or the cache)")
    common.add_argument("--seed", type=count(0, 2 ** 63 - 1), default=0, help="random seed (default: 0)")
    common.add_argument("--no-verify-data", dest="verify_data", action="store_false",
                        help="skip the MD5 check of dataset files (for your own IDX files)")
    for name, (module, text) in STUDIES.items():
        module.add_args(bs.add_parser(name, parents=[common], help=text))


def run(args) -> int:
    dev = device(args.device)
    data_dir = args.data_dir or default_data_dir()
    command = ("odenet " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("odenet")
               else "odenet bench " + args.study)
    meta = {"machine": machine(dev), "date": time.strftime("%Y-%m-%d"), "command": command}
    for k in ("batches", "rounds", "epochs", "train_subset", "test_subset"):
        if hasattr(args, k) and getattr(args, k) is not None and getattr(args, k) <= 0:
            raise OdenetError(f"--{k.replace('_', '-')} must be positive")
    out = Path(args.out)
    created = not out.exists()
    try:  # before minutes of timing: the tables must have somewhere to go
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".odenet-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OdenetError(f"--out {args.out} is not a folder odenet can write to ({e.strerror or e})") from None
    try:
        STUDIES[args.study][0].run(args, dev, data_dir, meta, out)
    except BaseException:  # a refused setting or an interrupt leaves no empty folder behind
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    return 0
