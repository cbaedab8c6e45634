"""The front end of the ODE layer: check the problem, then run it on the native engine or on torchdiffeq.

``integrate(func, y0, t, solver, energy=...)`` is the engine's entry point and takes the typed ``Solver``
(``odenet.ode.settings``); ``odeint``/``odeint_adjoint`` are torchdiffeq's signatures built on it. Shapes: ``y0``
any shape ``S`` (or a tuple of tensors), ``t`` of length ``T``; solutions ``(T, *S)``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch.autograd.function import once_differentiable

from ..errors import SolverError
from .adjoint import accepts_kinetic, odeint_adjoint_native
from .native import Stats, solve
from .settings import AdjointSpec, Solver, StepController, resolve_backend

State = Union[torch.Tensor, Tuple[torch.Tensor, ...]]
Times = Union[Sequence[float], torch.Tensor]


class Solution(NamedTuple):
    """What ``integrate`` returns: ``ys`` ``(T, *y0.shape)`` (a tuple for tuple states) and, when asked for,
    ``energy``: ``integral |f(z_b(t))|^2 dt`` per sample ``b`` of the state's first axis (shape ``y0.shape[:1]``)."""

    ys: State
    energy: Optional[torch.Tensor] = None
    stats: Optional[Stats] = None  # the native engine's counts (backward ones filled by backward()); None on torchdiffeq


def integrate(func: Callable, y0: State, t: Times, solver: Solver = Solver(), *, energy: bool = False) -> Solution:
    """Integrate ``dy/dt = func(t, y)`` under ``solver`` and return the states at the times ``t``.

    ``energy=True`` also returns the kinetic energy ``E_b = integral |f|^2 dt`` (Finlay et al. 2020), a
    differentiable output: put ``w * E.sum()`` in a loss and its gradient comes from the same adjoint pass (or
    from backpropagation through the solver). Native engine, tensor states, times without gradient.
    """
    if not isinstance(solver, Solver):
        raise SolverError(f"solver must be an odenet.ode.Solver, got {type(solver).__name__}")
    if energy:
        solver.check_energy()
    if solver.engine == "torchdiffeq":
        return Solution(_torchdiffeq(func, y0, t, solver))
    if isinstance(y0, (tuple, list)):
        if energy:
            raise SolverError("the kinetic energy needs a tensor state, not a tuple")
        return _tuple(func, tuple(y0), t, solver)
    y0 = _check_state(y0)
    tt = _check_times(t, y0)
    if energy and tt.requires_grad:
        raise SolverError("the kinetic energy with t.requires_grad is not supported")
    if len(tt) == 1 or y0.numel() == 0:  # nothing to integrate: y(t) = y0 at every time (an empty batch too)
        return _constant(y0, len(tt), energy)
    if not bool(torch.isfinite(y0).all()):
        raise SolverError("y0 holds NaN or infinite values")
    spec = solver.adjoint
    params = _params(func, spec)
    fast = _fast_paths(func)
    t_grad = tt.requires_grad and torch.is_grad_enabled()
    stats = Stats()
    adjoint = spec.enabled and torch.is_grad_enabled() and (y0.requires_grad or t_grad or bool(params))
    _check_adjoint(spec, y0, adjoint)
    # the hand-written forward serves only where autograd is off during the solve (it checks that per call too)
    f = _CastFunc(fast[0] if fast is not None and (adjoint or not torch.is_grad_enabled()) else func, y0)
    stats.fast_forward = f.func is not func
    ts = [float(x) for x in tt.detach().tolist()]
    reverse = ts[1] < ts[0]
    core_f = _ReversedFunc(f) if reverse else f
    core_ts = [-x for x in ts] if reverse else ts
    y_start = _StartTime.apply(y0, tt[0], f) if t_grad else y0
    if adjoint:
        vjp = _fused_vjp(func, fast, spec, params, energy)
        stats.vjp = "fused" if vjp is not None else "autograd"
        core_vjp = vjp if not reverse or vjp is None else _reversed_vjp(vjp)
        out = odeint_adjoint_native(core_f, y_start, core_ts, solver.tableau, solver.controller, params,
                                    vjp=core_vjp, seminorm=spec.seminorm, t_dtype=tt.dtype, energy=energy,
                                    stats=stats)
        ys, e = out if energy else (out, None)
    else:
        stats.vjp = "backprop" if torch.is_grad_enabled() and not spec.enabled else ""
        ys, e = solve(core_f, y_start, core_ts, solver.tableau, solver.controller, t_dtype=tt.dtype, energy=energy,
                      stats=stats)
        ys = torch.stack(ys)
    return Solution(_OutputTimes.apply(ys, tt, f) if t_grad else ys, e, stats)


