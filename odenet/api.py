"""odenet from Python: load a trained model, prepare images, train a run.

    >>> import odenet
    >>> model = odenet.load()                       # the shipped model
    >>> x = odenet.preprocess("my_digit.jpg")       # what the model sees: (1, 1, 28, 28)
    >>> model.predict(x)                            # class probabilities (1, 10)
    >>> model.trajectory(x, [0.0, 0.5, 1.0])       # z(t): (3, 1, 64)
"""
from __future__ import annotations

import dataclasses
import numbers
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .config import Config
from .errors import OdenetError
from .model import NeuralODEModel

ImageLike = Union[str, Path, np.ndarray, torch.Tensor, Any]  # Any: a PIL image


def load(source: Optional[Union[str, Path]] = None, device: str = "cpu") -> NeuralODEModel:
    """A trained model in eval mode: the one shipped with odenet (``source`` None), a run folder (its ``best.pt``
    when chosen on a validation split, else ``last.pt``) or a checkpoint file (``.pt``, or ``.safetensors`` from
    ``odenet export``). ``model.dataset`` and ``model.classes`` name what it was trained on."""
    from .checkpoint import open_model

    return open_model(source, device).model  # NeuralODEModel.from_config names its dataset and classes


def preprocess(images: Union[ImageLike, Sequence[ImageLike]], dataset: str = "mnist") -> torch.Tensor:
    """What the model sees: normalized ``(B, 1, 28, 28)`` float32 on the CPU, exactly as ``odenet predict``.

    ``images``: a file path, a PIL image, a numpy array or a tensor — one image (``(H, W)``, ``(H, W, 3|4)``,
    ``(1, H, W)``) or a batch (``(B, H, W)``, ``(B, 1, H, W)``, or a list of any of these). Each is shown upright,
    turned into a white digit on black and centred by mass like MNIST; an unreadable or blank one raises
    ``OdenetError`` with one line.
    """
    from .data import normalize
    from .images import prepare_image

    prepared = [prepare_image(im) for im in _each_image(images)]
    if not prepared:
        raise OdenetError("no images given")
    return normalize(torch.from_numpy(np.stack(prepared)), dataset)


def _each_image(images) -> list:
    """The single images in ``images``, each a path or an ``(H, W[, C])`` array."""
    from PIL import Image, ImageOps

    if isinstance(images, (str, Path)):
        return [images]
    if isinstance(images, Image.Image):
        return [np.asarray(ImageOps.exif_transpose(images).convert("RGBA"))]
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (3, 4)):
            return [images]
        if images.ndim == 3 and images.shape[0] == 1:
            return [images[0]]
        if images.ndim == 3:
            return list(images)
        if images.ndim == 4 and images.shape[1] == 1:
            return list(images[:, 0])
        raise OdenetError(f"an image array must be (H, W), (H, W, 3|4), (B, H, W) or (B, 1, H, W), "
                          f"got shape {images.shape}")
    if isinstance(images, (list, tuple)):
        return [one for im in images for one in _each_image(im)]
    raise OdenetError(f"cannot read an image from a {type(images).__name__}")


def dataset(name: str = "mnist", train: bool = False, n: Optional[int] = None, data_dir: Optional[str] = None,
            device: str = "cpu") -> Tuple[torch.Tensor, torch.Tensor]:
    """MNIST or Fashion-MNIST as training and evaluation see it: normalized images ``(N, 1, 28, 28)`` and labels
    ``(N,)``; the test split unless ``train``; ``n``: a fixed random subset. Files are read from ``data_dir``, else
    ``$ODENET_DATA_DIR``, else the per-user cache (downloaded there once)."""
    from .config import DATASETS, default_data_dir
    from .data import load_split
    from .device import resolve_device

    if name not in DATASETS:
        raise OdenetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1):
        raise OdenetError(f"n must be a positive integer (a subset size) or None, got {n!r}")
    split = load_split(name, data_dir or default_data_dir(), train, resolve_device(device), n)
    return split.x, split.y


def fit(config: Optional[Config] = None, *, resume: Optional[Union[str, Path]] = None, progress: bool = True,
        **settings) -> Dict[str, Any]:
    """Train as ``odenet train`` does and return the run's summary (``summary["run"]``: its folder).

    ``config`` (default: the seed's ``Config()``) changed by ``settings`` (``fit(epochs=1, train_subset=5000)``).
    The run folder is the CLI's: config.yaml, metrics.jsonl, checkpoints/, and the report (``summary["report"]``)
    unless ``report=False``. ``resume``: a run folder to continue (``settings`` may change what ``odenet train
    --resume`` may: epochs, device, data_dir, report, tensorboard).
    Progress bars are ``tqdm.auto``'s, so they draw as widgets in notebooks.
    """
    from .config import check_names
    from .device import resolve_device
    from .report import history_hook, write_report
    from .train import resume_config, train

    if resume is not None:
        if config is not None:
            raise OdenetError("resume continues the run's saved config; give the settings it may change, not a config")
        run = Path(resume)
        cfg = resume_config(run, settings)
    else:
        if config is not None and not isinstance(config, Config):
            raise OdenetError(f"config must be an odenet.Config, got {type(config).__name__} (a dict of settings: "
                              "fit(**settings) or Config(**settings))")
        check_names(settings)
        cfg = dataclasses.replace(config or Config(), **settings).validate()
        resolve_device(cfg.device)
        run = cfg.run_folder()
    summary = train(cfg, run, resume=resume is not None, progress=progress,
                    hooks=[history_hook] if cfg.report else [])
    if cfg.report:
        summary["report"] = str(write_report(run, device=cfg.device))
    return summary


__all__ = ["load", "preprocess", "dataset", "fit"]
