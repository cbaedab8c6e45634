"""CI says what it skipped, and fails where a required resource is missing (tests/conftest.py, ODENET_CI)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = "tests/test_bench.py::test_bench_speed_tiny"  # needs the real MNIST


def run_pytest(tmp_path, ci: bool):
    env = {k: v for k, v in os.environ.items() if k not in ("ODENET_CI", "ODENET_DATA_DIR")}
    env["ODENET_DATA_DIR"] = str(tmp_path / "no-data-here")
    if ci:
        env["ODENET_CI"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", TARGET, "-p", "no:cacheprovider"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_without_the_data_a_local_run_skips_and_says_why(tmp_path):
    r = run_pytest(tmp_path, ci=False)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "SKIPPED" in r.stdout and "real MNIST not available" in r.stdout  # -rs prints the reason


def test_without_the_data_ci_fails(tmp_path):
    r = run_pytest(tmp_path, ci=True)
    assert r.returncode == 1, r.stdout[-2000:]
    assert ("1 failed" in r.stdout or "1 error" in r.stdout) and "required under CI (ODENET_CI=1) but skipped" in r.stdout
    assert "real MNIST not available" in r.stdout


def test_ci_requires_the_demo_extra(tmp_path):
    """A missing module under CI fails at collection instead of skipping the module."""
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_x.py").write_text("from conftest import import_or_skip\n"
                                        "m = import_or_skip('no_such_module_odenet', 'the demo extra is not installed')\n"
                                        "def test_x():\n    pass\n")
    env = dict(os.environ, ODENET_CI="1")
    r = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path), "-p", "no:cacheprovider", "-q"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "required under CI (ODENET_CI=1) but missing" in r.stdout, r.stdout[-2000:]
    env.pop("ODENET_CI")
    r = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path), "-p", "no:cacheprovider", "-q", "-rs"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 5) and "1 skipped" in r.stdout and "demo extra" in r.stdout, r.stdout[-2000:]  # 5: none ran
