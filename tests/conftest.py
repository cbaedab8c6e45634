"""Shared fixtures: a small self-made dataset in torchvision's IDX layout, and tiny run settings."""
from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

# at most 2 threads (the machines' size); ODENET_TEST_THREADS=1 where processes fork after torch ran (mutmut)
torch.set_num_threads(int(os.environ.get("ODENET_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))


class CallCounter:
    """Counts a module's calls from the caller's side (a forward pre-hook): an independent check of ``Stats``.
    A hooked ``ODEFunc`` runs its module call, never the hand-written fast paths."""

    def __init__(self, module: torch.nn.Module):
        self.n = 0
        module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        self.n += 1

    def take(self) -> int:
        """The count so far, and start again from 0."""
        n, self.n = self.n, 0
        return n


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write a uint8 array as an IDX file (gzipped when ``compress``)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)


def synthetic_digits(n: int, seed: int) -> tuple:
    """Learnable fake digits: class c is a bright 4x20 bar whose position and angle depend on c, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = (rng.random((n, 28, 28)) * 40).astype(np.float32)
    for i, c in enumerate(labels):
        if c < 5:
            r = 3 + 5 * c
            images[i, r:r + 3, 4:24] = 255
        else:
            col = 3 + 5 * (c - 5)
            images[i, 4:24, col:col + 3] = 255
    return images.clip(0, 255).astype(np.uint8), labels


def make_dataset(root: Path, n_train: int = 320, n_test: int = 120, folder: str = "MNIST") -> Path:
    raw = root / folder / "raw"
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = synthetic_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", y)
    return root


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synth"))


@pytest.fixture()
def tiny_config(synth_dir, tmp_path):
    from odenet.config import Config

    return Config(epochs=1, batch_size=32, data_dir=str(synth_dir), verify_data=False, out=str(tmp_path / "runs"),
                  name="tiny", eval_batch_size=64, device="cpu", report=False)


def real_data_dir():
    """The folder with the real MNIST if ODENET_DATA_DIR points at one, else None."""
    d = os.environ.get("ODENET_DATA_DIR")
    if d and (Path(d) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file():
        return Path(d)
    return None


# Under CI (.ci/run sets ODENET_CI=1) the real data, the demo extra and chromium are required: a test that would
# skip for want of them fails instead, so CI can't pass without running the shipped model's and the browser's tests.
# Elsewhere they skip, and pytest prints why (-rs).
CI = os.environ.get("ODENET_CI") == "1"
NO_DATA = "real MNIST not available (set ODENET_DATA_DIR to a copy of it)"
NO_FASHION = "real Fashion-MNIST not available (ODENET_DATA_DIR has no FashionMNIST/raw)"
NO_DEMO = "the demo extra is not installed: pip install -e '.[demo]'"
NO_CHROMIUM = "Debian's chromium is not installed (apt-get install chromium)"
REQUIRED_UNDER_CI = (NO_DATA, NO_FASHION, NO_DEMO, NO_CHROMIUM, "playwright is not installed")

needs_data = pytest.mark.skipif(real_data_dir() is None, reason=NO_DATA)
needs_fashion = pytest.mark.skipif(real_data_dir() is None or not (real_data_dir() / "FashionMNIST" / "raw").is_dir(),
                                   reason=NO_FASHION)


def import_or_skip(module: str, reason: str):
    """``pytest.importorskip``, except under CI, where a missing module fails the run."""
    if not CI:
        return pytest.importorskip(module, reason=reason)
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        pytest.fail(f"required under CI (ODENET_CI=1) but missing: {reason}", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if CI and rep.skipped and isinstance(rep.longrepr, tuple):
        reason = str(rep.longrepr[2])
        if any(r in reason for r in REQUIRED_UNDER_CI):
            rep.outcome = "failed"
            rep.longrepr = f"required under CI (ODENET_CI=1) but skipped: {reason}"


_GRADIO_CACHE: list = []


def pytest_configure(config):
    """Gradio's file cache (servers started in-process or by a test inherit it) in a folder of this run's own,
    removed when the run ends, unless the caller chose one."""
    if "GRADIO_TEMP_DIR" not in os.environ:
        _GRADIO_CACHE.append(tempfile.mkdtemp(prefix="odenet-tests-gradio-"))
        os.environ["GRADIO_TEMP_DIR"] = _GRADIO_CACHE[0]


def pytest_unconfigure(config):
    for folder in _GRADIO_CACHE:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def system_temp_inside_pytests_folder(tmp_path_factory):
    """What writes to this process's temp folder (gradio_client leaves an empty folder there per download) writes
    inside pytest's own base folder, which pytest prunes: a test run leaves nothing behind in the system's."""
    old = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("systemp"))
    yield
    tempfile.tempdir = old


@pytest.fixture(autouse=True)
def fresh_solver_coefficients():
    """Each test builds the tableaus' coefficient tensors itself instead of reusing another test's."""
    from odenet.ode import native

    native._COEFF_CACHE.clear()
    yield


def energy_reference():
    """torchdiffeq's reference for the kinetic energy: ``Augmented(f)`` integrates the tuple state (z, E) with
    dE/dt = |f(z)|^2 per sample (summed over all but the first axis)."""
    from torch import nn

    class Augmented(nn.Module):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, t, state):
            dz = self.f(t, state[0])
            return dz, (dz * dz).flatten(1).sum(1)

    return Augmented
