"""Training, checkpoints, resume, and the command line end to end on a small self-made dataset."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import needs_data, real_data_dir, synthetic_digits
from odenet import checkpoint
from odenet.cli import main
from odenet.config import Config
from odenet.errors import OdenetError
from odenet.train import train


def _fast(cfg: Config, **kw) -> Config:
    for k, v in {"solver": "rk4", "step_size": 0.5, **kw}.items():
        setattr(cfg, k, v)
    return cfg


def test_train_writes_run_folder_and_learns(tiny_config):
    cfg = _fast(tiny_config, epochs=3, lr=3e-3)
    run = Path(cfg.out) / cfg.name
    summary = train(cfg, run, progress=False, log=lambda m: None)
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    keys = {"train_loss", "train_acc", "test_loss", "test_acc", "nfe_forward", "nfe_backward", "epoch_seconds",
            "images_per_s", "lr"}
    assert keys <= set(lines[0])
    assert lines[0]["nfe_forward"] == 8 and lines[0]["nfe_backward"] == 8  # rk4, 2 steps, 4 stages each way
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert lines[-1]["test_acc"] > 0.5  # the synthetic classes are easy; chance is 0.1
    flow = lines[-1]["flow"]  # what the flow contributes, recorded at the end of training only
    assert "flow" not in lines[0] and flow["acc_zT"] == lines[-1]["test_acc"] and flow["n"] == 120
    assert flow["acc_by_t"]["1T"] == pytest.approx(flow["acc_zT"], abs=2 / 120) and flow["acc_by_t"]["0"] == flow["acc_z0"]
    assert (run / "checkpoints" / "last.pt").is_file()
    assert not (run / "checkpoints" / "best.pt").exists()  # no validation split: the test set chooses nothing
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3
    assert summary["final_test_acc"] == lines[-1]["test_acc"] and "best_epoch" not in summary
    # the folder the data came from is recorded, so evaluate/report find it without the environment
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["data_dir"] == cfg.data_dir


def test_same_seed_same_epoch_one(tiny_config, tmp_path):
    res = []
    for name in ("a", "b"):
        cfg = _fast(tiny_config, name=name)
        train(cfg, Path(cfg.out) / name, progress=False, log=lambda m: None)
        res.append(json.loads((Path(cfg.out) / name / "metrics.jsonl").read_text().splitlines()[0]))
    for k in ("train_loss", "train_acc", "test_loss", "test_acc", "nfe_forward", "nfe_backward"):
        assert res[0][k] == res[1][k], k


def test_resume_reaches_identical_final_metrics(tiny_config):
    full = _fast(tiny_config, name="full", epochs=2, solver="dopri5")
    train(full, Path(full.out) / "full", progress=False, log=lambda m: None)
    part = _fast(tiny_config, name="part", epochs=1, solver="dopri5")
    run = Path(part.out) / "part"
    train(part, run, progress=False, log=lambda m: None)
    part.epochs = 2
    train(part, run, resume=True, progress=False, log=lambda m: None)
    a = [json.loads(s) for s in (Path(full.out) / "full" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 2
    for k in ("train_loss", "test_loss", "test_acc", "nfe_forward", "nfe_backward", "flow"):
        assert a[-1][k] == b[-1][k], k
    assert "flow" in b[0] and "flow" not in a[0]  # the part run's end was recorded, and resuming keeps it
    ma, _, _ = checkpoint.load_model(str(Path(full.out) / "full" / "checkpoints" / "last.pt"))
    mb, _, _ = checkpoint.load_model(str(run / "checkpoints" / "last.pt"))
    for p, q in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(p, q)


def test_checkpoint_errors(tmp_path, tiny_config):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(OdenetError, match="not a readable odenet checkpoint"):
        checkpoint.load(str(junk))
    other = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), other)
    with pytest.raises(OdenetError, match="not an odenet checkpoint"):
        checkpoint.load(str(other))
    wrong = tmp_path / "wrong.pt"
    checkpoint.save(wrong, {"config": Config().to_dict(), "model": torch.nn.Linear(3, 3).state_dict(), "epoch": 1})
    with pytest.raises(OdenetError, match="does not match"):
        checkpoint.load_model(str(wrong))


def test_divergence_stops_with_epoch_and_batch(tiny_config):
    cfg = _fast(tiny_config, name="div", lr=1e6, epochs=2)
    with pytest.raises(OdenetError, match=r"diverged at epoch \d+, batch \d+"):
        train(cfg, Path(cfg.out) / "div", progress=False, log=lambda m: None)


def test_divergence_in_the_first_epoch_says_nothing_was_kept(synth_dir, tmp_path, capsys):
    """A kinetic weight of 1e30 blows the adjoint up in the first batch (it was a ZeroDivisionError traceback): one
    line, and it does not claim a checkpoint was kept where none was written."""
    out = tmp_path / "runs"
    assert main(["train", "--kinetic", "1e30", "--epochs", "1", "--train-subset", "64", "--test-subset", "32",
                 "--batch-size", "32", "--out", str(out), "--data-dir", str(synth_dir), "--no-verify-data",
                 "--no-report", "--no-progress", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("odenet: error: training diverged at epoch 1, batch 1: the "
                                                    "derivative at the start of the solve holds NaN or infinite values")
    assert "no epoch finished, so nothing was kept" in err and "checkpoint kept" not in err
    assert not any(out.iterdir())


def _digit_png(path: Path, label: int, dark_on_light: bool) -> None:
    x, y = synthetic_digits(200, 5)
    img = x[list(y).index(label)]
    img = np.kron(img, np.ones((3, 3), dtype=np.uint8))  # 84x84, a different size
    if dark_on_light:
        img = 255 - img
    Image.fromarray(np.stack([img] * 3, -1)).save(path)


def test_cli_end_to_end(synth_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ODENET_DATA_DIR", str(synth_dir))
    out = tmp_path / "runs"
    args = ["train", "--epochs", "3", "--solver", "rk4", "--step-size", "0.5", "--lr", "0.003", "--batch-size", "32",
            "--out", str(out), "--name", "e2e", "--no-verify-data", "--no-report", "--device", "cpu"]
    assert main(args) == 0
    run = out / "e2e"
    assert "test accuracy after the last epoch" in capsys.readouterr().out
    monkeypatch.delenv("ODENET_DATA_DIR")  # the run folder remembers where its data came from
    assert main(["evaluate", "--model", str(run), "--json", "--device", "cpu"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == 120 and 0.5 < ev["accuracy"] <= 1 and len(ev["per_class_accuracy"]) == 10
    assert ev["split"] == "test" and ev["chosen_by"] == "final epoch" and ev["checkpoint"].endswith("last.pt")
    assert ev["nfe_mean"] == 8
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    _digit_png(a, 2, dark_on_light=False)
    _digit_png(b, 7, dark_on_light=True)
    assert main(["predict", str(a), str(b), "--model", str(run / "checkpoints" / "last.pt"), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert [p["top"][0]["class"] for p in pred] == ["2", "7"]
    # the three shown are the model's three most probable classes, with its probabilities
    from odenet.data import normalize
    from odenet.images import prepare_image

    model, _, _ = checkpoint.load_model(str(run))
    with torch.no_grad():
        probs = torch.softmax(model(normalize(torch.from_numpy(np.stack([prepare_image(str(a)),
                                                                         prepare_image(str(b))])), "mnist")), 1)
    for p, q in zip(pred, probs):
        top, idx = q.topk(3)
        assert [t["class"] for t in p["top"]] == [str(int(i)) for i in idx]
        assert [t["probability"] for t in p["top"]] == pytest.approx(top.tolist(), abs=1e-6)
    # the same run folder again is refused and left untouched
    before = (run / "metrics.jsonl").read_bytes()
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_bytes() == before
    # resume extends it; switches that do not change training are allowed
    assert main(["train", "--resume", str(run), "--epochs", "4", "--no-progress", "--no-report"]) == 0
    capsys.readouterr()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize("argv,msg", [
    (["train", "--solver", "magic"], "unknown solver"),
    (["train", "--rtol", "-1"], "rtol must be a positive"),
    (["train", "--epochs", "0"], "epochs must be a positive"),
    (["train", "--resume", "nowhere"], "not a resumable run folder"),
    (["evaluate", "--model", "missing-run"], "no such run folder"),
    (["train", "--config", "missing.yaml"], "config file not found"),
    (["train", "--kinetic", "-1"], "kinetic must be a finite number >= 0"),
    (["train", "--kinetic", "0.01", "--backend", "torchdiffeq"], "kinetic energy needs the native engine"),
    (["train", "--kinetic", "0.01", "--solver", "dopri8"], "kinetic energy needs the native engine"),
])
def test_cli_bad_input_one_line_error(argv, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_cli_bad_files(tmp_path, capsys, tiny_config):
    cfg = _fast(tiny_config, name="m")
    train(cfg, Path(cfg.out) / "m", progress=False, log=lambda m: None)
    ck = Path(cfg.out) / "m" / "checkpoints" / "last.pt"
    text = tmp_path / "note.png"
    text.write_text("hello")
    assert main(["predict", str(text), "--model", str(ck)]) == 1
    assert "not a readable image" in capsys.readouterr().err
    assert main(["predict", str(text), "--model", str(text)]) == 1
    assert "not a readable odenet checkpoint" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(ck), "--data-dir", str(tmp_path / "nodata")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("odenet: error: mnist t10k-images-idx3-ubyte.gz")
    assert "never writes into it" in err and not (tmp_path / "nodata").exists()  # a folder given is only read


def test_console_script_help_shows_defaults():
    out = subprocess.run([sys.executable, "-m", "odenet", "train", "--help"], capture_output=True, text=True,
                         check=True).stdout
    out = " ".join(out.split())
    for text in ("--solver", "(default: dopri5)", "(default: 64)", "(default: 0.001)", "--no-adjoint", "--resume"):
        assert text in out


@needs_data
def test_real_mnist_short_training(tmp_path):
    cfg = Config(epochs=2, train_subset=5000, test_subset=1000, data_dir=str(real_data_dir()), out=str(tmp_path),
                 name="real", device="cpu", report=False)
    summary = train(cfg, tmp_path / "real", progress=False, log=lambda m: None)
    assert summary["final"]["test_acc"] > 0.9


@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_interrupt_then_resume(synth_dir, tmp_path, sig):
    import signal
    import time

    run = tmp_path / "runs" / "int"
    cmd = [sys.executable, "-m", "odenet", "train", "--epochs", "300", "--solver", "euler", "--step-size", "0.5",
           "--batch-size", "64", "--out", str(tmp_path / "runs"), "--name", "int", "--no-verify-data", "--no-report",
           "--device", "cpu", "--data-dir", str(synth_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hang = time.time() + 900  # only catches a hang: however slow the machine, the signal comes after epoch 2
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < hang, "training ended or hung before epoch 2"
        time.sleep(0.05)
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=600)
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert 2 <= done < 300
    if sig == "SIGINT":
        assert proc.returncode == 130
        assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    else:
        assert proc.returncode == -9
    state = checkpoint.load(str(run / "checkpoints" / "last.pt"))
    assert state["epoch"] in (done, done + 1)  # a kill between checkpoint and metrics write loses nothing
    assert main(["train", "--resume", str(run), "--epochs", str(done + 1), "--no-progress"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == done + 1


def test_resume_refuses_other_settings(tiny_config, capsys):
    cfg = _fast(tiny_config, name="r1")
    run = Path(cfg.out) / "r1"
    train(cfg, run, progress=False, log=lambda m: None)
    assert main(["train", "--resume", str(run), "--solver", "euler"]) == 1
    assert "only --epochs" in capsys.readouterr().err


def test_fashion_mnist_and_config_precedence(tmp_path, capsys, monkeypatch):
    from conftest import make_dataset

    root = make_dataset(tmp_path / "data", n_train=96, n_test=40, folder="FashionMNIST")
    (tmp_path / "run.yaml").write_text("solver: euler\nstep-size: 0.5\nepochs: 1\nlr: 0.1\nseminorm: true\n"
                                       "aug-flip: true\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "run.yaml", "--lr", "0.002", "--dataset", "fashion-mnist", "--data-dir",
                 str(root), "--no-verify-data", "--no-report", "--name", "f", "--no-seminorm"]) == 0
    import yaml

    saved = yaml.safe_load((tmp_path / "runs" / "f" / "config.yaml").read_text())
    assert (saved["solver"], saved["step_size"], saved["epochs"], saved["lr"]) == ("euler", 0.5, 1, 0.002)
    assert (saved["seminorm"], saved["aug_flip"]) == (False, True)  # a switch overrides the file, the file the default
    capsys.readouterr()
    assert main(["evaluate", "--model", "runs/f", "--json", "--device", "cpu"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["dataset"] == "fashion-mnist" and "Ankle boot" in ev["per_class_accuracy"]


def test_torchdiffeq_only_solver_trains_with_a_note(tiny_config):
    cfg = _fast(tiny_config, name="d8", solver="dopri8", train_subset=64, test_subset=32)
    notes = []
    train(cfg, Path(cfg.out) / "d8", progress=False, log=notes.append)
    assert any("torchdiffeq backend" in n for n in notes)


def test_validation_split_chooses_best_and_is_never_trained_on(tiny_config):
    from odenet.data import carve_validation, load_split

    split = load_split("mnist", tiny_config.data_dir, True, torch.device("cpu"), verify=False)
    tr, val = carve_validation(split, 64, seed=3)
    tr2, val2 = carve_validation(split, 64, seed=3)
    assert len(val) == 64 and len(tr) == len(split) - 64
    assert torch.equal(val.x, val2.x) and torch.equal(tr.y, tr2.y)  # reproducible from the seed
    rows = lambda s: {tuple(r.flatten().tolist()[:200]) for r in s.x}  # noqa: E731
    assert not rows(tr) & rows(val)  # disjoint (the synthetic images are all distinct)
    assert rows(tr) | rows(val) == rows(split)
    assert not torch.equal(carve_validation(split, 64, seed=4)[1].y, val.y)
    with pytest.raises(OdenetError, match="leaves no training images"):
        carve_validation(split, len(split), seed=0)

    cfg = _fast(tiny_config, name="val", epochs=3, lr=3e-3, val_size=64)
    run = Path(cfg.out) / "val"
    summary = train(cfg, run, progress=False, log=lambda m: None)
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    best = max(lines, key=lambda r: r["val_acc"])
    assert summary["best_epoch"] == best["epoch"] and summary["best_val_acc"] == best["val_acc"]
    assert checkpoint.load(str(run / "checkpoints" / "best.pt"))["epoch"] == best["epoch"]
    assert checkpoint.resolve_path(str(run)).name == "best.pt"
    assert lines[0]["train_acc"] * (len(split) - 64) == pytest.approx(round(lines[0]["train_acc"] * (len(split) - 64)))


def test_recipe_levers_train_and_resume_identically(tiny_config):
    """Augmentation, label smoothing, AdamW, warm-up and EMA together; a resumed run matches an unbroken one."""
    kw = dict(optimizer="adamw", weight_decay=0.05, warmup_epochs=1, label_smoothing=0.1, ema=0.9,
              aug_rotate=10, aug_translate=2, aug_scale=0.1, lr=3e-3)
    full = _fast(tiny_config, name="full", epochs=2, **kw)
    train(full, Path(full.out) / "full", progress=False, log=lambda m: None)
    part = _fast(tiny_config, name="part", epochs=1, **kw)
    train(part, Path(part.out) / "part", progress=False, log=lambda m: None)
    part.epochs = 2
    train(part, Path(part.out) / "part", resume=True, progress=False, log=lambda m: None)
    a = checkpoint.load(str(Path(full.out) / "full" / "checkpoints" / "last.pt"))
    b = checkpoint.load(str(Path(part.out) / "part" / "checkpoints" / "last.pt"))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # the evaluated (EMA) weights differ from the trained ones, and lag behind them
    assert any(not torch.equal(a["model"][k], a["train_model"][k]) for k in a["model"])
    assert a["history"][-1]["lr"] == pytest.approx(3e-3 * 0.5 * (1 + np.cos(np.pi / 2)))


def test_aug_off_epochs_trains_the_last_epochs_on_plain_images(tiny_config, monkeypatch):
    import odenet.train as train_module

    seen = []  # images in each augmented batch
    real = train_module.random_affine

    def spy(x, *a, **k):
        seen.append(len(x))
        return real(x, *a, **k)

    monkeypatch.setattr(train_module, "random_affine", spy)
    cfg = _fast(tiny_config, name="off", epochs=3, aug_rotate=10, aug_elastic=1.0, aug_off_epochs=2)
    train(cfg, Path(cfg.out) / "off", progress=False, log=lambda m: None)
    n_train = len(train_module.load_split(cfg.dataset, cfg.resolved_data_dir(), True, torch.device("cpu"),
                                    cfg.train_subset, False))
    assert sum(seen) == n_train  # every image of epoch 1 augmented, none of epochs 2 and 3
    with pytest.raises(OdenetError, match="aug-off-epochs must be an integer"):
        Config(aug_off_epochs=1.5).validate()


def test_kinetic_regularization_slows_the_flow(tiny_config):
    """With a kinetic-energy weight the learned dynamics move the states less: integral |f|^2 dt shrinks."""
    from odenet.data import load_split
    from odenet.report import collect, flow_stats

    energies = {}
    for name, w in (("plain", 0.0), ("kinetic", 1.0)):
        cfg = _fast(tiny_config, name=name, epochs=2, kinetic=w)
        train(cfg, Path(cfg.out) / name, progress=False, log=lambda m: None)
        model, _, _ = checkpoint.load_model(str(Path(cfg.out) / name / "checkpoints" / "last.pt"))
        split = load_split(cfg.dataset, cfg.resolved_data_dir(), False, torch.device("cpu"), None, False)
        energies[name] = flow_stats(collect(model, split, cfg.dataset))["kinetic"]
    assert energies["kinetic"] < 0.5 * energies["plain"], energies


@pytest.mark.parametrize("failure", ["nan", "step limit"])
def test_failure_in_epoch_two_keeps_epoch_one_and_resumes(synth_dir, tmp_path, capsys, monkeypatch, failure):
    """A run that diverges (NaN loss) or hits the solver's step limit in epoch 2, batch 3 ends with one line naming
    them; epoch 1's last.pt is left byte for byte; --resume continues from it to the end."""
    import odenet.train as train_module

    out = tmp_path / "runs"
    args = ["train", "--epochs", "2", "--solver", "dopri5", "--batch-size", "32", "--out", str(out), "--name", "f",
            "--data-dir", str(synth_dir), "--no-verify-data", "--no-report", "--no-progress", "--device", "cpu"]
    real_step = train_module.shard_step
    calls, saved = [], {}
    per_epoch = 10  # 320 training images in batches of 32

    def failing_step(model, opt, *a, **kw):
        calls.append(1)
        if len(calls) == per_epoch + 3:
            saved["last"] = (out / "f" / "checkpoints" / "last.pt").read_bytes()
            if failure == "nan":
                with torch.no_grad():
                    next(model.classifier.parameters()).fill_(float("nan"))
            else:
                model.odeblock.solver = model.odeblock.solver.replace(max_steps=1)
        return real_step(model, opt, *a, **kw)

    monkeypatch.setattr(train_module, "shard_step", failing_step)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("odenet: error: training diverged at epoch 2, batch 3: ")
    assert ("loss is nan" if failure == "nan" else "max_steps (1) exceeded") in err
    assert (out / "f" / "checkpoints" / "last.pt").read_bytes() == saved["last"]
    assert checkpoint.load(str(out / "f" / "checkpoints" / "last.pt"))["epoch"] == 1
    monkeypatch.setattr(train_module, "shard_step", real_step)
    assert main(["train", "--resume", str(out / "f"), "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "f" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]


@pytest.mark.parametrize("damage, flags, msg", [
    ("none", [], "fails its MD5 check"),  # self-made files are not the published ones
    ("garbage", ["--no-verify-data"], "train-images-idx3-ubyte.gz"),
    ("truncated", ["--no-verify-data"], "train-images-idx3-ubyte.gz"),
])
def test_cli_damaged_data_is_one_line_error(tmp_path, capsys, damage, flags, msg):
    from conftest import make_dataset

    root = make_dataset(tmp_path / "data", n_train=64, n_test=20)
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    if damage == "garbage":
        images.write_bytes(b"this is not gzip data at all" * 10)
    elif damage == "truncated":
        images.write_bytes(images.read_bytes()[:200])
    out = tmp_path / "runs"
    assert main(["train", "--data-dir", str(root), "--out", str(out), "--name", "d", "--no-progress", *flags]) == 1
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("odenet: error: ") and msg in lines[0], cap.err
    assert "Traceback" not in cap.err
    assert not (out / "d").exists()


def test_linear_schedule_decays_per_batch_to_zero_after_its_warm_up():
    from odenet.train import step_lr

    cfg = Config(lr=0.01, epochs=3, lr_schedule="linear", warmup_epochs=0.5)
    n = 10
    lrs = [step_lr(cfg, e, b, n) for e in range(3) for b in range(n)]
    assert lrs[0] == pytest.approx(0.01 * 0.2)  # batch 1 of 5 warm-up batches, at the schedule's 0.01
    assert lrs[4] == pytest.approx(0.01 * (1 - 4 / 30))  # warm-up done
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))  # strictly down, across epoch boundaries too
    assert lrs[-1] == pytest.approx(0.01 / 30) and lrs[10] == pytest.approx(0.01 * (1 - 1 / 3))
    cosine = Config(lr=0.01, epochs=3)  # the seed's schedule: one value per epoch, from lr down a cosine
    assert [step_lr(cosine, e, b, n) for e in range(3) for b in (0, n - 1)] == pytest.approx(
        [0.01, 0.01, 0.0075, 0.0075, 0.0025, 0.0025])


def test_tensorboard_gets_every_number_of_a_record_and_skips_its_tables():
    from odenet.train import _log_epoch

    class Writer:
        def __init__(self):
            self.scalars, self.flushed = {}, False

        def add_scalar(self, k, v, step):
            assert isinstance(v, (int, float)), k  # SummaryWriter.add_scalar refuses a dict
            self.scalars[k] = (v, step)

        def flush(self):
            self.flushed = True

    record = {"epoch": 3, "train_loss": 0.5, "train_acc": 0.9, "test_loss": 0.4, "test_acc": 0.95,
              "nfe_forward": 14.0, "nfe_backward": 14.0, "epoch_seconds": 2.0, "images_per_s": 100.0,
              "test_acc_tta": 0.96, "test_loss_tta": 0.39, "flow": {"acc_zT": 0.95}}
    w, logged = Writer(), []
    _log_epoch(record, 3, logged.append, w)
    assert set(w.scalars) == set(record) - {"epoch", "flow"} and w.scalars["test_acc_tta"] == (0.96, 3) and w.flushed
    assert len(logged) == 2 and "acc 0.9600" in logged[1]
