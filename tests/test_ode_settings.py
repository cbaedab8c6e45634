"""The typed settings and what they reach: Solver / StepController / AdjointSpec, integrate's energy and statistics,
odeint_adjoint's torchdiffeq arguments, the choice of vjp, and the torchdiffeq backend driven by a Solver."""
import math

import pytest
import torch
import torchdiffeq
from torch import nn

from conftest import CallCounter, energy_reference
from odenet.errors import SolverError
from odenet.model import ODEFunc
from odenet.ode import AdjointSpec, Solver, Stats, StepController, integrate, odeint, odeint_adjoint


def small_func(seed=0):
    torch.manual_seed(seed)
    return ODEFunc(dim=6, hidden=8).double()


def grads_of(f, z0, loss):
    return torch.cat([z0.grad.reshape(-1)] + [p.grad.reshape(-1) for p in f.parameters()])


Augmented = energy_reference()


@pytest.mark.parametrize("path", ["fused vjp", "autograd vjp", "backprop"])
@pytest.mark.parametrize("ts", [[0.0, 1.0], [1.0, 0.0]])
def test_the_energy_and_its_gradient_on_every_path_and_in_either_direction(path, ts):
    """E = integral |f|^2 |dt| per sample, and the gradient of L = <w, z(T)> + 0.7 sum E, equal torchdiffeq's on the
    augmented state on the same rk4 grid (float64, to rounding); backwards in time the engine integrates in -t."""
    w = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z_init = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    settings = {"fused vjp": {}, "autograd vjp": dict(fused_vjp=False), "backprop": dict(adjoint=False)}[path]
    results = []
    for ours in (True, False):
        f = small_func()
        z0 = z_init.clone().requires_grad_(True)
        if ours:
            f.nfe = 0
            sol = integrate(f, z0, ts, Solver.of(method="rk4", step_size=0.1, **settings), energy=True)
            zT, energy = sol.ys[-1], sol.energy
        else:
            solve = torchdiffeq.odeint if path == "backprop" else torchdiffeq.odeint_adjoint
            zs, es = solve(Augmented(f), (z0, z0.new_zeros(3)), torch.tensor(ts, dtype=torch.float64), method="rk4",
                           options=dict(step_size=0.1))
            zT, energy = zs[-1], es[-1] * (1 if ts[1] > ts[0] else -1)
        ((zT * w).sum() + 0.7 * energy.sum()).backward()
        results.append((energy.detach(), grads_of(f, z0, None)))
    (e1, g1), (e2, g2) = results
    assert e1.shape == (3,) and (e1 > 0).all()
    torch.testing.assert_close(e1, e2, rtol=1e-12, atol=0)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12)


def test_an_unused_energy_changes_no_gradient():
    f = small_func()
    z0 = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    grads = []
    for energy in (False, True):
        f.zero_grad()
        z0.grad = None
        sol = integrate(f, z0, [0.0, 1.0], Solver.of(rtol=1e-8, atol=1e-10), energy=energy)
        sol.ys[-1].pow(2).sum().backward()
        grads.append(grads_of(f, z0, None))
    assert torch.equal(grads[0], grads[1])


def test_statistics_of_a_fixed_grid_forward_and_backward():
    f = small_func()
    z0 = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    sol = integrate(f, z0, [0.0, 1.0], Solver.of(method="rk4", step_size=0.25))
    s = sol.stats
    assert (s.nfe_forward, s.steps_forward, s.rejected_forward, s.nfe_backward) == (16, 4, 0, 0)
    sol.ys[-1].sum().backward()
    assert (s.nfe_backward, s.steps_backward, s.rejected_backward) == (16, 4, 0)
    assert s.vjp == "fused" and s.fast_forward  # the hand-written paths were the ones counted


class CountingVjp(nn.Module):
    """dy/dt = -k y with a hand-written vjp that counts its calls (and may refuse the kinetic cotangent)."""

    def __init__(self, takes_kinetic=True):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(0.1, dtype=torch.float64))
        self.calls = 0
        if not takes_kinetic:
            self.vjp = self._vjp_without_kinetic

    def forward(self, t, y):
        return -self.k * y + self.b

    def vjp(self, t, z, a, energy_cotangent=None):
        self.calls += 1
        fz = (-self.k * z + self.b).detach()
        cot = a if energy_cotangent is None else a + 2 * energy_cotangent * fz
        return fz, -self.k.detach() * cot, torch.stack([-(cot * z).sum(), cot.sum()])

    def _vjp_without_kinetic(self, t, z, a):
        return CountingVjp.vjp(self, t, z, a)


