"""Evaluation on a split, and prediction on a user's own images (prepared by ``odenet.images``)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .data import Split, normalize
from .model import NeuralODEModel, tta_shifts
from .ood import OODDetector, logits_and_features, verdict


def classify(model: NeuralODEModel, x: torch.Tensor, tta: Union[bool, Sequence[Tuple[int, int]]] = False
             ) -> Tuple[torch.Tensor, int]:
    """Scores ``(B, classes)`` of the images ``x`` ``(B, 1, H, W)`` and the forward NFE spent on them: the logits,
    or with ``tta`` the log of ``model.predict(x, tta=tta)`` (the softmax averaged over the views, one solve
    each). Either way their argmax is the prediction and their cross-entropy the loss."""
    if tta is not False:
        probs = model.predict(x, tta=tta)
        return torch.log(probs), model.stats.nfe_forward
    logits = model(x)
    return logits, model.stats.nfe_forward


@torch.no_grad()
def run_eval(model: NeuralODEModel, split: Split, batch_size: int = 1000, num_classes: int = 10,
             tta: Union[bool, Sequence[Tuple[int, int]]] = False) -> Dict:
    """Loss, accuracy, mean forward NFE per solve, per-class accuracy, images/s, the predictions and the views.

    With ``tta`` (True: the image and its four one-pixel shifts, or ``(dx, dy)`` shifts as ``model.predict`` takes
    them), each image is classified by the softmax averaged over its views (:func:`classify`, one solve each); the
    loss is then that of the averaged probabilities."""
    model.eval()
    total_loss, correct, nfe, solves = 0.0, 0, 0, 0
    preds: List[torch.Tensor] = []
    start = time.perf_counter()
    views = 1 if tta is False else len(tta_shifts(tta))
    for x, y in split.batches(batch_size):
        logits, spent = classify(model, x, tta)
        nfe, solves = nfe + spent, solves + views
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        p = logits.argmax(1)
        correct += (p == y).sum().item()
        preds.append(p)
    seconds = time.perf_counter() - start
    n = len(split)
    pred = torch.cat(preds).cpu() if preds else torch.zeros(0, dtype=torch.long)
    truth = split.y.cpu()
    per_class = []
    for c in range(num_classes):
        mask = truth == c
        per_class.append(float((pred[mask] == c).float().mean()) if mask.any() else float("nan"))
    return {"loss": total_loss / max(n, 1), "acc": correct / max(n, 1), "nfe": nfe / max(solves, 1),
            "per_class_acc": per_class, "images_per_s": n / seconds if seconds > 0 else float("inf"),
            "seconds": seconds, "n": n, "pred": pred, "views": views}


@dataclass
class Prediction:
    """One image's top classes ``[(class index, probability), ...]`` and its "not a digit" score.

    ``score``/``threshold`` are None for a model without OOD statistics (``odenet.ood``; the shipped model has them).
    """

    top: List[Tuple[int, float]]
    score: Optional[float] = None
    threshold: Optional[float] = None

    @property
    def looks_unlike_training_data(self) -> bool:
        """True when the score is above the threshold: the picture does not look like a digit (or its dataset)."""
        return self.score is not None and self.threshold is not None and self.score > self.threshold

    def verdict(self, dataset: str) -> Optional[str]:
        """``odenet.ood.verdict`` of this prediction: the line to show, or None."""
        return verdict(self.score, self.threshold, dataset)


@torch.no_grad()
def predict(model: NeuralODEModel, images: Sequence[np.ndarray], dataset: str, top: int = 3,
            detector: Optional[OODDetector] = None, tta: bool = False) -> List[Prediction]:
    """Top-``top`` classes of each 28x28 uint8 image, with ``detector``'s score when one is given. With ``tta`` the
    probabilities are ``model.predict(x, tta=True)``'s (five views); the score stays the image's own."""
    model.eval()
    device = next(model.parameters()).device
    x = normalize(torch.from_numpy(np.stack(images)), dataset).to(device)
    logits, feats = logits_and_features(model, x)
    probs = model.predict(x, tta=True) if tta else F.softmax(logits, dim=1)
    p, i = probs.cpu().topk(top, dim=1)
    scores = detector.score(feats).cpu().tolist() if detector is not None else [None] * len(x)
    thr = detector.threshold if detector is not None else None
    return [Prediction([(int(c), float(q)) for c, q in zip(ii, pp)], s, thr) for ii, pp, s in zip(i, p, scores)]
