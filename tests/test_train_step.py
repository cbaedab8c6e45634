"""One optimisation step (odenet.train.train_step, and shard_step as the loop runs it under torchrun), checked
against the same step written out by hand."""
import copy

import pytest
import torch
import torch.nn.functional as F

from odenet import distributed
from odenet.errors import DivergenceError, OdenetError, SolverError
from odenet.model import NeuralODEModel
from odenet.config import Config
from odenet.data import Shard
from odenet.train import make_optimizer, shard_step, train_step


def rank_step(model, opt, x, y, ctx=distributed.SINGLE, weight=1.0, stop=False, kinetic=0.0):
    """``shard_step`` on a shard holding the whole batch ``x, y``."""
    return shard_step(model, opt, Shard(x, y, 0, len(y), weight), Config(kinetic=kinetic), ctx=ctx, stop=stop)


def setup(seed=0, n=8, **solver):
    """A model, its optimizer and a batch whose labels the untrained model gets right for 5 of 8 images."""
    torch.manual_seed(seed)
    model = NeuralODEModel(**{"method": "rk4", "step_size": 0.5, **solver})
    x = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad(), model.odeblock.settings(max_steps=10_000):
        pred = model(x).argmax(1)
    y = torch.where(torch.arange(n) < 5, pred, (pred + 1) % 10)
    return model, make_optimizer(model, 1e-2), x, y


def by_hand(model, x, y, label_smoothing=0.0):
    """The reference: a copy of the model, a plain mean cross-entropy, backward, torch's Adam step."""
    ref = copy.deepcopy(model)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    logits = ref(x)
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    loss.backward()
    opt.step()
    return ref, loss.item(), int((logits.argmax(1) == y).sum())


def same_params(a, b, **tol):
    return all(torch.allclose(p, q, **tol) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_a_step_is_the_step_written_by_hand(label_smoothing):
    model, opt, x, y = setup()
    ref, loss, correct = by_hand(model, x, y, label_smoothing)
    st = train_step(model, opt, x, y, label_smoothing)
    assert correct == 5 and st.loss == pytest.approx(loss, rel=1e-6) and st.correct == correct and st.n == len(y)
    assert st.nfe_f == 8 and st.nfe_b == 8  # rk4, 2 steps of 0.5, forward and adjoint backward
    assert same_params(model, ref, rtol=1e-5, atol=1e-7)
    assert not same_params(model, setup()[0])  # it did move


class TwinRanks(distributed.Context):
    """Two ranks holding the same shard: every all-reduced sum is twice this rank's value."""

    def __init__(self):
        super().__init__(rank=0, world=2)

    def _reduce(self, values, op):
        return [2.0 * float(v) if op == "SUM" else float(v) for v in values]


def test_a_rank_step_weights_its_shard_as_the_whole_batch():
    """Under DDP a rank's loss is its shard's sum x world / batch; with an identical twin rank (DDP's average of
    two equal gradients is that gradient) the step is the single-process step on the shard."""
    model, opt, x, y = setup()
    ref, loss, correct = by_hand(model, x, y)
    st = rank_step(model, opt, x, y, ctx=TwinRanks())
    assert st.loss == pytest.approx(loss, rel=1e-6) and st.correct == 2 * correct and st.n == 2 * len(y)
    assert st.nfe_f == 8  # the mean over the ranks
    assert same_params(model, ref, rtol=1e-5, atol=1e-7)


def test_stop_and_divergence_leave_the_weights_untouched():
    model, opt, x, y = setup()
    before = copy.deepcopy(model)
    with pytest.raises(KeyboardInterrupt):
        rank_step(model, opt, x, y, stop=True)
    assert same_params(model, before, rtol=0, atol=0)
    with torch.no_grad():
        model.classifier[0].bias.fill_(float("nan"))
    before = copy.deepcopy(model)
    with pytest.raises(DivergenceError, match="loss is nan"):
        train_step(model, opt, x, y)
    assert all(torch.equal(p, q) or (p.isnan().any() and q.isnan().any())
               for p, q in zip(model.parameters(), before.parameters()))
    assert not any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_a_failed_solve_is_a_divergence_and_other_errors_pass_through():
    model, opt, x, y = setup(method="dopri5", max_steps=1)
    before = copy.deepcopy(model)
    with pytest.raises(DivergenceError, match="max_steps"):
        train_step(model, opt, x, y)
    assert same_params(model, before, rtol=0, atol=0)
    model, opt, x, y = setup()

    class Broken(torch.nn.Module):
        def forward(self, z):
            raise AssertionError("a bug, not a solver failure")

    model.classifier = Broken()
    with pytest.raises(AssertionError, match="a bug"):
        train_step(model, opt, x, y)


@pytest.mark.parametrize("path", ["fused vjp", "autograd vjp", "backprop through the solver", "a frozen ODE parameter"])
def test_the_kinetic_step_is_the_step_of_the_regularised_loss(path):
    """train_step(kinetic=w) takes the Adam step of mean CE + w * mean_b E_b on every gradient path; the kinetic
    weight reaches the gradient through the model's energy output, so no module holds it before or after."""
    model, _, x, y = setup()
    if path == "a frozen ODE parameter":  # the fused vjp cannot serve it: autograd's vjp takes over, with the term
        model.odefunc.net[0].bias.requires_grad_(False)
    else:
        model.odeblock.solver = model.odeblock.solver.replace(
            **{"fused vjp": {}, "autograd vjp": dict(fused_vjp=False),
               "backprop through the solver": dict(adjoint=False)}[path])
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.Adam([p for p in ref.parameters() if p.requires_grad], lr=1e-2)
    logits, energy = ref(x, energy=True)
    (F.cross_entropy(logits, y) + 0.4 * energy.mean()).backward()
    ref_opt.step()
    opt = make_optimizer(model, 1e-2)
    state = dict(vars(model.odefunc))
    st = train_step(model, opt, x, y, kinetic=0.4)
    assert st.loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)  # the term is not reported
    assert same_params(model, ref, rtol=1e-5, atol=1e-7)
    assert dict(vars(model.odefunc)).keys() == state.keys()