def test_the_fused_vjp_is_used_exactly_when_it_may_be():
    y0 = torch.ones(2, 3, dtype=torch.float64)
    reference = None
    for case in ("fused", "switched off", "reordered params", "a subset of params"):
        f = CountingVjp()
        params = {"reordered params": [f.b, f.k], "a subset of params": [f.k]}.get(case)
        spec = AdjointSpec(fused_vjp=case != "switched off", params=params)
        z0 = y0.clone().requires_grad_(True)
        ys = integrate(f, z0, [0.0, 1.0], Solver(method="rk4", controller=StepController(step_size=0.1),
                                                 adjoint=spec)).ys
        ys[-1].pow(2).sum().backward()
        assert (f.calls > 0) == (case == "fused"), case
        g = (z0.grad, f.k.grad, f.b.grad)
        if reference is None:
            reference = g
        assert torch.allclose(g[0], reference[0], rtol=1e-10) and torch.allclose(g[1], reference[1], rtol=1e-10)
        assert (f.b.grad is None) == (case == "a subset of params")
        if f.b.grad is not None:
            assert torch.allclose(g[2], reference[2], rtol=1e-10)


def test_a_vjp_that_cannot_take_the_kinetic_cotangent_serves_only_without_the_energy():
    f = CountingVjp(takes_kinetic=False)
    z0 = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    solver = Solver.of(method="rk4", step_size=0.1)
    integrate(f, z0, [0.0, 1.0], solver).ys[-1].sum().backward()
    assert f.k.grad is not None
    with pytest.raises(SolverError, match=r"^CountingVjp\.vjp must take energy_cotangent=\.\.\. for the kinetic energy's "
                                          r"gradient \(or switch the fused vjp off\)$"):
        integrate(f, z0, [0.0, 1.0], solver, energy=True)
    sol = integrate(f, z0, [0.0, 1.0], solver.replace(fused_vjp=False), energy=True)  # autograd's vjp takes it
    assert sol.energy.shape == (2,)


