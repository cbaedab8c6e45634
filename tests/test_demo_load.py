"""The demo under concurrent clients: the same digit from 8 sessions at once (benchmarks/demo_load.py, smaller).

Before output images were written once under content names, identical requests rewrote one cached file while
another reply was streaming it: dropped connections and h11 tracebacks in the server log.
"""
import sys
from pathlib import Path

import pytest

from conftest import NO_DEMO, import_or_skip

import_or_skip("gradio_client", NO_DEMO)
import_or_skip("gradio", NO_DEMO)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from demo_load import load  # noqa: E402


def test_identical_requests_from_concurrent_clients_all_succeed(tmp_path):
    r = load(clients=8, requests=5, mode="identical", workdir=tmp_path)
    assert r["requests"] == 40
    assert r["failed"] == 0, r["errors"]
    assert r["tracebacks"] == 0, r["log"][-2000:]


def test_predictor_writes_each_image_once(tmp_path):
    import numpy as np

    from odenet.demo import load_predictor
    from odenet.checkpoint import SHIPPED

    pred = load_predictor(str(SHIPPED))
    pred.out_dir = tmp_path
    img = np.zeros((28, 28), np.uint8)
    img[4:24, 12:16] = 255
    a = pred.image_file(img)
    mtime = Path(a).stat().st_mtime_ns
    b = pred.image_file(img.copy())
    assert a == b and Path(a).stat().st_mtime_ns == mtime  # same content: the same file, not rewritten
    img[0, 0] = 1
    assert pred.image_file(img) != a
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({Path(a).name, Path(pred.image_file(img)).name})


def test_the_summary_says_where_the_flow_changed_the_answer():
    import numpy as np

    from odenet.demo import Predictor
    from odenet.flow import Flow
    from odenet.model import NeuralODEModel

    pred = Predictor(NeuralODEModel(), "mnist", None)
    ts = np.linspace(0.0, 1.0, 5)
    probs = np.full((5, 10), 0.05)
    probs[:2, 3] = probs[2:, 8] = 0.55  # the classifier says 3 on z(0) and z(0.25), 8 from t = 0.5 on
    text = pred.summary(Flow(ts, np.zeros((5, 64)), probs, 14, 3.0), "dopri5")
    assert text.startswith("**8** with probability 0.550") and "the flow changed 3 → 8 at t = 0.50" in text
    probs[:, 3], probs[:, 8] = 0.55, 0.05
    assert "the flow did not change the answer" in pred.summary(Flow(ts, np.zeros((5, 64)), probs, 14, 3.0), "rk4")


def test_a_predictor_makes_its_temp_folder_only_when_it_writes_an_image(tmp_path, monkeypatch):
    import tempfile

    import numpy as np

    from odenet.demo import Predictor
    from odenet.model import NeuralODEModel

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pred = Predictor(NeuralODEModel(), "mnist", None)
    assert list(tmp_path.iterdir()) == []  # built (as tests and scripts do) without serving: nothing left behind
    made = Path(pred.image_file(np.zeros((28, 28), np.uint8)))
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("odenet-demo-") and made.parent == folder == pred.out_dir
