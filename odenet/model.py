"""The seed's Neural ODE classifier: conv encoder -> ODE block (dz/dt = f_theta(z)) -> classifier.

``print(NeuralODEModel())`` reproduces the seed's model print exactly; ``odefunc`` and ``odeblock.odefunc``
are one module registered twice, so its parameters count once.
"""
from __future__ import annotations

import itertools
import math
import numbers
from contextlib import contextmanager
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn.modules import module as _hooks

from . import paper
from .config import ARCHS, MAX_PAPER_WIDTH, Config
from .data import MAX_TTA_VIEWS, TTA_SHIFTS, background_value, class_names, shift_images
from .errors import OdenetError
from .ode import Solver, Stats, integrate


def _plain(modules) -> bool:
    """No hooks, parametrizations or per-instance ``forward`` on any of ``modules``, and no global module hooks:
    calling each one runs exactly its class's ``forward``. (A parametrized module also changes class, which the
    callers' exact type checks see.)"""
    if _hooks._global_forward_hooks or _hooks._global_forward_pre_hooks or _hooks._global_backward_hooks or \
            getattr(_hooks, "_global_backward_pre_hooks", None):
        return False
    for m in modules:
        if (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or "forward" in m.__dict__ or "parametrizations" in m._modules):
            return False
    return True


def _plain_tensor(x) -> bool:
    """A dense floating-point ``Parameter`` or tensor, no subclass (no ``__torch_function__`` of its own)."""
    return (type(x) in (nn.Parameter, torch.Tensor) and x.is_floating_point() and x.layout == torch.strided
            and not x.is_quantized)


