"""Checkpoints: written atomically (temp file + rename), read with ``weights_only=True``, validated; and
``open_model``, the one way every command and the Python API open a trained model."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

import torch

from .config import Config
from .data import Split, load_split, load_training
from .device import resolve_device
from .errors import OdenetError
from .files import atomic_write_bytes, regular_file
from .model import NeuralODEModel

SHIPPED = Path(__file__).resolve().parent / "pretrained" / "mnist.pt"

FORMAT = "odenet-checkpoint"
VERSION = 1


def save(path: Path, state: Dict[str, Any]) -> None:
    """Save a checkpoint dict (model, optimizer, config, epoch, history, rng) atomically."""
    atomic_write_bytes(Path(path), lambda f: torch.save({"format": FORMAT, "version": VERSION, **state}, f))


def load(path: str) -> Dict[str, Any]:
    """Read a checkpoint (``.pt``, or weights written by ``odenet export --format safetensors``); a one-line
    ``OdenetError`` for anything that is not an odenet checkpoint."""
    p = regular_file(path, "checkpoint")
    if p.suffix == ".safetensors":
        return _load_safetensors(p)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds on foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise OdenetError(f"{path} is not a readable odenet checkpoint ({type(e).__name__}: {first[:100]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise OdenetError(f"{path} is not an odenet checkpoint (no odenet header)")
    if state.get("version") != VERSION:
        raise OdenetError(f"{path}: checkpoint version {state.get('version')} is not supported")
    return state


def _load_safetensors(p: Path) -> Dict[str, Any]:
    """A safetensors file's weights and, from its metadata, the config and epoch, as a checkpoint dict."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise OdenetError(f"{p} holds safetensors weights: pip install safetensors (or 'odenet-mnist[export]')") from None
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != "odenet-safetensors":
            raise ValueError("no odenet metadata")
        for name, same in json.loads(meta.get("aliases", "{}")).items():  # one tensor under two names
            tensors[name] = tensors[same]
        return {"format": FORMAT, "version": VERSION, "config": json.loads(meta["config"]), "model": tensors,
                "epoch": int(meta["epoch"]), "history": []}
    except Exception as e:  # noqa: BLE001 - safetensors and json raise many kinds on foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OdenetError(f"{p} is not odenet safetensors weights ({first[:100]})") from None


def resolve_path(path: Optional[Union[str, Path]]) -> Path:
    """A checkpoint file, or a run folder: its ``best.pt`` (chosen on a validation split), else ``last.pt``;
    None: the model shipped with odenet. An empty string is refused, not read as None (an unset variable would
    otherwise load the shipped model without a word)."""
    if path is None:
        if not SHIPPED.is_file():
            raise OdenetError(f"the shipped model is missing from this installation ({SHIPPED.name}); "
                              "pass --model RUN_DIR|CHECKPOINT")
        return SHIPPED
    if not isinstance(path, (str, Path)):
        raise OdenetError(f"a model is a run folder or checkpoint path (str or pathlib.Path), or None for the shipped "
                          f"one; got {type(path).__name__}")
    if not str(path):
        raise OdenetError("an empty model path: give a run folder or checkpoint, or None for the shipped model")
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name
        raise OdenetError(f"{path} holds no checkpoint (expected checkpoints/best.pt or checkpoints/last.pt)")
    if not p.exists():
        raise OdenetError(f"no such run folder or checkpoint: {path}")
    return p


def load_model(path: Union[str, Path], device: torch.device = torch.device("cpu")
               ) -> Tuple[NeuralODEModel, Config, Dict[str, Any]]:
    """Rebuild the model of a checkpoint (or run folder) and load its weights."""
    state = load(str(resolve_path(path)))
    try:
        cfg = Config.from_dict(state["config"]).validate()  # before the model is allocated
        if not isinstance(state.get("epoch"), int) or isinstance(state.get("epoch"), bool):
            raise OdenetError("no epoch count")
        model = NeuralODEModel.from_config(cfg)
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError, OdenetError) as e:
        first = str(e).strip().splitlines()[0]
        raise OdenetError(f"{path}: checkpoint does not match the odenet architecture ({first[:160]})") from None
    return model.to(device), cfg, state


def chosen_by(path: Path, cfg: Config) -> str:
    """How the checkpoint at ``path`` was chosen, for reports: never by the test set."""
    if Path(path).name == "best.pt" and cfg.val_size > 0:
        return f"highest accuracy on a {cfg.val_size}-image validation split"
    if Path(path).name == "last.pt":
        return "final epoch"
    if Path(path).resolve() == SHIPPED:
        return "the shipped model: final epoch of its recipe"
    return "as given"


class Opened(NamedTuple):
    """A trained model as ``open_model`` returns it: the model (eval mode, on ``device``), its config, the
    checkpoint dict, the checkpoint's path, its run folder (None for the shipped model) and, when asked for,
    its test split on the same device."""

    model: NeuralODEModel
    cfg: Config
    state: Dict[str, Any]
    path: Path
    run: Optional[Path]
    test: Optional[Split] = None

    @property
    def chosen_by(self) -> str:
        return chosen_by(self.path, self.cfg)

    def test_split(self, data_dir: Optional[str] = None, subset: Union[int, None, str] = None) -> Split:
        """The model's test split on its device: all of it, ``subset`` images, or (``"run"``) the run's own."""
        cfg = self.cfg
        n = cfg.test_subset if subset == "run" else subset
        device = next(self.model.parameters()).device
        return load_split(cfg.dataset, cfg.resolved_data_dir(data_dir), False, device, n, cfg.verify_data)

    def val_split(self, data_dir: Optional[str] = None) -> Split:
        """The validation split its run held out of the training images (drawn again from the run's seed), on the
        model's device; ``OdenetError`` for a model trained without one."""
        cfg = self.cfg
        if cfg.val_size == 0:
            raise OdenetError(f"{self.path} was trained without a validation split (val-size 0): it has only a test split")
        device = next(self.model.parameters()).device
        return load_training(cfg.dataset, cfg.resolved_data_dir(data_dir), device, cfg.train_subset, cfg.verify_data,
                             cfg.val_size, cfg.seed)[1]


def open_model(ref: Optional[Union[str, Path]] = None, device: Union[str, torch.device] = "cpu", *,
               test: bool = False, data_dir: Optional[str] = None,
               test_subset: Union[int, None, str] = None) -> Opened:
    """Resolve the device, find the checkpoint (``ref``: a run folder, a checkpoint file, or None for the shipped
    model), read it once, rebuild the model and (``test=True``) load its dataset's test split from ``data_dir``
    (else the run's own, else ``$ODENET_DATA_DIR``, else the cache): all of it, a fixed subset of ``test_subset``
    images, or (``"run"``) the subset the run itself was tested on."""
    path = resolve_path(ref)
    model, cfg, state = load_model(path, resolve_device(device))
    model.eval()
    opened = Opened(model, cfg, state, path, path.parent.parent if path.parent.name == "checkpoints" else None)
    return opened._replace(test=opened.test_split(data_dir, test_subset)) if test else opened
