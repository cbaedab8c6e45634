"""Checkpoints: written atomically (temp file + rename), read with ``weights_only=True``, validated."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from .config import Config
from .errors import OdenetError
from .files import atomic_write_bytes
from .model import NeuralODEModel

FORMAT = "odenet-checkpoint"
VERSION = 1


def save(path: Path, state: Dict[str, Any]) -> None:
    """Save a checkpoint dict (model, optimizer, config, epoch, history, rng) atomically."""
    atomic_write_bytes(Path(path), lambda f: torch.save({"format": FORMAT, "version": VERSION, **state}, f))


def load(path: str) -> Dict[str, Any]:
    """Read a checkpoint; a one-line ``OdenetError`` for anything that is not an odenet checkpoint."""
    p = Path(path)
    if not p.is_file():
        raise OdenetError(f"checkpoint not found: {path}")
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


def resolve_path(path: str) -> Path:
    """A checkpoint file, or a run folder: its ``best.pt`` (chosen on a validation split), else ``last.pt``."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name
        raise OdenetError(f"{path} holds no checkpoint (expected checkpoints/best.pt or checkpoints/last.pt)")
    if not p.exists():
        raise OdenetError(f"no such run folder or checkpoint: {path}")
    return p


def load_model(path: str, device: torch.device = torch.device("cpu")) -> Tuple[NeuralODEModel, Config, Dict[str, Any]]:
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
