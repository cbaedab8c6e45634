"""How to solve, as typed immutable values: the step controller, the adjoint, and a ``Solver`` holding both.

``Config.ode_solver()`` builds a ``Solver`` once; ``ODEBlock`` holds it; ``odenet.ode.integrate`` takes it.
``odeint``/``odeint_adjoint`` (``odenet.ode.compat``) build the same objects from torchdiffeq's arguments. Every
value is checked where it is made, with a one-line ``SolverError``; a ``Solver`` resolves its engine then, once.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Tuple

import torch

from ..errors import SolverError
from .backends import BACKENDS, is_adaptive, resolve_backend
from .tableaus import TABLEAUS, Tableau

Norm = Callable[[torch.Tensor], torch.Tensor]

SAFETY, IFACTOR, DFACTOR = 0.9, 10.0, 0.2  # torchdiffeq's controller constants


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Root-mean-square of the moduli over all elements (torchdiffeq's default norm)."""
    return (x.abs() if x.is_complex() else x).pow(2).mean().sqrt()


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is half or bfloat16: error ratios such as err / 1e-4 overflow float16."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _number(name: str, v):
    """``v`` as a Python number: numpy scalars and one-element tensors without gradient are numbers too."""
    if isinstance(v, torch.Tensor):
        if v.requires_grad:
            raise SolverError(f"{name} cannot require gradient")
        if v.numel() != 1 or v.is_complex():
            raise SolverError(f"{name} must be a scalar for the native engine (per-component tolerances: "
                              "backend='torchdiffeq')")
        return v.item()
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return float(v)
    return v


def _positive(name: str, v) -> None:
    if v is not None and not (_finite_number(v) and v > 0):
        raise SolverError(f"{name} must be a positive finite number, got {v!r}")


