"""The "does not look like a digit" score (odenet.ood): its statistics, the shipped detector, predict and demo."""
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import needs_data, real_data_dir
from odenet import ood
from odenet.checkpoint import load, load_model
from odenet.cli import main
from odenet.checkpoint import SHIPPED



def test_fit_gives_the_mahalanobis_distance_to_the_nearest_mean_and_a_validation_quantile():
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.3, 0.2]])
    means = torch.tensor([[0.0, 0.0, 0.0], [6.0, -3.0, 1.0]])
    y = torch.randint(0, 2, (20000,), generator=g)
    x = torch.randn(20000, 3, generator=g) @ a.T + means[y]
    val = torch.randn(4000, 3, generator=g) @ a.T + means[torch.randint(0, 2, (4000,), generator=g)]
    det = ood.fit(x, y, val, quantile=0.99)
    assert torch.allclose(det.means, means, atol=0.05)
    p_true = torch.linalg.inv(a @ a.T)
    assert torch.allclose(det.precision, p_true, rtol=0.05, atol=0.05 * p_true.abs().max())
    q = torch.tensor([[1.0, 1.0, 1.0], [5.0, -2.0, 0.0]])
    d = q[:, None] - det.means  # (2, K, 3): explicit distance to each mean
    expect = torch.einsum("bkf,fg,bkg->bk", d, det.precision, d).min(1).values
    assert torch.allclose(det.score(q), expect)
    assert abs(float(det.flags(det.score(val)).float().mean()) - 0.01) < 0.002  # the threshold is val's quantile
    far = torch.tensor([[30.0, 30.0, 30.0]])
    assert det.flags(det.score(far)).item() and det.score(far).item() > 100 * det.threshold
    again = ood.OODDetector.from_state(det.to_state())
    assert torch.equal(again.score(q), det.score(q)) and again.threshold == pytest.approx(det.threshold)


def test_the_shipped_model_carries_its_detector():
    state = load(str(SHIPPED))
    det = ood.from_checkpoint(state)
    assert det is not None and det.means.shape == (10, 224) and det.precision.shape == (224, 224)
    assert np.isfinite(det.threshold) and det.threshold > 0
    assert torch.allclose(det.precision, det.precision.T, rtol=1e-3, atol=1e-3 * det.precision.abs().max())


def shape_png(path, draw):
    im = Image.new("L", (200, 200), 255)
    draw(ImageDraw.Draw(im))
    im.save(path)
    return str(path)


def test_predict_flags_a_shape_that_is_no_digit_and_not_a_drawn_seven(tmp_path, capsys):
    triangle = shape_png(tmp_path / "triangle.png", lambda d: d.polygon([(100, 20), (180, 180), (20, 180)], fill=0))
    cross = shape_png(tmp_path / "cross.png", lambda d: (d.line([(30, 30), (170, 170)], fill=0, width=12),
                                                        d.line([(30, 170), (170, 30)], fill=0, width=12)))
    seven = shape_png(tmp_path / "seven.png", lambda d: d.line([(50, 40), (150, 40), (90, 170)], fill=0, width=12))
    assert main(["predict", triangle, cross, seven]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "does not look like a digit: score" in lines[0] and "does not look like a digit: score" in lines[1]
    assert lines[2].startswith(f"{seven}: 7 ") and "does not look like" not in lines[2]
    assert main(["predict", triangle, seven, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["looks_like_a_digit"] for r in res] == [False, True]
    assert res[0]["ood_score"] > res[0]["ood_threshold"] > res[1]["ood_score"] > 0


def test_a_model_without_statistics_gives_no_score(tmp_path, capsys):
    from odenet.checkpoint import save

    state = {k: v for k, v in load(str(SHIPPED)).items() if k not in ("ood", "format", "version")}
    save(tmp_path / "plain.pt", state)
    seven = shape_png(tmp_path / "seven.png", lambda d: d.line([(50, 40), (150, 40), (90, 170)], fill=0, width=12))
    assert main(["predict", seven, "--model", str(tmp_path / "plain.pt"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)[0]
    assert r["top"][0]["class"] == "7" and r["ood_score"] is None and r["looks_like_a_digit"] is None


def test_demo_summary_shows_the_flag(tmp_path):
    from odenet.demo import load_predictor
    from odenet.images import prepare_image

    pred = load_predictor(str(SHIPPED))
    pred.out_dir = tmp_path
    triangle = prepare_image(shape_png(tmp_path / "t.png", lambda d: d.polygon([(100, 20), (180, 180), (20, 180)],
                                                                                 fill=0)))
    seven = prepare_image(shape_png(tmp_path / "s.png", lambda d: d.line([(50, 40), (150, 40), (90, 170)], fill=0,
                                                                           width=12)))
    flow, score, *_ = pred.render(triangle, "dopri5", 1e-3, 1e-4, 0.1, 1.0)
    assert "does not look like a digit" in pred.summary(flow, "dopri5", score)
    flow, score, *_ = pred.render(seven, "dopri5", 1e-3, 1e-4, 0.1, 1.0)
    assert "does not look like" not in pred.summary(flow, "dopri5", score)


@needs_data
def test_on_real_data_digits_pass_and_other_pictures_are_flagged():
    """The shipped threshold (fitted on training images only): MNIST test digits pass, the rest does not."""
    from odenet.data import read_split, normalize

    root = str(real_data_dir())
    model, _, state = load_model(str(SHIPPED))
    det = ood.from_checkpoint(state)
    rng = np.random.default_rng(0)
    te, _ = read_split("mnist", root, False)
    fa, _ = read_split("fashion-mnist", root, False)
    sets = {"mnist": te[rng.permutation(len(te))[:2000]], "fashion": fa[rng.permutation(len(fa))[:2000]],
            "noise": rng.integers(0, 256, (500, 28, 28)).astype(np.uint8)}
    flagged = {k: float(det.flags(det.score(ood.logits_and_features(model, normalize(torch.from_numpy(v),
                                                                                     "mnist"))[1])).float().mean())
               for k, v in sets.items()}
    assert flagged["mnist"] <= 0.015, flagged
    assert flagged["fashion"] >= 0.5, flagged  # 0.59 measured: the threshold favours digits (AUROC 0.98)
    assert flagged["noise"] == 1.0, flagged
