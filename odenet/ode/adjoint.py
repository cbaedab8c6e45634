"""The continuous adjoint method (Chen et al. 2018) on top of the native engine.

Forward: solve without building a graph. Backward: integrate the augmented state
``x = [z, a, g]`` from ``T`` back to ``t0`` with ``dz/dt = f``, ``da/dt = -a df/dz``,
``dg/dt = -a df/dtheta``; memory does not grow with the number of steps. Time is reversed
(``s = -t``) so the same forward stepping loop does the work.

The kinetic energy ``E_b = integral |f(z_b)|^2 dt`` is an output like the states: its cotangent ``c_b = dL/dE_b``
arrives in the backward pass and makes the adjoint's cotangent ``a + 2 c f`` (the running cost's adjoint,
Finlay et al. 2020). Every vjp receives ``c`` explicitly (``kinetic=``); none reads it from module state.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch.autograd.function import once_differentiable

from ..errors import SolverError
from .native import Stats, solve
from .settings import Norm, StepController
from .tableaus import Tableau

Vjp = Callable[..., Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def autograd_vjp(func: Callable, params: Sequence[torch.Tensor]) -> Vjp:
    """``vjp(t, z, a, kinetic=None) -> (f(t, z), (a + 2 kinetic f) df/dz, flat (a + 2 kinetic f) df/dtheta)``
    through autograd (works for any ``func``); ``kinetic`` broadcasts against ``f`` (per-sample weights)."""

    def vjp(t: float, z: torch.Tensor, a: torch.Tensor,
            kinetic: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            fz = func(t, z)
            cot = a if kinetic is None else a + 2.0 * kinetic * fz.detach()
            grads = torch.autograd.grad(fz, (z, *params), cot, allow_unused=True)
        gz = grads[0] if grads[0] is not None else torch.zeros_like(z)
        gp = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads[1:], params)]
        flat = torch.cat([g.reshape(-1) for g in gp]) if gp else z.new_zeros(0)
        return fz.detach(), gz, flat

    return vjp


def accepts_kinetic(vjp: Callable) -> bool:
    """Whether ``vjp`` takes the kinetic cotangent (a ``kinetic`` parameter)."""
    try:
        return "kinetic" in inspect.signature(vjp).parameters
    except (TypeError, ValueError):
        return False


def _augmented_norm(n: int, sizes: List[int], seminorm: bool) -> Norm:
    """torchdiffeq's adjoint norm: max of the RMS of z, of a and (unless ``seminorm``) of each parameter."""
    lengths: dict = {}  # per device, built once (no host-to-device copy per step)

    def norm(x: torch.Tensor) -> torch.Tensor:
        sq = x * x
        parts = [sq[:n].mean(), sq[n:2 * n].mean()]
        if not seminorm and sizes:
            if x.device not in lengths:
                lengths[x.device] = torch.tensor(sizes, dtype=torch.long, device=x.device)
            parts.append(torch.segment_reduce(sq[2 * n:], "mean", lengths=lengths[x.device]).max())
        return torch.stack(parts).max().sqrt()

    return norm


class _Problem:
    """What the backward pass needs besides the saved states: the vector field, times and settings."""

    def __init__(self, func, ts, tab, controller, vjp, seminorm, t_dtype, energy, stats):
        self.func, self.ts, self.tab, self.controller = func, ts, tab, controller
        self.vjp, self.seminorm, self.t_dtype, self.energy, self.stats = vjp, seminorm, t_dtype, energy, stats


class _Adjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y0: torch.Tensor, pb: _Problem, *params: torch.Tensor):  # type: ignore[override]
        with torch.no_grad():
            ys, e = solve(pb.func, y0, pb.ts, pb.tab, pb.controller, t_dtype=pb.t_dtype, energy=pb.energy,
                          stats=pb.stats)
            ys = torch.stack(ys)
        ctx.pb, ctx.params = pb, params
        ctx.save_for_backward(ys)
        return (ys, e) if pb.energy else ys

    @staticmethod
    @once_differentiable  # second derivatives through the solve are not computed: torch refuses them in one line
    def backward(ctx, grad_ys: torch.Tensor, grad_e: Optional[torch.Tensor] = None):  # type: ignore[override]
        (ys,) = ctx.saved_tensors
        pb, params = ctx.pb, ctx.params
        ts, shape = pb.ts, ys.shape[1:]
        n = ys[0].numel()
        sizes = [p.numel() for p in params]
        vjp = pb.vjp or autograd_vjp(pb.func, params)
        controller = dataclasses.replace(pb.controller, norm=_augmented_norm(n, sizes, pb.seminorm))
        kinetic = None
        if grad_e is not None and bool(grad_e.ne(0).any()):
            kinetic = grad_e.reshape(grad_e.shape + (1,) * (len(shape) - grad_e.dim()))

        def aug(s: float, x: torch.Tensor) -> torch.Tensor:
            """d/ds of [z, a, g] at s = -t, given only [z, a]: g never feeds back (a quadrature)."""
            z, a = x[:n].view(shape), x[n:2 * n].view(shape)
            fz, gz, gp = vjp(-s, z, a) if kinetic is None else vjp(-s, z, a, kinetic=kinetic)
            return torch.cat([fz.reshape(-1).neg(), gz.reshape(-1), gp])

        with torch.no_grad():
            a = grad_ys[-1].reshape(-1)
            g = ys.new_zeros(sum(sizes))
            for i in range(len(ts) - 1, 0, -1):
                x = torch.cat([ys[i].reshape(-1), a, g])
                x = solve(aug, x, [-ts[i], -ts[i - 1]], pb.tab, controller, lead=2 * n, t_dtype=pb.t_dtype,
                          stats=pb.stats, part="backward")[0][-1]
                a = x[n:2 * n] + grad_ys[i - 1].reshape(-1)
                g = x[2 * n:]
        grads = list(torch.split(g, sizes)) if sizes else []
        return (a.view(shape), None, *[gp.view_as(p) for gp, p in zip(grads, params)])


def odeint_adjoint_native(func: Callable, y0: torch.Tensor, ts: Sequence[float], tab: Tableau,
                          controller: StepController, params: Sequence[torch.Tensor], *, vjp: Optional[Vjp] = None,
                          seminorm: bool = False, t_dtype: torch.dtype = torch.float64, energy: bool = False,
                          stats: Optional[Stats] = None):
    """Solve with the adjoint backward pass. Returns states at ``ts``: shape ``(len(ts), *y0.shape)``, and with
    ``energy`` also ``integral |f|^2 dt`` per sample, whose gradient the backward pass adds."""
    if energy and vjp is not None and not accepts_kinetic(vjp):
        raise SolverError("the kinetic energy's gradient needs a vjp that takes kinetic=...; this vjp does not")
    pb = _Problem(func, [float(t) for t in ts], tab, controller, vjp, seminorm, t_dtype, energy, stats)
    return _Adjoint.apply(y0, pb, *params)


__all__ = ["odeint_adjoint_native", "autograd_vjp", "accepts_kinetic"]
