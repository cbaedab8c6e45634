"""Write the package's shipped model from a finished run folder (its final model, never a test-chosen one).

    python tools/ship_model.py RUN_DIR --command "odenet train --config configs/best.yaml --seed 0" \
        --recipe "configs/best.yaml"
"""
import argparse
from pathlib import Path

from odenet.shipped import SHIPPED, export

p = argparse.ArgumentParser()
p.add_argument("run")
p.add_argument("--command", required=True, help="the exact command that trained the run")
p.add_argument("--recipe", required=True, help="which recipe made it")
p.add_argument("--data-dir", help="dataset folder for the flow map (default: the run's)")
p.add_argument("--out", default=str(SHIPPED))
a = p.parse_args()
out = export(Path(a.run), Path(a.out), a.command, a.recipe, a.data_dir)
print(f"{out}: {out.stat().st_size / 2**20:.2f} MB")
