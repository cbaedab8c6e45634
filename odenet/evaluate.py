"""Evaluation on a split, and prediction on a user's own images (prepared by ``odenet.preprocess``)."""
from __future__ import annotations

import time
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import Split, normalize
from .model import NeuralODEModel


@torch.no_grad()
def run_eval(model: NeuralODEModel, split: Split, batch_size: int = 1000, num_classes: int = 10) -> Dict:
    """Loss, accuracy, mean forward NFE per batch, per-class accuracy, images/s and the predictions."""
    model.eval()
    total_loss, correct, nfe, batches = 0.0, 0, 0, 0
    preds: List[torch.Tensor] = []
    start = time.perf_counter()
    for x, y in split.batches(batch_size):
        model.nfe = 0
        logits = model(x)
        nfe += model.nfe
        batches += 1
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
    return {"loss": total_loss / max(n, 1), "acc": correct / max(n, 1), "nfe": nfe / max(batches, 1),
            "per_class_acc": per_class, "images_per_s": n / seconds if seconds > 0 else float("inf"),
            "seconds": seconds, "n": n, "pred": pred}


@torch.no_grad()
def predict(model: NeuralODEModel, images: Sequence[np.ndarray], dataset: str, top: int = 3) -> List[List[tuple]]:
    """Top-``top`` ``(class index, probability)`` for each 28x28 uint8 image."""
    model.eval()
    device = next(model.parameters()).device
    x = normalize(torch.from_numpy(np.stack(images)), dataset).to(device)
    probs = F.softmax(model(x), dim=1).cpu()
    p, i = probs.topk(top, dim=1)
    return [[(int(c), float(q)) for c, q in zip(ii, pp)] for ii, pp in zip(i, p)]
