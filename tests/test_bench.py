"""The benchmark code paths on tiny sizes: every solver present, sane numbers."""
import json

import pytest

from conftest import real_data_dir
from odenet.cli import main

STAGES = {"euler": 1, "midpoint": 2, "rk4": 4}


def test_bench_solvers_tiny(synth_dir, tmp_path, capsys):
    out = tmp_path / "b"
    argv = ["bench", "solvers", "--data-dir", str(synth_dir), "--no-verify-data", "--epochs", "1",
            "--train-subset", "96", "--test-subset", "60", "--rtols", "1e-2", "--steps", "0.5", "--out", str(out),
            "--device", "cpu", "--json"]
    assert main(argv) == 0
    res = json.loads((out / "solvers.json").read_text())["tables"]
    solvers = res["solvers"]
    assert [r["solver"] for r in solvers] == ["dopri5", "bosh3", "adaptive_heun", "rk4", "midpoint", "euler"]
    for r in solvers + res["dopri5 tolerance sweep"] + res["fixed-step sweep"]:
        assert 0 <= r["test acc"] <= 1 and r["s/epoch"] > 0
        assert 0 <= r["acc (reference solver)"] <= 1 and 0 <= r["acc (finer)"] <= 1
        assert r["z(T) rel. error vs ref"] >= 0
        if r["solver"] in STAGES:
            h = float(r["setting"].split("=")[1])
            steps = round(1.0 / h)
            assert r["NFE fwd"] == r["NFE bwd"] == STAGES[r["solver"]] * steps
        if r["solver"] == "dopri5":
            assert (r["NFE fwd"] - 2) % 6 == 0  # f0 + initial step probe + 6 per step (batches all alike here)
    assert (out / "solvers.md").read_text().count("| dopri5 |") >= 2
    assert (out / "solvers.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_gradients_tiny(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["bench", "gradients", "--t-ends", "0.5", "--rk4-steps", "2", "8", "--batch", "4", "--reps", "1",
                 "--out", str(out), "--device", "cpu", "--data-dir", str(tmp_path / "none")]) == 0
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


@pytest.mark.skipif(real_data_dir() is None, reason="real MNIST not available (set ODENET_DATA_DIR to a copy of it)")
def test_bench_speed_tiny(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["bench", "speed", "--batches", "2", "--rounds", "1", "--warmup", "1", "--out", str(out),
                 "--device", "cpu", "--data-dir", str(real_data_dir())]) == 0
    res = json.loads((out / "speed.json").read_text())["tables"]
    rows = next(iter(res.values()))
    assert len(rows) == 6 and max(r["speed-up"] for r in rows[:2]) == 1.0  # against the faster plain script
    assert all(r["ms/batch (median)"] > 0 and r["NFE fwd"] >= 8 for r in rows)
