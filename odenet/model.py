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
from .errors import OdenetError
from .ode import Solver, Stats, integrate


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
        self.stats: Optional[Stats] = None  # of the last solve (native engine); backward counts after backward()

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
        """z(T) for z(0) = ``z0`` (any shape ``(B, ...)``, e.g. a feature map ``(B, C, H, W)``), same shape; with
        ``energy`` also the kinetic energy ``integral_0^T |f(z_b(t))|^2 dt`` per sample ``(B,)``, differentiable."""
        sol = integrate(self.odefunc, z0, [0.0, self.t_end], self.solver, energy=energy)
        self.stats = sol.stats
        return (sol.ys[-1], sol.energy) if energy else sol.ys[-1]

    def trajectory(self, z0: torch.Tensor, ts: Sequence[float], **flat) -> torch.Tensor:
        """z at each time of ``ts`` (starting at 0): ``(len(ts), *z0.shape)``, by dense output (the NFE of one
        solve); keyword args override solver settings."""
        sol = integrate(self.odefunc, z0, ts, self.solver.replace(**flat) if flat else self.solver)
        self.stats = sol.stats
        return sol.ys


def _images(x: torch.Tensor) -> torch.Tensor:
    """A batch ``(B, 1, 28, 28)`` from images ``(B, 1, 28, 28)``, ``(B, 28, 28)`` or one ``(28, 28)``."""
    if not isinstance(x, torch.Tensor):
        raise OdenetError(f"images must be a tensor (see odenet.preprocess), got {type(x).__name__}")
    x = x.reshape(1, 1, *x.shape) if x.dim() == 2 else x.unsqueeze(1) if x.dim() == 3 else x
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28) or not x.is_floating_point():
        raise OdenetError(f"images must be floating-point (B, 1, 28, 28) as odenet.preprocess returns them, "
                          f"got {x.dtype} {tuple(x.shape)}")
    return x


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

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, classes)`` of images ``x`` as ``odenet.preprocess`` returns them
        ``(B, 1, 28, 28)``."""
        return torch.softmax(self(_images(x)), -1)

    @torch.no_grad()
    def trajectory(self, x: torch.Tensor, t: Sequence[float]) -> torch.Tensor:
        """The latent path z(t) of images ``x`` at the times ``t`` (from 0): ``(len(t), B, dim)``, by dense output."""
        ts = [float(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]
        late = not ts or ts[0] != 0.0  # the flow starts at z(0): solve from 0, drop that point
        zs = self.odeblock.trajectory(self.encode(_images(x)), [0.0] + ts if late else ts)
        return zs[1:] if late else zs

    @torch.no_grad()
    def decision(self, x: torch.Tensor, t: Sequence[float]) -> torch.Tensor:
        """The classifier's probabilities along the flow, ``softmax(classifier(z(t)))``: ``(len(t), B, classes)``."""
        return torch.softmax(self.classifier(self.trajectory(x, t)), -1)

    @property
    def stats(self) -> Optional[Stats]:
        """Solver statistics of the last call: ``nfe_forward``, ``steps_forward``, ``rejected_forward`` and, after
        ``backward()``, the adjoint's ``nfe_backward``, ``steps_backward``, ``rejected_backward`` (native engine)."""
        return self.odeblock.stats

    @property
    def nfe(self) -> int:
        return self.odefunc.nfe

    @nfe.setter
    def nfe(self, value: int) -> None:
        self.odefunc.nfe = value
