"""Solver correctness: convergence orders, tolerances, agreement with torchdiffeq, adjoint gradients, failures."""
import math

import pytest
import torch
from torch import nn

from odenet.errors import SolverError
from odenet.ode import odeint, odeint_adjoint


class Linear(nn.Module):
    """dy/dt = A y with a fixed random A (eigenvalues in the left half-plane); exact solution expm(tA) y0."""

    def __init__(self, dim=4, seed=0, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        m = torch.randn(dim, dim, generator=g, dtype=dtype)
        self.A = nn.Parameter(0.5 * (m - m.T) - 0.3 * torch.eye(dim, dtype=dtype))
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return y @ self.A.T

    def exact(self, y0, t):
        return y0 @ torch.linalg.matrix_exp(t * self.A.detach()).T


class MLP(nn.Module):
    def __init__(self, dim=6, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, dim)).double()
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.net(y)


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("rk4", 4), ("heun3", 3)])
def test_fixed_step_convergence_order(method, order):
    f = Linear()
    y0 = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = f.exact(y0, 1.0)
    hs = [0.1, 0.05, 0.025]
    errs = []
    for h in hs:
        with torch.no_grad():
            y = odeint(f, y0, [0.0, 1.0], method=method, options=dict(step_size=h))[-1]
        errs.append((y - exact).norm().item())
    slopes = [math.log(errs[i] / errs[i + 1]) / math.log(hs[i] / hs[i + 1]) for i in range(len(hs) - 1)]
    assert all(abs(s - order) < 0.25 for s in slopes), (method, slopes)


@pytest.mark.parametrize("rtol", [1e-3, 1e-5, 1e-7])
def test_dopri5_error_within_tolerance(rtol):
    f = Linear()
    y0 = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = odeint(f, y0, [0.0, 1.0], method="dopri5", rtol=rtol, atol=rtol * 1e-2)[-1]
    err = ((y - f.exact(y0, 1.0)).abs() / (rtol * 1e-2 + rtol * f.exact(y0, 1.0).abs())).max().item()
    assert err < 10.0  # global error stays within a small multiple of the local tolerance
    assert (y - f.exact(y0, 1.0)).abs().max().item() < 20 * rtol


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "dopri5", "bosh3"])
def test_native_matches_torchdiffeq(method):
    f = MLP()
    y0 = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out, nfe = {}, {}
    for backend in ("native", "torchdiffeq"):
        f.nfe = 0
        with torch.no_grad():
            out[backend] = odeint(f, y0, [0.0, 0.5, 1.0], method=method, rtol=1e-8, atol=1e-10, backend=backend, options=dict(step_size=0.05))
        nfe[backend] = f.nfe
    rel = ((out["native"] - out["torchdiffeq"]).norm() / out["torchdiffeq"].norm()).item()
    assert rel < 1e-5, rel  # both within their own global error of the true solution
    if method in ("euler", "midpoint", "rk4"):
        assert rel < 1e-12 and nfe["native"] == nfe["torchdiffeq"] == {"euler": 1, "midpoint": 2, "rk4": 4}[method] * 20


def _grads(f, y0, **settings):
    """Gradients of a loss on y(0.4) and y(1) through ``integrate`` under ``Solver.of(**settings)``."""
    from odenet.ode import Solver, integrate

    f.zero_grad()
    y0 = y0.clone().requires_grad_(True)
    ys = integrate(f, y0, [0.0, 0.4, 1.0], Solver.of(**settings)).ys
    (ys[1].sin().sum() + (ys[-1] ** 2).sum()).backward()
    return torch.cat([y0.grad.flatten()] + [p.grad.flatten() for p in f.parameters()])


@pytest.mark.parametrize("backend", ["native", "torchdiffeq"])
@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_adjoint_gradients_equal_direct_backprop(backend, method):
    f = MLP(seed=4)
    y0 = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    kw = dict(method=method, rtol=1e-10, atol=1e-12, step_size=0.01, backend=backend)
    g_adj = _grads(f, y0, adjoint=True, **kw)
    g_dir = _grads(f, y0, adjoint=False, **kw)
    rel = ((g_adj - g_dir).norm() / g_dir.norm()).item()
    assert rel < 1e-4, rel


