"""ODE integration behind torchdiffeq's interface, with two interchangeable backends.

``odeint(func, y0, t, rtol, atol, method, options)`` and ``odeint_adjoint(...)`` return the solution at the
times ``t`` with shape ``(len(t), *y0.shape)`` and keep torchdiffeq's contract (see ``odeint``).
``backend="native"`` uses odenet's own Runge-Kutta engine (``odenet.ode.native``); ``backend="torchdiffeq"``
the reference library. Methods the native engine lacks are delegated to torchdiffeq automatically.
Function evaluations are counted by the function itself (see ``odenet.model.ODEFunc.nfe``).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

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


_NATIVE_OPTIONS = ("step_size", "first_step", "max_num_steps")


def odeint(func: Callable, y0: Union[torch.Tensor, Tuple[torch.Tensor, ...]], t: Union[Sequence[float], torch.Tensor],
           rtol: float = 1e-7, atol: float = 1e-9, method: Optional[str] = None, options: Optional[dict] = None, *,
           step_size: Optional[float] = None, adjoint: bool = False, adjoint_params: Optional[Sequence] = None,
           seminorm: bool = False, backend: str = "native", max_steps: Optional[int] = None,
           vjp: Optional[Callable] = None) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """Integrate ``dy/dt = func(t, y)`` and return ``y`` at each time of ``t``: shape ``(len(t), *y0.shape)``.

    torchdiffeq's contract: the same positional arguments and defaults (``rtol=1e-7, atol=1e-9``, dopri5),
    ``func(t, y)`` receives ``t`` as a 0-d tensor of ``y``'s real dtype, ``t`` may be increasing or decreasing,
    ``y0`` may be a tuple of tensors (the result is then a tuple), complex states work, ``func``'s output is cast
    to ``y``'s dtype, and gradients flow to ``y0``, to ``func``'s parameters and to ``t`` (``t.requires_grad``:
    the exact ODE's gradient, ``dL/dt_i = <dL/dy_i, f(t_i, y_i)>``, accurate to the solver's tolerance, at one
    evaluation of ``func`` per output time). Adaptive methods return many output times by dense output, at the
    NFE of a two-time solve. Anything the native engine does not support raises a one-line ``SolverError``.

    ``options``: ``step_size`` (fixed-step methods; without it they step on ``t`` itself), ``first_step``
    (adaptive), ``max_num_steps`` (default unlimited). ``adjoint=True`` computes gradients with the continuous
    adjoint method (memory flat in the number of steps), like ``torchdiffeq.odeint_adjoint``; ``adjoint_params``
    are the tensors it differentiates (default: ``func.parameters()``; ones without ``requires_grad`` are left
    out). ``seminorm`` leaves the parameter adjoint out of the backward error norm (Kidger et al. 2021); ``vjp``
    an optional fused ``vjp(t, z, a) -> (f, a df/dz, flat a df/dtheta)`` for the native adjoint.
    ``backend="torchdiffeq"`` runs torchdiffeq itself; methods the native engine lacks go there automatically.
    """
    method = method or "dopri5"
    options = dict(options or {})
    if step_size is not None:
        options["step_size"] = step_size
    if max_steps is not None:
        options["max_num_steps"] = max_steps
    which = resolve_backend(method, backend)
    if which == "torchdiffeq":
        return _odeint_torchdiffeq(func, y0, t, rtol, atol, method, options, adjoint, seminorm, adjoint_params)
    if isinstance(y0, (tuple, list)):
        return _odeint_tuple(func, tuple(y0), t, rtol, atol, method, options, adjoint=adjoint,
                             adjoint_params=adjoint_params, seminorm=seminorm)
    unknown = sorted(set(options) - set(_NATIVE_OPTIONS))
    if unknown:
        raise SolverError(f"option(s) {', '.join(unknown)} not supported by the native engine (it takes "
                          f"{', '.join(_NATIVE_OPTIONS)}); use backend='torchdiffeq'")
    y0 = _check_state(y0)
    tt = _check_times(t, y0)
    rtol, atol = _check_tol("rtol", rtol), _check_tol("atol", atol)
    tab = TABLEAUS[method]
    h = options.get("step_size")
    if h is not None and not tab.adaptive and not (_finite_number(h) and h > 0):
        raise SolverError(f"step_size must be a positive finite number, got {h!r}")
    first = options.get("first_step")
    if first is not None and not (_finite_number(first) and first > 0):
        raise SolverError(f"first_step must be a positive finite number, got {first!r}")
    n_max = options.get("max_num_steps")
    if n_max is not None and (not isinstance(n_max, int) or isinstance(n_max, bool) or n_max < 1):
        raise SolverError(f"max_num_steps must be a positive integer, got {n_max!r}")
    if len(tt) == 1:
        return y0.unsqueeze(0)
    if adjoint_params is None:
        adjoint_params = list(func.parameters()) if isinstance(func, torch.nn.Module) else []
    params = [p for p in adjoint_params if isinstance(p, torch.Tensor) and p.requires_grad]
    if adjoint and y0.is_complex():
        raise SolverError("complex states with adjoint=True are not supported by the native engine; "
                          "use adjoint=False or backend='torchdiffeq'")

    f = _CastFunc(func, y0)
    ts = [float(x) for x in tt.detach().tolist()]
    reverse = ts[1] < ts[0]
    core_f = _ReversedFunc(f) if reverse else f
    core_ts = [-x for x in ts] if reverse else ts
    kw = dict(rtol=rtol, atol=atol, step_size=None if tab.adaptive else h, first_step=first if tab.adaptive else None,
              max_steps=n_max, t_dtype=tt.dtype)
    t_grad = tt.requires_grad and torch.is_grad_enabled()
    y_start = _StartTime.apply(y0, tt[0], f) if t_grad else y0
    if adjoint and torch.is_grad_enabled() and (y_start.requires_grad or params):
        core_vjp = vjp if not reverse or vjp is None else _reversed_vjp(vjp)
        ys = odeint_adjoint_native(core_f, y_start, core_ts, tab, params, vjp=core_vjp, seminorm=seminorm, **kw)
    else:
        ys = torch.stack(solve(core_f, y_start, core_ts, tab, **kw))
    return _OutputTimes.apply(ys, tt, f) if t_grad else ys


def odeint_adjoint(func: Callable, y0, t, rtol: float = 1e-7, atol: float = 1e-9, method: Optional[str] = None,
                   options: Optional[dict] = None, *, adjoint_params: Optional[Sequence] = None, **kw):
    """``odeint`` with ``adjoint=True``: torchdiffeq's ``odeint_adjoint`` signature."""
    return odeint(func, y0, t, rtol, atol, method, options, adjoint=True, adjoint_params=adjoint_params, **kw)


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_state(y0) -> torch.Tensor:
    if not isinstance(y0, torch.Tensor):
        raise SolverError(f"y0 must be a tensor or a tuple of tensors, got {type(y0).__name__}")
    if not (y0.is_floating_point() or y0.is_complex()):
        raise SolverError(f"y0 must be a floating-point or complex tensor, got {y0.dtype}")
    return y0


