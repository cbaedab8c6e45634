"""``torchrun`` data-parallel training on CPU (gloo, 2 processes) against one process on the same batches."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from odenet import checkpoint
from odenet.train import train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch has no gloo backend")


def _flags(synth_dir, out, name, **kw):
    base = {"--data-dir": synth_dir, "--out": out, "--name": name, "--device": "cpu", "--seed": 0}
    base.update(kw)
    args = [str(a) for k, v in base.items() for a in ((k, v) if v is not True else (k,))]
    return args + ["--no-verify-data", "--no-report", "--no-progress"]


def _torchrun(args, nproc=2, wait=True, timeout=900):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "odenet", "train", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=tempfile.gettempdir())  # torchrun's log folders: pytest's
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # its own process group, as a terminal would give it
    if not wait:
        return proc
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _single(synth_dir, out, name, **kw) -> Path:
    """The same run in this process (``train``), from the same flags as the torchrun call."""
    from odenet.cli import _train_config, build_parser

    args = build_parser().parse_args(["train", *_flags(synth_dir, out, name, **kw)])
    cfg = _train_config(args)
    run = Path(cfg.out) / cfg.name
    train(cfg, run, progress=False, log=lambda m: None)
    return run


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _states(run: Path):
    state = checkpoint.load(str(run / "checkpoints" / "last.pt"))
    return state, [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("solver,extra", [
    ("rk4", {}),
    ("rk4", {"--no-adjoint": True}),
    ("dopri5", {"--rtol": 1e-7, "--atol": 1e-9}),
])
def test_one_step_on_two_ranks_equals_one_process(synth_dir, tmp_path, solver, extra):
    flags = {"--solver": solver, "--step-size": 0.25, "--batch-size": 64, "--train-subset": 64, "--epochs": 1,
             "--test-subset": 64, **extra}
    rc, out, err = _torchrun(_flags(synth_dir, tmp_path, "ddp", **flags))
    assert rc == 0, err[-2000:]
    one = _single(synth_dir, tmp_path, "one", **flags)
    (two_state, two_metrics), (one_state, one_metrics) = _states(tmp_path / "ddp"), _states(one)
    # the checkpoint of the 2-rank run has plain names: it loads into the single-process model
    assert set(two_state["model"]) == set(one_state["model"]) and not any(k.startswith("module.") for k in two_state["model"])
    torch.manual_seed(0)  # the initial weights of both runs (--seed 0)
    from odenet.model import NeuralODEModel

    fresh = NeuralODEModel().state_dict()
    # rk4: the same steps on both sides, only the summation order differs, so the gradients (Adam's first moment
    # after its first step is (1 - beta1) * g, saved in the checkpoint) agree to float32 rounding: a dot product
    # of length K is exact to gamma_K = K * u (u = eps / 2); the longest reduction in the network is the encoder's
    # Linear(32 * 7 * 7, 128), K = 1568, and the chain composes two (forward and backward): 2 * gamma_1568
    # ~ 1.9e-4. Parameters are not compared for rk4: Adam's first step lr * g / (|g| + 1e-8) turns a rounding
    # difference in an element whose gradient cancels to ~1e-8 into a step difference of order lr.
    # dopri5: each rank's solver chooses its own steps for its 32 images, so the gradients agree to the solver's
    # tolerance and the parameters to Adam's step of it.
    if solver == "rk4":
        grad_bound = 2 * 1568 * torch.finfo(torch.float32).eps / 2
        names = [k for k, _ in NeuralODEModel().named_parameters()]  # the optimizer's order
        assert len(names) == len(one_state["optimizer"]["state"])
        for i, k in enumerate(names):
            g1 = one_state["optimizer"]["state"][i]["exp_avg"]
            g2 = two_state["optimizer"]["state"][i]["exp_avg"]
            assert _rel(g2, g1) < grad_bound, k
            assert g1.abs().max() > 0, k  # the step reached every parameter tensor
    else:
        for k, p in one_state["model"].items():
            q, p0 = two_state["model"][k], fresh[k]
            assert _rel(q, p) < 1e-3, k
            # Adam's first step is about lr * sign(gradient); had a rank stepped on its own 32 images (no
            # all-reduce), the updates would differ by order 1
            assert _rel(q - p0, p - p0) < 5e-2, k
            assert (p - p0).abs().max() > 1e-4, k  # the step moved every parameter tensor
    assert two_metrics[0]["ranks"] == 2 and one_metrics[0]["ranks"] == 1
    assert two_metrics[0]["train_images"] == one_metrics[0]["train_images"] == 64
    assert two_metrics[0]["train_loss"] == pytest.approx(one_metrics[0]["train_loss"], rel=1e-6)
    # the adjoint's gradients went through DDP's all-reduce: without it rank 0 would have stepped on 32 images
    assert "distributed: 2 ranks (gloo), 32 images per rank per batch" in out


def test_recipe_epoch_on_two_ranks_equals_one_process(synth_dir, tmp_path):
    """Two epochs of the recipe's levers, with a last batch of 3 images split 1 / 2 over the ranks.

    The kinetic term is weighted like the loss on each rank, so its gradient after DDP's average is the one
    process's even where the shards differ in size."""
    flags = {"--solver": "rk4", "--step-size": 0.5, "--batch-size": 64, "--train-subset": 163, "--epochs": 2,
             "--test-subset": 64, "--val-size": 32, "--optimizer": "adamw", "--weight-decay": 0.05,
             "--label-smoothing": 0.1, "--ema": 0.9, "--warmup-epochs": 1, "--lr": 3e-3,
             "--aug-rotate": 10, "--aug-translate": 2, "--aug-scale": 0.1, "--kinetic": 0.5}
    rc, out, err = _torchrun(_flags(synth_dir, tmp_path, "ddp", **flags))
    assert rc == 0, err[-2000:]
    one = _single(synth_dir, tmp_path, "one", **flags)
    (two_state, two_metrics), (one_state, one_metrics) = _states(tmp_path / "ddp"), _states(one)
    # 163 - 32 validation = 131 images: batches of 64, 64, 3 -> every image counted once per epoch
    assert [r["train_images"] for r in two_metrics] == [131, 131]
    for a, b in zip(two_metrics, one_metrics):
        for k in ("train_loss", "train_acc", "val_acc", "test_acc", "test_loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
    for key in ("model", "train_model"):  # EMA weights and raw weights
        for k, p in one_state[key].items():
            assert _rel(two_state[key][k], p) < 1e-5, f"{key}.{k}"
    assert (tmp_path / "ddp" / "checkpoints" / "best.pt").is_file()
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in one.iterdir())


