"""Evaluation on a split, and prediction on a user's own images."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import Split, normalize
from .errors import OdenetError
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


def prepare_image(path: str) -> np.ndarray:
    """Any image -> MNIST form: greyscale 28x28 uint8, white digit on black, 20x20 box centred by mass.

    Dark-on-light input (a light border) is inverted. Raises ``OdenetError`` for unreadable files.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise OdenetError(f"image not found: {path}")
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or "transparency" in im.info:
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            g = np.asarray(im.convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise OdenetError(f"{path} is not a readable image ({type(e).__name__})") from None
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    if border.mean() > 127:
        g = 255.0 - g
    g = g - np.median(border if border.mean() <= 127 else 255.0 - border)
    g = np.clip(g, 0, None)
    if g.max() <= 0:
        raise OdenetError(f"{path} is blank: no digit found")
    g = g * (255.0 / g.max())
    ys, xs = np.nonzero(g > 0.1 * 255)
    crop = g[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(Image.fromarray(crop.astype(np.uint8)).resize((nw, nh), Image.LANCZOS), dtype=np.float32)
    canvas = np.zeros((28, 28), dtype=np.float32)
    top, left = (28 - nh) // 2, (28 - nw) // 2
    canvas[top:top + nh, left:left + nw] = small
    total = canvas.sum()
    if total > 0:  # shift the centre of mass to the centre, as MNIST was made
        yy, xx = np.mgrid[0:28, 0:28]
        dy = int(round(13.5 - (yy * canvas).sum() / total))
        dx = int(round(13.5 - (xx * canvas).sum() / total))
        canvas = np.roll(np.roll(canvas, dy, axis=0), dx, axis=1)
    return np.clip(canvas, 0, 255).astype(np.uint8)


@torch.no_grad()
def predict(model: NeuralODEModel, images: Sequence[np.ndarray], dataset: str, top: int = 3) -> List[List[tuple]]:
    """Top-``top`` ``(class index, probability)`` for each 28x28 uint8 image."""
    model.eval()
    device = next(model.parameters()).device
    x = normalize(torch.from_numpy(np.stack(images)), dataset).to(device)
    probs = F.softmax(model(x), dim=1).cpu()
    p, i = probs.topk(top, dim=1)
    return [[(int(c), float(q)) for c, q in zip(ii, pp)] for ii, pp in zip(i, p)]
