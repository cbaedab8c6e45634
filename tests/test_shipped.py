"""The shipped model and the preprocessing of photos and scans shared by ``odenet predict`` and the demo."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import needs_data, real_data_dir
from odenet.checkpoint import load, load_model
from odenet.cli import main
from odenet.errors import OdenetError
from odenet.evaluate import predict, run_eval
from odenet.images import prepare_image
from odenet.checkpoint import SHIPPED

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_model_is_small_float32_and_complete():
    assert SHIPPED.is_file() and SHIPPED.stat().st_size <= 1.5 * 2**20
    state = load(str(SHIPPED))  # weights_only=True, like every checkpoint
    assert all(v.dtype == torch.float32 for v in state["model"].values())
    assert state["command"].startswith("odenet train") and state["recipe"]
    assert len(state["history"]) == state["config"]["epochs"] and state["config"]["data_dir"] is None
    model, cfg, _ = load_model(str(SHIPPED))
    assert sum(p.numel() for p in model.parameters()) == 268_298
    assert set(state["flow_map"]) == {"mean", "components", "paths", "labels", "explained"}


def test_shipped_models_command_reproduces_its_configuration(monkeypatch):
    import shlex

    from odenet.cli import _train_config, build_parser

    state = load(str(SHIPPED))
    monkeypatch.chdir(ROOT)  # the command names configs/ relative to the repository
    cfg = _train_config(build_parser().parse_args(shlex.split(state["command"])[1:]))
    made = dict(state["config"])
    for key in ("data_dir", "out", "device", "name", "report", "tensorboard"):  # where it ran, not what it trained
        made.pop(key)
    assert {k: getattr(cfg, k) for k in made} == made


def stated_accuracy() -> float:
    m = re.search(r"shipped model[^\n]*?\*\*(\d+\.\d+)%\*\*", (ROOT / "README.md").read_text())
    assert m, "README states the shipped model's test accuracy as **NN.NN%**"
    return float(m.group(1)) / 100


@needs_data
def test_shipped_model_accuracy_is_what_readme_states(capsys, monkeypatch):
    monkeypatch.setenv("ODENET_DATA_DIR", str(real_data_dir()))
    assert main(["evaluate", "--json", "--device", "cpu"]) == 0  # no --model: the shipped one
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == 10_000 and ev["chosen_by"].startswith("the shipped model")
    assert abs(ev["accuracy"] - stated_accuracy()) <= 0.0005


def test_predict_without_a_run_folder(tmp_path, capsys):
    img = np.zeros((28, 28), np.uint8)
    img[4:24, 13:16] = 255  # a vertical bar: a one
    Image.fromarray(img).save(tmp_path / "one.png")
    assert main(["predict", str(tmp_path / "one.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["class"] == "1"


def test_blank_and_unreadable_images_are_one_line_errors(tmp_path):
    Image.fromarray(np.full((50, 50), 230, np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(OdenetError, match="blank"):
        prepare_image(str(tmp_path / "blank.png"))
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(OdenetError, match="not a readable image"):
        prepare_image(str(tmp_path / "x.png"))


def test_huge_image_is_scaled_down_before_any_work(tmp_path, monkeypatch):
    """A 12 MP picture costs what a small one does: the work starts on at most WORK_SIZE pixels a side, and a JPEG is
    decoded at reduced scale (no wall-time bound: benchmarks/demo_latency.py times the preprocessing)."""
    from PIL import JpegImagePlugin

    from odenet import images as preprocess

    big = np.full((4000, 3000), 255, np.uint8)
    big[1000:3000, 1400:1700] = 0  # a dark bar on white paper
    Image.fromarray(big).save(tmp_path / "big.png")
    Image.fromarray(big).save(tmp_path / "big.jpg")
    seen, drafts = [], []
    real_ink, real_draft = preprocess.ink_image, JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(preprocess, "ink_image", lambda g: seen.append(g.shape) or real_ink(g))

    def draft(self, mode, size):
        result = real_draft(self, mode, size)
        drafts.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    for name in ("big.png", "big.jpg"):
        out = prepare_image(str(tmp_path / name))
        assert out.shape == (28, 28) and out[:, 13:15].sum() > out[:, :4].sum()
    assert seen == [(preprocess.WORK_SIZE, 192), (preprocess.WORK_SIZE, 192)]
    assert drafts == [(375, 500)]  # the JPEG decoded at 1/8 scale


def on_paper(digit: np.ndarray, rng: np.random.Generator, size: int = 160) -> np.ndarray:
    """A white-on-black 28x28 digit as dark ink on a noisy, unevenly lit grey page, off-centre, with specks."""
    scale = int(rng.integers(3, 5))
    ink = np.asarray(Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.BILINEAR), np.float32) / 255
    yy, xx = np.mgrid[0:size, 0:size] / size
    gx, gy = rng.uniform(-50, 50, 2)
    page = rng.uniform(170, 215) + gx * (xx - 0.5) + gy * (yy - 0.5) + rng.normal(0, 8, (size, size))
    for _ in range(int(rng.integers(3, 9))):  # specks of dirt
        y, x = rng.integers(0, size - 3, 2)
        page[y:y + 2, x:x + 2] -= rng.uniform(40, 90)
    n = ink.shape[0]
    top, left = rng.integers(0, size - n, 2)
    region = page[top:top + n, left:left + n]
    page[top:top + n, left:left + n] = region * (1 - 0.8 * ink)
    return np.clip(page, 0, 255).astype(np.uint8)


@needs_data
def test_photos_of_ink_on_paper_within_three_points_of_clean(tmp_path):
    from odenet.data import read_split

    images, labels = read_split("mnist", str(real_data_dir()), False)
    pick = np.random.default_rng(0).permutation(len(labels))[:600]
    model, cfg, _ = load_model(str(SHIPPED))
    rng = np.random.default_rng(1)
    clean = [prepare_image(images[i]) for i in pick]
    paper = [prepare_image(on_paper(images[i], rng)) for i in pick]
    acc = {}
    for name, batch in (("clean", clean), ("paper", paper)):
        top = predict(model, batch, cfg.dataset, top=1)
        acc[name] = float(np.mean([r.top[0][0] == labels[i] for r, i in zip(top, pick)]))
    assert acc["clean"] > 0.985
    assert acc["clean"] - acc["paper"] <= 0.03, acc
    # the file route is the same function
    Image.fromarray(on_paper(images[pick[0]], rng)).save(tmp_path / "p.png")
    assert prepare_image(str(tmp_path / "p.png")).shape == (28, 28)


def test_preprocess_of_mnist_form_input_is_nearly_identity():
    img = np.zeros((28, 28), np.uint8)
    img[6:22, 10:13] = 255
    img[6:9, 10:18] = 255  # a seven-ish shape, centred by mass
    out = prepare_image(img)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    ys, xs = np.nonzero(out > 128)
    assert abs(ys.mean() - 13.5) < 3 and abs(xs.mean() - 13.5) < 3
    assert 20 >= (ys.max() - ys.min() + 1) >= 18  # fitted to the 20-pixel box, as MNIST


def test_evaluate_of_shipped_model_agrees_with_a_direct_pass(synth_dir, capsys):
    """run_eval's accuracy, loss, per-class accuracy and predictions in batches of 64 equal one plain pass."""
    import torch.nn.functional as F

    model, cfg, _ = load_model(str(SHIPPED))
    from odenet.data import load_split as load_data

    split = load_data("mnist", str(synth_dir), False, torch.device("cpu"), verify=False)
    ev = run_eval(model, split, 64)
    with torch.no_grad():
        logits = model(split.x)
    pred = logits.argmax(1)
    assert torch.equal(ev["pred"], pred)
    assert ev["acc"] == pytest.approx((pred == split.y).float().mean().item())
    assert ev["loss"] == pytest.approx(F.cross_entropy(logits, split.y).item(), rel=1e-4)
    for c in range(10):
        mask = split.y == c
        assert ev["per_class_acc"][c] == pytest.approx((pred[mask] == c).float().mean().item())
    assert ev["nfe"] >= 8 and ev["n"] == 120


def test_the_tool_that_ships_the_model_imports_what_it_uses():
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "tools" / "ship_model.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--ood-only" in done.stdout, done.stderr[-500:]
