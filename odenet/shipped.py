"""The trained model inside the package: what ``predict``, ``evaluate`` and ``demo`` use without ``--model``.

``odenet/pretrained/mnist.pt`` is an ordinary odenet checkpoint (float32 weights, the config, the per-epoch
metrics) plus ``command`` (what made it), ``recipe``, ``flow_map`` (the demo's PCA map of test digits'
trajectories, so the demo needs no dataset) and ``ood`` (the statistics and threshold of ``odenet.ood``'s
"does not look like a digit" score, fitted on training images). ``export`` writes it from a run folder;
``add_ood`` refits the ``ood`` entry of an existing one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .config import Config
from .errors import OdenetError

SHIPPED = Path(__file__).resolve().parent / "pretrained" / "mnist.pt"


def model_path(path: Optional[str]) -> str:
    """``--model PATH`` if given (a run folder or checkpoint), else the shipped model."""
    if path:
        return path
    if not SHIPPED.is_file():
        raise OdenetError(f"the shipped model is missing from this installation ({SHIPPED.name}); "
                          "pass --model RUN_DIR|CHECKPOINT")
    return str(SHIPPED)


def chosen_by(path: Path, cfg: Config) -> str:
    """How the checkpoint at ``path`` was chosen, for reports: never by the test set."""
    if Path(path).name == "best.pt" and cfg.val_size > 0:
        return f"highest accuracy on a {cfg.val_size}-image validation split"
    if Path(path).name == "last.pt":
        return "final epoch"
    if Path(path).resolve() == SHIPPED:
        return "the shipped model: final epoch of its recipe"
    return "as given"


def export(run: Path, out: Path, command: str, recipe: str, data_dir: Optional[str] = None) -> Path:
    """Write the shippable checkpoint of run folder ``run``'s final model (``last.pt``) to ``out``."""
    from . import checkpoint
    from .data import load
    from .flow import build_flow_map

    model, cfg, state = checkpoint.load_model(str(Path(run) / "checkpoints" / "last.pt"))
    test = load(cfg.dataset, cfg.resolved_data_dir(data_dir), False, torch.device("cpu"), verify=cfg.verify_data)
    fmap = build_flow_map(model, test.x, test.y)
    config = dict(cfg.to_dict(), data_dir=None, out="runs", device="auto")  # nothing of the machine it ran on
    shipped = {"config": config, "model": {k: v.float().contiguous() for k, v in model.state_dict().items()},
               "epoch": state["epoch"], "history": state["history"], "command": command, "recipe": recipe,
               "flow_map": fmap.to_state(), "ood": _ood_state(model, cfg, data_dir)}
    checkpoint.save(out, shipped)
    return out


def add_ood(path: Path, data_dir: Optional[str] = None) -> Path:
    """Fit ``odenet.ood``'s statistics for the shipped checkpoint at ``path`` and store them in it."""
    from . import checkpoint

    model, cfg, state = checkpoint.load_model(str(path))
    state = {k: v for k, v in state.items() if k not in ("format", "version")}
    state["ood"] = _ood_state(model, cfg, data_dir)
    checkpoint.save(Path(path), state)
    return Path(path)


def _ood_state(model, cfg: Config, data_dir: Optional[str]) -> dict:
    """The ``ood`` entry of a shipped checkpoint: ``odenet.ood``'s detector fitted on the model's training images."""
    from . import ood
    from .data import load_split

    images, labels = load_split(cfg.dataset, cfg.resolved_data_dir(data_dir), True, cfg.verify_data)
    return ood.fit_model(model, images, labels, cfg.dataset).to_state()