def _constant(y0: torch.Tensor, n: int, energy: bool) -> Solution:
    """The solution when there is nothing to integrate: ``y0`` at each of the ``n`` times, zero energy."""
    real = y0.real.dtype if y0.is_complex() else y0.dtype
    return Solution(y0.unsqueeze(0).expand(n, *y0.shape).clone(),
                    y0.new_zeros(y0.shape[:1], dtype=real) if energy else None, Stats())


def _check_adjoint(spec: AdjointSpec, y0: torch.Tensor, active: bool) -> None:
    """What the native adjoint cannot do, refused in one line: complex states, and (when it will run) torch.func
    transforms, whose wrapped tensors its backward pass cannot take."""
    if spec.enabled and y0.is_complex():
        raise SolverError("complex states with adjoint gradients are not supported by the native engine; "
                          "use odeint (backprop through the solver) or backend='torchdiffeq'")
    if active and torch._C._functorch.peek_interpreter_stack() is not None:
        raise SolverError("torch.func transforms (grad, vmap, jacrev, ...) cannot run the native adjoint's backward "
                          "pass; use adjoint=False (backpropagation through the solver) or torch.autograd")


def odeint(func: Callable, y0: State, t: Times, rtol: float = 1e-7, atol: float = 1e-9, method: Optional[str] = None,
           options: Optional[dict] = None, *, event_fn: Optional[Callable] = None, backend: str = "native") -> State:
    """Integrate ``dy/dt = func(t, y)`` and return ``y`` at each time of ``t``: shape ``(len(t), *y0.shape)``.

    torchdiffeq's ``odeint``: the same arguments and defaults (``rtol=1e-7, atol=1e-9``, dopri5),
    ``func(t, y)`` receives ``t`` as a 0-d tensor of ``y``'s real dtype, ``t`` may be increasing or decreasing,
    ``y0`` may be a tuple of tensors (the result is then a tuple), complex states work, ``func``'s output is cast
    to ``y``'s dtype, and gradients flow to ``y0``, to ``func``'s parameters and to ``t`` (``t.requires_grad``:
    the exact ODE's gradient, ``dL/dt_i = <dL/dy_i, f(t_i, y_i)>``, accurate to the solver's tolerance, at one
    evaluation of ``func`` per output time). Adaptive methods return many output times by dense output, at the
    NFE of a two-time solve. ``options``: ``step_size`` (fixed-step methods; without it they step on ``t``
    itself), ``first_step`` (adaptive), ``max_num_steps`` (default unlimited). ``backend="torchdiffeq"`` runs
    torchdiffeq itself (and takes its every option and ``event_fn``); methods the native engine lacks go there
    automatically. Anything the native engine does not support raises a one-line ``SolverError``.
    """
    solver = _solver(method, rtol, atol, options, AdjointSpec(enabled=False), backend, event_fn)
    if solver.engine == "torchdiffeq":
        return _torchdiffeq(func, y0, t, solver, (rtol, atol), options, event_fn)
    return integrate(func, y0, t, solver).ys


