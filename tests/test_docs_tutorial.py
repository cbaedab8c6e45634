"""docs/tutorial.ipynb runs end to end in a real Jupyter kernel (nbclient), and says what it claims."""
import re
from pathlib import Path

import pytest

from conftest import import_or_skip, needs_data

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "tutorial.ipynb"


def test_the_notebook_is_stored_without_outputs():
    nbformat = import_or_skip("nbformat", "nbformat is not installed: pip install -e '.[test]'")
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 8
    assert all(not c.outputs and c.execution_count is None for c in code)


@needs_data
def test_the_tutorial_runs_and_shows_what_it_says(tmp_path):
    nbformat = import_or_skip("nbformat", "nbformat is not installed: pip install -e '.[test]'")
    nbclient = import_or_skip("nbclient", "nbclient is not installed: pip install -e '.[test]'")
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on a failing cell

    def text(tag):
        (cell,) = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

    assert re.search(r"label (\d): predicted \1 with probability 0\.\d+", text("classify"))
    assert "nfe_forward=" in text("flow")
    rows = re.findall(r"^method=(\w+).*?\s(\d+)\s+[\d.]+\s+([\d.]+)\s+(\d+)$", text("solvers"), flags=re.M)
    assert [r[0] for r in rows] == ["dopri5", "dopri5", "bosh3", "adaptive_heun", "rk4", "midpoint", "euler"]
    nfe = {i: int(r[1]) for i, r in enumerate(rows)}
    assert nfe[1] > 3 * nfe[0] and nfe[4] == 16 and nfe[5] == 8 and nfe[6] == 4  # tighter costs more; 4 steps
    assert all(float(r[2]) > 0.9 for r in rows)
    memory = [tuple(map(float, r)) for r in re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", text("memory"), re.M)]
    assert [m[0] for m in memory] == [10, 40, 160]
    adjoint, backprop = [m[1] for m in memory], [m[2] for m in memory]
    assert max(adjoint) < 1.05 * min(adjoint)  # flat
    assert backprop[0] < backprop[1] < backprop[2] and backprop[2] > 5 * backprop[0] > 5 * adjoint[0]  # grows
    acc = float(re.search(r"test accuracy after one epoch: ([\d.]+)", text("fit")).group(1))
    assert acc > 0.6
    losses = [float(v) for v in re.findall(r"loss ([\d.]+)", text("odenet"))]
    assert len(losses) == 4 and losses[-1] < 0.6 * losses[0]
    assert (tmp_path / "runs").is_dir() and list((tmp_path / "runs").glob("*/figures/latent_space.png"))
