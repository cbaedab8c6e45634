"""What every benchmark shares: the machine in words, device sync, markdown tables and the study files."""
from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch


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


def saved_bytes(fn: Callable[[], torch.Tensor]):
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


def sync(device: torch.device) -> None:
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


def device(name: str) -> torch.device:
    from ..device import resolve_device

    return resolve_device(name)
