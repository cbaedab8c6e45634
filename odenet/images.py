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
from .files import regular_file

WORK_SIZE = 256  # larger images are scaled down first (a huge upload costs no more than this)
MIN_CONTRAST = 24.0  # grey levels between ink and paper below which the picture counts as blank
SPECK_FRACTION = 0.08  # components smaller than this share of the largest are specks
MAX_BLOBS = 6  # more kept components than this is noise or texture: 1 in 10,000 MNIST test digits has 7
MAX_FILL = 0.35  # ink over more of the picture than this is no digit (MNIST test: at most 0.33; noise: 0.5)


MAX_PIXELS = 50_000_000  # larger pictures are refused before decoding (a 12 MP photo is read; a bomb is not)
MIN_SIDE = 8  # pixels: a narrower picture can't hold a digit
MAX_ASPECT = 20.0  # a picture longer than this many times its width holds no digit either
_NOT_RASTER = {b"%PDF": "a PDF document", b"<svg": "an SVG drawing", b"<?xm": "an XML/SVG document"}


def load_grey(source: Union[str, Path, np.ndarray]) -> np.ndarray:
    """A file path or an image array (H, W), (H, W, 3) or (H, W, 4) -> float32 grey (H, W) in [0, 255].

    Files are shown upright (their EXIF orientation applied, as phones store photos sideways), transparency is
    composited on white, 16-bit and float pictures are scaled to 8 bits, an animation gives its first frame, and
    anything else gives an ``OdenetError`` with one line: a folder, an empty, unreadable, truncated or
    non-raster file (PDF, SVG), a picture too large to decode safely or too small to hold a digit.
    """
    from PIL import Image

    im = _from_array(source) if isinstance(source, np.ndarray) else _open(Path(source))
    w, h = im.size
    if min(w, h) < MIN_SIDE or max(w, h) > MAX_ASPECT * min(w, h):
        raise OdenetError(f"{_name(source)} is {w}x{h} pixels: too small or too thin to hold a digit")
    if max(im.size) > WORK_SIZE:
        im = im.copy()
        im.thumbnail((WORK_SIZE, WORK_SIZE), Image.BILINEAR)
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return np.asarray(im.convert("L"), dtype=np.float32)


def _name(source) -> str:
    return "the image" if isinstance(source, np.ndarray) else Path(source).name


def _from_array(a: np.ndarray):
    from PIL import Image

    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise OdenetError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.dtype.kind not in "uifb" or (a.dtype.kind == "f" and not np.isfinite(a).all()):
        raise OdenetError(f"an image array must hold finite numbers, got dtype {a.dtype}")
    return Image.fromarray(_to_uint8(a))


def _open(p: Path):
    """Open, check and decode an image file: upright, 8 bits or float, first frame."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if p.is_dir():
        raise OdenetError(f"{p.name} is a folder, not an image")
    regular_file(p, "image")
    try:
        with open(p, "rb") as f:
            head = f.read(64)
    except PermissionError:
        raise OdenetError(f"cannot read {p.name}: permission denied") from None
    except OSError as e:
        raise OdenetError(f"cannot read {p.name}: {e.strerror or type(e).__name__}") from None
    if not head:
        raise OdenetError(f"{p.name} is empty (0 bytes), not an image")
    for magic, what in _NOT_RASTER.items():
        if head.lstrip().startswith(magic) or (magic == b"<svg" and b"<svg" in head):
            raise OdenetError(f"{p.name} is {what}, not a picture odenet reads: save it as PNG or JPEG")
    try:
        im = Image.open(p)
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise OdenetError(f"{p.name} is {w}x{h} pixels ({w * h / 1e6:.0f} MP): larger than odenet decodes "
                              f"({MAX_PIXELS / 1e6:.0f} MP)")
        if im.format == "JPEG":  # decode at 1/2..1/8 scale when that still leaves WORK_SIZE pixels: 12 MP in ms
            im.draft(im.mode, (WORK_SIZE, WORK_SIZE))
        im.load()
        im = ImageOps.exif_transpose(im)
    except OdenetError:
        raise
    except Image.DecompressionBombError:
        raise OdenetError(f"{p.name} is larger than odenet decodes ({MAX_PIXELS / 1e6:.0f} MP)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        why = "truncated or damaged" if "truncated" in str(e) or isinstance(e, EOFError) else type(e).__name__
        raise OdenetError(f"{p.name} is not a readable image ({why})") from None
    except Exception as e:  # noqa: BLE001 - a decoder's own error on a hostile file is still one line
        raise OdenetError(f"{p.name} is not a readable image ({type(e).__name__})") from None
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit or float: scale into 8 bits
        a = np.asarray(im, dtype=np.float32)
        top = float(a.max()) if a.size else 0.0
        scale = 255.0 / (65535.0 if 255 < top <= 65535 else top) if top > 255 else (255.0 if 0 < top <= 1 else 1.0)
        im = Image.fromarray(np.clip(a * scale, 0, 255).astype(np.uint8))
    return im


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


def digit_mask(ink: np.ndarray, name: str = "the image") -> np.ndarray:
    """Boolean mask of the digit's strokes: Otsu's threshold, then specks removed.

    Raises ``OdenetError`` when what is left is no digit: more than ``MAX_BLOBS`` separate blobs, or ink over
    more than ``MAX_FILL`` of the picture (noise, texture, a photo of a scene).
    """
    from scipy import ndimage

    mask = ink > max(otsu_threshold(ink), MIN_CONTRAST / 2)
    labels, n = ndimage.label(mask)
    kept = n
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= SPECK_FRACTION * sizes.max()) + 1
        kept = len(keep)
        mask = np.isin(labels, keep)
    fill = float(mask.mean()) if mask.size else 0.0
    if kept > MAX_BLOBS or fill > MAX_FILL:
        raise OdenetError(f"{name} does not look like a digit: {kept} separate blobs of ink over {fill:.0%} of the "
                          "picture (noise or texture; a digit is a few strokes)")
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
    name = _name(source)
    ink = ink_image(load_grey(source))
    if ink.size == 0 or float(ink.max()) < MIN_CONTRAST:
        raise OdenetError(f"{name} is blank: no digit found")
    mask = digit_mask(ink, name)
    if not mask.any():
        raise OdenetError(f"{name} is blank: no digit found")
    return to_mnist(ink, mask)
