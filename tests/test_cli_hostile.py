"""Hostile and careless input: the CLI, config files, checkpoints and run folders answer in one line, exit
non-zero, finish quickly and lose nothing.

Each CLI case runs ``odenet.cli.main`` in this process (a traceback would fail the test with it) and checks: a
non-zero exit, exactly one line on stderr, ``odenet: error: ...`` and the expected words, within a time bound
(refusals come before any data is read or memory allocated), and that nothing on disk changed. The demo's
cases, through its HTTP API, are in ``test_demo_hostile.py``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

from odenet import checkpoint
from odenet.cli import main
from odenet.checkpoint import SHIPPED

FAST = 20.0  # seconds: every refusal here comes before any training; generous for a loaded 2-core machine


def run_cli(argv, capsys):
    """``(exit status, stdout, stderr lines)`` of ``odenet argv``; argparse's exits included."""
    t0 = time.perf_counter()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, [line for line in err.splitlines() if line.strip()], time.perf_counter() - t0


def refused(argv, capsys, *words):
    rc, out, err, seconds = run_cli(argv, capsys)
    assert rc not in (0, None), (rc, out, err)
    assert len(err) == 1 and err[0].startswith("odenet: error: "), err
    assert "Traceback" not in out
    for w in words:
        assert w in err[0], (w, err[0])
    assert seconds < FAST, seconds
    return err[0]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes' hash: what 'nothing changed' is compared against."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


TINY = ["--epochs", 2, "--batch-size", 32, "--train-subset", 32, "--test-subset", 32, "--solver", "rk4",
        "--step-size", 0.5, "--no-report", "--no-progress", "--device", "cpu", "--no-verify-data",
        "--eval-batch-size", 32]


@pytest.fixture(scope="module")
def finished(synth_dir, tmp_path_factory):
    """A finished 2-epoch run (and a second one of another name), made once; tests copy them."""
    out = tmp_path_factory.mktemp("finished")
    for name in ("a", "b"):
        assert main(["train", *map(str, TINY), "--data-dir", str(synth_dir), "--out", str(out), "--name", name]) == 0
    return out


@pytest.fixture()
def run_a(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "runs")
    return tmp_path / "runs" / "a"


