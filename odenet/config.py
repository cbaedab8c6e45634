"""Run configuration: plain values with the seed's defaults, validation, and config-file loading."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, Optional

from .errors import OdenetError

DATASETS = ("mnist", "fashion-mnist")
LR_SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adam", "adamw")


@dataclass
class Config:
    """Every setting of a training run. The defaults are the seed's configuration (SPEC.md)."""

    # the seed's configuration
    batch_size: int = 64
    epochs: int = 10
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # per-epoch cosine decay from lr; "constant" keeps lr fixed
    # training recipe beyond the seed (all off by default; see docs/accuracy.md)
    optimizer: str = "adam"  # adam or adamw (decoupled weight decay)
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0  # linear warm-up of the learning rate over this many epochs (per batch)
    label_smoothing: float = 0.0
    ema: float = 0.0  # decay of an exponential moving average of the weights used for evaluation; 0: off
    aug_rotate: float = 0.0  # random rotation, +- degrees (on-device, whole batch at once)
    aug_translate: float = 0.0  # random shift, +- pixels
    aug_scale: float = 0.0  # random zoom, +- fraction
    aug_flip: bool = False  # random left-right mirror (label-preserving for clothes, not for digits)
    aug_elastic: float = 0.0  # elastic distortion: rms displacement in pixels of a smooth random field; 0: off
    aug_elastic_sigma: float = 4.0  # the field's smoothness: Gaussian blur in pixels
    aug_off_epochs: int = 0  # the last N epochs train on the images as they are (no augmentation)
    kinetic: float = 0.0  # kinetic-energy regularization: weight of each image's integral |f(z(t))|^2 dt in the loss
    val_size: int = 0  # images carved from the training set to choose best.pt; 0: train on all, no selection
    t_end: float = 1.0
    ode_dim: int = 64
    solver: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-4
    # solver details
    step_size: float = 0.1  # fixed-step solvers: 10 steps over [0, 1]
    adjoint: bool = True
    seminorm: bool = False
    backend: str = "native"
    max_steps: int = 10_000
    # data and run
    dataset: str = "mnist"
    data_dir: Optional[str] = None
    verify_data: bool = True
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    eval_batch_size: int = 1000
    seed: int = 0
    device: str = "auto"
    out: str = "runs"
    name: Optional[str] = None
    tensorboard: bool = False
    report: bool = True

    def validate(self) -> "Config":
        """Raise ``OdenetError`` with a one-line message for any invalid value; return self."""
        from .ode import BACKENDS, resolve_backend

        positive = dict(batch_size=self.batch_size, epochs=self.epochs, lr=self.lr, t_end=self.t_end,
                        ode_dim=self.ode_dim, rtol=self.rtol, atol=self.atol, step_size=self.step_size,
                        max_steps=self.max_steps, eval_batch_size=self.eval_batch_size,
                        aug_elastic_sigma=self.aug_elastic_sigma)
        for k, v in positive.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 or v != v or v == float("inf"):
                raise OdenetError(f"{k.replace('_', '-')} must be a positive finite number, got {v!r}")
        nonneg = dict(weight_decay=self.weight_decay, warmup_epochs=self.warmup_epochs, ema=self.ema,
                      label_smoothing=self.label_smoothing, aug_rotate=self.aug_rotate,
                      aug_translate=self.aug_translate, aug_scale=self.aug_scale, aug_elastic=self.aug_elastic,
                      aug_off_epochs=self.aug_off_epochs, val_size=self.val_size,
                      kinetic=self.kinetic)
        for k, v in nonneg.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0 or v == float("inf"):
                raise OdenetError(f"{k.replace('_', '-')} must be a finite number >= 0, got {v!r}")
        for k in (f.name for f in fields(self) if f.type == "bool"):  # annotations are strings here
            if not isinstance(getattr(self, k), bool):
                raise OdenetError(f"{k.replace('_', '-')} must be true or false, got {getattr(self, k)!r}")
        for k in ("batch_size", "epochs", "ode_dim", "max_steps", "eval_batch_size", "val_size", "aug_off_epochs"):
            if int(getattr(self, k)) != getattr(self, k):
                raise OdenetError(f"{k.replace('_', '-')} must be an integer, got {getattr(self, k)!r}")
        if self.ema >= 1 or self.label_smoothing >= 1 or self.aug_scale >= 1:
            raise OdenetError("ema, label-smoothing and aug-scale must be below 1")
        if self.optimizer not in OPTIMIZERS:
            raise OdenetError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        for k in ("train_subset", "test_subset"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise OdenetError(f"{k.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise OdenetError(f"unknown lr-schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.dataset not in DATASETS:
            raise OdenetError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.backend not in BACKENDS:
            raise OdenetError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        resolve_backend(self.solver, self.backend)
        if self.kinetic > 0 and not (self.adjoint and resolve_backend(self.solver, self.backend) == "native"):
            raise OdenetError("kinetic needs the adjoint method of the native backend (its gradient is added in the "
                              "adjoint's backward pass); drop --no-adjoint / --backend torchdiffeq or set kinetic 0")
        if self.device not in ("auto", "cpu") and not self.device.startswith(("cuda", "mps")):
            raise OdenetError(f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Config":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise OdenetError(f"unknown config key(s): {', '.join(unknown)}")
        return cls(**d)

    def resolved_data_dir(self, override: Optional[str] = None) -> str:
        """``override``, else this run's ``data_dir``, else ``$ODENET_DATA_DIR`` or the per-user cache."""
        return override or self.data_dir or default_data_dir()

    def solver_kwargs(self) -> Dict[str, Any]:
        """The ODE block's settings (see ``odenet.model.ODEBlock``)."""
        return dict(t_end=self.t_end, method=self.solver, rtol=self.rtol, atol=self.atol,
                    step_size=self.step_size, adjoint=self.adjoint, seminorm=self.seminorm,
                    backend=self.backend, max_steps=self.max_steps)


def load_config_file(path: str) -> Dict[str, Any]:
    """Read a YAML, TOML or JSON file of config keys (dashes or underscores); return a plain dict."""
    p = Path(path)
    if not p.is_file():
        raise OdenetError(f"config file not found: {path}")
    try:
        text = p.read_text()
        if p.suffix == ".toml":
            try:
                import tomllib  # type: ignore[import-not-found]
            except ImportError:  # Python < 3.11
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as e:  # noqa: BLE001 - any parse error becomes one line
        raise OdenetError(f"cannot parse config file {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise OdenetError(f"config file {path} must hold a mapping of keys to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def default_data_dir() -> str:
    """``$ODENET_DATA_DIR``, else a per-user cache folder."""
    env = os.environ.get("ODENET_DATA_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "odenet", "data")


def epoch_lr(cfg: Config, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``: ``lr`` throughout, or a cosine decay from ``lr`` over ``epochs``."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))


def step_lr(cfg: Config, epoch: int, batch: int, batches_per_epoch: int) -> float:
    """Learning rate of one batch: ``epoch_lr`` times a linear warm-up over the first ``warmup_epochs``."""
    lr = epoch_lr(cfg, epoch)
    if cfg.warmup_epochs > 0:
        done = (epoch + (batch + 1) / batches_per_epoch) / cfg.warmup_epochs
        lr *= min(1.0, done)
    return lr
