"""Training: the seed's loop (Adam, cross-entropy, adjoint gradients), with run folder, resume and hooks.

Run folder ``<out>/<name>/``: ``config.yaml`` (resolved), ``metrics.jsonl`` (one record per epoch),
``checkpoints/last.pt`` (and ``checkpoints/best.pt``, chosen on the validation split when there is one),
``summary.json`` at the end.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
import yaml

from . import checkpoint, distributed
from .config import Config, check_names, load_config_file
from .data import Shard, background_value, class_names, load_split, load_training, random_affine
from .device import resolve_device
from .errors import DivergenceError, Interrupted, OdenetError, SolverError
from .evaluate import run_eval
from .files import atomic_write_text
from .flow import contribution
from .model import NeuralODEModel

EpochHook = Callable[[Path, List[Dict]], None]


# What ``--resume`` (and ``fit(resume=...)``) may change: everything else continues as the run was saved.
RESUME_MAY_CHANGE = ("epochs", "device", "data_dir", "report", "tensorboard", "tta")


def resume_config(run: Path, changes: Dict) -> Config:
    """The saved config of run folder ``run`` with ``changes`` (settings of ``RESUME_MAY_CHANGE`` only) applied:
    the one rule of what a resumed run may change, for the command line and the Python API alike."""
    check_names(changes)
    other = sorted(set(changes) - set(RESUME_MAY_CHANGE))
    if other:
        raise OdenetError(f"resume continues the run's saved config; only {', '.join(RESUME_MAY_CHANGE)} may "
                          f"change (got {', '.join(other)})")
    return dataclasses.replace(saved_config(run), **changes).validate()


def epoch_lr(cfg: Config, epoch: float) -> float:
    """Learning rate at ``epoch`` (0-based, fractional within an epoch): ``lr`` throughout (constant), a cosine
    decay from ``lr`` stepped once per whole epoch (cosine), or a decay from ``lr`` to 0 at the run's end (linear)."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "linear":
        return cfg.lr * (1.0 - epoch / cfg.epochs)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * math.floor(epoch) / cfg.epochs))


def step_lr(cfg: Config, epoch: int, batch: int, batches_per_epoch: int) -> float:
    """Learning rate of one batch: ``epoch_lr`` at the batch's start times a linear warm-up over the first
    ``warmup_epochs``."""
    lr = epoch_lr(cfg, epoch + batch / batches_per_epoch)
    if cfg.warmup_epochs > 0:
        done = (epoch + (batch + 1) / batches_per_epoch) / cfg.warmup_epochs
        lr *= min(1.0, done)
    return lr