def odeint_adjoint(func: Callable, y0: State, t: Times, rtol: float = 1e-7, atol: float = 1e-9,
                   method: Optional[str] = None, options: Optional[dict] = None, *, event_fn: Optional[Callable] = None,
                   adjoint_rtol: Optional[float] = None, adjoint_atol: Optional[float] = None,
                   adjoint_method: Optional[str] = None, adjoint_options: Optional[dict] = None,
                   adjoint_params: Optional[Sequence[torch.Tensor]] = None, backend: str = "native") -> State:
    """``odeint`` whose gradients come from the continuous adjoint (memory flat in the number of steps):
    torchdiffeq's ``odeint_adjoint``. ``adjoint_params``: the tensors to differentiate (default
    ``func.parameters()``; ones without ``requires_grad`` are left out); ``adjoint_options={"norm": "seminorm"}``
    leaves the parameter adjoint out of the backward error norm (Kidger et al. 2021). When ``func`` has a method
    ``vjp(t, z, a, kinetic=None) -> (f, a df/dz, flat a df/dtheta)`` and ``adjoint_params`` are its parameters,
    the native adjoint calls it instead of autograd. The native engine solves backward with the forward's
    method and tolerances: other ``adjoint_rtol/atol/method`` need ``backend="torchdiffeq"``.
    """
    if adjoint_params is None and not isinstance(func, torch.nn.Module):
        raise SolverError(_NO_PARAMS)  # torchdiffeq's rule, on either backend
    adj = dict(adjoint_options or {})
    native = resolve_backend(method or "dopri5", backend) == "native"
    if native:
        if any(v is not None and v != w for v, w in ((adjoint_rtol, rtol), (adjoint_atol, atol),
                                                     (adjoint_method, method or "dopri5"))):
            raise SolverError("the native adjoint solves backward with the forward's method and tolerances; "
                              "for other adjoint_rtol/adjoint_atol/adjoint_method use backend='torchdiffeq'")
        norm = adj.pop("norm", None)
        if norm not in (None, "seminorm") or adj:
            raise SolverError(f"adjoint_options {adjoint_options!r} not supported by the native engine (it takes "
                              "{'norm': 'seminorm'}); use backend='torchdiffeq'")
        seminorm = norm == "seminorm"
    else:
        seminorm = False  # torchdiffeq reads adjoint_options itself
    spec = AdjointSpec(enabled=True, seminorm=seminorm, params=adjoint_params)
    solver = _solver(method, rtol, atol, options, spec, backend, event_fn)
    if solver.engine == "torchdiffeq":
        return _torchdiffeq(func, y0, t, solver, (rtol, atol), options, event_fn, dict(
            adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol, adjoint_method=adjoint_method,
            adjoint_options=adjoint_options))
    return integrate(func, y0, t, solver).ys


_NO_PARAMS = ("under the adjoint a func that is not a torch.nn.Module needs its tensors given as adjoint_params "
              "(() if it has none), or they get no gradient; or make func a Module")
_NATIVE_OPTIONS = {"step_size": "step_size", "first_step": "first_step", "max_num_steps": "max_steps"}


def _applicable(options: dict, adaptive: bool) -> dict:
    """``options`` less those the kind of method ignores (torchdiffeq's rule): adaptive methods estimate their
    steps (no ``step_size``); fixed-step methods have no first step or step limit."""
    ignored = ("step_size",) if adaptive else ("first_step", "max_num_steps")
    return {k: v for k, v in options.items() if k not in ignored}


def _solver(method, rtol, atol, options, spec: AdjointSpec, backend: str, event_fn) -> Solver:
    """The ``Solver`` that torchdiffeq's arguments describe (options checked for the native engine)."""
    solver = Solver(method=method or "dopri5", adjoint=spec, backend=backend)
    if solver.engine == "torchdiffeq":
        return solver
    options = dict(options or {})
    unknown = sorted(set(options) - set(_NATIVE_OPTIONS))
    if unknown:
        raise SolverError(f"option(s) {', '.join(unknown)} not supported by the native engine (it takes "
                          f"{', '.join(_NATIVE_OPTIONS)}); use backend='torchdiffeq'")
    if event_fn is not None:
        raise SolverError("event_fn is not supported by the native engine; use backend='torchdiffeq'")
    settings = {_NATIVE_OPTIONS[k]: v for k, v in _applicable(options, solver.adaptive).items()}
    try:
        controller = StepController(rtol=rtol, atol=atol, **settings)
    except SolverError as e:  # name the option as the caller wrote it
        raise SolverError(str(e).replace("max_steps", "max_num_steps")) from None
    return dataclasses.replace(solver, controller=controller)


