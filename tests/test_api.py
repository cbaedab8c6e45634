"""odenet as a Python library: load, preprocess, predict, the flow, ODEBlock in your own model, fit — and its docs."""
import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

import odenet
from conftest import CallCounter, energy_reference, needs_data, real_data_dir
from odenet.cli import main

ROOT = Path(__file__).resolve().parent.parent


def draw_digit(path: Path, digit: str) -> Path:
    """A black-on-white drawing of ``digit`` (1, 7, 0 or 4), as a phone photo of a sketch would be."""
    im = Image.new("L", (120, 160), 255)
    d = ImageDraw.Draw(im)
    strokes = {"1": [(60, 20), (60, 140)], "7": [(20, 25), (100, 25), (50, 140)],
               "4": [(70, 140), (70, 20), (20, 100), (100, 100)]}
    if digit == "0":
        d.ellipse([25, 20, 95, 140], outline=0, width=12)
    else:
        d.line(strokes[digit], fill=0, width=12, joint="curve")
    im.save(path)
    return path


@pytest.fixture(scope="module")
def model():
    return odenet.load()


@pytest.fixture()
def digits(tmp_path):
    return [draw_digit(tmp_path / f"{d}.png", d) for d in "1704"]


def test_load_preprocess_predict_is_odenet_predict(model, digits, capsys):
    """The Python API and ``odenet predict`` give the same probabilities for the same files."""
    assert main(["predict", *map(str, digits), "--json", "--top", "10", "--device", "cpu"]) == 0
    cli = json.loads(capsys.readouterr().out)
    probs = model.predict(odenet.preprocess([str(p) for p in digits]))
    assert probs.shape == (4, 10) and torch.allclose(probs.sum(1), torch.ones(4))
    for row, p in zip(cli, probs):
        assert len(row["top"]) == 10
        for entry in row["top"]:
            assert p[model.classes.index(entry["class"])].item() == pytest.approx(entry["probability"], abs=1e-6)
    assert probs.argmax(1).tolist() == [1, 7, 0, 4]
    assert model.dataset == "mnist" and not model.training


def test_preprocess_takes_paths_pil_arrays_tensors_and_batches(digits):
    one = odenet.preprocess(digits[0])
    assert one.shape == (1, 1, 28, 28) and one.dtype == torch.float32
    grey = np.array(Image.open(digits[0]))
    rgb = np.stack([grey] * 3, -1)
    for form in (str(digits[0]), Image.open(digits[0]), grey, rgb, torch.from_numpy(grey),
                 torch.from_numpy(grey)[None], grey / 255.0):
        assert torch.equal(odenet.preprocess(form), one), type(form)
    batch = np.stack([np.array(Image.open(p)) for p in digits])
    expected = odenet.preprocess([str(p) for p in digits])
    for form in (batch, torch.from_numpy(batch), torch.from_numpy(batch)[:, None], list(batch),
                 [Image.open(p) for p in digits]):
        assert torch.equal(odenet.preprocess(form), expected), type(form)


@pytest.mark.parametrize("bad,msg", [
    (np.zeros((5, 5, 5, 5)), "an image array must be"), (np.full((50, 50), 255, np.uint8), "blank"),
    (42, "cannot read an image from a int"), ([], "no images given"), ("no-such-file.png", "no-such-file.png")])
def test_preprocess_says_what_is_wrong_in_one_line(bad, msg):
    with pytest.raises(odenet.OdenetError, match=msg) as e:
        odenet.preprocess(bad)
    assert "\n" not in str(e.value)


def test_trajectory_and_decision_by_dense_output(model, digits):
    x = odenet.preprocess([str(p) for p in digits])
    model.trajectory(x, [0.0, 1.0])
    two = model.stats.nfe_forward
    ts = torch.linspace(0, 1, 41)
    zs = model.trajectory(x, ts)
    assert zs.shape == (41, 4, 64) and model.stats.nfe_forward == two  # 41 times at the NFE of one solve
    with torch.no_grad():
        z0 = model.encode(x)
        assert torch.allclose(zs[0], z0) and torch.allclose(zs[-1], model.odeblock(z0), atol=1e-6)
    late = model.trajectory(x, [0.5, 1.0])  # times after 0: the flow still starts at z(0)
    assert torch.allclose(late, zs[[20, 40]], atol=1e-4)
    dec = model.decision(x, ts)
    assert dec.shape == (41, 4, 10) and torch.allclose(dec[-1], model.predict(x), atol=1e-5)
    assert (dec[-1].argmax(1) == torch.tensor([1, 7, 0, 4])).all()
    with pytest.raises(odenet.OdenetError, match=r"\(B, 1, 28, 28\)"):
        model.predict(torch.zeros(2, 3, 28, 28))


