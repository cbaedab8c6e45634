"""The six figures. Each function takes plain arrays, writes one PNG and returns what it plotted."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 110, "font.size": 9, "axes.titlesize": 10, "axes.titleweight": "bold",
    "axes.labelsize": 9, "legend.fontsize": 8, "axes.grid": True, "grid.alpha": 0.25, "axes.spines.top": False,
    "axes.spines.right": False, "figure.constrained_layout.use": True,
}
COLORS = plt.get_cmap("tab10").colors


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def training_history(history: List[Dict], path: Path) -> Dict[str, np.ndarray]:
    """1. Loss, accuracy (train and test) and NFE (forward and backward) per epoch."""
    ep = np.array([r["epoch"] for r in history])
    get = lambda k: np.array([r[k] for r in history], dtype=float)  # noqa: E731
    has_val = all("val_acc" in r for r in history)
    val_acc = [("val_acc", "validation")] if has_val else []
    val_loss = [("val_loss", "validation")] if has_val else []
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        for ax, (title, keys, ylabel) in zip(axes, [
            ("Loss", [("train_loss", "train"), ("test_loss", "test")] + val_loss, "cross-entropy"),
            ("Accuracy", [("train_acc", "train"), ("test_acc", "test")] + val_acc, "accuracy"),
            ("Function evaluations per batch", [("nfe_forward", "forward"), ("nfe_backward", "backward (adjoint)")],
             "NFE (mean per batch)"),
        ]):
            for i, (k, label) in enumerate(keys):
                ax.plot(ep, get(k), marker="o", ms=3.5, color=COLORS[i], label=label)
            ax.set(title=title, xlabel="epoch", ylabel=ylabel)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend()
        # the mark is chosen by validation accuracy, never by the test set; without validation: the last epoch
        pick = int(np.argmax(get("val_acc"))) if has_val else len(ep) - 1
        label = "best by validation" if has_val else "final"
        axes[1].annotate(f"{label}: test {get('test_acc')[pick]:.4f}", (ep[pick], get("test_acc")[pick]),
                         textcoords="offset points", xytext=(-10, -18), fontsize=8, ha="center")
        _save(fig, path)
    return {k: get(k) for k in ("train_loss", "test_loss", "train_acc", "test_acc", "nfe_forward", "nfe_backward")}


def ode_trajectories(traj: np.ndarray, labels: np.ndarray, ts: np.ndarray, path: Path,
                     class_names: Sequence[str]) -> Dict[str, np.ndarray]:
    """2. Latent paths z(t) ``(T, M, D)`` projected by a PCA fitted on all the states; start o, end x."""
    from sklearn.decomposition import PCA

    T, M, D = traj.shape
    pca = PCA(n_components=2).fit(traj.reshape(T * M, D))
    proj = pca.transform(traj.reshape(T * M, D)).reshape(T, M, 2)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 6))
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            for j, m in enumerate(idx):
                ax.plot(proj[:, m, 0], proj[:, m, 1], color=COLORS[c % 10], alpha=0.45, lw=0.9,
                        label=class_names[c] if j == 0 else None)
            ax.scatter(proj[0, idx, 0], proj[0, idx, 1], s=10, marker="o", facecolors="none",
                       edgecolors=COLORS[c % 10], lw=0.7)
            ax.scatter(proj[-1, idx, 0], proj[-1, idx, 1], s=16, marker="x", color=COLORS[c % 10])
        ev = pca.explained_variance_ratio_
        ax.set(title=f"ODE trajectories z(t), t in [{ts[0]:g}, {ts[-1]:g}] ({T} times, {M} test images)",
               xlabel=f"PC 1 ({ev[0]:.0%} of variance)", ylabel=f"PC 2 ({ev[1]:.0%} of variance)")
        leg = ax.legend(title="class  (o start, x end)", ncol=2, loc="best", markerscale=2)
        for line in leg.get_lines():
            line.set_alpha(1)
            line.set_linewidth(2)
        _save(fig, path)
    return {"projection": proj, "explained_variance_ratio": ev}


def latent_space(emb0: np.ndarray, embT: np.ndarray, labels: np.ndarray, scores: Dict[str, Dict[str, float]],
                 path: Path, class_names: Sequence[str]) -> Dict:
    """3. t-SNE of z(0) beside t-SNE of z(T), with separation scores of the 64-d states in the titles."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
        for ax, emb, key, title in ((axes[0], emb0, "z0", "before the ODE: z(0) = encoder(x)"),
                                    (axes[1], embT, "zT", "after the ODE: z(T), what the classifier sees")):
            for c in np.unique(labels):
                m = labels == c
                ax.scatter(emb[m, 0], emb[m, 1], s=4, color=COLORS[c % 10], label=class_names[c], alpha=0.8)
            s = scores[key]
            ax.set(title=f"{title}\n5-NN accuracy {s['knn_acc']:.3f}, silhouette {s['silhouette']:.3f}",
                   xlabel="t-SNE 1", ylabel="t-SNE 2")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1].legend(title="class", loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3)
        _save(fig, path)
    return {"scores": scores}