# --- train: flags and config values ------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (["--epochs", 0], ["epochs must be a positive"]),
    (["--epochs", "1.5"], ["--epochs", "invalid"]),
    (["--ode-dim", 10_000_000], ["ode-dim must be at most 4096"]),
    (["--solver", "euler", "--step-size", 1e-9], ["makes 1000000000 steps", "max-steps"]),
    (["--solver", "euler", "--step-size", 1e-300], ["max-steps"]),
    (["--solver", "euler", "--step-size", 5e-324], ["max-steps"]),
    (["--name", "../x"], ["name must be a plain folder name"]),
    (["--name", "/tmp/x"], ["name must be a plain folder name"]),
    (["--name", "a/b"], ["name must be a plain folder name"]),
    (["--device", "tpu"], ["device"]),
    (["--batch-size", 0], ["batch-size must be a positive"]),
    (["--lr", -1], ["lr must be a positive"]),
    (["--solver", "nope"], ["unknown solver 'nope'"]),
    (["--rtol", "nan"], ["rtol must be a positive"]),
    (["--t-end", "inf"], ["t-end must be a positive"]),
    (["--val-size", 59_999], ["val-size must be at most"]),
    (["--config", "missing.yaml"], ["config file not found"]),
    (["--kinetic", 0.1, "--backend", "torchdiffeq"], ["kinetic energy needs the native engine"]),
])
def test_train_refuses_bad_settings_before_anything_is_written(flags, words, capsys, tmp_path, synth_dir):
    refused(["train", *flags, "--out", tmp_path / "runs", "--data-dir", synth_dir], capsys, *words)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text, words", [
    ("seed: 1.5\n", ["seed must be an integer"]),
    ("device: 5\n", ["device must be a non-empty string"]),
    ("data_dir: 5\n", ["data-dir must be a non-empty string"]),
    ("out: {}\n", ["out must be a non-empty string, got a dict"]),
    ("name: yes\n", ["name must be a non-empty string, got True"]),
    ("epochs: [1, 2]\n", ["epochs must be a positive finite number, got a list"]),
    ("- epochs\n- 3\n", ["must hold a mapping"]),
    ("epoch: 3\n", ["unknown config key(s): epoch (did you mean epochs?)"]),
    ("epochs: 3\n  bad: [\n", ["cannot parse config file"]),
    ("train_subset: true\n", ["train-subset must be a positive integer"]),
    ("1: 2\n", ["must hold a mapping of setting names"]),
])
def test_config_file_values_are_one_line(text, words, capsys, tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    monkeypatch.chdir(tmp_path)  # no flags that would override the file's values; the default --out is ./runs
    monkeypatch.setenv("ODENET_DATA_DIR", str(tmp_path / "no-data"))  # were a case accepted, it would stop at once
    refused(["train", "--config", cfg], capsys, *words)
    assert not (tmp_path / "runs").exists()


def test_a_billion_laughs_config_is_refused_without_expanding_it(capsys, tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    lines.append("lr: *a8")
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    line = refused(["train", "--config", cfg, "--out", tmp_path / "runs"], capsys)
    assert len(line) < 300 and "lol" not in line


def test_an_oversized_config_file_is_refused_unread(capsys, tmp_path):
    cfg = tmp_path / "big.yaml"
    cfg.write_text("# padding\n" * 20_000 + "epochs: 1\n")
    refused(["train", "--config", cfg, "--out", tmp_path / "runs"], capsys, "larger than")


def test_integral_floats_in_a_config_file_are_integers(tmp_path):
    from odenet.config import Config

    cfg = Config.from_dict({"epochs": 3.0, "batch_size": 64.0}).validate()
    assert (cfg.epochs, cfg.batch_size) == (3, 64) and isinstance(cfg.epochs, int)


# --- evaluate / predict / report / demo / bench flags ------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["evaluate", "--batch-size", 0], ["--batch-size", "from 1 to"]),
    (["evaluate", "--batch-size", -5], ["--batch-size"]),
    (["evaluate", "--test-subset", -5], ["--test-subset"]),
    (["evaluate", "--test-subset", 0], ["--test-subset"]),
    (["evaluate", "--device", "tpu"], ["device"]),
    (["evaluate", "--device", "cuda:7"], ["device cuda:7"]),
    (["evaluate", "--model", "no/such/run"], ["no such run folder or checkpoint"]),
    (["predict", "x.png", "--device", "tpu"], ["device"]),
    (["predict", "x.png", "--top", 0], ["--top"]),
    (["predict", "x.png", "--top", 11], ["--top"]),
    (["demo", "--port", 99999], ["--port", "from 1 to 65535"]),
    (["demo", "--port", -1], ["--port"]),
    (["demo", "--port", "http"], ["--port", "must be an integer"]),
    (["report", "somewhere", "--tsne-points", 0], ["--tsne-points"]),
    (["bench", "speed", "--warmup", -3], ["--warmup"]),
    (["bench", "speed", "--batches", 0], ["--batches"]),
    (["bench", "gradients", "--reps", 0], ["--reps"]),
    (["bench", "gradients", "--rk4-steps", 0], ["--rk4-steps"]),
    (["bench", "gradients", "--t-ends", 1, "nan"], ["--t-ends", "got nan"]),
    (["bench", "gradients", "--data-dir", "no/such/folder"], ["not found under no/such/folder"]),  # was: random images
    (["bench", "gradients", "--t-ends", -1], ["--t-ends", "got -1.0"]),
    (["bench", "gradients", "--t-ends", 1e30], ["--t-ends", "(0, 64]"]),
    (["bench", "speed", "--device", "tpu"], ["device"]),
    (["bench", "solvers", "--epochs", 0], ["--epochs"]),
    (["bench", "solvers", "--rtols", 1e-3, -1], ["rtol must be a positive finite number, got -1"]),  # was: after
    (["bench", "solvers", "--steps", "nan"], ["step-size must be a positive finite number"]),  # the first trainings
    (["bench", "solvers", "--solvers", "rk4", "nosuch"], ["unknown solver"]),
    (["nosuchcommand"], ["invalid choice"]),
])
def test_flags_out_of_range_are_one_line(argv, words, capsys):
    refused(argv, capsys, *words)