@dataclass(frozen=True)
class StepController:
    """How steps are chosen: the error control of adaptive methods and the grid of fixed-step ones.

    Adaptive methods accept a step when ``norm(err / (atol + rtol * max(|y0|, |y1|))) <= 1``, start from
    ``first_step`` (None: Hairer's estimate) and stop with an error after ``max_steps`` (None: unlimited).
    Fixed-step methods step ``step_size`` (None: on the output times themselves); a grid of more than
    ``max_steps`` steps is refused before the first one.
    ``norm`` (None: RMS) measures the scaled error; the adjoint replaces it for its augmented state.
    Defaults are torchdiffeq's.
    """

    rtol: float = 1e-7
    atol: float = 1e-9
    step_size: Optional[float] = None
    first_step: Optional[float] = None
    max_steps: Optional[int] = None
    norm: Optional[Norm] = None

    def __post_init__(self) -> None:
        for name in ("rtol", "atol", "step_size", "first_step", "max_steps"):
            object.__setattr__(self, name, _number(name, getattr(self, name)))
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if not _finite_number(v) or v < 0:
                raise SolverError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.rtol == 0 and self.atol == 0:
            raise SolverError("rtol and atol cannot both be 0: no step would ever be accurate enough")
        _positive("step_size", self.step_size)
        _positive("first_step", self.first_step)
        n = self.max_steps
        if isinstance(n, float) and n.is_integer():
            object.__setattr__(self, "max_steps", int(n))
            n = self.max_steps
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise SolverError(f"max_steps must be a positive integer, got {n!r}")
        if self.norm is not None and not callable(self.norm):
            raise SolverError(f"norm must be a function of a tensor (None: RMS), got {self.norm!r}")

    def steps_on(self, t0: float, t1: float) -> int:
        """The number of steps of the fixed grid over ``[t0, t1]`` (before any of it is built)."""
        n = (t1 - t0) / self.step_size
        if not math.isfinite(n) or n > 2 ** 53:
            raise SolverError(f"a step size of {self.step_size!r} over [{t0:g}, {t1:g}] makes too many steps")
        return int(math.ceil(n))

    def measure(self, x: torch.Tensor) -> torch.Tensor:
        """The norm of ``x`` (RMS unless a ``norm`` was given)."""
        return (self.norm or rms_norm)(x)

    @torch.no_grad()
    def initial_step(self, func: Callable[[float, torch.Tensor], torch.Tensor], t0: float, y0: torch.Tensor,
                     f0: torch.Tensor, order: int) -> float:
        """``first_step``, else Hairer, Norsett & Wanner's starting step (II.4) for a method of ``order`` (1 NFE).

        torchdiffeq passes the order minus one (a smaller first step, about one more evaluation per solve of the
        seed's model), so the two engines' first steps differ unless ``first_step`` is given.
        """
        if self.first_step:
            return self.first_step
        y, f = _wide(y0), _wide(f0)
        scale = self.atol + y.abs() * self.rtol
        d0, d1 = float(self.measure(y / scale)), float(self.measure(f / scale))
        if not math.isfinite(d1):  # torchdiffeq goes on with a zero first step and fails later, less clearly
            raise SolverError("the derivative at the start of the solve holds NaN or infinite values: the dynamics are "
                              "blowing up")
        h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
        f1 = func(t0 + h0, y0 + h0 * f0)
        d2 = float(self.measure((_wide(f1) - f) / scale)) / h0
        if d1 <= 1e-15 and d2 <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
        return min(100 * h0, h1)

    @torch.no_grad()
    def error_ratio(self, err: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor) -> float:
        """The scaled error of a step from ``y0`` to ``y1``: accept when ``<= 1`` (the one host read per step)."""
        err, y0, y1 = _wide(err), _wide(y0), _wide(y1)
        tol = self.atol + self.rtol * torch.maximum(y0.abs(), y1.abs())
        return float(self.measure(err / tol))

    @staticmethod
    def next_step(h: float, ratio: float, order: int) -> float:
        """The step after one of size ``h`` with error ratio ``ratio`` (torchdiffeq's controller)."""
        if ratio == 0.0:
            return h * IFACTOR
        if not math.isfinite(ratio):
            return h * DFACTOR
        dfactor = 1.0 if ratio < 1.0 else DFACTOR
        return h * min(IFACTOR, max(SAFETY / ratio ** (1.0 / order), dfactor))

    def grid(self, ts: Sequence[float], t_dtype: torch.dtype = torch.float64) -> Iterator[float]:
        """A fixed-step method's grid over ``ts``: torchdiffeq's ``t0 + i * step_size`` in ``t_dtype`` for
        ``i < ceil((t1 - t0) / step_size + 1)``, the last point set to ``t1``; ``ts`` itself without a step.

        Produced a chunk at a time (a fine grid costs no memory), after its length is checked against
        ``max_steps``."""
        n = len(ts) - 1 if self.step_size is None else self.steps_on(ts[0], ts[-1])
        if self.max_steps is not None and n > self.max_steps:  # refused before the grid is allocated
            raise SolverError(f"a grid of {n} steps exceeds max_steps ({self.max_steps}); use a larger step size")
        if self.step_size is None:
            return iter(list(ts))
        return self._points(ts[0], ts[-1], n + 1, t_dtype)

    def _points(self, t0: float, t1: float, n: int, t_dtype: torch.dtype, chunk: int = 4096) -> Iterator[float]:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            part = (torch.arange(start, stop, dtype=t_dtype) * self.step_size + t0).tolist()
            if stop == n:
                part[-1] = t1
            yield from part


@dataclass(frozen=True)
class AdjointSpec:
    """How gradients are computed.

    ``enabled``: the continuous adjoint (memory flat in the number of steps) instead of backpropagation through
    the solver. ``seminorm``: the backward error norm leaves the parameter adjoint out (Kidger et al. 2021).
    ``fused_vjp``: use ``func.vjp(t, z, a, energy_cotangent=None) -> (f, a df/dz, flat a df/dtheta)`` when ``func``
    defines one (and ``params`` are its parameters), else autograd. ``params``: the tensors to differentiate
    (None: ``func.parameters()``).
    """

    enabled: bool = True
    seminorm: bool = False
    fused_vjp: bool = True
    params: Optional[Tuple[torch.Tensor, ...]] = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("enabled", "seminorm", "fused_vjp"):
            if not isinstance(getattr(self, name), bool):
                raise SolverError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.params is not None:
            object.__setattr__(self, "params", tuple(self.params))


