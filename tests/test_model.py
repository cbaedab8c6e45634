from pathlib import Path

import pytest
import torch

from conftest import CallCounter
from odenet.model import NeuralODEModel
from odenet.ode.adjoint import autograd_vjp

SPEC_PRINT = (Path(__file__).parent / "spec_model_print.txt").read_text().rstrip("\n")


def test_print_matches_spec_exactly():
    assert str(NeuralODEModel()) == SPEC_PRINT


def test_odefunc_is_shared_and_counted_once():
    m = NeuralODEModel()
    assert m.odefunc is m.odeblock.odefunc
    n = sum(p.numel() for p in m.parameters())
    every = dict(m.named_parameters(remove_duplicate=False))
    names = [k for k in every if "odefunc" in k]
    # registered under both names, the same tensors, and parameters() (what the optimizer gets) lists them once
    assert sorted(names) == sorted([f"odefunc.{k}" for k, _ in m.odefunc.named_parameters()]
                                   + [f"odeblock.odefunc.{k}" for k, _ in m.odefunc.named_parameters()])
    assert all(every[f"odefunc.{k}"] is every[f"odeblock.odefunc.{k}"] for k, _ in m.odefunc.named_parameters())
    assert len(list(m.parameters())) == len(every) - len(names) // 2
    assert n == 268298


def test_forward_shapes_and_nfe():
    m = NeuralODEModel()
    calls = CallCounter(m.odefunc)
    out = m(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    assert m.stats.nfe_forward == calls.n >= 8  # dopri5: f0 + initial step + >= 1 step of 6 stages


def test_fused_vjp_equals_autograd():
    torch.manual_seed(0)
    f = NeuralODEModel().odefunc.double()
    z, a = torch.randn(7, 64, dtype=torch.float64), torch.randn(7, 64, dtype=torch.float64)
    fz, gz, gp = f.vjp(0.0, z, a)
    rz, rgz, rgp = autograd_vjp(f, list(f.parameters()))(0.0, z, a)
    assert torch.allclose(fz, rz, atol=1e-12)
    assert torch.allclose(gz, rgz, atol=1e-12)
    assert gp.shape == rgp.shape and torch.allclose(gp, rgp, atol=1e-12)


def test_frozen_odefunc_layer_still_trains_the_rest():
    torch.manual_seed(1)
    m = NeuralODEModel()
    m.odefunc.net[0].weight.requires_grad_(False)
    loss = m(torch.randn(4, 1, 28, 28)).sum()
    loss.backward()
    assert m.odefunc.net[0].weight.grad is None
    assert m.odefunc.net[2].weight.grad is not None and m.encoder[0].weight.grad is not None


def test_encode_equals_the_encoder_in_value_and_gradient():
    """encode() moves each ReLU after its max-pool; on images with flat background (ties in every pooling
    window) the output and every parameter gradient equal the printed Sequential's exactly."""
    torch.manual_seed(0)
    m = NeuralODEModel()
    x = torch.full((32, 1, 28, 28), -0.4242)
    x[:, :, 6:22, 9:19] = torch.rand(32, 1, 16, 10) * 3
    grads = []
    for run in (m.encode, lambda x: m.encoder(x.contiguous(memory_format=torch.channels_last))):
        m.zero_grad()
        z = run(x)
        (z * torch.linspace(-1, 1, 64)).sum().backward()
        grads.append((z.detach(), [p.grad.clone() for p in m.encoder.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", ["fused vjp", "autograd vjp", "backprop through the solver"])
def test_kinetic_gradient_is_that_of_the_regularised_loss(path):
    """``model(x, energy=True)`` returns each image's integral |f(z)|^2 dt, and the gradient of
    loss + w * sum_b E_b is exact on every gradient path: torchdiffeq on the augmented state [z, energy] on the same
    rk4 grid (its adjoint, or backprop through its solver) agrees to rounding (float64)."""
    import torchdiffeq

    torch.manual_seed(0)
    m = NeuralODEModel().double()
    x = torch.randn(5, 1, 28, 28, dtype=torch.float64)

    class Augmented(torch.nn.Module):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, t, s):
            dz = self.f(t, s[:, :-1])
            return torch.cat([dz, (dz * dz).sum(1, keepdim=True)], 1)

    def ours(w):
        m.zero_grad()
        logits, energy = m(x, energy=True)
        (logits.logsumexp(1).sum() + w * energy.sum()).backward()
        return [p.grad.clone() for p in m.parameters()], energy.detach()

    def reference(w):
        m.zero_grad()
        z0 = m.encode(x)
        s0 = torch.cat([z0, z0.new_zeros(len(z0), 1)], 1)
        solve = torchdiffeq.odeint if path == "backprop through the solver" else torchdiffeq.odeint_adjoint
        sT = solve(Augmented(m.odefunc), s0, torch.tensor([0.0, 1.0], dtype=torch.float64),
                   method="rk4", options=dict(step_size=0.1))[-1]
        (m.classifier(sT[:, :-1]).logsumexp(1).sum() + w * sT[:, -1].sum()).backward()
        return [p.grad.clone() for p in m.parameters()], sT[:, -1].detach()

    settings = {"fused vjp": {}, "autograd vjp": dict(fused_vjp=False),
                "backprop through the solver": dict(adjoint=False)}[path]
    with m.odeblock.settings(method="rk4", step_size=0.1, **settings):
        (plain, _), (reg, energy) = ours(0.0), ours(0.3)
        ref, ref_energy = reference(0.3)
        torch.testing.assert_close(energy, ref_energy, rtol=1e-12, atol=0)
        for a, b in zip(reg, ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the term matters: it changes the gradients by as much as they are large
    assert max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(reg, plain)) > 0.1
