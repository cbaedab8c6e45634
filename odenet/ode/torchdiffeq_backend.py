"""torchdiffeq as a backend: run a problem on ``torchdiffeq.odeint`` / ``odeint_adjoint`` itself.

Methods the native engine lacks run here, and any method with ``backend="torchdiffeq"``. Evaluations of ``func``
are counted into the same ``Stats`` as the native engine's (forward until the solve returns, backward after).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..errors import SolverError
from .checks import NO_PARAMS, times_tensor
from .native import Stats
from .settings import Solver


def applicable(options: dict, adaptive: bool) -> dict:
    """``options`` less those the kind of method ignores (torchdiffeq's rule): adaptive methods estimate their
    steps (no ``step_size``); fixed-step methods have no first step or step limit."""
    ignored = ("step_size",) if adaptive else ("first_step", "max_num_steps")
    return {k: v for k, v in options.items() if k not in ignored}


class _Counted:
    """``func`` counting its calls into ``stats``: forward ones until ``backward`` is set, backward ones after."""

    def __init__(self, func: Callable, stats: Stats):
        self.func, self.stats, self.backward = func, stats, False

    def __call__(self, t, y):
        self.stats.add(self.backward, 1)
        return self.func(t, y)


def run(func: Callable, y0, t, solver: Solver, tol: Optional[tuple] = None, options: Optional[dict] = None,
        event_fn: Optional[Callable] = None, adjoint_kw: Optional[dict] = None, stats: Optional[Stats] = None):
    """Run torchdiffeq itself. ``tol`` and ``options`` as ``odeint`` was given them (torchdiffeq checks them: they
    may be per-component tensors), else built from ``solver.controller``; ``stats``: where to count evaluations."""
    import torchdiffeq

    if not isinstance(t, torch.Tensor):
        like = y0[0] if isinstance(y0, (tuple, list)) else y0
        t = times_tensor(list(t), torch.float64 if like.dtype == torch.float64 else torch.float32, like.device)
    c, spec = solver.controller, solver.adjoint
    if options is None:
        options = {"step_size": c.step_size, "first_step": c.first_step, "max_num_steps": c.max_steps}
        options = {k: v for k, v in options.items() if v is not None}
    options = applicable(options, solver.adaptive)
    rtol, atol = tol if tol is not None else (c.rtol, c.atol)
    kw = dict(rtol=rtol, atol=atol, method=solver.method, options=options)
    if event_fn is not None:
        kw["event_fn"] = event_fn
    counted = _Counted(func, stats) if stats is not None else func
    try:
        if spec.enabled:
            if spec.params is None and not isinstance(func, torch.nn.Module):
                raise SolverError(NO_PARAMS)
            extra = {k: v for k, v in (adjoint_kw or {}).items() if v is not None}
            if spec.seminorm and "adjoint_options" not in extra:
                extra["adjoint_options"] = {"norm": "seminorm"}
            given = func.parameters() if spec.params is None else spec.params
            params = tuple(p for p in given if p.requires_grad)
            out = torchdiffeq.odeint_adjoint(counted, y0, t, adjoint_params=params, **kw, **extra)
        else:
            out = torchdiffeq.odeint(counted, y0, t, **kw)
        if stats is not None:
            counted.backward = True
        return out
    except (AssertionError, ValueError, TypeError) as e:  # torchdiffeq signals bad input and underflow this way
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SolverError(f"solver {solver.method} (torchdiffeq): {first}") from None