def test_native_adjoint_matches_torchdiffeq_adjoint_and_seminorm():
    f = MLP(seed=6)
    y0 = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    kw = dict(method="dopri5", rtol=1e-9, atol=1e-11, adjoint=True)
    g_nat = _grads(f, y0, backend="native", **kw)
    g_tdq = _grads(f, y0, backend="torchdiffeq", **kw)
    g_semi = _grads(f, y0, backend="native", seminorm=True, **kw)
    ref = g_tdq.norm()
    assert ((g_nat - g_tdq).norm() / ref).item() < 1e-4
    assert ((g_semi - g_tdq).norm() / ref).item() < 1e-4


def test_seminorm_strictly_reduces_backward_evaluations():
    """The parameter adjoint (336 entries, growing along the solve) dominates the backward error norm here; the
    seminorm leaves it out: far fewer backward steps, the same gradients to the tolerance."""
    f = MLP(seed=8)
    y0 = torch.randn(16, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    counts, grads = [], []
    for semi in (False, True):
        f.zero_grad()
        y = odeint_adjoint(f, y0, [0.0, 2.0], method="dopri5", rtol=1e-6, atol=1e-8, adjoint_options=dict(norm="seminorm") if semi else None)[-1]
        f.nfe = 0
        y.pow(2).sum().backward()
        counts.append(f.nfe)
        grads.append(torch.cat([p.grad.reshape(-1) for p in f.parameters()]))
    assert counts[1] < 0.7 * counts[0], counts  # measured 26 vs 50
    assert ((grads[1] - grads[0]).norm() / grads[0].norm()).item() < 1e-4


def test_nfe_counts_follow_solver_stages():
    f = Linear()
    y0 = torch.randn(2, 4, dtype=torch.float64)
    for method, stages in (("euler", 1), ("midpoint", 2), ("rk4", 4)):
        f.nfe = 0
        y = odeint_adjoint(f, y0, [0.0, 1.0], method=method, options=dict(step_size=0.25))[-1]
        assert f.nfe == 4 * stages
        f.nfe = 0
        y.sum().backward()
        assert f.nfe == 4 * stages  # the adjoint pass retraces the same grid backwards
    f.nfe = 0
    with torch.no_grad():
        odeint(f, y0, [0.0, 1.0], method="dopri5")
    assert f.nfe >= 2 and (f.nfe - 2) % 6 == 0  # f0 + initial-step probe + 6 per (FSAL) step


class BlowUp(nn.Module):
    def forward(self, t, y):
        return y ** 2  # y(t) = 1 / (1 - t) blows up at t = 1


@pytest.mark.parametrize("backend", ["native", "torchdiffeq"])
def test_blow_up_fails_with_clear_error_not_hang(backend):
    y0 = torch.ones(1, dtype=torch.float64)
    with pytest.raises(SolverError, match="underflow|max_steps|max_num_steps"):
        odeint(BlowUp(), y0, [0.0, 2.0], method="dopri5", backend=backend, options=dict(max_num_steps=2000))


def test_max_steps_error():
    f = Linear()
    with pytest.raises(SolverError, match="max_steps"):
        odeint(f, torch.ones(1, 4, dtype=torch.float64), [0.0, 100.0], rtol=1e-10, atol=1e-12, options=dict(max_num_steps=5))


def test_bad_arguments():
    f = Linear()
    y0 = torch.ones(1, 4, dtype=torch.float64)
    with pytest.raises(SolverError, match="unknown solver"):
        odeint(f, y0, [0.0, 1.0], method="nope")
    with pytest.raises(SolverError, match="strictly increasing or strictly decreasing"):
        odeint(f, y0, [0.0, 1.0, 0.5])
    with pytest.raises(SolverError, match="step_size"):
        odeint(f, y0, [0.0, 1.0], method="rk4", options=dict(step_size=-0.1))


def test_torchdiffeq_only_method_falls_back():
    f = Linear()
    y0 = torch.randn(2, 4, dtype=torch.float64)
    with torch.no_grad():
        y = odeint(f, y0, [0.0, 1.0], method="dopri8", rtol=1e-9, atol=1e-11, backend="native")[-1]
    assert torch.allclose(y, f.exact(y0, 1.0), atol=1e-7)


def test_adaptive_error_control_follows_each_method_order():
    """Against the exact solution of dy/dt = A y: the controller keeps the global error proportional to rtol (slope
    1 +- 0.25 in log-log), and its cost follows the method's order, error ~ NFE^-p (p within 15%)."""
    import numpy as np

    from odenet.ode import TABLEAUS

    f = Linear(dim=4, seed=3)
    y0 = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = f.exact(y0, 2.0)
    # tolerances where each method takes enough steps for its asymptotic rate (adaptive_heun: at most 7,000 NFE)
    for method, digits in (("dopri5", range(4, 11)), ("bosh3", range(4, 10)), ("adaptive_heun", range(3, 8))):
        rtols = [10.0 ** -k for k in digits]
        errs, nfes = [], []
        for rtol in rtols:
            f.nfe = 0
            with torch.no_grad():
                y = odeint(f, y0, [0.0, 2.0], method=method, rtol=rtol, atol=rtol * 1e-3)[-1]
            errs.append(((y - exact).norm() / exact.norm()).item())
            nfes.append(f.nfe)
        assert all(a > b for a, b in zip(errs, errs[1:])), (method, errs)  # every tenfold cut of rtol helps
        per_rtol = np.polyfit(np.log(rtols), np.log(errs), 1)[0]
        per_nfe = -np.polyfit(np.log(nfes), np.log(errs), 1)[0]
        order = TABLEAUS[method].order
        assert 0.75 < per_rtol < 1.25, (method, per_rtol)
        assert abs(per_nfe - order) < 0.15 * order, (method, per_nfe, order)  # measured 5.24, 3.18, 2.05


def test_float32_adjoint_of_the_model_function_matches_torchdiffeq():
    """Training runs in float32: the model's own ODE function with its fused vjp, against torchdiffeq.odeint_adjoint.
    On the same rk4 grid the gradients agree to float32 rounding; with dopri5 at the seed's tolerances (both from
    the same first step) the engines' controllers differ (odenet lands its last step on T, torchdiffeq overshoots
    and interpolates) by 0.5%, the same in float64: float32 adds nothing to it."""
    import torchdiffeq

    from odenet.model import ODEFunc

    def rel_diff(method: str, options: dict, dtype: torch.dtype) -> float:
        torch.manual_seed(0)
        f = ODEFunc(64).to(dtype)
        z0 = torch.tanh(2 * torch.randn(32, 64)).to(dtype)
        w = torch.randn(32, 64).to(dtype)
        grads = []
        for ours in (True, False):
            f.zero_grad()
            z = z0.clone().requires_grad_(True)
            kw = dict(method=method, rtol=1e-3, atol=1e-4, options=dict(options))
            if ours:
                y = odeint_adjoint(f, z, [0.0, 1.0], **kw)[-1]  # ODEFunc.vjp: the fused adjoint
            else:
                y = torchdiffeq.odeint_adjoint(f, z, torch.tensor([0.0, 1.0], dtype=dtype),
                                               adjoint_params=tuple(f.parameters()), **kw)[-1]
            (y * w).sum().backward()
            assert z.grad.dtype == dtype
            grads.append(torch.cat([z.grad.reshape(-1)] + [p.grad.reshape(-1) for p in f.parameters()]))
        return ((grads[0] - grads[1]).norm() / grads[1].norm()).item()

    assert rel_diff("rk4", {"step_size": 0.1}, torch.float32) < 1e-5  # measured 2e-7
    d32 = rel_diff("dopri5", {"first_step": 0.05}, torch.float32)
    d64 = rel_diff("dopri5", {"first_step": 0.05}, torch.float64)
    assert d32 < 1e-2 and abs(d32 - d64) < 0.05 * d64, (d32, d64)


def test_tableau_builder_and_properties():
    from odenet.ode.tableaus import TABLEAUS, Tableau, _t

    t = _t("x", [0.0, 1.0], [[], [1.0]], [0.5, 0.5], 2, e=[0.5, -0.5], mid=[0.5, 0.0])
    assert t == Tableau("x", (0.0, 1.0), ((), (1.0,)), (0.5, 0.5), 2, (0.5, -0.5), (0.5, 0.0))
    assert t.stages == 2 and t.adaptive and not t.fsal
    plain = _t("y", [0.0], [[]], [1.0], 1)
    assert plain.e is None and plain.mid is None and not plain.adaptive
    for name, tab in TABLEAUS.items():  # consistency of every tableau: rows sum to their node, weights to one
        assert tab.name == name and len(tab.a) == tab.stages and len(tab.b) == tab.stages
        assert sum(tab.b) == pytest.approx(1.0)
        for c, row in zip(tab.c, tab.a):
            assert sum(row) == pytest.approx(c)
        if tab.adaptive:
            assert sum(tab.e) == pytest.approx(0.0, abs=1e-12) and len(tab.mid) == tab.stages
    assert sorted(n for n, tab in TABLEAUS.items() if tab.fsal) == ["bosh3", "dopri5"]


def test_a_non_finite_trial_step_is_retried_smaller():
    """dy/dt = -y, with f undefined (NaN) where |y| > 2: a first step of 10 sends the stages there, the error
    estimate is NaN, and the controller must shrink the step and go on, not grow it."""

    def f(t, y):
        return torch.where(y.abs() > 2, torch.full_like(y, float("nan")), -y)

    y0 = torch.ones(1, dtype=torch.float64)
    ys = odeint(f, y0, [0.0, 10.0], rtol=1e-8, atol=1e-12, options={"first_step": 10.0, "max_num_steps": 500})
    assert ys[-1].item() == pytest.approx(math.exp(-10.0), rel=1e-5)


@pytest.mark.parametrize("step", [0.0, -0.1, math.inf, math.nan])
def test_the_engine_itself_refuses_a_step_that_is_not_positive_and_finite(step):
    """The step controller the engine takes cannot hold such a step: one line, from the facade or the type."""
    from odenet.ode import StepController

    with pytest.raises(SolverError, match=r"^step_size must be a positive finite number, got"):
        StepController(step_size=step)
    with pytest.raises(SolverError, match=r"^step_size must be a positive finite number, got"):
        odeint(lambda t, y: -y, torch.ones(2, dtype=torch.float64), [0.0, 1.0], method="rk4",
               options=dict(step_size=step))


def test_max_num_steps_allows_exactly_that_many_steps():
    f = Linear()
    y0 = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    f.nfe = 0
    with torch.no_grad():
        odeint(f, y0, [0.0, 3.0], rtol=1e-6, atol=1e-8)
    steps = (f.nfe - 2) // 6  # f0, the first-step probe, then 6 per dopri5 step (FSAL)
    assert steps >= 5 and f.nfe == 2 + 6 * steps
    with torch.no_grad():
        odeint(f, y0, [0.0, 3.0], rtol=1e-6, atol=1e-8, options={"max_num_steps": steps})
        with pytest.raises(SolverError, match=rf"max_steps \({steps - 1}\) exceeded"):
            odeint(f, y0, [0.0, 3.0], rtol=1e-6, atol=1e-8, options={"max_num_steps": steps - 1})


def test_an_end_closer_than_the_time_dtype_resolves_is_reached():
    """float32 times: a step that stops 1e-8 short of t = 1 is at the end as far as float32 can tell; the solve
    returns its state there instead of attempting a step float32 cannot take."""
    y0 = torch.ones(3)
    ys = odeint(lambda t, y: torch.zeros_like(y), y0, torch.tensor([0.0, 1.0]), options={"first_step": 1 - 1e-8})
    assert ys.shape == (2, 3) and torch.equal(ys[-1], y0)


def test_float64_times_take_steps_float32_could_not_resolve():
    """At t = 1000 float32 resolves 6e-5; dy/dt = -1e5 y needs steps of ~3e-5, which float64 times must allow."""
    y0 = torch.ones(2, dtype=torch.float64)
    ys = odeint(lambda t, y: -1e5 * y, y0, torch.tensor([1000.0, 1000.001], dtype=torch.float64), rtol=1e-6,
                atol=1e-12)
    assert ys[-1].abs().max().item() < 1e-11  # exp(-100), to atol


def test_a_fixed_grid_longer_than_max_steps_is_refused_before_it_starts():
    from odenet.ode import Solver, integrate

    calls = []

    def f(t, y):
        calls.append(1)
        return -y

    y0 = torch.ones(2, dtype=torch.float64)
    with pytest.raises(SolverError, match=r"^solver rk4: a grid of 1000 steps exceeds max_steps \(999\)"):
        integrate(f, y0, [0.0, 1.0], Solver.of(method="rk4", step_size=1e-3, max_steps=999, adjoint=False))
    assert not calls
    ys = integrate(f, y0, [0.0, 1.0], Solver.of(method="rk4", step_size=1e-3, max_steps=1000, adjoint=False)).ys
    assert len(calls) == 4000 and torch.allclose(ys[-1], y0 * math.exp(-1.0))
    # odeint keeps torchdiffeq's contract: max_num_steps bounds adaptive methods only
    odeint(f, y0, [0.0, 1.0], method="rk4", options=dict(step_size=0.1, max_num_steps=1))
