"""The one-page training report: six figures from a run's metrics and best checkpoint, plus report.html."""
from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from . import figures, invariance
from .checkpoint import open_model
from .files import atomic_write_text
from .data import STATS, Split, class_names
from .errors import OdenetError
from .flow import contribution
from .model import NeuralODEModel

FIGURES = ["training_history", "ode_trajectories", "latent_space", "ode_dynamics", "confusion_matrix", "predictions"]
CAPTIONS = {
    "training_history": "Loss and accuracy on the training set (running mean over the epoch) and the test set, "
                        "and the solver's mean function evaluations per batch: forward pass and adjoint backward "
                        "pass. Rising NFE means the learned dynamics are getting harder to integrate.",
    "ode_trajectories": "Each line is one test image's latent state z(t) from t=0 (o) to t=T (x), solved with the "
                        "run's own solver at evenly spaced times and projected on the two principal components of "
                        "all states. Classes that start mixed should end in separate clusters.",
    "latent_space": "t-SNE maps of the 64-d state before the ODE (encoder output) and after it (the classifier's "
                    "input). The titles score separation on the 64-d states themselves, not on the map: "
                    "cross-validated 5-nearest-neighbour accuracy and the silhouette coefficient (higher is better).",
    "ode_dynamics": "Left and middle: per class, the mean (line) and standard deviation (band) of the state's norm "
                    "and of its speed ||f(z)|| along t. Right: Pearson correlation between the latent dimensions at "
                    "t=T over the test set; strong blocks mean redundant dimensions.",
    "confusion_matrix": "Test-set counts by true (rows) and predicted (columns) class; the row labels carry each "
                        "class's recall. Off-diagonal cells are the mistakes.",
    "predictions": "Top: the first test digits with their three most probable classes (green: the true class). "
                   "Bottom: the mistakes the model made with the highest confidence.",
}


def figure_dir(run: Path) -> Path:
    return Path(run) / "figures"


def read_history(run: Path) -> List[Dict]:
    p = Path(run) / "metrics.jsonl"
    if not p.is_file():
        raise OdenetError(f"{run} has no metrics.jsonl: not a run folder, or training has not finished an epoch")
    try:
        history = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError):
        raise OdenetError(f"{p} is damaged: not one JSON record per line") from None
    if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in history):
        raise OdenetError(f"{p} is damaged: a record without its epoch")
    if not history:
        raise OdenetError(f"{run}/metrics.jsonl is empty: no epoch has finished yet")
    return history


def history_hook(run: Path, history: List[Dict]) -> None:
    """Epoch hook for ``odenet.train.train``: refresh the training-history figure."""
    figures.training_history(history, figure_dir(run) / "training_history.png")


@dataclass
class ReportData:
    """Everything the figures need, computed once from a model and a test split (numpy arrays)."""

    z0: np.ndarray         # (N, D) encoder outputs
    zT: np.ndarray         # (N, D) ODE outputs, the classifier's input
    probs: np.ndarray      # (N, K)
    labels: np.ndarray     # (N,)
    ts: np.ndarray         # (T,)
    traj: np.ndarray       # (T, M, D) for the trajectory sample
    traj_labels: np.ndarray  # (M,)
    fnorm: np.ndarray      # (T, M) ||f(z(t))||
    images: np.ndarray     # (N, 28, 28) in [0, 1] for display