def make_optimizer(model: torch.nn.Module, lr: float, optimizer: str = "adam",
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam or AdamW, in the fused single-kernel form where this torch and device support it (docs/performance.md)."""
    cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    kw = dict(lr=lr, weight_decay=weight_decay)
    try:
        return cls(model.parameters(), fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return cls(model.parameters(), **kw)


class EMA:
    """An exponential moving average of a model's weights, kept in a copy used for evaluation.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` so early averages are not dominated by the
    random initialisation.
    """

    def __init__(self, model: NeuralODEModel, decay: float):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self._src, self._dst = list(model.parameters()), list(self.model.parameters())

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._dst, self._src, 1.0 - d)


class StepStats(NamedTuple):
    """What one step measured, over the whole batch (all ranks)."""

    loss: float  # mean loss
    correct: float  # correct predictions
    n: float  # images
    nfe_f: float  # forward NFE (mean over ranks)
    nfe_b: int  # backward NFE of this rank


class _Forward(NamedTuple):
    loss: Optional[torch.Tensor]  # what is differentiated (None when the solve failed)
    loss_sum: float  # the reported loss summed over the images (times their weight)
    correct: float
    nfe: int
    failure: str  # a failed solve's message, or ""


def _forward(net: torch.nn.Module, model: NeuralODEModel, x: torch.Tensor, y: torch.Tensor, label_smoothing: float,
             kinetic: float, mean: bool = True, weight: float = 1.0) -> _Forward:
    """The loss of a batch: cross-entropy (mean, or ``mean=False`` the sum), plus ``kinetic`` times each image's
    ``integral_0^T |f(z(t))|^2 dt`` (the model's ``energy`` output), which trains but is not reported."""
    try:
        with _solver_failures():
            logits, energy = net(x, energy=True) if kinetic else (net(x), None)
    except DivergenceError as e:
        return _Forward(None, 0.0, 0.0, 0, str(e))
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction="mean" if mean else "sum")
    loss_sum = loss.item() * (len(y) if mean else weight)
    if energy is not None:
        loss = loss + kinetic * (energy.mean() if mean else energy.sum())
    correct = (logits.argmax(1) == y).sum().item() * weight
    return _Forward(loss, loss_sum, correct, model.stats.nfe_forward, "")


def _update(model: NeuralODEModel, opt: torch.optim.Optimizer, loss: torch.Tensor) -> int:
    """Backward (the adjoint's solve) and the optimizer's step; the backward NFE."""
    opt.zero_grad(set_to_none=True)
    with _solver_failures():
        loss.backward()
    opt.step()
    return model.stats.nfe_backward


def train_step(model: NeuralODEModel, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               label_smoothing: float = 0.0, kinetic: float = 0.0) -> StepStats:
    """One optimisation step on a batch: the mean cross-entropy (plus ``kinetic`` times the mean kinetic energy,
    which trains but is not reported), its adjoint gradient, the optimizer's step. A failed solve or a non-finite
    loss raises ``DivergenceError`` before any update."""
    fw = _forward(model, model, x, y, label_smoothing, kinetic)
    if fw.failure:
        raise DivergenceError(fw.failure)
    if not math.isfinite(fw.loss_sum):
        raise DivergenceError(f"loss is {fw.loss_sum / len(y)}")
    nfe_b = _update(model, opt, fw.loss)
    return StepStats(fw.loss_sum / len(y), fw.correct, len(y), fw.nfe, nfe_b)


def shard_step(model: NeuralODEModel, opt: torch.optim.Optimizer, shard: Shard, cfg: Config, *,
               net: Optional[torch.nn.Module] = None, ctx: distributed.Context = distributed.SINGLE,
               stop: bool = False) -> StepStats:
    """``train_step`` as the training loop runs it: this rank's ``shard`` of the batch through ``net`` (DDP
    around ``model``), the ranks agreeing before any update.

    The ranks sum their loss, counts and flags before the backward pass, so they all step, all stop
    (``stop``: a signal arrived; raises ``KeyboardInterrupt``) or all raise ``DivergenceError`` (a non-finite
    loss or a failed solve). Under DDP a rank's loss is its shard's loss sum times ``world / batch size``: DDP's
    gradient average is then exactly the mean over the whole batch. ``shard.weight`` 0 marks a stand-in image
    (see ``Split.shards``). In one process (``ctx`` single) it is ``train_step`` plus the stop flag.
    """
    fw = _forward(net or model, model, shard.x, shard.y, cfg.label_smoothing, cfg.kinetic, mean=not ctx.active,
                  weight=shard.weight)
    loss_sum, correct, n, nfe_f, stops, failures = ctx.all_sum(
        [fw.loss_sum, fw.correct, len(shard.y) * shard.weight, fw.nfe, stop, bool(fw.failure)])
    if failures:
        raise ctx.agreed(DivergenceError(fw.failure or "the solver failed on another rank"))
    if stops:
        raise KeyboardInterrupt
    if not math.isfinite(loss_sum):
        raise ctx.agreed(DivergenceError(f"loss is {loss_sum / n}"))
    loss = fw.loss * (ctx.world * shard.weight / n) if ctx.active else fw.loss
    nfe_b = _update(model, opt, loss)
    return StepStats(loss_sum / n, correct, n, nfe_f / ctx.world, nfe_b)


def _write_metrics(run: Path, history: List[Dict]) -> None:
    atomic_write_text(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))


@contextmanager
def _solver_failures():
    """The one place a failed solve becomes a ``DivergenceError``: odenet's ``SolverError`` and torchdiffeq's
    step-size assertions (underflow, too many steps); any other error passes through."""
    try:
        yield
    except (SolverError, AssertionError) as e:
        if isinstance(e, AssertionError) and not ("underflow" in str(e) or "max_num_steps" in str(e)):
            raise
        raise DivergenceError(str(e)) from None


@dataclass
class _Totals:
    """Sums over an epoch's steps (all ranks), from which its record is made."""

    loss: float = 0.0
    correct: float = 0.0
    n: float = 0.0
    nfe_f: float = 0.0
    nfe_b: float = 0.0
    batches: int = 0

    def add(self, st: StepStats) -> None:
        self.batches += 1
        self.loss += st.loss * st.n
        self.correct += st.correct
        self.n += st.n
        self.nfe_f += st.nfe_f
        self.nfe_b += st.nfe_b


