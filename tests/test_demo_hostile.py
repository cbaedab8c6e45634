"""Hostile requests to the demo through its HTTP API (``gradio_client``, as any script could send them).

One server in a child process (so its memory and its exit can be watched) takes every case: each answers with
one line on the page or a refusal at the door, and the server stays up, under 2 GB, and answers a normal
request within 15 s behind four expensive ones. Ctrl-C and SIGTERM remove its temp folder.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from conftest import NO_DEMO, import_or_skip

gr = import_or_skip("gradio", NO_DEMO)
gradio_client = import_or_skip("gradio_client", NO_DEMO)

OK = "function evaluations"
NORMAL = ["dopri5", 1e-3, 1e-4, 0.1, 1.0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp: Path):
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp), GRADIO_TEMP_DIR=str(tmp / "gradio"))
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "odenet", "demo", "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 180
    while time.time() < deadline:
        assert proc.poll() is None, (tmp / "server.log").read_text()[-2000:]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}/"
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("the demo did not start")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def digit(path: Path, size=(280, 280)) -> Path:
    im = Image.new("RGB", size, "white")
    w, h = size
    ImageDraw.Draw(im).line([(0.25 * w, 0.2 * h), (0.75 * w, 0.2 * h), (0.45 * w, 0.85 * h)], fill="black",
                            width=max(3, int(0.06 * min(w, h))))
    im.save(path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    proc, url = start(tmp)
    yield proc, url, tmp
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return gradio_client.Client(server[1], verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    return digit(tmp_path_factory.mktemp("img") / "seven.png")


def upload(client, path, settings):
    return client.predict(gradio_client.handle_file(str(path)), *settings, api_name="/on_upload")


@pytest.mark.parametrize("settings, words", [
    (["euler", 1e-3, 1e-4, 1e-9, 1.0], "step size must be a number from 0.001 to 1"),
    (["euler", 1e-3, 1e-4, 1e-300, 1.0], "step size must be a number from 0.001 to 1"),
    (["rk4", 1e-3, 1e-4, 0.0, 1.0], "step size must be a number from 0.001 to 1"),
    (["rk4", 1e-3, 1e-4, 1e6, 1.0], "step size must be a number from 0.001 to 1"),
    (["dopri5", 1e-14, 1e-14, 0.1, 4.0], "rtol must be a number from 1e-07 to 1"),
    (["dopri5", 1e-3, 0.0, 0.1, 1.0], "atol must be a number from 1e-07 to 1"),
    (["dopri5", -1.0, 1e-4, 0.1, 1.0], "rtol must be a number from 1e-07 to 1"),
    (["dopri5", 1e-3, 1e-4, 0.1, None], "T must be a number from 0.1 to 4"),
    (["dopri5", None, 1e-4, 0.1, 1.0], "rtol must be a number"),
    (["euler", 1e-3, 1e-4, 0.001, 4.0], "a grid of 4000 steps exceeds max_steps (2000)"),
    (["nope", 1e-3, 1e-4, 0.1, 1.0], "unknown solver 'nope'"),
    (["dopri5", "abc", 1e-4, 0.1, 1.0], "rtol must be a number"),
    (["dopri5", 1e-3, 1e-4, 0.1, "1; rm -rf /"], "T must be a number"),
])
def test_an_out_of_budget_request_is_one_line_on_the_page(client, seven, settings, words):
    t0 = time.perf_counter()
    status = upload(client, seven, settings)[-3]
    assert status.startswith("⚠") and words in status and "\n" not in status.strip(), status
    assert time.perf_counter() - t0 < 15


@pytest.mark.parametrize("content, words", [
    (b"this is not an image", "could not be read"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "could not be read"),
    (b"", "could not be read"),
])
def test_a_file_that_is_no_picture_is_one_line(client, tmp_path, content, words):
    p = tmp_path / "x.png"
    p.write_bytes(content)
    status = upload(client, p, NORMAL)[-3]
    assert status.startswith("⚠") and "\n" not in status.strip(), status


def test_an_oversized_upload_is_refused_at_the_door(client, seven, tmp_path, server):
    big = tmp_path / "big.png"
    big.write_bytes(seven.read_bytes() + b"\0" * (11 * 1024 * 1024))  # a valid PNG with 11 MB of trailing bytes
    with pytest.raises(Exception) as e:
        upload(client, big, NORMAL)
    assert "Traceback" not in str(e.value)
    gradio_files = [p for p in (server[2] / "gradio").rglob("*") if p.is_file()]
    assert all(p.stat().st_size < 10 * 1024 * 1024 for p in gradio_files)  # it was not stored
    assert OK in upload(client, seven, NORMAL)[-3]


def test_a_huge_sketch_is_refused_before_it_is_decoded(client, tmp_path, server):
    proc = server[0]
    p = tmp_path / "huge.png"
    Image.new("L", (12_000, 12_000), 255).save(p, optimize=True)  # 144 MP, a small file
    before = peak_rss_mb(proc.pid)
    value = {"background": None, "layers": [], "composite": gradio_client.handle_file(str(p))}
    status = client.predict(value, *NORMAL, api_name="/on_sketch")[-3]
    assert status.startswith("⚠") and "12000x12000 pixels" in status, status
    assert peak_rss_mb(proc.pid) - before < 300  # 144 MP decoded would add at least 430 MB (RGB)


def test_a_normal_request_is_answered_behind_four_expensive_ones(server, seven, tmp_path):
    url = server[1]
    expensive = ["dopri5", 1e-7, 1e-7, 0.1, 4.0]
    times, errors = [], []

    def one(settings, record):
        try:
            c = gradio_client.Client(url, verbose=False, download_files=tempfile.mkdtemp(dir=tmp_path))
            t0 = time.perf_counter()
            status = upload(c, seven, settings)[-3]
            record.append((time.perf_counter() - t0, status))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    heavy = [threading.Thread(target=one, args=(expensive, times)) for _ in range(4)]
    for t in heavy:
        t.start()
    time.sleep(0.5)
    normal: list = []
    one(NORMAL, normal)
    for t in heavy:
        t.join()
    assert not errors, errors
    assert normal and OK in normal[0][1] and normal[0][0] < 15, normal
    assert all(OK in s for _, s in times), times  # the expensive ones are within budget and answered too


def test_the_server_stayed_small_and_clean(server, client, seven):
    proc, _, tmp = server
    assert OK in upload(client, seven, NORMAL)[-3]  # still serving after everything above
    assert proc.poll() is None and peak_rss_mb(proc.pid) < 2048
    log = (tmp / "server.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_analytics_are_off_and_the_budget_is_on_the_page():
    from odenet import demo
    from odenet.checkpoint import SHIPPED

    app = demo.build_app(demo.load_predictor(str(SHIPPED)))
    assert app.analytics_enabled is False and os.environ.get("GRADIO_ANALYTICS_ENABLED") == "False"
    assert "at most 2,000 solver steps" in demo.budget_text() and "10MB" in demo.budget_text()


def _stop_and_check(proc, tmp: Path, sig) -> None:
    assert list(tmp.glob("odenet-demo-*"))  # it wrote its images there
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not list(tmp.glob("odenet-demo-*"))
    assert "Traceback" not in (tmp / "server.log").read_text(errors="replace")


def test_ctrl_c_removes_the_demos_temp_folder(tmp_path, seven):
    proc, url = start(tmp_path)
    c = gradio_client.Client(url, verbose=False, download_files=tempfile.mkdtemp(dir=tmp_path, prefix="downloads-"))
    assert OK in upload(c, seven, NORMAL)[-3]
    _stop_and_check(proc, tmp_path, signal.SIGINT)


def test_sigterm_removes_the_demos_temp_folder(server):  # last: it stops the module's server
    proc, _, tmp = server
    _stop_and_check(proc, tmp, signal.SIGTERM)
