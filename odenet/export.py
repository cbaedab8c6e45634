"""Take a trained model elsewhere: a static graph with the ODE unrolled on a fixed grid (ONNX, ``torch.export``),
checked by running it; and the weights as safetensors.

An adaptive solver is a loop whose length depends on the input, so it has no static graph; a fixed grid does.
``Unrolled`` is the whole classifier — encoder, the ODE unrolled on the same grid ``StepController.grid`` gives
the native engine, classifier, softmax — taking ``(B, 1, 28, 28)`` float32 images exactly as
``odenet.preprocess`` returns them and returning class probabilities ``(B, classes)``. Which grid keeps the
model's answers is measured by ``odenet.invariance.sweep``.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
import torch.nn as nn

from .config import Config
from .data import Split
from .errors import OdenetError
from .files import atomic_write_bytes
from .model import NeuralODEModel, ODEFunc
from .ode import FIXED_METHODS, TABLEAUS, StepController

FORMATS = ("onnx", "torch-export", "safetensors")
SAFETENSORS_FORMAT = "odenet-safetensors"
MAX_STEPS = 1000  # an unrolled graph of more steps than this is refused: its file would grow without bound


def _grid(t_end: float, steps: int) -> List[Tuple[float, float]]:
    """The intervals of the native engine's fixed grid over [0, T] with step ``T / steps`` (zero-length ones,
    left by rounding, skipped as the engine skips them)."""
    points = list(StepController(step_size=t_end / steps).grid([0.0, t_end]))
    return [(a, b) for a, b in zip(points[:-1], points[1:]) if b > a]


class Unrolled(nn.Module):
    """``model`` with its ODE unrolled on ``steps`` steps of the fixed-step ``method``: probabilities ``(B, C)``.

    The same function as ``model.predict`` under ``model.odeblock.settings(method=method, step_size=T / steps)``
    (tests/test_export.py holds it there); the stage sums are written out in order, so the two differ by float
    rounding only."""

    def __init__(self, model: NeuralODEModel, method: str, steps: int):
        super().__init__()
        if method not in FIXED_METHODS:
            raise OdenetError(f"{method} is not a fixed-step method: an adaptive solve has no static graph (its steps "
                              f"depend on the input); export a fixed grid: --solver rk4 --steps N (choose N with "
                              f"`odenet bench invariance`)")
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise OdenetError(f"--steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
        if type(model.odefunc) is not ODEFunc:
            raise OdenetError("export unrolls the seed's ODEFunc (an autonomous f(z)); this model's function differs")
        self.model, self.method, self.steps = model, method, steps
        self.tableau = TABLEAUS[method]
        self.intervals = _grid(float(model.odeblock.end_time), steps)

    def flow(self, z: torch.Tensor) -> torch.Tensor:
        """z(T) from z(0) by the unrolled steps: ``y1 = y + h sum_i b_i k_i``, ``k_i = f(y + h sum_j a_ij k_j)``."""
        tab, f = self.tableau, self.model.odefunc
        for t0, t1 in self.intervals:
            h = t1 - t0
            ks: List[torch.Tensor] = []
            for i in range(tab.stages):
                zi = z
                for a, k in zip(tab.a[i], ks):
                    if a != 0.0:
                        zi = zi + (h * a) * k
                ks.append(f(z.new_full((), t0 + tab.c[i] * h), zi))
            z = z + sum((h * b) * k for b, k in zip(tab.b, ks) if b != 0.0)
        return z

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model.classifier(self.flow(self.model.encode(images))), -1)


def onnx(model: NeuralODEModel, out: Path, method: str, steps: int) -> Path:
    """Write the unrolled classifier as ONNX (input ``images`` ``(batch, 1, 28, 28)``, output ``probabilities``;
    the batch size is dynamic)."""
    net = Unrolled(copy.deepcopy(model).float().cpu().eval(), method, steps)
    example = torch.zeros(2, 1, 28, 28)

    def write(f) -> None:
        torch.onnx.export(net, (example,), f, input_names=["images"], output_names=["probabilities"],
                          dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}}, opset_version=17,
                          dynamo=False)

    with torch.no_grad():
        atomic_write_bytes(Path(out), write)
    return Path(out)


def torch_export(model: NeuralODEModel, out: Path, method: str, steps: int) -> Path:
    """Write the same graph as a ``torch.export`` ExportedProgram (``torch.export.load(out).module()(images)``)."""
    net = Unrolled(copy.deepcopy(model).float().cpu().eval(), method, steps)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.export.export(net, (torch.zeros(2, 1, 28, 28),), dynamic_shapes=({0: batch},))
    atomic_write_bytes(Path(out), lambda f: torch.export.save(program, f))
    return Path(out)


def runner(path: Path, fmt: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function from a float32 batch ``(B, 1, 28, 28)`` to the exported file's probabilities: onnxruntime for
    ONNX, the loaded ExportedProgram for ``torch-export``."""
    if fmt == "onnx":
        ort = _require("onnxruntime", "the onnxruntime check")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(["probabilities"], {"images": x})[0]
    module = torch.export.load(str(path)).module()
    return lambda x: module(torch.from_numpy(x)).detach().numpy()


@torch.no_grad()
def check(run: Callable[[np.ndarray], np.ndarray], model: NeuralODEModel, test: Split, batch_size: int = 1000) -> Dict:
    """Run an exported graph (``run``, from ``runner``) on ``test``: its accuracy and its agreement with the
    PyTorch model (under the model's own solver) on the predicted class; the largest probability difference."""
    ours, theirs, gap = [], [], 0.0
    start = time.perf_counter()
    for x, _ in test.batches(batch_size):
        p_onnx = run(x.cpu().numpy().astype(np.float32))
        p_torch = model.predict(x).cpu().numpy()
        gap = max(gap, float(np.abs(p_onnx - p_torch).max()))
        ours.append(p_onnx.argmax(1))
        theirs.append(p_torch.argmax(1))
    seconds = time.perf_counter() - start
    a, b, y = np.concatenate(ours), np.concatenate(theirs), test.y.cpu().numpy()
    return {"n": len(y), "agreement": float((a == b).mean()), "exported_accuracy": float((a == y).mean()),
            "torch_accuracy": float((b == y).mean()), "max_probability_difference": gap, "seconds": seconds}


def safetensors(model: NeuralODEModel, cfg: Config, out: Path, epoch: int) -> Path:
    """The weights as safetensors, the run's config as JSON in the file's metadata (``odenet.load`` reads it).
    A tensor registered under two names (the ODE function's) is stored once; the metadata names its alias."""
    st = _require("safetensors.torch", "safetensors weights")
    tensors, aliases, seen = {}, {}, {}
    for k, v in model.state_dict().items():  # the ODE function is registered twice (odefunc, odeblock.odefunc)
        key = (v.data_ptr(), v.shape, v.stride())
        if key in seen:
            aliases[k] = seen[key]
        else:
            seen[key] = k
            tensors[k] = v.detach().float().cpu().contiguous()
    meta = {"format": SAFETENSORS_FORMAT, "config": json.dumps(cfg.to_dict()), "epoch": str(epoch),
            "aliases": json.dumps(aliases)}
    atomic_write_bytes(Path(out), lambda f: f.write(st.save(tensors, metadata=meta)))
    return Path(out)


def _require(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise OdenetError(f"{what} needs the export extra ({module.split('.')[0]} is missing): "
                          "pip install 'odenet-mnist[export]'") from None


__all__ = ["Unrolled", "onnx", "torch_export", "runner", "check", "safetensors", "FORMATS"]
