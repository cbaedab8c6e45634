"""odenet's ``integrate``: check the problem, choose how gradients flow, and run it on the native engine (or
hand it to the torchdiffeq backend when the solver's engine is torchdiffeq).

``integrate(func, y0, t, solver, energy=...)`` takes the typed ``Solver`` (``odenet.ode.settings``). Shapes:
``y0`` any shape ``S`` (or a tuple of tensors), ``t`` of length ``T``; solutions ``(T, *S)``. torchdiffeq's own
signatures (``odeint``, ``odeint_adjoint``) are ``odenet.ode.compat``, built on this.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch.autograd.function import once_differentiable

from ..errors import SolverError
from . import torchdiffeq_backend
from .adjoint import Adjoint, Backprop, Problem, accepts_energy_cotangent
from .checks import adjoint_params, check_state, check_times
from .native import Stats
from .settings import AdjointSpec, Solver

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
        stats = Stats()
        return Solution(torchdiffeq_backend.run(func, y0, t, solver, stats=stats), None, stats)
    if isinstance(y0, (tuple, list)):
        if energy:
            raise SolverError("the kinetic energy needs a tensor state, not a tuple")
        return _tuple(func, tuple(y0), t, solver)
    y0 = check_state(y0)
    tt = check_times(t, y0)
    if energy and tt.requires_grad:
        raise SolverError("the kinetic energy with t.requires_grad is not supported")
    if len(tt) == 1 or y0.numel() == 0:  # nothing to integrate: y(t) = y0 at every time (an empty batch too)
        return _constant(y0, len(tt), energy)
    if not bool(torch.isfinite(y0).all()):
        raise SolverError("y0 holds NaN or infinite values")
    t_grad = tt.requires_grad and torch.is_grad_enabled()
    how, f, stats = _strategy(func, solver.adjoint, y0, t_grad, energy)
    ts = [float(x) for x in tt.detach().tolist()]
    core_f, core_ts = f, ts
    if ts[1] < ts[0]:  # backwards in time: integrate in s = -t
        core_f, core_ts = _ReversedFunc(f), [-x for x in ts]
        if isinstance(how, Adjoint) and how.vjp is not None:
            how.vjp = _reversed_vjp(how.vjp)
    y_start = _TimeGradient.apply(y0.unsqueeze(0), tt[:1], f, -1.0)[0] if t_grad else y0
    ys, e = how.solve(Problem(core_f, core_ts, solver.tableau, solver.controller, tt.dtype, energy, stats), y_start)
    return Solution(_TimeGradient.apply(ys, tt, f, 1.0) if t_grad else ys, e, stats)


def _strategy(func: Callable, spec: AdjointSpec, y0: torch.Tensor, t_grad: bool, energy: bool):
    """How gradients flow (``Adjoint`` or ``Backprop``), the field the engine calls (``func``'s hand-written
    forward where it vouches for it and no graph is built) and the ``Stats`` saying which ran."""
    params = adjoint_params(func, spec)
    fast = _fast_paths(func)
    stats = Stats()
    adjoint = spec.enabled and torch.is_grad_enabled() and (y0.requires_grad or t_grad or bool(params))
    _check_adjoint(spec, y0, adjoint)
    # the hand-written forward serves only where autograd is off during the solve (it checks that per call too)
    f = _CastFunc(fast[0] if fast is not None and (adjoint or not torch.is_grad_enabled()) else func, y0)
    stats.fast_forward = f.func is not func
    if adjoint:
        vjp = _fused_vjp(func, fast, spec, params, energy)
        stats.vjp = "fused" if vjp is not None else "autograd"
        return Adjoint(params, vjp, spec.seminorm), f, stats
    stats.vjp = "backprop" if torch.is_grad_enabled() and not spec.enabled else ""
    return Backprop(), f, stats


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
    when ``params`` are ``func.parameters()``, all trainable. With ``energy`` it must take the energy cotangent.
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
    if energy and not accepts_energy_cotangent(vjp):
        raise SolverError(f"{type(func).__name__}.vjp must take energy_cotangent=... for the kinetic energy's gradient "
                          "(or switch the fused vjp off)")
    return vjp


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


class _TimeGradient(torch.autograd.Function):
    """Identity on states ``ys (T, *S)`` at times ``t (T,)`` whose backward gives ``dL/dt_i = sign <dL/dy_i,
    f(t_i, y_i)>``.

    On the outputs (``sign`` +1) and, with ``sign`` -1, on the start ``y0`` (where ``dL/dy0`` is the adjoint
    ``a(t_0)``), this is the gradient of the exact ODE solution with respect to every time in ``t``: the start's
    term cancels the part of the first output's that belongs to ``y(t_0) = y0``.
    """

    @staticmethod
    def forward(ctx, ys, t, func, sign):  # type: ignore[override]
        ctx.func, ctx.sign = func, sign
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
        return g, (ctx.sign * torch.stack(gt)).to(t.dtype), None, None


def _reversed_vjp(vjp: Callable) -> Callable:
    """The vjp of ``s -> -f(-s, z)``; the energy cotangent flips with ``f``'s sign."""

    def rvjp(s, z, a, energy_cotangent=None):
        fz, gz, gp = vjp(-s, z, a) if energy_cotangent is None else vjp(-s, z, a, energy_cotangent=-energy_cotangent)
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
        check_state(y)
    shapes = [y.shape for y in y0s]
    sizes = [y.numel() for y in y0s]
    if solver.adjoint.enabled:  # the flattened function has none: differentiate func's own
        solver = dataclasses.replace(solver, adjoint=dataclasses.replace(solver.adjoint,
                                                                         params=adjoint_params(func, solver.adjoint)))

    def flat_func(t_, y):
        parts = tuple(p.view(s) for p, s in zip(torch.split(y, sizes), shapes))
        out = func(t_, parts)
        if not isinstance(out, (tuple, list)) or len(out) != len(shapes):
            raise SolverError(f"func must return a tuple of {len(shapes)} tensors for a tuple state")
        return torch.cat([o.to(y.dtype).reshape(-1) for o in out])

    sol = integrate(flat_func, torch.cat([y.reshape(-1) for y in y0s]), t, solver)
    ys = sol.ys
    return sol._replace(ys=tuple(p.reshape(len(ys), *s) for p, s in zip(torch.split(ys, sizes, dim=1), shapes)))
