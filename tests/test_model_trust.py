"""A researcher's own models: the right gradient or a one-line refusal, never a silently wrong answer.

Each case here gave a wrong or missing gradient (or a late AttributeError) before the fast paths were guarded;
references are backpropagation through torchdiffeq in float64.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torchdiffeq
from torch import nn

import odenet
from odenet import ODEBlock, ODEFunc, OdenetError, Solver, SolverError, StepController, AdjointSpec
from odenet.ode import integrate, odeint, odeint_adjoint

TOL = dict(rtol=1e-10, atol=1e-12)
# float64 solves at rtol 1e-10: an adjoint gradient and backprop through another solver agree to ~1e-7 relative
GRAD_RTOL = 1e-6


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


def _reference_grads(func, y0, t, params, adjoint=True):
    """d/d(y0, params) of sum(y(T)) by torchdiffeq in float64: its adjoint (the same algorithm: the backward
    solve reconstructs z(t), whose error depends on the flow, not on odenet) or backpropagation through rk4 at a
    step of 1e-3 (the discrete gradient, accurate far beyond the tolerance here)."""
    y0 = y0.detach().requires_grad_(True)
    if adjoint:
        ys = torchdiffeq.odeint_adjoint(func, y0, t, method="dopri5", adjoint_params=tuple(params), **TOL)
    else:
        ys = torchdiffeq.odeint(func, y0, t, method="rk4", options={"step_size": 1e-3})
    return _grads(ys[-1].sum(), [y0, *params])


def _close(a, b, rtol=GRAD_RTOL):
    assert a is not None
    b = torch.zeros_like(a) if b is None else b  # a tensor the function does not use: no gradient is zero
    scale = b.abs().max().item() + 1e-12
    assert (a - b).abs().max().item() <= rtol * scale, ((a - b).abs().max().item(), scale)


# --- closures and non-Module functions under the adjoint --------------------------------------------------------

def test_a_closure_under_the_adjoint_is_refused_without_adjoint_params_and_right_with_them():
    k = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    y0 = torch.ones(3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(SolverError, match="^under the adjoint a func that is not a torch.nn.Module needs"):
        odeint_adjoint(lambda t, y: -k * y, y0, t)
    ys = odeint_adjoint(lambda t, y: -k * y, y0, t, adjoint_params=(k,), **TOL)
    (gk,) = _grads(ys[-1].sum(), [k])
    assert gk.item() == pytest.approx(-3 * math.exp(-0.5), rel=1e-8)  # d/dk 3 e^-k


def test_integrate_refuses_a_closure_under_the_adjoint_when_autograd_is_on():
    mlp = nn.Linear(2, 2).double()
    z0 = torch.ones(4, 2, dtype=torch.float64)
    with pytest.raises(SolverError, match="adjoint_params"):
        integrate(lambda t, z: torch.tanh(mlp(z)), z0, [0.0, 1.0], Solver())
    with torch.no_grad():  # nothing to differentiate: nothing to lose
        assert integrate(lambda t, z: torch.tanh(mlp(z)), z0, [0.0, 1.0], Solver()).ys.shape == (2, 4, 2)
    sol = integrate(lambda t, z: torch.tanh(mlp(z)), z0, [0.0, 1.0],
                    Solver(adjoint=AdjointSpec(params=tuple(mlp.parameters())), controller=StepController(**TOL)))
    got = _grads(sol.ys[-1].sum(), list(mlp.parameters()))
    ref = _reference_grads(lambda t, z: torch.tanh(mlp(z)), z0, torch.tensor([0.0, 1.0], dtype=torch.float64),
                           list(mlp.parameters()))[1:]
    for a, b in zip(got, ref):
        _close(a, b)


def test_odeblock_needs_a_module():
    mlp = nn.Linear(2, 2)
    with pytest.raises(OdenetError, match="^ODEBlock: odefunc must be a torch.nn.Module"):
        ODEBlock(lambda t, z: torch.tanh(mlp(z)))


# --- ODEFunc's hand-written paths run only where they compute the module's function ------------------------------

class Tanhed(ODEFunc):
    def forward(self, t, z):
        return torch.tanh(self.net(z))


def _modified_funcs():
    torch.manual_seed(0)
    out = {"subclass": Tanhed(4, 8)}
    for name, act in (("tanh", nn.Tanh()), ("softplus", nn.Softplus())):
        f = ODEFunc(4, 8)
        f.net[1] = act
        out[name] = f
    f = ODEFunc(4, 8)
    f.net.insert(1, nn.Dropout(0.5))
    out["dropout"] = f
    f = ODEFunc(4, 8)
    f.net[2].register_forward_hook(lambda m, i, o: 2 * o)
    out["hook"] = f
    f = ODEFunc(4, 8)
    torch.nn.utils.parametrizations.spectral_norm(f.net[0])
    out["spectral_norm"] = f
    f = ODEFunc(4, 8)
    torch.nn.utils.spectral_norm(f.net[2])  # the old API: a forward pre-hook
    out["spectral_norm_old"] = f
    f = ODEFunc(4, 8)
    f.net[6] = nn.Linear(8, 4, bias=False)
    out["no_bias"] = f
    f = ODEFunc(4, 8)
    f.net[4].weight = f.net[2].weight  # tied weights: parameters() lists one tensor for two layers
    out["tied"] = f
    f = ODEFunc(4, 8)
    f.extra = nn.Parameter(torch.ones(1))  # a parameter the function does not use
    out["extra_param"] = f
    return out


@pytest.mark.parametrize("name", list(_modified_funcs()))
def test_a_changed_odefunc_takes_autograd_and_gets_backprops_gradient(name):
    f = _modified_funcs()[name].double()
    f.eval() if name == "dropout" else None
    assert f.fast_paths() is None
    z0 = torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([0.0, 0.8], dtype=torch.float64)
    params = [p for p in f.parameters() if p.requires_grad]
    zr = z0.clone().requires_grad_(True)
    ys = odeint_adjoint(f, zr, t, **TOL)
    got = _grads(ys[-1].sum(), [zr, *params])
    ref = _reference_grads(f, z0, t, params)
    for a, b in zip(got, ref):
        _close(a, b)
    for a, b in zip(got, _reference_grads(f, z0, t, params, adjoint=False)):  # the true gradient, to the adjoint's
        _close(a, b, 1e-3)                                                     # reconstruction error of z(t)
    with torch.no_grad():  # the no-grad forward computes the module's function too
        fast = odeint(f, z0, t, **TOL)[-1]
        plain = torchdiffeq.odeint(f, z0, t, **TOL)[-1]
    _close(fast, plain)  # two controllers at rtol 1e-10: their solutions differ by their global errors


def test_the_unchanged_odefunc_uses_its_fast_paths_and_they_agree_with_autograd():
    torch.manual_seed(1)
    f = ODEFunc(4, 8).double()
    assert f.fast_paths() is not None
    block = ODEBlock(f, solver=Solver(controller=StepController(**TOL)))
    z0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    block(z0).sum().backward()
    assert block.stats.fast_forward and block.stats.vjp == "fused"
    ref = _reference_grads(f, z0, torch.tensor([0.0, 1.0], dtype=torch.float64), list(f.parameters()))
    for a, b in zip([z0.grad, *[p.grad for p in f.parameters()]], ref):
        _close(a, b)


def test_a_changed_model_reports_the_autograd_path_in_its_stats():
    f = ODEFunc(4, 8)
    f.net[1] = nn.Tanh()
    block = ODEBlock(f)
    block(torch.randn(2, 4, requires_grad=True)).sum().backward()
    assert not block.stats.fast_forward and block.stats.vjp == "autograd"


def test_predict_with_other_activations_is_the_modules_function():
    torch.manual_seed(2)
    m = odenet.NeuralODEModel()
    m.odefunc.net[1] = nn.Softplus()
    m.eval()
    x = torch.randn(4, 1, 28, 28)
    p = m.predict(x)
    with torch.enable_grad():  # the module path: autograd on, no hand-written code
        ref = torch.softmax(m.classifier(m.odeblock(m.encode(x))), -1)
    assert torch.allclose(p, ref.detach(), atol=1e-5)


def test_a_quantized_odefunc_is_not_the_identity():
    torch.manual_seed(3)
    f = ODEFunc(4, 8)
    q = torch.ao.quantization.quantize_dynamic(f, {nn.Linear}, dtype=torch.qint8)
    assert q.fast_paths() is None
    z0 = torch.randn(2, 4)
    with torch.no_grad():
        got = odeint(q, z0, torch.tensor([0.0, 1.0]), rtol=1e-6, atol=1e-8, method="rk4", options={"step_size": 0.1})
        ref = torchdiffeq.odeint(q, z0, torch.tensor([0.0, 1.0]), method="rk4", options={"step_size": 0.1})
    assert torch.allclose(got, ref, atol=1e-5) and not torch.allclose(got[-1], z0)


def test_a_global_module_hook_turns_the_fast_paths_off():
    f = ODEFunc(4, 8)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: o)
    try:
        assert f.fast_paths() is None
    finally:
        handle.remove()
    assert f.fast_paths() is not None


def test_a_changed_encoder_runs_as_written():
    torch.manual_seed(4)
    m = odenet.NeuralODEModel().eval()
    m.encoder[1] = nn.GELU()  # not monotone: cannot move after the max-pool
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(m.encode(x), m.encoder(x), atol=1e-6)
    m.encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.Tanh())
    assert m.predict(x).shape == (3, 10)
    with pytest.raises(OdenetError, match="encode_stages needs the seed's 11-layer encoder"):
        m.encode_stages(x)


# --- time as a parameter -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("adjoint, backend", [(True, "native"), (False, "native"), (True, "torchdiffeq"),
                                              (False, "torchdiffeq")])
def test_a_learned_end_time_gets_its_gradient(adjoint, backend):
    torch.manual_seed(5)
    f = ODEFunc(4, 8).double()
    T = nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
    block = ODEBlock(f, t_end=T, solver=Solver(controller=StepController(**TOL), adjoint=AdjointSpec(enabled=adjoint),
                                               backend=backend))
    assert any(p is T for p in block.parameters())
    z0 = torch.randn(3, 4, dtype=torch.float64)
    zT = block(z0)
    zT.pow(2).sum().backward()
    with torch.no_grad():  # dL/dT = <dL/dz(T), f(z(T))>
        expected = (2 * zT * f(None, zT)).sum()
    assert T.grad is not None and T.grad.item() == pytest.approx(expected.item(), rel=1e-8)
    with block.settings(t_end=0.5):  # a temporary end time leaves the parameter alone
        block(z0)
    assert block.t_end is T


def test_a_time_gradient_through_a_sequence_of_times():
    T = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    y0 = torch.ones(2, dtype=torch.float64)
    ys = odeint(lambda t, y: -y, y0, [0.0, T], **TOL)
    (g,) = _grads(ys[-1].sum(), [T])
    assert g.item() == pytest.approx(-2 * math.exp(-1.5), rel=1e-8)


# --- trajectories and the fixed-step rule ---------------------------------------------------------------------------

def test_odeblock_trajectory_starts_at_zero_like_the_models():
    torch.manual_seed(6)
    block = ODEBlock(ODEFunc(4, 8).double(), solver=Solver(controller=StepController(**TOL)))
    z0 = torch.randn(2, 4, dtype=torch.float64)
    with torch.no_grad():
        late = block.trajectory(z0, [0.5, 1.0])
        full = block.trajectory(z0, [0.0, 0.5, 1.0])
    assert late.shape == (2, 2, 4) and torch.allclose(late, full[1:], atol=1e-9)
    with pytest.raises(OdenetError, match="strictly monotonically away from 0"):
        block.trajectory(z0, [0.5, 0.2])


def test_a_fixed_step_method_in_a_block_needs_a_step_size():
    f = ODEFunc(4, 8)
    with pytest.raises(OdenetError, match="'rk4' needs a step_size"):
        ODEBlock(f, solver=Solver.of(method="rk4"))
    with pytest.raises(OdenetError, match="'euler' needs a step_size"):
        odenet.NeuralODEModel(solver=Solver.of(method="euler"))
    block = ODEBlock(f)
    with pytest.raises(OdenetError, match="needs a step_size"):
        with block.settings(method="rk4", step_size=None):
            pass
    assert odenet.NeuralODEModel(method="rk4").odeblock.solver.controller.step_size == 0.1  # the config's step


# --- checked when made ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: Solver(controller="x"), "controller must be an odenet.StepController"),
    (lambda: Solver(adjoint=True), "adjoint must be an odenet.AdjointSpec"),
    (lambda: Solver(backend=3), "backend must be one of"),
    (lambda: StepController(norm="max"), "norm must be a function"),
    (lambda: StepController(rtol="1e-3"), "rtol must be a finite number"),
    (lambda: StepController(max_steps=2.5), "max_steps must be a positive integer"),
    (lambda: AdjointSpec(enabled="yes"), "enabled must be True or False"),
    (lambda: odenet.NeuralODEModel(solver="rk4"), "solver must be an odenet.Solver"),
    (lambda: odenet.NeuralODEModel(dim=0), "dim must be a positive integer"),
    (lambda: odenet.NeuralODEModel(dim=2.5), "dim must be a positive integer"),
    (lambda: odenet.NeuralODEModel(t_end="one"), "t_end must be a number"),
    (lambda: odenet.NeuralODEModel(t_end=math.inf), "t_end must be a finite nonzero number"),
    (lambda: odenet.NeuralODEModel(method="nope"), "unknown solver 'nope'"),
    (lambda: odenet.NeuralODEModel(rtool=1e-3), r"unknown solver setting\(s\) rtool"),
    (lambda: ODEBlock(ODEFunc(4, 8), t_end=torch.ones(2)), "one-element floating-point tensor"),
])
def test_wrong_types_and_values_are_refused_when_made(make, message):
    with pytest.raises(OdenetError, match=message):
        make()


def test_numpy_scalars_and_zero_d_tensors_are_numbers():
    c = StepController(rtol=np.float32(1e-3), atol=torch.tensor(1e-4), step_size=torch.tensor(0.25),
                       max_steps=np.int64(100))
    assert (type(c.rtol), type(c.atol), c.step_size, c.max_steps) == (float, float, 0.25, 100)
    y = odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), method="rk4",
               options={"step_size": torch.tensor(0.25)})
    assert y.shape == (2, 2)
    m = odenet.NeuralODEModel(t_end=np.float64(0.5))
    assert m.odeblock.t_end == 0.5


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_predict_casts_other_float_dtypes(dtype):
    m = odenet.NeuralODEModel().eval()
    x = torch.rand(2, 1, 28, 28)
    p = m.predict(x.to(dtype))
    assert p.dtype == torch.float32 and torch.allclose(p, m.predict(x.to(dtype).float()))
    assert m.decision(x.to(dtype), [0.5, 1.0]).shape == (2, 2, 10)


@pytest.mark.parametrize("x, message", [
    (torch.zeros(2, 3, 28, 28), r"\(2, 3, 28, 28\)"),
    (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "torch.uint8"),
    (torch.zeros(0, 1, 28, 28), "non-empty"),
    ([[0.0]], "must be a tensor"),
])
def test_predict_names_a_wrong_batch(x, message):
    m = odenet.NeuralODEModel().eval()
    with pytest.raises(OdenetError, match=message):
        m.predict(x)
    with pytest.raises(OdenetError, match=message):
        m(x)


@pytest.mark.parametrize("n", [-5, 0, 2.5, True, "10"])
def test_dataset_refuses_a_bad_subset_size(n):
    with pytest.raises(OdenetError, match="n must be a positive integer"):
        odenet.dataset(n=n)


def test_fit_and_load_name_what_is_wrong(tmp_path):
    with pytest.raises(OdenetError, match="config must be an odenet.Config, got dict"):
        odenet.fit({"epochs": 1})
    with pytest.raises(OdenetError, match=r"unknown setting\(s\): epoch \(did you mean epochs\?\), lrr \(did you "):
        odenet.fit(epoch=1, lrr=0.1)
    with pytest.raises(OdenetError, match="unknown device 'tpu'|unsupported device 'tpu'"):
        odenet.fit(device="tpu", out=str(tmp_path))
    with pytest.raises(OdenetError, match="device"):
        odenet.load(device="gpu7")
    with pytest.raises(OdenetError, match="device must be"):
        odenet.load(device=5)
    assert not any(tmp_path.iterdir())  # nothing was started


# --- tracing and export ----------------------------------------------------------------------------------------------

def test_tracing_an_adaptive_solve_and_scripting_are_refused_in_one_line():
    m = odenet.NeuralODEModel().eval()
    x = torch.rand(2, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(OdenetError, match="^an adaptive solve \\(dopri5\\) cannot be traced or exported"):
            torch.jit.trace(m, x)
        with pytest.raises(OdenetError, match="^torch.jit.script cannot compile odenet's ODE solver"):
            torch.jit.script(m)


def test_a_fixed_step_model_traces_to_the_same_function():
    torch.manual_seed(7)
    m = odenet.NeuralODEModel(method="rk4", step_size=0.25).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(m, torch.rand(2, 1, 28, 28), check_trace=False)
    x = torch.rand(5, 1, 28, 28)  # another batch size
    with torch.no_grad():
        assert torch.allclose(traced(x), m(x), atol=1e-6)


# --- degenerate states -----------------------------------------------------------------------------------------------

def test_an_empty_batch_is_its_own_solution():
    f = ODEFunc(4, 8)
    y0 = torch.zeros(0, 4, requires_grad=True)
    ys = odeint_adjoint(f, y0, torch.tensor([0.0, 0.5, 1.0]))
    assert ys.shape == (3, 0, 4)
    ys.sum().backward()
    assert y0.grad.shape == (0, 4)
    assert odenet.NeuralODEModel().eval().odeblock(torch.zeros(0, 64)).shape == (0, 64)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_start_is_named(value):
    with pytest.raises(SolverError, match="^y0 holds NaN or infinite values$"):
        odeint(ODEFunc(4, 8), torch.full((2, 4), value), [0.0, 1.0])


def test_zero_tolerances_are_refused_when_made():
    with pytest.raises(SolverError, match="rtol and atol cannot both be 0"):
        odeint(lambda t, y: -y, torch.ones(2), [0.0, 1.0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_low_precision_model_solves(dtype):
    """The step controller measures errors in float32: err / atol overflows float16 (it read 'step size underflow')."""
    torch.manual_seed(8)
    m = odenet.NeuralODEModel().eval()
    x = torch.rand(3, 1, 28, 28)
    low = m.to(dtype).predict(x)
    m.float()
    assert low.dtype == dtype and (low.float() - m.predict(x)).abs().max() < 0.02  # a few of dtype's epsilons


def test_torch_func_transforms_backprop_or_a_clear_refusal():
    torch.manual_seed(9)
    f = ODEFunc(4, 8)
    z0 = torch.randn(2, 4)

    def loss(block):
        return lambda p: torch.func.functional_call(block, {"odefunc." + k: v for k, v in p.items()}, (z0,)).sum()

    params = dict(f.named_parameters())
    backprop = ODEBlock(f, solver=Solver.of(adjoint=False))
    g = torch.func.grad(loss(backprop))(params)["net.0.weight"]
    (ref,) = torch.autograd.grad(backprop(z0).sum(), f.net[0].weight)
    assert torch.allclose(g, ref)
    with pytest.raises(SolverError, match="torch.func transforms .* use adjoint=False"):
        torch.func.grad(loss(ODEBlock(f)))(params)


def test_a_second_derivative_through_the_adjoint_is_refused_and_backprop_gives_it():
    torch.manual_seed(10)
    f = ODEFunc(4, 8).double()
    z = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    g = torch.autograd.grad(ODEBlock(f)(z).pow(2).sum(), z, create_graph=True)[0]
    with pytest.raises(RuntimeError, match="once_differentiable"):  # not a silent zero
        g.sum().backward()
    tol = Solver(controller=StepController(**TOL), adjoint=AdjointSpec(enabled=False))
    g = torch.autograd.grad(ODEBlock(f, solver=tol)(z).pow(2).sum(), z, create_graph=True)[0]
    (h,) = torch.autograd.grad(g.sum(), z)
    zr = z.detach().requires_grad_(True)
    ref_g = torch.autograd.grad(torchdiffeq.odeint(f, zr, torch.tensor([0.0, 1.0], dtype=torch.float64), method="rk4",
                                                   options={"step_size": 1e-3})[-1].pow(2).sum(), zr,
                                create_graph=True)[0]
    (ref_h,) = torch.autograd.grad(ref_g.sum(), zr)
    _close(h, ref_h, 1e-4)
