"""torchdiffeq's interface on odenet's engine: ``odeint`` and ``odeint_adjoint`` with torchdiffeq's signatures,
defaults and rules, translated into a ``Solver`` and run by ``integrate`` (or by torchdiffeq itself, for what the
native engine does not do)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import torch

from ..errors import SolverError
from . import torchdiffeq_backend
from .backends import resolve_backend
from .checks import NO_PARAMS
from .integrate import State, Times, integrate
from .settings import AdjointSpec, Solver, StepController


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
        return torchdiffeq_backend.run(func, y0, t, solver, (rtol, atol), options, event_fn)
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
    ``vjp(t, z, a, energy_cotangent=None) -> (f, a df/dz, flat a df/dtheta)`` and ``adjoint_params`` are its parameters,
    the native adjoint calls it instead of autograd. The native engine solves backward with the forward's
    method and tolerances: other ``adjoint_rtol/atol/method`` need ``backend="torchdiffeq"``.
    """
    if adjoint_params is None and not isinstance(func, torch.nn.Module):
        raise SolverError(NO_PARAMS)  # torchdiffeq's rule, on either backend
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
        return torchdiffeq_backend.run(func, y0, t, solver, (rtol, atol), options, event_fn, dict(
            adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol, adjoint_method=adjoint_method,
            adjoint_options=adjoint_options))
    return integrate(func, y0, t, solver).ys


_NATIVE_OPTIONS = {"step_size": "step_size", "first_step": "first_step", "max_num_steps": "max_steps"}


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
    settings = {_NATIVE_OPTIONS[k]: v for k, v in torchdiffeq_backend.applicable(options, solver.adaptive).items()}
    try:
        controller = StepController(rtol=rtol, atol=atol, **settings)
    except SolverError as e:  # name the option as the caller wrote it
        raise SolverError(str(e).replace("max_steps", "max_num_steps")) from None
    return dataclasses.replace(solver, controller=controller)


__all__ = ["odeint", "odeint_adjoint"]