def _params(func: Callable, spec: AdjointSpec) -> list:
    """The tensors the adjoint differentiates: ``spec.params`` or ``func``'s parameters, those requiring grad.

    torchdiffeq's rule: a ``func`` that is not an ``nn.Module`` has no parameters to find, so under the adjoint it
    needs them given (``adjoint_params``, ``()`` for none) or a closure's tensors would silently get no gradient.
    """
    given = spec.params
    if given is None:
        if not isinstance(func, torch.nn.Module):
            if spec.enabled and torch.is_grad_enabled():
                raise SolverError(_NO_PARAMS)
            return []
        given = list(func.parameters())
    bad = [type(p).__name__ for p in given if not isinstance(p, torch.Tensor)]
    if bad:
        raise SolverError(f"adjoint_params must be tensors, got {bad[0]}")
    return [p for p in given if p.requires_grad]


def _fast_paths(func: Callable):
    """``func.fast_paths()``: a ``(forward, vjp)`` pair it vouches for in this solve, or None."""
    fp = getattr(func, "fast_paths", None)
    return fp() if callable(fp) else None


def _defines_after(cls: type, name: str, other: str) -> bool:
    """Whether ``cls``'s ``name`` comes from the class that defines its ``other`` or from a subclass of it."""
    owner = next((c for c in cls.__mro__ if name in c.__dict__), None)
    other_owner = next((c for c in cls.__mro__ if other in c.__dict__), None)
    return owner is not None and other_owner is not None and issubclass(owner, other_owner)


def _fused_vjp(func: Callable, fast, spec: AdjointSpec, params: list, energy: bool):
    """The vjp to call instead of autograd, or None (autograd).

    ``fast`` (from ``func.fast_paths()``) when ``func`` offers fast paths; else ``func.vjp`` when ``func`` is a
    Module whose ``vjp`` is defined where its ``forward`` is or below (a subclass that overrides ``forward`` does
    not inherit a ``vjp`` written for another function). Either returns every parameter's gradient: usable only
    when ``params`` are ``func.parameters()``, all trainable. With ``energy`` it must take the kinetic cotangent.
    """
    if not spec.fused_vjp or not isinstance(func, torch.nn.Module):
        return None
    if callable(getattr(func, "fast_paths", None)):
        vjp = fast[1] if fast is not None else None
    else:
        vjp = getattr(func, "vjp", None)
        if not callable(vjp) or not _defines_after(type(func), "vjp", "forward"):
            return None
    if vjp is None:
        return None
    own = list(func.parameters())
    if len(own) != len(params) or any(p is not q for p, q in zip(own, params)):
        return None
    if energy and not accepts_kinetic(vjp):
        raise SolverError(f"{type(func).__name__}.vjp must take kinetic=... for the kinetic energy's gradient "
                          "(or switch the fused vjp off)")
    return vjp


def _check_state(y0) -> torch.Tensor:
    if not isinstance(y0, torch.Tensor):
        raise SolverError(f"y0 must be a tensor or a tuple of tensors, got {type(y0).__name__}")
    if not (y0.is_floating_point() or y0.is_complex()):
        raise SolverError(f"y0 must be a floating-point or complex tensor, got {y0.dtype}")
    return y0


