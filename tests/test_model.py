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