def test_batch_that_does_not_divide_is_one_line_error(synth_dir, tmp_path):
    rc, out, err = _torchrun(_flags(synth_dir, tmp_path, "odd", **{"--batch-size": 63, "--epochs": 1}))
    assert rc != 0
    lines = [line for line in err.splitlines() if line.startswith("odenet: error:")]
    assert lines == ["odenet: error: batch-size 63 is the global batch and must divide evenly over the 2 ranks"]
    # no traceback from odenet's code (torchrun prints its own summary of the failed processes after it): frames
    # in the installed package's own folder, wherever the checkout or the virtual environment lives
    import odenet

    package = str(Path(odenet.__file__).resolve().parent) + "/"
    assert not [line for line in err.splitlines() if line.strip().startswith("File") and package in line]
    assert not (tmp_path / "odd" / "checkpoints" / "last.pt").exists()


def _workers(parent: int):
    """{rank: pid} of the worker processes that torchrun ``parent`` started."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            for item in env:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(d.name)
    return found


def _wait_epochs(run: Path, n: int, proc, limit=900):
    """Until the run has logged ``n`` epochs; ``limit`` only catches a hang, it is no speed requirement."""
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.is_file() and metrics.read_text().count("\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{run} did not reach epoch {n}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's workers through /proc")
def test_killed_rank_ends_the_job_then_resume_on_two_ranks_and_one(synth_dir, tmp_path):
    run = tmp_path / "k"
    flags = {"--solver": "euler", "--step-size": 0.5, "--batch-size": 32, "--train-subset": 320, "--epochs": 500}
    proc = _torchrun(_flags(synth_dir, tmp_path, "k", **flags), wait=False)
    _wait_epochs(run, 1, proc)
    workers = _workers(proc.pid)
    assert sorted(workers) == [0, 1]
    os.kill(workers[1], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)  # torchrun stops the group: no rank waits forever (a hang fails here)
    assert proc.returncode != 0
    done = checkpoint.load(str(run / "checkpoints" / "last.pt"))["epoch"]
    assert 1 <= done < 500
    # one more epoch in a single process, then one more on two ranks: a checkpoint written by either serves both
    from odenet.cli import main

    assert main(["train", "--resume", str(run), "--epochs", str(done + 1), "--no-progress", "--no-report"]) == 0
    rc, out, err = _torchrun(["--resume", str(run), "--epochs", str(done + 2), "--no-progress", "--no-report"])
    assert rc == 0, err[-2000:]
    assert f"resuming {run} after epoch {done + 1}" in out
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["ranks"] for r in metrics[-3:]] == [2, 1, 2]
    assert [r["epoch"] for r in metrics] == list(range(1, done + 3))


@pytest.mark.parametrize("how", ["SIGTERM to torchrun", "Ctrl-C to the process group"])
def test_signal_stops_every_rank_between_batches(synth_dir, tmp_path, how):
    run = tmp_path / "t"
    flags = {"--solver": "euler", "--step-size": 0.5, "--batch-size": 32, "--train-subset": 320, "--epochs": 500}
    proc = _torchrun(_flags(synth_dir, tmp_path, "t", **flags), wait=False)
    _wait_epochs(run, 1, proc)
    if how.startswith("SIGTERM"):
        proc.send_signal(signal.SIGTERM)
    else:  # a terminal's Ctrl-C reaches torchrun and its workers alike
        os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=600)  # a hang fails here; no speed is asked
    assert proc.returncode != 0
    lines = [line for line in err.splitlines() if line.startswith("odenet: error:")]
    assert len(lines) == 1 and "interrupted during epoch" in lines[0] and "--resume" in lines[0], err[-3000:]
    state = checkpoint.load(str(run / "checkpoints" / "last.pt"))
    assert state["epoch"] == len((run / "metrics.jsonl").read_text().splitlines())


@pytest.mark.parametrize("env,msg", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE is set but RANK is not: start distributed training with torchrun"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a number"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "rank 0: could not join the process group"),
])
def test_broken_distributed_environment_is_one_line_error(synth_dir, tmp_path, monkeypatch, capsys, env, msg):
    from odenet.cli import main

    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["train", *_flags(synth_dir, tmp_path, "bad", **{"--epochs": 1})]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"odenet: error: {msg}") and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()
