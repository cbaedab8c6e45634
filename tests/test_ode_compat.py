"""``odenet.ode.odeint`` keeps torchdiffeq's contract: each case gives torchdiffeq's answer or a clear SolverError."""
import math

import pytest
import torch
import torchdiffeq
from torch import nn

from odenet.errors import SolverError
from odenet.ode import odeint, odeint_adjoint

ADAPTIVE = ["dopri5", "bosh3", "adaptive_heun"]
FIXED = ["euler", "midpoint", "rk4", "heun3"]


class Sine(nn.Module):
    """dy/dt = cos(t) y (non-autonomous): y(t) = y0 exp(sin t - sin t0). Uses ``t`` as a tensor."""

    def __init__(self):
        super().__init__()
        self.nfe = 0
        self.t_types = set()

    def forward(self, t, y):
        self.nfe += 1
        self.t_types.add((type(t).__name__, t.dim(), t.dtype, t.device.type))
        return torch.cos(t).expand(y.shape) * y

    @staticmethod
    def exact(y0, t0, t):
        return y0 * math.exp(math.sin(t) - math.sin(t0))


# --- known solutions per method and dtype ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ADAPTIVE + FIXED)
def test_known_solutions(method, dtype):
    y0 = torch.tensor([[1.0, -2.0, 0.5]], dtype=dtype)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=dtype)
    tight = dtype == torch.float64
    kw = dict(method=method, rtol=1e-8 if tight else 1e-6, atol=1e-10 if tight else 1e-8,
              options={"step_size": 0.01})
    tol = 2e-2 if method == "euler" else (2e-5 if tight else 2e-4)  # euler: first order at step 0.01
    # constant: dy/dt = 2
    ys = odeint(lambda t_, y: torch.full_like(y, 2.0), y0, t, **kw)
    assert ys.dtype == dtype and ys.shape == (3, 1, 3)
    assert torch.allclose(ys[-1], y0 + 3.0, atol=tol * 10)
    # linear: dy/dt = -y
    ys = odeint(lambda t_, y: -y, y0, t, **kw)
    assert torch.allclose(ys[-1], y0 * math.exp(-1.5), rtol=tol, atol=tol)
    # sine: dy/dt = cos(t) y, with t a tensor inside func
    f = Sine()
    ys = odeint(f, y0, t, **kw)
    assert torch.allclose(ys[1], Sine.exact(y0, 0.0, 0.7), rtol=tol, atol=tol)
    assert torch.allclose(ys[2], Sine.exact(y0, 0.0, 1.5), rtol=tol, atol=tol)
    assert f.t_types == {("Tensor", 0, dtype, "cpu")}


@pytest.mark.parametrize("method", ADAPTIVE + FIXED)
def test_matches_torchdiffeq_with_time_dependent_func(method):
    y0 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.0, 2.0, 7, dtype=torch.float64)
    kw = dict(method=method, rtol=1e-6, atol=1e-8, options={"step_size": 0.05} if method in FIXED else None)
    ours = odeint(Sine(), y0, t, **kw)
    ref = torchdiffeq.odeint(Sine(), y0, t, **kw)
    if method in FIXED:  # the same grid and steps
        assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-14), (ours - ref).abs().max()
    else:  # the same controller; the last step differs (odenet lands on t[-1]): as close to the exact solution
        exact = torch.stack([Sine.exact(y0, 0.0, float(x)) for x in t])
        assert (ours - exact).abs().max() <= 2 * (ref - exact).abs().max() + 1e-10


# --- gradients ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("adjoint", [False, True])
@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_gradient_with_respect_to_times(method, adjoint):
    """y(t) = y0 exp(sin t - sin t0): dL/dT = cos(T) y(T), dL/dt0 = -cos(t0) y(T) for L = sum y(T)."""
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    t = torch.tensor([0.3, 1.1, 2.0], dtype=torch.float64, requires_grad=True)
    ys = (odeint_adjoint if adjoint else odeint)(Sine(), y0, t, method=method, rtol=1e-10, atol=1e-12, options={"step_size": 1e-3})
    ys[-1].sum().backward()
    yT = Sine.exact(y0, 0.3, 2.0).sum().item()
    expected = torch.tensor([-math.cos(0.3) * yT, 0.0, math.cos(2.0) * yT], dtype=torch.float64)
    assert torch.allclose(t.grad, expected, rtol=1e-6, atol=1e-8), (t.grad, expected)
    # against torchdiffeq's adaptive solver's time gradient, on a loss that uses the middle output too.
    # (torchdiffeq's fixed-grid direct gradient differentiates its grid instead: 0 for an output time that
    # lies on the grid. odenet gives every method the gradient of the exact solution.)
    t.grad = None
    y0g = y0.clone().requires_grad_(True)
    loss = lambda ys_: (ys_[1] ** 2).sum() + ys_[2].sin().sum()  # noqa: E731
    loss((odeint_adjoint if adjoint else odeint)(Sine(), y0g, t, method=method, rtol=1e-10, atol=1e-12, options={"step_size": 1e-3})).backward()
    ours = torch.cat([t.grad, y0g.grad])
    t2 = t.detach().clone().requires_grad_(True)
    y02 = y0.clone().requires_grad_(True)
    loss(torchdiffeq.odeint(Sine(), y02, t2, method="dopri5", rtol=1e-10, atol=1e-12)).backward()
    assert torch.allclose(ours, torch.cat([t2.grad, y02.grad]), rtol=1e-5, atol=1e-7)


