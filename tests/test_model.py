from pathlib import Path

import torch

from odenet.model import NeuralODEModel
from odenet.ode.adjoint import autograd_vjp

SPEC_PRINT = (Path(__file__).parent / "spec_model_print.txt").read_text().rstrip("\n")


def test_print_matches_spec_exactly():
    assert str(NeuralODEModel()) == SPEC_PRINT


def test_odefunc_is_shared_and_counted_once():
    m = NeuralODEModel()
    assert m.odefunc is m.odeblock.odefunc
    n = sum(p.numel() for p in m.parameters())
    unique = {id(p) for p in m.parameters()}
    assert len(unique) == len(list(m.parameters()))
    assert n == 268298


def test_forward_shapes_and_nfe():
    m = NeuralODEModel()
    m.nfe = 0
    out = m(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    assert m.nfe >= 8  # dopri5: f0 + initial step + >= 1 step of 6 stages


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