@torch.no_grad()
def collect(model: NeuralODEModel, split: Split, dataset: str, n_times: int = 21, per_class: int = 60,
            batch_size: int = 1000) -> ReportData:
    """Encoder outputs, ODE outputs and probabilities for the split; trajectories for ``per_class`` per class."""
    model.eval()
    z0s, zTs, probs = [], [], []
    for x, _ in split.batches(batch_size):
        z0 = model.encode(x)
        zT = model.odeblock(z0)
        z0s.append(z0)
        zTs.append(zT)
        probs.append(torch.softmax(model.classifier(zT), 1))
    z0, zT, pr = torch.cat(z0s), torch.cat(zTs), torch.cat(probs)
    labels = split.y.cpu().numpy()
    idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    ts = np.linspace(0.0, model.odeblock.t_end, n_times)
    states = model.odeblock.trajectory(z0[torch.as_tensor(idx, device=z0.device)], ts.tolist())  # (T, M, *state)
    fnorm = torch.stack([model.flat(model.odefunc(float(t), z)).norm(dim=-1) for t, z in zip(ts, states)])
    traj = model.flat(states)
    mean, std = STATS[dataset]
    images = (split.x[:, 0] * std + mean).clamp(0, 1)
    return ReportData(model.flat(z0).cpu().numpy(), model.flat(zT).cpu().numpy(), pr.cpu().numpy(), labels, ts,
                      traj.cpu().numpy(), labels[idx], fnorm.cpu().numpy(), images.cpu().numpy())


def separation_scores(z: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """Cross-validated 5-NN accuracy and silhouette of states ``z`` ``(N, D)`` under ``labels``."""
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    folds = int(min(5, np.bincount(labels).min())) if len(np.unique(labels)) > 1 else 0
    knn = float(cross_val_score(KNeighborsClassifier(5), z, labels, cv=folds).mean()) if folds >= 2 else float("nan")
    sil = float(silhouette_score(z, labels)) if len(np.unique(labels)) > 1 else float("nan")
    return {"knn_acc": knn, "silhouette": sil}


def flow_stats(data: ReportData) -> Dict[str, float]:
    """How far the ODE moves the states: mean ``|z(T) - z(0)|`` and ``|z(0)|`` over the split, and the mean
    kinetic energy ``integral |f(z(t))|^2 dt`` of the trajectory sample (trapezoid rule on ``data.ts``)."""
    sq = data.fnorm.astype(np.float64) ** 2
    energy = ((sq[1:] + sq[:-1]) / 2 * np.diff(data.ts)[:, None]).sum(0)
    return {"displacement": float(np.linalg.norm(data.zT - data.z0, axis=1).mean()),
            "z0_norm": float(np.linalg.norm(data.z0, axis=1).mean()), "kinetic": float(energy.mean())}


def tsne(z: np.ndarray, seed: int = 0, iterations: int = 500) -> np.ndarray:
    """2-d t-SNE of ``z`` ``(N, D)``. 500 iterations (sklearn's default is 1000) draw the same clusters of the
    2,000 report points in half the time (9.9 vs 19.4 s for the two maps on 2 cores)."""
    import inspect

    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(z) - 1) / 3.0)))
    key = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"  # renamed in sklearn 1.5
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed,
                **{key: iterations}).fit_transform(z)


def make_figures(run: Path, history: List[Dict], data: ReportData, names: List[str], tsne_points: int = 2000) -> Dict:
    """Write the six PNGs into ``run/figures``; return what each figure function returned."""
    out = figure_dir(run)
    res = {"training_history": figures.training_history(history, out / "training_history.png")}
    show = np.concatenate([np.flatnonzero(data.traj_labels == c)[:12] for c in np.unique(data.traj_labels)])
    res["ode_trajectories"] = figures.ode_trajectories(data.traj[:, show], data.traj_labels[show], data.ts,
                                                       out / "ode_trajectories.png", names)
    pick = np.random.default_rng(0).permutation(len(data.labels))[:tsne_points]
    lab = data.labels[pick]
    scores = {"z0": separation_scores(data.z0[pick], lab), "zT": separation_scores(data.zT[pick], lab)}
    res["latent_space"] = figures.latent_space(tsne(data.z0[pick]), tsne(data.zT[pick]), lab, scores,
                                               out / "latent_space.png", names)
    corr = np.nan_to_num(np.corrcoef(data.zT.T))
    znorm = np.linalg.norm(data.traj, axis=-1)
    res["ode_dynamics"] = figures.ode_dynamics(data.ts, znorm, data.fnorm, data.traj_labels, corr,
                                               out / "ode_dynamics.png", names)
    res["confusion_matrix"] = figures.confusion_matrix(data.labels, data.probs.argmax(1), out / "confusion_matrix.png",
                                                       names)
    res["predictions"] = figures.predictions(data.images, data.probs, data.labels, out / "predictions.png", names)
    return res