def test_gradcheck_y0_and_parameters_direct_and_adjoint():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    y0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    # direct backprop through fixed-step rk4 is the exact derivative of the discrete solution
    assert torch.autograd.gradcheck(lambda y: odeint(lambda t_, z: net(z), y, [0.0, 0.5, 1.0], method="rk4",
                                                     options={"step_size": 0.1}), (y0,))
    # parameters: the adjoint's gradient equals direct backprop's at tight tolerances
    grads = {}
    for adjoint in (False, True):
        net.zero_grad()
        y0c = y0.detach().clone().requires_grad_(True)
        ys = (odeint_adjoint if adjoint else odeint)(net_module(net), y0c, [0.0, 0.5, 1.0], method="dopri5", rtol=1e-10, atol=1e-12)
        (ys ** 2).sum().backward()
        grads[adjoint] = torch.cat([y0c.grad.flatten()] + [p.grad.flatten() for p in net.parameters()])
    assert torch.allclose(grads[True], grads[False], rtol=1e-6, atol=1e-8)


def net_module(net):
    class F(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y)

    return F()


def test_params_without_requires_grad_are_filtered():
    f = net_module(nn.Linear(3, 3).double())
    frozen = torch.ones(3, dtype=torch.float64)  # requires_grad False
    y0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    ys = odeint_adjoint(f, y0, [0.0, 1.0], adjoint_params=list(f.parameters()) + [frozen])
    ys[-1].sum().backward()
    assert y0.grad is not None and f.net.weight.grad is not None and frozen.grad is None


# --- dtypes and states -------------------------------------------------------------------------------------------

def test_integer_y0_is_refused():
    with pytest.raises(SolverError, match="floating-point or complex"):
        odeint(lambda t, y: y, torch.ones(3, dtype=torch.int64), [0.0, 1.0], method="rk4",
               options={"step_size": 0.1})


def test_func_output_is_cast_to_the_state_dtype():
    y0 = torch.ones(2, 3, dtype=torch.float32)
    ys = odeint(lambda t, y: -y.double(), y0, [0.0, 1.0], method="rk4", options={"step_size": 0.01})
    assert ys.dtype == torch.float32 and torch.allclose(ys[-1], y0 * math.exp(-1), rtol=1e-5)


def test_tuple_state():
    """Harmonic oscillator as (x, v): x = cos t, v = -sin t; gradients reach both parts."""
    x0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    v0 = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    for adjoint in (False, True):
        kw = dict(adjoint_params=()) if adjoint else {}
        xs, vs = (odeint_adjoint if adjoint else odeint)(lambda t, s: (s[1], -s[0]), (x0, v0), torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), **kw)
        assert xs.shape == (3, 1) and vs.shape == (3, 1)
        assert torch.allclose(xs[:, 0], torch.cos(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)), atol=1e-6)
        assert torch.allclose(vs[-1], -torch.tensor([math.sin(2.0)], dtype=torch.float64), atol=1e-6)
        x0.grad = v0.grad = None
        xs[-1].sum().backward()
        assert torch.allclose(x0.grad, torch.tensor([math.cos(2.0)], dtype=torch.float64), atol=1e-6)
        assert torch.allclose(v0.grad, torch.tensor([math.sin(2.0)], dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "rk4"])
def test_complex_state(method):
    y0 = torch.tensor([1.0 + 0.5j, -0.3j], dtype=torch.complex128)
    t = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    kw = dict(method=method, rtol=1e-9, atol=1e-11, options={"step_size": 0.01} if method == "rk4" else None)
    ys = odeint(lambda t_, y: 1j * y, y0, t, **kw)
    assert ys.dtype == torch.complex128
    assert torch.allclose(ys[-1], y0 * complex(math.cos(3.0), math.sin(3.0)), atol=1e-7)
    assert torch.allclose(ys, torchdiffeq.odeint(lambda t_, y: 1j * y, y0, t, **kw), atol=1e-8)