def test_the_kinetic_term_changes_the_step():
    model, opt, x, y = setup()
    other = copy.deepcopy(model)
    train_step(model, opt, x, y)
    train_step(other, make_optimizer(other, 1e-2), x, y, kinetic=5.0)
    assert not same_params(model.odefunc, other.odefunc, rtol=1e-6, atol=1e-8)


def test_kinetic_is_refused_where_the_energy_cannot_be_computed():
    """torchdiffeq cannot return the energy: a clear error before any update; without the term the model trains."""
    model, opt, x, y = setup()
    model.odeblock.solver = model.odeblock.solver.replace(backend="torchdiffeq")
    before = copy.deepcopy(model)
    with pytest.raises(OdenetError, match="kinetic energy needs the native engine"):
        train_step(model, opt, x, y, kinetic=0.1)
    assert same_params(model, before, rtol=0, atol=0)
    train_step(model, opt, x, y)


def test_a_vjp_without_the_kinetic_cotangent_is_refused(monkeypatch):
    """A func.vjp that cannot take the kinetic cotangent would drop the term's gradient: refused, not run."""
    model, opt, x, y = setup()

    class OwnVjp(torch.nn.Module):  # a func with its own vjp that has no kinetic parameter
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t, z):
            return self.inner(t, z)

        def vjp(self, t, z, a):
            return self.inner.vjp(t, z, a)

    model.odeblock.odefunc = OwnVjp(model.odefunc)
    with pytest.raises(OdenetError, match="must take energy_cotangent"):
        train_step(model, opt, x, y, kinetic=0.1)
    # the same replacement on an ODEFunc instance is not trusted as a fast path: autograd runs, nothing is lost
    model.odeblock.odefunc = model.odefunc
    real = model.odefunc.vjp
    monkeypatch.setattr(model.odefunc, "vjp", lambda t, z, a: real(t, z, a))
    assert model.odefunc.fast_paths() is None
    train_step(model, opt, x, y, kinetic=0.1)
    assert model.stats.vjp == "autograd"