def write_report(run: Path, data_dir: Optional[str] = None, device: str = "auto", tsne_points: int = 2000) -> Path:
    """Render the six figures and ``report.html`` for a run folder; returns the HTML path."""
    start = time.perf_counter()
    run = Path(run)
    if not run.is_dir():
        raise OdenetError(f"no such run folder: {run}")
    history = read_history(run)
    m = open_model(run, device, test=True, data_dir=data_dir, test_subset="run")
    names = class_names(m.cfg.dataset)
    data = collect(m.model, m.test, m.cfg.dataset)
    res = make_figures(run, history, data, names, tsne_points)
    sections = flow_section(run, m.model, m.test, data.images, names) + invariance_section(run, m.model, m.test)
    acc = float((data.probs.argmax(1) == data.labels).mean())
    seconds = time.perf_counter() - start
    page = render_html(run, m.cfg.to_dict(), history, str(m.model), m.path.name, m.state["epoch"], acc,
                       len(data.labels), res["latent_space"]["scores"], seconds, m.chosen_by, flow_stats(data),
                       sections)
    out = run / "report.html"
    atomic_write_text(out, page)
    return out


def _figure(path: Path, alt: str, caption: str) -> str:
    b64 = base64.b64encode(Path(path).read_bytes()).decode()
    return (f'<figure><img alt="{alt}" src="data:image/png;base64,{b64}"><figcaption>{html.escape(caption)}'
            "</figcaption></figure>")


def flow_section(run: Path, model: NeuralODEModel, test: Split, images: np.ndarray, names: List[str]) -> str:
    """What the flow contributes (``flow.contribution``): the numbers, accuracy against the end time, and the
    digits whose answer the flow changed."""
    c = contribution(model, test)
    ex = c["examples"]
    idx = ex["index"]
    path = figures.flow_changes(images[np.asarray(idx, dtype=int)], np.array(ex["label"], dtype=int),
                                np.array(ex["ts"]),
                                np.array(ex["class_along_t"], dtype=int).reshape(len(idx), len(ex["ts"])),
                                figure_dir(run) / "flow_changes.png", names)
    rows = [("classifier on z(0), no flow", f"{c['acc_z0']:.4f}"), ("classifier on z(T)", f"{c['acc_zT']:.4f}"),
            ("answers the flow changes", f"{c['changed']:.2%} ({c['changed_right']:.2%} to right, "
                                         f"{c['changed_wrong']:.2%} to wrong) of {c['n']} test images"),
            ("mean |z(T) - z(0)| / |z(0)|", f"{c['rel_displacement']:.3f}")]
    by_t = _table([(f"accuracy with the flow stopped at t = {k}", f"{v:.4f}") for k, v in c["acc_by_t"].items()])
    return ("<h2>What the flow contributes</h2>" + _table(rows) + by_t +
            _figure(path, "flow_changes", "Test digits whose answer the flow changed (up to 8): the true class, the "
                    "answer at t = 0 and at T, and the class along t (one colour per class)."))


def invariance_section(run: Path, model: NeuralODEModel, test: Split) -> str:
    """The model's answers under other solvers (``odenet bench invariance``): a table, a figure, a verdict."""
    res = invariance.sweep(model, test)
    rows = res.to_dict()["rows"]
    path = figure_dir(run) / "solver_invariance.png"
    figures.solver_invariance(rows, path, invariance.AGREEMENT)
    table = ("<table><tr><th>solver</th><th>steps</th><th>NFE</th><th>test accuracy</th><th>answers changed vs "
             "dopri5 rtol 1e-7</th></tr>" + "".join(
                 f"<tr><td>{r.solver}</td><td>{r.steps or 'adaptive'}</td><td>{r.nfe:.0f}</td>"
                 f"<td>{r.accuracy:.4f}</td><td>{r.changed:.2%}</td></tr>" for r in res.rows) + "</table>")
    return (f"<h2>Solver invariance</h2><p>{html.escape(res.verdict())} (reference accuracy "
            f"{res.reference_accuracy:.4f} at {res.reference_nfe:.0f} NFE).</p>" + table +
            _figure(path, "solver_invariance", "Share of the reference's answers each solver keeps against its NFE; "
                    "the dashed line is the 99.9% that odenet export asks of a fixed grid."))