@pytest.mark.parametrize("adjoint", [False, True])
def test_decreasing_times(adjoint):
    y0 = torch.tensor([1.0, 3.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    ys = (odeint_adjoint if adjoint else odeint)(Sine(), y0, t, rtol=1e-10, atol=1e-12)
    assert torch.allclose(ys[-1], Sine.exact(y0.detach(), 2.0, 0.0), rtol=1e-7)
    ref = torchdiffeq.odeint(Sine(), y0.detach(), t, rtol=1e-10, atol=1e-12)
    assert torch.allclose(ys.detach(), ref, rtol=1e-7)
    ys[-1].sum().backward()
    assert torch.allclose(y0.grad, torch.full((2,), math.exp(math.sin(0.0) - math.sin(2.0)), dtype=torch.float64),
                          rtol=1e-6)


# --- time grids, limits, dense output ----------------------------------------------------------------------------

def test_tiny_intervals_solve_without_underflow():
    y0 = torch.tensor([1.0], dtype=torch.float64)
    ys = odeint(lambda t, y: -y, y0, torch.tensor([0.0, 1e-13], dtype=torch.float64))
    assert torch.allclose(ys[-1], y0 * math.exp(-1e-13), rtol=0, atol=1e-15)
    # an output time within 1e-12 of another one
    t = torch.tensor([0.0, 0.5, 0.5 + 1e-13, 1.0], dtype=torch.float64)
    ys = odeint(lambda t_, y: -y, y0, t)
    assert torch.allclose(ys[:, 0], torch.exp(-t), rtol=1e-6)


def test_no_default_step_limit():
    """cos(50 t) on [0, 60] at rtol 1e-8 takes over 10,000 steps; like torchdiffeq, no limit unless one is set."""
    y0 = torch.zeros(1, dtype=torch.float64)
    steps = {"n": 0}

    def f(t, y):
        steps["n"] += 1
        return torch.cos(50 * t).reshape(1)

    ys = odeint(f, y0, torch.tensor([0.0, 60.0], dtype=torch.float64), rtol=1e-8, atol=1e-10)
    assert steps["n"] > 6 * 10_000  # dopri5: 6 evaluations a step
    assert abs(ys[-1].item() - math.sin(3000.0) / 50) < 1e-7
    with pytest.raises(SolverError, match="max_steps"):
        odeint(f, y0, [0.0, 60.0], options={"max_num_steps": 100})


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_dense_output_matches_torchdiffeq_at_no_extra_cost(method):
    torch.manual_seed(1)
    f = net_module(nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4)).double())
    counter = {"n": 0}

    def func(t, y):
        counter["n"] += 1
        return f(t, y)

    y0 = torch.randn(3, 4, dtype=torch.float64)
    many = torch.linspace(0.0, 2.0, 50, dtype=torch.float64)
    kw = dict(method=method, rtol=1e-6, atol=1e-8, options={"first_step": 0.01})  # the same first step
    with torch.no_grad():
        ours = odeint(func, y0, many, **kw)
        n_many = counter["n"]
        counter["n"] = 0
        two = odeint(func, y0, many[[0, -1]], **kw)
        n_two = counter["n"]
        counter["n"] = 0
        ref = torchdiffeq.odeint(func, y0, many, **kw)
        n_ref = counter["n"]
    assert n_many == n_two  # dense output: no step is forced onto the 48 inner times
    assert n_many <= n_ref  # torchdiffeq overshoots the end and interpolates back; odenet lands on it
    assert torch.equal(ours[-1], two[-1])
    # as close to the exact solution as torchdiffeq's
    with torch.no_grad():
        exact = torchdiffeq.odeint(func, y0, many, rtol=1e-13, atol=1e-13)
    assert (ours - exact).abs().max() <= 1.5 * (ref - exact).abs().max() + 1e-12
    # the same controller and interpolant: until the last step (which odenet shortens to end on t[-1] while
    # torchdiffeq overshoots it; here it starts after t = 1.1) the values agree to rounding
    inner = many < 1.1
    assert torch.allclose(ours[inner], ref[inner], rtol=1e-10, atol=1e-12), (ours - ref)[inner].abs().max()


