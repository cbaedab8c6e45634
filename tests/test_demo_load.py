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
