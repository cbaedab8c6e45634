"""The benchmark code paths on tiny sizes: every solver present, sane numbers."""
import json

import pytest

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