class _State:
    """What a checkpoint holds and resume restores: model, optimizer, EMA, shuffling, RNG and history."""

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg = cfg
        self.model = NeuralODEModel.from_config(cfg).to(device)
        self.opt = make_optimizer(self.model, cfg.lr, cfg.optimizer, cfg.weight_decay)
        self.ema = EMA(self.model, cfg.ema) if cfg.ema > 0 else None
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.history: List[Dict] = []
        self.epoch, self.best_val = 0, -1.0

    @property
    def eval_model(self) -> NeuralODEModel:
        return self.ema.model if self.ema is not None else self.model

    def state_dict(self) -> Dict:
        state = {"config": self.cfg.to_dict(), "model": self.eval_model.state_dict(),
                 "optimizer": self.opt.state_dict(), "epoch": self.epoch, "history": self.history,
                 "best_val_acc": self.best_val,
                 "rng": {"shuffle": self.shuffle.get_state(), "torch": torch.get_rng_state()}}
        if self.ema is not None:
            state.update(train_model=self.model.state_dict(), ema_updates=self.ema.updates)
        return state

    def load_state_dict(self, state: Dict) -> None:
        self.model.load_state_dict(state.get("train_model", state["model"]))
        if self.ema is not None:
            self.ema.model.load_state_dict(state["model"])
            self.ema.updates = state.get("ema_updates", 0)
        self.opt.load_state_dict(state["optimizer"])
        self.shuffle.set_state(state["rng"]["shuffle"])
        torch.set_rng_state(state["rng"]["torch"])
        self.history, self.epoch = list(state["history"]), state["epoch"]
        self.best_val = state.get("best_val_acc", -1.0)


def train(cfg: Config, run: Path, resume: bool = False, progress: bool = True,
          hooks: Optional[List[EpochHook]] = None, log: Optional[Callable[[str], None]] = None,
          ctx: Optional[distributed.Context] = None) -> Dict:
    """Train ``cfg`` into run folder ``run`` (continuing its ``last.pt`` when ``resume``); return the summary.

    The test set is evaluated and logged every epoch but never chooses anything: ``best.pt`` is written only
    with a validation split (``cfg.val_size > 0``) and is the epoch of highest validation accuracy.
    Under torchrun (``ctx`` from ``distributed.setup``) every rank trains its shard of each batch through
    DDP; rank 0 alone evaluates, logs and writes the run folder.
    """
    ctx = ctx or distributed.Context(device=resolve_device(cfg.device))
    log = (log or (lambda msg: print(msg, flush=True))) if ctx.is_main else (lambda msg: None)
    _check(cfg, ctx, log)
    torch.manual_seed(cfg.seed)
    cfg.data_dir = cfg.resolved_data_dir()  # recorded in config.yaml, so evaluate/report find the same files
    train_set, val_set, test_set = _load_splits(cfg, ctx.device)
    if cfg.tensorboard:
        _tensorboard_class()  # fail before anything is written
    st = _State(cfg, ctx.device)
    saved = ctx.on_main(lambda: _open_run(run, resume, cfg))  # rank 0 reads the checkpoint and hands it on
    if saved is not None:
        st.load_state_dict(saved)
        log(f"resuming {run} after epoch {st.epoch}")
    if ctx.active:
        log(f"distributed: {ctx.world} ranks ({torch.distributed.get_backend()}), "
            f"{cfg.batch_size // ctx.world} images per rank per batch")
    net = distributed.wrap(st.model, ctx)
    writer = _start_run_folder(run, st) if ctx.is_main else None
    stop = _StopOnSignal()  # Ctrl-C / SIGTERM stop between batches, never inside a checkpoint write
    epoch = st.epoch
    try:
        for epoch in range(st.epoch, cfg.epochs):
            totals, seconds = _run_epoch(st, net, train_set, epoch, ctx, stop, run, progress)
            if not ctx.is_main:
                continue
            record = _evaluate_epoch(st, totals, seconds, epoch, ctx.world, val_set, test_set)
            _save_epoch(st, record, run)
            _log_epoch(record, cfg.epochs, log, writer)
            for hook in hooks or []:
                hook(run, st.history)
    except KeyboardInterrupt:
        if not st.history:
            raise ctx.agreed(Interrupted(f"interrupted during epoch {epoch + 1}, before any checkpoint; "
                                         f"{_unfinished(run, resume, ctx)}")) from None
        raise ctx.agreed(Interrupted(f"interrupted during epoch {epoch + 1}; the checkpoint after epoch "
                                     f"{len(st.history)} is kept; continue with: odenet train --resume {run}")) from None
    except DivergenceError as e:
        if st.history:
            raise
        raise DivergenceError(f"{e}; {_unfinished(run, resume, ctx)}") from None
    finally:
        stop.restore()
        if writer is not None:
            writer.close()
    return _summarize(run, st.history, ctx, val_set is not None)