def test_fixed_grid_that_does_not_divide_output_times():
    y0 = torch.tensor([1.0], dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 0.5], dtype=torch.float64)
    for method in FIXED:
        ours = odeint(lambda t_, y: -y, y0, t, method=method, options={"step_size": 0.1})
        ref = torchdiffeq.odeint(lambda t_, y: -y, y0, t, method=method, options={"step_size": 0.1})
        assert torch.allclose(ours, ref, rtol=1e-12), (method, ours, ref)
    # without a step size a fixed-step method steps on t itself (torchdiffeq's rule)
    ours = odeint(lambda t_, y: -y, y0, t, method="euler")
    assert torch.allclose(ours[:, 0], torch.tensor([1.0, 0.75, 0.5625], dtype=torch.float64))


# --- bad input: one clear line each -------------------------------------------------------------------------------

@pytest.mark.parametrize("call,msg", [
    (lambda: odeint(lambda t, y: y, torch.ones(2), [0.0, 1.0], method="rk4", options={"step_size": math.inf}),
     "step_size must be a positive finite"),
    (lambda: odeint(lambda t, y: y, torch.ones(2), [0.0, 1.0], method="rk4", options={"step_size": math.nan}),
     "step_size must be a positive finite"),
    (lambda: odeint(lambda t, y: y, torch.ones(2), [0.0, 1.0], method="rk4", options={"step_size": 0}),
     "step_size must be a positive finite"),
    (lambda: odeint(lambda t, y: y, torch.ones(2), [0.0, math.nan]), "finite times"),
    (lambda: odeint(lambda t, y: y, torch.ones(2), [0.0, 1.0, 1.0]), "strictly increasing or strictly decreasing"),
    (lambda: odeint(lambda t, y: y, torch.ones(2), torch.tensor([0, 1])), "floating-point tensor"),
    (lambda: odeint(lambda t, y: y, torch.ones(2), torch.zeros(2, 2)), "one-dimensional"),
    (lambda: odeint(lambda t, y: y, [1.0, 2.0], [0.0, 1.0]), "tuple y0 must hold tensors"),
    (lambda: odeint(lambda t, y: y, torch.ones(2), [0.0, 1.0], rtol=-1.0), "rtol must be a finite number >= 0"),
    (lambda: odeint(lambda t, y: y, torch.ones(2), [0.0, 1.0], options={"perturb": True}), "perturb"),
    (lambda: odeint(lambda t, y: y[:1], torch.ones(2), [0.0, 1.0]), "func returned shape"),
    (lambda: odeint(lambda t, y: y, torch.ones(2), [0.0, 1.0], method="magic"), "unknown solver"),
    (lambda: odeint_adjoint(lambda t, y: y, torch.ones(2, dtype=torch.complex64), [0.0, 1.0], adjoint_params=[nn.Parameter(torch.ones(1))]), "complex states with adjoint gradients"),
    (lambda: odeint(lambda t, y: y, torch.ones(2), [0.0, 1.0], options={"max_num_steps": 0}), "max_num_steps"),
])
def test_bad_input_is_one_line_solver_error(call, msg):
    with pytest.raises(SolverError, match=msg) as e:
        call()
    assert len(str(e.value).splitlines()) == 1


# --- the facade's own paths: odeint_adjoint, the torchdiffeq backend, tuples ------------------------------------

class Decay(nn.Module):
    """dy/dt = -k y with a learnable k: a module (the torchdiffeq adjoint needs one) with an exact gradient."""

    def __init__(self, k=0.7, dtype=torch.float64):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k, dtype=dtype))
        self.other = nn.Parameter(torch.tensor(1.0, dtype=dtype))  # unused by forward
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return -self.k * y


class Pair(nn.Module):
    """A tuple state (x, v) with dx/dt = f(t, x), dv/dt = -v; its parts returned in ``dtype`` if given."""

    def __init__(self, f, dtype=None):
        super().__init__()
        self.f, self.dtype = f, dtype

    def forward(self, t, s):
        parts = self.f(t, s[0]), -s[1]
        return parts if self.dtype is None else tuple(p.to(self.dtype) for p in parts)


def test_odeint_adjoint_has_torchdiffeqs_defaults_and_positional_arguments():
    f = Decay()
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ours = odeint_adjoint(f, y0, t)
    f.nfe = 0
    theirs = torchdiffeq.odeint_adjoint(f, y0, t)
    exact = y0.detach() * math.exp(-0.7)
    err_ours = ((ours[-1] - exact).abs() / exact).max().item()
    err_theirs = ((theirs[-1] - exact).abs() / exact).max().item()
    assert err_ours < 1e-7 and err_ours < 10 * err_theirs  # rtol 1e-7, atol 1e-9, dopri5 by default
    f.nfe = 0
    ys = odeint_adjoint(f, y0, t, 1e-3, 1e-4, "rk4", {"step_size": 0.25})
    assert f.nfe == 16  # rk4 with 4 steps: method and options taken positionally
    ys[-1].sum().backward()
    assert f.nfe == 32 and f.k.grad is not None  # the adjoint pass retraced the grid
    assert f.k.grad.item() == pytest.approx(-(3.0 * math.exp(-0.7)), rel=1e-4)  # d/dk of sum(y0) exp(-k)
    f.k.grad = None
    ys = odeint_adjoint(f, y0, t, adjoint_params=[f.other])
    ys[-1].sum().backward()
    assert f.k.grad is None and f.other.grad.item() == 0.0  # only the parameters asked for