def _check_times(t, y0: torch.Tensor) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        tt = t
        if not tt.is_floating_point():
            raise SolverError(f"t must be a floating-point tensor, got {tt.dtype}")
    else:
        try:
            tt = torch.tensor([float(x) for x in t], dtype=torch.float64)
        except (TypeError, ValueError):
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


def _check_tol(name: str, v) -> float:
    if isinstance(v, torch.Tensor):
        if v.requires_grad:
            raise SolverError(f"{name} cannot require gradient")
        if v.numel() != 1:
            raise SolverError(f"{name} must be a scalar for the native engine (per-component tolerances: "
                              "backend='torchdiffeq')")
        v = float(v)
    if not _finite_number(v) or v < 0:
        raise SolverError(f"{name} must be a finite number >= 0, got {v!r}")
    return float(v)


class _CastFunc:
    """``func`` with its output cast to the state's dtype (torchdiffeq's rule) and its shape checked."""

    def __init__(self, func: Callable, y0: torch.Tensor):
        self.func, self.dtype, self.shape = func, y0.dtype, y0.shape

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.func(t, y)
        if not isinstance(out, torch.Tensor):
            raise SolverError(f"func must return a tensor, got {type(out).__name__}")
        if out.shape != y.shape:
            raise SolverError(f"func returned shape {tuple(out.shape)} for a state of shape {tuple(y.shape)}")
        return out if out.dtype == self.dtype else out.to(self.dtype)


