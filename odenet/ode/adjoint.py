"""How gradients flow through a native solve: two strategies ``integrate`` hands the solve to (as diffrax does).

``Backprop``: the solve runs under the caller's grad mode (with grad on: backpropagation through the solver's
operations; with it off: no graph). ``Adjoint``: the continuous adjoint method (Chen et al. 2018).

Forward: solve without building a graph. Backward: integrate the augmented state
``x = [z, a, g]`` from ``T`` back to ``t0`` with ``dz/dt = f``, ``da/dt = -a df/dz``,
``dg/dt = -a df/dtheta``; memory does not grow with the number of steps. Time is reversed
(``s = -t``) so the same forward stepping loop does the work.

The kinetic energy ``E_b = integral |f(z_b)|^2 dt`` is an output like the states: its cotangent ``c_b = dL/dE_b``
arrives in the backward pass and makes the adjoint's cotangent ``a + 2 c f`` (the running cost's adjoint,
Finlay et al. 2020). Every vjp receives ``c`` explicitly (``energy_cotangent=``); none reads it from module state.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch.autograd.function import once_differentiable

from ..errors import SolverError
from .native import Stats, solve
from .settings import Norm, StepController
from .tableaus import Tableau

Vjp = Callable[..., Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def autograd_vjp(func: Callable, params: Sequence[torch.Tensor]) -> Vjp:
    """``vjp(t, z, a, energy_cotangent=None) -> (f(t, z), (a + 2 c f) df/dz, flat (a + 2 c f) df/dtheta)`` through
    autograd (works for any ``func``); ``c = energy_cotangent`` (dL/dE per sample) broadcasts against ``f``."""

    def vjp(t: float, z: torch.Tensor, a: torch.Tensor,
            energy_cotangent: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            fz = func(t, z)
            cot = a if energy_cotangent is None else a + 2.0 * energy_cotangent * fz.detach()
            grads = torch.autograd.grad(fz, (z, *params), cot, allow_unused=True)
        gz = grads[0] if grads[0] is not None else torch.zeros_like(z)
        gp = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads[1:], params)]
        flat = torch.cat([g.reshape(-1) for g in gp]) if gp else z.new_zeros(0)
        return fz.detach(), gz, flat

    return vjp


def accepts_energy_cotangent(vjp: Callable) -> bool:
    """Whether ``vjp`` takes the energy cotangent (an ``energy_cotangent`` parameter)."""
    try:
        return "energy_cotangent" in inspect.signature(vjp).parameters
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


@dataclass
class Problem:
    """One native solve: the field, the output times (floats, increasing), the method and its step controller,
    the dtype of time arithmetic, whether the kinetic energy is an output, and the ``Stats`` to count into."""

    func: Callable
    ts: List[float]
    tab: Tableau
    controller: StepController
    t_dtype: torch.dtype = torch.float64
    energy: bool = False
    stats: Optional[Stats] = None

    def run(self, y0: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The states ``(len(ts), *y0.shape)`` and the energy (or None), under the caller's grad mode."""
        ys, e = solve(self.func, y0, self.ts, self.tab, self.controller, t_dtype=self.t_dtype, energy=self.energy,
                      stats=self.stats)
        return torch.stack(ys), e


class Backprop:
    """Gradients, when autograd is on, by backpropagation through the solver's operations (memory grows with
    the steps; exact for the discretisation)."""

    def solve(self, pb: Problem, y0: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        return pb.run(y0)


class Adjoint:
    """Gradients by the continuous adjoint: forward without a graph, backward by solving the augmented system
    (memory flat in the steps). ``params``: the tensors to differentiate; ``vjp``: a fused
    ``vjp(t, z, a, energy_cotangent=None)`` (None: autograd); ``seminorm``: leave the parameter adjoint out of the
    backward error norm (Kidger et al. 2021)."""

    def __init__(self, params: Sequence[torch.Tensor], vjp: Optional[Vjp] = None, seminorm: bool = False):
        self.params, self.vjp, self.seminorm = list(params), vjp, seminorm

    def solve(self, pb: Problem, y0: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if pb.energy and self.vjp is not None and not accepts_energy_cotangent(self.vjp):
            raise SolverError("the kinetic energy's gradient needs a vjp that takes energy_cotangent=...; this vjp does not")
        out = _Adjoint.apply(y0, pb, self, *self.params)
        return out if pb.energy else (out, None)


class _Adjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y0: torch.Tensor, pb: Problem, how: Adjoint, *params: torch.Tensor):  # type: ignore[override]
        with torch.no_grad():
            ys, e = pb.run(y0)
        ctx.pb, ctx.how, ctx.params = pb, how, params
        ctx.save_for_backward(ys)
        return (ys, e) if pb.energy else ys

    @staticmethod
    @once_differentiable  # second derivatives through the solve are not computed: torch refuses them in one line
    def backward(ctx, grad_ys: torch.Tensor, grad_e: Optional[torch.Tensor] = None):  # type: ignore[override]
        (ys,) = ctx.saved_tensors
        pb, how, params = ctx.pb, ctx.how, ctx.params
        ts, shape = pb.ts, ys.shape[1:]
        n = ys[0].numel()
        sizes = [p.numel() for p in params]
        vjp = how.vjp or autograd_vjp(pb.func, params)
        controller = dataclasses.replace(pb.controller, norm=_augmented_norm(n, sizes, how.seminorm))
        energy_cotangent = None
        if grad_e is not None and bool(grad_e.ne(0).any()):
            energy_cotangent = grad_e.reshape(grad_e.shape + (1,) * (len(shape) - grad_e.dim()))

        def aug(s: float, x: torch.Tensor) -> torch.Tensor:
            """d/ds of [z, a, g] at s = -t, given only [z, a]: g never feeds back (a quadrature)."""
            z, a = x[:n].view(shape), x[n:2 * n].view(shape)
            fz, gz, gp = (vjp(-s, z, a) if energy_cotangent is None
                          else vjp(-s, z, a, energy_cotangent=energy_cotangent))
            return torch.cat([fz.reshape(-1).neg(), gz.reshape(-1), gp])

        with torch.no_grad():
            a = grad_ys[-1].reshape(-1)
            g = ys.new_zeros(sum(sizes))
            for i in range(len(ts) - 1, 0, -1):
                x = torch.cat([ys[i].reshape(-1), a, g])
                x = solve(aug, x, [-ts[i], -ts[i - 1]], pb.tab, controller, lead=2 * n, t_dtype=pb.t_dtype,
                          stats=pb.stats, backward=True)[0][-1]
                a = x[n:2 * n] + grad_ys[i - 1].reshape(-1)
                g = x[2 * n:]
        grads = list(torch.split(g, sizes)) if sizes else []
        return (a.view(shape), None, None, *[gp.view_as(p) for gp, p in zip(grads, params)])


__all__ = ["Problem", "Backprop", "Adjoint", "autograd_vjp", "accepts_energy_cotangent"]
