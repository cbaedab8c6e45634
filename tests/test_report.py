"""The six figures and the HTML report, on a tiny trained model."""
import base64
import json
import re

import numpy as np
import pytest
import torch

from odenet import figures, report
from odenet.checkpoint import load_model
from odenet.cli import main
from odenet.data import load_split
from odenet.train import train

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(synth_dir, tmp_path_factory):
    from odenet.config import Config

    out = tmp_path_factory.mktemp("rep")
    cfg = Config(epochs=2, batch_size=32, lr=3e-3, data_dir=str(synth_dir), verify_data=False, out=str(out),
                 name="r", device="cpu", report=False, tta=True)
    run = out / "r"

    def look(run_dir, history):  # the history figure as it is on disk after each epoch's hooks
        DRAWN.append((len(history), (run_dir / "figures" / "training_history.png").read_bytes()))

    train(cfg, run, progress=False, log=lambda m: None, hooks=[report.history_hook, look])
    return run, cfg


DRAWN = []


def test_history_hook_draws_after_each_epoch(tiny_run):
    assert [n for n, _ in DRAWN] == [1, 2]
    assert all(png.startswith(PNG) for _, png in DRAWN)
    assert DRAWN[0][1] != DRAWN[1][1]  # redrawn with epoch 2, not drawn once at the end


def test_figure_data_is_consistent(tiny_run, tmp_path):
    run, cfg = tiny_run
    model, cfg, _ = load_model(str(run))
    split = load_split("mnist", cfg.data_dir, False, torch.device("cpu"), verify=False)
    data = report.collect(model, split, "mnist", n_times=21, per_class=5)
    # trajectories start at the encoder output and end at the ODE output the classifier sees
    with torch.no_grad():
        z0 = model.encoder(split.x)
        zT = model.odeblock(z0)
    idx = np.concatenate([np.flatnonzero(data.labels == c)[:5] for c in np.unique(data.labels)])
    assert data.traj.shape == (21, len(idx), 64)
    assert np.allclose(data.traj[0], z0.numpy()[idx], atol=1e-6)
    assert np.allclose(data.traj[-1], zT.numpy()[idx], atol=5e-3)  # a sub-batch: adaptive steps differ, within tol
    assert np.allclose(data.zT, zT.numpy(), atol=1e-6)
    names = [str(i) for i in range(10)]
    cm = figures.confusion_matrix(data.labels, data.probs.argmax(1), tmp_path / "cm.png", names)
    assert cm.sum() == len(split) == 120 and cm.trace() == (data.probs.argmax(1) == data.labels).sum()
    pca = figures.ode_trajectories(data.traj, data.traj_labels, data.ts, tmp_path / "tr.png", names)
    states = data.traj.reshape(-1, 64).astype(np.float64)
    sv = np.linalg.svd(states - states.mean(0), compute_uv=False) ** 2
    assert np.allclose(pca["explained_variance_ratio"], sv[:2] / sv.sum(), rtol=1e-3)  # the variance the plane shows
    flow = report.flow_stats(data)
    assert flow["displacement"] == pytest.approx(np.linalg.norm(data.zT - data.z0, axis=1).mean())
    # Cauchy-Schwarz: integral |f|^2 dt >= |z(T) - z(0)|^2 / T, with equality for straight paths at constant speed
    d2 = (np.linalg.norm(data.traj[-1] - data.traj[0], axis=1) ** 2).mean()
    assert flow["kinetic"] >= 0.95 * d2 / model.odeblock.t_end > 0
    for name in ("cm.png", "tr.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG)


def test_separation_scores_tell_clusters_from_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 40)
    clustered = rng.normal(size=(200, 8)) * 0.1 + 10 * np.eye(8)[labels]
    s = report.separation_scores(clustered, labels)
    assert s["knn_acc"] == 1.0 and s["silhouette"] > 0.9
    mixed = report.separation_scores(rng.normal(size=(200, 8)), labels)
    assert mixed["knn_acc"] < 0.4 and abs(mixed["silhouette"]) < 0.1