def test_stats_count_every_evaluation_and_step():
    """dopri5 is FSAL: NFE = 1 + 1 (initial step) + 6 per tried step, forward and backward alike."""
    torch.manual_seed(0)
    m = odenet.NeuralODEModel()
    x = torch.randn(16, 1, 28, 28)
    calls = CallCounter(m.odefunc)  # counted from outside too (the hook makes the module calls run)
    loss = m(x).logsumexp(1).sum()
    st = m.stats
    assert st.nfe_forward == calls.n == 2 + 6 * (st.steps_forward + st.rejected_forward) and st.nfe_backward == 0
    loss.backward()
    assert st.nfe_backward == calls.n - st.nfe_forward > 0
    assert st.nfe_backward == 2 + 6 * (st.steps_backward + st.rejected_backward) and st.steps_backward >= 1
    with m.odeblock.settings(rtol=1e-9, atol=1e-9, max_steps=100_000):  # a start that is too bold gets rejected
        m(x)
    assert m.stats.steps_forward > st.steps_forward


class ConvODEFunc(nn.Module):
    """The ODE-Net's f (Chen et al. 2018): two 3x3 convolutions with GroupNorm, t given as an extra channel."""

    def __init__(self, channels: int = 8):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(4, channels), nn.GroupNorm(4, channels)
        self.conv1 = nn.Conv2d(channels + 1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels + 1, channels, 3, padding=1)

    def forward(self, t, z):
        tt = torch.ones_like(z[:, :1]) * t
        h = self.conv1(torch.cat([tt, torch.relu(self.norm1(z))], 1))
        return self.conv2(torch.cat([tt, torch.relu(self.norm2(h))], 1))


def test_a_conv_ode_block_has_torchdiffeqs_adjoint_gradients():
    import torchdiffeq

    torch.manual_seed(0)
    f = ConvODEFunc().double()
    z0 = torch.randn(3, 8, 7, 7, dtype=torch.float64)
    w = torch.randn(3, 8, 7, 7, dtype=torch.float64)
    kw = dict(rtol=1e-9, atol=1e-11)
    grads = []
    for ours in (True, False):
        f.zero_grad()
        z = z0.clone().requires_grad_(True)
        if ours:
            block = odenet.ODEBlock(f, t_end=1.0, solver=odenet.Solver.of(method="dopri5", adjoint=True, **kw))
            zT = block(z)
            assert block.stats.nfe_backward == 0
        else:
            zT = torchdiffeq.odeint_adjoint(f, z, torch.tensor([0.0, 1.0], dtype=torch.float64), method="dopri5",
                                            **kw)[-1]
        (zT * w).sum().backward()
        grads.append(torch.cat([z.grad.reshape(-1)] + [p.grad.reshape(-1) for p in f.parameters()]))
    assert ((grads[0] - grads[1]).norm() / grads[1].norm()).item() < 1e-6
    assert block.stats.nfe_backward > 0  # the adjoint, not backprop, made them


@pytest.mark.parametrize("adjoint", [True, False])
def test_the_kinetic_energy_of_a_conv_block_is_a_differentiable_output(adjoint):
    """Per sample, for a feature-map state, with the gradient of torchdiffeq on the augmented state (z, E) on the
    same rk4 grid: its adjoint, or backprop through its solver (float64, to rounding)."""
    import torchdiffeq

    Augmented = energy_reference()
    torch.manual_seed(0)
    f = ConvODEFunc().double()
    z0 = torch.randn(3, 8, 7, 7, dtype=torch.float64)
    w = torch.randn(3, 8, 7, 7, dtype=torch.float64)
    results = []
    for ours in (True, False):
        f.zero_grad()
        if ours:
            block = odenet.ODEBlock(f, solver=odenet.Solver.of(method="rk4", step_size=0.05, adjoint=adjoint))
            zT, energy = block(z0, energy=True)
        else:
            solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
            zs, es = solve(Augmented(f), (z0, z0.new_zeros(3)), torch.tensor([0.0, 1.0], dtype=torch.float64),
                           method="rk4", options=dict(step_size=0.05))
            zT, energy = zs[-1], es[-1]
        ((zT * w).sum() + 0.5 * energy.sum()).backward()
        results.append((energy.detach(), torch.cat([p.grad.reshape(-1) for p in f.parameters()])))
    (e1, g1), (e2, g2) = results
    assert e1.shape == (3,) and (e1 > 0).all() and torch.allclose(e1, e2, rtol=1e-12)
    assert ((g1 - g2).norm() / g2.norm()).item() < 1e-9


