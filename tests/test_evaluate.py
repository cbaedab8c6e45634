"""Test-time augmentation: exact one-pixel shifts, the averaged prediction, and the runs and commands that report it."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from odenet import checkpoint
from odenet.cli import main
from odenet.config import Config
from odenet.data import TTA_SHIFTS, background_value, load_split, normalize, shift_images
from odenet.errors import OdenetError
from odenet.evaluate import classify, run_eval
from odenet.model import NeuralODEModel
from odenet.train import train

BG = background_value("mnist")


def test_shift_images_moves_every_pixel_by_whole_pixels_and_fills_the_border():
    x = torch.randn(2, 1, 6, 7)
    for dx in range(-3, 4):
        for dy in range(-3, 4):
            out = shift_images(x, dx, dy, BG).numpy()
            ref = np.full(x.shape, BG, dtype=np.float32)
            for i in range(6):
                for j in range(7):
                    if 0 <= i - dy < 6 and 0 <= j - dx < 7:
                        ref[:, :, i, j] = x[:, :, i - dy, j - dx].numpy()
            assert np.array_equal(out, ref), (dx, dy)
    with pytest.raises(ValueError, match="leaves nothing"):
        shift_images(x, 7, 0, BG)


def _model_and_images(seed: int = 0):
    torch.manual_seed(seed)
    model = NeuralODEModel.from_config(Config(solver="dopri5")).eval()
    x = torch.full((5, 1, 28, 28), BG)
    x[:, :, 1:-1, 1:-1] = torch.randn(5, 1, 26, 26)  # a background border: a roll by one pixel is a shift
    return model, x


@torch.no_grad()
def test_tta_is_the_mean_softmax_over_the_shifted_images_and_counts_every_solve():
    model, x = _model_and_images()
    plain, nfe_plain = classify(model, x)
    assert torch.equal(plain, model(x)) and nfe_plain == model.stats.nfe_forward
    scores, nfe = classify(model, x, tta=True)
    probs, nfe_ref, steps_ref = [], 0, 0
    for dx, dy in TTA_SHIFTS:  # torch.roll as the independent reference for the shift
        probs.append(model(torch.roll(x, shifts=(dy, dx), dims=(2, 3))).softmax(1))
        nfe_ref, steps_ref = nfe_ref + model.stats.nfe_forward, steps_ref + model.stats.steps_forward
    ref = torch.stack(probs).mean(0)
    assert torch.allclose(scores.exp(), ref, atol=1e-6) and nfe == nfe_ref
    assert torch.allclose(scores.exp().sum(1), torch.ones(5), atol=1e-6)  # a distribution: the loss is its NLL
    assert not torch.allclose(scores.exp(), plain.softmax(1), atol=1e-4)  # the views do change the answer
    p = model.predict(x, tta=True)
    assert torch.allclose(p, ref, atol=1e-6) and model.stats.nfe_forward == nfe_ref
    assert model.stats.steps_forward == steps_ref
    assert torch.equal(model.predict(x, tta=[(0, 0)]), model.predict(x))  # one unshifted view: the plain answer
    two = model.predict(x, tta=[(2, -1), (-3, 0)])
    ref2 = (model(torch.roll(x, (-1, 2), (2, 3))).softmax(1) + model(torch.roll(x, (0, -3), (2, 3))).softmax(1)) / 2
    assert not torch.allclose(two, ref2, atol=1e-6)  # a roll by more than the 1-pixel border wraps digits around
    x3 = torch.full((5, 1, 28, 28), BG)
    x3[:, :, 3:-3, 3:-3] = x[:, :, 3:-3, 3:-3]
    two = model.predict(x3, tta=[(2, -1), (-3, 0)])
    ref2 = (model(torch.roll(x3, (-1, 2), (2, 3))).softmax(1) + model(torch.roll(x3, (0, -3), (2, 3))).softmax(1)) / 2
    assert torch.allclose(two, ref2, atol=1e-6)  # ... but not a 3-pixel border


@pytest.mark.parametrize("tta", [[], [(0, 28)], [(0.5, 0)], [(True, 0)], [(1, 2, 3)], "ab", 3, None,
                                 [(0, 0)] * 65])
def test_predict_refuses_other_views_in_one_line_before_solving(tta):
    model, x = _model_and_images()
    model.odeblock.stats = None
    with pytest.raises(OdenetError, match="tta must be True, False or 1 to 64") as e:
        model.predict(x, tta=tta)
    assert len(str(e.value).splitlines()) == 1 and model.stats is None  # nothing was solved


@torch.no_grad()
def test_tta_fills_with_the_black_of_the_models_dataset():
    model = NeuralODEModel.from_config(Config(dataset="fashion-mnist")).eval()
    assert model.dataset == "fashion-mnist" and model.classes[0] == "T-shirt/top"
    bg = background_value("fashion-mnist")
    assert bg != BG
    x = torch.full((2, 1, 28, 28), bg)
    x[:, :, 1:-1, 1:-1] = torch.randn(2, 1, 26, 26)
    ref = torch.stack([model(torch.roll(x, (dy, dx), (2, 3))).softmax(1) for dx, dy in TTA_SHIFTS]).mean(0)
    assert torch.allclose(model.predict(x, tta=True), ref, atol=1e-6)


@torch.no_grad()
def test_run_eval_with_tta_reports_the_averaged_predictions_and_the_nfe_per_solve(synth_dir):
    split = load_split("mnist", str(synth_dir), False, torch.device("cpu"), verify=False)
    model, _ = _model_and_images(1)
    ev = run_eval(model, split, batch_size=50, tta=True)
    scores, nfe = zip(*(classify(model, x, tta=True) for x, _ in split.batches(50)))
    scores = torch.cat(scores)
    assert ev["acc"] == (scores.argmax(1) == split.y).sum().item() / len(split)
    assert ev["loss"] == pytest.approx(F.cross_entropy(scores, split.y).item(), rel=1e-6)
    assert ev["nfe"] == pytest.approx(sum(nfe) / (len(TTA_SHIFTS) * 3))  # 3 batches of 5 solves each
    assert torch.equal(ev["pred"], scores.argmax(1))


def test_training_with_tta_reports_it_for_the_last_epoch_and_evaluate_reproduces_it(tiny_config, capsys):
    cfg = tiny_config
    cfg.solver, cfg.step_size, cfg.epochs, cfg.lr, cfg.val_size, cfg.tta = "rk4", 0.5, 2, 3e-3, 64, True
    run = Path(cfg.out) / cfg.name
    logged = []
    summary = train(cfg, run, progress=False, log=logged.append)
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert "test_acc_tta" not in lines[0]  # five solves per image: the last epoch only
    assert {"test_acc_tta", "test_loss_tta", "val_acc_tta", "val_loss_tta"} <= set(lines[-1])
    assert summary["final_test_acc_tta"] == lines[-1]["test_acc_tta"]
    assert "with test-time augmentation" in logged[-1]
    last = str(run / "checkpoints" / "last.pt")
    assert main(["evaluate", "--model", last, "--tta", "--json", "--device", "cpu"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["views"] == 5 and ev["accuracy"] == lines[-1]["test_acc_tta"]
    assert ev["loss"] == pytest.approx(lines[-1]["test_loss_tta"], rel=1e-6)
    assert main(["evaluate", "--model", last, "--split", "val", "--json", "--device", "cpu"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["split"] == "val" and ev["n"] == 64 and ev["views"] == 1 and ev["accuracy"] == lines[-1]["val_acc"]
    assert main(["evaluate", "--model", last, "--split", "val", "--tta", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == lines[-1]["val_acc_tta"]
    # the switch does not change what is trained, so a resumed run may turn it off
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-tta", "--no-progress", "--no-report"]) == 0
    capsys.readouterr()
    assert "test_acc_tta" not in json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert checkpoint.load(last)["config"]["tta"] is False


def test_evaluate_val_split_refusals_are_one_line(tiny_config, capsys):
    cfg = tiny_config
    cfg.solver, cfg.step_size = "rk4", 0.5
    train(cfg, Path(cfg.out) / cfg.name, progress=False, log=lambda m: None)
    run = str(Path(cfg.out) / cfg.name)
    for argv, msg in ((["--split", "val"], "trained without a validation split"),
                      (["--split", "val", "--test-subset", "5"], "does not go with --split val")):
        assert main(["evaluate", "--model", run, *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1


def test_predict_command_with_tta_shows_the_averaged_probabilities(tiny_config, tmp_path, capsys):
    from PIL import Image

    from conftest import synthetic_digits
    from odenet.images import prepare_image

    cfg = tiny_config
    cfg.solver, cfg.step_size, cfg.epochs, cfg.lr = "rk4", 0.5, 2, 3e-3
    train(cfg, Path(cfg.out) / cfg.name, progress=False, log=lambda m: None)
    last = str(Path(cfg.out) / cfg.name / "checkpoints" / "last.pt")
    digits, _ = synthetic_digits(2, seed=5)
    paths = []
    for k, d in enumerate(digits):
        paths.append(tmp_path / f"d{k}.png")
        Image.fromarray(d).resize((112, 112)).save(paths[-1])
    outs = {}
    for flag in ([], ["--tta"]):
        assert main(["predict", *map(str, paths), "--model", last, "--json", "--top", "10", *flag]) == 0
        outs[bool(flag)] = json.loads(capsys.readouterr().out)
    model, _, _ = checkpoint.load_model(last)
    x = normalize(torch.from_numpy(np.stack([prepare_image(str(p)) for p in paths])), "mnist")
    for tta, out in outs.items():
        ref = model.predict(x, tta=tta)
        for r, q in zip(out, ref):
            got = {t["class"]: t["probability"] for t in r["top"]}
            assert got == pytest.approx({str(c): float(v) for c, v in enumerate(q)}, abs=1e-6)
    assert [r["ood_score"] for r in outs[True]] == [r["ood_score"] for r in outs[False]]  # the image's own score
    assert outs[True] != outs[False]
