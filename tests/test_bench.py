"""The benchmark code paths on tiny sizes: every solver present, sane numbers."""
import json
import math
import statistics

import pytest
import torch

from conftest import needs_data, real_data_dir
from odenet.cli import main

STAGES = {"euler": 1, "midpoint": 2, "heun3": 3, "rk4": 4}


def test_bench_solvers_tiny(synth_dir, tmp_path, capsys):
    out = tmp_path / "b"
    argv = ["bench", "solvers", "--data-dir", str(synth_dir), "--no-verify-data", "--epochs", "1",
            "--train-subset", "96", "--test-subset", "60", "--rtols", "1e-2", "--steps", "0.5", "--out", str(out),
            "--device", "cpu", "--json"]
    assert main(argv) == 0
    res = json.loads((out / "solvers.json").read_text())["tables"]
    solvers = res["solvers"]
    assert [r["solver"] for r in solvers] == ["dopri5", "bosh3", "adaptive_heun", "rk4", "heun3", "midpoint", "euler"]
    for r in solvers + res["dopri5 tolerance sweep"] + res["fixed-step sweep"]:
        for k in ("test acc", "acc (reference solver)", "acc (finer)"):  # counts over the 60 test images
            assert r[k] * 60 == pytest.approx(round(r[k] * 60), abs=1e-6), (k, r[k])
        assert r["drop vs reference"] == pytest.approx(r["test acc"] - r["acc (reference solver)"])
        assert r["s/epoch"] > 0
        if r["solver"] in STAGES:
            h = float(r["setting"].split("=")[1])
            steps = round(1.0 / h)
            assert r["NFE fwd"] == r["NFE bwd"] == STAGES[r["solver"]] * steps
        if r["solver"] == "dopri5":
            assert (r["NFE fwd"] - 2) % 6 == 0  # f0 + initial step probe + 6 per step (batches all alike here)
    # the error of z(T) against the reference solve follows each method's order (one epoch barely moves the
    # shared initial network, so the six models are nearly the same ODE): lower order, larger error; 5x the step
    # gives about 5x (euler) and 25x (midpoint) the error
    err = {(r["solver"], r["setting"]): r["z(T) rel. error vs ref"] for r in solvers + res["fixed-step sweep"]}
    for step in ("step=0.1", "step=0.5"):
        assert err[("euler", step)] > 10 * err[("midpoint", step)] > 10 * err[("rk4", step)]
    assert 3 < err[("euler", "step=0.5")] / err[("euler", "step=0.1")] < 8
    assert 12 < err[("midpoint", "step=0.5")] / err[("midpoint", "step=0.1")] < 40
    assert (out / "solvers.md").read_text().count("| dopri5 |") >= 2
    assert (out / "solvers.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_gradients_tiny(tmp_path, capsys, monkeypatch):
    out = tmp_path / "g"
    monkeypatch.setenv("ODENET_DATA_DIR", str(tmp_path / "none"))  # no MNIST in the default folder: random images
    assert main(["bench", "gradients", "--t-ends", "0.5", "--rk4-steps", "2", "8", "--batch", "4", "--reps", "1",
                 "--out", str(out), "--device", "cpu"]) == 0
    rows = json.loads((out / "gradients.json").read_text())["tables"]
    rows = next(iter(rows.values()))
    modes = {(r["solver"], r["steps"], r["mode"]) for r in rows}
    assert ("dopri5", rows[0]["steps"], "adjoint + seminorm") in modes
    for r in rows:
        assert r["ms/batch"] > 0 and r["autograd MB"] > 0
        assert r["rel. grad error"] < 0.05  # float32 vs a float64 reference of the same ODE
    rk = {(r["steps"], r["mode"]): r["autograd MB"] for r in rows if r["solver"] == "rk4"}
    assert rk[(8, "direct backprop")] > rk[(2, "direct backprop")] + 0.1  # grows with steps
    assert abs(rk[(8, "adjoint")] - rk[(2, "adjoint")]) < 0.01  # flat
    assert (out / "gradients.png").is_file()


@needs_data
def test_bench_speed_tiny(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["bench", "speed", "--batches", "2", "--rounds", "1", "--warmup", "1", "--out", str(out),
                 "--device", "cpu", "--data-dir", str(real_data_dir())]) == 0
    res = json.loads((out / "speed.json").read_text())["tables"]
    rows, inference = res.values()
    by = {r["variant"]: r for r in rows}
    assert len(by) == 6
    base = min(r["ms/batch (median)"] for r in rows if r["variant"].startswith("torchdiffeq, plain"))
    for r in rows:  # every ratio against the faster plain script; s/epoch is ms/batch x 938 batches
        assert r["speed-up"] == pytest.approx(base / r["ms/batch (median)"])
        assert r["s/epoch"] == pytest.approx(r["ms/batch (median)"] * 938 / 1000)
    # every variant trains the same seeded model on the same batches with dopri5: the same NFE up to one step (the
    # engines' first-step estimates differ), except that the seminorm must take fewer backward steps
    fwd = [r["NFE fwd"] for r in rows]
    assert max(fwd) - min(fwd) <= 6 and min(fwd) >= 8
    plain_bwd = [r["NFE bwd"] for k, r in by.items() if "seminorm" not in k]
    assert max(plain_bwd) - min(plain_bwd) <= 6 and by["odenet native + seminorm"]["NFE bwd"] < min(plain_bwd)
    assert [r["backend"] for r in inference] == ["torchdiffeq", "native"]
    assert inference[0]["NFE per batch"] == inference[1]["NFE per batch"] >= 8


def test_table1_variants_shapes_and_parameter_counts():
    from odenet.bench import table1
    from test_paper import paper_params

    f = 64 * 128 + 128 + 2 * (128 * 128 + 128) + 128 * 64 + 64  # the seed's ODE function: 49,600
    seed = 268_298  # the seed's whole model (SPEC.md's print)
    expected = {"mlp": 784 * 300 + 300 + 300 * 10 + 10, "identity": seed - f, "resblock": seed,
                "resnet": seed - f + 3 * f, "rknet": seed, "odenet": seed, "odenet-kinetic": seed,
                "odenet-t4": seed, "identity-frozen": seed - f, "resblock-frozen": seed,
                "odenet-frozen": seed, "paper": paper_params(8)}
    x = torch.randn(5, 1, 28, 28)
    for name in table1.VARIANTS:
        net = table1.variant(name, blocks=3, width=8)
        assert sum(p.numel() for p in net.parameters()) == expected[name], name
        assert net(x).shape == (5, 10), name
    block = table1.Residual()
    z = torch.randn(4, 64)
    torch.testing.assert_close(block(z), z + block.f(z))


def test_table1_rows_measure_what_they_say(synth_dir):
    """On the synthetic digits: the adjoint saves less for backward than backprop through rk4, only the ODE rows
    count evaluations, and the summary's mean and sd are those of the runs."""
    from odenet.bench import table1
    from odenet.data import load_split

    train = load_split("mnist", str(synth_dir), True, torch.device("cpu"), 128, verify=False)
    test = load_split("mnist", str(synth_dir), False, torch.device("cpu"), None, verify=False)
    rows = [table1.train_variant(v, s, train, test, epochs=1, blocks=2) for v in ("identity", "rknet", "odenet")
            for s in (0, 1)]
    frozen = table1.train_variant("odenet-frozen", 0, train, test, epochs=1, blocks=2)
    by = {(r["variant"], r["seed"]): r for r in rows}
    encoder = 268_298 - 49_600 - (64 * 64 + 64 + 64 * 10 + 10)  # the seed's minus its ODE function and classifier
    assert frozen["params"] == by[("odenet", 0)]["params"] == 268_298 and frozen["trained"] == 268_298 - encoder
    assert math.isnan(by[("identity", 0)]["z0_error"]) and 0 <= by[("odenet", 0)]["z0_error"] <= 1
    assert by[("rknet", 0)]["saved_MB"] > by[("odenet", 0)]["saved_MB"]
    assert by[("rknet", 0)]["nfe"] == 16 and by[("odenet", 0)]["nfe"] >= 8 and math.isnan(by[("identity", 0)]["nfe"])
    for r in rows:
        assert r["test_error"] * len(test) == pytest.approx(round(r["test_error"] * len(test)))  # a count of 120
    summary = {s["variant"]: s for s in table1.summarize(rows)}
    errs = [100 * by[("odenet", s)]["test_error"] for s in (0, 1)]
    assert summary["odenet"]["test error %"] == pytest.approx(sum(errs) / 2) and summary["odenet"]["seeds"] == 2
    assert summary["odenet"]["± sd"] == pytest.approx(statistics.stdev(errs))


def test_roofline_counts_flops_as_the_formulas_say(tmp_path, capsys):
    from odenet.bench.roofline import FlopCount, matmul_rate, step_flops
    from odenet.model import NeuralODEModel
    from odenet.train import make_optimizer

    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with FlopCount() as c:
        torch.mm(a, b)
        torch.addmm(torch.zeros(8, 4), a, b)
    assert c.total == 2 * (2 * 8 * 16 * 4)
    model = NeuralODEModel(method="rk4", step_size=0.5)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    fl = step_flops(model, make_optimizer(model, 0.0), x, y)
    f_mlp = 2 * 4 * (64 * 128 + 128 * 128 * 2 + 128 * 64)  # one evaluation of f on 4 states
    assert model.stats.nfe_forward == 8 and fl["forward"] > 8 * f_mlp and fl["backward"] > fl["forward"]
    assert matmul_rate(torch.device("cpu"), torch.float32, n=64, reps=2) > 0
    assert main(["bench", "roofline", "--steps", "2", "--batch", "8", "--out", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    step = out["tables"]["FLOPs, time and rate"][0]
    assert step["GFLOP/s"] == pytest.approx(step["GFLOP"] / step["ms"] * 1e3)


def test_full_epochs_are_timed_in_interleaved_slices():
    from odenet.bench.speed import _full_epochs

    calls = []
    steppers = {k: ((lambda k=k: calls.append(k)), None) for k in ("a", "b", "c")}
    secs = _full_epochs(steppers, torch.device("cpu"), chunks=10)
    assert [calls.count(k) for k in "abc"] == [938] * 3 and set(secs) == set("abc")  # one whole epoch each
    sizes = [938 * (c + 1) // 10 - 938 * c // 10 for c in range(10)]
    order = "".join(("abc" if c % 2 == 0 else "cba") for c in range(10))  # the order reversed every round
    assert calls == [k for c, n in enumerate(sizes) for k in order[3 * c:3 * c + 3] for _ in range(n)]
