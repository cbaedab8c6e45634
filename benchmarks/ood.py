"""Which signal says "this is not a digit"? The softmax baseline against what the ODE offers.

    python benchmarks/ood.py [--n 2000] [--val-size 5000]

The shipped model. In-distribution: the MNIST test set. Out: the Fashion-MNIST test set, uniform noise, MNIST
test digits inverted, and rotated by 90 degrees (``--n`` images of each). Scores (higher = less like a digit):
1 - max softmax; the NFE of an adaptive solve of the image alone; the kinetic energy integral |f(z(t))|^2 dt;
the displacement |z(T) - z(0)|; the squared Mahalanobis distance to the nearest class mean in z(0) and in z(T)
(means and shared covariance from the training images outside the validation part); the sum of the two
Mahalanobis scores, each divided by its validation threshold; and odenet.ood's score (Mahalanobis in the
encoder's pooled conv maps, its hidden layer and z(T) joined). Every threshold is the 99.5% quantile of the
score on a validation part of the training set (``--val-size`` images, seeded), never chosen on a test set.
Prints AUROC against each out-set, the share of MNIST test digits flagged and the share of each out-set flagged
at that threshold. Needs $ODENET_DATA_DIR.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from odenet import ood
from odenet.bench.common import machine
from odenet.checkpoint import load_model
from odenet.data import read_split, normalize
from odenet.checkpoint import SHIPPED


@torch.no_grad()
def signals(model, x: torch.Tensor, n_times: int = 21, batch: int = 1000) -> dict:
    """Per-image softmax confidence, z(0), z(T), kinetic energy and displacement of normalized images ``x``."""
    out = {k: [] for k in ("msp", "z0", "zT", "kinetic", "displacement", "features")}
    ts = torch.linspace(0, model.odeblock.t_end, n_times, dtype=torch.float64)
    for i in range(0, len(x), batch):
        maps, hidden, z0 = model.encode_stages(x[i:i + batch])
        traj = model.odeblock.trajectory(z0, ts.tolist())  # (T, B, D), dense output: one solve
        f2 = torch.stack([model.odefunc(t, z).pow(2).sum(1) for t, z in zip(ts, traj)])  # (T, B)
        out["kinetic"].append(torch.trapezoid(f2, ts.to(f2.dtype), dim=0))
        out["msp"].append(torch.softmax(model.classifier(traj[-1]), 1).max(1).values)
        out["z0"].append(z0)
        out["zT"].append(traj[-1])
        out["displacement"].append((traj[-1] - z0).norm(dim=1))
        out["features"].append(ood.features(maps, hidden, traj[-1]))
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def solo_nfe(model, x: torch.Tensor) -> torch.Tensor:
    """NFE of the adaptive solve of each image alone (the step sizes a batch would share are its own)."""
    nfe = []
    for i in range(len(x)):
        model.odeblock(model.encode(x[i:i + 1]))
        nfe.append(model.stats.nfe_forward)
    return torch.tensor(nfe, dtype=torch.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="images of each test set (default: 2000)")
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--nfe-n", type=int, default=500, help="images of each set solved alone for the NFE score")
    a = p.parse_args()
    root = os.environ["ODENET_DATA_DIR"]
    torch.manual_seed(0)
    model, cfg, _ = load_model(str(SHIPPED))
    model.eval()
    start = time.perf_counter()

    tr_x, tr_y = read_split("mnist", root, True)
    perm = torch.randperm(len(tr_y), generator=torch.Generator().manual_seed(0))
    val_idx, fit_idx = perm[:a.val_size], perm[a.val_size:]
    xtr = normalize(torch.from_numpy(tr_x.copy()), "mnist")
    ytr = torch.from_numpy(tr_y.astype(np.int64))
    fit_s, val_s = signals(model, xtr[fit_idx]), signals(model, xtr[val_idx])
    det_T = ood.fit(fit_s["zT"], ytr[fit_idx], val_s["zT"])
    det_0 = ood.fit(fit_s["z0"], ytr[fit_idx], val_s["z0"])
    det = ood.fit(fit_s["features"], ytr[fit_idx], val_s["features"])

    te_x, _ = read_split("mnist", root, False)
    fa_x, _ = read_split("fashion-mnist", root, False)
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(te_x))[:a.n]
    sets = {"MNIST test": te_x[pick], "Fashion-MNIST": fa_x[rng.permutation(len(fa_x))[:a.n]],
            "uniform noise": rng.integers(0, 256, (a.n, 28, 28)).astype(np.uint8),
            "MNIST inverted": 255 - te_x[pick], "MNIST rotated 90°": np.rot90(te_x[pick], 1, axes=(1, 2)).copy()}

    def scores(s: dict) -> dict:
        mT, m0 = det_T.score(s["zT"]), det_0.score(s["z0"])
        return {"1 - max softmax": 1 - s["msp"], "kinetic energy": s["kinetic"], "displacement": s["displacement"],
                "Mahalanobis z(0)": m0, "Mahalanobis z(T)": mT,
                "Mahalanobis z(0) + z(T)": m0 / det_0.threshold + mT / det_T.threshold,
                "**Mahalanobis conv maps + hidden + z(T) (odenet.ood)**": det.score(s["features"])}

    val_scores = scores(val_s)
    xs = {k: normalize(torch.from_numpy(v), "mnist") for k, v in sets.items()}
    res = {k: scores(signals(model, x)) for k, x in xs.items()}
    nfe = {k: solo_nfe(model, x[:a.nfe_n]) for k, x in xs.items()}
    val_nfe = solo_nfe(model, xtr[val_idx[:a.nfe_n]])

    def row(name, by_set, val):
        thr = float(torch.quantile(val.double(), ood.QUANTILE))
        ind = by_set["MNIST test"].double()
        r = {"score": name}
        for k, v in by_set.items():
            if k == "MNIST test":
                continue
            y = np.r_[np.zeros(len(ind)), np.ones(len(v))]
            r[k] = roc_auc_score(y, np.r_[ind.numpy(), v.double().numpy()])
            r[k + " flagged"] = float((v.double() > thr).double().mean())
        r["MNIST test flagged"] = float((ind > thr).double().mean())
        return r

    rows = [row(name, {k: res[k][name] for k in res}, val_scores[name]) for name in val_scores]
    rows.insert(0, row("NFE (image alone, dopri5)", nfe, val_nfe))
    outs = [k for k in sets if k != "MNIST test"]
    cols = ["score", *outs, "MNIST test flagged", *[k + " flagged" for k in outs]]
    print(f"{machine(torch.device('cpu'))}; shipped model; {a.n} images per set ({a.nfe_n} for the NFE); "
          f"thresholds: {ood.QUANTILE:.1%} quantile on {a.val_size} validation images; "
          f"{time.perf_counter() - start:.0f} s")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(r["score"] if c == "score" else
                                (f"{r[c]:.2%}" if c.endswith("flagged") else f"{r[c]:.4f}") for c in cols) + " |")
    print(f"threshold of odenet.ood's score on this validation split: {det.threshold:.1f}")


if __name__ == "__main__":
    main()
