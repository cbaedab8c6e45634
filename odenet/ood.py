"""Does a picture look like a digit at all? An out-of-distribution score shared by predict, the demo and the API.

A softmax always names a class, even for noise. The score here asks instead how far an image's features lie
from every class the model was trained on: the squared Mahalanobis distance to the nearest class mean under one
covariance shared by all classes (Lee et al. 2018),

    score(x) = min_c (u(x) - mu_c)^T Sigma^-1 (u(x) - mu_c),

where ``u(x)`` joins the encoder's conv maps averaged over space (32), its hidden layer (128) and the ODE's end
state z(T) (64). ``mu_c`` and ``Sigma`` are fitted on training images; the threshold is the ``QUANTILE`` of the
score on a held-out validation part of the training set, never on a test set. The statistics (10 x 224 means and
a 224 x 224 matrix, 0.2 MB) travel inside the shipped checkpoint under ``ood``. ``benchmarks/ood.py`` compares
this score with the softmax baseline and with what the flow alone offers (NFE, kinetic energy, displacement,
Mahalanobis in z(0) or z(T)): docs/ood.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from .data import normalize
from .errors import OdenetError
from .model import NeuralODEModel

QUANTILE = 0.995  # of validation scores: the threshold; about 0.5% of in-distribution digits are flagged
VAL_SIZE, VAL_SEED = 5000, 0


@dataclass
class OODDetector:
    """Class means ``means (K, F)`` and shared precision ``precision (F, F)`` of the features; a threshold."""

    means: torch.Tensor
    precision: torch.Tensor
    threshold: float

    def score(self, feats: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance of each feature row ``(B, F)`` to its nearest class mean: ``(B,)``."""
        f = feats.to(self.means.dtype)
        d = f.unsqueeze(1) - self.means.to(f.device)  # (B, K, F)
        return torch.einsum("bkf,fg,bkg->bk", d, self.precision.to(f.device), d).min(1).values

    def flags(self, scores: torch.Tensor) -> torch.Tensor:
        """True where a score is above the threshold: the input does not look like the training data."""
        return scores > self.threshold

    def to_state(self) -> Dict[str, torch.Tensor]:
        return {"means": self.means.float().contiguous(), "precision": self.precision.float().contiguous(),
                "threshold": torch.tensor(float(self.threshold))}

    @classmethod
    def from_state(cls, state: Dict[str, torch.Tensor]) -> "OODDetector":
        means, precision, threshold = state["means"].float(), state["precision"].float(), float(state["threshold"])
        f = precision.shape[0] if precision.dim() == 2 else -1
        if means.dim() != 2 or precision.shape != (f, f) or means.shape[1] != f or not np.isfinite(threshold):
            raise ValueError("shapes or threshold")
        return cls(means, precision, threshold)


def features(maps: torch.Tensor, hidden: torch.Tensor, z_end: torch.Tensor) -> torch.Tensor:
    """The score's features from the encoder's conv maps ``(B, 32, 7, 7)``, its hidden layer ``(B, 128)`` and z(T)."""
    return torch.cat([maps.mean((2, 3)), hidden, z_end], 1)


def verdict(score: Optional[float], threshold: Optional[float], dataset: str) -> Optional[str]:
    """The line ``predict`` and the demo show for a score above its threshold; None otherwise."""
    if score is None or threshold is None or not score > threshold:
        return None
    what = "digit" if dataset == "mnist" else f"{dataset} image"
    return f"does not look like a {what}: score {score:.0f} > threshold {threshold:.0f}"


@torch.no_grad()
def logits_and_features(model: NeuralODEModel, x: torch.Tensor,
                        batch_size: int = 1000) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, K)`` and OOD features ``(N, 224)`` of normalized images ``x (N, 1, 28, 28)``, one pass."""
    model.eval()
    logits, feats = [], []
    for i in range(0, len(x), batch_size):
        maps, hidden, z0 = model.encode_stages(x[i:i + batch_size])
        z_end = model.odeblock(z0)
        logits.append(model.classifier(z_end))
        feats.append(features(maps, hidden, z_end))
    return torch.cat(logits), torch.cat(feats)


def fit(feats: torch.Tensor, labels: torch.Tensor, feats_val: torch.Tensor,
        quantile: float = QUANTILE) -> OODDetector:
    """Class means and shared covariance of training features ``(N, F)``; the threshold at ``quantile`` of the
    scores of validation features ``(M, F)``."""
    f = feats.double()
    classes = labels.unique()
    means = torch.stack([f[labels == c].mean(0) for c in classes])
    centred = f - means[torch.searchsorted(classes, labels)]
    cov = centred.T @ centred / max(len(f) - len(classes), 1)
    cov += 1e-6 * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)  # dead ReLUs: keep it invertible
    det = OODDetector(means, torch.linalg.inv(cov), 0.0)
    det.threshold = float(torch.quantile(det.score(feats_val.double()), quantile))
    return OODDetector(means.float(), det.precision.float(), det.threshold)


def fit_model(model: NeuralODEModel, images: np.ndarray, labels: np.ndarray, dataset: str,
              val_size: int = VAL_SIZE, seed: int = VAL_SEED) -> OODDetector:
    """The detector of ``model`` from its training images (uint8 ``(N, 28, 28)``): ``val_size`` of them, drawn
    with ``seed``, set the threshold; the rest fit the statistics."""
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    x = normalize(torch.from_numpy(images.copy()), dataset)
    y = torch.from_numpy(labels.astype(np.int64))
    _, f_fit = logits_and_features(model, x[perm[val_size:]])
    _, f_val = logits_and_features(model, x[perm[:val_size]])
    return fit(f_fit, y[perm[val_size:]], f_val)


def from_checkpoint(state: Dict) -> Optional[OODDetector]:
    """The detector a checkpoint carries (the shipped model does), else None."""
    if "ood" not in state:
        return None
    try:
        return OODDetector.from_state(state["ood"])
    except Exception as e:  # noqa: BLE001 - a damaged entry is the checkpoint's fault, said in one line
        raise OdenetError(f"the checkpoint's ood entry is damaged ({type(e).__name__}); re-export it with "
                          "odenet.shipped.add_ood or use a checkpoint without one") from None
