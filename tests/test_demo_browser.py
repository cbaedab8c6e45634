"""The demo page in a real browser: Debian's chromium, headless, driven by Playwright (no browser download)."""
import json
import math
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import NO_CHROMIUM, NO_DEMO, import_or_skip, real_data_dir

gr = import_or_skip("gradio", NO_DEMO)
sync_api = import_or_skip("playwright.sync_api", "playwright is not installed (test extra)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url():
    from odenet.demo import serve
    from odenet.checkpoint import SHIPPED

    port = free_port()
    app = serve(str(SHIPPED), port=port, block=False)
    yield f"http://127.0.0.1:{port}"
    app.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, url):
    pg = browser.new_page(viewport={"width": 1280, "height": 1400})
    pg.goto(url, wait_until="load")
    pg.wait_for_selector("#sketchpad canvas", timeout=60_000)
    pg.get_by_role("button", name="Brush").click()
    yield pg
    pg.close()


def status(page) -> str:
    return page.locator("#status").inner_text()


def wait_prediction(page, timeout=60_000) -> str:
    """Wait until the page shows a prediction; return the top class it shows."""
    sync_api.expect(page.locator("#status")).to_contain_text("function evaluations", timeout=timeout)
    return page.locator("#probs [data-testid=label-output-value]").inner_text().strip()


def stroke(page, points) -> None:
    """Draw one stroke through ``points`` given in [-1, 1] canvas coordinates (y down)."""
    box = page.locator("#sketchpad canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    r = min(box["width"], box["height"]) * 0.38
    page.mouse.move(cx + r * points[0][0], cy + r * points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(cx + r * x, cy + r * y, steps=3)
    page.mouse.up()


def clear(page) -> None:
    page.get_by_role("button", name="Clear canvas").click()
    sync_api.expect(page.locator("#status")).to_contain_text("Draw a digit", timeout=30_000)
    page.get_by_role("button", name="Brush").click()  # clearing puts the brush away


DIGITS = {
    "1": [[(0.0, -0.8), (0.0, 0.8)]],
    "0": [[(0.45 * math.sin(a), -0.75 * math.cos(a)) for a in np.linspace(0, 2 * math.pi, 40)]],
    "7": [[(-0.5, -0.75), (0.5, -0.75), (0.35, -0.4), (0.1, 0.2), (-0.05, 0.8)]],
}


def test_drawn_digits_are_recognised(page, tmp_path):
    assert "Draw a digit" in status(page)  # a blank canvas shows the hint, not an error
    shown = {}
    for digit, strokes in DIGITS.items():
        for s in strokes:
            stroke(page, s)
        shown[digit] = wait_prediction(page)
        if digit == "7":  # the README's screenshot: a drawn digit and its flow
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            target = os.environ.get("ODENET_DEMO_SCREENSHOT")
            if target:
                shutil.copy(tmp_path / "demo.png", target)
        clear(page)  # back to the hint
    assert shown == {d: d for d in DIGITS}
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"


def test_changing_the_solver_changes_the_nfe(page):
    stroke(page, DIGITS["1"][0])
    wait_prediction(page)
    nfe_dopri5 = status(page)
    assert "solver dopri5" in nfe_dopri5
    page.locator("#solver input").click()
    page.get_by_role("option", name="rk4").click()
    sync_api.expect(page.locator("#status")).to_contain_text("solver rk4", timeout=60_000)
    assert "40 function evaluations" in status(page)  # 10 steps of 0.1, 4 stages each
    assert status(page).split("·")[1] != nfe_dopri5.split("·")[1]


def test_bad_upload_gets_a_message(page, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    page.locator("#upload input[type=file]").set_input_files(str(bad))
    sync_api.expect(page.locator("#status")).to_contain_text("not a readable image", timeout=60_000)
    assert "Traceback" not in status(page)


def _digit_files(tmp_path, n=5):
    """Five real MNIST test digits as PNG files, or five digits drawn with PIL without the data."""
    paths = []
    if real_data_dir() is not None:
        from odenet.data import read_split

        images, labels = read_split("mnist", str(real_data_dir()), False)
        for i in range(n):
            p = tmp_path / f"mnist{i}_{labels[i]}.png"
            Image.fromarray(images[i]).resize((112, 112), Image.BILINEAR).save(p)
            paths.append(p)
        return paths
    for i, shape in enumerate(["1", "0", "7", "1", "0"]):
        im = Image.new("L", (112, 112), 255)
        d = ImageDraw.Draw(im)
        if shape == "1":
            d.line([(56, 20), (56, 92)], fill=0, width=9)
        elif shape == "0":
            d.ellipse([34, 18, 78, 94], outline=0, width=9)
        else:
            d.line([(30, 22), (82, 22), (52, 94)], fill=0, width=9)
        p = tmp_path / f"drawn{i}.png"
        im.save(p)
        paths.append(p)
    return paths


def test_uploads_match_odenet_predict(browser, url, tmp_path, capsys):
    from odenet.cli import main

    files = _digit_files(tmp_path)
    assert main(["predict", *map(str, files), "--json", "--top", "1"]) == 0
    expected = [r["top"][0]["class"] for r in json.loads(capsys.readouterr().out)]
    shown = []
    pg = browser.new_page(viewport={"width": 1280, "height": 1400})
    for f in files:
        pg.goto(url, wait_until="load")
        pg.wait_for_selector("#upload input[type=file]", state="attached", timeout=60_000)
        pg.locator("#upload input[type=file]").set_input_files(str(f))
        shown.append(wait_prediction(pg))
    pg.close()
    assert shown == expected
    if real_data_dir() is not None:  # the shipped model gets these five right
        assert shown == [Path(f).stem.split("_")[1] for f in files]


def _triangle(p):
    im = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(im).polygon([(100, 20), (180, 180), (20, 180)], fill=0)
    im.save(p)


@pytest.mark.parametrize("name, expect", [
    ("photo_exif_orientation_6.jpg", "**7**"),  # a phone photo stored sideways: read upright
    ("triangle.png", "does not look like a digit"),  # the OOD flag beside the prediction
    ("noise.png", "does not look like a digit"),
    ("empty.png", "is empty"),
    ("document.pdf", "PDF"),
    ("truncated.jpg", "not a readable image"),
])
def test_odd_uploads_through_the_page(browser, url, tmp_path, name, expect):
    from test_images import BAD, VALID

    path = tmp_path / name
    {**VALID, **{k: v[0] for k, v in BAD.items()}, "triangle.png": _triangle}[name](path)
    pg = browser.new_page(viewport={"width": 1280, "height": 1400})
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url, wait_until="load")
    pg.wait_for_selector("#upload input[type=file]", state="attached", timeout=60_000)
    pg.locator("#upload input[type=file]").set_input_files(str(path))
    sync_api.expect(pg.locator("#status")).to_contain_text(expect.strip("*"), timeout=60_000)
    text = status(pg)
    if expect.startswith("**"):  # a prediction: the top class shown is the digit, and what the flow did to it
        assert wait_prediction(pg) == expect.strip("*")
        assert "the flow did not change the answer" in text or "the flow changed " in text
    assert "Traceback" not in text and "Error" not in text and not errors
    pg.close()
