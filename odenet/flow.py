"""The flow of one digit through the ODE: the decision along t and the path over a map of test digits.

``decision_along_flow`` applies the classifier to z(t) at many times in [0, T] (one dense-output solve: the
same steps as predicting at T alone). ``FlowMap`` is the PCA plane of test digits' trajectories (the report's
trajectory figure), stored as plain tensors so it ships inside a checkpoint and loads with ``weights_only``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from .files import atomic_write_bytes
from .model import NeuralODEModel

MAP_FILE = "flow_map.pt"


@dataclass
class Flow:
    """One image's pass through the model: ``ts (T,)``, ``z (T, D)``, ``probs (T, K)``, NFE and milliseconds."""

    ts: np.ndarray
    z: np.ndarray
    probs: np.ndarray
    nfe: int
    ms: float

    @property
    def final(self) -> np.ndarray:
        """Class probabilities at t = T: the prediction."""
        return self.probs[-1]


@torch.no_grad()
def decision_along_flow(model: NeuralODEModel, x: torch.Tensor, n_times: int = 41, **solver) -> Flow:
    """Class probabilities of the classifier applied to z(t) for ``n_times`` times in [0, T] (``x``: (1, 1, 28, 28)).

    ``solver`` overrides the model's solver settings (method, rtol, atol, step_size, t_end).
    """
    model.eval()
    block = model.odeblock
    t_end = float(solver.pop("t_end", block.t_end))
    start = time.perf_counter()
    z0 = model.encode(x)
    ts = np.linspace(0.0, t_end, n_times)
    with block.settings(t_end=t_end):
        z = block.trajectory(z0, ts.tolist(), **solver)[:, 0]
    probs = torch.softmax(model.classify(z), -1)
    ms = (time.perf_counter() - start) * 1e3
    return Flow(ts, model.flat(z).cpu().numpy(), probs.cpu().numpy(), model.stats.nfe_forward, ms)


@dataclass
class FlowMap:
    """A PCA plane of the latent space and test digits' paths on it: ``paths (T, M, 2)``, ``labels (M,)``."""

    mean: np.ndarray
    components: np.ndarray
    paths: np.ndarray
    labels: np.ndarray
    explained: np.ndarray

    def project(self, z: np.ndarray) -> np.ndarray:
        """(..., D) latent states -> (..., 2) map coordinates."""
        return (z - self.mean) @ self.components.T

    def to_state(self) -> Dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in
                ("mean", "components", "paths", "labels", "explained")}

    @classmethod
    def from_state(cls, state: Dict[str, torch.Tensor]) -> "FlowMap":
        return cls(**{k: v.numpy() for k, v in state.items()})


@torch.no_grad()
def build_flow_map(model: NeuralODEModel, x: torch.Tensor, y: torch.Tensor, per_class: int = 30,
                   n_times: int = 21) -> FlowMap:
    """Fit the PCA plane on the trajectories of ``per_class`` test digits per class (``x``: (N, 1, 28, 28))."""
    from sklearn.decomposition import PCA

    model.eval()
    labels = y.cpu().numpy()
    idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    z0 = model.encode(x[torch.as_tensor(idx, device=x.device)])
    ts = np.linspace(0.0, model.odeblock.t_end, n_times).tolist()
    traj = model.flat(model.odeblock.trajectory(z0, ts)).cpu().numpy()  # (T, M, D)
    T, M, D = traj.shape
    pca = PCA(n_components=2).fit(traj.reshape(T * M, D))
    paths = pca.transform(traj.reshape(T * M, D)).reshape(T, M, 2)
    return FlowMap(pca.mean_.astype(np.float32), pca.components_.astype(np.float32), paths.astype(np.float32),
                   labels[idx].astype(np.int64), pca.explained_variance_ratio_.astype(np.float32))


def cached_flow_map(run: Path, model: NeuralODEModel, load_test) -> Optional[FlowMap]:
    """The run folder's cached map, or one built from the test set (``load_test() -> Split``) and cached."""

    path = Path(run) / MAP_FILE
    if path.is_file():
        try:
            return FlowMap.from_state(torch.load(path, map_location="cpu", weights_only=True))
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
            pass
    split = load_test()
    fmap = build_flow_map(model, split.x, split.y)
    atomic_write_bytes(path, lambda f: torch.save(fmap.to_state(), f))
    return fmap


@torch.no_grad()
def contribution(model: NeuralODEModel, split, batch_size: int = 1000, examples: int = 8,
                 n_times: int = 21) -> Dict:
    """What the ODE adds to the classifier on ``split`` (a ``Split``): the classifier's accuracy on z(0) (no flow)
    and on z(T), the share of answers the flow changes, the mean relative displacement ``|z(T) - z(0)| / |z(0)|``,
    the accuracy at the end times 0, T/4, T/2, T and 2T (the flow stopped early or run on), and up to ``examples``
    digits whose answer the flow changed, with the class along t (``n_times`` times in [0, T])."""
    model.eval()
    block = model.odeblock
    t_end = float(block.end_time)
    times = [0.25 * t_end, 0.5 * t_end, t_end, 2.0 * t_end]
    labels = split.y
    pred0, predT, moved, by_t = [], [], [], []
    for x, _ in split.batches(batch_size):
        z0 = model.encode(x)
        zT = block(z0)
        zs = block.trajectory(z0, times)  # (4, B, *state): dense output of one solve over [0, 2T]
        pred0.append(model.classifier(z0).argmax(1))
        predT.append(model.classifier(zT).argmax(1))
        z0f = model.flat(z0)
        moved.append((model.flat(zT) - z0f).norm(dim=1) / z0f.norm(dim=1).clamp_min(1e-12))
        by_t.append(model.classify(zs).argmax(-1))
    p0, pT, step = torch.cat(pred0), torch.cat(predT), torch.cat(moved)
    pt = torch.cat(by_t, 1)
    n = len(labels)
    acc = lambda p: int((p == labels).sum()) / n  # noqa: E731 - counts, exact
    share = lambda mask: int(mask.sum()) / n  # noqa: E731
    changed = torch.nonzero(p0 != pT).flatten()[:examples]
    ts = np.linspace(0.0, t_end, n_times)
    along = (model.decision(split.x[changed], ts.tolist()).argmax(-1).T if len(changed)
             else torch.zeros(0, n_times, dtype=torch.long))
    return {"acc_z0": acc(p0), "acc_zT": acc(pT), "changed": share(p0 != pT),
            "changed_right": share((p0 != pT) & (pT == labels)), "changed_wrong": share((p0 != pT) & (p0 == labels)),
            "rel_displacement": float(step.mean()), "n": n,
            "acc_by_t": {"0": acc(p0), **{f"{t / t_end:g}T": acc(pt[i]) for i, t in enumerate(times)}},
            "examples": {"index": changed.tolist(), "label": labels[changed].tolist(), "ts": ts.tolist(),
                         "class_along_t": along.tolist()}}


def last_change(ts: np.ndarray, classes: np.ndarray) -> Optional[Tuple[int, int, float]]:
    """Where the answer along the flow settled: ``(from class, to class, t)`` of its last change, or None when the
    class never changes. ``classes``: the class at each time of ``ts``."""
    classes = np.asarray(classes)
    off = np.flatnonzero(classes != classes[-1])
    if len(off) == 0:
        return None
    i = int(off[-1]) + 1  # from here on the answer is the final one
    return int(classes[i - 1]), int(classes[-1]), float(ts[i])