def test_odeint_adjoint_takes_torchdiffeqs_adjoint_arguments_natively_where_it_can():
    f = small_func()
    y0 = torch.randn(3, 6, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    kw = dict(rtol=1e-6, atol=1e-8)
    nfe = {}
    calls = CallCounter(f)
    for name, extra in (("full", {}), ("same adjoint tolerances and method", dict(
            adjoint_rtol=1e-6, adjoint_atol=1e-8, adjoint_method="dopri5")), ("seminorm", dict(
            adjoint_options={"norm": "seminorm"}))):
        odeint_adjoint(f, y0.clone().requires_grad_(True), t, **kw, **extra)[-1].sum().backward()
        nfe[name] = calls.take()
    assert nfe["same adjoint tolerances and method"] == nfe["full"] > nfe["seminorm"]
    refused = "^the native adjoint solves backward with the forward's method and tolerances; for other " \
              "adjoint_rtol/adjoint_atol/adjoint_method use backend='torchdiffeq'$"
    for extra in (dict(adjoint_rtol=1e-3), dict(adjoint_atol=1e-3), dict(adjoint_method="rk4")):
        with pytest.raises(SolverError, match=refused):
            odeint_adjoint(f, y0, t, **kw, **extra)
    for options in ({"norm": "max"}, {"norm": "seminorm", "perturb": True}, {"perturb": True}):
        with pytest.raises(SolverError, match=r"^adjoint_options .* not supported by the native engine \(it takes "
                                              r"\{'norm': 'seminorm'\}\); use backend='torchdiffeq'$"):
            odeint_adjoint(f, y0, t, adjoint_options=options)
    with pytest.raises(SolverError, match="^event_fn is not supported by the native engine"):
        odeint_adjoint(f, y0, t, event_fn=lambda t, y: y[0, 0])
    odeint_adjoint(f, y0, t, method="dopri8", adjoint_rtol=1e-3)  # torchdiffeq's method: its arguments are its own


def test_odeint_adjoint_hands_its_adjoint_arguments_to_torchdiffeq():
    extra = dict(adjoint_rtol=1e-9, adjoint_atol=1e-10, adjoint_method="bosh3", adjoint_options={"norm": "seminorm"})
    results = []
    for ours in (True, False):
        f = small_func()
        y0 = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
        t = torch.tensor([0.0, 1.0], dtype=torch.float64)
        call = (lambda: odeint_adjoint(f, y0, t, rtol=1e-5, atol=1e-7, backend="torchdiffeq", **extra)) if ours else \
            (lambda: torchdiffeq.odeint_adjoint(f, y0, t, rtol=1e-5, atol=1e-7, adjoint_params=tuple(f.parameters()),
                                                **extra))
        calls = CallCounter(f)
        call()[-1].pow(2).sum().backward()
        results.append((calls.n, y0.grad))
    assert results[0][0] == results[1][0] and torch.equal(results[0][1], results[1][1])


def test_the_torchdiffeq_backend_driven_by_a_solver_is_torchdiffeq_with_those_settings():
    f = small_func()
    y0 = torch.randn(3, 6, dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    cases = [(Solver.of(backend="torchdiffeq", method="rk4", step_size=0.25, adjoint=False),
              dict(method="rk4", options={"step_size": 0.25})),
             (Solver.of(backend="torchdiffeq", method="dopri5", rtol=1e-6, atol=1e-8, first_step=0.05, adjoint=False),
              dict(method="dopri5", rtol=1e-6, atol=1e-8, options={"first_step": 0.05}))]
    calls = CallCounter(f)
    for solver, kw in cases:
        sol = integrate(f, y0, [0.0, 0.5, 1.0], solver)
        ours_nfe = calls.take()
        theirs = torchdiffeq.odeint(f, y0, t, **kw)
        assert torch.equal(sol.ys, theirs) and ours_nfe == sol.stats.nfe_forward == calls.take() > 0
    with pytest.raises(SolverError, match="max_num_steps"):
        integrate(f, y0, t, Solver.of(backend="torchdiffeq", rtol=1e-10, atol=1e-12, max_steps=2, adjoint=False))
    nfe = []
    calls.take()
    for semi in (False, True):
        z = y0.clone().requires_grad_(True)
        sol = integrate(f, z, t, Solver.of(backend="torchdiffeq", rtol=1e-6, atol=1e-8, seminorm=semi))
        sol.ys[-1].sum().backward()
        nfe.append(calls.take())
        assert sol.stats.nfe_forward + sol.stats.nfe_backward == nfe[-1]  # one count on either engine
    assert nfe[1] < nfe[0]  # the AdjointSpec's seminorm reached torchdiffeq
    t32 = integrate(lambda t, y: (-y[0], -y[1]), (torch.ones(2), torch.ones(3)), [0.0, 1.0],
                    Solver.of(backend="torchdiffeq", method="rk4", step_size=0.5, adjoint=False)).ys
    assert t32[0].dtype == torch.float32 and t32[0][-1, 0].item() == pytest.approx(math.exp(-1), rel=1e-3)


def test_event_fn_reaches_torchdiffeq():
    """With backend="torchdiffeq", odeint takes torchdiffeq's event_fn: y = e^-t crosses 0.5 at t = ln 2."""
    y0 = torch.tensor([1.0], dtype=torch.float64)
    t0 = torch.tensor([0.0, 5.0], dtype=torch.float64)
    event_t, ys = odeint(lambda t, y: -y, y0, t0, event_fn=lambda t, y: y[0] - 0.5, backend="torchdiffeq",
                         rtol=1e-8, atol=1e-10)
    assert event_t.item() == pytest.approx(math.log(2), rel=1e-6) and ys[-1].item() == pytest.approx(0.5, rel=1e-6)

    class Decay(nn.Module):
        def __init__(self):
            super().__init__()
            self.k = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

        def forward(self, t, y):
            return -self.k * y

    event_t, _ = odeint_adjoint(Decay(), y0.clone().requires_grad_(), t0, event_fn=lambda t, y: y[0] - 0.5,
                                backend="torchdiffeq", rtol=1e-8, atol=1e-10)
    assert event_t.item() == pytest.approx(math.log(2), rel=1e-6)
    with pytest.raises(SolverError, match="^event_fn is not supported by the native engine"):
        odeint(lambda t, y: -y, y0, t0, event_fn=lambda t, y: y[0] - 0.5)  # never ignored


def test_options_a_kind_of_method_ignores_are_not_passed_on(recwarn):
    """torchdiffeq warns about options a solver does not take; odenet passes on only those that apply."""
    y0 = torch.ones(2, dtype=torch.float64)
    opts = {"step_size": 0.25, "first_step": 0.1, "max_num_steps": 100}
    for method in ("rk4", "dopri5"):
        for backend in ("native", "torchdiffeq"):
            odeint(lambda t, y: -y, y0, [0.0, 1.0], method=method, options=opts, backend=backend)
    assert not [w for w in recwarn.list if "nexpected" in str(w.message) or "unused" in str(w.message).lower()]


def test_solver_settings_map_onto_their_parts():
    s = Solver.of(method="rk4", step_size=0.2, max_steps=7, adjoint=False, seminorm=True, fused_vjp=False,
                  backend="torchdiffeq", rtol=1e-5, atol=1e-6, first_step=0.01)
    assert s.controller == StepController(rtol=1e-5, atol=1e-6, step_size=0.2, first_step=0.01, max_steps=7)
    assert s.adjoint == AdjointSpec(enabled=False, seminorm=True, fused_vjp=False)
    assert (s.method, s.backend, s.engine, s.adaptive) == ("rk4", "torchdiffeq", "torchdiffeq", False)
    assert Solver.of(**s.flat()) == s
    with pytest.raises(SolverError, match=r"^unknown solver setting\(s\) learning_rate, t_end; known: method, "
                                          r"backend, rtol, atol, step_size, first_step, max_steps, adjoint, seminorm, "
                                          r"fused_vjp$"):
        s.replace(t_end=2.0, learning_rate=0.1)
    for bad, msg in ((dict(rtol=-1), "rtol must be a finite number >= 0"), (dict(max_steps=0), "max_steps must be"),
                     (dict(adjoint="yes"), "enabled must be True or False"), (dict(method=3), "method must be"),
                     (dict(method="magic"), "unknown solver 'magic'")):
        with pytest.raises(SolverError, match=msg):
            Solver.of(**bad)


def test_a_single_output_time_and_the_statistics_without_the_adjoint():
    f = small_func()
    y0 = torch.randn(3, 6, dtype=torch.float64)
    sol = integrate(f, y0, [0.5], Solver.of(), energy=True)
    assert torch.equal(sol.ys, y0[None]) and torch.equal(sol.energy, torch.zeros(3, dtype=torch.float64))
    assert sol.stats == Stats()
    for grad in (False, True):  # no adjoint: forward counts only, with or without a graph
        with torch.set_grad_enabled(grad):
            s = integrate(f, y0.clone().requires_grad_(grad), [0.0, 1.0],
                          Solver.of(method="rk4", step_size=0.5, adjoint=False)).stats
        assert (s.nfe_forward, s.steps_forward, s.nfe_backward) == (8, 2, 0)


class RampWithVjp(nn.Module):
    """dy/dt = k (1 + t) y: time-dependent, so a vjp handed the wrong time shows; its vjp is autograd's."""

    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(0.6, dtype=torch.float64))

    def forward(self, t, y):
        return self.k * (1 + t) * y

    def vjp(self, t, z, a, energy_cotangent=None):
        from odenet.ode.adjoint import autograd_vjp

        return autograd_vjp(self, [self.k])(t, z, a, energy_cotangent)


def test_the_energys_gradient_backwards_in_time_through_a_given_vjp():
    """Decreasing times turn a given vjp around (time and kinetic cotangent): the same gradient as autograd's."""
    grads = []
    for fused in (True, False):
        f = RampWithVjp()
        y0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64, requires_grad=True)
        sol = integrate(f, y0, [1.4, 0.2], Solver.of(rtol=1e-10, atol=1e-12, fused_vjp=fused), energy=True)
        (sol.ys[-1].sum() + 0.3 * sol.energy.sum()).backward()
        grads.append(torch.cat([y0.grad.reshape(-1), f.k.grad.reshape(1)]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=0)