def ode_dynamics(ts: np.ndarray, znorm: np.ndarray, fnorm: np.ndarray, labels: np.ndarray, corr: np.ndarray,
                 path: Path, class_names: Sequence[str]) -> Dict[str, np.ndarray]:
    """4. Mean +- std of ||z(t)|| and ||dz/dt|| over t per class ``(T, M)``; correlation of the D dims at T."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), gridspec_kw={"width_ratios": [1, 1, 1.05]})
        for ax, val, title, ylabel in ((axes[0], znorm, "State norm ||z(t)||", "||z(t)||"),
                                       (axes[1], fnorm, "Speed ||dz/dt|| = ||f(z(t))||", "||dz/dt||")):
            for c in np.unique(labels):
                v = val[:, labels == c]
                mu, sd = v.mean(1), v.std(1)
                ax.plot(ts, mu, color=COLORS[c % 10], label=class_names[c], lw=1.4)
                ax.fill_between(ts, mu - sd, mu + sd, color=COLORS[c % 10], alpha=0.12)
            ax.set(title=f"{title} (mean +- std per class)", xlabel="t", ylabel=ylabel)
        axes[1].legend(title="class", ncol=2)
        im = axes[2].imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
        axes[2].set(title=f"Correlation of the {corr.shape[0]} latent dims at t=T", xlabel="dimension",
                    ylabel="dimension")
        axes[2].grid(False)
        fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04, label="Pearson r")
        _save(fig, path)
    return {"znorm_mean": znorm.mean(1), "fnorm_mean": fnorm.mean(1)}


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, path: Path, class_names: Sequence[str]) -> np.ndarray:
    """5. Counts (rows: true class, columns: predicted) with per-class recall beside each row."""
    k = len(class_names)
    cm = np.bincount(truth * k + pred, minlength=k * k).reshape(k, k)
    recall = cm.diagonal() / np.maximum(cm.sum(1), 1)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.2, 6.2))
        shown = np.log10(cm + 1)
        im = ax.imshow(shown, cmap="Blues")
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7.5,
                            color="white" if shown[i, j] > shown.max() * 0.6 else "black")
        ax.set_xticks(range(k), class_names, rotation=45 if max(map(len, class_names)) > 2 else 0)
        ax.set_yticks(range(k), [f"{n}  ({r:.1%})" for n, r in zip(class_names, recall)])
        ax.set(xlabel="predicted class", ylabel="true class (recall)",
               title=f"Confusion matrix: {cm.trace()} / {cm.sum()} correct ({cm.trace() / max(cm.sum(), 1):.2%})")
        ax.grid(False)
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cb.set_label("count (log scale)")
        ticks = [t for t in (1, 10, 100, 1000, 10000) if t <= cm.max()]
        cb.set_ticks(np.log10(np.array(ticks) + 1), labels=[str(t) for t in ticks])
        _save(fig, path)
    return cm


def predictions(images: np.ndarray, probs: np.ndarray, truth: np.ndarray, path: Path,
                class_names: Sequence[str], n_grid: int = 16, n_mistakes: int = 16) -> Dict[str, np.ndarray]:
    """6. Test digits with their top-3 probabilities, and the most confident mistakes."""
    pred = probs.argmax(1)
    conf = probs.max(1)
    sample = np.arange(min(n_grid, len(truth)))
    wrong = np.flatnonzero(pred != truth)
    mistakes = wrong[np.argsort(-conf[wrong])][:n_mistakes]
    cols = 8
    sections = [("Test digits with their top-3 class probabilities", sample),
                (f"The {len(mistakes)} most confident mistakes (of {len(wrong)})", mistakes)]
    heights = [max(1, int(np.ceil(len(ix) / cols))) for _, ix in sections]
    with plt.rc_context({**STYLE, "figure.constrained_layout.use": False}):
        fig = plt.figure(figsize=(cols * 1.55, sum(heights) * 2.0 + 0.8), layout="constrained")
        for sub, (title, ix), h in zip(fig.subfigures(2, 1, height_ratios=heights), sections, heights):
            sub.suptitle(title if len(ix) else f"{title}: none", fontweight="bold", fontsize=10)
            axes = np.atleast_1d(sub.subplots(h, cols)).reshape(-1)
            for ax in axes:
                ax.axis("off")
            for ax, i in zip(axes, ix):
                ax.imshow(images[i], cmap="gray", vmin=0, vmax=1)
                top = np.argsort(-probs[i])[:3]
                ok = pred[i] == truth[i]
                ax.set_title(f"true {class_names[truth[i]]}", fontsize=8, color="#1a7f37" if ok else "#c0392b")
                lines = "\n".join(f"{class_names[t][:10]}: {probs[i, t]:.3f}" for t in top)
                ax.text(0.5, -0.04, lines, transform=ax.transAxes, ha="center", va="top", fontsize=7,
                        family="monospace")
        _save(fig, path)
    return {"sample": sample, "mistakes": mistakes}


def solver_invariance(rows: List[Dict], path: Path, agreement: float = 0.999) -> Dict[str, np.ndarray]:
    """The share of the reference's answers each solver keeps, against its NFE (fixed grids as lines, adaptive
    solvers as points); the dashed line is the agreement export asks for."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        out = {}
        fixed = sorted({r["solver"] for r in rows if r["steps"]})
        for i, name in enumerate(fixed):
            pts = sorted((r["nfe"], 1.0 - r["changed"]) for r in rows if r["solver"] == name and r["steps"])
            x, y = np.array(pts).T
            ax.plot(x, 100 * y, "o-", color=COLORS[i], label=name)
            out[name] = y
        for j, r in enumerate(r for r in rows if not r["steps"]):
            ax.plot([r["nfe"]], [100 * (1.0 - r["changed"])], "s", color=COLORS[len(fixed) + j],
                    label=f"{r['solver']} (adaptive)")
        ax.axhline(100 * agreement, ls="--", color="grey", lw=0.8)
        ax.set(xscale="log", xlabel="NFE (forward, per batch)", ylabel="answers as the reference's (%)",
               title="Solver invariance")
        ax.legend()
        _save(fig, path)
    return out


def flow_changes(images: np.ndarray, labels: np.ndarray, ts: np.ndarray, classes: np.ndarray, path: Path,
                 class_names: Sequence[str]) -> Path:
    """Digits whose answer the flow changed: each image with its true class and the class along t (a strip of
    the argmax class at each time)."""
    n = max(len(images), 1)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 2.6), squeeze=False,
                                 gridspec_kw={"height_ratios": [3, 1]})
        for j in range(n):
            ax, strip = axes[0, j], axes[1, j]
            ax.axis("off")
            strip.set_yticks([])
            if j >= len(images):
                strip.axis("off")
                ax.set_title("the flow changed\nno answer", fontsize=8)
                continue
            ax.imshow(images[j], cmap="gray_r")
            ax.set_title(f"true {class_names[labels[j]]}\n{class_names[classes[j][0]]} → "
                         f"{class_names[classes[j][-1]]}", fontsize=8)
            strip.imshow(np.asarray(classes[j])[None, :], aspect="auto", cmap="tab10", vmin=0, vmax=9,
                         extent=(ts[0], ts[-1], 0, 1))
            strip.set_xticks([ts[0], ts[-1]])
            strip.set_xlabel("t", fontsize=7)
        _save(fig, path)
    return Path(path)