def _check(cfg: Config, ctx: distributed.Context, log: Callable[[str], None]) -> None:
    cfg.validate()
    if cfg.ode_solver().engine != cfg.backend:
        log(f"note: solver {cfg.solver} is not in the native engine; it runs on the torchdiffeq backend")
    if cfg.batch_size % ctx.world:
        raise ctx.agreed(OdenetError(f"batch-size {cfg.batch_size} is the global batch and must divide evenly "
                                     f"over the {ctx.world} ranks"))


def _load_splits(cfg: Config, device: torch.device):
    """The training split (less the validation images), the validation split (or None) and the test split."""
    train_set, val_set = load_training(cfg.dataset, cfg.data_dir, device, cfg.train_subset, cfg.verify_data,
                                       cfg.val_size, cfg.seed)
    test_set = load_split(cfg.dataset, cfg.data_dir, False, device, cfg.test_subset, cfg.verify_data)
    return train_set, val_set, test_set


def _start_run_folder(run: Path, st: _State):
    """Rank 0: write config.yaml and the metrics so far; the TensorBoard writer, if asked for."""
    atomic_write_text(run / "config.yaml", yaml.safe_dump(st.cfg.to_dict(), sort_keys=False))
    _write_metrics(run, st.history)
    return _tensorboard_class()(str(run / "tensorboard")) if st.cfg.tensorboard else None


def _run_epoch(st: _State, net, train_set, epoch: int, ctx: distributed.Context, stop: "_StopOnSignal",
               run: Path, progress: bool):
    """One pass over the training split (this rank's shard of every batch): the totals and the seconds."""
    cfg, model = st.cfg, st.model
    model.train()
    t0 = time.perf_counter()
    totals = _Totals()
    n_batches = math.ceil(len(train_set) / cfg.batch_size)
    augment = epoch < cfg.epochs - cfg.aug_off_epochs and (
        cfg.aug_rotate > 0 or cfg.aug_translate > 0 or cfg.aug_scale > 0 or cfg.aug_flip or cfg.aug_elastic > 0)
    background = background_value(cfg.dataset)
    bar = _bar(n_batches, f"epoch {epoch + 1}/{cfg.epochs}", progress and ctx.is_main)
    for b, shard in enumerate(train_set.shards(cfg.batch_size, st.shuffle, ctx.rank, ctx.world)):
        for group in st.opt.param_groups:
            group["lr"] = step_lr(cfg, epoch, b, n_batches)
        x = shard.x
        if augment:
            x = random_affine(x, cfg.aug_rotate, cfg.aug_translate, cfg.aug_scale, background,
                              rows=(shard.start, shard.total), flip=cfg.aug_flip,
                              elastic=cfg.aug_elastic, elastic_sigma=cfg.aug_elastic_sigma)
        try:
            step = shard_step(model, st.opt, shard._replace(x=x), cfg, net=net, ctx=ctx,
                              stop=stop.signal is not None)
        except DivergenceError as e:
            kept = f"; last good checkpoint kept in {run / 'checkpoints'}" if st.history else ""  # else: see train()
            raise ctx.agreed(DivergenceError(f"training diverged at epoch {epoch + 1}, batch {b + 1}: {e}{kept}")) from None
        if st.ema is not None:
            st.ema.update()
        totals.add(step)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{totals.loss / totals.n:.4f}", acc=f"{totals.correct / totals.n:.4f}",
                            nfe=f"{step.nfe_f:.0f}/{step.nfe_b}", refresh=False)
    totals.nfe_b = ctx.all_sum([totals.nfe_b])[0] / ctx.world
    distributed.check_in_sync(model, ctx)
    if bar is not None:
        bar.close()
    return totals, time.perf_counter() - t0