class _ReversedFunc:
    """``s -> -func(-s, y)``: integrating in ``s = -t`` runs ``t`` backwards."""

    def __init__(self, func: Callable):
        self.func = func

    def __call__(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.func(-s, y)


def _reversed_vjp(vjp: Callable) -> Callable:
    def rvjp(s, z, a):
        fz, gz, gp = vjp(-s, z, a)
        return -fz, -gz, -gp

    return rvjp


class _StartTime(torch.autograd.Function):
    """Identity on ``y0`` whose backward adds ``dL/dt0 = -<a(t0), f(t0, y0)>`` (``a``: the adjoint at ``t0``)."""

    @staticmethod
    def forward(ctx, y0, t0, func):  # type: ignore[override]
        ctx.func = func
        ctx.save_for_backward(y0, t0)
        return y0.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        y0, t0 = ctx.saved_tensors
        with torch.no_grad():
            f0 = ctx.func(t0.to(y0.real.dtype if y0.is_complex() else y0.dtype), y0)
            gt0 = -(g.conj() * f0).real.sum() if g.is_complex() else -(g * f0).sum()
        return g, gt0.to(t0.dtype).reshape(t0.shape), None


class _OutputTimes(torch.autograd.Function):
    """Identity on the solution whose backward gives ``dL/dt_i = <dL/dy_i, f(t_i, y_i)>``.

    With ``_StartTime`` this is the gradient of the exact ODE solution with respect to every time in ``t``
    (the ``i = 0`` term cancels the part of ``_StartTime``'s that belongs to the output ``y(t_0) = y0``).
    """

    @staticmethod
    def forward(ctx, ys, t, func):  # type: ignore[override]
        ctx.func = func
        ctx.save_for_backward(ys, t)
        return ys.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        ys, t = ctx.saved_tensors
        real = ys.real.dtype if ys.is_complex() else ys.dtype
        with torch.no_grad():
            gt = []
            for i in range(len(t)):
                fi = ctx.func(t[i].to(real), ys[i])
                gt.append((g[i].conj() * fi).real.sum() if g.is_complex() else (g[i] * fi).sum())
        return g, torch.stack(gt).to(t.dtype), None


def _odeint_tuple(func, y0s, t, rtol, atol, method, options, **kw):
    """Tuple states: integrate the concatenation, hand ``func`` the parts, return a tuple of solutions."""
    if not y0s or not all(isinstance(y, torch.Tensor) for y in y0s):
        raise SolverError("a tuple y0 must hold tensors")
    dtypes = {y.dtype for y in y0s}
    if len(dtypes) > 1:
        raise SolverError(f"the tensors of a tuple y0 must share one dtype, got {sorted(map(str, dtypes))}")
    for y in y0s:
        _check_state(y)
    shapes = [y.shape for y in y0s]
    sizes = [y.numel() for y in y0s]
    if kw.get("adjoint") and kw.get("adjoint_params") is None:
        kw["adjoint_params"] = list(func.parameters()) if isinstance(func, torch.nn.Module) else []

    def flat_func(t_, y):
        parts = tuple(p.view(s) for p, s in zip(torch.split(y, sizes), shapes))
        out = func(t_, parts)
        if not isinstance(out, (tuple, list)) or len(out) != len(shapes):
            raise SolverError(f"func must return a tuple of {len(shapes)} tensors for a tuple state")
        return torch.cat([o.to(y.dtype).reshape(-1) for o in out])

    ys = odeint(flat_func, torch.cat([y.reshape(-1) for y in y0s]), t, rtol, atol, method, options, **kw)
    return tuple(p.reshape(len(ys), *s) for p, s in zip(torch.split(ys, sizes, dim=1), shapes))


def _odeint_torchdiffeq(func, y0, t, rtol, atol, method, options, adjoint, seminorm, adjoint_params):
    import torchdiffeq

    if not isinstance(t, torch.Tensor):
        like = y0[0] if isinstance(y0, (tuple, list)) else y0
        t = torch.tensor([float(x) for x in t], dtype=torch.float64 if like.dtype == torch.float64 else torch.float32,
                         device=like.device)
    options = dict(options)
    if is_adaptive(method):
        options.pop("step_size", None)  # the fixed-step setting; adaptive solvers estimate their first step
    try:
        if adjoint:
            if not isinstance(func, torch.nn.Module):
                raise SolverError("the torchdiffeq adjoint needs func to be a torch.nn.Module")
            adj_opts = {"norm": "seminorm"} if seminorm else None
            params = None if adjoint_params is None else tuple(p for p in adjoint_params if p.requires_grad)
            return torchdiffeq.odeint_adjoint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options,
                                              adjoint_options=adj_opts, adjoint_params=params)
        return torchdiffeq.odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options)
    except (AssertionError, ValueError, TypeError) as e:  # torchdiffeq signals bad input and underflow this way
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SolverError(f"solver {method} (torchdiffeq): {first}") from None


__all__ = ["odeint", "odeint_adjoint", "solve", "BACKENDS", "NATIVE_METHODS", "TABLEAUS", "is_adaptive",
           "resolve_backend", "torchdiffeq_methods"]
