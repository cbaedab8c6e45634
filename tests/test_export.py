"""odenet.export and odenet.invariance: the unrolled graph is the model's function on that grid, ONNX and
torch.export files give the PyTorch model's answers when run, safetensors weights load as the checkpoint did, the
torch.hub entry point gives the shipped model, and every refusal is one line."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import odenet
from conftest import import_or_skip, needs_data, real_data_dir
from odenet import checkpoint, export, invariance
from odenet.cli import main
from odenet.config import Config
from odenet.data import Split
from odenet.errors import OdenetError
from odenet.model import NeuralODEModel

ROOT = Path(odenet.__file__).resolve().parent.parent
# float32 rounding: the unrolled graph sums a step's stages term by term, the engine with one matrix product
TOL = dict(rtol=1e-4, atol=1e-6)


def small_model(seed=0, t_end=1.0):
    torch.manual_seed(seed)
    return NeuralODEModel(t_end=t_end).eval()


def images(n=64, seed=1):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method, steps, t_end", [("euler", 3, 1.0), ("midpoint", 2, 1.0), ("rk4", 4, 1.0),
                                                  ("rk4", 3, 0.7)])
def test_the_unrolled_graph_is_the_model_on_that_grid(method, steps, t_end):
    model, x = small_model(t_end=t_end), images()
    with model.odeblock.settings(method=method, step_size=t_end / steps):
        reference = model.predict(x)
        nfe = model.stats.nfe_forward
    net = export.Unrolled(model, method, steps)
    torch.testing.assert_close(net(x), reference, **TOL)
    assert len(net.intervals) * net.tableau.stages == nfe  # the same grid as the engine's, step for step
    z0 = model.encode(x)
    other = export.Unrolled(model, method, steps + 1)
    assert len(other.intervals) == len(net.intervals) + 1 and not torch.equal(other.flow(z0), net.flow(z0))


def test_onnx_file_run_by_onnxruntime_gives_the_models_answers(tmp_path):
    import_or_skip("onnxruntime", "the export extra is not installed: pip install -e '.[export]'")
    model, x = small_model(), images(37)  # a batch size the example input did not have: the batch is dynamic
    path = export.onnx(model, tmp_path / "m.onnx", "rk4", 4)
    probs = export.runner(path, "onnx")(x.numpy())
    with model.odeblock.settings(method="rk4", step_size=0.25):
        torch.testing.assert_close(torch.from_numpy(probs), model.predict(x), **TOL)
    split = Split(x, model.predict(x).argmax(1))
    res = export.check(export.runner(path, "onnx"), model, split, batch_size=10)
    assert res["n"] == 37 and res["torch_accuracy"] == 1.0  # labels are the (dopri5) model's own answers
    assert res["exported_accuracy"] == res["agreement"] >= 0.9 and res["max_probability_difference"] < 0.05


def test_torch_export_program_gives_the_same_probabilities(tmp_path):
    model, x = small_model(), images(5)
    path = export.torch_export(model, tmp_path / "m.pt2", "midpoint", 2)
    got = export.runner(path, "torch-export")(x.numpy())
    with model.odeblock.settings(method="midpoint", step_size=0.5):
        torch.testing.assert_close(torch.from_numpy(got), model.predict(x), **TOL)


def test_adaptive_solvers_and_bad_grids_are_refused_in_one_line():
    model = small_model()
    with pytest.raises(OdenetError, match=r"^dopri5 is not a fixed-step method: an adaptive solve has no static graph"):
        export.Unrolled(model, "dopri5", 4)
    for steps in (0, 1001, 2.5, True):
        with pytest.raises(OdenetError, match="^--steps must be an integer from 1 to 1000"):
            export.Unrolled(model, "rk4", steps)


def test_safetensors_weights_load_as_the_checkpoint_did(tmp_path):
    import_or_skip("safetensors", "the export extra is not installed: pip install -e '.[export]'")
    model, x = small_model(3), images(8)
    cfg = Config(seed=3)
    path = export.safetensors(model, cfg, tmp_path / "w.safetensors", epoch=7)
    back, back_cfg, state = checkpoint.load_model(path)
    assert back_cfg == cfg.validate() and state["epoch"] == 7
    torch.testing.assert_close(back.eval().predict(x), model.predict(x), rtol=0, atol=0)
    torch.testing.assert_close(odenet.load(path).predict(x), model.predict(x), rtol=0, atol=0)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(OdenetError, match="is not odenet safetensors weights"):
        odenet.load(junk)


def test_invariance_sweep_on_a_small_model():
    model = small_model()
    x = images(40)
    with model.odeblock.settings(method="dopri5", rtol=1e-7, atol=1e-9):
        labels = model.predict(x).argmax(1)
    res = invariance.sweep(model, Split(x, labels), batch_size=16, steps=(1, 8), adaptive=("dopri5",))
    assert res.reference_accuracy == 1.0 and res.n == 40
    rows = {(r.solver, r.steps): r for r in res.rows}
    assert set(rows) == {("euler", 1), ("euler", 8), ("midpoint", 1), ("midpoint", 8), ("rk4", 1), ("rk4", 8),
                         ("dopri5", None)}
    assert rows[("rk4", 8)].nfe == 32 and rows[("euler", 1)].nfe == 1
    for r in res.rows:  # the labels are the reference's answers: accuracy is agreement
        assert r.accuracy == pytest.approx(r.agreement)
    assert rows[("rk4", 8)].changed <= rows[("euler", 1)].changed
    best = res.coarsest
    assert best is not None and best.agreement >= invariance.AGREEMENT
    assert all(r.nfe >= best.nfe for r in res.rows if r.steps and r.agreement >= invariance.AGREEMENT)
    assert json.loads(json.dumps(res.to_dict()))["coarsest_fixed_grid"]["steps"] == best.steps


def test_export_cli_refusals_are_one_line_and_write_nothing(tmp_path, capsys):
    taken = tmp_path / "taken.onnx"
    taken.write_bytes(b"keep me")
    refused = [(["--out", str(taken)], "exists; odenet export never overwrites a file"),
               (["--out", str(tmp_path / "nowhere" / "m.onnx")], "no such folder"),
               (["--out", str(tmp_path / "a.onnx"), "--steps", "4"], "--steps needs --solver")]
    for args, message in refused:
        assert main(["export"] + args) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("odenet: error: ") and message in err, err
    for args in (["--solver", "tsit5"], ["--format", "tflite"], ["--steps", "0", "--solver", "rk4"]):
        with pytest.raises(SystemExit) as stop:
            main(["export", "--out", str(tmp_path / "a.onnx")] + args)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith("odenet: error: "), err
    assert taken.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["taken.onnx"]


@needs_data
def test_odenet_export_of_the_shipped_model_runs_in_onnxruntime(tmp_path, capsys):
    """The command the README gives, on 1,000 test digits: it picks its grid by the sweep, writes the file, runs it
    with onnxruntime and prints agreement and accuracy."""
    import_or_skip("onnxruntime", "the export extra is not installed: pip install -e '.[export]'")
    out = tmp_path / "m.onnx"
    assert main(["export", "--format", "onnx", "--out", str(out), "--test-subset", "1000",
                 "--data-dir", str(real_data_dir())]) == 0
    text = capsys.readouterr().out
    assert text.startswith("grid: ") and "onnxruntime on 1000 test digits: accuracy 0.99" in text
    agreement = float(text.split("same answer as the PyTorch model on ")[1].split("%")[0])
    assert agreement >= 99.9
    import onnx

    graph = onnx.load(str(out)).graph
    assert graph.input[0].name == "images" and graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert main(["export", "--out", str(tmp_path / "a.onnx"), "--solver", "dopri5", "--test-subset", "500",
                 "--data-dir", str(real_data_dir())]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dopri5 is adaptive" in err
    assert re.search(r"keeps this model's answers on 99.9% of the test set is --solver (euler|midpoint|rk4) --steps", err)
    assert not (tmp_path / "a.onnx").exists()


def test_hub_entry_point_returns_the_shipped_model():
    model = torch.hub.load(str(ROOT), "odenet", source="local")
    assert isinstance(model, NeuralODEModel) and not model.training and model.classes[0] == "0"
    x = images(3)
    torch.testing.assert_close(model.predict(x), odenet.load().predict(x), rtol=0, atol=0)
    hub = (ROOT / "hubconf.py").read_text()
    assert "dependencies = [" in hub and '"""The Neural ODE classifier' in hub
