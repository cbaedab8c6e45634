"""Data-parallel training under ``torchrun``: one process per rank, PyTorch's DistributedDataParallel.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in each worker's
environment; a plain ``odenet train`` has none of them (or ``WORLD_SIZE=1``) and trains alone, exactly as
before. Backends: gloo on CPU, nccl on CUDA with one GPU per local rank (``cuda:LOCAL_RANK``).

Everything the ranks must decide together (stop on a signal, give up on a diverged loss, fail a run-folder
check) is agreed through a collective, so no rank leaves while another waits for it. A rank that dies ends
the others: torchrun stops the group, and a collective with a dead peer raises, which ``lost_contact``
turns into one line. ``ODENET_DIST_TIMEOUT`` (seconds, default 600) bounds any wait for a silent peer.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, List, Optional, Sequence

import torch

from .errors import OdenetError


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where collectives run (cuda:LOCAL_RANK for nccl)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: Sequence[float]) -> List[float]:
        """``values`` summed over the ranks (float64), the same list on every rank."""
        return self._reduce(values, "SUM")

    def all_max(self, values: Sequence[float]) -> List[float]:
        """Element-wise maximum of ``values`` over the ranks."""
        return self._reduce(values, "MAX")

    def _reduce(self, values: Sequence[float], op: str) -> List[float]:
        if not self.active:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=getattr(torch.distributed.ReduceOp, op))
        return t.tolist()

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only and give its result (or its ``OdenetError``) to every rank.

        For run-folder checks and checkpoint reads: one rank decides, so there is no race between ranks and
        other machines need not see rank 0's files. The error is printed once, by rank 0.
        """
        if not self.active:
            return fn()
        box: List[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except OdenetError as e:
                box[0] = ("error", type(e), str(e))
        torch.distributed.broadcast_object_list(box, src=0, device=self.device)
        if box[0][0] == "ok":
            return box[0][1]
        raise self.agreed(box[0][1](box[0][2]))

    def agreed(self, error: OdenetError) -> OdenetError:
        """``error`` as every rank raises it together: shown by rank 0 only."""
        if not self.is_main:
            error.quiet = True
        return error


SINGLE = Context()


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise OdenetError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def setup(device: torch.device) -> Context:
    """Join the process group that ``torchrun`` describes in the environment; the single context without one.

    ``device`` is the resolved ``--device``: a CUDA device becomes ``cuda:LOCAL_RANK`` (nccl), the CPU uses gloo.
    """
    world = env_world_size()
    if world <= 1:
        return Context(device=device)
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise OdenetError("WORLD_SIZE is set but RANK is not: start distributed training with torchrun") from None
    if device.type == "cuda":
        if device.index is not None and device.index != local_rank:
            raise OdenetError(f"under torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda or auto, "
                              f"not {device}")
        if local_rank >= torch.cuda.device_count():
            raise OdenetError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                              f"start at most that many processes per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise OdenetError(f"distributed training runs on cpu (gloo) or cuda (nccl), not {device.type}")
    try:
        timeout = timedelta(seconds=float(os.environ.get("ODENET_DIST_TIMEOUT", "600")))
    except ValueError:
        raise OdenetError(f"ODENET_DIST_TIMEOUT={os.environ['ODENET_DIST_TIMEOUT']!r} is not a number of seconds") from None
    try:
        torch.distributed.init_process_group(backend, timeout=timeout)
    except (RuntimeError, ValueError) as e:
        raise OdenetError(f"rank {rank}: could not join the process group ({_first_line(e)})") from None
    return Context(rank=rank, world=world, local_rank=local_rank, device=device)


def barrier(ctx: Context) -> None:
    """Wait for every rank. A rank that tore its process group down while rank 0 still worked alone was seen to
    abort at exit ("terminate called without an active exception") on a loaded machine."""
    if ctx.active:
        torch.distributed.barrier()


def shutdown(ctx: Context) -> None:
    if ctx.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def leave(code: int) -> None:
    """End a torchrun rank whose work is done and saved: flush and exit without the interpreter's teardown.

    With gloo, a rank that exits normally after destroying its process group sometimes aborts in the C++
    destructors at interpreter exit ("terminate called without an active exception", SIGABRT), which torchrun
    reports as a failed run although every file was written; skipping the teardown avoids it.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def wrap(model: torch.nn.Module, ctx: Context) -> torch.nn.Module:
    """``model`` in DistributedDataParallel (gradients averaged over ranks in backward), or itself alone.

    The adjoint's parameter gradients come out of an autograd Function whose inputs are the parameters,
    so they reach DDP's gradient hooks like any other (tests/test_distributed.py checks the result).
    """
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def check_in_sync(model: torch.nn.Module, ctx: Context) -> None:
    """Raise if the ranks' weights differ (they must be identical after every all-reduced step)."""
    if not ctx.active:
        return
    with torch.no_grad():
        s = float(sum(p.double().sum() for p in model.parameters()))
    hi, neg_lo = ctx.all_max([s, -s])
    if hi != -neg_lo:
        raise ctx.agreed(OdenetError(f"the ranks' weights differ (checksums {-neg_lo!r} to {hi!r}); "
                                     "a rank did not take part in a gradient all-reduce"))


def lost_contact(e: BaseException, ctx: Context) -> Optional[OdenetError]:
    """A one-line error for a collective that failed because another rank died or went silent; else None."""
    if not ctx.active or isinstance(e, OdenetError):
        return None
    text = str(e)
    peer_gone = isinstance(e, torch.distributed.DistError) or (
        isinstance(e, RuntimeError) and any(k in text for k in ("Gloo", "gloo", "NCCL", "Connection", "timed out")))
    if not peer_gone:
        return None
    reason = re.sub(r"^\[[^\]]*\]\s*", "", _first_line(e))  # drop gloo's "[source file:line]" prefix
    return OdenetError(f"rank {ctx.rank}: lost contact with the other ranks ({reason[:160]}); "
                       "this rank stops; the last checkpoint is kept")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