def _times_tensor(items: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A sequence of times as a 1-D tensor; one holding a tensor that requires grad (a learned time) keeps its
    graph."""
    if any(isinstance(x, torch.Tensor) and x.requires_grad for x in items):
        return torch.stack([x.reshape(()).to(device, dtype) if isinstance(x, torch.Tensor)
                            else torch.tensor(float(x), dtype=dtype, device=device) for x in items])
    return torch.tensor([float(x) for x in items], dtype=dtype, device=device)


def _check_times(t, y0: torch.Tensor) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        tt = t
        if not tt.is_floating_point():
            raise SolverError(f"t must be a floating-point tensor, got {tt.dtype}")
    else:
        try:
            tt = _times_tensor(list(t), torch.float64, y0.device)
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


class _StartTime(torch.autograd.Function):
    """Identity on ``y0`` whose backward adds ``dL/dt0 = -<a(t0), f(t0, y0)>`` (``a``: the adjoint at ``t0``)."""

    @staticmethod
    def forward(ctx, y0, t0, func):  # type: ignore[override]
        ctx.func = func
        ctx.save_for_backward(y0, t0)
        return y0.clone()

    @staticmethod
    @once_differentiable  # second derivatives through the solve are not computed: torch refuses them in one line
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
    @once_differentiable  # second derivatives through the solve are not computed: torch refuses them in one line
    def backward(ctx, g):  # type: ignore[override]
        ys, t = ctx.saved_tensors
        real = ys.real.dtype if ys.is_complex() else ys.dtype
        with torch.no_grad():
            gt = []
            for i in range(len(t)):
                fi = ctx.func(t[i].to(real), ys[i])
                gt.append((g[i].conj() * fi).real.sum() if g.is_complex() else (g[i] * fi).sum())
        return g, torch.stack(gt).to(t.dtype), None


def _reversed_vjp(vjp: Callable) -> Callable:
    """The vjp of ``s -> -f(-s, z)``; the kinetic cotangent flips with ``f``'s sign."""

    def rvjp(s, z, a, kinetic=None):
        fz, gz, gp = vjp(-s, z, a) if kinetic is None else vjp(-s, z, a, kinetic=-kinetic)
        return -fz, -gz, -gp

    return rvjp


def _tuple(func: Callable, y0s: tuple, t: Times, solver: Solver) -> Solution:
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
    if solver.adjoint.enabled:  # the flattened function has none: differentiate func's own
        solver = dataclasses.replace(solver, adjoint=dataclasses.replace(solver.adjoint,
                                                                         params=_params(func, solver.adjoint)))

    def flat_func(t_, y):
        parts = tuple(p.view(s) for p, s in zip(torch.split(y, sizes), shapes))
        out = func(t_, parts)
        if not isinstance(out, (tuple, list)) or len(out) != len(shapes):
            raise SolverError(f"func must return a tuple of {len(shapes)} tensors for a tuple state")
        return torch.cat([o.to(y.dtype).reshape(-1) for o in out])

    sol = integrate(flat_func, torch.cat([y.reshape(-1) for y in y0s]), t, solver)
    ys = sol.ys
    return sol._replace(ys=tuple(p.reshape(len(ys), *s) for p, s in zip(torch.split(ys, sizes, dim=1), shapes)))


def _torchdiffeq(func: Callable, y0: State, t: Times, solver: Solver, tol: Optional[tuple] = None,
                 options: Optional[dict] = None, event_fn: Optional[Callable] = None, adjoint_kw: Optional[dict] = None):
    """Run torchdiffeq itself. ``tol`` and ``options`` as ``odeint`` was given them (torchdiffeq checks them: they
    may be per-component tensors), else built from ``solver.controller``."""
    import torchdiffeq

    if not isinstance(t, torch.Tensor):
        like = y0[0] if isinstance(y0, (tuple, list)) else y0
        t = _times_tensor(list(t), torch.float64 if like.dtype == torch.float64 else torch.float32, like.device)
    c, spec = solver.controller, solver.adjoint
    if options is None:
        options = {"step_size": c.step_size, "first_step": c.first_step, "max_num_steps": c.max_steps}
        options = {k: v for k, v in options.items() if v is not None}
    options = _applicable(options, solver.adaptive)
    rtol, atol = tol if tol is not None else (c.rtol, c.atol)
    kw = dict(rtol=rtol, atol=atol, method=solver.method, options=options)
    if event_fn is not None:
        kw["event_fn"] = event_fn
    try:
        if spec.enabled:
            if spec.params is None and not isinstance(func, torch.nn.Module):
                raise SolverError(_NO_PARAMS)
            extra = {k: v for k, v in (adjoint_kw or {}).items() if v is not None}
            if spec.seminorm and "adjoint_options" not in extra:
                extra["adjoint_options"] = {"norm": "seminorm"}
            params = None if spec.params is None else tuple(p for p in spec.params if p.requires_grad)
            return torchdiffeq.odeint_adjoint(func, y0, t, adjoint_params=params, **kw, **extra)
        return torchdiffeq.odeint(func, y0, t, **kw)
    except (AssertionError, ValueError, TypeError) as e:  # torchdiffeq signals bad input and underflow this way
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SolverError(f"solver {solver.method} (torchdiffeq): {first}") from None