@pytest.mark.parametrize("argv, words", [
    (["evaluate", "--model", ""], ["--model was given an empty value"]),  # read as not given: the shipped model
    (["evaluate", "--data-dir="], ["--data-dir was given an empty value"]),
    (["train", "--config", ""], ["--config was given an empty value"]),  # read as not given: a default run
    (["train", "--resume", ""], ["--resume was given an empty value"]),
    (["demo", "--model", ""], ["--model was given an empty value"]),
    (["report", ""], ["an argument was given an empty value"]),
    (["predict", "x.png", ""], ["an argument was given an empty value"]),
])
def test_empty_values_are_refused_not_read_as_not_given(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(argv, capsys, *words)
    assert not any(tmp_path.iterdir())  # no run folder, nothing written


def _every_option():
    """``(subcommand words, option)`` for every option that takes a value, in every subcommand."""
    import argparse

    from odenet.cli import build_parser

    found = []

    def walk(words, parser):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for name, sub in (subs[0].choices.items() if subs else ()):
            walk(words + [name], sub)
        if not subs:
            found.extend((words, a.option_strings[-1]) for a in parser._actions if a.option_strings and a.nargs != 0)

    walk([], build_parser())
    return found


def test_no_option_takes_an_empty_value(capsys):
    options = _every_option()
    assert len(options) > 80  # the walk reached every subcommand's options
    for words, option in options:
        refused(words + [option, ""], capsys, f"{option} was given an empty value")


def test_demo_device_and_host_are_checked(capsys):
    pytest.importorskip("gradio")
    refused(["demo", "--device", "tpu"], capsys, "device")
    refused(["demo", "--host", "999.1.1.1", "--port", 7999], capsys, "cannot serve on '999.1.1.1'")


def test_a_refused_bench_setting_leaves_no_out_folder(capsys, tmp_path):
    refused(["bench", "solvers", "--rtols", -1, "--out", tmp_path / "tables"], capsys, "rtol")
    refused(["bench", "gradients", "--t-ends", 0, "--out", tmp_path / "tables"], capsys, "--t-ends")
    assert not (tmp_path / "tables").exists()


def test_bench_out_that_is_a_file_is_refused_before_the_benchmark(capsys, tmp_path):
    f = tmp_path / "table.md"
    f.write_text("keep me")
    refused(["bench", "speed", "--out", f, "--batches", 1, "--rounds", 1], capsys, "--out", "not a folder")
    assert f.read_text() == "keep me"


def test_report_on_a_damaged_metrics_file(capsys, run_a):
    (run_a / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 0.5}\n{not json\n')
    refused(["report", run_a], capsys, "metrics.jsonl is damaged")


def test_report_on_a_folder_that_is_no_run(capsys, tmp_path):
    refused(["report", tmp_path], capsys, "no metrics.jsonl")


# --- checkpoints -------------------------------------------------------------------------------------------------

def _bad_checkpoint(tmp_path: Path, change) -> Path:
    state = checkpoint.load(str(SHIPPED))
    change(state)
    p = tmp_path / "bad.pt"
    torch.save(state, p)
    return p


@pytest.mark.parametrize("name, change, words", [
    ("t_end", lambda s: s["config"].update(t_end=-1), ["t-end must be a positive"]),
    ("dataset", lambda s: s["config"].update(dataset="cifar"), ["unknown dataset 'cifar'"]),
    ("ode_dim", lambda s: s["config"].update(ode_dim=10_000_000), ["ode-dim must be at most"]),
    ("epoch", lambda s: s.pop("epoch"), ["no epoch count"]),
    ("config", lambda s: s.pop("config"), ["does not match"]),
    ("unknown key", lambda s: s["config"].update(colour="red"), ["unknown config key(s): colour"]),
    ("weights", lambda s: s["model"].pop("classifier.2.weight"), ["does not match"]),
    ("header", lambda s: s.update(format="something else"), ["not an odenet checkpoint"]),
])
def test_a_checkpoint_config_is_validated_before_the_model_is_built(name, change, words, capsys, tmp_path):
    p = _bad_checkpoint(tmp_path, change)
    refused(["evaluate", "--model", p, "--test-subset", 10], capsys, *words)


def test_a_broken_ood_entry_is_one_line(capsys, tmp_path):
    p = _bad_checkpoint(tmp_path, lambda s: s["ood"].update(precision=torch.zeros(3)))
    img = tmp_path / "d.png"
    from PIL import Image, ImageDraw

    im = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(im).line([(50, 40), (150, 40), (90, 170)], fill=0, width=14)
    im.save(img)
    refused(["predict", img, "--model", p], capsys, "ood entry is damaged")


@pytest.mark.parametrize("payload", [b"", b"not a checkpoint at all", b"PK\x03\x04" + b"\0" * 100])
def test_files_that_are_no_checkpoint(payload, capsys, tmp_path):
    p = tmp_path / "x.pt"
    p.write_bytes(payload)
    refused(["evaluate", "--model", p], capsys, "x.pt")


# --- run folders: resume loses nothing ------------------------------------------------------------------------------

def test_resume_refuses_another_runs_checkpoint_and_keeps_the_history(capsys, run_a):
    shutil.copy(run_a.parent / "b" / "checkpoints" / "last.pt", run_a / "checkpoints" / "last.pt")
    before = snapshot(run_a)
    refused(["train", "--resume", run_a, "--epochs", 3, "--no-progress"], capsys, "belongs to another run")
    assert snapshot(run_a) == before and len((run_a / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_refuses_fewer_epochs_and_leaves_the_config(capsys, run_a):
    before = snapshot(run_a)
    refused(["train", "--resume", run_a, "--epochs", 1, "--no-progress"], capsys, "has finished 2 epochs")
    assert snapshot(run_a) == before and yaml.safe_load((run_a / "config.yaml").read_text())["epochs"] == 2


def test_resume_refuses_a_checkpoint_older_than_the_metrics(capsys, run_a):
    state = checkpoint.load(str(run_a / "checkpoints" / "last.pt"))
    state["epoch"], state["history"] = 1, state["history"][:1]
    checkpoint.save(run_a / "checkpoints" / "last.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    before = snapshot(run_a)
    refused(["train", "--resume", run_a, "--epochs", 3, "--no-progress"], capsys, "would drop recorded epochs")
    assert snapshot(run_a) == before


def test_resume_refuses_a_damaged_metrics_file(capsys, run_a):
    (run_a / "metrics.jsonl").write_text("{broken\n")
    before = snapshot(run_a)
    refused(["train", "--resume", run_a, "--epochs", 3, "--no-progress"], capsys, "metrics.jsonl is damaged")
    assert snapshot(run_a) == before


def test_resume_refuses_a_checkpoint_whose_history_is_damaged(capsys, run_a):
    state = checkpoint.load(str(run_a / "checkpoints" / "last.pt"))
    state["history"] = "lost"
    checkpoint.save(run_a / "checkpoints" / "last.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    refused(["train", "--resume", run_a, "--epochs", 3, "--no-progress"], capsys, "damaged")


def test_resume_of_a_folder_without_a_checkpoint(capsys, tmp_path):
    (tmp_path / "r").mkdir()
    refused(["train", "--resume", tmp_path / "r"], capsys, "not a resumable run folder")
    refused(["train", "--out", tmp_path, "--name", "r"], capsys, "holds no checkpoint to continue; remove it")


def test_a_new_run_never_overwrites_an_existing_folder(capsys, run_a):
    before = snapshot(run_a)
    refused(["train", *TINY, "--out", run_a.parent, "--name", "a"], capsys, "already exists")
    assert snapshot(run_a) == before


def test_resume_appends_to_the_history(capsys, run_a):
    first = (run_a / "metrics.jsonl").read_text().splitlines()
    rc, _, err, _ = run_cli(["train", "--resume", run_a, "--epochs", 3, "--no-progress"], capsys)
    assert rc == 0, err
    lines = (run_a / "metrics.jsonl").read_text().splitlines()
    assert lines[:2] == first and [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_a_run_that_fails_in_its_first_epoch_leaves_no_half_folder(capsys, tmp_path, synth_dir):
    line = refused(["train", *TINY, "--lr", 1e30, "--train-subset", 96, "--out", tmp_path / "runs", "--name", "boom",
                    "--data-dir", synth_dir], capsys, "nothing was kept")
    assert not (tmp_path / "runs" / "boom").exists() and "starts again" in line
    rc, _, err, _ = run_cli(["train", *TINY, "--out", tmp_path / "runs", "--name", "boom", "--data-dir", synth_dir],
                            capsys)
    assert rc == 0, err  # the same command starts again


def test_run_files_get_the_users_umask(run_a):
    old = os.umask(0o022)
    os.umask(old)
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt"):
        assert (run_a / name).stat().st_mode & 0o777 == 0o666 & ~old, name


def test_a_data_folder_the_user_gave_is_never_written(capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    refused(["train", "--data-dir", data, "--out", tmp_path / "runs", "--epochs", 1], capsys, "never writes into it")
    assert list(data.iterdir()) == []


@pytest.mark.parametrize("argv, what", [
    (["train", "--config", "{fifo}"], "config file"),
    (["evaluate", "--model", "{fifo}"], "checkpoint"),
    (["export", "--model", "{fifo}", "--format", "safetensors", "--out", "{tmp}/w.safetensors"], "checkpoint"),
    (["predict", "{fifo}"], "image"),
])
def test_a_pipe_is_refused_before_it_is_opened(argv, what, capsys, tmp_path):
    """A named pipe with no writer would block the first read forever: refused by its type, never opened."""
    fifo = tmp_path / "input.yaml"
    os.mkfifo(fifo)
    refused([a.format(fifo=fifo, tmp=tmp_path) for a in argv], capsys,
            f"{what} {fifo} is not a regular file (a device, pipe or socket)")
