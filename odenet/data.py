"""MNIST / Fashion-MNIST as whole tensors on the training device, batched by shuffled index.

Files are found in torchvision's layout (``<root>/MNIST/raw/*.gz``) and read in memory, so a read-only
folder works and nothing is written next to it. Missing files are downloaded by torchvision from the
standard mirrors (with its MD5 checks); present ``.gz`` files are checked against the published MD5s.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import OdenetError

FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
# (mean, std) of the training pixels in [0, 1]
STATS = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}
CLASSES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                      "Bag", "Ankle boot"],
}


def _tv_dataset(dataset: str):
    from torchvision import datasets

    return datasets.MNIST if dataset == "mnist" else datasets.FashionMNIST


def published_md5(dataset: str) -> dict:
    """``{file name: md5}`` of the published ``.gz`` files, as torchvision lists them."""
    return dict(_tv_dataset(dataset).resources)


def split_files(train: bool) -> Tuple[str, str]:
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzipped or not) into a uint8 array; one-line errors for bad files."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise OdenetError(f"{path} is truncated or corrupt ({e})") from None
    if len(raw) < 8:
        raise OdenetError(f"{path} is truncated: {len(raw)} bytes")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise OdenetError(f"{path} is not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise OdenetError(f"{path} is truncated: header says {dims}, body has {len(body)} bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _download(dataset: str, root: Path, train: bool) -> None:
    from .config import cache_data_dir

    needed = " and ".join(split_files(train))
    if root.resolve() != Path(cache_data_dir()).resolve():  # a folder the user gave is only ever read
        raise OdenetError(f"{dataset} {needed} not found under {root / FOLDERS[dataset] / 'raw'}; odenet reads that "
                          f"folder and never writes into it (it downloads only into {cache_data_dir()}, when no "
                          "--data-dir or ODENET_DATA_DIR is given)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        _tv_dataset(dataset)(str(root), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - network and mirror errors become one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OdenetError(
            f"{dataset} {needed} not found under {root / FOLDERS[dataset] / 'raw'} and the download failed "
            f"({msg}); pass --data-dir (or set ODENET_DATA_DIR) to a folder holding them") from None


def read_split(dataset: str, root: str, train: bool, verify: bool = True,
               download: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` uint8 of one split."""
    if dataset not in FOLDERS:
        raise OdenetError(f"unknown dataset {dataset!r}; choose one of {', '.join(FOLDERS)}")
    raw_dir = Path(root) / FOLDERS[dataset] / "raw"
    names = split_files(train)

    def locate(name: str) -> Optional[Path]:
        for cand in (raw_dir / name, raw_dir / name[:-3]):
            if cand.is_file():
                return cand
        return None

    if any(locate(n) is None for n in names):
        if not download:
            raise OdenetError(f"{dataset} files {', '.join(names)} not found under {raw_dir}")
        _download(dataset, Path(root), train)
    md5s = published_md5(dataset)
    arrays = []
    for name in names:
        path = locate(name)
        if path is None:
            raise OdenetError(f"{name} not found under {raw_dir}")
        if verify and path.suffix == ".gz" and _md5(path) != md5s[name]:
            raise OdenetError(f"{path} fails its MD5 check (corrupt, truncated or not the published file); "
                              "delete it to download again, or pass --no-verify-data for your own IDX files")
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise OdenetError(f"{raw_dir}: images {images.shape} and labels {labels.shape} do not match")
    if labels.size and labels.max() >= len(CLASSES[dataset]):
        raise OdenetError(f"{raw_dir}: label {labels.max()} out of range")
    return images, labels