class OtherRankHoldsTheImages(distributed.Context):
    """Two ranks: this one's shard is all stand-ins (weight 0), the other's is the real batch ``other``."""

    def __init__(self, other):
        super().__init__(rank=0, world=2)
        self.other = other

    def _reduce(self, values, op):
        return [float(v) + float(o) for v, o in zip(values, self.other)]


def test_a_shard_of_stand_ins_counts_for_nothing_and_moves_nothing():
    """weight 0 (padding when the last batch does not divide over the ranks): the step's numbers are the other
    rank's, and this rank's gradient is zero (DDP averages it with the other's)."""
    model, opt, x, y = setup()
    ref, loss, correct = by_hand(model, x, y)
    before = copy.deepcopy(model)
    other = [loss * len(y), correct, len(y), 8, 0, 0]  # what the other rank adds: loss sum, count, images, NFE, flags
    st = rank_step(model, opt, x, y, ctx=OtherRankHoldsTheImages(other), weight=0.0)
    assert st.loss == pytest.approx(loss, rel=1e-6) and st.correct == correct and st.n == len(y)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    assert same_params(model, before, rtol=0, atol=0)


def test_as_one_of_two_ranks_the_gradient_is_twice_its_share_of_the_regularised_mean():
    """This rank holds the whole batch, the other only stand-ins: its gradient (before DDP halves it) is twice
    that of mean CE + w * mean E over the batch, the kinetic term weighted like the loss."""
    model, _, x, y = setup()
    ref = copy.deepcopy(model)
    logits, energy = ref(x, energy=True)
    (2 * (F.cross_entropy(logits, y) + 0.3 * energy.mean())).backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # keeps the weights: the gradient is what is compared
    rank_step(model, opt, x, y, ctx=OtherRankHoldsTheImages([0, 0, 0, 0, 0, 0]), kinetic=0.3)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)


def test_make_optimizer():
    model = NeuralODEModel()
    opt = make_optimizer(model, 0.003)
    assert type(opt) is torch.optim.Adam and opt.defaults["lr"] == 0.003 and opt.defaults["weight_decay"] == 0.0
    assert opt.defaults["fused"] is True  # the single-kernel form (this torch has it on the CPU)
    assert [p for g in opt.param_groups for p in g["params"]] == list(model.parameters())
    opt = make_optimizer(model, 0.004, "adamw", 0.05)
    assert type(opt) is torch.optim.AdamW and opt.defaults["lr"] == 0.004 and opt.defaults["weight_decay"] == 0.05


@pytest.mark.parametrize("message, solver_failure", [("max_num_steps exceeded", True),
                                                     ("underflow in dt 1e-20", True),
                                                     ("a bug", False)])
def test_assertion_errors_that_are_solver_failures(message, solver_failure):
    """torchdiffeq signals a step limit and an underflow with AssertionError: those are divergences, not bugs."""
    model, opt, x, y = setup()

    class Fails(torch.nn.Module):
        def forward(self, z):
            raise AssertionError(message)

    model.classifier = Fails()
    with pytest.raises(DivergenceError if solver_failure else AssertionError, match=message):
        train_step(model, opt, x, y)


def test_what_another_rank_reports_stops_this_one_before_any_update():
    """The ranks agree before the update: another rank's failed solve or stop signal ends this rank's step too."""
    model, opt, x, y = setup()
    before = copy.deepcopy(model)
    with pytest.raises(DivergenceError, match="^the solver failed on another rank$"):
        rank_step(model, opt, x, y, ctx=OtherRankHoldsTheImages([0, 0, len(y), 8, 0, 1]))
    with pytest.raises(KeyboardInterrupt):
        rank_step(model, opt, x, y, ctx=OtherRankHoldsTheImages([0, 0, len(y), 8, 1, 0]))
    assert same_params(model, before, rtol=0, atol=0)
