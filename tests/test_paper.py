"""The paper's conv ODE-Net (``NeuralODEModel(arch="paper")``, ``odenet train --arch paper``)."""
import json
from pathlib import Path

import pytest
import torch

from odenet.cli import main
from odenet.config import Config
from odenet.errors import OdenetError
from odenet.model import NeuralODEModel
from odenet.paper import ConvODEFunc


def paper_params(w: int, classes: int = 10) -> int:
    """Parameters of Chen et al.'s MNIST ODE-Net of width ``w``, counted from its layers by hand."""
    gn = 2 * w
    encoder = (9 * w + w) + gn + (16 * w * w + w) + gn + (16 * w * w + w)
    f = 2 * (9 * (w + 1) * w + w) + 3 * gn
    head = gn + w * classes + classes
    return encoder + f + head


def test_the_paper_model_has_the_papers_layers_and_size():
    m = NeuralODEModel(arch="paper")
    assert [n for n, _ in m.named_children()] == ["encoder", "odefunc", "odeblock", "classifier"]
    assert m.odefunc is m.odeblock.odefunc and isinstance(m.odefunc, ConvODEFunc)
    assert sum(p.numel() for p in m.parameters()) == paper_params(64) == 208_266  # the paper's "0.22 M"
    text = str(m)
    assert "GroupNorm(32, 64" in text and "Conv2d(65, 64, kernel_size=(3, 3)" in text and "Tanh" not in text
    assert m.state_shape == (64, 6, 6)
    small = NeuralODEModel(8, arch="paper")
    assert sum(p.numel() for p in small.parameters()) == paper_params(8)


def test_shapes_along_the_flow_and_the_time_input():
    torch.manual_seed(0)
    m = NeuralODEModel(8, arch="paper", method="rk4", step_size=0.25)
    x = torch.randn(3, 1, 28, 28)
    z0 = m.encode(x)
    assert z0.shape == (3, 8, 6, 6) and m(x).shape == (3, 10)
    traj = m.trajectory(x, [0.0, 0.5, 1.0])
    assert traj.shape == (3, 3, 8, 6, 6)
    torch.testing.assert_close(traj[-1], m.odeblock(z0))
    probs = m.decision(x, [0.0, 1.0])
    assert probs.shape == (2, 3, 10)
    # classify keeps each state apart: the same as the head on each time's batch
    torch.testing.assert_close(probs[1], torch.softmax(m.classifier(traj[-1]), -1))
    assert m.flat(z0).shape == (3, 8 * 36)
    # the time enters f as an input channel
    assert not torch.allclose(m.odefunc(0.0, z0), m.odefunc(1.0, z0))


def test_adjoint_gradients_converge_to_backprops():
    """The adjoint on a time-dependent conv state with GroupNorm: its gradients approach those of backprop through
    the same dopri5 solve as the tolerance tightens (both differ from the exact gradient by the solves' error)."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 1, 28, 28, dtype=torch.float64), torch.tensor([3, 7])
    gaps = []
    for tol in (1e-5, 1e-7):
        grads = []
        for adjoint in (True, False):
            torch.manual_seed(1)
            m = NeuralODEModel(4, arch="paper", rtol=tol, atol=tol, adjoint=adjoint).double()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in m.parameters()]))
        assert grads[1].abs().max() > 0
        gaps.append(float((grads[0] - grads[1]).abs().max() / grads[1].abs().max()))
    assert gaps[1] < 0.5 * gaps[0] and gaps[1] < 1e-2, gaps


@pytest.mark.parametrize("make,message", [
    (lambda: NeuralODEModel(arch="conv"), "unknown arch"),
    (lambda: NeuralODEModel(513, arch="paper"), "at most 512"),
    (lambda: Config(arch="paper", ode_dim=513).validate(), "at most 512"),
    (lambda: Config(arch="resnet").validate(), "unknown arch"),
])
def test_bad_architectures_are_refused_before_anything_is_built(make, message):
    with pytest.raises(OdenetError, match=message):
        make()


def test_export_refuses_the_paper_model_in_one_line():
    from odenet.export import Unrolled

    with pytest.raises(OdenetError, match="seed's ODEFunc"):
        Unrolled(NeuralODEModel(8, arch="paper"), "rk4", 2)


def test_train_arch_paper_end_to_end(synth_dir, tmp_path, capsys, monkeypatch):
    """``odenet train --arch paper`` trains, reports (flow section included), evaluates, loads and resumes."""
    monkeypatch.setenv("ODENET_DATA_DIR", str(synth_dir))
    out = tmp_path / "runs"
    args = ["train", "--arch", "paper", "--ode-dim", "8", "--epochs", "2", "--solver", "rk4", "--step-size", "0.5",
            "--lr", "0.01", "--batch-size", "32", "--out", str(out), "--name", "p", "--no-verify-data",
            "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    run = out / "p"
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["test_acc"] > 0.3 and lines[-1]["nfe_forward"] == 8  # chance is 0.1; rk4 x 2 steps
    flow = lines[-1]["flow"]
    assert flow["acc_zT"] == lines[-1]["test_acc"] and flow["rel_displacement"] > 0
    html = (run / "report.html").read_text()
    assert "ConvODEFunc" in html and "GroupNorm" in html
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == lines[-1]["test_acc"]
    import odenet

    model = odenet.load(str(run))
    assert model.arch == "paper" and model.state_shape == (8, 6, 6)
    # the demo's whole path: load, the flow under a chosen solver, the PCA map of flattened maps, both figures
    import numpy as np

    from odenet.demo import load_predictor

    pred = load_predictor(str(run))
    pred.out_dir = tmp_path
    img = np.zeros((28, 28), np.uint8)
    img[4:24, 12:16] = 255
    flow, _, flow_png, path_png = pred.render(img, "rk4", 1e-3, 1e-4, 0.25, 1.0)
    assert flow.z.shape == (41, 8 * 36) and flow.probs.shape == (41, 10)
    assert Path(flow_png).is_file() and Path(path_png).is_file()
    assert main(["train", "--resume", str(run), "--arch", "seed"]) == 1
    assert "arch" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-report"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert Path(run / "checkpoints" / "last.pt").is_file()