def _evaluate_epoch(st: _State, totals: _Totals, seconds: float, epoch: int, ranks: int, val_set,
                    test_set) -> Dict:
    """The epoch's record: training totals, then validation and test accuracy of the evaluated model."""
    n_batches = totals.batches
    n_classes = len(class_names(st.cfg.dataset))
    record = {
        "epoch": epoch + 1,
        "train_loss": totals.loss / totals.n, "train_acc": totals.correct / totals.n,
        "nfe_forward": totals.nfe_f / n_batches, "nfe_backward": totals.nfe_b / n_batches,
        "epoch_seconds": seconds, "images_per_s": totals.n / seconds, "lr": st.opt.param_groups[0]["lr"],
        "train_images": int(totals.n), "ranks": ranks,
    }
    if val_set is not None:
        ev = run_eval(st.eval_model, val_set, st.cfg.eval_batch_size, n_classes)
        record.update(val_loss=ev["loss"], val_acc=ev["acc"])
    ev = run_eval(st.eval_model, test_set, st.cfg.eval_batch_size, n_classes)
    record.update(test_loss=ev["loss"], test_acc=ev["acc"], nfe_test=ev["nfe"], eval_seconds=ev["seconds"])
    if epoch + 1 == st.cfg.epochs and st.cfg.tta:  # five solves per image: the last epoch only
        for name, split in (("val", val_set), ("test", test_set)):
            if split is not None:
                ev = run_eval(st.eval_model, split, st.cfg.eval_batch_size, n_classes, tta=True)
                record.update({f"{name}_loss_tta": ev["loss"], f"{name}_acc_tta": ev["acc"]})
    if epoch + 1 == st.cfg.epochs:  # what the flow contributes, recorded with the last epoch (last.pt keeps it)
        c = contribution(st.eval_model, test_set, st.cfg.eval_batch_size)
        record["flow"] = {k: v for k, v in c.items() if k != "examples"}
    return record


def _save_epoch(st: _State, record: Dict, run: Path) -> None:
    """Append the record; write last.pt (and best.pt when validation accuracy improved), then the metrics."""
    st.history.append(record)
    st.epoch = record["epoch"]
    is_best = "val_acc" in record and record["val_acc"] > st.best_val
    if is_best:
        st.best_val = record["val_acc"]
    state = st.state_dict()
    checkpoint.save(run / "checkpoints" / "last.pt", state)
    if is_best:
        checkpoint.save(run / "checkpoints" / "best.pt", state)
    _write_metrics(run, st.history)


def _log_epoch(record: Dict, epochs: int, log: Callable[[str], None], writer) -> None:
    val_text = f"val acc {record['val_acc']:.4f}  " if "val_acc" in record else ""
    log(f"epoch {record['epoch']}/{epochs}  train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}  "
        f"{val_text}test loss {record['test_loss']:.4f} acc {record['test_acc']:.4f}  "
        f"NFE fwd {record['nfe_forward']:.1f} bwd {record['nfe_backward']:.1f}  "
        f"{record['epoch_seconds']:.1f}s ({record['images_per_s']:.0f} img/s)")
    if "test_acc_tta" in record:
        val_text = f"val acc {record['val_acc_tta']:.4f}  " if "val_acc_tta" in record else ""
        log(f"with test-time augmentation (each image and its four one-pixel shifts): {val_text}"
            f"test loss {record['test_loss_tta']:.4f} acc {record['test_acc_tta']:.4f}")
    if writer is not None:
        for k, v in record.items():
            if k != "epoch" and isinstance(v, (int, float)):  # the last epoch's "flow" is a table, not a scalar
                writer.add_scalar(k, v, record["epoch"])
        writer.flush()


