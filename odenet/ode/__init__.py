"""ODE integration: odenet's own Runge-Kutta engine, torchdiffeq's interface on it, torchdiffeq as a backend.

The face of the package. ``integrate(func, y0, t, Solver(...), energy=...)`` is odenet's engine with typed
settings (``Solver`` = method + ``StepController`` + ``AdjointSpec`` + backend) and the kinetic energy as an
output. ``odeint(func, y0, t, rtol, atol, method, options)`` and ``odeint_adjoint(...)`` keep torchdiffeq's
contract and return the solution at the times ``t``, shape ``(len(t), *y0.shape)``.

Layers, lowest first: ``tableaus`` (the methods as data) -> ``backends`` (which engine runs a method) ->
``settings`` (the types) -> ``native`` (the stepping loops) -> ``adjoint`` (how gradients flow: ``Backprop`` or
``Adjoint``) -> ``checks`` (states, times, parameters) -> ``torchdiffeq_backend`` -> ``integrate`` -> ``compat``
(torchdiffeq's signatures) -> this face.
"""
from .backends import BACKENDS, is_adaptive, resolve_backend, torchdiffeq_methods
from .compat import odeint, odeint_adjoint
from .integrate import Solution, integrate
from .native import Stats
from .settings import AdjointSpec, Solver, StepController
from .tableaus import FIXED_METHODS, NATIVE_METHODS, TABLEAUS, Tableau

__all__ = ["odeint", "odeint_adjoint", "integrate", "Solution", "Stats", "Solver", "StepController", "AdjointSpec",
           "Tableau", "TABLEAUS", "NATIVE_METHODS", "FIXED_METHODS", "BACKENDS", "is_adaptive", "resolve_backend",
           "torchdiffeq_methods"]
