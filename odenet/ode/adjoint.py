"""The continuous adjoint method (Chen et al. 2018) on top of the native engine.

Forward: solve without building a graph. Backward: integrate the augmented state
``x = [z, a, g]`` from ``T`` back to ``t0`` with ``dz/dt = f``, ``da/dt = -a df/dz``,
``dg/dt = -a df/dtheta``; memory does not grow with the number of steps. Time is reversed
(``s = -t``) so the same forward stepping loop does the work.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .native import Norm, rms_norm, solve
from .tableaus import Tableau


def autograd_vjp(func: Callable, params: Sequence[torch.Tensor]) -> Callable:
    """``vjp(t, z, a) -> (f(t, z), a df/dz, flat a df/dtheta)`` through autograd (works for any ``func``)."""

    def vjp(t: float, z: torch.Tensor, a: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            fz = func(t, z)
            grads = torch.autograd.grad(fz, (z, *params), a, allow_unused=True)
        gz = grads[0] if grads[0] is not None else torch.zeros_like(z)
        gp = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads[1:], params)]
        flat = torch.cat([g.reshape(-1) for g in gp]) if gp else z.new_zeros(0)
        return fz.detach(), gz, flat

    return vjp


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


class _Adjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y0: torch.Tensor, opts: dict, *params: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        with torch.no_grad():
            ys = torch.stack(solve(opts["func"], y0, opts["ts"], opts["tab"], **opts["solve"]))
        ctx.opts = opts
        ctx.params = params
        ctx.save_for_backward(ys)
        return ys

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):  # type: ignore[override]
        (ys,) = ctx.saved_tensors
        opts, params = ctx.opts, ctx.params
        ts, shape = opts["ts"], ys.shape[1:]
        n = ys[0].numel()
        sizes = [p.numel() for p in params]
        vjp = opts["vjp"] or autograd_vjp(opts["func"], params)
        solve_kw = dict(opts["solve"], norm=_augmented_norm(n, sizes, opts["seminorm"]), lead=2 * n)

        def aug(s: float, x: torch.Tensor) -> torch.Tensor:
            """d/ds of [z, a, g] at s = -t, given only [z, a]: g never feeds back (a quadrature)."""
            fz, gz, gp = vjp(-s, x[:n].view(shape), x[n:2 * n].view(shape))
            return torch.cat([fz.reshape(-1).neg(), gz.reshape(-1), gp])

        with torch.no_grad():
            a = grad_ys[-1].reshape(-1)
            g = ys.new_zeros(sum(sizes))
            for i in range(len(ts) - 1, 0, -1):
                x = torch.cat([ys[i].reshape(-1), a, g])
                x = solve(aug, x, [-ts[i], -ts[i - 1]], opts["tab"], **solve_kw)[-1]
                a = x[n:2 * n] + grad_ys[i - 1].reshape(-1)
                g = x[2 * n:]
        grads = list(torch.split(g, sizes)) if sizes else []
        return (a.view(shape), None, *[gp.view_as(p) for gp, p in zip(grads, params)])


def odeint_adjoint_native(func: Callable, y0: torch.Tensor, ts: Sequence[float], tab: Tableau,
                          params: Sequence[torch.Tensor], *, vjp: Optional[Callable] = None,
                          seminorm: bool = False, **solve_kw) -> torch.Tensor:
    """Solve with the adjoint backward pass. Returns states at ``ts``: shape ``(len(ts), *y0.shape)``."""
    opts = dict(func=func, ts=[float(t) for t in ts], tab=tab, vjp=vjp, seminorm=seminorm, solve=solve_kw)
    return _Adjoint.apply(y0, opts, *params)


__all__ = ["odeint_adjoint_native", "autograd_vjp", "rms_norm"]