def _summarize(run: Path, history: List[Dict], ctx: distributed.Context, validated: bool) -> Dict:
    """The run's summary (written to summary.json by rank 0)."""
    summary = {"run": str(run), "epochs": len(history), "device": str(ctx.device), "ranks": ctx.world,
               "final": history[-1] if history else None,
               "final_test_acc": history[-1]["test_acc"] if history else None,
               "selection": "best.pt: highest validation accuracy" if validated else
                            "none: no validation split, the final model is the run's model",
               "total_train_seconds": sum(r["epoch_seconds"] for r in history)}
    if history and "test_acc_tta" in history[-1]:
        summary["final_test_acc_tta"] = history[-1]["test_acc_tta"]
    if validated and history:
        best = max(history, key=lambda r: r["val_acc"])
        summary.update(best_epoch=best["epoch"], best_val_acc=best["val_acc"], test_acc_at_best=best["test_acc"])
    if ctx.is_main:
        atomic_write_text(run / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _open_run(run: Path, resume: bool, cfg: Config) -> Optional[Dict]:
    """Rank 0: the checkpoint to continue (``resume``), else create the run folder; ``None`` for a new run.

    A checkpoint continues only its own run: its config must be the run's (``config.yaml``, less the settings a
    resume may change), its history the run's ``metrics.jsonl`` (nothing recorded is ever dropped), and
    ``epochs`` at least the epochs it has finished. Checked before anything in the folder is written."""
    if not resume:
        check_new_run(run)
        (run / "checkpoints").mkdir(parents=True)
        return None
    path = run / "checkpoints" / "last.pt"
    state = checkpoint.load(str(path))
    try:
        theirs = Config.from_dict(dict(state["config"])).validate()
        history, done = list(state["history"]), state["epoch"]
        if not isinstance(done, int) or isinstance(done, bool) or done != len(history) or not all(
                isinstance(r, dict) and r.get("epoch") == i + 1 for i, r in enumerate(history)):
            raise ValueError("epoch count and history disagree")
        for key in ("model", "optimizer", "rng"):
            state[key]  # noqa: B018 - present, or KeyError below
    except (KeyError, TypeError, ValueError, OdenetError) as e:
        raise OdenetError(f"{path} is damaged or not an odenet training checkpoint ({str(e).splitlines()[0][:120]})") from None
    mine = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_MAY_CHANGE}
    other = {k: v for k, v in theirs.to_dict().items() if k not in RESUME_MAY_CHANGE}
    if mine != other:
        differ = sorted(k for k in mine if mine[k] != other.get(k))
        raise OdenetError(f"{path} belongs to another run (its {', '.join(differ[:3])} differ from {run / 'config.yaml'}); "
                          "refusing to resume from it")
    recorded = _recorded_epochs(run)
    if recorded > done:
        raise OdenetError(f"{path} is from epoch {done} but {run / 'metrics.jsonl'} records {recorded} epochs: "
                          "resuming from it would drop recorded epochs; refusing")
    if cfg.epochs < done:
        raise OdenetError(f"{run} has finished {done} epochs; --epochs {cfg.epochs} would not continue it "
                          f"(give --epochs {done + 1} or more)")
    return state


def _recorded_epochs(run: Path) -> int:
    """How many epoch records ``metrics.jsonl`` holds (0 without one); a damaged file is a one-line error."""
    p = run / "metrics.jsonl"
    if not p.is_file():
        return 0
    try:
        return sum(1 for line in p.read_text().splitlines() if line.strip() and json.loads(line))
    except (ValueError, UnicodeDecodeError):
        raise OdenetError(f"{p} is damaged (not one JSON record per line); refusing to overwrite it") from None


def _unfinished(run: Path, resume: bool, ctx: distributed.Context) -> str:
    """What to do with a new run's folder when its first epoch did not finish: it holds no checkpoint, so it is
    removed (nothing trained is lost) and the same command starts again."""
    if resume or not ctx.is_main:
        return f"the run's last checkpoint is kept; continue with: odenet train --resume {run}"
    import shutil

    shutil.rmtree(run, ignore_errors=True)
    return f"no epoch finished, so nothing was kept: {run} was removed and the same command starts again"


def saved_config(run: Path) -> Config:
    """The saved config of a resumable run folder (config.yaml and checkpoints/last.pt), or a one-line error."""
    if not (run / "checkpoints" / "last.pt").is_file() or not (run / "config.yaml").is_file():
        raise OdenetError(f"{run} is not a resumable run folder (needs config.yaml and checkpoints/last.pt)")
    return Config.from_dict(load_config_file(str(run / "config.yaml")))


def check_new_run(run: Path) -> None:
    """One-line error when a new run's folder is taken."""
    if run.exists() and not (run / "checkpoints" / "last.pt").is_file():
        raise OdenetError(f"run folder {run} already exists and holds no checkpoint to continue; remove it "
                          f"(rm -r {run}) or pick another --name")
    if run.exists():
        raise OdenetError(f"run folder {run} already exists; continue it with --resume {run} or pick another --name")


class _StopOnSignal:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks between batches; a second one interrupts.

    A second signal within ``GRACE`` seconds of the first counts as the same request: Ctrl-C under torchrun
    sends SIGINT to every process and torchrun follows it at once with SIGTERM.
    """

    GRACE = 2.0

    def __init__(self):
        self.signal, self.when = None, 0.0
        self.old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal is None:
            self.signal, self.when = signum, time.monotonic()
        elif time.monotonic() - self.when > self.GRACE:
            raise KeyboardInterrupt

    def restore(self) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _tensorboard_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise OdenetError("--tensorboard needs the tensorboard package: pip install 'odenet-mnist[tensorboard]'") from None
    return SummaryWriter
