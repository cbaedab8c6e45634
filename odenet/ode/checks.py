"""What every entry point checks about a problem before it is solved: the state, the times and the tensors the
adjoint differentiates. Shared by odenet's ``integrate`` and the torchdiffeq backend; each check is one line."""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import SolverError
from .settings import AdjointSpec

NO_PARAMS = ("under the adjoint a func that is not a torch.nn.Module needs its tensors given as adjoint_params "
             "(() if it has none), or they get no gradient; or make func a Module")


def adjoint_params(func: Callable, spec: AdjointSpec) -> list:
    """The tensors the adjoint differentiates: ``spec.params`` or ``func``'s parameters, those requiring grad.

    torchdiffeq's rule: a ``func`` that is not an ``nn.Module`` has no parameters to find, so under the adjoint it
    needs them given (``adjoint_params``, ``()`` for none) or a closure's tensors would silently get no gradient.
    """
    given = spec.params
    if given is None:
        if not isinstance(func, torch.nn.Module):
            if spec.enabled and torch.is_grad_enabled():
                raise SolverError(NO_PARAMS)
            return []
        given = list(func.parameters())
    bad = [type(p).__name__ for p in given if not isinstance(p, torch.Tensor)]
    if bad:
        raise SolverError(f"adjoint_params must be tensors, got {bad[0]}")
    return [p for p in given if p.requires_grad]


def check_state(y0) -> torch.Tensor:
    if not isinstance(y0, torch.Tensor):
        raise SolverError(f"y0 must be a tensor or a tuple of tensors, got {type(y0).__name__}")
    if not (y0.is_floating_point() or y0.is_complex()):
        raise SolverError(f"y0 must be a floating-point or complex tensor, got {y0.dtype}")
    return y0


def times_tensor(items: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A sequence of times as a 1-D tensor; one holding a tensor that requires grad (a learned time) keeps its
    graph."""
    if any(isinstance(x, torch.Tensor) and x.requires_grad for x in items):
        return torch.stack([x.reshape(()).to(device, dtype) if isinstance(x, torch.Tensor)
                            else torch.tensor(float(x), dtype=dtype, device=device) for x in items])
    return torch.tensor([float(x) for x in items], dtype=dtype, device=device)


def check_times(t, y0: torch.Tensor) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        tt = t
        if not tt.is_floating_point():
            raise SolverError(f"t must be a floating-point tensor, got {tt.dtype}")
    else:
        try:
            tt = times_tensor(list(t), torch.float64, y0.device)
        except (TypeError, ValueError, RuntimeError):
            raise SolverError("t must be a 1-D tensor or sequence of numbers") from None
    if tt.dim() != 1 or len(tt) == 0:
        raise SolverError(f"t must be one-dimensional and non-empty, got shape {tuple(tt.shape)}")
    if tt.device != y0.device:
        tt = tt.to(y0.device)
    if not torch.isfinite(tt).all():
        raise SolverError("t must hold finite times")
    if len(tt) > 1:
        d = tt[1:] - tt[:-1]
        if not ((d > 0).all() or (d < 0).all()):
            raise SolverError("t must be strictly increasing or strictly decreasing")
    return tt