def test_is_adaptive_knows_torchdiffeqs_methods():
    from odenet.ode import is_adaptive

    assert [is_adaptive(m) for m in ("dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8")] == [True] * 5
    assert [is_adaptive(m) for m in ("rk4", "euler", "explicit_adams", "implicit_adams", "no-such")] == [False] * 5


@pytest.mark.parametrize("adjoint, seminorm", [(False, False), (True, False), (True, True)])
def test_torchdiffeq_backend_is_torchdiffeq_itself(adjoint, seminorm):
    """backend="torchdiffeq": the same numbers, NFE and gradients as calling torchdiffeq with the same arguments."""
    from test_ode import MLP

    results = []
    for ours in (True, False):
        f = MLP(seed=3)
        y0 = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4), requires_grad=True)
        t = torch.tensor([0.0, 0.5, 1.5], dtype=torch.float64)
        kw = dict(rtol=1e-4, atol=1e-6, method="bosh3", options={"first_step": 0.1})
        if ours:
            ys = (odeint_adjoint(f, y0, t, backend="torchdiffeq", adjoint_options=dict(norm="seminorm") if seminorm
                                 else None, **kw) if adjoint else odeint(f, y0, t, backend="torchdiffeq", **kw))
        elif adjoint:
            ys = torchdiffeq.odeint_adjoint(f, y0, t, adjoint_options={"norm": "seminorm"} if seminorm else None,
                                            adjoint_params=tuple(f.parameters()), **kw)
        else:
            ys = torchdiffeq.odeint(f, y0, t, **kw)
        nfe_f, f.nfe = f.nfe, 0
        ys.pow(2).sum().backward()
        results.append((ys.detach(), nfe_f, f.nfe, y0.grad, [p.grad for p in f.parameters()]))
    (a, fa, ba, ga, pa), (b, fb, bb, gb, pb) = results
    assert torch.equal(a, b) and fa == fb and ba == bb and torch.equal(ga, gb)
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))


def test_torchdiffeq_backend_details():
    f = Decay()
    y0 = torch.ones(2, dtype=torch.float64)
    # a list of times becomes a tensor of the state's precision; the fixed-step setting is dropped for adaptive ones
    ys = odeint(f, y0, [0.0, 1.0], method="dopri5", backend="torchdiffeq", rtol=1e-9, atol=1e-11, options=dict(step_size=0.5))
    assert ys.dtype == torch.float64 and ys[-1][0].item() == pytest.approx(math.exp(-0.7), rel=1e-8)
    ys32 = odeint(Decay(dtype=torch.float32), y0.float(), [0.0, 1.0], method="rk4", backend="torchdiffeq", options=dict(step_size=0.5))
    assert ys32.dtype == torch.float32
    f.nfe = 0
    odeint(f, y0, [0.0, 1.0], method="rk4", backend="torchdiffeq", options=dict(step_size=0.25))
    assert f.nfe == 16  # the step size reaches a fixed-step method
    with pytest.raises(SolverError, match="^under the adjoint a func that is not a torch.nn.Module needs"):
        odeint_adjoint(lambda t, y: -y, y0.requires_grad_(), [0.0, 1.0], backend="torchdiffeq")
    with pytest.raises(SolverError, match=r"solver dopri5 \(torchdiffeq\): ") as e:
        odeint(lambda t, y: y ** 2, torch.ones(1, dtype=torch.float64), [0.0, 2.0], backend="torchdiffeq")
    assert len(str(e.value).splitlines()) == 1
    with pytest.raises(SolverError, match="unknown backend"):
        odeint(f, y0, [0.0, 1.0], backend="jax")


