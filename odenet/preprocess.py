"""Any picture of a digit -> the 28x28 form MNIST was made in (shared by ``odenet predict`` and the demo).

Photos and scans are not MNIST: dark ink on light, textured paper, uneven lighting, specks, wide margins and an
off-centre digit. The steps, each cheap on an image scaled to at most ``WORK_SIZE`` pixels:

1. greyscale with transparency composited on white; ink made bright (the background is the majority);
2. uneven lighting removed: the background estimated by a grey opening larger than a stroke, then subtracted;
3. Otsu's threshold on what is left, and connected components smaller than a fraction of the largest dropped
   (paper texture and specks);
4. crop to the kept strokes, scale into a 20x20 box, place in 28x28 and centre by mass, as MNIST was made.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from .errors import OdenetError

WORK_SIZE = 256  # larger images are scaled down first (a huge upload costs no more than this)
MIN_CONTRAST = 24.0  # grey levels between ink and paper below which the picture counts as blank
SPECK_FRACTION = 0.08  # components smaller than this share of the largest are specks


def load_grey(source: Union[str, Path, np.ndarray]) -> np.ndarray:
    """A file path or an image array (H, W), (H, W, 3) or (H, W, 4) -> float32 grey (H, W) in [0, 255]."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, np.ndarray):
        im = Image.fromarray(_to_uint8(source))
    else:
        p = Path(source)
        if not p.is_file():
            raise OdenetError(f"image not found: {source}")
        try:
            im = Image.open(p)
            im.load()
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise OdenetError(f"{p.name} is not a readable image ({type(e).__name__})") from None
    if max(im.size) > WORK_SIZE:
        im = im.copy()
        im.thumbnail((WORK_SIZE, WORK_SIZE), Image.BILINEAR)
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return np.asarray(im.convert("L"), dtype=np.float32)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float32)
    if a.size and a.max() <= 1.0:
        a = a * 255.0
    return np.clip(a, 0, 255).astype(np.uint8)


def otsu_threshold(values: np.ndarray) -> float:
    """The grey level that best splits ``values`` into two classes (Otsu 1979), on a 256-bin histogram."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, float(values.max()) + 1e-6))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centers)
    total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * (1 - w0))
    between[~np.isfinite(between)] = 0
    return float(centers[int(np.argmax(between))])


def ink_image(grey: np.ndarray) -> np.ndarray:
    """Grey (H, W) -> ink strength (H, W) >= 0, bright strokes on a zero background, lighting removed."""
    from scipy import ndimage

    g = grey if np.median(grey) <= 127 else 255.0 - grey  # the background is the majority of pixels
    h, w = g.shape
    size = max(3, min(h, w) // 2)  # far wider than a stroke: the opening keeps the paper's light, not the ink
    step = max(1, min(h, w) // 64)  # estimate the background on a coarser grid, it varies slowly
    coarse = ndimage.grey_opening(g[::step, ::step], size=max(3, size // step))
    coarse = ndimage.uniform_filter(coarse, size=max(3, size // step))
    bg = ndimage.zoom(coarse, (h / coarse.shape[0], w / coarse.shape[1]), order=1)[:h, :w]
    if bg.shape != g.shape:  # zoom rounding: pad with the edge values
        bg = np.pad(bg, ((0, h - bg.shape[0]), (0, w - bg.shape[1])), mode="edge")
    return np.clip(g - bg, 0, None)


def digit_mask(ink: np.ndarray) -> np.ndarray:
    """Boolean mask of the digit's strokes: Otsu's threshold, then specks removed."""
    from scipy import ndimage

    mask = ink > max(otsu_threshold(ink), MIN_CONTRAST / 2)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= SPECK_FRACTION * sizes.max()) + 1
        mask = np.isin(labels, keep)
    return mask


def to_mnist(ink: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Crop the strokes, fit them in a 20x20 box inside 28x28, centre by mass: uint8 (28, 28)."""
    from PIL import Image
    from scipy import ndimage

    ys, xs = np.nonzero(mask)
    keep = ndimage.binary_dilation(mask, iterations=2)  # the anti-aliased edge of each stroke
    g = np.where(keep, ink, 0.0)[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    g = g * (255.0 / max(float(g.max()), 1e-6))
    h, w = g.shape
    scale = 20.0 / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(Image.fromarray(g.astype(np.uint8)).resize((nw, nh), Image.LANCZOS), dtype=np.float32)
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


def prepare_image(source: Union[str, Path, np.ndarray]) -> np.ndarray:
    """Any image (path or array) -> MNIST form: uint8 (28, 28), white digit on black, centred by mass.

    Raises ``OdenetError`` with one line for unreadable files and for blank pictures (no digit found).
    """
    name = Path(source).name if not isinstance(source, np.ndarray) else "the image"
    ink = ink_image(load_grey(source))
    if ink.size == 0 or float(ink.max()) < MIN_CONTRAST:
        raise OdenetError(f"{name} is blank: no digit found")
    mask = digit_mask(ink)
    if not mask.any():
        raise OdenetError(f"{name} is blank: no digit found")
    return to_mnist(ink, mask)
