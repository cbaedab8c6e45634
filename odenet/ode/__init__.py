"""ODE integration: torchdiffeq's interface on odenet's own Runge-Kutta engine, with torchdiffeq as a backend.

The face of the package. ``odeint(func, y0, t, rtol, atol, method, options)`` and ``odeint_adjoint(...)`` keep
torchdiffeq's contract and return the solution at the times ``t``, shape ``(len(t), *y0.shape)``.
``integrate(func, y0, t, Solver(...), energy=...)`` is the same engine with typed settings
(``Solver`` = method + ``StepController`` + ``AdjointSpec`` + backend) and the kinetic energy as an output.

Layers: ``settings`` (the types) -> ``tableaus`` (the methods) -> ``native`` (the stepping loops) ->
``adjoint`` (the backward pass) -> ``frontend`` (checks, time reversal, tuples, torchdiffeq) -> this face.
"""
from .frontend import Solution, integrate, odeint, odeint_adjoint
from .native import Stats, solve
from .settings import (BACKENDS, FIXED_METHODS, NATIVE_METHODS, AdjointSpec, Solver, StepController, is_adaptive, resolve_backend,
                       torchdiffeq_methods)
from .tableaus import TABLEAUS, Tableau

__all__ = ["odeint", "odeint_adjoint", "integrate", "Solution", "Stats", "Solver", "StepController", "AdjointSpec",
           "Tableau", "TABLEAUS", "NATIVE_METHODS", "FIXED_METHODS", "BACKENDS", "is_adaptive", "resolve_backend",
           "torchdiffeq_methods", "solve"]
