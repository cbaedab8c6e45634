"""Write the package's shipped model from a finished run folder (its final model, never a test-chosen one).

    python tools/ship_model.py RUN_DIR --command "odenet train --config configs/best.yaml --seed 0" \
        --recipe "configs/best.yaml"
    python tools/ship_model.py --ood-only     # refit only the shipped model's "not a digit" statistics
"""
import argparse
from pathlib import Path

from odenet.checkpoint import SHIPPED
from odenet.shipped import add_ood, export

p = argparse.ArgumentParser()
p.add_argument("run", nargs="?")
p.add_argument("--command", help="the exact command that trained the run")
p.add_argument("--recipe", help="which recipe made it")
p.add_argument("--ood-only", action="store_true", help="refit the OOD statistics of the checkpoint at --out")
p.add_argument("--data-dir", help="dataset folder for the flow map (default: the run's)")
p.add_argument("--out", default=str(SHIPPED))
a = p.parse_args()
if a.ood_only:
    out = add_ood(Path(a.out), a.data_dir)
elif not (a.run and a.command and a.recipe):
    p.error("RUN, --command and --recipe are needed (or --ood-only)")
else:
    out = export(Path(a.run), Path(a.out), a.command, a.recipe, a.data_dir)
print(f"{out}: {out.stat().st_size / 2**20:.2f} MB")
