"""Mutation score (mutmut) of the solver engine and of the training step, each with the fast tests that cover it.

    pip install mutmut
    python tools/mutation.py ode          # odenet/ode/*: test_ode, test_ode_compat, test_ode_settings
    python tools/mutation.py ode-front    # only its front end: integrate.py, compat.py, checks.py, settings.py
    python tools/mutation.py train_step   # train_step in odenet/train.py: tests/test_train_step.py

Works in a scratch copy of the repository's tracked files (nothing here is touched), adds the target's
``[tool.mutmut]`` section to the copy's pyproject.toml, runs ``mutmut run`` there and prints killed / survived /
timed out / no tests, and the surviving mutants' names (``mutmut show NAME`` in the copy shows each diff).
mutmut 3 mutates the insides of functions only; module-level data (the Butcher tableaus) is checked by
tests/test_ode.py's order tests, not by mutants. Results: docs/testing-history.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "ode": {"only_mutate": ["odenet/ode/*"],
            "tests": ["tests/test_ode.py", "tests/test_ode_compat.py", "tests/test_ode_settings.py"]},
    "ode-front": {"only_mutate": ["odenet/ode/integrate.py", "odenet/ode/compat.py", "odenet/ode/checks.py",
                                  "odenet/ode/settings.py"],
                  "tests": ["tests/test_ode.py", "tests/test_ode_compat.py", "tests/test_ode_settings.py"]},
    "train_step": {"only_mutate": ["odenet/train.py"], "tests": ["tests/test_train_step.py"]},
}


def scratch_copy(target: str, workdir: Path) -> Path:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    dest = workdir / f"odenet-mutation-{target}"
    if dest.exists():
        shutil.rmtree(dest)
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    t = TARGETS[target]
    with open(dest / "pyproject.toml", "a") as fh:
        fh.write("\n[tool.mutmut]\nsource_paths = [\"odenet/\"]\n"
                 f"only_mutate = {json.dumps(t['only_mutate'])}\n"
                 f"pytest_add_cli_args_test_selection = {json.dumps(t['tests'])}\n"
                 "pytest_add_cli_args = [\"-p\", \"no:warnings\"]\n"
                 "timeout_multiplier = 2.0\n")  # a mutant that makes the tests 4x slower counts as timed out
    return dest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target", choices=sorted(TARGETS))
    p.add_argument("--workdir", default="/tmp", help="where the scratch copy goes (default: /tmp)")
    p.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    a = p.parse_args()
    copy = scratch_copy(a.target, Path(a.workdir))
    mutmut = [sys.executable, "-m", "mutmut"]
    # one torch thread: mutmut forks a child per mutant after torch has run, and a forked OpenMP pool deadlocks
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ODENET_TEST_THREADS="1")
    base = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:warnings", *TARGETS[a.target]["tests"]],
                          cwd=copy, env=env)
    if base.returncode:
        sys.exit("the target's tests fail without any mutant: fix them first")
    for _ in range(5):  # mutmut resumes where it stopped; it can stop on a race of its own writing a .meta file
        if subprocess.run([*mutmut, "run", "--max-children", str(a.max_children)], cwd=copy, env=env).returncode == 0:
            break
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=copy, check=True, capture_output=True)
    stats = json.loads((copy / "mutants" / "mutmut-cicd-stats.json").read_text())
    print(json.dumps(stats, indent=2))
    out = subprocess.run([*mutmut, "results"], cwd=copy, capture_output=True, text=True).stdout
    print(out)
    print(f"scratch copy: {copy} (mutmut show NAME there)")


if __name__ == "__main__":
    main()