class ODEFunc(nn.Module):
    """f_theta: the 64-128-128-128-64 MLP (its evaluations are counted by the solve: ``ODEBlock.stats``).

    Besides ``forward`` it has hand-written fast paths (a graph-free forward and a fused ``vjp``) that the engine
    uses only while ``fast_paths()`` finds the module exactly as written here: change anything (layers,
    activations, hooks, parametrizations, quantization, a subclass's ``forward``) and autograd runs instead.
    """

    def __init__(self, dim: int = 64, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, t, z: torch.Tensor) -> torch.Tensor:
        """dz/dt for ``z`` of shape ``(B, dim)``; autonomous, ``t`` is unused."""
        return self.net(z)

    def fast_paths(self) -> Optional[Tuple[Callable, Callable]]:
        """``(forward, vjp)``: the hand-written paths, when they provably compute this module's function, else None.

        They do when the class is ``ODEFunc`` itself (or a subclass that overrides none of its methods), ``net`` is
        a ``Sequential`` of exactly ``Linear`` (with bias) and ``ReLU`` layers in turn, and no module involved has
        hooks, parametrizations (``spectral_norm``, ``weight_norm``), an instance ``forward`` or non-plain weights
        (quantized, tensor subclasses). Checked once per solve by the engine.
        """
        cls = type(self)
        if any(getattr(cls, k) is not getattr(ODEFunc, k) for k in ("forward", "vjp", "fast_paths", "__call__")):
            return None
        if any(k in self.__dict__ for k in ("vjp", "fast_paths")):
            return None  # replaced on this instance
        net = self._modules.get("net")
        if type(net) is not nn.Sequential or len(net) % 2 != 1 or not _plain((self, net, *net)):
            return None
        for i, m in enumerate(net):
            if type(m) is not (nn.ReLU if i % 2 else nn.Linear):
                return None
            if not i % 2 and not (_plain_tensor(m.weight) and m.bias is not None and _plain_tensor(m.bias)):
                return None
        # the fused vjp's layout: the layers' own tensors, in order, none tied, no other parameter anywhere
        layers = list(net)  # (slicing a Sequential would build new modules)
        own = [t for m in layers[::2] for t in (m.weight, m.bias)]
        if self._parameters or net._parameters or len({id(t) for t in own}) != len(own) or any(
                m._modules or len(m._parameters) != 2 for m in layers[::2]) or any(m._parameters for m in layers[1::2]):
            return None
        return _FusedMLP(self).paths()

    def _linears(self) -> List[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]  # Linear, ReLU, ..., Linear

    def vjp(self, t, z: torch.Tensor, a: torch.Tensor,
            energy_cotangent: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(f(z), a df/dz, a df/dtheta flattened in parameters() order)``: the hand-written backward when
        ``fast_paths()`` allows it, else autograd. ``energy_cotangent`` (per-sample weights ``c``, shape ``(B, 1)``) makes
        the cotangent ``a + 2 c f(z)``: the adjoint of the running cost ``c |f(z)|^2`` (the kinetic energy's
        gradient)."""
        fast = self.fast_paths()
        if fast is None:
            return self._autograd_vjp(t, z, a, energy_cotangent)
        return fast[1](t, z, a, energy_cotangent)

    def _autograd_vjp(self, t, z, a, energy_cotangent=None):
        from .ode.adjoint import autograd_vjp

        return autograd_vjp(self, list(self.parameters()))(t, z, a, energy_cotangent)


class _FusedMLP:
    """An ``ODEFunc``'s hand-written forward and vjp over its layers' ``(bias, weight)``, read once (by
    ``fast_paths()``, once per solve) instead of looked up on the modules at every evaluation.

    Valid only while ``fast_paths()`` vouches for the module; the tensors are the parameters themselves, so
    in-place updates (an optimizer's) are seen. States other than ``(B, dim)`` go to the module and autograd.
    """

    __slots__ = ("func", "layers")

    def __init__(self, func: ODEFunc):
        self.func = func
        self.layers = [(m.bias, m.weight) for m in func._linears()]

    def paths(self) -> Tuple[Callable, Callable]:
        return self.forward, self.vjp

    def _mlp(self, z: torch.Tensor, inputs: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """The layers without module calls or graph, ReLU in place on fresh outputs; collects layer inputs."""
        h = z
        for i, (b, w) in enumerate(self.layers):
            if i:
                h = torch.relu_(h)
            if inputs is not None:
                inputs.append(h)
            h = torch.addmm(b, h, w.t())
        return h

    def forward(self, t, z: torch.Tensor) -> torch.Tensor:
        """``func(t, z)``; by hand when autograd is off and ``z`` is ``(B, dim)``."""
        if torch.is_grad_enabled() or z.dim() != 2:
            return self.func(t, z)
        return self._mlp(z)

    def vjp(self, t, z: torch.Tensor, a: torch.Tensor,
            energy_cotangent: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``ODEFunc.vjp`` by hand: the same numbers as autograd (tested) without building a graph; the adjoint
        pass calls it at every stage."""
        if z.dim() != 2:
            return self.func._autograd_vjp(t, z, a, energy_cotangent)
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self._vjp(z, a, energy_cotangent)
        return self._vjp(z, a, energy_cotangent)

    def _vjp(self, z: torch.Tensor, a: torch.Tensor,
             energy_cotangent: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs: List[torch.Tensor] = []
        h = self._mlp(z, inputs)
        g = a if energy_cotangent is None else a + 2.0 * energy_cotangent * h
        parts: List[torch.Tensor] = []  # (bias, weight) per layer, last layer first
        for i in range(len(self.layers) - 1, -1, -1):
            x = inputs[i]
            parts += [g.sum(0), g.t().mm(x).view(-1)]
            g = g.mm(self.layers[i][1])
            if i:
                g = torch.ops.aten.threshold_backward(g, x, 0.0)  # ReLU': zero where the activation is 0
        # one cat in parameters() order; faster here than products written into slices of a preallocated vector
        return h, g, torch.cat(parts[::-1])


def _check_solver(solver, where: str) -> Solver:
    """``solver`` if it is a ``Solver`` a block can run, else a one-line ``OdenetError``.

    The one rule for fixed-step methods in a block: a block solves over ``[0, t_end]`` (and its trajectory over
    the times asked for), so without ``step_size`` a fixed-step method would take a single step; it needs one.
    (``odeint``/``integrate`` keep torchdiffeq's rule: without a step they step on the output times.)
    """
    if not isinstance(solver, Solver):
        raise OdenetError(f"{where}: solver must be an odenet.Solver (e.g. odenet.Solver.of(method='rk4', "
                          f"step_size=0.1)), got {type(solver).__name__}")
    if not solver.adaptive and solver.controller.step_size is None:
        raise OdenetError(f"{where}: the fixed-step method {solver.method!r} needs a step_size (e.g. step_size=0.1); "
                          "without one it would take a single step over [0, T]")
    return solver


def _check_time(t_end, where: str):
    """``t_end``: a finite nonzero number, 0-d tensor or ``nn.Parameter`` (a learned end time keeps its gradient)."""
    if isinstance(t_end, torch.Tensor):
        if t_end.numel() != 1 or not t_end.is_floating_point():
            raise OdenetError(f"{where}: t_end must be a number or a one-element floating-point tensor, "
                              f"got {t_end.dtype} {tuple(t_end.shape)}")
        v = float(t_end.detach())
    elif isinstance(t_end, numbers.Real) and not isinstance(t_end, bool):
        t_end = v = float(t_end)
    else:
        raise OdenetError(f"{where}: t_end must be a number, got {type(t_end).__name__}")
    if not math.isfinite(v) or v == 0:
        raise OdenetError(f"{where}: t_end must be a finite nonzero number, got {v!r}")
    return t_end


_NO_SCRIPT = ("torch.jit.script cannot compile odenet's ODE solver (Python control flow over the steps); use "
              "torch.jit.trace or torch.onnx.export with a fixed-step solver (method='rk4', step_size=...)")


def _recording() -> bool:
    """Whether torch is tracing or exporting this call: a graph is recorded once and replayed, so a solve whose
    steps depend on the input would be baked in. (``torch.compile`` is not refused: it breaks the graph where the
    solver reads a number and runs those parts as they are.)"""
    compiler = getattr(torch, "compiler", None)
    return bool(torch.jit.is_tracing() or (compiler is not None and getattr(compiler, "is_exporting", lambda: False)()))


class ODEBlock(nn.Module):
    """Integrates ``odefunc`` from 0 to ``t_end`` under ``solver`` (an ``odenet.ode.Solver``; not printed).

    ``odefunc``: an ``nn.Module`` ``f(t, z)`` (its parameters are the block's and the adjoint differentiates
    them); ``t_end``: a number, or an ``nn.Parameter`` to learn the end time (its gradient comes on every path).
    ``solver`` None: the seed's (dopri5, rtol 1e-3, atol 1e-4, adjoint; ``Config().ode_solver()``); a fixed-step
    method needs a ``step_size``.
    """

    def __init__(self, odefunc: nn.Module, t_end: float = 1.0, solver: Optional[Solver] = None):
        super().__init__()
        if not isinstance(odefunc, nn.Module):
            raise OdenetError(f"ODEBlock: odefunc must be a torch.nn.Module so that its parameters train (got "
                              f"{type(odefunc).__name__}); wrap a function's layers in a Module")
        self.odefunc = odefunc
        self.t_end = _check_time(t_end, "ODEBlock")
        self.solver = _check_solver(solver if solver is not None else Config().ode_solver(), "ODEBlock")
        self.stats: Optional[Stats] = None  # of the last solve (native engine); backward counts after backward()
        self._t_override: Optional[float] = None

    @property
    def end_time(self):
        """The end time in use: ``t_end``, or the one a ``settings(t_end=...)`` block set."""
        return self.t_end if self._t_override is None else self._t_override

    @contextmanager
    def settings(self, t_end: Optional[float] = None, **flat):
        """Temporarily change ``t_end`` or solver settings: ``with block.settings(method="rk4", step_size=0.05):``."""
        old = self._t_override, self.solver
        self.solver = _check_solver(self.solver.replace(**flat), "ODEBlock.settings")
        self._t_override = old[0] if t_end is None else _check_time(t_end, "ODEBlock.settings")
        try:
            yield self
        finally:
            self._t_override, self.solver = old

    def __prepare_scriptable__(self):
        raise OdenetError(_NO_SCRIPT)

    def forward(self, z0: torch.Tensor, energy: bool = False):
        """z(T) for z(0) = ``z0`` (any shape ``(B, ...)``, e.g. a feature map ``(B, C, H, W)``), same shape; with
        ``energy`` also the kinetic energy ``integral_0^T |f(z_b(t))|^2 dt`` per sample ``(B,)``, differentiable."""
        if _recording() and self.solver.adaptive:
            raise OdenetError(f"an adaptive solve ({self.solver.method}) cannot be traced or exported: its number of "
                              "steps depends on the input; trace a fixed-step solver instead, e.g. inside "
                              "model.odeblock.settings(method='rk4', step_size=0.1)")
        sol = integrate(self.odefunc, z0, [0.0, self.end_time], _check_solver(self.solver, "ODEBlock"), energy=energy)
        self.stats = sol.stats
        return (sol.ys[-1], sol.energy) if energy else sol.ys[-1]

    def trajectory(self, z0: torch.Tensor, ts: Sequence[float], **flat) -> torch.Tensor:
        """z at each time of ``ts`` for z(0) = ``z0``: ``(len(ts), *z0.shape)``, by dense output (the NFE of one
        solve). ``ts`` strictly monotone, all on one side of 0 (0 itself may come first); keyword args override
        solver settings."""
        solver = _check_solver(self.solver.replace(**flat) if flat else self.solver, "ODEBlock.trajectory")
        if isinstance(ts, torch.Tensor):
            ts = ts.detach().reshape(-1).tolist()
        try:
            ts = [float(v) for v in ts]
        except (TypeError, ValueError):
            raise OdenetError("trajectory: times must be a sequence of numbers") from None
        if not ts:
            raise OdenetError("trajectory: give at least one time")
        late = ts[0] != 0.0  # the flow starts at z(0): solve from 0, drop that point
        full = [0.0] + ts if late else ts
        if len(full) > 1 and not all((b - a) * (full[1] - full[0]) > 0 for a, b in zip(full[:-1], full[1:])):
            raise OdenetError(f"trajectory: times must run strictly monotonically away from 0 (z0 is z(0)), got {ts}")
        sol = integrate(self.odefunc, z0, full, solver)
        self.stats = sol.stats
        return sol.ys[1:] if late else sol.ys


def tta_shifts(tta) -> Tuple[Tuple[int, int], ...]:
    """``predict``'s views: ``TTA_SHIFTS`` for True, else the given ``(dx, dy)`` pairs, checked before any solve."""
    if tta is True:
        return TTA_SHIFTS
    try:  # at most one pair more than allowed is read, however long the sequence
        shifts = tuple(tuple(itertools.islice(pair, 3)) for pair in itertools.islice(tta, MAX_TTA_VIEWS + 1))
    except TypeError:
        shifts = ()
    whole = all(len(pair) == 2 and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and abs(v) < 28
                                       for v in pair) for pair in shifts)
    if not shifts or len(shifts) > MAX_TTA_VIEWS or not whole:
        raise OdenetError(f"tta must be True, False or 1 to {MAX_TTA_VIEWS} (dx, dy) shifts of whole pixels, each "
                          f"under 28, got {tta!r:.80}")
    return tuple((int(dx), int(dy)) for dx, dy in shifts)


def _images(x: torch.Tensor, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A batch ``(B, 1, 28, 28)`` from images ``(B, 1, 28, 28)``, ``(B, 28, 28)`` or one ``(28, 28)``, cast to
    ``like``'s dtype and device (float64 or float16 input works with a float32 model)."""
    if not isinstance(x, torch.Tensor):
        raise OdenetError(f"images must be a tensor (see odenet.preprocess), got {type(x).__name__}")
    x = x.reshape(1, 1, *x.shape) if x.dim() == 2 else x.unsqueeze(1) if x.dim() == 3 else x
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28) or not x.is_floating_point() or x.shape[0] == 0:
        raise OdenetError(f"images must be a non-empty floating-point batch (B, 1, 28, 28) as odenet.preprocess "
                          f"returns them, got {x.dtype} {tuple(x.shape)}")
    if like is not None and (x.dtype != like.dtype or x.device != like.device):
        x = x.to(like.device, like.dtype)
    return x


_SEED_ENCODER = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear, nn.ReLU,
                 nn.Linear, nn.Tanh)


def _seed_parts(dim: int, num_classes: int) -> Tuple[nn.Sequential, ODEFunc, nn.Sequential]:
    """SPEC.md's encoder ``(B, 1, 28, 28) -> (B, dim)``, ODE function and classifier ``(B, dim) -> (B, classes)``."""
    encoder = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, dim), nn.Tanh(),
    )
    return encoder, ODEFunc(dim), nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, num_classes))