def test_tuple_states_are_checked_and_differentiate_parameters():
    f = Decay()

    def pair(t, s):
        return f(t, s[0]), -s[1]

    x0, v0 = torch.ones(2, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    with pytest.raises(SolverError, match="share one dtype"):
        odeint(pair, (x0, v0.float()), [0.0, 1.0])
    with pytest.raises(SolverError, match="must return a tuple of 2 tensors"):
        odeint(lambda t, s: s[0], (x0, v0), [0.0, 1.0])
    with pytest.raises(SolverError, match="floating-point or complex"):
        odeint(pair, (x0.long(), torch.ones(3, dtype=torch.long)), [0.0, 1.0])

    xs, vs = odeint_adjoint(Pair(f), (x0, v0), [0.0, 0.5, 1.0], rtol=1e-9, atol=1e-11)
    assert xs.shape == (3, 2) and vs.shape == (3, 3)
    assert torch.allclose(vs[-1], v0 * math.exp(-1.0), rtol=1e-7)
    xs[-1].sum().backward()  # the adjoint reaches the module's parameters by default, as for plain states
    assert f.k.grad.item() == pytest.approx(-2.0 * math.exp(-0.7), rel=1e-5)


class Ramp(nn.Module):
    """dy/dt = k (1 + t) y: neither even nor odd in t, so a sign slip in time shows (cos t, being even, hides it).
    y(t) = y0 exp(k (t + t^2/2 - t0 - t0^2/2))."""

    def __init__(self, k=0.6):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k, dtype=torch.float64))
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.k * (1 + t) * y

    def exponent(self, t0, t1):
        return self.k.item() * (t1 + t1 ** 2 / 2 - t0 - t0 ** 2 / 2)


@pytest.mark.parametrize("adjoint", [False, True])
@pytest.mark.parametrize("t0, t1", [(0.2, 1.4), (1.4, 0.2)])
def test_time_dependent_dynamics_forwards_and_backwards_in_time(adjoint, t0, t1):
    f = Ramp()
    y0 = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    ys = (odeint_adjoint if adjoint else odeint)(f, y0, [t0, t1], rtol=1e-10, atol=1e-12)
    e = f.exponent(t0, t1)
    assert torch.allclose(ys[-1], y0.detach() * math.exp(e), rtol=1e-8)
    ys[-1].sum().backward()
    assert torch.allclose(y0.grad, torch.full((2,), math.exp(e), dtype=torch.float64), rtol=1e-7)
    de_dk = e / f.k.item()
    assert f.k.grad.item() == pytest.approx(-1.0 * math.exp(e) * de_dk, rel=1e-6)  # sum(y0) = -1


def test_autograd_adjoint_of_a_function_that_ignores_the_state():
    """dz/dt = theta (no z in it): autograd gives no gradient for z, which the adjoint must read as zero."""
    theta = nn.Parameter(torch.tensor([0.5, -1.0], dtype=torch.float64))
    z0 = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    zs = odeint_adjoint(lambda t, z: theta.expand_as(z), z0, [0.0, 2.0], adjoint_params=[theta])
    assert torch.allclose(zs[-1], 2.0 * theta.detach())
    zs[-1].sum().backward()
    assert torch.equal(z0.grad, torch.ones(2, dtype=torch.float64))
    assert torch.allclose(theta.grad, torch.full((2,), 2.0, dtype=torch.float64))


def test_tuple_states_keep_time_dtype_method_and_the_adjoint():
    f = Ramp()

    x0 = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    v0 = torch.ones(3, dtype=torch.float64)
    f.nfe = 0
    # float32 parts for a float64 state: cast back
    xs, vs = odeint_adjoint(Pair(f, torch.float32), (x0, v0), [0.0, 1.0], method="rk4", options={"step_size": 0.001})
    assert f.nfe == 4000 and xs.dtype == torch.float64  # rk4's 1000 steps: the method and its options reach it
    assert torch.allclose(xs[-1], x0.detach() * math.exp(f.exponent(0.0, 1.0)), rtol=1e-6)
    f.nfe = 0
    xs[-1].sum().backward()
    assert f.nfe == 4000  # the adjoint pass, not backpropagation through the stored steps
    assert f.k.grad.item() == pytest.approx(3.0 * math.exp(f.exponent(0.0, 1.0)) * 1.5, rel=1e-5)


