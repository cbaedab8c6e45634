"""Run configuration: plain values with the seed's defaults, validation, and config-file loading."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, Optional

from .errors import OdenetError
from .files import regular_file
from .ode.tableaus import FIXED_METHODS, NATIVE_METHODS

DATASETS = ("mnist", "fashion-mnist")
# settings that do not change what is trained, so a resumed run may set them anew
MAX_CONFIG_BYTES = 100_000
# upper bounds on what a setting may ask for, checked before anything is allocated
_LIMITS = dict(ode_dim=4096, batch_size=60_000, eval_batch_size=60_000, max_steps=10_000_000, epochs=100_000,
               t_end=1_000.0, val_size=59_000,
               aug_rotate=180.0, aug_translate=28.0, aug_elastic=28.0)  # degrees; pixels of a 28-pixel image
LR_SCHEDULES = ("cosine", "constant", "linear")
OPTIMIZERS = ("adam", "adamw")
ARCHS = ("seed", "paper")
MAX_PAPER_WIDTH = 512  # channels: a 512-channel paper f has 4.7 M parameters; more is refused before it is built


def _s(default: Any, help: str, switches: Optional[Dict[bool, str]] = None) -> Any:
    """A setting: its default and its help text, written once for ``Config``, the CLI and the docs.
    ``switches``: for a true/false setting, the help of its ``--x`` (True) and ``--no-x`` (False) flags."""
    return dataclasses.field(default=default, metadata={"help": help, "switches": switches or {}})


@dataclass
class Config:
    """Every setting of a training run. The defaults are the seed's configuration (SPEC.md)."""

    # the seed's configuration
    batch_size: int = _s(64, "batch size (under torchrun: the global batch, split over the processes)")
    epochs: int = _s(10, "epochs")
    lr: float = _s(1e-3, "Adam learning rate")
    lr_schedule: str = _s("cosine", "cosine (per-epoch decay from --lr), constant, or linear (per-batch decay from "
                                    "--lr to 0 at the end of the last epoch)")
    # training recipe beyond the seed (all off by default; see docs/accuracy.md)
    optimizer: str = _s("adam", "adam or adamw")
    weight_decay: float = _s(0.0, "weight decay (decoupled with adamw)")
    warmup_epochs: float = _s(0.0, "linear learning-rate warm-up over this many epochs")
    label_smoothing: float = _s(0.0, "label smoothing of the cross-entropy")
    ema: float = _s(0.0, "decay of an exponential moving average of the weights used for evaluation (0: off)")
    aug_rotate: float = _s(0.0, "augmentation: random rotation, +- degrees")
    aug_translate: float = _s(0.0, "augmentation: random shift, +- pixels")
    aug_scale: float = _s(0.0, "augmentation: random zoom, +- fraction")
    aug_flip: bool = _s(False, "augmentation: mirror left-right with probability 1/2", switches={
        True: "augmentation: mirror left-right with probability 1/2 (clothes, not digits)",
        False: "no mirrors (overrides a --config file)"})
    aug_elastic: float = _s(0.0, "augmentation: elastic distortion, rms displacement in pixels (0: off)")
    aug_elastic_sigma: float = _s(4.0, "smoothness of the elastic distortion: Gaussian blur, pixels")
    aug_off_epochs: int = _s(0, "the last N epochs train on the images as they are, unaugmented")
    kinetic: float = _s(0.0, "kinetic-energy regularization: weight of each image's integral of |dz/dt|^2 over [0, T] "
                             "in the loss (Finlay et al. 2020; native solvers; 0: off)")
    val_size: int = _s(0, "training images held out as a validation split that chooses best.pt; 0 trains on all of "
                          "them and evaluate/predict use the final model")
    tta: bool = _s(False, "also report the last epoch's test accuracy with test-time augmentation: the softmax averaged "
                          "over each image and its four one-pixel shifts (five solves per image)", switches={
        True: "also report the last epoch's test accuracy with test-time augmentation (the image and its four "
              "one-pixel shifts)",
        False: "no test-time augmentation (overrides a --config file)"})
    t_end: float = _s(1.0, "final integration time T")
    arch: str = _s("seed", "architecture: seed (SPEC.md's model) or paper (Chen et al.'s conv ODE-Net: an ODE on a "
                           "6x6 feature map of --ode-dim channels; docs/table1.md)")
    ode_dim: int = _s(64, "latent dimension (arch paper: the feature map's channels)")
    solver: str = _s("dopri5", f"ODE solver: {', '.join(NATIVE_METHODS)}, or any torchdiffeq method")
    rtol: float = _s(1e-3, "relative tolerance (adaptive solvers)")
    atol: float = _s(1e-4, "absolute tolerance (adaptive solvers)")
    # solver details
    step_size: float = _s(0.1, f"step of fixed-step solvers ({', '.join(FIXED_METHODS)})")
    adjoint: bool = _s(True, "gradients by the adjoint method", switches={
        False: "backpropagate through the solver instead of the adjoint method"})
    seminorm: bool = _s(False, "adjoint backward error norm ignores the parameter adjoint", switches={
        True: "adjoint backward error norm ignores the parameter adjoint",
        False: "adjoint backward error norm over every adjoint (overrides a --config file)"})
    backend: str = _s("native", "solver engine: native or torchdiffeq")
    max_steps: int = _s(10_000, "step limit per solve (adaptive solvers; a longer fixed grid is refused)")
    # data and run
    dataset: str = _s("mnist", "mnist or fashion-mnist")
    data_dir: Optional[str] = _s(None, "dataset folder in torchvision's layout (default: $ODENET_DATA_DIR or "
                                       "~/.cache/odenet/data)")
    verify_data: bool = _s(True, "MD5 check of the dataset files", switches={
        False: "skip the MD5 check of dataset files (for your own IDX files)"})
    train_subset: Optional[int] = _s(None, "train on a fixed random subset of this many images")
    test_subset: Optional[int] = _s(None, "evaluate on a fixed random subset of this many images")
    eval_batch_size: int = _s(1000, "evaluation batch size")
    seed: int = _s(0, "random seed")
    device: str = _s("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    out: str = _s("runs", "folder that holds run folders")
    name: Optional[str] = _s(None, "run folder name (default: <dataset>-<solver>-<time>)")
    tensorboard: bool = _s(False, "also log to TensorBoard (<run>/tensorboard)", switches={
        True: "also log to TensorBoard (<run>/tensorboard)"})
    report: bool = _s(True, "write the figures and report.html at the end", switches={
        False: "do not write the figures and report.html at the end"})

    def validate(self) -> "Config":
        """Raise ``OdenetError`` with a one-line message for any invalid value; return self."""
        self._check_texts()
        self._check_numbers()
        self._check_choices()
        return self

    def _check_texts(self) -> None:
        for k in ("lr_schedule", "optimizer", "arch", "solver", "backend", "dataset", "device", "out"):
            if not isinstance(getattr(self, k), str) or not getattr(self, k):
                raise OdenetError(f"{k.replace('_', '-')} must be a non-empty string, got {show(getattr(self, k))}")
        for k in ("data_dir", "name"):
            if getattr(self, k) is not None and (not isinstance(getattr(self, k), str) or not getattr(self, k)):
                raise OdenetError(f"{k.replace('_', '-')} must be a non-empty string, got {show(getattr(self, k))}")
        if self.name is not None and (Path(self.name).is_absolute() or Path(self.name).name != self.name
                                      or self.name in (".", "..")):
            raise OdenetError(f"name must be a plain folder name inside --out (no '/', '..' or absolute path), "
                              f"got {show(self.name)}")

    def _check_numbers(self) -> None:
        positive = dict(batch_size=self.batch_size, epochs=self.epochs, lr=self.lr, t_end=self.t_end,
                        ode_dim=self.ode_dim, rtol=self.rtol, atol=self.atol, step_size=self.step_size,
                        max_steps=self.max_steps, eval_batch_size=self.eval_batch_size,
                        aug_elastic_sigma=self.aug_elastic_sigma)
        for k, v in positive.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 or v != v or v == float("inf"):
                raise OdenetError(f"{k.replace('_', '-')} must be a positive finite number, got {show(v)}")
        nonneg = dict(weight_decay=self.weight_decay, warmup_epochs=self.warmup_epochs, ema=self.ema,
                      label_smoothing=self.label_smoothing, aug_rotate=self.aug_rotate,
                      aug_translate=self.aug_translate, aug_scale=self.aug_scale, aug_elastic=self.aug_elastic,
                      aug_off_epochs=self.aug_off_epochs, val_size=self.val_size,
                      kinetic=self.kinetic)
        for k, v in nonneg.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0 or v == float("inf"):
                raise OdenetError(f"{k.replace('_', '-')} must be a finite number >= 0, got {show(v)}")
        for k in (f.name for f in fields(self) if f.type == "bool"):  # annotations are strings here
            if not isinstance(getattr(self, k), bool):
                raise OdenetError(f"{k.replace('_', '-')} must be true or false, got {show(getattr(self, k))}")
        for k in ("batch_size", "epochs", "ode_dim", "max_steps", "eval_batch_size", "val_size", "aug_off_epochs"):
            if int(getattr(self, k)) != getattr(self, k):
                raise OdenetError(f"{k.replace('_', '-')} must be an integer, got {show(getattr(self, k))}")
            setattr(self, k, int(getattr(self, k)))  # 3.0 from a config file is 3
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 63:
            raise OdenetError(f"seed must be an integer >= 0, got {show(self.seed)}")
        for k, most in _LIMITS.items():
            if getattr(self, k) > most:
                raise OdenetError(f"{k.replace('_', '-')} must be at most {most}, got {show(getattr(self, k))}")
        if self.ema >= 1 or self.label_smoothing >= 1 or self.aug_scale >= 1:
            raise OdenetError("ema, label-smoothing and aug-scale must be below 1")
        if self.warmup_epochs > self.epochs:
            raise OdenetError(f"warmup-epochs must be at most epochs ({show(self.epochs)}), got {show(self.warmup_epochs)}")
        for k in ("train_subset", "test_subset"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise OdenetError(f"{k.replace('_', '-')} must be a positive integer, got {show(v)}")

    def _check_choices(self) -> None:
        from .ode import BACKENDS

        if self.optimizer not in OPTIMIZERS:
            raise OdenetError(f"unknown optimizer {show(self.optimizer)}; choose one of {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise OdenetError(f"unknown lr-schedule {show(self.lr_schedule)}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.arch not in ARCHS:
            raise OdenetError(f"unknown arch {show(self.arch)}; choose one of {', '.join(ARCHS)}")
        if self.arch == "paper" and self.ode_dim > MAX_PAPER_WIDTH:
            raise OdenetError(f"ode-dim is the paper architecture's channels: at most {MAX_PAPER_WIDTH}, got "
                              f"{show(self.ode_dim)}")
        if self.dataset not in DATASETS:
            raise OdenetError(f"unknown dataset {show(self.dataset)}; choose one of {', '.join(DATASETS)}")
        if self.backend not in BACKENDS:
            raise OdenetError(f"unknown backend {show(self.backend)}; choose one of {', '.join(BACKENDS)}")
        solver = self.ode_solver()
        if self.kinetic > 0:
            solver.check_energy()
        if not solver.adaptive:  # a fixed grid longer than max_steps is refused here, before any of it is built
            ratio = self.t_end / self.step_size
            steps = math.ceil(ratio) if math.isfinite(ratio) else ratio
            if steps > self.max_steps:
                raise OdenetError(f"step-size {show(self.step_size)} over T = {show(self.t_end)} makes {steps} steps, "
                                  f"more than max-steps ({self.max_steps}); use a larger step size")
        if self.device not in ("auto", "cpu") and not self.device.startswith(("cuda", "mps")):
            raise OdenetError(f"unknown device {show(self.device)}; use auto, cpu, cuda or cuda:N")

    def run_folder(self) -> Path:
        """``<out>/<name>``, naming the run ``<dataset>-<solver>-<time>`` first when it has no name."""
        if self.name is None:
            self.name = f"{self.dataset}-{self.solver}-{time.strftime('%Y%m%d-%H%M%S')}"
        return Path(self.out) / self.name

    @staticmethod
    def help(name: str) -> str:
        """The help text of setting ``name``."""
        return _FIELDS[name].metadata["help"]

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Config":
        if not isinstance(d, dict):
            raise OdenetError(f"a config must be a mapping of settings, got {type(d).__name__}")
        check_names(d, "config key")
        return cls(**d)

    def resolved_data_dir(self, override: Optional[str] = None) -> str:
        """``override``, else this run's ``data_dir``, else ``$ODENET_DATA_DIR`` or the per-user cache."""
        return override or self.data_dir or default_data_dir()

    def ode_solver(self) -> "Solver":
        """The run's ``odenet.ode.Solver``: the method, its step controller and its adjoint, built once here."""
        from .ode import Solver

        return Solver.of(method=self.solver, backend=self.backend, rtol=self.rtol, atol=self.atol,
                         step_size=self.step_size, max_steps=self.max_steps, adjoint=self.adjoint,
                         seminorm=self.seminorm)


_FIELDS = {f.name: f for f in fields(Config)}


def check_names(settings, what: str = "setting") -> None:
    """Raise ``OdenetError`` naming every unknown setting in ``settings`` with the nearest real name."""
    import difflib

    unknown = sorted(str(k) for k in settings if k not in _FIELDS)
    if unknown:
        hints = []
        for k in unknown:
            near = difflib.get_close_matches(k.replace("-", "_"), list(_FIELDS), n=1, cutoff=0.6)
            k = k if len(k) <= 40 else k[:37] + "..."
            hints.append(f"{k} (did you mean {near[0]}?)" if near else k)
        raise OdenetError(f"unknown {what}(s): {', '.join(hints)}")


def load_config_file(path: str) -> Dict[str, Any]:
    """Read a YAML, TOML or JSON file of config keys (dashes or underscores); return a plain dict."""
    p = regular_file(path, "config file")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise OdenetError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 1000} kB: not a config")
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
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise OdenetError(f"config file {path} must hold a mapping of setting names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def show(v: Any) -> str:
    """``v`` for an error message: a number or a short string as written; a container by its type only (a YAML
    alias bomb's value would expand to gigabytes)."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        text = repr(v)
        return text if len(text) <= 60 else text[:57] + "..."
    return f"a {type(v).__name__}"


def count(lowest: int = 1, highest: int = 10 ** 9):
    """A command-line type (argparse): an integer from ``lowest`` to ``highest``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if not lowest <= v <= highest:
            raise argparse.ArgumentTypeError(f"must be from {lowest} to {highest}, got {v}")
        return v

    parse.__name__ = "integer"
    return parse


def default_data_dir() -> str:
    """``$ODENET_DATA_DIR``, else a per-user cache folder."""
    env = os.environ.get("ODENET_DATA_DIR")
    if env:
        return env
    return cache_data_dir()


def cache_data_dir() -> str:
    """The per-user cache folder: the only data folder odenet ever downloads into."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "odenet", "data")