@dataclass
class Split:
    """One split on a device: ``x`` normalized images ``(N, 1, 28, 28)`` float32, ``y`` labels ``(N,)`` int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int,
                generator: Optional[torch.Generator] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Batches in a shuffled order drawn from ``generator`` (or in order when it is None)."""
        for shard in self.shards(batch_size, generator):
            yield shard.x, shard.y

    def shards(self, batch_size: int, generator: Optional[torch.Generator] = None, rank: int = 0,
               world: int = 1) -> Iterator["Shard"]:
        """Rank ``rank``'s contiguous share of each batch of :meth:`batches` (all of it when ``world`` is 1).

        Every rank draws the same order from an identically seeded ``generator``, so the ranks' shards are
        disjoint and together are the batch. A rank whose share of a short last batch is empty gets one
        image with weight 0, so it still takes part in the step without changing it.
        """
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        order = order.to(self.y.device)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            total = len(idx)
            start = rank * total // world  # contiguous shares that differ in size by at most one image
            share, weight = idx[start:(rank + 1) * total // world], 1.0
            if len(share) == 0:
                start, share, weight = 0, idx[:1], 0.0
            yield Shard(self.x.index_select(0, share), self.y.index_select(0, share), start, total, weight)


class Shard(NamedTuple):
    """One rank's part of a batch: images ``x``, labels ``y``, where they start in the batch, the batch size,
    and their weight in the loss (1, or 0 for a stand-in image)."""

    x: torch.Tensor
    y: torch.Tensor
    start: int
    total: int
    weight: float


def carve_validation(split: Split, size: int, seed: int) -> Tuple[Split, Optional[Split]]:
    """Split off ``size`` random images (drawn from ``seed``) as a validation set: ``(train, val)``.

    The two are disjoint and together are ``split``; ``size == 0`` returns ``(split, None)``.
    """
    if size <= 0:
        return split, None
    if size >= len(split):
        raise OdenetError(f"val-size {size} leaves no training images (the training set has {len(split)})")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed)).to(split.y.device)
    val, train = order[:size].sort().values, order[size:].sort().values
    return (Split(split.x.index_select(0, train), split.y.index_select(0, train)),
            Split(split.x.index_select(0, val), split.y.index_select(0, val)))


def load_training(dataset: str, root: str, device: torch.device, subset: Optional[int], verify: bool,
                  val_size: int, seed: int) -> Tuple[Split, Optional[Split]]:
    """The training split less ``val_size`` validation images drawn from ``seed`` (:func:`carve_validation`), and
    the validation split (None when ``val_size`` is 0): what a run trains on and what it holds out."""
    return carve_validation(load_split(dataset, root, True, device, subset, verify), val_size, seed)


def random_affine(x: torch.Tensor, rotate: float, translate: float, scale: float,
                  background: float, rows: Optional[Tuple[int, int]] = None, flip: bool = False,
                  elastic: float = 0.0, elastic_sigma: float = 4.0) -> torch.Tensor:
    """Each image of ``x`` ``(B, C, H, W)`` rotated by up to +-``rotate`` degrees, shifted by up to
    +-``translate`` pixels and zoomed by up to +-``scale``, on ``x``'s device, in one ``grid_sample``;
    with ``flip``, also mirrored left-right with probability 1/2 (for clothes, not for digits);
    with ``elastic`` > 0, also warped by a smooth random displacement field (Simard et al. 2003): white
    noise smoothed by a Gaussian of ``elastic_sigma`` pixels, scaled so each pixel moves ``elastic``
    pixels (root mean square, per axis).

    Pixels that come from outside the image take the value ``background``. Labels are unchanged.
    ``rows=(start, total)``: draw the transforms of a whole batch of ``total`` images and apply rows
    ``start:start+B`` to ``x`` (a rank's shard gets what its images would get in one process).
    """
    B, _, H, W = x.shape
    start, total = rows if rows is not None else (0, B)
    u = torch.rand(total, 4, device=x.device, dtype=x.dtype)[start:start + B] * 2 - 1  # uniform in [-1, 1]
    angle = u[:, 0] * (rotate * math.pi / 180.0)
    s = 1.0 + u[:, 1] * scale
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    # affine_grid maps output coordinates in [-1, 1] to input coordinates: shifts are in half-widths
    theta = torch.stack([torch.stack([cos, -sin, u[:, 2] * (2 * translate / W)], 1),
                         torch.stack([sin, cos, u[:, 3] * (2 * translate / H)], 1)], 1)
    if flip:  # drawn after the affine numbers, so runs without flips keep their random stream
        mirror = torch.rand(total, device=x.device)[start:start + B] < 0.5
        theta[:, :, 0] = torch.where(mirror[:, None], -theta[:, :, 0], theta[:, :, 0])  # input x <- -x
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if elastic > 0:  # drawn last, so runs without it keep their random stream
        shift = elastic * _smooth_field(B, (H, W), elastic_sigma, x.device, x.dtype, (start, total))  # pixels
        grid = grid + shift.permute(0, 2, 3, 1) * torch.tensor([2.0 / W, 2.0 / H], device=x.device, dtype=x.dtype)
    out = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + background