def test_report_writes_six_pngs_and_self_contained_html(tiny_run, capsys):
    run, _ = tiny_run
    assert main(["report", str(run), "--device", "cpu", "--tsne-points", "100"]) == 0
    for name in report.FIGURES:
        assert (run / "figures" / f"{name}.png").read_bytes().startswith(PNG), name
    page = (run / "report.html").read_text()
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) == 8 and all(base64.b64decode(i).startswith(PNG) for i in imgs)  # the six, flow, invariance
    assert "http://" not in page and "https://" not in page
    assert "NeuralODEModel(" in page and "dopri5" in page
    assert "how far the ODE moves a state" in page and "kinetic energy" in page
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert (f"with test-time augmentation (the image and its four one-pixel shifts)</th><td>{last['test_loss_tta']:.4f} / "
            f"{last['test_acc_tta']:.4f}<") in page
    # the flow's section reads the same model: the classifier on z(T) is the checkpoint's test accuracy
    on_zT = re.search(r"classifier on z\(T\)</th><td>([0-9.]+)<", page).group(1)
    assert on_zT == re.search(r"test accuracy \(checkpoint\)</th><td>([0-9.]+) on", page).group(1)
    assert "accuracy with the flow stopped at t = 0.5T" in page
    assert "<h2>Solver invariance</h2><p>solver-invariant" in page or "<h2>Solver invariance</h2><p>not solver" in page
    for name in ("flow_changes", "solver_invariance"):
        assert (run / "figures" / f"{name}.png").read_bytes().startswith(PNG), name


def test_report_bad_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert "no metrics.jsonl" in err and len(err.strip().splitlines()) == 1
    assert main(["report", str(tmp_path / "missing")]) == 1
    assert "no such run folder" in capsys.readouterr().err


def test_the_flows_contribution_is_measured_not_assumed():
    """A flow that stands still changes nothing; one that moves the states changes what the numbers say."""
    import numpy as np
    import torch

    from odenet.data import Split
    from odenet.flow import contribution, last_change
    from odenet.model import NeuralODEModel

    torch.manual_seed(0)
    model = NeuralODEModel().eval()
    x = torch.randn(50, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model.classifier(model.encode(x)).argmax(1)  # what the classifier says without the flow
        model.odefunc.net[-1].weight.zero_()
        model.odefunc.net[-1].bias.zero_()  # f = 0: z(t) = z(0)
    still = contribution(model, Split(x, labels), batch_size=16)
    assert still["acc_z0"] == still["acc_zT"] == 1.0 and still["changed"] == 0.0
    assert still["rel_displacement"] == 0.0 and set(still["acc_by_t"].values()) == {1.0}
    assert still["acc_by_t"].keys() == {"0", "0.25T", "0.5T", "1T", "2T"} and still["examples"]["index"] == []
    with torch.no_grad():
        model.odefunc.net[-1].bias.copy_(torch.linspace(-3, 3, 64))  # a strong constant drift: z(t) = z(0) + t b
    moved = contribution(model, Split(x, labels), batch_size=16)
    zT = model.encode(x) + model.odefunc.net[-1].bias
    expected = float(((zT - model.encode(x)).norm(dim=1) / model.encode(x).norm(dim=1)).mean())
    assert abs(moved["rel_displacement"] - expected) < 1e-4 * expected
    flipped = (model.classifier(zT).argmax(1) != labels).float().mean().item()
    assert moved["changed"] == pytest.approx(flipped) and flipped > 0 and moved["acc_z0"] == 1.0
    assert moved["acc_zT"] == pytest.approx(1.0 - flipped) and moved["changed_wrong"] == pytest.approx(flipped)
    assert moved["changed_right"] == 0.0
    ex = moved["examples"]
    assert len(ex["index"]) == min(8, round(flipped * 50))
    assert all(c[0] == labels[i] and c[-1] != labels[i] for i, c in zip(ex["index"], ex["class_along_t"]))
    assert last_change(np.linspace(0, 1, 5), np.array([3, 3, 8, 8, 8])) == (3, 8, 0.5)
    assert last_change(np.linspace(0, 1, 5), np.array([3, 8, 3, 3, 3])) == (8, 3, 0.5)
    assert last_change(np.linspace(0, 1, 3), np.array([2, 2, 2])) is None
