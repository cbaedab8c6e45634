"""The seed's Neural ODE classifier: conv encoder -> ODE block (dz/dt = f_theta(z)) -> classifier.

``print(NeuralODEModel())`` reproduces the seed's model print exactly; ``odefunc`` and ``odeblock.odefunc``
are one module registered twice, so its parameters count once.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .config import Config
from .ode import Solver, integrate


class ODEFunc(nn.Module):
    """f_theta: the 64-128-128-128-64 MLP. Counts its evaluations in ``nfe`` (reset it yourself)."""

    def __init__(self, dim: int = 64, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, dim),
        )
        self.nfe = 0

    def _linears(self) -> List[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]  # Linear, ReLU, ..., Linear

    def forward(self, t, z: torch.Tensor) -> torch.Tensor:
        """dz/dt for ``z`` of shape ``(B, dim)``; autonomous, ``t`` is unused."""
        self.nfe += 1
        if torch.is_grad_enabled():
            return self.net(z)
        return self._mlp(z, self._linears())

    @staticmethod
    def _mlp(z: torch.Tensor, linears: List[nn.Linear], inputs: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """The layers without module calls or graph, ReLU in place on fresh outputs; collects layer inputs."""
        h = z
        for i, m in enumerate(linears):
            if i:
                h = torch.relu_(h)
            if inputs is not None:
                inputs.append(h)
            h = torch.addmm(m.bias, h, m.weight.t())
        return h

    @torch.no_grad()
    def vjp(self, t, z: torch.Tensor, a: torch.Tensor,
            kinetic: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(f(z), a df/dz, a df/dtheta flattened in parameters() order)`` with a hand-written backward.

        Same numbers as autograd (tested) without building a graph: the adjoint pass calls this at every
        stage. Counts one evaluation. ``kinetic`` (per-sample weights ``c``, shape ``(B, 1)``) makes the cotangent
        ``a + 2 c f(z)``: the adjoint of the running cost ``c |f(z)|^2`` (the kinetic energy's gradient).
        """
        self.nfe += 1
        linears = self._linears()
        inputs: List[torch.Tensor] = []
        h = self._mlp(z, linears, inputs)
        sizes = [(m.weight.numel(), m.bias.numel()) for m in linears]
        flat = z.new_empty(sum(w + b for w, b in sizes))
        offsets, o = [], 0
        for w, b in sizes:
            offsets.append(o)
            o += w + b
        g = a if kinetic is None else a + 2.0 * kinetic * h
        for i in range(len(linears) - 1, -1, -1):
            m, x, o = linears[i], inputs[i], offsets[i]
            nw, nb = sizes[i]
            torch.mm(g.t(), x, out=flat[o:o + nw].view_as(m.weight))
            torch.sum(g, 0, out=flat[o + nw:o + nw + nb])
            g = g.mm(m.weight)
            if i:
                g = torch.ops.aten.threshold_backward(g, x, 0.0)  # ReLU': zero where the activation is 0
        return h, g, flat


class ODEBlock(nn.Module):
    """Integrates ``odefunc`` from 0 to ``t_end`` under ``solver`` (an ``odenet.ode.Solver``; not printed).

    ``solver`` None: the seed's (dopri5, rtol 1e-3, atol 1e-4, adjoint; ``Config().ode_solver()``).
    """

    def __init__(self, odefunc: nn.Module, t_end: float = 1.0, solver: Optional[Solver] = None):
        super().__init__()
        self.odefunc = odefunc
        self.t_end = t_end
        self.solver = solver if solver is not None else Config().ode_solver()

    @contextmanager
    def settings(self, t_end: Optional[float] = None, **flat):
        """Temporarily change ``t_end`` or solver settings: ``with block.settings(method="rk4", step_size=0.05):``."""
        old = self.t_end, self.solver
        self.solver = self.solver.replace(**flat)
        self.t_end = old[0] if t_end is None else t_end
        try:
            yield self
        finally:
            self.t_end, self.solver = old

    def forward(self, z0: torch.Tensor, energy: bool = False):
        """z(T) for z(0) = ``z0``: ``(B, dim) -> (B, dim)``; with ``energy`` also ``integral_0^T |f|^2 dt`` ``(B,)``."""
        sol = integrate(self.odefunc, z0, [0.0, self.t_end], self.solver, energy=energy)
        return (sol.ys[-1], sol.energy) if energy else sol.ys[-1]

    def trajectory(self, z0: torch.Tensor, ts: Sequence[float], **flat) -> torch.Tensor:
        """z at each time of ``ts`` (starting at 0): ``(len(ts), B, dim)``; keyword args override solver settings."""
        return integrate(self.odefunc, z0, ts, self.solver.replace(**flat) if flat else self.solver).ys


class NeuralODEModel(nn.Module):
    """Encoder (28x28 image -> ``dim``, tanh-bounded) -> ODE block -> classifier (10 logits)."""

    def __init__(self, dim: int = 64, num_classes: int = 10, *, t_end: float = 1.0, solver: Optional[Solver] = None,
                 **settings):
        """``solver`` (None: the seed's), changed by flat ``settings`` such as ``method="rk4", step_size=0.25``."""
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, dim), nn.Tanh(),
        )
        self.odefunc = ODEFunc(dim)
        solver = solver if solver is not None else Config().ode_solver()
        self.odeblock = ODEBlock(self.odefunc, t_end, solver.replace(**settings) if settings else solver)
        self.classifier = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, num_classes))
        # NHWC convolutions are faster than NCHW on CPU (oneDNN) for this encoder: docs/performance.md
        self.encoder.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg: Config) -> "NeuralODEModel":
        """The model a run of ``cfg`` trains (its ``ode_dim``, ``t_end`` and solver)."""
        return cls(dim=cfg.ode_dim, t_end=cfg.t_end, solver=cfg.ode_solver())

    def forward(self, x: torch.Tensor, energy: bool = False):
        """Logits ``(B, 10)`` for images ``(B, 1, 28, 28)``; with ``energy`` also the flow's kinetic energy
        ``integral_0^T |f(z(t))|^2 dt`` per image ``(B,)``, differentiable (its gradient from the adjoint pass)."""
        if energy:
            zT, e = self.odeblock(self.encode(x), energy=True)
            return self.classifier(zT), e
        return self.classifier(self.odeblock(self.encode(x)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z(0) = encoder(x): ``(B, 1, 28, 28) -> (B, dim)``."""
        return self.encode_stages(x)[2]

    def encode_stages(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoder's conv maps ``(B, 32, 7, 7)``, its hidden layer ``(B, 128)`` and z(0) ``(B, dim)``.

        Runs the encoder's layers with each ReLU after its max-pool instead of before: max-pooling commutes
        with ReLU (both are monotone), so values and gradients are the encoder's exactly, and the ReLUs
        touch 4x fewer elements (docs/performance.md).
        """
        conv1, relu1, pool1, conv2, relu2, pool2, flatten, linear1, relu3, linear2, tanh = self.encoder
        h = relu1(pool1(conv1(x.contiguous(memory_format=torch.channels_last))))
        maps = relu2(pool2(conv2(h)))
        hidden = relu3(linear1(flatten(maps)))
        return maps, hidden, tanh(linear2(hidden))

    @property
    def nfe(self) -> int:
        return self.odefunc.nfe

    @nfe.setter
    def nfe(self, value: int) -> None:
        self.odefunc.nfe = value
