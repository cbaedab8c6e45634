"""ODE integration behind one small interface, with two interchangeable backends.

``odeint(func, y0, t, method=..., rtol=..., atol=..., step_size=..., adjoint=..., backend=...)`` returns
the solution at the times ``t`` with shape ``(len(t), *y0.shape)``, like torchdiffeq. ``backend="native"``
uses odenet's own Runge-Kutta engine (``odenet.ode.native``); ``backend="torchdiffeq"`` the reference
library. Methods the native engine lacks are delegated to torchdiffeq automatically.
Function evaluations are counted by the function itself (see ``odenet.model.ODEFunc.nfe``).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from ..errors import SolverError
from .adjoint import odeint_adjoint_native
from .native import solve
from .tableaus import TABLEAUS

BACKENDS = ("native", "torchdiffeq")
NATIVE_METHODS = tuple(TABLEAUS)


def torchdiffeq_methods() -> tuple:
    """Every method name torchdiffeq accepts."""
    from torchdiffeq._impl.odeint import SOLVERS

    return tuple(SOLVERS)


def is_adaptive(method: str) -> bool:
    """True for step-size-controlled methods (they use rtol/atol; fixed-step ones use step_size)."""
    if method in TABLEAUS:
        return TABLEAUS[method].adaptive
    from torchdiffeq._impl.odeint import SOLVERS
    from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver

    cls = SOLVERS.get(method)
    return cls is not None and issubclass(cls, RKAdaptiveStepsizeODESolver)


def resolve_backend(method: str, backend: str) -> str:
    """The backend that will actually run ``method`` (native falls back to torchdiffeq)."""
    if backend not in BACKENDS:
        raise SolverError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    known = set(NATIVE_METHODS) | set(torchdiffeq_methods())
    if method not in known:
        raise SolverError(f"unknown solver {method!r}; choose one of {', '.join(sorted(known))}")
    if backend == "native" and method not in TABLEAUS:
        return "torchdiffeq"
    if backend == "torchdiffeq" and method not in torchdiffeq_methods():
        raise SolverError(f"solver {method!r} exists only in the native backend")
    return backend


def odeint(func: Callable, y0: torch.Tensor, t: Union[Sequence[float], torch.Tensor], *,
           method: str = "dopri5", rtol: float = 1e-3, atol: float = 1e-4, step_size: Optional[float] = None,
           adjoint: bool = True, seminorm: bool = False, backend: str = "native", max_steps: int = 10_000,
           params: Optional[Sequence[torch.Tensor]] = None, vjp: Optional[Callable] = None) -> torch.Tensor:
    """Integrate ``dy/dt = func(t, y)`` and return ``y`` at each time of ``t``: shape ``(len(t), *y0.shape)``.

    ``adjoint=True`` computes gradients with the continuous adjoint method (memory flat in the number of
    steps); ``False`` backpropagates through the solver's operations. ``seminorm`` leaves the parameter
    adjoint out of the backward pass's error norm (Kidger et al. 2021). ``params`` are the tensors to
    differentiate in the adjoint pass (default: ``func.parameters()``); ``vjp`` an optional fused
    ``vjp(t, z, a) -> (f, a df/dz, flat a df/dtheta)`` for the native adjoint.
    ``step_size`` is the step of fixed-step methods (required there); for adaptive ones it sets the first
    step instead of estimating it.
    """
    ts = [float(x) for x in (t.tolist() if isinstance(t, torch.Tensor) else t)]
    if len(ts) < 2 or any(b <= a for a, b in zip(ts[:-1], ts[1:])):
        raise SolverError("t must hold at least two strictly increasing times")
    which = resolve_backend(method, backend)
    if params is None:
        params = [p for p in func.parameters() if p.requires_grad] if isinstance(func, torch.nn.Module) else []
    if which == "native":
        tab = TABLEAUS[method]
        kw = dict(rtol=rtol, atol=atol, step_size=step_size, max_steps=max_steps)
        if adjoint and torch.is_grad_enabled() and (y0.requires_grad or any(p.requires_grad for p in params)):
            return odeint_adjoint_native(func, y0, ts, tab, params, vjp=vjp, seminorm=seminorm, **kw)
        return torch.stack(solve(func, y0, ts, tab, **kw))
    return _odeint_torchdiffeq(func, y0, ts, method, rtol, atol, step_size, adjoint, seminorm, max_steps, params)


def _odeint_torchdiffeq(func, y0, ts, method, rtol, atol, step_size, adjoint, seminorm, max_steps, params):
    import torchdiffeq

    t = torch.tensor(ts, dtype=torch.float64 if y0.dtype == torch.float64 else torch.float32, device=y0.device)
    options = {}
    if is_adaptive(method):
        options["max_num_steps"] = max_steps
        if step_size:
            options["first_step"] = step_size
    elif step_size:
        options["step_size"] = step_size
    try:
        if adjoint:
            if not isinstance(func, torch.nn.Module):
                raise SolverError("the torchdiffeq adjoint needs func to be a torch.nn.Module")
            adj_opts = {"norm": "seminorm"} if seminorm else None
            return torchdiffeq.odeint_adjoint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options,
                                              adjoint_options=adj_opts, adjoint_params=tuple(params))
        return torchdiffeq.odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options)
    except AssertionError as e:  # torchdiffeq signals underflow / max steps with assertions
        raise SolverError(f"solver {method}: {e}") from None


__all__ = ["odeint", "solve", "BACKENDS", "NATIVE_METHODS", "TABLEAUS", "is_adaptive",
           "resolve_backend", "torchdiffeq_methods"]