def test_torchdiffeq_backend_keeps_the_contract_on_times_tuples_and_parameters():
    import warnings

    s = Sine()
    odeint(s, torch.ones(2, dtype=torch.float32), [0.0, 1.0], backend="torchdiffeq", method="rk4", options=dict(step_size=0.5))
    assert s.t_types == {("Tensor", 0, torch.float32, "cpu")}  # t in the state's precision
    xs, vs = odeint(lambda t, p: (p[1], -p[0]), (torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)),
                    [0.0, 1.0], backend="torchdiffeq", rtol=1e-9, atol=1e-11)
    assert xs.dtype == torch.float64 and xs[-1].item() == pytest.approx(math.cos(1.0), rel=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchdiffeq warns about options a method does not use
        odeint(Decay(), torch.ones(2, dtype=torch.float64), [0.0, 1.0], method="dopri5", backend="torchdiffeq", options=dict(step_size=0.1))
    f = Decay()
    f.other.requires_grad_(False)
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    ys = odeint_adjoint(f, y0, [0.0, 1.0], backend="torchdiffeq", adjoint_params=[f.k, f.other])
    ys[-1].sum().backward()  # the frozen parameter is left out, as in odenet's engine
    assert f.k.grad is not None and f.other.grad is None
    f2 = Decay()
    ys = odeint_adjoint(f2, torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64),
                        adjoint_params=[f2.other], backend="torchdiffeq")  # keyword settings reach odeint
    ys[-1].sum().backward()
    assert f2.k.grad is None and f2.other.grad.item() == 0.0


def test_time_gradients_of_complex_states():
    """y = y0 exp(lam (t - t0)), L = sum |y(T)|^2: dL/dT = 2 Re(lam) L, dL/dt0 = -2 Re(lam) L."""
    lam = 0.3 + 1.0j
    y0 = torch.tensor([1.0 + 0.5j, -0.3j], dtype=torch.complex128)
    t = torch.tensor([0.2, 1.5], dtype=torch.float64, requires_grad=True)
    ys = odeint(lambda t_, y: lam * y, y0, t, rtol=1e-10, atol=1e-12)
    loss = (ys[-1].abs() ** 2).sum()
    loss.backward()
    expected = torch.tensor([-2 * lam.real, 2 * lam.real], dtype=torch.float64) * loss.item()
    assert torch.allclose(t.grad, expected, rtol=1e-7)


def test_time_gradients_call_func_with_the_states_precision():
    """float32 state, float64 times: func sees float32 t on every call (backward included), t.grad stays float64."""
    s = Sine()
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float32)
    t = torch.tensor([0.3, 2.0], dtype=torch.float64, requires_grad=True)
    ys = odeint(s, y0, t, rtol=1e-6, atol=1e-8)
    ys[-1].sum().backward()
    assert s.t_types == {("Tensor", 0, torch.float32, "cpu")}
    assert t.grad.dtype == torch.float64
    yT = Sine.exact(y0.double(), 0.3, 2.0).sum().item()
    assert t.grad.tolist() == pytest.approx([-math.cos(0.3) * yT, math.cos(2.0) * yT], rel=1e-4)


def test_the_given_vjp_is_the_one_the_adjoint_uses():
    from odenet.ode.adjoint import autograd_vjp

    calls = []

    class WithVjp(Decay):
        def vjp(self, t, z, a, energy_cotangent=None):
            calls.append(1)
            return autograd_vjp(self, [self.k, self.other])(t, z, a)

    f = WithVjp()
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    ys = odeint_adjoint(f, y0, [0.0, 1.0], method="rk4", options=dict(step_size=0.25))
    ys[-1].sum().backward()
    assert len(calls) == 16 and f.k.grad.item() == pytest.approx(-2 * math.exp(-0.7), rel=1e-4)


def test_adjoint_without_parameters():
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    with pytest.raises(SolverError, match=r"adjoint_params \(\(\) if it has none\)"):  # torchdiffeq's rule
        odeint_adjoint(lambda t, y: -y, y0, [0.0, 1.0])
    ys = odeint_adjoint(lambda t, y: -y, y0, [0.0, 1.0], rtol=1e-10, atol=1e-12, adjoint_params=())
    ys[-1].sum().backward()
    assert torch.allclose(y0.grad, torch.full((2,), math.exp(-1.0), dtype=torch.float64), rtol=1e-8)


def test_keyword_settings_reach_odeint_adjoint_and_tuples_keep_their_adjoint_params():
    f = Decay()
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    f.nfe = 0
    odeint_adjoint(f, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), method="rk4", options=dict(step_size=0.25))
    assert f.nfe == 16  # the keyword step size, not a single step over t

    f.k.grad = f.other.grad = None
    xs, _ = odeint_adjoint(Pair(f), (y0, torch.ones(1, dtype=torch.float64)), [0.0, 1.0], adjoint_params=[f.other])
    xs[-1].sum().backward()
    assert f.k.grad is None and f.other.grad is not None  # the caller's list, not the module's parameters