def ode_net() -> nn.Module:
    """The paper's ODE-Net, small: two strided convolutions to 16 channels at 7x7, an ODE block, a linear layer."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 4, stride=2, padding=1), nn.ReLU(),
                         odenet.ODEBlock(ConvODEFunc(16), solver=odenet.Solver.of(method="rk4", step_size=0.25)),
                         nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


@needs_data
def test_the_ode_net_built_from_odeblock_trains_on_digits():
    from odenet.data import load_split

    torch.manual_seed(0)
    train = load_split("mnist", str(real_data_dir()), True, torch.device("cpu"), subset=1024)
    net = ode_net()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for epoch in range(2):
        for x, y in train.batches(64, gen):
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5]), losses  # measured: 2.12 -> 0.37


def test_fit_makes_the_run_folder_the_cli_makes(tiny_config, tmp_path):
    summary = odenet.fit(tiny_config, name="py", progress=False, train_subset=96, test_subset=60)
    run = Path(summary["run"])
    assert run == Path(tiny_config.out) / "py" and summary["epochs"] == 1 and "report" not in summary
    assert main(["train", "--data-dir", tiny_config.data_dir, "--no-verify-data", "--epochs", "1", "--batch-size",
                 "32", "--eval-batch-size", "64", "--train-subset", "96", "--test-subset", "60", "--out",
                 tiny_config.out, "--name", "cli", "--device", "cpu", "--no-report", "--no-progress"]) == 0
    cli = run.parent / "cli"
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == \
        sorted(p.relative_to(cli).as_posix() for p in cli.rglob("*"))
    a, b = (json.loads((r / "metrics.jsonl").read_text()) for r in (run, cli))
    assert a["train_loss"] == b["train_loss"] and a["test_acc"] == b["test_acc"]
    loaded = odenet.load(run)
    assert isinstance(loaded, odenet.NeuralODEModel) and loaded.classes[0] == "0"
    again = odenet.fit(resume=run, epochs=2, progress=False)
    assert again["epochs"] == 2
    with pytest.raises(odenet.OdenetError, match="already exists"):
        odenet.fit(tiny_config, name="py", progress=False)
    with pytest.raises(odenet.OdenetError, match="unknown setting"):
        odenet.fit(tiny_config, learning_rate=0.1)


def test_all_is_the_documented_public_api():
    """Every public name has a docstring and a section in docs/api.md; api.md documents nothing else."""
    page = (ROOT / "docs" / "api.md").read_text()
    documented = re.findall(r"^### `(?:odenet\.)?([A-Za-z_]+)", page, flags=re.M)
    assert sorted(documented) == sorted(odenet.__all__)
    for name in odenet.__all__:
        obj = getattr(odenet, name)
        assert inspect.getdoc(obj) and len(inspect.getdoc(obj)) > 30, name
    assert {n for n in vars(odenet) if not n.startswith("_") and not inspect.ismodule(getattr(odenet, n))} == \
        set(odenet.__all__)


def python_blocks(text: str):
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@needs_data
def test_the_api_pages_examples_run(tmp_path, monkeypatch):
    """docs/api.md's examples, run in order in one namespace (so the page cannot rot)."""
    monkeypatch.chdir(tmp_path)
    draw_digit(tmp_path / "digit.png", "7")
    blocks = python_blocks((ROOT / "docs" / "api.md").read_text())
    assert len(blocks) >= 8
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, "docs/api.md", "exec"), namespace)  # noqa: S102 - the documentation's own examples


def test_the_readmes_from_python_snippet_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    draw_digit(tmp_path / "digit.png", "7")
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## From Python", 1)[1].split("\n## ", 1)[0]
    (code,) = python_blocks(section)
    assert len(code.strip().splitlines()) <= 6
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102
    out = capsys.readouterr().out
    assert "tensor([7])" in out and "torch.Size([3, 1, 64])" in out


@pytest.mark.parametrize("source, words", [
    ("", "an empty model path"),  # was read as None: the shipped model, without a word
    (5, "got int"),  # was a TypeError traceback
    (["run"], "got list"),
])
def test_load_refuses_what_is_not_a_model_path(source, words):
    with pytest.raises(odenet.OdenetError, match=words):
        odenet.load(source)
