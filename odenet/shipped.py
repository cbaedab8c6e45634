"""How the trained model inside the package is made: what ``predict``, ``evaluate`` and ``demo`` use without
``--model``.

``odenet/pretrained/mnist.pt`` (``odenet.checkpoint.SHIPPED``) is an ordinary odenet checkpoint (float32 weights, the config, the per-epoch
metrics) plus ``command`` (what made it), ``recipe``, ``flow_map`` (the demo's PCA map of test digits'
trajectories, so the demo needs no dataset) and ``ood`` (the statistics and threshold of ``odenet.ood``'s
"does not look like a digit" score, fitted on training images). ``export`` writes it from a run folder;
``add_ood`` refits the ``ood`` entry of an existing one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .config import Config


def export(run: Path, out: Path, command: str, recipe: str, data_dir: Optional[str] = None) -> Path:
    """Write the shippable checkpoint of run folder ``run``'s final model (``last.pt``) to ``out``."""
    from . import checkpoint
    from .flow import build_flow_map

    model, cfg, state, *_, test = checkpoint.open_model(Path(run) / "checkpoints" / "last.pt", test=True,
                                                        data_dir=data_dir)
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

    model, cfg, state, *_ = checkpoint.open_model(path)
    state = {k: v for k, v in state.items() if k not in ("format", "version")}
    state["ood"] = _ood_state(model, cfg, data_dir)
    checkpoint.save(Path(path), state)
    return Path(path)


def _ood_state(model, cfg: Config, data_dir: Optional[str]) -> dict:
    """The ``ood`` entry of a shipped checkpoint: ``odenet.ood``'s detector fitted on the model's training images."""
    from . import ood
    from .data import read_split

    images, labels = read_split(cfg.dataset, cfg.resolved_data_dir(data_dir), True, cfg.verify_data)
    return ood.fit_model(model, images, labels, cfg.dataset).to_state()