def test_tolerances_as_tensors_and_what_the_engine_refuses():
    y0 = torch.ones(2, dtype=torch.float64)
    ys = odeint(lambda t, y: -y, y0, [0.0, 1.0], rtol=torch.tensor(1e-9), atol=torch.tensor(1e-11))
    assert ys[-1][0].item() == pytest.approx(math.exp(-1), rel=1e-8)  # a scalar tensor is a number
    with pytest.raises(SolverError, match="^rtol cannot require gradient$"):
        odeint(lambda t, y: -y, y0, [0.0, 1.0], rtol=torch.tensor(1e-6, requires_grad=True))
    with pytest.raises(SolverError, match="^atol must be a scalar for the native engine"):
        odeint(lambda t, y: -y, y0, [0.0, 1.0], atol=torch.tensor([1e-6, 1e-7]))
    with pytest.raises(SolverError, match="^func must return a tensor, got list$"):
        odeint(lambda t, y: [1.0, 2.0], y0, [0.0, 1.0])


def test_a_single_time_and_zero_tolerances_are_allowed():
    y0 = torch.ones(2, dtype=torch.float64)
    assert torch.equal(odeint(lambda t, y: -y, y0, [0.5]), y0[None])  # torchdiffeq returns y0 for one time
    ys = odeint(lambda t, y: -y, y0, [0.0, 1.0], rtol=0.0, atol=1e-10)  # a pure absolute tolerance
    assert ys[-1][0].item() == pytest.approx(math.exp(-1), rel=1e-8)


@pytest.mark.parametrize("call, msg", [
    (lambda: odeint(lambda t, y: y, torch.ones(2), [0.0, 1.0], atol=-1.0), "^atol must be a finite number >= 0"),
    (lambda: odeint(lambda t, y: y, torch.ones(2), [0.0, 1.0], options={"first_step": math.inf}),
     "^first_step must be a positive finite number, got inf$"),
    (lambda: odeint(lambda t, y: y, torch.ones(2), [0.0, 1.0], options={"first_step": 0.0}),
     "^first_step must be a positive finite number, got 0.0$"),
    (lambda: odeint(lambda t, y: y, torch.ones(2), [0.0, 1.0], options={"max_num_steps": 2.5}),
     "^max_num_steps must be a positive integer, got 2.5$"),
    (lambda: odeint(lambda t, y: y, "abc", [0.0, 1.0]), "^y0 must be a tensor or a tuple of tensors, got str$"),
    (lambda: odeint(lambda t, y: y, torch.ones(2), [1.0, 1.0]), "strictly increasing or strictly decreasing"),
    (lambda: odeint(lambda t, y: y, torch.ones(2), [2.0, 1.0, 1.0]), "strictly increasing or strictly decreasing"),
    (lambda: odeint(lambda t, y: y, torch.ones(2), [0.0, 0.5, 0.2]), "strictly increasing or strictly decreasing"),
])
def test_more_bad_input_is_one_line_solver_error(call, msg):
    with pytest.raises(SolverError, match=msg):
        call()


def test_one_allowed_step_is_allowed():
    ys = odeint(lambda t, y: torch.zeros_like(y), torch.ones(2, dtype=torch.float64), [0.0, 1.0],
                options={"first_step": 1.0, "max_num_steps": 1})  # y' = 0: the first step is accepted and lands on 1
    assert torch.equal(ys[-1], torch.ones(2, dtype=torch.float64))


def test_a_given_vjp_serves_decreasing_times_too():
    """Backwards in time the engine integrates in s = -t and must turn the given vjp around with it."""
    from odenet.ode.adjoint import autograd_vjp

    class RampWithVjp(Ramp):
        def vjp(self, t, z, a, energy_cotangent=None):
            return autograd_vjp(self, [self.k])(t, z, a, energy_cotangent)

    grads = []
    for given in (False, True):
        f = RampWithVjp() if given else Ramp()
        y0 = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
        ys = odeint_adjoint(f, y0, [1.4, 0.2], rtol=1e-10, atol=1e-12)
        ys[-1].sum().backward()
        grads.append(torch.cat([y0.grad, f.k.grad.reshape(1)]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-8)
    e = Ramp().exponent(1.4, 0.2)
    assert grads[1][0].item() == pytest.approx(math.exp(e), rel=1e-7)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_non_finite_derivative_at_the_start_is_a_clear_error(bad):
    """An infinite derivative made the first-step estimate divide by zero (a ZeroDivisionError traceback from
    ``odenet train --kinetic 1e30``); NaN gave a NaN step. Both: one SolverError before any step."""
    with pytest.raises(SolverError, match="^the derivative at the start of the solve holds NaN or infinite values"):
        odeint(lambda t, y: y * bad, torch.ones(3), torch.tensor([0.0, 1.0]), method="dopri5")
