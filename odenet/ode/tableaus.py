"""Butcher tableaus of the explicit Runge-Kutta solvers in the native engine.

Coefficients follow torchdiffeq exactly (including its embedded error weights for dopri5, its 3/8-rule variant
for ``rk4`` and its dense-output midpoint weights), so the two backends take the same steps and count the same NFE.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta method.

    ``c[i]`` is the time node of stage ``i``; ``a[i]`` the weights of stages ``0..i-1`` used to form the
    input of stage ``i`` (``a[0]`` is empty); ``b`` the solution weights; ``e`` (adaptive methods only)
    the weights of the local error estimate ``h * sum(e_i k_i)``; ``order`` the order used by the step
    size controller; ``mid`` (adaptive methods) the weights giving the step's midpoint for dense output.
    ``fsal``: the last stage is evaluated at the step's solution (first same as last).
    """

    name: str
    c: Tuple[float, ...]
    a: Tuple[Tuple[float, ...], ...]
    b: Tuple[float, ...]
    order: int
    e: Optional[Tuple[float, ...]] = None
    mid: Optional[Tuple[float, ...]] = None

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.e is not None

    @property
    def fsal(self) -> bool:
        return self.c[-1] == 1.0 and tuple(self.a[-1]) + (0.0,) == tuple(self.b)


def _t(name: str, c: Sequence[float], a: Sequence[Sequence[float]], b: Sequence[float], order: int,
       e: Optional[Sequence[float]] = None, mid: Optional[Sequence[float]] = None) -> Tableau:
    return Tableau(name, tuple(c), tuple(tuple(r) for r in a), tuple(b), order, None if e is None else tuple(e),
                   None if mid is None else tuple(mid))


TABLEAUS = {
    "euler": _t("euler", [0.0], [[]], [1.0], 1),
    "midpoint": _t("midpoint", [0.0, 0.5], [[], [0.5]], [0.0, 1.0], 2),
    # torchdiffeq's "rk4" is Kutta's 3/8 rule (rk4_alt_step_func).
    "rk4": _t("rk4", [0.0, 1 / 3, 2 / 3, 1.0], [[], [1 / 3], [-1 / 3, 1.0], [1.0, -1.0, 1.0]],
              [1 / 8, 3 / 8, 3 / 8, 1 / 8], 4),
    "heun3": _t("heun3", [0.0, 1 / 3, 2 / 3], [[], [1 / 3], [0.0, 2 / 3]], [1 / 4, 0.0, 3 / 4], 3),
    "adaptive_heun": _t("adaptive_heun", [0.0, 1.0], [[], [1.0]], [0.5, 0.5], 2, e=[0.5, -0.5],
                        mid=[0.5, 0.0]),
    "bosh3": _t("bosh3", [0.0, 0.5, 0.75, 1.0], [[], [0.5], [0.0, 0.75], [2 / 9, 1 / 3, 4 / 9]],
                [2 / 9, 1 / 3, 4 / 9, 0.0], 3, e=[2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8],
                mid=[0.0, 0.5, 0.0, 0.0]),
    "dopri5": _t(
        "dopri5",
        [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0],
        [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
         [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
         [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
         [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]],
        [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0],
        5,
        e=[35 / 384 - 1951 / 21600, 0.0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
           -2187 / 6784 + 12231 / 42400, 11 / 84 - 649 / 6300, -1.0 / 60.0],
        mid=[6025192743 / 30085553152 / 2, 0, 51252292925 / 65400821598 / 2, -2691868925 / 45128329728 / 2,
             187940372067 / 1594534317056 / 2, -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2],
    ),
}

# adaptive methods first, higher orders first: dopri5, bosh3, adaptive_heun, rk4, heun3, midpoint, euler
NATIVE_METHODS = tuple(sorted(TABLEAUS, key=lambda m: (not TABLEAUS[m].adaptive, -TABLEAUS[m].order, m)))
FIXED_METHODS = tuple(m for m in NATIVE_METHODS if not TABLEAUS[m].adaptive)