# flat setting name -> (part of Solver, field): the one map between the command line's names and the types
_FLAT = {"method": ("", "method"), "backend": ("", "backend"),
         "rtol": ("controller", "rtol"), "atol": ("controller", "atol"), "step_size": ("controller", "step_size"),
         "first_step": ("controller", "first_step"), "max_steps": ("controller", "max_steps"),
         "adjoint": ("adjoint", "enabled"), "seminorm": ("adjoint", "seminorm"),
         "fused_vjp": ("adjoint", "fused_vjp")}


@dataclass(frozen=True)
class Solver:
    """A method, its step controller, its adjoint and the backend that runs it.

    ``method``: a native tableau name (``NATIVE_METHODS``) or any torchdiffeq method; ``backend="native"``
    runs native methods in odenet's engine and hands the others to torchdiffeq.
    """

    method: str = "dopri5"
    controller: StepController = StepController()
    adjoint: AdjointSpec = AdjointSpec()
    backend: str = "native"
    engine: str = dataclasses.field(init=False, repr=False, compare=False)  # the backend that runs it, resolved once

    def __post_init__(self) -> None:
        if not isinstance(self.method, str):
            raise SolverError(f"method must be a solver name, got {self.method!r}")
        if not isinstance(self.backend, str):
            raise SolverError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        for name, kind in (("controller", StepController), ("adjoint", AdjointSpec)):
            if not isinstance(getattr(self, name), kind):
                raise SolverError(f"{name} must be an odenet.{kind.__name__}, got {type(getattr(self, name)).__name__}")
        object.__setattr__(self, "engine", resolve_backend(self.method, self.backend))

    @property
    def tableau(self) -> Tableau:
        """The native method's Butcher tableau."""
        return TABLEAUS[self.method]

    @property
    def adaptive(self) -> bool:
        return is_adaptive(self.method)

    @classmethod
    def of(cls, **flat) -> "Solver":
        """A solver from flat settings (``method, backend, rtol, atol, step_size, first_step, max_steps, adjoint,
        seminorm, fused_vjp``), the rest at their defaults."""
        return cls().replace(**flat)

    def replace(self, **flat) -> "Solver":
        """A copy with flat settings changed: ``solver.replace(rtol=1e-5, adjoint=False)``."""
        unknown = sorted(set(flat) - set(_FLAT))
        if unknown:
            raise SolverError(f"unknown solver setting(s) {', '.join(unknown)}; known: {', '.join(_FLAT)}")
        parts: dict = {"": {}, "controller": {}, "adjoint": {}}
        for k, v in flat.items():
            part, name = _FLAT[k]
            parts[part][name] = v
        return dataclasses.replace(
            self, controller=dataclasses.replace(self.controller, **parts["controller"]),
            adjoint=dataclasses.replace(self.adjoint, **parts["adjoint"]), **parts[""])

    def check_energy(self) -> None:
        """Raise ``SolverError`` unless this solver can return the kinetic energy (the native engine can)."""
        if self.engine != "native":
            raise SolverError(f"the kinetic energy needs the native engine; {self.method!r} runs on torchdiffeq "
                              "(drop --backend torchdiffeq or pick a native solver, or set kinetic 0)")

    def flat(self) -> dict:
        """The flat settings of this solver (the inverse of ``Solver.of``)."""
        return {k: getattr(getattr(self, part) if part else self, name) for k, (part, name) in _FLAT.items()}


__all__ = ["StepController", "AdjointSpec", "Solver", "rms_norm"]
