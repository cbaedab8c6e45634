"""The seed's Neural ODE classifier: conv encoder -> ODE block (dz/dt = f_theta(z)) -> classifier.

``print(NeuralODEModel())`` reproduces the seed's model print exactly; ``odefunc`` and ``odeblock.odefunc``
are one module registered twice, so its parameters count once.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .ode import is_adaptive, odeint


class ODEFunc(nn.Module):
    """f_theta: the 64-128-128-128-64 MLP. Counts its evaluations in ``nfe`` (reset it yourself).

    ``kinetic`` (default 0): the weight ``w`` of a kinetic-energy term ``w * sum_b integral |f(z_b(t))|^2 dt``
    whose gradient :meth:`vjp` adds to the adjoint's (Finlay et al. 2020); set it only around a backward pass.
    """

    def __init__(self, dim: int = 64, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, dim),
        )
        self.nfe = 0
        self.kinetic = 0.0

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
    def vjp(self, t, z: torch.Tensor, a: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(f(z), a df/dz, a df/dtheta flattened in parameters() order)`` with a hand-written backward.

        Same numbers as autograd (tested) without building a graph: the adjoint pass calls this at every
        stage. Counts one evaluation. With ``kinetic`` = w > 0 the cotangent is ``a + 2 w f(z)``: the adjoint of
        the running cost ``w |f(z)|^2`` (da/dt = -(a + 2wf) df/dz, dL/dtheta += integral 2wf df/dtheta dt).
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
        g = a if not self.kinetic else a + (2.0 * self.kinetic) * h
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
    """Integrates ``odefunc`` from 0 to ``t_end``; solver settings are plain attributes (not printed)."""

    def __init__(self, odefunc: ODEFunc, t_end: float = 1.0, method: str = "dopri5", rtol: float = 1e-3,
                 atol: float = 1e-4, step_size: Optional[float] = 0.1, adjoint: bool = True,
                 seminorm: bool = False, backend: str = "native", max_steps: int = 10_000):
        super().__init__()
        self.odefunc = odefunc
        self.t_end, self.method, self.rtol, self.atol = t_end, method, rtol, atol
        self.step_size, self.adjoint, self.seminorm = step_size, adjoint, seminorm
        self.backend, self.max_steps = backend, max_steps
        self.fused_vjp = True  # adjoint pass uses ODEFunc.vjp instead of autograd

    @contextmanager
    def settings(self, **kw):
        """Temporarily change solver settings: ``with block.settings(method="rk4", step_size=0.05): ...``."""
        old = {k: getattr(self, k) for k in kw}
        for k, v in kw.items():
            setattr(self, k, v)
        try:
            yield self
        finally:
            for k, v in old.items():
                setattr(self, k, v)

    def forward(self, z0: torch.Tensor) -> torch.Tensor:
        """z(T) for z(0) = ``z0``: ``(B, dim) -> (B, dim)``."""
        return self.trajectory(z0, [0.0, self.t_end])[-1]

    def trajectory(self, z0: torch.Tensor, ts: Sequence[float], **overrides) -> torch.Tensor:
        """z at each time of ``ts`` (starting at 0): ``(len(ts), B, dim)``; keyword args override settings."""
        kw = dict(method=self.method, rtol=self.rtol, atol=self.atol, step_size=self.step_size,
                  adjoint=self.adjoint, seminorm=self.seminorm, backend=self.backend, max_steps=self.max_steps)
        kw.update(overrides)
        if is_adaptive(kw["method"]):
            kw["step_size"] = None  # step_size is the fixed-step solvers' setting; adaptive ones estimate it
        # the fused vjp returns every parameter's gradient: usable only when none is frozen
        fused = self.fused_vjp and all(p.requires_grad for p in self.odefunc.parameters())
        return odeint(self.odefunc, z0, ts, vjp=self.odefunc.vjp if fused else None, **kw)


class NeuralODEModel(nn.Module):
    """Encoder (28x28 image -> ``dim``, tanh-bounded) -> ODE block -> classifier (10 logits)."""

    def __init__(self, dim: int = 64, num_classes: int = 10, **solver):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, dim), nn.Tanh(),
        )
        self.odefunc = ODEFunc(dim)
        self.odeblock = ODEBlock(self.odefunc, **solver)
        self.classifier = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, num_classes))
        # NHWC convolutions are ~3x faster than NCHW on CPU (oneDNN) for this encoder; see docs/performance.md
        self.encoder.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 10)`` for images ``(B, 1, 28, 28)``."""
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