def _table(rows) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                               for k, v in rows) + "</table>"


def render_html(run: Path, config: Dict, history: List[Dict], model_print: str, ck_name: str, ck_epoch: int,
                acc: float, n: int, scores: Dict, seconds: float, chosen: str = "",
                flow: Optional[Dict[str, float]] = None, sections: str = "") -> str:
    """A self-contained page: images embedded as base64, no external resources."""
    last = history[-1]
    val = [("best validation accuracy (chooses best.pt)", "{val_acc:.4f} at epoch {epoch}".format(
        **max(history, key=lambda r: r["val_acc"])))] if all("val_acc" in r for r in history) else []
    metrics = [("checkpoint", f"{ck_name} (after epoch {ck_epoch}; {chosen})"),
               ("test accuracy (checkpoint)", f"{acc:.4f} on {n} images"),
               ("epochs trained", len(history)),
               ("final train loss / acc", f"{last['train_loss']:.4f} / {last['train_acc']:.4f}"),
               ("final test loss / acc", f"{last['test_loss']:.4f} / {last['test_acc']:.4f}"),
               *([("final test loss / acc with test-time augmentation (the image and its four one-pixel shifts)",
                   f"{last['test_loss_tta']:.4f} / {last['test_acc_tta']:.4f}")] if "test_acc_tta" in last else []),
               *val,
               ("NFE forward / backward (last epoch)", f"{last['nfe_forward']:.1f} / {last['nfe_backward']:.1f}"),
               ("seconds per epoch (mean)", f"{np.mean([r['epoch_seconds'] for r in history]):.1f}"),
               ("5-NN accuracy z(0) -> z(T)", f"{scores['z0']['knn_acc']:.3f} -> {scores['zT']['knn_acc']:.3f}"),
               *([("how far the ODE moves a state: mean |z(T) - z(0)| (mean |z(0)|)",
                   f"{flow['displacement']:.3g} ({flow['z0_norm']:.3g})"),
                  ("kinetic energy: mean integral of |dz/dt|^2 dt", f"{flow['kinetic']:.3g}")] if flow else []),
               ("report built in", f"{seconds:.1f} s")]
    parts = []
    for i, name in enumerate(FIGURES, 1):
        b64 = base64.b64encode((figure_dir(run) / f"{name}.png").read_bytes()).decode()
        parts.append(f'<figure><img alt="{name}" src="data:image/png;base64,{b64}"><figcaption><b>{i}. {name}.</b> '
                     f"{html.escape(CAPTIONS[name])}</figcaption></figure>")
    css = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222;padding:0 1em}"
           "table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ddd;padding:3px 8px;"
           "text-align:left;font-size:13px}th{background:#f5f5f5}img{max-width:100%}figure{margin:1.5em 0}"
           "figcaption{font-size:14px;color:#444;margin-top:.3em}pre{background:#f7f7f7;padding:8px;font-size:12px}"
           ".cols{display:flex;gap:2em;flex-wrap:wrap}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>odenet report: {html.escape(run.name)}</title>"
            f"<style>{css}</style></head><body><h1>odenet training report: {html.escape(run.name)}</h1>"
            f"<div class='cols'><div><h2>Results</h2>{_table(metrics)}</div>"
            f"<div><h2>Configuration</h2>{_table(config.items())}</div></div>"
            + "".join(parts) + sections +
            f"<h2>Model</h2><pre>{html.escape(model_print)}</pre></body></html>")