# Test-time augmentation's views: the image and its four one-pixel shifts, ``(dx, dy)`` pixels right and down
# (chosen on a validation split: docs/accuracy.md)
TTA_SHIFTS: Tuple[Tuple[int, int], ...] = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
MAX_TTA_VIEWS = 64


def shift_images(x: torch.Tensor, dx: int, dy: int, background: float) -> torch.Tensor:
    """``x`` ``(B, C, H, W)`` moved ``dx`` pixels right and ``dy`` pixels down (negative: left, up), exactly,
    without interpolation; the uncovered border takes the value ``background``. ``|dx| < W``, ``|dy| < H``."""
    B, C, H, W = x.shape
    if not (abs(dx) < W and abs(dy) < H):
        raise ValueError(f"a shift of ({dx}, {dy}) pixels leaves nothing of a {H}x{W} image")
    out = torch.full_like(x, background)
    out[:, :, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        x[:, :, max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
    return out


def _smooth_field(n: int, size: Tuple[int, int], sigma: float, device: torch.device, dtype: torch.dtype,
                  draw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """``n`` random smooth fields ``(n, 2, H, W)``: white noise blurred by a Gaussian of ``sigma`` pixels, with
    unit variance at every pixel. ``draw=(start, total)`` draws ``total`` fields and returns rows ``start:start+n``.

    The noise lives on a grid with a spacing of about ``sigma / 2`` pixels (4x fewer random numbers at
    ``sigma`` 4, the cost that dominates) and the blur is two small matrix products, rows then columns.
    Each blur row is scaled to unit norm, so pixels near the border move as much as the others.
    """
    start, total = draw if draw is not None else (0, n)
    H, W = size
    stride = max(1, int(sigma // 2))
    noise = torch.randn(total, 2, -(-H // stride), -(-W // stride), device=device, dtype=dtype)[start:start + n]

    def blur(n_out: int, n_in: int) -> torch.Tensor:  # (n_out, n_in): pixel centres from noise points
        out = torch.arange(n_out, device=device, dtype=dtype)
        src = (torch.arange(n_in, device=device, dtype=dtype) + 0.5) * (n_out / n_in) - 0.5
        k = torch.exp(-0.5 * ((out[:, None] - src[None, :]) / sigma) ** 2)
        return k / k.norm(dim=1, keepdim=True)

    return blur(H, noise.shape[2]) @ noise @ blur(W, noise.shape[3]).t()


def background_value(dataset: str) -> float:
    """The normalized value of a black (0) pixel."""
    mean, std = STATS[dataset]
    return -mean / std


def normalize(images: torch.Tensor, dataset: str) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> normalized float ``(N, 1, 28, 28)``."""
    mean, std = STATS[dataset]
    return ((images.float() / 255.0 - mean) / std).unsqueeze(1)


def subset_indices(n: int, k: Optional[int]) -> Optional[torch.Tensor]:
    """A fixed random subset of ``k`` of ``n`` items (the same for every run), or None for all."""
    if k is None or k >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(1234))[:k]


def load_split(dataset: str, root: str, train: bool, device: torch.device, subset: Optional[int] = None,
         verify: bool = True) -> Split:
    """Load one split onto ``device`` (normalized), optionally a fixed random subset of it."""
    images, labels = read_split(dataset, root, train, verify=verify)
    x = torch.from_numpy(images.copy())
    y = torch.from_numpy(labels.astype(np.int64))
    idx = subset_indices(len(y), subset)
    if idx is not None:
        x, y = x[idx], y[idx]
    return Split(normalize(x, dataset).to(device), y.to(device))


def class_names(dataset: str) -> List[str]:
    return list(CLASSES[dataset])
