"""Which engine runs a method: odenet's native one (the tableaus) or torchdiffeq (every method it has).

The only module of the ODE layer that reads torchdiffeq's method table (a private part of torchdiffeq).
"""
from __future__ import annotations

from ..errors import SolverError
from .tableaus import NATIVE_METHODS, TABLEAUS

BACKENDS = ("native", "torchdiffeq")


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
    """The backend that will actually run ``method`` (native falls back to torchdiffeq for methods it lacks)."""
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


__all__ = ["BACKENDS", "torchdiffeq_methods", "is_adaptive", "resolve_backend"]