def _positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise OdenetError(f"NeuralODEModel: {name} must be a positive integer, got {v!r}")
    return int(v)


class NeuralODEModel(nn.Module):
    """Encoder (28x28 image -> z(0) of ``state_shape``: the seed's ``(dim,)``, tanh-bounded, or the paper's
    ``(dim, 6, 6)``) -> ODE block -> classifier (10 logits)."""

    dataset: Optional[str] = None  # what a loaded model was trained on (``odenet.load`` sets it) ...
    classes: Optional[List[str]] = None  # ... and its class names

    def __init__(self, dim: int = 64, num_classes: int = 10, *, arch: str = "seed", t_end: float = 1.0,
                 solver: Optional[Solver] = None, **settings):
        """``arch``: ``"seed"`` (SPEC.md's model; ``dim`` is the latent dimension) or ``"paper"`` (Chen et al.'s conv
        ODE-Net, ``odenet.paper``; ``dim`` is its feature map's channels). ``solver`` (None: the seed's), changed by
        flat ``settings`` such as ``method="rk4", step_size=0.25``."""
        super().__init__()
        dim, num_classes = _positive_int(dim, "dim"), _positive_int(num_classes, "num_classes")
        if arch not in ARCHS:
            raise OdenetError(f"NeuralODEModel: unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
        limit = 65536 if arch == "seed" else MAX_PAPER_WIDTH
        if dim > limit:
            raise OdenetError(f"NeuralODEModel: dim {dim} is too large for arch {arch!r} (at most {limit})")
        t_end = _check_time(t_end, "NeuralODEModel")
        if solver is not None and not isinstance(solver, Solver):
            _check_solver(solver, "NeuralODEModel")
        self.arch = arch
        self.encoder, self.odefunc, head = (paper.parts if arch == "paper" else _seed_parts)(dim, num_classes)
        self.state_shape: Tuple[int, ...] = (dim, paper.STATE_SIDE, paper.STATE_SIDE) if arch == "paper" else (dim,)
        solver = solver if solver is not None else Config().ode_solver()
        self.odeblock = ODEBlock(self.odefunc, t_end, solver.replace(**settings) if settings else solver)
        self.classifier = head
        if arch == "seed":  # NHWC convolutions are faster than NCHW on CPU (oneDNN) for this encoder (performance.md)
            self.encoder.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg: Config) -> "NeuralODEModel":
        """The model a run of ``cfg`` trains (its ``arch``, ``ode_dim``, ``t_end`` and solver), its ``dataset`` and
        ``classes`` set."""
        model = cls(dim=cfg.ode_dim, arch=cfg.arch, t_end=cfg.t_end, solver=cfg.ode_solver())
        model.dataset, model.classes = cfg.dataset, class_names(cfg.dataset)
        return model

    def forward(self, x: torch.Tensor, energy: bool = False):
        """Logits ``(B, 10)`` for images ``(B, 1, 28, 28)``; with ``energy`` also the flow's kinetic energy
        ``integral_0^T |f(z(t))|^2 dt`` per image ``(B,)``, differentiable (its gradient from the adjoint pass)."""
        x = _images(x, self._like())
        if energy:
            zT, e = self.odeblock(self.encode(x), energy=True)
            return self.classifier(zT), e
        return self.classifier(self.odeblock(self.encode(x)))

    def encode_stages(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoder's conv maps ``(B, 32, 7, 7)``, its hidden layer ``(B, 128)`` and z(0) ``(B, dim)``.

        The seed's encoder, unmodified, runs with each ReLU after its max-pool instead of before: max-pooling
        commutes with ReLU (both are monotone), so values and gradients are the encoder's exactly, and the ReLUs
        touch 4x fewer elements (docs/performance.md). A changed encoder (other layers, hooks, parametrizations)
        runs its layers in order; one with another layout has no stages (``encode`` still works).
        """
        enc = self.encoder
        if tuple(type(m) for m in enc) == _SEED_ENCODER and type(enc) is nn.Sequential and _plain((enc, *enc)):
            conv1, relu1, pool1, conv2, relu2, pool2, flatten, linear1, relu3, linear2, tanh = enc
            h = relu1(pool1(conv1(x.contiguous(memory_format=torch.channels_last))))
            maps = relu2(pool2(conv2(h)))
            hidden = relu3(linear1(flatten(maps)))
            return maps, hidden, tanh(linear2(hidden))
        if not isinstance(enc, nn.Sequential) or len(enc) != len(_SEED_ENCODER):
            raise OdenetError("encode_stages needs the seed's 11-layer encoder; this model's encoder differs "
                              "(use encode)")
        outs, h = [], x
        for m in enc:
            h = m(h)
            outs.append(h)
        return outs[5], outs[8], outs[10]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z(0) = encoder(x): ``(B, 1, 28, 28) -> (B, *state_shape)``."""
        enc = self.encoder
        if isinstance(enc, nn.Sequential) and len(enc) == len(_SEED_ENCODER):
            return self.encode_stages(x)[2]
        return enc(x)

    def _like(self) -> Optional[torch.Tensor]:
        """A floating-point parameter: inputs are cast to its dtype and device."""
        return next((p for p in self.parameters() if p.is_floating_point()), None)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, tta: Union[bool, Sequence[Tuple[int, int]]] = False) -> torch.Tensor:
        """Class probabilities ``(B, classes)`` of images ``x`` as ``odenet.preprocess`` returns them
        ``(B, 1, 28, 28)``. With ``tta`` (test-time augmentation), the probabilities averaged over the images moved
        by each of ``odenet.data.TTA_SHIFTS`` (``True``: the image and its four one-pixel shifts) or of the given
        ``(dx, dy)`` shifts in whole pixels, right and down, the border filled with black: one solve per view,
        all of them counted in ``stats``."""
        if tta is False:
            return torch.softmax(self(x), -1)
        shifts = tta_shifts(tta)
        x = _images(x, self._like())
        background = background_value(self.dataset or "mnist")
        total, probs = Stats(), None
        for dx, dy in shifts:
            p = torch.softmax(self(shift_images(x, dx, dy, background)), -1)
            probs = p if probs is None else probs + p
            s = self.stats
            if s is not None:
                total.add(False, s.nfe_forward, s.steps_forward, s.rejected_forward)
                total.fast_forward = s.fast_forward
        self.odeblock.stats = total
        return probs / len(shifts)

    @torch.no_grad()
    def trajectory(self, x: torch.Tensor, t: Sequence[float]) -> torch.Tensor:
        """The latent path z(t) of images ``x`` at the times ``t`` (from 0): ``(len(t), B, *state_shape)``, by dense
        output."""
        return self.odeblock.trajectory(self.encode(_images(x, self._like())), t)

    @torch.no_grad()
    def decision(self, x: torch.Tensor, t: Sequence[float]) -> torch.Tensor:
        """The classifier's probabilities along the flow, ``softmax(classifier(z(t)))``: ``(len(t), B, classes)``."""
        return torch.softmax(self.classify(self.trajectory(x, t)), -1)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``(*lead, classes)`` of states ``z`` of shape ``(*lead, *state_shape)`` (e.g. a trajectory)."""
        lead = z.shape[:z.dim() - len(self.state_shape)]
        return self.classifier(z.reshape(-1, *self.state_shape)).reshape(*lead, -1)

    def flat(self, z: torch.Tensor) -> torch.Tensor:
        """States ``(*lead, *state_shape)`` as vectors ``(*lead, D)`` (for norms, PCA and t-SNE)."""
        return z.flatten(z.dim() - len(self.state_shape)) if len(self.state_shape) > 1 else z

    @property
    def stats(self) -> Optional[Stats]:
        """Solver statistics of the last call: ``nfe_forward``, ``steps_forward``, ``rejected_forward`` and, after
        ``backward()``, the adjoint's ``nfe_backward``, ``steps_backward``, ``rejected_backward`` (the step counts
        are the native engine's; on torchdiffeq only the evaluations are counted)."""
        return self.odeblock.stats
